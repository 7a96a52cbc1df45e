//! Runner (a): the reference policies of `loadstar-optimizer` over a scenario in virtual time,
//! without OCPP, so every scenario has its baseline rows.
//!
//! * [`run_policy`] runs uncontrolled, static equal share or first-come-first-served tick by
//!   tick over the scenario: the policy sees the limit in force and the building's load (base
//!   − PV, measured perfectly) every control tick, its setpoints reach each car after its
//!   station's ramp delay, and the cars are the sims' [`Ev`] model. There are no stations in
//!   between, so no quirks: every station is compliant and no profiles are sent.
//! * [`offline_optimum`] builds the perfect-information [`PlanProblem`] of the whole scenario
//!   (every arrival, departure and need; per 15-min slot the headroom limit − base load + PV per
//!   line at its tightest, the tariff price and the PV surplus) and solves it once.
//! * [`run_optimum`] reports the LP's own figures: each car draws exactly its planned average
//!   current for the whole of each slot, so the site KPIs (cost, PV, violations) are accounted
//!   at the sims' resolution like every other row, and delivered energy is the plan's.
//! * [`run_followed`] drives the sims' EVs with the plan's per-slot targets instead (lowered a
//!   ramp early before a lower slot): what the optimum is worth to real cars, with their
//!   minimum current (which the LP does not model), their curve and their window edges.
//!
//! Every run is deterministic: the scenario's seed fixes the day, and nothing else is random.

use std::fmt::Write as _;
use std::time::Duration;

use chrono::{DateTime, Utc};
use loadstar_optimizer::allocate::{Evse, Node, Problem};
use loadstar_optimizer::model::PerLine;
use loadstar_optimizer::plan::{
    PlanEv, PlanNode, PlanProblem, PlanSlot, PlanStatus, PlanTaper, slot_bounds,
};
use loadstar_optimizer::policy::{self, OfflineOptimum};

use crate::drive::Report;
use crate::ev::{Ev, EvError};
use crate::kpi::{Accumulator, Sample, StationDraw, VehicleOutcome, markdown_table, price_at};
use crate::plot::SitePoint;
use crate::scenario::Plan;

/// The plan's slot length: the optimizer's 15 minutes.
pub const SLOT_S: i64 = 900;

/// A per-tick reference policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// Everyone at its max, whatever the limit.
    Uncontrolled,
    /// The headroom split evenly, unused shares not passed on.
    EqualShare,
    /// In arrival order, each takes what is left.
    FirstComeFirstServed,
}

impl Policy {
    pub const ALL: [Policy; 3] = [
        Policy::Uncontrolled,
        Policy::EqualShare,
        Policy::FirstComeFirstServed,
    ];

    /// The row label.
    pub fn name(self) -> &'static str {
        match self {
            Policy::Uncontrolled => "uncontrolled",
            Policy::EqualShare => "equal share",
            Policy::FirstComeFirstServed => "first come, first served",
        }
    }

    /// A file-name form of the label.
    pub fn slug(self) -> &'static str {
        match self {
            Policy::Uncontrolled => "uncontrolled",
            Policy::EqualShare => "equal-share",
            Policy::FirstComeFirstServed => "fcfs",
        }
    }
}

/// How to run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RunConfig {
    /// Resolution of the EV model, the site and the KPIs.
    pub tick: Duration,
    /// How often the policy recomputes its setpoints (and the KPIs' lag allowance). The
    /// uncontrolled policy has no controller: a car gets its max the tick it plugs in.
    pub control_tick: Duration,
}

impl Default for RunConfig {
    fn default() -> Self {
        RunConfig {
            tick: Duration::from_secs(1),
            control_tick: Duration::from_secs(5),
        }
    }
}

/// Why a run could not be made.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RunError {
    #[error("tick must be at least 1 ms and at most the control tick, got {tick:?} / {control:?}")]
    Ticks { tick: Duration, control: Duration },
    #[error("visit {id}: {source}")]
    Ev { id: String, source: EvError },
    #[error("the offline optimum did not solve: {0}")]
    Plan(String),
}

/// The offline optimum of a scenario: the problem given to the planner and its answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Optimum {
    pub problem: PlanProblem,
    pub result: OfflineOptimum,
}

impl Optimum {
    /// Visit `i`'s target per the optimum (feasible at all?), `None` if unknown.
    fn feasible(&self, plan: &Plan, i: usize) -> Option<bool> {
        self.result.feasible_for(&plan.visits[i].id_tag)
    }

    /// Visit `i`'s planned current in the slot holding `t` (A per phase): the LP's average
    /// over the whole slot, 0 outside the horizon.
    fn slot_amps(&self, i: usize, t: DateTime<Utc>) -> f64 {
        let now = t.timestamp();
        let Some(k) = self
            .problem
            .slots
            .iter()
            .position(|s| s.start_s <= now && now < s.start_s + s.duration_s)
        else {
            return 0.0;
        };
        self.result
            .plan
            .evs
            .get(i)
            .and_then(|e| e.amps.get(k))
            .copied()
            .unwrap_or(0.0)
    }

    /// What a follower commands visit `i` at `t`, knowing its setpoints reach the car
    /// `ahead` later: the slot's target, lowered early where the next slot's is lower, so
    /// decreases land on time (the plan's slot boundaries are known in advance).
    fn follow_amps(&self, i: usize, t: DateTime<Utc>, ahead: chrono::Duration) -> f64 {
        self.slot_amps(i, t).min(self.slot_amps(i, t + ahead))
    }
}

/// Each car's maximum: its on-board charger, capped by the station's rating.
fn max_amps(plan: &Plan, i: usize) -> f64 {
    let v = &plan.visits[i];
    v.ev.max_amps
        .min(plan.stations[v.station].config.hardware_max_amps)
}

/// Builds and solves the perfect-information plan of `plan`. The plan problem's EVs are the
/// visits, in order, with the visit's id tag as id.
pub fn offline_optimum(plan: &Plan) -> Result<Optimum, RunError> {
    let (start, end) = (plan.start.timestamp(), plan.end.timestamp());
    let site = &plan.site;
    let mut slots = Vec::new();
    let mut headroom = Vec::new();
    for (from, to) in slot_bounds(start, end, SLOT_S) {
        // The tightest minute of the slot (and its last second): a plan that holds its
        // average current for the whole slot then never exceeds the limit.
        let mut tightest = PerLine::splat(f64::INFINITY);
        let mut surplus_wh = 0.0;
        let mut at = from;
        while at < to {
            let t = utc(at);
            tightest = tightest.min(site.limit_at(t) - site.base_amps(t) + site.pv_amps(t));
            let step = 60.min(to - at);
            let pv = site.pv.as_ref().map_or(0.0, |pv| pv.watts(t));
            surplus_wh += (pv - site.base_load_w.at(t)).max(0.0) * step as f64 / 3600.0;
            at += step;
        }
        let last = utc(to - 1);
        tightest = tightest.min(site.limit_at(last) - site.base_amps(last) + site.pv_amps(last));
        headroom.push(tightest.non_negative());
        slots.push(PlanSlot {
            start_s: from,
            duration_s: to - from,
            price_per_kwh: price_at(&plan.tariff, utc(from)),
            solar_surplus_w: surplus_wh * 3600.0 / (to - from) as f64,
        });
    }
    let evs = plan
        .visits
        .iter()
        .enumerate()
        .map(|(i, v)| PlanEv {
            id: v.id_tag.clone(),
            node: 0,
            circuit: plan.stations[v.station].config.circuit,
            ev_phases: v.ev.phases,
            max_a: max_amps(plan, i),
            arrival_s: v.arrive.timestamp(),
            departure_s: v.depart.timestamp(),
            energy_wh: v.ev.requested_wh(),
            taper: (v.ev.taper_from_soc < 1.0).then_some(PlanTaper {
                capacity_wh: v.ev.capacity_wh,
                soc_at_arrival: v.ev.arrival_soc,
                taper_from_soc: v.ev.taper_from_soc,
            }),
        })
        .collect();
    let problem = PlanProblem::new(
        slots,
        vec![PlanNode {
            id: "grid".into(),
            parent: None,
            headroom,
        }],
        evs,
    );
    let result = policy::offline_optimum(&problem);
    if result.plan.status != PlanStatus::Optimal && result.plan.status != PlanStatus::Empty {
        return Err(RunError::Plan(format!("{:?}", result.plan.status)));
    }
    tracing::info!(
        scenario = %plan.name,
        energy_kwh = result.plan.energy_wh / 1000.0,
        solve_s = result.plan.solve_time_s,
        "offline optimum solved"
    );
    Ok(Optimum { problem, result })
}

fn utc(s: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(s, 0).unwrap_or(DateTime::<Utc>::MIN_UTC)
}

/// What decides the setpoints of a run.
#[derive(Clone, Copy)]
enum Controller<'a> {
    Policy(Policy),
    Follow(&'a Optimum),
}

/// One car during its visit.
struct Car {
    ev: Ev,
    /// What the car has been told (after the ramp).
    offered: f64,
    /// A new setpoint and when it reaches the car.
    ramp: Option<(DateTime<Utc>, f64)>,
}

/// Runs `policy` over the whole of `plan`. With `optimum`, each vehicle's target counts in
/// "reached target" only where the optimum says it was feasible.
pub fn run_policy(
    plan: &Plan,
    policy: Policy,
    optimum: Option<&Optimum>,
    config: RunConfig,
) -> Result<Report, RunError> {
    simulate(plan, Controller::Policy(policy), optimum, config)
}

/// Runs the sims' EVs on the optimum's per-slot targets (below a car's minimum it draws 0).
pub fn run_followed(plan: &Plan, optimum: &Optimum, config: RunConfig) -> Result<Report, RunError> {
    simulate(plan, Controller::Follow(optimum), Some(optimum), config)
}

fn ticks(config: RunConfig) -> Result<(chrono::Duration, chrono::Duration), RunError> {
    let bad = RunError::Ticks {
        tick: config.tick,
        control: config.control_tick,
    };
    if config.tick < Duration::from_millis(1) || config.control_tick < config.tick {
        return Err(bad);
    }
    let tick = chrono::Duration::from_std(config.tick).map_err(|_| bad.clone())?;
    let control = chrono::Duration::from_std(config.control_tick).map_err(|_| bad)?;
    Ok((tick, control))
}

fn simulate(
    plan: &Plan,
    controller: Controller<'_>,
    optimum: Option<&Optimum>,
    config: RunConfig,
) -> Result<Report, RunError> {
    let (tick, control) = ticks(config)?;
    let dt = config.tick.as_secs_f64();
    let site = &plan.site;
    let n = plan.visits.len();
    let mut cars: Vec<Option<Car>> = (0..n).map(|_| None).collect();
    let mut delivered = vec![0.0; n];
    let mut departures: Vec<usize> = (0..n).collect();
    departures.sort_by_key(|&i| (plan.visits[i].depart, i));
    let (mut next_arrival, mut next_departure) = (0, 0);
    let mut kpis = Accumulator::new(site.model, config.control_tick, plan.tariff.clone());
    let mut points = Vec::new();
    let mut draws: Vec<StationDraw> = Vec::with_capacity(plan.stations.len());
    let mut next_control = plan.start;
    let mut t = plan.start;
    while t < plan.end {
        // Leave before arriving: an EVSE may turn over within one tick.
        while let Some(&i) = departures.get(next_departure) {
            if plan.visits[i].depart > t {
                break;
            }
            next_departure += 1;
            if let Some(car) = cars[i].take() {
                delivered[i] = car.ev.delivered_wh();
            }
        }
        while let Some(v) = plan.visits.get(next_arrival) {
            if v.arrive > t {
                break;
            }
            if v.depart > t {
                let ev = Ev::new(v.ev.clone()).map_err(|source| RunError::Ev {
                    id: v.id_tag.clone(),
                    source,
                })?;
                cars[next_arrival] = Some(Car {
                    ev,
                    offered: 0.0,
                    ramp: None,
                });
            }
            next_arrival += 1;
        }

        let uncontrolled = site.base_amps(t) - site.pv_amps(t);
        let limit = site.limit_at(t);
        let no_controller = matches!(controller, Controller::Policy(Policy::Uncontrolled));
        if t >= next_control || no_controller {
            if t >= next_control {
                next_control += control;
            }
            let setpoints = setpoints(
                plan,
                controller,
                &cars,
                t,
                limit,
                uncontrolled,
                config.control_tick,
            );
            for (i, amps) in setpoints {
                let Some(car) = cars[i].as_mut() else {
                    continue;
                };
                let ramp = plan.stations[plan.visits[i].station].config.ramp_delay;
                let due = if no_controller {
                    t
                } else {
                    t + chrono::Duration::from_std(ramp).unwrap_or(chrono::Duration::zero())
                };
                if car.ramp.map_or(car.offered, |(_, a)| a) != amps {
                    // A ramp under way keeps its deadline, as the simulated stations do.
                    let due = car.ramp.map_or(due, |(d, _)| d);
                    car.ramp = Some((due, amps));
                }
            }
        }

        let mut evs = PerLine::ZERO;
        draws.clear();
        draws.extend((0..plan.stations.len()).map(|s| StationDraw {
            station: s,
            draw: PerLine::ZERO,
            commanded: PerLine::ZERO,
        }));
        for (i, slot) in cars.iter_mut().enumerate() {
            let Some(car) = slot.as_mut() else { continue };
            if let Some((due, amps)) = car.ramp
                && t >= due
            {
                car.offered = amps;
                car.ramp = None;
            }
            let v = &plan.visits[i];
            let circuit = plan.stations[v.station].config.circuit;
            let step = car.ev.step(car.offered, dt, &circuit, 0);
            let load = circuit.line_load(v.ev.phases, step.amps);
            evs += load;
            let d = &mut draws[v.station];
            d.draw += load;
            d.commanded += circuit.line_load(v.ev.phases, car.offered);
        }
        let grid = site.grid_amps(t, evs);
        push(&mut kpis, &mut points, plan, t, grid, limit, &draws, dt);
        t += tick;
    }
    for (i, car) in cars.iter().enumerate() {
        if let Some(car) = car {
            delivered[i] = car.ev.delivered_wh();
        }
    }
    Ok(report(plan, kpis, points, &delivered, optimum))
}

/// One control tick's setpoints, as (visit index, amps per phase).
fn setpoints(
    plan: &Plan,
    controller: Controller<'_>,
    cars: &[Option<Car>],
    t: DateTime<Utc>,
    limit: PerLine,
    uncontrolled: PerLine,
    control_tick: Duration,
) -> Vec<(usize, f64)> {
    let policy = match controller {
        Controller::Follow(optimum) => {
            return cars
                .iter()
                .enumerate()
                .filter(|(_, c)| c.is_some())
                .map(|(i, _)| {
                    let ramp = plan.stations[plan.visits[i].station].config.ramp_delay;
                    let ahead = chrono::Duration::from_std(ramp + control_tick)
                        .unwrap_or(chrono::Duration::zero());
                    (i, optimum.follow_amps(i, t, ahead))
                })
                .collect();
        }
        Controller::Policy(p) => p,
    };
    // The policies see the cars that still want energy (a full car reports SuspendedEV).
    let present: Vec<usize> = cars
        .iter()
        .enumerate()
        .filter(|(_, c)| c.as_ref().is_some_and(|c| !c.ev.satisfied()))
        .map(|(i, _)| i)
        .collect();
    let evses: Vec<Evse> = present
        .iter()
        .map(|&i| {
            let v = &plan.visits[i];
            Evse {
                id: v.id_tag.clone(),
                node: 0,
                circuit: plan.stations[v.station].config.circuit,
                ev_phases: v.ev.phases,
                min_a: v.ev.min_amps,
                max_a: max_amps(plan, i),
                may_pause: true,
                priority: 0,
                weight: 1.0,
                energy_wh: cars[i].as_ref().map_or(0.0, |c| c.ev.delivered_wh()),
                plan_a: None,
            }
        })
        .collect();
    let problem = Problem::new(
        vec![Node {
            id: "grid".into(),
            parent: None,
            limit,
            limit_source: "physical".into(),
            uncontrolled,
        }],
        evses,
        t.timestamp(),
    );
    let amps = match policy {
        Policy::Uncontrolled => policy::uncontrolled(&problem),
        Policy::EqualShare => policy::equal_share(&problem),
        Policy::FirstComeFirstServed => {
            let arrived: Vec<i64> = present
                .iter()
                .map(|&i| plan.visits[i].arrive.timestamp())
                .collect();
            policy::first_come_first_served_by_arrival(&problem, &arrived)
                .unwrap_or_else(|| vec![0.0; present.len()])
        }
    };
    // A satisfied car is told 0 (it draws nothing anyway).
    let mut out: Vec<(usize, f64)> = cars
        .iter()
        .enumerate()
        .filter(|(_, c)| c.as_ref().is_some_and(|c| c.ev.satisfied()))
        .map(|(i, _)| (i, 0.0))
        .collect();
    out.extend(present.into_iter().zip(amps));
    out
}

#[allow(clippy::too_many_arguments)]
fn push(
    kpis: &mut Accumulator,
    points: &mut Vec<SitePoint>,
    plan: &Plan,
    t: DateTime<Utc>,
    grid: PerLine,
    limit: PerLine,
    draws: &[StationDraw],
    dt: f64,
) {
    let site = &plan.site;
    let announced = site
        .limit_changes
        .iter()
        .filter(|c| c.at <= t)
        .max_by_key(|c| c.at)
        .is_none_or(|c| c.announced);
    kpis.push(
        &Sample {
            at: t,
            limit,
            limit_announced: announced,
            grid,
            uncontrolled: site.base_amps(t) - site.pv_amps(t),
            pv_w: site.pv.as_ref().map_or(0.0, |pv| pv.watts(t)),
            stations: draws,
        },
        dt,
    );
    points.push(SitePoint { at: t, grid, limit });
}

fn report(
    plan: &Plan,
    kpis: Accumulator,
    site: Vec<SitePoint>,
    delivered: &[f64],
    optimum: Option<&Optimum>,
) -> Report {
    let outcomes: Vec<VehicleOutcome> = (0..plan.visits.len())
        .map(|i| VehicleOutcome {
            requested_wh: plan.visits[i].ev.requested_wh(),
            delivered_wh: delivered[i],
            feasible: optimum.and_then(|o| o.feasible(plan, i)),
        })
        .collect();
    let vehicles = plan
        .visits
        .iter()
        .zip(&outcomes)
        .map(|(v, o)| {
            (
                v.id_tag.clone(),
                o.delivered_wh / 1000.0,
                o.requested_wh / 1000.0,
            )
        })
        .collect();
    Report {
        kpis: kpis.finish(&outcomes, &vec![0; plan.stations.len()]),
        site,
        vehicles,
    }
}

/// The optimum's own figures: each car draws exactly its planned current (no EV model), held
/// for the whole slot as the LP models it (so a car arriving mid-slot has its slot's energy
/// spread over all of it); the site is accounted at the sims' resolution; delivered energy is
/// the plan's per EV.
pub fn run_optimum(plan: &Plan, optimum: &Optimum, config: RunConfig) -> Result<Report, RunError> {
    let (tick, _) = ticks(config)?;
    let dt = config.tick.as_secs_f64();
    let site = &plan.site;
    let mut kpis = Accumulator::new(site.model, config.control_tick, plan.tariff.clone());
    let mut points = Vec::new();
    let mut draws: Vec<StationDraw> = Vec::with_capacity(plan.stations.len());
    let mut t = plan.start;
    while t < plan.end {
        let mut evs = PerLine::ZERO;
        draws.clear();
        draws.extend((0..plan.stations.len()).map(|s| StationDraw {
            station: s,
            draw: PerLine::ZERO,
            commanded: PerLine::ZERO,
        }));
        for (i, v) in plan.visits.iter().enumerate() {
            let amps = optimum.slot_amps(i, t);
            if amps <= 0.0 {
                continue;
            }
            let circuit = plan.stations[v.station].config.circuit;
            let load = circuit.line_load(v.ev.phases, amps);
            evs += load;
            draws[v.station].draw += load;
            draws[v.station].commanded += load;
        }
        let grid = site.grid_amps(t, evs);
        push(
            &mut kpis,
            &mut points,
            plan,
            t,
            grid,
            site.limit_at(t),
            &draws,
            dt,
        );
        t += tick;
    }
    let delivered: Vec<f64> = plan
        .visits
        .iter()
        .enumerate()
        .map(|(i, v)| {
            optimum
                .result
                .plan
                .evs
                .get(i)
                .filter(|e| e.id == v.id_tag)
                .map_or(0.0, |e| e.energy_wh)
        })
        .collect();
    Ok(report(plan, kpis, points, &delivered, Some(optimum)))
}

/// Every baseline row of one scenario.
#[derive(Debug, Clone)]
pub struct Baselines {
    pub scenario: String,
    /// (row label, file-name slug, report), in table order.
    pub rows: Vec<(String, String, Report)>,
    /// The LP's own energy (Wh) and EV energy cost (price × grid energy beyond the surplus).
    pub optimum_energy_wh: f64,
    pub optimum_ev_cost: f64,
    /// Vehicles whose target the optimum met, of all.
    pub feasible: (usize, usize),
    /// Per visit: whether the car reaches its target with the site to itself
    /// ([`feasible_alone`]).
    pub feasible_alone: Vec<bool>,
}

/// Label of the LP row.
pub const OPTIMUM: &str = "offline optimum (LP)";
/// Label of the row where the sims' EVs follow the optimum's targets.
pub const FOLLOWED: &str = "offline optimum, followed by the EVs";

impl Baselines {
    /// The row labelled `label`.
    pub fn row(&self, label: &str) -> Option<&Report> {
        self.rows.iter().find(|r| r.0 == label).map(|r| &r.2)
    }

    /// The Markdown table: the header and one row per policy, then a line on the optimum.
    pub fn markdown(&self) -> String {
        let mut out = markdown_table(
            &self.scenario,
            self.rows
                .iter()
                .map(|(label, _, r)| (label.as_str(), &r.kpis)),
        );
        let _ = writeln!(
            out,
            "\nOffline optimum: {:.1} kWh planned, EV energy cost {:.2}; {} of {} vehicle targets feasible.",
            self.optimum_energy_wh / 1000.0,
            self.optimum_ev_cost,
            self.feasible.0,
            self.feasible.1
        );
        // The rule, in numbers: each row's energy as a share of the optimum's.
        if self.optimum_energy_wh > 0.0 {
            let shares: Vec<String> = self
                .rows
                .iter()
                .filter(|(label, ..)| label != OPTIMUM)
                .map(|(label, _, r)| {
                    let share = r.kpis.delivered_kwh * 1000.0 / self.optimum_energy_wh;
                    format!("{label} {:.1} %", share * 100.0)
                })
                .collect();
            let _ = writeln!(out, "Energy against the optimum's: {}.", shares.join(", "));
        }
        // Who could finish with the site to itself, and who did: a looser count than the
        // optimum's verdict (everyone else away).
        let alone = self.feasible_alone.iter().filter(|f| **f).count();
        let reached: Vec<String> = self
            .rows
            .iter()
            .filter(|(label, ..)| label != OPTIMUM)
            .map(|(label, _, r)| {
                let n = r
                    .vehicles
                    .iter()
                    .zip(&self.feasible_alone)
                    .filter(|((_, delivered, requested), ok)| {
                        **ok && (delivered + 0.001 >= *requested)
                    })
                    .count();
                format!("{label} {n}")
            })
            .collect();
        let _ = writeln!(
            out,
            "Targets reachable with the site to itself: {alone} of {}; reached: {}.",
            self.feasible_alone.len(),
            reached.join(", ")
        );
        out
    }
}

/// Runs the three reference policies, the optimum's own figures and the optimum followed by
/// the EVs, over `plan`.
pub fn baselines(plan: &Plan, config: RunConfig) -> Result<Baselines, RunError> {
    let optimum = offline_optimum(plan)?;
    let mut rows = Vec::new();
    for policy in Policy::ALL {
        let report = run_policy(plan, policy, Some(&optimum), config)?;
        rows.push((policy.name().to_owned(), policy.slug().to_owned(), report));
    }
    rows.push((
        OPTIMUM.to_owned(),
        "optimum".to_owned(),
        run_optimum(plan, &optimum, config)?,
    ));
    rows.push((
        FOLLOWED.to_owned(),
        "optimum-followed".to_owned(),
        run_followed(plan, &optimum, config)?,
    ));
    let feasible = optimum.result.feasible.iter().filter(|f| **f).count();
    Ok(Baselines {
        scenario: plan.name.clone(),
        rows,
        optimum_energy_wh: optimum.result.plan.energy_wh,
        optimum_ev_cost: optimum.result.plan.cost,
        feasible: (feasible, optimum.result.feasible.len()),
        feasible_alone: feasible_alone(plan, config)?,
    })
}

/// Per visit: whether the car, with the site to itself (all the headroom limit − base + PV on
/// its lines, up to its max, through the EV model at `config.tick`), reaches its target by
/// departure. An upper bound on who can finish at all; the optimum's verdict also weighs
/// everyone else's needs.
pub fn feasible_alone(plan: &Plan, config: RunConfig) -> Result<Vec<bool>, RunError> {
    let (tick, _) = ticks(config)?;
    let dt = config.tick.as_secs_f64();
    let site = &plan.site;
    plan.visits
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let mut ev = Ev::new(v.ev.clone()).map_err(|source| RunError::Ev {
                id: v.id_tag.clone(),
                source,
            })?;
            let circuit = plan.stations[v.station].config.circuit;
            let max = max_amps(plan, i);
            let mut t = v.arrive;
            while t < v.depart.min(plan.end) && !ev.satisfied() {
                let headroom = site.limit_at(t) - site.base_amps(t) + site.pv_amps(t);
                let amps = circuit.max_amps_within(v.ev.phases, &headroom).min(max);
                ev.step(
                    amps,
                    dt.min((v.depart - t).num_milliseconds() as f64 / 1000.0),
                    &circuit,
                    0,
                );
                t += tick;
            }
            Ok(ev.satisfied())
        })
        .collect()
}

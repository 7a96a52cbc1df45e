//! The horizon plan inside the loop: which sessions have known needs, the planning problem
//! built from the tick's own view of the site, and following the plan's targets.
//!
//! plan() is never on the hot path of a tick: in real time it runs on a blocking thread and
//! the ticks use the newest finished plan meanwhile; in virtual time (`loadstar simulate`) it
//! runs inline, where no simulated time passes, so a seed gives the same day every time.
//!
//! **Must never** raise anyone above what allocate() allows: a plan target only caps an EVSE
//! and orders who is served first; the limits stay allocate()'s.

use chrono::{DateTime, Datelike, NaiveTime, TimeZone, Utc};
use chrono_tz::Tz;
use loadstar_optimizer::allocate::{Evse, LimitConstraint, Node, effective_limit};
use loadstar_optimizer::model::PerLine;
use loadstar_optimizer::plan::{Plan, PlanEv, PlanNode, PlanProblem, PlanSlot, slot_bounds};

use crate::site::FleetNeeds;
use crate::state::ChargingNeeds;

/// Slot length of the horizon (s).
pub const SLOT_S: i64 = 900;
/// The horizon never reaches further than this (s).
pub const HORIZON_S: i64 = 24 * 3600;
/// Priority of a planned EVSE in allocate(): served (and resumed) before unplanned ones.
pub const PLANNED_PRIORITY: u8 = 1;
/// Weight of a planned EVSE: it reaches its target before unplanned ones rise above their
/// minimum (the plan counted them at their minimum).
pub const PLANNED_WEIGHT: f64 = 100.0;

/// What a session needs, all sources merged: the EV's or operator's word first, then the
/// site file's fleet entry for its id tag.
pub fn effective_needs(
    needs: &ChargingNeeds,
    id_tag: Option<&str>,
    started_at: DateTime<Utc>,
    fleet: &[FleetNeeds],
    tz: Tz,
) -> ChargingNeeds {
    let entry = id_tag.and_then(|tag| fleet.iter().find(|f| f.id_tags.iter().any(|t| t == tag)));
    let mut out = needs.clone();
    if let Some(f) = entry {
        if out.departure.is_none() {
            out.departure = next_local(started_at, f.departure, tz);
        }
        if out.energy_wh.is_none() {
            out.energy_wh = Some(f.energy_wh);
            out.energy_from_wh = 0.0;
        }
    }
    out
}

/// The first instant after `after` whose local time of day in `tz` is `at`.
fn next_local(after: DateTime<Utc>, at: NaiveTime, tz: Tz) -> Option<DateTime<Utc>> {
    let local = after.with_timezone(&tz).date_naive();
    (0..3).find_map(|d| {
        let date = local.checked_add_days(chrono::Days::new(d))?;
        let when = tz
            .with_ymd_and_hms(date.year(), date.month(), date.day(), 0, 0, 0)
            .earliest()?
            .with_timezone(&Utc)
            + (at - NaiveTime::MIN);
        (when > after).then_some(when)
    })
}

/// One EVSE of the tick's problem that the plan covers.
#[derive(Debug, Clone, PartialEq)]
pub struct Planned {
    /// Index into the tick's `Problem::evses`.
    pub index: usize,
    pub departure_s: i64,
    /// Energy still to deliver (Wh).
    pub remaining_wh: f64,
}

/// A node's physical limit and its time-bounded constraints, for the limit per slot.
pub struct NodeLimits<'a> {
    pub physical: PerLine,
    pub constraints: &'a [LimitConstraint],
}

/// A plan with the slots it was made for.
#[derive(Debug, Clone)]
pub struct MadePlan {
    pub slots: Vec<PlanSlot>,
    pub plan: Plan,
}

impl MadePlan {
    /// EVSE `id`'s target current now (A per phase), the slot's average over the time it is
    /// plugged in; `None` if the plan does not cover it.
    pub fn target_a(&self, id: &str, departure_s: i64, now_s: i64) -> Option<f64> {
        let t = self
            .slots
            .iter()
            .position(|s| s.start_s <= now_s && now_s < s.start_s + s.duration_s)?;
        let ev = self.plan.evs.iter().find(|e| e.id == id)?;
        let slot = &self.slots[t];
        let present = (departure_s.min(slot.start_s + slot.duration_s) - slot.start_s) as f64
            / slot.duration_s as f64;
        let x = *ev.amps.get(t)?;
        Some(if present > 0.0 {
            x / present.min(1.0)
        } else {
            0.0
        })
    }
}

/// What a plan depends on beyond the passing of time: who is planned, when they leave, and the
/// limits. A change means planning again at once.
pub fn signature(
    evses: &[Evse],
    planned: &[Planned],
    limits: &[NodeLimits<'_>],
    prices: &[f64],
) -> String {
    let mut s = format!("{prices:?};");
    for p in planned {
        let e = &evses[p.index];
        s.push_str(&format!("{}@{}/{:.0};", e.id, p.departure_s, e.max_a));
    }
    for l in limits {
        s.push_str(&format!("{:?}", l.physical.0));
        for c in l.constraints {
            s.push_str(&format!(
                "{}:{:?}:{}-{};",
                c.source, c.limit.0, c.from_s, c.until_s
            ));
        }
    }
    s
}

/// The planning problem from the tick's view: slots from now to the last departure, each
/// node's headroom per slot (its limit then, minus what it carries now that the plan does not
/// control: uncontrolled load, held EVSEs and the minimum of every unplanned session).
/// The start of every slot the plan covers: from now to the last departure.
pub fn slot_starts(now_s: i64, planned: &[Planned]) -> Vec<i64> {
    planned
        .iter()
        .map(|p| p.departure_s)
        .max()
        .map(|end| {
            slot_bounds(now_s, end.min(now_s + HORIZON_S), SLOT_S)
                .into_iter()
                .map(|(start, _)| start)
                .collect()
        })
        .unwrap_or_default()
}

/// `prices` are per slot ([`slot_starts`]), from the tariff policies; without one every slot
/// costs the same and the plan only meets the needs.
pub fn problem(
    now_s: i64,
    nodes: &[Node],
    limits: &[NodeLimits<'_>],
    evses: &[Evse],
    planned: &[Planned],
    prices: &[f64],
) -> Option<(Vec<PlanSlot>, PlanProblem)> {
    let end = planned
        .iter()
        .map(|p| p.departure_s)
        .max()?
        .min(now_s + HORIZON_S);
    let slots: Vec<PlanSlot> = slot_bounds(now_s, end, SLOT_S)
        .into_iter()
        .enumerate()
        .map(|(i, (start, stop))| PlanSlot {
            start_s: start,
            duration_s: stop - start,
            price_per_kwh: prices.get(i).copied().unwrap_or(0.0),
            solar_surplus_w: 0.0,
        })
        .collect();
    if slots.is_empty() {
        return None;
    }
    // What each node carries besides the planned EVs: its uncontrolled and held load, and the
    // minimum of every unplanned EVSE below it.
    let mut carried: Vec<PerLine> = nodes.iter().map(|n| n.uncontrolled).collect();
    for (i, e) in evses.iter().enumerate() {
        if planned.iter().any(|p| p.index == i) {
            continue;
        }
        let load = e.circuit.line_load(e.ev_phases, e.min_a);
        let mut n = Some(e.node);
        while let Some(k) = n {
            if let Some(c) = carried.get_mut(k) {
                *c += load;
            }
            n = nodes.get(k).and_then(|node| node.parent);
        }
    }
    let plan_nodes = nodes
        .iter()
        .enumerate()
        .map(|(k, node)| PlanNode {
            id: node.id.clone(),
            parent: node.parent,
            headroom: slots
                .iter()
                .map(|s| {
                    let limit = limits.get(k).map_or(node.limit, |l| {
                        slot_limit(l, s.start_s, s.start_s + s.duration_s)
                    });
                    (limit - carried[k]).map(|a| a.max(0.0))
                })
                .collect(),
        })
        .collect();
    let plan_evs = planned
        .iter()
        .map(|p| {
            let e = &evses[p.index];
            PlanEv {
                id: e.id.clone(),
                node: e.node,
                circuit: e.circuit,
                ev_phases: e.ev_phases,
                max_a: e.max_a,
                arrival_s: now_s,
                departure_s: p.departure_s,
                energy_wh: p.remaining_wh,
                taper: None,
            }
        })
        .collect();
    let problem = PlanProblem::new(slots.clone(), plan_nodes, plan_evs);
    Some((slots, problem))
}

/// The lowest limit that holds at any time in `[from, to)`.
fn slot_limit(l: &NodeLimits<'_>, from: i64, to: i64) -> PerLine {
    lowest_limit(l.physical, l.constraints, from, to)
}

/// The lowest effective limit at any time in `[from, to)`: the physical limit and every
/// constraint active at some point in it.
pub fn lowest_limit(
    physical: PerLine,
    constraints: &[LimitConstraint],
    from: i64,
    to: i64,
) -> PerLine {
    let mut at: Vec<i64> = vec![from];
    for c in constraints {
        for t in [c.from_s, c.until_s] {
            if t > from && t < to {
                at.push(t);
            }
        }
    }
    at.into_iter()
        .map(|t| effective_limit(physical, constraints, t).0)
        .fold(PerLine::splat(f64::INFINITY), PerLine::min)
}

#[cfg(test)]
mod tests {
    use super::*;
    use loadstar_optimizer::model::{
        ElectricalModel, GridType, Line, StationCircuit, StationWiring,
    };

    fn tz() -> Tz {
        "Europe/Berlin".parse().expect("zone")
    }

    #[test]
    fn fleet_needs_fill_in_only_what_the_ev_did_not_say() {
        let fleet = vec![FleetNeeds {
            id_tags: vec!["BUS-1".into()],
            departure: NaiveTime::from_hms_opt(6, 30, 0).expect("time"),
            energy_wh: 150_000.0,
        }];
        // Plugged in at 19:00 Berlin (18:00 UTC in winter): leaves 06:30 Berlin next day.
        let started = Utc
            .with_ymd_and_hms(2026, 12, 1, 18, 0, 0)
            .single()
            .expect("t");
        let n = effective_needs(
            &ChargingNeeds::default(),
            Some("BUS-1"),
            started,
            &fleet,
            tz(),
        );
        assert_eq!(
            n.departure,
            Utc.with_ymd_and_hms(2026, 12, 2, 5, 30, 0).single()
        );
        assert_eq!(n.energy_wh, Some(150_000.0));
        // The EV's own word wins; an unknown tag gets nothing.
        let own = ChargingNeeds {
            energy_wh: Some(20_000.0),
            ..ChargingNeeds::default()
        };
        assert_eq!(
            effective_needs(&own, Some("BUS-1"), started, &fleet, tz()).energy_wh,
            Some(20_000.0)
        );
        assert_eq!(
            effective_needs(
                &ChargingNeeds::default(),
                Some("CAR-9"),
                started,
                &fleet,
                tz()
            ),
            ChargingNeeds::default()
        );
        // Plugged in at 05:00 Berlin: leaves the same morning.
        let early = Utc
            .with_ymd_and_hms(2026, 12, 2, 4, 0, 0)
            .single()
            .expect("t");
        assert_eq!(
            effective_needs(
                &ChargingNeeds::default(),
                Some("BUS-1"),
                early,
                &fleet,
                tz()
            )
            .departure,
            Utc.with_ymd_and_hms(2026, 12, 2, 5, 30, 0).single()
        );
    }

    fn evse(id: &str, node: usize, min_a: f64, max_a: f64) -> Evse {
        Evse {
            id: id.into(),
            node,
            circuit: StationCircuit::new(
                ElectricalModel::new(GridType::Wye, 230.0).expect("model"),
                StationWiring::three_phase([Line::L1, Line::L2, Line::L3]),
            )
            .expect("circuit"),
            ev_phases: 0,
            min_a,
            max_a,
            may_pause: true,
            priority: 0,
            weight: 1.0,
            energy_wh: 0.0,
            plan_a: None,
        }
    }

    #[test]
    fn headroom_counts_unplanned_minimums_and_the_lowest_limit_of_each_slot() {
        let now = 1_000_000 * SLOT_S;
        let nodes = vec![Node {
            id: "grid".into(),
            parent: None,
            limit: PerLine::splat(40.0),
            limit_source: Default::default(),
            uncontrolled: PerLine::splat(4.0),
        }];
        // A DR limit of 20 A starting in the middle of the second slot.
        let dr = [LimitConstraint {
            source: "dr".into(),
            limit: PerLine::splat(20.0),
            from_s: now + SLOT_S + SLOT_S / 2,
            until_s: now + 3 * SLOT_S,
        }];
        let limits = [NodeLimits {
            physical: PerLine::splat(40.0),
            constraints: &dr,
        }];
        let evses = vec![evse("a", 0, 6.0, 16.0), evse("b", 0, 6.0, 32.0)];
        let planned = [Planned {
            index: 1,
            departure_s: now + 4 * SLOT_S,
            remaining_wh: 10_000.0,
        }];
        let (slots, p) = problem(now, &nodes, &limits, &evses, &planned, &[]).expect("problem");
        assert_eq!(slots.len(), 4);
        let head: Vec<f64> = p.nodes[0].headroom.iter().map(|h| h.0[0]).collect();
        // 40 − 4 uncontrolled − 6 for the unplanned EVSE a; 20 − 10 where the DR limit holds.
        assert_eq!(head, vec![30.0, 10.0, 10.0, 30.0]);
        assert_eq!(p.evs.len(), 1);
        assert_eq!(p.evs[0].id, "b");
        assert_eq!(p.evs[0].energy_wh, 10_000.0);
    }

    #[test]
    fn an_announced_drop_counts_from_the_window_it_falls_in() {
        let drop = [LimitConstraint {
            source: "scenario".into(),
            limit: PerLine::splat(250.0),
            from_s: 100,
            until_s: 200,
        }];
        let physical = PerLine::splat(400.0);
        assert_eq!(lowest_limit(physical, &drop, 80, 90), physical);
        assert_eq!(
            lowest_limit(physical, &drop, 90, 101),
            PerLine::splat(250.0)
        );
        assert_eq!(
            lowest_limit(physical, &drop, 150, 160),
            PerLine::splat(250.0)
        );
        // Its end raises nothing early.
        assert_eq!(
            lowest_limit(physical, &drop, 195, 210),
            PerLine::splat(250.0)
        );
        assert_eq!(lowest_limit(physical, &drop, 200, 210), physical);
    }

    #[test]
    fn the_target_is_the_slot_average_over_the_time_plugged_in() {
        let now = 1_000_000 * SLOT_S;
        let slots = vec![
            PlanSlot {
                start_s: now,
                duration_s: SLOT_S,
                price_per_kwh: 0.0,
                solar_surplus_w: 0.0,
            },
            PlanSlot {
                start_s: now + SLOT_S,
                duration_s: SLOT_S,
                price_per_kwh: 0.0,
                solar_surplus_w: 0.0,
            },
        ];
        let plan = Plan {
            status: loadstar_optimizer::plan::PlanStatus::Optimal,
            solve_time_s: 0.0,
            iterations: 1,
            evs: vec![loadstar_optimizer::plan::EvPlan {
                id: "a".into(),
                amps: vec![16.0, 4.0],
                energy_wh: 0.0,
                shortfall_wh: 0.0,
            }],
            cost: 0.0,
            energy_wh: 0.0,
            solar_wh: 0.0,
        };
        let made = MadePlan { slots, plan };
        let leaves = now + SLOT_S + SLOT_S / 4;
        assert_eq!(made.target_a("a", leaves, now + 10), Some(16.0));
        // A quarter of the second slot present: 4 A average is 16 A while there.
        assert_eq!(made.target_a("a", leaves, now + SLOT_S + 10), Some(16.0));
        assert_eq!(made.target_a("b", leaves, now), None);
        assert_eq!(made.target_a("a", leaves, now + 3 * SLOT_S), None);
    }
}

//! The horizon planner: [`plan`] turns a [`PlanProblem`] (time slots with prices, solar surplus
//! and per-node headroom forecasts; EVs with windows and energy needs) into per-EV current
//! targets per slot, as one linear program solved by clarabel through good_lp.
//!
//! # The LP
//!
//! Variables: `x[e][t]`, EV `e`'s average per-phase current in slot `t` (A), only for slots
//! that overlap the EV's window; `s[e]`, its energy shortfall (kWh); `g[t]`, grid energy that
//! the EVs draw beyond the solar surplus of slot `t` (kWh), only where there is a surplus.
//!
//! Constraints:
//! * `0 ≤ x[e][t] ≤ max_a · f[e][t]`, with `f` the share of the slot inside the window
//!   (arrival to departure), so a half-present slot allows half the energy. The current while
//!   present is `x / f`: limits bound that, as if everyone present in a slot were there at
//!   once (safe when windows start or end inside a slot);
//! * every node, line and slot: `Σ coef · x ≤ headroom` (forecast limit minus forecast
//!   uncontrolled load, DR and policy limits folded in by the caller). Rows that cannot bind
//!   are left out, one-member rows become bounds, and balanced three-phase members of a node
//!   with several binding lines enter through one aggregate `y = Σ x` (fewer non-zeros);
//! * a tapering EV ([`PlanTaper`]): at the middle of every slot, its current stays under its
//!   charging curve at the state of charge reached there (energy chained slot to slot);
//! * every EV: `Σ_t energy(x[e][t]) + s[e] = need[e]` with `0 ≤ s[e] ≤ need[e]`, so nothing is
//!   delivered beyond the need;
//! * every slot with a surplus: `g[t] ≥ Σ_e energy(x[e][t]) − surplus[t]`, `g ≥ 0`.
//!
//! Objective, in order of weight:
//! 1. shortfall, at [`PlanProblem::shortfall_penalty_per_kwh`] (far above any price), a few
//!    per cent more for smaller needs ([`SMALLER_NEED_PREFERENCE`]) so that when not every
//!    need can be met, whole targets are met rather than every one partly;
//! 2. cost: the slot price times the grid energy (all EV energy where there is no surplus);
//! 3. self-consumption: a small [`SOLAR_PREFERENCE_PER_KWH`] on grid energy, so that with equal
//!    prices the surplus is used first; and a tiny preference for earlier slots, so that ties
//!    resolve the same way every time and energy is not left for the last minute.
//!
//! The interior-point solution is approximate (about 1e-8): targets are rounded down by
//! [`ROUND_DOWN_A`], so a plan never asks for more than the limits allow.
//!
//! # Degrading
//!
//! Bad inputs, a failed or non-converged solve all give a [`Plan`] with a non-optimal
//! [`PlanStatus`] and no targets: the caller runs [`allocate`](crate::allocate) alone. The
//! planner never panics on input and never stops charging.

use serde::{Deserialize, Serialize};

use crate::model::{Line, PerLine, StationCircuit, wh_to_kwh};

/// Default penalty per kWh of unmet need: far above any energy price.
pub const DEFAULT_SHORTFALL_PENALTY_PER_KWH: f64 = 1_000.0;

/// Extra weight per kWh of grid energy (beyond the price), so solar surplus is used first.
pub const SOLAR_PREFERENCE_PER_KWH: f64 = 1e-3;

/// Weight per kWh and per slot of delay: a tie-breaker towards earlier slots.
pub const EARLIER_PREFERENCE_PER_KWH: f64 = 1e-5;

/// Relative extra shortfall weight for the EV with the smallest need (falling to 0 for the
/// largest): the tie-break that finishes whole targets instead of spreading a shortfall.
pub const SMALLER_NEED_PREFERENCE: f64 = 0.05;

/// The solver's feasibility and gap tolerances.
pub const SOLVER_TOLERANCE: f64 = 1e-7;

/// Targets are rounded down by this much (the solver's answers are approximate).
pub const ROUND_DOWN_A: f64 = 1e-4;

/// One time slot of the horizon.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlanSlot {
    /// Start, seconds since the Unix epoch (UTC).
    pub start_s: i64,
    /// Length in seconds (> 0), usually 900.
    pub duration_s: i64,
    /// Energy price in this slot, per kWh imported (any currency; may be negative).
    pub price_per_kwh: f64,
    /// Solar power available to the EVs beyond the building's own use (W, ≥ 0).
    pub solar_surplus_w: f64,
}

/// A node of the electrical tree, with its forecast headroom per slot.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlanNode {
    /// Identifier.
    pub id: String,
    /// Parent index; `None` only for node 0, the grid connection. Parents come first.
    pub parent: Option<usize>,
    /// Per slot: the forecast limit minus the forecast uncontrolled load (A per line). A
    /// negative or NaN value counts as 0.
    pub headroom: Vec<PerLine>,
}

/// An EV to plan for.
#[derive(Debug, Clone, PartialEq)]
pub struct PlanEv {
    /// Identifier (the EVSE's id, as in [`allocate`](crate::allocate)).
    pub id: String,
    /// The node it hangs under.
    pub node: usize,
    /// Wiring, for line loads and power.
    pub circuit: StationCircuit,
    /// Phases the EV uses (0 = unknown = all station phases).
    pub ev_phases: u8,
    /// Maximum per-phase current (A).
    pub max_a: f64,
    /// When it is (or was) plugged in, seconds since the epoch.
    pub arrival_s: i64,
    /// When it leaves, seconds since the epoch.
    pub departure_s: i64,
    /// Energy still needed (Wh, ≥ 0).
    pub energy_wh: f64,
    /// How its power tapers near full, if known: without it the plan assumes `max_a` up to
    /// the last Wh, which over-promises for a car that is nearly full.
    pub taper: Option<PlanTaper>,
}

/// An EV's charging curve for the plan: full power up to `taper_from_soc`, then falling
/// linearly to 0 at full (the shape of the sims' EV model and of most cars' AC curves).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PlanTaper {
    /// Usable battery capacity (Wh, > 0).
    pub capacity_wh: f64,
    /// State of charge at the start of its window (0..=1).
    pub soc_at_arrival: f64,
    /// State of charge where the taper starts (0..1).
    pub taper_from_soc: f64,
}

/// The planning problem.
#[derive(Debug, Clone, PartialEq)]
pub struct PlanProblem {
    /// The slots, in time order, without gaps or overlaps.
    pub slots: Vec<PlanSlot>,
    /// The tree; every node's `headroom` has one entry per slot.
    pub nodes: Vec<PlanNode>,
    /// The EVs.
    pub evs: Vec<PlanEv>,
    /// Penalty per kWh of shortfall ([`DEFAULT_SHORTFALL_PENALTY_PER_KWH`]).
    pub shortfall_penalty_per_kwh: f64,
}

impl PlanProblem {
    /// A problem with the default shortfall penalty.
    pub fn new(slots: Vec<PlanSlot>, nodes: Vec<PlanNode>, evs: Vec<PlanEv>) -> Self {
        PlanProblem {
            slots,
            nodes,
            evs,
            shortfall_penalty_per_kwh: DEFAULT_SHORTFALL_PENALTY_PER_KWH,
        }
    }
}

/// How a plan came out.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "status", content = "detail")]
pub enum PlanStatus {
    /// Solved to optimality (within the solver's tolerance).
    Optimal,
    /// Nothing to plan: no EV needs energy inside the horizon.
    Empty,
    /// The inputs are unusable; the reason says which.
    Invalid(String),
    /// The solver failed; allocate() runs alone.
    Failed(String),
}

/// The plan for one EV.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvPlan {
    /// The EV's id.
    pub id: String,
    /// Target average per-phase current per slot (A), one per slot of the problem.
    pub amps: Vec<f64>,
    /// Energy the targets deliver (Wh).
    pub energy_wh: f64,
    /// Need minus planned energy (Wh, ≥ 0).
    pub shortfall_wh: f64,
}

/// The result of [`plan`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    /// Whether the targets can be used.
    pub status: PlanStatus,
    /// The solver's own time for the solve (s); 0 when it did not run.
    pub solve_time_s: f64,
    /// Interior-point iterations.
    pub iterations: u32,
    /// One per EV, in the order of [`PlanProblem::evs`]; empty unless `status` is optimal.
    pub evs: Vec<EvPlan>,
    /// Energy cost of the targets: price times grid energy beyond the surplus.
    pub cost: f64,
    /// Energy the targets deliver (Wh).
    pub energy_wh: f64,
    /// Energy taken from the solar surplus (Wh).
    pub solar_wh: f64,
}

impl Plan {
    fn without_targets(status: PlanStatus) -> Self {
        Plan {
            status,
            solve_time_s: 0.0,
            iterations: 0,
            evs: Vec::new(),
            cost: 0.0,
            energy_wh: 0.0,
            solar_wh: 0.0,
        }
    }

    /// Whether the targets can be followed.
    pub fn is_usable(&self) -> bool {
        matches!(self.status, PlanStatus::Optimal | PlanStatus::Empty)
    }

    /// EV `id`'s target at `now_s` (A per phase), for [`Evse::plan_a`](crate::allocate::Evse):
    /// `None` when the plan is unusable, the EV is unknown or `now_s` is outside the horizon.
    pub fn target_a(&self, slots: &[PlanSlot], id: &str, now_s: i64) -> Option<f64> {
        if self.status != PlanStatus::Optimal {
            return None;
        }
        let t = slots
            .iter()
            .position(|s| s.start_s <= now_s && now_s < s.start_s.saturating_add(s.duration_s))?;
        self.evs.iter().find(|e| e.id == id).map(|e| e.amps[t])
    }
}

/// Slot bounds `[start, end)` of `slot_s` seconds covering `[start_s, end_s)`; the last slot is
/// cut short if the span is not a multiple. Empty if the span or the slot length is not
/// positive.
pub fn slot_bounds(start_s: i64, end_s: i64, slot_s: i64) -> Vec<(i64, i64)> {
    if slot_s <= 0 || end_s <= start_s {
        return Vec::new();
    }
    let mut out = Vec::new();
    let mut at = start_s;
    while at < end_s {
        let next = at.saturating_add(slot_s).min(end_s);
        out.push((at, next));
        at = next;
    }
    out
}

/// The UTC bounds of local calendar day `date` in `tz`: 23 h on a spring-forward day (92
/// quarter-hours), 25 h on a fall-back day (100). `None` if local midnight does not exist
/// (time zones that skip midnight take the first instant of the day).
pub fn local_day_bounds(date: chrono::NaiveDate, tz: chrono_tz::Tz) -> Option<(i64, i64)> {
    let start = first_instant(date, tz)?;
    let end = first_instant(date.succ_opt()?, tz)?;
    Some((start, end))
}

fn first_instant(date: chrono::NaiveDate, tz: chrono_tz::Tz) -> Option<i64> {
    use chrono::TimeZone;
    // Midnight may be skipped by a DST jump; the day then starts at the first valid minute.
    (0..=180).find_map(|minute| {
        let local = date.and_hms_opt(0, 0, 0)? + chrono::Duration::minutes(minute);
        tz.from_local_datetime(&local)
            .earliest()
            .map(|t| t.timestamp())
    })
}

/// Solves the horizon plan. See the [module docs](self).
pub fn plan(problem: &PlanProblem) -> Plan {
    if let Err(reason) = validate(problem) {
        return Plan::without_targets(PlanStatus::Invalid(reason));
    }
    let slots = &problem.slots;
    let n_slots = slots.len();

    // Which slots each EV can use, and how much of each.
    let presence: Vec<Vec<f64>> = problem
        .evs
        .iter()
        .map(|ev| {
            slots
                .iter()
                .map(|s| {
                    let end = s.start_s.saturating_add(s.duration_s);
                    let overlap = end.min(ev.departure_s) - s.start_s.max(ev.arrival_s);
                    (overlap.max(0) as f64 / s.duration_s as f64).clamp(0.0, 1.0)
                })
                .collect()
        })
        .collect();
    let wanted = |e: usize| problem.evs[e].energy_wh > 0.0 && problem.evs[e].max_a > 0.0;
    if !(0..problem.evs.len()).any(|e| wanted(e) && presence[e].iter().any(|&f| f > 0.0)) {
        return Plan {
            evs: problem
                .evs
                .iter()
                .map(|ev| EvPlan {
                    id: ev.id.clone(),
                    amps: vec![0.0; n_slots],
                    energy_wh: 0.0,
                    shortfall_wh: ev.energy_wh,
                })
                .collect(),
            ..Plan::without_targets(PlanStatus::Empty)
        };
    }

    match solve(problem, &presence) {
        Ok(plan) => plan,
        Err(reason) => Plan::without_targets(PlanStatus::Failed(reason)),
    }
}

/// kWh per amp of per-phase current held for the whole of `slot`.
fn kwh_per_amp(ev: &PlanEv, slot: &PlanSlot) -> f64 {
    wh_to_kwh(ev.circuit.amps_to_watts(ev.ev_phases, 1.0) * slot.duration_s as f64 / 3600.0)
}

fn solve(problem: &PlanProblem, presence: &[Vec<f64>]) -> Result<Plan, String> {
    use good_lp::{Expression, ProblemVariables, Solution, SolverModel, Variable, variable};

    let slots = &problem.slots;
    let n_slots = slots.len();
    let headroom = |nd: usize, t: usize, line: Line| {
        let h = problem.nodes[nd].headroom[t][line];
        if h.is_nan() { 0.0 } else { h.max(0.0) }
    };
    // Tightest headroom on the EV's own path, per slot: single-member limits become bounds.
    let path = |node: usize| std::iter::successors(Some(node), |&nd| problem.nodes[nd].parent);

    let mut vars = ProblemVariables::new();
    let mut x: Vec<Vec<Option<Variable>>> = Vec::with_capacity(problem.evs.len());
    let mut upper: Vec<Vec<f64>> = Vec::with_capacity(problem.evs.len());
    type Chain = (PlanTaper, Vec<usize>, Vec<Option<Variable>>);
    let mut tapers: Vec<Option<Chain>> = Vec::with_capacity(problem.evs.len());
    let mut shortfall: Vec<Option<Variable>> = Vec::with_capacity(problem.evs.len());
    let mut objective = Expression::with_capacity(problem.evs.len() * n_slots);
    // Shortfall weights: equal weights leave the solver free to spread the shortfall over
    // every EV (an interior point does), so nobody's target is met. Slightly higher weights
    // for smaller needs make it finish the EVs it can finish first, at the same total energy.
    let mut by_need: Vec<usize> = (0..problem.evs.len()).collect();
    by_need.sort_by(|&a, &b| {
        problem.evs[a]
            .energy_wh
            .total_cmp(&problem.evs[b].energy_wh)
            .then(a.cmp(&b))
    });
    let mut shortfall_weight = vec![problem.shortfall_penalty_per_kwh; problem.evs.len()];
    let n_evs = problem.evs.len().max(1) as f64;
    for (rank, &e) in by_need.iter().enumerate() {
        shortfall_weight[e] *= 1.0 + SMALLER_NEED_PREFERENCE * (n_evs - rank as f64) / n_evs;
    }
    for (e, ev) in problem.evs.iter().enumerate() {
        let coef = ev.circuit.line_coefficients(ev.ev_phases);
        let mut row = Vec::with_capacity(n_slots);
        let mut ubs = vec![0.0; n_slots];
        for (t, slot) in slots.iter().enumerate() {
            let mut ub = ev.max_a * presence[e][t];
            for nd in path(ev.node) {
                for line in Line::ALL {
                    if coef[line] > 0.0 {
                        // Limits hold the current while present (x / f), not the slot average.
                        ub = ub.min(headroom(nd, t, line) / coef[line] * presence[e][t]);
                    }
                }
            }
            if ev.energy_wh > 0.0 && ub > 0.0 {
                ubs[t] = ub;
                let v = vars.add(variable().min(0.0).max(ub));
                let kwh = kwh_per_amp(ev, slot);
                // Cost is added per slot below; here only the tie-breaker towards earlier slots.
                objective.add_mul(EARLIER_PREFERENCE_PER_KWH * kwh * (t as f64 + 1.0), v);
                row.push(Some(v));
            } else {
                row.push(None);
            }
        }
        let s = (ev.energy_wh > 0.0).then(|| {
            let v = vars.add(variable().min(0.0).max(wh_to_kwh(ev.energy_wh)));
            objective.add_mul(shortfall_weight[e], v);
            v
        });
        // The taper only matters if the need can carry the EV past its start.
        let taper = ev
            .taper
            .filter(|tp| tp.soc_at_arrival + ev.energy_wh / tp.capacity_wh > tp.taper_from_soc);
        let present: Vec<usize> = (0..n_slots).filter(|&t| row[t].is_some()).collect();
        let chain = taper.map(|tp| {
            // c[j]: kWh delivered before the j-th present slot (none before the first).
            let c: Vec<Option<Variable>> = (0..present.len())
                .map(|j| (j > 0).then(|| vars.add(variable().min(0.0))))
                .collect();
            (tp, present.clone(), c)
        });
        tapers.push(chain);
        x.push(row);
        upper.push(ubs);
        shortfall.push(s);
    }

    // Grid energy beyond the surplus, where there is one; elsewhere all EV energy is grid.
    let mut grid: Vec<Option<Variable>> = vec![None; n_slots];
    for (t, slot) in slots.iter().enumerate() {
        let weight = slot.price_per_kwh + SOLAR_PREFERENCE_PER_KWH;
        if slot.solar_surplus_w > 0.0 {
            let g = vars.add(variable().min(0.0));
            objective.add_mul(weight, g);
            grid[t] = Some(g);
        } else {
            for (e, ev) in problem.evs.iter().enumerate() {
                if let Some(v) = x[e][t] {
                    objective.add_mul(weight * kwh_per_amp(ev, slot), v);
                }
            }
        }
    }

    // Node limits that can bind: more than one member (single members are already bounds),
    // and the members' bounds together exceed the headroom. Where a node has several binding
    // lines and several members that load all three lines alike (balanced three-phase), those
    // members enter through one aggregate `y = Σ x`, so each appears in one row, not three:
    // far fewer non-zeros for the solver to factorise.
    let m = problem.nodes.len();
    let coefs: Vec<PerLine> = problem
        .evs
        .iter()
        .map(|ev| ev.circuit.line_coefficients(ev.ev_phases))
        .collect();
    let balanced: Vec<bool> = coefs.iter().map(|c| c.0 == [1.0; 3]).collect();
    let mut node_rows: Vec<Vec<NodeRow>> = Vec::with_capacity(n_slots);
    let mut aggregates: Vec<(usize, Variable, Vec<usize>)> = Vec::new();
    for t in 0..n_slots {
        let mut members: Vec<Vec<usize>> = vec![Vec::new(); m];
        let mut most = vec![PerLine::ZERO; m];
        let mut count = vec![[0usize; 3]; m];
        for (e, ev) in problem.evs.iter().enumerate() {
            if x[e][t].is_none() {
                continue;
            }
            for nd in path(ev.node) {
                members[nd].push(e);
                for line in Line::ALL {
                    if coefs[e][line] > 0.0 {
                        count[nd][line.index()] += 1;
                        most[nd][line] += coefs[e][line] * upper[e][t] / presence[e][t];
                    }
                }
            }
        }
        let mut rows = Vec::new();
        for nd in 0..m {
            let binding: Vec<(Line, f64)> = Line::ALL
                .into_iter()
                .filter_map(|line| {
                    let h = headroom(nd, t, line);
                    (count[nd][line.index()] >= 2 && h.is_finite() && most[nd][line] > h)
                        .then_some((line, h))
                })
                .collect();
            if binding.is_empty() {
                continue;
            }
            let three: Vec<usize> = members[nd]
                .iter()
                .copied()
                .filter(|&e| balanced[e])
                .collect();
            let aggregate = (binding.len() >= 2 && three.len() >= 2).then(|| {
                let y = vars.add(variable().min(0.0));
                aggregates.push((t, y, three));
                y
            });
            for (line, h) in binding {
                let row_members = members[nd]
                    .iter()
                    .copied()
                    .filter(|&e| coefs[e][line] > 0.0 && !(aggregate.is_some() && balanced[e]))
                    .map(|e| (e, coefs[e][line] / presence[e][t]))
                    .collect();
                rows.push(NodeRow {
                    members: row_members,
                    aggregate,
                    headroom: h,
                });
            }
        }
        node_rows.push(rows);
    }

    let mut model = vars.minimise(objective).using(good_lp::clarabel);
    // Targets are rounded down by far more than this; looser than good_lp's 1e-9 saves
    // iterations.
    model
        .settings()
        .tol_feas(SOLVER_TOLERANCE)
        .tol_gap_abs(SOLVER_TOLERANCE)
        .tol_gap_rel(SOLVER_TOLERANCE);
    // Energy need: delivered + shortfall = need, with 0 ≤ shortfall ≤ need (so nothing is
    // delivered beyond the need).
    for (e, ev) in problem.evs.iter().enumerate() {
        let Some(s) = shortfall[e] else { continue };
        let mut delivered = Expression::with_capacity(n_slots);
        for (t, slot) in slots.iter().enumerate() {
            if let Some(v) = x[e][t] {
                delivered.add_mul(kwh_per_amp(ev, slot), v);
            }
        }
        model.add_constraint((delivered + s).eq(wh_to_kwh(ev.energy_wh)));
    }
    // Tapers: at the middle of each slot the current stays under the curve,
    //   x ≤ max · (1 − soc_mid) / (1 − from),  soc_mid = soc0 + (c + k·x/2) / capacity,
    // with c the energy before the slot, chained slot to slot.
    for (e, chain) in tapers.into_iter().enumerate() {
        let Some((tp, present, c)) = chain else {
            continue;
        };
        let ev = &problem.evs[e];
        let cap_kwh = wh_to_kwh(tp.capacity_wh);
        let alpha = ev.max_a / ((1.0 - tp.taper_from_soc) * cap_kwh);
        let beta = ev.max_a * (1.0 - tp.soc_at_arrival) / (1.0 - tp.taper_from_soc);
        for (j, &t) in present.iter().enumerate() {
            let Some(xv) = x[e][t] else { continue };
            let k = kwh_per_amp(ev, &slots[t]);
            let mut row = Expression::with_capacity(2);
            row.add_mul(1.0 + alpha * k / 2.0, xv);
            if let Some(cv) = c[j] {
                row.add_mul(alpha, cv);
            }
            model.add_constraint(row.leq(beta));
            if let Some(Some(next)) = c.get(j + 1) {
                let mut link = Expression::from(*next);
                link.add_mul(-k, xv);
                if let Some(cv) = c[j] {
                    link.add_mul(-1.0, cv);
                }
                model.add_constraint(link.eq(0.0));
            }
        }
    }
    // Node limits.
    for (t, rows) in node_rows.into_iter().enumerate() {
        for row in rows {
            let mut expr = Expression::with_capacity(row.members.len() + 1);
            if let Some(y) = row.aggregate {
                expr.add_mul(1.0, y);
            }
            for &(e, c) in &row.members {
                if let Some(v) = x[e][t] {
                    expr.add_mul(c, v);
                }
            }
            model.add_constraint(expr.leq(row.headroom));
        }
    }
    // Aggregates: y = Σ x over a node's three-phase members.
    for (t, y, members) in aggregates {
        let mut expr = Expression::from(y);
        for e in members {
            if let Some(v) = x[e][t] {
                expr.add_mul(-1.0 / presence[e][t], v);
            }
        }
        model.add_constraint(expr.eq(0.0));
    }
    // Grid energy beyond the surplus.
    for (t, slot) in slots.iter().enumerate() {
        if let Some(g) = grid[t] {
            let surplus_kwh = wh_to_kwh(slot.solar_surplus_w * slot.duration_s as f64 / 3600.0);
            let mut row = Expression::from(g);
            for (e, ev) in problem.evs.iter().enumerate() {
                if let Some(v) = x[e][t] {
                    row.add_mul(-kwh_per_amp(ev, slot), v);
                }
            }
            model.add_constraint(row.geq(-surplus_kwh));
        }
    }

    let solution = model.solve().map_err(|e| e.to_string())?;
    let info = solution.inner();
    let (solve_time_s, iterations) = (info.solve_time, info.iterations);

    let mut evs = Vec::with_capacity(problem.evs.len());
    let mut energy_total = 0.0;
    let mut per_slot_kwh = vec![0.0; n_slots];
    for (e, ev) in problem.evs.iter().enumerate() {
        let mut amps = vec![0.0; n_slots];
        let mut kwh = 0.0;
        for (t, slot) in slots.iter().enumerate() {
            if let Some(v) = x[e][t] {
                let raw = solution.value(v);
                let a = if raw.is_finite() {
                    (raw - ROUND_DOWN_A).max(0.0)
                } else {
                    0.0
                };
                amps[t] = a;
                let k = kwh_per_amp(ev, slot) * a;
                kwh += k;
                per_slot_kwh[t] += k;
            }
        }
        let energy_wh = kwh * 1000.0;
        energy_total += energy_wh;
        evs.push(EvPlan {
            id: ev.id.clone(),
            amps,
            energy_wh,
            shortfall_wh: (ev.energy_wh - energy_wh).max(0.0),
        });
    }
    if evs.iter().any(|e| e.amps.iter().any(|a| !a.is_finite())) {
        return Err("the solver returned non-finite targets".into());
    }
    let (mut cost, mut solar_wh) = (0.0, 0.0);
    for (t, slot) in slots.iter().enumerate() {
        let surplus_kwh = wh_to_kwh(slot.solar_surplus_w * slot.duration_s as f64 / 3600.0);
        let solar = per_slot_kwh[t].min(surplus_kwh);
        solar_wh += solar * 1000.0;
        cost += slot.price_per_kwh * (per_slot_kwh[t] - solar);
    }
    Ok(Plan {
        status: PlanStatus::Optimal,
        solve_time_s,
        iterations,
        evs,
        cost,
        energy_wh: energy_total,
        solar_wh,
    })
}

/// One node-line-slot limit row: `aggregate + Σ coef · x ≤ headroom`.
struct NodeRow {
    members: Vec<(usize, f64)>,
    aggregate: Option<good_lp::Variable>,
    headroom: f64,
}

fn validate(problem: &PlanProblem) -> Result<(), String> {
    let n_slots = problem.slots.len();
    if n_slots == 0 {
        return Err("the horizon has no slots".into());
    }
    for (t, s) in problem.slots.iter().enumerate() {
        if s.duration_s <= 0 {
            return Err(format!(
                "slot {t}: duration must be > 0 s, got {}",
                s.duration_s
            ));
        }
        if !s.price_per_kwh.is_finite() {
            return Err(format!(
                "slot {t}: price must be finite, got {}",
                s.price_per_kwh
            ));
        }
        if !(s.solar_surplus_w.is_finite() && s.solar_surplus_w >= 0.0) {
            return Err(format!(
                "slot {t}: solar surplus must be finite and >= 0 W, got {}",
                s.solar_surplus_w
            ));
        }
        if t > 0 {
            let prev = &problem.slots[t - 1];
            if prev.start_s.saturating_add(prev.duration_s) != s.start_s {
                return Err(format!("slot {t} does not start where slot {} ends", t - 1));
            }
        }
    }
    if !(problem.shortfall_penalty_per_kwh.is_finite() && problem.shortfall_penalty_per_kwh > 0.0) {
        return Err("the shortfall penalty must be finite and > 0".into());
    }
    if problem.nodes.is_empty() {
        return Err("the tree has no nodes".into());
    }
    for (i, node) in problem.nodes.iter().enumerate() {
        match (i, node.parent) {
            (0, None) => {}
            (_, Some(p)) if i > 0 && p < i => {}
            _ => {
                return Err(format!(
                    "node {i} ({}): bad parent {:?}",
                    node.id, node.parent
                ));
            }
        }
        if node.headroom.len() != n_slots {
            return Err(format!(
                "node {}: {} headroom values for {n_slots} slots",
                node.id,
                node.headroom.len()
            ));
        }
        if node
            .headroom
            .iter()
            .any(|h| h.0.iter().any(|v| v.is_infinite() && *v < 0.0))
        {
            return Err(format!("node {}: headroom of -inf", node.id));
        }
    }
    for ev in &problem.evs {
        if ev.node >= problem.nodes.len() {
            return Err(format!("EV {}: node {} does not exist", ev.id, ev.node));
        }
        if !(ev.max_a.is_finite() && ev.max_a >= 0.0) {
            return Err(format!("EV {}: max_a must be finite and >= 0", ev.id));
        }
        if !(ev.energy_wh.is_finite() && ev.energy_wh >= 0.0) {
            return Err(format!("EV {}: energy_wh must be finite and >= 0", ev.id));
        }
        if ev.circuit.line_coefficients(ev.ev_phases) == PerLine::ZERO {
            return Err(format!("EV {}: loads no grid line", ev.id));
        }
        if let Some(t) = &ev.taper {
            let unit = |v: f64| v.is_finite() && (0.0..=1.0).contains(&v);
            let capacity_ok = t.capacity_wh.is_finite() && t.capacity_wh > 0.0;
            let from_ok = unit(t.taper_from_soc) && t.taper_from_soc < 1.0;
            if !(capacity_ok && unit(t.soc_at_arrival) && from_ok) {
                return Err(format!(
                    "EV {}: taper needs capacity > 0 Wh, 0 <= soc <= 1 and 0 <= taper_from < 1",
                    ev.id
                ));
            }
        }
    }
    let mut ids: Vec<&str> = problem.evs.iter().map(|e| e.id.as_str()).collect();
    ids.sort_unstable();
    if let Some(w) = ids.windows(2).find(|w| w[0] == w[1]) {
        return Err(format!("EV id {} is used more than once", w[0]));
    }
    Ok(())
}

//! Reference policies, on the same inputs as [`allocate`](crate::allocate::allocate) and
//! [`plan`](crate::plan::plan), for the sims' baselines and for comparisons:
//!
//! * [`uncontrolled`]: everyone at its max, whatever the limits (what a site without a
//!   controller does);
//! * [`equal_share`]: static equal share: every node's headroom split evenly over the EVSEs
//!   under it, unused shares not passed on;
//! * [`first_come_first_served`]: in arrival order, each EVSE takes what is left, up to its max
//!   (what most tools do);
//! * [`offline_optimum`]: [`plan`](crate::plan::plan) with perfect knowledge of a whole
//!   scenario, the upper bound on energy and the lower bound on cost, and which vehicle
//!   targets were feasible at all.
//!
//! The per-tick policies return one per-phase current per EVSE, in [`Problem::evses`] order;
//! below an EVSE's `min_a` they give 0 (a charger cannot run below it). Invalid EVSEs (as
//! [`allocate`](crate::allocate::allocate) judges them) get 0. [`jain_index`] scores fairness.

use serde::{Deserialize, Serialize};

use crate::allocate::Problem;
use crate::model::{Line, PerLine};
use crate::plan::{Plan, PlanProblem, plan};

/// A shortfall below this (Wh) counts as the target met.
pub const MET_TOLERANCE_WH: f64 = 1.0;

/// Everyone at `max_a`, ignoring every limit.
pub fn uncontrolled(problem: &Problem) -> Vec<f64> {
    problem
        .evses
        .iter()
        .map(|e| if usable(e) { e.max_a } else { 0.0 })
        .collect()
}

/// Static equal share: on every node and line, the headroom divided by the number of EVSEs
/// under it that load that line; each EVSE gets the smallest share on its path, at most its
/// max, and 0 if that is below its min. Shares an EVSE leaves unused are not passed on.
pub fn equal_share(problem: &Problem) -> Vec<f64> {
    let m = problem.nodes.len();
    let headroom = headroom(problem);
    let mut count = vec![[0usize; 3]; m];
    for e in problem.evses.iter().filter(|e| usable(e)) {
        let coef = e.circuit.line_coefficients(e.ev_phases);
        for nd in path(problem, e.node) {
            for line in Line::ALL {
                if coef[line] > 0.0 {
                    count[nd][line.index()] += 1;
                }
            }
        }
    }
    problem
        .evses
        .iter()
        .map(|e| {
            if !usable(e) {
                return 0.0;
            }
            let coef = e.circuit.line_coefficients(e.ev_phases);
            let mut share = e.max_a;
            for nd in path(problem, e.node) {
                for line in Line::ALL {
                    if coef[line] > 0.0 {
                        let n = count[nd][line.index()] as f64;
                        share = share.min(headroom[nd][line] / (n * coef[line]));
                    }
                }
            }
            if share >= e.min_a { share } else { 0.0 }
        })
        .collect()
}

/// First come, first served: EVSEs in [`Problem::evses`] order (the caller lists them in
/// arrival order), each taking the most that still fits on its path, up to its max; 0 if its
/// min no longer fits.
pub fn first_come_first_served(problem: &Problem) -> Vec<f64> {
    let mut left = headroom(problem);
    problem
        .evses
        .iter()
        .map(|e| {
            if !usable(e) {
                return 0.0;
            }
            let mut room = PerLine::splat(f64::INFINITY);
            for nd in path(problem, e.node) {
                room = room.min(left[nd]);
            }
            let fit = e.circuit.max_amps_within(e.ev_phases, &room).min(e.max_a);
            if fit < e.min_a || fit <= 0.0 {
                return 0.0;
            }
            let load = e.circuit.line_load(e.ev_phases, fit);
            for nd in path(problem, e.node) {
                left[nd] = (left[nd] - load).non_negative();
            }
            fit
        })
        .collect()
}

/// First come, first served with explicit arrival times (one per EVSE, in
/// [`Problem::evses`] order; equal times keep the list order). Returns the setpoints in
/// [`Problem::evses`] order. `None` if `arrived_s` does not have one entry per EVSE.
pub fn first_come_first_served_by_arrival(
    problem: &Problem,
    arrived_s: &[i64],
) -> Option<Vec<f64>> {
    if arrived_s.len() != problem.evses.len() {
        return None;
    }
    let mut order: Vec<usize> = (0..problem.evses.len()).collect();
    order.sort_by_key(|&i| (arrived_s[i], i));
    let sorted = Problem {
        evses: order.iter().map(|&i| problem.evses[i].clone()).collect(),
        ..problem.clone()
    };
    let amps = first_come_first_served(&sorted);
    let mut out = vec![0.0; amps.len()];
    for (k, &i) in order.iter().enumerate() {
        out[i] = amps[k];
    }
    Some(out)
}

/// Jain's fairness index of `values`: `(Σx)² / (n · Σx²)`, 1 when all are equal, `1/n` when one
/// takes everything. 1 for an empty or all-zero input (nobody is treated worse than another).
pub fn jain_index(values: &[f64]) -> f64 {
    let sum: f64 = values.iter().sum();
    let sq: f64 = values.iter().map(|v| v * v).sum();
    if values.is_empty() || sq <= 0.0 {
        1.0
    } else {
        sum * sum / (values.len() as f64 * sq)
    }
}

/// The offline optimum of a whole scenario: the plan with every arrival, departure and need
/// known in advance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OfflineOptimum {
    /// The plan itself (status, targets, cost, energy).
    pub plan: Plan,
    /// Per EV (in [`PlanProblem::evs`] order): whether its target was met by the optimum,
    /// i.e. feasible at all given the limits, its window and everyone else's needs.
    pub feasible: Vec<bool>,
}

impl OfflineOptimum {
    /// Whether EV `id`'s target was feasible; `None` for an unknown id.
    pub fn feasible_for(&self, id: &str) -> Option<bool> {
        let k = self.plan.evs.iter().position(|e| e.id == id)?;
        self.feasible.get(k).copied()
    }

    /// EV `id`'s plan (targets, planned energy, shortfall); `None` for an unknown id.
    pub fn ev(&self, id: &str) -> Option<&crate::plan::EvPlan> {
        self.plan.evs.iter().find(|e| e.id == id)
    }
}

/// Solves the perfect-information plan of a scenario. Use a horizon that covers every
/// vehicle's whole window.
pub fn offline_optimum(problem: &PlanProblem) -> OfflineOptimum {
    let plan = plan(problem);
    let feasible = if plan.evs.len() == problem.evs.len() {
        plan.evs
            .iter()
            .map(|e| e.shortfall_wh <= MET_TOLERANCE_WH)
            .collect()
    } else {
        vec![false; problem.evs.len()]
    };
    OfflineOptimum { plan, feasible }
}

fn usable(e: &crate::allocate::Evse) -> bool {
    e.min_a.is_finite()
        && e.max_a.is_finite()
        && e.min_a >= 0.0
        && e.min_a <= e.max_a
        && e.circuit.line_coefficients(e.ev_phases) != PerLine::ZERO
}

fn headroom(problem: &Problem) -> Vec<PerLine> {
    problem
        .nodes
        .iter()
        .map(|n| (n.limit - n.uncontrolled).map(|v| v.max(0.0)))
        .collect()
}

fn path(problem: &Problem, node: usize) -> impl Iterator<Item = usize> + '_ {
    std::iter::successors(Some(node), |&nd| {
        problem
            .nodes
            .get(nd)
            .and_then(|n| n.parent)
            .filter(|&p| p < nd)
    })
    .filter(move |&nd| nd < problem.nodes.len())
}

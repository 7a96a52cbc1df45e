//! The real-time, per-tick allocator: [`allocate`] turns a [`Problem`] (a tree of limited nodes,
//! the EVSEs hanging under it, the clock and the previous pause [`Rotation`]) into one
//! [`Setpoint`] per EVSE plus the next [`Rotation`].
//!
//! # Model
//!
//! Nodes form a tree rooted at node 0 (the grid connection); every parent has a smaller index
//! than its children. A node's **headroom** on a line is `limit − uncontrolled`, floored at 0
//! (NaN counts as 0). An EVSE drawing `I` amps per phase loads every node on its path to the root
//! (its own node and all ancestors) with [`StationCircuit::line_load`]`(ev_phases, I)`. A
//! constraint is one (node, line) pair.
//!
//! # Rule precedence
//!
//! **limits (safety) > dwell > work conservation > fairness.**
//!
//! 1. *Charging set.* EVSEs that were charging (or are new: no rotation entry) start in the set;
//!    EVSEs paused less than `dwell_s` ago stay paused (dwell beats work conservation).
//!    While the minimums of the set overload some constraint, the first EVSE in **pause order**
//!    that loads an overloaded constraint is paused, whatever its dwell (safety beats dwell).
//!    Pause order: `may_pause = false` last; lower `priority` first; EVSEs that resumed less than
//!    `dwell_s` ago after those that did not (same priority); more `energy_wh` first; then id.
//! 2. *Work conservation.* In **resume order** (`may_pause = false` first, higher priority,
//!    less energy, id), every EVSE not held by dwell (paused at least `dwell_s` ago, or paused
//!    for safety in step 1) is added to the set when its minimum fits.
//! 3. *Fairness rotation.* A waiting EVSE (paused at least `dwell_s` ago, minimum does not fit)
//!    swaps with the first charging EVSE in pause order that may pause, has been charging at
//!    least `dwell_s`, and has lower priority, or equal priority and strictly more `energy_wh`,
//!    provided the minimums fit after the swap. Every EVSE takes part in at most one swap per
//!    tick. Step 2 then runs once more.
//! 4. *Weighted max-min water-filling* on the charging set: EVSE `i` gets
//!    `clamp(weight_i · L, min_i, max_i)` for a common level `L`, raised until a constraint is
//!    tight or everyone is at max. The level where each constraint becomes tight is found
//!    analytically (its load is piecewise linear and non-decreasing in `L`), then checked by
//!    summing the loads and, on float error, bisected down to a level that fits. EVSEs at their
//!    max freeze with [`Binding::EvseMax`]; EVSEs loading a tight constraint freeze with
//!    [`Binding::Node`] (the tight constraint nearest to the EVSE). Repeat with the rest.
//!
//! # Guarantees
//!
//! * Summed line loads never exceed any node's headroom.
//! * Every setpoint is exactly 0 or within `[min_a, max_a]`; never NaN.
//! * Work conservation: a charging EVSE below its max has a constraint on its path within
//!   1e-7 A of its headroom.
//! * Deterministic: the same problem gives the same allocation (no hashing, fixed orders).
//! * EVSEs with bad inputs (non-finite numbers, `min_a > max_a`, `weight <= 0`, …) get 0 A and
//!   [`Binding::Invalid`]; structural errors (parent order, missing node, duplicate EVSE id)
//!   are an [`AllocateError`]. Never panics on numeric input.
//!
//! Only pause/resume is subject to dwell; levels of charging EVSEs may move every tick.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::model::{Line, PerLine, StationCircuit};

/// Default minimum time between pausing and resuming one EVSE, in seconds.
pub const DEFAULT_DWELL_S: i64 = 300;

/// A constraint within this many amps of its headroom counts as tight.
pub const TIGHT_TOLERANCE_A: f64 = 1e-7;

/// A node of the electrical tree: the grid connection, a feeder, a circuit or a station.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Node {
    /// Identifier, reported in [`Binding::Node`].
    pub id: String,
    /// Index of the parent node; `None` only for node 0, the grid connection.
    pub parent: Option<usize>,
    /// Effective per-line limit in amps, already the minimum of all sources.
    pub limit: PerLine,
    /// Which source set `limit` (e.g. `"physical"`, `"dr:event-7"`); carried into bindings.
    pub limit_source: String,
    /// Load on this node that Loadstar does not control (including the reserved draw of
    /// non-compliant EVSEs), per line; subtracted from the headroom.
    pub uncontrolled: PerLine,
}

/// One controllable EVSE (connector) with an EV.
#[derive(Debug, Clone, PartialEq)]
pub struct Evse {
    /// Identifier; must be unique within a problem. Keys the [`Rotation`].
    pub id: String,
    /// Index of the node it hangs under (a station or circuit node).
    pub node: usize,
    /// Wiring, for line loads.
    pub circuit: StationCircuit,
    /// Phases the EV uses (0 = unknown = all station phases).
    pub ev_phases: u8,
    /// Minimum per-phase current when charging (A).
    pub min_a: f64,
    /// Maximum per-phase current (A): the station, cable and learned EV caps.
    pub max_a: f64,
    /// Whether the EVSE may be paused (0 A) at all; if not, it is paused only for safety, last.
    pub may_pause: bool,
    /// Higher is served first when not everyone can get the minimum.
    pub priority: u8,
    /// Weight (> 0) for weighted max-min fairness.
    pub weight: f64,
    /// Energy received so far this session (Wh), for pause rotation.
    pub energy_wh: f64,
}

/// The pause state of one EVSE, carried from tick to tick.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RotationEntry {
    /// Whether the EVSE is paused.
    pub paused: bool,
    /// When it entered this state (seconds, caller's clock).
    pub since_s: i64,
}

/// Pause state per EVSE id. Input and output of [`allocate`].
pub type Rotation = BTreeMap<String, RotationEntry>;

/// One tick's allocation problem.
#[derive(Debug, Clone, PartialEq)]
pub struct Problem {
    /// The tree; node 0 is the grid connection, parents have smaller indices than children.
    pub nodes: Vec<Node>,
    /// The EVSEs.
    pub evses: Vec<Evse>,
    /// Now, in seconds, from the caller's clock.
    pub now_s: i64,
    /// Minimum time between pause and resume of one EVSE ([`DEFAULT_DWELL_S`]).
    pub dwell_s: i64,
    /// The rotation returned by the previous tick (empty at start).
    pub rotation: Rotation,
}

impl Problem {
    /// A problem with the default dwell and an empty rotation.
    pub fn new(nodes: Vec<Node>, evses: Vec<Evse>, now_s: i64) -> Self {
        Problem {
            nodes,
            evses,
            now_s,
            dwell_s: DEFAULT_DWELL_S,
            rotation: Rotation::new(),
        }
    }
}

/// Why an EVSE is paused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PauseReason {
    /// Its minimum does not fit next to the EVSEs that charge.
    NoRoomForMinimum,
    /// It was paused less than `dwell_s` ago; its minimum would fit now.
    Dwell,
}

/// What limits an EVSE's setpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Binding {
    /// A node's line is tight.
    Node {
        /// The node's id.
        node: String,
        /// The tight line.
        line: Line,
        /// The node's `limit_source`.
        source: String,
    },
    /// The EVSE is at its own `max_a`.
    EvseMax,
    /// The EVSE is paused (0 A).
    Paused(PauseReason),
    /// The EVSE's inputs are invalid; it gets 0 A.
    Invalid(String),
}

/// The setpoint of one EVSE.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Setpoint {
    /// The EVSE's id.
    pub evse: String,
    /// Per-phase current (A): 0, or within `[min_a, max_a]`.
    pub amps: f64,
    /// What limits it.
    pub bound: Binding,
}

/// The result of [`allocate`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Allocation {
    /// One setpoint per EVSE, in the order of [`Problem::evses`].
    pub setpoints: Vec<Setpoint>,
    /// The rotation to pass to the next tick.
    pub rotation: Rotation,
}

/// Structural problems that make a [`Problem`] unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AllocateError {
    /// Node 0 has a parent.
    #[error("node 0 ({id}) is the grid connection and cannot have a parent")]
    RootHasParent {
        /// The root's id.
        id: String,
    },
    /// A node other than 0 has no parent, or its parent index is not smaller than its own.
    #[error("node {index} ({id}) must have a parent with a smaller index, got {parent:?}")]
    ParentOrder {
        /// The node's index.
        index: usize,
        /// The node's id.
        id: String,
        /// Its parent.
        parent: Option<usize>,
    },
    /// An EVSE hangs under a node that does not exist.
    #[error("EVSE {evse} hangs under node {node}, which does not exist")]
    MissingNode {
        /// The EVSE's id.
        evse: String,
        /// The missing node index.
        node: usize,
    },
    /// Two EVSEs share an id.
    #[error("EVSE id {id} is used more than once")]
    DuplicateEvse {
        /// The repeated id.
        id: String,
    },
}

/// Computes one tick's setpoints and the next rotation. See the [module docs](self).
pub fn allocate(problem: &Problem) -> Result<Allocation, AllocateError> {
    validate(problem)?;
    let ctx = Ctx::new(problem);
    let n = problem.evses.len();

    let invalid: Vec<Option<String>> = problem.evses.iter().map(invalid_reason).collect();
    let valid: Vec<usize> = (0..n).filter(|&i| invalid[i].is_none()).collect();

    // Previous state: paused, and whether dwell still locks it in that state.
    let mut was_paused = vec![false; n];
    let mut locked = vec![false; n];
    for &i in &valid {
        if let Some(entry) = problem.rotation.get(&problem.evses[i].id) {
            was_paused[i] = entry.paused;
            locked[i] = problem.now_s.saturating_sub(entry.since_s) < problem.dwell_s;
        }
    }

    let key = |i: usize| PauseKey::new(&problem.evses[i], !was_paused[i] && locked[i]);
    let mut pause_order = valid.clone();
    pause_order.sort_by(|&a, &b| key(a).pause_cmp(&key(b)));
    let mut resume_order = valid.clone();
    resume_order.sort_by(|&a, &b| key(a).resume_cmp(&key(b)));

    // 1. Start with everyone not paused; pause for safety until the minimums fit.
    let mut charging = vec![false; n];
    for &i in &valid {
        charging[i] = !was_paused[i];
    }
    loop {
        let over = ctx.overloaded(&ctx.min_loads(&charging));
        if over.is_empty() {
            break;
        }
        let victim = pause_order
            .iter()
            .copied()
            .find(|&i| charging[i] && over.iter().any(|&(nd, l)| ctx.loads(i, nd, l)));
        match victim {
            Some(i) => charging[i] = false,
            // Cannot happen: an overloaded constraint has a charging EVSE with load on it.
            None => break,
        }
    }
    // 2. Work conservation: resume (or keep) everyone not held by dwell whose minimum fits.
    let held = |i: usize| was_paused[i] && locked[i];
    let resume_pass = |charging: &mut Vec<bool>| {
        for &i in &resume_order {
            if !charging[i] && !held(i) && ctx.min_fits_with(charging, i) {
                charging[i] = true;
            }
        }
    };
    let waiting = |i: usize, charging: &[bool]| was_paused[i] && !locked[i] && !charging[i];
    resume_pass(&mut charging);

    // 3. Fairness rotation: swap waiting EVSEs with charging ones that had their turn.
    let mut swapped = vec![false; n];
    for &w in &resume_order {
        if !waiting(w, &charging) {
            continue;
        }
        let we = &problem.evses[w];
        let partner = pause_order.iter().copied().find(|&c| {
            let ce = &problem.evses[c];
            charging[c]
                && !swapped[c]
                && !was_paused[c]
                && !locked[c]
                && ce.may_pause
                && (ce.priority < we.priority
                    || (ce.priority == we.priority && ce.energy_wh > we.energy_wh))
                && {
                    let mut trial = charging.clone();
                    trial[c] = false;
                    ctx.min_fits_with(&trial, w)
                }
        });
        if let Some(c) = partner {
            charging[c] = false;
            charging[w] = true;
            swapped[c] = true;
            swapped[w] = true;
        }
    }
    resume_pass(&mut charging);

    // 4. Water-filling on the charging set.
    let filled = ctx.water_fill(problem, &charging);

    let mut setpoints = Vec::with_capacity(n);
    let mut rotation = Rotation::new();
    for (i, evse) in problem.evses.iter().enumerate() {
        let (amps, bound) = if let Some(reason) = &invalid[i] {
            (0.0, Binding::Invalid(reason.clone()))
        } else if charging[i] {
            filled[i].clone().unwrap_or((0.0, Binding::EvseMax))
        } else if was_paused[i] && locked[i] && ctx.min_fits_with(&charging, i) {
            (0.0, Binding::Paused(PauseReason::Dwell))
        } else {
            (0.0, Binding::Paused(PauseReason::NoRoomForMinimum))
        };
        setpoints.push(Setpoint {
            evse: evse.id.clone(),
            amps,
            bound,
        });

        let previous = problem.rotation.get(&evse.id).copied();
        let entry = if invalid[i].is_some() {
            previous
        } else {
            let paused = !charging[i];
            match previous {
                Some(entry) if entry.paused == paused => Some(entry),
                _ => Some(RotationEntry {
                    paused,
                    since_s: problem.now_s,
                }),
            }
        };
        if let Some(entry) = entry {
            rotation.insert(evse.id.clone(), entry);
        }
    }
    Ok(Allocation {
        setpoints,
        rotation,
    })
}

fn validate(problem: &Problem) -> Result<(), AllocateError> {
    for (index, node) in problem.nodes.iter().enumerate() {
        match (index, node.parent) {
            (0, None) => {}
            (0, Some(_)) => {
                return Err(AllocateError::RootHasParent {
                    id: node.id.clone(),
                });
            }
            (_, Some(p)) if p < index => {}
            (_, parent) => {
                return Err(AllocateError::ParentOrder {
                    index,
                    id: node.id.clone(),
                    parent,
                });
            }
        }
    }
    let mut seen = std::collections::BTreeSet::new();
    for evse in &problem.evses {
        if evse.node >= problem.nodes.len() {
            return Err(AllocateError::MissingNode {
                evse: evse.id.clone(),
                node: evse.node,
            });
        }
        if !seen.insert(evse.id.as_str()) {
            return Err(AllocateError::DuplicateEvse {
                id: evse.id.clone(),
            });
        }
    }
    Ok(())
}

fn invalid_reason(evse: &Evse) -> Option<String> {
    let finite = |v: f64| v.is_finite();
    if !finite(evse.min_a) || !finite(evse.max_a) {
        return Some(format!(
            "min_a and max_a must be finite, got {} and {}",
            evse.min_a, evse.max_a
        ));
    }
    if evse.min_a < 0.0 || evse.min_a > evse.max_a {
        return Some(format!(
            "need 0 <= min_a <= max_a, got {} and {}",
            evse.min_a, evse.max_a
        ));
    }
    if !finite(evse.weight) || evse.weight <= 0.0 {
        return Some(format!(
            "weight must be finite and > 0, got {}",
            evse.weight
        ));
    }
    if !finite(evse.max_a / evse.weight) {
        return Some(format!(
            "weight {} is too small for max_a {}",
            evse.weight, evse.max_a
        ));
    }
    if !finite(evse.energy_wh) {
        return Some(format!("energy_wh must be finite, got {}", evse.energy_wh));
    }
    if evse.circuit.line_coefficients(evse.ev_phases) == PerLine::ZERO {
        return Some("the EVSE loads no grid line".to_owned());
    }
    None
}

/// Sort key for pause and resume order.
struct PauseKey<'a> {
    must_not_pause: bool,
    priority: u8,
    recently_resumed: bool,
    energy_wh: f64,
    id: &'a str,
}

impl<'a> PauseKey<'a> {
    fn new(evse: &'a Evse, recently_resumed: bool) -> Self {
        PauseKey {
            must_not_pause: !evse.may_pause,
            priority: evse.priority,
            recently_resumed,
            energy_wh: evse.energy_wh,
            id: &evse.id,
        }
    }

    /// First = paused first.
    fn pause_cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.must_not_pause
            .cmp(&other.must_not_pause)
            .then(self.priority.cmp(&other.priority))
            .then(self.recently_resumed.cmp(&other.recently_resumed))
            .then(other.energy_wh.total_cmp(&self.energy_wh))
            .then(self.id.cmp(other.id))
    }

    /// First = resumed first.
    fn resume_cmp(&self, other: &Self) -> std::cmp::Ordering {
        other
            .must_not_pause
            .cmp(&self.must_not_pause)
            .then(other.priority.cmp(&self.priority))
            .then(self.energy_wh.total_cmp(&other.energy_wh))
            .then(self.id.cmp(other.id))
    }
}

/// Precomputed headroom, paths and coefficients.
struct Ctx {
    headroom: Vec<PerLine>,
    /// Per EVSE: its node and all its ancestors, nearest first.
    paths: Vec<Vec<usize>>,
    coef: Vec<PerLine>,
    min: Vec<f64>,
}

impl Ctx {
    fn new(problem: &Problem) -> Self {
        let headroom = problem
            .nodes
            .iter()
            // f64::max maps NaN to 0.
            .map(|n| (n.limit - n.uncontrolled).map(|v| v.max(0.0)))
            .collect();
        let paths = problem
            .evses
            .iter()
            .map(|e| {
                let mut path = vec![e.node];
                let mut at = e.node;
                while let Some(p) = problem.nodes[at].parent {
                    path.push(p);
                    at = p;
                }
                path
            })
            .collect();
        let coef = problem
            .evses
            .iter()
            .map(|e| e.circuit.line_coefficients(e.ev_phases))
            .collect();
        let min = problem.evses.iter().map(|e| e.min_a).collect();
        Ctx {
            headroom,
            paths,
            coef,
            min,
        }
    }

    /// Whether EVSE `i` puts load on `line` of `node`.
    fn loads(&self, i: usize, node: usize, line: Line) -> bool {
        self.coef[i][line] > 0.0 && self.paths[i].contains(&node)
    }

    /// Per-node loads for `amps[i]` (None = not drawing), summed in EVSE index order.
    fn node_loads(&self, amps: impl Iterator<Item = (usize, f64)>) -> Vec<PerLine> {
        let mut load = vec![PerLine::ZERO; self.headroom.len()];
        for (i, a) in amps {
            let l = self.coef[i] * a;
            for &nd in &self.paths[i] {
                load[nd] += l;
            }
        }
        load
    }

    fn min_loads(&self, charging: &[bool]) -> Vec<PerLine> {
        self.node_loads(
            (0..charging.len())
                .filter(|&i| charging[i])
                .map(|i| (i, self.min[i])),
        )
    }

    fn overloaded(&self, load: &[PerLine]) -> Vec<(usize, Line)> {
        let mut out = Vec::new();
        for (nd, l) in load.iter().enumerate() {
            for line in Line::ALL {
                if l[line] > self.headroom[nd][line] {
                    out.push((nd, line));
                }
            }
        }
        out
    }

    fn fits(&self, load: &[PerLine]) -> bool {
        load.iter()
            .zip(&self.headroom)
            .all(|(l, h)| l.fits_within(h))
    }

    /// Whether the minimums of `charging` plus EVSE `i` fit.
    fn min_fits_with(&self, charging: &[bool], i: usize) -> bool {
        let mut trial = charging.to_vec();
        trial[i] = true;
        self.fits(&self.min_loads(&trial))
    }

    /// Weighted max-min water-filling. Returns `(amps, binding)` for charging EVSEs.
    fn water_fill(&self, problem: &Problem, charging: &[bool]) -> Vec<Option<(f64, Binding)>> {
        let evses = &problem.evses;
        let n = evses.len();
        let mut out: Vec<Option<(f64, Binding)>> = vec![None; n];
        let mut active: Vec<usize> = (0..n).filter(|&i| charging[i]).collect();
        let amps_at = |i: usize, level: f64| -> f64 {
            let e = &evses[i];
            // Compare levels, not amps, so `max_a / weight` gives exactly `max_a`.
            if level >= e.max_a / e.weight {
                e.max_a
            } else if level <= e.min_a / e.weight {
                e.min_a
            } else {
                (e.weight * level).clamp(e.min_a, e.max_a)
            }
        };
        let mut level = 0.0_f64;

        while !active.is_empty() {
            let frozen = |i: usize| out[i].as_ref().map(|(a, _)| *a);
            let loads_at = |lv: f64| {
                self.node_loads((0..n).filter_map(|i| {
                    frozen(i)
                        .map(|a| (i, a))
                        .or_else(|| active.contains(&i).then(|| (i, amps_at(i, lv))))
                }))
            };
            let fixed = self.node_loads((0..n).filter_map(|i| frozen(i).map(|a| (i, a))));

            // Lowest level at which some constraint becomes tight, or everyone is at max.
            let mut target = active
                .iter()
                .map(|&i| evses[i].max_a / evses[i].weight)
                .fold(0.0_f64, f64::max);
            for (nd, h) in self.headroom.iter().enumerate() {
                for line in Line::ALL {
                    let members: Vec<usize> = active
                        .iter()
                        .copied()
                        .filter(|&i| self.loads(i, nd, line))
                        .collect();
                    if members.is_empty() {
                        continue;
                    }
                    let t = self.tight_level(evses, &members, line, fixed[nd][line], h[line]);
                    target = target.min(t);
                }
            }
            let mut candidate = target.max(level);
            if !self.fits(&loads_at(candidate)) {
                // Float error: bisect between the known-feasible level and the target.
                let (mut lo, mut hi) = (level, candidate);
                for _ in 0..200 {
                    let mid = lo + (hi - lo) / 2.0;
                    if mid <= lo || mid >= hi {
                        break;
                    }
                    if self.fits(&loads_at(mid)) {
                        lo = mid;
                    } else {
                        hi = mid;
                    }
                }
                candidate = lo;
            }
            level = candidate;

            let load = loads_at(level);
            let slack = |nd: usize, line: Line| self.headroom[nd][line] - load[nd][line];
            let tight = |nd: usize, line: Line| slack(nd, line) <= TIGHT_TOLERANCE_A;
            let mut newly = Vec::new();
            for &i in &active {
                let a = amps_at(i, level);
                let bound = if a >= evses[i].max_a {
                    Some(Binding::EvseMax)
                } else {
                    self.first_tight(problem, i, &tight)
                };
                if let Some(bound) = bound {
                    newly.push((i, a, bound));
                }
            }
            if newly.is_empty() {
                // Safety net for extreme weights: freeze on the constraint with least slack.
                let mut best: Option<(f64, usize, Line)> = None;
                for &i in &active {
                    for &nd in &self.paths[i] {
                        for line in Line::ALL {
                            if self.coef[i][line] > 0.0 {
                                let s = slack(nd, line);
                                if best.is_none_or(|(b, _, _)| s < b) {
                                    best = Some((s, nd, line));
                                }
                            }
                        }
                    }
                }
                if let Some((_, nd, line)) = best {
                    for &i in &active {
                        if self.loads(i, nd, line) {
                            newly.push((i, amps_at(i, level), node_binding(problem, nd, line)));
                        }
                    }
                }
            }
            if newly.is_empty() {
                // Unreachable in practice; never loop forever.
                for &i in &active {
                    newly.push((i, amps_at(i, level), Binding::EvseMax));
                }
            }
            for (i, a, bound) in newly {
                out[i] = Some((a, bound));
            }
            active.retain(|&i| out[i].is_none());
        }
        out
    }

    /// The first tight constraint on EVSE `i`'s path, nearest node first, L1..L3.
    fn first_tight(
        &self,
        problem: &Problem,
        i: usize,
        tight: &impl Fn(usize, Line) -> bool,
    ) -> Option<Binding> {
        for &nd in &self.paths[i] {
            for line in Line::ALL {
                if self.coef[i][line] > 0.0 && tight(nd, line) {
                    return Some(node_binding(problem, nd, line));
                }
            }
        }
        None
    }

    /// The largest level at which `fixed + Σ coef·clamp(w·L, min, max)` over `members` stays at
    /// most `cap` (infinity if it always does). The load is piecewise linear and non-decreasing.
    fn tight_level(
        &self,
        evses: &[Evse],
        members: &[usize],
        line: Line,
        fixed: f64,
        cap: f64,
    ) -> f64 {
        let mut load = fixed;
        let mut events = Vec::with_capacity(2 * members.len());
        for &i in members {
            let e = &evses[i];
            let c = self.coef[i][line];
            load += c * e.min_a;
            let slope = c * e.weight;
            events.push((e.min_a / e.weight, slope));
            events.push((e.max_a / e.weight, -slope));
        }
        events.sort_by(|a, b| a.0.total_cmp(&b.0));
        let (mut at, mut slope) = (0.0_f64, 0.0_f64);
        if load >= cap {
            return 0.0;
        }
        for (pos, delta) in events {
            if pos > at {
                let next = load + slope * (pos - at);
                if next > cap {
                    return if slope > 0.0 {
                        at + (cap - load) / slope
                    } else {
                        at
                    };
                }
                load = next;
                at = pos;
            }
            slope += delta;
        }
        f64::INFINITY
    }
}

fn node_binding(problem: &Problem, nd: usize, line: Line) -> Binding {
    let node = &problem.nodes[nd];
    Binding::Node {
        node: node.id.clone(),
        line,
        source: node.limit_source.clone(),
    }
}

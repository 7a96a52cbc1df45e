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
//! constraint is one (node, line) pair. A node's limit is [`effective_limit`]: per line the
//! minimum of its physical limit and every active [`LimitConstraint`] (demand response,
//! policies, operator overrides), with the source named per line; its uncontrolled load is
//! [`uncontrolled_load`]: measured minus controlled plus the reserved draw of non-compliant
//! EVSEs.
//!
//! # Rule precedence
//!
//! **limits (safety) > dwell > work conservation > fairness.**
//!
//! 1. *Charging set.* EVSEs that were charging (or are new: no rotation entry) start in the set;
//!    EVSEs paused less than `dwell_s` ago stay paused (dwell beats work conservation).
//!    While the minimums of the set overload some constraint, the first EVSE in **pause order**
//!    that loads an overloaded constraint is paused, whatever its dwell (safety beats dwell).
//!    EVSEs the plan idles this slot ([`Evse::plan_a`]) start outside the set, unless dwell
//!    holds them charging (dwell beats the plan) or they may not pause.
//!    Pause order: `may_pause = false` last; lower `priority` first; EVSEs that resumed less than
//!    `dwell_s` ago after those that did not (same priority); more `energy_wh` first; then id.
//! 2. *Work conservation.* In **resume order** (`may_pause = false` first, higher priority,
//!    less energy, id), every EVSE not held by dwell (paused at least `dwell_s` ago, or paused
//!    for safety in step 1) is added to the set when its minimum fits.
//! 3. *Fairness rotation.* A waiting EVSE (paused at least `dwell_s` ago, minimum does not fit)
//!    swaps with the first charging EVSE in pause order that may pause, has had its turn
//!    (charging at least `turn_s`, and at least `dwell_s`), and has lower priority, or equal
//!    priority and strictly more `energy_wh`, provided the minimums fit after the swap. Every
//!    EVSE takes part in at most one swap per tick. Step 2 then runs once more.
//! 4. *Weighted max-min water-filling* on the charging set: EVSE `i` gets
//!    `clamp(weight_i · L, min_i, cap_i)` for a common level `L`, raised until a constraint is
//!    tight or everyone is at its cap (`max_a`, or the plan's target: see [`Evse::plan_a`]).
//!    One sweep of `L` upwards: every constraint's load is linear in `L` between events (an
//!    EVSE starts rising at `min/w`, reaches its cap at `cap/w`, or a constraint fills), so the
//!    next event comes from a sorted list and a heap. A filling constraint is summed afresh
//!    before anyone freezes on it; EVSEs at their cap freeze with [`Binding::EvseMax`] (or
//!    [`Binding::Plan`]), EVSEs on a tight constraint with [`Binding::Node`] (the tight
//!    constraint nearest to the EVSE). A final fresh sum takes back any rounding overshoot.
//!
//! # Cost
//!
//! O(N · depth · log N) for N EVSEs; 1,000 EVSEs in a 3-level tree take about 0.7 ms and
//! 10,000 about 9 ms on the reference machine (BENCHMARKS.md).
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
/// Default turn: how long an EVSE charges before the rotation may pause it for a waiting one,
/// in seconds. Every swap leaves the waiting EVSE's minimum unused for a ramp or two (break
/// before make), so turns longer than the dwell lose less energy.
pub const DEFAULT_TURN_S: i64 = 900;

/// The IEC 61851 minimum AC charging current (A), below which a charger pauses.
pub const DEFAULT_MIN_A: f64 = 6.0;

/// What bounds one EVSE's current, from every source the controller knows; gives the
/// [`Evse::min_a`] and [`Evse::max_a`] of a problem.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct EvseLimits {
    /// The charger's rating for this EVSE (A per phase).
    pub charger_a: f64,
    /// The cable's rating (proximity pilot), if known.
    pub cable_a: Option<f64>,
    /// The EV's maximum (ISO 15118 `evMaxCurrent`), if known.
    pub ev_max_a: Option<f64>,
    /// The EV's minimum (ISO 15118 `evMinCurrent`), if known; otherwise [`DEFAULT_MIN_A`].
    pub ev_min_a: Option<f64>,
    /// A cap learned from the EV drawing less than it was offered, if any.
    pub learned_cap_a: Option<f64>,
}

impl EvseLimits {
    /// The smallest of the known maxima. Unknown or non-finite values are ignored, except the
    /// charger's, which is always taken (a NaN rating makes the EVSE invalid in `allocate`).
    pub fn max_a(&self) -> f64 {
        [self.cable_a, self.ev_max_a, self.learned_cap_a]
            .into_iter()
            .flatten()
            .filter(|v| v.is_finite())
            .fold(self.charger_a, f64::min)
    }

    /// The EV's minimum, or the IEC 61851 6 A. An EV whose maximum is below its minimum cannot
    /// charge: allocate() marks it invalid.
    pub fn min_a(&self) -> f64 {
        self.ev_min_a
            .filter(|v| v.is_finite() && *v >= 0.0)
            .unwrap_or(DEFAULT_MIN_A)
    }
}

/// A constraint within this many amps of its headroom counts as tight.
pub const TIGHT_TOLERANCE_A: f64 = 1e-7;

/// A node of the electrical tree: the grid connection, a feeder, a circuit or a station.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Node {
    /// Identifier, reported in [`Binding::Node`].
    pub id: String,
    /// Index of the parent node; `None` only for node 0, the grid connection.
    pub parent: Option<usize>,
    /// Effective per-line limit in amps, already the minimum of all sources
    /// ([`effective_limit`]).
    pub limit: PerLine,
    /// Which source set `limit` on each line (e.g. `"physical"`, `"dr:event-7"`); carried into
    /// bindings.
    pub limit_source: LineSources,
    /// Load on this node that Loadstar does not control, plus the reserved draw of
    /// non-compliant EVSEs, per line ([`uncontrolled_load`]); subtracted from the headroom.
    pub uncontrolled: PerLine,
}

/// The source of a node's limit on each line, `[L1, L2, L3]`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct LineSources(pub [String; 3]);

impl LineSources {
    /// The source on `line`.
    pub fn get(&self, line: Line) -> &str {
        &self.0[line.index()]
    }
}

impl From<&str> for LineSources {
    /// The same source on every line.
    fn from(source: &str) -> Self {
        LineSources([source.to_owned(), source.to_owned(), source.to_owned()])
    }
}

impl From<String> for LineSources {
    fn from(source: String) -> Self {
        source.as_str().into()
    }
}

/// A time-bounded limit on a node from some source: demand response, a policy plugin, an
/// operator override.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LimitConstraint {
    /// Where it comes from, reported in bindings (e.g. `"dr:event-7"`, `"override"`).
    pub source: String,
    /// The limit per line (A). NaN or negative counts as 0: a broken input never loosens.
    pub limit: PerLine,
    /// Active from this time (seconds, caller's clock), inclusive.
    pub from_s: i64,
    /// Active until this time, exclusive.
    pub until_s: i64,
}

impl LimitConstraint {
    /// Whether it applies at `now_s`.
    pub fn is_active(&self, now_s: i64) -> bool {
        self.from_s <= now_s && now_s < self.until_s
    }
}

/// The effective limit of a node at `now_s`: per line, the minimum of the physical limit
/// (source `"physical"`) and every active constraint, with the source that set it. On a tie
/// the physical limit, then the earlier constraint, is named. A NaN or negative value counts
/// as 0.
pub fn effective_limit(
    physical: PerLine,
    constraints: &[LimitConstraint],
    now_s: i64,
) -> (PerLine, LineSources) {
    let clean = |v: f64| if v.is_nan() { 0.0 } else { v.max(0.0) };
    let mut limit = physical.map(clean);
    let mut sources = LineSources::from("physical");
    for c in constraints.iter().filter(|c| c.is_active(now_s)) {
        for line in Line::ALL {
            let v = clean(c.limit[line]);
            if v < limit[line] {
                limit[line] = v;
                sources.0[line.index()] = c.source.clone();
            }
        }
    }
    (limit, sources)
}

/// The load a node carries that Loadstar does not control: what its meter measures minus what
/// the controlled EVSEs under it are measured to draw, plus the reserved draw of EVSEs found
/// non-compliant (they are left out of the problem and counted at what they really draw).
///
/// Not floored at 0: PV export behind the meter legitimately lowers it. NaN (a missing
/// reading) must be replaced by the caller's worst case before it gets here; NaN is returned
/// as NaN and then counts as no headroom.
pub fn uncontrolled_load(
    measured: PerLine,
    measured_controlled: PerLine,
    reserved_noncompliant: PerLine,
) -> PerLine {
    measured - measured_controlled + reserved_noncompliant
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
    /// The horizon plan's target for this slot (A per phase), if a plan is followed: it caps
    /// the EVSE at `max(plan_a, min_a)` ([`Binding::Plan`]); below `min_a / 2` the plan idles
    /// the EVSE this slot ([`PauseReason::Plan`]) unless it must not pause or dwell holds it.
    pub plan_a: Option<f64>,
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
    /// How long an EVSE charges before the fairness rotation may pause it ([`DEFAULT_TURN_S`];
    /// never less than `dwell_s`).
    pub turn_s: i64,
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
            turn_s: DEFAULT_TURN_S,
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
    /// The horizon plan gives it (almost) nothing this slot: it charges later, for less.
    Plan,
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
        /// The node's `limit_source` on that line.
        source: String,
    },
    /// The EVSE is at its own `max_a`.
    EvseMax,
    /// The EVSE is at the horizon plan's target for this slot (below its `max_a`).
    Plan,
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
    let by_id = validate(problem)?;
    let ctx = Ctx::new(problem);
    let evses = &problem.evses;
    let n = evses.len();

    let invalid: Vec<Option<String>> = evses.iter().map(invalid_reason).collect();
    let valid: Vec<usize> = (0..n).filter(|&i| invalid[i].is_none()).collect();

    // Previous rotation entries, by a merge of two id-ordered sequences (no lookups).
    let mut previous: Vec<Option<RotationEntry>> = vec![None; n];
    let mut entries = problem.rotation.iter().peekable();
    for &i in &by_id {
        while entries
            .next_if(|(id, _)| id.as_str() < evses[i].id.as_str())
            .is_some()
        {}
        if let Some((_, entry)) = entries.next_if(|(id, _)| **id == evses[i].id) {
            previous[i] = Some(*entry);
        }
    }
    // Previous state: paused, and whether dwell still locks it in that state.
    let mut was_paused = vec![false; n];
    let mut locked = vec![false; n];
    let mut turn_over = vec![true; n];
    let turn_s = problem.turn_s.max(problem.dwell_s);
    for &i in &valid {
        if let Some(entry) = previous[i] {
            let since = problem.now_s.saturating_sub(entry.since_s);
            was_paused[i] = entry.paused;
            locked[i] = since < problem.dwell_s;
            turn_over[i] = since >= turn_s;
        }
    }
    // The plan idles an EVSE this slot unless it must not pause or dwell holds it charging.
    let plan_idle: Vec<bool> = (0..n)
        .map(|i| {
            let e = &evses[i];
            let idle = e.plan_a.is_some_and(|p| p < e.min_a / 2.0);
            let dwell_holds_charging = !was_paused[i] && locked[i];
            idle && e.may_pause && !dwell_holds_charging
        })
        .collect();

    let keys: Vec<PauseKey> = (0..n)
        .map(|i| PauseKey::new(&evses[i], !was_paused[i] && locked[i]))
        .collect();
    let mut pause_order = valid.clone();
    pause_order.sort_unstable_by(|&a, &b| keys[a].pause_cmp(&keys[b]));
    let mut resume_order = valid.clone();
    resume_order.sort_unstable_by(|&a, &b| keys[a].resume_cmp(&keys[b]));

    // 1. Start with everyone not paused; pause for safety until the minimums fit.
    let mut set = ChargingSet::new(&ctx, n);
    for &i in &valid {
        if !was_paused[i] && !plan_idle[i] {
            set.add(&ctx, i);
        }
    }
    set.pause_until_fits(&ctx, &pause_order);

    // 2. Work conservation: resume (or keep) everyone not held by dwell whose minimum fits.
    let held = |i: usize| (was_paused[i] && locked[i]) || plan_idle[i];
    let resume_pass = |set: &mut ChargingSet| {
        for &i in &resume_order {
            if !set.charging[i] && !held(i) && set.fits_with(&ctx, i) {
                set.add(&ctx, i);
            }
        }
    };
    resume_pass(&mut set);

    // 3. Fairness rotation: swap waiting EVSEs with charging ones that had their turn. The
    // partners that qualify are a prefix of the pause order (priority ascending, then energy
    // descending), so each search stops at the first that does not.
    let waiting = |i: usize, set: &ChargingSet| {
        was_paused[i] && !locked[i] && !plan_idle[i] && !set.charging[i]
    };
    let mut swapped = vec![false; n];
    let partners: Vec<usize> = pause_order
        .iter()
        .copied()
        .filter(|&c| set.charging[c] && !was_paused[c] && turn_over[c] && evses[c].may_pause)
        .collect();
    for &w in &resume_order {
        if !waiting(w, &set) {
            continue;
        }
        let we = &evses[w];
        let mut partner = None;
        for &c in &partners {
            let ce = &evses[c];
            let ranks_below = ce.priority < we.priority
                || (ce.priority == we.priority && ce.energy_wh > we.energy_wh);
            if !ranks_below {
                break;
            }
            if set.charging[c] && !swapped[c] && set.fits_swapped(&ctx, w, c) {
                partner = Some(c);
                break;
            }
        }
        if let Some(c) = partner {
            set.remove(&ctx, c);
            set.add(&ctx, w);
            swapped[c] = true;
            swapped[w] = true;
        }
    }
    // Incremental sums drift by rounding: continue from loads summed afresh.
    set.recompute(&ctx);
    resume_pass(&mut set);
    set.recompute(&ctx);
    set.pause_until_fits(&ctx, &pause_order);

    // 4. Water-filling on the charging set.
    let filled = ctx.water_fill(problem, &set);

    let mut setpoints = Vec::with_capacity(n);
    let mut next_entry: Vec<Option<RotationEntry>> = vec![None; n];
    for (i, evse) in evses.iter().enumerate() {
        let (amps, bound) = if let Some(reason) = &invalid[i] {
            (0.0, Binding::Invalid(reason.clone()))
        } else if set.charging[i] {
            filled[i].clone().unwrap_or((0.0, Binding::EvseMax))
        } else if plan_idle[i] {
            (0.0, Binding::Paused(PauseReason::Plan))
        } else if was_paused[i] && locked[i] && set.fits_with(&ctx, i) {
            (0.0, Binding::Paused(PauseReason::Dwell))
        } else {
            (0.0, Binding::Paused(PauseReason::NoRoomForMinimum))
        };
        setpoints.push(Setpoint {
            evse: evse.id.clone(),
            amps,
            bound,
        });

        let previous = previous[i];
        next_entry[i] = if invalid[i].is_some() {
            previous
        } else {
            let paused = !set.charging[i];
            match previous {
                Some(entry) if entry.paused == paused => Some(entry),
                _ => Some(RotationEntry {
                    paused,
                    since_s: problem.now_s,
                }),
            }
        };
    }
    // In id order, so the map is bulk-built without comparisons beyond a sortedness check.
    let rotation: Rotation = by_id
        .iter()
        .filter_map(|&i| next_entry[i].map(|entry| (evses[i].id.clone(), entry)))
        .collect();
    Ok(Allocation {
        setpoints,
        rotation,
    })
}

/// Checks the structure; returns the EVSE indices in id order.
fn validate(problem: &Problem) -> Result<Vec<usize>, AllocateError> {
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
    for evse in &problem.evses {
        if evse.node >= problem.nodes.len() {
            return Err(AllocateError::MissingNode {
                evse: evse.id.clone(),
                node: evse.node,
            });
        }
    }
    let mut by_id: Vec<usize> = (0..problem.evses.len()).collect();
    by_id.sort_unstable_by(|&a, &b| problem.evses[a].id.cmp(&problem.evses[b].id));
    if let Some(pair) = by_id
        .windows(2)
        .find(|w| problem.evses[w[0]].id == problem.evses[w[1]].id)
    {
        return Err(AllocateError::DuplicateEvse {
            id: problem.evses[pair[0]].id.clone(),
        });
    }
    Ok(by_id)
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
    if let Some(p) = evse.plan_a
        && (!finite(p) || p < 0.0)
    {
        return Some(format!("plan_a must be finite and >= 0, got {p}"));
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

/// Relative distance within which an EVSE event and a constraint event count as simultaneous.
const LEVEL_TIE: f64 = 1e-12;

/// A constraint whose load, summed afresh, is this far under its headroom when its lazy sum
/// says tight is not tight yet (far below [`TIGHT_TOLERANCE_A`]).
const RE_AIM_A: f64 = 1e-9;

/// Index of the constraint (node, line).
fn cidx(node: usize, line: Line) -> usize {
    node * 3 + line.index()
}

/// Precomputed headroom, tree order and coefficients.
struct Ctx {
    headroom: Vec<PerLine>,
    parent: Vec<Option<usize>>,
    /// Pre-order index of each node and the end of its subtree: `v` is in the subtree of `u`
    /// iff `tin[u] <= tin[v] < tout[u]`.
    tin: Vec<usize>,
    tout: Vec<usize>,
    /// EVSE indices sorted by their node's pre-order index; `range[u]` is the slice of EVSEs in
    /// the subtree of node `u`.
    by_tree: Vec<usize>,
    range: Vec<(usize, usize)>,
    evse_node: Vec<usize>,
    coef: Vec<PerLine>,
    min: Vec<f64>,
    /// The EVSE's own cap this tick: `max_a`, lowered by the plan, and the binding when reached.
    cap: Vec<f64>,
    cap_binding: Vec<Binding>,
}

impl Ctx {
    fn new(problem: &Problem) -> Self {
        let m = problem.nodes.len();
        let headroom = problem
            .nodes
            .iter()
            // f64::max maps NaN to 0.
            .map(|n| (n.limit - n.uncontrolled).map(|v| v.max(0.0)))
            .collect();
        let parent: Vec<Option<usize>> = problem.nodes.iter().map(|n| n.parent).collect();

        // Pre-order numbering without recursion: children lists, then an explicit stack.
        let mut children: Vec<Vec<usize>> = vec![Vec::new(); m];
        for (i, p) in parent.iter().enumerate() {
            if let Some(p) = *p {
                children[p].push(i);
            }
        }
        let mut tin = vec![0; m];
        let mut tout = vec![0; m];
        let mut clock = 0;
        let mut stack: Vec<(usize, usize)> = if m > 0 { vec![(0, 0)] } else { Vec::new() };
        while let Some(top) = stack.last_mut() {
            let (u, next_child) = *top;
            if next_child == 0 {
                tin[u] = clock;
                clock += 1;
            }
            if let Some(&c) = children[u].get(next_child) {
                top.1 += 1;
                stack.push((c, 0));
            } else {
                tout[u] = clock;
                stack.pop();
            }
        }

        // Counting sort of the EVSEs by their node's pre-order index; a subtree is then the
        // slice between the prefix counts at `tin` and `tout`.
        let mut prefix = vec![0usize; m + 1];
        for e in &problem.evses {
            prefix[tin[e.node] + 1] += 1;
        }
        for t in 0..m {
            prefix[t + 1] += prefix[t];
        }
        let mut fill = prefix.clone();
        let mut by_tree = vec![0usize; problem.evses.len()];
        for (i, e) in problem.evses.iter().enumerate() {
            by_tree[fill[tin[e.node]]] = i;
            fill[tin[e.node]] += 1;
        }
        let range = (0..m).map(|u| (prefix[tin[u]], prefix[tout[u]])).collect();

        let coef = problem
            .evses
            .iter()
            .map(|e| e.circuit.line_coefficients(e.ev_phases))
            .collect();
        let min = problem.evses.iter().map(|e| e.min_a).collect();
        let evse_node = problem.evses.iter().map(|e| e.node).collect();
        let (cap, cap_binding) = problem
            .evses
            .iter()
            .map(|e| match e.plan_a {
                Some(p) if p.is_finite() && p.max(e.min_a) < e.max_a => {
                    (p.max(e.min_a), Binding::Plan)
                }
                _ => (e.max_a, Binding::EvseMax),
            })
            .unzip();
        Ctx {
            headroom,
            parent,
            tin,
            tout,
            by_tree,
            range,
            evse_node,
            coef,
            min,
            cap,
            cap_binding,
        }
    }

    /// The nodes from `node` up to the root, nearest first.
    fn path(&self, node: usize) -> impl Iterator<Item = usize> + '_ {
        std::iter::successors(Some(node), |&nd| self.parent[nd])
    }

    fn in_subtree(&self, node: usize, root: usize) -> bool {
        self.tin[root] <= self.tin[node] && self.tin[node] < self.tout[root]
    }

    /// Per-node loads of `amps` (one value per EVSE), summed in EVSE index order.
    fn node_loads(&self, amps: &[f64]) -> Vec<PerLine> {
        let mut load = vec![PerLine::ZERO; self.headroom.len()];
        for (i, &a) in amps.iter().enumerate() {
            if a != 0.0 {
                let l = self.coef[i] * a;
                for nd in self.path(self.evse_node[i]) {
                    load[nd] += l;
                }
            }
        }
        load
    }

    /// Weighted max-min water-filling as one sweep of a common level `L` upwards.
    ///
    /// EVSE `i` draws `clamp(w_i·L, min_i, cap_i)` until it freezes. Every constraint's load is
    /// linear in `L` between events, kept lazily as (load at a reference level, slope). Events:
    /// an EVSE starts rising (at `min/w`) or reaches its cap (at `cap/w`, freezing it), and a
    /// constraint becomes tight (freezing every EVSE on it). The next constraint event comes
    /// from a heap with lazy invalidation, so the sweep costs O(N·depth·log N).
    fn water_fill(&self, problem: &Problem, set: &ChargingSet) -> Vec<Option<(f64, Binding)>> {
        let evses = &problem.evses;
        let n = evses.len();
        let m = self.headroom.len();
        let mut out: Vec<Option<(f64, Binding)>> = vec![None; n];

        let mut cons = vec![Lazy::default(); 3 * m];
        for (nd, load) in set.load.iter().enumerate() {
            for line in Line::ALL {
                cons[cidx(nd, line)].load = load[line];
            }
        }
        // A constraint that holds every member at its cap can never bind: leave it out of
        // the heap (most station constraints are of this kind).
        let caps: Vec<f64> = (0..n)
            .map(|i| if set.charging[i] { self.cap[i] } else { 0.0 })
            .collect();
        for (nd, full) in self.node_loads(&caps).iter().enumerate() {
            for line in Line::ALL {
                if full[line] <= self.headroom[nd][line] {
                    cons[cidx(nd, line)].done = true;
                }
            }
        }

        // EVSE events, ordered by level; at equal levels starts before caps, then by index.
        let mut events: Vec<(f64, bool, usize)> = Vec::with_capacity(2 * n);
        for (i, e) in evses.iter().enumerate() {
            if set.charging[i] {
                let w = e.weight;
                if self.cap[i] > self.min[i] {
                    events.push((self.min[i] / w, false, i));
                }
                events.push((self.cap[i] / w, true, i));
            }
        }
        events.sort_unstable_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));

        let mut rising = vec![false; n];
        let mut heap: std::collections::BinaryHeap<HeapEntry> = std::collections::BinaryHeap::new();
        let mut level = 0.0_f64;
        let mut next_event = 0;

        // Changes EVSE i's slope contribution on its constraints by `sign · w_i · coef`.
        // Constraints whose slope changed since the last push: one heap entry each per batch
        // of simultaneous events, not one per EVSE.
        let mut dirty: Vec<usize> = Vec::new();
        let shift = |i: usize,
                     sign: f64,
                     delta_count: isize,
                     level: f64,
                     cons: &mut Vec<Lazy>,
                     dirty: &mut Vec<usize>| {
            let w = evses[i].weight;
            for nd in self.path(evses[i].node) {
                for line in Line::ALL {
                    let c = self.coef[i][line];
                    if c <= 0.0 {
                        continue;
                    }
                    let k = cidx(nd, line);
                    let lz = &mut cons[k];
                    lz.advance(level);
                    lz.rising = lz.rising.saturating_add_signed(delta_count);
                    lz.slope = if lz.rising == 0 {
                        0.0
                    } else {
                        lz.slope + sign * w * c
                    };
                    lz.version += 1;
                    if !lz.dirty {
                        lz.dirty = true;
                        dirty.push(k);
                    }
                }
            }
        };
        let flush = |level: f64,
                     cons: &mut Vec<Lazy>,
                     dirty: &mut Vec<usize>,
                     heap: &mut std::collections::BinaryHeap<HeapEntry>| {
            for k in dirty.drain(..) {
                let lz = &mut cons[k];
                lz.dirty = false;
                if !lz.done && lz.slope > 0.0 {
                    let h = self.headroom[k / 3][Line::ALL[k % 3]];
                    lz.advance(level);
                    heap.push(HeapEntry {
                        level: lz.at + ((h - lz.load) / lz.slope).max(0.0),
                        constraint: k,
                        version: lz.version,
                    });
                }
            }
        };

        loop {
            while next_event < events.len() && out[events[next_event].2].is_some() {
                next_event += 1;
            }
            while heap.peek().is_some_and(|top| {
                cons[top.constraint].done || cons[top.constraint].version != top.version
            }) {
                heap.pop();
            }
            let evse_at = events.get(next_event).map(|e| e.0);
            let cons_at = heap.peek().map(|top| top.level);
            match (evse_at, cons_at) {
                (None, None) => break,
                // EVSE events win near-ties (a cap reached as the constraint fills reads as the
                // cap); `settle` takes back any rounding overshoot this allows.
                (Some(e), c) if c.is_none_or(|c| e <= c + LEVEL_TIE * c.abs().max(1.0)) => {
                    level = level.max(e);
                    // Every EVSE event at this level, as one batch.
                    let batch_end = e + LEVEL_TIE * e.abs().max(1.0);
                    while let Some(&(at, is_cap, i)) = events.get(next_event) {
                        if at > batch_end {
                            break;
                        }
                        next_event += 1;
                        if out[i].is_some() {
                            continue;
                        }
                        if is_cap {
                            if rising[i] {
                                shift(i, -1.0, -1, level, &mut cons, &mut dirty);
                                rising[i] = false;
                            }
                            out[i] = Some((self.cap[i], self.cap_binding[i].clone()));
                        } else {
                            rising[i] = true;
                            shift(i, 1.0, 1, level, &mut cons, &mut dirty);
                        }
                    }
                    flush(level, &mut cons, &mut dirty, &mut heap);
                }
                _ => {
                    let Some(top) = heap.pop() else { break };
                    let k = top.constraint;
                    let (nd, line) = (k / 3, Line::ALL[k % 3]);
                    // The lazy load carries the rounding of every slope change: sum the
                    // members afresh before freezing anyone on it.
                    let at = level.max(top.level);
                    let (exact, slope) = self.exact_load(problem, set, &out, nd, line, at);
                    let target = self.headroom[nd][line];
                    let lz = &mut cons[k];
                    lz.load = exact;
                    lz.at = at;
                    if exact < target - RE_AIM_A && slope > 0.0 {
                        // Not tight yet: the lazy sum ran ahead. Re-aim.
                        lz.slope = slope;
                        lz.version += 1;
                        heap.push(HeapEntry {
                            level: at + (target - exact) / slope,
                            constraint: k,
                            version: lz.version,
                        });
                        continue;
                    }
                    let tight_at = if exact > target && slope > 0.0 {
                        at - (exact - target) / slope
                    } else {
                        at
                    };
                    level = level.max(tight_at);
                    lz.done = true;
                    let (start, end) = self.range[nd];
                    for &i in &self.by_tree[start..end] {
                        if !set.charging[i] || out[i].is_some() || self.coef[i][line] <= 0.0 {
                            continue;
                        }
                        let e = &evses[i];
                        let amps = (e.weight * level).clamp(self.min[i], self.cap[i]);
                        let bound = self
                            .nearest_tight(problem, i, level, &cons)
                            .unwrap_or_else(|| node_binding(problem, nd, line));
                        if rising[i] {
                            shift(i, -1.0, -1, level, &mut cons, &mut dirty);
                            rising[i] = false;
                        }
                        out[i] = Some((amps, bound));
                    }
                    flush(level, &mut cons, &mut dirty, &mut heap);
                }
            }
        }
        self.settle(problem, set, &mut out);
        out
    }

    /// The load of constraint (`nd`, `line`) at `level`, summed over its members, and its slope
    /// (the weighted coefficients of the members still rising there).
    fn exact_load(
        &self,
        problem: &Problem,
        set: &ChargingSet,
        out: &[Option<(f64, Binding)>],
        nd: usize,
        line: Line,
        level: f64,
    ) -> (f64, f64) {
        let (start, end) = self.range[nd];
        let (mut load, mut slope) = (0.0, 0.0);
        for &i in &self.by_tree[start..end] {
            let c = self.coef[i][line];
            if !set.charging[i] || c <= 0.0 {
                continue;
            }
            match &out[i] {
                Some((a, _)) => load += c * a,
                None => {
                    let w = problem.evses[i].weight;
                    let raw = w * level;
                    load += c * raw.clamp(self.min[i], self.cap[i]);
                    if raw >= self.min[i] && raw < self.cap[i] {
                        slope += c * w;
                    }
                }
            }
        }
        (load, slope)
    }

    /// The tight constraint nearest to EVSE `i` at `level` (nearest node first, L1..L3).
    fn nearest_tight(
        &self,
        problem: &Problem,
        i: usize,
        level: f64,
        cons: &[Lazy],
    ) -> Option<Binding> {
        for nd in self.path(problem.evses[i].node) {
            for line in Line::ALL {
                if self.coef[i][line] > 0.0 {
                    let lz = &cons[cidx(nd, line)];
                    let load = lz.load + lz.slope * (level - lz.at);
                    if self.headroom[nd][line] - load <= TIGHT_TOLERANCE_A {
                        return Some(node_binding(problem, nd, line));
                    }
                }
            }
        }
        None
    }

    /// Safety against rounding in the sweep: sums the loads afresh and, where a constraint is
    /// over (by rounding), takes the excess back from its members above their minimum, in
    /// proportion to what they have above it. Lowering only ever unloads other constraints.
    fn settle(&self, problem: &Problem, set: &ChargingSet, out: &mut [Option<(f64, Binding)>]) {
        for round in 0..4 {
            let amps: Vec<f64> = out
                .iter()
                .map(|o| o.as_ref().map_or(0.0, |(a, _)| *a))
                .collect();
            let load = self.node_loads(&amps);
            let mut clean = true;
            // Deepest nodes first (children have larger indices): fixing them may fix parents.
            for nd in (0..load.len()).rev() {
                for line in Line::ALL {
                    let excess = load[nd][line] - self.headroom[nd][line];
                    if excess <= 0.0 {
                        continue;
                    }
                    clean = false;
                    let (start, end) = self.range[nd];
                    let members = self.by_tree[start..end]
                        .iter()
                        .copied()
                        .filter(|&i| set.charging[i] && self.coef[i][line] > 0.0);
                    let above: f64 = members
                        .clone()
                        .map(|i| self.coef[i][line] * (amps[i] - self.min[i]))
                        .sum();
                    if above <= 0.0 {
                        continue;
                    }
                    // A little more than the excess, so the next fresh sum reads it as fitting;
                    // the last round takes everyone on it down to the minimum.
                    let share = if round == 3 {
                        1.0
                    } else {
                        (excess * 2.0 / above + 4.0 * f64::EPSILON).min(1.0)
                    };
                    for i in members {
                        let lowered = amps[i] - (amps[i] - self.min[i]) * share;
                        if let Some(slot) = out[i].as_mut()
                            && lowered < slot.0
                        {
                            *slot = (lowered.max(self.min[i]), node_binding(problem, nd, line));
                        }
                    }
                }
            }
            if clean {
                return;
            }
        }
    }
}

/// A constraint's load as a linear function of the level, kept lazily.
#[derive(Debug, Clone, Default)]
struct Lazy {
    /// Load at level `at`.
    load: f64,
    at: f64,
    slope: f64,
    /// How many rising EVSEs load it; at 0 the slope is exactly 0 whatever the rounding.
    rising: usize,
    version: u64,
    done: bool,
    /// Queued for a heap push at the end of the current batch.
    dirty: bool,
}

impl Lazy {
    fn advance(&mut self, level: f64) {
        if level > self.at {
            self.load += self.slope * (level - self.at);
            self.at = level;
        }
    }
}

/// A constraint becoming tight at `level`, valid while its `version` is current.
struct HeapEntry {
    level: f64,
    constraint: usize,
    version: u64,
}

impl PartialEq for HeapEntry {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == std::cmp::Ordering::Equal
    }
}
impl Eq for HeapEntry {}
impl PartialOrd for HeapEntry {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for HeapEntry {
    /// Reversed, so the max-heap pops the lowest level first (then the lowest constraint).
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        other
            .level
            .total_cmp(&self.level)
            .then(other.constraint.cmp(&self.constraint))
            .then(other.version.cmp(&self.version))
    }
}

/// The charging set and the per-node load of its minimums, kept incrementally.
struct ChargingSet {
    charging: Vec<bool>,
    load: Vec<PerLine>,
}

impl ChargingSet {
    fn new(ctx: &Ctx, n: usize) -> Self {
        ChargingSet {
            charging: vec![false; n],
            load: vec![PerLine::ZERO; ctx.headroom.len()],
        }
    }

    fn add(&mut self, ctx: &Ctx, i: usize) {
        self.charging[i] = true;
        let l = ctx.coef[i] * ctx.min[i];
        for nd in ctx.path(ctx.evse_node[i]) {
            self.load[nd] += l;
        }
    }

    fn remove(&mut self, ctx: &Ctx, i: usize) {
        self.charging[i] = false;
        let l = ctx.coef[i] * ctx.min[i];
        for nd in ctx.path(ctx.evse_node[i]) {
            self.load[nd] -= l;
        }
    }

    /// Sums the minimums afresh, in EVSE index order.
    fn recompute(&mut self, ctx: &Ctx) {
        let mins: Vec<f64> = (0..self.charging.len())
            .map(|i| if self.charging[i] { ctx.min[i] } else { 0.0 })
            .collect();
        self.load = ctx.node_loads(&mins);
    }

    /// Whether EVSE `i`'s minimum fits next to the set (only its own path can overload).
    fn fits_with(&self, ctx: &Ctx, i: usize) -> bool {
        ctx.path(ctx.evse_node[i]).all(|nd| {
            Line::ALL.into_iter().all(|line| {
                let c = ctx.coef[i][line];
                c <= 0.0 || self.load[nd][line] + c * ctx.min[i] <= ctx.headroom[nd][line]
            })
        })
    }

    /// Whether EVSE `w`'s minimum fits once charging EVSE `c` is paused.
    fn fits_swapped(&self, ctx: &Ctx, w: usize, c: usize) -> bool {
        let c_node = ctx.evse_node[c];
        ctx.path(ctx.evse_node[w]).all(|nd| {
            let freed = if ctx.in_subtree(c_node, nd) {
                ctx.coef[c] * ctx.min[c]
            } else {
                PerLine::ZERO
            };
            Line::ALL.into_iter().all(|line| {
                let cw = ctx.coef[w][line];
                cw <= 0.0
                    || self.load[nd][line] - freed[line] + cw * ctx.min[w] <= ctx.headroom[nd][line]
            })
        })
    }

    /// Pauses, in pause order, every charging EVSE that loads an overloaded constraint, until
    /// the minimums fit. Overloads only shrink as EVSEs pause, so one pass in pause order picks
    /// the same EVSEs as repeatedly pausing the first one that loads an overload.
    fn pause_until_fits(&mut self, ctx: &Ctx, pause_order: &[usize]) {
        let over =
            |load: &[PerLine], nd: usize, line: Line| load[nd][line] > ctx.headroom[nd][line];
        let any_over = (0..self.load.len())
            .any(|nd| Line::ALL.into_iter().any(|line| over(&self.load, nd, line)));
        if !any_over {
            return;
        }
        for &i in pause_order {
            if !self.charging[i] {
                continue;
            }
            let loads_over = ctx.path(ctx.evse_node[i]).any(|nd| {
                Line::ALL
                    .into_iter()
                    .any(|line| ctx.coef[i][line] > 0.0 && over(&self.load, nd, line))
            });
            if loads_over {
                self.remove(ctx, i);
            }
        }
        // Subtractions leave rounding residue (1e-17 A on a 0 A headroom reads as full).
        self.recompute(ctx);
    }
}

fn node_binding(problem: &Problem, nd: usize, line: Line) -> Binding {
    let node = &problem.nodes[nd];
    Binding::Node {
        node: node.id.clone(),
        line,
        source: node.limit_source.get(line).to_owned(),
    }
}

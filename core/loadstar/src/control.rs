//! The control loop: gather the site's state, allocate, dispatch, check.
//!
//! Every tick (and on events: a session starting or ending, a grid reading, a limit change) the
//! loop takes a snapshot of the site state, works out per EVSE what the station really enforces
//! (the dispatcher's dialogue state), builds the optimizer's problem, calls `allocate()` and
//! hands the setpoints to the dispatcher.
//!
//! The invariant the loop keeps (ARCHITECTURE.md states it): measured uncontrolled load + what
//! Loadstar commands + the draw of stations found non-compliant ≤ every node and line limit.
//! Every EVSE whose limit is in doubt is *held*: taken out of the problem and counted on its
//! path at the most it may draw:
//! - a change in flight: the larger of the old and the new value;
//! - a decrease accepted less than the ramp time ago: the old value;
//! - a change that failed or was not answered: the larger of the two (the station max if the
//!   old one is unknown);
//! - a station found drawing above its setpoint: what it draws;
//! - a disconnected station with a session: what it last accepted, or its max.
//!
//! Break before make: while any decrease is in flight, an increase goes out only if it fits
//! beside every EVSE counted at its old value until its decrease is accepted and ramped, so
//! increases only ever use headroom that is really free. One silent station holds only its own
//! headroom.
//!
//! A station that accepted a profile is read back (GetCompositeSchedule, `verify`) once the
//! change has settled and every few minutes: one whose composite schedule allows more than its
//! setpoint is held at that value.
//!
//! **Must never** hold a lock across an await, send an increase computed from headroom a
//! decrease of the same tick frees, or count a station at less than it may draw.

pub mod drive;
pub mod failsafe;
pub mod planner;
pub mod plugin_report;
pub mod policy;
pub mod profile;
mod snapshot;
pub mod verify;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use loadstar_ocpp::{OcppVersion, Priority, v16, v201};
use loadstar_optimizer::allocate::{
    self, Binding, Evse, LimitConstraint, Node, PauseReason, Problem, Rotation, effective_limit,
    uncontrolled_load,
};
use loadstar_optimizer::model::{PerLine, PhaseConnection, StationCircuit, StationWiring};
use serde::Serialize;
use tokio::sync::Notify;
use tracing::{debug, info, warn};

use crate::clock::Clock;
use crate::csms::{CallError, Csms, StationHandle};
use crate::site::{GRID_ID, SiteConfig, StationConfig};
use crate::state::{ChargingNeeds, SiteState};
use crate::store::{ProfileRecord, Store};
use failsafe::{BudgetNode, FallbackEvse, FallbackInput, FallbackStation, fallback_budget};
use profile::{Limit, Purpose, Timing, one_decimal_down};

/// The shortest time between two ticks that events trigger.
pub const EVENT_GAP: Duration = Duration::from_millis(100);
/// How long a change may wait for its answer before the station counts as in doubt (held at
/// the most it may draw) and stops holding up increases elsewhere.
const CONFIRM_TIMEOUT: TimeDelta = TimeDelta::seconds(5);
/// How often the fallback budget is recomputed.
const FAILSAFE_EVERY: TimeDelta = TimeDelta::seconds(2);
/// Decisions kept per EVSE for "why did EVSE 7 get 6 A?".
pub const DECISIONS_KEPT: usize = 32;

/// How far ahead the fallback budget honours announced limits (a dead controller cannot lower
/// the fallbacks when an event starts).
const FALLBACK_LOOKAHEAD: TimeDelta = TimeDelta::hours(1);
/// A station clock this far from ours (s) is not trusted with absolute times.
pub const CLOCK_AGREEMENT_S: i64 = 60;
/// Samples above the setpoint before a station counts as non-compliant.
const OVER_SAMPLES: u32 = 2;
/// Samples within the setpoint before a non-compliant station is trusted again.
const BACK_IN_LINE_SAMPLES: u32 = 3;
/// An EV drawing this much less than offered frees the difference (A).
const UNDERDRAW_A: f64 = 2.0;
/// How often a learned EV cap is raised to re-test the car.
const CAP_RETEST: TimeDelta = TimeDelta::seconds(120);
/// How much a re-test raises it (A).
const CAP_RETEST_STEP_A: f64 = 2.0;
/// What the dispatcher learns of a station that swallows the first raise after 0 A (go-e).
const SWALLOWS_RAISE: &str = "ignores the first raise after 0 A";
/// Below this (A) an EV offered its minimum or more takes no current.
const IDLE_A: f64 = 0.5;
/// Settled readings in a row of an EV taking no current before its share goes to the others
/// (full, or waiting on its own timer).
const IDLE_SAMPLES: u32 = 2;
/// How long an EV that takes no current stays at 0 A before it is offered its share again.
const IDLE_RETEST: TimeDelta = TimeDelta::minutes(10);

/// How the loop runs; from the site file's `[control]`.
#[derive(Debug, Clone)]
pub struct ControlConfig {
    pub tick: Duration,
    pub ramp: Duration,
    pub hysteresis_a: f64,
    pub profile_validity: Duration,
    pub building_reserve_a: f64,
    pub worst_case_load_a: f64,
    pub meter_timeout: Duration,
    pub noncompliance_tolerance_a: f64,
    pub fallback_rotation: Duration,
    /// How often the horizon plan is made again when nothing changed.
    pub plan_interval: Duration,
    /// Shortest pause or charging run of one EV, s (the allocator's dwell).
    pub dwell_s: i64,
    /// How long an EV charges before the fairness rotation may pause it, s.
    pub turn_s: i64,
    /// Shortest time between two increases sent to one station.
    pub raise_interval: Duration,
    /// Shortest time between two phase switches of one EVSE.
    pub phase_switch: TimeDelta,
    /// Whether EVs are switched between 3 phases and 1 at all.
    pub phase_switching: bool,
    /// A station measurement older than this is stale.
    pub stale_after: Duration,
    /// Whether a grid meter is configured (without one, the worst case is the uncontrolled
    /// load all the time).
    pub has_grid_meter: bool,
}

impl ControlConfig {
    pub fn from_site(site: &SiteConfig) -> Self {
        let c = site.control();
        ControlConfig {
            tick: Duration::from_millis(c.tick_ms),
            ramp: Duration::from_secs(c.ramp_s),
            hysteresis_a: c.hysteresis_a,
            profile_validity: Duration::from_secs(c.profile_validity_s),
            building_reserve_a: c.building_reserve_a,
            worst_case_load_a: c.worst_case_load_a,
            meter_timeout: Duration::from_secs(c.meter_timeout_s),
            noncompliance_tolerance_a: c.noncompliance_tolerance_a,
            fallback_rotation: Duration::from_secs(c.fallback_rotation_s),
            plan_interval: Duration::from_secs(c.plan_interval_s),
            dwell_s: c.dwell_s as i64,
            turn_s: c.turn_s as i64,
            raise_interval: Duration::from_secs(c.raise_interval_s),
            phase_switch: TimeDelta::seconds(c.phase_switch_s as i64),
            phase_switching: c.phase_switching,
            stale_after: site.csms().meter_interval() * 3,
            has_grid_meter: c.grid_meter.is_some(),
        }
    }
}

/// Ticks whose cost is kept for [`Controller::stats`].
const TICK_COSTS_KEPT: usize = 4096;

/// What the loop measured about itself (for benchmarks and `/metrics` later).
#[derive(Debug, Clone, Default)]
pub struct Stats {
    /// Wall-clock cost of the latest ticks (gather, allocate, dispatch; not the answers).
    pub tick_costs: VecDeque<Duration>,
    /// When a station last accepted a dynamic profile (wall clock).
    pub last_accepted: Option<std::time::Instant>,
}

/// One EVSE of the site: station id and EVSE (1.6 connector) id.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct EvseKey {
    pub station: String,
    pub evse: u32,
}

impl EvseKey {
    pub fn new(station: &str, evse: u32) -> Self {
        EvseKey {
            station: station.to_owned(),
            evse,
        }
    }

    /// The optimizer's id of this EVSE.
    pub fn label(&self) -> String {
        format!("{}/{}", self.station, self.evse)
    }
}

/// A time-bounded limit on a node from outside the site file: a demand-response event, an
/// operator override, a policy plugin. Never raises the site file's limit.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct ExternalLimit {
    /// Who set it (e.g. `dr:event-17`, `operator`, `plugin:peak-shaving`); one limit per
    /// source and node, a new one replaces the old.
    pub source: String,
    /// [`GRID_ID`] or a circuit id.
    pub node: String,
    pub limit: PerLine,
    pub from: DateTime<Utc>,
    pub until: DateTime<Utc>,
    pub reason: String,
}

/// A node's limit in force, for the API and tests.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NodeLimit {
    pub node: String,
    /// A per line.
    pub limit: PerLine,
    /// What binds each line (`physical`, `dr:…`, `plugin:<name>`, `plugin:<name>:safe`).
    pub sources: Vec<String>,
}

/// The node tree: the grid, then the circuits top-down; and each id's index.
fn node_tree(site: &SiteConfig) -> (Vec<&str>, HashMap<&str, usize>) {
    let mut ids: Vec<&str> = vec![GRID_ID];
    ids.extend(site.circuits().iter().map(|c| c.id.as_str()));
    let index = ids.iter().enumerate().map(|(i, id)| (*id, i)).collect();
    (ids, index)
}

/// The constraints of `limits` on `node`, for the optimizer.
fn limit_constraints(limits: &[ExternalLimit], node: &str) -> Vec<LimitConstraint> {
    limits
        .iter()
        .filter(|l| l.node == node)
        .map(|l| LimitConstraint {
            source: l.source.clone(),
            limit: l.limit,
            from_s: l.from.timestamp(),
            until_s: l.until.timestamp(),
        })
        .collect()
}

/// Why an entry point refused its input.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ControlError {
    #[error("no node {0:?} in the site file")]
    UnknownNode(String),
    #[error("no EVSE {0} in the site file")]
    UnknownEvse(String),
    #[error("no session on EVSE {0}")]
    NoSession(String),
    #[error("limit from {origin}: {message}")]
    BadLimit { origin: String, message: String },
}

/// One decision for one EVSE.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Decision {
    pub at: DateTime<Utc>,
    /// The setpoint the allocator gave (A per phase), or the value it was held at.
    pub amps: f64,
    /// What bound it (`None` when held).
    pub binding: Option<Binding>,
    /// Why it was held out of the allocation, if it was.
    pub held: Option<String>,
}

/// The dispatcher's view of one EVSE, for the API and tests.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EvseReport {
    pub key: EvseKey,
    /// What the station accepted last (A per phase); `None`: unknown (counted at its max).
    pub accepted_a: Option<f64>,
    /// A change in flight.
    pub pending_a: Option<f64>,
    pub fallback_a: f64,
    pub fallback_confirmed: bool,
    pub noncompliant: bool,
    pub learned_cap_a: Option<f64>,
    pub ev_phases: u8,
    /// Switched to one phase by Loadstar (the station can switch 3 to 1).
    pub one_phase: bool,
    pub decisions: Vec<Decision>,
}

/// The grid meter's latest reading: signed current per line (import positive).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GridSample {
    pub at: DateTime<Utc>,
    pub current: PerLine,
}

// ------------------------------------------------------------------ dispatcher state

#[derive(Debug, Clone, Copy, PartialEq)]
struct Pending {
    amps: f64,
    sent_at: DateTime<Utc>,
}

/// What one EVSE's station enforces, as far as the dialogue tells.
#[derive(Debug, Clone, Default)]
struct EvseLink {
    /// The transaction the dynamic state belongs to.
    transaction: Option<String>,
    /// Accepted value; `None` = unknown (the station may draw its max).
    accepted: Option<f64>,
    /// The accepted value before the last change and when that change was accepted.
    before: Option<f64>,
    changed_at: Option<DateTime<Utc>>,
    pending: Option<Pending>,
    /// A change that failed or timed out: the station may enforce this or `accepted`.
    unconfirmed: Option<f64>,
    /// When the active dynamic profile was sent (for renewal).
    sent_at: Option<DateTime<Utc>>,
    /// Whether the active dynamic profile is Loadstar's (not just the fallback).
    dynamic: bool,
    fallback_a: f64,
    fallback_confirmed: bool,
    fallback_pending: Option<f64>,
    /// The latest measurement already checked against the setpoint.
    checked_at: Option<DateTime<Utc>>,
    over: u32,
    within: u32,
    /// Reserved draw of a station found non-compliant.
    noncompliant: Option<f64>,
    learned_cap: Option<(f64, DateTime<Utc>)>,
    /// A raise after 0 A that the EV did not follow was re-sent once (go-e).
    raise_resent: bool,
    /// The EV drew nothing after a raise from 0 A, which was sent again: if it draws now, the
    /// station swallowed the first (a full car does not draw either).
    raise_suspect: bool,
    /// Settled readings in a row showing no current although the EV was offered some.
    zero_samples: u32,
    /// Since when the EV, taking no current, is left at 0 A (its share goes to the others).
    idle_since: Option<DateTime<Utc>>,
    /// Offered its share again after taking none: a raise it does not follow is not sent
    /// twice, unless the station is known to swallow the first.
    retesting: bool,
    /// When its composite schedule was last read back.
    verified_at: Option<DateTime<Utc>>,
    /// Its composite schedule allows this much, above what it accepted: it does not apply it.
    unapplied: Option<f64>,
    /// The phases the EV was measured to use on its own (0 = unknown = all).
    ev_phases: u8,
    /// Switched to one phase by Loadstar: it is given and counted on one line.
    one_phase: bool,
    /// A phase switch decided (`true`: to one phase), made once the EVSE is settled at 0 A.
    switch_to_one: Option<bool>,
    /// When the phases last changed, and when a switch was last weighed.
    phases_switched_at: Option<DateTime<Utc>>,
    phases_weighed_at: Option<DateTime<Utc>>,
    decisions: VecDeque<Decision>,
}

impl EvseLink {
    /// The phases the EV draws on now: one once switched, else its own.
    fn phases(&self) -> u8 {
        if self.one_phase { 1 } else { self.ev_phases }
    }

    /// Where the dialogue stands: settled, in a transition, or in doubt.
    fn doubt(&self, now: DateTime<Utc>, ramp: TimeDelta, station_max: f64) -> Doubt {
        let known = self.accepted.unwrap_or(station_max);
        if let Some(nc) = self.noncompliant {
            return Doubt::Held(
                nc.max(known.min(station_max)),
                "non-compliant: draws above its setpoint",
            );
        }
        if let Some(allowed) = self.unapplied {
            return Doubt::Held(
                allowed.max(known),
                "does not apply its profile: its composite schedule allows more",
            );
        }
        // In doubt, the station may also let its dynamic profile run out and fall back.
        let fallback = if self.fallback_confirmed {
            self.fallback_a
        } else {
            station_max
        };
        if let Some(p) = self.pending {
            if now < p.sent_at + CONFIRM_TIMEOUT {
                return Doubt::Transition {
                    to: p.amps,
                    at_most: known.max(p.amps),
                };
            }
            return Doubt::Held(
                known.max(p.amps).max(fallback),
                "change not confirmed in time",
            );
        }
        if let Some(u) = self.unconfirmed {
            return Doubt::Held(known.max(u).max(fallback), "change not confirmed");
        }
        if let (Some(before), Some(at)) = (self.before, self.changed_at)
            && before > known
            && now < at + ramp
        {
            return Doubt::Transition {
                to: known,
                at_most: before,
            };
        }
        Doubt::Settled
    }

    /// The most the station may let the EV draw now, if it is in doubt (held out of the
    /// allocation) or in a transition.
    #[cfg(test)]
    fn hold(
        &self,
        now: DateTime<Utc>,
        ramp: TimeDelta,
        station_max: f64,
    ) -> Option<(f64, &'static str)> {
        match self.doubt(now, ramp, station_max) {
            Doubt::Settled => None,
            Doubt::Transition { at_most, .. } => Some((at_most, "transition")),
            Doubt::Held(v, why) => Some((v, why)),
        }
    }

    fn record(&mut self, d: Decision) {
        let same = self
            .decisions
            .back()
            .is_some_and(|l| l.amps == d.amps && l.binding == d.binding && l.held == d.held);
        if same {
            return;
        }
        if self.decisions.len() >= DECISIONS_KEPT {
            self.decisions.pop_front();
        }
        self.decisions.push_back(d);
    }

    /// A new session (or none): the dynamic state starts over; the fallback stays.
    fn new_session(&mut self, transaction: Option<String>) {
        let fallback = self.fallback_confirmed.then_some(self.fallback_a);
        *self = EvseLink {
            transaction,
            accepted: fallback,
            fallback_a: self.fallback_a,
            fallback_confirmed: self.fallback_confirmed,
            fallback_pending: self.fallback_pending,
            decisions: std::mem::take(&mut self.decisions),
            ..EvseLink::default()
        };
    }
}

/// How much more power the other phase count must give before an EVSE on one phase goes
/// back to three (it stops for a moment to switch).
const PHASE_SWITCH_GAIN: f64 = 1.1;

/// Weighs a phase switch for problem EVSE `j` (`unshaped`: as it was before the policies),
/// on a station that can switch: `Some(to_one)` once weighed, `None` when there is nothing to
/// weigh. It is allocated again on its other phase count. Three phases go to one when they get
/// no room for the minimum on every line, or only more than the solar share; one goes back to
/// three when three give [`PHASE_SWITCH_GAIN`] more power within the same bounds.
fn weigh_phase_switch(
    problem: &Problem,
    base: &allocate::Allocation,
    j: usize,
    mut unshaped: Evse,
    rules: &[policy::EvseRule],
    one_phase: bool,
) -> Option<bool> {
    let (e, sp, rule) = (problem.evses.get(j)?, base.setpoints.get(j)?, rules.get(j)?);
    // Within its bounds: a solar EVSE whose share is below its minimum imports the rest.
    let within = |e: &Evse| rule.solar.is_none() || e.max_a > e.min_a + 1e-6;
    if !one_phase
        && !matches!(sp.bound, Binding::Paused(PauseReason::NoRoomForMinimum))
        && within(e)
    {
        return None;
    }
    unshaped.ev_phases = if one_phase { 0 } else { 1 };
    // The others, shaped already: the solar share counts only their lines, which shaping
    // leaves alone.
    policy::apply_one(&problem.evses, rules, j, &mut unshaped);
    let mut trial = problem.clone();
    trial.evses[j] = unshaped;
    let t = allocate::allocate(&trial).ok()?;
    let tsp = t.setpoints.get(j)?;
    let te = &trial.evses[j];
    let power = |e: &Evse, amps: f64| e.circuit.amps_to_watts(e.ev_phases, amps);
    let (base_in, trial_in) = (within(e), within(te));
    let better = tsp.amps > 0.0
        && ((trial_in && !base_in)
            || (trial_in == base_in
                && power(te, tsp.amps) > power(e, sp.amps) * PHASE_SWITCH_GAIN + 1.0));
    Some(if better { !one_phase } else { one_phase })
}

/// Where one EVSE's dialogue stands.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Doubt {
    /// The station enforces what it accepted.
    Settled,
    /// A change in flight (answer awaited) or a decrease ramping: the EV goes to `to` and may
    /// draw up to `at_most` meanwhile. Increases elsewhere wait until it is settled.
    Transition { to: f64, at_most: f64 },
    /// Not known to follow: counted at this much, out of the allocation.
    Held(f64, &'static str),
}

/// The dynamic-limit routes of a station, in order of preference.
fn routes(max_level: Option<i64>) -> Vec<(Purpose, i32)> {
    let top = max_level.unwrap_or(1).clamp(0, 100) as i32;
    let mut out = vec![(Purpose::Tx, top)];
    if top > 1 {
        out.push((Purpose::Tx, top - 1));
    }
    if top > 0 {
        out.push((Purpose::Tx, 0));
        out.push((Purpose::TxDefault, top));
        if top > 1 {
            out.push((Purpose::TxDefault, top - 1));
        }
    }
    out.push((Purpose::StationMax, top));
    if top > 0 {
        out.push((Purpose::StationMax, 0));
    }
    out
}

/// What a station model taught the dispatcher; stored per vendor and model.
#[derive(Debug, Clone, Default, PartialEq, Serialize, serde::Deserialize)]
struct Learned {
    route: usize,
    fallback_route: u8,
    in_watts: bool,
    absolute_only: bool,
    quirks: Vec<String>,
}

#[derive(Debug, Clone, Default)]
struct StationLink {
    /// `model:<vendor>/<model>` once the station booted; what it learns is kept there.
    model_key: Option<String>,
    generation: u64,
    /// Index into [`routes`] of the dynamic route in use.
    route: usize,
    /// The fallback route: 0 = TxDefault per EVSE, 1 = StationMax, 2 = none works.
    fallback_route: u8,
    /// The station takes W only.
    in_watts: bool,
    /// The station rejected Relative schedules.
    absolute_only: bool,
    evses: BTreeMap<u32, EvseLink>,
    /// What was learned about the station, for logs and the API.
    quirks: Vec<String>,
    /// It does not implement GetCompositeSchedule.
    no_composite: bool,
    /// A GetCompositeSchedule is in flight (one at a time per station).
    verifying: bool,
    /// When an increase was last sent to it (increases are rate-limited per station).
    raised_at: Option<DateTime<Utc>>,
}

impl StationLink {
    fn learn(&mut self, station: &str, quirk: &str) {
        if !self.quirks.iter().any(|q| q == quirk) {
            info!(station, quirk, "station quirk learned");
            self.quirks.push(quirk.to_owned());
        }
    }

    fn learned(&self) -> Learned {
        Learned {
            route: self.route,
            fallback_route: self.fallback_route,
            in_watts: self.in_watts,
            absolute_only: self.absolute_only,
            quirks: self.quirks.clone(),
        }
    }

    fn apply(&mut self, l: Learned) {
        self.route = l.route;
        self.fallback_route = l.fallback_route;
        self.in_watts = l.in_watts;
        self.absolute_only = l.absolute_only;
        self.quirks = l.quirks;
    }

    fn fallback_confirmed(&self, evses: u32) -> bool {
        self.fallback_route < 2
            && (1..=evses).all(|e| self.evses.get(&e).is_some_and(|l| l.fallback_confirmed))
    }
}

// ------------------------------------------------------------------ the controller

struct Inner {
    csms: Csms,
    state: Arc<Mutex<SiteState>>,
    store: Arc<dyn Store>,
    clock: Clock,
    site: Mutex<Arc<SiteConfig>>,
    config: Mutex<ControlConfig>,
    wake: Arc<Notify>,
    limits: Mutex<Vec<ExternalLimit>>,
    grid: Mutex<Option<GridSample>>,
    links: Mutex<HashMap<String, StationLink>>,
    rotation: Mutex<Rotation>,
    /// Recent raw estimates of the grid node's uncontrolled load.
    uncontrolled: Mutex<VecDeque<(DateTime<Utc>, PerLine)>>,
    fallback_rotation: Mutex<(usize, Option<DateTime<Utc>>)>,
    failsafe_at: Mutex<Option<DateTime<Utc>>>,
    rotation_saved: Mutex<Option<DateTime<Utc>>>,
    stats: Mutex<Stats>,
    plan: Mutex<PlanState>,
    /// What the policy plugins said last, by name; replaced on change, so a tick takes it
    /// without copying every output.
    policies: Mutex<Arc<policy::Policies>>,
    /// The latest reading of every meter plugin, by name, with the node it measures.
    meters: Mutex<BTreeMap<String, plugin_report::LastReading>>,
    /// The plugins' host status, as the drive task last published it.
    plugin_board: Mutex<plugin_report::PluginBoard>,
    ticks: std::sync::atomic::AtomicU64,
}

/// The newest finished horizon plan, and whether one is being made.
#[derive(Default)]
struct PlanState {
    made: Option<Arc<planner::MadePlan>>,
    running: bool,
    /// When the last attempt started (a failed plan is not retried before the interval).
    tried_at: Option<DateTime<Utc>>,
    tried_signature: String,
}

/// A station's link, made on first use; a known station's id is not copied every tick.
fn link_mut<'a>(links: &'a mut HashMap<String, StationLink>, id: &str) -> &'a mut StationLink {
    if !links.contains_key(id) {
        links.insert(id.to_owned(), StationLink::default());
    }
    links.get_mut(id).expect("inserted above")
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding a lock would be a bug; the data stays usable.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The control loop's handle: its entry points and its reports. Cheap to clone.
#[derive(Clone)]
pub struct Controller {
    inner: Arc<Inner>,
}

/// What one EVSE looked like at the start of a tick.
struct EvseView {
    key: EvseKey,
    station: usize,
    session: Option<SessionView>,
    measured: Option<(DateTime<Utc>, f64, u8)>,
    /// The measured current per grid line, when the station reports per-phase currents.
    measured_lines: Option<PerLine>,
}

struct SessionView {
    transaction: String,
    id_tag: Option<String>,
    started_at: DateTime<Utc>,
    energy_wh: f64,
    needs: ChargingNeeds,
}

struct StationView<'a> {
    config: &'a StationConfig,
    node: usize,
    path: Vec<usize>,
    handle: Option<StationHandle>,
    ready: bool,
    rate_w_only: bool,
    max_level: Option<i64>,
    skew_s: Option<i64>,
    /// It can switch its EVs between 3 phases and 1 (and is wired three-phase).
    switches_phases: bool,
    /// It said at boot what it is (its model key is looked up once, not every tick).
    booted: bool,
}

/// One composite schedule to read back.
struct Verify {
    station: String,
    handle: StationHandle,
    circuit: StationCircuit,
    evse: u32,
    /// What the EVSE had accepted when it was asked.
    expected: f64,
    ev_phases: u8,
}

/// One profile to send, with what to update when the answer comes.
struct Send {
    station: String,
    handle: StationHandle,
    circuit: StationCircuit,
    limit: Limit,
    what: SendWhat,
    priority: Priority,
    /// The station's hardware max: what it may have let the EV draw before its first answer.
    station_max: f64,
    /// How many dynamic routes the station has.
    routes: usize,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum SendWhat {
    /// A dynamic limit for `evse` (for a station-wide route, every EVSE of the station).
    Dynamic {
        evses: u32,
        route: usize,
    },
    Fallback {
        route: u8,
    },
}

impl Controller {
    /// A controller for `site`; call [`Controller::spawn`] to run its loop.
    pub fn new(
        site: Arc<SiteConfig>,
        csms: Csms,
        store: Arc<dyn Store>,
        clock: Clock,
    ) -> Controller {
        let config = ControlConfig::from_site(&site);
        let wake = csms.events();
        let controller = Controller {
            inner: Arc::new(Inner {
                state: csms.state(),
                csms,
                store,
                clock,
                site: Mutex::new(site),
                config: Mutex::new(config),
                wake,
                limits: Mutex::new(Vec::new()),
                grid: Mutex::new(None),
                links: Mutex::new(HashMap::new()),
                rotation: Mutex::new(Rotation::new()),
                uncontrolled: Mutex::new(VecDeque::new()),
                fallback_rotation: Mutex::new((0, None)),
                failsafe_at: Mutex::new(None),
                rotation_saved: Mutex::new(None),
                stats: Mutex::new(Stats::default()),
                plan: Mutex::new(PlanState::default()),
                policies: Mutex::new(Arc::new(policy::Policies::default())),
                meters: Mutex::new(BTreeMap::new()),
                plugin_board: Mutex::new(plugin_report::PluginBoard::default()),
                ticks: std::sync::atomic::AtomicU64::new(0),
            }),
        };
        controller.sync_policies(&lock(&controller.inner.site).clone());
        controller.inner.restore();
        controller
    }

    /// Runs the loop until the task is dropped.
    pub fn spawn(&self) -> tokio::task::JoinHandle<()> {
        let inner = self.inner.clone();
        tokio::spawn(async move {
            loop {
                let tick = lock(&inner.config).tick;
                let started = inner.clock.instant();
                tokio::select! {
                    _ = inner.clock.sleep(tick) => {}
                    _ = inner.wake.notified() => {
                        // Events come in bursts (a batch of answers): one tick per burst, at
                        // most one per EVENT_GAP.
                        let gap = EVENT_GAP.min(tick);
                        let since = inner.clock.instant().saturating_duration_since(started);
                        if since < gap {
                            inner.clock.sleep(gap - since).await;
                        }
                    }
                }
                inner.tick();
            }
        })
    }

    /// Runs one tick now (tests and benchmarks; the loop calls the same).
    pub fn tick(&self) {
        self.inner.tick();
    }

    /// Asks for a tick as soon as possible (an event happened).
    pub fn wake(&self) {
        self.inner.wake.notify_one();
    }

    /// What the loop measured about itself.
    pub fn stats(&self) -> Stats {
        lock(&self.inner.stats).clone()
    }

    /// Ticks run so far.
    pub fn ticks(&self) -> u64 {
        self.inner.ticks.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// A new grid reading (from the grid meter plugin's task).
    /// A reading that moves any line by the hysteresis or more is an event: the loop runs at
    /// once.
    pub fn set_grid_reading(&self, sample: GridSample) {
        let hysteresis = lock(&self.inner.config).hysteresis_a;
        let previous = lock(&self.inner.grid).replace(sample);
        let moved = previous.is_none_or(|p| {
            (sample.current - p.current)
                .iter()
                .any(|(_, d)| d.abs() >= hysteresis)
        });
        if moved {
            self.wake();
        }
    }

    /// How old the latest grid reading is, if there is one.
    pub fn grid_reading_age(&self) -> Option<Duration> {
        let at = lock(&self.inner.grid).map(|g| g.at)?;
        (self.inner.clock.now() - at).to_std().ok()
    }

    /// Sets (or replaces) an external limit; applied at the next tick, which runs at once.
    pub fn set_limit(&self, limit: ExternalLimit) -> Result<(), ControlError> {
        let site = lock(&self.inner.site).clone();
        if site.node_limit(&limit.node).is_none() {
            return Err(ControlError::UnknownNode(limit.node));
        }
        if limit.until <= limit.from {
            return Err(ControlError::BadLimit {
                origin: limit.source,
                message: "ends before it starts".into(),
            });
        }
        if limit.limit.iter().any(|(_, v)| !v.is_finite() || v < 0.0) {
            return Err(ControlError::BadLimit {
                origin: limit.source,
                message: "limits must be finite and at least 0 A".into(),
            });
        }
        info!(source = %limit.source, node = %limit.node, limit = ?limit.limit.0, from = %limit.from, until = %limit.until, reason = %limit.reason, "external limit set");
        {
            let mut limits = lock(&self.inner.limits);
            limits.retain(|l| !(l.source == limit.source && l.node == limit.node));
            limits.push(limit);
            self.inner.save_limits(&limits);
        }
        self.wake();
        Ok(())
    }

    /// Removes every limit of `source`.
    pub fn clear_limits(&self, source: &str) {
        let mut limits = lock(&self.inner.limits);
        limits.retain(|l| l.source != source);
        self.inner.save_limits(&limits);
        drop(limits);
        self.wake();
    }

    /// The external limits in force or announced.
    pub fn limits(&self) -> Vec<ExternalLimit> {
        lock(&self.inner.limits).clone()
    }

    /// Sets what a session needs (the operator's or an app's word; NotifyEVChargingNeeds does
    /// the same from the EV).
    pub fn set_needs(&self, key: &EvseKey, needs: ChargingNeeds) -> Result<(), ControlError> {
        let mut state = lock(&self.inner.state);
        let evse = state
            .stations
            .get_mut(&key.station)
            .and_then(|s| s.evses.get_mut(&key.evse))
            .ok_or_else(|| ControlError::UnknownEvse(key.label()))?;
        let session = evse
            .session
            .as_mut()
            .ok_or_else(|| ControlError::NoSession(key.label()))?;
        session.needs = needs;
        drop(state);
        self.wake();
        Ok(())
    }

    /// Applies a reloaded site file: limits, stations and settings change at the next tick,
    /// which runs at once; the failsafe is recomputed with it.
    pub fn reload(&self, site: Arc<SiteConfig>) {
        info!(
            stations = site.stations().len(),
            circuits = site.circuits().len(),
            "site file reloaded"
        );
        *lock(&self.inner.config) = ControlConfig::from_site(&site);
        self.sync_policies(&site);
        *lock(&self.inner.site) = site;
        self.wake();
    }

    /// Keeps one policy state per policy plugin of `site`: new ones start unevaluated, removed
    /// ones are dropped with their constraints (the operator took them out).
    fn sync_policies(&self, site: &SiteConfig) {
        let mut guard = lock(&self.inner.policies);
        let policies = Arc::make_mut(&mut guard);
        let mut kept = BTreeMap::new();
        for (order, p) in site
            .plugins()
            .iter()
            .filter(|p| p.spec.world == crate::plugins::World::Policy)
            .enumerate()
        {
            let mut state = policies
                .by_name
                .remove(&p.spec.name)
                .unwrap_or_else(|| policy::PolicyState::new(order, BTreeMap::new()));
            state.order = order;
            state.safe_limits = p.safe_limits.clone();
            kept.insert(p.spec.name.clone(), state);
        }
        for name in policies.by_name.keys() {
            info!(plugin = %name, "policy removed from the site file: its constraints are dropped");
        }
        policies.by_name = kept;
    }

    /// A meter plugin's reading, kept for the policies' snapshots (the grid meter's also goes
    /// through [`Controller::set_grid_reading`]).
    pub fn set_meter_reading(
        &self,
        meter: &str,
        node: Option<&str>,
        reading: crate::plugins::wit::Reading,
    ) {
        let at = self.inner.clock.now();
        lock(&self.inner.meters).insert(
            meter.to_owned(),
            plugin_report::LastReading {
                at,
                node: node.map(str::to_owned),
                reading,
            },
        );
    }

    /// What policy `name` returned (or why it failed). A success replaces its constraints; a
    /// failure keeps them until each ends, then its safe values apply
    /// ([`policy`](self::policy)). The loop runs at once.
    pub fn policy_evaluated(
        &self,
        name: &str,
        result: Result<crate::plugins::wit::Constraints, String>,
    ) {
        let now = self.inner.clock.now();
        let site = self.site();
        let mut policies = lock(&self.inner.policies);
        let Some(state) = Arc::make_mut(&mut policies).by_name.get_mut(name) else {
            debug!(
                plugin = name,
                "result of a policy no longer in the site file ignored"
            );
            return;
        };
        match result {
            Ok(c) => {
                let (output, warnings) =
                    policy::PolicyOutput::from_wit(&c, |n| site.node_limit(n).is_some());
                for w in warnings {
                    warn!(plugin = name, "{w}");
                }
                if state.failing.take().is_some() {
                    info!(plugin = name, "policy evaluates again");
                }
                state.failing_since = None;
                let changed = state.last.as_ref().is_none_or(|(_, o)| *o != output);
                state.last = Some((now, output));
                drop(policies);
                if changed {
                    self.wake();
                }
            }
            Err(e) => {
                if state.failing.is_none() {
                    warn!(plugin = name, error = %e, "policy failed: its last constraints hold until they end, then its safe values");
                    state.failing_since = Some(now);
                }
                state.failing = Some(e);
                drop(policies);
                self.wake();
            }
        }
    }

    /// Every policy's state: its last output, whether it is failing.
    pub fn policies(&self) -> BTreeMap<String, policy::PolicyState> {
        lock(&self.inner.policies).by_name.clone()
    }

    /// What a policy plugin sees: the site as the loop knows it now.
    pub fn snapshot(&self) -> crate::plugins::wit::SiteSnapshot {
        self.inner.snapshot()
    }

    /// Each node's limit in force now (the minimum of the site file and every source) and the
    /// source that binds each line.
    pub fn node_limits(&self) -> Vec<NodeLimit> {
        let now = self.inner.clock.now();
        let site = self.site();
        let limits = self.inner.all_limits(now);
        node_tree(&site)
            .0
            .into_iter()
            .map(|id| {
                let physical = site.node_limit(id).unwrap_or(PerLine::ZERO);
                let constraints = limit_constraints(&limits, id);
                let (limit, sources) = effective_limit(physical, &constraints, now.timestamp());
                NodeLimit {
                    node: id.to_owned(),
                    limit,
                    sources: sources.0.to_vec(),
                }
            })
            .collect()
    }

    /// The site file in use.
    pub fn site(&self) -> Arc<SiteConfig> {
        lock(&self.inner.site).clone()
    }

    /// The dispatcher's view of every EVSE it has dealt with.
    pub fn report(&self) -> Vec<EvseReport> {
        let links = lock(&self.inner.links);
        let mut out: Vec<EvseReport> = links
            .iter()
            .flat_map(|(station, link)| {
                link.evses.iter().map(move |(&evse, l)| EvseReport {
                    key: EvseKey::new(station, evse),
                    accepted_a: l.accepted,
                    pending_a: l.pending.map(|p| p.amps),
                    fallback_a: l.fallback_a,
                    fallback_confirmed: l.fallback_confirmed,
                    noncompliant: l.noncompliant.is_some(),
                    learned_cap_a: l.learned_cap.map(|c| c.0),
                    ev_phases: l.ev_phases,
                    one_phase: l.one_phase,
                    decisions: l.decisions.iter().cloned().collect(),
                })
            })
            .collect();
        out.sort_by(|a, b| a.key.cmp(&b.key));
        out
    }

    /// What was learned about a station (quirks, routes), for logs and the API.
    pub fn station_quirks(&self, station: &str) -> Vec<String> {
        lock(&self.inner.links)
            .get(station)
            .map(|l| l.quirks.clone())
            .unwrap_or_default()
    }
}

/// Store keys of the control state.
const LIMITS_KEY: &str = "limits";
const ROTATION_KEY: &str = "rotation";
/// How often the rotation state is saved.
const SAVE_ROTATION_EVERY: TimeDelta = TimeDelta::seconds(60);

impl Inner {
    /// The external limits in force or announced, and every policy's.
    fn all_limits(&self, now: DateTime<Utc>) -> Vec<ExternalLimit> {
        let mut limits = {
            let mut limits = lock(&self.limits);
            limits.retain(|l| l.until > now);
            limits.clone()
        };
        limits.extend(lock(&self.policies).limits(now));
        limits
    }

    /// Active constraints survive a restart: a demand-response limit must not be forgotten.
    fn save_limits(&self, limits: &[ExternalLimit]) {
        match serde_json::to_vec(limits) {
            Ok(bytes) => {
                if let Err(e) = self.store.put_control(LIMITS_KEY, &bytes) {
                    warn!(error = %e, "store: cannot save the external limits");
                }
            }
            Err(e) => warn!(error = %e, "cannot encode the external limits"),
        }
    }

    /// What the previous process left: external limits and the rotation.
    fn restore(&self) {
        match self.store.control(LIMITS_KEY) {
            Ok(Some(bytes)) => match serde_json::from_slice::<Vec<ExternalLimit>>(&bytes) {
                Ok(limits) => {
                    info!(limits = limits.len(), "external limits restored");
                    *lock(&self.limits) = limits;
                }
                Err(e) => warn!(error = %e, "stored external limits unreadable"),
            },
            Ok(None) => {}
            Err(e) => warn!(error = %e, "store: cannot read the external limits"),
        }
        match self.store.control(ROTATION_KEY) {
            Ok(Some(bytes)) => match serde_json::from_slice::<Rotation>(&bytes) {
                Ok(r) => *lock(&self.rotation) = r,
                Err(e) => warn!(error = %e, "stored rotation unreadable"),
            },
            Ok(None) => {}
            Err(e) => warn!(error = %e, "store: cannot read the rotation"),
        }
    }

    fn tick(self: &Arc<Self>) {
        // CPU cost, not domain time: the wall clock is right here even under virtual time.
        let started = std::time::Instant::now();
        self.run_tick();
        let spent = started.elapsed();
        let mut stats = lock(&self.stats);
        if stats.tick_costs.len() >= TICK_COSTS_KEPT {
            stats.tick_costs.pop_front();
        }
        stats.tick_costs.push_back(spent);
    }

    fn run_tick(self: &Arc<Self>) {
        self.ticks
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let now = self.clock.now();
        let site = lock(&self.site).clone();
        let config = lock(&self.config).clone();
        let ramp = TimeDelta::from_std(config.ramp).unwrap_or(TimeDelta::seconds(5));
        let stale = TimeDelta::from_std(config.stale_after).unwrap_or(TimeDelta::seconds(30));

        let (node_ids, node_index) = node_tree(&site);

        // Gather.
        let (stations, evses) = self.gather(&site, &node_index, now, stale);
        let grid = *lock(&self.grid);
        let grid_fresh = grid.filter(|g| {
            config.has_grid_meter
                && now - g.at
                    <= TimeDelta::from_std(config.meter_timeout).unwrap_or(TimeDelta::seconds(10))
        });
        let limits = self.all_limits(now);
        let policies = Arc::clone(&lock(&self.policies));

        let mut sends: Vec<Send> = Vec::new();
        let mut links = lock(&self.links);
        links.retain(|id, _| site.station(id).is_some());

        // Reconnects and session changes reset what the dialogue knows.
        for s in &stations {
            let link = link_mut(&mut links, &s.config.id);
            if link.model_key.is_none()
                && s.booted
                && let Some(key) = &self.model_key(&s.config.id)
            {
                // What this model taught us before (any station of it, any earlier run).
                match self.store.control(key) {
                    Ok(Some(bytes)) => match serde_json::from_slice::<Learned>(&bytes) {
                        Ok(l) => {
                            debug!(station = %s.config.id, model = %key, quirks = ?l.quirks, "station model known");
                            link.apply(l);
                        }
                        Err(e) => {
                            warn!(model = %key, error = %e, "stored station quirks unreadable; learning again")
                        }
                    },
                    Ok(None) => {}
                    Err(e) => warn!(model = %key, error = %e, "store: cannot read station quirks"),
                }
                link.model_key = Some(key.clone());
            }
            if let Some(h) = &s.handle
                && h.generation() != link.generation
            {
                if link.generation != 0 {
                    info!(station = %s.config.id, "station reconnected: its profiles are sent again");
                }
                link.generation = h.generation();
                link.verifying = false;
                for l in link.evses.values_mut() {
                    l.fallback_confirmed = false;
                    l.fallback_pending = None;
                    l.pending = None;
                    let tx = l.transaction.take();
                    l.new_session(tx);
                    l.accepted = None;
                }
            }
        }
        for e in &evses {
            let link = link_mut(&mut links, &e.key.station);
            let l = link.evses.entry(e.key.evse).or_default();
            let tx = e.session.as_ref().map(|s| s.transaction.clone());
            if l.transaction != tx {
                l.new_session(tx);
            }
        }

        // Closed loop: compare what EVs draw with what they were given.
        let tolerance = config.noncompliance_tolerance_a;
        for e in &evses {
            let s = &stations[e.station];
            let Some(link) = links.get_mut(&e.key.station) else {
                continue;
            };
            let swallows_raise = link.quirks.iter().any(|q| q == SWALLOWS_RAISE);
            let Some(l) = link.evses.get_mut(&e.key.evse) else {
                continue;
            };
            let Some((at, amps, phases)) = e.measured else {
                continue;
            };
            if e.session.is_none() || l.checked_at.is_some_and(|c| at <= c) {
                continue;
            }
            l.checked_at = Some(at);
            // On one phase (or just switched back) the lines seen say what the station gives,
            // not what the EV can take.
            if amps > 1.0
                && phases > 0
                && !l.one_phase
                && l.phases_switched_at.is_none_or(|t| at >= t + ramp * 2)
            {
                l.ev_phases = phases;
            }
            let Some(accepted) = l.accepted else { continue };
            let settled = l
                .changed_at
                .is_none_or(|c| at >= c + ramp && now >= c + ramp);
            if !settled || l.pending.is_some() {
                continue;
            }
            if amps > accepted + tolerance {
                l.over += 1;
                l.within = 0;
                if l.over >= OVER_SAMPLES {
                    if l.noncompliant.is_none() {
                        warn!(station = %e.key.station, evse = e.key.evse, setpoint_a = accepted, measured_a = amps, "station draws above its setpoint: non-compliant, its draw is reserved");
                        let model = s.config.id.clone();
                        link_quirk(link, &model, "ignores its charging profile");
                    }
                    if let Some(l) = link.evses.get_mut(&e.key.evse) {
                        l.noncompliant = Some(amps.max(l.noncompliant.unwrap_or(0.0)));
                    }
                }
                continue;
            }
            l.over = 0;
            if l.noncompliant.is_some() {
                l.within += 1;
                if l.within >= BACK_IN_LINE_SAMPLES {
                    info!(station = %e.key.station, evse = e.key.evse, "station follows its setpoint again");
                    l.noncompliant = None;
                }
                continue;
            }
            let min = s.config.min_current_a;
            if accepted >= min
                && amps < IDLE_A
                && l.before == Some(0.0)
                && !l.raise_resent
                && (!l.retesting || swallows_raise)
            {
                // A raise from 0 A that the EV does not follow: some stations swallow the
                // first one (go-e). Send it again once.
                l.raise_resent = true;
                l.raise_suspect = true;
                l.sent_at = None;
                continue;
            }
            if l.raise_suspect && amps >= min * 0.5 {
                l.raise_suspect = false;
                link_quirk(link, &s.config.id, SWALLOWS_RAISE);
                continue;
            }
            if accepted >= min && amps < IDLE_A {
                // Offered at least its minimum and taking nothing: full, or waiting on its
                // own timer. Its share is not left unused.
                l.zero_samples += 1;
                if l.zero_samples >= IDLE_SAMPLES && l.idle_since.is_none() {
                    debug!(station = %e.key.station, evse = e.key.evse, offered_a = accepted, "EV takes no current: its share goes to the others until it is offered again");
                    l.idle_since = Some(now);
                    l.raise_suspect = false;
                }
                continue;
            }
            l.zero_samples = 0;
            l.retesting = false;
            if amps + UNDERDRAW_A < accepted && amps >= min * 0.5 {
                let cap = (amps + 1.0).ceil();
                if l.learned_cap.is_none_or(|(c, _)| cap < c) {
                    debug!(station = %e.key.station, evse = e.key.evse, cap_a = cap, "EV draws less than offered: cap learned");
                    l.learned_cap = Some((cap, now));
                }
            }
        }
        for (station, l) in links
            .iter_mut()
            .flat_map(|(id, s)| s.evses.iter_mut().map(move |(n, l)| ((id, n), l)))
        {
            // A phase switch is made at 0 A, once the station has settled there: counted on
            // its new lines from then on, it never draws on lines it is not counted on.
            if let Some(to_one) = l.switch_to_one
                && l.accepted.is_some_and(|a| a <= 0.05)
                && l.pending.is_none()
                && l.changed_at.is_none_or(|c| now >= c + ramp)
            {
                info!(station = %station.0, evse = *station.1, phases = if to_one { 1 } else { 3 }, "phase switch");
                l.one_phase = to_one;
                l.switch_to_one = None;
                l.phases_switched_at = Some(now);
            }
            if l.idle_since
                .is_some_and(|since| now >= since + IDLE_RETEST || now < since)
            {
                // Offered its share again: a car that wants energy after all takes it.
                l.idle_since = None;
                l.zero_samples = 0;
                l.retesting = true;
            }
            if let Some((cap, since)) = l.learned_cap
                && now >= since + CAP_RETEST
            {
                // Re-test: offer a little more now and then; past the station max it is gone.
                let raised = cap + CAP_RETEST_STEP_A;
                l.learned_cap =
                    (raised < crate::site::MAX_STATION_CURRENT_A).then_some((raised, now));
            }
        }

        // The problem.
        let now_s = now.timestamp();
        let mut nodes: Vec<Node> = Vec::with_capacity(node_ids.len());
        let announce_lead_s =
            (ramp + CONFIRM_TIMEOUT).num_seconds() + (config.tick.as_secs() as i64).max(1);
        let mut node_limits: Vec<(PerLine, Vec<LimitConstraint>)> =
            Vec::with_capacity(node_ids.len());
        for (i, id) in node_ids.iter().enumerate() {
            let physical = site.node_limit(id).unwrap_or(PerLine::ZERO);
            let constraints = limit_constraints(&limits, id);
            let (mut limit, limit_source) = effective_limit(physical, &constraints, now_s);
            // An announced drop is met before it starts: by then every station has had time
            // to answer and ramp down.
            limit = limit.min(planner::lowest_limit(
                physical,
                &constraints,
                now_s,
                now_s + announce_lead_s,
            ));
            node_limits.push((physical, constraints));
            let parent = if i == 0 {
                None
            } else {
                site.circuit(id)
                    .and_then(|c| node_index.get(c.parent.as_str()).copied())
            };
            nodes.push(Node {
                id: (*id).to_owned(),
                parent,
                limit,
                limit_source,
                uncontrolled: PerLine::ZERO,
            });
        }
        let grid_type = site.model().grid();
        let mut measured_controlled = PerLine::ZERO;
        let mut reserved = vec![PerLine::ZERO; nodes.len()];
        let mut problem_evses: Vec<Evse> = Vec::new();
        let mut problem_keys: Vec<usize> = Vec::new();
        let mut held: Vec<(usize, f64, &'static str)> = Vec::new();
        let mut planned: Vec<planner::Planned> = Vec::new();
        let mut in_transition = 0usize;
        // The most each allocated EVSE may draw until its change is done (break before make),
        // and the same for the EVSEs pausing or switched off, which the allocation leaves out.
        let mut worst_a: Vec<f64> = Vec::new();
        let mut leaving: Vec<(usize, PerLine)> = Vec::new();
        let mut switched_off: Vec<(usize, String)> = Vec::new();
        // EVSEs (problem indices) whose phase count may be weighed this tick.
        let mut phase_candidates: Vec<usize> = Vec::new();
        let mut rules: Vec<policy::EvseRule> = Vec::new();
        let unknown_link = EvseLink::default();
        let policy_rules = policies.rules(now);
        for (i, e) in evses.iter().enumerate() {
            let s = &stations[e.station];
            let circuit = s.config.electrical;
            // Borrowed: a link carries its decision ring, too dear to copy every tick.
            let l = links
                .get(&e.key.station)
                .and_then(|k| k.evses.get(&e.key.evse))
                .unwrap_or(&unknown_link);
            let station_max = s.config.max_current_a;
            let Some(session) = &e.session else { continue };
            let doubt = if s.handle.is_none() || !s.ready {
                let fallback = if l.fallback_confirmed {
                    l.fallback_a
                } else {
                    station_max
                };
                Doubt::Held(
                    l.accepted.unwrap_or(station_max).max(fallback),
                    "station not connected or not set up",
                )
            } else {
                l.doubt(now, ramp, station_max)
            };
            {
                // What the meter saw this EV draw is not uncontrolled load. A compliant EV
                // never draws more than it may, so at most that is subtracted: a stale high
                // reading cannot hide load.
                let cap = match (doubt, l.noncompliant) {
                    (_, Some(_)) => f64::INFINITY,
                    (Doubt::Held(h, _), None) => h,
                    (Doubt::Transition { at_most, .. }, None) => at_most,
                    (Doubt::Settled, None) => l.accepted.unwrap_or(station_max),
                };
                let lines = e.measured_lines.unwrap_or(PerLine::ZERO);
                let mut counted = lines.map(|a| a.min(cap));
                // After an increase the station's reading lags the grid meter by up to its
                // meter interval: the meter already sees the EV's new draw, its own reading
                // not yet, and the difference would look like building load (and pause
                // everyone until it passed). On the lines it was seen drawing on (or the
                // phases learned), it is counted at what it was given until a reading taken
                // after the ramp arrives. Only when the grid reading itself is newer than the
                // change: otherwise it does not hold the increase either. An EV still ramping
                // up (the meter not yet showing all of it) is covered by the window of recent
                // estimates below, which holds the load from before the change for longer
                // than the station takes to report (twice its meter interval).
                if let (Doubt::Settled, Some(accepted), Some(before), Some(changed), Some(g)) =
                    (doubt, l.accepted, l.before, l.changed_at, grid_fresh)
                    && accepted > before
                    && g.at > changed
                    && e.measured.is_none_or(|(at, _, _)| at < changed + ramp)
                {
                    // The window of recent estimates (below) still holds the building load
                    // from before the change, until the station's next reading.
                    let seen = lines.map(|a| if a > 0.5 { 1.0 } else { 0.0 });
                    let coefficients = if seen.sum() > 0.0 {
                        seen
                    } else {
                        circuit.line_coefficients(l.phases())
                    };
                    counted = counted.max(coefficients * accepted);
                }
                measured_controlled += counted;
            }
            let fixed = match doubt {
                Doubt::Held(amps, why) => {
                    // All its phases: a station cut off falls back to a profile on all of them.
                    let load = circuit.line_load(l.ev_phases, amps);
                    for &n in &s.path {
                        reserved[n] += load;
                    }
                    held.push((i, amps, why));
                    continue;
                }
                Doubt::Transition { to, at_most } => {
                    in_transition += 1;
                    if to <= 0.0 {
                        // Pausing: it needs no room once there, but it holds its old share
                        // until it is done.
                        leaving.push((i, circuit.line_load(l.phases(), at_most)));
                        continue;
                    }
                    Some(to)
                }
                Doubt::Settled => None,
            };
            let needs = &session.needs;
            let mut max_a = station_max;
            if let Some(ev_max) = needs.ev_max_current_a.filter(|v| v.is_finite() && *v > 0.0) {
                max_a = max_a.min(ev_max);
            }
            if let Some((cap, _)) = l.learned_cap {
                max_a = max_a.min(cap.max(s.config.min_current_a));
            }
            let min_a = needs
                .ev_min_current_a
                .filter(|v| v.is_finite() && *v > 0.0)
                .map_or(s.config.min_current_a, |m| m.max(s.config.min_current_a))
                .min(max_a);
            // In a transition the EVSE stays where it is going (or pauses, if safety needs it).
            let (min_a, max_a) = match fixed {
                Some(to) => (to, to),
                None => (min_a, max_a),
            };
            let rule = policy_rules.rule(&e.key.label());
            if fixed.is_none()
                && let Some(why) = rule.off
            {
                // A policy switched it off: 0 A, sent like any decrease (break before make).
                switched_off.push((i, why));
                continue;
            }
            if fixed.is_none()
                && let Some(to_one) = l.switch_to_one
            {
                switched_off.push((
                    i,
                    format!(
                        "switching to {} (at 0 A first)",
                        if to_one { "1 phase" } else { "3 phases" }
                    ),
                ));
                continue;
            }
            if fixed.is_none()
                && let Some(since) = l.idle_since
            {
                switched_off.push((
                    i,
                    format!(
                        "EV takes no current (full or waiting): offered again at {}",
                        since + IDLE_RETEST
                    ),
                ));
                continue;
            }
            if fixed.is_none() {
                let needs = planner::effective_needs(
                    needs,
                    session.id_tag.as_deref(),
                    session.started_at,
                    &site.control().fleet,
                    site.timezone(),
                );
                let had = (session.energy_wh - needs.energy_from_wh).max(0.0);
                if let (Some(departure), Some(energy)) = (needs.departure, needs.energy_wh)
                    && departure > now
                    && energy - had > 1.0
                {
                    planned.push(planner::Planned {
                        index: problem_evses.len(),
                        departure_s: departure.timestamp(),
                        remaining_wh: energy - had,
                    });
                }
            }
            problem_evses.push(Evse {
                id: e.key.label(),
                node: s.node,
                circuit,
                ev_phases: l.phases(),
                min_a,
                max_a,
                may_pause: true,
                priority: 0,
                weight: 1.0,
                energy_wh: session.energy_wh,
                plan_a: None,
            });
            if fixed.is_none()
                && config.phase_switching
                && s.switches_phases
                && l.ev_phases != 1
                && l.phases_weighed_at
                    .max(l.phases_switched_at)
                    .is_none_or(|t| now >= t + config.phase_switch || now < t)
                && (l.one_phase || l.accepted.is_some_and(|a| a <= 0.05) || rule.solar.is_some())
            {
                phase_candidates.push(problem_evses.len());
            }
            problem_keys.push(i);
            worst_a.push(match doubt {
                Doubt::Transition { at_most, .. } => at_most,
                _ => l.accepted.unwrap_or(station_max),
            });
            rules.push(if fixed.is_none() {
                rule
            } else {
                policy::EvseRule::default()
            });
        }
        // Uncontrolled load: the grid meter minus what the controlled EVSEs draw; without a
        // fresh reading, the configured worst case.
        let grid_uncontrolled = match grid_fresh {
            Some(g) => {
                // Station readings lag the grid meter (they come every meter interval): an EV
                // that stopped drawing still shows its old current for a while and would make
                // the building look lighter than it is. The estimate is the highest of the last
                // few seconds: a rise counts at once, a drop only once it has lasted.
                let raw = uncontrolled_load(g.current, measured_controlled, PerLine::ZERO);
                let mut window = lock(&self.uncontrolled);
                window.retain(|(at, _)| now - *at <= stale / 3 * 2 && *at <= now);
                window.push_back((now, raw));
                window.iter().fold(raw, |acc, (_, v)| acc.max(*v))
            }
            None => PerLine::splat_on(grid_type, config.worst_case_load_a),
        };
        for (n, node) in nodes.iter_mut().enumerate() {
            node.uncontrolled = reserved[n]
                + if n == 0 {
                    grid_uncontrolled
                } else {
                    PerLine::ZERO
                };
        }
        let node_limits: Vec<planner::NodeLimits<'_>> = node_limits
            .iter()
            .map(|(physical, constraints)| planner::NodeLimits {
                physical: *physical,
                constraints,
            })
            .collect();
        let prices: Vec<f64> = planner::slot_starts(now_s, &planned)
            .into_iter()
            .map(|start| {
                DateTime::from_timestamp(start, 0)
                    .and_then(|t| policies.price_at(t))
                    .unwrap_or(0.0)
            })
            .collect();
        self.follow_plan(
            &config,
            &nodes,
            &node_limits,
            &mut problem_evses,
            (&planned, &prices),
            now,
        );
        // Before the policies shape it: a phase switch is weighed with the policies applied to
        // the EVSE on its other phase count.
        let phase_candidates: Vec<(usize, Evse)> = phase_candidates
            .into_iter()
            .map(|j| (j, problem_evses[j].clone()))
            .collect();
        policy::apply(&mut problem_evses, &rules);
        let mut problem = Problem::new(nodes, problem_evses, now_s);
        problem.rotation = lock(&self.rotation).clone();
        problem.dwell_s = config.dwell_s;
        problem.turn_s = config.turn_s;
        let mut allocation = match allocate::allocate(&problem) {
            Ok(a) => a,
            Err(e) => {
                warn!(error = %e, "allocation failed: no setpoint changes this tick");
                return;
            }
        };
        // A decrease smaller than the hysteresis is not worth a profile, but the others' share
        // must not count on it: pin those EVSEs at what they have and allocate again.
        let mut pinned = false;
        for (j, k) in problem_keys.iter().enumerate() {
            let e = &evses[*k];
            let current = links
                .get(&e.key.station)
                .and_then(|s| s.evses.get(&e.key.evse))
                .and_then(|l| l.accepted);
            let target = one_decimal_down(allocation.setpoints[j].amps);
            if let Some(current) = current
                && target > 0.0
                && target < current - 0.05
                && target > current - config.hysteresis_a
                && current >= problem.evses[j].min_a
            {
                problem.evses[j].min_a = current;
                problem.evses[j].max_a = current;
                pinned = true;
            }
        }
        if pinned {
            match allocate::allocate(&problem) {
                Ok(a) => allocation = a,
                Err(e) => warn!(error = %e, "second allocation failed: the first one stands"),
            }
        }
        // At most one trial allocation a tick: the first candidate with something to weigh.
        for (j, unshaped) in phase_candidates {
            let e = &evses[problem_keys[j]];
            if let Some(l) = links
                .get_mut(&e.key.station)
                .and_then(|k| k.evses.get_mut(&e.key.evse))
                && let Some(to_one) =
                    weigh_phase_switch(&problem, &allocation, j, unshaped, &rules, l.one_phase)
            {
                l.phases_weighed_at = Some(now);
                if to_one != l.one_phase {
                    debug!(station = %e.key.station, evse = e.key.evse, to_one, "phase switch decided");
                    l.switch_to_one = Some(to_one);
                }
                break;
            }
        }
        {
            // EVSEs held out of this tick keep their pause state (dwell) for when they return.
            let mut rotation = lock(&self.rotation);
            let mut next = allocation.rotation.clone();
            for (i, _, _) in &held {
                let id = evses[*i].key.label();
                if let Some(entry) = rotation.get(&id) {
                    next.insert(id, *entry);
                }
            }
            *rotation = next;
            let mut saved = lock(&self.rotation_saved);
            if saved.is_none_or(|at| now >= at + SAVE_ROTATION_EVERY || now < at) {
                *saved = Some(now);
                match serde_json::to_vec(&*rotation) {
                    Ok(bytes) => {
                        if let Err(e) = self.store.put_control(ROTATION_KEY, &bytes) {
                            warn!(error = %e, "store: cannot save the rotation");
                        }
                    }
                    Err(e) => warn!(error = %e, "cannot encode the rotation"),
                }
            }
        }
        if tracing::enabled!(tracing::Level::DEBUG) {
            let commanded: PerLine = problem
                .evses
                .iter()
                .zip(&allocation.setpoints)
                .map(|(e, sp)| e.circuit.line_load(e.ev_phases, sp.amps))
                .sum();
            debug!(
                %now,
                grid = ?grid_fresh.map(|g| g.current.0),
                controlled = ?measured_controlled.0,
                uncontrolled = ?problem.nodes[0].uncontrolled.0,
                limit = ?problem.nodes[0].limit.0,
                commanded = ?commanded.0,
                allocated = problem.evses.len(),
                held = held.len(),
                "tick"
            );
        }

        // Dispatch: decreases first; increases only on a tick without decreases.
        let hysteresis = config.hysteresis_a;
        let validity =
            TimeDelta::from_std(config.profile_validity).unwrap_or(TimeDelta::seconds(300));
        let mut decreases = Vec::new();
        let mut increases = Vec::new();
        let mut renewals = Vec::new();
        for (j, (k, sp)) in problem_keys.iter().zip(&allocation.setpoints).enumerate() {
            let e = &evses[*k];
            let s = &stations[e.station];
            let target = one_decimal_down(sp.amps);
            let Some(link) = links.get_mut(&e.key.station) else {
                continue;
            };
            let Some(l) = link.evses.get_mut(&e.key.evse) else {
                continue;
            };
            l.record(Decision {
                at: now,
                amps: target,
                binding: Some(sp.bound.clone()),
                held: None,
            });
            let current = l.accepted.unwrap_or(s.config.max_current_a);
            let due = l.sent_at.is_none_or(|t| now >= t + validity / 2) || !l.dynamic;
            if target < current - 0.05 {
                decreases.push((*k, target));
            } else if target > current + hysteresis - 1e-9 || (current == 0.0 && target > 0.0) {
                increases.push((*k, target, j));
            } else if due {
                renewals.push((*k, current.min(target.max(current))));
            }
        }
        for (i, amps, why) in &held {
            let e = &evses[*i];
            if let Some(l) = links
                .get_mut(&e.key.station)
                .and_then(|k| k.evses.get_mut(&e.key.evse))
            {
                l.record(Decision {
                    at: now,
                    amps: *amps,
                    binding: None,
                    held: Some((*why).to_owned()),
                });
            }
        }
        for (i, why) in switched_off {
            let e = &evses[i];
            let s = &stations[e.station];
            let Some(l) = links
                .get_mut(&e.key.station)
                .and_then(|k| k.evses.get_mut(&e.key.evse))
            else {
                continue;
            };
            l.record(Decision {
                at: now,
                amps: 0.0,
                binding: None,
                held: Some(why),
            });
            let current = l.accepted.unwrap_or(s.config.max_current_a);
            leaving.push((i, s.config.electrical.line_load(l.phases(), current)));
            if current > 0.05 {
                decreases.push((i, 0.0));
            } else if l.sent_at.is_none_or(|t| now >= t + validity / 2) || !l.dynamic {
                renewals.push((i, 0.0));
            }
        }
        // Increases are rate-limited per station (decreases never are): a station whose last
        // increase went out less than `raise_interval` ago waits.
        let raise_gap = TimeDelta::from_std(config.raise_interval).unwrap_or(TimeDelta::zero());
        increases.retain(|(k, _, _)| {
            links
                .get(&evses[*k].key.station)
                .and_then(|l| l.raised_at)
                .is_none_or(|t| now >= t + raise_gap || now < t)
        });
        // Break before make: while a decrease is on its way (in this tick or before), only the
        // increases that fit beside every EVSE at the most it may draw until its change is done
        // go out; the others wait for the decreases.
        let any_decrease = !decreases.is_empty() || in_transition > 0;
        let increases: Vec<(usize, f64)> = if any_decrease && !increases.is_empty() {
            let mut load: Vec<PerLine> = problem.nodes.iter().map(|n| n.uncontrolled).collect();
            for (j, k) in problem_keys.iter().enumerate() {
                let ev = &problem.evses[j];
                let at = ev.circuit.line_load(ev.ev_phases, worst_a[j]);
                for &n in &stations[evses[*k].station].path {
                    load[n] += at;
                }
            }
            for (i, at) in &leaving {
                for &n in &stations[evses[*i].station].path {
                    load[n] += *at;
                }
            }
            let limits: Vec<PerLine> = problem.nodes.iter().map(|n| n.limit).collect();
            let (fit, wait) = increases_that_fit(load, &limits, increases, |k, j| {
                let ev = &problem.evses[j];
                (
                    ev.circuit.line_coefficients(ev.ev_phases),
                    worst_a[j],
                    stations[evses[k].station].path.as_slice(),
                )
            });
            if wait > 0 {
                debug!(
                    decreases = decreases.len(),
                    in_transition,
                    increases = fit.len(),
                    waiting = wait,
                    "break before make: increases that do not fit wait for the decreases"
                );
            }
            fit
        } else {
            increases
                .into_iter()
                .map(|(k, amps, _)| (k, amps))
                .collect()
        };
        let mut batch = decreases
            .into_iter()
            .map(|d| (d, Priority::Safety))
            .chain(renewals.into_iter().map(|r| (r, Priority::Control)))
            .collect::<Vec<_>>();
        for (k, _) in &increases {
            if let Some(link) = links.get_mut(&evses[*k].key.station) {
                link.raised_at = Some(now);
            }
        }
        batch.extend(increases.into_iter().map(|i| (i, Priority::Control)));
        // A change that was refused or failed is tried again (on the route the refusal moved
        // to) while the EVSE stays held at the most it may draw.
        for (i, _, _) in &held {
            let e = &evses[*i];
            let s = &stations[e.station];
            if s.handle.is_none() || !s.ready {
                continue;
            }
            if let Some(l) = links
                .get(&e.key.station)
                .and_then(|k| k.evses.get(&e.key.evse))
                && l.pending.is_none()
                && l.noncompliant.is_none()
                && let Some(u) = l.unconfirmed
            {
                batch.push(((*i, u), Priority::Safety));
            }
        }
        // A station-wide route carries every EVSE of the station at once: one send each.
        let mut station_wide: HashMap<String, f64> = HashMap::new();
        for ((k, amps), priority) in batch {
            let e = &evses[k];
            let s = &stations[e.station];
            let Some(handle) = s.handle.clone() else {
                continue;
            };
            let Some(link) = links.get_mut(&e.key.station) else {
                continue;
            };
            let all_routes = routes(s.max_level);
            let Some(&(purpose, level)) = all_routes.get(link.route) else {
                continue;
            };
            let route = link.route;
            let in_watts = link.in_watts || s.rate_w_only;
            let absolute_only = link.absolute_only;
            let Some(l) = link.evses.get_mut(&e.key.evse) else {
                continue;
            };
            let session = e.session.as_ref();
            // A pause outlives every charging profile: when Loadstar is gone, the charging
            // EVSEs fall back (down to their fallback share) before a paused one wakes on its
            // share, so the site never carries a woken share beside the old dynamic values.
            let valid_for = if amps <= 0.0 { validity * 2 } else { validity };
            let timing = timing(
                s.skew_s,
                absolute_only,
                now,
                valid_for,
                session.map(|s| s.started_at),
            );
            if purpose == Purpose::StationMax {
                *station_wide.entry(e.key.station.clone()).or_default() += amps;
                continue;
            }
            l.pending = Some(Pending { amps, sent_at: now });
            sends.push(Send {
                station: e.key.station.clone(),
                handle,
                circuit: s.config.electrical,
                limit: Limit {
                    evse: e.key.evse,
                    purpose,
                    stack_level: level,
                    amps,
                    ev_phases: l.phases(),
                    in_watts,
                    transaction_id: session.map(|s| s.transaction.clone()),
                    timing,
                },
                what: SendWhat::Dynamic {
                    evses: e.key.evse,
                    route,
                },
                priority,
                station_max: s.config.max_current_a,
                routes: all_routes.len(),
            });
        }
        for (station, _) in station_wide {
            // Station-wide: the sum of the setpoints of all its EVSEs with a session.
            let Some(s) = stations.iter().find(|s| s.config.id == station) else {
                continue;
            };
            let Some(handle) = s.handle.clone() else {
                continue;
            };
            let Some(link) = links.get_mut(&station) else {
                continue;
            };
            let all_routes = routes(s.max_level);
            let Some(&(purpose, level)) = all_routes.get(link.route) else {
                continue;
            };
            let route = link.route;
            let mut total = 0.0;
            let mut decrease = false;
            for (k, sp) in problem_keys.iter().zip(&allocation.setpoints) {
                if evses[*k].key.station == station {
                    let amps = one_decimal_down(sp.amps);
                    total += amps;
                    if let Some(l) = link.evses.get_mut(&evses[*k].key.evse) {
                        decrease |= l.accepted.is_none_or(|a| amps < a);
                        l.pending = Some(Pending { amps, sent_at: now });
                    }
                }
            }
            sends.push(Send {
                station: station.clone(),
                handle,
                circuit: s.config.electrical,
                limit: Limit {
                    evse: 0,
                    purpose,
                    stack_level: level,
                    amps: total,
                    ev_phases: 0,
                    in_watts: link.in_watts || s.rate_w_only,
                    transaction_id: None,
                    timing: timing(s.skew_s, link.absolute_only, now, validity, None),
                },
                what: SendWhat::Dynamic { evses: 0, route },
                priority: if decrease {
                    Priority::Safety
                } else {
                    Priority::Control
                },
                station_max: s.config.max_current_a,
                routes: all_routes.len(),
            });
        }

        // Read back what settled: one EVSE per station at a time, on per-EVSE routes (a
        // station-wide limit is shared out by the station itself).
        let mut verifies = Vec::new();
        for s in &stations {
            let (Some(handle), true) = (&s.handle, s.ready) else {
                continue;
            };
            let Some(link) = links.get_mut(&s.config.id) else {
                continue;
            };
            if link.no_composite || link.verifying {
                continue;
            }
            let due = link.evses.iter().find_map(|(evse, l)| {
                let accepted = l.accepted?;
                let settled = l.changed_at.is_none_or(|c| now >= c + ramp);
                if l.transaction.is_none()
                    || l.pending.is_some()
                    || !l.dynamic
                    || l.noncompliant.is_some()
                    || !settled
                {
                    return None;
                }
                let every = if l.unapplied.is_some() {
                    verify::VERIFY_AGAIN
                } else {
                    verify::VERIFY_EVERY
                };
                let due = l.verified_at.is_none_or(|v| {
                    now >= v + every || now < v || l.changed_at.is_some_and(|c| c > v)
                });
                due.then_some((*evse, accepted, l.phases()))
            });
            // Checked last: it builds the station's route list.
            let per_evse = || {
                routes(s.max_level)
                    .get(link.route)
                    .is_some_and(|(p, _)| *p != Purpose::StationMax)
            };
            if let Some((evse, expected, ev_phases)) = due.filter(|_| per_evse()) {
                link.verifying = true;
                verifies.push(Verify {
                    station: s.config.id.clone(),
                    handle: handle.clone(),
                    circuit: s.config.electrical,
                    evse,
                    expected,
                    ev_phases,
                });
            }
        }

        // The failsafe: recompute the fallback budget and send the changes, every few seconds
        // (it changes with sessions, connections and confirmations, not with every reading).
        let failsafe_due = {
            let mut last = lock(&self.failsafe_at);
            let due = last.is_none_or(|at| now >= at + FAILSAFE_EVERY || now < at);
            if due {
                *last = Some(now);
            }
            due
        };
        if failsafe_due {
            sends
                .extend(self.failsafe(&site, &config, &limits, &stations, &evses, &mut links, now));
        }
        drop(links);

        for send in sends {
            let inner = self.clone();
            tokio::spawn(async move { inner.send(send).await });
        }
        for v in verifies {
            let inner = self.clone();
            tokio::spawn(async move { inner.verify(v).await });
        }
    }

    /// Plans again when the planned sessions, their needs or the limits changed, or the
    /// interval passed; then caps every planned EVSE at its target and serves it first.
    fn follow_plan(
        self: &Arc<Self>,
        config: &ControlConfig,
        nodes: &[Node],
        limits: &[planner::NodeLimits<'_>],
        evses: &mut [Evse],
        (planned, prices): (&[planner::Planned], &[f64]),
        now: DateTime<Utc>,
    ) {
        let now_s = now.timestamp();
        let signature = planner::signature(evses, planned, limits, prices);
        let interval = TimeDelta::from_std(config.plan_interval).unwrap_or(TimeDelta::minutes(5));
        let start = {
            let mut state = lock(&self.plan);
            // The last attempt (made or failed) covers this signature until the interval ends.
            let tried = state.tried_signature == signature
                && state
                    .tried_at
                    .is_some_and(|at| now < at + interval && now >= at);
            let due = !planned.is_empty() && !tried && !state.running;
            if due {
                state.running = true;
                state.tried_at = Some(now);
                state.tried_signature = signature;
            }
            // A tick with nothing to plan (every planned EVSE in a transition, say) keeps the
            // plan: dropping it would leave the next ticks, whose signature it still covers,
            // without targets (their EVSEs then charged at full power until the interval).
            due
        };
        if start
            && let Some((slots, problem)) =
                planner::problem(now_s, nodes, limits, evses, planned, prices)
        {
            let inner = Arc::clone(self);
            let run = move || {
                let started = std::time::Instant::now();
                let plan = loadstar_optimizer::plan::plan(&problem);
                let usable = plan.status == loadstar_optimizer::plan::PlanStatus::Optimal;
                if usable {
                    debug!(
                        evs = problem.evs.len(),
                        slots = slots.len(),
                        took_ms = started.elapsed().as_millis() as u64,
                        energy_kwh = plan.energy_wh / 1000.0,
                        "plan made"
                    );
                } else {
                    warn!(evs = problem.evs.len(), status = ?plan.status, "plan failed: allocate() alone until the next one");
                }
                let mut state = lock(&inner.plan);
                state.running = false;
                state.made = usable.then(|| Arc::new(planner::MadePlan { slots, plan }));
            };
            if self.clock.is_virtual() || tokio::runtime::Handle::try_current().is_err() {
                run();
            } else {
                drop(tokio::task::spawn_blocking(run));
            }
        } else if start {
            lock(&self.plan).running = false;
        }
        let Some(made) = lock(&self.plan).made.clone() else {
            return;
        };
        for p in planned {
            let e = &mut evses[p.index];
            if let Some(mut target) = made.target_a(&e.id, p.departure_s, now_s) {
                // The last few Wh come as a sliver of a slot, below the minimum current, which
                // allocate() would idle slot after slot: once the rest fits in one slot at the
                // minimum, a slot with any energy for it delivers at the minimum.
                let at_min_wh =
                    e.circuit.amps_to_watts(e.ev_phases, e.min_a) * planner::SLOT_S as f64 / 3600.0;
                if target > 0.01 && target < e.min_a && p.remaining_wh <= at_min_wh {
                    target = e.min_a;
                }
                e.plan_a = Some(target.max(0.0));
                e.priority = planner::PLANNED_PRIORITY;
                e.weight = planner::PLANNED_WEIGHT;
            }
        }
    }

    /// The key a station's model is known by in the store (`model:<vendor>/<model>`).
    fn model_key(&self, station: &str) -> Option<String> {
        let state = lock(&self.state);
        let boot = state.stations.get(station)?.boot.as_ref()?;
        Some(format!("model:{}/{}", boot.vendor, boot.model))
    }

    /// Copies what the tick needs out of the site state.
    fn gather<'a>(
        &self,
        site: &'a SiteConfig,
        node_index: &HashMap<&str, usize>,
        now: DateTime<Utc>,
        stale: TimeDelta,
    ) -> (Vec<StationView<'a>>, Vec<EvseView>) {
        // Handles first: the CSMS takes the state lock under its registry lock.
        let handles = self
            .csms
            .stations(site.stations().iter().map(|c| c.id.as_str()));
        let state = lock(&self.state);
        let mut stations = Vec::with_capacity(site.stations().len());
        let mut evses = Vec::new();
        for (config, handle) in site.stations().iter().zip(handles) {
            let st = state.stations.get(&config.id);
            let handle = handle.filter(|_| st.is_some_and(|s| s.connected));
            let caps = st.map(|s| &s.capabilities);
            let idx = stations.len();
            let node = node_index
                .get(config.circuit.as_str())
                .copied()
                .unwrap_or(0);
            let path = config
                .circuit_path
                .iter()
                .filter_map(|c| node_index.get(c.as_str()).copied())
                .collect();
            stations.push(StationView {
                node,
                path,
                ready: caps.is_some_and(|c| c.set_up),
                rate_w_only: caps.is_some_and(|c| {
                    !c.rate_units.is_empty() && !c.rate_units.iter().any(|u| u == "A")
                }),
                max_level: caps.and_then(|c| c.max_stack_level),
                skew_s: st.and_then(|s| s.clock_skew_s),
                switches_phases: caps.is_some_and(|c| c.phase_switching == Some(true))
                    && config.electrical.wiring().phase_count() == 3,
                booted: st.is_some_and(|s| s.boot.is_some()),
                handle,
                config,
            });
            for evse in 1..=config.evses {
                let e = st.and_then(|s| s.evses.get(&evse));
                let session = e.and_then(|e| e.session.as_ref()).map(|s| SessionView {
                    transaction: s.transaction_id.clone(),
                    id_tag: s.id_tag.clone(),
                    started_at: s.started_at,
                    energy_wh: s.energy_wh,
                    needs: s.needs.clone(),
                });
                let measured = e.and_then(|e| {
                    let m = &e.measurement;
                    let at = m.at.filter(|at| now - *at <= stale)?;
                    let currents: Vec<f64> =
                        m.current_a.iter().flatten().map(|c| c.abs()).collect();
                    let (amps, phases) = if currents.is_empty() {
                        let w = m.power_w?;
                        (config.electrical.watts_to_amps(0, w.abs()), 0)
                    } else {
                        let max = currents.iter().copied().fold(0.0, f64::max);
                        (max, currents.iter().filter(|c| **c > 1.0).count() as u8)
                    };
                    Some((at, amps, phases))
                });
                let measured_lines = e.and_then(|e| {
                    let m = &e.measurement;
                    m.at.filter(|at| now - *at <= stale)?;
                    station_lines(&config.electrical, &m.current_a)
                });
                evses.push(EvseView {
                    key: EvseKey::new(&config.id, evse),
                    station: idx,
                    session,
                    measured,
                    measured_lines,
                });
            }
        }
        (stations, evses)
    }

    /// The fallback profiles: the budget per node, who keeps the minimum, the sends.
    #[allow(clippy::too_many_arguments)]
    fn failsafe(
        &self,
        site: &SiteConfig,
        config: &ControlConfig,
        limits: &[ExternalLimit],
        stations: &[StationView<'_>],
        evses: &[EvseView],
        links: &mut HashMap<String, StationLink>,
        now: DateTime<Utc>,
    ) -> Vec<Send> {
        // The budget keeps every limit (demand response, operator, policies) in force now or
        // starting within FALLBACK_LOOKAHEAD, not just the physical one: a controller that
        // dies during an event, or just before one, must leave the site within it. The
        // failsafe runs every few seconds, so the budget follows the limits while it lives.
        let in_force = |id: &str, physical: PerLine| {
            let from = now.timestamp();
            planner::lowest_limit(
                physical,
                &limit_constraints(limits, id),
                from,
                from + FALLBACK_LOOKAHEAD.num_seconds(),
            )
        };
        let mut nodes = vec![BudgetNode {
            parent: None,
            limit: in_force(GRID_ID, site.grid_limit()),
        }];
        let ids: Vec<&str> = std::iter::once(GRID_ID)
            .chain(site.circuits().iter().map(|c| c.id.as_str()))
            .collect();
        for c in site.circuits() {
            nodes.push(BudgetNode {
                parent: ids.iter().position(|i| *i == c.parent),
                limit: in_force(&c.id, c.limit_a),
            });
        }
        let rotation = {
            let mut r = lock(&self.fallback_rotation);
            let every =
                TimeDelta::from_std(config.fallback_rotation).unwrap_or(TimeDelta::minutes(15));
            match r.1 {
                Some(at) if now < at + every => {}
                _ => {
                    r.0 = r.0.wrapping_add(1);
                    r.1 = Some(now);
                }
            }
            r.0
        };
        let grid = site.model().grid();
        let unknown = {
            let state = lock(&self.state);
            let n = state
                .stations
                .values()
                .filter(|s| !s.known && s.connected)
                .count();
            PerLine::splat_on(grid, crate::site::MAX_STATION_CURRENT_A * n as f64)
        };
        let input = FallbackInput {
            nodes,
            building_reserve: PerLine::splat_on(grid, config.building_reserve_a),
            unknown_load: unknown,
            stations: stations
                .iter()
                .map(|s| FallbackStation {
                    path: s.path.clone(),
                    circuit: s.config.electrical,
                    max_a: s.config.max_current_a,
                    evses: s.config.evses,
                    confirmed: links
                        .get(&s.config.id)
                        .is_some_and(|l| l.fallback_confirmed(s.config.evses)),
                })
                .collect(),
            evses: evses
                .iter()
                .map(|e| FallbackEvse {
                    station: e.station,
                    evse: e.key.evse,
                    min_a: stations[e.station].config.min_current_a,
                    has_session: e.session.is_some(),
                })
                .collect(),
            rotation,
        };
        let budget = fallback_budget(&input);
        let mut per_station: HashMap<usize, Vec<(u32, f64)>> = HashMap::new();
        for (e, amps) in evses.iter().zip(budget) {
            // Only EVSEs with a session keep a minimum; an idle EVSE's fallback is 0, so a car
            // plugging in draws nothing before Loadstar has counted it.
            let amps = if e.session.is_some() { amps } else { 0.0 };
            per_station
                .entry(e.station)
                .or_default()
                .push((e.key.evse, amps));
        }
        let mut sends = Vec::new();
        let mut decreases = false;
        let mut increases = Vec::new();
        for (idx, wanted) in per_station {
            let s = &stations[idx];
            let Some(handle) = s.handle.clone().filter(|_| s.ready) else {
                continue;
            };
            let Some(link) = links.get_mut(&s.config.id) else {
                continue;
            };
            if link.fallback_route >= 2 {
                continue;
            }
            let in_watts = link.in_watts || s.rate_w_only;
            if link.fallback_route == 1 {
                // Station-wide fallback: the sum.
                let total: f64 = wanted.iter().map(|w| w.1).sum();
                let pending = link.evses.values().any(|l| l.fallback_pending.is_some());
                let same = link.evses.values().all(|l| l.fallback_confirmed)
                    && (link.evses.values().map(|l| l.fallback_a).sum::<f64>() - total).abs()
                        < 0.05;
                if pending || same {
                    continue;
                }
                for (evse, amps) in &wanted {
                    let l = link.evses.entry(*evse).or_default();
                    l.fallback_pending = Some(*amps);
                }
                sends.push(Send {
                    station: s.config.id.clone(),
                    handle: handle.clone(),
                    circuit: s.config.electrical,
                    limit: Limit {
                        evse: 0,
                        purpose: Purpose::StationMax,
                        stack_level: 0,
                        amps: total,
                        ev_phases: 0,
                        in_watts,
                        transaction_id: None,
                        timing: Timing::Absolute { valid_to: None },
                    },
                    what: SendWhat::Fallback { route: 1 },
                    priority: Priority::Safety,
                    station_max: s.config.max_current_a,
                    routes: 0,
                });
                continue;
            }
            for (evse, amps) in wanted {
                let l = link.evses.entry(evse).or_default();
                if l.fallback_pending.is_some()
                    || (l.fallback_confirmed && (l.fallback_a - amps).abs() < 0.05)
                {
                    continue;
                }
                let lower = !l.fallback_confirmed || amps < l.fallback_a;
                if !lower && l.transaction.is_some() && !l.dynamic {
                    // Without Loadstar's own profile yet, the fallback is what the session
                    // draws: raising it is an increase the allocation has not counted. It
                    // waits until the dynamic profile is in place.
                    continue;
                }
                l.fallback_pending = Some(amps);
                let send = Send {
                    station: s.config.id.clone(),
                    handle: handle.clone(),
                    circuit: s.config.electrical,
                    limit: Limit {
                        evse,
                        purpose: Purpose::TxDefault,
                        stack_level: 0,
                        amps,
                        ev_phases: 0,
                        in_watts,
                        transaction_id: None,
                        timing: Timing::Absolute { valid_to: None },
                    },
                    what: SendWhat::Fallback { route: 0 },
                    priority: if lower {
                        Priority::Safety
                    } else {
                        Priority::Control
                    },
                    station_max: s.config.max_current_a,
                    routes: 0,
                };
                if lower {
                    decreases = true;
                    sends.push(send);
                } else {
                    increases.push(send);
                }
            }
        }
        if decreases {
            // Break before make, for fallbacks too: raises wait for the next recompute.
            for s in &increases {
                if let Some(l) = links
                    .get_mut(&s.station)
                    .and_then(|k| k.evses.get_mut(&s.limit.evse))
                {
                    l.fallback_pending = None;
                }
            }
        } else {
            sends.extend(increases);
        }
        sends
    }

    /// Reads an EVSE's composite schedule back and compares it with what it accepted.
    async fn verify(self: Arc<Self>, v: Verify) {
        let limit = match v.handle.version() {
            OcppVersion::V16 => v
                .handle
                .call(&verify::request_v16(v.evse), Priority::Control)
                .await
                .map(|r| verify::limit_v16(&r, self.clock.now(), &v.circuit, v.ev_phases)),
            OcppVersion::V201 => v
                .handle
                .call(&verify::request_v201(v.evse), Priority::Control)
                .await
                .map(|r| verify::limit_v201(&r, self.clock.now(), &v.circuit, v.ev_phases)),
        };
        let now = self.clock.now();
        let mut links = lock(&self.links);
        let Some(link) = links.get_mut(&v.station) else {
            return;
        };
        if link.generation != v.handle.generation() {
            return;
        }
        link.verifying = false;
        let limit = match limit {
            Ok(limit) => limit,
            Err(CallError::Failed(loadstar_ocpp::CallFailure::Remote(e)))
                if matches!(
                    e.code,
                    Some(loadstar_ocpp::ErrorCode::NotImplemented)
                        | Some(loadstar_ocpp::ErrorCode::NotSupported)
                ) =>
            {
                link.no_composite = true;
                link.learn(&v.station, "does not implement GetCompositeSchedule");
                return;
            }
            Err(e) => {
                debug!(station = %v.station, evse = v.evse, error = %e, "composite schedule not read");
                if let Some(l) = link.evses.get_mut(&v.evse) {
                    l.verified_at = Some(now);
                }
                return;
            }
        };
        let Some(l) = link.evses.get_mut(&v.evse) else {
            return;
        };
        l.verified_at = Some(now);
        if l.accepted != Some(v.expected) || l.pending.is_some() {
            // Changed meanwhile: the next reading compares.
            return;
        }
        match limit {
            Some(allowed) if allowed > v.expected + verify::COMPOSITE_TOLERANCE_A => {
                if l.unapplied.is_none() {
                    warn!(station = %v.station, evse = v.evse, setpoint_a = v.expected, composite_a = allowed, "station accepted its profile but its composite schedule allows more: held at that");
                }
                l.unapplied = Some(allowed);
                link.learn(
                    &v.station,
                    "does not apply accepted profiles (composite schedule)",
                );
            }
            Some(allowed) => {
                if l.unapplied.take().is_some() {
                    info!(station = %v.station, evse = v.evse, composite_a = allowed, "station applies its profile again");
                }
            }
            None => {
                debug!(station = %v.station, evse = v.evse, "no composite schedule to compare")
            }
        }
    }

    /// Sends one profile and folds the answer into the dialogue state.
    async fn send(self: Arc<Self>, send: Send) {
        let now = self.clock.now();
        let result = match send.handle.version() {
            OcppVersion::V16 => send
                .handle
                .call(&send.limit.to_v16(&send.circuit, now), send.priority)
                .await
                .map(|r| r.status == v16::ChargingProfileStatus::Accepted),
            OcppVersion::V201 => send
                .handle
                .call(&send.limit.to_v201(&send.circuit, now), send.priority)
                .await
                .map(|r| r.status == v201::ChargingProfileStatusEnum::Accepted),
        };
        let at = self.clock.now();
        debug!(station = %send.station, evse = send.limit.evse, purpose = ?send.limit.purpose, level = send.limit.stack_level, amps = send.limit.amps, ?result, "profile answered");
        let record = ProfileRecord {
            at,
            station: send.station.clone(),
            evse: send.limit.evse,
            purpose: format!("{:?}", send.limit.purpose),
            stack_level: send.limit.stack_level,
            amps: send.limit.amps,
            unit: if send.limit.in_watts { "W" } else { "A" }.to_owned(),
            valid_to: match send.limit.timing {
                Timing::Absolute { valid_to } => valid_to,
                Timing::Relative { .. } => None,
            },
            result: match &result {
                Ok(true) => "accepted".to_owned(),
                Ok(false) => "rejected".to_owned(),
                Err(e) => e.to_string(),
            },
        };
        if let Err(e) = self.store.append_profile(&record) {
            warn!(station = %send.station, error = %e, "store: cannot record the profile sent");
        }
        let mut links = lock(&self.links);
        let Some(link) = links.get_mut(&send.station) else {
            return;
        };
        let learned_before = link.learned();
        if link.generation != send.handle.generation() {
            // Answered on a connection that has since been replaced: the reconnect resets it.
            return;
        }
        match (send.what, result) {
            (SendWhat::Dynamic { evses, .. }, Ok(true)) => {
                lock(&self.stats).last_accepted = Some(std::time::Instant::now());
                for (evse, l) in link.evses.iter_mut() {
                    if evses != 0 && *evse != evses {
                        continue;
                    }
                    let Some(p) = l.pending.take() else { continue };
                    if l.accepted != Some(p.amps) {
                        l.before = l.accepted.or(Some(send.station_max));
                        l.changed_at = Some(at);
                        if l.before == Some(0.0) {
                            // A new raise from 0 A: checked again for being swallowed.
                            l.raise_resent = false;
                        }
                    }
                    l.accepted = Some(p.amps);
                    l.unconfirmed = None;
                    l.sent_at = Some(at);
                    l.dynamic = true;
                }
            }
            (SendWhat::Dynamic { evses, route }, Ok(false)) => {
                for (evse, l) in link.evses.iter_mut() {
                    if evses != 0 && *evse != evses {
                        continue;
                    }
                    if let Some(p) = l.pending.take() {
                        l.unconfirmed = Some(p.amps.max(l.unconfirmed.unwrap_or(0.0)));
                    }
                }
                // A TxProfile for a transaction that has just ended is refused for that
                // reason alone: not a verdict on the route.
                let stale_tx = send.limit.purpose == Purpose::Tx
                    && link
                        .evses
                        .get(&send.limit.evse)
                        .is_none_or(|l| l.transaction != send.limit.transaction_id);
                // Try the next shape or route; remember what this station refused.
                if stale_tx {
                    debug!(station = %send.station, evse = send.limit.evse, "TxProfile refused after its transaction ended");
                } else if matches!(send.limit.timing, Timing::Relative { .. })
                    && !link.absolute_only
                {
                    link.absolute_only = true;
                    link.learn(&send.station, "rejects relative schedules");
                } else if link.route == route {
                    link.route += 1;
                    let msg = format!(
                        "rejects {:?} at stack level {}",
                        send.limit.purpose, send.limit.stack_level
                    );
                    link.learn(&send.station, &msg);
                    if link.route >= send.routes {
                        warn!(station = %send.station, "station rejects every profile route: held at its max in the allocation");
                    }
                }
                self.wake.notify_one();
            }
            (SendWhat::Dynamic { evses, .. }, Err(e)) => {
                for (evse, l) in link.evses.iter_mut() {
                    if evses != 0 && *evse != evses {
                        continue;
                    }
                    if let Some(p) = l.pending.take() {
                        l.unconfirmed = Some(p.amps.max(l.unconfirmed.unwrap_or(0.0)));
                    }
                }
                log_call_error(&send.station, &e);
                self.wake.notify_one();
            }
            (SendWhat::Fallback { route }, Ok(true)) => {
                for (evse, l) in link.evses.iter_mut() {
                    if route == 0 && *evse != send.limit.evse {
                        continue;
                    }
                    if let Some(amps) = l.fallback_pending.take() {
                        l.fallback_a = amps;
                        l.fallback_confirmed = true;
                        if !l.dynamic && l.transaction.is_some() {
                            // The fallback is what a session runs on until Loadstar's own
                            // profile lands.
                            if l.accepted.is_none_or(|a| amps < a) {
                                l.before = l.accepted;
                                l.changed_at = Some(at);
                            }
                            l.accepted = Some(amps);
                        }
                    }
                }
                self.wake.notify_one();
            }
            (SendWhat::Fallback { route }, Ok(false)) => {
                for l in link.evses.values_mut() {
                    l.fallback_pending = None;
                    l.fallback_confirmed = false;
                }
                if link.fallback_route == route {
                    link.fallback_route += 1;
                    let msg = if route == 0 {
                        "rejects the TxDefaultProfile fallback"
                    } else {
                        "rejects the station-wide fallback: no fallback, counted at its max"
                    };
                    link.learn(&send.station, msg);
                }
                self.wake.notify_one();
            }
            (SendWhat::Fallback { .. }, Err(e)) => {
                for (evse, l) in link.evses.iter_mut() {
                    if send.limit.evse == 0 || *evse == send.limit.evse {
                        l.fallback_pending = None;
                    }
                }
                log_call_error(&send.station, &e);
            }
        }
        let learned = link.learned();
        if learned != learned_before
            && let Some(key) = link.model_key.clone()
        {
            drop(links);
            match serde_json::to_vec(&learned) {
                Ok(bytes) => {
                    if let Err(e) = self.store.put_control(&key, &bytes) {
                        warn!(model = %key, error = %e, "store: cannot save station quirks");
                    }
                }
                Err(e) => warn!(error = %e, "cannot encode station quirks"),
            }
        }
    }
}

/// Break before make, increase by increase: `load` per node is what it may carry until every
/// change in flight is done (uncontrolled, held, and every EVSE at the most it may draw). An
/// increase `(evse, to, problem index)` goes out only if its extra draw fits on every node of
/// its path; the lowest setpoints first. `of` gives an EVSE's line coefficients, what it may
/// draw now and its path. Returns the increases that go out and how many wait.
fn increases_that_fit<'p>(
    mut load: Vec<PerLine>,
    limits: &[PerLine],
    increases: Vec<(usize, f64, usize)>,
    of: impl Fn(usize, usize) -> (PerLine, f64, &'p [usize]),
) -> (Vec<(usize, f64)>, usize) {
    let mut fit = Vec::new();
    let mut wait = 0;
    let info: Vec<(PerLine, f64, &[usize])> = increases.iter().map(|&(k, _, j)| of(k, j)).collect();
    let mut order: Vec<usize> = (0..increases.len()).collect();
    order.sort_by(|&a, &b| info[a].1.total_cmp(&info[b].1).then(a.cmp(&b)));
    for x in order {
        let (k, to, _) = increases[x];
        let (coefficients, now, path) = info[x];
        let extra = coefficients * (to - now).max(0.0);
        if path
            .iter()
            .all(|&n| (load[n] + extra).fits_within(&limits[n]))
        {
            for &n in path {
                load[n] += extra;
            }
            fit.push((k, to));
        } else {
            wait += 1;
        }
    }
    (fit, wait)
}

/// The per-phase currents a station reports, on the grid lines its phases land on (a
/// line-to-line phase loads both lines). `None` when it reports no current.
fn station_lines(circuit: &StationCircuit, phases: &[Option<f64>; 3]) -> Option<PerLine> {
    if phases.iter().all(Option::is_none) {
        return None;
    }
    let mut out = PerLine::ZERO;
    match circuit.wiring() {
        StationWiring::SinglePhase(PhaseConnection::LineToLine(a, b)) => {
            let i = phases[0].unwrap_or(0.0).abs();
            out[a] = i;
            out[b] = i;
        }
        wiring => {
            for (line, i) in wiring.lines().into_iter().zip(phases.iter()) {
                out[line] += i.unwrap_or(0.0).abs();
            }
        }
    }
    Some(out)
}

fn link_quirk(link: &mut StationLink, station: &str, quirk: &str) {
    link.learn(station, quirk);
}

fn log_call_error(station: &str, e: &CallError) {
    match e {
        CallError::NotConnected(_) => debug!(station, "profile not sent: station not connected"),
        other => {
            warn!(station, error = %other, "profile not confirmed: the station is counted at its old limit or its max")
        }
    }
}

/// Absolute times only when the station's clock agrees with ours (or nothing says it does
/// not); otherwise a Relative schedule that still ends by itself.
fn timing(
    skew_s: Option<i64>,
    absolute_only: bool,
    now: DateTime<Utc>,
    validity: TimeDelta,
    session_start: Option<DateTime<Utc>>,
) -> Timing {
    let agrees = skew_s.is_none_or(|s| s.abs() <= CLOCK_AGREEMENT_S);
    if agrees || absolute_only || session_start.is_none() {
        return Timing::Absolute {
            valid_to: if agrees { Some(now + validity) } else { None },
        };
    }
    let since_start = session_start.map_or(0, |s| (now - s).num_seconds().max(0));
    Timing::Relative {
        duration_s: i32::try_from(since_start + validity.num_seconds()).ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_step_down_levels_then_purposes() {
        assert_eq!(
            routes(Some(3)),
            vec![
                (Purpose::Tx, 3),
                (Purpose::Tx, 2),
                (Purpose::Tx, 0),
                (Purpose::TxDefault, 3),
                (Purpose::TxDefault, 2),
                (Purpose::StationMax, 3),
                (Purpose::StationMax, 0),
            ]
        );
        assert_eq!(
            routes(Some(0)),
            vec![(Purpose::Tx, 0), (Purpose::StationMax, 0)],
            "TxDefault at level 0 would replace the fallback"
        );
    }

    #[test]
    fn only_increases_that_fit_beside_the_changes_in_flight_go_out() {
        // Two nodes: the grid (60 A per line) and a feeder under it (30 A per line). `load`
        // counts every EVSE at the most it may draw until its change is done.
        let load = vec![PerLine([40.0, 40.0, 40.0]), PerLine([26.0, 26.0, 26.0])];
        let limits = vec![PerLine([60.0, 60.0, 60.0]), PerLine([30.0, 30.0, 30.0])];
        let three = PerLine([1.0, 1.0, 1.0]);
        let l2 = PerLine([0.0, 1.0, 0.0]);
        let grid: &[usize] = &[0];
        let feeder: &[usize] = &[1, 0];
        let of = |k: usize, _j: usize| match k {
            // On the feeder: 6 -> 10 A needs 4 A there (fits exactly), 6 -> 11 A does not.
            0 => (three, 6.0, feeder),
            1 => (three, 6.0, feeder),
            // On the grid node: 8 -> 16 A single-phase on L2 (8 A), 0 -> 12 A three-phase.
            2 => (l2, 8.0, grid),
            _ => (three, 0.0, grid),
        };
        let increases = vec![(0, 10.0, 0), (1, 11.0, 1), (2, 16.0, 2), (3, 12.0, 3)];
        let (fit, wait) = increases_that_fit(load, &limits, increases, of);
        // Lowest setpoint first: EVSE 3 (0 -> 12 A) takes 12 A of the grid's 20; EVSE 0 takes
        // 4 A more on every line, filling the feeder; EVSE 1 would overload the feeder, and
        // EVSE 2's 8 A on L2 no longer fits in the grid's 4 A left.
        assert_eq!(fit, vec![(3, 12.0), (0, 10.0)]);
        assert_eq!(wait, 2);

        // Nothing goes out onto a node that is already over its limit.
        let over = vec![PerLine([61.0, 10.0, 10.0])];
        let (fit, wait) = increases_that_fit(over, &limits[..1], vec![(0, 7.0, 0)], |_, _| {
            (three, 6.0, grid)
        });
        assert!(fit.is_empty());
        assert_eq!(wait, 1);
    }

    #[test]
    fn holds_count_the_larger_value_until_confirmed_and_ramped() {
        let now = Utc::now();
        let ramp = TimeDelta::seconds(5);
        let mut l = EvseLink {
            accepted: Some(16.0),
            fallback_a: 6.0,
            fallback_confirmed: true,
            ..EvseLink::default()
        };
        assert_eq!(l.hold(now, ramp, 32.0), None);
        l.pending = Some(Pending {
            amps: 8.0,
            sent_at: now,
        });
        assert_eq!(l.hold(now, ramp, 32.0).map(|h| h.0), Some(16.0));
        l.pending = None;
        l.before = Some(16.0);
        l.accepted = Some(8.0);
        l.changed_at = Some(now);
        assert_eq!(l.hold(now, ramp, 32.0).map(|h| h.0), Some(16.0), "ramping");
        assert_eq!(l.hold(now + ramp, ramp, 32.0), None, "ramped");
        l.unconfirmed = Some(10.0);
        assert_eq!(l.hold(now + ramp, ramp, 32.0).map(|h| h.0), Some(10.0));
        // An unanswered station may let its profile run out: its fallback counts too.
        l.fallback_a = 12.0;
        assert_eq!(l.hold(now + ramp, ramp, 32.0).map(|h| h.0), Some(12.0));
        l.fallback_confirmed = false;
        assert_eq!(
            l.hold(now + ramp, ramp, 32.0).map(|h| h.0),
            Some(32.0),
            "no fallback: its max"
        );
        l.fallback_confirmed = true;
        l.accepted = None;
        assert_eq!(
            l.hold(now + ramp, ramp, 32.0).map(|h| h.0),
            Some(32.0),
            "unknown counts at max"
        );
    }

    #[test]
    fn absolute_times_only_when_the_clocks_agree() {
        let now = Utc::now();
        let v = TimeDelta::seconds(300);
        let start = Some(now - TimeDelta::seconds(100));
        assert_eq!(
            timing(Some(3), false, now, v, start),
            Timing::Absolute {
                valid_to: Some(now + v)
            }
        );
        assert_eq!(
            timing(Some(3600), false, now, v, start),
            Timing::Relative {
                duration_s: Some(400)
            }
        );
        assert_eq!(
            timing(Some(3600), true, now, v, start),
            Timing::Absolute { valid_to: None }
        );
    }
}

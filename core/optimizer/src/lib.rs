//! `loadstar-optimizer`: pure functions. No IO, no clock, no async, no global state; time and
//! state come in as arguments. Units are amps per grid line throughout.
//!
//! * [`model`]: the electrical model and every unit conversion (shared with the controller and
//!   the sims).
//! * [`allocate`]: the real-time, per-tick allocator: weighted max-min water-filling over a
//!   tree of per-line limits, with minimum currents, pause rotation with a dwell time, and a
//!   binding reason per setpoint. Follows the horizon plan's targets as caps.
//! * [`plan`]: the horizon planner: one LP (good_lp + clarabel) over 15-minute slots for
//!   deadlines, prices, solar surplus and every node's limit per slot.
//! * [`policy`]: the reference policies (uncontrolled, static equal share,
//!   first-come-first-served, the offline optimum) and Jain's fairness index.

pub mod allocate;
pub mod model;
pub mod plan;
pub mod policy;

//! `loadstar-optimizer`: pure functions. No IO, no clock, no async, no global state; time and
//! state come in as arguments. Units are amps per grid line throughout.
//!
//! Today it holds the electrical model ([`model`]) and the real-time per-tick allocator
//! ([`allocate`]: weighted max-min water-filling over a tree of per-line limits, with pause
//! rotation); planning comes with the optimizer issue.

pub mod allocate;
pub mod model;

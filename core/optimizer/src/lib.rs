//! `loadstar-optimizer`: pure functions. No IO, no clock, no async, no global state; time and
//! state come in as arguments. Units are amps per grid line throughout.
//!
//! Today it holds the electrical model ([`model`]); allocation and planning come with the
//! optimizer issue.

pub mod model;

//! `loadstar-sims`: simulated stations, EVs, the site and its meters, and the load generator.
//!
//! Invariant: depends on the two pure crates (`loadstar-ocpp`, `loadstar-optimizer`), never on
//! `loadstar`, so that `loadstar demo` and `loadstar simulate` can use it.

pub mod baseline;
pub mod client;
pub mod drive;
pub mod ev;
pub mod kpi;
pub mod loadgen;
pub mod meter;
pub mod plot;
pub mod profile;
pub mod scenario;
pub mod site;
pub mod station;

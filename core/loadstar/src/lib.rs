//! `loadstar`: the site controller and OCPP CSMS.
//!
//! See ARCHITECTURE.md for the map. In short: `csms` moves frames between WebSockets and the
//! sans-IO `loadstar-ocpp`; `state` is the site state those frames update; `store` persists it;
//! `site` is the site file; `clock` is the one source of time.

pub mod clock;
pub mod control;
pub mod csms;
pub mod demo;
pub mod plugins;
pub mod runtime;
pub mod simulate;
pub mod site;
pub mod state;
pub mod store;

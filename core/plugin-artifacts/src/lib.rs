//! The plugins workspace's components, built for wasm32-wasip2 by this crate's build script:
//! the reference plugins the `loadstar` binary embeds (for `demo` and `simulate`), and the test
//! fixtures of the host's tests and benchmarks.

/// `plugins/fixtures/probe-meter`: a meter whose config's `mode` picks a behaviour.
pub const PROBE_METER: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/probe_meter.wasm"));

/// `plugins/fixtures/probe-policy`: a policy whose config's `mode` picks a behaviour.
pub const PROBE_POLICY: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/probe_policy.wasm"));

/// `plugins/http-json-meter`: the reference HTTP/JSON meter.
pub const HTTP_JSON_METER: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/http_json_meter.wasm"));

/// `plugins/peak-shaving`: the reference capacity-tariff policy (monthly 15-minute peak).
pub const PEAK_SHAVING: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/peak_shaving.wasm"));

/// `plugins/solar-surplus`: the reference policy for charging on solar surplus only.
pub const SOLAR_SURPLUS: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/solar_surplus.wasm"));

/// `plugins/tou-tariff`: the reference time-of-use tariff (weekday and hour, holidays, DST).
pub const TOU_TARIFF: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/tou_tariff.wasm"));

/// `plugins/sunspec-meter`: the reference SunSpec meter over Modbus TCP.
pub const SUNSPEC_METER: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/sunspec_meter.wasm"));

/// `plugins/day-ahead-price`: the reference day-ahead price feed (HTTP, cached in kv).
pub const DAY_AHEAD_PRICE: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/day_ahead_price.wasm"));

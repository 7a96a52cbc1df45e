//! The site file: one TOML file that describes the site (time zone, grid connection, circuit
//! tree, stations and their wiring and passwords) and how Loadstar runs (CSMS listener,
//! authorization, store, API, logging).
//!
//! * [`SiteConfig::load`] reads and validates a file; [`SiteConfig::parse`] does the same for text
//!   (with the environment injected, so tests never touch the process environment).
//! * Every mistake is collected, not just the first: [`ConfigErrors`] lists each as
//!   `file:line:column: field: message`. Warnings (valid, but probably not meant) are kept apart:
//!   [`SiteConfig::warnings`], [`ConfigErrors::warnings`].
//! * [`check`] is what `loadstar check <site.toml>` prints.
//! * Electrical semantics (grid types, voltages, wiring rules, kW → A) come from
//!   [`loadstar_optimizer::model`]; nothing is converted here.
//!
//! The reference for every key is `examples/README.md`; `examples/site.toml` and
//! `examples/delta-it.toml` are complete examples, and [`DEMO_SITE`] is the demo's site.
//!
//! Inside Loadstar every limit is **amps per grid line** ([`PerLine`]); on split-phase grids L3 is
//! always 0.

mod build;
mod credentials;
mod diag;
mod plugins;
mod read;

use std::collections::{BTreeSet, HashMap};
use std::fmt::{self, Write as _};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono_tz::Tz;
use loadstar_ocpp::OcppVersion;
use loadstar_optimizer::model::{
    ElectricalModel, GridType, PerLine, PhaseConnection, StationCircuit, StationWiring,
};

pub use credentials::StationCredentials;
pub use diag::{ConfigError, ConfigErrors, ConfigWarning};

/// The demo's site file (`examples/demo.toml`), used by `loadstar demo`. **Demo only**: its
/// passwords are inline and public.
pub const DEMO_SITE: &str = include_str!("../../../examples/demo.toml");

/// The id of the root of the circuit tree: the grid connection.
pub const GRID_ID: &str = "grid";

/// Largest station id OCPP allows (the last segment of the WebSocket URL, after
/// percent-decoding).
pub const MAX_STATION_ID_CHARS: usize = 48;

/// Largest `max_current_a` a station may declare (per phase).
pub const MAX_STATION_CURRENT_A: f64 = 80.0;

/// Basic-auth password length in characters (OCPP security profiles 1 and 2).
pub const PASSWORD_CHARS: std::ops::RangeInclusive<usize> = 16..=40;

/// A parsed, validated site file with its secrets resolved (and hashed) and the circuit tree
/// worked out. Built only by [`SiteConfig::load`] and [`SiteConfig::parse`], so everything in it
/// holds: ids are unique, every reference resolves, the tree has no cycle, every wiring fits the
/// grid, every limit is finite.
#[derive(Debug, Clone)]
pub struct SiteConfig {
    site: SiteInfo,
    grid: GridSettings,
    /// Top-down: every circuit comes after its parent.
    circuits: Vec<CircuitConfig>,
    /// File order.
    stations: Vec<StationConfig>,
    csms: CsmsSettings,
    authorization: AuthorizationSettings,
    store: StoreSettings,
    api: ApiSettings,
    logging: LoggingSettings,
    control: ControlSettings,
    /// `[[plugin]]`, file order; names unique.
    plugins: Vec<SitePlugin>,
    warnings: Vec<ConfigWarning>,
    circuit_index: HashMap<String, usize>,
    station_index: HashMap<String, usize>,
}

/// One `[[plugin]]`: the host's spec of it and where its component is.
#[derive(Debug, Clone, PartialEq)]
pub struct SitePlugin {
    pub spec: crate::plugins::PluginSpec,
    /// The component (`.wasm`), resolved against the site file's folder.
    pub wasm: PathBuf,
    /// A policy's `every_s`: how often it is evaluated (zero for a meter, read every tick).
    pub every: std::time::Duration,
    /// A policy's `safe_limits`: A per line by node, while it is failing and its last limits
    /// have ended.
    pub safe_limits: std::collections::BTreeMap<String, f64>,
}

/// `[site]`.
#[derive(Debug, Clone, PartialEq)]
pub struct SiteInfo {
    /// Display name (`name`, default `"Loadstar site"`).
    pub name: String,
    /// The IANA time zone for tariffs, months and reports (`timezone`, required). Everything
    /// inside Loadstar is UTC; this is only for local-time rules.
    pub timezone: Tz,
}

/// `[grid]`: the grid connection, root of the circuit tree.
#[derive(Debug, Clone, PartialEq)]
pub struct GridSettings {
    /// Grid type and nominal voltage (`type`, `voltage`).
    pub model: ElectricalModel,
    /// `limit_a` as configured, per line (0 on lines the grid does not have).
    pub limit_a: PerLine,
    /// `limit_kw`, if given.
    pub limit_kw: Option<f64>,
    /// The limit that applies: line-wise minimum of `limit_a` and `limit_kw` converted by
    /// [`ElectricalModel::connection_limit_from_kw`].
    pub limit: PerLine,
    /// Ids of the circuits directly under the grid, in file order.
    pub circuits: Vec<String>,
    /// Ids of the stations directly on the grid (no circuit), in file order.
    pub stations: Vec<String>,
}

/// One `[[circuit]]`: a feeder, sub-panel or breaker with a per-line limit.
#[derive(Debug, Clone, PartialEq)]
pub struct CircuitConfig {
    /// Unique id (never `"grid"`).
    pub id: String,
    /// [`GRID_ID`] or the id of another circuit.
    pub parent: String,
    /// `limit_a` as configured, per line (0 on lines the grid does not have, and on lines a
    /// per-line array sets to 0).
    pub limit_a: PerLine,
    /// The limit that really applies here: the line-wise minimum of this circuit's limit and
    /// every ancestor's, up to and including the grid's effective limit.
    pub effective_limit: PerLine,
    /// The chain up to the root: parent, grandparent, …, ending with [`GRID_ID`].
    pub ancestors: Vec<String>,
    /// Ids of the circuits directly under this one, in file order.
    pub children: Vec<String>,
    /// Ids of the stations directly on this circuit, in file order.
    pub stations: Vec<String>,
}

/// Where a station's password came from (never the password itself).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CredentialSource {
    /// `password = "…"` in the site file.
    Inline,
    /// `password_file`, resolved against the site file's directory.
    File(PathBuf),
    /// `password_env`: the environment variable's name.
    Env(String),
}

/// One `[[station]]`: a charging station (an OCPP identity) of the site.
#[derive(Debug, Clone, PartialEq)]
pub struct StationConfig {
    /// The OCPP identity: the last URL path segment, percent-decoded, at most 48 characters,
    /// also the Basic-auth username.
    pub id: String,
    /// [`GRID_ID`] or the id of the circuit the station hangs on.
    pub circuit: String,
    /// The station's circuit, then its ancestors, ending with [`GRID_ID`]: every node whose
    /// limit this station's current counts against.
    pub circuit_path: Vec<String>,
    /// Number of station phases (1, 2 or 3).
    pub phases: u8,
    /// Hardware maximum per phase, A (0 < max ≤ 80).
    pub max_current_a: f64,
    /// Lowest current the station can be set to without pausing, per phase, A (default 6, the
    /// IEC 61851 minimum; never above `max_current_a`).
    pub min_current_a: f64,
    /// Where the station's phases land on the grid lines.
    pub wiring: StationWiring,
    /// The wiring bound to the site's electrical model: line loads, watts, `numberPhases`.
    pub electrical: StationCircuit,
    /// Number of EVSEs (OCPP 1.6 connectors), at least 1.
    pub evses: u32,
    /// The OCPP version the station must speak, if pinned (`ocpp = "1.6"` or `"2.0.1"`);
    /// `None` accepts whatever the station negotiates.
    pub ocpp: Option<OcppVersion>,
    /// OCPP security profile: 1 (Basic auth over ws) or 2 (TLS + Basic auth; TLS terminated in
    /// front of Loadstar). Default 1.
    pub security_profile: u8,
    /// The hashed password; `None` only when `csms.require_auth = false` and none is given.
    pub credentials: Option<StationCredentials>,
    /// Where the password came from.
    pub credential_source: Option<CredentialSource>,
}

/// `[csms]`: the OCPP WebSocket server.
#[derive(Debug, Clone, PartialEq)]
pub struct CsmsSettings {
    /// Listener address; stations connect to `ws://<listen>/ocpp/<stationId>`.
    pub listen: SocketAddr,
    /// Heartbeat interval given in the BootNotification answer, s.
    pub heartbeat_interval_s: u64,
    /// WebSocket ping interval, s; a station silent for three intervals is dropped.
    pub ping_interval_s: u64,
    /// Largest WebSocket message accepted, bytes (≥ 1024).
    pub max_frame_bytes: usize,
    /// How long to wait for a station's answer to our CALL, s.
    pub call_timeout_s: u64,
    /// MeterValueSampleInterval (1.6) / SampledDataCtrlr.TxUpdatedInterval (2.0.1) set at boot, s.
    pub meter_interval_s: u64,
    /// Whether stations not in the site file may connect (held at
    /// `unknown_station_current_a` until adopted).
    pub allow_unknown_stations: bool,
    /// The current an unknown station is held to, per phase, A.
    pub unknown_station_current_a: f64,
    /// Whether every station must authenticate with Basic auth. `false` is for labs only.
    pub require_auth: bool,
}

impl CsmsSettings {
    /// [`Self::heartbeat_interval_s`] as a duration.
    pub fn heartbeat_interval(&self) -> Duration {
        Duration::from_secs(self.heartbeat_interval_s)
    }
    /// [`Self::ping_interval_s`] as a duration.
    pub fn ping_interval(&self) -> Duration {
        Duration::from_secs(self.ping_interval_s)
    }
    /// [`Self::call_timeout_s`] as a duration.
    pub fn call_timeout(&self) -> Duration {
        Duration::from_secs(self.call_timeout_s)
    }
    /// [`Self::meter_interval_s`] as a duration.
    pub fn meter_interval(&self) -> Duration {
        Duration::from_secs(self.meter_interval_s)
    }
}

impl Default for CsmsSettings {
    fn default() -> Self {
        CsmsSettings {
            listen: SocketAddr::from(([0, 0, 0, 0], 9000)),
            heartbeat_interval_s: 300,
            ping_interval_s: 60,
            max_frame_bytes: 1 << 20,
            call_timeout_s: 30,
            meter_interval_s: 10,
            allow_unknown_stations: false,
            unknown_station_current_a: 0.0,
            require_auth: true,
        }
    }
}

/// How id tags (RFID cards, app tokens) are authorized.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AuthorizationMode {
    /// Every tag is accepted.
    #[default]
    AcceptAll,
    /// Only tags in [`AuthorizationSettings::id_tags`].
    LocalList,
}

/// `[authorization]`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AuthorizationSettings {
    /// `mode`, default `accept_all`.
    pub mode: AuthorizationMode,
    /// `id_tags` and the tags of `id_tags_file`, merged.
    pub id_tags: BTreeSet<String>,
}

impl AuthorizationSettings {
    /// Whether `id_tag` may charge. Tags compare exactly (case-sensitive).
    pub fn accepts(&self, id_tag: &str) -> bool {
        match self.mode {
            AuthorizationMode::AcceptAll => true,
            AuthorizationMode::LocalList => self.id_tags.contains(id_tag),
        }
    }
}

/// `[store]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreSettings {
    /// Database directory, resolved against the site file's directory.
    pub data_dir: PathBuf,
    /// How long raw meter samples are kept, days.
    pub raw_retention_days: u32,
    /// Bucket size of downsampled meter data, minutes (divides 1440).
    pub downsample_minutes: u32,
}

impl Default for StoreSettings {
    fn default() -> Self {
        StoreSettings {
            data_dir: PathBuf::from("data"),
            raw_retention_days: 7,
            downsample_minutes: 15,
        }
    }
}

/// `[api]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiSettings {
    /// HTTP listener (REST, SSE, `/metrics`, dashboard).
    pub listen: SocketAddr,
}

impl Default for ApiSettings {
    fn default() -> Self {
        ApiSettings {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
        }
    }
}

/// `[control]`: the control loop, the dispatcher and the failsafe.
#[derive(Debug, Clone, PartialEq)]
pub struct ControlSettings {
    /// Period of the control loop, ms (it also runs on events).
    pub tick_ms: u64,
    /// How long an EV takes to follow a new limit (IEC 61851 allows 5 s), s.
    pub ramp_s: u64,
    /// Smallest change worth a new profile, A.
    pub hysteresis_a: f64,
    /// Validity of a dynamic profile; renewed before it ends, so a station cut off from
    /// Loadstar returns to its fallback by itself, s.
    pub profile_validity_s: u64,
    /// Per line, what the building's own load may draw when Loadstar is gone: the failsafe
    /// keeps this free, A.
    pub building_reserve_a: f64,
    /// Per line, the uncontrolled load assumed when the grid meter is silent or absent, A
    /// (default: `building_reserve_a`).
    pub worst_case_load_a: f64,
    /// The `[[plugin]]` (meter world) that reads the grid connection, if any.
    pub grid_meter: Option<String>,
    /// A grid reading older than this counts as missing, s.
    pub meter_timeout_s: u64,
    /// Draw above the setpoint tolerated before a station counts as non-compliant, A.
    pub noncompliance_tolerance_a: f64,
    /// How often the fallback profiles rotate who keeps the minimum, s.
    pub fallback_rotation_s: u64,
    /// How often the horizon plan is made again even when nothing changed, s.
    pub plan_interval_s: u64,
    /// Shortest time between pausing and resuming one EV (and the other way round), s.
    pub dwell_s: u64,
    /// When more EVs wait than the site can charge at their minimum: how long one charges
    /// before it is paused for a waiting one (at least `dwell_s`), s.
    pub turn_s: u64,
    /// Shortest time between two increases sent to one station (decreases are never held
    /// back), s.
    pub raise_interval_s: u64,
    /// Shortest time between two 3-to-1 (or 1-to-3) phase switches of one EVSE, on stations
    /// that can switch, s.
    pub phase_switch_s: u64,
    /// Whether Loadstar switches EVs between 3 phases and 1 at all (off until its end-to-end
    /// test has landed).
    pub phase_switching: bool,
    /// `[[control.fleet]]`: what known vehicles need, by id tag (for stations and EVs that do
    /// not say it themselves).
    pub fleet: Vec<FleetNeeds>,
}

/// One `[[control.fleet]]` entry: the charging needs of the vehicles that authorize with one of
/// `id_tags`, for plan(). A 2.0.1 NotifyEVChargingNeeds or the operator's word overrides it.
#[derive(Debug, Clone, PartialEq)]
pub struct FleetNeeds {
    pub id_tags: Vec<String>,
    /// Local time of day (site time zone) the vehicle leaves; the next one after plug-in.
    pub departure: chrono::NaiveTime,
    /// Energy it needs per visit, Wh.
    pub energy_wh: f64,
}

impl Default for ControlSettings {
    fn default() -> Self {
        ControlSettings {
            tick_ms: 1000,
            ramp_s: 5,
            hysteresis_a: 1.0,
            profile_validity_s: 300,
            building_reserve_a: 0.0,
            worst_case_load_a: 0.0,
            grid_meter: None,
            meter_timeout_s: 10,
            noncompliance_tolerance_a: 2.0,
            fallback_rotation_s: 900,
            plan_interval_s: 300,
            dwell_s: loadstar_optimizer::allocate::DEFAULT_DWELL_S as u64,
            turn_s: loadstar_optimizer::allocate::DEFAULT_TURN_S as u64,
            raise_interval_s: 10,
            phase_switch_s: 300,
            phase_switching: false,
            fleet: Vec::new(),
        }
    }
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// `[logging]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoggingSettings {
    /// `format`, default text.
    pub format: LogFormat,
    /// A `tracing_subscriber::EnvFilter` directive, default `info` (checked at load).
    pub filter: String,
}

impl Default for LoggingSettings {
    fn default() -> Self {
        LoggingSettings {
            format: LogFormat::Text,
            filter: "info".to_string(),
        }
    }
}

impl SiteConfig {
    /// Reads and validates the site file at `path`. Relative paths inside it (`password_file`,
    /// `id_tags_file`, `store.data_dir`) are resolved against the file's directory; secrets
    /// named by `password_env` come from the process environment. Each `[[plugin]]`'s `wasm`
    /// must be a readable WebAssembly component (its preamble is checked, not its contents).
    pub fn load(path: &Path) -> Result<SiteConfig, ConfigErrors> {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigErrors {
            errors: vec![ConfigError {
                file: Some(name.clone()),
                line: None,
                column: None,
                field: String::new(),
                message: format!("cannot read the site file: {e}"),
            }],
            warnings: Vec::new(),
        })?;
        let base_dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        let env = |name: &str| std::env::var(name).ok();
        match build::build(&text, base_dir, &env, build::Files::Check) {
            Ok(mut config) => {
                for w in &mut config.warnings {
                    if w.file.is_none() {
                        w.file = Some(name.clone());
                    }
                }
                Ok(config)
            }
            Err(errors) => Err(errors.with_file(&name)),
        }
    }

    /// Validates site-file `text`. `base_dir` resolves relative paths; `env` looks up the
    /// variables named by `password_env` (inject a map in tests; `load` uses the process
    /// environment). Diagnostics carry no file name. Plugin components are not opened (`load`
    /// checks them).
    pub fn parse(
        text: &str,
        base_dir: &Path,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<SiteConfig, ConfigErrors> {
        build::build(text, base_dir, env, build::Files::Skip)
    }

    /// The demo's site ([`DEMO_SITE`]), with `store.data_dir` under `base_dir`.
    pub fn demo(base_dir: &Path) -> SiteConfig {
        Self::parse(DEMO_SITE, base_dir, &|_| None)
            .unwrap_or_else(|e| panic!("the embedded demo site file is invalid:\n{e}"))
    }

    /// `[site]`.
    pub fn site(&self) -> &SiteInfo {
        &self.site
    }

    /// The site's IANA time zone.
    pub fn timezone(&self) -> Tz {
        self.site.timezone
    }

    /// `[grid]` and the top of the circuit tree.
    pub fn grid(&self) -> &GridSettings {
        &self.grid
    }

    /// The site's electrical model: every A ↔ W conversion goes through it.
    pub fn model(&self) -> ElectricalModel {
        self.grid.model
    }

    /// The grid connection's limit per line: min(`limit_a`, `limit_kw` converted by the model).
    pub fn grid_limit(&self) -> PerLine {
        self.grid.limit
    }

    /// All circuits, top-down: every circuit comes after its parent (by depth, then file order).
    pub fn circuits(&self) -> &[CircuitConfig] {
        &self.circuits
    }

    /// The circuit `id` (not [`GRID_ID`]).
    pub fn circuit(&self, id: &str) -> Option<&CircuitConfig> {
        self.circuit_index.get(id).map(|&i| &self.circuits[i])
    }

    /// The configured limit of node `id` ([`GRID_ID`] or a circuit): the grid's effective limit,
    /// or the circuit's own `limit_a`.
    pub fn node_limit(&self, id: &str) -> Option<PerLine> {
        if id == GRID_ID {
            Some(self.grid.limit)
        } else {
            self.circuit(id).map(|c| c.limit_a)
        }
    }

    /// Circuit ids directly under node `id` ([`GRID_ID`] or a circuit).
    pub fn children(&self, id: &str) -> Option<&[String]> {
        if id == GRID_ID {
            Some(&self.grid.circuits)
        } else {
            self.circuit(id).map(|c| c.children.as_slice())
        }
    }

    /// Station ids directly on node `id` ([`GRID_ID`] or a circuit).
    pub fn stations_on(&self, id: &str) -> Option<&[String]> {
        if id == GRID_ID {
            Some(&self.grid.stations)
        } else {
            self.circuit(id).map(|c| c.stations.as_slice())
        }
    }

    /// All stations, in file order.
    pub fn stations(&self) -> &[StationConfig] {
        &self.stations
    }

    /// The station with OCPP identity `id` (exact match).
    pub fn station(&self, id: &str) -> Option<&StationConfig> {
        self.station_index.get(id).map(|&i| &self.stations[i])
    }

    /// `[csms]`.
    pub fn csms(&self) -> &CsmsSettings {
        &self.csms
    }

    /// `[authorization]`.
    pub fn authorization(&self) -> &AuthorizationSettings {
        &self.authorization
    }

    /// `[store]`.
    pub fn store(&self) -> &StoreSettings {
        &self.store
    }

    /// `[api]`.
    pub fn api(&self) -> &ApiSettings {
        &self.api
    }

    /// The `[[plugin]]` entries, in file order.
    pub fn plugins(&self) -> &[SitePlugin] {
        &self.plugins
    }

    /// `[logging]`.
    pub fn logging(&self) -> &LoggingSettings {
        &self.logging
    }

    /// `[control]`.
    pub fn control(&self) -> &ControlSettings {
        &self.control
    }

    /// What is valid but probably not meant (a child circuit above its parent, `require_auth =
    /// false`, …), in file order.
    pub fn warnings(&self) -> &[ConfigWarning] {
        &self.warnings
    }

    /// A human-readable overview: grid, circuit tree with limits, stations with wiring.
    pub fn summary(&self) -> String {
        let mut out = String::new();
        let tz = self.site.timezone.name();
        let _ = writeln!(out, "site \"{}\" ({tz})", self.site.name);
        let m = self.grid.model;
        let _ = write!(
            out,
            "grid: {} {} V, limit {} per line",
            m.grid(),
            fmt_num(m.phase_voltage_v()),
            fmt_limit(self.grid.limit, m.grid())
        );
        if let Some(kw) = self.grid.limit_kw {
            let _ = write!(
                out,
                " (limit_a {}, limit_kw {} kW)",
                fmt_limit(self.grid.limit_a, m.grid()),
                fmt_num(kw)
            );
        }
        out.push('\n');
        self.summary_node(GRID_ID, "", &mut out);
        for p in &self.plugins {
            summary_plugin(p, &mut out);
        }
        let _ = write!(
            out,
            "{} circuit{}, {} station{}, {} EVSE{}, {} plugin{}; OCPP on {}, API on {}",
            self.circuits.len(),
            plural(self.circuits.len()),
            self.stations.len(),
            plural(self.stations.len()),
            self.stations
                .iter()
                .map(|s| s.evses as usize)
                .sum::<usize>(),
            plural(self.stations.iter().map(|s| s.evses as usize).sum()),
            self.plugins.len(),
            plural(self.plugins.len()),
            self.csms.listen,
            self.api.listen
        );
        out
    }

    fn summary_node(&self, id: &str, indent: &str, out: &mut String) {
        let grid = self.grid.model.grid();
        let circuits = self.children(id).unwrap_or_default();
        let stations = self.stations_on(id).unwrap_or_default();
        let total = circuits.len() + stations.len();
        let mut n = 0;
        for sid in stations {
            n += 1;
            let (branch, _) = branch(n == total, indent);
            if let Some(s) = self.station(sid) {
                let _ = writeln!(
                    out,
                    "{indent}{branch}station {}: {}, {}–{} A, {} EVSE{}{}",
                    s.id,
                    fmt_wiring(&s.wiring),
                    fmt_num(s.min_current_a),
                    fmt_num(s.max_current_a),
                    s.evses,
                    plural(s.evses as usize),
                    s.ocpp.map(|v| format!(", {v}")).unwrap_or_default()
                );
            }
        }
        for cid in circuits {
            n += 1;
            let (branch, next) = branch(n == total, indent);
            if let Some(c) = self.circuit(cid) {
                let _ = write!(
                    out,
                    "{indent}{branch}circuit {}: {}",
                    c.id,
                    fmt_limit(c.limit_a, grid)
                );
                if c.effective_limit != c.limit_a {
                    let _ = write!(out, " (effective {})", fmt_limit(c.effective_limit, grid));
                }
                out.push('\n');
                self.summary_node(cid, &next, out);
            }
        }
    }
}

fn branch(last: bool, indent: &str) -> (&'static str, String) {
    if last {
        ("└─ ", format!("{indent}   "))
    } else {
        ("├─ ", format!("{indent}│  "))
    }
}

/// One plugin's lines of the summary: world, name, component, grants and limits.
fn summary_plugin(p: &SitePlugin, out: &mut String) {
    let (spec, g, l) = (&p.spec, &p.spec.grants, &p.spec.limits);
    let _ = writeln!(
        out,
        "plugin {} ({}): {}",
        spec.name,
        spec.world,
        p.wasm.display()
    );
    let list = |v: &[String]| {
        if v.is_empty() {
            "none".to_string()
        } else {
            v.join(", ")
        }
    };
    let kv = if g.kv_max_bytes == 0 {
        "none".to_string()
    } else {
        format!("{} bytes in {} keys", g.kv_max_bytes, g.kv_max_keys)
    };
    let _ = writeln!(
        out,
        "  grants: http {}; modbus {}; kv {kv}",
        list(&g.http),
        list(&g.modbus)
    );
    let _ = writeln!(
        out,
        "  limits: deadline {} ms, memory {} MiB, failed after {} errors, restart backoff {}–{} ms, \
         HTTP responses up to {} bytes",
        l.deadline_ms,
        l.memory_bytes >> 20,
        l.max_consecutive_errors,
        l.restart_backoff_min_ms,
        l.restart_backoff_max_ms,
        l.http_max_response_bytes
    );
    if spec.world == crate::plugins::World::Policy {
        let safe = if p.safe_limits.is_empty() {
            "its lowest last limit per node".to_string()
        } else {
            p.safe_limits
                .iter()
                .map(|(node, a)| format!("{node} {} A", fmt_num(*a)))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let _ = writeln!(
            out,
            "  evaluated every {} s; when failing: {safe}",
            p.every.as_secs()
        );
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

/// A number without trailing zeros, at most 2 decimals: 63, 57.97, 0.5.
pub(crate) fn fmt_num(v: f64) -> String {
    if !v.is_finite() {
        return v.to_string();
    }
    let s = format!("{v:.2}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s == "-0" { "0".into() } else { s.into() }
}

/// `40 A` when all lines of the grid are equal, else `L1 40 / L2 40 / L3 32 A`.
fn fmt_limit(limit: PerLine, grid: GridType) -> String {
    let lines = grid.lines();
    let first = limit[lines[0]];
    if lines.iter().all(|&l| limit[l] == first) {
        format!("{} A", fmt_num(first))
    } else {
        let parts: Vec<String> = lines
            .iter()
            .map(|&l| format!("{l} {}", fmt_num(limit[l])))
            .collect();
        format!("{} A", parts.join(" / "))
    }
}

fn fmt_wiring(w: &StationWiring) -> String {
    match w {
        StationWiring::ThreePhase(r) => format!("3-phase {},{},{}", r[0], r[1], r[2]),
        StationWiring::TwoPhase(l) => format!("2-phase {},{}", l[0], l[1]),
        StationWiring::SinglePhase(PhaseConnection::LineToNeutral(l)) => {
            format!("1-phase {l}-N")
        }
        StationWiring::SinglePhase(PhaseConnection::LineToLine(a, b)) => {
            format!("1-phase {a}-{b}")
        }
    }
}

impl crate::csms::StationDirectory for SiteConfig {
    /// A listed station is admitted with the right password (or without one when it has no
    /// credentials, which only `require_auth = false` allows); an unlisted one only when
    /// `allow_unknown_stations` is set.
    fn admit(&self, station_id: &str, password: Option<&str>) -> crate::csms::Admission {
        use crate::csms::Admission;
        match self.station(station_id) {
            Some(station) => match (&station.credentials, password) {
                (None, _) => Admission::Known,
                (Some(c), Some(p)) if c.verify(p) => Admission::Known,
                (Some(_), _) => Admission::Unauthorized,
            },
            None if self.csms.allow_unknown_stations => Admission::Unknown,
            None => Admission::NotFound,
        }
    }
}

/// The outcome of [`check`]: what `loadstar check <site.toml>` prints.
#[derive(Debug)]
pub struct CheckReport {
    /// The file checked.
    pub path: PathBuf,
    /// The validated site, or every mistake.
    pub result: Result<SiteConfig, ConfigErrors>,
}

impl CheckReport {
    /// Whether the file is valid (warnings allowed). `loadstar check` exits non-zero otherwise.
    pub fn is_ok(&self) -> bool {
        self.result.is_ok()
    }
}

impl fmt::Display for CheckReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.result {
            Ok(config) => {
                writeln!(f, "{}", config.summary())?;
                for w in config.warnings() {
                    writeln!(f, "warning: {w}")?;
                }
                write!(f, "{}: OK", self.path.display())?;
                let n = config.warnings().len();
                if n > 0 {
                    write!(f, " ({n} warning{})", plural(n))?;
                }
                Ok(())
            }
            Err(errors) => write!(f, "{errors}"),
        }
    }
}

/// Loads and validates the site file at `path` (see [`SiteConfig::load`]) for
/// `loadstar check`: print the report, exit with failure unless [`CheckReport::is_ok`].
pub fn check(path: &Path) -> CheckReport {
    CheckReport {
        path: path.to_path_buf(),
        result: SiteConfig::load(path),
    }
}

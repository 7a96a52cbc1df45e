//! Reading and validating a site file into a [`SiteConfig`].

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};

use chrono_tz::Tz;
use loadstar_ocpp::OcppVersion;
use loadstar_optimizer::model::{ElectricalModel, GridType, Line, PerLine, StationWiring};
use toml::de::{DeTable, DeValue};

use super::diag::{ConfigError, ConfigErrors, Diag, LineIndex, suggest};
use super::read::{Located, Table, as_num, sub_table, table_array};
use super::{
    ApiSettings, AuthorizationMode, AuthorizationSettings, CircuitConfig, ControlSettings,
    CredentialSource, CsmsSettings, FleetNeeds, GRID_ID, GridSettings, LogFormat, LoggingSettings,
    MAX_STATION_CURRENT_A, MAX_STATION_ID_CHARS, PASSWORD_CHARS, SiteConfig, SiteInfo,
    StationConfig, StationCredentials, StoreSettings, fmt_num,
};

const ROOT_KEYS: &[&str] = &[
    "site",
    "grid",
    "circuit",
    "station",
    "csms",
    "authorization",
    "store",
    "api",
    "logging",
    "control",
    "plugin",
];
const SITE_KEYS: &[&str] = &["name", "timezone"];
const GRID_KEYS: &[&str] = &["type", "voltage", "limit_a", "limit_kw"];
const CIRCUIT_KEYS: &[&str] = &["id", "parent", "limit_a"];
const STATION_KEYS: &[&str] = &[
    "id",
    "circuit",
    "phases",
    "max_current_a",
    "min_current_a",
    "wiring",
    "evses",
    "ocpp",
    "password",
    "password_file",
    "password_env",
    "security_profile",
];
const PASSWORD_KEYS: [&str; 3] = ["password", "password_file", "password_env"];
const CSMS_KEYS: &[&str] = &[
    "listen",
    "heartbeat_interval_s",
    "ping_interval_s",
    "max_frame_bytes",
    "call_timeout_s",
    "meter_interval_s",
    "allow_unknown_stations",
    "unknown_station_current_a",
    "require_auth",
];
const AUTHORIZATION_KEYS: &[&str] = &["mode", "id_tags", "id_tags_file"];
const STORE_KEYS: &[&str] = &["data_dir", "raw_retention_days", "downsample_minutes"];
const API_KEYS: &[&str] = &["listen"];
const LOGGING_KEYS: &[&str] = &["format", "filter"];
const CONTROL_KEYS: &[&str] = &[
    "tick_ms",
    "ramp_s",
    "hysteresis_a",
    "profile_validity_s",
    "building_reserve_a",
    "worst_case_load_a",
    "grid_meter",
    "meter_timeout_s",
    "noncompliance_tolerance_a",
    "fallback_rotation_s",
    "plan_interval_s",
    "dwell_s",
    "turn_s",
    "raise_interval_s",
    "phase_switch_s",
    "phase_switching",
    "fleet",
];
const FLEET_KEYS: &[&str] = &["id_tags", "departure", "energy_kwh"];

/// Longest id tag accepted (OCPP 2.0.1 IdToken); 1.6 stations send at most 20.
const MAX_ID_TAG_CHARS: usize = 36;
const MAX_ID_TAG_CHARS_V16: usize = 20;
/// IEC 61851 minimum AC charging current.
const IEC_MIN_CURRENT_A: f64 = 6.0;

struct RawCircuit {
    /// A usable id (present, valid); `None` if missing or invalid (already reported).
    id: Option<Located<String>>,
    parent: Option<Located<String>>,
    limit: Option<Located<PerLine>>,
    path: String,
    header: Range<usize>,
}

struct RawStation {
    id: Option<Located<String>>,
    circuit: Option<Located<String>>,
    path: String,
    header: Range<usize>,
    phases: Option<u8>,
    max_current_a: Option<f64>,
    min_current_a: Option<f64>,
    wiring: Option<(StationWiring, Option<Range<usize>>)>,
    evses: Option<u32>,
    ocpp: Option<OcppVersion>,
    security_profile: Option<u8>,
    credentials: Option<(StationCredentials, CredentialSource)>,
}

/// Whether to open the files plugin entries name (`SiteConfig::load` does, `parse` does not).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Files {
    Check,
    Skip,
}

pub(crate) fn build(
    text: &str,
    base_dir: &Path,
    env: &dyn Fn(&str) -> Option<String>,
    files: Files,
) -> Result<SiteConfig, ConfigErrors> {
    let (doc, parse_errors) = DeTable::parse_recoverable(text);
    if !parse_errors.is_empty() {
        return Err(syntax_errors(text, &parse_errors));
    }
    let mut d = Diag::new(text);
    let root = Table::new(doc.get_ref(), None, String::new());
    root.check_keys(ROOT_KEYS, &mut d);

    let site = read_site(&root, &mut d);
    let GridRead {
        grid_type,
        model,
        settings: grid,
    } = read_grid(&root, &mut d);
    let csms = read_csms(&root, &mut d);
    let circuits: Vec<RawCircuit> = table_array(&root, "circuit", &mut d)
        .into_iter()
        .enumerate()
        .map(|(i, (t, span))| read_circuit(i, t, span, grid_type, &mut d))
        .collect();
    let require_auth = csms.as_ref().is_none_or(|c| c.require_auth);
    let stations: Vec<RawStation> = table_array(&root, "station", &mut d)
        .into_iter()
        .enumerate()
        .map(|(i, (t, span))| read_station(i, t, span, model, require_auth, base_dir, env, &mut d))
        .collect();
    let authorization = read_authorization(&root, base_dir, &mut d);
    let store = read_store(&root, base_dir, &mut d);
    let api = read_api(&root, &mut d);
    let logging = read_logging(&root, &mut d);
    let control = read_control(&root, &mut d);
    let node_ids: Vec<&str> = std::iter::once(GRID_ID)
        .chain(
            circuits
                .iter()
                .filter_map(|c| c.id.as_ref().map(|id| id.value.as_str())),
        )
        .collect();
    let plugins = super::plugins::read_plugins(&root, base_dir, files, &node_ids, &mut d);
    if let (Some(name), Some(plugins)) = (
        control.as_ref().and_then(|c| c.grid_meter.as_deref()),
        plugins.as_ref(),
    ) && !plugins
        .iter()
        .any(|p| p.spec.name == name && p.spec.world == crate::plugins::World::Meter)
    {
        let span = root
            .get("control")
            .and_then(|_| sub_table(&root, "control", &mut d))
            .and_then(|t| t.key_span("grid_meter"));
        d.error(
            span,
            "control.grid_meter",
            format!(
                "no [[plugin]] of world \"meter\" is named \"{}\"",
                name.escape_debug()
            ),
        );
    }

    if let (Some(csms), Some(api)) = (&csms, &api) {
        check_listeners(&root, csms, api, &mut d);
    }

    let tree = build_tree(&circuits, &stations, grid.as_ref(), &mut d);

    let config = if d.has_errors() {
        None
    } else {
        assemble(
            site,
            grid,
            csms,
            authorization,
            store,
            api,
            logging,
            circuits,
            stations,
            tree,
            &mut d,
        )
    };
    if config.is_none() && !d.has_errors() {
        d.error(None, "", "internal error: the site file was not fully read");
    }
    let (errors, warnings) = d.finish();
    match config {
        Some(mut config) if errors.is_empty() => {
            config.warnings = warnings;
            config.plugins = plugins.unwrap_or_default();
            if let Some(control) = control {
                config.control = control;
            }
            Ok(config)
        }
        _ => Err(ConfigErrors { errors, warnings }),
    }
}

/// TOML syntax errors: one per line (the parser's recovery tends to cascade within a line).
fn syntax_errors(text: &str, errors: &[toml::de::Error]) -> ConfigErrors {
    let index = LineIndex::new(text);
    let mut out: Vec<ConfigError> = Vec::new();
    let mut sorted: Vec<&toml::de::Error> = errors.iter().collect();
    sorted.sort_by_key(|e| e.span().map_or(usize::MAX, |s| s.start));
    for e in sorted {
        let (line, column) = match e.span() {
            Some(s) => {
                let (l, c) = index.locate(s.start);
                (Some(l), Some(c))
            }
            None => (None, None),
        };
        if line.is_some() && out.iter().any(|o| o.line == line) {
            continue;
        }
        out.push(ConfigError {
            file: None,
            line,
            column,
            field: String::new(),
            message: format!("TOML syntax: {}", e.message().trim_end()),
        });
    }
    ConfigErrors {
        errors: out,
        warnings: Vec::new(),
    }
}

// ---------------------------------------------------------------------------------------------
// Sections
// ---------------------------------------------------------------------------------------------

fn read_site(root: &Table<'_, '_>, d: &mut Diag<'_>) -> Option<SiteInfo> {
    let Some(t) = sub_table(root, "site", d) else {
        if !root.has("site") {
            d.error(
                None,
                "site",
                "missing `[site]` table (it needs at least `timezone`)",
            );
        }
        return None;
    };
    t.check_keys(SITE_KEYS, d);
    let name = match t.str("name", d) {
        Some(n) if n.value.trim().is_empty() => {
            d.error(Some(n.span), t.field("name"), "must not be empty");
            None
        }
        Some(n) => Some(n.value),
        None => (!t.has("name")).then(|| "Loadstar site".to_string()),
    };
    let tz = t
        .req_str("timezone", "an IANA time zone such as \"Europe/Berlin\"", d)
        .and_then(|tz| parse_timezone(&tz, &t.field("timezone"), d));
    Some(SiteInfo {
        name: name?,
        timezone: tz?,
    })
}

fn parse_timezone(tz: &Located<String>, field: &str, d: &mut Diag<'_>) -> Option<Tz> {
    match tz.value.parse::<Tz>() {
        Ok(z) => Some(z),
        Err(_) => {
            let close = chrono_tz::TZ_VARIANTS
                .iter()
                .find(|z| z.name().eq_ignore_ascii_case(&tz.value))
                .map(|z| z.name());
            let hint = match close {
                Some(c) => format!("; did you mean \"{c}\"?"),
                None => " (use an IANA name such as \"Europe/Berlin\" or \"UTC\")".to_string(),
            };
            d.error(
                Some(tz.span.clone()),
                field,
                format!("unknown time zone \"{}\"{hint}", tz.value.escape_debug()),
            );
            None
        }
    }
}

/// What `[grid]` yields: the grid type and model on their own (so circuits and stations are still
/// checked when the grid's limits are wrong), and the full settings when everything is right.
struct GridRead {
    grid_type: Option<GridType>,
    model: Option<ElectricalModel>,
    settings: Option<GridSettings>,
}

fn read_grid(root: &Table<'_, '_>, d: &mut Diag<'_>) -> GridRead {
    let mut out = GridRead {
        grid_type: None,
        model: None,
        settings: None,
    };
    let Some(t) = sub_table(root, "grid", d) else {
        if !root.has("grid") {
            d.error(
                None,
                "grid",
                "missing `[grid]` table (it needs `type`, `voltage` and `limit_a`)",
            );
        }
        return out;
    };
    t.check_keys(GRID_KEYS, d);
    out.grid_type = t
        .req_str("type", "wye, delta or split_phase", d)
        .and_then(|v| {
            let parsed = match v.value.as_str() {
                "wye" => Some(GridType::Wye),
                "delta" => Some(GridType::Delta),
                "split_phase" => Some(GridType::SplitPhase),
                _ => None,
            };
            if parsed.is_none() {
                let hint = suggest(&v.value.replace('-', "_"), &["wye", "delta", "split_phase"])
                    .map(|s| format!("; did you mean \"{s}\"?"))
                    .unwrap_or_default();
                d.error(
                    Some(v.span),
                    t.field("type"),
                    format!(
                        "unknown grid type \"{}\": use \"wye\", \"delta\" or \"split_phase\"{hint}",
                        v.value.escape_debug()
                    ),
                );
            }
            parsed
        });
    let voltage = t.req_num(
        "voltage",
        "nominal phase voltage in V: line-to-neutral on wye and split_phase, line-to-line on delta",
        d,
    );
    if let Some(v) = &voltage {
        // The model decides what a valid voltage is; without a grid type, ask it with any type.
        match ElectricalModel::new(out.grid_type.unwrap_or(GridType::Wye), v.value) {
            Ok(m) if out.grid_type.is_some() => {
                voltage_warnings(m, v, &t.field("voltage"), d);
                out.model = Some(m);
            }
            Ok(_) => {}
            Err(e) => d.error(Some(v.span.clone()), t.field("voltage"), e.to_string()),
        }
    }
    let limit_a = if t.has("limit_a") {
        read_limit(&t, "limit_a", out.grid_type, d)
    } else {
        t.missing(
            "limit_a",
            "the grid connection's current limit per line, A",
            d,
        );
        None
    };
    let limit_kw = match t.num("limit_kw", d) {
        Some(kw) if !(kw.value.is_finite() && kw.value > 0.0) => {
            d.error(
                Some(kw.span),
                t.field("limit_kw"),
                format!(
                    "must be a finite number of kW greater than 0, got {}",
                    kw.value
                ),
            );
            None
        }
        Some(kw) => Some(Some(kw.value)),
        None if t.has("limit_kw") => None,
        None => Some(None),
    };
    if let (Some(model), Some(limit_a), Some(limit_kw)) = (out.model, limit_a, limit_kw) {
        let limit_a = limit_a.value;
        let limit = match limit_kw {
            Some(kw) => limit_a.min(model.connection_limit_from_kw(kw)),
            None => limit_a,
        };
        out.settings = Some(GridSettings {
            model,
            limit_a,
            limit_kw,
            limit,
            circuits: Vec::new(),
            stations: Vec::new(),
        });
    }
    out
}

/// Voltages that are valid but suspicious for the grid type: the classic 230-vs-400 V mix-up.
fn voltage_warnings(m: ElectricalModel, v: &Located<f64>, field: &str, d: &mut Diag<'_>) {
    let volts = v.value;
    let message = match m.grid() {
        GridType::Wye if volts >= 380.0 => Some(format!(
            "{} V on a wye grid is the line-to-neutral voltage; a 230/400 V grid is `voltage = 230` \
             (400 V is line-to-line)",
            fmt_num(volts)
        )),
        GridType::SplitPhase if volts >= 200.0 => Some(format!(
            "{} V on a split_phase grid is the line-to-neutral voltage; a 120/240 V grid is \
             `voltage = 120`",
            fmt_num(volts)
        )),
        _ if !(90.0..=1000.0).contains(&volts) => Some(format!(
            "{} V is unusual for a charging site's nominal voltage",
            fmt_num(volts)
        )),
        _ => None,
    };
    if let Some(message) = message {
        d.warn(Some(v.span.clone()), field, message);
    }
}

/// A per-line current limit: one number (> 0, same on every line of the grid) or an array with
/// one value per grid line (≥ 0, at least one > 0).
fn read_limit(
    t: &Table<'_, '_>,
    key: &str,
    grid: Option<GridType>,
    d: &mut Diag<'_>,
) -> Option<Located<PerLine>> {
    let v = t.get(key)?;
    let field = t.field(key);
    match v.get_ref() {
        DeValue::Array(items) => {
            let mut ok = true;
            if let Some(g) = grid
                && items.len() != g.lines().len()
            {
                let names: Vec<String> = g.lines().iter().map(Line::to_string).collect();
                d.error(
                    Some(v.span()),
                    field.clone(),
                    format!(
                        "a {g} grid has {} lines ({}): give one number, or one value per line, \
                         got {} values",
                        names.len(),
                        names.join(", "),
                        items.len()
                    ),
                );
                ok = false;
            }
            if items.len() > 3 || items.is_empty() {
                if ok {
                    d.error(
                        Some(v.span()),
                        field.clone(),
                        format!("give one value per line (at most 3), got {}", items.len()),
                    );
                }
                return None;
            }
            let mut limit = PerLine::ZERO;
            for (i, item) in items.iter().enumerate() {
                let item_field = format!("{field}[{i}]");
                match as_num(item, &item_field, d) {
                    Some(n) if !(n.value.is_finite() && n.value >= 0.0) => {
                        d.error(
                            Some(n.span),
                            item_field,
                            format!(
                                "must be a finite number of amps, 0 or more, got {}",
                                n.value
                            ),
                        );
                        ok = false;
                    }
                    Some(n) => limit.0[i] = n.value,
                    None => ok = false,
                }
            }
            if ok && limit.0.iter().all(|&a| a == 0.0) {
                d.error(
                    Some(v.span()),
                    field,
                    "every line is 0 A: at least one line needs a limit above 0",
                );
                ok = false;
            }
            ok.then_some(Located {
                value: limit,
                span: v.span(),
            })
        }
        _ => {
            let n = as_num(v, &field, d)?;
            if !(n.value.is_finite() && n.value > 0.0) {
                d.error(
                    Some(n.span),
                    field,
                    format!(
                        "must be a finite number of amps greater than 0, got {}",
                        n.value
                    ),
                );
                return None;
            }
            Some(Located {
                value: PerLine::splat_on(grid.unwrap_or(GridType::Wye), n.value),
                span: n.span,
            })
        }
    }
}

/// `station "CP-01"` when the entry has a usable id, else `station[3]`.
fn entry_path(kind: &str, index: usize, id: Option<&Located<String>>) -> String {
    match id {
        Some(id) => format!("{kind} \"{}\"", id.value),
        None => format!("{kind}[{index}]"),
    }
}

fn read_circuit(
    index: usize,
    table: &DeTable<'_>,
    header: Range<usize>,
    grid: Option<GridType>,
    d: &mut Diag<'_>,
) -> RawCircuit {
    let mut t = Table::new(table, Some(header.clone()), format!("circuit[{index}]"));
    let id = t
        .req_str("id", "a unique name for this circuit", d)
        .filter(|id| {
            let problem = if id.value.is_empty() {
                Some("must not be empty".to_string())
            } else if id.value.eq_ignore_ascii_case(GRID_ID) {
                Some(format!(
                    "\"{}\" is reserved for the grid connection (the root of the tree); pick \
                     another id",
                    id.value
                ))
            } else if id.value.chars().any(char::is_control) {
                Some("must not contain control characters".to_string())
            } else {
                None
            };
            if let Some(p) = &problem {
                d.error(Some(id.span.clone()), t.field("id"), p.clone());
            }
            problem.is_none()
        });
    t.path = entry_path("circuit", index, id.as_ref());
    t.check_keys(CIRCUIT_KEYS, d);
    let parent = if t.has("parent") {
        t.str("parent", d)
    } else {
        Some(Located {
            value: GRID_ID.to_string(),
            span: header.clone(),
        })
    };
    let limit = if t.has("limit_a") {
        read_limit(&t, "limit_a", grid, d)
    } else {
        t.missing("limit_a", "this circuit's current limit per line, A", d);
        None
    };
    RawCircuit {
        id,
        parent,
        limit,
        path: t.path,
        header,
    }
}

#[allow(clippy::too_many_arguments)]
fn read_station(
    index: usize,
    table: &DeTable<'_>,
    header: Range<usize>,
    model: Option<ElectricalModel>,
    require_auth: bool,
    base_dir: &Path,
    env: &dyn Fn(&str) -> Option<String>,
    d: &mut Diag<'_>,
) -> RawStation {
    let mut t = Table::new(table, Some(header.clone()), format!("station[{index}]"));
    let id =
        t.req_str("id", "the station's OCPP identity", d)
            .filter(|id| match station_id_problem(&id.value) {
                Some(p) => {
                    d.error(Some(id.span.clone()), t.field("id"), p);
                    false
                }
                None => true,
            });
    t.path = entry_path("station", index, id.as_ref());
    t.check_keys(STATION_KEYS, d);

    let circuit = if t.has("circuit") {
        t.str("circuit", d)
    } else {
        Some(Located {
            value: GRID_ID.to_string(),
            span: header.clone(),
        })
    };
    let phases = t
        .req_int("phases", "1 or 3 (2 on split_phase grids)", d)
        .and_then(|p| {
            if (1..=3).contains(&p.value) {
                Some(Located {
                    value: p.value as u8,
                    span: p.span,
                })
            } else {
                d.error(
                    Some(p.span),
                    t.field("phases"),
                    format!("a station has 1, 2 or 3 phases, got {}", p.value),
                );
                None
            }
        });
    let max_current_a = t
        .req_num("max_current_a", "hardware maximum per phase, A", d)
        .and_then(|m| {
            if m.value.is_finite() && m.value > 0.0 && m.value <= MAX_STATION_CURRENT_A {
                Some(m)
            } else {
                d.error(
                    Some(m.span),
                    t.field("max_current_a"),
                    format!(
                        "must be greater than 0 and at most {} A per phase, got {}",
                        fmt_num(MAX_STATION_CURRENT_A),
                        m.value
                    ),
                );
                None
            }
        });
    if let Some(m) = &max_current_a
        && m.value < IEC_MIN_CURRENT_A
    {
        d.warn(
            Some(m.span.clone()),
            t.field("max_current_a"),
            format!(
                "{} A is below the IEC 61851 minimum of 6 A: most EVs will not charge",
                fmt_num(m.value)
            ),
        );
    }
    let min_current_a = match t.num("min_current_a", d) {
        Some(m) if !(m.value.is_finite() && m.value >= 0.0) => {
            d.error(
                Some(m.span),
                t.field("min_current_a"),
                format!(
                    "must be a finite number of amps, 0 or more, got {}",
                    m.value
                ),
            );
            None
        }
        Some(m) => match &max_current_a {
            Some(max) if m.value > max.value => {
                d.error(
                    Some(m.span),
                    t.field("min_current_a"),
                    format!(
                        "{} A is above max_current_a ({} A)",
                        fmt_num(m.value),
                        fmt_num(max.value)
                    ),
                );
                None
            }
            _ => Some(m.value),
        },
        None if t.has("min_current_a") => None,
        None => max_current_a
            .as_ref()
            .map(|m| IEC_MIN_CURRENT_A.min(m.value)),
    };
    let wiring = match (&phases, model) {
        (Some(p), Some(m)) => read_wiring(&t, p, m, d),
        _ => None,
    };
    let evses = if t.has("evses") {
        t.int_in("evses", 1, 64, d).map(|e| e.value as u32)
    } else {
        Some(1)
    };
    let ocpp = t.str("ocpp", d).and_then(|v| {
        let parsed = match v.value.as_str() {
            "1.6" | "ocpp1.6" => Some(OcppVersion::V16),
            "2.0.1" | "ocpp2.0.1" => Some(OcppVersion::V201),
            _ => None,
        };
        if parsed.is_none() {
            d.error(
                Some(v.span),
                t.field("ocpp"),
                format!(
                    "unknown OCPP version \"{}\": use \"1.6\" or \"2.0.1\"",
                    v.value.escape_debug()
                ),
            );
        }
        parsed
    });
    let security_profile = match t.int("security_profile", d) {
        Some(p) => match p.value {
            1 | 2 => Some(p.value as u8),
            0 => {
                d.error(
                    Some(p.span),
                    t.field("security_profile"),
                    "profile 0 (no authentication) is not a station setting: use \
                     `csms.require_auth = false` for a lab, or profile 1 or 2",
                );
                None
            }
            3 => {
                d.error(
                    Some(p.span),
                    t.field("security_profile"),
                    "profile 3 (mutual TLS) is not supported: use 1 (Basic auth) or 2 (TLS + \
                     Basic auth)",
                );
                None
            }
            other => {
                d.error(
                    Some(p.span),
                    t.field("security_profile"),
                    format!("OCPP security profiles are 1, 2 and 3, got {other}"),
                );
                None
            }
        },
        None if t.has("security_profile") => None,
        None => Some(1),
    };
    let credentials = read_password(&t, require_auth, base_dir, env, d);

    RawStation {
        id,
        circuit,
        path: t.path,
        header,
        phases: phases.map(|p| p.value),
        max_current_a: max_current_a.map(|m| m.value),
        min_current_a,
        wiring,
        evses,
        ocpp,
        security_profile,
        credentials: credentials.flatten(),
    }
}

/// Why `id` cannot be a station identity, if it cannot.
fn station_id_problem(id: &str) -> Option<String> {
    let chars = id.chars().count();
    if id.is_empty() {
        Some("must not be empty".into())
    } else if chars > MAX_STATION_ID_CHARS {
        Some(format!(
            "is {chars} characters long; OCPP allows at most {MAX_STATION_ID_CHARS}"
        ))
    } else if id.contains('/') {
        Some("must not contain '/' (the id is one URL path segment)".into())
    } else if id.chars().any(char::is_control) {
        Some("must not contain control characters".into())
    } else {
        None
    }
}

/// The station's wiring: `wiring` if given, else the default for its phase count on this grid,
/// checked against the grid by the model.
fn read_wiring(
    t: &Table<'_, '_>,
    phases: &Located<u8>,
    model: ElectricalModel,
    d: &mut Diag<'_>,
) -> Option<(StationWiring, Option<Range<usize>>)> {
    let field = t.field("wiring");
    let grid = model.grid();
    let (wiring, span) = if t.has("wiring") {
        let list = t.str_array("wiring", d)?;
        let mut neutral = Vec::new();
        let mut line_to_line = Vec::new();
        let mut ok = true;
        for (i, entry) in list.value.iter().enumerate() {
            match parse_connection(&entry.value) {
                Some((a, None)) => neutral.push(a),
                Some((a, Some(b))) => line_to_line.push((a, b, entry.span.clone())),
                None => {
                    d.error(
                        Some(entry.span.clone()),
                        format!("{field}[{i}]"),
                        format!(
                            "\"{}\" is not a connection: use \"L1\", \"L2\", \"L3\" (line to \
                             neutral) or \"L1-L2\" (line to line)",
                            entry.value.escape_debug()
                        ),
                    );
                    ok = false;
                }
            }
        }
        if !ok {
            return None;
        }
        let n = list.value.len();
        let wiring = if let Some((a, b, span)) = line_to_line.first() {
            if n != 1 {
                d.error(
                    Some(span.clone()),
                    field,
                    format!(
                        "a line-to-line connection (\"{a}-{b}\") is the whole wiring of a \
                         single-phase station: `wiring = [\"{a}-{b}\"]` with `phases = 1`"
                    ),
                );
                return None;
            }
            if phases.value != 1 {
                d.error(
                    Some(list.span.clone()),
                    field,
                    format!(
                        "\"{a}-{b}\" is one single-phase connection, but phases = {}",
                        phases.value
                    ),
                );
                return None;
            }
            StationWiring::single_phase_line_to_line(*a, *b)
        } else {
            if n != usize::from(phases.value) {
                d.error(
                    Some(list.span.clone()),
                    field,
                    format!(
                        "lists {n} line{} but phases = {}: give one grid line per station phase, \
                         in station phase order",
                        if n == 1 { "" } else { "s" },
                        phases.value
                    ),
                );
                return None;
            }
            match StationWiring::line_to_neutral(&neutral) {
                Ok(w) => w,
                Err(e) => {
                    d.error(Some(list.span.clone()), field, e.to_string());
                    return None;
                }
            }
        };
        (wiring, Some(list.span))
    } else {
        let wiring = match (grid, phases.value) {
            (GridType::Delta, 1) => StationWiring::single_phase_line_to_line(Line::L1, Line::L2),
            (_, 1) => StationWiring::single_phase(Line::L1),
            (_, 2) => StationWiring::two_phase(Line::L1, Line::L2),
            _ => StationWiring::three_phase(Line::ALL),
        };
        (wiring, None)
    };
    if let Err(e) = model.validate_wiring(&wiring) {
        let (at, hint) = match &span {
            Some(s) => (s.clone(), String::new()),
            None => (
                phases.span.clone(),
                format!(
                    " (the default wiring for phases = {} does not fit; set `wiring`)",
                    phases.value
                ),
            ),
        };
        d.error(Some(at), field, format!("{e}{hint}"));
        return None;
    }
    Some((wiring, span))
}

/// `L1` / `L1-N` → (L1, None); `L1-L2` → (L1, Some(L2)). Case-insensitive.
fn parse_connection(s: &str) -> Option<(Line, Option<Line>)> {
    let line = |p: &str| match p.trim().to_ascii_uppercase().as_str() {
        "L1" => Some(Line::L1),
        "L2" => Some(Line::L2),
        "L3" => Some(Line::L3),
        _ => None,
    };
    match s.split_once('-') {
        None => Some((line(s)?, None)),
        Some((a, b)) if b.trim().eq_ignore_ascii_case("n") => Some((line(a)?, None)),
        Some((a, b)) => Some((line(a)?, Some(line(b)?))),
    }
}

/// The station's password, resolved and hashed. `Some(None)` means "no password, and that is
/// fine"; `None` means an error was reported.
fn read_password(
    t: &Table<'_, '_>,
    require_auth: bool,
    base_dir: &Path,
    env: &dyn Fn(&str) -> Option<String>,
    d: &mut Diag<'_>,
) -> Option<Option<(StationCredentials, CredentialSource)>> {
    let given: Vec<&str> = PASSWORD_KEYS.into_iter().filter(|k| t.has(k)).collect();
    match given.as_slice() {
        [] if require_auth => {
            d.error(
                t.span.clone(),
                t.field("password"),
                "a password is required (csms.require_auth = true): set one of `password`, \
                 `password_file` or `password_env`",
            );
            None
        }
        [] => Some(None),
        [key] => {
            let v = t.str(key, d)?;
            let field = t.field(key);
            let (password, source, what) = match *key {
                "password" => (v.value, CredentialSource::Inline, "password".to_string()),
                "password_file" => {
                    let path = resolve(base_dir, &v.value);
                    match std::fs::read_to_string(&path) {
                        Ok(text) => {
                            let text = text
                                .strip_suffix('\n')
                                .map(|s| s.strip_suffix('\r').unwrap_or(s))
                                .unwrap_or(&text)
                                .to_string();
                            let what = format!("password in {}", path.display());
                            (text, CredentialSource::File(path), what)
                        }
                        Err(e) => {
                            d.error(
                                Some(v.span),
                                field,
                                format!("cannot read password file {}: {e}", path.display()),
                            );
                            return None;
                        }
                    }
                }
                _ => match env(&v.value) {
                    Some(p) => {
                        let what = format!("password in environment variable {}", v.value);
                        (p, CredentialSource::Env(v.value.clone()), what)
                    }
                    None => {
                        d.error(
                            Some(v.span),
                            field,
                            format!("environment variable {} is not set", v.value),
                        );
                        return None;
                    }
                },
            };
            let n = password.chars().count();
            if n == 0 {
                d.error(Some(v.span), field, format!("the {what} is empty"));
                return None;
            }
            if !PASSWORD_CHARS.contains(&n) {
                d.error(
                    Some(v.span),
                    field,
                    format!(
                        "the {what} is {n} characters long; OCPP requires {} to {}",
                        PASSWORD_CHARS.start(),
                        PASSWORD_CHARS.end()
                    ),
                );
                return None;
            }
            Some(Some((StationCredentials::new(&password), source)))
        }
        [first, second, ..] => {
            d.error(
                t.key_span(second),
                t.field(second),
                format!(
                    "give only one of `password`, `password_file` and `password_env` (found \
                     `{first}` and `{second}`)"
                ),
            );
            None
        }
    }
}

fn resolve(base_dir: &Path, p: &str) -> PathBuf {
    let path = Path::new(p);
    if path.is_absolute() {
        path.to_path_buf()
    } else {
        base_dir.join(path)
    }
}

fn read_listen(t: &Table<'_, '_>, default: SocketAddr, d: &mut Diag<'_>) -> Option<SocketAddr> {
    if !t.has("listen") {
        return Some(default);
    }
    let v = t.str("listen", d)?;
    match v.value.parse::<SocketAddr>() {
        Ok(a) => Some(a),
        Err(_) => {
            d.error(
                Some(v.span),
                t.field("listen"),
                format!(
                    "\"{}\" is not a socket address: write IP:port, e.g. \"0.0.0.0:9000\" or \
                     \"[::]:9000\"",
                    v.value.escape_debug()
                ),
            );
            None
        }
    }
}

/// An integer setting in `min..=max`, or `default` when absent; `None` after an error.
fn int_setting(
    t: &Table<'_, '_>,
    key: &str,
    min: i64,
    max: i64,
    default: i64,
    d: &mut Diag<'_>,
) -> Option<i64> {
    if t.has(key) {
        t.int_in(key, min, max, d).map(|v| v.value)
    } else {
        Some(default)
    }
}

fn bool_setting(t: &Table<'_, '_>, key: &str, default: bool, d: &mut Diag<'_>) -> Option<bool> {
    if t.has(key) {
        t.bool(key, d).map(|v| v.value)
    } else {
        Some(default)
    }
}

fn optional_section<'a, 'i>(
    root: &Table<'a, 'i>,
    key: &str,
    known: &[&str],
    d: &mut Diag<'_>,
) -> Option<Option<Table<'a, 'i>>> {
    if !root.has(key) {
        return Some(None);
    }
    let t = sub_table(root, key, d)?;
    t.check_keys(known, d);
    Some(Some(t))
}

fn read_csms(root: &Table<'_, '_>, d: &mut Diag<'_>) -> Option<CsmsSettings> {
    let defaults = CsmsSettings::default();
    let Some(t) = optional_section(root, "csms", CSMS_KEYS, d)? else {
        return Some(defaults);
    };
    let listen = read_listen(&t, defaults.listen, d);
    let heartbeat = int_setting(&t, "heartbeat_interval_s", 1, 86_400, 300, d);
    let ping = int_setting(&t, "ping_interval_s", 1, 3_600, 60, d);
    let frame = int_setting(&t, "max_frame_bytes", 1024, 64 << 20, 1 << 20, d);
    let timeout = int_setting(&t, "call_timeout_s", 1, 3_600, 30, d);
    let meter = int_setting(&t, "meter_interval_s", 1, 3_600, 10, d);
    let allow_unknown = bool_setting(&t, "allow_unknown_stations", false, d);
    let require_auth = bool_setting(&t, "require_auth", true, d);
    let unknown_current = match t.num("unknown_station_current_a", d) {
        Some(c) if !(c.value.is_finite() && (0.0..=MAX_STATION_CURRENT_A).contains(&c.value)) => {
            d.error(
                Some(c.span),
                t.field("unknown_station_current_a"),
                format!(
                    "must be between 0 and {} A, got {}",
                    fmt_num(MAX_STATION_CURRENT_A),
                    c.value
                ),
            );
            None
        }
        Some(c) => {
            if c.value > 0.0 && c.value < IEC_MIN_CURRENT_A {
                d.warn(
                    Some(c.span),
                    t.field("unknown_station_current_a"),
                    "below the IEC 61851 minimum of 6 A: unknown stations will not charge (use \
                     0 to say so explicitly)",
                );
            }
            Some(c.value)
        }
        None if t.has("unknown_station_current_a") => None,
        None => Some(0.0),
    };
    if require_auth == Some(false) {
        d.warn(
            t.key_span("require_auth"),
            t.field("require_auth"),
            "stations without a password connect unauthenticated: for labs only, never on a \
             real site",
        );
    }
    Some(CsmsSettings {
        listen: listen?,
        heartbeat_interval_s: heartbeat? as u64,
        ping_interval_s: ping? as u64,
        max_frame_bytes: frame? as usize,
        call_timeout_s: timeout? as u64,
        meter_interval_s: meter? as u64,
        allow_unknown_stations: allow_unknown?,
        unknown_station_current_a: unknown_current?,
        require_auth: require_auth?,
    })
}

fn read_authorization(
    root: &Table<'_, '_>,
    base_dir: &Path,
    d: &mut Diag<'_>,
) -> Option<AuthorizationSettings> {
    let Some(t) = optional_section(root, "authorization", AUTHORIZATION_KEYS, d)? else {
        return Some(AuthorizationSettings::default());
    };
    let mode_value = t.str("mode", d);
    let mode = match &mode_value {
        Some(m) => match m.value.as_str() {
            "accept_all" => Some(AuthorizationMode::AcceptAll),
            "local_list" => Some(AuthorizationMode::LocalList),
            other => {
                let hint = suggest(other, &["accept_all", "local_list"])
                    .map(|s| format!("; did you mean \"{s}\"?"))
                    .unwrap_or_default();
                d.error(
                    Some(m.span.clone()),
                    t.field("mode"),
                    format!(
                        "unknown mode \"{}\": use \"accept_all\" or \"local_list\"{hint}",
                        other.escape_debug()
                    ),
                );
                None
            }
        },
        None if t.has("mode") => None,
        None => Some(AuthorizationMode::AcceptAll),
    };
    let mut tags = BTreeSet::new();
    let mut ok = true;
    if t.has("id_tags") {
        match t.str_array("id_tags", d) {
            Some(list) => {
                for (i, tag) in list.value.iter().enumerate() {
                    let field = format!("{}[{i}]", t.field("id_tags"));
                    match id_tag_problem(&tag.value) {
                        Some(p) => {
                            d.error(Some(tag.span.clone()), field, p);
                            ok = false;
                        }
                        None => {
                            id_tag_warning(&tag.value, &field, Some(tag.span.clone()), d);
                            if !tags.insert(tag.value.clone()) {
                                d.warn(
                                    Some(tag.span.clone()),
                                    field,
                                    format!("id tag \"{}\" is listed twice", tag.value),
                                );
                            }
                        }
                    }
                }
            }
            None => ok = false,
        }
    }
    if t.has("id_tags_file") {
        match t.str("id_tags_file", d) {
            Some(f) => {
                let path = resolve(base_dir, &f.value);
                match std::fs::read_to_string(&path) {
                    Ok(text) => ok &= read_id_tags_file(&path, &text, &mut tags, d),
                    Err(e) => {
                        d.error(
                            Some(f.span),
                            t.field("id_tags_file"),
                            format!("cannot read id tags file {}: {e}", path.display()),
                        );
                        ok = false;
                    }
                }
            }
            None => ok = false,
        }
    }
    let mode = mode?;
    if ok && mode == AuthorizationMode::LocalList && tags.is_empty() {
        let span = mode_value.map(|m| m.span).or_else(|| t.span.clone());
        d.error(
            span,
            t.field("mode"),
            "local_list needs at least one id tag in `id_tags` or `id_tags_file`",
        );
        return None;
    }
    if mode == AuthorizationMode::AcceptAll && !tags.is_empty() {
        let key = if t.has("id_tags") {
            "id_tags"
        } else {
            "id_tags_file"
        };
        d.warn(
            t.key_span(key),
            t.field(key),
            "id tags are ignored with mode = \"accept_all\"; set mode = \"local_list\" to use them",
        );
    }
    ok.then_some(AuthorizationSettings {
        mode,
        id_tags: tags,
    })
}

fn id_tag_problem(tag: &str) -> Option<String> {
    let n = tag.chars().count();
    if tag.is_empty() {
        Some("an id tag must not be empty".into())
    } else if n > MAX_ID_TAG_CHARS {
        Some(format!(
            "id tag is {n} characters long; OCPP allows at most {MAX_ID_TAG_CHARS}"
        ))
    } else if tag.chars().any(|c| c.is_control() || c.is_whitespace()) {
        Some("an id tag must not contain spaces or control characters".into())
    } else {
        None
    }
}

fn id_tag_warning(tag: &str, field: &str, span: Option<Range<usize>>, d: &mut Diag<'_>) {
    let n = tag.chars().count();
    if n > MAX_ID_TAG_CHARS_V16 {
        d.warn(
            span,
            field,
            format!(
                "id tag is {n} characters long: OCPP 1.6 stations can send at most \
                 {MAX_ID_TAG_CHARS_V16}"
            ),
        );
    }
}

/// One tag per line; blank lines and `#` comments are skipped. Mistakes point into that file.
fn read_id_tags_file(
    path: &Path,
    text: &str,
    tags: &mut BTreeSet<String>,
    d: &mut Diag<'_>,
) -> bool {
    let mut ok = true;
    for (i, raw) in text.lines().enumerate() {
        let tag = raw.split('#').next().unwrap_or("").trim();
        if tag.is_empty() {
            continue;
        }
        if let Some(p) = id_tag_problem(tag) {
            let column = raw.find(tag).map_or(1, |b| raw[..b].chars().count() + 1);
            d.error_at(ConfigError {
                file: Some(path.display().to_string()),
                line: Some(i + 1),
                column: Some(column),
                field: "authorization.id_tags_file".into(),
                message: p,
            });
            ok = false;
        } else {
            tags.insert(tag.to_string());
        }
    }
    ok
}

fn read_store(root: &Table<'_, '_>, base_dir: &Path, d: &mut Diag<'_>) -> Option<StoreSettings> {
    let defaults = StoreSettings::default();
    let t = match optional_section(root, "store", STORE_KEYS, d)? {
        Some(t) => t,
        None => {
            return Some(StoreSettings {
                data_dir: resolve(base_dir, &defaults.data_dir.to_string_lossy()),
                ..defaults
            });
        }
    };
    let data_dir = match t.str("data_dir", d) {
        Some(p) if p.value.trim().is_empty() => {
            d.error(Some(p.span), t.field("data_dir"), "must not be empty");
            None
        }
        Some(p) => Some(resolve(base_dir, &p.value)),
        None if t.has("data_dir") => None,
        None => Some(resolve(base_dir, &defaults.data_dir.to_string_lossy())),
    };
    let retention = int_setting(&t, "raw_retention_days", 1, 3650, 7, d);
    let downsample = if t.has("downsample_minutes") {
        t.int_in("downsample_minutes", 1, 1440, d).and_then(|m| {
            if 1440 % m.value == 0 {
                Some(m.value)
            } else {
                d.error(
                    Some(m.span),
                    t.field("downsample_minutes"),
                    format!(
                        "{} does not divide a day (1440 minutes); use e.g. 5, 15, 30 or 60",
                        m.value
                    ),
                );
                None
            }
        })
    } else {
        Some(15)
    };
    Some(StoreSettings {
        data_dir: data_dir?,
        raw_retention_days: retention? as u32,
        downsample_minutes: downsample? as u32,
    })
}

fn read_api(root: &Table<'_, '_>, d: &mut Diag<'_>) -> Option<ApiSettings> {
    let defaults = ApiSettings::default();
    let Some(t) = optional_section(root, "api", API_KEYS, d)? else {
        return Some(defaults);
    };
    Some(ApiSettings {
        listen: read_listen(&t, defaults.listen, d)?,
    })
}

/// A number setting in `min..=max`, or `default` when absent; `None` after an error.
fn num_setting(
    t: &Table<'_, '_>,
    key: &str,
    min: f64,
    max: f64,
    default: f64,
    d: &mut Diag<'_>,
) -> Option<f64> {
    match t.num(key, d) {
        Some(v) if v.value.is_finite() && (min..=max).contains(&v.value) => Some(v.value),
        Some(v) => {
            d.error(
                Some(v.span),
                t.field(key),
                format!(
                    "must be between {} and {}, got {}",
                    fmt_num(min),
                    fmt_num(max),
                    v.value
                ),
            );
            None
        }
        None if t.has(key) => None,
        None => Some(default),
    }
}

fn read_control(root: &Table<'_, '_>, d: &mut Diag<'_>) -> Option<ControlSettings> {
    let defaults = ControlSettings::default();
    let Some(t) = optional_section(root, "control", CONTROL_KEYS, d)? else {
        return Some(defaults);
    };
    let tick = int_setting(&t, "tick_ms", 50, 60_000, 1000, d);
    let ramp = int_setting(&t, "ramp_s", 0, 60, 5, d);
    let hysteresis = num_setting(&t, "hysteresis_a", 0.1, 16.0, defaults.hysteresis_a, d);
    let validity = int_setting(&t, "profile_validity_s", 30, 86_400, 300, d);
    let reserve = num_setting(&t, "building_reserve_a", 0.0, 10_000.0, 0.0, d);
    let worst = if t.has("worst_case_load_a") {
        num_setting(&t, "worst_case_load_a", 0.0, 10_000.0, 0.0, d)
    } else {
        reserve
    };
    let grid_meter = match t.str("grid_meter", d) {
        Some(m) if m.value.trim().is_empty() => {
            d.error(
                Some(m.span),
                t.field("grid_meter"),
                "must name a [[plugin]]",
            );
            None
        }
        Some(m) => Some(Some(m.value)),
        None if t.has("grid_meter") => None,
        None => Some(None),
    };
    let meter_timeout = int_setting(&t, "meter_timeout_s", 1, 3_600, 10, d);
    let tolerance = num_setting(&t, "noncompliance_tolerance_a", 0.5, 32.0, 2.0, d);
    let rotation = int_setting(&t, "fallback_rotation_s", 60, 86_400, 900, d);
    let plan_interval = int_setting(&t, "plan_interval_s", 30, 86_400, 300, d);
    let dwell = int_setting(&t, "dwell_s", 0, 3_600, defaults.dwell_s as i64, d);
    let turn = match (
        dwell,
        int_setting(&t, "turn_s", 60, 86_400, defaults.turn_s as i64, d),
    ) {
        (Some(dwell), Some(turn)) if turn < dwell => {
            d.error(
                t.key_span("turn_s"),
                t.field("turn_s"),
                format!("must be at least dwell_s ({dwell}), got {turn}"),
            );
            None
        }
        (_, turn) => turn,
    };
    let raise_interval = int_setting(&t, "raise_interval_s", 0, 3_600, 10, d);
    let phase_switch = int_setting(&t, "phase_switch_s", 60, 86_400, 300, d);
    let phase_switching = bool_setting(&t, "phase_switching", false, d);
    let fleet = read_fleet(&t, d);
    Some(ControlSettings {
        tick_ms: tick? as u64,
        ramp_s: ramp? as u64,
        hysteresis_a: hysteresis?,
        profile_validity_s: validity? as u64,
        building_reserve_a: reserve?,
        worst_case_load_a: worst?,
        grid_meter: grid_meter?,
        meter_timeout_s: meter_timeout? as u64,
        noncompliance_tolerance_a: tolerance?,
        fallback_rotation_s: rotation? as u64,
        plan_interval_s: plan_interval? as u64,
        dwell_s: dwell? as u64,
        turn_s: turn? as u64,
        raise_interval_s: raise_interval? as u64,
        phase_switch_s: phase_switch? as u64,
        phase_switching: phase_switching?,
        fleet: fleet?,
    })
}

fn read_fleet(control: &Table<'_, '_>, d: &mut Diag<'_>) -> Option<Vec<FleetNeeds>> {
    let mut out = Vec::new();
    let mut ok = true;
    let mut seen: HashMap<String, String> = HashMap::new();
    for (i, (table, span)) in table_array(control, "fleet", d).into_iter().enumerate() {
        let t = Table::new(table, Some(span), format!("control.fleet[{i}]"));
        t.check_keys(FLEET_KEYS, d);
        let tags = match t.str_array("id_tags", d) {
            Some(tags) if tags.value.is_empty() => {
                d.error(
                    Some(tags.span),
                    t.field("id_tags"),
                    "must name at least one id tag",
                );
                None
            }
            Some(tags) => {
                let mut list = Vec::new();
                for tag in tags.value {
                    if let Some(first) = seen.insert(tag.value.clone(), t.path.clone()) {
                        d.error(
                            Some(tag.span.clone()),
                            t.field("id_tags"),
                            format!(
                                "id tag \"{}\" is already in {first}",
                                tag.value.escape_debug()
                            ),
                        );
                        ok = false;
                    }
                    list.push(tag.value);
                }
                Some(list)
            }
            None => {
                if !t.has("id_tags") {
                    t.missing("id_tags", "the id tags of these vehicles", d);
                }
                None
            }
        };
        let departure = t
            .req_str(
                "departure",
                "the local time of day they leave, \"HH:MM\"",
                d,
            )
            .and_then(
                |v| match chrono::NaiveTime::parse_from_str(v.value.trim(), "%H:%M") {
                    Ok(at) => Some(at),
                    Err(_) => {
                        d.error(
                            Some(v.span),
                            t.field("departure"),
                            format!(
                                "\"{}\" is not a time of day: write \"HH:MM\"",
                                v.value.escape_debug()
                            ),
                        );
                        None
                    }
                },
            );
        let energy = t
            .req_num("energy_kwh", "the energy each needs per visit, kWh", d)
            .and_then(|v| {
                if v.value.is_finite() && v.value > 0.0 && v.value <= 10_000.0 {
                    Some(v.value * 1000.0)
                } else {
                    d.error(
                        Some(v.span),
                        t.field("energy_kwh"),
                        "must be above 0 and at most 10000",
                    );
                    None
                }
            });
        match (tags, departure, energy) {
            (Some(id_tags), Some(departure), Some(energy_wh)) => out.push(FleetNeeds {
                id_tags,
                departure,
                energy_wh,
            }),
            _ => ok = false,
        }
    }
    ok.then_some(out)
}

fn read_logging(root: &Table<'_, '_>, d: &mut Diag<'_>) -> Option<LoggingSettings> {
    let defaults = LoggingSettings::default();
    let Some(t) = optional_section(root, "logging", LOGGING_KEYS, d)? else {
        return Some(defaults);
    };
    let format = match t.str("format", d) {
        Some(f) => match f.value.as_str() {
            "text" => Some(LogFormat::Text),
            "json" => Some(LogFormat::Json),
            other => {
                d.error(
                    Some(f.span),
                    t.field("format"),
                    format!(
                        "unknown format \"{}\": use \"text\" or \"json\"",
                        other.escape_debug()
                    ),
                );
                None
            }
        },
        None if t.has("format") => None,
        None => Some(defaults.format),
    };
    let filter = match t.str("filter", d) {
        Some(f) => match tracing_subscriber::EnvFilter::try_new(&f.value) {
            Ok(_) if !f.value.trim().is_empty() => Some(f.value),
            Ok(_) => {
                d.error(
                    Some(f.span),
                    t.field("filter"),
                    "must not be empty (e.g. \"info\")",
                );
                None
            }
            Err(e) => {
                d.error(
                    Some(f.span),
                    t.field("filter"),
                    format!("not a log filter ({e}); e.g. \"info\" or \"info,loadstar=debug\""),
                );
                None
            }
        },
        None if t.has("filter") => None,
        None => Some(defaults.filter),
    };
    Some(LoggingSettings {
        format: format?,
        filter: filter?,
    })
}

/// The OCPP and HTTP listeners must not claim the same port on overlapping addresses.
fn check_listeners(root: &Table<'_, '_>, csms: &CsmsSettings, api: &ApiSettings, d: &mut Diag<'_>) {
    let (a, b) = (csms.listen, api.listen);
    let overlap = a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified();
    if a.port() == b.port() && a.port() != 0 && overlap {
        let span = sub_table(root, "api", d)
            .and_then(|t| t.get("listen").map(|v| v.span()))
            .or_else(|| sub_table(root, "csms", d).and_then(|t| t.get("listen").map(|v| v.span())));
        d.error(
            span,
            "api.listen",
            format!("{b} collides with csms.listen ({a}): use another port"),
        );
    }
}

// ---------------------------------------------------------------------------------------------
// The circuit tree
// ---------------------------------------------------------------------------------------------

struct Tree {
    /// circuit id → raw index (first definition)
    index: HashMap<String, usize>,
    /// raw index → ancestors (parent … grid), for circuits whose chain reaches the grid
    ancestors: Vec<Option<Vec<String>>>,
}

fn known_nodes(circuits: &[RawCircuit]) -> String {
    let mut names = vec![GRID_ID.to_string()];
    names.extend(
        circuits
            .iter()
            .filter_map(|c| c.id.as_ref().map(|i| i.value.clone())),
    );
    names.dedup();
    names.join(", ")
}

fn build_tree(
    circuits: &[RawCircuit],
    stations: &[RawStation],
    grid: Option<&GridSettings>,
    d: &mut Diag<'_>,
) -> Tree {
    let mut index: HashMap<String, usize> = HashMap::new();
    for (i, c) in circuits.iter().enumerate() {
        let Some(id) = &c.id else { continue };
        if let Some(&first) = index.get(&id.value) {
            let (line, _) = d_line(d, &circuits[first].header);
            d.error(
                Some(id.span.clone()),
                format!("{}.id", c.path),
                format!(
                    "duplicate circuit id \"{}\" (first defined on line {line})",
                    id.value
                ),
            );
        } else {
            index.insert(id.value.clone(), i);
        }
    }
    let known = known_nodes(circuits);

    // Parents exist?
    let mut parent_ok = vec![false; circuits.len()];
    for (i, c) in circuits.iter().enumerate() {
        let Some(p) = &c.parent else { continue };
        if p.value == GRID_ID || index.contains_key(&p.value) {
            parent_ok[i] = true;
        } else {
            d.error(
                Some(p.span.clone()),
                format!("{}.parent", c.path),
                format!(
                    "circuit \"{}\" is not defined (known: {known})",
                    p.value.escape_debug()
                ),
            );
        }
    }

    // Walk each chain to the grid; report each cycle once, at its first circuit in the file.
    let mut ancestors: Vec<Option<Vec<String>>> = vec![None; circuits.len()];
    for i in 0..circuits.len() {
        match &circuits[i].id {
            Some(id) if index.get(&id.value) == Some(&i) => {}
            _ => continue,
        }
        let mut chain: Vec<usize> = vec![i];
        let mut names = Vec::new();
        let mut cur = i;
        let result = loop {
            if !parent_ok[cur] {
                break None;
            }
            let Some(parent) = &circuits[cur].parent else {
                break None;
            };
            names.push(parent.value.clone());
            if parent.value == GRID_ID {
                break Some(names);
            }
            let next = index[&parent.value];
            if let Some(pos) = chain.iter().position(|&c| c == next) {
                let cycle = &chain[pos..];
                if pos == 0 && cycle.iter().all(|&c| c >= i) {
                    let mut path: Vec<String> = cycle
                        .iter()
                        .filter_map(|&c| circuits[c].id.as_ref())
                        .map(|id| format!("\"{}\"", id.value))
                        .collect();
                    path.push(path[0].clone());
                    let c = &circuits[i];
                    d.error(
                        c.parent.as_ref().map(|p| p.span.clone()),
                        format!("{}.parent", c.path),
                        format!(
                            "circuits form a cycle: {}; every circuit must lead up to the grid",
                            path.join(" → ")
                        ),
                    );
                }
                break None;
            }
            chain.push(next);
            cur = next;
        };
        ancestors[i] = result;
    }

    // Child limit above parent: a warning (the parent's limit applies anyway).
    if let Some(grid) = grid {
        let lines = grid.model.grid().lines();
        for c in circuits {
            let (Some(limit), Some(parent)) = (&c.limit, &c.parent) else {
                continue;
            };
            let (parent_limit, parent_name) = if parent.value == GRID_ID {
                (Some(grid.limit_a), "the grid".to_string())
            } else {
                (
                    index
                        .get(&parent.value)
                        .and_then(|&p| circuits[p].limit.as_ref())
                        .map(|l| l.value),
                    format!("its parent \"{}\"", parent.value),
                )
            };
            let Some(pl) = parent_limit else { continue };
            let above: Vec<String> = lines
                .iter()
                .filter(|&&l| limit.value[l] > pl[l])
                .map(|&l| format!("{l} {} A > {} A", fmt_num(limit.value[l]), fmt_num(pl[l])))
                .collect();
            if !above.is_empty() {
                d.warn(
                    Some(limit.span.clone()),
                    format!("{}.limit_a", c.path),
                    format!(
                        "above {parent_name} ({}); the lower limit applies",
                        above.join(", ")
                    ),
                );
            }
        }
    }

    // Stations: ids unique, circuits exist.
    let mut station_ids: HashMap<&str, &RawStation> = HashMap::new();
    for s in stations {
        if let Some(id) = &s.id {
            if let Some(first) = station_ids.get(id.value.as_str()) {
                let (line, _) = d_line(d, &first.header);
                d.error(
                    Some(id.span.clone()),
                    format!("{}.id", s.path),
                    format!(
                        "duplicate station id \"{}\" (first defined on line {line})",
                        id.value
                    ),
                );
            } else {
                station_ids.insert(&id.value, s);
            }
        }
        if let Some(c) = &s.circuit
            && c.value != GRID_ID
            && !index.contains_key(&c.value)
        {
            d.error(
                Some(c.span.clone()),
                format!("{}.circuit", s.path),
                format!(
                    "circuit \"{}\" is not defined (known: {known})",
                    c.value.escape_debug()
                ),
            );
        }
    }

    Tree { index, ancestors }
}

fn d_line(d: &Diag<'_>, span: &Range<usize>) -> (usize, usize) {
    d.locate(span.start)
}

#[allow(clippy::too_many_arguments)]
fn assemble(
    site: Option<SiteInfo>,
    grid: Option<GridSettings>,
    csms: Option<CsmsSettings>,
    authorization: Option<AuthorizationSettings>,
    store: Option<StoreSettings>,
    api: Option<ApiSettings>,
    logging: Option<LoggingSettings>,
    raw_circuits: Vec<RawCircuit>,
    raw_stations: Vec<RawStation>,
    tree: Tree,
    d: &mut Diag<'_>,
) -> Option<SiteConfig> {
    let mut grid = grid?;
    let model = grid.model;

    // Circuits, top-down (by depth, then file order).
    let mut order: Vec<usize> = (0..raw_circuits.len()).collect();
    order.sort_by_key(|&i| tree.ancestors[i].as_ref().map_or(usize::MAX, Vec::len));
    let mut circuits: Vec<CircuitConfig> = Vec::with_capacity(raw_circuits.len());
    let mut circuit_index: HashMap<String, usize> = HashMap::new();
    for i in order {
        let raw = &raw_circuits[i];
        let id = raw.id.as_ref()?.value.clone();
        let parent = raw.parent.as_ref()?.value.clone();
        let limit_a = raw.limit.as_ref()?.value;
        let parent_effective = if parent == GRID_ID {
            grid.limit
        } else {
            circuits[*circuit_index.get(&parent)?].effective_limit
        };
        circuit_index.insert(id.clone(), circuits.len());
        circuits.push(CircuitConfig {
            id,
            parent,
            limit_a,
            effective_limit: limit_a.min(parent_effective),
            ancestors: tree.ancestors[i].clone()?,
            children: Vec::new(),
            stations: Vec::new(),
        });
    }
    debug_assert_eq!(circuit_index.len(), tree.index.len());
    // Children in file order.
    for raw in &raw_circuits {
        let (id, parent) = (&raw.id.as_ref()?.value, &raw.parent.as_ref()?.value);
        if parent == GRID_ID {
            grid.circuits.push(id.clone());
        } else {
            let p = circuit_index[parent];
            circuits[p].children.push(id.clone());
        }
    }

    let mut stations = Vec::with_capacity(raw_stations.len());
    let mut station_index = HashMap::new();
    for raw in raw_stations {
        let id = raw.id?.value;
        let circuit = raw.circuit?.value;
        let (wiring, wiring_span) = raw.wiring?;
        let electrical = model.station(wiring).ok()?;
        let circuit_path = if circuit == GRID_ID {
            grid.stations.push(id.clone());
            vec![GRID_ID.to_string()]
        } else {
            let c = &mut circuits[circuit_index[&circuit]];
            c.stations.push(id.clone());
            std::iter::once(circuit.clone())
                .chain(c.ancestors.iter().cloned())
                .collect()
        };
        // A line the station loads but its circuit gives 0 A (per-line arrays).
        let effective = if circuit == GRID_ID {
            grid.limit
        } else {
            circuits[circuit_index[&circuit]].effective_limit
        };
        let coefficients = electrical.line_coefficients(0);
        let dead: Vec<String> = Line::ALL
            .into_iter()
            .filter(|&l| coefficients[l] > 0.0 && effective[l] <= 0.0)
            .map(|l| l.to_string())
            .collect();
        if !dead.is_empty() {
            d.warn(
                wiring_span.or(Some(raw.header.clone())),
                format!("station \"{id}\".wiring"),
                format!(
                    "the station loads {}, where {} allows 0 A: it can never charge there",
                    dead.join(", "),
                    if circuit == GRID_ID {
                        "the grid".to_string()
                    } else {
                        format!("circuit \"{circuit}\" (with the circuits above it)")
                    }
                ),
            );
        }
        let (credentials, credential_source) = match raw.credentials {
            Some((c, s)) => (Some(c), Some(s)),
            None => (None, None),
        };
        station_index.insert(id.clone(), stations.len());
        stations.push(StationConfig {
            id,
            circuit,
            circuit_path,
            phases: raw.phases?,
            max_current_a: raw.max_current_a?,
            min_current_a: raw.min_current_a?,
            wiring,
            electrical,
            evses: raw.evses?,
            ocpp: raw.ocpp,
            security_profile: raw.security_profile?,
            credentials,
            credential_source,
        });
    }

    Some(SiteConfig {
        site: site?,
        grid,
        circuits,
        stations,
        csms: csms?,
        authorization: authorization?,
        store: store?,
        api: api?,
        logging: logging?,
        control: ControlSettings::default(),
        plugins: Vec::new(),
        warnings: Vec::new(),
        circuit_index,
        station_index,
    })
}

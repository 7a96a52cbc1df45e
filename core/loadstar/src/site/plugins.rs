//! `[[plugin]]` entries: which WebAssembly component, its world, its own config, its grants and
//! limits, with every mistake reported at its line like the rest of the site file.

use std::collections::HashMap;
use std::path::Path;

use toml::de::DeValue;

use super::SitePlugin;
use super::build::Files;
use super::diag::Diag;
use super::read::{Table, Value, as_str, sub_table, table_array};
use crate::plugins::{Grants, Limits, PluginSpec, WasmKind, World};

const PLUGIN_KEYS: &[&str] = &[
    "name",
    "world",
    "wasm",
    "config",
    "grants",
    "limits",
    "every_s",
    "safe_limits",
];
/// How often a policy is evaluated unless its entry says otherwise, s.
pub const DEFAULT_POLICY_EVERY_S: u64 = 10;
const GRANT_KEYS: &[&str] = &["http", "modbus", "kv_max_bytes", "kv_max_keys"];
const LIMIT_KEYS: &[&str] = &[
    "deadline_ms",
    "memory_mib",
    "max_consecutive_errors",
    "restart_backoff_min_ms",
    "restart_backoff_max_ms",
    "http_max_response_bytes",
];

pub(super) fn read_plugins(
    root: &Table<'_, '_>,
    base_dir: &Path,
    files: Files,
    nodes: &[&str],
    d: &mut Diag<'_>,
) -> Option<Vec<SitePlugin>> {
    let mut out = Vec::new();
    let mut ok = true;
    let mut names: HashMap<String, String> = HashMap::new();
    for (i, (table, span)) in table_array(root, "plugin", d).into_iter().enumerate() {
        let t = Table::new(table, Some(span), format!("plugin[{i}]"));
        match read_plugin(&t, base_dir, files, nodes, d) {
            Some(plugin) => {
                if let Some(first) = names.insert(plugin.spec.name.clone(), t.path.clone()) {
                    d.error(
                        t.key_span("name"),
                        t.field("name"),
                        format!(
                            "plugin name \"{}\" is already used by {first}",
                            plugin.spec.name
                        ),
                    );
                    ok = false;
                }
                out.push(plugin);
            }
            None => ok = false,
        }
    }
    ok.then_some(out)
}

fn read_plugin(
    t: &Table<'_, '_>,
    base_dir: &Path,
    files: Files,
    nodes: &[&str],
    d: &mut Diag<'_>,
) -> Option<SitePlugin> {
    t.check_keys(PLUGIN_KEYS, d);
    let name = t.req_str("name", "the plugin's unique name", d);
    let world = t
        .req_str("world", "\"meter\" or \"policy\"", d)
        .and_then(|w| match w.value.as_str() {
            "meter" => Some(World::Meter),
            "policy" => Some(World::Policy),
            other => {
                d.error(
                    Some(w.span),
                    t.field("world"),
                    format!(
                        "unknown world \"{}\": use \"meter\" or \"policy\"",
                        other.escape_debug()
                    ),
                );
                None
            }
        });
    let wasm = t
        .req_str("wasm", "the path of the component (.wasm)", d)
        .and_then(|p| {
            if p.value.trim().is_empty() {
                d.error(Some(p.span), t.field("wasm"), "must not be empty");
                None
            } else {
                let path = Path::new(&p.value);
                let path = if path.is_absolute() {
                    path.to_path_buf()
                } else {
                    base_dir.join(path)
                };
                if files == Files::Check
                    && let Err(why) = check_component(&path)
                {
                    d.error(Some(p.span), t.field("wasm"), why);
                    return None;
                }
                Some(path)
            }
        });
    let config = match t.get("config") {
        None => Some(serde_json::Map::new()),
        Some(v) => match to_json(v, &t.field("config"), d)? {
            serde_json::Value::Object(map) => Some(map),
            _ => {
                d.error(Some(v.span()), t.field("config"), "expected a table");
                None
            }
        },
    };
    let grants = read_grants(t, d);
    let limits = read_limits(t, d);
    let is_policy = world == Some(World::Policy);
    for key in ["every_s", "safe_limits"] {
        if world == Some(World::Meter) && t.has(key) {
            d.error(
                t.key_span(key),
                t.field(key),
                "only a policy has this (a meter is read every tick)",
            );
        }
    }
    let every_s = if is_policy {
        int_or(t, "every_s", 1, 86_400, DEFAULT_POLICY_EVERY_S as i64, d)
    } else {
        Some(0)
    };
    let safe_limits = read_safe_limits(t, nodes, d);

    let spec = PluginSpec {
        name: name?.value,
        world: world?,
        config: config?,
        grants: grants?,
        limits: limits?,
    };
    // The host's own checks (name syntax, grant syntax, ranges), reported at the entry.
    if let Err(e) = spec.validate() {
        d.error(t.span.clone(), t.path.clone(), e.to_string());
        return None;
    }
    Some(SitePlugin {
        spec,
        wasm: wasm?,
        every: std::time::Duration::from_secs(every_s? as u64),
        safe_limits: safe_limits?,
    })
}

/// `safe_limits = { grid = 40, "feeder-a" = 25 }`: A per line on each named node while the
/// policy is failing and its last limits have ended.
fn read_safe_limits(
    t: &Table<'_, '_>,
    nodes: &[&str],
    d: &mut Diag<'_>,
) -> Option<std::collections::BTreeMap<String, f64>> {
    let mut out = std::collections::BTreeMap::new();
    if !t.has("safe_limits") {
        return Some(out);
    }
    let mut s = sub_table(t, "safe_limits", d)?;
    s.path = t.field("safe_limits");
    let mut ok = true;
    for (key, value) in s.table.iter() {
        let node = key.get_ref().as_ref();
        let field = s.field(node);
        if !nodes.contains(&node) {
            d.error(
                Some(key.span()),
                field.clone(),
                format!(
                    "no node \"{}\": use \"grid\" or a [[circuit]] id",
                    node.escape_debug()
                ),
            );
            ok = false;
            continue;
        }
        match super::read::as_num(value, &field, d) {
            Some(a) if a.value.is_finite() && a.value >= 0.0 => {
                out.insert(node.to_owned(), a.value);
            }
            Some(a) => {
                d.error(
                    Some(a.span),
                    field,
                    "must be a finite current of at least 0 A",
                );
                ok = false;
            }
            None => ok = false,
        }
    }
    ok.then_some(out)
}

/// Whether `path` is a readable WebAssembly component, from its preamble (compiling it is the
/// host's job, at load).
fn check_component(path: &Path) -> Result<(), String> {
    use std::io::Read;
    let mut head = Vec::with_capacity(8);
    std::fs::File::open(path)
        .and_then(|f| f.take(8).read_to_end(&mut head))
        .map_err(|e| format!("cannot read the component {}: {e}", path.display()))?;
    match WasmKind::of(&head) {
        WasmKind::Component => Ok(()),
        WasmKind::CoreModule => Err(format!(
            "{} is a core WebAssembly module, not a component: build the plugin with \
             `cargo build --target wasm32-wasip2`",
            path.display()
        )),
        WasmKind::NotWasm => Err(format!("{} is not a WebAssembly component", path.display())),
    }
}

fn read_grants(t: &Table<'_, '_>, d: &mut Diag<'_>) -> Option<Grants> {
    let defaults = Grants::default();
    if !t.has("grants") {
        return Some(defaults);
    }
    let mut g = sub_table(t, "grants", d)?;
    g.path = t.field("grants");
    g.check_keys(GRANT_KEYS, d);
    let list = |key: &str, d: &mut Diag<'_>| -> Option<Vec<String>> {
        if !g.has(key) {
            return Some(Vec::new());
        }
        let items = g.str_array(key, d)?;
        let mut out = Vec::new();
        let mut ok = true;
        for item in items.value {
            if crate::plugins::spec::split_host_port(&item.value).is_none() {
                d.error(
                    Some(item.span),
                    g.field(key),
                    format!(
                        "\"{}\" is not host:port (e.g. \"192.168.1.20:502\")",
                        item.value.escape_debug()
                    ),
                );
                ok = false;
            }
            out.push(item.value);
        }
        ok.then_some(out)
    };
    let http = list("http", d);
    let modbus = list("modbus", d);
    let kv_max_bytes = int_or(
        &g,
        "kv_max_bytes",
        0,
        64 << 20,
        defaults.kv_max_bytes as i64,
        d,
    );
    let kv_max_keys = int_or(
        &g,
        "kv_max_keys",
        0,
        1_000_000,
        i64::from(defaults.kv_max_keys),
        d,
    );
    Some(Grants {
        http: http?,
        modbus: modbus?,
        kv_max_bytes: kv_max_bytes? as u64,
        kv_max_keys: kv_max_keys? as u32,
    })
}

fn read_limits(t: &Table<'_, '_>, d: &mut Diag<'_>) -> Option<Limits> {
    let defaults = Limits::default();
    if !t.has("limits") {
        return Some(defaults);
    }
    let mut l = sub_table(t, "limits", d)?;
    l.path = t.field("limits");
    l.check_keys(LIMIT_KEYS, d);
    let deadline = int_or(&l, "deadline_ms", 1, 60_000, defaults.deadline_ms as i64, d);
    let memory_mib = int_or(
        &l,
        "memory_mib",
        2,
        1024,
        (defaults.memory_bytes >> 20) as i64,
        d,
    );
    let errors = int_or(
        &l,
        "max_consecutive_errors",
        1,
        1000,
        i64::from(defaults.max_consecutive_errors),
        d,
    );
    let min = int_or(
        &l,
        "restart_backoff_min_ms",
        0,
        3_600_000,
        defaults.restart_backoff_min_ms as i64,
        d,
    );
    let max = int_or(
        &l,
        "restart_backoff_max_ms",
        0,
        86_400_000,
        defaults.restart_backoff_max_ms as i64,
        d,
    );
    let body = int_or(
        &l,
        "http_max_response_bytes",
        1,
        64 << 20,
        defaults.http_max_response_bytes as i64,
        d,
    );
    Some(Limits {
        deadline_ms: deadline? as u64,
        memory_bytes: (memory_mib? as u64) << 20,
        max_consecutive_errors: errors? as u32,
        restart_backoff_min_ms: min? as u64,
        restart_backoff_max_ms: max? as u64,
        http_max_response_bytes: body? as usize,
    })
}

fn int_or(
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

/// The plugin's `config` table as JSON, which is what the plugin reads. Non-finite floats have
/// no JSON form and are refused; dates become their TOML text.
fn to_json(v: &Value<'_>, field: &str, d: &mut Diag<'_>) -> Option<serde_json::Value> {
    use serde_json::Value as J;
    Some(match v.get_ref() {
        DeValue::String(_) => J::String(as_str(v, field, d)?.value),
        DeValue::Integer(_) => J::from(super::read::as_int(v, field, d)?.value),
        DeValue::Float(_) => {
            let f = super::read::as_num(v, field, d)?;
            match serde_json::Number::from_f64(f.value) {
                Some(n) => J::Number(n),
                None => {
                    d.error(
                        Some(f.span),
                        field,
                        "a plugin's config numbers must be finite",
                    );
                    return None;
                }
            }
        }
        DeValue::Boolean(b) => J::Bool(*b),
        DeValue::Datetime(dt) => J::String(dt.to_string()),
        DeValue::Array(items) => {
            let mut out = Vec::with_capacity(items.len());
            for (i, item) in items.iter().enumerate() {
                out.push(to_json(item, &format!("{field}[{i}]"), d)?);
            }
            J::Array(out)
        }
        DeValue::Table(table) => {
            let mut out = serde_json::Map::new();
            for (key, item) in table.iter() {
                let key = key.get_ref().as_ref();
                out.insert(
                    key.to_string(),
                    to_json(item, &format!("{field}.{key}"), d)?,
                );
            }
            J::Object(out)
        }
    })
}

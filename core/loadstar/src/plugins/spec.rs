//! What the site file says about one plugin: which world, its config, its grants and limits.

use std::time::Duration;

use serde::Deserialize;

use super::PluginError;

/// The world a plugin implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum World {
    Meter,
    Policy,
}

impl std::fmt::Display for World {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            World::Meter => "meter",
            World::Policy => "policy",
        })
    }
}

/// One plugin entry of the site file.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginSpec {
    /// Unique per site: names its log lines, its key-value store and its health.
    pub name: String,
    pub world: World,
    /// The plugin's own configuration, handed to it as JSON (`config.get`).
    #[serde(default)]
    pub config: serde_json::Map<String, serde_json::Value>,
    #[serde(default)]
    pub grants: Grants,
    #[serde(default)]
    pub limits: Limits,
}

/// What a plugin may reach. Everything not listed is denied.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Grants {
    /// `host:port` endpoints it may send HTTP requests to (exact match, host case-insensitive).
    #[serde(default)]
    pub http: Vec<String>,
    /// `host:port` Modbus TCP endpoints it may read registers from.
    #[serde(default)]
    pub modbus: Vec<String>,
    /// Key-value quota: total bytes of keys and values (0 denies the store).
    #[serde(default = "default_kv_max_bytes")]
    pub kv_max_bytes: u64,
    /// Key-value quota: number of keys.
    #[serde(default = "default_kv_max_keys")]
    pub kv_max_keys: u32,
}

fn default_kv_max_bytes() -> u64 {
    64 * 1024
}

fn default_kv_max_keys() -> u32 {
    256
}

impl Default for Grants {
    fn default() -> Self {
        Grants {
            http: Vec::new(),
            modbus: Vec::new(),
            kv_max_bytes: default_kv_max_bytes(),
            kv_max_keys: default_kv_max_keys(),
        }
    }
}

impl Grants {
    pub fn allows_http(&self, host: &str, port: u16) -> bool {
        allowed(&self.http, host, port)
    }

    pub fn allows_modbus(&self, host: &str, port: u16) -> bool {
        allowed(&self.modbus, host, port)
    }
}

fn allowed(list: &[String], host: &str, port: u16) -> bool {
    list.iter().any(|entry| match split_host_port(entry) {
        Some((h, p)) => p == port && h.eq_ignore_ascii_case(host),
        None => false,
    })
}

/// Splits `host:port` (`[v6]:port` too). `None` if there is no valid port.
pub fn split_host_port(s: &str) -> Option<(&str, u16)> {
    let (host, port) = s.rsplit_once(':')?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if host.is_empty() {
        return None;
    }
    Some((host, port.parse().ok()?))
}

/// Resource limits of one plugin.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Real-time deadline of one call, host calls included (default 50 ms).
    #[serde(default = "default_deadline_ms")]
    pub deadline_ms: u64,
    /// Linear memory cap (default 32 MiB; a Rust guest needs about 1.1 MiB).
    #[serde(default = "default_memory_bytes")]
    pub memory_bytes: u64,
    /// Consecutive plugin-reported errors that mark it failed (default 3). Traps and timeouts
    /// mark it failed at once.
    #[serde(default = "default_max_consecutive_errors")]
    pub max_consecutive_errors: u32,
    /// The first restart delay after a failure, doubling up to `restart_backoff_max_ms`.
    #[serde(default = "default_backoff_min_ms")]
    pub restart_backoff_min_ms: u64,
    #[serde(default = "default_backoff_max_ms")]
    pub restart_backoff_max_ms: u64,
    /// The largest HTTP response body accepted, bytes (default 1 MiB).
    #[serde(default = "default_http_max_response_bytes")]
    pub http_max_response_bytes: usize,
}

fn default_deadline_ms() -> u64 {
    50
}
fn default_memory_bytes() -> u64 {
    32 * 1024 * 1024
}
fn default_max_consecutive_errors() -> u32 {
    3
}
fn default_backoff_min_ms() -> u64 {
    1_000
}
fn default_backoff_max_ms() -> u64 {
    300_000
}
fn default_http_max_response_bytes() -> usize {
    1024 * 1024
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            deadline_ms: default_deadline_ms(),
            memory_bytes: default_memory_bytes(),
            max_consecutive_errors: default_max_consecutive_errors(),
            restart_backoff_min_ms: default_backoff_min_ms(),
            restart_backoff_max_ms: default_backoff_max_ms(),
            http_max_response_bytes: default_http_max_response_bytes(),
        }
    }
}

impl Limits {
    pub fn deadline(&self) -> Duration {
        Duration::from_millis(self.deadline_ms)
    }
}

impl PluginSpec {
    /// A spec with default grants (none) and limits.
    pub fn new(name: impl Into<String>, world: World) -> Self {
        PluginSpec {
            name: name.into(),
            world,
            config: serde_json::Map::new(),
            grants: Grants::default(),
            limits: Limits::default(),
        }
    }

    /// Checks what serde cannot: names, grant syntax, limit ranges.
    pub fn validate(&self) -> Result<(), PluginError> {
        let bad = |message: String| PluginError::Config {
            plugin: self.name.clone(),
            message,
        };
        if self.name.is_empty()
            || self.name.len() > 64
            || !self
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(bad(format!(
                "name {:?}: use 1-64 characters of A-Z, a-z, 0-9, '-' and '_'",
                self.name
            )));
        }
        for (kind, list) in [("http", &self.grants.http), ("modbus", &self.grants.modbus)] {
            for entry in list {
                if split_host_port(entry).is_none() {
                    return Err(bad(format!("grants.{kind}: {entry:?} is not host:port")));
                }
            }
        }
        let l = &self.limits;
        if !(1..=60_000).contains(&l.deadline_ms) {
            return Err(bad(format!(
                "limits.deadline_ms = {}: use 1..=60000",
                l.deadline_ms
            )));
        }
        if !(2 * 1024 * 1024..=1024 * 1024 * 1024).contains(&l.memory_bytes) {
            return Err(bad(format!(
                "limits.memory_bytes = {}: use 2 MiB..=1 GiB",
                l.memory_bytes
            )));
        }
        if l.max_consecutive_errors == 0 {
            return Err(bad(
                "limits.max_consecutive_errors must be at least 1".into()
            ));
        }
        if l.restart_backoff_min_ms > l.restart_backoff_max_ms {
            return Err(bad(
                "limits.restart_backoff_min_ms is above restart_backoff_max_ms".into(),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grants_match_host_and_port_exactly() {
        let g = Grants {
            http: vec!["Meter.local:80".into(), "[::1]:8080".into()],
            ..Grants::default()
        };
        assert!(g.allows_http("meter.local", 80));
        assert!(!g.allows_http("meter.local", 81));
        assert!(!g.allows_http("meter.local.evil", 80));
        assert!(g.allows_http("::1", 8080));
        assert!(
            !g.allows_modbus("meter.local", 80),
            "http grants are not modbus grants"
        );
    }

    #[test]
    fn spec_from_toml_with_defaults_and_unknown_keys_refused() {
        let spec: PluginSpec = toml::from_str(
            r#"
            name = "grid"
            world = "meter"
            config = { url = "http://127.0.0.1:80/api/v1/data" }
            grants = { http = ["127.0.0.1:80"] }
            "#,
        )
        .expect("valid spec");
        assert_eq!(spec.limits, Limits::default());
        assert_eq!(spec.limits.deadline_ms, 50);
        assert_eq!(spec.limits.memory_bytes, 32 << 20);
        assert_eq!(spec.grants.kv_max_bytes, 64 * 1024);
        spec.validate().expect("valid");

        let err = toml::from_str::<PluginSpec>("name = \"x\"\nworld = \"meter\"\nfiles = true\n")
            .expect_err("unknown key");
        assert!(err.to_string().contains("files"), "{err}");
    }

    #[test]
    fn validation_names_the_problem() {
        let mut spec = PluginSpec::new("bad name", World::Meter);
        assert!(matches!(spec.validate(), Err(PluginError::Config { .. })));
        spec.name = "ok".into();
        spec.grants.modbus = vec!["no-port".into()];
        let err = spec.validate().expect_err("bad grant");
        assert!(err.to_string().contains("grants.modbus"), "{err}");
        spec.grants.modbus.clear();
        spec.limits.deadline_ms = 0;
        assert!(spec.validate().is_err());
    }
}

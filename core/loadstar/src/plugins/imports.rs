//! The host functions a plugin can call, each checked against its grants. A denied call
//! returns `host-error.denied` to the plugin and is logged; nothing here traps or panics.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tracing::{debug, error, info, trace, warn};
use wasmtime::StoreLimits;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::bindings::{clock, config, http, kv, log, modbus, types};
use super::deadline::Ticker;
use super::spec::{Grants, Limits};
use crate::clock::Clock;
use crate::store::Store;

use types::HostError;

/// Longest log line kept, bytes.
const MAX_LOG_BYTES: usize = 4096;
/// Log lines per call; more are dropped (and counted) so a plugin cannot flood the log.
pub const LOG_LINES_PER_CALL: u32 = 100;
/// Longest key-value key, bytes.
const MAX_KEY_BYTES: usize = 256;
/// Most registers in one Modbus read (the protocol's own limit).
const MAX_REGISTERS: u16 = 125;

/// One plugin's key-value store: the sled records, mirrored in memory for reads and quota
/// accounting. Outlives instances (a restart keeps the data).
pub struct Kv {
    plugin: String,
    store: Arc<dyn Store>,
    entries: BTreeMap<String, Vec<u8>>,
    bytes: u64,
}

impl Kv {
    pub fn load(plugin: &str, store: Arc<dyn Store>) -> Result<Self, crate::store::StoreError> {
        let entries: BTreeMap<String, Vec<u8>> =
            store.plugin_kv_entries(plugin)?.into_iter().collect();
        let bytes = entries
            .iter()
            .map(|(k, v)| (k.len() + v.len()) as u64)
            .sum();
        Ok(Kv {
            plugin: plugin.to_string(),
            store,
            entries,
            bytes,
        })
    }
}

/// Counters the host functions bump, shared with the plugin's status.
#[derive(Debug, Default)]
pub struct Counters {
    pub denied: AtomicU64,
    pub logs_dropped: AtomicU64,
}

/// What a plugin may use, shared by all its instances.
pub struct Capabilities {
    pub name: Arc<str>,
    pub grants: Grants,
    pub limits: Limits,
    pub config_json: String,
    pub config: serde_json::Map<String, serde_json::Value>,
    pub clock: Clock,
    pub kv: Mutex<Kv>,
    pub counters: Counters,
    pub ticker: Arc<Ticker>,
}

/// The data of one plugin instance's wasmtime `Store`.
pub struct PluginState {
    pub caps: Arc<Capabilities>,
    pub wasi: WasiCtx,
    pub table: ResourceTable,
    pub limits: StoreLimits,
    /// The wasm's stderr (where a Rust guest's panic message goes), kept for error reports.
    pub stderr: MemoryOutputPipe,
    /// The real-time deadline of the call in progress.
    pub deadline: Instant,
    pub log_budget: u32,
}

impl WasiView for PluginState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl PluginState {
    fn name(&self) -> &str {
        &self.caps.name
    }

    fn deny(&self, capability: &'static str, what: &str) -> HostError {
        self.caps.counters.denied.fetch_add(1, Ordering::Relaxed);
        warn!(plugin = %self.name(), capability, target = %what, "plugin call denied: not granted by the site file");
        HostError::Denied(format!(
            "{capability} to {what} is not granted to this plugin"
        ))
    }

    /// The time this host call may take: what is left of the call's deadline, and at most
    /// `requested_ms` if the plugin asked for less.
    fn call_budget(&self, requested_ms: Option<u32>) -> Instant {
        let left = self.deadline;
        match requested_ms {
            Some(ms) => left.min(Instant::now() + Duration::from_millis(u64::from(ms))),
            None => left,
        }
    }

    async fn modbus_read(
        &mut self,
        target: modbus::Target,
        address: u16,
        count: u16,
        input: bool,
    ) -> Result<Vec<u16>, HostError> {
        let Some((host, port)) = super::spec::split_host_port(&target.endpoint) else {
            return Err(HostError::Invalid(format!(
                "endpoint {:?} is not host:port",
                target.endpoint
            )));
        };
        if !self.caps.grants.allows_modbus(host, port) {
            return Err(self.deny("modbus", &target.endpoint));
        }
        if count == 0 || count > MAX_REGISTERS {
            return Err(HostError::Invalid(format!(
                "count {count}: read 1..={MAX_REGISTERS} registers"
            )));
        }
        if u32::from(address) + u32::from(count) > 0x1_0000 {
            return Err(HostError::Invalid(format!(
                "registers {address}+{count} run past 65535"
            )));
        }
        let deadline = self.call_budget(None);
        let endpoint = target.endpoint.clone();
        let unit = target.unit;
        let read = async move {
            let addr = resolve(host_of(&endpoint), port).await?;
            let mut ctx = tokio_modbus::client::tcp::connect_slave(addr, tokio_modbus::Slave(unit))
                .await
                .map_err(|e| HostError::Failed(format!("connect to {endpoint}: {e}")))?;
            use tokio_modbus::client::{Client, Reader};
            let result = if input {
                ctx.read_input_registers(address, count).await
            } else {
                ctx.read_holding_registers(address, count).await
            };
            let _ = ctx.disconnect().await;
            match result {
                Ok(Ok(words)) if words.len() == usize::from(count) => Ok(words),
                Ok(Ok(words)) => Err(HostError::Failed(format!(
                    "asked for {count} registers, got {}",
                    words.len()
                ))),
                Ok(Err(exception)) => {
                    Err(HostError::Failed(format!("modbus exception: {exception}")))
                }
                Err(e) => Err(HostError::Failed(format!("modbus: {e}"))),
            }
        };
        let result = self
            .caps
            .ticker
            .race(deadline, read)
            .await
            .unwrap_or(Err(HostError::Timeout));
        if let Err(e) = &result {
            debug!(plugin = %self.name(), endpoint = %target.endpoint, error = ?e, "plugin modbus read failed");
        }
        result
    }
}

fn host_of(endpoint: &str) -> &str {
    super::spec::split_host_port(endpoint)
        .map(|(h, _)| h)
        .unwrap_or(endpoint)
}

async fn resolve(host: &str, port: u16) -> Result<SocketAddr, HostError> {
    tokio::net::lookup_host((host, port))
        .await
        .map_err(|e| HostError::Failed(format!("resolve {host}: {e}")))?
        .next()
        .ok_or_else(|| HostError::Failed(format!("{host} has no address")))
}

impl types::Host for PluginState {}

impl log::Host for PluginState {
    async fn log(&mut self, level: log::Level, message: String) {
        if self.log_budget == 0 {
            self.caps
                .counters
                .logs_dropped
                .fetch_add(1, Ordering::Relaxed);
            return;
        }
        self.log_budget -= 1;
        let message = truncate(&message, MAX_LOG_BYTES);
        let plugin = self.name();
        match level {
            log::Level::Trace => trace!(target: "loadstar::plugins::guest", plugin, "{message}"),
            log::Level::Debug => debug!(target: "loadstar::plugins::guest", plugin, "{message}"),
            log::Level::Info => info!(target: "loadstar::plugins::guest", plugin, "{message}"),
            log::Level::Warn => warn!(target: "loadstar::plugins::guest", plugin, "{message}"),
            log::Level::Error => error!(target: "loadstar::plugins::guest", plugin, "{message}"),
        }
    }
}

impl clock::Host for PluginState {
    async fn now(&mut self) -> i64 {
        self.caps.clock.now().timestamp_millis()
    }
}

impl config::Host for PluginState {
    async fn get(&mut self) -> String {
        self.caps.config_json.clone()
    }

    async fn get_key(&mut self, key: String) -> Option<String> {
        self.caps.config.get(&key).map(|v| v.to_string())
    }
}

impl kv::Host for PluginState {
    async fn get(&mut self, key: String) -> Result<Option<Vec<u8>>, HostError> {
        if self.caps.grants.kv_max_bytes == 0 {
            return Err(self.deny("kv", &key));
        }
        let kv = lock(&self.caps.kv);
        Ok(kv.entries.get(&key).cloned())
    }

    async fn set(&mut self, key: String, value: Vec<u8>) -> Result<(), HostError> {
        let grants = &self.caps.grants;
        if grants.kv_max_bytes == 0 {
            return Err(self.deny("kv", &key));
        }
        if key.is_empty() || key.len() > MAX_KEY_BYTES {
            return Err(HostError::Invalid(format!(
                "keys are 1..={MAX_KEY_BYTES} bytes"
            )));
        }
        let mut kv = lock(&self.caps.kv);
        let old = kv.entries.get(&key).map(|v| (key.len() + v.len()) as u64);
        let new_bytes =
            kv.bytes.saturating_sub(old.unwrap_or(0)) + (key.len() + value.len()) as u64;
        let new_keys = kv.entries.len() + usize::from(old.is_none());
        if new_bytes > grants.kv_max_bytes || new_keys > grants.kv_max_keys as usize {
            let (max_bytes, max_keys) = (grants.kv_max_bytes, grants.kv_max_keys);
            drop(kv);
            warn!(plugin = %self.name(), key = %truncate(&key, 64), max_bytes, max_keys, "plugin key-value write over quota refused");
            return Err(HostError::Quota(format!(
                "the write needs {new_bytes} bytes in {new_keys} keys; the quota is {max_bytes} bytes in {max_keys} keys"
            )));
        }
        let plugin = kv.plugin.clone();
        if let Err(e) = kv.store.plugin_kv_put(&plugin, &key, Some(&value)) {
            error!(plugin = %plugin, error = %e, "plugin key-value write failed in the store");
            return Err(HostError::Failed("the host's store failed".into()));
        }
        kv.bytes = new_bytes;
        kv.entries.insert(key, value);
        Ok(())
    }

    async fn delete(&mut self, key: String) -> Result<(), HostError> {
        if self.caps.grants.kv_max_bytes == 0 {
            return Err(self.deny("kv", &key));
        }
        let mut kv = lock(&self.caps.kv);
        let plugin = kv.plugin.clone();
        if kv.entries.contains_key(&key) {
            if let Err(e) = kv.store.plugin_kv_put(&plugin, &key, None) {
                error!(plugin = %plugin, error = %e, "plugin key-value delete failed in the store");
                return Err(HostError::Failed("the host's store failed".into()));
            }
            if let Some(v) = kv.entries.remove(&key) {
                kv.bytes = kv.bytes.saturating_sub((key.len() + v.len()) as u64);
            }
        }
        Ok(())
    }

    async fn keys(&mut self) -> Result<Vec<String>, HostError> {
        if self.caps.grants.kv_max_bytes == 0 {
            return Err(self.deny("kv", "keys"));
        }
        Ok(lock(&self.caps.kv).entries.keys().cloned().collect())
    }
}

impl http::Host for PluginState {
    async fn fetch(&mut self, req: http::Request) -> Result<http::Response, HostError> {
        let url =
            super::http::parse_url(&req.url).map_err(|e| HostError::Invalid(e.to_string()))?;
        if !self.caps.grants.allows_http(&url.host, url.port) {
            return Err(self.deny("http", &format!("{}:{}", url.host, url.port)));
        }
        let deadline = self.call_budget(req.timeout_ms);
        let max_body = self.caps.limits.http_max_response_bytes;
        let send = super::http::send(
            &url,
            &req.method,
            &req.headers,
            req.body.as_deref(),
            max_body,
        );
        match self.caps.ticker.race(deadline, send).await {
            None => {
                debug!(plugin = %self.name(), host = %url.host, port = url.port, "plugin http request timed out");
                Err(HostError::Timeout)
            }
            Some(Err(super::http::HttpError::Invalid(why))) => Err(HostError::Invalid(why)),
            Some(Err(super::http::HttpError::Failed(why))) => {
                debug!(plugin = %self.name(), host = %url.host, port = url.port, error = %why, "plugin http request failed");
                Err(HostError::Failed(why))
            }
            Some(Ok(response)) => Ok(http::Response {
                status: response.status,
                headers: response.headers,
                body: response.body,
            }),
        }
    }
}

impl modbus::Host for PluginState {
    async fn read_holding(
        &mut self,
        target: modbus::Target,
        address: u16,
        count: u16,
    ) -> Result<Vec<u16>, HostError> {
        self.modbus_read(target, address, count, false).await
    }

    async fn read_input(
        &mut self,
        target: modbus::Target,
        address: u16,
        count: u16,
    ) -> Result<Vec<u16>, HostError> {
        self.modbus_read(target, address, count, true).await
    }
}

/// A poisoned lock only means another call panicked mid-update of plain data; the data is
/// still consistent enough to read (each update is a few assignments), so carry on.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// At most `max` bytes of `s`, cut at a character boundary, with a marker when cut.
pub fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} bytes in all)", &s[..end], s.len())
}

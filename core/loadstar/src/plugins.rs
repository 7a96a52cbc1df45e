//! The WebAssembly plugin host: meters and policies as wasmtime components
//! (`wit/loadstar-plugin@0.1.0`), sandboxed.
//!
//! - One [`PluginHost`] per process: one `Engine` (epoch interruption on), one `Linker`, one
//!   epoch ticker thread, and the precompiled-artifact cache ([`cache`]).
//! - Loading a plugin compiles it once (or loads the artifact this host wrote) and builds an
//!   `InstancePre`; instantiating from it is cheap, so a failed instance is simply replaced.
//! - Every call runs under a real-time deadline (default 50 ms; [`deadline`]) and a memory cap
//!   (`StoreLimits`, default 32 MiB). Host calls share the call's deadline.
//! - No ambient WASI: the WASI context has no files, env, args, sockets or name lookup; its
//!   wall clock is the controller's [`Clock`]. Capabilities come only through our imports,
//!   each checked against the plugin's [`Grants`].
//! - A trap or a timeout drops the instance and marks the plugin failed; so do
//!   `max_consecutive_errors` errors in a row. A failed plugin is re-instantiated after a
//!   backoff (doubling, capped); calls during the backoff fail fast with
//!   [`PluginError::BackingOff`]. [`PluginStatus`] is the typed health for the API.
//!
//! What the controller does with a failure (worst-case load for a missing grid meter, the
//! last constraints until they end for a failed policy) is the control loop's job; this module
//! only guarantees that a failure is reported as an error and never reaches the host.

pub mod bindings;
pub mod cache;
pub mod deadline;
mod error;
pub mod http;
mod imports;
pub mod lines;
mod lower;
pub mod set;
pub mod spec;

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tracing::{info, warn};
use wasmtime::component::{Component, Func, HasSelf, Linker, ResourceTable, TypedFunc};
use wasmtime::{Config, Engine, StoreLimitsBuilder, UpdateDeadline};
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{HostWallClock, WasiCtxBuilder};

pub use cache::CacheOutcome;
pub use error::PluginError;
pub use lines::{ReadingError, line_currents};
pub use set::{Loaded, PluginSet, ReloadReport};
pub use spec::{Grants, Limits, PluginSpec, World};

use bindings::meter::{Meter, MeterPre};
use bindings::policy::PolicyPre;
use imports::{Capabilities, Counters, Kv, PluginState};

use crate::clock::Clock;
use crate::store::Store;

/// The WIT types plugins exchange with the host.
pub mod wit {
    pub use super::bindings::types::{
        Constraints, EvseHint, EvseState, EvseStatus, HostError, LimitSlot, MeterReading, Node,
        PerLine, PriceForecast, PriceSlot, Reading, SiteSnapshot, SolarSlot, SolarSurplus,
    };
}

/// What a file is, from its first 8 bytes (the wasm preamble: magic, version, layer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WasmKind {
    /// A WebAssembly component (layer 1): what a plugin must be.
    Component,
    /// A core WebAssembly module (layer 0), e.g. built for `wasm32-unknown-unknown`.
    CoreModule,
    /// Not WebAssembly at all (or shorter than the preamble).
    NotWasm,
}

impl WasmKind {
    pub fn of(head: &[u8]) -> WasmKind {
        match head {
            [0x00, b'a', b's', b'm', _, _, 0x01, 0x00, ..] => WasmKind::Component,
            [0x00, b'a', b's', b'm', _, _, 0x00, 0x00, ..] => WasmKind::CoreModule,
            _ => WasmKind::NotWasm,
        }
    }
}

/// Most entries in each list of a policy's constraints.
pub const MAX_CONSTRAINT_ENTRIES: usize = 10_000;
/// Longest reason string a policy may give, bytes.
pub const MAX_REASON_BYTES: usize = 1024;
/// Longest plugin error message kept, bytes.
const MAX_ERROR_BYTES: usize = 1024;
/// Stderr a plugin may write per instance (a panic message, mostly), bytes.
const STDERR_BYTES: usize = 4096;

/// Settings of the host as a whole.
#[derive(Debug, Clone, Default)]
pub struct HostOptions {
    /// Where precompiled artifacts live (e.g. `<data dir>/plugin-cache`); `None` keeps them in
    /// memory only.
    pub cache_dir: Option<std::path::PathBuf>,
}

/// The process-wide plugin host.
pub struct PluginHost {
    engine: Engine,
    linker: Linker<PluginState>,
    ticker: Arc<deadline::Ticker>,
    cache: cache::ArtifactCache,
    compiled: Mutex<HashMap<[u8; 32], Component>>,
    store: Arc<dyn Store>,
    clock: Clock,
}

impl std::fmt::Debug for PluginHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginHost").finish_non_exhaustive()
    }
}

impl PluginHost {
    /// Builds the engine and starts the epoch ticker. `store` keeps the plugins' key-value
    /// data; `clock` is what plugins see as "now".
    pub fn new(
        options: HostOptions,
        store: Arc<dyn Store>,
        clock: Clock,
    ) -> Result<Self, PluginError> {
        let host_err = |what: &str, e: wasmtime::Error| PluginError::Host(format!("{what}: {e:#}"));
        let mut config = Config::new();
        config.wasm_component_model(true);
        config.epoch_interruption(true);
        let engine = Engine::new(&config).map_err(|e| host_err("engine", e))?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(|e| host_err("wasi", e))?;
        Meter::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s)
            .map_err(|e| host_err("imports", e))?;
        let ticker = deadline::Ticker::start(engine.clone())
            .map_err(|e| PluginError::Host(format!("epoch ticker thread: {e}")))?;
        let cache = match &options.cache_dir {
            Some(dir) => cache::ArtifactCache::open(&engine, dir)?,
            None => cache::ArtifactCache::in_memory(&engine),
        };
        Ok(PluginHost {
            engine,
            linker,
            ticker: Arc::new(ticker),
            cache,
            compiled: Mutex::new(HashMap::new()),
            store,
            clock,
        })
    }

    /// Compiles (or fetches) a component. Also reports where it came from.
    pub fn component(
        &self,
        name: &str,
        wasm: &[u8],
    ) -> Result<(Component, CacheOutcome), PluginError> {
        let hash = *blake3::hash(wasm).as_bytes();
        let mut compiled = self.compiled.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = compiled.get(&hash) {
            return Ok((c.clone(), CacheOutcome::Memory));
        }
        let (component, outcome) = self.cache.load(&self.engine, name, wasm)?;
        compiled.insert(hash, component.clone());
        Ok((component, outcome))
    }

    /// Forgets the compiled components this host holds in memory (plugins already loaded keep
    /// theirs); the next load comes from the disk cache or compiles. For reloads and benches.
    pub fn forget_compiled(&self) {
        self.compiled
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }

    fn prepare(
        &self,
        spec: &PluginSpec,
        wasm: &[u8],
    ) -> Result<
        (
            wasmtime::component::InstancePre<PluginState>,
            Arc<Capabilities>,
            CacheOutcome,
        ),
        PluginError,
    > {
        spec.validate()?;
        let (component, outcome) = self.component(&spec.name, wasm)?;
        let pre =
            self.linker
                .instantiate_pre(&component)
                .map_err(|e| PluginError::Instantiate {
                    plugin: spec.name.clone(),
                    message: format!("{e:#}"),
                })?;
        let kv = Kv::load(&spec.name, self.store.clone())
            .map_err(|e| PluginError::Host(format!("plugin `{}` key-value: {e}", spec.name)))?;
        let config_json = serde_json::Value::Object(spec.config.clone()).to_string();
        let caps = Arc::new(Capabilities {
            name: spec.name.as_str().into(),
            grants: spec.grants.clone(),
            limits: spec.limits.clone(),
            config_json,
            config: spec.config.clone(),
            clock: self.clock.clone(),
            kv: Mutex::new(kv),
            counters: Counters::default(),
            ticker: self.ticker.clone(),
        });
        Ok((pre, caps, outcome))
    }

    /// Loads a meter plugin. Fails if the component does not export the meter world.
    pub fn load_meter(&self, spec: PluginSpec, wasm: &[u8]) -> Result<MeterPlugin, PluginError> {
        let (pre, caps, outcome) = self.prepare(&spec, wasm)?;
        let pre = MeterPre::new(pre).map_err(|e| wrong_world(&spec, "meter", e))?;
        info!(plugin = %spec.name, world = "meter", source = ?outcome, "plugin loaded");
        Ok(MeterPlugin {
            runtime: Runtime::new(spec, caps, outcome),
            pre,
            live: None,
        })
    }

    /// Loads a policy plugin. Fails if the component does not export the policy world.
    pub fn load_policy(&self, spec: PluginSpec, wasm: &[u8]) -> Result<PolicyPlugin, PluginError> {
        let (pre, caps, outcome) = self.prepare(&spec, wasm)?;
        let pre = PolicyPre::new(pre).map_err(|e| wrong_world(&spec, "policy", e))?;
        info!(plugin = %spec.name, world = "policy", source = ?outcome, "plugin loaded");
        Ok(PolicyPlugin {
            runtime: Runtime::new(spec, caps, outcome),
            pre: FastPolicyPre(pre),
            live: None,
        })
    }
}

impl PluginHost {
    /// Replaces a meter's component and/or spec while Loadstar runs. The new one is compiled,
    /// linked and checked against the world first; on any error the old plugin stays exactly as
    /// it was. The key-value data (in the store, by name) and the status counters carry over.
    pub fn reload_meter(
        &self,
        plugin: &mut MeterPlugin,
        spec: PluginSpec,
        wasm: &[u8],
    ) -> Result<(), PluginError> {
        let mut new = self.load_meter(spec, wasm)?;
        new.runtime.carry_over(&plugin.runtime);
        info!(plugin = %new.runtime.name(), reloads = new.runtime.status.reloads, "plugin reloaded");
        *plugin = new;
        Ok(())
    }

    /// [`PluginHost::reload_meter`] for a policy.
    pub fn reload_policy(
        &self,
        plugin: &mut PolicyPlugin,
        spec: PluginSpec,
        wasm: &[u8],
    ) -> Result<(), PluginError> {
        let mut new = self.load_policy(spec, wasm)?;
        new.runtime.carry_over(&plugin.runtime);
        info!(plugin = %new.runtime.name(), reloads = new.runtime.status.reloads, "plugin reloaded");
        *plugin = new;
        Ok(())
    }
}

fn wrong_world(spec: &PluginSpec, world: &str, e: wasmtime::Error) -> PluginError {
    PluginError::Instantiate {
        plugin: spec.name.clone(),
        message: format!("the component does not implement the `{world}` world: {e:#}"),
    }
}

/// The controller's clock as WASI's wall clock, so `std::time::SystemTime` in a plugin agrees
/// with the clock import (and is virtual under simulation).
struct ControllerWallClock(Clock);

impl HostWallClock for ControllerWallClock {
    fn resolution(&self) -> Duration {
        Duration::from_millis(1)
    }

    fn now(&self) -> Duration {
        let ms = self.0.now().timestamp_millis().max(0);
        Duration::from_millis(ms.unsigned_abs())
    }
}

// ------------------------------------------------------------------------------- health

/// A plugin's health, for the API and the control loop.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum PluginHealth {
    /// Loaded; not called yet.
    Loaded,
    /// The last call succeeded.
    Healthy,
    /// The last calls returned errors, fewer than `max_consecutive_errors` in a row.
    Degraded { consecutive_errors: u32 },
    /// Trapped, timed out, or erred too often: calls fail until the restart at `retry_in_ms`
    /// (from when the status was read).
    Failed {
        consecutive_failures: u32,
        retry_in_ms: u64,
    },
}

/// The typed status of one plugin.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct PluginStatus {
    pub name: String,
    pub world: World,
    pub health: PluginHealth,
    pub calls: u64,
    pub errors: u64,
    pub traps: u64,
    pub timeouts: u64,
    pub restarts: u64,
    /// Replacements of the component or spec while running.
    pub reloads: u64,
    /// Host calls refused because the site file does not grant them.
    pub denied_calls: u64,
    /// Log lines dropped over the per-call budget.
    pub logs_dropped: u64,
    pub last_error: Option<String>,
    /// Where the compiled code came from at load.
    #[serde(skip)]
    pub loaded_from: CacheOutcome,
}

/// What one call came to, before health bookkeeping.
enum Outcome<T> {
    Ok(T),
    Err(PluginError),
}

/// The world-independent state of one loaded plugin.
struct Runtime {
    spec: PluginSpec,
    caps: Arc<Capabilities>,
    consecutive_errors: u32,
    consecutive_failures: u32,
    retry_at: Option<Instant>,
    status: PluginStatus,
}

impl Runtime {
    fn new(spec: PluginSpec, caps: Arc<Capabilities>, outcome: CacheOutcome) -> Self {
        let status = PluginStatus {
            name: spec.name.clone(),
            world: spec.world,
            health: PluginHealth::Loaded,
            calls: 0,
            errors: 0,
            traps: 0,
            timeouts: 0,
            restarts: 0,
            reloads: 0,
            denied_calls: 0,
            logs_dropped: 0,
            last_error: None,
            loaded_from: outcome,
        };
        Runtime {
            spec,
            caps,
            consecutive_errors: 0,
            consecutive_failures: 0,
            retry_at: None,
            status,
        }
    }

    fn name(&self) -> &str {
        &self.spec.name
    }

    /// Keeps the cumulative counters of the plugin this one replaces. Health starts afresh:
    /// the new code has not failed yet.
    fn carry_over(&mut self, old: &Runtime) {
        let (s, o) = (&mut self.status, &old.status);
        s.calls = o.calls;
        s.errors = o.errors;
        s.traps = o.traps;
        s.timeouts = o.timeouts;
        s.restarts = o.restarts;
        s.reloads = o.reloads + 1;
        s.last_error = o.last_error.clone();
    }

    fn deadline_ms(&self) -> u64 {
        self.spec.limits.deadline_ms
    }

    /// Refuses the call while a restart is pending.
    fn check_backoff(&self) -> Result<(), PluginError> {
        if let Some(at) = self.retry_at {
            let now = Instant::now();
            if now < at {
                return Err(PluginError::BackingOff {
                    plugin: self.name().to_string(),
                    retry_in_ms: millis(at - now),
                    last_error: self.status.last_error.clone().unwrap_or_default(),
                });
            }
        }
        Ok(())
    }

    /// A fresh store for an instance: limits, WASI without ambient authority, deadline hook.
    fn new_store(&self, engine: &Engine) -> wasmtime::Store<PluginState> {
        let stderr = MemoryOutputPipe::new(STDERR_BYTES);
        let mut wasi = WasiCtxBuilder::new();
        wasi.allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .stderr(stderr.clone())
            .wall_clock(ControllerWallClock(self.caps.clock.clone()));
        let memory = usize::try_from(self.spec.limits.memory_bytes).unwrap_or(usize::MAX);
        let limits = StoreLimitsBuilder::new()
            .memory_size(memory)
            .memories(16)
            .tables(64)
            .table_elements(100_000)
            .instances(64)
            .trap_on_grow_failure(true)
            .build();
        let state = PluginState {
            caps: self.caps.clone(),
            wasi: wasi.build(),
            table: ResourceTable::new(),
            limits,
            stderr,
            deadline: Instant::now(),
            log_budget: 0,
        };
        let mut store = wasmtime::Store::new(engine, state);
        store.limiter(|s| &mut s.limits);
        // At every epoch tick: past the real-time deadline, interrupt (a trap); otherwise
        // yield to the executor and check again at the next tick.
        store.epoch_deadline_callback(|ctx| {
            if Instant::now() >= ctx.data().deadline {
                Ok(UpdateDeadline::Interrupt)
            } else {
                Ok(UpdateDeadline::Yield(1))
            }
        });
        store
    }

    /// Arms the deadline for one call (instantiation included).
    fn arm(&self, store: &mut wasmtime::Store<PluginState>) -> Instant {
        let deadline = Instant::now() + self.spec.limits.deadline();
        let data = store.data_mut();
        data.deadline = deadline;
        data.log_budget = imports::LOG_LINES_PER_CALL;
        store.set_epoch_deadline(1);
        deadline
    }

    /// Maps a wasmtime error from a call (or instantiation) to ours.
    fn trap(
        &self,
        store: Option<&wasmtime::Store<PluginState>>,
        e: &wasmtime::Error,
    ) -> PluginError {
        if matches!(
            e.downcast_ref::<wasmtime::Trap>(),
            Some(wasmtime::Trap::Interrupt)
        ) {
            return self.timeout();
        }
        let mut message = format!("{e:#}");
        if let Some(store) = store {
            let stderr = store.data().stderr.contents();
            let stderr = String::from_utf8_lossy(&stderr);
            let stderr = stderr.trim();
            if !stderr.is_empty() {
                message.push_str(&format!(" (stderr: {stderr})"));
            }
        }
        PluginError::Trap {
            plugin: self.name().to_string(),
            message: imports::truncate(&message, MAX_ERROR_BYTES),
        }
    }

    /// The error for a call cut off by its deadline.
    fn timeout(&self) -> PluginError {
        PluginError::Timeout {
            plugin: self.name().to_string(),
            deadline_ms: self.deadline_ms(),
        }
    }

    /// What a guest call raced against its deadline came to: cut off, trapped, the plugin's
    /// own error, or a value that `check` accepts.
    fn outcome<T>(
        &self,
        raw: Option<wasmtime::Result<Result<T, String>>>,
        store: &wasmtime::Store<PluginState>,
        check: impl FnOnce(&T) -> Result<(), String>,
    ) -> Outcome<T> {
        match raw {
            None => Outcome::Err(self.timeout()),
            Some(Err(e)) => Outcome::Err(self.trap(Some(store), &e)),
            Some(Ok(Err(message))) => Outcome::Err(self.plugin_error(message)),
            Some(Ok(Ok(value))) => match check(&value) {
                Ok(()) => Outcome::Ok(value),
                Err(why) => Outcome::Err(self.invalid(why)),
            },
        }
    }

    /// Health bookkeeping after a call. Returns whether the instance must be dropped.
    fn settle<T>(&mut self, outcome: Outcome<T>) -> (Result<T, PluginError>, bool) {
        self.status.calls += 1;
        self.status.denied_calls = self.caps.counters.denied.load(Ordering::Relaxed);
        self.status.logs_dropped = self.caps.counters.logs_dropped.load(Ordering::Relaxed);
        match outcome {
            Outcome::Ok(value) => {
                self.consecutive_errors = 0;
                self.consecutive_failures = 0;
                self.status.health = PluginHealth::Healthy;
                (Ok(value), false)
            }
            Outcome::Err(err) => {
                self.status.errors += 1;
                self.status.last_error = Some(err.to_string());
                let poisoned = err.poisons_instance();
                match &err {
                    PluginError::Timeout { .. } => self.status.timeouts += 1,
                    PluginError::Trap { .. } => self.status.traps += 1,
                    _ => {}
                }
                self.consecutive_errors += 1;
                let failed =
                    poisoned || self.consecutive_errors >= self.spec.limits.max_consecutive_errors;
                if failed {
                    self.consecutive_failures += 1;
                    self.consecutive_errors = 0;
                    let backoff = self.backoff();
                    self.retry_at = Some(Instant::now() + backoff);
                    self.status.health = PluginHealth::Failed {
                        consecutive_failures: self.consecutive_failures,
                        retry_in_ms: millis(backoff),
                    };
                    warn!(plugin = %self.name(), error = %err, backoff_ms = millis(backoff), failures = self.consecutive_failures, "plugin failed; restarting after backoff");
                } else {
                    self.status.health = PluginHealth::Degraded {
                        consecutive_errors: self.consecutive_errors,
                    };
                    warn!(plugin = %self.name(), error = %err, "plugin call failed");
                }
                (Err(err), failed)
            }
        }
    }

    fn backoff(&self) -> Duration {
        let l = &self.spec.limits;
        let exp = self.consecutive_failures.saturating_sub(1).min(20);
        let ms = l.restart_backoff_min_ms.saturating_mul(1u64 << exp);
        Duration::from_millis(ms.min(l.restart_backoff_max_ms))
    }

    fn status(&self) -> PluginStatus {
        let mut status = self.status.clone();
        status.denied_calls = self.caps.counters.denied.load(Ordering::Relaxed);
        status.logs_dropped = self.caps.counters.logs_dropped.load(Ordering::Relaxed);
        if let (PluginHealth::Failed { retry_in_ms, .. }, Some(at)) =
            (&mut status.health, self.retry_at)
        {
            *retry_in_ms = millis(at.saturating_duration_since(Instant::now()));
        }
        status
    }

    fn plugin_error(&self, message: String) -> PluginError {
        PluginError::Plugin {
            plugin: self.name().to_string(),
            message: imports::truncate(&message, MAX_ERROR_BYTES),
        }
    }

    fn invalid(&self, message: String) -> PluginError {
        PluginError::InvalidOutput {
            plugin: self.name().to_string(),
            message,
        }
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// One live instance: its store and its exports.
struct Live<E> {
    store: wasmtime::Store<PluginState>,
    exports: E,
}

/// Instantiates under the call deadline (a component's start code runs here).
macro_rules! ensure_live {
    ($self:ident) => {{
        $self.runtime.check_backoff()?;
        if $self.live.is_none() {
            if $self.runtime.retry_at.take().is_some() {
                $self.runtime.status.restarts += 1;
                info!(plugin = %$self.runtime.name(), "plugin restarting");
            }
            let mut store = $self.runtime.new_store($self.pre.engine());
            let deadline = $self.runtime.arm(&mut store);
            let ticker = $self.runtime.caps.ticker.clone();
            let result = ticker.race(deadline, $self.pre.instantiate_async(&mut store)).await;
            let exports = match result {
                Some(Ok(exports)) => exports,
                Some(Err(e)) => {
                    let err = match $self.runtime.trap(Some(&store), &e) {
                        PluginError::Trap { plugin, message } => PluginError::Instantiate { plugin, message },
                        other => other,
                    };
                    let (result, _) = $self.runtime.settle::<()>(Outcome::Err(err));
                    return Err(result.err().unwrap_or_else(|| PluginError::Host("instantiation".into())));
                }
                None => {
                    let err = $self.runtime.timeout();
                    let (result, _) = $self.runtime.settle::<()>(Outcome::Err(err));
                    return Err(result.err().unwrap_or_else(|| PluginError::Host("instantiation".into())));
                }
            };
            $self.live = Some(Live { store, exports });
        }
    }};
}

// ------------------------------------------------------------------------------- meter

/// A loaded meter plugin. Owned by whoever reads the meter; calls take `&mut self`.
pub struct MeterPlugin {
    runtime: Runtime,
    pre: MeterPre<PluginState>,
    live: Option<Live<Meter>>,
}

impl MeterPlugin {
    /// One reading. Every error is typed; a trap or timeout also restarts the plugin later.
    pub async fn read(&mut self) -> Result<wit::Reading, PluginError> {
        ensure_live!(self);
        let Some(live) = self.live.as_mut() else {
            return Err(PluginError::Host("no live instance".into()));
        };
        let deadline = self.runtime.arm(&mut live.store);
        let ticker = self.runtime.caps.ticker.clone();
        let raw = ticker
            .race(deadline, live.exports.call_read(&mut live.store))
            .await;
        let outcome = self.runtime.outcome(raw, &live.store, check_reading);
        let (result, drop_instance) = self.runtime.settle(outcome);
        if drop_instance {
            self.live = None;
        }
        result
    }

    /// Replaces the instance with a fresh one now (from the `InstancePre`, under the call
    /// deadline), so the next call pays no instantiation. Fails fast during a backoff.
    pub async fn instantiate(&mut self) -> Result<(), PluginError> {
        self.live = None;
        ensure_live!(self);
        Ok(())
    }

    pub fn status(&self) -> PluginStatus {
        self.runtime.status()
    }
}

fn finite(name: &str, v: Option<f64>) -> Result<(), String> {
    match v {
        Some(x) if !x.is_finite() => Err(format!("{name} is not a finite number ({x})")),
        _ => Ok(()),
    }
}

fn finite_lines(name: &str, p: &wit::PerLine) -> Result<(), String> {
    finite(&format!("{name}.l1"), p.l1)?;
    finite(&format!("{name}.l2"), p.l2)?;
    finite(&format!("{name}.l3"), p.l3)
}

fn check_reading(r: &wit::Reading) -> Result<(), String> {
    finite_lines("current", &r.current)?;
    finite_lines("voltage", &r.voltage)?;
    finite_lines("power", &r.power)?;
    finite("total-power", r.total_power)?;
    finite("energy-import", r.energy_import)?;
    finite("energy-export", r.energy_export)
}

// ------------------------------------------------------------------------------ policy

/// The `evaluate` signature with the snapshot lowered by [`lower::SnapshotArg`].
type Evaluate<'a> = TypedFunc<(lower::SnapshotArg<'a>,), (Result<wit::Constraints, String>,)>;

/// A policy's `InstancePre` (the world checked at load) whose instances call `evaluate`
/// through [`Evaluate`] rather than the generated bindings.
struct FastPolicyPre(PolicyPre<PluginState>);

/// A policy instance's export, type-checked against [`Evaluate`] at instantiation.
struct PolicyExports {
    evaluate: Func,
}

impl FastPolicyPre {
    fn engine(&self) -> &Engine {
        self.0.engine()
    }

    async fn instantiate_async(
        &self,
        store: &mut wasmtime::Store<PluginState>,
    ) -> wasmtime::Result<PolicyExports> {
        let instance = self.0.instance_pre().instantiate_async(&mut *store).await?;
        let evaluate = instance
            .get_func(&mut *store, "evaluate")
            .ok_or_else(|| wasmtime::format_err!("the component exports no `evaluate`"))?;
        let evaluate = *evaluate
            .typed::<(lower::SnapshotArg<'_>,), (Result<wit::Constraints, String>,)>(&*store)?
            .func();
        Ok(PolicyExports { evaluate })
    }
}

/// A loaded policy plugin.
pub struct PolicyPlugin {
    runtime: Runtime,
    pre: FastPolicyPre,
    live: Option<Live<PolicyExports>>,
}

impl PolicyPlugin {
    /// The constraints for `snapshot`, checked (sizes, finite values, time order).
    pub async fn evaluate(
        &mut self,
        snapshot: &wit::SiteSnapshot,
    ) -> Result<wit::Constraints, PluginError> {
        ensure_live!(self);
        let Some(live) = self.live.as_mut() else {
            return Err(PluginError::Host("no live instance".into()));
        };
        let deadline = self.runtime.arm(&mut live.store);
        let ticker = self.runtime.caps.ticker.clone();
        // SAFETY: `evaluate` was type-checked for this signature at instantiation; `Evaluate`
        // differs only in the lifetime of the borrowed snapshot.
        let evaluate = unsafe { Evaluate::new_unchecked(live.exports.evaluate) };
        let call = async {
            let (result,) = evaluate
                .call_async(&mut live.store, (lower::SnapshotArg::new(snapshot),))
                .await?;
            Ok(result)
        };
        let raw = ticker.race(deadline, call).await;
        let outcome = self.runtime.outcome(raw, &live.store, check_constraints);
        let (result, drop_instance) = self.runtime.settle(outcome);
        if drop_instance {
            self.live = None;
        }
        result
    }

    /// Replaces the instance with a fresh one now (from the `InstancePre`, under the call
    /// deadline), so the next call pays no instantiation. Fails fast during a backoff.
    pub async fn instantiate(&mut self) -> Result<(), PluginError> {
        self.live = None;
        ensure_live!(self);
        Ok(())
    }

    pub fn status(&self) -> PluginStatus {
        self.runtime.status()
    }
}

fn check_window(what: &str, start: i64, end: i64, reason: &str) -> Result<(), String> {
    if end <= start {
        return Err(format!("{what}: end {end} is not after start {start}"));
    }
    if reason.len() > MAX_REASON_BYTES {
        return Err(format!(
            "{what}: reason of {} bytes (at most {MAX_REASON_BYTES})",
            reason.len()
        ));
    }
    Ok(())
}

fn check_constraints(c: &wit::Constraints) -> Result<(), String> {
    for (what, n) in [
        ("limits", c.limits.len()),
        ("prices", c.prices.len()),
        ("solar", c.solar.len()),
        ("hints", c.hints.len()),
    ] {
        if n > MAX_CONSTRAINT_ENTRIES {
            return Err(format!(
                "{n} {what} entries (at most {MAX_CONSTRAINT_ENTRIES})"
            ));
        }
    }
    for l in &c.limits {
        check_window("limit", l.start, l.end, &l.reason)?;
        finite_lines("limit", &l.limit)?;
        for a in [l.limit.l1, l.limit.l2, l.limit.l3].into_iter().flatten() {
            if a < 0.0 {
                return Err(format!("limit on {}: {a} A is negative", l.node));
            }
        }
    }
    for p in &c.prices {
        check_window("price", p.start, p.end, &p.reason)?;
        finite("price", Some(p.price))?;
    }
    for s in &c.solar {
        check_window("solar", s.start, s.end, &s.reason)?;
        finite_lines("solar", &s.surplus)?;
    }
    for h in &c.hints {
        if h.reason.len() > MAX_REASON_BYTES {
            return Err(format!("hint for {}: reason too long", h.evse));
        }
        finite("weight", h.weight)?;
        if h.weight.is_some_and(|w| w < 0.0) {
            return Err(format!("hint for {}: negative weight", h.evse));
        }
    }
    Ok(())
}

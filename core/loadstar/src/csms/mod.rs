//! The CSMS shell: accepts stations' WebSockets and moves frames between each socket and its
//! sans-IO [`loadstar_ocpp::Endpoint`].
//!
//! Invariants:
//! - one task per connection; every queue is bounded;
//! - protocol decisions live in `loadstar-ocpp`; this module only does IO, auth and dispatch to
//!   the handlers, which update [`crate::state`] and [`crate::store`];
//! - a connection that dies leaves consistent state: its pending calls fail with `Closed`, the
//!   station is marked disconnected, sessions stay open until the station ends them;
//! - a second connection with the same station id replaces the first only after it has
//!   authenticated.

mod connection;
mod handlers;
mod handshake;
pub mod setup;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use loadstar_ocpp::rpc::CallFailure;
use loadstar_ocpp::{OcppVersion, Priority, Request};
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tracing::{info, warn};

use crate::clock::Clock;
use crate::state::SiteState;
use crate::store::Store;

/// How the CSMS behaves; built from the site file.
#[derive(Debug, Clone)]
pub struct CsmsConfig {
    /// Heartbeat interval given to stations in the BootNotification answer.
    pub heartbeat_interval: Duration,
    /// Largest WebSocket message accepted.
    pub max_frame_bytes: usize,
    /// How long to wait for a station to answer one of our calls.
    pub call_timeout: Duration,
    /// The MeterValues sample interval configured at boot.
    pub meter_interval: Duration,
    /// How often we ping each station; a station silent for 3 intervals is dropped.
    pub ping_interval: Duration,
    /// How id tags are authorized.
    pub authorization: Authorization,
    /// Capacity of each connection's command queue.
    pub command_queue: usize,
    /// The current (A per phase) stations unknown to the site file are held at until adopted.
    pub unknown_station_current_a: f64,
}

impl Default for CsmsConfig {
    fn default() -> Self {
        CsmsConfig {
            heartbeat_interval: Duration::from_secs(300),
            max_frame_bytes: 1 << 20,
            call_timeout: Duration::from_secs(30),
            meter_interval: Duration::from_secs(10),
            ping_interval: Duration::from_secs(60),
            authorization: Authorization::AcceptAll,
            command_queue: 64,
            unknown_station_current_a: 0.0,
        }
    }
}

/// How id tags (RFID cards, app tokens) are authorized.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Authorization {
    /// Every tag is accepted (free car parks).
    AcceptAll,
    /// Only tags on the list are accepted (upper case; see [`Authorization::local_list`]).
    LocalList(HashSet<String>),
}

impl Authorization {
    /// A local list. OCPP id tags are case-insensitive (1.6 `CiString20Type`, 2.0.1
    /// `identifierString`), so the list is kept in upper case.
    pub fn local_list<'a>(tags: impl IntoIterator<Item = &'a String>) -> Self {
        Authorization::LocalList(tags.into_iter().map(|t| t.to_uppercase()).collect())
    }

    pub fn accepts(&self, id_tag: &str) -> bool {
        match self {
            Authorization::AcceptAll => true,
            Authorization::LocalList(tags) => tags.contains(&id_tag.to_uppercase()),
        }
    }
}

/// The answer of the station directory to a connecting station.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// A station of the site file with the right credentials.
    Known,
    /// Not in the site file, but the site admits unknown stations (held at a safe current).
    Unknown,
    /// Refused: unknown station and the site does not admit unknown stations.
    NotFound,
    /// Credentials missing or wrong.
    Unauthorized,
}

/// Decides who may connect. Implemented by the site configuration.
pub trait StationDirectory: Send + Sync + 'static {
    /// `password` is the Basic-auth password, if the station sent one.
    fn admit(&self, station_id: &str, password: Option<&str>) -> Admission;
}

/// Why a typed call to a station failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CallError {
    #[error("station {0} is not connected")]
    NotConnected(String),
    #[error("station {station} speaks {actual}, not {expected}")]
    WrongVersion {
        station: String,
        expected: OcppVersion,
        actual: OcppVersion,
    },
    #[error("call refused locally: {0}")]
    Local(String),
    #[error(transparent)]
    Failed(#[from] CallFailure),
    #[error("cannot decode the station's answer: {0}")]
    Decode(String),
}

pub(crate) enum Command {
    /// Boxed so the channel's slots stay small: tokio allocates them in blocks of 32 per
    /// connection.
    Call(Box<OutgoingCall>),
}

pub(crate) struct OutgoingCall {
    pub action: &'static str,
    pub payload: Value,
    pub priority: Priority,
    pub reply: oneshot::Sender<Result<Value, CallError>>,
}

/// A handle to one connected station: make typed calls and await their result.
#[derive(Clone, Debug)]
pub struct StationHandle {
    station_id: Arc<str>,
    version: OcppVersion,
    generation: u64,
    commands: mpsc::Sender<Command>,
    /// Tells the connection to close; separate from `commands` so that it is delivered even
    /// when a stuck connection's command queue is full.
    closer: Arc<tokio::sync::Notify>,
}

impl StationHandle {
    pub fn station_id(&self) -> &str {
        &self.station_id
    }

    pub fn version(&self) -> OcppVersion {
        self.version
    }

    /// Tells connections apart: a reconnect of the same station gets a new, higher number.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Sends a typed CALL and awaits the typed answer. The connection's endpoint validates the
    /// payload, queues it by priority and applies the call timeout.
    pub async fn call<T: Request>(
        &self,
        request: &T,
        priority: Priority,
    ) -> Result<T::Response, CallError> {
        if T::VERSION != self.version {
            return Err(CallError::WrongVersion {
                station: self.station_id.to_string(),
                expected: T::VERSION,
                actual: self.version,
            });
        }
        let payload = serde_json::to_value(request).map_err(|e| CallError::Local(e.to_string()))?;
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(Command::Call(Box::new(OutgoingCall {
                action: T::ACTION,
                payload,
                priority,
                reply,
            })))
            .await
            .map_err(|_| CallError::NotConnected(self.station_id.to_string()))?;
        let value = answer
            .await
            .map_err(|_| CallError::NotConnected(self.station_id.to_string()))??;
        serde_json::from_value(value).map_err(|e| CallError::Decode(e.to_string()))
    }
}

pub(crate) struct Shared {
    /// Replaced when the site file is reloaded; a connection reads it when it needs it.
    settings: std::sync::RwLock<Arc<CsmsConfig>>,
    /// Replaced when the site file is reloaded; a handshake checks the one in force.
    directory: std::sync::RwLock<Arc<dyn StationDirectory>>,
    pub state: Arc<Mutex<SiteState>>,
    pub store: Arc<dyn Store>,
    pub clock: Clock,
    /// Woken on events the control loop reacts to at once (a session starts or ends).
    pub events: Arc<tokio::sync::Notify>,
    registry: Mutex<HashMap<String, StationHandle>>,
    generations: AtomicU64,
}

impl Shared {
    pub fn state(&self) -> MutexGuard<'_, SiteState> {
        // A panic while holding the lock would be a bug; the state itself stays usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn config(&self) -> Arc<CsmsConfig> {
        self.settings
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn directory(&self) -> Arc<dyn StationDirectory> {
        self.directory
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn registry(&self) -> MutexGuard<'_, HashMap<String, StationHandle>> {
        self.registry.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The CSMS: one per site. Cheap to clone.
#[derive(Clone)]
pub struct Csms {
    shared: Arc<Shared>,
}

impl Csms {
    pub fn new(
        config: CsmsConfig,
        directory: Arc<dyn StationDirectory>,
        state: Arc<Mutex<SiteState>>,
        store: Arc<dyn Store>,
        clock: Clock,
    ) -> Self {
        // Build every schema validator now, so the first station does not pay for it.
        loadstar_ocpp::schema::warm_up(OcppVersion::V16);
        loadstar_ocpp::schema::warm_up(OcppVersion::V201);
        Csms {
            shared: Arc::new(Shared {
                settings: std::sync::RwLock::new(Arc::new(config)),
                directory: std::sync::RwLock::new(directory),
                state,
                store,
                clock,
                events: Arc::new(tokio::sync::Notify::new()),
                registry: Mutex::new(HashMap::new()),
                generations: AtomicU64::new(1),
            }),
        }
    }

    /// The handle of a connected station.
    pub fn station(&self, station_id: &str) -> Option<StationHandle> {
        self.shared.registry().get(station_id).cloned()
    }

    /// Applies a reloaded site file's CSMS settings and station directory: handshakes from now
    /// on check the new credentials and list, new connections take the new settings, id tags
    /// are authorized against the new list. A connected station whose standing changed is
    /// disconnected, so it dials again under the new file: one the file no longer lists (it is
    /// refused, or held at the unknown-station current if unknown stations are allowed), and
    /// an unknown one the file now lists (it authenticates as that station). The others stay
    /// connected; a changed password applies from their next connection. Returns the ids of
    /// the stations disconnected.
    pub fn reload(&self, config: CsmsConfig, directory: Arc<dyn StationDirectory>) -> Vec<String> {
        *self
            .shared
            .settings
            .write()
            .unwrap_or_else(|p| p.into_inner()) = Arc::new(config);
        *self
            .shared
            .directory
            .write()
            .unwrap_or_else(|p| p.into_inner()) = directory.clone();
        // Registry before state, as everywhere in the CSMS.
        let registry = self.shared.registry();
        let state = self.shared.state();
        let mut dropped = Vec::new();
        for (id, handle) in registry.iter() {
            let was_known = state.stations.get(id).is_some_and(|s| s.known);
            let listed = matches!(
                directory.admit(id, None),
                Admission::Known | Admission::Unauthorized
            );
            if was_known != listed {
                if listed {
                    info!(station = %id, "unknown station now in the site file: disconnected to authenticate");
                } else {
                    info!(station = %id, "station no longer in the site file: disconnected");
                }
                handle.closer.notify_one();
                dropped.push(id.clone());
            }
        }
        dropped.sort();
        dropped
    }

    /// The handles of these stations (`None` where not connected), under one lock.
    pub fn stations<'a>(
        &self,
        ids: impl IntoIterator<Item = &'a str>,
    ) -> Vec<Option<StationHandle>> {
        let registry = self.shared.registry();
        ids.into_iter()
            .map(|id| registry.get(id).cloned())
            .collect()
    }

    /// Ids of the connected stations.
    pub fn connected(&self) -> Vec<String> {
        self.shared.registry().keys().cloned().collect()
    }

    pub fn state(&self) -> Arc<Mutex<SiteState>> {
        self.shared.state.clone()
    }

    /// Notified when a session starts or ends (the control loop's events).
    pub fn events(&self) -> Arc<tokio::sync::Notify> {
        self.shared.events.clone()
    }

    /// Accepts stations on `listener` until the task is dropped.
    pub async fn serve(self, listener: TcpListener) {
        if let Ok(addr) = listener.local_addr() {
            info!(%addr, "OCPP listener ready at ws://{addr}/ocpp/{{stationId}}");
        }
        loop {
            match listener.accept().await {
                Ok((tcp, peer)) => {
                    let _ = tcp.set_nodelay(true);
                    let shared = self.shared.clone();
                    tokio::spawn(async move { handshake::accept(shared, tcp, peer).await });
                }
                Err(e) => {
                    // E.g. out of file descriptors: back off instead of spinning.
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }

    /// Serves an already-upgraded stream (for simulations over in-memory pipes). `station_id`
    /// and `version` are what the handshake would have negotiated.
    pub async fn serve_stream<S>(
        &self,
        stream: tokio_tungstenite::WebSocketStream<S>,
        station_id: String,
        version: OcppVersion,
        admission: Admission,
    ) where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        connection::run(
            self.shared.clone(),
            stream,
            station_id,
            version,
            admission,
            None,
        )
        .await;
    }
}

/// Registers a newly authenticated connection, replacing (and closing) an older one.
pub(crate) fn register(
    shared: &Shared,
    station_id: &str,
    version: OcppVersion,
    commands: mpsc::Sender<Command>,
) -> StationHandle {
    let handle = StationHandle {
        station_id: Arc::from(station_id),
        version,
        generation: shared.generations.fetch_add(1, Ordering::Relaxed),
        commands,
        closer: Arc::new(tokio::sync::Notify::new()),
    };
    let old = shared
        .registry()
        .insert(station_id.to_owned(), handle.clone());
    if let Some(old) = old {
        info!(
            station = station_id,
            "new connection replaces the previous one"
        );
        // The old task may be gone already; either way it no longer owns the id.
        old.closer.notify_one();
    }
    handle
}

/// Removes the registration if it still belongs to this connection, running `on_removed`
/// under the registry lock so that a newer connection of the same station cannot register (and
/// mark itself connected) in between. Returns whether it did (false when a newer connection took
/// over).
pub(crate) fn unregister(
    shared: &Shared,
    handle: &StationHandle,
    on_removed: impl FnOnce(),
) -> bool {
    let mut registry = shared.registry();
    match registry.get(handle.station_id()) {
        Some(current) if current.generation == handle.generation => {
            registry.remove(handle.station_id());
            on_removed();
            true
        }
        _ => false,
    }
}

/// The WebSocket settings of every station connection. OCPP frames are small: tungstenite's
/// 128 KiB default buffers would cost ~256 KiB per station (most of the memory budget at 10,000
/// stations), and zeroing them on every read dominated the simulator's profile.
pub fn websocket_config(
    max_frame_bytes: usize,
) -> tokio_tungstenite::tungstenite::protocol::WebSocketConfig {
    tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
        .read_buffer_size(1024)
        .write_buffer_size(0)
        .max_message_size(Some(max_frame_bytes))
        .max_frame_size(Some(max_frame_bytes))
}

pub(crate) fn peer_label(peer: Option<SocketAddr>) -> String {
    peer.map_or_else(|| "in-memory".to_owned(), |p| p.to_string())
}

//! Wires a site file into a running CSMS: opens the store, binds the OCPP listener, admits
//! stations by the site's credentials, and runs the store's housekeeping.
//!
//! Used by `loadstar run`, `loadstar demo` and the end-to-end tests, so they exercise the same
//! start-up path.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::clock::Clock;
use crate::control::{self, Controller};
use crate::csms::{Authorization, Csms, CsmsConfig};
use crate::plugins::{HostOptions, PluginError, PluginHost, PluginSet};
use crate::site::{AuthorizationMode, SiteConfig};
use crate::state::SiteState;
use crate::store::{RetentionPolicy, SledStore, Store, StoreError};

/// Command-line overrides of the site file.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub ocpp_listen: Option<SocketAddr>,
    pub api_listen: Option<SocketAddr>,
    pub data_dir: Option<PathBuf>,
}

/// Why the controller could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot open the store in {dir}: {source}")]
    Store {
        dir: PathBuf,
        #[source]
        source: StoreError,
    },
    #[error("cannot create the data directory {dir}: {source}")]
    DataDir {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot listen for OCPP on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("plugin host: {0}")]
    PluginHost(#[source] PluginError),
    #[error("plugin `{name}`: {source}")]
    Plugin {
        name: String,
        #[source]
        source: PluginError,
    },
}

/// Binds with a deep accept backlog: after a power cut every station of a site reconnects at
/// once, and the default backlog would refuse some of them.
fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(4096)
}

/// The CSMS settings of a site file.
pub fn csms_config(site: &SiteConfig) -> CsmsConfig {
    let s = site.csms();
    let auth = site.authorization();
    CsmsConfig {
        heartbeat_interval: s.heartbeat_interval(),
        max_frame_bytes: s.max_frame_bytes,
        call_timeout: s.call_timeout(),
        meter_interval: s.meter_interval(),
        ping_interval: s.ping_interval(),
        authorization: match auth.mode {
            AuthorizationMode::AcceptAll => Authorization::AcceptAll,
            AuthorizationMode::LocalList => Authorization::local_list(auth.id_tags.iter()),
        },
        command_queue: 64,
        unknown_station_current_a: s.unknown_station_current_a,
    }
}

/// A running controller.
pub struct Server {
    pub csms: Csms,
    /// The control loop: its entry points and reports.
    pub controller: Controller,
    /// The plugin host.
    pub plugins: Arc<PluginHost>,
    pub store: Arc<SledStore>,
    pub state: Arc<Mutex<SiteState>>,
    pub ocpp_addr: SocketAddr,
    pub data_dir: PathBuf,
    reloader: Reloader,
    tasks: Vec<JoinHandle<()>>,
}

/// Applies a reloaded site file to a running controller: limits, stations, settings and
/// plugins. Cheap to clone (SIGHUP and, later, the API hold one).
#[derive(Clone)]
pub struct Reloader {
    controller: Controller,
    csms: Csms,
    plugins: Arc<watch::Sender<Arc<SiteConfig>>>,
}

impl Reloader {
    /// The control loop takes the new file at its next tick (which runs at once, the
    /// failsafe recomputed); the plugins are reloaded before their next call: unchanged ones
    /// keep running, changed ones are swapped in place, new ones loaded, removed ones dropped.
    /// The CSMS takes the new credentials, station list, id tags and settings at once
    /// ([`Csms::reload`]).
    pub fn reload(&self, site: SiteConfig) {
        let site = Arc::new(site);
        let dropped = self.csms.reload(csms_config(&site), site.clone());
        if !dropped.is_empty() {
            info!(stations = ?dropped, "stations disconnected by the reload");
        }
        self.controller.reload(site.clone());
        self.plugins.send_replace(site);
    }
}

impl Server {
    /// Opens the store, binds the OCPP listener and starts serving.
    pub async fn start(
        site: SiteConfig,
        overrides: &Overrides,
        clock: Clock,
    ) -> Result<Server, StartError> {
        Self::start_on(site, overrides, clock, None).await
    }

    /// [`Server::start`] on a store that is already open (a controller restarted in the same
    /// process, as `simulate` does: sled allows one handle per database). Everything else
    /// starts from what the store holds, as after a real restart.
    pub async fn start_on(
        site: SiteConfig,
        overrides: &Overrides,
        clock: Clock,
        open_store: Option<Arc<SledStore>>,
    ) -> Result<Server, StartError> {
        let site = Arc::new(site);
        let data_dir = overrides
            .data_dir
            .clone()
            .unwrap_or_else(|| site.store().data_dir.clone());
        std::fs::create_dir_all(&data_dir).map_err(|source| StartError::DataDir {
            dir: data_dir.clone(),
            source,
        })?;
        let store_dir = data_dir.join("store");
        let store = match open_store {
            Some(store) => store,
            None => Arc::new(
                SledStore::open(&store_dir).map_err(|source| StartError::Store {
                    dir: store_dir.clone(),
                    source,
                })?,
            ),
        };
        let open = store.open_sessions().map_err(|source| StartError::Store {
            dir: store_dir.clone(),
            source,
        })?;
        let stations = store.stations().map_err(|source| StartError::Store {
            dir: store_dir.clone(),
            source,
        })?;
        info!(dir = %store_dir.display(), stations = stations.len(), open_sessions = open.len(), "store opened");
        let state = SiteState::restore(&stations, open, |id| site.station(id).is_some());

        let addr = overrides.ocpp_listen.unwrap_or(site.csms().listen);
        let listener = bind(addr).map_err(|source| StartError::Bind { addr, source })?;
        let ocpp_addr = listener.local_addr().unwrap_or(addr);

        let state = Arc::new(Mutex::new(state));
        let csms = Csms::new(
            csms_config(&site),
            site.clone(),
            state.clone(),
            store.clone() as Arc<dyn Store>,
            clock.clone(),
        );
        let mut tasks = vec![tokio::spawn(csms.clone().serve(listener))];

        let controller = Controller::new(
            site.clone(),
            csms.clone(),
            store.clone() as Arc<dyn Store>,
            clock.clone(),
        );
        tasks.push(controller.spawn());
        // Always there, so a reload can add plugins to a site that had none.
        let plugins = Arc::new(
            PluginHost::new(
                HostOptions {
                    cache_dir: Some(data_dir.join("plugin-cache")),
                },
                store.clone() as Arc<dyn Store>,
                clock.clone(),
            )
            .map_err(StartError::PluginHost)?,
        );
        let (site_tx, site_rx) = watch::channel(site.clone());
        {
            // A plugin that does not load at start is an error in the site file; at a reload it
            // only counts as failed.
            let (set, failed) = PluginSet::load(&plugins, site.plugins());
            if let Some((name, source)) = failed.into_iter().next() {
                return Err(StartError::Plugin { name, source });
            }
            for name in set.names() {
                info!(plugin = name, "plugin loaded");
            }
            tasks.push(tokio::spawn(control::drive::run(
                controller.clone(),
                plugins.clone(),
                set,
                site_rx,
                clock.clone(),
            )));
        }

        let policy = RetentionPolicy {
            raw_for: chrono::Duration::days(i64::from(site.store().raw_retention_days)),
            downsample_to: chrono::Duration::minutes(i64::from(site.store().downsample_minutes)),
            ..RetentionPolicy::default()
        };
        let housekeeping_store = store.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                clock.sleep(Duration::from_secs(3600)).await;
                // Compaction is long synchronous disk work: off the async workers.
                let store = housekeeping_store.clone();
                let now = clock.now();
                let policy = policy.clone();
                match tokio::task::spawn_blocking(move || store.compact(now, &policy)).await {
                    Ok(Ok(report)) => info!(?report, "meter samples compacted"),
                    Ok(Err(e)) => warn!(error = %e, "meter sample compaction failed"),
                    Err(e) => warn!(error = %e, "meter sample compaction task failed"),
                }
            }
        }));

        let reloader = Reloader {
            controller: controller.clone(),
            csms: csms.clone(),
            plugins: Arc::new(site_tx),
        };
        Ok(Server {
            reloader,
            csms,
            controller,
            plugins,
            store,
            state,
            ocpp_addr,
            data_dir,
            tasks,
        })
    }

    /// What applies a reloaded site file (SIGHUP, the API).
    pub fn reloader(&self) -> Reloader {
        self.reloader.clone()
    }

    /// Stops like a crash of the process would (every task aborted, nothing said to the
    /// stations; connections served elsewhere must be dropped by their owner), after making
    /// every write durable. The store stays open for [`Server::start_on`].
    pub fn halt(&self) -> Result<(), StoreError> {
        for task in &self.tasks {
            task.abort();
        }
        self.store.flush()
    }

    /// Stops serving and makes every write durable.
    pub fn shutdown(self) -> Result<(), StoreError> {
        for task in &self.tasks {
            task.abort();
        }
        self.store.flush()
    }
}

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
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::clock::Clock;
use crate::control::{self, Controller};
use crate::csms::{Authorization, Csms, CsmsConfig};
use crate::plugins::{HostOptions, PluginError, PluginHost, World};
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
    #[error("plugin `{name}`: cannot read {path}: {source}")]
    PluginFile {
        name: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
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
    /// The plugin host, when the site file has plugins.
    pub plugins: Option<Arc<PluginHost>>,
    pub store: Arc<SledStore>,
    pub state: Arc<Mutex<SiteState>>,
    pub ocpp_addr: SocketAddr,
    pub data_dir: PathBuf,
    tasks: Vec<JoinHandle<()>>,
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
        let plugins = if site.plugins().is_empty() {
            None
        } else {
            let host = PluginHost::new(
                HostOptions {
                    cache_dir: Some(data_dir.join("plugin-cache")),
                },
                store.clone() as Arc<dyn Store>,
                clock.clone(),
            )
            .map_err(StartError::PluginHost)?;
            Some(Arc::new(host))
        };
        if let (Some(host), Some(name)) = (&plugins, site.control().grid_meter.as_deref())
            && let Some(p) = site
                .plugins()
                .iter()
                .find(|p| p.spec.name == name && p.spec.world == World::Meter)
        {
            let wasm = std::fs::read(&p.wasm).map_err(|source| StartError::PluginFile {
                name: name.to_owned(),
                path: p.wasm.clone(),
                source,
            })?;
            let meter =
                host.load_meter(p.spec.clone(), &wasm)
                    .map_err(|source| StartError::Plugin {
                        name: name.to_owned(),
                        source,
                    })?;
            info!(plugin = name, "grid meter plugin loaded");
            let every = Duration::from_millis(site.control().tick_ms);
            tasks.push(tokio::spawn(control::meter::run(
                controller.clone(),
                meter,
                site.model(),
                clock.clone(),
                every,
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

        Ok(Server {
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

//! `loadstar simulate SCENARIO`: the real controller, in process and in virtual time, against
//! the sims' stations, cars and grid meter.
//!
//! What is real: the site file (written from the scenario and parsed like any other), the
//! store (sled on disk), the CSMS with OCPP-J framing over in-memory WebSocket pipes, the
//! control loop, and the grid meter: the sims' HomeWizard P1 server on loopback, read through
//! the `http-json-meter` plugin in the wasmtime host. What is simulated: the stations and EVs
//! (`loadstar-sims`) and the passing of time (tokio's paused clock, so a day takes seconds).
//!
//! Limit changes of the scenario reach the controller as external limits: announced ones at the
//! start (a demand-response schedule), unannounced ones when they take effect.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use loadstar_ocpp::OcppVersion;
use loadstar_optimizer::model::{GridType, Line, PerLine, PhaseConnection, StationWiring};
use loadstar_sims::baseline::{self, Baselines, RunConfig};
use loadstar_sims::client::ClientError;
use loadstar_sims::drive::{self, DriveConfig, Report};
use loadstar_sims::meter::serve_homewizard;
use loadstar_sims::scenario::Plan;
use loadstar_sims::site::MeterReading;
use loadstar_sims::station::{Dialing, SimClock};
use tokio::io::DuplexStream;
use tokio::sync::watch;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::Role;
use tracing::info;

use crate::clock::Clock;
use crate::control::{Controller, ExternalLimit};
use crate::csms::Admission;
use crate::runtime::{Overrides, Server, StartError};
use crate::site::{GRID_ID, SiteConfig};

/// The grid meter plugin's name in the generated site file.
pub const GRID_METER: &str = "grid-meter";

/// How a simulation runs.
#[derive(Debug, Clone)]
pub struct SimulateOptions {
    /// Where the store, the plugin and the site file go.
    pub data_dir: PathBuf,
    /// Stop early (a part of the scenario); `None` runs it to its end.
    pub until: Option<DateTime<Utc>>,
    /// The control loop's period (the scenario's KPIs allow one tick of reaction lag).
    pub tick: Duration,
    /// Feeders and credentials of the generated site file.
    pub layout: Layout,
    /// Run on the real clock (the demo; the plan must start now) instead of virtual time.
    pub real_time: bool,
}

impl SimulateOptions {
    /// Virtual time, a 1-s tick, every station on the grid node.
    pub fn new(data_dir: PathBuf) -> Self {
        SimulateOptions {
            data_dir,
            until: None,
            tick: Duration::from_secs(1),
            layout: Layout::default(),
            real_time: false,
        }
    }
}

/// Where the generated site file puts the stations, and whether they need passwords.
#[derive(Debug, Clone, Default)]
pub struct Layout {
    /// Circuits under the grid node; a station whose id starts with one of a feeder's
    /// prefixes hangs on it.
    pub feeders: Vec<Feeder>,
    /// Give every station the password [`demo_password`] (security profile 1).
    pub passwords: bool,
}

/// One circuit of a [`Layout`].
#[derive(Debug, Clone)]
pub struct Feeder {
    pub id: String,
    pub limit_a: f64,
    pub prefixes: Vec<String>,
}

/// The password of a simulated station in a [`Layout`] with passwords (public: demo only).
pub fn demo_password(station: &str) -> String {
    format!("demo-password-{station}")
}

/// Why a simulation could not run.
#[derive(Debug, thiserror::Error)]
pub enum SimulateError {
    #[error("the generated site file is invalid:\n{0}")]
    Site(String),
    #[error(transparent)]
    Start(#[from] StartError),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

fn line_name(l: Line) -> &'static str {
    match l {
        Line::L1 => "L1",
        Line::L2 => "L2",
        Line::L3 => "L3",
    }
}

fn wiring_toml(w: StationWiring) -> String {
    let names: Vec<String> = match w {
        StationWiring::ThreePhase(r) => {
            r.iter().map(|l| format!("\"{}\"", line_name(*l))).collect()
        }
        StationWiring::TwoPhase(r) => r.iter().map(|l| format!("\"{}\"", line_name(*l))).collect(),
        StationWiring::SinglePhase(PhaseConnection::LineToNeutral(l)) => {
            vec![format!("\"{}\"", line_name(l))]
        }
        StationWiring::SinglePhase(PhaseConnection::LineToLine(a, b)) => {
            vec![format!("\"{}-{}\"", line_name(a), line_name(b))]
        }
    };
    format!("[{}]", names.join(", "))
}

fn per_line_toml(grid: GridType, p: PerLine) -> String {
    let values: Vec<String> = grid
        .lines()
        .iter()
        .map(|l| format!("{:.3}", p[*l]))
        .collect();
    format!("[{}]", values.join(", "))
}

/// The largest building load on any line over the scenario: the failsafe's reserve.
fn building_peak_a(plan: &Plan) -> f64 {
    let mut peak: f64 = 0.0;
    let mut t = plan.start;
    while t < plan.end {
        peak = peak.max(plan.site.base_amps(t).max_abs());
        t += chrono::Duration::minutes(5);
    }
    peak.ceil()
}

/// The highest connection limit the scenario ever has: the site file's physical limit (the
/// schedule below it arrives as external limits).
fn physical_limit(plan: &Plan) -> PerLine {
    plan.site
        .limit_changes
        .iter()
        .fold(plan.site.limit, |acc, c| acc.max(c.limit))
}

/// Name of the tariff policy in generated site files.
pub const TARIFF_POLICY: &str = "tariff";

/// The site file for `plan`, with the grid meter plugin at `meter_base` (`http://host:port`)
/// and, if the scenario has a tariff, the `day-ahead-price` policy reading its feed at
/// `tariff_base`.
pub fn site_toml(
    plan: &Plan,
    meter_base: &str,
    tariff_base: Option<&str>,
    tick: Duration,
    layout: &Layout,
) -> String {
    let grid = plan.site.model.grid();
    let grid_type = match grid {
        GridType::Wye => "wye",
        GridType::Delta => "delta",
        GridType::SplitPhase => "split_phase",
    };
    let mut out = String::new();
    let _ = writeln!(
        out,
        "[site]\nname = \"{}\"\ntimezone = \"UTC\"\n",
        plan.name.escape_default()
    );
    let _ = writeln!(
        out,
        "[grid]\ntype = \"{grid_type}\"\nvoltage = {}\nlimit_a = {}\n",
        plan.site.model.phase_voltage_v(),
        per_line_toml(grid, physical_limit(plan))
    );
    let _ = writeln!(
        out,
        "[csms]\nlisten = \"127.0.0.1:0\"\nrequire_auth = {}\nmeter_interval_s = 10\n",
        layout.passwords
    );
    for f in &layout.feeders {
        let _ = writeln!(
            out,
            "[[circuit]]\nid = \"{}\"\nlimit_a = {}\n",
            f.id.escape_default(),
            f.limit_a
        );
    }
    let _ = writeln!(
        out,
        "[api]\nlisten = \"127.0.0.1:0\"\n\n[store]\ndata_dir = \"store\"\n"
    );
    let _ = writeln!(
        out,
        "[control]\ntick_ms = {}\ngrid_meter = \"{GRID_METER}\"\nbuilding_reserve_a = {}\n",
        tick.as_millis().max(50),
        building_peak_a(plan)
    );
    let host = meter_base.trim_start_matches("http://");
    let _ = writeln!(
        out,
        "[[plugin]]\nname = \"{GRID_METER}\"\nworld = \"meter\"\nwasm = \"http_json_meter.wasm\"\n\
         config = {{ preset = \"homewizard-p1\", base = \"{meter_base}\" }}\n\
         grants = {{ http = [\"{host}\"] }}\n\
         # Deadlines are real time, and the whole simulation shares one thread.\n\
         limits = {{ deadline_ms = 2000 }}\n"
    );
    if let Some(base) = tariff_base.filter(|_| !plan.tariff.is_empty()) {
        let host = base.trim_start_matches("http://");
        let _ = writeln!(
            out,
            "[[plugin]]\nname = \"{TARIFF_POLICY}\"\nworld = \"policy\"\nwasm = \"day_ahead_price.wasm\"\n\
             config = {{ url = \"{base}/tariff\", refresh_s = 3600 }}\n\
             grants = {{ http = [\"{host}\"] }}\n\
             every_s = 60\n\
             limits = {{ deadline_ms = 2000 }}\n"
        );
    }
    for p in &plan.stations {
        let c = &p.config;
        let wiring = c.circuit.wiring();
        let version = match c.version {
            OcppVersion::V16 => "1.6",
            OcppVersion::V201 => "2.0.1",
        };
        let circuit = layout
            .feeders
            .iter()
            .find(|f| f.prefixes.iter().any(|p| c.id.starts_with(p.as_str())))
            .map_or(GRID_ID, |f| f.id.as_str());
        if layout.passwords {
            let _ = writeln!(out, "[[station]]\npassword = \"{}\"", demo_password(&c.id));
        } else {
            let _ = writeln!(out, "[[station]]");
        }
        let _ = writeln!(
            out,
            "id = \"{}\"\ncircuit = \"{circuit}\"\nphases = {}\nmax_current_a = {}\n\
             wiring = {}\nevses = {}\nocpp = \"{version}\"\n",
            c.id.escape_default(),
            wiring.phase_count(),
            c.hardware_max_amps,
            wiring_toml(wiring),
            c.evse_count
        );
    }
    out
}

/// Feeds the scenario's connection-limit schedule to the controller: the initial limit and
/// announced changes now, unannounced ones when they happen.
fn schedule_limits(plan: &Plan, controller: &Controller, clock: &Clock) {
    let mut steps: Vec<(DateTime<Utc>, PerLine, bool)> = vec![(plan.start, plan.site.limit, true)];
    steps.extend(
        plan.site
            .limit_changes
            .iter()
            .map(|c| (c.at, c.limit, c.announced)),
    );
    steps.sort_by_key(|s| s.0);
    for (i, (from, limit, announced)) in steps.iter().copied().enumerate() {
        let until = steps
            .get(i + 1)
            .map_or(plan.end + chrono::Duration::hours(1), |s| s.0);
        let limit = ExternalLimit {
            source: format!("scenario:{i}"),
            node: GRID_ID.to_owned(),
            limit,
            from,
            until,
            reason: if announced {
                "announced connection limit".into()
            } else {
                "unannounced connection limit".into()
            },
        };
        if announced {
            if let Err(e) = controller.set_limit(limit) {
                tracing::warn!(error = %e, "scenario limit refused");
            }
        } else {
            let controller = controller.clone();
            let clock = clock.clone();
            tokio::spawn(async move {
                let wait = (limit.from - clock.now()).to_std().unwrap_or_default();
                clock.sleep(wait).await;
                if let Err(e) = controller.set_limit(limit) {
                    tracing::warn!(error = %e, "scenario limit refused");
                }
            });
        }
    }
}

/// A running simulated site: the controller and its CSMS, and the meter the plugin reads.
pub struct SimulatedSite {
    pub server: Server,
    /// What the sims' site publishes for the simulated grid meter (shared, so a drive can
    /// hold it while the site restarts).
    pub meter: Arc<watch::Sender<MeterReading>>,
    /// Keeps the meter's HTTP server alive.
    meter_server: Option<loadstar_sims::meter::Served>,
    /// Keeps the tariff feed alive.
    _tariff_server: loadstar_sims::meter::Served,
    switchboard: Switchboard,
    site: SiteConfig,
    plan: Plan,
    clock: Clock,
}

/// Where the sims' stations dial: the CSMS of the controller that runs now, or none while it
/// is stopped (a dial then fails, as a refused TCP connection would).
#[derive(Clone, Default)]
struct Switchboard {
    inner: Arc<std::sync::Mutex<SwitchboardState>>,
}

#[derive(Default)]
struct SwitchboardState {
    csms: Option<crate::csms::Csms>,
    connections: Vec<tokio::task::AbortHandle>,
}

impl Switchboard {
    fn lock(&self) -> std::sync::MutexGuard<'_, SwitchboardState> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Every connection drops and new dials fail until [`Switchboard::connect`].
    fn disconnect(&self) {
        let mut state = self.lock();
        state.csms = None;
        for c in state.connections.drain(..) {
            c.abort();
        }
    }

    fn connect(&self, csms: crate::csms::Csms) {
        self.lock().csms = Some(csms);
    }
}

/// Starts the controller for `plan` (under paused tokio time).
pub async fn start(plan: &Plan, options: &SimulateOptions) -> Result<SimulatedSite, SimulateError> {
    std::fs::create_dir_all(&options.data_dir).map_err(|source| SimulateError::Io {
        what: format!("creating {}", options.data_dir.display()),
        source,
    })?;
    let wasm = options.data_dir.join("http_json_meter.wasm");
    std::fs::write(&wasm, loadstar_plugin_artifacts::HTTP_JSON_METER).map_err(|source| {
        SimulateError::Io {
            what: format!("writing {}", wasm.display()),
            source,
        }
    })?;
    let (meter, reading) = watch::channel(MeterReading::default());
    let meter_server =
        serve_homewizard(reading, false)
            .await
            .map_err(|source| SimulateError::Io {
                what: "starting the simulated grid meter".into(),
                source,
            })?;
    // The scenario's tariff as a day-ahead price feed on loopback, read by the real plugin.
    let wasm = options.data_dir.join("day_ahead_price.wasm");
    std::fs::write(&wasm, loadstar_plugin_artifacts::DAY_AHEAD_PRICE).map_err(|source| {
        SimulateError::Io {
            what: format!("writing {}", wasm.display()),
            source,
        }
    })?;
    let (_, tariff) = watch::channel(plan.tariff.clone());
    let tariff_server = loadstar_sims::meter::serve_tariff(tariff)
        .await
        .map_err(|source| SimulateError::Io {
            what: "starting the simulated tariff feed".into(),
            source,
        })?;
    let text = site_toml(
        plan,
        &format!("http://{}", meter_server.addr),
        Some(&format!("http://{}", tariff_server.addr)),
        options.tick,
        &options.layout,
    );
    let site_file = options.data_dir.join("site.toml");
    std::fs::write(&site_file, &text).map_err(|source| SimulateError::Io {
        what: format!("writing {}", site_file.display()),
        source,
    })?;
    let site = SiteConfig::parse(&text, &options.data_dir, &|_| None)
        .map_err(|e| SimulateError::Site(e.to_string()))?;
    let clock = if options.real_time {
        Clock::real()
    } else {
        Clock::virtual_from(plan.start)
    };
    let server = Server::start(site.clone(), &Overrides::default(), clock.clone()).await?;
    schedule_limits(plan, &server.controller, &clock);
    let switchboard = Switchboard::default();
    switchboard.connect(server.csms.clone());
    Ok(SimulatedSite {
        server,
        meter: Arc::new(meter),
        meter_server: Some(meter_server),
        _tariff_server: tariff_server,
        switchboard,
        site,
        plan: plan.clone(),
        clock,
    })
}

impl SimulatedSite {
    /// The simulated grid meter's HTTP server; dropping it stops the meter (a meter gone
    /// silent).
    pub fn take_meter_server(&mut self) -> Option<loadstar_sims::meter::Served> {
        self.meter_server.take()
    }

    /// A dialer for the sims' stations: each dial is a fresh in-memory pipe whose far end the
    /// CSMS serves, as if the handshake had negotiated the station's id and version. While
    /// the controller is stopped ([`SimulatedSite::restart`]) dials fail.
    pub fn dialer(
        &self,
    ) -> impl FnMut(
        &loadstar_sims::station::StationConfig,
    ) -> Box<dyn FnMut() -> Dialing<DuplexStream> + Send>
    + use<> {
        let switchboard = self.switchboard.clone();
        move |config| {
            let switchboard = switchboard.clone();
            let id = config.id.clone();
            let version = config.version;
            Box::new(move || {
                let switchboard = switchboard.clone();
                let id = id.clone();
                Box::pin(async move {
                    let Some(csms) = switchboard.lock().csms.clone() else {
                        return Err(ClientError::Closed);
                    };
                    let (station, far) = tokio::io::duplex(1 << 16);
                    let config = Some(crate::csms::websocket_config(1 << 20));
                    let served = tokio::spawn(async move {
                        let ws = WebSocketStream::from_raw_socket(far, Role::Server, config).await;
                        csms.serve_stream(ws, id, version, Admission::Known).await;
                    });
                    {
                        let mut state = switchboard.lock();
                        state.connections.retain(|c| !c.is_finished());
                        state.connections.push(served.abort_handle());
                    }
                    Ok::<_, ClientError>(
                        WebSocketStream::from_raw_socket(station, Role::Client, config).await,
                    )
                }) as Dialing<DuplexStream>
            })
        }
    }

    /// Stops the controller as a crash would (its connections drop, nothing is said to the
    /// stations, which dial in vain), keeps it down for `down_for` of (virtual) time while
    /// the stations run on what they were sent, then starts a new one on the same store: it
    /// restores the sessions, limits and learned quirks from there and the stations reconnect.
    pub async fn restart(&mut self, down_for: Duration) -> Result<(), SimulateError> {
        self.switchboard.disconnect();
        self.server
            .halt()
            .map_err(|e| SimulateError::Site(format!("store: {e}")))?;
        info!(down_s = down_for.as_secs(), "controller stopped");
        self.clock.sleep(down_for).await;
        let server = Server::start_on(
            self.site.clone(),
            &Overrides {
                data_dir: Some(self.server.data_dir.clone()),
                ..Overrides::default()
            },
            self.clock.clone(),
            Some(self.server.store.clone()),
        )
        .await?;
        schedule_limits(&self.plan, &server.controller, &self.clock);
        self.switchboard.connect(server.csms.clone());
        // The halted one goes now; its tasks are aborted already.
        self.server = server;
        info!("controller started again");
        Ok(())
    }
}

/// What `loadstar simulate` produced.
pub struct Simulation {
    pub report: Report,
    /// The dispatcher's view of every EVSE at the end, with its last decisions.
    pub evses: Vec<crate::control::EvseReport>,
    pub baselines: Option<Baselines>,
    /// The KPI table: Loadstar beside the baselines and the offline optimum.
    pub table: String,
}

/// Runs `plan` from its start with the real controller (under paused tokio time), and the
/// baselines if asked.
pub async fn run(
    plan: &Plan,
    options: &SimulateOptions,
    with_baselines: bool,
) -> Result<Simulation, SimulateError> {
    let baselines = if with_baselines {
        let config = RunConfig {
            tick: Duration::from_secs(1),
            control_tick: options.tick,
        };
        match baseline::baselines(plan, config) {
            Ok(b) => Some(b),
            Err(e) => {
                tracing::warn!(error = %e, "baselines not run");
                None
            }
        }
    } else {
        None
    };
    let feasible = baselines
        .as_ref()
        .map(|_| baseline::offline_optimum(plan))
        .and_then(Result::ok)
        .map(|o| {
            plan.visits
                .iter()
                .map(|v| o.result.feasible_for(&v.id_tag))
                .collect()
        })
        .unwrap_or_default();
    let site = start(plan, options).await?;
    info!(scenario = %plan.name, stations = plan.stations.len(), visits = plan.visits.len(), "simulation started");
    let report = drive::run(
        plan,
        site.dialer(),
        SimClock::starting_at(plan.start),
        &site.meter,
        DriveConfig {
            control_tick: options.tick,
            until: options.until,
            feasible,
            ..DriveConfig::default()
        },
    )
    .await;
    let evses = site.server.controller.report();
    let _ = site.server.shutdown();
    let table = match &baselines {
        Some(b) => {
            let mut b = b.clone();
            b.rows.insert(
                0,
                ("loadstar".to_owned(), "loadstar".to_owned(), report.clone()),
            );
            b.markdown()
        }
        None => loadstar_sims::kpi::markdown_table(&plan.name, [("loadstar", &report.kpis)]),
    };
    Ok(Simulation {
        report,
        evses,
        baselines,
        table,
    })
}

/// Writes the site-current and vehicle-energy plots of `report` into `dir`.
pub fn write_plots(
    dir: &Path,
    plan: &Plan,
    slug: &str,
    label: &str,
    report: &Report,
) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let lines = plan.site.model.grid().lines();
    std::fs::write(
        dir.join(format!("{slug}-site.svg")),
        loadstar_sims::plot::site_current_svg(
            &format!("{} ({label}): site current per line", plan.name),
            &report.site,
            lines,
        ),
    )?;
    std::fs::write(
        dir.join(format!("{slug}-vehicles.svg")),
        loadstar_sims::plot::vehicle_energy_svg(
            &format!("{} ({label}): energy per vehicle", plan.name),
            &report.vehicles,
        ),
    )
}

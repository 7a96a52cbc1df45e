//! `loadstar demo`: the embedded demo site with one simulated station per configured station,
//! each on its own OCPP version, over real WebSockets on loopback. It shows what the CSMS sees:
//! boots, set-up, sessions, per-phase measurements, and what is stored.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use chrono::Utc;
use loadstar_ocpp::{OcppVersion, v16, v201};
use loadstar_sims::client::{
    ClientConfig, ClientError, StationClient, meter_value_v16, meter_value_v201,
};
use tokio::task::JoinSet;

use crate::clock::Clock;
use crate::runtime::{Overrides, Server, StartError};
use crate::site::{DEMO_SITE, SiteConfig};
use crate::store::{SessionFilter, Store};

/// How the demo runs.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    pub duration: Duration,
    /// Seconds between meter values of each simulated station.
    pub meter_every: Duration,
    /// Where the store goes; a fresh temporary directory by default.
    pub data_dir: Option<PathBuf>,
}

impl Default for DemoOptions {
    fn default() -> Self {
        DemoOptions {
            duration: Duration::from_secs(20),
            meter_every: Duration::from_secs(2),
            data_dir: None,
        }
    }
}

/// Why the demo failed.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error(transparent)]
    Start(#[from] StartError),
    #[error("demo site: {0}")]
    Site(String),
}

/// What the demo saw, for the caller to print or check.
#[derive(Debug, Clone, Default)]
pub struct DemoSummary {
    pub stations_connected: usize,
    pub sessions_stored: usize,
    pub sessions_ended: usize,
    pub energy_wh: f64,
    pub samples_stored: usize,
    pub station_errors: Vec<String>,
}

/// The inline passwords of the embedded demo site (public on purpose; demo only).
fn demo_passwords() -> Result<BTreeMap<String, String>, DemoError> {
    let table: toml::Table = DEMO_SITE
        .parse()
        .map_err(|e: toml::de::Error| DemoError::Site(e.to_string()))?;
    let mut out = BTreeMap::new();
    for station in table
        .get("station")
        .and_then(|s| s.as_array())
        .into_iter()
        .flatten()
    {
        if let (Some(id), Some(pw)) = (
            station.get("id").and_then(|v| v.as_str()),
            station.get("password").and_then(|v| v.as_str()),
        ) {
            out.insert(id.to_owned(), pw.to_owned());
        }
    }
    Ok(out)
}

/// Runs the demo; `report` receives progress lines.
pub async fn run(
    options: DemoOptions,
    mut report: impl FnMut(&str),
) -> Result<DemoSummary, DemoError> {
    let data_dir = options.data_dir.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!("loadstar-demo-{}", std::process::id()))
    });
    let site = SiteConfig::demo(&data_dir);
    let passwords = demo_passwords()?;
    let overrides = Overrides {
        // An ephemeral port, so the demo never collides with a running site.
        ocpp_listen: Some(([127, 0, 0, 1], 0).into()),
        data_dir: Some(data_dir.clone()),
        ..Overrides::default()
    };
    let server = Server::start(site.clone(), &overrides, Clock::real()).await?;
    let url = format!("ws://{}/ocpp", server.ocpp_addr);
    report(&format!(
        "Loadstar demo: site \"{}\" ({} stations, grid {} per line), OCPP at {url}/{{stationId}}, store in {}",
        site.site().name,
        site.stations().len(),
        fmt_amps(site.grid_limit().0),
        data_dir.display()
    ));

    let mut stations = JoinSet::new();
    for (index, station) in site.stations().iter().enumerate() {
        let config = ClientConfig {
            url: url.clone(),
            station_id: station.id.clone(),
            password: passwords.get(&station.id).cloned(),
            version: station.ocpp.unwrap_or(OcppVersion::V16),
            call_timeout: Duration::from_secs(10),
        };
        let amps = station.max_current_a.min(16.0);
        let phases = station.phases;
        let every = options.meter_every;
        let until = tokio::time::Instant::now() + options.duration;
        stations.spawn(async move {
            // Stagger arrivals so the log reads like a car park filling up.
            tokio::time::sleep(Duration::from_millis(300 * index as u64)).await;
            simulate(config, amps, phases, every, until)
                .await
                .map_err(|e| e.to_string())
        });
    }

    let started = tokio::time::Instant::now();
    let mut ticker = tokio::time::interval(Duration::from_secs(5));
    let mut summary = DemoSummary::default();
    loop {
        tokio::select! {
            _ = ticker.tick() => {
                report(&status_table(&server, started.elapsed()));
            }
            done = stations.join_next() => match done {
                Some(Ok(Err(e))) => summary.station_errors.push(e),
                Some(Err(e)) => summary.station_errors.push(e.to_string()),
                Some(Ok(Ok(()))) => {}
                None => break,
            }
        }
    }
    report(&status_table(&server, started.elapsed()));

    let sessions = server
        .store
        .sessions(&SessionFilter::default())
        .unwrap_or_default();
    summary.sessions_stored = sessions.len();
    summary.sessions_ended = sessions.iter().filter(|s| s.ended_at.is_some()).count();
    summary.energy_wh = sessions.iter().map(|s| s.energy_wh).sum();
    let now = Utc::now();
    for station in site.stations() {
        for evse in 0..=station.evses {
            summary.samples_stored += server
                .store
                .samples(&station.id, evse, now - chrono::Duration::hours(1), now)
                .map(|s| s.len())
                .unwrap_or(0);
        }
    }
    summary.stations_connected = {
        let state = server.state.lock().unwrap_or_else(|p| p.into_inner());
        state.stations.len()
    };
    let _ = server.shutdown();
    if options.data_dir.is_none() {
        let _ = std::fs::remove_dir_all(&data_dir);
    }
    Ok(summary)
}

fn fmt_amps(a: [f64; 3]) -> String {
    format!("{:.1}/{:.1}/{:.1} A", a[0], a[1], a[2])
}

fn status_table(server: &Server, elapsed: Duration) -> String {
    let state = server.state.lock().unwrap_or_else(|p| p.into_inner());
    let mut ids: Vec<_> = state.stations.keys().cloned().collect();
    ids.sort();
    let mut out = format!(
        "--- t+{:>3} s: {} connected, {} sessions charging\n{:<7} {:<10} {:<10} {:<24} {:>10} {:>22}\n",
        elapsed.as_secs(),
        state.connected(),
        state.active_sessions(),
        "station",
        "version",
        "set-up",
        "evse: status",
        "energy Wh",
        "current L1/L2/L3 A"
    );
    for id in ids {
        let Some(s) = state.stations.get(&id) else {
            continue;
        };
        let setup = if s.capabilities.set_up {
            if s.capabilities.refused.is_empty() {
                "done".to_owned()
            } else {
                format!("{} refused", s.capabilities.refused.len())
            }
        } else {
            "pending".to_owned()
        };
        for (evse_id, evse) in s.evses.iter().filter(|(id, _)| **id > 0) {
            let status = evse.connectors.values().next().cloned().unwrap_or_default();
            let energy = evse
                .session
                .as_ref()
                .map(|x| format!("{:.0}", x.energy_wh))
                .unwrap_or_else(|| "-".into());
            let amps = evse.measurement.current_a;
            let fmt = |a: Option<f64>| a.map_or("-".to_owned(), |a| format!("{a:.1}"));
            out.push_str(&format!(
                "{:<7} {:<10} {:<10} {:<24} {:>10} {:>22}\n",
                id,
                s.version.subprotocol(),
                setup,
                format!("{evse_id}: {status}"),
                energy,
                format!("{}/{}/{}", fmt(amps[0]), fmt(amps[1]), fmt(amps[2]))
            ));
        }
    }
    out
}

/// One simulated station: boot, plug in, charge at `amps` on `phases`, unplug.
async fn simulate(
    config: ClientConfig,
    amps: f64,
    phases: u8,
    every: Duration,
    until: tokio::time::Instant,
) -> Result<(), ClientError> {
    let mut client = StationClient::connect(&config).await?;
    let per_phase: [f64; 3] =
        std::array::from_fn(|i| if i < usize::from(phases) { amps } else { 0.0 });
    let watts = per_phase.iter().sum::<f64>() * 230.0;
    let mut energy_wh = 0.0;
    match config.version {
        OcppVersion::V16 => {
            client.boot("Loadstar", "DemoSim").await?;
            client.status(false, false).await?;
            let start = client
                .call(&v16::StartTransactionRequest {
                    connector_id: 1,
                    id_tag: "DEMO-TAG".into(),
                    meter_start: 0,
                    timestamp: Utc::now(),
                    ..Default::default()
                })
                .await?;
            client.status(false, true).await?;
            while tokio::time::Instant::now() + every < until {
                client.idle(every).await?;
                energy_wh += watts * every.as_secs_f64() / 3600.0;
                client
                    .call(&v16::MeterValuesRequest {
                        connector_id: 1,
                        transaction_id: Some(start.transaction_id),
                        meter_value: vec![meter_value_v16(Utc::now(), energy_wh, per_phase)],
                    })
                    .await?;
            }
            // The EV unplugs: current falls to zero before the transaction ends.
            client
                .call(&v16::MeterValuesRequest {
                    connector_id: 1,
                    transaction_id: Some(start.transaction_id),
                    meter_value: vec![meter_value_v16(Utc::now(), energy_wh, [0.0; 3])],
                })
                .await?;
            client
                .call(&v16::StopTransactionRequest {
                    meter_stop: energy_wh as i64,
                    timestamp: Utc::now(),
                    transaction_id: start.transaction_id,
                    reason: Some(v16::Reason::EVDisconnected),
                    ..Default::default()
                })
                .await?;
            client.status(true, false).await?;
        }
        OcppVersion::V201 => {
            client.boot("Loadstar", "DemoSim").await?;
            client.status(false, false).await?;
            let tx = format!("{}-tx-1", config.station_id);
            let mut seq_no = 0;
            let event = |kind, seq_no, state, energy_wh: f64, amps: [f64; 3]| {
                v201::TransactionEventRequest {
                    event_type: kind,
                    timestamp: Utc::now(),
                    trigger_reason: v201::TriggerReasonEnum::MeterValuePeriodic,
                    seq_no,
                    transaction_info: v201::Transaction {
                        transaction_id: tx.clone(),
                        charging_state: Some(state),
                        ..Default::default()
                    },
                    evse: Some(v201::EVSE {
                        id: 1,
                        connector_id: Some(1),
                        ..Default::default()
                    }),
                    meter_value: Some(vec![meter_value_v201(Utc::now(), energy_wh, amps)]),
                    ..Default::default()
                }
            };
            client
                .call(&event(
                    v201::TransactionEventEnum::Started,
                    seq_no,
                    v201::ChargingStateEnum::Charging,
                    0.0,
                    per_phase,
                ))
                .await?;
            while tokio::time::Instant::now() + every < until {
                client.idle(every).await?;
                energy_wh += watts * every.as_secs_f64() / 3600.0;
                seq_no += 1;
                client
                    .call(&event(
                        v201::TransactionEventEnum::Updated,
                        seq_no,
                        v201::ChargingStateEnum::Charging,
                        energy_wh,
                        per_phase,
                    ))
                    .await?;
            }
            client
                .call(&event(
                    v201::TransactionEventEnum::Ended,
                    seq_no + 1,
                    v201::ChargingStateEnum::Idle,
                    energy_wh,
                    [0.0, 0.0, 0.0],
                ))
                .await?;
            client.status(true, false).await?;
        }
    }
    client.idle(Duration::from_millis(200)).await?;
    client.close().await;
    Ok(())
}

//! The load generator: N concurrent stations boot, start a session, then send a realistic mix
//! (half of it 3-phase MeterValues the CSMS stores, the rest Heartbeats and
//! StatusNotifications). It reports connections held, messages/s, latency percentiles and the
//! server's RSS and CPU (read from /proc when its pid is given).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use chrono::Utc;
use loadstar_ocpp::{OcppVersion, v16};
use serde::Serialize;
use tokio::sync::Mutex;
use tokio::time::Instant;

use crate::client::{ClientConfig, ClientError, StationClient};

/// What to generate.
#[derive(Debug, Clone)]
pub struct LoadConfig {
    /// e.g. `ws://127.0.0.1:9000/ocpp`
    pub url: String,
    pub stations: usize,
    pub version: OcppVersion,
    /// Station ids are `{prefix}{index:05}`.
    pub id_prefix: String,
    /// The Basic-auth password every generated station uses, if any.
    pub password: Option<String>,
    /// Target messages per second over all stations, once connected.
    pub rate: f64,
    /// How long to measure, after all stations connected.
    pub duration: Duration,
    /// New connections per second while ramping up.
    pub connect_rate: f64,
    /// The server's pid, for RSS and CPU.
    pub server_pid: Option<u32>,
}

/// What was measured.
#[derive(Debug, Clone, Default, Serialize)]
pub struct LoadReport {
    pub stations: usize,
    pub connected: usize,
    pub connect_failures: usize,
    /// Stations still connected at the end of the window.
    pub held: usize,
    pub messages: usize,
    pub meter_values: usize,
    pub heartbeats: usize,
    pub status_notifications: usize,
    pub errors: usize,
    pub seconds: f64,
    pub messages_per_second: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub server_rss_mib: Option<f64>,
    pub server_cpu_percent: Option<f64>,
    pub connect_seconds: f64,
}

impl std::fmt::Display for LoadReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "stations {} connected {} held {} connect failures {} (ramp {:.1} s)",
            self.stations, self.connected, self.held, self.connect_failures, self.connect_seconds
        )?;
        writeln!(
            f,
            "messages {} in {:.1} s = {:.0} msg/s (MeterValues {}, Heartbeat {}, StatusNotification {}), errors {}",
            self.messages,
            self.seconds,
            self.messages_per_second,
            self.meter_values,
            self.heartbeats,
            self.status_notifications,
            self.errors
        )?;
        write!(
            f,
            "latency p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            self.p50_ms, self.p99_ms, self.max_ms
        )?;
        if let (Some(rss), Some(cpu)) = (self.server_rss_mib, self.server_cpu_percent) {
            write!(f, "\nserver RSS {rss:.1} MiB, CPU {cpu:.0} % of one core")?;
        }
        Ok(())
    }
}

#[derive(Default)]
struct Tally {
    latencies_us: Vec<u32>,
    meter_values: usize,
    heartbeats: usize,
    status: usize,
    errors: usize,
}

/// Runs the load and reports. Progress goes to stderr.
pub async fn run(config: LoadConfig) -> LoadReport {
    let connected = Arc::new(AtomicUsize::new(0));
    let failures = Arc::new(AtomicUsize::new(0));
    let held = Arc::new(AtomicUsize::new(0));
    let tally = Arc::new(Mutex::new(Tally::default()));
    let start = Instant::now();
    let connect_gap = Duration::from_secs_f64(1.0 / config.connect_rate.max(1.0));
    // Every station's clock starts after the ramp, so the window measures steady state.
    let ramp = connect_gap * u32::try_from(config.stations).unwrap_or(u32::MAX);
    let window_start = start + ramp + Duration::from_secs(5);
    let window_end = window_start + config.duration;
    let per_station_gap = Duration::from_secs_f64(config.stations as f64 / config.rate.max(0.001));

    let mut tasks = Vec::with_capacity(config.stations);
    for index in 0..config.stations {
        let config = config.clone();
        let (connected, failures, held, tally) = (
            connected.clone(),
            failures.clone(),
            held.clone(),
            tally.clone(),
        );
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep_until(start + connect_gap * u32::try_from(index).unwrap_or(0)).await;
            let client_config = ClientConfig {
                url: config.url.clone(),
                station_id: format!("{}{index:05}", config.id_prefix),
                password: config.password.clone(),
                version: config.version,
                call_timeout: Duration::from_secs(30),
            };
            let mut client = match boot(&client_config).await {
                Ok(client) => client,
                Err(_) => {
                    failures.fetch_add(1, Ordering::Relaxed);
                    return;
                }
            };
            connected.fetch_add(1, Ordering::Relaxed);
            // Spread the stations' phases evenly over one gap.
            let offset = per_station_gap.mul_f64(index as f64 / config.stations.max(1) as f64);
            let mut next = window_start + offset;
            let mut local = Tally::default();
            let mut step = 0usize;
            let mut energy_wh = 1_000.0;
            let mut alive = true;
            while next < window_end {
                if client
                    .idle(next.saturating_duration_since(Instant::now()))
                    .await
                    .is_err()
                {
                    alive = false;
                    break;
                }
                let sent_at = Instant::now();
                let id = format!("lg{step}");
                let frame = match step % 4 {
                    0 | 2 => {
                        energy_wh += 30.0;
                        local.meter_values += 1;
                        meter_values_frame(config.version, &id, energy_wh)
                    }
                    1 => {
                        local.heartbeats += 1;
                        format!(r#"[2,"{id}","Heartbeat",{{}}]"#)
                    }
                    _ => {
                        local.status += 1;
                        status_frame(config.version, &id)
                    }
                };
                let answer =
                    tokio::time::timeout(Duration::from_secs(60), client.call_prebuilt(&id, frame))
                        .await
                        .unwrap_or(Err(ClientError::Closed));
                match answer {
                    Ok(true) => local
                        .latencies_us
                        .push(u32::try_from(sent_at.elapsed().as_micros()).unwrap_or(u32::MAX)),
                    Ok(false) => local.errors += 1,
                    Err(ClientError::Closed | ClientError::Connect(_)) => {
                        local.errors += 1;
                        alive = false;
                        break;
                    }
                    Err(_) => local.errors += 1,
                }
                step += 1;
                next += per_station_gap;
            }
            if alive {
                held.fetch_add(1, Ordering::Relaxed);
            }
            let mut total = tally.lock().await;
            total.latencies_us.extend(local.latencies_us);
            total.meter_values += local.meter_values;
            total.heartbeats += local.heartbeats;
            total.status += local.status;
            total.errors += local.errors;
            drop(total);
            // Stay connected until everyone is done, so `held` means held concurrently.
            let _ = client
                .idle(window_end.saturating_duration_since(Instant::now()) + Duration::from_secs(1))
                .await;
            client.close().await;
        }));
    }

    // Progress while ramping.
    let progress = {
        let connected = connected.clone();
        let failures = failures.clone();
        let total = config.stations;
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(2)).await;
                let c = connected.load(Ordering::Relaxed);
                let f = failures.load(Ordering::Relaxed);
                eprintln!("loadgen: {c}/{total} connected, {f} failed");
                if c + f >= total {
                    break;
                }
            }
        })
    };

    tokio::time::sleep_until(window_start).await;
    let connect_seconds = start.elapsed().as_secs_f64();
    let cpu_before = config.server_pid.and_then(process_cpu_ticks);
    let measured_from = Instant::now();
    tokio::time::sleep_until(window_end).await;
    let seconds = measured_from.elapsed().as_secs_f64();
    let cpu_after = config.server_pid.and_then(process_cpu_ticks);
    let rss = config.server_pid.and_then(process_rss_mib);
    for task in tasks {
        let _ = task.await;
    }
    progress.abort();

    let mut tally = Arc::try_unwrap(tally)
        .map(Mutex::into_inner)
        .unwrap_or_default();
    tally.latencies_us.sort_unstable();
    let pct = |p: f64| -> f64 {
        if tally.latencies_us.is_empty() {
            return 0.0;
        }
        let i = ((tally.latencies_us.len() as f64 - 1.0) * p).round() as usize;
        f64::from(tally.latencies_us[i]) / 1000.0
    };
    let messages = tally.latencies_us.len();
    LoadReport {
        stations: config.stations,
        connected: connected.load(Ordering::Relaxed),
        connect_failures: failures.load(Ordering::Relaxed),
        held: held.load(Ordering::Relaxed),
        messages,
        meter_values: tally.meter_values,
        heartbeats: tally.heartbeats,
        status_notifications: tally.status,
        errors: tally.errors,
        seconds,
        messages_per_second: messages as f64 / seconds.max(1e-9),
        p50_ms: pct(0.50),
        p99_ms: pct(0.99),
        max_ms: pct(1.0),
        server_rss_mib: rss,
        server_cpu_percent: match (cpu_before, cpu_after) {
            (Some(a), Some(b)) => {
                Some(b.saturating_sub(a) as f64 / clock_ticks_per_second() / seconds * 100.0)
            }
            _ => None,
        },
        connect_seconds,
    }
}

async fn boot(config: &ClientConfig) -> Result<StationClient, ClientError> {
    let mut client = StationClient::connect(config).await?;
    client.boot("Loadstar", "LoadGen").await?;
    if config.version == OcppVersion::V16 {
        // A session, so the MeterValues belong to a transaction as on a real site.
        client
            .call(&v16::StartTransactionRequest {
                connector_id: 1,
                id_tag: "LOADGEN".into(),
                meter_start: 1_000,
                reservation_id: None,
                timestamp: Utc::now(),
            })
            .await?;
    }
    Ok(client)
}

fn timestamp() -> String {
    Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// A 3-phase MeterValues frame (energy, current per phase, power), built as text: the load
/// generator must cost far less than the server it measures. Its shape matches
/// `client::meter_value_v16` / `meter_value_v201`, which the tests validate.
fn meter_values_frame(version: OcppVersion, id: &str, energy_wh: f64) -> String {
    let ts = timestamp();
    match version {
        OcppVersion::V16 => format!(
            r#"[2,"{id}","MeterValues",{{"connectorId":1,"meterValue":[{{"timestamp":"{ts}","sampledValue":[{{"value":"{energy_wh:.0}","measurand":"Energy.Active.Import.Register","unit":"Wh"}},{{"value":"16.0","measurand":"Current.Import","phase":"L1","unit":"A"}},{{"value":"16.0","measurand":"Current.Import","phase":"L2","unit":"A"}},{{"value":"16.0","measurand":"Current.Import","phase":"L3","unit":"A"}},{{"value":"11040","measurand":"Power.Active.Import","unit":"W"}}]}}]}}]"#
        ),
        OcppVersion::V201 => format!(
            r#"[2,"{id}","MeterValues",{{"evseId":1,"meterValue":[{{"timestamp":"{ts}","sampledValue":[{{"value":{energy_wh:.0},"measurand":"Energy.Active.Import.Register"}},{{"value":16.0,"measurand":"Current.Import","phase":"L1"}},{{"value":16.0,"measurand":"Current.Import","phase":"L2"}},{{"value":16.0,"measurand":"Current.Import","phase":"L3"}},{{"value":11040,"measurand":"Power.Active.Import"}}]}}]}}]"#
        ),
    }
}

fn status_frame(version: OcppVersion, id: &str) -> String {
    let ts = timestamp();
    match version {
        OcppVersion::V16 => format!(
            r#"[2,"{id}","StatusNotification",{{"connectorId":1,"errorCode":"NoError","status":"Charging","timestamp":"{ts}"}}]"#
        ),
        OcppVersion::V201 => format!(
            r#"[2,"{id}","StatusNotification",{{"timestamp":"{ts}","connectorStatus":"Occupied","evseId":1,"connectorId":1}}]"#
        ),
    }
}

/// utime + stime of a process, in clock ticks.
pub fn process_cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// Resident set size of a process, in MiB.
pub fn process_rss_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

fn clock_ticks_per_second() -> f64 {
    // USER_HZ is 100 on every Linux architecture Loadstar targets.
    100.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use loadstar_ocpp::Frame;
    use loadstar_ocpp::schema::{self, PayloadKind};

    #[test]
    fn prebuilt_frames_are_valid_ocpp() {
        for version in [OcppVersion::V16, OcppVersion::V201] {
            for text in [
                meter_values_frame(version, "m1", 12_345.0),
                status_frame(version, "s1"),
            ] {
                let Ok(Frame::Call {
                    action, payload, ..
                }) = Frame::parse(&text)
                else {
                    panic!("not a CALL: {text}");
                };
                schema::validate(version, &action, PayloadKind::Request, &payload)
                    .unwrap_or_else(|v| panic!("{version} {action}: {v}"));
            }
        }
    }
}

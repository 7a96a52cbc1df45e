//! The control loop at scale, in real time: N simulated stations (half 1.6, half 2.0.1) on
//! in-memory WebSockets with real OCPP-J framing, the grid meter through the `http-json-meter`
//! plugin on loopback, the real controller. Once every car charges, the connection limit drops
//! to half, and the bench measures
//! - the tick cost (gather, allocate, dispatch) while the site is settled, and
//! - the reaction time from the limit change to the last SetChargingProfile accepted, and to
//!   the simulated meter showing every line under the new limit.
//!
//! N = 1 runs first as the baseline of the same command: its reaction time is the floor of one
//! tick, one round trip and one ramp.
//!
//! `cargo bench -p loadstar --bench control` (add `-- 100` to run only N = 100).

use std::time::{Duration, Instant};

use chrono::Utc;
use loadstar::control::ExternalLimit;
use loadstar::simulate::{self, SimulateOptions};
use loadstar::site::GRID_ID;
use loadstar_optimizer::model::PerLine;
use loadstar_sims::drive::{self, DriveConfig};
use loadstar_sims::station::SimClock;

/// Per-phase current each car may take at most, A; the site allows `n × PER_CAR_A` first.
const PER_CAR_A: f64 = 16.0;

fn scenario(n: usize) -> loadstar_sims::scenario::Plan {
    let half = n.div_ceil(2);
    let rest = n - half;
    let mut groups = String::new();
    for (prefix, count, version) in [("V16", half, "1.6"), ("V201", rest, "2.0.1")] {
        if count == 0 {
            continue;
        }
        groups.push_str(&format!(
            r#"
[[stations]]
id_prefix = "{prefix}"
count = {count}
version = "{version}"
wiring = "rotated"
hardware_max_a = 32
ramp_delay_s = 2

[[vehicles]]
at = "{prefix}"
count = {count}
arrive = {{ from = "00:01", to = "00:01" }}
depart = "05:00"
capacity_kwh = 80
arrival_soc = 0.2
target_soc = 0.9
one_phase_share = 0.0
max_a = 32
"#
        ));
    }
    let text = format!(
        r#"name = "bench-{n}"
description = "reaction bench"
seed = 1
start = "2026-03-02T00:00:00Z"
duration_h = 6

[site]
grid = "wye"
phase_voltage_v = 230
limit_a = {limit}
base_load = [{{ at = "00:00", w = 0 }}]

[tariff]
slots = [{{ from = "00:00", price = 0.2 }}]
{groups}"#,
        limit = n as f64 * PER_CAR_A
    );
    loadstar_sims::scenario::parse("bench.toml", &text).unwrap_or_else(|e| panic!("{e}"))
}

struct Figures {
    n: usize,
    tick_median: Duration,
    tick_max: Duration,
    to_accepted: Option<Duration>,
    to_measured: Option<Duration>,
}

fn percentile(mut v: Vec<Duration>, p: f64) -> Duration {
    if v.is_empty() {
        return Duration::ZERO;
    }
    v.sort();
    v[((v.len() - 1) as f64 * p).round() as usize]
}

async fn run(n: usize) -> Figures {
    let dir = tempfile::tempdir().expect("temp dir");
    let now = Utc::now();
    let base = scenario(n);
    let plan = base
        .clone()
        .shifted(now + chrono::Duration::seconds(1) - base.start);
    let options = SimulateOptions {
        real_time: true,
        until: Some(now + chrono::Duration::seconds(240)),
        ..SimulateOptions::new(dir.path().to_path_buf())
    };
    let site = simulate::start(&plan, &options)
        .await
        .expect("controller starts");
    let controller = site.server.controller.clone();
    let state = site.server.state.clone();
    let meter = site.meter.subscribe();
    let measure = async {
        // Every car charging, then the site settled.
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let charging = state.lock().map(|s| s.active_sessions()).unwrap_or(0);
            if charging >= n || Instant::now() > deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // Cars that plugged in before their station had its fallback drew its max, which the
        // meter saw as load nobody controls; the estimate forgets it after 20 s.
        tokio::time::sleep(Duration::from_secs(45)).await;
        let charging = state.lock().map(|s| s.active_sessions()).unwrap_or(0);
        let given: f64 = controller
            .report()
            .iter()
            .filter_map(|e| e.accepted_a)
            .sum();
        eprintln!(
            "n = {n}: {charging} sessions, {given:.0} A given, the meter at {:.1} A; {:?}",
            meter.borrow().amps.max_abs(),
            controller
                .report()
                .first()
                .and_then(|e| e.decisions.last().cloned())
        );
        let costs: Vec<Duration> = controller
            .stats()
            .tick_costs
            .iter()
            .rev()
            .take(20)
            .copied()
            .collect();
        let tick_median = percentile(costs.clone(), 0.5);
        let tick_max = percentile(costs, 1.0);

        let new_limit = n as f64 * PER_CAR_A / 2.0;
        let t0 = Instant::now();
        let from = Utc::now();
        controller
            .set_limit(ExternalLimit {
                source: "bench".into(),
                node: GRID_ID.into(),
                limit: PerLine::splat(new_limit),
                from,
                until: from + chrono::Duration::hours(1),
                reason: "reaction bench".into(),
            })
            .expect("limit accepted");
        let mut to_measured = None;
        let mut to_accepted = None;
        let give_up = t0 + Duration::from_secs(30);
        while Instant::now() < give_up {
            let reading = *meter.borrow();
            if to_measured.is_none() && reading.amps.max_abs() <= new_limit + 1e-6 {
                to_measured = Some(t0.elapsed());
            }
            let report = controller.report();
            let settled = report.iter().all(|e| e.pending_a.is_none())
                && report.iter().filter_map(|e| e.accepted_a).sum::<f64>() <= new_limit + 1e-6;
            if to_accepted.is_none() && settled {
                to_accepted = controller
                    .stats()
                    .last_accepted
                    .filter(|at| *at >= t0)
                    .map(|at| at - t0);
            }
            if to_measured.is_some() && to_accepted.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        Figures {
            n,
            tick_median,
            tick_max,
            to_accepted,
            to_measured,
        }
    };
    let drive = drive::run(
        &plan,
        site.dialer(),
        SimClock::starting_at(now),
        &site.meter,
        DriveConfig {
            until: options.until,
            ..DriveConfig::default()
        },
    );
    tokio::select! {
        figures = measure => figures,
        _ = drive => panic!("the drive ended before the measurement"),
    }
}

fn main() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("error")),
        )
        .try_init();
    let only: Option<usize> = std::env::args().skip(1).find_map(|a| a.parse().ok());
    let sizes: Vec<usize> = match only {
        Some(n) => vec![1, n],
        None => vec![1, 100, 1000],
    };
    println!(
        "| stations | tick cost median / max | limit drop → last profile accepted | → meter under the new limit |"
    );
    println!("|---:|---:|---:|---:|");
    for n in sizes {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let f = runtime.block_on(run(n));
        let ms = |d: Option<Duration>| {
            d.map_or("not reached".to_owned(), |d| {
                format!("{:.0} ms", d.as_secs_f64() * 1e3)
            })
        };
        println!(
            "| {} | {:.2} / {:.2} ms | {} | {} |",
            f.n,
            f.tick_median.as_secs_f64() * 1e3,
            f.tick_max.as_secs_f64() * 1e3,
            ms(f.to_accepted),
            ms(f.to_measured)
        );
        runtime.shutdown_timeout(Duration::from_secs(1));
    }
}

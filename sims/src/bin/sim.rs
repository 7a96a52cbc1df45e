//! `loadstar-sim`: runs a scenario's stations, cars and meters in real time against a running
//! CSMS (Loadstar) over real sockets, then prints the KPI row and writes the plots.
//!
//! Simulated time is the real time: the plan is moved so that `--from` (an offset into the
//! scenario, `HH:MM`) is now. The meters listen on 127.0.0.1 and their addresses are printed,
//! for the site file's meter plugins.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use loadstar_sims::client::ClientConfig;
use loadstar_sims::drive::{self, DriveConfig};
use loadstar_sims::kpi::Kpis;
use loadstar_sims::meter::{serve_homewizard, serve_sunspec, serve_tariff};
use loadstar_sims::site::MeterReading;
use loadstar_sims::station::{SimClock, tcp_dialer};
use loadstar_sims::{plot, scenario};
use tokio::sync::watch;

#[derive(Parser, Debug)]
#[command(about = "Run a scenario's simulated stations, cars and meters against a CSMS")]
struct Args {
    /// The scenario file (sims/scenarios/*.toml).
    #[arg(long)]
    scenario: PathBuf,
    /// The OCPP endpoint without the station id.
    #[arg(long, default_value = "ws://127.0.0.1:9000/ocpp")]
    url: String,
    /// Basic-auth password every station uses.
    #[arg(long, env = "LOADSTAR_SIM_PASSWORD")]
    password: Option<String>,
    /// Where in the scenario to begin, HH:MM from its start.
    #[arg(long, default_value = "00:00")]
    from: String,
    /// How long to run, in hours (default: to the scenario's end).
    #[arg(long)]
    hours: Option<f64>,
    /// The controller's period, for the KPIs' reaction-lag allowance, seconds.
    #[arg(long, default_value_t = 5)]
    control_tick_s: u64,
    /// Directory for site.svg and vehicles.svg.
    #[arg(long, default_value = ".")]
    out: PathBuf,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber_init();
    let args = Args::parse();
    let plan = scenario::load(&args.scenario).map_err(anyhow::Error::msg)?;
    let from = parse_hhmm(&args.from).context("--from must be HH:MM")?;
    // The one wall-clock read: where simulated time meets real time.
    let now = chrono::Utc::now();
    let plan = {
        let by = now - (plan.start + chrono::Duration::seconds(from));
        plan.shifted(by)
    };
    let until = args
        .hours
        .map(|h| now + chrono::Duration::milliseconds((h * 3_600_000.0) as i64));

    let (meter, reading) = watch::channel(MeterReading::default());
    let sunspec = serve_sunspec(reading.clone(), "SIM-GRID").await?;
    let homewizard = serve_homewizard(reading, false).await?;
    let (_tariff_tx, tariff_rx) = watch::channel(plan.tariff.clone());
    let tariff = serve_tariff(tariff_rx).await?;
    println!(
        "scenario {} ({} stations, {} visits)",
        plan.name,
        plan.stations.len(),
        plan.visits.len()
    );
    println!(
        "sunspec meter   modbus-tcp://{}  (unit any, SunS at 40000)",
        sunspec.addr
    );
    println!("http meter      http://{}/api/v1/data", homewizard.addr);
    println!("tariff feed     http://{}/tariff", tariff.addr);

    let url = args.url.clone();
    let password = args.password.clone();
    let dial = move |config: &loadstar_sims::station::StationConfig| {
        tcp_dialer(ClientConfig {
            url: url.clone(),
            station_id: config.id.clone(),
            password: password.clone(),
            version: config.version,
            call_timeout: Duration::from_secs(30),
        })
    };
    let report = drive::run(
        &plan,
        dial,
        SimClock::starting_at(now),
        &meter,
        DriveConfig {
            control_tick: Duration::from_secs(args.control_tick_s),
            until,
            ..DriveConfig::default()
        },
    )
    .await;

    println!("{}", Kpis::TABLE_HEADER);
    println!("{}", report.kpis.table_row("loadstar"));
    std::fs::create_dir_all(&args.out)?;
    let lines = plan.site.model.grid().lines();
    std::fs::write(
        args.out.join("site.svg"),
        plot::site_current_svg(
            &format!("{}: site current per line", plan.name),
            &report.site,
            lines,
        ),
    )?;
    std::fs::write(
        args.out.join("vehicles.svg"),
        plot::vehicle_energy_svg(
            &format!("{}: energy per vehicle", plan.name),
            &report.vehicles,
        ),
    )?;
    Ok(())
}

fn parse_hhmm(text: &str) -> Option<i64> {
    let (h, m) = text.split_once(':')?;
    let (h, m): (i64, i64) = (h.parse().ok()?, m.parse().ok()?);
    (h >= 0 && (0..60).contains(&m)).then_some(h * 3600 + m * 60)
}

fn tracing_subscriber_init() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .try_init();
}

//! `loadstar-sim`: runs a scenario's stations, cars and meters in real time against a running
//! CSMS (Loadstar) over real sockets, then prints the KPI table (one row: the CSMS under test)
//! and writes the plots.
//!
//! Simulated time is the real time: the plan is moved so that `--from` (an offset into the
//! scenario, `HH:MM`) is now. The meters listen on 127.0.0.1 and their addresses are printed,
//! for the site file's meter plugins.
//!
//! With `--baselines` it runs no stations: for every `--scenario` it runs the reference
//! policies and the offline optimum in virtual time (`loadstar_sims::baseline`), prints the
//! same KPI table with their rows and writes each row's plots under `--out/<scenario>/`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use loadstar_sims::baseline::{self, RunConfig};
use loadstar_sims::client::ClientConfig;
use loadstar_sims::drive::{self, DriveConfig};
use loadstar_sims::meter::{serve_homewizard, serve_sunspec, serve_tariff};
use loadstar_sims::site::MeterReading;
use loadstar_sims::station::{SimClock, tcp_dialer};
use loadstar_sims::{kpi, plot, scenario};
use tokio::sync::watch;

#[derive(Parser, Debug)]
#[command(about = "Run a scenario's simulated stations, cars and meters against a CSMS")]
struct Args {
    /// The scenario file (sims/scenarios/*.toml); with --baselines, may be given several times.
    #[arg(long, required = true)]
    scenario: Vec<PathBuf>,
    /// Run the reference policies and the offline optimum in virtual time instead of driving
    /// stations against a CSMS.
    #[arg(long)]
    baselines: bool,
    /// With --baselines: the EV model's and the KPIs' resolution, seconds.
    #[arg(long, default_value_t = 1)]
    tick_s: u64,
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
    /// Directory for site.svg and vehicles.svg (with --baselines: <scenario>/<row>-site.svg, …).
    #[arg(long, default_value = ".")]
    out: PathBuf,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber_init();
    let args = Args::parse();
    if args.baselines {
        return run_baselines(&args);
    }
    let [scenario_file] = args.scenario.as_slice() else {
        anyhow::bail!("driving a CSMS takes exactly one --scenario");
    };
    let plan = scenario::load(scenario_file).map_err(anyhow::Error::msg)?;
    // Which targets were feasible at all, so the row counts the vehicles the baselines count.
    let feasible = match baseline::offline_optimum(&plan) {
        Ok(optimum) => plan
            .visits
            .iter()
            .map(|v| optimum.result.feasible_for(&v.id_tag))
            .collect(),
        Err(e) => {
            tracing::warn!(%e, "no offline optimum: every vehicle's target counts");
            Vec::new()
        }
    };
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
            feasible,
            ..DriveConfig::default()
        },
    )
    .await;

    print!(
        "{}",
        kpi::markdown_table(&plan.name, [("loadstar", &report.kpis)])
    );
    write_plots(&args.out, &plan, "", "loadstar", &report)
}

/// Runner (a) for every scenario: the KPI table per scenario, and the plots of every row.
fn run_baselines(args: &Args) -> anyhow::Result<()> {
    let config = RunConfig {
        tick: Duration::from_secs(args.tick_s),
        control_tick: Duration::from_secs(args.control_tick_s),
    };
    for file in &args.scenario {
        let plan = scenario::load(file).map_err(anyhow::Error::msg)?;
        let table = baseline::baselines(&plan, config)
            .with_context(|| format!("{}: baselines", file.display()))?;
        println!("{}", table.markdown());
        let dir = args.out.join(&plan.name);
        for (label, slug, report) in &table.rows {
            write_plots(&dir, &plan, &format!("{slug}-"), label, report)?;
        }
    }
    Ok(())
}

/// `<prefix>site.svg` (site current per line against the limit) and `<prefix>vehicles.svg`.
fn write_plots(
    dir: &Path,
    plan: &scenario::Plan,
    prefix: &str,
    label: &str,
    report: &drive::Report,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let lines = plan.site.model.grid().lines();
    let site = dir.join(format!("{prefix}site.svg"));
    std::fs::write(
        &site,
        plot::site_current_svg(
            &format!("{} ({label}): site current per line", plan.name),
            &report.site,
            lines,
        ),
    )
    .with_context(|| format!("writing {}", site.display()))?;
    let vehicles = dir.join(format!("{prefix}vehicles.svg"));
    std::fs::write(
        &vehicles,
        plot::vehicle_energy_svg(
            &format!("{} ({label}): energy per vehicle", plan.name),
            &report.vehicles,
        ),
    )
    .with_context(|| format!("writing {}", vehicles.display()))?;
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

//! The `loadstar` binary: `run`, `check-config` and `demo`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use loadstar::clock::Clock;
use loadstar::demo::{self, DemoOptions};
use loadstar::runtime::{Overrides, Server};
use loadstar::site::{LogFormat, SiteConfig};
use tracing::{info, warn};
use tracing_subscriber::EnvFilter;

#[derive(Parser, Debug)]
#[command(
    name = "loadstar",
    version,
    about = "On-site smart-charging energy manager and OCPP CSMS"
)]
struct Cli {
    /// Log format (overrides the site file's [logging] format).
    #[arg(long, global = true, value_enum)]
    log_format: Option<CliLogFormat>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum CliLogFormat {
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the controller for a site.
    Run {
        /// The site file (TOML).
        #[arg(long, short)]
        config: PathBuf,
        /// OCPP WebSocket listener (overrides [csms] listen).
        #[arg(long)]
        ocpp_listen: Option<SocketAddr>,
        /// REST API listener (overrides [api] listen).
        #[arg(long)]
        api_listen: Option<SocketAddr>,
        /// Data directory (overrides [store] data_dir).
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// Check a site file and report every mistake with its line and field.
    CheckConfig {
        /// The site file (TOML).
        file: PathBuf,
    },
    /// Run the embedded demo site: 20 simulated stations, the grid meter plugin, PV and a
    /// tariff, controlled by the real loop on loopback.
    Demo {
        /// How long the real-time demo runs, in seconds.
        #[arg(long, default_value_t = 90)]
        duration: u64,
        /// Run the whole scenario day in virtual time instead, with the baselines.
        #[arg(long)]
        fast: bool,
        /// Keep the store in this directory instead of a temporary one.
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// Run a sims scenario against the real controller in virtual time, and print its KPI
    /// table beside the baselines and the offline optimum.
    Simulate {
        /// The scenario file (see sims/scenarios/).
        scenario: PathBuf,
        /// Where the plots (SVG) and the KPI table go.
        #[arg(long, default_value = "simulate-report")]
        out: PathBuf,
        /// Keep the store in this directory instead of a temporary one.
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Skip the baselines (quicker).
        #[arg(long)]
        no_baselines: bool,
        /// Simulate only this many hours from the scenario's start.
        #[arg(long)]
        hours: Option<f64>,
        /// The control loop's period, in milliseconds.
        #[arg(long, default_value_t = 1000)]
        tick_ms: u64,
    },
}

fn init_logging(format: LogFormat, default_filter: &str) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    let result = match format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
    if let Err(e) = result {
        eprintln!("warning: logging not initialised: {e}");
    }
}

fn log_format(cli: Option<CliLogFormat>, site: LogFormat) -> LogFormat {
    match cli {
        Some(CliLogFormat::Json) => LogFormat::Json,
        Some(CliLogFormat::Text) => LogFormat::Text,
        None => site,
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::CheckConfig { file } => return check_config(&file),
        Command::Run {
            config,
            ocpp_listen,
            api_listen,
            data_dir,
        } => run(
            cli.log_format,
            &config,
            Overrides {
                ocpp_listen,
                api_listen,
                data_dir,
            },
        ),
        Command::Demo {
            duration,
            fast,
            data_dir,
        } => {
            init_logging(
                log_format(cli.log_format, LogFormat::Text),
                "warn,loadstar=info,loadstar::csms=warn,loadstar::plugins=warn,loadstar_sims=warn",
            );
            run_demo(duration, fast, data_dir)
        }
        Command::Simulate {
            scenario,
            out,
            data_dir,
            no_baselines,
            hours,
            tick_ms,
        } => {
            init_logging(
                log_format(cli.log_format, LogFormat::Text),
                "warn,loadstar=warn",
            );
            run_simulate(&scenario, &out, data_dir, !no_baselines, hours, tick_ms)
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn check_config(file: &std::path::Path) -> ExitCode {
    let report = loadstar::site::check(file);
    if report.is_ok() {
        println!("{report}");
        ExitCode::SUCCESS
    } else {
        eprintln!("{report}");
        ExitCode::FAILURE
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

fn run(
    cli_format: Option<CliLogFormat>,
    config: &std::path::Path,
    overrides: Overrides,
) -> anyhow::Result<()> {
    let site = SiteConfig::load(config).map_err(|e| anyhow::anyhow!("{e}"))?;
    init_logging(
        log_format(cli_format, site.logging().format),
        &site.logging().filter,
    );
    for w in site.warnings() {
        warn!("{w}");
    }
    if overrides.api_listen.is_some() {
        info!("--api-listen is accepted; the REST API arrives with the API issue");
    }
    runtime()?.block_on(async move {
        let server = Server::start(site, &overrides, Clock::real())
            .await
            .context("cannot start the controller")?;
        info!(ocpp = %server.ocpp_addr, data_dir = %server.data_dir.display(), "loadstar running");
        let reloader = tokio::spawn(reload_on_sighup(config.to_path_buf(), server.reloader()));
        wait_for_shutdown().await;
        reloader.abort();
        info!("shutting down");
        server.shutdown().context("flushing the store")?;
        Ok(())
    })
}

#[cfg(unix)]
async fn wait_for_shutdown() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        let _ = tokio::signal::ctrl_c().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

/// SIGHUP reloads the site file: limits, stations and settings change without a restart. A
/// file with errors changes nothing and says why.
#[cfg(unix)]
async fn reload_on_sighup(path: PathBuf, reloader: loadstar::runtime::Reloader) {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        warn!("cannot listen for SIGHUP: reloading the site file needs a restart");
        return;
    };
    while hup.recv().await.is_some() {
        match SiteConfig::load(&path) {
            Ok(site) => {
                for w in site.warnings() {
                    warn!("{w}");
                }
                reloader.reload(site);
            }
            Err(e) => warn!(file = %path.display(), "site file not reloaded, it has errors:\n{e}"),
        }
    }
}

#[cfg(not(unix))]
async fn reload_on_sighup(_: PathBuf, _: loadstar::runtime::Reloader) {}

#[cfg(not(unix))]
async fn wait_for_shutdown() {
    let _ = tokio::signal::ctrl_c().await;
}

fn run_demo(duration: u64, fast: bool, data_dir: Option<PathBuf>) -> anyhow::Result<()> {
    let options = DemoOptions {
        duration: Duration::from_secs(duration.max(5)),
        fast,
        data_dir,
        ..DemoOptions::default()
    };
    let summary = if fast {
        // Virtual time: a paused clock on one thread.
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .context("cannot start the async runtime")?
            .block_on(demo::run(options, |line| println!("{line}")))
    } else {
        runtime()?.block_on(demo::run(options, |line| println!("{line}")))
    }
    .context("demo failed")?;
    println!(
        "Demo done: {} of {} stations connected, {} sessions stored, {:.1} kWh delivered, {} profiles accepted.",
        summary.stations_connected,
        summary.stations,
        summary.sessions_stored,
        summary.energy_kwh,
        summary.profiles_sent
    );
    for (station, quirks) in &summary.quirks {
        println!("  {station}: {}", quirks.join("; "));
    }
    if summary.controller_excess_amp_s > 0.0 {
        anyhow::bail!(
            "the site went over its limit by the controller's doing: {:.1} A·s",
            summary.controller_excess_amp_s
        );
    }
    println!("No A·s over the connection limit caused by Loadstar.");
    Ok(())
}

fn run_simulate(
    scenario: &std::path::Path,
    out: &std::path::Path,
    data_dir: Option<PathBuf>,
    baselines: bool,
    hours: Option<f64>,
    tick_ms: u64,
) -> anyhow::Result<()> {
    let plan = loadstar_sims::scenario::load(scenario).map_err(anyhow::Error::msg)?;
    let keep = data_dir.is_some();
    let data_dir = data_dir.unwrap_or_else(|| {
        std::env::temp_dir().join(format!("loadstar-simulate-{}", std::process::id()))
    });
    let options = loadstar::simulate::SimulateOptions {
        until: hours.map(|h| plan.start + chrono::Duration::milliseconds((h * 3_600_000.0) as i64)),
        tick: Duration::from_millis(tick_ms.max(50)),
        ..loadstar::simulate::SimulateOptions::new(data_dir.clone())
    };
    println!(
        "simulating {} ({} stations, {} visits) in virtual time; store in {}",
        plan.name,
        plan.stations.len(),
        plan.visits.len(),
        data_dir.display()
    );
    if baselines {
        println!("running the baselines and the offline optimum first…");
    }
    let started = std::time::Instant::now();
    // Virtual time: a paused clock that jumps whenever every task waits.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .context("cannot start the async runtime")?;
    let sim = runtime
        .block_on(loadstar::simulate::run(&plan, &options, baselines))
        .context("simulation failed")?;
    println!("{}", sim.table);
    let v = &sim.report.kpis.violations;
    if v.total_amp_s > 0.0 {
        // The table rounds to 0.1 A·s; a small excess deserves its exact figures.
        println!(
            "Loadstar over the limit: {:.3} A·s (controller {:.3}, reaction lag {:.3}, building {:.3}, stations {:.3}); worst {}",
            v.total_amp_s,
            v.controller_amp_s,
            v.lag_amp_s,
            v.building_amp_s,
            v.stations_amp_s.iter().sum::<f64>(),
            v.worst.map_or("-".to_owned(), |w| format!(
                "{:.3} A on {:?} at {}",
                w.amps, w.line, w.at
            ))
        );
    }
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let dir = out.join(&plan.name);
    loadstar::simulate::write_plots(&dir, &plan, "loadstar", "loadstar", &sim.report)
        .with_context(|| format!("writing plots to {}", dir.display()))?;
    if let Some(b) = &sim.baselines {
        for (label, slug, report) in &b.rows {
            loadstar::simulate::write_plots(&dir, &plan, slug, label, report)
                .with_context(|| format!("writing plots to {}", dir.display()))?;
        }
    }
    if !keep {
        let _ = std::fs::remove_dir_all(&data_dir);
    }
    let decisions = dir.join("loadstar-evses.json");
    std::fs::write(
        &decisions,
        serde_json::to_string_pretty(&sim.evses).context("encoding the EVSE reports")?,
    )
    .with_context(|| format!("writing {}", decisions.display()))?;
    let table = dir.join("kpi.md");
    std::fs::write(&table, &sim.table).with_context(|| format!("writing {}", table.display()))?;
    println!(
        "plots and the table are in {} (ran in {:.1} s)",
        dir.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

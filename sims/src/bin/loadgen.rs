//! `loadstar-loadgen`: N concurrent OCPP stations against a CSMS; see `loadstar_sims::loadgen`.

use std::time::Duration;

use clap::Parser;
use loadstar_ocpp::OcppVersion;
use loadstar_sims::loadgen::{self, LoadConfig};

#[derive(Parser, Debug)]
#[command(about = "Drive a CSMS with N concurrent OCPP stations and report throughput and latency")]
struct Args {
    /// The OCPP endpoint without the station id.
    #[arg(long, default_value = "ws://127.0.0.1:9000/ocpp")]
    url: String,
    /// Concurrent stations.
    #[arg(long, default_value_t = 1000)]
    stations: usize,
    /// Target messages per second over all stations.
    #[arg(long, default_value_t = 2000.0)]
    rate: f64,
    /// Seconds to measure once every station is connected.
    #[arg(long, default_value_t = 30)]
    seconds: u64,
    /// New connections per second while ramping up.
    #[arg(long, default_value_t = 1000.0)]
    connect_rate: f64,
    /// OCPP version: 1.6 or 2.0.1.
    #[arg(long, default_value = "1.6")]
    ocpp: String,
    /// Station id prefix (ids are PREFIX00000, PREFIX00001, ...).
    #[arg(long, default_value = "LG")]
    prefix: String,
    /// Basic-auth password every station uses (the site must list them or allow unknown ones).
    #[arg(long, env = "LOADGEN_PASSWORD")]
    password: Option<String>,
    /// The CSMS's pid, to report its RSS and CPU.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Print the report as JSON too.
    #[arg(long)]
    json: bool,
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let version = match args.ocpp.as_str() {
        "1.6" | "ocpp1.6" => OcppVersion::V16,
        "2.0.1" | "ocpp2.0.1" => OcppVersion::V201,
        other => {
            eprintln!("error: --ocpp must be 1.6 or 2.0.1, not {other:?}");
            return std::process::ExitCode::from(2);
        }
    };
    let positive = |x: f64| x.is_finite() && x > 0.0;
    if !positive(args.rate) || !positive(args.connect_rate) {
        eprintln!("error: --rate and --connect-rate must be positive numbers");
        return std::process::ExitCode::from(2);
    }
    if args.stations == 0 {
        eprintln!("error: --stations must be at least 1");
        return std::process::ExitCode::from(2);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let report = runtime.block_on(loadgen::run(LoadConfig {
        url: args.url,
        stations: args.stations,
        version,
        id_prefix: args.prefix,
        password: args.password,
        rate: args.rate,
        duration: Duration::from_secs(args.seconds),
        connect_rate: args.connect_rate,
        server_pid: args.server_pid,
    }));
    println!("{report}");
    if args.json {
        match serde_json::to_string(&report) {
            Ok(json) => println!("{json}"),
            Err(e) => eprintln!("error: {e}"),
        }
    }
    if report.connected == 0 {
        eprintln!("error: no station could connect");
        return std::process::ExitCode::FAILURE;
    }
    std::process::ExitCode::SUCCESS
}

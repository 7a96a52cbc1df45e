//! Driving a scenario through simulated stations in virtual time, against an accept-everything
//! CSMS (no control): the schedule, the site meter and the KPIs.

use futures_util::{SinkExt, StreamExt};
use loadstar_ocpp::{Endpoint, EndpointConfig, Event, OcppVersion, Role};
use loadstar_sims::client::ClientError;
use loadstar_sims::drive::{DriveConfig, run};
use loadstar_sims::scenario::parse;
use loadstar_sims::site::MeterReading;
use loadstar_sims::station::{Dialing, SimClock};
use serde_json::json;
use tokio::io::DuplexStream;
use tokio::sync::{mpsc, watch};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::Role as WsRole;

const PLAN: &str = r#"name = "two-cars"
seed = 3
start = "2026-03-02T07:59:00Z"
duration_h = 2

[site]
grid = "wye"
phase_voltage_v = 230
limit_a = 24
base_load = [{ at = "00:00", w = 0 }]

[[stations]]
id_prefix = "S"
count = 2
version = "1.6"
wiring = "three_phase"

[[vehicles]]
at = "S"
count = 2
arrive = "00:01"
depart = "01:01"
capacity_kwh = 60
arrival_soc = 0.2
target_soc = 0.9
"#;

/// Answers every station call with the plainest acceptance; never sends a profile.
async fn accept_everything(mut ws: WebSocketStream<DuplexStream>, default_limit: Option<f64>) {
    let mut endpoint = Endpoint::new(OcppVersion::V16, Role::Csms, EndpointConfig::default());
    let mut transactions = 0;
    while let Some(Ok(message)) = ws.next().await {
        if let Message::Text(text) = message {
            endpoint.handle_text(text.as_str());
        }
        while let Some(event) = endpoint.poll_event() {
            if let Event::Call(call) = event {
                let now = "2026-03-02T08:00:00Z";
                let answer = match call.action.as_str() {
                    "BootNotification" => {
                        json!({"status": "Accepted", "currentTime": now, "interval": 300})
                    }
                    "Heartbeat" => json!({"currentTime": now}),
                    "Authorize" => json!({"idTagInfo": {"status": "Accepted"}}),
                    "StartTransaction" => {
                        transactions += 1;
                        json!({"idTagInfo": {"status": "Accepted"}, "transactionId": transactions})
                    }
                    _ => json!({}),
                };
                endpoint.respond(&call.id, &answer).unwrap();
                // A controller at its simplest: one TxDefaultProfile for the whole station.
                if call.action == "BootNotification"
                    && let Some(limit) = default_limit
                {
                    let profile = loadstar_ocpp::v16::SetChargingProfileRequest {
                        connector_id: 0,
                        cs_charging_profiles: loadstar_ocpp::v16::ChargingProfile {
                            charging_profile_id: 1,
                            stack_level: 0,
                            charging_profile_purpose:
                                loadstar_ocpp::v16::ChargingProfilePurposeType::TxDefaultProfile,
                            charging_profile_kind:
                                loadstar_ocpp::v16::ChargingProfileKindType::Relative,
                            charging_schedule: loadstar_ocpp::v16::ChargingSchedule {
                                charging_rate_unit: loadstar_ocpp::v16::ChargingRateUnitType::A,
                                charging_schedule_period: vec![
                                    loadstar_ocpp::v16::ChargingSchedulePeriod {
                                        start_period: 0,
                                        limit,
                                        number_phases: None,
                                    },
                                ],
                                ..Default::default()
                            },
                            ..Default::default()
                        },
                    };
                    endpoint
                        .call(&profile, loadstar_ocpp::Priority::Control)
                        .unwrap();
                }
            }
        }
        while let Some(text) = endpoint.poll_transmit(tokio::time::Instant::now().into_std()) {
            if ws.send(Message::text(text)).await.is_err() {
                return;
            }
        }
    }
}

async fn drive(
    plan: &loadstar_sims::scenario::Plan,
    default_limit: Option<f64>,
) -> (loadstar_sims::drive::Report, MeterReading) {
    drive_until(plan, default_limit, None).await
}

async fn drive_until(
    plan: &loadstar_sims::scenario::Plan,
    default_limit: Option<f64>,
    until: Option<chrono::DateTime<chrono::Utc>>,
) -> (loadstar_sims::drive::Report, MeterReading) {
    let config = DriveConfig {
        until,
        ..DriveConfig::default()
    };
    drive_with(plan, default_limit, config).await
}

async fn drive_with(
    plan: &loadstar_sims::scenario::Plan,
    default_limit: Option<f64>,
    config: DriveConfig,
) -> (loadstar_sims::drive::Report, MeterReading) {
    let (pipes, mut incoming) = mpsc::channel::<DuplexStream>(16);
    tokio::spawn(async move {
        while let Some(io) = incoming.recv().await {
            let ws = WebSocketStream::from_raw_socket(io, WsRole::Server, None).await;
            tokio::spawn(accept_everything(ws, default_limit));
        }
    });
    let dial = |_: &loadstar_sims::station::StationConfig| {
        let pipes = pipes.clone();
        move || {
            let pipes = pipes.clone();
            Box::pin(async move {
                let (station, csms) = tokio::io::duplex(1 << 16);
                pipes.send(csms).await.map_err(|_| ClientError::Closed)?;
                Ok(WebSocketStream::from_raw_socket(station, WsRole::Client, None).await)
            }) as Dialing<DuplexStream>
        }
    };
    let (meter, reading) = watch::channel(MeterReading::default());
    let report = run(
        plan,
        dial,
        SimClock::starting_at(plan.start),
        &meter,
        config,
    )
    .await;
    let last = *reading.borrow();
    (report, last)
}

#[tokio::test(start_paused = true)]
async fn an_uncontrolled_run_over_the_limit_is_the_controllers_excess() {
    let plan = parse("two-cars.toml", PLAN).unwrap();
    let (report, last) = drive(&plan, None).await;
    let k = &report.kpis;

    // Both cars drew 16 A on every line for their hour: 32 A on a 24 A limit, 8 A over on each
    // of the three lines.
    let v = &k.violations;
    let expected = 3.0 * 8.0 * 3600.0;
    assert!((v.total_amp_s - expected).abs() < 3.0 * 8.0 * 10.0, "{v:?}");
    assert!(
        (v.controller_amp_s - v.total_amp_s).abs() < 1e-6,
        "no control: {v:?}"
    );
    assert_eq!(v.building_amp_s, 0.0);
    assert_eq!(
        v.stations_amp_s.iter().sum::<f64>(),
        0.0,
        "they drew what they were allowed"
    );
    assert!((v.worst.unwrap().amps - 8.0).abs() < 1e-9);

    // Each car took about an hour at 11.04 kW; the meter imported the same.
    assert_eq!(report.vehicles.len(), 2);
    for (_, delivered, requested) in &report.vehicles {
        assert!((delivered - 11.04).abs() < 0.1, "{delivered}");
        assert!((requested - 42.0).abs() < 1e-9);
    }
    assert!(
        (k.import_kwh - k.delivered_kwh).abs() < 0.05,
        "{} vs {}",
        k.import_kwh,
        k.delivered_kwh
    );
    assert_eq!(k.reached_target_share, 0.0);
    assert!((k.jain_fairness - 1.0).abs() < 1e-6);
    assert_eq!(k.profiles_per_station_hour, (0.0, 0.0));
    assert!((last.import_wh / 1000.0 - k.import_kwh).abs() < 0.05);
    // One point per second of the two hours.
    assert!(
        (7190..=7201).contains(&report.site.len()),
        "{}",
        report.site.len()
    );
}

#[tokio::test(start_paused = true)]
async fn a_station_ignoring_its_profile_owns_the_excess_it_causes() {
    // Two stations each limited to 8 A by their TxDefaultProfile; one ignores it and draws 16 A.
    let text = PLAN
        .replace("limit_a = 24", "limit_a = 20")
        .replace("count = 2\nversion", "count = 1\nversion")
        .replace("count = 2\narrive", "count = 1\narrive")
        + r#"
[[stations]]
id_prefix = "Q"
count = 1
version = "1.6"
wiring = "three_phase"
quirks = ["ignores_profiles"]

[[vehicles]]
at = "Q"
count = 1
arrive = "00:01"
depart = "01:01"
capacity_kwh = 60
arrival_soc = 0.2
target_soc = 0.9
"#;
    let plan = parse("quirk.toml", &text).unwrap();
    assert_eq!(plan.stations.len(), 2);
    let (report, _) = drive(&plan, Some(8.0)).await;
    let v = &report.kpis.violations;
    // 8 + 16 = 24 A on a 20 A limit: 4 A over on each line, all the quirky station's.
    assert!(
        (v.total_amp_s - 3.0 * 4.0 * 3600.0).abs() < 3.0 * 4.0 * 10.0,
        "{v:?}"
    );
    assert_eq!(v.stations_amp_s.len(), 2);
    assert_eq!(v.stations_amp_s[0], 0.0);
    assert!((v.stations_amp_s[1] - v.total_amp_s).abs() < 1e-6, "{v:?}");
    assert_eq!(v.controller_amp_s, 0.0);
    assert!((report.kpis.profiles_per_station_hour.0 - 0.5).abs() < 1e-9);
    let delivered: Vec<f64> = report.vehicles.iter().map(|v| v.1).collect();
    assert!(
        (delivered[0] - 5.52).abs() < 0.05 && (delivered[1] - 11.04).abs() < 0.1,
        "{delivered:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_short_run_counts_only_the_cars_it_saw() {
    let plan = parse("two-cars.toml", PLAN).unwrap();
    // The cars arrive 1 min after the start; stop at 30 s.
    let until = plan.start + chrono::Duration::seconds(30);
    let (report, _) = drive_until(&plan, None, Some(until)).await;
    assert!(report.vehicles.is_empty());
    assert_eq!(report.kpis.requested_kwh, 0.0);
    assert!(
        (25..=31).contains(&report.site.len()),
        "{}",
        report.site.len()
    );
}

#[tokio::test(start_paused = true)]
async fn a_drive_without_control_lines_up_with_the_uncontrolled_baseline() {
    // Runner (b) over simulated stations against a CSMS that sends no profile, and runner (a)'s
    // uncontrolled policy in virtual time, on the same plan: the same day, the same KPIs (the
    // stations take a few seconds to boot and start their transactions), the same table.
    use loadstar_sims::baseline::{Policy, RunConfig, offline_optimum, run_policy};
    use loadstar_sims::kpi::{Kpis, markdown_table};

    let plan = parse("two-cars.toml", PLAN).unwrap();
    // Both count "reached target" over the vehicles the optimum says were feasible.
    let optimum = offline_optimum(&plan).unwrap();
    let feasible = plan
        .visits
        .iter()
        .map(|v| optimum.result.feasible_for(&v.id_tag))
        .collect();
    let config = DriveConfig {
        feasible,
        ..DriveConfig::default()
    };
    let (driven, _) = drive_with(&plan, None, config).await;
    let baseline = run_policy(
        &plan,
        Policy::Uncontrolled,
        Some(&optimum),
        RunConfig::default(),
    )
    .unwrap();
    let (d, b) = (&driven.kpis, &baseline.kpis);
    assert!(
        (d.delivered_kwh - b.delivered_kwh).abs() < 0.1,
        "{d:?} vs {b:?}"
    );
    assert!((d.requested_kwh - b.requested_kwh).abs() < 1e-9);
    let (dv, bv) = (&d.violations, &b.violations);
    assert!(
        (dv.total_amp_s - bv.total_amp_s).abs() < 3.0 * 8.0 * 10.0,
        "{dv:?} vs {bv:?}"
    );
    assert!((dv.controller_amp_s - bv.controller_amp_s).abs() < 3.0 * 8.0 * 10.0);
    assert_eq!(dv.worst.map(|w| w.amps), bv.worst.map(|w| w.amps));
    assert!((d.energy_cost - b.energy_cost).abs() < 1e-9);
    assert_eq!(d.reached_target, b.reached_target);
    assert_eq!(driven.vehicles.len(), baseline.vehicles.len());

    let table = markdown_table(&plan.name, [("loadstar", d), ("uncontrolled", b)]);
    let columns = |line: &str| line.matches('|').count();
    let header = Kpis::TABLE_HEADER.lines().next().unwrap();
    let rows: Vec<&str> = table.lines().filter(|l| l.starts_with("| ")).collect();
    assert_eq!(rows.len(), 3, "{table}");
    for row in rows {
        assert_eq!(columns(row), columns(header), "{row}");
    }
}

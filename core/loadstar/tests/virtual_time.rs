//! A whole day of a station's life under virtual time: real WebSocket framing over in-memory
//! pipes, tokio's paused clock, and the CSMS reading time only from its `Clock`.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use loadstar::clock::Clock;
use loadstar::csms::{Admission, Csms, CsmsConfig, StationDirectory};
use loadstar::state::SiteState;
use loadstar::store::{SessionFilter, SledStore, Store};
use loadstar_ocpp::{OcppVersion, v16};
use loadstar_sims::client::StationClient;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::Role;

struct Everyone;
impl StationDirectory for Everyone {
    fn admit(&self, _: &str, _: Option<&str>) -> Admission {
        Admission::Known
    }
}

#[tokio::test(start_paused = true)]
async fn a_simulated_day_runs_on_virtual_time() {
    let start: DateTime<Utc> = Utc
        .with_ymd_and_hms(2026, 3, 29, 0, 0, 0)
        .single()
        .expect("valid start");
    let clock = Clock::virtual_from(start);
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(SledStore::open(dir.path()).expect("store"));
    let state = Arc::new(Mutex::new(SiteState::default()));
    let csms = Csms::new(
        CsmsConfig::default(),
        Arc::new(Everyone),
        state.clone(),
        store.clone() as Arc<dyn Store>,
        clock.clone(),
    );

    let (station_io, csms_io) = tokio::io::duplex(64 * 1024);
    let server_ws = WebSocketStream::from_raw_socket(csms_io, Role::Server, None).await;
    let server = csms.clone();
    tokio::spawn(async move {
        server
            .serve_stream(
                server_ws,
                "SIM-1".into(),
                OcppVersion::V16,
                Admission::Known,
            )
            .await;
    });
    let client_ws = WebSocketStream::from_raw_socket(station_io, Role::Client, None).await;
    let mut station =
        StationClient::from_stream(client_ws, OcppVersion::V16, Duration::from_secs(30));

    let boot = station
        .call(&v16::BootNotificationRequest {
            charge_point_vendor: "V".into(),
            charge_point_model: "M".into(),
            ..Default::default()
        })
        .await
        .expect("boot");
    assert_eq!(
        boot.current_time, start,
        "the CSMS answers with its virtual time"
    );

    let started = station
        .call(&v16::StartTransactionRequest {
            connector_id: 1,
            id_tag: "T".into(),
            meter_start: 0,
            timestamp: clock.now(),
            ..Default::default()
        })
        .await
        .expect("start");

    // One MeterValues a minute for 24 h: 1,440 round trips, 7.36 kW on one phase.
    let mut energy_wh: f64 = 0.0;
    for _ in 0..1440 {
        station
            .idle(Duration::from_secs(60))
            .await
            .expect("connected");
        energy_wh += 7360.0 / 60.0;
        station
            .call(&v16::MeterValuesRequest {
                connector_id: 1,
                transaction_id: Some(started.transaction_id),
                meter_value: vec![v16::MeterValue {
                    timestamp: clock.now(),
                    sampled_value: vec![
                        v16::SampledValue {
                            value: format!("{energy_wh:.0}"),
                            ..Default::default()
                        },
                        v16::SampledValue {
                            value: "32.0".into(),
                            measurand: Some(v16::Measurand::CurrentImport),
                            phase: Some(v16::Phase::L1),
                            ..Default::default()
                        },
                    ],
                }],
            })
            .await
            .expect("meter values");
    }
    let heartbeat = station
        .call(&v16::HeartbeatRequest {})
        .await
        .expect("heartbeat");
    assert_eq!(heartbeat.current_time, start + chrono::Duration::days(1));
    station
        .call(&v16::StopTransactionRequest {
            meter_stop: energy_wh.round() as i64,
            timestamp: clock.now(),
            transaction_id: started.transaction_id,
            ..Default::default()
        })
        .await
        .expect("stop");

    let sessions = store.sessions(&SessionFilter::default()).expect("sessions");
    assert_eq!(sessions.len(), 1);
    assert_eq!(
        sessions[0].ended_at,
        Some(start + chrono::Duration::days(1))
    );
    assert_eq!(sessions[0].energy_wh, (7360.0 * 24.0_f64).round());
    let samples = store
        .samples("SIM-1", 1, start, start + chrono::Duration::days(2))
        .expect("samples");
    assert_eq!(samples.len(), 1440);
    assert_eq!(samples[0].at, start + chrono::Duration::minutes(1));
    assert_eq!(samples[1439].at, start + chrono::Duration::days(1));
    assert!(samples.iter().all(|s| s.current_a[0] == Some(32.0)));
}

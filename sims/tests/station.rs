//! The simulated station end to end, against a tiny CSMS built from `loadstar-ocpp`'s CSMS-role
//! endpoint, over real WebSocket framing on in-memory pipes, in paused virtual time.

use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use futures_util::{SinkExt, StreamExt};
use loadstar_ocpp::rpc::{IncomingCall, decode_response};
use loadstar_ocpp::{
    Endpoint, EndpointConfig, Event, OcppVersion, Priority, Request, Role, v16, v201,
};
use loadstar_optimizer::model::{ElectricalModel, Line, StationWiring};
use loadstar_sims::client::ClientError;
use loadstar_sims::ev::EvSpec;
use loadstar_sims::station::*;
use serde_json::{Value, json};
use tokio::io::DuplexStream;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::Role as WsRole;

fn start() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 3, 5, 8, 0, 0).unwrap()
}

fn config(version: OcppVersion, quirks: Quirks) -> StationConfig {
    let circuit = ElectricalModel::WYE_230_400
        .station(StationWiring::three_phase(Line::ALL))
        .unwrap();
    StationConfig {
        quirks,
        ..StationConfig::new("SIM-1", version, circuit)
    }
}

/// The CSMS side of the test: answers the station's calls like a plain CSMS and records them.
struct Csms {
    ws: WebSocketStream<DuplexStream>,
    endpoint: Endpoint,
    received: Vec<(String, Value)>,
    next_transaction: i32,
}

impl Csms {
    async fn accept(pipes: &mut mpsc::Receiver<DuplexStream>, version: OcppVersion) -> Csms {
        let io = pipes.recv().await.expect("the station dials");
        Csms {
            ws: WebSocketStream::from_raw_socket(io, WsRole::Server, None).await,
            endpoint: Endpoint::new(
                version,
                Role::Csms,
                EndpointConfig {
                    call_timeout: Duration::from_secs(30),
                    ..EndpointConfig::default()
                },
            ),
            received: Vec::new(),
            next_transaction: 1,
        }
    }

    fn answer(&mut self, call: IncomingCall) {
        let now = start();
        let payload = match call.action.as_str() {
            "BootNotification" => {
                json!({"status": "Accepted", "currentTime": now, "interval": 300})
            }
            "Heartbeat" => json!({"currentTime": now}),
            "Authorize" if self.endpoint.version() == OcppVersion::V16 => {
                json!({"idTagInfo": {"status": "Accepted"}})
            }
            "Authorize" => json!({"idTokenInfo": {"status": "Accepted"}}),
            "StartTransaction" => {
                self.next_transaction += 1;
                json!({"idTagInfo": {"status": "Accepted"}, "transactionId": self.next_transaction - 1})
            }
            "StopTransaction" => json!({}),
            "NotifyEVChargingNeeds" => json!({"status": "Accepted"}),
            _ => json!({}),
        };
        self.received
            .push((call.action.clone(), call.payload.clone()));
        self.endpoint
            .respond(&call.id, &payload)
            .expect("valid answer");
    }

    async fn flush(&mut self) {
        let now = Instant::now().into_std();
        while let Some(text) = self.endpoint.poll_transmit(now) {
            self.ws.send(Message::text(text)).await.expect("send");
        }
    }

    /// Reads one frame or waits until `until`; returns responses to our calls. `false` once
    /// the connection is gone.
    async fn step(&mut self, until: Instant, responses: &mut Vec<Event>) -> bool {
        self.flush().await;
        let open = tokio::select! {
            m = self.ws.next() => match m {
                Some(Ok(Message::Text(t))) => { self.endpoint.handle_text(t.as_str()); true }
                Some(Ok(_)) => true,
                _ => false,
            },
            () = tokio::time::sleep_until(until) => true,
        };
        self.endpoint.handle_timeout(Instant::now().into_std());
        while let Some(event) = self.endpoint.poll_event() {
            match event {
                Event::Call(call) => self.answer(call),
                e @ Event::Response { .. } => responses.push(e),
                Event::Refused { .. } => {}
            }
        }
        self.flush().await;
        open
    }

    /// Serves for `duration` of virtual time; false if the station hung up.
    async fn serve(&mut self, duration: Duration) -> bool {
        let until = Instant::now() + duration;
        let mut responses = Vec::new();
        while Instant::now() < until {
            if !self.step(until, &mut responses).await {
                return false;
            }
        }
        true
    }

    /// Sends a call and serves until it is answered (or times out).
    async fn call<T: Request>(&mut self, request: &T) -> Result<T::Response, String> {
        let id = self
            .endpoint
            .call(request, Priority::Control)
            .map_err(|e| e.to_string())?;
        let until = Instant::now() + Duration::from_secs(120);
        let mut responses = Vec::new();
        while Instant::now() < until {
            if !self.step(until, &mut responses).await {
                return Err("closed".into());
            }
            for e in responses.drain(..) {
                if let Event::Response { call, result, .. } = e
                    && call == id
                {
                    let payload = result.map_err(|e| e.to_string())?;
                    return decode_response::<T>(payload).map_err(|v| v.to_string());
                }
            }
        }
        Err("no answer".into())
    }

    fn count(&self, action: &str) -> usize {
        self.received.iter().filter(|(a, _)| a == action).count()
    }

    fn last(&self, action: &str) -> Option<&Value> {
        self.received
            .iter()
            .rev()
            .find(|(a, _)| a == action)
            .map(|(_, p)| p)
    }
}

fn dialer() -> (
    impl FnMut() -> Dialing<DuplexStream> + Send + 'static,
    mpsc::Receiver<DuplexStream>,
) {
    let (tx, rx) = mpsc::channel(4);
    let dial = move || {
        let tx = tx.clone();
        Box::pin(async move {
            let (station, csms) = tokio::io::duplex(1 << 16);
            tx.send(csms).await.map_err(|_| ClientError::Closed)?;
            Ok(WebSocketStream::from_raw_socket(station, WsRole::Client, None).await)
        }) as Dialing<DuplexStream>
    };
    (dial, rx)
}

struct Rig {
    csms: Csms,
    station: StationHandle,
    pipes: mpsc::Receiver<DuplexStream>,
}

impl Rig {
    async fn new(config: StationConfig) -> Rig {
        let version = config.version;
        let clock = SimClock::starting_at(start());
        let sim = StationSim::new(config, start()).unwrap();
        let (dial, mut pipes) = dialer();
        let station = spawn(sim, dial, clock);
        let mut csms = Csms::accept(&mut pipes, version).await;
        assert!(csms.serve(Duration::from_secs(2)).await);
        assert_eq!(csms.count("BootNotification"), 1);
        Rig {
            csms,
            station,
            pipes,
        }
    }

    async fn plug_in(&mut self, spec: EvSpec) {
        self.station
            .commands
            .send(Command::PlugIn {
                evse: 1,
                spec,
                id_tag: "TAG1".into(),
            })
            .await
            .unwrap();
        assert!(self.csms.serve(Duration::from_secs(3)).await);
    }

    fn evse(&self) -> EvseSnapshot {
        self.station.snapshot.borrow().evses[0].clone()
    }
}

fn tx_profile_v16(limit: f64, transaction_id: Option<i32>) -> v16::SetChargingProfileRequest {
    v16::SetChargingProfileRequest {
        connector_id: 1,
        cs_charging_profiles: v16::ChargingProfile {
            charging_profile_id: 10,
            transaction_id,
            stack_level: 0,
            charging_profile_purpose: v16::ChargingProfilePurposeType::TxProfile,
            charging_profile_kind: v16::ChargingProfileKindType::Relative,
            charging_schedule: v16::ChargingSchedule {
                charging_rate_unit: v16::ChargingRateUnitType::A,
                charging_schedule_period: vec![v16::ChargingSchedulePeriod {
                    start_period: 0,
                    limit,
                    number_phases: None,
                }],
                ..Default::default()
            },
            ..Default::default()
        },
    }
}

fn default_profile_v16(id: i32, limit: f64) -> v16::SetChargingProfileRequest {
    let mut req = tx_profile_v16(limit, None);
    req.connector_id = 0;
    req.cs_charging_profiles.charging_profile_id = id;
    req.cs_charging_profiles.charging_profile_purpose =
        v16::ChargingProfilePurposeType::TxDefaultProfile;
    req
}

fn measurands(meter_values: &Value) -> Vec<String> {
    meter_values["meterValue"][0]["sampledValue"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            format!(
                "{}{}",
                v["measurand"]
                    .as_str()
                    .unwrap_or("Energy.Active.Import.Register"),
                v["phase"]
                    .as_str()
                    .map(|p| format!("@{p}"))
                    .unwrap_or_default()
            )
        })
        .collect()
}

#[tokio::test(start_paused = true)]
async fn v16_session_reporting_and_a_tx_profile_within_the_ramp_delay() {
    let mut rig = Rig::new(config(OcppVersion::V16, Quirks::default())).await;
    assert_eq!(rig.csms.count("StatusNotification"), 1);
    rig.plug_in(EvSpec::typical(0.2, 0.9)).await;
    assert_eq!(rig.csms.count("Authorize"), 1);
    assert_eq!(rig.csms.count("StartTransaction"), 1);
    let evse = rig.evse();
    assert_eq!(evse.transaction_id.as_deref(), Some("1"));
    assert_eq!(evse.measured_amps, 16.0);
    assert_eq!(evse.status, EvseStatus::Charging);

    // Spec defaults: nothing for 15 minutes, then the energy register alone.
    assert!(rig.csms.serve(Duration::from_secs(890)).await);
    assert_eq!(rig.csms.count("MeterValues"), 0);
    assert!(rig.csms.serve(Duration::from_secs(20)).await);
    assert_eq!(rig.csms.count("MeterValues"), 1);
    let mv = rig.csms.last("MeterValues").unwrap();
    assert_eq!(measurands(mv), vec!["Energy.Active.Import.Register"]);
    assert_eq!(mv["transactionId"], 1);
    // 900 s at 16 A on three 230 V phases: 2 760 Wh.
    let wh: f64 = mv["meterValue"][0]["sampledValue"][0]["value"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((wh - 2760.0).abs() <= 40.0, "{wh}");

    // The CSMS configures reporting.
    for (key, value) in [
        (
            "MeterValuesSampledData",
            "Energy.Active.Import.Register,Power.Active.Import,Current.Import,Current.Offered",
        ),
        ("MeterValueSampleInterval", "10"),
    ] {
        let answer = rig
            .csms
            .call(&v16::ChangeConfigurationRequest {
                key: key.into(),
                value: value.into(),
            })
            .await
            .unwrap();
        assert_eq!(answer.status, v16::ConfigurationStatus::Accepted);
    }
    let bad = rig
        .csms
        .call(&v16::ChangeConfigurationRequest {
            key: "MeterValuesSampledData".into(),
            value: "Temperature".into(),
        })
        .await
        .unwrap();
    assert_eq!(bad.status, v16::ConfigurationStatus::Rejected);
    assert!(rig.csms.serve(Duration::from_secs(12)).await);
    let mv = rig.csms.last("MeterValues").unwrap().clone();
    assert_eq!(
        measurands(&mv),
        vec![
            "Energy.Active.Import.Register",
            "Power.Active.Import",
            "Current.Import@L1",
            "Current.Import@L2",
            "Current.Import@L3",
            "Current.Offered"
        ]
    );
    let values: Vec<&str> = mv["meterValue"][0]["sampledValue"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["value"].as_str().unwrap())
        .collect();
    assert_eq!(&values[1..], &["11040", "16.0", "16.0", "16.0", "32.0"]);

    // A 10 A TxProfile: accepted, not yet applied, then applied within the ramp delay (2 s).
    let answer = rig.csms.call(&tx_profile_v16(10.0, Some(1))).await.unwrap();
    assert_eq!(answer.status, v16::ChargingProfileStatus::Accepted);
    let applied_from = Instant::now();
    assert_eq!(
        rig.evse().measured_amps,
        16.0,
        "the car cannot follow instantly"
    );
    let mut lag = None;
    while applied_from.elapsed() <= Duration::from_secs(6) {
        assert!(rig.csms.serve(Duration::from_millis(250)).await);
        if rig.evse().measured_amps <= 10.0 {
            lag = Some(applied_from.elapsed());
            break;
        }
    }
    let lag = lag.expect("the car followed the profile");
    assert!(lag <= Duration::from_millis(3250), "{lag:?}");
    assert!(rig.csms.serve(Duration::from_secs(11)).await);
    let mv = rig.csms.last("MeterValues").unwrap();
    assert_eq!(mv["meterValue"][0]["sampledValue"][2]["value"], "10.0");

    // The composite schedule shows it; a profile for another transaction is refused.
    let composite = rig
        .csms
        .call(&v16::GetCompositeScheduleRequest {
            connector_id: 1,
            duration: 600,
            charging_rate_unit: Some(v16::ChargingRateUnitType::A),
        })
        .await
        .unwrap();
    assert_eq!(composite.status, v16::GetCompositeScheduleStatus::Accepted);
    assert_eq!(
        composite
            .charging_schedule
            .unwrap()
            .charging_schedule_period[0]
            .limit,
        10.0
    );
    let wrong = rig.csms.call(&tx_profile_v16(6.0, Some(99))).await.unwrap();
    assert_eq!(wrong.status, v16::ChargingProfileStatus::Rejected);

    // Cleared: back to the car's 16 A.
    let cleared = rig
        .csms
        .call(&v16::ClearChargingProfileRequest {
            id: Some(10),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(cleared.status, v16::ClearChargingProfileStatus::Accepted);
    assert!(rig.csms.serve(Duration::from_secs(4)).await);
    assert_eq!(rig.evse().measured_amps, 16.0);

    // The car leaves: StopTransaction with the register.
    rig.station
        .commands
        .send(Command::Unplug { evse: 1 })
        .await
        .unwrap();
    assert!(rig.csms.serve(Duration::from_secs(2)).await);
    let stop = rig.csms.last("StopTransaction").unwrap();
    assert_eq!(stop["transactionId"], 1);
    assert!(stop["meterStop"].as_i64().unwrap() > 2760);
    assert_eq!(rig.evse().status, EvseStatus::Available);
}

#[tokio::test(start_paused = true)]
async fn the_ignores_profiles_quirk_keeps_drawing() {
    let quirks = Quirks {
        ignores_profiles: true,
        ..Quirks::default()
    };
    let mut rig = Rig::new(config(OcppVersion::V16, quirks)).await;
    rig.plug_in(EvSpec::typical(0.2, 0.9)).await;
    let answer = rig.csms.call(&tx_profile_v16(6.0, Some(1))).await.unwrap();
    assert_eq!(answer.status, v16::ChargingProfileStatus::Accepted);
    assert!(rig.csms.serve(Duration::from_secs(10)).await);
    assert_eq!(rig.evse().measured_amps, 16.0);
    assert_eq!(rig.station.snapshot.borrow().profiles, 1);
}

async fn disconnect_and_back(rig: &mut Rig, offline: Duration) -> (f64, f64) {
    let answer = rig.csms.call(&default_profile_v16(3, 8.0)).await.unwrap();
    assert_eq!(answer.status, v16::ChargingProfileStatus::Accepted);
    assert!(rig.csms.serve(Duration::from_secs(4)).await);
    assert_eq!(rig.evse().measured_amps, 8.0);
    rig.station
        .commands
        .send(Command::Fault(Fault::Disconnect(offline)))
        .await
        .unwrap();
    assert!(
        !rig.csms.serve(Duration::from_secs(5)).await,
        "the station hung up"
    );
    // Offline, the car follows the installed profile.
    tokio::time::sleep(offline / 2).await;
    let offline_amps = rig.evse().measured_amps;
    assert!(!rig.station.snapshot.borrow().online);
    rig.csms = Csms::accept(&mut rig.pipes, OcppVersion::V16).await;
    assert!(rig.csms.serve(Duration::from_secs(6)).await);
    assert_eq!(rig.csms.count("BootNotification"), 1);
    (offline_amps, rig.evse().measured_amps)
}

#[tokio::test(start_paused = true)]
async fn offline_a_station_keeps_its_profiles_and_the_dropping_quirk_loses_them() {
    let mut rig = Rig::new(config(OcppVersion::V16, Quirks::default())).await;
    rig.plug_in(EvSpec::typical(0.2, 0.9)).await;
    assert_eq!(
        disconnect_and_back(&mut rig, Duration::from_secs(60)).await,
        (8.0, 8.0)
    );
    assert_eq!(rig.station.snapshot.borrow().profiles, 1);

    let quirks = Quirks {
        drops_profiles_on_reconnect: true,
        ..Quirks::default()
    };
    let mut rig = Rig::new(config(OcppVersion::V16, quirks)).await;
    rig.plug_in(EvSpec::typical(0.2, 0.9)).await;
    assert_eq!(
        disconnect_and_back(&mut rig, Duration::from_secs(60)).await,
        (8.0, 16.0)
    );
    assert_eq!(rig.station.snapshot.borrow().profiles, 0);
}

#[tokio::test(start_paused = true)]
async fn the_go_e_quirk_ignores_the_first_raise_after_zero() {
    let quirks = Quirks {
        ignores_raise_after_zero: true,
        ..Quirks::default()
    };
    let mut rig = Rig::new(config(OcppVersion::V16, quirks)).await;
    rig.plug_in(EvSpec::typical(0.2, 0.9)).await;
    let set = async |rig: &mut Rig, limit| {
        let answer = rig.csms.call(&default_profile_v16(3, limit)).await.unwrap();
        assert_eq!(answer.status, v16::ChargingProfileStatus::Accepted);
        assert!(rig.csms.serve(Duration::from_secs(4)).await);
        rig.evse().measured_amps
    };
    assert_eq!(set(&mut rig, 0.0).await, 0.0);
    assert_eq!(rig.evse().status, EvseStatus::SuspendedEvse);
    assert_eq!(
        set(&mut rig, 16.0).await,
        0.0,
        "the first raise is swallowed"
    );
    assert_eq!(set(&mut rig, 16.0).await, 16.0, "the second one lands");
}

#[tokio::test(start_paused = true)]
async fn stop_answering_times_out_the_csms_and_recovers() {
    let mut rig = Rig::new(config(OcppVersion::V16, Quirks::default())).await;
    rig.station
        .commands
        .send(Command::Fault(Fault::StopAnswering(Duration::from_secs(
            60,
        ))))
        .await
        .unwrap();
    assert!(rig.csms.serve(Duration::from_secs(1)).await);
    let request = v16::GetConfigurationRequest {
        key: Some(vec!["HeartbeatInterval".into()]),
    };
    assert!(
        rig.csms
            .call(&request)
            .await
            .unwrap_err()
            .contains("no answer")
    );
    assert!(rig.csms.serve(Duration::from_secs(40)).await);
    let answer = rig.csms.call(&request).await.unwrap();
    assert_eq!(
        answer.configuration_key.unwrap()[0].value.as_deref(),
        Some("300")
    );
}

#[tokio::test(start_paused = true)]
async fn reboot_ends_the_session_and_boots_again() {
    let mut rig = Rig::new(config(OcppVersion::V16, Quirks::default())).await;
    rig.plug_in(EvSpec::typical(0.2, 0.9)).await;
    rig.station
        .commands
        .send(Command::Fault(Fault::Reboot(Duration::from_secs(20))))
        .await
        .unwrap();
    assert!(!rig.csms.serve(Duration::from_secs(5)).await);
    assert_eq!(rig.evse().measured_amps, 0.0);
    assert_eq!(rig.evse().transaction_id, None);
    rig.csms = Csms::accept(&mut rig.pipes, OcppVersion::V16).await;
    assert!(rig.csms.serve(Duration::from_secs(3)).await);
    assert_eq!(rig.csms.count("BootNotification"), 1);
    assert_eq!(
        rig.csms.last("StatusNotification").unwrap()["status"],
        "Preparing"
    );
    // The session the reboot ended is reported after the boot.
    let stop = rig.csms.last("StopTransaction").unwrap();
    assert_eq!(stop["transactionId"], 1);
    assert_eq!(stop["reason"], "Reboot");
}

#[tokio::test(start_paused = true)]
async fn v201_transaction_events_charging_needs_and_a_tx_profile() {
    let mut rig = Rig::new(config(OcppVersion::V201, Quirks::default())).await;
    let departure = start() + chrono::Duration::hours(8);
    rig.plug_in(EvSpec {
        iso15118: true,
        departure: Some(departure),
        ..EvSpec::typical(0.5, 0.8)
    })
    .await;
    let started = rig.csms.last("TransactionEvent").unwrap().clone();
    let first = rig
        .csms
        .received
        .iter()
        .find(|(a, _)| a == "TransactionEvent")
        .unwrap();
    assert_eq!(first.1["eventType"], "Started");
    let tx_id = first.1["transactionInfo"]["transactionId"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(rig.evse().transaction_id.as_deref(), Some(tx_id.as_str()));
    assert!(started["seqNo"].as_i64().unwrap() >= 1);
    let needs = rig.csms.last("NotifyEVChargingNeeds").unwrap();
    assert_eq!(
        needs["chargingNeeds"]["acChargingParameters"]["energyAmount"],
        18000
    );
    assert_eq!(
        needs["chargingNeeds"]["acChargingParameters"]["evMaxCurrent"],
        16
    );
    assert_eq!(
        needs["chargingNeeds"]["requestedEnergyTransfer"],
        "AC_three_phase"
    );
    let at: DateTime<Utc> =
        serde_json::from_value(needs["chargingNeeds"]["departureTime"].clone()).unwrap();
    assert_eq!(at, departure);

    let set = v201::SetVariablesRequest {
        set_variable_data: vec![
            v201::SetVariableData {
                attribute_value: "Current.Import,Energy.Active.Import.Register".into(),
                component: v201::Component {
                    name: "SampledDataCtrlr".into(),
                    ..Default::default()
                },
                variable: v201::Variable {
                    name: "TxUpdatedMeasurands".into(),
                    ..Default::default()
                },
                ..Default::default()
            },
            v201::SetVariableData {
                attribute_value: "5".into(),
                component: v201::Component {
                    name: "SampledDataCtrlr".into(),
                    ..Default::default()
                },
                variable: v201::Variable {
                    name: "TxUpdatedInterval".into(),
                    ..Default::default()
                },
                ..Default::default()
            },
        ],
        ..Default::default()
    };
    let answer = rig.csms.call(&set).await.unwrap();
    assert!(
        answer
            .set_variable_result
            .iter()
            .all(|r| r.attribute_status == v201::SetVariableStatusEnum::Accepted)
    );
    assert!(rig.csms.serve(Duration::from_secs(6)).await);
    let update = rig.csms.last("TransactionEvent").unwrap();
    assert_eq!(update["eventType"], "Updated");
    assert_eq!(update["triggerReason"], "MeterValuePeriodic");
    assert_eq!(update["meterValue"][0]["sampledValue"][0]["value"], 16.0);
    assert_eq!(update["meterValue"][0]["sampledValue"][0]["phase"], "L1");

    let profile = v201::SetChargingProfileRequest {
        evse_id: 1,
        charging_profile: v201::ChargingProfile {
            id: 1,
            stack_level: 0,
            charging_profile_purpose: v201::ChargingProfilePurposeEnum::TxProfile,
            charging_profile_kind: v201::ChargingProfileKindEnum::Relative,
            transaction_id: Some(tx_id.clone()),
            charging_schedule: vec![v201::ChargingSchedule {
                id: 1,
                charging_rate_unit: v201::ChargingRateUnitEnum::W,
                charging_schedule_period: vec![v201::ChargingSchedulePeriod {
                    start_period: 0,
                    limit: 6900.0,
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        },
        ..Default::default()
    };
    let answer = rig.csms.call(&profile).await.unwrap();
    assert_eq!(answer.status, v201::ChargingProfileStatusEnum::Accepted);
    assert!(rig.csms.serve(Duration::from_secs(4)).await);
    // 6 900 W on three 230 V phases is 10 A.
    assert!((rig.evse().measured_amps - 10.0).abs() < 1e-9);
    let composite = rig
        .csms
        .call(&v201::GetCompositeScheduleRequest {
            duration: 300,
            charging_rate_unit: Some(v201::ChargingRateUnitEnum::A),
            evse_id: 1,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        composite.schedule.unwrap().charging_schedule_period[0].limit,
        10.0
    );

    rig.station
        .commands
        .send(Command::Unplug { evse: 1 })
        .await
        .unwrap();
    assert!(rig.csms.serve(Duration::from_secs(2)).await);
    let ended = rig.csms.last("TransactionEvent").unwrap();
    assert_eq!(ended["eventType"], "Ended");
    assert_eq!(ended["transactionInfo"]["transactionId"], tx_id.as_str());
    // The TxProfile went with its transaction.
    assert_eq!(rig.station.snapshot.borrow().profiles, 0);
}

// ---------------------------------------------------------------------------------------------
// The quirks that refuse profiles, on the state machine directly
// ---------------------------------------------------------------------------------------------

fn call(action: &str, payload: Value) -> IncomingCall {
    IncomingCall {
        id: "1".into(),
        action: action.into(),
        payload,
    }
}

fn set_profile_status(sim: &mut StationSim, req: &v16::SetChargingProfileRequest) -> String {
    let answer = sim
        .handle_call(
            &call("SetChargingProfile", serde_json::to_value(req).unwrap()),
            start(),
        )
        .unwrap();
    answer["status"].as_str().unwrap().to_owned()
}

#[test]
fn refusing_quirks_reject_what_they_should_and_only_that() {
    let watt = {
        let mut r = default_profile_v16(1, 7000.0);
        r.cs_charging_profiles.charging_schedule.charging_rate_unit = v16::ChargingRateUnitType::W;
        r
    };
    let station_max = {
        let mut r = default_profile_v16(2, 20.0);
        r.cs_charging_profiles.charging_profile_purpose =
            v16::ChargingProfilePurposeType::ChargePointMaxProfile;
        r
    };
    let level_one = {
        let mut r = default_profile_v16(3, 20.0);
        r.cs_charging_profiles.stack_level = 1;
        r
    };
    let relative = default_profile_v16(4, 20.0);
    let absolute = {
        let mut r = default_profile_v16(5, 20.0);
        r.cs_charging_profiles.stack_level = 0;
        r.cs_charging_profiles.charging_profile_kind = v16::ChargingProfileKindType::Absolute;
        r.cs_charging_profiles.charging_schedule.start_schedule = Some(start());
        r
    };
    let cases = [
        (
            Quirks {
                amps_only: true,
                ..Quirks::default()
            },
            &watt,
        ),
        (
            Quirks {
                rejects_station_max: true,
                ..Quirks::default()
            },
            &station_max,
        ),
        (
            Quirks {
                max_stack_level_zero: true,
                ..Quirks::default()
            },
            &level_one,
        ),
        (
            Quirks {
                absolute_only: true,
                ..Quirks::default()
            },
            &relative,
        ),
    ];
    for (quirks, refused) in cases {
        let mut sim = StationSim::new(config(OcppVersion::V16, quirks), start()).unwrap();
        assert_eq!(
            set_profile_status(&mut sim, refused),
            "Rejected",
            "{quirks:?}"
        );
        let mut plain =
            StationSim::new(config(OcppVersion::V16, Quirks::default()), start()).unwrap();
        assert_eq!(
            set_profile_status(&mut plain, refused),
            "Accepted",
            "{quirks:?}"
        );
        // The quirky station still takes a plain absolute A profile at level 0.
        assert_eq!(
            set_profile_status(&mut sim, &absolute),
            "Accepted",
            "{quirks:?}"
        );
    }
    // The amps-only station says so.
    let mut sim = StationSim::new(
        config(
            OcppVersion::V16,
            Quirks {
                amps_only: true,
                ..Quirks::default()
            },
        ),
        start(),
    )
    .unwrap();
    let answer = sim
        .handle_call(
            &call(
                "GetConfiguration",
                json!({"key": ["ChargingScheduleAllowedChargingRateUnit", "Nope"]}),
            ),
            start(),
        )
        .unwrap();
    assert_eq!(answer["configurationKey"][0]["value"], "Current");
    assert_eq!(answer["unknownKey"][0], "Nope");
}

#[test]
fn bad_station_configs_and_commands_are_refused() {
    let mut c = config(OcppVersion::V16, Quirks::default());
    c.evse_count = 0;
    assert_eq!(
        StationSim::new(c, start()).unwrap_err(),
        StationError::NoEvse
    );
    let mut c = config(OcppVersion::V16, Quirks::default());
    c.hardware_max_amps = f64::NAN;
    assert!(StationSim::new(c, start()).is_err());
    let mut sim = StationSim::new(config(OcppVersion::V16, Quirks::default()), start()).unwrap();
    assert_eq!(
        sim.plug_in(2, EvSpec::typical(0.1, 0.8), "T", start()),
        Err(StationError::UnknownEvse(2))
    );
    assert_eq!(sim.unplug(1, start()), Err(StationError::Empty(1)));
    assert!(
        sim.plug_in(
            1,
            EvSpec {
                phases: 7,
                ..EvSpec::typical(0.1, 0.8)
            },
            "T",
            start()
        )
        .is_err()
    );
    // A ramp delay above 5 s is capped.
    let mut c = config(OcppVersion::V16, Quirks::default());
    c.ramp_delay = Duration::from_secs(30);
    let sim = StationSim::new(c, start()).unwrap();
    assert_eq!(sim.config().ramp_delay, MAX_RAMP_DELAY);
}

#[tokio::test]
// The handshake callback's error type is tungstenite's (an HTTP response), not ours.
#[allow(clippy::result_large_err)]
async fn tcp_dialer_boots_over_a_real_socket_on_loopback() {
    use tokio_tungstenite::tungstenite::handshake::server::{Request as HsRequest, Response};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let client = loadstar_sims::client::ClientConfig {
        url: format!("ws://{addr}/ocpp"),
        station_id: "SIM-TCP".into(),
        password: None,
        version: OcppVersion::V16,
        call_timeout: Duration::from_secs(5),
    };
    let sim = StationSim::new(config(OcppVersion::V16, Quirks::default()), start()).unwrap();
    let station = spawn(sim, tcp_dialer(client), SimClock::starting_at(start()));
    let (tcp, _) = tokio::time::timeout(Duration::from_secs(10), listener.accept())
        .await
        .unwrap()
        .unwrap();
    let mut path = String::new();
    let ws = tokio_tungstenite::accept_hdr_async(tcp, |req: &HsRequest, mut res: Response| {
        path = req.uri().path().to_owned();
        res.headers_mut()
            .insert("sec-websocket-protocol", "ocpp1.6".parse().unwrap());
        Ok(res)
    })
    .await
    .unwrap();
    assert_eq!(path, "/ocpp/SIM-TCP");
    let mut endpoint = Endpoint::new(OcppVersion::V16, Role::Csms, EndpointConfig::default());
    let (mut sink, mut stream) = ws.split();
    let frame = tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    endpoint.handle_text(frame.to_text().unwrap());
    let Some(Event::Call(boot)) = endpoint.poll_event() else {
        panic!("no boot")
    };
    assert_eq!(boot.action, "BootNotification");
    endpoint
        .respond(
            &boot.id,
            &json!({"status": "Accepted", "currentTime": start(), "interval": 300}),
        )
        .unwrap();
    let answer = endpoint.poll_transmit(std::time::Instant::now()).unwrap();
    sink.send(Message::text(answer)).await.unwrap();
    let status = tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(status.to_text().unwrap().contains("StatusNotification"));
    drop(station.commands);
    let _ = tokio::time::timeout(Duration::from_secs(10), station.task).await;
}

#[tokio::test(start_paused = true)]
async fn two_evses_share_the_station_cap_and_keep_their_own_tx_profiles() {
    let mut c = config(OcppVersion::V16, Quirks::default());
    c.evse_count = 2;
    let mut rig = Rig::new(c).await;
    assert_eq!(rig.csms.count("StatusNotification"), 2);
    for evse in [1, 2] {
        rig.station
            .commands
            .send(Command::PlugIn {
                evse,
                spec: EvSpec::typical(0.2, 0.9),
                id_tag: format!("TAG{evse}"),
            })
            .await
            .unwrap();
        assert!(rig.csms.serve(Duration::from_secs(3)).await);
    }
    let amps = |rig: &Rig| -> Vec<f64> {
        rig.station
            .snapshot
            .borrow()
            .evses
            .iter()
            .map(|e| e.measured_amps)
            .collect()
    };
    assert_eq!(amps(&rig), vec![16.0, 16.0]);
    let ids: Vec<_> = rig
        .station
        .snapshot
        .borrow()
        .evses
        .iter()
        .map(|e| e.transaction_id.clone())
        .collect();
    assert_eq!(ids, vec![Some("1".to_owned()), Some("2".to_owned())]);

    // A 20 A ChargePointMaxProfile is for the whole station: 10 A each.
    let mut cap = default_profile_v16(7, 20.0);
    cap.cs_charging_profiles.charging_profile_purpose =
        v16::ChargingProfilePurposeType::ChargePointMaxProfile;
    assert_eq!(
        rig.csms.call(&cap).await.unwrap().status,
        v16::ChargingProfileStatus::Accepted
    );
    assert!(rig.csms.serve(Duration::from_secs(4)).await);
    assert_eq!(amps(&rig), vec![10.0, 10.0]);

    // A 6 A TxProfile on EVSE 2 only: EVSE 1 gets the rest of the cap, up to its car's 16 A.
    let mut tx2 = tx_profile_v16(6.0, Some(2));
    tx2.connector_id = 2;
    assert_eq!(
        rig.csms.call(&tx2).await.unwrap().status,
        v16::ChargingProfileStatus::Accepted
    );
    assert!(rig.csms.serve(Duration::from_secs(4)).await);
    assert_eq!(amps(&rig), vec![14.0, 6.0]);
    // The TxProfile for transaction 2 is refused on EVSE 1.
    let mut wrong = tx_profile_v16(6.0, Some(2));
    wrong.cs_charging_profiles.charging_profile_id = 11;
    assert_eq!(
        rig.csms.call(&wrong).await.unwrap().status,
        v16::ChargingProfileStatus::Rejected
    );
}

#[tokio::test(start_paused = true)]
async fn a_whole_session_in_virtual_time_reports_what_the_car_took() {
    let mut rig = Rig::new(config(OcppVersion::V16, Quirks::default())).await;
    let answer = rig
        .csms
        .call(&v16::ChangeConfigurationRequest {
            key: "MeterValueSampleInterval".into(),
            value: "60".into(),
        })
        .await
        .unwrap();
    assert_eq!(answer.status, v16::ConfigurationStatus::Accepted);
    // 60 kWh from 20 % to 80 %: 36 kWh at 11.04 kW is about 3 h 16 min.
    rig.plug_in(EvSpec::typical(0.2, 0.8)).await;
    assert!(rig.csms.serve(Duration::from_secs(4 * 3600)).await);
    let evse = rig.evse();
    assert!((evse.soc.unwrap() - 0.8).abs() < 1e-9, "{evse:?}");
    assert_eq!(evse.status, EvseStatus::SuspendedEv);
    assert_eq!(evse.measured_amps, 0.0);
    // The register holds exactly what the car took.
    assert!((evse.register_wh - evse.delivered_wh.unwrap()).abs() < 1e-6);
    assert!((evse.delivered_wh.unwrap() - 36_000.0).abs() < 1e-6);
    // Four hours of minute samples (the interval counts from the session's start).
    let samples = rig.csms.count("MeterValues");
    assert!((239..=241).contains(&samples), "{samples}");
    let last = rig.csms.last("MeterValues").unwrap();
    assert_eq!(last["meterValue"][0]["sampledValue"][0]["value"], "36000");
    // Heartbeats every 300 s as the boot answer said.
    let beats = rig.csms.count("Heartbeat");
    assert!((47..=49).contains(&beats), "{beats}");
}

#[tokio::test(start_paused = true)]
async fn transaction_messages_made_offline_reach_the_csms_after_the_next_boot() {
    let mut c = config(OcppVersion::V16, Quirks::default());
    c.evse_count = 2;
    let mut rig = Rig::new(c).await;
    rig.plug_in(EvSpec::typical(0.2, 0.9)).await;
    assert_eq!(rig.evse().transaction_id.as_deref(), Some("1"));
    rig.station
        .commands
        .send(Command::Fault(Fault::Disconnect(Duration::from_secs(120))))
        .await
        .unwrap();
    assert!(!rig.csms.serve(Duration::from_secs(5)).await);
    let before = rig.csms.received.len();
    // Offline: car 1 leaves, a car arrives at EVSE 2 and leaves again, a third arrives at EVSE 1.
    let send = |command| rig.station.commands.send(command);
    send(Command::Unplug { evse: 1 }).await.unwrap();
    tokio::time::sleep(Duration::from_secs(5)).await;
    send(Command::PlugIn {
        evse: 2,
        spec: EvSpec::typical(0.2, 0.9),
        id_tag: "T2".into(),
    })
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_secs(30)).await;
    // Authorized locally, it charges while offline.
    assert_eq!(rig.station.snapshot.borrow().evses[1].measured_amps, 16.0);
    send(Command::Unplug { evse: 2 }).await.unwrap();
    send(Command::PlugIn {
        evse: 1,
        spec: EvSpec::typical(0.2, 0.9),
        id_tag: "T3".into(),
    })
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(rig.csms.received.len(), before);

    // The same CSMS comes back: its transaction ids carry on.
    let next = rig.csms.next_transaction;
    rig.csms = Csms::accept(&mut rig.pipes, OcppVersion::V16).await;
    rig.csms.next_transaction = next;
    assert!(rig.csms.serve(Duration::from_secs(10)).await);
    let sequence: Vec<(String, Value)> = rig
        .csms
        .received
        .iter()
        .filter(|(a, _)| a == "StartTransaction" || a == "StopTransaction")
        .cloned()
        .collect();
    let actions: Vec<&str> = sequence.iter().map(|(a, _)| a.as_str()).collect();
    assert_eq!(
        actions,
        vec![
            "StopTransaction",
            "StartTransaction",
            "StartTransaction",
            "StopTransaction"
        ]
    );
    // The first stop is the online session's; the session that began and ended offline gets
    // its stop once its start has an id (this CSMS hands out 2, then 3).
    assert_eq!(sequence[0].1["transactionId"], 1);
    assert_eq!(sequence[1].1["idTag"], "T2");
    assert_eq!(sequence[2].1["idTag"], "T3");
    assert_eq!(sequence[3].1["transactionId"], 2);
    assert!(
        sequence[3].1["meterStop"].as_i64().unwrap()
            > sequence[1].1["meterStart"].as_i64().unwrap()
    );
    assert_eq!(rig.evse().transaction_id.as_deref(), Some("3"));
    assert_eq!(rig.station.snapshot.borrow().evses[0].measured_amps, 16.0);
}

#[tokio::test(start_paused = true)]
async fn v201_events_made_offline_are_marked_offline() {
    let mut rig = Rig::new(config(OcppVersion::V201, Quirks::default())).await;
    rig.plug_in(EvSpec::typical(0.2, 0.9)).await;
    let tx_id = rig.evse().transaction_id.unwrap();
    rig.station
        .commands
        .send(Command::Fault(Fault::Disconnect(Duration::from_secs(60))))
        .await
        .unwrap();
    assert!(!rig.csms.serve(Duration::from_secs(5)).await);
    rig.station
        .commands
        .send(Command::Unplug { evse: 1 })
        .await
        .unwrap();
    rig.csms = Csms::accept(&mut rig.pipes, OcppVersion::V201).await;
    assert!(rig.csms.serve(Duration::from_secs(5)).await);
    let ended = rig.csms.last("TransactionEvent").unwrap();
    assert_eq!(ended["eventType"], "Ended");
    assert_eq!(ended["offline"], true);
    assert_eq!(ended["transactionInfo"]["transactionId"], tx_id.as_str());
}

#[test]
fn a_pending_boot_is_retried_after_the_interval_and_nothing_else_is_sent_before() {
    let mut sim = StationSim::new(config(OcppVersion::V16, Quirks::default()), start()).unwrap();
    sim.connected();
    let out = sim.take_outbox();
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].action, "BootNotification");
    sim.handle_response(
        out[0].after.clone(),
        Ok(json!({"status": "Pending", "currentTime": start(), "interval": 30})),
        start(),
    );
    assert!(!sim.snapshot(start()).booted);
    let later = |s| start() + chrono::Duration::seconds(s);
    sim.tick(later(29));
    assert!(sim.take_outbox().is_empty(), "nothing before the retry");
    sim.tick(later(30));
    let out = sim.take_outbox();
    assert_eq!(
        out.iter().map(|o| o.action).collect::<Vec<_>>(),
        vec!["BootNotification"]
    );
    sim.handle_response(
        out[0].after.clone(),
        Ok(json!({"status": "Accepted", "currentTime": start(), "interval": 300})),
        later(30),
    );
    assert!(sim.snapshot(later(30)).booted);
    assert_eq!(sim.take_outbox()[0].action, "StatusNotification");
}

#[test]
fn an_unanswered_authorize_falls_back_to_local_authorization() {
    let mut sim = StationSim::new(config(OcppVersion::V16, Quirks::default()), start()).unwrap();
    sim.connected();
    let boot = sim.take_outbox().remove(0);
    sim.handle_response(
        boot.after,
        Ok(json!({"status": "Accepted", "currentTime": start(), "interval": 300})),
        start(),
    );
    sim.take_outbox();
    sim.plug_in(1, EvSpec::typical(0.2, 0.9), "TAG", start())
        .unwrap();
    let out = sim.take_outbox();
    let authorize = out
        .iter()
        .find(|o| o.action == "Authorize")
        .unwrap()
        .clone();
    sim.handle_response(
        authorize.after,
        Err(loadstar_ocpp::CallFailure::Timeout),
        start(),
    );
    let out = sim.take_outbox();
    assert!(out.iter().any(|o| o.action == "StartTransaction" && o.keep));
    sim.tick(start() + chrono::Duration::seconds(1));
    assert_eq!(sim.snapshot(start()).evses[0].measured_amps, 16.0);
}

//! Interop against a client nobody here wrote: the PyPI `ocpp` package (2.1.0), which validates
//! every message against the official schemas, drives a 1.6 and a 2.0.1 station over loopback.
//!
//! `.ci/test` installs it into a venv and sets `LOADSTAR_INTEROP_PYTHON`. Without that variable
//! these tests fail (they are not skipped silently) unless `LOADSTAR_SKIP_INTEROP=1` is set.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use loadstar::csms::setup::MEASURANDS;
use loadstar::runtime::Server;
use loadstar::store::{SessionFilter, Store};
use loadstar_e2e::{eventually, start, test_site};
use loadstar_ocpp::{Priority, v16, v201};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

fn python() -> Option<PathBuf> {
    match std::env::var_os("LOADSTAR_INTEROP_PYTHON") {
        Some(p) => Some(PathBuf::from(p)),
        None if std::env::var_os("LOADSTAR_SKIP_INTEROP").is_some() => None,
        None => panic!(
            "LOADSTAR_INTEROP_PYTHON is not set: run `bash .ci/test`, which installs the PyPI \
             `ocpp` package, or set LOADSTAR_SKIP_INTEROP=1 to skip the interop tests knowingly"
        ),
    }
}

fn script(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("interop")
        .join(name)
}

/// Runs a Python station; calls `on_charging` once it reports it is charging; returns its
/// summary.
async fn run_station<F, Fut>(
    server: &Server,
    script_name: &str,
    id: &str,
    password: &str,
    on_charging: F,
) -> Value
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let Some(python) = python() else {
        return Value::Null;
    };
    let mut child = Command::new(python)
        .arg(script(script_name))
        .arg("--url")
        .arg(format!("ws://{}/ocpp", server.ocpp_addr))
        .arg("--id")
        .arg(id)
        .arg("--password")
        .arg(password)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("python starts");
    let stdout = child.stdout.take().expect("piped stdout");
    let mut lines = BufReader::new(stdout).lines();
    let mut on_charging = Some(on_charging);
    let summary = tokio::time::timeout(Duration::from_secs(90), async {
        while let Some(line) = lines.next_line().await.expect("read stdout") {
            let Ok(event) = serde_json::from_str::<Value>(&line) else {
                continue;
            };
            match event["event"].as_str() {
                Some("charging") => {
                    if let Some(f) = on_charging.take() {
                        f().await;
                    }
                }
                Some("done") => return event["summary"].clone(),
                _ => {}
            }
        }
        Value::Null
    })
    .await
    .expect("the python station finishes within 90 s");
    let status = child.wait().await.expect("python exits");
    assert!(status.success(), "python station failed: {status}");
    assert!(summary.is_object(), "python station printed no summary");
    summary
}

async fn wait_for_setup(server: &Server, id: &str) {
    let state = server.state.clone();
    let id = id.to_owned();
    eventually("station set-up", move || {
        state
            .lock()
            .map(|s| s.stations.get(&id).is_some_and(|st| st.capabilities.set_up))
            .unwrap_or(false)
    })
    .await;
}

#[tokio::test]
async fn ocpp16_station_from_the_pypi_library() {
    if python().is_none() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let server = start(&test_site(""), dir.path()).await;
    let csms = server.csms.clone();
    let srv = &server;
    let summary = run_station(
        &server,
        "station16.py",
        "PY16",
        "py16-password-0001",
        || async move {
            wait_for_setup(srv, "PY16").await;
            let station = csms.station("PY16").expect("connected");
            // Read configuration through the typed API.
            let config = station
                .call(
                    &v16::GetConfigurationRequest {
                        key: Some(vec![
                            "ChargeProfileMaxStackLevel".into(),
                            "NoSuchKey".into(),
                        ]),
                    },
                    Priority::Operations,
                )
                .await
                .expect("GetConfiguration answered");
            let keys = config.configuration_key.unwrap_or_default();
            assert_eq!(keys.len(), 1);
            assert_eq!(keys[0].value.as_deref(), Some("3"));
            assert_eq!(config.unknown_key, Some(vec!["NoSuchKey".to_owned()]));
            // Change configuration: accepted, and a rejection is reported as such.
            let changed = station
                .call(
                    &v16::ChangeConfigurationRequest {
                        key: "HeartbeatInterval".into(),
                        value: "120".into(),
                    },
                    Priority::Operations,
                )
                .await
                .expect("answered");
            assert_eq!(changed.status, v16::ConfigurationStatus::Accepted);
            let rejected = station
                .call(
                    &v16::ChangeConfigurationRequest {
                        key: "ReadOnlyKey".into(),
                        value: "x".into(),
                    },
                    Priority::Operations,
                )
                .await
                .expect("answered");
            assert_eq!(rejected.status, v16::ConfigurationStatus::Rejected);
            // Every operations call of the typed API, validated by the library on arrival.
            let tx_id: i32 = srv
                .state
                .lock()
                .ok()
                .and_then(|s| {
                    s.stations.get("PY16").and_then(|st| {
                        st.evses
                            .get(&1)
                            .and_then(|e| e.session.as_ref().map(|x| x.transaction_id.clone()))
                    })
                })
                .and_then(|t| t.parse().ok())
                .expect("an integer transaction id");
            let ops = Priority::Operations;
            let started = station
                .call(
                    &v16::RemoteStartTransactionRequest {
                        connector_id: Some(2),
                        id_tag: "TAG-OK".into(),
                        charging_profile: None,
                    },
                    ops,
                )
                .await
                .expect("RemoteStartTransaction");
            assert_eq!(started.status, v16::RemoteStartStopStatus::Accepted);
            let stopped = station
                .call(
                    &v16::RemoteStopTransactionRequest {
                        transaction_id: tx_id + 1000,
                    },
                    ops,
                )
                .await
                .expect("RemoteStopTransaction");
            assert_eq!(stopped.status, v16::RemoteStartStopStatus::Accepted);
            let reset = station
                .call(
                    &v16::ResetRequest {
                        kind: v16::ResetType::Soft,
                    },
                    ops,
                )
                .await
                .expect("Reset");
            assert_eq!(reset.status, v16::ResetStatus::Accepted);
            let trigger = station
                .call(
                    &v16::TriggerMessageRequest {
                        requested_message: v16::MessageTrigger::MeterValues,
                        connector_id: Some(1),
                    },
                    ops,
                )
                .await
                .expect("TriggerMessage");
            assert_eq!(trigger.status, v16::TriggerMessageStatus::Accepted);
            let availability = station
                .call(
                    &v16::ChangeAvailabilityRequest {
                        connector_id: 2,
                        kind: v16::AvailabilityType::Inoperative,
                    },
                    ops,
                )
                .await
                .expect("ChangeAvailability");
            assert_eq!(availability.status, v16::AvailabilityStatus::Scheduled);
            let unlock = station
                .call(&v16::UnlockConnectorRequest { connector_id: 2 }, ops)
                .await
                .expect("UnlockConnector");
            assert_eq!(unlock.status, v16::UnlockStatus::Unlocked);
            let cleared = station
                .call(
                    &v16::ClearChargingProfileRequest {
                        id: Some(99),
                        ..Default::default()
                    },
                    ops,
                )
                .await
                .expect("ClearChargingProfile");
            assert_eq!(cleared.status, v16::ClearChargingProfileStatus::Accepted);
            let composite = station
                .call(
                    &v16::GetCompositeScheduleRequest {
                        connector_id: 1,
                        duration: 3600,
                        charging_rate_unit: Some(v16::ChargingRateUnitType::A),
                    },
                    ops,
                )
                .await
                .expect("GetCompositeSchedule");
            assert_eq!(composite.status, v16::GetCompositeScheduleStatus::Accepted);
            let schedule = composite.charging_schedule.expect("a schedule");
            assert_eq!(schedule.charging_schedule_period[0].limit, 16.0);

            // A TxProfile for the running transaction; the library validates it against the schema.
            let tx = srv
                .state
                .lock()
                .ok()
                .and_then(|s| {
                    s.stations.get("PY16").and_then(|st| {
                        st.evses
                            .get(&1)
                            .and_then(|e| e.session.as_ref().map(|x| x.transaction_id.clone()))
                    })
                })
                .expect("a session in the site state");
            let profile = v16::SetChargingProfileRequest {
                connector_id: 1,
                cs_charging_profiles: v16::ChargingProfile {
                    charging_profile_id: 7,
                    transaction_id: tx.parse().ok(),
                    stack_level: 1,
                    charging_profile_purpose: v16::ChargingProfilePurposeType::TxProfile,
                    charging_profile_kind: v16::ChargingProfileKindType::Relative,
                    charging_schedule: v16::ChargingSchedule {
                        charging_rate_unit: v16::ChargingRateUnitType::A,
                        charging_schedule_period: vec![
                            v16::ChargingSchedulePeriod {
                                start_period: 0,
                                limit: 16.0,
                                number_phases: Some(3),
                            },
                            v16::ChargingSchedulePeriod {
                                start_period: 600,
                                limit: 10.5,
                                number_phases: Some(3),
                            },
                        ],
                        ..Default::default()
                    },
                    ..Default::default()
                },
            };
            let answer = station
                .call(&profile, Priority::Safety)
                .await
                .expect("answered");
            assert_eq!(answer.status, v16::ChargingProfileStatus::Accepted);
        },
    )
    .await;

    assert_eq!(summary["boot_status"], "Accepted");
    assert_eq!(summary["heartbeat_interval"], 120);
    assert_eq!(summary["authorize_ok"], "Accepted");
    assert_eq!(summary["authorize_bad"], "Invalid");
    assert_eq!(summary["stop_status"], "Accepted");
    let ops: Vec<&str> = summary["ops"]
        .as_array()
        .expect("ops")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(
        ops,
        vec![
            "RemoteStartTransaction",
            "RemoteStopTransaction",
            "Reset",
            "TriggerMessage",
            "ChangeAvailability",
            "UnlockConnector",
            "ClearChargingProfile",
            "GetCompositeSchedule",
        ]
    );

    assert!(summary.get("profile_timeout").is_none(), "{summary}");
    // Set-up configured what the station reports.
    assert_eq!(summary["config"]["MeterValuesSampledData"], MEASURANDS);
    assert_eq!(summary["config"]["MeterValueSampleInterval"], "10");
    assert_eq!(summary["config"]["HeartbeatInterval"], "120");
    // The profile arrived as sent.
    let profiles = summary["profiles"].as_array().expect("profiles");
    let tx_profile = profiles
        .iter()
        .find(|p| p["profile"]["charging_profile_id"] == 7)
        .expect("the test's TxProfile received");
    // The control loop's fallback (TxDefaultProfile, stack level 0) passed the library's
    // schema validation as well.
    assert!(
        profiles.iter().any(
            |p| p["profile"]["charging_profile_purpose"] == "TxDefaultProfile"
                && p["profile"]["stack_level"] == 0
        ),
        "{profiles:?}"
    );
    let periods = &tx_profile["profile"]["charging_schedule"]["charging_schedule_period"];
    // The library parses 1.6 decimals as Python Decimals, which the script prints as strings.
    let limit = |v: &Value| {
        v.as_f64()
            .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
    };
    assert_eq!(limit(&periods[0]["limit"]), Some(16.0));
    assert_eq!(limit(&periods[1]["limit"]), Some(10.5));

    // Capabilities were read and parsed.
    {
        let state = server.state.lock().expect("state");
        let caps = &state.stations["PY16"].capabilities;
        assert_eq!(caps.smart_charging, Some(true));
        assert_eq!(caps.max_stack_level, Some(3));
        assert_eq!(caps.rate_units, vec!["A"]);
        assert_eq!(caps.max_periods, Some(10));
        assert_eq!(caps.max_profiles, Some(5));
        assert!(
            caps.refused
                .iter()
                .any(|r| r.starts_with("ConnectorSwitch3to1PhaseSupported"))
        );
    }
    // The session is stored with its energy, and the 3-phase samples too.
    let sessions = server
        .store
        .sessions(&SessionFilter::default())
        .expect("store");
    let session = sessions
        .iter()
        .find(|s| s.station == "PY16")
        .expect("session stored");
    assert!(session.ended_at.is_some());
    assert_eq!(session.energy_wh, 2500.0);
    assert_eq!(session.id_tag.as_deref(), Some("TAG-OK"));
    let now = chrono::Utc::now();
    let samples = server
        .store
        .samples(
            "PY16",
            1,
            now - chrono::Duration::hours(1),
            now + chrono::Duration::hours(1),
        )
        .expect("store");
    assert!(samples.len() >= 3, "{} samples", samples.len());
    assert!(
        samples
            .iter()
            .any(|s| s.current_a == [Some(16.0), Some(15.5), Some(15.8)])
    );
    server.shutdown().expect("flush");
}

#[tokio::test]
async fn ocpp201_station_from_the_pypi_library() {
    if python().is_none() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let server = start(&test_site(""), dir.path()).await;
    let csms = server.csms.clone();
    let srv = &server;
    let summary = run_station(
        &server,
        "station201.py",
        "PY201",
        "py201-password-0001",
        || async move {
            wait_for_setup(srv, "PY201").await;
            let station = csms.station("PY201").expect("connected");
            let read = station
                .call(
                    &v201::GetVariablesRequest {
                        get_variable_data: vec![v201::GetVariableData {
                            component: v201::Component {
                                name: "SmartChargingCtrlr".into(),
                                ..Default::default()
                            },
                            variable: v201::Variable {
                                name: "ProfileStackLevel".into(),
                                ..Default::default()
                            },
                            ..Default::default()
                        }],
                        ..Default::default()
                    },
                    Priority::Operations,
                )
                .await
                .expect("GetVariables answered");
            assert_eq!(
                read.get_variable_result[0].attribute_value.as_deref(),
                Some("5")
            );
            let ops = Priority::Operations;
            let token = v201::IdToken {
                id_token: "TAG-OK".into(),
                kind: v201::IdTokenEnum::ISO14443,
                ..Default::default()
            };
            let started = station
                .call(
                    &v201::RequestStartTransactionRequest {
                        evse_id: Some(2),
                        id_token: token,
                        remote_start_id: 7,
                        ..Default::default()
                    },
                    ops,
                )
                .await
                .expect("RequestStartTransaction");
            assert_eq!(started.status, v201::RequestStartStopStatusEnum::Accepted);
            let stopped = station
                .call(
                    &v201::RequestStopTransactionRequest {
                        transaction_id: "other-tx".into(),
                        ..Default::default()
                    },
                    ops,
                )
                .await
                .expect("RequestStopTransaction");
            assert_eq!(stopped.status, v201::RequestStartStopStatusEnum::Accepted);
            let reset = station
                .call(
                    &v201::ResetRequest {
                        kind: v201::ResetEnum::OnIdle,
                        ..Default::default()
                    },
                    ops,
                )
                .await
                .expect("Reset");
            assert_eq!(reset.status, v201::ResetStatusEnum::Scheduled);
            let trigger = station
                .call(
                    &v201::TriggerMessageRequest {
                        requested_message: v201::MessageTriggerEnum::MeterValues,
                        ..Default::default()
                    },
                    ops,
                )
                .await
                .expect("TriggerMessage");
            assert_eq!(trigger.status, v201::TriggerMessageStatusEnum::Accepted);
            let availability = station
                .call(
                    &v201::ChangeAvailabilityRequest {
                        evse: Some(v201::EVSE {
                            id: 2,
                            ..Default::default()
                        }),
                        operational_status: v201::OperationalStatusEnum::Inoperative,
                        ..Default::default()
                    },
                    ops,
                )
                .await
                .expect("ChangeAvailability");
            assert_eq!(
                availability.status,
                v201::ChangeAvailabilityStatusEnum::Accepted
            );
            let unlock = station
                .call(
                    &v201::UnlockConnectorRequest {
                        evse_id: 2,
                        connector_id: 1,
                        ..Default::default()
                    },
                    ops,
                )
                .await
                .expect("UnlockConnector");
            assert_eq!(unlock.status, v201::UnlockStatusEnum::Unlocked);
            let cleared = station
                .call(
                    &v201::ClearChargingProfileRequest {
                        charging_profile_id: Some(99),
                        ..Default::default()
                    },
                    ops,
                )
                .await
                .expect("ClearChargingProfile");
            assert_eq!(
                cleared.status,
                v201::ClearChargingProfileStatusEnum::Accepted
            );
            let composite = station
                .call(
                    &v201::GetCompositeScheduleRequest {
                        duration: 3600,
                        evse_id: 1,
                        ..Default::default()
                    },
                    ops,
                )
                .await
                .expect("GetCompositeSchedule");
            assert_eq!(composite.status, v201::GenericStatusEnum::Accepted);
            assert_eq!(
                composite
                    .schedule
                    .expect("a schedule")
                    .charging_schedule_period[0]
                    .limit,
                12.0
            );
            let report = station
                .call(
                    &v201::GetBaseReportRequest {
                        request_id: 42,
                        report_base: v201::ReportBaseEnum::FullInventory,
                        ..Default::default()
                    },
                    ops,
                )
                .await
                .expect("GetBaseReport");
            assert_eq!(report.status, v201::GenericDeviceModelStatusEnum::Accepted);

            let profile = v201::SetChargingProfileRequest {
                evse_id: 1,
                charging_profile: v201::ChargingProfile {
                    id: 11,
                    stack_level: 1,
                    charging_profile_purpose: v201::ChargingProfilePurposeEnum::TxProfile,
                    charging_profile_kind: v201::ChargingProfileKindEnum::Relative,
                    transaction_id: Some("py-tx-0001".into()),
                    charging_schedule: vec![v201::ChargingSchedule {
                        id: 1,
                        charging_rate_unit: v201::ChargingRateUnitEnum::A,
                        charging_schedule_period: vec![v201::ChargingSchedulePeriod {
                            start_period: 0,
                            limit: 12.0,
                            number_phases: Some(3),
                            ..Default::default()
                        }],
                        ..Default::default()
                    }],
                    ..Default::default()
                },
                ..Default::default()
            };
            let answer = station
                .call(&profile, Priority::Safety)
                .await
                .expect("answered");
            assert_eq!(answer.status, v201::ChargingProfileStatusEnum::Accepted);
        },
    )
    .await;

    assert_eq!(summary["boot_status"], "Accepted");
    assert_eq!(summary["heartbeat_interval"], 120);
    assert_eq!(summary["authorize_ok"], "Accepted");
    assert_eq!(summary["needs_status"], "Accepted");
    assert_eq!(
        summary["report_sent"], true,
        "NotifyReport after GetBaseReport"
    );
    let ops: Vec<&str> = summary["ops"]
        .as_array()
        .expect("ops")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(
        ops,
        vec![
            "RequestStartTransaction",
            "RequestStopTransaction",
            "Reset",
            "TriggerMessage",
            "ChangeAvailability",
            "UnlockConnector",
            "ClearChargingProfile",
            "GetCompositeSchedule",
            "GetBaseReport",
        ]
    );

    assert!(summary.get("profile_timeout").is_none(), "{summary}");
    assert_eq!(
        summary["variables"]["SampledDataCtrlr.TxUpdatedMeasurands"],
        MEASURANDS
    );
    assert_eq!(
        summary["variables"]["SampledDataCtrlr.TxUpdatedInterval"],
        "10"
    );
    assert_eq!(summary["variables"]["SmartChargingCtrlr.Enabled"], "true");
    let profiles = summary["profiles"].as_array().expect("profiles");
    assert!(profiles.iter().any(|p| p["profile"]["id"] == 11
        && p["profile"]["charging_profile_purpose"] == "TxProfile"
        && p["profile"]["charging_schedule"][0]["charging_schedule_period"][0]["limit"] == 12.0));
    assert!(
        profiles.iter().any(
            |p| p["profile"]["charging_profile_purpose"] == "TxDefaultProfile"
                && p["profile"]["stack_level"] == 0
        ),
        "the control loop's fallback passed the library's validation: {profiles:?}"
    );
    {
        let state = server.state.lock().expect("state");
        let caps = &state.stations["PY201"].capabilities;
        assert_eq!(caps.smart_charging, Some(true));
        assert_eq!(caps.max_stack_level, Some(5));
        assert_eq!(caps.rate_units, vec!["A", "W"]);
        assert_eq!(caps.max_profiles, Some(16));
        // From the NotifyReport that followed GetBaseReport.
        assert_eq!(caps.max_periods, Some(48));
        assert_eq!(caps.phase_switching, Some(true));
        // The station rejected one setting; it is recorded.
        assert!(
            caps.refused
                .iter()
                .any(|r| r.starts_with("AlignedDataCtrlr.Interval")),
            "{:?}",
            caps.refused
        );
    }
    let sessions = server
        .store
        .sessions(&SessionFilter::default())
        .expect("store");
    let session = sessions
        .iter()
        .find(|s| s.station == "PY201")
        .expect("session stored");
    assert_eq!(session.transaction_id, "py-tx-0001");
    assert!(session.ended_at.is_some());
    assert_eq!(session.energy_wh, 1500.0);
    assert_eq!(session.last_seq_no, Some(5));
    let now = chrono::Utc::now();
    let samples = server
        .store
        .samples(
            "PY201",
            1,
            now - chrono::Duration::hours(1),
            now + chrono::Duration::hours(1),
        )
        .expect("store");
    assert!(samples.len() >= 5, "{} samples", samples.len());
    // The repeated seqNo (energy 9999) changed no state: the session's energy above is 1500,
    // and the EVSE's live reading is the Ended event's. Its sample is kept as history.
    let live_energy = server.state.lock().expect("state").stations["PY201"].evses[&1]
        .measurement
        .energy_wh;
    assert_eq!(live_energy, Some(3500.0));
    assert_eq!(
        samples
            .iter()
            .filter(|s| s.energy_wh == Some(9999.0))
            .count(),
        1
    );
    assert!(
        samples
            .iter()
            .any(|s| s.current_a == [Some(16.0), Some(16.0), Some(15.9)])
    );
    server.shutdown().expect("flush");
}

//! Round trips of realistic OCPP 1.6J and 2.0.1 payloads through the generated message types.
//!
//! Every payload is first checked against its official schema, then deserialized into the typed
//! struct and serialized again; the result must equal the input as a `serde_json::Value`.
//! Conventions that follow from the types: timestamps are written the way chrono writes them
//! (`...Z`, fractional seconds only when non-zero) and JSON `number` fields carry a fraction
//! (`16.0`, not `16`), because an `f64` always serializes with one.

use std::collections::BTreeSet;
use std::fmt::Debug;
use std::path::{Path, PathBuf};

use loadstar_ocpp::{OcppVersion, Request, v16, v201};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

fn schema_dir(version: OcppVersion) -> PathBuf {
    let dir = match version {
        OcppVersion::V16 => "v16",
        OcppVersion::V201 => "v201",
    };
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("schemas")
        .join(dir)
}

fn schema_file(version: OcppVersion, action: &str, response: bool) -> PathBuf {
    let suffix = match (response, version) {
        (true, _) => "Response",
        (false, OcppVersion::V16) => "",
        (false, OcppVersion::V201) => "Request",
    };
    schema_dir(version).join(format!("{action}{suffix}.json"))
}

fn read_schema(path: &Path) -> Value {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let bytes = bytes
        .strip_prefix(b"\xef\xbb\xbf".as_slice())
        .unwrap_or(&bytes);
    serde_json::from_slice(bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn assert_schema_valid(path: &Path, payload: &Value) {
    let schema = read_schema(path);
    if let Err(err) = jsonschema::validate(&schema, payload) {
        panic!(
            "test payload is not valid against {}: {err}",
            path.display()
        );
    }
}

/// JSON -> typed -> JSON must give back the input; JSON text -> typed must agree too.
fn roundtrip<T>(payload: &Value) -> T
where
    T: Serialize + DeserializeOwned + Debug + PartialEq,
{
    let typed: T = serde_json::from_value(payload.clone()).unwrap_or_else(|e| {
        panic!(
            "{} does not accept {payload}: {e}",
            std::any::type_name::<T>()
        )
    });
    let back = serde_json::to_value(&typed).expect("serialize");
    assert_eq!(
        &back,
        payload,
        "{} changed the payload",
        std::any::type_name::<T>()
    );
    let reparsed: T = serde_json::from_str(&serde_json::to_string(&typed).unwrap()).unwrap();
    assert_eq!(reparsed, typed);
    typed
}

/// A CALL/CALLRESULT pair: schema-checks both payloads and round-trips them through
/// `R` and `R::Response`.
fn exchange<R>(request: Value, response: Value) -> (R, R::Response)
where
    R: Request + Debug + PartialEq,
    R::Response: Debug + PartialEq,
{
    assert_schema_valid(&schema_file(R::VERSION, R::ACTION, false), &request);
    assert_schema_valid(&schema_file(R::VERSION, R::ACTION, true), &response);
    (
        roundtrip::<R>(&request),
        roundtrip::<R::Response>(&response),
    )
}

fn actions_in_schema_dir(version: OcppVersion) -> BTreeSet<String> {
    let mut actions = BTreeSet::new();
    for entry in std::fs::read_dir(schema_dir(version)).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        let Some(stem) = name.strip_suffix(".json") else {
            continue;
        };
        let action = match (stem.strip_suffix("Response"), version) {
            (Some(action), _) => action,
            (None, OcppVersion::V16) => stem,
            (None, OcppVersion::V201) => stem.strip_suffix("Request").expect("Request/Response"),
        };
        actions.insert(action.to_owned());
        assert!(
            schema_file(version, action, false).exists()
                && schema_file(version, action, true).exists(),
            "{name}: unpaired schema"
        );
    }
    actions
}

// ---------------------------------------------------------------------------------------------
// OCPP 1.6J

#[test]
fn v16_every_schema_has_a_type() {
    let generated: BTreeSet<String> = v16::ACTIONS.iter().map(|a| (*a).to_owned()).collect();
    assert_eq!(generated.len(), v16::ACTIONS.len(), "duplicate actions");
    assert_eq!(generated, actions_in_schema_dir(OcppVersion::V16));
    assert_eq!(generated.len() * 2, 78);
}

#[test]
fn v16_request_constants() {
    assert_eq!(
        <v16::BootNotificationRequest as Request>::ACTION,
        "BootNotification"
    );
    assert_eq!(
        <v16::BootNotificationRequest as Request>::VERSION,
        OcppVersion::V16
    );
    assert_eq!(
        <v16::SetChargingProfileRequest as Request>::ACTION,
        "SetChargingProfile"
    );
    assert_eq!(
        <v16::ExtendedTriggerMessageRequest as Request>::ACTION,
        "ExtendedTriggerMessage"
    );
}

#[test]
fn v16_heartbeat_is_an_empty_object() {
    assert_eq!(
        serde_json::to_string(&v16::HeartbeatRequest {}).unwrap(),
        "{}"
    );
    assert_eq!(
        serde_json::to_value(v16::StatusNotificationResponse {}).unwrap(),
        json!({})
    );
    let (_, resp) = exchange::<v16::HeartbeatRequest>(
        json!({}),
        json!({"currentTime": "2024-05-14T09:35:00.123Z"}),
    );
    assert_eq!(resp.current_time.timestamp_subsec_millis(), 123);
}

#[test]
fn v16_boot_notification() {
    let (req, resp) = exchange::<v16::BootNotificationRequest>(
        json!({
            "chargePointVendor": "Alfen BV",
            "chargePointModel": "NG920-61001",
            "chargePointSerialNumber": "ACE0123456",
            "chargeBoxSerialNumber": "ACE0123456",
            "firmwareVersion": "5.8.1-4123",
            "iccid": "8931440400012345678",
            "imsi": "204043726510011",
            "meterType": "Carlo Gavazzi EM340",
            "meterSerialNumber": "KV12345678"
        }),
        json!({"status": "Accepted", "currentTime": "2024-05-14T09:30:00Z", "interval": 300}),
    );
    assert_eq!(req.charge_point_vendor, "Alfen BV");
    assert_eq!(req.meter_serial_number.as_deref(), Some("KV12345678"));
    assert_eq!(resp.status, v16::RegistrationStatus::Accepted);
    assert_eq!(resp.interval, 300);

    let pending = roundtrip::<v16::BootNotificationResponse>(
        &json!({"status": "Pending", "currentTime": "2024-05-14T09:30:00Z", "interval": 60}),
    );
    assert_eq!(pending.status, v16::RegistrationStatus::Pending);
}

#[test]
fn v16_status_notification() {
    let (req, _) = exchange::<v16::StatusNotificationRequest>(
        json!({
            "connectorId": 1,
            "errorCode": "NoError",
            "status": "SuspendedEVSE",
            "timestamp": "2024-05-14T09:31:02Z",
            "info": "limited by site load balancing",
            "vendorId": "com.alfen",
            "vendorErrorCode": "0"
        }),
        json!({}),
    );
    assert_eq!(req.status, v16::ChargePointStatus::SuspendedEVSE);
    assert_eq!(req.error_code, v16::ChargePointErrorCode::NoError);

    let (req, _) = exchange::<v16::StatusNotificationRequest>(
        json!({"connectorId": 2, "errorCode": "EVCommunicationError", "status": "Faulted"}),
        json!({}),
    );
    assert_eq!(
        req.error_code,
        v16::ChargePointErrorCode::EVCommunicationError
    );
    assert_eq!(req.timestamp, None);
}

#[test]
fn v16_authorize() {
    let (req, resp) = exchange::<v16::AuthorizeRequest>(
        json!({"idTag": "04A2B3C4D5E6F7"}),
        json!({"idTagInfo": {
            "status": "Accepted",
            "expiryDate": "2024-06-01T00:00:00Z",
            "parentIdTag": "FLEET-0042"
        }}),
    );
    assert_eq!(req.id_tag, "04A2B3C4D5E6F7");
    assert_eq!(resp.id_tag_info.status, v16::AuthorizationStatus::Accepted);

    let (_, resp) = exchange::<v16::AuthorizeRequest>(
        json!({"idTag": "DEADBEEF"}),
        json!({"idTagInfo": {"status": "ConcurrentTx"}}),
    );
    assert_eq!(
        resp.id_tag_info.status,
        v16::AuthorizationStatus::ConcurrentTx
    );
}

#[test]
fn v16_start_transaction() {
    // meterStart is a Wh register; values past i32::MAX must not break parsing.
    let (req, resp) = exchange::<v16::StartTransactionRequest>(
        json!({
            "connectorId": 2,
            "idTag": "04A2B3C4D5E6F7",
            "meterStart": 2_147_483_648_i64,
            "reservationId": 17,
            "timestamp": "2024-05-14T09:31:00Z"
        }),
        json!({"idTagInfo": {"status": "Accepted", "parentIdTag": "FLEET-0042"}, "transactionId": 1337}),
    );
    assert_eq!(req.meter_start, 2_147_483_648);
    assert_eq!(resp.transaction_id, 1337);
}

#[test]
fn v16_stop_transaction_with_transaction_data() {
    let (req, resp) = exchange::<v16::StopTransactionRequest>(
        json!({
            "idTag": "04A2B3C4D5E6F7",
            "meterStop": 2_147_512_345_i64,
            "timestamp": "2024-05-14T11:02:41Z",
            "transactionId": 1337,
            "reason": "EVDisconnected",
            "transactionData": [
                {
                    "timestamp": "2024-05-14T09:31:00Z",
                    "sampledValue": [{
                        "value": "2147483648",
                        "context": "Transaction.Begin",
                        "measurand": "Energy.Active.Import.Register",
                        "location": "Outlet",
                        "unit": "Wh"
                    }]
                },
                {
                    "timestamp": "2024-05-14T11:02:41Z",
                    "sampledValue": [
                        {
                            "value": "2147512345",
                            "context": "Transaction.End",
                            "measurand": "Energy.Active.Import.Register",
                            "location": "Outlet",
                            "unit": "Wh"
                        },
                        {"value": "0.0", "context": "Transaction.End", "measurand": "Current.Import", "phase": "L1", "unit": "A"},
                        {"value": "0.0", "context": "Transaction.End", "measurand": "Current.Import", "phase": "L2", "unit": "A"},
                        {"value": "0.0", "context": "Transaction.End", "measurand": "Current.Import", "phase": "L3", "unit": "A"}
                    ]
                }
            ]
        }),
        json!({"idTagInfo": {"status": "Accepted"}}),
    );
    assert_eq!(req.reason, Some(v16::Reason::EVDisconnected));
    let data = req.transaction_data.as_deref().unwrap();
    let end = &data[1].sampled_value;
    assert_eq!(end[0].context, Some(v16::ReadingContext::TransactionEnd));
    assert_eq!(end[3].phase, Some(v16::Phase::L3));
    assert_eq!(
        resp.id_tag_info.map(|i| i.status),
        Some(v16::AuthorizationStatus::Accepted)
    );
}

#[test]
fn v16_meter_values_per_phase() {
    let mut sampled = Vec::new();
    for (phase, current) in [("L1", "15.9"), ("L2", "16.1"), ("L3", "15.7")] {
        sampled.push(json!({
            "value": current, "context": "Sample.Periodic", "format": "Raw",
            "measurand": "Current.Import", "phase": phase, "location": "Outlet", "unit": "A"
        }));
    }
    for (phase, volts) in [("L1-N", "230.4"), ("L2-N", "231.0"), ("L3-N", "229.8")] {
        sampled.push(json!({"value": volts, "measurand": "Voltage", "phase": phase, "unit": "V"}));
    }
    sampled.push(json!({"value": "16.0", "measurand": "Current.Offered", "unit": "A"}));
    sampled.push(json!({"value": "11.04", "measurand": "Power.Active.Import", "unit": "kW"}));
    sampled.push(
        json!({"value": "12345678", "measurand": "Energy.Active.Import.Register", "unit": "Wh"}),
    );
    sampled.push(json!({"value": "50.01", "measurand": "Frequency", "unit": "Hertz"}));
    sampled.push(json!({"value": "62", "measurand": "SoC", "location": "EV", "unit": "Percent"}));
    let payload = json!({
        "connectorId": 1,
        "transactionId": 1337,
        "meterValue": [{"timestamp": "2024-05-14T10:00:00Z", "sampledValue": sampled}]
    });
    let (req, _) = exchange::<v16::MeterValuesRequest>(payload, json!({}));

    let values = &req.meter_value[0].sampled_value;
    assert_eq!(values.len(), 11);
    let l2: Vec<_> = values
        .iter()
        .filter(|v| v.phase == Some(v16::Phase::L2))
        .collect();
    assert_eq!(l2.len(), 1);
    assert_eq!(l2[0].value, "16.1");
    assert_eq!(l2[0].measurand, Some(v16::Measurand::CurrentImport));
    assert_eq!(l2[0].format, Some(v16::ValueFormat::Raw));
    assert_eq!(l2[0].location, Some(v16::Location::Outlet));
    assert_eq!(values[3].phase, Some(v16::Phase::L1N));
    assert_eq!(values[7].unit, Some(v16::UnitOfMeasure::KW));
    assert_eq!(values[9].unit, Some(v16::UnitOfMeasure::Hertz));
    assert_eq!(req.transaction_id, Some(1337));
}

#[test]
fn v16_set_charging_profile_multi_period() {
    let (req, resp) = exchange::<v16::SetChargingProfileRequest>(
        json!({
            "connectorId": 1,
            "csChargingProfiles": {
                "chargingProfileId": 101,
                "transactionId": 1337,
                "stackLevel": 2,
                "chargingProfilePurpose": "TxProfile",
                "chargingProfileKind": "Absolute",
                "validFrom": "2024-05-14T09:00:00Z",
                "validTo": "2024-05-14T12:00:00Z",
                "chargingSchedule": {
                    "duration": 7200,
                    "startSchedule": "2024-05-14T10:00:00Z",
                    "chargingRateUnit": "A",
                    "chargingSchedulePeriod": [
                        {"startPeriod": 0, "limit": 32.0, "numberPhases": 3},
                        {"startPeriod": 1800, "limit": 16.5, "numberPhases": 3},
                        {"startPeriod": 3600, "limit": 6.0, "numberPhases": 1}
                    ],
                    "minChargingRate": 6.0
                }
            }
        }),
        json!({"status": "Accepted"}),
    );
    let profile = &req.cs_charging_profiles;
    assert_eq!(
        profile.charging_profile_purpose,
        v16::ChargingProfilePurposeType::TxProfile
    );
    assert_eq!(
        profile.charging_profile_kind,
        v16::ChargingProfileKindType::Absolute
    );
    let schedule = &profile.charging_schedule;
    assert_eq!(schedule.charging_rate_unit, v16::ChargingRateUnitType::A);
    let periods: Vec<(i32, f64, Option<i32>)> = schedule
        .charging_schedule_period
        .iter()
        .map(|p| (p.start_period, p.limit, p.number_phases))
        .collect();
    assert_eq!(
        periods,
        [
            (0, 32.0, Some(3)),
            (1800, 16.5, Some(3)),
            (3600, 6.0, Some(1))
        ]
    );
    assert_eq!(resp.status, v16::ChargingProfileStatus::Accepted);

    // A recurring default profile in W, as sent for load balancing, without optional fields.
    let (req, resp) = exchange::<v16::SetChargingProfileRequest>(
        json!({
            "connectorId": 0,
            "csChargingProfiles": {
                "chargingProfileId": 7,
                "stackLevel": 0,
                "chargingProfilePurpose": "TxDefaultProfile",
                "chargingProfileKind": "Recurring",
                "recurrencyKind": "Daily",
                "chargingSchedule": {
                    "startSchedule": "2024-05-14T00:00:00Z",
                    "chargingRateUnit": "W",
                    "chargingSchedulePeriod": [
                        {"startPeriod": 0, "limit": 11000.0},
                        {"startPeriod": 25200, "limit": 7400.0},
                        {"startPeriod": 64800, "limit": 3680.0, "numberPhases": 1}
                    ]
                }
            }
        }),
        json!({"status": "NotSupported"}),
    );
    assert_eq!(
        req.cs_charging_profiles.recurrency_kind,
        Some(v16::RecurrencyKindType::Daily)
    );
    assert_eq!(resp.status, v16::ChargingProfileStatus::NotSupported);
}

#[test]
fn v16_remote_start_and_composite_schedule_share_profile_types() {
    let (req, resp) = exchange::<v16::RemoteStartTransactionRequest>(
        json!({
            "connectorId": 1,
            "idTag": "APP-7781",
            "chargingProfile": {
                "chargingProfileId": 5,
                "stackLevel": 1,
                "chargingProfilePurpose": "TxProfile",
                "chargingProfileKind": "Relative",
                "chargingSchedule": {
                    "chargingRateUnit": "A",
                    "chargingSchedulePeriod": [{"startPeriod": 0, "limit": 10.0}]
                }
            }
        }),
        json!({"status": "Accepted"}),
    );
    let profile: v16::ChargingProfile = req.charging_profile.unwrap();
    assert_eq!(
        profile.charging_profile_kind,
        v16::ChargingProfileKindType::Relative
    );
    assert_eq!(resp.status, v16::RemoteStartStopStatus::Accepted);

    let (req, resp) = exchange::<v16::GetCompositeScheduleRequest>(
        json!({"connectorId": 1, "duration": 3600, "chargingRateUnit": "W"}),
        json!({
            "status": "Accepted",
            "connectorId": 1,
            "scheduleStart": "2024-05-14T10:00:00Z",
            "chargingSchedule": {
                "duration": 3600,
                "startSchedule": "2024-05-14T10:00:00Z",
                "chargingRateUnit": "W",
                "chargingSchedulePeriod": [
                    {"startPeriod": 0, "limit": 7360.0, "numberPhases": 1},
                    {"startPeriod": 900, "limit": 11040.0, "numberPhases": 3}
                ]
            }
        }),
    );
    assert_eq!(req.charging_rate_unit, Some(v16::ChargingRateUnitType::W));
    let schedule: v16::ChargingSchedule = resp.charging_schedule.unwrap();
    assert_eq!(schedule.charging_schedule_period[1].limit, 11040.0);
}

#[test]
fn v16_configuration() {
    let (req, resp) = exchange::<v16::GetConfigurationRequest>(
        json!({"key": ["HeartbeatInterval", "MeterValuesSampledData", "NumberOfConnectors", "VendorThing"]}),
        json!({
            "configurationKey": [
                {"key": "HeartbeatInterval", "readonly": false, "value": "300"},
                {"key": "MeterValuesSampledData", "readonly": false, "value": "Energy.Active.Import.Register,Current.Import"},
                {"key": "NumberOfConnectors", "readonly": true, "value": "2"}
            ],
            "unknownKey": ["VendorThing"]
        }),
    );
    assert_eq!(req.key.as_ref().map(Vec::len), Some(4));
    let keys: Vec<v16::KeyValue> = resp.configuration_key.unwrap();
    assert!(keys[2].readonly);
    assert_eq!(keys[0].value.as_deref(), Some("300"));
    assert_eq!(resp.unknown_key.unwrap(), ["VendorThing"]);

    // No keys asked: all of them.
    let (req, _) = exchange::<v16::GetConfigurationRequest>(
        json!({}),
        json!({"configurationKey": [{"key": "AuthorizeRemoteTxRequests", "readonly": true}]}),
    );
    assert_eq!(req, v16::GetConfigurationRequest::default());

    for (status, expected) in [
        ("Accepted", v16::ConfigurationStatus::Accepted),
        ("Rejected", v16::ConfigurationStatus::Rejected),
        ("RebootRequired", v16::ConfigurationStatus::RebootRequired),
        ("NotSupported", v16::ConfigurationStatus::NotSupported),
    ] {
        let (req, resp) = exchange::<v16::ChangeConfigurationRequest>(
            json!({"key": "MeterValueSampleInterval", "value": "60"}),
            json!({"status": status}),
        );
        assert_eq!(req.key, "MeterValueSampleInterval");
        assert_eq!(resp.status, expected);
    }
}

#[test]
fn v16_security_extension_types() {
    let (req, resp) = exchange::<v16::ExtendedTriggerMessageRequest>(
        json!({"requestedMessage": "SignChargePointCertificate", "connectorId": 0}),
        json!({"status": "NotImplemented"}),
    );
    assert_eq!(
        req.requested_message,
        v16::MessageTriggerEnum::SignChargePointCertificate
    );
    assert_eq!(resp.status, v16::TriggerMessageStatusEnum::NotImplemented);

    let (req, _) = exchange::<v16::SecurityEventNotificationRequest>(
        json!({"type": "StartupOfTheDevice", "timestamp": "2024-05-14T09:29:58Z"}),
        json!({}),
    );
    assert_eq!(req.kind, "StartupOfTheDevice");
}

#[test]
fn v16_enum_wire_names() {
    let m = v16::Measurand::EnergyActiveImportRegister;
    assert_eq!(
        serde_json::to_value(m).unwrap(),
        json!("Energy.Active.Import.Register")
    );
    assert_eq!(m.as_str(), "Energy.Active.Import.Register");
    assert_eq!(
        serde_json::from_value::<v16::Measurand>(json!("Energy.Active.Import.Register")).unwrap(),
        m
    );
    assert_eq!(
        serde_json::to_value(v16::Phase::L1N).unwrap(),
        json!("L1-N")
    );
    assert_eq!(
        serde_json::to_value(v16::Phase::L3L1).unwrap(),
        json!("L3-L1")
    );
    assert_eq!(
        serde_json::to_value(v16::ReadingContext::SampleClock).unwrap(),
        json!("Sample.Clock")
    );
    assert_eq!(
        serde_json::to_value(v16::UnitOfMeasure::KWh).unwrap(),
        json!("kWh")
    );
    assert_eq!(
        serde_json::to_value(v16::Reason::SoftReset).unwrap(),
        json!("SoftReset")
    );
    assert_eq!(
        serde_json::to_value(v16::ResetType::Hard).unwrap(),
        json!("Hard")
    );
    assert_eq!(
        serde_json::to_value(v16::AvailabilityType::Inoperative).unwrap(),
        json!("Inoperative")
    );
    assert_eq!(
        serde_json::to_value(v16::MessageTrigger::MeterValues).unwrap(),
        json!("MeterValues")
    );
    assert!(
        serde_json::from_value::<v16::Measurand>(json!("energy.active.import.register")).is_err()
    );
    assert!(serde_json::from_value::<v16::ChargePointStatus>(json!("Occupied")).is_err());
}

// ---------------------------------------------------------------------------------------------
// OCPP 2.0.1

#[test]
fn v201_every_schema_has_a_type() {
    let generated: BTreeSet<String> = v201::ACTIONS.iter().map(|a| (*a).to_owned()).collect();
    assert_eq!(generated.len(), v201::ACTIONS.len(), "duplicate actions");
    assert_eq!(generated, actions_in_schema_dir(OcppVersion::V201));
    assert_eq!(generated.len() * 2, 128);
}

#[test]
fn v201_request_constants() {
    assert_eq!(
        <v201::TransactionEventRequest as Request>::ACTION,
        "TransactionEvent"
    );
    assert_eq!(
        <v201::TransactionEventRequest as Request>::VERSION,
        OcppVersion::V201
    );
    assert_eq!(
        <v201::NotifyEVChargingNeedsRequest as Request>::ACTION,
        "NotifyEVChargingNeeds"
    );
    assert_eq!(
        <v201::Get15118EVCertificateRequest as Request>::ACTION,
        "Get15118EVCertificate"
    );
}

#[test]
fn v201_heartbeat_is_an_empty_object() {
    assert_eq!(
        serde_json::to_string(&v201::HeartbeatRequest::default()).unwrap(),
        "{}"
    );
    assert_eq!(
        serde_json::to_value(v201::StatusNotificationResponse { custom_data: None }).unwrap(),
        json!({})
    );
    let (req, resp) = exchange::<v201::HeartbeatRequest>(
        json!({}),
        json!({"currentTime": "2024-05-14T09:35:00Z"}),
    );
    assert_eq!(req, v201::HeartbeatRequest { custom_data: None });
    assert_eq!(resp.current_time.to_rfc3339(), "2024-05-14T09:35:00+00:00");
}

#[test]
fn v201_boot_notification() {
    let (req, resp) = exchange::<v201::BootNotificationRequest>(
        json!({
            "chargingStation": {
                "serialNumber": "EVB-P2145123",
                "model": "Wallbox Pulsar Max",
                "vendorName": "Wallbox",
                "firmwareVersion": "6.3.12",
                "modem": {"iccid": "8931440400012345678", "imsi": "204043726510011"}
            },
            "reason": "PowerUp"
        }),
        json!({
            "currentTime": "2024-05-14T09:30:00Z",
            "interval": 300,
            "status": "Pending",
            "statusInfo": {"reasonCode": "Provisioning", "additionalInfo": "station not yet commissioned"}
        }),
    );
    assert_eq!(req.reason, v201::BootReasonEnum::PowerUp);
    assert_eq!(
        req.charging_station.modem.unwrap().imsi.as_deref(),
        Some("204043726510011")
    );
    assert_eq!(resp.status, v201::RegistrationStatusEnum::Pending);
    assert_eq!(resp.status_info.unwrap().reason_code, "Provisioning");
}

#[test]
fn v201_status_notification_with_custom_data() {
    let (req, _) = exchange::<v201::StatusNotificationRequest>(
        json!({
            "customData": {"vendorId": "com.example.evse", "firmwareBuild": "abc123", "diag": {"tempC": 41.5}},
            "timestamp": "2024-05-14T09:31:02Z",
            "connectorStatus": "Occupied",
            "evseId": 1,
            "connectorId": 1
        }),
        json!({}),
    );
    assert_eq!(req.connector_status, v201::ConnectorStatusEnum::Occupied);
    let custom = req.custom_data.unwrap();
    assert_eq!(custom.vendor_id, "com.example.evse");
    assert_eq!(custom.extra["diag"]["tempC"], json!(41.5));
}

#[test]
fn v201_authorize() {
    let (req, resp) = exchange::<v201::AuthorizeRequest>(
        json!({"idToken": {"idToken": "04A2B3C4D5E6F7", "type": "ISO14443"}}),
        json!({"idTokenInfo": {
            "status": "Accepted",
            "cacheExpiryDateTime": "2024-06-01T00:00:00Z",
            "chargingPriority": 1,
            "language1": "nl",
            "evseId": [1, 2],
            "groupIdToken": {"idToken": "FLEET-0042", "type": "Central"},
            "personalMessage": {"format": "UTF8", "language": "en", "content": "Welcome back"}
        }}),
    );
    assert_eq!(req.id_token.kind, v201::IdTokenEnum::ISO14443);
    let info: v201::IdTokenInfo = resp.id_token_info;
    assert_eq!(info.status, v201::AuthorizationStatusEnum::Accepted);
    assert_eq!(info.evse_id.as_deref(), Some(&[1, 2][..]));
    assert_eq!(
        info.group_id_token.unwrap().kind,
        v201::IdTokenEnum::Central
    );
}

#[test]
fn v201_transaction_event_with_meter_values() {
    let (req, resp) = exchange::<v201::TransactionEventRequest>(
        json!({
            "eventType": "Updated",
            "timestamp": "2024-05-14T10:15:00Z",
            "triggerReason": "MeterValuePeriodic",
            "seqNo": 12,
            "offline": false,
            "numberOfPhasesUsed": 3,
            "cableMaxCurrent": 32,
            "transactionInfo": {
                "transactionId": "3f5b6c1e-8c9a-4f3e-9d1b-2a7c5e4f6b10",
                "chargingState": "Charging",
                "timeSpentCharging": 2640,
                "remoteStartId": 42
            },
            "evse": {"id": 1, "connectorId": 1},
            "meterValue": [{
                "timestamp": "2024-05-14T10:15:00Z",
                "sampledValue": [
                    {"value": 15.9, "context": "Sample.Periodic", "measurand": "Current.Import", "phase": "L1", "unitOfMeasure": {"unit": "A"}},
                    {"value": 16.1, "context": "Sample.Periodic", "measurand": "Current.Import", "phase": "L2", "unitOfMeasure": {"unit": "A"}},
                    {"value": 15.7, "context": "Sample.Periodic", "measurand": "Current.Import", "phase": "L3", "unitOfMeasure": {"unit": "A"}},
                    {"value": 230.4, "measurand": "Voltage", "phase": "L1-N", "unitOfMeasure": {"unit": "V"}},
                    {"value": 11.04, "measurand": "Power.Active.Import", "unitOfMeasure": {"unit": "W", "multiplier": 3}},
                    {
                        "value": 4870.5,
                        "measurand": "Energy.Active.Import.Register",
                        "location": "Outlet",
                        "unitOfMeasure": {"unit": "Wh"},
                        "signedMeterValue": {
                            "signedMeterData": "AQIDBAUGBwgJ",
                            "signingMethod": "ECDSA-secp256r1-SHA256",
                            "encodingMethod": "OCMF",
                            "publicKey": "MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE"
                        }
                    },
                    {"value": 62.0, "measurand": "SoC", "location": "EV", "unitOfMeasure": {"unit": "Percent"}}
                ]
            }]
        }),
        json!({"totalCost": 3.72, "chargingPriority": 0}),
    );
    assert_eq!(req.event_type, v201::TransactionEventEnum::Updated);
    assert_eq!(
        req.trigger_reason,
        v201::TriggerReasonEnum::MeterValuePeriodic
    );
    assert_eq!(
        req.transaction_info.charging_state,
        Some(v201::ChargingStateEnum::Charging)
    );
    let meter: &v201::MeterValue = &req.meter_value.as_deref().unwrap()[0];
    let samples: &[v201::SampledValue] = &meter.sampled_value;
    assert_eq!(samples[1].phase, Some(v201::PhaseEnum::L2));
    assert_eq!(samples[1].value, 16.1);
    assert_eq!(samples[3].phase, Some(v201::PhaseEnum::L1N));
    assert_eq!(
        samples[4].unit_of_measure.as_ref().unwrap().multiplier,
        Some(3)
    );
    assert_eq!(
        samples[5].measurand,
        Some(v201::MeasurandEnum::EnergyActiveImportRegister)
    );
    assert_eq!(samples[5].location, Some(v201::LocationEnum::Outlet));
    assert!(samples[5].signed_meter_value.is_some());
    assert_eq!(resp.total_cost, Some(3.72));

    let (req, _) = exchange::<v201::TransactionEventRequest>(
        json!({
            "eventType": "Ended",
            "timestamp": "2024-05-14T11:02:41Z",
            "triggerReason": "EVCommunicationLost",
            "seqNo": 31,
            "transactionInfo": {
                "transactionId": "3f5b6c1e-8c9a-4f3e-9d1b-2a7c5e4f6b10",
                "chargingState": "Idle",
                "stoppedReason": "EVDisconnected"
            },
            "idToken": {"idToken": "04A2B3C4D5E6F7", "type": "ISO14443"},
            "meterValue": [{
                "timestamp": "2024-05-14T11:02:41Z",
                "sampledValue": [{"value": 21934.0, "context": "Transaction.End", "measurand": "Energy.Active.Import.Register"}]
            }]
        }),
        json!({}),
    );
    assert_eq!(
        req.transaction_info.stopped_reason,
        Some(v201::ReasonEnum::EVDisconnected)
    );
}

#[test]
fn v201_notify_ev_charging_needs() {
    let (req, resp) = exchange::<v201::NotifyEVChargingNeedsRequest>(
        json!({
            "maxScheduleTuples": 24,
            "evseId": 1,
            "chargingNeeds": {
                "requestedEnergyTransfer": "AC_three_phase",
                "departureTime": "2024-05-14T17:30:00Z",
                "acChargingParameters": {"energyAmount": 32000, "evMinCurrent": 6, "evMaxCurrent": 32, "evMaxVoltage": 400}
            }
        }),
        json!({"status": "Processing"}),
    );
    let needs: v201::ChargingNeeds = req.charging_needs;
    assert_eq!(
        needs.requested_energy_transfer,
        v201::EnergyTransferModeEnum::ACThreePhase
    );
    let ac: v201::ACChargingParameters = needs.ac_charging_parameters.unwrap();
    assert_eq!(
        (ac.energy_amount, ac.ev_min_current, ac.ev_max_current),
        (32000, 6, 32)
    );
    assert_eq!(
        resp.status,
        v201::NotifyEVChargingNeedsStatusEnum::Processing
    );

    let (req, _) = exchange::<v201::NotifyEVChargingNeedsRequest>(
        json!({
            "evseId": 2,
            "chargingNeeds": {
                "requestedEnergyTransfer": "DC",
                "dcChargingParameters": {
                    "evMaxCurrent": 250, "evMaxVoltage": 800, "energyAmount": 54000, "evMaxPower": 150000,
                    "stateOfCharge": 18, "evEnergyCapacity": 77000, "fullSoC": 100, "bulkSoC": 80
                }
            }
        }),
        json!({"status": "Accepted", "statusInfo": {"reasonCode": "ScheduleFollows"}}),
    );
    let dc: v201::DCChargingParameters = req.charging_needs.dc_charging_parameters.unwrap();
    assert_eq!(
        (dc.full_soc, dc.bulk_soc, dc.state_of_charge),
        (Some(100), Some(80), Some(18))
    );
}

#[test]
fn v201_set_charging_profile_multi_period() {
    let (req, resp) = exchange::<v201::SetChargingProfileRequest>(
        json!({
            "evseId": 1,
            "chargingProfile": {
                "id": 101,
                "stackLevel": 2,
                "chargingProfilePurpose": "TxProfile",
                "chargingProfileKind": "Absolute",
                "validFrom": "2024-05-14T09:00:00Z",
                "validTo": "2024-05-14T12:00:00Z",
                "transactionId": "3f5b6c1e-8c9a-4f3e-9d1b-2a7c5e4f6b10",
                "chargingSchedule": [{
                    "id": 1,
                    "startSchedule": "2024-05-14T10:00:00Z",
                    "duration": 7200,
                    "chargingRateUnit": "A",
                    "minChargingRate": 6.0,
                    "chargingSchedulePeriod": [
                        {"startPeriod": 0, "limit": 32.0, "numberPhases": 3},
                        {"startPeriod": 1800, "limit": 16.5, "numberPhases": 3},
                        {"startPeriod": 3600, "limit": 10.0, "numberPhases": 1, "phaseToUse": 2}
                    ]
                }]
            }
        }),
        json!({"status": "Accepted"}),
    );
    let profile: v201::ChargingProfile = req.charging_profile;
    assert_eq!(
        profile.charging_profile_purpose,
        v201::ChargingProfilePurposeEnum::TxProfile
    );
    assert_eq!(
        profile.charging_profile_kind,
        v201::ChargingProfileKindEnum::Absolute
    );
    let schedule: &v201::ChargingSchedule = &profile.charging_schedule[0];
    assert_eq!(schedule.charging_rate_unit, v201::ChargingRateUnitEnum::A);
    let periods: Vec<(i32, f64, Option<i32>, Option<i32>)> = schedule
        .charging_schedule_period
        .iter()
        .map(|p| (p.start_period, p.limit, p.number_phases, p.phase_to_use))
        .collect();
    assert_eq!(
        periods,
        [
            (0, 32.0, Some(3), None),
            (1800, 16.5, Some(3), None),
            (3600, 10.0, Some(1), Some(2))
        ]
    );
    assert_eq!(resp.status, v201::ChargingProfileStatusEnum::Accepted);

    // Station-wide daily limit in W with a sales tariff.
    let (req, resp) = exchange::<v201::SetChargingProfileRequest>(
        json!({
            "evseId": 0,
            "chargingProfile": {
                "id": 7,
                "stackLevel": 0,
                "chargingProfilePurpose": "ChargingStationMaxProfile",
                "chargingProfileKind": "Recurring",
                "recurrencyKind": "Daily",
                "chargingSchedule": [{
                    "id": 2,
                    "startSchedule": "2024-05-14T00:00:00Z",
                    "duration": 86400,
                    "chargingRateUnit": "W",
                    "chargingSchedulePeriod": [
                        {"startPeriod": 0, "limit": 22000.0},
                        {"startPeriod": 25200, "limit": 11000.0},
                        {"startPeriod": 64800, "limit": 7400.0}
                    ],
                    "salesTariff": {
                        "id": 1,
                        "numEPriceLevels": 2,
                        "salesTariffEntry": [
                            {"relativeTimeInterval": {"start": 0, "duration": 25200}, "ePriceLevel": 1},
                            {
                                "relativeTimeInterval": {"start": 25200},
                                "ePriceLevel": 2,
                                "consumptionCost": [{"startValue": 0.0, "cost": [{"costKind": "RenewableGenerationPercentage", "amount": 35}]}]
                            }
                        ]
                    }
                }]
            }
        }),
        json!({"status": "Rejected", "statusInfo": {"reasonCode": "InvalidSchedule", "additionalInfo": "limit above grid connection"}}),
    );
    let schedule = &req.charging_profile.charging_schedule[0];
    let tariff: &v201::SalesTariff = schedule.sales_tariff.as_ref().unwrap();
    assert_eq!(tariff.num_e_price_levels, Some(2));
    assert_eq!(tariff.sales_tariff_entry[1].e_price_level, Some(2));
    assert_eq!(resp.status, v201::ChargingProfileStatusEnum::Rejected);
}

#[test]
fn v201_get_and_set_variables() {
    let (req, resp) = exchange::<v201::GetVariablesRequest>(
        json!({"getVariableData": [
            {"component": {"name": "OCPPCommCtrlr"}, "variable": {"name": "HeartbeatInterval"}},
            {"attributeType": "MaxSet", "component": {"name": "EVSE", "evse": {"id": 1}}, "variable": {"name": "Power"}},
            {"component": {"name": "SmartChargingCtrlr"}, "variable": {"name": "Enabled"}},
            {"component": {"name": "VendorCtrlr", "instance": "x"}, "variable": {"name": "Thing", "instance": "1"}}
        ]}),
        json!({"getVariableResult": [
            {"attributeStatus": "Accepted", "attributeValue": "300", "component": {"name": "OCPPCommCtrlr"}, "variable": {"name": "HeartbeatInterval"}},
            {"attributeStatus": "Accepted", "attributeType": "MaxSet", "attributeValue": "22000", "component": {"name": "EVSE", "evse": {"id": 1}}, "variable": {"name": "Power"}},
            {"attributeStatus": "Accepted", "attributeValue": "true", "component": {"name": "SmartChargingCtrlr"}, "variable": {"name": "Enabled"}},
            {
                "attributeStatus": "UnknownComponent",
                "attributeStatusInfo": {"reasonCode": "NotFound"},
                "component": {"name": "VendorCtrlr", "instance": "x"},
                "variable": {"name": "Thing", "instance": "1"}
            }
        ]}),
    );
    assert_eq!(
        req.get_variable_data[1].attribute_type,
        Some(v201::AttributeEnum::MaxSet)
    );
    assert_eq!(
        req.get_variable_data[1]
            .component
            .evse
            .as_ref()
            .map(|e| e.id),
        Some(1)
    );
    let results: &[v201::GetVariableResult] = &resp.get_variable_result;
    assert_eq!(results[0].attribute_value.as_deref(), Some("300"));
    assert_eq!(
        results[3].attribute_status,
        v201::GetVariableStatusEnum::UnknownComponent
    );

    let (req, resp) = exchange::<v201::SetVariablesRequest>(
        json!({"setVariableData": [
            {"attributeValue": "60", "component": {"name": "AlignedDataCtrlr"}, "variable": {"name": "Interval"}},
            {"attributeType": "Target", "attributeValue": "Energy.Active.Import.Register,Current.Import,SoC", "component": {"name": "SampledDataCtrlr"}, "variable": {"name": "TxUpdatedMeasurands"}},
            {"attributeValue": "wss://csms.example.com/ocpp", "component": {"name": "OCPPCommCtrlr"}, "variable": {"name": "NetworkConfigurationPriority"}}
        ]}),
        json!({"setVariableResult": [
            {"attributeStatus": "Accepted", "component": {"name": "AlignedDataCtrlr"}, "variable": {"name": "Interval"}},
            {"attributeType": "Target", "attributeStatus": "RebootRequired", "component": {"name": "SampledDataCtrlr"}, "variable": {"name": "TxUpdatedMeasurands"}},
            {
                "attributeStatus": "Rejected",
                "attributeStatusInfo": {"reasonCode": "InvalidValue", "additionalInfo": "expects a list of slot numbers"},
                "component": {"name": "OCPPCommCtrlr"},
                "variable": {"name": "NetworkConfigurationPriority"}
            }
        ]}),
    );
    let data: &[v201::SetVariableData] = &req.set_variable_data;
    assert_eq!(data[0].attribute_value, "60");
    let results: &[v201::SetVariableResult] = &resp.set_variable_result;
    assert_eq!(
        results[1].attribute_status,
        v201::SetVariableStatusEnum::RebootRequired
    );
    assert_eq!(
        results[2]
            .attribute_status_info
            .as_ref()
            .unwrap()
            .reason_code,
        "InvalidValue"
    );
}

#[test]
fn v201_data_transfer_carries_any_json() {
    let (req, resp) = exchange::<v201::DataTransferRequest>(
        json!({"vendorId": "com.loadstar", "messageId": "SetLedColor", "data": {"rgb": [255, 128, 0], "blink": true}}),
        json!({"status": "Accepted", "data": "ok"}),
    );
    assert_eq!(req.data.unwrap()["rgb"][1], json!(128));
    assert_eq!(resp.data, Some(json!("ok")));
}

#[test]
fn v201_enum_wire_names() {
    let m = v201::MeasurandEnum::EnergyActiveImportRegister;
    assert_eq!(
        serde_json::to_value(m).unwrap(),
        json!("Energy.Active.Import.Register")
    );
    assert_eq!(m.as_str(), "Energy.Active.Import.Register");
    assert_eq!(
        serde_json::from_value::<v201::MeasurandEnum>(json!("Energy.Active.Net")).unwrap(),
        v201::MeasurandEnum::EnergyActiveNet
    );
    assert_eq!(
        serde_json::to_value(v201::PhaseEnum::L2L3).unwrap(),
        json!("L2-L3")
    );
    assert_eq!(
        serde_json::to_value(v201::ReasonEnum::SOCLimitReached).unwrap(),
        json!("SOCLimitReached")
    );
    assert_eq!(
        serde_json::to_value(v201::EnergyTransferModeEnum::ACSinglePhase).unwrap(),
        json!("AC_single_phase")
    );
    assert_eq!(
        serde_json::to_value(v201::IdTokenEnum::EMAID).unwrap(),
        json!("eMAID")
    );
    assert_eq!(
        serde_json::to_value(v201::ConnectorEnum::S3093P32A).unwrap(),
        json!("s309-3P-32A")
    );
    assert_eq!(
        serde_json::to_value(v201::ReadingContextEnum::InterruptionBegin).unwrap(),
        json!("Interruption.Begin")
    );
    assert!(serde_json::from_value::<v201::PhaseEnum>(json!("L1N")).is_err());
}

#[test]
fn schema_check_in_these_tests_rejects_bad_payloads() {
    // Guards the helper: a payload the schema rejects must not pass `assert_schema_valid`.
    let v16_schema = read_schema(&schema_file(OcppVersion::V16, "MeterValues", false));
    let bad_phase = json!({
        "connectorId": 1,
        "meterValue": [{"timestamp": "2024-05-14T10:00:00Z", "sampledValue": [{"value": "1", "phase": "L1N"}]}]
    });
    assert!(jsonschema::validate(&v16_schema, &bad_phase).is_err());
    let v201_schema = read_schema(&schema_file(OcppVersion::V201, "SetChargingProfile", false));
    assert!(jsonschema::validate(&v201_schema, &json!({"evseId": 1})).is_err());
    // And the typed layer rejects them as well.
    assert!(serde_json::from_value::<v16::MeterValuesRequest>(bad_phase).is_err());
    assert!(
        serde_json::from_value::<v201::SetChargingProfileRequest>(json!({"evseId": 1})).is_err()
    );
}

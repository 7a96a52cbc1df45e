//! Framing, validation, correlation, priority and timeouts of the sans-IO endpoint, for both
//! versions and both roles, and every error code the spec names.

use std::time::{Duration, Instant};

use loadstar_ocpp::frame::{Frame, UNKNOWN_MESSAGE_ID};
use loadstar_ocpp::rpc::RemoteError;
use loadstar_ocpp::schema::{self, PayloadKind};
use loadstar_ocpp::{
    CallFailure, CallId, Endpoint, EndpointConfig, Error, ErrorCode, Event, OcppVersion, Priority,
    Role,
};
use serde_json::{Value, json};

fn csms(version: OcppVersion) -> Endpoint {
    Endpoint::new(version, Role::Csms, EndpointConfig::default())
}

fn station(version: OcppVersion) -> Endpoint {
    Endpoint::new(version, Role::Station, EndpointConfig::default())
}

/// Parses a sent frame back into JSON for assertions.
fn sent(ep: &mut Endpoint, now: Instant) -> Value {
    let text = ep.poll_transmit(now).expect("a frame to send");
    serde_json::from_str(&text).expect("frames we send are JSON")
}

/// Feeds `frame` and returns the CALLERROR (id, code) the endpoint answered with.
fn error_reply(ep: &mut Endpoint, frame: &str) -> (String, String) {
    ep.handle_text(frame);
    let reply = sent(ep, Instant::now());
    assert_eq!(reply[0], 4, "expected a CALLERROR, got {reply}");
    assert!(
        reply[3]
            .as_str()
            .is_some_and(|d| !d.is_empty() && d.len() <= 255),
        "description must be a non-empty string of at most 255 chars: {reply}"
    );
    assert!(reply[4].is_object(), "details must be an object: {reply}");
    (
        reply[1].as_str().unwrap_or_default().to_owned(),
        reply[2].as_str().unwrap_or_default().to_owned(),
    )
}

fn answer(ep: &mut Endpoint, id: &Value, payload: Value) {
    ep.handle_text(&json!([3, id, payload]).to_string());
}

fn boot16() -> Value {
    json!({"chargePointVendor": "Acme", "chargePointModel": "Wallbox 22"})
}

fn boot201() -> Value {
    json!({"reason": "PowerUp", "chargingStation": {"vendorName": "Acme", "model": "W22"}})
}

#[test]
fn frame_round_trips() {
    for text in [
        r#"[2,"19223201","BootNotification",{"chargePointVendor":"V","chargePointModel":"M"}]"#,
        r#"[3,"19223201",{"status":"Accepted"}]"#,
        r#"[4,"19223201","NotImplemented","unknown",{}]"#,
    ] {
        let frame = Frame::parse(text).expect("valid frame");
        let again = Frame::parse(&frame.to_text()).expect("re-parse");
        assert_eq!(frame, again);
        assert_eq!(frame.id(), "19223201");
    }
    // errorDetails omitted by some stations: accepted, details become {}.
    match Frame::parse(r#"[4,"7","GenericError","x"]"#) {
        Ok(Frame::CallError { details, .. }) => assert_eq!(details, json!({})),
        other => panic!("expected CallError, got {other:?}"),
    }
}

#[test]
fn malformed_frames_get_the_spec_codes_in_each_version() {
    let long_id = "0123456789012345678901234567890123456789";
    let long = format!(r#"[2,"{long_id}","Heartbeat",{{}}]"#);
    let cases: &[(&str, &str, &str, &str)] = &[
        // (frame, expected id, 1.6 code, 2.0.1 code)
        ("not json", "-1", "FormationViolation", "RpcFrameworkError"),
        ("{\"a\":1}", "-1", "FormationViolation", "RpcFrameworkError"),
        ("[]", "-1", "FormationViolation", "RpcFrameworkError"),
        (
            r#"["2","1","Heartbeat",{}]"#,
            "1",
            "FormationViolation",
            "RpcFrameworkError",
        ),
        (
            r#"[5,"1","Heartbeat",{}]"#,
            "1",
            "ProtocolError",
            "MessageTypeNotSupported",
        ),
        (
            r#"[2,1,"Heartbeat",{}]"#,
            "-1",
            "FormationViolation",
            "RpcFrameworkError",
        ),
        (
            r#"[2,"1","Heartbeat"]"#,
            "1",
            "FormationViolation",
            "RpcFrameworkError",
        ),
        (
            r#"[2,"1",7,{}]"#,
            "1",
            "FormationViolation",
            "RpcFrameworkError",
        ),
        (
            r#"[2,"1","Heartbeat",[]]"#,
            "1",
            "FormationViolation",
            "FormatViolation",
        ),
        (&long, "-1", "FormationViolation", "RpcFrameworkError"),
    ];
    for &(frame, id, code16, code201) in cases {
        let (got_id, got_code) = error_reply(&mut csms(OcppVersion::V16), frame);
        assert_eq!(
            (got_id.as_str(), got_code.as_str()),
            (id, code16),
            "1.6 {frame}"
        );
        let (got_id, got_code) = error_reply(&mut csms(OcppVersion::V201), frame);
        assert_eq!(
            (got_id.as_str(), got_code.as_str()),
            (id, code201),
            "2.0.1 {frame}"
        );
    }
}

#[test]
fn broken_results_and_errors_are_never_answered() {
    let mut ep = csms(OcppVersion::V201);
    for frame in [r#"[3,"1"]"#, r#"[4,"1",5,"x",{}]"#, r#"[3,17,{}]"#] {
        ep.handle_text(frame);
        assert_eq!(ep.poll_transmit(Instant::now()), None, "{frame}");
        assert!(
            matches!(ep.poll_event(), Some(Event::Refused { .. })),
            "{frame}"
        );
    }
}

#[test]
fn binary_frames_are_refused() {
    let mut ep = csms(OcppVersion::V201);
    ep.handle_binary();
    let reply = sent(&mut ep, Instant::now());
    assert_eq!(reply[0], 4);
    assert_eq!(reply[1], UNKNOWN_MESSAGE_ID);
    assert_eq!(reply[2], "RpcFrameworkError");
}

#[test]
fn valid_calls_reach_the_application_and_are_answered() {
    for (version, payload) in [(OcppVersion::V16, boot16()), (OcppVersion::V201, boot201())] {
        let mut ep = csms(version);
        ep.handle_text(&json!([2, "abc", "BootNotification", payload]).to_string());
        let Some(Event::Call(call)) = ep.poll_event() else {
            panic!("expected a call event");
        };
        assert_eq!(
            (call.id.as_str(), call.action.as_str()),
            ("abc", "BootNotification")
        );
        let response = json!({
            "status": "Accepted",
            "currentTime": "2026-11-25T12:00:00Z",
            "interval": 300
        });
        ep.respond(&call.id, &response).expect("valid response");
        assert_eq!(sent(&mut ep, Instant::now()), json!([3, "abc", response]));
        // The call is answered: a second answer is our bug, reported as such.
        assert!(matches!(
            ep.respond(&call.id, &response),
            Err(Error::UnknownCall { .. })
        ));
    }
}

#[test]
fn schema_violations_map_to_the_spec_codes() {
    let v16 = OcppVersion::V16;
    let v201 = OcppVersion::V201;
    let status = |s: &str| json!({"connectorId": 1, "errorCode": "NoError", "status": s});
    let cases: Vec<(OcppVersion, &str, Value, &str)> = vec![
        // Missing required field.
        (
            v16,
            "BootNotification",
            json!({"chargePointVendor": "Acme"}),
            "OccurenceConstraintViolation",
        ),
        (
            v201,
            "BootNotification",
            json!({"reason": "PowerUp"}),
            "OccurrenceConstraintViolation",
        ),
        // Wrong JSON type.
        (
            v16,
            "BootNotification",
            json!({"chargePointVendor": 5, "chargePointModel": "M"}),
            "TypeConstraintViolation",
        ),
        (
            v201,
            "Heartbeat",
            json!({"customData": 5}),
            "TypeConstraintViolation",
        ),
        // Enum violations.
        (
            v16,
            "StatusNotification",
            status("Sleeping"),
            "PropertyConstraintViolation",
        ),
        (
            v201,
            "BootNotification",
            json!({"reason": "Bored", "chargingStation": {"vendorName": "A", "model": "M"}}),
            "PropertyConstraintViolation",
        ),
        // Too long.
        (
            v16,
            "Authorize",
            json!({"idTag": "x".repeat(21)}),
            "PropertyConstraintViolation",
        ),
        // Unexpected property.
        (
            v16,
            "Heartbeat",
            json!({"surprise": true}),
            "FormationViolation",
        ),
        (
            v201,
            "Heartbeat",
            json!({"surprise": true}),
            "FormatViolation",
        ),
    ];
    for (version, action, payload, code) in cases {
        let mut ep = csms(version);
        let frame = json!([2, "m1", action, payload]).to_string();
        let (id, got) = error_reply(&mut ep, &frame);
        assert_eq!(
            (id.as_str(), got.as_str()),
            ("m1", code),
            "{version} {frame}"
        );
        assert!(
            matches!(ep.poll_event(), Some(Event::Refused { action: Some(a), .. }) if a == action),
            "refusals are reported"
        );
        assert_eq!(
            ep.poll_event(),
            None,
            "an invalid call never reaches the application"
        );
    }
}

#[test]
fn unknown_actions_and_wrong_directions() {
    for version in [OcppVersion::V16, OcppVersion::V201] {
        let (_, code) = error_reply(&mut csms(version), r#"[2,"1","MakeCoffee",{}]"#);
        assert_eq!(code, "NotImplemented");
        // A station may not send a CSMS-only call to the CSMS...
        let frame = json!([2, "2", "Reset", {"type": "Hard"}]).to_string();
        let (_, code) = error_reply(&mut csms(version), &frame);
        assert_eq!(code, "NotSupported");
        // ...and the CSMS may not send station-initiated calls to a station.
        let frame = json!([2, "3", "Heartbeat", {}]).to_string();
        let (_, code) = error_reply(&mut station(version), &frame);
        assert_eq!(code, "NotSupported");
    }
}

#[test]
fn duplicate_inbound_ids_and_floods_are_refused() {
    let mut ep = csms(OcppVersion::V16);
    ep.handle_text(r#"[2,"d","Heartbeat",{}]"#);
    assert!(matches!(ep.poll_event(), Some(Event::Call(_))));
    let (id, code) = error_reply(&mut ep, r#"[2,"d","Heartbeat",{}]"#);
    assert_eq!((id.as_str(), code.as_str()), ("d", "FormationViolation"));

    let mut ep = Endpoint::new(
        OcppVersion::V201,
        Role::Csms,
        EndpointConfig {
            max_inbound_pending: 2,
            ..EndpointConfig::default()
        },
    );
    ep.handle_text(r#"[2,"a","Heartbeat",{}]"#);
    ep.handle_text(r#"[2,"b","Heartbeat",{}]"#);
    let (id, code) = error_reply(&mut ep, r#"[2,"c","Heartbeat",{}]"#);
    assert_eq!((id.as_str(), code.as_str()), ("c", "GenericError"));
}

#[test]
fn an_invalid_answer_of_ours_becomes_internal_error() {
    let mut ep = csms(OcppVersion::V201);
    ep.handle_text(r#"[2,"h","Heartbeat",{}]"#);
    let _ = ep.poll_event();
    let err = ep.respond("h", &json!({"currentTime": 5}));
    assert!(matches!(err, Err(Error::InvalidOutbound { .. })), "{err:?}");
    let reply = sent(&mut ep, Instant::now());
    assert_eq!(reply[0], 4);
    assert_eq!(reply[1], "h");
    assert_eq!(reply[2], "InternalError");
}

#[test]
fn invalid_outbound_calls_are_never_queued() {
    let mut ep = csms(OcppVersion::V16);
    let err = ep.call_raw("Reset", json!({"type": "Gentle"}), Priority::Operations);
    assert!(matches!(err, Err(Error::InvalidOutbound { .. })), "{err:?}");
    assert_eq!(ep.pending_calls(), 0);
    assert_eq!(ep.poll_transmit(Instant::now()), None);
}

#[test]
fn one_outstanding_call_and_correlation() {
    let t0 = Instant::now();
    let mut ep = csms(OcppVersion::V16);
    let first = ep
        .call_raw("Reset", json!({"type": "Soft"}), Priority::Operations)
        .expect("valid");
    let second = ep
        .call_raw("Reset", json!({"type": "Hard"}), Priority::Operations)
        .expect("valid");
    let frame = sent(&mut ep, t0);
    assert_eq!(frame[0], 2);
    assert_eq!(frame[2], "Reset");
    assert_eq!(frame[3], json!({"type": "Soft"}));
    assert_eq!(ep.poll_transmit(t0), None, "only one CALL outstanding");

    // An answer with another id is not ours.
    ep.handle_text(r#"[3,"nope",{"status":"Accepted"}]"#);
    assert!(matches!(ep.poll_event(), Some(Event::Refused { .. })));
    assert_eq!(ep.poll_transmit(t0), None);

    answer(&mut ep, &frame[1], json!({"status": "Accepted"}));
    assert_eq!(
        ep.poll_event(),
        Some(Event::Response {
            call: first,
            action: "Reset".into(),
            result: Ok(json!({"status": "Accepted"}))
        })
    );
    let next = sent(&mut ep, t0);
    assert_eq!(next[3], json!({"type": "Hard"}));
    assert_ne!(next[1], frame[1], "message ids are unique");

    // A CALLERROR answer, in the 1.6 spelling, is parsed.
    ep.handle_text(
        &json!([4, next[1], "OccurenceConstraintViolation", "bad", {"k": 1}]).to_string(),
    );
    assert_eq!(
        ep.poll_event(),
        Some(Event::Response {
            call: second,
            action: "Reset".into(),
            result: Err(CallFailure::Remote(RemoteError {
                code: Some(ErrorCode::OccurrenceConstraintViolation),
                raw_code: "OccurenceConstraintViolation".into(),
                description: "bad".into(),
                details: json!({"k": 1}),
            }))
        })
    );
}

#[test]
fn safety_calls_jump_the_queue() {
    let t0 = Instant::now();
    let mut ep = csms(OcppVersion::V201);
    let profile = |limit: f64| {
        json!({"evseId": 1, "chargingProfile": {
            "id": 1, "stackLevel": 0, "chargingProfilePurpose": "TxDefaultProfile",
            "chargingProfileKind": "Relative",
            "chargingSchedule": [{"id": 1, "chargingRateUnit": "A",
                "chargingSchedulePeriod": [{"startPeriod": 0, "limit": limit}]}]}})
    };
    let blocking = ep
        .call_raw(
            "GetBaseReport",
            json!({"requestId": 1, "reportBase": "FullInventory"}),
            Priority::Operations,
        )
        .expect("valid");
    let mut frame = sent(&mut ep, t0);
    let ops = ep
        .call_raw("Reset", json!({"type": "OnIdle"}), Priority::Operations)
        .expect("valid");
    let increase = ep
        .call_raw("SetChargingProfile", profile(16.0), Priority::Control)
        .expect("valid");
    let decrease = ep
        .call_raw("SetChargingProfile", profile(6.0), Priority::Safety)
        .expect("valid");
    assert_eq!(ep.pending_calls(), 4);

    let mut order: Vec<CallId> = Vec::new();
    loop {
        // Reset, GetBaseReport and SetChargingProfile all answer {"status": ...}.
        answer(&mut ep, &frame[1], json!({"status": "Accepted"}));
        match ep.poll_event() {
            Some(Event::Response {
                call,
                result: Ok(_),
                ..
            }) => order.push(call),
            other => panic!("expected a response, got {other:?}"),
        }
        match ep.poll_transmit(t0) {
            Some(text) => frame = serde_json::from_str(&text).expect("json"),
            None => break,
        }
    }
    assert_eq!(order, vec![blocking, decrease, increase, ops]);
}

#[test]
fn timeouts_are_data_and_late_answers_are_ignored() {
    let t0 = Instant::now();
    let config = EndpointConfig {
        call_timeout: Duration::from_secs(10),
        ..EndpointConfig::default()
    };
    let mut ep = Endpoint::new(OcppVersion::V16, Role::Csms, config);
    let call = ep
        .call_raw("Reset", json!({"type": "Soft"}), Priority::Operations)
        .expect("valid");
    let next = ep
        .call_raw("Reset", json!({"type": "Hard"}), Priority::Operations)
        .expect("valid");
    assert_eq!(ep.poll_timeout(), None, "nothing sent, nothing to time out");
    let frame = sent(&mut ep, t0);
    assert_eq!(ep.poll_timeout(), Some(t0 + Duration::from_secs(10)));

    ep.handle_timeout(t0 + Duration::from_secs(9));
    assert_eq!(ep.poll_event(), None);
    ep.handle_timeout(t0 + Duration::from_secs(10));
    assert_eq!(
        ep.poll_event(),
        Some(Event::Response {
            call,
            action: "Reset".into(),
            result: Err(CallFailure::Timeout)
        })
    );
    // The queue moves on; the late answer finds nothing waiting and gets no reply.
    let following = sent(&mut ep, t0 + Duration::from_secs(10));
    assert_eq!(following[3], json!({"type": "Hard"}));
    answer(&mut ep, &frame[1], json!({"status": "Accepted"}));
    assert!(matches!(ep.poll_event(), Some(Event::Refused { .. })));
    assert_eq!(ep.poll_transmit(t0), None);

    ep.close();
    assert_eq!(
        ep.poll_event(),
        Some(Event::Response {
            call: next,
            action: "Reset".into(),
            result: Err(CallFailure::Closed)
        })
    );
}

#[test]
fn invalid_results_from_the_peer_are_flagged() {
    let mut ep = csms(OcppVersion::V201);
    let call = ep
        .call_raw("Reset", json!({"type": "Immediate"}), Priority::Operations)
        .expect("valid");
    let frame = sent(&mut ep, Instant::now());
    answer(&mut ep, &frame[1], json!({"status": "Maybe"}));
    match ep.poll_event() {
        Some(Event::Response {
            call: c,
            result: Err(CallFailure::InvalidResponse(v)),
            ..
        }) => {
            assert_eq!(c, call);
            assert_eq!(v.code, ErrorCode::PropertyConstraintViolation);
        }
        other => panic!("expected an invalid response, got {other:?}"),
    }
}

#[test]
fn cancel_removes_only_unsent_calls() {
    let mut ep = csms(OcppVersion::V16);
    let a = ep
        .call_raw("Reset", json!({"type": "Soft"}), Priority::Operations)
        .expect("valid");
    let b = ep
        .call_raw("Reset", json!({"type": "Hard"}), Priority::Operations)
        .expect("valid");
    let _ = sent(&mut ep, Instant::now());
    assert!(!ep.cancel(a), "an outstanding call cannot be taken back");
    assert!(ep.cancel(b));
    assert!(matches!(
        ep.poll_event(),
        Some(Event::Response { call, result: Err(CallFailure::Cancelled), .. }) if call == b
    ));
    assert_eq!(ep.pending_calls(), 1);
}

#[test]
fn queue_is_bounded() {
    let mut ep = Endpoint::new(
        OcppVersion::V16,
        Role::Csms,
        EndpointConfig {
            queue_capacity: 2,
            ..EndpointConfig::default()
        },
    );
    for _ in 0..2 {
        ep.call_raw("Reset", json!({"type": "Soft"}), Priority::Operations)
            .expect("room");
    }
    assert!(matches!(
        ep.call_raw("Reset", json!({"type": "Soft"}), Priority::Operations),
        Err(Error::QueueFull { capacity: 2 })
    ));
}

#[test]
fn one_decimal_limits_pass_and_finer_ones_fail_in_16() {
    let profile = |limit: f64| {
        json!({"connectorId": 1, "csChargingProfiles": {
            "chargingProfileId": 1, "stackLevel": 0, "chargingProfilePurpose": "TxDefaultProfile",
            "chargingProfileKind": "Relative",
            "chargingSchedule": {"chargingRateUnit": "A",
                "chargingSchedulePeriod": [{"startPeriod": 0, "limit": limit}]}}})
    };
    for ok in [6.0, 6.1, 16.3, 31.7, 0.1, 0.0] {
        schema::validate(
            OcppVersion::V16,
            "SetChargingProfile",
            PayloadKind::Request,
            &profile(ok),
        )
        .unwrap_or_else(|v| panic!("{ok} should be valid: {v}"));
    }
    for bad in [6.15, 16.01] {
        let err = schema::validate(
            OcppVersion::V16,
            "SetChargingProfile",
            PayloadKind::Request,
            &profile(bad),
        )
        .expect_err("two decimals are invalid in 1.6");
        assert_eq!(err.code, ErrorCode::PropertyConstraintViolation);
    }
}

#[test]
fn every_shipped_schema_compiles() {
    // 78 and 128 files: one request and one response validator per action.
    for (version, files) in [(OcppVersion::V16, 78), (OcppVersion::V201, 128)] {
        assert_eq!(schema::compiled_count(version), files, "{version}");
    }
}

//! Property tests: whatever a peer sends, the endpoint never panics, never answers a
//! CALLRESULT or CALLERROR, and answers every frame it refuses with a well-formed CALLERROR.

use std::time::Instant;

use loadstar_ocpp::{Endpoint, EndpointConfig, OcppVersion, Role};
use proptest::prelude::*;
use serde_json::{Value, json};

fn endpoint(v16: bool, csms: bool) -> Endpoint {
    Endpoint::new(
        if v16 {
            OcppVersion::V16
        } else {
            OcppVersion::V201
        },
        if csms { Role::Csms } else { Role::Station },
        EndpointConfig::default(),
    )
}

/// Arbitrary JSON, shallow enough to stay fast.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        "[a-zA-Z0-9 .:_-]{0,24}".prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map("[a-zA-Z]{1,12}", inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Frames that look like OCPP: right shape, plausible actions, random payloads.
fn ocpp_like() -> impl Strategy<Value = String> {
    let action = prop_oneof![
        Just("BootNotification"),
        Just("Heartbeat"),
        Just("StatusNotification"),
        Just("MeterValues"),
        Just("TransactionEvent"),
        Just("SetChargingProfile"),
        Just("Authorize"),
        Just("NoSuchAction"),
    ];
    (0u64..7, "[a-z0-9-]{0,40}", action, json_value()).prop_map(|(kind, id, action, payload)| {
        match kind {
            0 | 1 => json!([2, id, action, payload]),
            2 => json!([3, id, payload]),
            3 => json!([4, id, "GenericError", "x", payload]),
            4 => json!([kind, id, action]),
            _ => payload,
        }
        .to_string()
    })
}

fn check(ep: &mut Endpoint, text: &str) {
    ep.handle_text(text);
    while ep.poll_event().is_some() {}
    while let Some(out) = ep.poll_transmit(Instant::now()) {
        let frame: Value = serde_json::from_str(&out).expect("we send JSON");
        // Nothing is queued by the application here, so everything sent is an answer to a
        // CALL: a CALLERROR with a code and a short description.
        assert_eq!(frame[0], 4, "only CALLERRORs without an application: {out}");
        assert!(frame[1].is_string() && frame[2].is_string(), "{out}");
        assert!(
            frame[3].as_str().is_some_and(|d| d.chars().count() <= 255),
            "{out}"
        );
        assert!(frame[4].is_object(), "{out}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn arbitrary_text_never_panics(text in ".{0,300}", v16: bool, csms: bool) {
        check(&mut endpoint(v16, csms), &text);
    }

    #[test]
    fn ocpp_like_frames_never_panic(frames in prop::collection::vec(ocpp_like(), 1..8), v16: bool, csms: bool) {
        let mut ep = endpoint(v16, csms);
        for text in &frames {
            check(&mut ep, text);
        }
    }
}

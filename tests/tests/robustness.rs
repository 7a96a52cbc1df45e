//! Bad input at the CSMS over real WebSockets: malformed frames, schema violations, unknown
//! actions, oversized and binary frames, wrong subprotocols and passwords, duplicate ids, and a
//! disconnect mid-transaction. After each, the server keeps serving good stations.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use loadstar::store::{SessionKey, Store};
use loadstar_e2e::{connect, eventually, exchange, next_answer, refused_status, start, test_site};
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

const RAW1: &str = "raw-1-password-0001";

fn heartbeat(id: &str) -> String {
    json!([2, id, "Heartbeat", {}]).to_string()
}

/// A good station still gets served.
async fn assert_serves_good_station(server: &loadstar::runtime::Server) {
    let mut ws = connect(server, "RAW 2", Some("raw-2-password:0001"), "ocpp2.0.1")
        .await
        .expect("good station connects");
    let answer = exchange(&mut ws, &heartbeat("ok-1")).await;
    assert_eq!(answer[0], 3, "{answer}");
    assert!(answer[2]["currentTime"].is_string());
    let _ = ws.close(None).await;
}

#[tokio::test]
async fn malformed_frames_get_callerrors_and_the_connection_survives() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = start(&test_site(""), dir.path()).await;
    for (version, format_code, framework_code) in [
        ("ocpp1.6", "FormationViolation", "FormationViolation"),
        ("ocpp2.0.1", "FormatViolation", "RpcFrameworkError"),
    ] {
        let mut ws = connect(&server, "RAW-1", Some(RAW1), version)
            .await
            .expect("connects");
        let cases = [
            ("{not json".to_owned(), "-1", framework_code),
            (r#"[2,"a1"]"#.to_owned(), "a1", framework_code),
            (r#"[2,"a2","Heartbeat",[1]]"#.to_owned(), "a2", format_code),
            (
                r#"[2,"a3","Teleport",{}]"#.to_owned(),
                "a3",
                "NotImplemented",
            ),
            (
                if version == "ocpp1.6" {
                    json!([2, "a4", "Authorize", {"idTag": 42}])
                } else {
                    json!([2, "a4", "Authorize", {"idToken": {"idToken": 42, "type": "ISO14443"}}])
                }
                .to_string(),
                "a4",
                "TypeConstraintViolation",
            ),
            (
                json!([2, "a6", "StatusNotification", {}]).to_string(),
                "a6",
                if version == "ocpp1.6" {
                    "OccurenceConstraintViolation"
                } else {
                    "OccurrenceConstraintViolation"
                },
            ),
            (
                json!([2, "a5", "Heartbeat", {"extra": 1}]).to_string(),
                "a5",
                format_code,
            ),
        ];
        for (frame, id, code) in cases {
            let answer = exchange(&mut ws, &frame).await;
            assert_eq!(answer[0], 4, "{version} {frame} -> {answer}");
            assert_eq!(answer[1], id, "{version} {frame} -> {answer}");
            assert_eq!(answer[2], code, "{version} {frame} -> {answer}");
        }
        // Binary frames are not OCPP-J.
        ws.send(Message::binary(vec![1u8, 2, 3]))
            .await
            .expect("send");
        let answer = next_answer(&mut ws).await;
        assert_eq!(answer[0], 4);
        assert_eq!(answer[2], framework_code);
        // The same connection still works.
        let answer = exchange(&mut ws, &heartbeat("after")).await;
        assert_eq!(answer[0], 3, "{answer}");
        let _ = ws.close(None).await;
    }
    assert_serves_good_station(&server).await;
    server.shutdown().expect("flush");
}

#[tokio::test]
async fn oversized_frames_close_only_that_connection() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = start(&test_site(""), dir.path()).await;
    let mut ws = connect(&server, "RAW-1", Some(RAW1), "ocpp1.6")
        .await
        .expect("connects");
    let huge = format!(
        r#"[2,"big","DataTransfer",{{"vendorId":"x","data":"{}"}}]"#,
        "x".repeat(200_000)
    );
    let _ = ws.send(Message::text(huge)).await;
    // The server drops the connection (message too big) instead of buffering it.
    let closed = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match ws.next().await {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return true,
                Some(Ok(_)) => continue,
            }
        }
    })
    .await
    .expect("closed within 10 s");
    assert!(closed);
    assert_serves_good_station(&server).await;
    server.shutdown().expect("flush");
}

#[tokio::test]
async fn handshakes_are_checked() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = start(&test_site(""), dir.path()).await;
    // No OCPP subprotocol we speak.
    assert_eq!(
        refused_status(connect(&server, "RAW-1", Some(RAW1), "ocpp2.1").await),
        400
    );
    assert_eq!(
        refused_status(connect(&server, "RAW-1", Some(RAW1), "mqtt").await),
        400
    );
    // Bad or missing password, and a user that is not the station.
    assert_eq!(
        refused_status(connect(&server, "RAW-1", Some("wrong-password-000"), "ocpp1.6").await),
        401
    );
    assert_eq!(
        refused_status(connect(&server, "RAW-1", None, "ocpp1.6").await),
        401
    );
    // Unknown station (the site does not admit unknown stations).
    assert_eq!(
        refused_status(connect(&server, "STRANGER", Some(RAW1), "ocpp1.6").await),
        404
    );
    // Ids over 48 characters.
    let long = "X".repeat(49);
    assert_eq!(
        refused_status(connect(&server, &long, Some(RAW1), "ocpp1.6").await),
        404
    );
    // A percent-encoded id with a space and a password containing ':' work.
    assert_serves_good_station(&server).await;
    server.shutdown().expect("flush");
}

#[tokio::test]
async fn the_authenticated_duplicate_wins() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = start(&test_site(""), dir.path()).await;
    let mut first = connect(&server, "RAW-1", Some(RAW1), "ocpp1.6")
        .await
        .expect("first connects");
    assert_eq!(exchange(&mut first, &heartbeat("f1")).await[0], 3);

    // An impostor with the wrong password is refused and does not disturb the first.
    assert_eq!(
        refused_status(connect(&server, "RAW-1", Some("impostor-password-1"), "ocpp1.6").await),
        401
    );
    assert_eq!(exchange(&mut first, &heartbeat("f2")).await[0], 3);

    // The same station reconnecting with the right password replaces the first connection.
    let mut second = connect(&server, "RAW-1", Some(RAW1), "ocpp2.0.1")
        .await
        .expect("second connects");
    assert_eq!(exchange(&mut second, &heartbeat("s1")).await[0], 3);
    let first_closed = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match first.next().await {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return,
                Some(Ok(_)) => continue,
            }
        }
    })
    .await;
    assert!(first_closed.is_ok(), "the replaced connection is closed");
    let handle = server.csms.station("RAW-1").expect("registered");
    assert_eq!(
        handle.version(),
        loadstar_ocpp::OcppVersion::V201,
        "the newer connection owns the id"
    );
    let state = server.state.clone();
    eventually("station connected in state", || {
        state
            .lock()
            .map(|s| s.stations.get("RAW-1").is_some_and(|st| st.connected))
            .unwrap_or(false)
    })
    .await;
    server.shutdown().expect("flush");
}

#[tokio::test]
async fn a_disconnect_mid_transaction_leaves_consistent_state() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = start(&test_site(""), dir.path()).await;
    let mut ws = connect(&server, "RAW-1", Some(RAW1), "ocpp1.6")
        .await
        .expect("connects");
    let boot = exchange(
        &mut ws,
        &json!([2, "b", "BootNotification", {"chargePointVendor": "V", "chargePointModel": "M"}])
            .to_string(),
    )
    .await;
    assert_eq!(boot[2]["status"], "Accepted");
    assert_eq!(boot[2]["interval"], 120);
    let start_tx = exchange(
        &mut ws,
        &json!([2, "s", "StartTransaction", {"connectorId": 1, "idTag": "TAG-OK", "meterStart": 100, "timestamp": "2026-11-25T10:00:00Z"}])
            .to_string(),
    )
    .await;
    assert_eq!(start_tx[2]["idTagInfo"]["status"], "Accepted");
    let tx = start_tx[2]["transactionId"]
        .as_i64()
        .expect("integer transaction id");
    // Abrupt disconnect: drop the socket without a close frame.
    drop(ws);

    let state = server.state.clone();
    eventually("station marked disconnected", || {
        state
            .lock()
            .map(|s| s.stations.get("RAW-1").is_some_and(|st| !st.connected))
            .unwrap_or(false)
    })
    .await;
    let key = SessionKey::new("RAW-1", tx.to_string());
    let open = server
        .store
        .session(&key)
        .expect("store")
        .expect("session stored");
    assert!(
        open.ended_at.is_none(),
        "the session stays open until the station ends it"
    );

    // The station comes back and ends the session it had running.
    let mut ws = connect(&server, "RAW-1", Some(RAW1), "ocpp1.6")
        .await
        .expect("reconnects");
    let stop = exchange(
        &mut ws,
        &json!([2, "e", "StopTransaction", {"transactionId": tx, "meterStop": 2100, "timestamp": "2026-11-25T11:00:00Z", "reason": "PowerLoss"}])
            .to_string(),
    )
    .await;
    assert_eq!(stop[0], 3, "{stop}");
    let ended = server
        .store
        .session(&key)
        .expect("store")
        .expect("session stored");
    assert!(ended.ended_at.is_some());
    assert_eq!(ended.energy_wh, 2000.0);
    assert_eq!(ended.stop_reason.as_deref(), Some("PowerLoss"));
    // A repeated stop (lost answer, station retries) is acknowledged and changes nothing.
    let again = exchange(
        &mut ws,
        &json!([2, "e2", "StopTransaction", {"transactionId": tx, "meterStop": 9999, "timestamp": "2026-11-25T11:00:05Z"}])
            .to_string(),
    )
    .await;
    assert_eq!(again[0], 3);
    let same = server.store.session(&key).expect("store").expect("stored");
    assert_eq!(same.energy_wh, 2000.0);
    server.shutdown().expect("flush");
}

#[tokio::test]
async fn id_tags_follow_the_local_list() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = start(&test_site(""), dir.path()).await;
    let mut ws = connect(&server, "RAW-1", Some(RAW1), "ocpp1.6")
        .await
        .expect("connects");
    let ok = exchange(
        &mut ws,
        &json!([2, "1", "Authorize", {"idTag": "TAG-OK"}]).to_string(),
    )
    .await;
    assert_eq!(ok[2]["idTagInfo"]["status"], "Accepted");
    let bad = exchange(
        &mut ws,
        &json!([2, "2", "Authorize", {"idTag": "NOPE"}]).to_string(),
    )
    .await;
    assert_eq!(bad[2]["idTagInfo"]["status"], "Invalid");
    server.shutdown().expect("flush");
}

#[tokio::test]
async fn unknown_stations_are_held_at_the_safe_current_when_the_site_admits_them() {
    use loadstar_ocpp::OcppVersion;
    use loadstar_sims::client::{ClientConfig, StationClient};

    let dir = tempfile::tempdir().expect("tempdir");
    let site = test_site("allow_unknown_stations = true\nunknown_station_current_a = 0.0");
    let server = start(&site, dir.path()).await;
    for (id, version) in [("NEW-16", OcppVersion::V16), ("NEW-201", OcppVersion::V201)] {
        let mut station = StationClient::connect(&ClientConfig {
            url: format!("ws://{}/ocpp", server.ocpp_addr),
            station_id: id.into(),
            password: None,
            version,
            call_timeout: Duration::from_secs(5),
        })
        .await
        .expect("an unknown station is admitted");
        assert!(station.boot("V", "M").await.expect("boot"), "{id} accepted");
        // Let the CSMS run its set-up, which ends with the hold.
        for _ in 0..50 {
            if !station.memory.profiles.is_empty() {
                break;
            }
            station
                .idle(Duration::from_millis(100))
                .await
                .expect("connected");
        }
        assert_eq!(
            station.memory.profiles,
            vec![(0, 0.0, "A".to_owned())],
            "{id}: a station-wide 0 A limit"
        );
        let known = server.state.lock().expect("state").stations[id].known;
        assert!(!known, "{id} is marked unknown");
        station.close().await;
    }
    // A listed station still needs its password.
    assert_eq!(
        refused_status(connect(&server, "RAW-1", None, "ocpp1.6").await),
        401
    );
    server.shutdown().expect("flush");
}

#[tokio::test]
async fn sessions_stay_consistent_under_retries_and_odd_station_behaviour() {
    use loadstar::store::SessionFilter;

    let dir = tempfile::tempdir().expect("tempdir");
    let server = start(&test_site(""), dir.path()).await;
    let mut ws = connect(&server, "RAW-1", Some(RAW1), "ocpp1.6")
        .await
        .expect("connects");
    let start_frame = |id: &str, meter: i64, ts: &str| {
        json!([2, id, "StartTransaction", {"connectorId": 1, "idTag": "tag-ok", "meterStart": meter, "timestamp": ts}]).to_string()
    };
    // Id tags are case-insensitive: "tag-ok" matches the list's "TAG-OK".
    let first = exchange(&mut ws, &start_frame("s1", 100, "2026-11-25T10:00:00Z")).await;
    assert_eq!(first[2]["idTagInfo"]["status"], "Accepted");
    let tx = first[2]["transactionId"].as_i64().expect("id");
    // The same StartTransaction again (its answer was lost): the same transaction id.
    let retry = exchange(&mut ws, &start_frame("s2", 100, "2026-11-25T10:00:00Z")).await;
    assert_eq!(
        retry[2]["transactionId"], tx,
        "a retried start is not a new session"
    );

    // Out-of-range connector ids are refused, not stored.
    let bad = exchange(
        &mut ws,
        &json!([2, "m0", "MeterValues", {"connectorId": 100000, "meterValue": [{"timestamp": "2026-11-25T10:00:00Z", "sampledValue": [{"value": "1"}]}]}]).to_string(),
    )
    .await;
    assert_eq!(bad[2], "PropertyConstraintViolation", "{bad}");

    // Neutral current must not land on L1; a timestamp years ahead is replaced by ours.
    let mv = json!([2, "m1", "MeterValues", {"connectorId": 1, "transactionId": tx, "meterValue": [{
    "timestamp": "2031-01-01T00:00:00Z",
    "sampledValue": [
        {"value": "16.0", "measurand": "Current.Import", "phase": "L1", "unit": "A"},
        {"value": "3.0", "measurand": "Current.Import", "phase": "N", "unit": "A"},
        {"value": "400.0", "measurand": "Voltage", "phase": "L1-L2", "unit": "V"},
        {"value": "231.0", "measurand": "Voltage", "phase": "L1-N", "unit": "V"},
        {"value": "600", "measurand": "Energy.Active.Import.Register", "unit": "Wh"}
    ]}]}]);
    assert_eq!(exchange(&mut ws, &mv.to_string()).await[0], 3);
    let next = json!([2, "m2", "MeterValues", {"connectorId": 1, "transactionId": tx, "meterValue": [{
        "timestamp": chrono::Utc::now().to_rfc3339(),
        "sampledValue": [{"value": "12.0", "measurand": "Current.Import", "phase": "L1", "unit": "A"},
                          {"value": "700", "unit": "Wh"}]}]}]);
    assert_eq!(exchange(&mut ws, &next.to_string()).await[0], 3);
    {
        let state = server.state.lock().expect("state");
        let evse = &state.stations["RAW-1"].evses[&1];
        assert_eq!(
            evse.measurement.current_a[0],
            Some(12.0),
            "live values keep moving"
        );
        assert_eq!(evse.measurement.voltage_v[0], Some(231.0));
        let at = evse.measurement.at.expect("a time");
        assert!(
            at < chrono::Utc::now() + chrono::Duration::minutes(1),
            "{at}"
        );
        assert_eq!(evse.session.as_ref().map(|s| s.energy_wh), Some(600.0));
    }

    // A new session on the same connector without a stop: the old one is ended, not lost.
    let second = exchange(&mut ws, &start_frame("s3", 700, "2026-11-25T11:00:00Z")).await;
    let tx2 = second[2]["transactionId"].as_i64().expect("id");
    assert_ne!(tx2, tx);
    let sessions = server
        .store
        .sessions(&SessionFilter::default())
        .expect("sessions");
    let old = sessions
        .iter()
        .find(|s| s.transaction_id == tx.to_string())
        .expect("first session kept");
    assert!(old.ended_at.is_some());
    assert_eq!(old.stop_reason.as_deref(), Some("SupersededByNewSession"));
    assert_eq!(old.energy_wh, 600.0);
    let _ = ws.close(None).await;

    // 2.0.1: an Updated event after Ended does not reopen the session.
    let mut ws = connect(&server, "RAW 2", Some("raw-2-password:0001"), "ocpp2.0.1")
        .await
        .expect("connects");
    let event = |kind: &str, seq: i64, wh: f64| {
        json!([2, format!("e{seq}"), "TransactionEvent", {
            "eventType": kind, "timestamp": chrono::Utc::now().to_rfc3339(),
            "triggerReason": "MeterValuePeriodic", "seqNo": seq,
            "transactionInfo": {"transactionId": "raw2-tx"}, "evse": {"id": 1},
            "meterValue": [{"timestamp": chrono::Utc::now().to_rfc3339(), "sampledValue": [{"value": wh}]}]}])
        .to_string()
    };
    for (kind, seq, wh) in [
        ("Started", 0, 0.0),
        ("Updated", 1, 500.0),
        ("Ended", 2, 900.0),
        ("Updated", 3, 950.0),
    ] {
        let answer = exchange(&mut ws, &event(kind, seq, wh)).await;
        assert_eq!(answer[0], 3, "{kind} {seq}: {answer}");
    }
    let key = loadstar::store::SessionKey::new("RAW 2", "raw2-tx");
    let stored = server.store.session(&key).expect("store").expect("stored");
    assert!(stored.ended_at.is_some(), "still ended");
    assert_eq!(stored.energy_wh, 900.0);
    let live = server.state.lock().expect("state").stations["RAW 2"].evses[&1]
        .session
        .clone();
    assert!(live.is_none(), "no live session after the end: {live:?}");
    // Routine 2.0.1 notifications are acknowledged.
    let notify = exchange(
        &mut ws,
        &json!([2, "n1", "NotifyEvent", {"generatedAt": chrono::Utc::now().to_rfc3339(), "seqNo": 0, "eventData": [{
            "eventId": 1, "timestamp": chrono::Utc::now().to_rfc3339(), "trigger": "Delta", "actualValue": "true",
            "eventNotificationType": "HardWiredNotification",
            "component": {"name": "EVSE"}, "variable": {"name": "Available"}}]}])
        .to_string(),
    )
    .await;
    assert_eq!(notify[0], 3, "{notify}");
    server.shutdown().expect("flush");
}

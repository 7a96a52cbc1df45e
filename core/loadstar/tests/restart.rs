//! The real `loadstar` process: sessions survive a restart, including a SIGKILL right after a
//! session start was acknowledged; 1.6 transaction ids are never reused. A SIGHUP reload changes
//! which stations may connect.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use chrono::Utc;
use loadstar::store::{SessionFilter, SledStore, Store};
use loadstar_ocpp::{OcppVersion, v16, v201};
use loadstar_sims::client::{ClientConfig, ClientError, StationClient};

const SITE: &str = r#"
[site]
name = "restart"
timezone = "Europe/Oslo"

[grid]
type = "wye"
voltage = 230.0
limit_a = 63.0

[[station]]
id = "ST-1"
phases = 3
max_current_a = 32.0
password = "st-1-password-00001"

[[station]]
id = "ST-2"
phases = 3
max_current_a = 32.0
password = "st-2-password-00001"

[csms]
listen = "127.0.0.1:9000"

[logging]
filter = "warn"
"#;

/// The tests of this file one at a time: a test that restarts the binary on its port leaves
/// that port free for a moment, and the other test's client connections could take it as
/// their local port.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A port free now and not handed to another test of this binary (they run in parallel, and
/// the OS may offer the same free port twice).
fn free_port() -> u16 {
    static HANDED: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut handed = HANDED.lock().unwrap_or_else(|p| p.into_inner());
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port");
        if !handed.contains(&port) {
            handed.push(port);
            return port;
        }
    }
}

/// The running binary; killed when dropped, so a failing test leaves no process behind (it
/// would hold the test's output open).
struct Running(Child);

impl std::ops::Deref for Running {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for Running {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn(config: &Path, data: &Path, port: u16) -> Running {
    Running(
        Command::new(env!("CARGO_BIN_EXE_loadstar"))
            .arg("run")
            .arg("--config")
            .arg(config)
            .arg("--data-dir")
            .arg(data)
            .arg("--ocpp-listen")
            .arg(format!("127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("loadstar starts"),
    )
}

async fn wait_listening(port: u16) {
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("loadstar did not listen on {port}");
}

fn client(port: u16, id: &str, version: OcppVersion) -> ClientConfig {
    ClientConfig {
        url: format!("ws://127.0.0.1:{port}/ocpp"),
        station_id: id.into(),
        password: Some(format!("{}-password-00001", id.to_lowercase())),
        version,
        call_timeout: Duration::from_secs(10),
    }
}

async fn boot16(port: u16) -> StationClient {
    let mut st = StationClient::connect(&client(port, "ST-1", OcppVersion::V16))
        .await
        .expect("ST-1 connects");
    assert!(st.boot("V", "M").await.expect("boot"), "accepted");
    st
}

fn tx_event(
    kind: v201::TransactionEventEnum,
    seq_no: i32,
    energy_wh: f64,
) -> v201::TransactionEventRequest {
    v201::TransactionEventRequest {
        event_type: kind,
        timestamp: Utc::now(),
        trigger_reason: v201::TriggerReasonEnum::Authorized,
        seq_no,
        transaction_info: v201::Transaction {
            transaction_id: "st2-tx".into(),
            ..Default::default()
        },
        evse: Some(v201::EVSE {
            id: 1,
            ..Default::default()
        }),
        meter_value: Some(vec![v201::MeterValue {
            timestamp: Utc::now(),
            sampled_value: vec![v201::SampledValue {
                value: energy_wh,
                ..Default::default()
            }],
            ..Default::default()
        }]),
        ..Default::default()
    }
}

#[tokio::test]
async fn sessions_survive_sigkill_and_restart() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("site.toml");
    std::fs::write(&config, SITE).expect("write site");
    let data = dir.path().join("data");
    let port = free_port();

    let mut first = spawn(&config, &data, port);
    wait_listening(port).await;
    let mut st1 = boot16(port).await;
    let started = st1
        .call(&v16::StartTransactionRequest {
            connector_id: 1,
            id_tag: "TAG".into(),
            meter_start: 1_000,
            timestamp: Utc::now(),
            ..Default::default()
        })
        .await
        .expect("start");
    let mut st2 = StationClient::connect(&client(port, "ST-2", OcppVersion::V201))
        .await
        .expect("ST-2 connects");
    st2.call(&tx_event(v201::TransactionEventEnum::Started, 0, 500.0))
        .await
        .expect("started");

    // SIGKILL right after the stations heard back: no flush, no shutdown.
    first.kill().expect("kill -9");
    let _ = first.wait();
    drop(st1);
    drop(st2);

    let mut second = spawn(&config, &data, port);
    wait_listening(port).await;
    let mut st1 = boot16(port).await;
    st1.call(&v16::StopTransactionRequest {
        meter_stop: 4_000,
        timestamp: Utc::now(),
        transaction_id: started.transaction_id,
        ..Default::default()
    })
    .await
    .expect("stop after restart");
    let next = st1
        .call(&v16::StartTransactionRequest {
            connector_id: 1,
            id_tag: "TAG".into(),
            meter_start: 4_000,
            timestamp: Utc::now(),
            ..Default::default()
        })
        .await
        .expect("second start");
    assert!(
        next.transaction_id > started.transaction_id,
        "transaction ids are never reused: {} after {}",
        next.transaction_id,
        started.transaction_id
    );
    let mut st2 = StationClient::connect(&client(port, "ST-2", OcppVersion::V201))
        .await
        .expect("ST-2 reconnects");
    st2.call(&tx_event(v201::TransactionEventEnum::Ended, 1, 2_500.0))
        .await
        .expect("ended after restart");
    st1.close().await;
    st2.close().await;

    // A graceful stop (SIGTERM) flushes; then the store opens cleanly on its own.
    let pid = second.id();
    let _ = Command::new("kill").arg(pid.to_string()).status();
    let status = second.wait().expect("exits");
    assert!(status.success(), "graceful shutdown: {status}");

    let store = SledStore::open(&data.join("store")).expect("store reopens");
    let sessions = store.sessions(&SessionFilter::default()).expect("sessions");
    assert_eq!(sessions.len(), 3, "{sessions:#?}");
    let first_session = sessions
        .iter()
        .find(|s| s.transaction_id == started.transaction_id.to_string())
        .expect("first 1.6 session");
    assert!(first_session.ended_at.is_some());
    assert_eq!(first_session.energy_wh, 3_000.0);
    let st2_session = sessions
        .iter()
        .find(|s| s.transaction_id == "st2-tx")
        .expect("2.0.1 session");
    assert!(st2_session.ended_at.is_some());
    assert_eq!(st2_session.energy_wh, 2_000.0);
    let open = store.open_sessions().expect("open");
    assert_eq!(open.len(), 1, "only the second 1.6 session is still open");
}

/// Connects as `id` (its password is the test pattern), retrying for up to 5 s while the
/// answer is not `want` (a reload is applied asynchronously after the signal).
async fn connects_within(port: u16, id: &str, want: bool) -> Option<StationClient> {
    for _ in 0..100 {
        match StationClient::connect(&client(port, id, OcppVersion::V16)).await {
            Ok(st) if want => return Some(st),
            Ok(st) => st.close().await,
            Err(_) if !want => return None,
            Err(_) => {}
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{id}: connecting did not become {want} within 5 s");
}

fn hangup(child: &Running) {
    let status = Command::new("kill")
        .arg("-HUP")
        .arg(child.id().to_string())
        .status()
        .expect("kill -HUP");
    assert!(status.success());
}

#[tokio::test]
async fn a_sighup_reload_changes_which_stations_may_connect() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("site.toml");
    // The site without ST-2 first.
    let (head, st2_and_rest) =
        SITE.split_at(SITE.find("[[station]]\nid = \"ST-2\"").expect("ST-2"));
    let tail = &st2_and_rest[st2_and_rest.find("[csms]").expect("[csms]")..];
    let st2_text = &st2_and_rest[..st2_and_rest.find("[csms]").expect("[csms]")];
    let st1_text = &head[head.find("[[station]]").expect("ST-1")..];
    let preamble = &head[..head.find("[[station]]").expect("ST-1")];
    std::fs::write(&config, format!("{preamble}{st1_text}{tail}")).expect("write site");
    let data = dir.path().join("data");
    let port = free_port();
    let mut child = spawn(&config, &data, port);
    wait_listening(port).await;

    assert!(
        connects_within(port, "ST-2", false).await.is_none(),
        "ST-2 is not in the site file"
    );
    let mut st1 = boot16(port).await;

    // The operator adds ST-2: it may connect, and ST-1 stays connected.
    std::fs::write(&config, format!("{preamble}{st1_text}{st2_text}{tail}")).expect("write site");
    hangup(&child);
    let mut st2 = connects_within(port, "ST-2", true)
        .await
        .expect("ST-2 connects");
    assert!(st2.boot("V", "M").await.expect("boot"), "ST-2 accepted");
    st1.idle(Duration::from_millis(500))
        .await
        .expect("ST-1 is still connected");

    // Then removes ST-1: its connection is closed and it is refused from then on.
    std::fs::write(&config, format!("{preamble}{st2_text}{tail}")).expect("write site");
    hangup(&child);
    let closed = st1.idle(Duration::from_secs(5)).await;
    assert!(
        matches!(
            closed,
            Err(ClientError::Closed) | Err(ClientError::Connect(_))
        ),
        "ST-1 disconnected by the reload: {closed:?}"
    );
    assert!(connects_within(port, "ST-1", false).await.is_none());
    st2.idle(Duration::from_millis(500))
        .await
        .expect("ST-2 stays connected");
    st2.close().await;

    let _ = Command::new("kill").arg(child.id().to_string()).status();
    let status = child.wait().expect("exits");
    assert!(status.success(), "graceful shutdown: {status}");
}

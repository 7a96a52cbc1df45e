//! Helpers for the end-to-end tests in `tests/tests/`: a controller on loopback with a test site,
//! and raw WebSocket stations.

use std::path::Path;
use std::time::Duration;

use base64::Engine;
use futures_util::{SinkExt, StreamExt};
use loadstar::clock::Clock;
use loadstar::runtime::{Overrides, Server};
use loadstar::site::SiteConfig;
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::{HeaderValue, header};
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// A test site: a 3-phase wye grid with stations of both versions, a local id-tag list, and a
/// small frame limit so oversized frames are cheap to produce.
pub fn test_site(extra_csms: &str) -> String {
    format!(
        r#"
[site]
name = "e2e"
timezone = "Europe/Berlin"

[grid]
type = "wye"
voltage = 230.0
limit_a = 63.0

[[station]]
id = "PY16"
phases = 3
max_current_a = 32.0
ocpp = "1.6"
password = "py16-password-0001"

[[station]]
id = "PY201"
phases = 3
max_current_a = 32.0
ocpp = "2.0.1"
password = "py201-password-0001"

[[station]]
id = "RAW-1"
phases = 3
max_current_a = 32.0
password = "raw-1-password-0001"

[[station]]
id = "RAW 2"
phases = 1
max_current_a = 16.0
password = "raw-2-password:0001"

[csms]
listen = "127.0.0.1:0"
heartbeat_interval_s = 120
meter_interval_s = 10
call_timeout_s = 5
max_frame_bytes = 65536
{extra_csms}

[authorization]
mode = "local_list"
id_tags = ["TAG-OK", "DEMO-TAG", "LOADGEN"]
"#
    )
}

/// Starts a controller for `site_toml` with its store in `data_dir`.
pub async fn start(site_toml: &str, data_dir: &Path) -> Server {
    let site = SiteConfig::parse(site_toml, data_dir, &|_| None)
        .unwrap_or_else(|e| panic!("test site invalid:\n{e}"));
    Server::start(
        site,
        &Overrides {
            data_dir: Some(data_dir.to_path_buf()),
            ..Overrides::default()
        },
        Clock::real(),
    )
    .await
    .expect("controller starts")
}

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Opens a raw WebSocket to the CSMS. `id` is percent-encoded here.
pub async fn connect(
    server: &Server,
    id: &str,
    password: Option<&str>,
    subprotocol: &str,
) -> Result<Ws, tungstenite::Error> {
    let encoded: String = id
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b == b'-' {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect();
    let mut request = format!("ws://{}/ocpp/{encoded}", server.ocpp_addr)
        .into_client_request()
        .expect("valid url");
    request.headers_mut().insert(
        header::SEC_WEBSOCKET_PROTOCOL,
        HeaderValue::from_str(subprotocol).expect("ascii"),
    );
    if let Some(password) = password {
        let token = base64::engine::general_purpose::STANDARD.encode(format!("{id}:{password}"));
        request.headers_mut().insert(
            header::AUTHORIZATION,
            HeaderValue::from_str(&format!("Basic {token}")).expect("ascii"),
        );
    }
    tokio_tungstenite::connect_async(request)
        .await
        .map(|(ws, _)| ws)
}

/// The HTTP status a refused handshake got.
pub fn refused_status(result: Result<Ws, tungstenite::Error>) -> u16 {
    match result {
        Err(tungstenite::Error::Http(response)) => response.status().as_u16(),
        Err(e) => panic!("expected an HTTP refusal, got {e}"),
        Ok(_) => panic!("expected an HTTP refusal, the handshake succeeded"),
    }
}

/// Sends a text frame and returns the next text frame received as JSON, answering nothing else
/// (CSMS calls that arrive meanwhile are skipped and returned separately by `next_text`).
pub async fn exchange(ws: &mut Ws, frame: &str) -> Value {
    ws.send(Message::text(frame.to_owned()))
        .await
        .expect("send");
    next_answer(ws).await
}

/// The next CALLRESULT or CALLERROR, skipping (and answering with an error) CSMS calls such as
/// the set-up that follows a boot.
pub async fn next_answer(ws: &mut Ws) -> Value {
    loop {
        let value = next_text(ws).await;
        if value[0] == 2 {
            // A CSMS call; a raw station does not implement it.
            let reply = serde_json::json!([4, value[1], "NotImplemented", "raw test station", {}]);
            ws.send(Message::text(reply.to_string()))
                .await
                .expect("send");
            continue;
        }
        return value;
    }
}

/// The next text frame as JSON, within 10 s.
pub async fn next_text(ws: &mut Ws) -> Value {
    loop {
        let message = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("a frame within 10 s")
            .expect("connection open")
            .expect("no transport error");
        if let Message::Text(text) = message {
            return serde_json::from_str(text.as_str()).expect("the CSMS sends JSON");
        }
    }
}

/// Waits until `check` holds, polling every 20 ms for up to 10 s.
pub async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    for _ in 0..500 {
        if check() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("timed out waiting for: {what}");
}

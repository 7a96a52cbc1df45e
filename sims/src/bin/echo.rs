//! `loadstar-echo`: the benchmark's baseline. A bare OCPP-J responder on tokio-tungstenite that
//! answers every CALL with a fixed, valid result and does nothing else: no auth, no schema
//! validation, no state, no store. Run beside `loadstar run` under the same load generator, it
//! shows what the transport and the generator cost on this machine, so Loadstar's own cost is the
//! difference (see BENCHMARKS.md).

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::http::HeaderValue;

fn answer(text: &str) -> Option<String> {
    let frame: serde_json::Value = serde_json::from_str(text).ok()?;
    if frame.get(0)?.as_u64()? != 2 {
        return None;
    }
    let id = frame.get(1)?;
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let payload = match frame.get(2)?.as_str()? {
        "BootNotification" => {
            serde_json::json!({"status": "Accepted", "currentTime": now, "interval": 300})
        }
        "Heartbeat" => serde_json::json!({"currentTime": now}),
        "StartTransaction" => {
            serde_json::json!({"idTagInfo": {"status": "Accepted"}, "transactionId": 1})
        }
        "Authorize" => serde_json::json!({"idTagInfo": {"status": "Accepted"}}),
        _ => serde_json::json!({}),
    };
    Some(serde_json::json!([3, id, payload]).to_string())
}

// tungstenite's handshake callback type returns its error response by value.
#[allow(clippy::result_large_err)]
#[tokio::main]
async fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:19100".into());
    let listener = TcpListener::bind(&addr).await?;
    eprintln!("loadstar-echo: answering OCPP-J calls at ws://{addr}/ocpp/{{id}}");
    loop {
        let (tcp, _) = listener.accept().await?;
        tokio::spawn(async move {
            let callback = |request: &Request, mut response: Response| {
                let offered = request
                    .headers()
                    .get("sec-websocket-protocol")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.split(',').next())
                    .map(|v| v.trim().to_owned());
                if let Some(protocol) = offered.and_then(|p| HeaderValue::from_str(&p).ok()) {
                    response
                        .headers_mut()
                        .insert("sec-websocket-protocol", protocol);
                }
                Ok(response)
            };
            let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(tcp, callback).await else {
                return;
            };
            while let Some(Ok(message)) = ws.next().await {
                if let Message::Text(text) = message
                    && let Some(reply) = answer(text.as_str())
                    && ws.send(Message::text(reply)).await.is_err()
                {
                    return;
                }
            }
        });
    }
}

//! One task per station connection: socket ⇄ endpoint ⇄ handlers.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use futures_util::{SinkExt, StreamExt};
use loadstar_ocpp::rpc::CallFailure;
use loadstar_ocpp::{CallId, Endpoint, EndpointConfig, Event, OcppVersion, Role};
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tracing::{debug, info, warn};

use super::handlers::Handlers;
use super::{
    Admission, CallError, Command, OutgoingCall, Shared, peer_label, register, unregister,
};

pub(super) async fn run<S>(
    shared: Arc<Shared>,
    ws: WebSocketStream<S>,
    station_id: String,
    version: OcppVersion,
    admission: Admission,
    peer: Option<SocketAddr>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (commands_tx, mut commands) = mpsc::channel(shared.config().command_queue);
    let handle = register(&shared, &station_id, version, commands_tx);
    let mut handlers = Handlers::new(shared.clone(), handle.clone(), admission);
    handlers.connected();

    let mut endpoint = Endpoint::new(
        version,
        Role::Csms,
        EndpointConfig {
            call_timeout: shared.config().call_timeout,
            ..EndpointConfig::default()
        },
    );
    let mut pending: HashMap<CallId, oneshot::Sender<Result<Value, CallError>>> = HashMap::new();
    let (mut sink, mut stream) = ws.split();
    let ping_every = shared.config().ping_interval;
    let write_timeout = shared.config().call_timeout;
    let mut last_heard = Instant::now();
    let close_reason: &str;
    // Two timers for the whole connection, re-armed only when their deadline changes: creating
    // timers per frame is measurable at 10,000 stations.
    let ping = tokio::time::sleep(ping_every);
    tokio::pin!(ping);
    let call_timer = tokio::time::sleep(ping_every);
    tokio::pin!(call_timer);
    let mut armed_deadline: Option<Instant> = None;

    loop {
        let call_deadline = endpoint.poll_timeout().map(Instant::from_std);
        if call_deadline != armed_deadline {
            if let Some(deadline) = call_deadline {
                call_timer.as_mut().reset(deadline);
            }
            armed_deadline = call_deadline;
        }
        tokio::select! {
            message = stream.next() => match message {
                Some(Ok(Message::Text(text))) => {
                    last_heard = Instant::now();
                    endpoint.handle_text(text.as_str());
                }
                Some(Ok(Message::Binary(_))) => {
                    last_heard = Instant::now();
                    endpoint.handle_binary();
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {
                    last_heard = Instant::now();
                }
                Some(Ok(Message::Close(_))) | None => {
                    close_reason = "closed by station";
                    break;
                }
                Some(Err(e)) => {
                    warn!(station = %station_id, error = %e, "connection error");
                    close_reason = "connection error";
                    break;
                }
            },
            command = commands.recv() => match command {
                Some(Command::Call(call)) => {
                    let OutgoingCall { action, payload, priority, reply } = *call;
                    match endpoint.call_raw(action, payload, priority) {
                        Ok(call) => {
                            pending.insert(call, reply);
                        }
                        Err(e) => {
                            let _ = reply.send(Err(CallError::Local(e.to_string())));
                        }
                    }
                }
                None => {
                    close_reason = "shutting down";
                    break;
                }
            },
            () = handle.closer.notified() => {
                close_reason = "replaced by a newer connection";
                break;
            }
            () = &mut call_timer, if armed_deadline.is_some() => {
                endpoint.handle_timeout(Instant::now().into_std());
                armed_deadline = None;
            }
            () = &mut ping => {
                if last_heard.elapsed() > ping_every * 3 {
                    close_reason = "station silent";
                    break;
                }
                ping.as_mut().reset(Instant::now() + ping_every);
                let sent = tokio::time::timeout(write_timeout, sink.send(Message::Ping(Default::default()))).await;
                if !matches!(sent, Ok(Ok(()))) {
                    close_reason = "send failed or timed out";
                    break;
                }
            }
        }

        while let Some(event) = endpoint.poll_event() {
            match event {
                Event::Call(call) => {
                    if waits_for_disk(&call) {
                        // Session boundaries are flushed to disk before the station hears
                        // back. On a multi-thread runtime, let tokio move the other stations'
                        // tasks off this worker while it waits for the fsync.
                        blocking(|| handlers.handle(&mut endpoint, call));
                    } else {
                        handlers.handle(&mut endpoint, call);
                    }
                }
                Event::Response { call, result, .. } => {
                    if let Some(reply) = pending.remove(&call) {
                        let _ = reply.send(result.map_err(CallError::from));
                    }
                }
                Event::Refused { action, violation } => {
                    debug!(station = %station_id, ?action, code = %violation.code, reason = %violation.description, "refused a frame");
                }
            }
        }
        // A station that stops reading must not block this task: every write has a deadline.
        let now = Instant::now().into_std();
        let mut frames = Vec::new();
        while let Some(text) = endpoint.poll_transmit(now) {
            frames.push(text);
        }
        if !frames.is_empty() {
            let write = async {
                for text in frames {
                    sink.feed(Message::text(text)).await?;
                }
                sink.flush().await
            };
            if !matches!(tokio::time::timeout(write_timeout, write).await, Ok(Ok(()))) {
                close_reason = "send failed or timed out";
                break;
            }
        }
    }

    endpoint.close();
    while let Some(event) = endpoint.poll_event() {
        if let Event::Response { call, result, .. } = event
            && let Some(reply) = pending.remove(&call)
        {
            let _ = reply.send(result.map_err(CallError::from));
        }
    }
    for (_, reply) in pending.drain() {
        let _ = reply.send(Err(CallError::Failed(CallFailure::Closed)));
    }
    let _ = tokio::time::timeout(write_timeout, sink.close()).await;
    unregister(&shared, &handle, || handlers.disconnected());
    info!(station = %station_id, peer = %peer_label(peer), reason = close_reason, "station disconnected");
}

/// Whether handling `call` flushes the store (a session starts or ends).
fn waits_for_disk(call: &loadstar_ocpp::IncomingCall) -> bool {
    match call.action.as_str() {
        "StartTransaction" | "StopTransaction" => true,
        "TransactionEvent" => {
            call.payload.get("eventType").and_then(|e| e.as_str()) != Some("Updated")
        }
        _ => false,
    }
}

/// Runs blocking work without stalling the other tasks of a multi-thread runtime. A
/// current-thread runtime (virtual time) has no other worker to hand them to, and there the
/// simulation waits for the disk anyway.
fn blocking<R>(f: impl FnOnce() -> R) -> R {
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(f),
        _ => f(),
    }
}

//! The RPC state of one OCPP-J connection, for either side.
//!
//! Like quinn-proto, [`Endpoint`] owns no socket and reads no clock: the shell feeds it received
//! text with [`Endpoint::handle_text`] and the time with [`Endpoint::handle_timeout`], and drains
//! frames to send with [`Endpoint::poll_transmit`] and events with [`Endpoint::poll_event`].
//!
//! Rules it enforces:
//! - every inbound CALL is validated against its schema; failures are answered with the spec's
//!   CALLERROR and never reach the application;
//! - every outbound payload (our CALLs and our CALLRESULTs) is validated before it is sent;
//! - at most one of our CALLs is outstanding at a time; the rest wait in a priority queue in
//!   which safety-relevant calls (profile decreases) jump ahead of operations calls;
//! - an outstanding CALL that gets no answer before its deadline times out and is reported.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::error::{Error, ErrorCode, Violation};
use crate::frame::{Frame, UNKNOWN_MESSAGE_ID};
use crate::schema::{self, PayloadKind};
use crate::{OcppVersion, Request};

/// Which side of the connection this endpoint is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// The central system (Loadstar).
    Csms,
    /// A charging station (the simulators).
    Station,
}

/// How urgent an outbound CALL is. Lower sorts first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Priority {
    /// A charging-profile decrease: the site may be over its limit until it lands.
    Safety = 0,
    /// Routine control: profile increases, station set-up.
    Control = 1,
    /// Operations: configuration reads, firmware, diagnostics.
    Operations = 2,
}

const PRIORITIES: usize = 3;

/// A handle to one of our CALLs, stable from queueing to its answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CallId(pub u64);

/// Tunables of an endpoint.
#[derive(Debug, Clone)]
pub struct EndpointConfig {
    /// How long to wait for the answer to one of our CALLs.
    pub call_timeout: Duration,
    /// Most CALLs waiting to be sent (bounded backpressure).
    pub queue_capacity: usize,
    /// Most inbound CALLs awaiting our answer at once. The spec allows one, but a station may
    /// send more; beyond this we answer with an error rather than grow without bound.
    pub max_inbound_pending: usize,
}

impl Default for EndpointConfig {
    fn default() -> Self {
        EndpointConfig {
            call_timeout: Duration::from_secs(30),
            queue_capacity: 256,
            max_inbound_pending: 8,
        }
    }
}

/// An error answer from the peer.
#[derive(Debug, Clone, PartialEq)]
pub struct RemoteError {
    /// The parsed code, or `None` for a code not in the spec.
    pub code: Option<ErrorCode>,
    /// The code as received.
    pub raw_code: String,
    pub description: String,
    pub details: Value,
}

/// Why one of our CALLs did not get a usable result.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CallFailure {
    #[error("peer answered with CALLERROR {}: {}", .0.raw_code, .0.description)]
    Remote(RemoteError),
    /// The result payload failed its schema: the station's answer cannot be trusted.
    #[error("invalid response: {0}")]
    InvalidResponse(Violation),
    #[error("no answer within the call timeout")]
    Timeout,
    #[error("connection closed before an answer")]
    Closed,
    #[error("cancelled before it was sent")]
    Cancelled,
}

/// An inbound CALL that passed validation, for the application to answer.
#[derive(Debug, Clone, PartialEq)]
pub struct IncomingCall {
    pub id: String,
    pub action: String,
    pub payload: Value,
}

impl IncomingCall {
    /// Decodes the payload as the typed request `T`.
    ///
    /// The payload already passed the schema, so a failure here means our types disagree with
    /// the schema; it maps to a format violation to send back.
    pub fn decode<T: Request>(&self) -> Result<T, Violation> {
        T::deserialize(&self.payload).map_err(|e| {
            Violation::new(
                ErrorCode::FormatViolation,
                format!("{} payload: {e}", self.action),
            )
        })
    }
}

/// Something the application must act on.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// The peer called us; answer with [`Endpoint::respond`] or [`Endpoint::respond_error`].
    Call(IncomingCall),
    /// One of our CALLs was answered or failed.
    Response {
        call: CallId,
        action: String,
        result: Result<Value, CallFailure>,
    },
    /// The peer sent something we refused (already answered with a CALLERROR where allowed).
    /// For logs and metrics.
    Refused {
        action: Option<String>,
        violation: Violation,
    },
}

#[derive(Debug)]
struct Queued {
    call: CallId,
    action: &'static str,
    payload: Value,
}

#[derive(Debug)]
struct Outstanding {
    call: CallId,
    message_id: String,
    action: &'static str,
    deadline: Instant,
}

/// RPC state of one connection.
#[derive(Debug)]
pub struct Endpoint {
    version: OcppVersion,
    role: Role,
    config: EndpointConfig,
    next_call: u64,
    queues: [VecDeque<Queued>; PRIORITIES],
    outstanding: Option<Outstanding>,
    /// Inbound CALLs awaiting our answer: message id → action.
    inbound: HashMap<String, String>,
    transmit: VecDeque<String>,
    events: VecDeque<Event>,
}

impl Endpoint {
    pub fn new(version: OcppVersion, role: Role, config: EndpointConfig) -> Self {
        Endpoint {
            version,
            role,
            config,
            next_call: 1,
            queues: Default::default(),
            outstanding: None,
            inbound: HashMap::new(),
            transmit: VecDeque::new(),
            events: VecDeque::new(),
        }
    }

    pub fn version(&self) -> OcppVersion {
        self.version
    }

    pub fn role(&self) -> Role {
        self.role
    }

    /// Number of our CALLs queued or outstanding.
    pub fn pending_calls(&self) -> usize {
        self.queues.iter().map(VecDeque::len).sum::<usize>()
            + usize::from(self.outstanding.is_some())
    }

    /// Queues a typed CALL. The payload is validated now: an invalid one is never sent.
    pub fn call<T: Request>(&mut self, request: &T, priority: Priority) -> Result<CallId, Error> {
        if T::VERSION != self.version {
            return Err(Error::WrongVersion {
                action: T::ACTION,
                message: T::VERSION,
                connection: self.version,
            });
        }
        let payload = serde_json::to_value(request).map_err(|source| Error::Encode {
            action: T::ACTION.to_owned(),
            source,
        })?;
        self.call_raw(T::ACTION, payload, priority)
    }

    /// Queues a CALL from an untyped payload (validated like a typed one).
    pub fn call_raw(
        &mut self,
        action: &'static str,
        payload: Value,
        priority: Priority,
    ) -> Result<CallId, Error> {
        schema::validate(self.version, action, PayloadKind::Request, &payload).map_err(
            |violation| Error::InvalidOutbound {
                action: action.to_owned(),
                violation,
            },
        )?;
        let queued: usize = self.queues.iter().map(VecDeque::len).sum();
        if queued >= self.config.queue_capacity {
            return Err(Error::QueueFull {
                capacity: self.config.queue_capacity,
            });
        }
        let call = CallId(self.next_call);
        self.next_call += 1;
        self.queues[priority as usize].push_back(Queued {
            call,
            action,
            payload,
        });
        Ok(call)
    }

    /// Removes a CALL that has not been sent yet. Returns whether it was still queued; an
    /// outstanding CALL cannot be taken back (its answer will still be reported).
    pub fn cancel(&mut self, call: CallId) -> bool {
        for queue in &mut self.queues {
            if let Some(pos) = queue.iter().position(|q| q.call == call) {
                queue.remove(pos);
                self.events.push_back(Event::Response {
                    call,
                    action: String::new(),
                    result: Err(CallFailure::Cancelled),
                });
                return true;
            }
        }
        false
    }

    /// Answers an inbound CALL with a typed result, validated against the response schema.
    /// If our own answer is invalid, the peer gets an `InternalError` instead and the error is
    /// returned for logging.
    pub fn respond<R: Serialize>(&mut self, id: &str, response: &R) -> Result<(), Error> {
        let Some(action) = self.inbound.remove(id) else {
            return Err(Error::UnknownCall { id: id.to_owned() });
        };
        let payload = match serde_json::to_value(response) {
            Ok(payload) => payload,
            Err(source) => {
                self.send_error(
                    id,
                    &Violation::new(ErrorCode::InternalError, "encode failed"),
                );
                return Err(Error::Encode { action, source });
            }
        };
        if let Err(violation) =
            schema::validate(self.version, &action, PayloadKind::Response, &payload)
        {
            self.send_error(
                id,
                &Violation::new(
                    ErrorCode::InternalError,
                    "internal error building the response",
                ),
            );
            return Err(Error::InvalidOutbound { action, violation });
        }
        self.transmit.push_back(
            Frame::CallResult {
                id: id.to_owned(),
                payload,
            }
            .to_text(),
        );
        Ok(())
    }

    /// Answers an inbound CALL with a CALLERROR.
    pub fn respond_error(&mut self, id: &str, violation: &Violation) -> Result<(), Error> {
        if self.inbound.remove(id).is_none() {
            return Err(Error::UnknownCall { id: id.to_owned() });
        }
        self.send_error(id, violation);
        Ok(())
    }

    fn send_error(&mut self, id: &str, violation: &Violation) {
        self.transmit
            .push_back(Frame::call_error(id, self.version, violation).to_text());
    }

    /// Feeds one received text frame.
    pub fn handle_text(&mut self, text: &str) {
        match Frame::parse(text) {
            Ok(frame) => self.handle_frame(frame),
            Err(e) => {
                if let Some(id) = &e.reply_to {
                    self.send_error(id, &e.violation);
                }
                self.events.push_back(Event::Refused {
                    action: None,
                    violation: e.violation,
                });
            }
        }
    }

    /// Feeds a binary frame: OCPP-J is text only.
    pub fn handle_binary(&mut self) {
        let violation = Violation::new(
            ErrorCode::RpcFrameworkError,
            "binary frames are not OCPP-J messages",
        );
        self.send_error(UNKNOWN_MESSAGE_ID, &violation);
        self.events.push_back(Event::Refused {
            action: None,
            violation,
        });
    }

    fn handle_frame(&mut self, frame: Frame) {
        match frame {
            Frame::Call {
                id,
                action,
                payload,
            } => self.handle_call(id, action, payload),
            Frame::CallResult { id, payload } => {
                let Some(out) = self.take_outstanding(&id) else {
                    return;
                };
                let result =
                    schema::validate(self.version, out.action, PayloadKind::Response, &payload)
                        .map(|()| payload)
                        .map_err(CallFailure::InvalidResponse);
                self.events.push_back(Event::Response {
                    call: out.call,
                    action: out.action.to_owned(),
                    result,
                });
            }
            Frame::CallError {
                id,
                code,
                description,
                details,
            } => {
                let Some(out) = self.take_outstanding(&id) else {
                    return;
                };
                self.events.push_back(Event::Response {
                    call: out.call,
                    action: out.action.to_owned(),
                    result: Err(CallFailure::Remote(RemoteError {
                        code: ErrorCode::parse(&code),
                        raw_code: code,
                        description,
                        details,
                    })),
                });
            }
        }
    }

    fn take_outstanding(&mut self, id: &str) -> Option<Outstanding> {
        match &self.outstanding {
            Some(out) if out.message_id == id => self.outstanding.take(),
            _ => {
                // A late answer to a timed-out call, or a duplicate: nothing waits for it.
                self.events.push_back(Event::Refused {
                    action: None,
                    violation: Violation::new(
                        ErrorCode::ProtocolError,
                        format!("answer to message {id:?}, which is not outstanding"),
                    ),
                });
                None
            }
        }
    }

    fn handle_call(&mut self, id: String, action: String, payload: Value) {
        let refuse = |this: &mut Self, violation: Violation| {
            this.send_error(&id, &violation);
            this.events.push_back(Event::Refused {
                action: Some(action.clone()),
                violation,
            });
        };
        if self.inbound.contains_key(&id) {
            return refuse(
                self,
                Violation::new(
                    ErrorCode::RpcFrameworkError,
                    format!("message id {id:?} is already in use by a call awaiting its answer"),
                ),
            );
        }
        if self.inbound.len() >= self.config.max_inbound_pending {
            return refuse(
                self,
                Violation::new(
                    ErrorCode::GenericError,
                    "too many unanswered calls; send one at a time",
                ),
            );
        }
        if !schema::is_known_action(self.version, &action) {
            return refuse(
                self,
                Violation::new(
                    ErrorCode::NotImplemented,
                    format!("unknown {} action {action:?}", self.version),
                ),
            );
        }
        if !may_initiate(self.version, &action, self.role.peer()) {
            return refuse(
                self,
                Violation::new(
                    ErrorCode::NotSupported,
                    format!("{action} is not sent in this direction"),
                ),
            );
        }
        if let Err(violation) =
            schema::validate(self.version, &action, PayloadKind::Request, &payload)
        {
            return refuse(self, violation);
        }
        self.inbound.insert(id.clone(), action.clone());
        self.events.push_back(Event::Call(IncomingCall {
            id,
            action,
            payload,
        }));
    }

    /// The next frame to send, if any: answers first, then the next queued CALL if none is
    /// outstanding. `now` starts the CALL's timeout.
    pub fn poll_transmit(&mut self, now: Instant) -> Option<String> {
        if let Some(text) = self.transmit.pop_front() {
            return Some(text);
        }
        if self.outstanding.is_some() {
            return None;
        }
        let queued = self.queues.iter_mut().find_map(VecDeque::pop_front)?;
        let message_id = queued.call.0.to_string();
        let text = Frame::Call {
            id: message_id.clone(),
            action: queued.action.to_owned(),
            payload: queued.payload,
        }
        .to_text();
        self.outstanding = Some(Outstanding {
            call: queued.call,
            message_id,
            action: queued.action,
            deadline: now + self.config.call_timeout,
        });
        Some(text)
    }

    /// When [`Endpoint::handle_timeout`] must next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.outstanding.as_ref().map(|o| o.deadline)
    }

    /// Expires the outstanding CALL if its deadline has passed.
    pub fn handle_timeout(&mut self, now: Instant) {
        if let Some(out) = self.outstanding.take_if(|o| o.deadline <= now) {
            self.events.push_back(Event::Response {
                call: out.call,
                action: out.action.to_owned(),
                result: Err(CallFailure::Timeout),
            });
        }
    }

    /// The next event for the application.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// The connection is gone: every queued and outstanding CALL fails with `Closed`.
    pub fn close(&mut self) {
        let outstanding = self.outstanding.take().map(|o| (o.call, o.action));
        let queued: Vec<_> = self
            .queues
            .iter_mut()
            .flat_map(|q| q.drain(..))
            .map(|q| (q.call, q.action))
            .collect();
        for (call, action) in outstanding.into_iter().chain(queued) {
            self.events.push_back(Event::Response {
                call,
                action: action.to_owned(),
                result: Err(CallFailure::Closed),
            });
        }
        self.inbound.clear();
        self.transmit.clear();
    }
}

impl Role {
    /// The other side.
    pub fn peer(self) -> Role {
        match self {
            Role::Csms => Role::Station,
            Role::Station => Role::Csms,
        }
    }
}

/// Decodes a CALLRESULT payload into the typed response of `T`.
pub fn decode_response<T: Request>(payload: Value) -> Result<T::Response, Violation>
where
    T::Response: DeserializeOwned,
{
    serde_json::from_value(payload).map_err(|e| {
        Violation::new(
            ErrorCode::FormatViolation,
            format!("{} response: {e}", T::ACTION),
        )
    })
}

/// Whether `initiator` may send `action` as a CALL in `version`.
pub fn may_initiate(version: OcppVersion, action: &str, initiator: Role) -> bool {
    // DataTransfer goes both ways.
    if action == "DataTransfer" {
        return true;
    }
    let station_initiated = match version {
        OcppVersion::V16 => STATION_INITIATED_V16.contains(&action),
        OcppVersion::V201 => STATION_INITIATED_V201.contains(&action),
    };
    station_initiated == (initiator == Role::Station)
}

const STATION_INITIATED_V16: &[&str] = &[
    "Authorize",
    "BootNotification",
    "DiagnosticsStatusNotification",
    "FirmwareStatusNotification",
    "Heartbeat",
    "LogStatusNotification",
    "MeterValues",
    "SecurityEventNotification",
    "SignCertificate",
    "SignedFirmwareStatusNotification",
    "StartTransaction",
    "StatusNotification",
    "StopTransaction",
];

const STATION_INITIATED_V201: &[&str] = &[
    "Authorize",
    "BootNotification",
    "ClearedChargingLimit",
    "FirmwareStatusNotification",
    "Get15118EVCertificate",
    "GetCertificateStatus",
    "Heartbeat",
    "LogStatusNotification",
    "MeterValues",
    "NotifyChargingLimit",
    "NotifyCustomerInformation",
    "NotifyDisplayMessages",
    "NotifyEVChargingNeeds",
    "NotifyEVChargingSchedule",
    "NotifyEvent",
    "NotifyMonitoringReport",
    "NotifyReport",
    "PublishFirmwareStatusNotification",
    "ReportChargingProfiles",
    "ReservationStatusUpdate",
    "SecurityEventNotification",
    "SignCertificate",
    "StatusNotification",
    "TransactionEvent",
];

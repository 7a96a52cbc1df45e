//! OCPP-J framing: `[2, id, action, payload]`, `[3, id, payload]`,
//! `[4, id, errorCode, errorDescription, errorDetails]`.

use serde_json::{Map, Value};

use crate::OcppVersion;
use crate::error::{ErrorCode, Violation};

/// Longest message id the spec allows (2.0.1 says 36; 1.6 implementations use UUIDs too).
pub const MAX_MESSAGE_ID_LEN: usize = 36;
/// The message id of a CALLERROR answering a frame whose id could not be read.
pub const UNKNOWN_MESSAGE_ID: &str = "-1";

const CALL: u64 = 2;
const CALL_RESULT: u64 = 3;
const CALL_ERROR: u64 = 4;

/// One OCPP-J RPC frame.
#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    Call {
        id: String,
        action: String,
        payload: Value,
    },
    CallResult {
        id: String,
        payload: Value,
    },
    CallError {
        id: String,
        /// The code as received; see [`ErrorCode::parse`].
        code: String,
        description: String,
        details: Value,
    },
}

/// A frame that could not be parsed, with what to answer. `reply_to` is `None` when no answer
/// may be sent: a broken CALLRESULT or CALLERROR is never answered with a CALLERROR.
#[derive(Debug, Clone, PartialEq)]
pub struct FrameError {
    pub reply_to: Option<String>,
    pub violation: Violation,
}

impl Frame {
    /// The message id.
    pub fn id(&self) -> &str {
        match self {
            Frame::Call { id, .. } | Frame::CallResult { id, .. } | Frame::CallError { id, .. } => {
                id
            }
        }
    }

    /// Parses one text frame. Never panics; every failure says which CALLERROR to send.
    pub fn parse(text: &str) -> Result<Frame, FrameError> {
        let value: Value = serde_json::from_str(text).map_err(|e| FrameError {
            reply_to: Some(UNKNOWN_MESSAGE_ID.to_owned()),
            violation: Violation::new(
                ErrorCode::RpcFrameworkError,
                format!("frame is not valid JSON: {e}"),
            ),
        })?;
        Self::from_value(value)
    }

    /// Interprets an already parsed JSON value as a frame.
    pub fn from_value(value: Value) -> Result<Frame, FrameError> {
        let Value::Array(mut items) = value else {
            return Err(FrameError {
                reply_to: Some(UNKNOWN_MESSAGE_ID.to_owned()),
                violation: Violation::new(
                    ErrorCode::RpcFrameworkError,
                    "frame is not a JSON array",
                ),
            });
        };
        let type_id = items.first().and_then(Value::as_u64);
        let id = match items.get(1) {
            Some(Value::String(id)) if !id.is_empty() && id.len() <= MAX_MESSAGE_ID_LEN => {
                Some(id.clone())
            }
            _ => None,
        };
        let Some(type_id) = type_id else {
            return Err(FrameError {
                reply_to: Some(id.unwrap_or_else(|| UNKNOWN_MESSAGE_ID.to_owned())),
                violation: Violation::new(
                    ErrorCode::RpcFrameworkError,
                    "message type id is missing or not a number",
                ),
            });
        };
        if !(CALL..=CALL_ERROR).contains(&type_id) {
            return Err(FrameError {
                reply_to: Some(id.unwrap_or_else(|| UNKNOWN_MESSAGE_ID.to_owned())),
                violation: Violation::new(
                    ErrorCode::MessageTypeNotSupported,
                    format!("message type {type_id} is not supported"),
                ),
            });
        }
        let Some(id) = id else {
            let reply_to = (type_id == CALL).then(|| UNKNOWN_MESSAGE_ID.to_owned());
            return Err(FrameError {
                reply_to,
                violation: Violation::new(
                    ErrorCode::RpcFrameworkError,
                    format!(
                        "message id is missing, not a string, empty or longer than {MAX_MESSAGE_ID_LEN} characters"
                    ),
                ),
            });
        };
        let shape_error = |expected: &str, reply: bool| FrameError {
            reply_to: reply.then(|| id.clone()),
            violation: Violation::new(ErrorCode::RpcFrameworkError, format!("expected {expected}")),
        };
        match type_id {
            CALL => {
                if items.len() != 4 {
                    return Err(shape_error("[2, id, action, payload]", true));
                }
                let payload = items.pop().unwrap_or(Value::Null);
                let action = match items.pop() {
                    Some(Value::String(action)) if !action.is_empty() => action,
                    _ => return Err(shape_error("the action name as a string", true)),
                };
                if !payload.is_object() {
                    return Err(FrameError {
                        reply_to: Some(id),
                        violation: Violation::new(
                            ErrorCode::FormatViolation,
                            format!("{action} payload is not a JSON object"),
                        ),
                    });
                }
                Ok(Frame::Call {
                    id,
                    action,
                    payload,
                })
            }
            CALL_RESULT => {
                if items.len() != 3 {
                    return Err(shape_error("[3, id, payload]", false));
                }
                let payload = items.pop().unwrap_or(Value::Null);
                Ok(Frame::CallResult { id, payload })
            }
            _ => {
                // Some stations omit errorDetails; accept 4 or 5 elements.
                if !(4..=5).contains(&items.len()) {
                    return Err(shape_error(
                        "[4, id, errorCode, errorDescription, errorDetails]",
                        false,
                    ));
                }
                let details = if items.len() == 5 {
                    items.pop().unwrap_or(Value::Null)
                } else {
                    Value::Object(Map::new())
                };
                let description = match items.pop() {
                    Some(Value::String(s)) => s,
                    _ => return Err(shape_error("errorDescription as a string", false)),
                };
                let code = match items.pop() {
                    Some(Value::String(s)) => s,
                    _ => return Err(shape_error("errorCode as a string", false)),
                };
                Ok(Frame::CallError {
                    id,
                    code,
                    description,
                    details,
                })
            }
        }
    }

    /// Serializes the frame to its wire text.
    pub fn to_text(&self) -> String {
        // Serializing borrowed tuples avoids cloning the payload into a `Value` array.
        let text = match self {
            Frame::Call {
                id,
                action,
                payload,
            } => serde_json::to_string(&(CALL, id, action, payload)),
            Frame::CallResult { id, payload } => serde_json::to_string(&(CALL_RESULT, id, payload)),
            Frame::CallError {
                id,
                code,
                description,
                details,
            } => serde_json::to_string(&(CALL_ERROR, id, code, description, details)),
        };
        // Serializing strings, integers and `Value`s cannot fail.
        text.unwrap_or_default()
    }

    /// A CALLERROR frame for `violation`, spelled for `version`.
    pub fn call_error(id: &str, version: OcppVersion, violation: &Violation) -> Frame {
        // The spec caps errorDescription at 255 characters.
        let description: String = violation.description.chars().take(255).collect();
        Frame::CallError {
            id: id.to_owned(),
            code: violation.code.as_str(version).to_owned(),
            description,
            details: Value::Object(Map::new()),
        }
    }
}

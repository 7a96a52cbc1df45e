//! OCPP-J RPC error codes and the crate's error types.

use std::fmt;

use crate::OcppVersion;

/// An RPC error code as sent in a CALLERROR. Variants are version-neutral; [`ErrorCode::as_str`]
/// gives the wire spelling of each version (1.6 keeps its official misspellings).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// 1.6 `FormationViolation` / 2.0.1 `FormatViolation`: payload syntactically wrong or not the
    /// PDU structure of the action.
    FormatViolation,
    /// 2.0.1 only: the frame is not a valid RPC message (e.g. wrong array shape, unreadable id).
    RpcFrameworkError,
    /// 2.0.1 only: an unknown message type number.
    MessageTypeNotSupported,
    /// Payload incomplete.
    ProtocolError,
    /// The action is unknown to the receiver.
    NotImplemented,
    /// The action is known but not supported by the receiver.
    NotSupported,
    /// The action was refused for security reasons.
    SecurityError,
    /// A field violates an occurrence constraint (1.6 `OccurenceConstraintViolation`).
    OccurrenceConstraintViolation,
    /// A field violates a property constraint (value, length, enum, pattern).
    PropertyConstraintViolation,
    /// A field violates a type constraint.
    TypeConstraintViolation,
    /// The receiver failed internally.
    InternalError,
    /// Anything else.
    GenericError,
}

impl ErrorCode {
    /// The wire spelling in `version`. Codes that 1.6 lacks map to the nearest 1.6 code.
    pub const fn as_str(self, version: OcppVersion) -> &'static str {
        use ErrorCode::*;
        match (self, version) {
            (FormatViolation, OcppVersion::V16) => "FormationViolation",
            (FormatViolation, OcppVersion::V201) => "FormatViolation",
            // 1.6 has no frame-level code: a frame that is not an RPC message does not conform
            // to the PDU structure.
            (RpcFrameworkError, OcppVersion::V16) => "FormationViolation",
            (RpcFrameworkError, OcppVersion::V201) => "RpcFrameworkError",
            (MessageTypeNotSupported, OcppVersion::V16) => "ProtocolError",
            (MessageTypeNotSupported, OcppVersion::V201) => "MessageTypeNotSupported",
            (ProtocolError, _) => "ProtocolError",
            (NotImplemented, _) => "NotImplemented",
            (NotSupported, _) => "NotSupported",
            (SecurityError, _) => "SecurityError",
            (OccurrenceConstraintViolation, OcppVersion::V16) => "OccurenceConstraintViolation",
            (OccurrenceConstraintViolation, OcppVersion::V201) => "OccurrenceConstraintViolation",
            (PropertyConstraintViolation, _) => "PropertyConstraintViolation",
            (TypeConstraintViolation, _) => "TypeConstraintViolation",
            (InternalError, _) => "InternalError",
            (GenericError, _) => "GenericError",
        }
    }

    /// Parses a received error code, accepting both versions' spellings (peers mix them up).
    pub fn parse(code: &str) -> Option<Self> {
        use ErrorCode::*;
        Some(match code {
            "FormationViolation" | "FormatViolation" => FormatViolation,
            "RpcFrameworkError" => RpcFrameworkError,
            "MessageTypeNotSupported" => MessageTypeNotSupported,
            "ProtocolError" => ProtocolError,
            "NotImplemented" => NotImplemented,
            "NotSupported" => NotSupported,
            "SecurityError" => SecurityError,
            "OccurenceConstraintViolation" | "OccurrenceConstraintViolation" => {
                OccurrenceConstraintViolation
            }
            "PropertyConstraintViolation" => PropertyConstraintViolation,
            "TypeConstraintViolation" => TypeConstraintViolation,
            "InternalError" => InternalError,
            "GenericError" => GenericError,
            _ => return None,
        })
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str(OcppVersion::V201))
    }
}

/// Why a payload or frame was refused: the code to answer with and a human-readable reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {description}")]
pub struct Violation {
    pub code: ErrorCode,
    pub description: String,
}

impl Violation {
    pub fn new(code: ErrorCode, description: impl Into<String>) -> Self {
        Violation {
            code,
            description: description.into(),
        }
    }
}

/// Errors of the local API (our own mistakes or misuse), as opposed to what a peer sent.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An outbound payload failed schema validation: it is never sent.
    #[error("outbound {action} payload is invalid: {violation}")]
    InvalidOutbound {
        action: String,
        violation: Violation,
    },
    /// A typed message could not be serialized.
    #[error("cannot encode {action}: {source}")]
    Encode {
        action: String,
        #[source]
        source: serde_json::Error,
    },
    /// A response was given for a call id that is not awaiting one.
    #[error("no inbound call {id} awaits a response")]
    UnknownCall { id: String },
    /// The message belongs to the other protocol version.
    #[error("{action} is an {message} message but this connection speaks {connection}")]
    WrongVersion {
        action: &'static str,
        message: OcppVersion,
        connection: OcppVersion,
    },
    /// The outbound queue is full (bounded backpressure).
    #[error("outbound call queue is full ({capacity} calls)")]
    QueueFull { capacity: usize },
}

//! `loadstar-ocpp`: OCPP-J 1.6 and 2.0.1 without IO.
//!
//! Bytes in, typed events and errors out; typed commands in, bytes out. No sockets, no tokio, no
//! clock: every function that needs the time takes it as an argument, so everything here is
//! testable without a network and runs the same under virtual time.

pub mod error;
pub mod frame;
pub mod message;
pub mod rpc;
pub mod schema;
pub mod v16;
pub mod v201;

pub use error::{Error, ErrorCode, Violation};
pub use frame::Frame;
pub use message::Request;
pub use rpc::{CallFailure, CallId, Endpoint, EndpointConfig, Event, IncomingCall, Priority, Role};

use std::fmt;

/// The OCPP-J protocol versions Loadstar speaks, named by their WebSocket subprotocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum OcppVersion {
    V16,
    V201,
}

impl OcppVersion {
    /// The WebSocket subprotocol token (`Sec-WebSocket-Protocol`).
    pub const fn subprotocol(self) -> &'static str {
        match self {
            OcppVersion::V16 => "ocpp1.6",
            OcppVersion::V201 => "ocpp2.0.1",
        }
    }

    /// Parses a subprotocol token; unknown tokens (e.g. `ocpp2.1`) give `None`.
    pub fn from_subprotocol(token: &str) -> Option<Self> {
        match token.trim() {
            "ocpp1.6" => Some(OcppVersion::V16),
            "ocpp2.0.1" => Some(OcppVersion::V201),
            _ => None,
        }
    }
}

impl fmt::Display for OcppVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.subprotocol())
    }
}

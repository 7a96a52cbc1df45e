//! The link between typed messages and their OCPP action names.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::OcppVersion;

/// A typed OCPP request (the payload of a CALL) with its response type.
pub trait Request: Serialize + DeserializeOwned + Send + 'static {
    /// The OCPP action name, e.g. `"BootNotification"`.
    const ACTION: &'static str;
    /// The protocol version this message belongs to.
    const VERSION: OcppVersion;
    /// The payload of the matching CALLRESULT.
    type Response: Serialize + DeserializeOwned + Send + 'static;
}

//! Safe wrappers of the host imports. Every call can be denied by the site file's grants.

use crate::bindings::loadstar::plugin as wit;

pub use wit::http::{Request as HttpRequest, Response as HttpResponse};
pub use wit::modbus::Target as ModbusTarget;

/// Log lines, shown in Loadstar's log with the plugin's name.
pub mod log {
    use super::wit::log::{Level, log};

    pub fn trace(message: &str) {
        log(Level::Trace, message);
    }
    pub fn debug(message: &str) {
        log(Level::Debug, message);
    }
    pub fn info(message: &str) {
        log(Level::Info, message);
    }
    pub fn warn(message: &str) {
        log(Level::Warn, message);
    }
    pub fn error(message: &str) {
        log(Level::Error, message);
    }
}

/// The controller's clock (virtual under simulation).
pub mod clock {
    /// Milliseconds since the Unix epoch, UTC.
    pub fn now_ms() -> i64 {
        super::wit::clock::now()
    }
}

/// The plugin's configuration from the site file.
pub mod config {
    /// The whole `config` table as JSON text.
    pub fn json() -> String {
        super::wit::config::get()
    }

    /// The `config` table deserialized into `T`; the error names the problem.
    pub fn parse<T: serde::de::DeserializeOwned>() -> Result<T, String> {
        serde_json::from_str(&json()).map_err(|e| format!("invalid plugin config: {e}"))
    }

    /// One top-level key as JSON text.
    pub fn key(key: &str) -> Option<String> {
        super::wit::config::get_key(key)
    }
}

/// The plugin's own persistent key-value store (quota set by the site file).
pub mod kv {
    use crate::HostError;

    pub fn get(key: &str) -> Result<Option<Vec<u8>>, HostError> {
        super::wit::kv::get(key)
    }
    pub fn set(key: &str, value: &[u8]) -> Result<(), HostError> {
        super::wit::kv::set(key, value)
    }
    pub fn delete(key: &str) -> Result<(), HostError> {
        super::wit::kv::delete(key)
    }
    pub fn keys() -> Result<Vec<String>, HostError> {
        super::wit::kv::keys()
    }
}

/// HTTP/1.1 to granted `host:port` endpoints.
pub mod http {
    use super::{HttpRequest, HttpResponse};
    use crate::HostError;

    pub fn fetch(request: &HttpRequest) -> Result<HttpResponse, HostError> {
        super::wit::http::fetch(request)
    }

    /// A GET with no extra headers and the host's default timeout.
    pub fn get(url: &str) -> Result<HttpResponse, HostError> {
        fetch(&HttpRequest {
            method: "GET".into(),
            url: url.into(),
            headers: Vec::new(),
            body: None,
            timeout_ms: None,
        })
    }
}

/// Modbus TCP register reads from granted `host:port` endpoints.
pub mod modbus {
    use super::ModbusTarget;
    use crate::HostError;

    pub fn read_holding(
        target: &ModbusTarget,
        address: u16,
        count: u16,
    ) -> Result<Vec<u16>, HostError> {
        super::wit::modbus::read_holding(target, address, count)
    }
    pub fn read_input(
        target: &ModbusTarget,
        address: u16,
        count: u16,
    ) -> Result<Vec<u16>, HostError> {
        super::wit::modbus::read_input(target, address, count)
    }
}

//! The WebSocket upgrade: endpoint path, subprotocol negotiation and security profile 1
//! (HTTP Basic auth).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use loadstar_ocpp::OcppVersion;
use percent_encoding::percent_decode_str;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::{HeaderValue, StatusCode, header};
use tracing::{debug, info, warn};

use super::{Admission, Shared, connection};

/// Longest station identity OCPP allows.
pub const MAX_STATION_ID_LEN: usize = 48;
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
const PATH_PREFIX: &str = "/ocpp/";

/// What the upgrade request asked for, once checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    pub station_id: String,
    pub version: OcppVersion,
    pub admission: Admission,
}

// tungstenite's handshake callback returns its `ErrorResponse` by value; boxing is not an option.
#[allow(clippy::result_large_err)]
pub(super) async fn accept(shared: Arc<Shared>, tcp: TcpStream, peer: SocketAddr) {
    let config = super::websocket_config(shared.config().max_frame_bytes);
    let mut accepted = None;
    let directory = shared.directory();
    let callback = |request: &Request, response: Response| {
        let result = check_request(request, directory.as_ref());
        match result {
            Ok(ok) => {
                let mut response = response;
                if let Ok(value) = HeaderValue::from_str(ok.version.subprotocol()) {
                    response
                        .headers_mut()
                        .insert(header::SEC_WEBSOCKET_PROTOCOL, value);
                }
                accepted = Some(ok);
                Ok(response)
            }
            Err(rejection) => Err(rejection),
        }
    };
    let upgrade = tokio_tungstenite::accept_hdr_async_with_config(tcp, callback, Some(config));
    let ws = match tokio::time::timeout(HANDSHAKE_TIMEOUT, upgrade).await {
        Ok(Ok(ws)) => ws,
        Ok(Err(e)) => {
            debug!(%peer, error = %e, "WebSocket handshake refused or failed");
            return;
        }
        Err(_) => {
            debug!(%peer, "WebSocket handshake timed out");
            return;
        }
    };
    let Some(ok) = accepted else {
        warn!(%peer, "handshake completed without a checked request");
        return;
    };
    info!(station = %ok.station_id, version = %ok.version, %peer, admission = ?ok.admission, "station connected");
    connection::run(
        shared,
        ws,
        ok.station_id,
        ok.version,
        ok.admission,
        Some(peer),
    )
    .await;
}

fn reject(status: StatusCode, reason: &str) -> ErrorResponse {
    let mut response = ErrorResponse::new(Some(reason.to_owned()));
    *response.status_mut() = status;
    if status == StatusCode::UNAUTHORIZED {
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"loadstar\""),
        );
    }
    response
}

/// Checks an upgrade request: path, subprotocol, credentials.
#[allow(clippy::result_large_err)] // the shape tungstenite's callback wants
pub fn check_request(
    request: &Request,
    directory: &dyn super::StationDirectory,
) -> Result<Accepted, ErrorResponse> {
    let station_id = station_id_from_path(request.uri().path())
        .map_err(|reason| reject(StatusCode::NOT_FOUND, reason))?;

    // The station lists subprotocols in its order of preference; take the first we speak.
    let version = request
        .headers()
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .find_map(OcppVersion::from_subprotocol)
        .ok_or_else(|| {
            reject(
                StatusCode::BAD_REQUEST,
                "no supported OCPP subprotocol offered (ocpp1.6 or ocpp2.0.1)",
            )
        })?;

    let password = match basic_credentials(request) {
        Ok(Some((user, password))) => {
            if user != station_id {
                debug!(station = %station_id, "Basic auth user does not match the station id");
                return Err(reject(StatusCode::UNAUTHORIZED, "unauthorized"));
            }
            Some(password)
        }
        Ok(None) => None,
        Err(()) => return Err(reject(StatusCode::UNAUTHORIZED, "malformed Authorization")),
    };
    match directory.admit(&station_id, password.as_deref()) {
        admission @ (Admission::Known | Admission::Unknown) => Ok(Accepted {
            station_id,
            version,
            admission,
        }),
        Admission::NotFound => {
            warn!(station = %station_id, "refused unknown station");
            Err(reject(StatusCode::NOT_FOUND, "unknown station"))
        }
        Admission::Unauthorized => {
            warn!(station = %station_id, "refused station: bad or missing credentials");
            Err(reject(StatusCode::UNAUTHORIZED, "unauthorized"))
        }
    }
}

/// Extracts the percent-decoded station id from `/ocpp/{stationId}`.
pub fn station_id_from_path(path: &str) -> Result<String, &'static str> {
    let raw = path
        .strip_prefix(PATH_PREFIX)
        .ok_or("the OCPP endpoint is /ocpp/{stationId}")?;
    if raw.is_empty() || raw.contains('/') {
        return Err("the OCPP endpoint is /ocpp/{stationId}");
    }
    let id = percent_decode_str(raw)
        .decode_utf8()
        .map_err(|_| "station id is not valid UTF-8")?;
    if id.chars().count() > MAX_STATION_ID_LEN {
        return Err("station id longer than 48 characters");
    }
    if id.chars().any(char::is_control) {
        return Err("station id contains control characters");
    }
    // Checked again after decoding: `%2F` must not smuggle a path separator into an id, and an
    // id with ':' could never pass Basic auth (the user ends at the first ':').
    if id.contains('/') || id.contains(':') {
        return Err("station id contains '/' or ':'");
    }
    Ok(id.into_owned())
}

/// Parses `Authorization: Basic base64(user:password)`. The password may contain ':'.
fn basic_credentials(request: &Request) -> Result<Option<(String, String)>, ()> {
    let Some(value) = request.headers().get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    let value = value.to_str().map_err(|_| ())?;
    let (scheme, encoded) = value.trim().split_once(' ').ok_or(())?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return Err(());
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .map_err(|_| ())?;
    let text = String::from_utf8(decoded).map_err(|_| ())?;
    let (user, password) = text.split_once(':').ok_or(())?;
    Ok(Some((user.to_owned(), password.to_owned())))
}

#[cfg(test)]
#[allow(clippy::result_large_err)]
mod tests {
    use super::*;
    use crate::csms::StationDirectory;

    struct OnlyCp1;
    impl StationDirectory for OnlyCp1 {
        fn admit(&self, id: &str, password: Option<&str>) -> Admission {
            match (id, password) {
                ("CP 1", Some("correct horse battery:staple")) => Admission::Known,
                ("CP 1", _) => Admission::Unauthorized,
                _ => Admission::NotFound,
            }
        }
    }

    fn request(path: &str, protocols: &str, auth: Option<&str>) -> Request {
        let mut builder = Request::builder()
            .uri(path)
            .header(header::SEC_WEBSOCKET_PROTOCOL, protocols);
        if let Some(auth) = auth {
            let encoded = base64::engine::general_purpose::STANDARD.encode(auth);
            builder = builder.header(header::AUTHORIZATION, format!("Basic {encoded}"));
        }
        builder.body(()).expect("valid request")
    }

    #[test]
    fn paths_are_percent_decoded_and_bounded() {
        assert_eq!(station_id_from_path("/ocpp/CP%201").as_deref(), Ok("CP 1"));
        assert_eq!(station_id_from_path("/ocpp/CP-01").as_deref(), Ok("CP-01"));
        assert!(station_id_from_path("/ocpp/").is_err());
        assert!(station_id_from_path("/other/CP").is_err());
        assert!(station_id_from_path("/ocpp/a/b").is_err());
        assert!(station_id_from_path(&format!("/ocpp/{}", "x".repeat(48))).is_ok());
        assert!(station_id_from_path(&format!("/ocpp/{}", "x".repeat(49))).is_err());
        assert!(station_id_from_path("/ocpp/%FF").is_err());
        assert!(station_id_from_path("/ocpp/a%0Ab").is_err());
        assert!(station_id_from_path("/ocpp/a%2Fb").is_err());
        assert!(station_id_from_path("/ocpp/a%3Ab").is_err());
    }

    #[test]
    fn subprotocol_follows_the_stations_preference() {
        let auth = Some("CP 1:correct horse battery:staple");
        let ok = check_request(
            &request("/ocpp/CP%201", "ocpp2.0.1, ocpp1.6", auth),
            &OnlyCp1,
        )
        .expect("accepted");
        assert_eq!(ok.version, OcppVersion::V201);
        let ok = check_request(&request("/ocpp/CP%201", "ocpp2.1,ocpp1.6", auth), &OnlyCp1)
            .expect("accepted");
        assert_eq!(ok.version, OcppVersion::V16);
        let err = check_request(&request("/ocpp/CP%201", "ocpp2.1", auth), &OnlyCp1)
            .expect_err("no supported subprotocol");
        assert_eq!(err.status(), StatusCode::BAD_REQUEST);
    }

    #[test]
    fn basic_auth_is_checked() {
        let check = |auth| check_request(&request("/ocpp/CP%201", "ocpp1.6", auth), &OnlyCp1);
        assert_eq!(
            check(Some("CP 1:correct horse battery:staple"))
                .map(|a| a.admission)
                .ok(),
            Some(Admission::Known)
        );
        for bad in [
            None,
            Some("CP 1:wrong"),
            Some("CP 2:correct horse battery:staple"),
        ] {
            let err = check(bad).expect_err("refused");
            assert_eq!(err.status(), StatusCode::UNAUTHORIZED, "{bad:?}");
            assert!(err.headers().contains_key(header::WWW_AUTHENTICATE));
        }
        let err = check_request(&request("/ocpp/CP9", "ocpp1.6", Some("CP9:x")), &OnlyCp1)
            .expect_err("unknown");
        assert_eq!(err.status(), StatusCode::NOT_FOUND);
    }
}

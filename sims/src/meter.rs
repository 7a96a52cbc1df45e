//! The grid meter as real devices on loopback, so Loadstar's meter plugins read it as they would
//! a real one: a Modbus TCP SunSpec meter (common model 1, model 203, end marker) and an HTTP
//! JSON meter shaped like HomeWizard P1 (`GET /api/v1/data`); plus an HTTP tariff feed.
//!
//! Every server binds 127.0.0.1 on a port the OS picks and reports the address. The reading
//! comes through a `watch` channel from whoever runs the site ([`crate::site::GridMeter`]).

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use loadstar_optimizer::model::{Line, wh_to_kwh};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_modbus::server::tcp::{Server, accept_tcp_connection};
use tokio_modbus::{ExceptionCode, Request, Response};

use crate::site::MeterReading;

/// Where the SunSpec map starts ("SunS").
pub const SUNSPEC_BASE: u16 = 40_000;
/// SunSpec "not implemented" for int16 values and scale factors.
pub const NOT_IMPLEMENTED: u16 = 0x8000;
/// Model 203 (three-phase wye meter) body length.
pub const MODEL_203_LENGTH: u16 = 105;
const COMMON_LENGTH: u16 = 66;

/// A server task and the address it listens on.
#[derive(Debug)]
pub struct Served {
    pub addr: SocketAddr,
    pub task: JoinHandle<()>,
}

impl Drop for Served {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Values scaled to int16 with one scale factor: the smallest factor ≥ `min_sf` at which every
/// value fits (SunSpec lets the factor change between reads; clients read it with the values).
fn scaled(values: &[f64], min_sf: i16) -> (Vec<u16>, u16) {
    let mut sf = min_sf;
    while sf < 10
        && values
            .iter()
            .any(|v| (v / 10f64.powi(i32::from(sf))).round().abs() > f64::from(i16::MAX))
    {
        sf += 1;
    }
    let raw = values
        .iter()
        .map(|v| {
            let r = (v / 10f64.powi(i32::from(sf))).round();
            // Non-finite input becomes "not implemented" rather than a made-up number.
            if r.is_finite() {
                r as i16 as u16
            } else {
                NOT_IMPLEMENTED
            }
        })
        .collect();
    (raw, sf as u16)
}

fn string_regs(text: &str, regs: usize) -> Vec<u16> {
    let mut bytes: Vec<u8> = text.bytes().take(regs * 2).collect();
    bytes.resize(regs * 2, 0);
    bytes
        .chunks(2)
        .map(|c| u16::from_be_bytes([c[0], c[1]]))
        .collect()
}

fn acc32(value: f64) -> [u16; 2] {
    let v = if value.is_finite() {
        value.round().clamp(0.0, f64::from(u32::MAX)) as u32
    } else {
        0
    };
    [(v >> 16) as u16, (v & 0xFFFF) as u16]
}

/// The whole SunSpec map from [`SUNSPEC_BASE`]: marker, common model 1, model 203, end marker.
pub fn sunspec_registers(reading: &MeterReading, serial: &str) -> Vec<u16> {
    let mut r = vec![0x5375, 0x6E53]; // "SunS"
    r.extend([1, COMMON_LENGTH]);
    r.extend(string_regs("Loadstar", 16)); // Mn
    r.extend(string_regs("SimGridMeter", 16)); // Md
    r.extend(string_regs("", 8)); // Opt
    r.extend(string_regs(env!("CARGO_PKG_VERSION"), 8)); // Vr
    r.extend(string_regs(serial, 16)); // SN
    r.extend([1, NOT_IMPLEMENTED]); // DA, Pad

    let model_start = r.len();
    r.extend([203, MODEL_203_LENGTH]);
    let amps: Vec<f64> = Line::ALL.iter().map(|&l| reading.amps[l]).collect();
    let total_amps: f64 = amps.iter().sum();
    let (a, a_sf) = scaled(&[total_amps, amps[0], amps[1], amps[2]], -2);
    r.extend(&a); // A, AphA..C (2..=5)
    r.push(a_sf); // A_SF (6)
    let volts: Vec<f64> = Line::ALL.iter().map(|&l| reading.volts[l]).collect();
    let mean_v = volts.iter().sum::<f64>() / 3.0;
    let (v, v_sf) = scaled(&[mean_v, volts[0], volts[1], volts[2]], -1);
    r.extend(&v); // PhV, PhVphA..C (7..=10)
    r.extend([NOT_IMPLEMENTED; 4]); // PPV, PPVphAB..CA (11..=14)
    r.push(v_sf); // V_SF (15)
    r.extend([5000, (-2i16) as u16]); // Hz, Hz_SF (16, 17): 50.00 Hz
    let watts: Vec<f64> = Line::ALL.iter().map(|&l| reading.watts[l]).collect();
    let (w, w_sf) = scaled(&[reading.total_w(), watts[0], watts[1], watts[2]], 0);
    r.extend(&w); // W, WphA..C (18..=21)
    r.push(w_sf); // W_SF (22)
    r.extend([NOT_IMPLEMENTED; 15]); // VA, VAR, PF with their SFs (23..=37)
    r.extend(acc32(reading.export_wh)); // TotWhExp (38, 39)
    r.extend([0; 6]); // per-phase export (40..=45)
    r.extend(acc32(reading.import_wh)); // TotWhImp (46, 47)
    r.extend([0; 6]); // per-phase import (48..=53)
    r.push(0); // TotWh_SF (54)
    r.extend([0; 16]); // TotVAh export/import with phases (55..=70)
    r.push(NOT_IMPLEMENTED); // TotVAh_SF (71)
    r.extend([0; 32]); // TotVArh quadrants with phases (72..=103)
    r.push(NOT_IMPLEMENTED); // TotVArh_SF (104)
    r.extend([0, 0]); // Evt (105, 106)
    debug_assert_eq!(r.len() - model_start, 2 + usize::from(MODEL_203_LENGTH));
    r.extend([0xFFFF, 0]); // end marker
    r
}

#[derive(Clone)]
struct SunSpecService {
    reading: watch::Receiver<MeterReading>,
    serial: Arc<str>,
}

impl tokio_modbus::server::Service for SunSpecService {
    type Request = Request<'static>;
    type Response = Response;
    type Exception = ExceptionCode;
    type Future = std::future::Ready<Result<Response, ExceptionCode>>;

    fn call(&self, req: Self::Request) -> Self::Future {
        let answer = match req {
            Request::ReadHoldingRegisters(addr, count) => {
                let map = sunspec_registers(&self.reading.borrow(), &self.serial);
                let start = addr.checked_sub(SUNSPEC_BASE).map(usize::from);
                match start {
                    Some(s) if count > 0 && s + usize::from(count) <= map.len() => Ok(
                        Response::ReadHoldingRegisters(map[s..s + usize::from(count)].to_vec()),
                    ),
                    _ => {
                        tracing::debug!(addr, count, "sunspec read outside the map");
                        Err(ExceptionCode::IllegalDataAddress)
                    }
                }
            }
            other => {
                tracing::debug!(?other, "sunspec meter: unsupported function");
                Err(ExceptionCode::IllegalFunction)
            }
        };
        std::future::ready(answer)
    }
}

/// Serves the SunSpec meter over Modbus TCP on 127.0.0.1 (any unit id).
pub async fn serve_sunspec(
    reading: watch::Receiver<MeterReading>,
    serial: &str,
) -> io::Result<Served> {
    let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
    let addr = listener.local_addr()?;
    let service = SunSpecService {
        reading,
        serial: Arc::from(serial),
    };
    let task = tokio::spawn(async move {
        let server = Server::new(listener);
        let new_service = move |_peer| Ok(Some(service.clone()));
        let on_connected = move |stream, peer| {
            let new_service = new_service.clone();
            async move { accept_tcp_connection(stream, peer, new_service) }
        };
        if let Err(e) = server
            .serve(&on_connected, |e| {
                tracing::debug!(%e, "sunspec connection ended with an error");
            })
            .await
        {
            tracing::warn!(%e, "sunspec server stopped");
        }
    });
    tracing::info!(%addr, "sunspec meter listening");
    Ok(Served { addr, task })
}

/// The HomeWizard P1 `GET /api/v1/data` body. `unsigned_currents` mimics firmware that reports
/// current magnitudes only (power keeps its sign).
pub fn homewizard_json(reading: &MeterReading, unsigned_currents: bool) -> serde_json::Value {
    let round = |v: f64, digits: i32| {
        let k = 10f64.powi(digits);
        (v * k).round() / k
    };
    let current = |l: Line| {
        let a = reading.amps[l];
        round(if unsigned_currents { a.abs() } else { a }, 3)
    };
    serde_json::json!({
        "wifi_ssid": "loadstar-sim",
        "wifi_strength": 100,
        "smr_version": 50,
        "meter_model": "Loadstar SimGridMeter",
        "unique_id": "5349474d4554455231",
        "active_tariff": 1,
        "total_power_import_kwh": round(wh_to_kwh(reading.import_wh), 3),
        "total_power_export_kwh": round(wh_to_kwh(reading.export_wh), 3),
        "active_power_w": round(reading.total_w(), 0),
        "active_power_l1_w": round(reading.watts[Line::L1], 0),
        "active_power_l2_w": round(reading.watts[Line::L2], 0),
        "active_power_l3_w": round(reading.watts[Line::L3], 0),
        "active_voltage_l1_v": round(reading.volts[Line::L1], 1),
        "active_voltage_l2_v": round(reading.volts[Line::L2], 1),
        "active_voltage_l3_v": round(reading.volts[Line::L3], 1),
        "active_current_l1_a": current(Line::L1),
        "active_current_l2_a": current(Line::L2),
        "active_current_l3_a": current(Line::L3),
    })
}

/// One tariff slot: `price` per kWh from `start` (inclusive) to `end` (exclusive).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TariffSlot {
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
    pub price: f64,
}

/// Answers a GET path with a JSON body, or `None` for 404.
pub type Routes = Arc<dyn Fn(&str) -> Option<String> + Send + Sync>;

/// Serves the HomeWizard-shaped meter at `/api/v1/data`.
pub async fn serve_homewizard(
    reading: watch::Receiver<MeterReading>,
    unsigned_currents: bool,
) -> io::Result<Served> {
    serve_http(Arc::new(move |path| {
        (path == "/api/v1/data")
            .then(|| homewizard_json(&reading.borrow(), unsigned_currents).to_string())
    }))
    .await
}

/// Serves the tariff as a JSON list of `{start, end, price}` at `/tariff`.
pub async fn serve_tariff(slots: watch::Receiver<Vec<TariffSlot>>) -> io::Result<Served> {
    serve_http(Arc::new(move |path| {
        (path == "/tariff").then(|| serde_json::to_string(&*slots.borrow()).unwrap_or_default())
    }))
    .await
}

/// Longest request head accepted.
const MAX_REQUEST_HEAD: usize = 8 * 1024;
/// How long a client may take to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// A minimal HTTP/1.1 server for GET requests with JSON answers, on 127.0.0.1. One request per
/// connection (`Connection: close`), as the meters it imitates behave well enough that way.
pub async fn serve_http(routes: Routes) -> io::Result<Served> {
    let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
    let addr = listener.local_addr()?;
    let task = tokio::spawn(async move {
        loop {
            let (stream, peer) = match listener.accept().await {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(%e, "http accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let routes = routes.clone();
            tokio::spawn(async move {
                if let Err(e) = handle_http(stream, &routes).await {
                    tracing::debug!(%peer, %e, "http request failed");
                }
            });
        }
    });
    tracing::info!(%addr, "http server listening");
    Ok(Served { addr, task })
}

async fn handle_http(mut stream: TcpStream, routes: &Routes) -> io::Result<()> {
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    let complete = tokio::time::timeout(REQUEST_TIMEOUT, async {
        loop {
            let n = stream.read(&mut buf).await?;
            if n == 0 {
                return Ok::<bool, io::Error>(false);
            }
            head.extend_from_slice(&buf[..n]);
            if head.windows(4).any(|w| w == b"\r\n\r\n") {
                return Ok(true);
            }
            if head.len() > MAX_REQUEST_HEAD {
                return Ok(false);
            }
        }
    })
    .await
    .unwrap_or(Ok(false))?;
    let (status, body) = if !complete {
        ("400 Bad Request", r#"{"error":"bad request"}"#.to_owned())
    } else {
        let line = head
            .split(|&b| b == b'\r')
            .next()
            .map(String::from_utf8_lossy)
            .unwrap_or_default();
        let mut parts = line.split(' ');
        let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
        let path = target.split('?').next().unwrap_or("");
        if method != "GET" {
            (
                "405 Method Not Allowed",
                r#"{"error":"only GET"}"#.to_owned(),
            )
        } else {
            match routes(path) {
                Some(body) => ("200 OK", body),
                None => ("404 Not Found", r#"{"error":"not found"}"#.to_owned()),
            }
        }
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}

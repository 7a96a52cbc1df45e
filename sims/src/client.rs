//! A minimal OCPP station client over a real WebSocket: connects with Basic auth and a
//! subprotocol, makes typed calls and answers the CSMS's calls. The load generator and the
//! end-to-end tests drive it; the full station simulator builds on it.

use std::collections::BTreeMap;
use std::time::Duration;

use base64::Engine;
use futures_util::{SinkExt, StreamExt};
use loadstar_ocpp::rpc::{CallFailure, IncomingCall, decode_response};
use loadstar_ocpp::{
    Endpoint, EndpointConfig, ErrorCode, Event, OcppVersion, Priority, Request, Role, Violation,
    v16, v201,
};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::{HeaderValue, header};
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// How to reach the CSMS.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// The endpoint without the station id, e.g. `ws://127.0.0.1:9000/ocpp`.
    pub url: String,
    pub station_id: String,
    pub password: Option<String>,
    pub version: OcppVersion,
    pub call_timeout: Duration,
}

/// Why the client failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect: {0}")]
    Connect(#[from] tungstenite::Error),
    #[error("bad request: {0}")]
    Request(String),
    #[error("the CSMS chose subprotocol {0:?}, not the one offered")]
    Subprotocol(Option<String>),
    #[error("call failed: {0}")]
    Call(#[from] CallFailure),
    #[error("call refused locally: {0}")]
    Local(#[from] loadstar_ocpp::Error),
    #[error("cannot decode the answer: {0}")]
    Decode(Violation),
    #[error("connection closed")]
    Closed,
}

/// What a simulated station remembers of the CSMS's calls.
#[derive(Debug, Clone, Default)]
pub struct StationMemory {
    /// Configuration keys / variables, as set by the CSMS.
    pub config: BTreeMap<String, String>,
    /// Charging-profile limits received, in order: (evse or connector id, limit, unit).
    pub profiles: Vec<(i32, f64, String)>,
}

/// One connected station, over a TCP socket or any other stream (e.g. an in-memory pipe under
/// virtual time).
pub struct StationClient<S = MaybeTlsStream<TcpStream>> {
    ws: WebSocketStream<S>,
    endpoint: Endpoint,
    pub version: OcppVersion,
    pub memory: StationMemory,
}

impl StationClient {
    /// Connects over TCP with the handshake a real station makes.
    pub async fn connect(config: &ClientConfig) -> Result<Self, ClientError> {
        let url = format!(
            "{}/{}",
            config.url.trim_end_matches('/'),
            utf8_percent_encode(&config.station_id)
        );
        let mut request = url
            .into_client_request()
            .map_err(|e| ClientError::Request(e.to_string()))?;
        let headers = request.headers_mut();
        headers.insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static(config.version.subprotocol()),
        );
        if let Some(password) = &config.password {
            let token = base64::engine::general_purpose::STANDARD
                .encode(format!("{}:{password}", config.station_id));
            let value = HeaderValue::from_str(&format!("Basic {token}"))
                .map_err(|e| ClientError::Request(e.to_string()))?;
            headers.insert(header::AUTHORIZATION, value);
        }
        let (ws, response) = tokio_tungstenite::connect_async(request).await?;
        let chosen = response
            .headers()
            .get(header::SEC_WEBSOCKET_PROTOCOL)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        if chosen.as_deref() != Some(config.version.subprotocol()) {
            return Err(ClientError::Subprotocol(chosen));
        }
        Ok(StationClient::from_stream(
            ws,
            config.version,
            config.call_timeout,
        ))
    }
}

impl<S> StationClient<S>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    /// Wraps an already-upgraded WebSocket.
    pub fn from_stream(
        ws: WebSocketStream<S>,
        version: OcppVersion,
        call_timeout: Duration,
    ) -> Self {
        StationClient {
            ws,
            endpoint: Endpoint::new(
                version,
                Role::Station,
                EndpointConfig {
                    call_timeout,
                    ..EndpointConfig::default()
                },
            ),
            version,
            memory: StationMemory::default(),
        }
    }

    /// Sends a typed call and waits for its answer, answering CSMS calls meanwhile.
    pub async fn call<T: Request>(&mut self, request: &T) -> Result<T::Response, ClientError> {
        let call = self.endpoint.call(request, Priority::Control)?;
        loop {
            self.flush().await?;
            while let Some(event) = self.endpoint.poll_event() {
                match event {
                    Event::Response {
                        call: id, result, ..
                    } if id == call => {
                        return decode_response::<T>(result?).map_err(ClientError::Decode);
                    }
                    Event::Call(incoming) => self.answer(incoming),
                    _ => {}
                }
            }
            self.flush().await?;
            let deadline = self
                .endpoint
                .poll_timeout()
                .map(Instant::from_std)
                .unwrap_or_else(|| Instant::now() + Duration::from_secs(60));
            tokio::select! {
                message = self.ws.next() => self.receive(message)?,
                () = tokio::time::sleep_until(deadline) => {
                    self.endpoint.handle_timeout(Instant::now().into_std());
                }
            }
        }
    }

    /// Sends the BootNotification of this station's version; true if the CSMS accepted it.
    pub async fn boot(&mut self, vendor: &str, model: &str) -> Result<bool, ClientError> {
        Ok(match self.version {
            OcppVersion::V16 => {
                let answer = self
                    .call(&v16::BootNotificationRequest {
                        charge_point_vendor: vendor.into(),
                        charge_point_model: model.into(),
                        ..Default::default()
                    })
                    .await?;
                answer.status == v16::RegistrationStatus::Accepted
            }
            OcppVersion::V201 => {
                let answer = self
                    .call(&v201::BootNotificationRequest {
                        charging_station: v201::ChargingStation {
                            model: model.into(),
                            vendor_name: vendor.into(),
                            ..Default::default()
                        },
                        reason: v201::BootReasonEnum::PowerUp,
                        ..Default::default()
                    })
                    .await?;
                answer.status == v201::RegistrationStatusEnum::Accepted
            }
        })
    }

    /// Reports connector 1 of EVSE 1 as available (`true`) or in use.
    pub async fn status(&mut self, available: bool, charging: bool) -> Result<(), ClientError> {
        match self.version {
            OcppVersion::V16 => {
                let status = match (available, charging) {
                    (true, _) => v16::ChargePointStatus::Available,
                    (false, true) => v16::ChargePointStatus::Charging,
                    (false, false) => v16::ChargePointStatus::Preparing,
                };
                self.call(&v16::StatusNotificationRequest {
                    connector_id: 1,
                    error_code: v16::ChargePointErrorCode::NoError,
                    status,
                    timestamp: Some(chrono::Utc::now()),
                    ..Default::default()
                })
                .await
                .map(drop)
            }
            OcppVersion::V201 => self
                .call(&v201::StatusNotificationRequest {
                    timestamp: chrono::Utc::now(),
                    connector_status: if available {
                        v201::ConnectorStatusEnum::Available
                    } else {
                        v201::ConnectorStatusEnum::Occupied
                    },
                    evse_id: 1,
                    connector_id: 1,
                    ..Default::default()
                })
                .await
                .map(drop),
        }
    }

    /// Sends a CALL frame the caller built (not validated here) and waits for the answer with
    /// message id `id`; `Ok(true)` for a CALLRESULT, `Ok(false)` for a CALLERROR. For the load
    /// generator, whose client must cost far less than the server it measures; CSMS calls that
    /// arrive meanwhile still go through the validating endpoint.
    pub async fn call_prebuilt(&mut self, id: &str, frame: String) -> Result<bool, ClientError> {
        self.ws.send(Message::text(frame)).await?;
        let result = format!("[3,\"{id}\"");
        let error = format!("[4,\"{id}\"");
        loop {
            match self.ws.next().await {
                Some(Ok(Message::Text(text))) => {
                    if text.starts_with(&result) {
                        return Ok(true);
                    }
                    if text.starts_with(&error) {
                        return Ok(false);
                    }
                    self.endpoint.handle_text(text.as_str());
                    while let Some(event) = self.endpoint.poll_event() {
                        if let Event::Call(incoming) = event {
                            self.answer(incoming);
                        }
                    }
                    self.flush().await?;
                }
                other => self.receive(other)?,
            }
        }
    }

    /// Stays connected for `duration`, answering CSMS calls.
    pub async fn idle(&mut self, duration: Duration) -> Result<(), ClientError> {
        let until = Instant::now() + duration;
        loop {
            while let Some(event) = self.endpoint.poll_event() {
                if let Event::Call(incoming) = event {
                    self.answer(incoming);
                }
            }
            self.flush().await?;
            tokio::select! {
                message = self.ws.next() => self.receive(message)?,
                () = tokio::time::sleep_until(until) => return Ok(()),
            }
        }
    }

    /// The upgraded WebSocket, for a driver with its own loop (the station simulator). CALLs
    /// still queued in this client's endpoint are dropped.
    pub fn into_websocket(self) -> WebSocketStream<S> {
        self.ws
    }

    /// Closes the connection politely.
    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
    }

    fn receive(
        &mut self,
        message: Option<Result<Message, tungstenite::Error>>,
    ) -> Result<(), ClientError> {
        match message {
            Some(Ok(Message::Text(text))) => self.endpoint.handle_text(text.as_str()),
            Some(Ok(Message::Binary(_))) => self.endpoint.handle_binary(),
            Some(Ok(Message::Close(_))) | None => return Err(ClientError::Closed),
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(ClientError::Connect(e)),
        }
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), ClientError> {
        let now = Instant::now().into_std();
        let mut sent = false;
        while let Some(text) = self.endpoint.poll_transmit(now) {
            self.ws.feed(Message::text(text)).await?;
            sent = true;
        }
        if sent {
            self.ws.flush().await?;
        }
        Ok(())
    }

    /// Answers a CSMS call the way a cooperative charger does.
    fn answer(&mut self, call: IncomingCall) {
        let result = match self.version {
            OcppVersion::V16 => answer_v16(&mut self.memory, &call),
            OcppVersion::V201 => answer_v201(&mut self.memory, &call),
        };
        let _ = match result {
            Ok(payload) => self.endpoint.respond(&call.id, &payload),
            Err(v) => self.endpoint.respond_error(&call.id, &v),
        };
    }
}

/// A 1.6 meter value with the energy register, per-phase current and total power (at 230 V per
/// phase), as a station configured by Loadstar reports it.
pub fn meter_value_v16(
    at: chrono::DateTime<chrono::Utc>,
    energy_wh: f64,
    amps: [f64; 3],
) -> v16::MeterValue {
    let sv = |value: String, measurand, phase, unit| v16::SampledValue {
        value,
        measurand: Some(measurand),
        phase,
        unit: Some(unit),
        ..Default::default()
    };
    let mut sampled = vec![sv(
        format!("{energy_wh:.0}"),
        v16::Measurand::EnergyActiveImportRegister,
        None,
        v16::UnitOfMeasure::Wh,
    )];
    for (phase, a) in [v16::Phase::L1, v16::Phase::L2, v16::Phase::L3]
        .into_iter()
        .zip(amps)
    {
        sampled.push(sv(
            format!("{a:.1}"),
            v16::Measurand::CurrentImport,
            Some(phase),
            v16::UnitOfMeasure::A,
        ));
    }
    sampled.push(sv(
        format!("{:.0}", amps.iter().sum::<f64>() * 230.0),
        v16::Measurand::PowerActiveImport,
        None,
        v16::UnitOfMeasure::W,
    ));
    v16::MeterValue {
        timestamp: at,
        sampled_value: sampled,
    }
}

/// The 2.0.1 form of [`meter_value_v16`].
pub fn meter_value_v201(
    at: chrono::DateTime<chrono::Utc>,
    energy_wh: f64,
    amps: [f64; 3],
) -> v201::MeterValue {
    let sv = |value: f64, measurand, phase| v201::SampledValue {
        value,
        measurand: Some(measurand),
        phase,
        ..Default::default()
    };
    let mut sampled = vec![sv(
        energy_wh.round(),
        v201::MeasurandEnum::EnergyActiveImportRegister,
        None,
    )];
    for (phase, a) in [
        v201::PhaseEnum::L1,
        v201::PhaseEnum::L2,
        v201::PhaseEnum::L3,
    ]
    .into_iter()
    .zip(amps)
    {
        sampled.push(sv(a, v201::MeasurandEnum::CurrentImport, Some(phase)));
    }
    sampled.push(sv(
        (amps.iter().sum::<f64>() * 230.0).round(),
        v201::MeasurandEnum::PowerActiveImport,
        None,
    ));
    v201::MeterValue {
        timestamp: at,
        sampled_value: sampled,
        ..Default::default()
    }
}

fn utf8_percent_encode(id: &str) -> String {
    id.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn to_value<T: serde::Serialize>(value: T) -> Result<serde_json::Value, Violation> {
    serde_json::to_value(value).map_err(|e| Violation::new(ErrorCode::InternalError, e.to_string()))
}

fn answer_v16(
    memory: &mut StationMemory,
    call: &IncomingCall,
) -> Result<serde_json::Value, Violation> {
    use v16::*;
    match call.action.as_str() {
        "GetConfiguration" => {
            let req: GetConfigurationRequest = call.decode()?;
            let defaults = [
                ("SupportedFeatureProfiles", "Core,SmartCharging"),
                ("ChargeProfileMaxStackLevel", "8"),
                ("ChargingScheduleAllowedChargingRateUnit", "Current,Power"),
                ("ChargingScheduleMaxPeriods", "24"),
                ("MaxChargingProfilesInstalled", "8"),
                ("ConnectorSwitch3to1PhaseSupported", "false"),
                ("MeterValueSampleInterval", "900"),
            ];
            let lookup = |key: &str| {
                memory.config.get(key).cloned().or_else(|| {
                    defaults
                        .iter()
                        .find(|(k, _)| *k == key)
                        .map(|(_, v)| (*v).to_owned())
                })
            };
            let mut known = Vec::new();
            let mut unknown = Vec::new();
            for key in req.key.unwrap_or_default() {
                match lookup(&key) {
                    Some(value) => known.push(KeyValue {
                        key,
                        readonly: false,
                        value: Some(value),
                    }),
                    None => unknown.push(key),
                }
            }
            to_value(GetConfigurationResponse {
                configuration_key: Some(known),
                unknown_key: (!unknown.is_empty()).then_some(unknown),
            })
        }
        "ChangeConfiguration" => {
            let req: ChangeConfigurationRequest = call.decode()?;
            memory.config.insert(req.key, req.value);
            to_value(ChangeConfigurationResponse {
                status: ConfigurationStatus::Accepted,
            })
        }
        "SetChargingProfile" => {
            let req: SetChargingProfileRequest = call.decode()?;
            let schedule = &req.cs_charging_profiles.charging_schedule;
            if let Some(first) = schedule.charging_schedule_period.first() {
                let unit = serde_json::to_value(schedule.charging_rate_unit)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default();
                memory.profiles.push((req.connector_id, first.limit, unit));
            }
            to_value(SetChargingProfileResponse {
                status: ChargingProfileStatus::Accepted,
            })
        }
        // The endpoint already refused unknown actions; these are known but not simulated.
        other => Err(Violation::new(
            ErrorCode::NotSupported,
            format!("{other} is not simulated"),
        )),
    }
}

/// The answer to one GetVariables entry: its value, or UnknownVariable when there is none.
pub(crate) fn variable_result(
    d: v201::GetVariableData,
    value: Option<String>,
) -> v201::GetVariableResult {
    v201::GetVariableResult {
        attribute_status: if value.is_some() {
            v201::GetVariableStatusEnum::Accepted
        } else {
            v201::GetVariableStatusEnum::UnknownVariable
        },
        attribute_value: value,
        component: d.component,
        variable: d.variable,
        ..Default::default()
    }
}

fn answer_v201(
    memory: &mut StationMemory,
    call: &IncomingCall,
) -> Result<serde_json::Value, Violation> {
    use v201::*;
    match call.action.as_str() {
        "GetVariables" => {
            let req: GetVariablesRequest = call.decode()?;
            let results = req
                .get_variable_data
                .into_iter()
                .map(|d| {
                    let key = format!("{}.{}", d.component.name, d.variable.name);
                    let value = memory.config.get(&key).cloned().or_else(|| {
                        match key.as_str() {
                            "SmartChargingCtrlr.Enabled" => Some("true"),
                            "SmartChargingCtrlr.RateUnit" => Some("A,W"),
                            "SmartChargingCtrlr.PeriodsPerSchedule" => Some("24"),
                            "SmartChargingCtrlr.ProfileStackLevel" => Some("8"),
                            "SmartChargingCtrlr.Entries" => Some("16"),
                            "SmartChargingCtrlr.Phases3to1" => Some("false"),
                            _ => None,
                        }
                        .map(str::to_owned)
                    });
                    variable_result(d, value)
                })
                .collect();
            to_value(GetVariablesResponse {
                get_variable_result: results,
                ..Default::default()
            })
        }
        "SetVariables" => {
            let req: SetVariablesRequest = call.decode()?;
            let results = req
                .set_variable_data
                .into_iter()
                .map(|d| {
                    let key = format!("{}.{}", d.component.name, d.variable.name);
                    memory.config.insert(key, d.attribute_value);
                    SetVariableResult {
                        attribute_status: SetVariableStatusEnum::Accepted,
                        component: d.component,
                        variable: d.variable,
                        ..Default::default()
                    }
                })
                .collect();
            to_value(SetVariablesResponse {
                set_variable_result: results,
                ..Default::default()
            })
        }
        "SetChargingProfile" => {
            let req: SetChargingProfileRequest = call.decode()?;
            if let Some(schedule) = req.charging_profile.charging_schedule.first()
                && let Some(first) = schedule.charging_schedule_period.first()
            {
                let unit = serde_json::to_value(schedule.charging_rate_unit)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default();
                memory.profiles.push((req.evse_id, first.limit, unit));
            }
            to_value(SetChargingProfileResponse {
                status: ChargingProfileStatusEnum::Accepted,
                ..Default::default()
            })
        }
        // The endpoint already refused unknown actions; these are known but not simulated.
        other => Err(Violation::new(
            ErrorCode::NotSupported,
            format!("{other} is not simulated"),
        )),
    }
}

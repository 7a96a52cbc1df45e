//! Handlers of station-initiated messages, for both versions. They update the site state and
//! the store, and answer through the endpoint. They never block on the network; the store's
//! flushes at session start and end are the only waits, by design (durability first).

use std::sync::Arc;

use chrono::{DateTime, Utc};
use loadstar_ocpp::rpc::IncomingCall;
use loadstar_ocpp::{Endpoint, ErrorCode, OcppVersion, Request, Violation, v16, v201};
use tracing::{debug, error, info, warn};

use super::{Admission, Shared, StationHandle, setup};
use crate::state::{ActiveSession, BootInfo, ChargingNeeds, Measurement, StationState};
use crate::store::{MeterSample, SessionKey, SessionRecord, StationRecord};

pub(super) struct Handlers {
    shared: Arc<Shared>,
    handle: StationHandle,
    admission: Admission,
    station_id: String,
    version: OcppVersion,
    setup_started: bool,
}

/// Decodes `call` as `T`, runs `f`, and sends its answer (or the CALLERROR it returns).
fn answer<T: Request>(
    endpoint: &mut Endpoint,
    call: &IncomingCall,
    f: impl FnOnce(T) -> Result<T::Response, Violation>,
) {
    answered::<T>(endpoint, call, f);
}

/// [`answer`], telling whether the station got a CALLRESULT (not a CALLERROR).
fn answered<T: Request>(
    endpoint: &mut Endpoint,
    call: &IncomingCall,
    f: impl FnOnce(T) -> Result<T::Response, Violation>,
) -> bool {
    let result = call.decode::<T>().and_then(f);
    let accepted = result.is_ok();
    let sent = match result {
        Ok(response) => endpoint.respond(&call.id, &response),
        Err(violation) => endpoint.respond_error(&call.id, &violation),
    };
    if let Err(e) = sent {
        error!(action = %call.action, error = %e, "could not answer a station call");
        return false;
    }
    accepted
}

/// Highest EVSE or connector id accepted from a station. Ids index per-station maps, so a
/// station sending arbitrary ids must not make them grow without bound.
pub const MAX_EVSE_ID: u32 = 128;

fn evse_id_of(id: i32) -> Result<u32, Violation> {
    u32::try_from(id)
        .ok()
        .filter(|id| *id <= MAX_EVSE_ID)
        .ok_or_else(|| {
            Violation::new(
                ErrorCode::PropertyConstraintViolation,
                format!("EVSE/connector id {id} is outside 0..={MAX_EVSE_ID}"),
            )
        })
}

/// Most capability keys kept per station from reports.
const MAX_REPORTED_KEYS: usize = 512;

/// How far ahead of our clock a station timestamp may be before we distrust it.
const MAX_CLOCK_AHEAD: chrono::TimeDelta = chrono::TimeDelta::minutes(5);

fn internal(e: impl std::fmt::Display) -> Violation {
    Violation::new(ErrorCode::InternalError, e.to_string())
}

impl Handlers {
    pub fn new(shared: Arc<Shared>, handle: StationHandle, admission: Admission) -> Self {
        Handlers {
            station_id: handle.station_id().to_owned(),
            version: handle.version(),
            shared,
            handle,
            admission,
            setup_started: false,
        }
    }

    fn now(&self) -> DateTime<Utc> {
        self.shared.clock.now()
    }

    /// Runs `f` on this station's state.
    fn with_station<R>(&self, f: impl FnOnce(&mut StationState) -> R) -> R {
        let now = self.now();
        let mut state = self.shared.state();
        let station = state
            .stations
            .entry(self.station_id.clone())
            .or_insert_with(|| {
                StationState::new(
                    &self.station_id,
                    self.version,
                    self.admission == Admission::Known,
                    now,
                )
            });
        station.last_seen = now;
        f(station)
    }

    pub fn connected(&mut self) {
        let now = self.now();
        let known = self.admission == Admission::Known;
        self.with_station(|s| {
            s.connected = true;
            s.version = self.version;
            s.known = known;
        });
        let record = match self.shared.store.station(&self.station_id) {
            Ok(Some(mut record)) => {
                record.last_seen = Some(now);
                record.ocpp_version = self.version.subprotocol().to_owned();
                record
            }
            Ok(None) => StationRecord {
                id: self.station_id.clone(),
                ocpp_version: self.version.subprotocol().to_owned(),
                vendor: None,
                model: None,
                serial: None,
                firmware: None,
                first_seen: now,
                last_boot: None,
                last_seen: Some(now),
                capabilities: serde_json::Value::Null,
                refused_settings: Vec::new(),
                adopted: known,
            },
            Err(e) => {
                error!(station = %self.station_id, error = %e, "store: cannot read station");
                return;
            }
        };
        if let Err(e) = self.shared.store.put_station(&record) {
            error!(station = %self.station_id, error = %e, "store: cannot write station");
        }
    }

    pub fn disconnected(&mut self) {
        self.with_station(|s| s.connected = false);
    }

    pub fn handle(&mut self, endpoint: &mut Endpoint, call: IncomingCall) {
        debug!(station = %self.station_id, action = %call.action, "call from station");
        match self.version {
            OcppVersion::V16 => self.handle_v16(endpoint, &call),
            OcppVersion::V201 => self.handle_v201(endpoint, &call),
        }
    }

    fn start_setup(&mut self) {
        if self.setup_started {
            return;
        }
        self.setup_started = true;
        let handle = self.handle.clone();
        let shared = self.shared.clone();
        let known = self.admission == Admission::Known;
        tokio::spawn(async move { setup::run(shared, handle, known).await });
    }

    fn record_boot(&self, boot: BootInfo) {
        let now = self.now();
        info!(station = %self.station_id, vendor = %boot.vendor, model = %boot.model, firmware = ?boot.firmware, "boot");
        self.with_station(|s| s.boot = Some(boot.clone()));
        match self.shared.store.station(&self.station_id) {
            Ok(Some(mut record)) => {
                record.vendor = Some(boot.vendor);
                record.model = Some(boot.model);
                record.serial = boot.serial;
                record.firmware = boot.firmware;
                record.last_boot = Some(now);
                if let Err(e) = self.shared.store.put_station(&record) {
                    error!(station = %self.station_id, error = %e, "store: cannot write station");
                }
            }
            Ok(None) => {}
            Err(e) => error!(station = %self.station_id, error = %e, "store: cannot read station"),
        }
    }

    fn heartbeat_secs(&self) -> i32 {
        i32::try_from(self.shared.config().heartbeat_interval.as_secs()).unwrap_or(i32::MAX)
    }

    // ---------------------------------------------------------------- sessions, both versions

    /// The store's record of a live session.
    fn record_of(&self, evse_id: u32, session: &ActiveSession) -> SessionRecord {
        SessionRecord {
            station: self.station_id.clone(),
            evse_id,
            connector_id: evse_id,
            transaction_id: session.transaction_id.clone(),
            id_tag: session.id_tag.clone(),
            started_at: session.started_at,
            ended_at: None,
            meter_start_wh: session.meter_start_wh,
            meter_stop_wh: None,
            energy_wh: session.energy_wh,
            stop_reason: None,
            last_seq_no: session.last_seq_no,
            updated_at: self.now(),
        }
    }

    fn start_session(&self, evse_id: u32, session: ActiveSession) -> Result<(), Violation> {
        let record = self.record_of(evse_id, &session);
        // Durable before the station hears back: a crash after this loses no started session.
        self.shared.store.start_session(&record).map_err(internal)?;
        info!(station = %self.station_id, evse = evse_id, transaction = %session.transaction_id, "session started");
        self.shared.events.notify_one();
        self.with_station(|s| s.evse(evse_id).session = Some(session));
        Ok(())
    }

    /// A new session on an EVSE that still has one open: the station lost or never sent the
    /// old one's end. End it in the store (not silently overwrite it) as of the new start.
    fn displace(
        &self,
        evse_id: u32,
        open: Option<ActiveSession>,
        at: DateTime<Utc>,
    ) -> Result<(), Violation> {
        let Some(open) = open else {
            return Ok(());
        };
        warn!(station = %self.station_id, evse = evse_id, transaction = %open.transaction_id, "a new session starts on an EVSE whose session never ended; ending the old one");
        let meter_stop = open.meter_start_wh.map(|start| start + open.energy_wh);
        self.end_session(
            &open.transaction_id,
            at,
            meter_stop,
            Some("SupersededByNewSession".to_owned()),
        )
    }

    /// Ends the session `transaction_id`, wherever it is (state, or only in the store after a
    /// restart).
    fn end_session(
        &self,
        transaction_id: &str,
        ended_at: DateTime<Utc>,
        meter_stop_wh: Option<f64>,
        reason: Option<String>,
    ) -> Result<(), Violation> {
        // Read, not taken: the live session leaves the state only once its end is stored.
        let from_state = self.with_station(|s| {
            s.evse_with_session(transaction_id)
                .and_then(|(evse_id, evse)| evse.session.clone().map(|session| (evse_id, session)))
        });
        let key = SessionKey {
            station: self.station_id.clone(),
            transaction_id: transaction_id.to_owned(),
        };
        let stored = self.shared.store.session(&key).map_err(internal)?;
        let mut record = match (stored, from_state) {
            (Some(mut record), live) => {
                // The stored progress may lag the live session by up to a minute.
                if let Some((_, session)) = live {
                    record.energy_wh = session.energy_wh;
                    record.last_seq_no = session.last_seq_no.or(record.last_seq_no);
                }
                record
            }
            (None, Some((evse_id, session))) => self.record_of(evse_id, &session),
            (None, None) => {
                // A stop for a session we never saw start (e.g. started while offline and the
                // Started event was lost). Record it so the energy is not lost.
                warn!(station = %self.station_id, transaction = transaction_id, "end of an unknown session; recording it");
                SessionRecord {
                    station: self.station_id.clone(),
                    evse_id: 0,
                    connector_id: 0,
                    transaction_id: transaction_id.to_owned(),
                    id_tag: None,
                    started_at: ended_at,
                    ended_at: None,
                    meter_start_wh: None,
                    meter_stop_wh: None,
                    energy_wh: 0.0,
                    stop_reason: None,
                    last_seq_no: None,
                    updated_at: ended_at,
                }
            }
        };
        if record.ended_at.is_some() {
            // A repeated stop (the station retried after a lost answer): already recorded.
            self.with_station(|s| {
                if let Some((_, evse)) = s.evse_with_session(transaction_id) {
                    evse.session = None;
                }
            });
            return Ok(());
        }
        let meter_stop_wh = meter_stop_wh.filter(|wh| wh.is_finite());
        record.ended_at = Some(ended_at);
        record.meter_stop_wh = meter_stop_wh;
        if let (Some(start), Some(stop)) = (record.meter_start_wh, meter_stop_wh) {
            record.energy_wh = (stop - start).max(0.0);
        }
        record.stop_reason = reason;
        record.updated_at = self.now();
        if !record.energy_wh.is_finite() {
            record.energy_wh = 0.0;
        }
        self.shared.store.end_session(&record).map_err(internal)?;
        self.with_station(|s| {
            if let Some((_, evse)) = s.evse_with_session(transaction_id) {
                evse.session = None;
            }
        });
        info!(station = %self.station_id, transaction = transaction_id, energy_wh = record.energy_wh, "session ended");
        self.shared.events.notify_one();
        Ok(())
    }

    /// Applies measurements to the EVSE and its session, and stores the samples.
    /// Stores `measurements` as samples and, when `live`, folds them into the EVSE's latest
    /// measurement and its session's energy.
    ///
    /// Station clocks are not trusted blindly: a timestamp more than a few minutes ahead of
    /// ours, or equal to the EVSE's latest one (a stuck clock), is replaced by the time of
    /// receipt, so live values never freeze and samples never pile up on one instant.
    fn record_measurements(
        &self,
        evse_id: u32,
        transaction_id: Option<&str>,
        measurements: &[Measurement],
        live: bool,
    ) {
        if measurements.is_empty() {
            return;
        }
        let now = self.now();
        let mut measurements = measurements.to_vec();
        // One lock per message: sanitise the timestamps against the EVSE's latest reading,
        // then fold in.
        let session_tx = self.with_station(|s| {
            if live && let Some(at) = measurements.iter().filter_map(|m| m.at).max() {
                s.clock_skew_s = Some((at - now).num_seconds());
            }
            let evse = s.evse(evse_id);
            let latest = evse.measurement.at;
            for m in &mut measurements {
                let suspicious = match m.at {
                    None => true,
                    Some(at) => at > now + MAX_CLOCK_AHEAD || (live && Some(at) == latest),
                };
                if suspicious {
                    m.at = Some(now);
                }
            }
            if live {
                for m in &measurements {
                    evse.measurement.merge(m);
                }
            }
            let energy = evse.measurement.energy_wh;
            let session = evse.session.as_mut()?;
            if let (Some(energy), Some(start)) = (energy, session.meter_start_wh) {
                session.energy_wh = (energy - start).max(0.0);
            }
            Some(session.transaction_id.clone())
        });
        let tx = transaction_id.map(str::to_owned).or(session_tx.clone());
        let samples: Vec<MeterSample> = measurements
            .iter()
            .filter(|m| !m.is_empty())
            .map(|m| MeterSample {
                station: self.station_id.clone(),
                evse_id,
                at: m.at.unwrap_or(now),
                energy_wh: m.energy_wh,
                power_w: m.power_w,
                current_a: m.current_a,
                voltage_v: m.voltage_v,
                offered_a: m.offered_a,
                transaction_id: tx.clone(),
            })
            .collect();
        if let Err(e) = self.shared.store.append_samples(&samples) {
            error!(station = %self.station_id, error = %e, "store: cannot append meter samples");
        }
        if let Some(tx) = session_tx {
            self.persist_progress(&tx, false);
        }
    }

    /// Writes a session's progress (energy, seqNo) to the store, at most once a minute unless
    /// `force`d: the samples already hold the detail, and a read-modify-write per MeterValues
    /// would dominate the CSMS's cost at scale.
    fn persist_progress(&self, transaction_id: &str, force: bool) {
        let now = self.now();
        let due = self.with_station(|s| {
            let (_, evse) = s.evse_with_session(transaction_id)?;
            let session = evse.session.as_mut()?;
            let due = force
                || session
                    .persisted_at
                    .is_none_or(|at| now - at >= chrono::Duration::seconds(60));
            if !due {
                return None;
            }
            session.persisted_at = Some(now);
            Some((session.energy_wh, session.last_seq_no))
        });
        if let Some((energy_wh, last_seq_no)) = due {
            self.update_stored_session(transaction_id, |r| {
                r.energy_wh = energy_wh;
                r.last_seq_no = last_seq_no.or(r.last_seq_no);
            });
        }
    }

    fn update_stored_session(&self, transaction_id: &str, f: impl FnOnce(&mut SessionRecord)) {
        let key = SessionKey {
            station: self.station_id.clone(),
            transaction_id: transaction_id.to_owned(),
        };
        match self.shared.store.session(&key) {
            Ok(Some(mut record)) if record.ended_at.is_none() => {
                f(&mut record);
                record.updated_at = self.now();
                if let Err(e) = self.shared.store.update_session(&record) {
                    error!(station = %self.station_id, error = %e, "store: cannot update session");
                }
            }
            Ok(_) => {}
            Err(e) => error!(station = %self.station_id, error = %e, "store: cannot read session"),
        }
    }

    // ------------------------------------------------------------------------------ OCPP 1.6

    fn handle_v16(&mut self, ep: &mut Endpoint, call: &IncomingCall) {
        use v16::*;
        let now = self.now();
        match call.action.as_str() {
            "BootNotification" => {
                let accepted = answered::<BootNotificationRequest>(ep, call, |req| {
                    self.record_boot(BootInfo {
                        vendor: req.charge_point_vendor,
                        model: req.charge_point_model,
                        serial: req
                            .charge_point_serial_number
                            .or(req.charge_box_serial_number),
                        firmware: req.firmware_version,
                        reason: None,
                    });
                    Ok(BootNotificationResponse {
                        status: RegistrationStatus::Accepted,
                        current_time: now,
                        interval: self.heartbeat_secs(),
                    })
                });
                if accepted {
                    self.start_setup();
                }
            }
            "Heartbeat" => answer::<HeartbeatRequest>(ep, call, |_| {
                self.with_station(|_| ());
                Ok(HeartbeatResponse { current_time: now })
            }),
            "StatusNotification" => answer::<StatusNotificationRequest>(ep, call, |req| {
                let connector = evse_id_of(req.connector_id)?;
                let status = req.status.as_str().to_owned();
                let error_code = req.error_code.as_str().to_owned();
                self.with_station(|s| {
                    let evse = s.evse(connector);
                    evse.connectors.insert(connector, status);
                    evse.error_code = (error_code != "NoError").then_some(error_code);
                });
                Ok(StatusNotificationResponse {})
            }),
            "Authorize" => answer::<AuthorizeRequest>(ep, call, |req| {
                Ok(AuthorizeResponse {
                    id_tag_info: self.id_tag_info_v16(&req.id_tag),
                })
            }),
            "StartTransaction" => {
                answer::<StartTransactionRequest>(ep, call, |req| {
                    let id_tag_info = self.id_tag_info_v16(&req.id_tag);
                    let evse_id = evse_id_of(req.connector_id)?;
                    let meter_start = req.meter_start as f64;
                    // A retry after a lost answer gets the id it was given the first time.
                    let open = self.with_station(|s| s.evse(evse_id).session.clone());
                    if let Some(open) = &open
                        && open.id_tag.as_deref() == Some(req.id_tag.as_str())
                        && open.meter_start_wh == Some(meter_start)
                        && open.started_at == req.timestamp
                        && let Ok(transaction_id) = open.transaction_id.parse()
                    {
                        return Ok(StartTransactionResponse {
                            id_tag_info,
                            transaction_id,
                        });
                    }
                    self.displace(evse_id, open, req.timestamp)?;
                    let transaction_id =
                        self.shared.store.next_transaction_id().map_err(internal)?;
                    self.start_session(
                        evse_id,
                        ActiveSession {
                            transaction_id: transaction_id.to_string(),
                            id_tag: Some(req.id_tag),
                            started_at: req.timestamp,
                            meter_start_wh: Some(meter_start),
                            energy_wh: 0.0,
                            last_seq_no: None,
                            charging_state: None,
                            needs: ChargingNeeds::default(),
                            persisted_at: None,
                        },
                    )?;
                    Ok(StartTransactionResponse {
                        id_tag_info,
                        transaction_id,
                    })
                });
            }
            "StopTransaction" => answer::<StopTransactionRequest>(ep, call, |req| {
                let tx = req.transaction_id.to_string();
                if let Some(data) = &req.transaction_data {
                    let evse_id = self
                        .with_station(|s| s.evse_with_session(&tx).map(|(id, _)| id))
                        .unwrap_or(0);
                    let ms: Vec<_> = data.iter().map(measurement_v16).collect();
                    self.record_measurements(evse_id, Some(&tx), &ms, true);
                }
                self.end_session(
                    &tx,
                    req.timestamp,
                    Some(req.meter_stop as f64),
                    req.reason.map(|x| x.as_str().to_owned()),
                )?;
                Ok(StopTransactionResponse {
                    id_tag_info: req.id_tag.as_deref().map(|t| self.id_tag_info_v16(t)),
                })
            }),
            "MeterValues" => answer::<MeterValuesRequest>(ep, call, |req| {
                let evse_id = evse_id_of(req.connector_id)?;
                let ms: Vec<_> = req.meter_value.iter().map(measurement_v16).collect();
                let tx = req.transaction_id.map(|t| t.to_string());
                self.record_measurements(evse_id, tx.as_deref(), &ms, true);
                Ok(MeterValuesResponse {})
            }),
            "DataTransfer" => answer::<DataTransferRequest>(ep, call, |req| {
                debug!(station = %self.station_id, vendor = %req.vendor_id, "DataTransfer from an unknown vendor");
                Ok(DataTransferResponse {
                    status: DataTransferStatus::UnknownVendorId,
                    data: None,
                })
            }),
            "DiagnosticsStatusNotification" => {
                answer::<DiagnosticsStatusNotificationRequest>(ep, call, |req| {
                    let status = req.status.as_str().to_owned();
                    self.with_station(|s| s.diagnostics_status = Some(status));
                    Ok(DiagnosticsStatusNotificationResponse {})
                })
            }
            "FirmwareStatusNotification" => {
                answer::<FirmwareStatusNotificationRequest>(ep, call, |req| {
                    let status = req.status.as_str().to_owned();
                    self.with_station(|s| s.firmware_status = Some(status));
                    Ok(FirmwareStatusNotificationResponse {})
                })
            }
            // The 1.6 security extension's notifications: acknowledged and logged.
            "SecurityEventNotification" => {
                answer::<SecurityEventNotificationRequest>(ep, call, |req| {
                    warn!(station = %self.station_id, event = %req.kind, info = ?req.tech_info, "security event");
                    Ok(SecurityEventNotificationResponse {})
                })
            }
            "SignedFirmwareStatusNotification" => {
                answer::<SignedFirmwareStatusNotificationRequest>(ep, call, |req| {
                    let status = req.status.as_str().to_owned();
                    self.with_station(|s| s.firmware_status = Some(status));
                    Ok(SignedFirmwareStatusNotificationResponse {})
                })
            }
            "LogStatusNotification" => answer::<LogStatusNotificationRequest>(ep, call, |req| {
                let status = req.status.as_str().to_owned();
                self.with_station(|s| s.diagnostics_status = Some(status));
                Ok(LogStatusNotificationResponse {})
            }),
            other => self.not_supported(ep, call, other),
        }
    }

    fn id_tag_info_v16(&self, id_tag: &str) -> v16::IdTagInfo {
        let accepted = self.shared.config().authorization.accepts(id_tag);
        v16::IdTagInfo {
            expiry_date: None,
            parent_id_tag: None,
            status: if accepted {
                v16::AuthorizationStatus::Accepted
            } else {
                v16::AuthorizationStatus::Invalid
            },
        }
    }

    fn not_supported(&self, ep: &mut Endpoint, call: &IncomingCall, action: &str) {
        let violation = Violation::new(
            ErrorCode::NotSupported,
            format!("{action} is not supported by this CSMS"),
        );
        if let Err(e) = ep.respond_error(&call.id, &violation) {
            error!(error = %e, "could not answer a station call");
        }
    }

    // ---------------------------------------------------------------------------- OCPP 2.0.1

    fn handle_v201(&mut self, ep: &mut Endpoint, call: &IncomingCall) {
        use v201::*;
        let now = self.now();
        match call.action.as_str() {
            "BootNotification" => {
                let accepted = answered::<BootNotificationRequest>(ep, call, |req| {
                    self.record_boot(BootInfo {
                        vendor: req.charging_station.vendor_name,
                        model: req.charging_station.model,
                        serial: req.charging_station.serial_number,
                        firmware: req.charging_station.firmware_version,
                        reason: Some(req.reason.as_str().to_owned()),
                    });
                    Ok(BootNotificationResponse {
                        current_time: now,
                        interval: self.heartbeat_secs(),
                        status: RegistrationStatusEnum::Accepted,
                        ..Default::default()
                    })
                });
                if accepted {
                    self.start_setup();
                }
            }
            "Heartbeat" => answer::<HeartbeatRequest>(ep, call, |_| {
                self.with_station(|_| ());
                Ok(HeartbeatResponse {
                    current_time: now,
                    ..Default::default()
                })
            }),
            "StatusNotification" => answer::<StatusNotificationRequest>(ep, call, |req| {
                let evse_id = evse_id_of(req.evse_id)?;
                let connector = evse_id_of(req.connector_id)?;
                let status = req.connector_status.as_str().to_owned();
                self.with_station(|s| {
                    s.evse(evse_id).connectors.insert(connector, status);
                });
                Ok(StatusNotificationResponse::default())
            }),
            "Authorize" => answer::<AuthorizeRequest>(ep, call, |req| {
                Ok(AuthorizeResponse {
                    id_token_info: self.id_token_info(&req.id_token.id_token),
                    ..Default::default()
                })
            }),
            "TransactionEvent" => {
                answer::<TransactionEventRequest>(ep, call, |req| self.transaction_event(req))
            }
            "MeterValues" => answer::<MeterValuesRequest>(ep, call, |req| {
                let evse_id = evse_id_of(req.evse_id)?;
                let ms: Vec<_> = req.meter_value.iter().map(measurement_v201).collect();
                self.record_measurements(evse_id, None, &ms, true);
                Ok(MeterValuesResponse::default())
            }),
            "NotifyEVChargingNeeds" => answer::<NotifyEVChargingNeedsRequest>(ep, call, |req| {
                let evse_id = evse_id_of(req.evse_id)?;
                let needs = &req.charging_needs;
                let ac = needs.ac_charging_parameters.as_ref();
                let mut update = crate::state::ChargingNeeds {
                    departure: needs.departure_time,
                    energy_wh: ac.map(|p| f64::from(p.energy_amount)),
                    energy_from_wh: 0.0,
                    ev_min_current_a: ac.map(|p| f64::from(p.ev_min_current)),
                    ev_max_current_a: ac.map(|p| f64::from(p.ev_max_current)),
                };
                let known = self.with_station(|s| match s.evse(evse_id).session.as_mut() {
                    Some(session) => {
                        // What the EV still needs now, on top of what it has had.
                        update.energy_from_wh = session.energy_wh;
                        session.needs = update;
                        true
                    }
                    None => false,
                });
                info!(station = %self.station_id, evse = evse_id, known_session = known, "EV charging needs");
                Ok(NotifyEVChargingNeedsResponse {
                    status: if known {
                        NotifyEVChargingNeedsStatusEnum::Accepted
                    } else {
                        NotifyEVChargingNeedsStatusEnum::Rejected
                    },
                    ..Default::default()
                })
            }),
            "NotifyChargingLimit" => answer::<NotifyChargingLimitRequest>(ep, call, |req| {
                let source = req.charging_limit.charging_limit_source.as_str().to_owned();
                let evse_id = req.evse_id.map(evse_id_of).transpose()?.unwrap_or(0);
                warn!(station = %self.station_id, evse = evse_id, %source, "station reports an external charging limit");
                self.with_station(|s| s.evse(evse_id).external_limit = Some(source));
                Ok(NotifyChargingLimitResponse::default())
            }),
            "NotifyReport" => answer::<NotifyReportRequest>(ep, call, |req| {
                let entries: Vec<(String, String)> = req
                    .report_data
                    .unwrap_or_default()
                    .into_iter()
                    .flat_map(|d| {
                        let key = format!("{}.{}", d.component.name, d.variable.name);
                        d.variable_attribute
                            .into_iter()
                            .filter(|a| a.kind.is_none() || a.kind == Some(AttributeEnum::Actual))
                            .filter_map(move |a| a.value.map(|v| (key.clone(), v)))
                    })
                    .collect();
                self.with_station(|s| {
                    for (key, value) in entries {
                        // Bounded: a full inventory can be large, and it lives in memory.
                        if s.capabilities.raw.len() >= MAX_REPORTED_KEYS
                            && !s.capabilities.raw.contains_key(&key)
                        {
                            continue;
                        }
                        setup::apply_capability(&mut s.capabilities, &key, &value);
                    }
                });
                Ok(NotifyReportResponse::default())
            }),
            "ReportChargingProfiles" => answer::<ReportChargingProfilesRequest>(ep, call, |req| {
                debug!(station = %self.station_id, evse = req.evse_id, profiles = req.charging_profile.len(), "charging profiles reported");
                Ok(ReportChargingProfilesResponse::default())
            }),
            "SecurityEventNotification" => {
                answer::<SecurityEventNotificationRequest>(ep, call, |req| {
                    warn!(station = %self.station_id, event = %req.kind, info = ?req.tech_info, "security event");
                    Ok(SecurityEventNotificationResponse::default())
                })
            }
            "FirmwareStatusNotification" => {
                answer::<FirmwareStatusNotificationRequest>(ep, call, |req| {
                    let status = req.status.as_str().to_owned();
                    self.with_station(|s| s.firmware_status = Some(status));
                    Ok(FirmwareStatusNotificationResponse::default())
                })
            }
            "LogStatusNotification" => answer::<LogStatusNotificationRequest>(ep, call, |req| {
                let status = req.status.as_str().to_owned();
                self.with_station(|s| s.diagnostics_status = Some(status));
                Ok(LogStatusNotificationResponse::default())
            }),
            "DataTransfer" => answer::<DataTransferRequest>(ep, call, |_| {
                Ok(DataTransferResponse {
                    status: DataTransferStatusEnum::UnknownVendorId,
                    ..Default::default()
                })
            }),
            // Sent routinely by 2.0.1 stations; acknowledged so they do not retry.
            "NotifyEvent" => answer::<NotifyEventRequest>(ep, call, |req| {
                debug!(station = %self.station_id, events = req.event_data.len(), "NotifyEvent");
                Ok(NotifyEventResponse::default())
            }),
            "NotifyMonitoringReport" => answer::<NotifyMonitoringReportRequest>(ep, call, |_| {
                Ok(NotifyMonitoringReportResponse::default())
            }),
            // Loadstar runs no OCSP responder: say so, rather than NotSupported.
            "GetCertificateStatus" => answer::<GetCertificateStatusRequest>(ep, call, |_| {
                Ok(GetCertificateStatusResponse {
                    status: GetCertificateStatusEnum::Failed,
                    ..Default::default()
                })
            }),
            other => self.not_supported(ep, call, other),
        }
    }

    fn id_token_info(&self, token: &str) -> v201::IdTokenInfo {
        let accepted = self.shared.config().authorization.accepts(token);
        v201::IdTokenInfo {
            status: if accepted {
                v201::AuthorizationStatusEnum::Accepted
            } else {
                v201::AuthorizationStatusEnum::Invalid
            },
            ..Default::default()
        }
    }

    fn transaction_event(
        &self,
        req: v201::TransactionEventRequest,
    ) -> Result<v201::TransactionEventResponse, Violation> {
        use v201::TransactionEventEnum as Kind;
        let tx = req.transaction_info.transaction_id.clone();
        let seq_no = i64::from(req.seq_no);
        let evse_id = match req.evse.as_ref() {
            Some(evse) => evse_id_of(evse.id)?,
            None => self
                .with_station(|s| s.evse_with_session(&tx).map(|(id, _)| id))
                .unwrap_or(0),
        };
        let id_token_info = req
            .id_token
            .as_ref()
            .map(|t| self.id_token_info(&t.id_token));
        let measurements: Vec<_> = req
            .meter_value
            .iter()
            .flatten()
            .map(measurement_v201)
            .collect();
        let charging_state = req
            .transaction_info
            .charging_state
            .map(|x| x.as_str().to_owned());

        // seqNo: a repeated or older event (a retry after a lost answer, or events delivered out
        // of order) is acknowledged; its samples are kept (the store drops exact repeats) but it
        // changes no live state.
        let last_seq = self.with_station(|s| {
            s.evse_with_session(&tx)
                .and_then(|(_, e)| e.session.as_ref().and_then(|s| s.last_seq_no))
        });
        if last_seq.is_some_and(|last| seq_no <= last) {
            debug!(station = %self.station_id, transaction = %tx, seq_no, "old TransactionEvent: samples kept, state unchanged");
            self.record_measurements(evse_id, Some(&tx), &measurements, false);
            return Ok(v201::TransactionEventResponse {
                id_token_info,
                ..Default::default()
            });
        }

        let known = self.with_station(|s| s.evse_with_session(&tx).is_some());
        if !known && req.event_type != Kind::Ended {
            let key = SessionKey {
                station: self.station_id.clone(),
                transaction_id: tx.clone(),
            };
            match self.shared.store.session(&key).map_err(internal)? {
                Some(stored) if stored.ended_at.is_some() => {
                    // A late event for a session that already ended must not reopen it.
                    debug!(station = %self.station_id, transaction = %tx, "event after the session ended: samples kept");
                    self.record_measurements(evse_id, Some(&tx), &measurements, false);
                    return Ok(v201::TransactionEventResponse {
                        id_token_info,
                        ..Default::default()
                    });
                }
                Some(stored) => {
                    // Open in the store but not live (e.g. the station moved EVSE): resume it.
                    self.with_station(|s| {
                        s.evse(evse_id).session = Some(ActiveSession {
                            transaction_id: stored.transaction_id,
                            id_tag: stored.id_tag,
                            started_at: stored.started_at,
                            meter_start_wh: stored.meter_start_wh,
                            energy_wh: stored.energy_wh,
                            last_seq_no: stored.last_seq_no,
                            charging_state: charging_state.clone(),
                            needs: ChargingNeeds::default(),
                            persisted_at: Some(stored.updated_at),
                        });
                    });
                }
                None => {
                    let open = self.with_station(|s| s.evse(evse_id).session.clone());
                    self.displace(evse_id, open, req.timestamp)?;
                    let meter_start = measurements.iter().find_map(|m| m.energy_wh);
                    self.start_session(
                        evse_id,
                        ActiveSession {
                            transaction_id: tx.clone(),
                            id_tag: req.id_token.as_ref().map(|t| t.id_token.clone()),
                            started_at: req.timestamp,
                            meter_start_wh: meter_start,
                            energy_wh: 0.0,
                            last_seq_no: Some(seq_no),
                            charging_state: charging_state.clone(),
                            needs: ChargingNeeds::default(),
                            persisted_at: None,
                        },
                    )?;
                }
            }
        }
        self.record_measurements(evse_id, Some(&tx), &measurements, true);
        self.with_station(|s| {
            if let Some((_, evse)) = s.evse_with_session(&tx)
                && let Some(session) = evse.session.as_mut()
            {
                session.last_seq_no = Some(seq_no);
                if charging_state.is_some() {
                    session.charging_state = charging_state.clone();
                }
                if session.id_tag.is_none() {
                    session.id_tag = req.id_token.as_ref().map(|t| t.id_token.clone());
                }
            }
        });
        self.persist_progress(&tx, false);
        if req.event_type == Kind::Ended {
            let meter_stop = measurements.iter().rev().find_map(|m| m.energy_wh);
            self.end_session(
                &tx,
                req.timestamp,
                meter_stop,
                req.transaction_info
                    .stopped_reason
                    .map(|x| x.as_str().to_owned()),
            )?;
        }
        Ok(v201::TransactionEventResponse {
            id_token_info,
            ..Default::default()
        })
    }
}

/// Folds one sampled value into a measurement. `unit` and `multiplier` are as reported;
/// values are converted to Wh, W, A, V.
fn apply_sample(
    m: &mut Measurement,
    phase_power: &mut [Option<f64>; 3],
    measurand: &str,
    phase: Option<&str>,
    unit: Option<&str>,
    value: f64,
) {
    let scale = match unit {
        Some("kWh" | "kW" | "kvar" | "kvarh" | "kVA") => 1000.0,
        _ => 1.0,
    };
    // Checked after scaling: a huge kWh value becomes infinite only here.
    let value = value * scale;
    if !value.is_finite() {
        return;
    }
    // Only line currents and line-to-neutral values map onto a station phase: neutral current
    // is not a phase, and a line-to-line voltage (~400 V) is not a phase voltage.
    let line = phase.and_then(|p| match p {
        "L1" | "L1-N" => Some(0),
        "L2" | "L2-N" => Some(1),
        "L3" | "L3-N" => Some(2),
        _ => None,
    });
    if phase.is_some() && line.is_none() {
        return;
    }
    match measurand {
        // A per-phase energy register is not the EVSE's total.
        "Energy.Active.Import.Register" if phase.is_none() => m.energy_wh = Some(value),
        // `L1` and `L1-N` name the same phase: the last value wins rather than adding up.
        "Power.Active.Import" => match line {
            Some(i) => phase_power[i] = Some(value),
            None => m.power_w = Some(value),
        },
        "Current.Import" => {
            // Unsigned or not, import current is a magnitude here.
            m.current_a[line.unwrap_or(0)] = Some(value.abs());
        }
        "Current.Offered" => m.offered_a = Some(value),
        "Voltage" => m.voltage_v[line.unwrap_or(0)] = Some(value),
        "SoC" => m.soc_percent = Some(value),
        _ => {}
    }
}

fn finish(mut m: Measurement, phase_power: [Option<f64>; 3]) -> Measurement {
    if m.power_w.is_none() && phase_power.iter().any(Option::is_some) {
        m.power_w = Some(phase_power.iter().flatten().sum());
    }
    m
}

const DEFAULT_MEASURAND: &str = "Energy.Active.Import.Register";

fn measurement_v16(mv: &v16::MeterValue) -> Measurement {
    let mut m = Measurement {
        at: Some(mv.timestamp),
        ..Measurement::default()
    };
    let mut phase_power = [None; 3];
    for sv in &mv.sampled_value {
        // Signed data (format SignedData) is not a number.
        let Ok(value) = sv.value.trim().parse::<f64>() else {
            continue;
        };
        apply_sample(
            &mut m,
            &mut phase_power,
            sv.measurand.map_or(DEFAULT_MEASURAND, |x| x.as_str()),
            sv.phase.map(|x| x.as_str()),
            sv.unit.map(|x| x.as_str()),
            value,
        );
    }
    finish(m, phase_power)
}

fn measurement_v201(mv: &v201::MeterValue) -> Measurement {
    let mut m = Measurement {
        at: Some(mv.timestamp),
        ..Measurement::default()
    };
    let mut phase_power = [None; 3];
    for sv in &mv.sampled_value {
        let unit = sv.unit_of_measure.as_ref().and_then(|u| u.unit.as_deref());
        let multiplier = sv
            .unit_of_measure
            .as_ref()
            .and_then(|u| u.multiplier)
            .unwrap_or(0);
        let value = sv.value * 10f64.powi(multiplier);
        apply_sample(
            &mut m,
            &mut phase_power,
            sv.measurand.map_or(DEFAULT_MEASURAND, |x| x.as_str()),
            sv.phase.map(|x| x.as_str()),
            unit,
            value,
        );
    }
    finish(m, phase_power)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn three_phase_meter_values_in_both_versions() {
        let mv16: v16::MeterValue = serde_json::from_value(json!({
            "timestamp": "2026-11-25T10:00:00Z",
            "sampledValue": [
                {"value": "12.5", "measurand": "Energy.Active.Import.Register", "unit": "kWh"},
                {"value": "16.1", "measurand": "Current.Import", "phase": "L1", "unit": "A"},
                {"value": "15.9", "measurand": "Current.Import", "phase": "L2", "unit": "A"},
                {"value": "-16.0", "measurand": "Current.Import", "phase": "L3", "unit": "A"},
                {"value": "32", "measurand": "Current.Offered", "unit": "A"},
                {"value": "3.7", "measurand": "Power.Active.Import", "phase": "L1", "unit": "kW"},
                {"value": "3700", "measurand": "Power.Active.Import", "phase": "L2", "unit": "W"},
                {"value": "230.5", "measurand": "Voltage", "phase": "L3-N", "unit": "V"}
            ]
        }))
        .expect("valid 1.6 meter value");
        let m = measurement_v16(&mv16);
        assert_eq!(m.energy_wh, Some(12_500.0));
        assert_eq!(m.current_a, [Some(16.1), Some(15.9), Some(16.0)]);
        assert_eq!(m.offered_a, Some(32.0));
        assert_eq!(m.power_w, Some(7_400.0));
        assert_eq!(m.voltage_v, [None, None, Some(230.5)]);

        let mv201: v201::MeterValue = serde_json::from_value(json!({
            "timestamp": "2026-11-25T10:00:00Z",
            "sampledValue": [
                {"value": 12.5, "unitOfMeasure": {"unit": "kWh"}},
                {"value": 11.0, "measurand": "Power.Active.Import", "unitOfMeasure": {"unit": "W", "multiplier": 3}},
                {"value": 16.0, "measurand": "Current.Import", "phase": "L2"}
            ]
        }))
        .expect("valid 2.0.1 meter value");
        let m = measurement_v201(&mv201);
        assert_eq!(
            m.energy_wh,
            Some(12_500.0),
            "default measurand is the energy register"
        );
        assert_eq!(m.power_w, Some(11_000.0));
        assert_eq!(m.current_a, [None, Some(16.0), None]);
    }
}

//! A simulated charging station: OCPP 1.6J or 2.0.1, one or more EVSEs with an EV model each,
//! charging profiles and their composite schedule, reporting as the CSMS configures it, field
//! quirks and faults.
//!
//! Two halves:
//! - [`StationSim`] is the station's state machine and physics. Pure: it takes the time as an
//!   argument, answers the CSMS's calls and queues its own as [`Outgoing`] payloads.
//! - [`spawn`] runs one over a WebSocket (TCP or an in-memory pipe) with the `loadstar-ocpp`
//!   station endpoint, ticks it on tokio's clock (so it runs under paused virtual time), and
//!   carries out faults. Offline it keeps ticking: the EV keeps following the installed profiles.
//!
//! Reporting starts at the spec defaults a fresh charger has (energy register only, every
//! 900 s; no clock-aligned data) until the CSMS changes it with ChangeConfiguration
//! (`MeterValuesSampledData`, `MeterValueSampleInterval`, `MeterValuesAlignedData`,
//! `ClockAlignedDataInterval`) or SetVariables (`SampledDataCtrlr.TxUpdatedMeasurands` /
//! `TxUpdatedInterval`, `AlignedDataCtrlr.Measurands` / `Interval`).

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures_util::{SinkExt, StreamExt};
use loadstar_ocpp::rpc::{CallFailure, IncomingCall};
use loadstar_ocpp::{
    CallId, Endpoint, EndpointConfig, ErrorCode, Event, OcppVersion, Priority, Request, Role,
    Violation, v16, v201,
};
use loadstar_optimizer::model::StationCircuit;
use serde_json::Value;
use tokio::sync::{mpsc, watch};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;

use crate::client::ClientError;
use crate::ev::{Ev, EvSpec};
use crate::profile::{
    ClearFilter, Kind, Profile, ProfileStore, Purpose, RateUnit, Rules, Transaction,
};

/// Longest ramp delay: what IEC 61851-1 allows the car to follow a new PWM duty cycle.
pub const MAX_RAMP_DELAY: Duration = Duration::from_secs(5);

/// The default reporting of a fresh station: energy only, every 15 minutes.
pub const DEFAULT_SAMPLE_INTERVAL_S: u32 = 900;

/// Field behaviours that deviate from the spec (BRIEF §2), each on or off per station.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Quirks {
    /// Rejects schedules in W.
    pub amps_only: bool,
    /// Rejects ChargePointMaxProfile / ChargingStationMaxProfile.
    pub rejects_station_max: bool,
    /// Advertises the usual stack level but accepts only level 0.
    pub max_stack_level_zero: bool,
    /// Rejects Relative and Recurring profiles.
    pub absolute_only: bool,
    /// Forgets every profile when the connection comes back.
    pub drops_profiles_on_reconnect: bool,
    /// After a 0 A limit, the next profile that raises it is accepted and ignored (go-e).
    pub ignores_raise_after_zero: bool,
    /// Accepts profiles and reports them, but the car keeps drawing its maximum.
    pub ignores_profiles: bool,
    /// Reports current magnitudes without sign.
    pub unsigned_currents: bool,
    /// Answers Accepted to every SetChargingProfile and installs none (a firmware bug): the
    /// car may draw the station's max, and its composite schedule says so.
    pub discards_profiles: bool,
}

/// What a station is.
#[derive(Debug, Clone)]
pub struct StationConfig {
    pub id: String,
    pub version: OcppVersion,
    pub evse_count: u32,
    /// How every EVSE of the station is wired to the site.
    pub circuit: StationCircuit,
    /// The station's own rating, amps per phase.
    pub hardware_max_amps: f64,
    /// How long a new limit takes to reach the car; capped at [`MAX_RAMP_DELAY`].
    pub ramp_delay: Duration,
    /// Physics and reporting resolution.
    pub tick: Duration,
    /// Wait before reconnecting after a lost connection.
    pub reconnect_delay: Duration,
    pub quirks: Quirks,
    /// Switches between 3 phases and 1 as a profile's `numberPhases` says
    /// (ConnectorSwitch3to1PhaseSupported / SmartChargingCtrlr.Phases3to1).
    pub switches_phases: bool,
    pub vendor: String,
    pub model: String,
}

impl StationConfig {
    /// A cooperative single-EVSE station.
    pub fn new(id: &str, version: OcppVersion, circuit: StationCircuit) -> Self {
        StationConfig {
            id: id.to_owned(),
            version,
            evse_count: 1,
            circuit,
            hardware_max_amps: 32.0,
            ramp_delay: Duration::from_secs(2),
            tick: Duration::from_secs(1),
            reconnect_delay: Duration::from_secs(10),
            quirks: Quirks::default(),
            switches_phases: false,
            vendor: "Loadstar".to_owned(),
            model: "SimStation".to_owned(),
        }
    }
}

/// Why a command to the simulator was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum StationError {
    #[error("EVSE {0} does not exist")]
    UnknownEvse(u32),
    #[error("EVSE {0} already has a car")]
    Occupied(u32),
    #[error("EVSE {0} has no car")]
    Empty(u32),
    #[error("invalid EV: {0}")]
    Ev(#[from] crate::ev::EvError),
    #[error("hardware max {0} A is not a finite number above 0")]
    HardwareMax(f64),
    #[error("a station has at least one EVSE")]
    NoEvse,
}

/// The energy-related values a station can sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Measurand {
    EnergyImportRegister,
    CurrentImport,
    CurrentOffered,
    PowerImport,
}

impl Measurand {
    pub fn parse(name: &str) -> Option<Self> {
        Some(match name.trim() {
            "Energy.Active.Import.Register" => Measurand::EnergyImportRegister,
            "Current.Import" => Measurand::CurrentImport,
            "Current.Offered" => Measurand::CurrentOffered,
            "Power.Active.Import" => Measurand::PowerImport,
            _ => return None,
        })
    }

    fn parse_list(list: &str) -> Option<Vec<Self>> {
        list.split(',')
            .filter(|s| !s.trim().is_empty())
            .map(Measurand::parse)
            .collect()
    }

    pub const fn name(self) -> &'static str {
        match self {
            Measurand::EnergyImportRegister => "Energy.Active.Import.Register",
            Measurand::CurrentImport => "Current.Import",
            Measurand::CurrentOffered => "Current.Offered",
            Measurand::PowerImport => "Power.Active.Import",
        }
    }
}

fn list_names(list: &[Measurand]) -> String {
    list.iter().map(|m| m.name()).collect::<Vec<_>>().join(",")
}

/// How the station reports.
#[derive(Debug, Clone, PartialEq)]
pub struct Reporting {
    /// During a transaction, every this many seconds (0 = off).
    pub sampled_interval_s: u32,
    pub sampled: Vec<Measurand>,
    /// Clock-aligned, every this many seconds from midnight UTC (0 = off).
    pub aligned_interval_s: u32,
    pub aligned: Vec<Measurand>,
}

impl Default for Reporting {
    fn default() -> Self {
        Reporting {
            sampled_interval_s: DEFAULT_SAMPLE_INTERVAL_S,
            sampled: vec![Measurand::EnergyImportRegister],
            aligned_interval_s: 0,
            aligned: vec![Measurand::EnergyImportRegister],
        }
    }
}

/// What a queued station CALL is for, so its answer can be acted on.
#[derive(Debug, Clone, PartialEq)]
pub enum After {
    Boot,
    Authorize {
        evse: u32,
    },
    /// `number` tells the session apart from later ones on the same EVSE.
    StartTransaction {
        evse: u32,
        number: u32,
    },
    Nothing,
}

/// A CALL the station wants to send.
#[derive(Debug, Clone, PartialEq)]
pub struct Outgoing {
    pub action: &'static str,
    pub payload: Value,
    pub after: After,
    /// Transaction messages are kept until the CSMS has them: queued while offline and sent
    /// again when a connection fails before their answer (OCPP's offline behaviour).
    pub keep: bool,
}

/// Most transaction messages held while offline; beyond, the oldest are dropped.
pub const OFFLINE_QUEUE_CAPACITY: usize = 1000;

#[derive(Debug, Clone, PartialEq)]
struct Session {
    /// The id profiles and the CSMS know; for 1.6 only once StartTransaction is answered.
    id: Option<String>,
    number: u32,
    started: DateTime<Utc>,
    seq_no: i32,
    id_tag: String,
    next_sample: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq)]
struct EvseState {
    id: u32,
    ev: Option<Ev>,
    /// Waiting for Authorize, with the tag.
    authorizing: Option<String>,
    session: Option<Session>,
    register_wh: f64,
    /// What the profiles allow now (after quirks).
    target_amps: f64,
    /// What the car has been told (the PWM duty cycle): follows the target after the ramp.
    offered_amps: f64,
    /// The phases the station gives the car (3, or 1 once switched); follows `numberPhases`
    /// after the ramp, like the current.
    phases: u8,
    /// A new target (amps, phases) and when it reaches the car.
    ramp: Option<(DateTime<Utc>, f64, u8)>,
    /// What the car draws now, per phase.
    measured_amps: f64,
    /// The go-e quirk has swallowed its raise since the last 0 A.
    raise_swallowed: bool,
    status: EvseStatus,
}

/// The station's view of one EVSE, for tests and runners.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EvseStatus {
    Available,
    Preparing,
    Charging,
    SuspendedEv,
    SuspendedEvse,
}

/// One EVSE as the simulator sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct EvseSnapshot {
    pub id: u32,
    pub status: EvseStatus,
    pub measured_amps: f64,
    pub offered_amps: f64,
    pub target_amps: f64,
    /// What the installed profiles command, whatever the station's quirks make of it (for
    /// attributing non-compliance).
    pub commanded_amps: f64,
    pub soc: Option<f64>,
    pub delivered_wh: Option<f64>,
    pub register_wh: f64,
    pub transaction_id: Option<String>,
    /// Phases the car uses (0 without a car).
    pub phases: u8,
}

/// The whole station as the simulator sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct StationSnapshot {
    pub at: DateTime<Utc>,
    /// SetChargingProfile calls received, accepted or not.
    pub profiles_received: u32,
    pub online: bool,
    pub booted: bool,
    pub profiles: usize,
    pub reporting: Reporting,
    pub evses: Vec<EvseSnapshot>,
}

/// The station's state machine.
#[derive(Debug, Clone)]
pub struct StationSim {
    config: StationConfig,
    store: ProfileStore,
    /// What a station with `discards_profiles` told the CSMS it installed (for attributing
    /// its excess to it, not to the controller).
    claimed: ProfileStore,
    evses: Vec<EvseState>,
    reporting: Reporting,
    heartbeat_s: u32,
    online: bool,
    booted: bool,
    next_heartbeat: DateTime<Utc>,
    /// When to send BootNotification again after Pending or Rejected.
    boot_retry: Option<DateTime<Utc>>,
    next_aligned: Option<DateTime<Utc>>,
    last_tick: DateTime<Utc>,
    transactions_started: u32,
    profiles_received: u32,
    outbox: Vec<Outgoing>,
    /// Transaction messages waiting for a connection.
    offline_queue: std::collections::VecDeque<Outgoing>,
    /// 1.6 sessions that ended before their StartTransaction was answered: the stop waits for
    /// the transaction id. Keyed by session number.
    stops_waiting: HashMap<u32, v16::StopTransactionRequest>,
}

impl StationSim {
    pub fn new(mut config: StationConfig, now: DateTime<Utc>) -> Result<Self, StationError> {
        if config.evse_count == 0 {
            return Err(StationError::NoEvse);
        }
        if !(config.hardware_max_amps.is_finite() && config.hardware_max_amps > 0.0) {
            return Err(StationError::HardwareMax(config.hardware_max_amps));
        }
        config.ramp_delay = config.ramp_delay.min(MAX_RAMP_DELAY);
        let rules = match config.version {
            OcppVersion::V16 => Rules::V16,
            OcppVersion::V201 => Rules::V201,
        };
        let max_level = if config.quirks.max_stack_level_zero {
            0
        } else {
            ADVERTISED_STACK_LEVEL
        };
        let evses = (1..=config.evse_count)
            .map(|id| EvseState {
                id,
                ev: None,
                authorizing: None,
                session: None,
                register_wh: 0.0,
                target_amps: config.hardware_max_amps,
                offered_amps: 0.0,
                phases: 3,
                ramp: None,
                measured_amps: 0.0,
                raise_swallowed: false,
                status: EvseStatus::Available,
            })
            .collect();
        Ok(StationSim {
            store: ProfileStore::new(rules, config.evse_count, max_level),
            claimed: ProfileStore::new(rules, config.evse_count, max_level),
            config,
            evses,
            reporting: Reporting::default(),
            heartbeat_s: 300,
            online: false,
            booted: false,
            next_heartbeat: now,
            boot_retry: None,
            next_aligned: None,
            last_tick: now,
            transactions_started: 0,
            profiles_received: 0,
            outbox: Vec::new(),
            offline_queue: std::collections::VecDeque::new(),
            stops_waiting: HashMap::new(),
        })
    }

    pub fn config(&self) -> &StationConfig {
        &self.config
    }

    pub fn reporting(&self) -> &Reporting {
        &self.reporting
    }

    pub fn profiles(&self) -> &ProfileStore {
        &self.store
    }

    /// The CALLs queued since the last call.
    pub fn take_outbox(&mut self) -> Vec<Outgoing> {
        std::mem::take(&mut self.outbox)
    }

    /// A connection to the CSMS is up: boot first.
    pub fn connected(&mut self) {
        self.online = true;
        self.booted = false;
        self.boot_retry = None;
        self.outbox.clear();
        if self.config.quirks.drops_profiles_on_reconnect && !self.store.is_empty() {
            tracing::info!(station = %self.config.id, profiles = self.store.len(),
                "quirk: dropping charging profiles on reconnect");
            self.store.clear_all();
        }
        self.send_boot();
    }

    fn send_boot(&mut self) {
        let payload = match self.config.version {
            OcppVersion::V16 => to_value(&v16::BootNotificationRequest {
                charge_point_vendor: self.config.vendor.clone(),
                charge_point_model: self.config.model.clone(),
                ..Default::default()
            }),
            OcppVersion::V201 => to_value(&v201::BootNotificationRequest {
                charging_station: v201::ChargingStation {
                    model: self.config.model.clone(),
                    vendor_name: self.config.vendor.clone(),
                    ..Default::default()
                },
                reason: v201::BootReasonEnum::PowerUp,
                ..Default::default()
            }),
        };
        self.push(boot_action(), payload, After::Boot);
    }

    /// The connection is gone. Queued messages are lost; the station keeps charging.
    pub fn disconnected(&mut self) {
        self.online = false;
        self.booted = false;
        // Transaction messages not yet handed to the connection wait for the next one.
        let kept: Vec<Outgoing> = self.outbox.drain(..).filter(|o| o.keep).collect();
        for message in kept.into_iter().rev() {
            self.requeue(message);
        }
    }

    /// A reboot: sessions end (the cars stay plugged in but stop), reporting and profiles
    /// survive as they do in non-volatile memory.
    pub fn reboot(&mut self, now: DateTime<Utc>) {
        self.disconnected();
        for i in 0..self.evses.len() {
            // The stop (reason Reboot) is held and sent after the next boot.
            self.end_session(i, now, Stopped::Reboot);
            let evse = &mut self.evses[i];
            evse.authorizing = None;
            evse.offered_amps = 0.0;
            evse.measured_amps = 0.0;
            evse.ramp = None;
            evse.status = if evse.ev.is_some() {
                EvseStatus::Preparing
            } else {
                EvseStatus::Available
            };
        }
        self.last_tick = now;
    }

    /// A car arrives at `evse` and the driver presents `id_tag`.
    pub fn plug_in(
        &mut self,
        evse: u32,
        spec: EvSpec,
        id_tag: &str,
        now: DateTime<Utc>,
    ) -> Result<(), StationError> {
        let ev = Ev::new(spec)?;
        let index = self.index(evse)?;
        if self.evses[index].ev.is_some() {
            return Err(StationError::Occupied(evse));
        }
        self.evses[index].ev = Some(ev);
        self.set_status(index, EvseStatus::Preparing, now);
        if !(self.online && self.booted) {
            // Offline: authorize locally (LocalAuthorizeOffline) and start charging.
            tracing::info!(station = %self.config.id, evse, "offline: local authorization");
            self.start_session(index, id_tag.to_owned(), now);
            return Ok(());
        }
        self.evses[index].authorizing = Some(id_tag.to_owned());
        let payload = match self.config.version {
            OcppVersion::V16 => to_value(&v16::AuthorizeRequest {
                id_tag: id_tag.to_owned(),
            }),
            OcppVersion::V201 => to_value(&v201::AuthorizeRequest {
                id_token: id_token(id_tag),
                ..Default::default()
            }),
        };
        self.push("Authorize", payload, After::Authorize { evse });
        Ok(())
    }

    /// The car at `evse` leaves: the session ends.
    pub fn unplug(&mut self, evse: u32, now: DateTime<Utc>) -> Result<(), StationError> {
        let index = self.index(evse)?;
        if self.evses[index].ev.is_none() {
            return Err(StationError::Empty(evse));
        }
        self.end_session(index, now, Stopped::EvDisconnected);
        let e = &mut self.evses[index];
        e.ev = None;
        e.authorizing = None;
        e.offered_amps = 0.0;
        e.measured_amps = 0.0;
        e.ramp = None;
        self.set_status(index, EvseStatus::Available, now);
        Ok(())
    }

    fn index(&self, evse: u32) -> Result<usize, StationError> {
        if evse == 0 || evse > self.config.evse_count {
            return Err(StationError::UnknownEvse(evse));
        }
        Ok(evse as usize - 1)
    }

    fn push(&mut self, action: &'static str, payload: Result<Value, Violation>, after: After) {
        match payload {
            Ok(payload) => self.outbox.push(Outgoing {
                action,
                payload,
                after,
                keep: false,
            }),
            Err(e) => tracing::warn!(station = %self.config.id, action, %e, "cannot encode"),
        }
    }

    /// Queues a station CALL only when the CSMS accepted our boot (messages while offline are
    /// not kept: this simulator has no offline queue).
    fn push_live(&mut self, action: &'static str, payload: Result<Value, Violation>) {
        if self.online && self.booted {
            self.push(action, payload, After::Nothing);
        }
    }

    /// Queues a transaction message: sent now when booted, else held for the next connection.
    fn push_kept(&mut self, action: &'static str, payload: Result<Value, Violation>, after: After) {
        let Ok(mut payload) = payload else {
            return self.push(action, payload, after);
        };
        let out = if self.online && self.booted {
            &mut self.outbox
        } else {
            // 2.0.1 marks events that happened offline.
            if action == "TransactionEvent"
                && let Some(map) = payload.as_object_mut()
            {
                map.insert("offline".to_owned(), Value::Bool(true));
            }
            if self.offline_queue.len() >= OFFLINE_QUEUE_CAPACITY {
                tracing::warn!(station = %self.config.id, "offline queue full: oldest message dropped");
                self.offline_queue.pop_front();
            }
            self.offline_queue.push_back(Outgoing {
                action,
                payload,
                after,
                keep: true,
            });
            return;
        };
        out.push(Outgoing {
            action,
            payload,
            after,
            keep: true,
        });
    }

    /// A kept message whose connection failed before its answer: it goes out again after the
    /// next boot, ahead of newer ones.
    pub fn requeue(&mut self, message: Outgoing) {
        if self.offline_queue.len() >= OFFLINE_QUEUE_CAPACITY {
            self.offline_queue.pop_back();
        }
        self.offline_queue.push_front(message);
    }

    /// Transaction messages held for the CSMS.
    pub fn offline_queue_len(&self) -> usize {
        self.offline_queue.len()
    }

    fn transaction(&self, index: usize) -> Option<Transaction> {
        let s = self.evses[index].session.as_ref()?;
        Some(Transaction {
            id: s.id.clone()?,
            started: s.started,
        })
    }

    fn start_session(&mut self, index: usize, id_tag: String, now: DateTime<Utc>) {
        self.transactions_started += 1;
        let evse = self.evses[index].id;
        let local_id = format!("{}-{evse}-{}", self.config.id, self.transactions_started);
        let number = self.transactions_started;
        let session = Session {
            id: match self.config.version {
                OcppVersion::V16 => None,
                OcppVersion::V201 => Some(local_id.clone()),
            },
            number,
            started: now,
            seq_no: 0,
            id_tag: id_tag.clone(),
            next_sample: now + secs(self.reporting.sampled_interval_s),
        };
        self.evses[index].session = Some(session);
        self.evses[index].register_wh = self.evses[index].register_wh.round();
        let meter_start = self.evses[index].register_wh as i64;
        // The car gets the current limit straight away: the first PWM after authorization.
        let target = self.target_amps(index, now);
        let phases = self.told_phases(now)[index];
        let e = &mut self.evses[index];
        e.target_amps = target;
        e.offered_amps = target;
        e.phases = phases;
        e.ramp = None;
        match self.config.version {
            OcppVersion::V16 => {
                let payload = to_value(&v16::StartTransactionRequest {
                    connector_id: evse as i32,
                    id_tag,
                    meter_start,
                    timestamp: now,
                    ..Default::default()
                });
                self.push_kept(
                    "StartTransaction",
                    payload,
                    After::StartTransaction { evse, number },
                );
            }
            OcppVersion::V201 => {
                let payload = self.transaction_event(
                    index,
                    v201::TransactionEventEnum::Started,
                    v201::TriggerReasonEnum::Authorized,
                    now,
                    Some(vec![self.meter_value_v201(
                        index,
                        &[Measurand::EnergyImportRegister],
                        now,
                        Some(v201::ReadingContextEnum::TransactionBegin),
                    )]),
                );
                self.push_kept("TransactionEvent", payload, After::Nothing);
                self.notify_charging_needs(index);
            }
        }
    }

    fn notify_charging_needs(&mut self, index: usize) {
        let Some(ev) = &self.evses[index].ev else {
            return;
        };
        if !ev.spec().iso15118 {
            return;
        }
        let spec = ev.spec();
        let mode = match self.config.circuit.active_phases(spec.phases) {
            1 => v201::EnergyTransferModeEnum::ACSinglePhase,
            2 => v201::EnergyTransferModeEnum::ACTwoPhase,
            _ => v201::EnergyTransferModeEnum::ACThreePhase,
        };
        let payload = to_value(&v201::NotifyEVChargingNeedsRequest {
            evse_id: self.evses[index].id as i32,
            charging_needs: v201::ChargingNeeds {
                ac_charging_parameters: Some(v201::ACChargingParameters {
                    energy_amount: ev.needed_wh().round() as i32,
                    ev_min_current: spec.min_amps.ceil() as i32,
                    ev_max_current: spec.max_amps.floor() as i32,
                    ev_max_voltage: self.config.circuit.model().line_voltage_v().round() as i32,
                    ..Default::default()
                }),
                requested_energy_transfer: mode,
                departure_time: spec.departure,
                ..Default::default()
            },
            ..Default::default()
        });
        self.push_live("NotifyEVChargingNeeds", payload);
    }

    fn end_session(&mut self, index: usize, now: DateTime<Utc>, why: Stopped) {
        let Some(session) = self.evses[index].session.take() else {
            return;
        };
        let evse = self.evses[index].id;
        if let Some(id) = &session.id {
            self.store.transaction_ended(evse, id);
        }
        let meter_stop = self.evses[index].register_wh.round() as i64;
        match self.config.version {
            OcppVersion::V16 => {
                let mut stop = v16::StopTransactionRequest {
                    id_tag: Some(session.id_tag.clone()),
                    meter_stop,
                    timestamp: now,
                    transaction_id: 0,
                    reason: Some(match why {
                        Stopped::EvDisconnected => v16::Reason::EVDisconnected,
                        Stopped::Reboot => v16::Reason::Reboot,
                    }),
                    ..Default::default()
                };
                match session.id.as_ref().and_then(|id| id.parse::<i32>().ok()) {
                    Some(id) => {
                        stop.transaction_id = id;
                        self.push_kept("StopTransaction", to_value(&stop), After::Nothing);
                    }
                    // Started offline and not yet answered: the stop waits for the id.
                    None => {
                        self.stops_waiting.insert(session.number, stop);
                    }
                }
            }
            OcppVersion::V201 => {
                let mv = self.meter_value_v201(
                    index,
                    &[Measurand::EnergyImportRegister],
                    now,
                    Some(v201::ReadingContextEnum::TransactionEnd),
                );
                // Put the session back just long enough to build the event from it.
                self.evses[index].session = Some(session);
                let trigger = match why {
                    Stopped::EvDisconnected => v201::TriggerReasonEnum::EVDeparted,
                    Stopped::Reboot => v201::TriggerReasonEnum::ResetCommand,
                };
                let mut payload = self.transaction_event(
                    index,
                    v201::TransactionEventEnum::Ended,
                    trigger,
                    now,
                    Some(vec![mv]),
                );
                if why == Stopped::Reboot
                    && let Ok(p) = payload.as_mut()
                {
                    p["transactionInfo"]["stoppedReason"] = Value::String("Reboot".into());
                }
                self.evses[index].session = None;
                self.push_kept("TransactionEvent", payload, After::Nothing);
            }
        }
    }

    fn transaction_event(
        &mut self,
        index: usize,
        kind: v201::TransactionEventEnum,
        trigger: v201::TriggerReasonEnum,
        now: DateTime<Utc>,
        meter_value: Option<Vec<v201::MeterValue>>,
    ) -> Result<Value, Violation> {
        let status = self.evses[index].status;
        let evse = self.evses[index].id as i32;
        let phases = self.evses[index]
            .ev
            .as_ref()
            .map(|_| self.config.circuit.active_phases(self.ev_phases(index)));
        let Some(session) = self.evses[index].session.as_mut() else {
            return Err(Violation::new(ErrorCode::InternalError, "no session"));
        };
        let seq_no = session.seq_no;
        session.seq_no += 1;
        let started = kind == v201::TransactionEventEnum::Started;
        to_value(&v201::TransactionEventRequest {
            event_type: kind,
            meter_value,
            timestamp: now,
            trigger_reason: trigger,
            seq_no,
            number_of_phases_used: phases.map(i32::from),
            transaction_info: v201::Transaction {
                transaction_id: session.id.clone().unwrap_or_default(),
                charging_state: Some(match kind {
                    v201::TransactionEventEnum::Ended => v201::ChargingStateEnum::Idle,
                    _ => charging_state(status),
                }),
                stopped_reason: (kind == v201::TransactionEventEnum::Ended)
                    .then_some(v201::ReasonEnum::EVDisconnected),
                ..Default::default()
            },
            evse: started.then_some(v201::EVSE {
                id: evse,
                connector_id: Some(1),
                ..Default::default()
            }),
            id_token: started.then(|| id_token(&session.id_tag)),
            ..Default::default()
        })
    }

    /// Acts on the answer to one of our CALLs.
    pub fn handle_response(
        &mut self,
        after: After,
        result: Result<Value, CallFailure>,
        now: DateTime<Utc>,
    ) {
        let result = match result {
            Ok(v) => v,
            Err(e) => {
                tracing::debug!(station = %self.config.id, ?after, %e, "call failed");
                // No answer to Authorize (timeout, lost connection): authorize locally, as
                // chargers with LocalAuthorizeOffline do.
                if let After::Authorize { evse } = after
                    && matches!(e, CallFailure::Timeout | CallFailure::Closed)
                    && let Ok(index) = self.index(evse)
                    && self.evses[index].ev.is_some()
                    && let Some(tag) = self.evses[index].authorizing.take()
                {
                    self.start_session(index, tag, now);
                }
                return;
            }
        };
        match after {
            After::Boot => {
                let (accepted, interval) = match self.config.version {
                    OcppVersion::V16 => {
                        serde_json::from_value::<v16::BootNotificationResponse>(result)
                            .map(|r| (r.status == v16::RegistrationStatus::Accepted, r.interval))
                            .unwrap_or((false, 60))
                    }
                    OcppVersion::V201 => {
                        serde_json::from_value::<v201::BootNotificationResponse>(result)
                            .map(|r| {
                                (
                                    r.status == v201::RegistrationStatusEnum::Accepted,
                                    r.interval,
                                )
                            })
                            .unwrap_or((false, 60))
                    }
                };
                if interval > 0 {
                    self.heartbeat_s = interval as u32;
                }
                self.next_heartbeat = now + secs(self.heartbeat_s);
                if !accepted {
                    tracing::info!(station = %self.config.id, retry_s = self.heartbeat_s,
                        "boot not accepted; retrying");
                    self.boot_retry = Some(now + secs(self.heartbeat_s));
                }
                if accepted {
                    self.booted = true;
                    for index in 0..self.evses.len() {
                        self.send_status(index, now);
                    }
                    if !self.offline_queue.is_empty() {
                        tracing::info!(station = %self.config.id,
                            messages = self.offline_queue.len(), "sending what was held offline");
                    }
                    self.outbox.extend(self.offline_queue.drain(..));
                }
            }
            After::Authorize { evse } => {
                let Ok(index) = self.index(evse) else { return };
                let accepted = match self.config.version {
                    OcppVersion::V16 => serde_json::from_value::<v16::AuthorizeResponse>(result)
                        .is_ok_and(|r| r.id_tag_info.status == v16::AuthorizationStatus::Accepted),
                    OcppVersion::V201 => serde_json::from_value::<v201::AuthorizeResponse>(result)
                        .is_ok_and(|r| {
                            r.id_token_info.status == v201::AuthorizationStatusEnum::Accepted
                        }),
                };
                match self.evses[index].authorizing.take() {
                    Some(tag) if accepted && self.evses[index].ev.is_some() => {
                        self.start_session(index, tag, now);
                    }
                    _ => tracing::info!(station = %self.config.id, evse, "not authorized"),
                }
            }
            After::StartTransaction { evse, number } => {
                let Ok(index) = self.index(evse) else { return };
                let Ok(r) = serde_json::from_value::<v16::StartTransactionResponse>(result) else {
                    return;
                };
                if let Some(session) = self.evses[index].session.as_mut()
                    && session.number == number
                {
                    session.id = Some(r.transaction_id.to_string());
                } else if let Some(mut stop) = self.stops_waiting.remove(&number) {
                    stop.transaction_id = r.transaction_id;
                    self.push_kept("StopTransaction", to_value(&stop), After::Nothing);
                }
            }
            After::Nothing => {}
        }
    }

    /// Advances physics, ramps and periodic reporting to `now`.
    pub fn tick(&mut self, now: DateTime<Utc>) {
        let dt = (now - self.last_tick).num_milliseconds().max(0) as f64 / 1000.0;
        self.last_tick = now;
        let circuit = self.config.circuit;
        let targets = self.targets(now);
        let told = self.told_phases(now);
        for (index, &target) in targets.iter().enumerate() {
            // Energy over the interval just ended, at the draw fixed at its start.
            {
                let phases = self.ev_phases(index);
                let e = &mut self.evses[index];
                if e.session.is_some()
                    && let Some(ev) = e.ev.as_mut()
                {
                    let step = ev.step(e.offered_amps, dt, &circuit, phases);
                    e.register_wh += step.wh;
                }
            }
            let ramp_delay = chrono::Duration::from_std(self.config.ramp_delay)
                .unwrap_or(chrono::Duration::zero());
            let e = &mut self.evses[index];
            if e.session.is_some() {
                let pending_phases = e.ramp.map_or(e.phases, |(_, _, p)| p);
                if target != e.target_amps || told[index] != pending_phases {
                    // A ramp already under way keeps its deadline: a change never waits
                    // longer than the ramp delay after the first one.
                    let due = e.ramp.map_or(now + ramp_delay, |(due, _, _)| due);
                    e.ramp = Some((due, target, told[index]));
                }
                if let Some((due, amps, phases)) = e.ramp
                    && now >= due
                {
                    e.offered_amps = amps;
                    e.phases = phases;
                    e.ramp = None;
                }
            }
            e.target_amps = target;
            e.measured_amps = match (&e.session, &e.ev) {
                (Some(_), Some(ev)) => ev.draw(e.offered_amps),
                _ => 0.0,
            };
            let status = match (&e.session, &e.ev) {
                (Some(_), Some(ev)) if e.measured_amps > 0.0 => EvseStatus::Charging,
                (Some(_), Some(ev)) if ev.satisfied() => EvseStatus::SuspendedEv,
                (Some(_), Some(_)) => EvseStatus::SuspendedEvse,
                (None, Some(_)) => EvseStatus::Preparing,
                _ => EvseStatus::Available,
            };
            self.set_status(index, status, now);
            self.sample(index, now);
        }
        self.aligned(now);
        if self.online
            && !self.booted
            && let Some(retry) = self.boot_retry
            && now >= retry
        {
            self.boot_retry = None;
            self.send_boot();
        }
        if self.online && self.booted && now >= self.next_heartbeat {
            self.next_heartbeat = now + secs(self.heartbeat_s);
            self.push_live("Heartbeat", Ok(serde_json::json!({})));
        }
    }

    fn sample(&mut self, index: usize, now: DateTime<Utc>) {
        let interval = self.reporting.sampled_interval_s;
        let Some(session) = self.evses[index].session.as_mut() else {
            return;
        };
        if interval == 0 || now < session.next_sample {
            return;
        }
        session.next_sample = now + secs(interval);
        let measurands = self.reporting.sampled.clone();
        match self.config.version {
            OcppVersion::V16 => {
                let transaction_id = session.id.as_ref().and_then(|id| id.parse().ok());
                let mv = self.meter_value_v16(
                    index,
                    &measurands,
                    now,
                    v16::ReadingContext::SamplePeriodic,
                );
                let payload = to_value(&v16::MeterValuesRequest {
                    connector_id: self.evses[index].id as i32,
                    transaction_id,
                    meter_value: vec![mv],
                });
                self.push_kept("MeterValues", payload, After::Nothing);
            }
            OcppVersion::V201 => {
                let mv = self.meter_value_v201(
                    index,
                    &measurands,
                    now,
                    Some(v201::ReadingContextEnum::SamplePeriodic),
                );
                let payload = self.transaction_event(
                    index,
                    v201::TransactionEventEnum::Updated,
                    v201::TriggerReasonEnum::MeterValuePeriodic,
                    now,
                    Some(vec![mv]),
                );
                self.push_kept("TransactionEvent", payload, After::Nothing);
            }
        }
    }

    fn aligned(&mut self, now: DateTime<Utc>) {
        let interval = i64::from(self.reporting.aligned_interval_s);
        if interval == 0 {
            self.next_aligned = None;
            return;
        }
        let next = *self.next_aligned.get_or_insert_with(|| {
            let t = now.timestamp();
            DateTime::from_timestamp(t - t.rem_euclid(interval) + interval, 0).unwrap_or(now)
        });
        if now < next {
            return;
        }
        self.next_aligned = Some(next + chrono::Duration::seconds(interval));
        let measurands = self.reporting.aligned.clone();
        for index in 0..self.evses.len() {
            let evse = self.evses[index].id as i32;
            let payload = match self.config.version {
                OcppVersion::V16 => to_value(&v16::MeterValuesRequest {
                    connector_id: evse,
                    transaction_id: self.evses[index]
                        .session
                        .as_ref()
                        .and_then(|s| s.id.as_ref()?.parse().ok()),
                    meter_value: vec![self.meter_value_v16(
                        index,
                        &measurands,
                        now,
                        v16::ReadingContext::SampleClock,
                    )],
                }),
                OcppVersion::V201 => to_value(&v201::MeterValuesRequest {
                    evse_id: evse,
                    meter_value: vec![self.meter_value_v201(
                        index,
                        &measurands,
                        now,
                        Some(v201::ReadingContextEnum::SampleClock),
                    )],
                    ..Default::default()
                }),
            };
            self.push_live("MeterValues", payload);
        }
    }

    /// Values of one EVSE: (measurand, phase index 0..3 or None, value).
    fn readings(
        &self,
        index: usize,
        measurands: &[Measurand],
    ) -> Vec<(Measurand, Option<usize>, f64)> {
        let e = &self.evses[index];
        let ev_phases = self.ev_phases(index);
        let active = usize::from(self.config.circuit.active_phases(ev_phases));
        let station_phases = usize::from(self.config.circuit.wiring().phase_count());
        let sign = |v: f64| {
            if self.config.quirks.unsigned_currents {
                v.abs()
            } else {
                v
            }
        };
        let mut out = Vec::new();
        for &m in measurands {
            match m {
                Measurand::EnergyImportRegister => out.push((m, None, e.register_wh.round())),
                Measurand::CurrentImport => {
                    for phase in 0..station_phases {
                        let amps = if phase < active { e.measured_amps } else { 0.0 };
                        out.push((m, Some(phase), sign(amps)));
                    }
                }
                Measurand::CurrentOffered => out.push((m, None, e.offered_amps)),
                Measurand::PowerImport => out.push((
                    m,
                    None,
                    self.config
                        .circuit
                        .amps_to_watts(ev_phases, e.measured_amps)
                        .round(),
                )),
            }
        }
        out
    }

    fn meter_value_v16(
        &self,
        index: usize,
        measurands: &[Measurand],
        now: DateTime<Utc>,
        context: v16::ReadingContext,
    ) -> v16::MeterValue {
        let sampled_value = self
            .readings(index, measurands)
            .into_iter()
            .map(|(m, phase, value)| {
                let (measurand, unit, text) = match m {
                    Measurand::EnergyImportRegister => (
                        v16::Measurand::EnergyActiveImportRegister,
                        v16::UnitOfMeasure::Wh,
                        format!("{value:.0}"),
                    ),
                    Measurand::CurrentImport => (
                        v16::Measurand::CurrentImport,
                        v16::UnitOfMeasure::A,
                        format!("{value:.1}"),
                    ),
                    Measurand::CurrentOffered => (
                        v16::Measurand::CurrentOffered,
                        v16::UnitOfMeasure::A,
                        format!("{value:.1}"),
                    ),
                    Measurand::PowerImport => (
                        v16::Measurand::PowerActiveImport,
                        v16::UnitOfMeasure::W,
                        format!("{value:.0}"),
                    ),
                };
                v16::SampledValue {
                    value: text,
                    context: Some(context),
                    measurand: Some(measurand),
                    phase: phase.map(|p| [v16::Phase::L1, v16::Phase::L2, v16::Phase::L3][p]),
                    unit: Some(unit),
                    ..Default::default()
                }
            })
            .collect();
        v16::MeterValue {
            timestamp: now,
            sampled_value,
        }
    }

    fn meter_value_v201(
        &self,
        index: usize,
        measurands: &[Measurand],
        now: DateTime<Utc>,
        context: Option<v201::ReadingContextEnum>,
    ) -> v201::MeterValue {
        let sampled_value = self
            .readings(index, measurands)
            .into_iter()
            .map(|(m, phase, value)| {
                let measurand = match m {
                    Measurand::EnergyImportRegister => {
                        v201::MeasurandEnum::EnergyActiveImportRegister
                    }
                    Measurand::CurrentImport => v201::MeasurandEnum::CurrentImport,
                    Measurand::CurrentOffered => v201::MeasurandEnum::CurrentOffered,
                    Measurand::PowerImport => v201::MeasurandEnum::PowerActiveImport,
                };
                v201::SampledValue {
                    value: (value * 10.0).round() / 10.0,
                    context,
                    measurand: Some(measurand),
                    phase: phase.map(|p| {
                        [
                            v201::PhaseEnum::L1,
                            v201::PhaseEnum::L2,
                            v201::PhaseEnum::L3,
                        ][p]
                    }),
                    ..Default::default()
                }
            })
            .collect();
        v201::MeterValue {
            timestamp: now,
            sampled_value,
            ..Default::default()
        }
    }

    fn set_status(&mut self, index: usize, status: EvseStatus, now: DateTime<Utc>) {
        if self.evses[index].status == status {
            return;
        }
        self.evses[index].status = status;
        if self.config.version == OcppVersion::V201
            && self.evses[index].session.is_some()
            && matches!(
                status,
                EvseStatus::Charging | EvseStatus::SuspendedEv | EvseStatus::SuspendedEvse
            )
        {
            let payload = self.transaction_event(
                index,
                v201::TransactionEventEnum::Updated,
                v201::TriggerReasonEnum::ChargingStateChanged,
                now,
                None,
            );
            self.push_live("TransactionEvent", payload);
        }
        self.send_status(index, now);
    }

    fn send_status(&mut self, index: usize, now: DateTime<Utc>) {
        let evse = self.evses[index].id as i32;
        let status = self.evses[index].status;
        let payload = match self.config.version {
            OcppVersion::V16 => to_value(&v16::StatusNotificationRequest {
                connector_id: evse,
                error_code: v16::ChargePointErrorCode::NoError,
                status: match status {
                    EvseStatus::Available => v16::ChargePointStatus::Available,
                    EvseStatus::Preparing => v16::ChargePointStatus::Preparing,
                    EvseStatus::Charging => v16::ChargePointStatus::Charging,
                    EvseStatus::SuspendedEv => v16::ChargePointStatus::SuspendedEV,
                    EvseStatus::SuspendedEvse => v16::ChargePointStatus::SuspendedEVSE,
                },
                timestamp: Some(now),
                ..Default::default()
            }),
            OcppVersion::V201 => {
                // 2.0.1 connector status says only whether a car is there; the charging state
                // travels in TransactionEvent.
                if status != EvseStatus::Available
                    && status != EvseStatus::Preparing
                    && self.evses[index].session.is_some()
                {
                    return;
                }
                to_value(&v201::StatusNotificationRequest {
                    timestamp: now,
                    connector_status: if status == EvseStatus::Available {
                        v201::ConnectorStatusEnum::Available
                    } else {
                        v201::ConnectorStatusEnum::Occupied
                    },
                    evse_id: evse,
                    connector_id: 1,
                    ..Default::default()
                })
            }
        };
        self.push_live("StatusNotification", payload);
    }

    /// The phases each EVSE's own profile tells the car to use: its `numberPhases` on a
    /// station that switches phases, else always 3 (the car uses what it has).
    fn told_phases(&self, now: DateTime<Utc>) -> Vec<u8> {
        (0..self.evses.len())
            .map(|i| {
                if !self.config.switches_phases || self.config.quirks.ignores_profiles {
                    return 3;
                }
                let tx = self.transaction(i);
                let store = if self.config.quirks.discards_profiles {
                    // It installs nothing: the car stays on all phases.
                    return 3;
                } else {
                    &self.store
                };
                store
                    .evse_limit_at(self.evses[i].id, now, tx.as_ref(), &self.config.circuit)
                    .map_or(3, |l| l.phases)
            })
            .collect()
    }

    /// The phases the car on EVSE `index` draws on: its own, at most what the station gives it
    /// (0 without a car).
    fn ev_phases(&self, index: usize) -> u8 {
        let e = &self.evses[index];
        e.ev.as_ref()
            .map_or(0, |ev| ev.spec().phases.min(e.phases.max(1)))
    }

    /// What the installed profiles allow on EVSE `index` now, after the quirks.
    fn target_amps(&self, index: usize, now: DateTime<Utc>) -> f64 {
        self.targets(now)[index]
    }

    /// What the installed profiles allow on every EVSE now, after the quirks. A station-wide
    /// cap (ChargePointMax / ChargingStationMax on EVSE 0) is the whole station's: it is shared
    /// by water-filling among the EVSEs with a session, so together they stay under it.
    fn targets(&self, now: DateTime<Utc>) -> Vec<f64> {
        if self.config.quirks.ignores_profiles {
            return vec![self.config.hardware_max_amps; self.evses.len()];
        }
        self.limits_of(&self.store, now)
    }

    /// What the installed profiles allow on every EVSE, shared cap included, before the quirks
    /// (for a station that discards profiles: what it claimed to install).
    fn commanded(&self, now: DateTime<Utc>) -> Vec<f64> {
        if self.config.quirks.discards_profiles {
            return self.limits_of(&self.claimed, now);
        }
        self.limits_of(&self.store, now)
    }

    fn limits_of(&self, store: &ProfileStore, now: DateTime<Utc>) -> Vec<f64> {
        let hw = self.config.hardware_max_amps;
        let circuit = &self.config.circuit;
        let mut own: Vec<f64> = (0..self.evses.len())
            .map(|i| {
                let tx = self.transaction(i);
                store
                    .evse_limit_at(self.evses[i].id, now, tx.as_ref(), circuit)
                    .map_or(hw, |l| l.amps.min(hw))
            })
            .collect();
        let Some(cap) = store.station_cap_at(now, circuit) else {
            return own;
        };
        let mut active: Vec<usize> = (0..self.evses.len())
            .filter(|&i| self.evses[i].session.is_some())
            .collect();
        active.sort_by(|&a, &b| own[a].total_cmp(&own[b]));
        let mut left = cap.amps.max(0.0);
        for (k, &i) in active.iter().enumerate() {
            let share = left / (active.len() - k) as f64;
            own[i] = own[i].min(share);
            left -= own[i];
        }
        // EVSEs without a session would get at most the whole cap.
        for (i, amps) in own.iter_mut().enumerate() {
            if self.evses[i].session.is_none() {
                *amps = amps.min(cap.amps);
            }
        }
        own
    }

    /// A snapshot for tests and runners.
    pub fn snapshot(&self, now: DateTime<Utc>) -> StationSnapshot {
        let commanded = self.commanded(now);
        StationSnapshot {
            profiles_received: self.profiles_received,
            at: now,
            online: self.online,
            booted: self.booted,
            profiles: self.store.len(),
            reporting: self.reporting.clone(),
            evses: self
                .evses
                .iter()
                .zip(commanded)
                .enumerate()
                .map(|(i, (e, commanded_amps))| EvseSnapshot {
                    commanded_amps,
                    id: e.id,
                    status: e.status,
                    measured_amps: e.measured_amps,
                    offered_amps: e.offered_amps,
                    target_amps: e.target_amps,
                    soc: e.ev.as_ref().map(Ev::soc),
                    delivered_wh: e.ev.as_ref().map(Ev::delivered_wh),
                    register_wh: e.register_wh,
                    transaction_id: e.session.as_ref().and_then(|s| s.id.clone()),
                    phases: self.ev_phases(i),
                })
                .collect(),
        }
    }

    // -----------------------------------------------------------------------------------------
    // CSMS calls
    // -----------------------------------------------------------------------------------------

    /// Answers a call from the CSMS.
    pub fn handle_call(
        &mut self,
        call: &IncomingCall,
        now: DateTime<Utc>,
    ) -> Result<Value, Violation> {
        if call.action == "SetChargingProfile" {
            self.profiles_received = self.profiles_received.saturating_add(1);
        }
        match self.config.version {
            OcppVersion::V16 => self.handle_v16(call, now),
            OcppVersion::V201 => self.handle_v201(call, now),
        }
    }

    fn handle_v16(&mut self, call: &IncomingCall, now: DateTime<Utc>) -> Result<Value, Violation> {
        use v16::*;
        match call.action.as_str() {
            "GetConfiguration" => {
                let req: GetConfigurationRequest = call.decode()?;
                let all = self.configuration_v16();
                let (known, unknown) = match req.key {
                    Some(keys) if !keys.is_empty() => {
                        let mut known = Vec::new();
                        let mut unknown = Vec::new();
                        for key in keys {
                            match all.get(key.as_str()) {
                                Some((value, readonly)) => known.push(KeyValue {
                                    key,
                                    readonly: *readonly,
                                    value: Some(value.clone()),
                                }),
                                None => unknown.push(key),
                            }
                        }
                        (known, unknown)
                    }
                    _ => (
                        all.into_iter()
                            .map(|(k, (value, readonly))| KeyValue {
                                key: k.to_owned(),
                                readonly,
                                value: Some(value),
                            })
                            .collect(),
                        Vec::new(),
                    ),
                };
                to_value(&GetConfigurationResponse {
                    configuration_key: Some(known),
                    unknown_key: (!unknown.is_empty()).then_some(unknown),
                })
            }
            "ChangeConfiguration" => {
                let req: ChangeConfigurationRequest = call.decode()?;
                let status = match self.configure(&req.key, &req.value) {
                    Configured::Accepted => ConfigurationStatus::Accepted,
                    Configured::Rejected => ConfigurationStatus::Rejected,
                    Configured::Unknown => ConfigurationStatus::NotSupported,
                };
                to_value(&ChangeConfigurationResponse { status })
            }
            "SetChargingProfile" => {
                let req: SetChargingProfileRequest = call.decode()?;
                let accepted = Profile::try_from(&req.cs_charging_profiles)
                    .map_err(|e| e.to_string())
                    .and_then(|p| self.install(req.connector_id, p, now));
                to_value(&SetChargingProfileResponse {
                    status: if accepted.is_ok() {
                        ChargingProfileStatus::Accepted
                    } else {
                        ChargingProfileStatus::Rejected
                    },
                })
            }
            "ClearChargingProfile" => {
                let req: ClearChargingProfileRequest = call.decode()?;
                let cleared = self.store.clear(&ClearFilter {
                    id: req.id,
                    evse: req.connector_id.and_then(|c| u32::try_from(c).ok()),
                    purpose: req.charging_profile_purpose.map(Purpose::from),
                    stack_level: req.stack_level,
                });
                to_value(&ClearChargingProfileResponse {
                    status: if cleared > 0 {
                        ClearChargingProfileStatus::Accepted
                    } else {
                        ClearChargingProfileStatus::Unknown
                    },
                })
            }
            "GetCompositeSchedule" => {
                let req: GetCompositeScheduleRequest = call.decode()?;
                let unit = match req.charging_rate_unit {
                    Some(ChargingRateUnitType::W) => RateUnit::W,
                    _ => RateUnit::A,
                };
                match self.composite(req.connector_id, req.duration, unit, now) {
                    Some(c) => to_value(&GetCompositeScheduleResponse {
                        status: GetCompositeScheduleStatus::Accepted,
                        connector_id: Some(req.connector_id),
                        schedule_start: Some(c.start),
                        charging_schedule: Some(c.to_v16()),
                    }),
                    None => to_value(&GetCompositeScheduleResponse {
                        status: GetCompositeScheduleStatus::Rejected,
                        ..Default::default()
                    }),
                }
            }
            other => Err(Violation::new(
                ErrorCode::NotSupported,
                format!("{other} is not simulated"),
            )),
        }
    }

    fn handle_v201(&mut self, call: &IncomingCall, now: DateTime<Utc>) -> Result<Value, Violation> {
        use v201::*;
        match call.action.as_str() {
            "GetVariables" => {
                let req: GetVariablesRequest = call.decode()?;
                let all = self.variables_v201();
                let results = req
                    .get_variable_data
                    .into_iter()
                    .map(|d| {
                        let key = format!("{}.{}", d.component.name, d.variable.name);
                        let value = all.get(key.as_str()).cloned();
                        crate::client::variable_result(d, value)
                    })
                    .collect();
                to_value(&GetVariablesResponse {
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
                        let status = match self.configure(&key, &d.attribute_value) {
                            Configured::Accepted => SetVariableStatusEnum::Accepted,
                            Configured::Rejected => SetVariableStatusEnum::Rejected,
                            Configured::Unknown => SetVariableStatusEnum::UnknownVariable,
                        };
                        SetVariableResult {
                            attribute_status: status,
                            component: d.component,
                            variable: d.variable,
                            ..Default::default()
                        }
                    })
                    .collect();
                to_value(&SetVariablesResponse {
                    set_variable_result: results,
                    ..Default::default()
                })
            }
            "SetChargingProfile" => {
                let req: SetChargingProfileRequest = call.decode()?;
                let result = Profile::try_from(&req.charging_profile)
                    .map_err(|e| e.to_string())
                    .and_then(|p| self.install(req.evse_id, p, now));
                to_value(&SetChargingProfileResponse {
                    status: if result.is_ok() {
                        ChargingProfileStatusEnum::Accepted
                    } else {
                        ChargingProfileStatusEnum::Rejected
                    },
                    status_info: result.err().map(|reason| StatusInfo {
                        reason_code: "InvalidProfile".to_owned(),
                        additional_info: Some(reason.chars().take(512).collect()),
                        ..Default::default()
                    }),
                    ..Default::default()
                })
            }
            "ClearChargingProfile" => {
                let req: ClearChargingProfileRequest = call.decode()?;
                let criteria = req.charging_profile_criteria.unwrap_or_default();
                let cleared = self.store.clear(&ClearFilter {
                    id: req.charging_profile_id,
                    evse: criteria.evse_id.and_then(|c| u32::try_from(c).ok()),
                    purpose: criteria.charging_profile_purpose.map(Purpose::from),
                    stack_level: criteria.stack_level,
                });
                to_value(&ClearChargingProfileResponse {
                    status: if cleared > 0 {
                        ClearChargingProfileStatusEnum::Accepted
                    } else {
                        ClearChargingProfileStatusEnum::Unknown
                    },
                    ..Default::default()
                })
            }
            "GetCompositeSchedule" => {
                let req: GetCompositeScheduleRequest = call.decode()?;
                let unit = match req.charging_rate_unit {
                    Some(ChargingRateUnitEnum::W) => RateUnit::W,
                    _ => RateUnit::A,
                };
                let composite = self.composite(req.evse_id, req.duration, unit, now);
                to_value(&GetCompositeScheduleResponse {
                    status: if composite.is_some() {
                        GenericStatusEnum::Accepted
                    } else {
                        GenericStatusEnum::Rejected
                    },
                    schedule: composite.map(|c| c.to_v201()),
                    ..Default::default()
                })
            }
            other => Err(Violation::new(
                ErrorCode::NotSupported,
                format!("{other} is not simulated"),
            )),
        }
    }

    fn composite(
        &self,
        evse: i32,
        duration: i32,
        unit: RateUnit,
        now: DateTime<Utc>,
    ) -> Option<crate::profile::Composite> {
        let evse = u32::try_from(evse)
            .ok()
            .filter(|&e| e <= self.config.evse_count)?;
        let tx = match evse {
            0 => None,
            e => self.transaction(e as usize - 1),
        };
        Some(self.store.composite(
            evse,
            now,
            duration,
            unit,
            tx.as_ref(),
            &self.config.circuit,
            self.config.hardware_max_amps,
        ))
    }

    /// SetChargingProfile after the quirks; `Err` carries the reason for the log.
    fn install(&mut self, evse: i32, profile: Profile, now: DateTime<Utc>) -> Result<(), String> {
        let q = self.config.quirks;
        let station = self.config.id.clone();
        let refuse = |reason: String| {
            tracing::info!(%station, evse, id = profile.id, %reason, "charging profile rejected");
            Err(reason)
        };
        let Ok(evse) = u32::try_from(evse) else {
            return refuse(format!("EVSE {evse} does not exist"));
        };
        if q.amps_only && profile.schedule.unit == RateUnit::W {
            return refuse("quirk: only A schedules".into());
        }
        if q.rejects_station_max && profile.purpose == Purpose::StationMax {
            return refuse("quirk: station max profiles refused".into());
        }
        if q.absolute_only && profile.kind != Kind::Absolute {
            return refuse("quirk: absolute schedules only".into());
        }
        let tx = match evse {
            0 => None,
            e if e <= self.config.evse_count => self.transaction(e as usize - 1),
            _ => None,
        };
        if q.discards_profiles {
            tracing::info!(station = %self.config.id, evse, id = profile.id,
                "quirk: charging profile accepted and discarded");
            return self
                .claimed
                .install(evse, profile, tx.as_ref(), now)
                .map_err(|e| e.to_string());
        }
        let before = self.targets(now);
        let saved = self.store.clone();
        if let Err(e) = self.store.install(evse, profile.clone(), tx.as_ref(), now) {
            return refuse(e.to_string());
        }
        if q.ignores_raise_after_zero {
            let mut swallow = false;
            let after = self.targets(now);
            for (i, (&was, &now_amps)) in before.iter().zip(&after).enumerate() {
                if was == 0.0 && now_amps > 0.0 && !self.evses[i].raise_swallowed {
                    self.evses[i].raise_swallowed = true;
                    swallow = true;
                }
                if now_amps == 0.0 {
                    self.evses[i].raise_swallowed = false;
                }
            }
            if swallow {
                tracing::info!(station = %self.config.id, evse, id = profile.id,
                    "quirk: first raise after 0 A accepted and ignored");
                self.store = saved;
            }
        }
        Ok(())
    }

    /// The 1.6 configuration keys: value and read-only flag.
    fn configuration_v16(&self) -> BTreeMap<&'static str, (String, bool)> {
        let r = &self.reporting;
        let units = if self.config.quirks.amps_only {
            "Current"
        } else {
            "Current,Power"
        };
        BTreeMap::from([
            (
                "SupportedFeatureProfiles",
                ("Core,SmartCharging".to_owned(), true),
            ),
            (
                "ChargeProfileMaxStackLevel",
                (ADVERTISED_STACK_LEVEL.to_string(), true),
            ),
            (
                "ChargingScheduleAllowedChargingRateUnit",
                (units.to_owned(), true),
            ),
            ("ChargingScheduleMaxPeriods", ("24".to_owned(), true)),
            ("MaxChargingProfilesInstalled", ("16".to_owned(), true)),
            (
                "ConnectorSwitch3to1PhaseSupported",
                (self.config.switches_phases.to_string(), true),
            ),
            (
                "NumberOfConnectors",
                (self.config.evse_count.to_string(), true),
            ),
            ("HeartbeatInterval", (self.heartbeat_s.to_string(), false)),
            (
                "MeterValueSampleInterval",
                (r.sampled_interval_s.to_string(), false),
            ),
            ("MeterValuesSampledData", (list_names(&r.sampled), false)),
            (
                "ClockAlignedDataInterval",
                (r.aligned_interval_s.to_string(), false),
            ),
            ("MeterValuesAlignedData", (list_names(&r.aligned), false)),
        ])
    }

    /// The 2.0.1 variables as `Component.Variable`.
    fn variables_v201(&self) -> BTreeMap<&'static str, String> {
        let r = &self.reporting;
        BTreeMap::from([
            ("SmartChargingCtrlr.Enabled", "true".to_owned()),
            (
                "SmartChargingCtrlr.RateUnit",
                if self.config.quirks.amps_only {
                    "A"
                } else {
                    "A,W"
                }
                .to_owned(),
            ),
            ("SmartChargingCtrlr.PeriodsPerSchedule", "24".to_owned()),
            (
                "SmartChargingCtrlr.ProfileStackLevel",
                ADVERTISED_STACK_LEVEL.to_string(),
            ),
            ("SmartChargingCtrlr.Entries", "16".to_owned()),
            (
                "SmartChargingCtrlr.Phases3to1",
                self.config.switches_phases.to_string(),
            ),
            (
                "OCPPCommCtrlr.HeartbeatInterval",
                self.heartbeat_s.to_string(),
            ),
            (
                "SampledDataCtrlr.TxUpdatedInterval",
                r.sampled_interval_s.to_string(),
            ),
            (
                "SampledDataCtrlr.TxUpdatedMeasurands",
                list_names(&r.sampled),
            ),
            (
                "AlignedDataCtrlr.Interval",
                r.aligned_interval_s.to_string(),
            ),
            ("AlignedDataCtrlr.Measurands", list_names(&r.aligned)),
        ])
    }

    /// Sets a 1.6 key or a 2.0.1 `Component.Variable`.
    fn configure(&mut self, key: &str, value: &str) -> Configured {
        let interval = || value.trim().parse::<u32>().ok();
        let list = || Measurand::parse_list(value);
        let outcome = match key {
            "MeterValueSampleInterval" | "SampledDataCtrlr.TxUpdatedInterval" => {
                interval().map(|v| {
                    self.reporting.sampled_interval_s = v;
                    // The new interval counts from now.
                    for e in &mut self.evses {
                        if let Some(s) = e.session.as_mut() {
                            s.next_sample = self.last_tick + secs(v);
                        }
                    }
                })
            }
            "MeterValuesSampledData" | "SampledDataCtrlr.TxUpdatedMeasurands" => {
                list().map(|l| self.reporting.sampled = l)
            }
            "ClockAlignedDataInterval" | "AlignedDataCtrlr.Interval" => interval().map(|v| {
                self.reporting.aligned_interval_s = v;
                self.next_aligned = None;
            }),
            "MeterValuesAlignedData" | "AlignedDataCtrlr.Measurands" => {
                list().map(|l| self.reporting.aligned = l)
            }
            "HeartbeatInterval" | "OCPPCommCtrlr.HeartbeatInterval" => {
                interval().filter(|&v| v > 0).map(|v| {
                    self.heartbeat_s = v;
                    self.next_heartbeat = self.last_tick + secs(v);
                })
            }
            "SmartChargingCtrlr.Enabled" => (value.trim() == "true").then_some(()),
            _ => {
                let known = match self.config.version {
                    OcppVersion::V16 => self.configuration_v16().contains_key(key),
                    OcppVersion::V201 => self.variables_v201().contains_key(key),
                };
                // Capabilities are read-only.
                return if known {
                    Configured::Rejected
                } else {
                    Configured::Unknown
                };
            }
        };
        tracing::debug!(station = %self.config.id, key, value, ok = outcome.is_some(), "configure");
        match outcome {
            Some(()) => Configured::Accepted,
            None => Configured::Rejected,
        }
    }
}

/// Why a session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stopped {
    EvDisconnected,
    Reboot,
}

/// The stack level every simulated station advertises (the "level 0" quirk lies about it).
pub const ADVERTISED_STACK_LEVEL: i32 = 8;

enum Configured {
    Accepted,
    Rejected,
    Unknown,
}

fn boot_action() -> &'static str {
    v16::BootNotificationRequest::ACTION
}

fn secs(s: u32) -> chrono::Duration {
    chrono::Duration::seconds(i64::from(s))
}

fn id_token(tag: &str) -> v201::IdToken {
    v201::IdToken {
        id_token: tag.to_owned(),
        kind: v201::IdTokenEnum::ISO14443,
        ..Default::default()
    }
}

fn charging_state(status: EvseStatus) -> v201::ChargingStateEnum {
    match status {
        EvseStatus::Charging => v201::ChargingStateEnum::Charging,
        EvseStatus::SuspendedEv => v201::ChargingStateEnum::SuspendedEV,
        EvseStatus::SuspendedEvse => v201::ChargingStateEnum::SuspendedEVSE,
        EvseStatus::Preparing => v201::ChargingStateEnum::EVConnected,
        EvseStatus::Available => v201::ChargingStateEnum::Idle,
    }
}

fn to_value<T: serde::Serialize>(value: &T) -> Result<Value, Violation> {
    serde_json::to_value(value).map_err(|e| Violation::new(ErrorCode::InternalError, e.to_string()))
}

// ---------------------------------------------------------------------------------------------
// Running over a WebSocket
// ---------------------------------------------------------------------------------------------

/// UTC time on tokio's clock: `start` plus the tokio time elapsed since the clock was made. Under
/// paused time this is virtual; it never reads the wall clock.
#[derive(Debug, Clone, Copy)]
pub struct SimClock {
    start: DateTime<Utc>,
    origin: tokio::time::Instant,
}

impl SimClock {
    pub fn starting_at(start: DateTime<Utc>) -> Self {
        SimClock {
            start,
            origin: tokio::time::Instant::now(),
        }
    }

    pub fn now(&self) -> DateTime<Utc> {
        self.start
            + chrono::Duration::from_std(self.origin.elapsed()).unwrap_or(chrono::Duration::MAX)
    }
}

/// A fault to inject.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Fault {
    /// Drop the connection and stay offline for this long.
    Disconnect(Duration),
    /// Reboot: the sessions end, then reconnect and boot after this long.
    Reboot(Duration),
    /// Stay connected but answer no CSMS call for this long.
    StopAnswering(Duration),
}

/// What a runner tells a running station.
#[derive(Debug)]
pub enum Command {
    PlugIn {
        evse: u32,
        spec: EvSpec,
        id_tag: String,
    },
    Unplug {
        evse: u32,
    },
    Fault(Fault),
}

/// A running station.
pub struct StationHandle {
    pub commands: mpsc::Sender<Command>,
    pub snapshot: watch::Receiver<StationSnapshot>,
    pub task: tokio::task::JoinHandle<()>,
}

/// Runs `sim` until the command channel closes, connecting with `dial` (again after every lost
/// connection). Each tick advances the simulation on `clock`.
pub fn spawn<S, D, F>(mut sim: StationSim, mut dial: D, clock: SimClock) -> StationHandle
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    D: FnMut() -> F + Send + 'static,
    F: Future<Output = Result<WebSocketStream<S>, ClientError>> + Send,
{
    let (commands, mut rx) = mpsc::channel(64);
    let (publish, snapshot) = watch::channel(sim.snapshot(clock.now()));
    let task = tokio::spawn(async move {
        let mut ticker = tokio::time::interval(sim.config.tick);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut offline_for = Duration::ZERO;
        loop {
            // Offline: keep ticking (the car follows the installed profiles) until it is time
            // to dial again.
            let until = tokio::time::Instant::now() + offline_for;
            while tokio::time::Instant::now() < until {
                tokio::select! {
                    _ = ticker.tick() => {
                        sim.tick(clock.now());
                        publish.send_replace(sim.snapshot(clock.now()));
                    }
                    () = tokio::time::sleep_until(until) => {}
                    // Cars come and go offline too; faults wait until there is a connection.
                    command = rx.recv() => match command {
                        None => return,
                        Some(command) => offline_command(&mut sim, command, clock.now()),
                    },
                }
            }
            let ws = match dial().await {
                Ok(ws) => ws,
                Err(e) => {
                    tracing::info!(station = %sim.config.id, %e, "cannot connect; retrying");
                    offline_for = sim.config.reconnect_delay;
                    continue;
                }
            };
            match connection(&mut sim, ws, &mut rx, &mut ticker, &publish, clock).await {
                Ended::Lost => offline_for = sim.config.reconnect_delay,
                Ended::Fault(d) => offline_for = d,
                Ended::Stop => return,
            }
            publish.send_replace(sim.snapshot(clock.now()));
        }
    });
    StationHandle {
        commands,
        snapshot,
        task,
    }
}

/// What one dial attempt returns.
pub type Dialing<S> =
    std::pin::Pin<Box<dyn Future<Output = Result<WebSocketStream<S>, ClientError>> + Send>>;

/// A dialer for [`spawn`] over TCP, with the handshake of [`crate::client::StationClient`]
/// (subprotocol, Basic auth, percent-encoded station id).
pub fn tcp_dialer(
    config: crate::client::ClientConfig,
) -> impl FnMut() -> Dialing<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>> + Send + 'static
{
    move || {
        let config = config.clone();
        Box::pin(async move {
            crate::client::StationClient::connect(&config)
                .await
                .map(crate::client::StationClient::into_websocket)
        })
    }
}

fn offline_command(sim: &mut StationSim, command: Command, now: DateTime<Utc>) {
    let station = sim.config.id.clone();
    let result = match command {
        Command::PlugIn { evse, spec, id_tag } => sim.plug_in(evse, spec, &id_tag, now),
        Command::Unplug { evse } => sim.unplug(evse, now),
        Command::Fault(fault) => {
            tracing::info!(%station, ?fault, "fault ignored while offline");
            Ok(())
        }
    };
    if let Err(e) = result {
        tracing::warn!(%station, %e, "command refused");
    }
}

enum Ended {
    Lost,
    Fault(Duration),
    Stop,
}

async fn connection<S>(
    sim: &mut StationSim,
    mut ws: WebSocketStream<S>,
    rx: &mut mpsc::Receiver<Command>,
    ticker: &mut tokio::time::Interval,
    publish: &watch::Sender<StationSnapshot>,
    clock: SimClock,
) -> Ended
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let station = sim.config.id.clone();
    let mut endpoint = Endpoint::new(sim.config.version, Role::Station, EndpointConfig::default());
    let mut pending: HashMap<CallId, Outgoing> = HashMap::new();
    let mut deaf_until: Option<tokio::time::Instant> = None;
    sim.connected();
    tracing::info!(%station, "connected");
    let ended = loop {
        for out in sim.take_outbox() {
            match endpoint.call_raw(out.action, out.payload.clone(), Priority::Control) {
                Ok(id) => {
                    pending.insert(id, out);
                }
                Err(e) => tracing::warn!(%station, action = out.action, %e, "call not queued"),
            }
        }
        let now = tokio::time::Instant::now();
        let mut sent = false;
        let mut failed = false;
        while let Some(text) = endpoint.poll_transmit(now.into_std()) {
            if ws.feed(Message::text(text)).await.is_err() {
                failed = true;
                break;
            }
            sent = true;
        }
        if failed || (sent && ws.flush().await.is_err()) {
            break Ended::Lost;
        }
        let deadline = endpoint
            .poll_timeout()
            .map(tokio::time::Instant::from_std)
            .unwrap_or_else(|| now + Duration::from_secs(3600));
        tokio::select! {
            message = ws.next() => match message {
                Some(Ok(Message::Text(text))) => {
                    let deaf = deaf_until.is_some_and(|t| tokio::time::Instant::now() < t);
                    if deaf {
                        tracing::debug!(%station, "fault: not answering");
                    } else {
                        endpoint.handle_text(text.as_str());
                    }
                }
                Some(Ok(Message::Binary(_))) => endpoint.handle_binary(),
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break Ended::Lost,
                Some(Ok(_)) => {}
            },
            _ = ticker.tick() => {
                sim.tick(clock.now());
                publish.send_replace(sim.snapshot(clock.now()));
            }
            () = tokio::time::sleep_until(deadline) => {
                endpoint.handle_timeout(tokio::time::Instant::now().into_std());
            }
            command = rx.recv() => match command {
                None => {
                    let _ = ws.close(None).await;
                    break Ended::Stop;
                }
                Some(Command::PlugIn { evse, spec, id_tag }) => {
                    if let Err(e) = sim.plug_in(evse, spec, &id_tag, clock.now()) {
                        tracing::warn!(%station, evse, %e, "plug-in refused");
                    }
                }
                Some(Command::Unplug { evse }) => {
                    if let Err(e) = sim.unplug(evse, clock.now()) {
                        tracing::warn!(%station, evse, %e, "unplug refused");
                    }
                }
                Some(Command::Fault(Fault::Disconnect(d))) => {
                    tracing::info!(%station, ?d, "fault: disconnect");
                    let _ = ws.close(None).await;
                    break Ended::Fault(d);
                }
                Some(Command::Fault(Fault::Reboot(d))) => {
                    tracing::info!(%station, ?d, "fault: reboot");
                    let _ = ws.close(None).await;
                    sim.reboot(clock.now());
                    break Ended::Fault(d);
                }
                Some(Command::Fault(Fault::StopAnswering(d))) => {
                    tracing::info!(%station, ?d, "fault: stop answering");
                    deaf_until = Some(tokio::time::Instant::now() + d);
                }
            },
        }
        while let Some(event) = endpoint.poll_event() {
            match event {
                Event::Call(call) => {
                    let result = sim.handle_call(&call, clock.now());
                    let _ = match result {
                        Ok(payload) => endpoint.respond(&call.id, &payload),
                        Err(v) => endpoint.respond_error(&call.id, &v),
                    };
                }
                Event::Response { call, result, .. } => {
                    if let Some(out) = pending.remove(&call) {
                        answered(sim, out, result, clock.now());
                    }
                }
                Event::Refused { action, violation } => {
                    tracing::debug!(%station, ?action, %violation, "refused");
                }
            }
        }
    };
    endpoint.close();
    sim.disconnected();
    // Everything still queued or in flight fails with Closed; kept messages wait for the next
    // connection.
    while let Some(event) = endpoint.poll_event() {
        if let Event::Response { call, result, .. } = event
            && let Some(out) = pending.remove(&call)
        {
            answered(sim, out, result, clock.now());
        }
    }
    tracing::info!(%station, "disconnected");
    ended
}

/// Hands an answer to the simulator; a kept message that got none is queued again.
fn answered(
    sim: &mut StationSim,
    out: Outgoing,
    result: Result<Value, CallFailure>,
    now: DateTime<Utc>,
) {
    if out.keep && matches!(result, Err(CallFailure::Timeout | CallFailure::Closed)) {
        sim.requeue(out);
    } else {
        sim.handle_response(out.after, result, now);
    }
}

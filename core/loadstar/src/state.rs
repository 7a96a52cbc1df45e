//! Site state: what Loadstar knows right now about stations, EVSEs, sessions and measurements.
//!
//! Updated by the `csms` handlers from station frames, read by the control loop and the API.
//! Invariant: it holds no IO handles and never blocks; persistence is the `store`'s job.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};
use loadstar_ocpp::OcppVersion;
use serde::Serialize;

/// The latest measurements of one EVSE, per phase L1..L3 of the station (not yet mapped to grid
/// lines: that needs the station's wiring, see `loadstar_optimizer::model`).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Measurement {
    pub at: Option<DateTime<Utc>>,
    pub energy_wh: Option<f64>,
    pub power_w: Option<f64>,
    pub current_a: [Option<f64>; 3],
    pub voltage_v: [Option<f64>; 3],
    pub offered_a: Option<f64>,
    pub soc_percent: Option<f64>,
}

impl Measurement {
    /// Merges newer values in; fields the update lacks keep their previous value.
    pub fn merge(&mut self, update: &Measurement) {
        if update.at.is_some() && update.at < self.at {
            // An older sample (e.g. a replayed MeterValues after a reconnect) must not
            // overwrite newer readings.
            return;
        }
        self.at = update.at.or(self.at);
        self.energy_wh = update.energy_wh.or(self.energy_wh);
        self.power_w = update.power_w.or(self.power_w);
        for i in 0..3 {
            self.current_a[i] = update.current_a[i].or(self.current_a[i]);
            self.voltage_v[i] = update.voltage_v[i].or(self.voltage_v[i]);
        }
        self.offered_a = update.offered_a.or(self.offered_a);
        self.soc_percent = update.soc_percent.or(self.soc_percent);
    }

    pub fn is_empty(&self) -> bool {
        self.energy_wh.is_none()
            && self.power_w.is_none()
            && self.current_a.iter().all(Option::is_none)
            && self.voltage_v.iter().all(Option::is_none)
            && self.offered_a.is_none()
            && self.soc_percent.is_none()
    }
}

/// What an ISO 15118 EV (2.0.1 NotifyEVChargingNeeds) or the operator says a session needs.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ChargingNeeds {
    pub departure: Option<DateTime<Utc>>,
    pub energy_wh: Option<f64>,
    /// The session's energy (Wh) when `energy_wh` was stated: an EV states what it still
    /// needs at that moment (ISO 15118), so only what it got since counts against it. 0: from
    /// the start of the session.
    pub energy_from_wh: f64,
    pub ev_min_current_a: Option<f64>,
    pub ev_max_current_a: Option<f64>,
}

/// A charging session (an OCPP transaction) in progress.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ActiveSession {
    /// 1.6: the integer Loadstar assigned, as decimal text; 2.0.1: the station's id.
    pub transaction_id: String,
    pub id_tag: Option<String>,
    pub started_at: DateTime<Utc>,
    pub meter_start_wh: Option<f64>,
    pub energy_wh: f64,
    pub last_seq_no: Option<i64>,
    pub charging_state: Option<String>,
    pub needs: ChargingNeeds,
    /// When the session's progress was last written to the store.
    #[serde(skip)]
    pub persisted_at: Option<DateTime<Utc>>,
}

/// One EVSE (1.6: a connector; 2.0.1: an EVSE with its connectors).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct EvseState {
    /// Status per connector id, as the station reported it (e.g. `Available`, `Charging`).
    pub connectors: BTreeMap<u32, String>,
    pub error_code: Option<String>,
    pub session: Option<ActiveSession>,
    pub measurement: Measurement,
    /// The latest external limit a station reported (2.0.1 NotifyChargingLimit), in A or W.
    pub external_limit: Option<String>,
}

/// Smart-charging capabilities read at boot, and what the station refused during set-up.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Capabilities {
    pub smart_charging: Option<bool>,
    pub max_stack_level: Option<i64>,
    /// Allowed rate units, normalised to `A` and `W`.
    pub rate_units: Vec<String>,
    pub max_periods: Option<i64>,
    pub max_profiles: Option<i64>,
    pub phase_switching: Option<bool>,
    /// Every key or variable read, as reported.
    pub raw: BTreeMap<String, String>,
    /// Settings the station rejected or does not know.
    pub refused: Vec<String>,
    /// Whether set-up has finished (successfully or not).
    pub set_up: bool,
}

/// What a station said about itself at boot.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct BootInfo {
    pub vendor: String,
    pub model: String,
    pub serial: Option<String>,
    pub firmware: Option<String>,
    pub reason: Option<String>,
}

/// One station.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StationState {
    pub id: String,
    #[serde(serialize_with = "ser_version")]
    pub version: OcppVersion,
    pub connected: bool,
    /// False for a station the site file does not list (held at the safe current until an
    /// operator adopts it).
    pub known: bool,
    pub boot: Option<BootInfo>,
    pub last_seen: DateTime<Utc>,
    /// Boxed: a BTreeMap node holds 11 values, and inline EVSE states made every station cost
    /// ~5 KiB before it had a second EVSE.
    pub evses: BTreeMap<u32, Box<EvseState>>,
    pub capabilities: Capabilities,
    pub firmware_status: Option<String>,
    pub diagnostics_status: Option<String>,
    /// How far the station's clock was ahead of ours (negative: behind) in its latest
    /// timestamped measurement, s. Includes the message's delay; `None` until one arrives.
    pub clock_skew_s: Option<i64>,
}

fn ser_version<S: serde::Serializer>(v: &OcppVersion, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(v.subprotocol())
}

impl StationState {
    pub fn new(id: &str, version: OcppVersion, known: bool, now: DateTime<Utc>) -> Self {
        StationState {
            id: id.to_owned(),
            version,
            connected: true,
            known,
            boot: None,
            last_seen: now,
            evses: BTreeMap::new(),
            capabilities: Capabilities::default(),
            firmware_status: None,
            diagnostics_status: None,
            clock_skew_s: None,
        }
    }

    pub fn evse(&mut self, evse_id: u32) -> &mut EvseState {
        self.evses.entry(evse_id).or_default().as_mut()
    }

    /// The EVSE whose session has `transaction_id`.
    pub fn evse_with_session(&mut self, transaction_id: &str) -> Option<(u32, &mut EvseState)> {
        self.evses.iter_mut().find_map(|(id, evse)| {
            evse.session
                .as_ref()
                .is_some_and(|s| s.transaction_id == transaction_id)
                .then_some((*id, evse.as_mut()))
        })
    }
}

/// All stations of the site.
#[derive(Debug, Default)]
pub struct SiteState {
    pub stations: HashMap<String, StationState>,
}

impl SiteState {
    /// The state after a restart: every station the store knows, disconnected, with the sessions
    /// that were open when the previous process stopped. Read once at start, so a reconnect
    /// storm never scans the store.
    pub fn restore(
        stations: &[crate::store::StationRecord],
        open_sessions: Vec<crate::store::SessionRecord>,
        known: impl Fn(&str) -> bool,
    ) -> SiteState {
        let mut state = SiteState::default();
        for record in stations {
            let version =
                OcppVersion::from_subprotocol(&record.ocpp_version).unwrap_or(OcppVersion::V16);
            let mut station = StationState::new(
                &record.id,
                version,
                known(&record.id),
                record.last_seen.unwrap_or(record.first_seen),
            );
            station.connected = false;
            state.stations.insert(record.id.clone(), station);
        }
        for session in open_sessions {
            let Some(station) = state.stations.get_mut(&session.station) else {
                continue;
            };
            let evse = station.evse(session.evse_id);
            if evse.session.is_none() {
                evse.session = Some(ActiveSession {
                    transaction_id: session.transaction_id,
                    id_tag: session.id_tag,
                    started_at: session.started_at,
                    meter_start_wh: session.meter_start_wh,
                    energy_wh: session.energy_wh,
                    last_seq_no: session.last_seq_no,
                    charging_state: None,
                    needs: ChargingNeeds::default(),
                    persisted_at: Some(session.updated_at),
                });
            }
        }
        state
    }

    pub fn station(&mut self, id: &str) -> Option<&mut StationState> {
        self.stations.get_mut(id)
    }

    /// Number of connected stations.
    pub fn connected(&self) -> usize {
        self.stations.values().filter(|s| s.connected).count()
    }

    /// Number of sessions in progress.
    pub fn active_sessions(&self) -> usize {
        self.stations
            .values()
            .flat_map(|s| s.evses.values())
            .filter(|e| e.session.is_some())
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> Option<DateTime<Utc>> {
        DateTime::parse_from_rfc3339(s)
            .ok()
            .map(|t| t.with_timezone(&Utc))
    }

    #[test]
    fn merge_keeps_missing_fields_and_ignores_older_samples() {
        let mut m = Measurement {
            at: at("2026-01-01T10:00:00Z"),
            energy_wh: Some(100.0),
            current_a: [Some(10.0), Some(11.0), Some(12.0)],
            ..Measurement::default()
        };
        m.merge(&Measurement {
            at: at("2026-01-01T10:00:10Z"),
            current_a: [Some(16.0), None, None],
            ..Measurement::default()
        });
        assert_eq!(m.energy_wh, Some(100.0));
        assert_eq!(m.current_a, [Some(16.0), Some(11.0), Some(12.0)]);
        m.merge(&Measurement {
            at: at("2026-01-01T09:00:00Z"),
            energy_wh: Some(1.0),
            ..Measurement::default()
        });
        assert_eq!(m.energy_wh, Some(100.0), "older sample ignored");
        assert_eq!(m.at, at("2026-01-01T10:00:10Z"));
    }
}

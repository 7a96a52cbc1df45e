//! Charging profiles as each station can take them: the purpose and stack level it accepts, A or
//! W, `numberPhases`, at most one decimal, the 1.6 and 2.0.1 shapes. Pure: time is passed in.

use chrono::{DateTime, Utc};
use loadstar_ocpp::{v16, v201};
use loadstar_optimizer::model::StationCircuit;
use serde::Serialize;

/// Profile id of an EVSE's fallback (TxDefaultProfile, stack level 0): `FALLBACK_ID + evse`.
pub const FALLBACK_ID: i32 = 100;
/// Profile id of an EVSE's dynamic limit: `DYNAMIC_ID + evse`.
pub const DYNAMIC_ID: i32 = 200;
/// Profile id of a station-wide limit (ChargePointMax / ChargingStationMax).
pub const STATION_MAX_ID: i32 = 300;

/// The purpose a limit is sent with, in the dispatcher's order of preference.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Purpose {
    /// Bound to the running transaction; overrides every TxDefaultProfile.
    Tx,
    /// The default for every transaction on the EVSE.
    TxDefault,
    /// A cap on the whole station (EVSE 0).
    StationMax,
}

impl Purpose {
    fn v16(self) -> v16::ChargingProfilePurposeType {
        match self {
            Purpose::Tx => v16::ChargingProfilePurposeType::TxProfile,
            Purpose::TxDefault => v16::ChargingProfilePurposeType::TxDefaultProfile,
            Purpose::StationMax => v16::ChargingProfilePurposeType::ChargePointMaxProfile,
        }
    }

    fn v201(self) -> v201::ChargingProfilePurposeEnum {
        match self {
            Purpose::Tx => v201::ChargingProfilePurposeEnum::TxProfile,
            Purpose::TxDefault => v201::ChargingProfilePurposeEnum::TxDefaultProfile,
            Purpose::StationMax => v201::ChargingProfilePurposeEnum::ChargingStationMaxProfile,
        }
    }
}

/// How a schedule is anchored in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Timing {
    /// The station's clock agrees with ours: Absolute, starting now, valid until `valid_to`.
    Absolute { valid_to: Option<DateTime<Utc>> },
    /// The station's clock cannot be trusted: a Relative schedule (from the transaction's
    /// start) that ends after `duration_s`, so it still expires by itself.
    Relative { duration_s: Option<i32> },
}

/// One limit to install.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Limit {
    /// EVSE (1.6 connector) id; 0 for the whole station.
    pub evse: u32,
    pub purpose: Purpose,
    pub stack_level: i32,
    /// Per-phase current, A.
    pub amps: f64,
    /// Phases the EV uses (0 = unknown = all of the station's).
    pub ev_phases: u8,
    /// Send in W instead of A (the station does not take A).
    pub in_watts: bool,
    /// The transaction a Tx limit belongs to.
    pub transaction_id: Option<String>,
    pub timing: Timing,
}

/// Rounds down to one decimal (1.6's `multipleOf 0.1`; 2.0.1 allows one digit), never up: a
/// rounding that raises a limit could break it.
pub fn one_decimal_down(v: f64) -> f64 {
    if !v.is_finite() || v <= 0.0 {
        return 0.0;
    }
    // The epsilon keeps 7.0 from becoming 6.9 through 69.99999….
    ((v * 10.0) + 1e-9).floor() / 10.0
}

impl Limit {
    fn profile_id(&self) -> i32 {
        match self.purpose {
            Purpose::StationMax => STATION_MAX_ID,
            Purpose::TxDefault if self.stack_level == 0 => FALLBACK_ID + self.evse as i32,
            _ => DYNAMIC_ID + self.evse as i32,
        }
    }

    /// The schedule value and unit: amps, or watts through the station's circuit.
    fn value(&self, circuit: &StationCircuit) -> f64 {
        if self.in_watts {
            one_decimal_down(circuit.amps_to_watts(self.ev_phases, self.amps))
        } else {
            one_decimal_down(self.amps)
        }
    }

    fn phases(&self, circuit: &StationCircuit) -> i32 {
        i32::from(circuit.ocpp_number_phases(self.ev_phases))
    }

    /// The 1.6 `SetChargingProfile.req`. A 1.6 transaction id that is not an integer is left
    /// out (the station then applies the profile to its running transaction).
    pub fn to_v16(
        &self,
        circuit: &StationCircuit,
        now: DateTime<Utc>,
    ) -> v16::SetChargingProfileRequest {
        let (kind, start, valid_to, duration) = match self.timing {
            Timing::Absolute { valid_to } => (
                v16::ChargingProfileKindType::Absolute,
                Some(now),
                valid_to,
                None,
            ),
            Timing::Relative { duration_s } => (
                v16::ChargingProfileKindType::Relative,
                None,
                None,
                duration_s,
            ),
        };
        v16::SetChargingProfileRequest {
            connector_id: self.evse as i32,
            cs_charging_profiles: v16::ChargingProfile {
                charging_profile_id: self.profile_id(),
                transaction_id: match self.purpose {
                    Purpose::Tx => self.transaction_id.as_deref().and_then(|t| t.parse().ok()),
                    _ => None,
                },
                stack_level: self.stack_level,
                charging_profile_purpose: self.purpose.v16(),
                charging_profile_kind: kind,
                recurrency_kind: None,
                valid_from: None,
                valid_to,
                charging_schedule: v16::ChargingSchedule {
                    duration,
                    start_schedule: start,
                    charging_rate_unit: if self.in_watts {
                        v16::ChargingRateUnitType::W
                    } else {
                        v16::ChargingRateUnitType::A
                    },
                    charging_schedule_period: vec![v16::ChargingSchedulePeriod {
                        start_period: 0,
                        limit: self.value(circuit),
                        number_phases: Some(self.phases(circuit)),
                    }],
                    min_charging_rate: None,
                },
            },
        }
    }

    /// The 2.0.1 `SetChargingProfileRequest`.
    pub fn to_v201(
        &self,
        circuit: &StationCircuit,
        now: DateTime<Utc>,
    ) -> v201::SetChargingProfileRequest {
        let (kind, start, valid_to, duration) = match self.timing {
            Timing::Absolute { valid_to } => (
                v201::ChargingProfileKindEnum::Absolute,
                Some(now),
                valid_to,
                None,
            ),
            Timing::Relative { duration_s } => (
                v201::ChargingProfileKindEnum::Relative,
                None,
                None,
                duration_s,
            ),
        };
        v201::SetChargingProfileRequest {
            custom_data: None,
            evse_id: self.evse as i32,
            charging_profile: v201::ChargingProfile {
                custom_data: None,
                id: self.profile_id(),
                stack_level: self.stack_level,
                charging_profile_purpose: self.purpose.v201(),
                charging_profile_kind: kind,
                recurrency_kind: None,
                valid_from: None,
                valid_to,
                charging_schedule: vec![v201::ChargingSchedule {
                    custom_data: None,
                    id: self.profile_id(),
                    start_schedule: start,
                    duration,
                    charging_rate_unit: if self.in_watts {
                        v201::ChargingRateUnitEnum::W
                    } else {
                        v201::ChargingRateUnitEnum::A
                    },
                    charging_schedule_period: vec![v201::ChargingSchedulePeriod {
                        custom_data: None,
                        start_period: 0,
                        limit: self.value(circuit),
                        number_phases: Some(self.phases(circuit)),
                        phase_to_use: None,
                    }],
                    min_charging_rate: None,
                    sales_tariff: None,
                }],
                transaction_id: match self.purpose {
                    Purpose::Tx => self.transaction_id.clone(),
                    _ => None,
                },
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use loadstar_optimizer::model::{ElectricalModel, GridType, Line, StationWiring};

    fn circuit() -> StationCircuit {
        let model = ElectricalModel::new(GridType::Wye, 230.0).expect("model");
        StationCircuit::new(
            model,
            StationWiring::three_phase([Line::L2, Line::L3, Line::L1]),
        )
        .expect("circuit")
    }

    fn limit(amps: f64) -> Limit {
        Limit {
            evse: 2,
            purpose: Purpose::Tx,
            stack_level: 1,
            amps,
            ev_phases: 0,
            in_watts: false,
            transaction_id: Some("17".into()),
            timing: Timing::Absolute { valid_to: None },
        }
    }

    #[test]
    fn limits_round_down_to_one_decimal() {
        assert_eq!(one_decimal_down(7.0), 7.0);
        assert_eq!(one_decimal_down(7.06), 7.0);
        assert_eq!(one_decimal_down(7.99), 7.9);
        assert_eq!(one_decimal_down(-1.0), 0.0);
        assert_eq!(one_decimal_down(f64::NAN), 0.0);
    }

    #[test]
    fn v16_tx_profile_carries_the_integer_transaction_and_phases() {
        let now = Utc::now();
        let req = limit(13.37).to_v16(&circuit(), now);
        assert_eq!(req.connector_id, 2);
        let p = &req.cs_charging_profiles;
        assert_eq!(p.charging_profile_id, DYNAMIC_ID + 2);
        assert_eq!(p.transaction_id, Some(17));
        assert_eq!(
            p.charging_profile_purpose,
            v16::ChargingProfilePurposeType::TxProfile
        );
        let period = &p.charging_schedule.charging_schedule_period[0];
        assert_eq!(period.limit, 13.3);
        assert_eq!(period.number_phases, Some(3));
        assert_eq!(p.charging_schedule.start_schedule, Some(now));
        // And it passes the official schema.
        let payload = serde_json::to_value(&req).expect("json");
        loadstar_ocpp::schema::validate(
            loadstar_ocpp::OcppVersion::V16,
            "SetChargingProfile",
            loadstar_ocpp::schema::PayloadKind::Request,
            &payload,
        )
        .expect("valid 1.6 payload");
    }

    #[test]
    fn v201_power_profile_converts_through_the_circuit() {
        let mut l = limit(16.0);
        l.in_watts = true;
        l.ev_phases = 1;
        l.timing = Timing::Relative {
            duration_s: Some(600),
        };
        let req = l.to_v201(&circuit(), Utc::now());
        let s = &req.charging_profile.charging_schedule[0];
        assert_eq!(s.charging_rate_unit, v201::ChargingRateUnitEnum::W);
        assert_eq!(s.charging_schedule_period[0].limit, 3680.0);
        assert_eq!(s.charging_schedule_period[0].number_phases, Some(1));
        assert_eq!(s.duration, Some(600));
        assert_eq!(s.start_schedule, None);
        assert_eq!(req.charging_profile.transaction_id.as_deref(), Some("17"));
        let payload = serde_json::to_value(&req).expect("json");
        loadstar_ocpp::schema::validate(
            loadstar_ocpp::OcppVersion::V201,
            "SetChargingProfile",
            loadstar_ocpp::schema::PayloadKind::Request,
            &payload,
        )
        .expect("valid 2.0.1 payload");
    }

    #[test]
    fn fallback_and_station_max_ids_do_not_collide_with_dynamic_ones() {
        let mut l = limit(6.0);
        l.purpose = Purpose::TxDefault;
        l.stack_level = 0;
        assert_eq!(l.profile_id(), FALLBACK_ID + 2);
        l.stack_level = 1;
        assert_eq!(l.profile_id(), DYNAMIC_ID + 2);
        l.purpose = Purpose::StationMax;
        assert_eq!(l.profile_id(), STATION_MAX_ID);
    }
}

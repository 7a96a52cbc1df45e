//! Checking that a station applies what it accepted: GetCompositeSchedule, read back after a
//! change has settled. A station that answers Accepted and then lets the car draw more (a
//! discarded profile, a profile of its own stacked above ours) is found before the car's draw
//! shows it. Pure: the answers and the time are passed in.

use chrono::{DateTime, Utc};
use loadstar_ocpp::{v16, v201};
use loadstar_optimizer::model::StationCircuit;

/// How often an EVSE's composite schedule is read back while nothing changes.
pub const VERIFY_EVERY: chrono::TimeDelta = chrono::TimeDelta::minutes(5);
/// How soon an EVSE whose composite schedule was above its setpoint is read again.
pub const VERIFY_AGAIN: chrono::TimeDelta = chrono::TimeDelta::seconds(60);
/// A composite limit this much above the setpoint (A) means the station does not apply it
/// (stations round to their own resolution).
pub const COMPOSITE_TOLERANCE_A: f64 = 0.5;
/// How far ahead the schedule is asked for (s): only its limit now matters.
pub const DURATION_S: i32 = 60;

/// The 1.6 request for one connector, in A.
pub fn request_v16(evse: u32) -> v16::GetCompositeScheduleRequest {
    v16::GetCompositeScheduleRequest {
        connector_id: i32::try_from(evse).unwrap_or(i32::MAX),
        duration: DURATION_S,
        charging_rate_unit: Some(v16::ChargingRateUnitType::A),
    }
}

/// The 2.0.1 request for one EVSE, in A.
pub fn request_v201(evse: u32) -> v201::GetCompositeScheduleRequest {
    v201::GetCompositeScheduleRequest {
        custom_data: None,
        duration: DURATION_S,
        charging_rate_unit: Some(v201::ChargingRateUnitEnum::A),
        evse_id: i32::try_from(evse).unwrap_or(i32::MAX),
    }
}

/// The limit in force at `now` (A per phase) of a 1.6 answer; `None` when the station gave no
/// schedule or one that does not cover `now`.
pub fn limit_v16(
    answer: &v16::GetCompositeScheduleResponse,
    now: DateTime<Utc>,
    circuit: &StationCircuit,
    ev_phases: u8,
) -> Option<f64> {
    if answer.status != v16::GetCompositeScheduleStatus::Accepted {
        return None;
    }
    let schedule = answer.charging_schedule.as_ref()?;
    let start = answer
        .schedule_start
        .or(schedule.start_schedule)
        .unwrap_or(now);
    let periods = schedule
        .charging_schedule_period
        .iter()
        .map(|p| (p.start_period, p.limit, p.number_phases));
    let watts = schedule.charging_rate_unit == v16::ChargingRateUnitType::W;
    limit_at(periods, start, now, watts, circuit, ev_phases)
}

/// The same for a 2.0.1 answer.
pub fn limit_v201(
    answer: &v201::GetCompositeScheduleResponse,
    now: DateTime<Utc>,
    circuit: &StationCircuit,
    ev_phases: u8,
) -> Option<f64> {
    if answer.status != v201::GenericStatusEnum::Accepted {
        return None;
    }
    let schedule = answer.schedule.as_ref()?;
    let periods = schedule
        .charging_schedule_period
        .iter()
        .map(|p| (p.start_period, p.limit, p.number_phases));
    let watts = schedule.charging_rate_unit == v201::ChargingRateUnitEnum::W;
    limit_at(
        periods,
        schedule.schedule_start,
        now,
        watts,
        circuit,
        ev_phases,
    )
}

/// The period in force at `now` (the last one starting at or before it; periods may come in
/// any order), in A per phase.
fn limit_at(
    periods: impl Iterator<Item = (i32, f64, Option<i32>)>,
    start: DateTime<Utc>,
    now: DateTime<Utc>,
    watts: bool,
    circuit: &StationCircuit,
    ev_phases: u8,
) -> Option<f64> {
    // A schedule that starts a little after our clock (the station's clock, rounding) still
    // tells what it enforces now: its first period counts.
    let offset = (now - start).num_seconds().max(0);
    let (_, limit, phases) = periods
        .filter(|(s, l, _)| i64::from(*s) <= offset && l.is_finite() && *l >= 0.0)
        .max_by_key(|(s, _, _)| *s)?;
    if !watts {
        return Some(limit);
    }
    let phases = phases
        .and_then(|p| u8::try_from(p).ok())
        .filter(|p| (1..=3).contains(p))
        .unwrap_or(ev_phases);
    Some(circuit.watts_to_amps(phases, limit))
}

#[cfg(test)]
mod tests {
    use super::*;
    use loadstar_optimizer::model::{ElectricalModel, GridType, StationWiring};

    fn circuit() -> StationCircuit {
        let model = ElectricalModel::new(GridType::Wye, 230.0).expect("model");
        model
            .station(StationWiring::ThreePhase([
                loadstar_optimizer::model::Line::L1,
                loadstar_optimizer::model::Line::L2,
                loadstar_optimizer::model::Line::L3,
            ]))
            .expect("circuit")
    }

    fn at(s: &str) -> DateTime<Utc> {
        s.parse().expect("time")
    }

    fn v16_answer(
        unit: v16::ChargingRateUnitType,
        periods: &[(i32, f64, Option<i32>)],
    ) -> v16::GetCompositeScheduleResponse {
        v16::GetCompositeScheduleResponse {
            status: v16::GetCompositeScheduleStatus::Accepted,
            connector_id: Some(1),
            schedule_start: Some(at("2026-03-02T10:00:00Z")),
            charging_schedule: Some(v16::ChargingSchedule {
                duration: Some(60),
                start_schedule: None,
                charging_rate_unit: unit,
                charging_schedule_period: periods
                    .iter()
                    .map(
                        |&(start_period, limit, number_phases)| v16::ChargingSchedulePeriod {
                            start_period,
                            limit,
                            number_phases,
                        },
                    )
                    .collect(),
                min_charging_rate: None,
            }),
        }
    }

    #[test]
    fn the_period_in_force_now_in_amps() {
        let c = circuit();
        let a = v16_answer(
            v16::ChargingRateUnitType::A,
            &[(30, 6.0, None), (0, 16.0, None)],
        );
        assert_eq!(limit_v16(&a, at("2026-03-02T10:00:10Z"), &c, 3), Some(16.0));
        assert_eq!(limit_v16(&a, at("2026-03-02T10:00:45Z"), &c, 3), Some(6.0));
        // Our clock a little behind the schedule's start: its first period.
        assert_eq!(limit_v16(&a, at("2026-03-02T09:59:58Z"), &c, 3), Some(16.0));
        // Watts through the circuit: 11040 W on three phases of 230 V is 16 A.
        let w = v16_answer(v16::ChargingRateUnitType::W, &[(0, 11_040.0, Some(3))]);
        let amps = limit_v16(&w, at("2026-03-02T10:00:10Z"), &c, 1).expect("limit");
        assert!((amps - 16.0).abs() < 1e-9, "{amps}");
        // Nothing to read.
        let mut rejected = a.clone();
        rejected.status = v16::GetCompositeScheduleStatus::Rejected;
        assert_eq!(
            limit_v16(&rejected, at("2026-03-02T10:00:10Z"), &c, 3),
            None
        );
        let empty = v16_answer(v16::ChargingRateUnitType::A, &[]);
        assert_eq!(limit_v16(&empty, at("2026-03-02T10:00:10Z"), &c, 3), None);
        let bad = v16_answer(v16::ChargingRateUnitType::A, &[(0, f64::NAN, None)]);
        assert_eq!(limit_v16(&bad, at("2026-03-02T10:00:10Z"), &c, 3), None);
    }

    #[test]
    fn a_201_answer_reads_the_same() {
        let c = circuit();
        let answer = v201::GetCompositeScheduleResponse {
            custom_data: None,
            status: v201::GenericStatusEnum::Accepted,
            status_info: None,
            schedule: Some(v201::CompositeSchedule {
                custom_data: None,
                charging_schedule_period: vec![v201::ChargingSchedulePeriod {
                    start_period: 0,
                    limit: 32.0,
                    number_phases: Some(3),
                    ..Default::default()
                }],
                evse_id: 1,
                duration: 60,
                schedule_start: at("2026-03-02T10:00:00Z"),
                charging_rate_unit: v201::ChargingRateUnitEnum::A,
            }),
        };
        assert_eq!(
            limit_v201(&answer, at("2026-03-02T10:00:05Z"), &c, 3),
            Some(32.0)
        );
    }
}

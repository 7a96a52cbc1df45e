//! Station set-up after boot: read the smart-charging capabilities, configure what the station
//! reports, record what it refused, and hold stations the site file does not know at the safe
//! current.

use std::sync::Arc;

use loadstar_ocpp::{Priority, v16, v201};
use tracing::{info, warn};

use super::{CallError, Shared, StationHandle};
use crate::state::Capabilities;

/// What Loadstar wants every station to report: energy, power, per-phase current and the
/// current offered to the EV.
pub const MEASURANDS: &str =
    "Energy.Active.Import.Register,Power.Active.Import,Current.Import,Current.Offered";

/// The 1.6 configuration keys that describe smart-charging capabilities.
pub const CAPABILITY_KEYS_V16: &[&str] = &[
    "SupportedFeatureProfiles",
    "ChargeProfileMaxStackLevel",
    "ChargingScheduleAllowedChargingRateUnit",
    "ChargingScheduleMaxPeriods",
    "MaxChargingProfilesInstalled",
    "ConnectorSwitch3to1PhaseSupported",
];

/// The 2.0.1 SmartChargingCtrlr variables read at boot (variable, instance).
pub const CAPABILITY_VARIABLES_V201: &[(&str, Option<&str>)] = &[
    ("Enabled", None),
    ("RateUnit", None),
    ("PeriodsPerSchedule", None),
    ("ProfileStackLevel", None),
    ("Entries", Some("ChargingProfiles")),
    ("Phases3to1", None),
];

/// Profile id Loadstar uses for the hold on unknown stations.
const HOLD_PROFILE_ID: i32 = 1_000;

pub(super) async fn run(shared: Arc<Shared>, handle: StationHandle, known: bool) {
    let mut caps = Capabilities::default();
    let result = match handle.version() {
        loadstar_ocpp::OcppVersion::V16 => setup_v16(&shared, &handle, &mut caps, known).await,
        loadstar_ocpp::OcppVersion::V201 => setup_v201(&shared, &handle, &mut caps, known).await,
    };
    if let Err(e) = &result {
        warn!(station = handle.station_id(), error = %e, "station set-up incomplete");
        caps.refused.push(format!("set-up interrupted: {e}"));
    }
    caps.set_up = true;
    info!(
        station = handle.station_id(),
        smart_charging = ?caps.smart_charging,
        max_stack_level = ?caps.max_stack_level,
        rate_units = ?caps.rate_units,
        refused = ?caps.refused,
        "station set-up done"
    );
    {
        let mut state = shared.state();
        if let Some(station) = state.station(handle.station_id()) {
            // Keep values a NotifyReport may have filled in meanwhile.
            for (k, v) in std::mem::take(&mut station.capabilities.raw) {
                caps.raw.entry(k).or_insert(v);
            }
            station.capabilities = caps.clone();
        }
    }
    match shared.store.station(handle.station_id()) {
        Ok(Some(mut record)) => {
            record.capabilities = serde_json::to_value(&caps).unwrap_or_default();
            record.refused_settings = caps.refused.clone();
            if let Err(e) = shared.store.put_station(&record) {
                warn!(station = handle.station_id(), error = %e, "store: cannot save capabilities");
            }
        }
        Ok(None) => {}
        Err(e) => warn!(station = handle.station_id(), error = %e, "store: cannot read station"),
    }
}

/// Interprets one capability key or variable (1.6 key names or 2.0.1 `Component.Variable`).
pub fn apply_capability(caps: &mut Capabilities, key: &str, value: &str) {
    caps.raw.insert(key.to_owned(), value.to_owned());
    let int = || value.trim().parse::<i64>().ok();
    let boolean = || match value.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" => Some(true),
        "false" | "0" | "no" => Some(false),
        _ => None,
    };
    match key {
        "SupportedFeatureProfiles" => {
            caps.smart_charging = Some(
                value
                    .split(',')
                    .any(|p| p.trim().eq_ignore_ascii_case("SmartCharging")),
            );
        }
        "SmartChargingCtrlr.Enabled" => caps.smart_charging = boolean(),
        "ChargeProfileMaxStackLevel" | "SmartChargingCtrlr.ProfileStackLevel" => {
            caps.max_stack_level = int();
        }
        "ChargingScheduleAllowedChargingRateUnit" | "SmartChargingCtrlr.RateUnit" => {
            // Seen in the field: "Current,Power", "A,W", "Current", "W".
            let mut units: Vec<String> = value
                .split(',')
                .filter_map(|u| match u.trim() {
                    "Current" | "A" => Some("A".to_owned()),
                    "Power" | "W" => Some("W".to_owned()),
                    _ => None,
                })
                .collect();
            units.dedup();
            caps.rate_units = units;
        }
        "ChargingScheduleMaxPeriods" | "SmartChargingCtrlr.PeriodsPerSchedule" => {
            caps.max_periods = int();
        }
        "MaxChargingProfilesInstalled" | "SmartChargingCtrlr.Entries" => caps.max_profiles = int(),
        "ConnectorSwitch3to1PhaseSupported" | "SmartChargingCtrlr.Phases3to1" => {
            caps.phase_switching = boolean();
        }
        _ => {}
    }
}

async fn setup_v16(
    shared: &Shared,
    handle: &StationHandle,
    caps: &mut Capabilities,
    known: bool,
) -> Result<(), CallError> {
    let config = handle
        .call(
            &v16::GetConfigurationRequest {
                key: Some(
                    CAPABILITY_KEYS_V16
                        .iter()
                        .map(|k| (*k).to_owned())
                        .collect(),
                ),
            },
            Priority::Control,
        )
        .await?;
    for kv in config.configuration_key.unwrap_or_default() {
        apply_capability(caps, &kv.key, kv.value.as_deref().unwrap_or(""));
    }
    for key in config.unknown_key.unwrap_or_default() {
        caps.refused.push(format!("{key}: unknown key"));
    }

    let interval = shared.config().meter_interval.as_secs().max(1).to_string();
    for (key, value) in [
        ("MeterValuesSampledData", MEASURANDS.to_owned()),
        ("MeterValueSampleInterval", interval),
    ] {
        let answer = handle
            .call(
                &v16::ChangeConfigurationRequest {
                    key: key.to_owned(),
                    value,
                },
                Priority::Control,
            )
            .await?;
        match answer.status {
            v16::ConfigurationStatus::Accepted | v16::ConfigurationStatus::RebootRequired => {}
            other => caps.refused.push(format!("{key}: {other:?}")),
        }
    }

    if !known {
        let hold = v16::SetChargingProfileRequest {
            connector_id: 0,
            cs_charging_profiles: v16::ChargingProfile {
                charging_profile_id: HOLD_PROFILE_ID,
                transaction_id: None,
                stack_level: 0,
                charging_profile_purpose: v16::ChargingProfilePurposeType::ChargePointMaxProfile,
                charging_profile_kind: v16::ChargingProfileKindType::Relative,
                recurrency_kind: None,
                valid_from: None,
                valid_to: None,
                charging_schedule: v16::ChargingSchedule {
                    duration: None,
                    start_schedule: None,
                    charging_rate_unit: v16::ChargingRateUnitType::A,
                    charging_schedule_period: vec![v16::ChargingSchedulePeriod {
                        start_period: 0,
                        limit: one_decimal(shared.config().unknown_station_current_a),
                        number_phases: None,
                    }],
                    min_charging_rate: None,
                },
            },
        };
        let answer = handle.call(&hold, Priority::Safety).await?;
        if answer.status != v16::ChargingProfileStatus::Accepted {
            caps.refused
                .push(format!("hold at safe current: {:?}", answer.status));
        }
    }
    Ok(())
}

fn component(name: &str) -> v201::Component {
    v201::Component {
        name: name.to_owned(),
        ..Default::default()
    }
}

fn variable(name: &str, instance: Option<&str>) -> v201::Variable {
    v201::Variable {
        name: name.to_owned(),
        instance: instance.map(str::to_owned),
        ..Default::default()
    }
}

async fn setup_v201(
    shared: &Shared,
    handle: &StationHandle,
    caps: &mut Capabilities,
    known: bool,
) -> Result<(), CallError> {
    let read = v201::GetVariablesRequest {
        get_variable_data: CAPABILITY_VARIABLES_V201
            .iter()
            .map(|(name, instance)| v201::GetVariableData {
                component: component("SmartChargingCtrlr"),
                variable: variable(name, *instance),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    };
    let answer = handle.call(&read, Priority::Control).await?;
    for result in answer.get_variable_result {
        let key = format!("{}.{}", result.component.name, result.variable.name);
        match (result.attribute_status, result.attribute_value) {
            (v201::GetVariableStatusEnum::Accepted, Some(value)) => {
                apply_capability(caps, &key, &value);
            }
            (status, _) => caps.refused.push(format!("{key}: {status:?}")),
        }
    }

    let interval = shared.config().meter_interval.as_secs().max(1).to_string();
    let settings = [
        (
            "SampledDataCtrlr",
            "TxUpdatedMeasurands",
            MEASURANDS.to_owned(),
        ),
        ("SampledDataCtrlr", "TxUpdatedInterval", interval.clone()),
        ("AlignedDataCtrlr", "Measurands", MEASURANDS.to_owned()),
        ("AlignedDataCtrlr", "Interval", interval),
        ("SmartChargingCtrlr", "Enabled", "true".to_owned()),
    ];
    let write = v201::SetVariablesRequest {
        set_variable_data: settings
            .iter()
            .map(|(c, v, value)| v201::SetVariableData {
                attribute_value: value.clone(),
                component: component(c),
                variable: variable(v, None),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    };
    let answer = handle.call(&write, Priority::Control).await?;
    for result in answer.set_variable_result {
        let key = format!("{}.{}", result.component.name, result.variable.name);
        match result.attribute_status {
            v201::SetVariableStatusEnum::Accepted | v201::SetVariableStatusEnum::RebootRequired => {
                if key == "SmartChargingCtrlr.Enabled" {
                    caps.smart_charging = Some(true);
                }
            }
            status => caps.refused.push(format!("{key}: {status:?}")),
        }
    }

    if !known {
        let hold = v201::SetChargingProfileRequest {
            evse_id: 0,
            charging_profile: v201::ChargingProfile {
                id: HOLD_PROFILE_ID,
                stack_level: 0,
                charging_profile_purpose:
                    v201::ChargingProfilePurposeEnum::ChargingStationMaxProfile,
                charging_profile_kind: v201::ChargingProfileKindEnum::Relative,
                charging_schedule: vec![v201::ChargingSchedule {
                    id: 1,
                    charging_rate_unit: v201::ChargingRateUnitEnum::A,
                    charging_schedule_period: vec![v201::ChargingSchedulePeriod {
                        start_period: 0,
                        limit: one_decimal(shared.config().unknown_station_current_a),
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
                ..Default::default()
            },
            ..Default::default()
        };
        let answer = handle.call(&hold, Priority::Safety).await?;
        if answer.status != v201::ChargingProfileStatusEnum::Accepted {
            caps.refused
                .push(format!("hold at safe current: {:?}", answer.status));
        }
    }
    Ok(())
}

/// Rounds down to one decimal: 1.6 limits are `multipleOf 0.1`, and a limit must never round up.
pub fn one_decimal(amps: f64) -> f64 {
    if !amps.is_finite() || amps <= 0.0 {
        return 0.0;
    }
    (amps * 10.0 + 1e-9).floor() / 10.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capabilities_are_parsed_from_both_versions() {
        let mut caps = Capabilities::default();
        apply_capability(
            &mut caps,
            "SupportedFeatureProfiles",
            "Core,FirmwareManagement,SmartCharging",
        );
        apply_capability(&mut caps, "ChargeProfileMaxStackLevel", "8");
        apply_capability(
            &mut caps,
            "ChargingScheduleAllowedChargingRateUnit",
            "Current,Power",
        );
        apply_capability(&mut caps, "ConnectorSwitch3to1PhaseSupported", "false");
        assert_eq!(caps.smart_charging, Some(true));
        assert_eq!(caps.max_stack_level, Some(8));
        assert_eq!(caps.rate_units, vec!["A", "W"]);
        assert_eq!(caps.phase_switching, Some(false));

        let mut caps = Capabilities::default();
        apply_capability(&mut caps, "SmartChargingCtrlr.RateUnit", "A");
        apply_capability(&mut caps, "SmartChargingCtrlr.Entries", "12");
        apply_capability(&mut caps, "SmartChargingCtrlr.Enabled", "true");
        assert_eq!(caps.rate_units, vec!["A"]);
        assert_eq!(caps.max_profiles, Some(12));
        assert_eq!(caps.smart_charging, Some(true));
        apply_capability(&mut caps, "SupportedFeatureProfiles", "Core");
        assert_eq!(caps.smart_charging, Some(false));
    }

    #[test]
    fn limits_round_down_to_one_decimal() {
        assert_eq!(one_decimal(16.0), 16.0);
        assert_eq!(one_decimal(16.09), 16.0);
        assert_eq!(one_decimal(6.1), 6.1);
        assert_eq!(one_decimal(-3.0), 0.0);
        assert_eq!(one_decimal(f64::NAN), 0.0);
    }
}

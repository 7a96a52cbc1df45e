//! The grid meter: a meter plugin read every tick, its reading turned into signed current per
//! line for the loop. A failed or incomplete reading publishes nothing, so the loop's meter
//! timeout turns a silent meter into the configured worst case.

use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use loadstar_optimizer::model::{ElectricalModel, Line, PerLine};
use tracing::{info, warn};

use super::{Controller, GridSample};
use crate::clock::Clock;
use crate::plugins::{MeterPlugin, wit};

/// Signed current per line from a reading (import positive). Per line: the current if the
/// device gives it; else the line's power over its voltage (measured, or the nominal phase
/// voltage). With only a total power, every line is charged with all of it (the device cannot
/// say which line carries it, and the safe guess is the worst one). `Err` names what is missing.
pub fn reading_current(reading: &wit::Reading, model: &ElectricalModel) -> Result<PerLine, String> {
    let lines = model.grid().lines();
    let mut out = PerLine::ZERO;
    let get = |p: &wit::PerLine, line: Line| match line {
        Line::L1 => p.l1,
        Line::L2 => p.l2,
        Line::L3 => p.l3,
    };
    let nominal = model.phase_voltage_v();
    for &line in lines.iter() {
        let volts = get(&reading.voltage, line)
            .filter(|v| v.is_finite() && *v > 50.0)
            .unwrap_or(nominal);
        let amps = match (
            get(&reading.current, line),
            get(&reading.power, line),
            reading.total_power,
        ) {
            (Some(a), _, _) => a,
            (None, Some(w), _) => w / volts,
            (None, None, Some(total)) => total / volts,
            (None, None, None) => {
                return Err(format!("no current or power for {line:?}"));
            }
        };
        if !amps.is_finite() {
            return Err(format!("{line:?}: not a number"));
        }
        out[line] = amps;
    }
    Ok(out)
}

fn stamp(reading: &wit::Reading, now: DateTime<Utc>) -> DateTime<Utc> {
    // A device timestamp ahead of us, or older than a minute, is not believed.
    reading
        .timestamp
        .and_then(|ms| Utc.timestamp_millis_opt(ms).single())
        .filter(|at| *at <= now && now - *at < chrono::TimeDelta::minutes(1))
        .unwrap_or(now)
}

/// Reads `meter` every `every` and hands each usable reading to `controller`.
pub async fn run(
    controller: Controller,
    mut meter: MeterPlugin,
    model: ElectricalModel,
    clock: Clock,
    every: Duration,
) {
    let mut failing = false;
    loop {
        match meter.read().await {
            Ok(reading) => match reading_current(&reading, &model) {
                Ok(current) => {
                    if failing {
                        info!("grid meter reads again");
                        failing = false;
                    }
                    let now = clock.now();
                    controller.set_grid_reading(GridSample {
                        at: stamp(&reading, now),
                        current,
                    });
                }
                Err(e) => {
                    if !failing {
                        warn!(error = %e, "grid meter reading incomplete: the worst case is assumed once it times out");
                        failing = true;
                    }
                }
            },
            Err(e) => {
                if !failing {
                    warn!(error = %e, health = ?meter.status().health, "grid meter failed: the worst case is assumed once it times out");
                    failing = true;
                }
            }
        }
        clock.sleep(every).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use loadstar_optimizer::model::GridType;

    fn lines(l1: Option<f64>, l2: Option<f64>, l3: Option<f64>) -> wit::PerLine {
        wit::PerLine { l1, l2, l3 }
    }

    fn reading() -> wit::Reading {
        wit::Reading {
            timestamp: None,
            current: lines(None, None, None),
            voltage: lines(None, None, None),
            power: lines(None, None, None),
            total_power: None,
            energy_import: None,
            energy_export: None,
        }
    }

    #[test]
    fn currents_then_power_per_line_then_the_worst_case_of_a_total() {
        let model = ElectricalModel::new(GridType::Wye, 230.0).expect("model");
        let mut r = reading();
        r.current = lines(Some(10.0), Some(-4.0), None);
        r.power = lines(None, None, Some(2300.0));
        r.voltage = lines(None, None, Some(230.0));
        assert_eq!(
            reading_current(&r, &model),
            Ok(PerLine::new(10.0, -4.0, 10.0))
        );
        let mut r = reading();
        r.total_power = Some(4600.0);
        assert_eq!(reading_current(&r, &model), Ok(PerLine::splat(20.0)));
        assert!(reading_current(&reading(), &model).is_err());
    }
}

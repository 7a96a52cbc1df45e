//! The grid meter: a meter plugin read every tick, its reading turned into signed current per
//! line for the loop ([`line_currents`]: a line the device does not cover counts at the worst
//! case). A failed or incomplete reading publishes nothing, so the loop's meter
//! timeout turns a silent meter into the configured worst case.

use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use loadstar_optimizer::model::ElectricalModel;
use tracing::{info, warn};

use super::{Controller, GridSample};
use crate::clock::Clock;
use crate::plugins::{MeterPlugin, line_currents, wit};

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
            Ok(reading) => match line_currents(&reading, &model) {
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

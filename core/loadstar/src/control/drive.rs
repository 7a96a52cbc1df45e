//! Drives the site's plugins for the loop: every meter is read every tick, every policy is
//! evaluated every `every_s` on a snapshot of the site, and the set follows the site file when
//! it is reloaded.
//!
//! - The grid meter's reading becomes signed current per line ([`line_currents`]: a line the
//!   device does not cover counts at the worst case). A failed or incomplete reading publishes
//!   nothing, so the loop's meter timeout turns a silent meter into the configured worst case.
//! - Every meter's reading goes into the policies' snapshots.
//! - A policy's result (or its failure) goes to [`Controller::policy_evaluated`], which keeps
//!   the last good constraints until they end and then the safe values.
//! - A plugin that did not load counts as failed until a reload loads it.
//!
//! One task owns the whole [`PluginSet`]: calls run one after the other, each under its own
//! deadline, so a hung plugin costs its deadline and never the loop's tick.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use tokio::sync::watch;
use tracing::{info, warn};

use super::{Controller, GridSample};
use crate::clock::Clock;
use crate::plugins::{Loaded, PluginHost, PluginSet, line_currents, wit};
use crate::site::{GRID_ID, SiteConfig};

fn stamp(reading: &wit::Reading, now: DateTime<Utc>) -> DateTime<Utc> {
    // A device timestamp ahead of us, or older than a minute, is not believed.
    reading
        .timestamp
        .and_then(|ms| Utc.timestamp_millis_opt(ms).single())
        .filter(|at| *at <= now && now - *at < chrono::TimeDelta::minutes(1))
        .unwrap_or(now)
}

/// Runs the plugins until the task is dropped. `site` carries reloaded site files.
pub async fn run(
    controller: Controller,
    host: Arc<PluginHost>,
    mut set: PluginSet,
    mut site: watch::Receiver<Arc<SiteConfig>>,
    clock: Clock,
) {
    let mut failing: HashMap<String, bool> = HashMap::new();
    // Plugins of the site file that a reload could not load, and why.
    let mut not_loaded: BTreeMap<String, String> = BTreeMap::new();
    let mut evaluated: HashMap<String, DateTime<Utc>> = HashMap::new();
    loop {
        if site.has_changed().unwrap_or(false) {
            let new = site.borrow_and_update().clone();
            let report = set.reload(&host, &new);
            info!(
                added = ?report.added,
                reloaded = ?report.reloaded,
                removed = ?report.removed,
                "plugins reloaded"
            );
            not_loaded.retain(|name, _| new.plugins().iter().any(|p| p.spec.name == *name));
            for name in report.added.iter().chain(&report.reloaded) {
                not_loaded.remove(name);
            }
            for (name, e) in &report.failed {
                warn!(plugin = %name, error = %e, "plugin not reloaded");
                if set.get_mut(name).is_none() {
                    not_loaded.insert(name.clone(), e.to_string());
                    controller.policy_evaluated(name, Err(format!("not loaded: {e}")));
                }
            }
            for name in report.added.iter().chain(&report.reloaded) {
                // A new or changed policy is evaluated at once.
                evaluated.remove(name);
            }
        }
        let current = site.borrow().clone();
        let grid_meter = current.control().grid_meter.clone();
        let model = current.model();
        let tick = Duration::from_millis(current.control().tick_ms);
        let every: HashMap<&str, Duration> = current
            .plugins()
            .iter()
            .map(|p| (p.spec.name.as_str(), p.every))
            .collect();

        for (name, meter) in set.meters_mut() {
            let is_grid = grid_meter.as_deref() == Some(name);
            let was_failing = failing.get(name).copied().unwrap_or(false);
            // Plugins wait on real IO: under virtual time that must not move the clock.
            let outcome = match clock.hold(meter.read()).await {
                Ok(reading) => {
                    let now = clock.now();
                    controller.set_meter_reading(name, is_grid.then_some(GRID_ID), reading);
                    if is_grid {
                        line_currents(&reading, &model)
                            .map(|current| {
                                controller.set_grid_reading(GridSample {
                                    at: stamp(&reading, now),
                                    current,
                                })
                            })
                            .map_err(|e| format!("reading incomplete: {e}"))
                    } else {
                        Ok(())
                    }
                }
                Err(e) => Err(format!("{e} (health {:?})", meter.status().health)),
            };
            match outcome {
                Ok(()) if was_failing => {
                    info!(plugin = name, "meter reads again");
                    failing.insert(name.to_owned(), false);
                }
                Err(e) if !was_failing => {
                    if is_grid {
                        warn!(plugin = name, error = %e, "grid meter failed: the worst case is assumed once it times out");
                    } else {
                        warn!(plugin = name, error = %e, "meter failed");
                    }
                    failing.insert(name.to_owned(), true);
                }
                _ => {}
            }
        }

        let now = clock.now();
        let due: Vec<String> = set
            .policies_mut()
            .map(|(name, _)| name.to_owned())
            .filter(|name| {
                let every = every.get(name.as_str()).copied().unwrap_or(tick);
                evaluated
                    .get(name)
                    .is_none_or(|at| now < *at || (now - *at).to_std().unwrap_or_default() >= every)
            })
            .collect();
        if !due.is_empty() {
            let snapshot = controller.snapshot();
            for name in due {
                let Some(Loaded::Policy(policy)) = set.get_mut(&name) else {
                    continue;
                };
                evaluated.insert(name.clone(), now);
                let started = std::time::Instant::now();
                let result = clock
                    .hold(policy.evaluate(&snapshot))
                    .await
                    .map_err(|e| e.to_string());
                tracing::debug!(
                    plugin = %name,
                    %now,
                    took_ms = started.elapsed().as_millis() as u64,
                    ok = result.is_ok(),
                    limits = result.as_ref().map_or(0, |c| c.limits.len()),
                    prices = result.as_ref().map_or(0, |c| c.prices.len()),
                    "policy evaluated"
                );
                controller.policy_evaluated(&name, result);
            }
        }
        controller.publish_plugin_statuses(set.statuses(), not_loaded.clone());
        clock.sleep(tick).await;
    }
}

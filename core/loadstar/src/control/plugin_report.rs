//! What the site's plugins are doing, for operators: each plugin's health as the host sees it
//! (calls, failures, restarts with backoff), a meter's last reading and a policy's last output.
//!
//! The drive task owns the plugins and publishes their host status after each round
//! ([`Controller::publish_plugin_statuses`]); the readings and outputs are the ones the loop
//! already keeps. Reading a report never calls a plugin.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::{Controller, lock, policy::PolicyState};
use crate::plugins::{PluginStatus, World, wit};

/// One `[[plugin]]` of the site file.
#[derive(Debug, Clone, Serialize)]
pub struct PluginReport {
    pub name: String,
    pub world: World,
    /// The host's view of it: health, calls, errors, traps, timeouts, restarts. `None` until
    /// the drive task has run it once, and while it is not loaded.
    pub status: Option<PluginStatus>,
    /// Why it is not running: a reload could not load it (a plugin that was running keeps
    /// running as it was instead).
    pub not_loaded: Option<String>,
    /// A meter's last good reading.
    pub last_reading: Option<MeterReport>,
    /// A policy's last good output, its failure if it is failing, and its safe values.
    pub policy: Option<PolicyState>,
}

/// A meter plugin's last good reading.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MeterReport {
    /// When the loop got it (the controller's clock).
    pub at: DateTime<Utc>,
    /// The node it measures (`grid` for the site's grid meter).
    pub node: Option<String>,
    /// Signed current per line, A (import positive); `None` where the device has no value.
    pub current_a: [Option<f64>; 3],
    pub voltage_v: [Option<f64>; 3],
    pub power_w: [Option<f64>; 3],
    pub total_power_w: Option<f64>,
    pub energy_import_wh: Option<f64>,
    pub energy_export_wh: Option<f64>,
}

impl MeterReport {
    fn new(at: DateTime<Utc>, node: Option<String>, r: &wit::Reading) -> Self {
        let lines = |p: &wit::PerLine| [p.l1, p.l2, p.l3];
        MeterReport {
            at,
            node,
            current_a: lines(&r.current),
            voltage_v: lines(&r.voltage),
            power_w: lines(&r.power),
            total_power_w: r.total_power,
            energy_import_wh: r.energy_import,
            energy_export_wh: r.energy_export,
        }
    }
}

/// A meter plugin's latest reading as the loop keeps it.
#[derive(Debug, Clone)]
pub(super) struct LastReading {
    pub at: DateTime<Utc>,
    pub node: Option<String>,
    pub reading: wit::Reading,
}

/// What the drive task last published about the plugins it runs.
#[derive(Debug, Default)]
pub(super) struct PluginBoard {
    statuses: BTreeMap<String, PluginStatus>,
    not_loaded: BTreeMap<String, String>,
}

impl Controller {
    /// Publishes the host status of every loaded plugin and why the others are not loaded
    /// (the drive task calls it after each round).
    pub fn publish_plugin_statuses(
        &self,
        statuses: Vec<PluginStatus>,
        not_loaded: BTreeMap<String, String>,
    ) {
        let mut board = lock(&self.inner.plugin_board);
        board.statuses = statuses.into_iter().map(|s| (s.name.clone(), s)).collect();
        board.not_loaded = not_loaded;
    }

    /// Every plugin of the site file, in file order: its health and what it last gave.
    pub fn plugins(&self) -> Vec<PluginReport> {
        let site = self.site();
        let board = lock(&self.inner.plugin_board);
        let meters = lock(&self.inner.meters);
        let policies = std::sync::Arc::clone(&lock(&self.inner.policies));
        site.plugins()
            .iter()
            .map(|p| {
                let name = &p.spec.name;
                PluginReport {
                    name: name.clone(),
                    world: p.spec.world,
                    status: board.statuses.get(name).cloned(),
                    not_loaded: board.not_loaded.get(name).cloned(),
                    last_reading: meters
                        .get(name)
                        .map(|m| MeterReport::new(m.at, m.node.clone(), &m.reading)),
                    policy: policies.by_name.get(name).cloned(),
                }
            })
            .collect()
    }
}

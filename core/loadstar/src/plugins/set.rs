//! Every `[[plugin]]` of a site file, loaded: the meters and policies by name, in file order,
//! and kept in step with the site file when it changes.

use super::{MeterPlugin, PluginError, PluginHost, PluginStatus, PolicyPlugin, World};
use crate::site::{SiteConfig, SitePlugin};

/// A loaded plugin of either world.
pub enum Loaded {
    Meter(MeterPlugin),
    Policy(PolicyPlugin),
}

impl Loaded {
    pub fn status(&self) -> PluginStatus {
        match self {
            Loaded::Meter(m) => m.status(),
            Loaded::Policy(p) => p.status(),
        }
    }
}

struct Entry {
    /// The entry as loaded (spec and path).
    site: SitePlugin,
    /// BLAKE3 of the component file as loaded.
    wasm_hash: [u8; 32],
    plugin: Loaded,
}

/// What [`PluginSet::reload`] did, by plugin name.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct ReloadReport {
    /// New in the site file (or failed before) and loaded now.
    pub added: Vec<String>,
    /// Their spec, path or component changed: replaced in place (kv data and counters kept).
    pub reloaded: Vec<String>,
    /// Gone from the site file: dropped.
    pub removed: Vec<String>,
    pub unchanged: Vec<String>,
    /// Could not be loaded or reloaded. A plugin that was running keeps running as it was.
    pub failed: Vec<(String, PluginError)>,
}

/// The site file's plugins, loaded. A plugin that fails to load is reported and left out (the
/// control loop then treats its meter as missing or its policy as failed); the next
/// [`PluginSet::reload`] tries it again.
#[derive(Default)]
pub struct PluginSet {
    entries: Vec<Entry>,
}

impl std::fmt::Debug for PluginSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.entries.iter().map(|e| &e.site.spec.name))
            .finish()
    }
}

/// Reads a plugin's component file.
fn read_wasm(entry: &SitePlugin) -> Result<(Vec<u8>, [u8; 32]), PluginError> {
    let wasm = std::fs::read(&entry.wasm).map_err(|e| PluginError::Read {
        plugin: entry.spec.name.clone(),
        path: entry.wasm.display().to_string(),
        message: e.to_string(),
    })?;
    let hash = *blake3::hash(&wasm).as_bytes();
    Ok((wasm, hash))
}

fn load_one(host: &PluginHost, entry: &SitePlugin) -> Result<Entry, PluginError> {
    let (wasm, wasm_hash) = read_wasm(entry)?;
    let spec = entry.spec.clone();
    let plugin = match spec.world {
        World::Meter => Loaded::Meter(host.load_meter(spec, &wasm)?),
        World::Policy => Loaded::Policy(host.load_policy(spec, &wasm)?),
    };
    Ok(Entry {
        site: entry.clone(),
        wasm_hash,
        plugin,
    })
}

impl PluginSet {
    /// Loads every entry (`SiteConfig::plugins`). Returns the set and, by name, the entries that
    /// failed to load.
    pub fn load(
        host: &PluginHost,
        plugins: &[SitePlugin],
    ) -> (PluginSet, Vec<(String, PluginError)>) {
        let mut set = PluginSet::default();
        let mut failed = Vec::new();
        for entry in plugins {
            match load_one(host, entry) {
                Ok(e) => set.entries.push(e),
                Err(err) => failed.push((entry.spec.name.clone(), err)),
            }
        }
        (set, failed)
    }

    /// Brings the set in line with `site`'s `[[plugin]]` entries without a restart: unchanged
    /// plugins keep their instances, changed ones are swapped in place
    /// ([`PluginHost::reload_meter`] / [`PluginHost::reload_policy`]; a plugin whose world
    /// changed is loaded anew), new ones are loaded, missing ones dropped. A reload that fails
    /// leaves the running plugin exactly as it was. The set takes the site file's order.
    pub fn reload(&mut self, host: &PluginHost, site: &SiteConfig) -> ReloadReport {
        let mut report = ReloadReport::default();
        let mut old: Vec<Option<Entry>> = std::mem::take(&mut self.entries)
            .into_iter()
            .map(Some)
            .collect();
        for entry in site.plugins() {
            let name = &entry.spec.name;
            let current = old
                .iter_mut()
                .find(|e| e.as_ref().is_some_and(|e| &e.site.spec.name == name))
                .and_then(Option::take);
            let Some(mut current) = current else {
                match load_one(host, entry) {
                    Ok(e) => {
                        report.added.push(name.clone());
                        self.entries.push(e);
                    }
                    Err(err) => report.failed.push((name.clone(), err)),
                }
                continue;
            };
            let (wasm, hash) = match read_wasm(entry) {
                Ok(file) => file,
                Err(err) => {
                    report.failed.push((name.clone(), err));
                    self.entries.push(current);
                    continue;
                }
            };
            if current.site == *entry && current.wasm_hash == hash {
                report.unchanged.push(name.clone());
                self.entries.push(current);
                continue;
            }
            let spec = entry.spec.clone();
            let swapped = match (&mut current.plugin, spec.world) {
                (Loaded::Meter(m), World::Meter) => host.reload_meter(m, spec, &wasm),
                (Loaded::Policy(p), World::Policy) => host.reload_policy(p, spec, &wasm),
                (_, World::Meter) => host
                    .load_meter(spec, &wasm)
                    .map(|m| current.plugin = Loaded::Meter(m)),
                (_, World::Policy) => host
                    .load_policy(spec, &wasm)
                    .map(|p| current.plugin = Loaded::Policy(p)),
            };
            match swapped {
                Ok(()) => {
                    current.site = entry.clone();
                    current.wasm_hash = hash;
                    report.reloaded.push(name.clone());
                }
                Err(err) => report.failed.push((name.clone(), err)),
            }
            self.entries.push(current);
        }
        report.removed = old
            .into_iter()
            .flatten()
            .map(|e| e.site.spec.name)
            .collect();
        report
    }

    /// The plugin named `name`.
    pub fn get_mut(&mut self, name: &str) -> Option<&mut Loaded> {
        self.entries
            .iter_mut()
            .find(|e| e.site.spec.name == name)
            .map(|e| &mut e.plugin)
    }

    /// The meter named `name` (`None` if absent or a policy).
    pub fn meter_mut(&mut self, name: &str) -> Option<&mut MeterPlugin> {
        match self.get_mut(name)? {
            Loaded::Meter(m) => Some(m),
            Loaded::Policy(_) => None,
        }
    }

    /// The policy named `name` (`None` if absent or a meter).
    pub fn policy_mut(&mut self, name: &str) -> Option<&mut PolicyPlugin> {
        match self.get_mut(name)? {
            Loaded::Policy(p) => Some(p),
            Loaded::Meter(_) => None,
        }
    }

    /// The meters, in site-file order.
    pub fn meters_mut(&mut self) -> impl Iterator<Item = (&str, &mut MeterPlugin)> {
        self.entries.iter_mut().filter_map(|e| match &mut e.plugin {
            Loaded::Meter(m) => Some((e.site.spec.name.as_str(), m)),
            Loaded::Policy(_) => None,
        })
    }

    /// The policies, in site-file order.
    pub fn policies_mut(&mut self) -> impl Iterator<Item = (&str, &mut PolicyPlugin)> {
        self.entries.iter_mut().filter_map(|e| match &mut e.plugin {
            Loaded::Policy(p) => Some((e.site.spec.name.as_str(), p)),
            Loaded::Meter(_) => None,
        })
    }

    /// The loaded plugins' names, in site-file order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.entries.iter().map(|e| e.site.spec.name.as_str())
    }

    /// Every loaded plugin's status, in site-file order.
    pub fn statuses(&self) -> Vec<PluginStatus> {
        self.entries.iter().map(|e| e.plugin.status()).collect()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

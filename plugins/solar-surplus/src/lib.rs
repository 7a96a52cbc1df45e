//! `solar-surplus`: lets chosen EVSEs charge on solar surplus only.
//!
//! The surplus is what the site exports plus what the chosen EVSEs already draw (their draw is
//! inside the grid reading): `evse_draw - grid_import`, capped by the PV meter's production
//! when there is one. An EVSE is switched on when the surplus left after the EVSEs already on
//! covers its minimum current; once on it stays on for `min_on_s` even if clouds pass (a
//! contactor and a car should not cycle every tick), which is remembered in kv under `on`.
//! The result is a `solar-surplus` entry (A per line) for the next `validity_s`, and a hint per
//! chosen EVSE: on ones get weight 1, off ones weight 0 and a reason.
//!
//! Config: see plugins/README.md, section `solar-surplus`.

use std::collections::BTreeMap;

use loadstar_plugin_sdk::{
    Constraints, EvseHint, EvseState, PerLine, Policy, Reading, SiteSnapshot, SolarSurplus, config,
    kv, register_policy,
};
use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The EVSE ids (`station/evse`) that charge on surplus only, in switch-on order.
    pub evses: Vec<String>,
    /// The grid meter's id; default the meter on the root node.
    #[serde(default)]
    pub grid_meter: Option<String>,
    /// The PV inverter's meter id; when given, the surplus never exceeds its production.
    #[serde(default)]
    pub pv_meter: Option<String>,
    /// How long a switched-on EVSE stays on, seconds.
    #[serde(default = "default_min_on_s")]
    pub min_on_s: u32,
    /// Lines each chosen EVSE charges on (1 or 3).
    #[serde(default = "default_phases")]
    pub phases: u8,
    /// How long the answer holds, seconds.
    #[serde(default = "default_validity_s")]
    pub validity_s: u32,
}

fn default_min_on_s() -> u32 {
    300
}
fn default_phases() -> u8 {
    3
}
fn default_validity_s() -> u32 {
    60
}

impl Config {
    pub fn check(&self) -> Result<(), String> {
        if self.evses.is_empty() {
            return Err("config.evses is empty: list the EVSE ids that charge on surplus".into());
        }
        if !matches!(self.phases, 1 | 3) {
            return Err(format!("config.phases must be 1 or 3, got {}", self.phases));
        }
        if self.validity_s == 0 {
            return Err("config.validity_s must be at least 1".into());
        }
        Ok(())
    }
}

/// Power in W from a reading: total, else the lines' powers, else the lines' currents at `v`.
pub fn power_w(r: &Reading, v: f64) -> Option<f64> {
    if let Some(p) = r.total_power {
        return Some(p);
    }
    let sum = |l: &PerLine, f: f64| {
        let vals: Vec<f64> = [l.l1, l.l2, l.l3].into_iter().flatten().collect();
        (!vals.is_empty()).then(|| vals.iter().sum::<f64>() * f)
    };
    sum(&r.power, 1.0).or_else(|| sum(&r.current, v))
}

/// An EVSE's measured draw in W (the sum of its lines at `v`).
fn draw_w(e: &EvseState, v: f64) -> f64 {
    [e.measured.l1, e.measured.l2, e.measured.l3]
        .into_iter()
        .flatten()
        .filter(|a| a.is_finite())
        .sum::<f64>()
        * v
}

/// What the policy decides for one snapshot.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    /// The surplus offered to the chosen EVSEs, W (at least the minimum of those on).
    pub surplus_w: f64,
    /// The raw surplus measured, W.
    pub measured_w: f64,
    /// EVSE id → since when it is on (ms).
    pub on: BTreeMap<String, i64>,
}

/// The switching logic; no host calls, so it is tested natively.
pub struct Switch {
    pub min_on_ms: i64,
    pub phases: f64,
}

impl Switch {
    /// `candidates`: (id, minimum current A, session open) in config order.
    pub fn decide(
        &self,
        now: i64,
        measured_w: f64,
        pv_w: Option<f64>,
        voltage: f64,
        candidates: &[(String, f64, bool)],
        previously_on: &BTreeMap<String, i64>,
    ) -> Decision {
        let surplus = match pv_w {
            Some(pv) => measured_w.min(pv.max(0.0)),
            None => measured_w,
        }
        .max(0.0);
        let min_w = |min_a: f64| min_a * self.phases * voltage;
        let mut on = BTreeMap::new();
        let mut left = surplus;
        // Those within their minimum-on time stay on whatever the sky does.
        for (id, min_a, session) in candidates {
            if let (Some(since), true) = (previously_on.get(id), *session)
                && now - since < self.min_on_ms
            {
                on.insert(id.clone(), *since);
                left -= min_w(*min_a);
            }
        }
        // Then, in config order, every other one whose minimum the rest of the surplus covers.
        for (id, min_a, session) in candidates {
            if !*session || on.contains_key(id) {
                continue;
            }
            if left >= min_w(*min_a) {
                let since = previously_on.get(id).copied().unwrap_or(now);
                on.insert(id.clone(), since);
                left -= min_w(*min_a);
            }
        }
        let held: f64 = candidates
            .iter()
            .filter(|(id, _, _)| on.contains_key(id))
            .map(|(_, min_a, _)| min_w(*min_a))
            .sum();
        Decision {
            surplus_w: surplus.max(held),
            measured_w: surplus,
            on,
        }
    }
}

struct SolarSurplusPolicy {
    config: Config,
    on: Option<BTreeMap<String, i64>>,
}

impl Policy for SolarSurplusPolicy {
    fn new() -> Result<Self, String> {
        let config: Config = config::parse()?;
        config.check()?;
        Ok(SolarSurplusPolicy { config, on: None })
    }

    fn evaluate(&mut self, snapshot: SiteSnapshot) -> Result<Constraints, String> {
        let v = snapshot.nominal_voltage;
        if !(v.is_finite() && v > 0.0) {
            return Err(format!("nominal voltage {v} V"));
        }
        let root = snapshot.nodes.iter().find(|n| n.parent.is_none());
        let grid = match &self.config.grid_meter {
            Some(id) => snapshot.meters.iter().find(|m| &m.meter == id),
            None => snapshot
                .meters
                .iter()
                .find(|m| root.is_some_and(|r| m.node.as_deref() == Some(r.id.as_str()))),
        }
        .ok_or("no reading of the grid meter")?;
        let grid_w = power_w(&grid.reading, v)
            .filter(|p| p.is_finite())
            .ok_or_else(|| format!("meter {:?} reports no power or current", grid.meter))?;
        let pv_w = match &self.config.pv_meter {
            Some(id) => {
                let pv = snapshot
                    .meters
                    .iter()
                    .find(|m| &m.meter == id)
                    .ok_or_else(|| format!("no reading of the PV meter {id:?}"))?;
                // Inverters report production as export (negative) or positive: use the size.
                Some(
                    power_w(&pv.reading, v)
                        .filter(|p| p.is_finite())
                        .ok_or_else(|| format!("PV meter {id:?} reports no power"))?
                        .abs(),
                )
            }
            None => None,
        };
        let mut candidates = Vec::with_capacity(self.config.evses.len());
        let mut evse_draw = 0.0;
        for id in &self.config.evses {
            // A chosen EVSE missing from the site is off (a station offline, a typo).
            if let Some(e) = snapshot.evses.iter().find(|e| &e.id == id) {
                evse_draw += draw_w(e, v);
                candidates.push((id.clone(), e.min_current, e.session_active));
            } else {
                candidates.push((id.clone(), 0.0, false));
            }
        }
        let previously_on = match &self.on {
            Some(on) => on.clone(),
            None => kv::get("on")
                .map_err(|e| format!("kv get on: {e}"))?
                .and_then(|b| serde_json::from_slice(&b).ok())
                .unwrap_or_default(),
        };
        let switch = Switch {
            min_on_ms: i64::from(self.config.min_on_s) * 1000,
            phases: f64::from(self.config.phases),
        };
        let d = switch.decide(
            snapshot.now,
            evse_draw - grid_w,
            pv_w,
            v,
            &candidates,
            &previously_on,
        );
        if d.on != previously_on || self.on.is_none() {
            let bytes = serde_json::to_vec(&d.on).map_err(|e| e.to_string())?;
            kv::set("on", &bytes).map_err(|e| format!("kv set on: {e}"))?;
        }
        self.on = Some(d.on.clone());

        let amps = d.surplus_w / (f64::from(self.config.phases) * v);
        let line = Some(amps);
        let end = snapshot.now + i64::from(self.config.validity_s) * 1000;
        let hints = candidates
            .iter()
            .map(|(id, _, session)| {
                let (weight, reason) = match d.on.get(id) {
                    Some(since) => (1.0, format!("on surplus since {since}")),
                    None if !session => (0.0, "no open session".to_string()),
                    None => (0.0, "surplus below its minimum current".to_string()),
                };
                EvseHint {
                    evse: id.clone(),
                    priority: None,
                    weight: Some(weight),
                    until: Some(end),
                    reason,
                }
            })
            .collect();
        Ok(Constraints {
            limits: Vec::new(),
            prices: Vec::new(),
            solar: vec![SolarSurplus {
                start: snapshot.now,
                end,
                surplus: PerLine {
                    l1: line,
                    l2: (self.config.phases == 3).then_some(amps),
                    l3: (self.config.phases == 3).then_some(amps),
                },
                reason: format!(
                    "surplus {:.0} W measured, {:.0} W offered to {} of {} EVSEs on surplus",
                    d.measured_w,
                    d.surplus_w,
                    d.on.len(),
                    candidates.len()
                ),
            }],
            hints,
        })
    }
}

register_policy!(SolarSurplusPolicy);

#[cfg(test)]
mod tests {
    use super::*;

    const V: f64 = 230.0;
    // 6 A on three lines at 230 V.
    const MIN_3P: f64 = 6.0 * 3.0 * V;

    fn switch() -> Switch {
        Switch {
            min_on_ms: 300_000,
            phases: 3.0,
        }
    }

    fn evses(n: usize) -> Vec<(String, f64, bool)> {
        (0..n).map(|i| (format!("CP-{i}/1"), 6.0, true)).collect()
    }

    #[test]
    fn bad_configs_are_refused() {
        let parse = |v: serde_json::Value| -> Result<Config, String> {
            let c: Config = serde_json::from_value(v).map_err(|e| e.to_string())?;
            c.check()?;
            Ok(c)
        };
        assert!(parse(serde_json::json!({ "evses": [] })).is_err());
        let err = parse(serde_json::json!({ "evses": ["a/1"], "phases": 2 })).expect_err("2");
        assert!(err.contains("phases must be 1 or 3"), "{err}");
        assert!(parse(serde_json::json!({ "evse": ["a/1"] })).is_err());
        let c = parse(serde_json::json!({ "evses": ["a/1"] })).expect("defaults");
        assert_eq!((c.min_on_s, c.phases, c.validity_s), (300, 3, 60));
    }

    #[test]
    fn evses_switch_on_in_order_while_the_surplus_covers_their_minimum() {
        let none = BTreeMap::new();
        // 1.5 minimums of surplus: only the first goes on.
        let d = switch().decide(0, 1.5 * MIN_3P, None, V, &evses(2), &none);
        assert_eq!(d.on.keys().collect::<Vec<_>>(), vec!["CP-0/1"]);
        assert_eq!(d.surplus_w, 1.5 * MIN_3P);
        // Importing (negative surplus): nothing goes on and nothing is offered.
        let d = switch().decide(0, -2_000.0, None, V, &evses(2), &none);
        assert!(d.on.is_empty());
        assert_eq!(d.surplus_w, 0.0);
        // The PV meter caps the surplus (a grid reading that overstates it).
        let d = switch().decide(0, 3.0 * MIN_3P, Some(MIN_3P), V, &evses(2), &none);
        assert_eq!(d.on.len(), 1);
        assert_eq!(d.measured_w, MIN_3P);
        // No open session, no switch-on.
        let idle = vec![("CP-0/1".to_string(), 6.0, false)];
        assert!(
            switch()
                .decide(0, 5.0 * MIN_3P, None, V, &idle, &none)
                .on
                .is_empty()
        );
    }

    #[test]
    fn the_minimum_on_time_holds_an_evse_through_a_cloud() {
        let none = BTreeMap::new();
        let d = switch().decide(0, MIN_3P, None, V, &evses(1), &none);
        assert_eq!(d.on.get("CP-0/1"), Some(&0));
        // A cloud two minutes later: still on, offered its minimum.
        let d2 = switch().decide(120_000, 100.0, None, V, &evses(1), &d.on);
        assert_eq!(d2.on.get("CP-0/1"), Some(&0), "held by the minimum-on time");
        assert_eq!(d2.surplus_w, MIN_3P);
        assert_eq!(d2.measured_w, 100.0);
        // Past five minutes, still cloudy: off.
        let d3 = switch().decide(300_000, 100.0, None, V, &evses(1), &d2.on);
        assert!(d3.on.is_empty());
        assert_eq!(d3.surplus_w, 100.0);
        // Past five minutes in the sun: stays on, keeping its original switch-on time.
        let d4 = switch().decide(400_000, MIN_3P, None, V, &evses(1), &d2.on);
        assert_eq!(d4.on.get("CP-0/1"), Some(&0));
    }

    #[test]
    fn power_from_total_lines_or_currents() {
        let mut r = Reading::default();
        assert_eq!(power_w(&r, V), None);
        r.current.l1 = Some(-10.0);
        assert_eq!(power_w(&r, V), Some(-2300.0));
        r.power.l2 = Some(-500.0);
        assert_eq!(power_w(&r, V), Some(-500.0));
        r.total_power = Some(-4000.0);
        assert_eq!(power_w(&r, V), Some(-4000.0));
    }
}

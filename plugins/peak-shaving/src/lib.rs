//! `peak-shaving`: keeps the 15-minute average grid import under a monthly peak target, the
//! quantity capacity tariffs (Belgium, the Netherlands' large connections...) bill by.
//!
//! Each evaluation integrates the grid meter's import power over the current quarter-hour and
//! returns a limit on the grid node for the rest of the quarter: the power that, held until the
//! quarter ends, brings the quarter's average exactly to the target. A closed quarter that beat
//! the month's peak is remembered in the key-value store (`peak`), so a restart keeps it. Months
//! follow the site's time zone.
//!
//! Config: see plugins/README.md, section `peak-shaving`.

use chrono::{Datelike, TimeZone};
use chrono_tz::Tz;
use loadstar_plugin_sdk::{
    Constraints, LimitSlot, PerLine, Policy, SiteSnapshot, config, kv, register_policy,
    slots::QUARTER_HOUR_MS,
};
use serde::{Deserialize, Serialize};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// An IANA zone name; the snapshot's (the site's) zone when absent.
    #[serde(default)]
    pub time_zone: Option<String>,
    /// A number in kW, or `"learn"`: the month's highest quarter so far is the target.
    pub target_kw: Target,
    /// In learn mode, the target never goes below this (a new month starts at 0 kW).
    #[serde(default)]
    pub min_target_kw: Option<f64>,
    /// Kept below the target, kW (meter error, base-load jumps within a quarter).
    #[serde(default)]
    pub margin_kw: f64,
    /// The grid meter's id in the snapshot; the first meter of the root node when absent.
    #[serde(default)]
    pub meter: Option<String>,
    /// The node the limit applies to; the root (grid connection) when absent.
    #[serde(default)]
    pub node: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum Target {
    Fixed(f64),
    Learn(Learn),
}

#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Learn {
    Learn,
}

impl Config {
    pub fn check(&self) -> Result<(), String> {
        let finite_nonneg = |name: &str, v: f64| {
            if v.is_finite() && v >= 0.0 {
                Ok(())
            } else {
                Err(format!("config.{name} must be a number >= 0, got {v}"))
            }
        };
        match self.target_kw {
            Target::Fixed(kw) => {
                if !(kw.is_finite() && kw > 0.0) {
                    return Err(format!("config.target_kw must be > 0 kW, got {kw}"));
                }
            }
            Target::Learn(_) => match self.min_target_kw {
                Some(kw) if kw.is_finite() && kw > 0.0 => {}
                Some(kw) => return Err(format!("config.min_target_kw must be > 0 kW, got {kw}")),
                None => {
                    return Err(
                        "config.min_target_kw is required with target_kw = \"learn\" (a new \
                         month's peak starts at 0 kW)"
                            .into(),
                    );
                }
            },
        }
        finite_nonneg("margin_kw", self.margin_kw)?;
        if let Some(tz) = &self.time_zone {
            parse_tz(tz)?;
        }
        Ok(())
    }
}

pub fn parse_tz(name: &str) -> Result<Tz, String> {
    name.parse::<Tz>().map_err(|_| {
        format!("unknown time zone {name:?} (use an IANA name such as Europe/Amsterdam)")
    })
}

/// `YYYY-MM` of `at_ms` in `tz`.
pub fn month_of(tz: Tz, at_ms: i64) -> Result<String, String> {
    let local = tz
        .timestamp_millis_opt(at_ms)
        .single()
        .ok_or_else(|| format!("time {at_ms} ms is out of range"))?;
    Ok(format!("{:04}-{:02}", local.year(), local.month()))
}

/// The month's highest 15-minute average import, as kept in kv under `peak`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MonthPeak {
    pub month: String,
    pub peak_kw: f64,
}

/// The quarter being integrated.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Quarter {
    start: i64,
    /// Import energy since `start`, in W·ms (export counts negative: it offsets import).
    energy: f64,
    last_at: i64,
    last_w: f64,
}

/// What one evaluation decides.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    /// The power the rest of the quarter may import, W (never below 0).
    pub allowed_w: f64,
    pub quarter_end: i64,
    pub target_kw: f64,
    /// The quarter's average so far, kW.
    pub average_kw: f64,
    /// Set when a closed quarter raised the month's peak (to be saved).
    pub new_peak: Option<MonthPeak>,
}

/// The integrator and the peak; no host calls, so it is tested natively.
#[derive(Debug)]
pub struct Shaver {
    target: Target,
    min_target_kw: f64,
    margin_kw: f64,
    quarter: Option<Quarter>,
    pub peak: Option<MonthPeak>,
}

impl Shaver {
    pub fn new(config: &Config, peak: Option<MonthPeak>) -> Self {
        Shaver {
            target: config.target_kw,
            min_target_kw: config.min_target_kw.unwrap_or(0.0),
            margin_kw: config.margin_kw,
            quarter: None,
            peak,
        }
    }

    /// One sample of the grid import `power_w` at `now`; `tz` decides the months.
    pub fn step(&mut self, tz: Tz, now: i64, power_w: f64) -> Result<Decision, String> {
        let start = now - now.rem_euclid(QUARTER_HOUR_MS);
        let mut new_peak = None;
        let quarter = match self.quarter {
            // A sample from the past (a clock step back): start the quarter over.
            Some(q) if now < q.last_at => None,
            Some(q) if q.start == start => Some(Quarter {
                energy: q.energy + q.last_w * (now - q.last_at) as f64,
                last_at: now,
                last_w: power_w,
                ..q
            }),
            Some(q) => {
                // The previous quarter closed: its last power held until its end.
                let end = q.start + QUARTER_HOUR_MS;
                let energy = q.energy + q.last_w * (end - q.last_at).max(0) as f64;
                let average_kw = energy / QUARTER_HOUR_MS as f64 / 1000.0;
                let month = month_of(tz, q.start)?;
                let beats = match &self.peak {
                    Some(p) if p.month == month => average_kw > p.peak_kw,
                    _ => true,
                };
                if beats {
                    let peak = MonthPeak {
                        month,
                        peak_kw: average_kw.max(0.0),
                    };
                    self.peak = Some(peak.clone());
                    new_peak = Some(peak);
                }
                // Held since the new quarter began: the best guess when no sample came between.
                Some(Quarter {
                    start,
                    energy: q.last_w * (now - start) as f64,
                    last_at: now,
                    last_w: power_w,
                })
            }
            None => None,
        };
        // No history in this quarter (first sample, restart): assume the current power held
        // since its start, which is the conservative guess when importing.
        let quarter = quarter.unwrap_or(Quarter {
            start,
            energy: power_w * (now - start) as f64,
            last_at: now,
            last_w: power_w,
        });
        self.quarter = Some(quarter);

        let month = month_of(tz, now)?;
        let target_kw = match self.target {
            Target::Fixed(kw) => kw,
            Target::Learn(_) => {
                let learned = match &self.peak {
                    Some(p) if p.month == month => p.peak_kw,
                    _ => 0.0,
                };
                learned.max(self.min_target_kw)
            }
        };
        let budget_w = ((target_kw - self.margin_kw).max(0.0)) * 1000.0;
        let quarter_end = start + QUARTER_HOUR_MS;
        // At least one second left, so the last instant of a quarter does not divide by ~0.
        let remaining = (quarter_end - now).max(1_000) as f64;
        let allowed_w = ((budget_w * QUARTER_HOUR_MS as f64 - quarter.energy) / remaining).max(0.0);
        let elapsed = (now - start).max(1) as f64;
        Ok(Decision {
            allowed_w,
            quarter_end,
            target_kw,
            average_kw: quarter.energy / elapsed / 1000.0,
            new_peak,
        })
    }
}

/// The grid import in W from a reading: total power, else the sum of the lines' powers, else
/// the lines' currents at the nominal voltage.
pub fn import_w(r: &loadstar_plugin_sdk::Reading, nominal_voltage: f64) -> Option<f64> {
    if let Some(p) = r.total_power {
        return Some(p);
    }
    let sum = |l: &PerLine, f: f64| {
        let v: Vec<f64> = [l.l1, l.l2, l.l3].into_iter().flatten().collect();
        (!v.is_empty()).then(|| v.iter().sum::<f64>() * f)
    };
    sum(&r.power, 1.0).or_else(|| sum(&r.current, nominal_voltage))
}

/// A power cap spread over the node's lines as amps per line (a balanced three-phase load
/// draws a third per line), never above the node's own limit.
pub fn per_line_limit(allowed_w: f64, node_limit: &PerLine, nominal_voltage: f64) -> PerLine {
    let lines = [node_limit.l1, node_limit.l2, node_limit.l3];
    // A node with no line limits is treated as three-phase.
    let n = lines.iter().filter(|l| l.is_some()).count().max(1);
    let n = if lines.iter().all(|l| l.is_none()) {
        3
    } else {
        n
    };
    let amps = allowed_w / (n as f64 * nominal_voltage);
    let cap = |l: Option<f64>| match l {
        Some(limit) => Some(amps.min(limit)),
        None if lines.iter().all(|l| l.is_none()) => Some(amps),
        None => None,
    };
    PerLine {
        l1: cap(node_limit.l1),
        l2: cap(node_limit.l2),
        l3: cap(node_limit.l3),
    }
}

struct PeakShaving {
    config: Config,
    tz: Option<(String, Tz)>,
    shaver: Option<Shaver>,
}

impl PeakShaving {
    fn tz(&mut self, site_zone: &str) -> Result<Tz, String> {
        let name = self.config.time_zone.as_deref().unwrap_or(site_zone);
        match &self.tz {
            Some((cached, tz)) if cached == name => Ok(*tz),
            _ => {
                let tz = parse_tz(name)?;
                self.tz = Some((name.to_string(), tz));
                Ok(tz)
            }
        }
    }
}

impl Policy for PeakShaving {
    fn new() -> Result<Self, String> {
        let config: Config = config::parse()?;
        config.check()?;
        Ok(PeakShaving {
            config,
            tz: None,
            shaver: None,
        })
    }

    fn evaluate(&mut self, snapshot: SiteSnapshot) -> Result<Constraints, String> {
        let tz = self.tz(&snapshot.time_zone)?;
        let node = match &self.config.node {
            Some(id) => snapshot
                .nodes
                .iter()
                .find(|n| &n.id == id)
                .ok_or_else(|| format!("node {id:?} is not in the site"))?,
            None => snapshot
                .nodes
                .iter()
                .find(|n| n.parent.is_none())
                .ok_or("the site has no root node")?,
        };
        let meter = match &self.config.meter {
            Some(id) => snapshot.meters.iter().find(|m| &m.meter == id),
            None => snapshot
                .meters
                .iter()
                .find(|m| m.node.as_deref() == Some(node.id.as_str())),
        }
        .ok_or_else(|| {
            format!(
                "no reading of the grid meter ({})",
                self.config
                    .meter
                    .as_deref()
                    .unwrap_or("the root node's meter")
            )
        })?;
        let power = import_w(&meter.reading, snapshot.nominal_voltage)
            .filter(|p| p.is_finite())
            .ok_or_else(|| format!("meter {:?} reports no power or current", meter.meter))?;
        if !(snapshot.nominal_voltage.is_finite() && snapshot.nominal_voltage > 0.0) {
            return Err(format!("nominal voltage {} V", snapshot.nominal_voltage));
        }

        let shaver = match &mut self.shaver {
            Some(s) => s,
            None => {
                // The month's peak survives restarts; a corrupt entry is dropped, not fatal.
                let peak = kv::get("peak")
                    .map_err(|e| format!("kv get peak: {e}"))?
                    .and_then(|bytes| serde_json::from_slice::<MonthPeak>(&bytes).ok());
                self.shaver.insert(Shaver::new(&self.config, peak))
            }
        };
        let d = shaver.step(tz, snapshot.now, power)?;
        if let Some(peak) = &d.new_peak {
            let bytes = serde_json::to_vec(peak).map_err(|e| e.to_string())?;
            kv::set("peak", &bytes).map_err(|e| format!("kv set peak: {e}"))?;
        }
        let month_peak = shaver
            .peak
            .as_ref()
            .map(|p| format!("{} peak {:.2} kW", p.month, p.peak_kw))
            .unwrap_or_else(|| "no peak yet".into());
        Ok(Constraints {
            limits: vec![LimitSlot {
                node: node.id.clone(),
                start: snapshot.now,
                end: d.quarter_end,
                limit: per_line_limit(d.allowed_w, &node.limit, snapshot.nominal_voltage),
                reason: format!(
                    "15-min average import {:.2} kW so far, target {:.2} kW - margin {:.2} kW \
                     ({month_peak}): {:.0} W until the quarter ends",
                    d.average_kw, d.target_kw, self.config.margin_kw, d.allowed_w
                ),
            }],
            prices: Vec::new(),
            solar: Vec::new(),
            hints: Vec::new(),
        })
    }
}

register_policy!(PeakShaving);

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: i64 = 60_000;
    // 2026-06-01T00:00:00Z, a quarter boundary.
    const JUNE: i64 = 1_780_272_000_000;

    fn config(v: serde_json::Value) -> Result<Config, String> {
        let c: Config = serde_json::from_value(v).map_err(|e| e.to_string())?;
        c.check()?;
        Ok(c)
    }

    fn ams() -> Tz {
        parse_tz("Europe/Amsterdam").expect("zone")
    }

    #[test]
    fn bad_configs_are_refused_with_the_reason() {
        let err = config(serde_json::json!({ "target_kw": "learn" })).expect_err("no floor");
        assert!(err.contains("min_target_kw is required"), "{err}");
        let err = config(serde_json::json!({ "target_kw": -3.0 })).expect_err("negative");
        assert!(err.contains("target_kw must be > 0"), "{err}");
        let err = config(serde_json::json!({ "target_kw": 5, "time_zone": "Mars/Olympus" }))
            .expect_err("zone");
        assert!(err.contains("unknown time zone"), "{err}");
        assert!(config(serde_json::json!({ "target_kw": "lots" })).is_err());
        assert!(config(serde_json::json!({ "target_kw": 5, "margin": 1 })).is_err());
    }

    #[test]
    fn the_rest_of_the_quarter_gets_what_brings_the_average_to_the_target() {
        let c = config(serde_json::json!({ "target_kw": 10.0, "margin_kw": 1.0 })).expect("ok");
        let mut s = Shaver::new(&c, None);
        // First sample at the quarter's start: 9 kW budget over the whole quarter.
        let d = s.step(ams(), JUNE, 12_000.0).expect("step");
        assert!((d.allowed_w - 9_000.0).abs() < 1e-6, "{d:?}");
        // 12 kW for 5 minutes used 60 kW·min of the 135 kW·min budget: 75 over 10 minutes.
        let d = s.step(ams(), JUNE + 5 * MIN, 12_000.0).expect("step");
        assert!((d.allowed_w - 7_500.0).abs() < 1e-6, "{d:?}");
        assert!((d.average_kw - 12.0).abs() < 1e-9);
        assert_eq!(d.quarter_end, JUNE + 15 * MIN);
        // Overspent: the limit is zero, never negative.
        let d = s.step(ams(), JUNE + 14 * MIN, 20_000.0).expect("step");
        assert_eq!(d.allowed_w, 0.0);
    }

    #[test]
    fn learning_keeps_the_months_peak_and_a_new_month_starts_from_the_floor() {
        let c =
            config(serde_json::json!({ "target_kw": "learn", "min_target_kw": 4.0 })).expect("ok");
        let mut s = Shaver::new(&c, None);
        let d = s.step(ams(), JUNE, 6_000.0).expect("step");
        assert_eq!(d.target_kw, 4.0, "the floor before any peak");
        // 6 kW through the whole quarter: at the next one the peak is 6 kW.
        let d = s.step(ams(), JUNE + 15 * MIN, 3_000.0).expect("step");
        let peak = d.new_peak.expect("a new peak");
        assert_eq!(peak.month, "2026-06");
        assert!((peak.peak_kw - 6.0).abs() < 1e-9);
        assert!((d.target_kw - 6.0).abs() < 1e-9);
        // A lower quarter does not lower the peak.
        let d = s.step(ams(), JUNE + 30 * MIN, 3_000.0).expect("step");
        assert_eq!(d.new_peak, None);
        assert!((d.target_kw - 6.0).abs() < 1e-9);
    }

    #[test]
    fn months_follow_the_sites_time_zone() {
        // 2026-06-30T22:00Z is already July in Amsterdam (UTC+2), still June in UTC.
        let at = JUNE + 29 * 24 * 60 * MIN + 22 * 60 * MIN;
        assert_eq!(month_of(ams(), at).expect("month"), "2026-07");
        assert_eq!(
            month_of(parse_tz("UTC").expect("utc"), at).expect("month"),
            "2026-06"
        );
        let c =
            config(serde_json::json!({ "target_kw": "learn", "min_target_kw": 4.0 })).expect("ok");
        let june_peak = MonthPeak {
            month: "2026-06".into(),
            peak_kw: 9.0,
        };
        let mut s = Shaver::new(&c, Some(june_peak.clone()));
        let d = s.step(ams(), at - 60 * MIN, 1_000.0).expect("step");
        assert_eq!(d.target_kw, 9.0, "21:00Z is still June in Amsterdam");
        let d = s.step(ams(), at, 1_000.0).expect("step");
        assert_eq!(d.target_kw, 4.0, "July in Amsterdam: back to the floor");
        // The June quarter that closed (1 kW) did not beat June's peak.
        assert_eq!(s.peak.as_ref().map(|p| p.month.as_str()), Some("2026-06"));
        // July's first quarter closes: any average beats a June peak in July.
        let d = s.step(ams(), at + 15 * MIN, 1_000.0).expect("step");
        assert_eq!(d.new_peak.map(|p| p.month), Some("2026-07".to_string()));
        assert_eq!(d.target_kw, 4.0, "1 kW learned, the floor is higher");
    }

    #[test]
    fn power_from_total_lines_or_currents_and_the_limit_per_line() {
        let mut r = loadstar_plugin_sdk::Reading::default();
        assert_eq!(import_w(&r, 230.0), None);
        r.current = PerLine {
            l1: Some(10.0),
            l2: Some(-2.0),
            l3: None,
        };
        assert_eq!(import_w(&r, 230.0), Some(8.0 * 230.0));
        r.power.l1 = Some(500.0);
        assert_eq!(import_w(&r, 230.0), Some(500.0));
        r.total_power = Some(-100.0);
        assert_eq!(import_w(&r, 230.0), Some(-100.0));

        let three = PerLine {
            l1: Some(25.0),
            l2: Some(25.0),
            l3: Some(25.0),
        };
        let l = per_line_limit(6_900.0, &three, 230.0);
        assert_eq!((l.l1, l.l2, l.l3), (Some(10.0), Some(10.0), Some(10.0)));
        let l = per_line_limit(69_000.0, &three, 230.0);
        assert_eq!(l.l1, Some(25.0), "never above the node's own limit");
        let single = PerLine {
            l1: Some(40.0),
            l2: None,
            l3: None,
        };
        let l = per_line_limit(2_300.0, &single, 230.0);
        assert_eq!((l.l1, l.l2, l.l3), (Some(10.0), None, None));
    }
}

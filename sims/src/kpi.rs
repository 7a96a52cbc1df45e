//! KPIs of a run, from its time series at the sims' own resolution (pure, streaming).
//!
//! Limit violations are A·s above the connection limit per line, with the worst excess, and every
//! ampere of excess is attributed, in this order:
//! 1. to **stations**, for what they drew above what they were commanded (non-compliance);
//! 2. to the **building**, where the uncontrolled load (base load − PV) alone exceeds the limit;
//! 3. to **reaction lag**: within one control tick plus 5 s (IEC 61851-1's allowance for the car)
//!    after an unannounced change (a limit drop not known in advance, or a rise of the
//!    uncontrolled load), up to the size of that change. Scheduled changes get no allowance;
//! 4. everything else to the **controller**, whose goal is zero.
//!
//! Energy: delivered against requested per vehicle, the share that reached its target by
//! departure (over the vehicles whose target was feasible, where that is known), cost of the
//! site's grid import at the tariff, PV self-consumption, and Jain's fairness index over each
//! vehicle's served fraction (delivered / requested).

use std::time::Duration;

use chrono::{DateTime, Utc};
use loadstar_optimizer::model::{ElectricalModel, Line, PerLine, watt_hours, wh_to_kwh};

use crate::meter::TariffSlot;

/// IEC 61851-1: what the car is allowed to take to follow a new limit.
pub const CAR_REACTION: Duration = Duration::from_secs(5);

/// One station's draw at a sample, on the grid lines.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StationDraw {
    pub station: usize,
    /// What it draws, amps per grid line.
    pub draw: PerLine,
    /// What the controller allowed it, amps per grid line.
    pub commanded: PerLine,
}

/// The site at one moment.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample<'a> {
    pub at: DateTime<Utc>,
    /// The limit in force.
    pub limit: PerLine,
    /// Whether the limit in force was announced before it took effect.
    pub limit_announced: bool,
    /// The grid meter, import positive.
    pub grid: PerLine,
    /// Base load − PV per line (what no controller can change).
    pub uncontrolled: PerLine,
    /// PV generation, W.
    pub pv_w: f64,
    pub stations: &'a [StationDraw],
}

/// The excess at its worst.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WorstExcess {
    pub at: DateTime<Utc>,
    pub line: Line,
    pub amps: f64,
}

/// A·s of limit violation by cause.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Violations {
    pub total_amp_s: f64,
    /// Per station index, A·s of excess caused by drawing above the command.
    pub stations_amp_s: Vec<f64>,
    pub building_amp_s: f64,
    pub lag_amp_s: f64,
    pub controller_amp_s: f64,
    pub worst: Option<WorstExcess>,
}

/// One vehicle's outcome.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct VehicleOutcome {
    pub requested_wh: f64,
    /// Delivered by departure.
    pub delivered_wh: f64,
    /// Whether reaching the target was possible at all (from the offline optimum), if known.
    pub feasible: Option<bool>,
}

impl VehicleOutcome {
    /// Reached its target (within 1 Wh).
    pub fn reached(&self) -> bool {
        self.delivered_wh + 1.0 >= self.requested_wh
    }
}

/// The KPIs of one run.
#[derive(Debug, Clone, PartialEq)]
pub struct Kpis {
    pub violations: Violations,
    pub requested_kwh: f64,
    pub delivered_kwh: f64,
    /// Of the vehicles whose target was feasible (all, where unknown), the share that reached it.
    pub reached_target_share: f64,
    /// The counts behind it: (reached, vehicles counted).
    pub reached_target: (usize, usize),
    pub import_kwh: f64,
    pub export_kwh: f64,
    pub pv_kwh: f64,
    /// (PV − export) / PV; 1 without PV.
    pub pv_self_consumption: f64,
    /// Cost of the grid import at the tariff (export earns nothing here).
    pub energy_cost: f64,
    pub jain_fairness: f64,
    /// Mean and maximum over stations of SetChargingProfile calls per hour.
    pub profiles_per_station_hour: (f64, f64),
}

/// Jain's fairness index of `x`: (Σx)² / (n·Σx²), 1 when all equal (or all 0), 1/n when one
/// gets everything.
pub fn jain(x: &[f64]) -> f64 {
    let sum: f64 = x.iter().sum();
    let squares: f64 = x.iter().map(|v| v * v).sum();
    if x.is_empty() || squares == 0.0 {
        1.0
    } else {
        sum * sum / (x.len() as f64 * squares)
    }
}

/// The price at `t`, 0 outside the tariff.
pub fn price_at(tariff: &[TariffSlot], t: DateTime<Utc>) -> f64 {
    tariff
        .iter()
        .find(|s| s.start <= t && t < s.end)
        .map_or(0.0, |s| s.price)
}

/// Streams samples into the KPIs.
#[derive(Debug, Clone)]
pub struct Accumulator {
    model: ElectricalModel,
    lag_window: chrono::Duration,
    tariff: Vec<TariffSlot>,
    violations: Violations,
    import_wh: f64,
    export_wh: f64,
    pv_wh: f64,
    cost: f64,
    previous: Option<(PerLine, PerLine)>,
    /// Active lag allowances: (expires, amps per line).
    allowances: Vec<(DateTime<Utc>, PerLine)>,
    first: Option<DateTime<Utc>>,
    last: Option<DateTime<Utc>>,
}

impl Accumulator {
    /// `control_tick` is the controller's period: the lag allowance is one tick plus 5 s.
    pub fn new(model: ElectricalModel, control_tick: Duration, tariff: Vec<TariffSlot>) -> Self {
        Accumulator {
            model,
            lag_window: chrono::Duration::from_std(control_tick + CAR_REACTION)
                .unwrap_or(chrono::Duration::MAX),
            tariff,
            violations: Violations::default(),
            import_wh: 0.0,
            export_wh: 0.0,
            pv_wh: 0.0,
            cost: 0.0,
            previous: None,
            allowances: Vec::new(),
            first: None,
            last: None,
        }
    }

    /// Adds a sample that holds for `dt_s` seconds.
    pub fn push(&mut self, s: &Sample<'_>, dt_s: f64) {
        let dt = if dt_s.is_finite() { dt_s.max(0.0) } else { 0.0 };
        self.first.get_or_insert(s.at);
        self.last = Some(s.at + chrono::Duration::milliseconds((dt * 1000.0) as i64));

        // Unannounced changes since the previous sample open a lag allowance of their size.
        if let Some((prev_limit, prev_unc)) = self.previous {
            let rise = (s.uncontrolled - prev_unc).non_negative();
            let drop = if s.limit_announced {
                PerLine::ZERO
            } else {
                (prev_limit - s.limit).non_negative()
            };
            let size = rise + drop;
            if size.max_abs() > 0.0 {
                self.allowances.push((s.at + self.lag_window, size));
            }
        }
        self.previous = Some((s.limit, s.uncontrolled));
        self.allowances.retain(|(expires, _)| s.at < *expires);
        let mut allowance: PerLine = self.allowances.iter().map(|(_, a)| *a).sum();

        let excess = (s.grid - s.limit).non_negative();
        let v = &mut self.violations;
        for line in Line::ALL {
            let mut left = excess[line];
            if left <= 0.0 {
                continue;
            }
            v.total_amp_s += left * dt;
            if v.worst.is_none_or(|w| left > w.amps) {
                v.worst = Some(WorstExcess {
                    at: s.at,
                    line,
                    amps: left,
                });
            }
            for d in s.stations {
                let over = (d.draw[line] - d.commanded[line]).max(0.0).min(left);
                if over > 0.0 {
                    if v.stations_amp_s.len() <= d.station {
                        v.stations_amp_s.resize(d.station + 1, 0.0);
                    }
                    v.stations_amp_s[d.station] += over * dt;
                    left -= over;
                }
            }
            let building = (s.uncontrolled[line] - s.limit[line]).max(0.0).min(left);
            v.building_amp_s += building * dt;
            left -= building;
            let lag = allowance[line].max(0.0).min(left);
            v.lag_amp_s += lag * dt;
            allowance[line] -= lag;
            left -= lag;
            v.controller_amp_s += left * dt;
        }

        let watts = self.model.line_amps_to_watts(&s.grid);
        if watts >= 0.0 {
            let wh = watt_hours(watts, dt);
            self.import_wh += wh;
            self.cost += wh_to_kwh(wh) * price_at(&self.tariff, s.at);
        } else {
            self.export_wh += watt_hours(-watts, dt);
        }
        if s.pv_w.is_finite() && s.pv_w > 0.0 {
            self.pv_wh += watt_hours(s.pv_w, dt);
        }
    }

    /// The KPIs, given each vehicle's outcome and the profiles sent per station.
    pub fn finish(self, vehicles: &[VehicleOutcome], profiles_per_station: &[u32]) -> Kpis {
        let hours = match (self.first, self.last) {
            (Some(a), Some(b)) if b > a => (b - a).num_milliseconds() as f64 / 3_600_000.0,
            _ => 0.0,
        };
        let counted: Vec<&VehicleOutcome> = vehicles
            .iter()
            .filter(|v| v.feasible != Some(false))
            .collect();
        let reached = counted.iter().filter(|v| v.reached()).count();
        let served: Vec<f64> = vehicles
            .iter()
            .map(|v| {
                if v.requested_wh > 0.0 {
                    (v.delivered_wh / v.requested_wh).clamp(0.0, 1.0)
                } else {
                    1.0
                }
            })
            .collect();
        let rates: Vec<f64> = profiles_per_station
            .iter()
            .map(|&n| {
                if hours > 0.0 {
                    f64::from(n) / hours
                } else {
                    0.0
                }
            })
            .collect();
        Kpis {
            violations: self.violations,
            requested_kwh: wh_to_kwh(vehicles.iter().map(|v| v.requested_wh).sum()),
            delivered_kwh: wh_to_kwh(vehicles.iter().map(|v| v.delivered_wh).sum()),
            reached_target: (reached, counted.len()),
            reached_target_share: if counted.is_empty() {
                1.0
            } else {
                reached as f64 / counted.len() as f64
            },
            import_kwh: wh_to_kwh(self.import_wh),
            export_kwh: wh_to_kwh(self.export_wh),
            pv_kwh: wh_to_kwh(self.pv_wh),
            pv_self_consumption: if self.pv_wh > 0.0 {
                ((self.pv_wh - self.export_wh) / self.pv_wh).clamp(0.0, 1.0)
            } else {
                1.0
            },
            energy_cost: self.cost,
            jain_fairness: jain(&served),
            profiles_per_station_hour: (
                if rates.is_empty() {
                    0.0
                } else {
                    rates.iter().sum::<f64>() / rates.len() as f64
                },
                rates.iter().copied().fold(0.0, f64::max),
            ),
        }
    }
}

impl Kpis {
    /// The header of [`Self::table_row`].
    pub const TABLE_HEADER: &'static str = "| policy | delivered kWh | requested kWh | reached target (of feasible) | cost | PV self-use | Jain | A·s over (controller / lag / building / stations) | worst A | profiles/station/h (mean, max) |\n|---|---|---|---|---|---|---|---|---|---|";

    /// One Markdown table row for `policy`.
    pub fn table_row(&self, policy: &str) -> String {
        let v = &self.violations;
        // `+ 0.0`: an empty f64 sum is -0.0, which would print as "-0.0".
        let stations: f64 = v.stations_amp_s.iter().sum::<f64>() + 0.0;
        format!(
            "| {policy} | {:.1} | {:.1} | {} of {} ({}) | {:.2} | {:.1} % | {:.3} | {:.1} ({:.1} / {:.1} / {:.1} / {:.1}) | {:.1} | {:.2}, {:.2} |",
            self.delivered_kwh,
            self.requested_kwh,
            self.reached_target.0,
            self.reached_target.1,
            // No feasible vehicle: a share of nothing is no score.
            if self.reached_target.1 == 0 {
                "–".to_owned()
            } else {
                format!("{:.1} %", self.reached_target_share * 100.0)
            },
            self.energy_cost,
            self.pv_self_consumption * 100.0,
            self.jain_fairness,
            v.total_amp_s,
            v.controller_amp_s,
            v.lag_amp_s,
            v.building_amp_s,
            stations,
            v.worst.map_or(0.0, |w| w.amps),
            self.profiles_per_station_hour.0,
            self.profiles_per_station_hour.1,
        )
    }
}

/// A scenario's KPI table in Markdown: a `###` title, the header, one row per `(label, kpis)`.
/// Both runners print this, so the CSMS under test lines up with the baselines.
pub fn markdown_table<'a>(
    title: &str,
    rows: impl IntoIterator<Item = (&'a str, &'a Kpis)>,
) -> String {
    let mut out = format!("### {title}\n\n{}\n", Kpis::TABLE_HEADER);
    for (label, kpis) in rows {
        out.push_str(&kpis.table_row(label));
        out.push('\n');
    }
    out
}

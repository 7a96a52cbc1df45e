//! The site around the chargers (pure): the building's base load, the PV on the roof, scripted
//! grid-limit changes, and what the grid meter reads.
//!
//! Per line, grid current = base load + EVs − PV; import is positive, export negative. Watts
//! become per-line amps through [`ElectricalModel`] (balanced loads), never a local 230.

use chrono::{DateTime, Timelike, Utc};
use loadstar_optimizer::model::{ElectricalModel, Line, PerLine, watt_hours};

/// Why a site description is unusable.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SiteError {
    #[error("a daily profile needs at least one point")]
    EmptyProfile,
    #[error("daily profile point at {0} s is not within one day (0..86400)")]
    PointOutOfDay(u32),
    #[error("daily profile points must be in increasing time order ({0} s then {1} s)")]
    PointsNotIncreasing(u32, u32),
    #[error("value {0} is not finite")]
    NotFinite(f64),
    #[error("{0} must be finite and at least 0, got {1}")]
    Negative(&'static str, f64),
    #[error("line shares must be finite, at least 0 and not all 0")]
    BadShares,
}

/// A value over the day (UTC seconds since midnight), linear between points and wrapping from
/// the last point of the day to the first of the next.
#[derive(Debug, Clone, PartialEq)]
pub struct DailyProfile {
    points: Vec<(u32, f64)>,
}

impl DailyProfile {
    pub fn new(points: Vec<(u32, f64)>) -> Result<Self, SiteError> {
        if points.is_empty() {
            return Err(SiteError::EmptyProfile);
        }
        for &(t, v) in &points {
            if t >= 86_400 {
                return Err(SiteError::PointOutOfDay(t));
            }
            if !v.is_finite() {
                return Err(SiteError::NotFinite(v));
            }
        }
        for pair in points.windows(2) {
            if pair[1].0 <= pair[0].0 {
                return Err(SiteError::PointsNotIncreasing(pair[0].0, pair[1].0));
            }
        }
        Ok(DailyProfile { points })
    }

    /// The same value all day.
    pub fn constant(value: f64) -> Result<Self, SiteError> {
        Self::new(vec![(0, value)])
    }

    /// The value at `t`.
    pub fn at(&self, t: DateTime<Utc>) -> f64 {
        let s = f64::from(t.num_seconds_from_midnight()) + f64::from(t.nanosecond()) * 1e-9;
        let n = self.points.len();
        // The segment [p_i, p_{i+1}) containing s, wrapping around midnight.
        let after = self.points.iter().position(|&(pt, _)| f64::from(pt) > s);
        let (a, b) = match after {
            Some(0) | None => (self.points[n - 1], self.points[0]),
            Some(i) => (self.points[i - 1], self.points[i]),
        };
        let (ta, tb) = (f64::from(a.0), f64::from(b.0));
        let span = (tb - ta).rem_euclid(86_400.0);
        if span == 0.0 {
            return a.1;
        }
        let into = (s - ta).rem_euclid(86_400.0);
        a.1 + (b.1 - a.1) * (into / span)
    }
}

/// A PV system: peak power times a clear-sky bell between sunrise and sunset (UTC seconds of
/// day), times a cloud factor the scenario may vary.
#[derive(Debug, Clone, PartialEq)]
pub struct Pv {
    pub peak_w: f64,
    pub sunrise_s: u32,
    pub sunset_s: u32,
}

impl Pv {
    /// Output in W at `t` (a sine over the daylight hours, 0 at night).
    pub fn watts(&self, t: DateTime<Utc>) -> f64 {
        let s = f64::from(t.num_seconds_from_midnight());
        let (rise, set) = (f64::from(self.sunrise_s), f64::from(self.sunset_s));
        if set <= rise || s <= rise || s >= set || self.peak_w.is_nan() || self.peak_w <= 0.0 {
            return 0.0;
        }
        self.peak_w * (std::f64::consts::PI * (s - rise) / (set - rise)).sin()
    }
}

/// A grid-limit change at a moment: the hook demand response uses. `announced` says whether it
/// was known in advance (which the KPI attribution needs).
#[derive(Debug, Clone, PartialEq)]
pub struct LimitChange {
    pub at: DateTime<Utc>,
    pub limit: PerLine,
    pub announced: bool,
}

/// The site: electrical model, building, PV, the connection limit and its scripted changes.
#[derive(Debug, Clone, PartialEq)]
pub struct Site {
    pub model: ElectricalModel,
    /// Building base load, total W.
    pub base_load_w: DailyProfile,
    /// How the base load splits over L1, L2, L3 (normalised; a balanced building is 1, 1, 1).
    pub base_shares: [f64; 3],
    pub pv: Option<Pv>,
    /// The connection limit, amps per line, before any scripted change.
    pub limit: PerLine,
    pub limit_changes: Vec<LimitChange>,
}

impl Site {
    pub fn validate(&self) -> Result<(), SiteError> {
        let s = self.base_shares;
        if s.iter().any(|v| !v.is_finite() || *v < 0.0) || s.iter().sum::<f64>() <= 0.0 {
            return Err(SiteError::BadShares);
        }
        if let Some(pv) = &self.pv
            && !(pv.peak_w.is_finite() && pv.peak_w >= 0.0)
        {
            return Err(SiteError::Negative("pv peak_w", pv.peak_w));
        }
        for (_, v) in self.limit.iter() {
            if !(v.is_finite() && v >= 0.0) {
                return Err(SiteError::Negative("limit", v));
            }
        }
        Ok(())
    }

    /// Per-line amps of a total of `watts` spread by `shares` (balanced is 1, 1, 1).
    fn spread(&self, watts: f64, shares: [f64; 3]) -> PerLine {
        let lines = self.model.grid().lines();
        let total: f64 = lines.iter().map(|l| shares[l.index()]).sum();
        let balanced = self.model.watts_to_line_amps(watts);
        let mut out = PerLine::ZERO;
        if total > 0.0 {
            for &line in lines {
                out[line] = balanced * shares[line.index()] * lines.len() as f64 / total;
            }
        }
        out
    }

    /// The building's load per line at `t`.
    pub fn base_amps(&self, t: DateTime<Utc>) -> PerLine {
        self.spread(self.base_load_w.at(t).max(0.0), self.base_shares)
    }

    /// PV generation per line at `t`, as positive amps (a balanced three-phase inverter).
    pub fn pv_amps(&self, t: DateTime<Utc>) -> PerLine {
        self.pv
            .as_ref()
            .map_or(PerLine::ZERO, |pv| self.spread(pv.watts(t), [1.0; 3]))
    }

    /// What the grid meter measures at `t` with the EVs drawing `ev_amps` per line.
    pub fn grid_amps(&self, t: DateTime<Utc>, ev_amps: PerLine) -> PerLine {
        self.base_amps(t) + ev_amps - self.pv_amps(t)
    }

    /// The connection limit in force at `t`.
    pub fn limit_at(&self, t: DateTime<Utc>) -> PerLine {
        self.limit_changes
            .iter()
            .filter(|c| c.at <= t)
            .max_by_key(|c| c.at)
            .map_or(self.limit, |c| c.limit)
    }
}

/// What a grid meter shows: signed per-line values and energy registers.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct MeterReading {
    pub at: Option<DateTime<Utc>>,
    /// Amps per line, import positive.
    pub amps: PerLine,
    /// Watts per line, import positive.
    pub watts: PerLine,
    /// Line-to-neutral volts (phase volts on delta).
    pub volts: PerLine,
    pub import_wh: f64,
    pub export_wh: f64,
}

impl MeterReading {
    pub fn total_w(&self) -> f64 {
        self.watts.sum()
    }
}

/// Integrates the grid meter over time.
#[derive(Debug, Clone, PartialEq)]
pub struct GridMeter {
    model: ElectricalModel,
    reading: MeterReading,
}

impl GridMeter {
    pub fn new(model: ElectricalModel) -> Self {
        GridMeter {
            model,
            reading: MeterReading {
                volts: PerLine::splat_on(model.grid(), model.phase_voltage_v()),
                ..MeterReading::default()
            },
        }
    }

    pub fn reading(&self) -> MeterReading {
        self.reading
    }

    /// The meter now reads `amps` at `t`; energy since the last update is integrated at the
    /// previous power (so the registers lag the present by one update, as sampled meters do).
    pub fn update(&mut self, t: DateTime<Utc>, amps: PerLine) {
        if let Some(prev) = self.reading.at {
            let dt = (t - prev).num_milliseconds().max(0) as f64 / 1000.0;
            let w = self.reading.total_w();
            if w >= 0.0 {
                self.reading.import_wh += watt_hours(w, dt);
            } else {
                self.reading.export_wh += watt_hours(-w, dt);
            }
        }
        let mut watts = PerLine::ZERO;
        for line in Line::ALL {
            let mut one = PerLine::ZERO;
            one[line] = amps[line];
            // Per-line power of a line-to-neutral load: the model's conversion of that line alone.
            watts[line] = self.model.line_amps_to_watts(&one);
        }
        self.reading.at = Some(t);
        self.reading.amps = amps;
        self.reading.watts = watts;
    }
}

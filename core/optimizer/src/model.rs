//! The electrical model: grid types, how a station's phases land on the grid lines, and every
//! conversion between amps, watts and watt-hours in Loadstar.
//!
//! Inside Loadstar, limits and setpoints are **amps per grid line**. Watts and kilowatts only
//! appear at the edges (site files, tariffs, energy estimates, dashboards), and the conversions
//! live here and nowhere else: using √3 instead of 3, or 230 V instead of 400 V, is the classic
//! bug, so it gets written down exactly once.
//!
//! # Grids and the stored voltage
//!
//! [`ElectricalModel`] stores one nominal voltage, [`ElectricalModel::phase_voltage_v`]: the
//! voltage across one phase of a load connected the grid's normal way.
//!
//! | [`GridType`]    | lines      | neutral | `phase_voltage_v` is…    | line-to-line voltage `V_LL` |
//! |-----------------|------------|---------|--------------------------|-----------------------------|
//! | `wye`           | L1, L2, L3 | yes     | line-to-neutral (230 V)  | √3 · V (400 V)              |
//! | `delta`         | L1, L2, L3 | no      | line-to-line (230 V, IT) | V (230 V)                   |
//! | `split_phase`   | L1, L2     | yes     | line-to-neutral (120 V)  | 2 · V (240 V)               |
//!
//! On a delta grid there is no neutral, so the only voltage a load can see is line-to-line; in a
//! delta system the phase voltage *is* the line voltage. A Norwegian 230 V IT site therefore says
//! `{ grid = "delta", phase_voltage_v = 230 }`, and a 230/400 V TN site says
//! `{ grid = "wye", phase_voltage_v = 230 }`.
//!
//! # Station wiring and line loading
//!
//! A station's setpoint `I` is amps per station phase, which is what OCPP limits and what the EV
//! draws on each of its active phase conductors. [`StationWiring`] says where those phases land:
//!
//! * a line-to-neutral phase loads its one line with `I`;
//! * a line-to-line phase (delta single-phase, split-phase 240 V) sends `I` out on one line and
//!   back on the other: it loads **both** lines with `I`;
//! * a three-phase station on a three-wire delta supply draws `I` on each of its three lines
//!   (a balanced three-wire load: station phase current = line current).
//!
//! An EV may use fewer phases than the station has: a 1-phase EV on a 3-phase station uses station
//! phase 1 only, which on a rotated station (phases 1, 2, 3 → L2, L3, L1) is grid line L2. See
//! [`StationCircuit::active_phases`] for the exact rule, including delta.
//!
//! # Power
//!
//! At power factor `pf` (1 unless stated), per station phase current `I`, `n` active phases:
//!
//! | wiring                                 | P                          |
//! |----------------------------------------|----------------------------|
//! | line-to-neutral (wye, split 120 V)     | n · V_phase · I · pf       |
//! | delta, balanced three-phase            | √3 · V_LL · I · pf         |
//! | delta, single-phase line-to-line       | V_LL · I · pf              |
//! | split-phase 240 V line-to-line         | V_LL · I · pf (= 2·120·I)  |
//!
//! The whole grid connection, balanced, with `I` on every line (e.g. a kW contract limit turned
//! into per-line amps with [`ElectricalModel::watts_to_line_amps`]):
//! wye `P = 3 · V_phase · I`; delta `P = √3 · V_LL · I`; split-phase `P = 2 · V_phase · I = V_LL · I`.
//!
//! Energy is power times time: `Wh = W · seconds / 3600`. Durations come in as seconds: this crate
//! has no clock.
//!
//! # Worked examples
//!
//! | site                 | station / EV                 | I    | lines loaded      | P                          |
//! |----------------------|------------------------------|------|-------------------|----------------------------|
//! | wye 230/400 V        | 3-phase, 3-phase EV          | 16 A | L1, L2, L3: 16 A  | 3·230·16 = 11 040 W        |
//! | wye 230/400 V        | 1-phase on L1                | 32 A | L1: 32 A          | 230·32 = 7 360 W           |
//! | wye 230/400 V        | 3-phase L2,L3,L1, 1-phase EV | 16 A | L2: 16 A          | 230·16 = 3 680 W           |
//! | delta IT 230 V       | 3-phase, 3-phase EV          | 32 A | L1, L2, L3: 32 A  | √3·230·32 ≈ 12 748 W       |
//! | delta IT 230 V       | 1-phase L1–L2                | 32 A | L1, L2: 32 A each | 230·32 = 7 360 W           |
//! | split-phase 120/240  | 240 V L1–L2                  | 40 A | L1, L2: 40 A each | 240·40 = 9 600 W           |
//! | split-phase 120/240  | 120 V L1–N                   | 12 A | L1: 12 A          | 120·12 = 1 440 W           |
//!
//! ```
//! use loadstar_optimizer::model::{ElectricalModel, GridType, Line, StationWiring};
//!
//! let site = ElectricalModel::new(GridType::Delta, 230.0)?;
//! let station = site.station(StationWiring::single_phase_line_to_line(Line::L1, Line::L2))?;
//! let load = station.line_load(1, 32.0);
//! assert_eq!(load.0, [32.0, 32.0, 0.0]);
//! assert!((station.amps_to_watts(1, 32.0) - 7360.0).abs() < 1e-9);
//! # Ok::<(), loadstar_optimizer::model::ModelError>(())
//! ```

use std::fmt;
use std::ops::{Add, AddAssign, Index, IndexMut, Mul, Sub, SubAssign};

use serde::{Deserialize, Serialize};

/// √3, the ratio between line-to-line and line-to-neutral voltage on a wye grid, and between
/// total power and `V_LL · I` for a balanced three-wire load. (`f64::consts::SQRT_3` is unstable.)
pub const SQRT_3: f64 = 1.732_050_807_568_877_2;

/// Seconds in one hour, for watt-hours.
pub const SECONDS_PER_HOUR: f64 = 3600.0;

/// Everything that can be wrong with an electrical model or a station's wiring.
#[derive(Debug, Clone, Copy, PartialEq, thiserror::Error)]
pub enum ModelError {
    /// The nominal voltage is not a finite number above 0 V.
    #[error("nominal voltage must be finite and greater than 0 V, got {volts} V")]
    InvalidVoltage {
        /// The rejected value.
        volts: f64,
    },
    /// The power factor is not in (0, 1].
    #[error("power factor must be finite, greater than 0 and at most 1, got {pf}")]
    InvalidPowerFactor {
        /// The rejected value.
        pf: f64,
    },
    /// A station was given no phases or more than three.
    #[error("a station has 1 to 3 phases, got {count}")]
    PhaseCount {
        /// The rejected number of phases.
        count: usize,
    },
    /// Two station phases land on the same grid line.
    #[error("grid line {line} is used by more than one station phase")]
    DuplicateLine {
        /// The line used twice.
        line: Line,
    },
    /// A line-to-line connection between a line and itself.
    #[error("a line-to-line connection needs two different lines, got {line}-{line}")]
    SameLineTwice {
        /// The line given twice.
        line: Line,
    },
    /// Line-to-line loads exist only on delta and split-phase grids here; on a wye grid stations
    /// connect line-to-neutral.
    #[error(
        "line-to-line connection {a}-{b} is not allowed on a wye grid; connect line-to-neutral"
    )]
    LineToLineOnWye {
        /// First line.
        a: Line,
        /// Second line.
        b: Line,
    },
    /// A delta grid has no neutral conductor.
    #[error("a delta grid has no neutral, so a {line}-N connection is impossible")]
    NoNeutralOnDelta {
        /// The line that was to be connected to the neutral.
        line: Line,
    },
    /// The line does not exist on this grid (L3 on split-phase).
    #[error("grid line {line} does not exist on a {grid} grid")]
    LineNotOnGrid {
        /// The missing line.
        line: Line,
        /// The grid.
        grid: GridType,
    },
}

// ---------------------------------------------------------------------------------------------
// Grid and lines
// ---------------------------------------------------------------------------------------------

/// How the site's grid connection is built.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GridType {
    /// Three-phase four-wire with neutral, e.g. 230/400 V TN or TT.
    Wye,
    /// Three-phase three-wire without neutral, e.g. the Norwegian 230 V IT grid: 230 V between
    /// lines, single-phase chargers connect line-to-line.
    Delta,
    /// 120/240 V: lines L1 and L2 plus neutral, 240 V between L1 and L2. There is no L3.
    SplitPhase,
}

impl GridType {
    /// The lines this grid has: L1, L2, L3, or L1, L2 for split-phase.
    pub const fn lines(self) -> &'static [Line] {
        match self {
            GridType::Wye | GridType::Delta => &Line::ALL,
            GridType::SplitPhase => &[Line::L1, Line::L2],
        }
    }

    /// Whether `line` exists on this grid.
    pub const fn has_line(self, line: Line) -> bool {
        !matches!((self, line), (GridType::SplitPhase, Line::L3))
    }

    /// Whether the grid has a neutral conductor (wye and split-phase do, delta does not).
    pub const fn has_neutral(self) -> bool {
        !matches!(self, GridType::Delta)
    }
}

impl fmt::Display for GridType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            GridType::Wye => "wye",
            GridType::Delta => "delta",
            GridType::SplitPhase => "split_phase",
        })
    }
}

/// A grid line (phase conductor) of the site connection. Serialized as `"L1"`, `"L2"`, `"L3"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Line {
    /// Line 1.
    #[serde(rename = "L1", alias = "l1")]
    L1,
    /// Line 2.
    #[serde(rename = "L2", alias = "l2")]
    L2,
    /// Line 3 (absent on split-phase grids).
    #[serde(rename = "L3", alias = "l3")]
    L3,
}

impl Line {
    /// L1, L2, L3 in order.
    pub const ALL: [Line; 3] = [Line::L1, Line::L2, Line::L3];

    /// 0 for L1, 1 for L2, 2 for L3.
    pub const fn index(self) -> usize {
        match self {
            Line::L1 => 0,
            Line::L2 => 1,
            Line::L3 => 2,
        }
    }

    /// The line at `index` (0..=2), if any.
    pub const fn from_index(index: usize) -> Option<Line> {
        match index {
            0 => Some(Line::L1),
            1 => Some(Line::L2),
            2 => Some(Line::L3),
            _ => None,
        }
    }
}

impl fmt::Display for Line {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Line::L1 => "L1",
            Line::L2 => "L2",
            Line::L3 => "L3",
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Per-line values
// ---------------------------------------------------------------------------------------------

/// One value per grid line, `[L1, L2, L3]`, usually amps. On split-phase grids L3 stays 0.
///
/// Serialized as a plain array `[l1, l2, l3]`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct PerLine(pub [f64; 3]);

impl PerLine {
    /// All lines 0.
    pub const ZERO: PerLine = PerLine([0.0; 3]);

    /// Values for L1, L2, L3.
    pub const fn new(l1: f64, l2: f64, l3: f64) -> Self {
        PerLine([l1, l2, l3])
    }

    /// All lines 0.
    pub const fn zero() -> Self {
        Self::ZERO
    }

    /// The same value on all three lines.
    pub const fn splat(value: f64) -> Self {
        PerLine([value; 3])
    }

    /// `value` on the lines of `grid`, 0 on lines the grid does not have (L3 on split-phase).
    pub fn splat_on(grid: GridType, value: f64) -> Self {
        let mut out = Self::ZERO;
        for &line in grid.lines() {
            out[line] = value;
        }
        out
    }

    /// The value on `line`.
    pub const fn get(&self, line: Line) -> f64 {
        self.0[line.index()]
    }

    /// Applies `f` to each line's value.
    pub fn map(self, mut f: impl FnMut(f64) -> f64) -> Self {
        PerLine(self.0.map(&mut f))
    }

    /// Combines two per-line values line by line.
    pub fn zip_with(self, other: Self, mut f: impl FnMut(f64, f64) -> f64) -> Self {
        PerLine([
            f(self.0[0], other.0[0]),
            f(self.0[1], other.0[1]),
            f(self.0[2], other.0[2]),
        ])
    }

    /// Line-wise minimum.
    pub fn min(self, other: Self) -> Self {
        self.zip_with(other, f64::min)
    }

    /// Line-wise maximum.
    pub fn max(self, other: Self) -> Self {
        self.zip_with(other, f64::max)
    }

    /// Each line clamped to at least 0 (e.g. headroom that is already exceeded).
    pub fn non_negative(self) -> Self {
        self.map(|v| v.max(0.0))
    }

    /// The largest absolute value over the three lines: the worst-loaded line.
    pub fn max_abs(&self) -> f64 {
        self.0.iter().fold(0.0, |acc, v| acc.max(v.abs()))
    }

    /// Sum over the three lines.
    pub fn sum(&self) -> f64 {
        self.0.iter().sum()
    }

    /// Whether every line is at most the matching line of `limit`.
    pub fn fits_within(&self, limit: &PerLine) -> bool {
        self.0.iter().zip(limit.0.iter()).all(|(v, l)| v <= l)
    }

    /// `(line, value)` pairs for L1, L2, L3.
    pub fn iter(&self) -> impl Iterator<Item = (Line, f64)> {
        Line::ALL.into_iter().zip(self.0)
    }
}

impl From<[f64; 3]> for PerLine {
    fn from(values: [f64; 3]) -> Self {
        PerLine(values)
    }
}

impl From<PerLine> for [f64; 3] {
    fn from(values: PerLine) -> Self {
        values.0
    }
}

impl Index<Line> for PerLine {
    type Output = f64;
    fn index(&self, line: Line) -> &f64 {
        &self.0[line.index()]
    }
}

impl IndexMut<Line> for PerLine {
    fn index_mut(&mut self, line: Line) -> &mut f64 {
        &mut self.0[line.index()]
    }
}

impl Add for PerLine {
    type Output = PerLine;
    fn add(self, rhs: PerLine) -> PerLine {
        self.zip_with(rhs, |a, b| a + b)
    }
}

impl Sub for PerLine {
    type Output = PerLine;
    fn sub(self, rhs: PerLine) -> PerLine {
        self.zip_with(rhs, |a, b| a - b)
    }
}

impl AddAssign for PerLine {
    fn add_assign(&mut self, rhs: PerLine) {
        *self = *self + rhs;
    }
}

impl SubAssign for PerLine {
    fn sub_assign(&mut self, rhs: PerLine) {
        *self = *self - rhs;
    }
}

impl Mul<f64> for PerLine {
    type Output = PerLine;
    fn mul(self, k: f64) -> PerLine {
        self.map(|v| v * k)
    }
}

impl std::iter::Sum for PerLine {
    fn sum<I: Iterator<Item = PerLine>>(iter: I) -> PerLine {
        iter.fold(PerLine::ZERO, Add::add)
    }
}

// ---------------------------------------------------------------------------------------------
// Power factor
// ---------------------------------------------------------------------------------------------

/// A power factor in (0, 1]. Chargers run close to 1; [`PowerFactor::UNITY`] is the default
/// everywhere.
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd, Serialize, Deserialize)]
#[serde(try_from = "f64", into = "f64")]
pub struct PowerFactor(f64);

impl PowerFactor {
    /// Power factor 1: active power equals apparent power.
    pub const UNITY: PowerFactor = PowerFactor(1.0);

    /// A power factor; must be finite, > 0 and ≤ 1.
    pub fn new(pf: f64) -> Result<Self, ModelError> {
        if pf.is_finite() && pf > 0.0 && pf <= 1.0 {
            Ok(PowerFactor(pf))
        } else {
            Err(ModelError::InvalidPowerFactor { pf })
        }
    }

    /// The value.
    pub const fn get(self) -> f64 {
        self.0
    }
}

impl Default for PowerFactor {
    fn default() -> Self {
        Self::UNITY
    }
}

impl TryFrom<f64> for PowerFactor {
    type Error = ModelError;
    fn try_from(pf: f64) -> Result<Self, ModelError> {
        PowerFactor::new(pf)
    }
}

impl From<PowerFactor> for f64 {
    fn from(pf: PowerFactor) -> f64 {
        pf.0
    }
}

// ---------------------------------------------------------------------------------------------
// The site's electrical model
// ---------------------------------------------------------------------------------------------

/// The site's grid type and nominal voltage. Always valid: build it with
/// [`ElectricalModel::new`] or deserialize it (which runs the same checks).
///
/// Serialized as `{ "grid": "wye", "phase_voltage_v": 230.0 }`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "ElectricalModelSpec", into = "ElectricalModelSpec")]
pub struct ElectricalModel {
    grid: GridType,
    phase_voltage_v: f64,
}

/// The unchecked serde form of [`ElectricalModel`].
#[derive(Serialize, Deserialize)]
struct ElectricalModelSpec {
    grid: GridType,
    phase_voltage_v: f64,
}

impl TryFrom<ElectricalModelSpec> for ElectricalModel {
    type Error = ModelError;
    fn try_from(spec: ElectricalModelSpec) -> Result<Self, ModelError> {
        ElectricalModel::new(spec.grid, spec.phase_voltage_v)
    }
}

impl From<ElectricalModel> for ElectricalModelSpec {
    fn from(model: ElectricalModel) -> Self {
        ElectricalModelSpec {
            grid: model.grid,
            phase_voltage_v: model.phase_voltage_v,
        }
    }
}

impl ElectricalModel {
    /// 230/400 V wye (TN/TT), the European default.
    pub const WYE_230_400: ElectricalModel = ElectricalModel {
        grid: GridType::Wye,
        phase_voltage_v: 230.0,
    };

    /// 230 V IT delta (Norway): 230 V line-to-line, no neutral.
    pub const DELTA_IT_230: ElectricalModel = ElectricalModel {
        grid: GridType::Delta,
        phase_voltage_v: 230.0,
    };

    /// 120/240 V split-phase (North America).
    pub const SPLIT_PHASE_120_240: ElectricalModel = ElectricalModel {
        grid: GridType::SplitPhase,
        phase_voltage_v: 120.0,
    };

    /// A model for `grid` with nominal `phase_voltage_v`: line-to-neutral on wye and split-phase
    /// (230, 120), line-to-line on delta (230 for IT). The voltage must be finite and > 0.
    pub fn new(grid: GridType, phase_voltage_v: f64) -> Result<Self, ModelError> {
        if phase_voltage_v.is_finite() && phase_voltage_v > 0.0 {
            Ok(ElectricalModel {
                grid,
                phase_voltage_v,
            })
        } else {
            Err(ModelError::InvalidVoltage {
                volts: phase_voltage_v,
            })
        }
    }

    /// The grid type.
    pub const fn grid(&self) -> GridType {
        self.grid
    }

    /// Nominal voltage across one phase of a normally connected load: line-to-neutral on wye
    /// and split-phase, line-to-line on delta.
    pub const fn phase_voltage_v(&self) -> f64 {
        self.phase_voltage_v
    }

    /// Nominal line-to-line voltage `V_LL`: wye √3·V (230 → 398.4 ≈ 400 V), split-phase 2·V
    /// (120 → 240 V; the two legs are in antiphase), delta V itself.
    pub fn line_voltage_v(&self) -> f64 {
        match self.grid {
            GridType::Wye => SQRT_3 * self.phase_voltage_v,
            GridType::Delta => self.phase_voltage_v,
            GridType::SplitPhase => 2.0 * self.phase_voltage_v,
        }
    }

    /// Nominal line-to-neutral voltage, or `None` on delta (no neutral).
    pub fn neutral_voltage_v(&self) -> Option<f64> {
        self.grid.has_neutral().then_some(self.phase_voltage_v)
    }

    /// Checks `wiring` against this grid; see [`StationWiring::validate`].
    pub fn validate_wiring(&self, wiring: &StationWiring) -> Result<(), ModelError> {
        wiring.validate(self.grid)
    }

    /// Binds a station's wiring to this site, after checking it fits the grid.
    pub fn station(&self, wiring: StationWiring) -> Result<StationCircuit, ModelError> {
        StationCircuit::new(*self, wiring)
    }

    /// Total active power (W) of the whole connection drawing `I` amps on every line, at power
    /// factor 1: wye `3·V_phase·I`, delta `√3·V_LL·I`, split-phase `2·V_phase·I` (= `V_LL·I`).
    pub fn balanced_watts_per_line_amp(&self) -> f64 {
        match self.grid {
            GridType::Wye => 3.0 * self.phase_voltage_v,
            GridType::Delta => SQRT_3 * self.phase_voltage_v,
            GridType::SplitPhase => 2.0 * self.phase_voltage_v,
        }
    }

    /// A power for the whole connection (W) as the equal current on every line (A):
    /// wye `I = P / (3·V_phase)`, delta `I = P / (√3·V_LL)`, split-phase `I = P / (2·V_phase)`.
    pub fn watts_to_line_amps(&self, watts: f64) -> f64 {
        watts / self.balanced_watts_per_line_amp()
    }

    /// [`Self::watts_to_line_amps`] for kilowatts.
    pub fn kw_to_line_amps(&self, kw: f64) -> f64 {
        self.watts_to_line_amps(kw_to_watts(kw))
    }

    /// A kW limit for the whole grid connection as a per-line current limit: the balanced
    /// current on each line the grid has, 0 on lines it does not have (L3 on split-phase).
    pub fn connection_limit_from_kw(&self, kw: f64) -> PerLine {
        PerLine::splat_on(self.grid, self.kw_to_line_amps(kw))
    }

    /// Estimated total active power (W) from per-line currents, power factor 1.
    ///
    /// Wye and split-phase: `V_phase · Σ I_line` over the grid's lines (exact for line-to-neutral
    /// loads, and for split-phase 240 V loads: `120·(I+I) = 240·I`). Delta:
    /// `√3 · V_LL · mean(I_line)`, exact for balanced loads only (line currents alone do not fix
    /// the power of an unbalanced three-wire load). Lines the grid lacks are ignored.
    pub fn line_amps_to_watts(&self, amps: &PerLine) -> f64 {
        let total: f64 = self.grid.lines().iter().map(|&l| amps[l]).sum();
        match self.grid {
            GridType::Wye | GridType::SplitPhase => self.phase_voltage_v * total,
            GridType::Delta => SQRT_3 * self.phase_voltage_v * total / 3.0,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Station wiring
// ---------------------------------------------------------------------------------------------

/// Where one single-phase load (a station phase) connects.
///
/// Serialized as `{ "line_to_neutral": "L1" }` or `{ "line_to_line": ["L1", "L2"] }`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PhaseConnection {
    /// Between a line and the neutral (wye, split-phase 120 V). Loads the line with `I`.
    LineToNeutral(Line),
    /// Between two lines (delta single-phase, split-phase 240 V). `I` flows out of one line and
    /// back through the other, so it loads **both** with `I`.
    LineToLine(Line, Line),
}

/// How a station's phases land on the grid lines. Grid-independent; check it against a grid with
/// [`StationWiring::validate`] (or [`ElectricalModel::station`]).
///
/// Serialized as `{ "three_phase": ["L2", "L3", "L1"] }`, `{ "two_phase": ["L1", "L2"] }` or
/// `{ "single_phase": { "line_to_neutral": "L1" } }`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StationWiring {
    /// A three-phase station; station phase k (1, 2, 3) is on grid line `rotation[k - 1]`.
    ///
    /// * wye: each station phase is line-to-neutral on its line;
    /// * delta: a three-wire load with no neutral. With a three-phase EV each line carries the
    ///   station phase current `I` (balanced, `P = √3·V_LL·I`). A single-phase EV draws between
    ///   `rotation[0]` and `rotation[1]`, loading both with `I` (`P = V_LL·I`); that is how
    ///   IT-grid stations feed single-phase cars.
    ///
    /// Not possible on split-phase (no L3).
    ThreePhase([Line; 3]),
    /// A two-phase station (split-phase 120 V legs, or two phases of a wye grid): station phase k
    /// is line-to-neutral on `lines[k - 1]`. Not possible on delta (no neutral).
    TwoPhase([Line; 2]),
    /// A single-phase station.
    SinglePhase(PhaseConnection),
}

impl StationWiring {
    /// A three-phase station with phase rotation: station phases 1, 2, 3 on
    /// `rotation[0]`, `rotation[1]`, `rotation[2]`. `[L1, L2, L3]` is the unrotated station.
    pub const fn three_phase(rotation: [Line; 3]) -> Self {
        StationWiring::ThreePhase(rotation)
    }

    /// A single-phase station between `line` and neutral (wye, split-phase 120 V).
    pub const fn single_phase(line: Line) -> Self {
        StationWiring::SinglePhase(PhaseConnection::LineToNeutral(line))
    }

    /// A single-phase station between lines `a` and `b` (delta, split-phase 240 V).
    pub const fn single_phase_line_to_line(a: Line, b: Line) -> Self {
        StationWiring::SinglePhase(PhaseConnection::LineToLine(a, b))
    }

    /// A two-phase station, phase 1 on `a`-N, phase 2 on `b`-N.
    pub const fn two_phase(a: Line, b: Line) -> Self {
        StationWiring::TwoPhase([a, b])
    }

    /// A station whose phases, in order, are line-to-neutral on `lines` (1 to 3 of them, all
    /// different): the shape a site file lists as "phases on L2, L3, L1".
    pub fn line_to_neutral(lines: &[Line]) -> Result<Self, ModelError> {
        let wiring = match *lines {
            [a] => Self::single_phase(a),
            [a, b] => Self::two_phase(a, b),
            [a, b, c] => Self::three_phase([a, b, c]),
            _ => return Err(ModelError::PhaseCount { count: lines.len() }),
        };
        check_distinct(wiring.lines().as_slice())?;
        Ok(wiring)
    }

    /// Number of station phases: 1, 2 or 3.
    pub const fn phase_count(&self) -> u8 {
        match self {
            StationWiring::ThreePhase(_) => 3,
            StationWiring::TwoPhase(_) => 2,
            StationWiring::SinglePhase(_) => 1,
        }
    }

    /// Every grid line the station is wired to (not necessarily loaded by a given EV).
    pub fn lines(&self) -> Vec<Line> {
        match *self {
            StationWiring::ThreePhase(rotation) => rotation.to_vec(),
            StationWiring::TwoPhase(lines) => lines.to_vec(),
            StationWiring::SinglePhase(PhaseConnection::LineToNeutral(l)) => vec![l],
            StationWiring::SinglePhase(PhaseConnection::LineToLine(a, b)) => vec![a, b],
        }
    }

    /// Checks that this wiring can exist on `grid`:
    ///
    /// * no grid line used twice (a rotation is a permutation; line-to-line needs two lines);
    /// * line-to-line only on delta and split-phase grids;
    /// * line-to-neutral (single- and two-phase stations) not on delta grids;
    /// * no L3 on split-phase grids (so no three-phase stations there).
    pub fn validate(&self, grid: GridType) -> Result<(), ModelError> {
        match *self {
            StationWiring::ThreePhase(rotation) => check_distinct(&rotation)?,
            StationWiring::TwoPhase(lines) => {
                check_distinct(&lines)?;
                if grid == GridType::Delta {
                    return Err(ModelError::NoNeutralOnDelta { line: lines[0] });
                }
            }
            StationWiring::SinglePhase(PhaseConnection::LineToNeutral(line)) => {
                if grid == GridType::Delta {
                    return Err(ModelError::NoNeutralOnDelta { line });
                }
            }
            StationWiring::SinglePhase(PhaseConnection::LineToLine(a, b)) => {
                if a == b {
                    return Err(ModelError::SameLineTwice { line: a });
                }
                if grid == GridType::Wye {
                    return Err(ModelError::LineToLineOnWye { a, b });
                }
            }
        }
        match self.lines().into_iter().find(|&l| !grid.has_line(l)) {
            Some(line) => Err(ModelError::LineNotOnGrid { line, grid }),
            None => Ok(()),
        }
    }
}

fn check_distinct(lines: &[Line]) -> Result<(), ModelError> {
    for (i, &line) in lines.iter().enumerate() {
        if lines[..i].contains(&line) {
            return Err(ModelError::DuplicateLine { line });
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// A station on a site: line loads and power
// ---------------------------------------------------------------------------------------------

/// A station's wiring bound to the site's electrical model, checked to fit the grid. This is
/// where per-phase setpoints become per-line loads and watts.
///
/// Every method takes `ev_phases`: how many phases the EV uses, as reported or measured.
/// `0` means unknown and is treated as "all the station's phases" (the conservative choice for
/// line loads); more than the station has is capped at the station's count.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StationCircuit {
    model: ElectricalModel,
    wiring: StationWiring,
}

impl StationCircuit {
    /// Binds `wiring` to `model`, after [`StationWiring::validate`].
    pub fn new(model: ElectricalModel, wiring: StationWiring) -> Result<Self, ModelError> {
        wiring.validate(model.grid)?;
        Ok(StationCircuit { model, wiring })
    }

    /// The site's electrical model.
    pub const fn model(&self) -> ElectricalModel {
        self.model
    }

    /// The station's wiring.
    pub const fn wiring(&self) -> StationWiring {
        self.wiring
    }

    /// How many station phases the EV actually uses: `ev_phases` capped at the station's phase
    /// count (0 = unknown = all of them). The EV uses station phases 1..=n, in station order.
    ///
    /// On a delta grid a three-phase station has no neutral, so the EV draws either single-phase
    /// line-to-line or balanced three-phase: a 2-phase EV there counts as 3 (it may load all
    /// three lines).
    pub fn active_phases(&self, ev_phases: u8) -> u8 {
        let station = self.wiring.phase_count();
        let n = if ev_phases == 0 {
            station
        } else {
            ev_phases.min(station)
        };
        match (self.model.grid, self.wiring) {
            (GridType::Delta, StationWiring::ThreePhase(_)) if n >= 2 => 3,
            _ => n,
        }
    }

    /// What to put in an OCPP charging profile's `numberPhases`: the phases the EV will use
    /// (1, 2 or 3). Single-phase line-to-line stations (delta, 240 V split-phase) are 1.
    pub fn ocpp_number_phases(&self, ev_phases: u8) -> u8 {
        self.active_phases(ev_phases)
    }

    /// Amps on each grid line per amp of per-phase setpoint: 1 on every loaded line, 0 elsewhere.
    pub fn line_coefficients(&self, ev_phases: u8) -> PerLine {
        let n = usize::from(self.active_phases(ev_phases));
        let mut c = PerLine::ZERO;
        match self.wiring {
            StationWiring::ThreePhase(rotation) => {
                if self.model.grid == GridType::Delta && n == 1 {
                    // Single-phase EV on a three-wire station: line-to-line.
                    c[rotation[0]] = 1.0;
                    c[rotation[1]] = 1.0;
                } else {
                    // Wye: the first n station phases, each line-to-neutral.
                    // Delta (n = 3): balanced three-wire, line current = phase current.
                    for &line in rotation.iter().take(n) {
                        c[line] = 1.0;
                    }
                }
            }
            StationWiring::TwoPhase(lines) => {
                for &line in lines.iter().take(n) {
                    c[line] = 1.0;
                }
            }
            StationWiring::SinglePhase(PhaseConnection::LineToNeutral(line)) => c[line] = 1.0,
            StationWiring::SinglePhase(PhaseConnection::LineToLine(a, b)) => {
                c[a] = 1.0;
                c[b] = 1.0;
            }
        }
        c
    }

    /// The load on the grid lines when the EV draws `amps` per phase. Linear in `amps`
    /// (negative amps give negative loads).
    pub fn line_load(&self, ev_phases: u8, amps: f64) -> PerLine {
        self.line_coefficients(ev_phases) * amps
    }

    /// The largest per-phase setpoint whose [`Self::line_load`] fits within `headroom` (amps per
    /// line still available): the minimum over loaded lines of headroom / coefficient. Lines the
    /// EV does not load do not matter. Returns 0 if no line is loaded, if some loaded line has no
    /// headroom left, or if a headroom is NaN.
    pub fn max_amps_within(&self, ev_phases: u8, headroom: &PerLine) -> f64 {
        let c = self.line_coefficients(ev_phases);
        let mut best: Option<f64> = None;
        for line in Line::ALL {
            if c[line] > 0.0 {
                let fit = headroom[line] / c[line];
                // NaN headroom must not become a permission to draw.
                let fit = if fit.is_nan() { 0.0 } else { fit };
                best = Some(best.map_or(fit, |b| b.min(fit)));
            }
        }
        best.map_or(0.0, |b| b.max(0.0))
    }

    /// Active power (W) per amp of per-phase setpoint, at power factor 1:
    ///
    /// * line-to-neutral phases (wye, split-phase, any station shape): `n · V_phase`;
    /// * delta three-phase station, balanced: `√3 · V_LL`;
    /// * delta three-phase station with a single-phase EV, or any line-to-line station: `V_LL`.
    pub fn watts_per_amp(&self, ev_phases: u8) -> f64 {
        let n = f64::from(self.active_phases(ev_phases));
        match self.wiring {
            StationWiring::ThreePhase(_) if self.model.grid == GridType::Delta => {
                if n >= 3.0 {
                    SQRT_3 * self.model.line_voltage_v()
                } else {
                    self.model.line_voltage_v()
                }
            }
            StationWiring::ThreePhase(_) | StationWiring::TwoPhase(_) => {
                n * self.model.phase_voltage_v
            }
            StationWiring::SinglePhase(PhaseConnection::LineToNeutral(_)) => {
                self.model.phase_voltage_v
            }
            StationWiring::SinglePhase(PhaseConnection::LineToLine(..)) => {
                self.model.line_voltage_v()
            }
        }
    }

    /// Active power (W) when the EV draws `amps` per phase, power factor 1.
    pub fn amps_to_watts(&self, ev_phases: u8, amps: f64) -> f64 {
        self.amps_to_watts_at(ev_phases, amps, PowerFactor::UNITY)
    }

    /// Active power (W) when the EV draws `amps` per phase at power factor `pf`:
    /// [`Self::watts_per_amp`] · `amps` · `pf`.
    pub fn amps_to_watts_at(&self, ev_phases: u8, amps: f64, pf: PowerFactor) -> f64 {
        self.watts_per_amp(ev_phases) * amps * pf.get()
    }

    /// The per-phase current (A) at which the EV draws `watts` of active power, power factor 1.
    pub fn watts_to_amps(&self, ev_phases: u8, watts: f64) -> f64 {
        self.watts_to_amps_at(ev_phases, watts, PowerFactor::UNITY)
    }

    /// The per-phase current (A) at which the EV draws `watts` at power factor `pf`:
    /// `watts / (watts_per_amp · pf)`.
    pub fn watts_to_amps_at(&self, ev_phases: u8, watts: f64, pf: PowerFactor) -> f64 {
        // Both factors are > 0 by construction (validated voltage, at least one phase, pf > 0).
        watts / (self.watts_per_amp(ev_phases) * pf.get())
    }

    /// [`Self::amps_to_watts`] in kW.
    pub fn amps_to_kw(&self, ev_phases: u8, amps: f64) -> f64 {
        watts_to_kw(self.amps_to_watts(ev_phases, amps))
    }

    /// [`Self::watts_to_amps`] from kW.
    pub fn kw_to_amps(&self, ev_phases: u8, kw: f64) -> f64 {
        self.watts_to_amps(ev_phases, kw_to_watts(kw))
    }
}

// ---------------------------------------------------------------------------------------------
// Unit helpers
// ---------------------------------------------------------------------------------------------

/// W → kW.
pub fn watts_to_kw(watts: f64) -> f64 {
    watts / 1000.0
}

/// kW → W.
pub fn kw_to_watts(kw: f64) -> f64 {
    kw * 1000.0
}

/// Wh → kWh.
pub fn wh_to_kwh(wh: f64) -> f64 {
    wh / 1000.0
}

/// kWh → Wh.
pub fn kwh_to_wh(kwh: f64) -> f64 {
    kwh * 1000.0
}

/// Energy (Wh) of a constant `watts` held for `seconds`: `W · s / 3600`.
pub fn watt_hours(watts: f64, seconds: f64) -> f64 {
    watts * seconds / SECONDS_PER_HOUR
}

/// Energy (kWh) of a constant `watts` held for `seconds`.
pub fn kilowatt_hours(watts: f64, seconds: f64) -> f64 {
    wh_to_kwh(watt_hours(watts, seconds))
}

/// The constant power (W) that delivers `wh` in `seconds`: `Wh · 3600 / s`. Returns 0 for a
/// duration that is not positive and finite.
pub fn average_watts(wh: f64, seconds: f64) -> f64 {
    if seconds.is_finite() && seconds > 0.0 {
        wh * SECONDS_PER_HOUR / seconds
    } else {
        0.0
    }
}

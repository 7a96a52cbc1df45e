//! The EV model: a battery behind an AC on-board charger.
//!
//! Pure: the caller advances it with [`Ev::step`] and a duration. The car draws the least of the
//! station's limit, its on-board charger's maximum and what its charging curve accepts; below its
//! minimum current it cannot charge and draws 0 (IEC 61851: it pauses). Power comes from the
//! station's [`StationCircuit`], so phases and voltages follow the site's electrical model.
//! Losses are not modelled: every watt-hour drawn ends up in the battery.

use chrono::{DateTime, Utc};
use loadstar_optimizer::model::{SECONDS_PER_HOUR, StationCircuit, watt_hours};

/// Why an EV description is unusable.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EvError {
    #[error("{field} must be finite and {rule}, got {value}")]
    Invalid {
        field: &'static str,
        rule: &'static str,
        value: f64,
    },
    #[error("an EV charges on 1, 2 or 3 phases, got {0}")]
    Phases(u8),
    #[error("min current {min} A is above max current {max} A")]
    MinAboveMax { min: f64, max: f64 },
}

/// When the driver is satisfied.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Target {
    /// State of charge, 0..=1.
    Soc(f64),
    /// Energy to add, Wh.
    EnergyWh(f64),
}

/// A car as it arrives.
#[derive(Debug, Clone, PartialEq)]
pub struct EvSpec {
    pub capacity_wh: f64,
    /// State of charge on arrival, 0..=1.
    pub arrival_soc: f64,
    pub target: Target,
    pub departure: Option<DateTime<Utc>>,
    /// The on-board charger's maximum, amps per phase.
    pub max_amps: f64,
    /// Below this the car cannot charge (6 A for most cars).
    pub min_amps: f64,
    /// Phases the on-board charger uses: 1, 2 or 3.
    pub phases: u8,
    /// State of charge where the curve starts to taper (linearly down to 0 at full).
    pub taper_from_soc: f64,
    /// Whether the car speaks ISO 15118 and sends its charging needs (2.0.1).
    pub iso15118: bool,
}

impl EvSpec {
    /// A typical car: 60 kWh, 3-phase 16 A, 6 A minimum, tapering from 80 %.
    pub fn typical(arrival_soc: f64, target_soc: f64) -> Self {
        EvSpec {
            capacity_wh: 60_000.0,
            arrival_soc,
            target: Target::Soc(target_soc),
            departure: None,
            max_amps: 16.0,
            min_amps: 6.0,
            phases: 3,
            taper_from_soc: 0.8,
            iso15118: false,
        }
    }

    /// The energy the driver wants added, Wh (before the battery's limit).
    pub fn requested_wh(&self) -> f64 {
        match self.target {
            Target::Soc(s) => ((s - self.arrival_soc) * self.capacity_wh).max(0.0),
            Target::EnergyWh(e) => e,
        }
    }

    fn validate(&self) -> Result<(), EvError> {
        let check = |field, value: f64, ok: bool, rule| {
            if value.is_finite() && ok {
                Ok(())
            } else {
                Err(EvError::Invalid { field, rule, value })
            }
        };
        check(
            "capacity_wh",
            self.capacity_wh,
            self.capacity_wh > 0.0,
            "above 0",
        )?;
        let soc = |v: f64| (0.0..=1.0).contains(&v);
        check(
            "arrival_soc",
            self.arrival_soc,
            soc(self.arrival_soc),
            "in 0..=1",
        )?;
        match self.target {
            Target::Soc(s) => check("target soc", s, soc(s), "in 0..=1")?,
            Target::EnergyWh(e) => check("target energy_wh", e, e >= 0.0, "at least 0")?,
        }
        check("max_amps", self.max_amps, self.max_amps > 0.0, "above 0")?;
        check(
            "min_amps",
            self.min_amps,
            self.min_amps >= 0.0,
            "at least 0",
        )?;
        check(
            "taper_from_soc",
            self.taper_from_soc,
            self.taper_from_soc > 0.0 && self.taper_from_soc <= 1.0,
            "in (0, 1]",
        )?;
        if !(1..=3).contains(&self.phases) {
            return Err(EvError::Phases(self.phases));
        }
        if self.min_amps > self.max_amps {
            return Err(EvError::MinAboveMax {
                min: self.min_amps,
                max: self.max_amps,
            });
        }
        Ok(())
    }
}

/// What one step did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Step {
    /// Average amps per phase over the step.
    pub amps: f64,
    /// Energy into the battery, Wh.
    pub wh: f64,
}

/// A car plugged in and charging.
#[derive(Debug, Clone, PartialEq)]
pub struct Ev {
    spec: EvSpec,
    soc: f64,
    delivered_wh: f64,
}

impl Ev {
    pub fn new(spec: EvSpec) -> Result<Self, EvError> {
        spec.validate()?;
        Ok(Ev {
            soc: spec.arrival_soc,
            spec,
            delivered_wh: 0.0,
        })
    }

    pub fn spec(&self) -> &EvSpec {
        &self.spec
    }

    /// State of charge, 0..=1.
    pub fn soc(&self) -> f64 {
        self.soc
    }

    /// Energy added since arrival, Wh.
    pub fn delivered_wh(&self) -> f64 {
        self.delivered_wh
    }

    /// Energy still wanted to reach the target, Wh (never more than the battery holds).
    pub fn needed_wh(&self) -> f64 {
        let room = (1.0 - self.soc) * self.spec.capacity_wh;
        let wanted = match self.spec.target {
            Target::Soc(s) => (s - self.soc) * self.spec.capacity_wh,
            Target::EnergyWh(e) => e - self.delivered_wh,
        };
        wanted.min(room).max(0.0)
    }

    /// Whether the driver's target is met.
    pub fn satisfied(&self) -> bool {
        // Within a milliwatt-hour: float steps never land exactly.
        self.needed_wh() <= 1e-3
    }

    /// Amps per phase the charging curve accepts now: the charger's maximum up to
    /// `taper_from_soc`, then linearly down to 0 at full.
    pub fn curve_amps(&self) -> f64 {
        let taper = self.spec.taper_from_soc;
        if self.soc < taper || taper >= 1.0 {
            return if self.soc >= 1.0 {
                0.0
            } else {
                self.spec.max_amps
            };
        }
        self.spec.max_amps * ((1.0 - self.soc) / (1.0 - taper)).clamp(0.0, 1.0)
    }

    /// What the car draws under `limit_amps` per phase right now.
    pub fn draw(&self, limit_amps: f64) -> f64 {
        if self.satisfied() || limit_amps.is_nan() || limit_amps <= 0.0 {
            return 0.0;
        }
        let amps = limit_amps.min(self.curve_amps());
        if amps < self.spec.min_amps || amps <= 0.0 {
            0.0
        } else {
            amps
        }
    }

    /// Charges for `seconds` under `limit_amps` on `circuit`, on `phases` of its own (fewer
    /// when the station switched it to one). The amps are fixed at the step's start; the step
    /// ends early (lower average amps) when the target or a full battery is reached, so energy
    /// never overshoots.
    pub fn step(
        &mut self,
        limit_amps: f64,
        seconds: f64,
        circuit: &StationCircuit,
        phases: u8,
    ) -> Step {
        if !(seconds.is_finite() && seconds > 0.0) {
            return Step { amps: 0.0, wh: 0.0 };
        }
        let amps = self.draw(limit_amps);
        if amps == 0.0 {
            return Step { amps: 0.0, wh: 0.0 };
        }
        let phases = if phases == 0 {
            self.spec.phases
        } else {
            phases.min(self.spec.phases)
        };
        let watts = circuit.amps_to_watts(phases, amps);
        let mut wh = watt_hours(watts, seconds);
        let mut avg = amps;
        let needed = self.needed_wh();
        if wh > needed {
            // Stops part-way through: the average current delivers exactly what was needed.
            avg = circuit.watts_to_amps(phases, needed * SECONDS_PER_HOUR / seconds);
            wh = needed;
        }
        self.delivered_wh += wh;
        self.soc = (self.soc + wh / self.spec.capacity_wh).min(1.0);
        Step { amps: avg, wh }
    }
}

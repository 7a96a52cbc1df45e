//! The station side of smart charging: the store of installed charging profiles and the
//! composite schedule computed from them, for OCPP 1.6 and 2.0.1.
//!
//! Pure: no IO and no clock. Every function takes the time it needs.
//!
//! The rules, as the specs state them:
//! - within one purpose the highest `stackLevel` wins; on equal levels an EVSE's own profile
//!   beats the one installed on EVSE 0 (which applies to every EVSE);
//! - a TxProfile overrides the TxDefaultProfile;
//! - ChargePointMaxProfile / ChargingStationMaxProfile (and 2.0.1's external constraints) only
//!   ever lower the result;
//! - a profile applies only inside `[validFrom, validTo)`, and a schedule only inside
//!   `[start, start + duration)`; outside, the next lower profile applies;
//! - Absolute schedules start at `startSchedule`, Relative ones at the transaction's start,
//!   Recurring ones at `startSchedule` repeated every day or week;
//! - a TxProfile belongs to one transaction and is removed when it ends;
//! - limits in W become amps per phase through [`StationCircuit`] (never a hand-written 230).
//!
//! Choices where the specs leave room (documented so tests can hold them):
//! - an Absolute schedule without `startSchedule` starts when the profile was installed;
//! - a Relative profile with no transaction running starts at the moment it is evaluated, so its
//!   first period applies;
//! - a Recurring schedule without `startSchedule` recurs from midnight UTC;
//! - `numberPhases` absent means 3 (both specs say so), capped at what the circuit has.

use chrono::{DateTime, Duration, TimeDelta, Utc};
use loadstar_ocpp::{v16, v201};
use loadstar_optimizer::model::StationCircuit;

/// Longest composite schedule computed, in seconds (a week): keeps the breakpoint walk bounded.
pub const MAX_COMPOSITE_SECONDS: i64 = 7 * 24 * 3600;

/// Why a profile was not installed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ProfileError {
    #[error("the schedule has no periods")]
    NoPeriods,
    #[error("the first period must start at 0 s, got {0} s")]
    FirstPeriodNotZero(i32),
    #[error("periods must start in increasing order ({prev} s then {next} s)")]
    PeriodsNotIncreasing { prev: i32, next: i32 },
    #[error("limit {0} is not a finite number at least 0")]
    BadLimit(f64),
    #[error("numberPhases {0} is not 1, 2 or 3")]
    BadPhases(i32),
    #[error("duration {0} s is negative")]
    BadDuration(i32),
    #[error("stack level {level} is outside 0..={max}")]
    StackLevel { level: i32, max: i32 },
    #[error("a {0:?} profile only goes on EVSE 0")]
    StationMaxNotOnZero(Purpose),
    #[error("a TxProfile needs an EVSE above 0")]
    TxProfileOnZero,
    #[error("a TxProfile needs a transaction running on EVSE {0}")]
    NoTransaction(u32),
    #[error("the TxProfile names transaction {given:?}, but {running:?} is running")]
    WrongTransaction { given: String, running: String },
    #[error("a Recurring profile needs a recurrencyKind")]
    NoRecurrency,
    #[error("profile {other} on this EVSE already has stack level {level} for {purpose:?}")]
    DuplicateStackLevel {
        other: i32,
        level: i32,
        purpose: Purpose,
    },
    #[error("EVSE {0} does not exist")]
    UnknownEvse(u32),
    #[error("validTo is not after validFrom")]
    EmptyValidity,
}

/// What a profile is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Purpose {
    /// 1.6 ChargePointMaxProfile, 2.0.1 ChargingStationMaxProfile.
    StationMax,
    /// 2.0.1 ChargingStationExternalConstraints: a limit from outside (e.g. a local meter).
    ExternalConstraints,
    TxDefault,
    Tx,
}

impl Purpose {
    /// Whether this purpose only lowers the result (a cap), rather than setting it.
    pub const fn is_cap(self) -> bool {
        matches!(self, Purpose::StationMax | Purpose::ExternalConstraints)
    }
}

/// How the schedule's start is found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Absolute,
    Relative,
    Recurring(Recurrency),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recurrency {
    Daily,
    Weekly,
}

impl Recurrency {
    fn seconds(self) -> i64 {
        match self {
            Recurrency::Daily => 24 * 3600,
            Recurrency::Weekly => 7 * 24 * 3600,
        }
    }
}

/// A schedule's unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateUnit {
    /// Amps per phase.
    A,
    /// Watts for all phases together.
    W,
}

/// One schedule period.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Period {
    /// Seconds from the schedule's start.
    pub start_s: i32,
    pub limit: f64,
    pub number_phases: Option<u8>,
}

/// A charging schedule (the station uses the first of 2.0.1's up to three).
#[derive(Debug, Clone, PartialEq)]
pub struct Schedule {
    pub start: Option<DateTime<Utc>>,
    pub duration_s: Option<i32>,
    pub unit: RateUnit,
    pub periods: Vec<Period>,
}

/// A charging profile in version-neutral form.
#[derive(Debug, Clone, PartialEq)]
pub struct Profile {
    pub id: i32,
    pub stack_level: i32,
    pub purpose: Purpose,
    pub kind: Kind,
    pub valid_from: Option<DateTime<Utc>>,
    pub valid_to: Option<DateTime<Utc>>,
    /// For a TxProfile: the transaction it is bound to (1.6 ids as decimal strings).
    pub transaction_id: Option<String>,
    pub schedule: Schedule,
}

/// The transaction running on an EVSE, as far as profiles care.
#[derive(Debug, Clone, PartialEq)]
pub struct Transaction {
    pub id: String,
    pub started: DateTime<Utc>,
}

/// A limit in amps per phase and the phases it allows.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limit {
    pub amps: f64,
    pub phases: u8,
}

/// One period of a composite schedule.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CompositePeriod {
    /// Seconds from the composite's start.
    pub start_s: i32,
    /// In the composite's unit.
    pub limit: f64,
    pub number_phases: u8,
}

/// The composite schedule: what the EVSE will allow from `start` for `duration_s`.
#[derive(Debug, Clone, PartialEq)]
pub struct Composite {
    pub evse: u32,
    pub start: DateTime<Utc>,
    pub duration_s: i32,
    pub unit: RateUnit,
    pub periods: Vec<CompositePeriod>,
}

/// Which profiles a ClearChargingProfile removes. Empty clears everything.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ClearFilter {
    pub id: Option<i32>,
    pub evse: Option<u32>,
    pub purpose: Option<Purpose>,
    pub stack_level: Option<i32>,
}

/// Spec differences that change the store's answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rules {
    /// 1.6: the same purpose and stack level on the same connector replaces the old profile.
    V16,
    /// 2.0.1: the same purpose and stack level on the same EVSE with another id is rejected.
    V201,
}

#[derive(Debug, Clone, PartialEq)]
struct Installed {
    evse: u32,
    profile: Profile,
    installed_at: DateTime<Utc>,
}

/// The profiles installed on one station.
#[derive(Debug, Clone, PartialEq)]
pub struct ProfileStore {
    rules: Rules,
    evse_count: u32,
    max_stack_level: i32,
    installed: Vec<Installed>,
}

impl ProfileStore {
    /// An empty store for a station with EVSEs `1..=evse_count`.
    pub fn new(rules: Rules, evse_count: u32, max_stack_level: i32) -> Self {
        ProfileStore {
            rules,
            evse_count,
            max_stack_level,
            installed: Vec::new(),
        }
    }

    /// The highest stack level accepted.
    pub fn max_stack_level(&self) -> i32 {
        self.max_stack_level
    }

    /// Number of installed profiles.
    pub fn len(&self) -> usize {
        self.installed.len()
    }

    pub fn is_empty(&self) -> bool {
        self.installed.is_empty()
    }

    /// The installed profiles with their EVSE.
    pub fn profiles(&self) -> impl Iterator<Item = (u32, &Profile)> {
        self.installed.iter().map(|i| (i.evse, &i.profile))
    }

    /// Checks and installs `profile` on `evse` (0 = the whole station). `transaction` is what runs
    /// on that EVSE now. The same id replaces the old profile wherever it was.
    pub fn install(
        &mut self,
        evse: u32,
        profile: Profile,
        transaction: Option<&Transaction>,
        now: DateTime<Utc>,
    ) -> Result<(), ProfileError> {
        validate_schedule(&profile)?;
        if evse > self.evse_count {
            return Err(ProfileError::UnknownEvse(evse));
        }
        if profile.stack_level < 0 || profile.stack_level > self.max_stack_level {
            return Err(ProfileError::StackLevel {
                level: profile.stack_level,
                max: self.max_stack_level,
            });
        }
        if profile.purpose == Purpose::StationMax && evse != 0 {
            return Err(ProfileError::StationMaxNotOnZero(profile.purpose));
        }
        let mut profile = profile;
        if profile.purpose == Purpose::Tx {
            if evse == 0 {
                return Err(ProfileError::TxProfileOnZero);
            }
            let Some(running) = transaction else {
                return Err(ProfileError::NoTransaction(evse));
            };
            match &profile.transaction_id {
                Some(given) if *given != running.id => {
                    return Err(ProfileError::WrongTransaction {
                        given: given.clone(),
                        running: running.id.clone(),
                    });
                }
                // Bind it, so it goes when this transaction ends.
                _ => profile.transaction_id = Some(running.id.clone()),
            }
        }
        let same_slot = |i: &Installed| {
            i.evse == evse
                && i.profile.purpose == profile.purpose
                && i.profile.stack_level == profile.stack_level
                && i.profile.id != profile.id
        };
        match self.rules {
            Rules::V16 => self.installed.retain(|i| !same_slot(i)),
            Rules::V201 => {
                if let Some(other) = self.installed.iter().find(|i| same_slot(i)) {
                    return Err(ProfileError::DuplicateStackLevel {
                        other: other.profile.id,
                        level: profile.stack_level,
                        purpose: profile.purpose,
                    });
                }
            }
        }
        self.installed.retain(|i| i.profile.id != profile.id);
        tracing::debug!(evse, id = profile.id, purpose = ?profile.purpose,
            stack_level = profile.stack_level, "charging profile installed");
        self.installed.push(Installed {
            evse,
            profile,
            installed_at: now,
        });
        Ok(())
    }

    /// Removes the profiles matching `filter`; returns how many went (0 means "Unknown").
    pub fn clear(&mut self, filter: &ClearFilter) -> usize {
        let before = self.installed.len();
        self.installed.retain(|i| {
            let hit = filter.id.is_none_or(|id| i.profile.id == id)
                && filter.evse.is_none_or(|e| i.evse == e)
                && filter.purpose.is_none_or(|p| i.profile.purpose == p)
                && filter
                    .stack_level
                    .is_none_or(|s| i.profile.stack_level == s);
            !hit
        });
        before - self.installed.len()
    }

    /// Removes everything (a station that forgets its profiles).
    pub fn clear_all(&mut self) {
        self.installed.clear();
    }

    /// The transaction on `evse` ended: its TxProfiles go (both specs).
    pub fn transaction_ended(&mut self, evse: u32, transaction_id: &str) {
        self.installed.retain(|i| {
            !(i.evse == evse
                && i.profile.purpose == Purpose::Tx
                && i.profile.transaction_id.as_deref() == Some(transaction_id))
        });
    }

    /// The limit on `evse` at `at`, or `None` when no profile limits it. For EVSE 0 only the
    /// station-wide caps and EVSE-0 defaults count.
    pub fn limit_at(
        &self,
        evse: u32,
        at: DateTime<Utc>,
        transaction: Option<&Transaction>,
        circuit: &StationCircuit,
    ) -> Option<Limit> {
        let anchor = transaction.map_or(at, |t| t.started);
        self.limit_anchored(evse, at, transaction, anchor, circuit, true)
    }

    /// [`Self::limit_at`] without the station-wide caps installed on EVSE 0: what this EVSE's
    /// own and default profiles allow, before the station shares its cap among its EVSEs.
    pub fn evse_limit_at(
        &self,
        evse: u32,
        at: DateTime<Utc>,
        transaction: Option<&Transaction>,
        circuit: &StationCircuit,
    ) -> Option<Limit> {
        let anchor = transaction.map_or(at, |t| t.started);
        self.limit_anchored(evse, at, transaction, anchor, circuit, false)
    }

    /// The station-wide cap at `at` (ChargePointMax / ChargingStationMax and external
    /// constraints on EVSE 0), amps per phase for the whole station.
    pub fn station_cap_at(&self, at: DateTime<Utc>, circuit: &StationCircuit) -> Option<Limit> {
        [Purpose::StationMax, Purpose::ExternalConstraints]
            .into_iter()
            .filter_map(|purpose| {
                self.installed
                    .iter()
                    .filter(|i| i.evse == 0 && i.profile.purpose == purpose)
                    .filter_map(|i| Some((i.profile.stack_level, period_at(i, at, at)?)))
                    .max_by_key(|(level, _)| *level)
                    .map(|(_, (limit, unit, phases))| to_amps(limit, unit, phases, circuit))
            })
            .reduce(|a, b| if b.amps < a.amps { b } else { a })
    }

    /// [`Self::limit_at`] with Relative schedules anchored at `anchor` (the transaction's start,
    /// or with none running, the moment of evaluation or the composite's start).
    fn limit_anchored(
        &self,
        evse: u32,
        at: DateTime<Utc>,
        transaction: Option<&Transaction>,
        anchor: DateTime<Utc>,
        circuit: &StationCircuit,
        caps_from_zero: bool,
    ) -> Option<Limit> {
        let best = |purpose: Purpose| -> Option<Limit> {
            self.installed
                .iter()
                .filter(|i| {
                    i.evse == evse || (i.evse == 0 && (caps_from_zero || !purpose.is_cap()))
                })
                .filter(|i| i.profile.purpose == purpose)
                .filter(|i| {
                    purpose != Purpose::Tx
                        || transaction.is_some_and(|t| {
                            i.profile.transaction_id.as_deref() == Some(t.id.as_str())
                        })
                })
                .filter_map(|i| {
                    let limit = period_at(i, at, anchor)?;
                    Some(((i.profile.stack_level, i.evse != 0), limit))
                })
                .max_by_key(|(rank, _)| *rank)
                .map(|(_, (limit, unit, phases))| to_amps(limit, unit, phases, circuit))
        };
        let base = best(Purpose::Tx).or_else(|| best(Purpose::TxDefault));
        [Purpose::StationMax, Purpose::ExternalConstraints]
            .into_iter()
            .filter_map(best)
            .chain(base)
            .reduce(|a, b| if b.amps < a.amps { b } else { a })
    }

    /// The composite schedule for `evse` from `start` for `duration_s` seconds (capped at
    /// [`MAX_COMPOSITE_SECONDS`]), in `unit`. Where no profile limits, `hardware_max_amps` on
    /// all the circuit's phases applies, as a real station reports its own rating.
    #[allow(clippy::too_many_arguments)]
    pub fn composite(
        &self,
        evse: u32,
        start: DateTime<Utc>,
        duration_s: i32,
        unit: RateUnit,
        transaction: Option<&Transaction>,
        circuit: &StationCircuit,
        hardware_max_amps: f64,
    ) -> Composite {
        let duration_s = i64::from(duration_s.max(0)).min(MAX_COMPOSITE_SECONDS);
        let end = start + Duration::seconds(duration_s);
        let anchor = transaction.map_or(start, |t| t.started);
        let mut cuts = vec![start];
        for i in self
            .installed
            .iter()
            .filter(|i| i.evse == evse || i.evse == 0)
        {
            breakpoints(i, start, end, anchor, &mut cuts);
        }
        cuts.retain(|t| *t >= start && *t < end);
        cuts.sort();
        cuts.dedup();
        let all_phases = circuit.active_phases(0);
        let mut periods: Vec<CompositePeriod> = Vec::new();
        for at in cuts {
            let limit = self
                .limit_anchored(evse, at, transaction, anchor, circuit, true)
                .unwrap_or(Limit {
                    amps: hardware_max_amps,
                    phases: all_phases,
                });
            let limit = Limit {
                amps: limit.amps.min(hardware_max_amps),
                ..limit
            };
            let value = match unit {
                RateUnit::A => limit.amps,
                RateUnit::W => circuit.amps_to_watts(limit.phases, limit.amps),
            };
            // One decimal, as the 1.6 schema's multipleOf 0.1 demands; rounded down so the
            // report never claims more than is allowed.
            let value = (value * 10.0).floor() / 10.0;
            let offset = (at - start).num_seconds();
            let start_s = i32::try_from(offset).unwrap_or(i32::MAX);
            if periods
                .last()
                .is_some_and(|p| p.limit == value && p.number_phases == limit.phases)
            {
                continue;
            }
            periods.push(CompositePeriod {
                start_s,
                limit: value,
                number_phases: limit.phases,
            });
        }
        Composite {
            evse,
            start,
            duration_s: i32::try_from(duration_s).unwrap_or(i32::MAX),
            unit,
            periods,
        }
    }
}

fn validate_schedule(profile: &Profile) -> Result<(), ProfileError> {
    let periods = &profile.schedule.periods;
    let first = periods.first().ok_or(ProfileError::NoPeriods)?;
    if first.start_s != 0 {
        return Err(ProfileError::FirstPeriodNotZero(first.start_s));
    }
    for pair in periods.windows(2) {
        if pair[1].start_s <= pair[0].start_s {
            return Err(ProfileError::PeriodsNotIncreasing {
                prev: pair[0].start_s,
                next: pair[1].start_s,
            });
        }
    }
    for p in periods {
        if !p.limit.is_finite() || p.limit < 0.0 {
            return Err(ProfileError::BadLimit(p.limit));
        }
    }
    if let Some(d) = profile.schedule.duration_s
        && d < 0
    {
        return Err(ProfileError::BadDuration(d));
    }
    if let (Some(from), Some(to)) = (profile.valid_from, profile.valid_to)
        && to <= from
    {
        return Err(ProfileError::EmptyValidity);
    }
    Ok(())
}

/// When the schedule's current occurrence started, seen at `at`.
fn schedule_start(i: &Installed, at: DateTime<Utc>, anchor: DateTime<Utc>) -> DateTime<Utc> {
    let p = &i.profile;
    match p.kind {
        Kind::Absolute => p.schedule.start.unwrap_or(i.installed_at),
        Kind::Relative => anchor,
        Kind::Recurring(r) => {
            let anchor = p.schedule.start.unwrap_or(DateTime::UNIX_EPOCH);
            let period = r.seconds();
            let since = (at - anchor).num_seconds();
            // Recurrences before the anchor count too (rem_euclid keeps it in the period).
            anchor + Duration::seconds(since - since.rem_euclid(period))
        }
    }
}

/// The raw limit of one installed profile at `at`: (limit, unit, phases), or `None` if it does
/// not apply then.
fn period_at(
    i: &Installed,
    at: DateTime<Utc>,
    anchor: DateTime<Utc>,
) -> Option<(f64, RateUnit, Option<u8>)> {
    let p = &i.profile;
    if p.valid_from.is_some_and(|from| at < from) || p.valid_to.is_some_and(|to| at >= to) {
        return None;
    }
    let start = schedule_start(i, at, anchor);
    let offset = (at - start).num_seconds();
    if offset < 0 {
        return None;
    }
    if let Some(d) = p.schedule.duration_s
        && offset >= i64::from(d)
    {
        return None;
    }
    let period = p
        .schedule
        .periods
        .iter()
        .rev()
        .find(|period| i64::from(period.start_s) <= offset)?;
    Some((period.limit, p.schedule.unit, period.number_phases))
}

/// Every moment in `[from, to)` where this profile's contribution may change.
fn breakpoints(
    i: &Installed,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    anchor: DateTime<Utc>,
    out: &mut Vec<DateTime<Utc>>,
) {
    let p = &i.profile;
    out.extend(p.valid_from);
    out.extend(p.valid_to);
    let mut occurrence = schedule_start(i, from, anchor);
    let step = match p.kind {
        Kind::Recurring(r) => Some(TimeDelta::seconds(r.seconds())),
        _ => None,
    };
    loop {
        for period in &p.schedule.periods {
            out.push(occurrence + Duration::seconds(i64::from(period.start_s)));
        }
        if let Some(d) = p.schedule.duration_s {
            out.push(occurrence + Duration::seconds(i64::from(d)));
        }
        match step {
            Some(step) if occurrence + step < to => occurrence += step,
            _ => break,
        }
    }
}

fn to_amps(limit: f64, unit: RateUnit, phases: Option<u8>, circuit: &StationCircuit) -> Limit {
    let phases = circuit.active_phases(phases.unwrap_or(3));
    let amps = match unit {
        RateUnit::A => limit,
        RateUnit::W => circuit.watts_to_amps(phases, limit),
    };
    Limit { amps, phases }
}

fn phases_from_wire(n: Option<i32>) -> Result<Option<u8>, ProfileError> {
    match n {
        None => Ok(None),
        Some(n @ 1..=3) => Ok(Some(n as u8)),
        Some(n) => Err(ProfileError::BadPhases(n)),
    }
}

// ---------------------------------------------------------------------------------------------
// Wire forms
// ---------------------------------------------------------------------------------------------

impl TryFrom<&v16::ChargingProfile> for Profile {
    type Error = ProfileError;
    fn try_from(p: &v16::ChargingProfile) -> Result<Self, ProfileError> {
        use v16::{ChargingProfileKindType as K, ChargingProfilePurposeType as P};
        let s = &p.charging_schedule;
        let periods = s
            .charging_schedule_period
            .iter()
            .map(|period| {
                Ok(Period {
                    start_s: period.start_period,
                    limit: period.limit,
                    number_phases: phases_from_wire(period.number_phases)?,
                })
            })
            .collect::<Result<_, ProfileError>>()?;
        let recurrency = p.recurrency_kind.map(|r| match r {
            v16::RecurrencyKindType::Daily => Recurrency::Daily,
            v16::RecurrencyKindType::Weekly => Recurrency::Weekly,
        });
        Ok(Profile {
            id: p.charging_profile_id,
            stack_level: p.stack_level,
            purpose: match p.charging_profile_purpose {
                P::ChargePointMaxProfile => Purpose::StationMax,
                P::TxDefaultProfile => Purpose::TxDefault,
                P::TxProfile => Purpose::Tx,
            },
            kind: match p.charging_profile_kind {
                K::Absolute => Kind::Absolute,
                K::Relative => Kind::Relative,
                K::Recurring => Kind::Recurring(recurrency.ok_or(ProfileError::NoRecurrency)?),
            },
            valid_from: p.valid_from,
            valid_to: p.valid_to,
            transaction_id: p.transaction_id.map(|t| t.to_string()),
            schedule: Schedule {
                start: s.start_schedule,
                duration_s: s.duration,
                unit: match s.charging_rate_unit {
                    v16::ChargingRateUnitType::A => RateUnit::A,
                    v16::ChargingRateUnitType::W => RateUnit::W,
                },
                periods,
            },
        })
    }
}

impl TryFrom<&v201::ChargingProfile> for Profile {
    type Error = ProfileError;
    fn try_from(p: &v201::ChargingProfile) -> Result<Self, ProfileError> {
        use v201::{ChargingProfileKindEnum as K, ChargingProfilePurposeEnum as P};
        // Up to three schedules are offered for ISO 15118 to choose from; an AC station without
        // 15118 uses the first.
        let s = p.charging_schedule.first().ok_or(ProfileError::NoPeriods)?;
        let periods = s
            .charging_schedule_period
            .iter()
            .map(|period| {
                Ok(Period {
                    start_s: period.start_period,
                    limit: period.limit,
                    number_phases: phases_from_wire(period.number_phases)?,
                })
            })
            .collect::<Result<_, ProfileError>>()?;
        let recurrency = p.recurrency_kind.map(|r| match r {
            v201::RecurrencyKindEnum::Daily => Recurrency::Daily,
            v201::RecurrencyKindEnum::Weekly => Recurrency::Weekly,
        });
        Ok(Profile {
            id: p.id,
            stack_level: p.stack_level,
            purpose: match p.charging_profile_purpose {
                P::ChargingStationMaxProfile => Purpose::StationMax,
                P::ChargingStationExternalConstraints => Purpose::ExternalConstraints,
                P::TxDefaultProfile => Purpose::TxDefault,
                P::TxProfile => Purpose::Tx,
            },
            kind: match p.charging_profile_kind {
                K::Absolute => Kind::Absolute,
                K::Relative => Kind::Relative,
                K::Recurring => Kind::Recurring(recurrency.ok_or(ProfileError::NoRecurrency)?),
            },
            valid_from: p.valid_from,
            valid_to: p.valid_to,
            transaction_id: p.transaction_id.clone(),
            schedule: Schedule {
                start: s.start_schedule,
                duration_s: s.duration,
                unit: match s.charging_rate_unit {
                    v201::ChargingRateUnitEnum::A => RateUnit::A,
                    v201::ChargingRateUnitEnum::W => RateUnit::W,
                },
                periods,
            },
        })
    }
}

impl From<v16::ChargingProfilePurposeType> for Purpose {
    fn from(p: v16::ChargingProfilePurposeType) -> Self {
        match p {
            v16::ChargingProfilePurposeType::ChargePointMaxProfile => Purpose::StationMax,
            v16::ChargingProfilePurposeType::TxDefaultProfile => Purpose::TxDefault,
            v16::ChargingProfilePurposeType::TxProfile => Purpose::Tx,
        }
    }
}

impl From<v201::ChargingProfilePurposeEnum> for Purpose {
    fn from(p: v201::ChargingProfilePurposeEnum) -> Self {
        use v201::ChargingProfilePurposeEnum as P;
        match p {
            P::ChargingStationMaxProfile => Purpose::StationMax,
            P::ChargingStationExternalConstraints => Purpose::ExternalConstraints,
            P::TxDefaultProfile => Purpose::TxDefault,
            P::TxProfile => Purpose::Tx,
        }
    }
}

impl Composite {
    /// The 1.6 `chargingSchedule` of a GetCompositeSchedule answer.
    pub fn to_v16(&self) -> v16::ChargingSchedule {
        v16::ChargingSchedule {
            duration: Some(self.duration_s),
            start_schedule: Some(self.start),
            charging_rate_unit: match self.unit {
                RateUnit::A => v16::ChargingRateUnitType::A,
                RateUnit::W => v16::ChargingRateUnitType::W,
            },
            charging_schedule_period: self
                .periods
                .iter()
                .map(|p| v16::ChargingSchedulePeriod {
                    start_period: p.start_s,
                    limit: p.limit,
                    number_phases: Some(i32::from(p.number_phases)),
                })
                .collect(),
            min_charging_rate: None,
        }
    }

    /// The 2.0.1 `schedule` of a GetCompositeSchedule answer.
    pub fn to_v201(&self) -> v201::CompositeSchedule {
        v201::CompositeSchedule {
            evse_id: i32::try_from(self.evse).unwrap_or(i32::MAX),
            duration: self.duration_s,
            schedule_start: self.start,
            charging_rate_unit: match self.unit {
                RateUnit::A => v201::ChargingRateUnitEnum::A,
                RateUnit::W => v201::ChargingRateUnitEnum::W,
            },
            charging_schedule_period: self
                .periods
                .iter()
                .map(|p| v201::ChargingSchedulePeriod {
                    start_period: p.start_s,
                    limit: p.limit,
                    number_phases: Some(i32::from(p.number_phases)),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }

    /// The limit in force `seconds` after the composite's start.
    pub fn limit_after(&self, seconds: i32) -> Option<f64> {
        self.periods
            .iter()
            .rev()
            .find(|p| p.start_s <= seconds)
            .map(|p| p.limit)
    }
}

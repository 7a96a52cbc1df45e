//! Scenario files (TOML, format in `sims/scenarios/README.md`): a site, groups of stations, and
//! populations of vehicles drawn with a seeded generator, so the same file and seed always give
//! the same day.
//!
//! Loading resolves everything into a [`Plan`]: concrete station configs, faults and vehicle
//! arrivals. Errors carry `file:line:column` where the TOML says where.

use std::path::Path;

use chrono::{DateTime, Utc};
use loadstar_ocpp::OcppVersion;
use loadstar_optimizer::model::{ElectricalModel, GridType, Line, PerLine, StationWiring};
use serde::Deserialize;
use toml::Spanned;

use crate::ev::{EvSpec, Target};
use crate::meter::TariffSlot;
use crate::site::{DailyProfile, LimitChange, Pv, Site};
use crate::station::{Fault, Quirks, StationConfig};

/// Upper bounds that keep a scenario's resolution bounded (and a typo from allocating the moon).
pub const MAX_STATIONS: u32 = 10_000;
pub const MAX_VEHICLES: u32 = 100_000;

/// Why a scenario did not load.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{file}:{}{message}", location(.line, .column))]
pub struct ScenarioError {
    pub file: String,
    pub line: Option<usize>,
    pub column: Option<usize>,
    pub message: String,
}

fn location(line: &Option<usize>, column: &Option<usize>) -> String {
    match (line, column) {
        (Some(l), Some(c)) => format!("{l}:{c}: "),
        (Some(l), None) => format!("{l}: "),
        _ => " ".to_owned(),
    }
}

/// A seeded generator (splitmix64): small, fast, and the same on every platform.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in [lo, hi].
    pub fn between(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.unit()
    }

    pub fn chance(&mut self, p: f64) -> bool {
        self.unit() < p
    }
}

/// Seconds from the scenario start, written `"HH:MM"` or `"HH:MM:SS"`; hours may exceed 23
/// (`"30:00"` is 06:00 the next day).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Offset(pub u32);

impl<'de> Deserialize<'de> for Offset {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        parse_offset(&text).map(Offset).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "{text:?} is not a time \"HH:MM\" or \"HH:MM:SS\" from the scenario start"
            ))
        })
    }
}

fn parse_offset(text: &str) -> Option<u32> {
    let parts: Vec<&str> = text.split(':').collect();
    let num = |s: &str| s.parse::<u32>().ok();
    let (h, m, s) = match parts.as_slice() {
        [h, m] => (num(h)?, num(m)?, 0),
        [h, m, s] => (num(h)?, num(m)?, num(s)?),
        _ => return None,
    };
    (h <= 24 * 14 && m < 60 && s < 60).then_some(h * 3600 + m * 60 + s)
}

/// A value or a uniform range `{ from, to }`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Range<T> {
    Fixed(T),
    Between { from: T, to: T },
}

impl<'de, T: serde::de::DeserializeOwned> Deserialize<'de> for Range<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // Two steps, so a bad value inside keeps its own message instead of serde's
        // "did not match any variant".
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Between { from: toml::Value, to: toml::Value },
            Fixed(toml::Value),
        }
        let convert = |v: toml::Value| {
            v.try_into::<T>()
                .map_err(|e| serde::de::Error::custom(e.message()))
        };
        Ok(match Raw::deserialize(d)? {
            Raw::Fixed(v) => Range::Fixed(convert(v)?),
            Raw::Between { from, to } => Range::Between {
                from: convert(from)?,
                to: convert(to)?,
            },
        })
    }
}

impl Range<f64> {
    fn draw(&self, rng: &mut Rng) -> f64 {
        match *self {
            Range::Fixed(v) => v,
            Range::Between { from, to } => rng.between(from, to),
        }
    }

    fn bounds(&self) -> (f64, f64) {
        match *self {
            Range::Fixed(v) => (v, v),
            Range::Between { from, to } => (from, to),
        }
    }
}

impl Range<Offset> {
    fn draw(&self, rng: &mut Rng) -> u32 {
        match *self {
            Range::Fixed(v) => v.0,
            Range::Between { from, to } => rng.between(f64::from(from.0), f64::from(to.0)) as u32,
        }
    }

    fn bounds(&self) -> (u32, u32) {
        match *self {
            Range::Fixed(v) => (v.0, v.0),
            Range::Between { from, to } => (from.0, to.0),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    name: String,
    #[serde(default)]
    description: String,
    seed: u64,
    start: DateTime<Utc>,
    duration_h: u32,
    site: SiteSpec,
    #[serde(default)]
    tariff: Option<TariffSpec>,
    #[serde(default)]
    stations: Vec<Spanned<GroupSpec>>,
    #[serde(default)]
    vehicles: Vec<Spanned<VehicleSpec>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SiteSpec {
    grid: GridType,
    phase_voltage_v: f64,
    limit_a: f64,
    base_load: Vec<LoadPoint>,
    #[serde(default = "balanced")]
    base_shares: [f64; 3],
    #[serde(default)]
    pv: Option<PvSpec>,
    #[serde(default)]
    limit_change: Vec<LimitChangeSpec>,
}

fn balanced() -> [f64; 3] {
    [1.0; 3]
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LoadPoint {
    at: Offset,
    w: f64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PvSpec {
    peak_w: f64,
    sunrise: Offset,
    sunset: Offset,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LimitChangeSpec {
    at: Offset,
    limit_a: f64,
    #[serde(default)]
    announced: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TariffSpec {
    /// Time-of-use prices per kWh, each from `from` until the next one, repeating daily.
    slots: Vec<TariffPoint>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TariffPoint {
    from: Offset,
    price: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
enum WiringSpec {
    /// L1, L2, L3 on every station.
    ThreePhase,
    /// Three-phase, rotation cycling L1-L2-L3, L2-L3-L1, L3-L1-L2 from station to station.
    Rotated,
    /// Single-phase, cycling L1, L2, L3 from station to station.
    SinglePhase,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
enum QuirkSpec {
    AmpsOnly,
    RejectsStationMax,
    MaxStackLevelZero,
    AbsoluteOnly,
    DropsProfilesOnReconnect,
    IgnoresRaiseAfterZero,
    IgnoresProfiles,
    DiscardsProfiles,
    UnsignedCurrents,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
enum FaultKind {
    Disconnect,
    Reboot,
    StopAnswering,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FaultSpec {
    kind: FaultKind,
    at: Offset,
    for_s: u32,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct GroupSpec {
    id_prefix: String,
    count: u32,
    version: String,
    #[serde(default = "one")]
    evses: u32,
    wiring: WiringSpec,
    #[serde(default = "thirty_two")]
    hardware_max_a: f64,
    #[serde(default = "two")]
    ramp_delay_s: f64,
    #[serde(default)]
    quirks: Vec<QuirkSpec>,
    /// The stations switch between 3 phases and 1 when a profile says so.
    #[serde(default)]
    switches_phases: bool,
    #[serde(default)]
    faults: Vec<FaultSpec>,
}

fn one() -> u32 {
    1
}
fn thirty_two() -> f64 {
    32.0
}
fn two() -> f64 {
    2.0
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct VehicleSpec {
    count: u32,
    /// The `id_prefix` of the station group they charge at; EVSEs are filled in order.
    at: Spanned<String>,
    arrive: Range<Offset>,
    depart: Range<Offset>,
    capacity_kwh: Range<f64>,
    arrival_soc: Range<f64>,
    target_soc: Range<f64>,
    #[serde(default)]
    one_phase_share: f64,
    #[serde(default = "sixteen")]
    max_a: Range<f64>,
    #[serde(default = "six")]
    min_a: f64,
    #[serde(default)]
    iso15118_share: f64,
}

fn sixteen() -> Range<f64> {
    Range::Fixed(16.0)
}
fn six() -> f64 {
    6.0
}

/// One station to run, with its faults.
#[derive(Debug, Clone)]
pub struct StationPlan {
    pub config: StationConfig,
    /// (seconds from start, fault).
    pub faults: Vec<(u32, Fault)>,
}

/// One car's visit.
#[derive(Debug, Clone, PartialEq)]
pub struct Visit {
    /// Index into [`Plan::stations`].
    pub station: usize,
    pub evse: u32,
    pub arrive: DateTime<Utc>,
    pub depart: DateTime<Utc>,
    pub ev: EvSpec,
    pub id_tag: String,
}

/// A scenario resolved into everything a runner needs.
#[derive(Debug, Clone)]
pub struct Plan {
    pub name: String,
    pub description: String,
    pub seed: u64,
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
    pub site: Site,
    pub tariff: Vec<TariffSlot>,
    pub stations: Vec<StationPlan>,
    pub visits: Vec<Visit>,
}

impl Plan {
    /// Energy all visits ask for, Wh.
    pub fn requested_wh(&self) -> f64 {
        self.visits.iter().map(|v| v.ev.requested_wh()).sum()
    }

    /// The same plan `by` later (or earlier): every time moves, nothing else. Daily profiles
    /// (base load, PV) follow the clock, so shift by whole days to keep them in step.
    pub fn shifted(mut self, by: chrono::Duration) -> Plan {
        self.start += by;
        self.end += by;
        for v in &mut self.visits {
            v.arrive += by;
            v.depart += by;
            v.ev.departure = v.ev.departure.map(|d| d + by);
        }
        for c in &mut self.site.limit_changes {
            c.at += by;
        }
        for t in &mut self.tariff {
            t.start += by;
            t.end += by;
        }
        self
    }
}

/// Loads a scenario file.
pub fn load(path: &Path) -> Result<Plan, ScenarioError> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| ScenarioError {
        file: file.clone(),
        line: None,
        column: None,
        message: format!("cannot read: {e}"),
    })?;
    parse(&file, &text)
}

/// Parses scenario text; `file` names it in errors.
pub fn parse(file: &str, text: &str) -> Result<Plan, ScenarioError> {
    let at = |span: Option<std::ops::Range<usize>>, message: String| {
        let (line, column) = span.map_or((None, None), |s| {
            let (l, c) = line_col(text, s.start);
            (Some(l), Some(c))
        });
        ScenarioError {
            file: file.to_owned(),
            line,
            column,
            message,
        }
    };
    let spec: File = toml::from_str(text).map_err(|e| at(e.span(), e.message().to_owned()))?;
    resolve(spec).map_err(|(span, message)| at(span, message))
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
    (line, column)
}

type Failure = (Option<std::ops::Range<usize>>, String);

fn fail<T>(message: impl Into<String>) -> Result<T, Failure> {
    Err((None, message.into()))
}

fn resolve(spec: File) -> Result<Plan, Failure> {
    let start = spec.start;
    let end = start + chrono::Duration::hours(i64::from(spec.duration_h));
    if spec.duration_h == 0 || spec.duration_h > 24 * 14 {
        return fail("duration_h must be 1 to 336 hours");
    }
    let model = ElectricalModel::new(spec.site.grid, spec.site.phase_voltage_v)
        .map_err(|e| (None, format!("site: {e}")))?;
    let points = spec
        .site
        .base_load
        .iter()
        .map(|p| (p.at.0 % 86_400, p.w))
        .collect();
    let site = Site {
        model,
        base_load_w: DailyProfile::new(points)
            .map_err(|e| (None, format!("site.base_load: {e}")))?,
        base_shares: spec.site.base_shares,
        pv: spec.site.pv.as_ref().map(|pv| Pv {
            peak_w: pv.peak_w,
            sunrise_s: pv.sunrise.0,
            sunset_s: pv.sunset.0,
        }),
        limit: PerLine::splat_on(model.grid(), spec.site.limit_a),
        limit_changes: spec
            .site
            .limit_change
            .iter()
            .map(|c| LimitChange {
                at: start + secs(c.at.0),
                limit: PerLine::splat_on(model.grid(), c.limit_a),
                announced: c.announced,
            })
            .collect(),
    };
    site.validate().map_err(|e| (None, format!("site: {e}")))?;

    let tariff = match &spec.tariff {
        None => Vec::new(),
        Some(t) => tariff_slots(t, start, end)?,
    };

    let mut stations = Vec::new();
    let mut groups: Vec<(String, usize, u32, u32)> = Vec::new(); // prefix, first index, count, evses
    let mut total = 0u32;
    for group in &spec.stations {
        let span = group.span();
        let g = group.get_ref();
        let in_group = |m: String| {
            (
                Some(span.clone()),
                format!("station group {:?}: {m}", g.id_prefix),
            )
        };
        let version = match g.version.as_str() {
            "1.6" => OcppVersion::V16,
            "2.0.1" => OcppVersion::V201,
            other => {
                return Err(in_group(format!(
                    "version {other:?} is not \"1.6\" or \"2.0.1\""
                )));
            }
        };
        total = total.saturating_add(g.count);
        if g.count == 0 || total > MAX_STATIONS {
            return Err(in_group(format!(
                "count must be 1.. and at most {MAX_STATIONS} in all"
            )));
        }
        if g.evses == 0 || g.evses > 8 {
            return Err(in_group("evses must be 1 to 8".into()));
        }
        if !(g.ramp_delay_s.is_finite() && (0.0..=5.0).contains(&g.ramp_delay_s)) {
            return Err(in_group("ramp_delay_s must be 0 to 5 (IEC 61851-1)".into()));
        }
        if groups.iter().any(|(p, ..)| *p == g.id_prefix) {
            return Err(in_group("id_prefix used twice".into()));
        }
        let mut quirks = Quirks::default();
        for q in &g.quirks {
            match q {
                QuirkSpec::AmpsOnly => quirks.amps_only = true,
                QuirkSpec::RejectsStationMax => quirks.rejects_station_max = true,
                QuirkSpec::MaxStackLevelZero => quirks.max_stack_level_zero = true,
                QuirkSpec::AbsoluteOnly => quirks.absolute_only = true,
                QuirkSpec::DropsProfilesOnReconnect => quirks.drops_profiles_on_reconnect = true,
                QuirkSpec::IgnoresRaiseAfterZero => quirks.ignores_raise_after_zero = true,
                QuirkSpec::IgnoresProfiles => quirks.ignores_profiles = true,
                QuirkSpec::DiscardsProfiles => quirks.discards_profiles = true,
                QuirkSpec::UnsignedCurrents => quirks.unsigned_currents = true,
            }
        }
        let faults: Vec<(u32, Fault)> = g
            .faults
            .iter()
            .map(|f| {
                let d = std::time::Duration::from_secs(u64::from(f.for_s));
                (
                    f.at.0,
                    match f.kind {
                        FaultKind::Disconnect => Fault::Disconnect(d),
                        FaultKind::Reboot => Fault::Reboot(d),
                        FaultKind::StopAnswering => Fault::StopAnswering(d),
                    },
                )
            })
            .collect();
        groups.push((g.id_prefix.clone(), stations.len(), g.count, g.evses));
        let rotations = [
            [Line::L1, Line::L2, Line::L3],
            [Line::L2, Line::L3, Line::L1],
            [Line::L3, Line::L1, Line::L2],
        ];
        for i in 0..g.count {
            let k = i as usize % 3;
            let wiring = match g.wiring {
                WiringSpec::ThreePhase => StationWiring::three_phase(Line::ALL),
                WiringSpec::Rotated => StationWiring::three_phase(rotations[k]),
                WiringSpec::SinglePhase => StationWiring::single_phase(Line::ALL[k]),
            };
            let circuit = model
                .station(wiring)
                .map_err(|e| in_group(format!("wiring: {e}")))?;
            let mut config =
                StationConfig::new(&format!("{}-{:03}", g.id_prefix, i + 1), version, circuit);
            config.evse_count = g.evses;
            config.hardware_max_amps = g.hardware_max_a;
            config.ramp_delay = std::time::Duration::from_secs_f64(g.ramp_delay_s);
            config.quirks = quirks;
            config.switches_phases = g.switches_phases;
            // A group is one product: its quirks are its model's (a controller may learn them
            // per model).
            config.model = format!("SimStation {}", g.id_prefix);
            stations.push(StationPlan {
                config,
                faults: faults.clone(),
            });
        }
    }

    let mut rng = Rng::new(spec.seed);
    let mut visits = Vec::new();
    let mut cars = 0u32;
    // Next free EVSE slot per group, counting every EVSE of the group in order.
    let mut next_slot = vec![0u32; groups.len()];
    for vehicles in &spec.vehicles {
        let v = vehicles.get_ref();
        let span = vehicles.span();
        let here = |m: String| {
            (
                Some(span.clone()),
                format!("vehicles at {:?}: {m}", v.at.get_ref()),
            )
        };
        let Some(g) = groups.iter().position(|(p, ..)| p == v.at.get_ref()) else {
            return Err((
                Some(v.at.span()),
                format!("no station group with id_prefix {:?}", v.at.get_ref()),
            ));
        };
        let (_, first, count, evses) = groups[g].clone();
        cars = cars.saturating_add(v.count);
        if cars > MAX_VEHICLES {
            return Err(here(format!("more than {MAX_VEHICLES} vehicles")));
        }
        if next_slot[g] + v.count > count * evses {
            return Err(here(format!(
                "{} vehicles but only {} free EVSEs in the group (one visit per EVSE)",
                v.count,
                count * evses - next_slot[g]
            )));
        }
        let (a_lo, a_hi) = v.arrive.bounds();
        let (d_lo, _) = v.depart.bounds();
        if a_lo > a_hi || d_lo <= a_hi {
            return Err(here(
                "arrive must be a range before every possible depart".into(),
            ));
        }
        for (name, r, lo, hi) in [
            ("capacity_kwh", v.capacity_kwh, 1.0, 500.0),
            ("arrival_soc", v.arrival_soc, 0.0, 1.0),
            ("target_soc", v.target_soc, 0.0, 1.0),
            ("max_a", v.max_a, 1.0, 80.0),
        ] {
            let (a, b) = r.bounds();
            if !(a.is_finite() && b.is_finite() && lo <= a && a <= b && b <= hi) {
                return Err(here(format!(
                    "{name} must be within {lo}..={hi}, from ≤ to"
                )));
            }
        }
        for (name, p) in [
            ("one_phase_share", v.one_phase_share),
            ("iso15118_share", v.iso15118_share),
        ] {
            if !(0.0..=1.0).contains(&p) {
                return Err(here(format!("{name} must be within 0..=1")));
            }
        }
        for _ in 0..v.count {
            let slot = next_slot[g];
            next_slot[g] += 1;
            let station = first + (slot / evses) as usize;
            let evse = slot % evses + 1;
            let arrive = v.arrive.draw(&mut rng);
            let depart = v.depart.draw(&mut rng).max(arrive + 60);
            let arrival_soc = v.arrival_soc.draw(&mut rng);
            let target = v.target_soc.draw(&mut rng).max(arrival_soc);
            let ev = EvSpec {
                capacity_wh: v.capacity_kwh.draw(&mut rng) * 1000.0,
                arrival_soc,
                target: Target::Soc(target),
                departure: Some(start + secs(depart)),
                max_amps: v.max_a.draw(&mut rng).round(),
                min_amps: v.min_a,
                phases: if rng.chance(v.one_phase_share) { 1 } else { 3 },
                taper_from_soc: 0.8,
                iso15118: rng.chance(v.iso15118_share),
            };
            if !(ev.min_amps.is_finite() && ev.min_amps >= 0.0 && ev.min_amps <= ev.max_amps) {
                return Err(here("min_a must be between 0 and max_a".into()));
            }
            visits.push(Visit {
                station,
                evse,
                arrive: start + secs(arrive),
                depart: start + secs(depart),
                ev,
                id_tag: format!("TAG{:05}", visits.len() + 1),
            });
        }
    }
    visits.sort_by_key(|v| (v.arrive, v.station, v.evse));
    Ok(Plan {
        name: spec.name,
        description: spec.description,
        seed: spec.seed,
        start,
        end,
        site,
        tariff,
        stations,
        visits,
    })
}

fn secs(s: u32) -> chrono::Duration {
    chrono::Duration::seconds(i64::from(s))
}

/// Expands daily time-of-use points into slots covering `[start, end)`.
fn tariff_slots(
    t: &TariffSpec,
    start: DateTime<Utc>,
    end: DateTime<Utc>,
) -> Result<Vec<TariffSlot>, Failure> {
    let mut points: Vec<(u32, f64)> = t.slots.iter().map(|p| (p.from.0, p.price)).collect();
    if points.is_empty() {
        return fail("tariff.slots is empty");
    }
    if points.iter().any(|(at, p)| *at >= 86_400 || !p.is_finite()) {
        return fail("tariff.slots: each from is within the first day, each price finite");
    }
    points.sort_by_key(|p| p.0);
    if points.windows(2).any(|w| w[0].0 == w[1].0) {
        return fail("tariff.slots: two prices start at the same time");
    }
    let mut slots = Vec::new();
    let days = (end - start).num_days() + 1;
    for day in 0..days {
        for (i, &(from, price)) in points.iter().enumerate() {
            let s = start + chrono::Duration::days(day) + secs(from);
            let next = points.get(i + 1).map_or(86_400 + points[0].0, |&(t, _)| t);
            let e = start + chrono::Duration::days(day) + secs(next);
            let (s, e) = (s.max(start), e.min(end));
            if s < e {
                slots.push(TariffSlot {
                    start: s,
                    end: e,
                    price,
                });
            }
        }
    }
    // Before the first point of the first day, the last price of the day before applies.
    if points[0].0 > 0 {
        let last = points[points.len() - 1].1;
        slots.insert(
            0,
            TariffSlot {
                start,
                end: (start + secs(points[0].0)).min(end),
                price: last,
            },
        );
    }
    Ok(slots)
}

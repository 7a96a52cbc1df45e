//! `tou-tariff`: time-of-use prices by weekday and hour in the site's time zone, with holidays,
//! as a price forecast per slot.
//!
//! Slots are UTC-aligned (15 or 60 minutes), which in zones with whole-quarter-hour offsets are
//! local quarter-hours and hours too. Each slot is priced by the local weekday and hour at its
//! start, so DST needs no special case: a spring-forward day simply has 92 quarter-hours (the
//! hour that does not exist has no slots) and a fall-back day 100 (the repeated hour is priced
//! twice as that hour).
//!
//! Config: see plugins/README.md, section `tou-tariff`.

use chrono::{Datelike, NaiveDate, TimeZone, Timelike, Weekday};
use chrono_tz::Tz;
use loadstar_plugin_sdk::{
    Constraints, Policy, PriceForecast, SiteSnapshot, config, register_policy,
    slots::{HOUR_MS, MINUTE_MS, slots},
};
use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// An IANA zone name; the snapshot's (the site's) zone when absent.
    #[serde(default)]
    pub time_zone: Option<String>,
    /// The price outside every period, currency per kWh.
    pub default_price: f64,
    /// The first period that matches a slot prices it.
    #[serde(default)]
    pub periods: Vec<Period>,
    /// Local dates (`YYYY-MM-DD`) priced as `holiday_as`.
    #[serde(default)]
    pub holidays: Vec<String>,
    /// The weekday a holiday is priced as (default `sun`).
    #[serde(default = "default_holiday_as")]
    pub holiday_as: String,
    /// 15 or 60.
    #[serde(default = "default_slot_minutes")]
    pub slot_minutes: u32,
    /// How far ahead the forecast reaches, hours (1 to 168).
    #[serde(default = "default_horizon_h")]
    pub horizon_h: u32,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Period {
    /// `mon` … `sun`, or `weekdays` / `weekend` / `all`.
    pub days: Vec<String>,
    /// Local hours `[from, to)`, 0 to 24; `from > to` wraps past midnight (22 to 6).
    pub from: u32,
    pub to: u32,
    pub price: f64,
}

fn default_holiday_as() -> String {
    "sun".into()
}
fn default_slot_minutes() -> u32 {
    15
}
fn default_horizon_h() -> u32 {
    48
}

fn weekday(name: &str) -> Result<Vec<Weekday>, String> {
    use Weekday::*;
    Ok(match name {
        "mon" => vec![Mon],
        "tue" => vec![Tue],
        "wed" => vec![Wed],
        "thu" => vec![Thu],
        "fri" => vec![Fri],
        "sat" => vec![Sat],
        "sun" => vec![Sun],
        "weekdays" => vec![Mon, Tue, Wed, Thu, Fri],
        "weekend" => vec![Sat, Sun],
        "all" => vec![Mon, Tue, Wed, Thu, Fri, Sat, Sun],
        other => {
            return Err(format!(
                "unknown day {other:?} (mon..sun, weekdays, weekend, all)"
            ));
        }
    })
}

/// The checked tariff.
#[derive(Debug)]
pub struct Tariff {
    default_price: f64,
    /// (days, from hour, to hour, price)
    periods: Vec<(Vec<Weekday>, u32, u32, f64)>,
    holidays: Vec<NaiveDate>,
    holiday_as: Weekday,
    pub slot_ms: i64,
    pub horizon_ms: i64,
}

impl Tariff {
    pub fn from_config(c: &Config) -> Result<Self, String> {
        let price = |what: &str, p: f64| {
            if p.is_finite() {
                Ok(p)
            } else {
                Err(format!("{what}: price {p} is not a number"))
            }
        };
        let mut periods = Vec::new();
        for (i, p) in c.periods.iter().enumerate() {
            if p.from > 24 || p.to > 24 || p.from == p.to {
                return Err(format!(
                    "periods[{i}]: hours {}..{} (each 0 to 24, from != to)",
                    p.from, p.to
                ));
            }
            if p.days.is_empty() {
                return Err(format!("periods[{i}]: days is empty"));
            }
            let mut days = Vec::new();
            for d in &p.days {
                days.extend(weekday(d).map_err(|e| format!("periods[{i}]: {e}"))?);
            }
            periods.push((
                days,
                p.from,
                p.to,
                price(&format!("periods[{i}]"), p.price)?,
            ));
        }
        let holidays = c
            .holidays
            .iter()
            .map(|d| {
                NaiveDate::parse_from_str(d, "%Y-%m-%d")
                    .map_err(|_| format!("holidays: {d:?} is not a YYYY-MM-DD date"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let holiday_as = match weekday(&c.holiday_as)?.as_slice() {
            [one] => *one,
            _ => {
                return Err(format!(
                    "holiday_as must be one day, got {:?}",
                    c.holiday_as
                ));
            }
        };
        if !matches!(c.slot_minutes, 15 | 60) {
            return Err(format!(
                "slot_minutes must be 15 or 60, got {}",
                c.slot_minutes
            ));
        }
        if !(1..=168).contains(&c.horizon_h) {
            return Err(format!("horizon_h must be 1 to 168, got {}", c.horizon_h));
        }
        if let Some(tz) = &c.time_zone {
            parse_tz(tz)?;
        }
        Ok(Tariff {
            default_price: price("default_price", c.default_price)?,
            periods,
            holidays,
            holiday_as,
            slot_ms: i64::from(c.slot_minutes) * MINUTE_MS,
            horizon_ms: i64::from(c.horizon_h) * HOUR_MS,
        })
    }

    /// The price at `at_ms` (local weekday and hour in `tz`) and why.
    pub fn price_at(&self, tz: Tz, at_ms: i64) -> Result<(f64, String), String> {
        let local = tz
            .timestamp_millis_opt(at_ms)
            .single()
            .ok_or_else(|| format!("time {at_ms} ms is out of range"))?;
        let holiday = self.holidays.contains(&local.date_naive());
        let day = if holiday {
            self.holiday_as
        } else {
            local.weekday()
        };
        let hour = local.hour();
        for (i, (days, from, to, price)) in self.periods.iter().enumerate() {
            let in_hours = if from < to {
                (*from..*to).contains(&hour)
            } else {
                hour >= *from || hour < *to
            };
            if in_hours && days.contains(&day) {
                let why = if holiday { " (holiday)" } else { "" };
                return Ok((*price, format!("period {i}: {day} {from}-{to} h{why}")));
            }
        }
        Ok((self.default_price, "default price".into()))
    }

    /// The forecast for the slots covering `[from, to)`.
    pub fn forecast(&self, tz: Tz, from: i64, to: i64) -> Result<Vec<PriceForecast>, String> {
        let mut out = Vec::new();
        for (start, end) in slots(from, to, self.slot_ms, 10_000) {
            let (price, reason) = self.price_at(tz, start)?;
            out.push(PriceForecast {
                start,
                end,
                price,
                reason,
            });
        }
        Ok(out)
    }
}

pub fn parse_tz(name: &str) -> Result<Tz, String> {
    name.parse::<Tz>().map_err(|_| {
        format!("unknown time zone {name:?} (use an IANA name such as Europe/Amsterdam)")
    })
}

struct TouTariff {
    tariff: Tariff,
    time_zone: Option<String>,
}

impl Policy for TouTariff {
    fn new() -> Result<Self, String> {
        let config: Config = config::parse()?;
        Ok(TouTariff {
            tariff: Tariff::from_config(&config)?,
            time_zone: config.time_zone,
        })
    }

    fn evaluate(&mut self, snapshot: SiteSnapshot) -> Result<Constraints, String> {
        let tz = parse_tz(self.time_zone.as_deref().unwrap_or(&snapshot.time_zone))?;
        let prices = self.tariff.forecast(
            tz,
            snapshot.now,
            snapshot.now.saturating_add(self.tariff.horizon_ms),
        )?;
        Ok(Constraints {
            limits: Vec::new(),
            prices,
            solar: Vec::new(),
            hints: Vec::new(),
        })
    }
}

register_policy!(TouTariff);

#[cfg(test)]
mod tests {
    use super::*;

    fn ams() -> Tz {
        parse_tz("Europe/Amsterdam").expect("zone")
    }

    fn tariff(v: serde_json::Value) -> Result<Tariff, String> {
        let c: Config = serde_json::from_value(v).map_err(|e| e.to_string())?;
        Tariff::from_config(&c)
    }

    /// Day 0.30 on weekdays 7-23, night 0.20 every day 23-7, weekend days 0.25.
    fn dutch() -> Tariff {
        tariff(serde_json::json!({
            "default_price": 0.25,
            "periods": [
                { "days": ["all"], "from": 23, "to": 7, "price": 0.20 },
                { "days": ["weekdays"], "from": 7, "to": 23, "price": 0.30 },
            ],
            "holidays": ["2026-12-25"],
        }))
        .expect("valid")
    }

    /// Local midnight of `date` in Amsterdam, as epoch ms.
    fn midnight(y: i32, m: u32, d: u32) -> i64 {
        ams()
            .with_ymd_and_hms(y, m, d, 0, 0, 0)
            .single()
            .expect("midnight exists")
            .timestamp_millis()
    }

    #[test]
    fn bad_configs_are_refused_with_the_reason() {
        let err = tariff(serde_json::json!({ "default_price": 0.2, "holidays": ["25-12-2026"] }))
            .expect_err("date");
        assert!(err.contains("not a YYYY-MM-DD"), "{err}");
        let err = tariff(serde_json::json!({ "default_price": 0.2,
            "periods": [{ "days": ["monday"], "from": 1, "to": 2, "price": 0.1 }] }))
        .expect_err("day");
        assert!(err.contains("unknown day"), "{err}");
        let err = tariff(serde_json::json!({ "default_price": 0.2,
            "periods": [{ "days": ["mon"], "from": 1, "to": 25, "price": 0.1 }] }))
        .expect_err("hour");
        assert!(err.contains("periods[0]: hours"), "{err}");
        let err = tariff(serde_json::json!({ "default_price": 0.2, "slot_minutes": 30 }))
            .expect_err("slot");
        assert!(err.contains("15 or 60"), "{err}");
        let err = tariff(serde_json::json!({ "default_price": 0.2, "time_zone": "Nowhere" }))
            .expect_err("zone");
        assert!(err.contains("unknown time zone"), "{err}");
        assert!(tariff(serde_json::json!({ "price": 0.2 })).is_err());
    }

    #[test]
    fn weekday_hour_and_wrap_past_midnight() {
        let t = dutch();
        // Wednesday 2026-06-03: 06:45 night, 07:00 day, 23:00 night.
        let wed = midnight(2026, 6, 3);
        let p = |at: i64| t.price_at(ams(), at).expect("price").0;
        assert_eq!(p(wed + 6 * HOUR_MS + 45 * MINUTE_MS), 0.20);
        assert_eq!(p(wed + 7 * HOUR_MS), 0.30);
        assert_eq!(p(wed + 23 * HOUR_MS), 0.20);
        // Saturday daytime: no period matches, the default.
        let sat = midnight(2026, 6, 6);
        assert_eq!(p(sat + 12 * HOUR_MS), 0.25);
        // Friday 2026-12-25 is a holiday, priced as a Sunday.
        let xmas = midnight(2026, 12, 25);
        let (price, why) = t.price_at(ams(), xmas + 12 * HOUR_MS).expect("price");
        assert_eq!(price, 0.25, "{why}");
        assert_eq!(p(midnight(2026, 12, 24) + 12 * HOUR_MS), 0.30);
        // The holiday's night is still night (the all-days period).
        let (price, why) = t.price_at(ams(), xmas + 2 * HOUR_MS).expect("price");
        assert_eq!(price, 0.20);
        assert!(why.contains("holiday"), "{why}");
    }

    #[test]
    fn dst_days_have_92_and_100_quarter_hours_priced_by_local_hour() {
        let t = dutch();
        // Sunday 2026-03-29: 02:00 CET jumps to 03:00 CEST.
        let (from, to) = (midnight(2026, 3, 29), midnight(2026, 3, 30));
        let f = t.forecast(ams(), from, to).expect("forecast");
        assert_eq!(f.len(), 92);
        // Night until 07:00 local: 02:00 does not exist, so 6 hours are 24 slots, not 28.
        assert!(f[..24].iter().all(|s| s.price == 0.20));
        assert_eq!(f[24].price, 0.25, "07:00 local on a Sunday: the default");
        assert_eq!(f[24].start, from + 6 * HOUR_MS);
        // Sunday 2026-10-25: 03:00 CEST falls back to 02:00 CET; 02:xx is priced twice.
        let (from, to) = (midnight(2026, 10, 25), midnight(2026, 10, 26));
        let f = t.forecast(ams(), from, to).expect("forecast");
        assert_eq!(f.len(), 100);
        assert!(
            f[..32].iter().all(|s| s.price == 0.20),
            "8 real hours of night"
        );
        assert_eq!(f[32].price, 0.25);
        assert_eq!(f[32].start, from + 8 * HOUR_MS);
        // Monday after: 07:00 local (CET) is 06:00Z.
        let mon = midnight(2026, 10, 26);
        let f = t
            .forecast(ams(), mon, mon + 24 * HOUR_MS)
            .expect("forecast");
        assert_eq!(f.len(), 96);
        assert_eq!(f[28].price, 0.30);
        // 2026-10-26T06:00:00Z.
        assert_eq!(f[28].start, 1_792_994_400_000);
    }

    #[test]
    fn hourly_slots() {
        let c: Config = serde_json::from_value(serde_json::json!({
            "default_price": 0.1, "slot_minutes": 60
        }))
        .expect("config");
        let t = Tariff::from_config(&c).expect("valid");
        let from = midnight(2026, 10, 25);
        let f = t
            .forecast(ams(), from, midnight(2026, 10, 26))
            .expect("forecast");
        assert_eq!(f.len(), 25);
        assert!(
            f.iter()
                .all(|s| s.end - s.start == HOUR_MS && s.price == 0.1)
        );
    }
}

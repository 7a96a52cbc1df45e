//! `day-ahead-price`: a day-ahead price feed fetched over HTTP, turned into a price forecast.
//!
//! The feed is a JSON list of blocks (15-minute or hourly, mixed is fine), each with a start,
//! an end (or a configured block length) and a price; field names, the time format and a price
//! scale (EUR/MWh → EUR/kWh) are configurable. The last good answer is cached in kv under
//! `prices`, so the forecast survives the feed going away and Loadstar restarting: a failed
//! fetch falls back to the cache (its blocks still ahead) and logs why.
//!
//! Config: see plugins/README.md, section `day-ahead-price`.

use chrono::DateTime;
use loadstar_plugin_sdk::{
    Constraints, Policy, PriceForecast, SiteSnapshot, config, http, json, kv, log, register_policy,
    serde_json::Value,
};
use serde::{Deserialize, Serialize};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// `http://host:port/path` of the feed (grant `host:port` in `grants.http`).
    pub url: String,
    /// JSON pointer to the list of blocks; the document itself by default.
    #[serde(default)]
    pub list: String,
    /// Pointers inside a block.
    #[serde(default = "default_start")]
    pub start: String,
    #[serde(default = "default_end")]
    pub end: Option<String>,
    #[serde(default = "default_price")]
    pub price: String,
    /// `rfc3339` (default), `epoch-ms` or `epoch-s`.
    #[serde(default = "default_time_format")]
    pub time_format: String,
    /// Block length in minutes, for feeds without an end (`end = ""`).
    #[serde(default)]
    pub block_minutes: Option<u32>,
    /// Multiplies every price (0.001 turns per-MWh into per-kWh).
    #[serde(default = "default_scale")]
    pub price_scale: f64,
    /// Fetch again when the cache is older than this, seconds.
    #[serde(default = "default_refresh_s")]
    pub refresh_s: u32,
}

fn default_start() -> String {
    "/start".into()
}
fn default_end() -> Option<String> {
    Some("/end".into())
}
fn default_price() -> String {
    "/price".into()
}
fn default_time_format() -> String {
    "rfc3339".into()
}
fn default_scale() -> f64 {
    1.0
}
fn default_refresh_s() -> u32 {
    3600
}

/// One block, in epoch ms and currency per kWh.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Block {
    pub start: i64,
    pub end: i64,
    pub price: f64,
}

/// What kv keeps under `prices`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Cache {
    pub fetched_at: i64,
    pub blocks: Vec<Block>,
}

/// At most this many blocks are kept (a week of quarter-hours).
const MAX_BLOCKS: usize = 672;

impl Config {
    pub fn check(&self) -> Result<(), String> {
        if !self.url.starts_with("http://") {
            return Err(format!(
                "config.url must be http://host:port/path, got {:?}",
                self.url
            ));
        }
        if !matches!(
            self.time_format.as_str(),
            "rfc3339" | "epoch-ms" | "epoch-s"
        ) {
            return Err(format!(
                "config.time_format must be rfc3339, epoch-ms or epoch-s, got {:?}",
                self.time_format
            ));
        }
        let no_end = self.end.as_deref().is_none_or(str::is_empty);
        match (no_end, self.block_minutes) {
            (true, None) => {
                return Err("config: the blocks have no end; set block_minutes (15 or 60)".into());
            }
            (_, Some(m)) if m == 0 || m > 24 * 60 => {
                return Err(format!("config.block_minutes must be 1 to 1440, got {m}"));
            }
            _ => {}
        }
        if !(self.price_scale.is_finite() && self.price_scale != 0.0) {
            return Err(format!(
                "config.price_scale {} is not usable",
                self.price_scale
            ));
        }
        Ok(())
    }

    fn time(&self, v: &Value, what: &str, i: usize) -> Result<i64, String> {
        let bad = || format!("block {i}: {what} {v} is not a {} time", self.time_format);
        match self.time_format.as_str() {
            "rfc3339" => DateTime::parse_from_rfc3339(v.as_str().ok_or_else(bad)?)
                .map(|t| t.timestamp_millis())
                .map_err(|_| bad()),
            "epoch-ms" => number(v).map(|n| n as i64).ok_or_else(bad),
            _ => number(v).map(|n| (n * 1000.0) as i64).ok_or_else(bad),
        }
    }

    /// The blocks of a feed document, sorted, checked, at most [`MAX_BLOCKS`].
    pub fn blocks(&self, doc: &Value) -> Result<Vec<Block>, String> {
        let list = doc
            .pointer(&self.list)
            .and_then(Value::as_array)
            .ok_or_else(|| format!("no list of blocks at {:?}", self.list))?;
        let mut out = Vec::with_capacity(list.len().min(MAX_BLOCKS));
        for (i, item) in list.iter().enumerate().take(MAX_BLOCKS) {
            let field = |p: &str| {
                item.pointer(p)
                    .ok_or_else(|| format!("block {i}: nothing at {p:?}"))
            };
            let start = self.time(field(&self.start)?, "start", i)?;
            let end = match self.end.as_deref().filter(|p| !p.is_empty()) {
                Some(p) => self.time(field(p)?, "end", i)?,
                None => start + i64::from(self.block_minutes.unwrap_or(60)) * 60_000,
            };
            let price = number(field(&self.price)?)
                .ok_or_else(|| format!("block {i}: price is not a number"))?
                * self.price_scale;
            if end <= start {
                return Err(format!("block {i}: end {end} is not after start {start}"));
            }
            if !price.is_finite() {
                return Err(format!("block {i}: price {price} is not finite"));
            }
            out.push(Block { start, end, price });
        }
        out.sort_by_key(|b| b.start);
        if let Some(w) = out.windows(2).find(|w| w[1].start < w[0].end) {
            return Err(format!("blocks overlap at {} ms", w[1].start));
        }
        Ok(out)
    }
}

/// A JSON number, or a string holding one (feeds often quote prices).
fn number(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// The forecast from `blocks`: those not yet over at `now`.
pub fn forecast(blocks: &[Block], now: i64, source: &str) -> Vec<PriceForecast> {
    blocks
        .iter()
        .filter(|b| b.end > now)
        .map(|b| PriceForecast {
            start: b.start,
            end: b.end,
            price: b.price,
            reason: format!("day-ahead price ({source})"),
        })
        .collect()
}

struct DayAhead {
    config: Config,
    cache: Option<Cache>,
    loaded: bool,
}

impl DayAhead {
    fn fetch(&self) -> Result<Vec<Block>, String> {
        let response =
            http::get(&self.config.url).map_err(|e| format!("GET {}: {e}", self.config.url))?;
        if response.status != 200 {
            return Err(format!(
                "GET {}: status {}",
                self.config.url, response.status
            ));
        }
        let doc = json::parse(&response.body).map_err(|e| format!("the feed is not JSON: {e}"))?;
        self.config.blocks(&doc)
    }
}

impl Policy for DayAhead {
    fn new() -> Result<Self, String> {
        let config: Config = config::parse()?;
        config.check()?;
        Ok(DayAhead {
            config,
            cache: None,
            loaded: false,
        })
    }

    fn evaluate(&mut self, snapshot: SiteSnapshot) -> Result<Constraints, String> {
        let now = snapshot.now;
        if !self.loaded {
            // A corrupt cache entry is ignored: the feed is fetched again.
            self.cache = kv::get("prices")
                .map_err(|e| format!("kv get prices: {e}"))?
                .and_then(|b| serde_json::from_slice(&b).ok());
            self.loaded = true;
        }
        let fresh = self.cache.as_ref().is_some_and(|c| {
            now >= c.fetched_at && now - c.fetched_at < i64::from(self.config.refresh_s) * 1000
        });
        let source = if fresh {
            "cached"
        } else {
            match self.fetch() {
                Ok(blocks) => {
                    let cache = Cache {
                        fetched_at: now,
                        blocks,
                    };
                    let bytes = serde_json::to_vec(&cache).map_err(|e| e.to_string())?;
                    if let Err(e) = kv::set("prices", &bytes) {
                        log::warn(&format!("cannot cache the prices: {e}"));
                    }
                    self.cache = Some(cache);
                    "fetched"
                }
                Err(e) => match &self.cache {
                    Some(c) => {
                        log::warn(&format!(
                            "{e}; using the prices fetched at {}",
                            c.fetched_at
                        ));
                        "cached, the feed failed"
                    }
                    None => return Err(format!("{e} (and no cached prices)")),
                },
            }
        };
        let prices = self
            .cache
            .as_ref()
            .map(|c| forecast(&c.blocks, now, source))
            .unwrap_or_default();
        Ok(Constraints {
            limits: Vec::new(),
            prices,
            solar: Vec::new(),
            hints: Vec::new(),
        })
    }
}

register_policy!(DayAhead);

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn config(v: Value) -> Result<Config, String> {
        let c: Config = serde_json::from_value(v).map_err(|e| e.to_string())?;
        c.check()?;
        Ok(c)
    }

    const T0: i64 = 1_780_272_000_000; // 2026-06-01T00:00:00Z

    #[test]
    fn a_list_of_start_end_price_with_15_minute_and_hourly_blocks() {
        let c = config(json!({ "url": "http://127.0.0.1:1/tariff" })).expect("ok");
        let doc = json!([
            { "start": "2026-06-01T01:00:00Z", "end": "2026-06-01T02:00:00Z", "price": 0.20 },
            { "start": "2026-06-01T00:00:00Z", "end": "2026-06-01T00:15:00Z", "price": "0.31" },
        ]);
        let b = c.blocks(&doc).expect("blocks");
        assert_eq!(
            b[0],
            Block {
                start: T0,
                end: T0 + 900_000,
                price: 0.31
            }
        );
        assert_eq!(
            b[1],
            Block {
                start: T0 + 3_600_000,
                end: T0 + 7_200_000,
                price: 0.20
            }
        );
        let f = forecast(&b, T0 + 900_000, "fetched");
        assert_eq!(f.len(), 1, "the first block is over");
        assert_eq!(f[0].start, T0 + 3_600_000);
    }

    #[test]
    fn overlapping_blocks_are_refused() {
        let c = config(json!({ "url": "http://127.0.0.1:1/" })).expect("ok");
        let doc = json!([
            { "start": "2026-06-01T00:00:00Z", "end": "2026-06-01T01:00:00Z", "price": 0.2 },
            { "start": "2026-06-01T02:00:00+02:00", "end": "2026-06-01T02:15:00+02:00", "price": 0.25 },
        ]);
        let err = c.blocks(&doc).expect_err("overlap");
        assert!(err.contains("overlap"), "{err}");
    }

    #[test]
    fn another_shape_epoch_seconds_per_mwh_and_no_end() {
        let c = config(json!({
            "url": "http://127.0.0.1:1/", "list": "/data", "start": "/t", "end": "",
            "price": "/eur_mwh", "time_format": "epoch-s", "block_minutes": 60,
            "price_scale": 0.001
        }))
        .expect("ok");
        let doc = json!({ "data": [ { "t": T0 / 1000, "eur_mwh": 95.5 } ] });
        let b = c.blocks(&doc).expect("blocks");
        assert_eq!(
            b,
            vec![Block {
                start: T0,
                end: T0 + 3_600_000,
                price: 0.0955
            }]
        );
    }

    #[test]
    fn bad_configs_and_garbage_feeds_give_reasons() {
        let err = config(json!({ "url": "ftp://x/" })).expect_err("url");
        assert!(err.contains("http://"), "{err}");
        let err = config(json!({ "url": "http://a:1/", "end": "" })).expect_err("no end");
        assert!(err.contains("block_minutes"), "{err}");
        let err = config(json!({ "url": "http://a:1/", "time_format": "iso" })).expect_err("fmt");
        assert!(err.contains("time_format"), "{err}");
        let c = config(json!({ "url": "http://a:1/" })).expect("ok");
        let err = c.blocks(&json!({ "not": "a list" })).expect_err("no list");
        assert!(err.contains("no list of blocks"), "{err}");
        let err = c
            .blocks(&json!([{ "start": "yesterday", "end": "2026-06-01T00:15:00Z", "price": 1 }]))
            .expect_err("time");
        assert!(err.contains("block 0: start"), "{err}");
        let err = c
            .blocks(&json!([{ "start": "2026-06-01T00:15:00Z", "end": "2026-06-01T00:00:00Z", "price": 1 }]))
            .expect_err("order");
        assert!(err.contains("not after start"), "{err}");
        let err = c
            .blocks(&json!([{ "start": "2026-06-01T00:00:00Z", "end": "2026-06-01T00:15:00Z", "price": [] }]))
            .expect_err("price");
        assert!(err.contains("price is not a number"), "{err}");
    }
}

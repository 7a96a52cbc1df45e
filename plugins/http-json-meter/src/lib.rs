//! `http-json-meter`: a meter read over HTTP from any device that answers JSON, each reading
//! field taken from the document by a JSON pointer. Presets cover HomeWizard P1, Shelly 3EM,
//! Shelly Pro 3EM and Tasmota; `fields` overrides or adds pointers.
//!
//! Config (the plugin's `config` table in the site file):
//!
//! | key | meaning |
//! |---|---|
//! | `url` | the full `http://host:port/path` to GET; or give `base` and a `preset` |
//! | `base` | `http://host:port` of the device, to which the preset's path is appended |
//! | `preset` | `homewizard-p1`, `shelly-3em`, `shelly-pro-3em`, `tasmota` |
//! | `fields` | `{ field = "/pointer" }` or `{ field = { pointer = "/p", scale = 1000 } }`; fields: `current_l1..3` (A), `voltage_l1..3` (V), `power_l1..3` (W), `total_power` (W), `energy_import`, `energy_export` (Wh) |
//! | `sign_currents_from_power` | unsigned phase currents take the sign of their phase's power (or, without it, of the total power): some firmware reports export as positive current |
//!
//! Every value is optional: a pointer that finds nothing leaves the field empty; a pointer that
//! finds something that is not a number is an error (the config or the firmware is wrong).

use std::collections::BTreeMap;

use loadstar_plugin_sdk::{Meter, PerLine, Reading, config, http, json, register_meter};
use serde::Deserialize;
use serde_json::Value;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub url: Option<String>,
    #[serde(default)]
    pub base: Option<String>,
    #[serde(default)]
    pub preset: Option<String>,
    #[serde(default)]
    pub fields: BTreeMap<String, FieldSpec>,
    #[serde(default)]
    pub sign_currents_from_power: bool,
}

/// Where one field comes from: a pointer, and a factor to our unit (e.g. 1000 for kWh → Wh).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum FieldSpec {
    Pointer(String),
    Scaled { pointer: String, scale: f64 },
}

impl FieldSpec {
    fn parts(&self) -> (&str, f64) {
        match self {
            FieldSpec::Pointer(p) => (p, 1.0),
            FieldSpec::Scaled { pointer, scale } => (pointer, *scale),
        }
    }
}

pub const FIELDS: [&str; 12] = [
    "current_l1",
    "current_l2",
    "current_l3",
    "voltage_l1",
    "voltage_l2",
    "voltage_l3",
    "power_l1",
    "power_l2",
    "power_l3",
    "total_power",
    "energy_import",
    "energy_export",
];

/// A preset: the path to request and the pointer of each field it has.
pub fn preset(name: &str) -> Option<(&'static str, Vec<(&'static str, FieldSpec)>)> {
    let p = |s: &str| FieldSpec::Pointer(s.to_string());
    let kwh = |s: &str| FieldSpec::Scaled {
        pointer: s.to_string(),
        scale: 1000.0,
    };
    Some(match name {
        "homewizard-p1" => (
            "/api/v1/data",
            vec![
                ("current_l1", p("/active_current_l1_a")),
                ("current_l2", p("/active_current_l2_a")),
                ("current_l3", p("/active_current_l3_a")),
                ("voltage_l1", p("/active_voltage_l1_v")),
                ("voltage_l2", p("/active_voltage_l2_v")),
                ("voltage_l3", p("/active_voltage_l3_v")),
                ("power_l1", p("/active_power_l1_w")),
                ("power_l2", p("/active_power_l2_w")),
                ("power_l3", p("/active_power_l3_w")),
                ("total_power", p("/active_power_w")),
                ("energy_import", kwh("/total_power_import_kwh")),
                ("energy_export", kwh("/total_power_export_kwh")),
            ],
        ),
        "shelly-3em" => (
            "/status",
            vec![
                ("current_l1", p("/emeters/0/current")),
                ("current_l2", p("/emeters/1/current")),
                ("current_l3", p("/emeters/2/current")),
                ("voltage_l1", p("/emeters/0/voltage")),
                ("voltage_l2", p("/emeters/1/voltage")),
                ("voltage_l3", p("/emeters/2/voltage")),
                ("power_l1", p("/emeters/0/power")),
                ("power_l2", p("/emeters/1/power")),
                ("power_l3", p("/emeters/2/power")),
                ("total_power", p("/total_power")),
            ],
        ),
        "shelly-pro-3em" => (
            "/rpc/EM.GetStatus?id=0",
            vec![
                ("current_l1", p("/a_current")),
                ("current_l2", p("/b_current")),
                ("current_l3", p("/c_current")),
                ("voltage_l1", p("/a_voltage")),
                ("voltage_l2", p("/b_voltage")),
                ("voltage_l3", p("/c_voltage")),
                ("power_l1", p("/a_act_power")),
                ("power_l2", p("/b_act_power")),
                ("power_l3", p("/c_act_power")),
                ("total_power", p("/total_act_power")),
            ],
        ),
        "tasmota" => (
            "/cm?cmnd=Status%2010",
            vec![
                ("current_l1", p("/StatusSNS/ENERGY/Current")),
                ("voltage_l1", p("/StatusSNS/ENERGY/Voltage")),
                ("power_l1", p("/StatusSNS/ENERGY/Power")),
                ("total_power", p("/StatusSNS/ENERGY/Power")),
                ("energy_import", kwh("/StatusSNS/ENERGY/Total")),
            ],
        ),
        _ => return None,
    })
}

/// The config resolved: the URL to GET and the pointer of every mapped field.
#[derive(Debug, Clone, PartialEq)]
pub struct Mapping {
    pub url: String,
    pub fields: BTreeMap<String, FieldSpec>,
    pub sign_currents_from_power: bool,
}

impl Mapping {
    pub fn from_config(config: Config) -> Result<Self, String> {
        let mut fields = BTreeMap::new();
        let url = match (&config.preset, config.url, config.base) {
            (_, Some(_), Some(_)) => return Err("give `url` or `base`, not both".into()),
            (Some(name), url, base) => {
                let (path, preset_fields) = preset(name).ok_or_else(|| {
                    format!("unknown preset {name:?} (homewizard-p1, shelly-3em, shelly-pro-3em, tasmota)")
                })?;
                for (field, spec) in preset_fields {
                    fields.insert(field.to_string(), spec);
                }
                match (url, base) {
                    (Some(url), _) => url,
                    (None, Some(base)) => format!("{}{path}", base.trim_end_matches('/')),
                    (None, None) => {
                        return Err("a preset needs `base` (http://host:port) or `url`".into());
                    }
                }
            }
            (None, Some(url), None) => url,
            (None, None, _) => return Err("give `url`, or `base` and a `preset`".into()),
        };
        for (field, spec) in config.fields {
            if !FIELDS.contains(&field.as_str()) {
                return Err(format!(
                    "unknown field {field:?} (one of {})",
                    FIELDS.join(", ")
                ));
            }
            let (pointer, scale) = spec.parts();
            if !pointer.is_empty() && !pointer.starts_with('/') {
                return Err(format!("fields.{field}: {pointer:?} is not a JSON pointer"));
            }
            if !scale.is_finite() {
                return Err(format!("fields.{field}: scale must be a finite number"));
            }
            fields.insert(field, spec);
        }
        if fields.is_empty() {
            return Err("no fields mapped: give a `preset` or `fields`".into());
        }
        Ok(Mapping {
            url,
            fields,
            sign_currents_from_power: config.sign_currents_from_power,
        })
    }

    /// The reading in a device's JSON document.
    pub fn reading(&self, doc: &Value) -> Result<Reading, String> {
        let get = |field: &str| -> Result<Option<f64>, String> {
            match self.fields.get(field) {
                None => Ok(None),
                Some(spec) => {
                    let (pointer, scale) = spec.parts();
                    json::number(doc, pointer)
                        .map(|v| v.map(|v| v * scale))
                        .map_err(|e| format!("{field}: {e}"))
                }
            }
        };
        let lines = |prefix: &str| -> Result<PerLine, String> {
            Ok(PerLine {
                l1: get(&format!("{prefix}_l1"))?,
                l2: get(&format!("{prefix}_l2"))?,
                l3: get(&format!("{prefix}_l3"))?,
            })
        };
        let mut reading = Reading {
            current: lines("current")?,
            voltage: lines("voltage")?,
            power: lines("power")?,
            total_power: get("total_power")?,
            energy_import: get("energy_import")?,
            energy_export: get("energy_export")?,
            ..Reading::default()
        };
        if self.sign_currents_from_power {
            let total = reading.total_power;
            let power = [reading.power.l1, reading.power.l2, reading.power.l3];
            let current = [
                &mut reading.current.l1,
                &mut reading.current.l2,
                &mut reading.current.l3,
            ];
            for (amps, watts) in current.into_iter().zip(power) {
                if let (Some(a), Some(w)) = (amps.as_mut(), watts.or(total)) {
                    *a = if w < 0.0 { -a.abs() } else { a.abs() };
                }
            }
        }
        Ok(reading)
    }
}

struct HttpJsonMeter {
    mapping: Mapping,
}

impl Meter for HttpJsonMeter {
    fn new() -> Result<Self, String> {
        let config: Config = config::parse()?;
        Ok(HttpJsonMeter {
            mapping: Mapping::from_config(config)?,
        })
    }

    fn read(&mut self) -> Result<Reading, String> {
        let response =
            http::get(&self.mapping.url).map_err(|e| format!("GET {}: {e}", self.mapping.url))?;
        if response.status != 200 {
            return Err(format!(
                "GET {}: HTTP status {}",
                self.mapping.url, response.status
            ));
        }
        let doc = json::parse(&response.body).map_err(|e| e.to_string())?;
        self.mapping.reading(&doc)
    }
}

register_meter!(HttpJsonMeter);

#[cfg(test)]
mod tests {
    use super::*;

    fn mapping(config: Value) -> Result<Mapping, String> {
        Mapping::from_config(serde_json::from_value(config).map_err(|e| e.to_string())?)
    }

    #[test]
    fn homewizard_preset_with_kwh_scaled_to_wh() {
        let m = mapping(
            serde_json::json!({ "preset": "homewizard-p1", "base": "http://127.0.0.1:8080/" }),
        )
        .expect("valid");
        assert_eq!(m.url, "http://127.0.0.1:8080/api/v1/data");
        let doc = serde_json::json!({
            "active_power_w": -1500.0, "active_power_l1_w": -500, "active_current_l1_a": 2.2,
            "total_power_import_kwh": 1234.567, "total_power_export_kwh": 0.5
        });
        let r = m.reading(&doc).expect("reading");
        assert_eq!(r.total_power, Some(-1500.0));
        assert_eq!(
            r.current.l1,
            Some(2.2),
            "unsigned as given without the option"
        );
        assert_eq!(r.current.l2, None);
        assert_eq!(r.energy_import, Some(1_234_567.0));
        assert_eq!(r.energy_export, Some(500.0));
    }

    #[test]
    fn signs_currents_from_phase_power_or_total_power() {
        let mut m = mapping(serde_json::json!({
            "url": "http://127.0.0.1/x",
            "fields": { "current_l1": "/i1", "current_l2": "/i2", "power_l1": "/p1", "total_power": "/p" }
        }))
        .expect("valid");
        m.sign_currents_from_power = true;
        // L1 has its own power (export); L2 has none, so takes the total's sign (import).
        let r = m
            .reading(&serde_json::json!({ "i1": 3.0, "i2": 4.0, "p1": -690.0, "p": 230.0 }))
            .expect("reading");
        assert_eq!((r.current.l1, r.current.l2), (Some(-3.0), Some(4.0)));
        let r = m
            .reading(&serde_json::json!({ "i1": 3.0, "i2": 4.0, "p": -100.0 }))
            .expect("reading");
        assert_eq!((r.current.l1, r.current.l2), (Some(-3.0), Some(-4.0)));
    }

    #[test]
    fn config_mistakes_are_named() {
        let err = |v: Value| mapping(v).expect_err("invalid");
        assert!(
            err(serde_json::json!({ "preset": "nope", "base": "http://x" }))
                .contains("unknown preset")
        );
        assert!(err(serde_json::json!({ "preset": "tasmota" })).contains("needs `base`"));
        assert!(err(serde_json::json!({ "url": "http://x" })).contains("no fields"));
        assert!(
            err(serde_json::json!({ "url": "http://x", "fields": { "amps": "/a" } }))
                .contains("unknown field")
        );
        assert!(
            err(serde_json::json!({ "url": "http://x", "fields": { "total_power": "a" } }))
                .contains("not a JSON pointer")
        );
        assert!(err(serde_json::json!({ "url": "http://x", "typo": 1 })).contains("typo"));
    }

    #[test]
    fn a_non_number_is_an_error_and_a_missing_value_is_none() {
        let m = mapping(serde_json::json!({ "url": "http://x", "fields": { "total_power": "/p", "voltage_l1": "/v" } }))
            .expect("valid");
        let r = m.reading(&serde_json::json!({ "p": 5 })).expect("reading");
        assert_eq!((r.total_power, r.voltage.l1), (Some(5.0), None));
        let e = m
            .reading(&serde_json::json!({ "p": "on" }))
            .expect_err("not a number");
        assert!(e.contains("total_power"), "{e}");
    }
}

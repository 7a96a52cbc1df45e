//! `sunspec-meter`: a SunSpec meter over Modbus TCP.
//!
//! Finds the "SunS" marker (at 40000, else 0, else 50000, or at the configured base), walks the
//! model chain to the end model (0xFFFF), and reads the first meter model: the integer models
//! 201–204 (values with scale factors; 0x8000 means "not implemented") or the float models
//! 211–214 (NaN means "not implemented"). The model's address is found once and then read
//! directly; a read that fails forgets it, so a device that was reconfigured is walked again.
//!
//! Config: see plugins/README.md, section `sunspec-meter`.

use loadstar_plugin_sdk::{
    Meter, ModbusTarget, PerLine, Reading, config, modbus, register_meter, sunspec,
};
use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// `host:port` of the Modbus TCP device (grant it in `grants.modbus`).
    pub endpoint: String,
    /// The Modbus unit id.
    #[serde(default = "default_unit")]
    pub unit: u8,
    /// Where "SunS" is; searched at 40000, 0, 50000 when absent.
    #[serde(default)]
    pub base: Option<u16>,
    /// Flip every sign: for a meter mounted to count export as positive.
    #[serde(default)]
    pub invert: bool,
}

fn default_unit() -> u8 {
    1
}

/// The standard base addresses, in the order SunSpec says to try them.
pub const BASES: [u16; 3] = [40_000, 0, 50_000];
/// Models walked at most before giving up (a chain that never ends is a broken device).
const MAX_MODELS: usize = 64;
/// Registers per Modbus read (the protocol's limit is 125).
const MAX_READ: u16 = 125;

/// A meter model found on the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Found {
    pub id: u16,
    /// The address of the model's first body register (after id and length).
    pub body: u16,
    pub length: u16,
}

/// Reads registers; the plugin's is Modbus, the tests' a register map.
pub trait Registers {
    fn read(&mut self, address: u16, count: u16) -> Result<Vec<u16>, String>;
}

/// Finds the marker and walks the chain to the first meter model (201–204, 211–214).
pub fn find_meter(regs: &mut dyn Registers, base: Option<u16>) -> Result<Found, String> {
    let bases: Vec<u16> = match base {
        Some(b) => vec![b],
        None => BASES.to_vec(),
    };
    let mut tried = Vec::new();
    let mut start = None;
    for b in bases {
        match regs.read(b, 2) {
            Ok(r) if r == sunspec::MARKER => {
                start = Some(b);
                break;
            }
            Ok(r) => tried.push(format!("{b}: {r:04x?}")),
            Err(e) => tried.push(format!("{b}: {e}")),
        }
    }
    let base =
        start.ok_or_else(|| format!("no SunSpec marker (\"SunS\") at {}", tried.join("; ")))?;
    let mut at = base
        .checked_add(2)
        .ok_or("the model chain runs past 65535")?;
    let mut seen = Vec::new();
    for _ in 0..MAX_MODELS {
        let header = regs.read(at, 2)?;
        let [id, length] = header[..] else {
            return Err(format!(
                "model header at {at}: {} registers, expected 2",
                header.len()
            ));
        };
        if id == sunspec::END_MODEL {
            return Err(format!(
                "no meter model (201-204, 211-214) in the chain; models: {seen:?}"
            ));
        }
        let body = at.checked_add(2).ok_or("the model chain runs past 65535")?;
        if matches!(id, 201..=204 | 211..=214) {
            let needed = if id < 211 { 53 } else { 68 };
            if length < needed {
                return Err(format!(
                    "model {id} at {at} has {length} registers, needs {needed}"
                ));
            }
            return Ok(Found { id, body, length });
        }
        seen.push(id);
        at = body
            .checked_add(length)
            .ok_or("the model chain runs past 65535")?;
    }
    Err(format!(
        "the model chain has more than {MAX_MODELS} models without an end"
    ))
}

/// Reads `count` registers from `address` in reads of at most 125.
fn read_all(regs: &mut dyn Registers, address: u16, count: u16) -> Result<Vec<u16>, String> {
    let mut out = Vec::with_capacity(usize::from(count));
    let mut done = 0u16;
    while done < count {
        let n = (count - done).min(MAX_READ);
        let at = address
            .checked_add(done)
            .ok_or("read past register 65535")?;
        let chunk = regs.read(at, n)?;
        if chunk.len() != usize::from(n) {
            return Err(format!("asked {n} registers at {at}, got {}", chunk.len()));
        }
        out.extend(chunk);
        done += n;
    }
    Ok(out)
}

/// Decodes an integer meter model's body (201–204: same offsets, the missing lines 0x8000).
pub fn decode_int(b: &[u16]) -> Result<Reading, String> {
    if b.len() < 53 {
        return Err(format!("integer meter model of {} registers", b.len()));
    }
    let (a_sf, v_sf, w_sf, wh_sf) = (b[4], b[13], b[20], b[52]);
    let line = |first: usize, sf: u16| PerLine {
        l1: sunspec::int16(b[first], sf),
        l2: sunspec::int16(b[first + 1], sf),
        l3: sunspec::int16(b[first + 2], sf),
    };
    Ok(Reading {
        timestamp: None,
        current: line(1, a_sf),
        voltage: line(6, v_sf),
        power: line(17, w_sf),
        total_power: sunspec::int16(b[16], w_sf),
        energy_export: sunspec::acc32(b[36], b[37], wh_sf),
        energy_import: sunspec::acc32(b[44], b[45], wh_sf),
    })
}

/// Decodes a float meter model's body (211–214).
pub fn decode_float(b: &[u16]) -> Result<Reading, String> {
    if b.len() < 68 {
        return Err(format!("float meter model of {} registers", b.len()));
    }
    let f = |at: usize| sunspec::float32(b[at], b[at + 1]);
    let line = |first: usize| PerLine {
        l1: f(first),
        l2: f(first + 2),
        l3: f(first + 4),
    };
    // Energy counters of 0 are "no counter" as in the integer models' acc32.
    let energy = |at: usize| f(at).filter(|v| *v != 0.0);
    Ok(Reading {
        timestamp: None,
        current: line(2),
        voltage: line(10),
        power: line(28),
        total_power: f(26),
        energy_export: energy(58),
        energy_import: energy(66),
    })
}

/// Flips the sign of currents and powers, and swaps the counters.
pub fn invert(r: Reading) -> Reading {
    let neg = |l: PerLine| PerLine {
        l1: l.l1.map(|v| -v),
        l2: l.l2.map(|v| -v),
        l3: l.l3.map(|v| -v),
    };
    Reading {
        current: neg(r.current),
        power: neg(r.power),
        total_power: r.total_power.map(|v| -v),
        energy_import: r.energy_export,
        energy_export: r.energy_import,
        ..r
    }
}

/// Reads the model at `found` and decodes it.
pub fn read_meter(regs: &mut dyn Registers, found: Found) -> Result<Reading, String> {
    let needed = if found.id < 211 { 53 } else { 68 };
    let body = read_all(regs, found.body, needed)?;
    let reading = if found.id < 211 {
        decode_int(&body)?
    } else {
        decode_float(&body)?
    };
    // A device that answers garbage gets no say: every number must be finite.
    let finite = |v: Option<f64>| v.is_none_or(f64::is_finite);
    let all = [
        reading.current.l1,
        reading.current.l2,
        reading.current.l3,
        reading.voltage.l1,
        reading.voltage.l2,
        reading.voltage.l3,
        reading.power.l1,
        reading.power.l2,
        reading.power.l3,
        reading.total_power,
        reading.energy_import,
        reading.energy_export,
    ];
    if !all.into_iter().all(finite) {
        return Err(format!("model {} gave a non-finite value", found.id));
    }
    Ok(reading)
}

struct Device {
    target: ModbusTarget,
}

impl Registers for Device {
    fn read(&mut self, address: u16, count: u16) -> Result<Vec<u16>, String> {
        modbus::read_holding(&self.target, address, count).map_err(|e| {
            format!(
                "read {count} at {address} from {}: {e}",
                self.target.endpoint
            )
        })
    }
}

struct SunSpecMeter {
    device: Device,
    base: Option<u16>,
    invert: bool,
    found: Option<Found>,
}

impl Meter for SunSpecMeter {
    fn new() -> Result<Self, String> {
        let c: Config = config::parse()?;
        if c.endpoint.is_empty() {
            return Err("config.endpoint is empty (host:port)".into());
        }
        Ok(SunSpecMeter {
            device: Device {
                target: ModbusTarget {
                    endpoint: c.endpoint,
                    unit: c.unit,
                },
            },
            base: c.base,
            invert: c.invert,
            found: None,
        })
    }

    fn read(&mut self) -> Result<Reading, String> {
        let found = match self.found {
            Some(f) => f,
            None => {
                let f = find_meter(&mut self.device, self.base)?;
                self.found = Some(f);
                f
            }
        };
        match read_meter(&mut self.device, found) {
            Ok(r) => Ok(if self.invert { invert(r) } else { r }),
            Err(e) => {
                self.found = None;
                Err(e)
            }
        }
    }
}

register_meter!(SunSpecMeter);

#[cfg(test)]
mod tests {
    use super::*;

    /// A register map from `base`, answering like a device: outside it is an exception.
    struct Map {
        base: u16,
        regs: Vec<u16>,
    }

    impl Registers for Map {
        fn read(&mut self, address: u16, count: u16) -> Result<Vec<u16>, String> {
            let start = address
                .checked_sub(self.base)
                .map(usize::from)
                .ok_or("illegal data address")?;
            let end = start + usize::from(count);
            self.regs
                .get(start..end)
                .map(<[u16]>::to_vec)
                .ok_or_else(|| "illegal data address".to_string())
        }
    }

    fn int_model(id: u16) -> Vec<u16> {
        let mut b = vec![0x8000u16; 105];
        // A 12.34 (SF -2), AphA..C.
        b[0..5].copy_from_slice(&[1234, 1000, 234, 0x8000, (-2i16) as u16]);
        // PhV, PhVphA..C at SF -1.
        b[5..9].copy_from_slice(&[2300, 2301, 2299, 0x8000]);
        b[13] = (-1i16) as u16;
        // W = -1500 at SF 1 => -15000 W; WphA -10000, WphB -5000.
        b[16..21].copy_from_slice(&[
            (-1500i16) as u16,
            (-1000i16) as u16,
            (-500i16) as u16,
            0x8000,
            1,
        ]);
        // TotWhExp 70000 + TotWhImp 131072 at SF 0.
        b[36..38].copy_from_slice(&[1, 4464]);
        b[44..46].copy_from_slice(&[2, 0]);
        b[52] = 0;
        let mut m = vec![id, 105];
        m.extend(b);
        m
    }

    fn chain(base: u16, models: &[Vec<u16>]) -> Map {
        let mut regs = sunspec::MARKER.to_vec();
        regs.extend([1, 66]);
        regs.extend(vec![0; 66]);
        for m in models {
            regs.extend(m);
        }
        regs.extend([0xFFFF, 0]);
        Map { base, regs }
    }

    #[test]
    fn an_integer_model_decodes_with_scale_factors_and_not_implemented() {
        let mut map = chain(40_000, &[int_model(202)]);
        let found = find_meter(&mut map, None).expect("found");
        assert_eq!(
            found,
            Found {
                id: 202,
                body: 40_000 + 2 + 68 + 2,
                length: 105
            }
        );
        let r = read_meter(&mut map, found).expect("reading");
        assert_eq!(r.current.l1, Some(10.0));
        assert_eq!(r.current.l2, Some(2.34));
        assert_eq!(r.current.l3, None, "0x8000");
        assert_eq!(r.voltage.l1, Some(230.1));
        assert_eq!(r.total_power, Some(-15_000.0));
        assert_eq!(r.power.l2, Some(-5_000.0));
        assert_eq!(r.power.l3, None);
        assert_eq!(r.energy_export, Some(70_000.0));
        assert_eq!(r.energy_import, Some(131_072.0));
        let inv = invert(r);
        assert_eq!(inv.total_power, Some(15_000.0));
        assert_eq!(inv.energy_import, Some(70_000.0));
    }

    #[test]
    fn the_marker_is_searched_at_40000_then_0_then_50000_and_other_models_skipped() {
        // An inverter model (103) before the meter, base 50000.
        let mut other = vec![103, 50];
        other.extend(vec![0; 50]);
        let mut map = chain(50_000, &[other, int_model(203)]);
        let found = find_meter(&mut map, None).expect("found");
        assert_eq!(found.id, 203);
        assert_eq!(found.body, 50_000 + 2 + 68 + 52 + 2);
        let mut zero = chain(0, &[int_model(201)]);
        assert_eq!(find_meter(&mut zero, None).expect("found").id, 201);
    }

    #[test]
    fn float_models_decode_and_nan_is_not_implemented() {
        let mut body = vec![0u16; 124];
        let put = |b: &mut Vec<u16>, at: usize, v: f32| {
            let bits = v.to_bits();
            b[at] = (bits >> 16) as u16;
            b[at + 1] = bits as u16;
        };
        put(&mut body, 2, 7.5);
        put(&mut body, 4, f32::NAN);
        put(&mut body, 10, 231.0);
        put(&mut body, 26, 1725.0);
        put(&mut body, 28, 1725.0);
        put(&mut body, 66, 5000.0);
        let mut m = vec![213, 124];
        m.extend(body);
        let mut map = chain(40_000, &[m]);
        let found = find_meter(&mut map, None).expect("found");
        let r = read_meter(&mut map, found).expect("reading");
        assert_eq!(r.current.l1, Some(7.5));
        assert_eq!(r.current.l2, None, "NaN");
        assert_eq!(r.voltage.l1, Some(231.0));
        assert_eq!(r.total_power, Some(1725.0));
        assert_eq!(r.energy_import, Some(5000.0));
        assert_eq!(r.energy_export, None, "a zero counter");
    }

    #[test]
    fn broken_devices_give_clear_errors() {
        let mut none = Map {
            base: 40_000,
            regs: vec![0; 10],
        };
        let err = find_meter(&mut none, None).expect_err("no marker");
        assert!(err.contains("no SunSpec marker"), "{err}");
        let mut no_meter = chain(40_000, &[]);
        let err = find_meter(&mut no_meter, None).expect_err("no meter");
        assert!(err.contains("no meter model"), "{err}");
        // A chain that runs off the device's map.
        let mut cut = chain(40_000, &[]);
        cut.regs.truncate(70);
        assert!(find_meter(&mut cut, None).is_err());
        // A meter model too short to hold its values.
        let mut short = chain(40_000, &[vec![203, 10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]]);
        let err = find_meter(&mut short, None).expect_err("short");
        assert!(err.contains("needs 53"), "{err}");
    }
}

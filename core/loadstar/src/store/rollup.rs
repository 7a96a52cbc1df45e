//! Downsampling arithmetic: folding raw samples into buckets. Pure; no IO.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::MeterSample;

/// A downsampled bucket as stored in `samples_downsampled`: the averaged sample plus what is
/// needed to merge more raw samples into it exactly.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct Bucket {
    /// The averages; `at` is the bucket start.
    pub sample: MeterSample,
    /// Bucket width, ms.
    pub width_ms: i64,
    /// Raw samples folded in.
    pub count: u64,
    /// Samples that had each field (the weight of each average).
    pub n_power: u64,
    pub n_current: [u64; 3],
    pub n_voltage: [u64; 3],
    pub n_offered: u64,
    /// Time of the sample the energy reading came from.
    pub energy_at: Option<DateTime<Utc>>,
    /// Time of the sample the transaction id came from.
    pub transaction_at: Option<DateTime<Utc>>,
}

/// A running sum for one averaged field.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
struct Sum {
    total: f64,
    n: u64,
}

impl Sum {
    fn add(&mut self, value: Option<f64>) {
        if let Some(v) = value.filter(|v| v.is_finite()) {
            self.total += v;
            self.n += 1;
        }
    }

    /// Merges this sum into an existing average of weight `old_n`; returns the new average
    /// and weight.
    fn merge(self, old: Option<f64>, old_n: u64) -> (Option<f64>, u64) {
        let (old_total, old_n) = match old.filter(|v| v.is_finite()) {
            Some(avg) if old_n > 0 => (avg * old_n as f64, old_n),
            _ => (0.0, 0),
        };
        let n = old_n + self.n;
        if n == 0 {
            (None, 0)
        } else if old_n == 0 {
            // Exact for a fresh bucket: sum / n.
            (Some(self.total / self.n as f64), n)
        } else {
            (Some((old_total + self.total) / n as f64), n)
        }
    }
}

/// Raw samples of one station, EVSE and bucket, accumulated during a compaction pass.
#[derive(Clone, Debug)]
pub(crate) struct Accumulator {
    station: String,
    evse_id: u32,
    start: DateTime<Utc>,
    width_ms: i64,
    count: u64,
    power: Sum,
    current: [Sum; 3],
    voltage: [Sum; 3],
    offered: Sum,
    energy: Option<(DateTime<Utc>, f64)>,
    transaction: Option<(DateTime<Utc>, String)>,
}

impl Accumulator {
    pub fn new(station: &str, evse_id: u32, start: DateTime<Utc>, width_ms: i64) -> Self {
        Self {
            station: station.to_owned(),
            evse_id,
            start,
            width_ms,
            count: 0,
            power: Sum::default(),
            current: [Sum::default(); 3],
            voltage: [Sum::default(); 3],
            offered: Sum::default(),
            energy: None,
            transaction: None,
        }
    }

    pub fn add(&mut self, s: &MeterSample) {
        self.count += 1;
        self.power.add(s.power_w);
        for line in 0..3 {
            self.current[line].add(s.current_a[line]);
            self.voltage[line].add(s.voltage_v[line]);
        }
        self.offered.add(s.offered_a);
        if let Some(e) = s.energy_wh.filter(|e| e.is_finite())
            && self.energy.as_ref().is_none_or(|(at, _)| s.at >= *at)
        {
            self.energy = Some((s.at, e));
        }
        if let Some(tx) = &s.transaction_id
            && self.transaction.as_ref().is_none_or(|(at, _)| s.at >= *at)
        {
            self.transaction = Some((s.at, tx.clone()));
        }
    }

    /// The bucket this accumulator makes, merged into `existing` (the bucket already stored
    /// for the same key, if any).
    pub fn into_bucket(self, existing: Option<Bucket>) -> Bucket {
        let empty = MeterSample {
            station: self.station.clone(),
            evse_id: self.evse_id,
            at: self.start,
            energy_wh: None,
            power_w: None,
            current_a: [None; 3],
            voltage_v: [None; 3],
            offered_a: None,
            transaction_id: None,
        };
        let old = existing.unwrap_or(Bucket {
            sample: empty,
            width_ms: self.width_ms,
            count: 0,
            n_power: 0,
            n_current: [0; 3],
            n_voltage: [0; 3],
            n_offered: 0,
            energy_at: None,
            transaction_at: None,
        });

        let (power_w, n_power) = self.power.merge(old.sample.power_w, old.n_power);
        let mut current_a = [None; 3];
        let mut n_current = [0; 3];
        let mut voltage_v = [None; 3];
        let mut n_voltage = [0; 3];
        for line in 0..3 {
            (current_a[line], n_current[line]) =
                self.current[line].merge(old.sample.current_a[line], old.n_current[line]);
            (voltage_v[line], n_voltage[line]) =
                self.voltage[line].merge(old.sample.voltage_v[line], old.n_voltage[line]);
        }
        let (offered_a, n_offered) = self.offered.merge(old.sample.offered_a, old.n_offered);

        let old_energy = old.energy_at.zip(old.sample.energy_wh);
        let (energy_at, energy_wh) = latest(old_energy, self.energy).unzip();
        let old_tx = old.transaction_at.zip(old.sample.transaction_id);
        let (transaction_at, transaction_id) = latest(old_tx, self.transaction).unzip();

        Bucket {
            sample: MeterSample {
                station: self.station,
                evse_id: self.evse_id,
                at: self.start,
                energy_wh,
                power_w,
                current_a,
                voltage_v,
                offered_a,
                transaction_id,
            },
            width_ms: self.width_ms,
            count: old.count + self.count,
            n_power,
            n_current,
            n_voltage,
            n_offered,
            energy_at,
            transaction_at,
        }
    }
}

/// The later of two timestamped values (`new` on a tie).
fn latest<T>(
    old: Option<(DateTime<Utc>, T)>,
    new: Option<(DateTime<Utc>, T)>,
) -> Option<(DateTime<Utc>, T)> {
    match (old, new) {
        (Some(o), Some(n)) => Some(if n.0 >= o.0 { n } else { o }),
        (o, n) => n.or(o),
    }
}

/// The start of the bucket of width `width_ms` that holds `millis` (buckets are aligned to the
/// Unix epoch).
pub(crate) fn bucket_start(millis: i64, width_ms: i64) -> i64 {
    millis.div_euclid(width_ms) * width_ms
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn at(secs: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(secs, 0).single().expect("valid time")
    }

    fn sample(secs: i64, power: Option<f64>, energy: Option<f64>) -> MeterSample {
        MeterSample {
            station: "CP".into(),
            evse_id: 1,
            at: at(secs),
            energy_wh: energy,
            power_w: power,
            current_a: [Some(10.0), None, None],
            voltage_v: [None; 3],
            offered_a: None,
            transaction_id: Some(format!("t{secs}")),
        }
    }

    #[test]
    fn averages_per_field_and_takes_the_latest_energy() {
        let mut acc = Accumulator::new("CP", 1, at(0), 900_000);
        acc.add(&sample(20, Some(3000.0), Some(120.0)));
        acc.add(&sample(10, Some(1000.0), Some(100.0)));
        acc.add(&sample(30, None, None));
        let b = acc.into_bucket(None);
        assert_eq!(b.count, 3);
        assert_eq!(b.sample.power_w, Some(2000.0));
        assert_eq!(b.n_power, 2);
        assert_eq!(b.sample.current_a, [Some(10.0), None, None]);
        assert_eq!(b.sample.energy_wh, Some(120.0));
        assert_eq!(b.energy_at, Some(at(20)));
        assert_eq!(b.sample.transaction_id.as_deref(), Some("t30"));
        assert_eq!(b.sample.at, at(0));
    }

    #[test]
    fn merging_late_samples_is_an_exact_weighted_average() {
        let mut first = Accumulator::new("CP", 1, at(0), 900_000);
        first.add(&sample(10, Some(1000.0), Some(100.0)));
        first.add(&sample(20, Some(2000.0), Some(110.0)));
        let stored = first.into_bucket(None);
        let mut late = Accumulator::new("CP", 1, at(0), 900_000);
        late.add(&sample(5, Some(6000.0), Some(90.0)));
        let merged = late.into_bucket(Some(stored));
        assert_eq!(merged.count, 3);
        assert_eq!(merged.sample.power_w, Some(3000.0));
        // The late sample is older: the energy stays the one read at 20 s.
        assert_eq!(merged.sample.energy_wh, Some(110.0));
        assert_eq!(merged.sample.transaction_id.as_deref(), Some("t20"));
    }

    #[test]
    fn non_finite_values_are_ignored() {
        let mut acc = Accumulator::new("CP", 1, at(0), 900_000);
        acc.add(&sample(1, Some(f64::NAN), Some(f64::INFINITY)));
        acc.add(&sample(2, Some(10.0), None));
        let b = acc.into_bucket(None);
        assert_eq!(b.sample.power_w, Some(10.0));
        assert_eq!(b.sample.energy_wh, None);
    }

    #[test]
    fn buckets_align_to_the_epoch() {
        assert_eq!(bucket_start(0, 900_000), 0);
        assert_eq!(bucket_start(899_999, 900_000), 0);
        assert_eq!(bucket_start(900_000, 900_000), 900_000);
        assert_eq!(bucket_start(-1, 900_000), -900_000);
    }
}

//! Time-slot helpers. Times are milliseconds since the Unix epoch (UTC); slots are aligned to
//! multiples of their length from the epoch (15 minutes, one hour...), which in UTC-offset zones
//! with whole-quarter-hour offsets lines up with local quarter-hours and hours too.

pub const MINUTE_MS: i64 = 60_000;
pub const QUARTER_HOUR_MS: i64 = 15 * MINUTE_MS;
pub const HOUR_MS: i64 = 60 * MINUTE_MS;

/// The start of the slot of length `slot_ms` that contains `at` (floor, also before 1970).
/// `slot_ms` must be positive; otherwise `at` is returned.
pub fn slot_start(at: i64, slot_ms: i64) -> i64 {
    if slot_ms <= 0 {
        return at;
    }
    at - at.rem_euclid(slot_ms)
}

/// The `[start, end)` slots of length `slot_ms` that cover `[from, to)`, the first one starting
/// at or before `from`. Empty if `to <= from` or `slot_ms <= 0`; at most `max` slots.
pub fn slots(from: i64, to: i64, slot_ms: i64, max: usize) -> Vec<(i64, i64)> {
    let mut out = Vec::new();
    if slot_ms <= 0 || to <= from {
        return out;
    }
    let mut start = slot_start(from, slot_ms);
    while start < to && out.len() < max {
        let end = start.saturating_add(slot_ms);
        out.push((start, end));
        start = end;
    }
    out
}

/// The slot in `slots` (each `(start, end, value)`) that contains `at`.
pub fn value_at<T: Copy>(slots: &[(i64, i64, T)], at: i64) -> Option<T> {
    slots
        .iter()
        .find(|(start, end, _)| *start <= at && at < *end)
        .map(|(_, _, v)| *v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floor_to_slot() {
        // 2026-03-29T01:07:00Z floors to 01:00 and 01:00 for 15 min and 1 h.
        let t = 1_774_746_420_000;
        assert_eq!(slot_start(t, QUARTER_HOUR_MS), 1_774_746_000_000);
        assert_eq!(slot_start(t, HOUR_MS), 1_774_746_000_000);
        assert_eq!(slot_start(-1, QUARTER_HOUR_MS), -QUARTER_HOUR_MS);
        assert_eq!(slot_start(t, 0), t);
    }

    #[test]
    fn covering_slots() {
        let s = slots(10 * MINUTE_MS, 40 * MINUTE_MS, QUARTER_HOUR_MS, 100);
        assert_eq!(
            s,
            vec![
                (0, QUARTER_HOUR_MS),
                (QUARTER_HOUR_MS, 2 * QUARTER_HOUR_MS),
                (2 * QUARTER_HOUR_MS, 3 * QUARTER_HOUR_MS)
            ]
        );
        assert!(slots(5, 5, QUARTER_HOUR_MS, 10).is_empty());
        assert_eq!(slots(0, 10 * HOUR_MS, QUARTER_HOUR_MS, 4).len(), 4);
    }

    #[test]
    fn lookup() {
        let prices = [(0, 10, 0.2), (10, 20, 0.3)];
        assert_eq!(value_at(&prices, 10), Some(0.3));
        assert_eq!(value_at(&prices, 9), Some(0.2));
        assert_eq!(value_at(&prices, 20), None);
    }
}

//! Byte encodings of sled keys. See the layout table in the module docs of `store`.

use super::SessionKey;

/// Separates the parts of a composite key. Station ids must not contain it.
pub(crate) const SEP: u8 = 0;

/// Length of a time key.
pub(crate) const TIME_LEN: usize = 8;

/// Bytes of a sample key after the station id: `\0 evse(4) \0 time(8)`.
const SAMPLE_SUFFIX_LEN: usize = 1 + 4 + 1 + TIME_LEN;

/// A millisecond timestamp as 8 bytes whose byte order is chronological order: big-endian with
/// the sign bit flipped.
pub(crate) fn time_key(millis: i64) -> [u8; TIME_LEN] {
    (millis ^ i64::MIN).to_be_bytes()
}

/// Inverse of [`time_key`].
pub(crate) fn time_from_key(bytes: [u8; TIME_LEN]) -> i64 {
    i64::from_be_bytes(bytes) ^ i64::MIN
}

/// `station \0 transaction_id`.
pub(crate) fn session_key(station: &str, transaction_id: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(station.len() + 1 + transaction_id.len());
    key.extend_from_slice(station.as_bytes());
    key.push(SEP);
    key.extend_from_slice(transaction_id.as_bytes());
    key
}

pub(crate) fn parse_session_key(bytes: &[u8]) -> Option<SessionKey> {
    let sep = bytes.iter().position(|&b| b == SEP)?;
    let station = std::str::from_utf8(&bytes[..sep]).ok()?;
    let transaction_id = std::str::from_utf8(&bytes[sep + 1..]).ok()?;
    Some(SessionKey::new(station, transaction_id))
}

/// The prefix of all session keys of one station: `station \0`.
pub(crate) fn station_sessions_prefix(station: &str) -> Vec<u8> {
    let mut prefix = Vec::with_capacity(station.len() + 1);
    prefix.extend_from_slice(station.as_bytes());
    prefix.push(SEP);
    prefix
}

/// `time(started_at) ++ session key`: the `sessions_by_start` index.
pub(crate) fn by_start_key(started_millis: i64, session_key: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(TIME_LEN + session_key.len());
    key.extend_from_slice(&time_key(started_millis));
    key.extend_from_slice(session_key);
    key
}

/// Splits a `sessions_by_start` key into its start millis and the session key.
pub(crate) fn parse_by_start_key(bytes: &[u8]) -> Option<(i64, &[u8])> {
    let (time, session) = bytes.split_first_chunk::<TIME_LEN>()?;
    Some((time_from_key(*time), session))
}

/// The prefix of one EVSE's samples: `station \0 evse(u32 BE) \0`.
pub(crate) fn series_prefix(station: &str, evse_id: u32) -> Vec<u8> {
    let mut prefix = Vec::with_capacity(station.len() + SAMPLE_SUFFIX_LEN);
    prefix.extend_from_slice(station.as_bytes());
    prefix.push(SEP);
    prefix.extend_from_slice(&evse_id.to_be_bytes());
    prefix.push(SEP);
    prefix
}

/// `station \0 evse(u32 BE) \0 time(at)`.
pub(crate) fn sample_key(station: &str, evse_id: u32, millis: i64) -> Vec<u8> {
    let mut key = series_prefix(station, evse_id);
    key.extend_from_slice(&time_key(millis));
    key
}

/// A parsed sample key. Parsed from the end, so it does not depend on the station id.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct SampleKey<'a> {
    pub station: &'a str,
    pub evse_id: u32,
    pub millis: i64,
}

pub(crate) fn parse_sample_key(bytes: &[u8]) -> Option<SampleKey<'_>> {
    let station_len = bytes.len().checked_sub(SAMPLE_SUFFIX_LEN)?;
    let (station, suffix) = bytes.split_at(station_len);
    let (&sep1, rest) = suffix.split_first()?;
    let (evse, rest) = rest.split_first_chunk::<4>()?;
    let (&sep2, time) = rest.split_first()?;
    let time: [u8; TIME_LEN] = time.try_into().ok()?;
    if sep1 != SEP || sep2 != SEP {
        return None;
    }
    Some(SampleKey {
        station: std::str::from_utf8(station).ok()?,
        evse_id: u32::from_be_bytes(*evse),
        millis: time_from_key(time),
    })
}

/// The smallest key greater than every key that starts with `prefix`, or `None` when there is
/// none (the prefix is all 0xFF).
pub(crate) fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

/// A key, printable in an error message.
pub(crate) fn show(bytes: &[u8]) -> String {
    format!("\"{}\"", bytes.escape_ascii())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_keys_sort_chronologically() {
        let times = [i64::MIN, -86_400_000, -1, 0, 1, 1_700_000_000_000, i64::MAX];
        for pair in times.windows(2) {
            assert!(time_key(pair[0]) < time_key(pair[1]), "{pair:?}");
        }
        for t in times {
            assert_eq!(time_from_key(time_key(t)), t);
        }
    }

    #[test]
    fn sample_keys_round_trip_and_sort_by_series_then_time() {
        let key = sample_key("CP-1", 2, -5);
        assert_eq!(
            parse_sample_key(&key),
            Some(SampleKey {
                station: "CP-1",
                evse_id: 2,
                millis: -5
            })
        );
        assert!(sample_key("CP-1", 2, 10) < sample_key("CP-1", 2, 11));
        assert!(sample_key("CP-1", 2, i64::MAX) < sample_key("CP-1", 3, i64::MIN));
        assert!(key.starts_with(&series_prefix("CP-1", 2)));
        assert_eq!(parse_sample_key(b"short"), None);
        let mut bad = key.clone();
        bad[4] = b'x';
        assert_eq!(parse_sample_key(&bad), None);
    }

    #[test]
    fn session_keys_round_trip() {
        let key = session_key("CP-1", "42");
        assert_eq!(key, b"CP-1\x0042");
        assert_eq!(parse_session_key(&key), Some(SessionKey::new("CP-1", "42")));
        // A transaction id may contain anything, the station id is before the first NUL.
        let odd = session_key("CP", "a\0b");
        assert_eq!(parse_session_key(&odd), Some(SessionKey::new("CP", "a\0b")));
        assert_eq!(parse_session_key(b"no separator"), None);
        assert_eq!(parse_session_key(b"\xff\x00x"), None);
        let by_start = by_start_key(7, &key);
        assert_eq!(parse_by_start_key(&by_start), Some((7, key.as_slice())));
    }

    #[test]
    fn prefix_end_is_the_successor_of_all_prefixed_keys() {
        assert_eq!(prefix_end(b"ab\0"), Some(b"ab\x01".to_vec()));
        assert_eq!(prefix_end(b"a\xff"), Some(b"b".to_vec()));
        assert_eq!(prefix_end(b"\xff\xff"), None);
    }
}

//! Persistence: stations, charging sessions and meter samples, behind the [`Store`] trait.
//!
//! The engine is sled 0.34.7 ([`SledStore`]); everything above this module talks to
//! `dyn Store`, so the engine can be replaced. The store never reads a clock: every time it
//! needs (`compact`'s "now", records' timestamps) is passed in.
//!
//! # Durability: what survives a crash (kill -9, power loss), and when
//!
//! sled keeps writes in its in-memory log and fsyncs them in the background about every 500 ms;
//! a flush makes every write that completed before it durable. The store adds flushes at the
//! points that must survive a crash:
//!
//! - **Flushed before returning** (durable once they return `Ok`): [`Store::start_session`],
//!   [`Store::end_session`], [`Store::next_transaction_id`] and [`Store::flush`]. Each flushes
//!   the whole database, so this write *and every write that completed before it* (samples,
//!   station records, session updates) survive a crash that happens after the return. A 1.6
//!   transaction id, once returned, is never handed out again, even after a crash.
//! - **Not flushed** (durable within about 500 ms with the default
//!   [`StoreOptions::flush_every_ms`], or at the next flush point, whichever comes first):
//!   [`Store::update_session`], [`Store::append_samples`], [`Store::put_station`],
//!   [`Store::plugin_kv_put`]. A crash can
//!   lose the last ~0.5 s of these writes, never an earlier one that a flush point covered.
//! - **Atomic**: a session write (the record plus its `open_sessions` and `sessions_by_start`
//!   index entries) is one sled transaction (an update that leaves the index entries as they
//!   are is a single compare-and-swap of the record), and one `append_samples` call is one
//!   sled batch: after a crash each is either wholly present or wholly absent, never torn.
//!   Compaction commits in chunks of whole buckets (each averaged bucket and the removal of its
//!   raw samples in the same transaction), so a crash mid-compaction loses no sample and
//!   counts none twice; it flushes when it finishes.
//! - **At open**: migrations run one version at a time, each followed by a flush. Then, unless
//!   the previous process closed the store cleanly (dropping a [`SledStore`] writes a
//!   `clean_shutdown` marker and flushes), every session record is checked against the
//!   `open_sessions` and `sessions_by_start` indexes: missing entries are added and stale
//!   `open_sessions` entries removed (stale time-index entries are skipped on read). Session
//!   writes are atomic, so this only matters if sled's own recovery was torn; it costs about
//!   5–8 µs per stored session (0.5–0.8 s per 100,000 sessions, release build). Then the
//!   store flushes. Open never silently accepts a schema newer than it knows
//!   ([`StoreError::UnsupportedSchema`]).
//!
//! Reads never panic on bad data: a point lookup of an undecodable record returns
//! [`StoreError::Decode`]; listings (`stations`, `open_sessions`, `sessions`, `samples`) skip
//! undecodable records and log them at error level, so that one bad record does not hide the
//! others.
//!
//! # On-disk layout (schema version 1)
//!
//! | tree | key | value |
//! |---|---|---|
//! | `meta` | `schema_version` | u32 big-endian |
//! | `meta` | `last_transaction_id` | i32 big-endian: the last 1.6 transaction id handed out |
//! | `meta` | `clean_shutdown` | empty; present only while no process has the store open |
//! | `stations` | station id (UTF-8) | JSON [`StationRecord`] |
//! | `sessions` | [`SessionKey::to_bytes`]: `station \0 transaction_id` | JSON [`SessionRecord`] |
//! | `open_sessions` | session key | empty: the index of sessions without `ended_at` |
//! | `sessions_by_start` | `started_at` millis (time key) ++ session key | empty |
//! | `samples` | `station \0 evse (u32 BE) \0 at` millis (time key) | JSON raw [`MeterSample`] |
//! | `samples_downsampled` | same layout, at = bucket start | JSON bucket (averages + counts) |
//! | `plugin_kv` | plugin name (UTF-8, no NUL) `\0` key (UTF-8) | the value's bytes, as the plugin gave them |
//!
//! A *time key* is the i64 millisecond timestamp, big-endian, with the sign bit flipped, so that
//! byte order is chronological order. Station ids must not contain a NUL byte. One raw sample is
//! kept per station, EVSE and millisecond: a later append at the same instant replaces it.
//!
//! A database without `schema_version` but with data counts as version 0 (the layout above
//! without the two session indexes); the migration to 1 builds the indexes and moves the 1.6
//! transaction id counter past every integer transaction id already stored.
//!
//! # Retention and downsampling
//!
//! [`Store::compact`] folds raw samples older than `now - raw_for` (rounded down to a bucket
//! boundary, so a bucket is only ever folded once it lies wholly in the past) into one averaged
//! sample per station, EVSE and `downsample_to` bucket, stored in the separate
//! `samples_downsampled` tree. Averages are per field over the samples that have the field
//! (power, per-phase current and voltage, offered current); energy is the reading of the latest
//! sample that has one; the transaction id is the latest one present; `at` is the bucket start.
//! Buckets keep their per-field counts, so a raw sample that arrives late for an already folded
//! bucket is merged as an exact weighted average, and compacting twice changes nothing (the
//! second run finds no raw samples to fold). Downsampled buckets whose start is older than
//! `now - keep_downsampled_for` are deleted. [`Store::samples`] returns raw and downsampled
//! samples together, in time order.

mod keys;
mod rollup;
mod sled_store;

pub use sled_store::{OpenReport, SCHEMA_VERSION, SledStore, StoreOptions};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// The persistence interface the controller uses. See the module docs for the durability of
/// each method.
pub trait Store: Send + Sync + 'static {
    // ---------------------------------------------------------------------------- stations

    /// Inserts or replaces a station record. Not flushed.
    fn put_station(&self, station: &StationRecord) -> Result<(), StoreError>;
    /// The station with this id, if known.
    fn station(&self, id: &str) -> Result<Option<StationRecord>, StoreError>;
    /// All stations, ordered by id.
    fn stations(&self) -> Result<Vec<StationRecord>, StoreError>;

    // ---------------------------------------------------------------------------- sessions

    /// Records a started session (an upsert). Durable when it returns.
    fn start_session(&self, session: &SessionRecord) -> Result<(), StoreError>;
    /// Updates a session (an upsert: energy so far, seqNo…). Not flushed. It never reopens an
    /// ended session: an update without `ended_at` of a session stored as ended (a race with
    /// `end_session`) is ignored.
    fn update_session(&self, session: &SessionRecord) -> Result<(), StoreError>;
    /// Records an ended session (an upsert; `ended_at` should be set). Durable when it returns.
    fn end_session(&self, session: &SessionRecord) -> Result<(), StoreError>;
    /// The session with this key, if known.
    fn session(&self, key: &SessionKey) -> Result<Option<SessionRecord>, StoreError>;
    /// Every session without `ended_at`, ordered by station then transaction id.
    fn open_sessions(&self) -> Result<Vec<SessionRecord>, StoreError>;
    /// Sessions matching `filter`, newest `started_at` first, at most `filter.limit`.
    fn sessions(&self, filter: &SessionFilter) -> Result<Vec<SessionRecord>, StoreError>;
    /// The next OCPP 1.6 transaction id: 1, 2, 3… never reused, even across restarts and
    /// crashes. Durable when it returns.
    fn next_transaction_id(&self) -> Result<i32, StoreError>;

    // ------------------------------------------------------------------------ meter samples

    /// Appends samples as one atomic batch. Not flushed.
    fn append_samples(&self, samples: &[MeterSample]) -> Result<(), StoreError>;
    /// Samples of one EVSE with `from <= at < to`, raw and downsampled together, in time
    /// order (downsampled samples are matched by their bucket start).
    fn samples(
        &self,
        station: &str,
        evse_id: u32,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<Vec<MeterSample>, StoreError>;
    /// Applies retention and downsampling as of `now`. Flushes when done.
    fn compact(
        &self,
        now: DateTime<Utc>,
        policy: &RetentionPolicy,
    ) -> Result<CompactionReport, StoreError>;

    /// Makes every write that completed before this call durable.
    fn flush(&self) -> Result<(), StoreError>;

    // ------------------------------------------------------------------- plugin key-value

    /// Every entry of one plugin's key-value store, in key byte order. Quotas are the plugin
    /// host's job (it loads these once and accounts for them); the store only keeps the bytes.
    fn plugin_kv_entries(&self, plugin: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError>;
    /// Sets (`Some`) or deletes (`None`) one key of one plugin's store. Not flushed.
    fn plugin_kv_put(
        &self,
        plugin: &str,
        key: &str,
        value: Option<&[u8]>,
    ) -> Result<(), StoreError>;

    // ------------------------------------------------------------------- control

    /// Appends one charging profile Loadstar sent, with its answer, to the audit trail. Not
    /// flushed (the background fsync makes it durable within half a second). Records older
    /// than the raw-sample retention go at compaction.
    fn append_profile(&self, record: &ProfileRecord) -> Result<(), StoreError>;
    /// The newest `limit` records of `station`'s audit trail, oldest first.
    fn profiles(&self, station: &str, limit: usize) -> Result<Vec<ProfileRecord>, StoreError>;
    /// Control state that must survive a restart (learned station quirks, rotation, active
    /// constraints), one value per key. Flushed: it is written rarely.
    fn put_control(&self, key: &str, value: &[u8]) -> Result<(), StoreError>;
    /// A value [`Store::put_control`] wrote.
    fn control(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError>;
}

/// One charging profile sent, for the audit trail.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProfileRecord {
    pub at: DateTime<Utc>,
    pub station: String,
    /// EVSE (1.6 connector) id; 0 for the whole station.
    pub evse: u32,
    /// `TxProfile`, `TxDefaultProfile` or `StationMax`.
    pub purpose: String,
    pub stack_level: i32,
    /// Per-phase current, A (the schedule may carry it in W).
    pub amps: f64,
    pub unit: String,
    pub valid_to: Option<DateTime<Utc>>,
    /// `accepted`, `rejected`, or the error.
    pub result: String,
}

/// A charging station, as far as the store knows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StationRecord {
    pub id: String,
    /// The negotiated subprotocol: `"ocpp1.6"` or `"ocpp2.0.1"`.
    pub ocpp_version: String,
    pub vendor: Option<String>,
    pub model: Option<String>,
    pub serial: Option<String>,
    pub firmware: Option<String>,
    pub first_seen: DateTime<Utc>,
    pub last_boot: Option<DateTime<Utc>>,
    pub last_seen: Option<DateTime<Utc>>,
    /// Free-form: what the station said about itself (e.g. smart-charging configuration read
    /// at boot).
    pub capabilities: serde_json::Value,
    /// Settings the station refused to take.
    pub refused_settings: Vec<String>,
    pub adopted: bool,
}

/// Identifies a charging session: the station and its OCPP transaction id. A 1.6 integer
/// transaction id is stored as its decimal string; a 2.0.1 id is the station's string.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct SessionKey {
    pub station: String,
    pub transaction_id: String,
}

impl SessionKey {
    pub fn new(station: impl Into<String>, transaction_id: impl Into<String>) -> Self {
        Self {
            station: station.into(),
            transaction_id: transaction_id.into(),
        }
    }

    /// The stable byte encoding used as the sled key: `station \0 transaction_id`. Station ids
    /// must not contain NUL (the store refuses to write them), so the encoding is unambiguous.
    pub fn to_bytes(&self) -> Vec<u8> {
        keys::session_key(&self.station, &self.transaction_id)
    }

    /// Decodes [`SessionKey::to_bytes`].
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, StoreError> {
        keys::parse_session_key(bytes).ok_or_else(|| StoreError::Corrupt {
            what: format!("session key {}", keys::show(bytes)),
        })
    }
}

/// A charging session (an OCPP transaction).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SessionRecord {
    pub station: String,
    pub evse_id: u32,
    pub connector_id: u32,
    pub transaction_id: String,
    pub id_tag: Option<String>,
    pub started_at: DateTime<Utc>,
    pub ended_at: Option<DateTime<Utc>>,
    pub meter_start_wh: Option<f64>,
    pub meter_stop_wh: Option<f64>,
    /// The latest known energy delivered in this session. Must be finite.
    pub energy_wh: f64,
    pub stop_reason: Option<String>,
    /// The last 2.0.1 TransactionEvent seqNo seen.
    pub last_seq_no: Option<i64>,
    pub updated_at: DateTime<Utc>,
}

impl SessionRecord {
    pub fn key(&self) -> SessionKey {
        SessionKey::new(self.station.clone(), self.transaction_id.clone())
    }

    pub fn is_open(&self) -> bool {
        self.ended_at.is_none()
    }
}

/// Which sessions [`Store::sessions`] returns.
#[derive(Clone, Debug, PartialEq)]
pub struct SessionFilter {
    /// Only this station's sessions.
    pub station: Option<String>,
    /// Only sessions with `started_at >= started_from`.
    pub started_from: Option<DateTime<Utc>>,
    /// Only sessions with `started_at < started_before`.
    pub started_before: Option<DateTime<Utc>>,
    /// Only sessions without `ended_at`.
    pub open_only: bool,
    /// At most this many (the newest). Default 100.
    pub limit: usize,
}

impl Default for SessionFilter {
    fn default() -> Self {
        Self {
            station: None,
            started_from: None,
            started_before: None,
            open_only: false,
            limit: 100,
        }
    }
}

/// One meter reading of one EVSE (EVSE 0: the station's main meter).
///
/// Non-finite readings (NaN, ±∞) are stored as absent.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MeterSample {
    pub station: String,
    pub evse_id: u32,
    pub at: DateTime<Utc>,
    /// Energy register (Energy.Active.Import.Register), Wh.
    pub energy_wh: Option<f64>,
    pub power_w: Option<f64>,
    /// Per line L1..L3.
    pub current_a: [Option<f64>; 3],
    /// Per line L1..L3, phase to neutral.
    pub voltage_v: [Option<f64>; 3],
    pub offered_a: Option<f64>,
    pub transaction_id: Option<String>,
}

/// How long samples are kept, and at which resolution.
#[derive(Clone, Debug, PartialEq)]
pub struct RetentionPolicy {
    /// Raw samples are kept this long (default 7 days).
    pub raw_for: chrono::Duration,
    /// Older samples are averaged into buckets this wide (default 15 minutes).
    pub downsample_to: chrono::Duration,
    /// Downsampled buckets are kept this long (default 365 days; `None`: forever).
    pub keep_downsampled_for: Option<chrono::Duration>,
}

impl Default for RetentionPolicy {
    fn default() -> Self {
        Self {
            raw_for: chrono::Duration::days(7),
            downsample_to: chrono::Duration::minutes(15),
            keep_downsampled_for: Some(chrono::Duration::days(365)),
        }
    }
}

/// What one [`Store::compact`] run did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CompactionReport {
    /// Raw samples removed (folded into buckets, or dropped because their bucket was already
    /// past `keep_downsampled_for`).
    pub raw_removed: u64,
    /// Downsampled buckets written (new, or merged with late samples).
    pub buckets_written: u64,
    /// Downsampled buckets deleted for age.
    pub expired_removed: u64,
    /// Undecodable sample records removed (from either tree) while compacting.
    pub corrupt_removed: u64,
}

/// Everything that can go wrong in the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The storage engine failed (IO, engine-level corruption, lock held by another process…).
    #[error("storage engine: {0}")]
    Engine(#[from] sled::Error),
    /// A value could not be serialized.
    #[error("cannot encode a record for tree `{tree}` at key {key}: {source}")]
    Encode {
        tree: &'static str,
        key: String,
        #[source]
        source: serde_json::Error,
    },
    /// A stored value could not be deserialized.
    #[error("cannot decode the record in tree `{tree}` at key {key}: {source}")]
    Decode {
        tree: &'static str,
        key: String,
        #[source]
        source: serde_json::Error,
    },
    /// Stored data is not what the store wrote.
    #[error("corrupt store data: {what}")]
    Corrupt { what: String },
    /// The database was written by a newer Loadstar.
    #[error(
        "store schema version {found} is newer than the newest this Loadstar supports \
         ({supported}); refusing to open it (upgrade Loadstar, or restore a backup)"
    )]
    UnsupportedSchema { found: u32, supported: u32 },
    /// The caller passed something the store cannot store.
    #[error("invalid input to the store: {what}")]
    Invalid { what: String },
    /// Every positive i32 has been handed out as a 1.6 transaction id.
    #[error("OCPP 1.6 transaction ids are exhausted (the last one handed out was {last})")]
    TransactionIdsExhausted { last: i32 },
}

//! The sled 0.34 engine behind [`Store`]. Layout, durability and retention rules are in the
//! module docs of `store`.

use std::ops::Bound;
use std::path::Path;

use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sled::transaction::{
    ConflictableTransactionError, ConflictableTransactionResult, TransactionError, Transactional,
};
use sled::{Batch, Db, IVec, Tree};
use tracing::{debug, error, info, warn};

use super::keys::{self, show};
use super::rollup::{Accumulator, Bucket, bucket_start};
use super::{
    CompactionReport, MeterSample, ProfileRecord, RetentionPolicy, SessionFilter, SessionKey,
    SessionRecord, StationRecord, Store, StoreError,
};

/// The schema version this build writes and reads.
pub const SCHEMA_VERSION: u32 = 1;

const META: &str = "meta";
const STATIONS: &str = "stations";
const SESSIONS: &str = "sessions";
const OPEN_SESSIONS: &str = "open_sessions";
const SESSIONS_BY_START: &str = "sessions_by_start";
const SAMPLES: &str = "samples";
const SAMPLES_DOWNSAMPLED: &str = "samples_downsampled";
// Added without a schema bump: an older build never opens it, and a new one finds it empty.
const PLUGIN_KV: &str = "plugin_kv";
// Added without a schema bump, like `plugin_kv`.
const PROFILES: &str = "profiles_sent";
const CONTROL: &str = "control";

const KEY_SCHEMA_VERSION: &[u8] = b"schema_version";
const KEY_LAST_TRANSACTION_ID: &[u8] = b"last_transaction_id";
const KEY_CLEAN_SHUTDOWN: &[u8] = b"clean_shutdown";

const EMPTY: &[u8] = &[];

/// Raw samples removed per compaction transaction (bounded so a transaction, which holds
/// sled's global write lock, stays short).
const COMPACT_CHUNK: usize = 4096;

type TxResult<T> = ConflictableTransactionResult<T, StoreError>;

/// One schema migration: from `version` to `version + 1`. It must be idempotent (a crash
/// during a migration reruns it at the next open).
type Migration = fn(&Db) -> Result<(), StoreError>;

/// The migrations, in order: `(from_version, migration to from_version + 1)`.
const MIGRATIONS: &[(u32, Migration)] = &[(0, migrate_0_to_1)];

/// Tuning of [`SledStore`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoreOptions {
    /// sled's page cache bound, bytes (default 64 MiB; sled's own default is 1 GiB). Sample
    /// keys are per station, so at thousands of stations the hot leaves need this much; 16 MiB
    /// gave a p99 of 201 ms against 3 ms at 10,000 stations (one run each, BENCHMARKS.md).
    pub cache_capacity_bytes: u64,
    /// Background fsync period (default `Some(500)` ms; `None` disables it, leaving only the
    /// explicit flush points).
    pub flush_every_ms: Option<u64>,
    /// How long open waits for the database lock (default 2 s). sled 0.34 releases its file
    /// lock from a background thread shortly *after* a dropped database returns (sled #1234),
    /// so reopening in the same process can briefly see the lock as held; a lock held by
    /// another live process still fails once this has passed.
    pub lock_wait: std::time::Duration,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            cache_capacity_bytes: 64 * 1024 * 1024,
            flush_every_ms: Some(500),
            lock_wait: std::time::Duration::from_secs(2),
        }
    }
}

/// What [`SledStore::open`] found and did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OpenReport {
    /// The database was empty and got the current schema version.
    pub created: bool,
    /// The schema version migrated from, if a migration ran.
    pub migrated_from: Option<u32>,
    /// The previous process closed the store cleanly, so the session index check was skipped.
    pub clean_shutdown: bool,
    /// Session index entries added or removed by the check at open.
    pub index_repairs: u64,
    /// Session records that could not be decoded (left in place; reading them errors).
    pub corrupt_sessions: u64,
}

/// The trees of schema version 1.
#[derive(Clone)]
struct Trees {
    meta: Tree,
    stations: Tree,
    sessions: Tree,
    open_sessions: Tree,
    sessions_by_start: Tree,
    samples: Tree,
    samples_downsampled: Tree,
    plugin_kv: Tree,
    profiles: Tree,
    control: Tree,
}

impl Trees {
    fn open(db: &Db) -> Result<Self, StoreError> {
        Ok(Self {
            meta: db.open_tree(META)?,
            stations: db.open_tree(STATIONS)?,
            sessions: db.open_tree(SESSIONS)?,
            open_sessions: db.open_tree(OPEN_SESSIONS)?,
            sessions_by_start: db.open_tree(SESSIONS_BY_START)?,
            samples: db.open_tree(SAMPLES)?,
            samples_downsampled: db.open_tree(SAMPLES_DOWNSAMPLED)?,
            plugin_kv: db.open_tree(PLUGIN_KV)?,
            profiles: db.open_tree(PROFILES)?,
            control: db.open_tree(CONTROL)?,
        })
    }
}

/// [`Store`] on sled 0.34.7.
pub struct SledStore {
    db: Db,
    t: Trees,
    report: OpenReport,
}

impl std::fmt::Debug for SledStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SledStore")
            .field("report", &self.report)
            .finish_non_exhaustive()
    }
}

impl SledStore {
    /// Stores one sample without ever overwriting another. Keys have millisecond resolution and
    /// stations send samples with equal timestamps (coarse clocks, two measurands in two
    /// messages), so a taken key moves the new sample to the next free millisecond; its own
    /// `at` is kept exactly. An identical sample (a retried MeterValues) is stored once.
    fn insert_sample(&self, s: &MeterSample) -> Result<(), StoreError> {
        const MAX_SHIFT_MS: i64 = 1000;
        let millis = s.at.timestamp_millis();
        let first = keys::sample_key(&s.station, s.evse_id, millis);
        let last = keys::sample_key(
            &s.station,
            s.evse_id,
            millis.saturating_add(MAX_SHIFT_MS - 1),
        );
        let value = encode(SAMPLES, &first, s)?;
        // One seek in the common case (nothing there); on a collision, the samples already in
        // this second tell whether it is a repeat and where the next free key is.
        let mut taken_until = None;
        for item in self.t.samples.range(first.as_slice()..=last.as_slice()) {
            let (key, existing) = item?;
            if existing.as_ref() == value.as_slice() {
                return Ok(());
            }
            taken_until = keys::parse_sample_key(&key).map(|k| k.millis);
        }
        let mut at = match taken_until {
            None => millis,
            Some(taken) => taken.saturating_add(1),
        };
        // A racing writer of the same series may take a key meanwhile: move on past it.
        while at < millis.saturating_add(MAX_SHIFT_MS) {
            let key = keys::sample_key(&s.station, s.evse_id, at);
            match self
                .t
                .samples
                .compare_and_swap(&key, None::<&[u8]>, Some(value.as_slice()))?
            {
                Ok(()) => return Ok(()),
                Err(taken) if taken.current.as_deref() == Some(value.as_slice()) => return Ok(()),
                Err(_) => at += 1,
            }
        }
        Err(StoreError::Invalid {
            what: format!(
                "more than {MAX_SHIFT_MS} samples for station {:?} EVSE {} within one second",
                s.station, s.evse_id
            ),
        })
    }

    /// Opens (or creates) the store in `dir` with default [`StoreOptions`].
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        Self::open_with(dir, &StoreOptions::default())
    }

    /// Opens (or creates) the store in `dir`: checks the schema version (refusing a newer
    /// one), runs migrations, checks the session indexes unless the last shutdown was clean,
    /// and flushes.
    pub fn open_with(dir: &Path, options: &StoreOptions) -> Result<Self, StoreError> {
        let config = sled::Config::new()
            .path(dir)
            .cache_capacity(options.cache_capacity_bytes)
            .flush_every_ms(options.flush_every_ms);
        let db = open_waiting_for_lock(&config, options.lock_wait)?;
        let mut report = OpenReport::default();

        let version = match read_schema_version(&db)? {
            Some(found) if found > SCHEMA_VERSION => {
                error!(
                    found,
                    supported = SCHEMA_VERSION,
                    "store: schema version is newer than this build supports; refusing to open"
                );
                return Err(StoreError::UnsupportedSchema {
                    found,
                    supported: SCHEMA_VERSION,
                });
            }
            Some(found) => found,
            None if db_is_empty(&db)? => {
                info!(
                    path = %dir.display(),
                    version = SCHEMA_VERSION,
                    "store: creating a new database"
                );
                write_schema_version(&db, SCHEMA_VERSION)?;
                db.flush()?;
                report.created = true;
                SCHEMA_VERSION
            }
            None => {
                info!("store: data without a schema version; treating it as version 0");
                0
            }
        };
        if version < SCHEMA_VERSION {
            report.migrated_from = Some(version);
            migrate(&db, version)?;
        }

        let t = Trees::open(&db)?;
        report.clean_shutdown = t.meta.remove(KEY_CLEAN_SHUTDOWN)?.is_some();
        // A migration has just rebuilt the indexes; a new database has none to check.
        if !report.clean_shutdown && !report.created && report.migrated_from.is_none() {
            let check = check_session_indexes(&t)?;
            report.index_repairs = check.repairs;
            report.corrupt_sessions = check.corrupt;
            if check.repairs > 0 {
                warn!(
                    repairs = check.repairs,
                    "store: repaired session indexes after an unclean shutdown"
                );
            } else {
                info!(
                    sessions = check.sessions,
                    "store: unclean shutdown; session indexes checked and consistent"
                );
            }
        }
        db.flush()?;
        Ok(Self { db, t, report })
    }

    /// What the open found and did.
    pub fn open_report(&self) -> &OpenReport {
        &self.report
    }

    /// The schema version stored in the database.
    pub fn schema_version(&self) -> Result<u32, StoreError> {
        read_schema_version(&self.db)?.ok_or_else(|| StoreError::Corrupt {
            what: "schema_version is missing from `meta`".into(),
        })
    }

    /// The database's size on disk, bytes.
    pub fn size_on_disk(&self) -> Result<u64, StoreError> {
        Ok(self.db.size_on_disk()?)
    }

    /// Writes a session record with its index entries (atomically), flushing if `kind` is
    /// durable.
    fn write_session(&self, s: &SessionRecord, kind: SessionWrite) -> Result<(), StoreError> {
        check_station_id(&s.station)?;
        if !s.energy_wh.is_finite() {
            return Err(StoreError::Invalid {
                what: format!(
                    "session {}/{}: energy_wh is {}",
                    s.station, s.transaction_id, s.energy_wh
                ),
            });
        }
        let key = keys::session_key(&s.station, &s.transaction_id);
        let value = encode(SESSIONS, &key, s)?;
        let start_key = keys::by_start_key(s.started_at.timestamp_millis(), &key);
        let open = s.is_open();

        let applied = match kind {
            SessionWrite::Update => self.update_in_place(&key, &value, open, &start_key)?,
            SessionWrite::Start | SessionWrite::End => None,
        };
        let applied = match applied {
            Some(applied) => applied,
            None => self.write_session_indexed(&key, &value, open, &start_key, kind)?,
        };
        if !applied {
            debug!(
                station = %s.station,
                transaction = %s.transaction_id,
                "store: ignored an update of an ended session"
            );
        }
        if kind.durable() {
            self.db.flush()?;
        }
        Ok(())
    }

    /// The fast path of an update: when the index entries stay the same (same open state,
    /// same start millisecond), a compare-and-swap of the record alone, without a
    /// multi-tree transaction. `None` when the transaction is needed.
    fn update_in_place(
        &self,
        key: &[u8],
        value: &[u8],
        open: bool,
        start_key: &[u8],
    ) -> Result<Option<bool>, StoreError> {
        loop {
            let Some(old) = self.t.sessions.get(key)? else {
                return Ok(None);
            };
            let Ok(old_probe) = probe(&old) else {
                return Ok(None);
            };
            if old_probe.ended_at.is_some() && open {
                // An update racing with the end: never reopen an ended session.
                return Ok(Some(false));
            }
            let old_start = keys::by_start_key(old_probe.started_at.timestamp_millis(), key);
            if old_probe.ended_at.is_none() != open || old_start != start_key {
                return Ok(None);
            }
            if self
                .t
                .sessions
                .compare_and_swap(key, Some(old), Some(value))?
                .is_ok()
            {
                return Ok(Some(true));
            }
        }
    }

    /// Writes a session record and its index entries in one transaction. Returns false when
    /// an update was ignored because the session had ended.
    fn write_session_indexed(
        &self,
        key: &[u8],
        value: &[u8],
        open: bool,
        start_key: &[u8],
        kind: SessionWrite,
    ) -> Result<bool, StoreError> {
        let t = &self.t;
        (&t.sessions, &t.open_sessions, &t.sessions_by_start)
            .transaction(|(sessions, open_idx, by_start)| -> TxResult<bool> {
                let old = sessions.get(key)?;
                let old = old.as_deref().and_then(|v| probe(v).ok());
                if let Some(old) = &old {
                    if kind == SessionWrite::Update && old.ended_at.is_some() && open {
                        // An update racing with the end: never reopen an ended session.
                        return Ok(false);
                    }
                    let old_start = keys::by_start_key(old.started_at.timestamp_millis(), key);
                    if old_start != start_key {
                        by_start.remove(old_start)?;
                    }
                }
                sessions.insert(key, value)?;
                by_start.insert(start_key, EMPTY)?;
                if open {
                    open_idx.insert(key, EMPTY)?;
                } else {
                    open_idx.remove(key)?;
                }
                Ok(true)
            })
            .map_err(from_tx)
    }

    fn read_session(&self, key: &[u8]) -> Result<Option<SessionRecord>, StoreError> {
        match self.t.sessions.get(key)? {
            None => Ok(None),
            Some(v) => decode(SESSIONS, key, &v).map(Some),
        }
    }

    /// Like [`Self::read_session`], but logs and skips an undecodable record (for listings).
    fn read_session_lenient(&self, key: &[u8]) -> Result<Option<SessionRecord>, StoreError> {
        match self.read_session(key) {
            Err(e @ StoreError::Decode { .. }) => {
                error!(error = %e, "store: skipping an undecodable session");
                Ok(None)
            }
            other => other,
        }
    }

    /// Folds raw samples older than `raw_cutoff` into buckets, series by series.
    fn fold_raw(
        &self,
        raw_cutoff: i64,
        width_ms: i64,
        expire_cutoff: Option<i64>,
        report: &mut CompactionReport,
    ) -> Result<(), StoreError> {
        let mut cursor: Vec<u8> = Vec::new();
        loop {
            let Some(first) = self.t.samples.range(cursor.as_slice()..).next() else {
                return Ok(());
            };
            let (key, _) = first?;
            let Some(series) = keys::parse_sample_key(&key) else {
                warn!(key = %show(&key), "store: removing a malformed sample key");
                self.t.samples.remove(&key)?;
                report.corrupt_removed += 1;
                cursor = key.to_vec();
                cursor.push(0);
                continue;
            };
            let prefix = keys::series_prefix(series.station, series.evse_id);
            let series = SeriesFold {
                station: series.station.to_owned(),
                evse_id: series.evse_id,
                width_ms,
                expire_cutoff,
            };
            self.fold_series(&series, &prefix, raw_cutoff, report)?;
            match keys::prefix_end(&prefix) {
                Some(end) => cursor = end,
                None => return Ok(()),
            }
        }
    }

    fn fold_series(
        &self,
        series: &SeriesFold,
        prefix: &[u8],
        raw_cutoff: i64,
        report: &mut CompactionReport,
    ) -> Result<(), StoreError> {
        let hi = keys::sample_key(&series.station, series.evse_id, raw_cutoff);
        // Completed buckets and the raw keys to remove with them, committed together.
        let mut pending: Vec<(Vec<u8>, Accumulator)> = Vec::new();
        let mut pending_removes: Vec<IVec> = Vec::new();
        // The bucket being accumulated and its raw keys.
        let mut current: Option<(i64, Accumulator)> = None;
        let mut current_removes: Vec<IVec> = Vec::new();

        for item in self.t.samples.range(prefix.to_vec()..hi) {
            let (key, value) = item?;
            let parsed = keys::parse_sample_key(&key)
                .filter(|k| k.station == series.station && k.evse_id == series.evse_id);
            let sample = parsed.as_ref().and_then(|k| {
                let sample = decode::<MeterSample>(SAMPLES, &key, &value);
                if let Err(e) = &sample {
                    warn!(error = %e, "store: removing an undecodable sample");
                }
                let start = bucket_start(k.millis, series.width_ms);
                let start_at = DateTime::<Utc>::from_timestamp_millis(start)?;
                Some((sample.ok()?, start, start_at))
            });
            let Some((sample, start, start_at)) = sample else {
                report.corrupt_removed += 1;
                pending_removes.push(key);
                self.commit_buckets_if(&mut pending, &mut pending_removes, false, report)?;
                continue;
            };
            report.raw_removed += 1;
            if series.expire_cutoff.is_some_and(|c| start < c) {
                // Its bucket would already be past retention: drop it, write no bucket.
                pending_removes.push(key);
                self.commit_buckets_if(&mut pending, &mut pending_removes, false, report)?;
                continue;
            }
            if current.as_ref().is_some_and(|(s, _)| *s != start)
                && let Some((s, acc)) = current.take()
            {
                // The previous bucket is complete.
                let bucket_key = keys::sample_key(&series.station, series.evse_id, s);
                pending.push((bucket_key, acc));
                pending_removes.append(&mut current_removes);
                self.commit_buckets_if(&mut pending, &mut pending_removes, false, report)?;
            }
            let (_, acc) = current.get_or_insert_with(|| {
                let acc =
                    Accumulator::new(&series.station, series.evse_id, start_at, series.width_ms);
                (start, acc)
            });
            acc.add(&sample);
            current_removes.push(key);
        }
        if let Some((s, acc)) = current.take() {
            pending.push((keys::sample_key(&series.station, series.evse_id, s), acc));
            pending_removes.append(&mut current_removes);
        }
        self.commit_buckets_if(&mut pending, &mut pending_removes, true, report)
    }

    /// Commits the completed buckets and their raw keys when there are enough of them (or,
    /// with `force`, when there are any).
    fn commit_buckets_if(
        &self,
        pending: &mut Vec<(Vec<u8>, Accumulator)>,
        removes: &mut Vec<IVec>,
        force: bool,
        report: &mut CompactionReport,
    ) -> Result<(), StoreError> {
        let any = !pending.is_empty() || !removes.is_empty();
        if removes.len() >= COMPACT_CHUNK || (force && any) {
            self.commit_buckets(pending, removes)?;
            report.buckets_written += pending.len() as u64;
            pending.clear();
            removes.clear();
        }
        Ok(())
    }

    /// Writes buckets (merged with what is stored) and removes raw keys, in one transaction.
    fn commit_buckets(
        &self,
        buckets: &[(Vec<u8>, Accumulator)],
        removes: &[IVec],
    ) -> Result<(), StoreError> {
        (&self.t.samples, &self.t.samples_downsampled)
            .transaction(|(raw, downsampled)| -> TxResult<()> {
                for key in removes {
                    raw.remove(key.clone())?;
                }
                for (key, acc) in buckets {
                    let existing = match downsampled.get(key.as_slice())? {
                        None => None,
                        Some(v) => match decode::<Bucket>(SAMPLES_DOWNSAMPLED, key, &v) {
                            Ok(b) => Some(b),
                            Err(e) => {
                                warn!(error = %e, "store: replacing an undecodable bucket");
                                None
                            }
                        },
                    };
                    let bucket = acc.clone().into_bucket(existing);
                    let value = encode(SAMPLES_DOWNSAMPLED, key, &bucket)
                        .map_err(ConflictableTransactionError::Abort)?;
                    downsampled.insert(key.as_slice(), value)?;
                }
                Ok(())
            })
            .map_err(from_tx)
    }

    /// Deletes downsampled buckets that start before `cutoff`.
    fn expire_downsampled(
        &self,
        cutoff: i64,
        report: &mut CompactionReport,
    ) -> Result<(), StoreError> {
        let tree = &self.t.samples_downsampled;
        let mut cursor: Vec<u8> = Vec::new();
        loop {
            let Some(first) = tree.range(cursor.as_slice()..).next() else {
                return Ok(());
            };
            let (key, _) = first?;
            let Some(series) = keys::parse_sample_key(&key) else {
                warn!(key = %show(&key), "store: removing a malformed bucket key");
                tree.remove(&key)?;
                report.corrupt_removed += 1;
                cursor = key.to_vec();
                cursor.push(0);
                continue;
            };
            let prefix = keys::series_prefix(series.station, series.evse_id);
            let hi = keys::sample_key(series.station, series.evse_id, cutoff);
            let mut batch = Batch::default();
            let mut in_batch: usize = 0;
            for item in tree.range(prefix.clone()..hi) {
                let (key, _) = item?;
                batch.remove(key);
                in_batch += 1;
                if in_batch == COMPACT_CHUNK {
                    tree.apply_batch(std::mem::take(&mut batch))?;
                    report.expired_removed += in_batch as u64;
                    in_batch = 0;
                }
            }
            if in_batch > 0 {
                tree.apply_batch(batch)?;
                report.expired_removed += in_batch as u64;
            }
            match keys::prefix_end(&prefix) {
                Some(end) => cursor = end,
                None => return Ok(()),
            }
        }
    }
}

impl Drop for SledStore {
    /// Marks the shutdown clean (so the next open can skip the index check) and flushes.
    fn drop(&mut self) {
        let result = self
            .t
            .meta
            .insert(KEY_CLEAN_SHUTDOWN, EMPTY)
            .and_then(|_| self.db.flush());
        if let Err(e) = result {
            warn!(error = %e, "store: could not mark a clean shutdown");
        }
    }
}

/// Which session write, and so whether it is flushed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SessionWrite {
    Start,
    Update,
    End,
}

impl SessionWrite {
    fn durable(self) -> bool {
        matches!(self, Self::Start | Self::End)
    }
}

/// One station/EVSE series being compacted.
struct SeriesFold {
    station: String,
    evse_id: u32,
    width_ms: i64,
    expire_cutoff: Option<i64>,
}

impl Store for SledStore {
    fn put_station(&self, station: &StationRecord) -> Result<(), StoreError> {
        check_station_id(&station.id)?;
        let key = station.id.as_bytes();
        let value = encode(STATIONS, key, station)?;
        self.t.stations.insert(key, value)?;
        Ok(())
    }

    fn station(&self, id: &str) -> Result<Option<StationRecord>, StoreError> {
        match self.t.stations.get(id.as_bytes())? {
            None => Ok(None),
            Some(v) => decode(STATIONS, id.as_bytes(), &v).map(Some),
        }
    }

    fn stations(&self) -> Result<Vec<StationRecord>, StoreError> {
        let mut out = Vec::new();
        for item in self.t.stations.iter() {
            let (key, value) = item?;
            match decode(STATIONS, &key, &value) {
                Ok(station) => out.push(station),
                Err(e) => error!(error = %e, "store: skipping an undecodable station"),
            }
        }
        Ok(out)
    }

    fn start_session(&self, session: &SessionRecord) -> Result<(), StoreError> {
        self.write_session(session, SessionWrite::Start)
    }

    fn update_session(&self, session: &SessionRecord) -> Result<(), StoreError> {
        self.write_session(session, SessionWrite::Update)
    }

    fn end_session(&self, session: &SessionRecord) -> Result<(), StoreError> {
        self.write_session(session, SessionWrite::End)
    }

    fn session(&self, key: &SessionKey) -> Result<Option<SessionRecord>, StoreError> {
        self.read_session(&key.to_bytes())
    }

    fn open_sessions(&self) -> Result<Vec<SessionRecord>, StoreError> {
        let mut out = Vec::new();
        for item in self.t.open_sessions.iter() {
            let (key, _) = item?;
            match self.read_session_lenient(&key)? {
                Some(s) if s.is_open() => out.push(s),
                Some(_) | None => {
                    debug!(key = %show(&key), "store: stale open_sessions entry");
                }
            }
        }
        Ok(out)
    }

    fn sessions(&self, filter: &SessionFilter) -> Result<Vec<SessionRecord>, StoreError> {
        let wanted = |s: &SessionRecord| {
            filter.station.as_ref().is_none_or(|st| *st == s.station)
                && filter.started_from.is_none_or(|t| s.started_at >= t)
                && filter.started_before.is_none_or(|t| s.started_at < t)
        };
        if filter.limit == 0 {
            return Ok(Vec::new());
        }
        if filter.open_only {
            let mut open: Vec<SessionRecord> =
                self.open_sessions()?.into_iter().filter(wanted).collect();
            open.sort_by_key(|s| std::cmp::Reverse(s.started_at));
            open.truncate(filter.limit);
            return Ok(open);
        }

        // Index bounds are a superset at millisecond resolution; `wanted` is exact.
        let lo = match filter.started_from {
            Some(t) => Bound::Included(keys::time_key(t.timestamp_millis()).to_vec()),
            None => Bound::Unbounded,
        };
        let hi = match filter.started_before {
            Some(t) => {
                Bound::Excluded(keys::time_key(t.timestamp_millis().saturating_add(1)).to_vec())
            }
            None => Bound::Unbounded,
        };
        let station_prefix = filter.station.as_deref().map(keys::station_sessions_prefix);
        let mut out = Vec::new();
        for item in self.t.sessions_by_start.range::<Vec<u8>, _>((lo, hi)).rev() {
            let (index_key, _) = item?;
            let Some((millis, key)) = keys::parse_by_start_key(&index_key) else {
                warn!(key = %show(&index_key), "store: malformed sessions_by_start key");
                continue;
            };
            if station_prefix.as_ref().is_some_and(|p| !key.starts_with(p)) {
                continue;
            }
            match self.read_session_lenient(key)? {
                // An entry whose time is not the session's start is stale: skip it.
                Some(s) if s.started_at.timestamp_millis() == millis && wanted(&s) => {
                    out.push(s);
                    if out.len() == filter.limit {
                        break;
                    }
                }
                _ => {}
            }
        }
        Ok(out)
    }

    fn next_transaction_id(&self) -> Result<i32, StoreError> {
        let next = loop {
            let current = self.t.meta.get(KEY_LAST_TRANSACTION_ID)?;
            let last = match &current {
                None => 0,
                Some(v) => decode_last_transaction_id(v)?,
            };
            let next = last
                .checked_add(1)
                .ok_or(StoreError::TransactionIdsExhausted { last })?;
            let swapped = self.t.meta.compare_and_swap(
                KEY_LAST_TRANSACTION_ID,
                current,
                Some(&next.to_be_bytes()[..]),
            )?;
            if swapped.is_ok() {
                break next;
            }
        };
        self.db.flush()?;
        Ok(next)
    }

    fn append_samples(&self, samples: &[MeterSample]) -> Result<(), StoreError> {
        for s in samples {
            check_station_id(&s.station)?;
            self.insert_sample(s)?;
        }
        Ok(())
    }

    fn samples(
        &self,
        station: &str,
        evse_id: u32,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<Vec<MeterSample>, StoreError> {
        if from >= to {
            return Ok(Vec::new());
        }
        let lo = keys::sample_key(station, evse_id, from.timestamp_millis());
        let hi = keys::sample_key(station, evse_id, to.timestamp_millis().saturating_add(1));
        let in_range = |s: &MeterSample| from <= s.at && s.at < to;
        let mut out = Vec::new();
        for item in self
            .t
            .samples_downsampled
            .range(lo.as_slice()..hi.as_slice())
        {
            let (key, value) = item?;
            match decode::<Bucket>(SAMPLES_DOWNSAMPLED, &key, &value) {
                Ok(b) if in_range(&b.sample) => out.push(b.sample),
                Ok(_) => {}
                Err(e) => error!(error = %e, "store: skipping an undecodable bucket"),
            }
        }
        for item in self.t.samples.range(lo.as_slice()..hi.as_slice()) {
            let (key, value) = item?;
            match decode::<MeterSample>(SAMPLES, &key, &value) {
                Ok(s) if in_range(&s) => out.push(s),
                Ok(_) => {}
                Err(e) => error!(error = %e, "store: skipping an undecodable sample"),
            }
        }
        // Both parts are in time order; a stable sort interleaves them.
        out.sort_by_key(|s| s.at);
        Ok(out)
    }

    fn compact(
        &self,
        now: DateTime<Utc>,
        policy: &RetentionPolicy,
    ) -> Result<CompactionReport, StoreError> {
        let width_ms = policy.downsample_to.num_milliseconds();
        let raw_for = policy.raw_for.num_milliseconds();
        let keep = policy.keep_downsampled_for.map(|d| d.num_milliseconds());
        if width_ms <= 0 || raw_for < 0 || keep.is_some_and(|k| k < 0) {
            return Err(StoreError::Invalid {
                what: format!(
                    "retention policy {policy:?}: downsample_to must be positive, durations \
                     not negative"
                ),
            });
        }
        let now_ms = now.timestamp_millis();
        // Rounded down to a bucket boundary: only whole buckets are ever folded.
        let raw_cutoff = bucket_start(now_ms.saturating_sub(raw_for), width_ms);
        let expire_cutoff = keep.map(|k| now_ms.saturating_sub(k));

        let mut report = CompactionReport::default();
        self.fold_raw(raw_cutoff, width_ms, expire_cutoff, &mut report)?;
        self.expire_profiles(now_ms.saturating_sub(raw_for))?;
        if let Some(cutoff) = expire_cutoff {
            self.expire_downsampled(cutoff, &mut report)?;
        }
        self.db.flush()?;
        if report != CompactionReport::default() {
            info!(
                raw_removed = report.raw_removed,
                buckets_written = report.buckets_written,
                expired_removed = report.expired_removed,
                corrupt_removed = report.corrupt_removed,
                "store: compacted meter samples"
            );
        }
        Ok(report)
    }

    fn flush(&self) -> Result<(), StoreError> {
        self.db.flush()?;
        Ok(())
    }

    fn plugin_kv_entries(&self, plugin: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let prefix = plugin_kv_prefix(plugin)?;
        let mut out = Vec::new();
        for item in self.t.plugin_kv.scan_prefix(&prefix) {
            let (key, value) = item?;
            match std::str::from_utf8(&key[prefix.len()..]) {
                Ok(k) => out.push((k.to_string(), value.to_vec())),
                Err(_) => {
                    error!(key = %show(&key), "store: skipping a plugin key that is not UTF-8")
                }
            }
        }
        Ok(out)
    }

    fn plugin_kv_put(
        &self,
        plugin: &str,
        key: &str,
        value: Option<&[u8]>,
    ) -> Result<(), StoreError> {
        let mut full = plugin_kv_prefix(plugin)?;
        full.extend_from_slice(key.as_bytes());
        match value {
            Some(v) => self.t.plugin_kv.insert(full, v)?,
            None => self.t.plugin_kv.remove(full)?,
        };
        Ok(())
    }

    fn append_profile(&self, record: &ProfileRecord) -> Result<(), StoreError> {
        // Key: station, NUL, time (ms, big-endian: in order), a per-process sequence number
        // (two records in one millisecond stay apart).
        let mut key = station_prefix(&record.station)?;
        key.extend_from_slice(&record.at.timestamp_millis().to_be_bytes());
        key.extend_from_slice(&self.db.generate_id()?.to_be_bytes());
        let value = serde_json::to_vec(record).map_err(|e| StoreError::Invalid {
            what: format!("profile record: {e}"),
        })?;
        self.t.profiles.insert(key, value)?;
        Ok(())
    }

    fn profiles(&self, station: &str, limit: usize) -> Result<Vec<ProfileRecord>, StoreError> {
        let prefix = station_prefix(station)?;
        let mut out = Vec::new();
        for item in self.t.profiles.scan_prefix(&prefix).rev().take(limit) {
            let (key, value) = item?;
            match serde_json::from_slice(&value) {
                Ok(r) => out.push(r),
                Err(e) => {
                    error!(key = %show(&key), error = %e, "store: skipping an undecodable profile record")
                }
            }
        }
        out.reverse();
        Ok(out)
    }

    fn put_control(&self, key: &str, value: &[u8]) -> Result<(), StoreError> {
        self.t.control.insert(key.as_bytes(), value)?;
        self.db.flush()?;
        Ok(())
    }

    fn control(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.t.control.get(key.as_bytes())?.map(|v| v.to_vec()))
    }
}

impl SledStore {
    /// Drops audit-trail records older than `cutoff_ms`.
    fn expire_profiles(&self, cutoff_ms: i64) -> Result<(), StoreError> {
        let mut removed = 0u64;
        for item in self.t.profiles.iter() {
            let (key, _) = item?;
            let Some(sep) = key.iter().position(|b| *b == keys::SEP) else {
                continue;
            };
            let Some(ts) = key.get(sep + 1..sep + 9) else {
                continue;
            };
            let mut raw = [0u8; 8];
            raw.copy_from_slice(ts);
            if i64::from_be_bytes(raw) < cutoff_ms {
                self.t.profiles.remove(&key)?;
                removed += 1;
            }
        }
        if removed > 0 {
            info!(removed, "store: expired profile audit records");
        }
        Ok(())
    }
}

fn station_prefix(station: &str) -> Result<Vec<u8>, StoreError> {
    if station.is_empty() || station.as_bytes().contains(&keys::SEP) {
        return Err(StoreError::Invalid {
            what: format!("station id {station:?} is empty or contains a NUL byte"),
        });
    }
    let mut prefix = station.as_bytes().to_vec();
    prefix.push(keys::SEP);
    Ok(prefix)
}

fn plugin_kv_prefix(plugin: &str) -> Result<Vec<u8>, StoreError> {
    if plugin.is_empty() || plugin.as_bytes().contains(&keys::SEP) {
        return Err(StoreError::Invalid {
            what: format!("plugin name {plugin:?} is empty or contains a NUL byte"),
        });
    }
    let mut prefix = plugin.as_bytes().to_vec();
    prefix.push(keys::SEP);
    Ok(prefix)
}

// ------------------------------------------------------------------------------- helpers

/// Opens sled, retrying while its file lock is held, for at most `wait`.
fn open_waiting_for_lock(
    config: &sled::Config,
    wait: std::time::Duration,
) -> Result<Db, StoreError> {
    let deadline = std::time::Instant::now() + wait;
    let mut pause = std::time::Duration::from_millis(5);
    loop {
        match config.open() {
            Ok(db) => return Ok(db),
            Err(e) if is_lock_contention(&e) && std::time::Instant::now() < deadline => {
                debug!(error = %e, "store: database lock still held; retrying");
                std::thread::sleep(pause);
                pause = (pause * 2).min(std::time::Duration::from_millis(100));
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// sled 0.34 reports a held lock as an `Io` error of kind `Other` with this message.
fn is_lock_contention(e: &sled::Error) -> bool {
    matches!(e, sled::Error::Io(io) if io.to_string().contains("could not acquire lock"))
}

fn encode<T: Serialize>(tree: &'static str, key: &[u8], value: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(value).map_err(|source| StoreError::Encode {
        tree,
        key: show(key),
        source,
    })
}

fn decode<T: DeserializeOwned>(
    tree: &'static str,
    key: &[u8],
    bytes: &[u8],
) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|source| StoreError::Decode {
        tree,
        key: show(key),
        source,
    })
}

fn from_tx(e: TransactionError<StoreError>) -> StoreError {
    match e {
        TransactionError::Abort(e) => e,
        TransactionError::Storage(e) => StoreError::Engine(e),
    }
}

fn check_station_id(id: &str) -> Result<(), StoreError> {
    if id.as_bytes().contains(&keys::SEP) {
        return Err(StoreError::Invalid {
            what: format!("station id {id:?} contains a NUL byte"),
        });
    }
    Ok(())
}

/// The two fields of a session record the indexes depend on.
#[derive(Deserialize)]
struct SessionProbe {
    started_at: DateTime<Utc>,
    ended_at: Option<DateTime<Utc>>,
}

fn probe(bytes: &[u8]) -> Result<SessionProbe, serde_json::Error> {
    serde_json::from_slice(bytes)
}

fn decode_last_transaction_id(v: &[u8]) -> Result<i32, StoreError> {
    let bytes: [u8; 4] = v.try_into().map_err(|_| StoreError::Corrupt {
        what: format!("meta/last_transaction_id is {} bytes, not 4", v.len()),
    })?;
    let last = i32::from_be_bytes(bytes);
    if last < 0 {
        return Err(StoreError::Corrupt {
            what: format!("meta/last_transaction_id is negative ({last})"),
        });
    }
    Ok(last)
}

fn read_schema_version(db: &Db) -> Result<Option<u32>, StoreError> {
    let meta = db.open_tree(META)?;
    let Some(v) = meta.get(KEY_SCHEMA_VERSION)? else {
        return Ok(None);
    };
    let bytes: [u8; 4] = v.as_ref().try_into().map_err(|_| StoreError::Corrupt {
        what: format!("meta/schema_version is {} bytes, not 4", v.len()),
    })?;
    Ok(Some(u32::from_be_bytes(bytes)))
}

fn write_schema_version(db: &Db, version: u32) -> Result<(), StoreError> {
    db.open_tree(META)?
        .insert(KEY_SCHEMA_VERSION, &version.to_be_bytes()[..])?;
    Ok(())
}

/// True when no tree (the default one included) holds anything.
fn db_is_empty(db: &Db) -> Result<bool, StoreError> {
    if !db.is_empty() {
        return Ok(false);
    }
    for name in db.tree_names() {
        if name.as_ref() == b"__sled__default" {
            continue;
        }
        if !db.open_tree(&name)?.is_empty() {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Runs the migrations from `from` up to [`SCHEMA_VERSION`], one version at a time, each
/// followed by the version bump and a flush.
fn migrate(db: &Db, from: u32) -> Result<(), StoreError> {
    let mut version = from;
    while version < SCHEMA_VERSION {
        let Some((_, step)) = MIGRATIONS.iter().find(|(v, _)| *v == version) else {
            return Err(StoreError::Corrupt {
                what: format!("no migration from schema version {version}"),
            });
        };
        info!(
            from = version,
            to = version + 1,
            "store: migrating the schema"
        );
        step(db)?;
        version += 1;
        write_schema_version(db, version)?;
        db.flush()?;
        info!(version, "store: schema migrated");
    }
    Ok(())
}

/// Version 0 had `stations`, `sessions` and `samples` but no session indexes, no schema version
/// and no transaction id counter. Version 1 adds the indexes (built from `sessions`) and the
/// counter (moved past every integer transaction id already stored).
fn migrate_0_to_1(db: &Db) -> Result<(), StoreError> {
    let t = Trees::open(db)?;
    t.open_sessions.clear()?;
    t.sessions_by_start.clear()?;
    let check = check_session_indexes(&t)?;
    info!(
        sessions = check.sessions,
        open = check.open,
        corrupt = check.corrupt,
        "store: built the session indexes"
    );

    let mut max_id: i32 = match t.meta.get(KEY_LAST_TRANSACTION_ID)? {
        Some(v) => decode_last_transaction_id(&v)?,
        None => 0,
    };
    for item in t.sessions.iter() {
        let (key, _) = item?;
        if let Some(k) = keys::parse_session_key(&key)
            && let Ok(id) = k.transaction_id.parse::<i32>()
        {
            max_id = max_id.max(id);
        }
    }
    t.meta
        .insert(KEY_LAST_TRANSACTION_ID, &max_id.to_be_bytes()[..])?;
    info!(
        last_transaction_id = max_id,
        "store: set the 1.6 transaction id counter"
    );
    Ok(())
}

#[derive(Debug, Default)]
struct IndexCheck {
    sessions: u64,
    open: u64,
    repairs: u64,
    corrupt: u64,
}

/// Makes `open_sessions` and `sessions_by_start` agree with `sessions`: adds missing entries to
/// both and removes stale `open_sessions` entries. Stale `sessions_by_start` entries (a time
/// that is no longer the session's start) are not searched for, because that would double the
/// cost of the check; `sessions()` skips them on read. Only called while the store is not
/// shared (at open). Undecodable session records are counted and left alone.
fn check_session_indexes(t: &Trees) -> Result<IndexCheck, StoreError> {
    let mut check = IndexCheck::default();

    for item in t.sessions.iter() {
        let (key, value) = item?;
        let probed = match probe(&value) {
            Ok(p) if keys::parse_session_key(&key).is_some() => p,
            Ok(_) => {
                error!(key = %show(&key), "store: malformed session key");
                check.corrupt += 1;
                continue;
            }
            Err(e) => {
                error!(key = %show(&key), error = %e, "store: undecodable session record");
                check.corrupt += 1;
                continue;
            }
        };
        check.sessions += 1;
        let open = probed.ended_at.is_none();
        // Reads first: repairs are rare, and a write per record would make this slow.
        // (Ended sessions still in `open_sessions` are removed by the pass below.)
        if open {
            check.open += 1;
            if !t.open_sessions.contains_key(&key)? {
                debug!(key = %show(&key), "store: index: added a missing open session");
                t.open_sessions.insert(&key, EMPTY)?;
                check.repairs += 1;
            }
        }
        let start_key = keys::by_start_key(probed.started_at.timestamp_millis(), &key);
        if !t.sessions_by_start.contains_key(&start_key)? {
            debug!(key = %show(&key), "store: index: added a missing start time");
            t.sessions_by_start.insert(start_key, EMPTY)?;
            check.repairs += 1;
        }
    }

    for item in t.open_sessions.iter() {
        let (key, _) = item?;
        let stale = match t.sessions.get(&key)? {
            None => true,
            Some(v) => probe(&v).is_ok_and(|p| p.ended_at.is_some()),
        };
        if stale {
            debug!(key = %show(&key), "store: index: removed a stale open session");
            t.open_sessions.remove(&key)?;
            check.repairs += 1;
        }
    }

    Ok(check)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_cover_every_version_below_the_current_one() {
        for (i, (from, _)) in MIGRATIONS.iter().enumerate() {
            assert_eq!(*from as usize, i);
        }
        assert_eq!(MIGRATIONS.len() as u32, SCHEMA_VERSION);
    }

    #[test]
    fn last_transaction_id_decoding_rejects_garbage() {
        assert_eq!(
            decode_last_transaction_id(&7i32.to_be_bytes()).ok(),
            Some(7)
        );
        assert!(matches!(
            decode_last_transaction_id(b"abc"),
            Err(StoreError::Corrupt { .. })
        ));
        assert!(matches!(
            decode_last_transaction_id(&(-1i32).to_be_bytes()),
            Err(StoreError::Corrupt { .. })
        ));
    }
}

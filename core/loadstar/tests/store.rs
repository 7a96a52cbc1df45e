//! The sled store, on disk: records, indexes, durability across reopen and kill -9,
//! retention/downsampling, schema versions and corrupt data.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};

use chrono::{DateTime, Duration, TimeZone, Utc};
use loadstar::store::{
    CompactionReport, MeterSample, RetentionPolicy, SCHEMA_VERSION, SessionFilter, SessionKey,
    SessionRecord, SledStore, StationRecord, Store, StoreError, StoreOptions,
};
use tempfile::TempDir;

// ------------------------------------------------------------------------------ helpers

/// 2025-03-01T00:00:00Z: aligned to every bucket width used here.
fn base() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2025, 3, 1, 0, 0, 0)
        .single()
        .expect("valid time")
}

fn at(secs: i64) -> DateTime<Utc> {
    base() + Duration::seconds(secs)
}

fn tmp() -> TempDir {
    tempfile::tempdir().expect("temp dir")
}

fn open(dir: &TempDir) -> SledStore {
    SledStore::open(dir.path()).expect("open store")
}

fn station(id: &str) -> StationRecord {
    StationRecord {
        id: id.into(),
        ocpp_version: "ocpp1.6".into(),
        vendor: Some("Acme".into()),
        model: Some("Wallbox 22".into()),
        serial: None,
        firmware: Some("1.2.3".into()),
        first_seen: base(),
        last_boot: Some(at(5)),
        last_seen: Some(at(60)),
        capabilities: serde_json::json!({ "ChargeProfileMaxStackLevel": 8 }),
        refused_settings: vec!["HeartbeatInterval".into()],
        adopted: true,
    }
}

fn session(station: &str, tx: &str, started: DateTime<Utc>) -> SessionRecord {
    SessionRecord {
        station: station.into(),
        evse_id: 1,
        connector_id: 1,
        transaction_id: tx.into(),
        id_tag: Some("TAG1".into()),
        started_at: started,
        ended_at: None,
        meter_start_wh: Some(1000.0),
        meter_stop_wh: None,
        energy_wh: 0.0,
        stop_reason: None,
        last_seq_no: None,
        updated_at: started,
    }
}

fn ended(mut s: SessionRecord, at: DateTime<Utc>, stop_wh: f64) -> SessionRecord {
    s.ended_at = Some(at);
    s.meter_stop_wh = Some(stop_wh);
    s.energy_wh = stop_wh - s.meter_start_wh.unwrap_or(0.0);
    s.stop_reason = Some("Local".into());
    s.updated_at = at;
    s
}

fn sample(station: &str, evse_id: u32, when: DateTime<Utc>) -> MeterSample {
    MeterSample {
        station: station.into(),
        evse_id,
        at: when,
        energy_wh: None,
        power_w: None,
        current_a: [None; 3],
        voltage_v: [None; 3],
        offered_a: None,
        transaction_id: None,
    }
}

fn ids(sessions: &[SessionRecord]) -> Vec<&str> {
    sessions.iter().map(|s| s.transaction_id.as_str()).collect()
}

fn all_samples(store: &SledStore, station: &str, evse: u32) -> Vec<MeterSample> {
    store
        .samples(station, evse, at(-400 * 86_400), at(400 * 86_400))
        .expect("samples")
}

/// Opens the raw sled database (the store must be closed) for tests that write what the
/// store itself never would.
fn raw(dir: &TempDir) -> sled::Db {
    // sled 0.34 releases its lock from a background thread just after a drop (sled #1234).
    let mut tries = 0;
    loop {
        match sled::open(dir.path()) {
            Ok(db) => return db,
            Err(e) if tries < 100 && e.to_string().contains("could not acquire lock") => {
                tries += 1;
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err(e) => panic!("open raw sled: {e}"),
        }
    }
}

// ---------------------------------------------------------------------------- stations

#[test]
fn stations_put_get_list() {
    let dir = tmp();
    let store = open(&dir);
    assert_eq!(store.station("CP-1").expect("get"), None);
    for id in ["CP-2", "CP-1", "CP-10"] {
        store.put_station(&station(id)).expect("put");
    }
    assert_eq!(store.station("CP-1").expect("get"), Some(station("CP-1")));

    let mut changed = station("CP-2");
    changed.ocpp_version = "ocpp2.0.1".into();
    changed.adopted = false;
    store.put_station(&changed).expect("replace");
    assert_eq!(store.station("CP-2").expect("get"), Some(changed));

    let listed: Vec<String> = store
        .stations()
        .expect("list")
        .into_iter()
        .map(|s| s.id)
        .collect();
    assert_eq!(listed, ["CP-1", "CP-10", "CP-2"]);
}

// ---------------------------------------------------------------------------- sessions

#[test]
fn sessions_start_update_end_and_the_open_index() {
    let dir = tmp();
    let store = open(&dir);
    let a = session("CP-1", "1", at(0));
    let b = session("CP-2", "b-uuid", at(10));
    store.start_session(&a).expect("start a");
    store.start_session(&b).expect("start b");
    assert_eq!(ids(&store.open_sessions().expect("open")), ["1", "b-uuid"]);

    let mut a2 = a.clone();
    a2.energy_wh = 1234.5;
    a2.last_seq_no = Some(3);
    a2.updated_at = at(100);
    store.update_session(&a2).expect("update");
    assert_eq!(
        store.session(&SessionKey::new("CP-1", "1")).expect("get"),
        Some(a2.clone())
    );

    let a3 = ended(a2.clone(), at(200), 5000.0);
    store.end_session(&a3).expect("end");
    assert_eq!(ids(&store.open_sessions().expect("open")), ["b-uuid"]);
    assert_eq!(store.session(&a.key()).expect("get"), Some(a3.clone()));

    // A late update (racing with the end) never reopens an ended session.
    store.update_session(&a2).expect("late update");
    assert_eq!(store.session(&a.key()).expect("get"), Some(a3));
    assert_eq!(ids(&store.open_sessions().expect("open")), ["b-uuid"]);

    assert_eq!(
        store.session(&SessionKey::new("CP-1", "2")).expect("get"),
        None
    );
    assert_eq!(
        store.session(&SessionKey::new("CP-2", "1")).expect("get"),
        None
    );
}

#[test]
fn concurrent_updates_never_reopen_an_ended_session() {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    let dir = tmp();
    let store = std::sync::Arc::new(open(&dir));
    let s = session("CP-1", "1", at(0));
    store.start_session(&s).expect("start");
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let updates = std::sync::Arc::new(AtomicU64::new(0));
    let updaters: Vec<_> = (0..3)
        .map(|i| {
            let (store, s, stop, updates) =
                (store.clone(), s.clone(), stop.clone(), updates.clone());
            std::thread::spawn(move || {
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    let mut u = s.clone();
                    u.energy_wh = f64::from(i * 100_000 + n);
                    store.update_session(&u).expect("update");
                    updates.fetch_add(1, Ordering::Relaxed);
                    n += 1;
                }
            })
        })
        .collect();
    let wait_for = |count: u64| {
        while updates.load(Ordering::Relaxed) < count {
            std::thread::yield_now();
        }
    };
    wait_for(50);
    let done = ended(s.clone(), at(100), 9000.0);
    store.end_session(&done).expect("end");
    // Updates keep racing in after the end.
    let after_end = updates.load(Ordering::Relaxed);
    wait_for(after_end + 50);
    stop.store(true, Ordering::Relaxed);
    for u in updaters {
        u.join().expect("thread");
    }
    assert_eq!(store.session(&s.key()).expect("get"), Some(done));
    assert!(store.open_sessions().expect("open").is_empty());
}

#[test]
fn sessions_newest_first_filtered_and_limited() {
    let dir = tmp();
    let store = open(&dir);
    store
        .start_session(&session("CP-1", "1", at(100)))
        .expect("start");
    store
        .start_session(&session("CP-2", "2", at(200)))
        .expect("start");
    store
        .start_session(&session("CP-1", "3", at(300)))
        .expect("start");
    store
        .start_session(&session("CP-10", "4", at(300)))
        .expect("start");
    store
        .end_session(&ended(session("CP-1", "5", at(400)), at(450), 2000.0))
        .expect("end");

    let all = store.sessions(&SessionFilter::default()).expect("list");
    assert_eq!(ids(&all), ["5", "4", "3", "2", "1"]);

    let limited = SessionFilter {
        limit: 2,
        ..SessionFilter::default()
    };
    assert_eq!(ids(&store.sessions(&limited).expect("list")), ["5", "4"]);

    // "CP-1" does not match "CP-10".
    let cp1 = SessionFilter {
        station: Some("CP-1".into()),
        ..SessionFilter::default()
    };
    assert_eq!(ids(&store.sessions(&cp1).expect("list")), ["5", "3", "1"]);

    let window = SessionFilter {
        started_from: Some(at(200)),
        started_before: Some(at(300)),
        ..SessionFilter::default()
    };
    assert_eq!(ids(&store.sessions(&window).expect("list")), ["2"]);

    let open_cp1 = SessionFilter {
        station: Some("CP-1".into()),
        open_only: true,
        ..SessionFilter::default()
    };
    assert_eq!(ids(&store.sessions(&open_cp1).expect("list")), ["3", "1"]);

    // Changing started_at moves the session in the time index (no duplicate, no ghost).
    let mut moved = session("CP-1", "1", at(500));
    moved.energy_wh = 1.0;
    store.update_session(&moved).expect("update");
    let all = store.sessions(&SessionFilter::default()).expect("list");
    assert_eq!(ids(&all), ["1", "5", "4", "3", "2"]);

    let none = SessionFilter {
        limit: 0,
        ..SessionFilter::default()
    };
    assert!(store.sessions(&none).expect("list").is_empty());
}

#[test]
fn next_transaction_id_is_monotonic_and_durable_across_reopen() {
    let dir = tmp();
    {
        let store = open(&dir);
        assert_eq!(store.next_transaction_id().expect("id"), 1);
        assert_eq!(store.next_transaction_id().expect("id"), 2);
        assert_eq!(store.next_transaction_id().expect("id"), 3);
    }
    {
        let store = open(&dir);
        assert_eq!(store.next_transaction_id().expect("id"), 4);
    }
    let store = open(&dir);
    assert_eq!(store.next_transaction_id().expect("id"), 5);
}

#[test]
fn next_transaction_id_is_unique_under_concurrency() {
    let dir = tmp();
    let store = std::sync::Arc::new(open(&dir));
    let handles: Vec<_> = (0..4)
        .map(|_| {
            let store = store.clone();
            std::thread::spawn(move || {
                (0..25)
                    .map(|_| store.next_transaction_id().expect("id"))
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut all: Vec<i32> = handles
        .into_iter()
        .flat_map(|h| h.join().expect("thread"))
        .collect();
    all.sort_unstable();
    assert_eq!(all, (1..=100).collect::<Vec<_>>());
}

#[test]
fn stations_sessions_and_samples_survive_reopen() {
    let dir = tmp();
    let open_one = session("CP-1", "7", at(0));
    let done = ended(session("CP-1", "8", at(10)), at(20), 1500.0);
    let mut s = sample("CP-1", 1, at(15));
    s.energy_wh = Some(1234.0);
    s.current_a = [Some(16.0), Some(15.5), None];
    s.transaction_id = Some("7".into());
    {
        let store = open(&dir);
        assert!(store.open_report().created);
        store.put_station(&station("CP-1")).expect("put");
        store.start_session(&open_one).expect("start");
        store
            .start_session(&session("CP-1", "8", at(10)))
            .expect("start");
        store.end_session(&done).expect("end");
        store
            .append_samples(std::slice::from_ref(&s))
            .expect("append");
    }
    let store = open(&dir);
    let report = store.open_report();
    assert!(!report.created);
    assert!(report.clean_shutdown);
    assert_eq!(report.migrated_from, None);
    assert_eq!(store.station("CP-1").expect("get"), Some(station("CP-1")));
    assert_eq!(
        store.session(&open_one.key()).expect("get"),
        Some(open_one.clone())
    );
    assert_eq!(store.session(&done.key()).expect("get"), Some(done));
    assert_eq!(store.open_sessions().expect("open"), [open_one]);
    assert_eq!(all_samples(&store, "CP-1", 1), [s]);
}

/// The test binary re-runs itself as the child of `survives_kill_9_at_arbitrary_points` when
/// this variable names the store directory.
const KILL9_DIR: &str = "LOADSTAR_STORE_KILL9_DIR";

/// The child: starts, updates and ends sessions as fast as it can, printing each durable
/// acknowledgement, until the parent kills it with SIGKILL.
fn kill9_child(dir: &Path) -> ! {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let store = SledStore::open(dir).expect("child: open");
    let mut n: i64 = 0;
    loop {
        if std::time::Instant::now() > deadline {
            std::process::exit(2);
        }
        n += 1;
        let id = store.next_transaction_id().expect("child: id");
        println!("ID {id}");
        let tx = id.to_string();
        let mut s = session("CP-1", &tx, at(n));
        store.start_session(&s).expect("child: start");
        println!("START {tx}");
        let mut m = sample("CP-1", 1, at(n));
        m.energy_wh = Some(n as f64);
        store.append_samples(&[m]).expect("child: samples");
        s.energy_wh = 10.0;
        store.update_session(&s).expect("child: update");
        if id % 2 == 0 {
            store
                .end_session(&ended(s, at(n + 1), 2000.0))
                .expect("child: end");
            println!("END {tx}");
        }
    }
}

#[test]
fn survives_kill_9_at_arbitrary_points() {
    if let Some(dir) = std::env::var_os(KILL9_DIR) {
        kill9_child(Path::new(&dir));
    }
    let dir = tmp();
    let mut max_id = 0;
    let mut started: Vec<String> = Vec::new();
    let mut ended_ids: Vec<String> = Vec::new();
    for round in 0..3 {
        let exe = std::env::current_exe().expect("test binary");
        let mut child = Command::new(exe)
            .args([
                "--exact",
                "survives_kill_9_at_arbitrary_points",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(KILL9_DIR, dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn child");
        let stdout = child.stdout.take().expect("child stdout");
        let mut acks = 0;
        for line in BufReader::new(stdout).lines() {
            let line = line.expect("read child");
            if let Some(id) = line.strip_prefix("ID ") {
                let id: i32 = id.parse().expect("id");
                assert!(id > max_id, "transaction id {id} reused (had {max_id})");
                max_id = id;
            } else if let Some(tx) = line.strip_prefix("START ") {
                started.push(tx.to_owned());
                acks += 1;
            } else if let Some(tx) = line.strip_prefix("END ") {
                ended_ids.push(tx.to_owned());
            }
            if acks == 15 + 10 * round {
                break;
            }
        }
        assert_eq!(acks, 15 + 10 * round, "the child stopped early");
        child.kill().expect("SIGKILL");
        let status = child.wait().expect("wait");
        assert!(!status.success());

        let store = open(&dir);
        assert!(!store.open_report().clean_shutdown);
        for tx in &started {
            let s = store
                .session(&SessionKey::new("CP-1", tx.as_str()))
                .expect("read")
                .unwrap_or_else(|| panic!("acknowledged session {tx} lost (round {round})"));
            if ended_ids.contains(tx) {
                assert!(s.ended_at.is_some(), "acknowledged end of {tx} lost");
            }
        }
        // The open index agrees with the records.
        let all = store
            .sessions(&SessionFilter {
                limit: usize::MAX,
                ..SessionFilter::default()
            })
            .expect("all sessions");
        let mut open_by_record: Vec<SessionRecord> =
            all.into_iter().filter(SessionRecord::is_open).collect();
        open_by_record.sort_by_key(|s| s.key().to_bytes());
        assert_eq!(store.open_sessions().expect("open"), open_by_record);
        let next = store.next_transaction_id().expect("id");
        assert!(next > max_id, "id {next} reused after kill -9");
        max_id = next;
    }
}

// ----------------------------------------------------------------------- meter samples

#[test]
fn samples_range_query_by_station_evse_and_time() {
    let dir = tmp();
    let store = open(&dir);
    let mut batch = Vec::new();
    for i in 0..100 {
        for (st, evse) in [("CP-1", 1), ("CP-1", 2), ("CP-10", 1)] {
            let mut s = sample(st, evse, at(i * 10));
            s.energy_wh = Some(i as f64);
            batch.push(s);
        }
    }
    store.append_samples(&batch).expect("append");

    let got = store.samples("CP-1", 1, at(100), at(200)).expect("samples");
    let times: Vec<DateTime<Utc>> = got.iter().map(|s| s.at).collect();
    assert_eq!(times, (10..20).map(|i| at(i * 10)).collect::<Vec<_>>());
    assert!(got.iter().all(|s| s.station == "CP-1" && s.evse_id == 1));

    // Sub-second bounds are exact: from inclusive, to exclusive.
    let edge = store
        .samples(
            "CP-1",
            2,
            at(100) + Duration::milliseconds(1),
            at(120) + Duration::milliseconds(1),
        )
        .expect("samples");
    assert_eq!(
        edge.iter().map(|s| s.at).collect::<Vec<_>>(),
        [at(110), at(120)]
    );
    assert!(
        store
            .samples("CP-1", 1, at(200), at(100))
            .expect("samples")
            .is_empty()
    );
    assert!(
        store
            .samples("CP-1", 3, at(0), at(1000))
            .expect("samples")
            .is_empty()
    );
    assert_eq!(all_samples(&store, "CP-10", 1).len(), 100);
}

#[test]
fn samples_before_1970_sort_correctly() {
    let dir = tmp();
    let store = open(&dir);
    let old = Utc
        .with_ymd_and_hms(1969, 12, 31, 23, 59, 0)
        .single()
        .expect("t");
    let samples = [
        sample("CP", 0, old + Duration::seconds(90)),
        sample("CP", 0, old),
        sample("CP", 0, old + Duration::seconds(30)),
    ];
    store.append_samples(&samples).expect("append");
    let got = store
        .samples("CP", 0, old, old + Duration::seconds(120))
        .expect("samples");
    let secs: Vec<i64> = got.iter().map(|s| (s.at - old).num_seconds()).collect();
    assert_eq!(secs, [0, 30, 90]);
}

// ------------------------------------------------------------------------- compaction

#[test]
fn compaction_averages_a_small_case_exactly() {
    let dir = tmp();
    let store = open(&dir);
    let mut a = sample("CP-1", 1, at(60));
    a.power_w = Some(1000.0);
    a.current_a = [Some(10.0), Some(20.0), None];
    a.voltage_v = [Some(230.0), Some(230.0), Some(230.0)];
    a.energy_wh = Some(100.0);
    a.transaction_id = Some("A".into());
    let mut b = sample("CP-1", 1, at(300));
    b.power_w = Some(2000.0);
    b.current_a = [Some(12.0), None, None];
    b.voltage_v = [Some(232.0), None, None];
    b.transaction_id = Some("A".into());
    let mut c = sample("CP-1", 1, at(899));
    c.current_a = [Some(14.0), Some(22.0), Some(6.0)];
    c.energy_wh = Some(150.0);
    c.offered_a = Some(16.0);
    c.transaction_id = Some("B".into());
    // The next bucket: one sample.
    let mut d = sample("CP-1", 1, at(900));
    d.power_w = Some(7000.0);
    d.energy_wh = Some(160.0);
    store.append_samples(&[a, b, c, d.clone()]).expect("append");

    let policy = RetentionPolicy {
        raw_for: Duration::days(1),
        ..RetentionPolicy::default()
    };
    let now = at(86_400 + 1800);
    let report = store.compact(now, &policy).expect("compact");
    assert_eq!(
        report,
        CompactionReport {
            raw_removed: 4,
            buckets_written: 2,
            expired_removed: 0,
            corrupt_removed: 0,
        }
    );
    let first = MeterSample {
        station: "CP-1".into(),
        evse_id: 1,
        at: at(0),
        energy_wh: Some(150.0),
        power_w: Some(1500.0),
        current_a: [Some(12.0), Some(21.0), Some(6.0)],
        voltage_v: [Some(231.0), Some(230.0), Some(230.0)],
        offered_a: Some(16.0),
        transaction_id: Some("B".into()),
    };
    let mut second = d;
    second.at = at(900);
    assert_eq!(all_samples(&store, "CP-1", 1), [first.clone(), second]);

    // A sample that arrives late for an already folded bucket merges as an exact weighted
    // average; the energy stays the latest reading (the late one is older).
    let mut late = sample("CP-1", 1, at(30));
    late.power_w = Some(3000.0);
    late.current_a = [Some(8.0), None, None];
    late.energy_wh = Some(90.0);
    store.append_samples(&[late]).expect("append late");
    let report = store.compact(now, &policy).expect("compact");
    assert_eq!(report.raw_removed, 1);
    assert_eq!(report.buckets_written, 1);
    let merged = &all_samples(&store, "CP-1", 1)[0];
    assert_eq!(merged.power_w, Some(2000.0));
    assert_eq!(merged.current_a, [Some(11.0), Some(21.0), Some(6.0)]);
    assert_eq!(merged.energy_wh, Some(150.0));
    assert_eq!(merged.transaction_id.as_deref(), Some("B"));
}

/// 10 s samples for 2 EVSEs over 7 days and 2 hours.
fn week_of_samples(store: &SledStore) -> usize {
    let n = (7 * 86_400 + 7_200) / 10;
    let mut batch = Vec::with_capacity(2_000);
    for k in 0..n {
        for evse in [1, 2] {
            let mut s = sample("CP-1", evse, at(k * 10));
            s.power_w = Some(k as f64);
            s.energy_wh = Some((k * 10) as f64);
            s.current_a = [Some(16.0), (k % 2 == 0).then_some(k as f64), None];
            s.voltage_v = [Some(230.0), Some(231.0), Some(229.0)];
            s.transaction_id = Some(format!("tx{evse}"));
            batch.push(s);
        }
        if batch.len() >= 2_000 {
            store.append_samples(&batch).expect("append");
            batch.clear();
        }
    }
    store.append_samples(&batch).expect("append");
    n as usize
}

#[test]
fn compaction_keeps_a_week_raw_and_downsamples_older_samples_idempotently() {
    let dir = tmp();
    let store = open(&dir);
    let per_evse = week_of_samples(&store);
    let now = at(7 * 86_400 + 7_200);
    let policy = RetentionPolicy::default();

    let report = store.compact(now, &policy).expect("compact");
    // The first 2 hours (720 samples per EVSE) fall out of the raw window: 8 buckets each.
    assert_eq!(
        report,
        CompactionReport {
            raw_removed: 2 * 720,
            buckets_written: 2 * 8,
            expired_removed: 0,
            corrupt_removed: 0,
        }
    );
    let after_first: Vec<Vec<MeterSample>> =
        [1, 2].map(|evse| all_samples(&store, "CP-1", evse)).into();
    for (i, samples) in after_first.iter().enumerate() {
        let evse = i as u32 + 1;
        assert_eq!(samples.len(), 8 + per_evse - 720);
        for (j, bucket) in samples[..8].iter().enumerate() {
            let j = j as i64;
            // k runs over 90j .. 90j + 89 in bucket j.
            assert_eq!(bucket.at, at(j * 900));
            assert_eq!(bucket.power_w, Some(90.0 * j as f64 + 44.5));
            assert_eq!(bucket.energy_wh, Some(((90 * j + 89) * 10) as f64));
            // L2 only on even k: mean of 90j, 90j + 2, …, 90j + 88.
            assert_eq!(
                bucket.current_a,
                [Some(16.0), Some(90.0 * j as f64 + 44.0), None]
            );
            assert_eq!(bucket.voltage_v, [Some(230.0), Some(231.0), Some(229.0)]);
            assert_eq!(bucket.transaction_id, Some(format!("tx{evse}")));
        }
        // Everything from now - 7 days on is still raw, 10 s apart.
        assert_eq!(samples[8].at, now - Duration::days(7));
        assert!(
            samples[8..]
                .windows(2)
                .all(|w| w[1].at - w[0].at == Duration::seconds(10))
        );
    }

    // Idempotent: compacting again (now, or a moment later in the same bucket) changes nothing.
    for later in [0, 60, 899] {
        let report = store
            .compact(now + Duration::seconds(later), &policy)
            .expect("compact again");
        assert_eq!(report, CompactionReport::default());
        let again: Vec<Vec<MeterSample>> =
            [1, 2].map(|evse| all_samples(&store, "CP-1", evse)).into();
        assert_eq!(again, after_first);
    }
    // The next bucket boundary folds exactly one more bucket per EVSE.
    let report = store
        .compact(now + Duration::seconds(900), &policy)
        .expect("compact");
    assert_eq!(report.raw_removed, 2 * 90);
    assert_eq!(report.buckets_written, 2);

    // It survives reopening.
    drop(store);
    let store = open(&dir);
    assert_eq!(all_samples(&store, "CP-1", 1).len(), 9 + per_evse - 810);
}

#[test]
fn compaction_expires_old_buckets() {
    let dir = tmp();
    let store = open(&dir);
    let now = at(100 * 86_400);
    let policy = RetentionPolicy {
        keep_downsampled_for: Some(Duration::days(30)),
        ..RetentionPolicy::default()
    };
    let mut samples = Vec::new();
    for days_ago in [40, 20] {
        let mut s = sample("CP-1", 0, now - Duration::days(days_ago));
        s.power_w = Some(days_ago as f64);
        samples.push(s);
    }
    samples.push(sample("CP-1", 0, now - Duration::hours(1)));
    store.append_samples(&samples).expect("append");

    let report = store.compact(now, &policy).expect("compact");
    // The 40-day-old sample is dropped without a bucket; the 20-day-old one is folded.
    assert_eq!(
        report,
        CompactionReport {
            raw_removed: 2,
            buckets_written: 1,
            expired_removed: 0,
            corrupt_removed: 0,
        }
    );
    let kept = all_samples(&store, "CP-1", 0);
    assert_eq!(kept.len(), 2);
    assert_eq!(kept[0].power_w, Some(20.0));

    // Fifteen days later the bucket is 35 days old: expired. The recent sample is folded.
    let later = now + Duration::days(15);
    let report = store.compact(later, &policy).expect("compact");
    assert_eq!(
        report,
        CompactionReport {
            raw_removed: 1,
            buckets_written: 1,
            expired_removed: 1,
            corrupt_removed: 0,
        }
    );
    let kept = all_samples(&store, "CP-1", 0);
    assert_eq!(kept.len(), 1);
    assert_eq!(kept[0].at, now - Duration::hours(1));

    // keep_downsampled_for: None keeps buckets forever.
    store
        .append_samples(&[sample("CP-2", 0, now - Duration::days(300))])
        .expect("append");
    let forever = RetentionPolicy {
        keep_downsampled_for: None,
        ..RetentionPolicy::default()
    };
    let report = store.compact(later, &forever).expect("compact");
    assert_eq!(report.buckets_written, 1);
    assert_eq!(all_samples(&store, "CP-2", 0).len(), 1);
}

#[test]
fn compaction_rejects_a_nonsense_policy() {
    let dir = tmp();
    let store = open(&dir);
    let bad = RetentionPolicy {
        downsample_to: Duration::zero(),
        ..RetentionPolicy::default()
    };
    assert!(matches!(
        store.compact(base(), &bad),
        Err(StoreError::Invalid { .. })
    ));
}

// ----------------------------------------------------------------------------- schema

#[test]
fn a_fresh_database_gets_the_current_schema_version() {
    let dir = tmp();
    let store = open(&dir);
    assert_eq!(SCHEMA_VERSION, 1);
    assert_eq!(store.schema_version().expect("version"), 1);
    assert!(store.open_report().created);
    drop(store);
    let db = raw(&dir);
    let meta = db.open_tree("meta").expect("meta");
    assert_eq!(
        meta.get("schema_version").expect("get").as_deref(),
        Some(&1u32.to_be_bytes()[..])
    );
}

#[test]
fn a_version_0_database_is_migrated() {
    let dir = tmp();
    let open_16 = session("CP-1", "7", at(0));
    let open_201 = session("CP-2", "0b7c-uuid", at(50));
    let done = ended(session("CP-1", "12", at(100)), at(200), 3000.0);
    {
        // Version 0: data, but no schema_version, no session indexes, no id counter.
        let db = raw(&dir);
        let stations = db.open_tree("stations").expect("tree");
        stations
            .insert("CP-1", serde_json::to_vec(&station("CP-1")).expect("json"))
            .expect("insert");
        let sessions = db.open_tree("sessions").expect("tree");
        for s in [&open_16, &open_201, &done] {
            sessions
                .insert(s.key().to_bytes(), serde_json::to_vec(s).expect("json"))
                .expect("insert");
        }
        db.flush().expect("flush");
    }
    {
        let store = open(&dir);
        assert_eq!(store.open_report().migrated_from, Some(0));
        assert_eq!(store.schema_version().expect("version"), 1);
        assert_eq!(store.station("CP-1").expect("get"), Some(station("CP-1")));
        assert_eq!(
            store.open_sessions().expect("open"),
            [open_16.clone(), open_201.clone()]
        );
        let all = store.sessions(&SessionFilter::default()).expect("list");
        assert_eq!(ids(&all), ["12", "0b7c-uuid", "7"]);
        // Past every integer id already stored.
        assert_eq!(store.next_transaction_id().expect("id"), 13);
    }
    let store = open(&dir);
    assert_eq!(store.open_report().migrated_from, None);
    assert_eq!(store.next_transaction_id().expect("id"), 14);
}

#[test]
fn a_newer_schema_version_is_refused() {
    let dir = tmp();
    drop(open(&dir));
    {
        let db = raw(&dir);
        db.open_tree("meta")
            .expect("meta")
            .insert("schema_version", &99u32.to_be_bytes()[..])
            .expect("insert");
        db.flush().expect("flush");
    }
    let err = SledStore::open(dir.path()).expect_err("must refuse");
    assert!(
        matches!(
            err,
            StoreError::UnsupportedSchema {
                found: 99,
                supported: 1
            }
        ),
        "{err:?}"
    );
    let message = err.to_string();
    assert!(
        message.contains("99") && message.contains("refusing"),
        "{message}"
    );
    // Refusing left it alone.
    let db = raw(&dir);
    assert_eq!(
        db.open_tree("meta")
            .expect("meta")
            .get("schema_version")
            .expect("get")
            .as_deref(),
        Some(&99u32.to_be_bytes()[..])
    );
}

// ---------------------------------------------------------------------- corrupt data

#[test]
fn corrupt_records_give_errors_not_panics() {
    let dir = tmp();
    let good = session("CP-1", "1", at(0));
    let bad = session("CP-1", "2", at(10));
    {
        let store = open(&dir);
        store.start_session(&good).expect("start");
        store.start_session(&bad).expect("start");
        store.put_station(&station("CP-1")).expect("put");
        store.put_station(&station("CP-2")).expect("put");
        store
            .append_samples(&[sample("CP-1", 1, at(0)), sample("CP-1", 1, at(10))])
            .expect("append");
    }
    {
        let db = raw(&dir);
        db.open_tree("sessions")
            .expect("tree")
            .insert(bad.key().to_bytes(), &b"{\"station\": \"CP-1\", tru"[..])
            .expect("insert");
        db.open_tree("stations")
            .expect("tree")
            .insert("CP-2", &b"\xff\xfe"[..])
            .expect("insert");
        let samples = db.open_tree("samples").expect("tree");
        let (key, _) = samples.first().expect("first").expect("a sample");
        samples.insert(key, &b"[]"[..]).expect("insert");
        // Pretend the last shutdown was a crash, so the open checks everything.
        db.open_tree("meta")
            .expect("meta")
            .remove("clean_shutdown")
            .expect("remove");
        db.flush().expect("flush");
    }
    let store = open(&dir);
    assert_eq!(store.open_report().corrupt_sessions, 1);

    let err = store.session(&bad.key()).expect_err("corrupt session");
    assert!(
        matches!(
            err,
            StoreError::Decode {
                tree: "sessions",
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("sessions"), "{err}");
    assert_eq!(
        store.session(&good.key()).expect("good"),
        Some(good.clone())
    );
    // Listings skip the bad record and keep the good ones.
    assert_eq!(
        store.open_sessions().expect("open"),
        std::slice::from_ref(&good)
    );
    assert_eq!(
        ids(&store.sessions(&SessionFilter::default()).expect("list")),
        ["1"]
    );

    assert!(matches!(
        store.station("CP-2"),
        Err(StoreError::Decode {
            tree: "stations",
            ..
        })
    ));
    assert_eq!(store.stations().expect("list").len(), 1);

    assert_eq!(all_samples(&store, "CP-1", 1).len(), 1);
    let report = store
        .compact(at(30 * 86_400), &RetentionPolicy::default())
        .expect("compact");
    assert_eq!(report.corrupt_removed, 1);
    assert_eq!(report.raw_removed, 1);

    // Overwriting the bad session repairs it.
    store.start_session(&bad).expect("rewrite");
    assert_eq!(store.session(&bad.key()).expect("read"), Some(bad));
}

#[test]
fn corrupt_meta_values_are_reported() {
    let dir = tmp();
    drop(open(&dir));
    {
        let db = raw(&dir);
        let meta = db.open_tree("meta").expect("meta");
        meta.insert("last_transaction_id", &b"xyz"[..])
            .expect("insert");
        db.flush().expect("flush");
    }
    {
        let store = open(&dir);
        assert!(matches!(
            store.next_transaction_id(),
            Err(StoreError::Corrupt { .. })
        ));
    }
    {
        let db = raw(&dir);
        let meta = db.open_tree("meta").expect("meta");
        meta.insert("schema_version", &b"\x01"[..]).expect("insert");
        db.flush().expect("flush");
    }
    let err = SledStore::open(dir.path()).expect_err("corrupt version");
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err:?}");
    assert!(err.to_string().contains("schema_version"), "{err}");
}

#[test]
fn inconsistent_indexes_are_repaired_at_open_after_a_crash() {
    let dir = tmp();
    let a = session("CP-1", "1", at(0));
    let b = session("CP-1", "2", at(10));
    {
        let store = open(&dir);
        store.start_session(&a).expect("start");
        store.start_session(&b).expect("start");
    }
    {
        // What a torn recovery could leave: a missing entry, a ghost, a stale time entry.
        let db = raw(&dir);
        let open_idx = db.open_tree("open_sessions").expect("tree");
        open_idx.remove(a.key().to_bytes()).expect("remove");
        open_idx
            .insert(SessionKey::new("CP-9", "ghost").to_bytes(), &b""[..])
            .expect("insert");
        let by_start = db.open_tree("sessions_by_start").expect("tree");
        let (first, _) = by_start.first().expect("first").expect("an entry");
        by_start.remove(first).expect("remove");
        // A stale time entry for b (not its start): skipped on read, never listed twice.
        let mut stale = at(5_000).timestamp_millis().to_be_bytes();
        stale[0] ^= 0x80;
        let mut stale = stale.to_vec();
        stale.extend_from_slice(&b.key().to_bytes());
        by_start.insert(stale, &b""[..]).expect("insert");
        db.open_tree("meta")
            .expect("meta")
            .remove("clean_shutdown")
            .expect("remove");
        db.flush().expect("flush");
    }
    let store = open(&dir);
    let report = store.open_report().clone();
    assert!(!report.clean_shutdown);
    assert_eq!(report.index_repairs, 3);
    assert_eq!(store.open_sessions().expect("open"), [a, b]);
    assert_eq!(
        ids(&store.sessions(&SessionFilter::default()).expect("list")),
        ["2", "1"]
    );
}

#[test]
fn invalid_input_is_refused() {
    let dir = tmp();
    let store = open(&dir);
    let mut nan = session("CP-1", "1", at(0));
    nan.energy_wh = f64::NAN;
    assert!(matches!(
        store.start_session(&nan),
        Err(StoreError::Invalid { .. })
    ));
    assert!(matches!(
        store.start_session(&session("CP\0x", "1", at(0))),
        Err(StoreError::Invalid { .. })
    ));
    assert!(matches!(
        store.append_samples(&[sample("CP\0x", 1, at(0))]),
        Err(StoreError::Invalid { .. })
    ));
    assert!(store.open_sessions().expect("open").is_empty());
}

#[test]
fn the_engine_is_usable_behind_the_trait() {
    let dir = tmp();
    let store: std::sync::Arc<dyn Store> = std::sync::Arc::new(open(&dir));
    store.put_station(&station("CP-1")).expect("put");
    store.flush().expect("flush");
    assert_eq!(store.stations().expect("list").len(), 1);
}

#[test]
fn a_database_in_use_is_not_opened_twice() {
    let dir = tmp();
    let first = open(&dir);
    let options = StoreOptions {
        lock_wait: std::time::Duration::from_millis(100),
        ..StoreOptions::default()
    };
    let err = SledStore::open_with(dir.path(), &options).expect_err("locked");
    assert!(matches!(err, StoreError::Engine(_)), "{err:?}");
    assert!(err.to_string().contains("lock"), "{err}");
    drop(first);
    // Once the first is closed (sled lets go of the lock a moment later), it opens.
    let second = open(&dir);
    assert!(second.open_report().clean_shutdown);
}

#[test]
fn samples_with_equal_timestamps_are_all_kept_and_exact_repeats_once() {
    let dir = tmp();
    let store = open(&dir);
    let when = at(100);
    let mut first = sample("CP-1", 1, when);
    first.energy_wh = Some(1_000.0);
    let mut second = sample("CP-1", 1, when);
    second.energy_wh = Some(1_050.0);
    store.append_samples(&[first.clone()]).expect("first");
    store
        .append_samples(&[second.clone()])
        .expect("second, same millisecond");
    // A retried message: the very same sample again.
    store.append_samples(&[second.clone()]).expect("repeat");
    let kept = all_samples(&store, "CP-1", 1);
    assert_eq!(kept.len(), 2, "{kept:#?}");
    assert!(
        kept.iter().all(|s| s.at == when),
        "each keeps its own timestamp"
    );
    let energies: Vec<_> = kept.iter().map(|s| s.energy_wh).collect();
    assert_eq!(energies, vec![Some(1_000.0), Some(1_050.0)]);
}

#[test]
fn plugin_kv_is_per_plugin_and_survives_reopen() {
    let dir = tmp();
    {
        let store = open(&dir);
        store
            .plugin_kv_put("peak", "month", Some(b"2026-03"))
            .expect("put");
        store
            .plugin_kv_put("peak", "max_w", Some(&[1, 2, 3]))
            .expect("put");
        // A plugin whose name extends another's must not see the other's keys.
        store
            .plugin_kv_put("peak-2", "month", Some(b"other"))
            .expect("put");
        store
            .plugin_kv_put("peak", "gone", Some(b"x"))
            .expect("put");
        store.plugin_kv_put("peak", "gone", None).expect("delete");
        store.flush().expect("flush");
    }
    let store = open(&dir);
    assert_eq!(
        store.plugin_kv_entries("peak").expect("entries"),
        vec![
            ("max_w".to_string(), vec![1, 2, 3]),
            ("month".to_string(), b"2026-03".to_vec())
        ]
    );
    assert_eq!(
        store.plugin_kv_entries("peak-2").expect("entries"),
        vec![("month".to_string(), b"other".to_vec())]
    );
    assert!(
        store
            .plugin_kv_entries("nobody")
            .expect("entries")
            .is_empty()
    );
    let err = store
        .plugin_kv_put("bad\0name", "k", Some(b"v"))
        .expect_err("NUL in a plugin name");
    assert!(matches!(err, StoreError::Invalid { .. }), "{err:?}");
}

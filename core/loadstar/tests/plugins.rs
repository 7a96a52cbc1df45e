//! The plugin host against real components (plugins/fixtures, built for wasm32-wasip2 by
//! `loadstar-plugin-artifacts`) and real peers on 127.0.0.1: well-behaved calls, every host
//! import, and hostile plugins, each contained (typed error, health, host fine, recovery).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use loadstar::clock::Clock;
use loadstar::plugins::wit::{
    EvseState, EvseStatus, MeterReading, Node, PerLine, Reading, SiteSnapshot,
};
use loadstar::plugins::{
    CacheOutcome, HostOptions, MeterPlugin, PluginError, PluginHealth, PluginHost, PluginSet,
    PluginSpec, PolicyPlugin, World,
};
use loadstar::site::SiteConfig;
use loadstar::store::{SledStore, Store};
use loadstar_plugin_artifacts::{
    DAY_AHEAD_PRICE, PEAK_SHAVING, PROBE_METER, PROBE_POLICY, SOLAR_SURPLUS, SUNSPEC_METER,
    TOU_TARIFF,
};
use serde_json::json;
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

struct Fixture {
    _dir: TempDir,
    store: Arc<SledStore>,
    host: PluginHost,
}

fn fixture_with(clock: Clock) -> Fixture {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = Arc::new(SledStore::open(&dir.path().join("store")).expect("store"));
    let host = PluginHost::new(HostOptions::default(), store.clone(), clock).expect("host");
    Fixture {
        _dir: dir,
        store,
        host,
    }
}

fn fixture() -> Fixture {
    fixture_with(Clock::real())
}

fn spec(name: &str, world: World, config: serde_json::Value) -> PluginSpec {
    let mut spec = PluginSpec::new(name, world);
    spec.config = match config {
        serde_json::Value::Object(map) => map,
        other => panic!("config must be an object, got {other}"),
    };
    // Short backoff so the tests can watch a restart.
    spec.limits.restart_backoff_min_ms = 20;
    // A deadline that CPU contention in a parallel test run cannot reach, so only the tests
    // about deadlines (which set the default 50 ms back) see timeouts.
    spec.limits.deadline_ms = 2_000;
    spec
}

/// A spec with the default 50 ms deadline.
fn spec_50ms(name: &str, world: World, config: serde_json::Value) -> PluginSpec {
    let mut spec = spec(name, world, config);
    spec.limits.deadline_ms = 50;
    spec
}

fn meter(f: &Fixture, config: serde_json::Value) -> MeterPlugin {
    meter_spec(f, spec("probe", World::Meter, config))
}

fn meter_spec(f: &Fixture, spec: PluginSpec) -> MeterPlugin {
    f.host
        .load_meter(spec, PROBE_METER)
        .expect("load probe meter")
}

/// Waits out the backoff after a failure, then expects the restarted plugin to read fine.
async fn recovers(plugin: &mut MeterPlugin) {
    let status = plugin.status();
    assert!(
        matches!(status.health, PluginHealth::Failed { .. }),
        "{status:?}"
    );
    let early = plugin.read().await.expect_err("refused during the backoff");
    assert!(matches!(early, PluginError::BackingOff { .. }), "{early:?}");
    tokio::time::sleep(Duration::from_millis(60)).await;
    let reading = plugin.read().await.expect("the restarted instance reads");
    assert_eq!(reading.current.l1, Some(10.0));
    let status = plugin.status();
    assert_eq!(status.health, PluginHealth::Healthy);
    assert_eq!(status.restarts, 1, "{status:?}");
}

/// Counts ticks of a task on the same runtime: it only advances if the plugin call yields.
fn heartbeat() -> (Arc<AtomicU64>, tokio::task::JoinHandle<()>) {
    let beats = Arc::new(AtomicU64::new(0));
    let b = beats.clone();
    let task = tokio::spawn(async move {
        loop {
            tokio::task::yield_now().await;
            b.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    });
    (beats, task)
}

// ------------------------------------------------------------------------ well-behaved

#[tokio::test]
async fn a_meter_reads_with_clock_log_and_kv() {
    let f = fixture();
    let mut plugin = meter(&f, json!({ "mode": "ok" }));
    assert_eq!(plugin.status().health, PluginHealth::Loaded);
    let before = Utc::now().timestamp_millis();
    let first = plugin.read().await.expect("read");
    assert_eq!(first.current.l1, Some(10.0));
    assert_eq!(first.current.l2, Some(-2.5), "export is negative");
    assert_eq!(first.current.l3, None);
    assert_eq!(first.total_power, Some(1.0), "first read counted in kv");
    let ts = first.timestamp.expect("stamped by the plugin");
    assert!(ts >= before && ts <= Utc::now().timestamp_millis(), "{ts}");
    let second = plugin.read().await.expect("read");
    assert_eq!(second.total_power, Some(2.0));
    let status = plugin.status();
    assert_eq!(status.health, PluginHealth::Healthy);
    assert_eq!((status.calls, status.errors), (2, 0));
    // The counter is in the sled store, under the plugin's name.
    let entries = f.store.plugin_kv_entries("probe").expect("entries");
    assert_eq!(
        entries,
        vec![("reads".to_string(), 2u64.to_le_bytes().to_vec())]
    );
}

#[tokio::test]
async fn kv_survives_a_new_host_on_the_same_store() {
    let dir = tempfile::tempdir().expect("temp dir");
    for expected in [1.0, 2.0] {
        let store = Arc::new(SledStore::open(&dir.path().join("store")).expect("store"));
        let host = PluginHost::new(HostOptions::default(), store, Clock::real()).expect("host");
        let mut plugin = host
            .load_meter(
                spec("probe", World::Meter, json!({ "mode": "ok" })),
                PROBE_METER,
            )
            .expect("load");
        assert_eq!(
            plugin.read().await.expect("read").total_power,
            Some(expected)
        );
    }
}

#[tokio::test(start_paused = true)]
async fn plugins_see_the_virtual_clock_and_deadlines_stay_real() {
    let start: DateTime<Utc> = "2030-06-01T12:00:00Z".parse().expect("time");
    let f = fixture_with(Clock::virtual_from(start));
    let mut ok = meter(&f, json!({ "mode": "ok" }));
    let reading = ok.read().await.expect("read");
    assert_eq!(reading.timestamp, Some(start.timestamp_millis()));

    // Paused tokio time does not move while wasm spins; the real-time deadline still fires.
    let mut looping = meter_spec(
        &f,
        spec_50ms("looping", World::Meter, json!({ "mode": "loop" })),
    );
    let t0 = Instant::now();
    let err = looping.read().await.expect_err("cut off");
    assert!(
        matches!(
            err,
            PluginError::Timeout {
                deadline_ms: 50,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
}

#[tokio::test]
async fn a_policy_turns_a_snapshot_into_constraints() {
    let f = fixture();
    let mut plugin: PolicyPlugin = f
        .host
        .load_policy(
            spec("half", World::Policy, json!({ "mode": "ok" })),
            PROBE_POLICY,
        )
        .expect("load policy");
    let snapshot = snapshot(3);
    let c = plugin.evaluate(&snapshot).await.expect("evaluate");
    assert_eq!(c.limits.len(), 1);
    let limit = &c.limits[0];
    assert_eq!(limit.node, "grid");
    assert_eq!(
        (limit.limit.l1, limit.limit.l2, limit.limit.l3),
        (Some(31.5), Some(31.5), Some(31.5))
    );
    assert_eq!(
        (limit.start, limit.end),
        (snapshot.now, snapshot.now + 900_000)
    );
    assert_eq!(limit.reason, "half of grid for 3 EVSEs");
    assert_eq!(c.hints.len(), 1);
    assert_eq!(c.hints[0].evse, "CP-0/1");
}

fn snapshot(evses: usize) -> SiteSnapshot {
    let line = |a: f64| PerLine {
        l1: Some(a),
        l2: Some(a),
        l3: Some(a),
    };
    SiteSnapshot {
        now: 1_780_000_000_000,
        time_zone: "Europe/Amsterdam".into(),
        nominal_voltage: 230.0,
        nodes: vec![
            Node {
                id: "grid".into(),
                parent: None,
                limit: line(63.0),
            },
            Node {
                id: "feeder".into(),
                parent: Some("grid".into()),
                limit: line(40.0),
            },
        ],
        evses: (0..evses)
            .map(|i| EvseState {
                id: format!("CP-{i}/1"),
                node: "feeder".into(),
                status: EvseStatus::Charging,
                session_active: true,
                min_current: 6.0,
                max_current: 16.0,
                setpoint: Some(10.0),
                measured: line(9.8),
                session_energy: Some(1200.0),
            })
            .collect(),
        meters: Vec::new(),
        prices: Vec::new(),
        solar: Vec::new(),
    }
}

/// What the probe's `echo` mode renders of an EVSE as the guest received it.
fn rendered(e: &EvseState) -> String {
    format!(
        "{}|{}|{}|{:?}|{:?}|{:?}|{:?},{:?},{:?}|{:?}",
        e.node,
        e.status as u8,
        e.session_active,
        e.min_current,
        e.max_current,
        e.setpoint,
        e.measured.l1,
        e.measured.l2,
        e.measured.l3,
        e.session_energy,
    )
}

/// The host lowers `list<evse-state>` by hand (`plugins/lower.rs`): every field, every case of
/// every option and enum, empty and non-ASCII strings, and a list big enough to grow the guest's
/// memory while it is lowered must arrive exactly as sent.
#[tokio::test]
async fn a_policy_receives_every_evse_field_as_sent() {
    let f = fixture();
    let mut plugin = f
        .host
        .load_policy(
            spec("echo", World::Policy, json!({ "mode": "echo" })),
            PROBE_POLICY,
        )
        .expect("load policy");
    let statuses = [
        EvseStatus::Available,
        EvseStatus::Preparing,
        EvseStatus::Charging,
        EvseStatus::SuspendedEv,
        EvseStatus::SuspendedEvse,
        EvseStatus::Finishing,
        EvseStatus::Reserved,
        EvseStatus::Unavailable,
        EvseStatus::Faulted,
        EvseStatus::Unknown,
    ];
    let some = |i: usize, v: f64| (!i.is_multiple_of(3)).then_some(v);
    let mut snap = snapshot(0);
    snap.evses = (0..3000)
        .map(|i| EvseState {
            id: match i % 4 {
                0 => format!("CP-{i}/1"),
                1 => format!("Ladesäule-{i}/²"),
                2 => "x".repeat(i % 97),
                _ => String::new(),
            },
            node: if i % 5 == 0 {
                String::new()
            } else {
                format!("feeder-{}", i % 7)
            },
            status: statuses[i % statuses.len()],
            session_active: i % 2 == 0,
            min_current: i as f64 * 0.5,
            max_current: -(i as f64) - 0.25,
            setpoint: some(i, i as f64 / 3.0),
            measured: PerLine {
                l1: some(i + 1, f64::MIN_POSITIVE * i as f64),
                l2: some(i + 2, -1e300),
                l3: some(i, 16.0),
            },
            session_energy: some(i + 1, 1e-9 * i as f64),
        })
        .collect();
    for evses in [0, 1, 7, 3000] {
        let mut s = snap.clone();
        s.evses.truncate(evses);
        let c = plugin.evaluate(&s).await.expect("evaluate");
        assert_eq!(c.hints.len(), evses);
        for (e, h) in s.evses.iter().zip(&c.hints) {
            assert_eq!(h.evse, e.id);
            assert_eq!(h.reason, rendered(e), "{e:?}");
        }
    }
    // The rest of the snapshot still arrives (the probe's `ok` mode reads the nodes).
    let mut ok = f
        .host
        .load_policy(
            spec("ok", World::Policy, json!({ "mode": "ok" })),
            PROBE_POLICY,
        )
        .expect("load policy");
    let c = ok.evaluate(&snap).await.expect("evaluate");
    assert_eq!(c.limits[0].reason, "half of grid for 3000 EVSEs");
    assert_eq!(c.hints[0].evse, "CP-0/1");
}

#[tokio::test]
async fn a_component_of_the_other_world_is_refused_at_load() {
    let f = fixture();
    let err = f
        .host
        .load_meter(spec("wrong", World::Meter, json!({})), PROBE_POLICY)
        .err()
        .expect("a policy is not a meter");
    assert!(matches!(err, PluginError::Instantiate { .. }), "{err:?}");
    assert!(err.to_string().contains("meter"), "{err}");
    let err = f
        .host
        .load_meter(spec("junk", World::Meter, json!({})), b"not wasm at all")
        .err()
        .expect("junk");
    assert!(matches!(err, PluginError::Compile { .. }), "{err:?}");
}

// ----------------------------------------------------------------------------- hostile

#[tokio::test]
async fn an_infinite_loop_is_cut_off_while_the_host_runs_on() {
    let f = fixture();
    // 300 ms rather than 50: the recovery read afterwards must fit its deadline even when a
    // parallel test run starves this thread for a while.
    let mut s = spec(
        "probe",
        World::Meter,
        json!({ "mode": "loop", "once": true }),
    );
    s.limits.deadline_ms = 300;
    let mut plugin = meter_spec(&f, s);
    let (beats, task) = heartbeat();
    let t0 = Instant::now();
    let err = plugin.read().await.expect_err("cut off");
    let took = t0.elapsed();
    task.abort();
    assert!(
        matches!(
            err,
            PluginError::Timeout {
                deadline_ms: 300,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(
        took >= Duration::from_millis(295),
        "cut off before its deadline: {took:?}"
    );
    assert!(
        took < Duration::from_secs(5),
        "not cut off in time: {took:?}"
    );
    assert!(
        beats.load(Ordering::Relaxed) > 0,
        "the runtime's other tasks ran while the plugin spun"
    );
    let status = plugin.status();
    assert_eq!(status.timeouts, 1);
    recovers(&mut plugin).await;
}

#[tokio::test]
async fn a_memory_bomb_hits_the_cap() {
    let f = fixture();
    let mut plugin = meter(&f, json!({ "mode": "memory", "once": true }));
    let err = plugin.read().await.expect_err("capped");
    assert!(matches!(err, PluginError::Trap { .. }), "{err:?}");
    assert_eq!(plugin.status().traps, 1);
    recovers(&mut plugin).await;
}

#[tokio::test]
async fn a_panic_is_a_trap_with_its_message() {
    let f = fixture();
    let mut plugin = meter(&f, json!({ "mode": "panic", "once": true }));
    let err = plugin.read().await.expect_err("panics");
    assert!(matches!(err, PluginError::Trap { .. }), "{err:?}");
    assert!(err.to_string().contains("probe panics on purpose"), "{err}");
    recovers(&mut plugin).await;
}

#[tokio::test]
async fn instantiate_replaces_the_instance_and_waits_out_a_backoff() {
    let f = fixture();
    let mut plugin = meter(&f, json!({ "mode": "panic", "once": true }));
    plugin.instantiate().await.expect("instantiate");
    assert_eq!(plugin.status().calls, 0, "instantiating is not a call");
    plugin.read().await.expect_err("panics once");
    let err = plugin.instantiate().await.expect_err("during the backoff");
    assert!(matches!(err, PluginError::BackingOff { .. }), "{err:?}");
    tokio::time::sleep(Duration::from_millis(60)).await;
    plugin.instantiate().await.expect("after the backoff");
    assert_eq!(plugin.status().restarts, 1);
    assert_eq!(plugin.read().await.expect("reads").current.l1, Some(10.0));

    let mut policy = f
        .host
        .load_policy(
            spec("p", World::Policy, json!({ "mode": "ok" })),
            PROBE_POLICY,
        )
        .expect("load");
    policy.instantiate().await.expect("instantiate");
    policy.evaluate(&snapshot(1)).await.expect("evaluate");
}

#[tokio::test]
async fn a_huge_error_is_truncated_and_a_huge_result_refused() {
    let f = fixture();
    let mut plugin = meter(&f, json!({ "mode": "huge-error" }));
    let err = plugin.read().await.expect_err("errs");
    let PluginError::Plugin { message, .. } = &err else {
        panic!("expected a plugin error, got {err:?}");
    };
    assert!(message.len() < 2048, "{} bytes kept", message.len());
    assert!(
        message.contains("8388608 bytes in all"),
        "{}",
        &message[message.len() - 40..]
    );
    // One error is not yet a failure: the plugin is degraded, its instance kept.
    assert_eq!(
        plugin.status().health,
        PluginHealth::Degraded {
            consecutive_errors: 1
        }
    );

    let mut policy = f
        .host
        .load_policy(
            spec(
                "flood",
                World::Policy,
                json!({ "mode": "huge", "once": true }),
            ),
            PROBE_POLICY,
        )
        .expect("load");
    let err = policy.evaluate(&snapshot(2)).await.expect_err("refused");
    assert!(matches!(err, PluginError::InvalidOutput { .. }), "{err:?}");
    assert!(err.to_string().contains("20000 hints"), "{err}");
    // Refused output is an error, not a failure; the next call works.
    let c = policy
        .evaluate(&snapshot(2))
        .await
        .expect("the next call works");
    assert_eq!(c.limits.len(), 1);
}

#[tokio::test]
async fn repeated_errors_mark_the_plugin_failed() {
    let f = fixture();
    let mut plugin = meter(&f, json!({ "mode": "no-such-mode" }));
    for n in 1..=2 {
        let err = plugin.read().await.expect_err("errs");
        assert!(matches!(err, PluginError::Plugin { .. }), "{err:?}");
        assert_eq!(
            plugin.status().health,
            PluginHealth::Degraded {
                consecutive_errors: n
            }
        );
    }
    plugin.read().await.expect_err("third error");
    assert!(
        matches!(
            plugin.status().health,
            PluginHealth::Failed {
                consecutive_failures: 1,
                ..
            }
        ),
        "{:?}",
        plugin.status()
    );
    let err = plugin.read().await.expect_err("backing off");
    assert!(matches!(err, PluginError::BackingOff { .. }), "{err:?}");
}

#[tokio::test]
async fn a_host_not_granted_is_denied_and_a_granted_one_answers() {
    let (addr, _server) = http_server("230.5").await;
    let f = fixture();
    // Granted: the real server on loopback answers.
    let mut granted = spec(
        "granted",
        World::Meter,
        json!({ "mode": "http", "url": format!("http://{addr}/power") }),
    );
    granted.grants.http = vec![addr.to_string()];
    let mut plugin = meter_spec(&f, granted);
    assert_eq!(plugin.read().await.expect("read").total_power, Some(230.5));

    // Not granted: same server, but the grant names another port.
    let mut denied = spec(
        "denied",
        World::Meter,
        json!({ "mode": "http", "url": format!("http://{addr}/power") }),
    );
    denied.grants.http = vec![format!("127.0.0.1:{}", addr.port().wrapping_add(1))];
    let mut plugin = meter_spec(&f, denied);
    let err = plugin.read().await.expect_err("denied");
    assert!(err.to_string().contains("denied"), "{err}");
    assert!(err.to_string().contains("not granted"), "{err}");
    let status = plugin.status();
    assert_eq!(status.denied_calls, 1);
    assert_eq!(
        status.health,
        PluginHealth::Degraded {
            consecutive_errors: 1
        }
    );
}

#[tokio::test]
async fn an_http_call_that_never_returns_is_cut_off() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    // Accepts, reads the request, never answers; keeps every connection open.
    let server = tokio::spawn(async move {
        let mut held = Vec::new();
        loop {
            if let Ok((mut socket, _)) = listener.accept().await {
                let mut buf = [0u8; 1024];
                let _ = socket.read(&mut buf).await;
                held.push(socket);
            }
        }
    });
    let f = fixture();
    let mut s = spec(
        "silent",
        World::Meter,
        json!({ "mode": "http", "url": format!("http://{addr}/"), "once": true }),
    );
    s.limits.deadline_ms = 300;
    s.grants.http = vec![addr.to_string()];
    let mut plugin = meter_spec(&f, s);
    let t0 = Instant::now();
    let err = plugin.read().await.expect_err("cut off");
    let took = t0.elapsed();
    assert!(matches!(err, PluginError::Timeout { .. }), "{err:?}");
    assert!(took < Duration::from_secs(5), "{took:?}");
    assert_eq!(plugin.status().timeouts, 1);
    recovers(&mut plugin).await;
    server.abort();
}

#[tokio::test]
async fn kv_quota_is_enforced() {
    let f = fixture();
    let mut s = spec("filler", World::Meter, json!({ "mode": "kv-fill" }));
    s.grants.kv_max_keys = 10;
    let mut plugin = meter_spec(&f, s);
    let err = plugin.read().await.expect_err("quota");
    assert!(err.to_string().contains("quota after 10 keys"), "{err}");
    assert_eq!(
        f.store.plugin_kv_entries("filler").expect("entries").len(),
        10
    );

    let mut s = spec("small", World::Meter, json!({ "mode": "kv-fill" }));
    s.grants.kv_max_bytes = 1000;
    let mut plugin = meter_spec(&f, s);
    let err = plugin.read().await.expect_err("quota");
    // Each entry is 2-3 key bytes + 100 value bytes: 9 fit in 1000 bytes.
    assert!(err.to_string().contains("quota after 9 keys"), "{err}");

    let mut s = spec("none", World::Meter, json!({ "mode": "ok" }));
    s.grants.kv_max_bytes = 0;
    let mut plugin = meter_spec(&f, s);
    let err = plugin.read().await.expect_err("kv denied");
    assert!(
        err.to_string().contains("kv to reads is not granted"),
        "{err}"
    );
}

#[tokio::test]
async fn no_ambient_wasi() {
    let f = fixture();
    let mut plugin = meter(&f, json!({ "mode": "ambient" }));
    let err = plugin.read().await.expect_err("reports");
    assert!(
        err.to_string()
            .contains("env=0 args=0 file=false dir=false tcp=false"),
        "{err}"
    );
}

// ------------------------------------------------------------------------------- cache

#[tokio::test]
async fn components_are_compiled_once_and_cached_on_disk() {
    let dir = tempfile::tempdir().expect("temp dir");
    let cache_dir = dir.path().join("plugin-cache");
    let store: Arc<dyn Store> =
        Arc::new(SledStore::open(&dir.path().join("store")).expect("store"));
    let options = HostOptions {
        cache_dir: Some(cache_dir.clone()),
    };
    let load = |host: &PluginHost, name: &str| {
        host.load_meter(
            spec(name, World::Meter, json!({ "mode": "ok" })),
            PROBE_METER,
        )
        .expect("load")
    };
    {
        let host = PluginHost::new(options.clone(), store.clone(), Clock::real()).expect("host");
        assert_eq!(
            load(&host, "a").status().loaded_from,
            CacheOutcome::Compiled
        );
        assert_eq!(load(&host, "b").status().loaded_from, CacheOutcome::Memory);
    }
    let host = PluginHost::new(options.clone(), store.clone(), Clock::real()).expect("host");
    let mut plugin = load(&host, "c");
    assert_eq!(plugin.status().loaded_from, CacheOutcome::Disk);
    plugin.read().await.expect("a deserialized component runs");
    drop(host);

    // A damaged or foreign artifact is never loaded: it is recompiled and rewritten.
    let artifact = std::fs::read_dir(&cache_dir)
        .expect("cache dir")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "cwasm"))
        .expect("an artifact");
    let mut bytes = std::fs::read(&artifact).expect("read");
    let last = bytes.len() - 1;
    bytes[last] ^= 0xFF;
    std::fs::write(&artifact, &bytes).expect("tamper");
    let host = PluginHost::new(options, store, Clock::real()).expect("host");
    let mut plugin = load(&host, "d");
    assert_eq!(plugin.status().loaded_from, CacheOutcome::Compiled);
    plugin.read().await.expect("runs");
}

// ----------------------------------------------------------------------------- helpers

/// A tiny real HTTP/1.1 server on loopback answering every request with `body`.
async fn http_server(body: &'static str) -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 1024];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match socket.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let response = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                );
                let _ = socket.write_all(response.as_bytes()).await;
            });
        }
    });
    (addr, task)
}

// ------------------------------------------------------------------------------ modbus

#[derive(Clone)]
struct Registers;

impl tokio_modbus::server::Service for Registers {
    type Request = tokio_modbus::Request<'static>;
    type Response = tokio_modbus::Response;
    type Exception = tokio_modbus::ExceptionCode;
    type Future = std::future::Ready<Result<Self::Response, Self::Exception>>;

    fn call(&self, req: Self::Request) -> Self::Future {
        use tokio_modbus::{Request, Response};
        std::future::ready(match req {
            // Holding registers hold 100 + address; input registers 200 + address.
            Request::ReadHoldingRegisters(addr, n) => Ok(Response::ReadHoldingRegisters(
                (addr..addr + n).map(|a| 100 + a).collect(),
            )),
            Request::ReadInputRegisters(addr, n) => Ok(Response::ReadInputRegisters(
                (addr..addr + n).map(|a| 200 + a).collect(),
            )),
            _ => Err(tokio_modbus::ExceptionCode::IllegalFunction),
        })
    }
}

#[tokio::test]
async fn modbus_registers_from_a_granted_server_only() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let server = tokio::spawn(async move {
        let server = tokio_modbus::server::tcp::Server::new(listener);
        let on_connected = |stream, socket_addr| async move {
            tokio_modbus::server::tcp::accept_tcp_connection(stream, socket_addr, |_| {
                Ok(Some(Registers))
            })
        };
        let _ = server.serve(&on_connected, |_err| {}).await;
    });
    let f = fixture();
    let mut s = spec(
        "sunspec",
        World::Meter,
        json!({ "mode": "modbus", "endpoint": addr.to_string() }),
    );
    s.grants.modbus = vec![addr.to_string()];
    let mut plugin = meter_spec(&f, s);
    let reading = plugin.read().await.expect("read");
    assert_eq!(
        (reading.current.l1, reading.current.l2, reading.current.l3),
        (Some(100.0), Some(101.0), Some(200.0))
    );

    // An HTTP grant for the same endpoint is not a Modbus grant.
    let mut s = spec(
        "sneaky",
        World::Meter,
        json!({ "mode": "modbus", "endpoint": addr.to_string() }),
    );
    s.grants.http = vec![addr.to_string()];
    let mut plugin = meter_spec(&f, s);
    let err = plugin.read().await.expect_err("denied");
    assert!(err.to_string().contains("modbus to"), "{err}");
    assert!(err.to_string().contains("not granted"), "{err}");
    assert_eq!(plugin.status().denied_calls, 1);
    server.abort();
}

// --------------------------------------------------------------------- http-json-meter

/// A loopback server answering each device's real path with a document in its format.
async fn device_server() -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 1024];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match socket.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&buf).to_string();
                let target = head.split(' ').nth(1).unwrap_or_default().to_string();
                let (status, body) = match target.as_str() {
                    "/api/v1/data" => (
                        "200 OK",
                        json!({
                            "wifi_ssid": "site", "active_power_w": -1380.0,
                            "active_power_l1_w": -460.0, "active_power_l2_w": -460.0, "active_power_l3_w": -460.0,
                            "active_current_l1_a": 2.0, "active_current_l2_a": 2.0, "active_current_l3_a": 2.0,
                            "active_voltage_l1_v": 230.1, "total_power_import_kwh": 4321.5, "total_power_export_kwh": 12.25
                        }),
                    ),
                    "/status" => (
                        "200 OK",
                        json!({
                            "emeters": [
                                { "power": 2300.0, "current": 10.0, "voltage": 230.0, "total": 1.0 },
                                { "power": 1150.0, "current": 5.0, "voltage": 231.0, "total": 2.0 },
                                { "power": 0.0, "current": 0.0, "voltage": 229.0, "total": 3.0 }
                            ],
                            "total_power": 3450.0
                        }),
                    ),
                    "/rpc/EM.GetStatus?id=0" => (
                        "200 OK",
                        json!({
                            "id": 0, "a_current": 4.1, "a_voltage": 230.2, "a_act_power": 943.0,
                            "b_current": 0.5, "b_voltage": 229.8, "b_act_power": -115.0,
                            "c_current": 0.0, "c_voltage": 231.0, "c_act_power": 0.0,
                            "total_act_power": 828.0, "total_current": 4.6
                        }),
                    ),
                    "/cm?cmnd=Status%2010" => (
                        "200 OK",
                        json!({
                            "StatusSNS": { "Time": "2026-12-01T21:00:00",
                                "ENERGY": { "Total": 12.5, "Power": 460, "Voltage": 230, "Current": 2.0 } }
                        }),
                    ),
                    _ => ("404 Not Found", json!({ "error": "no such path" })),
                };
                let body = body.to_string();
                let response = format!(
                    "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                );
                let _ = socket.write_all(response.as_bytes()).await;
            });
        }
    });
    (addr, task)
}

fn json_meter(f: &Fixture, addr: std::net::SocketAddr, config: serde_json::Value) -> MeterPlugin {
    let mut s = spec("grid-meter", World::Meter, config);
    s.grants.http = vec![addr.to_string()];
    f.host
        .load_meter(s, loadstar_plugin_artifacts::HTTP_JSON_METER)
        .expect("load http-json-meter")
}

#[tokio::test]
async fn http_json_meter_reads_every_preset_from_a_real_server() {
    let (addr, server) = device_server().await;
    let f = fixture();
    let base = format!("http://{addr}");

    let mut p1 = json_meter(&f, addr, json!({ "preset": "homewizard-p1", "base": base }));
    let r = p1.read().await.expect("HomeWizard P1");
    assert_eq!(r.total_power, Some(-1380.0));
    assert_eq!(
        r.current.l1,
        Some(2.0),
        "unsigned, as the firmware sends it"
    );
    assert_eq!(r.voltage.l1, Some(230.1));
    assert_eq!(r.energy_import, Some(4_321_500.0), "kWh scaled to Wh");
    assert_eq!(r.energy_export, Some(12_250.0));

    // The same meter with the option: exporting, so the currents become negative.
    let mut signed = json_meter(
        &f,
        addr,
        json!({ "preset": "homewizard-p1", "base": base, "sign_currents_from_power": true }),
    );
    let r = signed.read().await.expect("signed");
    assert_eq!(
        (r.current.l1, r.current.l2, r.current.l3),
        (Some(-2.0), Some(-2.0), Some(-2.0))
    );

    let mut shelly = json_meter(&f, addr, json!({ "preset": "shelly-3em", "base": base }));
    let r = shelly.read().await.expect("Shelly 3EM");
    assert_eq!(
        (r.current.l1, r.current.l2, r.current.l3),
        (Some(10.0), Some(5.0), Some(0.0))
    );
    assert_eq!((r.power.l1, r.total_power), (Some(2300.0), Some(3450.0)));

    let mut pro = json_meter(
        &f,
        addr,
        json!({ "preset": "shelly-pro-3em", "base": base }),
    );
    let r = pro.read().await.expect("Shelly Pro 3EM");
    assert_eq!(
        (r.current.l1, r.power.l2, r.voltage.l3),
        (Some(4.1), Some(-115.0), Some(231.0))
    );
    assert_eq!(r.total_power, Some(828.0));

    let mut tasmota = json_meter(&f, addr, json!({ "preset": "tasmota", "base": base }));
    let r = tasmota.read().await.expect("Tasmota");
    assert_eq!(
        (r.current.l1, r.voltage.l1, r.total_power),
        (Some(2.0), Some(230.0), Some(460.0))
    );
    assert_eq!(r.energy_import, Some(12_500.0));

    // Custom pointers on top of a preset; a wrong path is an HTTP error, not a reading.
    let mut custom = json_meter(
        &f,
        addr,
        json!({ "url": format!("{base}/status"), "preset": "shelly-3em",
                "fields": { "energy_import": "/emeters/0/total" } }),
    );
    assert_eq!(
        custom.read().await.expect("custom").energy_import,
        Some(1.0)
    );
    let mut wrong = json_meter(
        &f,
        addr,
        json!({ "url": format!("{base}/nope"), "fields": { "total_power": "/p" } }),
    );
    let err = wrong.read().await.expect_err("404");
    assert!(err.to_string().contains("HTTP status 404"), "{err}");
    server.abort();
}

#[tokio::test]
async fn http_json_meter_with_a_bad_config_fails_with_the_reason() {
    let (addr, server) = device_server().await;
    let f = fixture();
    let mut plugin = json_meter(
        &f,
        addr,
        json!({ "preset": "no-such-meter", "base": format!("http://{addr}") }),
    );
    let err = plugin.read().await.expect_err("bad preset");
    assert!(matches!(err, PluginError::Plugin { .. }), "{err:?}");
    assert!(err.to_string().contains("unknown preset"), "{err}");
    server.abort();
}

// ------------------------------------------------------------------------ peak-shaving

/// 2026-06-01T00:00:00Z, a quarter-hour boundary.
const JUNE: i64 = 1_780_272_000_000;
const MINUTE: i64 = 60_000;

/// A site with a 63 A grid connection whose meter imports `import_w`.
fn grid_snapshot(now: i64, import_w: f64) -> SiteSnapshot {
    let mut s = snapshot(2);
    s.now = now;
    s.meters = vec![MeterReading {
        meter: "grid-meter".into(),
        node: Some("grid".into()),
        reading: Reading {
            timestamp: Some(now),
            current: PerLine {
                l1: None,
                l2: None,
                l3: None,
            },
            voltage: PerLine {
                l1: None,
                l2: None,
                l3: None,
            },
            power: PerLine {
                l1: None,
                l2: None,
                l3: None,
            },
            total_power: Some(import_w),
            energy_import: None,
            energy_export: None,
        },
    }];
    s
}

fn peak_shaving(f: &Fixture, config: serde_json::Value) -> PolicyPlugin {
    f.host
        .load_policy(spec("peak", World::Policy, config), PEAK_SHAVING)
        .expect("load peak-shaving")
}

/// The grid limit per line the policy returns for this snapshot.
async fn grid_cap(plugin: &mut PolicyPlugin, snapshot: &SiteSnapshot) -> (f64, String) {
    let c = plugin.evaluate(snapshot).await.expect("evaluate");
    assert_eq!(c.limits.len(), 1, "{c:?}");
    let l = &c.limits[0];
    assert_eq!(l.node, "grid");
    assert_eq!(l.start, snapshot.now);
    assert_eq!(
        l.end,
        snapshot.now - snapshot.now % (15 * MINUTE) + 15 * MINUTE
    );
    let a = l.limit.l1.expect("a limit on L1");
    assert_eq!((l.limit.l2, l.limit.l3), (Some(a), Some(a)), "balanced");
    (a, l.reason.clone())
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-9
}

#[tokio::test]
async fn peak_shaving_learns_the_months_peak_and_keeps_it_across_a_restart() {
    let f = fixture();
    let config = json!({ "target_kw": "learn", "min_target_kw": 4.0 });
    let mut plugin = peak_shaving(&f, config.clone());
    // No peak yet: the 4 kW floor, spread over three lines at 230 V.
    let (a, reason) = grid_cap(&mut plugin, &grid_snapshot(JUNE, 6_000.0)).await;
    assert!(close(a, 4_000.0 / 690.0), "{a} A");
    assert!(reason.contains("no peak yet"), "{reason}");
    // 6 kW held through the quarter: June's peak is 6 kW and becomes the target.
    let (a, reason) = grid_cap(&mut plugin, &grid_snapshot(JUNE + 15 * MINUTE, 3_000.0)).await;
    assert!(close(a, 6_000.0 / 690.0), "{a} A");
    assert!(reason.contains("2026-06 peak 6.00 kW"), "{reason}");
    // 3 kW for 5 minutes spent 15 of the 90 kW·min: 75 kW·min over the last 10 minutes.
    let (a, _) = grid_cap(&mut plugin, &grid_snapshot(JUNE + 20 * MINUTE, 3_000.0)).await;
    assert!(close(a, 7_500.0 / 690.0), "{a} A");
    drop(plugin);

    // A new instance (fresh memory) finds June's peak in its key-value store.
    let mut plugin = peak_shaving(&f, config);
    let (a, reason) = grid_cap(&mut plugin, &grid_snapshot(JUNE + 45 * MINUTE, 0.0)).await;
    assert!(close(a, 6_000.0 / 690.0), "{a} A");
    assert!(reason.contains("2026-06 peak 6.00 kW"), "{reason}");
    assert!(
        f.store
            .plugin_kv_entries("peak")
            .expect("kv")
            .iter()
            .any(|(k, v)| k == "peak" && String::from_utf8_lossy(v).contains("2026-06")),
        "the peak is persisted under `peak`"
    );
}

#[tokio::test]
async fn peak_shaving_never_exceeds_the_site_limit_and_reports_bad_input() {
    let f = fixture();
    let mut plugin = peak_shaving(&f, json!({ "target_kw": 100.0, "margin_kw": 1.0 }));
    let (a, _) = grid_cap(&mut plugin, &grid_snapshot(JUNE, 0.0)).await;
    assert_eq!(
        a, 63.0,
        "99 kW is more than the 63 A connection: the connection's limit"
    );

    let mut no_meter = grid_snapshot(JUNE + MINUTE, 0.0);
    no_meter.meters.clear();
    let err = plugin.evaluate(&no_meter).await.expect_err("no meter");
    assert!(
        err.to_string().contains("no reading of the grid meter"),
        "{err}"
    );

    let f = fixture();
    let mut bad = peak_shaving(&f, json!({ "target_kw": "learn" }));
    let err = bad
        .evaluate(&grid_snapshot(JUNE, 0.0))
        .await
        .expect_err("bad config");
    assert!(matches!(err, PluginError::Plugin { .. }), "{err:?}");
    assert!(
        err.to_string().contains("min_target_kw is required"),
        "{err}"
    );
}

// ----------------------------------------------------------------------- solar-surplus

/// The surplus offered (A on L1, the same on L2 and L3) and the chosen EVSE's hint weight.
async fn surplus(plugin: &mut PolicyPlugin, snapshot: &SiteSnapshot) -> (f64, f64, String) {
    let c = plugin.evaluate(snapshot).await.expect("evaluate");
    assert!(c.limits.is_empty(), "surplus only, no limits: {c:?}");
    assert_eq!(c.solar.len(), 1, "{c:?}");
    let s = &c.solar[0];
    assert_eq!((s.start, s.end), (snapshot.now, snapshot.now + 60_000));
    let a = s.surplus.l1.expect("L1");
    assert_eq!((s.surplus.l2, s.surplus.l3), (Some(a), Some(a)));
    assert_eq!(c.hints.len(), 1);
    assert_eq!(c.hints[0].evse, "CP-0/1");
    (
        a,
        c.hints[0].weight.expect("a weight"),
        c.hints[0].reason.clone(),
    )
}

#[tokio::test]
async fn solar_surplus_switches_on_and_holds_through_a_cloud_across_a_restart() {
    let f = fixture();
    let config = json!({ "evses": ["CP-0/1"], "min_on_s": 300 });
    let load = || {
        f.host
            .load_policy(spec("solar", World::Policy, config.clone()), SOLAR_SURPLUS)
            .expect("load solar-surplus")
    };
    // Each EVSE draws 9.8 A on three lines (6762 W); the site exports 1 kW: CP-0/1 may keep
    // its 6762 W plus the 1 kW export.
    let draw = 9.8 * 3.0 * 230.0;
    let mut plugin = load();
    let (a, weight, _) = surplus(&mut plugin, &grid_snapshot(JUNE, -1_000.0)).await;
    assert!(close(a, (draw + 1_000.0) / 690.0), "{a} A");
    assert_eq!(weight, 1.0);
    // A cloud: the site imports 5 kW, less surplus than CP-0/1's 6 A minimum, but it was
    // switched on 2 minutes ago: it is offered its minimum.
    let (a, weight, reason) =
        surplus(&mut plugin, &grid_snapshot(JUNE + 2 * MINUTE, 5_000.0)).await;
    assert!(close(a, 6.0), "{a} A");
    assert_eq!(weight, 1.0, "{reason}");
    drop(plugin);

    // A new instance remembers the switch-on time from kv: still held at 3 minutes ...
    let mut plugin = load();
    let (a, weight, _) = surplus(&mut plugin, &grid_snapshot(JUNE + 3 * MINUTE, 5_000.0)).await;
    assert!(close(a, 6.0), "{a} A");
    assert_eq!(weight, 1.0);
    // ... and off once the 5 minutes are over, offered only the measured surplus.
    let (a, weight, reason) =
        surplus(&mut plugin, &grid_snapshot(JUNE + 6 * MINUTE, 5_000.0)).await;
    assert!(close(a, (draw - 5_000.0) / 690.0), "{a} A");
    assert_eq!(weight, 0.0);
    assert!(reason.contains("below its minimum"), "{reason}");
}

#[tokio::test]
async fn solar_surplus_reports_a_missing_meter_and_a_bad_config() {
    let f = fixture();
    let mut plugin = f
        .host
        .load_policy(
            spec(
                "solar",
                World::Policy,
                json!({ "evses": ["CP-0/1"], "pv_meter": "pv" }),
            ),
            SOLAR_SURPLUS,
        )
        .expect("load");
    let err = plugin
        .evaluate(&grid_snapshot(JUNE, -1_000.0))
        .await
        .expect_err("no PV reading");
    assert!(
        err.to_string().contains("no reading of the PV meter"),
        "{err}"
    );
    let mut bad = f
        .host
        .load_policy(
            spec(
                "bad",
                World::Policy,
                json!({ "evses": ["CP-0/1"], "phases": 2 }),
            ),
            SOLAR_SURPLUS,
        )
        .expect("load");
    let err = bad
        .evaluate(&grid_snapshot(JUNE, 0.0))
        .await
        .expect_err("bad");
    assert!(matches!(err, PluginError::Plugin { .. }), "{err:?}");
    assert!(err.to_string().contains("phases must be 1 or 3"), "{err}");
}

// -------------------------------------------------------------------------- tou-tariff

#[tokio::test]
async fn tou_tariff_prices_local_hours_and_holidays_through_the_host() {
    let f = fixture();
    let config = json!({
        "default_price": 0.25,
        "periods": [
            { "days": ["all"], "from": 23, "to": 7, "price": 0.20 },
            { "days": ["weekdays"], "from": 7, "to": 23, "price": 0.30 },
        ],
        "holidays": ["2026-06-02"],
        "horizon_h": 48,
    });
    let mut plugin = f
        .host
        .load_policy(spec("tou", World::Policy, config), TOU_TARIFF)
        .expect("load tou-tariff");
    // Monday 2026-06-01 00:00Z is 02:00 in Amsterdam (CEST, UTC+2), the snapshot's zone.
    let c = plugin
        .evaluate(&grid_snapshot(JUNE, 0.0))
        .await
        .expect("evaluate");
    assert!(c.limits.is_empty() && c.solar.is_empty() && c.hints.is_empty());
    assert_eq!(c.prices.len(), 192, "48 h of quarter-hours");
    assert_eq!(
        (c.prices[0].start, c.prices[0].end),
        (JUNE, JUNE + 15 * MINUTE)
    );
    let at = |h: i64, m: i64| {
        c.prices
            .iter()
            .find(|p| p.start == JUNE + h * 60 * MINUTE + m * MINUTE)
            .map(|p| p.price)
    };
    assert_eq!(at(4, 45), Some(0.20), "06:45 local: night");
    assert_eq!(at(5, 0), Some(0.30), "07:00 local on a Monday: day");
    assert_eq!(at(21, 0), Some(0.20), "23:00 local: night");
    assert_eq!(
        at(24 + 10, 0),
        Some(0.25),
        "Tuesday 12:00 local, a holiday: Sunday's price"
    );

    let mut elsewhere = grid_snapshot(JUNE, 0.0);
    elsewhere.time_zone = "Atlantis/Capital".into();
    let err = plugin.evaluate(&elsewhere).await.expect_err("bad zone");
    assert!(err.to_string().contains("unknown time zone"), "{err}");
}

// ----------------------------------------------------------------------- sunspec-meter

#[tokio::test]
async fn sunspec_meter_reads_the_sims_modbus_meter_and_reports_a_server_gone() {
    use loadstar_optimizer::model::PerLine as Lines;
    use loadstar_sims::site::MeterReading as SimReading;

    let (_tx, rx) = tokio::sync::watch::channel(SimReading {
        at: None,
        amps: Lines::new(10.0, -2.5, 8.0),
        watts: Lines::new(2300.0, -575.0, 1840.0),
        volts: Lines::new(230.0, 231.5, 229.0),
        import_wh: 123_456.0,
        export_wh: 789.0,
    });
    let served = loadstar_sims::meter::serve_sunspec(rx, "SN-1")
        .await
        .expect("sunspec server");
    let endpoint = served.addr.to_string();
    let f = fixture();
    let mut s = spec("grid", World::Meter, json!({ "endpoint": endpoint }));
    s.grants.modbus = vec![endpoint.clone()];
    let mut meter = f
        .host
        .load_meter(s, SUNSPEC_METER)
        .expect("load sunspec-meter");
    // Twice: the first walks the chain (marker at 40000, model 1, model 203), the second reads
    // the model's address directly.
    for _ in 0..2 {
        let r = meter.read().await.expect("read");
        assert_eq!(
            (r.current.l1, r.current.l2, r.current.l3),
            (Some(10.0), Some(-2.5), Some(8.0))
        );
        assert_eq!(
            (r.voltage.l1, r.voltage.l2, r.voltage.l3),
            (Some(230.0), Some(231.5), Some(229.0))
        );
        assert_eq!(
            (r.power.l1, r.power.l2, r.power.l3),
            (Some(2300.0), Some(-575.0), Some(1840.0))
        );
        assert_eq!(r.total_power, Some(3565.0));
        assert_eq!(r.energy_import, Some(123_456.0));
        assert_eq!(r.energy_export, Some(789.0));
    }

    // Not granted: denied, and said so.
    let mut s = spec("ungranted", World::Meter, json!({ "endpoint": endpoint }));
    s.grants.modbus = Vec::new();
    let mut denied = f.host.load_meter(s, SUNSPEC_METER).expect("load");
    let err = denied.read().await.expect_err("denied");
    assert!(err.to_string().contains("is not granted"), "{err}");

    // The device goes away: an error with the reason, not a trap.
    drop(served);
    tokio::time::sleep(Duration::from_millis(20)).await;
    let err = meter.read().await.expect_err("server gone");
    assert!(matches!(err, PluginError::Plugin { .. }), "{err:?}");
    assert!(err.to_string().contains(&endpoint), "{err}");
}

// --------------------------------------------------------------------- day-ahead-price

fn day_ahead(f: &Fixture, name: &str, addr: std::net::SocketAddr) -> PolicyPlugin {
    let mut s = spec(
        name,
        World::Policy,
        json!({ "url": format!("http://{addr}/tariff"), "refresh_s": 60 }),
    );
    s.grants.http = vec![addr.to_string()];
    f.host
        .load_policy(s, DAY_AHEAD_PRICE)
        .expect("load day-ahead-price")
}

#[tokio::test]
async fn day_ahead_price_fetches_the_sims_feed_and_answers_from_kv_when_it_is_gone() {
    use loadstar_sims::meter::TariffSlot;
    let at = |ms: i64| DateTime::<Utc>::from_timestamp_millis(ms).expect("time");
    // Four quarter-hours, then an hourly block.
    let mut slots: Vec<TariffSlot> = (0..4)
        .map(|i| TariffSlot {
            start: at(JUNE + i * 15 * MINUTE),
            end: at(JUNE + (i + 1) * 15 * MINUTE),
            price: [0.30, 0.31, 0.32, 0.33][i as usize],
        })
        .collect();
    slots.push(TariffSlot {
        start: at(JUNE + 60 * MINUTE),
        end: at(JUNE + 120 * MINUTE),
        price: 0.20,
    });
    let (_tx, rx) = tokio::sync::watch::channel(slots);
    let served = loadstar_sims::meter::serve_tariff(rx)
        .await
        .expect("tariff feed");
    let addr = served.addr;

    let f = fixture();
    let mut plugin = day_ahead(&f, "prices", addr);
    let c = plugin
        .evaluate(&grid_snapshot(JUNE, 0.0))
        .await
        .expect("evaluate");
    let got: Vec<(i64, i64, f64)> = c.prices.iter().map(|p| (p.start, p.end, p.price)).collect();
    assert_eq!(got.len(), 5);
    assert_eq!(got[0], (JUNE, JUNE + 15 * MINUTE, 0.30));
    assert_eq!(got[3], (JUNE + 45 * MINUTE, JUNE + 60 * MINUTE, 0.33));
    assert_eq!(got[4], (JUNE + 60 * MINUTE, JUNE + 120 * MINUTE, 0.20));
    assert!(
        c.prices[0].reason.contains("fetched"),
        "{}",
        c.prices[0].reason
    );
    drop(plugin);

    // The feed goes away; a new instance, past the refresh time, answers from its kv cache
    // (the block that is over left out).
    drop(served);
    tokio::time::sleep(Duration::from_millis(20)).await;
    let mut plugin = day_ahead(&f, "prices", addr);
    let c = plugin
        .evaluate(&grid_snapshot(JUNE + 20 * MINUTE, 0.0))
        .await
        .expect("the cached answer");
    assert_eq!(c.prices.len(), 4);
    assert_eq!(c.prices[0].start, JUNE + 15 * MINUTE);
    assert!(
        c.prices[0].reason.contains("the feed failed"),
        "{}",
        c.prices[0].reason
    );

    // Without a cache, the failure is the answer, with its reason.
    let mut fresh = day_ahead(&f, "fresh", addr);
    let err = fresh
        .evaluate(&grid_snapshot(JUNE, 0.0))
        .await
        .expect_err("no cache");
    assert!(matches!(err, PluginError::Plugin { .. }), "{err:?}");
    assert!(err.to_string().contains("no cached prices"), "{err}");
}

#[tokio::test]
async fn day_ahead_price_reports_a_garbage_feed() {
    let served = loadstar_sims::meter::serve_http(Arc::new(|path: &str| {
        (path == "/tariff").then(|| "<html>maintenance</html>".to_string())
    }))
    .await
    .expect("server");
    let f = fixture();
    let mut plugin = day_ahead(&f, "garbage", served.addr);
    let err = plugin
        .evaluate(&grid_snapshot(JUNE, 0.0))
        .await
        .expect_err("garbage");
    assert!(err.to_string().contains("not JSON"), "{err}");
}

// ------------------------------------------------------------------------------ reload

#[tokio::test]
async fn a_plugin_reloads_while_running_and_a_bad_reload_changes_nothing() {
    let f = fixture();
    let mut plugin = meter(&f, json!({ "mode": "ok" }));
    assert_eq!(plugin.read().await.expect("read").total_power, Some(1.0));

    // New config, same component: takes effect at the next read.
    f.host
        .reload_meter(
            &mut plugin,
            spec("probe", World::Meter, json!({ "mode": "fixed" })),
            PROBE_METER,
        )
        .expect("reload");
    let r = plugin.read().await.expect("read");
    assert_eq!(
        (r.current.l2, r.total_power),
        (Some(10.0), None),
        "the fixed mode's reading"
    );
    assert_eq!(plugin.status().reloads, 1);
    assert_eq!(plugin.status().calls, 2, "counters carry over");

    // A broken component or the wrong world is refused; the running plugin is untouched.
    let err = f
        .host
        .reload_meter(
            &mut plugin,
            spec("probe", World::Meter, json!({ "mode": "ok" })),
            b"\0asm broken",
        )
        .expect_err("junk");
    assert!(matches!(err, PluginError::Compile { .. }), "{err:?}");
    let err = f
        .host
        .reload_meter(
            &mut plugin,
            spec("probe", World::Meter, json!({ "mode": "ok" })),
            PROBE_POLICY,
        )
        .expect_err("a policy");
    assert!(matches!(err, PluginError::Instantiate { .. }), "{err:?}");
    assert_eq!(
        plugin
            .read()
            .await
            .expect("still the fixed mode")
            .current
            .l2,
        Some(10.0)
    );
    assert_eq!(plugin.status().reloads, 1);

    // Back to counting: the key-value data survived both reloads.
    f.host
        .reload_meter(
            &mut plugin,
            spec("probe", World::Meter, json!({ "mode": "ok" })),
            PROBE_METER,
        )
        .expect("reload");
    assert_eq!(plugin.read().await.expect("read").total_power, Some(2.0));
}

#[tokio::test]
async fn a_sleep_in_wasi_is_cut_off_and_a_log_flood_is_capped() {
    let f = fixture();
    let mut s = spec(
        "sleeper",
        World::Meter,
        json!({ "mode": "sleep", "once": true }),
    );
    s.limits.deadline_ms = 300;
    let mut plugin = meter_spec(&f, s);
    let t0 = Instant::now();
    let err = plugin.read().await.expect_err("cut off");
    assert!(matches!(err, PluginError::Timeout { .. }), "{err:?}");
    assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
    recovers(&mut plugin).await;

    let mut plugin = meter(&f, json!({ "mode": "log-flood" }));
    plugin.read().await.expect_err("flooded");
    assert_eq!(
        plugin.status().logs_dropped,
        900,
        "100 lines per call are kept"
    );
}

// ------------------------------------------------------------------------- plugin set

/// A site file whose `[[plugin]]` entries are `(name, world, wasm, config)`.
fn site_with_plugins(dir: &std::path::Path, plugins: &[(&str, &str, &str, &str)]) -> SiteConfig {
    let mut text = String::from(
        "[site]\ntimezone = \"Europe/Amsterdam\"\n\n[grid]\ntype = \"wye\"\nvoltage = 230.0\nlimit_a = 63.0\n",
    );
    for (name, world, wasm, config) in plugins {
        text.push_str(&format!(
            "\n[[plugin]]\nname = \"{name}\"\nworld = \"{world}\"\nwasm = \"{wasm}\"\nconfig = {config}\n"
        ));
    }
    SiteConfig::parse(&text, dir, &|_| None).unwrap_or_else(|e| panic!("{e}\n{text}"))
}

#[tokio::test]
async fn a_plugin_set_loads_a_site_files_plugins_and_follows_its_changes() {
    let f = fixture();
    let dir = tempfile::tempdir().expect("dir");
    std::fs::write(dir.path().join("meter.wasm"), PROBE_METER).expect("write");
    std::fs::write(dir.path().join("policy.wasm"), PROBE_POLICY).expect("write");
    let fixed = "{ mode = \"fixed\" }";
    let site = site_with_plugins(
        dir.path(),
        &[
            ("grid", "meter", "meter.wasm", fixed),
            ("cap", "policy", "policy.wasm", "{ mode = \"ok\" }"),
            ("gone", "meter", "missing.wasm", fixed),
            ("confused", "meter", "policy.wasm", fixed),
        ],
    );
    let (mut set, failed) = PluginSet::load(&f.host, site.plugins());
    assert_eq!(set.names().collect::<Vec<_>>(), ["grid", "cap"]);
    let failed: Vec<(&str, &PluginError)> = failed.iter().map(|(n, e)| (n.as_str(), e)).collect();
    assert!(
        matches!(
            failed[..],
            [
                ("gone", PluginError::Read { .. }),
                ("confused", PluginError::Instantiate { .. })
            ]
        ),
        "{failed:?}"
    );
    let grid = set.meter_mut("grid").expect("a meter");
    assert_eq!(grid.read().await.expect("read").current.l2, Some(10.0));
    assert!(set.policy_mut("grid").is_none(), "a meter is not a policy");
    assert!(set.meter_mut("cap").is_none());
    let snap = snapshot(2);
    let c = set
        .policy_mut("cap")
        .expect("policy")
        .evaluate(&snap)
        .await
        .expect("evaluate");
    assert_eq!(c.limits.len(), 1, "the `ok` mode");
    assert_eq!(
        set.meters_mut()
            .map(|(n, _)| n.to_string())
            .collect::<Vec<_>>(),
        ["grid"]
    );
    assert_eq!(set.policies_mut().count(), 1);
    let statuses = set.statuses();
    assert_eq!(
        statuses
            .iter()
            .map(|s| (s.name.as_str(), s.world, s.calls))
            .collect::<Vec<_>>(),
        [("grid", World::Meter, 1), ("cap", World::Policy, 1)]
    );

    // The policy's config changes, the missing component appears, a new plugin comes, the
    // confused one is dropped from the file, the meter stays as it is.
    std::fs::write(dir.path().join("missing.wasm"), PROBE_METER).expect("write");
    let site = site_with_plugins(
        dir.path(),
        &[
            ("grid", "meter", "meter.wasm", fixed),
            ("cap", "policy", "policy.wasm", "{ mode = \"echo\" }"),
            ("gone", "meter", "missing.wasm", fixed),
            ("extra", "policy", "policy.wasm", "{ mode = \"ok\" }"),
        ],
    );
    let report = set.reload(&f.host, &site);
    assert_eq!(report.unchanged, ["grid"]);
    assert_eq!(report.reloaded, ["cap"]);
    assert_eq!(report.added, ["gone", "extra"]);
    assert!(
        report.removed.is_empty() && report.failed.is_empty(),
        "{report:?}"
    );
    assert_eq!(
        set.names().collect::<Vec<_>>(),
        ["grid", "cap", "gone", "extra"]
    );
    let c = set
        .policy_mut("cap")
        .expect("policy")
        .evaluate(&snap)
        .await
        .expect("evaluate");
    assert_eq!(
        (c.limits.len(), c.hints.len()),
        (0, 2),
        "the `echo` mode now"
    );
    let counters = |set: &PluginSet, name: &str| {
        let s = set.statuses().into_iter().find(|s| s.name == name);
        s.map(|s| (s.reloads, s.calls))
    };
    assert_eq!(
        counters(&set, "cap"),
        Some((1, 2)),
        "counters carry over a reload"
    );
    assert_eq!(
        counters(&set, "grid"),
        Some((0, 1)),
        "an unchanged plugin is not touched"
    );

    // A component replaced on disk by junk fails to reload and keeps running; one that
    // changed world is loaded anew; entries gone from the file are dropped.
    std::fs::write(dir.path().join("meter.wasm"), b"\0asm junk").expect("write");
    let site = site_with_plugins(
        dir.path(),
        &[
            ("grid", "meter", "meter.wasm", fixed),
            ("cap", "policy", "policy.wasm", "{ mode = \"echo\" }"),
            ("extra", "meter", "missing.wasm", fixed),
        ],
    );
    let report = set.reload(&f.host, &site);
    assert_eq!(report.unchanged, ["cap"]);
    assert_eq!(report.reloaded, ["extra"]);
    assert_eq!(report.removed, ["gone"]);
    assert!(
        matches!(report.failed[..], [(ref n, PluginError::Compile { .. })] if n == "grid"),
        "{report:?}"
    );
    let grid = set.meter_mut("grid").expect("still loaded");
    assert_eq!(
        grid.read().await.expect("the old component").current.l2,
        Some(10.0)
    );
    let extra = set.meter_mut("extra").expect("now a meter");
    assert_eq!(extra.read().await.expect("read").current.l2, Some(10.0));
    assert!(set.policy_mut("extra").is_none());
    assert_eq!(set.len(), 3);
}

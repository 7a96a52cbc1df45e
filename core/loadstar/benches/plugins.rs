//! `cargo bench -p loadstar --bench plugins`: the plugin host's costs.
//!
//! - `read/fixed`: a steady-state meter read with one host call (the clock);
//! - `evaluate/100-evse`: a policy call with a 100-EVSE snapshot (the probe policy: halves the
//!   root limit, one hint), lifting and lowering the whole snapshot;
//! - `evaluate/peak-shaving-100-evse`: the `peak-shaving` reference policy on the same snapshot
//!   plus a grid meter reading (a limit for the rest of the quarter; no kv write in steady state);
//! - `evaluate/probe-0-evse`: the probe policy with no EVSEs, so the difference to
//!   `evaluate/100-evse` is what the 100 EVSEs cost to pass in;
//! - `load/memory`: load from a component this host compiled (InstancePre) plus the first read
//!   (instantiation included);
//! - `load/disk`: the same from the on-disk artifact (deserialization included);
//! - `load/compile`: the same with a cold compile (cranelift);
//! - `instantiate/*`: a fresh instance from the `InstancePre` alone (store with WASI context
//!   and limits, instantiation, the old instance dropped), for a meter and a policy;
//! - `compile/*`: a cold compile alone (`Component::new` through the host, no cache);
//! - `read/sunspec-loopback`, `read/http-json-loopback`: a meter read with its real host call,
//!   `sunspec-meter` against the sims' SunSpec Modbus TCP server and `http-json-meter` against
//!   the sims' HomeWizard P1 HTTP server, both on 127.0.0.1 and on the bench's runtime (so the
//!   server's work is in the figure; each call opens its own connection).
//!
//! Baseline in the same run: `baseline/block_on`, the cost of driving an empty future on the
//! same runtime, which every measured call here also pays.

use std::hint::black_box;
use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use loadstar::clock::Clock;
use loadstar::plugins::wit::{
    EvseState, EvseStatus, MeterReading, Node, PerLine, Reading, SiteSnapshot,
};
use loadstar::plugins::{CacheOutcome, HostOptions, PluginHost, PluginSpec, World};
use loadstar::store::{SledStore, Store};
use loadstar_optimizer::model::PerLine as Lines;
use loadstar_plugin_artifacts::{
    HTTP_JSON_METER, PEAK_SHAVING, PROBE_METER, PROBE_POLICY, SUNSPEC_METER,
};
use loadstar_sims::site::MeterReading as SimReading;

fn spec(name: &str, world: World, mode: &str) -> PluginSpec {
    let mut spec = PluginSpec::new(name, world);
    spec.config.insert("mode".into(), mode.into());
    spec
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
        nodes: vec![Node {
            id: "grid".into(),
            parent: None,
            limit: line(400.0),
        }],
        evses: (0..evses)
            .map(|i| EvseState {
                id: format!("CP-{i:03}/1"),
                node: "grid".into(),
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

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("temp dir");
    let store: Arc<dyn Store> =
        Arc::new(SledStore::open(&dir.path().join("store")).expect("store"));
    let options = HostOptions {
        cache_dir: Some(dir.path().join("plugin-cache")),
    };
    let host = PluginHost::new(options, store.clone(), Clock::real()).expect("host");

    c.bench_function("baseline/block_on", |b| {
        b.iter(|| rt.block_on(async { black_box(1) }))
    });

    let mut meter = host
        .load_meter(spec("m", World::Meter, "fixed"), PROBE_METER)
        .expect("load");
    rt.block_on(meter.read()).expect("first read");
    c.bench_function("read/fixed", |b| {
        b.iter(|| rt.block_on(meter.read()).expect("read"))
    });

    let mut policy = host
        .load_policy(spec("p", World::Policy, "ok"), PROBE_POLICY)
        .expect("load");
    let snap = snapshot(100);
    rt.block_on(policy.evaluate(&snap)).expect("first evaluate");
    c.bench_function("evaluate/100-evse", |b| {
        b.iter(|| rt.block_on(policy.evaluate(&snap)).expect("evaluate"))
    });
    let empty = snapshot(0);
    c.bench_function("evaluate/probe-0-evse", |b| {
        b.iter(|| rt.block_on(policy.evaluate(&empty)).expect("evaluate"))
    });

    let mut peak = host
        .load_policy(
            {
                let mut spec = PluginSpec::new("peak", World::Policy);
                spec.config.insert("target_kw".into(), 11.0.into());
                spec
            },
            PEAK_SHAVING,
        )
        .expect("load peak-shaving");
    let mut metered = snapshot(100);
    metered.meters.push(MeterReading {
        meter: "grid-meter".into(),
        node: Some("grid".into()),
        reading: Reading {
            timestamp: None,
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
            total_power: Some(9_000.0),
            energy_import: None,
            energy_export: None,
        },
    });
    rt.block_on(peak.evaluate(&metered))
        .expect("first evaluate");
    c.bench_function("evaluate/peak-shaving-100-evse", |b| {
        b.iter(|| rt.block_on(peak.evaluate(&metered)).expect("evaluate"))
    });

    let mut group = c.benchmark_group("load");
    group.sample_size(20);
    for (name, forget, expected) in [
        ("memory", false, CacheOutcome::Memory),
        ("disk", true, CacheOutcome::Disk),
    ] {
        group.bench_function(name, |b| {
            b.iter(|| {
                if forget {
                    host.forget_compiled();
                }
                let mut m = host
                    .load_meter(spec("m", World::Meter, "fixed"), PROBE_METER)
                    .expect("load");
                assert_eq!(m.status().loaded_from, expected);
                rt.block_on(m.read()).expect("read")
            })
        });
    }
    let cold = PluginHost::new(HostOptions::default(), store, Clock::real()).expect("host");
    group.bench_function("compile", |b| {
        b.iter(|| {
            cold.forget_compiled();
            let mut m = cold
                .load_meter(spec("m", World::Meter, "fixed"), PROBE_METER)
                .expect("load");
            assert_eq!(m.status().loaded_from, CacheOutcome::Compiled);
            rt.block_on(m.read()).expect("read")
        })
    });
    group.finish();

    let mut group = c.benchmark_group("instantiate");
    group.bench_function("probe-meter", |b| {
        b.iter(|| rt.block_on(meter.instantiate()).expect("instantiate"))
    });
    group.bench_function("peak-shaving", |b| {
        b.iter(|| rt.block_on(peak.instantiate()).expect("instantiate"))
    });
    group.finish();

    let mut group = c.benchmark_group("compile");
    group.sample_size(10);
    for (name, wasm) in [("probe-meter", PROBE_METER), ("peak-shaving", PEAK_SHAVING)] {
        group.bench_function(name, |b| {
            b.iter(|| {
                cold.forget_compiled();
                let (_, outcome) = cold.component(name, wasm).expect("compile");
                assert_eq!(outcome, CacheOutcome::Compiled);
            })
        });
    }
    group.finish();

    loopback_reads(c, &rt, &host);
}

/// Meter reads against real servers on 127.0.0.1 (the sims' meters).
fn loopback_reads(c: &mut Criterion, rt: &tokio::runtime::Runtime, host: &PluginHost) {
    let (_tx, rx) = tokio::sync::watch::channel(SimReading {
        at: None,
        amps: Lines::new(10.0, -2.5, 8.0),
        watts: Lines::new(2300.0, -575.0, 1840.0),
        volts: Lines::new(230.0, 231.5, 229.0),
        import_wh: 123_456.0,
        export_wh: 789.0,
    });
    let sunspec = rt
        .block_on(loadstar_sims::meter::serve_sunspec(rx.clone(), "SN-1"))
        .expect("sunspec server");
    let mut spec = PluginSpec::new("sunspec", World::Meter);
    spec.config
        .insert("endpoint".into(), sunspec.addr.to_string().into());
    spec.grants.modbus = vec![sunspec.addr.to_string()];
    // The first read walks the model chain; later reads read the model directly.
    bench_read(c, rt, host, "read/sunspec-loopback", spec, SUNSPEC_METER);

    let p1 = rt
        .block_on(loadstar_sims::meter::serve_homewizard(rx, false))
        .expect("http server");
    let mut spec = PluginSpec::new("p1", World::Meter);
    spec.config.insert("preset".into(), "homewizard-p1".into());
    spec.config
        .insert("base".into(), format!("http://{}", p1.addr).into());
    spec.grants.http = vec![p1.addr.to_string()];
    bench_read(
        c,
        rt,
        host,
        "read/http-json-loopback",
        spec,
        HTTP_JSON_METER,
    );
}

/// Loads a meter, checks a first read against the sims' reading, then benches its reads.
fn bench_read(
    c: &mut Criterion,
    rt: &tokio::runtime::Runtime,
    host: &PluginHost,
    name: &str,
    spec: PluginSpec,
    wasm: &[u8],
) {
    let mut meter = host.load_meter(spec, wasm).expect("load");
    let first = rt.block_on(meter.read()).expect("first read");
    assert_eq!(first.current.l2, Some(-2.5));
    c.bench_function(name, |b| {
        b.iter(|| rt.block_on(meter.read()).expect("read"))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);

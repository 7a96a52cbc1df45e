//! `cargo bench -p loadstar-optimizer --bench allocate`: allocate() on a 3-level tree
//! (grid → feeders → stations → EVSEs) with per-line limits, at 10 to 10,000 EVSEs.
//!
//! Baseline in the same run: `baseline_sum_loads`, one pass that sums every EVSE's line load
//! up its path at a fixed setpoint: the floor any allocator pays to check the limits once.

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use loadstar_optimizer::allocate::{Evse, Node, Problem, allocate};
use loadstar_optimizer::model::{ElectricalModel, Line, PerLine, StationWiring};

/// N EVSEs, one per station, 50 stations per feeder; a grid connection tight enough that
/// everyone gets less than their max and some feeders bind first.
fn problem(n: usize) -> Problem {
    let feeders = n.div_ceil(50);
    let mut nodes = vec![Node {
        id: "grid".into(),
        parent: None,
        limit: PerLine::splat(n as f64 * 9.0),
        limit_source: "physical".into(),
        uncontrolled: PerLine::splat(n as f64 * 0.5),
    }];
    for f in 0..feeders {
        // Every third feeder is tighter than its share of the grid.
        let per_evse = if f % 3 == 0 { 7.0 } else { 14.0 };
        nodes.push(Node {
            id: format!("feeder-{f}"),
            parent: Some(0),
            limit: PerLine::splat(50.0 * per_evse),
            limit_source: "physical".into(),
            uncontrolled: PerLine::ZERO,
        });
    }
    let rotations = [
        [Line::L1, Line::L2, Line::L3],
        [Line::L2, Line::L3, Line::L1],
        [Line::L3, Line::L1, Line::L2],
    ];
    let mut evses = Vec::with_capacity(n);
    for i in 0..n {
        let feeder = 1 + i / 50;
        let station = nodes.len();
        nodes.push(Node {
            id: format!("station-{i}"),
            parent: Some(feeder),
            limit: PerLine::splat(32.0),
            limit_source: "physical".into(),
            uncontrolled: PerLine::ZERO,
        });
        let wiring = if i % 5 == 0 {
            StationWiring::single_phase(rotations[i % 3][0])
        } else {
            StationWiring::three_phase(rotations[i % 3])
        };
        let Ok(circuit) = ElectricalModel::WYE_230_400.station(wiring) else {
            unreachable!("the wirings above are valid on a wye grid");
        };
        evses.push(Evse {
            id: format!("evse-{i}"),
            node: station,
            circuit,
            ev_phases: if i % 7 == 0 { 1 } else { 0 },
            min_a: 6.0,
            max_a: if i % 4 == 0 { 16.0 } else { 32.0 },
            may_pause: true,
            priority: 0,
            weight: 1.0 + (i % 3) as f64,
            energy_wh: (i * 37 % 1000) as f64,
            plan_a: None,
        });
    }
    Problem::new(nodes, evses, 0)
}

fn sum_loads(p: &Problem) -> f64 {
    let mut load = vec![PerLine::ZERO; p.nodes.len()];
    for e in &p.evses {
        let l = e.circuit.line_load(e.ev_phases, 6.0);
        let mut node = Some(e.node);
        while let Some(i) = node {
            load[i] += l;
            node = p.nodes[i].parent;
        }
    }
    load.iter().map(PerLine::sum).sum()
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("allocate");
    for n in [10usize, 100, 1_000, 10_000] {
        let p = problem(n);
        group.bench_with_input(BenchmarkId::new("baseline_sum_loads", n), &p, |b, p| {
            b.iter(|| black_box(sum_loads(black_box(p))));
        });
        group.bench_with_input(BenchmarkId::new("allocate", n), &p, |b, p| {
            b.iter(|| black_box(allocate(black_box(p))));
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);

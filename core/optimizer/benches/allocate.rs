//! `cargo bench -p loadstar-optimizer --bench allocate`: allocate() on a 3-level tree
//! (grid → feeders → stations → EVSEs) with per-line limits, at 10 to 10,000 EVSEs.
//!
//! Baseline in the same run: `baseline_sum_loads`, one pass that sums every EVSE's line load
//! up its path at a fixed setpoint: the floor any allocator pays to check the limits once.

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use loadstar_optimizer::allocate::{Problem, allocate};
use loadstar_optimizer::model::PerLine;

mod common;
use common::problem;

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

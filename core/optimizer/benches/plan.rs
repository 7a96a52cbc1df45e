//! `cargo bench -p loadstar-optimizer --bench plan`: plan() over 96 quarter-hour slots with 10
//! (the in-run baseline), 50 and 200 EVs on a 3-level tree (site → 4 feeders → one station per
//! EV), a time-of-use price, a midday solar surplus, staggered arrivals and departures.

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use loadstar_optimizer::model::{ElectricalModel, Line, PerLine, StationWiring};
use loadstar_optimizer::plan::{PlanEv, PlanNode, PlanProblem, PlanSlot, PlanStatus, plan};

const SLOTS: usize = 96;
const SLOT_S: i64 = 900;

fn problem(n: usize) -> PlanProblem {
    let slots: Vec<PlanSlot> = (0..SLOTS)
        .map(|t| {
            let hour = t / 4;
            PlanSlot {
                start_s: t as i64 * SLOT_S,
                duration_s: SLOT_S,
                price_per_kwh: match hour {
                    0..=6 | 22..=23 => 0.12,
                    17..=20 => 0.45,
                    _ => 0.28,
                },
                solar_surplus_w: if (10..15).contains(&hour) {
                    n as f64 * 900.0
                } else {
                    0.0
                },
            }
        })
        .collect();
    // The site fits about 9 A per EV; every feeder about 12 A per EV of its share.
    let mut nodes = vec![PlanNode {
        id: "site".into(),
        parent: None,
        headroom: (0..SLOTS)
            .map(|t| PerLine::splat(n as f64 * if (32..72).contains(&t) { 7.0 } else { 10.0 }))
            .collect(),
    }];
    for f in 0..4 {
        nodes.push(PlanNode {
            id: format!("feeder-{f}"),
            parent: Some(0),
            headroom: vec![PerLine::splat(n as f64 / 4.0 * 12.0); SLOTS],
        });
    }
    let rotations = [
        [Line::L1, Line::L2, Line::L3],
        [Line::L2, Line::L3, Line::L1],
        [Line::L3, Line::L1, Line::L2],
    ];
    let mut evs = Vec::with_capacity(n);
    for i in 0..n {
        let station = nodes.len();
        nodes.push(PlanNode {
            id: format!("station-{i}"),
            parent: Some(1 + i % 4),
            headroom: vec![PerLine::splat(32.0); SLOTS],
        });
        let wiring = if i % 5 == 0 {
            StationWiring::single_phase(rotations[i % 3][0])
        } else {
            StationWiring::three_phase(rotations[i % 3])
        };
        let Ok(circuit) = ElectricalModel::WYE_230_400.station(wiring) else {
            unreachable!("the wirings above are valid on a wye grid");
        };
        let arrival = (i * 7 % 40) as i64;
        let stay = 16 + (i * 13 % 60) as i64;
        evs.push(PlanEv {
            id: format!("ev-{i}"),
            node: station,
            circuit,
            ev_phases: 0,
            max_a: if i % 4 == 0 { 16.0 } else { 32.0 },
            arrival_s: arrival * SLOT_S,
            departure_s: (arrival + stay).min(SLOTS as i64) * SLOT_S,
            energy_wh: 5_000.0 + (i * 997 % 40_000) as f64,
            taper: None,
        });
    }
    PlanProblem::new(slots, nodes, evs)
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("plan");
    group.sample_size(10);
    for n in [10usize, 50, 200] {
        let p = problem(n);
        let out = plan(&p);
        assert_eq!(out.status, PlanStatus::Optimal, "{n} EVs");
        println!(
            "plan/{n}: clarabel {:.1} ms, {} iterations, {:.0} of {:.0} kWh planned",
            out.solve_time_s * 1e3,
            out.iterations,
            out.energy_wh / 1e3,
            p.evs.iter().map(|e| e.energy_wh).sum::<f64>() / 1e3
        );
        group.bench_with_input(BenchmarkId::new("plan", n), &p, |b, p| {
            b.iter(|| black_box(plan(black_box(p))));
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);

//! The benchmark problems, shared by the allocate and quality benches.

use loadstar_optimizer::allocate::{Evse, Node, Problem};
use loadstar_optimizer::model::{ElectricalModel, Line, PerLine, StationWiring};

/// N EVSEs, one per station, 50 stations per feeder; a grid connection tight enough that
/// everyone gets less than their max and some feeders bind first.
pub fn problem(n: usize) -> Problem {
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

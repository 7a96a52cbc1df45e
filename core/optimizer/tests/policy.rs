//! Tests for the reference policies: hand-checked values on small sites, safety of the
//! controlled baselines on random trees, Jain's index, and the offline optimum's feasibility.

use loadstar_optimizer::allocate::{Evse, Node, Problem, allocate};
use loadstar_optimizer::model::{ElectricalModel, Line, PerLine, StationWiring};
use loadstar_optimizer::plan::{PlanEv, PlanNode, PlanProblem, PlanSlot};
use loadstar_optimizer::policy::{
    equal_share, first_come_first_served, first_come_first_served_by_arrival, jain_index,
    offline_optimum, uncontrolled,
};
use proptest::prelude::*;

fn site(limit: f64) -> Vec<Node> {
    vec![Node {
        id: "site".into(),
        parent: None,
        limit: PerLine::splat(limit),
        limit_source: "physical".into(),
        uncontrolled: PerLine::ZERO,
    }]
}

fn evse(id: &str, node: usize, max_a: f64) -> Evse {
    Evse {
        id: id.into(),
        node,
        circuit: ElectricalModel::WYE_230_400
            .station(StationWiring::three_phase([Line::L1, Line::L2, Line::L3]))
            .expect("valid wiring"),
        ev_phases: 0,
        min_a: 6.0,
        max_a,
        may_pause: true,
        priority: 0,
        weight: 1.0,
        energy_wh: 0.0,
        plan_a: None,
    }
}

#[test]
fn uncontrolled_ignores_limits() {
    let p = Problem::new(site(10.0), vec![evse("a", 0, 32.0), evse("b", 0, 16.0)], 0);
    assert_eq!(uncontrolled(&p), vec![32.0, 16.0]);
}

#[test]
fn equal_share_does_not_pass_on_unused_shares() {
    let p = Problem::new(
        site(63.0),
        vec![evse("a", 0, 10.0), evse("b", 0, 32.0), evse("c", 0, 32.0)],
        0,
    );
    assert_eq!(equal_share(&p), vec![10.0, 21.0, 21.0]);
    // allocate() gives a's unused 11 A to the others.
    let alloc = allocate(&p).expect("valid problem");
    let amps: Vec<f64> = alloc.setpoints.iter().map(|s| s.amps).collect();
    assert_eq!(amps, vec![10.0, 26.5, 26.5]);
    // Twelve EVs on 63 A: 5.25 A each is below the minimum, so nobody charges.
    let many: Vec<Evse> = (0..12).map(|k| evse(&format!("e{k}"), 0, 32.0)).collect();
    let p = Problem::new(site(63.0), many, 0);
    assert!(equal_share(&p).iter().all(|&a| a == 0.0));
}

#[test]
fn first_come_first_served_starves_late_arrivals() {
    let evses: Vec<Evse> = (0..4).map(|k| evse(&format!("e{k}"), 0, 32.0)).collect();
    let p = Problem::new(site(63.0), evses, 0);
    assert_eq!(first_come_first_served(&p), vec![32.0, 31.0, 0.0, 0.0]);
    // With arrival times, the order of the list does not matter.
    assert_eq!(
        first_come_first_served_by_arrival(&p, &[30, 10, 20, 0]),
        Some(vec![0.0, 31.0, 0.0, 32.0])
    );
    assert_eq!(first_come_first_served_by_arrival(&p, &[0]), None);
    // A feeder limit on the first arrival's branch leaves the rest to the others.
    let mut nodes = site(63.0);
    nodes.push(Node {
        id: "feeder".into(),
        parent: Some(0),
        limit: PerLine::splat(20.0),
        limit_source: "physical".into(),
        uncontrolled: PerLine::ZERO,
    });
    let p = Problem::new(nodes, vec![evse("a", 1, 32.0), evse("b", 0, 32.0)], 0);
    assert_eq!(first_come_first_served(&p), vec![20.0, 32.0]);
}

#[test]
fn jain_index_bounds() {
    assert_eq!(jain_index(&[16.0, 16.0, 16.0]), 1.0);
    assert!((jain_index(&[30.0, 0.0, 0.0]) - 1.0 / 3.0).abs() < 1e-12);
    assert_eq!(jain_index(&[]), 1.0);
    assert_eq!(jain_index(&[0.0, 0.0]), 1.0);
}

#[test]
fn offline_optimum_says_which_targets_were_feasible() {
    // Four 15-minute slots; 20 A per line for everyone. "small" needs little; "big" needs
    // more than its 16 A can deliver in the hour it is there.
    let slots: Vec<PlanSlot> = (0..4)
        .map(|t| PlanSlot {
            start_s: t * 900,
            duration_s: 900,
            price_per_kwh: 0.2,
            solar_surplus_w: 0.0,
        })
        .collect();
    let circuit = ElectricalModel::WYE_230_400
        .station(StationWiring::three_phase([Line::L1, Line::L2, Line::L3]))
        .expect("valid wiring");
    let ev = |id: &str, energy_wh: f64| PlanEv {
        id: id.into(),
        node: 0,
        circuit,
        ev_phases: 0,
        max_a: 16.0,
        arrival_s: 0,
        departure_s: 3600,
        energy_wh,
        taper: None,
    };
    let problem = PlanProblem::new(
        slots,
        vec![PlanNode {
            id: "site".into(),
            parent: None,
            headroom: vec![PerLine::splat(20.0); 4],
        }],
        vec![ev("small", 1_000.0), ev("big", 20_000.0)],
    );
    let opt = offline_optimum(&problem);
    assert_eq!(opt.feasible, vec![true, false]);
    assert_eq!(opt.feasible_for("big"), Some(false));
    assert_eq!(opt.feasible_for("nobody"), None);
    assert!(opt.ev("small").is_some_and(|e| e.shortfall_wh < 1.0));
    // "big" takes its full 16 A for the hour (11,040 Wh) next to "small"'s 1,000 Wh.
    assert!(
        (opt.plan.energy_wh - 12_040.0).abs() < 2.0,
        "{}",
        opt.plan.energy_wh
    );
    assert!((opt.plan.evs[1].shortfall_wh - (20_000.0 - 11_040.0)).abs() < 2.0);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// The two controlled baselines never exceed a limit, and stay 0 or within [min, max].
    #[test]
    fn controlled_baselines_are_safe(
        limits in prop::collection::vec(0.0..100.0_f64, 1..4),
        maxes in prop::collection::vec((0usize..4, 6.0..32.0_f64), 1..10),
    ) {
        let mut nodes = site(limits[0]);
        for (k, &l) in limits.iter().enumerate().skip(1) {
            nodes.push(Node {
                id: format!("n{k}"),
                parent: Some(0),
                limit: PerLine::splat(l),
                limit_source: "physical".into(),
                uncontrolled: PerLine::ZERO,
            });
        }
        let evses: Vec<Evse> = maxes
            .iter()
            .enumerate()
            .map(|(k, &(nd, max))| evse(&format!("e{k}"), nd % nodes.len(), max))
            .collect();
        let p = Problem::new(nodes, evses, 0);
        for amps in [equal_share(&p), first_come_first_served(&p)] {
            let mut load = vec![0.0; p.nodes.len()];
            for (e, &a) in p.evses.iter().zip(&amps) {
                prop_assert!(a == 0.0 || (e.min_a <= a && a <= e.max_a));
                load[e.node] += a;
                if e.node != 0 {
                    load[0] += a;
                }
            }
            for (nd, l) in load.iter().enumerate() {
                prop_assert!(*l <= p.nodes[nd].limit[Line::L1] + 1e-9);
            }
        }
    }
}

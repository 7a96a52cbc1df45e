//! Tests for the per-tick allocator: hand-checked cases, an independent max-min reference,
//! rotation over simulated ticks, and properties on random trees.

use loadstar_optimizer::allocate::{
    AllocateError, Allocation, Binding, DEFAULT_TURN_S, Evse, EvseLimits, LimitConstraint, Node,
    PauseReason, Problem, Rotation, RotationEntry, allocate, effective_limit, uncontrolled_load,
};
use loadstar_optimizer::model::{ElectricalModel, Line, PerLine, StationCircuit, StationWiring};
use proptest::prelude::*;

use Line::{L1, L2, L3};

const TOL: f64 = 1e-6;

fn wye_station(wiring: StationWiring) -> StationCircuit {
    ElectricalModel::WYE_230_400
        .station(wiring)
        .expect("valid wiring")
}

fn delta_station(wiring: StationWiring) -> StationCircuit {
    ElectricalModel::DELTA_IT_230
        .station(wiring)
        .expect("valid wiring")
}

fn three_phase() -> StationCircuit {
    wye_station(StationWiring::three_phase([L1, L2, L3]))
}

fn node(id: &str, parent: Option<usize>, limit: PerLine, source: &str) -> Node {
    Node {
        id: id.to_owned(),
        parent,
        limit,
        limit_source: source.into(),
        uncontrolled: PerLine::ZERO,
    }
}

fn evse(id: &str, node: usize, circuit: StationCircuit, min_a: f64, max_a: f64) -> Evse {
    Evse {
        id: id.to_owned(),
        node,
        circuit,
        ev_phases: 0,
        min_a,
        max_a,
        may_pause: true,
        priority: 0,
        weight: 1.0,
        energy_wh: 0.0,
        plan_a: None,
    }
}

fn run(problem: &Problem) -> Allocation {
    allocate(problem).expect("structurally valid problem")
}

fn amps(alloc: &Allocation, id: &str) -> f64 {
    setpoint(alloc, id).0
}

fn setpoint(alloc: &Allocation, id: &str) -> (f64, Binding) {
    let s = alloc
        .setpoints
        .iter()
        .find(|s| s.evse == id)
        .expect("setpoint for every EVSE");
    (s.amps, s.bound.clone())
}

fn node_bound(node: &str, line: Line, source: &str) -> Binding {
    Binding::Node {
        node: node.to_owned(),
        line,
        source: source.to_owned(),
    }
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < TOL
}

fn is_charging(bound: &Binding) -> bool {
    matches!(
        bound,
        Binding::Node { .. } | Binding::EvseMax | Binding::Plan
    )
}

// ---------------------------------------------------------------------------------------------
// Independent checks used by hand-written and property tests
// ---------------------------------------------------------------------------------------------

fn headroom(problem: &Problem) -> Vec<PerLine> {
    problem
        .nodes
        .iter()
        .map(|n| (n.limit - n.uncontrolled).map(|v| if v > 0.0 { v } else { 0.0 }))
        .collect()
}

fn path(problem: &Problem, mut at: usize) -> Vec<usize> {
    let mut out = vec![at];
    while let Some(p) = problem.nodes[at].parent {
        out.push(p);
        at = p;
    }
    out
}

/// Loads per node from a list of per-EVSE amps, summed in reverse order (a different order from
/// the allocator's on purpose).
fn loads_of(problem: &Problem, amps: &[f64]) -> Vec<PerLine> {
    let mut load = vec![PerLine::ZERO; problem.nodes.len()];
    for (e, &a) in problem.evses.iter().zip(amps).rev() {
        for nd in path(problem, e.node) {
            load[nd] += e.circuit.line_load(e.ev_phases, a);
        }
    }
    load
}

fn mins_fit(problem: &Problem, charging: &[bool]) -> bool {
    let mins: Vec<f64> = problem
        .evses
        .iter()
        .zip(charging)
        .map(|(e, &c)| if c { e.min_a } else { 0.0 })
        .collect();
    let h = headroom(problem);
    loads_of(problem, &mins)
        .iter()
        .zip(&h)
        .all(|(l, h)| l.0.iter().zip(h.0).all(|(l, h)| *l <= h + TOL))
}

/// Safety, setpoint range and work conservation.
fn check_invariants(problem: &Problem, alloc: &Allocation) -> Result<(), String> {
    if alloc.setpoints.len() != problem.evses.len() {
        return Err("one setpoint per EVSE".into());
    }
    let amps: Vec<f64> = alloc.setpoints.iter().map(|s| s.amps).collect();
    let load = loads_of(problem, &amps);
    let h = headroom(problem);
    for (nd, (l, h)) in load.iter().zip(&h).enumerate() {
        for line in Line::ALL {
            if l[line] > h[line] + TOL {
                return Err(format!(
                    "node {nd} {line}: load {} > headroom {}",
                    l[line], h[line]
                ));
            }
        }
    }
    for (e, s) in problem.evses.iter().zip(&alloc.setpoints) {
        if s.evse != e.id {
            return Err(format!("setpoint order: {} vs {}", s.evse, e.id));
        }
        if s.amps.is_nan() {
            return Err(format!("{}: NaN", e.id));
        }
        if s.amps != 0.0 && !(e.min_a <= s.amps && s.amps <= e.max_a) {
            return Err(format!(
                "{}: {} A outside [{}, {}]",
                e.id, s.amps, e.min_a, e.max_a
            ));
        }
        if !is_charging(&s.bound) {
            if s.amps != 0.0 {
                return Err(format!("{}: paused/invalid but {} A", e.id, s.amps));
            }
            continue;
        }
        let c = e.circuit.line_coefficients(e.ev_phases);
        let tight = |nd: usize, line: Line| h[nd][line] - load[nd][line] <= TOL;
        // The plan caps an EVSE at max(plan_a, min_a).
        let cap = e.plan_a.map_or(e.max_a, |p| e.max_a.min(p.max(e.min_a)));
        if s.bound == Binding::Plan && !close(s.amps, cap) {
            return Err(format!(
                "{}: bound by the plan at {} A, plan cap {cap}",
                e.id, s.amps
            ));
        }
        if s.amps > cap + TOL {
            return Err(format!("{}: {} A above the plan cap {cap}", e.id, s.amps));
        }
        if s.amps < cap - TOL {
            let any = path(problem, e.node)
                .into_iter()
                .any(|nd| Line::ALL.into_iter().any(|l| c[l] > 0.0 && tight(nd, l)));
            if !any {
                return Err(format!(
                    "{}: {} A below its cap {cap} with no tight constraint",
                    e.id, s.amps
                ));
            }
        }
        if let Binding::Node { node, line, .. } = &s.bound {
            let nd = problem
                .nodes
                .iter()
                .position(|n| &n.id == node)
                .ok_or("binding names unknown node")?;
            if !path(problem, e.node).contains(&nd) || c[*line] == 0.0 || !tight(nd, *line) {
                return Err(format!(
                    "{}: binding {node} {line} not tight on its path",
                    e.id
                ));
            }
        }
    }
    for id in alloc.rotation.keys() {
        if !problem.evses.iter().any(|e| &e.id == id) {
            return Err(format!("rotation keeps unknown EVSE {id}"));
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Hand-checked cases
// ---------------------------------------------------------------------------------------------

#[test]
fn single_phase_ev_on_rotated_station_loads_only_l2() {
    let rotated = wye_station(StationWiring::three_phase([L2, L3, L1]));
    let mut a = evse("a", 0, rotated, 6.0, 32.0);
    a.ev_phases = 1;
    let b = evse(
        "b",
        0,
        wye_station(StationWiring::single_phase(L1)),
        6.0,
        32.0,
    );
    let c = evse(
        "c",
        0,
        wye_station(StationWiring::single_phase(L3)),
        6.0,
        32.0,
    );
    let problem = Problem::new(
        vec![node(
            "site",
            None,
            PerLine::new(32.0, 16.0, 32.0),
            "physical",
        )],
        vec![a, b, c],
        0,
    );
    let alloc = run(&problem);
    assert_eq!(
        setpoint(&alloc, "a"),
        (16.0, node_bound("site", L2, "physical"))
    );
    assert_eq!(setpoint(&alloc, "b"), (32.0, Binding::EvseMax));
    assert_eq!(setpoint(&alloc, "c"), (32.0, Binding::EvseMax));
    check_invariants(&problem, &alloc).unwrap();
}

#[test]
fn line_to_line_charger_on_delta_loads_two_lines() {
    let a = evse(
        "a",
        0,
        delta_station(StationWiring::single_phase_line_to_line(L1, L2)),
        6.0,
        32.0,
    );
    let b = evse(
        "b",
        0,
        delta_station(StationWiring::single_phase_line_to_line(L2, L3)),
        6.0,
        32.0,
    );
    let problem = Problem::new(
        vec![node("site", None, PerLine::splat(40.0), "physical")],
        vec![a, b],
        0,
    );
    let alloc = run(&problem);
    // L2 carries both chargers: 20 A each; L1 and L3 carry 20 A.
    for id in ["a", "b"] {
        let (amps, bound) = setpoint(&alloc, id);
        assert!(close(amps, 20.0), "{id}: {amps}");
        assert_eq!(bound, node_bound("site", L2, "physical"));
    }
    let load = loads_of(&problem, &[amps(&alloc, "a"), amps(&alloc, "b")]);
    assert!(close(load[0][L1], 20.0) && close(load[0][L2], 40.0) && close(load[0][L3], 20.0));
    check_invariants(&problem, &alloc).unwrap();
}

#[test]
fn feeder_limit_binds_before_site_limit() {
    let nodes = vec![
        node("site", None, PerLine::splat(63.0), "physical"),
        node("feeder-1", Some(0), PerLine::splat(20.0), "physical"),
    ];
    let evses = vec![
        evse("a", 1, three_phase(), 6.0, 32.0),
        evse("b", 1, three_phase(), 6.0, 32.0),
        evse("c", 0, three_phase(), 6.0, 32.0),
    ];
    let mut problem = Problem::new(nodes, evses, 0);
    let alloc = run(&problem);
    for id in ["a", "b"] {
        assert_eq!(
            setpoint(&alloc, id),
            (10.0, node_bound("feeder-1", L1, "physical"))
        );
    }
    assert_eq!(setpoint(&alloc, "c"), (32.0, Binding::EvseMax));
    check_invariants(&problem, &alloc).unwrap();

    // A demand-response event on the site now binds c, and its source is reported.
    problem.nodes[0].limit = PerLine::splat(40.0);
    problem.nodes[0].limit_source = "dr:event-7".into();
    let alloc = run(&problem);
    assert_eq!(
        setpoint(&alloc, "a"),
        (10.0, node_bound("feeder-1", L1, "physical"))
    );
    let (c, bound) = setpoint(&alloc, "c");
    assert!(close(c, 20.0), "{c}");
    assert_eq!(bound, node_bound("site", L1, "dr:event-7"));
    check_invariants(&problem, &alloc).unwrap();
}

#[test]
fn learned_ev_cap_leaves_the_rest_to_others() {
    // Alone, an EV capped at 10 A on a 16 A station takes 10 A and leaves 6 A.
    let mut a = evse("a", 1, three_phase(), 6.0, 10.0);
    let nodes = vec![
        node("site", None, PerLine::splat(16.0), "physical"),
        node("station-a", Some(0), PerLine::splat(16.0), "physical"),
    ];
    let problem = Problem::new(nodes.clone(), vec![a.clone()], 0);
    let alloc = run(&problem);
    assert_eq!(setpoint(&alloc, "a"), (10.0, Binding::EvseMax));

    // With another EV on the site, a (weight 3) still stops at its cap and b gets the 6 A left.
    a.weight = 3.0;
    let b = evse("b", 0, three_phase(), 6.0, 32.0);
    let problem = Problem::new(nodes, vec![a, b], 0);
    let alloc = run(&problem);
    assert_eq!(setpoint(&alloc, "a"), (10.0, Binding::EvseMax));
    let (b_amps, bound) = setpoint(&alloc, "b");
    assert!(close(b_amps, 6.0), "{b_amps}");
    assert_eq!(bound, node_bound("site", L1, "physical"));
    check_invariants(&problem, &alloc).unwrap();
}

#[test]
fn uncontrolled_load_reduces_headroom() {
    let mut site = node("site", None, PerLine::splat(32.0), "physical");
    site.uncontrolled = PerLine::new(10.0, 40.0, 0.0);
    let problem = Problem::new(
        vec![site],
        vec![
            evse(
                "a",
                0,
                wye_station(StationWiring::single_phase(L1)),
                6.0,
                32.0,
            ),
            evse(
                "b",
                0,
                wye_station(StationWiring::single_phase(L2)),
                6.0,
                32.0,
            ),
            evse(
                "c",
                0,
                wye_station(StationWiring::single_phase(L3)),
                0.0,
                32.0,
            ),
        ],
        0,
    );
    let alloc = run(&problem);
    assert_eq!(amps(&alloc, "a"), 22.0);
    assert_eq!(
        setpoint(&alloc, "b"),
        (0.0, Binding::Paused(PauseReason::NoRoomForMinimum))
    );
    assert_eq!(setpoint(&alloc, "c"), (32.0, Binding::EvseMax));
    check_invariants(&problem, &alloc).unwrap();
}

#[test]
fn nan_limit_counts_as_no_headroom() {
    let problem = Problem::new(
        vec![node(
            "site",
            None,
            PerLine::new(f64::NAN, 32.0, 32.0),
            "physical",
        )],
        vec![
            evse("a", 0, three_phase(), 6.0, 32.0),
            evse("b", 0, three_phase(), 0.0, 32.0),
        ],
        0,
    );
    let alloc = run(&problem);
    assert_eq!(
        setpoint(&alloc, "a"),
        (0.0, Binding::Paused(PauseReason::NoRoomForMinimum))
    );
    assert_eq!(
        setpoint(&alloc, "b"),
        (0.0, node_bound("site", L1, "physical"))
    );
}

#[test]
fn priority_decides_who_gets_the_minimum() {
    let mut low = evse("a-low", 0, three_phase(), 6.0, 32.0);
    low.priority = 0;
    let mut high = evse("z-high", 0, three_phase(), 6.0, 32.0);
    high.priority = 5;
    high.energy_wh = 50_000.0;
    let problem = Problem::new(
        vec![node("site", None, PerLine::splat(10.0), "physical")],
        vec![low, high],
        0,
    );
    let alloc = run(&problem);
    assert_eq!(amps(&alloc, "z-high"), 10.0);
    assert_eq!(
        setpoint(&alloc, "a-low"),
        (0.0, Binding::Paused(PauseReason::NoRoomForMinimum))
    );
}

#[test]
fn paused_evse_waits_for_dwell_then_resumes() {
    let mut problem = Problem::new(
        vec![node("site", None, PerLine::splat(32.0), "physical")],
        vec![evse("a", 0, three_phase(), 6.0, 32.0)],
        100,
    );
    problem.rotation.insert(
        "a".to_owned(),
        RotationEntry {
            paused: true,
            since_s: 0,
        },
    );
    problem.rotation.insert(
        "gone".to_owned(),
        RotationEntry {
            paused: true,
            since_s: 0,
        },
    );
    let alloc = run(&problem);
    assert_eq!(
        setpoint(&alloc, "a"),
        (0.0, Binding::Paused(PauseReason::Dwell))
    );
    assert_eq!(
        alloc.rotation.get("a"),
        Some(&RotationEntry {
            paused: true,
            since_s: 0
        })
    );
    assert!(!alloc.rotation.contains_key("gone"));

    problem.now_s = 300;
    let alloc = run(&problem);
    assert_eq!(setpoint(&alloc, "a"), (32.0, Binding::EvseMax));
    assert_eq!(
        alloc.rotation.get("a"),
        Some(&RotationEntry {
            paused: false,
            since_s: 300
        })
    );
}

#[test]
fn safety_pauses_even_inside_dwell_and_may_pause_false_last() {
    let mut keep = evse("keep", 0, three_phase(), 6.0, 32.0);
    keep.may_pause = false;
    keep.energy_wh = 99_000.0;
    let other = evse("other", 0, three_phase(), 6.0, 32.0);
    let mut problem = Problem::new(
        vec![node("site", None, PerLine::splat(8.0), "physical")],
        vec![keep, other],
        10,
    );
    for id in ["keep", "other"] {
        problem.rotation.insert(
            id.to_owned(),
            RotationEntry {
                paused: false,
                since_s: 0,
            },
        );
    }
    let alloc = run(&problem);
    assert_eq!(amps(&alloc, "keep"), 8.0);
    assert_eq!(
        setpoint(&alloc, "other"),
        (0.0, Binding::Paused(PauseReason::NoRoomForMinimum))
    );
    assert_eq!(
        alloc.rotation["other"],
        RotationEntry {
            paused: true,
            since_s: 10
        }
    );
    check_invariants(&problem, &alloc).unwrap();
}

#[test]
fn effective_limit_names_the_binding_source_per_line() {
    let constraints = vec![
        LimitConstraint {
            source: "dr:event-7".into(),
            limit: PerLine::splat(55.0),
            from_s: 0,
            until_s: 3_600,
        },
        LimitConstraint {
            source: "override".into(),
            limit: PerLine::splat(20.0),
            from_s: -3_600,
            until_s: 0, // expired at now = 0
        },
        LimitConstraint {
            source: "policy:peak".into(),
            limit: PerLine::new(70.0, 55.0, f64::NAN), // a NaN never loosens: it is 0
            from_s: 0,
            until_s: 60,
        },
    ];
    let (limit, sources) = effective_limit(PerLine::new(50.0, 63.0, 63.0), &constraints, 0);
    assert_eq!(limit, PerLine::new(50.0, 55.0, 0.0));
    assert_eq!(sources.get(L1), "physical");
    // On a tie the earlier constraint is named.
    assert_eq!(sources.get(L2), "dr:event-7");
    assert_eq!(sources.get(L3), "policy:peak");

    // In allocate(), a binding names the source of its own line.
    let (limit, sources) = effective_limit(PerLine::new(50.0, 63.0, 63.0), &constraints[..1], 0);
    let mut site = node("site", None, limit, "unused");
    site.limit_source = sources;
    let l1 = evse(
        "on-l1",
        0,
        wye_station(StationWiring::single_phase(L1)),
        6.0,
        80.0,
    );
    let l2 = evse(
        "on-l2",
        0,
        wye_station(StationWiring::single_phase(L2)),
        6.0,
        80.0,
    );
    let problem = Problem::new(vec![site], vec![l1, l2], 0);
    let alloc = run(&problem);
    assert_eq!(
        setpoint(&alloc, "on-l1"),
        (50.0, node_bound("site", L1, "physical"))
    );
    assert_eq!(
        setpoint(&alloc, "on-l2"),
        (55.0, node_bound("site", L2, "dr:event-7"))
    );

    // Uncontrolled load: meter minus the controlled EVSEs plus the non-compliant reserve.
    let u = uncontrolled_load(
        PerLine::new(40.0, 30.0, -5.0),
        PerLine::new(16.0, 16.0, 0.0),
        PerLine::new(0.0, 10.0, 0.0),
    );
    assert_eq!(u, PerLine::new(24.0, 24.0, -5.0));
}

#[test]
fn evse_limits_take_the_smallest_known_maximum() {
    let mut l = EvseLimits {
        charger_a: 32.0,
        ..Default::default()
    };
    assert_eq!((l.min_a(), l.max_a()), (6.0, 32.0));
    l.cable_a = Some(20.0);
    l.ev_max_a = Some(16.0);
    assert_eq!(l.max_a(), 16.0);
    l.learned_cap_a = Some(10.5);
    l.ev_min_a = Some(8.0);
    assert_eq!((l.min_a(), l.max_a()), (8.0, 10.5));
    // Garbage from a station never loosens: NaN maxima are ignored, a NaN minimum is 6 A.
    l.learned_cap_a = Some(f64::NAN);
    l.ev_min_a = Some(f64::NAN);
    assert_eq!((l.min_a(), l.max_a()), (6.0, 16.0));
}

#[test]
fn plan_caps_and_idles_evses() {
    let nodes = vec![node("site", None, PerLine::splat(63.0), "physical")];
    let mut a = evse("a", 0, three_phase(), 6.0, 32.0);
    let mut b = evse("b", 0, three_phase(), 6.0, 32.0);
    let mut c = evse("c", 0, three_phase(), 6.0, 32.0);
    a.plan_a = Some(10.0); // capped by the plan below its max
    b.plan_a = Some(1.0); // the plan idles it this slot
    c.plan_a = Some(4.0); // above half the minimum: charges at the minimum at least
    let problem = Problem::new(nodes.clone(), vec![a.clone(), b.clone(), c], 0);
    let alloc = run(&problem);
    assert_eq!(setpoint(&alloc, "a"), (10.0, Binding::Plan));
    assert_eq!(
        setpoint(&alloc, "b"),
        (0.0, Binding::Paused(PauseReason::Plan))
    );
    assert_eq!(setpoint(&alloc, "c"), (6.0, Binding::Plan));
    assert!(alloc.rotation["b"].paused);
    check_invariants(&problem, &alloc).unwrap();

    // Dwell beats the plan: b resumed 60 s ago, so it keeps charging (at its minimum).
    let mut problem = Problem::new(nodes.clone(), vec![a.clone(), b.clone()], 100);
    problem.rotation.insert(
        "b".into(),
        RotationEntry {
            paused: false,
            since_s: 40,
        },
    );
    let alloc = run(&problem);
    assert_eq!(setpoint(&alloc, "b"), (6.0, Binding::Plan));

    // An EVSE that must not pause charges whatever the plan says.
    b.may_pause = false;
    let problem = Problem::new(nodes.clone(), vec![a.clone(), b.clone()], 0);
    assert_eq!(setpoint(&run(&problem), "b"), (6.0, Binding::Plan));

    // A plan above the limits is just a cap: the site still binds.
    a.plan_a = Some(40.0);
    let d = evse("d", 0, three_phase(), 6.0, 32.0);
    let problem = Problem::new(nodes.clone(), vec![a.clone(), d], 0);
    let alloc = run(&problem);
    assert_eq!(
        setpoint(&alloc, "a"),
        (31.5, node_bound("site", L1, "physical"))
    );

    // A bad plan value makes the EVSE invalid, not the problem.
    a.plan_a = Some(f64::NAN);
    let problem = Problem::new(nodes, vec![a], 0);
    assert!(matches!(
        setpoint(&run(&problem), "a").1,
        Binding::Invalid(_)
    ));
}

#[test]
fn invalid_evses_get_zero_and_do_not_disturb_others() {
    let mut nan = evse("nan", 0, three_phase(), f64::NAN, 32.0);
    nan.energy_wh = 1.0;
    let backwards = evse("backwards", 0, three_phase(), 20.0, 10.0);
    let mut weightless = evse("weightless", 0, three_phase(), 6.0, 32.0);
    weightless.weight = 0.0;
    let ok = evse("ok", 0, three_phase(), 6.0, 32.0);
    let problem = Problem::new(
        vec![node("site", None, PerLine::splat(16.0), "physical")],
        vec![nan, backwards, weightless, ok],
        0,
    );
    let alloc = run(&problem);
    for id in ["nan", "backwards", "weightless"] {
        let (a, bound) = setpoint(&alloc, id);
        assert_eq!(a, 0.0);
        assert!(matches!(bound, Binding::Invalid(_)), "{id}: {bound:?}");
    }
    assert_eq!(amps(&alloc, "ok"), 16.0);
}

#[test]
fn structural_errors() {
    let site = node("site", None, PerLine::splat(16.0), "physical");
    let bad_order = Problem::new(
        vec![
            site.clone(),
            node("child", Some(2), PerLine::splat(16.0), "physical"),
            node("later", Some(0), PerLine::splat(16.0), "physical"),
        ],
        vec![],
        0,
    );
    assert!(matches!(
        allocate(&bad_order),
        Err(AllocateError::ParentOrder { index: 1, .. })
    ));
    let second_root = Problem::new(
        vec![site.clone(), node("x", None, PerLine::splat(1.0), "p")],
        vec![],
        0,
    );
    assert!(matches!(
        allocate(&second_root),
        Err(AllocateError::ParentOrder { index: 1, .. })
    ));
    let root_with_parent = Problem::new(
        vec![node("site", Some(0), PerLine::splat(1.0), "p")],
        vec![],
        0,
    );
    assert!(matches!(
        allocate(&root_with_parent),
        Err(AllocateError::RootHasParent { .. })
    ));
    let missing = Problem::new(
        vec![site.clone()],
        vec![evse("a", 3, three_phase(), 6.0, 16.0)],
        0,
    );
    assert_eq!(
        allocate(&missing),
        Err(AllocateError::MissingNode {
            evse: "a".into(),
            node: 3
        })
    );
    let dup = Problem::new(
        vec![site],
        vec![
            evse("a", 0, three_phase(), 6.0, 16.0),
            evse("a", 0, three_phase(), 6.0, 16.0),
        ],
        0,
    );
    assert!(matches!(
        allocate(&dup),
        Err(AllocateError::DuplicateEvse { .. })
    ));
    let empty = Problem::new(vec![], vec![], 0);
    assert_eq!(run(&empty).setpoints, vec![]);
}

#[test]
fn hundred_evs_on_63_a_rotate_fairly() {
    // A turn as long as the dwell, and the default turn three times as long.
    rotate_fairly(300);
    rotate_fairly(DEFAULT_TURN_S);
}

fn rotate_fairly(turn_s: i64) {
    let evses: Vec<Evse> = (0..100)
        .map(|k| evse(&format!("ev-{k:03}"), 0, three_phase(), 6.0, 32.0))
        .collect();
    let mut problem = Problem::new(
        vec![node("site", None, PerLine::splat(63.0), "physical")],
        evses,
        0,
    );
    problem.turn_s = turn_s;
    let mut charged = [false; 100];
    let mut first_all_charged = None;
    let mut charging_since: [Option<i64>; 100] = [None; 100];
    for tick in 0..16 * turn_s / 60 {
        let alloc = run(&problem);
        check_invariants(&problem, &alloc).unwrap();
        let charging: Vec<usize> = (0..100)
            .filter(|&k| is_charging(&alloc.setpoints[k].bound))
            .collect();
        // Nobody loses the charger before its turn is over.
        for (k, since) in charging_since.iter_mut().enumerate() {
            match (charging.contains(&k), *since) {
                (true, None) => *since = Some(problem.now_s),
                (false, Some(t)) => {
                    assert!(
                        problem.now_s - t >= turn_s,
                        "ev {k} paused after {} s of a {turn_s} s turn",
                        problem.now_s - t
                    );
                    *since = None;
                }
                _ => {}
            }
        }
        assert!(charging.len() <= 10, "tick {tick}: {}", charging.len());
        assert_eq!(charging.len(), 10, "work conservation at tick {tick}");
        for (k, s) in alloc.setpoints.iter().enumerate() {
            if charging.contains(&k) {
                assert!(close(s.amps, 6.3), "{}: {}", s.evse, s.amps);
                charged[k] = true;
            } else if tick == 0 {
                assert_eq!(s.bound, Binding::Paused(PauseReason::NoRoomForMinimum));
            } else {
                assert!(matches!(s.bound, Binding::Paused(_)), "{s:?}");
            }
        }
        if first_all_charged.is_none() && charged.iter().all(|&c| c) {
            first_all_charged = Some(problem.now_s);
        }
        // Advance 60 s, accumulating energy.
        for (e, s) in problem.evses.iter_mut().zip(&alloc.setpoints) {
            e.energy_wh += e.circuit.amps_to_watts(e.ev_phases, s.amps) * 60.0 / 3600.0;
        }
        problem.rotation = alloc.rotation;
        problem.now_s += 60;
    }
    // 100 EVs, 10 at a time, one swap per dwell period: everyone within 10 periods (+1 slack).
    let t = first_all_charged.expect("every EV charged at some point");
    assert!(t <= 11 * turn_s, "all charged only at {t} s");

    // Energy spread stays bounded: nobody is more than two turns ahead of anybody else.
    let turn = 6.3 * 3.0 * 230.0 * (turn_s as f64) / 3600.0;
    let (lo, hi) = problem
        .evses
        .iter()
        .fold((f64::MAX, 0.0_f64), |(lo, hi), e| {
            (lo.min(e.energy_wh), hi.max(e.energy_wh))
        });
    assert!(
        hi - lo <= 2.0 * turn + TOL,
        "spread {lo}..{hi}, turn {turn}"
    );
}

// ---------------------------------------------------------------------------------------------
// Fairness against an independent reference
// ---------------------------------------------------------------------------------------------

/// Max-min fair shares of `capacity` for equal weights and no minimums: sort by max and fill.
fn reference_max_min(capacity: f64, maxes: &[f64]) -> Vec<f64> {
    let mut order: Vec<usize> = (0..maxes.len()).collect();
    order.sort_by(|&a, &b| maxes[a].total_cmp(&maxes[b]));
    let mut out = vec![0.0; maxes.len()];
    let mut left = capacity;
    for (k, &i) in order.iter().enumerate() {
        let share = left / (maxes.len() - k) as f64;
        out[i] = maxes[i].min(share);
        left -= out[i];
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn matches_reference_max_min_on_one_line(
        capacity in 0.0..100.0_f64,
        maxes in prop::collection::vec(0.0..40.0_f64, 1..=4),
    ) {
        let evses: Vec<Evse> = maxes
            .iter()
            .enumerate()
            .map(|(k, &m)| {
                evse(&format!("e{k}"), 0, wye_station(StationWiring::single_phase(L1)), 0.0, m)
            })
            .collect();
        let problem = Problem::new(
            vec![node("site", None, PerLine::new(capacity, 0.0, 0.0), "physical")],
            evses,
            0,
        );
        let alloc = run(&problem);
        let expected = reference_max_min(capacity, &maxes);
        for (s, e) in alloc.setpoints.iter().zip(&expected) {
            prop_assert!((s.amps - e).abs() < TOL, "{} got {}, expected {}", s.evse, s.amps, e);
        }
        prop_assert_eq!(check_invariants(&problem, &alloc), Ok(()));
    }
}

// ---------------------------------------------------------------------------------------------
// Properties on random trees
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct EvseSpec {
    node_pick: usize,
    wiring_pick: u8,
    perm: u8,
    line_pick: u8,
    ev_phases: u8,
    min_a: f64,
    span_a: f64,
    weight: f64,
    priority: u8,
    may_pause: bool,
    energy_wh: f64,
    rotation: Option<(bool, i64)>,
    plan_a: Option<f64>,
}

fn evse_spec() -> impl Strategy<Value = EvseSpec> {
    (
        (any::<usize>(), 0u8..3, 0u8..6, 0u8..3, 0u8..=3),
        (
            prop_oneof![Just(0.0), 0.0..10.0_f64],
            0.0..32.0_f64,
            0.25..4.0_f64,
        ),
        (0u8..3, prop::bool::weighted(0.9), 0.0..20_000.0_f64),
        prop::option::of((any::<bool>(), -600i64..=0)),
        prop::option::weighted(0.3, 0.0..40.0_f64),
    )
        .prop_map(
            |(
                (node_pick, wiring_pick, perm, line_pick, ev_phases),
                (min_a, span_a, weight),
                (priority, may_pause, energy_wh),
                rotation,
                plan_a,
            )| EvseSpec {
                node_pick,
                wiring_pick,
                perm,
                line_pick,
                ev_phases,
                min_a,
                span_a,
                weight,
                priority,
                may_pause,
                energy_wh,
                rotation,
                plan_a,
            },
        )
}

#[derive(Debug, Clone)]
struct TreeSpec {
    delta: bool,
    /// Per non-root node: parent pick, limit per line, uncontrolled per line.
    nodes: Vec<(usize, [f64; 3], [f64; 3])>,
    root_limit: [f64; 3],
    evses: Vec<EvseSpec>,
}

fn tree_spec() -> impl Strategy<Value = TreeSpec> {
    let limits = prop::array::uniform3(0.0..80.0_f64);
    let unc = prop::array::uniform3(prop_oneof![3 => Just(0.0), 1 => 0.0..20.0_f64]);
    (
        any::<bool>(),
        prop::collection::vec((any::<usize>(), limits.clone(), unc), 0..=5),
        prop::array::uniform3(0.0..120.0_f64),
        prop::collection::vec(evse_spec(), 1..=12),
    )
        .prop_map(|(delta, nodes, root_limit, evses)| TreeSpec {
            delta,
            nodes,
            root_limit,
            evses,
        })
}

const PERMS: [[Line; 3]; 6] = [
    [L1, L2, L3],
    [L2, L3, L1],
    [L3, L1, L2],
    [L1, L3, L2],
    [L2, L1, L3],
    [L3, L2, L1],
];

fn build(spec: &TreeSpec, now_s: i64) -> Problem {
    let mut nodes = vec![node("site", None, PerLine(spec.root_limit), "physical")];
    let mut depth = vec![0usize];
    for (k, (pick, limit, unc)) in spec.nodes.iter().enumerate() {
        // At most three levels: parents are the root or its children.
        let candidates: Vec<usize> = (0..nodes.len()).filter(|&i| depth[i] < 2).collect();
        let parent = candidates[pick % candidates.len()];
        let mut n = node(
            &format!("n{}", k + 1),
            Some(parent),
            PerLine(*limit),
            if k % 2 == 0 { "physical" } else { "dr:event-7" },
        );
        n.uncontrolled = PerLine(*unc);
        depth.push(depth[parent] + 1);
        nodes.push(n);
    }
    let model = if spec.delta {
        ElectricalModel::DELTA_IT_230
    } else {
        ElectricalModel::WYE_230_400
    };
    let mut rotation = Rotation::new();
    let evses = spec
        .evses
        .iter()
        .enumerate()
        .map(|(k, s)| {
            let perm = PERMS[usize::from(s.perm)];
            let line = Line::ALL[usize::from(s.line_pick)];
            let wiring = match (spec.delta, s.wiring_pick) {
                (_, 0) => StationWiring::three_phase(perm),
                (false, 1) => StationWiring::single_phase(line),
                (false, _) => StationWiring::two_phase(perm[0], perm[1]),
                (true, _) => StationWiring::single_phase_line_to_line(perm[0], perm[1]),
            };
            let id = format!("evse-{k:02}");
            if let Some((paused, ago)) = s.rotation {
                rotation.insert(
                    id.clone(),
                    RotationEntry {
                        paused,
                        since_s: now_s + ago,
                    },
                );
            }
            Evse {
                id,
                node: s.node_pick % nodes.len(),
                circuit: model.station(wiring).expect("valid wiring"),
                ev_phases: s.ev_phases,
                min_a: s.min_a,
                max_a: s.min_a + s.span_a,
                may_pause: s.may_pause,
                priority: s.priority,
                weight: s.weight,
                energy_wh: s.energy_wh,
                plan_a: s.plan_a,
            }
        })
        .collect();
    let mut problem = Problem::new(nodes, evses, now_s);
    problem.rotation = rotation;
    problem
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn safe_in_range_work_conserving_and_deterministic(spec in tree_spec()) {
        let problem = build(&spec, 1_000);
        let alloc = run(&problem);
        prop_assert_eq!(check_invariants(&problem, &alloc), Ok(()));
        prop_assert_eq!(run(&problem), alloc.clone());

        // Nobody is paused while its minimum would fit, unless dwell holds it.
        let charging: Vec<bool> = alloc.setpoints.iter().map(|s| is_charging(&s.bound)).collect();
        for (k, s) in alloc.setpoints.iter().enumerate() {
            if s.bound == Binding::Paused(PauseReason::NoRoomForMinimum) {
                let mut with = charging.clone();
                with[k] = true;
                prop_assert!(!mins_fit(&problem, &with), "{} paused but fits", s.evse);
            }
        }
    }

    #[test]
    fn rotation_never_flaps_inside_dwell(
        spec in tree_spec(),
        scales in prop::collection::vec(0.2..1.5_f64, 8..=20),
    ) {
        let mut problem = build(&spec, 0);
        problem.rotation.clear();
        let base: Vec<PerLine> = problem.nodes.iter().map(|n| n.limit).collect();
        let mut last_change: Vec<Option<i64>> = vec![None; problem.evses.len()];
        for scale in scales {
            for (n, b) in problem.nodes.iter_mut().zip(&base) {
                n.limit = *b * scale;
            }
            let alloc = run(&problem);
            prop_assert_eq!(check_invariants(&problem, &alloc), Ok(()));
            // Who was charging going into this tick (no entry = new = charging).
            let before: Vec<bool> = problem
                .evses
                .iter()
                .map(|e| problem.rotation.get(&e.id).is_none_or(|r| !r.paused))
                .collect();
            for (k, e) in problem.evses.iter().enumerate() {
                let old = problem.rotation.get(&e.id).map(|r| r.paused);
                let Some(new) = alloc.rotation.get(&e.id) else { continue };
                if old == Some(new.paused) {
                    continue;
                }
                if last_change[k].is_some_and(|t| problem.now_s - t < problem.dwell_s) {
                    prop_assert!(new.paused, "{} resumed inside dwell", e.id);
                    prop_assert!(
                        !mins_fit(&problem, &before),
                        "{} paused inside dwell without a limit forcing it",
                        e.id
                    );
                }
                prop_assert_eq!(new.since_s, problem.now_s);
                last_change[k] = Some(problem.now_s);
            }
            for (e, s) in problem.evses.iter_mut().zip(&alloc.setpoints) {
                e.energy_wh += e.circuit.amps_to_watts(e.ev_phases, s.amps) / 60.0;
            }
            problem.rotation = alloc.rotation;
            problem.now_s += 60;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Max-min fairness against an independent reference: a sequence of LPs (clarabel)
// ---------------------------------------------------------------------------------------------

/// The weighted lexicographic max-min allocation of `a_i / w_i` over `a_i ∈ [min_i, max_i]`
/// and every node and line limit, by progressive filling with LPs: maximise the common level
/// `t` of the unfixed EVSEs, fix those that cannot rise above it, repeat.
fn lp_max_min(problem: &Problem) -> Option<Vec<f64>> {
    use good_lp::{Expression, ProblemVariables, Solution, SolverModel, Variable, variable};
    let h = headroom(problem);
    let n = problem.evses.len();
    let mut fixed: Vec<Option<f64>> = vec![None; n];
    let solve = |fixed: &[Option<f64>],
                 floor: Option<f64>,
                 target: Option<usize>|
     -> Option<(f64, Vec<f64>)> {
        let mut vars = ProblemVariables::new();
        let a: Vec<Variable> = problem
            .evses
            .iter()
            .enumerate()
            .map(|(i, e)| match fixed[i] {
                Some(v) => vars.add(variable().min(v).max(v)),
                None => vars.add(variable().min(e.min_a).max(e.max_a)),
            })
            .collect();
        let t = vars.add(variable().min(0.0).max(1e4));
        let objective: Expression = match target {
            Some(i) => a[i].into(),
            None => t.into(),
        };
        let mut model = vars.maximise(objective).using(good_lp::clarabel);
        for (i, e) in problem.evses.iter().enumerate() {
            if fixed[i].is_none() {
                let level: Expression = match floor {
                    Some(f) => Expression::from(e.weight * f),
                    None => Expression::from(t) * e.weight,
                };
                model.add_constraint(Expression::from(a[i]).geq(level));
            }
        }
        for (nd, hn) in h.iter().enumerate() {
            for line in Line::ALL {
                let mut row = Expression::default();
                let mut any = false;
                for (i, e) in problem.evses.iter().enumerate() {
                    let c = e.circuit.line_coefficients(e.ev_phases)[line];
                    if c > 0.0 && path(problem, e.node).contains(&nd) {
                        row.add_mul(c, a[i]);
                        any = true;
                    }
                }
                if any {
                    model.add_constraint(row.leq(hn[line]));
                }
            }
        }
        let sol = model.solve().ok()?;
        Some((sol.value(t), a.iter().map(|&v| sol.value(v)).collect()))
    };
    while fixed.iter().any(Option::is_none) {
        let (level, _) = solve(&fixed, None, None)?;
        let mut progressed = false;
        for i in 0..n {
            if fixed[i].is_some() {
                continue;
            }
            let (_, best) = solve(&fixed, Some(level), Some(i))?;
            let e = &problem.evses[i];
            if best[i] / e.weight <= level + 1e-6 {
                fixed[i] = Some((e.weight * level).clamp(e.min_a, e.max_a));
                progressed = true;
            }
        }
        if !progressed {
            return None;
        }
    }
    Some(fixed.into_iter().map(|v| v.unwrap_or(0.0)).collect())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// With at most six EVSEs that all charge, allocate() equals the LP reference.
    #[test]
    fn matches_lp_reference_max_min_on_trees(spec in tree_spec()) {
        let mut spec = spec;
        spec.evses.truncate(6);
        for e in &mut spec.evses {
            e.rotation = None;
            e.plan_a = None;
        }
        let problem = build(&spec, 0);
        let alloc = run(&problem);
        prop_assume!(alloc.setpoints.iter().all(|s| is_charging(&s.bound)));
        let Some(reference) = lp_max_min(&problem) else {
            return Err(TestCaseError::fail("the LP reference failed to solve"));
        };
        for (s, r) in alloc.setpoints.iter().zip(&reference) {
            prop_assert!((s.amps - r).abs() < 1e-4, "{}: allocate {} vs LP {}", s.evse, s.amps, r);
        }
    }
}

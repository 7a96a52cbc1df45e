//! Tests for the electrical model: hand-worked values, validation, and property round-trips.

use loadstar_optimizer::model::{
    ElectricalModel, GridType, Line, ModelError, PerLine, PhaseConnection, PowerFactor,
    StationCircuit, StationWiring, average_watts, kilowatt_hours, kw_to_watts, kwh_to_wh,
    watt_hours, watts_to_kw, wh_to_kwh,
};
use proptest::prelude::*;
use serde::Deserialize;
use serde::de::value::{Error as DeError, F64Deserializer, StrDeserializer};

use Line::{L1, L2, L3};

const EPS: f64 = 1e-6;

fn close(actual: f64, expected: f64) -> bool {
    (actual - expected).abs() < EPS
}

fn assert_lines(actual: PerLine, expected: [f64; 3]) {
    for (line, value) in actual.iter() {
        assert!(
            close(value, expected[line.index()]),
            "{line}: got {value}, expected {} (all: {actual:?})",
            expected[line.index()]
        );
    }
}

fn wye() -> ElectricalModel {
    ElectricalModel::new(GridType::Wye, 230.0).expect("valid model")
}

fn delta() -> ElectricalModel {
    ElectricalModel::new(GridType::Delta, 230.0).expect("valid model")
}

fn split() -> ElectricalModel {
    ElectricalModel::new(GridType::SplitPhase, 120.0).expect("valid model")
}

fn station(model: ElectricalModel, wiring: StationWiring) -> StationCircuit {
    model.station(wiring).expect("valid wiring")
}

// ------------------------------------------------------------------------------------------
// Voltages
// ------------------------------------------------------------------------------------------

#[test]
fn line_voltages() {
    assert!(close(wye().line_voltage_v(), 398.371_685_740_841_77));
    assert!(close(delta().line_voltage_v(), 230.0));
    assert!(close(split().line_voltage_v(), 240.0));
    assert_eq!(wye().neutral_voltage_v(), Some(230.0));
    assert_eq!(split().neutral_voltage_v(), Some(120.0));
    assert_eq!(delta().neutral_voltage_v(), None);
    assert_eq!(ElectricalModel::WYE_230_400, wye());
    assert_eq!(ElectricalModel::DELTA_IT_230, delta());
    assert_eq!(ElectricalModel::SPLIT_PHASE_120_240, split());
}

// ------------------------------------------------------------------------------------------
// Wye 230/400 V
// ------------------------------------------------------------------------------------------

#[test]
fn wye_three_phase_16a_is_11_04_kw() {
    let s = station(wye(), StationWiring::three_phase([L1, L2, L3]));
    let p = s.amps_to_watts(3, 16.0);
    assert!((p - 11040.0).abs() < EPS, "{p}");
    assert!((s.amps_to_kw(3, 16.0) - 11.04).abs() < EPS);
    assert_lines(s.line_load(3, 16.0), [16.0, 16.0, 16.0]);
    assert!((s.watts_to_amps(3, 11040.0) - 16.0).abs() < EPS);
    assert!((s.kw_to_amps(3, 11.04) - 16.0).abs() < EPS);
    assert_eq!(s.ocpp_number_phases(3), 3);
}

#[test]
fn wye_single_phase_32a_is_7_36_kw() {
    let s = station(wye(), StationWiring::single_phase(L1));
    let p = s.amps_to_watts(1, 32.0);
    assert!((p - 7360.0).abs() < EPS, "{p}");
    assert_lines(s.line_load(1, 32.0), [32.0, 0.0, 0.0]);
    assert!((s.watts_to_amps(1, 7360.0) - 32.0).abs() < EPS);
    // A 3-phase EV on a 1-phase station still uses one phase.
    assert_eq!(s.active_phases(3), 1);
    assert!((s.amps_to_watts(3, 32.0) - 7360.0).abs() < EPS);
    assert_eq!(s.ocpp_number_phases(3), 1);
}

#[test]
fn wye_rotation_maps_station_phases_to_lines() {
    let s = station(wye(), StationWiring::three_phase([L2, L3, L1]));
    assert_lines(s.line_load(1, 16.0), [0.0, 16.0, 0.0]);
    assert_lines(s.line_load(2, 16.0), [0.0, 16.0, 16.0]);
    assert_lines(s.line_load(3, 16.0), [16.0, 16.0, 16.0]);
}

#[test]
fn one_phase_ev_on_rotated_three_phase_station_loads_only_l2() {
    let s = station(wye(), StationWiring::three_phase([L2, L3, L1]));
    assert_eq!(s.active_phases(1), 1);
    assert_lines(s.line_load(1, 16.0), [0.0, 16.0, 0.0]);
    let p = s.amps_to_watts(1, 16.0);
    assert!((p - 3680.0).abs() < EPS, "{p}");
    assert_eq!(s.ocpp_number_phases(1), 1);
}

#[test]
fn unknown_ev_phases_means_all_station_phases() {
    let s = station(wye(), StationWiring::three_phase([L1, L2, L3]));
    assert_eq!(s.active_phases(0), 3);
    assert_eq!(s.active_phases(7), 3);
    assert_lines(s.line_load(0, 10.0), [10.0, 10.0, 10.0]);
    assert_eq!(s.ocpp_number_phases(0), 3);
}

#[test]
fn wye_power_factor() {
    let s = station(wye(), StationWiring::three_phase([L1, L2, L3]));
    let pf = PowerFactor::new(0.9).expect("valid pf");
    let p = s.amps_to_watts_at(3, 16.0, pf);
    assert!((p - 9936.0).abs() < EPS, "{p}");
    assert!((s.watts_to_amps_at(3, 9936.0, pf) - 16.0).abs() < EPS);
}

// ------------------------------------------------------------------------------------------
// Delta (IT 230 V)
// ------------------------------------------------------------------------------------------

#[test]
fn delta_three_phase_32a_is_12_75_kw() {
    let s = station(delta(), StationWiring::three_phase([L1, L2, L3]));
    let p = s.amps_to_watts(3, 32.0);
    assert!((p - 12_747.893_943_706_937).abs() < EPS, "{p}");
    assert_lines(s.line_load(3, 32.0), [32.0, 32.0, 32.0]);
    assert!((s.watts_to_amps(3, 12_747.893_943_706_937) - 32.0).abs() < EPS);
    assert_eq!(s.ocpp_number_phases(3), 3);
}

#[test]
fn delta_single_phase_line_to_line_loads_both_lines() {
    let s = station(delta(), StationWiring::single_phase_line_to_line(L1, L2));
    assert_lines(s.line_load(1, 10.0), [10.0, 10.0, 0.0]);
    assert_lines(s.line_load(1, 32.0), [32.0, 32.0, 0.0]);
    let p = s.amps_to_watts(1, 32.0);
    assert!((p - 7360.0).abs() < EPS, "{p}");
    assert_eq!(s.ocpp_number_phases(3), 1);

    let s = station(delta(), StationWiring::single_phase_line_to_line(L3, L2));
    assert_lines(s.line_load(1, 10.0), [0.0, 10.0, 10.0]);
}

#[test]
fn delta_three_phase_station_with_fewer_ev_phases() {
    let s = station(delta(), StationWiring::three_phase([L2, L3, L1]));
    // A single-phase EV draws between station phases 1 and 2: L2-L3.
    assert_lines(s.line_load(1, 32.0), [0.0, 32.0, 32.0]);
    assert!((s.amps_to_watts(1, 32.0) - 7360.0).abs() < EPS);
    assert_eq!(s.ocpp_number_phases(1), 1);
    // No neutral: a 2-phase EV is counted as a balanced three-phase load.
    assert_eq!(s.active_phases(2), 3);
    assert_lines(s.line_load(2, 32.0), [32.0, 32.0, 32.0]);
    assert!((s.amps_to_watts(2, 32.0) - 12_747.893_943_706_937).abs() < EPS);
}

// ------------------------------------------------------------------------------------------
// Split-phase 120/240 V
// ------------------------------------------------------------------------------------------

#[test]
fn split_phase_240v_40a_is_9_6_kw() {
    let s = station(split(), StationWiring::single_phase_line_to_line(L1, L2));
    let p = s.amps_to_watts(1, 40.0);
    assert!((p - 9600.0).abs() < EPS, "{p}");
    assert_lines(s.line_load(1, 40.0), [40.0, 40.0, 0.0]);
    assert!((s.watts_to_amps(1, 9600.0) - 40.0).abs() < EPS);
    assert_eq!(s.ocpp_number_phases(1), 1);
}

#[test]
fn split_phase_120v_line_to_neutral() {
    let s = station(split(), StationWiring::single_phase(L2));
    let p = s.amps_to_watts(1, 12.0);
    assert!((p - 1440.0).abs() < EPS, "{p}");
    assert_lines(s.line_load(1, 12.0), [0.0, 12.0, 0.0]);
}

#[test]
fn split_phase_two_legs() {
    let s = station(split(), StationWiring::two_phase(L1, L2));
    assert!((s.amps_to_watts(2, 40.0) - 9600.0).abs() < EPS);
    assert_lines(s.line_load(2, 40.0), [40.0, 40.0, 0.0]);
    assert!((s.amps_to_watts(1, 40.0) - 4800.0).abs() < EPS);
    assert_lines(s.line_load(1, 40.0), [40.0, 0.0, 0.0]);
    assert_eq!(s.ocpp_number_phases(2), 2);
}

// ------------------------------------------------------------------------------------------
// Grid connection limits
// ------------------------------------------------------------------------------------------

#[test]
fn connection_kw_limit_to_line_amps() {
    // Wye: I = P / (3 · 230).
    assert!((wye().kw_to_line_amps(43.47) - 63.0).abs() < EPS);
    assert_lines(wye().connection_limit_from_kw(43.47), [63.0, 63.0, 63.0]);
    // Delta: I = P / (√3 · 230).
    assert!((delta().kw_to_line_amps(25.0) - 62.755_464_042_350_63).abs() < EPS);
    let d = 62.755_464_042_350_63;
    assert_lines(delta().connection_limit_from_kw(25.0), [d, d, d]);
    // Split-phase: I = P / 240, no L3.
    assert!((split().kw_to_line_amps(24.0) - 100.0).abs() < EPS);
    assert_lines(split().connection_limit_from_kw(24.0), [100.0, 100.0, 0.0]);
    assert!((split().watts_to_line_amps(9600.0) - 40.0).abs() < EPS);
}

#[test]
fn line_amps_to_watts() {
    assert!((wye().line_amps_to_watts(&PerLine::splat(16.0)) - 11040.0).abs() < EPS);
    assert!((wye().line_amps_to_watts(&PerLine::new(0.0, 16.0, 0.0)) - 3680.0).abs() < EPS);
    assert!(
        (delta().line_amps_to_watts(&PerLine::splat(32.0)) - 12_747.893_943_706_937).abs() < EPS
    );
    assert!((split().line_amps_to_watts(&PerLine::new(40.0, 40.0, 0.0)) - 9600.0).abs() < EPS);
    // L3 does not exist on split-phase and is ignored.
    assert!((split().line_amps_to_watts(&PerLine::new(40.0, 40.0, 99.0)) - 9600.0).abs() < EPS);
}

// ------------------------------------------------------------------------------------------
// Headroom
// ------------------------------------------------------------------------------------------

#[test]
fn max_amps_within_headroom() {
    let rotated = station(wye(), StationWiring::three_phase([L2, L3, L1]));
    let headroom = PerLine::new(5.0, 20.0, -3.0);
    // 1-phase EV only loads L2.
    assert!(close(rotated.max_amps_within(1, &headroom), 20.0));
    // 2-phase EV loads L2 and L3; L3 is already over: nothing fits.
    assert_eq!(rotated.max_amps_within(2, &headroom), 0.0);
    assert!(close(
        rotated.max_amps_within(3, &PerLine::new(5.0, 20.0, 7.0)),
        5.0
    ));

    let ll = station(delta(), StationWiring::single_phase_line_to_line(L1, L2));
    assert!(close(
        ll.max_amps_within(1, &PerLine::new(10.0, 7.0, 0.0)),
        7.0
    ));
    assert_eq!(
        ll.max_amps_within(1, &PerLine::new(f64::NAN, 7.0, 0.0)),
        0.0
    );
}

// ------------------------------------------------------------------------------------------
// Units and energy
// ------------------------------------------------------------------------------------------

#[test]
fn unit_helpers() {
    assert!(close(watts_to_kw(11040.0), 11.04));
    assert!(close(kw_to_watts(7.36), 7360.0));
    assert!(close(wh_to_kwh(5520.0), 5.52));
    assert!(close(kwh_to_wh(5.52), 5520.0));
    assert!(close(watt_hours(11040.0, 1800.0), 5520.0));
    assert!(close(kilowatt_hours(11040.0, 1800.0), 5.52));
    assert!(close(watt_hours(7360.0, 3600.0), 7360.0));
    assert!(close(average_watts(5520.0, 1800.0), 11040.0));
    assert_eq!(average_watts(5520.0, 0.0), 0.0);
    assert_eq!(average_watts(5520.0, -1.0), 0.0);
    assert_eq!(average_watts(5520.0, f64::NAN), 0.0);
}

#[test]
fn per_line_helpers() {
    let a = PerLine::new(1.0, -4.0, 3.0);
    let b = PerLine::splat(2.0);
    assert_eq!((a + b).0, [3.0, -2.0, 5.0]);
    assert_eq!((a - b).0, [-1.0, -6.0, 1.0]);
    assert_eq!(a.min(b).0, [1.0, -4.0, 2.0]);
    assert_eq!(a.max(b).0, [2.0, 2.0, 3.0]);
    assert_eq!(a.max_abs(), 4.0);
    assert_eq!(a.sum(), 0.0);
    assert_eq!(a.non_negative().0, [1.0, 0.0, 3.0]);
    assert_eq!((a * 2.0).0, [2.0, -8.0, 6.0]);
    assert_eq!(a[L2], -4.0);
    assert_eq!(a.get(L3), 3.0);
    let mut c = PerLine::zero();
    c[L3] = 5.0;
    c += b;
    c -= PerLine::new(0.0, 1.0, 0.0);
    assert_eq!(c.0, [2.0, 1.0, 7.0]);
    assert!(PerLine::new(1.0, 1.0, 1.0).fits_within(&b));
    assert!(!a.fits_within(&b));
    assert_eq!(
        a.iter().collect::<Vec<_>>(),
        vec![(L1, 1.0), (L2, -4.0), (L3, 3.0)]
    );
    assert_eq!(
        PerLine::splat_on(GridType::SplitPhase, 9.0).0,
        [9.0, 9.0, 0.0]
    );
    assert_eq!([a, b].into_iter().sum::<PerLine>().0, [3.0, -2.0, 5.0]);
    assert_eq!(PerLine::from([1.0, 2.0, 3.0]).0, [1.0, 2.0, 3.0]);
    assert_eq!(Line::from_index(2), Some(L3));
    assert_eq!(Line::from_index(3), None);
}

#[test]
fn serde_names() {
    let grid = |s: &str| GridType::deserialize(StrDeserializer::<DeError>::new(s));
    assert_eq!(grid("wye"), Ok(GridType::Wye));
    assert_eq!(grid("delta"), Ok(GridType::Delta));
    assert_eq!(grid("split_phase"), Ok(GridType::SplitPhase));
    assert!(grid("SplitPhase").is_err());
    let line = |s: &str| Line::deserialize(StrDeserializer::<DeError>::new(s));
    assert_eq!(line("L2"), Ok(L2));
    assert_eq!(line("l3"), Ok(L3));
    assert!(line("L4").is_err());
    let pf = |v: f64| PowerFactor::deserialize(F64Deserializer::<DeError>::new(v));
    assert_eq!(pf(0.95).map(PowerFactor::get), Ok(0.95));
    assert!(pf(1.5).is_err());
    assert_eq!(GridType::SplitPhase.to_string(), "split_phase");
    assert_eq!(L1.to_string(), "L1");
}

// ------------------------------------------------------------------------------------------
// Validation
// ------------------------------------------------------------------------------------------

#[test]
fn invalid_voltages_are_rejected() {
    for v in [0.0, -230.0, f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
        for grid in [GridType::Wye, GridType::Delta, GridType::SplitPhase] {
            match ElectricalModel::new(grid, v) {
                Err(ModelError::InvalidVoltage { volts }) => {
                    assert!(volts.is_nan() && v.is_nan() || volts == v);
                }
                other => panic!("{grid} {v}: expected InvalidVoltage, got {other:?}"),
            }
        }
    }
}

#[test]
fn invalid_power_factors_are_rejected() {
    for pf in [0.0, -0.5, 1.0001, f64::NAN, f64::INFINITY] {
        assert!(
            matches!(
                PowerFactor::new(pf),
                Err(ModelError::InvalidPowerFactor { .. })
            ),
            "{pf}"
        );
    }
    assert_eq!(PowerFactor::new(1.0), Ok(PowerFactor::UNITY));
}

#[test]
fn invalid_wirings_are_rejected() {
    use ModelError::*;
    let cases: Vec<(ElectricalModel, StationWiring, ModelError)> = vec![
        // Duplicate lines in a rotation, on every grid.
        (
            wye(),
            StationWiring::three_phase([L1, L2, L1]),
            DuplicateLine { line: L1 },
        ),
        (
            delta(),
            StationWiring::three_phase([L3, L3, L1]),
            DuplicateLine { line: L3 },
        ),
        (
            wye(),
            StationWiring::two_phase(L2, L2),
            DuplicateLine { line: L2 },
        ),
        // Line-to-line between a line and itself.
        (
            delta(),
            StationWiring::single_phase_line_to_line(L2, L2),
            SameLineTwice { line: L2 },
        ),
        (
            split(),
            StationWiring::single_phase_line_to_line(L1, L1),
            SameLineTwice { line: L1 },
        ),
        // Line-to-line on wye.
        (
            wye(),
            StationWiring::single_phase_line_to_line(L1, L2),
            LineToLineOnWye { a: L1, b: L2 },
        ),
        // Line-to-neutral on delta.
        (
            delta(),
            StationWiring::single_phase(L1),
            NoNeutralOnDelta { line: L1 },
        ),
        (
            delta(),
            StationWiring::two_phase(L2, L3),
            NoNeutralOnDelta { line: L2 },
        ),
        // L3 on split-phase.
        (
            split(),
            StationWiring::single_phase(L3),
            LineNotOnGrid {
                line: L3,
                grid: GridType::SplitPhase,
            },
        ),
        (
            split(),
            StationWiring::single_phase_line_to_line(L1, L3),
            LineNotOnGrid {
                line: L3,
                grid: GridType::SplitPhase,
            },
        ),
        (
            split(),
            StationWiring::two_phase(L3, L1),
            LineNotOnGrid {
                line: L3,
                grid: GridType::SplitPhase,
            },
        ),
        (
            split(),
            StationWiring::three_phase([L1, L2, L3]),
            LineNotOnGrid {
                line: L3,
                grid: GridType::SplitPhase,
            },
        ),
    ];
    for (model, wiring, expected) in cases {
        assert_eq!(
            model.validate_wiring(&wiring),
            Err(expected),
            "{wiring:?} on {}",
            model.grid()
        );
        assert_eq!(model.station(wiring), Err(expected));
        assert_eq!(StationCircuit::new(model, wiring), Err(expected));
        // The error renders a message for the site-file author.
        assert!(!expected.to_string().is_empty());
    }
}

#[test]
fn valid_wirings_are_accepted() {
    let ok: Vec<(ElectricalModel, StationWiring)> = vec![
        (wye(), StationWiring::three_phase([L3, L1, L2])),
        (wye(), StationWiring::two_phase(L3, L1)),
        (wye(), StationWiring::single_phase(L3)),
        (delta(), StationWiring::three_phase([L2, L1, L3])),
        (delta(), StationWiring::single_phase_line_to_line(L3, L1)),
        (split(), StationWiring::two_phase(L2, L1)),
        (split(), StationWiring::single_phase(L1)),
        (split(), StationWiring::single_phase_line_to_line(L2, L1)),
    ];
    for (model, wiring) in ok {
        assert_eq!(model.validate_wiring(&wiring), Ok(()), "{wiring:?}");
    }
}

#[test]
fn line_to_neutral_builder() {
    assert_eq!(
        StationWiring::line_to_neutral(&[L2, L3, L1]),
        Ok(StationWiring::three_phase([L2, L3, L1]))
    );
    assert_eq!(
        StationWiring::line_to_neutral(&[L1, L2]),
        Ok(StationWiring::two_phase(L1, L2))
    );
    assert_eq!(
        StationWiring::line_to_neutral(&[L3]),
        Ok(StationWiring::SinglePhase(PhaseConnection::LineToNeutral(
            L3
        )))
    );
    assert_eq!(
        StationWiring::line_to_neutral(&[]),
        Err(ModelError::PhaseCount { count: 0 })
    );
    assert_eq!(
        StationWiring::line_to_neutral(&[L1, L2, L3, L1]),
        Err(ModelError::PhaseCount { count: 4 })
    );
    assert_eq!(
        StationWiring::line_to_neutral(&[L1, L2, L2]),
        Err(ModelError::DuplicateLine { line: L2 })
    );
    assert_eq!(
        StationWiring::line_to_neutral(&[L3, L3]),
        Err(ModelError::DuplicateLine { line: L3 })
    );
}

// ------------------------------------------------------------------------------------------
// Properties
// ------------------------------------------------------------------------------------------

fn any_line() -> impl Strategy<Value = Line> {
    prop_oneof![Just(L1), Just(L2), Just(L3)]
}

fn any_grid() -> impl Strategy<Value = GridType> {
    prop_oneof![
        Just(GridType::Wye),
        Just(GridType::Delta),
        Just(GridType::SplitPhase)
    ]
}

fn any_wiring() -> impl Strategy<Value = StationWiring> {
    prop_oneof![
        Just(Line::ALL)
            .prop_shuffle()
            .prop_map(StationWiring::three_phase),
        (any_line(), any_line()).prop_map(|(a, b)| StationWiring::two_phase(a, b)),
        any_line().prop_map(StationWiring::single_phase),
        (any_line(), any_line()).prop_map(|(a, b)| StationWiring::single_phase_line_to_line(a, b)),
    ]
}

/// Every valid (grid, voltage, wiring) combination.
fn any_station() -> impl Strategy<Value = StationCircuit> {
    (any_grid(), 50.0..500.0f64, any_wiring())
        .prop_filter_map("wiring must fit the grid", |(grid, volts, wiring)| {
            ElectricalModel::new(grid, volts).ok()?.station(wiring).ok()
        })
}

proptest! {
    #[test]
    fn current_power_current_round_trip(
        s in any_station(),
        ev_phases in 0u8..=4,
        amps in 0.0..1000.0f64,
        pf in 0.05..=1.0f64,
    ) {
        let back = s.watts_to_amps(ev_phases, s.amps_to_watts(ev_phases, amps));
        prop_assert!((back - amps).abs() <= 1e-9 * amps, "{amps} -> {back}");
        let pf = PowerFactor::new(pf).expect("pf in range");
        let back = s.watts_to_amps_at(ev_phases, s.amps_to_watts_at(ev_phases, amps, pf), pf);
        prop_assert!((back - amps).abs() <= 1e-9 * amps, "{amps} -> {back}");
    }

    #[test]
    fn power_current_power_round_trip(
        s in any_station(),
        ev_phases in 0u8..=4,
        watts in 0.0..100_000.0f64,
    ) {
        let back = s.amps_to_watts(ev_phases, s.watts_to_amps(ev_phases, watts));
        prop_assert!((back - watts).abs() <= 1e-9 * watts, "{watts} -> {back}");
    }

    #[test]
    fn line_load_is_never_negative(s in any_station(), ev_phases in 0u8..=4, amps in 0.0..1000.0f64) {
        let load = s.line_load(ev_phases, amps);
        for (line, value) in load.iter() {
            prop_assert!(value >= 0.0, "{line}: {value}");
            // No line carries more than the per-phase current.
            prop_assert!(value <= amps, "{line}: {value} > {amps}");
            if !s.model().grid().has_line(line) {
                prop_assert_eq!(value, 0.0);
            }
        }
        // Some line carries it.
        prop_assert_eq!(load.max_abs(), amps);
        let n = s.ocpp_number_phases(ev_phases);
        prop_assert!((1..=3).contains(&n));
        prop_assert!(n <= s.wiring().phase_count());
    }

    #[test]
    fn station_power_matches_line_currents_where_neutral_exists(
        s in any_station(),
        ev_phases in 0u8..=4,
        amps in 0.0..1000.0f64,
    ) {
        // Two independent formulas for the same power must agree on wye and split-phase grids.
        prop_assume!(s.model().grid() != GridType::Delta);
        let from_station = s.amps_to_watts(ev_phases, amps);
        let from_lines = s.model().line_amps_to_watts(&s.line_load(ev_phases, amps));
        prop_assert!((from_station - from_lines).abs() <= 1e-9 * from_station.max(1.0));
    }

    #[test]
    fn fits_in_headroom_never_overloads(
        s in any_station(),
        ev_phases in 0u8..=4,
        headroom in proptest::array::uniform3(-100.0..1000.0f64),
    ) {
        let headroom = PerLine(headroom);
        let amps = s.max_amps_within(ev_phases, &headroom);
        prop_assert!(amps >= 0.0 && amps.is_finite());
        let load = s.line_load(ev_phases, amps);
        for (line, value) in load.iter() {
            prop_assert!(value == 0.0 || value <= headroom[line], "{line}: {value} > {}", headroom[line]);
        }
        // And it is the largest: positive result means some loaded line is exactly full.
        if amps > 0.0 {
            let tight = load.iter().any(|(line, v)| v > 0.0 && (v - headroom[line]).abs() <= 1e-9 * v);
            prop_assert!(tight);
        }
    }

    #[test]
    fn connection_limit_round_trip(model_grid in any_grid(), volts in 50.0..500.0f64, kw in 0.0..2000.0f64) {
        let model = ElectricalModel::new(model_grid, volts).expect("valid voltage");
        let limit = model.connection_limit_from_kw(kw);
        let back = watts_to_kw(model.line_amps_to_watts(&limit));
        prop_assert!((back - kw).abs() <= 1e-9 * kw.max(1e-12));
        if model_grid == GridType::SplitPhase {
            prop_assert_eq!(limit[L3], 0.0);
        }
    }

    #[test]
    fn energy_round_trip(watts in 0.0..100_000.0f64, seconds in 1.0..86_400.0f64) {
        let wh = watt_hours(watts, seconds);
        let back = average_watts(wh, seconds);
        prop_assert!((back - watts).abs() <= 1e-9 * watts.max(1e-12));
    }
}

//! The EV model: limits, curve, minimum current and energy accounting.

use loadstar_optimizer::model::{ElectricalModel, Line, StationCircuit, StationWiring, watt_hours};
use loadstar_sims::ev::*;

fn circuit() -> StationCircuit {
    ElectricalModel::WYE_230_400
        .station(StationWiring::three_phase(Line::ALL))
        .unwrap()
}

#[test]
fn draws_the_least_of_limit_charger_and_curve_and_nothing_below_its_minimum() {
    let ev = Ev::new(EvSpec::typical(0.2, 0.9)).unwrap();
    assert_eq!(ev.draw(32.0), 16.0);
    assert_eq!(ev.draw(10.0), 10.0);
    assert_eq!(ev.draw(6.0), 6.0);
    assert_eq!(ev.draw(5.9), 0.0);
    assert_eq!(ev.draw(0.0), 0.0);
    assert_eq!(ev.draw(-3.0), 0.0);
    assert_eq!(ev.draw(f64::NAN), 0.0);
}

#[test]
fn curve_tapers_near_full() {
    // 90 % on a curve tapering from 80 %: half of 16 A.
    let ev = Ev::new(EvSpec {
        target: Target::Soc(1.0),
        ..EvSpec::typical(0.9, 1.0)
    })
    .unwrap();
    assert!((ev.curve_amps() - 8.0).abs() < 1e-9);
    assert!((ev.draw(32.0) - 8.0).abs() < 1e-9);
    // At 97 % the curve allows 2.4 A, under the 6 A minimum: the car stops.
    let ev = Ev::new(EvSpec::typical(0.97, 1.0)).unwrap();
    assert_eq!(ev.draw(32.0), 0.0);
}

#[test]
fn energy_accounting_matches_the_integrated_power_and_stops_at_the_target() {
    let c = circuit();
    for phases in [1u8, 3] {
        let spec = EvSpec {
            phases,
            capacity_wh: 40_000.0,
            ..EvSpec::typical(0.3, 0.85)
        };
        let mut ev = Ev::new(spec.clone()).unwrap();
        let mut integrated_wh = 0.0;
        // A limit that moves around, 10 s steps, long enough to finish.
        let mut seed = 0x2545_f491_u32;
        for _ in 0..20_000 {
            seed ^= seed << 13;
            seed ^= seed >> 17;
            seed ^= seed << 5;
            let limit = f64::from(seed % 33);
            let step = ev.step(limit, 10.0, &c, 0);
            assert!(step.amps <= limit + 1e-9 && step.amps <= spec.max_amps + 1e-9);
            assert!(step.amps == 0.0 || step.amps > 0.0 && step.wh > 0.0);
            integrated_wh += watt_hours(c.amps_to_watts(phases, step.amps), 10.0);
            assert!(ev.soc() <= 1.0);
        }
        assert!((integrated_wh - ev.delivered_wh()).abs() < 1e-6);
        let soc_gain_wh = (ev.soc() - 0.3) * 40_000.0;
        assert!((soc_gain_wh - ev.delivered_wh()).abs() < 1e-6);
        assert!(
            ev.satisfied(),
            "{phases}-phase car did not reach 85 %: {}",
            ev.soc()
        );
        assert!((ev.soc() - 0.85).abs() < 1e-9);
        // Satisfied: it draws nothing more.
        assert_eq!(ev.step(32.0, 10.0, &c, 0).wh, 0.0);
    }
}

#[test]
fn one_hour_at_16_a_three_phase_is_11_kwh() {
    let mut ev = Ev::new(EvSpec::typical(0.1, 0.9)).unwrap();
    let step = ev.step(16.0, 3600.0, &circuit(), 0);
    assert!((step.wh - 11_040.0).abs() < 1e-9);
    assert!((ev.soc() - (0.1 + 11_040.0 / 60_000.0)).abs() < 1e-12);
}

#[test]
fn a_three_phase_ev_switched_to_one_phase_charges_on_one() {
    let mut ev = Ev::new(EvSpec::typical(0.1, 0.9)).unwrap();
    let step = ev.step(16.0, 3600.0, &circuit(), 1);
    assert!((step.wh - 3_680.0).abs() < 1e-9, "{}", step.wh);
    // More phases than the EV has are the EV's own.
    let step = ev.step(16.0, 3600.0, &circuit(), 3);
    assert!((step.wh - 11_040.0).abs() < 1e-9, "{}", step.wh);
}

#[test]
fn energy_target_and_a_full_battery_both_end_charging() {
    let c = circuit();
    let mut ev = Ev::new(EvSpec {
        target: Target::EnergyWh(1_000.0),
        ..EvSpec::typical(0.5, 1.0)
    })
    .unwrap();
    let step = ev.step(16.0, 3600.0, &c, 0);
    assert!((step.wh - 1_000.0).abs() < 1e-9);
    // The average current over the hour is what delivers exactly 1 kWh.
    assert!((c.amps_to_watts(3, step.amps) - 1_000.0).abs() < 1e-9);
    // Full battery with a target it can never reach.
    let mut ev = Ev::new(EvSpec {
        target: Target::EnergyWh(1e9),
        taper_from_soc: 1.0,
        ..EvSpec::typical(0.99, 1.0)
    })
    .unwrap();
    ev.step(16.0, 3600.0, &c, 0);
    assert_eq!(ev.soc(), 1.0);
    assert!(ev.delivered_wh() <= 0.01 * 60_000.0 + 1e-9);
}

#[test]
fn bad_specs_are_refused() {
    let good = EvSpec::typical(0.2, 0.8);
    let bad = [
        EvSpec {
            capacity_wh: 0.0,
            ..good.clone()
        },
        EvSpec {
            arrival_soc: 1.5,
            ..good.clone()
        },
        EvSpec {
            target: Target::Soc(f64::NAN),
            ..good.clone()
        },
        EvSpec {
            target: Target::EnergyWh(-1.0),
            ..good.clone()
        },
        EvSpec {
            max_amps: f64::INFINITY,
            ..good.clone()
        },
        EvSpec {
            phases: 0,
            ..good.clone()
        },
        EvSpec {
            phases: 4,
            ..good.clone()
        },
        EvSpec {
            min_amps: 20.0,
            ..good.clone()
        },
        EvSpec {
            taper_from_soc: 0.0,
            ..good.clone()
        },
    ];
    for spec in bad {
        assert!(Ev::new(spec.clone()).is_err(), "{spec:?} was accepted");
    }
    let mut ev = Ev::new(good).unwrap();
    assert_eq!(ev.step(16.0, f64::NAN, &circuit(), 0).wh, 0.0);
    assert_eq!(ev.step(16.0, -5.0, &circuit(), 0).wh, 0.0);
}

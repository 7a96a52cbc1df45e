//! Runner (a): the reference policies and the offline optimum over the four scenarios. Each
//! scenario meets the issue's rule (first-come-first-served and equal share deliver at most
//! 95 % of the optimum's energy), runs are deterministic, and the rows are accounted the way
//! the KPIs say.
//!
//! The tests run at a 10-s tick (the binary's default is 1 s) to stay fast in debug builds.

use std::path::PathBuf;
use std::time::Duration;

use loadstar_sims::baseline::{
    Policy, RunConfig, RunError, baselines, offline_optimum, run_followed, run_optimum, run_policy,
};
use loadstar_sims::scenario::{Plan, load, parse};

fn scenario(name: &str) -> Plan {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("scenarios")
        .join(format!("{name}.toml"));
    load(&path).unwrap_or_else(|e| panic!("{e}"))
}

fn coarse() -> RunConfig {
    RunConfig {
        tick: Duration::from_secs(10),
        control_tick: Duration::from_secs(10),
    }
}

/// The issue's rule: a scenario where a naive policy comes close to the optimum tests nothing.
fn at_most_95_percent(name: &str) {
    let plan = scenario(name);
    let optimum = offline_optimum(&plan).unwrap();
    let best_kwh = optimum.result.plan.energy_wh / 1000.0;
    assert!(best_kwh > 0.0, "{name}: the optimum delivers nothing");
    for policy in [Policy::EqualShare, Policy::FirstComeFirstServed] {
        let report = run_policy(&plan, policy, Some(&optimum), coarse()).unwrap();
        let got = report.kpis.delivered_kwh;
        assert!(
            got <= 0.95 * best_kwh,
            "{name}: {} delivers {got:.1} kWh, {:.1} % of the optimum's {best_kwh:.1} kWh",
            policy.name(),
            100.0 * got / best_kwh
        );
    }
}

#[test]
fn office_carpark_baselines_stay_under_95_percent_of_the_optimum() {
    at_most_95_percent("office-carpark");
}

#[test]
fn bus_depot_baselines_stay_under_95_percent_of_the_optimum() {
    at_most_95_percent("bus-depot");
}

#[test]
fn apartment_block_baselines_stay_under_95_percent_of_the_optimum() {
    at_most_95_percent("apartment-block");
}

#[test]
fn quirky_fleet_baselines_stay_under_95_percent_of_the_optimum() {
    at_most_95_percent("quirky-fleet");
}

#[test]
fn the_same_seed_gives_the_same_kpis() {
    let plan = scenario("apartment-block");
    let a = baselines(&plan, coarse()).unwrap();
    let b = baselines(&plan, coarse()).unwrap();
    assert_eq!(a.rows.len(), b.rows.len());
    for ((la, _, ra), (lb, _, rb)) in a.rows.iter().zip(&b.rows) {
        assert_eq!(la, lb);
        assert_eq!(ra.kpis, rb.kpis, "{la}");
        assert_eq!(ra.vehicles, rb.vehicles, "{la}");
    }
    assert_eq!(a.markdown(), b.markdown());
}

#[test]
fn rows_are_attributed_as_the_kpis_say() {
    let plan = scenario("apartment-block");
    let optimum = offline_optimum(&plan).unwrap();
    let config = coarse();

    // Uncontrolled overloads the 63 A connection, and that is the controller's doing (it sets
    // everyone to max); the building alone stays under the limit in this scenario.
    let free = run_policy(&plan, Policy::Uncontrolled, Some(&optimum), config).unwrap();
    let v = &free.kpis.violations;
    assert!(v.controller_amp_s > 1_000.0, "{v:?}");
    assert!(v.worst.is_some_and(|w| w.amps > 10.0), "{v:?}");
    assert_eq!(v.building_amp_s, 0.0);

    for policy in [Policy::EqualShare, Policy::FirstComeFirstServed] {
        let r = run_policy(&plan, policy, Some(&optimum), config).unwrap();
        let v = &r.kpis.violations;
        // The cars follow their setpoints: no station is non-compliant, and the policies keep
        // the limit except within the lag allowance after the building's load rises.
        assert_eq!(
            v.stations_amp_s.iter().sum::<f64>(),
            0.0,
            "{}",
            policy.name()
        );
        // (Within float rounding of the attribution's subtractions.)
        assert!(v.controller_amp_s < 1e-6, "{}: {v:?}", policy.name());
        assert_eq!(r.kpis.profiles_per_station_hour, (0.0, 0.0));
        assert!(r.kpis.delivered_kwh < free.kpis.delivered_kwh + 1e-9);
    }

    // The LP's own row: every feasible target is reached, nothing is over the limit (its
    // headroom is each slot's tightest minute), and its energy is the plan's.
    let lp = run_optimum(&plan, &optimum, config).unwrap();
    assert_eq!(lp.kpis.reached_target_share, 1.0);
    assert_eq!(
        lp.kpis.violations.total_amp_s, 0.0,
        "{:?}",
        lp.kpis.violations
    );
    assert!((lp.kpis.delivered_kwh - optimum.result.plan.energy_wh / 1000.0).abs() < 1e-6);

    // Followed by the sims' EVs, the optimum cannot deliver more than it planned.
    let followed = run_followed(&plan, &optimum, config).unwrap();
    assert!(followed.kpis.delivered_kwh <= lp.kpis.delivered_kwh + 1e-6);
    assert!(followed.kpis.violations.controller_amp_s < 1e-6);
}

#[test]
fn feasibility_comes_from_the_optimum() {
    let plan = scenario("apartment-block");
    let optimum = offline_optimum(&plan).unwrap();
    assert_eq!(optimum.result.feasible.len(), plan.visits.len());
    // Oversubscribed: some targets cannot be met by anyone, and those do not count against a
    // policy's "reached target" share.
    assert!(optimum.result.feasible.iter().any(|f| !f));
    let r = run_policy(
        &plan,
        Policy::FirstComeFirstServed,
        Some(&optimum),
        coarse(),
    )
    .unwrap();
    let without = run_policy(&plan, Policy::FirstComeFirstServed, None, coarse()).unwrap();
    assert_eq!(r.kpis.delivered_kwh, without.kpis.delivered_kwh);
    assert!(r.kpis.reached_target_share >= without.kpis.reached_target_share);
}

#[test]
fn bad_ticks_are_errors() {
    let plan = scenario("quirky-fleet");
    for (tick, control) in [(0, 5), (10, 5)] {
        let config = RunConfig {
            tick: Duration::from_secs(tick),
            control_tick: Duration::from_secs(control),
        };
        assert!(matches!(
            run_policy(&plan, Policy::EqualShare, None, config),
            Err(RunError::Ticks { .. })
        ));
    }
}

#[test]
fn a_car_a_policy_brings_to_target_could_finish_alone() {
    // With the site to itself a car gets at least what any limit-keeping policy gives it, so
    // whoever a baseline brings to target is feasible alone; and in this oversubscribed
    // scenario not everyone is.
    let plan = scenario("apartment-block");
    let config = coarse();
    let table = baselines(&plan, config).unwrap();
    let alone = &table.feasible_alone;
    assert_eq!(alone.len(), plan.visits.len());
    assert!(
        alone.iter().any(|f| *f) && alone.iter().any(|f| !f),
        "{alone:?}"
    );
    for label in ["equal share", "first come, first served"] {
        let report = table.row(label).unwrap();
        for ((id, delivered, requested), ok) in report.vehicles.iter().zip(alone) {
            if delivered + 0.001 >= *requested {
                assert!(
                    ok,
                    "{label}: {id} reached its target but is not feasible alone"
                );
            }
        }
    }
    assert!(
        table
            .markdown()
            .contains("Targets reachable with the site to itself")
    );
}

/// Two 16-A three-phase cars for one hour on a 24-A connection, nothing else on it.
const TWO_CARS: &str = r#"name = "two-cars"
seed = 3
start = "2026-03-02T07:59:00Z"
duration_h = 2

[site]
grid = "wye"
phase_voltage_v = 230
limit_a = 24
base_load = [{ at = "00:00", w = 0 }]

[[stations]]
id_prefix = "S"
count = 2
version = "1.6"
wiring = "three_phase"

[[vehicles]]
at = "S"
count = 2
arrive = "00:01"
depart = "01:01"
capacity_kwh = 60
arrival_soc = 0.2
target_soc = 0.9
"#;

#[test]
fn two_cars_on_a_tight_connection_match_the_hand_worked_figures() {
    let plan = parse("two-cars.toml", TWO_CARS).unwrap();
    let config = RunConfig::default();
    // 1 A on three phases at 230 V for an hour is 0.69 kWh.
    let kwh_per_amp_hour = 3.0 * 230.0 / 1000.0;
    let close = |a: f64, b: f64| (a - b).abs() < 0.01;

    // Uncontrolled: both at 16 A, 8 A over on each line for the hour, the controller's.
    let free = run_policy(&plan, Policy::Uncontrolled, None, config).unwrap();
    assert!(close(
        free.kpis.delivered_kwh,
        2.0 * 16.0 * kwh_per_amp_hour
    ));
    let v = &free.kpis.violations;
    assert!(
        (v.controller_amp_s - 3.0 * 8.0 * 3600.0).abs() < 1.0,
        "{v:?}"
    );
    assert!(v.worst.is_some_and(|w| (w.amps - 8.0).abs() < 1e-9));

    // Equal share: 12 A each. First come, first served (same arrival: list order): 16 A for the
    // first, the 8 A left for the second. Both fill the connection, within the limit.
    let equal = run_policy(&plan, Policy::EqualShare, None, config).unwrap();
    for (_, delivered, _) in &equal.vehicles {
        assert!(close(*delivered, 12.0 * kwh_per_amp_hour), "{delivered}");
    }
    let fcfs = run_policy(&plan, Policy::FirstComeFirstServed, None, config).unwrap();
    let mut got: Vec<f64> = fcfs.vehicles.iter().map(|v| v.1).collect();
    got.sort_by(f64::total_cmp);
    assert!(close(got[0], 8.0 * kwh_per_amp_hour), "{got:?}");
    assert!(close(got[1], 16.0 * kwh_per_amp_hour), "{got:?}");
    for r in [&equal, &fcfs] {
        assert!(
            r.kpis.violations.total_amp_s < 1e-6,
            "{:?}",
            r.kpis.violations
        );
    }

    // The optimum can do no worse than filling the connection for the hour.
    let optimum = offline_optimum(&plan).unwrap();
    assert!(optimum.result.plan.energy_wh / 1000.0 >= 24.0 * kwh_per_amp_hour - 0.01);
}

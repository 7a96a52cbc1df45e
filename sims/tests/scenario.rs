//! Scenario files: the four of the issue load, are reproducible from their seed, are
//! oversubscribed, and bad files fail with their line.

use std::path::PathBuf;

use loadstar_sims::scenario::{Plan, load, parse};
use loadstar_sims::station::Fault;

fn path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("scenarios")
        .join(format!("{name}.toml"))
}

fn scenario(name: &str) -> Plan {
    load(&path(name)).unwrap_or_else(|e| panic!("{e}"))
}

/// Energy the connection can give the cars between the first arrival and the last departure:
/// the limit minus the building plus PV, per minute, never negative.
fn deliverable_wh(plan: &Plan) -> f64 {
    let from = plan.visits.iter().map(|v| v.arrive).min().unwrap();
    let to = plan.visits.iter().map(|v| v.depart).max().unwrap();
    let mut t = from;
    let mut wh = 0.0;
    while t < to {
        let site = &plan.site;
        let headroom = (site.limit_at(t) - site.base_amps(t) + site.pv_amps(t)).non_negative();
        wh += site.model.line_amps_to_watts(&headroom) / 60.0;
        t += chrono::Duration::minutes(1);
    }
    wh
}

#[test]
fn the_four_scenarios_load_as_described() {
    let office = scenario("office-carpark");
    assert_eq!(office.stations.len(), 100);
    assert_eq!(office.visits.len(), 100);
    let v201 = office
        .stations
        .iter()
        .filter(|s| s.config.version == loadstar_ocpp::OcppVersion::V201)
        .count();
    assert_eq!(v201, 30);
    assert!(office.visits.iter().any(|v| v.ev.phases == 1));
    assert!(office.visits.iter().any(|v| v.ev.phases == 3));
    assert_eq!(office.visits.iter().filter(|v| v.ev.iso15118).count(), 30);
    assert!(office.site.pv.is_some());

    let depot = scenario("bus-depot");
    assert_eq!(depot.visits.len(), 40);
    assert!(depot.tariff.len() >= 5);
    let drop = depot.start + chrono::Duration::hours(18);
    assert!(
        depot.site.limit_at(drop).0[0]
            < depot.site.limit_at(drop - chrono::Duration::seconds(1)).0[0]
    );
    // Overnight: every bus leaves the next morning.
    assert!(
        depot
            .visits
            .iter()
            .all(|v| v.depart > depot.start + chrono::Duration::hours(24))
    );

    let apartments = scenario("apartment-block");
    assert_eq!(apartments.stations.len(), 20);
    assert_eq!(apartments.site.limit.0[0], 63.0);

    let quirky = scenario("quirky-fleet");
    let q = |f: fn(&loadstar_sims::station::Quirks) -> bool| {
        quirky.stations.iter().any(|s| f(&s.config.quirks))
    };
    assert!(q(|q| q.amps_only));
    assert!(q(|q| q.rejects_station_max));
    assert!(q(|q| q.max_stack_level_zero));
    assert!(q(|q| q.absolute_only));
    assert!(q(|q| q.drops_profiles_on_reconnect));
    assert!(q(|q| q.ignores_raise_after_zero));
    assert!(q(|q| q.ignores_profiles));
    assert!(q(|q| q.unsigned_currents));
    let faults: Vec<Fault> = quirky
        .stations
        .iter()
        .flat_map(|s| s.faults.iter().map(|f| f.1))
        .collect();
    assert!(faults.iter().any(|f| matches!(f, Fault::Disconnect(_))));
    assert!(faults.iter().any(|f| matches!(f, Fault::Reboot(_))));
    assert!(faults.iter().any(|f| matches!(f, Fault::StopAnswering(_))));
}

#[test]
fn every_scenario_asks_for_more_than_its_connection_can_deliver() {
    // Not the issue's ≤ 95 % rule (that needs the optimizer's reference policies), but its
    // precondition: a scenario the connection can fully serve tests nothing.
    for name in [
        "office-carpark",
        "bus-depot",
        "apartment-block",
        "quirky-fleet",
    ] {
        let plan = scenario(name);
        let (asked, can) = (plan.requested_wh(), deliverable_wh(&plan));
        assert!(
            asked > can,
            "{name}: asks {asked:.0} Wh, connection gives {can:.0} Wh"
        );
    }
}

#[test]
fn the_same_seed_gives_the_same_day_and_another_seed_another() {
    let text = std::fs::read_to_string(path("apartment-block")).unwrap();
    let a = parse("a.toml", &text).unwrap();
    let b = parse("b.toml", &text).unwrap();
    assert_eq!(a.visits, b.visits);
    let other = parse("c.toml", &text.replace("seed = 63", "seed = 64")).unwrap();
    assert_ne!(a.visits, other.visits);
}

const MINIMAL: &str = r#"name = "t"
seed = 1
start = "2026-03-02T00:00:00Z"
duration_h = 24

[site]
grid = "wye"
phase_voltage_v = 230
limit_a = 32
base_load = [{ at = "00:00", w = 1000 }]

[[stations]]
id_prefix = "S"
count = 2
version = "1.6"
wiring = "three_phase"

[[vehicles]]
at = "S"
count = 2
arrive = "08:00"
depart = "17:00"
capacity_kwh = 50
arrival_soc = 0.2
target_soc = 0.8
"#;

fn error(text: &str) -> String {
    parse("x.toml", text).unwrap_err().to_string()
}

#[test]
fn bad_files_fail_with_file_and_line() {
    assert!(parse("x.toml", MINIMAL).is_ok());
    let e = error(&MINIMAL.replace(r#"depart = "17:00""#, r#"depart = "17:61""#));
    assert!(e.starts_with("x.toml:22:"), "{e}");
    assert!(e.contains("is not a time"), "{e}");
    let e = error(&MINIMAL.replace("limit_a = 32", "limit_a = 32\nlimits = 4"));
    assert!(e.starts_with("x.toml:10:"), "{e}");
    assert!(e.contains("unknown field"), "{e}");
    let e = error(&MINIMAL.replace(r#"at = "S""#, r#"at = "T""#));
    assert!(e.starts_with("x.toml:19:"), "{e}");
    assert!(e.contains("no station group"), "{e}");
    let e = error(&MINIMAL.replace("count = 2\narrive", "count = 3\narrive"));
    assert!(e.contains("only 2 free EVSEs"), "{e}");
    assert!(e.starts_with("x.toml:"), "{e}");
    let e = error(&MINIMAL.replace(r#"version = "1.6""#, r#"version = "2.1""#));
    assert!(e.contains("is not \"1.6\""), "{e}");
    let e = error(&MINIMAL.replace("arrival_soc = 0.2", "arrival_soc = 1.2"));
    assert!(e.contains("arrival_soc"), "{e}");
    let e = error("name = ");
    assert!(e.starts_with("x.toml:1:"), "{e}");
    let e = load(std::path::Path::new("/nonexistent/scenario.toml"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("cannot read"), "{e}");
}

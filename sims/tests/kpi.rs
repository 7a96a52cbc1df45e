//! KPIs over hand-made time series: every attribution rule, energy, cost, PV and fairness.

use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use loadstar_optimizer::model::{ElectricalModel, Line, PerLine};
use loadstar_sims::kpi::*;
use loadstar_sims::meter::TariffSlot;

fn t(s: i64) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 3, 2, 12, 0, 0).unwrap() + chrono::Duration::seconds(s)
}

fn acc() -> Accumulator {
    Accumulator::new(
        ElectricalModel::WYE_230_400,
        Duration::from_secs(1),
        Vec::new(),
    )
}

fn sample(s: i64, limit: f64, grid: f64, uncontrolled: f64) -> Sample<'static> {
    Sample {
        at: t(s),
        limit: PerLine::splat(limit),
        limit_announced: false,
        grid: PerLine::new(grid, 0.0, 0.0),
        uncontrolled: PerLine::new(uncontrolled, 0.0, 0.0),
        pv_w: 0.0,
        stations: &[],
    }
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-9
}

#[test]
fn no_excess_no_violation() {
    let mut a = acc();
    for s in 0..100 {
        a.push(&sample(s, 63.0, 60.0, 10.0), 1.0);
    }
    let k = a.finish(&[], &[]);
    assert_eq!(k.violations.total_amp_s, 0.0);
    assert!(k.violations.worst.is_none());
}

#[test]
fn the_building_alone_over_the_limit_is_the_buildings() {
    let mut a = acc();
    for s in 0..10 {
        a.push(&sample(s, 63.0, 70.0, 70.0), 1.0);
    }
    let v = a.finish(&[], &[]).violations;
    assert!(close(v.total_amp_s, 70.0));
    // The building comes before lag in the attribution order: all of it is the building's.
    assert!(close(v.building_amp_s, 70.0), "{v:?}");
    assert_eq!(v.lag_amp_s, 0.0);
    assert_eq!(v.controller_amp_s, 0.0);
    assert_eq!(v.worst.unwrap().line, Line::L1);
    assert!(close(v.worst.unwrap().amps, 7.0));
}

#[test]
fn a_station_drawing_above_its_command_owns_that_excess() {
    let draws = [
        StationDraw {
            station: 0,
            draw: PerLine::new(16.0, 0.0, 0.0),
            commanded: PerLine::new(16.0, 0.0, 0.0),
        },
        StationDraw {
            station: 2,
            draw: PerLine::new(16.0, 0.0, 0.0),
            commanded: PerLine::new(6.0, 0.0, 0.0),
        },
    ];
    let mut a = acc();
    for s in 0..5 {
        // Grid 70 on a 63 limit: 7 A over, the quirky station is 10 over its command.
        a.push(
            &Sample {
                stations: &draws,
                ..sample(s, 63.0, 70.0, 20.0)
            },
            1.0,
        );
    }
    let v = a.finish(&[], &[]).violations;
    assert_eq!(v.stations_amp_s, vec![0.0, 0.0, 35.0]);
    assert_eq!(v.controller_amp_s, 0.0);
}

#[test]
fn an_unannounced_drop_allows_one_tick_plus_five_seconds_of_lag() {
    let mut a = acc();
    a.push(&sample(0, 63.0, 50.0, 10.0), 1.0);
    // The limit drops to 40 unannounced; the site stays at 50 for 10 s.
    for s in 1..=10 {
        a.push(&sample(s, 40.0, 50.0, 10.0), 1.0);
    }
    let v = a.finish(&[], &[]).violations;
    assert!(close(v.total_amp_s, 100.0));
    // Window = 1 s tick + 5 s: the samples at 1..=6 s.
    assert!(close(v.lag_amp_s, 60.0), "{v:?}");
    assert!(close(v.controller_amp_s, 40.0), "{v:?}");
}

#[test]
fn an_announced_drop_gets_no_allowance() {
    let mut a = acc();
    a.push(&sample(0, 63.0, 50.0, 10.0), 1.0);
    for s in 1..=10 {
        a.push(
            &Sample {
                limit_announced: true,
                ..sample(s, 40.0, 50.0, 10.0)
            },
            1.0,
        );
    }
    let v = a.finish(&[], &[]).violations;
    assert!(close(v.controller_amp_s, 100.0));
    assert_eq!(v.lag_amp_s, 0.0);
}

#[test]
fn a_rise_of_the_building_allows_lag_up_to_its_size() {
    let mut a = acc();
    a.push(&sample(0, 63.0, 60.0, 20.0), 1.0);
    // The building jumps by 5 A; the grid goes 8 A over: 5 lag, 3 controller, for 6 s.
    for s in 1..=6 {
        a.push(&sample(s, 63.0, 71.0, 25.0), 1.0);
    }
    let v = a.finish(&[], &[]).violations;
    assert!(close(v.lag_amp_s, 30.0), "{v:?}");
    assert!(close(v.controller_amp_s, 18.0), "{v:?}");
}

#[test]
fn energy_cost_pv_and_fairness() {
    let tariff = vec![
        TariffSlot {
            start: t(0),
            end: t(1800),
            price: 0.10,
        },
        TariffSlot {
            start: t(1800),
            end: t(7200),
            price: 0.30,
        },
    ];
    let mut a = Accumulator::new(
        ElectricalModel::WYE_230_400,
        Duration::from_secs(10),
        tariff,
    );
    // 10 A on each line (6 900 W) for 1 h: half at 0.10, half at 0.30.
    for s in 0..3600 {
        a.push(
            &Sample {
                grid: PerLine::splat(10.0),
                pv_w: 6_900.0,
                ..sample(s, 63.0, 0.0, 0.0)
            },
            1.0,
        );
    }
    // Then 1 h exporting 2 A per line (1 380 W) with 6 900 W of PV.
    for s in 3600..7200 {
        a.push(
            &Sample {
                grid: PerLine::splat(-2.0),
                pv_w: 6_900.0,
                ..sample(s, 63.0, 0.0, 0.0)
            },
            1.0,
        );
    }
    let vehicles = [
        VehicleOutcome {
            requested_wh: 10_000.0,
            delivered_wh: 10_000.0,
            feasible: Some(true),
        },
        VehicleOutcome {
            requested_wh: 10_000.0,
            delivered_wh: 5_000.0,
            feasible: Some(true),
        },
        VehicleOutcome {
            requested_wh: 50_000.0,
            delivered_wh: 0.0,
            feasible: Some(false),
        },
    ];
    let k = a.finish(&vehicles, &[4, 0]);
    assert!(close(k.import_kwh, 6.9));
    assert!(close(k.export_kwh, 1.38));
    assert!(close(k.energy_cost, 3.45 * 0.10 + 3.45 * 0.30));
    assert!(close(k.pv_kwh, 13.8));
    assert!(close(k.pv_self_consumption, 1.0 - 1.38 / 13.8));
    assert!(close(k.delivered_kwh, 15.0));
    assert!(close(k.requested_kwh, 70.0));
    // The infeasible one does not count against the share.
    assert!(close(k.reached_target_share, 0.5));
    assert_eq!(k.reached_target, (1, 2));
    // Served fractions 1, 0.5, 0.
    assert!(close(k.jain_fairness, 1.5 * 1.5 / (3.0 * 1.25)));
    assert!(close(k.profiles_per_station_hour.0, 1.0));
    assert!(close(k.profiles_per_station_hour.1, 2.0));
    let row = k.table_row("test");
    assert!(
        row.starts_with("| test | 15.0 | 70.0 | 1 of 2 (50.0 %) |"),
        "{row}"
    );
    // No station over-drew: an empty sum must not print as "-0.0".
    assert!(!row.contains("-0.0"), "{row}");
}

#[test]
fn jain_bounds() {
    assert!(close(jain(&[3.0, 3.0, 3.0]), 1.0));
    assert!(close(jain(&[1.0, 0.0, 0.0, 0.0]), 0.25));
    assert!(close(jain(&[]), 1.0));
    assert!(close(jain(&[0.0, 0.0]), 1.0));
}

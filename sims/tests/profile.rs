//! The composite schedule against hand-worked examples of the specs' rules.

use chrono::{DateTime, TimeZone, Utc};
use loadstar_ocpp::v16;
use loadstar_optimizer::model::{ElectricalModel, Line, StationCircuit, StationWiring};
use loadstar_sims::profile::*;

fn t(h: u32, m: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 3, 5, h, m, 0).unwrap()
}

fn three_phase() -> StationCircuit {
    ElectricalModel::WYE_230_400
        .station(StationWiring::three_phase(Line::ALL))
        .unwrap()
}

fn profile(id: i32, level: i32, purpose: Purpose, kind: Kind, periods: &[(i32, f64)]) -> Profile {
    Profile {
        id,
        stack_level: level,
        purpose,
        kind,
        valid_from: None,
        valid_to: None,
        transaction_id: None,
        schedule: Schedule {
            start: None,
            duration_s: None,
            unit: RateUnit::A,
            periods: periods
                .iter()
                .map(|&(start_s, limit)| Period {
                    start_s,
                    limit,
                    number_phases: None,
                })
                .collect(),
        },
    }
}

fn absolute(
    id: i32,
    level: i32,
    purpose: Purpose,
    start: DateTime<Utc>,
    duration: Option<i32>,
    periods: &[(i32, f64)],
) -> Profile {
    let mut p = profile(id, level, purpose, Kind::Absolute, periods);
    p.schedule.start = Some(start);
    p.schedule.duration_s = duration;
    p
}

fn limits(c: &Composite) -> Vec<(i32, f64)> {
    c.periods.iter().map(|p| (p.start_s, p.limit)).collect()
}

const HW: f64 = 32.0;

#[test]
fn higher_stack_level_wins_within_a_purpose_and_falls_back_outside_its_duration() {
    let mut store = ProfileStore::new(Rules::V16, 1, 8);
    let now = t(0, 0);
    store
        .install(
            0,
            absolute(1, 0, Purpose::TxDefault, t(0, 0), None, &[(0, 16.0)]),
            None,
            now,
        )
        .unwrap();
    // Stack level 1: 10 A from 08:00 for 12 h.
    store
        .install(
            0,
            absolute(
                2,
                1,
                Purpose::TxDefault,
                t(8, 0),
                Some(12 * 3600),
                &[(0, 10.0)],
            ),
            None,
            now,
        )
        .unwrap();
    let c = store.composite(1, t(6, 0), 16 * 3600, RateUnit::A, None, &three_phase(), HW);
    assert_eq!(
        limits(&c),
        vec![(0, 16.0), (2 * 3600, 10.0), (14 * 3600, 16.0)]
    );
}

#[test]
fn tx_profile_overrides_tx_default_whatever_the_stack_levels() {
    // The 1.6 spec's stacking example shape: a TxDefaultProfile and, on top, a TxProfile for the
    // running transaction. The TxProfile's level 0 still beats the default's level 5.
    let mut store = ProfileStore::new(Rules::V16, 1, 8);
    let now = t(9, 0);
    let tx = Transaction {
        id: "42".into(),
        started: t(9, 0),
    };
    store
        .install(
            0,
            absolute(1, 5, Purpose::TxDefault, t(0, 0), None, &[(0, 10.0)]),
            None,
            now,
        )
        .unwrap();
    store
        .install(
            1,
            absolute(
                2,
                0,
                Purpose::Tx,
                t(10, 0),
                Some(3600),
                &[(0, 6.0), (1800, 8.0)],
            ),
            Some(&tx),
            now,
        )
        .unwrap();
    let c = store.composite(
        1,
        t(9, 0),
        4 * 3600,
        RateUnit::A,
        Some(&tx),
        &three_phase(),
        HW,
    );
    assert_eq!(
        limits(&c),
        vec![(0, 10.0), (3600, 6.0), (5400, 8.0), (7200, 10.0)]
    );
    // Without the transaction the TxProfile does not apply.
    let c = store.composite(1, t(9, 0), 4 * 3600, RateUnit::A, None, &three_phase(), HW);
    assert_eq!(limits(&c), vec![(0, 10.0)]);
    // The transaction ends: its TxProfile is removed.
    store.transaction_ended(1, "42");
    assert_eq!(store.len(), 1);
}

#[test]
fn station_max_only_ever_lowers() {
    let mut store = ProfileStore::new(Rules::V16, 2, 8);
    let now = t(9, 0);
    let tx = Transaction {
        id: "7".into(),
        started: now,
    };
    store
        .install(
            0,
            absolute(1, 0, Purpose::StationMax, t(0, 0), None, &[(0, 12.0)]),
            None,
            now,
        )
        .unwrap();
    store
        .install(
            1,
            absolute(2, 0, Purpose::Tx, now, None, &[(0, 20.0), (600, 8.0)]),
            Some(&tx),
            now,
        )
        .unwrap();
    let c = store.composite(1, now, 1200, RateUnit::A, Some(&tx), &three_phase(), HW);
    assert_eq!(limits(&c), vec![(0, 12.0), (600, 8.0)]);
    // EVSE 2 has no transaction profile: the cap alone applies, not the hardware 32 A.
    let c = store.composite(2, now, 1200, RateUnit::A, None, &three_phase(), HW);
    assert_eq!(limits(&c), vec![(0, 12.0)]);
}

#[test]
fn relative_profile_starts_at_the_transaction_start() {
    let mut store = ProfileStore::new(Rules::V16, 1, 8);
    let tx = Transaction {
        id: "1".into(),
        started: t(9, 30),
    };
    let p = profile(1, 0, Purpose::Tx, Kind::Relative, &[(0, 6.0), (1800, 16.0)]);
    store.install(1, p, Some(&tx), t(9, 35)).unwrap();
    // Asked at 09:40: the 16 A period starts 30 min after 09:30, i.e. 20 min from now.
    let c = store.composite(
        1,
        t(9, 40),
        3600,
        RateUnit::A,
        Some(&tx),
        &three_phase(),
        HW,
    );
    assert_eq!(limits(&c), vec![(0, 6.0), (1200, 16.0)]);
    assert_eq!(
        store
            .limit_at(1, t(10, 0), Some(&tx), &three_phase())
            .map(|l| l.amps),
        Some(16.0)
    );
}

#[test]
fn relative_default_without_transaction_starts_at_its_first_period() {
    let mut store = ProfileStore::new(Rules::V16, 1, 8);
    let p = profile(
        1,
        0,
        Purpose::TxDefault,
        Kind::Relative,
        &[(0, 6.0), (1800, 16.0)],
    );
    store.install(0, p, None, t(8, 0)).unwrap();
    let c = store.composite(1, t(9, 0), 3600, RateUnit::A, None, &three_phase(), HW);
    assert_eq!(limits(&c), vec![(0, 6.0), (1800, 16.0)]);
}

#[test]
fn recurring_daily_profile_across_midnight() {
    let mut store = ProfileStore::new(Rules::V16, 1, 8);
    // Every night from 22:00 for 8 h: 8 A. Anchored weeks earlier.
    let mut p = profile(
        1,
        0,
        Purpose::TxDefault,
        Kind::Recurring(Recurrency::Daily),
        &[(0, 8.0), (4 * 3600, 10.0)],
    );
    p.schedule.start = Some(Utc.with_ymd_and_hms(2026, 1, 1, 22, 0, 0).unwrap());
    p.schedule.duration_s = Some(8 * 3600);
    store.install(0, p, None, t(0, 0)).unwrap();
    let c = store.composite(
        1,
        t(20, 0),
        30 * 3600,
        RateUnit::A,
        None,
        &three_phase(),
        HW,
    );
    // 20:00 none (hardware), 22:00 8 A, 02:00 10 A, 06:00 none, 22:00 next night 8 A.
    assert_eq!(
        limits(&c),
        vec![
            (0, HW),
            (2 * 3600, 8.0),
            (6 * 3600, 10.0),
            (10 * 3600, HW),
            (26 * 3600, 8.0)
        ]
    );
    // Asked just after midnight: the night that began yesterday at 22:00 is still on.
    let after_midnight = Utc.with_ymd_and_hms(2026, 3, 6, 0, 30, 0).unwrap();
    assert_eq!(
        store
            .limit_at(1, after_midnight, None, &three_phase())
            .map(|l| l.amps),
        Some(8.0)
    );
}

#[test]
fn recurring_weekly_profile() {
    let mut store = ProfileStore::new(Rules::V201, 1, 8);
    // Thursdays (2026-03-05 is a Thursday) 00:00 for 24 h: 6 A.
    let mut p = profile(
        1,
        0,
        Purpose::TxDefault,
        Kind::Recurring(Recurrency::Weekly),
        &[(0, 6.0)],
    );
    p.schedule.start = Some(Utc.with_ymd_and_hms(2026, 2, 26, 0, 0, 0).unwrap());
    p.schedule.duration_s = Some(24 * 3600);
    store.install(0, p, None, t(0, 0)).unwrap();
    let c = store.composite(
        1,
        t(0, 0),
        7 * 24 * 3600,
        RateUnit::A,
        None,
        &three_phase(),
        HW,
    );
    assert_eq!(limits(&c), vec![(0, 6.0), (24 * 3600, HW)]);
}

#[test]
fn validity_window_bounds_a_profile() {
    let mut store = ProfileStore::new(Rules::V16, 1, 8);
    let mut p = absolute(1, 0, Purpose::TxDefault, t(0, 0), None, &[(0, 10.0)]);
    p.valid_from = Some(t(12, 0));
    p.valid_to = Some(t(13, 0));
    store.install(0, p, None, t(0, 0)).unwrap();
    let c = store.composite(1, t(11, 0), 3 * 3600, RateUnit::A, None, &three_phase(), HW);
    assert_eq!(limits(&c), vec![(0, HW), (3600, 10.0), (7200, HW)]);
}

#[test]
fn watt_limits_become_amps_through_the_electrical_model() {
    let circuit = three_phase();
    let mut store = ProfileStore::new(Rules::V16, 1, 8);
    // 11 040 W on three 230 V phases is 16 A; on one phase 7 360 W is 32 A.
    let mut p = absolute(
        1,
        0,
        Purpose::TxDefault,
        t(0, 0),
        None,
        &[(0, 11040.0), (3600, 7360.0)],
    );
    p.schedule.unit = RateUnit::W;
    p.schedule.periods[1].number_phases = Some(1);
    store.install(0, p, None, t(0, 0)).unwrap();
    let first = store.limit_at(1, t(0, 10), None, &circuit).unwrap();
    assert!((first.amps - 16.0).abs() < 1e-9);
    assert_eq!(first.phases, 3);
    let second = store.limit_at(1, t(1, 10), None, &circuit).unwrap();
    assert!((second.amps - 32.0).abs() < 1e-9);
    assert_eq!(second.phases, 1);
    // Reported back in W, per period with its phases.
    let c = store.composite(1, t(0, 0), 7200, RateUnit::W, None, &circuit, HW);
    assert_eq!(limits(&c), vec![(0, 11040.0), (3600, 7360.0)]);
    assert_eq!(c.periods[1].number_phases, 1);
    // On a single-phase circuit numberPhases 3 is capped at 1: 11 040 W is 48 A.
    let single = ElectricalModel::WYE_230_400
        .station(StationWiring::single_phase(Line::L2))
        .unwrap();
    let l = store.limit_at(1, t(0, 10), None, &single).unwrap();
    assert!((l.amps - 48.0).abs() < 1e-9);
    assert_eq!(l.phases, 1);
}

#[test]
fn composite_never_reports_more_than_the_hardware() {
    let mut store = ProfileStore::new(Rules::V16, 1, 8);
    store
        .install(
            0,
            absolute(1, 0, Purpose::TxDefault, t(0, 0), None, &[(0, 63.0)]),
            None,
            t(0, 0),
        )
        .unwrap();
    let c = store.composite(1, t(1, 0), 60, RateUnit::A, None, &three_phase(), HW);
    assert_eq!(limits(&c), vec![(0, HW)]);
}

#[test]
fn invalid_profiles_are_rejected() {
    let mut store = ProfileStore::new(Rules::V16, 2, 3);
    let now = t(0, 0);
    let tx = Transaction {
        id: "1".into(),
        started: now,
    };
    let cases = [
        (
            0,
            profile(1, 0, Purpose::TxDefault, Kind::Absolute, &[]),
            None,
            ProfileError::NoPeriods,
        ),
        (
            0,
            profile(1, 0, Purpose::TxDefault, Kind::Absolute, &[(60, 6.0)]),
            None,
            ProfileError::FirstPeriodNotZero(60),
        ),
        (
            0,
            profile(
                1,
                0,
                Purpose::TxDefault,
                Kind::Absolute,
                &[(0, 6.0), (0, 8.0)],
            ),
            None,
            ProfileError::PeriodsNotIncreasing { prev: 0, next: 0 },
        ),
        (
            0,
            profile(1, 0, Purpose::TxDefault, Kind::Absolute, &[(0, f64::NAN)]),
            None,
            ProfileError::BadLimit(f64::NAN),
        ),
        (
            0,
            profile(1, 4, Purpose::TxDefault, Kind::Absolute, &[(0, 6.0)]),
            None,
            ProfileError::StackLevel { level: 4, max: 3 },
        ),
        (
            1,
            profile(1, 0, Purpose::StationMax, Kind::Absolute, &[(0, 6.0)]),
            None,
            ProfileError::StationMaxNotOnZero(Purpose::StationMax),
        ),
        (
            0,
            profile(1, 0, Purpose::Tx, Kind::Absolute, &[(0, 6.0)]),
            Some(&tx),
            ProfileError::TxProfileOnZero,
        ),
        (
            1,
            profile(1, 0, Purpose::Tx, Kind::Absolute, &[(0, 6.0)]),
            None,
            ProfileError::NoTransaction(1),
        ),
        (
            3,
            profile(1, 0, Purpose::TxDefault, Kind::Absolute, &[(0, 6.0)]),
            None,
            ProfileError::UnknownEvse(3),
        ),
    ];
    for (evse, p, tx, want) in cases {
        let got = store.install(evse, p, tx, now).unwrap_err();
        // NaN != NaN: compare the message.
        assert_eq!(got.to_string(), want.to_string());
    }
    let mut wrong = profile(1, 0, Purpose::Tx, Kind::Absolute, &[(0, 6.0)]);
    wrong.transaction_id = Some("2".into());
    assert_eq!(
        store.install(1, wrong, Some(&tx), now),
        Err(ProfileError::WrongTransaction {
            given: "2".into(),
            running: "1".into()
        })
    );
    assert!(store.is_empty());
}

#[test]
fn same_slot_replaces_in_16_and_is_rejected_in_201() {
    let now = t(0, 0);
    let mut v16 = ProfileStore::new(Rules::V16, 1, 8);
    v16.install(
        1,
        profile(1, 2, Purpose::TxDefault, Kind::Absolute, &[(0, 6.0)]),
        None,
        now,
    )
    .unwrap();
    v16.install(
        1,
        profile(2, 2, Purpose::TxDefault, Kind::Absolute, &[(0, 8.0)]),
        None,
        now,
    )
    .unwrap();
    assert_eq!(
        v16.profiles().map(|(_, p)| p.id).collect::<Vec<_>>(),
        vec![2]
    );
    // The same id replaces, even at another level or EVSE.
    v16.install(
        0,
        profile(2, 0, Purpose::TxDefault, Kind::Absolute, &[(0, 9.0)]),
        None,
        now,
    )
    .unwrap();
    assert_eq!(v16.len(), 1);
    assert_eq!(
        v16.limit_at(1, now, None, &three_phase()).map(|l| l.amps),
        Some(9.0)
    );

    let mut v201 = ProfileStore::new(Rules::V201, 1, 8);
    v201.install(
        1,
        profile(1, 2, Purpose::TxDefault, Kind::Absolute, &[(0, 6.0)]),
        None,
        now,
    )
    .unwrap();
    assert_eq!(
        v201.install(
            1,
            profile(2, 2, Purpose::TxDefault, Kind::Absolute, &[(0, 8.0)]),
            None,
            now
        ),
        Err(ProfileError::DuplicateStackLevel {
            other: 1,
            level: 2,
            purpose: Purpose::TxDefault
        })
    );
}

#[test]
fn evse_profile_beats_evse_zero_at_the_same_level() {
    let now = t(0, 0);
    let mut store = ProfileStore::new(Rules::V16, 2, 8);
    store
        .install(
            0,
            profile(1, 0, Purpose::TxDefault, Kind::Absolute, &[(0, 16.0)]),
            None,
            now,
        )
        .unwrap();
    store
        .install(
            2,
            profile(2, 0, Purpose::TxDefault, Kind::Absolute, &[(0, 6.0)]),
            None,
            now,
        )
        .unwrap();
    let c = three_phase();
    assert_eq!(store.limit_at(1, now, None, &c).map(|l| l.amps), Some(16.0));
    assert_eq!(store.limit_at(2, now, None, &c).map(|l| l.amps), Some(6.0));
}

#[test]
fn clear_charging_profile_filters() {
    let now = t(0, 0);
    let mut store = ProfileStore::new(Rules::V16, 2, 8);
    for (id, evse, level, purpose) in [
        (1, 0, 0, Purpose::StationMax),
        (2, 0, 0, Purpose::TxDefault),
        (3, 1, 1, Purpose::TxDefault),
        (4, 2, 1, Purpose::TxDefault),
    ] {
        store
            .install(
                evse,
                profile(id, level, purpose, Kind::Absolute, &[(0, 10.0)]),
                None,
                now,
            )
            .unwrap();
    }
    let ids = |s: &ProfileStore| s.profiles().map(|(_, p)| p.id).collect::<Vec<_>>();
    assert_eq!(
        store.clear(&ClearFilter {
            id: Some(99),
            ..Default::default()
        }),
        0
    );
    assert_eq!(
        store.clear(&ClearFilter {
            evse: Some(1),
            stack_level: Some(1),
            ..Default::default()
        }),
        1
    );
    assert_eq!(ids(&store), vec![1, 2, 4]);
    assert_eq!(
        store.clear(&ClearFilter {
            purpose: Some(Purpose::TxDefault),
            ..Default::default()
        }),
        2
    );
    assert_eq!(ids(&store), vec![1]);
    assert_eq!(store.clear(&ClearFilter::default()), 1);
    assert!(store.is_empty());
}

#[test]
fn wire_profiles_convert_and_bad_ones_are_refused() {
    let json = serde_json::json!({
        "chargingProfileId": 5, "stackLevel": 1, "chargingProfilePurpose": "TxDefaultProfile",
        "chargingProfileKind": "Recurring", "recurrencyKind": "Daily",
        "chargingSchedule": {"startSchedule": "2026-01-01T22:00:00Z", "duration": 28800,
            "chargingRateUnit": "W",
            "chargingSchedulePeriod": [{"startPeriod": 0, "limit": 7360.0, "numberPhases": 1}]}
    });
    let wire: v16::ChargingProfile = serde_json::from_value(json).unwrap();
    let p = Profile::try_from(&wire).unwrap();
    assert_eq!(p.kind, Kind::Recurring(Recurrency::Daily));
    assert_eq!(p.schedule.unit, RateUnit::W);
    assert_eq!(p.schedule.periods[0].number_phases, Some(1));

    let mut bad = wire.clone();
    bad.recurrency_kind = None;
    assert_eq!(Profile::try_from(&bad), Err(ProfileError::NoRecurrency));
    let mut bad = wire;
    bad.charging_schedule.charging_schedule_period[0].number_phases = Some(4);
    assert_eq!(Profile::try_from(&bad), Err(ProfileError::BadPhases(4)));
}

#[test]
fn composite_converts_to_both_wire_forms() {
    let mut store = ProfileStore::new(Rules::V201, 1, 8);
    store
        .install(
            0,
            absolute(
                1,
                0,
                Purpose::TxDefault,
                t(0, 0),
                None,
                &[(0, 10.0), (60, 6.5)],
            ),
            None,
            t(0, 0),
        )
        .unwrap();
    let c = store.composite(1, t(0, 0), 120, RateUnit::A, None, &three_phase(), HW);
    let s16 = c.to_v16();
    assert_eq!(s16.charging_schedule_period.len(), 2);
    assert_eq!(s16.charging_schedule_period[1].limit, 6.5);
    let s201 = c.to_v201();
    assert_eq!(s201.evse_id, 1);
    assert_eq!(s201.duration, 120);
    assert_eq!(c.limit_after(59), Some(10.0));
    assert_eq!(c.limit_after(60), Some(6.5));
}

#[test]
fn station_cap_is_separate_from_the_evse_view_for_sharing() {
    let now = t(9, 0);
    let mut store = ProfileStore::new(Rules::V16, 2, 8);
    store
        .install(
            0,
            absolute(1, 0, Purpose::StationMax, t(0, 0), None, &[(0, 20.0)]),
            None,
            now,
        )
        .unwrap();
    store
        .install(
            0,
            absolute(2, 0, Purpose::TxDefault, t(0, 0), None, &[(0, 16.0)]),
            None,
            now,
        )
        .unwrap();
    let c = three_phase();
    assert_eq!(store.limit_at(1, now, None, &c).map(|l| l.amps), Some(16.0));
    assert_eq!(
        store.evse_limit_at(1, now, None, &c).map(|l| l.amps),
        Some(16.0)
    );
    assert_eq!(store.station_cap_at(now, &c).map(|l| l.amps), Some(20.0));
    store.clear(&ClearFilter {
        id: Some(2),
        ..Default::default()
    });
    // Without a default, the EVSE view has no limit of its own; the per-EVSE view keeps the cap.
    assert_eq!(store.evse_limit_at(1, now, None, &c), None);
    assert_eq!(store.limit_at(1, now, None, &c).map(|l| l.amps), Some(20.0));
}

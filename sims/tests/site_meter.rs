//! The site model, and the grid meter read back over real loopback sockets: Modbus TCP SunSpec
//! with tokio-modbus's client, the HomeWizard-shaped JSON and the tariff feed with an HTTP GET.

use std::net::SocketAddr;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use loadstar_optimizer::model::{ElectricalModel, PerLine};
use loadstar_sims::meter::*;
use loadstar_sims::site::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;
use tokio_modbus::prelude::*;

fn at(h: u32, m: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 6, 21, h, m, 0).unwrap()
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-6
}

fn site() -> Site {
    Site {
        model: ElectricalModel::WYE_230_400,
        base_load_w: DailyProfile::constant(2_070.0).unwrap(),
        base_shares: [1.0; 3],
        pv: Some(Pv {
            peak_w: 13_800.0,
            sunrise_s: 6 * 3600,
            sunset_s: 18 * 3600,
        }),
        limit: PerLine::splat(63.0),
        limit_changes: vec![LimitChange {
            at: at(18, 0),
            limit: PerLine::splat(40.0),
            announced: true,
        }],
    }
}

#[test]
fn daily_profile_interpolates_and_wraps_across_midnight() {
    let p = DailyProfile::new(vec![(6 * 3600, 1_000.0), (18 * 3600, 3_000.0)]).unwrap();
    assert!(close(p.at(at(12, 0)), 2_000.0));
    // 18:00 → 06:00 runs from 3 000 back to 1 000 over 12 h: midnight is halfway.
    assert!(close(p.at(at(0, 0)), 2_000.0));
    assert!(close(p.at(at(21, 0)), 2_500.0));
    assert!(close(p.at(at(3, 0)), 1_500.0));
    assert!(close(
        DailyProfile::constant(5.0).unwrap().at(at(13, 17)),
        5.0
    ));
    assert_eq!(DailyProfile::new(vec![]), Err(SiteError::EmptyProfile));
    assert_eq!(
        DailyProfile::new(vec![(86_400, 1.0)]),
        Err(SiteError::PointOutOfDay(86_400))
    );
    assert_eq!(
        DailyProfile::new(vec![(10, 1.0), (10, 2.0)]),
        Err(SiteError::PointsNotIncreasing(10, 10))
    );
    assert!(DailyProfile::new(vec![(0, f64::NAN)]).is_err());
}

#[test]
fn grid_is_base_plus_evs_minus_pv_with_export_negative() {
    let s = site();
    s.validate().unwrap();
    // Night: base only, 2 070 W over three 230 V lines is 3 A each.
    let night = s.grid_amps(at(2, 0), PerLine::ZERO);
    assert!(night.iter().all(|(_, a)| close(a, 3.0)), "{night:?}");
    // Solar noon: 13 800 W of PV is 20 A per line; a 1-phase EV at 16 A on L1.
    let noon = s.grid_amps(at(12, 0), PerLine::new(16.0, 0.0, 0.0));
    assert!(close(
        noon[loadstar_optimizer::model::Line::L1],
        3.0 + 16.0 - 20.0
    ));
    assert!(close(noon[loadstar_optimizer::model::Line::L2], -17.0));
    // Limits: the scripted drop at 18:00.
    assert_eq!(s.limit_at(at(17, 59)), PerLine::splat(63.0));
    assert_eq!(s.limit_at(at(18, 0)), PerLine::splat(40.0));
    let bad = Site {
        base_shares: [0.0; 3],
        ..site()
    };
    assert_eq!(bad.validate(), Err(SiteError::BadShares));
}

#[test]
fn grid_meter_integrates_import_and_export_separately() {
    let mut m = GridMeter::new(ElectricalModel::WYE_230_400);
    m.update(at(10, 0), PerLine::splat(10.0)); // 6 900 W import
    m.update(at(11, 0), PerLine::splat(-5.0)); // then 3 450 W export
    m.update(at(11, 30), PerLine::splat(-5.0));
    let r = m.reading();
    assert!(close(r.import_wh, 6_900.0));
    assert!(close(r.export_wh, 1_725.0));
    assert!(close(r.total_w(), -3_450.0));
}

fn reading(amps: PerLine, import_wh: f64, export_wh: f64) -> MeterReading {
    let mut m = GridMeter::new(ElectricalModel::WYE_230_400);
    m.update(at(12, 0), amps);
    MeterReading {
        import_wh,
        export_wh,
        ..m.reading()
    }
}

fn value(raw: u16, sf: u16) -> f64 {
    f64::from(raw as i16) * 10f64.powi(i32::from(sf as i16))
}

#[tokio::test]
async fn sunspec_meter_reads_back_over_modbus_tcp() {
    let (tx, rx) = watch::channel(reading(PerLine::new(12.34, -5.0, 0.5), 123_456.0, 789.0));
    let served = serve_sunspec(rx, "GRID-1").await.unwrap();
    assert!(served.addr.ip().is_loopback());
    let mut ctx = tcp::connect(served.addr).await.unwrap();
    let marker = ctx
        .read_holding_registers(40_000, 2)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(marker, vec![0x5375, 0x6E53]);
    // Walk the model chain until the end marker, as a real client does.
    let mut addr = 40_002u16;
    let mut models = Vec::new();
    let mut m203 = None;
    for _ in 0..10 {
        let header = ctx.read_holding_registers(addr, 2).await.unwrap().unwrap();
        if header[0] == 0xFFFF {
            break;
        }
        models.push(header[0]);
        if header[0] == 203 {
            m203 = Some(
                ctx.read_holding_registers(addr, 2 + header[1])
                    .await
                    .unwrap()
                    .unwrap(),
            );
        }
        addr += 2 + header[1];
    }
    assert_eq!(models, vec![1, 203]);
    let m = m203.unwrap();
    assert_eq!(m[1], 105);
    let a_sf = m[6];
    assert_eq!(a_sf as i16, -2);
    assert!(close(value(m[3], a_sf), 12.34));
    assert!(close(value(m[4], a_sf), -5.0));
    assert!(close(value(m[5], a_sf), 0.5));
    assert!(close(value(m[2], a_sf), 7.84));
    let w_sf = m[22];
    // 12.34 A × 230 V = 2 838.2 W, at W_SF 0 whole watts.
    assert_eq!(w_sf, 0);
    assert!(close(value(m[19], w_sf), 2_838.0));
    assert!(close(value(m[20], w_sf), -1_150.0));
    assert!(close(value(m[16], m[17]), 50.0));
    assert!(close(value(m[8], m[15]), 230.0));
    let acc = |hi: u16, lo: u16| (u32::from(hi) << 16) | u32::from(lo);
    assert_eq!(acc(m[46], m[47]), 123_456); // TotWhImp
    assert_eq!(acc(m[38], m[39]), 789); // TotWhExp
    assert_eq!(m[54], 0); // TotWh_SF
    assert_eq!(m[23], NOT_IMPLEMENTED); // VA

    // A big load moves the scale factors up instead of wrapping int16.
    tx.send_replace(reading(PerLine::splat(400.0), 0.0, 0.0));
    let m = ctx
        .read_holding_registers(40_070, 107)
        .await
        .unwrap()
        .unwrap();
    assert!(close(value(m[3], m[6]), 400.0));
    assert_eq!(m[6] as i16, -1);
    assert!(close(value(m[18], m[22]), 276_000.0));
    assert_eq!(m[22] as i16, 1);

    // Outside the map: a Modbus exception, not a crash.
    let err = ctx.read_holding_registers(39_000, 2).await.unwrap();
    assert_eq!(err, Err(ExceptionCode::IllegalDataAddress));
    let err = ctx.read_holding_registers(40_170, 20).await.unwrap();
    assert_eq!(err, Err(ExceptionCode::IllegalDataAddress));
    let end = ctx
        .read_holding_registers(40_177, 2)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(end, vec![0xFFFF, 0]);
}

/// A plain HTTP/1.1 GET over a real socket: status code and parsed body.
async fn http(addr: SocketAddr, method: &str, path: &str) -> (u16, serde_json::Value) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut raw))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8(raw).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let status: u16 = head.split(' ').nth(1).unwrap().parse().unwrap();
    assert!(head.contains("Content-Type: application/json"));
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("Content-Length: "))
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(len, body.len());
    (status, serde_json::from_str(body).unwrap())
}

#[tokio::test]
async fn homewizard_meter_reads_back_over_http() {
    let (_tx, rx) = watch::channel(reading(PerLine::new(10.0, -4.0, 0.0), 12_345.6, 2_000.0));
    let served = serve_homewizard(rx.clone(), false).await.unwrap();
    assert!(served.addr.ip().is_loopback());
    let (status, body) = http(served.addr, "GET", "/api/v1/data").await;
    assert_eq!(status, 200);
    assert_eq!(body["active_power_w"], 1_380.0);
    assert_eq!(body["active_power_l1_w"], 2_300.0);
    assert_eq!(body["active_power_l2_w"], -920.0);
    assert_eq!(body["active_current_l2_a"], -4.0);
    assert_eq!(body["active_voltage_l3_v"], 230.0);
    assert_eq!(body["total_power_import_kwh"], 12.346);
    assert_eq!(body["total_power_export_kwh"], 2.0);
    assert_eq!(http(served.addr, "GET", "/nope").await.0, 404);
    assert_eq!(http(served.addr, "POST", "/api/v1/data").await.0, 405);

    // Firmware with unsigned currents: magnitudes only, power keeps its sign.
    let unsigned = serve_homewizard(rx, true).await.unwrap();
    let (_, body) = http(unsigned.addr, "GET", "/api/v1/data?x=1").await;
    assert_eq!(body["active_current_l2_a"], 4.0);
    assert_eq!(body["active_power_l2_w"], -920.0);
}

#[tokio::test]
async fn tariff_feed_serves_its_slots() {
    let slots = vec![
        TariffSlot {
            start: at(0, 0),
            end: at(7, 0),
            price: 0.12,
        },
        TariffSlot {
            start: at(7, 0),
            end: at(23, 0),
            price: 0.31,
        },
    ];
    let (_tx, rx) = watch::channel(slots.clone());
    let served = serve_tariff(rx).await.unwrap();
    let (status, body) = http(served.addr, "GET", "/tariff").await;
    assert_eq!(status, 200);
    let back: Vec<TariffSlot> = serde_json::from_value(body).unwrap();
    assert_eq!(back, slots);
}

#[tokio::test]
async fn a_garbage_request_gets_400_not_a_hang() {
    let (_tx, rx) = watch::channel(MeterReading::default());
    let served = serve_homewizard(rx, false).await.unwrap();
    let mut s = tokio::net::TcpStream::connect(served.addr).await.unwrap();
    // One byte over the 8 KiB head limit, so the server has read everything when it answers.
    s.write_all(&[b'x'; 8 * 1024 + 1]).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut raw))
        .await
        .unwrap()
        .unwrap();
    assert!(String::from_utf8_lossy(&raw).starts_with("HTTP/1.1 400"));
}

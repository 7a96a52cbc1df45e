//! The SVG report plots: series, scaling, bucketing that keeps peaks, escaping.

use chrono::{DateTime, TimeZone, Utc};
use loadstar_optimizer::model::{Line, PerLine};
use loadstar_sims::plot::*;

fn t(s: i64) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 3, 2, 0, 0, 0).unwrap() + chrono::Duration::seconds(s)
}

/// The points of the polyline tagged `series`.
fn series(svg: &str, series: &str) -> Vec<(f64, f64)> {
    let tag = format!("data-series=\"{series}\" points=\"");
    let start = svg.find(&tag).unwrap_or_else(|| panic!("no {series}")) + tag.len();
    let end = start + svg[start..].find('"').unwrap();
    svg[start..end]
        .split(' ')
        .map(|p| {
            let (x, y) = p.split_once(',').unwrap();
            (x.parse().unwrap(), y.parse().unwrap())
        })
        .collect()
}

#[test]
fn site_plot_has_a_series_per_line_and_the_limit_and_keeps_the_peak() {
    // A day at 1 s, flat 20 A with one 1-second spike to 90 A on L2, limit 63 A then 40 A.
    let points: Vec<SitePoint> = (0..86_400)
        .map(|s| SitePoint {
            at: t(s),
            grid: PerLine::new(20.0, if s == 43_210 { 90.0 } else { 20.0 }, 20.0),
            limit: PerLine::splat(if s < 64_800 { 63.0 } else { 40.0 }),
        })
        .collect();
    let svg = site_current_svg("office <day>", &points, &Line::ALL);
    assert!(svg.starts_with("<svg"));
    assert!(svg.trim_end().ends_with("</svg>"));
    assert!(svg.contains("office &lt;day&gt;"));
    let l2 = series(&svg, "L2");
    assert!(l2.len() <= MAX_POINTS);
    // The spike survives bucketing as the topmost point (smallest y).
    let top = l2.iter().map(|p| p.1).fold(f64::INFINITY, f64::min);
    let flat = series(&svg, "L1")[0].1;
    assert!(top < flat);
    let limit = series(&svg, "limit");
    assert!(
        limit.first().unwrap().1 < limit.last().unwrap().1,
        "the limit drops later"
    );
    // Time runs left to right, labelled in hours for a day.
    assert!(l2.windows(2).all(|w| w[0].0 < w[1].0));
    assert!(svg.contains(">+12 h<"));
    // A short run is labelled in minutes.
    let short: Vec<SitePoint> = points[..5_400].to_vec();
    let svg = site_current_svg("short", &short, &Line::ALL);
    assert!(svg.contains(">+30 min<") && !svg.contains(" h<"), "{svg}");
}

#[test]
fn empty_and_odd_input_still_gives_svg() {
    let svg = site_current_svg("empty", &[], &Line::ALL);
    assert!(svg.starts_with("<svg") && svg.contains("</svg>"));
    let svg = vehicle_energy_svg(
        "cars",
        &[
            ("EV \"1\"".into(), f64::NAN, 30.0),
            ("EV2".into(), 12.0, 30.0),
        ],
    );
    assert_eq!(svg.matches("data-series=\"delivered\"").count(), 2);
    assert!(svg.contains("EV &quot;1&quot;"));
    assert!(!svg.contains("NaN"));
}

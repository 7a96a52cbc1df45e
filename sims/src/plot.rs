//! SVG plots for run reports (pure, no plotting crate): site current per line against the limit
//! over the run, and energy per vehicle.

use std::fmt::Write;

use chrono::{DateTime, Utc};
use loadstar_optimizer::model::{Line, PerLine};

/// Most points drawn per series; longer series are bucketed (max of the current, min of the
/// limit per bucket, so no excess disappears from the picture).
pub const MAX_POINTS: usize = 1440;

const WIDTH: f64 = 1000.0;
const HEIGHT: f64 = 420.0;
const LEFT: f64 = 60.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 30.0;
const BOTTOM: f64 = 40.0;
const COLOURS: [&str; 3] = ["#1f77b4", "#2ca02c", "#ff7f0e"];

/// One point of the site series.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SitePoint {
    pub at: DateTime<Utc>,
    pub grid: PerLine,
    pub limit: PerLine,
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Buckets `points` down to at most [`MAX_POINTS`].
pub fn downsample(points: &[SitePoint]) -> Vec<SitePoint> {
    if points.len() <= MAX_POINTS {
        return points.to_vec();
    }
    let per = points.len().div_ceil(MAX_POINTS);
    points
        .chunks(per)
        .filter_map(|chunk| {
            let first = chunk.first()?;
            Some(chunk.iter().skip(1).fold(*first, |acc, p| SitePoint {
                at: acc.at,
                grid: acc.grid.max(p.grid),
                limit: acc.limit.min(p.limit),
            }))
        })
        .collect()
}

/// Site current per line (`lines`) and the limit over time. Non-finite values are left out.
pub fn site_current_svg(title: &str, points: &[SitePoint], lines: &[Line]) -> String {
    let points = downsample(points);
    let mut svg = header(title);
    let (Some(first), Some(last)) = (points.first(), points.last()) else {
        svg.push_str("</svg>\n");
        return svg;
    };
    let t0 = first.at;
    let span = ((last.at - t0).num_seconds().max(1)) as f64;
    let finite = |v: f64| v.is_finite().then_some(v);
    let values = points
        .iter()
        .flat_map(|p| lines.iter().flat_map(move |&l| [p.grid[l], p.limit[l]]))
        .filter_map(finite);
    let (lo, hi) = values.fold((0.0f64, 1.0f64), |(lo, hi), v| (lo.min(v), hi.max(v)));
    let hi = hi * 1.05;
    let x = |t: DateTime<Utc>| LEFT + (t - t0).num_seconds() as f64 / span * (WIDTH - LEFT - RIGHT);
    let y = |v: f64| TOP + (hi - v) / (hi - lo) * (HEIGHT - TOP - BOTTOM);

    axes(&mut svg, lo, hi, &y, "A per line");
    // Time along the bottom: whole hours, or minutes for runs under two hours.
    let (unit_s, unit) = if span < 7200.0 {
        (60i64, "min")
    } else {
        (3600, "h")
    };
    let units = (span / unit_s as f64).ceil() as i64;
    let step = [1i64, 2, 5, 10, 15, 30, 60]
        .into_iter()
        .find(|s| units / s <= 12)
        .unwrap_or(units / 12 + 1);
    for k in (0..=units).step_by(step as usize) {
        let xt = x(t0 + chrono::Duration::seconds(k * unit_s));
        if xt <= WIDTH - RIGHT + 0.5 {
            let _ = writeln!(
                svg,
                r#"<text x="{xt:.1}" y="{:.1}" font-size="11" text-anchor="middle">+{k} {unit}</text>"#,
                HEIGHT - BOTTOM + 16.0
            );
        }
    }
    let mut polyline = |values: &mut dyn Iterator<Item = (DateTime<Utc>, f64)>, style: &str| {
        let pts: Vec<String> = values
            .filter(|(_, v)| v.is_finite())
            .map(|(t, v)| format!("{:.1},{:.1}", x(t), y(v)))
            .collect();
        let _ = writeln!(
            svg,
            r#"<polyline fill="none" {style} points="{}"/>"#,
            pts.join(" ")
        );
    };
    for &line in lines {
        polyline(
            &mut points.iter().map(|p| (p.at, p.grid[line])),
            &format!(
                r#"stroke="{}" stroke-width="1.2" data-series="{line}""#,
                COLOURS[line.index()]
            ),
        );
    }
    // The tightest line limit, dashed.
    polyline(
        &mut points.iter().map(|p| {
            let tightest = lines
                .iter()
                .map(|&l| p.limit[l])
                .fold(f64::INFINITY, f64::min);
            (p.at, tightest)
        }),
        r##"stroke="#d62728" stroke-width="1.5" stroke-dasharray="6 4" data-series="limit""##,
    );
    for (i, &line) in lines.iter().enumerate() {
        let _ = writeln!(
            svg,
            r#"<text x="{:.1}" y="{:.1}" font-size="12" fill="{}">{line}</text>"#,
            WIDTH - RIGHT - 120.0 + 30.0 * i as f64,
            TOP - 8.0,
            COLOURS[line.index()]
        );
    }
    let _ = writeln!(
        svg,
        r##"<text x="{:.1}" y="{:.1}" font-size="12" fill="#d62728">limit</text>"##,
        WIDTH - RIGHT - 30.0,
        TOP - 8.0
    );
    svg.push_str("</svg>\n");
    svg
}

/// Delivered against requested energy per vehicle, as bars.
pub fn vehicle_energy_svg(title: &str, vehicles: &[(String, f64, f64)]) -> String {
    let mut svg = header(title);
    let hi = vehicles
        .iter()
        .flat_map(|(_, d, r)| [*d, *r])
        .filter(|v| v.is_finite())
        .fold(1.0f64, f64::max)
        * 1.05;
    let y = |v: f64| TOP + (hi - v) / hi * (HEIGHT - TOP - BOTTOM);
    axes(&mut svg, 0.0, hi, &y, "kWh");
    let slot = (WIDTH - LEFT - RIGHT) / vehicles.len().max(1) as f64;
    for (i, (label, delivered, requested)) in vehicles.iter().enumerate() {
        let x0 = LEFT + slot * i as f64;
        for (value, colour, offset, series) in [
            (*requested, "#bbbbbb", 0.1, "requested"),
            (*delivered, "#1f77b4", 0.45, "delivered"),
        ] {
            let v = if value.is_finite() {
                value.max(0.0)
            } else {
                0.0
            };
            let _ = writeln!(
                svg,
                r#"<rect x="{:.2}" y="{:.2}" width="{:.2}" height="{:.2}" fill="{colour}" data-series="{series}"><title>{}: {v:.1} kWh {series}</title></rect>"#,
                x0 + slot * offset,
                y(v),
                slot * 0.35,
                y(0.0) - y(v),
                escape(label)
            );
        }
    }
    // Names under the bars while they fit; the tooltips carry them always.
    if vehicles.len() <= 40 {
        for (i, (label, ..)) in vehicles.iter().enumerate() {
            let _ = writeln!(
                svg,
                r#"<text x="{:.1}" y="{:.1}" font-size="10" text-anchor="middle">{}</text>"#,
                LEFT + slot * (i as f64 + 0.45),
                HEIGHT - BOTTOM + 14.0,
                escape(label)
            );
        }
    }
    for (i, (name, colour)) in [("requested", "#bbbbbb"), ("delivered", "#1f77b4")]
        .into_iter()
        .enumerate()
    {
        let _ = writeln!(
            svg,
            r#"<text x="{:.1}" y="{:.1}" font-size="12" fill="{colour}">{name}</text>"#,
            WIDTH - RIGHT - 150.0 + 75.0 * i as f64,
            TOP - 8.0
        );
    }
    svg.push_str("</svg>\n");
    svg
}

fn header(title: &str) -> String {
    format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH}\" height=\"{HEIGHT}\" viewBox=\"0 0 {WIDTH} {HEIGHT}\" font-family=\"sans-serif\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n<text x=\"{LEFT}\" y=\"18\" font-size=\"14\">{}</text>\n",
        escape(title)
    )
}

fn axes(svg: &mut String, lo: f64, hi: f64, y: &dyn Fn(f64) -> f64, unit: &str) {
    let _ = writeln!(
        svg,
        r#"<text x="14" y="{:.1}" font-size="12" transform="rotate(-90 14 {:.1})" text-anchor="middle">{unit}</text>"#,
        HEIGHT / 2.0,
        HEIGHT / 2.0
    );
    let _ = writeln!(
        svg,
        r#"<line x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{:.1}" stroke="black"/>"#,
        HEIGHT - BOTTOM
    );
    let _ = writeln!(
        svg,
        r#"<line x1="{LEFT}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="black"/>"#,
        y(0.0).clamp(TOP, HEIGHT - BOTTOM),
        WIDTH - RIGHT,
        y(0.0).clamp(TOP, HEIGHT - BOTTOM)
    );
    for k in 0..=5 {
        let v = lo + (hi - lo) * f64::from(k) / 5.0;
        let _ = writeln!(
            svg,
            r#"<text x="{:.1}" y="{:.1}" font-size="11" text-anchor="end">{v:.0}</text>"#,
            LEFT - 6.0,
            y(v) + 4.0
        );
    }
}

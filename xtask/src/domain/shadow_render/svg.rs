//! The report's chart: class agreement with its interval and the noise floor beside the
//! histogram of per-row probability differences, as a self-contained SVG.

use super::*;
use crate::domain::text::{svg_start, xml_escape as esc};

/// The chart's size and its two plots' frames, in SVG user units.
const WIDTH: f64 = 720.0;
const HEIGHT: f64 = 330.0;
const PLOT_TOP: f64 = 70.0;
const PLOT_BOTTOM: f64 = 250.0;
const BAR_LEFT: f64 = 100.0;
const BAR_WIDTH: f64 = 70.0;
const HIST_LEFT: f64 = 320.0;
const HIST_RIGHT: f64 = 700.0;

/// A self-contained SVG chart: left, class agreement as a bar against 0–100 % with its 95 %
/// interval as a whisker and the noise floor as a dashed line; right, the histogram of per-row
/// probability differences. Generic font family only, no scripts; the same analysis always
/// gives the same bytes.
pub fn svg(a: &Analysis) -> String {
    let mut out = String::new();
    out += &svg_start(WIDTH, HEIGHT);
    let _ = writeln!(
        out,
        r##"<text x="20" y="26" font-size="14" font-weight="bold">{}</text>"##,
        esc(&format!(
            "shadow: candidate {} vs active {}",
            a.candidate_name(),
            a.active_name()
        ))
    );
    let _ = writeln!(
        out,
        r##"<text x="20" y="46" fill="#555555">{}</text>"##,
        esc(&coverage(a))
    );
    agreement_plot(&mut out, a);
    histogram_plot(&mut out, a);
    out += "</svg>\n";
    out
}

/// The y of a fraction 0..1 on the plots' vertical scale.
fn y_of(fraction: f64) -> f64 {
    PLOT_BOTTOM - fraction.clamp(0.0, 1.0) * (PLOT_BOTTOM - PLOT_TOP)
}

fn agreement_plot(out: &mut String, a: &Analysis) {
    let axis_x = BAR_LEFT - 15.0;
    let _ = writeln!(
        out,
        r##"<line x1="{axis_x}" y1="{PLOT_TOP}" x2="{axis_x}" y2="{PLOT_BOTTOM}" stroke="#333333"/>"##
    );
    for tick in [0u32, 25, 50, 75, 100] {
        let y = y_of(f64::from(tick) / 100.0);
        let _ = writeln!(
            out,
            r##"<line x1="{}" y1="{y:.1}" x2="{axis_x}" y2="{y:.1}" stroke="#333333"/><text x="{}" y="{:.1}" text-anchor="end">{tick} %</text>"##,
            axis_x - 4.0,
            axis_x - 6.0,
            y + 4.0
        );
    }
    let center = BAR_LEFT + BAR_WIDTH / 2.0;
    let _ = writeln!(
        out,
        r##"<text x="{center}" y="{}" text-anchor="middle">class agreement</text>"##,
        PLOT_BOTTOM + 18.0
    );
    let Some(agreement) = a.agreement else {
        let _ = writeln!(
            out,
            r##"<text x="{center}" y="{:.1}" text-anchor="middle" fill="#555555">no rows compared</text>"##,
            y_of(0.5)
        );
        return;
    };
    let top = y_of(agreement.fraction);
    let _ = writeln!(
        out,
        r##"<rect x="{BAR_LEFT}" y="{top:.1}" width="{BAR_WIDTH}" height="{:.1}" fill="#4c78a8"/>"##,
        PLOT_BOTTOM - top
    );
    let (low, high) = (y_of(agreement.ci95_low), y_of(agreement.ci95_high));
    let _ = writeln!(
        out,
        r##"<g stroke="#222222" stroke-width="1.5"><line x1="{center}" y1="{high:.1}" x2="{center}" y2="{low:.1}"/><line x1="{}" y1="{high:.1}" x2="{}" y2="{high:.1}"/><line x1="{}" y1="{low:.1}" x2="{}" y2="{low:.1}"/></g>"##,
        center - 8.0,
        center + 8.0,
        center - 8.0,
        center + 8.0
    );
    if let Some(floor) = a.floor.filter(|floor| floor.rows_compared > 0) {
        let y = y_of(1.0 - floor.class_disagreement);
        let _ = writeln!(
            out,
            r##"<line x1="{}" y1="{y:.1}" x2="{}" y2="{y:.1}" stroke="#e45756" stroke-width="1.5" stroke-dasharray="4 3"/><text x="{}" y="{:.1}" fill="#e45756">noise floor</text>"##,
            BAR_LEFT - 6.0,
            BAR_LEFT + BAR_WIDTH + 6.0,
            BAR_LEFT + BAR_WIDTH + 9.0,
            y + 4.0
        );
    }
    let _ = writeln!(
        out,
        r##"<text x="{center}" y="{}" text-anchor="middle" font-weight="bold">{} %</text>"##,
        PLOT_BOTTOM + 34.0,
        esc(&percent(agreement.fraction))
    );
    let _ = writeln!(
        out,
        r##"<text x="{center}" y="{}" text-anchor="middle" fill="#555555">95 % CI {}–{} %</text>"##,
        PLOT_BOTTOM + 50.0,
        esc(&percent(agreement.ci95_low)),
        esc(&percent(agreement.ci95_high))
    );
}

fn histogram_plot(out: &mut String, a: &Analysis) {
    let most = a.histogram.iter().map(|b| b.rows).max().unwrap_or(0);
    let (step, top) = scale(most);
    let _ = writeln!(
        out,
        r##"<line x1="{HIST_LEFT}" y1="{PLOT_TOP}" x2="{HIST_LEFT}" y2="{PLOT_BOTTOM}" stroke="#333333"/><line x1="{HIST_LEFT}" y1="{PLOT_BOTTOM}" x2="{HIST_RIGHT}" y2="{PLOT_BOTTOM}" stroke="#333333"/>"##
    );
    let mut tick = 0;
    while tick <= top {
        let y = y_of(tick as f64 / top as f64);
        let _ = writeln!(
            out,
            r##"<line x1="{}" y1="{y:.1}" x2="{HIST_LEFT}" y2="{y:.1}" stroke="#333333"/><text x="{}" y="{:.1}" text-anchor="end">{}</text>"##,
            HIST_LEFT - 4.0,
            HIST_LEFT - 6.0,
            y + 4.0,
            thousands(tick)
        );
        tick += step;
    }
    let _ = writeln!(
        out,
        r##"<text x="{}" y="{}" text-anchor="middle" transform="rotate(-90 {} {})">rows</text>"##,
        HIST_LEFT - 44.0,
        (PLOT_TOP + PLOT_BOTTOM) / 2.0,
        HIST_LEFT - 44.0,
        (PLOT_TOP + PLOT_BOTTOM) / 2.0
    );
    let slot = (HIST_RIGHT - HIST_LEFT) / a.histogram.len().max(1) as f64;
    for (i, bucket) in a.histogram.iter().enumerate() {
        let x = HIST_LEFT + slot * i as f64;
        let y = y_of(bucket.rows as f64 / top as f64);
        let _ = writeln!(
            out,
            r##"<rect x="{:.1}" y="{y:.1}" width="{:.1}" height="{:.1}" fill="{}"/><text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"##,
            x + slot * 0.15,
            slot * 0.7,
            PLOT_BOTTOM - y,
            if i == 0 { "#54a24b" } else { "#f58518" },
            x + slot / 2.0,
            y - 4.0,
            thousands(bucket.rows)
        );
    }
    for (i, edge) in BUCKET_EDGES.iter().enumerate() {
        let x = HIST_LEFT + slot * i as f64;
        let _ = writeln!(
            out,
            r##"<line x1="{x:.1}" y1="{PLOT_BOTTOM}" x2="{x:.1}" y2="{}" stroke="#333333"/><text x="{x:.1}" y="{}" text-anchor="middle">{edge}</text>"##,
            PLOT_BOTTOM + 4.0,
            PLOT_BOTTOM + 16.0
        );
    }
    let _ = writeln!(
        out,
        r##"<text x="{}" y="{}" text-anchor="middle">{}</text>"##,
        (HIST_LEFT + HIST_RIGHT) / 2.0,
        PLOT_BOTTOM + 36.0,
        esc("per-row max |p_active − p_candidate| (rows by bucket)")
    );
}

/// A y-axis step (1, 2 or 5 × 10^k) and top (a multiple of the step, at most four steps) that
/// hold `most` rows.
pub(super) fn scale(most: u64) -> (u64, u64) {
    let quarter = most.div_ceil(4).max(1);
    let mut magnitude = 1u64;
    loop {
        for m in [1, 2, 5] {
            let step = m * magnitude;
            if step >= quarter {
                return (step, step * most.div_ceil(step).max(1));
            }
        }
        magnitude *= 10;
    }
}

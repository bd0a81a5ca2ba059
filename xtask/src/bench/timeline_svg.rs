//! A recorded [`Timeline`] as a self-contained SVG chart, in the style of the shadow report's
//! (`domain/shadow_render/svg.rs`): requests per second over time, one line per color in the
//! project's blue and green, the total in grey, failed requests as red bars, and a dashed line
//! for each operation. Generic font family only, no scripts, no plotting crate; the same
//! timeline always gives the same bytes.
//!
//! The title carries the totals (`… requests, failed: N`) so that the picture alone says whether
//! a request was lost, even where a failed bar would be a pixel wide.

use std::fmt::Write as _;

use super::timeline::{Bucket, Timeline};
use crate::domain::text::{svg_start, thousands, xml_escape as esc};

/// The chart's size and its plot's frame, in SVG user units.
const WIDTH: f64 = 760.0;
const HEIGHT: f64 = 380.0;
const PLOT_LEFT: f64 = 80.0;
const PLOT_RIGHT: f64 = 730.0;
const PLOT_TOP: f64 = 100.0;
const PLOT_BOTTOM: f64 = 300.0;
/// The project's colors (as in the shadow report): blue, green, and red for what went wrong.
pub const BLUE: &str = "#4c78a8";
pub const GREEN: &str = "#54a24b";
const RED: &str = "#e45756";
/// Answers without a color, and the total of all answers.
const OTHER: &str = "#f58518";
const TOTAL: &str = "#9d9d9d";

/// The chart of `t`: x = seconds since the load started, y = answers per second.
pub fn svg(t: &Timeline) -> String {
    let span = t.buckets.last().map_or(0.0, |b| b.start + b.secs).max(1.0);
    let peak = t
        .buckets
        .iter()
        .map(|b| (b.good() + b.failed) as f64 / b.secs)
        .fold(0.0, f64::max);
    let (step, top) = scale(peak);
    let x_of = |secs: f64| PLOT_LEFT + secs.clamp(0.0, span) / span * (PLOT_RIGHT - PLOT_LEFT);
    let y_of = |rate: f64| PLOT_BOTTOM - (rate / top).clamp(0.0, 1.0) * (PLOT_BOTTOM - PLOT_TOP);

    let mut out = String::new();
    out += &svg_start(WIDTH, HEIGHT);
    let totals = &t.totals;
    let _ = writeln!(
        out,
        r##"<text x="20" y="26" font-size="14" font-weight="bold"{}>{}</text>"##,
        if totals.failed > 0 {
            format!(r##" fill="{RED}""##)
        } else {
            String::new()
        },
        esc(&format!(
            "{}: {} requests, failed: {}",
            t.title,
            thousands(totals.requests),
            thousands(totals.failed)
        ))
    );
    let mut served = format!(
        "answered by blue {}, green {}",
        thousands(totals.blue),
        thousands(totals.green)
    );
    if totals.other > 0 {
        let _ = write!(served, ", no color {}", thousands(totals.other));
    }
    let _ = writeln!(
        out,
        r##"<text x="20" y="44" fill="#555555">{}</text><text x="20" y="58" fill="#555555">{}</text>"##,
        esc(&served),
        esc(&t.note)
    );
    axes(&mut out, span, step, top, &x_of, &y_of);
    if t.buckets.iter().all(|b| b.good() + b.failed == 0) {
        let _ = writeln!(
            out,
            r##"<text x="{}" y="{}" text-anchor="middle" fill="#555555">no requests recorded</text>"##,
            (PLOT_LEFT + PLOT_RIGHT) / 2.0,
            (PLOT_TOP + PLOT_BOTTOM) / 2.0
        );
    }
    marks(&mut out, t, &x_of);
    for b in t.buckets.iter().filter(|b| b.failed > 0) {
        let (left, right) = (x_of(b.start), x_of(b.start + b.secs));
        // At least 3 units tall: one failed request among thousands must still be seen.
        let y = y_of(b.failed as f64 / b.secs).min(PLOT_BOTTOM - 3.0);
        let _ = writeln!(
            out,
            r##"<rect x="{left:.1}" y="{y:.1}" width="{:.1}" height="{:.1}" fill="{RED}"/>"##,
            (right - left).max(1.0),
            PLOT_BOTTOM - y
        );
    }
    // The total first, under the colors.
    let mut series = vec![
        Series::new("all answers", TOTAL, 1.2, Bucket::good),
        Series::new("blue", BLUE, 2.0, |b| b.blue),
        Series::new("green", GREEN, 2.0, |b| b.green),
    ];
    if totals.other > 0 {
        series.push(Series::new("no color", OTHER, 2.0, |b| b.other));
    }
    for line in series.iter().filter(|_| !t.buckets.is_empty()) {
        let mut d = String::new();
        for (i, b) in t.buckets.iter().enumerate() {
            let _ = write!(
                d,
                "{}{:.1} {:.1}",
                if i == 0 { "M" } else { " L" },
                x_of(b.start + b.secs / 2.0),
                y_of((line.count)(b) as f64 / b.secs)
            );
        }
        let (color, width) = (line.color, line.width);
        let _ = writeln!(
            out,
            r##"<path d="{d}" fill="none" stroke="{color}" stroke-width="{width}" stroke-linejoin="round"/>"##
        );
    }
    legend(&mut out, &series);
    out += "</svg>\n";
    out
}

/// One line of the chart: its legend name, color and stroke width, and the answers it counts.
struct Series {
    name: &'static str,
    color: &'static str,
    width: f64,
    count: fn(&Bucket) -> u64,
}

impl Series {
    fn new(name: &'static str, color: &'static str, width: f64, count: fn(&Bucket) -> u64) -> Self {
        Series {
            name,
            color,
            width,
            count,
        }
    }
}

/// One swatch and name per line, then the failed bars', in a row under the axis label.
fn legend(out: &mut String, series: &[Series]) {
    let y = HEIGHT - 18.0;
    let mut x = PLOT_LEFT;
    for &Series {
        name, color, width, ..
    } in series
    {
        let _ = writeln!(
            out,
            r##"<line x1="{x}" y1="{}" x2="{}" y2="{}" stroke="{color}" stroke-width="{width}"/><text x="{}" y="{y}">{name}</text>"##,
            y - 4.0,
            x + 18.0,
            y - 4.0,
            x + 24.0
        );
        x += 34.0 + 6.5 * name.len() as f64;
    }
    let _ = writeln!(
        out,
        r##"<rect x="{x}" y="{}" width="18" height="8" fill="{RED}"/><text x="{}" y="{y}">failed</text>"##,
        y - 8.0,
        x + 24.0
    );
}

/// Both axes with their ticks, labels and light grid lines.
fn axes(
    out: &mut String,
    span: f64,
    step: f64,
    top: f64,
    x_of: &dyn Fn(f64) -> f64,
    y_of: &dyn Fn(f64) -> f64,
) {
    let _ = writeln!(
        out,
        r##"<line x1="{PLOT_LEFT}" y1="{PLOT_TOP}" x2="{PLOT_LEFT}" y2="{PLOT_BOTTOM}" stroke="#333333"/><line x1="{PLOT_LEFT}" y1="{PLOT_BOTTOM}" x2="{PLOT_RIGHT}" y2="{PLOT_BOTTOM}" stroke="#333333"/>"##
    );
    let mut tick = 0.0;
    while tick <= top + step / 2.0 {
        let y = y_of(tick);
        let _ = writeln!(
            out,
            r##"<line x1="{}" y1="{y:.1}" x2="{PLOT_RIGHT}" y2="{y:.1}" stroke="#e6e6e6"/><line x1="{}" y1="{y:.1}" x2="{PLOT_LEFT}" y2="{y:.1}" stroke="#333333"/><text x="{}" y="{:.1}" text-anchor="end">{}</text>"##,
            PLOT_LEFT + 1.0,
            PLOT_LEFT - 4.0,
            PLOT_LEFT - 6.0,
            y + 4.0,
            thousands(tick.round() as u64)
        );
        tick += step;
    }
    let middle = (PLOT_TOP + PLOT_BOTTOM) / 2.0;
    let _ = writeln!(
        out,
        r##"<text x="22" y="{middle}" text-anchor="middle" transform="rotate(-90 22 {middle})">requests / s</text>"##
    );
    // A tick every 1, 2, 5, 10… seconds: at most about a dozen.
    let every = [1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0]
        .into_iter()
        .find(|&e| span / e <= 12.0)
        .unwrap_or(600.0);
    let mut secs = 0.0;
    while secs <= span + 1e-9 {
        let x = x_of(secs);
        let _ = writeln!(
            out,
            r##"<line x1="{x:.1}" y1="{PLOT_BOTTOM}" x2="{x:.1}" y2="{}" stroke="#333333"/><text x="{x:.1}" y="{}" text-anchor="middle">{secs}</text>"##,
            PLOT_BOTTOM + 4.0,
            PLOT_BOTTOM + 16.0
        );
        secs += every;
    }
    let _ = writeln!(
        out,
        r##"<text x="{}" y="{}" text-anchor="middle">seconds since the load started</text>"##,
        (PLOT_LEFT + PLOT_RIGHT) / 2.0,
        PLOT_BOTTOM + 34.0
    );
}

/// A dashed line per operation, a light band while it ran, and its label above the plot
/// (alternating between two rows, so neighbours do not overlap).
fn marks(out: &mut String, t: &Timeline, x_of: &dyn Fn(f64) -> f64) {
    for (i, mark) in t.marks.iter().enumerate() {
        let (x, end) = (x_of(mark.at), x_of(mark.until.max(mark.at)));
        // Only an operation that lasts a few units gets a band; a line marks the rest.
        if end - x >= 4.0 {
            let _ = writeln!(
                out,
                r##"<rect x="{x:.1}" y="{PLOT_TOP}" width="{:.1}" height="{}" fill="#000000" fill-opacity="0.06"/>"##,
                end - x,
                PLOT_BOTTOM - PLOT_TOP
            );
        }
        let label_y = PLOT_TOP - 22.0 + 13.0 * (i % 2) as f64;
        let _ = writeln!(
            out,
            r##"<line x1="{x:.1}" y1="{}" x2="{x:.1}" y2="{PLOT_BOTTOM}" stroke="#333333" stroke-dasharray="4 3"/><text x="{:.1}" y="{label_y}" text-anchor="middle">{}</text>"##,
            label_y + 3.0,
            x.clamp(PLOT_LEFT + 50.0, PLOT_RIGHT - 50.0),
            esc(&mark.label)
        );
    }
}

/// A y-axis step (1, 2 or 5 × 10^k) and top (a multiple of the step, at most five steps) that
/// hold `peak`.
fn scale(peak: f64) -> (f64, f64) {
    let fifth = (peak / 5.0).max(1.0);
    let mut magnitude = 1.0;
    loop {
        for m in [1.0, 2.0, 5.0] {
            let step = m * magnitude;
            if step >= fifth {
                return (step, step * (peak / step).ceil().max(1.0));
            }
        }
        magnitude *= 10.0;
    }
}

#[cfg(test)]
mod tests {
    use super::{
        super::timeline::{Mark, Totals},
        *,
    };

    fn example() -> Timeline {
        let buckets = (0..48)
            .map(|i| {
                let on_green = (12..24).contains(&i);
                // 4 000 answers a second; the last bucket is cut short.
                let (secs, n) = if i == 47 { (0.1, 400) } else { (0.25, 1000) };
                Bucket {
                    start: f64::from(i) * 0.25,
                    secs,
                    blue: if on_green { 0 } else { n },
                    green: if on_green { n } else { 0 },
                    other: 0,
                    failed: u64::from(i == 30) * 3,
                }
            })
            .collect();
        Timeline {
            title: "switch <under> load".into(),
            note: "16 clients".into(),
            buckets,
            marks: vec![
                Mark {
                    at: 3.0,
                    until: 3.04,
                    label: "switch → green".into(),
                },
                Mark {
                    at: 6.0,
                    until: 6.5,
                    label: "switch → blue".into(),
                },
            ],
            totals: Totals {
                requests: 47_003,
                failed: 3,
                blue: 35_000,
                green: 12_000,
                other: 0,
            },
            errors: Vec::new(),
        }
    }

    /// Every element closed, in order; text outside tags free of `<`.
    fn assert_well_formed(svg: &str) {
        let mut open = Vec::new();
        let mut rest = svg;
        while let Some(start) = rest.find('<') {
            let end = rest[start..].find('>').expect("an unclosed tag") + start;
            let tag = &rest[start + 1..end];
            if let Some(name) = tag.strip_prefix('/') {
                assert_eq!(open.pop(), Some(name), "{svg}");
            } else if !tag.ends_with('/') {
                open.push(tag.split_whitespace().next().unwrap());
            }
            assert!(!tag[1..].contains('<'), "{tag}");
            rest = &rest[end + 1..];
        }
        assert!(open.is_empty(), "unclosed: {open:?}");
        assert!(svg.starts_with("<svg ") && svg.trim_end().ends_with("</svg>"));
    }

    #[test]
    fn timeline_svg_is_well_formed_escaped_and_deterministic() {
        let svg = svg(&example());
        assert_well_formed(&svg);
        assert!(svg.contains("switch &lt;under&gt; load: 47 003 requests, failed: 3</text>"));
        assert!(!svg.contains("<under>"));
        assert!(!svg.contains("<script") && !svg.contains("href"));
        assert!(svg.contains(">answered by blue 35 000, green 12 000</text>"));
        assert!(svg.contains(">16 clients</text>"));
        assert!(svg.contains(">seconds since the load started</text>"));
        assert!(svg.contains(">requests / s</text>"));
        assert_eq!(svg, super::svg(&example()));
    }

    #[test]
    fn timeline_svg_has_one_line_per_color_and_the_total() {
        let svg = svg(&example());
        assert_eq!(svg.matches("<path ").count(), 3);
        for color in [BLUE, GREEN, TOTAL] {
            let path = format!(r#"fill="none" stroke="{color}""#);
            assert_eq!(svg.matches(&path).count(), 1, "{color}");
        }
        // 4000 answers per second at most: a round top above it.
        assert!(svg.contains(r#"text-anchor="end">4 000</text>"#), "{svg}");
        // The failed bucket is drawn in red and the title turns red.
        assert_eq!(svg.matches(&format!(r#"fill="{RED}"/>"#)).count(), 2);
        assert!(svg.contains(&format!(r#"font-weight="bold" fill="{RED}""#)));
    }

    #[test]
    fn timeline_svg_marks_every_operation() {
        let svg = svg(&example());
        assert_eq!(svg.matches("stroke-dasharray").count(), 2);
        assert!(svg.contains(">switch → green</text>") && svg.contains(">switch → blue</text>"));
        // A 40 ms switch is a line; a half-second operation also gets its band.
        assert_eq!(svg.matches("fill-opacity").count(), 1);
    }

    #[test]
    fn timeline_svg_of_nothing_still_renders() {
        let svg = svg(&Timeline::default());
        assert_well_formed(&svg);
        assert!(svg.contains("0 requests, failed: 0"));
        assert!(svg.contains("no requests recorded"));
        assert_eq!(svg.matches("<path ").count(), 0);
        // Buckets with no answers in them: the same, with the axes of the run's length.
        let mut silent = example();
        for b in &mut silent.buckets {
            (b.blue, b.green, b.failed) = (0, 0, 0);
        }
        let silent = super::svg(&silent);
        assert_well_formed(&silent);
        assert!(silent.contains("no requests recorded") && silent.contains(">10</text>"));
    }

    #[test]
    fn timeline_scale_and_numbers_read_well() {
        assert_eq!(scale(0.0), (1.0, 1.0));
        assert_eq!(scale(3_900.0), (1_000.0, 4_000.0));
        assert_eq!(scale(12_345.0), (5_000.0, 15_000.0));
        assert_eq!(thousands(1_234_567), "1 234 567");
        assert_eq!(thousands(0), "0");
    }
}

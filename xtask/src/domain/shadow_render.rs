//! A shadow run's [`Analysis`] for people, purely:
//! - [`text`]: a summary for the terminal, aligned tables included;
//! - [`markdown`]: the same as GitHub-flavoured tables, for a CI job summary;
//! - [`svg`]: a self-contained chart (class agreement with its interval and the noise floor; the
//!   histogram of per-row probability differences), byte-for-byte deterministic so it can be a
//!   golden file.
//!
//! Ids and versions come over the network, so every renderer escapes them for its format.

use std::fmt::Write as _;

use super::shadow::{percent, prob, thousands, Analysis, Bucket, BUCKET_EDGES};

/// The one-line answer: does the candidate agree with the active, and how sure is that.
pub fn headline(a: &Analysis) -> String {
    match a.agreement {
        Some(agreement) => format!(
            "candidate {} agrees with active {} on {} % of {} rows (95 % CI {}–{} %)",
            a.candidate_name(),
            a.active_name(),
            percent(agreement.fraction),
            thousands(a.rows_compared),
            percent(agreement.ci95_low),
            percent(agreement.ci95_high)
        ),
        None => format!(
            "candidate {} and active {}: no rows compared",
            a.candidate_name(),
            a.active_name()
        ),
    }
}

/// A readable summary for the terminal.
pub fn text(a: &Analysis) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{}", plain(&headline(a)));
    let _ = writeln!(out, "{}", coverage(a));

    if a.rows_compared > 0 {
        out += "\nclasses (rows: active, columns: candidate)\n";
        let mut table = vec![std::iter::once("active \\ candidate".to_owned())
            .chain(a.confusion.labels.iter().cloned())
            .collect::<Vec<_>>()];
        for (label, row) in a.confusion.labels.iter().zip(&a.confusion.counts) {
            table.push(
                std::iter::once(label.clone())
                    .chain(row.iter().map(|&n| thousands(n)))
                    .collect(),
            );
        }
        out += &aligned(&table, "  ");
    }

    out += "\nprobabilities (per row: the largest |p_active - p_candidate| over the classes)\n";
    let mut table = vec![vec![
        String::new(),
        "class disagreement".to_owned(),
        "mean".to_owned(),
        "max".to_owned(),
        "rows".to_owned(),
    ]];
    if let (Some(disagreement), Some(diff)) = (a.class_disagreement(), a.probability_diff) {
        table.push(vec![
            "candidate vs active".to_owned(),
            format!("{} %", percent(disagreement)),
            prob(diff.mean),
            prob(diff.max),
            thousands(a.rows_compared),
        ]);
    }
    if let Some(floor) = a.floor {
        table.push(vec![
            "noise floor (active vs itself)".to_owned(),
            format!("{} %", percent(floor.class_disagreement)),
            prob(floor.mean_diff),
            prob(floor.max_diff),
            thousands(floor.rows_compared),
        ]);
    }
    out += &aligned(&table, "  ");
    let _ = writeln!(out, "{}", floor_words(a));

    if a.rows_compared > 0 {
        out += "\nper-row difference histogram\n";
        let most = a.histogram.iter().map(|b| b.rows).max().unwrap_or(0).max(1);
        let table: Vec<Vec<String>> = a
            .histogram
            .iter()
            .map(|b| vec![bucket_label(b), thousands(b.rows)])
            .collect();
        // The bars go after the aligned columns, left-aligned like a chart.
        for (line, b) in aligned(&table, "  ").lines().zip(&a.histogram) {
            let bar = (b.rows * 40).div_ceil(most) as usize;
            let _ = writeln!(out, "{}", format!("{line}  {}", "#".repeat(bar)).trim_end());
        }
    }

    if let Some(latency) = a.latency_ms {
        out += "\nlatency (ms)\n";
        let table = vec![
            vec![String::new(), "p50".to_owned(), "p99".to_owned()],
            vec![
                plain(&format!("active {}", a.active_name())),
                ms(latency.active.p50),
                ms(latency.active.p99),
            ],
            vec![
                plain(&format!("candidate {}", a.candidate_name())),
                ms(latency.candidate.p50),
                ms(latency.candidate.p99),
            ],
        ];
        out += &aligned(&table, "  ");
    }

    let problems = not_compared(a);
    if !problems.is_empty() {
        out += "\nnot compared\n";
        for (count, reason) in problems {
            let _ = writeln!(out, "  {count:>7}  {reason}");
        }
    }

    if !a.top_disagreements.is_empty() {
        out += "\ntop disagreements\n";
        for (i, d) in a.top_disagreements.iter().enumerate() {
            let _ = writeln!(
                out,
                "  {}. input {} ({}; e.g. request {} row {})\n     active {} {}  candidate {} {}  max diff {}",
                i + 1,
                numbers(&d.input),
                times(d.occurrences),
                plain(&d.id),
                d.row,
                label(a, d.active_class),
                probs(&d.active_probabilities),
                label(a, d.candidate_class),
                probs(&d.candidate_probabilities),
                prob(d.diff)
            );
        }
    }
    out
}

/// `once`, `3 times`.
fn times(n: u64) -> String {
    if n == 1 {
        "once".to_owned()
    } else {
        format!("{} times", thousands(n))
    }
}

/// The same summary as GitHub-flavoured Markdown, for a CI job summary.
pub fn markdown(a: &Analysis) -> String {
    let mut out = String::from("### Shadow comparison\n\n");
    let _ = writeln!(out, "**{}**\n", md(&headline(a)));
    let _ = writeln!(out, "{}.\n", coverage(a));

    if a.rows_compared > 0 {
        out += "| active ↓ / candidate → |";
        for label in &a.confusion.labels {
            let _ = write!(out, " {} |", md(label));
        }
        out += "\n| --- |";
        out += &" ---: |".repeat(a.confusion.labels.len());
        out += "\n";
        for (label, row) in a.confusion.labels.iter().zip(&a.confusion.counts) {
            let _ = write!(out, "| **{}** |", md(label));
            for &n in row {
                let _ = write!(out, " {} |", thousands(n));
            }
            out += "\n";
        }
        out += "\n";
    }

    out += "| | candidate vs active | noise floor (active vs itself) |\n| --- | ---: | ---: |\n";
    let floor = a.floor;
    let cell = |value: Option<String>| value.unwrap_or_else(|| "–".to_owned());
    let _ = writeln!(
        out,
        "| class disagreement | {} | {} |",
        cell(a.class_disagreement().map(|d| format!("{} %", percent(d)))),
        cell(floor.map(|f| format!("{} %", percent(f.class_disagreement))))
    );
    let _ = writeln!(
        out,
        "| mean per-row max \\|Δp\\| | {} | {} |",
        cell(a.probability_diff.map(|d| prob(d.mean))),
        cell(floor.map(|f| prob(f.mean_diff)))
    );
    let _ = writeln!(
        out,
        "| max \\|Δp\\| | {} | {} |",
        cell(a.probability_diff.map(|d| prob(d.max))),
        cell(floor.map(|f| prob(f.max_diff)))
    );
    let _ = writeln!(
        out,
        "| rows | {} | {} |\n",
        thousands(a.rows_compared),
        cell(floor.map(|f| thousands(f.rows_compared)))
    );
    let _ = writeln!(out, "{}\n", md(&floor_words(a)));

    if a.rows_compared > 0 {
        out += "| per-row max \\|Δp\\| | rows |\n| --- | ---: |\n";
        for b in &a.histogram {
            let _ = writeln!(out, "| {} | {} |", bucket_label(b), thousands(b.rows));
        }
        out += "\n";
    }

    if let Some(latency) = a.latency_ms {
        out += "| latency | p50 ms | p99 ms |\n| --- | ---: | ---: |\n";
        let _ = writeln!(
            out,
            "| active {} | {} | {} |",
            md(&a.active_name()),
            ms(latency.active.p50),
            ms(latency.active.p99)
        );
        let _ = writeln!(
            out,
            "| candidate {} | {} | {} |\n",
            md(&a.candidate_name()),
            ms(latency.candidate.p50),
            ms(latency.candidate.p99)
        );
    }

    let problems = not_compared(a);
    if !problems.is_empty() {
        out += "| not compared | count |\n| --- | ---: |\n";
        for (count, reason) in problems {
            let _ = writeln!(out, "| {} | {count} |", md(&reason));
        }
        out += "\n";
    }

    if !a.top_disagreements.is_empty() {
        out += "**Top disagreements**\n\n";
        out += "| # | input | seen | e.g. request (row) | active | candidate | max \\|Δp\\| |\n";
        out += "| ---: | --- | ---: | --- | --- | --- | ---: |\n";
        for (i, d) in a.top_disagreements.iter().enumerate() {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} ({}) | {} {} | {} {} | {} |",
                i + 1,
                numbers(&d.input),
                d.occurrences,
                md(&d.id),
                d.row,
                md(&label(a, d.active_class)),
                probs(&d.active_probabilities),
                md(&label(a, d.candidate_class)),
                probs(&d.candidate_probabilities),
                prob(d.diff)
            );
        }
    }
    out
}

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
    let _ = writeln!(
        out,
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="11">"##
    );
    let _ = writeln!(
        out,
        r##"<rect width="{WIDTH}" height="{HEIGHT}" fill="#ffffff"/>"##
    );
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
fn scale(most: u64) -> (u64, u64) {
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

/// What the run covered: how much was mirrored for how long, and how much of it was compared.
fn coverage(a: &Analysis) -> String {
    let mut line = String::new();
    if a.percent > 0 {
        line += &format!("{} % of prediction requests mirrored", a.percent);
        if a.observed_secs > 0.0 {
            line += &format!(" for {:.0} s", a.observed_secs);
        }
        line += "; ";
    }
    line += &format!(
        "{} of {} paired requests compared ({} rows)",
        thousands(a.requests_compared),
        thousands(a.requests_paired),
        thousands(a.rows_compared)
    );
    line
}

/// Counts of what was not compared, with reasons in words; zero counts are left out.
fn not_compared(a: &Analysis) -> Vec<(String, String)> {
    let e = &a.errors;
    let u = &a.unpaired;
    [
        (
            e.pairs,
            format!(
                "paired requests with an error status (active answered non-2xx {} times, \
                 candidate {} times)",
                thousands(e.active),
                thousands(e.candidate)
            ),
        ),
        (
            a.shape_mismatch,
            "paired requests whose answers differ in shape (row counts or malformed rows)"
                .to_owned(),
        ),
        (
            u.unanswered_by_candidate,
            "unanswered by the candidate (the mirror timed out, the candidate was down or hung, \
             or its record was evicted)"
                .to_owned(),
        ),
        (
            u.missing_on_active,
            "journaled by the candidate only (the active's record was evicted)".to_owned(),
        ),
        (
            u.duplicate_ids,
            "ids journaled more than once by one color (left out, never guessed)".to_owned(),
        ),
        (
            a.evicted_active,
            "records evicted from the active's journal during the run (make it larger or the run \
             shorter)"
                .to_owned(),
        ),
        (
            a.evicted_candidate,
            "records evicted from the candidate's journal during the run (make it larger or the \
             run shorter)"
                .to_owned(),
        ),
    ]
    .into_iter()
    .filter(|(count, _)| *count > 0)
    .map(|(count, reason)| (thousands(count), reason))
    .collect()
}

/// The candidate's differences against the noise floor, in words.
fn floor_words(a: &Analysis) -> String {
    let Some(floor) = a.floor else {
        return "no noise floor measured (the active was not replayed against itself)".to_owned();
    };
    if floor.rows_compared == 0 {
        return "no noise floor: no replayed rows could be compared".to_owned();
    }
    match a.above_floor() {
        None => "the noise floor cannot be compared: the candidate compared no rows".to_owned(),
        Some(above) => {
            let word = |above: bool| if above { "above" } else { "within" };
            format!(
                "class disagreement is {} the noise floor; probability differences are {} it",
                word(above.classes),
                word(above.probabilities)
            )
        }
    }
}

fn bucket_label(b: &Bucket) -> String {
    if b.to >= 1.0 {
        format!("[{}, {}]", b.from, b.to)
    } else {
        format!("[{}, {})", b.from, b.to)
    }
}

/// A class's name from the confusion matrix's labels.
fn label(a: &Analysis, class: u32) -> String {
    a.confusion
        .labels
        .get(class as usize)
        .cloned()
        .unwrap_or_else(|| format!("class {class}"))
}

fn probs(ps: &[f64]) -> String {
    let parts: Vec<String> = ps.iter().map(|&p| prob(p)).collect();
    format!("[{}]", parts.join(", "))
}

/// An input row as written (shortest round-trip form).
fn numbers(xs: &[f64]) -> String {
    let parts: Vec<String> = xs.iter().map(f64::to_string).collect();
    format!("[{}]", parts.join(", "))
}

fn ms(value: f64) -> String {
    format!("{value:.2}")
}

/// Rows of cells as columns: the first left-aligned, the rest right-aligned, each line indented.
fn aligned(rows: &[Vec<String>], indent: &str) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            rows.iter()
                .filter_map(|row| row.get(c))
                .map(|cell| cell.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in rows {
        let mut line = indent.to_owned();
        for (c, cell) in row.iter().enumerate() {
            let pad = " ".repeat(widths[c] - cell.chars().count());
            if c == 0 {
                line += &format!("{cell}{pad}");
            } else {
                line += &format!("  {pad}{cell}");
            }
        }
        out += line.trim_end();
        out += "\n";
    }
    out
}

/// Text safe for a terminal: control characters (a hostile id could move the cursor) shown as
/// their escapes.
fn plain(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// Text safe inside a Markdown table cell: HTML and Markdown punctuation escaped, no line breaks.
fn md(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out += "&amp;",
            '<' => out += "&lt;",
            '>' => out += "&gt;",
            '|' | '\\' | '`' | '*' | '_' | '[' | ']' | '~' | '#' | '!' => {
                out.push('\\');
                out.push(c);
            }
            c if c.is_control() => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

/// Text safe inside SVG (XML) text and attributes.
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out += "&amp;",
            '<' => out += "&lt;",
            '>' => out += "&gt;",
            '"' => out += "&quot;",
            '\'' => out += "&#39;",
            c if c.is_control() => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{
        shadow::{analyse, join, noise_floor, Record, Sides},
        Color,
    };

    fn record(id: &str, class: u32, probabilities: [f64; 3], latency_us: u64) -> Record {
        Record {
            seq: 0,
            id: id.to_owned(),
            route: "/predict".to_owned(),
            status: 200,
            latency_us,
            inputs: vec![vec![5.1, 3.5, 1.4, 0.2]],
            classes: vec![class],
            probabilities: vec![probabilities.to_vec()],
        }
    }

    /// 1 234 rows, 1 201 agreeing; a few differences of every size; an error, an unanswered
    /// request, evictions, and a floor of zero.
    fn example() -> Analysis {
        let mut active = Vec::new();
        let mut candidate = Vec::new();
        for i in 0..1234u64 {
            let id = format!("id-{i:04}");
            let class = (i % 3) as u32;
            let mut p = [0.01, 0.01, 0.01];
            p[class as usize] = 0.98;
            active.push(record(&id, class, p, 300 + i % 50));
            let (c_class, q) = if i < 33 {
                let other = (class + 1) % 3;
                let mut q = [0.1, 0.1, 0.1];
                q[other as usize] = 0.8;
                (other, q)
            } else if i < 100 {
                let mut q = p;
                q[class as usize] -= 0.002 * (i % 7) as f64;
                (class, q)
            } else {
                (class, p)
            };
            candidate.push(record(&id, c_class, q, 320 + i % 70));
        }
        let mut failed = record("<failed>", 0, [0.0; 3], 90);
        failed.status = 500;
        failed.classes.clear();
        failed.probabilities.clear();
        active.push(record("<failed>", 0, [0.98, 0.01, 0.01], 300));
        candidate.push(failed);
        active.push(record("lost|id", 0, [0.98, 0.01, 0.01], 300));
        let sides = Sides {
            active: Color::Blue,
            active_version: "v1.0.0".to_owned(),
            candidate: Color::Green,
            candidate_version: "v1.1.0".to_owned(),
        };
        let mut analysis = analyse(&join(&active, &candidate), &sides, 3);
        analysis.percent = 10;
        analysis.observed_secs = 300.2;
        analysis.evicted_candidate = 7;
        analysis.floor = Some(noise_floor(&active[..200], &active[..200]));
        analysis
    }

    #[test]
    fn headline_reads_as_a_sentence() {
        assert_eq!(
            headline(&example()),
            "candidate green v1.1.0 agrees with active blue v1.0.0 on 97.3 % of 1 234 rows \
             (95 % CI 96.3–98.1 %)"
        );
    }

    #[test]
    fn text_holds_the_key_numbers() {
        let text = text(&example());
        for needle in [
            "97.3 % of 1 234 rows",
            "10 % of prediction requests mirrored for 300 s; 1 234 of 1 235 paired requests \
             compared (1 234 rows)",
            "active \\ candidate  setosa  versicolor  virginica",
            "noise floor (active vs itself)",
            "class disagreement is above the noise floor",
            "candidate green v1.1.0",
            "unanswered by the candidate",
            "active answered non-2xx 0 times, candidate 1 times",
            "evicted from the candidate's journal",
            "input [5.1, 3.5, 1.4, 0.2]",
            "top disagreements",
        ] {
            assert!(text.contains(needle), "{needle:?} missing from\n{text}");
        }
    }

    #[test]
    fn text_confusion_table_is_aligned() {
        let text = text(&example());
        let lines: Vec<&str> = text
            .lines()
            .skip_while(|line| !line.starts_with("classes"))
            .skip(1)
            .take(4)
            .collect();
        let width = lines[0].len();
        assert!(lines.iter().all(|line| line.len() == width), "{lines:#?}");
        assert!(lines[1].starts_with("  setosa"), "{lines:#?}");
    }

    #[test]
    fn markdown_has_tables_and_escapes_ids() {
        let md = markdown(&example());
        assert!(md.starts_with("### Shadow comparison\n\n**candidate green v1.1.0 agrees"));
        assert!(md.contains("| active ↓ / candidate → | setosa | versicolor | virginica |"));
        assert!(md.contains("| --- | ---: | ---: | ---: |"));
        assert!(md.contains("| class disagreement | 2.7 % | 0.0 % |"));
        assert!(md.contains("| [0.5, 1] | 33 |"), "{md}");
        assert!(
            md.contains("| 1 | [5.1, 3.5, 1.4, 0.2] | 11 | id-0000 (0) |"),
            "{md}"
        );
        assert!(!md.contains("lost|id"));
    }

    #[test]
    fn markdown_escapes_table_breakers() {
        assert_eq!(md("a|b<c>"), "a\\|b&lt;c&gt;");
        assert_eq!(md("x\ny"), "x y");
        assert_eq!(plain("a\u{1b}[2J"), "a\\u{1b}[2J");
    }

    #[test]
    fn nothing_compared_still_renders() {
        let sides = Sides {
            active: Color::Blue,
            active_version: "<v>".to_owned(),
            candidate: Color::Green,
            candidate_version: "<v>".to_owned(),
        };
        let empty = analyse(&join(&[], &[]), &sides, 3);
        assert!(text(&empty).contains("no rows compared"));
        assert!(markdown(&empty).contains("no rows compared"));
        let svg = svg(&empty);
        assert!(svg.contains("no rows compared"));
        assert!(svg.contains("&lt;v&gt;") && !svg.contains("<v>"));
    }

    #[test]
    fn svg_is_well_formed_escaped_and_deterministic() {
        let mut analysis = example();
        analysis.candidate_version = "v<2>&\"x\"".to_owned();
        let svg = svg(&analysis);
        assert!(svg.starts_with("<svg "));
        assert!(svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains("v&lt;2&gt;&amp;&quot;x&quot;"));
        assert!(!svg.contains("v<2>"));
        assert!(!svg.contains("<script") && !svg.contains("@import") && !svg.contains("href"));
        assert_eq!(svg.matches("<svg").count(), 1);
        assert_eq!(svg.matches("<text").count(), svg.matches("</text>").count());
        assert!(svg.contains(">97.3 %</text>"));
        assert!(svg.contains(">1 144</text>"), "{svg}");
        assert_eq!(svg, super::svg(&analysis));
    }

    #[test]
    fn svg_matches_the_golden_file() {
        crate::util::ensure_file_contents("xtask/test_data/shadow.svg", &svg(&example()));
    }

    #[test]
    fn scale_picks_round_steps() {
        assert_eq!(scale(0), (1, 1));
        assert_eq!(scale(3), (1, 3));
        assert_eq!(scale(7), (2, 8));
        assert_eq!(scale(1201), (500, 1500));
        assert_eq!(scale(100), (50, 100));
    }
}

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
    let by = a.paired_by_protocol;
    if by.grpc > 0 {
        line += &format!(
            "; paired: {} HTTP, {} gRPC",
            thousands(by.http),
            thousands(by.grpc)
        );
    }
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

mod svg;
#[cfg(test)]
mod tests;

pub use svg::svg;

use super::{svg::scale, *};
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

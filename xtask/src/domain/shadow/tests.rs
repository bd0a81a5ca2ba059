use super::*;

fn record(id: &str, classes: &[u32], probabilities: &[[f64; 3]]) -> Record {
    Record {
        seq: 0,
        id: id.to_owned(),
        route: "/predict".to_owned(),
        status: 200,
        latency_us: 1000,
        inputs: classes.iter().map(|&c| vec![c as f64, 1.0]).collect(),
        classes: classes.to_vec(),
        probabilities: probabilities.iter().map(|p| p.to_vec()).collect(),
    }
}

const SETOSA: [f64; 3] = [0.9, 0.05, 0.05];
const VERSICOLOR: [f64; 3] = [0.1, 0.8, 0.1];

fn sides() -> Sides {
    Sides {
        active: Color::Blue,
        active_version: "v1.0.0".to_owned(),
        candidate: Color::Green,
        candidate_version: "v1.1.0".to_owned(),
    }
}

fn analysed(active: &[Record], candidate: &[Record]) -> Analysis {
    analyse(&join(active, candidate), &sides(), 5)
}

#[test]
fn page_deserialises() {
    let page: Page = serde_json::from_str(
        r#"{"version":"v1.0.0","next":123,"last":123,"oldest":45,"dropped":44,"records":[
          {"seq":101,"id":"4f1c","route":"/predict","status":200,"latency_us":312,
           "inputs":[[5.1,3.5,1.4,0.2]],"classes":[0],"probabilities":[[0.97,0.02,0.01]]},
          {"seq":102,"id":"4f1d","route":"/predict","status":422,"latency_us":40}]}"#,
    )
    .unwrap();
    assert_eq!(page.version, "v1.0.0");
    assert_eq!(page.dropped, 44);
    assert_eq!(page.records[0].classes, [0]);
    assert_eq!(page.records[0].probabilities, [[0.97, 0.02, 0.01]]);
    assert!(!page.records[1].succeeded());
    assert!(page.records[1].classes.is_empty());
}

#[test]
fn join_pairs_by_id_whatever_the_order() {
    let active = [
        record("a", &[0], &[SETOSA]),
        record("b", &[1], &[VERSICOLOR]),
    ];
    let candidate = [
        record("b", &[1], &[VERSICOLOR]),
        record("a", &[0], &[SETOSA]),
    ];
    let joined = join(&active, &candidate);
    assert_eq!(joined.pairs.len(), 2);
    for pair in &joined.pairs {
        assert_eq!(pair.active.id, pair.candidate.id);
    }
    assert_eq!(joined.pairs[0].active.id, "a");
    assert_eq!(joined.unpaired, Unpaired::default());
}

#[test]
fn join_never_pairs_duplicate_ids() {
    let active = [
        record("dup", &[0], &[SETOSA]),
        record("dup", &[1], &[VERSICOLOR]),
        record("ok", &[0], &[SETOSA]),
        record("twice-on-candidate", &[0], &[SETOSA]),
    ];
    let candidate = [
        record("dup", &[1], &[VERSICOLOR]),
        record("ok", &[0], &[SETOSA]),
        record("twice-on-candidate", &[0], &[SETOSA]),
        record("twice-on-candidate", &[2], &[SETOSA]),
    ];
    let joined = join(&active, &candidate);
    let ids: Vec<&str> = joined.pairs.iter().map(|p| p.active.id.as_str()).collect();
    assert_eq!(ids, ["ok"]);
    assert_eq!(joined.unpaired.duplicate_ids, 2);
    assert_eq!(joined.unpaired.unanswered_by_candidate, 0);
    assert_eq!(joined.unpaired.missing_on_active, 0);
}

#[test]
fn join_counts_unpaired_reasons() {
    let active = [
        record("both", &[0], &[SETOSA]),
        record("timed-out", &[0], &[SETOSA]),
        record("hung", &[0], &[SETOSA]),
    ];
    let candidate = [
        record("both", &[0], &[SETOSA]),
        record("evicted-on-active", &[0], &[SETOSA]),
    ];
    let joined = join(&active, &candidate);
    assert_eq!(joined.pairs.len(), 1);
    assert_eq!(
        joined.unpaired,
        Unpaired {
            unanswered_by_candidate: 2,
            missing_on_active: 1,
            duplicate_ids: 0
        }
    );
}

#[test]
fn a_batch_pair_compares_per_row() {
    let active = [record(
        "batch",
        &[0, 1, 2],
        &[SETOSA, VERSICOLOR, VERSICOLOR],
    )];
    let candidate = [record(
        "batch",
        &[0, 1, 1],
        &[SETOSA, VERSICOLOR, VERSICOLOR],
    )];
    let analysis = analysed(&active, &candidate);
    assert_eq!(analysis.requests_compared, 1);
    assert_eq!(analysis.rows_compared, 3);
    let agreement = analysis.agreement.unwrap();
    assert_eq!(agreement.rows_agreeing, 2);
    assert_eq!(analysis.confusion.counts[2][1], 1);
    // The row whose class differs is listed, with its own input and probabilities.
    assert_eq!(analysis.top_disagreements.len(), 1);
    let top = &analysis.top_disagreements[0];
    assert_eq!((top.id.as_str(), top.row), ("batch", 2));
    assert_eq!(top.input, [2.0, 1.0]);
    assert_eq!((top.active_class, top.candidate_class), (2, 1));
}

#[test]
fn shape_mismatches_and_errors_are_not_compared() {
    let mut failed = record("failed", &[], &[]);
    failed.status = 503;
    let mut both_failed = record("both-failed", &[], &[]);
    both_failed.status = 500;
    let active = [
        record("rows", &[0, 0], &[SETOSA, SETOSA]),
        record("failed", &[0], &[SETOSA]),
        both_failed.clone(),
        record("ok", &[0], &[SETOSA]),
    ];
    let candidate = [
        record("rows", &[0], &[SETOSA]),
        failed,
        both_failed,
        record("ok", &[0], &[SETOSA]),
    ];
    let analysis = analysed(&active, &candidate);
    assert_eq!(analysis.requests_paired, 4);
    assert_eq!(analysis.requests_compared, 1);
    assert_eq!(analysis.rows_compared, 1);
    assert_eq!(analysis.shape_mismatch, 1);
    assert_eq!(
        analysis.errors,
        Errors {
            pairs: 2,
            active: 1,
            candidate: 2
        }
    );
}

#[test]
fn malformed_rows_are_shape_mismatches() {
    let mut nan = record("nan", &[0], &[SETOSA]);
    nan.probabilities[0][1] = f64::NAN;
    let huge = record("huge", &[1_000_000], &[SETOSA]);
    let mut four = record("four", &[0], &[SETOSA]);
    four.probabilities[0].push(0.0);
    let active = [
        record("nan", &[0], &[SETOSA]),
        record("huge", &[0], &[SETOSA]),
        record("four", &[0], &[SETOSA]),
    ];
    let analysis = analysed(&active, &[nan, huge, four]);
    assert_eq!(analysis.shape_mismatch, 3);
    assert_eq!(analysis.rows_compared, 0);
    assert_eq!(analysis.confusion.counts.len(), 3);
}

#[test]
fn agreement_has_a_wilson_interval() {
    let (low, high) = wilson(90, 100);
    assert!((low - 0.8256).abs() < 5e-4, "{low}");
    assert!((high - 0.9448).abs() < 5e-4, "{high}");
    let (low, high) = wilson(100, 100);
    assert!(
        high <= 1.0 && (high - 1.0).abs() < 1e-12 && low > 0.96,
        "{low} {high}"
    );
    assert_eq!(wilson(0, 0), (0.0, 1.0));

    let mut active = Vec::new();
    let mut candidate = Vec::new();
    for i in 0..100 {
        let id = format!("r{i}");
        active.push(record(&id, &[0], &[SETOSA]));
        let class = if i < 90 { 0 } else { 1 };
        candidate.push(record(&id, &[class], &[SETOSA]));
    }
    let agreement = analysed(&active, &candidate).agreement.unwrap();
    assert_eq!(agreement.fraction, 0.9);
    assert_eq!((agreement.ci95_low, agreement.ci95_high), wilson(90, 100));
}

#[test]
fn confusion_matrix_counts_active_against_candidate() {
    let active = [
        record("a", &[0, 1], &[SETOSA, VERSICOLOR]),
        record("b", &[2], &[SETOSA]),
        record("c", &[1], &[SETOSA]),
    ];
    let candidate = [
        record("a", &[0, 2], &[SETOSA, VERSICOLOR]),
        record("b", &[2], &[SETOSA]),
        record("c", &[4], &[SETOSA]),
    ];
    let confusion = analysed(&active, &candidate).confusion;
    assert_eq!(
        confusion.labels,
        ["setosa", "versicolor", "virginica", "class 3", "class 4"]
    );
    assert_eq!(confusion.counts[0], [1, 0, 0, 0, 0]);
    assert_eq!(confusion.counts[1], [0, 0, 1, 0, 1]);
    assert_eq!(confusion.counts[2], [0, 0, 1, 0, 0]);
    assert_eq!(confusion.counts.iter().flatten().sum::<u64>(), 4);
}

#[test]
fn probability_differences_and_histogram() {
    let active = [
        record("same", &[0], &[SETOSA]),
        record("near", &[0], &[SETOSA]),
        record("far", &[0], &[SETOSA]),
    ];
    let candidate = [
        record("same", &[0], &[SETOSA]),
        record("near", &[0], &[[0.895, 0.055, 0.05]]),
        record("far", &[1], &[VERSICOLOR]),
    ];
    let analysis = analysed(&active, &candidate);
    let diff = analysis.probability_diff.unwrap();
    assert!((diff.max - 0.8).abs() < 1e-12);
    assert!((diff.mean - (0.005 + 0.8) / 3.0).abs() < 1e-9);
    let rows: Vec<u64> = analysis.histogram.iter().map(|b| b.rows).collect();
    assert_eq!(rows, [1, 1, 0, 0, 0, 0, 1]);
    assert_eq!(analysis.histogram.last().unwrap().to, 1.0);
    // The class change first, then the larger difference; the exact match is not listed.
    let top: Vec<&str> = analysis
        .top_disagreements
        .iter()
        .map(|d| d.id.as_str())
        .collect();
    assert_eq!(top, ["far", "near"]);
}

#[test]
fn top_n_limits_the_list() {
    let active: Vec<Record> = (0..10)
        .map(|i| record(&format!("r{i}"), &[0], &[SETOSA]))
        .collect();
    let candidate: Vec<Record> = (0..10)
        .map(|i| record(&format!("r{i}"), &[1], &[VERSICOLOR]))
        .collect();
    let analysis = analyse(&join(&active, &candidate), &sides(), 3);
    // The same input and classes ten times: listed once, with its count.
    let listed: Vec<(&str, u64)> = analysis
        .top_disagreements
        .iter()
        .map(|d| (d.id.as_str(), d.occurrences))
        .collect();
    assert_eq!(listed, [("r0", 10)]);
    let distinct = |mut records: Vec<Record>| {
        for (i, r) in records.iter_mut().enumerate() {
            r.inputs = vec![vec![i as f64, 1.0]];
        }
        records
    };
    let (active, candidate) = (distinct(active), distinct(candidate));
    let analysis = analyse(&join(&active, &candidate), &sides(), 3);
    let ids: Vec<&str> = analysis
        .top_disagreements
        .iter()
        .map(|d| d.id.as_str())
        .collect();
    assert_eq!(ids, ["r0", "r1", "r2"]);
}

#[test]
fn latency_percentiles_in_ms() {
    let mut active = Vec::new();
    let mut candidate = Vec::new();
    for i in 1..=100u64 {
        let id = format!("r{i}");
        let mut a = record(&id, &[0], &[SETOSA]);
        a.latency_us = i * 1000;
        let mut c = a.clone();
        c.latency_us = i * 2000;
        active.push(a);
        candidate.push(c);
    }
    let latency = analysed(&active, &candidate).latency_ms.unwrap();
    assert_eq!(
        latency.active,
        Percentiles {
            p50: 50.0,
            p99: 99.0
        }
    );
    assert_eq!(
        latency.candidate,
        Percentiles {
            p50: 100.0,
            p99: 198.0
        }
    );
    assert_eq!(analysed(&[], &[]).latency_ms, None);
}

#[test]
fn the_floor_is_exactly_zero_for_identical_records() {
    let originals = [
        record("a", &[0, 1], &[[0.1, 0.2, 0.7], [1.0 / 3.0, 0.3, 0.1]]),
        record("b", &[2], &[[0.123_456_789, 0.2, 0.676_543_211]]),
    ];
    let floor = noise_floor(&originals, &originals.clone());
    assert_eq!(floor.rows_compared, 3);
    assert_eq!(floor.class_disagreement.to_bits(), 0.0f64.to_bits());
    assert_eq!(floor.mean_diff.to_bits(), 0.0f64.to_bits());
    assert_eq!(floor.max_diff.to_bits(), 0.0f64.to_bits());
}

#[test]
fn above_floor_compares_the_candidate_with_the_floor() {
    let active = [record("a", &[0], &[SETOSA]), record("b", &[0], &[SETOSA])];
    let candidate = [
        record("a", &[0], &[SETOSA]),
        record("b", &[1], &[VERSICOLOR]),
    ];
    let mut analysis = analysed(&active, &candidate);
    assert_eq!(analysis.above_floor(), None);
    analysis.floor = Some(noise_floor(&active, &active));
    assert_eq!(
        analysis.above_floor(),
        Some(AboveFloor {
            classes: true,
            probabilities: true
        })
    );
    let mut same = analysed(&active, &active);
    same.floor = Some(noise_floor(&active, &active));
    assert_eq!(same.class_disagreement(), Some(0.0));
    assert_eq!(
        same.above_floor(),
        Some(AboveFloor {
            classes: false,
            probabilities: false
        })
    );
}

#[test]
fn verdict_says_what_was_measured_and_required() {
    let mut active = Vec::new();
    let mut candidate = Vec::new();
    for i in 0..512 {
        let id = format!("r{i}");
        active.push(record(&id, &[0], &[SETOSA]));
        let class = if i < 317 { 0 } else { 1 };
        candidate.push(record(&id, &[class], &[SETOSA]));
    }
    let analysis = analysed(&active, &candidate);
    assert_eq!(verdict(&analysis, None), Ok(()));
    assert_eq!(verdict(&analysis, Some(0.6)), Ok(()));
    assert_eq!(
        verdict(&analysis, Some(0.95)).unwrap_err(),
        "class agreement 61.9 % (95 % CI 57.6–66.0 %) over 512 rows is below the required 95.0 %"
    );
    let err = verdict(&analysis, Some(95.0)).unwrap_err();
    assert!(err.contains("between 0 and 1"), "{err}");

    let mut failed = record("x", &[], &[]);
    failed.status = 500;
    let empty = analysed(std::slice::from_ref(&failed), &[failed.clone()]);
    let err = verdict(&empty, None).unwrap_err();
    assert!(
        err.starts_with("no rows compared: 1 requests paired, 1 with an error"),
        "{err}"
    );
}

#[test]
fn paired_active_skips_errors_and_unpaired() {
    let mut failed = record("failed", &[], &[]);
    failed.status = 500;
    let active = [
        record("failed", &[0], &[SETOSA]),
        record("alone", &[0], &[SETOSA]),
        record("a", &[0], &[SETOSA]),
        record("b", &[0], &[SETOSA]),
    ];
    let candidate = [
        failed,
        record("a", &[0], &[SETOSA]),
        record("b", &[0], &[SETOSA]),
    ];
    let joined = join(&active, &candidate);
    let ids: Vec<String> = joined.paired_active(1).into_iter().map(|r| r.id).collect();
    assert_eq!(ids, ["a"]);
    assert_eq!(joined.paired_active(10).len(), 2);
}

#[test]
fn summary_is_one_line_with_the_numbers() {
    let active = [record("a", &[0], &[SETOSA]), record("b", &[0], &[SETOSA])];
    let candidate = [record("a", &[1], &[VERSICOLOR])];
    let mut analysis = analysed(&active, &candidate);
    analysis.floor = Some(noise_floor(&active, &active));
    analysis.evicted_candidate = 4;
    let line = summary(&analysis);
    assert!(!line.contains('\n'));
    assert!(
        line.starts_with("green v1.1.0 vs blue v1.0.0: class agreement 0.0 % over 1 rows"),
        "{line}"
    );
    assert!(line.contains("(noise floor 0.0 % / 0)"), "{line}");
    assert!(line.ends_with(", 1 unpaired, 4 evicted"), "{line}");
}

#[test]
fn percent_never_rounds_to_an_edge_it_did_not_reach() {
    assert_eq!(percent(0.973), "97.3");
    assert_eq!(percent(1.0), "100.0");
    assert_eq!(percent(0.0), "0.0");
    assert_eq!(percent(0.9997), "99.97");
    assert_eq!(percent(0.0001), "0.01");
}

#[test]
fn prob_shows_exact_zero_and_tiny_differences() {
    assert_eq!(prob(0.0), "0");
    assert_eq!(prob(1.5e-7), "1.5e-7");
    assert_eq!(prob(0.88), "0.8800");
}

#[test]
fn thousands_are_spaced() {
    assert_eq!(thousands(0), "0");
    assert_eq!(thousands(999), "999");
    assert_eq!(thousands(1234), "1 234");
    assert_eq!(thousands(1_234_567), "1 234 567");
}

#[test]
fn analysis_serialises_numbers_as_numbers() {
    let active = [record("a", &[0], &[SETOSA])];
    let json = serde_json::to_value(analysed(&active, &active)).unwrap();
    assert_eq!(json["active"], "blue");
    assert_eq!(json["candidate_version"], "v1.1.0");
    assert_eq!(json["rows_compared"], 1);
    assert_eq!(json["agreement"]["fraction"], 1.0);
    assert_eq!(json["confusion"]["counts"][0][0], 1);
    assert_eq!(json["histogram"][0]["rows"], 1);
    assert_eq!(json["unpaired"]["unanswered_by_candidate"], 0);
    assert_eq!(json["evicted_active"], 0);
    assert!(json["floor"].is_null());
}

#[test]
fn paired_requests_are_counted_by_protocol() {
    let routes = [
        "/predict",
        "/v2/models/iris/infer",
        "/v2/models/iris/versions/v1/infer",
        "/prediction.PredictionService/Predict",
        "/prediction.PredictionService/PredictBatch",
        "/inference.GRPCInferenceService/ModelInfer",
    ];
    let records: Vec<Record> = routes
        .iter()
        .enumerate()
        .map(|(i, route)| Record {
            route: (*route).to_owned(),
            ..record(&format!("id-{i}"), &[0], &[SETOSA])
        })
        .collect();
    let analysis = analysed(&records, &records);
    assert_eq!(analysis.paired_by_protocol, Protocols { http: 3, grpc: 3 });
    assert!(crate::domain::shadow_render::text(&analysis).contains("paired: 3 HTTP, 3 gRPC"));
}

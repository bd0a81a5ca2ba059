//! Answers are never garbage: finite but extreme feature values get finite probabilities that
//! sum to 1, or a 422 naming the feature and the accepted range; on `/predict` and on the
//! protocol's FP64 and FP32 tensors.

mod common;

use common::{app, get, post_json, GOLDEN};
use serde_json::{json, Value};

/// Extreme feature values: every 200 carries finite probabilities that sum to 1, every refusal
/// is a 422 that names the feature and the accepted range. The table pins which is which:
/// within `[-1e300, 1e300]` the model answers, beyond it refuses.
const EXTREMES: [f64; 16] = [
    1e308,
    -1e308,
    1.6e308,
    f64::MAX,
    -f64::MAX,
    1e301,
    1e300,
    -1e300,
    f32::MAX as f64,
    -(f32::MAX as f64),
    1e-308,
    5e-324,
    -5e-324,
    f32::MIN_POSITIVE as f64,
    0.0,
    -0.0,
];

/// Rows made from `EXTREMES`: each value in each position of a golden row, then mixes.
fn extreme_rows() -> Vec<[f64; 4]> {
    let mut rows = Vec::new();
    for value in EXTREMES {
        for j in 0..4 {
            let mut row = GOLDEN[j % 3].0;
            row[j] = value;
            rows.push(row);
        }
        rows.push([value; 4]);
        rows.push([value, -value, value, -value]);
    }
    rows.push([1e300, -1e300, 5e-324, 1e308]);
    rows.push([5e-324, 1.6e308, -1.6e308, 0.0]);
    rows.push([f32::MAX as f64, 1e-308, -1e300, 7.0]);
    rows
}

/// The first feature of `row` outside `[-limit, limit]`.
fn first_out_of(row: &[f64; 4], limit: f64) -> Option<usize> {
    row.iter().position(|v| v.abs() > limit)
}

const FEATURE_NAMES: [&str; 4] = ["sepal length", "sepal width", "petal length", "petal width"];

/// Checks one answered row: finite probabilities in [0, 1] that sum to 1, the class the most
/// probable one.
fn assert_sane(what: &str, class: &Value, probabilities: &[Value]) {
    let p: Vec<f64> = probabilities
        .iter()
        .map(|v| {
            v.as_f64()
                .unwrap_or_else(|| panic!("{what}: {v} is not a number"))
        })
        .collect();
    assert_eq!(p.len(), 3, "{what}: {p:?}");
    assert!(
        p.iter().all(|v| v.is_finite() && (0.0..=1.0).contains(v)),
        "{what}: {p:?}"
    );
    assert!((p.iter().sum::<f64>() - 1.0).abs() < 1e-9, "{what}: {p:?}");
    let class = class
        .as_u64()
        .unwrap_or_else(|| panic!("{what}: class {class}")) as usize;
    assert!(
        p.iter().all(|&v| v <= p[class]),
        "{what}: class {class}, {p:?}"
    );
}

#[tokio::test]
async fn extreme_features_get_finite_probabilities_or_a_422_naming_the_feature() {
    let app = app("v1.0.0");
    let (mut answered, mut refused) = (0, 0);
    for row in extreme_rows() {
        let what = format!("/predict {row:?}");
        let answer = post_json(&app, "/predict", json!({ "features": row }).to_string()).await;
        match first_out_of(&row, 1e300) {
            None => {
                assert_eq!(answer.status, 200, "{what}: {}", answer.text());
                let body = answer.json();
                assert_sane(
                    &what,
                    &body["class"],
                    body["probabilities"].as_array().unwrap(),
                );
                answered += 1;
            }
            Some(j) => {
                assert_eq!(answer.status, 422, "{what}: {}", answer.text());
                let error = answer.json()["error"].as_str().unwrap().to_owned();
                let feature = format!("feature {j} ({})", FEATURE_NAMES[j]);
                assert!(
                    error.contains(&feature) && error.contains("accepted range [-1e300, 1e300]"),
                    "{what}: {error:?} should name {feature:?} and the range"
                );
                refused += 1;
            }
        }
    }
    assert!(
        answered > 20 && refused > 20,
        "{answered} answered, {refused} refused"
    );
}

#[tokio::test]
async fn a_batch_with_one_row_out_of_range_is_refused_whole_and_counts_nothing() {
    let app = app("v1.0.0");
    let rows = [GOLDEN[0].0, GOLDEN[1].0, [5.1, 1.6e308, 1.4, 0.2]];
    let answer = post_json(&app, "/predict", json!({ "instances": rows }).to_string()).await;
    assert_eq!(answer.status, 422, "{}", answer.text());
    let error = answer.json()["error"].as_str().unwrap().to_owned();
    assert!(
        error.starts_with("row 2: feature 1 (sepal width) is 1.6e308"),
        "{error}"
    );
    let metrics = get(&app, "/metrics").await.text();
    assert!(
        metrics.contains("predictions_total{class=\"0\",label=\"setosa\"} 0"),
        "{metrics}"
    );
}

#[tokio::test]
async fn extreme_tensor_values_get_finite_probabilities_or_a_422_naming_the_feature() {
    let app = app("v1.1.0");
    for (datatype, limit, range) in [
        ("FP64", 1e300, "accepted range [-1e300, 1e300]"),
        (
            "FP32",
            f32::MAX as f64,
            "FP32 range [-3.4028235e38, 3.4028235e38]",
        ),
    ] {
        for row in extreme_rows() {
            let what = format!("{datatype} {row:?}");
            let request = json!({"inputs": [{"name": "input-0", "shape": [1, 4], "datatype": datatype, "data": row}]});
            let answer = post_json(&app, "/v2/models/iris/infer", request.to_string()).await;
            match first_out_of(&row, limit) {
                None => {
                    assert_eq!(answer.status, 200, "{what}: {}", answer.text());
                    let body = answer.json();
                    assert_sane(
                        &what,
                        &body["outputs"][0]["data"][0],
                        body["outputs"][1]["data"].as_array().unwrap(),
                    );
                }
                Some(j) => {
                    assert_eq!(answer.status, 422, "{what}: {}", answer.text());
                    let error = answer.json()["error"].as_str().unwrap().to_owned();
                    let feature = format!("row 0: feature {j} ({})", FEATURE_NAMES[j]);
                    assert!(
                        error.contains(&feature) && error.contains(range),
                        "{what}: {error:?} should name {feature:?} and {range:?}"
                    );
                }
            }
        }
    }
}

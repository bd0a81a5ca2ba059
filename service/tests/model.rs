//! The service's own prediction against linfa's, on every Iris row, for both versions; the
//! accepted range of the features, and the load-time check that makes it safe.

mod common;

use common::{load, model_dir, VERSIONS};
use linfa::prelude::*;
use service::model::{FittedModel, Metadata, Model, OutOfRange, FEATURE_LIMIT};

#[test]
fn extracted_parameters_predict_what_linfa_predicts() {
    let iris = linfa_datasets::iris();
    for version in VERSIONS {
        let model = Model::load(&model_dir(version), Some(version)).unwrap();
        let fitted: FittedModel =
            serde_json::from_slice(&std::fs::read(model_dir(version).join("model.json")).unwrap())
                .unwrap();
        let expected = fitted.predict_probabilities(iris.records());
        let expected_class = fitted.predict(iris.records());
        for (i, row) in iris.records().rows().into_iter().enumerate() {
            let p = model.predict(&[row[0], row[1], row[2], row[3]]).unwrap();
            for k in 0..3 {
                let diff = (p.probabilities[k] - expected[[i, k]]).abs();
                assert!(
                    diff < 1e-12,
                    "{version} row {i} class {k}: {} vs {}",
                    p.probabilities[k],
                    expected[[i, k]]
                );
            }
            assert_eq!(p.class, expected_class[i], "{version} row {i}");
        }
    }
}

#[test]
fn inputs_at_the_edge_of_the_range_give_finite_probabilities() {
    for version in VERSIONS {
        let model = load(version);
        let l = FEATURE_LIMIT;
        for x in [
            [l, 0.0, 0.0, 0.0],
            [-l, l, -l, l],
            [l, l, l, l],
            [-l, -l, -l, -l],
            [5e-324, -5e-324, 1e-308, 0.0],
            [0.0; 4],
        ] {
            let p = model.predict(&x).unwrap();
            assert!(
                p.probabilities.iter().all(|v| v.is_finite()),
                "{version} {x:?}: {p:?}"
            );
            assert!(
                (p.probabilities.iter().sum::<f64>() - 1.0).abs() < 1e-9,
                "{version} {x:?}: {p:?}"
            );
        }
    }
}

#[test]
fn features_beyond_the_range_are_refused_naming_the_first() {
    let model = load("v1.0.0");
    for (x, feature) in [
        ([1.6e308, 0.0, 0.0, 0.0], 0),
        ([1.0, -1e301, 1e308, 0.0], 1),
        ([1.0, 2.0, 3.0, f64::NAN], 3),
        ([1.0, 2.0, f64::INFINITY, 0.0], 2),
    ] {
        let OutOfRange { feature: f, value } = model.predict(&x).unwrap_err();
        assert_eq!(f, feature, "{x:?}");
        assert_eq!(value.to_bits(), x[feature].to_bits(), "{x:?}");
    }
    let message = model
        .predict(&[1.6e308, 0.0, 0.0, 0.0])
        .unwrap_err()
        .to_string();
    assert_eq!(
        message,
        "feature 0 (sepal length) is 1.6e308, outside the accepted range [-1e300, 1e300]"
    );
}

#[test]
fn a_model_whose_weights_could_overflow_within_the_range_is_refused() {
    let dir = model_dir("v1.0.0");
    let metadata: Metadata =
        serde_json::from_slice(&std::fs::read(dir.join("metadata.json")).unwrap()).unwrap();
    let mut model: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("model.json")).unwrap()).unwrap();
    let fitted: FittedModel = serde_json::from_value(model.clone()).unwrap();
    assert!(Model::from_fitted(&fitted, metadata.clone()).is_ok());
    // 1e9 times 1e300 is past f64::MAX: a feature at the limit would overflow the logit.
    model["params"]["data"][0] = serde_json::json!(1e9);
    let fitted: FittedModel = serde_json::from_value(model).unwrap();
    let err = Model::from_fitted(&fitted, metadata).unwrap_err();
    assert!(err.contains("could overflow the logits"), "{err}");
}

//! The service's own prediction against linfa's, on every Iris row, for both versions.

mod common;

use common::{model_dir, VERSIONS};
use linfa::prelude::*;
use service::model::{FittedModel, Model};

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
            let p = model.predict(&[row[0], row[1], row[2], row[3]]);
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
fn extreme_inputs_give_finite_probabilities() {
    let model = Model::load(&model_dir("v1.0.0"), None).unwrap();
    for x in [
        [1e300, 0.0, 0.0, 0.0],
        [-1e300, 1e300, -1e300, 1e300],
        [0.0; 4],
    ] {
        let p = model.predict(&x);
        assert!(
            p.probabilities.iter().all(|v| v.is_finite()),
            "{x:?}: {p:?}"
        );
        assert!(
            (p.probabilities.iter().sum::<f64>() - 1.0).abs() < 1e-9,
            "{x:?}: {p:?}"
        );
    }
}

//! Training: byte-identical output across runs (and equal to the committed models), the
//! accuracy threshold, and the refusal to overwrite.

mod common;

use common::{model_dir, VERSIONS};
use service::{
    model::Model,
    train::{self, Options},
};

fn options(out: &std::path::Path, version: &str) -> Options {
    Options {
        version: version.to_owned(),
        out_dir: out.to_owned(),
        force: false,
        min_accuracy: 0.9,
    }
}

#[test]
fn training_twice_writes_byte_identical_files_equal_to_the_committed_ones() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    for version in VERSIONS {
        train::run(&options(a.path(), version)).unwrap();
        train::run(&options(b.path(), version)).unwrap();
        for file in ["model.json", "metadata.json"] {
            let first = std::fs::read(a.path().join(version).join(file)).unwrap();
            let second = std::fs::read(b.path().join(version).join(file)).unwrap();
            assert!(first == second, "{version}/{file} differs between two runs");
            let committed = std::fs::read(model_dir(version).join(file)).unwrap();
            assert!(
                first == committed,
                "{version}/{file} differs from the committed one: retrain with `cargo xtask train --force` and commit"
            );
        }
        let model = Model::load(&a.path().join(version), Some(version)).unwrap();
        assert_eq!(model.version(), version);
    }
}

#[test]
fn versions_differ_in_hyperparameters_and_record_their_split_and_quality() {
    let v1 = Model::load(&model_dir("v1.0.0"), None).unwrap();
    let v11 = Model::load(&model_dir("v1.1.0"), None).unwrap();
    let (m1, m11) = (v1.metadata(), v11.metadata());
    assert_ne!(m1.hyperparameters, m11.hyperparameters);
    assert_eq!(m1.split, m11.split, "both versions see the same split");
    assert_eq!(m1.split.train_size + m1.split.test_size, 150);
    assert_eq!(m1.data.sha256, m11.data.sha256);
    for m in [m1, m11] {
        assert!(
            m.metrics.test_accuracy >= 0.9,
            "{}: {}",
            m.version,
            m.metrics.test_accuracy
        );
        assert_eq!(m.metrics.per_class.len(), 3);
        assert_eq!(
            m.metrics.per_class.iter().map(|c| c.support).sum::<usize>(),
            m.split.test_size
        );
        assert_eq!(m.class_labels, ["setosa", "versicolor", "virginica"]);
    }
}

#[test]
fn a_model_below_the_accuracy_threshold_is_not_written() {
    let out = tempfile::tempdir().unwrap();
    let mut strict = options(out.path(), "v1.0.0");
    strict.min_accuracy = 1.01;
    let err = format!("{:#}", train::run(&strict).unwrap_err());
    assert!(
        err.contains("below the minimum") && err.contains("--min-accuracy"),
        "{err}"
    );
    assert!(
        !out.path().join("v1.0.0").exists(),
        "nothing may be written"
    );
}

#[test]
fn an_existing_version_is_kept_unless_forced() {
    let out = tempfile::tempdir().unwrap();
    train::run(&options(out.path(), "v1.1.0")).unwrap();
    let model = out.path().join("v1.1.0/model.json");
    std::fs::write(&model, "changed").unwrap();
    let err = train::run(&options(out.path(), "v1.1.0"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("already exists") && err.contains("--force"),
        "{err}"
    );
    assert_eq!(std::fs::read_to_string(&model).unwrap(), "changed");
    let mut forced = options(out.path(), "v1.1.0");
    forced.force = true;
    train::run(&forced).unwrap();
    assert_eq!(
        std::fs::read(&model).unwrap(),
        std::fs::read(model_dir("v1.1.0").join("model.json")).unwrap()
    );
}

#[test]
fn an_unknown_version_is_refused() {
    let out = tempfile::tempdir().unwrap();
    let err = train::run(&options(out.path(), "v2.0.0"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("no training preset"), "{err}");
}

//! Reproducible training of the Iris classifier.
//!
//! Steps:
//! 1. pick the preset for the version (hyperparameters differ between versions);
//! 2. load Iris from `linfa-datasets` (compiled in: nothing is downloaded);
//! 3. shuffle the row indices with a seeded SplitMix64 Fisher–Yates shuffle and split 80/20;
//! 4. fit `linfa-logistic`'s `MultiLogisticRegression` (L-BFGS, deterministic);
//! 5. score the test rows (accuracy, per-class precision and recall);
//! 6. refuse a model below the accuracy threshold, or an existing version without `force`;
//! 7. write `model.json` (linfa's serde form, no timestamps) and `metadata.json` (with the
//!    model's sha256 and the data's checksums), each through a temporary file and a rename.
//!
//! Everything here is a pure function of the preset and the compiled-in data, so the same
//! command on the same commit writes byte-identical files.

use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
};

use anyhow::{bail, Context, Result};
use linfa::prelude::*;
use linfa_logistic::MultiLogisticRegression;
use ndarray::{Array1, Array2, Axis};

use crate::model::{
    sha256_hex, ClassMetrics, DataInfo, FittedModel, Hyperparameters, Metadata, Metrics, Model,
    Split, METADATA_FILE, MODEL_FILE, N_CLASSES,
};

/// The seed of the train/test shuffle, shared by every version so they see the same rows.
pub const SPLIT_SEED: u64 = 42;
/// The share of rows held out for testing.
pub const TEST_FRACTION: f64 = 0.2;
/// The default minimum test accuracy a model must reach to be written.
pub const DEFAULT_MIN_ACCURACY: f64 = 0.9;
/// The class labels, in class-index order.
pub const CLASS_LABELS: [&str; N_CLASSES] = ["setosa", "versicolor", "virginica"];
/// The feature names, in input order.
pub const FEATURE_NAMES: [&str; 4] = [
    "sepal length (cm)",
    "sepal width (cm)",
    "petal length (cm)",
    "petal width (cm)",
];

/// A named set of hyperparameters: one per model version.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Preset {
    pub version: &'static str,
    pub hyperparameters: Hyperparameters,
}

/// The versions this project trains. v1.1.0 regularises less and iterates longer.
pub const PRESETS: [Preset; 2] = [
    Preset {
        version: "v1.0.0",
        hyperparameters: Hyperparameters {
            alpha: 1.0,
            max_iterations: 100,
            gradient_tolerance: 1e-4,
            fit_intercept: true,
        },
    },
    Preset {
        version: "v1.1.0",
        hyperparameters: Hyperparameters {
            alpha: 0.1,
            max_iterations: 300,
            gradient_tolerance: 1e-6,
            fit_intercept: true,
        },
    },
];

/// The preset for `version`, or an error listing the known ones.
pub fn preset(version: &str) -> Result<Preset> {
    match PRESETS.iter().find(|p| p.version == version) {
        Some(p) => Ok(*p),
        None => {
            let known: Vec<&str> = PRESETS.iter().map(|p| p.version).collect();
            bail!(
                "no training preset for version {version:?}: choose one of {}",
                known.join(", ")
            )
        }
    }
}

/// What to train and where to write it.
#[derive(Debug, Clone)]
pub struct Options {
    pub version: String,
    pub out_dir: PathBuf,
    pub force: bool,
    pub min_accuracy: f64,
}

/// A trained model and its files' contents, before anything is written.
#[derive(Debug, Clone)]
pub struct Trained {
    pub metadata: Metadata,
    pub model_json: String,
    pub metadata_json: String,
}

/// Trains the preset for `options.version` and writes `<out_dir>/<version>/`. Returns the
/// metadata written.
pub fn run(options: &Options) -> Result<Metadata> {
    let preset = preset(&options.version)?;
    let dir = options.out_dir.join(preset.version);
    if dir.join(MODEL_FILE).exists() && !options.force {
        bail!(
            "{} already exists: pass --force to overwrite it (the result is byte-identical when nothing changed)",
            dir.display()
        );
    }
    let trained = train(&preset).with_context(|| format!("train {}", preset.version))?;
    check_accuracy(&trained.metadata, options.min_accuracy)?;
    write(&dir, &trained).with_context(|| format!("write {}", dir.display()))?;
    Ok(trained.metadata)
}

/// Refuses a model whose test accuracy is below `min_accuracy`.
pub fn check_accuracy(metadata: &Metadata, min_accuracy: f64) -> Result<()> {
    let accuracy = metadata.metrics.test_accuracy;
    if accuracy < min_accuracy {
        bail!(
            "test accuracy {accuracy:.4} of {} is below the minimum {min_accuracy:.4}: the model was not written (change the hyperparameters, or lower --min-accuracy if this is expected)",
            metadata.version
        );
    }
    Ok(())
}

/// Fits the preset and renders both files. Pure: no file is touched.
pub fn train(preset: &Preset) -> Result<Trained> {
    let iris = linfa_datasets::iris();
    let records = iris.records().to_owned();
    let targets = iris.targets().to_owned();
    let rows = records.nrows();

    let order = shuffled_indices(rows, SPLIT_SEED);
    let test_size = (rows as f64 * TEST_FRACTION).round() as usize;
    let (test_idx, train_idx) = order.split_at(test_size);
    let (train_x, train_y) = (
        records.select(Axis(0), train_idx),
        targets.select(Axis(0), train_idx),
    );
    let (test_x, test_y) = (
        records.select(Axis(0), test_idx),
        targets.select(Axis(0), test_idx),
    );

    let h = preset.hyperparameters;
    let fitted: FittedModel = MultiLogisticRegression::default()
        .alpha(h.alpha)
        .max_iterations(h.max_iterations)
        .gradient_tolerance(h.gradient_tolerance)
        .with_intercept(h.fit_intercept)
        .fit(&Dataset::new(train_x.clone(), train_y.clone()))
        .context("fit the logistic regression")?;

    let mut model_json = serde_json::to_string_pretty(&fitted).context("serialize the model")?;
    model_json.push('\n');

    let test_pred = fitted.predict(&test_x);
    let train_pred = fitted.predict(&train_x);
    let metadata = Metadata {
        version: preset.version.to_owned(),
        algorithm: "multinomial logistic regression (linfa-logistic MultiLogisticRegression, L-BFGS)".to_owned(),
        hyperparameters: h,
        class_labels: CLASS_LABELS.map(str::to_owned).to_vec(),
        feature_names: FEATURE_NAMES.map(str::to_owned).to_vec(),
        split: Split {
            method: "SplitMix64 Fisher-Yates shuffle of row indices; the first test_size rows are the test set".to_owned(),
            seed: SPLIT_SEED,
            test_fraction: TEST_FRACTION,
            train_size: train_idx.len(),
            test_size: test_idx.len(),
        },
        metrics: Metrics {
            test_accuracy: accuracy(&test_pred, &test_y),
            train_accuracy: accuracy(&train_pred, &train_y),
            per_class: per_class(&test_pred, &test_y),
        },
        data: DataInfo {
            dataset: "iris (linfa-datasets)".to_owned(),
            rows,
            sha256: sha256_hex(canonical_csv(&records, &targets).as_bytes()),
            train_sha256: sha256_hex(canonical_csv(&train_x, &train_y).as_bytes()),
        },
        model_file: MODEL_FILE.to_owned(),
        model_sha256: sha256_hex(model_json.as_bytes()),
    };
    // The service must be able to load what we write.
    Model::from_fitted(&fitted, metadata.clone())
        .map_err(anyhow::Error::msg)
        .context("check the fitted model")?;
    let mut metadata_json =
        serde_json::to_string_pretty(&metadata).context("serialize the metadata")?;
    metadata_json.push('\n');
    Ok(Trained {
        metadata,
        model_json,
        metadata_json,
    })
}

/// Writes both files into `dir`, each atomically (temporary file, then rename).
pub fn write(dir: &Path, trained: &Trained) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    for (name, contents) in [
        (MODEL_FILE, &trained.model_json),
        (METADATA_FILE, &trained.metadata_json),
    ] {
        let target = dir.join(name);
        let tmp = dir.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, contents).with_context(|| format!("write {}", tmp.display()))?;
        std::fs::rename(&tmp, &target)
            .with_context(|| format!("rename {} to {}", tmp.display(), target.display()))?;
    }
    Ok(())
}

/// `0..n` shuffled by Fisher–Yates driven by SplitMix64 seeded with `seed`: a fixed algorithm
/// written out here, so no library upgrade can change the split.
pub fn shuffled_indices(n: usize, seed: u64) -> Vec<usize> {
    let mut state = seed;
    let mut next = move || {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    };
    let mut idx: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        let j = (next() % (i as u64 + 1)) as usize;
        idx.swap(i, j);
    }
    idx
}

/// The rows as `f,f,f,f,class\n` with Rust's shortest round-trip float formatting.
pub fn canonical_csv(x: &Array2<f64>, y: &Array1<usize>) -> String {
    let mut out = String::new();
    for (row, class) in x.rows().into_iter().zip(y) {
        for v in row {
            let _ = write!(out, "{v},");
        }
        let _ = writeln!(out, "{class}");
    }
    out
}

fn accuracy(pred: &Array1<usize>, truth: &Array1<usize>) -> f64 {
    let right = pred.iter().zip(truth).filter(|(p, t)| p == t).count();
    right as f64 / truth.len() as f64
}

fn per_class(pred: &Array1<usize>, truth: &Array1<usize>) -> Vec<ClassMetrics> {
    (0..N_CLASSES)
        .map(|k| {
            let tp = pred
                .iter()
                .zip(truth)
                .filter(|&(&p, &t)| p == k && t == k)
                .count();
            let predicted = pred.iter().filter(|&&p| p == k).count();
            let support = truth.iter().filter(|&&t| t == k).count();
            let ratio = |num: usize, den: usize| {
                if den == 0 {
                    0.0
                } else {
                    num as f64 / den as f64
                }
            };
            ClassMetrics {
                label: CLASS_LABELS[k].to_owned(),
                precision: ratio(tp, predicted),
                recall: ratio(tp, support),
                support,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shuffle_is_a_permutation_fixed_by_the_seed() {
        let a = shuffled_indices(150, SPLIT_SEED);
        let mut sorted = a.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..150).collect::<Vec<_>>());
        assert_eq!(a, shuffled_indices(150, SPLIT_SEED));
        assert_ne!(a, shuffled_indices(150, SPLIT_SEED + 1));
        assert_ne!(a, (0..150).collect::<Vec<_>>());
    }

    #[test]
    fn unknown_version_names_the_presets() {
        let err = preset("v9").unwrap_err().to_string();
        assert!(err.contains("v1.0.0") && err.contains("v1.1.0"), "{err}");
    }

    #[test]
    fn per_class_metrics_count_right() {
        let pred = Array1::from(vec![0, 1, 1, 2]);
        let truth = Array1::from(vec![0, 1, 2, 2]);
        let m = per_class(&pred, &truth);
        assert_eq!(m[1].precision, 0.5);
        assert_eq!(m[1].recall, 1.0);
        assert_eq!(m[2].precision, 1.0);
        assert_eq!(m[2].recall, 0.5);
        assert_eq!(accuracy(&pred, &truth), 0.75);
    }
}

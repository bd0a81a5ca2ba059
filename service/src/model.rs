//! The model as the service uses it: loaded once, checked, then evaluated without allocating.
//!
//! Loading:
//! 1. resolve `MODEL_PATH` (a version folder or its `model.json`) to the model and metadata files;
//! 2. read `metadata.json`, then the model file, and compare the model's sha256 with the metadata's;
//! 3. check the expected version (`MODEL_VERSION`) against the metadata's;
//! 4. parse the fitted `linfa-logistic` model and extract its weights and intercepts, so that a
//!    prediction is twelve multiply-adds and a softmax instead of a matrix product;
//! 5. check that every row within the accepted range ([`FEATURE_LIMIT`]) gives finite logits.
//!
//! Predicting refuses a row with a feature outside `[-FEATURE_LIMIT, FEATURE_LIMIT]`
//! ([`OutOfRange`], which names the feature and the range); within it, step 5 guarantees finite
//! logits and the softmax subtracts the largest logit before `exp`, so every probability is a
//! finite number in `[0, 1]` and they sum to 1. No answer can carry a NaN or an infinity.

use std::{
    fmt,
    path::{Path, PathBuf},
};

use linfa_logistic::MultiFittedLogisticRegression;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The number of input features (sepal length, sepal width, petal length, petal width).
pub const N_FEATURES: usize = 4;
/// The number of classes (setosa, versicolor, virginica).
pub const N_CLASSES: usize = 3;
/// The largest magnitude a feature may have. Far beyond any flower (the features are in cm), and
/// chosen so that the linear part cannot overflow: with weights summing to less than about 1e8
/// per class (Iris models have single digits), `intercept + x · W` stays finite. [`Model::load`]
/// refuses a model for which that is not so. Every FP32 value is within it.
pub const FEATURE_LIMIT: f64 = 1e300;
/// The features' names, in input order.
pub const FEATURE_NAMES: [&str; N_FEATURES] =
    ["sepal length", "sepal width", "petal length", "petal width"];
/// The model file's name inside a version folder.
pub const MODEL_FILE: &str = "model.json";
/// The metadata file's name inside a version folder.
pub const METADATA_FILE: &str = "metadata.json";

/// The fitted model as serialized into `model.json`: `linfa-logistic`'s own serde form.
pub type FittedModel = MultiFittedLogisticRegression<f64, usize>;

/// `metadata.json`: everything about a model version except its parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Metadata {
    pub version: String,
    pub algorithm: String,
    pub hyperparameters: Hyperparameters,
    pub class_labels: Vec<String>,
    pub feature_names: Vec<String>,
    pub split: Split,
    pub metrics: Metrics,
    pub data: DataInfo,
    pub model_file: String,
    pub model_sha256: String,
}

/// The solver's settings; the two versions differ here.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Hyperparameters {
    /// L2 regularisation strength.
    pub alpha: f64,
    pub max_iterations: u64,
    pub gradient_tolerance: f64,
    pub fit_intercept: bool,
}

/// How the data was split into training and test rows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Split {
    pub method: String,
    pub seed: u64,
    pub test_fraction: f64,
    pub train_size: usize,
    pub test_size: usize,
}

/// Quality on the held-out test rows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Metrics {
    pub test_accuracy: f64,
    pub train_accuracy: f64,
    pub per_class: Vec<ClassMetrics>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassMetrics {
    pub label: String,
    pub precision: f64,
    pub recall: f64,
    pub support: usize,
}

/// Where the training data came from, and checksums that pin it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DataInfo {
    pub dataset: String,
    pub rows: usize,
    /// sha256 of the whole dataset in canonical CSV form (`f,f,f,f,class\n` per row, in order).
    pub sha256: String,
    /// sha256 of the training rows, in the same form and in training order.
    pub train_sha256: String,
}

/// Why a model could not be loaded. Each message names the file and says what to do.
#[derive(Debug)]
pub enum LoadError {
    Missing {
        path: PathBuf,
        what: &'static str,
    },
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
    Checksum {
        path: PathBuf,
        expected: String,
        actual: String,
    },
    VersionMismatch {
        expected: String,
        actual: String,
        path: PathBuf,
    },
    Shape {
        path: PathBuf,
        detail: String,
    },
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LoadError::Missing { path, what } => write!(
                f,
                "{what} not found at {}: set MODEL_PATH to a version folder such as models/v1.0.0 (train one with `cargo xtask train`)",
                path.display()
            ),
            LoadError::Read { path, source } => write!(f, "cannot read {}: {source}", path.display()),
            LoadError::Parse { path, source } => write!(f, "{} is not valid: {source}", path.display()),
            LoadError::Checksum { path, expected, actual } => write!(
                f,
                "checksum mismatch for {}: metadata says sha256 {expected}, the file has {actual}; the model file is corrupted or was changed after training (retrain with `cargo xtask train --force`)",
                path.display()
            ),
            LoadError::VersionMismatch { expected, actual, path } => write!(
                f,
                "version mismatch: MODEL_VERSION is {expected} but {} is version {actual}; point MODEL_PATH at models/{expected} or set MODEL_VERSION={actual}",
                path.display()
            ),
            LoadError::Shape { path, detail } => write!(f, "{} does not hold an Iris model: {detail}", path.display()),
        }
    }
}

impl std::error::Error for LoadError {}

/// Whether `value` lies in `[-limit, limit]`; NaN lies in no range.
pub fn within(value: f64, limit: f64) -> bool {
    value.abs() <= limit
}

/// A row the model refuses: a feature outside `[-FEATURE_LIMIT, FEATURE_LIMIT]`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OutOfRange {
    /// The feature's index (0 to 3).
    pub feature: usize,
    pub value: f64,
}

impl fmt::Display for OutOfRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "feature {} ({}) is {:e}, outside the accepted range [{:e}, {:e}]",
            self.feature, FEATURE_NAMES[self.feature], self.value, -FEATURE_LIMIT, FEATURE_LIMIT
        )
    }
}

impl std::error::Error for OutOfRange {}

/// One prediction: the class index and the probability of each class.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Prediction {
    pub class: usize,
    pub probabilities: [f64; N_CLASSES],
}

/// A loaded, verified model ready to predict.
#[derive(Debug, Clone)]
pub struct Model {
    metadata: Metadata,
    /// `weights[j][k]`: the weight of feature `j` for class `k`.
    weights: [[f64; N_CLASSES]; N_FEATURES],
    intercept: [f64; N_CLASSES],
}

impl Model {
    /// Loads and verifies the model at `path` (a version folder or its model file). With
    /// `expected_version`, refuses a model of any other version.
    pub fn load(path: &Path, expected_version: Option<&str>) -> Result<Model, LoadError> {
        let (model_path, metadata_path) = resolve(path)?;
        let metadata_bytes = read(&metadata_path, "model metadata")?;
        let metadata: Metadata =
            serde_json::from_slice(&metadata_bytes).map_err(|source| LoadError::Parse {
                path: metadata_path.clone(),
                source,
            })?;
        let model_bytes = read(&model_path, "model file")?;
        let actual = sha256_hex(&model_bytes);
        if actual != metadata.model_sha256 {
            return Err(LoadError::Checksum {
                path: model_path,
                expected: metadata.model_sha256.clone(),
                actual,
            });
        }
        if let Some(expected) = expected_version {
            if expected != metadata.version {
                return Err(LoadError::VersionMismatch {
                    expected: expected.to_owned(),
                    actual: metadata.version.clone(),
                    path: metadata_path,
                });
            }
        }
        let fitted: FittedModel =
            serde_json::from_slice(&model_bytes).map_err(|source| LoadError::Parse {
                path: model_path.clone(),
                source,
            })?;
        Model::from_fitted(&fitted, metadata).map_err(|detail| LoadError::Shape {
            path: model_path,
            detail,
        })
    }

    /// Extracts the parameters of a fitted model; fails unless it is a 4-feature, 3-class model
    /// whose classes are 0, 1, 2 in order and whose metadata names three labels.
    pub fn from_fitted(fitted: &FittedModel, metadata: Metadata) -> Result<Model, String> {
        let params = fitted.params();
        let intercept = fitted.intercept();
        if params.shape() != [N_FEATURES, N_CLASSES] || intercept.len() != N_CLASSES {
            return Err(format!(
                "expected {N_FEATURES}x{N_CLASSES} weights and {N_CLASSES} intercepts, found {:?} and {}",
                params.shape(),
                intercept.len()
            ));
        }
        if fitted.classes() != [0, 1, 2] {
            return Err(format!(
                "expected classes [0, 1, 2], found {:?}",
                fitted.classes()
            ));
        }
        if metadata.class_labels.len() != N_CLASSES {
            return Err(format!(
                "expected {N_CLASSES} class labels, found {}",
                metadata.class_labels.len()
            ));
        }
        let mut weights = [[0.0; N_CLASSES]; N_FEATURES];
        for (j, row) in weights.iter_mut().enumerate() {
            for (k, w) in row.iter_mut().enumerate() {
                *w = params[[j, k]];
            }
        }
        let intercept = [intercept[0], intercept[1], intercept[2]];
        if weights
            .iter()
            .flatten()
            .chain(&intercept)
            .any(|v| !v.is_finite())
        {
            return Err("the parameters contain a non-finite number".to_owned());
        }
        // The largest |logit| any row within the accepted range can give; half of f64::MAX
        // leaves room for the rounding of the five-term sum.
        let worst = (0..N_CLASSES)
            .map(|k| {
                let weights: f64 = weights.iter().map(|w| w[k].abs()).sum();
                intercept[k].abs() + FEATURE_LIMIT * weights
            })
            .fold(0.0, f64::max);
        if worst > f64::MAX / 2.0 {
            return Err(format!(
                "the weights are so large that features within the accepted range [{:e}, {FEATURE_LIMIT:e}] could overflow the logits",
                -FEATURE_LIMIT
            ));
        }
        Ok(Model {
            metadata,
            weights,
            intercept,
        })
    }

    pub fn version(&self) -> &str {
        &self.metadata.version
    }

    pub fn metadata(&self) -> &Metadata {
        &self.metadata
    }

    /// The label of class `class` (e.g. `setosa` for 0).
    pub fn label(&self, class: usize) -> &str {
        &self.metadata.class_labels[class]
    }

    /// Softmax over `intercept + x · W`, with the largest logit subtracted before `exp` so that
    /// nothing overflows. The class is the most probable one (the first on a tie). Refuses a
    /// row with a feature outside `[-FEATURE_LIMIT, FEATURE_LIMIT]` (NaN included).
    pub fn predict(&self, x: &[f64; N_FEATURES]) -> Result<Prediction, OutOfRange> {
        if let Some(feature) = x.iter().position(|&v| !within(v, FEATURE_LIMIT)) {
            return Err(OutOfRange {
                feature,
                value: x[feature],
            });
        }
        let mut z = self.intercept;
        for (xj, wj) in x.iter().zip(&self.weights) {
            for (zk, wjk) in z.iter_mut().zip(wj) {
                *zk += xj * wjk;
            }
        }
        // Finite by the check in `from_fitted`: |z| <= f64::MAX / 2, so `zk - max` is too.
        debug_assert!(z.iter().all(|v| v.is_finite()), "logits {z:?} for {x:?}");
        let max = z.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let mut sum = 0.0;
        for zk in &mut z {
            *zk = (*zk - max).exp();
            sum += *zk;
        }
        // `sum` is at least 1: the largest logit contributes exp(0).
        let mut class = 0;
        for k in 0..N_CLASSES {
            z[k] /= sum;
            if z[k] > z[class] {
                class = k;
            }
        }
        Ok(Prediction {
            class,
            probabilities: z,
        })
    }
}

/// The model and metadata files for `path`: a folder holds both; a file is the model and its
/// folder holds the metadata.
pub fn resolve(path: &Path) -> Result<(PathBuf, PathBuf), LoadError> {
    if path.is_dir() {
        Ok((path.join(MODEL_FILE), path.join(METADATA_FILE)))
    } else if path.is_file() {
        let dir = path.parent().unwrap_or(Path::new("."));
        Ok((path.to_path_buf(), dir.join(METADATA_FILE)))
    } else {
        Err(LoadError::Missing {
            path: path.to_path_buf(),
            what: "model (MODEL_PATH)",
        })
    }
}

fn read(path: &Path, what: &'static str) -> Result<Vec<u8>, LoadError> {
    std::fs::read(path).map_err(|source| {
        if source.kind() == std::io::ErrorKind::NotFound {
            LoadError::Missing {
                path: path.to_path_buf(),
                what,
            }
        } else {
            LoadError::Read {
                path: path.to_path_buf(),
                source,
            }
        }
    })
}

/// Lowercase hex sha256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    let mut out = String::with_capacity(64);
    for byte in digest {
        out.push_str(&format!("{byte:02x}"));
    }
    out
}

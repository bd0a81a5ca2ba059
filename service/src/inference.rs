//! The Open Inference Protocol's rules, whatever carries it: its REST form
//! ([`crate::routes::v2`]) and its gRPC form ([`crate::grpc::inference`]) both call these, so
//! they accept, refuse and answer alike.
//!
//! - [`check_model`]: the model name and version a request names (404 otherwise);
//! - [`SERVER_NAME`], [`SERVER_VERSION`], [`EXTENSIONS`], [`PLATFORM`], [`INPUTS`],
//!   [`OUTPUTS`]: the server and model metadata;
//! - [`one_input`], [`Datatype::parse`], [`batch_rows`], [`rows`]: how the request's one input
//!   tensor (FP32 or FP64, shape `[N, 4]`) becomes rows, each step refusing with a reason;
//! - [`requested_outputs`]: which of the outputs `class` (INT64, `[N]`) and `probabilities`
//!   (FP64, `[N, 3]`) the answer holds.

use crate::{
    error::ApiError,
    model::{within, FEATURE_NAMES, N_CLASSES, N_FEATURES},
    state::{check_batch, AppState, MODEL_NAME},
};

/// The name of the model's input tensor in its metadata; requests may name it as they like.
pub const INPUT_NAME: &str = "input-0";
/// The output tensor with the predicted class indices.
pub const OUTPUT_CLASS: &str = "class";
/// The output tensor with the class probabilities.
pub const OUTPUT_PROBABILITIES: &str = "probabilities";
/// The server's name in its metadata.
pub const SERVER_NAME: &str = "ml-service";
/// The server's version in its metadata: this crate's version.
pub const SERVER_VERSION: &str = env!("CARGO_PKG_VERSION");
/// The protocol extensions this server supports: none.
pub const EXTENSIONS: [&str; 0] = [];
/// The model's platform in its metadata.
pub const PLATFORM: &str = "linfa-logistic";

/// A tensor as model metadata describes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TensorSpec {
    pub name: &'static str,
    pub datatype: &'static str,
    /// `-1` marks the variable batch dimension.
    pub shape: &'static [i64],
}

/// The model's inputs in its metadata: FP32 rows of four features (FP64 is accepted too).
pub const INPUTS: [TensorSpec; 1] = [TensorSpec {
    name: INPUT_NAME,
    datatype: "FP32",
    shape: &[-1, N_FEATURES as i64],
}];

/// The model's outputs, in the order every answer lists them.
pub const OUTPUTS: [TensorSpec; 2] = [
    TensorSpec {
        name: OUTPUT_CLASS,
        datatype: "INT64",
        shape: &[-1],
    },
    TensorSpec {
        name: OUTPUT_PROBABILITIES,
        datatype: "FP64",
        shape: &[-1, N_CLASSES as i64],
    },
];

/// Refuses a model other than [`MODEL_NAME`], or a version (when one is named) other than the
/// served one, with a 404 that says what is served.
pub fn check_model(state: &AppState, name: &str, version: Option<&str>) -> Result<(), ApiError> {
    if name != MODEL_NAME {
        return Err(ApiError::not_found(format!(
            "unknown model {name:?}: this server serves {MODEL_NAME:?}"
        )));
    }
    if let Some(version) = version {
        if version != state.model.version() {
            return Err(ApiError::not_found(format!(
                "model {MODEL_NAME:?} has no version {version:?}: this server serves {:?}",
                state.model.version()
            )));
        }
    }
    Ok(())
}

/// The request's single input tensor; any other number of inputs is a 400.
pub fn one_input<T>(inputs: &[T]) -> Result<&T, ApiError> {
    match inputs {
        [input] => Ok(input),
        _ => Err(ApiError::bad_request(format!(
            "expected exactly one input tensor ({INPUT_NAME:?}, shape [N, {N_FEATURES}]), got {}",
            inputs.len()
        ))),
    }
}

/// The datatypes an input may have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Datatype {
    Fp32,
    Fp64,
}

impl Datatype {
    /// The datatype named `datatype` of the input `input`; any other is a 400.
    pub fn parse(input: &str, datatype: &str) -> Result<Datatype, ApiError> {
        match datatype {
            "FP32" => Ok(Datatype::Fp32),
            "FP64" => Ok(Datatype::Fp64),
            other => Err(ApiError::bad_request(format!(
                "input {input:?} has datatype {other:?}; expected \"FP32\" or \"FP64\""
            ))),
        }
    }

    /// The protocol's name for it.
    pub fn name(self) -> &'static str {
        match self {
            Datatype::Fp32 => "FP32",
            Datatype::Fp64 => "FP64",
        }
    }

    /// The size of one value in bytes.
    pub fn size(self) -> usize {
        match self {
            Datatype::Fp32 => 4,
            Datatype::Fp64 => 8,
        }
    }
}

/// The number of rows `N` of the input `input` of shape `shape`: a 400 unless the shape is
/// `[N, 4]`, then the batch limits of [`check_batch`].
pub fn batch_rows(input: &str, shape: &[i64]) -> Result<usize, ApiError> {
    let n = match shape {
        [n, f] if *n >= 0 && *f == N_FEATURES as i64 => *n as usize,
        other => {
            return Err(ApiError::bad_request(format!(
                "input {input:?} has shape {other:?}; expected [N, {N_FEATURES}]"
            )))
        }
    };
    check_batch(n)?;
    Ok(n)
}

/// The `n` rows of the input `input`, whose values come in row-major order: a 400 unless there
/// are exactly `n × 4`. FP32 values must lie within FP32's range (a 422 naming the row and the
/// feature otherwise) and are rounded to FP32, what a client holding FP32 data meant; the model
/// checks the range of FP64 values when predicting.
pub fn rows(
    input: &str,
    datatype: Datatype,
    n: usize,
    values: impl ExactSizeIterator<Item = f64>,
) -> Result<Vec<[f64; N_FEATURES]>, ApiError> {
    let expected = n * N_FEATURES;
    if values.len() != expected {
        return Err(ApiError::bad_request(format!(
            "input {input:?} has {} values but shape [{n}, {N_FEATURES}] needs {expected}",
            values.len()
        )));
    }
    let mut rows = Vec::with_capacity(n);
    let mut row = [0.0; N_FEATURES];
    for (k, v) in values.enumerate() {
        row[k % N_FEATURES] = v;
        if k % N_FEATURES == N_FEATURES - 1 {
            rows.push(row);
        }
    }
    if datatype == Datatype::Fp32 {
        let limit = f64::from(f32::MAX);
        for (i, row) in rows.iter_mut().enumerate() {
            for (j, v) in row.iter_mut().enumerate() {
                if !within(*v, limit) {
                    return Err(ApiError::unprocessable(format!(
                        "row {i}: feature {j} ({}) is {v:e}, outside the FP32 range [{:e}, {:e}]",
                        FEATURE_NAMES[j],
                        -f32::MAX,
                        f32::MAX
                    )));
                }
                *v = f64::from(*v as f32);
            }
        }
    }
    Ok(rows)
}

/// Which outputs to send, as `(class, probabilities)`: both unless the request names some;
/// an unknown name is a 400.
pub fn requested_outputs<'a>(
    names: impl IntoIterator<Item = &'a str>,
) -> Result<(bool, bool), ApiError> {
    let (mut class, mut probabilities, mut any) = (false, false, false);
    for name in names {
        any = true;
        match name {
            OUTPUT_CLASS => class = true,
            OUTPUT_PROBABILITIES => probabilities = true,
            other => {
                return Err(ApiError::bad_request(format!(
                    "unknown output {other:?}: this model has {OUTPUT_CLASS:?} and {OUTPUT_PROBABILITIES:?}"
                )))
            }
        }
    }
    Ok(if any {
        (class, probabilities)
    } else {
        (true, true)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_must_be_n_by_4_within_the_batch_limits() {
        assert_eq!(batch_rows("x", &[3, 4]).unwrap(), 3);
        for (shape, status, needle) in [
            (&[4][..], 400, "expected [N, 4]"),
            (&[1, 3], 400, "expected [N, 4]"),
            (&[-1, 4], 400, "expected [N, 4]"),
            (&[1, 4, 1], 400, "expected [N, 4]"),
            (&[0, 4], 422, "empty"),
            (&[1025, 4], 413, "at most 1024"),
        ] {
            let err = batch_rows("x", shape).unwrap_err();
            assert_eq!(err.status.as_u16(), status, "{shape:?}");
            assert!(err.message.contains(needle), "{}", err.message);
        }
    }

    #[test]
    fn values_become_rows_and_fp32_is_range_checked() {
        let rows = rows("x", Datatype::Fp64, 2, (1..=8u8).map(f64::from)).unwrap();
        assert_eq!(rows, [[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 8.0]]);
        let err = super::rows("x", Datatype::Fp64, 2, (1..=7u8).map(f64::from)).unwrap_err();
        assert_eq!(err.status.as_u16(), 400);
        assert!(err.message.contains("has 7 values"), "{}", err.message);
        let err = super::rows(
            "x",
            Datatype::Fp32,
            1,
            [1.0, f64::NAN, 3.0, 4.0].into_iter(),
        )
        .unwrap_err();
        assert_eq!(err.status.as_u16(), 422);
        assert!(
            err.message
                .contains("row 0: feature 1 (sepal width) is NaN"),
            "{}",
            err.message
        );
    }

    #[test]
    fn outputs_can_be_chosen() {
        assert_eq!(requested_outputs([]).unwrap(), (true, true));
        assert_eq!(requested_outputs(["class"]).unwrap(), (true, false));
        assert_eq!(requested_outputs(["probabilities"]).unwrap(), (false, true));
        assert!(requested_outputs(["logits"]).is_err());
    }

    #[test]
    fn datatypes_are_fp32_or_fp64() {
        assert_eq!(Datatype::parse("x", "FP32").unwrap().size(), 4);
        assert_eq!(Datatype::parse("x", "FP64").unwrap().name(), "FP64");
        let err = Datatype::parse("x", "INT64").unwrap_err();
        assert!(
            err.message.contains("datatype \"INT64\""),
            "{}",
            err.message
        );
    }
}

//! The Open Inference Protocol (KServe V2) over REST: health, server and model metadata,
//! and inference, with the protocol's JSON shapes so standard clients work unmodified.
//!
//! The model `iris` takes one input tensor (any name; `input-0` in the metadata) of shape
//! `[N, 4]`, FP32 or FP64, its data flat in row-major order or as `N` rows of 4, and answers two
//! outputs: `class` (INT64, `[N]`) and `probabilities` (FP64, `[N, 3]`).
//!
//! Rules beyond the JSON shapes, each refused with a reason:
//! - a body without a `Content-Type` is read as JSON (`tritonclient.http` sends none);
//! - FP32 values must lie within FP32's range (±3.4028235e38) and FP64 values within
//!   `[-FEATURE_LIMIT, FEATURE_LIMIT]`, else 422 naming the row and the feature;
//! - the data must hold exactly `N × 4` values, else 400. This is the one rule of the request
//!   that JSON Schema cannot state, so the document allows what this refuses.
//!
//! The rows and predictions of a mirrored inference request are noted for the shadow journal
//! ([`crate::shadow`]).
//!
//! The rules shared with the gRPC form of the protocol (the model and version, the metadata,
//! the tensor's datatype, shape, value count and range, the outputs) are in
//! [`crate::inference`]; only reading JSON data is this module's own.

use axum::{
    extract::State,
    response::{IntoResponse, Response},
    routing::{get, post},
    Json, Router,
};
use serde_json::Value;
use utoipa::OpenApi;

use super::oip::{
    HealthStatus, InferInput, InferOutput, InferRequest, InferResponse, ModelMetadata, ModelReady,
    OutputData, RequestedOutput, ServerMetadata, TensorMetadata, OUTPUT_CLASS,
    OUTPUT_PROBABILITIES,
};
use crate::{
    error::{ApiError, ErrorBody},
    extract::{PathParams, ProtocolJson},
    inference::{
        self, batch_rows, check_model, one_input, requested_outputs, Datatype, TensorSpec,
    },
    model::{N_CLASSES, N_FEATURES},
    shadow::{Answered, Shadow},
    state::{AppState, MODEL_NAME},
};

/// This family's routes.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v2", get(server_metadata))
        .route("/v2/health/live", get(live))
        .route("/v2/health/ready", get(ready))
        .route("/v2/models/{name}", get(model_metadata))
        .route("/v2/models/{name}/ready", get(model_ready))
        .route("/v2/models/{name}/infer", post(infer))
        .route(
            "/v2/models/{name}/versions/{version}",
            get(model_version_metadata),
        )
        .route(
            "/v2/models/{name}/versions/{version}/ready",
            get(model_version_ready),
        )
        .route(
            "/v2/models/{name}/versions/{version}/infer",
            post(infer_version),
        )
}

/// This family's part of the OpenAPI document.
#[derive(OpenApi)]
#[openapi(
    paths(
        live,
        ready,
        server_metadata,
        model_metadata,
        model_version_metadata,
        model_ready,
        model_version_ready,
        infer,
        infer_version,
    ),
    components(schemas(
        HealthStatus,
        ServerMetadata,
        ModelMetadata,
        TensorMetadata,
        ModelReady,
        InferRequest,
        InferInput,
        RequestedOutput,
        InferResponse,
        InferOutput,
    ))
)]
pub struct Doc;

/// Server liveness.
#[utoipa::path(get, path = "/v2/health/live", tag = "inference protocol",
    responses((status = 200, description = "Live", body = HealthStatus)))]
pub async fn live() -> Json<HealthStatus> {
    Json(HealthStatus {
        live: Some(true),
        ready: None,
    })
}

/// Server readiness: the model is loaded before the server listens, so a server that answers
/// is ready.
#[utoipa::path(get, path = "/v2/health/ready", tag = "inference protocol",
    responses((status = 200, description = "Ready", body = HealthStatus)))]
pub async fn ready() -> Json<HealthStatus> {
    Json(HealthStatus {
        live: None,
        ready: Some(true),
    })
}

/// Server metadata.
#[utoipa::path(get, path = "/v2", tag = "inference protocol",
    responses((status = 200, description = "Server metadata", body = ServerMetadata)))]
pub async fn server_metadata() -> Json<ServerMetadata> {
    Json(ServerMetadata {
        name: inference::SERVER_NAME.to_owned(),
        version: inference::SERVER_VERSION.to_owned(),
        extensions: inference::EXTENSIONS.map(str::to_owned).to_vec(),
    })
}

/// Model metadata.
#[utoipa::path(get, path = "/v2/models/{name}", tag = "inference protocol",
    params(("name" = String, Path, description = "The model name: iris")),
    responses((status = 200, description = "Model metadata", body = ModelMetadata),
              (status = 400, description = "A path parameter is not valid UTF-8", body = ErrorBody),
              (status = 404, description = "Unknown model", body = ErrorBody)))]
pub async fn model_metadata(
    State(state): State<AppState>,
    PathParams(name): PathParams<String>,
) -> Result<Json<ModelMetadata>, ApiError> {
    check_model(&state, &name, None)?;
    Ok(Json(metadata(&state)))
}

/// Model metadata for a version.
#[utoipa::path(get, path = "/v2/models/{name}/versions/{version}", tag = "inference protocol",
    params(("name" = String, Path, description = "The model name: iris"), ("version" = String, Path, description = "The served version, e.g. v1.0.0")),
    responses((status = 200, description = "Model metadata", body = ModelMetadata),
              (status = 400, description = "A path parameter is not valid UTF-8", body = ErrorBody),
              (status = 404, description = "Unknown model or version", body = ErrorBody)))]
pub async fn model_version_metadata(
    State(state): State<AppState>,
    PathParams((name, version)): PathParams<(String, String)>,
) -> Result<Json<ModelMetadata>, ApiError> {
    check_model(&state, &name, Some(&version))?;
    Ok(Json(metadata(&state)))
}

/// Model readiness.
#[utoipa::path(get, path = "/v2/models/{name}/ready", tag = "inference protocol",
    params(("name" = String, Path, description = "The model name: iris")),
    responses((status = 200, description = "Ready", body = ModelReady),
              (status = 400, description = "A path parameter is not valid UTF-8", body = ErrorBody),
              (status = 404, description = "Unknown model", body = ErrorBody)))]
pub async fn model_ready(
    State(state): State<AppState>,
    PathParams(name): PathParams<String>,
) -> Result<Json<ModelReady>, ApiError> {
    check_model(&state, &name, None)?;
    Ok(Json(ModelReady { name, ready: true }))
}

/// Model readiness for a version.
#[utoipa::path(get, path = "/v2/models/{name}/versions/{version}/ready", tag = "inference protocol",
    params(("name" = String, Path, description = "The model name: iris"), ("version" = String, Path, description = "The served version")),
    responses((status = 200, description = "Ready", body = ModelReady),
              (status = 400, description = "A path parameter is not valid UTF-8", body = ErrorBody),
              (status = 404, description = "Unknown model or version", body = ErrorBody)))]
pub async fn model_version_ready(
    State(state): State<AppState>,
    PathParams((name, version)): PathParams<(String, String)>,
) -> Result<Json<ModelReady>, ApiError> {
    check_model(&state, &name, Some(&version))?;
    Ok(Json(ModelReady { name, ready: true }))
}

/// The inference routes' 400: what the protocol itself refuses.
const INFER_400: &str = "Malformed JSON, or a tensor the protocol refuses: not one input, another datatype or shape, data not N × 4 values, an unknown output";
/// The inference routes' 422: JSON of the wrong shape, an empty batch, a value out of range.
const INFER_422: &str = "Wrong JSON shape, an empty batch, or a value outside its range (FP32: ±3.4028235e38; FP64: ±1e300)";

/// Inference.
#[utoipa::path(post, path = "/v2/models/{name}/infer", tag = "inference protocol",
    params(("name" = String, Path, description = "The model name: iris")),
    request_body = InferRequest,
    responses((status = 200, description = "Inference response", body = InferResponse),
              (status = 400, description = INFER_400, body = ErrorBody),
              (status = 404, description = "Unknown model", body = ErrorBody),
              (status = 413, description = "Body over 1 MiB or batch over 1024 rows", body = ErrorBody),
              (status = 415, description = "Content-Type present and not JSON (a body without one is read as JSON)", body = ErrorBody),
              (status = 422, description = INFER_422, body = ErrorBody)))]
pub async fn infer(
    State(state): State<AppState>,
    shadow: Shadow,
    PathParams(name): PathParams<String>,
    ProtocolJson(request): ProtocolJson<InferRequest>,
) -> Result<Response, ApiError> {
    check_model(&state, &name, None)?;
    run_inference(&state, shadow, request)
}

/// Inference on a version.
#[utoipa::path(post, path = "/v2/models/{name}/versions/{version}/infer", tag = "inference protocol",
    params(("name" = String, Path, description = "The model name: iris"), ("version" = String, Path, description = "The served version")),
    request_body = InferRequest,
    responses((status = 200, description = "Inference response", body = InferResponse),
              (status = 400, description = INFER_400, body = ErrorBody),
              (status = 404, description = "Unknown model or version", body = ErrorBody),
              (status = 413, description = "Body over 1 MiB or batch over 1024 rows", body = ErrorBody),
              (status = 415, description = "Content-Type present and not JSON (a body without one is read as JSON)", body = ErrorBody),
              (status = 422, description = INFER_422, body = ErrorBody)))]
pub async fn infer_version(
    State(state): State<AppState>,
    shadow: Shadow,
    PathParams((name, version)): PathParams<(String, String)>,
    ProtocolJson(request): ProtocolJson<InferRequest>,
) -> Result<Response, ApiError> {
    check_model(&state, &name, Some(&version))?;
    run_inference(&state, shadow, request)
}

fn metadata(state: &AppState) -> ModelMetadata {
    let tensor = |spec: &TensorSpec| TensorMetadata {
        name: spec.name.to_owned(),
        datatype: spec.datatype.to_owned(),
        shape: spec.shape.to_vec(),
    };
    ModelMetadata {
        name: MODEL_NAME.to_owned(),
        versions: vec![state.model.version().to_owned()],
        platform: inference::PLATFORM.to_owned(),
        inputs: inference::INPUTS.iter().map(tensor).collect(),
        outputs: inference::OUTPUTS.iter().map(tensor).collect(),
    }
}

/// Answers `request` with the outputs it asks for, and notes the rows and predictions for the
/// shadow journal when the request is a mirrored one.
fn run_inference(
    state: &AppState,
    shadow: Shadow,
    request: InferRequest,
) -> Result<Response, ApiError> {
    let rows = input_rows(&request.inputs)?;
    let (want_class, want_probabilities) = requested_outputs(
        request
            .outputs
            .iter()
            .flatten()
            .map(|output| output.name.as_str()),
    )?;
    let predictions = state.predict_all(&rows)?;
    let n = rows.len();
    let mut outputs = Vec::with_capacity(2);
    if want_class {
        outputs.push(InferOutput {
            name: OUTPUT_CLASS,
            shape: vec![n],
            datatype: "INT64",
            data: OutputData::Int(predictions.iter().map(|p| p.class as i64).collect()),
        });
    }
    if want_probabilities {
        outputs.push(InferOutput {
            name: OUTPUT_PROBABILITIES,
            shape: vec![n, N_CLASSES],
            datatype: "FP64",
            data: OutputData::Float(predictions.iter().flat_map(|p| p.probabilities).collect()),
        });
    }
    let mut response = Json(InferResponse {
        model_name: MODEL_NAME.to_owned(),
        model_version: state.model.version().to_owned(),
        id: request.id,
        outputs,
    })
    .into_response();
    shadow.note(&mut response, || Answered {
        inputs: rows,
        outputs: predictions,
    });
    Ok(response)
}

/// The rows of the single `[N, 4]` FP32/FP64 input tensor, by the rules of
/// [`crate::inference`]; the data may be flat or nested.
pub fn input_rows(inputs: &[InferInput]) -> Result<Vec<[f64; N_FEATURES]>, ApiError> {
    let input = one_input(inputs)?;
    let datatype = Datatype::parse(&input.name, &input.datatype)?;
    let n = batch_rows(&input.name, &input.shape)?;
    let flat = flatten(&input.name, &input.data, n * N_FEATURES)?;
    inference::rows(&input.name, datatype, n, flat.into_iter())
}

/// The numbers of `data` in row-major order: either all numbers (flat) or all rows of 4
/// numbers (nested). Stops past `limit` values, so a huge body cannot grow without end.
fn flatten(input: &str, data: &Value, limit: usize) -> Result<Vec<f64>, ApiError> {
    let Value::Array(items) = data else {
        return Err(ApiError::bad_request(format!(
            "input {input:?}: data must be an array of numbers or of rows of {N_FEATURES} numbers, found {data}"
        )));
    };
    let mut out = Vec::with_capacity(limit.min(items.len() * N_FEATURES));
    let nested = matches!(items.first(), Some(Value::Array(_)));
    for item in items {
        match (item, nested) {
            (Value::Number(_), false) => push_number(input, item, &mut out, limit)?,
            (Value::Array(row), true) if row.len() == N_FEATURES => {
                for value in row {
                    push_number(input, value, &mut out, limit)?;
                }
            }
            _ => {
                return Err(ApiError::bad_request(format!(
                    "input {input:?}: data must be all numbers (flat) or all rows of {N_FEATURES} numbers (nested), found {item}"
                )))
            }
        }
    }
    Ok(out)
}

fn push_number(
    input: &str,
    value: &Value,
    out: &mut Vec<f64>,
    limit: usize,
) -> Result<(), ApiError> {
    if out.len() >= limit {
        return Err(ApiError::bad_request(format!(
            "input {input:?}: data has more than the {limit} values its shape allows"
        )));
    }
    match value.as_f64() {
        Some(v) => {
            out.push(v);
            Ok(())
        }
        None => Err(ApiError::bad_request(format!(
            "input {input:?}: data must hold only numbers, found {value}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::{super::oip::INPUT_NAME, *};

    fn input(datatype: &str, shape: Vec<i64>, data: Value) -> InferInput {
        InferInput {
            name: INPUT_NAME.to_owned(),
            shape,
            datatype: datatype.to_owned(),
            parameters: None,
            data,
        }
    }

    #[test]
    fn flat_and_nested_data_give_the_same_rows() {
        let flat =
            input_rows(&[input("FP64", vec![2, 4], json!([1, 2, 3, 4, 5, 6, 7, 8]))]).unwrap();
        let nested = input_rows(&[input(
            "FP64",
            vec![2, 4],
            json!([[1, 2, 3, 4], [5, 6, 7, 8]]),
        )])
        .unwrap();
        assert_eq!(flat, nested);
        assert_eq!(flat[1], [5.0, 6.0, 7.0, 8.0]);
    }

    #[test]
    fn bad_tensors_are_refused_with_a_reason() {
        let cases = [
            (input("INT64", vec![1, 4], json!([1, 2, 3, 4])), "datatype"),
            (input("FP32", vec![1, 3], json!([1, 2, 3])), "shape"),
            (input("FP32", vec![2, 4], json!([1, 2, 3, 4])), "needs 8"),
            (
                input("FP32", vec![1, 4], json!([1, 2, 3, 4, 5])),
                "more than",
            ),
            (
                input("FP32", vec![1, 4], json!([1, 2, "x", 4])),
                "all numbers",
            ),
            (
                input("FP32", vec![1, 4], json!([[1, 2, "x", 4]])),
                "only numbers",
            ),
            (
                input("FP32", vec![2, 4], json!([[1, 2, 3, 4], [5, 6, 7]])),
                "rows of 4",
            ),
            (
                input("FP32", vec![2, 4], json!([1, 2, 3, 4, [5, 6, 7, 8]])),
                "all numbers",
            ),
            (
                input("FP32", vec![1, 4], json!([[[1, 2, 3, 4]]])),
                "rows of 4",
            ),
            (input("FP32", vec![1, 4], json!(5)), "must be an array"),
        ];
        for (case, needle) in cases {
            let err = input_rows(&[case]).unwrap_err();
            assert_eq!(err.status.as_u16(), 400, "{}", err.message);
            assert!(
                err.message.contains(needle),
                "{:?} should mention {needle:?}",
                err.message
            );
        }
        assert!(input_rows(&[]).unwrap_err().message.contains("exactly one"));
    }

    #[test]
    fn shapes_are_integers_written_either_way() {
        let shape = |json: &str| {
            serde_json::from_str::<InferInput>(&format!(
                r#"{{"name": "x", "datatype": "FP32", "data": [], "shape": {json}}}"#
            ))
            .map(|input| input.shape)
        };
        assert_eq!(shape("[2, 4]").unwrap(), [2, 4]);
        assert_eq!(shape("[2.0, 4e0]").unwrap(), [2, 4]);
        for bad in [
            "[2.5, 4]",
            "[1e19, 4]",
            "[18446744073709551615, 4]",
            r#"["2", 4]"#,
        ] {
            let err = shape(bad).unwrap_err().to_string();
            assert!(
                err.contains("integer") || err.contains("invalid type"),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn fp32_values_must_fit_fp32_and_are_rounded_to_it() {
        let max = f64::from(f32::MAX);
        let rows =
            input_rows(&[input("FP32", vec![1, 4], json!([max, -max, 0.1, 1e-45]))]).unwrap();
        assert_eq!(rows[0], [max, -max, f64::from(0.1f32), f64::from(1e-45f32)]);
        // The next double above FP32's largest value would round to it: still refused.
        let above = f64::from_bits(max.to_bits() + 1);
        for value in [above, -1e39, 1e300] {
            let err =
                input_rows(&[input("FP32", vec![1, 4], json!([1, 2, value, 4]))]).unwrap_err();
            assert_eq!(err.status.as_u16(), 422, "{value}: {}", err.message);
            assert!(
                err.message.contains("feature 2 (petal length)")
                    && err.message.contains("FP32 range"),
                "{}",
                err.message
            );
        }
        // FP64 keeps the value; the model's range is checked when predicting.
        let rows = input_rows(&[input("FP64", vec![1, 4], json!([1e300, 2, 3, 4]))]).unwrap();
        assert_eq!(rows[0][0], 1e300);
    }
}

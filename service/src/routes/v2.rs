//! The Open Inference Protocol (KServe V2) over REST: health, server and model metadata,
//! and inference, with the protocol's JSON shapes so standard clients work unmodified.
//!
//! The model `iris` takes one input tensor `input-0` of shape `[N, 4]` (FP32 or FP64, data
//! flat in row-major order or nested) and answers two outputs: `class` (INT64, `[N]`) and
//! `probabilities` (FP64, `[N, 3]`).

use axum::{
    extract::{Path, State},
    response::{IntoResponse, Response},
    routing::{get, post},
    Json, Router,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{OpenApi, ToSchema};

use crate::{
    error::{ApiError, ErrorBody},
    extract::JsonBody,
    model::{N_CLASSES, N_FEATURES},
    state::{check_batch, AppState, MODEL_NAME},
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
        OutputData,
    ))
)]
pub struct Doc;

/// The name of the model's input tensor.
pub const INPUT_NAME: &str = "input-0";
/// The output tensor with the predicted class indices.
pub const OUTPUT_CLASS: &str = "class";
/// The output tensor with the class probabilities.
pub const OUTPUT_PROBABILITIES: &str = "probabilities";

/// `GET /v2/health/live` and `/v2/health/ready`.
#[derive(Debug, Serialize, ToSchema)]
pub struct HealthStatus {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub live: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ready: Option<bool>,
}

/// `GET /v2`: the server metadata response.
#[derive(Debug, Serialize, ToSchema)]
pub struct ServerMetadata {
    pub name: String,
    pub version: String,
    pub extensions: Vec<String>,
}

/// A tensor's description in model metadata.
#[derive(Debug, Serialize, ToSchema)]
pub struct TensorMetadata {
    pub name: String,
    pub datatype: String,
    /// `-1` marks the variable batch dimension.
    pub shape: Vec<i64>,
}

/// `GET /v2/models/{name}`: the model metadata response.
#[derive(Debug, Serialize, ToSchema)]
pub struct ModelMetadata {
    pub name: String,
    pub versions: Vec<String>,
    pub platform: String,
    pub inputs: Vec<TensorMetadata>,
    pub outputs: Vec<TensorMetadata>,
}

/// `GET /v2/models/{name}/ready`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ModelReady {
    pub name: String,
    pub ready: bool,
}

/// An input tensor of an inference request.
#[derive(Debug, Deserialize, ToSchema)]
pub struct InferInput {
    pub name: String,
    pub shape: Vec<i64>,
    /// `FP32` or `FP64`.
    pub datatype: String,
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub parameters: Option<Value>,
    /// The values in row-major order, flat or nested.
    #[schema(value_type = Vec<f64>)]
    pub data: Value,
}

/// An output the client asks for; all outputs when the request names none.
#[derive(Debug, Deserialize, ToSchema)]
pub struct RequestedOutput {
    pub name: String,
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub parameters: Option<Value>,
}

/// `POST /v2/models/{name}/infer` body: the inference request.
#[derive(Debug, Deserialize, ToSchema)]
#[schema(example = json!({"inputs": [{"name": "input-0", "shape": [1, 4], "datatype": "FP32", "data": [5.1, 3.5, 1.4, 0.2]}]}))]
pub struct InferRequest {
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub parameters: Option<Value>,
    pub inputs: Vec<InferInput>,
    #[serde(default)]
    pub outputs: Option<Vec<RequestedOutput>>,
}

/// The data of an output tensor.
#[derive(Debug, Serialize, ToSchema)]
#[serde(untagged)]
pub enum OutputData {
    Int(Vec<i64>),
    Float(Vec<f64>),
}

/// An output tensor of an inference response.
#[derive(Debug, Serialize, ToSchema)]
pub struct InferOutput {
    pub name: &'static str,
    pub shape: Vec<usize>,
    pub datatype: &'static str,
    pub data: OutputData,
}

/// The inference response.
#[derive(Debug, Serialize, ToSchema)]
pub struct InferResponse {
    pub model_name: String,
    pub model_version: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    pub outputs: Vec<InferOutput>,
}

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
        name: "ml-service".to_owned(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        extensions: vec![],
    })
}

/// Model metadata.
#[utoipa::path(get, path = "/v2/models/{name}", tag = "inference protocol",
    params(("name" = String, Path, description = "The model name: iris")),
    responses((status = 200, description = "Model metadata", body = ModelMetadata),
              (status = 404, description = "Unknown model", body = ErrorBody)))]
pub async fn model_metadata(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<ModelMetadata>, ApiError> {
    check_model(&state, &name, None)?;
    Ok(Json(metadata(&state)))
}

/// Model metadata for a version.
#[utoipa::path(get, path = "/v2/models/{name}/versions/{version}", tag = "inference protocol",
    params(("name" = String, Path, description = "The model name: iris"), ("version" = String, Path, description = "The served version, e.g. v1.0.0")),
    responses((status = 200, description = "Model metadata", body = ModelMetadata),
              (status = 404, description = "Unknown model or version", body = ErrorBody)))]
pub async fn model_version_metadata(
    State(state): State<AppState>,
    Path((name, version)): Path<(String, String)>,
) -> Result<Json<ModelMetadata>, ApiError> {
    check_model(&state, &name, Some(&version))?;
    Ok(Json(metadata(&state)))
}

/// Model readiness.
#[utoipa::path(get, path = "/v2/models/{name}/ready", tag = "inference protocol",
    params(("name" = String, Path, description = "The model name: iris")),
    responses((status = 200, description = "Ready", body = ModelReady),
              (status = 404, description = "Unknown model", body = ErrorBody)))]
pub async fn model_ready(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<ModelReady>, ApiError> {
    check_model(&state, &name, None)?;
    Ok(Json(ModelReady { name, ready: true }))
}

/// Model readiness for a version.
#[utoipa::path(get, path = "/v2/models/{name}/versions/{version}/ready", tag = "inference protocol",
    params(("name" = String, Path, description = "The model name: iris"), ("version" = String, Path, description = "The served version")),
    responses((status = 200, description = "Ready", body = ModelReady),
              (status = 404, description = "Unknown model or version", body = ErrorBody)))]
pub async fn model_version_ready(
    State(state): State<AppState>,
    Path((name, version)): Path<(String, String)>,
) -> Result<Json<ModelReady>, ApiError> {
    check_model(&state, &name, Some(&version))?;
    Ok(Json(ModelReady { name, ready: true }))
}

/// Inference.
#[utoipa::path(post, path = "/v2/models/{name}/infer", tag = "inference protocol",
    params(("name" = String, Path, description = "The model name: iris")),
    request_body = InferRequest,
    responses((status = 200, description = "Inference response", body = InferResponse),
              (status = 400, description = "Malformed request or tensor", body = ErrorBody),
              (status = 404, description = "Unknown model", body = ErrorBody),
              (status = 413, description = "Body or batch too large", body = ErrorBody),
              (status = 422, description = "Wrong JSON shape", body = ErrorBody)))]
pub async fn infer(
    State(state): State<AppState>,
    Path(name): Path<String>,
    JsonBody(request): JsonBody<InferRequest>,
) -> Result<Response, ApiError> {
    check_model(&state, &name, None)?;
    run_inference(&state, request)
}

/// Inference on a version.
#[utoipa::path(post, path = "/v2/models/{name}/versions/{version}/infer", tag = "inference protocol",
    params(("name" = String, Path, description = "The model name: iris"), ("version" = String, Path, description = "The served version")),
    request_body = InferRequest,
    responses((status = 200, description = "Inference response", body = InferResponse),
              (status = 400, description = "Malformed request or tensor", body = ErrorBody),
              (status = 404, description = "Unknown model or version", body = ErrorBody)))]
pub async fn infer_version(
    State(state): State<AppState>,
    Path((name, version)): Path<(String, String)>,
    JsonBody(request): JsonBody<InferRequest>,
) -> Result<Response, ApiError> {
    check_model(&state, &name, Some(&version))?;
    run_inference(&state, request)
}

fn check_model(state: &AppState, name: &str, version: Option<&str>) -> Result<(), ApiError> {
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

fn metadata(state: &AppState) -> ModelMetadata {
    let tensor = |name: &str, datatype: &str, shape: Vec<i64>| TensorMetadata {
        name: name.to_owned(),
        datatype: datatype.to_owned(),
        shape,
    };
    ModelMetadata {
        name: MODEL_NAME.to_owned(),
        versions: vec![state.model.version().to_owned()],
        platform: "linfa-logistic".to_owned(),
        inputs: vec![tensor(INPUT_NAME, "FP32", vec![-1, N_FEATURES as i64])],
        outputs: vec![
            tensor(OUTPUT_CLASS, "INT64", vec![-1]),
            tensor(OUTPUT_PROBABILITIES, "FP64", vec![-1, N_CLASSES as i64]),
        ],
    }
}

fn run_inference(state: &AppState, request: InferRequest) -> Result<Response, ApiError> {
    let rows = input_rows(&request.inputs)?;
    let (want_class, want_probabilities) = requested_outputs(request.outputs.as_deref())?;
    let mut classes = Vec::with_capacity(rows.len());
    let mut probabilities = Vec::with_capacity(rows.len() * N_CLASSES);
    for row in &rows {
        let p = state.predict(row);
        classes.push(p.class as i64);
        probabilities.extend_from_slice(&p.probabilities);
    }
    let n = rows.len();
    let mut outputs = Vec::with_capacity(2);
    if want_class {
        outputs.push(InferOutput {
            name: OUTPUT_CLASS,
            shape: vec![n],
            datatype: "INT64",
            data: OutputData::Int(classes),
        });
    }
    if want_probabilities {
        outputs.push(InferOutput {
            name: OUTPUT_PROBABILITIES,
            shape: vec![n, N_CLASSES],
            datatype: "FP64",
            data: OutputData::Float(probabilities),
        });
    }
    let response = InferResponse {
        model_name: MODEL_NAME.to_owned(),
        model_version: state.model.version().to_owned(),
        id: request.id,
        outputs,
    };
    Ok(Json(response).into_response())
}

/// The rows of the single `[N, 4]` FP32/FP64 input tensor.
pub fn input_rows(inputs: &[InferInput]) -> Result<Vec<[f64; N_FEATURES]>, ApiError> {
    let [input] = inputs else {
        return Err(ApiError::bad_request(format!(
            "expected exactly one input tensor ({INPUT_NAME:?}, shape [N, {N_FEATURES}]), got {}",
            inputs.len()
        )));
    };
    let fp32 = match input.datatype.as_str() {
        "FP32" => true,
        "FP64" => false,
        other => {
            return Err(ApiError::bad_request(format!(
                "input {:?} has datatype {other:?}; expected \"FP32\" or \"FP64\"",
                input.name
            )))
        }
    };
    let n = match input.shape.as_slice() {
        [n, f] if *n >= 0 && *f == N_FEATURES as i64 => *n as usize,
        other => {
            return Err(ApiError::bad_request(format!(
                "input {:?} has shape {other:?}; expected [N, {N_FEATURES}]",
                input.name
            )))
        }
    };
    check_batch(n)?;
    let mut flat = Vec::with_capacity(n * N_FEATURES);
    flatten(&input.data, &mut flat, n * N_FEATURES)?;
    if flat.len() != n * N_FEATURES {
        return Err(ApiError::bad_request(format!(
            "input {:?} has {} values but shape [{n}, {N_FEATURES}] needs {}",
            input.name,
            flat.len(),
            n * N_FEATURES
        )));
    }
    if fp32 {
        for v in &mut flat {
            *v = f64::from(*v as f32);
        }
    }
    if let Some(bad) = flat.iter().find(|v| !v.is_finite()) {
        return Err(ApiError::bad_request(format!(
            "input values must be finite numbers, got {bad}"
        )));
    }
    Ok(flat
        .chunks_exact(N_FEATURES)
        .map(|c| [c[0], c[1], c[2], c[3]])
        .collect())
}

/// Appends the numbers of `data` (a number or nested arrays of numbers) in row-major order,
/// stopping with an error past `limit` values so a huge nested body cannot grow without end.
fn flatten(data: &Value, out: &mut Vec<f64>, limit: usize) -> Result<(), ApiError> {
    match data {
        Value::Number(n) => {
            if out.len() >= limit {
                return Err(ApiError::bad_request(format!(
                    "input data has more than the {limit} values its shape allows"
                )));
            }
            out.push(
                n.as_f64()
                    .ok_or_else(|| ApiError::bad_request(format!("{n} is not a number")))?,
            );
            Ok(())
        }
        Value::Array(items) => items.iter().try_for_each(|item| flatten(item, out, limit)),
        other => Err(ApiError::bad_request(format!(
            "input data must hold only numbers, found {other}"
        ))),
    }
}

/// Which outputs to send: both unless the request names some; unknown names are an error.
fn requested_outputs(outputs: Option<&[RequestedOutput]>) -> Result<(bool, bool), ApiError> {
    let Some(outputs) = outputs.filter(|o| !o.is_empty()) else {
        return Ok((true, true));
    };
    let (mut class, mut probabilities) = (false, false);
    for output in outputs {
        match output.name.as_str() {
            OUTPUT_CLASS => class = true,
            OUTPUT_PROBABILITIES => probabilities = true,
            other => {
                return Err(ApiError::bad_request(format!(
                    "unknown output {other:?}: this model has {OUTPUT_CLASS:?} and {OUTPUT_PROBABILITIES:?}"
                )))
            }
        }
    }
    Ok((class, probabilities))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

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
                "only numbers",
            ),
            (input("FP32", vec![1, 4], json!([1, 2, 3, 1e300])), "finite"),
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
    fn outputs_can_be_chosen() {
        let ask = |names: &[&str]| {
            let o: Vec<RequestedOutput> = names
                .iter()
                .map(|n| RequestedOutput {
                    name: n.to_string(),
                    parameters: None,
                })
                .collect();
            requested_outputs(Some(&o))
        };
        assert_eq!(requested_outputs(None).unwrap(), (true, true));
        assert_eq!(ask(&["class"]).unwrap(), (true, false));
        assert_eq!(ask(&["probabilities"]).unwrap(), (false, true));
        assert!(ask(&["logits"]).is_err());
    }
}

//! The Open Inference Protocol's (KServe V2) JSON shapes, field for field, with their schemas:
//! what `routes::v2` reads and answers. Only data and the rules JSON Schema can state live
//! here; the handlers and the reading of JSON data are in `routes::v2`, the protocol's rules in
//! `crate::inference`.

use serde::{de, Deserialize, Deserializer, Serialize};
use serde_json::{json, Map, Number, Value};
use utoipa::{
    openapi::{schema::Schema, RefOr},
    PartialSchema, ToSchema,
};

use super::schema::{bounded_number, from_json, reference};
use crate::{
    model::{FEATURE_LIMIT, N_FEATURES},
    state::MAX_BATCH_ROWS,
};

pub use crate::inference::{INPUT_NAME, OUTPUT_CLASS, OUTPUT_PROBABILITIES};

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

/// The protocol's `parameters`: any object (this model reads none).
pub type Parameters = Option<Map<String, Value>>;

/// An input tensor of an inference request.
#[derive(Debug, Deserialize)]
pub struct InferInput {
    pub name: String,
    #[serde(deserialize_with = "integer_dims")]
    pub shape: Vec<i64>,
    /// `FP32` or `FP64`.
    pub datatype: String,
    #[serde(default)]
    pub parameters: Parameters,
    /// The values in row-major order: flat, or as rows of 4.
    pub data: Value,
}

/// A tensor's dimensions: integers, written `4` or `4.0` (JSON Schema counts both as integers).
fn integer_dims<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<i64>, D::Error> {
    Vec::<Number>::deserialize(deserializer)?
        .iter()
        .map(|n| {
            n.as_i64()
                .or_else(|| {
                    // Integral and within i64: below 2^63, which `i64::MAX` rounds to.
                    n.as_f64()
                        .filter(|f| f.fract() == 0.0 && f.abs() < i64::MAX as f64)
                        .map(|f| f as i64)
                })
                .ok_or_else(|| de::Error::custom(format_args!("a shape holds integers, got {n}")))
        })
        .collect()
}

impl PartialSchema for InferInput {
    /// One schema per datatype, as each has its own range of values.
    fn schema() -> RefOr<Schema> {
        let tensor = |datatype: &str, limit: f64| {
            let value = bounded_number(limit);
            let row = json!({"type": "array", "items": value, "minItems": N_FEATURES, "maxItems": N_FEATURES});
            json!({
                "type": "object",
                "title": datatype,
                "required": ["name", "shape", "datatype", "data"],
                "properties": {
                    "name": {"type": "string"},
                    "shape": {
                        "type": "array",
                        "description": "`[N, 4]`; `data` must hold N × 4 values (400 otherwise)",
                        "prefixItems": [
                            {"type": "integer", "minimum": 1, "maximum": MAX_BATCH_ROWS},
                            {"type": "integer", "enum": [N_FEATURES]}
                        ],
                        "items": false,
                        "minItems": 2
                    },
                    "datatype": {"type": "string", "enum": [datatype]},
                    "parameters": {"type": ["object", "null"]},
                    "data": {
                        "anyOf": [
                            {"type": "array", "items": value},
                            {"type": "array", "items": row}
                        ],
                        "description": "The values in row-major order: flat, or as rows of 4."
                    }
                }
            })
        };
        from_json(json!({
            "oneOf": [tensor("FP32", f64::from(f32::MAX)), tensor("FP64", FEATURE_LIMIT)],
            "description": "The input tensor: FP32 or FP64, shape `[N, 4]`."
        }))
    }
}

impl ToSchema for InferInput {}

/// An output the client asks for; all outputs when the request names none.
#[derive(Debug, Deserialize)]
pub struct RequestedOutput {
    pub name: String,
    #[serde(default)]
    pub parameters: Parameters,
}

impl PartialSchema for RequestedOutput {
    fn schema() -> RefOr<Schema> {
        from_json(json!({
            "type": "object",
            "description": "An output the client asks for; all outputs when the request names none.",
            "required": ["name"],
            "properties": {
                "name": {"type": "string", "enum": [OUTPUT_CLASS, OUTPUT_PROBABILITIES]},
                "parameters": {"type": ["object", "null"]}
            }
        }))
    }
}

impl ToSchema for RequestedOutput {}

/// `POST /v2/models/{name}/infer` body: the inference request.
#[derive(Debug, Deserialize)]
pub struct InferRequest {
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default)]
    pub parameters: Parameters,
    pub inputs: Vec<InferInput>,
    #[serde(default)]
    pub outputs: Option<Vec<RequestedOutput>>,
}

impl PartialSchema for InferRequest {
    fn schema() -> RefOr<Schema> {
        from_json(json!({
            "type": "object",
            "description": "The inference request: exactly one input tensor.",
            "required": ["inputs"],
            "properties": {
                "id": {"type": ["string", "null"]},
                "parameters": {"type": ["object", "null"]},
                "inputs": {"type": "array", "items": reference("InferInput"), "minItems": 1, "maxItems": 1},
                "outputs": {"type": ["array", "null"], "items": reference("RequestedOutput")}
            },
            "example": {"inputs": [{"name": INPUT_NAME, "shape": [1, 4], "datatype": "FP32", "data": [5.1, 3.5, 1.4, 0.2]}]}
        }))
    }
}

impl ToSchema for InferRequest {}

/// The data of an output tensor: integers for `class`, numbers for `probabilities`. The
/// document declares one array of numbers, which both are.
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum OutputData {
    Int(Vec<i64>),
    Float(Vec<f64>),
}

/// An output tensor of an inference response.
#[derive(Debug, Serialize, ToSchema)]
pub struct InferOutput {
    #[schema(example = "class")]
    pub name: &'static str,
    pub shape: Vec<usize>,
    /// `INT64` for `class`, `FP64` for `probabilities`.
    pub datatype: &'static str,
    /// In row-major order: class indices, or probabilities in `[0, 1]`.
    #[schema(value_type = Vec<f64>)]
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

//! `inference.GRPCInferenceService`: the Open Inference Protocol over gRPC, by the rules of
//! [`crate::inference`] that its REST form follows too.
//!
//! - `ServerLive`: true; `ServerReady` and `ModelReady`: true until the drain starts;
//! - `ModelReady`, `ModelMetadata`, `ModelInfer`: the model `iris`, and a version either empty
//!   or the served one; NOT_FOUND otherwise;
//! - `ServerMetadata`, `ModelMetadata`: what `/v2` and `/v2/models/iris` answer;
//! - `ModelInfer`: one FP32 or FP64 input of shape `[N, 4]`, its values either typed (in
//!   `contents`, the field of its datatype) or raw (one `raw_input_contents` entry,
//!   little-endian), never both. The answer holds the requested outputs (both when none are
//!   named) in the order `class`, `probabilities`, typed when the request was typed and raw
//!   (`raw_output_contents`) when it was raw: Triton's client sends raw inputs and reads only
//!   raw outputs. The request's `id` is echoed. A mirrored call's rows and predictions are
//!   noted for the shadow journal ([`crate::shadow`]).

use ml_proto::inference::{
    grpc_inference_service_server::GrpcInferenceService, model_infer_request::InferInputTensor,
    model_infer_response::InferOutputTensor, model_metadata_response::TensorMetadata,
    InferTensorContents, ModelInferRequest, ModelInferResponse, ModelMetadataRequest,
    ModelMetadataResponse, ModelReadyRequest, ModelReadyResponse, ServerLiveRequest,
    ServerLiveResponse, ServerMetadataRequest, ServerMetadataResponse, ServerReadyRequest,
    ServerReadyResponse,
};
use tonic::{Request, Response, Status};

use crate::{
    error::ApiError,
    inference::{
        self, batch_rows, check_model, one_input, requested_outputs, rows, Datatype, TensorSpec,
        OUTPUTS,
    },
    model::{N_CLASSES, N_FEATURES},
    shadow::{Answered, Shadow},
    state::{AppState, MODEL_NAME},
};

/// `inference.GRPCInferenceService` over the shared state.
#[derive(Debug, Clone)]
pub struct Service {
    state: AppState,
}

impl Service {
    pub fn new(state: AppState) -> Service {
        Service { state }
    }

    /// Ready until the drain starts.
    fn ready(&self) -> bool {
        !self.state.drain.has_started()
    }
}

/// The protocol's empty version: whichever is served.
fn version(version: &str) -> Option<&str> {
    (!version.is_empty()).then_some(version)
}

#[tonic::async_trait]
impl GrpcInferenceService for Service {
    async fn server_live(
        &self,
        _request: Request<ServerLiveRequest>,
    ) -> Result<Response<ServerLiveResponse>, Status> {
        Ok(Response::new(ServerLiveResponse { live: true }))
    }

    async fn server_ready(
        &self,
        _request: Request<ServerReadyRequest>,
    ) -> Result<Response<ServerReadyResponse>, Status> {
        Ok(Response::new(ServerReadyResponse {
            ready: self.ready(),
        }))
    }

    async fn model_ready(
        &self,
        request: Request<ModelReadyRequest>,
    ) -> Result<Response<ModelReadyResponse>, Status> {
        let request = request.get_ref();
        check_model(&self.state, &request.name, version(&request.version))?;
        Ok(Response::new(ModelReadyResponse {
            ready: self.ready(),
        }))
    }

    async fn server_metadata(
        &self,
        _request: Request<ServerMetadataRequest>,
    ) -> Result<Response<ServerMetadataResponse>, Status> {
        Ok(Response::new(ServerMetadataResponse {
            name: inference::SERVER_NAME.to_owned(),
            version: inference::SERVER_VERSION.to_owned(),
            extensions: inference::EXTENSIONS.map(str::to_owned).to_vec(),
        }))
    }

    async fn model_metadata(
        &self,
        request: Request<ModelMetadataRequest>,
    ) -> Result<Response<ModelMetadataResponse>, Status> {
        let request = request.get_ref();
        check_model(&self.state, &request.name, version(&request.version))?;
        let tensor = |spec: &TensorSpec| TensorMetadata {
            name: spec.name.to_owned(),
            datatype: spec.datatype.to_owned(),
            shape: spec.shape.to_vec(),
        };
        Ok(Response::new(ModelMetadataResponse {
            name: MODEL_NAME.to_owned(),
            versions: vec![self.state.model.version().to_owned()],
            platform: inference::PLATFORM.to_owned(),
            inputs: inference::INPUTS.iter().map(tensor).collect(),
            outputs: OUTPUTS.iter().map(tensor).collect(),
        }))
    }

    async fn model_infer(
        &self,
        request: Request<ModelInferRequest>,
    ) -> Result<Response<ModelInferResponse>, Status> {
        let shadow = Shadow::of_grpc(&request);
        let request = request.into_inner();
        check_model(
            &self.state,
            &request.model_name,
            version(&request.model_version),
        )?;
        let rows = input_rows(&request)?;
        let (want_class, want_probabilities) =
            requested_outputs(request.outputs.iter().map(|output| output.name.as_str()))?;
        let predictions = self.state.predict_all(&rows)?;
        let raw = !request.raw_input_contents.is_empty();
        let n = predictions.len() as i64;
        let mut answer = ModelInferResponse {
            model_name: MODEL_NAME.to_owned(),
            model_version: self.state.model.version().to_owned(),
            id: request.id,
            ..ModelInferResponse::default()
        };
        let [class, probabilities] = &OUTPUTS;
        if want_class {
            let values = predictions.iter().map(|p| p.class as i64);
            let contents = if raw {
                answer
                    .raw_output_contents
                    .push(values.flat_map(i64::to_le_bytes).collect());
                None
            } else {
                Some(InferTensorContents {
                    int64_contents: values.collect(),
                    ..InferTensorContents::default()
                })
            };
            answer.outputs.push(output(class, vec![n], contents));
        }
        if want_probabilities {
            let values = predictions.iter().flat_map(|p| p.probabilities);
            let contents = if raw {
                answer
                    .raw_output_contents
                    .push(values.flat_map(f64::to_le_bytes).collect());
                None
            } else {
                Some(InferTensorContents {
                    fp64_contents: values.collect(),
                    ..InferTensorContents::default()
                })
            };
            let shape = vec![n, N_CLASSES as i64];
            answer.outputs.push(output(probabilities, shape, contents));
        }
        let mut response = Response::new(answer);
        shadow.note_grpc(&mut response, || Answered {
            inputs: rows,
            outputs: predictions,
        });
        Ok(response)
    }
}

fn output(
    spec: &TensorSpec,
    shape: Vec<i64>,
    contents: Option<InferTensorContents>,
) -> InferOutputTensor {
    InferOutputTensor {
        name: spec.name.to_owned(),
        datatype: spec.datatype.to_owned(),
        shape,
        parameters: Default::default(),
        contents,
    }
}

/// The rows of the request's single `[N, 4]` FP32/FP64 input, by the rules of
/// [`crate::inference`]; its values typed or raw, not both.
pub fn input_rows(request: &ModelInferRequest) -> Result<Vec<[f64; N_FEATURES]>, ApiError> {
    let input = one_input(&request.inputs)?;
    let name = input.name.as_str();
    let datatype = Datatype::parse(name, &input.datatype)?;
    let n = batch_rows(name, &input.shape)?;
    match request.raw_input_contents.as_slice() {
        [] => typed_rows(input, datatype, n),
        [raw] => {
            if let Some((field, _)) = typed_fields(input).find(|(_, len)| *len > 0) {
                return Err(ApiError::bad_request(format!(
                    "input {name:?} has values both in contents.{field} and in raw_input_contents: send them in one of the two"
                )));
            }
            raw_rows(name, datatype, n, raw)
        }
        more => Err(ApiError::bad_request(format!(
            "raw_input_contents has {} entries but the request has 1 input: send one entry per input",
            more.len()
        ))),
    }
}

/// The rows of an input whose values are typed: in the `contents` field of its datatype.
fn typed_rows(
    input: &InferInputTensor,
    datatype: Datatype,
    n: usize,
) -> Result<Vec<[f64; N_FEATURES]>, ApiError> {
    let name = input.name.as_str();
    let expected = match datatype {
        Datatype::Fp32 => "fp32_contents",
        Datatype::Fp64 => "fp64_contents",
    };
    if let Some((field, _)) = typed_fields(input).find(|(f, len)| *f != expected && *len > 0) {
        return Err(ApiError::bad_request(format!(
            "input {name:?} has datatype {}, so its values go in contents.{expected}, but contents.{field} holds values",
            datatype.name()
        )));
    }
    let empty = InferTensorContents::default();
    let contents = input.contents.as_ref().unwrap_or(&empty);
    match datatype {
        Datatype::Fp32 => rows(
            name,
            datatype,
            n,
            contents.fp32_contents.iter().map(|&v| f64::from(v)),
        ),
        Datatype::Fp64 => rows(name, datatype, n, contents.fp64_contents.iter().copied()),
    }
}

/// The number of values in each typed field of the input's `contents`.
fn typed_fields(input: &InferInputTensor) -> impl Iterator<Item = (&'static str, usize)> + '_ {
    let c = input.contents.as_ref();
    let len = move |f: fn(&InferTensorContents) -> usize| c.map_or(0, f);
    [
        ("bool_contents", len(|c| c.bool_contents.len())),
        ("int_contents", len(|c| c.int_contents.len())),
        ("int64_contents", len(|c| c.int64_contents.len())),
        ("uint_contents", len(|c| c.uint_contents.len())),
        ("uint64_contents", len(|c| c.uint64_contents.len())),
        ("fp32_contents", len(|c| c.fp32_contents.len())),
        ("fp64_contents", len(|c| c.fp64_contents.len())),
        ("bytes_contents", len(|c| c.bytes_contents.len())),
    ]
    .into_iter()
}

/// The rows of an input whose values are raw: `n × 4` little-endian values of its datatype.
fn raw_rows(
    name: &str,
    datatype: Datatype,
    n: usize,
    raw: &[u8],
) -> Result<Vec<[f64; N_FEATURES]>, ApiError> {
    let size = datatype.size();
    let expected = n * N_FEATURES * size;
    if raw.len() != expected {
        return Err(ApiError::bad_request(format!(
            "raw_input_contents of input {name:?} has {} bytes but {} shape [{n}, {N_FEATURES}] needs {expected} ({} values of {size} bytes, little-endian)",
            raw.len(),
            datatype.name(),
            n * N_FEATURES
        )));
    }
    // `chunks_exact` gives slices of exactly `size` bytes, so the conversions cannot fail.
    match datatype {
        Datatype::Fp32 => rows(
            name,
            datatype,
            n,
            raw.chunks_exact(4).map(|b| {
                b.try_into()
                    .map_or(f64::NAN, |b| f64::from(f32::from_le_bytes(b)))
            }),
        ),
        Datatype::Fp64 => rows(
            name,
            datatype,
            n,
            raw.chunks_exact(8)
                .map(|b| b.try_into().map_or(f64::NAN, f64::from_le_bytes)),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(
        datatype: &str,
        shape: Vec<i64>,
        contents: Option<InferTensorContents>,
    ) -> ModelInferRequest {
        ModelInferRequest {
            model_name: MODEL_NAME.to_owned(),
            inputs: vec![InferInputTensor {
                name: "x".to_owned(),
                datatype: datatype.to_owned(),
                shape,
                parameters: Default::default(),
                contents,
            }],
            ..ModelInferRequest::default()
        }
    }

    #[test]
    fn typed_and_raw_values_give_the_same_rows() {
        let values = [5.1f32, 3.5, 1.4, 0.2, 7.0, 3.2, 4.7, 1.4];
        let typed = request(
            "FP32",
            vec![2, 4],
            Some(InferTensorContents {
                fp32_contents: values.to_vec(),
                ..Default::default()
            }),
        );
        let mut raw = request("FP32", vec![2, 4], None);
        raw.raw_input_contents = vec![values.iter().flat_map(|v| v.to_le_bytes()).collect()];
        assert_eq!(input_rows(&typed).unwrap(), input_rows(&raw).unwrap());
        assert_eq!(input_rows(&raw).unwrap()[1][0], f64::from(7.0f32));

        let mut raw64 = request("FP64", vec![1, 4], None);
        raw64.raw_input_contents = vec![[1.5f64, 2.0, 3.0, 4.0]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect()];
        assert_eq!(input_rows(&raw64).unwrap(), [[1.5, 2.0, 3.0, 4.0]]);
    }

    #[test]
    fn bad_tensors_are_refused_with_a_reason() {
        let fp32 = |values: Vec<f32>| {
            Some(InferTensorContents {
                fp32_contents: values,
                ..Default::default()
            })
        };
        let mut mixed = request("FP32", vec![1, 4], fp32(vec![1.0; 4]));
        mixed.raw_input_contents = vec![vec![0; 16]];
        let mut short = request("FP64", vec![1, 4], None);
        short.raw_input_contents = vec![vec![0; 31]];
        let mut two = request("FP64", vec![1, 4], None);
        two.raw_input_contents = vec![vec![0; 32], vec![0; 32]];
        let wrong_field = request(
            "FP32",
            vec![1, 4],
            Some(InferTensorContents {
                fp64_contents: vec![1.0; 4],
                ..Default::default()
            }),
        );
        let cases = [
            (
                mixed,
                400,
                "both in contents.fp32_contents and in raw_input_contents",
            ),
            (short, 400, "has 31 bytes but FP64 shape [1, 4] needs 32"),
            (two, 400, "2 entries"),
            (wrong_field, 400, "contents.fp64_contents holds values"),
            (request("BYTES", vec![1, 4], None), 400, "datatype"),
            (
                request("FP32", vec![4], fp32(vec![1.0; 4])),
                400,
                "shape [4]",
            ),
            (
                request("FP32", vec![1, 4], fp32(vec![1.0; 3])),
                400,
                "has 3 values",
            ),
            (request("FP32", vec![0, 4], None), 422, "empty"),
            (request("FP32", vec![2000, 4], None), 413, "at most 1024"),
            (
                request("FP32", vec![1, 4], fp32(vec![1.0, f32::INFINITY, 1.0, 1.0])),
                422,
                "feature 1 (sepal width) is inf",
            ),
        ];
        for (request, status, needle) in cases {
            let err = input_rows(&request).unwrap_err();
            assert_eq!(err.status.as_u16(), status, "{}", err.message);
            assert!(
                err.message.contains(needle),
                "{:?} lacks {needle:?}",
                err.message
            );
        }
    }
}

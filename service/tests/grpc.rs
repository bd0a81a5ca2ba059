//! The gRPC side on real sockets: an in-process server on free loopback ports (HTTP and gRPC)
//! and tonic clients generated from `ml-proto`.
//!
//! - `prediction.PredictionService` answers as HTTP `/predict` does, and refuses as it does;
//! - `inference.GRPCInferenceService` answers as HTTP `/v2` does, with typed or raw tensors;
//! - every answer, success or error, carries `x-model-version` and `x-request-id`; every RPC is
//!   counted in `/metrics`;
//! - `grpc.health.v1` reports SERVING, then NOT_SERVING when the drain starts; reflection lists
//!   the services;
//! - the drain covers gRPC: an RPC in flight finishes, new connections are refused, and a stuck
//!   one cannot hold the drain past its timeout;
//! - the real binary serves gRPC on `GRPC_PORT` and logs both addresses.
//!
//! One file on purpose, although it is long: every file under `tests/` is a test binary of its
//! own that links the whole service and a tonic client, so splitting this one would add link
//! time to every CI run; the tests follow the order of the list above.

mod common;

use std::{
    net::{SocketAddr, TcpStream},
    time::{Duration, Instant},
};

use axum::{
    body::Bytes,
    http::{self, HeaderMap},
};
use common::{metric, model_dir, spawn_service, TestServer, GOLDEN};
use ml_proto::{
    inference::{
        grpc_inference_service_client::GrpcInferenceServiceClient,
        model_infer_request::{InferInputTensor, InferRequestedOutputTensor},
        model_infer_response::InferOutputTensor,
        InferTensorContents, ModelInferRequest, ModelInferResponse, ModelMetadataRequest,
        ModelReadyRequest, ServerLiveRequest, ServerMetadataRequest, ServerReadyRequest,
    },
    prediction::{
        prediction_service_client::PredictionServiceClient,
        prediction_service_server::PredictionService as _, HealthRequest, PredictBatchRequest,
        PredictRequest, PredictResponse,
    },
    MODEL_VERSION_METADATA,
};
use prost::Message;
use serde_json::{json, Value};
use service::{grpc, state::AppState};
use tokio_stream::StreamExt;
use tonic::{transport::Channel, Code, Request, Status};
use tonic_health::pb::{
    health_check_response::ServingStatus, health_client::HealthClient, HealthCheckRequest,
};

const WAIT: Duration = Duration::from_secs(30);
const VERSION: &str = "v1.0.0";
const PREDICT: &str = "/prediction.PredictionService/Predict";

async fn start() -> TestServer {
    TestServer::start(VERSION, Duration::from_secs(10)).await
}

async fn channel(server: &TestServer) -> Channel {
    Channel::from_shared(server.grpc_url())
        .unwrap()
        .connect()
        .await
        .expect("connect to the gRPC port")
}

fn predict_request(features: &[f32]) -> PredictRequest {
    PredictRequest {
        features: features.to_vec(),
    }
}

/// The row as FP32, what a gRPC client sends.
fn fp32(row: [f64; 4]) -> [f32; 4] {
    row.map(|v| v as f32)
}

/// The HTTP `/predict` answer for `row`.
async fn http_predict(server: &TestServer, row: [f64; 4]) -> Value {
    reqwest::Client::new()
        .post(server.url("/predict"))
        .json(&json!({ "features": row }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// Asserts a refusal: its code, a message naming the problem, and the version metadata.
fn assert_refused(what: &str, status: &Status, code: Code, needle: &str) {
    assert_eq!(status.code(), code, "{what}: {status:?}");
    assert_ne!(status.code(), Code::Internal, "{what}");
    assert!(
        status.message().contains(needle),
        "{what}: {:?} should mention {needle:?}",
        status.message()
    );
    assert_eq!(
        status
            .metadata()
            .get(MODEL_VERSION_METADATA)
            .and_then(|v| v.to_str().ok()),
        Some(VERSION),
        "{what}: an error carries the version too"
    );
}

/// Polls `f` until it returns `Some`, failing after [`WAIT`].
async fn eventually<T, F: std::future::Future<Output = Option<T>>>(
    what: &str,
    mut f: impl FnMut() -> F,
) -> T {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "{what}: not true after {WAIT:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn metrics_text(server: &TestServer) -> String {
    reqwest::get(server.url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

#[tokio::test]
async fn predict_answers_as_http_predict_does() {
    let server = start().await;
    let mut client = PredictionServiceClient::new(channel(&server).await);
    let rows = GOLDEN
        .map(|g| g.0)
        .into_iter()
        .chain([[6.0, 2.9, 4.5, 1.5]]);
    for row in rows {
        let features = fp32(row);
        let response = client
            .predict(predict_request(&features))
            .await
            .expect("predict");
        assert_eq!(
            response.metadata().get(MODEL_VERSION_METADATA).unwrap(),
            VERSION
        );
        let answer = response.into_inner();
        // HTTP gets the same FP32 values, so both predict the very same FP64 row.
        let http = http_predict(&server, features.map(f64::from)).await;
        assert_eq!(
            i64::from(answer.prediction),
            http["class"].as_i64().unwrap()
        );
        assert_eq!(answer.label, http["label"].as_str().unwrap());
        assert_eq!(answer.model_version, VERSION);
        let http_probabilities: Vec<f32> = http["probabilities"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p.as_f64().unwrap() as f32)
            .collect();
        assert_eq!(answer.probabilities, http_probabilities, "{row:?}");
        assert_eq!(
            answer.confidence,
            answer.probabilities[answer.prediction as usize]
        );
    }
    for (row, class, label) in GOLDEN {
        let answer = client
            .predict(predict_request(&fp32(row)))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            (answer.prediction as usize, answer.label.as_str()),
            (class, label)
        );
    }
    assert!(server.shutdown().await);
}

#[tokio::test]
async fn predict_batch_keeps_the_order_of_the_rows_and_health_says_ok() {
    let server = start().await;
    let mut client = PredictionServiceClient::new(channel(&server).await);
    // Every golden row, in an order that differs from the classes' order, and repeated.
    let order = [2, 0, 1, 1, 2, 0, 0];
    let request = PredictBatchRequest {
        rows: order
            .iter()
            .map(|&i| predict_request(&fp32(GOLDEN[i].0)))
            .collect(),
    };
    let answer = client.predict_batch(request).await.unwrap().into_inner();
    assert_eq!(answer.model_version, VERSION);
    let classes: Vec<usize> = answer
        .predictions
        .iter()
        .map(|p| p.prediction as usize)
        .collect();
    let expected: Vec<usize> = order.iter().map(|&i| GOLDEN[i].1).collect();
    assert_eq!(classes, expected);
    assert!(answer
        .predictions
        .iter()
        .all(|p| p.model_version == VERSION && p.label == GOLDEN[p.prediction as usize].2));

    let full = PredictBatchRequest {
        rows: vec![predict_request(&fp32(GOLDEN[1].0)); 1024],
    };
    let answer = client.predict_batch(full).await.unwrap().into_inner();
    assert_eq!(answer.predictions.len(), 1024);

    let health = client.health(HealthRequest {}).await.unwrap();
    assert_eq!(
        health.metadata().get(MODEL_VERSION_METADATA).unwrap(),
        VERSION
    );
    let health = health.into_inner();
    assert_eq!(
        (health.status.as_str(), health.model_version.as_str()),
        ("ok", VERSION)
    );
    assert!(server.shutdown().await);
}

#[tokio::test]
async fn prediction_refusals_name_the_problem_with_the_right_code() {
    let server = start().await;
    let mut client = PredictionServiceClient::new(channel(&server).await);
    let one = |features: &[f32]| predict_request(features);
    let cases = [
        (
            "3 features",
            one(&[1.0, 2.0, 3.0]),
            Code::InvalidArgument,
            "expected 4 features (sepal length, sepal width, petal length, petal width), got 3",
        ),
        ("no features", one(&[]), Code::InvalidArgument, "got 0"),
        (
            "NaN",
            one(&[1.0, f32::NAN, 3.0, 4.0]),
            Code::InvalidArgument,
            "feature 1 (sepal width) is NaN: feature values must be finite numbers",
        ),
        (
            "infinity",
            one(&[1.0, 2.0, 3.0, f32::NEG_INFINITY]),
            Code::InvalidArgument,
            "feature 3 (petal width) is -inf",
        ),
    ];
    for (what, request, code, needle) in cases {
        let status = client.predict(request).await.unwrap_err();
        assert_refused(what, &status, code, needle);
    }
    let batch = |rows: Vec<PredictRequest>| PredictBatchRequest { rows };
    let cases = [
        (
            "empty batch",
            batch(vec![]),
            Code::InvalidArgument,
            "the batch is empty: send at least one row",
        ),
        (
            "1025 rows",
            batch(vec![one(&[1.0; 4]); 1025]),
            Code::ResourceExhausted,
            "the batch has 1025 rows; at most 1024 are allowed",
        ),
        (
            "a short row",
            batch(vec![one(&[1.0; 4]), one(&[1.0; 5])]),
            Code::InvalidArgument,
            "row 1: expected 4 features",
        ),
        (
            "a NaN in a row",
            batch(vec![one(&[1.0; 4]), one(&[1.0; 4]), one(&[f32::NAN; 4])]),
            Code::InvalidArgument,
            "row 2: feature 0 (sepal length) is NaN",
        ),
        // 300,000 floats: about 1.2 MB, over the 1 MiB limit HTTP applies to bodies.
        (
            "a message over 1 MiB",
            batch(vec![one(&vec![1.0; 300_000])]),
            Code::ResourceExhausted,
            "more than the limit of 1048576 bytes: send fewer rows per call",
        ),
    ];
    for (what, request, code, needle) in cases {
        let status = client.predict_batch(request).await.unwrap_err();
        assert_refused(what, &status, code, needle);
    }
    // The service goes on answering on the same connection.
    assert!(client.predict(one(&[5.1, 3.5, 1.4, 0.2])).await.is_ok());
    assert!(server.shutdown().await);
}

#[tokio::test]
async fn every_answer_carries_the_version_and_a_request_id_and_is_counted() {
    let server = start().await;
    let mut client = PredictionServiceClient::new(channel(&server).await);
    let with_id = |features: &[f32], id: &'static str| {
        let mut request = Request::new(predict_request(features));
        request
            .metadata_mut()
            .insert("x-request-id", id.parse().unwrap());
        request
    };
    let ok = client
        .predict(with_id(&[5.1, 3.5, 1.4, 0.2], "from-the-client"))
        .await
        .unwrap();
    assert_eq!(
        ok.metadata().get("x-request-id").unwrap(),
        "from-the-client"
    );
    assert_eq!(ok.metadata().get(MODEL_VERSION_METADATA).unwrap(), VERSION);
    let err = client.predict(with_id(&[1.0], "err-id")).await.unwrap_err();
    assert_eq!(err.metadata().get("x-request-id").unwrap(), "err-id");
    assert_eq!(err.metadata().get(MODEL_VERSION_METADATA).unwrap(), VERSION);
    // An id that is not printable ASCII is replaced by one of the service's own.
    let made = client
        .predict(with_id(&[5.1, 3.5, 1.4, 0.2], "two words"))
        .await
        .unwrap();
    let made = made
        .metadata()
        .get("x-request-id")
        .unwrap()
        .to_str()
        .unwrap();
    assert!(!made.is_empty() && made != "two words", "{made}");
    // An unknown method gets UNIMPLEMENTED, with the version too.
    let mut raw = tonic::client::Grpc::new(channel(&server).await);
    raw.ready().await.unwrap();
    let status = raw
        .unary::<_, PredictResponse, _>(
            Request::new(predict_request(&[1.0; 4])),
            "/prediction.PredictionService/Nope".parse().unwrap(),
            tonic_prost::ProstCodec::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unimplemented);
    assert_eq!(
        status.metadata().get(MODEL_VERSION_METADATA).unwrap(),
        VERSION
    );

    let text = metrics_text(&server).await;
    let count = |status: u16| {
        metric(
            &text,
            &format!("http_requests_total{{route=\"{PREDICT}\",status=\"{status}\"}}"),
        )
    };
    assert_eq!((count(200), count(400)), (Some(2), Some(1)), "{text}");
    assert_eq!(
        metric(
            &text,
            "http_requests_total{route=\"unmatched\",status=\"404\"}"
        ),
        Some(1),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "http_request_duration_seconds_count{{route=\"{PREDICT}\"}} 3"
        )),
        "{text}"
    );
    assert_eq!(
        metric(&text, "predictions_total{class=\"0\",label=\"setosa\"}"),
        Some(2),
        "{text}"
    );
    assert!(server.shutdown().await);
}

/// The model's single input: `rows` as FP32 or FP64, typed or raw.
#[derive(Debug, Clone, Copy)]
enum Encoding {
    Fp32Contents,
    Fp64Contents,
    Fp32Raw,
    Fp64Raw,
}

fn infer_request(rows: &[[f64; 4]], encoding: Encoding) -> ModelInferRequest {
    let values = rows.iter().flatten().copied();
    let (datatype, contents, raw): (&str, Option<InferTensorContents>, Vec<Vec<u8>>) =
        match encoding {
            Encoding::Fp32Contents => (
                "FP32",
                Some(InferTensorContents {
                    fp32_contents: values.map(|v| v as f32).collect(),
                    ..Default::default()
                }),
                vec![],
            ),
            Encoding::Fp64Contents => (
                "FP64",
                Some(InferTensorContents {
                    fp64_contents: values.collect(),
                    ..Default::default()
                }),
                vec![],
            ),
            Encoding::Fp32Raw => (
                "FP32",
                None,
                vec![values.flat_map(|v| (v as f32).to_le_bytes()).collect()],
            ),
            Encoding::Fp64Raw => (
                "FP64",
                None,
                vec![values.flat_map(f64::to_le_bytes).collect()],
            ),
        };
    ModelInferRequest {
        model_name: "iris".to_owned(),
        model_version: String::new(),
        id: "req-7".to_owned(),
        inputs: vec![InferInputTensor {
            name: "input-0".to_owned(),
            datatype: datatype.to_owned(),
            shape: vec![rows.len() as i64, 4],
            parameters: Default::default(),
            contents,
        }],
        raw_input_contents: raw,
        ..Default::default()
    }
}

/// An output of a gRPC answer as JSON, the way the HTTP side writes it: its data from typed
/// contents, or from `raw_output_contents` (as `tritonclient.grpc` reads it).
fn output_json(answer: &ModelInferResponse, index: usize) -> Value {
    let output: &InferOutputTensor = &answer.outputs[index];
    let data = match (
        answer.raw_output_contents.get(index),
        output.datatype.as_str(),
    ) {
        (Some(raw), "INT64") => json!(raw
            .chunks_exact(8)
            .map(|b| i64::from_le_bytes(b.try_into().unwrap()))
            .collect::<Vec<_>>()),
        (Some(raw), "FP64") => json!(raw
            .chunks_exact(8)
            .map(|b| f64::from_le_bytes(b.try_into().unwrap()))
            .collect::<Vec<_>>()),
        (None, "INT64") => json!(output.contents.as_ref().unwrap().int64_contents),
        (None, "FP64") => json!(output.contents.as_ref().unwrap().fp64_contents),
        other => panic!("unexpected output {other:?}"),
    };
    json!({"name": output.name, "datatype": output.datatype, "shape": output.shape, "data": data})
}

#[tokio::test]
async fn model_infer_answers_as_http_infer_does_with_typed_or_raw_tensors() {
    let server = start().await;
    let mut client = GrpcInferenceServiceClient::new(channel(&server).await);
    let mut rows: Vec<[f64; 4]> = GOLDEN.iter().map(|g| g.0).collect();
    rows.push([6.0, 2.9, 4.5, 1.5]);
    // FP32-exact values, so that FP32 and FP64 requests mean the very same rows.
    let rows: Vec<[f64; 4]> = rows.iter().map(|r| fp32(*r).map(f64::from)).collect();
    let http: Value = reqwest::Client::new()
        .post(server.url("/v2/models/iris/infer"))
        .json(&json!({"id": "req-7", "inputs": [{"name": "input-0", "shape": [rows.len(), 4], "datatype": "FP64", "data": rows}]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(http["outputs"][0]["data"], json!([0, 1, 2, 1]), "{http}");
    for encoding in [
        Encoding::Fp32Contents,
        Encoding::Fp64Contents,
        Encoding::Fp32Raw,
        Encoding::Fp64Raw,
    ] {
        let response = client
            .model_infer(infer_request(&rows, encoding))
            .await
            .unwrap_or_else(|s| panic!("{encoding:?}: {s:?}"));
        assert_eq!(
            response.metadata().get(MODEL_VERSION_METADATA).unwrap(),
            VERSION
        );
        let answer = response.into_inner();
        let raw = matches!(encoding, Encoding::Fp32Raw | Encoding::Fp64Raw);
        assert_eq!(
            answer.raw_output_contents.len(),
            if raw { 2 } else { 0 },
            "{encoding:?}"
        );
        assert!(answer.outputs.iter().all(|o| o.contents.is_some() != raw));
        let grpc = json!({
            "model_name": answer.model_name,
            "model_version": answer.model_version,
            "id": answer.id,
            "outputs": [output_json(&answer, 0), output_json(&answer, 1)],
        });
        assert_eq!(grpc, http, "{encoding:?}");
    }
    // Only the outputs asked for, in raw form when the request was raw.
    let mut request = infer_request(&rows, Encoding::Fp32Raw);
    request.outputs = vec![InferRequestedOutputTensor {
        name: "probabilities".to_owned(),
        parameters: Default::default(),
    }];
    request.model_version = VERSION.to_owned();
    request.id = String::new();
    let answer = client.model_infer(request).await.unwrap().into_inner();
    assert_eq!(answer.outputs.len(), 1);
    assert_eq!(answer.raw_output_contents.len(), 1);
    assert_eq!(answer.id, "");
    assert_eq!(output_json(&answer, 0), http["outputs"][1]);
    assert!(server.shutdown().await);
}

#[tokio::test]
async fn inference_protocol_health_and_metadata_match_http() {
    let server = start().await;
    let mut client = GrpcInferenceServiceClient::new(channel(&server).await);
    assert!(
        client
            .server_live(ServerLiveRequest {})
            .await
            .unwrap()
            .into_inner()
            .live
    );
    assert!(
        client
            .server_ready(ServerReadyRequest {})
            .await
            .unwrap()
            .into_inner()
            .ready
    );
    for version in ["", VERSION] {
        let ready = ModelReadyRequest {
            name: "iris".to_owned(),
            version: version.to_owned(),
        };
        assert!(client.model_ready(ready).await.unwrap().into_inner().ready);
    }
    let get = |path: &'static str| {
        let url = server.url(path);
        async move {
            reqwest::get(url)
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap()
        }
    };
    let server_meta = client
        .server_metadata(ServerMetadataRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        json!({"name": server_meta.name, "version": server_meta.version, "extensions": server_meta.extensions}),
        get("/v2").await
    );
    let meta = client
        .model_metadata(ModelMetadataRequest {
            name: "iris".to_owned(),
            version: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let tensors = |t: &[ml_proto::inference::model_metadata_response::TensorMetadata]| {
        t.iter()
            .map(|t| json!({"name": t.name, "datatype": t.datatype, "shape": t.shape}))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        json!({"name": meta.name, "versions": meta.versions, "platform": meta.platform,
               "inputs": tensors(&meta.inputs), "outputs": tensors(&meta.outputs)}),
        get("/v2/models/iris").await
    );
    assert!(server.shutdown().await);
}

#[tokio::test]
async fn inference_protocol_refusals_name_the_problem_with_the_right_code() {
    let server = start().await;
    let mut client = GrpcInferenceServiceClient::new(channel(&server).await);
    let row = [[5.1, 3.5, 1.4, 0.2]];
    let typed = || infer_request(&row, Encoding::Fp32Contents);
    let with = |f: fn(&mut ModelInferRequest)| {
        let mut request = typed();
        f(&mut request);
        request
    };
    let cases = [
        (
            "unknown model",
            with(|r| r.model_name = "other".to_owned()),
            Code::NotFound,
            "unknown model \"other\": this server serves \"iris\"",
        ),
        (
            "unknown version",
            with(|r| r.model_version = "v9".to_owned()),
            Code::NotFound,
            "model \"iris\" has no version \"v9\": this server serves \"v1.0.0\"",
        ),
        (
            "datatype",
            with(|r| r.inputs[0].datatype = "INT64".to_owned()),
            Code::InvalidArgument,
            "has datatype \"INT64\"; expected \"FP32\" or \"FP64\"",
        ),
        (
            "shape",
            with(|r| r.inputs[0].shape = vec![1, 3]),
            Code::InvalidArgument,
            "has shape [1, 3]; expected [N, 4]",
        ),
        (
            "1-D shape",
            with(|r| r.inputs[0].shape = vec![4]),
            Code::InvalidArgument,
            "has shape [4]; expected [N, 4]",
        ),
        (
            "value count",
            with(|r| r.inputs[0].shape = vec![2, 4]),
            Code::InvalidArgument,
            "has 4 values but shape [2, 4] needs 8",
        ),
        (
            "no input",
            with(|r| r.inputs.clear()),
            Code::InvalidArgument,
            "expected exactly one input tensor",
        ),
        (
            "empty batch",
            with(|r| r.inputs[0].shape = vec![0, 4]),
            Code::InvalidArgument,
            "the batch is empty",
        ),
        (
            "too many rows",
            with(|r| r.inputs[0].shape = vec![2000, 4]),
            Code::ResourceExhausted,
            "the batch has 2000 rows; at most 1024",
        ),
        (
            "values in another field",
            with(|r| r.inputs[0].datatype = "FP64".to_owned()),
            Code::InvalidArgument,
            "so its values go in contents.fp64_contents, but contents.fp32_contents holds values",
        ),
        (
            "raw and typed",
            with(|r| r.raw_input_contents = vec![vec![0; 16]]),
            Code::InvalidArgument,
            "both in contents.fp32_contents and in raw_input_contents",
        ),
        (
            "raw byte length",
            {
                let mut r = infer_request(&row, Encoding::Fp64Raw);
                r.raw_input_contents[0].pop();
                r
            },
            Code::InvalidArgument,
            "has 31 bytes but FP64 shape [1, 4] needs 32",
        ),
        (
            "FP64 out of range",
            {
                let mut r = infer_request(&row, Encoding::Fp64Contents);
                r.inputs[0].contents.as_mut().unwrap().fp64_contents[2] = 1e301;
                r
            },
            Code::InvalidArgument,
            "row 0: feature 2 (petal length) is 1e301, outside the accepted range",
        ),
        (
            "FP64 NaN",
            {
                let mut r = infer_request(&row, Encoding::Fp64Raw);
                r.raw_input_contents[0][..8].copy_from_slice(&f64::NAN.to_le_bytes());
                r
            },
            Code::InvalidArgument,
            "row 0: feature 0 (sepal length) is NaN",
        ),
        (
            "FP32 infinity",
            with(|r| r.inputs[0].contents.as_mut().unwrap().fp32_contents[3] = f32::INFINITY),
            Code::InvalidArgument,
            "feature 3 (petal width) is inf, outside the FP32 range",
        ),
        (
            "unknown output",
            with(|r| {
                r.outputs = vec![InferRequestedOutputTensor {
                    name: "logits".to_owned(),
                    parameters: Default::default(),
                }]
            }),
            Code::InvalidArgument,
            "unknown output \"logits\"",
        ),
    ];
    for (what, request, code, needle) in cases {
        let status = client.model_infer(request).await.unwrap_err();
        assert_refused(what, &status, code, needle);
    }
    let status = client
        .model_ready(ModelReadyRequest {
            name: "other".to_owned(),
            version: String::new(),
        })
        .await
        .unwrap_err();
    assert_refused("model ready", &status, Code::NotFound, "unknown model");
    let status = client
        .model_metadata(ModelMetadataRequest {
            name: "iris".to_owned(),
            version: "v1.1.0".to_owned(),
        })
        .await
        .unwrap_err();
    assert_refused(
        "model metadata",
        &status,
        Code::NotFound,
        "no version \"v1.1.0\"",
    );
    assert!(server.shutdown().await);
}

#[tokio::test]
async fn health_and_readiness_say_draining_once_the_drain_starts() {
    let state = AppState::new(common::load(VERSION));
    let prediction = grpc::prediction::Service::new(state.clone());
    let inference = grpc::inference::Service::new(state.clone());
    use ml_proto::inference::grpc_inference_service_server::GrpcInferenceService as _;
    let health = || async {
        prediction
            .health(Request::new(HealthRequest {}))
            .await
            .unwrap()
            .into_inner()
            .status
    };
    let ready = || async {
        inference
            .server_ready(Request::new(ServerReadyRequest {}))
            .await
            .unwrap()
            .into_inner()
            .ready
    };
    assert_eq!((health().await.as_str(), ready().await), ("ok", true));
    state.drain.start();
    assert_eq!(
        (health().await.as_str(), ready().await),
        ("draining", false)
    );
}

#[tokio::test]
async fn grpc_health_is_serving_then_watchers_see_not_serving_when_the_drain_starts() {
    let server = start().await;
    let mut health = HealthClient::new(channel(&server).await);
    for service in [
        "",
        "prediction.PredictionService",
        "inference.GRPCInferenceService",
    ] {
        let answer = health
            .check(HealthCheckRequest {
                service: service.to_owned(),
            })
            .await
            .unwrap();
        assert_eq!(
            answer.metadata().get(MODEL_VERSION_METADATA).unwrap(),
            VERSION
        );
        assert_eq!(
            answer.into_inner().status(),
            ServingStatus::Serving,
            "{service:?}"
        );
    }
    let unknown = health
        .check(HealthCheckRequest {
            service: "nope.Service".to_owned(),
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound);

    let mut watches = Vec::new();
    for service in ["", "prediction.PredictionService"] {
        let mut stream = health
            .watch(HealthCheckRequest {
                service: service.to_owned(),
            })
            .await
            .unwrap()
            .into_inner();
        let first = stream.next().await.unwrap().unwrap();
        assert_eq!(first.status(), ServingStatus::Serving);
        watches.push(stream);
    }

    let task = server.begin_shutdown();
    for mut stream in watches {
        let next = tokio::time::timeout(WAIT, stream.next())
            .await
            .expect("the watcher hears of the drain");
        assert_eq!(next.unwrap().unwrap().status(), ServingStatus::NotServing);
        // Then the stream ends, so it does not hold the drain open.
        let end = tokio::time::timeout(WAIT, stream.next()).await.unwrap();
        assert!(end.is_none(), "{end:?}");
    }
    let drained = tokio::time::timeout(WAIT, task)
        .await
        .expect("the server exits")
        .unwrap()
        .unwrap();
    assert!(drained, "every connection finished in time");
}

#[tokio::test]
async fn reflection_lists_the_services_in_v1_and_v1alpha() {
    let server = start().await;
    let expected = [
        "prediction.PredictionService",
        "inference.GRPCInferenceService",
        "grpc.health.v1.Health",
    ];
    {
        use tonic_reflection::pb::v1::{
            server_reflection_client::ServerReflectionClient,
            server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
            ServerReflectionRequest,
        };
        let mut client = ServerReflectionClient::new(channel(&server).await);
        let requests = [
            MessageRequest::ListServices(String::new()),
            MessageRequest::FileContainingSymbol("inference.ModelInferRequest".to_owned()),
        ]
        .map(|m| ServerReflectionRequest {
            host: String::new(),
            message_request: Some(m),
        });
        let mut answers = client
            .server_reflection_info(tokio_stream::iter(requests))
            .await
            .unwrap()
            .into_inner();
        let Some(MessageResponse::ListServicesResponse(list)) =
            answers.next().await.unwrap().unwrap().message_response
        else {
            panic!("not a list of services");
        };
        let names: Vec<&str> = list.service.iter().map(|s| s.name.as_str()).collect();
        for name in expected
            .iter()
            .chain(&["grpc.reflection.v1.ServerReflection"])
        {
            assert!(names.contains(name), "{name} not in {names:?}");
        }
        let Some(MessageResponse::FileDescriptorResponse(files)) =
            answers.next().await.unwrap().unwrap().message_response
        else {
            panic!("not a file descriptor");
        };
        let file =
            prost_types::FileDescriptorProto::decode(files.file_descriptor_proto[0].as_slice())
                .unwrap();
        assert_eq!(file.package(), "inference");
    }
    {
        use tonic_reflection::pb::v1alpha::{
            server_reflection_client::ServerReflectionClient,
            server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
            ServerReflectionRequest,
        };
        let mut client = ServerReflectionClient::new(channel(&server).await);
        let request = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        };
        let mut answers = client
            .server_reflection_info(tokio_stream::once(request))
            .await
            .unwrap()
            .into_inner();
        let Some(MessageResponse::ListServicesResponse(list)) =
            answers.next().await.unwrap().unwrap().message_response
        else {
            panic!("not a list of services");
        };
        let names: Vec<&str> = list.service.iter().map(|s| s.name.as_str()).collect();
        for name in expected {
            assert!(names.contains(&name), "{name} not in {names:?}");
        }
    }
    assert!(server.shutdown().await);
}

/// A Predict call written by hand on its own HTTP/2 connection, so that the test decides when
/// its request body is complete: until then the RPC is in flight in the service.
struct SlowPredict {
    send: h2::SendStream<Bytes>,
    response: h2::client::ResponseFuture,
    rest: Bytes,
}

impl SlowPredict {
    /// Opens the call and sends the headers and the first bytes of the request.
    async fn start(addr: SocketAddr, features: [f32; 4]) -> SlowPredict {
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (client, connection) = h2::client::handshake(tcp).await.unwrap();
        tokio::spawn(connection);
        let mut client = client.ready().await.unwrap();
        let request = http::Request::post(format!("http://{addr}{PREDICT}"))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(())
            .unwrap();
        let (response, mut send) = client.send_request(request, false).unwrap();
        let message = predict_request(&features).encode_to_vec();
        let mut framed = vec![0u8];
        framed.extend_from_slice(&(message.len() as u32).to_be_bytes());
        framed.extend_from_slice(&message);
        let mut framed = Bytes::from(framed);
        let rest = framed.split_off(7);
        send.send_data(framed, false).unwrap();
        SlowPredict {
            send,
            response,
            rest,
        }
    }

    /// Sends the rest of the request and reads the answer: the message, the response headers
    /// and the trailers.
    async fn finish(mut self) -> (PredictResponse, HeaderMap, HeaderMap) {
        self.send.send_data(self.rest, true).unwrap();
        let response = self.response.await.expect("a response");
        assert_eq!(response.status(), 200);
        let headers = response.headers().clone();
        let mut body = response.into_body();
        let mut data = Vec::new();
        while let Some(chunk) = body.data().await {
            let chunk = chunk.unwrap();
            let _ = body.flow_control().release_capacity(chunk.len());
            data.extend_from_slice(&chunk);
        }
        let trailers = body.trailers().await.unwrap().unwrap_or_default();
        let message = PredictResponse::decode(&data[5..]).expect("a PredictResponse");
        (message, headers, trailers)
    }
}

#[tokio::test]
async fn an_rpc_in_flight_when_the_drain_starts_completes_and_new_connections_are_refused() {
    let server = start().await;
    let (http_addr, grpc_addr) = (server.addr, server.grpc_addr);
    let call = SlowPredict::start(grpc_addr, fp32(GOLDEN[2].0)).await;
    // In flight: the RPC and the scrape asking.
    eventually("the RPC counted in flight", move || async move {
        let text = reqwest::get(format!("http://{http_addr}/metrics"))
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        (metric(&text, "http_requests_in_flight") == Some(2)).then_some(())
    })
    .await;

    let task = server.begin_shutdown();
    eventually("both listeners closed", move || async move {
        (TcpStream::connect(grpc_addr).is_err() && TcpStream::connect(http_addr).is_err())
            .then_some(())
    })
    .await;
    assert!(!task.is_finished(), "the drain waits for the RPC");

    let (answer, headers, trailers) = call.finish().await;
    assert_eq!((answer.prediction, answer.label.as_str()), (2, "virginica"));
    assert_eq!(headers[MODEL_VERSION_METADATA], VERSION);
    assert_eq!(trailers["grpc-status"], "0");
    let drained = tokio::time::timeout(WAIT, task)
        .await
        .expect("the server exits")
        .unwrap()
        .unwrap();
    assert!(drained, "the RPC finished within the drain timeout");
}

#[tokio::test]
async fn a_stuck_rpc_cannot_hold_the_drain_past_its_timeout() {
    let server = TestServer::start(VERSION, Duration::from_millis(300)).await;
    let http_addr = server.addr;
    let _stuck = SlowPredict::start(server.grpc_addr, [1.0; 4]).await;
    eventually("the RPC counted in flight", move || async move {
        let text = reqwest::get(format!("http://{http_addr}/metrics"))
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        (metric(&text, "http_requests_in_flight") == Some(2)).then_some(())
    })
    .await;
    let drained = tokio::time::timeout(WAIT, server.shutdown())
        .await
        .expect("shutdown returns");
    assert!(!drained, "the stuck RPC cannot have finished");
}

#[test]
fn the_binary_serves_grpc_on_grpc_port_and_logs_both_addresses() {
    let (mut process, addr) = spawn_service(&[
        ("MODEL_PATH", model_dir(VERSION).display().to_string()),
        ("MODEL_VERSION", VERSION.to_owned()),
    ]);
    let line = process.seen.last().unwrap().clone();
    let grpc_addr: SocketAddr = line
        .split_whitespace()
        .find_map(|word| word.strip_prefix("grpc_addr="))
        .unwrap_or_else(|| panic!("no grpc_addr= in {line:?}"))
        .parse()
        .unwrap();
    assert_ne!(grpc_addr.port(), addr.port());
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let answer = runtime.block_on(async {
        let channel = Channel::from_shared(format!("http://{grpc_addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        PredictionServiceClient::new(channel)
            .predict(predict_request(&fp32(GOLDEN[1].0)))
            .await
            .unwrap()
            .into_inner()
    });
    assert_eq!(answer.label, "versicolor");
    process.terminate();
    let status = process.wait_exit(WAIT);
    assert!(status.success(), "exit status {status}");
    process.wait_for_line("all requests finished", WAIT);
}

//! The shadow journal on a real server: requests carrying `X-Shadow-Id` on the prediction
//! routes are recorded with what they were answered, and `GET /_shadow/records` pages them.

mod common;

use std::time::Duration;

use common::{test_config, TestServer, GOLDEN};
use reqwest::header::HeaderValue;
use serde_json::{json, Value};
use service::config::Config;

const VERSION: &str = "v1.0.0";

async fn start() -> TestServer {
    TestServer::start(VERSION, Duration::from_secs(5)).await
}

async fn start_with_records(records: usize) -> TestServer {
    TestServer::start_with(Config {
        shadow_journal_records: records,
        ..test_config(VERSION)
    })
    .await
}

/// POSTs `body` to `path`, with `X-Shadow-Id: shadow_id` when given; the status and the body.
async fn post(
    server: &TestServer,
    path: &str,
    shadow_id: Option<HeaderValue>,
    body: &Value,
) -> (u16, Value) {
    let mut request = reqwest::Client::new().post(server.url(path)).json(body);
    if let Some(id) = shadow_id {
        request = request.header("x-shadow-id", id);
    }
    let response = request.send().await.expect("the server answers");
    let status = response.status().as_u16();
    (status, response.json().await.expect("a JSON body"))
}

fn id(value: &str) -> Option<HeaderValue> {
    Some(HeaderValue::from_str(value).unwrap())
}

/// `GET /_shadow/records?{query}`: the status and the body.
async fn read(server: &TestServer, query: &str) -> (u16, Value) {
    let response = reqwest::get(server.url(&format!("/_shadow/records?{query}")))
        .await
        .expect("the server answers");
    let status = response.status().as_u16();
    (status, response.json().await.expect("a JSON body"))
}

/// The page at `query`, which must be answered with 200.
async fn page(server: &TestServer, query: &str) -> Value {
    let (status, body) = read(server, query).await;
    assert_eq!(status, 200, "{body}");
    body
}

fn seqs(page: &Value) -> Vec<u64> {
    page["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["seq"].as_u64().unwrap())
        .collect()
}

fn features(row: [f64; 4]) -> Value {
    json!({ "features": row })
}

#[tokio::test]
async fn requests_without_a_shadow_id_record_nothing() {
    let server = start().await;
    let (status, _) = post(&server, "/predict", None, &features(GOLDEN[0].0)).await;
    assert_eq!(status, 200);
    let infer = json!({"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP64", "data": GOLDEN[1].0}]});
    let (status, _) = post(&server, "/v2/models/iris/infer", None, &infer).await;
    assert_eq!(status, 200);

    let body = page(&server, "").await;
    assert_eq!(body["version"], VERSION);
    assert_eq!(body["records"], json!([]));
    assert_eq!(
        (
            &body["next"],
            &body["oldest"],
            &body["dropped"],
            &body["last"]
        ),
        (&json!(0), &json!(1), &json!(0), &json!(0))
    );
    assert_eq!(body["capacity"], 50_000);
    assert!(!body["instance"].as_str().unwrap().is_empty());
    server.shutdown().await;
}

#[tokio::test]
async fn single_and_batch_predictions_are_recorded_as_answered() {
    let server = start().await;
    let (status, one) = post(&server, "/predict", id("s-1"), &features(GOLDEN[0].0)).await;
    assert_eq!(status, 200);
    let rows: Vec<[f64; 4]> = GOLDEN.iter().map(|g| g.0).collect();
    let (status, batch) = post(
        &server,
        "/predict",
        id("s-2"),
        &json!({ "instances": rows }),
    )
    .await;
    assert_eq!(status, 200);

    let body = page(&server, "").await;
    assert_eq!(seqs(&body), [1, 2]);
    assert_eq!((&body["next"], &body["last"]), (&json!(2), &json!(2)));
    let [single, many] = body["records"].as_array().unwrap().as_slice() else {
        panic!("two records: {body}");
    };
    assert_eq!(single["id"], "s-1");
    assert_eq!(single["route"], "/predict");
    assert_eq!(single["status"], 200);
    assert!(single["latency_us"].is_u64(), "{single}");
    assert_eq!(single["inputs"], json!([GOLDEN[0].0]));
    assert_eq!(single["classes"], json!([one["class"]]));
    assert_eq!(single["probabilities"], json!([one["probabilities"]]));

    assert_eq!((&many["id"], &many["status"]), (&json!("s-2"), &json!(200)));
    assert_eq!(many["inputs"], json!(rows));
    let predictions = batch["predictions"].as_array().unwrap();
    let classes: Vec<&Value> = predictions.iter().map(|p| &p["class"]).collect();
    let probabilities: Vec<&Value> = predictions.iter().map(|p| &p["probabilities"]).collect();
    assert_eq!(many["classes"], json!(classes));
    assert_eq!(many["probabilities"], json!(probabilities));
    assert_eq!(many["classes"], json!([0, 1, 2]));
    server.shutdown().await;
}

#[tokio::test]
async fn inference_is_recorded_with_the_rows_the_model_saw() {
    let server = start().await;
    // FP32 data is rounded to FP32 before the model sees it; the record says so.
    let infer = json!({
        "inputs": [{"name": "x", "shape": [2, 4], "datatype": "FP32", "data": [[5.1, 3.5, 1.4, 0.2], [6.3, 3.3, 6.0, 2.5]]}],
        "outputs": [{"name": "class"}]
    });
    let (status, answer) = post(&server, "/v2/models/iris/infer", id("v2-1"), &infer).await;
    assert_eq!(status, 200, "{answer}");
    let (status, _) = post(
        &server,
        "/v2/models/iris/versions/v1.0.0/infer",
        id("v2-2"),
        &infer,
    )
    .await;
    assert_eq!(status, 200);
    // A version this color does not serve: the other color may, so the answer is recorded.
    let (status, _) = post(
        &server,
        "/v2/models/iris/versions/v9/infer",
        id("v2-3"),
        &infer,
    )
    .await;
    assert_eq!(status, 404);

    let body = page(&server, "").await;
    let records = body["records"].as_array().unwrap();
    assert_eq!(records.len(), 3, "{body}");
    let first = &records[0];
    assert_eq!(first["route"], "/v2/models/{name}/infer");
    let f32s = |row: [f64; 4]| row.map(|v| f64::from(v as f32));
    assert_eq!(
        first["inputs"],
        json!([f32s([5.1, 3.5, 1.4, 0.2]), f32s([6.3, 3.3, 6.0, 2.5])])
    );
    // The answer asked only for the classes; the record keeps the probabilities too.
    assert_eq!(first["classes"], answer["outputs"][0]["data"]);
    assert_eq!(first["classes"], json!([0, 2]));
    let probabilities = first["probabilities"].as_array().unwrap();
    assert_eq!(probabilities.len(), 2);
    for p in probabilities {
        let sum: f64 = p
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .sum();
        assert!((sum - 1.0).abs() < 1e-9, "{p}");
    }
    assert_eq!(
        records[1]["route"],
        "/v2/models/{name}/versions/{version}/infer"
    );
    assert_eq!(records[1]["inputs"], first["inputs"]);
    assert_eq!(
        (&records[2]["id"], &records[2]["status"]),
        (&json!("v2-3"), &json!(404))
    );
    assert_eq!(records[2]["inputs"], json!([]));
    server.shutdown().await;
}

#[tokio::test]
async fn an_error_answer_is_recorded_with_its_status_and_no_rows() {
    let server = start().await;
    let (status, _) = post(
        &server,
        "/predict",
        id("bad-1"),
        &json!({"features": [1, 2, 3]}),
    )
    .await;
    assert_eq!(status, 422);
    let (status, _) = post(
        &server,
        "/predict",
        id("bad-2"),
        &json!({"features": [2e300, 2, 3, 4]}),
    )
    .await;
    assert_eq!(status, 422);

    let body = page(&server, "").await;
    let records = body["records"].as_array().unwrap();
    assert_eq!(records.len(), 2, "{body}");
    for (record, id) in records.iter().zip(["bad-1", "bad-2"]) {
        assert_eq!(record["id"], id);
        assert_eq!(record["status"], 422);
        assert_eq!(record["route"], "/predict");
        for field in ["inputs", "classes", "probabilities"] {
            assert_eq!(record[field], json!([]), "{field}");
        }
    }
    server.shutdown().await;
}

#[tokio::test]
async fn unacceptable_shadow_ids_and_other_routes_record_nothing() {
    let server = start().await;
    let row = features(GOLDEN[0].0);
    let bad = [
        HeaderValue::from_str(&"a".repeat(201)).unwrap(),
        HeaderValue::from_bytes("café".as_bytes()).unwrap(),
        HeaderValue::from_static("has space"),
        HeaderValue::from_static(""),
    ];
    for value in bad {
        let (status, _) = post(&server, "/predict", Some(value), &row).await;
        assert_eq!(status, 200);
    }
    // The longest acceptable id is recorded.
    let longest = "a".repeat(200);
    post(&server, "/predict", id(&longest), &row).await;
    // Routes that do not predict are never recorded, the journal's own included.
    let client = reqwest::Client::new();
    for path in ["/health", "/_shadow/records"] {
        let response = client
            .get(server.url(path))
            .header("x-shadow-id", "get-1")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
    }

    let body = page(&server, "").await;
    assert_eq!(seqs(&body), [1], "{body}");
    assert_eq!(body["records"][0]["id"], longest);
    server.shutdown().await;
}

#[tokio::test]
async fn pages_follow_after_and_limit() {
    let server = start().await;
    for i in 1..=5 {
        post(
            &server,
            "/predict",
            id(&format!("p-{i}")),
            &features(GOLDEN[0].0),
        )
        .await;
    }
    let first = page(&server, "limit=2").await;
    assert_eq!(seqs(&first), [1, 2]);
    assert_eq!((&first["next"], &first["last"]), (&json!(2), &json!(5)));
    let second = page(&server, "after=2&limit=2").await;
    assert_eq!(seqs(&second), [3, 4]);
    assert_eq!(second["records"][0]["id"], "p-3");
    let third = page(&server, "after=4&limit=2").await;
    assert_eq!((seqs(&third), &third["next"]), (vec![5], &json!(5)));
    let done = page(&server, "after=5").await;
    assert_eq!((seqs(&done), &done["next"]), (vec![], &json!(5)));
    // A mark: nothing answered, `last` says where the journal is.
    let mark = page(&server, "after=0&limit=0").await;
    assert_eq!(
        (seqs(&mark), &mark["next"], &mark["last"]),
        (vec![], &json!(0), &json!(5))
    );
    let ahead = page(&server, "after=18446744073709551615").await;
    assert_eq!(ahead["next"], json!(u64::MAX));
    assert_eq!(seqs(&ahead), Vec::<u64>::new());
    // The largest limit is allowed.
    assert_eq!(seqs(&page(&server, "limit=10000").await).len(), 5);
    server.shutdown().await;
}

#[tokio::test]
async fn a_small_journal_evicts_the_oldest_and_says_so() {
    let server = start_with_records(5).await;
    for i in 1..=8 {
        post(
            &server,
            "/predict",
            id(&format!("e-{i}")),
            &features(GOLDEN[1].0),
        )
        .await;
    }
    let body = page(&server, "").await;
    assert_eq!(seqs(&body), [4, 5, 6, 7, 8]);
    assert_eq!(body["records"][0]["id"], "e-4");
    assert_eq!(
        (
            &body["oldest"],
            &body["dropped"],
            &body["last"],
            &body["next"]
        ),
        (&json!(4), &json!(3), &json!(8), &json!(8))
    );
    assert_eq!(body["capacity"], 5);
    // A caller that had read up to 1 gets what is left, from the oldest: the gap is 2..=3.
    let body = page(&server, "after=1&limit=2").await;
    assert_eq!((seqs(&body), &body["next"]), (vec![4, 5], &json!(5)));
    server.shutdown().await;
}

#[tokio::test]
async fn a_journal_of_zero_records_nothing() {
    let server = start_with_records(0).await;
    let (status, _) = post(&server, "/predict", id("z-1"), &features(GOLDEN[2].0)).await;
    assert_eq!(status, 200);
    let body = page(&server, "").await;
    assert_eq!(body["records"], json!([]));
    assert_eq!((&body["capacity"], &body["last"]), (&json!(0), &json!(0)));
    server.shutdown().await;
}

#[tokio::test]
async fn bad_query_parameters_get_400_with_a_message() {
    let server = start().await;
    for (query, needle) in [
        (
            "limit=10001",
            "limit=\"10001\" is not a whole number from 0 to 10000",
        ),
        ("limit=ten", "limit=\"ten\""),
        ("after=-1", "after=\"-1\" is not a whole number"),
        ("after=", "after=\"\""),
        ("after=1.5", "or 0 for all"),
        (
            "after=18446744073709551616",
            "from 0 to 18446744073709551615",
        ),
        ("after=1&after=2", "invalid query"),
    ] {
        let (status, body) = read(&server, query).await;
        assert_eq!(status, 400, "{query}: {body}");
        let error = body["error"].as_str().unwrap();
        assert!(error.contains(needle), "{query}: {error}");
    }
    server.shutdown().await;
}

#[tokio::test]
async fn reading_the_journal_is_counted_under_its_route() {
    let server = start().await;
    page(&server, "").await;
    let text = reqwest::get(server.url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        text.contains("http_requests_total{route=\"/_shadow/records\",status=\"200\"} 1"),
        "{text}"
    );
    server.shutdown().await;
}

/// A gRPC request carrying `x-shadow-id` metadata.
fn shadowed<T>(message: T, shadow_id: Option<&str>) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if let Some(id) = shadow_id {
        request
            .metadata_mut()
            .insert("x-shadow-id", id.parse().unwrap());
    }
    request
}

#[tokio::test]
async fn grpc_predictions_are_recorded_like_http_ones() {
    use ml_proto::{
        inference::{
            grpc_inference_service_client::GrpcInferenceServiceClient,
            model_infer_request::InferInputTensor, InferTensorContents, ModelInferRequest,
        },
        prediction::{
            prediction_service_client::PredictionServiceClient, HealthRequest, PredictBatchRequest,
            PredictRequest,
        },
    };
    let fp32 = |row: [f64; 4]| row.map(|v| v as f32).to_vec();
    let server = start().await;
    let channel = tonic::transport::Channel::from_shared(server.grpc_url())
        .unwrap()
        .connect()
        .await
        .expect("connect to the gRPC port");
    let mut prediction = PredictionServiceClient::new(channel.clone());
    let mut inference = GrpcInferenceServiceClient::new(channel);

    let one = prediction
        .predict(shadowed(
            PredictRequest {
                features: fp32(GOLDEN[2].0),
            },
            Some("g-1"),
        ))
        .await
        .expect("Predict")
        .into_inner();
    let rows: Vec<PredictRequest> = GOLDEN
        .iter()
        .map(|g| PredictRequest {
            features: fp32(g.0),
        })
        .collect();
    let batch = prediction
        .predict_batch(shadowed(PredictBatchRequest { rows }, Some("g-2")))
        .await
        .expect("PredictBatch")
        .into_inner();
    let infer = ModelInferRequest {
        model_name: "iris".to_owned(),
        inputs: vec![InferInputTensor {
            name: "input-0".to_owned(),
            datatype: "FP64".to_owned(),
            shape: vec![1, 4],
            contents: Some(InferTensorContents {
                fp64_contents: GOLDEN[1].0.to_vec(),
                ..Default::default()
            }),
            ..Default::default()
        }],
        ..Default::default()
    };
    inference
        .model_infer(shadowed(infer, Some("g-3")))
        .await
        .expect("ModelInfer");
    // A refusal is recorded with its code's HTTP status and no rows.
    let refused = prediction
        .predict(shadowed(
            PredictRequest {
                features: vec![1.0],
            },
            Some("g-4"),
        ))
        .await
        .expect_err("three features too few");
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    // Not recorded: a method that does not predict, a call without an id, a bad id.
    prediction
        .health(shadowed(HealthRequest {}, Some("g-5")))
        .await
        .expect("Health");
    let plain = PredictRequest {
        features: fp32(GOLDEN[0].0),
    };
    prediction
        .predict(shadowed(plain.clone(), None))
        .await
        .unwrap();
    prediction
        .predict(shadowed(plain, Some("a b")))
        .await
        .unwrap();

    let body = page(&server, "").await;
    let records = body["records"].as_array().unwrap();
    let ids: Vec<&str> = records.iter().map(|r| r["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["g-1", "g-2", "g-3", "g-4"], "{body}");
    let routes: Vec<&str> = records
        .iter()
        .map(|r| r["route"].as_str().unwrap())
        .collect();
    assert_eq!(
        routes,
        [
            "/prediction.PredictionService/Predict",
            "/prediction.PredictionService/PredictBatch",
            "/inference.GRPCInferenceService/ModelInfer",
            "/prediction.PredictionService/Predict",
        ]
    );
    let statuses: Vec<u64> = records
        .iter()
        .map(|r| r["status"].as_u64().unwrap())
        .collect();
    assert_eq!(statuses, [200, 200, 200, 400]);
    // The rows as the model saw them: FP32 features read into FP64.
    let seen = |row: [f64; 4]| json!(row.map(|v| v as f32 as f64));
    assert_eq!(records[0]["inputs"], json!([seen(GOLDEN[2].0)]));
    assert_eq!(records[0]["classes"], json!([one.prediction]));
    assert_eq!(records[1]["classes"], json!([0, 1, 2]));
    assert_eq!(
        records[1]["inputs"],
        json!(GOLDEN.iter().map(|g| seen(g.0)).collect::<Vec<_>>())
    );
    assert_eq!(batch.predictions.len(), 3);
    assert_eq!(records[2]["inputs"], json!([GOLDEN[1].0]));
    assert_eq!(records[2]["classes"], json!([1]));
    assert_eq!(records[3]["inputs"], json!([]));
    server.shutdown().await;
}

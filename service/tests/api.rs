//! Router tests: every endpoint through `tower::ServiceExt::oneshot`, no socket.

mod common;

use common::{app, get, get_with, post_json, request, GOLDEN, VERSIONS};
use serde_json::{json, Value};

#[tokio::test]
async fn health_reports_each_versions_own_version() {
    for version in VERSIONS {
        let answer = get(&app(version), "/health").await;
        assert_eq!(answer.status, 200);
        let body = answer.json();
        assert_eq!(body["status"], "ok");
        assert_eq!(body["version"], version);
        assert_eq!(answer.header("x-model-version"), Some(version));
    }
}

#[tokio::test]
async fn golden_rows_are_classified_correctly_by_both_versions() {
    for version in VERSIONS {
        let app = app(version);
        for (features, class, label) in GOLDEN {
            let answer = post_json(
                &app,
                "/predict",
                json!({ "features": features }).to_string(),
            )
            .await;
            assert_eq!(answer.status, 200, "{version}: {}", answer.text());
            let body = answer.json();
            assert_eq!(body["class"], class, "{version} {features:?}");
            assert_eq!(body["label"], label);
            assert_eq!(body["version"], version);
            let p: Vec<f64> = serde_json::from_value(body["probabilities"].clone()).unwrap();
            assert_eq!(p.len(), 3);
            assert!((p.iter().sum::<f64>() - 1.0).abs() < 1e-9, "{p:?}");
            assert!(p.iter().all(|&x| (0.0..=1.0).contains(&x)));
            let argmax = (0..3).max_by(|&a, &b| p[a].total_cmp(&p[b])).unwrap();
            assert_eq!(argmax, class);
        }
    }
}

#[tokio::test]
async fn a_batch_answers_one_prediction_per_row_in_order() {
    let app = app("v1.1.0");
    let rows: Vec<[f64; 4]> = GOLDEN.iter().map(|g| g.0).collect();
    let answer = post_json(&app, "/predict", json!({ "instances": rows }).to_string()).await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    let body = answer.json();
    assert_eq!(body["version"], "v1.1.0");
    let predictions = body["predictions"].as_array().unwrap();
    assert_eq!(predictions.len(), 3);
    for (p, (_, class, label)) in predictions.iter().zip(GOLDEN) {
        assert_eq!(p["class"], class);
        assert_eq!(p["label"], label);
    }
}

/// Each bad request, its expected status and a phrase its error must contain.
#[tokio::test]
async fn bad_inputs_get_4xx_json_errors_that_say_what_was_wrong() {
    let too_many_rows = json!({ "instances": vec![[5.1, 3.5, 1.4, 0.2]; 1025] }).to_string();
    let huge_body = format!(
        "{{\"features\":[1,2,3,4],\"pad\":\"{}\"}}",
        "x".repeat(1024 * 1024 + 10)
    );
    let cases: Vec<(&str, String, &str, u16, &str)> = vec![
        (
            "too few features",
            r#"{"features":[1,2]}"#.into(),
            "application/json",
            422,
            "expected 4 features",
        ),
        (
            "too many features",
            r#"{"features":[1,2,3,4,5]}"#.into(),
            "application/json",
            422,
            "got 5",
        ),
        (
            "a string feature",
            r#"{"features":[1,2,"x",4]}"#.into(),
            "application/json",
            422,
            "invalid type: string",
        ),
        (
            "a null feature",
            r#"{"features":[null,1,2,3]}"#.into(),
            "application/json",
            422,
            "invalid type: null",
        ),
        (
            "features not an array",
            r#"{"features":"abc"}"#.into(),
            "application/json",
            422,
            "invalid type",
        ),
        (
            "an overflowing number",
            r#"{"features":[1,2,3,1e999]}"#.into(),
            "application/json",
            400,
            "number out of range",
        ),
        (
            "NaN is not JSON",
            r#"{"features":[NaN,1,2,3]}"#.into(),
            "application/json",
            400,
            "malformed JSON",
        ),
        (
            "malformed JSON",
            r#"{"features":"#.into(),
            "application/json",
            400,
            "malformed JSON",
        ),
        ("empty body", String::new(), "application/json", 400, "EOF"),
        (
            "neither field",
            "{}".into(),
            "application/json",
            422,
            "expected \"features\"",
        ),
        (
            "both fields",
            r#"{"features":[1,2,3,4],"instances":[[1,2,3,4]]}"#.into(),
            "application/json",
            422,
            "not both",
        ),
        (
            "empty batch",
            r#"{"instances":[]}"#.into(),
            "application/json",
            422,
            "empty",
        ),
        (
            "a bad row in a batch",
            r#"{"instances":[[1,2,3,4],[1]]}"#.into(),
            "application/json",
            422,
            "got 1",
        ),
        (
            "oversized batch",
            too_many_rows,
            "application/json",
            413,
            "at most 1024",
        ),
        (
            "oversized body",
            huge_body,
            "application/json",
            413,
            "larger than the limit",
        ),
        (
            "a JSON array body",
            "[1,2,3,4]".into(),
            "application/json",
            422,
            "invalid type",
        ),
        (
            "wrong content type",
            r#"{"features":[1,2,3,4]}"#.into(),
            "text/plain",
            415,
            "Content-Type",
        ),
    ];
    let app = app("v1.0.0");
    for (name, body, content_type, status, phrase) in cases {
        let answer = request(
            &app,
            "POST",
            "/predict",
            &[("content-type", content_type)],
            body,
        )
        .await;
        assert_eq!(answer.status, status, "{name}: {}", answer.text());
        assert_eq!(
            answer.header("content-type"),
            Some("application/json"),
            "{name}"
        );
        assert_eq!(answer.header("x-model-version"), Some("v1.0.0"), "{name}");
        let error = answer.json()["error"].as_str().map(str::to_owned);
        let error = error.unwrap_or_else(|| panic!("{name}: no error string in {}", answer.text()));
        assert!(
            error.contains(phrase),
            "{name}: {error:?} should contain {phrase:?}"
        );
    }
    let answer = request(&app, "POST", "/predict", &[], "{}").await;
    assert_eq!(answer.status, 415, "no content type at all");
}

#[tokio::test]
async fn unknown_routes_and_methods_answer_json() {
    let app = app("v1.0.0");
    let answer = get(&app, "/nope").await;
    assert_eq!(answer.status, 404);
    assert!(answer.json()["error"].as_str().unwrap().contains("/nope"));
    assert_eq!(answer.header("x-model-version"), Some("v1.0.0"));
    let answer = get(&app, "/predict").await;
    assert_eq!(answer.status, 405);
    assert!(answer.json()["error"].as_str().unwrap().contains("GET"));
}

#[tokio::test]
async fn request_ids_are_echoed_or_generated() {
    let app = app("v1.0.0");
    let echoed = get_with(&app, "/health", &[("x-request-id", "abc-123")]).await;
    assert_eq!(echoed.header("x-request-id"), Some("abc-123"));
    let first = get(&app, "/health")
        .await
        .header("x-request-id")
        .map(str::to_owned)
        .expect("generated");
    let second = get(&app, "/health")
        .await
        .header("x-request-id")
        .map(str::to_owned)
        .expect("generated");
    assert_ne!(first, second);
    let replaced = get_with(&app, "/health", &[("x-request-id", "has space")]).await;
    assert_ne!(replaced.header("x-request-id"), Some("has space"));
}

#[tokio::test]
async fn inference_protocol_health_and_metadata() {
    let app = app("v1.1.0");
    assert_eq!(
        get(&app, "/v2/health/live").await.json(),
        json!({"live": true})
    );
    assert_eq!(
        get(&app, "/v2/health/ready").await.json(),
        json!({"ready": true})
    );
    let server = get(&app, "/v2").await.json();
    assert_eq!(server["name"], "ml-service");
    assert!(server["extensions"].is_array());
    for uri in ["/v2/models/iris", "/v2/models/iris/versions/v1.1.0"] {
        let meta = get(&app, uri).await;
        assert_eq!(meta.status, 200, "{uri}");
        let meta = meta.json();
        assert_eq!(meta["name"], "iris");
        assert_eq!(meta["versions"], json!(["v1.1.0"]));
        assert_eq!(
            meta["inputs"],
            json!([{"name": "input-0", "datatype": "FP32", "shape": [-1, 4]}])
        );
        assert_eq!(
            meta["outputs"][0],
            json!({"name": "class", "datatype": "INT64", "shape": [-1]})
        );
        assert_eq!(
            meta["outputs"][1],
            json!({"name": "probabilities", "datatype": "FP64", "shape": [-1, 3]})
        );
    }
    let ready = get(&app, "/v2/models/iris/ready").await;
    assert_eq!(
        (ready.status, ready.json()),
        (200, json!({"name": "iris", "ready": true}))
    );
    assert_eq!(
        get(&app, "/v2/models/iris/versions/v1.1.0/ready")
            .await
            .status,
        200
    );
    assert_eq!(get(&app, "/v2/models/other").await.status, 404);
    assert_eq!(get(&app, "/v2/models/other/ready").await.status, 404);
    assert_eq!(
        get(&app, "/v2/models/iris/versions/v1.0.0").await.status,
        404
    );
}

#[tokio::test]
async fn inference_protocol_infer_follows_the_protocol_shapes() {
    let app = app("v1.0.0");
    let rows: Vec<[f64; 4]> = GOLDEN.iter().map(|g| g.0).collect();
    let flat: Vec<f64> = rows.iter().flatten().copied().collect();
    for (uri, data) in [
        ("/v2/models/iris/infer", json!(flat)),
        ("/v2/models/iris/versions/v1.0.0/infer", json!(rows)),
    ] {
        let request = json!({
            "id": "req-7",
            "inputs": [{"name": "input-0", "shape": [3, 4], "datatype": "FP32", "data": data}]
        });
        let answer = post_json(&app, uri, request.to_string()).await;
        assert_eq!(answer.status, 200, "{uri}: {}", answer.text());
        let body = answer.json();
        assert_eq!(body["model_name"], "iris");
        assert_eq!(body["model_version"], "v1.0.0");
        assert_eq!(body["id"], "req-7");
        let outputs = body["outputs"].as_array().unwrap();
        assert_eq!(outputs.len(), 2);
        assert_eq!(outputs[0]["name"], "class");
        assert_eq!(outputs[0]["datatype"], "INT64");
        assert_eq!(outputs[0]["shape"], json!([3]));
        assert_eq!(outputs[0]["data"], json!([0, 1, 2]));
        assert_eq!(outputs[1]["name"], "probabilities");
        assert_eq!(outputs[1]["datatype"], "FP64");
        assert_eq!(outputs[1]["shape"], json!([3, 3]));
        let p: Vec<f64> = serde_json::from_value(outputs[1]["data"].clone()).unwrap();
        for row in p.chunks(3) {
            assert!((row.iter().sum::<f64>() - 1.0).abs() < 1e-9);
        }
    }
    let only_class = json!({
        "inputs": [{"name": "input-0", "shape": [1, 4], "datatype": "FP64", "data": [5.1, 3.5, 1.4, 0.2]}],
        "outputs": [{"name": "class"}]
    });
    let body = post_json(&app, "/v2/models/iris/infer", only_class.to_string())
        .await
        .json();
    assert_eq!(
        body["outputs"],
        json!([{"name": "class", "shape": [1], "datatype": "INT64", "data": [0]}])
    );
    assert!(
        body.get("id").is_none(),
        "no id in the request, none in the answer"
    );
}

#[tokio::test]
async fn inference_protocol_bad_requests() {
    let app = app("v1.0.0");
    let tensor = |shape: Value, datatype: &str, data: Value| {
        json!({"inputs": [{"name": "input-0", "shape": shape, "datatype": datatype, "data": data}]})
            .to_string()
    };
    let cases = [
        (
            "/v2/models/other/infer",
            tensor(json!([1, 4]), "FP32", json!([1, 2, 3, 4])),
            404,
            "unknown model",
        ),
        (
            "/v2/models/iris/versions/v9/infer",
            tensor(json!([1, 4]), "FP32", json!([1, 2, 3, 4])),
            404,
            "no version",
        ),
        (
            "/v2/models/iris/infer",
            tensor(json!([1, 4]), "BYTES", json!(["a"])),
            400,
            "datatype",
        ),
        (
            "/v2/models/iris/infer",
            tensor(json!([1, 3]), "FP32", json!([1, 2, 3])),
            400,
            "shape",
        ),
        (
            "/v2/models/iris/infer",
            tensor(json!([2, 4]), "FP32", json!([1, 2, 3, 4])),
            400,
            "needs 8",
        ),
        (
            "/v2/models/iris/infer",
            tensor(json!([0, 4]), "FP32", json!([])),
            422,
            "empty",
        ),
        (
            "/v2/models/iris/infer",
            tensor(json!([2000, 4]), "FP32", json!([])),
            413,
            "at most 1024",
        ),
        (
            "/v2/models/iris/infer",
            json!({"inputs": []}).to_string(),
            400,
            "exactly one input",
        ),
        (
            "/v2/models/iris/infer",
            json!({"outputs": []}).to_string(),
            422,
            "missing field `inputs`",
        ),
        (
            "/v2/models/iris/infer",
            "{".to_owned(),
            400,
            "malformed JSON",
        ),
    ];
    for (uri, body, status, phrase) in cases {
        let answer = post_json(&app, uri, body.clone()).await;
        assert_eq!(answer.status, status, "{uri} {body}: {}", answer.text());
        let error = answer.json()["error"].as_str().unwrap().to_owned();
        assert!(
            error.contains(phrase),
            "{error:?} should contain {phrase:?}"
        );
    }
}

#[tokio::test]
async fn openapi_document_describes_every_route() {
    let app = app("v1.0.0");
    let answer = get(&app, "/openapi.json").await;
    assert_eq!(answer.status, 200);
    let doc = answer.json();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    for route in service::metrics::ROUTES {
        assert!(
            doc["paths"].get(route).is_some(),
            "{route} missing from /openapi.json"
        );
    }
    assert_eq!(
        doc["paths"].as_object().unwrap().len(),
        service::metrics::ROUTES.len()
    );
    for schema in [
        "PredictRequest",
        "PredictResponse",
        "BatchPredictResponse",
        "ErrorBody",
        "InferRequest",
        "InferResponse",
    ] {
        assert!(
            doc["components"]["schemas"].get(schema).is_some(),
            "schema {schema} missing"
        );
    }
}

#[tokio::test]
async fn every_documented_route_is_served() {
    // The other direction: a path in the document that the router does not know would 404.
    let app = app("v1.0.0");
    let doc = get(&app, "/openapi.json").await.json();
    for (path, item) in doc["paths"].as_object().unwrap() {
        let uri = path
            .replace("{name}", "iris")
            .replace("{version}", "v1.0.0");
        for method in item.as_object().unwrap().keys() {
            let json = [("content-type", "application/json")];
            let status = request(&app, &method.to_uppercase(), &uri, &json, "{}")
                .await
                .status;
            assert!(
                status != 404 && status != 405,
                "{method} {uri} answered {status}"
            );
        }
    }
}

#[tokio::test]
async fn metrics_count_requests_predictions_and_carry_the_version() {
    let app = app("v1.1.0");
    for (features, _, _) in GOLDEN {
        post_json(
            &app,
            "/predict",
            json!({ "features": features }).to_string(),
        )
        .await;
    }
    post_json(&app, "/predict", "{".to_owned()).await;
    get(&app, "/nope").await;
    let answer = get(&app, "/metrics").await;
    assert_eq!(answer.status, 200);
    assert!(answer
        .header("content-type")
        .unwrap()
        .starts_with("text/plain"));
    let text = answer.text();
    for line in [
        "http_requests_total{route=\"/predict\",status=\"200\"} 3",
        "http_requests_total{route=\"/predict\",status=\"400\"} 1",
        "http_requests_total{route=\"unmatched\",status=\"404\"} 1",
        "http_request_duration_seconds_count{route=\"/predict\"} 4",
        "http_request_duration_seconds_bucket{route=\"/predict\",le=\"+Inf\"} 4",
        "predictions_total{class=\"0\",label=\"setosa\"} 1",
        "predictions_total{class=\"1\",label=\"versicolor\"} 1",
        "predictions_total{class=\"2\",label=\"virginica\"} 1",
        "http_requests_in_flight 1",
        "# TYPE http_request_duration_seconds histogram",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "missing line {line:?} in:\n{text}"
        );
    }
    assert!(text.contains("model_info{version=\"v1.1.0\""), "{text}");
}

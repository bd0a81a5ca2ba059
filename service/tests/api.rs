//! Router tests: every endpoint through `tower::ServiceExt::oneshot`, no socket.

mod common;

use common::{app, get, get_with, post_json, request, GOLDEN, VERSIONS};
use serde_json::json;

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
async fn a_path_parameter_that_is_not_utf8_gets_a_json_400() {
    let app = app("v1.0.0");
    for uri in [
        "/v2/models/%FF",
        "/v2/models/%FF/ready",
        "/v2/models/iris/versions/%C3%28",
    ] {
        let answer = get(&app, uri).await;
        assert_eq!(answer.status, 400, "{uri}: {}", answer.text());
        assert_eq!(
            answer.header("content-type"),
            Some("application/json"),
            "{uri}"
        );
        let error = answer.json()["error"].as_str().unwrap().to_owned();
        assert!(error.contains("invalid path"), "{uri}: {error}");
    }
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
async fn openapi_document_states_the_rules_the_service_enforces() {
    let doc = get(&app("v1.0.0"), "/openapi.json").await.json();
    let schemas = &doc["components"]["schemas"];
    // An output's data is one array of numbers: integers (classes) are numbers too. A `oneOf`
    // of integers and numbers would match every class array twice, so no answer would be valid.
    assert_eq!(
        schemas["InferOutput"]["properties"]["data"]["items"]["type"],
        "number"
    );
    assert!(schemas.get("OutputData").is_none());
    // `/predict` answers either shape, and says so.
    let answer = &doc["paths"]["/predict"]["post"]["responses"]["200"]["content"]
        ["application/json"]["schema"];
    assert_eq!(answer["$ref"], "#/components/schemas/PredictAnswer");
    let branches: Vec<&str> = schemas["PredictAnswer"]["oneOf"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["$ref"].as_str().unwrap())
        .collect();
    assert_eq!(
        branches,
        [
            "#/components/schemas/PredictResponse",
            "#/components/schemas/BatchPredictResponse"
        ]
    );
    // The ranges the service enforces.
    assert_eq!(schemas["Row"]["items"]["maximum"], json!(1e300));
    assert_eq!(schemas["Row"]["minItems"], 4);
    let fp32 = &schemas["InferInput"]["oneOf"][0]["properties"];
    assert_eq!(fp32["datatype"]["enum"], json!(["FP32"]));
    assert_eq!(
        fp32["data"]["anyOf"][0]["items"]["maximum"],
        json!(f32::MAX as f64)
    );
    // Every status a protocol route can answer is documented (415 and 422 included).
    for path in [
        "/v2/models/{name}/infer",
        "/v2/models/{name}/versions/{version}/infer",
    ] {
        let responses = doc["paths"][path]["post"]["responses"].as_object().unwrap();
        let codes: Vec<&str> = responses.keys().map(String::as_str).collect();
        assert_eq!(codes, ["200", "400", "404", "413", "415", "422"], "{path}");
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

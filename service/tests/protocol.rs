//! The Open Inference Protocol (KServe V2) over REST, through the router: health, metadata,
//! inference shapes, bad requests, and a body without a Content-Type read as JSON.

mod common;

use common::{app, get, post_json, request, GOLDEN};
use serde_json::{json, Value};

#[tokio::test]
async fn the_protocol_reads_a_body_without_content_type_as_json() {
    let app = app("v1.0.0");
    let body = json!({"inputs": [{"name": "input-0", "shape": [1, 4], "datatype": "FP32", "data": GOLDEN[2].0}]})
        .to_string();
    for uri in [
        "/v2/models/iris/infer",
        "/v2/models/iris/versions/v1.0.0/infer",
    ] {
        let answer = request(&app, "POST", uri, &[], body.clone()).await;
        assert_eq!(answer.status, 200, "{uri}: {}", answer.text());
        assert_eq!(answer.json()["outputs"][0]["data"], json!([2]), "{uri}");
        let typed = request(
            &app,
            "POST",
            uri,
            &[("content-type", "text/plain")],
            body.clone(),
        )
        .await;
        assert_eq!(typed.status, 415, "{uri}: an explicit non-JSON type");
        assert!(typed.json()["error"]
            .as_str()
            .unwrap()
            .contains("Content-Type"));
    }
    // `/predict` is this service's own API: it still asks for the header.
    let answer = request(&app, "POST", "/predict", &[], r#"{"features":[1,2,3,4]}"#).await;
    assert_eq!(answer.status, 415);
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

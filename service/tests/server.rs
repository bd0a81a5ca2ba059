//! The service on real sockets: an in-process server on a free port with a real HTTP client,
//! and the real `ml-service` binary: start-up refusals, the healthcheck subcommand, graceful
//! shutdown on SIGTERM with a request in flight, and the requests hyper refuses itself.

mod common;

use std::{
    io::{Read, Write},
    net::{Ipv4Addr, TcpListener, TcpStream},
    path::Path,
    process::Command,
    time::Duration,
};

use common::{
    http_get, model_dir, poll, spawn_service, start_service, wait_exit, TestServer, GOLDEN,
    VERSIONS,
};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(30);

/// Environment variables for one run of the binary.
type Env = Vec<(&'static str, String)>;

#[tokio::test]
async fn both_versions_serve_over_http_and_say_which_version_answered() {
    let client = reqwest::Client::new();
    for version in VERSIONS {
        let server = TestServer::start(version, Duration::from_secs(5)).await;
        let health = client.get(server.url("/health")).send().await.unwrap();
        assert_eq!(health.status(), 200);
        assert_eq!(health.headers()["x-model-version"], version);
        let body: Value = health.json().await.unwrap();
        assert_eq!(body["version"], version);
        for (features, class, label) in GOLDEN {
            let answer = client
                .post(server.url("/predict"))
                .header("x-request-id", "from-the-client")
                .json(&json!({ "features": features }))
                .send()
                .await
                .unwrap();
            assert_eq!(answer.status(), 200);
            assert_eq!(answer.headers()["x-model-version"], version);
            assert_eq!(answer.headers()["x-request-id"], "from-the-client");
            let body: Value = answer.json().await.unwrap();
            assert_eq!(
                (body["class"].as_u64(), body["label"].as_str()),
                (Some(class as u64), Some(label))
            );
        }
        assert!(server.shutdown().await, "drained in time");
    }
}

#[tokio::test]
async fn drain_is_bounded_when_a_request_never_finishes() {
    let server = TestServer::start("v1.0.0", Duration::from_millis(300)).await;
    // A request whose body never arrives keeps its connection busy forever.
    let mut stuck = TcpStream::connect(server.addr).unwrap();
    stuck
        .write_all(b"POST /predict HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{")
        .unwrap();
    let metrics = server.url("/metrics");
    let client = reqwest::Client::new();
    // Wait until the stuck request is inside the service (it and the scrape are in flight).
    let counted = async {
        loop {
            let text = client
                .get(&metrics)
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            if text.lines().any(|l| l == "http_requests_in_flight 2") {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    tokio::time::timeout(WAIT, counted)
        .await
        .expect("the stuck request is counted in flight");
    let drained = tokio::time::timeout(WAIT, server.shutdown())
        .await
        .expect("shutdown returns");
    assert!(!drained, "the stuck request cannot have finished");
}

#[test]
fn sigterm_lets_the_request_in_flight_finish_then_exits_0() {
    let (mut process, addr) = spawn_service(&[
        ("MODEL_PATH", model_dir("v1.0.0").display().to_string()),
        ("MODEL_VERSION", "v1.0.0".to_owned()),
    ]);
    let body = br#"{"features":[7.0,3.2,4.7,1.4]}"#;
    let (head, tail) = body.split_at(10);
    let mut in_flight = TcpStream::connect(addr).unwrap();
    in_flight.set_read_timeout(Some(WAIT)).unwrap();
    write!(
        in_flight,
        "POST /predict HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .unwrap();
    in_flight.write_all(head).unwrap();

    // The request is in flight once the service counts it (beside the scrape asking).
    poll("request counted in flight", WAIT, || {
        let text = http_get(addr, "/metrics").ok()?;
        text.lines()
            .any(|l| l == "http_requests_in_flight 2")
            .then_some(())
    });
    process.terminate();
    process.wait_for_line("shutdown requested", WAIT);
    // New connections are refused now; the one in flight is still served.
    poll("listener closed", WAIT, || {
        TcpStream::connect(addr).is_err().then_some(())
    });
    in_flight.write_all(tail).unwrap();
    let mut response = String::new();
    in_flight.read_to_string(&mut response).unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.contains("\"label\":\"versicolor\""), "{response}");
    assert!(
        response
            .to_ascii_lowercase()
            .contains("x-model-version: v1.0.0"),
        "{response}"
    );

    let status = process.wait_exit(WAIT);
    assert!(status.success(), "exit status {status}");
    process.wait_for_line("all requests finished", WAIT);
}

#[test]
fn healthcheck_subcommand_exits_0_when_healthy_and_1_otherwise() {
    let (_process, addr) =
        spawn_service(&[("MODEL_PATH", model_dir("v1.1.0").display().to_string())]);
    let output = Command::new(env!("CARGO_BIN_EXE_ml-service"))
        .arg("healthcheck")
        .env_clear()
        .env("PORT", addr.port().to_string())
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    assert!(String::from_utf8_lossy(&output.stdout).contains("\"version\":\"v1.1.0\""));

    let closed_port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let output = Command::new(env!("CARGO_BIN_EXE_ml-service"))
        .arg("healthcheck")
        .env_clear()
        .env("PORT", closed_port.to_string())
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    assert!(String::from_utf8_lossy(&output.stderr).contains("cannot connect"));
}

/// Each broken set-up, and a phrase the refusal must contain.
#[test]
fn start_up_is_refused_with_a_clear_reason() {
    let tmp = tempfile::tempdir().unwrap();
    let corrupted = tmp.path().join("corrupted");
    copy_version("v1.0.0", &corrupted);
    let model = corrupted.join("model.json");
    let text = std::fs::read_to_string(&model)
        .unwrap()
        .replacen("0.", "1.", 1);
    std::fs::write(&model, text).unwrap();
    let no_metadata = tmp.path().join("no-metadata");
    copy_version("v1.0.0", &no_metadata);
    std::fs::remove_file(no_metadata.join("metadata.json")).unwrap();

    let v1 = model_dir("v1.0.0").display().to_string();
    let cases: Vec<(&str, Env, &str)> = vec![
        (
            "missing model",
            vec![(
                "MODEL_PATH",
                tmp.path().join("absent").display().to_string(),
            )],
            "not found",
        ),
        (
            "missing metadata",
            vec![("MODEL_PATH", no_metadata.display().to_string())],
            "model metadata not found",
        ),
        (
            "corrupted model",
            vec![("MODEL_PATH", corrupted.display().to_string())],
            "checksum mismatch",
        ),
        (
            "version mismatch",
            vec![
                ("MODEL_PATH", v1.clone()),
                ("MODEL_VERSION", "v1.1.0".to_owned()),
            ],
            "version mismatch: MODEL_VERSION is v1.1.0",
        ),
        (
            "bad port",
            vec![("MODEL_PATH", v1), ("PORT", "eighty".to_owned())],
            "PORT",
        ),
    ];
    for (name, env, phrase) in cases {
        let mut process = start_service(&env);
        let status = wait_exit(&mut process.child, WAIT);
        let mut stderr = String::new();
        process
            .child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut stderr)
            .unwrap();
        assert!(!status.success(), "{name}: started anyway");
        assert!(
            stderr.contains("refusing to start") && stderr.contains(phrase),
            "{name}: {stderr}"
        );
    }
}

#[test]
fn model_path_may_name_the_model_file() {
    let (_process, addr) = spawn_service(&[(
        "MODEL_PATH",
        model_dir("v1.1.0").join("model.json").display().to_string(),
    )]);
    let body = http_get(addr, "/health").unwrap();
    assert!(body.contains("\"version\":\"v1.1.0\""), "{body}");
}

/// Requests hyper refuses before the application sees them get hyper's bare answer (see the
/// `service::server` docs: hyper has no hook for its body); what hyper accepts and the
/// application refuses gets the JSON error body; and the service goes on serving.
#[test]
fn requests_refused_by_the_http_layer_get_a_bare_status_and_the_service_goes_on() {
    let (_process, addr) =
        spawn_service(&[("MODEL_PATH", model_dir("v1.0.0").display().to_string())]);
    let post = |headers: &str| {
        format!("POST /predict HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n{headers}\r\n{{}}")
    };
    let many_headers: String = (0..101).map(|i| format!("x-h{i}: 1\r\n")).collect();
    let cases = [
        (
            "non-numeric Content-Length",
            post("Content-Length: abc\r\n"),
            400,
        ),
        (
            "negative Content-Length",
            post("Content-Length: -2\r\n"),
            400,
        ),
        (
            "disagreeing Content-Lengths",
            post("Content-Length: 2\r\nContent-Length: 3\r\n"),
            400,
        ),
        ("garbage request line", "GARBAGE\r\n\r\n".to_owned(), 400),
        (
            "unknown HTTP version",
            "GET /health HTTP/9.9\r\nHost: t\r\n\r\n".to_owned(),
            400,
        ),
        (
            "header without a colon",
            "GET /health HTTP/1.1\r\nHost t\r\n\r\n".to_owned(),
            400,
        ),
        (
            "request target over 65534 bytes",
            format!("GET /{} HTTP/1.1\r\nHost: t\r\n\r\n", "a".repeat(65_534)),
            414,
        ),
        (
            "more than 100 headers",
            format!("GET /health HTTP/1.1\r\nHost: t\r\n{many_headers}\r\n"),
            431,
        ),
    ];
    for (name, request, status) in cases {
        let response = exchange(addr, request.as_bytes());
        let (head, body) = response
            .split_once("\r\n\r\n")
            .unwrap_or_else(|| panic!("{name}: no complete response in {response:?}"));
        let head = head.to_ascii_lowercase();
        assert!(
            head.starts_with(&format!("http/1.1 {status} ")),
            "{name}: {response:?}"
        );
        assert!(
            head.contains("content-length: 0") && head.contains("connection: close"),
            "{name}: {head}"
        );
        assert!(body.is_empty(), "{name}: {body:?}");
        assert!(
            !head.contains("x-model-version"),
            "{name}: the application answered: {head}"
        );
    }
    // hyper accepts this head; the broken chunk surfaces in the application, which says so.
    let response = exchange(
        addr,
        b"POST /v2/models/iris/infer HTTP/1.1\r\nHost: t\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    );
    assert!(response.starts_with("HTTP/1.1 400 "), "{response}");
    assert!(
        response.contains("content-type: application/json")
            && response.contains(r#"{"error":"cannot read the request body"#),
        "{response}"
    );
    let health = http_get(addr, "/health").unwrap();
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
}

/// Writes `request` on a new connection and reads until the service closes it.
fn exchange(addr: std::net::SocketAddr, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    // The service may answer and close before reading everything; the answer is what counts.
    let _ = stream.write_all(request);
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response);
    String::from_utf8_lossy(&response).into_owned()
}

fn copy_version(version: &str, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for file in ["model.json", "metadata.json"] {
        std::fs::copy(model_dir(version).join(file), to.join(file)).unwrap();
    }
}

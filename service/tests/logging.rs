//! Logging never fails or delays a request: the real `ml-service` binary with a log that cannot
//! be written (a full disk, a missing folder) answers every request and counts the lines it
//! dropped; with `LOG_FILE` and `LOG_MAX_BYTES` the log rotates at its cap and loses nothing.

mod common;

use std::{
    fs,
    net::SocketAddr,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use common::{metric, model_dir, spawn_service_logging_to};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(30);
/// Requests per run: many more than the lines of one batch, far fewer than the channel holds.
const REQUESTS: usize = 300;
/// Clients sending at the same time.
const CLIENTS: usize = 4;

/// Environment variables for one run of the binary.
type Env = Vec<(&'static str, String)>;

fn env(extra: &[(&'static str, String)]) -> Env {
    let mut env = vec![
        ("MODEL_PATH", model_dir("v1.0.0").display().to_string()),
        ("MODEL_VERSION", "v1.0.0".to_owned()),
    ];
    env.extend_from_slice(extra);
    env
}

#[tokio::test]
async fn every_request_is_answered_when_no_log_line_can_be_written() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("missing/service.log").display().to_string();
    // Writing to /dev/full fails with ENOSPC: a full disk, whatever the file.
    let full = Path::new("/dev/full");
    let cases: Vec<(&str, Env, &Path)> = vec![
        ("stdout and stderr on a full disk", env(&[]), full),
        (
            "LOG_FILE on a full disk",
            env(&[("LOG_FILE", full.display().to_string())]),
            full,
        ),
        (
            "LOG_FILE in a folder that does not exist",
            env(&[("LOG_FILE", missing)]),
            Path::new("/dev/null"),
        ),
    ];
    for (name, env, output) in cases {
        // Arrange
        let (mut process, addr) = spawn_service_logging_to(&env, output);

        // Act
        let answered = send_predictions(addr, REQUESTS).await;

        // Assert
        assert_eq!(answered, REQUESTS, "{name}: every request answered 200");
        // Every line was dropped, and counted: the requests' lines at least.
        let dropped = poll_metric(addr, "log_lines_dropped_total", |n| n >= REQUESTS as u64)
            .await
            .unwrap_or_else(|last| panic!("{name}: log_lines_dropped_total is {last:?}"));
        assert!(dropped >= REQUESTS as u64, "{name}: {dropped}");
        assert!(
            process.child.try_wait().unwrap().is_none(),
            "{name}: the service is still running"
        );
    }
}

#[tokio::test]
async fn log_file_rotates_at_its_cap_and_loses_no_line() {
    // Arrange
    const CAP: u64 = 4096;
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("service.log");
    let rotated = PathBuf::from(format!("{}.1", path.display()));
    let (_process, addr) = spawn_service_logging_to(
        &env(&[
            ("LOG_FILE", path.display().to_string()),
            ("LOG_MAX_BYTES", CAP.to_string()),
            ("LOG_FORMAT", "json".to_owned()),
        ]),
        Path::new("/dev/null"),
    );

    // Act: a few hundred lines of about 200 bytes, ten times the cap.
    let answered = send_predictions(addr, REQUESTS).await;
    assert_eq!(answered, REQUESTS);

    // One request after all the others: the newest line. (A client's own last request may
    // already have been rotated out twice, by design, when the others ran on longer.)
    let last = reqwest::Client::new()
        .post(format!("http://{addr}/predict"))
        .header("x-request-id", "after-the-load")
        .json(&json!({ "features": [5.1, 3.5, 1.4, 0.2] }))
        .timeout(WAIT)
        .send()
        .await
        .unwrap();
    assert_eq!(last.status(), 200);

    // Assert: the newest request is logged, and the file was rotated.
    let deadline = Instant::now() + WAIT;
    loop {
        let both = fs::read_to_string(&rotated).unwrap_or_default()
            + &fs::read_to_string(&path).unwrap_or_default();
        if rotated.exists() && both.contains("\"after-the-load\"") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no rotation, or the last request not logged"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for file in [&path, &rotated] {
        let text = fs::read_to_string(file).unwrap();
        let longest = text.lines().map(|l| l.len() as u64 + 1).max().unwrap();
        let size = text.len() as u64;
        assert!(
            size <= CAP + longest,
            "{}: {size} bytes, cap {CAP}, longest line {longest}",
            file.display()
        );
        for line in text.lines() {
            let value: serde_json::Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("{}: a torn line ({e}): {line}", file.display()));
            assert!(value.is_object());
        }
    }
    let dropped = poll_metric(addr, "log_lines_dropped_total", |_| true)
        .await
        .unwrap();
    assert_eq!(dropped, 0, "a working disk loses no line");
}

/// Sends `n` single-row predictions from [`CLIENTS`] keep-alive clients, each request with the
/// id `client-<c>-<i>`; returns how many answered 200 with a prediction.
async fn send_predictions(addr: SocketAddr, n: usize) -> usize {
    let url = format!("http://{addr}/predict");
    let mut clients = Vec::new();
    for c in 0..CLIENTS {
        let url = url.clone();
        clients.push(tokio::spawn(async move {
            let client = reqwest::Client::new();
            let mut ok = 0;
            for i in 0..n / CLIENTS {
                let answer = client
                    .post(&url)
                    .header("x-request-id", format!("client-{c}-{i}"))
                    .json(&json!({ "features": [5.1, 3.5, 1.4, 0.2] }))
                    .timeout(WAIT)
                    .send()
                    .await;
                if let Ok(answer) = answer {
                    let status = answer.status();
                    let body = answer.text().await.unwrap_or_default();
                    if status == 200 && body.contains("\"label\":\"setosa\"") {
                        ok += 1;
                    }
                }
            }
            ok
        }));
    }
    let mut answered = 0;
    for client in clients {
        answered += client.await.unwrap();
    }
    answered
}

/// Scrapes `/metrics` until `name` has a value `done` accepts; returns it, or the last value
/// seen after [`WAIT`].
async fn poll_metric(
    addr: SocketAddr,
    name: &str,
    done: impl Fn(u64) -> bool,
) -> Result<u64, Option<u64>> {
    let client = reqwest::Client::new();
    let deadline = Instant::now() + WAIT;
    let mut last = None;
    loop {
        let text = match client.get(format!("http://{addr}/metrics")).send().await {
            Ok(answer) => answer.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        };
        last = metric(&text, name).or(last);
        if let Some(value) = last.filter(|v| done(*v)) {
            return Ok(value);
        }
        if Instant::now() > deadline {
            return Err(last);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

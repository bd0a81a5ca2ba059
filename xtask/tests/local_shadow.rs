//! Shadow traffic through a real nginx and real `ml-service` processes: live prediction
//! requests mirrored to the standby, both colors' answers joined by shadow id and compared.
//!
//! - The report's agreement and confusion matrix are what the two models answer offline for
//!   the inputs the load sent over HTTP and gRPC at once (so the join pairs the right
//!   answers), the noise floor of the deterministic model is exactly zero, no client request
//!   or call fails, and routing is untouched.
//! - A test fixture model with permuted labels (built here, outside `models/`) disagrees, and
//!   `deploy --shadow --min-agreement` refuses the switch: traffic and versions stay.
//! - A hung standby (SIGSTOP) during a shadow run: no client request or gRPC call fails, the
//!   delay it can add is bounded by the mirror's budget, and the report counts the copies it
//!   never answered.
//! - Bad flags are refused before anything changes.

mod common;

use std::{path::Path, process::Command};

use common::{http, load::under_load_with, under_grpc_load, Deployment, Planned, Workload};
use serde_json::Value;

/// The class (0, 1, 2) `addr`'s model gives `row`.
fn class_at(addr: &str, row: [f64; 4]) -> u64 {
    let body = format!(r#"{{"features":{row:?}}}"#);
    let mut conn = http::connect(addr).unwrap();
    let response = http::exchange(&mut conn, addr, "POST", "/predict", Some(&body), true).unwrap();
    assert_eq!(response.status, 200, "{}", response.text());
    let value: Value = serde_json::from_str(&response.text()).unwrap();
    value["class"].as_u64().unwrap()
}

/// A row v1.0.0 (blue) and v1.1.0 (green) classify differently, found by asking both.
fn disagreeing_row(d: &Deployment) -> ([f64; 4], u64, u64) {
    for length in 40..=60 {
        for width in 12..=20 {
            let row = [6.0, 2.8, f64::from(length) / 10.0, f64::from(width) / 10.0];
            let (blue, green) = (
                class_at(&d.color_addr("blue"), row),
                class_at(&d.color_addr("green"), row),
            );
            if blue != green {
                return (row, blue, green);
            }
        }
    }
    panic!("no row in the grid where v1.0.0 and v1.1.0 disagree");
}

fn shadow_json(d: &Deployment, args: &[&str]) -> Value {
    let out = d.ok(&[&["shadow", "--format", "json"], args].concat());
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

#[test]
fn shadow_reports_what_the_models_answer_offline_and_leaves_routing_alone() {
    let d = Deployment::up("shadow-agreement");
    let (odd_row, odd_blue, odd_green) = disagreeing_row(&d);
    let rows = [
        [5.1, 3.5, 1.4, 0.2],
        [6.3, 3.3, 6.0, 2.5],
        odd_row,
        [7.0, 3.2, 4.7, 1.4],
    ];
    let classes: Vec<(u64, u64)> = rows
        .iter()
        .map(|row| {
            (
                class_at(&d.color_addr("blue"), *row),
                class_at(&d.color_addr("green"), *row),
            )
        })
        .collect();
    let agreeing = classes.iter().filter(|(b, g)| b == g).count();
    assert_eq!(agreeing, 3, "the other rows must agree: {classes:?}");
    // Every client cycles through the rows; one sends a shared X-Request-Id on every request,
    // which must not mix answers up (the shadow id is nginx's own).
    let workload = Workload(
        rows.iter()
            .zip(&classes)
            .enumerate()
            .map(|(i, (row, (blue, _)))| Planned {
                body: format!(r#"{{"features":{row:?}}}"#),
                expect: format!("\"class\":{blue},"),
                headers: if i == 0 {
                    "X-Request-Id: one-id-for-many\r\n".into()
                } else {
                    String::new()
                },
            })
            .collect(),
    );
    // gRPC calls at the same time: `Predict` of a row both models call setosa.
    let ((report, grpc), tally) = under_load_with(d.balancer(), 4, workload, |_| {
        under_grpc_load(&d.grpc_balancer(), 1, 4, |_| {
            shadow_json(
                &d,
                &["--percent", "100", "--requests", "600", "--duration", "60"],
            )
        })
    });
    tally.assert_no_failures("shadow at 100 %");
    assert_eq!(
        grpc.failed, 0,
        "gRPC calls failed during the shadow: {grpc}"
    );
    println!("{report:#}");

    let rows_compared = report["rows_compared"].as_u64().unwrap();
    assert!(rows_compared >= 600, "{report:#}");
    let by_protocol = &report["paired_by_protocol"];
    let (http_pairs, grpc_pairs) = (
        by_protocol["http"].as_u64().unwrap(),
        by_protocol["grpc"].as_u64().unwrap(),
    );
    assert!(http_pairs > 0 && grpc_pairs > 0, "{by_protocol}");
    // One row per request here, HTTP and gRPC alike.
    assert_eq!(http_pairs + grpc_pairs, rows_compared, "{report:#}");
    // The join pairs each request with its own copy: the only disagreement is the odd row's.
    let counts = &report["confusion"]["counts"];
    for a in 0..3u64 {
        for c in 0..3u64 {
            let n = counts[a as usize][c as usize].as_u64().unwrap();
            if a != c && (a, c) != (odd_blue, odd_green) {
                assert_eq!(n, 0, "active {a} → candidate {c}: {counts}");
            }
        }
    }
    // Each HTTP client's requests in any window hold each row within one of a quarter, so a
    // quarter of the HTTP rows, within 4, are the odd row; every gRPC row agrees.
    let odd = counts[odd_blue as usize][odd_green as usize]
        .as_u64()
        .unwrap();
    assert!(
        (odd as f64 - http_pairs as f64 / 4.0).abs() <= 4.0,
        "{odd} odd rows of {http_pairs} HTTP requests"
    );
    let agreement = report["agreement"]["fraction"].as_f64().unwrap();
    let offline = (rows_compared - odd) as f64 / rows_compared as f64;
    assert!(
        (agreement - offline).abs() < 1e-12,
        "agreement {agreement}, offline {offline}"
    );
    // The list leads with the one class change (its input, counted), then probability changes.
    let top = report["top_disagreements"].as_array().unwrap();
    let first = &top[0];
    let input: Vec<f64> = serde_json::from_value(first["input"].clone()).unwrap();
    assert_eq!(input, odd_row.to_vec(), "{first}");
    assert_eq!(first["occurrences"].as_u64(), Some(odd), "{first}");
    for other in &top[1..] {
        assert_eq!(other["active_class"], other["candidate_class"], "{other}");
    }
    assert_eq!(report["unpaired"]["duplicate_ids"], 0, "{report:#}");
    assert_eq!(report["unpaired"]["missing_on_active"], 0, "{report:#}");
    // The model is deterministic: the active color never disagrees with itself.
    let floor = &report["floor"];
    assert!(floor["rows_compared"].as_u64().unwrap() > 0, "{floor}");
    assert_eq!(floor["class_disagreement"].as_f64(), Some(0.0), "{floor}");
    assert_eq!(floor["max_diff"].as_f64(), Some(0.0), "{floor}");

    // Routing never moved, the mirror is off again, and the run is in the operation log.
    d.assert_split(100, 0);
    assert_eq!(d.served().0, "blue");
    let link = std::fs::read_link(d.state.join("shadow")).unwrap();
    assert_eq!(link, Path::new("shadow-off"));
    let history = d.ok(&["history", "--json"]);
    let last: Value = serde_json::from_str(history.lines().last().unwrap()).unwrap();
    assert_eq!(
        (last["operation"].as_str(), last["result"].as_str()),
        (Some("shadow"), Some("ok")),
        "{last}"
    );
}

/// A copy of `models/v1.0.0` as version `version` under `dir`, its model changed by `change`
/// (given the weights, 4 features × 3 classes row-major, and the 3 intercepts); its metadata
/// carries the new checksum and says it is a test fixture.
fn fixture(
    dir: &Path,
    version: &str,
    what: &str,
    change: impl Fn(&mut Vec<Value>, &mut Vec<Value>),
) {
    let source = common::project_root().join("models/v1.0.0");
    let target = dir.join(version);
    std::fs::create_dir_all(&target).unwrap();
    let mut model: Value =
        serde_json::from_str(&std::fs::read_to_string(source.join("model.json")).unwrap()).unwrap();
    let mut weights = model["params"]["data"].as_array().unwrap().clone();
    let mut intercepts = model["intercept"]["data"].as_array().unwrap().clone();
    change(&mut weights, &mut intercepts);
    model["params"]["data"] = weights.into();
    model["intercept"]["data"] = intercepts.into();
    let model_file = target.join("model.json");
    std::fs::write(&model_file, serde_json::to_string_pretty(&model).unwrap()).unwrap();
    let sha = Command::new("sha256sum").arg(&model_file).output().unwrap();
    let sha = String::from_utf8(sha.stdout).unwrap();
    let mut metadata: Value =
        serde_json::from_str(&std::fs::read_to_string(source.join("metadata.json")).unwrap())
            .unwrap();
    metadata["version"] = version.into();
    metadata["model_sha256"] = sha.split_whitespace().next().unwrap().into();
    metadata["note"] = format!("test fixture: v1.0.0 {what}").into();
    std::fs::write(
        target.join("metadata.json"),
        serde_json::to_string_pretty(&metadata).unwrap(),
    )
    .unwrap();
}

/// Two test fixtures beside v1.0.0 and v1.1.0, outside `models/`: one with the labels setosa and
/// virginica swapped, one whose virginica intercept is raised by 1 (the golden rows keep their
/// classes; flowers near the versicolor/virginica border change class).
fn fixture_models(scratch: &Path) {
    let _ = std::fs::remove_dir_all(scratch);
    std::fs::create_dir_all(scratch).unwrap();
    for version in ["v1.0.0", "v1.1.0"] {
        std::os::unix::fs::symlink(
            common::project_root().join("models").join(version),
            scratch.join(version),
        )
        .unwrap();
    }
    fixture(scratch, PERMUTED, "with classes 0 and 2 swapped", |w, b| {
        for feature in 0..4 {
            w.swap(feature * 3, feature * 3 + 2);
        }
        b.swap(0, 2);
    });
    fixture(
        scratch,
        SHIFTED,
        "with the virginica intercept raised by 1",
        |_, b| {
            b[2] = (b[2].as_f64().unwrap() + 1.0).into();
        },
    );
}

const PERMUTED: &str = "v0.0.1-permuted-fixture";
const SHIFTED: &str = "v0.0.2-shifted-fixture";

#[test]
fn deploy_with_a_shadow_stage_refuses_a_model_that_disagrees() {
    let scratch = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("shadow-fixture-models-{}", std::process::id()));
    fixture_models(&scratch);
    let d = Deployment::new_with(
        "shadow-refuse",
        &format!("models_dir = \"{}\"\n", scratch.display()),
    );
    d.ok(&["up"]);
    // Live traffic: a setosa, and three flowers near the versicolor/virginica border.
    let workload = Workload(
        [
            [5.1, 3.5, 1.4, 0.2],
            [6.3, 2.5, 4.9, 1.5],
            [6.0, 2.2, 5.0, 1.5],
            [6.1, 3.0, 4.9, 1.6],
        ]
        .iter()
        .map(|row| Planned {
            body: format!(r#"{{"features":{row:?}}}"#),
            expect: "\"class\":".into(),
            headers: String::new(),
        })
        .collect(),
    );
    let deploy = |version: &str| {
        d.fails(&[
            "deploy",
            "--version",
            version,
            "--shadow",
            "100",
            "--shadow-requests",
            "200",
            "--min-agreement",
            "90",
        ])
    };
    let ((permuted, shifted), tally) = under_load_with(d.balancer(), 2, workload, |_| {
        (deploy(PERMUTED), deploy(SHIFTED))
    });
    tally.assert_no_failures("deploys with a shadow stage");
    // Swapped labels never get as far as the shadow: the golden rows catch them.
    assert!(
        permuted.contains("refused: traffic stays on blue")
            && permuted.contains("gate `predictions` failed"),
        "{permuted}"
    );
    // The shifted model passes every gate; the shadow stage sees it disagree on live traffic.
    assert!(
        shifted.contains("refused: traffic stays on blue")
            && shifted.contains("below the required 90.0 %"),
        "{shifted}"
    );
    d.assert_split(100, 0);
    let status = d.status();
    assert_eq!(status["colors"][1]["version"], "v1.1.0", "{status:#}");
    let history = d.ok(&["history", "--json"]);
    let last: Value = serde_json::from_str(history.lines().last().unwrap()).unwrap();
    assert_eq!(
        (last["operation"].as_str(), last["result"].as_str()),
        (Some("deploy"), Some("refused")),
        "{last}"
    );
    assert!(
        last["reason"]
            .as_str()
            .unwrap_or("")
            .contains("class agreement"),
        "{last}"
    );
    let _ = std::fs::remove_dir_all(&scratch);
}

#[test]
fn bad_flags_are_refused_before_anything_changes() {
    let d = Deployment::up("shadow-flags");
    for (args, message) in [
        (vec!["shadow", "--percent", "0"], "--percent 0"),
        (vec!["shadow", "--percent", "101"], "101"),
        (
            vec!["shadow", "--percent", "10", "--duration", "0"],
            "--duration 0",
        ),
        (
            vec!["shadow", "--percent", "10", "--requests", "0"],
            "--requests 0",
        ),
        (
            vec!["shadow", "--percent", "10", "--min-agreement", "150"],
            "--min-agreement 150",
        ),
        (
            vec!["deploy", "--version", "v1.1.0", "--min-agreement", "90"],
            "--shadow",
        ),
    ] {
        let err = d.fails(&args);
        assert!(err.contains(message), "{args:?}: {err}");
    }
    // During a canary split there is no single active color to compare with: refused.
    d.ok(&["canary", "--percent", "30"]);
    let err = d.fails(&["shadow", "--percent", "10", "--duration", "5"]);
    assert!(err.contains("a canary split is in progress"), "{err}");
    d.ok(&["canary", "--percent", "0"]);
    // No standby: a shadow run is refused, and nothing was mirrored.
    d.kill("green");
    let err = d.fails(&["shadow", "--percent", "10", "--duration", "5"]);
    assert!(err.contains("the standby green is not healthy"), "{err}");
    assert!(std::fs::symlink_metadata(d.state.join("shadow")).is_err());
    let history = d.ok(&["history", "--json"]);
    let last: Value = serde_json::from_str(history.lines().last().unwrap()).unwrap();
    assert_eq!(
        (last["operation"].as_str(), last["result"].as_str()),
        (Some("shadow"), Some("refused")),
        "{last}"
    );
}

/// The newest record number in `addr`'s shadow journal.
fn journal_last(addr: &str) -> u64 {
    let response = http::get(addr, "/_shadow/records?limit=0").unwrap();
    let page: Value = serde_json::from_str(&response.text()).unwrap();
    page["last"].as_u64().unwrap()
}

/// The standby hangs (SIGSTOP) while a shadow run mirrors every request to it. The mirror's
/// budget (`shadow.timeout_ms`, 200 ms) bounds what a client can wait for it, once: then nginx
/// skips the standby for 5 s, mirroring nothing. No client request fails, and the report counts
/// the copies the standby never answered.
#[test]
fn a_hung_standby_costs_clients_nothing_beyond_the_mirror_budget() {
    let d = Deployment::up("shadow-hung");
    let green = d.color_addr("green");
    let ((report, grpc), tally) = under_load_with(d.balancer(), 4, Workload::default(), |load| {
        under_grpc_load(&d.grpc_balancer(), 1, 4, |grpc| {
            let shadow = d
                .command(&[
                    "shadow",
                    "--percent",
                    "100",
                    "--duration",
                    "8",
                    "--format",
                    "json",
                ])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::inherit())
                .spawn()
                .unwrap();
            let before = journal_last(&green);
            common::wait_until("green answers mirrored copies", || {
                journal_last(&green) > before + 100
            });
            d.signal("green", "STOP");
            load.wait_for_more(1000);
            grpc.wait_for_more(500);
            d.signal("green", "CONT");
            let out = shadow.wait_with_output().unwrap();
            assert!(out.status.success(), "shadow failed: {out:?}");
            serde_json::from_slice::<Value>(&out.stdout).unwrap()
        })
    });
    tally.assert_no_failures("a hung standby during a shadow run");
    assert_eq!(grpc.failed, 0, "gRPC calls failed: {grpc}");
    let grpc_max = grpc.latencies.iter().max().copied().unwrap_or_default();
    let unanswered = report["unpaired"]["unanswered_by_candidate"]
        .as_u64()
        .unwrap();
    assert!(unanswered > 0, "{report:#}");
    println!(
        "hung standby: {unanswered} copies unanswered; HTTP clients p99 {:?}, max {:?}; gRPC max {grpc_max:?}",
        tally.percentile(99),
        tally.max_latency()
    );
    // The bound: the mirror's 200 ms budget, with room for a busy machine. (A gRPC call is a
    // stream of its own and never waits for the mirror; the same bound holds a fortiori.)
    for (who, max) in [
        ("an HTTP client", tally.max_latency()),
        ("a gRPC call", grpc_max),
    ] {
        assert!(
            max < std::time::Duration::from_secs(2),
            "{who} waited {max:?}"
        );
    }
    d.assert_split(100, 0);
}

//! The service as its users' standard tools see it, on the real binary:
//!
//! 1. start `ml-service` with `models/v1.0.0` on a free loopback port;
//! 2. `tritonclient.http`, the standard KServe V2 / Triton HTTP client, runs
//!    `tests/clients/triton_http.py`: health, metadata, and inference on the golden rows with
//!    FP32 and FP64 tensors (it sends its JSON bodies without a `Content-Type`);
//!    `tritonclient.grpc` runs `tests/clients/triton_grpc.py`, the same over the Open
//!    Inference Protocol's gRPC service (tensors as `raw_input_contents`), plus the error codes;
//! 3. `schemathesis` tests the service against its own `/openapi.json`: every check (response
//!    schema conformance, not a server error, positive data accepted, negative data refused,
//!    ...) over every phase, with a fixed seed and bounded examples so a run is reproducible;
//!    the statuses it may expect are in `tests/clients/schemathesis.toml`, each with its reason;
//! 4. stop the service, also when a step fails (`Process` kills it on drop).
//!
//! The Python tools come from the virtual environment named by `CLIENTS_VENV`; `cargo xtask ci`
//! installs pinned versions into `target/tools/venv` and sets it (step "standard clients").
//! Without the variable these tests print why they did nothing and pass, so a plain `cargo test`
//! needs no Python; with it, a missing tool fails them.

mod common;

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use common::{model_dir, spawn_service, start_service, wait_exit};

/// The environment variable naming the virtual environment with the tools.
const VENV_VAR: &str = "CLIENTS_VENV";
/// The fixed seed of the schemathesis run: the same cases every time.
const SEED: &str = "20260101";
/// Random cases per operation in the fuzzing phase, on top of the examples and the coverage
/// phase's deterministic cases (11 operations, so a few hundred in all).
const MAX_EXAMPLES: &str = "40";
/// Cases per operation of the run with a fresh seed (fuzzing only: a few hundred in all).
const RANDOM_EXAMPLES: &str = "40";
/// Upper bounds for each tool, far above their usual time, so a hang fails instead of waiting.
const TRITON_TIMEOUT: Duration = Duration::from_secs(120);
const SCHEMATHESIS_TIMEOUT: Duration = Duration::from_secs(300);

#[test]
fn tritonclient_http_checks_health_metadata_and_infers_the_golden_rows() {
    let Some(venv) = venv("tritonclient_http") else {
        return;
    };
    let python = tool(&venv, "python");
    let (_service, addr) = spawn_v1();
    let mut child = Command::new(&python)
        .arg(clients_dir().join("triton_http.py"))
        .arg(addr.to_string())
        .stdin(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("start {}: {e}", python.display()));
    let status = wait_exit(&mut child, TRITON_TIMEOUT);
    assert!(
        status.success(),
        "tritonclient.http checks failed ({status}): see above"
    );
}

#[test]
fn tritonclient_grpc_checks_health_metadata_errors_and_infers_the_golden_rows() {
    let Some(venv) = venv("tritonclient_grpc") else {
        return;
    };
    let python = tool(&venv, "python");
    let mut service = start_service(&[
        ("MODEL_PATH", model_dir("v1.0.0").display().to_string()),
        ("MODEL_VERSION", "v1.0.0".to_owned()),
    ]);
    let line = service.wait_for_line("listening", Duration::from_secs(30));
    let grpc_addr = line
        .split_whitespace()
        .find_map(|word| word.strip_prefix("grpc_addr="))
        .unwrap_or_else(|| panic!("no grpc_addr= in {line:?}"))
        .to_owned();
    let mut child = Command::new(&python)
        .arg(clients_dir().join("triton_grpc.py"))
        .arg(&grpc_addr)
        .stdin(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("start {}: {e}", python.display()));
    let status = wait_exit(&mut child, TRITON_TIMEOUT);
    assert!(
        status.success(),
        "tritonclient.grpc checks failed ({status}): see above"
    );
}

#[test]
fn schemathesis_finds_no_failure_with_every_check_and_phase() {
    schemathesis("examples,coverage,fuzzing,stateful", SEED, MAX_EXAMPLES);
}

/// A few hundred cases that differ from run to run, on top of the reproducible ones; the seed
/// is printed, so a failure can be replayed with it.
#[test]
fn schemathesis_finds_no_failure_with_a_fresh_seed() {
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_secs() % 1_000_000_007)
        .to_string();
    println!("schemathesis with a fresh seed: {seed} (replay with `--seed {seed}`)");
    schemathesis("fuzzing", &seed, RANDOM_EXAMPLES);
}

/// Runs schemathesis with every check over `phases` against a fresh `v1.0.0` service.
fn schemathesis(phases: &str, seed: &str, max_examples: &str) {
    let Some(venv) = venv("schemathesis") else {
        return;
    };
    let schemathesis = tool(&venv, "schemathesis");
    let (_service, addr) = spawn_v1();
    // Its own files (the example database, reports) go to a scratch directory, not the tree.
    let scratch = tempfile::tempdir().expect("a scratch directory");
    let mut child = Command::new(&schemathesis)
        .arg("--config-file")
        .arg(clients_dir().join("schemathesis.toml"))
        .arg("--no-color")
        .args(["run", &format!("http://{addr}/openapi.json")])
        .args(["--checks", "all", "--phases", phases])
        .args(["--seed", seed, "--max-examples", max_examples])
        .args(["--workers", "1", "--generation-database", "none"])
        .current_dir(scratch.path())
        .stdin(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("start {}: {e}", schemathesis.display()));
    let status = wait_exit(&mut child, SCHEMATHESIS_TIMEOUT);
    assert!(
        status.success(),
        "schemathesis (seed {seed}) found failures ({status}): see its report above"
    );
}

/// The virtual environment with the tools (a relative path is from the workspace root), or
/// `None` (after saying so) when none is named.
fn venv(test: &str) -> Option<PathBuf> {
    match std::env::var_os(VENV_VAR) {
        Some(path) if !path.is_empty() => Some(
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("..")
                .join(path),
        ),
        _ => {
            println!(
                "{test}: skipped: {VENV_VAR} is not set (`cargo xtask ci` sets it to a virtual environment with tritonclient[http,grpc], schemathesis and grpcio-tools)"
            );
            None
        }
    }
}

/// `venv/bin/<name>`; a failure when it is missing, since the environment was asked for.
fn tool(venv: &Path, name: &str) -> PathBuf {
    let path = venv.join("bin").join(name);
    assert!(
        path.is_file(),
        "{} is missing: {VENV_VAR}={} has no {name} (install with `cargo xtask ci`, step \"client tools\")",
        path.display(),
        venv.display()
    );
    path
}

fn clients_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/clients")
}

fn spawn_v1() -> (common::Process, std::net::SocketAddr) {
    spawn_service(&[
        ("MODEL_PATH", model_dir("v1.0.0").display().to_string()),
        ("MODEL_VERSION", "v1.0.0".to_owned()),
    ])
}

//! `ml-service`: serves the model named by `MODEL_PATH`, over HTTP on `HOST:PORT` and over gRPC
//! on `HOST:GRPC_PORT`.
//!
//! - `ml-service`: load and verify the model (refuse to start on any problem), listen on both
//!   ports, serve until SIGTERM or SIGINT, drain in-flight requests and RPCs (at most
//!   `SHUTDOWN_TIMEOUT_SECS`), exit 0;
//! - `ml-service healthcheck`: ask this service's own `/health` on `HOST:PORT`; exit 0 if healthy.

use std::{io::Write, process::ExitCode};

use service::{
    config::{Config, LogConfig},
    healthcheck,
    model::Model,
    server::{shutdown_signal, Server},
    telemetry,
};

const USAGE: &str = "usage: ml-service [healthcheck]
  (no argument)  serve the model over HTTP on HOST:PORT (default 0.0.0.0:8080) and gRPC on HOST:GRPC_PORT (default 50051); environment: MODEL_PATH, MODEL_VERSION, HOST, PORT, GRPC_PORT, SHUTDOWN_TIMEOUT_SECS, SHADOW_JOURNAL_RECORDS (default 50000, 0: off), RUST_LOG, LOG_FORMAT, LOG_FILE, LOG_MAX_BYTES
  healthcheck    check http://$HOST:$PORT/health (loopback when HOST is 0.0.0.0) and exit 0 if healthy, 1 otherwise";

fn main() -> ExitCode {
    match std::env::args().nth(1).as_deref() {
        None | Some("serve") => serve(),
        Some("healthcheck") => healthcheck(),
        Some("-h" | "--help" | "help") => {
            println!("{USAGE}");
            ExitCode::SUCCESS
        }
        Some(other) => {
            eprintln!("error: unknown command {other:?}\n{USAGE}");
            ExitCode::from(2)
        }
    }
}

fn serve() -> ExitCode {
    let log_config = LogConfig::from_env();
    // Held to the end of `serve`: its drop writes the lines still waiting.
    let _logs = match telemetry::init(log_config.as_ref().unwrap_or(&LogConfig::default())) {
        Ok(guard) => guard,
        Err(err) => return refuse(&format!("cannot start the log writer: {err}")),
    };
    let config = match log_config.and_then(|_| Config::from_env()) {
        Ok(config) => config,
        Err(err) => return refuse(&format!("{err:#}")),
    };
    let model = match Model::load(&config.model_path, config.model_version.as_deref()) {
        Ok(model) => model,
        Err(err) => return refuse(&err.to_string()),
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => return refuse(&format!("cannot start the async runtime: {err}")),
    };
    runtime.block_on(async {
        let server = match Server::bind(&config, model).await {
            Ok(server) => server,
            Err(err) => return refuse(&err.to_string()),
        };
        // Watched before the "listening" line: from then on a signal is a drain.
        let signal = shutdown_signal();
        let model = &server.state().model;
        tracing::info!(
            addr = %server.local_addr(),
            grpc_addr = %server.grpc_local_addr(),
            version = model.version(),
            model_path = %config.model_path.display(),
            "listening"
        );
        match server.run_until(signal).await {
            Ok(_) => ExitCode::SUCCESS,
            Err(err) => {
                tracing::error!(error = %err, "server failed");
                ExitCode::FAILURE
            }
        }
    })
}

fn refuse(reason: &str) -> ExitCode {
    tracing::error!(reason, "refusing to start");
    // Not `eprintln!`: it panics when stderr cannot be written (a full disk).
    let _ = writeln!(std::io::stderr(), "error: refusing to start: {reason}");
    ExitCode::FAILURE
}

fn healthcheck() -> ExitCode {
    let addr = match Config::from_env() {
        Ok(config) => healthcheck::target(config.host, config.port),
        Err(err) => {
            eprintln!("unhealthy: {err:#}");
            return ExitCode::FAILURE;
        }
    };
    match healthcheck::check(addr, healthcheck::TIMEOUT) {
        Ok(body) => {
            println!("{body}");
            ExitCode::SUCCESS
        }
        Err(reason) => {
            eprintln!("{reason}");
            ExitCode::FAILURE
        }
    }
}

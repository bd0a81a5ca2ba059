//! The one test harness of xtask's integration tests, for both runtimes.
//!
//! - [`local`]: a local-runtime [`Deployment`] (child processes + a host nginx) with its own
//!   ports and state directory, so the `local_*` tests run in parallel;
//! - [`compose`]: a docker compose [`Stack`] with its own project, ports, subnet and image
//!   name, for the `compose_*` end-to-end tests;
//! - [`remote`]: a second deploy host, [`remote::DeployHost`]: a network namespace with its own
//!   Docker engine and sshd, reached with `DOCKER_HOST=ssh://root@<addr>`;
//! - [`xtask`]: running the real `xtask` binary against a test's own deploy configuration;
//! - [`http`]: plain HTTP/1.1 over `TcpStream` (no connection pool, no retries) and the
//!   [`Balancer`] probe that asks which color and version answer through nginx;
//! - [`load`]: the one HTTP load generator, [`Load`], that counts every failed request;
//! - [`grpc_load`]: its gRPC counterpart, [`GrpcLoad`]: long-lived channels, many streams.
//!
//! Everything else both runtimes need is here: the project root, free ports, [`wait_until`].

// Each test binary compiles the whole harness and uses only its own runtime's half.
#![allow(dead_code, unused_imports)]

pub mod compose;
pub mod grpc_load;
pub mod http;
pub mod load;
pub mod local;
pub mod remote;
pub mod xtask;

use std::{
    net::TcpListener,
    ops::Range,
    path::{Path, PathBuf},
    process::{Command, Output},
    sync::atomic::{AtomicUsize, Ordering},
    thread,
    time::{Duration, Instant},
};

pub use compose::Stack;
pub use grpc_load::{under_grpc_load, GrpcLoad, GrpcTally};
pub use http::Balancer;
pub use load::{Load, Planned, Tally, Workload};
pub use local::{service_bin, Deployment};
/// A command's output for messages; polling with a deadline (shared with the deploy host).
pub use testhost::{describe, poll_until};

/// The workspace root (the xtask binary runs there, as `cargo xtask` does).
pub fn project_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// The latency below which `percent` % of `latencies` fall (nearest rank).
pub fn percentile(latencies: &[Duration], percent: usize) -> Duration {
    let mut sorted = latencies.to_vec();
    sorted.sort_unstable();
    let rank = (sorted.len() * percent).div_ceil(100).max(1);
    sorted.get(rank - 1).copied().unwrap_or_default()
}

/// The local runtime's tests take their ports here.
pub const LOCAL_PORTS: Range<u16> = 20_000..32_000;
/// The compose tests take theirs here, apart from the local ones.
pub const COMPOSE_PORTS: Range<u16> = 14_000..20_000;

/// A port in `range` that nothing listens on, on any address (the compose balancer's port is
/// public) nor on loopback. Both ranges lie below Linux's ephemeral range (32768+), so no
/// outgoing connection can take the port between this check and the service binding it. Each
/// test process starts at its own offset; the bind check skips ports another test took.
pub fn free_port(range: Range<u16>) -> u16 {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let span = usize::from(range.end - range.start);
    let offset = (std::process::id() as usize * 7919) % span;
    loop {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = range.start + ((offset + n * 13) % span) as u16;
        if TcpListener::bind(("0.0.0.0", port)).is_ok()
            && TcpListener::bind(("127.0.0.1", port)).is_ok()
        {
            return port;
        }
    }
}

/// `n` distinct free ports in `range`.
pub fn free_ports<const N: usize>(range: Range<u16>) -> [u16; N] {
    let ports = std::array::from_fn(|_| free_port(range.clone()));
    for (i, port) in ports.iter().enumerate() {
        assert!(!ports[..i].contains(port), "port {port} picked twice");
    }
    ports
}

/// Runs `cmd`, asserts it succeeded (else panics with `what` and its output); its output.
pub fn run_ok(cmd: &mut Command, what: &str) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run {:?}: {e}", cmd.get_program()));
    assert!(out.status.success(), "{what}:\n{}", describe(&out));
    out
}

/// Whether `cmd` runs and exits successfully (a probe: its output is dropped).
pub fn runs_ok(cmd: &mut Command) -> bool {
    cmd.output().is_ok_and(|o| o.status.success())
}

/// Polls `f` until it holds; panics after 30 s.
pub fn wait_until(what: &str, f: impl FnMut() -> bool) {
    wait_until_within(what, Duration::from_secs(30), f);
}

/// Polls `f` until it holds; panics after `timeout`.
pub fn wait_until_within(what: &str, timeout: Duration, f: impl FnMut() -> bool) {
    assert!(poll_until(timeout, f), "timed out waiting for {what}");
}

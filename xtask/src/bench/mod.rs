//! `cargo xtask bench`: measurements under real load, written up in `docs/benchmarks.md`.
//!
//! - `bench service`: the model service on loopback (req/s, latency, CPU, RSS, start time),
//!   alone and behind nginx against nginx's own ceiling (a fixed answer);
//! - `bench switch`: switches under keep-alive load through nginx, against the reload-based
//!   methods the old scripts used;
//! - `bench compose`: the docker compose runtime on a private project (image size, `up`, a
//!   container's start, switch wall time, throughput and failed requests while switching).
//!
//! - `bench hang`: the active color hanging under load, before and after the latency budget;
//! - `bench grpc`: gRPC unary `Predict` direct and through nginx against HTTP/JSON in the same
//!   run, and failed RPCs while switching;
//! - `bench shadow`: client req/s and latency through the balancer with the mirror off, at
//!   10 % and 100 %, and at 100 % with the standby hung.
//!
//! `wrk` runs the load for the first three and `shadow` (`hang` has its own client, which
//! waits for answers; `grpc` its own tonic client for the gRPC side, wrk for the HTTP side);
//! `report` writes their sections of the document.

mod compose;
mod grpc;
mod hang;
mod report;
mod service;
mod service_nginx;
mod shadow;
mod switch;
mod wrk;

use anyhow::Result;
use xshell::Shell;

use crate::flags::{self, BenchTarget};

impl flags::Bench {
    pub(crate) fn run(self, sh: &Shell, global: &flags::Global) -> Result<()> {
        match self.target {
            BenchTarget::Service => service::run(sh, global, &self),
            BenchTarget::Switch => switch::run(sh, global, &self),
            BenchTarget::Compose => compose::run(sh, global, &self),
            BenchTarget::Hang => hang::run(sh, global, &self),
            BenchTarget::Grpc => grpc::run(sh, global, &self),
            BenchTarget::Shadow => shadow::run(sh, global, &self),
        }
    }
}

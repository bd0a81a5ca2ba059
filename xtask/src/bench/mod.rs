//! `cargo xtask bench`: measurements under real load, written up in `docs/benchmarks.md`.
//!
//! - `bench service`: the model service alone on loopback (req/s, latency, CPU, RSS, start time);
//! - `bench switch`: switches under keep-alive load through nginx, against the reload-based
//!   methods the old scripts used;
//! - `bench compose`: the docker compose runtime on a private project (image size, `up`, a
//!   container's start, switch wall time, throughput and failed requests while switching).
//!
//! `wrk` runs the load for all three; `report` writes their sections of the document.

mod compose;
mod report;
mod service;
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
        }
    }
}

//! The docker compose runtime (placeholder until it is written): every call says it is missing,
//! so `--runtime auto` falls back to the local runtime.

use std::time::Duration;

use anyhow::{bail, Result};
use xshell::Shell;

use super::{HostLock, Part, RouteReading, Runtime};
use crate::{config::DeployConfig, domain::Color, nginx::NginxParams};

/// Containers through `docker compose` / `docker-compose`.
pub struct Compose {
    _private: (),
}

impl Compose {
    /// Opens the compose runtime; fails when it cannot be used here (no compose command, no
    /// engine), which makes `--runtime auto` choose the local runtime.
    pub fn new(_sh: &Shell, _config: &DeployConfig) -> Result<Compose> {
        bail!("the compose runtime is not available yet: use `--runtime local`")
    }
}

fn missing<T>() -> Result<T> {
    bail!("the compose runtime is not available yet: use `--runtime local`")
}

impl Runtime for Compose {
    fn name(&self) -> &'static str {
        "compose"
    }
    fn url(&self, _part: Part) -> String {
        String::new()
    }
    fn nginx_params(&self) -> NginxParams {
        NginxParams::container_default()
    }
    fn start_balancer(&self, _nginx_conf: &str) -> Result<()> {
        missing()
    }
    fn start_color(&self, _color: Color, _version: &str) -> Result<()> {
        missing()
    }
    fn stop_color(&self, _color: Color) -> Result<()> {
        missing()
    }
    fn is_running(&self, _part: Part) -> Result<bool> {
        missing()
    }
    fn logs(&self, _part: Part, _lines: usize) -> Result<String> {
        missing()
    }
    fn down(&self) -> Result<()> {
        missing()
    }
    fn apply_config(&self, _nginx_conf: &str) -> Result<()> {
        missing()
    }
    fn current_config(&self) -> Result<Option<String>> {
        missing()
    }
    fn read_file(&self, _rel: &str) -> Result<Option<String>> {
        missing()
    }
    fn write_file_atomic(&self, _rel: &str, _contents: &str) -> Result<()> {
        missing()
    }
    fn append_line(&self, _rel: &str, _line: &str) -> Result<()> {
        missing()
    }
    fn install_generation(&self, _generation: u64, _green_buckets: &[u16]) -> Result<()> {
        missing()
    }
    fn activate_generation(&self, _generation: u64) -> Result<()> {
        missing()
    }
    fn active_generation(&self) -> Result<RouteReading> {
        missing()
    }
    fn max_generation(&self) -> Result<u64> {
        missing()
    }
    fn prune_generations(&self, _keep: &[u64]) -> Result<()> {
        missing()
    }
    fn lock(&self, _timeout: Duration, _holder: &str) -> Result<HostLock> {
        missing()
    }
}

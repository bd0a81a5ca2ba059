//! HTTP probes shared by the layers: the one client configuration, and whether the balancer
//! answers its own health path (polled by `up`, by the compose runtime when it starts nginx,
//! and by `status`).

use std::time::Duration;

use anyhow::{bail, Context, Result};
use reqwest::blocking::Client;

/// An HTTP client for gates and checks: short timeouts, no proxy from the environment.
pub fn client() -> Result<Client> {
    Client::builder()
        .timeout(Duration::from_secs(5))
        .connect_timeout(Duration::from_secs(2))
        .no_proxy()
        .build()
        .context("build the HTTP client")
}

/// Whether the balancer answers its own health path with a success.
pub fn balancer_answers(client: &Client, url: &str) -> Result<()> {
    let health = format!("{url}{}", crate::nginx::HEALTH_PATH);
    let response = client
        .get(&health)
        .send()
        .with_context(|| format!("GET {health}"))?;
    if !response.status().is_success() {
        bail!("GET {health} answered {}", response.status());
    }
    Ok(())
}

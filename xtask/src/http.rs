//! HTTP probes shared by the layers: the one client configuration, and whether the balancer
//! answers its own health path (polled by `up`, by the compose runtime when it starts nginx,
//! and by `status`).

use std::time::Duration;

use anyhow::{bail, Context, Result};
use reqwest::blocking::{Client, ClientBuilder};

/// An HTTP client for gates and checks: short timeouts, no proxy from the environment.
pub fn client() -> Result<Client> {
    client_with_timeout(Duration::from_secs(5))
}

/// A client like [`client`] whose requests give up after `timeout`.
pub fn client_with_timeout(timeout: Duration) -> Result<Client> {
    client_builder(timeout)
        .build()
        .context("build the HTTP client")
}

/// The one client configuration (timeouts, no proxy from the environment), for callers that
/// add to it.
pub fn client_builder(timeout: Duration) -> ClientBuilder {
    Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout.min(Duration::from_secs(2)))
        .no_proxy()
}

/// Whether the balancer answers its own health path with a success; when it does not, the
/// error carries the reason it gives (no readable route generation, say).
pub fn balancer_answers(client: &Client, url: &str) -> Result<()> {
    let health = format!("{url}{}", crate::nginx::HEALTH_PATH);
    let response = client
        .get(&health)
        .send()
        .with_context(|| format!("GET {health}"))?;
    let status = response.status();
    if !status.is_success() {
        let body = response.text().unwrap_or_default();
        let reason = serde_json::from_str::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["reason"].as_str().map(str::to_owned))
            .unwrap_or(body);
        bail!("the balancer's health answered {status}: {}", reason.trim());
    }
    Ok(())
}

/// Whether nginx answers HTTP on the balancer's port at all, whatever its health says (it may
/// start before the first route generation exists).
pub fn balancer_responds(client: &Client, url: &str) -> Result<()> {
    let health = format!("{url}{}", crate::nginx::HEALTH_PATH);
    client
        .get(&health)
        .send()
        .map(drop)
        .with_context(|| format!("GET {health}"))
}

/// Whether `err` comes from a request that got no answer in time (the peer accepted the
/// connection but did not answer: a hang), rather than a refused connection or a bad answer.
pub fn timed_out(err: &anyhow::Error) -> bool {
    err.chain()
        .filter_map(|cause| cause.downcast_ref::<reqwest::Error>())
        .any(|e| e.is_timeout())
}

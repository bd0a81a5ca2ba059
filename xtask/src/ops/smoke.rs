//! Smoke checks: the deployment through the balancer, as a client sees it.
//!
//! Steps (each a named check; all run, the summary counts them):
//! 0. `balancer`: the balancer's own health is 200 (it is 503 with the reason when no route
//!    generation can be read, so traffic would not follow the recorded split);
//! 1. `health`: `/health` through the balancer answers 200 `status: ok`;
//! 2. `predictions`: the golden Iris rows are classified correctly;
//! 3. `bad-input`: malformed JSON and a wrong feature count get a 4xx;
//! 4. `versions`: [`SAMPLES`] requests are answered only by colors the live split routes to,
//!    each with the version the state records for it; for a split, every color expected to take
//!    at least 10 of the samples appears.
//!
//! 5. `grpc`: through the balancer's gRPC port, `grpc.health.v1` is SERVING, the golden rows
//!    over `Predict` are right and a wrong feature count gets `INVALID_ARGUMENT`;
//! 6. `grpc-versions`: [`SAMPLES`] `Predict` calls over one channel, checked like `versions`
//!    (each call is routed on its own, so a split shows on a single channel);
//! 7. `replicas`: where a color has several replicas (swarm), every replica of each color the
//!    split routes to answers `/health` with its version.
//!
//! With `--color`, every request names that color in the testers' header (with the token), and
//! `versions` expects only that color: a tester's view of the standby before a switch.
//!
//! One summary line; exit ≠ 0 when any check fails.

use std::collections::BTreeMap;

use anyhow::{bail, Context, Result};

use reqwest::{
    blocking::Client,
    header::{HeaderMap, HeaderName, HeaderValue},
};

use super::{gates, read_live, Deployment};
use crate::{
    domain::{Color, DeployState, Split},
    grpc::Probe,
    runtime::Part,
};

/// Requests sampled for the `versions` check.
pub const SAMPLES: usize = 200;
/// How far (percentage points) a color's sampled share may stray from the split.
pub const MAX_SKEW: usize = 15;

/// Runs every check through the balancer at `url`; fails when any fails. With `tester`, every
/// request names that color as a tester would, and only that color may answer.
pub fn smoke(ctx: &Deployment, url: &str, tester: Option<Color>) -> Result<()> {
    let live = read_live(ctx)?;
    let state = live.state(&ctx.config);
    let (client, split) = match tester {
        None => (ctx.client.clone(), live.split),
        Some(color) => (tester_client(ctx, color)?, Split::all(color)),
    };
    let grpc_url = ctx.rt.grpc_url(Part::Balancer);
    let grpc = tester_probe(ctx, &grpc_url, tester);

    let checks: [(&str, Result<String>); 8] = [
        (
            "balancer",
            crate::http::balancer_answers(&client, url)
                .map(|()| "routes a readable generation".into()),
        ),
        ("health", health(&client, url)),
        (
            "predictions",
            gates::golden(&client, url)
                .map(|()| format!("{} golden rows right", gates::GOLDEN.len())),
        ),
        (
            "bad-input",
            gates::bad_input(&client, url).map(|()| "answered 4xx".into()),
        ),
        (
            "versions",
            sample(&client, url).and_then(|counts| check_versions(&counts, split, &state)),
        ),
        (
            "grpc",
            grpc.as_ref()
                .map_err(|e| anyhow::anyhow!("{e:#}"))
                .and_then(grpc_check),
        ),
        (
            "grpc-versions",
            grpc.as_ref()
                .map_err(|e| anyhow::anyhow!("{e:#}"))
                .and_then(grpc_sample)
                .and_then(|counts| check_versions(&counts, split, &state)),
        ),
        ("replicas", replicas(ctx, split)),
    ];
    let mut failed = 0;
    for (name, result) in &checks {
        match result {
            Ok(detail) => crate::say!("ok    {name}: {detail}"),
            Err(err) => {
                failed += 1;
                crate::say!("FAIL  {name}: {err:#}");
            }
        }
    }
    let passed = checks.len() - failed;
    crate::say!(
        "smoke: {passed}/{} checks passed through {url} (traffic {})",
        checks.len(),
        live.split
    );
    if failed > 0 {
        bail!("smoke failed: {failed} check(s) failed (see above; `cargo xtask status` shows the live state)");
    }
    Ok(())
}

/// Every replica of each color the split routes to answers `/health` with its version, where
/// colors have several (a client reaches any of them).
fn replicas(ctx: &Deployment, split: Split) -> Result<String> {
    let probe = crate::http::client_with_timeout(std::time::Duration::from_secs(2))?;
    let mut seen = Vec::new();
    for color in Color::ALL.into_iter().filter(|&c| split.share(c) > 0) {
        let (desired, replicas, problems) = super::replicas::gather(ctx, color, &probe);
        let Some(desired) = desired else {
            return Ok("one process per color".into());
        };
        if !problems.is_empty() {
            bail!("{}", problems.join("; "));
        }
        seen.push(format!("{color} {}/{desired} healthy", replicas.len()));
    }
    Ok(seen.join(", "))
}

fn health(client: &Client, url: &str) -> Result<String> {
    let (status, body) = gates::health(client, url)?;
    let version = gates::check_health(status, &body, None)?;
    Ok(format!("200, {version}"))
}

/// A gRPC connection to the balancer; with `tester`, it names that color in the testers'
/// header (metadata) on every call, with the token.
fn tester_probe(ctx: &Deployment, grpc_url: &str, tester: Option<Color>) -> Result<Probe> {
    let mut probe = Probe::connect(grpc_url, gates::GRPC_TIMEOUT)?;
    if let Some(color) = tester {
        let testers = &ctx.config.testers;
        probe = probe.with_metadata(&testers.header, color.as_str())?;
        if !testers.token.is_empty() {
            probe = probe.with_metadata(crate::nginx::TESTER_TOKEN_HEADER, &testers.token)?;
        }
    }
    Ok(probe)
}

fn grpc_check(probe: &Probe) -> Result<String> {
    crate::grpc::check_serving(probe.serving("")?)?;
    gates::grpc_golden_with(probe, None)?;
    Ok(format!(
        "SERVING, {} golden rows right, bad input INVALID_ARGUMENT",
        gates::GOLDEN.len()
    ))
}

/// Counts `Predict` answers on one channel by (`x-served-by`, `x-model-version`).
fn grpc_sample(probe: &Probe) -> Result<BTreeMap<(String, String), usize>> {
    let mut counts = BTreeMap::new();
    let row = crate::grpc::as_f32(&gates::GOLDEN[0].0);
    for _ in 0..SAMPLES {
        let got = probe.predict(row)?;
        *counts
            .entry((got.served_by, got.version_metadata))
            .or_insert(0) += 1;
    }
    Ok(counts)
}

/// A client that names `color` in the testers' header on every request, with the token.
fn tester_client(ctx: &Deployment, color: Color) -> Result<Client> {
    let testers = &ctx.config.testers;
    if !testers.enabled {
        bail!(
            "--color needs tester routing: set `[testers] enabled = true` in the deploy configuration, then run `cargo xtask up`"
        );
    }
    let mut headers = HeaderMap::new();
    let header = |value: &str| HeaderValue::from_str(value).context("a tester header value");
    headers.insert(
        HeaderName::from_bytes(testers.header.as_bytes()).context("`testers.header`")?,
        header(color.as_str())?,
    );
    if !testers.token.is_empty() {
        headers.insert(crate::nginx::TESTER_TOKEN_HEADER, header(&testers.token)?);
    }
    crate::http::client_builder(std::time::Duration::from_secs(5))
        .default_headers(headers)
        .build()
        .context("build the tester's HTTP client")
}

/// Counts answers by (`X-Served-By`, `X-Model-Version`); any non-200 fails.
fn sample(client: &Client, url: &str) -> Result<BTreeMap<(String, String), usize>> {
    let mut counts = BTreeMap::new();
    for _ in 0..SAMPLES {
        let response = client
            .get(format!("{url}/health"))
            .send()
            .context("request through the balancer")?;
        if response.status() != 200 {
            bail!(
                "/health through the balancer answered {}",
                response.status()
            );
        }
        *counts.entry(gates::served_by(&response)).or_insert(0) += 1;
    }
    Ok(counts)
}

/// Checks sampled answers against the split and the recorded versions.
pub fn check_versions(
    counts: &BTreeMap<(String, String), usize>,
    split: Split,
    state: &DeployState,
) -> Result<String> {
    let total: usize = counts.values().sum();
    let mut seen = BTreeMap::new();
    for ((served, version), n) in counts {
        let color = gates::check_served(served, version, split, state)
            .map_err(|why| anyhow::anyhow!("{why:#} ({n} of {total} answers)"))?;
        *seen.entry(color).or_insert(0) += n;
    }
    for color in split.serving() {
        let expected = total * usize::from(split.share(color)) / 100;
        let got = seen.get(&color).copied().unwrap_or(0);
        if expected >= 10 && got == 0 {
            bail!(
                "{color} should take {} % of requests but answered none of {total}",
                split.share(color)
            );
        }
        // Roughly in proportion: far outside binomial noise for the sample size (about seven
        // standard deviations at 200 samples and a 10 % share).
        let observed = 100 * got / total.max(1);
        if total >= 100 && observed.abs_diff(usize::from(split.share(color))) > MAX_SKEW {
            bail!(
                "{color} answered {observed} % of {total} requests, but the split gives it {} %",
                split.share(color)
            );
        }
    }
    let parts: Vec<String> = seen
        .iter()
        .map(|(color, n)| {
            format!(
                "{color} {} {n}/{total}",
                state.version(*color).unwrap_or("?")
            )
        })
        .collect();
    Ok(parts.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Color;

    fn state() -> DeployState {
        DeployState {
            generation: 2,
            split: Split::with(Color::Green, 10),
            stable: Color::Blue,
            versions: [
                (Color::Blue, "v1.0.0".into()),
                (Color::Green, "v1.1.0".into()),
            ]
            .into(),
            since: String::new(),
            previous: None,
        }
    }

    fn counts(rows: &[(&str, &str, usize)]) -> BTreeMap<(String, String), usize> {
        rows.iter()
            .map(|(c, v, n)| ((c.to_string(), v.to_string()), *n))
            .collect()
    }

    #[test]
    fn versions_must_match_the_split_and_the_state() {
        let split = Split::with(Color::Green, 10);
        let ok = check_versions(
            &counts(&[("blue", "v1.0.0", 178), ("green", "v1.1.0", 22)]),
            split,
            &state(),
        )
        .unwrap();
        assert_eq!(ok, "blue v1.0.0 178/200, green v1.1.0 22/200");
        let cases = [
            (
                counts(&[("blue", "v1.0.0", 200)]),
                split,
                "green should take 10 %",
            ),
            (
                counts(&[("blue", "v1.1.0", 200)]),
                Split::all(Color::Blue),
                "blue answered with \"v1.1.0\"",
            ),
            (
                counts(&[("green", "v1.1.0", 5), ("blue", "v1.0.0", 195)]),
                Split::all(Color::Blue),
                "came from green",
            ),
            (counts(&[("", "v1.0.0", 1)]), split, "without a color"),
            (
                counts(&[("blue", "v1.0.0", 100), ("green", "v1.1.0", 100)]),
                split,
                "blue answered 50 % of 200 requests, but the split gives it 90 %",
            ),
        ];
        for (counts, split, message) in cases {
            let err = check_versions(&counts, split, &state())
                .unwrap_err()
                .to_string();
            assert!(err.contains(message), "{err:?} lacks {message:?}");
        }
    }
}

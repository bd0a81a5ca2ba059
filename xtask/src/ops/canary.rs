//! A stepped canary rollout (`canary --steps 10,25,50,100`):
//! 1. for each step: move the split (gated, verified, recorded like any operation);
//! 2. after each step but the last, hold, then judge the canary color's own `/metrics` over the
//!    hold ([`crate::domain::canary`]): prediction requests, 5xx answers, p99 latency;
//! 3. on a breach (too many errors, too slow, too few requests, or the canary stopped
//!    answering), send all traffic back to the stable color and fail, saying which limit broke.
//!
//! The caller holds the lock for the whole rollout.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::{execute, read_live, Deployment};
use crate::{
    domain::{
        canary::{analyse, Limits, Sample},
        Color, Request,
    },
    runtime::Part,
};

/// Runs the rollout through `steps` (already checked to rise), holding `hold` between them.
pub fn rollout(ctx: &Deployment, steps: &[u8], hold: Duration, limits: &Limits) -> Result<()> {
    let start = Instant::now();
    let live = read_live(ctx)?;
    let state = live.state(&ctx.config);
    let stable = live.split.active().unwrap_or(state.stable);
    let canary = stable.other();
    let version = |color: Color| state.version(color).unwrap_or("unknown").to_owned();
    crate::say!(
        "canary rollout of {canary} ({}) over {stable} ({}): {} %, holding {} s per step; limits: 5xx ≤ {:.2} %, p99 ≤ {} ms{}",
        version(canary),
        version(stable),
        steps.iter().map(u8::to_string).collect::<Vec<_>>().join(" → "),
        hold.as_secs(),
        limits.max_error_rate * 100.0,
        limits.max_p99.as_millis(),
        if limits.min_requests > 0 {
            format!(", ≥ {} requests", limits.min_requests)
        } else {
            String::new()
        }
    );
    let url = ctx.rt.url(Part::Color(canary));
    for (i, &percent) in steps.iter().enumerate() {
        crate::say!("step {}/{}: {percent} % to {canary}", i + 1, steps.len());
        execute(ctx, Request::Canary { percent })
            .with_context(|| format!("canary rollout stopped at step {} ({percent} %)", i + 1))?;
        if i + 1 == steps.len() {
            break;
        }
        let verdict = scrape(ctx, &url).and_then(|before| {
            std::thread::sleep(hold);
            Ok(analyse(&before, &scrape(ctx, &url)?))
        });
        let breach = match &verdict {
            Ok(verdict) => {
                crate::say!("  held {} s: {verdict}", hold.as_secs());
                limits.check(verdict).err()
            }
            Err(err) => Some(format!("{canary} stopped answering its metrics: {err:#}")),
        };
        if let Some(breach) = breach {
            crate::say!("  breach: {breach}; returning all traffic to {stable}");
            let back = execute(ctx, Request::Canary { percent: 0 });
            return match back {
                Ok(_) => Err(anyhow::anyhow!(
                    "canary rollout aborted at {percent} %: {breach}; all traffic is back on {stable} ({})",
                    version(stable)
                )),
                Err(err) => Err(err.context(format!(
                    "canary rollout aborted at {percent} % ({breach}), and returning traffic to {stable} failed: run `cargo xtask status`, then `cargo xtask canary --percent 0`"
                ))),
            };
        }
    }
    let last = steps.last().copied().unwrap_or(0);
    crate::say!(
        "canary rollout done: {canary} ({}) takes {last} % after {} step(s) in {:.1} s",
        version(canary),
        steps.len(),
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

/// One scrape of `url`'s `/metrics`.
fn scrape(ctx: &Deployment, url: &str) -> Result<Sample> {
    let response = ctx
        .client
        .get(format!("{url}/metrics"))
        .send()
        .with_context(|| format!("GET {url}/metrics"))?;
    let status = response.status();
    let text = response.text().context("read the metrics")?;
    if !status.is_success() {
        bail!("GET {url}/metrics answered {status}");
    }
    Ok(Sample::parse(&text))
}

//! A stepped canary rollout (`canary --steps 10,25,50,100`):
//! 1. for each step: move the split (gated, verified, recorded like any operation);
//! 2. after each step but the last, hold, then judge the canary color's own `/metrics` over the
//!    hold ([`crate::domain::canary`]): prediction requests, 5xx answers, p99 latency; a color
//!    with several replicas is every replica's counters summed;
//! 3. on a breach (too many errors, too slow, too few requests, or the canary stopped
//!    answering), send all traffic back to the stable color and fail, saying which limit broke.
//!
//! The caller holds the lock for the whole rollout.

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

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
    for (i, &percent) in steps.iter().enumerate() {
        crate::say!("step {}/{}: {percent} % to {canary}", i + 1, steps.len());
        execute(ctx, Request::Canary { percent })
            .with_context(|| format!("canary rollout stopped at step {} ({percent} %)", i + 1))?;
        if i + 1 == steps.len() {
            break;
        }
        let verdict = scrape_color(ctx, canary).and_then(|before| {
            std::thread::sleep(hold);
            let after = scrape_color(ctx, canary)?;
            let (before, after) = over_the_hold(&before, &after);
            Ok(analyse(&before, &after))
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

/// One scrape of each replica of `color` (one, where a color is one process), by replica.
fn scrape_color(ctx: &Deployment, color: Color) -> Result<BTreeMap<String, Sample>> {
    if ctx.rt.desired_replicas(color)?.is_none() {
        let url = ctx.rt.url(Part::Color(color));
        return Ok(BTreeMap::from([(color.to_string(), scrape(ctx, &url)?)]));
    }
    let mut samples = BTreeMap::new();
    for replica in ctx.rt.replicas(color)?.into_iter().filter(|r| r.running()) {
        let sample = scrape(ctx, &replica.url)
            .with_context(|| format!("{} on {}", replica.name, replica.node))?;
        samples.insert(format!("{}@{}", replica.name, replica.address), sample);
    }
    if samples.is_empty() {
        bail!("{color} has no running replica");
    }
    Ok(samples)
}

/// The color's counters before and after the hold, summed over the replicas that answered
/// the second scrape: one started during the hold counts from zero, one gone is left out (its
/// last counts are unknown), so no counter ever runs backwards.
fn over_the_hold(
    before: &BTreeMap<String, Sample>,
    after: &BTreeMap<String, Sample>,
) -> (Sample, Sample) {
    let mut sums = (Sample::default(), Sample::default());
    for (replica, later) in after {
        if let Some(earlier) = before.get(replica) {
            sums.0.add(earlier);
        }
        sums.1.add(later);
    }
    sums
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

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(requests: u64) -> Sample {
        Sample {
            requests,
            errors: 0,
            buckets: BTreeMap::from([("+Inf".to_owned(), requests)]),
        }
    }

    #[test]
    fn replicas_are_summed_and_a_replaced_one_never_counts_backwards() {
        let before = BTreeMap::from([
            ("green.1@a".to_owned(), sample(100)),
            ("green.2@b".to_owned(), sample(500)),
        ]);
        // green.2 was replaced during the hold (a new address, counting from zero).
        let after = BTreeMap::from([
            ("green.1@a".to_owned(), sample(160)),
            ("green.2@c".to_owned(), sample(30)),
        ]);
        let (b, a) = over_the_hold(&before, &after);
        assert_eq!(analyse(&b, &a).requests, 90);
    }
}

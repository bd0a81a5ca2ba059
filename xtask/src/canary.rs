//! `cargo xtask canary`: send part of the traffic to the standby color, in one step or stepped.
//!
//! `--percent N` is one gated operation, like a switch. `--steps 10,25,50,100` is a rollout:
//! 1. take the lock once, for the whole rollout;
//! 2. for each step: move the split (gated, verified, recorded like any operation);
//! 3. after each step but the last, hold for `--hold` seconds, then analyse the canary color's
//!    own `/metrics` over the hold: prediction requests, 5xx answers, p99 latency;
//! 4. on a breach (too many errors, too slow, too few requests, or the canary stopped
//!    answering), send all traffic back to the stable color and fail, saying which limit broke.
//!
//! The analysis is pure ([`Sample::parse`], [`analyse`], [`Limits::check`]) and unit-tested.

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use xshell::Shell;

use crate::{
    domain::{Color, Request},
    flags,
    runtime::Part,
    switch::{execute, read_live, Ctx},
};

impl flags::Canary {
    pub(crate) fn run(self, sh: &Shell, global: &flags::Global) -> Result<()> {
        let ctx = Ctx::open(sh, global)?;
        if let Some(percent) = self.percent {
            let _lock = ctx.lock(&format!("canary --percent {percent}"))?;
            return execute(&ctx, Request::Canary { percent }).map(drop);
        }
        let steps = self.steps.clone().unwrap_or_default();
        check_steps(&steps)?;
        let limits = Limits {
            max_error_rate: self.max_error_rate,
            max_p99: Duration::from_secs_f64(self.max_p99_ms / 1000.0),
            min_requests: self.min_requests,
        };
        let steps_text = steps
            .iter()
            .map(u8::to_string)
            .collect::<Vec<_>>()
            .join(",");
        let _lock = ctx.lock(&format!("canary --steps {steps_text}"))?;
        rollout(&ctx, &steps, Duration::from_secs(self.hold), &limits)
    }
}

fn rollout(ctx: &Ctx, steps: &[u8], hold: Duration, limits: &Limits) -> Result<()> {
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

/// Steps must rise strictly: a rollout only moves forward (rollback and `--percent 0` go back).
fn check_steps(steps: &[u8]) -> Result<()> {
    if steps.is_empty() {
        bail!("--steps needs at least one percentage, e.g. `--steps 10,25,50,100`");
    }
    if let Some(pair) = steps.windows(2).find(|pair| pair[1] <= pair[0]) {
        bail!(
            "--steps must rise: {} then {} (e.g. `--steps 10,25,50,100`)",
            pair[0],
            pair[1]
        );
    }
    Ok(())
}

fn scrape(ctx: &Ctx, url: &str) -> Result<Sample> {
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

/// Counters of the prediction routes (`/predict`, `…/infer`) read from one `/metrics` scrape.
#[derive(Debug, Clone, Default, PartialEq)]
struct Sample {
    requests: u64,
    errors: u64,
    /// Cumulative latency histogram: upper bound in seconds (as written) → count.
    buckets: BTreeMap<String, u64>,
}

impl Sample {
    fn parse(text: &str) -> Sample {
        let mut sample = Sample::default();
        for line in text.lines().filter(|line| !line.starts_with('#')) {
            let Some((series, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let Ok(value) = value.trim().parse::<f64>() else {
                continue;
            };
            let value = value as u64;
            let Some(route) = label(series, "route") else {
                continue;
            };
            if !(route.ends_with("/predict") || route.ends_with("/infer")) {
                continue;
            }
            if series.starts_with("http_requests_total{") {
                sample.requests += value;
                if label(series, "status").is_some_and(|status| status.starts_with('5')) {
                    sample.errors += value;
                }
            } else if series.starts_with("http_request_duration_seconds_bucket{") {
                if let Some(le) = label(series, "le") {
                    *sample.buckets.entry(le.to_owned()).or_default() += value;
                }
            }
        }
        sample
    }
}

/// The value of `name="…"` in a series' labels.
fn label<'a>(series: &'a str, name: &str) -> Option<&'a str> {
    let start = series.find(&format!("{name}=\""))? + name.len() + 2;
    let len = series[start..].find('"')?;
    Some(&series[start..start + len])
}

/// What the canary did between two scrapes.
#[derive(Debug, Clone, PartialEq)]
struct Verdict {
    requests: u64,
    errors: u64,
    /// The upper bound of the histogram bucket holding the 99th percentile (`None`: no requests).
    p99: Option<f64>,
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} prediction requests, {} 5xx",
            self.requests, self.errors
        )?;
        if self.requests > 0 {
            write!(f, " ({:.2} %)", self.error_rate() * 100.0)?;
        }
        match self.p99 {
            Some(p99) if p99.is_finite() => write!(f, ", p99 ≤ {:.1} ms", p99 * 1000.0),
            Some(_) => write!(f, ", p99 beyond the largest bucket"),
            None => Ok(()),
        }
    }
}

impl Verdict {
    fn error_rate(&self) -> f64 {
        if self.requests == 0 {
            0.0
        } else {
            self.errors as f64 / self.requests as f64
        }
    }
}

fn analyse(before: &Sample, after: &Sample) -> Verdict {
    let requests = after.requests.saturating_sub(before.requests);
    let errors = after.errors.saturating_sub(before.errors);
    let mut buckets: Vec<(f64, u64)> = after
        .buckets
        .iter()
        .map(|(le, &count)| {
            let bound = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().unwrap_or(f64::INFINITY)
            };
            (
                bound,
                count.saturating_sub(before.buckets.get(le).copied().unwrap_or(0)),
            )
        })
        .collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    let total = buckets.last().map_or(0, |&(_, count)| count);
    let p99 = (total > 0).then(|| {
        let rank = (total * 99).div_ceil(100);
        buckets
            .iter()
            .find(|&&(_, count)| count >= rank)
            .map_or(f64::INFINITY, |&(bound, _)| bound)
    });
    Verdict {
        requests,
        errors,
        p99,
    }
}

/// The limits a step must stay within.
#[derive(Debug, Clone)]
struct Limits {
    max_error_rate: f64,
    max_p99: Duration,
    min_requests: u64,
}

impl Limits {
    /// `Err` says which limit broke and by how much.
    fn check(&self, verdict: &Verdict) -> std::result::Result<(), String> {
        if verdict.requests < self.min_requests {
            return Err(format!(
                "only {} prediction requests reached the canary (at least {} needed to judge it)",
                verdict.requests, self.min_requests
            ));
        }
        if verdict.error_rate() > self.max_error_rate {
            return Err(format!(
                "{} of {} prediction requests failed with a 5xx ({:.2} % > {:.2} %)",
                verdict.errors,
                verdict.requests,
                verdict.error_rate() * 100.0,
                self.max_error_rate * 100.0
            ));
        }
        if let Some(p99) = verdict.p99 {
            if p99 > self.max_p99.as_secs_f64() {
                return Err(format!(
                    "p99 latency above {} ms (the 99th percentile falls in the bucket up to {} ms)",
                    self.max_p99.as_millis(),
                    if p99.is_finite() {
                        format!("{:.0}", p99 * 1000.0)
                    } else {
                        "+Inf".to_owned()
                    }
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const METRICS: &str = r#"# HELP http_requests_total HTTP requests answered, by route and status.
# TYPE http_requests_total counter
http_requests_total{route="/health",status="200"} 40
http_requests_total{route="/predict",status="200"} 95
http_requests_total{route="/predict",status="422"} 3
http_requests_total{route="/predict",status="500"} 2
http_requests_total{route="/v2/models/{name}/infer",status="200"} 10
# TYPE http_request_duration_seconds histogram
http_request_duration_seconds_bucket{route="/health",le="0.001"} 40
http_request_duration_seconds_bucket{route="/predict",le="0.001"} 90
http_request_duration_seconds_bucket{route="/predict",le="0.01"} 99
http_request_duration_seconds_bucket{route="/predict",le="+Inf"} 100
http_request_duration_seconds_bucket{route="/v2/models/{name}/infer",le="0.001"} 10
http_request_duration_seconds_bucket{route="/v2/models/{name}/infer",le="0.01"} 10
http_request_duration_seconds_bucket{route="/v2/models/{name}/infer",le="+Inf"} 10
"#;

    #[test]
    fn parse_counts_only_prediction_routes() {
        let sample = Sample::parse(METRICS);
        assert_eq!(sample.requests, 110);
        assert_eq!(sample.errors, 2);
        assert_eq!(sample.buckets["0.001"], 100);
        assert_eq!(sample.buckets["+Inf"], 110);
    }

    #[test]
    fn analyse_takes_the_difference_between_scrapes() {
        let before = Sample::parse(METRICS);
        let after = Sample::parse(
            &METRICS
                .replace(r#"status="200"} 95"#, r#"status="200"} 195"#)
                .replace(r#"le="0.001"} 90"#, r#"le="0.001"} 189"#)
                .replace(r#"le="0.01"} 99"#, r#"le="0.01"} 199"#)
                .replace(r#"le="+Inf"} 100"#, r#"le="+Inf"} 200"#),
        );
        let verdict = analyse(&before, &after);
        assert_eq!(verdict.requests, 100);
        assert_eq!(verdict.errors, 0);
        // 99 of 100 new requests within 1 ms: the 99th percentile is in the 1 ms bucket.
        assert_eq!(verdict.p99, Some(0.001));
    }

    #[test]
    fn no_requests_means_no_percentile() {
        let sample = Sample::parse(METRICS);
        let verdict = analyse(&sample, &sample);
        assert_eq!(
            verdict,
            Verdict {
                requests: 0,
                errors: 0,
                p99: None
            }
        );
    }

    fn limits() -> Limits {
        Limits {
            max_error_rate: 0.01,
            max_p99: Duration::from_millis(250),
            min_requests: 10,
        }
    }

    #[test]
    fn limits_name_the_breach() {
        let ok = Verdict {
            requests: 1000,
            errors: 10,
            p99: Some(0.1),
        };
        assert_eq!(limits().check(&ok), Ok(()));
        let errors = Verdict {
            requests: 1000,
            errors: 11,
            p99: Some(0.1),
        };
        assert!(limits().check(&errors).unwrap_err().contains("11 of 1000"));
        let slow = Verdict {
            requests: 1000,
            errors: 0,
            p99: Some(0.5),
        };
        assert!(limits().check(&slow).unwrap_err().contains("above 250 ms"));
        let quiet = Verdict {
            requests: 3,
            errors: 0,
            p99: Some(0.001),
        };
        assert!(limits().check(&quiet).unwrap_err().contains("at least 10"));
    }

    #[test]
    fn steps_must_rise() {
        assert!(check_steps(&[10, 25, 50, 100]).is_ok());
        assert!(check_steps(&[50]).is_ok());
        assert!(check_steps(&[]).is_err());
        let err = check_steps(&[10, 50, 25]).unwrap_err().to_string();
        assert!(err.contains("50 then 25"), "{err}");
        assert!(check_steps(&[10, 10]).is_err());
    }
}

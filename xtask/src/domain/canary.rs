//! Judging a canary step, purely: counters from two `/metrics` scrapes of the canary color
//! ([`Sample::parse`]), what happened between them ([`analyse`]), and whether that stays within
//! the step's limits ([`Limits::check`]); and the rule that a stepped rollout only rises.

use std::{collections::BTreeMap, time::Duration};

use anyhow::{bail, Result};

/// Steps must rise strictly: a rollout only moves forward (rollback and `--percent 0` go back).
pub fn check_steps(steps: &[u8]) -> Result<()> {
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

/// The routes that serve predictions: HTTP `/predict` and `…/infer`, and the gRPC methods
/// `Predict`, `PredictBatch` and `ModelInfer` (the service counts RPCs under their method path).
pub fn is_prediction_route(route: &str) -> bool {
    [
        "/predict",
        "/infer",
        "/Predict",
        "/PredictBatch",
        "/ModelInfer",
    ]
    .iter()
    .any(|end| route.ends_with(end))
}

/// Counters of the prediction routes ([`is_prediction_route`]) read from one `/metrics` scrape.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Sample {
    pub requests: u64,
    pub errors: u64,
    /// Cumulative latency histogram: upper bound in seconds (as written) → count.
    pub buckets: BTreeMap<String, u64>,
}

impl Sample {
    /// Adds `other`'s counters (another replica of the same color).
    pub fn add(&mut self, other: &Sample) {
        self.requests += other.requests;
        self.errors += other.errors;
        for (le, count) in &other.buckets {
            *self.buckets.entry(le.clone()).or_default() += count;
        }
    }

    pub fn parse(text: &str) -> Sample {
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
            if !is_prediction_route(route) {
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
pub struct Verdict {
    pub requests: u64,
    pub errors: u64,
    /// The upper bound of the histogram bucket holding the 99th percentile (`None`: no requests).
    pub p99: Option<f64>,
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
    pub fn error_rate(&self) -> f64 {
        if self.requests == 0 {
            0.0
        } else {
            self.errors as f64 / self.requests as f64
        }
    }
}

/// What the canary did between the scrapes `before` and `after`.
pub fn analyse(before: &Sample, after: &Sample) -> Verdict {
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
pub struct Limits {
    pub max_error_rate: f64,
    pub max_p99: Duration,
    pub min_requests: u64,
}

impl Limits {
    /// `Err` says which limit broke and by how much.
    pub fn check(&self, verdict: &Verdict) -> std::result::Result<(), String> {
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
http_requests_total{route="/prediction.PredictionService/Predict",status="200"} 20
http_requests_total{route="/prediction.PredictionService/Predict",status="503"} 1
http_requests_total{route="/grpc.health.v1.Health/Check",status="200"} 7
http_request_duration_seconds_bucket{route="/prediction.PredictionService/Predict",le="0.001"} 21
http_request_duration_seconds_bucket{route="/prediction.PredictionService/Predict",le="+Inf"} 21
"#;

    #[test]
    fn parse_counts_only_prediction_routes() {
        let sample = Sample::parse(METRICS);
        // HTTP /predict and infer, and gRPC Predict; not /health nor the gRPC health check.
        assert_eq!(sample.requests, 131);
        assert_eq!(sample.errors, 3);
        assert_eq!(sample.buckets["0.001"], 121);
        assert_eq!(sample.buckets["+Inf"], 131);
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

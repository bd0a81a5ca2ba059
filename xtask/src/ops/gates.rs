//! Gates: checks a color must pass before it gets traffic. A failed gate leaves traffic alone.
//!
//! [`GATES`] is the list, in order; each is named so the error says which one failed and why:
//! 1. `health`: `GET /health` answers 200 `{"status":"ok","version":<expected>}`;
//! 2. `predictions`: the golden Iris rows are classified as expected (a model-aware gate);
//! 3. `bad-input`: malformed JSON and a wrong feature count get a 4xx, not a 5xx;
//! 4. `grpc-health`: the standard `grpc.health.v1` check on the color's gRPC port is SERVING;
//! 5. `grpc-predictions`: the golden rows over gRPC `Predict` give the expected classes with the
//!    expected version (in the message and the `x-model-version` metadata), and a wrong feature
//!    count gets `INVALID_ARGUMENT`.
//!
//! A new gate is one entry in [`GATES`]. The operation engine reaches colors and the balancer
//! only through [`Checks`], so its failure paths can be tested without sockets; [`Http`] is the
//! real implementation. The checks of each reply are pure functions ([`check_health`],
//! [`check_prediction`], [`check_served`]).

use std::time::Duration;

use anyhow::{bail, Context, Result};
use reqwest::blocking::Client;
use serde_json::{json, Value};

pub use crate::http::{balancer_answers, client, timed_out};
use crate::{
    domain::{Color, DeployState, Split},
    grpc::{self, Predicted, Probe},
};

/// What a gate checks: a color's two addresses and the version it must serve.
#[derive(Debug, Clone, Copy)]
pub struct Target<'a> {
    /// The color's HTTP base URL.
    pub url: &'a str,
    /// The color's gRPC address (`http://host:port`).
    pub grpc_url: &'a str,
    pub version: &'a str,
}

/// One gate: a name for messages and the check.
pub struct Gate {
    pub name: &'static str,
    pub check: fn(&Client, &Target) -> Result<()>,
}

/// Every gate a color passes before its share of traffic grows, in order.
pub const GATES: [Gate; 5] = [
    Gate {
        name: "health",
        check: |client, t| {
            let (status, body) = health(client, t.url)?;
            check_health(status, &body, Some(t.version)).map(drop)
        },
    },
    Gate {
        name: "predictions",
        check: |client, t| golden(client, t.url),
    },
    Gate {
        name: "bad-input",
        check: |client, t| bad_input(client, t.url),
    },
    Gate {
        name: "grpc-health",
        check: |_, t| {
            let probe = Probe::connect(t.grpc_url, GRPC_TIMEOUT)?;
            grpc::check_serving(probe.serving("")?)
        },
    },
    Gate {
        name: "grpc-predictions",
        check: |_, t| grpc_golden(t.grpc_url, Some(t.version)).map(drop),
    },
];

/// How long one gRPC check may take.
pub const GRPC_TIMEOUT: Duration = Duration::from_secs(5);

/// The golden rows over gRPC `Predict` (the version too, when given), then a wrong feature
/// count, which must get `INVALID_ARGUMENT`. Returns the colors that answered (through the
/// balancer: its `x-served-by`).
pub fn grpc_golden(grpc_url: &str, version: Option<&str>) -> Result<Vec<Predicted>> {
    grpc_golden_with(&Probe::connect(grpc_url, GRPC_TIMEOUT)?, version)
}

/// [`grpc_golden`] over an open probe (a tester's, say).
pub fn grpc_golden_with(probe: &Probe, version: Option<&str>) -> Result<Vec<Predicted>> {
    let mut answers = Vec::new();
    for (features, class, label) in GOLDEN {
        let got = probe.predict(grpc::as_f32(&features))?;
        grpc::check_predicted(&got, &features, class, label, version)?;
        answers.push(got);
    }
    let (code, message) = probe.predict_refused(vec![1.0, 2.0])?;
    if code != tonic::Code::InvalidArgument {
        bail!(
            "gRPC Predict with 2 features answered {code:?} ({message}), expected INVALID_ARGUMENT"
        );
    }
    Ok(answers)
}

/// One answer through the balancer: its status, the color that served it and its version
/// (`""` when a header is absent).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Served {
    pub status: u16,
    pub color: String,
    pub version: String,
}

/// How the operation engine reaches colors and the balancer.
pub trait Checks {
    /// Runs every gate against the color at `target` (named `who` in errors).
    fn gate(&self, who: &str, target: &Target) -> Result<()>;
    /// One `GET /health` through the balancer at `url`.
    fn through_balancer(&self, url: &str) -> Result<Served>;
}

/// The real checks, over HTTP.
pub struct Http(pub Client);

impl Checks for Http {
    fn gate(&self, who: &str, target: &Target) -> Result<()> {
        for gate in &GATES {
            (gate.check)(&self.0, target)
                .with_context(|| format!("gate `{}` failed for {who}", gate.name))?;
        }
        Ok(())
    }

    fn through_balancer(&self, url: &str) -> Result<Served> {
        let response = self
            .0
            .get(format!("{url}/health"))
            .send()
            .with_context(|| format!("no answer from {url}"))?;
        let (color, version) = served_by(&response);
        Ok(Served {
            status: response.status().as_u16(),
            color,
            version,
        })
    }
}

/// Rows every model version must classify correctly: features, class index, label.
pub const GOLDEN: [([f64; 4], u64, &str); 3] = [
    ([5.1, 3.5, 1.4, 0.2], 0, "setosa"),
    ([7.0, 3.2, 4.7, 1.4], 1, "versicolor"),
    ([6.3, 3.3, 6.0, 2.5], 2, "virginica"),
];

/// The header every service response carries.
pub const VERSION_HEADER: &str = "x-model-version";
/// The header the balancer adds: the color that answered.
pub const SERVED_BY_HEADER: &str = "x-served-by";

/// The color and version a response through the balancer names (`""` when a header is absent).
pub fn served_by(response: &reqwest::blocking::Response) -> (String, String) {
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned()
    };
    (header(SERVED_BY_HEADER), header(VERSION_HEADER))
}

/// Checks one answer through the balancer against the split and the recorded versions: it came
/// from a color the split gives traffic, serving the version the state records for it.
/// Shared by the switch's verification and by `smoke`.
pub fn check_served(
    served: &str,
    version: &str,
    split: Split,
    state: &DeployState,
) -> Result<Color> {
    let color: Color = served
        .parse()
        .map_err(|_| anyhow::anyhow!("an answer without a color in X-Served-By ({served:?})"))?;
    if split.share(color) == 0 {
        bail!("an answer came from {color}, which the split {split} gives no traffic (is a color down?)");
    }
    let expected = state.version(color).unwrap_or("?");
    if version != expected {
        bail!("{color} answered with {version:?}, but the state records {expected}");
    }
    Ok(color)
}

/// `GET /health`: the status code and the body.
pub fn health(client: &Client, url: &str) -> Result<(u16, String)> {
    let response = client
        .get(format!("{url}/health"))
        .send()
        .with_context(|| format!("no answer from {url}/health"))?;
    let status = response.status().as_u16();
    Ok((status, response.text().unwrap_or_default()))
}

/// The version a healthy color reports, or why it is not healthy.
pub fn healthy_version(client: &Client, url: &str) -> Result<String> {
    let (status, body) = health(client, url)?;
    check_health(status, &body, None)
}

/// Checks a `/health` reply; returns the version it reports.
pub fn check_health(status: u16, body: &str, expected: Option<&str>) -> Result<String> {
    if status != 200 {
        bail!("/health answered {status}: {}", body.trim());
    }
    let value: Value = serde_json::from_str(body)
        .with_context(|| format!("/health answered non-JSON: {body:?}"))?;
    if value["status"] != "ok" {
        bail!("/health reports status {}", value["status"]);
    }
    let Some(version) = value["version"].as_str() else {
        bail!("/health reports no version: {body}")
    };
    if let Some(expected) = expected {
        if version != expected {
            bail!("it serves {version}, expected {expected} (deploy {expected} to it, or switch to the color that has it)");
        }
    }
    Ok(version.to_owned())
}

/// Posts each golden row to `/predict` and checks the class.
pub fn golden(client: &Client, url: &str) -> Result<()> {
    for (features, class, label) in GOLDEN {
        let response = client
            .post(format!("{url}/predict"))
            .json(&json!({ "features": features }))
            .send()
            .with_context(|| format!("no answer from {url}/predict"))?;
        let status = response.status().as_u16();
        let body = response.text().unwrap_or_default();
        check_prediction(status, &body, &features, class, label)?;
    }
    Ok(())
}

/// Checks one `/predict` reply against the expected class.
pub fn check_prediction(
    status: u16,
    body: &str,
    features: &[f64; 4],
    class: u64,
    label: &str,
) -> Result<()> {
    if status != 200 {
        bail!("/predict {features:?} answered {status}: {}", body.trim());
    }
    let value: Value = serde_json::from_str(body)
        .with_context(|| format!("/predict answered non-JSON: {body:?}"))?;
    let got = value["class"].as_u64();
    if got != Some(class) {
        bail!(
            "/predict {features:?} gave class {} ({}), expected {class} ({label})",
            value["class"],
            value["label"]
        );
    }
    Ok(())
}

/// Sends bad input; each must get a 4xx.
pub fn bad_input(client: &Client, url: &str) -> Result<()> {
    let cases: [(&str, &str); 2] = [
        ("a wrong feature count", r#"{"features":[1,2]}"#),
        ("malformed JSON", "{\"features\":"),
    ];
    for (what, body) in cases {
        let response = client
            .post(format!("{url}/predict"))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .with_context(|| format!("no answer from {url}/predict"))?;
        let status = response.status().as_u16();
        if !(400..500).contains(&status) {
            bail!("/predict with {what} answered {status}, expected a 4xx");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_reply_must_be_ok_with_the_expected_version() {
        let ok = r#"{"status":"ok","version":"v1.1.0","uptime":3}"#;
        assert_eq!(check_health(200, ok, Some("v1.1.0")).unwrap(), "v1.1.0");
        assert_eq!(check_health(200, ok, None).unwrap(), "v1.1.0");
        let cases = [
            (200, ok, Some("v1.0.0"), "it serves v1.1.0, expected v1.0.0"),
            (503, "down", None, "/health answered 503"),
            (200, "<html>", None, "non-JSON"),
            (
                200,
                r#"{"status":"starting","version":"v1"}"#,
                None,
                "status \"starting\"",
            ),
            (200, r#"{"status":"ok"}"#, None, "no version"),
        ];
        for (status, body, expected, message) in cases {
            let err = check_health(status, body, expected)
                .unwrap_err()
                .to_string();
            assert!(err.contains(message), "{err:?} lacks {message:?}");
        }
    }

    #[test]
    fn prediction_reply_must_name_the_golden_class() {
        let row = [5.1, 3.5, 1.4, 0.2];
        let ok =
            r#"{"class":0,"label":"setosa","probabilities":[0.9,0.05,0.05],"version":"v1.0.0"}"#;
        check_prediction(200, ok, &row, 0, "setosa").unwrap();
        let wrong = r#"{"class":2,"label":"virginica"}"#;
        let err = check_prediction(200, wrong, &row, 0, "setosa")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("gave class 2 (\"virginica\"), expected 0 (setosa)"),
            "{err}"
        );
        let err = check_prediction(500, "boom", &row, 0, "setosa")
            .unwrap_err()
            .to_string();
        assert!(err.contains("answered 500"), "{err}");
    }
}

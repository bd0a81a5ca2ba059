//! gRPC probes shared by the layers: the standard health check (`grpc.health.v1`) and the
//! service's `prediction.PredictionService`, called the way a client does (HTTP/2 cleartext).
//!
//! The xtask is synchronous; each [`Probe`] owns a small current-thread runtime and one
//! channel, so a gate or a smoke check opens one connection and makes its calls over it. What
//! a reply means is decided by pure functions ([`check_serving`], [`check_predicted`]).

use std::time::Duration;

use anyhow::{bail, Context, Result};
use ml_proto::prediction::{prediction_service_client::PredictionServiceClient, PredictRequest};
use tonic::{
    metadata::{Ascii, MetadataKey, MetadataValue},
    transport::{Channel, Endpoint},
};
use tonic_health::pb::{
    health_check_response::ServingStatus, health_client::HealthClient, HealthCheckRequest,
};

/// The response metadata naming the color that answered (added by the balancer).
pub const SERVED_BY: &str = "x-served-by";

/// One prediction, as the gRPC API returns it, with the response's metadata.
#[derive(Debug, Clone, PartialEq)]
pub struct Predicted {
    pub class: i32,
    pub label: String,
    /// The version in the message.
    pub version: String,
    /// The version in the `x-model-version` metadata.
    pub version_metadata: String,
    /// The color in the `x-served-by` metadata (`""` when not through the balancer).
    pub served_by: String,
}

/// A connection to one gRPC endpoint (`http://host:port`).
pub struct Probe {
    runtime: tokio::runtime::Runtime,
    channel: Channel,
    url: String,
    /// Metadata sent with every call (a tester's color and token).
    metadata: Vec<(MetadataKey<Ascii>, MetadataValue<Ascii>)>,
}

impl Probe {
    /// Connects to `url`; each call gives up after `timeout`.
    pub fn connect(url: &str, timeout: Duration) -> Result<Probe> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("start the gRPC client's runtime")?;
        let endpoint = Endpoint::from_shared(url.to_owned())
            .with_context(|| format!("{url:?} is not a gRPC address"))?
            .connect_timeout(timeout.min(Duration::from_secs(2)))
            .timeout(timeout);
        let channel = runtime
            .block_on(endpoint.connect())
            .with_context(|| format!("no gRPC connection to {url}"))?;
        Ok(Probe {
            runtime,
            channel,
            url: url.to_owned(),
            metadata: Vec::new(),
        })
    }

    /// Sends `key: value` with every call (header names are metadata keys in gRPC).
    pub fn with_metadata(mut self, key: &str, value: &str) -> Result<Probe> {
        let key = MetadataKey::from_bytes(key.to_ascii_lowercase().as_bytes())
            .with_context(|| format!("{key:?} is not a gRPC metadata key"))?;
        let value = value
            .parse()
            .with_context(|| format!("{value:?} is not a gRPC metadata value"))?;
        self.metadata.push((key, value));
        Ok(self)
    }

    fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        for (key, value) in &self.metadata {
            request.metadata_mut().insert(key.clone(), value.clone());
        }
        request
    }

    /// `grpc.health.v1.Health/Check` for `service` (`""`: the whole server).
    pub fn serving(&self, service: &str) -> Result<ServingStatus> {
        let mut client = HealthClient::new(self.channel.clone());
        let request = self.request(HealthCheckRequest {
            service: service.to_owned(),
        });
        let reply = self
            .runtime
            .block_on(client.check(request))
            .with_context(|| format!("grpc.health.v1 Check at {}", self.url))?;
        Ok(reply.into_inner().status())
    }

    /// `prediction.PredictionService/Predict` for one row.
    pub fn predict(&self, features: [f32; 4]) -> Result<Predicted> {
        let mut client = PredictionServiceClient::new(self.channel.clone());
        let request = self.request(PredictRequest {
            features: features.to_vec(),
        });
        let reply = self
            .runtime
            .block_on(client.predict(request))
            .map_err(|status| anyhow::anyhow!("{}: {}", status.code(), status.message()))
            .with_context(|| format!("Predict {features:?} at {}", self.url))?;
        let metadata = |key: &str| {
            reply
                .metadata()
                .get(key)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_owned()
        };
        let (version_metadata, served_by) = (
            metadata(ml_proto::MODEL_VERSION_METADATA),
            metadata(SERVED_BY),
        );
        let message = reply.into_inner();
        Ok(Predicted {
            class: message.prediction,
            label: message.label,
            version: message.model_version,
            version_metadata,
            served_by,
        })
    }

    /// The gRPC status code and message of a Predict with `features`, which must fail.
    pub fn predict_refused(&self, features: Vec<f32>) -> Result<(tonic::Code, String)> {
        let mut client = PredictionServiceClient::new(self.channel.clone());
        match self
            .runtime
            .block_on(client.predict(self.request(PredictRequest { features })))
        {
            Ok(reply) => bail!(
                "Predict with bad input answered class {} instead of an error",
                reply.into_inner().prediction
            ),
            Err(status) => Ok((status.code(), status.message().to_owned())),
        }
    }
}

/// `host:port` of a gRPC URL (`http://host:port`), as people type it into a client.
pub fn address(url: &str) -> &str {
    url.strip_prefix("http://").unwrap_or(url)
}

/// The health check's answer must be SERVING.
pub fn check_serving(status: ServingStatus) -> Result<()> {
    if status != ServingStatus::Serving {
        bail!(
            "grpc.health.v1 reports {} (expected SERVING)",
            status.as_str_name()
        );
    }
    Ok(())
}

/// A golden row's gRPC prediction: the expected class, and the expected version both in the
/// message and in the metadata.
pub fn check_predicted(
    got: &Predicted,
    features: &[f64; 4],
    class: u64,
    label: &str,
    version: Option<&str>,
) -> Result<()> {
    if u64::try_from(got.class).ok() != Some(class) {
        bail!(
            "gRPC Predict {features:?} gave class {} ({:?}), expected {class} ({label})",
            got.class,
            got.label
        );
    }
    if got.version != got.version_metadata {
        bail!(
            "gRPC Predict answered version {:?} in the message but {:?} in x-model-version",
            got.version,
            got.version_metadata
        );
    }
    if let Some(expected) = version {
        if got.version != expected {
            bail!(
                "gRPC Predict was answered by {:?}, expected {expected}",
                got.version
            );
        }
    }
    Ok(())
}

/// The golden rows as the gRPC API takes them (`float`).
pub fn as_f32(row: &[f64; 4]) -> [f32; 4] {
    row.map(|x| x as f32)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn predicted(class: i32, version: &str, metadata: &str) -> Predicted {
        Predicted {
            class,
            label: "setosa".into(),
            version: version.into(),
            version_metadata: metadata.into(),
            served_by: String::new(),
        }
    }

    #[test]
    fn a_grpc_prediction_must_have_the_class_and_one_version() {
        let row = [5.1, 3.5, 1.4, 0.2];
        check_predicted(&predicted(0, "v1", "v1"), &row, 0, "setosa", Some("v1")).unwrap();
        let cases = [
            (predicted(2, "v1", "v1"), "gave class 2"),
            (predicted(0, "v1", "v2"), "but \"v2\" in x-model-version"),
            (predicted(0, "v2", "v2"), "expected v1"),
        ];
        for (got, message) in cases {
            let err = check_predicted(&got, &row, 0, "setosa", Some("v1"))
                .unwrap_err()
                .to_string();
            assert!(err.contains(message), "{err:?} lacks {message:?}");
        }
    }

    #[test]
    fn only_serving_passes() {
        check_serving(ServingStatus::Serving).unwrap();
        let err = check_serving(ServingStatus::NotServing)
            .unwrap_err()
            .to_string();
        assert!(err.contains("NOT_SERVING"), "{err}");
    }
}

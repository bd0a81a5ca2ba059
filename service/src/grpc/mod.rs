//! The gRPC side of the service: its own port (`GRPC_PORT`), the same state as HTTP (one
//! loaded model, one set of metrics, one drain).
//!
//! - [`prediction`]: `prediction.PredictionService` (Predict, PredictBatch, Health);
//! - [`inference`]: the Open Inference Protocol's `inference.GRPCInferenceService`, field for
//!   field as published, so `tritonclient.grpc` works unmodified;
//! - [`health`]: `grpc.health.v1.Health`, SERVING until the drain starts, NOT_SERVING from then;
//! - server reflection, `grpc.reflection.v1` and `v1alpha` (tools differ in which they ask),
//!   over the descriptors of this service's protos and of the health service;
//! - [`observe`]: the layer over every RPC: `x-model-version` and `x-request-id` metadata, the
//!   metrics, one log line;
//! - [`status`]: the one mapping from the service's [`ApiError`] to a gRPC status, and
//!   [`describe`], the way back to an HTTP status for the metrics.
//!
//! A request message larger than [`MAX_BODY_BYTES`] (HTTP's body limit) is refused by tonic
//! before any handler runs; tonic says OUT_OF_RANGE, [`observe`] turns it into the
//! RESOURCE_EXHAUSTED that gRPC's own servers answer, with a message that says what to do.

pub mod health;
pub mod inference;
pub mod observe;
pub mod prediction;

use std::future::Future;

use axum::http::StatusCode;
use ml_proto::{
    inference::grpc_inference_service_server::GrpcInferenceServiceServer,
    prediction::prediction_service_server::PredictionServiceServer,
};
use tokio::net::TcpListener;
use tonic::{
    transport::{server::TcpIncoming, Server},
    Code, Status,
};
use tonic_health::server::HealthReporter;

use crate::{
    error::ApiError,
    state::{AppState, MAX_BODY_BYTES},
};

/// Builds every gRPC service at once, and returns the future that serves them on `listener`
/// until `shutdown` completes; then it stops accepting (the listener is closed at once), tells
/// each connection to finish (HTTP/2 GOAWAY), and returns when every connection has closed.
/// The caller bounds that wait.
pub fn serve(
    listener: TcpListener,
    state: AppState,
    health: HealthReporter,
    shutdown: impl Future<Output = ()> + Send,
) -> std::io::Result<impl Future<Output = std::io::Result<()>>> {
    let builder = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(ml_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1 = builder().build_v1().map_err(std::io::Error::other)?;
    let reflection_v1alpha = builder().build_v1alpha().map_err(std::io::Error::other)?;
    // Small unary answers must leave at once, not wait for Nagle's algorithm.
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    let router = Server::builder()
        .layer(observe::ObserveLayer::new(state.clone()))
        .add_service(
            PredictionServiceServer::new(prediction::Service::new(state.clone()))
                .max_decoding_message_size(MAX_BODY_BYTES),
        )
        .add_service(
            GrpcInferenceServiceServer::new(inference::Service::new(state.clone()))
                .max_decoding_message_size(MAX_BODY_BYTES),
        )
        .add_service(health::server(&health, &state))
        .add_service(reflection_v1.max_decoding_message_size(MAX_BODY_BYTES))
        .add_service(reflection_v1alpha.max_decoding_message_size(MAX_BODY_BYTES));
    Ok(async move {
        router
            .serve_with_incoming_shutdown(incoming, shutdown)
            .await
            .map_err(std::io::Error::other)
    })
}

/// The gRPC status of a failed request, by the HTTP status the HTTP side answers it with:
/// 400 and 422 (the client's data is wrong) → INVALID_ARGUMENT, 404 → NOT_FOUND, 413 →
/// RESOURCE_EXHAUSTED. The message is the same as over HTTP: what was wrong and how to fix it.
pub fn status(err: ApiError) -> Status {
    let code = match err.status {
        StatusCode::BAD_REQUEST | StatusCode::UNPROCESSABLE_ENTITY => Code::InvalidArgument,
        StatusCode::NOT_FOUND => Code::NotFound,
        StatusCode::PAYLOAD_TOO_LARGE => Code::ResourceExhausted,
        s if s.is_client_error() => Code::InvalidArgument,
        _ => Code::Internal,
    };
    Status::new(code, err.message)
}

impl From<ApiError> for Status {
    fn from(err: ApiError) -> Status {
        status(err)
    }
}

/// The canonical name of `code` (as gRPC's documentation spells it, for the log) and the HTTP
/// status the same outcome gets on the HTTP side, under which `/metrics` counts the RPC:
/// OK → 200; INVALID_ARGUMENT, FAILED_PRECONDITION, OUT_OF_RANGE → 400; NOT_FOUND → 404;
/// UNIMPLEMENTED (an unknown service or method, as HTTP's unknown route) → 404;
/// RESOURCE_EXHAUSTED → 413; UNAVAILABLE → 503; INTERNAL, UNKNOWN, DATA_LOSS → 500; anything
/// else (CANCELLED → 499, DEADLINE_EXCEEDED → 504, ...) with its usual HTTP mapping, which
/// `/metrics` counts as `other`.
pub fn describe(code: Code) -> (&'static str, StatusCode) {
    let status = |s: u16| StatusCode::from_u16(s).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    match code {
        Code::Ok => ("OK", StatusCode::OK),
        Code::Cancelled => ("CANCELLED", status(499)),
        Code::Unknown => ("UNKNOWN", StatusCode::INTERNAL_SERVER_ERROR),
        Code::InvalidArgument => ("INVALID_ARGUMENT", StatusCode::BAD_REQUEST),
        Code::DeadlineExceeded => ("DEADLINE_EXCEEDED", StatusCode::GATEWAY_TIMEOUT),
        Code::NotFound => ("NOT_FOUND", StatusCode::NOT_FOUND),
        Code::AlreadyExists => ("ALREADY_EXISTS", StatusCode::CONFLICT),
        Code::PermissionDenied => ("PERMISSION_DENIED", StatusCode::FORBIDDEN),
        Code::ResourceExhausted => ("RESOURCE_EXHAUSTED", StatusCode::PAYLOAD_TOO_LARGE),
        Code::FailedPrecondition => ("FAILED_PRECONDITION", StatusCode::BAD_REQUEST),
        Code::Aborted => ("ABORTED", StatusCode::CONFLICT),
        Code::OutOfRange => ("OUT_OF_RANGE", StatusCode::BAD_REQUEST),
        Code::Unimplemented => ("UNIMPLEMENTED", StatusCode::NOT_FOUND),
        Code::Internal => ("INTERNAL", StatusCode::INTERNAL_SERVER_ERROR),
        Code::Unavailable => ("UNAVAILABLE", StatusCode::SERVICE_UNAVAILABLE),
        Code::DataLoss => ("DATA_LOSS", StatusCode::INTERNAL_SERVER_ERROR),
        Code::Unauthenticated => ("UNAUTHENTICATED", StatusCode::UNAUTHORIZED),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_mistakes_map_to_client_codes_with_their_message() {
        let cases = [
            (ApiError::bad_request("a"), Code::InvalidArgument),
            (ApiError::unprocessable("b"), Code::InvalidArgument),
            (ApiError::not_found("c"), Code::NotFound),
            (ApiError::too_large("d"), Code::ResourceExhausted),
        ];
        for (err, code) in cases {
            let message = err.message.clone();
            let status = status(err);
            assert_eq!((status.code(), status.message()), (code, message.as_str()));
        }
    }

    #[test]
    fn the_version_metadata_is_the_http_header() {
        assert_eq!(
            ml_proto::MODEL_VERSION_METADATA,
            crate::state::X_MODEL_VERSION.as_str()
        );
    }

    #[test]
    fn every_method_served_has_its_own_metrics_slot() {
        use prost::Message;
        let sets = [
            ml_proto::FILE_DESCRIPTOR_SET,
            tonic_health::pb::FILE_DESCRIPTOR_SET,
            tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
            tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
        ];
        let mut paths = Vec::new();
        for set in sets {
            let set = prost_types::FileDescriptorSet::decode(set).unwrap();
            for file in &set.file {
                for service in &file.service {
                    for method in &service.method {
                        paths.push(format!(
                            "/{}.{}/{}",
                            file.package(),
                            service.name(),
                            method.name()
                        ));
                    }
                }
            }
        }
        paths.sort();
        let mut known = crate::metrics::GRPC_METHODS.map(str::to_owned).to_vec();
        known.sort();
        assert_eq!(paths, known);
    }

    #[test]
    fn codes_read_back_as_the_http_status_of_the_same_outcome() {
        assert_eq!(describe(Code::Ok), ("OK", StatusCode::OK));
        assert_eq!(describe(Code::InvalidArgument).1.as_u16(), 400);
        assert_eq!(describe(Code::ResourceExhausted).1.as_u16(), 413);
        assert_eq!(describe(Code::Cancelled).1.as_u16(), 499);
        // Every ApiError status comes back as itself or as its class.
        for err in [ApiError::not_found("x"), ApiError::too_large("x")] {
            let http = err.status;
            assert_eq!(describe(status(err).code()).1, http);
        }
    }
}

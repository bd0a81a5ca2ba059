//! The OpenAPI 3 document, generated from the handlers' `#[utoipa::path]` annotations and the
//! request and response types, so it cannot drift from the code. A test checks that every
//! route of the router is in it.

use utoipa::OpenApi;

use crate::{error::ErrorBody, routes};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "ml-service",
        description = "Iris species classifier (multinomial logistic regression). Every response carries the model version in `X-Model-Version` and a request id in `X-Request-Id`."
    ),
    paths(
        routes::health,
        routes::predict::predict,
        routes::v2::live,
        routes::v2::ready,
        routes::v2::server_metadata,
        routes::v2::model_metadata,
        routes::v2::model_version_metadata,
        routes::v2::model_ready,
        routes::v2::model_version_ready,
        routes::v2::infer,
        routes::v2::infer_version,
        routes::openapi,
        routes::metrics,
    ),
    components(schemas(
        ErrorBody,
        routes::HealthResponse,
        routes::predict::PredictRequest,
        routes::predict::PredictResponse,
        routes::predict::BatchPredictResponse,
        routes::predict::RowPrediction,
        routes::v2::HealthStatus,
        routes::v2::ServerMetadata,
        routes::v2::ModelMetadata,
        routes::v2::TensorMetadata,
        routes::v2::ModelReady,
        routes::v2::InferRequest,
        routes::v2::InferInput,
        routes::v2::RequestedOutput,
        routes::v2::InferResponse,
        routes::v2::InferOutput,
        routes::v2::OutputData,
    ))
)]
pub struct ApiDoc;

/// The document as JSON.
pub fn json() -> String {
    ApiDoc::openapi()
        .to_pretty_json()
        .expect("the OpenAPI document serializes")
}

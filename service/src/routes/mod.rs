//! The HTTP handlers, one module per family of routes, and the small ones here.

pub mod predict;
pub mod v2;

use axum::{
    extract::State,
    http::{header, HeaderValue, Method, StatusCode, Uri},
    response::{IntoResponse, Response},
    Json,
};
use serde::Serialize;
use utoipa::ToSchema;

use crate::{
    error::ApiError,
    server::{AppState, MODEL_NAME},
};

/// `GET /health`.
#[derive(Debug, Serialize, ToSchema)]
pub struct HealthResponse<'a> {
    /// Always `ok` when the service answers.
    #[schema(example = "ok")]
    pub status: &'a str,
    /// The model version this process serves.
    #[schema(example = "v1.0.0")]
    pub version: &'a str,
    /// The model's name in the inference protocol.
    #[schema(example = "iris")]
    pub model: &'a str,
}

/// The service is up and serving its model.
#[utoipa::path(
    get, path = "/health", tag = "service",
    responses((status = 200, description = "Serving", body = HealthResponse))
)]
pub async fn health(State(state): State<AppState>) -> Response {
    Json(HealthResponse {
        status: "ok",
        version: state.model.version(),
        model: MODEL_NAME,
    })
    .into_response()
}

/// The OpenAPI 3 document of this service, generated from the code.
#[utoipa::path(
    get, path = "/openapi.json", tag = "service",
    responses((status = 200, description = "OpenAPI 3 document", content_type = "application/json"))
)]
pub async fn openapi() -> Response {
    static DOC: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let doc = DOC.get_or_init(crate::openapi::json);
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        doc.clone(),
    )
        .into_response()
}

/// Prometheus metrics in the text exposition format.
#[utoipa::path(
    get, path = "/metrics", tag = "service",
    responses((status = 200, description = "Prometheus text format 0.0.4", content_type = "text/plain"))
)]
pub async fn metrics(State(state): State<AppState>) -> Response {
    let text = state.metrics.render(&state.model);
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        )],
        text,
    )
        .into_response()
}

/// Unknown routes: 404 with a JSON body.
pub async fn not_found(method: Method, uri: Uri) -> ApiError {
    ApiError::not_found(format!("no route for {method} {}", uri.path()))
}

/// A known route with the wrong method: 405 with a JSON body.
pub async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("{method} is not allowed on {}", uri.path()),
    )
}

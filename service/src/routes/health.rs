//! `GET /health`: the service answers, and says which model version it serves.

use axum::{
    extract::State,
    response::{IntoResponse, Response},
    routing::get,
    Json, Router,
};
use serde::Serialize;
use utoipa::{OpenApi, ToSchema};

use crate::state::{AppState, MODEL_NAME};

/// This family's routes.
pub fn router() -> Router<AppState> {
    Router::new().route("/health", get(health))
}

/// This family's part of the OpenAPI document.
#[derive(OpenApi)]
#[openapi(paths(health), components(schemas(HealthResponse)))]
pub struct Doc;

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

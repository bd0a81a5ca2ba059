//! The HTTP handlers, one module per family of routes. Each family keeps its routes beside its
//! handlers (`router()`) and its part of the OpenAPI document (`Doc`); [`router`] merges the
//! families and adds the JSON fallbacks for unknown routes and methods.
//!
//! - `/health` in [`health`];
//! - `/predict` in [`predict`];
//! - the Open Inference Protocol under `/v2` in [`v2`];
//! - `/metrics` in [`metrics`];
//! - `/_shadow/records` in [`shadow`], the journal of answers to mirrored requests;
//! - `/openapi.json` in [`openapi`], the document assembled from every family's `Doc`;
//! - [`schema`]: the helper for the JSON Schemas written by hand beside their types.
//!
//! Handlers read [`crate::state`], never [`crate::server`], which mounts them.

pub mod health;
pub mod metrics;
pub mod oip;
pub mod openapi;
pub mod predict;
pub mod schema;
pub mod shadow;
pub mod v2;

use axum::{
    http::{Method, StatusCode, Uri},
    Router,
};

use crate::{error::ApiError, state::AppState};

/// Every route of the service with the JSON 404 and 405 fallbacks; the caller adds the state
/// and the middleware.
pub fn router() -> Router<AppState> {
    Router::new()
        .merge(health::router())
        .merge(predict::router())
        .merge(v2::router())
        .merge(openapi::router())
        .merge(metrics::router())
        .merge(shadow::router())
        .fallback(not_found)
        // After the merges: it applies to the routes registered so far.
        .method_not_allowed_fallback(method_not_allowed)
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

//! `GET /openapi.json`: the OpenAPI 3 document, generated from the handlers' `#[utoipa::path]`
//! annotations and the request and response types, so it cannot drift from the code.
//!
//! Each family of [`crate::routes`] lists its own paths and schemas in its `Doc`, beside its
//! handlers; [`document`] merges them under this service's title. A test checks that every
//! route of the router is in it.

use axum::{
    http::{header, HeaderValue},
    response::{IntoResponse, Response},
    routing::get,
    Router,
};
use utoipa::OpenApi;

use super::{health, metrics, predict, shadow, v2};
use crate::{error::ErrorBody, state::AppState};

/// This family's routes.
pub fn router() -> Router<AppState> {
    Router::new().route("/openapi.json", get(openapi))
}

/// The document's title and description, this route, and the error body every family answers
/// with; [`document`] adds the other families.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "ml-service",
        description = "Iris species classifier (multinomial logistic regression). Every response carries the model version in `X-Model-Version` and a request id in `X-Request-Id`."
    ),
    paths(openapi),
    components(schemas(ErrorBody))
)]
pub struct ApiDoc;

/// The whole document: [`ApiDoc`] and every family's part.
pub fn document() -> utoipa::openapi::OpenApi {
    let mut doc = ApiDoc::openapi();
    for part in [
        health::Doc::openapi(),
        predict::Doc::openapi(),
        v2::Doc::openapi(),
        metrics::Doc::openapi(),
        shadow::Doc::openapi(),
    ] {
        doc.merge(part);
    }
    doc
}

/// The document as JSON.
pub fn json() -> String {
    document()
        .to_pretty_json()
        .expect("the OpenAPI document serializes")
}

/// The OpenAPI 3 document of this service, generated from the code.
#[utoipa::path(
    get, path = "/openapi.json", tag = "service",
    responses((status = 200, description = "OpenAPI 3 document", content_type = "application/json"))
)]
pub async fn openapi() -> Response {
    static DOC: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let doc = DOC.get_or_init(json);
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        doc.clone(),
    )
        .into_response()
}

//! The one error type of the HTTP layer: every failure becomes a status and `{"error": "..."}`.
//!
//! Client mistakes carry their detail; there is no internal error path in request handling
//! (once a model is loaded, prediction only refuses rows outside the accepted range, a 422), so
//! nothing here hides a 5xx. The few requests that hyper refuses before any of this code runs
//! are listed in [`crate::server`].

use axum::{
    http::{header, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
};
use serde::Serialize;
use utoipa::ToSchema;

/// The body of every error response.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// What was wrong with the request, in words.
    #[schema(
        example = "expected 4 features (sepal length, sepal width, petal length, petal width), got 2"
    )]
    pub error: String,
}

/// A failed request: the status to answer with and what to tell the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
}

impl ApiError {
    /// Any status with its message.
    pub fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
        }
    }

    /// 400: the request cannot be parsed (malformed JSON, a protocol rule broken).
    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }

    /// 422: well-formed JSON with the wrong content (wrong feature count, wrong types).
    pub fn unprocessable(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, message)
    }

    /// 404: no such route, model or version.
    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, message)
    }

    /// 413: the body or the batch is larger than allowed.
    pub fn too_large(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::to_vec(&ErrorBody {
            error: self.message,
        })
        .unwrap_or_else(|_| br#"{"error":"unknown error"}"#.to_vec());
        let mut response = (self.status, body).into_response();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        response
    }
}

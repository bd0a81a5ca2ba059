//! Extractors whose every rejection is an [`ApiError`] with a JSON body.
//!
//! - [`JsonBody`]: the body of `/predict`. Rules, in order: the content type must be JSON (415);
//!   the body must fit the limit (413); the bytes must be JSON (400); the JSON must have the
//!   expected shape and values (422).
//! - [`ProtocolJson`]: the body of the inference protocol's routes: the same rules, except that
//!   a body sent without any `Content-Type` is read as JSON, because the standard client
//!   (`tritonclient.http`) sends none. An explicit non-JSON type still gets 415.
//! - [`PathParams`]: path parameters; a parameter that does not decode (say `%FF`, not UTF-8)
//!   gets 400 instead of axum's plain-text rejection.

use axum::{
    body::Bytes,
    extract::{FromRequest, FromRequestParts, Path, Request},
    http::{header, request::Parts, HeaderMap, StatusCode},
};
use serde::de::DeserializeOwned;

use crate::{error::ApiError, state::MAX_BODY_BYTES};

/// Like `axum::Json`, but rejections answer `{"error": "..."}` with a status that says whose
/// mistake it was.
#[derive(Debug, Clone, Copy, Default)]
pub struct JsonBody<T>(pub T);

impl<T, S> FromRequest<S> for JsonBody<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        read_json(req, state, MissingType::Refuse)
            .await
            .map(JsonBody)
    }
}

/// [`JsonBody`] for the inference protocol: a body without a `Content-Type` is JSON too.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProtocolJson<T>(pub T);

impl<T, S> FromRequest<S> for ProtocolJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        read_json(req, state, MissingType::ReadAsJson)
            .await
            .map(ProtocolJson)
    }
}

/// Like `axum::extract::Path`, but a rejection is an [`ApiError`] with a JSON body.
#[derive(Debug, Clone, Copy, Default)]
pub struct PathParams<T>(pub T);

impl<T, S> FromRequestParts<S> for PathParams<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match Path::<T>::from_request_parts(parts, state).await {
            Ok(Path(params)) => Ok(PathParams(params)),
            Err(rejection) => Err(ApiError::new(
                rejection.status(),
                format!("invalid path: {}", rejection.body_text()),
            )),
        }
    }
}

/// What a body without a `Content-Type` header gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum MissingType {
    /// 415, as for any type that is not JSON.
    Refuse,
    /// Read as JSON.
    ReadAsJson,
}

async fn read_json<T, S>(req: Request, state: &S, missing: MissingType) -> Result<T, ApiError>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    let accepted = match content_type(req.headers()) {
        None => missing == MissingType::ReadAsJson,
        Some(value) => is_json(value),
    };
    if !accepted {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "expected the header Content-Type: application/json",
        ));
    }
    let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::too_large(format!(
                "request body is larger than the limit of {MAX_BODY_BYTES} bytes"
            ))
        } else {
            ApiError::bad_request(format!(
                "cannot read the request body: {}",
                rejection.body_text()
            ))
        }
    })?;
    parse(&bytes)
}

/// Parses `bytes` as JSON into `T`: syntax errors are 400, shape and value errors 422.
pub fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(bytes).map_err(|err| match err.classify() {
        serde_json::error::Category::Data => {
            ApiError::unprocessable(format!("invalid request: {err}"))
        }
        _ => ApiError::bad_request(format!("malformed JSON: {err}")),
    })
}

/// The `Content-Type` header's value; `Some("")` when it is present but not text.
fn content_type(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::CONTENT_TYPE)
        .map(|v| v.to_str().unwrap_or(""))
}

/// `application/json`, or any `application/*+json`, with or without parameters.
fn is_json(value: &str) -> bool {
    let mime = value.split(';').next().unwrap_or("").trim();
    let Some((kind, subtype)) = mime.split_once('/') else {
        return false;
    };
    kind.eq_ignore_ascii_case("application")
        && (subtype.eq_ignore_ascii_case("json") || subtype.to_ascii_lowercase().ends_with("+json"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_content_types_are_recognised() {
        assert!(is_json("application/json"));
        assert!(is_json("application/json; charset=utf-8"));
        assert!(is_json("Application/JSON"));
        assert!(is_json("application/vnd.api+json"));
        assert!(!is_json("text/plain"));
        assert!(!is_json("application/x-www-form-urlencoded"));
        assert!(!is_json(""));
        assert_eq!(content_type(&HeaderMap::new()), None);
    }
}

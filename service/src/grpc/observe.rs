//! The layer over every gRPC request, whatever the service (and for unknown ones too), as the
//! HTTP side's `observe` middleware is over every HTTP request:
//!
//! 1. take the client's `x-request-id` if it is short printable ASCII, or make one (the same
//!    rule and generator as HTTP);
//! 2. call the service and wait for the response head; tonic refuses a request message over
//!    the size limit with OUT_OF_RANGE, where gRPC's own servers, and the HTTP side's 413, say
//!    RESOURCE_EXHAUSTED: the layer rewrites that status (see [`oversized`]);
//! 3. add `x-model-version` and `x-request-id` to the response headers: initial metadata on a
//!    success, and on an error the trailers-only response tonic gives, whose headers carry the
//!    status too, so every answer has them;
//! 4. record the answer in the shadow journal when the call is a mirrored prediction
//!    ([`crate::shadow`]);
//! 5. count the RPC in the shared metrics under its method path (`/prediction.PredictionService/
//!    Predict`) and the HTTP status of its gRPC code (see [`super::describe`]), and log one line.
//!
//! The status is the one the response head carries: an error's code (trailers-only), otherwise
//! OK. The latency is the time to the response head, as for HTTP; for a Watch stream that is
//! the time to its first headers.

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
    time::Instant,
};

use axum::http::HeaderMap;
use axum::http::{Request, Response};
use tonic::{Code, Status};
use tower::{Layer, Service};

use crate::{
    metrics,
    state::{AppState, MAX_BODY_BYTES, X_MODEL_VERSION, X_REQUEST_ID},
};

/// The response header carrying a trailers-only response's status.
const GRPC_STATUS: &str = "grpc-status";

/// Wraps a service in [`Observe`].
#[derive(Debug, Clone)]
pub struct ObserveLayer {
    state: AppState,
}

impl ObserveLayer {
    pub fn new(state: AppState) -> ObserveLayer {
        ObserveLayer { state }
    }
}

impl<S> Layer<S> for ObserveLayer {
    type Service = Observe<S>;

    fn layer(&self, inner: S) -> Observe<S> {
        Observe {
            inner,
            state: self.state.clone(),
        }
    }
}

/// Adds the version and request id metadata, records the metrics, logs one line.
#[derive(Debug, Clone)]
pub struct Observe<S> {
    inner: S,
    state: AppState,
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for Observe<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    ReqBody: Send + 'static,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<ReqBody>) -> Self::Future {
        let start = Instant::now();
        let state = self.state.clone();
        let route = metrics::grpc_method_index(req.uri().path());
        let request_id = state.request_id(req.headers().get(&X_REQUEST_ID));
        let shadow = state.shadow.begin(metrics::route_name(route), &mut req);
        let method = req.method().clone();
        // The service that was polled ready serves this call; its clone serves the next.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(async move {
            let _in_flight = state.metrics.start_request();
            let mut response = inner.call(req).await?;
            let elapsed = start.elapsed();
            let mut code = response
                .headers()
                .get(GRPC_STATUS)
                .map_or(Code::Ok, |v| Code::from_bytes(v.as_bytes()));
            if code == Code::OutOfRange {
                if let Some(status) = response.extensions().get::<Status>().and_then(oversized) {
                    code = rewrite(response.headers_mut(), &status);
                }
            }
            let (code_name, status) = super::describe(code);
            if let Some(shadow) = shadow {
                state.shadow.finish(shadow, status, &mut response, elapsed);
            }
            let headers = response.headers_mut();
            headers.insert(X_MODEL_VERSION.clone(), state.version_header().clone());
            headers.insert(X_REQUEST_ID.clone(), request_id.clone());
            state.metrics.observe(route, status, elapsed);
            tracing::info!(
                method = %method,
                route = metrics::route_name(route),
                status = status.as_u16(),
                grpc_code = code_name,
                latency_us = elapsed.as_micros() as u64,
                request_id = request_id.to_str().unwrap_or("-"),
                version = state.model.version(),
                "request"
            );
            Ok(response)
        })
    }
}

/// The RESOURCE_EXHAUSTED status for tonic's refusal of a request message over the limit,
/// which it gives as OUT_OF_RANGE ("Error, decoded message length too large: found N bytes,
/// the limit is: L bytes"); `None` for any other status. The service itself never answers
/// OUT_OF_RANGE, and tonic only for a message over a limit.
pub fn oversized(status: &Status) -> Option<Status> {
    let rest = status
        .message()
        .strip_prefix("Error, decoded message length too large: found ")?;
    let found = rest.split(' ').next().unwrap_or("more");
    Some(Status::resource_exhausted(format!(
        "the request message has {found} bytes, more than the limit of {MAX_BODY_BYTES} bytes: send fewer rows per call"
    )))
}

/// Replaces the status of a trailers-only response by `status`; returns its code.
fn rewrite(headers: &mut HeaderMap, status: &Status) -> Code {
    // Only a message that is not a header value could fail, and ours is plain ASCII.
    match status.add_header(headers) {
        Ok(()) => status.code(),
        Err(_) => Code::OutOfRange,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_tonics_size_refusal_becomes_resource_exhausted() {
        let tonic = Status::out_of_range(
            "Error, decoded message length too large: found 1200008 bytes, the limit is: 1048576 bytes",
        );
        let status = oversized(&tonic).unwrap();
        assert_eq!(status.code(), Code::ResourceExhausted);
        assert_eq!(
            status.message(),
            "the request message has 1200008 bytes, more than the limit of 1048576 bytes: send fewer rows per call"
        );
        assert!(oversized(&Status::out_of_range("something else")).is_none());
        let mut headers = HeaderMap::new();
        Status::out_of_range("x").add_header(&mut headers).unwrap();
        assert_eq!(rewrite(&mut headers, &status), Code::ResourceExhausted);
        assert_eq!(headers[GRPC_STATUS], "8");
    }
}

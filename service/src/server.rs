//! Building the application and serving it.
//!
//! - [`router`] builds the whole `Router` from the state: the routes of [`crate::routes`], the
//!   body limit and the `observe` middleware (tests call it with `oneshot`);
//! - [`Server::bind`] binds the configured address and exposes the port (0 picks a free one);
//! - [`Server::run_until`] serves until a shutdown signal, then stops accepting, lets in-flight
//!   requests finish for at most the drain timeout, and returns.
//!
//! Every response passes through `observe`: it adds `X-Model-Version` and `X-Request-Id`,
//! counts the request in the metrics and logs one line.
//!
//! # What hyper refuses before the application sees a request
//!
//! hyper parses each request head before axum gets the request. A head it cannot parse gets
//! hyper's own answer: a status line, `connection: close`, `content-length: 0`, no
//! `{"error": ...}` body, no `X-Model-Version`, no metrics, no log line. hyper 1.x has no hook
//! for that answer (its server role builds a bare head in `on_error` and writes it itself), so
//! these stay as they are; `tests/server.rs` pins them on the real binary:
//! - 400: a garbage request line (method, target or version), a malformed header line, a
//!   `Content-Length` that is not a non-negative decimal number or that disagrees with another
//!   one, a `Transfer-Encoding` on an HTTP/1.0 request;
//! - 414: a request target longer than 65,534 bytes;
//! - 431: a head of more than 100 headers or larger than hyper's read buffer (~400 KiB).
//!
//! Rewriting hyper's bytes on the socket could add a body, but would depend on the exact text
//! hyper writes; not worth it for requests no client library sends. Everything hyper accepts,
//! a chunked body with a bad chunk included, gets the JSON error body of [`crate::error`].

use std::{
    future::{Future, IntoFuture},
    net::SocketAddr,
    time::{Duration, Instant},
};

use axum::{
    extract::{DefaultBodyLimit, MatchedPath, Request, State},
    http::{HeaderName, HeaderValue},
    middleware::{self, Next},
    response::Response,
    Router,
};
use tokio::{net::TcpListener, sync::oneshot};

use crate::{
    config::Config,
    metrics,
    model::Model,
    routes,
    state::{AppState, MAX_BODY_BYTES},
};

/// The response header carrying the model version.
pub static X_MODEL_VERSION: HeaderName = HeaderName::from_static("x-model-version");
/// The request and response header carrying the request id.
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The application: every route of [`routes::router`] with its JSON 404/405 fallbacks, the
/// body limit, and `observe`.
pub fn router(state: AppState) -> Router {
    routes::router()
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(middleware::from_fn_with_state(state.clone(), observe))
        .with_state(state)
}

/// Adds the version and request id headers, records the metrics, logs one line.
async fn observe(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let start = Instant::now();
    let _in_flight = state.metrics.start_request();
    let route = metrics::route_index(
        req.extensions()
            .get::<MatchedPath>()
            .map(MatchedPath::as_str),
    );
    let request_id = match req.headers().get(&X_REQUEST_ID) {
        Some(id) if is_acceptable_request_id(id) => id.clone(),
        _ => state.new_request_id(),
    };
    let method = req.method().clone();
    let mut response = next.run(req).await;
    let elapsed = start.elapsed();
    let status = response.status();
    let headers = response.headers_mut();
    headers.insert(X_MODEL_VERSION.clone(), state.version_header().clone());
    headers.insert(X_REQUEST_ID.clone(), request_id.clone());
    state.metrics.observe(route, status, elapsed);
    tracing::info!(
        method = %method,
        route = metrics::route_name(route),
        status = status.as_u16(),
        latency_us = elapsed.as_micros() as u64,
        request_id = request_id.to_str().unwrap_or("-"),
        version = state.model.version(),
        "request"
    );
    response
}

/// A client's request id is echoed if it is short printable ASCII; otherwise we make one.
fn is_acceptable_request_id(id: &HeaderValue) -> bool {
    !id.is_empty() && id.len() <= 200 && id.as_bytes().iter().all(|b| b.is_ascii_graphic())
}

/// A bound, not yet serving, service.
#[derive(Debug)]
pub struct Server {
    listener: TcpListener,
    state: AppState,
    shutdown_timeout: Duration,
}

impl Server {
    /// Binds `config.host:config.port` (port 0 picks a free one).
    pub async fn bind(config: &Config, model: Model) -> std::io::Result<Server> {
        let listener = TcpListener::bind((config.host, config.port)).await?;
        Ok(Server {
            listener,
            state: AppState::new(model),
            shutdown_timeout: config.shutdown_timeout,
        })
    }

    /// The address the listener is bound to (with the port picked when the config said 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// The state the server's handlers will share.
    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Serves until `signal` completes; then stops accepting and waits for in-flight requests,
    /// at most the drain timeout. Returns `Ok(true)` when every request finished in time.
    pub async fn run_until(
        self,
        signal: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<bool> {
        let (draining_tx, draining_rx) = oneshot::channel::<()>();
        let app = router(self.state.clone());
        let serve = axum::serve(self.listener, app)
            .with_graceful_shutdown(async move {
                signal.await;
                tracing::info!(
                    "shutdown requested: no new connections, finishing in-flight requests"
                );
                let _ = draining_tx.send(());
            })
            .into_future();
        let timeout = self.shutdown_timeout;
        let deadline = async move {
            match draining_rx.await {
                Ok(()) => tokio::time::sleep(timeout).await,
                Err(_) => std::future::pending().await,
            }
        };
        tokio::select! {
            result = serve => {
                result?;
                tracing::info!("all requests finished, exiting");
                Ok(true)
            }
            () = deadline => {
                tracing::warn!(
                    timeout_s = timeout.as_secs_f64(),
                    in_flight = self.state.metrics.in_flight(),
                    "drain timeout passed, closing the remaining connections"
                );
                Ok(false)
            }
        }
    }
}

/// Completes on SIGTERM or SIGINT (ctrl-c).
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}

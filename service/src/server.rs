//! Building the application and serving it, over HTTP and gRPC from one state.
//!
//! - [`router`] builds the whole HTTP `Router` from the state: the routes of
//!   [`crate::routes`], the body limit and the `observe` middleware (tests call it with
//!   `oneshot`); [`crate::grpc::serve`] is its gRPC counterpart;
//! - [`Server::bind`] binds both listeners, HTTP on `HOST:PORT` and gRPC on `HOST:GRPC_PORT`,
//!   and exposes their addresses (port 0 picks a free one);
//! - [`Server::run_until`] serves both until a shutdown signal, then drains:
//!   1. `grpc.health.v1` reports NOT_SERVING for the server and each service;
//!   2. both servers stop accepting (their listeners close) and let in-flight requests,
//!      RPCs and streams finish; `grpc.health.v1` Watch streams end;
//!   3. it returns once both have finished, or when the drain timeout has passed.
//!
//! Every HTTP response passes through `observe`: it adds `X-Model-Version` and `X-Request-Id`,
//! counts the request in the metrics and logs one line; [`crate::grpc::observe`] does the same
//! for every RPC. For a prediction request the balancer mirrored (`X-Shadow-Id`), it also
//! records the answer in the shadow journal ([`crate::shadow`]).
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
    middleware::{self, Next},
    response::Response,
    Router,
};
use tokio::net::TcpListener;
use tonic_health::{server::HealthReporter, ServingStatus};

use crate::{
    config::Config,
    grpc, metrics,
    model::Model,
    routes,
    state::{AppState, MAX_BODY_BYTES},
};

pub use crate::state::{X_MODEL_VERSION, X_REQUEST_ID};

/// The application: every route of [`routes::router`] with its JSON 404/405 fallbacks, the
/// body limit, and `observe`.
pub fn router(state: AppState) -> Router {
    routes::router()
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(middleware::from_fn_with_state(state.clone(), observe))
        .with_state(state)
}

/// Adds the version and request id headers, records the metrics, logs one line, and records
/// the answer in the shadow journal when the request is a mirrored one.
async fn observe(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let start = Instant::now();
    let _in_flight = state.metrics.start_request();
    let route = metrics::route_index(
        req.extensions()
            .get::<MatchedPath>()
            .map(MatchedPath::as_str),
    );
    let request_id = state.request_id(req.headers().get(&X_REQUEST_ID));
    let shadow = state.shadow.begin(metrics::route_name(route), &mut req);
    let method = req.method().clone();
    let mut response = next.run(req).await;
    let elapsed = start.elapsed();
    let status = response.status();
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
        latency_us = elapsed.as_micros() as u64,
        request_id = request_id.to_str().unwrap_or("-"),
        version = state.model.version(),
        "request"
    );
    response
}

/// A bound, not yet serving, service: both listeners and the state they will share.
#[derive(Debug)]
pub struct Server {
    listener: TcpListener,
    grpc_listener: TcpListener,
    state: AppState,
    shutdown_timeout: Duration,
}

impl Server {
    /// Binds `config.host:config.port` for HTTP and `config.host:config.grpc_port` for gRPC
    /// (port 0 picks a free one). An error names the address and the variable that set it.
    pub async fn bind(config: &Config, model: Model) -> std::io::Result<Server> {
        let bind = |port: u16, variable: &'static str| async move {
            TcpListener::bind((config.host, port)).await.map_err(|err| {
                std::io::Error::new(
                    err.kind(),
                    format!(
                        "cannot listen on {}:{port} ({variable}): {err}",
                        config.host
                    ),
                )
            })
        };
        let listener = bind(config.port, "PORT").await?;
        let grpc_listener = bind(config.grpc_port, "GRPC_PORT").await?;
        Ok(Server {
            listener,
            grpc_listener,
            state: AppState::with_shadow_journal(model, config.shadow_journal_records),
            shutdown_timeout: config.shutdown_timeout,
        })
    }

    /// The address the HTTP listener is bound to (with the port picked when the config said 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// The address the gRPC listener is bound to (with the port picked when the config said 0).
    pub fn grpc_local_addr(&self) -> SocketAddr {
        self.grpc_listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// The state the server's handlers will share.
    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Serves HTTP and gRPC until `signal` completes; then drains (see the module's steps):
    /// NOT_SERVING in `grpc.health.v1`, no new connections on either port, in-flight requests
    /// and RPCs finish, at most the drain timeout. Returns `Ok(true)` when both servers
    /// finished in time.
    pub async fn run_until(
        self,
        signal: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<bool> {
        let Server {
            listener,
            grpc_listener,
            state,
            shutdown_timeout: timeout,
        } = self;
        let health = HealthReporter::new();
        grpc::health::set_all(&health, ServingStatus::Serving).await;
        let http = axum::serve(listener, router(state.clone()))
            .with_graceful_shutdown(state.drain.started())
            .into_future();
        // Built before anything is polled, so that serving starts on both ports at once and
        // the signal is watched from the start.
        let grpc = grpc::serve(
            grpc_listener,
            state.clone(),
            health.clone(),
            state.drain.started(),
        )?;
        let serve = async { tokio::try_join!(http, grpc) };
        let drain = async {
            signal.await;
            tracing::info!("shutdown requested: no new connections, finishing in-flight requests");
            // NOT_SERVING first, while every connection is still open to hear it.
            grpc::health::set_all(&health, ServingStatus::NotServing).await;
            state.drain.start();
            tokio::time::sleep(timeout).await;
        };
        tokio::select! {
            // The drain first: it watches the signal, which must be watched before any request
            // is served.
            biased;
            () = drain => {
                tracing::warn!(
                    timeout_s = timeout.as_secs_f64(),
                    in_flight = state.metrics.in_flight(),
                    "drain timeout passed, closing the remaining connections"
                );
                Ok(false)
            }
            result = serve => {
                result?;
                tracing::info!("all requests finished, exiting");
                Ok(true)
            }
        }
    }
}

/// Completes on SIGTERM or SIGINT (ctrl-c). The handlers are installed when this is called,
/// not when the future is first polled: a signal that arrives while the servers start is then
/// a drain, not the default action (an exit without one). Call it within the runtime.
pub fn shutdown_signal() -> impl Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, Signal, SignalKind};
        let term = signal(SignalKind::terminate()).ok();
        let interrupt = signal(SignalKind::interrupt()).ok();
        let wait = |signal: Option<Signal>| async move {
            match signal {
                Some(mut signal) => {
                    signal.recv().await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        async move {
            tokio::select! {
                () = wait(term) => {}
                () = wait(interrupt) => {}
            }
        }
    }
    #[cfg(not(unix))]
    async {
        let _ = tokio::signal::ctrl_c().await;
    }
}

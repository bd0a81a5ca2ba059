//! Building the application and serving it.
//!
//! - [`router`] builds the whole `Router` from a loaded model (tests call it with `oneshot`);
//! - [`Server::bind`] binds the configured address and exposes the port (0 picks a free one);
//! - [`Server::run_until`] serves until a shutdown signal, then stops accepting, lets in-flight
//!   requests finish for at most the drain timeout, and returns.
//!
//! Every response passes through [`observe`]: it adds `X-Model-Version` and `X-Request-Id`,
//! counts the request in the metrics and logs one line.

use std::{
    future::{Future, IntoFuture},
    net::SocketAddr,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use axum::{
    extract::{DefaultBodyLimit, MatchedPath, Request, State},
    http::{HeaderName, HeaderValue},
    middleware::{self, Next},
    response::Response,
    routing::{get, post},
    Router,
};
use tokio::{net::TcpListener, sync::oneshot};

use crate::{config::Config, metrics::Metrics, model::Model, routes};

/// The largest request body accepted; larger ones get 413.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;
/// The most rows one request may ask to predict; more get 413.
pub const MAX_BATCH_ROWS: usize = 1024;
/// The model name of the inference protocol's routes.
pub const MODEL_NAME: &str = "iris";

/// The response header carrying the model version.
pub static X_MODEL_VERSION: HeaderName = HeaderName::from_static("x-model-version");
/// The request and response header carrying the request id.
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// What every handler can see: the model, the metrics, and values computed once.
#[derive(Debug, Clone)]
pub struct AppState(Arc<Inner>);

#[derive(Debug)]
pub struct Inner {
    pub model: Model,
    pub metrics: Metrics,
    version_header: HeaderValue,
    request_id_prefix: String,
    next_request_id: AtomicU64,
}

impl std::ops::Deref for AppState {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

impl AppState {
    pub fn new(model: Model) -> AppState {
        let version_header = HeaderValue::from_str(model.version())
            .unwrap_or_else(|_| HeaderValue::from_static("invalid-version"));
        // Unique enough across restarts: the process id and the start time, then a counter.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        let prefix = format!(
            "{:08x}",
            (nanos ^ (u64::from(std::process::id()) << 32)) as u32
        );
        AppState(Arc::new(Inner {
            model,
            metrics: Metrics::default(),
            version_header,
            request_id_prefix: prefix,
            next_request_id: AtomicU64::new(1),
        }))
    }

    fn new_request_id(&self) -> HeaderValue {
        let n = self.next_request_id.fetch_add(1, Ordering::Relaxed);
        HeaderValue::from_str(&format!("{}-{n:x}", self.request_id_prefix))
            .expect("hex is a valid header value")
    }
}

/// The application: every route, the JSON 404/405 fallbacks, the body limit, and [`observe`].
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/health", get(routes::health))
        .route("/predict", post(routes::predict::predict))
        .route("/v2", get(routes::v2::server_metadata))
        .route("/v2/health/live", get(routes::v2::live))
        .route("/v2/health/ready", get(routes::v2::ready))
        .route("/v2/models/{name}", get(routes::v2::model_metadata))
        .route("/v2/models/{name}/ready", get(routes::v2::model_ready))
        .route("/v2/models/{name}/infer", post(routes::v2::infer))
        .route(
            "/v2/models/{name}/versions/{version}",
            get(routes::v2::model_version_metadata),
        )
        .route(
            "/v2/models/{name}/versions/{version}/ready",
            get(routes::v2::model_version_ready),
        )
        .route(
            "/v2/models/{name}/versions/{version}/infer",
            post(routes::v2::infer_version),
        )
        .route("/openapi.json", get(routes::openapi))
        .route("/metrics", get(routes::metrics))
        .fallback(routes::not_found)
        .method_not_allowed_fallback(routes::method_not_allowed)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(middleware::from_fn_with_state(state.clone(), observe))
        .with_state(state)
}

/// Adds the version and request id headers, records the metrics, logs one line.
async fn observe(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let start = Instant::now();
    let _in_flight = state.metrics.start_request();
    let route = crate::metrics::route_index(
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
    headers.insert(X_MODEL_VERSION.clone(), state.version_header.clone());
    headers.insert(X_REQUEST_ID.clone(), request_id.clone());
    state.metrics.observe(route, status, elapsed);
    tracing::info!(
        method = %method,
        route = crate::metrics::route_name(route),
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

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

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

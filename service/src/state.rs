//! What every handler shares, over HTTP and gRPC alike: the application state ([`AppState`]:
//! the model, the metrics, the drain, the shadow journal, values computed once), the model
//! name, the request limits, the rules a row must follow before the model sees it, and the
//! rule a client's id must follow to be kept.
//!
//! It sits below the server and both kinds of handlers so that the arrows point one way:
//! [`crate::server`] mounts [`crate::routes`] and [`crate::grpc`], and all of them read this
//! module; a handler never needs the server that mounts it.

use std::{
    fmt,
    future::Future,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
};

use axum::http::{HeaderName, HeaderValue};
use tokio::sync::watch;

use crate::{
    config::DEFAULT_SHADOW_JOURNAL_RECORDS,
    error::ApiError,
    metrics::Metrics,
    model::{Model, Prediction, FEATURE_NAMES, N_FEATURES},
    shadow::Journal,
};

/// The response header (gRPC: response metadata) carrying the model version.
pub static X_MODEL_VERSION: HeaderName = HeaderName::from_static("x-model-version");
/// The request and response header (gRPC: metadata) carrying the request id.
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The largest request body accepted; larger ones get 413.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;
/// The most rows one request may ask to predict; more get 413.
pub const MAX_BATCH_ROWS: usize = 1024;
/// The model name of the inference protocol's routes.
pub const MODEL_NAME: &str = "iris";

/// A batch must have between 1 and [`MAX_BATCH_ROWS`] rows.
pub fn check_batch(rows: usize) -> Result<(), ApiError> {
    if rows == 0 {
        return Err(ApiError::unprocessable(
            "the batch is empty: send at least one row",
        ));
    }
    if rows > MAX_BATCH_ROWS {
        return Err(ApiError::too_large(format!(
            "the batch has {rows} rows; at most {MAX_BATCH_ROWS} are allowed"
        )));
    }
    Ok(())
}

/// Why a row is refused before the model sees it. The model itself then refuses values outside
/// its accepted range ([`crate::model::OutOfRange`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RowError {
    /// Not exactly [`N_FEATURES`] values: how many there were.
    Count(usize),
    /// A value that is not a finite number (NaN or an infinity).
    NotFinite { feature: usize, value: f64 },
}

impl fmt::Display for RowError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            RowError::Count(n) => write!(
                f,
                "expected {N_FEATURES} features (sepal length, sepal width, petal length, petal width), got {n}"
            ),
            RowError::NotFinite { feature, value } => write!(
                f,
                "feature {feature} ({}) is {value}: feature values must be finite numbers",
                FEATURE_NAMES[feature]
            ),
        }
    }
}

impl std::error::Error for RowError {}

impl From<RowError> for ApiError {
    /// 422, as for any well-formed request with the wrong content.
    fn from(err: RowError) -> ApiError {
        ApiError::unprocessable(err.to_string())
    }
}

/// The row of `values`: exactly [`N_FEATURES`] finite numbers, or why not. The model checks
/// their range when predicting.
pub fn row_from<T: Copy + Into<f64>>(values: &[T]) -> Result<[f64; N_FEATURES], RowError> {
    let &[a, b, c, d] = values else {
        return Err(RowError::Count(values.len()));
    };
    check_finite([a.into(), b.into(), c.into(), d.into()])
}

/// `row` itself if every value is a finite number.
pub fn check_finite(row: [f64; N_FEATURES]) -> Result<[f64; N_FEATURES], RowError> {
    match row.iter().position(|v| !v.is_finite()) {
        Some(feature) => Err(RowError::NotFinite {
            feature,
            value: row[feature],
        }),
        None => Ok(row),
    }
}

/// Whether the service is draining: set once, when the shutdown signal arrives. Read without a
/// lock by the health answers; awaited by both servers (to stop accepting) and by the
/// `grpc.health.v1` watch streams (to end).
#[derive(Debug)]
pub struct Drain {
    started: AtomicBool,
    tx: watch::Sender<bool>,
}

impl Default for Drain {
    fn default() -> Drain {
        Drain {
            started: AtomicBool::new(false),
            tx: watch::Sender::new(false),
        }
    }
}

impl Drain {
    /// Starts the drain; every [`Drain::started`] future completes.
    pub fn start(&self) {
        self.started.store(true, Ordering::SeqCst);
        self.tx.send_replace(true);
    }

    /// Whether the drain has started.
    pub fn has_started(&self) -> bool {
        self.started.load(Ordering::Relaxed)
    }

    /// Completes once the drain has started (at once if it already has).
    pub fn started(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut rx = self.tx.subscribe();
        async move {
            // An error means the sender is gone with the state: nothing left to serve either.
            let _ = rx.wait_for(|started| *started).await;
        }
    }
}

/// What every handler can see: the model, the metrics, and values computed once.
#[derive(Debug, Clone)]
pub struct AppState(Arc<Inner>);

/// The shared part behind [`AppState`]: one per process, reached through `Deref`.
#[derive(Debug)]
pub struct Inner {
    /// The model this process serves.
    pub model: Model,
    /// The counters `/metrics` renders, for HTTP and gRPC requests alike.
    pub metrics: Metrics,
    /// Whether the shutdown signal has arrived.
    pub drain: Drain,
    /// What this process answered to the requests the balancer mirrors to both colors.
    pub shadow: Journal,
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
    /// The state for serving `model`, with fresh metrics, a request id prefix unique to this
    /// process, and a shadow journal of the default size.
    pub fn new(model: Model) -> AppState {
        AppState::with_shadow_journal(model, DEFAULT_SHADOW_JOURNAL_RECORDS)
    }

    /// [`AppState::new`] with a shadow journal of at most `records` records (0: none kept).
    pub fn with_shadow_journal(model: Model, records: usize) -> AppState {
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
            drain: Drain::default(),
            shadow: Journal::new(records),
            version_header,
            request_id_prefix: prefix,
            next_request_id: AtomicU64::new(1),
        }))
    }

    /// Predicts one row and counts its class in the metrics, as every prediction endpoint
    /// must. A row out of the accepted range gets a 422 that names the feature and the range.
    pub fn predict(&self, row: &[f64; N_FEATURES]) -> Result<Prediction, ApiError> {
        let p = self
            .model
            .predict(row)
            .map_err(|err| ApiError::unprocessable(err.to_string()))?;
        self.metrics.count_prediction(p.class);
        Ok(p)
    }

    /// Predicts every row, or none: the first row out of the accepted range refuses the whole
    /// request with a 422 that names the row, the feature and the range. The classes are
    /// counted only when every row was answered.
    pub fn predict_all(&self, rows: &[[f64; N_FEATURES]]) -> Result<Vec<Prediction>, ApiError> {
        let predictions = rows
            .iter()
            .enumerate()
            .map(|(i, row)| {
                self.model
                    .predict(row)
                    .map_err(|err| ApiError::unprocessable(format!("row {i}: {err}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        for p in &predictions {
            self.metrics.count_prediction(p.class);
        }
        Ok(predictions)
    }

    /// What tells this process from another one, or from itself before a restart: the prefix
    /// of its request ids.
    pub fn instance(&self) -> &str {
        &self.request_id_prefix
    }

    /// The model version as a header value, computed once.
    pub(crate) fn version_header(&self) -> &HeaderValue {
        &self.version_header
    }

    /// The request id of a request that came with `given` in [`X_REQUEST_ID`]: the client's
    /// own if it is short printable ASCII, otherwise a new one.
    pub(crate) fn request_id(&self, given: Option<&HeaderValue>) -> HeaderValue {
        match given {
            Some(id) if is_acceptable_id(id) => id.clone(),
            _ => self.new_request_id(),
        }
    }

    /// A new request id: this process's prefix and the next number of its counter.
    pub(crate) fn new_request_id(&self) -> HeaderValue {
        let n = self.next_request_id.fetch_add(1, Ordering::Relaxed);
        HeaderValue::from_str(&format!("{}-{n:x}", self.request_id_prefix))
            .expect("hex is a valid header value")
    }
}

/// Whether a client's id (`x-request-id`, `x-shadow-id`) is kept: short printable ASCII, so
/// it is safe to echo, log and store. A request id that is not gets replaced; a shadow id that
/// is not records nothing.
pub(crate) fn is_acceptable_id(id: &HeaderValue) -> bool {
    !id.is_empty() && id.len() <= 200 && id.as_bytes().iter().all(|b| b.is_ascii_graphic())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_need_exactly_four_finite_numbers() {
        assert_eq!(row_from(&[1.0f32, 2.0, 3.0, 4.0]), Ok([1.0, 2.0, 3.0, 4.0]));
        assert_eq!(row_from(&[1.0f64; 3]), Err(RowError::Count(3)));
        let err = row_from(&[1.0f32, 2.0, f32::NAN, 4.0]).unwrap_err();
        assert!(matches!(err, RowError::NotFinite { feature: 2, .. }));
        assert!(
            err.to_string().contains("feature 2 (petal length) is NaN"),
            "{err}"
        );
        let err = row_from(&[f64::INFINITY, 2.0, 3.0, 4.0]).unwrap_err();
        assert!(err.to_string().contains("is inf"), "{err}");
    }

    #[test]
    fn request_ids_are_echoed_only_when_printable_and_short() {
        let state = AppState::new(test_model());
        let given = HeaderValue::from_static("abc-123");
        assert_eq!(state.request_id(Some(&given)), given);
        let long = HeaderValue::from_str(&"a".repeat(201)).unwrap();
        for bad in [
            HeaderValue::from_static(""),
            HeaderValue::from_static("a b"),
            long,
        ] {
            assert_ne!(state.request_id(Some(&bad)), bad);
        }
        assert_ne!(state.request_id(None), state.request_id(None));
    }

    #[tokio::test]
    async fn the_drain_is_seen_by_readers_and_waiters() {
        let drain = Drain::default();
        let waiter = tokio::spawn(drain.started());
        assert!(!drain.has_started());
        drain.start();
        assert!(drain.has_started());
        waiter.await.unwrap();
        // A waiter created after the start completes at once.
        drain.started().await;
    }

    fn test_model() -> Model {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/v1.0.0");
        Model::load(&dir, None).expect("the committed model loads")
    }

    #[test]
    fn batch_limits() {
        assert_eq!(check_batch(0).unwrap_err().status.as_u16(), 422);
        assert!(check_batch(1).is_ok() && check_batch(MAX_BATCH_ROWS).is_ok());
        assert_eq!(
            check_batch(MAX_BATCH_ROWS + 1).unwrap_err().status.as_u16(),
            413
        );
    }
}

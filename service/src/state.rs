//! What every handler shares: the application state ([`AppState`]: the model, the metrics,
//! values computed once), the model name and the request limits.
//!
//! It sits below both the server and the handlers so that the arrows point one way:
//! [`crate::server`] mounts [`crate::routes`], and both read this module; a handler never
//! needs the server that mounts it.

use std::sync::{
    atomic::{AtomicU64, Ordering},
    Arc,
};

use axum::http::HeaderValue;

use crate::{
    error::ApiError,
    metrics::Metrics,
    model::{Model, Prediction, N_FEATURES},
};

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

/// What every handler can see: the model, the metrics, and values computed once.
#[derive(Debug, Clone)]
pub struct AppState(Arc<Inner>);

/// The shared part behind [`AppState`]: one per process, reached through `Deref`.
#[derive(Debug)]
pub struct Inner {
    /// The model this process serves.
    pub model: Model,
    /// The counters `/metrics` renders.
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
    /// The state for serving `model`, with fresh metrics and a request id prefix unique to
    /// this process.
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

    /// The model version as a header value, computed once.
    pub(crate) fn version_header(&self) -> &HeaderValue {
        &self.version_header
    }

    /// A new request id: this process's prefix and the next number of its counter.
    pub(crate) fn new_request_id(&self) -> HeaderValue {
        let n = self.next_request_id.fetch_add(1, Ordering::Relaxed);
        HeaderValue::from_str(&format!("{}-{n:x}", self.request_id_prefix))
            .expect("hex is a valid header value")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

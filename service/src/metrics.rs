//! Prometheus metrics kept in atomics and rendered by hand in the text exposition format.
//!
//! - `http_requests_total{route,status}`: requests answered;
//! - `http_request_duration_seconds{route}`: a latency histogram;
//! - `http_requests_in_flight`: requests being handled now (the scrape itself included);
//!
//! gRPC calls are counted in the same three, under their method path as the route
//! (`/prediction.PredictionService/Predict`) and, as the status, the HTTP status the same
//! outcome gets over HTTP (OK → 200, INVALID_ARGUMENT → 400, NOT_FOUND → 404,
//! RESOURCE_EXHAUSTED → 413; see `crate::grpc::describe`), so one query covers both protocols
//! and a route says which one it was. The others:
//!
//! - `predictions_total{class,label}`: predicted classes, across every endpoint;
//! - `model_info{version,algorithm}`: always 1, carries the model's version;
//! - `log_lines_dropped_total`: log lines lost to a full log channel or a failed write (a full
//!   disk); counted by [`crate::telemetry`], for the whole process.
//!
//! Routes and statuses are fixed sets, so recording is a few relaxed atomic adds and no lock.

use std::{
    fmt::Write as _,
    sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed},
    time::Duration,
};

use axum::http::StatusCode;

use crate::model::{Model, N_CLASSES};

/// Every route of the HTTP router, as `MatchedPath` spells it; any other HTTP request counts
/// as `unmatched`.
pub const ROUTES: [&str; 14] = [
    "/health",
    "/predict",
    "/v2",
    "/v2/health/live",
    "/v2/health/ready",
    "/v2/models/{name}",
    "/v2/models/{name}/ready",
    "/v2/models/{name}/infer",
    "/v2/models/{name}/versions/{version}",
    "/v2/models/{name}/versions/{version}/ready",
    "/v2/models/{name}/versions/{version}/infer",
    "/openapi.json",
    "/metrics",
    "/_shadow/records",
];
/// Every gRPC method served, as its request path spells it; any other counts as `unmatched`.
pub const GRPC_METHODS: [&str; 13] = [
    "/prediction.PredictionService/Predict",
    "/prediction.PredictionService/PredictBatch",
    "/prediction.PredictionService/Health",
    "/inference.GRPCInferenceService/ServerLive",
    "/inference.GRPCInferenceService/ServerReady",
    "/inference.GRPCInferenceService/ModelReady",
    "/inference.GRPCInferenceService/ServerMetadata",
    "/inference.GRPCInferenceService/ModelMetadata",
    "/inference.GRPCInferenceService/ModelInfer",
    "/grpc.health.v1.Health/Check",
    "/grpc.health.v1.Health/Watch",
    "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
];
const UNMATCHED: &str = "unmatched";
/// The slots: [`ROUTES`], then [`GRPC_METHODS`], then `unmatched`.
const N_ROUTES: usize = ROUTES.len() + GRPC_METHODS.len() + 1;

/// Statuses counted one by one; any other is counted under `other`.
const STATUSES: [u16; 9] = [200, 400, 404, 405, 413, 415, 422, 500, 503];
const N_STATUSES: usize = STATUSES.len() + 1;

/// Histogram upper bounds in seconds (`+Inf` is implied).
const BUCKETS: [f64; 14] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];
const N_BUCKETS: usize = BUCKETS.len() + 1;

#[derive(Debug, Default)]
struct RouteStats {
    statuses: [AtomicU64; N_STATUSES],
    buckets: [AtomicU64; N_BUCKETS],
    sum_nanos: AtomicU64,
    count: AtomicU64,
}

/// The service's counters. Shared by every request through the application state.
#[derive(Debug, Default)]
pub struct Metrics {
    routes: [RouteStats; N_ROUTES],
    predictions: [AtomicU64; N_CLASSES],
    in_flight: AtomicI64,
}

/// The slot of the HTTP route `route` (see [`ROUTES`]), or the `unmatched` slot.
pub fn route_index(route: Option<&str>) -> usize {
    route
        .and_then(|r| ROUTES.iter().position(|known| *known == r))
        .unwrap_or(N_ROUTES - 1)
}

/// The slot of the gRPC method at request path `path` (see [`GRPC_METHODS`]), or the
/// `unmatched` slot.
pub fn grpc_method_index(path: &str) -> usize {
    GRPC_METHODS
        .iter()
        .position(|known| *known == path)
        .map_or(N_ROUTES - 1, |i| ROUTES.len() + i)
}

/// The name of the route or method in slot `index` (from [`route_index`] or
/// [`grpc_method_index`]).
pub fn route_name(index: usize) -> &'static str {
    ROUTES
        .iter()
        .chain(&GRPC_METHODS)
        .nth(index)
        .copied()
        .unwrap_or(UNMATCHED)
}

impl Metrics {
    /// Counts one answered request.
    pub fn observe(&self, route: usize, status: StatusCode, elapsed: Duration) {
        let stats = &self.routes[route.min(N_ROUTES - 1)];
        let s = STATUSES
            .iter()
            .position(|&c| c == status.as_u16())
            .unwrap_or(STATUSES.len());
        stats.statuses[s].fetch_add(1, Relaxed);
        let secs = elapsed.as_secs_f64();
        let b = BUCKETS
            .iter()
            .position(|&le| secs <= le)
            .unwrap_or(BUCKETS.len());
        stats.buckets[b].fetch_add(1, Relaxed);
        stats
            .sum_nanos
            .fetch_add(elapsed.as_nanos() as u64, Relaxed);
        stats.count.fetch_add(1, Relaxed);
    }

    /// Counts one predicted row of class `class`.
    pub fn count_prediction(&self, class: usize) {
        if let Some(counter) = self.predictions.get(class) {
            counter.fetch_add(1, Relaxed);
        }
    }

    /// Marks a request as started; the returned guard marks it finished when dropped, so a
    /// cancelled request is not counted forever.
    pub fn start_request(&self) -> InFlight<'_> {
        self.in_flight.fetch_add(1, Relaxed);
        InFlight(&self.in_flight)
    }

    /// The number of requests being handled now.
    pub fn in_flight(&self) -> i64 {
        self.in_flight.load(Relaxed)
    }

    /// The text exposition of every metric.
    pub fn render(&self, model: &Model) -> String {
        let mut out = String::with_capacity(4096);
        let w = &mut out;
        let _ = writeln!(
            w,
            "# HELP http_requests_total Requests answered, by route and status (gRPC: method path, HTTP status of the code)."
        );
        let _ = writeln!(w, "# TYPE http_requests_total counter");
        for (r, stats) in self.routes.iter().enumerate() {
            for (s, counter) in stats.statuses.iter().enumerate() {
                let n = counter.load(Relaxed);
                if n > 0 {
                    let status = STATUSES.get(s).map_or("other".to_owned(), u16::to_string);
                    let _ = writeln!(
                        w,
                        "http_requests_total{{route=\"{}\",status=\"{status}\"}} {n}",
                        route_name(r)
                    );
                }
            }
        }
        let _ = writeln!(
            w,
            "# HELP http_request_duration_seconds Time from request to response, by route."
        );
        let _ = writeln!(w, "# TYPE http_request_duration_seconds histogram");
        for (r, stats) in self.routes.iter().enumerate() {
            let count = stats.count.load(Relaxed);
            if count == 0 {
                continue;
            }
            let route = route_name(r);
            let mut cumulative = 0;
            for (b, counter) in stats.buckets.iter().enumerate() {
                cumulative += counter.load(Relaxed);
                let le = BUCKETS.get(b).map_or("+Inf".to_owned(), f64::to_string);
                let _ = writeln!(w, "http_request_duration_seconds_bucket{{route=\"{route}\",le=\"{le}\"}} {cumulative}");
            }
            let sum = stats.sum_nanos.load(Relaxed) as f64 / 1e9;
            let _ = writeln!(
                w,
                "http_request_duration_seconds_sum{{route=\"{route}\"}} {sum}"
            );
            let _ = writeln!(
                w,
                "http_request_duration_seconds_count{{route=\"{route}\"}} {cumulative}"
            );
        }
        let _ = writeln!(
            w,
            "# HELP http_requests_in_flight Requests being handled, this scrape included."
        );
        let _ = writeln!(w, "# TYPE http_requests_in_flight gauge");
        let _ = writeln!(w, "http_requests_in_flight {}", self.in_flight());
        let _ = writeln!(
            w,
            "# HELP predictions_total Rows predicted, by predicted class."
        );
        let _ = writeln!(w, "# TYPE predictions_total counter");
        for (class, counter) in self.predictions.iter().enumerate() {
            let label = escape(model.label(class));
            let _ = writeln!(
                w,
                "predictions_total{{class=\"{class}\",label=\"{label}\"}} {}",
                counter.load(Relaxed)
            );
        }
        let _ = writeln!(
            w,
            "# HELP model_info The model this process serves (always 1)."
        );
        let _ = writeln!(w, "# TYPE model_info gauge");
        let _ = writeln!(
            w,
            "model_info{{version=\"{}\",algorithm=\"{}\"}} 1",
            escape(model.version()),
            escape(&model.metadata().algorithm)
        );
        let _ = writeln!(
            w,
            "# HELP log_lines_dropped_total Log lines not written: the log channel was full or the write failed."
        );
        let _ = writeln!(w, "# TYPE log_lines_dropped_total counter");
        let _ = writeln!(
            w,
            "log_lines_dropped_total {}",
            crate::telemetry::dropped_lines()
        );
        out
    }
}

/// Decrements the in-flight gauge when dropped.
#[derive(Debug)]
pub struct InFlight<'a>(&'a AtomicI64);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Relaxed);
    }
}

/// Escapes a label value: backslash, double quote and newline.
fn escape(value: &str) -> String {
    value
        .replace('\\', r"\\")
        .replace('"', "\\\"")
        .replace('\n', r"\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_map_to_their_slot_and_unknown_ones_to_unmatched() {
        assert_eq!(route_name(route_index(Some("/predict"))), "/predict");
        assert_eq!(route_name(route_index(Some("/nope"))), "unmatched");
        assert_eq!(route_name(route_index(None)), "unmatched");
        let predict = "/prediction.PredictionService/Predict";
        assert_eq!(route_name(grpc_method_index(predict)), predict);
        assert_eq!(route_name(grpc_method_index("/x.Y/Z")), "unmatched");
        assert_eq!(route_name(route_index(Some(predict))), "unmatched");
        assert_eq!(route_index(None), grpc_method_index("/x.Y/Z"));
    }

    #[test]
    fn histogram_buckets_are_cumulative() {
        let m = Metrics::default();
        let r = route_index(Some("/health"));
        m.observe(r, StatusCode::OK, Duration::from_micros(50));
        m.observe(r, StatusCode::OK, Duration::from_millis(3));
        m.observe(r, StatusCode::IM_A_TEAPOT, Duration::from_secs(5));
        let stats = &m.routes[r];
        let counts: Vec<u64> = stats.buckets.iter().map(|b| b.load(Relaxed)).collect();
        assert_eq!(counts.iter().sum::<u64>(), 3);
        assert_eq!(counts[0], 1, "50 µs falls in the first bucket");
        assert_eq!(counts[N_BUCKETS - 1], 1, "5 s falls in +Inf");
        assert_eq!(
            stats.statuses[STATUSES.len()].load(Relaxed),
            1,
            "418 counts as other"
        );
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}

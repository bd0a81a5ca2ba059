//! The shadow journal: what this process answered to the prediction requests that the balancer
//! mirrors to both colors, so that the deploy tool can fetch both colors' records and join them
//! by shadow id to measure how often the two models agree.
//!
//! - the balancer sends both copies of a sampled request with the same [`X_SHADOW_ID`]; a
//!   request is recorded when it carries one that is short printable ASCII (the rule of
//!   `x-request-id`; gRPC metadata is the same header) and its route is one of
//!   [`RECORDED_ROUTES`]: the HTTP prediction routes and the gRPC prediction methods;
//! - the HTTP `observe` middleware and the gRPC `observe` layer call [`Journal::begin`] before
//!   the handler runs (it marks the request) and [`Journal::finish`] after it (it adds the
//!   route, the status and the latency, and pushes the [`Record`]); a gRPC answer's status is
//!   the HTTP status of its code, as the metrics count it;
//! - a prediction handler takes the [`Shadow`] extractor (HTTP) or [`Shadow::of_grpc`] and calls
//!   [`Shadow::note`] or [`Shadow::note_grpc`] with the rows the model saw and its
//!   predictions; the note travels to `observe` as a response extension ([`Answered`]) and
//!   costs nothing when the request is not recorded. An error answer has no note: its record
//!   holds the status and no rows;
//! - [`Journal`] is a ring of at most `SHADOW_JOURNAL_RECORDS` records (0 turns recording off)
//!   and [`MAX_ROWS`] rows; each record has a sequence number from 1, and the oldest are
//!   evicted (and counted in `dropped`) to make room;
//! - `GET /_shadow/records` ([`crate::routes::shadow`]) reads it with [`Journal::read`].

use std::{
    collections::VecDeque,
    convert::Infallible,
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use axum::{
    extract::FromRequestParts,
    http::{self, request::Parts, HeaderName, StatusCode},
    response::Response,
};

use crate::{
    model::{Prediction, N_FEATURES},
    state::is_acceptable_id,
};

/// The request header with the balancer's id for both copies of a mirrored request.
pub static X_SHADOW_ID: HeaderName = HeaderName::from_static("x-shadow-id");

/// The routes whose answers are recorded: every HTTP route that predicts, as `MatchedPath`
/// spells it, and every gRPC method that predicts. The balancer mirrors all six.
pub const RECORDED_ROUTES: [&str; 6] = [
    "/predict",
    "/v2/models/{name}/infer",
    "/v2/models/{name}/versions/{version}/infer",
    "/prediction.PredictionService/Predict",
    "/prediction.PredictionService/PredictBatch",
    "/inference.GRPCInferenceService/ModelInfer",
];

/// The most rows (inputs with their predictions, 64 bytes each) the journal holds, whatever its
/// record limit: about 32 MiB, so that mirrored batches of 1024 rows cannot take gigabytes.
pub const MAX_ROWS: usize = 500_000;

/// One answered request, as `GET /_shadow/records` shows it with its sequence number.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    /// The request's [`X_SHADOW_ID`].
    pub id: Box<str>,
    /// The matched route, one of [`RECORDED_ROUTES`].
    pub route: &'static str,
    /// The HTTP status answered; for gRPC, the HTTP status of the answer's code (OK is 200).
    pub status: u16,
    /// The time to the response head, as the request's log line says.
    pub latency_us: u64,
    /// The rows as the model saw them; empty on an error answer.
    pub inputs: Vec<[f64; N_FEATURES]>,
    /// One prediction per row of `inputs`.
    pub outputs: Vec<Prediction>,
}

/// What a handler answered, carried from it to `observe` in the response's extensions.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Answered {
    /// The rows as the model saw them.
    pub inputs: Vec<[f64; N_FEATURES]>,
    /// One prediction per row.
    pub outputs: Vec<Prediction>,
}

/// Marks a request that is being recorded, for [`Shadow`] to find.
#[derive(Debug, Clone, Copy)]
struct Recording;

/// A request being recorded, between [`Journal::begin`] and [`Journal::finish`].
#[derive(Debug)]
pub struct Pending {
    id: Box<str>,
    route: &'static str,
}

/// Whether the request is being recorded; what a prediction handler needs to know to
/// [`note`](Shadow::note) its answer. Never refuses a request.
#[derive(Debug, Clone, Copy)]
pub struct Shadow {
    recording: bool,
}

impl<S: Send + Sync> FromRequestParts<S> for Shadow {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Shadow, Infallible> {
        Ok(Shadow {
            recording: parts.extensions.get::<Recording>().is_some(),
        })
    }
}

impl Shadow {
    /// Adds what the handler answered to `response` when the request is being recorded;
    /// otherwise `answered` is not even called, so unrecorded requests pay nothing.
    pub fn note(self, response: &mut Response, answered: impl FnOnce() -> Answered) {
        if self.recording {
            response.extensions_mut().insert(answered());
        }
    }

    /// Whether the gRPC call `request` is being recorded, for its handler to
    /// [`note_grpc`](Shadow::note_grpc) its answer.
    pub fn of_grpc<T>(request: &tonic::Request<T>) -> Shadow {
        Shadow {
            recording: request.extensions().get::<Recording>().is_some(),
        }
    }

    /// [`Shadow::note`] for a gRPC answer: tonic carries its extensions to the HTTP response
    /// that the `observe` layer sees.
    pub fn note_grpc<T>(
        self,
        response: &mut tonic::Response<T>,
        answered: impl FnOnce() -> Answered,
    ) {
        if self.recording {
            response.extensions_mut().insert(answered());
        }
    }
}

/// A page of the journal, as [`Journal::read`] returns it.
#[derive(Debug, Clone, Default)]
pub struct Page {
    /// The records asked for, oldest first, with their sequence numbers.
    pub records: Vec<(u64, Arc<Record>)>,
    /// The sequence number of the oldest record held; when none is held, the one the next
    /// record will get.
    pub oldest: u64,
    /// The highest sequence number given so far; 0 when nothing was recorded.
    pub last: u64,
    /// How many records were evicted to make room.
    pub dropped: u64,
}

/// The ring buffer of [`Record`]s; one per process, in the application state.
pub struct Journal {
    capacity: usize,
    ring: Mutex<Ring>,
}

/// The journal's contents. Sequence numbers need no storage: the records held are the last
/// `records.len()` of those numbered `1..=last`.
#[derive(Debug, Default)]
struct Ring {
    records: VecDeque<Arc<Record>>,
    rows: usize,
    last: u64,
    dropped: u64,
}

impl Ring {
    fn oldest(&self) -> u64 {
        self.last + 1 - self.records.len() as u64
    }
}

impl std::fmt::Debug for Journal {
    /// Its size, not its records: the state is printed whole.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ring = self.lock();
        f.debug_struct("Journal")
            .field("capacity", &self.capacity)
            .field("held", &ring.records.len())
            .field("last", &ring.last)
            .field("dropped", &ring.dropped)
            .finish()
    }
}

impl Journal {
    /// A journal of at most `capacity` records; 0 records nothing.
    pub fn new(capacity: usize) -> Journal {
        Journal {
            capacity,
            ring: Mutex::default(),
        }
    }

    /// The most records it holds; 0 when recording is off.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Starts recording `req`, matched to `route`, if it carries an acceptable [`X_SHADOW_ID`]
    /// and `route` is one of [`RECORDED_ROUTES`]: marks it for [`Shadow`] and returns what
    /// [`Journal::finish`] needs. Otherwise `None`, after one header lookup.
    pub fn begin<B>(&self, route: &'static str, req: &mut http::Request<B>) -> Option<Pending> {
        let id = req.headers().get(&X_SHADOW_ID)?;
        if self.capacity == 0 || !RECORDED_ROUTES.contains(&route) || !is_acceptable_id(id) {
            return None;
        }
        // Printable ASCII, so this cannot fail.
        let id = id.to_str().ok()?.into();
        req.extensions_mut().insert(Recording);
        Some(Pending { id, route })
    }

    /// Records the answer to the request [`Journal::begin`] started: its `status` (the HTTP
    /// one, or a gRPC code's), its latency and what the handler noted in `response` (taken out
    /// of it).
    pub fn finish<B>(
        &self,
        pending: Pending,
        status: StatusCode,
        response: &mut http::Response<B>,
        latency: Duration,
    ) {
        let Answered { inputs, outputs } = response
            .extensions_mut()
            .remove::<Answered>()
            .unwrap_or_default();
        self.push(Record {
            id: pending.id,
            route: pending.route,
            status: status.as_u16(),
            latency_us: latency.as_micros() as u64,
            inputs,
            outputs,
        });
    }

    /// Appends `record` with the next sequence number, evicting the oldest records while the
    /// journal is full (in records or in [`MAX_ROWS`]). Only moves pointers under the lock.
    pub fn push(&self, record: Record) {
        if self.capacity == 0 {
            return;
        }
        let rows = record.inputs.len();
        let record = Arc::new(record);
        let mut ring = self.lock();
        while ring.records.len() >= self.capacity
            || (!ring.records.is_empty() && ring.rows + rows > MAX_ROWS)
        {
            let Some(evicted) = ring.records.pop_front() else {
                break;
            };
            ring.rows -= evicted.inputs.len();
            ring.dropped += 1;
        }
        ring.records.push_back(record);
        ring.rows += rows;
        ring.last += 1;
    }

    /// The records numbered above `after`, oldest first, at most `limit`. Records evicted
    /// before the caller asked are skipped: the page starts at the oldest one held, and
    /// [`Page::oldest`] shows the gap.
    pub fn read(&self, after: u64, limit: usize) -> Page {
        let ring = self.lock();
        let oldest = ring.oldest();
        let first = after.saturating_add(1).max(oldest);
        let skip = usize::try_from(first - oldest).unwrap_or(usize::MAX);
        let records = ring
            .records
            .iter()
            .skip(skip)
            .take(limit)
            .zip(first..)
            .map(|(record, seq)| (seq, Arc::clone(record)))
            .collect();
        Page {
            records,
            oldest,
            last: ring.last,
            dropped: ring.dropped,
        }
    }

    /// The ring, also after a panic elsewhere poisoned the lock: it is consistent after every
    /// statement, and losing the journal must not fail requests.
    fn lock(&self) -> MutexGuard<'_, Ring> {
        self.ring
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use axum::{body::Body, extract::Request};

    use super::*;

    fn record(id: &str, rows: usize) -> Record {
        Record {
            id: id.into(),
            route: "/predict",
            status: 200,
            latency_us: 1,
            inputs: vec![[1.0, 2.0, 3.0, 4.0]; rows],
            outputs: vec![
                Prediction {
                    class: 0,
                    probabilities: [1.0, 0.0, 0.0],
                };
                rows
            ],
        }
    }

    fn seqs_and_ids(page: &Page) -> Vec<(u64, &str)> {
        page.records.iter().map(|(s, r)| (*s, &*r.id)).collect()
    }

    #[test]
    fn an_empty_journal_says_where_the_next_record_goes() {
        let page = Journal::new(3).read(0, 10);
        assert!(page.records.is_empty());
        assert_eq!((page.oldest, page.last, page.dropped), (1, 0, 0));
    }

    #[test]
    fn records_are_numbered_from_1_and_paged_after_a_mark() {
        let journal = Journal::new(10);
        for id in ["a", "b", "c", "d"] {
            journal.push(record(id, 1));
        }
        let page = journal.read(0, 10);
        assert_eq!(
            seqs_and_ids(&page),
            [(1, "a"), (2, "b"), (3, "c"), (4, "d")]
        );
        assert_eq!((page.oldest, page.last, page.dropped), (1, 4, 0));
        assert_eq!(seqs_and_ids(&journal.read(1, 2)), [(2, "b"), (3, "c")]);
        assert_eq!(seqs_and_ids(&journal.read(3, 2)), [(4, "d")]);
        assert!(journal.read(4, 10).records.is_empty());
        assert!(journal.read(u64::MAX, 10).records.is_empty());
        assert!(journal.read(0, 0).records.is_empty());
    }

    #[test]
    fn a_full_journal_evicts_the_oldest_and_counts_them() {
        let journal = Journal::new(3);
        for id in ["a", "b", "c", "d", "e"] {
            journal.push(record(id, 1));
        }
        let page = journal.read(0, 10);
        assert_eq!(seqs_and_ids(&page), [(3, "c"), (4, "d"), (5, "e")]);
        assert_eq!((page.oldest, page.last, page.dropped), (3, 5, 2));
        // A caller that had read up to 1 sees the gap: it asked from 2, the page starts at 3.
        assert_eq!(journal.read(1, 1).records[0].0, 3);
    }

    #[test]
    fn the_row_limit_evicts_too_but_never_the_new_record() {
        let journal = Journal::new(100);
        journal.push(record("small", 1));
        journal.push(record("big", MAX_ROWS - 1));
        journal.push(record("next", 1));
        let page = journal.read(0, 10);
        assert_eq!(seqs_and_ids(&page), [(2, "big"), (3, "next")]);
        assert_eq!(page.dropped, 1);
        // A record over the limit on its own is still kept, alone.
        journal.push(record("huge", MAX_ROWS + 1));
        let page = journal.read(0, 10);
        assert_eq!(seqs_and_ids(&page), [(4, "huge")]);
        assert_eq!((page.oldest, page.dropped), (4, 3));
    }

    #[test]
    fn a_journal_of_zero_records_nothing() {
        let journal = Journal::new(0);
        journal.push(record("a", 1));
        let page = journal.read(0, 10);
        assert!(page.records.is_empty());
        assert_eq!((page.oldest, page.last, page.dropped), (1, 0, 0));
        let mut req = Request::builder()
            .header(&X_SHADOW_ID, "a")
            .body(Body::empty())
            .unwrap();
        assert!(journal.begin("/predict", &mut req).is_none());
    }

    #[test]
    fn only_acceptable_ids_on_prediction_routes_are_recorded() {
        let journal = Journal::new(10);
        let begin = |route: &'static str, id: Option<&[u8]>| {
            let mut req = Request::new(Body::empty());
            if let Some(id) = id {
                req.headers_mut()
                    .insert(&X_SHADOW_ID, id.try_into().unwrap());
            }
            let pending = journal.begin(route, &mut req);
            assert_eq!(
                pending.is_some(),
                req.extensions().get::<Recording>().is_some()
            );
            pending
        };
        assert!(begin("/predict", Some(b"4f1c")).is_some());
        assert!(begin("/v2/models/{name}/infer", Some(b"4f1c")).is_some());
        assert!(begin("/health", Some(b"4f1c")).is_none());
        assert!(begin("/predict", None).is_none());
        let long = vec![b'a'; 201];
        for bad in [&b""[..], b"a b", "é".as_bytes(), &long] {
            assert!(begin("/predict", Some(bad)).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn finish_takes_the_note_the_handler_left() {
        let journal = Journal::new(10);
        let mut req = Request::builder()
            .header(&X_SHADOW_ID, "s-1")
            .body(Body::empty())
            .unwrap();
        let pending = journal.begin("/predict", &mut req).unwrap();
        let mut response = Response::new(Body::empty());
        let answered = Answered {
            inputs: vec![[5.1, 3.5, 1.4, 0.2]],
            outputs: vec![Prediction {
                class: 0,
                probabilities: [0.9, 0.05, 0.05],
            }],
        };
        Shadow { recording: true }.note(&mut response, || answered.clone());
        journal.finish(
            pending,
            StatusCode::OK,
            &mut response,
            Duration::from_micros(312),
        );
        assert!(response.extensions().get::<Answered>().is_none());
        let page = journal.read(0, 10);
        let recorded = &page.records[0].1;
        assert_eq!(
            (
                &*recorded.id,
                recorded.route,
                recorded.status,
                recorded.latency_us
            ),
            ("s-1", "/predict", 200, 312)
        );
        assert_eq!(recorded.inputs, answered.inputs);
        assert_eq!(recorded.outputs, answered.outputs);

        // An error answer carries no note: the record has its status and no rows.
        let pending = journal.begin("/predict", &mut req).unwrap();
        let mut response = Response::new(Body::empty());
        journal.finish(
            pending,
            StatusCode::UNPROCESSABLE_ENTITY,
            &mut response,
            Duration::ZERO,
        );
        let recorded = &journal.read(1, 10).records[0].1;
        assert_eq!(recorded.status, 422);
        assert!(recorded.inputs.is_empty() && recorded.outputs.is_empty());
    }

    #[test]
    fn an_unrecorded_request_leaves_no_note() {
        let mut response = Response::new(Body::empty());
        Shadow { recording: false }.note(&mut response, || unreachable!("not called"));
        assert!(response.extensions().get::<Answered>().is_none());
    }
}

//! `GET /_shadow/records?after=<seq>&limit=<n>`: the shadow journal ([`crate::shadow`]), read
//! by the deploy tool on each color's own port (the balancer refuses `/_shadow/` publicly).
//!
//! - `after` (default 0): answer the records numbered above it, oldest first; records evicted
//!   before the caller asked are skipped, and `oldest` and `dropped` show the gap;
//! - `limit` (default and maximum [`MAX_LIMIT`]): at most this many records;
//! - `next`: the number of the last record answered (`after` when none), the `after` of the
//!   next page; `last`: the highest number given so far, a mark to read from later;
//! - `instance` changes when the process restarts, and with it the numbering (from 1 again).
//!
//! Either parameter that is not a whole number in its range gets a 400 that says so.

use axum::{
    extract::{Query, State},
    response::{IntoResponse, Response},
    routing::get,
    Json, Router,
};
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::{
    openapi::{
        path::{Parameter, ParameterBuilder, ParameterIn},
        schema::Schema,
        RefOr,
    },
    IntoParams, OpenApi, ToSchema,
};

use super::{
    predict::{Probabilities, Row},
    schema::from_json,
};
use crate::{
    error::{ApiError, ErrorBody},
    model::{N_CLASSES, N_FEATURES},
    shadow::Record,
    state::AppState,
};

/// The most records one page holds, and the default `limit`.
pub const MAX_LIMIT: usize = 10_000;

/// This family's routes.
pub fn router() -> Router<AppState> {
    Router::new().route("/_shadow/records", get(records))
}

/// This family's part of the OpenAPI document.
#[derive(OpenApi)]
#[openapi(paths(records), components(schemas(ShadowRecords, ShadowRecord)))]
pub struct Doc;

/// The query, as text: the numbers are parsed by hand so that each refusal says what to send.
#[derive(Debug, Default, Deserialize)]
pub struct RecordsQuery {
    after: Option<String>,
    limit: Option<String>,
}

impl IntoParams for RecordsQuery {
    /// Written by hand: each parameter's range is exactly the one [`RecordsQuery::parse`]
    /// accepts.
    fn into_params(_: impl Fn() -> Option<ParameterIn>) -> Vec<Parameter> {
        let param = |name: &str, description: &str, schema| {
            ParameterBuilder::new()
                .name(name)
                .parameter_in(ParameterIn::Query)
                .description(Some(description))
                .schema(Some(from_json(schema)))
                .build()
        };
        vec![
            param(
                "after",
                "Answer the records numbered above this one; 0 (the default) for all.",
                json!({"type": "integer", "minimum": 0, "maximum": u64::MAX, "default": 0}),
            ),
            param(
                "limit",
                "The most records to answer (default and maximum 10000).",
                json!({"type": "integer", "minimum": 0, "maximum": MAX_LIMIT, "default": MAX_LIMIT}),
            ),
        ]
    }
}

impl RecordsQuery {
    /// `(after, limit)`, or a 400 that names the parameter and what it takes.
    fn parse(&self) -> Result<(u64, usize), ApiError> {
        let after = whole_number(
            "after",
            self.after.as_deref(),
            (0, u64::MAX),
            "give the number of the last record you have, or 0 for all",
        )?;
        let limit = whole_number(
            "limit",
            self.limit.as_deref(),
            (MAX_LIMIT as u64, MAX_LIMIT as u64),
            "ask for the rest with after=<next> of the answer",
        )?;
        Ok((after, limit as usize))
    }
}

/// The parameter `name` given as `raw`: `default` when absent, else digits only and at most
/// `max`, or a 400 that ends with `hint`.
fn whole_number(
    name: &str,
    raw: Option<&str>,
    (default, max): (u64, u64),
    hint: &str,
) -> Result<u64, ApiError> {
    let Some(raw) = raw else {
        return Ok(default);
    };
    Some(raw)
        .filter(|raw| raw.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|raw| raw.parse::<u64>().ok())
        .filter(|n| *n <= max)
        .ok_or_else(|| {
            ApiError::bad_request(format!(
                "{name}={raw:?} is not a whole number from 0 to {max}: {hint}"
            ))
        })
}

/// `GET /_shadow/records`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ShadowRecords<'a> {
    /// The model version this process serves.
    #[schema(example = "v1.0.0")]
    pub version: &'a str,
    /// This process: a new one numbers its records from 1 again.
    #[schema(example = "5f3a9c01")]
    pub instance: &'a str,
    /// The number of the last record answered, or `after` when none: the next page's `after`.
    #[schema(schema_with = next_schema)]
    pub next: u64,
    /// The number of the oldest record held; when none is, the number the next one will get.
    /// Above `after + 1`: records were evicted before they were read.
    pub oldest: u64,
    /// Records evicted to make room since the process started.
    pub dropped: u64,
    /// The highest number given so far (0: none yet): a mark to read from later.
    pub last: u64,
    /// The most records this process keeps (`SHADOW_JOURNAL_RECORDS`); 0 when it records none.
    pub capacity: usize,
    /// The records numbered above `after`, oldest first, at most `limit`.
    pub records: Vec<ShadowRecord<'a>>,
}

/// `next` may be any `after`, up to the largest 64-bit number: more than utoipa's `int64`.
fn next_schema() -> RefOr<Schema> {
    from_json(json!({
        "type": "integer",
        "description": "The number of the last record answered, or `after` when none: the next page's `after`.",
        "minimum": 0,
        "maximum": u64::MAX
    }))
}

/// One answer to a request that carried `X-Shadow-Id`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ShadowRecord<'a> {
    /// Its number in this process's journal, from 1.
    pub seq: u64,
    /// The request's `X-Shadow-Id`: the same in both colors' records of one mirrored request.
    #[schema(example = "4f1c0e2d9b7a6c5e4f1c0e2d9b7a6c5e")]
    pub id: &'a str,
    /// The route that answered.
    #[schema(example = "/predict")]
    pub route: &'a str,
    /// The HTTP status answered.
    #[schema(example = 200, minimum = 100, maximum = 599)]
    pub status: u16,
    /// The time to the response head in microseconds, as the request's log line says.
    pub latency_us: u64,
    /// The rows as the model saw them (FP32 tensors rounded to FP32); empty on an error.
    #[schema(value_type = Vec<Row>)]
    pub inputs: &'a [[f64; N_FEATURES]],
    /// The predicted class of each row.
    #[schema(value_type = Vec<u32>)]
    pub classes: Vec<u32>,
    /// The class probabilities of each row.
    #[schema(value_type = Vec<Probabilities>)]
    pub probabilities: Vec<[f64; N_CLASSES]>,
}

impl<'a> ShadowRecord<'a> {
    fn new(seq: u64, record: &'a Record) -> ShadowRecord<'a> {
        ShadowRecord {
            seq,
            id: &record.id,
            route: record.route,
            status: record.status,
            latency_us: record.latency_us,
            inputs: &record.inputs,
            classes: record.outputs.iter().map(|p| p.class as u32).collect(),
            probabilities: record.outputs.iter().map(|p| p.probabilities).collect(),
        }
    }
}

/// The answers this process gave to mirrored prediction requests, for comparing the colors.
#[utoipa::path(
    get, path = "/_shadow/records", tag = "service",
    params(RecordsQuery),
    responses(
        (status = 200, description = "The records numbered above `after`, oldest first", body = ShadowRecords),
        (status = 400, description = "`after` or `limit` is not a whole number in its range", body = ErrorBody),
    )
)]
pub async fn records(
    State(state): State<AppState>,
    query: Result<Query<RecordsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(query) = query.map_err(|rejection| {
        ApiError::bad_request(format!(
            "invalid query: {}; expected after=<number>&limit=<number>",
            rejection.body_text()
        ))
    })?;
    let (after, limit) = query.parse()?;
    let page = state.shadow.read(after, limit);
    let records: Vec<ShadowRecord<'_>> = page
        .records
        .iter()
        .map(|(seq, record)| ShadowRecord::new(*seq, record))
        .collect();
    Ok(Json(ShadowRecords {
        version: state.model.version(),
        instance: state.instance(),
        next: page.records.last().map_or(after, |(seq, _)| *seq),
        oldest: page.oldest,
        dropped: page.dropped,
        last: page.last,
        capacity: state.shadow.capacity(),
        records,
    })
    .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(after: Option<&str>, limit: Option<&str>) -> Result<(u64, usize), ApiError> {
        RecordsQuery {
            after: after.map(str::to_owned),
            limit: limit.map(str::to_owned),
        }
        .parse()
    }

    #[test]
    fn parameters_default_and_must_be_whole_numbers_in_range() {
        assert_eq!(parse(None, None).unwrap(), (0, MAX_LIMIT));
        assert_eq!(parse(Some("7"), Some("0")).unwrap(), (7, 0));
        assert_eq!(
            parse(Some("18446744073709551615"), Some("10000")).unwrap(),
            (u64::MAX, MAX_LIMIT)
        );
        for (after, limit, needle) in [
            (Some("-1"), None, "after=\"-1\" is not a whole number"),
            (Some(""), None, "after=\"\""),
            (Some("+1"), None, "after=\"+1\""),
            (Some("1.5"), None, "or 0 for all"),
            (
                Some("18446744073709551616"),
                None,
                "from 0 to 18446744073709551615",
            ),
            (
                None,
                Some("10001"),
                "limit=\"10001\" is not a whole number from 0 to 10000",
            ),
            (None, Some("ten"), "after=<next>"),
        ] {
            let err = parse(after, limit).unwrap_err();
            assert_eq!(err.status.as_u16(), 400);
            assert!(err.message.contains(needle), "{}", err.message);
        }
    }
}

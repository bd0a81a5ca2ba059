//! `POST /predict`: one row (`features`) or a batch (`instances`) in, classes and
//! probabilities out.
//!
//! A row is four numbers, each within `[-FEATURE_LIMIT, FEATURE_LIMIT]`; a row outside gets a
//! 422 that names the feature and the range (and the row, in a batch). The request and response
//! schemas say exactly that (see [`super::schema`]). The rows and predictions of a mirrored
//! request are noted for the shadow journal ([`crate::shadow`]).

use std::fmt;

use axum::{
    extract::State,
    response::{IntoResponse, Response},
    routing::post,
    Json, Router,
};
use serde::{
    de::{self, SeqAccess, Visitor},
    Deserialize, Deserializer, Serialize,
};
use serde_json::json;
use utoipa::{
    openapi::{schema::Schema, RefOr},
    OpenApi, PartialSchema, ToSchema,
};

use super::schema::{bounded_number, from_json, reference};
use crate::{
    error::{ApiError, ErrorBody},
    extract::JsonBody,
    model::{Prediction, FEATURE_LIMIT, N_CLASSES, N_FEATURES},
    shadow::{Answered, Shadow},
    state::{check_batch, check_finite, AppState, RowError, MAX_BATCH_ROWS},
};

/// This family's routes.
pub fn router() -> Router<AppState> {
    Router::new().route("/predict", post(predict))
}

/// This family's part of the OpenAPI document.
#[derive(OpenApi)]
#[openapi(
    paths(predict),
    components(schemas(
        PredictRequest,
        Row,
        PredictAnswer,
        PredictResponse,
        BatchPredictResponse,
        RowPrediction,
        Probabilities
    ))
)]
pub struct Doc;

/// One input row: exactly four finite numbers ([`RowError`] says why not, in the words the gRPC
/// side uses too). Deserialized straight into an array, so a request allocates nothing for its
/// features. Their range is checked when predicting.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Row(pub [f64; N_FEATURES]);

impl PartialSchema for Row {
    fn schema() -> RefOr<Schema> {
        from_json(json!({
            "type": "array",
            "description": "Sepal length, sepal width, petal length, petal width (cm).",
            "items": bounded_number(FEATURE_LIMIT),
            "minItems": N_FEATURES,
            "maxItems": N_FEATURES
        }))
    }
}

impl ToSchema for Row {}

impl<'de> Deserialize<'de> for Row {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Row, D::Error> {
        deserializer.deserialize_seq(RowVisitor)
    }
}

struct RowVisitor;

impl<'de> Visitor<'de> for RowVisitor {
    type Value = Row;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an array of 4 numbers (sepal length, sepal width, petal length, petal width)")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Row, A::Error> {
        let mut row = [0.0; N_FEATURES];
        let mut n = 0;
        while let Some(value) = seq.next_element::<f64>()? {
            if n < N_FEATURES {
                row[n] = value;
            }
            n += 1;
        }
        if n != N_FEATURES {
            return Err(de::Error::custom(RowError::Count(n)));
        }
        check_finite(row).map(Row).map_err(de::Error::custom)
    }
}

/// `POST /predict` body: `features` for one row, or `instances` for a batch.
#[derive(Debug, Deserialize)]
pub struct PredictRequest {
    /// One row: sepal length, sepal width, petal length, petal width (cm).
    pub features: Option<Row>,
    /// A batch of rows (at most 1024), each as in `features`.
    pub instances: Option<Vec<Row>>,
}

impl PartialSchema for PredictRequest {
    /// One of the two fields, not both: the other is absent or null.
    fn schema() -> RefOr<Schema> {
        from_json(json!({
            "oneOf": [
                {
                    "type": "object",
                    "title": "one row",
                    "required": ["features"],
                    "properties": {"features": reference("Row"), "instances": {"type": "null"}}
                },
                {
                    "type": "object",
                    "title": "a batch",
                    "required": ["instances"],
                    "properties": {
                        "instances": {
                            "type": "array",
                            "items": reference("Row"),
                            "minItems": 1,
                            "maxItems": MAX_BATCH_ROWS
                        },
                        "features": {"type": "null"}
                    }
                }
            ],
            "description": "`features` for one row, or `instances` for a batch of rows, not both.",
            "example": {"features": [5.1, 3.5, 1.4, 0.2]}
        }))
    }
}

impl ToSchema for PredictRequest {}

/// The probability of each class, in class order; they sum to 1.
#[derive(Debug, Serialize)]
#[serde(transparent)]
pub struct Probabilities(pub [f64; N_CLASSES]);

impl PartialSchema for Probabilities {
    fn schema() -> RefOr<Schema> {
        from_json(json!({
            "type": "array",
            "description": "The probability of each class, in class order; finite, they sum to 1.",
            "items": {"type": "number", "format": "double", "minimum": 0, "maximum": 1},
            "minItems": N_CLASSES,
            "maxItems": N_CLASSES
        }))
    }
}

impl ToSchema for Probabilities {}

/// The answer: `PredictResponse` for `features`, `BatchPredictResponse` for `instances`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(untagged)]
pub enum PredictAnswer<'a> {
    One(PredictResponse<'a>),
    Batch(BatchPredictResponse<'a>),
}

/// The answer for one row.
#[derive(Debug, Serialize, ToSchema)]
pub struct PredictResponse<'a> {
    /// The predicted class index: 0 setosa, 1 versicolor, 2 virginica.
    #[schema(example = 0, minimum = 0, maximum = 2)]
    pub class: usize,
    #[schema(example = "setosa")]
    pub label: &'a str,
    pub probabilities: Probabilities,
    /// The model version that answered.
    #[schema(example = "v1.0.0")]
    pub version: &'a str,
}

/// One row's result inside a batch answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct RowPrediction<'a> {
    #[schema(minimum = 0, maximum = 2)]
    pub class: usize,
    pub label: &'a str,
    pub probabilities: Probabilities,
}

/// The answer for a batch: one prediction per row, in order.
#[derive(Debug, Serialize, ToSchema)]
pub struct BatchPredictResponse<'a> {
    pub predictions: Vec<RowPrediction<'a>>,
    pub version: &'a str,
}

/// Predicts the Iris species of one row or a batch of rows.
#[utoipa::path(
    post, path = "/predict", tag = "predict",
    request_body = PredictRequest,
    responses(
        (status = 200, description = "One row: `PredictResponse`; a batch: `BatchPredictResponse`", body = PredictAnswer),
        (status = 400, description = "Malformed JSON", body = ErrorBody),
        (status = 413, description = "Body over 1 MiB or batch over 1024 rows", body = ErrorBody),
        (status = 415, description = "Content-Type is not JSON", body = ErrorBody),
        (status = 422, description = "Wrong shape (feature count, types, empty batch) or a feature outside the accepted range", body = ErrorBody),
    )
)]
pub async fn predict(
    State(state): State<AppState>,
    shadow: Shadow,
    JsonBody(request): JsonBody<PredictRequest>,
) -> Result<Response, ApiError> {
    let model = &state.model;
    let label = |p: &Prediction| model.label(p.class);
    match (request.features, request.instances) {
        (Some(row), None) => {
            let p = state.predict(&row.0)?;
            let mut response = Json(PredictAnswer::One(PredictResponse {
                class: p.class,
                label: label(&p),
                probabilities: Probabilities(p.probabilities),
                version: model.version(),
            }))
            .into_response();
            shadow.note(&mut response, || Answered {
                inputs: vec![row.0],
                outputs: vec![p],
            });
            Ok(response)
        }
        (None, Some(rows)) => {
            check_batch(rows.len())?;
            let rows: Vec<[f64; N_FEATURES]> = rows.iter().map(|row| row.0).collect();
            let predictions = state.predict_all(&rows)?;
            let mut response = Json(PredictAnswer::Batch(BatchPredictResponse {
                predictions: predictions
                    .iter()
                    .map(|p| RowPrediction {
                        class: p.class,
                        label: label(p),
                        probabilities: Probabilities(p.probabilities),
                    })
                    .collect(),
                version: model.version(),
            }))
            .into_response();
            shadow.note(&mut response, || Answered {
                inputs: rows,
                outputs: predictions,
            });
            Ok(response)
        }
        (Some(_), Some(_)) => Err(ApiError::unprocessable(
            "send either \"features\" (one row) or \"instances\" (a batch), not both",
        )),
        (None, None) => Err(ApiError::unprocessable(
            "expected \"features\": [4 numbers] for one row, or \"instances\": [[4 numbers], ...] for a batch",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_need_exactly_four_finite_numbers() {
        let row: Row = serde_json::from_str("[5.1, 3.5, 1.4, 0.2]").unwrap();
        assert_eq!(row.0, [5.1, 3.5, 1.4, 0.2]);
        let short = serde_json::from_str::<Row>("[1, 2]")
            .unwrap_err()
            .to_string();
        assert!(
            short.contains("expected 4 features") && short.contains("got 2"),
            "{short}"
        );
        let long = serde_json::from_str::<Row>("[1, 2, 3, 4, 5]")
            .unwrap_err()
            .to_string();
        assert!(long.contains("got 5"), "{long}");
        assert!(serde_json::from_str::<Row>(r#"[1, 2, "x", 4]"#).is_err());
        assert!(serde_json::from_str::<Row>("[1, 2, 3, 1e999]").is_err());
    }
}

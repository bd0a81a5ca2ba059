//! `POST /predict`: one row (`features`) or a batch (`instances`) in, classes and
//! probabilities out.

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
use utoipa::{OpenApi, ToSchema};

use crate::{
    error::{ApiError, ErrorBody},
    extract::JsonBody,
    model::{N_CLASSES, N_FEATURES},
    state::{check_batch, AppState},
};

/// This family's routes.
pub fn router() -> Router<AppState> {
    Router::new().route("/predict", post(predict))
}

/// This family's part of the OpenAPI document.
#[derive(OpenApi)]
#[openapi(
    paths(predict),
    components(schemas(PredictRequest, PredictResponse, BatchPredictResponse, RowPrediction))
)]
pub struct Doc;

/// One input row: exactly four finite numbers. Deserialized straight into an array, so a
/// request allocates nothing for its features.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Row(pub [f64; N_FEATURES]);

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
            return Err(de::Error::custom(format_args!(
                "expected {N_FEATURES} features (sepal length, sepal width, petal length, petal width), got {n}"
            )));
        }
        if let Some(bad) = row.iter().find(|v| !v.is_finite()) {
            return Err(de::Error::custom(format_args!(
                "feature values must be finite numbers, got {bad}"
            )));
        }
        Ok(Row(row))
    }
}

/// `POST /predict` body: `features` for one row, or `instances` for a batch.
#[derive(Debug, Deserialize, ToSchema)]
#[schema(example = json!({"features": [5.1, 3.5, 1.4, 0.2]}))]
pub struct PredictRequest {
    /// One row: sepal length, sepal width, petal length, petal width (cm).
    #[schema(value_type = Option<Vec<f64>>, min_items = 4, max_items = 4)]
    pub features: Option<Row>,
    /// A batch of rows (at most 1024), each as in `features`.
    #[schema(value_type = Option<Vec<Vec<f64>>>)]
    pub instances: Option<Vec<Row>>,
}

/// The answer for one row.
#[derive(Debug, Serialize, ToSchema)]
pub struct PredictResponse<'a> {
    /// The predicted class index: 0 setosa, 1 versicolor, 2 virginica.
    #[schema(example = 0)]
    pub class: usize,
    #[schema(example = "setosa")]
    pub label: &'a str,
    /// The probability of each class, in class order; they sum to 1.
    pub probabilities: [f64; N_CLASSES],
    /// The model version that answered.
    #[schema(example = "v1.0.0")]
    pub version: &'a str,
}

/// One row's result inside a batch answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct RowPrediction<'a> {
    pub class: usize,
    pub label: &'a str,
    pub probabilities: [f64; N_CLASSES],
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
        (status = 200, description = "One row: `PredictResponse`; a batch: `BatchPredictResponse`", body = PredictResponse),
        (status = 400, description = "Malformed JSON", body = ErrorBody),
        (status = 413, description = "Body over 1 MiB or batch over 1024 rows", body = ErrorBody),
        (status = 415, description = "Content-Type is not JSON", body = ErrorBody),
        (status = 422, description = "Wrong shape: feature count, types, non-finite values, empty batch", body = ErrorBody),
    )
)]
pub async fn predict(
    State(state): State<AppState>,
    JsonBody(request): JsonBody<PredictRequest>,
) -> Result<Response, ApiError> {
    let model = &state.model;
    match (request.features, request.instances) {
        (Some(row), None) => {
            let p = state.predict(&row.0);
            Ok(Json(PredictResponse {
                class: p.class,
                label: model.label(p.class),
                probabilities: p.probabilities,
                version: model.version(),
            })
            .into_response())
        }
        (None, Some(rows)) => {
            check_batch(rows.len())?;
            let predictions = rows
                .iter()
                .map(|row| {
                    let p = state.predict(&row.0);
                    RowPrediction { class: p.class, label: model.label(p.class), probabilities: p.probabilities }
                })
                .collect();
            Ok(Json(BatchPredictResponse { predictions, version: model.version() }).into_response())
        }
        (Some(_), Some(_)) => Err(ApiError::unprocessable("send either \"features\" (one row) or \"instances\" (a batch), not both")),
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

//! `prediction.PredictionService`: the service's own API over gRPC.
//!
//! - `Predict`: one row of four FP32 features, read into FP64 and checked exactly as HTTP's
//!   `/predict` checks them (four finite values, within the model's range), then predicted
//!   through [`AppState::predict`], which counts the class in the metrics;
//! - `PredictBatch`: 1 to `MAX_BATCH_ROWS` rows, each checked the same way (the message names
//!   the row), predicted all or none through [`AppState::predict_all`];
//! - `Health`: `ok` and the model version; `draining` once the drain has started.
//!
//! A refused request gets the HTTP side's message with the code of [`super::status`]. The rows
//! and predictions of a mirrored `Predict` or `PredictBatch` are noted for the shadow journal
//! ([`crate::shadow`]).

use ml_proto::prediction::{
    prediction_service_server::PredictionService, HealthRequest, HealthResponse,
    PredictBatchRequest, PredictBatchResponse, PredictRequest, PredictResponse,
};
use tonic::{Request, Response, Status};

use crate::{
    error::ApiError,
    model::Prediction,
    shadow::{Answered, Shadow},
    state::{check_batch, row_from, AppState},
};

/// `prediction.PredictionService` over the shared state.
#[derive(Debug, Clone)]
pub struct Service {
    state: AppState,
}

impl Service {
    pub fn new(state: AppState) -> Service {
        Service { state }
    }

    /// One row's answer in the protocol's shape.
    fn answer(&self, p: &Prediction) -> PredictResponse {
        let model = &self.state.model;
        PredictResponse {
            prediction: p.class as i32,
            confidence: p.probabilities[p.class] as f32,
            model_version: model.version().to_owned(),
            label: model.label(p.class).to_owned(),
            probabilities: p.probabilities.iter().map(|&v| v as f32).collect(),
        }
    }
}

#[tonic::async_trait]
impl PredictionService for Service {
    async fn predict(
        &self,
        request: Request<PredictRequest>,
    ) -> Result<Response<PredictResponse>, Status> {
        let shadow = Shadow::of_grpc(&request);
        let row = row_from(&request.get_ref().features).map_err(ApiError::from)?;
        let p = self.state.predict(&row)?;
        let mut response = Response::new(self.answer(&p));
        shadow.note_grpc(&mut response, || Answered {
            inputs: vec![row],
            outputs: vec![p],
        });
        Ok(response)
    }

    async fn predict_batch(
        &self,
        request: Request<PredictBatchRequest>,
    ) -> Result<Response<PredictBatchResponse>, Status> {
        let shadow = Shadow::of_grpc(&request);
        let rows = &request.get_ref().rows;
        check_batch(rows.len())?;
        let rows = rows
            .iter()
            .enumerate()
            .map(|(i, row)| {
                row_from(&row.features)
                    .map_err(|err| ApiError::unprocessable(format!("row {i}: {err}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let predictions = self.state.predict_all(&rows)?;
        let mut response = Response::new(PredictBatchResponse {
            predictions: predictions.iter().map(|p| self.answer(p)).collect(),
            model_version: self.state.model.version().to_owned(),
        });
        shadow.note_grpc(&mut response, || Answered {
            inputs: rows,
            outputs: predictions,
        });
        Ok(response)
    }

    async fn health(
        &self,
        _request: Request<HealthRequest>,
    ) -> Result<Response<HealthResponse>, Status> {
        let status = if self.state.drain.has_started() {
            "draining"
        } else {
            "ok"
        };
        Ok(Response::new(HealthResponse {
            status: status.to_owned(),
            model_version: self.state.model.version().to_owned(),
        }))
    }
}

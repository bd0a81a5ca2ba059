//! `grpc.health.v1.Health` (Check and Watch), answered by tonic-health's service from the
//! statuses of a [`HealthReporter`]:
//!
//! 1. [`set_all`] with SERVING when the server starts serving: the whole server (`""`),
//!    `prediction.PredictionService` and `inference.GRPCInferenceService`;
//! 2. [`set_all`] with NOT_SERVING as soon as the drain starts, before the servers stop
//!    accepting, so every watcher hears it while its connection is still open;
//! 3. then every Watch stream ends (after sending NOT_SERVING): a watching client, as gRPC's
//!    client-side health checking is, would otherwise hold its connection, and the drain, open
//!    until the drain timeout.
//!
//! Check is tonic-health's own; Watch is its stream, ended by [`UntilDrained`].

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
};

use ml_proto::{
    inference::grpc_inference_service_server::SERVICE_NAME as INFERENCE,
    prediction::prediction_service_server::SERVICE_NAME as PREDICTION,
};
use tokio_stream::Stream;
use tonic::{Request, Response, Status};
use tonic_health::{
    pb::{
        health_server::{Health, HealthServer},
        HealthCheckRequest, HealthCheckResponse,
    },
    server::{HealthReporter, HealthService, WatchStream},
    ServingStatus,
};

use crate::state::{AppState, MAX_BODY_BYTES};

/// The names whose health is reported: the whole server, then each service.
pub const SERVICES: [&str; 3] = ["", PREDICTION, INFERENCE];

/// Sets the status of every name in [`SERVICES`].
pub async fn set_all(reporter: &HealthReporter, status: ServingStatus) {
    for name in SERVICES {
        reporter.set_service_status(name, status).await;
    }
}

/// The health service answering from `reporter`'s statuses, its Watch streams ending once the
/// drain of `state` has started.
pub fn server(reporter: &HealthReporter, state: &AppState) -> HealthServer<DrainingHealth> {
    HealthServer::new(DrainingHealth {
        inner: HealthService::from_health_reporter(reporter.clone()),
        state: state.clone(),
    })
    .max_decoding_message_size(MAX_BODY_BYTES)
}

/// tonic-health's service, with Watch streams that end when the drain starts.
#[derive(Debug)]
pub struct DrainingHealth {
    inner: HealthService,
    state: AppState,
}

#[tonic::async_trait]
impl Health for DrainingHealth {
    async fn check(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<HealthCheckResponse>, Status> {
        self.inner.check(request).await
    }

    type WatchStream = UntilDrained<WatchStream>;

    async fn watch(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let drained = self.state.drain.started();
        let response = self.inner.watch(request).await?;
        Ok(response.map(|stream| UntilDrained {
            inner: Some(stream),
            drained: Box::pin(drained),
        }))
    }
}

/// A stream that ends once `drained` completes and the stream has nothing more ready: the
/// last status set before the drain (NOT_SERVING) is sent first.
pub struct UntilDrained<S> {
    /// `None` once ended.
    inner: Option<S>,
    drained: Pin<Box<dyn Future<Output = ()> + Send>>,
}

impl<S> std::fmt::Debug for UntilDrained<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UntilDrained")
            .field("ended", &self.inner.is_none())
            .finish_non_exhaustive()
    }
}

impl<S: Stream + Unpin> Stream for UntilDrained<S> {
    type Item = S::Item;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<S::Item>> {
        let this = &mut *self;
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        // The stream first, so that a status set before the drain is sent before the end.
        if let Poll::Ready(item) = Pin::new(inner).poll_next(cx) {
            if item.is_none() {
                this.inner = None;
            }
            return Poll::Ready(item);
        }
        if this.drained.as_mut().poll(cx).is_ready() {
            this.inner = None;
            return Poll::Ready(None);
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use tokio_stream::StreamExt;

    use super::*;
    use crate::model::Model;

    #[tokio::test]
    async fn check_says_serving_then_not_serving_for_every_name() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/v1.0.0");
        let state = AppState::new(Model::load(&dir, None).expect("the committed model loads"));
        let reporter = HealthReporter::new();
        let health = DrainingHealth {
            inner: HealthService::from_health_reporter(reporter.clone()),
            state,
        };
        let check = |service: &str| {
            let request = Request::new(HealthCheckRequest {
                service: service.to_owned(),
            });
            let health = &health;
            async move { health.check(request).await.map(|r| r.into_inner().status()) }
        };
        assert!(check(PREDICTION).await.is_err(), "unknown until serving");
        use tonic_health::pb::health_check_response::ServingStatus as Answer;
        for (status, expected) in [
            (ServingStatus::Serving, Answer::Serving),
            (ServingStatus::NotServing, Answer::NotServing),
        ] {
            set_all(&reporter, status).await;
            for name in SERVICES {
                assert_eq!(check(name).await.unwrap(), expected, "{name:?}");
            }
        }
    }

    #[tokio::test]
    async fn watchers_hear_not_serving_then_their_stream_ends() {
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let (status_tx, status_rx) = tokio::sync::watch::channel(1);
        let mut stream = UntilDrained {
            inner: Some(tokio_stream::wrappers::WatchStream::new(status_rx)),
            drained: Box::pin(async move {
                let _ = rx.await;
            }),
        };
        assert_eq!(stream.next().await, Some(1));
        // The status changes and the drain starts before the stream is polled again.
        status_tx.send(2).unwrap();
        tx.send(()).unwrap();
        assert_eq!(stream.next().await, Some(2));
        assert_eq!(stream.next().await, None);
        assert_eq!(stream.next().await, None);
    }
}

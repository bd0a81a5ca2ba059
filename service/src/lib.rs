//! The Iris model service: a multinomial logistic regression behind an HTTP API and a gRPC API,
//! both served from one loaded model and one set of metrics.
//!
//! - [`model`]: loading and verifying a model version, and predicting;
//! - [`train`]: reproducible training into `models/<version>/`;
//! - [`server`]: the whole application (routes, body limit, middleware), binding both ports and
//!   the graceful shutdown of both;
//! - [`routes`]: the handlers, one module per family (`/health`, `/predict`, the inference
//!   protocol, `/metrics`, `/openapi.json`, `/_shadow/records`), each with its router and its
//!   part of the OpenAPI document;
//! - [`grpc`]: the gRPC services (`prediction.PredictionService`, the inference protocol's
//!   `inference.GRPCInferenceService`, `grpc.health.v1`, reflection) and their observing layer;
//! - [`inference`]: the inference protocol's rules, shared by its REST and gRPC forms;
//! - [`state`]: what the handlers share: the application state, the model name, the limits;
//! - [`shadow`]: the journal of answers to mirrored requests (`X-Shadow-Id`), which the deploy
//!   tool reads from both colors to compare their predictions;
//! - [`telemetry`]: the logs, written by a background thread so that a slow or full log never
//!   fails or delays a request;
//! - [`config`], [`error`], [`extract`], [`metrics`], [`healthcheck`].
//!
//! Imports point one way: `server` → `routes`, `grpc` → `inference` → `state`, `shadow`,
//! `extract`, `error`, `metrics`, `model`.

pub mod config;
pub mod error;
pub mod extract;
pub mod grpc;
pub mod healthcheck;
pub mod inference;
pub mod metrics;
pub mod model;
pub mod routes;
pub mod server;
pub mod shadow;
pub mod state;
pub mod telemetry;
pub mod train;

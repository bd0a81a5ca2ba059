//! The Iris model service: a multinomial logistic regression behind an HTTP API.
//!
//! - [`model`]: loading and verifying a model version, and predicting;
//! - [`train`]: reproducible training into `models/<version>/`;
//! - [`server`]: the whole application (routes, body limit, middleware), binding and graceful
//!   shutdown;
//! - [`routes`]: the handlers, one module per family (`/health`, `/predict`, the inference
//!   protocol, `/metrics`, `/openapi.json`), each with its router and its part of the OpenAPI
//!   document;
//! - [`state`]: what the handlers share: the application state, the model name, the limits;
//! - [`telemetry`]: the logs, written by a background thread so that a slow or full log never
//!   fails or delays a request;
//! - [`config`], [`error`], [`extract`], [`metrics`], [`healthcheck`].
//!
//! Imports point one way: `server` → `routes` → `state`, `extract`, `error`, `metrics`, `model`.

pub mod config;
pub mod error;
pub mod extract;
pub mod healthcheck;
pub mod metrics;
pub mod model;
pub mod routes;
pub mod server;
pub mod state;
pub mod telemetry;
pub mod train;

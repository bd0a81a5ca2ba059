//! The Iris model service: a multinomial logistic regression behind an HTTP API.
//!
//! - [`model`]: loading and verifying a model version, and predicting;
//! - [`train`]: reproducible training into `models/<version>/`;
//! - [`server`]: the router, the middleware, binding and graceful shutdown;
//! - [`routes`]: the handlers (`/health`, `/predict`, the inference protocol, `/metrics`, `/openapi.json`);
//! - [`config`], [`error`], [`extract`], [`metrics`], [`openapi`], [`healthcheck`], [`telemetry`].

pub mod config;
pub mod error;
pub mod extract;
pub mod healthcheck;
pub mod metrics;
pub mod model;
pub mod openapi;
pub mod routes;
pub mod server;
pub mod telemetry;
pub mod train;

//! The Iris model service: a multinomial logistic regression behind an HTTP API.
//!
//! - [`model`]: loading and verifying a model version, and predicting;
//! - [`train`]: reproducible training into `models/<version>/`.

pub mod model;
pub mod train;

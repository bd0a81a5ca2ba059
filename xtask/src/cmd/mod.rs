//! One small file per verb: each parses nothing itself (clap did, in `flags.rs`), opens what it
//! needs and makes one call into `ops/` (or `images`, `train`, `ci` for the non-deploy verbs).

mod build;
mod canary;
mod ci;
mod deploy;
mod publish;
mod setup;
mod shadow;
mod smoke;
mod status;
mod switch;
mod train;
mod up;

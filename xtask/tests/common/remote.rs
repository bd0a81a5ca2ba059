//! The second deploy host of the remote tests: [`testhost::DeployHost`] (the workspace's
//! `testhost/` crate, shared with `cargo xtask bench remote`).

pub use testhost::*;

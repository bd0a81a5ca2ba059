//! `cargo xtask train` and `cargo xtask train-v1.1`: train a model version into `models/<version>/`.
//!
//! Steps:
//! 1. turn the flags into the `ml-train` arguments (version, output folder, `--force`, threshold);
//! 2. run `ml-train` from the `service` package in release mode, which loads Iris, splits it
//!    with a fixed seed, fits the model, refuses a model below the threshold or an existing
//!    version without `--force`, and writes `model.json` and `metadata.json`.
//!
//! The training code lives in the service crate, so this crate needs no ML dependencies.

use std::path::Path;

use anyhow::{Context, Result};
use xshell::{cmd, Shell};

use crate::flags;

impl flags::Train {
    pub(crate) fn run(self, sh: &Shell) -> Result<()> {
        let args = train_args(&self.version, &self.out_dir, self.force, self.min_accuracy);
        run_ml_train(sh, &args).with_context(|| format!("train model {}", self.version))
    }
}

impl flags::TrainV1_1 {
    pub(crate) fn run(self, sh: &Shell) -> Result<()> {
        flags::Train {
            version: "v1.1.0".to_owned(),
            force: self.force,
            min_accuracy: self.min_accuracy,
            out_dir: "models".into(),
        }
        .run(sh)
    }
}

fn run_ml_train(sh: &Shell, args: &[String]) -> Result<()> {
    cmd!(
        sh,
        "cargo run --quiet --release --package service --bin ml-train -- {args...}"
    )
    .run()
    .context("run ml-train")
}

/// The `ml-train` arguments for these flags.
fn train_args(version: &str, out_dir: &Path, force: bool, min_accuracy: f64) -> Vec<String> {
    let mut args = vec![
        "--version".to_owned(),
        version.to_owned(),
        "--out-dir".to_owned(),
        out_dir.display().to_string(),
        "--min-accuracy".to_owned(),
        min_accuracy.to_string(),
    ];
    if force {
        args.push("--force".to_owned());
    }
    args
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn force_is_passed_only_when_asked() {
        let args = train_args("v1.1.0", Path::new("models"), false, 0.9);
        assert_eq!(
            args,
            [
                "--version",
                "v1.1.0",
                "--out-dir",
                "models",
                "--min-accuracy",
                "0.9"
            ]
        );
        let forced = train_args("v1.0.0", Path::new("/tmp/m"), true, 0.95);
        assert_eq!(forced.last().map(String::as_str), Some("--force"));
        assert!(forced.contains(&"/tmp/m".to_owned()) && forced.contains(&"0.95".to_owned()));
    }
}

//! `ml-train`: trains one model version into `<out-dir>/<version>/`.
//!
//! Usage: `ml-train [--version v1.0.0] [--out-dir models] [--force] [--min-accuracy 0.9]`.
//! `cargo xtask train` runs this; it lives beside the service so the tool crate needs no ML
//! dependencies.

use std::{path::PathBuf, process::ExitCode};

use anyhow::{bail, Context, Result};
use service::train::{self, Options, DEFAULT_MIN_ACCURACY};

const USAGE: &str =
    "usage: ml-train [--version v1.0.0|v1.1.0] [--out-dir models] [--force] [--min-accuracy 0.9]";

fn main() -> ExitCode {
    match try_main() {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn try_main() -> Result<()> {
    let options = parse(std::env::args().skip(1))?;
    let m = train::run(&options)?;
    let dir = options.out_dir.join(&m.version);
    println!(
        "trained {} into {}: test accuracy {:.4} ({} test rows), model sha256 {}",
        m.version,
        dir.display(),
        m.metrics.test_accuracy,
        m.split.test_size,
        m.model_sha256
    );
    Ok(())
}

fn parse(mut args: impl Iterator<Item = String>) -> Result<Options> {
    let mut options = Options {
        version: "v1.0.0".to_owned(),
        out_dir: PathBuf::from("models"),
        force: false,
        min_accuracy: DEFAULT_MIN_ACCURACY,
    };
    while let Some(arg) = args.next() {
        let mut value = |name: &str| {
            args.next()
                .with_context(|| format!("{name} needs a value; {USAGE}"))
        };
        match arg.as_str() {
            "--version" => options.version = value("--version")?,
            "--out-dir" => options.out_dir = PathBuf::from(value("--out-dir")?),
            "--force" => options.force = true,
            "--min-accuracy" => {
                let raw = value("--min-accuracy")?;
                options.min_accuracy = raw
                    .parse()
                    .with_context(|| format!("--min-accuracy {raw:?} is not a number"))?;
            }
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?}; {USAGE}"),
        }
    }
    Ok(options)
}

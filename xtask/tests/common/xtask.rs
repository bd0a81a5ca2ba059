//! Running the real `xtask` binary, as `cargo xtask` would, against a test's own configuration.

use std::{
    ffi::OsString,
    path::PathBuf,
    process::{Command, Output},
    time::{Duration, Instant},
};

use super::{describe, project_root};

/// `xtask --runtime <runtime> --config <config> …` from the project root.
#[derive(Debug)]
pub struct Xtask {
    pub runtime: &'static str,
    pub config: PathBuf,
    /// Extra environment of every run.
    pub env: Vec<(&'static str, OsString)>,
    /// Print every run with its wall time and output (seen with `--nocapture`).
    pub echo: bool,
}

impl Xtask {
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_xtask"));
        cmd.args(["--runtime", self.runtime, "--config"])
            .arg(&self.config)
            .args(args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .current_dir(project_root());
        cmd
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.run_timed(args).0
    }

    /// The run's output and wall time.
    pub fn run_timed(&self, args: &[&str]) -> (Output, Duration) {
        let started = Instant::now();
        let out = self.command(args).output().expect("run the xtask binary");
        let took = started.elapsed();
        if self.echo {
            println!(
                "$ cargo xtask {} ({:.2} s)\n{}",
                args.join(" "),
                took.as_secs_f64(),
                describe(&out)
            );
        }
        (out, took)
    }

    /// Runs `xtask args`, asserts it succeeded; its output and wall time.
    pub fn ok(&self, args: &[&str]) -> (Output, Duration) {
        let (out, took) = self.run_timed(args);
        assert!(
            out.status.success(),
            "`cargo xtask {}` failed:\n{}",
            args.join(" "),
            describe(&out)
        );
        (out, took)
    }

    /// Runs `xtask args`, asserts it failed; its output.
    pub fn fails(&self, args: &[&str]) -> Output {
        let out = self.run(args);
        assert!(
            !out.status.success(),
            "`cargo xtask {}` succeeded but must fail:\n{}",
            args.join(" "),
            describe(&out)
        );
        out
    }
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

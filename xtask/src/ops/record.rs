//! The operation recorder: one line in the operation log for every operation, on every exit
//! path, built in one place.
//!
//! An operation creates a [`Recorder`] once it has read the live state, tells it what it aims
//! at and where traffic went, and ends with [`Recorder::finish`], which writes the line whether
//! the operation succeeded, did nothing, was refused, or failed. Errors that should be recorded
//! with a particular outcome travel as [`Stopped`] (see [`StopWith`]).

use std::{collections::BTreeMap, time::Instant};

use super::{Deployment, Live};
use crate::{
    domain::{Color, Operation, Outcome, Split},
    util::now_rfc3339,
};

/// An operation that ended early, with the outcome to record.
#[derive(Debug)]
pub struct Stopped {
    pub outcome: Outcome,
    pub error: anyhow::Error,
}

/// `result.stop_with(Outcome::Refused)`: an error that ends the operation with that outcome.
pub trait StopWith<T> {
    fn stop_with(self, outcome: Outcome) -> Result<T, Stopped>;
}

impl<T> StopWith<T> for anyhow::Result<T> {
    fn stop_with(self, outcome: Outcome) -> Result<T, Stopped> {
        self.map_err(|error| Stopped { outcome, error })
    }
}

/// Builds and writes one operation-log line.
pub struct Recorder<'a> {
    ctx: &'a Deployment,
    op: Operation,
    start: Instant,
    /// The record of the host as the operation found it, for [`Recorder::tell_host`].
    found: Option<String>,
}

impl<'a> Recorder<'a> {
    /// Starts the record of `operation` from the live state; until told otherwise it records
    /// that traffic stayed where it was.
    pub fn new(
        ctx: &'a Deployment,
        operation: &str,
        live: &Live,
        versions: &BTreeMap<Color, String>,
    ) -> Recorder<'a> {
        let mut recorder = Recorder {
            ctx,
            op: Operation {
                time: now_rfc3339(),
                operation: operation.to_owned(),
                runtime: ctx.rt.name().to_owned(),
                from: live.split,
                to: live.split,
                split: live.split,
                versions: versions.clone(),
                result: Outcome::Ok,
                duration_secs: 0.0,
                generation: live.generation(),
                reason: None,
            },
            start: Instant::now(),
            found: None,
        };
        recorder.found = serde_json::to_string(&recorder.op).ok();
        recorder.tell_host(None);
        recorder
    }

    /// Tells the host what to log if this process's connection to it ends mid-operation: the
    /// record as found, and `moved` (the record now) for when the host keeps the new route.
    fn tell_host(&self, moved: Option<&str>) {
        let Some(found) = &self.found else {
            return;
        };
        let told = self
            .ctx
            .rt
            .host()
            .on_interrupt(super::OPERATIONS_FILE, found, moved);
        if let Err(err) = told {
            eprintln!(
                "warning: the host cannot log this operation if the connection drops: {err:#}"
            );
        }
    }

    /// The split the operation aims at.
    pub fn aim(&mut self, to: Split) {
        self.op.to = to;
    }

    /// Traffic now follows `split`, routed by generation `generation`.
    pub fn moved(&mut self, split: Split, generation: u64) {
        self.op.split = split;
        self.op.generation = generation;
        if let Ok(moved) = serde_json::to_string(&self.op) {
            self.tell_host(Some(&moved));
        }
    }

    /// The versions the colors serve when the operation ends.
    pub fn versions(&mut self, versions: &BTreeMap<Color, String>) {
        self.op.versions = versions.clone();
    }

    /// Why the operation ran (a repair says what it repaired).
    pub fn reason(&mut self, why: &str) {
        self.op.reason = Some(why.to_owned());
    }

    /// The operation found nothing to do; `why` says so.
    pub fn noop(&mut self, why: &str) {
        self.op.result = Outcome::Noop;
        self.op.reason = Some(why.to_owned());
    }

    /// The operation's name (`switch`, `deploy`…).
    pub fn operation(&self) -> &str {
        &self.op.operation
    }

    /// Seconds since the operation started.
    pub fn elapsed(&self) -> f64 {
        self.start.elapsed().as_secs_f64()
    }

    /// Writes the line for `result` and hands the result on. A line that cannot be written
    /// fails the operation (the log must show every route change), keeping the first error.
    pub fn finish<T>(mut self, result: Result<T, Stopped>) -> anyhow::Result<T> {
        self.op.duration_secs = self.elapsed();
        let result = match result {
            Ok(value) => Ok(value),
            Err(Stopped { outcome, error }) => {
                self.op.result = outcome;
                self.op.reason = Some(format!("{error:#}"));
                Err(error)
            }
        };
        match (result, self.ctx.log_operation(&self.op)) {
            (result, Ok(())) => result,
            (Ok(_), Err(log)) => Err(log),
            (Err(error), Err(log)) => Err(error.context(format!(
                "(its operation-log line was not written either: {log:#})"
            ))),
        }
    }
}

//! Structured logs through `tracing`, written so that logging can never fail or delay a request.
//!
//! - the format: text by default, one JSON object per line with `LOG_FORMAT=json`; the level
//!   from `RUST_LOG` (default `info`);
//! - the path of a line: the request's thread formats it and offers it to a bounded channel
//!   without waiting ([`writer::LogWriter`]); one background thread writes what is waiting to the
//!   sink in batches ([`sink`]): stdout, or `LOG_FILE` with a size cap and one rotated file;
//! - what can go wrong: a full channel (the sink is slower than the requests), a failed write
//!   (a full disk, a missing folder): the line is dropped and counted ([`dropped_lines`],
//!   exposed as `log_lines_dropped_total`), and the file is retried after a short back-off.
//!
//! Before this, each request wrote its line to stdout itself, under stdout's lock; when the write
//! failed, `tracing-subscriber` reported it with `eprintln!`, which panics when stderr (the same
//! full file) fails too, and the request's connection died with the panic.

pub mod sink;
pub mod writer;

use std::{
    io::{self, IsTerminal},
    sync::OnceLock,
    time::Duration,
};

use tracing_subscriber::EnvFilter;

use crate::config::LogConfig;
use sink::{FdSink, FileSink, Sink};
use writer::LogWriter;

/// Lines that may wait for the writer thread; beyond this, new lines are dropped. A few
/// thousand lines of about 200 bytes: a second of logging at a few thousand requests/s, under
/// 2 MiB of memory at most.
pub const CHANNEL_LINES: usize = 4096;
/// How long [`LogGuard`] waits at exit for the lines still in the channel.
pub const FLUSH_TIMEOUT: Duration = Duration::from_secs(2);

/// The writer of the installed subscriber, for [`dropped_lines`].
static INSTALLED: OnceLock<LogWriter> = OnceLock::new();

/// Installs the global subscriber and starts its writer thread. Calling it twice is harmless
/// (the second call installs nothing). Fails only when the writer thread cannot be started.
pub fn init(config: &LogConfig) -> io::Result<LogGuard> {
    let sink: Box<dyn Sink> = match &config.file {
        Some(path) => Box::new(FileSink::new(path.clone(), config.max_bytes)),
        None => Box::new(FdSink::stdout()),
    };
    let writer = LogWriter::spawn(sink, CHANNEL_LINES)?;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_writer(writer.clone())
        // The writer never fails; and reporting a failure with `eprintln!` could panic.
        .log_internal_errors(false);
    let installed = if config.json {
        builder.json().flatten_event(true).try_init()
    } else {
        let ansi = config.file.is_none() && io::stdout().is_terminal();
        builder.with_ansi(ansi).try_init()
    };
    if installed.is_ok() {
        let _ = INSTALLED.set(writer.clone());
    }
    Ok(LogGuard(writer))
}

/// Log lines dropped so far by the installed subscriber (0 when none is installed).
pub fn dropped_lines() -> u64 {
    INSTALLED.get().map_or(0, LogWriter::dropped)
}

/// Held by `main`: when dropped, waits (at most [`FLUSH_TIMEOUT`]) until the lines logged so
/// far are written, so the last lines before exit are not lost.
#[derive(Debug)]
#[must_use = "dropping the guard at once would not flush the last lines at exit"]
pub struct LogGuard(LogWriter);

impl Drop for LogGuard {
    fn drop(&mut self) {
        self.0.flush(FLUSH_TIMEOUT);
    }
}

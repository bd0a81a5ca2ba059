//! Where the writer thread puts the lines: stdout ([`FdSink`]) or a capped file ([`FileSink`]).
//!
//! A sink writes a batch and says how many lines it could not write; it never panics and never
//! gives up for good. [`FileSink`]'s rules:
//! 1. open `LOG_FILE` for appending (created if missing) when there is a line to write; after a
//!    failed open or write, wait [`RETRY_AFTER`] before trying again, dropping lines meanwhile,
//!    so that logging comes back by itself when the disk has room again;
//! 2. before a line that would take the file past the cap, rename it to `<LOG_FILE>.1`
//!    (replacing the older one) and start a new file: the two files together stay under about
//!    twice the cap, each one under the cap unless a single line is larger;
//! 3. only a regular file rotates; `/dev/stdout`, `/dev/null` or a pipe are written, never
//!    renamed.

use std::{
    ffi::OsString,
    fs::{self, File, OpenOptions},
    io::{self, Write},
    os::{fd::AsFd, unix::fs::FileExt},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

/// How long a [`FileSink`] waits after a failed open or write before it tries again.
pub const RETRY_AFTER: Duration = Duration::from_millis(500);

/// Where the writer thread writes.
pub trait Sink: Send + 'static {
    /// Writes `lines` (each ending in a newline), in order; returns how many were not written.
    fn write_lines(&mut self, lines: &[Vec<u8>]) -> usize;
}

/// A file descriptor written as it is: stdout, without std's line buffer or its lock.
#[derive(Debug)]
pub struct FdSink {
    out: Out,
    buf: Vec<u8>,
}

#[derive(Debug)]
enum Out {
    /// A duplicate of the descriptor: the same open file, written without std's buffer.
    Fd(File),
    /// The descriptor could not be duplicated: through `std::io::Stdout` after all.
    Stdout(io::Stdout),
}

impl FdSink {
    /// The process's stdout.
    pub fn stdout() -> FdSink {
        let out = match io::stdout().as_fd().try_clone_to_owned() {
            Ok(fd) => Out::Fd(File::from(fd)),
            Err(_) => Out::Stdout(io::stdout()),
        };
        FdSink {
            out,
            buf: Vec::new(),
        }
    }
}

impl Sink for FdSink {
    fn write_lines(&mut self, lines: &[Vec<u8>]) -> usize {
        self.buf.clear();
        for line in lines {
            self.buf.extend_from_slice(line);
        }
        let written = match &mut self.out {
            Out::Fd(file) => file.write_all(&self.buf),
            Out::Stdout(stdout) => stdout.write_all(&self.buf).and_then(|()| stdout.flush()),
        };
        // A failed write may have put part of the batch out; count the batch as dropped.
        if written.is_ok() {
            0
        } else {
            lines.len()
        }
    }
}

/// `LOG_FILE`: appended to, rotated at a size cap, reopened after failures.
#[derive(Debug)]
pub struct FileSink {
    path: PathBuf,
    rotated: PathBuf,
    max_bytes: u64,
    retry_after: Duration,
    /// The open file, if any; `None` after a failure until the next attempt.
    file: Option<OpenFile>,
    /// No attempt to open before this.
    retry_at: Option<Instant>,
    /// Lines gathered for one write.
    buf: Vec<u8>,
    /// How many lines `buf` holds.
    buffered: usize,
}

#[derive(Debug)]
struct OpenFile {
    file: File,
    /// Bytes in the file: its length when opened, plus what was written since.
    size: u64,
    /// Whether it is a regular file, the only kind that rotates.
    rotates: bool,
}

impl FileSink {
    /// A sink appending to `path`, rotated to `<path>.1` at `max_bytes`. Opens nothing yet.
    pub fn new(path: PathBuf, max_bytes: u64) -> FileSink {
        let mut rotated = OsString::from(path.as_os_str());
        rotated.push(".1");
        FileSink {
            path,
            rotated: rotated.into(),
            max_bytes,
            retry_after: RETRY_AFTER,
            file: None,
            retry_at: None,
            buf: Vec::new(),
            buffered: 0,
        }
    }

    /// Changes the back-off after a failure (tests use zero).
    pub fn with_retry_after(mut self, retry_after: Duration) -> FileSink {
        self.retry_after = retry_after;
        self
    }

    /// Opens the file unless it is open or the back-off has not passed; returns whether it is
    /// open now.
    fn ensure_open(&mut self) -> bool {
        if self.file.is_some() {
            return true;
        }
        if self.retry_at.is_some_and(|at| Instant::now() < at) {
            return false;
        }
        match open_append(&self.path) {
            Ok(file) => {
                self.file = Some(file);
                self.retry_at = None;
                true
            }
            Err(_) => {
                self.fail();
                false
            }
        }
    }

    /// Closes the file and waits the back-off before the next attempt.
    fn fail(&mut self) {
        self.file = None;
        self.retry_at = Some(Instant::now() + self.retry_after);
    }

    /// Whether `next` more bytes would take a non-empty file past the cap.
    fn must_rotate(&self, next: usize) -> bool {
        self.file.as_ref().is_some_and(|f| {
            let size = f.size + self.buf.len() as u64;
            f.rotates && size > 0 && size + next as u64 > self.max_bytes
        })
    }

    /// Writes the gathered lines; returns how many were dropped.
    fn write_out(&mut self) -> usize {
        let lines = std::mem::take(&mut self.buffered);
        if lines == 0 {
            return 0;
        }
        let written = match &mut self.file {
            Some(open) => open.file.write_all(&self.buf).map(|()| {
                open.size += self.buf.len() as u64;
            }),
            None => Err(io::ErrorKind::NotConnected.into()),
        };
        self.buf.clear();
        match written {
            Ok(()) => 0,
            Err(_) => {
                self.fail();
                lines
            }
        }
    }

    /// Renames the file to `<path>.1` and opens a new one.
    fn rotate(&mut self) {
        self.file = None;
        if fs::rename(&self.path, &self.rotated).is_err() {
            self.fail();
            return;
        }
        self.retry_at = None;
        self.ensure_open();
    }
}

impl Sink for FileSink {
    fn write_lines(&mut self, lines: &[Vec<u8>]) -> usize {
        let mut dropped = 0;
        for line in lines {
            if !self.ensure_open() {
                dropped += 1;
                continue;
            }
            if self.must_rotate(line.len()) {
                dropped += self.write_out();
                if self.file.is_some() {
                    self.rotate();
                }
                if self.file.is_none() {
                    dropped += 1;
                    continue;
                }
            }
            self.buf.extend_from_slice(line);
            self.buffered += 1;
        }
        dropped + self.write_out()
    }
}

/// Opens `path` for appending; when an earlier failed write left half a line at its end,
/// finishes that line first, so the next one starts on its own.
fn open_append(path: &Path) -> io::Result<OpenFile> {
    let mut file = OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .open(path)
        .or_else(|_| OpenOptions::new().append(true).create(true).open(path))?;
    let meta = file.metadata()?;
    let rotates = meta.is_file();
    let mut size = if rotates { meta.len() } else { 0 };
    if size > 0 {
        let mut last = [0u8];
        if file.read_at(&mut last, size - 1).is_ok() && last[0] != b'\n' {
            file.write_all(b"\n")?;
            size += 1;
        }
    }
    Ok(OpenFile {
        file,
        size,
        rotates,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(from: usize, n: usize, width: usize) -> Vec<Vec<u8>> {
        (from..from + n)
            .map(|i| format!("{:0>w$}\n", i, w = width - 1).into_bytes())
            .collect()
    }

    #[test]
    fn the_file_rotates_before_a_line_would_pass_the_cap() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("service.log");
        let mut sink = FileSink::new(path.clone(), 100);
        // Ten-byte lines: ten fill the file exactly; the eleventh starts a new one.
        assert_eq!(sink.write_lines(&lines(0, 10, 10)), 0);
        assert_eq!(fs::metadata(&path).unwrap().len(), 100);
        assert!(!dir.path().join("service.log.1").exists());
        assert_eq!(sink.write_lines(&lines(10, 5, 10)), 0);
        let rotated = fs::read_to_string(dir.path().join("service.log.1")).unwrap();
        let current = fs::read_to_string(&path).unwrap();
        assert_eq!(rotated.lines().count(), 10);
        assert!(rotated.starts_with("000000000\n"));
        assert_eq!(current.lines().count(), 5);
        assert!(current.starts_with("000000010\n"));
        // Five more lines fill it, the next rotates again, replacing the older `.1`.
        assert_eq!(sink.write_lines(&lines(15, 10, 10)), 0);
        let rotated = fs::read_to_string(dir.path().join("service.log.1")).unwrap();
        assert!(rotated.starts_with("000000010\n"), "{rotated}");
    }

    #[test]
    fn a_line_larger_than_the_cap_gets_a_file_of_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("service.log");
        let mut sink = FileSink::new(path.clone(), 16);
        assert_eq!(sink.write_lines(&lines(0, 1, 8)), 0);
        assert_eq!(sink.write_lines(&lines(1, 1, 40)), 0);
        assert_eq!(fs::metadata(&path).unwrap().len(), 40);
        assert_eq!(sink.write_lines(&lines(2, 1, 8)), 0);
        assert_eq!(fs::metadata(&path).unwrap().len(), 8);
    }

    #[test]
    fn an_existing_file_counts_toward_the_cap_and_half_a_line_is_finished() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("service.log");
        fs::write(&path, "torn").unwrap();
        let mut sink = FileSink::new(path.clone(), 30);
        assert_eq!(sink.write_lines(&lines(0, 2, 10)), 0);
        assert_eq!(
            fs::read_to_string(&path).unwrap(),
            "torn\n000000000\n000000001\n"
        );
        assert_eq!(sink.write_lines(&lines(2, 1, 10)), 0);
        assert_eq!(fs::read_to_string(&path).unwrap(), "000000002\n");
    }

    #[test]
    fn failures_drop_lines_and_logging_recovers_when_the_folder_appears() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("later/service.log");
        let mut sink = FileSink::new(path.clone(), 1000).with_retry_after(Duration::ZERO);
        assert_eq!(sink.write_lines(&lines(0, 3, 10)), 3);
        fs::create_dir(dir.path().join("later")).unwrap();
        assert_eq!(sink.write_lines(&lines(3, 2, 10)), 0);
        assert_eq!(fs::read_to_string(&path).unwrap(), "000000003\n000000004\n");
    }

    #[test]
    fn during_the_back_off_lines_are_dropped_without_trying() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("later/service.log");
        let mut sink =
            FileSink::new(path.clone(), 1000).with_retry_after(Duration::from_secs(3600));
        assert_eq!(sink.write_lines(&lines(0, 1, 10)), 1);
        fs::create_dir(dir.path().join("later")).unwrap();
        assert_eq!(sink.write_lines(&lines(1, 2, 10)), 2);
        assert!(!path.exists(), "no attempt before the back-off has passed");
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_full_disk_drops_every_line_and_never_rotates() {
        // Writing to /dev/full fails with ENOSPC, like a full file system.
        let mut sink = FileSink::new("/dev/full".into(), 10).with_retry_after(Duration::ZERO);
        assert_eq!(sink.write_lines(&lines(0, 5, 10)), 5);
        assert_eq!(sink.write_lines(&lines(5, 5, 10)), 5);
        assert!(!std::path::Path::new("/dev/full.1").exists());
    }
}

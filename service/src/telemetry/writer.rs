//! The bounded, non-blocking log writer.
//!
//! 1. The subscriber formats an event into a [`Line`] (its `MakeWriter` is [`LogWriter`]);
//! 2. when the `Line` is dropped, the finished line is offered to a bounded channel with
//!    `try_send`: no lock held while writing, no I/O, no waiting. A full channel (or a writer
//!    thread gone) drops the line and counts it;
//! 3. one background thread takes every line waiting (up to [`MAX_BATCH_LINES`]) and hands them
//!    to the [`Sink`] in one call; the lines the sink could not write are counted as dropped.
//!    While lines keep coming it writes every [`BATCH_INTERVAL`]; idle, it waits for the next.
//!
//! [`LogWriter::flush`] waits, for a bounded time, until the lines accepted so far are handled.

use std::{
    fmt, io, mem,
    sync::{
        atomic::{AtomicU64, Ordering},
        mpsc::{self, Receiver, SyncSender, TrySendError},
        Arc, Condvar, Mutex, PoisonError,
    },
    thread,
    time::Duration,
};

use tracing_subscriber::fmt::MakeWriter;

use super::sink::Sink;

/// The most lines the writer thread hands to the sink in one call.
pub const MAX_BATCH_LINES: usize = 1024;
/// How long the writer thread lets lines gather after a write, while lines keep coming. The
/// delay a line may wait; at 30 000 lines/s, about 150 lines a write.
pub const BATCH_INTERVAL: Duration = Duration::from_millis(5);

/// The handle to the channel and the writer thread behind it; cheap to clone.
#[derive(Clone)]
pub struct LogWriter {
    tx: SyncSender<Vec<u8>>,
    shared: Arc<Shared>,
}

/// What the request threads, the writer thread and `flush` share.
#[derive(Default)]
struct Shared {
    /// Lines dropped: refused by a full channel, or not written by the sink.
    dropped: AtomicU64,
    /// Lines accepted into the channel.
    accepted: AtomicU64,
    /// Lines the writer thread is done with (written or dropped); `flush` waits on it.
    handled: Mutex<u64>,
    handled_changed: Condvar,
}

impl LogWriter {
    /// Starts the writer thread for `sink`, with room for `capacity` lines waiting.
    pub fn spawn(sink: Box<dyn Sink>, capacity: usize) -> io::Result<LogWriter> {
        let (tx, rx) = mpsc::sync_channel(capacity);
        let shared = Arc::new(Shared::default());
        let thread_shared = Arc::clone(&shared);
        thread::Builder::new()
            .name("log-writer".into())
            .spawn(move || write_lines(rx, sink, &thread_shared))?;
        Ok(LogWriter { tx, shared })
    }

    /// Lines dropped so far.
    pub fn dropped(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }

    /// Offers one finished line to the writer thread; never waits.
    pub fn offer(&self, line: Vec<u8>) {
        match self.tx.try_send(line) {
            Ok(()) => {
                self.shared.accepted.fetch_add(1, Ordering::Release);
            }
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.shared.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Waits until every line accepted before this call is written or dropped, at most
    /// `timeout`; returns whether it got there.
    pub fn flush(&self, timeout: Duration) -> bool {
        let target = self.shared.accepted.load(Ordering::Acquire);
        let handled = self
            .shared
            .handled
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let (handled, _) = self
            .shared
            .handled_changed
            .wait_timeout_while(handled, timeout, |handled| *handled < target)
            .unwrap_or_else(PoisonError::into_inner);
        *handled >= target
    }
}

impl fmt::Debug for LogWriter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LogWriter")
            .field("dropped", &self.dropped())
            .finish_non_exhaustive()
    }
}

impl<'a> MakeWriter<'a> for LogWriter {
    type Writer = Line<'a>;

    fn make_writer(&'a self) -> Line<'a> {
        Line {
            writer: self,
            buf: Vec::new(),
        }
    }
}

/// One event being formatted; offered to the channel, whole, when dropped. Writing to it never
/// fails.
#[derive(Debug)]
pub struct Line<'a> {
    writer: &'a LogWriter,
    buf: Vec<u8>,
}

impl io::Write for Line<'_> {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for Line<'_> {
    fn drop(&mut self) {
        if !self.buf.is_empty() {
            self.writer.offer(mem::take(&mut self.buf));
        }
    }
}

/// The writer thread, until every sender is gone: takes whatever is waiting and writes it; then,
/// if there was something, pauses [`BATCH_INTERVAL`] to let the next batch gather, and if there
/// was nothing, blocks until a line comes.
///
/// Blocking only when idle is what keeps a busy service cheap: while the thread pauses, a
/// sender's `try_send` is a few atomic operations; were the thread blocked in `recv`, every line
/// would cost a wake-up (a futex call and a context switch) on top of its write.
fn write_lines(rx: Receiver<Vec<u8>>, mut sink: Box<dyn Sink>, shared: &Shared) {
    let mut batch = Vec::with_capacity(MAX_BATCH_LINES);
    loop {
        while batch.len() < MAX_BATCH_LINES {
            match rx.try_recv() {
                Ok(line) => batch.push(line),
                Err(_) => break,
            }
        }
        if batch.is_empty() {
            match rx.recv() {
                Ok(line) => {
                    batch.push(line);
                    continue;
                }
                Err(_) => return,
            }
        }
        let failed = sink.write_lines(&batch);
        shared.dropped.fetch_add(failed as u64, Ordering::Relaxed);
        let mut handled = shared
            .handled
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        *handled += batch.len() as u64;
        drop(handled);
        shared.handled_changed.notify_all();
        let full = batch.len() == MAX_BATCH_LINES;
        batch.clear();
        if !full {
            thread::sleep(BATCH_INTERVAL);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{
        io::Write,
        sync::mpsc::{channel, Receiver, Sender},
        time::Instant,
    };

    use super::*;

    const WAIT: Duration = Duration::from_secs(10);

    /// A sink that reports each batch and waits for permission before taking the next one.
    struct GatedSink {
        got: Sender<Vec<Vec<u8>>>,
        permits: Receiver<()>,
    }

    impl Sink for GatedSink {
        fn write_lines(&mut self, lines: &[Vec<u8>]) -> usize {
            let _ = self.got.send(lines.to_vec());
            let _ = self.permits.recv();
            0
        }
    }

    /// A sink whose every write fails, as on a full disk.
    struct FullDisk;

    impl Sink for FullDisk {
        fn write_lines(&mut self, lines: &[Vec<u8>]) -> usize {
            lines.len()
        }
    }

    fn log(writer: &LogWriter, text: &str) {
        let mut line = writer.make_writer();
        // Formatting writes a line in pieces; the pieces make one line.
        line.write_all(text.as_bytes()).unwrap();
        line.write_all(b"\n").unwrap();
    }

    #[test]
    fn a_full_channel_drops_and_counts_lines_without_blocking() {
        let (got_tx, got) = channel();
        let (permit, permits) = channel();
        let writer = LogWriter::spawn(
            Box::new(GatedSink {
                got: got_tx,
                permits,
            }),
            2,
        )
        .unwrap();
        // The writer thread takes the first line and blocks in the sink, as on a stuck disk.
        log(&writer, "first");
        assert_eq!(got.recv_timeout(WAIT).unwrap(), vec![b"first\n".to_vec()]);

        // 100 more lines from another thread: 2 fit in the channel, 98 are dropped; none waits.
        let (done_tx, done) = channel();
        let sender = writer.clone();
        thread::spawn(move || {
            let start = Instant::now();
            for i in 0..100 {
                log(&sender, &format!("line {i}"));
            }
            let _ = done_tx.send(start.elapsed());
        });
        let took = done
            .recv_timeout(WAIT)
            .expect("logging to a full channel returned");
        assert!(took < Duration::from_secs(1), "100 lines took {took:?}");
        assert_eq!(writer.dropped(), 98);

        // Unstuck, the sink gets the two that waited, and nothing is lost twice.
        permit.send(()).unwrap();
        assert_eq!(
            got.recv_timeout(WAIT).unwrap(),
            vec![b"line 0\n".to_vec(), b"line 1\n".to_vec()]
        );
        permit.send(()).unwrap();
        assert!(writer.flush(WAIT), "every accepted line handled");
        assert_eq!(writer.dropped(), 98);
    }

    #[test]
    fn lines_the_sink_cannot_write_are_counted() {
        let writer = LogWriter::spawn(Box::new(FullDisk), 16).unwrap();
        for i in 0..10 {
            log(&writer, &format!("line {i}"));
            // Flushing each time keeps the channel from ever filling: every drop is the sink's.
            assert!(writer.flush(WAIT));
        }
        assert_eq!(writer.dropped(), 10);
    }

    #[test]
    fn an_empty_event_sends_nothing_and_flush_returns_at_once() {
        let writer = LogWriter::spawn(Box::new(FullDisk), 4).unwrap();
        drop(writer.make_writer());
        assert!(writer.flush(Duration::ZERO));
        assert_eq!(writer.dropped(), 0);
    }
}

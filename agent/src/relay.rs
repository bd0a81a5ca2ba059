//! TCP connections from inside the balancer's container, relayed over stdin and stdout.
//!
//! The swarm runtime reaches each replica of a color this way, for its gates and `status`:
//! replicas have no published ports (several share a node, and a direct port would bypass the
//! balancer), but the balancer's container is on every color's network.
//!
//! ## `mldeploy-agent mux`: every connection of one command over one pipe
//!
//! One `docker exec -i` costs 100–600 ms on a busy engine and a switch's gates open three
//! connections per replica, so the deploy tool runs one `mux` per command and sends all its
//! connections through it as frames, both ways:
//!
//! ```text
//! [u32 BE connection id][u8 kind][u32 BE payload length][payload]
//! ```
//!
//! - `OPEN` (1), tool → agent: payload `host:port`; the agent connects to the first of its
//!   addresses that accepts within 2 s (each address in turn), or answers `CLOSE`;
//! - `DATA` (2), both ways: bytes of the connection, in order (at most [`MAX_PAYLOAD`]);
//! - `EOF` (3), both ways: the sender sends no more `DATA` for the id; the agent shuts the
//!   socket's write half, the tool the local client's;
//! - `CLOSE` (4), both ways: the connection ends in both directions and the sender forgets the
//!   id; payload: why, as text (empty after a normal end). The tool sends it once both
//!   directions saw `EOF`, or on a local error; the agent on a failed connect or socket error.
//!
//! Ids are the tool's, never reused within a session. Frames for an id that is not open are
//! ignored: they crossed a `CLOSE` on the way. There is no flow control: a connection's bytes
//! wait in memory until its socket takes them, so one slow socket never stalls the others (the
//! gates' requests and answers are small). When stdin ends, every connection is shut and `mux`
//! returns.
//!
//! ## `mldeploy-agent connect <host:port>`: one connection, raw bytes
//!
//! The relay before `mux` (one exec per connection), kept for trying a replica by hand. Bytes
//! from stdin go to the connection, and its end of input shuts the connection's write half;
//! bytes from the connection go to stdout, flushed as they arrive, and the process exits when
//! the peer closes.
//!
//! This module is the agent crate's library, `std` only: the deploy tool's side of the frames
//! (`xtask/src/runtime/swarm/forward.rs`) uses its codec, and its tests run [`mux`] in process.

use std::{
    collections::HashMap,
    io::{self, Read, Write},
    net::{Shutdown, TcpStream, ToSocketAddrs},
    sync::{mpsc, Arc, Mutex, MutexGuard, PoisonError},
    thread,
    time::Duration,
};

/// How long connecting to one resolved address may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// The most bytes one `DATA` frame carries from a socket.
const CHUNK: usize = 32 * 1024;
/// The longest payload a frame may declare; a longer one means the input is not frames.
pub const MAX_PAYLOAD: usize = 1 << 20;
/// Id, kind and length.
const HEADER: usize = 9;

/// What a frame says (the byte after the id).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Open = 1,
    Data = 2,
    Eof = 3,
    Close = 4,
}

impl Kind {
    fn from_byte(byte: u8) -> Option<Kind> {
        Some(match byte {
            1 => Kind::Open,
            2 => Kind::Data,
            3 => Kind::Eof,
            4 => Kind::Close,
            _ => return None,
        })
    }
}

/// One decoded frame.
#[derive(Debug, PartialEq, Eq)]
pub struct Frame {
    pub id: u32,
    pub kind: Kind,
    pub payload: Vec<u8>,
}

/// Writes one frame with a single `write_all`, then flushes, so that frames from several
/// threads never interleave under the caller's lock and none waits in a buffer.
pub fn write_frame(
    out: &mut (impl Write + ?Sized),
    id: u32,
    kind: Kind,
    payload: &[u8],
) -> io::Result<()> {
    let len = u32::try_from(payload.len())
        .ok()
        .filter(|_| payload.len() <= MAX_PAYLOAD)
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("a frame of {} bytes (at most {MAX_PAYLOAD})", payload.len()),
            )
        })?;
    let mut frame = Vec::with_capacity(HEADER + payload.len());
    frame.extend_from_slice(&id.to_be_bytes());
    frame.push(kind as u8);
    frame.extend_from_slice(&len.to_be_bytes());
    frame.extend_from_slice(payload);
    out.write_all(&frame)?;
    out.flush()
}

/// Reads one frame, however the input splits it; `None` when the input ends between frames.
/// An input that ends inside a frame, an unknown kind or an oversized length is an error.
pub fn read_frame(input: &mut impl Read) -> io::Result<Option<Frame>> {
    let mut header = [0u8; HEADER];
    let mut filled = 0;
    while filled < HEADER {
        match input.read(&mut header[filled..]) {
            Ok(0) if filled == 0 => return Ok(None),
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the input ended inside a frame's header",
                ))
            }
            Ok(n) => filled += n,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => return Err(err),
        }
    }
    let [a, b, c, d, kind, e, f, g, h] = header;
    let id = u32::from_be_bytes([a, b, c, d]);
    let kind = Kind::from_byte(kind).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("frame kind {kind} is none of OPEN, DATA, EOF, CLOSE"),
        )
    })?;
    let len = u32::from_be_bytes([e, f, g, h]) as usize;
    if len > MAX_PAYLOAD {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("a frame of {len} bytes (at most {MAX_PAYLOAD})"),
        ));
    }
    let mut payload = vec![0u8; len];
    input.read_exact(&mut payload).map_err(|err| {
        if err.kind() == io::ErrorKind::UnexpectedEof {
            io::Error::new(err.kind(), "the input ended inside a frame's payload")
        } else {
            err
        }
    })?;
    Ok(Some(Frame { id, kind, payload }))
}

/// What the input loop hands one connection's thread, in order.
enum ToPeer {
    Data(Vec<u8>),
    Eof,
}

/// A `mux` session's shared state: the output and the open connections.
struct Mux {
    out: Mutex<Box<dyn Write + Send>>,
    /// Each open connection's channel to its thread; dropping it ends the connection.
    conns: Mutex<HashMap<u32, mpsc::Sender<ToPeer>>>,
}

/// Locks `mutex`, also after a thread panicked holding it (the data stays consistent: every
/// critical section is a single insert, remove or frame write).
fn lock<T: ?Sized>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Relays connections as frames: reads frames from `input` until it ends, writes frames to
/// `output` (see the module's documentation). Returns when `input` ends, after closing every
/// connection's channel (each thread then shuts its socket); a malformed input is an error.
pub fn mux(mut input: impl Read, output: impl Write + Send + 'static) -> io::Result<()> {
    let mux = Arc::new(Mux {
        out: Mutex::new(Box::new(output)),
        conns: Mutex::default(),
    });
    let result = loop {
        let frame = match read_frame(&mut input) {
            Ok(Some(frame)) => frame,
            Ok(None) => break Ok(()),
            Err(err) => break Err(err),
        };
        match frame.kind {
            Kind::Open => mux.open(frame.id, &String::from_utf8_lossy(&frame.payload)),
            Kind::Data => mux.deliver(frame.id, ToPeer::Data(frame.payload)),
            Kind::Eof => mux.deliver(frame.id, ToPeer::Eof),
            Kind::Close => drop(lock(&mux.conns).remove(&frame.id)),
        }
    };
    lock(&mux.conns).clear();
    result
}

impl Mux {
    /// Starts connection `id` to `target` on a thread of its own (connecting may take
    /// seconds); frames for it wait in its channel meanwhile. An `OPEN` for an id that is
    /// open replaces (ends) that connection.
    fn open(self: &Arc<Self>, id: u32, target: &str) {
        let (tx, rx) = mpsc::channel();
        lock(&self.conns).insert(id, tx);
        let (mux, target) = (self.clone(), target.to_owned());
        let started = thread::Builder::new()
            .name(format!("relay {id}"))
            .spawn(move || mux.run(id, &target, rx));
        if let Err(err) = started {
            self.close(id, &format!("start a thread: {err}"));
        }
    }

    /// Hands `message` to connection `id`'s thread, if it is open.
    fn deliver(&self, id: u32, message: ToPeer) {
        let mut conns = lock(&self.conns);
        if let Some(tx) = conns.get(&id) {
            if tx.send(message).is_err() {
                conns.remove(&id);
            }
        }
    }

    /// Writes one frame; `false` when the output is gone.
    fn send(&self, id: u32, kind: Kind, payload: &[u8]) -> bool {
        write_frame(&mut *lock(&self.out), id, kind, payload).is_ok()
    }

    /// Ends connection `id` from this side, unless the tool ended it first: tells the tool why
    /// and forgets the id (the connection's thread sees its channel close).
    fn close(&self, id: u32, why: &str) {
        if lock(&self.conns).remove(&id).is_some() {
            self.send(id, Kind::Close, why.as_bytes());
        }
    }

    /// One connection: connects, starts the socket → frames pump, then writes what arrives for
    /// the id to the socket until its channel closes.
    fn run(self: Arc<Self>, id: u32, target: &str, rx: mpsc::Receiver<ToPeer>) {
        let mut stream = match open(target) {
            Ok(stream) => stream,
            Err(err) => return self.close(id, &format!("connect to {target}: {err}")),
        };
        let _ = stream.set_nodelay(true);
        let pump = stream.try_clone().and_then(|reader| {
            let (mux, target) = (self.clone(), target.to_owned());
            thread::Builder::new()
                .name(format!("relay {id} in"))
                .spawn(move || mux.pump(id, &target, reader))
        });
        if let Err(err) = pump {
            return self.close(id, &format!("relay {target}: {err}"));
        }
        while let Ok(message) = rx.recv() {
            match message {
                ToPeer::Data(bytes) => {
                    if let Err(err) = stream.write_all(&bytes) {
                        self.close(id, &format!("send to {target}: {err}"));
                        break;
                    }
                }
                ToPeer::Eof => {
                    let _ = stream.shutdown(Shutdown::Write);
                }
            }
        }
        // Closed by either side, or the input ended: the pump's read returns and it ends too.
        let _ = stream.shutdown(Shutdown::Both);
    }

    /// Socket → frames for connection `id`, until the peer closes (`EOF`) or fails (`CLOSE`).
    fn pump(&self, id: u32, target: &str, mut stream: TcpStream) {
        let mut buf = vec![0u8; CHUNK];
        loop {
            match stream.read(&mut buf) {
                Ok(0) => {
                    if lock(&self.conns).contains_key(&id) {
                        self.send(id, Kind::Eof, &[]);
                    }
                    return;
                }
                Ok(n) => {
                    if !self.send(id, Kind::Data, &buf[..n]) {
                        return;
                    }
                }
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) => {
                    self.close(id, &format!("receive from {target}: {err}"));
                    let _ = stream.shutdown(Shutdown::Both);
                    return;
                }
            }
        }
    }
}

/// Connects to `target` (the first of its addresses that accepts) and relays until the peer
/// closes the connection.
pub fn connect(target: &str) -> io::Result<()> {
    let stream = open(target)?;
    let _ = stream.set_nodelay(true);
    let mut upstream = stream.try_clone()?;
    thread::spawn(move || {
        let _ = io::copy(&mut io::stdin().lock(), &mut upstream);
        let _ = upstream.shutdown(Shutdown::Write);
    });
    let mut downstream = stream;
    let mut out = io::stdout().lock();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match downstream.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            Err(err) => return Err(err),
        };
        out.write_all(&buf[..n])?;
        out.flush()?;
    }
}

/// Connects to the first of `target`'s addresses that accepts within [`CONNECT_TIMEOUT`].
fn open(target: &str) -> io::Result<TcpStream> {
    let mut last = None;
    for addr in target.to_socket_addrs()? {
        match TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT) {
            Ok(stream) => return Ok(stream),
            Err(err) => last = Some(io::Error::new(err.kind(), format!("{addr}: {err}"))),
        }
    }
    Err(last.unwrap_or_else(|| {
        io::Error::new(io::ErrorKind::NotFound, format!("{target} has no address"))
    }))
}

/// What the tests of both sides of the frames share: inputs split every way, a closed port,
/// an echo server. Not for the agent's own use.
#[doc(hidden)]
pub mod test_support {
    use std::{
        io::{self, Read},
        net::{Shutdown, TcpListener},
        thread,
    };

    /// Hands out one byte per read, and an `Interrupted` before each: every split a pipe could
    /// make.
    pub struct Trickle<R> {
        inner: R,
        interrupt: bool,
    }

    pub fn trickle<R: Read>(inner: R) -> Trickle<R> {
        Trickle {
            inner,
            interrupt: false,
        }
    }

    impl<R: Read> Read for Trickle<R> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            self.interrupt = !self.interrupt;
            if self.interrupt {
                return Err(io::ErrorKind::Interrupted.into());
            }
            let end = buf.len().min(1);
            self.inner.read(&mut buf[..end])
        }
    }

    /// A port nothing listens on.
    pub fn closed_port() -> String {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().to_string()
    }

    /// A server that sends back what it receives and shuts its write half at the end of input.
    pub fn echo_server() -> String {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                thread::spawn(move || {
                    let mut reader = conn.try_clone().unwrap();
                    let mut writer = conn;
                    let _ = io::copy(&mut reader, &mut writer);
                    let _ = writer.shutdown(Shutdown::Write);
                });
            }
        });
        addr
    }
}

#[cfg(test)]
mod tests {
    use std::net::TcpListener;

    use super::{test_support::*, *};

    #[test]
    fn an_unresolvable_target_says_so() {
        let err = open("no-such-host.invalid:80").unwrap_err();
        assert!(!err.to_string().is_empty());
    }

    #[test]
    fn a_closed_port_names_the_address() {
        let addr = closed_port();
        let err = open(&addr).unwrap_err();
        assert!(err.to_string().contains(&addr), "{err}");
    }

    fn encode(frames: &[(u32, Kind, &[u8])]) -> Vec<u8> {
        let mut bytes = Vec::new();
        for &(id, kind, payload) in frames {
            write_frame(&mut bytes, id, kind, payload).unwrap();
        }
        bytes
    }

    #[test]
    fn frames_round_trip_through_byte_at_a_time_reads() {
        let big = vec![7u8; MAX_PAYLOAD];
        let sent: [(u32, Kind, &[u8]); 5] = [
            (1, Kind::Open, b"blue:8000"),
            (1, Kind::Data, b"GET / HTTP/1.1\r\n\r\n"),
            (u32::MAX, Kind::Data, &big),
            (1, Kind::Eof, b""),
            (1, Kind::Close, b"connection refused"),
        ];
        let bytes = encode(&sent);
        assert_eq!(&bytes[..9], &[0, 0, 0, 1, 1, 0, 0, 0, 9]);
        let mut input = trickle(bytes.as_slice());
        for (id, kind, payload) in sent {
            let frame = read_frame(&mut input).unwrap().unwrap();
            assert_eq!((frame.id, frame.kind), (id, kind));
            assert_eq!(frame.payload, payload);
        }
        assert_eq!(read_frame(&mut input).unwrap(), None);
    }

    #[test]
    fn a_truncated_or_foreign_stream_is_an_error() {
        let bytes = encode(&[(3, Kind::Data, b"hello")]);
        for cut in [4, bytes.len() - 1] {
            let err = read_frame(&mut &bytes[..cut]).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof, "cut at {cut}");
        }
        let err = read_frame(&mut &[0, 0, 0, 1, 9, 0, 0, 0, 0][..]).unwrap_err();
        assert!(err.to_string().contains("kind 9"), "{err}");
        let err = read_frame(&mut &[0, 0, 0, 1, 2, 255, 0, 0, 0][..]).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        let err = write_frame(&mut Vec::new(), 1, Kind::Data, &vec![0; MAX_PAYLOAD + 1]);
        assert_eq!(err.unwrap_err().kind(), io::ErrorKind::InvalidInput);
    }

    /// `mux` on a thread, fed and read through pipes: (its input, its output, its result).
    fn start_mux() -> (
        io::PipeWriter,
        io::PipeReader,
        thread::JoinHandle<io::Result<()>>,
    ) {
        let (input, to_mux) = io::pipe().unwrap();
        let (from_mux, output) = io::pipe().unwrap();
        let running = thread::spawn(move || mux(input, output));
        (to_mux, from_mux, running)
    }

    /// Reads frames until connection `id`'s `EOF` or `CLOSE`: (its data, the last frame).
    fn collect(output: &mut impl Read, id: u32) -> (Vec<u8>, Frame) {
        let mut data = Vec::new();
        loop {
            let frame = read_frame(output).unwrap().expect("the output ended");
            assert_eq!(frame.id, id);
            match frame.kind {
                Kind::Data => data.extend_from_slice(&frame.payload),
                _ => return (data, frame),
            }
        }
    }

    #[test]
    fn mux_relays_a_connection_and_its_half_closes() {
        let echo = echo_server();
        let (mut input, mut output, running) = start_mux();
        let message: Vec<u8> = (0..100_000u32).map(|i| i as u8).collect();
        write_frame(&mut input, 1, Kind::Open, echo.as_bytes()).unwrap();
        for chunk in message.chunks(10_000) {
            write_frame(&mut input, 1, Kind::Data, chunk).unwrap();
        }
        write_frame(&mut input, 1, Kind::Eof, b"").unwrap();
        // The echo answers everything, then its end of input: both halves closed in order.
        let (data, last) = collect(&mut output, 1);
        assert_eq!(data, message);
        assert_eq!(last.kind, Kind::Eof);
        write_frame(&mut input, 1, Kind::Close, b"").unwrap();
        drop(input);
        running.join().unwrap().unwrap();
    }

    #[test]
    fn mux_reports_a_refused_connection_and_keeps_the_others() {
        let (echo, refused) = (echo_server(), closed_port());
        let (mut input, mut output, running) = start_mux();
        write_frame(&mut input, 1, Kind::Open, refused.as_bytes()).unwrap();
        let (data, last) = collect(&mut output, 1);
        assert!(data.is_empty());
        assert_eq!(last.kind, Kind::Close);
        let why = String::from_utf8(last.payload).unwrap();
        assert!(why.contains(&refused), "{why}");
        // Frames for the closed id are ignored; the session goes on.
        write_frame(&mut input, 1, Kind::Data, b"lost").unwrap();
        write_frame(&mut input, 2, Kind::Open, echo.as_bytes()).unwrap();
        write_frame(&mut input, 2, Kind::Data, b"ping").unwrap();
        write_frame(&mut input, 2, Kind::Eof, b"").unwrap();
        let (data, last) = collect(&mut output, 2);
        assert_eq!((data.as_slice(), last.kind), (&b"ping"[..], Kind::Eof));
        drop(input);
        running.join().unwrap().unwrap();
    }

    #[test]
    fn mux_closes_its_connections_when_its_input_ends() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let (mut input, _output, running) = start_mux();
        write_frame(&mut input, 1, Kind::Open, addr.as_bytes()).unwrap();
        let (mut server, _) = listener.accept().unwrap();
        drop(input);
        running.join().unwrap().unwrap();
        // The connection's thread shuts the socket: the server reads the end of it.
        let mut rest = Vec::new();
        server.read_to_end(&mut rest).unwrap();
        assert!(rest.is_empty());
    }

    #[test]
    fn mux_fails_on_input_that_is_not_frames() {
        let (mut input, _output, running) = start_mux();
        input.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
        drop(input);
        assert!(running.join().unwrap().is_err());
    }
}

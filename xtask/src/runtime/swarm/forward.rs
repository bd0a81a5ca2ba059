//! Local ports that reach addresses on the swarm's color networks, through the balancer's
//! container: every connection accepted by any of one command's ports travels, as frames, over
//! one `docker exec -i <balancer> mldeploy-agent mux` (the agent's `relay`).
//!
//! Why: the gates must reach every replica on its own, and replicas publish no ports (several
//! share a node, and a direct port would let clients bypass the balancer). The balancer's
//! container is on every color's network, and `docker exec` reaches it wherever the engine is
//! (a local socket, or the SSH tunnel's). An exec costs 100–600 ms on a busy engine and a
//! switch's gates open three connections per replica, so the exec starts at the first accepted
//! connection ([`Mux`]) and carries all later ones: a connection then costs one `OPEN` frame.
//! When the exec dies, its connections are shut and the next connection starts another.
//!
//! The frames (the agent's module documentation has the full rules):
//! `[u32 BE connection id][u8 kind][u32 BE payload length][payload]`, kinds `OPEN` (1, payload
//! `host:port`), `DATA` (2), `EOF` (3, the sender's write half is done) and `CLOSE` (4, both
//! directions end; payload: why). Each accepted connection gets a fresh id, an `OPEN`, a pump
//! (socket → `DATA`, then `EOF`) and a writer thread (frames → socket) fed by the session's
//! dispatcher, the one reader of the exec's output. It ends with a `CLOSE` once both directions
//! saw `EOF`, or at the first error either side reports.

use std::{
    collections::HashMap,
    io::{self, BufReader, Read, Write},
    net::{Shutdown, TcpListener, TcpStream},
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicU32, AtomicU8, Ordering},
        mpsc, Arc, Mutex, MutexGuard, PoisonError,
    },
    thread,
};

use anyhow::{bail, Context, Result};
use mldeploy_agent::relay::{read_frame, write_frame, Frame, Kind};

/// The most bytes one `DATA` frame carries from a local socket.
const CHUNK: usize = 32 * 1024;

/// Locks `mutex`, also after a thread panicked holding it (every critical section is a single
/// insert, remove or frame write, so the data stays consistent).
fn lock<T: ?Sized>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Finds the balancer's running container (its id), per session: a balancer restarted during
/// the command is found again.
pub type Locate = Arc<dyn Fn() -> Result<String> + Send + Sync>;

/// A started agent `mux`: its input, its output, and the process to reap when it ends.
struct Pipe {
    input: Box<dyn Write + Send>,
    output: Box<dyn Read + Send>,
    child: Option<Child>,
}

/// The relay shared by one command's ports: at most one live agent session, started by the
/// first connection that needs it.
pub struct Mux {
    /// Starts a session: `docker exec`, or in tests the agent's loop on a thread.
    launch: Box<dyn Fn() -> Result<Pipe> + Send + Sync>,
    current: Mutex<Option<Arc<Session>>>,
    /// Connection ids, never reused within the process (so within any session).
    next_id: AtomicU32,
}

impl Mux {
    fn new(launch: impl Fn() -> Result<Pipe> + Send + Sync + 'static) -> Mux {
        Mux {
            launch: Box::new(launch),
            current: Mutex::default(),
            next_id: AtomicU32::new(1),
        }
    }

    /// A relay whose sessions are `docker exec --interactive <container> <agent> mux`, in the
    /// container `locate` finds. `docker` inherits this process's environment (`DOCKER_HOST`,
    /// which the tool may have pointed at its SSH tunnel).
    pub fn docker_exec(locate: Locate, agent: String) -> Mux {
        Mux::new(move || {
            let container = locate()?;
            let mut child = Command::new("docker")
                .args(["exec", "--interactive", &container, &agent, "mux"])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .context("run `docker exec` for the relay through the balancer's container")?;
            let input = child.stdin.take().context("the relay's input")?;
            let output = child.stdout.take().context("the relay's output")?;
            Ok(Pipe {
                input: Box::new(input),
                output: Box::new(output),
                child: Some(child),
            })
        })
    }

    /// The live session, or a new one (whose dispatcher starts reading its output).
    fn session(&self) -> Result<Arc<Session>> {
        // Held while launching: connections accepted meanwhile wait for this session.
        let mut current = lock(&self.current);
        if let Some(session) = current.as_ref().filter(|s| s.alive()) {
            return Ok(session.clone());
        }
        let pipe = (self.launch)()?;
        let session = Arc::new(Session {
            input: Mutex::new(pipe.input),
            conns: Mutex::new(Some(HashMap::new())),
        });
        let dispatcher = session.clone();
        thread::Builder::new()
            .name("relay dispatcher".to_owned())
            .spawn(move || dispatcher.dispatch(pipe.output, pipe.child))
            .context("start the relay's dispatcher")?;
        *current = Some(session.clone());
        Ok(session)
    }

    /// Opens a connection to `target`: registers `tx` for what arrives for it and sends `OPEN`.
    /// A session found dead on the way is replaced once.
    fn open(&self, target: &str, tx: mpsc::Sender<ToClient>) -> Result<Link> {
        for _ in 0..2 {
            let session = self.session()?;
            let id = self.next_id.fetch_add(1, Ordering::Relaxed);
            if session.register(id, tx.clone()) && session.send(id, Kind::Open, target.as_bytes()) {
                let halves = AtomicU8::new(0);
                return Ok(Link {
                    session,
                    id,
                    halves,
                });
            }
        }
        bail!("the relay through the balancer's container ended as it started")
    }
}

/// What the dispatcher hands one connection's writer, in order; the channel closing (either
/// side's `CLOSE`, or a dead session) ends the connection.
enum ToClient {
    Data(Vec<u8>),
    Eof,
}

/// One agent session: its input, and the connections open in it.
struct Session {
    input: Mutex<Box<dyn Write + Send>>,
    /// Each open connection's channel to its writer; `None` once the session is dead.
    conns: Mutex<Option<HashMap<u32, mpsc::Sender<ToClient>>>>,
}

impl Session {
    fn alive(&self) -> bool {
        lock(&self.conns).is_some()
    }

    /// Adds connection `id`; `false` when the session is dead.
    fn register(&self, id: u32, tx: mpsc::Sender<ToClient>) -> bool {
        let mut conns = lock(&self.conns);
        conns.as_mut().map(|conns| conns.insert(id, tx)).is_some()
    }

    /// Sends one frame for connection `id`; `false` when it is closed or the session died
    /// (a failed write kills the session: its input is gone).
    fn send(&self, id: u32, kind: Kind, payload: &[u8]) -> bool {
        let open = lock(&self.conns)
            .as_ref()
            .is_some_and(|c| c.contains_key(&id));
        open && self.write(id, kind, payload)
    }

    /// Ends connection `id` from this side unless it is closed already: forgets it (its writer
    /// sees its channel close and shuts the socket) and tells the agent why.
    fn close(&self, id: u32, why: &str) {
        let open = lock(&self.conns).as_mut().and_then(|c| c.remove(&id));
        if open.is_some() {
            self.write(id, Kind::Close, why.as_bytes());
        }
    }

    fn write(&self, id: u32, kind: Kind, payload: &[u8]) -> bool {
        let written = write_frame(&mut **lock(&self.input), id, kind, payload).is_ok();
        if !written {
            self.fail();
        }
        written
    }

    /// Marks the session dead and ends all its connections.
    fn fail(&self) {
        drop(lock(&self.conns).take());
    }

    /// Reads the agent's frames until its output ends, handing each to its connection; then
    /// fails the session and reaps the exec (killed first unless its output ended cleanly).
    fn dispatch(&self, output: Box<dyn Read + Send>, child: Option<Child>) {
        let mut output = BufReader::with_capacity(64 * 1024, output);
        let clean_end = loop {
            let Frame { id, kind, payload } = match read_frame(&mut output) {
                Ok(Some(frame)) => frame,
                Ok(None) => break true,
                Err(_) => break false,
            };
            let mut conns = lock(&self.conns);
            let Some(conns) = conns.as_mut() else {
                break false; // A write to the exec failed.
            };
            let message = match kind {
                Kind::Data => ToClient::Data(payload),
                Kind::Eof => ToClient::Eof,
                Kind::Close => {
                    conns.remove(&id);
                    continue;
                }
                Kind::Open => continue, // Only the tool opens connections.
            };
            if conns.get(&id).is_some_and(|tx| tx.send(message).is_err()) {
                conns.remove(&id);
            }
        };
        self.fail();
        if let Some(mut child) = child {
            if !clean_end {
                let _ = child.kill();
            }
            let _ = child.wait();
        }
    }
}

/// One connection's place in its session, shared by its pump and its writer.
struct Link {
    session: Arc<Session>,
    id: u32,
    /// Directions that saw `EOF`; the second one closes the connection.
    halves: AtomicU8,
}

impl Link {
    fn half_done(&self) {
        if self.halves.fetch_add(1, Ordering::AcqRel) == 1 {
            self.session.close(self.id, "");
        }
    }

    fn close(&self, why: String) {
        self.session.close(self.id, &why);
    }
}

/// Relays one accepted connection: `OPEN`, then the pump here and the writer on a thread. A
/// connection the relay cannot carry is shut at once (its client sees the connection closed).
fn relay(mux: &Mux, client: TcpStream, target: &str) {
    let _ = client.set_nodelay(true);
    let (tx, rx) = mpsc::channel();
    let Ok(link) = mux.open(target, tx).map(Arc::new) else {
        let _ = client.shutdown(Shutdown::Both);
        return;
    };
    let writer = client.try_clone().and_then(|socket| {
        let link = link.clone();
        thread::Builder::new()
            .name(format!("relay {} out", link.id))
            .spawn(move || write_to_client(rx, socket, &link))
    });
    match writer {
        Ok(_) => pump(client, &link),
        Err(err) => {
            link.close(format!("relay the local connection: {err}"));
            let _ = client.shutdown(Shutdown::Both);
        }
    }
}

/// Local socket → frames, until the client's write half ends (`EOF`) or fails (`CLOSE`).
fn pump(mut client: TcpStream, link: &Link) {
    let mut buf = vec![0u8; CHUNK];
    loop {
        match client.read(&mut buf) {
            Ok(0) => {
                link.session.send(link.id, Kind::Eof, &[]);
                return link.half_done();
            }
            Ok(n) => {
                if !link.session.send(link.id, Kind::Data, &buf[..n]) {
                    break; // Closed meanwhile.
                }
            }
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => {
                link.close(format!("receive from the local client: {err}"));
                break;
            }
        }
    }
    let _ = client.shutdown(Shutdown::Both);
}

/// Frames → local socket, until the connection's channel closes; then shuts the socket (and
/// so the pump's read returns).
fn write_to_client(rx: mpsc::Receiver<ToClient>, mut socket: TcpStream, link: &Link) {
    while let Ok(message) = rx.recv() {
        match message {
            ToClient::Data(bytes) => {
                if let Err(err) = socket.write_all(&bytes) {
                    link.close(format!("send to the local client: {err}"));
                    break;
                }
            }
            ToClient::Eof => {
                let _ = socket.shutdown(Shutdown::Write);
                link.half_done();
            }
        }
    }
    let _ = socket.shutdown(Shutdown::Both);
}

/// One command's local ports by target, all relaying through one [`Mux`].
#[derive(Default)]
pub struct Forwards {
    mux: Option<Arc<Mux>>,
    ports: HashMap<String, u16>,
}

impl Forwards {
    /// The local port that reaches `target` (`host:port` as the balancer's container resolves
    /// it): listens on `127.0.0.1:<free port>` at the first ask, its thread living as long as
    /// the process (one command). `mux` makes the command's relay at the first ask of all; it
    /// starts no exec before a connection needs one.
    pub fn port(&mut self, target: &str, mux: impl FnOnce() -> Mux) -> Result<u16> {
        if let Some(&port) = self.ports.get(target) {
            return Ok(port);
        }
        let mux = self.mux.get_or_insert_with(|| Arc::new(mux())).clone();
        let listener = TcpListener::bind("127.0.0.1:0").context("listen on a local port")?;
        let port = listener.local_addr()?.port();
        let name = target.to_owned();
        thread::Builder::new()
            .name(format!("forward {target}"))
            .spawn(move || {
                for client in listener.incoming().flatten() {
                    let (mux, target) = (mux.clone(), name.clone());
                    thread::spawn(move || relay(&mux, client, &target));
                }
            })
            .context("start a local relay")?;
        self.ports.insert(target.to_owned(), port);
        Ok(port)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use mldeploy_agent::relay::{
        mux,
        test_support::{closed_port, echo_server},
    };

    use super::*;

    /// A session whose agent side is `agent` on a thread, over pipes.
    fn pipe_to(
        agent: impl FnOnce(io::PipeReader, io::PipeWriter) + Send + 'static,
    ) -> Result<Pipe> {
        let (input, to_agent) = io::pipe()?;
        let (from_agent, output) = io::pipe()?;
        thread::spawn(move || agent(input, output));
        let (input, output) = (Box::new(to_agent), Box::new(from_agent));
        Ok(Pipe {
            input,
            output,
            child: None,
        })
    }

    /// A relay whose sessions run the agent's `mux` on a thread, counted in `launches`.
    fn in_process(launches: Arc<AtomicUsize>) -> Mux {
        Mux::new(move || {
            launches.fetch_add(1, Ordering::SeqCst);
            pipe_to(|input, output| drop(mux(input, output)))
        })
    }

    /// Sends `message` through local port `port` (from a thread), shuts the write half, and
    /// reads the answer to its end.
    fn exchange(port: u16, message: Vec<u8>) -> Vec<u8> {
        let mut conn = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let mut writer = conn.try_clone().unwrap();
        let sending = thread::spawn(move || {
            writer.write_all(&message).unwrap();
            writer.shutdown(Shutdown::Write).unwrap();
        });
        let mut answer = Vec::new();
        conn.read_to_end(&mut answer).unwrap();
        sending.join().unwrap();
        answer
    }

    #[test]
    fn connections_of_every_port_share_one_session() {
        let (a, b) = (echo_server(), echo_server());
        let launches: Arc<AtomicUsize> = Arc::default();
        let mut forwards = Forwards::default();
        let to_a = forwards.port(&a, || in_process(launches.clone())).unwrap();
        let to_b = forwards
            .port(&b, || unreachable!("one relay per command"))
            .unwrap();
        assert_eq!(forwards.port(&a, || unreachable!()).unwrap(), to_a);
        assert_eq!(
            launches.load(Ordering::SeqCst),
            0,
            "no exec before a connection"
        );
        let big: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let exchanges: Vec<_> = [(to_a, big), (to_b, b"ping".to_vec()), (to_a, Vec::new())]
            .into_iter()
            .map(|(port, message)| {
                thread::spawn(move || (exchange(port, message.clone()), message))
            })
            .collect();
        for exchange in exchanges {
            let (answer, message) = exchange.join().unwrap();
            assert_eq!(answer, message);
        }
        assert_eq!(launches.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn a_refused_target_shuts_its_local_connection_only() {
        let launches: Arc<AtomicUsize> = Arc::default();
        let mut forwards = Forwards::default();
        let refused = forwards.port(&closed_port(), || in_process(launches.clone()));
        let mut conn = TcpStream::connect(("127.0.0.1", refused.unwrap())).unwrap();
        let mut answer = Vec::new();
        conn.read_to_end(&mut answer).unwrap();
        assert!(answer.is_empty());
        let port = forwards.port(&echo_server(), || unreachable!()).unwrap();
        assert_eq!(exchange(port, b"still there".to_vec()), b"still there");
        assert_eq!(launches.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn a_dead_session_fails_its_connections_and_the_next_starts_another() {
        let launches: Arc<AtomicUsize> = Arc::default();
        let counted = launches.clone();
        let mux = Mux::new(move || match counted.fetch_add(1, Ordering::SeqCst) {
            // The first session's agent takes the `OPEN`, then dies (its pipes close).
            0 => pipe_to(|mut input, _output| {
                let kind = read_frame(&mut input).unwrap().unwrap().kind;
                assert_eq!(kind, Kind::Open);
            }),
            _ => pipe_to(|input, output| drop(mux(input, output))),
        });
        let port = Forwards::default().port(&echo_server(), || mux).unwrap();
        let mut conn = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let mut answer = Vec::new();
        conn.read_to_end(&mut answer).unwrap();
        assert!(answer.is_empty());
        assert_eq!(exchange(port, b"again".to_vec()), b"again");
        assert_eq!(launches.load(Ordering::SeqCst), 2);
    }
}

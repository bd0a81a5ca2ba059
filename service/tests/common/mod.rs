//! Helpers shared by the integration tests: the committed models, the router, an in-process
//! server on a free port, and the real `ml-service` binary as a child process.

#![allow(dead_code)]

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use axum::{body::Body, http::Request, Router};
use http_body_util::BodyExt;
use service::{
    config::Config,
    model::Model,
    server::{self, Server},
    state::AppState,
};
use tower::ServiceExt;

pub const VERSIONS: [&str; 2] = ["v1.0.0", "v1.1.0"];

/// Golden rows both versions must classify correctly: (features, class, label).
pub const GOLDEN: [([f64; 4], usize, &str); 3] = [
    ([5.1, 3.5, 1.4, 0.2], 0, "setosa"),
    ([7.0, 3.2, 4.7, 1.4], 1, "versicolor"),
    ([6.3, 3.3, 6.0, 2.5], 2, "virginica"),
];

/// `models/` at the workspace root.
pub fn models_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models")
}

pub fn model_dir(version: &str) -> PathBuf {
    models_dir().join(version)
}

pub fn load(version: &str) -> Model {
    Model::load(&model_dir(version), Some(version)).expect("the committed model loads")
}

pub fn app(version: &str) -> Router {
    server::router(AppState::new(load(version)))
}

/// A response as tests need it.
pub struct Answer {
    pub status: u16,
    pub headers: axum::http::HeaderMap,
    pub body: Vec<u8>,
}

impl Answer {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// Sends one request through the router, no socket involved.
pub async fn send(app: &Router, request: Request<Body>) -> Answer {
    let response = app
        .clone()
        .oneshot(request)
        .await
        .expect("the router never fails");
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes()
        .to_vec();
    Answer {
        status,
        headers,
        body,
    }
}

/// Sends `method uri` with `headers` and `body` through the router.
pub async fn request(
    app: &Router,
    method: &str,
    uri: &str,
    headers: &[(&str, &str)],
    body: impl Into<Body>,
) -> Answer {
    let mut builder = Request::builder().method(method).uri(uri);
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    send(app, builder.body(body.into()).unwrap()).await
}

pub async fn get(app: &Router, uri: &str) -> Answer {
    get_with(app, uri, &[]).await
}

pub async fn get_with(app: &Router, uri: &str, headers: &[(&str, &str)]) -> Answer {
    request(app, "GET", uri, headers, Body::empty()).await
}

pub async fn post_json(app: &Router, uri: &str, body: impl Into<Body>) -> Answer {
    request(
        app,
        "POST",
        uri,
        &[("content-type", "application/json")],
        body,
    )
    .await
}

/// The configuration of a [`TestServer`] serving `version` on free loopback ports, with the
/// defaults otherwise.
pub fn test_config(version: &str) -> Config {
    Config {
        model_path: model_dir(version),
        model_version: Some(version.to_owned()),
        host: Ipv4Addr::LOCALHOST.into(),
        port: 0,
        grpc_port: 0,
        shutdown_timeout: Duration::from_secs(5),
        shadow_journal_records: service::config::DEFAULT_SHADOW_JOURNAL_RECORDS,
    }
}

/// An in-process server on free loopback ports (HTTP and gRPC), stopped through
/// [`TestServer::shutdown`].
pub struct TestServer {
    pub addr: SocketAddr,
    pub grpc_addr: SocketAddr,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    handle: tokio::task::JoinHandle<std::io::Result<bool>>,
}

impl TestServer {
    pub async fn start(version: &str, shutdown_timeout: Duration) -> TestServer {
        TestServer::start_with(Config {
            shutdown_timeout,
            ..test_config(version)
        })
        .await
    }

    /// A server for `config` (from [`test_config`]), serving `config.model_version`.
    pub async fn start_with(config: Config) -> TestServer {
        let version = config
            .model_version
            .as_deref()
            .expect("a test names its version");
        let server = Server::bind(&config, load(version))
            .await
            .expect("bind a free port");
        let addr = server.local_addr();
        let grpc_addr = server.grpc_local_addr();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let handle = tokio::spawn(server.run_until(async move {
            let _ = rx.await;
        }));
        TestServer {
            addr,
            grpc_addr,
            shutdown: Some(tx),
            handle,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// The gRPC endpoint's URI, for tonic clients.
    pub fn grpc_url(&self) -> String {
        format!("http://{}", self.grpc_addr)
    }

    /// Signals shutdown and hands back the server task, so a test can watch the drain.
    pub fn begin_shutdown(mut self) -> tokio::task::JoinHandle<std::io::Result<bool>> {
        let _ = self.shutdown.take().unwrap().send(());
        self.handle
    }

    /// Signals shutdown and returns whether every request finished within the drain timeout.
    pub async fn shutdown(mut self) -> bool {
        let _ = self.shutdown.take().unwrap().send(());
        self.handle
            .await
            .expect("server task")
            .expect("server result")
    }
}

/// The real `ml-service` binary, with its stdout lines collected by a thread.
pub struct Process {
    pub child: Child,
    pub lines: mpsc::Receiver<String>,
    pub seen: Vec<String>,
}

/// Starts `ml-service` with `env` on a free loopback port (PORT=0) and waits for its
/// "listening" line; returns the process and its address.
pub fn spawn_service(env: &[(&str, String)]) -> (Process, SocketAddr) {
    let mut process = start_service(env);
    let line = process.wait_for_line("listening", Duration::from_secs(30));
    let addr = line
        .split_whitespace()
        .find_map(|word| word.strip_prefix("addr="))
        .unwrap_or_else(|| panic!("no addr= in {line:?}"))
        .parse()
        .expect("an address");
    (process, addr)
}

pub fn start_service(env: &[(&str, String)]) -> Process {
    start_service_with(env, Stdio::piped(), Stdio::piped())
}

/// Starts `ml-service` on a free loopback port with its stdout and stderr sent to `output` (say
/// `/dev/full`), and waits until `/health` answers 200: for runs whose log lines do not come
/// to a pipe, so no "listening" line can tell the address.
pub fn spawn_service_logging_to(env: &[(&str, String)], output: &Path) -> (Process, SocketAddr) {
    let open = || {
        std::fs::OpenOptions::new()
            .append(true)
            .open(output)
            .unwrap_or_else(|e| panic!("open {}: {e}", output.display()))
    };
    let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let mut env = env.to_vec();
    env.push(("PORT", port.to_string()));
    let mut process = start_service_with(&env, open().into(), open().into());
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    poll(
        "ml-service to answer /health",
        Duration::from_secs(30),
        || {
            if let Ok(Some(status)) = process.child.try_wait() {
                panic!("ml-service exited with {status} before it was healthy");
            }
            http_get(addr, "/health")
                .ok()
                .filter(|r| r.starts_with("HTTP/1.1 200"))
        },
    );
    (process, addr)
}

/// Starts `ml-service` with `env` (PORT=0 and GRPC_PORT=0 unless `env` says otherwise); a piped
/// stdout is read line by line into [`Process::lines`].
pub fn start_service_with(env: &[(&str, String)], stdout: Stdio, stderr: Stdio) -> Process {
    let mut command = Command::new(env!("CARGO_BIN_EXE_ml-service"));
    command
        .env_clear()
        .env("HOST", "127.0.0.1")
        .env("PORT", "0")
        .env("GRPC_PORT", "0")
        .env("RUST_LOG", "info")
        .stdout(stdout)
        .stderr(stderr);
    for (k, v) in env {
        command.env(k, v);
    }
    let mut child = command.spawn().expect("start ml-service");
    let (tx, rx) = mpsc::channel();
    if let Some(stdout) = child.stdout.take() {
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
    }
    Process {
        child,
        lines: rx,
        seen: Vec::new(),
    }
}

impl Process {
    /// Waits until a stdout line contains `needle`; panics with everything seen after `timeout`.
    pub fn wait_for_line(&mut self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.contains(needle) {
                        return line;
                    }
                }
                Err(_) => {
                    let _ = self.child.kill();
                    let mut stderr = String::new();
                    if let Some(mut e) = self.child.stderr.take() {
                        let _ = std::io::Read::read_to_string(&mut e, &mut stderr);
                    }
                    panic!("no line with {needle:?} within {timeout:?}; stdout: {:#?}; stderr: {stderr}", self.seen);
                }
            }
        }
    }

    /// Waits for the process to exit, killing it (and failing) after `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        wait_exit(&mut self.child, timeout)
    }

    pub fn terminate(&self) {
        let pid = self.child.id() as libc::pid_t;
        // SAFETY: kill(2) on our own child's pid has no memory-safety preconditions.
        let rc = unsafe { libc::kill(pid, libc::SIGTERM) };
        assert_eq!(rc, 0, "kill -TERM {pid}");
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn wait_exit(child: &mut Child, timeout: Duration) -> ExitStatus {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            panic!("process {} still running after {timeout:?}", child.id());
        }
        thread::sleep(Duration::from_millis(10));
    }
}

/// Polls `f` until it returns `Some`, failing after `timeout`.
pub fn poll<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not true after {timeout:?}"
        );
        thread::sleep(Duration::from_millis(10));
    }
}

/// A minimal blocking GET (`Connection: close`), so synchronous tests need no runtime.
pub fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<String> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    Ok(response)
}

/// The value of the unlabelled metric `name` in a `/metrics` text, if present.
pub fn metric(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

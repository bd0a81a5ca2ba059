//! Shared by the local runtime's integration tests: a deployment with its own ports and state
//! directory (so tests run in parallel), the real `xtask` binary, the real `ml-service`, a real
//! nginx, and a load generator that counts every failed request.

#![allow(dead_code)]

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Command, Output},
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc, Mutex, OnceLock,
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use serde_json::Value;

pub fn project_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// The service binary: `$MLDEPLOY_SERVICE_BIN`, else the debug build next to the xtask binary
/// (built once here when missing).
pub fn service_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(bin) = std::env::var_os("MLDEPLOY_SERVICE_BIN") {
            return PathBuf::from(bin);
        }
        let bin = Path::new(env!("CARGO_BIN_EXE_xtask")).with_file_name("ml-service");
        if !bin.is_file() {
            let status = Command::new(env!("CARGO"))
                .args(["build", "-p", "service", "--bin", "ml-service"])
                .current_dir(project_root())
                .status()
                .expect("run cargo build for ml-service");
            assert!(status.success(), "building ml-service failed");
        }
        assert!(bin.is_file(), "no ml-service at {}", bin.display());
        bin
    })
    .clone()
}

/// A port nothing listens on, below Linux's ephemeral range (32768+) so that no outgoing
/// connection can take it between this check and the service binding it. Each test process
/// starts at its own offset; the bind check skips ports another test took.
fn free_port() -> u16 {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let offset = (std::process::id() as usize * 7919) % 10_000;
    loop {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = 20_000 + ((offset + n * 13) % 12_000) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// One deployment under test; `down` runs when it is dropped.
pub struct Deployment {
    pub name: String,
    pub dir: PathBuf,
    pub config: PathBuf,
    pub state: PathBuf,
    pub ports: [u16; 3],
}

impl Deployment {
    /// A fresh deployment named `name` (not started).
    pub fn new(name: &str) -> Deployment {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("local-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let ports = [free_port(), free_port(), free_port()];
        assert!(ports[0] != ports[1] && ports[1] != ports[2] && ports[0] != ports[2]);
        let state = dir.join("state");
        let config = dir.join("deploy.toml");
        std::fs::write(
            &config,
            format!(
                "[balancer]\nport = {}\nbuckets = 100\n[blue]\nversion = \"v1.0.0\"\nport = {}\n[green]\nversion = \"v1.1.0\"\nport = {}\n\
                 [local]\nstate_dir = \"{}\"\n[timeouts]\nhealthy_secs = 30\nlock_secs = 60\n",
                ports[0],
                ports[1],
                ports[2],
                state.display()
            ),
        )
        .unwrap();
        Deployment {
            name: name.into(),
            dir,
            config,
            state,
            ports,
        }
    }

    /// A started deployment (`up`).
    pub fn up(name: &str) -> Deployment {
        let d = Deployment::new(name);
        d.ok(&["up"]);
        d
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_xtask"));
        cmd.args(["--runtime", "local", "--config"])
            .arg(&self.config)
            .args(args)
            .env("MLDEPLOY_SERVICE_BIN", service_bin())
            .current_dir(project_root());
        cmd
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("run xtask")
    }

    /// Runs `xtask args`, asserts success, returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        let text = describe(&out);
        assert!(
            out.status.success(),
            "`xtask {}` failed:\n{text}",
            args.join(" ")
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs `xtask args`, asserts failure, returns stdout + stderr.
    pub fn fails(&self, args: &[&str]) -> String {
        let out = self.run(args);
        let text = describe(&out);
        assert!(
            !out.status.success(),
            "`xtask {}` should have failed:\n{text}",
            args.join(" ")
        );
        text
    }

    pub fn status(&self) -> Value {
        serde_json::from_str(&self.ok(&["status", "--json"])).expect("status --json is JSON")
    }

    pub fn balancer(&self) -> String {
        format!("http://127.0.0.1:{}", self.ports[0])
    }

    pub fn color_url(&self, color: &str) -> String {
        format!(
            "http://127.0.0.1:{}",
            if color == "blue" {
                self.ports[1]
            } else {
                self.ports[2]
            }
        )
    }

    /// (served color, model version) of one request through the balancer.
    pub fn served(&self) -> (String, String) {
        let response = client()
            .get(format!("{}/health", self.balancer()))
            .send()
            .expect("balancer answers");
        assert_eq!(response.status(), 200);
        let header = |name| {
            response
                .headers()
                .get(name)
                .map(|v| v.to_str().unwrap().to_owned())
                .unwrap_or_default()
        };
        (header("x-served-by"), header("x-model-version"))
    }

    pub fn pid(&self, color: &str) -> u32 {
        std::fs::read_to_string(self.state.join(format!("{color}.pid")))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }

    pub fn kill(&self, color: &str) {
        let pid = self.pid(color);
        assert!(Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status()
            .unwrap()
            .success());
        wait_until(&format!("{color} (pid {pid}) exits"), || {
            std::fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |s| s.contains(") Z"))
        });
    }
}

impl Drop for Deployment {
    fn drop(&mut self) {
        let down = self.run(&["down"]);
        if down.status.success() {
            let _ = std::fs::remove_dir_all(&self.dir);
        } else {
            eprintln!(
                "`xtask down` failed for {}:\n{}",
                self.name,
                describe(&down)
            );
        }
    }
}

pub fn describe(out: &Output) -> String {
    format!(
        "exit: {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

pub fn client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(10))
        .no_proxy()
        .pool_max_idle_per_host(4)
        .build()
        .unwrap()
}

/// Polls `f` every 10 ms until it holds; panics after 30 s.
pub fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(10));
    }
}

/// Keep-alive clients posting predictions through the balancer until stopped; counts every
/// request, every failure (transport error or non-2xx), and never retries: each client is a
/// plain HTTP/1.1 connection over `TcpStream`, so a connection the balancer drops is a failure.
pub struct Load {
    stop: Arc<AtomicBool>,
    pub ok: Arc<AtomicUsize>,
    pub failed: Arc<AtomicUsize>,
    pub errors: Arc<Mutex<Vec<String>>>,
    threads: Vec<JoinHandle<()>>,
}

const PREDICT_BODY: &str = r#"{"features":[5.1,3.5,1.4,0.2]}"#;

/// One keep-alive request on `stream`: the status, or why it failed. `reconnect` is set when
/// the server announced `Connection: close` (a polite close, not a failure).
fn post_predict(
    stream: &mut BufReader<TcpStream>,
    host: &str,
    reconnect: &mut bool,
) -> Result<u16, String> {
    let request = format!(
        "POST /predict HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{PREDICT_BODY}",
        PREDICT_BODY.len()
    );
    stream
        .get_mut()
        .write_all(request.as_bytes())
        .map_err(|e| format!("write: {e}"))?;
    let mut line = String::new();
    stream
        .read_line(&mut line)
        .map_err(|e| format!("read status: {e}"))?;
    if line.is_empty() {
        return Err("connection closed before a response".into());
    }
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or(format!("bad status line {line:?}"))?;
    let mut length = 0;
    loop {
        line.clear();
        stream
            .read_line(&mut line)
            .map_err(|e| format!("read headers: {e}"))?;
        let header = line.trim_end();
        if header.is_empty() {
            break;
        }
        let lower = header.to_ascii_lowercase();
        if let Some(v) = lower.strip_prefix("content-length:") {
            length = v.trim().parse().map_err(|_| format!("bad {header:?}"))?;
        } else if lower == "connection: close" {
            *reconnect = true;
        }
    }
    let mut body = vec![0; length];
    stream
        .read_exact(&mut body)
        .map_err(|e| format!("read body: {e}"))?;
    Ok(status)
}

impl Load {
    pub fn start(url: &str, threads: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicUsize::new(0));
        let failed = Arc::new(AtomicUsize::new(0));
        let errors = Arc::new(Mutex::new(Vec::new()));
        let host = url.trim_start_matches("http://").to_owned();
        let handles = (0..threads)
            .map(|_| {
                let (stop, ok, failed, errors) =
                    (stop.clone(), ok.clone(), failed.clone(), errors.clone());
                let host = host.clone();
                thread::spawn(move || {
                    let mut conn: Option<BufReader<TcpStream>> = None;
                    while !stop.load(Ordering::Relaxed) {
                        let stream = match conn.as_mut() {
                            Some(stream) => stream,
                            None => match TcpStream::connect(&host) {
                                Ok(s) => conn.insert(BufReader::new(s)),
                                Err(e) => {
                                    failed.fetch_add(1, Ordering::Relaxed);
                                    errors.lock().unwrap().push(format!("connect: {e}"));
                                    continue;
                                }
                            },
                        };
                        let mut reconnect = false;
                        match post_predict(stream, &host, &mut reconnect) {
                            Ok(status) if (200..300).contains(&status) => {
                                ok.fetch_add(1, Ordering::Relaxed);
                            }
                            Ok(status) => {
                                failed.fetch_add(1, Ordering::Relaxed);
                                errors.lock().unwrap().push(format!("status {status}"));
                            }
                            Err(e) => {
                                failed.fetch_add(1, Ordering::Relaxed);
                                errors.lock().unwrap().push(e);
                                reconnect = true;
                            }
                        }
                        if reconnect {
                            conn = None;
                        }
                    }
                })
            })
            .collect();
        Load {
            stop,
            ok,
            failed,
            errors,
            threads: handles,
        }
    }

    /// Waits until `n` more requests have succeeded (so load really ran across an event), or
    /// until one fails.
    pub fn wait_for_more(&self, n: usize) {
        let target = self.ok.load(Ordering::Relaxed) + n;
        wait_until(&format!("{n} more successful requests"), || {
            self.ok.load(Ordering::Relaxed) >= target || self.failed.load(Ordering::Relaxed) > 0
        });
    }

    /// Stops the clients; returns (succeeded, failed, the first errors).
    pub fn finish(mut self) -> (usize, usize, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            t.join().unwrap();
        }
        let errors = self
            .errors
            .lock()
            .unwrap()
            .iter()
            .take(5)
            .cloned()
            .collect();
        (
            self.ok.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
            errors,
        )
    }
}

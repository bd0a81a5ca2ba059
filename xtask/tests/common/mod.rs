//! Shared by the local runtime's integration tests: a deployment with its own ports and state
//! directory (so tests run in parallel), the real `xtask` binary, the real `ml-service`, a real
//! nginx, and a load generator that counts every failed request.

#![allow(dead_code)]

use std::{
    net::TcpListener,
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

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
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
/// request, every failure (transport error or non-2xx), and the versions that answered.
pub struct Load {
    stop: Arc<AtomicBool>,
    pub ok: Arc<AtomicUsize>,
    pub failed: Arc<AtomicUsize>,
    pub errors: Arc<Mutex<Vec<String>>>,
    threads: Vec<JoinHandle<()>>,
}

impl Load {
    pub fn start(url: &str, threads: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicUsize::new(0));
        let failed = Arc::new(AtomicUsize::new(0));
        let errors = Arc::new(Mutex::new(Vec::new()));
        let handles = (0..threads)
            .map(|_| {
                let (stop, ok, failed, errors) =
                    (stop.clone(), ok.clone(), failed.clone(), errors.clone());
                let url = format!("{url}/predict");
                thread::spawn(move || {
                    let client = client();
                    while !stop.load(Ordering::Relaxed) {
                        let result = client
                            .post(&url)
                            .header("content-type", "application/json")
                            .body(r#"{"features":[5.1,3.5,1.4,0.2]}"#)
                            .send();
                        let result = result.and_then(|r| {
                            let status = r.status();
                            r.bytes().map(|_| status)
                        });
                        match result {
                            Ok(status) if status.is_success() => {
                                ok.fetch_add(1, Ordering::Relaxed);
                            }
                            Ok(status) => {
                                failed.fetch_add(1, Ordering::Relaxed);
                                errors.lock().unwrap().push(format!("status {status}"));
                            }
                            Err(e) => {
                                failed.fetch_add(1, Ordering::Relaxed);
                                errors.lock().unwrap().push(format!("{e:?}"));
                            }
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

    /// Waits until `n` more requests have succeeded (so load really ran across an event).
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

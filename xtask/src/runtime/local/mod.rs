//! The local runtime: the service binaries and a host nginx as detached child processes.
//!
//! Everything lives under the state directory (`local.state_dir`, default `.deploy/local`):
//! - `nginx/`: nginx's prefix (`nginx.conf`, `nginx.pid`, `logs/`, `temp/`); nginx runs as a
//!   daemon started with `-p <state>/nginx/ -c <state>/nginx/nginx.conf -e <error log>`, so no
//!   root-owned path is touched;
//! - `blue.pid`, `green.pid`: the colors' processes, started in their own process group so they
//!   outlive the `cargo xtask` that started them; `<color>.log` (+ `.log.1`): each one's request
//!   log, written by the service itself and capped; `<color>.out`: its stdout and stderr;
//! - `routes/`, `state.json`, `operations.jsonl`, `lock`: the host state directory (see
//!   [`super`]).
//!
//! The service binary is `$MLDEPLOY_SERVICE_BIN` when set, else `target/release/ml-service`,
//! built with `cargo build --release -p service --bin ml-service` when missing or older than the
//! service's sources. Each color gets `MODEL_PATH=<models_dir>/<version>` (`local.models_dir`,
//! default `models/`), `MODEL_VERSION`,
//! `PORT` and `GRPC_PORT` (its direct ports) and `HOST=127.0.0.1`.

use std::{
    cell::RefCell,
    collections::HashMap,
    fs::{self, OpenOptions},
    io::Write,
    os::unix::{fs::PermissionsExt, process::CommandExt},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant, SystemTime},
};

use anyhow::{bail, Context, Result};
use xshell::{cmd, Shell};

mod dir;

use super::{HostDir, Part, Runtime};
use crate::{config::DeployConfig, domain::Color, host, nginx::NginxParams, util};

/// The cap on each color's request log (and its one rotated file), in bytes.
const LOG_MAX_BYTES: u64 = 16 * 1024 * 1024;
/// How long `apply_config` waits for nginx's old workers to go after a reload.
const RELOAD_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a stopping process may take before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

pub struct Local {
    sh: Shell,
    root: PathBuf,
    /// The host state directory (see [`super`]); [`dir`] implements [`HostDir`] over it.
    state: PathBuf,
    config: DeployConfig,
    /// The colors this process started: their liveness comes from `try_wait` (which also reaps
    /// them), not from `/proc`, where a process that has just been spawned can briefly show
    /// its parent's or an empty command line.
    children: RefCell<HashMap<Color, Child>>,
}

impl Local {
    /// Opens the local runtime for `config`; installs nginx when it is missing and we can.
    pub fn new(sh: &Shell, config: &DeployConfig) -> Result<Local> {
        host::ensure_commands(sh, &[host::NGINX]).context("find nginx for the local runtime")?;
        let root = util::project_root();
        Ok(Local {
            sh: sh.clone(),
            state: config.local_state_dir(&root),
            root,
            config: config.clone(),
            children: RefCell::default(),
        })
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.state.join(rel)
    }

    fn prefix(&self) -> PathBuf {
        self.path("nginx")
    }

    fn conf_path(&self) -> PathBuf {
        self.path("nginx/nginx.conf")
    }

    fn error_log(&self) -> PathBuf {
        self.path("nginx/logs/error.log")
    }

    fn pid_file(&self, part: Part) -> PathBuf {
        match part {
            Part::Balancer => self.path("nginx/nginx.pid"),
            Part::Color(color) => self.path(&format!("{color}.pid")),
        }
    }

    fn log_file(&self, part: Part) -> PathBuf {
        match part {
            Part::Balancer => self.error_log(),
            Part::Color(color) => self.path(&format!("{color}.log")),
        }
    }

    fn nginx(&self) -> Result<PathBuf> {
        host::find_command("nginx").context("nginx is not installed: run `cargo xtask setup`")
    }

    /// Creates the state directory and nginx's folders, traversable by nginx's workers (which
    /// run as an unprivileged user when we are root).
    fn ensure_dirs(&self) -> Result<()> {
        for dir in ["", "nginx", "nginx/logs", "nginx/temp", "routes"] {
            let path = self.path(dir);
            fs::create_dir_all(&path).with_context(|| format!("create {}", path.display()))?;
            fs::set_permissions(&path, fs::Permissions::from_mode(0o755))
                .with_context(|| format!("make {} readable by nginx", path.display()))?;
        }
        Ok(())
    }

    /// The pid recorded for `part`, when that process is still alive.
    fn live_pid(&self, part: Part) -> Option<u32> {
        let pid: u32 = fs::read_to_string(self.pid_file(part))
            .ok()?
            .trim()
            .parse()
            .ok()?;
        let expected = match part {
            Part::Balancer => "nginx".to_owned(),
            Part::Color(color) => {
                if let Some(child) = self.children.borrow_mut().get_mut(&color) {
                    if child.id() == pid {
                        return matches!(child.try_wait(), Ok(None)).then_some(pid);
                    }
                }
                self.service_name()
            }
        };
        process_alive(pid, &expected).then_some(pid)
    }

    fn service_name(&self) -> String {
        self.service_bin_path()
            .file_name()
            .map_or("ml-service".into(), |n| n.to_string_lossy().into_owned())
    }

    fn service_bin_path(&self) -> PathBuf {
        if let Some(bin) = std::env::var_os("MLDEPLOY_SERVICE_BIN") {
            return PathBuf::from(bin);
        }
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map_or_else(|| self.root.join("target"), PathBuf::from);
        target.join("release/ml-service")
    }

    /// The service binary, built first when it is missing or older than its sources.
    fn service_bin(&self) -> Result<PathBuf> {
        let bin = self.service_bin_path();
        if std::env::var_os("MLDEPLOY_SERVICE_BIN").is_some() {
            if !bin.is_file() {
                bail!(
                    "MLDEPLOY_SERVICE_BIN={} does not exist: build it or unset the variable",
                    bin.display()
                );
            }
            return Ok(bin);
        }
        let built = fs::metadata(&bin).and_then(|m| m.modified()).ok();
        let sources = newest_mtime(&self.root.join("service"));
        if built.is_none() || sources.is_some_and(|s| Some(s) > built) {
            crate::say!("building ml-service (release)…");
            let sh = &self.sh;
            cmd!(sh, "cargo build --release -p service --bin ml-service")
                .run()
                .context("build the service binary")?;
        }
        if !bin.is_file() {
            bail!(
                "no service binary at {}: run `cargo build --release -p service`",
                bin.display()
            );
        }
        Ok(bin)
    }

    /// Sends `signal` to `pid` and waits for it to go; kills it after [`STOP_TIMEOUT`].
    fn stop_pid(&self, part: Part, pid: u32, signal: &str) -> Result<()> {
        let sh = &self.sh;
        let pid_s = pid.to_string();
        let _ = cmd!(sh, "kill -{signal} {pid_s}")
            .quiet()
            .ignore_stderr()
            .run();
        let deadline = Instant::now() + STOP_TIMEOUT;
        while self.live_pid(part) == Some(pid) {
            if Instant::now() > deadline {
                let _ = cmd!(sh, "kill -KILL {pid_s}").quiet().ignore_stderr().run();
                break;
            }
            thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    fn nginx_test(&self, conf: &Path) -> Result<()> {
        let (sh, nginx) = (&self.sh, self.nginx()?);
        let (prefix, err) = (self.prefix_arg(), self.error_log());
        let output = cmd!(sh, "{nginx} -t -q -p {prefix} -c {conf} -e {err}")
            .quiet()
            .ignore_status()
            .output()
            .context("run nginx -t")?;
        if !output.status.success() {
            let text = String::from_utf8_lossy(&output.stderr);
            bail!(
                "nginx -t refused the config, the running config stays: {}",
                text.trim()
            );
        }
        Ok(())
    }

    /// Installs `nginx_conf` as nginx's config once `nginx -t` accepts it (written beside it
    /// first, then renamed over it); when `nginx -t` refuses it, the installed config stays.
    fn install_config(&self, nginx_conf: &str) -> Result<()> {
        let candidate = self.path("nginx/nginx.conf.candidate");
        fs::write(&candidate, nginx_conf).context("write nginx's candidate config")?;
        if let Err(err) = self.nginx_test(&candidate) {
            let _ = fs::remove_file(&candidate);
            return Err(err);
        }
        fs::rename(&candidate, self.conf_path()).context("install nginx's config")
    }

    /// nginx wants the prefix with a trailing slash.
    fn prefix_arg(&self) -> String {
        format!("{}/", self.prefix().display())
    }
}

impl Runtime for Local {
    fn name(&self) -> &'static str {
        "local"
    }

    fn url(&self, part: Part) -> String {
        let port = match part {
            Part::Balancer => self.config.balancer.port,
            Part::Color(color) => self.config.color(color).port,
        };
        format!("http://127.0.0.1:{port}")
    }

    fn grpc_url(&self, part: Part) -> String {
        let port = match part {
            Part::Balancer => self.config.balancer.grpc_port,
            Part::Color(color) => self.config.color(color).grpc_port,
        };
        format!("http://127.0.0.1:{port}")
    }

    fn host(&self) -> &dyn HostDir {
        self
    }

    fn nginx_params(&self) -> NginxParams {
        let s = |rel: &str| self.path(rel).display().to_string();
        NginxParams {
            listen: format!("127.0.0.1:{}", self.config.balancer.port),
            blue: format!("127.0.0.1:{}", self.config.blue.port),
            green: format!("127.0.0.1:{}", self.config.green.port),
            grpc_listen: format!("127.0.0.1:{}", self.config.balancer.grpc_port),
            blue_grpc: format!("127.0.0.1:{}", self.config.blue.grpc_port),
            green_grpc: format!("127.0.0.1:{}", self.config.green.grpc_port),
            route_dir: s("routes"),
            shadow_dir: s("shadow"),
            shadow_timeout_ms: self.config.shadow.timeout_ms,
            buckets: self.config.balancer.buckets,
            pid_path: s("nginx/nginx.pid"),
            error_log: s("nginx/logs/error.log"),
            access_log: s("nginx/logs/access.log"),
            temp_dir: s("nginx/temp"),
            read_timeout_secs: self.config.balancer.read_timeout.as_secs(),
            testers: self
                .config
                .testers
                .enabled
                .then(|| self.config.testers.clone()),
            resolver: None,
            color_prefixes: Vec::new(),
        }
    }

    fn start_balancer(&self, nginx_conf: &str) -> Result<()> {
        self.ensure_dirs()?;
        if self.live_pid(Part::Balancer).is_some() {
            if self.current_config()?.as_deref() == Some(nginx_conf) {
                return Ok(());
            }
            return self.apply_config(nginx_conf);
        }
        self.install_config(nginx_conf)?;
        let (sh, nginx) = (&self.sh, self.nginx()?);
        let (prefix, conf, err) = (self.prefix_arg(), self.conf_path(), self.error_log());
        // nginx daemonises: the command returns once the master runs, and the master outlives us.
        let started = cmd!(sh, "{nginx} -p {prefix} -c {conf} -e {err}")
            .quiet()
            .ignore_stdout()
            .ignore_stderr()
            .run();
        if started.is_err() {
            bail!(
                "nginx did not start; its error log ends with:\n{}",
                self.logs(Part::Balancer, 5)?
            );
        }
        util::poll("nginx writes its pid file", Duration::from_secs(5), || {
            self.live_pid(Part::Balancer)
                .map(drop)
                .context("no live nginx pid yet")
        })
    }

    fn start_color(&self, color: Color, version: &str) -> Result<()> {
        if let Err(why) = crate::domain::check_version(version) {
            bail!("model version {version:?}: {why}");
        }
        let model = self.config.local_models_dir(&self.root).join(version);
        if !model.join("model.json").is_file() {
            bail!("no model {version}: {} is missing (train it with `cargo xtask train --version {version}`, or set `local.models_dir`)", model.join("model.json").display());
        }
        let bin = self.service_bin()?;
        self.ensure_dirs()?;
        self.stop_color(color)?;
        // The service writes its request log itself, capped and rotated (`LOG_FILE`,
        // `LOG_MAX_BYTES`), off the request path, so a full disk costs log lines, never
        // requests. Its stdout and stderr (start-up errors, a panic) go to `<color>.out`.
        let log_path = self.log_file(Part::Color(color));
        let out_path = self.path(&format!("{color}.out"));
        let mut out = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&out_path)
            .context("open the color's output file")?;
        // A marker between runs; on a full disk it is simply missing.
        let _ = writeln!(
            out,
            "--- {} starting {color} with {version}",
            util::now_rfc3339()
        );
        let port = self.config.color(color).port.to_string();
        // A detached child (own process group, no inherited terminal or pipes): it keeps serving
        // after this command returns. xshell cannot spawn without waiting, hence `Command`.
        let child = Command::new(&bin)
            .env("MODEL_PATH", &model)
            .env("MODEL_VERSION", version)
            .env("PORT", &port)
            .env("GRPC_PORT", self.config.color(color).grpc_port.to_string())
            .env("HOST", "127.0.0.1")
            .env("LOG_FILE", &log_path)
            .env("LOG_MAX_BYTES", LOG_MAX_BYTES.to_string())
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .process_group(0)
            .spawn()
            .with_context(|| format!("start {} for {color}", bin.display()))?;
        fs::write(self.pid_file(Part::Color(color)), child.id().to_string())
            .context("record the color's pid")?;
        self.children.borrow_mut().insert(color, child);
        Ok(())
    }

    fn stop_color(&self, color: Color) -> Result<()> {
        if let Some(pid) = self.live_pid(Part::Color(color)) {
            self.stop_pid(Part::Color(color), pid, "TERM")?;
        }
        if let Some(mut child) = self.children.borrow_mut().remove(&color) {
            let _ = child.try_wait();
        }
        let _ = fs::remove_file(self.pid_file(Part::Color(color)));
        Ok(())
    }

    fn is_running(&self, part: Part) -> Result<bool> {
        Ok(self.live_pid(part).is_some())
    }

    fn logs(&self, part: Part, lines: usize) -> Result<String> {
        let tail =
            |path: PathBuf| util::last_lines(&fs::read_to_string(path).unwrap_or_default(), lines);
        let mut text = tail(self.log_file(part));
        if let Part::Color(color) = part {
            // Start-up errors and panics are on the process's own output.
            let out = tail(self.path(&format!("{color}.out")));
            if !out.trim().is_empty() {
                if !text.is_empty() {
                    text.push('\n');
                }
                text.push_str(&out);
            }
        }
        Ok(text)
    }

    fn down(&self) -> Result<()> {
        for color in Color::ALL {
            self.stop_color(color)?;
        }
        if let Some(pid) = self.live_pid(Part::Balancer) {
            self.stop_pid(Part::Balancer, pid, "QUIT")?;
        }
        // Remove only what this runtime creates, so a mistyped `state_dir` cannot wipe a folder.
        for name in ["nginx", "routes"] {
            let path = self.path(name);
            if path.exists() {
                fs::remove_dir_all(&path).with_context(|| format!("remove {}", path.display()))?;
            }
        }
        for name in [
            "state.json",
            "operations.jsonl",
            "lock",
            "lock.holder",
            "blue.log",
            "green.log",
            "blue.log.1",
            "green.log.1",
            "blue.out",
            "green.out",
            "blue.pid",
            "green.pid",
        ] {
            let _ = fs::remove_file(self.path(name));
        }
        let _ = fs::remove_dir(&self.state);
        Ok(())
    }

    fn apply_config(&self, nginx_conf: &str) -> Result<()> {
        self.ensure_dirs()?;
        self.install_config(nginx_conf)?;
        if let Some(master) = self.live_pid(Part::Balancer) {
            let old = workers(master);
            let (sh, nginx) = (&self.sh, self.nginx()?);
            let (prefix, conf, err) = (self.prefix_arg(), self.conf_path(), self.error_log());
            cmd!(sh, "{nginx} -s reload -p {prefix} -c {conf} -e {err}")
                .quiet()
                .ignore_stdout()
                .run()
                .context("reload nginx")?;
            // The reload is asynchronous: until the old workers are gone, a new connection may
            // still meet the old config. Wait for that, so the caller's next request sees the
            // new one; workers busy with long requests only earn a note.
            let replaced = util::poll("nginx's new workers", RELOAD_TIMEOUT, || {
                let now = workers(master);
                if now.is_empty() || now.iter().any(|pid| old.contains(pid)) {
                    bail!("old workers still running");
                }
                Ok(())
            });
            if replaced.is_err() {
                crate::say!(
                    "note: nginx's old workers are still finishing requests after {} s; new connections get the new config",
                    RELOAD_TIMEOUT.as_secs()
                );
            }
        }
        Ok(())
    }

    fn current_config(&self) -> Result<Option<String>> {
        self.read("nginx/nginx.conf")
    }
}

/// The live children of `master` (nginx's workers).
fn workers(master: u32) -> Vec<u32> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| proc_stat(pid).is_some_and(|(live, ppid)| live && ppid == master))
        .collect()
}

/// From `/proc/<pid>/stat`: whether the process is live (not a zombie) and its parent's pid.
fn proc_stat(pid: u32) -> Option<(bool, u32)> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let mut fields = stat.rsplit_once(')')?.1.split_whitespace();
    let live = !matches!(fields.next()?, "Z" | "X");
    Some((live, fields.next()?.parse().ok()?))
}

/// Whether `pid` is a live (not zombie) process whose command line mentions `expected`.
fn process_alive(pid: u32, expected: &str) -> bool {
    if !proc_stat(pid).is_some_and(|(live, _)| live) {
        return false;
    }
    fs::read(format!("/proc/{pid}/cmdline"))
        .is_ok_and(|cmdline| String::from_utf8_lossy(&cmdline).contains(expected))
}

/// The newest modification time of the service's sources (`src/`, `Cargo.toml`).
fn newest_mtime(dir: &Path) -> Option<SystemTime> {
    let mut newest = fs::metadata(dir.join("Cargo.toml"))
        .and_then(|m| m.modified())
        .ok();
    let mut stack = vec![dir.join("src")];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if let Ok(modified) = entry.metadata().and_then(|m| m.modified()) {
                newest = newest.max(Some(modified));
            }
        }
    }
    newest
}

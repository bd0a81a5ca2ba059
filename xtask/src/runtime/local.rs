//! The local runtime: the service binaries and a host nginx as detached child processes.
//!
//! Everything lives under the state directory (`local.state_dir`, default `.deploy/local`):
//! - `nginx/`: nginx's prefix (`nginx.conf`, `nginx.pid`, `logs/`, `temp/`); nginx runs as a
//!   daemon started with `-p <state>/nginx/ -c <state>/nginx/nginx.conf -e <error log>`, so no
//!   root-owned path is touched;
//! - `blue.pid`, `blue.log`, `green.pid`, `green.log`: the colors' processes, started in their
//!   own process group so they outlive the `cargo xtask` that started them;
//! - `routes/`, `state.json`, `operations.jsonl`, `lock`: the host state directory (see
//!   [`super`]).
//!
//! The service binary is `$MLDEPLOY_SERVICE_BIN` when set, else `target/release/ml-service`,
//! built with `cargo build --release -p service --bin ml-service` when missing or older than the
//! service's sources. Each color gets `MODEL_PATH=<root>/models/<version>`, `MODEL_VERSION`,
//! `PORT` (its direct port) and `HOST=127.0.0.1`.

use std::{
    cell::RefCell,
    collections::HashMap,
    fs::{self, File, OpenOptions},
    io::Write,
    os::unix::{fs::PermissionsExt, process::CommandExt},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant, SystemTime},
};

use anyhow::{bail, Context, Result};
use xshell::{cmd, Shell};

use super::{HostLock, Part, RouteReading, Runtime};
use crate::{config::DeployConfig, domain::Color, nginx::NginxParams, setup, util};

/// How long a stopping process may take before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

pub struct Local {
    sh: Shell,
    root: PathBuf,
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
        setup::ensure_commands(sh, &[setup::NGINX]).context("find nginx for the local runtime")?;
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
        setup::find_command("nginx").context("nginx is not installed: run `cargo xtask setup`")
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

    /// nginx wants the prefix with a trailing slash.
    fn prefix_arg(&self) -> String {
        format!("{}/", self.prefix().display())
    }

    /// `true` when nginx's workers may not be able to `stat()` inside `dir` (search permission
    /// for "others" when we are root, since the workers then run as `nobody`).
    fn worker_cannot_enter(&self, dir: &Path) -> Option<String> {
        let mode = fs::metadata(dir).ok()?.permissions().mode();
        let bit = if running_as_root() { 0o001 } else { 0o100 };
        (mode & bit == 0).then(|| {
            format!(
                "{} has mode {:o}, so nginx's workers cannot enter it",
                dir.display(),
                mode & 0o777
            )
        })
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

    fn nginx_params(&self) -> NginxParams {
        let s = |rel: &str| self.path(rel).display().to_string();
        NginxParams {
            listen: format!("127.0.0.1:{}", self.config.balancer.port),
            blue: format!("127.0.0.1:{}", self.config.blue.port),
            green: format!("127.0.0.1:{}", self.config.green.port),
            route_dir: s("routes"),
            buckets: self.config.balancer.buckets,
            pid_path: s("nginx/nginx.pid"),
            error_log: s("nginx/logs/error.log"),
            access_log: s("nginx/logs/access.log"),
            temp_dir: s("nginx/temp"),
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
        let candidate = self.path("nginx/nginx.conf.candidate");
        fs::write(&candidate, nginx_conf).context("write nginx's config")?;
        if let Err(err) = self.nginx_test(&candidate) {
            let _ = fs::remove_file(&candidate);
            return Err(err);
        }
        fs::rename(&candidate, self.conf_path()).context("install nginx's config")?;
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
        let model = self.root.join("models").join(version);
        if !model.join("model.json").is_file() {
            bail!("no model {version}: {} is missing (train it with `cargo xtask train --version {version}`)", model.join("model.json").display());
        }
        let bin = self.service_bin()?;
        self.ensure_dirs()?;
        self.stop_color(color)?;
        let log_path = self.log_file(Part::Color(color));
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .context("open the color's log")?;
        writeln!(
            log,
            "--- {} starting {color} with {version}",
            crate::domain::now_rfc3339()
        )?;
        let port = self.config.color(color).port.to_string();
        // A detached child (own process group, no inherited terminal or pipes): it keeps serving
        // after this command returns. xshell cannot spawn without waiting, hence `Command`.
        let child = Command::new(&bin)
            .env("MODEL_PATH", &model)
            .env("MODEL_VERSION", version)
            .env("PORT", &port)
            .env("HOST", "127.0.0.1")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
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
        let text = fs::read_to_string(self.log_file(part)).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        Ok(all[all.len().saturating_sub(lines)..].join("\n"))
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
        let candidate = self.path("nginx/nginx.conf.candidate");
        fs::write(&candidate, nginx_conf).context("write nginx's candidate config")?;
        if let Err(err) = self.nginx_test(&candidate) {
            let _ = fs::remove_file(&candidate);
            return Err(err);
        }
        fs::rename(&candidate, self.conf_path()).context("install nginx's config")?;
        if self.live_pid(Part::Balancer).is_some() {
            let (sh, nginx) = (&self.sh, self.nginx()?);
            let (prefix, conf, err) = (self.prefix_arg(), self.conf_path(), self.error_log());
            cmd!(sh, "{nginx} -s reload -p {prefix} -c {conf} -e {err}")
                .quiet()
                .ignore_stdout()
                .run()
                .context("reload nginx")?;
        }
        Ok(())
    }

    fn current_config(&self) -> Result<Option<String>> {
        self.read_file("nginx/nginx.conf")
    }

    fn read_file(&self, rel: &str) -> Result<Option<String>> {
        match fs::read_to_string(self.path(rel)) {
            Ok(text) => Ok(Some(text)),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(err) => Err(err).with_context(|| format!("read {}", self.path(rel).display())),
        }
    }

    fn write_file_atomic(&self, rel: &str, contents: &str) -> Result<()> {
        let path = self.path(rel);
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir)?;
        }
        let tmp = path.with_file_name(format!(
            ".{}.{}.tmp",
            path.file_name().unwrap_or_default().to_string_lossy(),
            std::process::id()
        ));
        fs::write(&tmp, contents).with_context(|| format!("write {}", tmp.display()))?;
        fs::rename(&tmp, &path).with_context(|| format!("replace {}", path.display()))
    }

    fn append_line(&self, rel: &str, line: &str) -> Result<()> {
        let path = self.path(rel);
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir)?;
        }
        let mut file = OpenOptions::new().create(true).append(true).open(&path)?;
        // One write call per line, so concurrent appenders never interleave within a line.
        file.write_all(format!("{line}\n").as_bytes())
            .with_context(|| format!("append to {}", path.display()))
    }

    fn install_generation(&self, generation: u64, green_buckets: &[u16]) -> Result<()> {
        self.ensure_dirs()?;
        let dir = self.path(&format!("routes/gen-{generation}"));
        let tmp = self.path(&format!("routes/.gen-{generation}.tmp"));
        for stale in [&dir, &tmp] {
            if stale.exists() {
                fs::remove_dir_all(stale).with_context(|| format!("remove {}", stale.display()))?;
            }
        }
        fs::create_dir(&tmp).with_context(|| format!("create {}", tmp.display()))?;
        fs::set_permissions(&tmp, fs::Permissions::from_mode(0o755))?;
        for bucket in green_buckets {
            File::create(tmp.join(bucket.to_string())).context("create a bucket file")?;
        }
        fs::rename(&tmp, &dir).with_context(|| format!("install {}", dir.display()))
    }

    fn activate_generation(&self, generation: u64) -> Result<()> {
        let name = format!("gen-{generation}");
        if !self.path(&format!("routes/{name}")).is_dir() {
            bail!("route generation {generation} is not installed");
        }
        let tmp = self.path(&format!("routes/.current.{}.tmp", std::process::id()));
        let _ = fs::remove_file(&tmp);
        std::os::unix::fs::symlink(&name, &tmp).context("create the new route symlink")?;
        fs::rename(&tmp, self.path("routes/current")).context("swap the route symlink")
    }

    fn active_generation(&self) -> Result<RouteReading> {
        let current = self.path("routes/current");
        let meta = match fs::symlink_metadata(&current) {
            Ok(meta) => meta,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                return Ok(RouteReading::Missing)
            }
            Err(err) => {
                return Ok(RouteReading::Unreadable(format!(
                    "{}: {err}",
                    current.display()
                )))
            }
        };
        if !meta.file_type().is_symlink() {
            return Ok(RouteReading::Unreadable(format!(
                "{} is not a symlink",
                current.display()
            )));
        }
        let target = fs::read_link(&current).context("read the route symlink")?;
        let Some(generation) = target
            .to_str()
            .and_then(|t| t.strip_prefix("gen-"))
            .and_then(|n| n.parse().ok())
        else {
            return Ok(RouteReading::Unreadable(format!(
                "{} points at {}, not a generation",
                current.display(),
                target.display()
            )));
        };
        // Every folder on the way must let nginx's workers through. As root (workers run as
        // `nobody`) that includes the ancestors: a checkout under `/root` (mode 700) is a
        // classic way to route everything to blue without a single error in nginx's log.
        let generation_dir = self.path(&format!("routes/gen-{generation}"));
        let root = running_as_root();
        for dir in generation_dir
            .ancestors()
            .filter(|d| root || d.starts_with(&self.state))
        {
            if let Some(why) = self.worker_cannot_enter(dir) {
                return Ok(RouteReading::Unreadable(why));
            }
        }
        let entries = match fs::read_dir(&current) {
            Ok(entries) => entries,
            Err(err) => {
                return Ok(RouteReading::Unreadable(format!(
                    "{} -> {}: {err}",
                    current.display(),
                    target.display()
                )))
            }
        };
        let mut green_buckets: Vec<u16> = entries
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
            .collect();
        green_buckets.sort_unstable();
        Ok(RouteReading::Active {
            generation,
            green_buckets,
        })
    }

    fn max_generation(&self) -> Result<u64> {
        let Ok(entries) = fs::read_dir(self.path("routes")) else {
            return Ok(0);
        };
        Ok(entries
            .filter_map(|e| {
                e.ok()?
                    .file_name()
                    .to_str()?
                    .strip_prefix("gen-")?
                    .parse::<u64>()
                    .ok()
            })
            .max()
            .unwrap_or(0))
    }

    fn prune_generations(&self, keep: &[u64]) -> Result<()> {
        let active = match self.active_generation()? {
            RouteReading::Active { generation, .. } => Some(generation),
            _ => None,
        };
        let Ok(entries) = fs::read_dir(self.path("routes")) else {
            return Ok(());
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(n) = name
                .to_str()
                .and_then(|n| n.strip_prefix("gen-"))
                .and_then(|n| n.parse::<u64>().ok())
            else {
                continue;
            };
            if !keep.contains(&n) && Some(n) != active {
                fs::remove_dir_all(entry.path())
                    .with_context(|| format!("remove {}", entry.path().display()))?;
            }
        }
        Ok(())
    }

    fn lock(&self, timeout: Duration, holder: &str) -> Result<HostLock> {
        fs::create_dir_all(&self.state).context("create the state directory")?;
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(self.path("lock"))
            .context("open the lock file")?;
        let start = Instant::now();
        loop {
            match file.try_lock() {
                Ok(()) => break,
                Err(fs::TryLockError::WouldBlock) if start.elapsed() < timeout => {
                    thread::sleep(Duration::from_millis(20));
                }
                Err(fs::TryLockError::WouldBlock) => {
                    let who = self
                        .read_file("lock.holder")?
                        .unwrap_or_else(|| "an unknown process".into());
                    bail!(
                        "another operation holds the deploy lock ({}) and did not finish within {} s: wait for it and run this again (`timeouts.lock_secs` sets the wait)",
                        who.trim(),
                        timeout.as_secs()
                    );
                }
                Err(fs::TryLockError::Error(err)) => {
                    return Err(err).context("take the deploy lock")
                }
            }
        }
        let who = format!(
            "{holder}, pid {}, since {}",
            std::process::id(),
            crate::domain::now_rfc3339()
        );
        self.write_file_atomic("lock.holder", &who)?;
        Ok(Box::new(file))
    }
}

/// Whether `pid` is a live (not zombie) process whose command line mentions `expected`.
fn process_alive(pid: u32, expected: &str) -> bool {
    let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.trim_start().chars().next());
    if matches!(state, Some('Z' | 'X') | None) {
        return false;
    }
    fs::read(format!("/proc/{pid}/cmdline"))
        .is_ok_and(|cmdline| String::from_utf8_lossy(&cmdline).contains(expected))
}

fn running_as_root() -> bool {
    fs::read_to_string("/proc/self/status").is_ok_and(|status| {
        status
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|ids| ids.split_whitespace().nth(1).map(|euid| euid == "0"))
            .unwrap_or(false)
    })
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

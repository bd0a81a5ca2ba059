//! The local runtime under test: a deployment with its own ports and state directory (so the
//! tests run in parallel), the real `xtask` binary, the real `ml-service`, a real nginx.

use std::{
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    sync::OnceLock,
};

use serde_json::{json, Value};

use super::{
    describe, free_ports, project_root, wait_until,
    xtask::{stdout, Xtask},
    Balancer, LOCAL_PORTS,
};

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

/// One deployment under test; `down` runs when it is dropped.
pub struct Deployment {
    pub name: String,
    pub dir: PathBuf,
    pub config: PathBuf,
    pub state: PathBuf,
    /// Balancer, blue, green (HTTP), then balancer, blue, green (gRPC).
    pub ports: [u16; 6],
    xtask: Xtask,
    balancer: Balancer,
}

impl Deployment {
    /// A fresh deployment named `name` (not started).
    pub fn new(name: &str) -> Deployment {
        Deployment::new_with(name, "")
    }

    /// A fresh deployment whose configuration also has `local_extra` (lines of `[local]`).
    pub fn new_with(name: &str, local_extra: &str) -> Deployment {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("local-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let ports = free_ports(LOCAL_PORTS);
        let state = dir.join("state");
        let config = dir.join("deploy.toml");
        std::fs::write(
            &config,
            format!(
                "[balancer]\nport = {}\ngrpc_port = {}\nbuckets = 100\n\
                 [blue]\nversion = \"v1.0.0\"\nport = {}\ngrpc_port = {}\n\
                 [green]\nversion = \"v1.1.0\"\nport = {}\ngrpc_port = {}\n\
                 [local]\nstate_dir = \"{}\"\n{local_extra}[timeouts]\nhealthy_secs = 30\nlock_secs = 60\n",
                ports[0],
                ports[3],
                ports[1],
                ports[4],
                ports[2],
                ports[5],
                state.display()
            ),
        )
        .unwrap();
        Deployment {
            name: name.into(),
            xtask: Xtask {
                runtime: "local",
                config: config.clone(),
                env: vec![("MLDEPLOY_SERVICE_BIN", service_bin().into())],
                echo: false,
            },
            balancer: Balancer::on_port(ports[0]),
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
        self.xtask.command(args)
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.xtask.run(args)
    }

    /// Runs `xtask args` with nobody reading its stdout (`cargo xtask … | head -0`: every write
    /// fails with EPIPE); its exit status and stderr.
    pub fn run_with_stdout_closed(&self, args: &[&str]) -> Output {
        let mut child = self
            .command(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        drop(child.stdout.take());
        child.wait_with_output().unwrap()
    }

    /// Runs `xtask args`, asserts success, returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        stdout(&self.xtask.ok(args).0)
    }

    /// Runs `xtask args`, asserts failure, returns its exit status, stdout and stderr.
    pub fn fails(&self, args: &[&str]) -> String {
        describe(&self.xtask.fails(args))
    }

    pub fn status(&self) -> Value {
        serde_json::from_str(&self.ok(&["status", "--json"])).expect("status --json is JSON")
    }

    /// `status --json` whether it succeeds or not: (succeeded, the report, stderr).
    pub fn status_anyway(&self) -> (bool, Value, String) {
        let out = self.run(&["status", "--json"]);
        let report = serde_json::from_slice(&out.stdout).expect("status --json is JSON");
        (
            out.status.success(),
            report,
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// Sets `key = value` in the deploy configuration's `[table]` (before `up`).
    pub fn configure(&self, table: &str, key: &str, value: &str) {
        let mut text = std::fs::read_to_string(&self.config).unwrap();
        let header = format!("[{table}]\n");
        if !text.contains(&header) {
            text = format!("{text}{header}");
        }
        let text = text.replacen(&header, &format!("{header}{key} = {value}\n"), 1);
        std::fs::write(&self.config, text).unwrap();
    }

    /// Sends `signal` (`STOP`, `CONT`, …) to a color's process.
    pub fn signal(&self, color: &str, signal: &str) {
        let pid = self.pid(color).to_string();
        assert!(Command::new("kill")
            .args([&format!("-{signal}"), &pid])
            .status()
            .unwrap()
            .success());
    }

    /// Asserts `status` reports this split (percent to blue, to green); returns the status.
    pub fn assert_split(&self, blue: u32, green: u32) -> Value {
        let status = self.status();
        assert_eq!(
            status["split"],
            json!({"blue": blue, "green": green}),
            "{status:#}"
        );
        status
    }

    pub fn balancer(&self) -> &Balancer {
        &self.balancer
    }

    /// The balancer's gRPC address, `http://127.0.0.1:<port>`.
    pub fn grpc_balancer(&self) -> String {
        format!("http://127.0.0.1:{}", self.ports[3])
    }

    /// `host:port` of a color's own service.
    pub fn color_addr(&self, color: &str) -> String {
        let port = if color == "blue" {
            self.ports[1]
        } else {
            self.ports[2]
        };
        format!("127.0.0.1:{port}")
    }

    /// (served color, model version) of one request through the balancer.
    pub fn served(&self) -> (String, String) {
        self.balancer.served()
    }

    /// Runs `switch args` and asserts the balancer then serves `color`.
    pub fn switch(&self, args: &[&str], color: &str, why: &str) {
        self.ok(&[&["switch"], args].concat());
        assert_eq!(self.served().0, color, "{why}");
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

//! The host's agent (`agent/` in this workspace): one `docker exec -i` per operation instead of
//! one per file operation.
//!
//! - Taking the lock starts `mldeploy-agent serve` in the balancer container and keeps its
//!   pipe open until the lock is released: every [`HostDir`](crate::runtime::HostDir) call in
//!   between is one JSON line each way on that pipe (a write and a read, or one network round
//!   trip over SSH), not a `docker exec` (about 90 ms here, plus an SSH session remotely).
//! - The agent lives in the state volume (`.agent/mldeploy-agent`). A missing one, or one that
//!   speaks another protocol, is built (static, like the service) and copied in, once.
//! - If this process dies or its connection drops while it holds the lock, the agent undoes a
//!   route swap that was not recorded yet, appends the operation's line as `interrupted` and
//!   releases the lock ([`crate::runtime::HostDir::on_interrupt`]); a lock left by an agent
//!   that died with its container is recognised as stale by the next one.
//! - Where the agent cannot run (it cannot be built here, or the container's architecture is
//!   another), the runtime falls back to one `docker exec` per file operation, and says so;
//!   [`DISABLE`] asks for that path.

use std::{
    cell::RefCell,
    io::{BufRead, BufReader, Write},
    process::{Child, ChildStdin, ChildStdout, Command, Stdio},
    rc::Rc,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use xshell::cmd;

use super::{tar::tar_program, Compose, STATE_DIR};
use crate::{images, runtime::Link};

/// The protocol the agent must speak (`agent/src/session.rs`).
pub const PROTOCOL: u64 = 3;
/// The agent's folder in the state volume.
const AGENT_DIR: &str = ".agent";
/// The agent's file name.
const AGENT_BIN: &str = "mldeploy-agent";
/// How long closing a session may take before the agent is left to notice on its own.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// `MLDEPLOY_AGENT=off` makes every file operation a `docker exec` of its own, as before the
/// agent (for comparison, or a host where it must not run).
pub const DISABLE: &str = "MLDEPLOY_AGENT=off";

/// Whether [`DISABLE`] is set.
pub fn disabled() -> bool {
    std::env::var("MLDEPLOY_AGENT").is_ok_and(|v| v.eq_ignore_ascii_case("off"))
}

/// The agent's path in the balancer container.
pub(crate) fn agent_path() -> String {
    format!("{STATE_DIR}/{AGENT_DIR}/{AGENT_BIN}")
}

/// A refusal by the agent: what kind, what it said, and for `busy`, the lock's owner.
#[derive(Debug)]
pub struct Refused {
    pub kind: String,
    pub error: String,
    pub owner: String,
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.error)
    }
}

impl std::error::Error for Refused {}

/// One open `mldeploy-agent serve` in the balancer container.
pub struct Session {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
    /// Requests sent, for tests and measurements.
    pub calls: usize,
}

/// The session shared by the runtime (its file operations) and the lock guard (which ends it).
pub type Shared = Rc<RefCell<Option<Session>>>;

impl Session {
    /// Starts a session in container `id`; `Ok(None)` when the agent there is missing or speaks
    /// another protocol (the caller installs it).
    fn start(id: &str) -> Result<Option<Session>> {
        let mut child = Command::new("docker")
            .args([
                "exec",
                "--interactive",
                id,
                &agent_path(),
                "serve",
                STATE_DIR,
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("run `docker exec` for the host's agent")?;
        let stdin = child.stdin.take();
        let mut stdout = BufReader::new(child.stdout.take().context("the agent's output")?);
        let mut greeting = String::new();
        stdout
            .read_line(&mut greeting)
            .context("read the agent's greeting")?;
        let hello: Option<Value> = serde_json::from_str(&greeting).ok();
        let protocol = hello.as_ref().and_then(|h| h["agent"].as_u64());
        if protocol == Some(PROTOCOL) {
            return Ok(Some(Session {
                child,
                stdin,
                stdout,
                calls: 0,
            }));
        }
        drop(stdin);
        let output = child.wait_with_output().context("wait for `docker exec`")?;
        // `docker exec` reports a failed start on stdout or stderr, depending on the version.
        let said = format!("{greeting}{}", String::from_utf8_lossy(&output.stderr));
        if protocol.is_some() || said.contains("no such file") || said.contains("not found") {
            return Ok(None);
        }
        bail!("the host's agent did not start: {}", said.trim());
    }

    /// Sends one request and returns the answer; a refusal is a [`Refused`] error.
    pub fn call(&mut self, request: &Value) -> Result<Value> {
        self.calls += 1;
        let stdin = self.stdin.as_mut().context("the agent session is closed")?;
        writeln!(stdin, "{request}")
            .and_then(|()| stdin.flush())
            .context("send to the host's agent (the connection to the host is gone?)")?;
        let mut line = String::new();
        let n = self
            .stdout
            .read_line(&mut line)
            .context("read the host's agent's answer")?;
        if n == 0 {
            bail!("the host's agent ended its session (the connection to the host is gone?)");
        }
        let answer: Value = serde_json::from_str(&line)
            .with_context(|| format!("the host's agent answered {line:?}"))?;
        if answer["ok"] == true {
            return Ok(answer);
        }
        let text = |key: &str| answer[key].as_str().unwrap_or_default().to_owned();
        Err(Refused {
            kind: text("kind"),
            error: text("error"),
            owner: text("owner"),
        }
        .into())
    }

    /// Ends the session: the agent sees its input end (releasing a lock still held, as after a
    /// lost connection) and exits.
    pub fn close(mut self) {
        drop(self.stdin.take());
        let deadline = Instant::now() + CLOSE_TIMEOUT;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Compose {
    /// Installs the agent in the state volume unless the one there speaks [`PROTOCOL`]: at
    /// `up`, so that the first operation does not pay for it.
    pub(crate) fn ensure_agent(&self) -> Result<()> {
        let id = self.nginx()?;
        let version = self.exec(&[&agent_path(), "--version"], None)?;
        if version.ok && version.stdout.trim() == format!("{AGENT_BIN} {PROTOCOL}") {
            return Ok(());
        }
        self.install_agent(&id)
    }

    /// Opens a session with the agent in the balancer container, installing the agent first
    /// when it is missing or outdated.
    pub(super) fn open_agent(&self) -> Result<Session> {
        let id = self.state_container()?;
        if let Some(session) = Session::start(&id)? {
            return Ok(session);
        }
        self.install_agent(&id)?;
        Session::start(&id)?.context("the host's agent does not start after it was installed")
    }

    /// Builds the agent here and copies it into the state volume.
    fn install_agent(&self, id: &str) -> Result<()> {
        let binary = images::build_agent_binary(&self.sh)?;
        let data = std::fs::read(&binary).with_context(|| format!("read {}", binary.display()))?;
        let target = format!("{id}:{STATE_DIR}");
        cmd!(self.sh, "docker cp - {target}")
            .quiet()
            .stdin(tar_program(AGENT_DIR, AGENT_BIN, &data))
            .run()
            .context("copy the host's agent into the state volume")?;
        crate::say!(
            "installed the host's agent in the state volume ({})",
            agent_path()
        );
        Ok(())
    }

    /// Runs `request` through the open session, if there is one; `None` otherwise.
    pub(super) fn via_agent(&self, request: Value) -> Result<Option<Value>> {
        match self.agent.borrow_mut().as_mut() {
            Some(session) => session.call(&request).map(Some),
            None => Ok(None),
        }
    }
}

/// The agent's answer to `read_link` as a [`Link`].
pub(super) fn link_of(answer: &Value) -> Link {
    if let Some(target) = answer["to"].as_str() {
        Link::To(target.to_owned())
    } else if let Some(why) = answer["broken"].as_str() {
        Link::Broken(why.to_owned())
    } else {
        Link::Missing
    }
}

/// The names in an answer's `names`, `None` when it is null (no such folder).
pub(super) fn names_of(answer: &Value) -> Option<Vec<String>> {
    answer["names"].as_array().map(|names| {
        names
            .iter()
            .filter_map(|n| n.as_str().map(str::to_owned))
            .collect()
    })
}

/// The lock request for `owner`.
pub(super) fn lock_request(owner: &str, timeout: Duration) -> Value {
    json!({
        "op": "lock",
        "owner": owner,
        "timeout_ms": timeout.as_millis() as u64,
        "guard_link": crate::runtime::routes::CURRENT,
        "commit_file": crate::runtime::STATE_FILE,
    })
}

/// Holds the deploy lock through the agent; dropping it releases the lock and ends the session.
pub(super) struct AgentLock {
    pub agent: Shared,
}

impl Drop for AgentLock {
    fn drop(&mut self) {
        let Some(mut session) = self.agent.borrow_mut().take() else {
            return;
        };
        if let Err(err) = session.call(&json!({ "op": "unlock" })) {
            eprintln!(
                "warning: could not release the deploy lock through the host's agent: {err:#}"
            );
        }
        session.close();
    }
}

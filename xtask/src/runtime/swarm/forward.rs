//! Local ports that reach one address on the swarm's color networks, through the balancer's
//! container: each accepted connection becomes one `docker exec -i <balancer> mldeploy-agent
//! connect <target>`, its stdin and stdout piped to the connection (the agent's `relay`).
//!
//! Why: the gates must reach every replica on its own, and replicas publish no ports (several
//! share a node, and a direct port would let clients bypass the balancer). The balancer's
//! container is on every color's network, and `docker exec` reaches it wherever the engine is
//! (a local socket, or the SSH tunnel's). A connection costs one exec (tens of milliseconds);
//! HTTP and gRPC clients keep theirs open, so a gate run opens a few per replica.

use std::{
    io::{Read, Write},
    net::{Shutdown, TcpListener, TcpStream},
    process::{Command, Stdio},
    sync::{Arc, Mutex},
    thread,
};

use anyhow::{Context, Result};

/// A local port relaying to `target`; its thread lives as long as the process (one command).
pub struct Forward {
    pub port: u16,
}

/// Finds the balancer's running container (its id), per connection: a balancer restarted
/// during the command is found again.
pub type Locate = Arc<dyn Fn() -> Result<String> + Send + Sync>;

impl Forward {
    /// Listens on `127.0.0.1:<free port>` and relays each connection to `target` (`host:port`
    /// as the balancer's container resolves it) with the agent at `agent`.
    pub fn start(locate: Locate, agent: String, target: String) -> Result<Forward> {
        let listener = TcpListener::bind("127.0.0.1:0").context("listen on a local port")?;
        let port = listener.local_addr()?.port();
        let cached: Arc<Mutex<Option<String>>> = Arc::default();
        thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let (locate, agent, target, cached) = (
                    locate.clone(),
                    agent.clone(),
                    target.clone(),
                    cached.clone(),
                );
                thread::spawn(move || {
                    let id = cached.lock().unwrap().clone();
                    let id = match id.map(Ok).unwrap_or_else(|| locate()) {
                        Ok(id) => id,
                        Err(_) => return,
                    };
                    *cached.lock().unwrap() = Some(id.clone());
                    if relay(client, &id, &agent, &target).is_err() {
                        // The container may have been replaced: look it up again next time.
                        *cached.lock().unwrap() = None;
                    }
                });
            }
        });
        Ok(Forward { port })
    }
}

/// Pipes `client` through one `docker exec` of the agent until either side closes.
fn relay(client: TcpStream, id: &str, agent: &str, target: &str) -> Result<()> {
    let mut child = Command::new("docker")
        .args(["exec", "--interactive", id, agent, "connect", target])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("run docker exec")?;
    let mut to_agent = child.stdin.take().context("the exec's stdin")?;
    let mut from_agent = child.stdout.take().context("the exec's stdout")?;
    let _ = client.set_nodelay(true);
    let mut inbound = client.try_clone()?;
    let pump = thread::spawn(move || {
        let mut buf = vec![0u8; 64 * 1024];
        while let Ok(n) = inbound.read(&mut buf) {
            if n == 0 || to_agent.write_all(&buf[..n]).is_err() || to_agent.flush().is_err() {
                break;
            }
        }
        // Dropping the pipe ends the agent's input: it shuts the connection's write half.
    });
    let mut outbound = client;
    let copied = std::io::copy(&mut from_agent, &mut outbound);
    let _ = outbound.shutdown(Shutdown::Both);
    let status = child.wait();
    let _ = pump.join();
    let copied = copied.context("relay the answer")?;
    if copied == 0 && !status.map(|s| s.success()).unwrap_or(false) {
        anyhow::bail!("the relay to {target} failed");
    }
    Ok(())
}

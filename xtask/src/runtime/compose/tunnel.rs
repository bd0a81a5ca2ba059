//! Reaching a remote deployment host: with `DOCKER_HOST=ssh://…`, one `ssh` connection for the
//! whole command, which forwards
//! - the host's balancer and direct ports (the direct ports listen on the host's loopback only);
//! - the host's Docker socket, to a socket here that every `docker` and compose call of this
//!   command then uses ([`Tunnel::engine`]): the Docker CLI would otherwise open an SSH
//!   connection of its own for every call (about half a second each, and compose v1 more than
//!   one per call). The socket's path on the host is what `DOCKER_HOST` says in an SSH session
//!   there, else `/var/run/docker.sock`; where it cannot be forwarded (or with
//!   `MLDEPLOY_ENGINE_TUNNEL=off`), the calls go over SSH as the Docker CLI does it.
//!
//! With `tcp://…` the ports are reached at the host's name; `MLDEPLOY_PUBLIC_HOST` overrides
//! both.

use std::{
    path::PathBuf,
    process::Command,
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use crate::config::DeployConfig;

/// How many ports the deployment publishes on its host.
pub const PUBLISHED: usize = 6;

/// The ports the deployment publishes on its host: balancer, blue, green (HTTP), then the
/// same three for gRPC; [`port_index`] finds one.
pub fn remote_ports(config: &DeployConfig) -> [u16; PUBLISHED] {
    [
        config.balancer.port,
        config.blue.port,
        config.green.port,
        config.balancer.grpc_port,
        config.blue.grpc_port,
        config.green.grpc_port,
    ]
}

/// Where `part`'s HTTP (or gRPC) port is in [`remote_ports`].
pub fn port_index(part: crate::runtime::Part, grpc: bool) -> usize {
    use crate::{domain::Color, runtime::Part};
    let index = match part {
        Part::Balancer => 0,
        Part::Color(Color::Blue) => 1,
        Part::Color(Color::Green) => 2,
    };
    if grpc {
        index + 3
    } else {
        index
    }
}

/// An `ssh -N -L …` child forwarding local ports to the deploy host's published ports (and its
/// Docker socket); killed when dropped.
pub struct Tunnel {
    child: std::process::Child,
    /// Local ports, in the order of [`remote_ports`].
    pub local: [u16; PUBLISHED],
    /// The host's Docker socket, forwarded here, when it could be.
    pub engine: Option<PathBuf>,
    /// This tunnel's folder: the control socket and the forwarded engine socket.
    dir: PathBuf,
}

/// The variable that keeps the `ssh://` address once `DOCKER_HOST` points at the forwarded
/// socket (for this process and the ones it starts).
pub const REMOTE_DOCKER_HOST: &str = "MLDEPLOY_REMOTE_DOCKER_HOST";

/// The remote engine's address: the `ssh://` one this process was given, even after
/// `DOCKER_HOST` was pointed at the forwarded socket.
pub fn remote_docker_host() -> Option<String> {
    std::env::var(REMOTE_DOCKER_HOST)
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("DOCKER_HOST").ok())
}

/// How long an SSH tunnel may take to come up.
const TUNNEL_TIMEOUT: Duration = Duration::from_secs(15);

impl Tunnel {
    /// Opens a tunnel when `DOCKER_HOST` is `ssh://…` and `MLDEPLOY_PUBLIC_HOST` is not set.
    pub fn open_for_docker_host(config: &DeployConfig) -> Result<Option<Tunnel>> {
        if std::env::var("MLDEPLOY_PUBLIC_HOST").is_ok_and(|h| !h.is_empty()) {
            return Ok(None);
        }
        let Some((dest, port)) = remote_docker_host().as_deref().and_then(ssh_target) else {
            return Ok(None);
        };
        let dir = std::env::temp_dir().join(format!("mldeploy-ssh-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)
            .and_then(|()| {
                std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))
            })
            .with_context(|| format!("create {}", dir.display()))?;
        let control = dir.join("control");
        let mut local = [0u16; PUBLISHED];
        for slot in &mut local {
            *slot = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .context("find a free local port for the SSH tunnel")?
                .port();
        }
        let forwards: Vec<(u16, u16)> = local.iter().copied().zip(remote_ports(config)).collect();
        let mut args = vec![
            "-M".to_owned(),
            "-S".to_owned(),
            control.display().to_string(),
            "-o".to_owned(),
            "ControlPersist=no".to_owned(),
        ];
        args.extend(ssh_tunnel_args(&dest, port, &forwards));
        let mut child = Command::new("ssh")
            .args(&args)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .context("start `ssh` for a tunnel to the deploy host (is an SSH client installed?)")?;
        let started = Instant::now();
        loop {
            if let Some(status) = child.try_wait().context("wait for ssh")? {
                let mut err = String::new();
                if let Some(mut stderr) = child.stderr.take() {
                    let _ = std::io::Read::read_to_string(&mut stderr, &mut err);
                }
                bail!("the SSH tunnel to {dest} failed ({status}): {}", err.trim());
            }
            let ready = local.iter().all(|port| {
                std::net::TcpStream::connect_timeout(
                    &std::net::SocketAddr::from(([127, 0, 0, 1], *port)),
                    Duration::from_millis(200),
                )
                .is_ok()
            });
            if ready {
                let engine = match forward_engine(&dest, port, &control, &dir) {
                    _ if engine_tunnel_disabled() => None,
                    Ok(socket) => Some(socket),
                    Err(err) => {
                        eprintln!(
                            "note: the host's Docker socket is not forwarded ({err:#}); each \
                             `docker` call opens an SSH connection of its own"
                        );
                        None
                    }
                };
                return Ok(Some(Tunnel {
                    child,
                    local,
                    engine,
                    dir,
                }));
            }
            if started.elapsed() > TUNNEL_TIMEOUT {
                let _ = child.kill();
                let _ = child.wait();
                bail!(
                    "the SSH tunnel to {dest} did not open within {} s: check `ssh {dest}` works \
                     without a prompt, or set MLDEPLOY_PUBLIC_HOST to reach the ports directly",
                    TUNNEL_TIMEOUT.as_secs()
                );
            }
            thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Tunnel {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `MLDEPLOY_ENGINE_TUNNEL=off`: leave the Docker socket alone, so each `docker` call opens an
/// SSH connection of its own (for comparison).
fn engine_tunnel_disabled() -> bool {
    std::env::var("MLDEPLOY_ENGINE_TUNNEL").is_ok_and(|v| v.eq_ignore_ascii_case("off"))
}

/// Asks the host (over the tunnel's connection, `-S control`) where its Docker socket is, and
/// forwards it to `dir/docker.sock`.
fn forward_engine(
    dest: &str,
    port: Option<u16>,
    control: &std::path::Path,
    dir: &std::path::Path,
) -> Result<PathBuf> {
    let ssh = |args: &[&str]| {
        let mut cmd = Command::new("ssh");
        cmd.arg("-S").arg(control).args(["-o", "BatchMode=yes"]);
        if let Some(port) = port {
            cmd.args(["-p", &port.to_string()]);
        }
        cmd.args(args).stdin(std::process::Stdio::null());
        cmd
    };
    let out = ssh(&[dest, "printf '%s' \"${DOCKER_HOST:-}\""])
        .output()
        .context("ask the host for its DOCKER_HOST")?;
    if !out.status.success() {
        bail!(
            "`ssh {dest}` failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let remote = remote_socket(&String::from_utf8_lossy(&out.stdout))?;
    let local = dir.join("docker.sock");
    let forward = format!("{}:{remote}", local.display());
    let out = ssh(&["-O", "forward", "-L", &forward, dest])
        .output()
        .context("forward the host's Docker socket")?;
    if !out.status.success() || !local.exists() {
        bail!(
            "forwarding {remote} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(local)
}

/// The Docker socket's path on the host, from what `DOCKER_HOST` is in an SSH session there.
pub fn remote_socket(docker_host: &str) -> Result<String> {
    let docker_host = docker_host.trim();
    if docker_host.is_empty() {
        return Ok("/var/run/docker.sock".to_owned());
    }
    match docker_host.strip_prefix("unix://") {
        Some(path) if path.starts_with('/') => Ok(path.to_owned()),
        _ => bail!("the host's DOCKER_HOST is {docker_host:?}, not a unix socket"),
    }
}

/// `user@host` and the port of an `ssh://` `DOCKER_HOST`.
pub fn ssh_target(docker_host: &str) -> Option<(String, Option<u16>)> {
    let rest = docker_host.strip_prefix("ssh://")?;
    let rest = rest.split('/').next()?;
    let (user, host_port) = match rest.rsplit_once('@') {
        Some((user, host_port)) => (Some(user), host_port),
        None => (None, rest),
    };
    let (host, port) = match host_port.rsplit_once(':') {
        Some((host, port)) => (host, Some(port.parse().ok()?)),
        None => (host_port, None),
    };
    if host.is_empty() {
        return None;
    }
    let dest = match user {
        Some(user) => format!("{user}@{host}"),
        None => host.to_owned(),
    };
    Some((dest, port))
}

/// The `ssh` arguments of a tunnel: no command, fail when a forward cannot be set up, never
/// prompt.
pub fn ssh_tunnel_args(dest: &str, port: Option<u16>, forwards: &[(u16, u16)]) -> Vec<String> {
    let mut args: Vec<String> = [
        "-N",
        "-o",
        "ExitOnForwardFailure=yes",
        "-o",
        "BatchMode=yes",
        "-o",
        "ServerAliveInterval=15",
    ]
    .map(String::from)
    .to_vec();
    if let Some(port) = port {
        args.extend(["-p".to_owned(), port.to_string()]);
    }
    for (local, remote) in forwards {
        args.extend([
            "-L".to_owned(),
            format!("127.0.0.1:{local}:127.0.0.1:{remote}"),
        ]);
    }
    args.push(dest.to_owned());
    args
}

/// The host the published ports are reached at: `MLDEPLOY_PUBLIC_HOST`, else the host of a
/// `tcp://` or `ssh://` `DOCKER_HOST`, else 127.0.0.1.
pub fn published_host() -> String {
    if let Ok(host) = std::env::var("MLDEPLOY_PUBLIC_HOST") {
        if !host.is_empty() {
            return host;
        }
    }
    std::env::var("DOCKER_HOST")
        .ok()
        .and_then(|url| docker_host_name(&url))
        .unwrap_or_else(|| "127.0.0.1".into())
}

/// The host name in a remote `DOCKER_HOST` (`ssh://user@host:22`, `tcp://host:2376`).
pub fn docker_host_name(url: &str) -> Option<String> {
    let rest = url
        .strip_prefix("ssh://")
        .or_else(|| url.strip_prefix("tcp://"))?;
    let rest = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
    let host = rest.split(['/', ':']).next()?;
    (!host.is_empty()).then(|| host.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hosts_socket_is_what_its_docker_host_says_or_the_default() {
        assert_eq!(remote_socket("").unwrap(), "/var/run/docker.sock");
        assert_eq!(
            remote_socket("unix:///run/user/1000/docker.sock\n").unwrap(),
            "/run/user/1000/docker.sock"
        );
        assert!(remote_socket("tcp://10.0.0.1:2375").is_err());
        assert!(remote_socket("unix://relative.sock").is_err());
    }

    #[test]
    fn ssh_docker_hosts_become_tunnels() {
        assert_eq!(
            ssh_target("ssh://deploy@example.org"),
            Some(("deploy@example.org".to_owned(), None))
        );
        assert_eq!(
            ssh_target("ssh://u@h.example:2222"),
            Some(("u@h.example".to_owned(), Some(2222)))
        );
        assert_eq!(
            ssh_target("ssh://h.example"),
            Some(("h.example".to_owned(), None))
        );
        assert_eq!(ssh_target("tcp://h:2376"), None);
        assert_eq!(ssh_target("ssh://u@"), None);
        let args = ssh_tunnel_args("u@h", Some(2222), &[(40000, 8080), (40001, 8081)]);
        assert_eq!(
            args.join(" "),
            "-N -o ExitOnForwardFailure=yes -o BatchMode=yes -o ServerAliveInterval=15 -p 2222 \
             -L 127.0.0.1:40000:127.0.0.1:8080 -L 127.0.0.1:40001:127.0.0.1:8081 u@h"
        );
    }

    #[test]
    fn docker_host_names() {
        assert_eq!(
            docker_host_name("ssh://deploy@example.org").as_deref(),
            Some("example.org")
        );
        assert_eq!(
            docker_host_name("ssh://u@h.example:2222").as_deref(),
            Some("h.example")
        );
        assert_eq!(
            docker_host_name("tcp://10.0.0.5:2376").as_deref(),
            Some("10.0.0.5")
        );
        assert_eq!(docker_host_name("unix:///var/run/docker.sock"), None);
    }
}

//! `mldeploy-agent`: the deploy host's side of the host state directory.
//!
//! The compose runtime copies this static binary into the state volume at `up` and runs one
//! `mldeploy-agent serve <state dir>` per operation inside the balancer container (one
//! `docker exec -i`, so one SSH session against a remote engine). The deploy tool then sends
//! its file operations and the lock as JSON lines over that one pipe ([`session`]): each costs
//! a write and a read on a connection that is already open, not a `docker exec` of its own.
//!
//! The agent also makes a lost connection safe: when its input ends while it holds the lock
//! (the client died, or its SSH connection dropped), it puts back the route it found if the
//! operation had swapped it without recording the new state, logs what it did, and releases
//! the lock. A lock whose agent died with its container is recognised as stale by the next one.
//!
//! `mldeploy-agent mux` relays many TCP connections over stdin and stdout as frames
//! ([`relay`]), so the swarm runtime reaches each replica from the balancer's networks with one
//! `docker exec` per command; `mldeploy-agent connect <host:port>` relays one connection as raw
//! bytes (for trying a replica by hand).
//!
//! `mldeploy-agent --version` prints the protocol version the deploy tool checks.

mod ops;
use mldeploy_agent::relay;
mod session;

use std::{io, path::PathBuf, process::ExitCode};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["--version"] => {
            println!("mldeploy-agent {}", session::PROTOCOL);
            ExitCode::SUCCESS
        }
        ["serve", dir] => {
            let stdin = io::stdin().lock();
            let stdout = io::stdout().lock();
            match session::serve(PathBuf::from(dir), stdin, stdout) {
                Ok(()) => ExitCode::SUCCESS,
                Err(err) => {
                    eprintln!("mldeploy-agent: {err}");
                    ExitCode::FAILURE
                }
            }
        }
        ["mux"] => match relay::mux(io::stdin().lock(), io::stdout()) {
            Ok(()) => ExitCode::SUCCESS,
            Err(err) => {
                eprintln!("mldeploy-agent: mux: {err}");
                ExitCode::FAILURE
            }
        },
        ["connect", target] => match relay::connect(target) {
            Ok(()) => ExitCode::SUCCESS,
            Err(err) => {
                eprintln!("mldeploy-agent: connect {target}: {err}");
                ExitCode::FAILURE
            }
        },
        _ => {
            eprintln!(
                "usage: mldeploy-agent serve <state dir> | mldeploy-agent mux | mldeploy-agent connect <host:port> | mldeploy-agent --version"
            );
            ExitCode::from(2)
        }
    }
}

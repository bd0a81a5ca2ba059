//! `mldeploy-agent connect <host:port>`: one TCP connection from inside the balancer's
//! container, relayed over stdin and stdout.
//!
//! The swarm runtime reaches each replica of a color this way, for its gates and `status`:
//! replicas have no published ports (several share a node, and a direct port would bypass the
//! balancer), but the balancer's container is on every color's network. One `docker exec -i`
//! of this per connection; the deploy tool listens on a local port and pipes each accepted
//! connection through one.
//!
//! Bytes from stdin go to the connection, and its end of input shuts the connection's write
//! half; bytes from the connection go to stdout, flushed as they arrive, and the process exits
//! when the peer closes.

use std::{
    io::{self, Read, Write},
    net::{Shutdown, TcpStream, ToSocketAddrs},
    thread,
    time::Duration,
};

/// How long connecting to one resolved address may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Connects to `target` (the first of its addresses that accepts) and relays until the peer
/// closes the connection.
pub fn connect(target: &str) -> io::Result<()> {
    let stream = open(target)?;
    let _ = stream.set_nodelay(true);
    let mut upstream = stream.try_clone()?;
    thread::spawn(move || {
        let _ = io::copy(&mut io::stdin().lock(), &mut upstream);
        let _ = upstream.shutdown(Shutdown::Write);
    });
    let mut downstream = stream;
    let mut out = io::stdout().lock();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match downstream.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            Err(err) => return Err(err),
        };
        out.write_all(&buf[..n])?;
        out.flush()?;
    }
}

fn open(target: &str) -> io::Result<TcpStream> {
    let mut last = None;
    for addr in target.to_socket_addrs()? {
        match TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT) {
            Ok(stream) => return Ok(stream),
            Err(err) => last = Some(io::Error::new(err.kind(), format!("{addr}: {err}"))),
        }
    }
    Err(last.unwrap_or_else(|| {
        io::Error::new(io::ErrorKind::NotFound, format!("{target} has no address"))
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unresolvable_target_says_so() {
        let err = open("no-such-host.invalid:80").unwrap_err();
        assert!(!err.to_string().is_empty());
    }

    #[test]
    fn a_closed_port_names_the_address() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let err = open(&addr.to_string()).unwrap_err();
        assert!(err.to_string().contains(&addr.to_string()), "{err}");
    }
}

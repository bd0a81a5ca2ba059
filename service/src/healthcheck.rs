//! `ml-service healthcheck`: asks this service's own `/health` and reports, for container health
//! checks in an image that has no shell and no curl.
//!
//! Steps: connect to `HOST:PORT` (loopback when `HOST` is every interface, the default); send
//! `GET /health`; succeed on a 200 whose body says `"status":"ok"`. Plain `std::net`, so it works in a static binary with no `/etc` files.

use std::{
    io::{Read, Write},
    net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream},
    time::Duration,
};

/// How long the whole check may take.
pub const TIMEOUT: Duration = Duration::from_secs(3);

/// The address to check for a service listening on `host:port`: loopback for an unspecified
/// host (`0.0.0.0` or `::`), the host itself otherwise.
pub fn target(host: IpAddr, port: u16) -> SocketAddr {
    let host = if host.is_unspecified() {
        IpAddr::V4(Ipv4Addr::LOCALHOST)
    } else {
        host
    };
    SocketAddr::new(host, port)
}

/// Checks `http://{addr}/health`. Returns the body on success, the reason otherwise.
pub fn check(addr: SocketAddr, timeout: Duration) -> Result<String, String> {
    let mut stream = TcpStream::connect_timeout(&addr, timeout)
        .map_err(|err| format!("cannot connect to {addr}: {err}"))?;
    stream
        .set_read_timeout(Some(timeout))
        .map_err(|err| err.to_string())?;
    stream
        .set_write_timeout(Some(timeout))
        .map_err(|err| err.to_string())?;
    stream
        .write_all(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .map_err(|err| format!("cannot send the request to {addr}: {err}"))?;
    let mut raw = Vec::new();
    stream
        .read_to_end(&mut raw)
        .map_err(|err| format!("no answer from {addr}: {err}"))?;
    judge(&String::from_utf8_lossy(&raw))
}

/// Whether a raw HTTP response is a healthy answer. Returns the body, or why it is not.
pub fn judge(response: &str) -> Result<String, String> {
    let status_line = response.lines().next().unwrap_or("");
    let status = status_line.split_whitespace().nth(1).unwrap_or("");
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b)
        .unwrap_or("");
    if status != "200" {
        return Err(format!("unhealthy: {status_line:?}"));
    }
    let value: serde_json::Value = serde_json::from_str(body.trim())
        .map_err(|err| format!("unhealthy: the body is not JSON ({err})"))?;
    if value.get("status").and_then(|s| s.as_str()) != Some("ok") {
        return Err(format!("unhealthy: {body}"));
    }
    Ok(body.trim().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unspecified_host_is_checked_on_loopback() {
        assert_eq!(
            target("0.0.0.0".parse().unwrap(), 8081).to_string(),
            "127.0.0.1:8081"
        );
        assert_eq!(
            target("10.1.2.3".parse().unwrap(), 80).to_string(),
            "10.1.2.3:80"
        );
    }

    #[test]
    fn only_a_200_saying_ok_is_healthy() {
        let ok = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\r\n{\"status\":\"ok\",\"version\":\"v1.0.0\"}";
        assert!(judge(ok).unwrap().contains("v1.0.0"));
        assert!(judge("HTTP/1.1 503 Service Unavailable\r\n\r\n{}").is_err());
        assert!(judge("HTTP/1.1 200 OK\r\n\r\n{\"status\":\"starting\"}").is_err());
        assert!(judge("HTTP/1.1 200 OK\r\n\r\nnot json").is_err());
        assert!(judge("").is_err());
    }
}

//! Plain HTTP/1.1 over `TcpStream`: what the tests send is exactly one request per call, with no
//! connection pool that could resend it behind the test's back, and what comes back is parsed
//! strictly (a response that cannot be parsed is an error, never skipped).

use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader, Read, Write},
    net::TcpStream,
    time::Duration,
};

/// How long one request may take, connecting, writing or reading.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// One connection to `addr` (`host:port`), with [`TIMEOUT`] on reads and writes.
pub fn connect(addr: &str) -> Result<BufReader<TcpStream>, String> {
    let stream = TcpStream::connect(addr).map_err(|e| format!("connect: {e}"))?;
    stream
        .set_read_timeout(Some(TIMEOUT))
        .and_then(|()| stream.set_write_timeout(Some(TIMEOUT)))
        .and_then(|()| stream.set_nodelay(true))
        .map_err(|e| format!("configure the socket: {e}"))?;
    Ok(BufReader::new(stream))
}

/// A parsed response.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    /// Names lower-cased, in the order received.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// The server closes the connection after this response (`Connection: close`, HTTP/1.0
    /// without keep-alive, or a body delimited by the close itself).
    pub closes: bool,
}

impl Response {
    /// The value of header `name` (lower-case), or "".
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map_or("", |(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Writes one request on `conn` and reads its response. Nothing is ever sent twice.
pub fn exchange(
    conn: &mut BufReader<TcpStream>,
    host: &str,
    method: &str,
    path: &str,
    body: Option<&str>,
    close: bool,
) -> Result<Response, String> {
    exchange_with(conn, host, method, path, body, close, "")
}

/// [`exchange`] with `headers` (complete `Name: value\r\n` lines) added to the request.
pub fn exchange_with(
    conn: &mut BufReader<TcpStream>,
    host: &str,
    method: &str,
    path: &str,
    body: Option<&str>,
    close: bool,
    headers: &str,
) -> Result<Response, String> {
    let mut request = format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\n{headers}");
    if close {
        request.push_str("Connection: close\r\n");
    }
    if let Some(body) = body {
        request.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        ));
    } else {
        request.push_str("\r\n");
    }
    conn.get_mut()
        .write_all(request.as_bytes())
        .map_err(|e| format!("write the request: {e}"))?;
    read_response(conn)
}

/// `GET path` on a connection of its own (closed after the response).
pub fn get(addr: &str, path: &str) -> Result<Response, String> {
    exchange(&mut connect(addr)?, addr, "GET", path, None, true)
}

/// `GET path` with extra request headers, on a connection of its own.
pub fn get_with(addr: &str, path: &str, headers: &[(&str, &str)]) -> Result<Response, String> {
    let mut conn = connect(addr)?;
    let mut request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    conn.get_mut()
        .write_all(request.as_bytes())
        .map_err(|e| format!("write the request: {e}"))?;
    read_response(&mut conn)
}

/// Reads one response; every way it can go wrong is an error naming the stage.
pub fn read_response(conn: &mut BufReader<TcpStream>) -> Result<Response, String> {
    let mut line = String::new();
    let n = conn
        .read_line(&mut line)
        .map_err(|e| format!("read the status line: {e}"))?;
    if n == 0 {
        return Err("connection closed with no response".into());
    }
    let mut parts = line.split_whitespace();
    let version = parts.next().unwrap_or_default().to_owned();
    let status: u16 = match (version.starts_with("HTTP/1."), parts.next()) {
        (true, Some(code)) => code
            .parse()
            .map_err(|_| format!("bad status line {line:?}"))?,
        _ => return Err(format!("bad status line {line:?}")),
    };
    if !line.ends_with("\r\n") {
        return Err(format!("status line cut short: {line:?}"));
    }
    let mut headers = Vec::new();
    loop {
        line.clear();
        conn.read_line(&mut line)
            .map_err(|e| format!("read the headers: {e}"))?;
        if !line.ends_with("\r\n") {
            return Err(format!("headers cut short at {line:?}"));
        }
        let header = line.trim_end();
        if header.is_empty() {
            break;
        }
        let (name, value) = header
            .split_once(':')
            .ok_or(format!("bad header {header:?}"))?;
        headers.push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
    }
    let get = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.to_ascii_lowercase())
    };
    let connection = get("connection").unwrap_or_default();
    let mut closes = connection == "close" || (version == "HTTP/1.0" && connection != "keep-alive");
    let body = if get("transfer-encoding").is_some_and(|te| te.contains("chunked")) {
        read_chunked(conn)?
    } else if let Some(length) = get("content-length") {
        let length: usize = length
            .parse()
            .map_err(|_| format!("bad Content-Length {length:?}"))?;
        let mut body = vec![0; length];
        conn.read_exact(&mut body)
            .map_err(|e| format!("read the body ({length} bytes): {e}"))?;
        body
    } else if status == 204 || status == 304 || (100..200).contains(&status) {
        Vec::new()
    } else {
        // Delimited by the server closing the connection.
        closes = true;
        let mut body = Vec::new();
        conn.read_to_end(&mut body)
            .map_err(|e| format!("read the body up to the close: {e}"))?;
        body
    };
    Ok(Response {
        status,
        headers,
        body,
        closes,
    })
}

fn read_chunked(conn: &mut BufReader<TcpStream>) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    let mut line = String::new();
    loop {
        line.clear();
        conn.read_line(&mut line)
            .map_err(|e| format!("read a chunk size: {e}"))?;
        let size = line.trim_end().split(';').next().unwrap_or_default();
        let size = usize::from_str_radix(size.trim(), 16)
            .map_err(|_| format!("bad chunk size line {line:?}"))?;
        let mut chunk = vec![0; size + 2];
        if size == 0 {
            // The trailer section: header lines up to an empty one.
            loop {
                line.clear();
                conn.read_line(&mut line)
                    .map_err(|e| format!("read the trailer: {e}"))?;
                if line == "\r\n" {
                    return Ok(body);
                }
                if line.is_empty() {
                    return Err("connection closed in the trailer".into());
                }
            }
        }
        conn.read_exact(&mut chunk)
            .map_err(|e| format!("read a chunk ({size} bytes): {e}"))?;
        if !chunk.ends_with(b"\r\n") {
            return Err("a chunk does not end with CRLF".into());
        }
        body.extend_from_slice(&chunk[..size]);
    }
}

/// The balancer of a deployment under test, probed through `GET /health`, which the colors
/// answer (nginx's own health is elsewhere) with `X-Model-Version`; nginx adds `X-Served-By`.
#[derive(Clone, Debug)]
pub struct Balancer {
    /// `127.0.0.1:<port>`.
    pub addr: String,
}

impl Balancer {
    pub fn on_port(port: u16) -> Balancer {
        Balancer {
            addr: format!("127.0.0.1:{port}"),
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `GET /health` through the balancer, asserting it answers 2xx.
    pub fn health(&self) -> Response {
        let response = get(&self.addr, "/health")
            .unwrap_or_else(|e| panic!("GET /health through the balancer: {e}"));
        assert!(
            (200..300).contains(&response.status),
            "/health through the balancer: {}",
            response.status
        );
        response
    }

    /// (served color, model version) of one request.
    pub fn served(&self) -> (String, String) {
        let response = self.health();
        (
            response.header("x-served-by").to_owned(),
            response.header("x-model-version").to_owned(),
        )
    }

    /// The versions `n` requests were served, with how often.
    pub fn versions(&self, n: usize) -> BTreeMap<String, usize> {
        let mut seen = BTreeMap::new();
        for _ in 0..n {
            *seen
                .entry(self.health().header("x-model-version").to_owned())
                .or_insert(0) += 1;
        }
        seen
    }

    /// The version the balancer serves, asked `n` times; panics unless all agree.
    pub fn served_version(&self, n: usize) -> String {
        let seen = self.versions(n);
        assert_eq!(
            seen.len(),
            1,
            "the balancer served several versions: {seen:?}"
        );
        seen.into_keys().next().unwrap()
    }

    /// Polls until 5 requests in a row are served `version`; panics after `timeout`.
    pub fn wait_served(&self, version: &str, timeout: Duration) {
        super::wait_until_within(
            &format!("the balancer to serve {version} only"),
            timeout,
            || self.versions(5).keys().eq([version]),
        );
    }
}

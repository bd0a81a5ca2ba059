//! The harness's load client ([`common::Load`]) against a scripted HTTP server (no nginx): each
//! way a request can go wrong counts as exactly one failed request, and only a close announced
//! with `Connection: close` is not one. In particular a request written on a kept-alive
//! connection that the server closed, and that got no response, is a failure, not resent.

mod common;

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{TcpListener, TcpStream},
    thread,
};

use common::{wait_until, Balancer, Load, Tally};

const GOOD_BODY: &str = r#"{"label":"setosa"}"#;

fn response(status: &str, headers: &str, body: &str) -> String {
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
         X-Model-Version: v9\r\n{headers}\r\n{body}",
        body.len()
    )
}

/// Reads one request off `conn`; false at the end of the connection.
fn read_request(conn: &mut BufReader<TcpStream>) -> bool {
    let mut length = 0;
    let mut line = String::new();
    loop {
        line.clear();
        if conn.read_line(&mut line).unwrap_or(0) == 0 {
            return false;
        }
        if line == "\r\n" {
            break;
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            length = v.trim().parse().unwrap();
        }
    }
    conn.read_exact(&mut vec![0; length]).is_ok()
}

/// A server whose first connection reads one request, writes `first` and closes; every later
/// connection answers every request well, keeping the connection alive.
fn scripted_server(first: String) -> Balancer {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let balancer = Balancer::on_port(listener.local_addr().unwrap().port());
    thread::spawn(move || {
        let mut conns = listener.incoming();
        let mut conn = BufReader::new(conns.next().unwrap().unwrap());
        if read_request(&mut conn) {
            conn.get_mut().write_all(first.as_bytes()).unwrap();
        }
        drop(conn);
        for conn in conns {
            let mut conn = BufReader::new(conn.unwrap());
            while read_request(&mut conn) {
                let good = response("200 OK", "", GOOD_BODY);
                if conn.get_mut().write_all(good.as_bytes()).is_err() {
                    break;
                }
            }
        }
    });
    balancer
}

/// One client against `scripted_server(first)` until 20 requests succeeded.
fn run(first: impl Into<String>) -> Tally {
    let load = Load::start(&scripted_server(first.into()), 1);
    wait_until("20 successful requests", || load.succeeded() >= 20);
    load.finish()
}

#[test]
fn a_kept_alive_connection_closed_under_a_written_request_is_one_failure() {
    // A good answer that keeps the connection alive, then the server closes it, as nginx does
    // with idle keep-alive connections when a worker exits: the next request gets no response.
    let tally = run(response("200 OK", "", GOOD_BODY));
    assert_eq!(tally.failed, 1, "{tally}");
    let reason = &tally.errors[0];
    assert!(
        reason.contains("on a kept-alive connection"),
        "{reason}: {tally}"
    );
    assert_eq!(tally.polite_closes, 0, "{tally}");
    assert_eq!(tally.connections, 2, "{tally}");
}

#[test]
fn an_announced_close_is_not_a_failure() {
    let tally = run(response("200 OK", "Connection: close\r\n", GOOD_BODY));
    assert_eq!((tally.failed, tally.polite_closes), (0, 1), "{tally}");
    assert_eq!(tally.versions.get("v9"), Some(&tally.ok), "{tally}");
}

#[test]
fn a_chunked_answer_is_read_whole() {
    let chunked = format!(
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n\
         5\r\n{}\r\n{:x}\r\n{}\r\n0\r\n\r\n",
        &GOOD_BODY[..5],
        GOOD_BODY.len() - 5,
        &GOOD_BODY[5..]
    );
    let tally = run(chunked);
    assert_eq!((tally.failed, tally.polite_closes), (0, 1), "{tally}");
}

#[test]
fn every_bad_answer_is_exactly_one_failure_with_its_reason() {
    let close = "Connection: close\r\n";
    for (first, reason) in [
        (
            String::new(),
            "connection closed with no response (first request",
        ),
        (
            response("503 Service Unavailable", close, "{}"),
            "status 503",
        ),
        (
            response("200 OK", close, r#"{"label":"virginica"}"#),
            "wrong answer",
        ),
        (
            response("200 OK", "", GOOD_BODY).replace("Content-Length: 18", "Content-Length: 99"),
            "read the body (99 bytes)",
        ),
        ("HTTP/1.1 OK\r\n\r\n".to_owned(), "bad status line"),
        ("HTTP/1.1 200 OK\r\nX-Cut".to_owned(), "headers cut short"),
    ] {
        let tally = run(first);
        assert_eq!(tally.failed, 1, "expected one {reason:?}: {tally}");
        assert!(tally.errors[0].contains(reason), "{reason:?}: {tally}");
    }
}

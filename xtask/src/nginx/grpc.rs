//! The balancer's gRPC server: HTTP/2 cleartext on its own port, each call routed exactly like
//! an HTTP request (so one switch moves both protocols) and passed to `grpc_<color>` with the
//! same failover and latency budget; prediction calls are mirrored while a shadow runs
//! ([`super::shadow`]).

use std::fmt::Write;

use super::{render_route, shadow, NginxParams, GRPC_UNAVAILABLE_MESSAGE, MAX_GRPC_BODY};

/// The calls nginx keeps open at once on one client connection (nginx's default is 128).
/// A call whose answer the client already has stays open in nginx until its shadow copy ends,
/// which a hung standby makes last the mirror's budget: at more calls per second on one
/// connection than this over the budget (5 120/s at 200 ms), nginx refuses new streams with
/// REFUSED_STREAM, which gRPC's own clients retry on their own; until then, nothing.
pub const GRPC_STREAMS: u32 = 1024;

/// The gRPC server. Each request is a stream, so a long-lived channel follows a switch at
/// once. gRPC answers its own errors in trailers with HTTP status 200, so only transport
/// failures move a call to the other color.
pub(super) fn render_server(w: &mut String, p: &NginxParams) {
    let _ = writeln!(w);
    let _ = writeln!(w, "    server {{");
    let _ = writeln!(w, "        listen {} http2;", p.grpc_listen);
    let _ = writeln!(
        w,
        "        # Long-lived channels: no forced reconnection after a number of calls."
    );
    let _ = writeln!(w, "        keepalive_requests 1000000;");
    let _ = writeln!(w, "        keepalive_timeout 1h;");
    let _ = writeln!(
        w,
        "        # A call stays open in nginx until its shadow copy is answered (or its budget ends),"
    );
    let _ = writeln!(
        w,
        "        # while the client has its answer and sends the next: room for {GRPC_STREAMS} such calls"
    );
    let _ = writeln!(
        w,
        "        # per connection, so that a slow standby does not make nginx refuse new calls."
    );
    let _ = writeln!(w, "        http2_max_concurrent_streams {GRPC_STREAMS};");
    let _ = writeln!(
        w,
        "        # The service answers an oversized message with RESOURCE_EXHAUSTED itself."
    );
    let _ = writeln!(w, "        client_max_body_size {MAX_GRPC_BODY};");
    if p.resolver.is_some() {
        // The failover location's own error page: a second redirect.
        let _ = writeln!(w, "        recursive_error_pages on;");
    }
    let _ = writeln!(w);
    shadow::render_grpc(w, p, |w, shadow_id| render_pass(w, p, shadow_id));
    let _ = writeln!(w, "        location / {{");
    render_route(w, p);
    render_pass(w, p, "\"\"");
    let _ = writeln!(w, "        }}");
    let _ = writeln!(w);
    let _ = writeln!(
        w,
        "        # A call nginx could not complete on either color: UNAVAILABLE, the status gRPC"
    );
    let _ = writeln!(
        w,
        "        # clients and their retry policies understand, instead of an HTML error page."
    );
    let _ = writeln!(w, "        location @grpc_unavailable {{");
    let _ = writeln!(w, "            default_type application/grpc;");
    let _ = writeln!(w, "            add_header grpc-status 14 always;");
    let _ = writeln!(
        w,
        "            add_header grpc-message \"{GRPC_UNAVAILABLE_MESSAGE}\" always;"
    );
    let _ = writeln!(w, "            return 204;");
    let _ = writeln!(w, "        }}");
    if p.resolver.is_some() {
        let _ = writeln!(w);
        let _ = writeln!(
            w,
            "        # Every address of the routed color failed before the call began: the other color."
        );
        let _ = writeln!(w, "        location @grpc_failover {{");
        render_pass_to(w, p, "\"\"", "$other_grpc");
        let _ = writeln!(w, "            error_page 502 503 504 = @grpc_unavailable;");
        let _ = writeln!(w, "        }}");
    }
    let _ = writeln!(w, "    }}");
}
/// Passes the call to `grpc_$color` with failover to the other color and the latency budget;
/// `shadow_id` is the `X-Shadow-Id` sent upstream (`""`: none, and a client's own is dropped).
fn render_pass(w: &mut String, p: &NginxParams, shadow_id: &str) {
    if p.resolver.is_some() {
        render_pass_to(w, p, shadow_id, "$color_grpc");
        let _ = writeln!(w, "            error_page 502 504 = @grpc_failover;");
    } else {
        render_pass_to(w, p, shadow_id, "grpc_$color");
        let _ = writeln!(w, "            error_page 502 503 504 = @grpc_unavailable;");
    }
}

/// The passing of [`render_pass`] to `target` (an upstream's name, or a `host:port` resolved
/// per request), without its error page.
fn render_pass_to(w: &mut String, p: &NginxParams, shadow_id: &str, target: &str) {
    let budget = p.read_timeout_secs.max(1);
    let _ = writeln!(w, "            grpc_pass grpc://{target};");
    let _ = writeln!(w, "            grpc_set_header X-Request-Id $req_id;");
    let _ = writeln!(w, "            grpc_set_header X-Shadow-Id {shadow_id};");
    let _ = writeln!(w, "            grpc_connect_timeout 1s;");
    let _ = writeln!(w, "            grpc_send_timeout {budget}s;");
    let _ = writeln!(w, "            grpc_read_timeout {budget}s;");
    // Never `non_idempotent`: a call nginx has begun to send is not sent again. Unbuffered,
    // it could not be anyway; buffered (a mirrored call's body is read first), nginx 1.22
    // resends it as a broken stream that the other color resets ("upstream rejected request
    // with error 5"), which marks that color down too and fails every call for `fail_timeout`.
    let _ = writeln!(
        w,
        "            grpc_next_upstream error timeout http_502 http_503 http_504;"
    );
    let _ = writeln!(w, "            grpc_next_upstream_tries 3;");
    let _ = writeln!(
        w,
        "            grpc_next_upstream_timeout {}s;",
        (2 * budget + 2).max(10)
    );
    let _ = writeln!(w, "            add_header X-Served-By $served_by always;");
    let _ = writeln!(w, "            add_header X-Routed-To $color always;");
}

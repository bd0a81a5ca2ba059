//! Shadow traffic in the balancer's config: prediction requests whose bucket is listed in the
//! live shadow generation (`<shadow_dir>/<color>-<bucket>`) are also sent, by nginx's `mirror`,
//! to that color, over HTTP and over gRPC alike.
//!
//! - Both copies carry `X-Shadow-Id` (nginx's own request id, never the client's), which the
//!   colors record their answers under; the client only ever gets the routed color's answer.
//! - The mirror has a short budget of its own (`shadow_timeout_ms`), and a standby that misses
//!   it is skipped for a while: on an HTTP/1.1 connection nginx reads the client's next request
//!   only once the mirror has finished. (On HTTP/2, each call is a stream of its own, so gRPC
//!   clients never wait for the mirror.)
//! - With no shadow generation (or an empty one) the mirror answers itself at once (204).
//! - nginx's gRPC proxy needs the call's path in the request URI and `grpc_pass` takes none,
//!   so the gRPC mirror rewrites its URI back to the call's own (`$request_uri`). Only unary
//!   prediction methods are mirrored: `mirror` reads the whole request body first, which a
//!   streaming call (health Watch, reflection) never finishes sending.

use std::fmt::Write;

use super::{quote, render_route, NginxParams};

/// The unary gRPC methods that predict, as a location regex: the ones the colors journal.
const GRPC_PREDICTIONS: &str = r"^/(prediction\.PredictionService/(Predict|PredictBatch)|inference\.GRPCInferenceService/ModelInfer)$";

/// The mirror's own upstreams, for each protocol one per color with no other color as backup
/// (a copy is never sent to the active color instead), skipped for 5 s after missing the
/// mirror's budget. nginx never marks the only server of a group down, so each has the sink
/// (nginx itself, answering at once) as a backup: while the color is marked down, copies go
/// there. And the `$shadow_id` every copy carries.
pub(super) fn render_upstreams(w: &mut String, p: &NginxParams) {
    let http_sink = format!("unix:{}", sink(p, "http"));
    let grpc_sink = format!("unix:{}", sink(p, "grpc"));
    if p.resolver.is_some() {
        // Resolved per request like the routes; without an upstream block there is no sink to
        // fall back to, so a hung standby costs each copy its budget.
        let _ = writeln!(
            w,
            "    map $shadow_to $shadow_http {{\n        green {};\n        default {};\n    }}",
            quote(&p.green),
            quote(&p.blue)
        );
        let _ = writeln!(
            w,
            "    map $shadow_to $shadow_grpc {{\n        green {};\n        default {};\n    }}",
            quote(&p.green_grpc),
            quote(&p.blue_grpc)
        );
    }
    let upstreams = if p.resolver.is_some() {
        Vec::new()
    } else {
        vec![
            ("shadow_blue", &p.blue, &http_sink),
            ("shadow_green", &p.green, &http_sink),
            ("shadow_grpc_blue", &p.blue_grpc, &grpc_sink),
            ("shadow_grpc_green", &p.green_grpc, &grpc_sink),
        ]
    };
    for (name, addr, sink) in upstreams {
        let _ = writeln!(w, "    upstream {name} {{");
        let _ = writeln!(w, "        zone upstream_{name} 64k;");
        let _ = writeln!(w, "        server {addr} max_fails=1 fail_timeout=5s;");
        let _ = writeln!(w, "        server {sink} backup;");
        let _ = writeln!(w, "        keepalive 16;");
        let _ = writeln!(w, "    }}");
    }
    let _ = writeln!(
        w,
        "    # X-Shadow-Id upstream: nginx's request id while a shadow samples the request."
    );
    let _ = writeln!(
        w,
        "    map $shadow_to $shadow_id {{\n        \"\" \"\";\n        default $request_id;\n    }}"
    );
}

/// The HTTP server's prediction location (routed as `location /`, and mirrored while a shadow
/// runs), its mirror, and the refusal of the journals' path.
pub(super) fn render_http(w: &mut String, p: &NginxParams) {
    let _ = writeln!(
        w,
        "        # Prediction requests: routed as above, and mirrored while a shadow runs."
    );
    let _ = writeln!(
        w,
        "        location ~ ^/(predict|v2/models/[^/]+(/versions/[^/]+)?/infer)$ {{"
    );
    render_route(w, p);
    render_pick(w, p);
    super::render_proxy(w, p, "$shadow_id");
    let _ = writeln!(w, "        }}");
    let _ = writeln!(w);
    render_mirror_head(w);
    let target = if p.resolver.is_some() {
        "$shadow_http"
    } else {
        "shadow_$shadow_to"
    };
    let _ = writeln!(w, "            proxy_pass http://{target}$request_uri;");
    let _ = writeln!(w, "            proxy_http_version 1.1;");
    let _ = writeln!(w, "            proxy_set_header Connection \"\";");
    let _ = writeln!(w, "            proxy_set_header Host $host;");
    render_budget(w, p, "proxy");
    let _ = writeln!(w, "        }}");
    let _ = writeln!(w);
    let _ = writeln!(
        w,
        "        # The colors' shadow journals are read on their direct ports, never through here."
    );
    let _ = writeln!(w, "        location ^~ /_shadow/ {{");
    let _ = writeln!(w, "            access_log off;");
    let _ = writeln!(w, "            default_type application/json;");
    let _ = writeln!(w, "            return 404 '{{\"error\":\"not found\"}}';");
    let _ = writeln!(w, "        }}");
}

/// The gRPC server's prediction location and its mirror; `pass` renders the routed call's
/// `grpc_pass` and its settings, given the `X-Shadow-Id` to send.
pub(super) fn render_grpc(w: &mut String, p: &NginxParams, pass: impl Fn(&mut String, &str)) {
    let _ = writeln!(
        w,
        "        # Prediction calls: routed as below, and mirrored while a shadow runs."
    );
    let _ = writeln!(w, "        location ~ {GRPC_PREDICTIONS} {{");
    render_route(w, p);
    render_pick(w, p);
    pass(w, "$shadow_id");
    let _ = writeln!(w, "        }}");
    let _ = writeln!(w);
    render_mirror_head(w);
    let _ = writeln!(w, "            rewrite ^ $request_uri break;");
    let target = if p.resolver.is_some() {
        "$shadow_grpc"
    } else {
        "shadow_grpc_$shadow_to"
    };
    let _ = writeln!(w, "            grpc_pass grpc://{target};");
    render_budget(w, p, "grpc");
    let _ = writeln!(w, "        }}");
    let _ = writeln!(w);
}

/// The sink: one nginx server, on a unix socket per protocol, that answers every copy at once.
pub(super) fn render_sink(w: &mut String, p: &NginxParams) {
    let _ = writeln!(w);
    let _ = writeln!(
        w,
        "    # The shadow sink: where copies go while the standby is marked down."
    );
    let _ = writeln!(w, "    server {{");
    let _ = writeln!(w, "        listen unix:{};", sink(p, "http"));
    let _ = writeln!(w, "        listen unix:{} http2;", sink(p, "grpc"));
    let _ = writeln!(w, "        access_log off;");
    let _ = writeln!(w, "        return 204;");
    let _ = writeln!(w, "    }}");
}

/// The sink's socket for `protocol`, in nginx's temporary folder.
fn sink(p: &NginxParams, protocol: &str) -> String {
    match protocol {
        "http" => format!("{}/shadow-sink.sock", p.temp_dir),
        _ => format!("{}/shadow-{protocol}-sink.sock", p.temp_dir),
    }
}

/// Sets `$shadow_to` to the color this request's bucket is mirrored to (empty: none) and
/// mirrors the request to `/_shadow_mirror`.
fn render_pick(w: &mut String, p: &NginxParams) {
    let shadow = |color: &str| quote(&format!("{}/{color}-$bucket", p.shadow_dir));
    let _ = writeln!(w, "            set $shadow_to \"\";");
    for color in ["blue", "green"] {
        let _ = writeln!(w, "            if (-f {}) {{", shadow(color));
        let _ = writeln!(w, "                set $shadow_to {color};");
        let _ = writeln!(w, "            }}");
    }
    let _ = writeln!(w, "            mirror /_shadow_mirror;");
}

/// The start of the mirror's location: internal, unlogged, answered at once without a shadow.
fn render_mirror_head(w: &mut String) {
    let _ = writeln!(w, "        location = /_shadow_mirror {{");
    let _ = writeln!(w, "            internal;");
    let _ = writeln!(w, "            access_log off;");
    let _ = writeln!(w, "            if ($shadow_to = \"\") {{");
    let _ = writeln!(w, "                return 204;");
    let _ = writeln!(w, "            }}");
}

/// The copy's headers and the mirror's budget for `module` (`proxy` or `grpc`): counted as a
/// failure when missed (so the standby is skipped for `fail_timeout`), never retried.
fn render_budget(w: &mut String, p: &NginxParams, module: &str) {
    let ms = p.shadow_timeout_ms.max(1);
    let _ = writeln!(w, "            {module}_set_header X-Request-Id $req_id;");
    let _ = writeln!(w, "            {module}_set_header X-Shadow-Id $shadow_id;");
    let _ = writeln!(w, "            {module}_connect_timeout {ms}ms;");
    let _ = writeln!(w, "            {module}_send_timeout {ms}ms;");
    let _ = writeln!(w, "            {module}_read_timeout {ms}ms;");
    let _ = writeln!(w, "            {module}_next_upstream error timeout;");
    let _ = writeln!(w, "            {module}_next_upstream_tries 1;");
}

//! The balancer's static nginx config, rendered from [`NginxParams`] by a pure function.
//!
//! Both runtimes call [`render`]: the local runtime with paths under its state directory, the
//! compose runtime with the container's paths and the colors' static network addresses. The
//! config never changes during a switch. What it does per request:
//! 1. `split_clients` on nginx's random `$request_id` puts the request in one of N buckets;
//! 2. `set $color blue; if (-f <route_dir>/current/$bucket) { set $color green; }` — one `stat()`;
//!    a missing or unreadable route directory therefore means "blue", the defined default;
//! 3. `proxy_pass http://$color;` where upstream `blue` is blue + green as `backup` and `green`
//!    the mirror image, so a dead color fails over to the other instead of answering 502;
//! 4. response headers name the color that served (`X-Served-By`) and the one routed to
//!    (`X-Routed-To`); the service's own `X-Model-Version` passes through;
//! 5. a color that does not answer within the latency budget (`read_timeout_secs`: hung, or far
//!    too slow) loses the request to the other color; one failure marks it down for
//!    `fail_timeout` in every worker (the upstreams live in a shared `zone`);
//! 6. the balancer's own health (`/_balancer/health`) answers 503 with the reason when no route
//!    generation can be read, so a silent fallback to blue is seen by monitors, `status` and
//!    `smoke`;
//! 7. with `[testers]` enabled, a request naming a color in the testers' header or cookie (and
//!    carrying the token, when one is set) goes to that color whatever the bucket says.
//!
//! The gRPC server ([`grpc`]) routes each call the same way; shadow traffic ([`shadow`]) mirrors
//! prediction requests of both protocols to the standby while a shadow runs.
//!
//! Only directives of stock open-source nginx (1.22 in Debian, the official image) are used.

use std::fmt::Write;

mod grpc;
mod shadow;

/// Everything variable in the balancer's config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NginxParams {
    /// The `listen` argument: `127.0.0.1:8080` locally, `8080` in a container.
    pub listen: String,
    /// Blue's upstream address (`host:port`). An IP literal lets `X-Served-By` tell failovers
    /// apart; with a host name the header falls back to the routed color.
    pub blue: String,
    /// Green's upstream address (`host:port`).
    pub green: String,
    /// The gRPC server's `listen` argument (HTTP/2 cleartext): `127.0.0.1:50050` locally.
    pub grpc_listen: String,
    /// Blue's gRPC address (`host:port`).
    pub blue_grpc: String,
    /// Green's gRPC address (`host:port`).
    pub green_grpc: String,
    /// The route directory: `<route_dir>/current` is the symlink to the active generation.
    pub route_dir: String,
    /// The shadow link: `<shadow_dir>/<color>-<bucket>` exists for each mirrored bucket.
    pub shadow_dir: String,
    /// The mirror's budget in milliseconds (`shadow.timeout_ms`).
    pub shadow_timeout_ms: u64,
    /// How many buckets `split_clients` spreads requests over (1..=10000).
    pub buckets: u16,
    pub pid_path: String,
    pub error_log: String,
    pub access_log: String,
    /// nginx's temporary files (request bodies, proxy buffers) go in folders under this.
    pub temp_dir: String,
    /// The latency budget in seconds (`balancer.read_timeout_secs`): how long nginx waits for a
    /// color's answer before it passes the request to the other color.
    pub read_timeout_secs: u64,
    /// Tester routing (`[testers]`), when enabled.
    pub testers: Option<crate::config::Testers>,
    /// With a DNS server here (a swarm's `127.0.0.11`), the colors' addresses are host names
    /// resolved **per request** (`resolver … valid=1s`, variables in `proxy_pass`/`grpc_pass`):
    /// replicas that come, go or move are followed without a reload, and a color with no
    /// replica does not stop nginx from loading its config. A color whose every address failed
    /// passes the request to the other color (`error_page` to `@failover`). `None`: static
    /// `upstream` blocks, resolved when nginx loads its config.
    pub resolver: Option<String>,
    /// The address prefixes of each color's replicas (its own network, `10.77.11.`), so that
    /// `X-Served-By` names the color that answered when its addresses are not known in advance.
    pub color_prefixes: Vec<(crate::domain::Color, String)>,
}

/// The header that carries the testers' token.
pub const TESTER_TOKEN_HEADER: &str = "X-Deploy-Token";
/// The cookie that carries the testers' token.
pub const TESTER_TOKEN_COOKIE: &str = "deploy_token";

/// The largest request body the balancer accepts (the service has its own, smaller limit).
pub const MAX_BODY: &str = "1m";
/// The largest gRPC request the balancer passes on: above the service's own 1 MiB message
/// limit, so the service answers RESOURCE_EXHAUSTED rather than nginx a bare 413.
pub const MAX_GRPC_BODY: &str = "4m";
/// What a gRPC client is told when nginx could not complete its call on either color (the
/// color died with the call in flight, and nginx does not resend a gRPC request it has begun
/// to stream).
pub const GRPC_UNAVAILABLE_MESSAGE: &str = "balancer: the color serving this call failed before it answered; Predict is idempotent, retry it";
/// The balancer's own health endpoint, answered by nginx without touching a color.
pub const HEALTH_PATH: &str = "/_balancer/health";
/// What the balancer's health says when it cannot read a route generation.
pub const NO_ROUTE_REASON: &str = "no readable route generation (routes/current): every request \
     goes to blue whatever was switched; run `cargo xtask status`, then `cargo xtask switch --to <color>` to restore";

impl NginxParams {
    /// The parameters the committed `nginx/nginx.conf` is rendered from: the container layout
    /// (listen on 8080, colors by name on the compose network, state volume under
    /// `/var/lib/mldeploy`). The compose runtime may pass other values to [`render`].
    pub fn container_default() -> NginxParams {
        NginxParams {
            listen: "8080".into(),
            blue: "blue:8080".into(),
            green: "green:8080".into(),
            grpc_listen: crate::runtime::compose::BALANCER_GRPC_PORT.to_string(),
            blue_grpc: format!("blue:{}", crate::runtime::compose::CONTAINER_GRPC_PORT),
            green_grpc: format!("green:{}", crate::runtime::compose::CONTAINER_GRPC_PORT),
            route_dir: "/var/lib/mldeploy/routes".into(),
            shadow_dir: "/var/lib/mldeploy/shadow".into(),
            shadow_timeout_ms: crate::config::defaults::SHADOW_TIMEOUT_MS,
            buckets: crate::config::defaults::BUCKETS,
            pid_path: "/tmp/nginx.pid".into(),
            error_log: "/dev/stderr".into(),
            access_log: "/dev/stdout".into(),
            temp_dir: "/tmp/nginx".into(),
            read_timeout_secs: crate::config::defaults::READ_TIMEOUT_SECS,
            testers: None,
            resolver: None,
            color_prefixes: Vec::new(),
        }
    }
}

/// Renders the complete `nginx.conf` (main context included).
pub fn render(p: &NginxParams) -> String {
    let mut out = String::new();
    let w = &mut out;
    let q = quote;
    let _ = writeln!(
        w,
        "# Rendered by `cargo xtask` from the deploy configuration; edits are overwritten."
    );
    let _ = writeln!(
        w,
        "# Routing: see xtask/src/nginx.rs. A switch never reloads this config."
    );
    let _ = writeln!(w, "worker_processes auto;");
    // Idle gRPC channels are kept for an hour; a reload or a stop must not wait for them.
    let _ = writeln!(w, "worker_shutdown_timeout 10s;");
    let _ = writeln!(w, "pid {};", q(&p.pid_path));
    let _ = writeln!(w, "error_log {} warn;", q(&p.error_log));
    let _ = writeln!(w);
    // Each shadow copy in flight to a slow standby holds a connection of its own.
    let _ = writeln!(w, "events {{\n    worker_connections 4096;\n}}");
    let _ = writeln!(w);
    let _ = writeln!(w, "http {{");
    let _ = writeln!(w, "    server_tokens off;");
    let _ = writeln!(w, "    default_type application/octet-stream;");
    let _ = writeln!(w, "    client_max_body_size {MAX_BODY};");
    let _ = writeln!(w, "    keepalive_timeout 65s;");
    if let Some(resolver) = &p.resolver {
        let _ = writeln!(
            w,
            "    # The colors' replicas, looked up per request (cached 1 s): no reload follows them."
        );
        let _ = writeln!(w, "    resolver {resolver} valid=1s ipv6=off;");
        let _ = writeln!(w, "    resolver_timeout 2s;");
    }
    for kind in ["client_body", "proxy", "fastcgi", "uwsgi", "scgi"] {
        let _ = writeln!(
            w,
            "    {kind}_temp_path {};",
            q(&format!("{}/{kind}", p.temp_dir))
        );
    }
    let _ = writeln!(w);
    let _ = writeln!(
        w,
        "    # The client's X-Request-Id when it sent one, nginx's own otherwise."
    );
    let _ = writeln!(w, "    map $http_x_request_id $req_id {{\n        \"\" $request_id;\n        default $http_x_request_id;\n    }}");
    let _ = writeln!(w);
    let _ = writeln!(w, "    log_format json escape=json '{{\"time\":\"$time_iso8601\",\"request_id\":\"$req_id\",'");
    let _ = writeln!(w, "        '\"remote_addr\":\"$remote_addr\",\"method\":\"$request_method\",\"uri\":\"$request_uri\",'");
    let _ = writeln!(w, "        '\"status\":$status,\"bytes_sent\":$body_bytes_sent,\"request_time\":$request_time,'");
    let _ = writeln!(
        w,
        "        '\"bucket\":\"$bucket\",\"routed_to\":\"$color\",\"served_by\":\"$served_by\",'"
    );
    let _ = writeln!(
        w,
        "        '\"upstream_addr\":\"$upstream_addr\",\"upstream_status\":\"$upstream_status\",'"
    );
    let _ = writeln!(
        w,
        "        '\"upstream_response_time\":\"$upstream_response_time\"}}';"
    );
    let _ = writeln!(
        w,
        "    access_log {} json buffer=64k flush=1s;",
        q(&p.access_log)
    );
    let _ = writeln!(w);
    let _ = writeln!(
        w,
        "    # {} buckets; the route directory lists the ones that go to green.",
        p.buckets
    );
    let _ = writeln!(w, "    split_clients \"${{request_id}}\" $bucket {{");
    for (bucket, share) in bucket_shares(p.buckets).into_iter().enumerate() {
        match share {
            Some(hundredths) => {
                let _ = writeln!(w, "        {}% \"{bucket}\";", percent(hundredths));
            }
            None => {
                let _ = writeln!(w, "        * \"{bucket}\";");
            }
        }
    }
    let _ = writeln!(w, "    }}");
    let _ = writeln!(w);
    if let Some(testers) = &p.testers {
        render_testers(w, testers);
    }
    let _ = writeln!(
        w,
        "    # The color that answered: the last address nginx tried."
    );
    let _ = writeln!(w, "    map \"$color|$upstream_addr\" $served_by {{");
    for (color, addr) in [
        ("blue", &p.blue),
        ("green", &p.green),
        ("blue", &p.blue_grpc),
        ("green", &p.green_grpc),
    ] {
        if is_ip_literal(addr) {
            let _ = writeln!(w, "        \"~[| ]{}$\" {color};", regex_escape(addr));
        }
    }
    for (color, prefix) in &p.color_prefixes {
        let _ = writeln!(
            w,
            "        \"~[| ]{}[0-9.]*:[0-9]+$\" {color};",
            regex_escape(prefix)
        );
    }
    let _ = writeln!(
        w,
        "        \"~^blue\" blue;\n        \"~^green\" green;\n        default \"\";"
    );
    let _ = writeln!(w, "    }}");
    let _ = writeln!(w);
    if p.resolver.is_some() {
        render_dynamic_maps(w, p);
    }
    let upstreams = if p.resolver.is_some() {
        Vec::new()
    } else {
        vec![("blue", &p.blue, &p.green), ("green", &p.green, &p.blue)]
    };
    for (name, primary, backup) in upstreams {
        let _ = writeln!(w, "    upstream {name} {{");
        let _ = writeln!(w, "        zone upstream_{name} 64k;");
        let _ = writeln!(w, "        server {primary} max_fails=1 fail_timeout=2s;");
        let _ = writeln!(w, "        server {backup} backup;");
        let _ = writeln!(w, "        keepalive 32;");
        let _ = writeln!(w, "    }}");
    }
    let grpc_upstreams = if p.resolver.is_some() {
        Vec::new()
    } else {
        vec![
            ("grpc_blue", &p.blue_grpc, &p.green_grpc),
            ("grpc_green", &p.green_grpc, &p.blue_grpc),
        ]
    };
    for (name, primary, backup) in grpc_upstreams {
        let _ = writeln!(w, "    upstream {name} {{");
        let _ = writeln!(w, "        zone upstream_{name} 64k;");
        let _ = writeln!(w, "        server {primary} max_fails=1 fail_timeout=2s;");
        let _ = writeln!(w, "        server {backup} backup;");
        let _ = writeln!(w, "        keepalive 64;");
        let _ = writeln!(w, "    }}");
    }
    shadow::render_upstreams(w, p);
    let _ = writeln!(w);
    let _ = writeln!(w, "    server {{");
    let _ = writeln!(w, "        listen {};", p.listen);
    let _ = writeln!(w);
    let _ = writeln!(w, "        location = {HEALTH_PATH} {{");
    let _ = writeln!(w, "            access_log off;");
    let _ = writeln!(w, "            default_type application/json;");
    let current = format!("{}/current", p.route_dir);
    let _ = writeln!(w, "            if (!-d {}) {{", q(&current));
    let _ = writeln!(
        w,
        "                return 503 '{{\"status\":\"degraded\",\"reason\":\"{NO_ROUTE_REASON}\"}}';"
    );
    let _ = writeln!(w, "            }}");
    let _ = writeln!(w, "            return 200 '{{\"status\":\"ok\"}}';");
    let _ = writeln!(w, "        }}");
    let _ = writeln!(w);
    let _ = writeln!(w, "        location / {{");
    render_route(w, p);
    render_proxy(w, p, "\"\"");
    let _ = writeln!(w, "        }}");
    let _ = writeln!(w);
    shadow::render_http(w, p);
    if p.resolver.is_some() {
        let _ = writeln!(w);
        let _ = writeln!(
            w,
            "        # Every address of the routed color failed: the other color answers."
        );
        let _ = writeln!(w, "        location @failover {{");
        render_proxy_to(w, p, "\"\"", "$other_http");
        let _ = writeln!(w, "        }}");
    }
    let _ = writeln!(w, "    }}");
    grpc::render_server(w, p);
    shadow::render_sink(w, p);
    let _ = writeln!(w, "}}");
    out
}

/// Proxies to `$color` with failover to the other color and the latency budget; `shadow_id` is
/// the `X-Shadow-Id` sent upstream (`""`: none, and a client's own is dropped).
fn render_proxy(w: &mut String, p: &NginxParams, shadow_id: &str) {
    if p.resolver.is_some() {
        render_proxy_to(w, p, shadow_id, "$color_http");
        let _ = writeln!(w, "            error_page 502 504 = @failover;");
    } else {
        render_proxy_to(w, p, shadow_id, "$color");
    }
}

/// The proxying of [`render_proxy`] to `target` (an upstream's name, or a `host:port` resolved
/// per request).
fn render_proxy_to(w: &mut String, p: &NginxParams, shadow_id: &str, target: &str) {
    let _ = writeln!(w, "            proxy_pass http://{target};");
    let _ = writeln!(w, "            proxy_http_version 1.1;");
    let _ = writeln!(w, "            proxy_set_header Connection \"\";");
    let _ = writeln!(w, "            proxy_set_header Host $host;");
    let _ = writeln!(w, "            proxy_set_header X-Request-Id $req_id;");
    let _ = writeln!(w, "            proxy_set_header X-Shadow-Id {shadow_id};");
    let _ = writeln!(
        w,
        "            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;"
    );
    let budget = p.read_timeout_secs.max(1);
    let _ = writeln!(w, "            proxy_connect_timeout 1s;");
    let _ = writeln!(w, "            proxy_send_timeout {budget}s;");
    let _ = writeln!(w, "            proxy_read_timeout {budget}s;");
    let _ = writeln!(
        w,
        "            proxy_next_upstream error timeout http_502 http_503 http_504 non_idempotent;"
    );
    let _ = writeln!(w, "            proxy_next_upstream_tries 3;");
    // Long enough for one timed-out try and the retry on the other color.
    let _ = writeln!(
        w,
        "            proxy_next_upstream_timeout {}s;",
        (2 * budget + 2).max(10)
    );
    let _ = writeln!(w, "            add_header X-Served-By $served_by always;");
    let _ = writeln!(w, "            add_header X-Routed-To $color always;");
}

/// With per-request resolution: each color's addresses, and the other color's for failover.
fn render_dynamic_maps(w: &mut String, p: &NginxParams) {
    let maps = [
        ("color_http", &p.blue, &p.green),
        ("other_http", &p.green, &p.blue),
        ("color_grpc", &p.blue_grpc, &p.green_grpc),
        ("other_grpc", &p.green_grpc, &p.blue_grpc),
    ];
    for (name, blue, green) in maps {
        let _ = writeln!(
            w,
            "    map $color ${name} {{\n        green {};\n        default {};\n    }}",
            quote(green),
            quote(blue)
        );
    }
    let _ = writeln!(
        w,
        "    map $color $other_color {{\n        green blue;\n        default green;\n    }}"
    );
}

/// Picks the request's color: blue unless its bucket is listed in the live route generation,
/// then the testers' pick when there is one. Shared by the HTTP and the gRPC server, so one
/// switch moves both protocols.
fn render_route(w: &mut String, p: &NginxParams) {
    let _ = writeln!(w, "            set $color blue;");
    let _ = writeln!(
        w,
        "            if (-f {}) {{",
        quote(&format!("{}/current/$bucket", p.route_dir))
    );
    let _ = writeln!(w, "                set $color green;");
    let _ = writeln!(w, "            }}");
    if p.testers.is_some() {
        let _ = writeln!(w, "            if ($tester_color) {{");
        let _ = writeln!(w, "                set $color $tester_color;");
        let _ = writeln!(w, "            }}");
    }
}

/// Tester routing: `$tester_color` is the color a request names in the testers' header (or,
/// without the header, their cookie), when it also carries the token (if one is set); empty
/// otherwise. The location then routes to it whatever the bucket says.
fn render_testers(w: &mut String, t: &crate::config::Testers) {
    let var = |prefix: &str, name: &str| {
        format!("${prefix}_{}", name.to_ascii_lowercase().replace('-', "_"))
    };
    let (header, cookie) = (var("http", &t.header), var("cookie", &t.cookie));
    let _ = writeln!(
        w,
        "    # Testers: `{}: <color>` (or the cookie `{}`) picks the color, whatever the split.",
        t.header, t.cookie
    );
    let _ = writeln!(w, "    map \"{header}|{cookie}\" $tester_pick {{");
    let _ = writeln!(w, "        \"~^(?<c>blue|green)\\|\" $c;");
    let _ = writeln!(w, "        \"~^\\|(?<c>blue|green)$\" $c;");
    let _ = writeln!(w, "        default \"\";");
    let _ = writeln!(w, "    }}");
    if t.token.is_empty() {
        let _ = writeln!(
            w,
            "    map $tester_pick $tester_color {{\n        default $tester_pick;\n    }}"
        );
    } else {
        let (th, tc) = (
            var("http", TESTER_TOKEN_HEADER),
            var("cookie", TESTER_TOKEN_COOKIE),
        );
        let token = regex_escape(&t.token);
        let _ = writeln!(
            w,
            "    # Only with the token, in `{TESTER_TOKEN_HEADER}` or the cookie `{TESTER_TOKEN_COOKIE}`."
        );
        let _ = writeln!(w, "    map \"{th}|{tc}\" $tester_allowed {{");
        let _ = writeln!(w, "        \"~^{token}\\|\" 1;");
        let _ = writeln!(w, "        \"~\\|{token}$\" 1;");
        let _ = writeln!(w, "        default 0;");
        let _ = writeln!(w, "    }}");
        let _ = writeln!(
            w,
            "    map \"$tester_allowed:$tester_pick\" $tester_color {{"
        );
        let _ = writeln!(w, "        \"~^1:(?<c>blue|green)$\" $c;");
        let _ = writeln!(w, "        default \"\";");
        let _ = writeln!(w, "    }}");
    }
    let _ = writeln!(w);
}

/// Each bucket's share of requests in hundredths of a percent; the last is `None` (nginx's `*`,
/// "the rest"), so the shares always cover every request.
fn bucket_shares(buckets: u16) -> Vec<Option<u32>> {
    let n = u32::from(buckets.max(1));
    (0..n)
        .map(|i| (i + 1 < n).then(|| 10_000 * (i + 1) / n - 10_000 * i / n))
        .collect()
}

fn percent(hundredths: u32) -> String {
    let (whole, frac) = (hundredths / 100, hundredths % 100);
    match frac {
        0 => whole.to_string(),
        f if f % 10 == 0 => format!("{whole}.{}", f / 10),
        f => format!("{whole}.{f:02}"),
    }
}

fn quote(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

fn is_ip_literal(addr: &str) -> bool {
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
    host.trim_matches(['[', ']'])
        .parse::<std::net::IpAddr>()
        .is_ok()
}

fn regex_escape(s: &str) -> String {
    s.chars()
        .flat_map(|c| {
            if c.is_ascii_alphanumeric() || c == ':' {
                vec![c]
            } else {
                vec!['\\', c]
            }
        })
        .collect()
}

#[cfg(test)]
mod tests;

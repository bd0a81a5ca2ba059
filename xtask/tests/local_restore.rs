//! The engine's safety path end to end, on real nginx: a color that passes its gates but is not
//! what answers through the balancer is switched away from at once, and the operation log says
//! so. Also: output that nobody reads never breaks a read-only command.

mod common;

use common::{http, Deployment};

#[test]
fn a_switch_that_fails_verification_through_the_balancer_swaps_the_old_generation_back() {
    let d = Deployment::new("verify-restore");
    d.ok(&["up"]);
    // A balancer whose `green` upstream really points at blue: green passes every gate on its
    // own port, but through the balancer blue answers whatever the route says.
    let rendered = std::fs::read_to_string(d.state.join("nginx/nginx.conf")).unwrap();
    let (blue, green) = (
        format!("127.0.0.1:{}", d.ports[1]),
        format!("127.0.0.1:{}", d.ports[2]),
    );
    let miswired = rendered.replace(
        &format!("server {green} max_fails=1 fail_timeout=2s;\n        server {blue} backup;"),
        &format!("server {blue} max_fails=1 fail_timeout=2s;\n        server {green} backup;"),
    );
    assert_ne!(miswired, rendered, "the upstream block was not found");
    // A marker, to know when nginx's new workers (after the reload) answer.
    let miswired = miswired.replace(
        "add_header X-Routed-To $color always;",
        "add_header X-Routed-To $color always;\n            add_header X-Config miswired always;",
    );
    let conf = d.dir.join("miswired.conf");
    std::fs::write(&conf, miswired).unwrap();
    d.ok(&["up", "--nginx-conf", conf.to_str().unwrap()]);
    let balancer = format!("127.0.0.1:{}", d.ports[0]);
    // `up` returns once nginx's old workers are gone: every new connection gets the new config.
    for _ in 0..20 {
        let health = http::get(&balancer, "/health").unwrap();
        assert_eq!(
            health.header("x-config"),
            "miswired",
            "an old worker answered"
        );
    }

    let out = d.fails(&["switch"]);
    assert!(
        out.contains("switch failed verification; traffic is back to blue"),
        "{out}"
    );
    assert!(
        out.contains("blue, which the split green gives no traffic"),
        "{out}"
    );
    let status = d.assert_split(100, 0);
    assert_eq!(status["generation"], 1, "{status:#}");
    assert_eq!(d.served(), ("blue".to_owned(), "v1.0.0".to_owned()));
    let history = d.ok(&["history", "--json"]);
    let last: serde_json::Value = serde_json::from_str(history.lines().last().unwrap()).unwrap();
    assert_eq!(last["result"], "rolledback", "{history}");
    assert_eq!(last["split"], serde_json::json!({"blue": 100, "green": 0}));
}

#[test]
fn status_whose_output_reader_is_gone_exits_cleanly() {
    let d = Deployment::up("status-closed-stdout");
    // `cargo xtask status | head -0`: every write fails with EPIPE; it used to panic.
    let out = d.run_with_stdout_closed(&["status"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

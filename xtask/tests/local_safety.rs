//! What the traffic controls refuse, and what they report, against real nginx and `ml-service`.

mod common;

use std::{
    os::unix::fs::PermissionsExt,
    process::{Command, Stdio},
};

use common::{http, service_bin, wait_until, Deployment};
use serde_json::json;

#[test]
fn switch_to_a_color_that_is_down_is_refused_and_traffic_stays() {
    let d = Deployment::up("down-color");
    d.kill("green");
    let out = d.fails(&["switch"]);
    assert!(out.contains("gate `health` failed for green"), "{out}");
    assert!(out.contains("traffic stays blue"), "{out}");
    d.assert_split(100, 0);
    assert_eq!(d.served().0, "blue");
    let history = d.ok(&["history", "--json"]);
    assert!(
        history
            .lines()
            .last()
            .unwrap()
            .contains(r#""result":"refused""#),
        "{history}"
    );
}

#[test]
fn switch_to_a_color_serving_the_wrong_version_is_refused() {
    let d = Deployment::up("wrong-version");
    d.kill("green");
    // Something else answers on green's port: the other model version.
    let mut impostor = Command::new(service_bin())
        .env("MODEL_PATH", common::project_root().join("models/v1.0.0"))
        .env("MODEL_VERSION", "v1.0.0")
        .env("PORT", d.ports[2].to_string())
        .env("GRPC_PORT", d.ports[5].to_string())
        .env("HOST", "127.0.0.1")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_until("the impostor answers", || {
        http::get(&d.color_addr("green"), "/health").is_ok()
    });
    let out = d.fails(&["switch", "--to", "green"]);
    impostor.kill().unwrap();
    impostor.wait().unwrap();
    assert!(out.contains("it serves v1.0.0, expected v1.1.0"), "{out}");
    d.assert_split(100, 0);
}

#[test]
fn broken_static_config_is_refused_by_nginx_and_the_old_one_stays() {
    let d = Deployment::up("broken-config");
    let conf = d.state.join("nginx/nginx.conf");
    let before = std::fs::read_to_string(&conf).unwrap();
    let broken = d.dir.join("broken.conf");
    std::fs::write(
        &broken,
        before.replace("proxy_pass http://$color;", "proxy_pass http://$color"),
    )
    .unwrap();
    let out = d.fails(&["up", "--nginx-conf", broken.to_str().unwrap()]);
    assert!(out.contains("nginx -t refused the config"), "{out}");
    assert_eq!(
        std::fs::read_to_string(&conf).unwrap(),
        before,
        "the installed config is unchanged"
    );
    assert_eq!(d.served(), ("blue".to_owned(), "v1.0.0".to_owned()));
    d.switch(&[], "green", "switching still works on the old config");
}

#[test]
fn missing_or_unreadable_route_directory_serves_blue_and_status_says_so() {
    let d = Deployment::up("route-dir");
    d.switch(&["--to", "green"], "green", "an explicit switch to green");

    let routes = d.state.join("routes");
    let aside = d.state.join("routes.aside");
    std::fs::rename(&routes, &aside).unwrap();
    assert_eq!(
        d.served().0,
        "blue",
        "no route directory: the default, blue"
    );
    // Loud, not silent: `status` reports it and fails.
    let (ok, report, stderr) = d.status_anyway();
    let problems = report["problems"].to_string();
    assert!(problems.contains("no `current` generation"), "{problems}");
    assert!(
        !ok,
        "status must fail when traffic does not follow the recorded split"
    );
    assert!(
        stderr.contains("does not follow the recorded split"),
        "{stderr}"
    );
    std::fs::rename(&aside, &routes).unwrap();
    assert_eq!(d.served().0, "green");

    let current = std::fs::canonicalize(routes.join("current")).unwrap();
    std::fs::set_permissions(&current, std::fs::Permissions::from_mode(0o000)).unwrap();
    let served = d.served().0;
    let problems = d.status_anyway().1["problems"].to_string();
    std::fs::set_permissions(&current, std::fs::Permissions::from_mode(0o755)).unwrap();
    assert_eq!(
        served, "blue",
        "unreadable route generation: the default, blue"
    );
    assert!(
        problems.contains("route directory is unreadable"),
        "{problems}"
    );
    assert_eq!(d.served().0, "green");
}

#[test]
fn two_switches_at_once_serialise() {
    let d = Deployment::up("concurrent");
    let children: Vec<_> = (0..2)
        .map(|_| {
            d.command(&["switch"])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", common::describe(&out));
    }
    // Two toggles, one after the other: back on blue, two generations later, state agrees.
    let status = d.assert_split(100, 0);
    assert_eq!(status["generation"], 3, "{status:#}");
    assert_eq!(status["problems"], json!([]), "{status:#}");
    let history = d.ok(&["history", "--json"]);
    let switches: Vec<&str> = history
        .lines()
        .filter(|l| l.contains(r#""operation":"switch""#))
        .collect();
    assert_eq!(switches.len(), 2, "{history}");
    assert!(
        switches[0].contains(r#""to":{"blue":0,"green":100}"#)
            && switches[1].contains(r#""to":{"blue":100,"green":0}"#),
        "{history}"
    );
}

#[test]
fn rollback_after_a_canary_restores_all_traffic_to_the_stable_color() {
    let d = Deployment::up("canary-rollback");
    d.ok(&["canary", "--percent", "25"]);
    d.assert_split(75, 25);
    d.ok(&["smoke"]);
    d.ok(&["rollback"]);
    let status = d.assert_split(100, 0);
    assert_eq!(status["active"], "blue");
    let (served, version) = d.served();
    assert_eq!((served.as_str(), version.as_str()), ("blue", "v1.0.0"));
}

#[test]
fn deploy_puts_a_version_on_the_standby_and_switches_to_it() {
    let d = Deployment::up("deploy");
    d.ok(&["deploy", "--version", "v1.0.0"]);
    assert_eq!(d.served(), ("green".to_owned(), "v1.0.0".to_owned()));
    let out = d.fails(&["deploy", "--version", "v0.0.0-missing"]);
    assert!(out.contains("no model v0.0.0-missing"), "{out}");
    assert_eq!(
        d.served(),
        ("green".to_owned(), "v1.0.0".to_owned()),
        "a failed deploy leaves traffic alone"
    );
    d.ok(&["smoke"]);
}

#[test]
fn a_switch_waiting_too_long_for_the_lock_fails_naming_the_holder() {
    let d = Deployment::up("lock-timeout");
    let config = std::fs::read_to_string(&d.config)
        .unwrap()
        .replace("lock_secs = 60", "lock_secs = 1");
    std::fs::write(&d.config, config).unwrap();
    let lock = std::fs::OpenOptions::new()
        .write(true)
        .open(d.state.join("lock"))
        .unwrap();
    lock.try_lock().expect("nobody else holds the lock");
    std::fs::write(
        d.state.join("lock.holder"),
        "cargo xtask canary --percent 5, pid 1",
    )
    .unwrap();
    let out = d.fails(&["switch"]);
    drop(lock);
    assert!(
        out.contains(
            "another operation holds the deploy lock (cargo xtask canary --percent 5, pid 1)"
        ),
        "{out}"
    );
    assert_eq!(d.served().0, "blue", "traffic unchanged");
    d.switch(&[], "green", "the lock is free again once released");
}

#[test]
fn a_crash_between_swap_and_record_is_reported_and_the_next_operation_follows_nginx() {
    let d = Deployment::up("crash-midway");
    d.switch(&[], "green", "the first switch");
    // As if a switch back to blue had swapped the route in and died before recording it.
    let routes = d.state.join("routes");
    std::fs::create_dir(routes.join("gen-9")).unwrap();
    std::fs::set_permissions(routes.join("gen-9"), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::os::unix::fs::symlink("gen-9", routes.join("next")).unwrap();
    std::fs::rename(routes.join("next"), routes.join("current")).unwrap();
    assert_eq!(d.served().0, "blue");
    let status = d.status();
    assert_eq!(
        status["split"],
        json!({"blue": 100, "green": 0}),
        "status shows what nginx routes"
    );
    let problems = status["problems"].to_string();
    assert!(problems.contains("state.json records green (generation 2) but the route directory routes blue (generation 9)"), "{problems}");
    // The next operation starts from the live state: the standby of blue is green.
    d.switch(
        &[],
        "green",
        "the switch after the crash goes to blue's standby",
    );
    let status = d.status();
    assert_eq!(
        (status["generation"].clone(), status["problems"].clone()),
        (json!(10), json!([])),
        "{status:#}"
    );
}

#[test]
fn a_switch_whose_output_reader_is_gone_still_completes_and_records() {
    let d = Deployment::up("closed-stdout");
    // Nobody reads the output (`cargo xtask switch | head -0`): every write fails with EPIPE.
    let out = d.run_with_stdout_closed(&["switch"]);
    assert!(out.status.success(), "{}", common::describe(&out));
    d.assert_split(0, 100);
    assert_eq!(d.served(), ("green".to_owned(), "v1.1.0".to_owned()));
}

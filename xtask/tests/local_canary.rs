//! Stepped canary rollouts against real nginx and `ml-service`: analysed steps that complete,
//! and a breach that sends all traffic back to the stable color.

mod common;

use common::{Deployment, Load};
use serde_json::json;

#[test]
fn a_stepped_canary_under_load_completes_on_the_canary_color() {
    let d = Deployment::up("canary-steps");
    let load = Load::start(&d.balancer(), 2);
    load.wait_for_more(200);
    let out = d.ok(&[
        "canary",
        "--steps",
        "20,50,100",
        "--hold",
        "1",
        "--min-requests",
        "1",
    ]);
    let (succeeded, failed, errors) = load.finish();
    assert_eq!(failed, 0, "failed requests during the rollout: {errors:?}");
    assert!(succeeded > 200);
    assert!(out.contains("step 2/3: 50 % to green"), "{out}");
    assert!(out.contains("prediction requests, 0 5xx"), "{out}");
    assert!(out.contains("canary rollout done"), "{out}");
    let status = d.status();
    assert_eq!(
        status["split"],
        json!({"blue": 0, "green": 100}),
        "{status:#}"
    );
    assert_eq!(d.served(), ("green".to_owned(), "v1.1.0".to_owned()));
}

#[test]
fn a_breached_step_returns_all_traffic_to_the_stable_color() {
    let d = Deployment::up("canary-breach");
    let load = Load::start(&d.balancer(), 2);
    load.wait_for_more(200);
    // No canary can answer a million requests in a second: the first step breaches.
    let out = d.fails(&[
        "canary",
        "--steps",
        "10,100",
        "--hold",
        "1",
        "--min-requests",
        "1000000",
    ]);
    let (_, failed, errors) = load.finish();
    assert_eq!(failed, 0, "failed requests during the rollout: {errors:?}");
    assert!(out.contains("canary rollout aborted at 10 %"), "{out}");
    assert!(out.contains("at least 1000000 needed"), "{out}");
    assert!(out.contains("all traffic is back on blue"), "{out}");
    assert_eq!(d.status()["split"], json!({"blue": 100, "green": 0}));
    assert_eq!(d.served(), ("blue".to_owned(), "v1.0.0".to_owned()));
    let history = d.ok(&["history", "--json"]);
    let last = history.lines().last().unwrap();
    assert!(
        last.contains(r#""operation":"canary""#) && last.contains(r#""result":"ok""#),
        "{last}"
    );
}

#[test]
fn steps_that_do_not_rise_are_refused_before_anything_moves() {
    let d = Deployment::up("canary-bad-steps");
    let out = d.fails(&["canary", "--steps", "50,25"]);
    assert!(out.contains("--steps must rise: 50 then 25"), "{out}");
    assert_eq!(d.status()["split"], json!({"blue": 100, "green": 0}));
}

//! Stepped canary rollouts against real nginx and `ml-service`: analysed steps that complete,
//! and a breach that sends all traffic back to the stable color.

mod common;

use common::{load::under_load, Deployment, Tally};

/// `canary --steps <steps> --hold 1 --min-requests <min_requests>` on a fresh deployment `name`
/// under load: the deployment, the command's output (stdout when it must succeed, everything
/// when it must fail) and what the load saw.
fn stepped_canary(
    name: &str,
    steps: &str,
    min_requests: &str,
    succeeds: bool,
) -> (Deployment, String, Tally) {
    let d = Deployment::up(name);
    let args = [
        "canary",
        "--steps",
        steps,
        "--hold",
        "1",
        "--min-requests",
        min_requests,
    ];
    let (out, tally) = under_load(d.balancer(), 2, |_| {
        if succeeds {
            d.ok(&args)
        } else {
            d.fails(&args)
        }
    });
    assert_eq!(
        tally.failed, 0,
        "failed requests during the rollout: {:?}",
        tally.errors
    );
    (d, out, tally)
}

#[test]
fn a_stepped_canary_under_load_completes_on_the_canary_color() {
    let (d, out, tally) = stepped_canary("canary-steps", "20,50,100", "1", true);
    assert!(tally.ok > 200);
    assert!(out.contains("step 2/3: 50 % to green"), "{out}");
    assert!(out.contains("prediction requests, 0 5xx"), "{out}");
    assert!(out.contains("canary rollout done"), "{out}");
    d.assert_split(0, 100);
    assert_eq!(d.served(), ("green".to_owned(), "v1.1.0".to_owned()));
}

#[test]
fn a_breached_step_returns_all_traffic_to_the_stable_color() {
    // No canary can answer a million requests in a second: the first step breaches.
    let (d, out, _) = stepped_canary("canary-breach", "10,100", "1000000", false);
    assert!(out.contains("canary rollout aborted at 10 %"), "{out}");
    assert!(out.contains("at least 1000000 needed"), "{out}");
    assert!(out.contains("all traffic is back on blue"), "{out}");
    d.assert_split(100, 0);
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
    d.assert_split(100, 0);
}

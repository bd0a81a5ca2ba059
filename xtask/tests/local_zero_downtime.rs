//! Zero downtime through a real nginx and real `ml-service` processes: continuous keep-alive
//! load while traffic moves, and while the active color dies.

mod common;

use std::{sync::atomic::Ordering, time::Instant};

use common::{Deployment, Load};

const VERSIONS: [(&str, &str); 2] = [("blue", "v1.0.0"), ("green", "v1.1.0")];

fn version_of(color: &str) -> &'static str {
    VERSIONS.iter().find(|(c, _)| *c == color).unwrap().1
}

#[test]
fn switches_rollbacks_and_a_canary_under_load_fail_no_request() {
    let d = Deployment::up("zero-downtime");
    let load = Load::start(&d.balancer(), 4);
    let start = Instant::now();
    load.wait_for_more(200);

    for i in 0..20 {
        d.ok(&["switch"]);
        let target = if i % 2 == 0 { "green" } else { "blue" };
        assert_eq!(
            d.served(),
            (target.to_owned(), version_of(target).to_owned()),
            "after switch {}",
            i + 1
        );
        load.wait_for_more(50);
        if i == 9 {
            // A canary in between: 30 % to green, then back.
            d.ok(&["canary", "--percent", "30"]);
            assert_eq!(
                d.status()["split"],
                serde_json::json!({"blue": 70, "green": 30})
            );
            load.wait_for_more(100);
            d.ok(&["rollback"]);
            assert_eq!(d.served().0, "blue");
        }
    }
    for i in 0..5 {
        d.ok(&["rollback"]);
        let target = if i % 2 == 0 { "green" } else { "blue" };
        assert_eq!(
            d.served(),
            (target.to_owned(), version_of(target).to_owned()),
            "after rollback {}",
            i + 1
        );
        load.wait_for_more(50);
    }

    let secs = start.elapsed().as_secs_f64();
    let (ok, failed, errors) = load.finish();
    eprintln!(
        "{ok} requests in {secs:.1} s ({:.0} req/s), {failed} failed",
        ok as f64 / secs
    );
    assert_eq!(failed, 0, "failed requests during switches: {errors:?}");
    // The waits above guarantee this many successes unless a request failed first.
    assert!(
        ok >= 200 + 20 * 50 + 100 + 5 * 50,
        "only {ok} requests succeeded"
    );
    let history = d.ok(&["history", "--json", "--limit", "100"]);
    let switches = history
        .lines()
        .filter(|l| l.contains(r#""operation":"switch""#) && l.contains(r#""result":"ok""#))
        .count();
    assert_eq!(switches, 20, "{history}");
}

#[test]
fn killing_the_active_color_under_load_fails_no_request() {
    let d = Deployment::up("kill-active");
    let load = Load::start(&d.balancer(), 4);
    load.wait_for_more(200);
    d.kill("blue");
    load.wait_for_more(500);
    assert_eq!(
        d.served().0,
        "green",
        "the standby serves once the active color is gone"
    );
    let failed_now = load.failed.load(Ordering::Relaxed);
    let (_, failed, errors) = load.finish();
    assert_eq!(
        (failed_now, failed),
        (0, 0),
        "failed requests after killing blue: {errors:?}"
    );
    let status = d.status();
    let problems = status["problems"].to_string();
    assert!(
        problems.contains("blue takes 100 % of traffic but is not healthy"),
        "{status:#}"
    );
}

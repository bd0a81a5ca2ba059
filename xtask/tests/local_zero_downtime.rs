//! Zero downtime through a real nginx and real `ml-service` processes: continuous keep-alive
//! load while traffic moves, and while the active color dies.

mod common;

use std::time::Instant;

use common::{load::under_load, Deployment, Load};

const VERSIONS: [(&str, &str); 2] = [("blue", "v1.0.0"), ("green", "v1.1.0")];

fn version_of(color: &str) -> &'static str {
    VERSIONS.iter().find(|(c, _)| *c == color).unwrap().1
}

/// The `n`th (from 0) of alternating traffic moves `operation` (`switch` or `rollback`) from
/// blue: it must end on green for even `n`, on blue for odd; then 50 more requests under load.
fn toggle(d: &Deployment, load: &Load, operation: &str, n: usize) {
    d.ok(&[operation]);
    let target = ["green", "blue"][n % 2];
    assert_eq!(
        d.served(),
        (target.to_owned(), version_of(target).to_owned()),
        "after {operation} {}",
        n + 1
    );
    load.wait_for_more(50);
}

#[test]
fn switches_rollbacks_and_a_canary_under_load_fail_no_request() {
    let d = Deployment::up("zero-downtime");
    let start = Instant::now();
    let ((), tally) = under_load(d.balancer(), 4, |load| {
        for i in 0..20 {
            toggle(&d, load, "switch", i);
            if i == 9 {
                // A canary in between: 30 % to green, then back.
                d.ok(&["canary", "--percent", "30"]);
                d.assert_split(70, 30);
                load.wait_for_more(100);
                d.ok(&["rollback"]);
                assert_eq!(d.served().0, "blue");
            }
        }
        for i in 0..5 {
            toggle(&d, load, "rollback", i);
        }
    });

    let secs = start.elapsed().as_secs_f64();
    let ok = tally.ok;
    eprintln!(
        "{ok} requests in {secs:.1} s ({:.0} req/s), {} failed",
        ok as f64 / secs,
        tally.failed
    );
    assert_eq!(
        tally.failed, 0,
        "failed requests during switches: {:?}",
        tally.errors
    );
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
    let (failed_now, tally) = under_load(d.balancer(), 4, |load| {
        d.kill("blue");
        load.wait_for_more(500);
        assert_eq!(
            d.served().0,
            "green",
            "the standby serves once the active color is gone"
        );
        load.failed()
    });
    assert_eq!(
        (failed_now, tally.failed),
        (0, 0),
        "failed requests after killing blue: {:?}",
        tally.errors
    );
    let status = d.status();
    let problems = status["problems"].to_string();
    assert!(
        problems.contains("blue takes 100 % of traffic but is not healthy"),
        "{status:#}"
    );
}

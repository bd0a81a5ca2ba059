//! Testers pick a color through the balancer (`[testers]`): with the header (and the token), a
//! tester reaches the named color whatever the split, while everyone else follows the route
//! generation; without the token the header is ignored; a named color that is down fails over.

mod common;

use std::collections::BTreeMap;

use common::{http, load::under_load, Deployment};

const TOKEN: &str = "tester-token-0123456789";

/// How many of `n` `/health` answers each color served, sending `headers`.
fn served_with(d: &Deployment, headers: &[(&str, &str)], n: usize) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for _ in 0..n {
        let response = http::get_with(&d.balancer().addr, "/health", headers).unwrap();
        assert_eq!(response.status, 200, "{}", response.text());
        *counts
            .entry(response.header("x-served-by").to_owned())
            .or_insert(0) += 1;
    }
    counts
}

fn with_testers(name: &str) -> Deployment {
    let d = Deployment::new(name);
    d.configure("testers", "enabled", "true");
    d.configure("testers", "token", &format!("\"{TOKEN}\""));
    d.ok(&["up"]);
    d
}

#[test]
fn a_tester_reaches_the_named_color_during_a_canary_while_others_keep_the_split() {
    let d = with_testers("testers-canary");
    d.ok(&["canary", "--percent", "10"]);
    let tester = [("X-Deploy-Color", "green"), ("X-Deploy-Token", TOKEN)];
    let (counts, tally) = under_load(d.balancer(), 4, |load| {
        let counts = served_with(&d, &tester, 200);
        load.wait_for_more(2000);
        counts
    });
    assert_eq!(counts.get("green"), Some(&200), "{counts:?}");
    tally.assert_no_failures("testers during a canary");
    // Everyone else keeps the 90/10 split.
    let green = tally.served_by.get("green").copied().unwrap_or(0);
    let share = 100 * green / tally.ok;
    assert!(
        (3..=20).contains(&share),
        "green took {share} % of other traffic: {tally}"
    );
    // The cookie works as well as the header, and `smoke` can check either color as a tester.
    let cookie = format!("deploy_color=blue; deploy_token={TOKEN}");
    assert_eq!(
        served_with(&d, &[("Cookie", &cookie)], 50).get("blue"),
        Some(&50)
    );
    let out = d.ok(&["smoke", "--color", "green"]);
    assert!(out.contains("versions: green v1.1.0 200/200"), "{out}");
    d.ok(&["smoke", "--color", "blue"]);
}

#[test]
fn without_the_token_the_testers_header_is_ignored() {
    let d = with_testers("testers-no-token");
    let counts = served_with(&d, &[("X-Deploy-Color", "green")], 100);
    assert_eq!(counts.get("blue"), Some(&100), "{counts:?}");
    let wrong = [
        ("X-Deploy-Color", "green"),
        ("X-Deploy-Token", "not-the-token-at-all"),
    ];
    assert_eq!(served_with(&d, &wrong, 50).get("blue"), Some(&50));
}

#[test]
fn a_tester_naming_a_color_that_is_down_fails_over_like_any_request() {
    let d = with_testers("testers-down");
    d.kill("green");
    let tester = [("X-Deploy-Color", "green"), ("X-Deploy-Token", TOKEN)];
    let counts = served_with(&d, &tester, 100);
    assert_eq!(counts.get("blue"), Some(&100), "{counts:?}");
    let out = d.fails(&["smoke", "--color", "green"]);
    assert!(out.contains("FAIL  versions"), "{out}");
}

#[test]
fn smoke_as_a_tester_says_how_to_turn_testers_on() {
    let d = Deployment::up("testers-off");
    let out = d.fails(&["smoke", "--color", "green"]);
    assert!(out.contains("[testers] enabled = true"), "{out}");
}

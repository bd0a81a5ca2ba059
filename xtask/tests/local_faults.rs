//! Trust beyond the happy path, on real nginx under keep-alive load that never retries: a hung
//! color, a flaky restart during `deploy`, a deleted route generation, a corrupt state file, a
//! failed `up`, and (as root, on a small tmpfs) a full disk under the state directory.

mod common;

use std::{
    fs,
    io::Write,
    net::{TcpListener, TcpStream},
    path::Path,
    process::Command,
    time::Duration,
};

use common::{http, load::under_load, wait_until, Deployment};
use serde_json::json;

#[test]
fn a_hung_active_color_is_routed_around_within_the_latency_budget() {
    let d = Deployment::new("hung-color");
    d.configure("balancer", "read_timeout_secs", "1");
    d.ok(&["up"]);
    let (status, tally) = under_load(d.balancer(), 8, |load| {
        // A deadlock or a long pause looks like this: the socket accepts, nothing answers.
        d.signal("blue", "STOP");
        load.wait_for_more(2000);
        let status = d.status_anyway().1;
        d.signal("blue", "CONT");
        load.wait_for_more(200);
        status
    });
    tally.assert_no_failures("while blue hung");
    // Requests caught by the hang wait out the 1 s budget, then green answers them.
    assert!(
        tally.max_latency() < Duration::from_millis(2500),
        "slowest request {:?}",
        tally.max_latency()
    );
    assert!(
        tally.served_by.get("green").copied().unwrap_or(0) > 1000,
        "{tally}"
    );
    let blue = &status["colors"][0];
    assert_eq!(blue["hung"], true, "{status:#}");
    assert!(
        status["problems"]
            .to_string()
            .contains("blue takes 100 % of traffic but hangs"),
        "{status:#}"
    );
}

#[test]
fn repeated_deploys_under_load_all_succeed_and_fail_no_request() {
    let d = Deployment::up("deploy-repeat");
    let ((), tally) = under_load(d.balancer(), 4, |load| {
        for version in ["v1.0.0", "v1.1.0", "v1.0.0", "v1.1.0", "v1.0.0", "v1.1.0"] {
            d.ok(&["deploy", "--version", version]);
            assert_eq!(d.served().1, version);
            load.wait_for_more(100);
        }
    });
    tally.assert_no_failures("six deploys");
}

#[test]
fn a_deleted_route_generation_is_loud_and_the_next_operation_restores_the_intent() {
    let d = Deployment::up("deleted-route");
    d.switch(&["--to", "green"], "green", "the first switch");
    let ((), tally) = under_load(d.balancer(), 4, |load| {
        fs::remove_file(d.state.join("routes/current")).unwrap();
        wait_until("nginx falls back to blue", || d.served().0 == "blue");
        // The balancer's own health says so, with the reason.
        let health = http::get(&d.balancer().addr, "/_balancer/health").unwrap();
        assert_eq!(health.status, 503, "{}", health.text());
        assert!(
            health.text().contains("no readable route generation"),
            "{}",
            health.text()
        );
        let (ok, _, stderr) = d.status_anyway();
        assert!(
            !ok && stderr.contains("does not follow the recorded split"),
            "{stderr}"
        );
        let smoke = d.fails(&["smoke"]);
        assert!(smoke.contains("FAIL  balancer"), "{smoke}");
        // Asking for the recorded color repairs the route and leaves nothing else to do.
        let out = d.ok(&["switch", "--to", "green"]);
        assert!(
            out.contains("repaired: traffic follows the recorded split green"),
            "{out}"
        );
        assert_eq!(d.served().0, "green");
        load.wait_for_more(200);
    });
    tally.assert_no_failures("route deleted and repaired");
    let history = d.ok(&["history", "--json"]);
    assert!(history.contains(r#""operation":"repair""#), "{history}");
    d.ok(&["smoke"]);
    d.ok(&["status"]);
}

#[test]
fn a_corrupt_state_file_is_recovered_from_the_live_route() {
    let d = Deployment::up("corrupt-state");
    d.switch(&[], "green", "the first switch");
    fs::write(d.state.join("state.json"), "{\"generation\": garbage").unwrap();
    let status = d.status();
    assert_eq!(status["split"], json!({"blue": 0, "green": 100}));
    assert!(
        status["problems"].to_string().contains("cannot be read"),
        "{status:#}"
    );
    let ((), tally) = under_load(d.balancer(), 4, |_| {
        let out = d.ok(&["switch"]);
        assert!(out.contains("warning: the recorded state"), "{out}");
    });
    tally.assert_no_failures("switch after a corrupt state file");
    assert_eq!(d.served(), ("blue".to_owned(), "v1.0.0".to_owned()));
    let state: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(d.state.join("state.json")).unwrap()).unwrap();
    assert_eq!(
        state["versions"],
        json!({"blue": "v1.0.0", "green": "v1.1.0"})
    );
    assert!(d.status()["problems"].as_array().unwrap().is_empty());
}

#[test]
fn a_failed_up_leaves_nothing_running() {
    let d = Deployment::new("failed-up");
    // Something else holds the balancer's port.
    let squatter = TcpListener::bind(("127.0.0.1", d.ports[0])).unwrap();
    let out = d.fails(&["up"]);
    drop(squatter);
    assert!(
        out.contains("everything it started is stopped again"),
        "{out}"
    );
    for color in ["blue", "green"] {
        assert!(
            TcpStream::connect(d.color_addr(color)).is_err(),
            "{color} still answers after a failed up"
        );
    }
    assert!(!d.state.join("blue.pid").exists() && !d.state.join("green.pid").exists());
    // Nothing is left to trip the next `up`.
    d.ok(&["up"]);
    d.ok(&["smoke"]);
}

#[test]
fn a_full_disk_never_stops_the_service_or_a_safe_switch_and_down_still_works() {
    if !is_root() {
        println!("skipped: mounting a small tmpfs for the state directory needs root");
        return;
    }
    let tmpfs = OnTmpfs::new(Deployment::new("full-disk"), "8m");
    let d = &tmpfs.d;
    d.ok(&["up"]);
    let ((), tally) = under_load(d.balancer(), 4, |load| {
        let filler = d.state.join("filler");
        fill(&filler);
        load.wait_for_more(2000);
        // The route swap needs no space, recording the state does: all or nothing.
        let out = d.fails(&["switch"]);
        assert!(out.contains("traffic is back to blue"), "{out}");
        assert_eq!(d.served().0, "blue");
        load.wait_for_more(500);
        fs::remove_file(&filler).unwrap();
        d.switch(&[], "green", "a switch once space is back");
        load.wait_for_more(200);
    });
    tally.assert_no_failures("a full disk under the state directory");
    fill(&d.state.join("filler"));
    d.ok(&["down"]);
}

/// Fills the file system holding `path` with one file.
fn fill(path: &Path) {
    let mut file = fs::File::create(path).unwrap();
    let chunk = vec![0u8; 64 * 1024];
    while file.write_all(&chunk).is_ok() {}
    while file.write_all(&chunk[..512]).is_ok() {}
}

fn is_root() -> bool {
    fs::read_to_string("/proc/self/status").is_ok_and(|s| {
        s.lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|ids| ids.split_whitespace().nth(1).map(|euid| euid == "0"))
            .unwrap_or(false)
    })
}

/// A deployment whose state directory is a small tmpfs of its own; when the test ends, however
/// it ends, the deployment goes down first and the tmpfs is unmounted after.
struct OnTmpfs {
    d: Deployment,
}

impl OnTmpfs {
    fn new(d: Deployment, size: &str) -> OnTmpfs {
        fs::create_dir_all(&d.state).unwrap();
        assert!(Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&d.state)
            .status()
            .unwrap()
            .success());
        OnTmpfs { d }
    }
}

impl Drop for OnTmpfs {
    fn drop(&mut self) {
        let _ = self.d.run(&["down"]);
        let _ = Command::new("umount").arg("-l").arg(&self.d.state).status();
    }
}

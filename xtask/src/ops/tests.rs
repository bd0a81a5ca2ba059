//! The operation engine's paths, on the fake runtime: every way an operation can end, asserting
//! both what it returns and what it leaves on the host (route, state, operation log).

use std::{
    cell::{Cell, RefCell},
    collections::BTreeSet,
    rc::Rc,
    time::Duration,
};

use anyhow::{bail, Result};

use super::{
    execute,
    gates::{self, Checks, Served},
    read_live, route, Deployment, OPERATIONS_FILE, STATE_FILE,
};
use crate::{
    config::DeployConfig,
    domain::{Color, DeployState, Operation, Outcome, Request, RouteReading, Split},
    runtime::HostDir,
    runtime::{
        fake::{Fake, FakeHost},
        routes::Routes,
    },
};

/// Gates and answers through the balancer, decided by the test: a color in `failing_gates`
/// fails its gates; the balancer answers from the color the live route sends traffic to,
/// unless `misroute` names another.
struct FakeChecks {
    host: Rc<FakeHost>,
    failing_gates: RefCell<BTreeSet<Color>>,
    misroute: Cell<Option<Color>>,
    answers: Cell<usize>,
}

impl Checks for FakeChecks {
    fn gate(&self, who: &str, _: &gates::Target) -> Result<()> {
        if self
            .failing_gates
            .borrow()
            .iter()
            .any(|c| who.starts_with(c.as_str()))
        {
            bail!("gate `health` failed for {who}: /health answered 503");
        }
        Ok(())
    }

    fn through_balancer(&self, _: &str) -> Result<Served> {
        let n = self.answers.get();
        self.answers.set(n + 1);
        let color = self.misroute.get().unwrap_or_else(|| {
            match Routes::new(&*self.host).reading().unwrap() {
                RouteReading::Active { green_buckets, .. } if green_buckets.len() == 100 => {
                    Color::Green
                }
                RouteReading::Active { green_buckets, .. } if !green_buckets.is_empty() => {
                    if n & 1 == 0 {
                        Color::Green
                    } else {
                        Color::Blue
                    }
                }
                _ => Color::Blue,
            }
        });
        Ok(Served {
            status: 200,
            color: color.to_string(),
            version: version(color).to_owned(),
        })
    }
}

fn version(color: Color) -> &'static str {
    match color {
        Color::Blue => "v1.0.0",
        Color::Green => "v1.1.0",
    }
}

/// A deployment that is up on the fake runtime: all blue at generation 1, state recorded,
/// every part running.
struct Harness {
    host: Rc<FakeHost>,
    checks: Rc<FakeChecks>,
    ctx: Deployment,
}

/// Lets the harness keep a handle on the checks it gives the deployment.
struct Shared(Rc<FakeChecks>);

impl Checks for Shared {
    fn gate(&self, who: &str, target: &gates::Target) -> Result<()> {
        self.0.gate(who, target)
    }
    fn through_balancer(&self, url: &str) -> Result<Served> {
        self.0.through_balancer(url)
    }
}

impl Harness {
    fn up() -> Harness {
        let host = Rc::new(FakeHost::default());
        for part in ["balancer", "blue", "green"] {
            host.running.borrow_mut().insert(part.into());
        }
        let checks = Rc::new(FakeChecks {
            host: host.clone(),
            failing_gates: RefCell::default(),
            misroute: Cell::new(None),
            answers: Cell::new(0),
        });
        let ctx = Deployment {
            config: DeployConfig::default(),
            rt: Box::new(Fake(host.clone())),
            client: super::gates::client().unwrap(),
            checks: Box::new(Shared(checks.clone())),
            verify_window: Duration::from_millis(200),
        };
        let live = read_live(&ctx).unwrap();
        let generation = route(&ctx, &live, Split::all(Color::Blue)).unwrap();
        let state = DeployState {
            generation,
            split: Split::all(Color::Blue),
            stable: Color::Blue,
            versions: Color::ALL
                .into_iter()
                .map(|c| (c, version(c).to_owned()))
                .collect(),
            since: "t0".into(),
            previous: None,
        };
        super::record_state(&ctx, &state).unwrap();
        Harness { host, checks, ctx }
    }

    fn log(&self) -> Vec<Operation> {
        self.ctx.operations().unwrap()
    }

    fn recorded(&self) -> DeployState {
        serde_json::from_str(&self.host.file(STATE_FILE).unwrap()).unwrap()
    }

    fn routed(&self) -> (u64, Split) {
        let live = read_live(&self.ctx).unwrap();
        (live.generation(), live.split)
    }
}

#[test]
fn a_switch_moves_traffic_records_the_state_and_one_log_line() {
    let h = Harness::up();
    let state = execute(&h.ctx, Request::Switch { to: None }).unwrap();
    assert_eq!(h.routed(), (2, Split::all(Color::Green)));
    assert_eq!(h.recorded(), state);
    assert_eq!(state.previous.unwrap().split, Split::all(Color::Blue));
    let log = h.log();
    assert_eq!(log.len(), 1);
    assert_eq!(
        (log[0].result, log[0].split, log[0].generation),
        (Outcome::Ok, Split::all(Color::Green), 2)
    );
    // The generation before the switch stays (for a restore), older ones are pruned.
    assert_eq!(Routes::new(&*h.host).generations().unwrap().len(), 2);
}

#[test]
fn a_switch_to_where_traffic_already_is_records_a_noop() {
    let h = Harness::up();
    execute(
        &h.ctx,
        Request::Switch {
            to: Some(Color::Blue),
        },
    )
    .unwrap();
    assert_eq!(h.routed(), (1, Split::all(Color::Blue)));
    let log = h.log();
    assert_eq!(log[0].result, Outcome::Noop);
    assert_eq!(log[0].reason.as_deref(), Some("already on blue"));
}

#[test]
fn a_failed_gate_changes_nothing_and_records_refused() {
    let h = Harness::up();
    h.checks.failing_gates.borrow_mut().insert(Color::Green);
    h.host.running.borrow_mut().remove("green");
    let before = h.host.nodes.borrow().clone();
    let err = execute(&h.ctx, Request::Switch { to: None }).unwrap_err();
    let message = format!("{err:#}");
    assert!(
        message.contains("switch refused: traffic stays blue"),
        "{message}"
    );
    assert!(message.contains("green is not running"), "{message}");
    // Nothing on the host changed but the operation log.
    let mut after = h.host.nodes.borrow().clone();
    after.remove(OPERATIONS_FILE);
    assert_eq!(after, before);
    let log = h.log();
    assert_eq!(
        (log[0].result, log[0].split, log[0].to),
        (
            Outcome::Refused,
            Split::all(Color::Blue),
            Split::all(Color::Green)
        )
    );
}

#[test]
fn a_failed_verification_reactivates_the_old_generation_and_records_rolled_back() {
    let h = Harness::up();
    // Green passes its gates, but the balancer keeps answering from blue.
    h.checks.misroute.set(Some(Color::Blue));
    let err = execute(&h.ctx, Request::Switch { to: None }).unwrap_err();
    let message = format!("{err:#}");
    assert!(
        message.contains("switch failed verification; traffic is back to blue"),
        "{message}"
    );
    assert_eq!(h.routed(), (1, Split::all(Color::Blue)));
    // The recorded state is untouched: it still says blue, with no previous state.
    assert_eq!(h.recorded().split, Split::all(Color::Blue));
    assert!(h.recorded().previous.is_none());
    let log = h.log();
    assert_eq!(log.len(), 1);
    assert_eq!(
        (log[0].result, log[0].split, log[0].generation),
        (Outcome::RolledBack, Split::all(Color::Blue), 1)
    );
    // The next switch, with the balancer healthy again, uses a fresh generation number.
    h.checks.misroute.set(None);
    execute(&h.ctx, Request::Switch { to: None }).unwrap();
    assert_eq!(h.routed(), (3, Split::all(Color::Green)));
}

#[test]
fn a_failure_to_install_the_route_changes_nothing_and_records_failed() {
    let h = Harness::up();
    h.host.fail("install_dir", "routes/gen-2");
    let err = execute(&h.ctx, Request::Canary { percent: 10 }).unwrap_err();
    assert!(
        format!("{err:#}").contains("canary failed before traffic moved"),
        "{err:#}"
    );
    assert_eq!(h.routed(), (1, Split::all(Color::Blue)));
    assert_eq!(h.log()[0].result, Outcome::Failed);
}

#[test]
fn a_failure_while_recording_swaps_the_old_generation_back_and_the_next_operation_follows_the_live_route(
) {
    let h = Harness::up();
    h.host.fail("write", STATE_FILE);
    let err = execute(&h.ctx, Request::Switch { to: None }).unwrap_err();
    let message = format!("{err:#}");
    assert!(
        message.contains("switch could not record the new state; traffic is back to blue"),
        "{message}"
    );
    assert!(message.contains("record the deploy state"), "{message}");
    // All or nothing: traffic is where it was, and the log says what happened.
    assert_eq!(h.routed(), (1, Split::all(Color::Blue)));
    let log = h.log();
    assert_eq!(
        (log[0].result, log[0].split, log[0].generation),
        (Outcome::RolledBack, Split::all(Color::Blue), 1)
    );
    assert_eq!(h.recorded().split, Split::all(Color::Blue));
    // Once the state can be written again, the next operation plans from the live route.
    h.host.heal("write", STATE_FILE);
    let state = execute(&h.ctx, Request::Switch { to: None }).unwrap();
    assert_eq!(state.split, Split::all(Color::Green));
    assert_eq!(state.previous.unwrap().split, Split::all(Color::Blue));
    assert_eq!(h.routed(), (3, Split::all(Color::Green)));
}

#[test]
fn a_missing_route_generation_is_repaired_to_the_recorded_intent_and_logged() {
    let h = Harness::up();
    execute(&h.ctx, Request::Switch { to: None }).unwrap();
    // A cleanup removes the active generation: nginx falls back to blue.
    h.host.nodes.borrow_mut().remove("routes/current");
    assert_eq!(h.routed(), (0, Split::all(Color::Blue)));
    // Asking for green (the recorded intent) repairs and then has nothing left to do.
    let state = execute(
        &h.ctx,
        Request::Switch {
            to: Some(Color::Green),
        },
    )
    .unwrap();
    assert_eq!(state.split, Split::all(Color::Green));
    assert_eq!(h.routed(), (3, Split::all(Color::Green)));
    let log = h.log();
    let repair = &log[log.len() - 2];
    assert_eq!(
        (
            repair.operation.as_str(),
            repair.result,
            repair.from,
            repair.split
        ),
        (
            "repair",
            Outcome::Ok,
            Split::all(Color::Blue),
            Split::all(Color::Green)
        )
    );
    assert!(
        repair.reason.as_deref().unwrap().contains("no `current`"),
        "{repair:?}"
    );
    assert_eq!(log.last().unwrap().result, Outcome::Noop);
    // The recorded state names the new generation and keeps its rollback target.
    assert_eq!(h.recorded().generation, 3);
    assert_eq!(
        h.recorded().previous.unwrap().split,
        Split::all(Color::Blue)
    );
}

#[test]
fn a_corrupt_state_file_is_rebuilt_from_the_live_route() {
    let h = Harness::up();
    execute(&h.ctx, Request::Switch { to: None }).unwrap();
    h.host.write(STATE_FILE, "{ not json").unwrap();
    let live = read_live(&h.ctx).unwrap();
    assert!(live
        .recovered
        .as_deref()
        .unwrap()
        .contains("cannot be read"));
    assert_eq!(live.state(&h.ctx.config).split, Split::all(Color::Green));
    // The next operation works from the live route and writes a good state again.
    let state = execute(&h.ctx, Request::Switch { to: None }).unwrap();
    assert_eq!(state.split, Split::all(Color::Blue));
    assert_eq!(h.recorded(), state);
}

#[test]
fn a_log_line_that_cannot_be_written_fails_the_operation_with_the_first_error_kept() {
    let h = Harness::up();
    h.host.fail("append", OPERATIONS_FILE);
    h.checks.failing_gates.borrow_mut().insert(Color::Green);
    let err = execute(&h.ctx, Request::Switch { to: None }).unwrap_err();
    let message = format!("{err:#}");
    assert!(message.contains("switch refused"), "{message}");
    assert!(
        message.contains("operation-log line was not written"),
        "{message}"
    );
}

#[test]
fn nothing_deployed_is_refused_before_any_record() {
    let host = Rc::new(FakeHost::default());
    let ctx = Deployment {
        config: DeployConfig::default(),
        rt: Box::new(Fake(host.clone())),
        client: super::gates::client().unwrap(),
        checks: Box::new(super::gates::Http(super::gates::client().unwrap())),
        verify_window: Duration::from_millis(200),
    };
    let err = execute(&ctx, Request::Switch { to: None }).unwrap_err();
    assert!(
        err.to_string().contains("run `cargo xtask up` first"),
        "{err}"
    );
    assert!(host.nodes.borrow().is_empty());
}

//! gRPC through a real nginx and real `ml-service` processes: the balancer's gRPC port follows
//! the same route generations as HTTP, per call, with no failed call while traffic moves or
//! while the active color dies; `status` and `smoke` cover gRPC; the Python example client
//! works against the balancer.

mod common;

use std::{
    collections::BTreeMap,
    process::{Command, Stdio},
    time::Instant,
};

use common::{under_grpc_load, Deployment, GrpcLoad};

/// Channels and concurrent calls per channel of the load: 64 calls in flight.
const CHANNELS: usize = 4;
const STREAMS: usize = 16;

fn version_of(color: &str) -> &'static str {
    match color {
        "blue" => "v1.0.0",
        _ => "v1.1.0",
    }
}

/// Runs `operation`, then waits until every long-lived channel's latest call was answered by
/// `target`'s version, and for more calls after that.
fn move_to(d: &Deployment, load: &GrpcLoad, operation: &[&str], target: &str) {
    d.ok(operation);
    load.wait_every_channel_sees(version_of(target));
    load.wait_for_more(200);
}

/// What each channel saw since `before`.
fn seen_since(load: &GrpcLoad, before: &[BTreeMap<String, usize>]) -> Vec<BTreeMap<String, usize>> {
    load.per_channel()
        .iter()
        .zip(before)
        .map(|(now, then)| {
            now.iter()
                .map(|(v, n)| (v.clone(), n - then.get(v).copied().unwrap_or(0)))
                .filter(|(_, n)| *n > 0)
                .collect()
        })
        .collect()
}

#[test]
fn grpc_follows_switches_rollbacks_and_a_canary_on_long_lived_channels_with_no_failed_call() {
    let d = Deployment::up("grpc-zero-downtime");
    let start = Instant::now();
    let ((), tally) = under_grpc_load(&d.grpc_balancer(), CHANNELS, STREAMS, |load| {
        load.wait_every_channel_sees("v1.0.0");
        for i in 0..20 {
            move_to(&d, load, &["switch"], ["green", "blue"][i % 2]);
            if i == 9 {
                // A canary: each call is routed on its own, so one channel sees both versions.
                let before = load.per_channel();
                d.ok(&["canary", "--percent", "30"]);
                load.wait_for_more(2000);
                for (channel, seen) in seen_since(load, &before).iter().enumerate() {
                    assert_eq!(
                        seen.len(),
                        2,
                        "channel {channel} saw {seen:?} during a 30 % canary"
                    );
                }
                let smoke = d.ok(&["smoke"]);
                assert!(
                    smoke.contains("ok    grpc-versions: blue v1.0.0"),
                    "{smoke}"
                );
                move_to(&d, load, &["rollback"], "blue");
            }
        }
        for i in 0..5 {
            move_to(&d, load, &["rollback"], ["green", "blue"][i % 2]);
        }
    });
    eprintln!(
        "{} calls in {:.1} s, {} failed",
        tally.ok,
        start.elapsed().as_secs_f64(),
        tally.failed
    );
    tally.assert_no_failures("switches, rollbacks and a canary");
    for (channel, seen) in tally.per_channel.iter().enumerate() {
        assert_eq!(seen.len(), 2, "channel {channel} saw {seen:?}");
    }
}

/// A crash of the active color under gRPC load. nginx fails every call that had not yet reached
/// blue over to green, but it cannot resend a call it had already streamed to blue: its gRPC
/// proxy never buffers request bodies, and nginx passes an unbuffered request to the next
/// server only before sending it. So the calls in flight on blue at the instant it dies fail,
/// each with UNAVAILABLE and the balancer's message (which standard client retry policies
/// retry): about as many as were in flight; once nginx has noticed, every call succeeds.
#[test]
fn killing_the_active_color_under_grpc_load_fails_only_the_calls_in_flight_on_it() {
    let d = Deployment::up("grpc-kill-active");
    let (failed_at_kill, tally) = under_grpc_load(&d.grpc_balancer(), CHANNELS, STREAMS, |load| {
        load.wait_every_channel_sees("v1.0.0");
        d.kill("blue");
        load.wait_every_channel_answered_by("v1.1.0");
        // Calls that nginx had already sent to blue fail as nginx notices blue is gone (on a
        // busy machine, some a little after the first answers from green).
        load.wait_for_successes(1000);
        let failed_at_kill = load.failed();
        load.wait_for_more(2000);
        assert_eq!(
            load.failed(),
            failed_at_kill,
            "calls failed after the failover"
        );
        failed_at_kill
    });
    println!(
        "blue killed with {} calls in flight: {failed_at_kill} failed, {} succeeded",
        CHANNELS * STREAMS,
        tally.ok
    );
    // In flight on blue, plus at most one per idle connection nginx had kept open to it.
    tally.assert_only_crash_failures("blue killed", 2 * CHANNELS * STREAMS);
    let status = d.status();
    assert_eq!(status["balancer"]["grpc_health"], "SERVING", "{status:#}");
    assert_eq!(status["colors"][1]["grpc_health"], "SERVING", "{status:#}");
}

#[test]
fn status_and_smoke_report_grpc_and_a_gate_refuses_a_color_without_grpc() {
    let d = Deployment::up("grpc-status");
    let status = d.status();
    assert_eq!(
        status["balancer"]["grpc"],
        format!("127.0.0.1:{}", d.ports[3]),
        "{status:#}"
    );
    for (i, color) in ["blue", "green"].iter().enumerate() {
        let c = &status["colors"][i];
        assert_eq!(c["color"], *color);
        assert_eq!(c["grpc"], format!("127.0.0.1:{}", d.ports[4 + i]));
        assert_eq!(c["grpc_health"], "SERVING", "{status:#}");
    }
    let text = d.ok(&["status"]);
    assert!(
        text.contains(&format!("grpc 127.0.0.1:{}", d.ports[3])),
        "{text}"
    );
    let smoke = d.ok(&["smoke"]);
    for check in [
        "ok    grpc: SERVING",
        "ok    grpc-versions: blue v1.0.0 200/200",
    ] {
        assert!(smoke.contains(check), "{check} missing from:\n{smoke}");
    }

    // Green answers HTTP but nothing answers on its gRPC port: the switch is refused.
    d.kill("green");
    let spawn = || {
        Command::new(common::service_bin())
            .env("MODEL_PATH", common::project_root().join("models/v1.1.0"))
            .env("MODEL_VERSION", "v1.1.0")
            .env("HOST", "127.0.0.1")
            .env("PORT", d.ports[2].to_string())
            // Its gRPC port is elsewhere: green's configured gRPC port stays closed.
            .env("GRPC_PORT", "0")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    // Started again if it exits (its port not free yet on a busy machine), with what it said.
    let mut http_only = spawn();
    let mut said = String::new();
    common::wait_until("green answers HTTP", || {
        if let Ok(Some(_)) = http_only.try_wait() {
            said.clear();
            if let Some(mut err) = http_only.stderr.take() {
                let _ = std::io::Read::read_to_string(&mut err, &mut said);
            }
            println!("the HTTP-only green exited, started again: {said}");
            http_only = spawn();
        }
        common::http::get(&d.color_addr("green"), "/health").is_ok()
    });
    let out = d.fails(&["switch", "--to", "green"]);
    let _ = http_only.kill();
    let _ = http_only.wait();
    assert!(out.contains("gate `grpc-health` failed for green"), "{out}");
    assert_eq!(d.served().0, "blue", "traffic stays on blue");
}

/// The example client in `examples/grpc-python`, run as its README says: stubs generated with
/// grpcio-tools, then `client.py` against the balancer. Needs the tools' virtual environment
/// (`CLIENTS_VENV`, set by `cargo xtask ci`); without it, says so and passes.
#[test]
fn the_python_example_client_predicts_through_the_balancer() {
    let Some(venv) = std::env::var_os("CLIENTS_VENV").filter(|v| !v.is_empty()) else {
        println!("skipped: CLIENTS_VENV is not set (`cargo xtask ci` sets it)");
        return;
    };
    let root = common::project_root();
    let python = root.join(venv).join("bin/python");
    let d = Deployment::up("grpc-python");
    let stubs = d.dir.join("stubs");
    std::fs::create_dir_all(&stubs).unwrap();
    let generated = Command::new(&python)
        .args(["-m", "grpc_tools.protoc", "-I"])
        .arg(root.join("proto/proto"))
        .arg(format!("--python_out={}", stubs.display()))
        .arg(format!("--grpc_python_out={}", stubs.display()))
        .arg(root.join("proto/proto/prediction.proto"))
        .status()
        .unwrap();
    assert!(generated.success(), "grpc_tools.protoc failed");
    let out = Command::new(&python)
        .arg(root.join("examples/grpc-python/client.py"))
        .arg(format!("127.0.0.1:{}", d.ports[3]))
        .env("PYTHONPATH", &stubs)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "client.py failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for line in [
        "health: ok (model v1.0.0)",
        "prediction: 0 (setosa)",
        "served by blue",
        "bad input: INVALID_ARGUMENT:",
    ] {
        assert!(stdout.contains(line), "{line} missing from:\n{stdout}");
    }
}

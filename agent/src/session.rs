//! One session: JSON requests in, one JSON answer line each out, until the input ends.
//!
//! The first line out is the greeting, `{"ok":true,"agent":<PROTOCOL>,"pid":<pid>}`. Then each
//! request (`{"op":"read","rel":"state.json"}`, …; see [`Request`]) gets `{"ok":true,…}` or
//! `{"ok":false,"error":"…","kind":"busy"|"io"|"request"}`.
//!
//! The lock (`lock.d`) is a folder that appears complete (built under a temporary name, then
//! renamed, which fails while another exists), holding the owner's text for messages and this
//! agent's pid and start time. A lock whose agent process is gone (killed with its container,
//! or the container restarted) is stale: the next agent that wants the lock removes it and says
//! whose it was. A lock without the agent's file (taken by the plain `docker exec` path) is
//! never judged stale here.
//!
//! While it holds the lock, the session remembers where the guarded link (`routes/current`)
//! pointed, and whether it was swapped since the commit file (`state.json`) was last written.
//! When the input ends with the lock still held, the client is gone mid-operation: an
//! uncommitted swap is undone (the route goes back to what the lock found), the client's
//! prepared log line is appended with the result `interrupted` and what was done, and the lock
//! is released. So the host keeps either the old route and state or the new ones.

use std::{
    fs,
    io::{self, BufRead, Write},
    path::PathBuf,
    thread,
    time::{Duration, Instant},
};

use serde::Deserialize;
use serde_json::{json, Value};

use crate::ops::{Dir, Link};

/// The protocol version; the deploy tool reinstalls an agent that answers another.
pub const PROTOCOL: u32 = 3;
/// The lock folder, relative to the state directory.
const LOCK: &str = "lock.d";

/// One request line.
#[derive(Debug, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    Read {
        rel: String,
    },
    Write {
        rel: String,
        contents: String,
    },
    Append {
        rel: String,
        line: String,
    },
    List {
        rel: String,
    },
    InstallDir {
        rel: String,
        files: Vec<String>,
    },
    SwapLink {
        link: String,
        target: String,
    },
    ReadLink {
        link: String,
    },
    RemoveDirs {
        rels: Vec<String>,
    },
    /// The last non-empty line of a file (the operation log's newest record).
    LastLine {
        rel: String,
    },
    /// Takes the lock, waiting at most `timeout_ms`. `owner` is shown to whoever waits;
    /// `guard_link` and `commit_file` name what a lost connection is judged by.
    Lock {
        owner: String,
        timeout_ms: u64,
        guard_link: Option<String>,
        commit_file: Option<String>,
    },
    /// The operation-log line (JSON) to append to `log` if the session ends with the lock held:
    /// `line` as the operation found the host, and `kept`, once it has moved traffic, as it
    /// left it (used when the new route is kept because its state was recorded).
    OnAbort {
        log: String,
        line: String,
        #[serde(default)]
        kept: Option<String>,
    },
    Unlock,
}

/// What the session keeps while it holds the lock.
#[derive(Debug, Default)]
struct Held {
    guard_link: Option<String>,
    commit_file: Option<String>,
    /// Where the guarded link pointed when the lock was taken.
    found: Option<String>,
    /// The guarded link was swapped after the commit file was last written.
    uncommitted: bool,
    /// The guarded link was swapped at all while the lock was held.
    swapped: bool,
    /// The log, the line as found, the line as left.
    abort: Option<(String, String, Option<String>)>,
}

struct Session {
    dir: Dir,
    root: PathBuf,
    held: Option<Held>,
}

/// This process's identity in the lock: its pid and start time (so a reused pid is not taken
/// for the owner).
fn identity(pid: u32) -> Option<String> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The fields after the command name, which is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')')? + 2..];
    let start = rest.split(' ').nth(19)?;
    Some(format!("{pid} {start}"))
}

/// Whether the agent named in a lock's `agent` file is still running.
fn alive(agent: &str) -> bool {
    let Some(pid) = agent.split(' ').next().and_then(|p| p.parse::<u32>().ok()) else {
        return false;
    };
    identity(pid).is_some_and(|now| now == agent.trim())
}

fn ok(fields: Value) -> Value {
    let mut answer = json!({ "ok": true });
    if let (Value::Object(answer), Value::Object(fields)) = (&mut answer, fields) {
        answer.extend(fields);
    }
    answer
}

fn failed(kind: &str, error: impl std::fmt::Display) -> Value {
    json!({ "ok": false, "kind": kind, "error": error.to_string() })
}

/// Serves requests from `input` until it ends; then releases a lock still held (see the
/// module's documentation).
pub fn serve(root: PathBuf, input: impl BufRead, mut output: impl Write) -> io::Result<()> {
    let mut session = Session {
        dir: Dir::new(root.clone()),
        root,
        held: None,
    };
    let greeting = json!({ "ok": true, "agent": PROTOCOL, "pid": std::process::id() });
    writeln!(output, "{greeting}")?;
    output.flush()?;
    for line in input.lines() {
        let Ok(line) = line else { break };
        if line.trim().is_empty() {
            continue;
        }
        let answer = match serde_json::from_str::<Request>(&line) {
            Ok(request) => session.handle(request),
            Err(err) => failed("request", format!("bad request: {err}")),
        };
        if writeln!(output, "{answer}")
            .and_then(|()| output.flush())
            .is_err()
        {
            break;
        }
    }
    session.abandon();
    Ok(())
}

impl Session {
    fn handle(&mut self, request: Request) -> Value {
        let result = match request {
            Request::Read { rel } => self.dir.read(&rel).map(|c| ok(json!({ "contents": c }))),
            Request::Write { rel, contents } => {
                let result = self.dir.write(&rel, &contents);
                if let (Ok(()), Some(held)) = (&result, &mut self.held) {
                    if held.commit_file.as_deref() == Some(rel.as_str()) {
                        held.uncommitted = false;
                    }
                }
                result.map(|()| ok(json!({})))
            }
            Request::Append { rel, line } => self.dir.append(&rel, &line).map(|()| ok(json!({}))),
            Request::List { rel } => self.dir.list(&rel).map(|n| ok(json!({ "names": n }))),
            Request::InstallDir { rel, files } => {
                self.dir.install_dir(&rel, &files).map(|()| ok(json!({})))
            }
            Request::SwapLink { link, target } => {
                let result = self.dir.swap_link(&link, &target);
                if let (Ok(()), Some(held)) = (&result, &mut self.held) {
                    if held.guard_link.as_deref() == Some(link.as_str()) {
                        held.uncommitted = true;
                        held.swapped = true;
                    }
                }
                result.map(|()| ok(json!({})))
            }
            Request::ReadLink { link } => self.dir.read_link(&link).map(|l| {
                ok(match l {
                    Link::Missing => json!({ "missing": true }),
                    Link::To(target) => json!({ "to": target }),
                    Link::Broken(why) => json!({ "broken": why }),
                })
            }),
            Request::RemoveDirs { rels } => self.dir.remove_dirs(&rels).map(|()| ok(json!({}))),
            Request::LastLine { rel } => self.dir.read(&rel).map(|text| {
                let line = text
                    .as_deref()
                    .and_then(|t| t.lines().rev().find(|l| !l.trim().is_empty()));
                ok(json!({ "line": line }))
            }),
            Request::Lock {
                owner,
                timeout_ms,
                guard_link,
                commit_file,
            } => {
                return self.lock(
                    &owner,
                    Duration::from_millis(timeout_ms),
                    guard_link,
                    commit_file,
                )
            }
            Request::OnAbort { log, line, kept } => match &mut self.held {
                Some(held) => {
                    held.abort = Some((log, line, kept));
                    Ok(ok(json!({})))
                }
                None => return failed("request", "on_abort needs the lock"),
            },
            Request::Unlock => self.unlock().map(|()| ok(json!({}))),
        };
        result.unwrap_or_else(|err| failed("io", err))
    }

    fn lock(
        &mut self,
        owner: &str,
        timeout: Duration,
        guard_link: Option<String>,
        commit_file: Option<String>,
    ) -> Value {
        if self.held.is_some() {
            return failed("request", "this session holds the lock already");
        }
        let Some(me) = identity(std::process::id()) else {
            return failed("io", "cannot read this process's start time from /proc");
        };
        let lock = self.root.join(LOCK);
        let started = Instant::now();
        let mut delay = Duration::from_millis(10);
        let mut broke: Option<String> = None;
        loop {
            let temp = self
                .root
                .join(format!(".{LOCK}.new-{}", std::process::id()));
            let _ = fs::remove_dir_all(&temp);
            let built = fs::create_dir(&temp)
                .and_then(|()| fs::write(temp.join("owner"), owner))
                .and_then(|()| fs::write(temp.join("agent"), &me));
            if let Err(err) = built {
                let _ = fs::remove_dir_all(&temp);
                return failed("io", format!("prepare the lock: {err}"));
            }
            match fs::rename(&temp, &lock) {
                Ok(()) => break,
                Err(_) if lock.is_dir() => {
                    let _ = fs::remove_dir_all(&temp);
                }
                Err(err) => {
                    let _ = fs::remove_dir_all(&temp);
                    return failed("io", format!("take the lock: {err}"));
                }
            }
            // Held by someone else: a dead agent's lock is broken at once.
            let holder = fs::read_to_string(lock.join("owner")).unwrap_or_default();
            if let Ok(agent) = fs::read_to_string(lock.join("agent")) {
                if !alive(&agent) {
                    let stale = self
                        .root
                        .join(format!(".{LOCK}.stale-{}", std::process::id()));
                    if fs::rename(&lock, &stale).is_ok() {
                        let _ = fs::remove_dir_all(&stale);
                        broke = Some(holder);
                        continue;
                    }
                }
            }
            if started.elapsed() >= timeout {
                return json!({ "ok": false, "kind": "busy", "owner": holder,
                    "error": "another operation holds the deploy lock" });
            }
            thread::sleep(delay);
            delay = (delay * 2).min(Duration::from_millis(250));
        }
        let found = guard_link
            .as_deref()
            .and_then(|link| match self.dir.read_link(link) {
                Ok(Link::To(target)) => Some(target),
                _ => None,
            });
        self.held = Some(Held {
            guard_link,
            commit_file,
            found,
            uncommitted: false,
            swapped: false,
            abort: None,
        });
        ok(json!({ "broke_stale": broke }))
    }

    fn unlock(&mut self) -> io::Result<()> {
        if self.held.take().is_none() {
            return Ok(());
        }
        let lock = self.root.join(LOCK);
        let stale = self
            .root
            .join(format!(".{LOCK}.done-{}", std::process::id()));
        fs::rename(&lock, &stale)?;
        fs::remove_dir_all(&stale)
    }

    /// The input ended: undo an uncommitted swap, log it, release the lock.
    fn abandon(&mut self) {
        let Some(held) = self.held.take() else {
            return;
        };
        let done = match (&held.guard_link, &held.found, held.uncommitted) {
            (Some(link), Some(found), true) => match self.dir.swap_link(link, found) {
                Ok(()) => format!("put {link} back to {found}, where the operation found it"),
                Err(err) => format!("could not put {link} back to {found}: {err}"),
            },
            (Some(link), None, true) => {
                format!("left {link} as the operation set it: nothing was there before")
            }
            _ => "found nothing to undo (the route was not changed, or the new state was recorded)"
                .to_owned(),
        };
        if let Some((log, line, kept)) = &held.abort {
            // The new route stays when it was swapped and its state recorded: log it as left.
            let line = match kept {
                Some(kept) if held.swapped && !held.uncommitted => kept,
                _ => line,
            };
            let mut record: Value = serde_json::from_str(line).unwrap_or_else(|_| json!({}));
            if let Value::Object(fields) = &mut record {
                fields.insert("result".into(), json!("interrupted"));
                fields.insert(
                    "reason".into(),
                    json!(format!(
                        "the deploy tool's connection ended mid-operation; the host's agent {done}"
                    )),
                );
            }
            let _ = self.dir.append(log, &record.to_string());
        }
        self.held = Some(held);
        let _ = self.unlock();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::tests::scratch;

    /// Runs a session over `requests` (one JSON per line) and returns its answers.
    fn run(root: &std::path::Path, requests: &[Value]) -> Vec<Value> {
        let input: String = requests.iter().map(|r| format!("{r}\n")).collect();
        let mut out = Vec::new();
        serve(root.to_owned(), input.as_bytes(), &mut out).unwrap();
        String::from_utf8(out)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    fn lock() -> Value {
        json!({"op":"lock","owner":"cargo xtask switch\npid 1 on laptop\nsince 5\n","timeout_ms":100,
               "guard_link":"routes/current","commit_file":"state.json"})
    }

    fn prepared(root: &std::path::Path) -> Dir {
        let dir = Dir::new(root.to_owned());
        fs::create_dir_all(root.join("routes")).unwrap();
        dir.install_dir("routes/gen-1", &[]).unwrap();
        dir.swap_link("routes/current", "gen-1").unwrap();
        dir.write("state.json", "{\"generation\":1}").unwrap();
        dir
    }

    #[test]
    fn a_session_greets_answers_each_line_and_refuses_bad_ones() {
        let root = scratch("greet");
        let answers = run(
            &root,
            &[
                json!({"op":"write","rel":"a","contents":"x"}),
                json!({"op":"read","rel":"a"}),
                json!({"op":"read","rel":"missing"}),
                json!({"op":"read","rel":"../etc/passwd"}),
                json!({"op":"explode"}),
                json!({"op":"list","rel":"."}),
                json!({"op":"append","rel":"log","line":"first"}),
                json!({"op":"append","rel":"log","line":"second"}),
                json!({"op":"last_line","rel":"log"}),
                json!({"op":"last_line","rel":"nothing"}),
            ],
        );
        assert_eq!(answers[9]["line"], "second");
        assert_eq!(answers[10]["line"], Value::Null);
        assert_eq!(answers[0]["agent"], PROTOCOL);
        assert_eq!(answers[1], json!({"ok":true}));
        assert_eq!(answers[2]["contents"], "x");
        assert_eq!(answers[3]["contents"], Value::Null);
        assert_eq!(
            (&answers[4]["ok"], &answers[4]["kind"]),
            (&json!(false), &json!("io"))
        );
        assert_eq!(answers[5]["kind"], "request");
        assert_eq!(answers[6]["ok"], false);
        fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn an_operation_that_ends_normally_keeps_its_route_and_releases_the_lock() {
        let root = scratch("normal");
        let dir = prepared(&root);
        let answers = run(
            &root,
            &[
                lock(),
                json!({"op":"install_dir","rel":"routes/gen-2","files":["0","1"]}),
                json!({"op":"swap_link","link":"routes/current","target":"gen-2"}),
                json!({"op":"write","rel":"state.json","contents":"{\"generation\":2}"}),
                json!({"op":"append","rel":"operations.jsonl","line":"{\"operation\":\"switch\"}"}),
                json!({"op":"unlock"}),
            ],
        );
        assert!(answers.iter().all(|a| a["ok"] == true), "{answers:?}");
        assert_eq!(answers[1]["broke_stale"], Value::Null);
        assert_eq!(
            dir.read_link("routes/current").unwrap(),
            Link::To("gen-2".into())
        );
        assert!(!root.join(LOCK).exists());
        fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn a_lost_connection_after_an_unrecorded_swap_puts_the_route_back_and_logs_it() {
        let root = scratch("lost");
        let dir = prepared(&root);
        let line = json!({"operation":"switch","result":"ok","from":"100/0"}).to_string();
        run(
            &root,
            &[
                lock(),
                json!({"op":"on_abort","log":"operations.jsonl","line":line,
                       "kept":"{\"operation\":\"as left, unused when put back\"}"}),
                json!({"op":"install_dir","rel":"routes/gen-2","files":["0"]}),
                json!({"op":"swap_link","link":"routes/current","target":"gen-2"}),
            ],
        );
        assert_eq!(
            dir.read_link("routes/current").unwrap(),
            Link::To("gen-1".into())
        );
        assert_eq!(
            dir.read("state.json").unwrap().unwrap(),
            "{\"generation\":1}"
        );
        assert!(!root.join(LOCK).exists(), "the lock is released");
        let log: Value =
            serde_json::from_str(&dir.read("operations.jsonl").unwrap().unwrap()).unwrap();
        assert_eq!(
            (&log["operation"], &log["result"]),
            (&json!("switch"), &json!("interrupted"))
        );
        let reason = log["reason"].as_str().unwrap();
        assert!(
            reason.contains("put routes/current back to gen-1"),
            "{reason}"
        );
        fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn a_lost_connection_after_the_state_was_recorded_keeps_the_new_route() {
        let root = scratch("committed");
        let dir = prepared(&root);
        run(
            &root,
            &[
                lock(),
                json!({"op":"on_abort","log":"operations.jsonl","line":"{\"generation\":1}",
                       "kept":"{\"generation\":2}"}),
                json!({"op":"install_dir","rel":"routes/gen-2","files":["0"]}),
                json!({"op":"swap_link","link":"routes/current","target":"gen-2"}),
                json!({"op":"write","rel":"state.json","contents":"{\"generation\":2}"}),
            ],
        );
        assert_eq!(
            dir.read_link("routes/current").unwrap(),
            Link::To("gen-2".into())
        );
        let log = dir.read("operations.jsonl").unwrap().unwrap();
        assert!(
            log.contains("nothing to undo") && log.contains("interrupted"),
            "{log}"
        );
        assert!(!root.join(LOCK).exists());
        fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn a_dead_agents_lock_is_broken_and_a_live_one_waits() {
        let root = scratch("stale");
        prepared(&root);
        // A lock left by an agent that no longer runs (no such pid).
        fs::create_dir(root.join(LOCK)).unwrap();
        fs::write(root.join(LOCK).join("owner"), "cargo xtask deploy\n").unwrap();
        fs::write(root.join(LOCK).join("agent"), "4194304 1").unwrap();
        let answers = run(&root, &[lock(), json!({"op":"unlock"})]);
        assert_eq!(answers[1]["ok"], true, "{answers:?}");
        assert_eq!(answers[1]["broke_stale"], "cargo xtask deploy\n");

        // A lock held by a live agent (this test process) is waited for, then refused.
        fs::create_dir(root.join(LOCK)).unwrap();
        fs::write(root.join(LOCK).join("owner"), "cargo xtask canary\n").unwrap();
        fs::write(
            root.join(LOCK).join("agent"),
            identity(std::process::id()).unwrap(),
        )
        .unwrap();
        let answers = run(&root, &[lock()]);
        assert_eq!(
            (&answers[1]["ok"], &answers[1]["kind"]),
            (&json!(false), &json!("busy"))
        );
        assert_eq!(answers[1]["owner"], "cargo xtask canary\n");
        assert!(
            root.join(LOCK).join("agent").exists(),
            "the live lock stays"
        );

        // A lock without an agent file (taken by the plain docker-exec path) is never broken.
        fs::remove_file(root.join(LOCK).join("agent")).unwrap();
        let answers = run(&root, &[lock()]);
        assert_eq!(answers[1]["kind"], "busy");
        fs::remove_dir_all(root).unwrap();
    }
}

//! A color's tasks as the swarm reports them (`docker inspect` of each task), parsed by a pure
//! function: slot, node, state, address on the color's network, model version.

use std::collections::BTreeMap;

use anyhow::{Context, Result};
use serde_json::Value;

/// One task the swarm wants running.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Task {
    pub id: String,
    /// The replica's slot: `blue.<slot>`.
    pub slot: u64,
    pub node_id: String,
    /// The swarm's state: `running`, `starting`, `preparing`, `pending`, `failed`…
    pub state: String,
    /// Why it is not running, when the swarm says (`task: non-zero exit (1)`).
    pub error: String,
    /// Its address on `network` (without the prefix length), empty before it has one.
    pub address: String,
    /// `MODEL_VERSION` in its spec.
    pub version: String,
}

/// Parses `docker inspect <task>…` output; only tasks whose desired state is `running`, the
/// newest per slot, ordered by slot. `network` is the color's network name.
pub fn parse_tasks(json: &str, network: &str) -> Result<Vec<Task>> {
    let items: Vec<Value> =
        serde_json::from_str(json).context("parse `docker inspect` of tasks")?;
    let mut by_slot: BTreeMap<u64, (String, Task)> = BTreeMap::new();
    for item in items {
        if item["DesiredState"].as_str() != Some("running") {
            continue;
        }
        let text = |v: &Value| v.as_str().unwrap_or_default().to_owned();
        let address = item["NetworksAttachments"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|a| a["Network"]["Spec"]["Name"].as_str() == Some(network))
            .flat_map(|a| a["Addresses"].as_array().cloned().unwrap_or_default())
            .filter_map(|a| {
                a.as_str()
                    .map(|s| s.split('/').next().unwrap_or(s).to_owned())
            })
            .next()
            .unwrap_or_default();
        let version = item["Spec"]["ContainerSpec"]["Env"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .find_map(|e| e.strip_prefix("MODEL_VERSION="))
            .unwrap_or_default()
            .to_owned();
        let task = Task {
            id: text(&item["ID"]),
            slot: item["Slot"].as_u64().unwrap_or(0),
            node_id: text(&item["NodeID"]),
            state: text(&item["Status"]["State"]),
            error: text(&item["Status"]["Err"]),
            address,
            version,
        };
        let created = text(&item["CreatedAt"]);
        match by_slot.get(&task.slot) {
            Some((newer, _)) if *newer >= created => {}
            _ => {
                by_slot.insert(task.slot, (created, task));
            }
        }
    }
    Ok(by_slot.into_values().map(|(_, task)| task).collect())
}

/// Node names for messages: `docker node ls --format '{{.ID}} {{.Hostname}}'` output. Nodes
/// that share a host name (several engines on one machine) get their ID's start too.
pub fn node_names(ls: &str) -> BTreeMap<String, String> {
    let rows: Vec<(&str, &str)> = ls
        .lines()
        .filter_map(|l| l.trim().split_once(' '))
        .collect();
    rows.iter()
        .map(|(id, host)| {
            let shared = rows.iter().filter(|(_, h)| h == host).count() > 1;
            let name = if shared {
                format!("{host}/{}", &id[..id.len().min(6)])
            } else {
                (*host).to_owned()
            };
            ((*id).to_owned(), name)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(id: &str, slot: u64, desired: &str, state: &str, created: &str, addr: &str) -> Value {
        serde_json::json!({
            "ID": id, "Slot": slot, "NodeID": "n1", "DesiredState": desired, "CreatedAt": created,
            "Status": {"State": state, "Err": ""},
            "Spec": {"ContainerSpec": {"Env": ["HOST=0.0.0.0", "MODEL_VERSION=v1.1.0"]}},
            "NetworksAttachments": [
                {"Network": {"Spec": {"Name": "ingress"}}, "Addresses": ["10.0.0.5/24"]},
                {"Network": {"Spec": {"Name": "demo_green"}}, "Addresses": [addr]}
            ]
        })
    }

    #[test]
    fn the_newest_running_task_per_slot_with_its_color_address() {
        let json = Value::Array(vec![
            task(
                "a",
                2,
                "running",
                "running",
                "2026-01-01T00:00:02Z",
                "10.77.12.7/24",
            ),
            task(
                "b",
                1,
                "shutdown",
                "complete",
                "2026-01-01T00:00:00Z",
                "10.77.12.3/24",
            ),
            task(
                "c",
                1,
                "running",
                "starting",
                "2026-01-01T00:00:03Z",
                "10.77.12.9/24",
            ),
        ])
        .to_string();
        let tasks = parse_tasks(&json, "demo_green").unwrap();
        assert_eq!(tasks.len(), 2);
        assert_eq!((tasks[0].slot, tasks[0].state.as_str()), (1, "starting"));
        assert_eq!(tasks[0].address, "10.77.12.9");
        assert_eq!(tasks[1].address, "10.77.12.7");
        assert_eq!(tasks[1].version, "v1.1.0");
    }

    #[test]
    fn nodes_sharing_a_host_name_are_told_apart() {
        let names = node_names("abcdef123 vm\nxyz987654 vm\nq1 other\n");
        assert_eq!(names["abcdef123"], "vm/abcdef");
        assert_eq!(names["q1"], "other");
    }
}

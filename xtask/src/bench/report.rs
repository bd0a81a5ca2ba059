//! Writing the numbers up: the machine they were measured on, summaries of timings, and the
//! Markdown section of `docs/benchmarks.md` a benchmark owns.
//!
//! Steps of [`write_doc`]:
//! 1. read `docs/benchmarks.md` (a bare `# Benchmarks` when missing);
//! 2. replace only the benchmark's own section ([`replace_section`]) or subsection
//!    ([`replace_subsection`]), both pure and tested;
//! 3. write the file back.

use std::{fs, thread};

use anyhow::{Context, Result};
use xshell::{cmd, Shell};

use crate::util::project_root;

/// The CPU model and how many cores this process may use: `Intel(R) Xeon(R) Processor, 2 cores`.
pub fn cpu() -> String {
    let model = fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines().find_map(|l| {
                l.strip_prefix("model name")
                    .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
            })
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = thread::available_parallelism().map_or(0, |n| n.get());
    format!("{model}, {cores} cores")
}

/// nginx's version as `nginx -v` prints it (`nginx/1.22.1`), empty when it cannot say.
pub fn nginx_version(sh: &Shell) -> String {
    cmd!(sh, "nginx -v")
        .quiet()
        .ignore_status()
        .output()
        .map_or(String::new(), |o| {
            String::from_utf8_lossy(&o.stderr)
                .trim()
                .trim_start_matches("nginx version: ")
                .to_owned()
        })
}

/// The sentence naming the machine a benchmark ran on, what shared its cores, how busy it was
/// before the run, and the nginx version.
pub fn machine(sh: &Shell, shared_by: &str) -> String {
    format!(
        "Machine: {} (shared by {shared_by}; load average before the run {}); {}.",
        cpu(),
        load_average(),
        nginx_version(sh)
    )
}

/// The 1, 5 and 15 minute load averages: `1.05 2.05 2.26`.
pub fn load_average() -> String {
    fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// The median and the largest of `times` (0 for none).
pub fn p50_max(times: &[f64]) -> (f64, f64) {
    let mut sorted = times.to_vec();
    sorted.sort_by(f64::total_cmp);
    let p50 = sorted.get(sorted.len() / 2).copied().unwrap_or(0.0);
    (p50, sorted.last().copied().unwrap_or(0.0))
}

/// Puts `body` under `heading` in `docs/benchmarks.md`; with a `parent`, as a subsection at the
/// end of that section.
pub fn write_doc(parent: Option<&str>, heading: &str, body: &str) -> Result<()> {
    let path = project_root().join("docs/benchmarks.md");
    let doc = fs::read_to_string(&path).unwrap_or_else(|_| "# Benchmarks\n".into());
    let updated = match parent {
        Some(parent) => replace_subsection(&doc, parent, heading, body),
        None => replace_section(&doc, heading, body),
    };
    fs::write(&path, updated).context("write docs/benchmarks.md")
}

/// Replaces the body of the `heading` section of a Markdown document (up to the next heading of
/// the same or a higher level), or appends the section; other sections are left as they are.
pub fn replace_section(doc: &str, heading: &str, body: &str) -> String {
    let lines: Vec<&str> = doc.lines().collect();
    let section = format!("{heading}\n\n{}\n", body.trim_end());
    match lines.iter().position(|l| l.trim_end() == heading) {
        Some(start) => {
            let end = section_end(&lines, start, heading);
            let mut out = lines[..start].join("\n");
            if !out.is_empty() {
                out.push('\n');
            }
            out += &section;
            if end < lines.len() {
                out += "\n";
                out += &lines[end..].join("\n");
                out.push('\n');
            }
            out
        }
        None => format!("{}\n\n{section}", doc.trim_end()),
    }
}

/// Replaces (or appends at the end of `parent`) the subsection `heading` of the `parent`
/// section; outside `parent` nothing changes. A missing `parent` is appended with it.
pub fn replace_subsection(doc: &str, parent: &str, heading: &str, body: &str) -> String {
    let lines: Vec<&str> = doc.lines().collect();
    let Some(start) = lines.iter().position(|l| l.trim_end() == parent) else {
        return replace_section(&format!("{}\n\n{parent}\n", doc.trim_end()), heading, body);
    };
    let end = section_end(&lines, start, parent);
    let mut out = lines[..start].join("\n");
    if !out.is_empty() {
        out.push('\n');
    }
    out += &replace_section(&lines[start..end].join("\n"), heading, body);
    if end < lines.len() {
        out += "\n";
        out += &lines[end..].join("\n");
        out.push('\n');
    }
    out
}

/// The index of the first line after the section that starts at `start`: the next heading of
/// the same or a higher level, or the end.
fn section_end(lines: &[&str], start: usize, heading: &str) -> usize {
    let level = heading.chars().take_while(|&c| c == '#').count();
    let is_boundary = |line: &str| {
        let hashes = line.chars().take_while(|&c| c == '#').count();
        hashes > 0 && hashes <= level && line[hashes..].starts_with(' ')
    };
    lines[start + 1..]
        .iter()
        .position(|l| is_boundary(l))
        .map_or(lines.len(), |i| start + 1 + i)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replace_section_touches_only_its_section() {
        let doc = "# Benchmarks\n\n## Model service\n\nfast\n\n## Switching\n\nold\nnumbers\n\n## Later\n\nkeep\n";
        let out = replace_section(doc, "## Switching", "new");
        assert_eq!(
            out,
            "# Benchmarks\n\n## Model service\n\nfast\n\n## Switching\n\nnew\n\n## Later\n\nkeep\n"
        );
        let appended = replace_section(
            "# Benchmarks\n\n## Model service\n\nfast\n",
            "## Switching",
            "new",
        );
        assert_eq!(
            appended,
            "# Benchmarks\n\n## Model service\n\nfast\n\n## Switching\n\nnew\n"
        );
        let last = replace_section(
            "## Switching\n\nold\n### detail\nx\n",
            "## Switching",
            "new",
        );
        assert_eq!(last, "## Switching\n\nnew\n");
    }

    #[test]
    fn replace_subsection_stays_inside_its_parent() {
        let doc = "# B\n\n## Containers\n\nhand\n\n## Later\n\nkeep\n";
        let first = replace_subsection(doc, "## Containers", "### Measured", "one");
        assert_eq!(
            first,
            "# B\n\n## Containers\n\nhand\n\n### Measured\n\none\n\n## Later\n\nkeep\n"
        );
        let again = replace_subsection(&first, "## Containers", "### Measured", "two");
        assert_eq!(
            again,
            "# B\n\n## Containers\n\nhand\n\n### Measured\n\ntwo\n\n## Later\n\nkeep\n"
        );
        let last = replace_subsection(
            "## Containers\n\nhand\n",
            "## Containers",
            "### Measured",
            "x",
        );
        assert_eq!(last, "## Containers\n\nhand\n\n### Measured\n\nx\n");
        let missing = replace_subsection("# B\n", "## Containers", "### Measured", "x");
        assert_eq!(missing, "# B\n\n## Containers\n\n### Measured\n\nx\n");
    }

    #[test]
    fn p50_max_of_timings() {
        assert_eq!(p50_max(&[3.0, 1.0, 2.0]), (2.0, 3.0));
        assert_eq!(p50_max(&[]), (0.0, 0.0));
    }
}

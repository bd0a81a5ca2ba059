//! `cargo xtask`: the deployment tool for the model service.
//!
//! Every step of building, deploying, switching and rolling back the service is a typed command
//! here, so the same steps run on a laptop and in GitHub Actions. `docs/ARCHITECTURE.md` maps
//! the layers; `flags.rs` lists the commands; `docs/DEPLOYMENT.md` shows the everyday flow.
//!
//! Layers (arrows point down only): `cmd/` (one file per verb) → `ops/` (the operation engine)
//! → `runtime/` (lifecycle and the host state directory) → `domain/` (pure decisions). Beside
//! them: `config`, `nginx` (the balancer's config), `images` and `docker` (building and running
//! containers), `host` (this machine's tools), `bench` (measurements), `util`.

mod bench;
mod cmd;
mod config;
mod docker;
mod domain;
mod flags;
mod grpc;
mod host;
mod http;
mod images;
mod nginx;
mod ops;
mod runtime;
mod util;

use std::process::ExitCode;

use xshell::Shell;

fn main() -> ExitCode {
    match try_main() {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn try_main() -> anyhow::Result<()> {
    let flags = <flags::Xtask as clap::Parser>::parse();
    let sh = Shell::new()?;
    let global = flags.global;
    sh.change_dir(util::project_root());
    match flags.command {
        flags::Command::Train(cmd) => cmd.run(&sh),
        flags::Command::TrainV1_1(cmd) => cmd.run(&sh),
        flags::Command::Build(cmd) => cmd.run(&sh, &global),
        flags::Command::Setup(cmd) => cmd.run(&sh, &global),
        flags::Command::Up(cmd) => cmd.run(&sh, &global),
        flags::Command::Down(cmd) => cmd.run(&sh, &global),
        flags::Command::Scale(cmd) => cmd.run(&sh, &global),
        flags::Command::Status(cmd) => cmd.run(&sh, &global),
        flags::Command::Switch(cmd) => cmd.run(&sh, &global),
        flags::Command::Rollback(cmd) => cmd.run(&sh, &global),
        flags::Command::Canary(cmd) => cmd.run(&sh, &global),
        flags::Command::Deploy(cmd) => cmd.run(&sh, &global),
        flags::Command::Shadow(cmd) => cmd.run(&sh, &global),
        flags::Command::Smoke(cmd) => cmd.run(&sh, &global),
        flags::Command::History(cmd) => cmd.run(&sh, &global),
        flags::Command::Bench(cmd) => cmd.run(&sh, &global),
        flags::Command::Publish(cmd) => cmd.run(&sh, &global),
        flags::Command::Ci(cmd) => cmd.run(&sh),
    }
}

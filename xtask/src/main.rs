//! `cargo xtask`: the deployment tool for the model service.
//!
//! Every step of building, deploying, switching and rolling back the service is a typed command
//! here, so the same steps run on a laptop and in GitHub Actions. See `flags.rs` for the commands
//! and `docs/DEPLOYMENT.md` for the everyday flow.

mod config;
mod domain;
mod engine;
mod flags;
mod gate;
mod images;
mod nginx;
mod runtime;
mod util;

mod bench;
mod build;
mod canary;
mod ci;
mod deploy;
mod publish;
mod setup;
mod smoke;
mod status;
mod switch;
mod train;
mod up;

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
    let mut global = flags.global;
    // A relative `--config` means the caller's folder when the file is there, else the project
    // root, so `cargo xtask status` works from any folder of the checkout.
    if global.config.is_relative() && !global.config.exists() {
        global.config = util::project_root().join(&global.config);
    }
    sh.change_dir(util::project_root());
    match flags.command {
        flags::Command::Train(cmd) => cmd.run(&sh),
        flags::Command::TrainV1_1(cmd) => cmd.run(&sh),
        flags::Command::Build(cmd) => cmd.run(&sh, &global),
        flags::Command::Setup(cmd) => cmd.run(&sh, &global),
        flags::Command::Up(cmd) => cmd.run(&sh, &global),
        flags::Command::Down(cmd) => cmd.run(&sh, &global),
        flags::Command::Status(cmd) => cmd.run(&sh, &global),
        flags::Command::Switch(cmd) => cmd.run(&sh, &global),
        flags::Command::Rollback(cmd) => cmd.run(&sh, &global),
        flags::Command::Canary(cmd) => cmd.run(&sh, &global),
        flags::Command::Deploy(cmd) => cmd.run(&sh, &global),
        flags::Command::Smoke(cmd) => cmd.run(&sh, &global),
        flags::Command::History(cmd) => cmd.run(&sh, &global),
        flags::Command::Bench(cmd) => cmd.run(&sh, &global),
        flags::Command::Publish(cmd) => cmd.run(&sh, &global),
        flags::Command::Ci(cmd) => cmd.run(&sh),
    }
}

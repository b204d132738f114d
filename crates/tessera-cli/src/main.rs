//! `tessera`: the command line for Tessera's operators, orchestrators, agents
//! and scripts.
//!
//! It only parses, dispatches to `command::<name>::run` and maps the outcome to
//! an exit code: 0 success, 1 local error (flags, files, connection), 2 the
//! broker refused (any gRPC status), 3 a token request waits for a person's
//! approval. It never prints a token except where the
//! command's purpose is to output one (`token request`).

mod args;
mod cli;
mod command;
mod exit;
mod output;
mod progress;

use std::process::ExitCode;

use clap::Parser as _;

fn main() -> ExitCode {
    let cli = match cli::Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => return exit::usage(&err),
    };
    let format = cli.global.output;
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(err) => return exit::report(Err(anyhow::Error::new(err)), format),
    };
    let outcome = runtime.block_on(command::run(cli));
    exit::report(outcome, format)
}

//! `tessera completions SHELL`: print a completion script.

use clap::{Args, CommandFactory as _};
use clap_complete::Shell;

use crate::cli::Cli;

/// `completions`.
#[derive(Debug, Args)]
pub(crate) struct CompletionsArgs {
    /// The shell, e.g. `tessera completions bash > /etc/bash_completion.d/tessera`.
    shell: Shell,
}

/// Writes the completion script for the shell to stdout.
pub(crate) fn run(args: &CompletionsArgs) -> anyhow::Result<()> {
    let mut command = Cli::command();
    clap_complete::generate(args.shell, &mut command, "tessera", &mut std::io::stdout().lock());
    Ok(())
}

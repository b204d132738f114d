//! `tessera console`: sign in to the operator console. The broker checks
//! the caller (attested as for every command: `--as`, `--cert`/`--key`)
//! and that policy lets it approve or operate, then issues a one-time code,
//! single use and short-lived; this prints the sign-in URL holding it (and
//! opens it in a browser when there is a desktop to open it on). The code
//! is in the URL's fragment (`#code=`), which the browser never sends: no
//! proxy log or history entry on a server holds it.

use std::io::IsTerminal as _;

use clap::Args;
use serde::Serialize;
use tessera_client::{AdminClient, pb};

use crate::cli::Global;
use crate::command::channel;
use crate::output::{self, OutputFormat};

/// `console`.
#[derive(Debug, Args)]
pub(crate) struct ConsoleArgs {
    /// Only print the URL; never start a browser.
    #[arg(long)]
    no_open: bool,
}

/// The sign-in as printed in JSON.
#[derive(Debug, Serialize)]
struct SignInView {
    /// Holds the one-time code: open it once, soon.
    url: String,
    expires_at: Option<String>,
}

/// Runs `console`.
pub(crate) async fn run(global: &Global, args: ConsoleArgs) -> anyhow::Result<()> {
    let mut client = AdminClient::new(channel(global).await?);
    let code = client.open_console(pb::OpenConsoleRequest {}).await?.into_inner();
    let expires_at = code
        .expires_at
        .and_then(|t| chrono::DateTime::from_timestamp(t.seconds, 0))
        .map(|t| t.to_rfc3339());
    let opened = !args.no_open && std::io::stdout().is_terminal() && open_in_browser(&code.url);
    match global.output {
        OutputFormat::Json => output::json(&SignInView {
            url: code.url,
            expires_at,
        }),
        OutputFormat::Text => {
            output::line(format_args!(
                "Open this URL to sign in to the operator console (it works once{}):",
                expires_at.map(|t| format!(", until {t}")).unwrap_or_default()
            ))?;
            output::line(format_args!("  {}", code.url))?;
            if opened {
                output::line(format_args!("(opened in your browser)"))?;
            }
            Ok(())
        }
    }
}

/// Starts the desktop's browser on `url` when there is a desktop; says
/// whether it did. Never waits for the browser.
fn open_in_browser(url: &str) -> bool {
    let desktop = std::env::var_os("DISPLAY").is_some() || std::env::var_os("WAYLAND_DISPLAY").is_some();
    let opener = if cfg!(target_os = "macos") {
        "open"
    } else if desktop {
        "xdg-open"
    } else {
        return false;
    };
    std::process::Command::new(opener)
        .arg(url)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .is_ok()
}

//! The command line grammar: global options and the command tree.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::command::{
    approvals, audit, blast, completions, console, dev, grant, identity, introspect, keys, policy, revocations,
    revoke_all, task, token,
};
use crate::output::OutputFormat;

/// Tessera: short-lived, task-scoped credentials for agents.
///
/// Exit codes: 0 success; 1 local error (bad flags, files, cannot connect);
/// 2 the broker refused the request (the gRPC status is printed); 3 no token
/// yet: the request waits for a person's approval (`token request` without
/// --wait).
#[derive(Debug, Parser)]
#[command(name = "tessera", version, propagate_version = true, max_term_width = 100)]
pub(crate) struct Cli {
    /// Options shared by every command.
    #[command(flatten)]
    pub(crate) global: Global,
    /// What to do.
    #[command(subcommand)]
    pub(crate) command: Command,
}

/// Where the broker is, who we are, how to print.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Global options")]
pub(crate) struct Global {
    /// Broker gRPC endpoint (https only: the broker requires mTLS).
    #[arg(
        long,
        global = true,
        env = "TESSERA_ENDPOINT",
        default_value = "https://127.0.0.1:7443",
        value_name = "URL"
    )]
    pub(crate) endpoint: String,

    /// Trust bundle (PEM) that signs the broker's certificate. Overrides --as.
    #[arg(long, global = true, env = "TESSERA_CA", value_name = "PEM")]
    pub(crate) ca: Option<PathBuf>,

    /// Client X.509-SVID (PEM). Overrides --as.
    #[arg(long, global = true, env = "TESSERA_CERT", value_name = "PEM")]
    pub(crate) cert: Option<PathBuf>,

    /// Private key of --cert (PEM). Overrides --as.
    #[arg(long, global = true, env = "TESSERA_KEY", value_name = "PEM")]
    pub(crate) key: Option<PathBuf>,

    /// Act as a development identity from `tessera dev init`: DIR/ca.pem,
    /// DIR/identities/NAME.pem and DIR/identities/NAME.key.pem.
    #[arg(long = "as", global = true, env = "TESSERA_AS", value_name = "NAME")]
    pub(crate) as_identity: Option<String>,

    /// The broker's SPIFFE ID: its certificate must carry exactly this URI
    /// SAN (default: spiffe://<your certificate's trust domain>/tesserad).
    #[arg(long, global = true, env = "TESSERA_BROKER_ID", value_name = "SPIFFE_ID")]
    pub(crate) broker_id: Option<String>,

    /// Attest with the OIDC/JWT in this file (`authorization: Bearer`) over
    /// TLS without a client certificate; the broker's CA comes from --ca or
    /// --dev-dir. Overrides --as, --cert and --key.
    #[arg(long, global = true, env = "TESSERA_JWT_FILE", value_name = "FILE")]
    pub(crate) jwt_file: Option<PathBuf>,

    /// Attest over the broker's Unix socket (kernel peer credentials)
    /// instead of TLS. Overrides --endpoint and every other identity flag.
    #[arg(long, global = true, env = "TESSERA_UNIX_SOCKET", value_name = "PATH")]
    pub(crate) unix_socket: Option<PathBuf>,

    /// Directory of the development PKI used by --as and `dev init`.
    #[arg(
        long,
        global = true,
        env = "TESSERA_DEV_DIR",
        default_value = ".tessera-dev",
        value_name = "DIR"
    )]
    pub(crate) dev_dir: PathBuf,

    /// Output format.
    #[arg(
        long,
        global = true,
        env = "TESSERA_OUTPUT",
        value_enum,
        default_value_t = OutputFormat::Text
    )]
    pub(crate) output: OutputFormat,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Development helpers (throwaway PKI and configuration).
    #[command(subcommand)]
    Dev(dev::DevCommand),
    /// Start, complete, show and revoke tasks.
    #[command(subcommand)]
    Task(task::TaskCommand),
    /// Request a token, or decode and verify one.
    #[command(subcommand)]
    Token(token::TokenCommand),
    /// List live grants and revoke them (issued tokens); also `grants`.
    #[command(subcommand, visible_alias = "grants")]
    Grant(grant::GrantCommand),
    /// List, approve or deny token requests waiting for a person (as an approver).
    #[command(subcommand)]
    Approvals(approvals::ApprovalsCommand),
    /// Sign in to the operator console: prints (and opens) a one-time sign-in URL.
    Console(console::ConsoleArgs),
    /// Revoke every grant of an identity (offboarding), or disable and
    /// enable it.
    #[command(subcommand)]
    Identity(identity::IdentityCommand),
    /// Ask the broker whether a token is live (RFC 7662 style).
    Introspect(introspect::IntrospectArgs),
    /// Print the broker's public keys (JWK Set).
    Jwks,
    /// List the signing keys published in the JWKS, or rotate the signing key.
    #[command(subcommand)]
    Keys(keys::KeysCommand),
    /// Validate a Cedar policy set offline, or make the broker reload its policy.
    #[command(subcommand)]
    Policy(policy::PolicyCommand),
    /// What an identity, owner or task could reach now: live grants,
    /// audiences, scopes by class, longest TTL, delegation, owners.
    BlastRadius(blast::BlastArgs),
    /// Break-glass: revoke every live grant and replace the signing key.
    RevokeAll(revoke_all::RevokeAllArgs),
    /// Follow the revocation feed.
    #[command(subcommand)]
    Revocations(revocations::RevocationsCommand),
    /// Check and read the broker's audit file (local; no broker needed).
    #[command(subcommand)]
    Audit(audit::AuditCommand),
    /// Print a shell completion script.
    Completions(completions::CompletionsArgs),
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "test")]

    use clap::CommandFactory as _;

    use super::*;

    #[test]
    fn grammar_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn identity_help_names_everything_it_does() {
        let cli = Cli::command();
        let identity = cli.find_subcommand("identity").unwrap();
        let about = identity.get_about().unwrap().to_string();
        for verb in ["Revoke", "disable", "enable"] {
            assert!(about.contains(verb), "{about}");
        }
        let verbs: Vec<&str> = identity.get_subcommands().map(clap::Command::get_name).collect();
        assert_eq!(verbs, ["revoke", "disable", "enable"]);
    }

    #[test]
    fn global_options_work_after_the_subcommand() {
        let cli = Cli::try_parse_from([
            "tessera",
            "task",
            "show",
            "t1",
            "--as",
            "orchestrator",
            "--output",
            "json",
        ])
        .unwrap();
        assert_eq!(cli.global.as_identity.as_deref(), Some("orchestrator"));
        assert_eq!(cli.global.output, OutputFormat::Json);
    }

    #[test]
    fn ttl_and_deadline_exclude_each_other() {
        let base = [
            "tessera",
            "task",
            "start",
            "--agent",
            "spiffe://td/a",
            "--allow",
            "aud s",
        ];
        let with = |extra: &[&str]| Cli::try_parse_from(base.iter().chain(extra.iter()).copied()).map(|_| ());
        assert!(with(&["--ttl", "15m"]).is_ok());
        assert!(with(&["--deadline", "2030-01-01T00:00:00Z"]).is_ok());
        assert!(with(&[]).is_err());
        assert!(with(&["--ttl", "15m", "--deadline", "2030-01-01T00:00:00Z"]).is_err());
    }
}

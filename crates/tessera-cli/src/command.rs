//! Dispatch to the commands, and what they share: the client identity and the
//! channel to the broker.

pub(crate) mod approvals;
pub(crate) mod audit;
pub(crate) mod blast;
pub(crate) mod completions;
pub(crate) mod console;
pub(crate) mod dev;
pub(crate) mod grant;
pub(crate) mod identity;
pub(crate) mod introspect;
pub(crate) mod jwks;
pub(crate) mod keys;
pub(crate) mod policy;
pub(crate) mod revocations;
pub(crate) mod revoke_all;
pub(crate) mod task;
pub(crate) mod token;

use std::path::PathBuf;

use anyhow::Context as _;
use tessera_client::{Channel, Identity};

use crate::cli::{Cli, Command, Global};

/// Runs the parsed command line.
pub(crate) async fn run(cli: Cli) -> anyhow::Result<()> {
    let global = cli.global;
    match cli.command {
        Command::Dev(cmd) => dev::run(&global, cmd),
        Command::Task(cmd) => task::run(&global, cmd).await,
        Command::Approvals(cmd) => approvals::run(&global, cmd).await,
        Command::Token(cmd) => token::run(&global, cmd).await,
        Command::Grant(cmd) => grant::run(&global, cmd).await,
        Command::Console(args) => console::run(&global, args).await,
        Command::Identity(cmd) => identity::run(&global, cmd).await,
        Command::Introspect(args) => introspect::run(&global, args).await,
        Command::Jwks => jwks::run(&global).await,
        Command::Keys(cmd) => keys::run(&global, cmd).await,
        Command::Policy(cmd) => policy::run(&global, cmd).await,
        Command::BlastRadius(args) => blast::run(&global, args).await,
        Command::RevokeAll(args) => revoke_all::run(&global, args).await,
        Command::Revocations(cmd) => revocations::run(&global, cmd).await,
        Command::Audit(cmd) => audit::run(&global, cmd).await,
        Command::Completions(args) => completions::run(&args),
    }
}

/// The three PEM files of the client identity.
#[derive(Debug, PartialEq, Eq)]
struct IdentityPaths {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

/// Resolves `--ca/--cert/--key`, filling the ones not given from `--as NAME`
/// in `--dev-dir`.
fn identity_paths(global: &Global) -> anyhow::Result<IdentityPaths> {
    let dev = match global.as_identity.as_deref() {
        Some(name) => {
            check_identity_name(name)?;
            let dir = &global.dev_dir;
            Some(IdentityPaths {
                ca: dir.join("ca.pem"),
                cert: dir.join("identities").join(format!("{name}.pem")),
                key: dir.join("identities").join(format!("{name}.key.pem")),
            })
        }
        None => None,
    };
    let pick = |explicit: &Option<PathBuf>, from_dev: Option<&PathBuf>, flag: &str| {
        explicit.clone().or_else(|| from_dev.cloned()).with_context(|| {
            format!(
                "no client identity: {flag} is missing; pass --as NAME (a development identity \
                 from `tessera dev init`) or --ca, --cert and --key"
            )
        })
    };
    Ok(IdentityPaths {
        ca: pick(&global.ca, dev.as_ref().map(|d| &d.ca), "--ca")?,
        cert: pick(&global.cert, dev.as_ref().map(|d| &d.cert), "--cert")?,
        key: pick(&global.key, dev.as_ref().map(|d| &d.key), "--key")?,
    })
}

/// `--as` names a file under `--dev-dir`: no path separators or dot files.
fn check_identity_name(name: &str) -> anyhow::Result<()> {
    let valid = !name.is_empty()
        && !name.starts_with('.')
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    anyhow::ensure!(
        valid,
        "`--as {name}` is not an identity name like `researcher` (letters, digits, `-`, `_`, `.`)"
    );
    Ok(())
}

/// Loads the identity and connects to the broker over mTLS.
pub(crate) async fn channel(global: &Global) -> anyhow::Result<Channel> {
    if let Some(socket) = &global.unix_socket {
        return Ok(tessera_client::connect_unix(socket).await?);
    }
    if let Some(file) = &global.jwt_file {
        return jwt_channel(global, file).await;
    }
    let paths = identity_paths(global)?;
    let mut identity = Identity::from_files(&paths.ca, &paths.cert, &paths.key)?;
    if let Some(id) = &global.broker_id {
        identity = identity.with_broker_id(id.clone());
    }
    let channel = tessera_client::connect(&global.endpoint, &identity).await?;
    Ok(channel)
}

/// Connects over TLS without a client certificate, attesting with the JWT in `file`.
async fn jwt_channel(global: &Global, file: &std::path::Path) -> anyhow::Result<Channel> {
    use std::io::Read as _;
    let mut jwt = String::new();
    std::fs::File::open(file)
        .and_then(|f| f.take(16 * 1024).read_to_string(&mut jwt))
        .with_context(|| format!("cannot read the attestation token `{}`", file.display()))?;
    let ca = global.ca.clone().unwrap_or_else(|| global.dev_dir.join("ca.pem"));
    let ca_pem = std::fs::read(&ca).with_context(|| format!("cannot read trust bundle `{}`", ca.display()))?;
    let broker_id = match (&global.broker_id, &global.ca) {
        (Some(id), _) => id.clone(),
        // The development PKI names its broker: trust it as far as its ca.pem.
        (None, None) => dev_broker_id(&global.dev_dir)?,
        (None, Some(_)) => anyhow::bail!(
            "--jwt-file with --ca needs --broker-id (TESSERA_BROKER_ID): the broker's SPIFFE ID, \
             which its certificate must carry"
        ),
    };
    Ok(tessera_client::connect_with_token(&global.endpoint, &ca_pem, &broker_id, jwt.trim()).await?)
}

/// The SPIFFE ID `tessera dev init` issued the broker in `dev_dir`.
fn dev_broker_id(dev_dir: &std::path::Path) -> anyhow::Result<String> {
    let cert = dev_dir.join("broker.pem");
    let pem = std::fs::read(&cert).with_context(|| {
        format!(
            "cannot read `{}` to learn the broker's SPIFFE ID: give --broker-id",
            cert.display()
        )
    })?;
    tessera_client::certificate_spiffe_id(&pem)
        .with_context(|| format!("`{}` names no broker SPIFFE ID: give --broker-id", cert.display()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "test")]

    use clap::Parser as _;

    use super::*;

    fn global(args: &[&str]) -> Global {
        let argv = ["tessera"].iter().chain(args).chain(&["jwks"]).copied();
        Cli::try_parse_from(argv).unwrap().global
    }

    #[test]
    fn as_name_points_into_dev_dir() {
        let paths = identity_paths(&global(&["--as", "researcher", "--dev-dir", "/d"])).unwrap();
        assert_eq!(
            paths,
            IdentityPaths {
                ca: "/d/ca.pem".into(),
                cert: "/d/identities/researcher.pem".into(),
                key: "/d/identities/researcher.key.pem".into(),
            }
        );
    }

    #[test]
    fn explicit_files_win_over_as() {
        let paths = identity_paths(&global(&["--as", "alice", "--dev-dir", "/d", "--ca", "/etc/ca.pem"])).unwrap();
        assert_eq!(paths.ca, PathBuf::from("/etc/ca.pem"));
        assert_eq!(paths.cert, PathBuf::from("/d/identities/alice.pem"));
    }

    #[test]
    fn missing_identity_is_explained() {
        let err = identity_paths(&global(&["--ca", "/ca.pem", "--cert", "/c.pem"])).unwrap_err();
        assert!(err.to_string().contains("--key is missing"), "{err}");
    }

    #[test]
    fn as_name_cannot_escape_dev_dir() {
        assert!(identity_paths(&global(&["--as", "../x"])).is_err());
        assert!(identity_paths(&global(&["--as", ".hidden"])).is_err());
        assert!(identity_paths(&global(&["--as", "api-gateway"])).is_ok());
    }
}

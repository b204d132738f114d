//! `tessera token request --pop-key FILE`, `tessera token delegate` and
//! `tessera token redeem`: proof-of-possession keys kept in files, and
//! delegation through the SDK (a bearer child, or an offer the delegate
//! redeems with its own key).

use std::io::Write as _;
use std::path::Path;

use anyhow::Context as _;
use clap::Args;
use tessera_client::PopKey;
use tessera_client::agent::{AgentClient, Delegation, DelegationOffer};

use crate::args::{self, TOKEN_ENV};
use crate::cli::Global;
use crate::command::channel;

/// The proof-of-possession key in `path`, created (readable by its owner
/// only) if the file does not exist. Its thumbprint goes to stderr.
pub(super) fn load_or_create(path: &Path) -> anyhow::Result<PopKey> {
    let key = match std::fs::read_to_string(path) {
        Ok(pem) => {
            let pem = zeroize::Zeroizing::new(pem);
            PopKey::from_pkcs8_pem(&pem).with_context(|| format!("`{}`", path.display()))?
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = PopKey::generate()?;
            let mut options = std::fs::OpenOptions::new();
            options.write(true).create_new(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
            let mut file = options
                .open(path)
                .with_context(|| format!("cannot create `{}`", path.display()))?;
            file.write_all(key.to_pkcs8_pem().as_bytes())
                .with_context(|| format!("cannot write `{}`", path.display()))?;
            eprintln!("created proof-of-possession key `{}`", path.display());
            key
        }
        Err(e) => return Err(e).with_context(|| format!("cannot read `{}`", path.display())),
    };
    eprintln!("proof-of-possession key thumbprint (cnf.jkt): {}", key.thumbprint());
    Ok(key)
}

/// `token delegate`.
#[derive(Debug, Args)]
pub(crate) struct DelegateArgs {
    /// The parent token (held by the caller), or `-` to read it from stdin;
    /// omitted: $TESSERA_TOKEN.
    #[arg(value_name = "TOKEN|-")]
    token: Option<String>,
    /// SPIFFE ID of the agent receiving the child token (assigned to the same task).
    #[arg(long, value_name = "SPIFFE_ID", value_parser = args::parse_spiffe_id)]
    to: String,
    /// A scope (repeatable), a subset of the parent's; none: all of them.
    #[arg(long = "scope", value_name = "SCOPE")]
    scopes: Vec<String>,
    /// Requested lifetime, e.g. 2m; never past the parent's expiry.
    #[arg(long, value_name = "DURATION", value_parser = args::parse_seconds)]
    ttl: Option<u32>,
    /// Print an offer for the delegate instead of a bearer child: the
    /// delegate redeems it (`token redeem`) and binds the child to its own
    /// key; you never receive that child. Required for write and admin tokens.
    #[arg(long)]
    offer: bool,
}

/// `token redeem`.
#[derive(Debug, Args)]
pub(crate) struct RedeemArgs {
    /// The offer made to you by `token delegate --offer`, or `-` to read it
    /// from stdin.
    #[arg(value_name = "OFFER|-")]
    offer: String,
    /// Your proof-of-possession key file: the child is bound to it (created,
    /// owner-only, if missing). Without it the child is a bearer token, which
    /// the broker refuses for write and admin tokens.
    #[arg(long, value_name = "FILE")]
    pop_key: Option<std::path::PathBuf>,
}

/// Runs `token redeem`.
pub(crate) async fn redeem(global: &Global, a: RedeemArgs) -> anyhow::Result<()> {
    let offer = args::read_token(Some(a.offer.as_str()), None, std::io::stdin().lock())?;
    let key = a.pop_key.as_deref().map(load_or_create).transpose()?;
    let mut client = AgentClient::new(channel(global).await?);
    let child = client.redeem(&DelegationOffer::from_offer(offer), key.as_ref()).await?;
    super::print_issued(global.output, child.into_proto())
}

/// Runs `token delegate`.
pub(crate) async fn delegate(global: &Global, a: DelegateArgs) -> anyhow::Result<()> {
    let parent = args::read_token(
        a.token.as_deref(),
        std::env::var(TOKEN_ENV).ok(),
        std::io::stdin().lock(),
    )?;
    let mut delegation = Delegation::to(a.to).scopes(a.scopes);
    if let Some(ttl) = a.ttl {
        delegation = delegation.ttl_seconds(ttl);
    }
    let mut client = AgentClient::new(channel(global).await?);
    let parent = tessera_client::pb::IssuedToken {
        access_token: parent,
        ..Default::default()
    };
    if a.offer {
        let offer = client.offer(&parent.into(), delegation).await?;
        crate::output::line(offer.offer())?;
        eprintln!(
            "offer for {}: it alone can redeem it, once, with `tessera token redeem`",
            offer.delegate()
        );
        return Ok(());
    }
    let child = client.delegate(&parent.into(), delegation).await?;
    super::print_issued(global.output, child.into_proto())
}

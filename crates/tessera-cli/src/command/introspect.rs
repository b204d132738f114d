//! `tessera introspect`: ask the broker whether a token is live.

use clap::Args;
use serde::Serialize;
use tessera_client::{VerifierClient, pb};

use crate::args::{self, TOKEN_ENV};
use crate::cli::Global;
use crate::command::channel;
use crate::output::{self, OutputFormat};

/// `introspect`.
#[derive(Debug, Args)]
pub(crate) struct IntrospectArgs {
    /// The token, or `-` to read it from stdin; omitted: $TESSERA_TOKEN. A
    /// token given here is visible to other local users in the process list:
    /// prefer `-` or the environment.
    #[arg(value_name = "TOKEN|-")]
    token: Option<String>,
}

/// The answer as printed; an inactive token has `active: false` and nothing else.
#[derive(Debug, Serialize)]
struct IntrospectView {
    active: bool,
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    claims: Option<ActiveClaims>,
}

#[derive(Debug, Serialize)]
struct ActiveClaims {
    sub: String,
    aud: String,
    scope: String,
    task_id: String,
    jti: String,
    client_id: String,
    iss: String,
    iat: Option<String>,
    exp: Option<String>,
    token_type: String,
}

/// Runs `introspect`.
pub(crate) async fn run(global: &Global, introspect_args: IntrospectArgs) -> anyhow::Result<()> {
    let token = args::read_token(
        introspect_args.token.as_deref(),
        std::env::var(TOKEN_ENV).ok(),
        std::io::stdin().lock(),
    )?;
    let mut client = VerifierClient::new(channel(global).await?);
    let answer = client.introspect(pb::IntrospectRequest { token }).await?.into_inner();
    let view = IntrospectView {
        active: answer.active,
        claims: answer.active.then(|| ActiveClaims {
            iat: output::timestamp(answer.iat.as_ref()),
            exp: output::timestamp(answer.exp.as_ref()),
            sub: answer.sub,
            aud: answer.aud,
            scope: answer.scope,
            task_id: answer.task_id,
            jti: answer.jti,
            client_id: answer.client_id,
            iss: answer.iss,
            token_type: answer.token_type,
        }),
    };
    match global.output {
        OutputFormat::Json => output::json(&view),
        OutputFormat::Text => {
            output::line(format_args!("active: {}", view.active))?;
            if let Some(c) = &view.claims {
                output::field("sub", &c.sub)?;
                output::field("aud", &c.aud)?;
                output::field("scope", &c.scope)?;
                output::field("task_id", &c.task_id)?;
                output::field("jti", &c.jti)?;
                output::field("client_id", &c.client_id)?;
                output::field("iss", &c.iss)?;
                output::field("iat", c.iat.as_deref().unwrap_or_default())?;
                output::field("exp", c.exp.as_deref().unwrap_or_default())?;
                output::field("token_type", &c.token_type)?;
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "test")]

    use super::*;

    #[test]
    fn inactive_prints_only_active() {
        let view = IntrospectView {
            active: false,
            claims: None,
        };
        assert_eq!(serde_json::to_string(&view).unwrap(), r#"{"active":false}"#);
    }
}

//! `tessera token request|delegate|inspect`: get a task-scoped token as an agent (bearer or
//! bound to a proof-of-possession key), delegate one, or decode one and optionally verify it against the broker's JWKS.

use anyhow::Context as _;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use clap::{Args, Subcommand};
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet, KeyAlgorithm};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Serialize;
use serde_json::Value;
use tessera_client::{AgentClient, VerifierClient, pb};

use crate::args::{self, TOKEN_ENV};
use crate::cli::Global;
use crate::command::channel;
use crate::exit::PendingApproval;
use crate::output::{self, OutputFormat};

mod bound;

/// Token commands.
#[derive(Debug, Subcommand)]
pub(crate) enum TokenCommand {
    /// Request a token for one audience and one scope class within a task (as an agent).
    ///
    /// Text output is the access token alone on stdout, so
    /// `TOKEN=$(tessera --as researcher token request ...)` works; a summary
    /// goes to stderr. A request that needs a person's approval exits 3 with
    /// nothing on stdout (the approval id on stderr) unless --wait.
    Request(RequestArgs),
    /// Delegate a token you hold: mint an attenuated child for another agent
    /// of the same task (same audience, a subset of the scopes, no later expiry).
    ///
    /// Text output is the child token alone on stdout. The child is a bearer
    /// token returned to you: its `client_id` names the delegate but does not
    /// prove the delegate holds it. With --offer, the output is an offer only
    /// the delegate can redeem (`token redeem`), binding the child to its key.
    Delegate(bound::DelegateArgs),
    /// Redeem a delegation offer made to you (`token delegate --offer`): the
    /// child, bound to your --pop-key. Text output is the token alone on stdout.
    Redeem(bound::RedeemArgs),
    /// Decode a token's header and claims; with --verify, check its signature
    /// against the broker's JWKS.
    Inspect(InspectArgs),
    /// Wait for a pending approval of one of your requests and print the
    /// token once approved (exit 2 if denied, expired or already collected).
    Await(AwaitArgs),
}

/// `token await`.
#[derive(Debug, Args)]
pub(crate) struct AwaitArgs {
    /// The approval id (`ap_…`) that `token request` printed.
    approval_id: String,
}

/// `token request`.
#[derive(Debug, Args)]
pub(crate) struct RequestArgs {
    /// The task the token is for.
    #[arg(long, value_name = "ID")]
    task: String,
    /// The API the token is for (its `aud`).
    #[arg(long, value_name = "AUDIENCE")]
    audience: String,
    /// A scope (repeatable); all of one class, within the task's ceiling.
    #[arg(long = "scope", value_name = "SCOPE", required = true)]
    scopes: Vec<String>,
    /// Requested lifetime, e.g. 5m (default: the broker's); the broker may grant less.
    #[arg(long, value_name = "DURATION", value_parser = args::parse_seconds)]
    ttl: Option<u32>,
    /// Bind the token to a proof-of-possession key (`cnf.jkt`, token type
    /// DPoP), kept in --pop-key (default `tessera-pop-key.pem`).
    #[arg(long)]
    pop: bool,
    /// The proof-of-possession key file (PKCS#8 PEM; created, owner-only,
    /// if missing). Implies --pop.
    #[arg(long, value_name = "FILE", conflicts_with = "mtls_binding")]
    pop_key: Option<std::path::PathBuf>,
    /// Bind the token to this client's mTLS certificate (`cnf.x5t#S256`).
    #[arg(long, conflicts_with = "pop")]
    mtls_binding: bool,
    /// If the request needs a person's approval, wait for the decision and
    /// print the token once approved (exit 2 if denied or expired). Without
    /// it, such a request exits 3: no token yet.
    #[arg(long)]
    wait: bool,
    /// A tool-level limit within the task's: a JSON array of one RFC 9396
    /// `mcp_tool` detail whose `server` is --audience (default: the task's).
    #[arg(long, value_name = "JSON")]
    authorization_details: Option<String>,
}

/// Default `--pop-key` file.
const DEFAULT_POP_KEY: &str = "tessera-pop-key.pem";

/// `token inspect`.
#[derive(Debug, Args)]
pub(crate) struct InspectArgs {
    /// The token, or `-` to read it from stdin; omitted: $TESSERA_TOKEN. A
    /// token given here is visible to other local users in the process list:
    /// prefer `-` or the environment.
    #[arg(value_name = "TOKEN|-")]
    token: Option<String>,
    /// Verify the signature with the broker's JWKS (fetched over gRPC with the
    /// identity options), `typ`, `exp` and `nbf`.
    #[arg(long)]
    verify: bool,
    /// With --verify: also require this `iss`.
    #[arg(long, requires = "verify", value_name = "ISSUER")]
    issuer: Option<String>,
    /// With --verify: also require this `aud`.
    #[arg(long, requires = "verify", value_name = "AUDIENCE")]
    audience: Option<String>,
    /// Clock skew tolerated on `exp` and `nbf`: the broker's default
    /// `[tokens] leeway`, so a token the broker would refuse is not shown valid.
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = args::parse_seconds)]
    leeway: u32,
}

/// Runs a token command.
pub(crate) async fn run(global: &Global, cmd: TokenCommand) -> anyhow::Result<()> {
    match cmd {
        TokenCommand::Request(req) => request(global, req).await,
        TokenCommand::Delegate(delegate_args) => bound::delegate(global, delegate_args).await,
        TokenCommand::Redeem(redeem_args) => bound::redeem(global, redeem_args).await,
        TokenCommand::Inspect(inspect_args) => inspect(global, inspect_args).await,
        TokenCommand::Await(a) => {
            let mut client = AgentClient::new(channel(global).await?);
            await_approval(global.output, &mut client, a.approval_id).await
        }
    }
}

async fn request(global: &Global, req: RequestArgs) -> anyhow::Result<()> {
    let pop_proof = if req.pop || req.pop_key.is_some() {
        let path = req.pop_key.unwrap_or_else(|| std::path::PathBuf::from(DEFAULT_POP_KEY));
        bound::load_or_create(&path)?.proof("POST", tessera_client::REQUEST_TOKEN_HTU, None)?
    } else {
        String::new()
    };
    let mut client = AgentClient::new(channel(global).await?);
    let response = client
        .request_token(pb::RequestTokenRequest {
            authorization_details: req.authorization_details.clone().unwrap_or_default(),
            task_id: req.task.clone(),
            audience: req.audience.clone(),
            scopes: req.scopes.clone(),
            ttl_seconds: req.ttl,
            pop_proof,
            mtls_binding: req.mtls_binding,
        })
        .await?
        .into_inner();
    match response.outcome {
        Some(pb::request_token_response::Outcome::Token(token)) => print_issued(global.output, token),
        Some(pb::request_token_response::Outcome::Pending(pending)) => {
            if req.wait && global.output == OutputFormat::Json {
                // stdout gets one JSON document, the token; the approval id goes to stderr.
                eprintln!(
                    "{}",
                    serde_json::json!({"pending_approval": {"approval_id": pending.approval_id, "reason": pending.reason}})
                );
            } else {
                print_pending(global.output, &pending)?;
            }
            if !req.wait {
                return Err(PendingApproval {
                    approval_id: pending.approval_id,
                }
                .into());
            }
            await_approval(global.output, &mut client, pending.approval_id).await
        }
        None => anyhow::bail!("the broker answered with neither a token nor a pending approval"),
    }
}

/// An issued token as printed in JSON. Holds the secret on purpose: printing
/// it is what `token request` is for.
#[derive(Debug, Serialize)]
struct IssuedView {
    access_token: String,
    token_type: String,
    grant_id: String,
    task_id: String,
    audience: String,
    scopes: Vec<String>,
    class: String,
    issued_at: Option<String>,
    expires_at: Option<String>,
    expires_in: u32,
}

pub(super) fn print_issued(format: OutputFormat, token: pb::IssuedToken) -> anyhow::Result<()> {
    let view = IssuedView {
        class: output::scope_class(token.class),
        issued_at: output::timestamp(token.issued_at.as_ref()),
        expires_at: output::timestamp(token.expires_at.as_ref()),
        access_token: token.access_token,
        token_type: token.token_type,
        grant_id: token.grant_id,
        task_id: token.task_id,
        audience: token.audience,
        scopes: token.scopes,
        expires_in: token.expires_in,
    };
    match format {
        OutputFormat::Json => output::json(&view),
        OutputFormat::Text => {
            output::line(&view.access_token)?;
            eprintln!(
                "grant {}: {} ({}) for {}, expires in {}{}",
                view.grant_id,
                view.scopes.join(" "),
                view.class,
                view.audience,
                output::seconds(u64::from(view.expires_in)),
                view.expires_at
                    .as_deref()
                    .map(|at| format!(" at {at}"))
                    .unwrap_or_default(),
            );
            Ok(())
        }
    }
}

/// A pending approval as printed in JSON.
#[derive(Debug, Serialize)]
struct PendingView<'a> {
    pending_approval: PendingFields<'a>,
}

#[derive(Debug, Serialize)]
struct PendingFields<'a> {
    approval_id: &'a str,
    expires_at: Option<String>,
    reason: &'a str,
}

fn print_pending(format: OutputFormat, pending: &pb::PendingApproval) -> anyhow::Result<()> {
    let view = PendingView {
        pending_approval: PendingFields {
            approval_id: &pending.approval_id,
            expires_at: output::timestamp(pending.expires_at.as_ref()),
            reason: &pending.reason,
        },
    };
    match format {
        OutputFormat::Json => output::json(&view),
        OutputFormat::Text => {
            // stderr only: stdout stays empty, so `TOKEN=$(...)` never holds a non-token.
            eprintln!(
                "no token yet: the request waits for approval {} by a human approver{}{}",
                pending.approval_id,
                view.pending_approval
                    .expires_at
                    .as_deref()
                    .map(|at| format!(" until {at}"))
                    .unwrap_or_default(),
                if pending.reason.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", pending.reason)
                },
            );
            Ok(())
        }
    }
}

/// Follows AwaitApproval until the token arrives (printed like `token
/// request` prints one) or the broker says no token will come.
async fn await_approval(format: OutputFormat, client: &mut AgentClient, approval_id: String) -> anyhow::Result<()> {
    let mut stream = client
        .await_approval(pb::AwaitApprovalRequest { approval_id })
        .await?
        .into_inner();
    while let Some(item) = stream.message().await? {
        match item.event {
            Some(pb::await_approval_response::Event::Token(token)) => return print_issued(format, token),
            Some(pb::await_approval_response::Event::StillPending(p)) if format == OutputFormat::Text => {
                eprintln!(
                    "still waiting for approval {}{}",
                    p.approval_id,
                    output::timestamp(p.expires_at.as_ref())
                        .map(|at| format!(" (expires at {at})"))
                        .unwrap_or_default()
                );
            }
            Some(pb::await_approval_response::Event::StillPending(_)) | None => {}
        }
    }
    anyhow::bail!("the broker ended the wait without a token or a reason")
}

/// A decoded token. Never contains the signature or the token itself.
#[derive(Debug, Serialize)]
struct DecodedView {
    header: Value,
    claims: Value,
    /// `exp` is more than the leeway in the past (or missing).
    expired: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    signature: Option<SignatureView>,
}

/// The outcome of `--verify` (only ever printed as valid; invalid is an error).
#[derive(Debug, Serialize)]
struct SignatureView {
    valid: bool,
    kid: String,
    alg: String,
}

async fn inspect(global: &Global, inspect_args: InspectArgs) -> anyhow::Result<()> {
    let token = args::read_token(
        inspect_args.token.as_deref(),
        std::env::var(TOKEN_ENV).ok(),
        std::io::stdin().lock(),
    )?;
    let (header, claims) = decode_unverified(&token)?;
    let now = i64::try_from(jsonwebtoken::get_current_timestamp()).unwrap_or(i64::MAX);
    let expired = is_expired(&claims, now, inspect_args.leeway);
    let signature = if inspect_args.verify {
        let mut client = VerifierClient::new(channel(global).await?);
        let jwks = client.get_jwks(pb::GetJwksRequest {}).await?.into_inner();
        Some(verify(
            &token,
            &jwks.jwks_json,
            &Expect {
                issuer: inspect_args.issuer.as_deref(),
                audience: inspect_args.audience.as_deref(),
                leeway: inspect_args.leeway,
            },
        )?)
    } else {
        None
    };
    let view = DecodedView {
        header,
        claims,
        expired,
        signature,
    };
    match global.output {
        OutputFormat::Json => output::json(&view),
        OutputFormat::Text => {
            output::json(&serde_json::json!({ "header": view.header, "claims": view.claims }))?;
            for (name, claim) in [("issued", "iat"), ("not before", "nbf"), ("expires", "exp")] {
                if let Some(at) = view.claims.get(claim).and_then(Value::as_i64) {
                    let time = output::unix_time(at).unwrap_or_default();
                    if claim == "exp" && view.expired {
                        output::field(name, format_args!("{time} (expired)"))?;
                    } else {
                        output::field(name, time)?;
                    }
                }
            }
            match &view.signature {
                Some(sig) => output::line(format_args!("signature: valid (kid {}, alg {})", sig.kid, sig.alg))?,
                None => output::line("signature: not verified (use --verify)")?,
            }
            Ok(())
        }
    }
}

/// Splits a compact JWS and decodes its header and claims, without verifying.
fn decode_unverified(token: &str) -> anyhow::Result<(Value, Value)> {
    let mut parts = token.split('.');
    let (Some(header), Some(claims), Some(_signature), None) = (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        anyhow::bail!("not a compact JWS: expected three `.`-separated parts");
    };
    let part = |name: &str, b64: &str| -> anyhow::Result<Value> {
        let bytes = URL_SAFE_NO_PAD
            .decode(b64.trim_end_matches('='))
            .with_context(|| format!("the token's {name} is not base64url"))?;
        let value: Value = serde_json::from_slice(&bytes).with_context(|| format!("the token's {name} is not JSON"))?;
        anyhow::ensure!(value.is_object(), "the token's {name} is not a JSON object");
        Ok(value)
    };
    Ok((part("header", header)?, part("claims", claims)?))
}

/// Whether `exp` is missing or more than `leeway` seconds before `now`, as
/// the broker judges it.
fn is_expired(claims: &Value, now: i64, leeway: u32) -> bool {
    claims
        .get("exp")
        .and_then(Value::as_i64)
        .is_none_or(|exp| exp.saturating_add(i64::from(leeway)) < now)
}

/// What `verify` requires besides the signature.
struct Expect<'a> {
    issuer: Option<&'a str>,
    audience: Option<&'a str>,
    /// Seconds of clock skew on `exp` and `nbf`.
    leeway: u32,
}

/// Verifies `token` with the independent `jsonwebtoken` crate against the
/// JWK Set `jwks_json`: key by `kid`, algorithm from that key (ES256 or EdDSA
/// only), `typ` `at+jwt`, `exp` and `nbf` within the leeway, and `iss`/`aud`
/// when given.
fn verify(token: &str, jwks_json: &str, expect: &Expect<'_>) -> anyhow::Result<SignatureView> {
    // jsonwebtoken panics at the first decode without a crypto provider; Err
    // only means one is already installed.
    let _ = jsonwebtoken::crypto::rust_crypto::DEFAULT_PROVIDER.install_default();

    let header = jsonwebtoken::decode_header(token).context("invalid token header")?;
    let kid = header
        .kid
        .context("signature: the token header has no `kid`; refusing to guess a key")?;
    let typ = header.typ.as_deref().unwrap_or_default();
    anyhow::ensure!(
        typ.eq_ignore_ascii_case("at+jwt") || typ.eq_ignore_ascii_case("application/at+jwt"),
        "signature: header `typ` is `{typ}`, not `at+jwt`"
    );
    let jwks: JwkSet = serde_json::from_str(jwks_json).context("the broker's JWKS is not a JWK Set")?;
    let jwk = jwks
        .find(&kid)
        .with_context(|| format!("signature: no key `{kid}` in the broker's JWKS"))?;
    let alg = match (jwk.common.key_algorithm, &jwk.algorithm) {
        (Some(KeyAlgorithm::ES256), AlgorithmParameters::EllipticCurve(ec)) if ec.curve == EllipticCurve::P256 => {
            Algorithm::ES256
        }
        (Some(KeyAlgorithm::EdDSA), AlgorithmParameters::OctetKeyPair(okp)) if okp.curve == EllipticCurve::Ed25519 => {
            Algorithm::EdDSA
        }
        (alg, _) => anyhow::bail!(
            "signature: key `{kid}` has alg {alg:?} with a key type other than ES256 on P-256 \
             or EdDSA on Ed25519; refusing"
        ),
    };
    let key = DecodingKey::from_jwk(jwk).with_context(|| format!("key `{kid}` is unusable"))?;

    let mut validation = Validation::new(alg);
    validation.leeway = u64::from(expect.leeway);
    validation.validate_exp = true;
    validation.validate_nbf = true;
    match expect.issuer {
        Some(iss) => validation.set_issuer(&[iss]),
        None => validation.iss = None,
    }
    match expect.audience {
        Some(aud) => validation.set_audience(&[aud]),
        None => validation.validate_aud = false,
    }
    jsonwebtoken::decode::<Value>(token, &key, &validation)
        .map_err(|e| anyhow::anyhow!("signature: {}", rejection(&e)))?;
    Ok(SignatureView {
        valid: true,
        kid,
        alg: format!("{alg:?}"),
    })
}

/// Why jsonwebtoken rejected a token, in words.
fn rejection(err: &jsonwebtoken::errors::Error) -> String {
    use jsonwebtoken::errors::ErrorKind;
    match err.kind() {
        ErrorKind::InvalidSignature => "invalid: the signature does not verify".to_owned(),
        ErrorKind::ExpiredSignature => "invalid: the token has expired (`exp`)".to_owned(),
        ErrorKind::ImmatureSignature => "invalid: the token is not valid yet (`nbf`)".to_owned(),
        ErrorKind::InvalidIssuer => "invalid: `iss` is not the expected issuer".to_owned(),
        ErrorKind::InvalidAudience => "invalid: `aud` is not the expected audience".to_owned(),
        ErrorKind::InvalidAlgorithm => "invalid: header `alg` does not match the key".to_owned(),
        ErrorKind::MissingRequiredClaim(claim) => format!("invalid: claim `{claim}` is missing"),
        _ => format!("invalid: {err}"),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing, reason = "test")]

    use super::*;

    fn b64(v: &Value) -> String {
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap())
    }

    #[test]
    fn decodes_header_and_claims() {
        let token = format!(
            "{}.{}.sig",
            b64(&serde_json::json!({"alg": "ES256", "typ": "at+jwt", "kid": "k1"})),
            b64(&serde_json::json!({"sub": "spiffe://td/a", "exp": 1})),
        );
        let (header, claims) = decode_unverified(&token).unwrap();
        assert_eq!(header["kid"], "k1");
        assert_eq!(claims["sub"], "spiffe://td/a");
    }

    #[test]
    fn expiry_is_judged_with_the_leeway() {
        let claims = |exp: i64| serde_json::json!({ "exp": exp });
        let now = 1_800_000_000;
        assert!(!is_expired(&claims(now + 60), now, 5));
        assert!(!is_expired(&claims(now - 5), now, 5));
        assert!(is_expired(&claims(now - 6), now, 5));
        assert!(!is_expired(&claims(now - 6), now, 30));
        // No `exp`: the broker never issues one; treat it as unusable.
        assert!(is_expired(&serde_json::json!({}), now, 5));
    }

    #[test]
    fn refuses_what_is_not_a_jws() {
        assert!(decode_unverified("a.b").is_err());
        assert!(decode_unverified("a.b.c.d").is_err());
        assert!(decode_unverified("!!.e30.x").is_err());
        // `[]` is JSON but not an object.
        let arr = URL_SAFE_NO_PAD.encode("[]");
        assert!(decode_unverified(&format!("{arr}.{arr}.x")).is_err());
    }

    /// Signs like the broker does (ring, ES256 fixed signatures) and verifies
    /// through `verify`.
    mod signed {
        use ring::rand::SystemRandom;
        use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair as _};

        use super::*;

        struct Signer {
            key: EcdsaKeyPair,
            jwks: String,
        }

        fn signer(kid: &str) -> Signer {
            let rng = SystemRandom::new();
            let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
            let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng).unwrap();
            let public = key.public_key().as_ref();
            let jwks = serde_json::json!({"keys": [{
                "kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig", "kid": kid,
                "x": URL_SAFE_NO_PAD.encode(&public[1..33]),
                "y": URL_SAFE_NO_PAD.encode(&public[33..65]),
            }]})
            .to_string();
            Signer { key, jwks }
        }

        impl Signer {
            fn sign(&self, header: &Value, claims: &Value) -> String {
                let input = format!("{}.{}", b64(header), b64(claims));
                let sig = self.key.sign(&SystemRandom::new(), input.as_bytes()).unwrap();
                format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig.as_ref()))
            }
        }

        fn now() -> i64 {
            i64::try_from(jsonwebtoken::get_current_timestamp()).unwrap()
        }

        fn claims(exp: i64) -> Value {
            serde_json::json!({
                "iss": "https://tessera.local", "sub": "spiffe://tessera.local/agent/researcher",
                "aud": "https://api.example.com/crm", "exp": exp, "nbf": now() - 5, "iat": now() - 5,
                "jti": "g1", "scope": "crm.contacts.read",
            })
        }

        fn header(kid: &str, typ: &str) -> Value {
            serde_json::json!({"alg": "ES256", "typ": typ, "kid": kid})
        }

        /// What `tessera token inspect --verify` expects by default.
        const DEFAULT: Expect<'static> = Expect {
            issuer: None,
            audience: None,
            leeway: 5,
        };

        #[test]
        fn valid_token_verifies() {
            let s = signer("k1");
            let token = s.sign(&header("k1", "at+jwt"), &claims(now() + 300));
            let sig = verify(&token, &s.jwks, &DEFAULT).unwrap();
            assert_eq!((sig.kid.as_str(), sig.alg.as_str()), ("k1", "ES256"));
            verify(
                &token,
                &s.jwks,
                &Expect {
                    issuer: Some("https://tessera.local"),
                    audience: Some("https://api.example.com/crm"),
                    ..DEFAULT
                },
            )
            .unwrap();
        }

        #[test]
        fn the_default_leeway_is_the_brokers() {
            let s = signer("k1");
            // Expired 20 s ago: within jsonwebtoken's usual 30 s (and the old
            // CLI's), beyond the broker's 5 s.
            let token = s.sign(&header("k1", "at+jwt"), &claims(now() - 20));
            let err = verify(&token, &s.jwks, &DEFAULT).unwrap_err().to_string();
            assert!(err.contains("expired"), "{err}");
            // A wider --leeway accepts it.
            verify(&token, &s.jwks, &Expect { leeway: 60, ..DEFAULT }).unwrap();
            // The default is what the CLI parses without --leeway.
            let cli = <crate::cli::Cli as clap::Parser>::try_parse_from(["tessera", "token", "inspect", "x"]).unwrap();
            let crate::cli::Command::Token(TokenCommand::Inspect(args)) = cli.command else {
                panic!("not token inspect");
            };
            assert_eq!(args.leeway, DEFAULT.leeway);
        }

        #[test]
        fn bad_tokens_are_refused() {
            let s = signer("k1");
            let good = claims(now() + 300);
            let reason = |token: &str, issuer: Option<&str>, audience: Option<&str>| {
                verify(
                    token,
                    &s.jwks,
                    &Expect {
                        issuer,
                        audience,
                        ..DEFAULT
                    },
                )
                .unwrap_err()
                .to_string()
            };
            let expired = s.sign(&header("k1", "at+jwt"), &claims(now() - 3600));
            assert!(reason(&expired, None, None).contains("expired"));
            let wrong_typ = s.sign(&header("k1", "JWT"), &good);
            assert!(reason(&wrong_typ, None, None).contains("typ"));
            let unknown_kid = s.sign(&header("k2", "at+jwt"), &good);
            assert!(reason(&unknown_kid, None, None).contains("no key `k2`"));
            let no_kid = s.sign(&serde_json::json!({"alg": "ES256", "typ": "at+jwt"}), &good);
            assert!(reason(&no_kid, None, None).contains("no `kid`"));
            let token = s.sign(&header("k1", "at+jwt"), &good);
            assert!(reason(&token, None, Some("https://other")).contains("aud"));
            assert!(reason(&token, Some("https://evil"), None).contains("iss"));
            // Signed by another key that claims the same kid.
            let other = signer("k1");
            let forged = other.sign(&header("k1", "at+jwt"), &good);
            assert!(reason(&forged, None, None).contains("does not verify"));
        }
    }
}

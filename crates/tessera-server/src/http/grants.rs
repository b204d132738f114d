//! The token endpoint's grants for agents that speak OAuth instead of gRPC
//! (MCP clients among them). Every token comes from
//! [`Broker::request_token`](crate::broker::Broker::request_token), the
//! RequestToken use case: the same decision, record, audit, caps and
//! revocation at task end as over gRPC; each audit record of the request
//! names its grant type and client authentication (`grant_type`,
//! `client_auth`).
//!
//! **Grants**
//! - `urn:ietf:params:oauth:grant-type:jwt-bearer` (RFC 7523 section 2.1):
//!   `assertion` is a workload JWT (a JWT-SVID, a Kubernetes
//!   service-account token) of an issuer `[[attestation.jwt.issuers]]`
//!   trusts. It is attested by the gRPC port's JWT attestor, the same code
//!   (issuers, algorithm allow-list, keys, `exp`/`nbf`/`iat`, mapping to a
//!   SPIFFE ID, the identity's `attestation` methods), except that its `aud`
//!   must be this token endpoint's URL or the broker's issuer identifier
//!   and its `jti` is required and single use across replicas (the shared
//!   replay cache, until `exp`). The agent it names gets the token. Client
//!   authentication is optional; when present it must name the same
//!   identity.
//! - `client_credentials` (RFC 6749 section 4.4): the authenticated client
//!   gets the token.
//!
//! **Client authentication**
//! - `tls_client_auth` (RFC 8705): the X.509-SVID of the connection.
//! - `private_key_jwt` (RFC 7523 section 2.2): `client_assertion_type` =
//!   [`CLIENT_ASSERTION_TYPE`], `client_assertion` a JWT whose `iss` and
//!   `sub` are the client's SPIFFE ID, signed by a key registered for it
//!   (`client_jwks_file` of its `[[identities]]` entry, or fetched from
//!   its `jwks_uri`, `client_jwks_url`, with [`ClientJwksCaches`]), `aud` as above,
//!   `exp`, `iat` (at most 5 minutes old) and a single-use `jti`.
//! - A `client_assertion` from a trusted attestation issuer (Workload
//!   Identity Federation: a JWT-SVID as the client assertion) is attested
//!   exactly as a `jwt-bearer` assertion (`client_auth` = `client_assertion`).
//!
//! One method per request: a client certificate and an assertion together
//! are refused.
//!
//! **The request**: `resource` (RFC 8707, required, exactly one) becomes the
//! token's audience and must be in the task's ceiling (`audience`, if sent,
//! must equal it); `scope` is required; the task is named by `task_id` or by
//! `authorization_details` (RFC 9396) holding one object of type
//! [`TESSERA_TASK`]: `{"type":"tessera_task","task_id":"…"}`, with optional
//! `locations` that must all be the `resource`. Beside it, one object of
//! type [`MCP_TOOL`] (see [`tessera_core::authz`]) whose `server` is the
//! `resource` asks for a tool-level limit within the task's (without one,
//! the token carries the task's limit for the `resource`, if any); the
//! answer's `authorization_details` names the limit granted. A `DPoP` header (RFC 9449)
//! binds the token to its key (`cnf.jkt`, `token_type` `DPoP`); the proof
//! must carry a nonce of this broker (`use_dpop_nonce` and a `DPoP-Nonce`
//! header otherwise) unless `oauth.dpop_nonce = false`. Without DPoP, a
//! client authenticated by certificate gets a certificate-bound token
//! (`cnf.x5t#S256`), anyone else a bearer token if the scopes' class allows
//! one. A request needing a person's approval is answered
//! `authorization_pending` with an `approval_id`, which the client polls
//! for with the same grant (see [`redeem_approval`]).
//!
//! **Errors** (RFC 6749 section 5.2, RFC 7521 section 4.1.1, RFC 8707,
//! RFC 9396, RFC 9449): a refused assertion is `invalid_grant`, a refused
//! client `invalid_client` (401), a `resource` not in the ceiling
//! `invalid_target`, scopes beyond it `invalid_scope`, bad
//! `authorization_details` (also a tool-level limit wider than the task's)
//! `invalid_authorization_details`, a bad proof
//! `invalid_dpop_proof`, a missing or stale nonce `use_dpop_nonce`. Each is
//! audited: an unattested caller as `attestation_refused`, an attested one
//! as `token_denied`.

use std::collections::HashMap;

use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;
use serde_json::{Value, json};
use tessera_core::authz::{MCP_TOOL, ToolGrant};
use tessera_core::identity::{AttestationMethod, SpiffeId, VerifiedIdentity};
use tessera_core::issuance::IssuanceError;
use tessera_core::pop::{PROOF_MAX_AGE, ProofCheck};

use super::PeerCertificate;
use super::oauth::{Facade, OAuthError, json_no_store, required};
use tessera_core::identity::ClientKeys;

use crate::attest::jwt::{JwtRefusal, KeyCache};
use crate::broker::oauth::{OAuthGrant, RefusedAsk, in_grant};
use crate::broker::{AwaitStep, BindingAsk, BrokerError, Issued, TokenAsk, TokenOutcome};

/// RFC 7523 section 2.1.
pub const JWT_BEARER: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";
/// RFC 6749 section 4.4.
pub const CLIENT_CREDENTIALS: &str = "client_credentials";
/// RFC 7523 section 2.2.
pub const CLIENT_ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
/// The RFC 9396 `authorization_details` type naming a task.
pub const TESSERA_TASK: &str = "tessera_task";
/// Replay-cache namespace of `private_key_jwt` client assertion `jti`s.
const CLIENT_ASSERTION_NAMESPACE: &str = "oauth-client-assertion";
/// What a client whose `private_key_jwt` failed is told: no more, so the
/// answer does not say which clients are registered or which keys they
/// have (the audit record says why).
const CLIENT_AUTH_FAILED: &str = "client authentication failed";
/// Most `authorization_details` objects in one request.
const MAX_DETAILS: usize = 8;

/// How the client authenticated, once it did.
struct Client {
    who: VerifiedIdentity,
    /// `tls_client_auth`, `private_key_jwt` or `client_assertion`.
    method: &'static str,
}

/// The token endpoint for [`JWT_BEARER`] and [`CLIENT_CREDENTIALS`].
pub(super) async fn token(
    facade: &Facade,
    peer: &PeerCertificate,
    headers: &HeaderMap,
    params: &HashMap<String, String>,
    grant_type: &str,
) -> Result<Response, OAuthError> {
    let jwt_bearer = grant_type == JWT_BEARER;
    let label = if jwt_bearer { "jwt-bearer" } else { "client_credentials" };
    // The audit records of client authentication already name the grant;
    // its method is known once it is.
    let pending = OAuthGrant {
        grant_type: label,
        client_auth: if params.contains_key("client_assertion") {
            "client_assertion"
        } else if peer.cert.is_some() {
            "tls_client_auth"
        } else {
            "none"
        },
    };
    // RFC 9449 section 8: the nonce challenge comes before anything spends
    // a `jti` (the client assertion's, the assertion's), so the client can
    // send the very same request again with the nonce.
    if let Err(b) = dpop_proof(facade, headers)
        && b.code == "use_dpop_nonce"
    {
        let e = in_grant(
            pending,
            facade.broker.oauth_nonce_challenged(None, &partial(params), b.message),
        )
        .await;
        return Err(nonce_challenge(facade, e));
    }
    let client = in_grant(pending, authenticate_client(facade, peer, params)).await?;
    let (who, client_auth) = match (jwt_bearer, client) {
        (false, None) => {
            let answer = OAuthError::invalid_client(
                "client_credentials needs client authentication: an X.509-SVID (tls_client_auth) or a client assertion (private_key_jwt)",
            );
            return Err(in_grant(
                pending,
                unattested(facade, peer, AttestationMethod::PrivateKeyJwt, answer),
            )
            .await);
        }
        (false, Some(client)) => (client.who, client.method),
        (true, client) => {
            let grant = OAuthGrant {
                grant_type: label,
                client_auth: client.as_ref().map_or("none", |c| c.method),
            };
            let subject = in_grant(grant, attest_assertion(facade, peer, params)).await?;
            if let Some(client) = &client
                && client.who.id() != subject.id()
            {
                let e = in_grant(
                    grant,
                    facade.broker.oauth_refused(
                        &client.who,
                        &RefusedAsk::default(),
                        "assertion",
                        format!("the assertion names `{}`, not the authenticated client", subject.id()),
                    ),
                )
                .await;
                return Err(refusal(e, "invalid_grant"));
            }
            (subject, client.map_or("none", |c| c.method))
        }
    };
    let grant = OAuthGrant {
        grant_type: label,
        client_auth,
    };
    in_grant(grant, issue(facade, &who, client_auth, headers, params)).await
}

/// The client's authentication, if it sent any. Refusals are audited as
/// attestation refusals and answered `invalid_client`.
async fn authenticate_client(
    facade: &Facade,
    peer: &PeerCertificate,
    params: &HashMap<String, String>,
) -> Result<Option<Client>, OAuthError> {
    let assertion = params.get("client_assertion");
    let assertion_type = params.get("client_assertion_type");
    let Some(assertion) = assertion else {
        if assertion_type.is_some() {
            let answer = OAuthError::invalid_request("`client_assertion_type` without `client_assertion`");
            return Err(unattested(facade, peer, AttestationMethod::PrivateKeyJwt, answer).await);
        }
        if peer.cert.is_none() {
            return Ok(None);
        }
        let who = facade.authenticate(peer).await?;
        check_client_id(facade, params, &who).await?;
        return Ok(Some(Client {
            who,
            method: "tls_client_auth",
        }));
    };
    if assertion_type.map(String::as_str) != Some(CLIENT_ASSERTION_TYPE) {
        let answer = OAuthError::invalid_client(format!("`client_assertion_type` must be `{CLIENT_ASSERTION_TYPE}`"));
        return Err(unattested(facade, peer, AttestationMethod::PrivateKeyJwt, answer).await);
    }
    if peer.cert.is_some() {
        // RFC 6749 section 2.3: one authentication method per request.
        let answer = OAuthError::invalid_request(
            "the client authenticated twice (a client certificate and a client assertion); use one",
        );
        return Err(unattested(facade, peer, AttestationMethod::PrivateKeyJwt, answer).await);
    }
    let source = peer.remote.map(|a| a.ip());
    let evidence = tessera_core::attestation::sha256_hex(assertion.as_bytes());
    let now = facade.broker.now();
    let audiences = [facade.token_endpoint.as_str(), facade.issuer.as_str()];
    // A JWT of a trusted attestation issuer (Workload Identity Federation)
    // is attested as on the gRPC port; any other must be the client's own
    // `private_key_jwt`, its `iss` the client. (The `iss` read here only
    // picks the check; the check verifies it.)
    let iss = unverified_issuer(assertion);
    if let Some(attestor) = &facade.attestors.jwt
        && iss.as_deref().is_some_and(|i| attestor.trusts_issuer(i))
    {
        return match attestor.attest_assertion(assertion, now, &audiences).await {
            Ok(attested) => {
                let who = bind(facade, &attested.id, AttestationMethod::Jwt, evidence, source).await?;
                check_client_id(facade, params, &who).await?;
                Ok(Some(Client {
                    who,
                    method: "client_assertion",
                }))
            }
            Err(e) => Err(refuse_client(facade, None, &evidence, e, source).await),
        };
    }
    let Some(claimed) = iss.and_then(|iss| SpiffeId::parse(&iss).ok()) else {
        let reason = "client assertion: `iss` is neither a trusted issuer nor a registered client";
        let refused = facade
            .broker
            .attestation_refused_by(AttestationMethod::PrivateKeyJwt, None, Some(&evidence), reason, source)
            .await;
        return Err(unavailable_or(refused, OAuthError::invalid_client(CLIENT_AUTH_FAILED)));
    };
    let keys = match facade.broker.registry().client_keys(&claimed) {
        Some(ClientKeys::Keys(keys)) => keys,
        Some(ClientKeys::Url { url, ca }) => {
            let kid = unverified_kid(assertion).unwrap_or_default();
            match facade.client_jwks.keys(&claimed, &url, &ca, &kid).await {
                Ok(keys) => keys,
                Err(reason) => {
                    let refused = facade
                        .broker
                        .attestation_refused_by(
                            AttestationMethod::PrivateKeyJwt,
                            Some(&claimed),
                            Some(&evidence),
                            &reason,
                            source,
                        )
                        .await;
                    return Err(unavailable_or(refused, OAuthError::invalid_client(CLIENT_AUTH_FAILED)));
                }
            }
        }
        None => {
            let reason = "client assertion: no keys are registered for this client";
            let refused = facade
                .broker
                .attestation_refused_by(
                    AttestationMethod::PrivateKeyJwt,
                    Some(&claimed),
                    Some(&evidence),
                    reason,
                    source,
                )
                .await;
            return Err(unavailable_or(refused, OAuthError::invalid_client(CLIENT_AUTH_FAILED)));
        }
    };
    let leeway = chrono::Duration::seconds(facade.leeway_secs.clamp(0, 300));
    let verified = match tessera_core::attestation::jwt::verify_client_assertion(
        assertion, &claimed, &keys, &audiences, now, leeway,
    ) {
        Ok(verified) => verified,
        Err(e) => {
            let reason = format!("client assertion: {e}");
            let refused = facade
                .broker
                .attestation_refused_by(
                    AttestationMethod::PrivateKeyJwt,
                    Some(&claimed),
                    Some(&evidence),
                    &reason,
                    source,
                )
                .await;
            return Err(unavailable_or(refused, OAuthError::invalid_client(CLIENT_AUTH_FAILED)));
        }
    };
    // Registered, enabled, not quarantined, within its rate: only then may
    // it spend a `jti` (a refused client fills no replay cache).
    let who = bind(
        facade,
        &claimed,
        AttestationMethod::PrivateKeyJwt,
        evidence.clone(),
        source,
    )
    .await?;
    let id = format!("{claimed}:{}", verified.jti);
    match facade
        .broker
        .first_use(CLIENT_ASSERTION_NAMESPACE, &id, verified.replay_until)
        .await
    {
        Ok(true) => {}
        Ok(false) => {
            let reason = "client assertion was already used (`jti`)";
            let refused = facade
                .broker
                .attestation_refused_by(
                    AttestationMethod::PrivateKeyJwt,
                    Some(&claimed),
                    Some(&evidence),
                    reason,
                    source,
                )
                .await;
            return Err(unavailable_or(refused, OAuthError::invalid_client(CLIENT_AUTH_FAILED)));
        }
        Err(e) => return Err(OAuthError::from_broker(BrokerError::Store(e))),
    }
    check_client_id(facade, params, &who).await?;
    Ok(Some(Client {
        who,
        method: "private_key_jwt",
    }))
}

/// RFC 7521 section 4.2: a `client_id` sent must be the authenticated
/// client; a mismatch is audited as a refusal of that client.
async fn check_client_id(
    facade: &Facade,
    params: &HashMap<String, String>,
    who: &VerifiedIdentity,
) -> Result<(), OAuthError> {
    match params.get("client_id") {
        Some(id) if id != who.id().as_str() => {
            const WHY: &str = "`client_id` is not the authenticated client";
            let e = facade
                .broker
                .oauth_refused(who, &partial(params), "client_id", WHY.to_owned())
                .await;
            Err(unavailable_or(e, OAuthError::invalid_client(WHY)))
        }
        _ => Ok(()),
    }
}

/// Binds verified evidence to its registry entry (registered, enabled,
/// allowed `method`), then admits it (quarantine, rate).
async fn bind(
    facade: &Facade,
    id: &SpiffeId,
    method: AttestationMethod,
    evidence: String,
    source: Option<std::net::IpAddr>,
) -> Result<VerifiedIdentity, OAuthError> {
    match facade.broker.attest_by(id, method, evidence.clone()) {
        Ok(who) => facade.admit(who).await,
        Err(e) => {
            let reason = e.to_string();
            let refused = facade
                .broker
                .attestation_refused_by(method, Some(id), Some(&evidence), &reason, source)
                .await;
            Err(unavailable_or(refused, OAuthError::invalid_client(reason)))
        }
    }
}

/// A refused JWT client assertion from a trusted issuer.
async fn refuse_client(
    facade: &Facade,
    claimed: Option<&SpiffeId>,
    evidence: &str,
    e: JwtRefusal,
    source: Option<std::net::IpAddr>,
) -> OAuthError {
    if let JwtRefusal::Store(e) = e {
        return OAuthError::from_broker(BrokerError::Store(e));
    }
    let reason = format!("client assertion: {e}");
    let refused = facade
        .broker
        .attestation_refused_by(AttestationMethod::Jwt, claimed, Some(evidence), &reason, source)
        .await;
    unavailable_or(refused, OAuthError::invalid_client(reason))
}

/// A request refused before any credential could be checked: audited as an
/// attestation refusal of no one (the answer's description is the reason),
/// then answered with `answer` unless it could not be recorded.
async fn unattested(
    facade: &Facade,
    peer: &PeerCertificate,
    method: AttestationMethod,
    answer: OAuthError,
) -> OAuthError {
    let refused = facade
        .broker
        .attestation_refused_by(method, None, None, &answer.description, peer.remote.map(|a| a.ip()))
        .await;
    unavailable_or(refused, answer)
}

/// The broker's answer when it could not record (unavailable), else `otherwise`.
fn unavailable_or(refused: BrokerError, otherwise: OAuthError) -> OAuthError {
    match refused.kind() {
        tessera_core::ErrorKind::Unavailable | tessera_core::ErrorKind::Internal => OAuthError::from_broker(refused),
        _ => otherwise,
    }
}

/// Key caches of clients' `jwks_uri`s (`client_jwks_url`), made on first
/// use, one per URL and roots: the same bounded fetch, refresh rate and
/// staleness rules as a JWT issuer's keys.
#[derive(Default)]
pub(crate) struct ClientJwksCaches(std::sync::Mutex<HashMap<(String, std::path::PathBuf), std::sync::Arc<KeyCache>>>);

impl std::fmt::Debug for ClientJwksCaches {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientJwksCaches").finish_non_exhaustive()
    }
}

impl ClientJwksCaches {
    /// The keys at `url` for an assertion naming `kid` (empty: none).
    async fn keys(
        &self,
        client: &SpiffeId,
        url: &str,
        ca: &std::path::Path,
        kid: &str,
    ) -> Result<std::sync::Arc<tessera_core::attestation::IssuerKeys>, String> {
        let cache = {
            let mut caches = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            let key = (url.to_owned(), ca.to_owned());
            match caches.get(&key) {
                Some(cache) => cache.clone(),
                None => {
                    let cache = std::sync::Arc::new(KeyCache::for_client(client, url, ca)?);
                    caches.insert(key, cache.clone());
                    cache
                }
            }
        };
        cache
            .keys_for(kid)
            .await
            .map_err(|e| format!("client assertion: the client's jwks_uri: {e}"))
    }
}

/// The header's `kid` of a JWT, read without any check, only to pick which
/// keys to fetch: everything is verified after.
fn unverified_kid(token: &str) -> Option<String> {
    use base64::Engine as _;
    if token.len() > tessera_core::attestation::jwt::MAX_JWT_LEN {
        return None;
    }
    let header = token.split('.').next()?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(header).ok()?;
    let header: serde_json::Map<String, Value> = serde_json::from_slice(&bytes).ok()?;
    header
        .get("kid")?
        .as_str()
        .filter(|k| k.len() <= 256)
        .map(str::to_owned)
}

/// The `iss` of a JWT, read without any check, only to pick the client's
/// keys: everything is verified after.
fn unverified_issuer(token: &str) -> Option<String> {
    use base64::Engine as _;
    if token.len() > tessera_core::attestation::jwt::MAX_JWT_LEN {
        return None;
    }
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload).ok()?;
    let claims: serde_json::Map<String, Value> = serde_json::from_slice(&bytes).ok()?;
    claims.get("iss")?.as_str().map(str::to_owned)
}

/// The `jwt-bearer` grant's `assertion`, attested as on the gRPC port.
/// Refusals are audited and answered `invalid_grant`.
async fn attest_assertion(
    facade: &Facade,
    peer: &PeerCertificate,
    params: &HashMap<String, String>,
) -> Result<VerifiedIdentity, OAuthError> {
    let assertion = match required(params, "assertion") {
        Ok(assertion) => assertion,
        Err(answer) => return Err(unattested(facade, peer, AttestationMethod::Jwt, answer).await),
    };
    let source = peer.remote.map(|a| a.ip());
    let evidence = tessera_core::attestation::sha256_hex(assertion.as_bytes());
    let invalid_grant = |reason: String| OAuthError::new(StatusCode::BAD_REQUEST, "invalid_grant", reason);
    let Some(attestor) = &facade.attestors.jwt else {
        let reason = "no JWT issuer is trusted: configure [[attestation.jwt.issuers]]";
        let refused = facade
            .broker
            .attestation_refused_by(AttestationMethod::Jwt, None, Some(&evidence), reason, source)
            .await;
        return Err(unavailable_or(refused, invalid_grant(reason.to_owned())));
    };
    let audiences = [facade.token_endpoint.as_str(), facade.issuer.as_str()];
    let attested = match attestor
        .attest_assertion(assertion, facade.broker.now(), &audiences)
        .await
    {
        Ok(attested) => attested,
        Err(JwtRefusal::Store(e)) => return Err(OAuthError::from_broker(BrokerError::Store(e))),
        Err(e) => {
            let reason = format!("assertion: {e}");
            let refused = facade
                .broker
                .attestation_refused_by(AttestationMethod::Jwt, None, Some(&evidence), &reason, source)
                .await;
            return Err(unavailable_or(refused, invalid_grant(reason)));
        }
    };
    match facade
        .broker
        .attest_by(&attested.id, AttestationMethod::Jwt, evidence.clone())
    {
        Ok(who) => facade.admit(who).await,
        Err(e) => {
            let reason = format!("assertion: {e}");
            let refused = facade
                .broker
                .attestation_refused_by(
                    AttestationMethod::Jwt,
                    Some(&attested.id),
                    Some(&evidence),
                    &reason,
                    source,
                )
                .await;
            Err(unavailable_or(refused, invalid_grant(reason)))
        }
    }
}

/// The `use_dpop_nonce` answer, with a fresh `DPoP-Nonce`, once recorded.
fn nonce_challenge(facade: &Facade, recorded: BrokerError) -> OAuthError {
    let mut answer = refusal(recorded, "use_dpop_nonce");
    answer.dpop_nonce = facade.nonces.as_ref().map(|n| n.issue(facade.broker.now()));
    answer
}

/// Maps a refusal the broker recorded to `code`, unless it could not be recorded.
fn refusal(e: BrokerError, code: &'static str) -> OAuthError {
    match e.kind() {
        tessera_core::ErrorKind::Unavailable | tessera_core::ErrorKind::Internal => OAuthError::from_broker(e),
        _ => OAuthError::new(StatusCode::BAD_REQUEST, code, e.to_string()),
    }
}

/// The request's task, audience and scopes, parsed (see the module docs).
struct Ask {
    task_id: String,
    resource: String,
    scopes: Vec<String>,
    /// The tool-level limit asked for (an `mcp_tool` detail).
    tools: Option<ToolGrant>,
}

/// A parameter refused while parsing: its RFC error code, field and reason.
#[derive(Debug)]
struct Bad {
    code: &'static str,
    field: &'static str,
    message: String,
}

fn bad(code: &'static str, field: &'static str, message: impl Into<String>) -> Bad {
    Bad {
        code,
        field,
        message: message.into(),
    }
}

/// What [`Ask::parse`] could read of a request, for the audit record of its refusal.
fn partial(params: &HashMap<String, String>) -> RefusedAsk {
    let bounded = |s: &String| s.chars().take(256).collect::<String>();
    RefusedAsk {
        task_id: params.get("task_id").map(bounded),
        audience: params.get("resource").map(bounded),
        scopes: params
            .get("scope")
            .map(|s| {
                s.split(' ')
                    .filter(|s| !s.is_empty())
                    .take(16)
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default(),
    }
}

impl Ask {
    fn parse(params: &HashMap<String, String>) -> Result<Self, Bad> {
        let resource = params.get("resource").map(String::as_str).unwrap_or_default();
        if resource.is_empty() {
            return Err(bad(
                "invalid_target",
                "resource",
                "`resource` is required: the API the token is for (RFC 8707)",
            ));
        }
        if let Some(audience) = params.get("audience")
            && audience != resource
        {
            return Err(bad(
                "invalid_target",
                "audience",
                "`resource` and `audience` name different APIs; a token has one audience",
            ));
        }
        let (from_details, tools) = match params.get("authorization_details") {
            None => (None, None),
            Some(details) => task_from_details(details, resource)?,
        };
        let task_id = match (params.get("task_id").filter(|t| !t.is_empty()), from_details) {
            (Some(a), Some(b)) if *a != b => {
                return Err(bad(
                    "invalid_authorization_details",
                    "authorization_details",
                    "`task_id` and the `tessera_task` authorization details name different tasks",
                ));
            }
            (Some(t), _) => t.clone(),
            (None, Some(t)) => t,
            (None, None) => {
                return Err(bad(
                    "invalid_request",
                    "task_id",
                    "name the task: `task_id`, or `authorization_details` of type `tessera_task`",
                ));
            }
        };
        let scopes: Vec<String> = params
            .get("scope")
            .map(|s| s.split(' ').filter(|s| !s.is_empty()).map(str::to_owned).collect())
            .unwrap_or_default();
        if scopes.is_empty() {
            return Err(bad("invalid_scope", "scope", "`scope` is required"));
        }
        if scopes.len() > 64 {
            return Err(bad("invalid_scope", "scope", "too many scopes"));
        }
        Ok(Self {
            task_id,
            resource: resource.to_owned(),
            scopes,
            tools,
        })
    }
}

/// The task and tool-level limit named by RFC 9396 `authorization_details`:
/// a JSON array of objects with a string `type`; at most one of type
/// [`TESSERA_TASK`], with a string `task_id` and optional `locations` (each
/// must be `resource`), and at most one of type [`MCP_TOOL`] (see
/// [`tessera_core::authz`]) whose `server` is the `resource`; any other
/// type, member or shape is refused.
fn task_from_details(details: &str, resource: &str) -> Result<(Option<String>, Option<ToolGrant>), Bad> {
    let malformed = |m: &str| bad("invalid_authorization_details", "authorization_details", m);
    let Ok(Value::Array(list)) = serde_json::from_str::<Value>(details) else {
        return Err(malformed("`authorization_details` is not a JSON array"));
    };
    if list.is_empty() || list.len() > MAX_DETAILS {
        return Err(malformed("`authorization_details` must hold 1 to 8 objects"));
    }
    let mut task = None;
    let mut tools = None;
    for entry in &list {
        let Value::Object(members) = entry else {
            return Err(malformed("every authorization detail is a JSON object"));
        };
        match members.get("type") {
            Some(Value::String(t)) if t == TESSERA_TASK => {}
            Some(Value::String(t)) if t == MCP_TOOL => {
                let grant = ToolGrant::parse(entry)
                    .map_err(|e| bad("invalid_authorization_details", "authorization_details", e.to_string()))?;
                if grant.server != resource {
                    return Err(malformed(
                        "the `server` of an `mcp_tool` authorization detail must be the `resource` asked for",
                    ));
                }
                if tools.replace(grant).is_some() {
                    return Err(malformed("more than one `mcp_tool` authorization detail"));
                }
                continue;
            }
            Some(Value::String(_)) => {
                return Err(malformed(
                    "unknown authorization details type; supported: `tessera_task`, `mcp_tool`",
                ));
            }
            _ => return Err(malformed("an authorization detail has no string `type`")),
        }
        if members
            .keys()
            .any(|k| !["type", "task_id", "locations"].contains(&k.as_str()))
        {
            return Err(malformed(
                "a `tessera_task` authorization detail has only `type`, `task_id` and `locations`",
            ));
        }
        let Some(Value::String(id)) = members.get("task_id") else {
            return Err(malformed(
                "a `tessera_task` authorization detail needs a string `task_id`",
            ));
        };
        match members.get("locations") {
            None => {}
            Some(Value::Array(locations))
                if !locations.is_empty() && locations.iter().all(|l| l.as_str() == Some(resource)) => {}
            Some(_) => {
                return Err(malformed(
                    "`locations` of a `tessera_task` authorization detail must be the `resource` asked for",
                ));
            }
        }
        if task.replace(id.clone()).is_some() {
            return Err(malformed("more than one `tessera_task` authorization detail"));
        }
    }
    Ok((task, tools))
}

/// The DPoP header's proof, checked for this endpoint and (when required)
/// for a nonce of ours. `Ok(None)` without a header.
fn dpop_proof(facade: &Facade, headers: &HeaderMap) -> Result<Option<String>, Bad> {
    let mut values = headers.get_all("dpop").iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(bad("invalid_dpop_proof", "DPoP", "more than one `DPoP` header"));
    }
    let proof = value
        .to_str()
        .map_err(|_| bad("invalid_dpop_proof", "DPoP", "the `DPoP` header is not ASCII"))?;
    let now = facade.broker.now();
    let check = ProofCheck {
        htm: "POST",
        htu: &facade.token_endpoint,
        now,
        max_age: PROOF_MAX_AGE,
        leeway: chrono::Duration::seconds(facade.leeway_secs.max(0)),
        access_token: None,
    };
    // Checked here for its nonce; the use case checks it again and burns
    // its `jti` (a replay is refused there).
    let verified = tessera_core::pop::verify_proof(proof, &check)
        .map_err(|e| bad("invalid_dpop_proof", "DPoP", format!("DPoP: {e}")))?;
    if let Some(nonces) = &facade.nonces
        && !verified.nonce.as_deref().is_some_and(|n| nonces.check(n, now))
    {
        let why = if verified.nonce.is_some() {
            "DPoP: the proof's `nonce` is not current; use the one in the `DPoP-Nonce` header"
        } else {
            "DPoP: the proof needs the `nonce` of the `DPoP-Nonce` header"
        };
        return Err(bad("use_dpop_nonce", "DPoP", why));
    }
    Ok(Some(proof.to_owned()))
}

/// Parses the request, asks the RequestToken use case, and answers.
async fn issue(
    facade: &Facade,
    who: &VerifiedIdentity,
    client_auth: &'static str,
    headers: &HeaderMap,
    params: &HashMap<String, String>,
) -> Result<Response, OAuthError> {
    let refuse = async |b: Bad| {
        if b.code == "use_dpop_nonce" {
            // A window turned since the check before authentication.
            let e = facade
                .broker
                .oauth_nonce_challenged(Some(who), &partial(params), b.message)
                .await;
            return nonce_challenge(facade, e);
        }
        let e = facade
            .broker
            .oauth_refused(who, &partial(params), b.field, b.message)
            .await;
        refusal(e, b.code)
    };
    if let Some(id) = params.get("approval_id") {
        return redeem_approval(facade, who, id, params).await;
    }
    let ask = match Ask::parse(params) {
        Ok(ask) => ask,
        Err(b) => return Err(refuse(b).await),
    };
    let proof = match dpop_proof(facade, headers) {
        Ok(proof) => proof,
        Err(b) => return Err(refuse(b).await),
    };
    let dpop = proof.is_some();
    let binding = match proof {
        Some(proof) => BindingAsk::Dpop {
            proof,
            htu: facade.token_endpoint.clone(),
        },
        // RFC 8705 certificate-bound when the token's holder itself was
        // attested by the connection's certificate (not a jwt-bearer
        // subject that a certificate client merely accompanied).
        None if client_auth == "tls_client_auth" && who.method() == AttestationMethod::X509 => {
            BindingAsk::ClientCertificate
        }
        None => BindingAsk::Bearer,
    };
    let as_grpc = crate::pb::RequestTokenRequest {
        task_id: ask.task_id.clone(),
        audience: ask.resource.clone(),
        scopes: ask.scopes.clone(),
        ..Default::default()
    };
    let request = match crate::convert::token_ask(&as_grpc) {
        Ok(TokenAsk { request, .. }) => tessera_core::issuance::TokenRequest {
            tools: ask.tools.clone(),
            ..request
        },
        Err(e) => {
            let code = match e.field {
                "audience" => "invalid_target",
                "scopes" => "invalid_scope",
                _ => "invalid_request",
            };
            let field = match e.field {
                "audience" => "resource",
                "scopes" => "scope",
                _ => "task_id",
            };
            return Err(refuse(bad(code, field, format!("{field}: {}", e.message))).await);
        }
    };
    let task_id = request.task_id.clone();
    let audience = request.audience.clone();
    let outcome = facade.broker.request_token(who, TokenAsk { request, binding }).await;
    let issued = match outcome {
        Ok(TokenOutcome::Issued(issued)) => issued,
        Ok(TokenOutcome::Pending(approval)) => return Err(pending(&approval)),
        Err(e) => return Err(token_error(facade, e, &task_id, &audience).await),
    };
    Ok(token_response(facade, &issued, dpop))
}

/// `authorization_pending` (RFC 8628 section 3.5) naming the approval to poll for.
fn pending(approval: &tessera_core::approval::Approval) -> OAuthError {
    let mut answer = OAuthError::new(
        StatusCode::BAD_REQUEST,
        "authorization_pending",
        format!(
            "an approval is required; poll this endpoint with `approval_id` = `{}` (or await it over gRPC)",
            approval.id
        ),
    );
    answer.approval_id = Some(approval.id.to_string());
    answer
}

/// A poll for the token of an approval `who`'s request waits for, with
/// RFC 8628 section 3.5's answers: `authorization_pending` until an approver
/// decides; the one token once approved (from the stored request, bound as
/// that request was: to its DPoP key or certificate, so the poll needs no
/// proof of its own); `access_denied` if denied; `expired_token` if nobody
/// decided in time; `invalid_grant` for an approval that is unknown, spent,
/// or not `who`'s. The client authenticates exactly as for the request.
async fn redeem_approval(
    facade: &Facade,
    who: &VerifiedIdentity,
    id: &str,
    params: &HashMap<String, String>,
) -> Result<Response, OAuthError> {
    use tessera_core::approval::{ApprovalError, ApprovalId};
    let refuse = async |code: &'static str, message: String| {
        let e = facade
            .broker
            .oauth_refused(who, &partial(params), "approval_id", message)
            .await;
        refusal(e, code)
    };
    let Ok(id) = ApprovalId::parse(id) else {
        return Err(refuse("invalid_request", "`approval_id` is not an approval id".to_owned()).await);
    };
    match facade.broker.await_step(who, &id).await {
        Ok(AwaitStep::Pending(approval)) => Err(pending(&approval)),
        Ok(AwaitStep::Issued(issued)) => Ok(token_response(facade, &issued, false)),
        // Recorded and counted by the use case already.
        Err(BrokerError::Approval(e @ ApprovalError::NotRequester(_))) => {
            Err(OAuthError::new(StatusCode::BAD_REQUEST, "invalid_grant", e.to_string()))
        }
        Err(BrokerError::Approval(e)) => {
            let code = match e {
                ApprovalError::Denied { .. } => "access_denied",
                ApprovalError::Expired(_) => "expired_token",
                _ => "invalid_grant",
            };
            Err(refuse(code, e.to_string()).await)
        }
        Err(e) => Err(OAuthError::from_broker(e)),
    }
}

/// The token answer (RFC 6749 section 5.1) of an issued grant; with a fresh
/// `DPoP-Nonce` when the request carried a proof (RFC 9449 section 8.2).
fn token_response(facade: &Facade, issued: &Issued, dpop: bool) -> Response {
    let expires_in = (issued.grant.expires_at - facade.broker.now()).num_seconds().max(0);
    let scope = issued
        .grant
        .scopes
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(" ");
    // RFC 9396 section 7: the details granted, the tool-level limit the
    // token carries among them.
    let mut details = vec![json!({
        "type": TESSERA_TASK,
        "task_id": issued.grant.task_id.to_string(),
        "locations": [issued.grant.audience.to_string()],
    })];
    details.extend(issued.authorization_details.iter().map(ToolGrant::to_value));
    let mut response = json_no_store(json!({
        "access_token": issued.token,
        "token_type": issued.token_type,
        "expires_in": expires_in,
        "scope": scope,
        "authorization_details": details,
    }));
    // RFC 9449 section 8.2: a fresh nonce for the client's next proof.
    if dpop
        && let Some(nonces) = &facade.nonces
        && let Ok(value) = HeaderValue::from_str(&nonces.issue(facade.broker.now()))
    {
        response.headers_mut().insert("dpop-nonce", value);
    }
    response
}

/// The RFC error code of a refusal the use case recorded.
async fn token_error(
    facade: &Facade,
    e: BrokerError,
    task: &tessera_core::task::TaskId,
    audience: &tessera_core::task::Audience,
) -> OAuthError {
    use tessera_core::catalog::CatalogError;
    let code = match &e {
        // RFC 8707: a `resource` the task's ceiling does not name is
        // `invalid_target`, whatever else is wrong with the scopes. Only
        // asked once the caller is known to be the task's agent (a ceiling
        // refusal comes after the assignment check; a catalog refusal comes
        // before it, so the task is not read for it: no oracle of other
        // tasks' ceilings).
        BrokerError::Issuance(IssuanceError::BeyondCeiling { .. })
            if !facade.broker.task_names_audience(task, audience).await =>
        {
            "invalid_target"
        }
        BrokerError::Issuance(IssuanceError::Catalog(CatalogError::UnknownAudience(_))) => "invalid_target",
        BrokerError::Issuance(IssuanceError::BeyondCeiling { .. } | IssuanceError::Catalog(_)) => "invalid_scope",
        BrokerError::Issuance(IssuanceError::NotAssigned { .. } | IssuanceError::Task(_)) | BrokerError::Task(_) => {
            "invalid_grant"
        }
        BrokerError::Issuance(IssuanceError::Ttl(_)) => "invalid_request",
        BrokerError::Issuance(IssuanceError::Tools(_)) => "invalid_authorization_details",
        BrokerError::Proof { .. } => "invalid_dpop_proof",
        BrokerError::Unbound { .. } | BrokerError::Binding(_) => "invalid_request",
        _ => return OAuthError::from_broker(e),
    };
    OAuthError::new(StatusCode::BAD_REQUEST, code, e.to_string())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic, reason = "test")]

    use super::*;

    const CRM: &str = "https://api.example.com/crm";

    fn form(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    fn refused(pairs: &[(&str, &str)]) -> (&'static str, &'static str) {
        match Ask::parse(&form(pairs)) {
            Ok(_) => panic!("accepted: {pairs:?}"),
            Err(b) => (b.code, b.field),
        }
    }

    #[test]
    fn the_task_is_named_by_task_id_or_one_tessera_task_detail() {
        let by_id = Ask::parse(&form(&[("resource", CRM), ("scope", "a b"), ("task_id", "t1")])).unwrap();
        assert_eq!((by_id.task_id.as_str(), by_id.scopes.len()), ("t1", 2));
        let details = r#"[{"type":"tessera_task","task_id":"t2","locations":["https://api.example.com/crm"]}]"#;
        let by_details = Ask::parse(&form(&[
            ("resource", CRM),
            ("scope", "a"),
            ("authorization_details", details),
        ]))
        .unwrap();
        assert_eq!(by_details.task_id, "t2");
        let both = Ask::parse(&form(&[
            ("resource", CRM),
            ("scope", "a"),
            ("task_id", "t2"),
            ("authorization_details", details),
        ]))
        .unwrap();
        assert_eq!(both.task_id, "t2");
        assert_eq!(both.tools, None);
        let tools = r#"[{"type":"tessera_task","task_id":"t2"},{"type":"mcp_tool","server":"https://api.example.com/crm","tools":["lookup"],"constraints":{"lookup":{"region":{"eq":"eu"}}}}]"#;
        let with_tools = Ask::parse(&form(&[
            ("resource", CRM),
            ("scope", "a"),
            ("authorization_details", tools),
        ]))
        .unwrap();
        assert_eq!(with_tools.task_id, "t2");
        let grant = with_tools.tools.unwrap();
        assert_eq!(grant.tools.iter().collect::<Vec<_>>(), ["lookup"]);
        grant.permits("lookup", &json!({"region": "eu"})).unwrap();
    }

    #[test]
    fn every_bad_request_has_its_rfc_code() {
        let detail = |d: &str| refused(&[("resource", CRM), ("scope", "a"), ("authorization_details", d)]);
        let bad = ("invalid_authorization_details", "authorization_details");
        for d in [
            "{not json",
            "{}",
            "[]",
            "[1]",
            r#"[{"task_id":"t"}]"#,
            r#"[{"type":"payment_initiation"}]"#,
            r#"[{"type":"tessera_task"}]"#,
            r#"[{"type":"tessera_task","task_id":7}]"#,
            r#"[{"type":"tessera_task","task_id":"t","extra":1}]"#,
            r#"[{"type":"tessera_task","task_id":"t","locations":["https://other"]}]"#,
            r#"[{"type":"tessera_task","task_id":"t","locations":[]}]"#,
            r#"[{"type":"tessera_task","task_id":"t"},{"type":"tessera_task","task_id":"u"}]"#,
            // Tool-level limits: for the `resource` only, one, well formed.
            r#"[{"type":"tessera_task","task_id":"t"},{"type":"mcp_tool","server":"https://other","tools":["a"]}]"#,
            r#"[{"type":"tessera_task","task_id":"t"},{"type":"mcp_tool","server":"https://api.example.com/crm","tools":[]}]"#,
            r#"[{"type":"tessera_task","task_id":"t"},{"type":"mcp_tool","server":"https://api.example.com/crm","tools":["a"],"constraints":{"a":{"n":{"regex":"."}}}}]"#,
            r#"[{"type":"tessera_task","task_id":"t"},{"type":"mcp_tool","server":"https://api.example.com/crm","tools":["a"]},{"type":"mcp_tool","server":"https://api.example.com/crm","tools":["b"]}]"#,
        ] {
            assert_eq!(detail(d), bad, "{d}");
        }
        let nine = format!("[{}]", [r#"{"type":"tessera_task","task_id":"t"}"#; 9].join(","));
        assert_eq!(detail(&nine), bad);
        assert_eq!(
            refused(&[
                ("resource", CRM),
                ("scope", "a"),
                ("task_id", "u"),
                ("authorization_details", r#"[{"type":"tessera_task","task_id":"t"}]"#)
            ]),
            bad
        );
        assert_eq!(
            refused(&[("scope", "a"), ("task_id", "t")]),
            ("invalid_target", "resource")
        );
        assert_eq!(
            refused(&[
                ("resource", CRM),
                ("audience", "https://other"),
                ("scope", "a"),
                ("task_id", "t")
            ]),
            ("invalid_target", "audience")
        );
        assert_eq!(
            refused(&[("resource", CRM), ("task_id", "t")]),
            ("invalid_scope", "scope")
        );
        assert_eq!(
            refused(&[("resource", CRM), ("scope", "a")]),
            ("invalid_request", "task_id")
        );
    }

    #[test]
    fn the_unverified_issuer_is_only_read() {
        use base64::Engine as _;
        let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        let token = format!("{}.{}.sig", b64("{}"), b64(r#"{"iss":"spiffe://td/a"}"#));
        assert_eq!(unverified_issuer(&token).as_deref(), Some("spiffe://td/a"));
        assert_eq!(unverified_issuer("a.b.c"), None);
        assert_eq!(
            unverified_issuer(&format!("{}.{}.sig", b64("{}"), b64(r#"{"iss":7}"#))),
            None
        );
    }
}

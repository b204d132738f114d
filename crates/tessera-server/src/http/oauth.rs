//! The OAuth facade, for standard resource servers and MCP clients:
//!
//! | route | RFC | who |
//! |---|---|---|
//! | `GET /.well-known/jwks.json` | 7517 | anyone |
//! | `GET /.well-known/oauth-authorization-server` | 8414 | anyone |
//! | `POST /oauth/introspect` | 7662 | `verifier` or `operator` identities |
//! | `POST /oauth/revoke` | 7009 | the token's holder, or an operator |
//! | `POST /oauth/token` | 8693, 7523, 6749 | agents: token exchange, `jwt-bearer`, `client_credentials` (see [`super::grants`]) |
//!
//! **Client authentication** is mutual TLS (`tls_client_auth`, RFC 8705
//! section 2): the caller's X.509-SVID, verified against the trust bundle
//! during the handshake, names a registered identity, exactly as on the
//! gRPC port (quarantine and per-identity rate limits included). A POST
//! without a client certificate, or with one naming no enabled identity, is
//! answered `401` with `WWW-Authenticate: MutualTLS realm="tessera"` and an
//! RFC 6749 section 5.2 `invalid_client` body. The token endpoint also
//! takes `private_key_jwt` client assertions and, for the `jwt-bearer`
//! grant, no client authentication at all ([`super::grants`]).
//!
//! Every POST answer carries `Cache-Control: no-store` and `Pragma:
//! no-cache`. Parameters may appear once each (RFC 6749 section 3.1); the
//! body is bounded by `oauth.max_body_bytes`. Tokens are never logged.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::rejection::FormRejection;
use axum::extract::{DefaultBodyLimit, Extension, Form, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{Value, json};
use tessera_core::delegation::DelegationRequest;
use tessera_core::grant::GrantId;
use tessera_core::identity::VerifiedIdentity;
use tessera_core::token::AccessClaims;
use tonic::Code;

use super::PeerCertificate;
use crate::broker::{Broker, BrokerError};
use crate::grpc::limits::IdentityLimiter;

/// RFC 8693 section 2.1: the token exchange grant type.
pub const TOKEN_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
/// RFC 8693 section 3: an OAuth access token.
pub const ACCESS_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:access_token";
/// RFC 8693 section 3: a JWT.
pub const JWT_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:jwt";
/// The routes, relative to the public URL.
pub const JWKS_PATH: &str = "/.well-known/jwks.json";
/// RFC 8414 section 3.
pub const METADATA_PATH: &str = "/.well-known/oauth-authorization-server";
/// RFC 7662.
pub const INTROSPECT_PATH: &str = "/oauth/introspect";
/// RFC 7009.
pub const REVOKE_PATH: &str = "/oauth/revoke";
/// RFC 6749 section 3.1: present only to refuse (see [`authorize`]).
pub const AUTHORIZE_PATH: &str = "/oauth/authorize";
/// RFC 6749 / RFC 8693.
pub const TOKEN_PATH: &str = "/oauth/token";
/// Most form parameters in one request.
const MAX_PARAMS: usize = 32;
/// `Cache-Control` of the JWKS: verifiers also refresh on an unknown `kid`.
const JWKS_CACHE: &str = "public, max-age=60";
/// `Cache-Control` of the metadata document.
const METADATA_CACHE: &str = "public, max-age=300";

/// What the facade's handlers share.
pub struct Facade {
    pub(super) broker: Arc<Broker>,
    /// The trust bundles of the gRPC port (reloaded with them).
    pub(super) trust: Arc<crate::attest::trust::TrustStore>,
    pub(super) limiter: Arc<IdentityLimiter>,
    pub(super) issuer: String,
    pub(super) leeway_secs: i64,
    metadata: String,
    max_body_bytes: usize,
    /// The token endpoint's URL: the `aud` of assertions, the `htu` of DPoP proofs.
    pub(super) token_endpoint: String,
    /// The gRPC port's attestors (JWT issuers for `jwt-bearer`).
    pub(super) attestors: Arc<crate::attest::Attestors>,
    /// DPoP nonces at the token endpoint, when required.
    pub(super) nonces: Option<tessera_core::pop::NonceSource>,
    /// Key caches of clients' `jwks_uri`s, by URL and roots, made on first use.
    pub(super) client_jwks: super::grants::ClientJwksCaches,
}

impl std::fmt::Debug for Facade {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Facade")
            .field("issuer", &self.issuer)
            .finish_non_exhaustive()
    }
}

impl Facade {
    /// A facade for `broker` whose endpoints are reached at `public_url`.
    #[expect(
        clippy::too_many_arguments,
        reason = "each is one setting of the facade; a struct would only rename them"
    )]
    pub fn new(
        broker: Arc<Broker>,
        attestors: Arc<crate::attest::Attestors>,
        limiter: Arc<IdentityLimiter>,
        issuer: String,
        leeway_secs: i64,
        public_url: &str,
        max_body_bytes: usize,
        nonces: Option<tessera_core::pop::NonceSource>,
    ) -> Self {
        let jwt_bearer = attestors.jwt.is_some();
        let metadata = metadata(&issuer, public_url, jwt_bearer).to_string();
        Self {
            broker,
            trust: attestors.trust.clone(),
            limiter,
            issuer,
            leeway_secs,
            metadata,
            max_body_bytes,
            token_endpoint: format!("{public_url}{TOKEN_PATH}"),
            attestors,
            nonces,
            client_jwks: super::grants::ClientJwksCaches::default(),
        }
    }
}

/// RFC 8414 section 2: the authorization server metadata, listing exactly
/// what the token endpoint accepts (`jwt-bearer` only when JWT issuers are
/// configured: without them no assertion could be trusted).
pub fn metadata(issuer: &str, public_url: &str, jwt_bearer: bool) -> Value {
    use super::grants::{CLIENT_CREDENTIALS, JWT_BEARER, TESSERA_TASK};
    let mut grants = vec![TOKEN_EXCHANGE, CLIENT_CREDENTIALS];
    if jwt_bearer {
        grants.push(JWT_BEARER);
    }
    let algs: Vec<&str> = tessera_core::attestation::JwtAlgorithm::ALL
        .iter()
        .map(|a| a.as_jose())
        .collect();
    json!({
        "issuer": issuer,
        "jwks_uri": format!("{public_url}{JWKS_PATH}"),
        "token_endpoint": format!("{public_url}{TOKEN_PATH}"),
        "introspection_endpoint": format!("{public_url}{INTROSPECT_PATH}"),
        "revocation_endpoint": format!("{public_url}{REVOKE_PATH}"),
        "grant_types_supported": grants,
        // Tokens come from attestation, never from redirects: the endpoint
        // exists because RFC 8414 lists it as required and MCP clients
        // refuse metadata without it; it refuses every request, and no
        // response type is supported.
        "authorization_endpoint": format!("{public_url}{AUTHORIZE_PATH}"),
        "response_types_supported": [],
        "token_endpoint_auth_methods_supported": ["tls_client_auth", "private_key_jwt"],
        "token_endpoint_auth_signing_alg_values_supported": algs,
        "authorization_details_types_supported": [TESSERA_TASK, tessera_core::authz::MCP_TOOL],
        // RFC 8707: `resource` is required and becomes the token's audience.
        "resource_indicators_supported": true,
        "introspection_endpoint_auth_methods_supported": ["tls_client_auth"],
        "revocation_endpoint_auth_methods_supported": ["tls_client_auth"],
        "tls_client_certificate_bound_access_tokens": true,
        "dpop_signing_alg_values_supported": ["ES256", "EdDSA"],
        "token_types_supported": [ACCESS_TOKEN_TYPE],
        "introspection_encryption_alg_values_supported": [],
    })
}

/// The public documents.
pub(crate) fn public_routes(facade: Arc<Facade>) -> Router {
    Router::new()
        .route(JWKS_PATH, get(jwks))
        .route(METADATA_PATH, get(metadata_document))
        .route(AUTHORIZE_PATH, get(authorize).post(authorize))
        .with_state(facade)
}

/// RFC 6749 section 4.1.2.1: no response type is supported, so every
/// request is refused here, with no redirect (there is no registered
/// redirect URI to trust).
async fn authorize() -> Response {
    no_store(
        (
            StatusCode::BAD_REQUEST,
            Json(json!({
                "error": "unsupported_response_type",
                "error_description": "tessera issues tokens at the token endpoint only (jwt-bearer, client_credentials, token exchange)",
            })),
        )
            .into_response(),
    )
}

/// The authenticated POST endpoints.
pub(crate) fn authenticated_routes(facade: Arc<Facade>) -> Router {
    let limit = facade.max_body_bytes;
    Router::new()
        .route(INTROSPECT_PATH, post(introspect))
        .route(REVOKE_PATH, post(revoke))
        .route(TOKEN_PATH, post(token))
        .layer(DefaultBodyLimit::max(limit))
        .with_state(facade)
}

async fn jwks(State(facade): State<Arc<Facade>>) -> Response {
    match facade.broker.jwks().await {
        Ok(jwks) => {
            let mut response = (StatusCode::OK, jwks.to_json()).into_response();
            let headers = response.headers_mut();
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/jwk-set+json"),
            );
            headers.insert(header::CACHE_CONTROL, HeaderValue::from_static(JWKS_CACHE));
            response
        }
        Err(e) => {
            drop(crate::status::from_broker(e));
            no_store(
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    Json(json!({"error": "temporarily_unavailable"})),
                )
                    .into_response(),
            )
        }
    }
}

async fn metadata_document(State(facade): State<Arc<Facade>>) -> Response {
    let mut response = (StatusCode::OK, facade.metadata.clone()).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static(METADATA_CACHE));
    response
}

/// An RFC 6749 section 5.2 error answer.
#[derive(Debug)]
pub(crate) struct OAuthError {
    status: StatusCode,
    code: &'static str,
    pub(super) description: String,
    /// A fresh `DPoP-Nonce` to send (with `use_dpop_nonce`, RFC 9449 section 8).
    pub(super) dpop_nonce: Option<String>,
    /// The approval a request waits for (`authorization_pending`): the
    /// client polls with it as `approval_id` (an RFC 6749 section 5.2
    /// extension member).
    pub(super) approval_id: Option<String>,
}

impl OAuthError {
    pub(super) fn new(status: StatusCode, code: &'static str, description: impl Into<String>) -> Self {
        Self {
            status,
            code,
            description: description.into(),
            dpop_nonce: None,
            approval_id: None,
        }
    }

    pub(super) fn invalid_request(description: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request", description)
    }

    pub(super) fn invalid_client(description: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "invalid_client", description)
    }

    /// A broker refusal, mapped through the gRPC status of `status.rs` (which
    /// also logs internal errors and counts store errors).
    pub(super) fn from_broker(e: BrokerError) -> Self {
        let status = crate::status::from_broker(e);
        let (http, code) = match status.code() {
            Code::Unauthenticated => (StatusCode::UNAUTHORIZED, "invalid_client"),
            Code::PermissionDenied => (StatusCode::FORBIDDEN, "access_denied"),
            Code::InvalidArgument | Code::NotFound | Code::OutOfRange => (StatusCode::BAD_REQUEST, "invalid_request"),
            Code::FailedPrecondition => (StatusCode::BAD_REQUEST, "invalid_grant"),
            Code::ResourceExhausted => (StatusCode::TOO_MANY_REQUESTS, "slow_down"),
            Code::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, "temporarily_unavailable"),
            _ => (StatusCode::INTERNAL_SERVER_ERROR, "server_error"),
        };
        Self::new(http, code, status.message().to_owned())
    }
}

impl IntoResponse for OAuthError {
    fn into_response(self) -> Response {
        let description = self.description.replace(['"', '\\'], "'");
        let mut body = serde_json::Map::new();
        body.insert("error".into(), Value::from(self.code));
        body.insert("error_description".into(), Value::from(description));
        if let Some(id) = self.approval_id {
            body.insert("approval_id".into(), Value::from(id));
        }
        let mut response = (self.status, Json(Value::Object(body))).into_response();
        if let Some(nonce) = &self.dpop_nonce
            && let Ok(value) = HeaderValue::from_str(nonce)
        {
            response.headers_mut().insert("dpop-nonce", value);
        }
        if self.status == StatusCode::UNAUTHORIZED {
            let challenge = format!(r#"MutualTLS realm="tessera", error="{}""#, self.code);
            if let Ok(value) = HeaderValue::from_str(&challenge) {
                response.headers_mut().insert(header::WWW_AUTHENTICATE, value);
            }
        }
        if self.status == StatusCode::TOO_MANY_REQUESTS || self.status == StatusCode::SERVICE_UNAVAILABLE {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        no_store(response)
    }
}

pub(super) fn no_store(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    response
}

pub(super) fn json_no_store(body: Value) -> Response {
    no_store((StatusCode::OK, Json(body)).into_response())
}

impl Facade {
    /// The caller's attested identity, from its TLS client certificate,
    /// verified against the same trust bundles (every trust domain, reloaded
    /// without a restart) as on the gRPC port.
    pub(super) async fn authenticate(&self, peer: &PeerCertificate) -> Result<VerifiedIdentity, OAuthError> {
        let Some(cert) = &peer.cert else {
            return Err(OAuthError::invalid_client(
                "client authentication required: present an X.509-SVID of a registered identity (tls_client_auth)",
            ));
        };
        let source = peer.remote.map(|a| a.ip());
        let evidence = cert.evidence();
        let refuse = async |claimed: Option<&tessera_core::identity::SpiffeId>, reason: String| {
            tracing::info!(event = "attestation_refused", identity = ?claimed.map(ToString::to_string), reason = %reason, "https caller refused");
            let refused = self
                .broker
                .attestation_refused(claimed, Some(&evidence), &reason, source)
                .await;
            match refused.kind() {
                tessera_core::ErrorKind::Unavailable => OAuthError::from_broker(refused),
                _ => OAuthError::invalid_client(reason),
            }
        };
        let leaf = match self.trust.trusted_leaf(cert) {
            Ok(leaf) => leaf,
            Err(reason) => return Err(refuse(None, reason).await),
        };
        let svid = match crate::tls::peer_svid_in(leaf, |domain| self.trust.check_domain(domain)) {
            Ok(svid) => svid,
            Err(e) => return Err(refuse(None, e.to_string()).await),
        };
        let who = match self.broker.attest(&svid.id, svid.evidence.clone()) {
            Ok(who) => who,
            Err(e) => return Err(refuse(Some(&svid.id), e.to_string()).await),
        };
        self.admit(who).await
    }

    /// An attested caller admitted (not quarantined) and within its
    /// per-identity rate, as on the gRPC port.
    pub(super) async fn admit(&self, who: VerifiedIdentity) -> Result<VerifiedIdentity, OAuthError> {
        self.broker.admit(&who).await.map_err(OAuthError::from_broker)?;
        self.limiter.check(who.id()).map_err(|status| {
            OAuthError::new(StatusCode::TOO_MANY_REQUESTS, "slow_down", status.message().to_owned())
        })?;
        Ok(who)
    }
}

/// The form's parameters; each may appear once (RFC 6749 section 3.1).
pub(super) fn params(
    form: Result<Form<Vec<(String, String)>>, FormRejection>,
) -> Result<HashMap<String, String>, OAuthError> {
    let Form(pairs) = form.map_err(|rejection| match rejection {
        FormRejection::InvalidFormContentType(_) => {
            OAuthError::invalid_request("the body must be application/x-www-form-urlencoded")
        }
        FormRejection::BytesRejection(_) => OAuthError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_request",
            "the request body is too large or unreadable",
        ),
        _ => OAuthError::invalid_request("the body is not a valid form"),
    })?;
    if pairs.len() > MAX_PARAMS {
        return Err(OAuthError::invalid_request("too many parameters"));
    }
    let mut map = HashMap::new();
    for (name, value) in pairs {
        if map.contains_key(&name) {
            let name: String = name.chars().take(32).collect();
            return Err(OAuthError::invalid_request(format!(
                "parameter `{name}` appears more than once"
            )));
        }
        map.insert(name, value);
    }
    Ok(map)
}

pub(super) fn required<'a>(params: &'a HashMap<String, String>, name: &'static str) -> Result<&'a str, OAuthError> {
    match params.get(name).map(String::as_str) {
        Some(value) if !value.is_empty() => Ok(value),
        _ => Err(OAuthError::invalid_request(format!("parameter `{name}` is required"))),
    }
}

/// RFC 7662: `token=<token>` (and an optional `token_type_hint`). A live
/// token's claims, or exactly `{"active":false}` for any other token.
async fn introspect(
    State(facade): State<Arc<Facade>>,
    Extension(peer): Extension<PeerCertificate>,
    form: Result<Form<Vec<(String, String)>>, FormRejection>,
) -> Result<Response, OAuthError> {
    let who = facade.authenticate(&peer).await?;
    let params = params(form)?;
    let token = required(&params, "token")?;
    match facade.broker.introspect(&who, token).await {
        Ok(Some(claims)) => Ok(json_no_store(introspection(&claims))),
        Ok(None) => Ok(json_no_store(json!({"active": false}))),
        Err(e) => Err(OAuthError::from_broker(e)),
    }
}

/// RFC 7662 section 2.2 members of a live token, with RFC 8705 / RFC 9449
/// `cnf` and RFC 8693 `act` when present.
fn introspection(claims: &AccessClaims) -> Value {
    // Every claim of the token, as signed (absent optional claims are
    // omitted), plus `active` and the RFC 9449 section 6.2 `token_type`.
    let Ok(Value::Object(mut body)) = serde_json::to_value(claims) else {
        return json!({"active": false}); // cannot happen; never claim a token is live by accident
    };
    let bound_to_key = body.get("cnf").and_then(|cnf| cnf.get("jkt")).is_some();
    body.insert("active".into(), Value::Bool(true));
    body.insert(
        "token_type".into(),
        Value::from(if bound_to_key { "DPoP" } else { "Bearer" }),
    );
    Value::Object(body)
}

/// RFC 7009: `token=<token>`. The holder releases its token; an operator
/// revokes anyone's. Every other case (an invalid, expired or unknown
/// token, or one the caller may not revoke) answers the same 200 with
/// nothing done (section 2.2), so the endpoint is no validity oracle.
async fn revoke(
    State(facade): State<Arc<Facade>>,
    Extension(peer): Extension<PeerCertificate>,
    form: Result<Form<Vec<(String, String)>>, FormRejection>,
) -> Result<Response, OAuthError> {
    let who = facade.authenticate(&peer).await?;
    let params = params(form)?;
    let token = required(&params, "token")?;
    if let Some(hint) = params.get("token_type_hint")
        && hint != "access_token"
        && hint != "refresh_token"
    {
        // Unknown hints are ignored (section 2.1); only the value is bounded.
        if hint.len() > 64 {
            return Err(OAuthError::invalid_request("`token_type_hint` is too long"));
        }
    }
    let jwks = facade.broker.jwks().await.map_err(OAuthError::from_broker)?;
    let claims = match tessera_core::token::verify_access_token(
        token,
        &jwks,
        &facade.issuer,
        facade.broker.now(),
        facade.leeway_secs,
    ) {
        Ok(claims) => claims,
        Err(e) => {
            tracing::debug!(reason = %e, "revocation of an invalid or expired token: nothing to do");
            return Ok(no_store(StatusCode::OK.into_response()));
        }
    };
    let Ok(id) = GrantId::parse(&claims.jti) else {
        return Ok(no_store(StatusCode::OK.into_response()));
    };
    // The holder is `client_id` (a delegated token's `sub` is its chain's root).
    let outcome = if claims.client_id == who.id().as_str() {
        facade.broker.release(&who, &id).await
    } else {
        facade.broker.revoke_grant(&who, &id, "revoked over RFC 7009").await
    };
    match outcome {
        Ok(_) | Err(BrokerError::GrantNotFound(_)) => Ok(no_store(StatusCode::OK.into_response())),
        // The same answer as for an invalid or unknown token: this endpoint
        // must not tell a caller which tokens are live. The refusal is
        // audited by the broker and logged here.
        Err(e) if e.kind() == tessera_core::ErrorKind::PermissionDenied => {
            drop(crate::status::from_broker(e));
            Ok(no_store(StatusCode::OK.into_response()))
        }
        Err(e) => Err(OAuthError::from_broker(e)),
    }
}

/// RFC 8693 token exchange at the token endpoint: `grant_type` =
/// [`TOKEN_EXCHANGE`], `subject_token` (a live Tessera token of another
/// agent of the task), `subject_token_type` ([`ACCESS_TOKEN_TYPE`] or
/// [`JWT_TOKEN_TYPE`]), optional `resource` / `audience` (must be the
/// subject token's audience), `scope` (a subset of its scopes) and
/// `task_id` (its task).
///
/// The authenticated client is the actor: it gets a delegated child for
/// itself, with `act` naming it outermost (RFC 8693 section 4.1), under
/// every rule of DelegateToken (see [`Broker::exchange_token`]). The child
/// is bound to the client's certificate (RFC 8705, as the metadata's
/// `tls_client_certificate_bound_access_tokens` says). Errors follow RFC
/// 8693 section 2.2.2: an unacceptable subject token is `invalid_request`,
/// an audience it cannot have `invalid_target`, wider scopes
/// `invalid_scope`.
async fn token(
    State(facade): State<Arc<Facade>>,
    Extension(peer): Extension<PeerCertificate>,
    headers: axum::http::HeaderMap,
    form: Result<Form<Vec<(String, String)>>, FormRejection>,
) -> Result<Response, OAuthError> {
    // Without a client certificate nor a client assertion, only a
    // `jwt-bearer` grant can go on: everything else is refused as before,
    // before the body is read.
    let params = match params(form) {
        Ok(params) => params,
        Err(e) if peer.cert.is_none() => {
            drop(e);
            return Err(OAuthError::invalid_client(
                "client authentication required: present an X.509-SVID of a registered identity (tls_client_auth) or a client assertion (private_key_jwt)",
            ));
        }
        Err(e) => return Err(e),
    };
    let grant_type = match params.get("grant_type").map(String::as_str) {
        Some(grant) if grant == super::grants::JWT_BEARER || grant == super::grants::CLIENT_CREDENTIALS => {
            return super::grants::token(&facade, &peer, &headers, &params, grant).await;
        }
        other => other,
    };
    if params.contains_key("client_assertion") {
        return Err(OAuthError::invalid_client(
            "client assertions are accepted with the `jwt-bearer` and `client_credentials` grants",
        ));
    }
    let who = facade.authenticate(&peer).await?;
    let grant_type = grant_type
        .filter(|g| !g.is_empty())
        .ok_or_else(|| OAuthError::invalid_request("parameter `grant_type` is required"))?;
    if grant_type != TOKEN_EXCHANGE {
        return Err(OAuthError::new(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            format!(
                "supported: `{TOKEN_EXCHANGE}`, `{}`, `{}`",
                super::grants::JWT_BEARER,
                super::grants::CLIENT_CREDENTIALS
            ),
        ));
    }
    let grant = crate::broker::oauth::OAuthGrant {
        grant_type: "token-exchange",
        client_auth: "tls_client_auth",
    };
    crate::broker::oauth::in_grant(grant, exchange(&facade, &peer, &who, &params)).await
}

/// The RFC 8693 exchange of an authenticated client.
async fn exchange(
    facade: &Facade,
    peer: &PeerCertificate,
    who: &VerifiedIdentity,
    params: &HashMap<String, String>,
) -> Result<Response, OAuthError> {
    let who = who.clone();
    let request = ExchangeRequest::parse(params)?;
    let delegation = request.delegation(&who)?;
    // INVARIANT: `authenticate` succeeded, so there is a client certificate.
    let leaf = peer
        .cert
        .as_ref()
        .and_then(|cert| facade.trust.trusted_leaf(cert).ok())
        .ok_or_else(|| OAuthError::invalid_client("client authentication required"))?;
    let binding = tessera_core::token::Confirmation::X5tS256(tessera_core::pop::certificate_thumbprint(leaf));
    let issued = facade
        .broker
        .exchange_token(&who, request.subject_token, &delegation, Some(binding))
        .await
        .map_err(exchange_error)?;
    let expires_in = (issued.grant.expires_at - facade.broker.now()).num_seconds().max(0);
    let scope = issued
        .grant
        .scopes
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(" ");
    Ok(json_no_store(json!({
        "access_token": issued.token,
        "issued_token_type": ACCESS_TOKEN_TYPE,
        "token_type": issued.token_type,
        "expires_in": expires_in,
        "scope": scope,
    })))
}

/// RFC 8693 section 2.2.2 error codes for a refused exchange.
fn exchange_error(e: BrokerError) -> OAuthError {
    use tessera_core::delegation::DelegationError as D;
    let code = match &e {
        BrokerError::Delegation(D::ParentNotLive) => {
            return OAuthError::invalid_request("subject_token: not a live token issued by this broker");
        }
        BrokerError::Delegation(D::OtherAudience { .. }) => Some("invalid_target"),
        BrokerError::Delegation(D::WiderScope(_) | D::HigherClass { .. } | D::Catalog(_)) => Some("invalid_scope"),
        BrokerError::Delegation(_)
        | BrokerError::Policy(
            crate::broker::policy::PolicyRefusal::Denied { .. }
            | crate::broker::policy::PolicyRefusal::ApprovalRequired { .. },
        )
        | BrokerError::Unbound { .. } => Some("invalid_request"),
        _ => None,
    };
    match code {
        Some(code) => OAuthError::new(StatusCode::BAD_REQUEST, code, e.to_string()),
        None => OAuthError::from_broker(e),
    }
}

/// A validated RFC 8693 request. Its `Debug` leaves the token out.
struct ExchangeRequest<'a> {
    /// The parent token. A secret: never logged.
    subject_token: &'a str,
    audience: Option<&'a str>,
    scopes: Vec<&'a str>,
    task_id: Option<&'a str>,
}

impl std::fmt::Debug for ExchangeRequest<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExchangeRequest")
            .field("audience", &self.audience)
            .field("scopes", &self.scopes)
            .field("task_id", &self.task_id)
            .finish_non_exhaustive()
    }
}

impl<'a> ExchangeRequest<'a> {
    /// RFC 8693 section 2.1 and 2.2.2 checks.
    fn parse(params: &'a HashMap<String, String>) -> Result<Self, OAuthError> {
        let subject_token = required(params, "subject_token")?;
        let subject_token_type = required(params, "subject_token_type")?;
        if subject_token_type != ACCESS_TOKEN_TYPE && subject_token_type != JWT_TOKEN_TYPE {
            return Err(OAuthError::invalid_request(format!(
                "`subject_token_type` must be `{ACCESS_TOKEN_TYPE}` or `{JWT_TOKEN_TYPE}`"
            )));
        }
        if params.contains_key("actor_token") || params.contains_key("actor_token_type") {
            return Err(OAuthError::invalid_request(
                "`actor_token` is not accepted: the actor is the authenticated client",
            ));
        }
        if let Some(requested) = params.get("requested_token_type")
            && requested != ACCESS_TOKEN_TYPE
        {
            return Err(OAuthError::invalid_request(format!(
                "`requested_token_type` must be `{ACCESS_TOKEN_TYPE}`"
            )));
        }
        let resource = params.get("resource").map(String::as_str).filter(|s| !s.is_empty());
        let audience = params.get("audience").map(String::as_str).filter(|s| !s.is_empty());
        let audience = match (resource, audience) {
            (Some(r), Some(a)) if r != a => {
                return Err(OAuthError::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_target",
                    "`resource` and `audience` name different APIs; a token has one audience",
                ));
            }
            (r, a) => r.or(a),
        };
        let scopes: Vec<&str> = params
            .get("scope")
            .map(|s| s.split(' ').filter(|s| !s.is_empty()).collect())
            .unwrap_or_default();
        if scopes.len() > 64 {
            return Err(OAuthError::new(
                StatusCode::BAD_REQUEST,
                "invalid_scope",
                "too many scopes",
            ));
        }
        let task_id = params.get("task_id").map(String::as_str).filter(|s| !s.is_empty());
        Ok(Self {
            subject_token,
            audience,
            scopes,
            task_id,
        })
    }

    /// The DelegateToken request this exchange stands for: a child for `actor`.
    fn delegation(&self, actor: &VerifiedIdentity) -> Result<DelegationRequest, OAuthError> {
        let as_grpc = crate::pb::DelegateTokenRequest {
            parent_token: self.subject_token.to_owned(),
            delegate: actor.id().to_string(),
            scopes: self.scopes.iter().map(|s| (*s).to_owned()).collect(),
            audience: self.audience.unwrap_or_default().to_owned(),
            task_id: self.task_id.unwrap_or_default().to_owned(),
            ..Default::default()
        };
        crate::convert::delegation_request(&as_grpc).map_err(|e| {
            let code = match e.field {
                "scopes" => "invalid_scope",
                "audience" => "invalid_target",
                _ => "invalid_request",
            };
            let field = match e.field {
                "parent_token" => "subject_token",
                "scopes" => "scope",
                other => other,
            };
            OAuthError::new(StatusCode::BAD_REQUEST, code, format!("{field}: {}", e.message))
        })
    }
}

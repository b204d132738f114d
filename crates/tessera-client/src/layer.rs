//! A `tower` layer that protects an HTTP resource server — an MCP server
//! built on `rmcp`, an axum router, any `tower` service — with the SDK
//! [`Verifier`] (feature `tower`).
//!
//! For every request but the RFC 9728 metadata, [`ResourceService`]:
//!
//! 1. takes the `Authorization` header (`Bearer` or `DPoP`; exactly one) and
//!    the `DPoP` header (exactly one, or none), refusing a missing or
//!    malformed one before reading anything else;
//! 2. buffers the body, at most `max_body` bytes (413 beyond), so a DPoP
//!    proof's `content_digest` can be checked and MCP messages read;
//! 3. verifies with [`Verifier::verify_with_body`]: the token, its
//!    revocation, and a bound token's DPoP proof for the request's method
//!    and URL *as the client addressed it* (`public_url` + path, never the
//!    `Host` header, which the client controls);
//! 4. requires the scopes of the route (`require_scope`, `route_scope`);
//! 5. for a `POST` whose body holds MCP `tools/call` messages (one, or a
//!    batch), requires each tool's scope (`tool_scope`, else
//!    `default_tool_scope`, else the scope `tool:<name>` nobody is granted)
//!    and runs the [`ToolCheck`] hook, if any, with the tool's name and
//!    arguments and the [`Verified`] token;
//! 6. passes the request on with the [`Verified`] token in its extensions.
//!
//! Refusals are answered here: 401 / 403 with `WWW-Authenticate` (RFC 6750
//! section 3, RFC 9449 section 7.1) carrying `resource_metadata` (RFC 9728
//! section 5.1) and, for `insufficient_scope`, the `scope` needed; 401 with
//! a `DPoP-Nonce` header for `use_dpop_nonce`; 503 with `Retry-After` while
//! the verifier cannot decide. The body of a refusal is a small JSON object
//! (`error`, `error_description`) naming the failed check, never the token.
//!
//! `GET /.well-known/oauth-protected-resource` (and below it) answers the
//! RFC 9728 metadata: `resource` (the verifier's audience),
//! `authorization_servers`, `bearer_methods_supported`, `scopes_supported`,
//! `dpop_signing_alg_values_supported`, and
//! `dpop_bound_access_tokens_required` when the verifier requires bound
//! tokens.
//!
//! This mirrors the Python SDK's ASGI middleware (`tessera_sdk.asgi`), with
//! one difference: a `tools/call` whose `params.name` is not a string, or
//! whose `params.arguments` is neither absent nor an object, is refused
//! (400) rather than passed to the default scope.

use std::collections::{BTreeMap, BTreeSet};
use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::{AUTHORIZATION, CACHE_CONTROL, CONTENT_TYPE, HeaderValue, RETRY_AFTER, WWW_AUTHENTICATE};
use http::{Method, Request, Response, StatusCode};
use http_body::Body;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt as _, Full, LengthLimitError, Limited};
use serde_json::{Map, Value};

use crate::verifier::{Presented, RefusalKind, Verified, Verifier, VerifyError};

/// Where the RFC 9728 metadata is served.
pub const METADATA_PATH: &str = "/.well-known/oauth-protected-resource";
/// The default bound on a buffered request body (1 MiB), as the Python
/// middleware's.
pub const DEFAULT_MAX_BODY: usize = 1024 * 1024;
/// Longest tool name a refusal repeats in its `tool:<name>` scope.
const MAX_TOOL_NAME_IN_SCOPE: usize = 64;

/// Errors of the body or the inner service, boxed.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The body of every answer of a [`ResourceService`].
pub type ResponseBody = UnsyncBoxBody<Bytes, BoxError>;

/// One MCP `tools/call` of a request, as the [`ToolCheck`] hook sees it.
#[derive(Debug, Clone, Copy)]
pub struct ToolCall<'a> {
    /// `params.name`.
    pub name: &'a str,
    /// `params.arguments`, if the call has any.
    pub arguments: Option<&'a Map<String, Value>>,
}

/// A check of a tool call against the verified token, after its scope:
/// e.g. the token's MCP-tool `authorization_details` (server, tools,
/// argument constraints). Return a [`VerifyError`] to refuse, as
/// `insufficient_scope` (403) or any other refusal.
pub type ToolCheck = Arc<dyn Fn(&ToolCall<'_>, &Verified) -> Result<(), VerifyError> + Send + Sync>;

#[derive(Clone)]
struct RouteScope {
    method: Option<Method>,
    path: String,
    scope: String,
}

/// The configuration of a protected resource; [`ResourceLayer`] wraps a
/// service with it. Build with [`ResourceLayer::new`].
struct Settings {
    verifier: Verifier,
    public_url: String,
    metadata_url: String,
    realm: String,
    authorization_servers: Vec<String>,
    scopes_supported: BTreeSet<String>,
    required_scopes: Vec<String>,
    route_scopes: Vec<RouteScope>,
    tool_scopes: BTreeMap<String, String>,
    default_tool_scope: Option<String>,
    tool_check: Option<ToolCheck>,
    max_body: usize,
}

/// A `tower` layer protecting a service with a [`Verifier`]; see the module
/// docs.
#[derive(Clone)]
pub struct ResourceLayer {
    settings: Arc<Settings>,
}

impl fmt::Debug for ResourceLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResourceLayer")
            .field("public_url", &self.settings.public_url)
            .field("authorization_servers", &self.settings.authorization_servers)
            .field("tools", &self.settings.tool_scopes.len())
            .finish_non_exhaustive()
    }
}

impl ResourceLayer {
    /// A layer verifying with `verifier`, for a server that clients address
    /// as `public_url` (`https://mcp.example.com`: DPoP proofs name it) and
    /// whose tokens come from `authorization_server` (the broker's HTTPS
    /// issuer URL, listed in the metadata).
    pub fn new(verifier: Verifier, public_url: impl Into<String>, authorization_server: impl Into<String>) -> Self {
        let public_url = public_url.into().trim_end_matches('/').to_owned();
        Self {
            settings: Arc::new(Settings {
                verifier,
                metadata_url: format!("{public_url}{METADATA_PATH}"),
                public_url,
                realm: "tessera".to_owned(),
                authorization_servers: vec![authorization_server.into()],
                scopes_supported: BTreeSet::new(),
                required_scopes: Vec::new(),
                route_scopes: Vec::new(),
                tool_scopes: BTreeMap::new(),
                default_tool_scope: None,
                tool_check: None,
                max_body: DEFAULT_MAX_BODY,
            }),
        }
    }

    fn edit(mut self, f: impl FnOnce(&mut Settings)) -> Self {
        if let Some(settings) = Arc::get_mut(&mut self.settings) {
            f(settings);
        } else {
            // A clone shares the settings: give this one its own copy.
            let old = &self.settings;
            let mut settings = Settings {
                verifier: old.verifier.clone(),
                public_url: old.public_url.clone(),
                metadata_url: old.metadata_url.clone(),
                realm: old.realm.clone(),
                authorization_servers: old.authorization_servers.clone(),
                scopes_supported: old.scopes_supported.clone(),
                required_scopes: old.required_scopes.clone(),
                route_scopes: old.route_scopes.clone(),
                tool_scopes: old.tool_scopes.clone(),
                default_tool_scope: old.default_tool_scope.clone(),
                tool_check: old.tool_check.clone(),
                max_body: old.max_body,
            };
            f(&mut settings);
            self.settings = Arc::new(settings);
        }
        self
    }

    /// The `realm` of `WWW-Authenticate` (default `tessera`).
    pub fn realm(self, realm: impl Into<String>) -> Self {
        self.edit(|s| s.realm = realm.into())
    }

    /// Scopes listed in the metadata besides those the layer requires.
    pub fn scopes_supported<I: IntoIterator<Item = S>, S: Into<String>>(self, scopes: I) -> Self {
        self.edit(|s| s.scopes_supported.extend(scopes.into_iter().map(Into::into)))
    }

    /// Every request needs `scope`.
    pub fn require_scope(self, scope: impl Into<String>) -> Self {
        self.edit(|s| s.required_scopes.push(scope.into()))
    }

    /// A request for exactly `path` (and `method`, when given) needs `scope`.
    /// The path is compared as sent, neither percent-decoded nor normalised:
    /// give the inner router no other spelling of it (axum routes the raw
    /// path too), or check the scope in the handler with the [`Verified`]
    /// grant from the request's extensions.
    pub fn route_scope(self, method: Option<Method>, path: impl Into<String>, scope: impl Into<String>) -> Self {
        self.edit(|s| {
            s.route_scopes.push(RouteScope {
                method,
                path: path.into(),
                scope: scope.into(),
            });
        })
    }

    /// An MCP `tools/call` of `tool` needs `scope`.
    pub fn tool_scope(self, tool: impl Into<String>, scope: impl Into<String>) -> Self {
        self.edit(|s| {
            s.tool_scopes.insert(tool.into(), scope.into());
        })
    }

    /// The scope a tool without its own needs (without it, such a tool is
    /// refused: it needs `tool:<name>`, which the broker never grants unless
    /// a policy names it).
    pub fn default_tool_scope(self, scope: impl Into<String>) -> Self {
        self.edit(|s| s.default_tool_scope = Some(scope.into()))
    }

    /// A check of every tool call against the verified token, after the
    /// tool's scope (see [`ToolCheck`]).
    pub fn tool_check(
        self,
        check: impl Fn(&ToolCall<'_>, &Verified) -> Result<(), VerifyError> + Send + Sync + 'static,
    ) -> Self {
        self.edit(|s| s.tool_check = Some(Arc::new(check)))
    }

    /// The largest request body buffered (default [`DEFAULT_MAX_BODY`]);
    /// a longer one is answered 413.
    pub fn max_body(self, bytes: usize) -> Self {
        self.edit(|s| s.max_body = bytes)
    }

    /// The RFC 9728 metadata this layer serves.
    pub fn metadata(&self) -> Value {
        self.settings.metadata()
    }

    /// The URL of the metadata, as `WWW-Authenticate` names it.
    pub fn metadata_url(&self) -> &str {
        &self.settings.metadata_url
    }
}

impl<S> tower_layer::Layer<S> for ResourceLayer {
    type Service = ResourceService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ResourceService {
            inner,
            settings: self.settings.clone(),
        }
    }
}

/// The service of a [`ResourceLayer`].
#[derive(Clone)]
pub struct ResourceService<S> {
    inner: S,
    settings: Arc<Settings>,
}

impl<S> fmt::Debug for ResourceService<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResourceService")
            .field("public_url", &self.settings.public_url)
            .finish_non_exhaustive()
    }
}

impl<S, B, ResBody> tower_service::Service<Request<B>> for ResourceService<S>
where
    S: tower_service::Service<Request<Full<Bytes>>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
    ResBody: Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<BoxError>,
{
    type Response = Response<ResponseBody>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        // The clone is ready only if polled; keep the polled one for this call.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let settings = self.settings.clone();
        Box::pin(async move {
            match settings.admit(request).await {
                Ok(request) => {
                    let response = inner.call(request).await?;
                    Ok(response.map(|body| body.map_err(Into::into).boxed_unsync()))
                }
                Err(refusal) => Ok(refusal),
            }
        })
    }
}

/// A request refused before the inner service: the answer to send.
type Refusal = Response<ResponseBody>;

impl Settings {
    fn metadata(&self) -> Value {
        let mut scopes = self.scopes_supported.clone();
        scopes.extend(self.required_scopes.iter().cloned());
        scopes.extend(self.route_scopes.iter().map(|r| r.scope.clone()));
        scopes.extend(self.tool_scopes.values().cloned());
        scopes.extend(self.default_tool_scope.iter().cloned());
        let mut metadata = serde_json::json!({
            "resource": self.verifier.config().audience,
            "authorization_servers": self.authorization_servers,
            "bearer_methods_supported": ["header"],
            "scopes_supported": scopes,
            "dpop_signing_alg_values_supported": ["ES256", "EdDSA"],
        });
        if self.verifier.config().require_bound
            && let Some(map) = metadata.as_object_mut()
        {
            map.insert("dpop_bound_access_tokens_required".into(), Value::Bool(true));
        }
        metadata
    }

    /// Every check; the request to pass on, or the answer.
    async fn admit<B>(&self, request: Request<B>) -> Result<Request<Full<Bytes>>, Refusal>
    where
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let path = request.uri().path();
        if path == METADATA_PATH
            || path
                .strip_prefix(METADATA_PATH)
                .is_some_and(|rest| rest.starts_with('/'))
        {
            return Err(self.serve_metadata(request.method()));
        }
        let (mut parts, body) = request.into_parts();

        // The token first: an anonymous caller gets no body buffered.
        let mut authorizations = parts.headers.get_all(AUTHORIZATION).iter();
        let authorization = match (authorizations.next(), authorizations.next()) {
            (None, _) => return Err(self.refuse(&VerifyError::Missing)),
            (Some(value), None) => value.to_str().map_err(|_| self.refuse(&VerifyError::Scheme))?,
            (Some(_), Some(_)) => return Err(self.refuse(&VerifyError::Scheme)),
        };
        let (scheme, token) = Presented::parse_authorization(authorization).map_err(|e| self.refuse(&e))?;
        // RFC 9449 section 4.3: exactly one DPoP header, or none.
        let mut proofs = parts.headers.get_all("dpop").iter();
        let proof = match (proofs.next(), proofs.next()) {
            (Some(p), None) => p.to_str().ok(),
            _ => None,
        };

        let body = match Limited::new(body, self.max_body).collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(e) if e.is::<LengthLimitError>() => {
                return Err(json_response(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    &serde_json::json!({"error": "invalid_request", "error_description": "request body too large"}),
                ));
            }
            Err(_) => return Err(bad_request("the request body could not be read")),
        };

        let url = format!("{}{}", self.public_url, parts.uri.path());
        let presented = Presented {
            token,
            scheme,
            dpop_proof: proof,
            method: parts.method.as_str(),
            url: &url,
            client_cert_der: None,
        };
        let verified = self
            .verifier
            .verify_with_body(&presented, &body)
            .await
            .map_err(|e| self.refuse(&e))?;

        for scope in self.required_scopes.iter().chain(
            self.route_scopes
                .iter()
                .filter(|r| r.path == parts.uri.path() && r.method.as_ref().is_none_or(|m| *m == parts.method))
                .map(|r| &r.scope),
        ) {
            verified.require_scope(scope).map_err(|e| self.refuse(&e))?;
        }
        if parts.method == Method::POST && self.reads_tools() {
            self.check_tools(&body, &verified)?;
        }
        parts.extensions.insert(verified);
        Ok(Request::from_parts(parts, Full::new(body)))
    }

    fn reads_tools(&self) -> bool {
        !self.tool_scopes.is_empty() || self.default_tool_scope.is_some() || self.tool_check.is_some()
    }

    /// The scope and the hook of every `tools/call` in `body`.
    #[allow(
        clippy::result_large_err,
        reason = "the error is the answer itself, built once for a refused request"
    )]
    fn check_tools(&self, body: &[u8], verified: &Verified) -> Result<(), Refusal> {
        // Duplicate members are refused: what this parser cannot read must
        // not reach a parser that reads it differently.
        let Ok(Strict(message)) = serde_json::from_slice::<Strict>(body) else {
            return Err(bad_request("body is not JSON with unique members"));
        };
        let calls = match &message {
            Value::Array(batch) => batch.iter().collect(),
            one => vec![one],
        };
        for call in calls {
            if call.get("method").and_then(Value::as_str) != Some("tools/call") {
                continue;
            }
            let params = call.get("params");
            let Some(name) = params.and_then(|p| p.get("name")).and_then(Value::as_str) else {
                return Err(bad_request("tools/call without a string `params.name`"));
            };
            let arguments = match params.and_then(|p| p.get("arguments")) {
                None | Some(Value::Null) => None,
                Some(Value::Object(map)) => Some(map),
                Some(_) => return Err(bad_request("tools/call `params.arguments` is not an object")),
            };
            let scope = match self.tool_scopes.get(name).or(self.default_tool_scope.as_ref()) {
                Some(scope) => scope.clone(),
                None => format!("tool:{}", name.chars().take(MAX_TOOL_NAME_IN_SCOPE).collect::<String>()),
            };
            verified.require_scope(&scope).map_err(|e| self.refuse(&e))?;
            if let Some(check) = &self.tool_check {
                check(&ToolCall { name, arguments }, verified).map_err(|e| self.refuse(&e))?;
            }
        }
        Ok(())
    }

    fn serve_metadata(&self, method: &Method) -> Refusal {
        if method != Method::GET && method != Method::HEAD {
            let mut response = json_response(
                StatusCode::METHOD_NOT_ALLOWED,
                &serde_json::json!({"error": "invalid_request", "error_description": "use GET"}),
            );
            response
                .headers_mut()
                .insert(http::header::ALLOW, HeaderValue::from_static("GET, HEAD"));
            return response;
        }
        let mut response = json_response(StatusCode::OK, &self.metadata());
        response
            .headers_mut()
            .insert(CACHE_CONTROL, HeaderValue::from_static("max-age=300"));
        response
    }

    /// The answer to a refusal (see the module docs).
    fn refuse(&self, error: &VerifyError) -> Refusal {
        let kind = error.kind();
        let status = StatusCode::from_u16(kind.http_status()).unwrap_or(StatusCode::UNAUTHORIZED);
        let code = kind.error_code().unwrap_or("temporarily_unavailable");
        let mut response = json_response(
            status,
            &serde_json::json!({"error": code, "error_description": error.to_string()}),
        );
        let headers = response.headers_mut();
        if let Some(challenge) = error
            .www_authenticate_with(&self.realm, Some(&self.metadata_url))
            .and_then(|c| HeaderValue::from_str(&c).ok())
        {
            headers.insert(WWW_AUTHENTICATE, challenge);
        }
        if kind == RefusalKind::Unavailable {
            headers.insert(RETRY_AFTER, HeaderValue::from_static("1"));
        }
        if let Some(nonce) = self.verifier.dpop_nonce().and_then(|n| HeaderValue::from_str(&n).ok()) {
            headers.insert("dpop-nonce", nonce);
        }
        response
    }
}

fn bad_request(description: &str) -> Refusal {
    json_response(
        StatusCode::BAD_REQUEST,
        &serde_json::json!({"error": "invalid_request", "error_description": description}),
    )
}

fn json_response(status: StatusCode, body: &Value) -> Refusal {
    let bytes = Bytes::from(serde_json::to_vec(body).unwrap_or_default());
    let mut response = Response::new(
        Full::new(bytes)
            .map_err(|never: Infallible| match never {})
            .boxed_unsync(),
    );
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
        .headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// A JSON value whose objects have unique members (serde_json keeps the
/// last of duplicates; another parser may keep the first).
struct Strict(Value);

impl<'de> serde::Deserialize<'de> for Strict {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(StrictVisitor).map(Strict)
    }
}

struct StrictVisitor;

impl<'de> serde::de::Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(v.into())
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(v.into())
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(Strict(item)) = seq.next_element()? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut members = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if members.contains_key(&key) {
                return Err(serde::de::Error::custom("duplicate member"));
            }
            let Strict(value) = map.next_value()?;
            members.insert(key, value);
        }
        Ok(Value::Object(members))
    }
}

#[cfg(test)]
mod tests;

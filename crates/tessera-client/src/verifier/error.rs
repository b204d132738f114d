//! Why a token was refused, and how a resource server answers it over HTTP.

use tessera_core::pop::{BindingError, ProofError};
use tessera_core::token::{ChainError, JwsError};

/// How a resource server answers a refusal (RFC 6750 section 3.1, RFC 9449
/// section 7.1): the HTTP status and the `error` code of `WWW-Authenticate`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RefusalKind {
    /// 401, `invalid_token`: the token is not acceptable (forged, expired,
    /// revoked, for someone else, bound to a key the caller did not prove).
    InvalidToken,
    /// 401, `invalid_dpop_proof`: the DPoP proof is missing a part, stale,
    /// replayed or for another request.
    InvalidProof,
    /// 401, `use_dpop_nonce` (RFC 9449 section 9): the proof must carry the
    /// nonce the verifier hands out; answer with a `DPoP-Nonce` header
    /// ([`super::Verifier::dpop_nonce`]) and the client retries with it.
    UseDpopNonce,
    /// 403, `insufficient_scope`: a good token without the scope needed.
    InsufficientScope,
    /// 503: the verifier cannot decide (its revocation feed is stale or was
    /// never synchronised); the caller may retry later.
    Unavailable,
}

impl RefusalKind {
    /// The HTTP status code to answer with.
    pub fn http_status(self) -> u16 {
        match self {
            Self::InvalidToken | Self::InvalidProof | Self::UseDpopNonce => 401,
            Self::InsufficientScope => 403,
            Self::Unavailable => 503,
        }
    }

    /// The `error` parameter of `WWW-Authenticate`, if the answer carries one.
    pub fn error_code(self) -> Option<&'static str> {
        match self {
            Self::InvalidToken => Some("invalid_token"),
            Self::InvalidProof => Some("invalid_dpop_proof"),
            Self::UseDpopNonce => Some("use_dpop_nonce"),
            Self::InsufficientScope => Some("insufficient_scope"),
            Self::Unavailable => None,
        }
    }
}

/// Why the [`super::Verifier`] refused a token. Messages name the failed
/// check and never contain the token, the proof or any part of them.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum VerifyError {
    /// No token was presented.
    #[error("no access token")]
    Missing,
    /// The `Authorization` header is not `Bearer <token>` or `DPoP <token>`.
    #[error("authorization header is not `Bearer` or `DPoP` followed by a token")]
    Scheme,
    /// The token failed a structural, header, type, key, signature or
    /// claim check of core's verification.
    #[error(transparent)]
    Token(JwsError),
    /// `alg` is valid JOSE but not in this verifier's allow-list.
    #[error("token algorithm `{0}` is not allowed by this verifier")]
    AlgorithmNotAllowed(tessera_core::token::Algorithm),
    /// The `act` (delegation) chain is malformed, too deep or widens.
    #[error("token delegation chain refused: {0}")]
    Delegation(ChainError),
    /// The token (its `jti`) or its task was revoked.
    #[error("token has been revoked")]
    Revoked,
    /// The token was issued before the verifier's revocation feed was
    /// (re)synchronised, so a revocation of it may have been missed.
    #[error("token was issued before the revocation feed was synchronised; request a new token")]
    IssuedBeforeSync,
    /// The token is bound (`cnf`) but presented as a bearer token or without
    /// a proof of possession.
    #[error("token is bound to a key: a proof of possession is required")]
    ProofRequired,
    /// The verifier requires bound tokens and this one is a bearer token.
    #[error("bearer tokens are not accepted here: a bound token is required")]
    BoundTokenRequired,
    /// A bearer token came with the `DPoP` scheme.
    #[error("dpop proof refused: the DPoP scheme needs a DPoP-bound token")]
    DpopSchemeWithoutKey,
    /// The DPoP proof failed a check of core's; the message names which.
    #[error("dpop proof refused: {0}")]
    Proof(ProofError),
    /// The DPoP proof's `jti` was seen before.
    #[error("dpop proof has been used before")]
    ProofReplayed,
    /// The DPoP proof carries no nonce, or not a current one of this
    /// verifier's (RFC 9449 section 9).
    #[error("dpop proof must carry the server's current nonce")]
    UseDpopNonce,
    /// The caller's TLS certificate is not the one the token is bound to.
    #[error("client certificate does not match the token's binding")]
    CertificateMismatch,
    /// The token is certificate-bound and no client certificate was presented.
    #[error("token is bound to a client certificate and none was presented")]
    CertificateRequired,
    /// The token lacks a scope the operation needs.
    #[error("token lacks scope `{0}`")]
    InsufficientScope(String),
    /// The token's tool-level limits (`authorization_details` of type
    /// `mcp_tool`) do not allow this tool call; the message says which
    /// tool or argument, never its value.
    #[error("{0}")]
    ToolNotAllowed(String),
    /// Fail closed: the revocation feed has been silent longer than
    /// `max_staleness`.
    #[error("revocation feed is stale: refusing every token until it is back")]
    FeedStale,
    /// Fail closed: the revocation feed has not been synchronised yet (at
    /// start, or after the broker lost this verifier's position).
    #[error("revocation feed is not synchronised yet: refusing every token")]
    NotSynced,
    /// Fail closed: a bounded cache (revocations or DPoP `jti`s) is full of
    /// entries that have not expired.
    #[error("verifier capacity exhausted ({0}); refusing until entries expire")]
    Capacity(&'static str),
    /// Fail closed: the shared DPoP replay store could not be asked.
    #[error("dpop replay store unavailable: {0}")]
    ReplayStoreUnavailable(String),
}

impl VerifyError {
    /// How to answer this refusal over HTTP.
    pub fn kind(&self) -> RefusalKind {
        match self {
            Self::Proof(_) | Self::ProofReplayed | Self::DpopSchemeWithoutKey => RefusalKind::InvalidProof,
            Self::UseDpopNonce => RefusalKind::UseDpopNonce,
            Self::InsufficientScope(_) | Self::ToolNotAllowed(_) => RefusalKind::InsufficientScope,
            Self::FeedStale | Self::NotSynced | Self::Capacity(_) | Self::ReplayStoreUnavailable(_) => {
                RefusalKind::Unavailable
            }
            // An unusable key in our own cache is our fault, but the token
            // still cannot be accepted; 401 keeps the answer uniform.
            Self::Missing
            | Self::Scheme
            | Self::Token(_)
            | Self::AlgorithmNotAllowed(_)
            | Self::Delegation(_)
            | Self::Revoked
            | Self::IssuedBeforeSync
            | Self::ProofRequired
            | Self::BoundTokenRequired
            | Self::CertificateMismatch
            | Self::CertificateRequired => RefusalKind::InvalidToken,
        }
    }

    /// The value of a `WWW-Authenticate` header for this refusal (RFC 6750
    /// section 3, RFC 9449 section 7.1), or `None` for 503. Offers both
    /// schemes; `algs` lists the DPoP proof algorithms accepted. An
    /// `insufficient_scope` refusal names the `scope` needed (RFC 6750
    /// section 3.1), so a client can step up.
    pub fn www_authenticate(&self, realm: &str) -> Option<String> {
        self.www_authenticate_with(realm, None)
    }

    /// [`VerifyError::www_authenticate`] with the RFC 9728 section 5.1
    /// `resource_metadata` parameter (the URL of this resource server's
    /// protected-resource metadata) in every challenge, so a client can
    /// discover the authorization server from the refusal.
    pub fn www_authenticate_with(&self, realm: &str, resource_metadata: Option<&str>) -> Option<String> {
        let realm = quotable(realm);
        let code = self.kind().error_code()?;
        // The description is our own fixed text; strip quotes defensively.
        let description = quotable(&self.to_string());
        let metadata = resource_metadata
            .map(|url| format!(r#", resource_metadata="{}""#, quotable(url)))
            .unwrap_or_default();
        let params = format!(r#"realm="{realm}", error="{code}", error_description="{description}"{metadata}"#);
        Some(match self {
            Self::Proof(_)
            | Self::ProofReplayed
            | Self::ProofRequired
            | Self::DpopSchemeWithoutKey
            | Self::UseDpopNonce => {
                format!(r#"DPoP {params}, algs="ES256 EdDSA""#)
            }
            Self::InsufficientScope(scope) => {
                let scope = quotable(scope);
                format!(r#"Bearer {params}, scope="{scope}""#)
            }
            // No scope would help: the limit is in the token's
            // `authorization_details`; a new token with a wider one might.
            Self::ToolNotAllowed(_) => format!("Bearer {params}"),
            _ => format!(r#"Bearer {params}, DPoP realm="{realm}"{metadata}, algs="ES256 EdDSA""#),
        })
    }
}

/// `value` without the characters that would end or escape a quoted string
/// (RFC 9110 section 5.6.4) or break the header line.
fn quotable(value: &str) -> String {
    value.replace(['"', '\\'], "").replace(|c: char| c.is_control(), "")
}

impl From<JwsError> for VerifyError {
    /// Core's token refusals, with the allow-list and the chain kept apart
    /// as this SDK always reported them.
    fn from(e: JwsError) -> Self {
        match e {
            JwsError::AlgorithmNotAllowed(alg) => Self::AlgorithmNotAllowed(alg),
            JwsError::Chain(chain) => Self::Delegation(chain),
            other => Self::Token(other),
        }
    }
}

impl From<BindingError> for VerifyError {
    fn from(e: BindingError) -> Self {
        match e {
            BindingError::DpopSchemeWithoutKey => Self::DpopSchemeWithoutKey,
            BindingError::Proof(ProofError::Replayed) => Self::ProofReplayed,
            BindingError::Proof(proof) => Self::Proof(proof),
            BindingError::CertificateRequired => Self::CertificateRequired,
            BindingError::CertificateMismatch => Self::CertificateMismatch,
            // `ProofRequired`, and any binding refusal core adds later:
            // without a proof of the binding the token is not the caller's.
            _ => Self::ProofRequired,
        }
    }
}

/// Why a [`super::VerifierConfig`] was refused; names the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("verifier config `{field}`: {message}")]
pub struct VerifierConfigError {
    /// The field.
    pub field: &'static str,
    /// What is wrong.
    pub message: String,
}

impl VerifierConfigError {
    pub(crate) fn new(field: &'static str, message: impl Into<String>) -> Self {
        Self {
            field,
            message: message.into(),
        }
    }
}

impl From<tessera_core::revocation::feed::FeedRefusal> for VerifyError {
    fn from(refusal: tessera_core::revocation::feed::FeedRefusal) -> Self {
        use tessera_core::revocation::feed::FeedRefusal;
        match refusal {
            FeedRefusal::NotSynced => Self::NotSynced,
            FeedRefusal::FeedStale => Self::FeedStale,
            FeedRefusal::IssuedBeforeSync => Self::IssuedBeforeSync,
            // `FeedRefusal` is non-exhaustive: anything else is a revocation.
            _ => Self::Revoked,
        }
    }
}

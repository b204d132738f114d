//! The agent's side of the SDK: request, delegate and release task-scoped
//! tokens, wait for approvals, and bind tokens to a [`PopKey`].
//!
//! ```no_run
//! # async fn demo(channel: tessera_client::Channel) -> Result<(), tessera_client::ClientError> {
//! use tessera_client::agent::{AgentClient, TokenRequest};
//! use tessera_client::PopKey;
//!
//! let key = PopKey::generate()?;
//! let mut agent = AgentClient::new(channel);
//! let request = TokenRequest::new("task-1", "https://api.example.com/crm", ["crm.contacts.write"]);
//! let token = agent.request_bound(request, &key).await?.token()?;
//! assert_eq!(token.token_type(), "DPoP");
//! # Ok(()) }
//! ```

use std::fmt;

use crate::Channel;
use tokio_stream::StreamExt as _;

use crate::error::ClientError;
use crate::pb;
use crate::pop::{PopKey, REDEEM_DELEGATION_HTU, REQUEST_TOKEN_HTU};

/// A token as issued. The access token is a secret: `Debug` redacts it.
#[derive(Clone)]
pub struct IssuedToken(pb::IssuedToken);

impl IssuedToken {
    /// The compact JWS to present (with a proof, for a `DPoP` token).
    pub fn access_token(&self) -> &str {
        &self.0.access_token
    }

    /// `Bearer` or `DPoP`.
    pub fn token_type(&self) -> &str {
        &self.0.token_type
    }

    /// The grant id (the token's `jti`), for release and revocation.
    pub fn grant_id(&self) -> &str {
        &self.0.grant_id
    }

    /// Everything the broker returned.
    pub fn as_proto(&self) -> &pb::IssuedToken {
        &self.0
    }

    /// The wire message.
    pub fn into_proto(self) -> pb::IssuedToken {
        self.0
    }
}

impl fmt::Debug for IssuedToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IssuedToken")
            .field("access_token", &"<redacted>")
            .field("token_type", &self.0.token_type)
            .field("grant_id", &self.0.grant_id)
            .field("task_id", &self.0.task_id)
            .field("audience", &self.0.audience)
            .field("scopes", &self.0.scopes)
            .field("expires_in", &self.0.expires_in)
            .finish()
    }
}

impl From<pb::IssuedToken> for IssuedToken {
    fn from(t: pb::IssuedToken) -> Self {
        Self(t)
    }
}

/// What RequestToken answered: a token, or an approval to wait for.
#[derive(Debug, Clone)]
pub enum Requested {
    /// The token.
    Token(IssuedToken),
    /// A human must approve first; wait with [`AgentClient::await_approval`].
    Pending(pb::PendingApproval),
}

impl Requested {
    /// The token, or [`ClientError::Pending`] if it waits for approval.
    pub fn token(self) -> Result<IssuedToken, ClientError> {
        match self {
            Self::Token(t) => Ok(t),
            Self::Pending(p) => Err(ClientError::Pending(p.approval_id)),
        }
    }
}

/// A RequestToken request.
#[derive(Debug, Clone)]
pub struct TokenRequest {
    task_id: String,
    audience: String,
    scopes: Vec<String>,
    ttl_seconds: Option<u32>,
    tools: Option<tessera_core::authz::ToolGrant>,
}

/// `authorization_details` of one `mcp_tool` detail, as the proto carries it.
fn details_json(tools: Option<&tessera_core::authz::ToolGrant>) -> String {
    tools.map_or_else(String::new, |g| {
        serde_json::Value::Array(vec![g.to_value()]).to_string()
    })
}

impl TokenRequest {
    /// `scopes` of `audience` in `task_id`.
    pub fn new(
        task_id: impl Into<String>,
        audience: impl Into<String>,
        scopes: impl IntoIterator<Item = impl Into<String>>,
    ) -> Self {
        Self {
            task_id: task_id.into(),
            audience: audience.into(),
            scopes: scopes.into_iter().map(Into::into).collect(),
            ttl_seconds: None,
            tools: None,
        }
    }

    /// Asks for this lifetime (the broker may grant less).
    pub fn ttl_seconds(mut self, secs: u32) -> Self {
        self.ttl_seconds = Some(secs);
        self
    }

    /// Asks for this tool-level limit (an `mcp_tool` detail whose `server`
    /// is the audience), within the task's; without it the token carries
    /// the task's limit for the audience, if any.
    pub fn tool_limit(mut self, limit: tessera_core::authz::ToolGrant) -> Self {
        self.tools = Some(limit);
        self
    }

    fn into_proto(self) -> pb::RequestTokenRequest {
        pb::RequestTokenRequest {
            authorization_details: details_json(self.tools.as_ref()),
            task_id: self.task_id,
            audience: self.audience,
            scopes: self.scopes,
            ttl_seconds: self.ttl_seconds,
            ..Default::default()
        }
    }
}

/// A DelegateToken or OfferDelegation request: a child of a token the
/// caller holds.
#[derive(Debug, Clone)]
pub struct Delegation {
    delegate: String,
    scopes: Vec<String>,
    ttl_seconds: Option<u32>,
    tools: Option<tessera_core::authz::ToolGrant>,
}

impl Delegation {
    /// A child for `delegate` (a SPIFFE ID) with all of the parent's scopes.
    pub fn to(delegate: impl Into<String>) -> Self {
        Self {
            delegate: delegate.into(),
            scopes: Vec::new(),
            ttl_seconds: None,
            tools: None,
        }
    }

    /// A narrower tool-level limit than the parent's (without it the child
    /// carries the parent's).
    pub fn tool_limit(mut self, limit: tessera_core::authz::ToolGrant) -> Self {
        self.tools = Some(limit);
        self
    }

    /// Only these scopes (a subset of the parent's).
    pub fn scopes(mut self, scopes: impl IntoIterator<Item = impl Into<String>>) -> Self {
        self.scopes = scopes.into_iter().map(Into::into).collect();
        self
    }

    /// This lifetime; the child never outlives its parent.
    pub fn ttl_seconds(mut self, secs: u32) -> Self {
        self.ttl_seconds = Some(secs);
        self
    }

    fn into_proto(self, parent: &IssuedToken) -> pb::DelegateTokenRequest {
        pb::DelegateTokenRequest {
            authorization_details: details_json(self.tools.as_ref()),
            parent_token: parent.access_token().to_owned(),
            delegate: self.delegate,
            scopes: self.scopes,
            ttl_seconds: self.ttl_seconds,
            ..Default::default()
        }
    }
}

/// An offer of a child token to one delegate ([`AgentClient::offer`]).
/// Not a credential: only the delegate it names can redeem it
/// ([`AgentClient::redeem`]), once, before it expires. Hand it to the
/// delegate like any message; `Debug` redacts it anyway.
#[derive(Clone)]
pub struct DelegationOffer(pb::DelegationOffer);

impl DelegationOffer {
    /// The signed offer, to hand to the delegate.
    pub fn offer(&self) -> &str {
        &self.0.offer
    }

    /// SPIFFE ID of the only identity that can redeem it.
    pub fn delegate(&self) -> &str {
        &self.0.delegate
    }

    /// An offer received as text from its maker.
    pub fn from_offer(offer: impl Into<String>) -> Self {
        Self(pb::DelegationOffer {
            offer: offer.into(),
            ..Default::default()
        })
    }
}

impl fmt::Debug for DelegationOffer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DelegationOffer")
            .field("offer", &"<redacted>")
            .field("delegate", &self.0.delegate)
            .finish()
    }
}

/// `AgentService` for an agent: typed calls over one mTLS channel. The raw
/// generated client is [`crate::AgentClient`].
#[derive(Debug, Clone)]
pub struct AgentClient {
    inner: crate::AgentClient,
}

impl AgentClient {
    /// A client over `channel` (see [`crate::connect`]).
    pub fn new(channel: Channel) -> Self {
        Self {
            inner: crate::AgentClient::new(channel),
        }
    }

    /// RequestToken for a bearer token (refused for classes the broker
    /// requires bound, `write` and `admin` by default).
    pub async fn request(&mut self, req: TokenRequest) -> Result<Requested, ClientError> {
        self.send(req.into_proto()).await
    }

    /// RequestToken for a token bound to `key` (`cnf.jkt`, type `DPoP`).
    pub async fn request_bound(&mut self, req: TokenRequest, key: &PopKey) -> Result<Requested, ClientError> {
        let mut msg = req.into_proto();
        msg.pop_proof = key.proof("POST", REQUEST_TOKEN_HTU, None)?;
        self.send(msg).await
    }

    /// RequestToken for a token bound to this connection's client
    /// certificate (`cnf.x5t#S256`, RFC 8705).
    pub async fn request_certificate_bound(&mut self, req: TokenRequest) -> Result<Requested, ClientError> {
        let mut msg = req.into_proto();
        msg.mtls_binding = true;
        self.send(msg).await
    }

    async fn send(&mut self, msg: pb::RequestTokenRequest) -> Result<Requested, ClientError> {
        let response = self.inner.request_token(msg).await?.into_inner();
        match response.outcome {
            Some(pb::request_token_response::Outcome::Token(t)) => Ok(Requested::Token(t.into())),
            Some(pb::request_token_response::Outcome::Pending(p)) => Ok(Requested::Pending(p)),
            None => Err(ClientError::Unexpected("RequestToken answered with no outcome")),
        }
    }

    /// DelegateToken: a bearer child of `parent` (held by this caller) for
    /// another agent, returned to this caller. Its `client_id` names the
    /// delegate but proves nothing about who holds it; classes the broker
    /// requires bound (`write`, `admin` by default) are refused: use
    /// [`AgentClient::offer`].
    pub async fn delegate(&mut self, parent: &IssuedToken, delegation: Delegation) -> Result<IssuedToken, ClientError> {
        let msg = delegation.into_proto(parent);
        Ok(self.inner.delegate_token(msg).await?.into_inner().into())
    }

    /// OfferDelegation: the same checks as [`AgentClient::delegate`], but
    /// the answer is an offer only the delegate can redeem, binding the
    /// child to its own key. This caller never receives the child.
    pub async fn offer(
        &mut self,
        parent: &IssuedToken,
        delegation: Delegation,
    ) -> Result<DelegationOffer, ClientError> {
        let msg = delegation.into_proto(parent);
        Ok(DelegationOffer(self.inner.offer_delegation(msg).await?.into_inner()))
    }

    /// RedeemDelegation, as the delegate an offer names: the child, bound to
    /// `key` (`cnf.jkt`, type `DPoP`) when given, else a bearer child (if
    /// its class allows).
    pub async fn redeem(&mut self, offer: &DelegationOffer, key: Option<&PopKey>) -> Result<IssuedToken, ClientError> {
        let msg = pb::RedeemDelegationRequest {
            offer: offer.offer().to_owned(),
            pop_proof: match key {
                Some(key) => key.proof("POST", REDEEM_DELEGATION_HTU, None)?,
                None => String::new(),
            },
        };
        Ok(self.inner.redeem_delegation(msg).await?.into_inner().into())
    }

    /// ReleaseToken: gives the grant back (it and its delegates are revoked
    /// at once). `Ok(false)` if it was already revoked or expired.
    pub async fn release(&mut self, grant_id: &str) -> Result<bool, ClientError> {
        let msg = pb::ReleaseTokenRequest {
            target: Some(pb::release_token_request::Target::GrantId(grant_id.to_owned())),
        };
        Ok(self.inner.release_token(msg).await?.into_inner().revoked)
    }

    /// AwaitApproval: waits until the approval is decided and returns the
    /// token; a denial or expiry arrives as the broker's status.
    pub async fn await_approval(&mut self, approval_id: &str) -> Result<IssuedToken, ClientError> {
        let msg = pb::AwaitApprovalRequest {
            approval_id: approval_id.to_owned(),
        };
        let mut stream = self.inner.await_approval(msg).await?.into_inner();
        while let Some(item) = stream.next().await {
            match item?.event {
                Some(pb::await_approval_response::Event::Token(t)) => return Ok(t.into()),
                Some(pb::await_approval_response::Event::StillPending(_)) | None => {}
            }
        }
        Err(ClientError::Unexpected("AwaitApproval ended without a token"))
    }
}

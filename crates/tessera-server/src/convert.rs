//! Protobuf ↔ domain. Every request field is parsed here into a domain
//! newtype, or refused with INVALID_ARGUMENT naming the field.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use prost_types::Timestamp;
use tessera_core::blast::{BlastRadius, BlastTarget};
use tessera_core::grant::{Grant, GrantId, GrantState};
use tessera_core::identity::SpiffeId;
use tessera_core::issuance::{MAX_SCOPES_PER_REQUEST, TokenRequest};
use tessera_core::orchestration::{StartTask, TaskLifetime};
use tessera_core::revocation::{Revocation, RevocationTarget};
use tessera_core::task::{Audience, Scope, ScopeCeiling, ScopeClass, Task, TaskId, TaskState};
use tessera_core::token::{AccessClaims, Jwk};
use tessera_core::ttl::Ttl;
use tessera_proto::v1 as pb;
use tessera_store::{FeedEvent, FeedPosition, GrantFilter};

use crate::broker::{BindingAsk, GrantQuery, Issued, TokenAsk};
use crate::status::FieldError;

mod approvals;
pub use approvals::{approval, approval_id, approval_state, pending};

/// Longest free-text reason accepted, in bytes.
pub const MAX_REASON_LEN: usize = 1024;
/// Longest token accepted for introspection or release, in bytes.
pub const MAX_TOKEN_LEN: usize = 16 * 1024;
/// Longest feed position accepted, in bytes.
pub const MAX_POSITION_LEN: usize = 64;

/// A timestamp for the wire.
pub fn timestamp(t: DateTime<Utc>) -> Timestamp {
    Timestamp {
        seconds: t.timestamp(),
        nanos: i32::try_from(t.timestamp_subsec_nanos()).unwrap_or(0),
    }
}

fn from_timestamp(field: &'static str, t: &Timestamp) -> Result<DateTime<Utc>, FieldError> {
    let nanos = u32::try_from(t.nanos).map_err(|_| FieldError::new(field, "nanos out of range"))?;
    DateTime::from_timestamp(t.seconds, nanos).ok_or_else(|| FieldError::new(field, "out of range"))
}

/// Parses a task id field.
pub fn task_id(field: &'static str, s: &str) -> Result<TaskId, FieldError> {
    TaskId::parse(s).map_err(|e| FieldError::new(field, format!("task id {e}")))
}

/// Parses a grant id field.
pub fn grant_id(field: &'static str, s: &str) -> Result<GrantId, FieldError> {
    GrantId::parse(s).map_err(|e| FieldError::new(field, e.to_string()))
}

fn spiffe_id(field: &'static str, s: &str) -> Result<SpiffeId, FieldError> {
    SpiffeId::parse(s).map_err(|e| FieldError::new(field, format!("`{}`: {e}", truncate(s))))
}

fn audience(field: &'static str, s: &str) -> Result<Audience, FieldError> {
    Audience::parse(s).map_err(|e| FieldError::new(field, format!("audience {e}")))
}

fn scopes(field: &'static str, raw: &[String]) -> Result<BTreeSet<Scope>, FieldError> {
    if raw.is_empty() {
        return Err(FieldError::new(field, "at least one scope is required"));
    }
    if raw.len() > MAX_SCOPES_PER_REQUEST {
        return Err(FieldError::new(
            field,
            format!("at most {MAX_SCOPES_PER_REQUEST} scopes"),
        ));
    }
    raw.iter()
        .map(|s| Scope::parse(s).map_err(|e| FieldError::new(field, format!("scope `{}` {e}", truncate(s)))))
        .collect()
}

/// Parses a free-text reason (bounded, no control characters).
pub fn reason(field: &'static str, s: &str, default: &str) -> Result<String, FieldError> {
    if s.len() > MAX_REASON_LEN {
        return Err(FieldError::new(field, format!("at most {MAX_REASON_LEN} bytes")));
    }
    if s.chars().any(char::is_control) {
        return Err(FieldError::new(field, "control characters are not allowed"));
    }
    Ok(if s.is_empty() { default.to_owned() } else { s.to_owned() })
}

/// Parses a token field: present and bounded (its content is checked by verification).
pub fn token(field: &'static str, s: &str) -> Result<(), FieldError> {
    if s.is_empty() {
        return Err(FieldError::new(field, "is empty"));
    }
    if s.len() > MAX_TOKEN_LEN {
        return Err(FieldError::new(field, format!("longer than {MAX_TOKEN_LEN} bytes")));
    }
    Ok(())
}

/// Parses an optional SPIFFE ID field (empty: none).
pub fn optional_spiffe_id(field: &'static str, s: &str) -> Result<Option<SpiffeId>, FieldError> {
    if s.is_empty() {
        return Ok(None);
    }
    spiffe_id(field, s).map(Some)
}

/// Parses a feed position (empty: from now).
pub fn position(field: &'static str, s: &str) -> Result<Option<FeedPosition>, FieldError> {
    if s.is_empty() {
        return Ok(None);
    }
    if s.len() > MAX_POSITION_LEN || !s.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_:".contains(&b)) {
        return Err(FieldError::new(field, "not a feed position"));
    }
    Ok(Some(FeedPosition::new(s)))
}

fn truncate(s: &str) -> String {
    let mut end = s.len().min(64);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    let head = s.get(..end).unwrap_or_default();
    if end < s.len() {
        format!("{head}…")
    } else {
        head.to_owned()
    }
}

/// StartTaskRequest → [`StartTask`]. `generated_id` is used when the request names none.
pub fn start_task(req: pb::StartTaskRequest, generated_id: impl FnOnce() -> String) -> Result<StartTask, FieldError> {
    let id = if req.task_id.is_empty() {
        task_id("task_id", &generated_id())?
    } else {
        task_id("task_id", &req.task_id)?
    };
    if req.agents.len() > 256 {
        return Err(FieldError::new("agents", "at most 256 agents"));
    }
    let agents = req
        .agents
        .iter()
        .map(|a| spiffe_id("agents", a))
        .collect::<Result<BTreeSet<_>, _>>()?;
    if req.scope_ceiling.len() > 32 {
        return Err(FieldError::new("scope_ceiling", "at most 32 audiences"));
    }
    let mut ceiling = BTreeMap::new();
    for (aud, set) in &req.scope_ceiling {
        ceiling.insert(audience("scope_ceiling", aud)?, scopes("scope_ceiling", &set.scopes)?);
    }
    let lifetime = match req.lifetime {
        Some(pb::start_task_request::Lifetime::Deadline(t)) => TaskLifetime::Deadline(from_timestamp("deadline", &t)?),
        Some(pb::start_task_request::Lifetime::DurationSeconds(0)) => {
            return Err(FieldError::new("duration_seconds", "must be at least 1"));
        }
        Some(pb::start_task_request::Lifetime::DurationSeconds(s)) => {
            TaskLifetime::Duration(chrono::Duration::seconds(i64::from(s)))
        }
        None => return Err(FieldError::new("lifetime", "set either deadline or duration_seconds")),
    };
    if req.labels.len() > 32 {
        return Err(FieldError::new("labels", "at most 32 labels"));
    }
    let parent = if req.parent_task_id.is_empty() {
        None
    } else {
        Some(task_id("parent_task_id", &req.parent_task_id)?)
    };
    Ok(StartTask {
        tools: tool_details("authorization_details", &req.authorization_details)?,
        task_id: id,
        agents,
        ceiling: ScopeCeiling(ceiling),
        lifetime,
        labels: req.labels.into_iter().collect(),
        parent,
    })
}

/// Longest `authorization_details` JSON accepted, in bytes (8 details of
/// the largest shape stay well under it; the parse bounds each part).
const MAX_DETAILS_JSON: usize = 64 * 1024;

/// An `authorization_details` JSON array of `mcp_tool` details
/// ([`tessera_core::authz::parse_details`]); empty: none.
fn tool_details(field: &'static str, json: &str) -> Result<Vec<tessera_core::authz::ToolGrant>, FieldError> {
    if json.is_empty() {
        return Ok(Vec::new());
    }
    if json.len() > MAX_DETAILS_JSON {
        return Err(FieldError::new(field, format!("longer than {MAX_DETAILS_JSON} bytes")));
    }
    let value: serde_json::Value =
        serde_json::from_str(json).map_err(|_| FieldError::new(field, "not a JSON array"))?;
    tessera_core::authz::parse_details(&value).map_err(|e| FieldError::new(field, e.to_string()))
}

/// At most one `mcp_tool` detail (a token has one audience).
fn one_tool_detail(field: &'static str, json: &str) -> Result<Option<tessera_core::authz::ToolGrant>, FieldError> {
    let mut details = tool_details(field, json)?;
    if details.len() > 1 {
        return Err(FieldError::new(
            field,
            "at most one `mcp_tool` detail: a token has one audience",
        ));
    }
    Ok(details.pop())
}

/// Longest proof-of-possession proof accepted, in bytes.
pub const MAX_PROOF_LEN: usize = tessera_core::pop::MAX_PROOF_LEN;

/// RequestTokenRequest → [`TokenAsk`]: the request, unbound, and the
/// binding it asks for (`pop_proof`, bounded here, or `mtls_binding`),
/// which the broker resolves.
pub fn token_ask(req: &pb::RequestTokenRequest) -> Result<TokenAsk, FieldError> {
    Ok(TokenAsk {
        request: token_request(req)?,
        binding: BindingAsk::of_fields(&req.pop_proof, req.mtls_binding),
    })
}

/// RequestTokenRequest → [`TokenRequest`], unbound.
fn token_request(req: &pb::RequestTokenRequest) -> Result<TokenRequest, FieldError> {
    if req.pop_proof.len() > MAX_PROOF_LEN {
        return Err(FieldError::new(
            "pop_proof",
            format!("longer than {MAX_PROOF_LEN} bytes"),
        ));
    }
    let ttl = req
        .ttl_seconds
        .map(|s| Ttl::from_secs(u64::from(s)).map_err(|e| FieldError::new("ttl_seconds", e.to_string())))
        .transpose()?;
    Ok(TokenRequest {
        tools: one_tool_detail("authorization_details", &req.authorization_details)?,
        task_id: task_id("task_id", &req.task_id)?,
        audience: audience("audience", &req.audience)?,
        scopes: scopes("scopes", &req.scopes)?,
        ttl,
        binding: None,
    })
}

/// DelegateTokenRequest → the parent token (bounded) and a
/// [`DelegationRequest`]. Empty `scopes`: all of the parent's; empty
/// `audience` or `task_id`: the parent's.
pub fn delegation_request(
    req: &pb::DelegateTokenRequest,
) -> Result<tessera_core::delegation::DelegationRequest, FieldError> {
    token("parent_token", &req.parent_token)?;
    if !req.delegate_pop_proof.is_empty() {
        // The holder must never receive a child bound to the delegate's key.
        return Err(FieldError::new(
            "delegate_pop_proof",
            "no longer accepted: a child bound to the delegate's key is redeemed by the delegate (OfferDelegation, then RedeemDelegation)",
        ));
    }
    let ttl = req
        .ttl_seconds
        .map(|s| Ttl::from_secs(u64::from(s)).map_err(|e| FieldError::new("ttl_seconds", e.to_string())))
        .transpose()?;
    let scopes = if req.scopes.is_empty() {
        BTreeSet::new()
    } else {
        scopes("scopes", &req.scopes)?
    };
    Ok(tessera_core::delegation::DelegationRequest {
        tools: one_tool_detail("authorization_details", &req.authorization_details)?,
        delegate: spiffe_id("delegate", &req.delegate)?,
        scopes,
        ttl,
        audience: (!req.audience.is_empty())
            .then(|| audience("audience", &req.audience))
            .transpose()?,
        task_id: (!req.task_id.is_empty())
            .then(|| task_id("task_id", &req.task_id))
            .transpose()?,
    })
}

/// RedeemDelegationRequest → the proof, if any (the offer is checked by the
/// broker; here only bounded).
pub fn redeem_request(req: &pb::RedeemDelegationRequest) -> Result<Option<&str>, FieldError> {
    token("offer", &req.offer)?;
    if req.pop_proof.len() > MAX_PROOF_LEN {
        return Err(FieldError::new(
            "pop_proof",
            format!("longer than {MAX_PROOF_LEN} bytes"),
        ));
    }
    Ok((!req.pop_proof.is_empty()).then_some(req.pop_proof.as_str()))
}

/// Default and largest ListGrants page.
pub const DEFAULT_PAGE_SIZE: usize = 100;
/// Largest ListGrants page; larger requests are served this many.
pub const MAX_PAGE_SIZE: usize = tessera_store::MAX_GRANT_PAGE;
/// Longest owner name accepted in a filter, in bytes.
pub const MAX_OWNER_LEN: usize = 256;

/// Parses a required SPIFFE ID field (e.g. RevokeIdentity's `identity`).
pub fn identity(field: &'static str, s: &str) -> Result<SpiffeId, FieldError> {
    if s.is_empty() {
        return Err(FieldError::new(field, "is required (a SPIFFE ID)"));
    }
    spiffe_id(field, s)
}

/// A scope class from the wire; `None` for UNSPECIFIED (no filter).
fn class_filter(field: &'static str, raw: i32) -> Result<Option<ScopeClass>, FieldError> {
    match pb::ScopeClass::try_from(raw) {
        Ok(pb::ScopeClass::Unspecified) => Ok(None),
        Ok(pb::ScopeClass::Discover) => Ok(Some(ScopeClass::Discover)),
        Ok(pb::ScopeClass::Read) => Ok(Some(ScopeClass::Read)),
        Ok(pb::ScopeClass::Write) => Ok(Some(ScopeClass::Write)),
        Ok(pb::ScopeClass::Admin) => Ok(Some(ScopeClass::Admin)),
        Err(_) => Err(FieldError::new(field, format!("unknown scope class {raw}"))),
    }
}

/// ListGrantsRequest → [`GrantQuery`]. Empty fields do not filter.
pub fn grant_query(req: &pb::ListGrantsRequest) -> Result<GrantQuery, FieldError> {
    let optional = |s: &str| (!s.is_empty()).then(|| s.to_owned());
    let task_id = optional(&req.task_id).map(|t| task_id("task_id", &t)).transpose()?;
    let subjects = optional(&req.subject)
        .map(|s| spiffe_id("subject", &s).map(|id| BTreeSet::from([id])))
        .transpose()?;
    let audience = optional(&req.audience).map(|a| audience("audience", &a)).transpose()?;
    let owner = optional(&req.owner);
    if let Some(owner) = &owner
        && (owner.len() > MAX_OWNER_LEN || owner.chars().any(char::is_control))
    {
        return Err(FieldError::new(
            "owner",
            format!("at most {MAX_OWNER_LEN} bytes, no control characters"),
        ));
    }
    let expiring_before = req
        .expiring_before
        .as_ref()
        .map(|t| from_timestamp("expiring_before", t))
        .transpose()?;
    let page_token = optional(&req.page_token);
    if let Some(token) = &page_token
        && GrantId::parse(token).is_err()
    {
        return Err(FieldError::new("page_token", "not a page token from ListGrants"));
    }
    let page_size = match usize::try_from(req.page_size).unwrap_or(MAX_PAGE_SIZE) {
        0 => DEFAULT_PAGE_SIZE,
        n => n.min(MAX_PAGE_SIZE),
    };
    Ok(GrantQuery {
        filter: GrantFilter {
            task_id,
            subjects,
            audience,
            class: class_filter("class", req.class)?,
            expiring_before,
            high_impact_only: req.high_impact_only,
        },
        owner,
        page_token,
        page_size,
    })
}

/// A scope class for the wire.
pub fn class(c: ScopeClass) -> pb::ScopeClass {
    match c {
        ScopeClass::Discover => pb::ScopeClass::Discover,
        ScopeClass::Read => pb::ScopeClass::Read,
        ScopeClass::Write => pb::ScopeClass::Write,
        ScopeClass::Admin => pb::ScopeClass::Admin,
    }
}

/// A task for the wire.
pub fn task(t: &Task, now: DateTime<Utc>, live_grants: u64) -> pb::Task {
    let state = match t.state_at(now) {
        TaskState::Active => pb::TaskState::Active,
        TaskState::Completed => pb::TaskState::Completed,
        TaskState::Revoked => pb::TaskState::Revoked,
        TaskState::Expired => pb::TaskState::Expired,
    };
    pb::Task {
        authorization_details: if t.tools.is_empty() {
            String::new()
        } else {
            serde_json::Value::Array(t.tools.iter().map(tessera_core::authz::ToolGrant::to_value).collect()).to_string()
        },
        task_id: t.id.to_string(),
        orchestrator: t.orchestrator.to_string(),
        agents: t.agents.iter().map(ToString::to_string).collect(),
        scope_ceiling: t
            .ceiling
            .0
            .iter()
            .map(|(aud, scopes)| {
                (
                    aud.to_string(),
                    pb::ScopeSet {
                        scopes: scopes.iter().map(ToString::to_string).collect(),
                    },
                )
            })
            .collect(),
        deadline: Some(timestamp(t.deadline)),
        labels: t.labels.clone().into_iter().collect(),
        parent_task_id: t.parent.as_ref().map(ToString::to_string).unwrap_or_default(),
        state: state.into(),
        created_at: Some(timestamp(t.created_at)),
        ended_at: t.ended_at.map(timestamp),
        live_grants,
    }
}

/// A grant for the wire.
pub fn grant(g: &Grant, now: DateTime<Utc>) -> pb::Grant {
    let state = match g.state_at(now) {
        GrantState::Active => pb::GrantState::Active,
        GrantState::Revoked => pb::GrantState::Revoked,
        GrantState::Expired => pb::GrantState::Expired,
    };
    pb::Grant {
        grant_id: g.id.to_string(),
        task_id: g.task_id.to_string(),
        subject: g.subject.to_string(),
        audience: g.audience.to_string(),
        scopes: g.scopes.iter().map(ToString::to_string).collect(),
        class: class(g.class).into(),
        issued_at: Some(timestamp(g.issued_at)),
        expires_at: Some(timestamp(g.expires_at)),
        parent_grant_id: g.parent.as_ref().map(ToString::to_string).unwrap_or_default(),
        state: state.into(),
        revoked_at: g.revoked_at.map(timestamp),
        revocation_reason: g.revocation_reason.clone().unwrap_or_default(),
        key_id: g.key_id.clone(),
        high_impact: g.impact.high_impact,
        blast_radius: g.impact.blast_radius,
        approval_id: g.impact.approval_id.clone().unwrap_or_default(),
    }
}

/// An issued token for the wire.
pub fn issued(i: Issued) -> pb::IssuedToken {
    let g = &i.grant;
    pb::IssuedToken {
        access_token: i.token,
        token_type: i.token_type.into(),
        grant_id: g.id.to_string(),
        task_id: g.task_id.to_string(),
        audience: g.audience.to_string(),
        scopes: g.scopes.iter().map(ToString::to_string).collect(),
        class: class(g.class).into(),
        issued_at: Some(timestamp(g.issued_at)),
        expires_at: Some(timestamp(g.expires_at)),
        expires_in: u32::try_from((g.expires_at - g.issued_at).num_seconds()).unwrap_or(0),
        blast_radius: g.impact.blast_radius,
        approval_id: g.impact.approval_id.clone().unwrap_or_default(),
    }
}

/// A delegation offer for the wire.
pub fn offer(o: crate::broker::Offer) -> pb::DelegationOffer {
    pb::DelegationOffer {
        offer: o.offer,
        delegate: o.delegate.to_string(),
        expires_at: Some(timestamp(o.expires_at)),
    }
}

/// A JWK for the wire.
pub fn jwk(k: &Jwk) -> pb::Jwk {
    pb::Jwk {
        kty: k.kty.clone(),
        crv: k.crv.clone(),
        x: k.x.clone(),
        y: k.y.clone().unwrap_or_default(),
        kid: k.kid.clone(),
        alg: k.alg.as_jose().to_owned(),
        r#use: k.key_use.clone(),
    }
}

/// GetJwks: the keys, as protobuf and as a JWK Set, and where each stands.
pub fn published_keys(published: &crate::broker::PublishedKeys) -> pb::GetJwksResponse {
    use crate::broker::KeyState;
    pb::GetJwksResponse {
        status: published
            .status
            .iter()
            .map(|k| pb::KeyStatus {
                kid: k.kid.clone(),
                state: match k.state {
                    KeyState::Current => pb::KeyState::Current,
                    KeyState::Next => pb::KeyState::Next,
                    KeyState::Active => pb::KeyState::Active,
                    KeyState::Retiring => pb::KeyState::Retiring,
                }
                .into(),
                published_at: Some(timestamp(k.published_at)),
                remove_at: k.remove_at.map(timestamp),
            })
            .collect(),
        keys: published.jwks.keys.iter().map(jwk).collect(),
        jwks_json: published.jwks.to_json(),
    }
}

/// Introspection of a live token; `None` gives `active: false` and nothing else.
pub fn introspection(claims: Option<AccessClaims>) -> pb::IntrospectResponse {
    let Some(c) = claims else {
        return pb::IntrospectResponse {
            active: false,
            ..Default::default()
        };
    };
    pb::IntrospectResponse {
        active: true,
        sub: c.sub,
        aud: c.aud,
        scope: c.scope,
        task_id: c.task_id,
        jti: c.jti,
        client_id: c.client_id,
        iss: c.iss,
        iat: DateTime::from_timestamp(c.iat, 0).map(timestamp),
        exp: DateTime::from_timestamp(c.exp, 0).map(timestamp),
        token_type: "Bearer".into(),
    }
}

/// A revocation event for the wire.
pub fn revocation_event(e: &FeedEvent) -> pb::RevocationEvent {
    let Revocation {
        target,
        revoked_at,
        reason,
        not_after,
    } = &e.revocation;
    pb::RevocationEvent {
        position: e.position.to_string(),
        revoked_at: Some(timestamp(*revoked_at)),
        reason: reason.clone(),
        target: Some(match target {
            RevocationTarget::Grant(id) => pb::revocation_event::Target::GrantId(id.to_string()),
            RevocationTarget::Task(id) => pb::revocation_event::Target::TaskId(id.to_string()),
            RevocationTarget::Key(kid) => pb::revocation_event::Target::Kid(kid.clone()),
        }),
        not_after: Some(timestamp(*not_after)),
    }
}

/// BlastRadiusRequest → [`BlastTarget`]: exactly one of identity, owner or task.
pub fn blast_target(req: &pb::BlastRadiusRequest) -> Result<BlastTarget, FieldError> {
    use pb::blast_radius_request::Target;
    match &req.target {
        None => Err(FieldError::new(
            "target",
            "is required: one of identity, owner or task_id",
        )),
        Some(Target::Identity(id)) => Ok(BlastTarget::Identity(identity("identity", id)?)),
        Some(Target::Owner(owner)) => {
            if owner.is_empty() {
                return Err(FieldError::new("owner", "is required (an owner as registered)"));
            }
            if owner.len() > MAX_OWNER_LEN || owner.chars().any(char::is_control) {
                return Err(FieldError::new(
                    "owner",
                    format!("at most {MAX_OWNER_LEN} bytes, no control characters"),
                ));
            }
            Ok(BlastTarget::Owner(owner.clone()))
        }
        Some(Target::TaskId(id)) => Ok(BlastTarget::Task(task_id("task_id", id)?)),
    }
}

/// A blast radius for the wire: audiences and owners sorted, classes in order of power.
pub fn blast_radius(r: &BlastRadius) -> pb::BlastRadiusResponse {
    pb::BlastRadiusResponse {
        live_grants: r.live_grants,
        audiences: r.audiences.iter().map(ToString::to_string).collect(),
        scopes_by_class: r
            .scopes_by_class
            .iter()
            .map(|(c, n)| pb::ScopeClassCount {
                class: class(*c).into(),
                scopes: *n,
            })
            .collect(),
        high_impact_grants: r.high_impact_grants,
        longest_remaining_ttl_seconds: u32::try_from(r.longest_remaining_ttl_secs).unwrap_or(u32::MAX),
        max_delegation_depth: r.max_delegation_depth,
        delegation_fan_out: r.delegation_fan_out,
        owners: r.owners.iter().cloned().collect(),
        total_score: r.total_score,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> pb::RequestTokenRequest {
        pb::RequestTokenRequest {
            task_id: "t1".into(),
            audience: "crm".into(),
            scopes: vec!["a.read".into()],
            ttl_seconds: Some(60),
            ..Default::default()
        }
    }

    #[track_caller]
    fn check(req: pb::RequestTokenRequest, field: &str) {
        let err = token_request(&req).unwrap_err();
        assert_eq!(err.field, field, "{err}");
    }

    #[test]
    fn the_binding_asked_for_comes_from_pop_proof_and_mtls_binding() {
        let ask = |pop_proof: &str, mtls_binding| {
            token_ask(&pb::RequestTokenRequest {
                pop_proof: pop_proof.into(),
                mtls_binding,
                ..request()
            })
            .unwrap()
            .binding
        };
        assert_eq!(ask("", false), BindingAsk::Bearer);
        assert_eq!(ask("p.r.f", false), BindingAsk::Proof("p.r.f".into()));
        assert_eq!(ask("", true), BindingAsk::ClientCertificate);
        assert_eq!(ask("p.r.f", true), BindingAsk::ProofAndCertificate);
    }

    #[test]
    fn token_request_fields_are_named() {
        assert!(token_request(&request()).is_ok());
        check(
            pb::RequestTokenRequest {
                ttl_seconds: Some(0),
                ..request()
            },
            "ttl_seconds",
        );
        check(
            pb::RequestTokenRequest {
                task_id: String::new(),
                ..request()
            },
            "task_id",
        );
        check(
            pb::RequestTokenRequest {
                task_id: "x".repeat(129),
                ..request()
            },
            "task_id",
        );
        check(
            pb::RequestTokenRequest {
                audience: String::new(),
                ..request()
            },
            "audience",
        );
        check(
            pb::RequestTokenRequest {
                audience: "a b".into(),
                ..request()
            },
            "audience",
        );
        check(
            pb::RequestTokenRequest {
                scopes: vec![],
                ..request()
            },
            "scopes",
        );
        check(
            pb::RequestTokenRequest {
                scopes: vec![String::new()],
                ..request()
            },
            "scopes",
        );
        check(
            pb::RequestTokenRequest {
                scopes: vec!["s".into(); 65],
                ..request()
            },
            "scopes",
        );
        check(
            pb::RequestTokenRequest {
                pop_proof: "x".repeat(MAX_PROOF_LEN + 1),
                ..request()
            },
            "pop_proof",
        );
    }

    #[test]
    fn long_inputs_are_truncated_in_messages() {
        let err = spiffe_id("agents", &"x".repeat(10_000)).unwrap_err();
        assert!(err.message.len() < 200, "{}", err.message);
        assert_eq!(truncate("ééé"), "ééé");
    }

    #[test]
    fn positions_and_reasons_are_bounded() {
        assert_eq!(position("after", "").unwrap(), None);
        assert!(position("after", "12-3").unwrap().is_some());
        assert!(position("after", "Ab_c-9:1795318823000-0").unwrap().is_some());
        assert!(position("after", &"1".repeat(65)).is_err());
        assert!(position("after", "1;DROP").is_err());
        assert_eq!(reason("reason", "", "default").unwrap(), "default");
        assert!(reason("reason", "a\nb", "d").is_err());
        assert!(reason("reason", &"a".repeat(1025), "d").is_err());
    }

    #[test]
    fn blast_target_needs_exactly_one_valid_target() {
        use pb::blast_radius_request::Target;
        let req = |t: Option<Target>| pb::BlastRadiusRequest { target: t };
        assert_eq!(blast_target(&req(None)).unwrap_err().field, "target");
        assert_eq!(
            blast_target(&req(Some(Target::Identity("nope".into()))))
                .unwrap_err()
                .field,
            "identity"
        );
        assert_eq!(
            blast_target(&req(Some(Target::Owner(String::new()))))
                .unwrap_err()
                .field,
            "owner"
        );
        assert_eq!(
            blast_target(&req(Some(Target::TaskId("a b".into()))))
                .unwrap_err()
                .field,
            "task_id"
        );
        assert_eq!(
            blast_target(&req(Some(Target::Owner("team".into())))).unwrap(),
            BlastTarget::Owner("team".into())
        );
        assert!(matches!(
            blast_target(&req(Some(Target::Identity("spiffe://td/a".into())))).unwrap(),
            BlastTarget::Identity(_)
        ));
    }

    #[test]
    fn blast_radius_goes_to_the_wire_in_class_order() {
        let r = BlastRadius {
            live_grants: 2,
            audiences: BTreeSet::from([audience("a", "crm").unwrap()]),
            scopes_by_class: BTreeMap::from([(ScopeClass::Write, 1), (ScopeClass::Read, 3)]),
            longest_remaining_ttl_secs: 90,
            owners: BTreeSet::from(["team".to_owned()]),
            ..BlastRadius::default()
        };
        let wire = blast_radius(&r);
        assert_eq!(wire.live_grants, 2);
        assert_eq!(wire.audiences, ["crm"]);
        assert_eq!(
            wire.scopes_by_class,
            [
                pb::ScopeClassCount {
                    class: pb::ScopeClass::Read.into(),
                    scopes: 3
                },
                pb::ScopeClassCount {
                    class: pb::ScopeClass::Write.into(),
                    scopes: 1
                },
            ]
        );
        assert_eq!(wire.longest_remaining_ttl_seconds, 90);
        assert_eq!(wire.owners, ["team"]);
    }
}

//! [`ApprovalStore`] on Redis, shared by every broker replica.
//!
//! | key | type | holds | expires |
//! |---|---|---|---|
//! | `P:approval:<id>` | hash | `json` (the approval as opened, immutable), `state`, `expires` (ms), `requester`, `decision` (JSON), `grant` | `PEXPIREAT` expiry + redeem grace + retention |
//! | `P:approvals` | zset | approval ids scored by expiry (ms), for listing; pruned lazily | `PEXPIREAT` the latest expiry |
//! | `P:approvals-of:<spiffe id>` | zset | the same, per requester, for its pending cap | `PEXPIREAT` the latest expiry |
//!
//! Each transition is one Lua script on the approval's one key, so two
//! replicas racing to redeem the same approval cannot both win.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use redis::{Script, Value};
use tessera_core::approval::{Approval, ApprovalDecision, ApprovalId, ApprovalState, REDEEM_GRACE};
use tessera_core::grant::GrantId;

use super::{RedisStore, conn, ms};
use crate::approval::{
    APPROVAL_RETENTION, ApprovalPage, ApprovalStore, MAX_APPROVAL_PAGE, MAX_PENDING_APPROVALS,
    MAX_PENDING_PER_REQUESTER, Transition,
};
use crate::error::StoreError;

/// Creates a pending approval. KEYS[1] = approval hash.
/// ARGV: json, expires_ms, requester, pexpireat_ms. Returns 1, or 0 if the id is taken.
const CREATE: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'json', ARGV[1], 'state', 'pending', 'expires', ARGV[2], 'requester', ARGV[3])
redis.call('PEXPIREAT', KEYS[1], ARGV[4])
return 1
"#;

/// pending → approved|denied. KEYS[1] = approval hash.
/// ARGV: now_ms, new state, decision JSON, approver.
/// Returns `ok`, `missing`, `self`, `expired` or the current state.
const DECIDE: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 0 then return 'missing' end
local state = redis.call('HGET', KEYS[1], 'state')
if state ~= 'pending' then return state end
if tonumber(ARGV[1]) >= tonumber(redis.call('HGET', KEYS[1], 'expires')) then return 'expired' end
if redis.call('HGET', KEYS[1], 'requester') == ARGV[4] then return 'self' end
redis.call('HSET', KEYS[1], 'state', ARGV[2], 'decision', ARGV[3])
return 'ok'
"#;

/// approved → redeemed. KEYS[1] = approval hash. ARGV: now_ms, grant id, grace_ms.
/// Returns `ok`, `missing`, `expired` or the current state.
const REDEEM: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 0 then return 'missing' end
local state = redis.call('HGET', KEYS[1], 'state')
if state ~= 'approved' then return state end
if tonumber(ARGV[1]) >= tonumber(redis.call('HGET', KEYS[1], 'expires')) + tonumber(ARGV[3]) then return 'expired' end
redis.call('HSET', KEYS[1], 'state', 'redeemed', 'grant', ARGV[2])
return 'ok'
"#;

fn script(which: &'static str) -> &'static Script {
    use std::sync::OnceLock;
    static CREATE_S: OnceLock<Script> = OnceLock::new();
    static DECIDE_S: OnceLock<Script> = OnceLock::new();
    static REDEEM_S: OnceLock<Script> = OnceLock::new();
    match which {
        "decide" => DECIDE_S.get_or_init(|| Script::new(DECIDE)),
        "redeem" => REDEEM_S.get_or_init(|| Script::new(REDEEM)),
        _ => CREATE_S.get_or_init(|| Script::new(CREATE)),
    }
}

fn corrupt(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("approval {what}: {e}"))
}

impl RedisStore {
    fn approval_key(&self, id: &ApprovalId) -> String {
        format!("{}:approval:{id}", self.config.key_prefix)
    }

    fn approvals_index(&self) -> String {
        format!("{}:approvals", self.config.key_prefix)
    }

    fn requester_index(&self, requester: &tessera_core::identity::SpiffeId) -> String {
        format!("{}:approvals-of:{requester}", self.config.key_prefix)
    }

    /// Ids in an index whose expiry is still ahead (an upper bound of the pending ones).
    async fn count_live(&self, index: &str, now: DateTime<Utc>) -> Result<usize, StoreError> {
        let mut conn = self.conn();
        self.bounded(
            redis::cmd("ZCOUNT")
                .arg(index)
                .arg(format!("({}", ms(now)))
                .arg("+inf")
                .query_async(&mut conn),
        )
        .await
    }

    /// The approval from its hash: the record as opened, then its mutable fields.
    async fn read_approval(&self, id: &ApprovalId) -> Result<Option<Approval>, StoreError> {
        let mut conn = self.conn();
        let value: Value = self
            .bounded(redis::cmd("HGETALL").arg(self.approval_key(id)).query_async(&mut conn))
            .await?;
        let fields = conn::map_of(value);
        let field = |name: &str| fields.get(name).and_then(conn::string_of);
        let Some(json) = field("json") else {
            return Ok(None);
        };
        let mut approval: Approval = serde_json::from_str(&json).map_err(|e| corrupt("record", e))?;
        if &approval.id != id {
            return Err(corrupt("record", "id mismatch"));
        }
        let state = field("state").unwrap_or_default();
        approval.state = ApprovalState::parse(&state).ok_or_else(|| corrupt("state", &state))?;
        approval.decision = field("decision")
            .map(|d| serde_json::from_str::<ApprovalDecision>(&d))
            .transpose()
            .map_err(|e| corrupt("decision", e))?;
        approval.grant_id = field("grant")
            .map(|g| GrantId::parse(&g))
            .transpose()
            .map_err(|e| corrupt("grant", e))?;
        Ok(Some(approval))
    }

    /// Reads the approval after a transition script answered `outcome`.
    async fn transition(&self, id: &ApprovalId, outcome: &str) -> Result<Option<Transition>, StoreError> {
        if outcome == "missing" {
            return Ok(None);
        }
        let Some(approval) = self.read_approval(id).await? else {
            // Expired between the script and the read: it existed, and it is over.
            return Ok(None);
        };
        Ok(Some(if outcome == "ok" {
            Transition::Applied(approval)
        } else {
            Transition::Refused(approval)
        }))
    }
}

#[async_trait]
impl ApprovalStore for RedisStore {
    async fn create_approval(&self, approval: &Approval, now: DateTime<Utc>) -> Result<(), StoreError> {
        let index = self.approvals_index();
        let mine = self.requester_index(&approval.request.requester);
        // Counted by expiry, so decided ones still count until they expire:
        // a bound, never an excuse to exceed it.
        if self.count_live(&index, now).await? >= MAX_PENDING_APPROVALS {
            return Err(StoreError::Full("pending approvals"));
        }
        if self.count_live(&mine, now).await? >= MAX_PENDING_PER_REQUESTER {
            return Err(StoreError::Full("pending approvals of one requester"));
        }
        let mut conn = self.conn();
        // INVARIANT: listed before it exists, so ListApprovals sees every
        // pending approval; an entry whose creation then failed is skipped.
        self.index_add(&index, approval.id.as_str(), ms(approval.expires_at), now)
            .await?;
        self.index_add(&mine, approval.id.as_str(), ms(approval.expires_at), now)
            .await?;
        let mut record = approval.clone();
        record.state = ApprovalState::Pending;
        record.decision = None;
        record.grant_id = None;
        let json = serde_json::to_string(&record).map_err(|e| corrupt("record", e))?;
        let forget = approval.expires_at + REDEEM_GRACE + APPROVAL_RETENTION;
        let created: i64 = self
            .bounded(
                script("create")
                    .key(self.approval_key(&approval.id))
                    .arg(json)
                    .arg(ms(approval.expires_at))
                    .arg(approval.request.requester.as_str())
                    .arg(ms(forget))
                    .invoke_async(&mut conn),
            )
            .await?;
        if created == 0 {
            return Err(StoreError::ApprovalExists);
        }
        Ok(())
    }

    async fn approval(&self, id: &ApprovalId) -> Result<Option<Approval>, StoreError> {
        self.read_approval(id).await
    }

    async fn decide_approval(
        &self,
        id: &ApprovalId,
        decision: &ApprovalDecision,
        now: DateTime<Utc>,
    ) -> Result<Option<Transition>, StoreError> {
        let json = serde_json::to_string(decision).map_err(|e| corrupt("decision", e))?;
        let state = if decision.approve {
            ApprovalState::Approved
        } else {
            ApprovalState::Denied
        };
        let mut conn = self.conn();
        let outcome: String = self
            .bounded(
                script("decide")
                    .key(self.approval_key(id))
                    .arg(ms(now))
                    .arg(state.as_str())
                    .arg(json)
                    .arg(decision.approver.as_str())
                    .invoke_async(&mut conn),
            )
            .await?;
        self.transition(id, &outcome).await
    }

    async fn redeem_approval(
        &self,
        id: &ApprovalId,
        grant: &GrantId,
        now: DateTime<Utc>,
    ) -> Result<Option<Transition>, StoreError> {
        let mut conn = self.conn();
        let outcome: String = self
            .bounded(
                script("redeem")
                    .key(self.approval_key(id))
                    .arg(ms(now))
                    .arg(grant.as_str())
                    .arg(REDEEM_GRACE.num_milliseconds())
                    .invoke_async(&mut conn),
            )
            .await?;
        self.transition(id, &outcome).await
    }

    async fn list_pending_approvals(
        &self,
        after: Option<&str>,
        limit: usize,
        now: DateTime<Utc>,
    ) -> Result<ApprovalPage, StoreError> {
        let after = after
            .map(|a| ApprovalId::parse(a).map_err(|_| StoreError::BadCursor(a.to_owned())))
            .transpose()?;
        let limit = limit.clamp(1, MAX_APPROVAL_PAGE);
        let mut ids: Vec<ApprovalId> = self
            .index_live(&self.approvals_index(), now)
            .await?
            .into_iter()
            .filter_map(|id| ApprovalId::parse(&id).ok())
            .filter(|id| after.as_ref().is_none_or(|after| id > after))
            .collect();
        ids.sort();
        ids.dedup();
        let mut approvals = Vec::new();
        let mut position = 0;
        'chunks: for chunk in ids.chunks(limit) {
            let read: Vec<Option<Approval>> =
                futures::future::try_join_all(chunk.iter().map(|id| self.read_approval(id))).await?;
            for approval in read {
                position += 1;
                // Ids whose record is gone (expired, or a failed creation) are skipped.
                if let Some(a) = approval
                    && a.state_at(now) == ApprovalState::Pending
                {
                    approvals.push(a);
                    if approvals.len() == limit {
                        break 'chunks;
                    }
                }
            }
        }
        let next = (approvals.len() == limit && position < ids.len())
            .then(|| approvals.last().map(|a| a.id.to_string()))
            .flatten();
        Ok(ApprovalPage { approvals, next })
    }
}

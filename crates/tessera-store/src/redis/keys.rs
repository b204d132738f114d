//! The Redis key layout. Everything of one task tree (a root task, its
//! descendant tasks, their grants and delegation sets) lives under the root
//! task's Cluster hash tag, so ending a task or revoking a grant tree is one
//! server-side script on one slot.
//!
//! | key | type | holds | expires |
//! |---|---|---|---|
//! | `P:epoch` | string | random id written once per empty Redis | never |
//! | `P:task-root:<task>` | string | the task tree's hash tag (routing) | task end + retention |
//! | `P:{<root>}:task:<task>` | hash | `json` (immutable task), `state`, `deadline`, `ended`, `reason` | task end + retention |
//! | `P:{<root>}:children:<task>` | set | child task ids | with the task |
//! | `P:{<root>}:grants:<task>` | zset | live grant ids, scored by expiry (ms); expired members pruned lazily (by the grant script, which drops their records from `G` with them) | with the task |
//! | `P:{<root>}:G` | hash | grant id → record (layout 2, `record.rs`) of every grant of the tree not revoked; expired ones pruned lazily | `PEXPIREAT` the latest grant expiry |
//! | `P:{<root>}:grant:<grant>` | string | layout 1 only (written before the `G` hash, still read and revoked): grant JSON | grant expiry (`PXAT`) |
//! | `P:{<root>}:revoked:<grant>` | string | `{"at":ms,"reason":...,"g":record}` for a revoked grant (`g`: its record, moved out of `G`; absent for layout 1) | grant expiry |
//! | `P:{<root>}:delegated:<grant>` | set | grants delegated from this one | grant expiry |
//! | `P:subject:<spiffe id>` | zset | grant ids of that subject, scored by expiry (ms); stale members pruned lazily; written by the grant script itself outside Cluster | `PEXPIREAT` the latest expiry (the grant script: rounded up to the minute) |
//! | `P:tasks` | zset | task ids scored by deadline (ms), for listing; the tag comes from `P:task-root:<task>`; pruned lazily | `PEXPIREAT` the latest deadline |
//! | `P:disabled` | hash | SPIFFE ID → `{reason, at}` of subjects an operator disabled; read by the grant script outside Cluster | never |
//! | `P:quarantine` | hash | SPIFFE ID → JSON quarantine | entries pruned lazily |
//! | `P:revocations` | stream | one entry per revocation, field `r` = JSON | trimmed by age and length |
//! | `P:{keys}` | hash | kid → published key JSON | retired keys pruned lazily |
//! | `P:{keys}:withdrawn` | set | kids withdrawn by break-glass; publishing them is refused | never |
//! | `P:durable:{<tag>}` | string | `1`, written before each durable write's `WAIT`, on that write's slot | 10 s |

//!
//! Memory: one live grant costs its field in `G` (no key, no expiry entry of
//! its own) and one member in each of two indexes — under 512 bytes with
//! realistic sizes (`tests/e2e/redis_store.rs`, the bench's scale part).

use tessera_core::identity::SpiffeId;
use tessera_core::task::TaskId;

/// Builds keys under one prefix.
#[derive(Debug, Clone)]
pub(crate) struct Keys {
    prefix: String,
}

impl Keys {
    pub(crate) fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.to_owned(),
        }
    }

    /// The marker a durable write on `key` sets before its `WAIT`: on the
    /// same Cluster slot as `key` (its hash tag, or all of it when it has none).
    pub(crate) fn durable_mark(&self, key: &[u8]) -> String {
        let key = String::from_utf8_lossy(key);
        // Redis's rule: the tag is what lies between the first `{` and the
        // first `}` after it, if that is not empty.
        let tag = key
            .find('{')
            .and_then(|open| {
                let rest = key.get(open + 1..)?;
                let close = rest.find('}')?;
                (close > 0).then(|| rest.get(..close)).flatten()
            })
            .unwrap_or(&key);
        format!("{}:durable:{{{tag}}}", self.prefix)
    }

    pub(crate) fn epoch(&self) -> String {
        format!("{}:epoch", self.prefix)
    }

    pub(crate) fn task_root(&self, task: &TaskId) -> String {
        format!("{}:task-root:{task}", self.prefix)
    }

    /// `P:{root}:` — the base every key of a task tree starts with (scripts append to it).
    pub(crate) fn base(&self, root: &str) -> String {
        format!("{}:{{{root}}}:", self.prefix)
    }

    pub(crate) fn task(&self, root: &str, task: &str) -> String {
        format!("{}task:{task}", self.base(root))
    }

    pub(crate) fn grant(&self, root: &str, grant: &str) -> String {
        format!("{}grant:{grant}", self.base(root))
    }

    /// The grants of one subject (RevokeIdentity, ListGrants by subject).
    pub(crate) fn subject(&self, subject: &SpiffeId) -> String {
        format!("{}:subject:{subject}", self.prefix)
    }

    /// Hash of subjects an operator disabled: SPIFFE ID → JSON {reason, at}.
    pub(crate) fn disabled(&self) -> String {
        format!("{}:disabled", self.prefix)
    }

    /// Hash of anomaly quarantines: SPIFFE ID → JSON `Quarantine`.
    pub(crate) fn quarantine(&self) -> String {
        format!("{}:quarantine", self.prefix)
    }

    /// Every task not past its deadline (ListGrants without a task or subject).
    pub(crate) fn tasks(&self) -> String {
        format!("{}:tasks", self.prefix)
    }

    pub(crate) fn feed(&self) -> String {
        format!("{}:revocations", self.prefix)
    }

    /// The JWKS hash; hash-tagged so the withdrawn set shares its slot.
    pub(crate) fn keys(&self) -> String {
        format!("{}:{{keys}}", self.prefix)
    }

    /// Kids withdrawn by break-glass: never published again.
    pub(crate) fn withdrawn(&self) -> String {
        format!("{}:{{keys}}:withdrawn", self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_task_tree_shares_one_hash_tag() {
        let k = Keys::new("tessera");
        assert_eq!(k.task("root", "child"), "tessera:{root}:task:child");
        assert_eq!(k.grant("root", "g1"), "tessera:{root}:grant:g1");
        assert_eq!(k.base("root"), "tessera:{root}:");
        assert_eq!(k.feed(), "tessera:revocations");
    }
}

//! Blast radius: what an identity, owner or task could reach right now,
//! computed from its live grants, and the score of one grant at mint
//! ([`grant_score`]). Pure: the caller gathers the grants.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use chrono::{DateTime, Utc};

use crate::grant::{Grant, GrantId};
use crate::identity::SpiffeId;
use crate::task::{Audience, ScopeClass, TaskId};

/// Most live grants one blast-radius computation covers; a target with more
/// is refused rather than summarised from a partial view.
pub const MAX_BLAST_GRANTS: usize = 100_000;

/// Whose blast radius: one identity, every identity of a registry owner, or
/// one task (its own grants, not those of its child tasks).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BlastTarget {
    /// Grants issued to this identity.
    Identity(SpiffeId),
    /// Grants issued to any identity registered with this owner.
    Owner(String),
    /// Grants issued in this task.
    Task(TaskId),
}

/// What a set of live grants reaches.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BlastRadius {
    /// Live grants counted.
    pub live_grants: u64,
    /// The distinct audiences they are for.
    pub audiences: BTreeSet<Audience>,
    /// Scope entries per class, summed over the live grants (a grant with
    /// three `read` scopes adds three to `read`). Classes with none are absent.
    pub scopes_by_class: BTreeMap<ScopeClass, u64>,
    /// Live grants carrying a high-impact scope.
    pub high_impact_grants: u64,
    /// Seconds until the last of the live grants expires (0 when none).
    pub longest_remaining_ttl_secs: u64,
    /// Longest delegation chain among the live grants: the number of parent
    /// hops from a grant up through parents that are themselves among the
    /// given grants (0 when nothing was delegated within them).
    pub max_delegation_depth: u32,
    /// Live grants that were delegated from another grant (have a parent).
    pub delegation_fan_out: u64,
    /// The distinct registry owners of the grants' subjects (subjects with no
    /// known owner are left out).
    pub owners: BTreeSet<String>,
    /// The sum of the live grants' scores ([`grant_score`], as recorded at mint).
    pub total_score: u64,
}

/// What one grant's blast-radius score is computed from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GrantExposure {
    /// The scopes' one class.
    pub class: ScopeClass,
    /// How many scopes the token carries.
    pub scopes: u32,
    /// How many of them are high-impact.
    pub high_impact_scopes: u32,
    /// The token's lifetime in seconds.
    pub ttl_secs: u32,
    /// How many delegation hops the token may still be passed down (0: none).
    pub delegation_allowance: u32,
}

/// The weight of a scope class: how much one scope of it can do.
pub fn class_weight(class: ScopeClass) -> u32 {
    match class {
        ScopeClass::Discover => 1,
        ScopeClass::Read => 2,
        ScopeClass::Write => 5,
        ScopeClass::Admin => 10,
    }
}

/// Extra weight of a high-impact scope over an ordinary one.
pub const HIGH_IMPACT_WEIGHT: u32 = 4;

/// A token's lifetime counts in started periods of this many seconds.
pub const TTL_UNIT_SECS: u32 = 300;

/// The blast-radius score of one grant: how much harm its token could do if
/// it leaked, as a number a policy or `[tokens] max_blast_radius` can cap.
///
/// ```text
/// score = class weight                      (discover 1, read 2, write 5, admin 10)
///       × (scopes + 4 × high-impact scopes)
///       × ⌈ttl / 300 s⌉                     (started 5-minute periods, at least 1)
///       × (1 + delegation allowance)        (hops the token may still be delegated)
/// ```
///
/// Monotonic in every input: more scopes, a higher class, a high-impact
/// scope, a longer lifetime or more delegation never lowers it. Saturates at
/// `u32::MAX` instead of overflowing.
pub fn grant_score(e: &GrantExposure) -> u32 {
    let scopes = e
        .scopes
        .saturating_add(HIGH_IMPACT_WEIGHT.saturating_mul(e.high_impact_scopes));
    let periods = e.ttl_secs.div_ceil(TTL_UNIT_SECS).max(1);
    class_weight(e.class)
        .saturating_mul(scopes)
        .saturating_mul(periods)
        .saturating_mul(e.delegation_allowance.saturating_add(1))
}

/// The parent of each grant known beyond the target's own: their ancestors,
/// held by other identities or tasks, as the caller loaded them (id → its
/// parent, `None` for a root).
pub type Ancestors = HashMap<GrantId, Option<GrantId>>;

/// The blast radius of `grants`, counting only those live at `now`.
/// `owner_of` names the registry owner of a subject, if it has one.
/// A grant's delegation depth is the length of its parent chain: through
/// `grants` and `ancestors` (live or not: the chain is a fact of how the
/// grant was minted), a parent found in neither still counting as one hop.
pub fn blast_radius(
    grants: &[Grant],
    ancestors: &Ancestors,
    owner_of: impl Fn(&SpiffeId) -> Option<String>,
    now: DateTime<Utc>,
) -> BlastRadius {
    let parents: HashMap<&GrantId, Option<&GrantId>> = grants.iter().map(|g| (&g.id, g.parent.as_ref())).collect();
    let live: Vec<&Grant> = grants.iter().filter(|g| g.is_live_at(now)).collect();
    let mut radius = BlastRadius {
        live_grants: u64::try_from(live.len()).unwrap_or(u64::MAX),
        ..BlastRadius::default()
    };
    let mut subjects = BTreeSet::new();
    for grant in &live {
        radius.audiences.insert(grant.audience.clone());
        let scopes = u64::try_from(grant.scopes.len()).unwrap_or(u64::MAX);
        *radius.scopes_by_class.entry(grant.class).or_default() += scopes;
        let remaining = u64::try_from((grant.expires_at - now).num_seconds()).unwrap_or(0);
        radius.longest_remaining_ttl_secs = radius.longest_remaining_ttl_secs.max(remaining);
        if grant.parent.is_some() {
            radius.delegation_fan_out += 1;
        }
        if grant.impact.high_impact {
            radius.high_impact_grants += 1;
        }
        radius.total_score = radius.total_score.saturating_add(u64::from(grant.impact.blast_radius));
        radius.max_delegation_depth = radius.max_delegation_depth.max(depth(&parents, ancestors, &grant.id));
        subjects.insert(&grant.subject);
    }
    radius.owners = subjects.into_iter().filter_map(owner_of).collect();
    radius
}

/// Parent hops from `id`, through `parents` then `ancestors`; a parent in
/// neither ends the walk after its own hop. Bounded by the number of known
/// grants, so a (corrupt) cycle cannot loop forever.
fn depth(parents: &HashMap<&GrantId, Option<&GrantId>>, ancestors: &Ancestors, id: &GrantId) -> u32 {
    let bound = parents.len().saturating_add(ancestors.len());
    let mut hops = 0u32;
    let mut at = id;
    loop {
        let parent = match parents.get(at) {
            Some(parent) => *parent,
            None => ancestors.get(at).and_then(Option::as_ref),
        };
        let Some(parent) = parent else { break };
        hops = hops.saturating_add(1);
        // No chain through n known grants is longer than n hops.
        if hops as usize >= bound {
            break;
        }
        at = parent;
    }
    hops
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "test")]

    use super::*;
    use crate::grant::{GrantImpact, GrantState};
    use crate::task::Scope;

    fn at(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + secs, 0).unwrap()
    }

    fn grant(id: &str, subject: &str, audience: &str, scopes: &[&str], class: ScopeClass, expires: i64) -> Grant {
        Grant {
            id: GrantId::parse(id).unwrap(),
            task_id: TaskId::parse("t1").unwrap(),
            subject: SpiffeId::parse(&format!("spiffe://td/{subject}")).unwrap(),
            audience: Audience::parse(audience).unwrap(),
            scopes: scopes.iter().map(|s| Scope::parse(s).unwrap()).collect(),
            class,
            issued_at: at(0),
            expires_at: at(expires),
            parent: None,
            key_id: "k1".into(),
            state: GrantState::Active,
            revoked_at: None,
            revocation_reason: None,
            impact: crate::grant::GrantImpact::default(),
        }
    }

    fn child(mut g: Grant, parent: &str) -> Grant {
        g.parent = Some(GrantId::parse(parent).unwrap());
        g
    }

    fn owners(id: &SpiffeId) -> Option<String> {
        match id.path() {
            "/alice" => Some("team-a".into()),
            "/bob" => Some("team-b".into()),
            _ => None,
        }
    }

    #[test]
    fn nothing_reaches_nothing() {
        assert_eq!(
            blast_radius(&[], &Ancestors::new(), owners, at(10)),
            BlastRadius::default()
        );
    }

    #[test]
    fn counts_live_grants_audiences_classes_ttl_and_owners() {
        let mut revoked = grant("g4", "bob", "erp", &["ledger.write"], ScopeClass::Write, 900);
        revoked.state = GrantState::Revoked;
        let grants = [
            grant(
                "g1",
                "alice",
                "crm",
                &["contacts.read", "deals.read"],
                ScopeClass::Read,
                300,
            ),
            grant("g2", "alice", "crm", &["contacts.write"], ScopeClass::Write, 600),
            grant("g3", "bob", "mail", &["inbox.read"], ScopeClass::Read, 120),
            revoked,
            // Live, high-impact.
            {
                let mut g = grant("g6", "bob", "pay", &["transfers.create"], ScopeClass::Write, 200);
                g.impact = GrantImpact {
                    high_impact: true,
                    blast_radius: 25,
                    approval_id: Some("ap1".into()),
                };
                g
            },
            // Expired at `now`: not live.
            grant("g5", "carol", "hr", &["people.admin"], ScopeClass::Admin, 100),
        ];
        let radius = blast_radius(&grants, &Ancestors::new(), owners, at(100));
        assert_eq!(radius.live_grants, 4);
        assert_eq!(
            radius.audiences,
            BTreeSet::from([
                Audience::parse("crm").unwrap(),
                Audience::parse("mail").unwrap(),
                Audience::parse("pay").unwrap()
            ])
        );
        assert_eq!(
            radius.scopes_by_class,
            BTreeMap::from([(ScopeClass::Read, 3), (ScopeClass::Write, 2)])
        );
        assert_eq!(radius.high_impact_grants, 1);
        assert_eq!(radius.total_score, 25);
        assert_eq!(radius.longest_remaining_ttl_secs, 500);
        assert_eq!(radius.max_delegation_depth, 0);
        assert_eq!(radius.delegation_fan_out, 0);
        assert_eq!(
            radius.owners,
            BTreeSet::from(["team-a".to_owned(), "team-b".to_owned()])
        );
    }

    #[test]
    fn delegation_depth_follows_parents_within_the_grants() {
        let grants = [
            grant("root", "alice", "crm", &["contacts.read"], ScopeClass::Read, 600),
            child(
                grant("hop1", "bob", "crm", &["contacts.read"], ScopeClass::Read, 500),
                "root",
            ),
            child(
                grant("hop2", "carol", "crm", &["contacts.read"], ScopeClass::Read, 400),
                "hop1",
            ),
            child(
                grant("side", "bob", "crm", &["contacts.read"], ScopeClass::Read, 400),
                "root",
            ),
            // Its parent is not among the grants: one hop, as far as known.
            child(
                grant("orphan", "bob", "crm", &["contacts.read"], ScopeClass::Read, 400),
                "elsewhere",
            ),
        ];
        let radius = blast_radius(&grants, &Ancestors::new(), owners, at(0));
        assert_eq!(radius.live_grants, 5);
        assert_eq!(radius.max_delegation_depth, 2);
        // Knowing the orphan's ancestors (held by others) makes it the deepest.
        let ancestors = Ancestors::from([
            (
                GrantId::parse("elsewhere").unwrap(),
                Some(GrantId::parse("far").unwrap()),
            ),
            (GrantId::parse("far").unwrap(), Some(GrantId::parse("farther").unwrap())),
        ]);
        assert_eq!(blast_radius(&grants, &ancestors, owners, at(0)).max_delegation_depth, 3);
        assert_eq!(radius.delegation_fan_out, 4);
        // carol has no owner.
        assert_eq!(
            radius.owners,
            BTreeSet::from(["team-a".to_owned(), "team-b".to_owned()])
        );
    }

    #[test]
    fn a_dead_parent_still_counts_in_the_depth() {
        let mut root = grant("root", "alice", "crm", &["contacts.read"], ScopeClass::Read, 600);
        root.state = GrantState::Revoked;
        let grants = [
            root,
            child(
                grant("hop1", "bob", "crm", &["contacts.read"], ScopeClass::Read, 500),
                "root",
            ),
            child(
                grant("hop2", "bob", "crm", &["contacts.read"], ScopeClass::Read, 400),
                "hop1",
            ),
        ];
        let radius = blast_radius(&grants, &Ancestors::new(), owners, at(0));
        assert_eq!(radius.live_grants, 2);
        // hop2 → hop1 → root: the chain is how hop2 was minted, live or not.
        assert_eq!(radius.max_delegation_depth, 2);
        assert_eq!(radius.delegation_fan_out, 2);
    }

    fn exposure(class: ScopeClass, scopes: u32, high: u32, ttl: u32, delegation: u32) -> GrantExposure {
        GrantExposure {
            class,
            scopes,
            high_impact_scopes: high,
            ttl_secs: ttl,
            delegation_allowance: delegation,
        }
    }

    #[test]
    fn grant_scores_follow_the_documented_formula() {
        use ScopeClass::{Admin, Discover, Read, Write};
        // class × (scopes + 4 × high) × ⌈ttl/300⌉ × (1 + delegation)
        assert_eq!(grant_score(&exposure(Discover, 1, 0, 60, 0)), 1);
        assert_eq!(grant_score(&exposure(Read, 1, 0, 300, 0)), 2);
        assert_eq!(grant_score(&exposure(Read, 1, 0, 301, 0)), 4);
        assert_eq!(grant_score(&exposure(Read, 2, 0, 600, 0)), 8);
        assert_eq!(grant_score(&exposure(Write, 1, 1, 300, 0)), 25);
        assert_eq!(grant_score(&exposure(Write, 1, 1, 600, 0)), 50);
        assert_eq!(grant_score(&exposure(Admin, 3, 0, 900, 2)), 10 * 3 * 3 * 3);
        // A lifetime under one period counts as one.
        assert_eq!(grant_score(&exposure(Read, 1, 0, 1, 0)), 2);
        // Saturates instead of overflowing.
        assert_eq!(
            grant_score(&exposure(Admin, u32::MAX, u32::MAX, u32::MAX, u32::MAX)),
            u32::MAX
        );
    }

    #[test]
    fn grant_scores_never_drop_when_exposure_grows() {
        use ScopeClass::{Admin, Discover, Read, Write};
        let classes = [Discover, Read, Write, Admin];
        for (i, &class) in classes.iter().enumerate() {
            for scopes in 1..4 {
                for high in 0..=scopes {
                    for ttl in [1, 299, 300, 301, 3600] {
                        for delegation in 0..3 {
                            let base = grant_score(&exposure(class, scopes, high, ttl, delegation));
                            if let Some(&up) = classes.get(i + 1) {
                                assert!(grant_score(&exposure(up, scopes, high, ttl, delegation)) >= base);
                            }
                            assert!(grant_score(&exposure(class, scopes + 1, high, ttl, delegation)) > base);
                            assert!(grant_score(&exposure(class, scopes, high + 1, ttl, delegation)) > base);
                            assert!(grant_score(&exposure(class, scopes, high, ttl + 300, delegation)) > base);
                            assert!(grant_score(&exposure(class, scopes, high, ttl, delegation + 1)) > base);
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn a_parent_cycle_terminates() {
        let grants = [
            child(
                grant("a", "alice", "crm", &["contacts.read"], ScopeClass::Read, 60),
                "b",
            ),
            child(
                grant("b", "alice", "crm", &["contacts.read"], ScopeClass::Read, 60),
                "a",
            ),
        ];
        let radius = blast_radius(&grants, &Ancestors::new(), owners, at(0));
        assert!(radius.max_delegation_depth <= 2);
        assert_eq!(radius.longest_remaining_ttl_secs, 60);
    }
}

//! What a grant could do, and what that demands before it is minted: the
//! lifetime caps of its scope class and of its holder's kind, its
//! blast-radius score against a cap, and whether a person must approve it.
//!
//! Pure: [`assess`] refines a [`GrantPlan`] that issuance already allowed.
//! Policy's part comes in as [`PolicyTerms`] (approval required, maximum TTL,
//! maximum blast radius); configuration's as [`RiskLimits`]. The stricter wins.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use crate::blast::{GrantExposure, grant_score};
use crate::catalog::ApiCatalog;
use crate::error::ErrorKind;
use crate::identity::IdentityKind;
use crate::issuance::GrantPlan;
use crate::task::{Scope, ScopeClass};
use crate::ttl::{Lifetime, Ttl, TtlCaps};

/// The machine-readable reason of a refusal over the blast-radius cap.
pub const BLAST_RADIUS_EXCEEDED: &str = "blast_radius_exceeded";

/// Configured bounds on every grant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RiskLimits {
    /// Longest lifetime per scope class (`[tokens.class_max_ttl]`).
    pub class_max_ttl: BTreeMap<ScopeClass, Ttl>,
    /// Longest lifetime per identity kind (`[tokens.kind_max_ttl]`).
    pub kind_max_ttl: HashMap<IdentityKind, Ttl>,
    /// Highest blast-radius score a grant may have (`[tokens] max_blast_radius`).
    pub max_blast_radius: Option<u32>,
}

/// `secs` as a TTL; only for the non-zero constants below.
const fn secs(s: u32) -> Ttl {
    match Ttl::new(s) {
        Some(t) => t,
        None => Ttl::ONE_SECOND,
    }
}

impl RiskLimits {
    /// Default class caps: writes live shorter than reads, admin shortest.
    pub const DEFAULT_CLASS_MAX_TTL: [(ScopeClass, Ttl); 4] = [
        (ScopeClass::Discover, secs(3600)),
        (ScopeClass::Read, secs(3600)),
        (ScopeClass::Write, secs(900)),
        (ScopeClass::Admin, secs(300)),
    ];

    /// Default kind caps: agents and partners get shorter tokens than services.
    pub const DEFAULT_KIND_MAX_TTL: [(IdentityKind, Ttl); 4] = [
        (IdentityKind::Agent, secs(900)),
        (IdentityKind::Partner, secs(900)),
        (IdentityKind::Service, secs(3600)),
        (IdentityKind::Human, secs(3600)),
    ];
}

impl Default for RiskLimits {
    fn default() -> Self {
        Self {
            class_max_ttl: Self::DEFAULT_CLASS_MAX_TTL.into_iter().collect(),
            kind_max_ttl: Self::DEFAULT_KIND_MAX_TTL.into_iter().collect(),
            max_blast_radius: None,
        }
    }
}

/// What policy decided about one request, beyond allowing it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PolicyTerms {
    /// A person must approve the request.
    pub approval_required: bool,
    /// Longest lifetime policy allows.
    pub max_ttl: Option<Ttl>,
    /// Highest blast-radius score policy allows.
    pub max_blast_radius: Option<u32>,
}

/// The outcome of [`assess`]: how the grant will be minted, or that it waits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assessment {
    /// The plan's lifetime, shortened to the class, kind and policy caps.
    pub lifetime: Lifetime,
    /// The high-impact scopes requested.
    pub high_impact: BTreeSet<Scope>,
    /// The grant's blast-radius score.
    pub blast_radius: u32,
    /// `Some(why)` when a person must approve before anything is minted.
    pub approval: Option<String>,
}

/// Why a plan was refused on risk.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RiskError {
    /// The grant's score is above the configured or policy cap.
    #[error(
        "{BLAST_RADIUS_EXCEEDED}: the token's blast radius {score} is above the cap of {cap}; \
         ask for fewer scopes or a shorter ttl"
    )]
    BlastRadiusExceeded {
        /// The grant's score.
        score: u32,
        /// The cap in force.
        cap: u32,
    },
}

impl RiskError {
    /// Transport-free classification.
    pub fn kind(&self) -> ErrorKind {
        ErrorKind::PermissionDenied
    }
}

/// Refines an allowed `plan` for an identity of `kind`: caps its lifetime
/// (class, kind, policy), scores it (class, scopes, high-impact scopes, the
/// capped lifetime, `delegation_allowance`), refuses it over the tighter of
/// the configured and policy caps, and says whether it needs approval (any
/// high-impact scope, or policy says so).
pub fn assess(
    plan: &GrantPlan,
    kind: IdentityKind,
    catalog: &ApiCatalog,
    limits: &RiskLimits,
    policy: &PolicyTerms,
    delegation_allowance: u32,
) -> Result<Assessment, RiskError> {
    let caps = TtlCaps {
        identity: None,
        policy: policy.max_ttl,
        class: limits.class_max_ttl.get(&plan.class).copied(),
        kind: limits.kind_max_ttl.get(&kind).copied(),
    };
    let lifetime = plan.lifetime.capped(caps.smallest());
    let high_impact = catalog.high_impact_scopes(&plan.audience, &plan.scopes);
    let score = grant_score(&GrantExposure {
        class: plan.class,
        scopes: u32::try_from(plan.scopes.len()).unwrap_or(u32::MAX),
        high_impact_scopes: u32::try_from(high_impact.len()).unwrap_or(u32::MAX),
        ttl_secs: lifetime.ttl.as_secs(),
        delegation_allowance,
    });
    let cap = [limits.max_blast_radius, policy.max_blast_radius]
        .into_iter()
        .flatten()
        .min();
    if let Some(cap) = cap
        && score > cap
    {
        return Err(RiskError::BlastRadiusExceeded { score, cap });
    }
    let approval = if !high_impact.is_empty() {
        Some(format!(
            "high-impact scope{} {}",
            if high_impact.len() == 1 { "" } else { "s" },
            high_impact
                .iter()
                .map(|s| format!("`{s}`"))
                .collect::<Vec<_>>()
                .join(", ")
        ))
    } else if policy.approval_required {
        Some("policy requires a person's approval".to_owned())
    } else {
        None
    };
    Ok(Assessment {
        lifetime,
        high_impact,
        blast_radius: score,
        approval,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "test")]

    use chrono::{DateTime, Duration};

    use super::*;
    use crate::catalog::Api;
    use crate::task::{Audience, TaskId};

    fn s(x: &str) -> Scope {
        Scope::parse(x).unwrap()
    }

    fn ttl(x: u64) -> Ttl {
        Ttl::from_secs(x).unwrap()
    }

    fn catalog() -> ApiCatalog {
        ApiCatalog::new([Api {
            audience: Audience::parse("pay").unwrap(),
            schema_version: "1".into(),
            scopes: BTreeMap::from([
                (s("invoices.read"), ScopeClass::Read),
                (s("notes.read"), ScopeClass::Read),
                (s("transfers.create"), ScopeClass::Write),
                (s("notes.write"), ScopeClass::Write),
            ]),
            high_impact: BTreeSet::from([s("transfers.create")]),
            verifiers: BTreeSet::new(),
        }])
    }

    fn plan(scopes: &[&str], class: ScopeClass, secs: u64) -> GrantPlan {
        let t0 = DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        GrantPlan {
            tools: None,
            task_id: TaskId::parse("t1").unwrap(),
            audience: Audience::parse("pay").unwrap(),
            scopes: scopes.iter().map(|x| s(x)).collect(),
            class,
            lifetime: Lifetime {
                ttl: ttl(secs),
                issued_at: t0,
                expires_at: t0 + Duration::seconds(i64::try_from(secs).unwrap()),
            },
        }
    }

    #[track_caller]
    fn check(
        p: &GrantPlan,
        kind: IdentityKind,
        limits: &RiskLimits,
        policy: &PolicyTerms,
    ) -> Result<(u32, u32, bool), RiskError> {
        assess(p, kind, &catalog(), limits, policy, 0).map(|a| {
            assert_eq!(
                a.lifetime.expires_at,
                a.lifetime.issued_at + a.lifetime.ttl.as_duration()
            );
            (a.lifetime.ttl.as_secs(), a.blast_radius, a.approval.is_some())
        })
    }

    #[test]
    fn defaults_make_writes_and_agents_shorter() {
        let d = RiskLimits::default();
        let none = PolicyTerms::default();
        let read = plan(&["invoices.read"], ScopeClass::Read, 3600);
        let write = plan(&["notes.write"], ScopeClass::Write, 3600);
        assert_eq!(check(&read, IdentityKind::Service, &d, &none).unwrap().0, 3600);
        assert_eq!(check(&write, IdentityKind::Service, &d, &none).unwrap().0, 900);
        assert_eq!(check(&read, IdentityKind::Agent, &d, &none).unwrap().0, 900);
        assert!(
            d.class_max_ttl[&ScopeClass::Write] < d.class_max_ttl[&ScopeClass::Read]
                && d.kind_max_ttl[&IdentityKind::Agent] < d.kind_max_ttl[&IdentityKind::Service]
        );
        // Policy's maximum binds too, and never lengthens.
        let short = PolicyTerms {
            max_ttl: Some(ttl(60)),
            ..PolicyTerms::default()
        };
        assert_eq!(check(&read, IdentityKind::Service, &d, &short).unwrap().0, 60);
        let short_plan = plan(&["invoices.read"], ScopeClass::Read, 30);
        assert_eq!(check(&short_plan, IdentityKind::Service, &d, &short).unwrap().0, 30);
    }

    #[test]
    fn high_impact_scopes_or_policy_need_approval() {
        let d = RiskLimits::default();
        let none = PolicyTerms::default();
        let transfer = plan(&["transfers.create"], ScopeClass::Write, 300);
        let a = assess(&transfer, IdentityKind::Agent, &catalog(), &d, &none, 0).unwrap();
        assert_eq!(a.high_impact, BTreeSet::from([s("transfers.create")]));
        assert!(a.approval.unwrap().contains("`transfers.create`"));
        let notes = plan(&["notes.write"], ScopeClass::Write, 300);
        assert!(!check(&notes, IdentityKind::Agent, &d, &none).unwrap().2);
        let marked = PolicyTerms {
            approval_required: true,
            ..PolicyTerms::default()
        };
        assert!(check(&notes, IdentityKind::Agent, &d, &marked).unwrap().2);
    }

    #[test]
    fn the_blast_radius_cap_refuses_with_its_reason() {
        let transfer = plan(&["transfers.create"], ScopeClass::Write, 300);
        // write 5 × (1 + 4) × 1 period = 25.
        let (_, score, _) = check(
            &transfer,
            IdentityKind::Agent,
            &RiskLimits::default(),
            &PolicyTerms::default(),
        )
        .unwrap();
        assert_eq!(score, 25);
        let capped = RiskLimits {
            max_blast_radius: Some(24),
            ..RiskLimits::default()
        };
        let err = check(&transfer, IdentityKind::Agent, &capped, &PolicyTerms::default()).unwrap_err();
        assert_eq!(err, RiskError::BlastRadiusExceeded { score: 25, cap: 24 });
        assert_eq!(err.kind(), ErrorKind::PermissionDenied);
        assert!(err.to_string().starts_with("blast_radius_exceeded:"), "{err}");
        // At the cap is allowed; the tighter of config and policy wins.
        let at = RiskLimits {
            max_blast_radius: Some(25),
            ..RiskLimits::default()
        };
        assert!(check(&transfer, IdentityKind::Agent, &at, &PolicyTerms::default()).is_ok());
        let policy = PolicyTerms {
            max_blast_radius: Some(10),
            ..PolicyTerms::default()
        };
        assert_eq!(
            check(&transfer, IdentityKind::Agent, &at, &policy),
            Err(RiskError::BlastRadiusExceeded { score: 25, cap: 10 })
        );
        // The score uses the capped lifetime: a shorter token scores lower.
        let long_read = plan(&["invoices.read", "notes.read"], ScopeClass::Read, 3600);
        let (secs, score, _) = check(
            &long_read,
            IdentityKind::Agent,
            &RiskLimits::default(),
            &PolicyTerms::default(),
        )
        .unwrap();
        assert_eq!((secs, score), (900, 2 * 2 * 3));
    }
}

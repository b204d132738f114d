//! The stored shape of a grant in Redis, since every live grant costs
//! memory: no state fields, no id (the id is the record's field or key).
//! State lives beside it (`revoked:` marks, the task's state).
//!
//! Two layouts are read: layout 2 (written now) is one tab-separated line,
//! `exp_ms TAB task TAB subject TAB audience TAB scopes TAB class letter TAB
//! lifetime_s TAB kid [TAB parent TAB high TAB blast TAB approval]`, with the
//! scopes space-separated and the issue time as whole seconds before the
//! expiry's second; it takes about 30 bytes fewer than JSON, which puts a
//! typical record in a smaller allocator class. The expiry comes first
//! because the scripts read it, the task and the subject with one match.
//! Layout 1 (written before) is the JSON of [`StoredGrant`], whose first
//! byte is `{`; such records expire by themselves, but a broker upgraded with
//! live ones must still read and revoke them.

use std::collections::BTreeSet;

use chrono::DateTime;
use serde::{Deserialize, Serialize};
use tessera_core::grant::{Grant, GrantId, GrantImpact, GrantState};
use tessera_core::identity::SpiffeId;
use tessera_core::task::{Audience, Scope, ScopeClass, TaskId};

use crate::error::StoreError;

/// A layout-1 grant record: everything immutable about it, as JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct StoredGrant {
    /// Task id (scripts read it as `t`).
    t: TaskId,
    /// Subject.
    s: SpiffeId,
    /// Audience.
    a: Audience,
    /// Scopes.
    sc: BTreeSet<Scope>,
    /// Class.
    c: ScopeClass,
    /// Issued at, epoch seconds.
    i: i64,
    /// Expires at, epoch seconds.
    e: i64,
    /// Parent grant, when delegated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    p: Option<GrantId>,
    /// Signing key id.
    k: String,
    /// High-impact (absent: no).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    h: bool,
    /// Blast-radius score (absent: 0, as recorded before scores existed).
    #[serde(default, skip_serializing_if = "is_zero")]
    b: u32,
    /// The approval it was minted from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ap: Option<String>,
}

fn is_zero(v: &u32) -> bool {
    *v == 0
}

impl StoredGrant {
    /// What a broker before layout 2 wrote (the upgrade test writes it).
    pub(crate) fn layout_1(g: &Grant) -> Self {
        Self::from_grant(g)
    }

    fn from_grant(g: &Grant) -> Self {
        Self {
            t: g.task_id.clone(),
            s: g.subject.clone(),
            a: g.audience.clone(),
            sc: g.scopes.clone(),
            c: g.class,
            i: g.issued_at.timestamp(),
            e: g.expires_at.timestamp(),
            p: g.parent.clone(),
            k: g.key_id.clone(),
            h: g.impact.high_impact,
            b: g.impact.blast_radius,
            ap: g.impact.approval_id.clone(),
        }
    }

    /// The grant `id`, active unless the caller finds otherwise.
    pub(crate) fn into_grant(self, id: GrantId) -> Result<Grant, StoreError> {
        let at = |secs| DateTime::from_timestamp(secs, 0).ok_or_else(|| StoreError::Corrupt("grant time".into()));
        Ok(Grant {
            id,
            task_id: self.t,
            subject: self.s,
            audience: self.a,
            scopes: self.sc,
            class: self.c,
            issued_at: at(self.i)?,
            expires_at: at(self.e)?,
            parent: self.p,
            key_id: self.k,
            state: GrantState::Active,
            revoked_at: None,
            revocation_reason: None,
            impact: GrantImpact {
                high_impact: self.h,
                blast_radius: self.b,
                approval_id: self.ap,
            },
        })
    }
}

const SEP: char = '\t';

/// One letter per class: a record a few bytes shorter can fall into a
/// smaller allocation class (160 bytes instead of 192 for typical grants).
fn class_name(c: ScopeClass) -> &'static str {
    match c {
        ScopeClass::Discover => "d",
        ScopeClass::Read => "r",
        ScopeClass::Write => "w",
        ScopeClass::Admin => "a",
    }
}

fn class_of(s: &str) -> Option<ScopeClass> {
    Some(match s {
        "d" => ScopeClass::Discover,
        "r" => ScopeClass::Read,
        "w" => ScopeClass::Write,
        "a" => ScopeClass::Admin,
        _ => return None,
    })
}

/// The layout-2 record of `g`. Refuses (rather than write a record that
/// would read back as something else) a field holding the separator, or a
/// scope holding a space; the core's name rules allow neither today.
pub(crate) fn encode(g: &Grant) -> Result<String, StoreError> {
    use std::fmt::Write as _;
    let clean = |s: &str| !s.contains(SEP) && !s.contains('\n');
    let exp_ms = g.expires_at.timestamp_millis();
    let lifetime = exp_ms.div_euclid(1000) - g.issued_at.timestamp();
    let mut scopes = String::new();
    for (i, sc) in g.scopes.iter().enumerate() {
        if sc.as_str().contains(' ') || !clean(sc.as_str()) {
            return Err(StoreError::Corrupt("a scope holds a separator".into()));
        }
        if i > 0 {
            scopes.push(' ');
        }
        scopes.push_str(sc.as_str());
    }
    let fields = [
        g.task_id.as_str(),
        g.subject.as_str(),
        g.audience.as_str(),
        g.key_id.as_str(),
        g.parent.as_ref().map_or("", GrantId::as_str),
        g.impact.approval_id.as_deref().unwrap_or(""),
    ];
    if !fields.iter().all(|f| clean(f)) {
        return Err(StoreError::Corrupt("a grant field holds a separator".into()));
    }
    let mut out = String::with_capacity(160);
    let _ = write!(
        out,
        "{exp_ms}{SEP}{}{SEP}{}{SEP}{}{SEP}{scopes}{SEP}{}{SEP}{lifetime}{SEP}{}",
        g.task_id,
        g.subject,
        g.audience.as_str(),
        class_name(g.class),
        g.key_id
    );
    let extra =
        g.parent.is_some() || g.impact.high_impact || g.impact.blast_radius != 0 || g.impact.approval_id.is_some();
    if extra {
        let _ = write!(
            out,
            "{SEP}{}{SEP}{}{SEP}{}{SEP}{}",
            g.parent.as_ref().map_or("", GrantId::as_str),
            u8::from(g.impact.high_impact),
            g.impact.blast_radius,
            g.impact.approval_id.as_deref().unwrap_or("")
        );
    }
    Ok(out)
}

/// The grant `id` from its record in either layout, active unless the
/// caller finds otherwise.
pub(crate) fn decode(id: GrantId, rec: &str) -> Result<Grant, StoreError> {
    if rec.starts_with('{') {
        let stored: StoredGrant = serde_json::from_str(rec).map_err(|e| StoreError::Corrupt(format!("grant: {e}")))?;
        return stored.into_grant(id);
    }
    let bad = |what: &str| StoreError::Corrupt(format!("grant record: {what}"));
    let f: Vec<&str> = rec.split(SEP).collect();
    let (exp_ms, task, subject, audience, scopes, class, lifetime, kid) = match f.as_slice() {
        [e, t, s, a, sc, c, l, k] | [e, t, s, a, sc, c, l, k, _, _, _, _] => (e, t, s, a, sc, c, l, k),
        _ => return Err(bad("field count")),
    };
    let exp_ms: i64 = exp_ms.parse().map_err(|_| bad("expiry"))?;
    let lifetime: i64 = lifetime.parse().map_err(|_| bad("lifetime"))?;
    let expires_at = DateTime::from_timestamp_millis(exp_ms).ok_or_else(|| bad("expiry"))?;
    let issued_at = DateTime::from_timestamp(exp_ms.div_euclid(1000) - lifetime, 0).ok_or_else(|| bad("issue time"))?;
    let mut grant = Grant {
        id,
        task_id: TaskId::parse(task).map_err(|_| bad("task"))?,
        subject: SpiffeId::parse(subject).map_err(|_| bad("subject"))?,
        audience: Audience::parse(audience).map_err(|_| bad("audience"))?,
        scopes: scopes
            .split(' ')
            .filter(|s| !s.is_empty())
            .map(Scope::parse)
            .collect::<Result<_, _>>()
            .map_err(|_| bad("scope"))?,
        class: class_of(class).ok_or_else(|| bad("class"))?,
        issued_at,
        expires_at,
        parent: None,
        key_id: (*kid).to_owned(),
        state: GrantState::Active,
        revoked_at: None,
        revocation_reason: None,
        impact: GrantImpact::default(),
    };
    if let [.., parent, high, blast, approval] = f.as_slice()
        && f.len() == 12
    {
        grant.parent = (!parent.is_empty())
            .then(|| GrantId::parse(parent))
            .transpose()
            .map_err(|_| bad("parent"))?;
        grant.impact = GrantImpact {
            high_impact: *high == "1",
            blast_radius: blast.parse().map_err(|_| bad("blast radius"))?,
            approval_id: (!approval.is_empty()).then(|| (*approval).to_owned()),
        };
    }
    Ok(grant)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_grant_round_trips_through_its_stored_shape() {
        let g = crate::conformance::grant_with_id(GrantId::generate().unwrap(), "t1", 30, None);
        let json = serde_json::to_string(&StoredGrant::from_grant(&g)).unwrap();
        assert!(json.len() < 200, "{json}");
        let back: StoredGrant = serde_json::from_str(&json).unwrap();
        assert_eq!(back.into_grant(g.id.clone()).unwrap(), g);
        // With an assessment.
        let mut g = g;
        g.impact = GrantImpact {
            high_impact: true,
            blast_radius: 50,
            approval_id: Some("ap_x".into()),
        };
        let json = serde_json::to_string(&StoredGrant::from_grant(&g)).unwrap();
        let back: StoredGrant = serde_json::from_str(&json).unwrap();
        assert_eq!(back.into_grant(g.id.clone()).unwrap(), g);
    }

    #[test]
    fn a_grant_round_trips_through_layout_2_and_layout_1_still_reads() {
        let mut g = crate::conformance::grant_with_id(GrantId::generate().unwrap(), "t1", 30, None);
        // Expiry keeps its milliseconds; the issue time whole seconds.
        g.expires_at += chrono::Duration::milliseconds(250);
        let rec = encode(&g).unwrap();
        assert!(!rec.starts_with('{'), "{rec}");
        assert_eq!(decode(g.id.clone(), &rec).unwrap(), g);
        let json = serde_json::to_string(&StoredGrant::from_grant(&g)).unwrap();
        assert!(rec.len() + 20 < json.len(), "{rec} against {json}");
        // Layout 1 reads as it did (its expiry in whole seconds).
        let old = decode(g.id.clone(), &json).unwrap();
        assert_eq!(old.expires_at.timestamp(), g.expires_at.timestamp());
        assert_eq!((old.subject, old.task_id), (g.subject.clone(), g.task_id.clone()));
        // Delegated, assessed, several scopes.
        g.parent = Some(GrantId::generate().unwrap());
        g.scopes.insert(Scope::parse("write").unwrap());
        g.class = ScopeClass::Write;
        g.impact = GrantImpact {
            high_impact: true,
            blast_radius: 50,
            approval_id: Some("ap_x".into()),
        };
        assert_eq!(decode(g.id.clone(), &encode(&g).unwrap()).unwrap(), g);
        // Only the approval: the optional fields are still all there.
        g.parent = None;
        g.impact = GrantImpact {
            high_impact: false,
            blast_radius: 0,
            approval_id: Some("ap_y".into()),
        };
        assert_eq!(decode(g.id.clone(), &encode(&g).unwrap()).unwrap(), g);
        // A field holding the separator is refused, not written.
        g.key_id = "a\tb".into();
        assert!(encode(&g).is_err());
        // Damaged records are errors, never grants.
        for bad in [
            "",
            "x",
            "1\tt1",
            "abc\tt1\tspiffe://td/a\tcrm\tread\tr\t30\tk",
            "1\tt1\tspiffe://td/a\tcrm\tread\tread\t30\tk",
        ] {
            assert!(decode(g.id.clone(), bad).is_err(), "{bad:?}");
        }
    }
}

//! Anomaly rules: an identity refused too often within a window, or caught
//! presenting another identity's token, is quarantined. Pure bookkeeping
//! over values; the clock is passed in.
//!
//! [`AnomalyDetector`] keeps, per identity, the times of its recent denials
//! (at most `denials` of them) and fires a [`Trigger`] once when the
//! identity reaches `denials` denials within `within`; its window then
//! starts again from empty. [`QuarantineList`] remembers who is quarantined
//! until when, dropping expired entries lazily.
//!
//! Both are bounded: each tracks at most [`MAX_TRACKED`] identities, and
//! when full it first drops entries that no longer matter, then the oldest.

use std::collections::{HashMap, VecDeque};

use chrono::{DateTime, Duration, Utc};

use crate::identity::SpiffeId;

/// Most identities tracked by a detector or a quarantine list.
pub const MAX_TRACKED: usize = 100_000;

/// When to quarantine: `denials` denials within `within` quarantine the
/// identity for `quarantine`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AnomalyRule {
    /// Denials that trigger the rule (at least 1).
    pub denials: u32,
    /// The sliding window they must fall within.
    pub within: Duration,
    /// How long the identity is then quarantined.
    pub quarantine: Duration,
}

impl Default for AnomalyRule {
    fn default() -> Self {
        Self {
            denials: 20,
            within: Duration::seconds(60),
            quarantine: Duration::minutes(15),
        }
    }
}

/// A rule fired for an identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trigger {
    /// The identity.
    pub identity: SpiffeId,
    /// Which rule fired, and on what.
    pub cause: Cause,
    /// Quarantine it until then.
    pub until: DateTime<Utc>,
}

/// Why a [`Trigger`] fired.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Cause {
    /// Too many denials within the window.
    Denials {
        /// How many denials it had within the window.
        denials: u32,
        /// The window.
        within: Duration,
        /// The first denial counted.
        first: DateTime<Utc>,
    },
    /// A verifier reported it presenting a token issued to someone else.
    Misuse {
        /// The token's holder.
        holder: String,
        /// The token's task.
        task: String,
    },
}

impl Trigger {
    /// The misuse rule: `presenter` presented a token of `task` issued to
    /// `holder`; it is quarantined for the rule's period from `now`.
    pub fn misuse(rule: &AnomalyRule, presenter: SpiffeId, holder: &str, task: &str, now: DateTime<Utc>) -> Self {
        Self {
            identity: presenter,
            cause: Cause::Misuse {
                holder: holder.to_owned(),
                task: task.to_owned(),
            },
            until: now + rule.quarantine,
        }
    }

    /// For people: "3 denials within 60s", "presented a token of task `t` issued to `h`".
    pub fn describe(&self) -> String {
        match &self.cause {
            Cause::Denials { denials, within, .. } => format!("{denials} denials within {}s", within.num_seconds()),
            Cause::Misuse { holder, task } => format!("presented a token of task `{task}` issued to `{holder}`"),
        }
    }
}

/// Counts denials per identity over a sliding window.
#[derive(Debug, Clone)]
pub struct AnomalyDetector {
    rule: AnomalyRule,
    recent: HashMap<SpiffeId, VecDeque<DateTime<Utc>>>,
}

impl AnomalyDetector {
    /// A detector applying `rule`.
    pub fn new(rule: AnomalyRule) -> Self {
        Self {
            rule,
            recent: HashMap::new(),
        }
    }

    /// The rule applied.
    pub fn rule(&self) -> AnomalyRule {
        self.rule
    }

    /// Records a denial of `id` at `now`. Returns a trigger the moment the
    /// identity reaches the rule's count of denials within the window (a
    /// denial exactly `within` after the first one still counts); the
    /// identity's window then starts again from empty.
    pub fn observe_denial(&mut self, id: &SpiffeId, now: DateTime<Utc>) -> Option<Trigger> {
        let rule = self.rule;
        let needed = usize::try_from(rule.denials.max(1)).unwrap_or(usize::MAX);
        if !self.recent.contains_key(id) && self.recent.len() >= MAX_TRACKED {
            self.evict(now);
        }
        let times = self.recent.entry(id.clone()).or_default();
        times.push_back(now);
        while times.front().is_some_and(|first| now - *first > rule.within) {
            times.pop_front();
        }
        while times.len() > needed {
            times.pop_front();
        }
        if times.len() < needed {
            return None;
        }
        let first = times.front().copied().unwrap_or(now);
        self.recent.remove(id);
        Some(Trigger {
            identity: id.clone(),
            cause: Cause::Denials {
                denials: rule.denials.max(1),
                within: rule.within,
                first,
            },
            until: now + rule.quarantine,
        })
    }

    /// How many identities have denials in their window (for tests and metrics).
    pub fn tracked(&self) -> usize {
        self.recent.len()
    }

    /// Drops identities whose last denial left the window; if none did, the
    /// one whose last denial is oldest.
    fn evict(&mut self, now: DateTime<Utc>) {
        let within = self.rule.within;
        self.recent
            .retain(|_, times| times.back().is_some_and(|last| now - *last <= within));
        if self.recent.len() >= MAX_TRACKED {
            let oldest = self
                .recent
                .iter()
                .min_by_key(|(_, times)| times.back().copied())
                .map(|(id, _)| id.clone());
            if let Some(id) = oldest {
                self.recent.remove(&id);
            }
        }
    }
}

/// Identities quarantined, each until a time.
#[derive(Debug, Clone, Default)]
pub struct QuarantineList {
    until: HashMap<SpiffeId, DateTime<Utc>>,
}

impl QuarantineList {
    /// Quarantines `id` until `until` (extending, never shortening, a
    /// quarantine already running).
    pub fn quarantine(&mut self, id: &SpiffeId, until: DateTime<Utc>) {
        if !self.until.contains_key(id) && self.until.len() >= MAX_TRACKED {
            self.evict();
        }
        let entry = self.until.entry(id.clone()).or_insert(until);
        *entry = (*entry).max(until);
    }

    /// Until when `id` is quarantined at `now`, if it is; a quarantine ends
    /// at its `until` (exclusive). An expired entry is dropped.
    pub fn is_quarantined(&mut self, id: &SpiffeId, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let until = *self.until.get(id)?;
        if now < until {
            Some(until)
        } else {
            self.until.remove(id);
            None
        }
    }

    /// How many entries are held (expired ones included until looked at).
    pub fn len(&self) -> usize {
        self.until.len()
    }

    /// Whether no entry is held.
    pub fn is_empty(&self) -> bool {
        self.until.is_empty()
    }

    /// Makes room: drops the entry that ends first (an expired one, if any).
    fn evict(&mut self) {
        let first = self.until.iter().min_by_key(|(_, t)| **t).map(|(id, _)| id.clone());
        if let Some(id) = first {
            self.until.remove(&id);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]

    use super::*;

    fn t(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + secs, 0).unwrap()
    }

    fn id(name: &str) -> SpiffeId {
        SpiffeId::parse(&format!("spiffe://td/agent/{name}")).unwrap()
    }

    fn rule(denials: u32, within: i64, quarantine: i64) -> AnomalyRule {
        AnomalyRule {
            denials,
            within: Duration::seconds(within),
            quarantine: Duration::seconds(quarantine),
        }
    }

    #[test]
    fn misuse_quarantines_the_presenter_for_the_rule_period() {
        let fired = Trigger::misuse(&rule(3, 60, 120), id("thief"), "spiffe://td/agent/a", "t-1", t(0));
        assert_eq!(fired.identity, id("thief"));
        assert_eq!(fired.until, t(120));
        assert_eq!(
            fired.describe(),
            "presented a token of task `t-1` issued to `spiffe://td/agent/a`"
        );
    }

    #[test]
    fn fires_on_the_nth_denial_within_the_window_and_once() {
        let mut d = AnomalyDetector::new(rule(3, 60, 120));
        let a = id("a");
        assert_eq!(d.observe_denial(&a, t(0)), None);
        assert_eq!(d.observe_denial(&a, t(30)), None);
        let fired = d.observe_denial(&a, t(60)).unwrap();
        assert_eq!(fired.identity, a);
        assert_eq!(
            fired.cause,
            Cause::Denials {
                denials: 3,
                within: Duration::seconds(60),
                first: t(0)
            }
        );
        assert_eq!(fired.until, t(180));
        assert_eq!(fired.describe(), "3 denials within 60s");
        // The window starts again: the next two do not fire, the third does.
        assert_eq!(d.tracked(), 0);
        assert_eq!(d.observe_denial(&a, t(61)), None);
        assert_eq!(d.observe_denial(&a, t(62)), None);
        assert!(d.observe_denial(&a, t(63)).is_some());
    }

    #[test]
    fn denials_older_than_the_window_slide_out() {
        let mut d = AnomalyDetector::new(rule(3, 60, 120));
        let a = id("a");
        assert_eq!(d.observe_denial(&a, t(0)), None);
        assert_eq!(d.observe_denial(&a, t(30)), None);
        // 61s after the first: the first no longer counts.
        assert_eq!(d.observe_denial(&a, t(61)), None);
        let fired = d.observe_denial(&a, t(62)).unwrap();
        assert!(matches!(fired.cause, Cause::Denials { first, .. } if first == t(30)));
    }

    #[test]
    fn identities_are_counted_apart() {
        let mut d = AnomalyDetector::new(rule(2, 60, 120));
        let (a, b) = (id("a"), id("b"));
        assert_eq!(d.observe_denial(&a, t(0)), None);
        assert_eq!(d.observe_denial(&b, t(1)), None);
        assert_eq!(d.observe_denial(&b, t(2)).unwrap().identity, b);
        assert_eq!(d.observe_denial(&a, t(3)).unwrap().identity, a);
    }

    #[test]
    fn a_rule_of_one_denial_fires_every_time() {
        let mut d = AnomalyDetector::new(rule(1, 60, 5));
        let a = id("a");
        assert_eq!(d.observe_denial(&a, t(0)).unwrap().until, t(5));
        assert_eq!(d.observe_denial(&a, t(0)).unwrap().until, t(5));
    }

    #[test]
    fn quarantine_ends_at_until_and_is_dropped() {
        let mut q = QuarantineList::default();
        let (a, b) = (id("a"), id("b"));
        q.quarantine(&a, t(10));
        assert_eq!(q.is_quarantined(&a, t(0)), Some(t(10)));
        assert_eq!(q.is_quarantined(&a, t(9)), Some(t(10)));
        assert_eq!(q.is_quarantined(&b, t(9)), None);
        assert_eq!(q.len(), 1);
        assert_eq!(q.is_quarantined(&a, t(10)), None);
        assert!(q.is_empty());
    }

    #[test]
    fn quarantine_is_extended_never_shortened() {
        let mut q = QuarantineList::default();
        let a = id("a");
        q.quarantine(&a, t(10));
        q.quarantine(&a, t(5));
        assert_eq!(q.is_quarantined(&a, t(7)), Some(t(10)));
        q.quarantine(&a, t(20));
        assert_eq!(q.is_quarantined(&a, t(15)), Some(t(20)));
    }

    #[test]
    fn sizes_stay_bounded() {
        let mut q = QuarantineList::default();
        let mut d = AnomalyDetector::new(rule(2, 60, 5));
        for i in 0..=MAX_TRACKED {
            let who = id(&format!("n{i}"));
            q.quarantine(&who, t(i64::try_from(i).unwrap()));
            assert_eq!(d.observe_denial(&who, t(0)), None);
        }
        assert_eq!(q.len(), MAX_TRACKED);
        assert_eq!(d.tracked(), MAX_TRACKED);
        // The entry ending first made room.
        assert_eq!(q.is_quarantined(&id("n0"), t(-1)), None);
    }

    #[test]
    fn quarantine_audit_kinds_have_their_serde_names() {
        use crate::audit::AuditKind;
        for (kind, name) in [
            (AuditKind::Quarantined, "quarantined"),
            (AuditKind::QuarantineRefused, "quarantine_refused"),
        ] {
            assert_eq!(kind.as_str(), name);
            assert_eq!(serde_json::to_value(kind).unwrap(), name);
        }
    }
}

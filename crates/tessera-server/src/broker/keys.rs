//! Signing keys: publication before first use, rotation (on demand and
//! staged), retirement, withdrawal by break-glass, and the JWKS.

use std::sync::Arc;
use std::time::Duration;

use tessera_core::audit::{AuditKind, Outcome};
use tessera_core::identity::VerifiedIdentity;
use tessera_core::policy::Operation;
use tessera_core::task::TaskState;
use tessera_core::token::{Jwks, SigningKey};
use tessera_store::{PublishedKey, StoreError};

use super::record::{Metric, Success, Told};
use super::{Asked, Broker, BrokerError};

/// Rounds of ending every active task a break-glass runs before it gives up.
const BREAK_GLASS_ROUNDS: usize = 8;

impl Broker {
    /// Marks this replica's key as retiring: it stays in the JWKS until the
    /// last token it could have signed has expired.
    pub async fn retire_key(&self) -> Result<(), BrokerError> {
        let signer = self.signer();
        self.retire(&signer, None, "retired at shutdown").await
    }

    /// The key signing now.
    pub(super) fn signer(&self) -> Arc<SigningKey> {
        self.signer
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Keeps `key` in the JWKS until the last token it could have signed has
    /// expired (max TTL plus leeway), then lets it go.
    async fn retire(&self, key: &SigningKey, who: Option<&VerifiedIdentity>, why: &str) -> Result<(), BrokerError> {
        let now = self.clock.now();
        let keep = self.settings.ttl.max.as_duration() + chrono::Duration::seconds(self.settings.leeway_secs);
        let retired = PublishedKey {
            jwk: key.public_jwk().clone(),
            published_at: now,
            not_after: Some(now + keep),
        };
        match self.store.publish_key(&retired).await {
            // Withdrawn by break-glass: it stays out of the JWKS.
            Ok(()) | Err(StoreError::KeyWithdrawn(_)) => {}
            Err(e) => return Err(e.into()),
        }
        let mut event = self.event(AuditKind::KeyRetired, Outcome::Allow, who);
        event.reason = Some(format!("kid {}: {why}; in the JWKS until {}", key.kid(), now + keep));
        self.audit(event).await
    }

    /// Rotates the signing key: the new key is published before it signs
    /// anything, and the old one stays in the JWKS until its last token has
    /// expired. Returns (new kid, retired kid).
    pub async fn rotate_key(
        &self,
        who: &VerifiedIdentity,
        why: Asked<String>,
    ) -> Result<(String, String), BrokerError> {
        self.authorize(who, Operation::RotateSigningKey).await?;
        let why = why?;
        self.replace_key(Some(who), &why, true).await
    }

    /// A scheduled rotation: the next key is published `lead` before it
    /// signs, so verifiers that cache the JWKS hold it before they meet its
    /// tokens; then it signs and the old key is retired. A rotation or a
    /// withdrawal in between supersedes this one (the staged key is retired
    /// unused). Returns (new kid, retired kid), or `None` when superseded.
    pub async fn rotate_key_staged(&self, lead: Duration) -> Result<Option<(String, String)>, BrokerError> {
        let (old_kid, next) = {
            let _one_at_a_time = self.rotating.lock().await;
            let old = self.signer();
            let next = Arc::new(SigningKey::generate(old.algorithm()).map_err(BrokerError::Signing)?);
            let why = format!("next key, signs in {}", humantime::format_duration(lead));
            self.publish_new(&next, None, &why).await?;
            *self.staged_kid() = Some(next.kid().to_owned());
            (old.kid().to_owned(), next)
        };
        tokio::time::sleep(lead).await;
        let _one_at_a_time = self.rotating.lock().await;
        self.staged_kid().take();
        let old = self.signer();
        let still_published = self
            .store
            .published_keys(self.clock.now())
            .await?
            .iter()
            .any(|k| k.jwk.kid == next.kid());
        if old.kid() != old_kid || !still_published {
            tracing::warn!(kid = next.kid(), "staged key superseded before it signed");
            if still_published {
                self.retire(&next, None, "staged key superseded before it signed")
                    .await?;
            }
            return Ok(None);
        }
        self.switch_to(next, None, "scheduled rotation", true).await.map(Some)
    }

    /// Publishes a fresh key, then signs with it; the old one is retired
    /// (kept until its tokens expire) or, after a withdrawal, left out.
    async fn replace_key(
        &self,
        who: Option<&VerifiedIdentity>,
        why: &str,
        retire_old: bool,
    ) -> Result<(String, String), BrokerError> {
        let _one_at_a_time = self.rotating.lock().await;
        let new = Arc::new(SigningKey::generate(self.signer().algorithm()).map_err(BrokerError::Signing)?);
        // INVARIANT: published before first use, so no verifier sees a kid it cannot find.
        self.publish_new(&new, who, why).await?;
        self.switch_to(new, who, why, retire_old).await
    }

    /// Publishes `key` (not signing yet) and audits it.
    async fn publish_new(
        &self,
        key: &SigningKey,
        who: Option<&VerifiedIdentity>,
        why: &str,
    ) -> Result<(), BrokerError> {
        let published = PublishedKey {
            jwk: key.public_jwk().clone(),
            published_at: self.clock.now(),
            not_after: None,
        };
        self.store.publish_key(&published).await?;
        let mut event = self.event(AuditKind::KeyPublished, Outcome::Allow, who);
        event.reason = Some(format!("kid {} ({}): {why}", key.kid(), key.algorithm().as_jose()));
        self.audit(event).await
    }

    /// Signs with the already published `new` from now on; retires the old
    /// key unless `retire_old` is false (it was withdrawn). Callers hold
    /// `rotating`.
    async fn switch_to(
        &self,
        new: Arc<SigningKey>,
        who: Option<&VerifiedIdentity>,
        why: &str,
        retire_old: bool,
    ) -> Result<(String, String), BrokerError> {
        let old = self.signer();
        *self.signer.write().unwrap_or_else(std::sync::PoisonError::into_inner) = new.clone();
        if retire_old {
            self.retire(&old, who, why).await?;
        }
        tracing::info!(
            event = "key_rotated",
            new_kid = new.kid(),
            old_kid = old.kid(),
            reason = why,
            "signing key rotated"
        );
        Ok((new.kid().to_owned(), old.kid().to_owned()))
    }

    /// Break-glass: ends every live task (so every live grant dies), rotates
    /// the key, and withdraws every other key from the JWKS, so no token
    /// minted before verifies anywhere, even offline. Other replicas notice
    /// their key is gone and move to a fresh one (`ensure_own_key`).
    pub async fn revoke_all(
        &self,
        who: &VerifiedIdentity,
        reason: Asked<String>,
    ) -> Result<(u64, String), BrokerError> {
        let allowed = self.authorize(who, Operation::RevokeAll).await?;
        let reason = reason?;
        let why = format!("break-glass: {reason}");
        // Keys first: from here on no earlier token verifies anywhere, even if
        // ending the tasks below is interrupted (the operator can run it again).
        let (new_kid, _) = self.replace_key(Some(who), &why, false).await?;
        // Announced on the revocation feed: connected verifiers drop the
        // keys at once, not at their next JWKS refresh.
        let now = self.clock.now();
        let withdrawal = tessera_store::KeyWithdrawal {
            reason: &why,
            now,
            not_after: now + self.settings.ttl.max.as_duration() + chrono::Duration::seconds(self.settings.leeway_secs),
        };
        let withdrawn = self.store.withdraw_keys_except(&new_kid, &withdrawal).await?;
        let mut grants = 0;
        let mut failed = Vec::new();
        // Rounds: a task started while we work is caught by the next one.
        let mut settled = false;
        // Ended (or found missing) already: `active_task_ids` may list a
        // superset, so only tasks not handled yet count as work left.
        let mut handled = std::collections::HashSet::new();
        for _ in 0..BREAK_GLASS_ROUNDS {
            let now = self.clock.now();
            let tasks: Vec<_> = self
                .store
                .active_task_ids(now)
                .await?
                .into_iter()
                .filter(|t| !handled.contains(t))
                .collect();
            if tasks.is_empty() {
                settled = true;
                break;
            }
            for task in tasks {
                match self.store.end_task(&task, TaskState::Revoked, &why, now).await {
                    Ok(ended) => {
                        grants += ended.grants_revoked;
                        handled.extend(ended.children_ended);
                        handled.insert(task);
                    }
                    // Listed but never created (a create that failed half way): nothing to end.
                    Err(StoreError::TaskNotFound(_)) => {
                        handled.insert(task);
                    }
                    Err(e) => {
                        failed.push(format!("{task}: {e}"));
                        handled.insert(task);
                    }
                }
            }
        }
        if !settled {
            // Tasks kept being started: never report that as done.
            failed.push(format!(
                "tasks kept being started; gave up after {BREAK_GLASS_ROUNDS} rounds"
            ));
        }
        let mut event = self.event(AuditKind::TaskRevoked, Outcome::Allow, Some(who));
        event.reason = Some(format!(
            "{why}; {withdrawn} keys withdrawn; new kid {new_kid}; {} tasks failed",
            failed.len()
        ));
        event.count = Some(grants);
        allowed.stamp(&mut event);
        let told = Told::RevokeAll {
            grants,
            withdrawn,
            new_kid: &new_kid,
            failed: failed.len(),
        };
        let mut success = Success::new(event, told);
        // Counted once every task ended; a partial run is run again.
        if failed.is_empty() {
            success = success.metric(Metric::Revoked("break_glass", grants));
        }
        self.succeed(success).await?;
        if let Some(first) = failed.first() {
            return Err(BrokerError::Store(StoreError::Unavailable(format!(
                "break-glass: keys withdrawn, but {} tasks could not be ended (first: {first}); run it again",
                failed.len()
            ))));
        }
        Ok((grants, new_kid))
    }

    /// If this replica's key was withdrawn (break-glass elsewhere), moves to
    /// a fresh key without re-publishing the withdrawn one.
    pub async fn ensure_own_key(&self) -> Result<(), BrokerError> {
        let kid = self.signer().kid().to_owned();
        let published = self.store.published_keys(self.clock.now()).await?;
        if published.iter().any(|k| k.jwk.kid == kid) {
            return Ok(());
        }
        tracing::warn!(kid = %kid, "this replica's signing key was withdrawn; moving to a fresh key");
        self.replace_key(None, "own key withdrawn", false).await.map(drop)
    }

    /// The JWKS: every published key still needed.
    pub async fn jwks(&self) -> Result<Jwks, BrokerError> {
        let keys = self.store.published_keys(self.clock.now()).await?;
        Ok(Jwks {
            keys: keys.into_iter().map(|k| k.jwk).collect(),
        })
    }

    /// GetJwks: the JWKS, and where each key stands as this replica sees it.
    pub async fn published_keys(&self) -> Result<PublishedKeys, BrokerError> {
        let keys = self.store.published_keys(self.clock.now()).await?;
        let current = self.signer().kid().to_owned();
        let staged = self.staged_kid().clone();
        let status = keys
            .iter()
            .map(|k| KeyStatus {
                kid: k.jwk.kid.clone(),
                state: match k.not_after {
                    Some(_) => KeyState::Retiring,
                    None if k.jwk.kid == current => KeyState::Current,
                    None if staged.as_deref() == Some(k.jwk.kid.as_str()) => KeyState::Next,
                    None => KeyState::Active,
                },
                published_at: k.published_at,
                remove_at: k.not_after,
            })
            .collect();
        Ok(PublishedKeys {
            jwks: Jwks {
                keys: keys.into_iter().map(|k| k.jwk).collect(),
            },
            status,
        })
    }

    fn staged_kid(&self) -> std::sync::MutexGuard<'_, Option<String>> {
        // INVARIANT: the guarded value is a plain Option, consistent even
        // after a panic elsewhere.
        self.staged.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The published keys and where each stands ([`Broker::published_keys`]).
#[derive(Debug, Clone)]
pub struct PublishedKeys {
    /// The JWKS.
    pub jwks: Jwks,
    /// One status per key, in the JWKS's order.
    pub status: Vec<KeyStatus>,
}

/// Where one published key stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyStatus {
    /// Its kid.
    pub kid: String,
    /// Its place in its life.
    pub state: KeyState,
    /// When it was published.
    pub published_at: chrono::DateTime<chrono::Utc>,
    /// When it leaves the JWKS; `None` while it may sign.
    pub remove_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// A published key's place in its life, as the answering replica sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyState {
    /// This replica signs with it.
    Current,
    /// Published ahead of this replica's scheduled rotation.
    Next,
    /// May sign: another replica's key.
    Active,
    /// Signs no more; kept until its last token expires.
    Retiring,
}

#[cfg(test)]
mod tests {
    use tessera_core::ErrorKind;
    use tessera_core::audit::AuditKind;

    use crate::broker::testing::{AGENT, Fixture, OPERATOR};

    async fn kids(f: &Fixture) -> Vec<String> {
        f.broker.jwks().await.unwrap().keys.into_iter().map(|k| k.kid).collect()
    }

    #[tokio::test]
    async fn a_rotation_publishes_the_new_key_first_and_keeps_the_old_one() {
        let f = Fixture::new().await;
        f.task("t1").await;
        let before = f.issue("t1", &["contacts.read"]).await;
        let (new, old) = f.broker.rotate_key(&f.who(OPERATOR), Ok("test".into())).await.unwrap();
        assert_ne!(new, old);
        assert_eq!(old, before.grant.key_id);
        let published = kids(&f).await;
        assert!(published.contains(&new) && published.contains(&old), "{published:?}");
        let after = f.issue("t1", &["contacts.read"]).await;
        assert_eq!(after.grant.key_id, new);
        assert!(
            f.broker
                .introspect(&f.who(crate::broker::testing::VERIFIER), &before.token)
                .await
                .unwrap()
                .is_some()
        );
        let kinds: Vec<_> = f.audit.records().iter().map(|r| r.event).collect();
        assert!(
            kinds.ends_with(&[AuditKind::KeyPublished, AuditKind::KeyRetired, AuditKind::TokenIssued]),
            "{kinds:?}"
        );
    }

    #[tokio::test]
    async fn get_jwks_says_which_key_signs_which_is_next_and_which_retires() {
        use super::{KeyState, KeyStatus};
        let f = std::sync::Arc::new(Fixture::new().await);
        let states = |f: std::sync::Arc<Fixture>| async move {
            let published = f.broker.published_keys().await.unwrap();
            assert_eq!(
                published.status.iter().map(|s| &s.kid).collect::<Vec<_>>(),
                published.jwks.keys.iter().map(|k| &k.kid).collect::<Vec<_>>()
            );
            published.status
        };
        let first = states(f.clone()).await;
        assert_eq!(first.iter().map(|s| s.state).collect::<Vec<_>>(), [KeyState::Current]);
        // A scheduled rotation with a long lead: its key is `next` meanwhile.
        let staged = tokio::spawn({
            let f = f.clone();
            async move { f.broker.rotate_key_staged(std::time::Duration::from_secs(3600)).await }
        });
        let mut next = None;
        for _ in 0..10_000 {
            next = states(f.clone()).await.into_iter().find(|s| s.state == KeyState::Next);
            if next.is_some() {
                break;
            }
            tokio::task::yield_now().await;
        }
        staged.abort();
        let next = next.expect("the staged key is published as next");
        assert!(next.remove_at.is_none());
        // A rotation now: the new key signs, the old one retires until its
        // last token has expired (max TTL, one hour).
        let (new, old) = f.broker.rotate_key(&f.who(OPERATOR), Ok("test".into())).await.unwrap();
        let after = states(f.clone()).await;
        let of = |kid: &str| after.iter().find(|s| s.kid == kid).cloned();
        assert_eq!(of(&new).map(|s| s.state), Some(KeyState::Current));
        let retiring: Option<KeyStatus> = of(&old);
        assert_eq!(retiring.as_ref().map(|s| s.state), Some(KeyState::Retiring));
        assert_eq!(
            retiring.and_then(|s| s.remove_at),
            Some(tessera_core::clock::Clock::now(&*f.clock) + chrono::Duration::seconds(3600))
        );
    }

    #[tokio::test]
    async fn a_retired_key_leaves_the_jwks_after_its_last_token_expired() {
        let f = Fixture::new().await;
        let (new, old) = f.broker.rotate_key(&f.who(OPERATOR), Ok("test".into())).await.unwrap();
        // Max TTL (one hour) plus no leeway.
        f.clock.advance(chrono::Duration::seconds(3599));
        assert!(kids(&f).await.contains(&old));
        f.clock.advance(chrono::Duration::seconds(2));
        assert_eq!(kids(&f).await, vec![new]);
    }

    #[tokio::test]
    async fn break_glass_ends_every_task_and_withdraws_every_other_key() {
        let f = Fixture::new().await;
        f.task("t1").await;
        let token = f.issue("t1", &["contacts.read"]).await;
        let refused = f.broker.revoke_all(&f.who(AGENT), Ok("no".into())).await;
        assert_eq!(refused.err().map(|e| e.kind()), Some(ErrorKind::PermissionDenied));
        assert_eq!(f.live("t1").await, 1);
        let (grants, new_kid) = f
            .broker
            .revoke_all(&f.who(OPERATOR), Ok("incident".into()))
            .await
            .unwrap();
        assert_eq!(grants, 1);
        assert_eq!(kids(&f).await, vec![new_kid]);
        assert_eq!(f.live("t1").await, 0);
        let verifier = f.who(crate::broker::testing::VERIFIER);
        assert!(f.broker.introspect(&verifier, &token.token).await.unwrap().is_none());
    }
}

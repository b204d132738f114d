//! Introspection without a store read: this replica follows the store's own
//! revocation feed (`GrantStore::read_revocations`, what WatchRevocations
//! serves) and keeps what is revoked in memory, with core's one feed state
//! ([`FeedState`], the SDK verifier's too), the keys it may verify with,
//! and a bounded cache of tokens it has verified.
//!
//! An answer comes from memory only when it cannot be older than
//! `[introspection] max_feed_lag` (see [`Follower::answer`]); otherwise the
//! broker reads the store as before, which fails closed. Revocations this
//! replica makes go through [`Marking`], so its own next introspection
//! reads the store until the follower has read past them: read-your-writes
//! on one replica, at most `max_feed_lag` behind across replicas.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use tessera_core::clock::Clock;
use tessera_core::grant::{Grant, GrantId};
use tessera_core::identity::SpiffeId;
use tessera_core::revocation::RevocationTarget;
use tessera_core::revocation::feed::{FeedRefusal, FeedState, Target};
use tessera_core::task::{Task, TaskId, TaskState};
use tessera_core::token::{AccessClaims, Jwk, JwsError, KeyLookup};
use tessera_store::{
    FeedBatch, FeedPosition, GrantFilter, GrantPage, GrantStore, KeyWithdrawal, PublishedKey, Quarantine, Release,
    RevokeOutcome, StoreError, TaskEnded,
};

/// Most revocations held (grants, tasks and withdrawn keys not yet past
/// their `not_after`): about 100 bytes each, so a few MB at most. One that
/// does not fit raises the sync floor instead (core's [`FeedState`]): the
/// tokens it concerns are then read from the store.
pub(crate) const MAX_REVOCATIONS: usize = 65_536;
/// Most verified tokens remembered (claims about 1 KB each: a few MB). A
/// resource server introspects the same token on every call it serves
/// during its lifetime; this spares the signature check, never the
/// revocation check.
pub(crate) const MAX_VERIFIED: usize = 4096;
/// Most events read at once; a full batch means "not caught up yet".
const MAX_BATCH: usize = 512;
/// Revocations are kept this long past `not_after`: expiry is judged on
/// whole seconds, so one second covers a `not_after` with a fraction.
const KEEP_EXTRA_SECS: i64 = 1;
/// Bounds of [`Follower::pace`].
const MIN_PACE: Duration = Duration::from_millis(1);
const MAX_PACE: Duration = Duration::from_millis(10);
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// What the follower says about one token.
#[derive(Debug)]
pub(crate) enum Answer {
    /// Live: verified, not expired, nothing revoked that concerns it.
    Live(Arc<AccessClaims>),
    /// Not live (forged, expired or revoked), whatever the store says.
    NotLive,
    /// Memory cannot answer (lagging, not synchronised, issued before the
    /// sync floor, an unknown key, a revocation of this replica not read
    /// back yet): read the store.
    Ask,
}

/// One verified token: its claims and the key that verified them.
#[derive(Debug)]
struct Verified {
    claims: Arc<AccessClaims>,
    kid: String,
    /// The sync generation in which a store read (started after that
    /// sync's head read) found the token live: a token from before the
    /// sync floor is then answered from memory too (a revocation before
    /// the head read would have shown in that read; later ones are in
    /// the feed).
    certified: Option<u64>,
}

/// The follower's memory, shared by the feed task and every introspection.
#[derive(Debug)]
pub(crate) struct Follower {
    max_lag: chrono::Duration,
    feed: RwLock<FeedState>,
    /// Keys tokens may verify with, from the store (at each sync and with
    /// every store answer); a withdrawn one is refused by the feed state.
    keys: RwLock<HashMap<String, PublishedKey>>,
    /// Verified tokens by the SHA-256 of the token.
    verified: Mutex<HashMap<[u8; 32], Verified>>,
    /// Revocations this replica has made (counted once the store answered).
    local_writes: AtomicU64,
    /// Of those, how many the last caught-up feed read started after.
    seen_writes: AtomicU64,
    /// Answers given from memory (live or not), for tests and metrics.
    answered: AtomicU64,
    /// Bumped at every sync, unsync and raise of the floor: certifications
    /// of an older generation count for nothing.
    generation: AtomicU64,
}

impl Follower {
    /// A follower whose answers may lag the store by at most `max_lag`.
    pub(crate) fn new(max_lag: Duration) -> Self {
        Self {
            max_lag: chrono::Duration::from_std(max_lag).unwrap_or(chrono::Duration::zero()),
            feed: RwLock::new(FeedState::new(MAX_REVOCATIONS, KEEP_EXTRA_SECS)),
            keys: RwLock::new(HashMap::new()),
            verified: Mutex::new(HashMap::new()),
            local_writes: AtomicU64::new(0),
            seen_writes: AtomicU64::new(0),
            answered: AtomicU64::new(0),
            generation: AtomicU64::new(0),
        }
    }

    /// How long one feed read waits for news: a quarter of the bound, so a
    /// quiet feed is still read well within it (two reads and their round
    /// trips fit).
    fn wait(&self) -> Duration {
        (self.max_lag / 4).to_std().unwrap_or(Duration::ZERO)
    }

    /// The least time between the starts of two feed reads: a hundredth of
    /// the bound, between 1 and 10 ms. Every read is a few store commands
    /// (epoch, stream info, range); under a stream of revocations (every
    /// ReleaseToken publishes one) reading on each wake would cost the
    /// store as much as the revocations themselves, while a paced read
    /// still takes in everything published meanwhile in one batch, far
    /// inside the bound. This replica's own revocations are unaffected:
    /// until a read passes them, its introspections read the store.
    fn pace(&self) -> Duration {
        (self.max_lag / 100)
            .to_std()
            .unwrap_or(Duration::ZERO)
            .clamp(MIN_PACE, MAX_PACE)
    }

    /// Answers for `token` at `now` from memory, or [`Answer::Ask`]. Memory
    /// answers only when (a) the last caught-up feed read started within
    /// `max_lag` and after every revocation this replica made, (b) the
    /// token was issued after the sync floor, (c) its key is one the store
    /// published, not withdrawn and not past its `not_after`. Expiry is
    /// judged with no leeway: introspection is authoritative.
    pub(crate) fn answer(&self, token: &str, issuer: &str, leeway_secs: i64, now: DateTime<Utc>) -> Answer {
        if self.seen_writes.load(Ordering::SeqCst) < self.local_writes.load(Ordering::SeqCst) {
            return Answer::Ask;
        }
        let feed = read(&self.feed);
        if feed.check_fresh(now, self.max_lag).is_err() {
            return Answer::Ask;
        }
        let digest = digest(token);
        let cached = lock(&self.verified)
            .get(&digest)
            .map(|v| (v.claims.clone(), v.kid.clone(), v.certified));
        let mut certified = false;
        let claims = match cached {
            Some((claims, kid, generation)) => {
                certified = generation.is_some_and(|g| g == self.generation.load(Ordering::SeqCst));
                if feed.key_withdrawn(&kid) {
                    self.answered.fetch_add(1, Ordering::Relaxed);
                    return Answer::NotLive;
                }
                if !self.key_usable(&feed, &kid, now) {
                    return Answer::Ask;
                }
                claims
            }
            None => {
                let keys = read(&self.keys);
                let lookup = Usable {
                    keys: &keys,
                    feed: &feed,
                    now,
                };
                match tessera_core::token::verify_access_token(token, &lookup, issuer, now, leeway_secs) {
                    Ok(claims) => {
                        let kid = tessera_core::token::decode_unverified(token)
                            .map(|(header, _)| header.kid)
                            .unwrap_or_default();
                        let claims = Arc::new(claims);
                        self.remember(digest, claims.clone(), kid, None, now);
                        claims
                    }
                    Err(JwsError::UnknownKey) => {
                        // Withdrawn (break-glass): nothing it signed is live,
                        // whatever else the token says.
                        let kid = tessera_core::token::decode_unverified(token).map(|(header, _)| header.kid);
                        if kid.is_ok_and(|kid| feed.key_withdrawn(&kid)) {
                            self.answered.fetch_add(1, Ordering::Relaxed);
                            return Answer::NotLive;
                        }
                        // A key this replica has not loaded yet (another
                        // replica's, just rotated): the store knows it.
                        return Answer::Ask;
                    }
                    Err(e) => {
                        super::verifier::log_rejected(&e);
                        self.answered.fetch_add(1, Ordering::Relaxed);
                        return Answer::NotLive;
                    }
                }
            }
        };
        let answer = if claims.exp <= now.timestamp() {
            Answer::NotLive
        } else {
            let ancestors = claims.tessera_chain.iter().map(|hop| hop.jti.as_str());
            // Certified live by a store read of this generation: the floor is passed.
            let iat = if certified { i64::MAX } else { claims.iat };
            match feed.check_token(iat, &claims.jti, &claims.task_id, ancestors) {
                Ok(()) => Answer::Live(claims),
                Err(FeedRefusal::IssuedBeforeSync) => return Answer::Ask,
                // Revoked (and any refusal core adds later): not live.
                Err(_) => Answer::NotLive,
            }
        };
        self.answered.fetch_add(1, Ordering::Relaxed);
        answer
    }

    fn key_usable(&self, feed: &FeedState, kid: &str, now: DateTime<Utc>) -> bool {
        !feed.key_withdrawn(kid)
            && read(&self.keys)
                .get(kid)
                .is_some_and(|k| k.not_after.is_none_or(|t| t > now))
    }

    /// Remembers a verified token; a full cache first drops expired
    /// tokens, and is emptied if that was not enough.
    fn remember(
        &self,
        digest: [u8; 32],
        claims: Arc<AccessClaims>,
        kid: String,
        certified: Option<u64>,
        now: DateTime<Utc>,
    ) {
        let mut verified = lock(&self.verified);
        if verified.len() >= MAX_VERIFIED {
            let now = now.timestamp();
            verified.retain(|_, v| v.claims.exp > now);
            if verified.len() >= MAX_VERIFIED {
                verified.clear();
            }
        }
        verified.insert(digest, Verified { claims, kid, certified });
    }

    /// The sync generation now: read it before a store read whose "live"
    /// answer is then given to [`Follower::certify`].
    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    /// A store read that started in sync generation `generation` found
    /// `token` (with `claims`) live: from memory on, it is answered
    /// whatever its `iat` (see [`Verified::certified`]).
    pub(crate) fn certify(&self, token: &str, claims: &AccessClaims, generation: u64, now: DateTime<Utc>) {
        if generation != self.generation() || !read(&self.feed).is_synced() {
            return;
        }
        let Ok((header, _)) = tessera_core::token::decode_unverified(token) else {
            return;
        };
        self.remember(
            digest(token),
            Arc::new(claims.clone()),
            header.kid,
            Some(generation),
            now,
        );
    }

    /// The keys the store answered with (an introspection that read it):
    /// a key rotated in on another replica is usable from now on.
    pub(crate) fn learn_keys(&self, keys: &[PublishedKey]) {
        let fresh: HashMap<String, PublishedKey> = keys.iter().map(|k| (k.jwk.kid.clone(), k.clone())).collect();
        let mut held = write(&self.keys);
        if held.len() != fresh.len() || fresh.keys().any(|kid| !held.contains_key(kid)) {
            *held = fresh;
        }
    }

    /// Answers given from memory so far.
    #[cfg(test)]
    pub(crate) fn answered(&self) -> u64 {
        self.answered.load(Ordering::Relaxed)
    }

    /// A revocation by this replica reached the store (or may have): until
    /// the feed is read past it, introspection reads the store.
    fn marked(&self) {
        self.local_writes.fetch_add(1, Ordering::SeqCst);
    }

    /// One step of following: a fresh subscription when `position` is
    /// `None` (the head, then the keys: the sync floor is after both), else
    /// one read of the feed after `position`, waiting up to `wait`. A lost
    /// position (OUT_OF_RANGE: trimmed, or another life of the store)
    /// unsynchronises the follower, so every answer reads the store until
    /// the next step resubscribes.
    pub(crate) async fn step(
        &self,
        store: &dyn GrantStore,
        clock: &dyn Clock,
        position: &mut Option<FeedPosition>,
        wait: Duration,
    ) -> Result<(), StoreError> {
        // Snapshot before the read starts: a revocation counted here is
        // in the store already, so the read below sees it.
        let writes = self.local_writes.load(Ordering::SeqCst);
        let started = clock.now();
        let Some(after) = position.as_ref() else {
            let head = store.read_revocations(None, 1, Duration::ZERO).await?.head;
            let keys = store.published_keys(clock.now()).await?;
            let floor = clock.now();
            *write(&self.keys) = keys.into_iter().map(|k| (k.jwk.kid.clone(), k)).collect();
            lock(&self.verified).clear();
            write(&self.feed).synced(floor, started);
            // After the head read: a store read certified with this
            // generation started after it.
            self.generation.fetch_add(1, Ordering::SeqCst);
            self.seen_writes.fetch_max(writes, Ordering::SeqCst);
            tracing::info!(position = %head, "introspection: following the revocation feed");
            *position = Some(head);
            return Ok(());
        };
        let batch = match store.read_revocations(Some(after), MAX_BATCH, wait).await {
            Ok(batch) => batch,
            Err(StoreError::PositionExpired(_) | StoreError::BadPosition(_)) => {
                tracing::warn!("introspection: revocation feed position lost; reading the store until resynchronised");
                self.unsync(position);
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        self.apply(&batch, clock.now());
        let caught_up = batch.events.len() < MAX_BATCH;
        *position = Some(batch.head);
        if caught_up {
            write(&self.feed).heard(started);
            self.seen_writes.fetch_max(writes, Ordering::SeqCst);
        }
        Ok(())
    }

    /// Every answer reads the store until the next step resubscribes
    /// (with a new sync floor).
    fn unsync(&self, position: &mut Option<FeedPosition>) {
        write(&self.feed).lost();
        self.generation.fetch_add(1, Ordering::SeqCst);
        lock(&self.verified).clear();
        *position = None;
    }

    fn apply(&self, batch: &FeedBatch, now: DateTime<Utc>) {
        let mut feed = write(&self.feed);
        let floor = feed.floor();
        for event in &batch.events {
            let r = &event.revocation;
            let target = match &r.target {
                RevocationTarget::Grant(id) => Target::Grant(id.to_string()),
                RevocationTarget::Task(id) => Target::Task(id.to_string()),
                RevocationTarget::Key(kid) => {
                    // Withdrawn: no cached token of it may answer again.
                    lock(&self.verified).clear();
                    Target::Key(kid.clone())
                }
            };
            feed.revoke(target, r.not_after, r.revoked_at, now);
        }
        if feed.floor() != floor {
            // Full: a dropped revocation may concern a certified token.
            self.generation.fetch_add(1, Ordering::SeqCst);
        }
        feed.prune(now);
    }

    /// Follows the feed until the task is aborted: on a store error or a
    /// read that hangs it resubscribes, with backoff (answers read the
    /// store meanwhile).
    pub(crate) async fn run(self: Arc<Self>, store: Arc<dyn GrantStore>, clock: Arc<dyn Clock>) {
        let wait = self.wait();
        let pace = self.pace();
        // A read that hangs (a black-holed store) is abandoned and retried.
        let bound = wait + Duration::from_secs(2);
        let mut position = None;
        let mut backoff = FIRST_BACKOFF;
        loop {
            let started = tokio::time::Instant::now();
            match tokio::time::timeout(bound, self.step(&*store, &*clock, &mut position, wait)).await {
                Ok(Ok(())) => {
                    backoff = FIRST_BACKOFF;
                    tokio::time::sleep_until(started + pace).await;
                    continue;
                }
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "introspection: reading the revocation feed failed; resubscribing");
                }
                Err(_) => tracing::warn!("introspection: reading the revocation feed timed out; resubscribing"),
            }
            // A failed read may hide a failover that lost writes the feed
            // does not show (a grant record the old primary acknowledged):
            // start again from a new floor, so every token issued before
            // is read from the store, where such a grant is unknown.
            self.unsync(&mut position);
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }
}

/// The follower's keys as core's verification looks them up: withdrawn
/// and expired ones are not there.
struct Usable<'a> {
    keys: &'a HashMap<String, PublishedKey>,
    feed: &'a FeedState,
    now: DateTime<Utc>,
}

impl KeyLookup for Usable<'_> {
    fn key(&self, kid: &str) -> Option<&Jwk> {
        if self.feed.key_withdrawn(kid) {
            return None;
        }
        self.keys
            .get(kid)
            .filter(|k| k.not_after.is_none_or(|t| t > self.now))
            .map(|k| &k.jwk)
    }
}

fn digest(token: &str) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, token.as_bytes()).as_ref());
    out
}

fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(PoisonError::into_inner)
}

fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(PoisonError::into_inner)
}

fn lock<T>(lock: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    lock.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The broker's store with its revocations counted: every call that can
/// revoke tells the follower once the store has answered (an error too:
/// the write may have landed), so this replica's next introspection reads
/// the store until the feed has been read past it. Everything else passes
/// through.
pub(crate) struct Marking {
    inner: Arc<dyn GrantStore>,
    follower: Arc<Follower>,
}

impl Marking {
    pub(crate) fn new(inner: Arc<dyn GrantStore>, follower: Arc<Follower>) -> Self {
        Self { inner, follower }
    }
}

#[async_trait]
impl GrantStore for Marking {
    async fn create_task(&self, task: &Task) -> Result<(), StoreError> {
        self.inner.create_task(task).await
    }

    async fn task(&self, id: &TaskId) -> Result<Option<Task>, StoreError> {
        self.inner.task(id).await
    }

    async fn live_grants(&self, id: &TaskId, now: DateTime<Utc>) -> Result<u64, StoreError> {
        self.inner.live_grants(id, now).await
    }

    async fn new_grant_id(&self, task: &TaskId) -> Result<GrantId, StoreError> {
        self.inner.new_grant_id(task).await
    }

    async fn record_grant(&self, grant: &Grant, now: DateTime<Utc>) -> Result<(), StoreError> {
        self.inner.record_grant(grant, now).await
    }

    async fn grant(&self, id: &GrantId) -> Result<Option<Grant>, StoreError> {
        self.inner.grant(id).await
    }

    async fn revoke_grant(
        &self,
        id: &GrantId,
        reason: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<RevokeOutcome>, StoreError> {
        let out = self.inner.revoke_grant(id, reason, now).await;
        self.follower.marked();
        out
    }

    async fn release_grant(
        &self,
        id: &GrantId,
        holder: &SpiffeId,
        reason: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<Release>, StoreError> {
        let out = self.inner.release_grant(id, holder, reason, now).await;
        self.follower.marked();
        out
    }

    async fn end_task(
        &self,
        id: &TaskId,
        state: TaskState,
        reason: &str,
        now: DateTime<Utc>,
    ) -> Result<TaskEnded, StoreError> {
        let out = self.inner.end_task(id, state, reason, now).await;
        self.follower.marked();
        out
    }

    async fn read_revocations(
        &self,
        after: Option<&FeedPosition>,
        max: usize,
        wait: Duration,
    ) -> Result<FeedBatch, StoreError> {
        self.inner.read_revocations(after, max, wait).await
    }

    async fn list_grants(
        &self,
        filter: &GrantFilter,
        after: Option<&str>,
        limit: usize,
        now: DateTime<Utc>,
    ) -> Result<GrantPage, StoreError> {
        self.inner.list_grants(filter, after, limit, now).await
    }

    async fn revoke_subject(&self, subject: &SpiffeId, reason: &str, now: DateTime<Utc>) -> Result<u64, StoreError> {
        let out = self.inner.revoke_subject(subject, reason, now).await;
        self.follower.marked();
        out
    }

    async fn active_task_ids(&self, now: DateTime<Utc>) -> Result<Vec<TaskId>, StoreError> {
        self.inner.active_task_ids(now).await
    }

    async fn withdraw_keys_except(&self, keep: &str, withdrawal: &KeyWithdrawal<'_>) -> Result<u64, StoreError> {
        let out = self.inner.withdraw_keys_except(keep, withdrawal).await;
        self.follower.marked();
        out
    }

    async fn publish_key(&self, key: &PublishedKey) -> Result<(), StoreError> {
        self.inner.publish_key(key).await
    }

    async fn published_keys(&self, now: DateTime<Utc>) -> Result<Vec<PublishedKey>, StoreError> {
        self.inner.published_keys(now).await
    }

    async fn keys_and_grant(
        &self,
        id: &GrantId,
        now: DateTime<Utc>,
    ) -> Result<(Vec<PublishedKey>, Option<Grant>), StoreError> {
        self.inner.keys_and_grant(id, now).await
    }

    async fn disable_subject(&self, subject: &SpiffeId, reason: &str, now: DateTime<Utc>) -> Result<bool, StoreError> {
        self.inner.disable_subject(subject, reason, now).await
    }

    async fn enable_subject(&self, subject: &SpiffeId) -> Result<bool, StoreError> {
        self.inner.enable_subject(subject).await
    }

    async fn disabled_subjects(&self) -> Result<std::collections::BTreeSet<SpiffeId>, StoreError> {
        self.inner.disabled_subjects().await
    }

    async fn subject_disabled(&self, subject: &SpiffeId) -> Result<bool, StoreError> {
        self.inner.subject_disabled(subject).await
    }

    async fn quarantine_subject(
        &self,
        subject: &SpiffeId,
        until: DateTime<Utc>,
        why: &str,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        self.inner.quarantine_subject(subject, until, why, now).await
    }

    async fn quarantined_subjects(&self, now: DateTime<Utc>) -> Result<Vec<Quarantine>, StoreError> {
        self.inner.quarantined_subjects(now).await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.inner.ping().await
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use tessera_core::delegation::DelegationRequest;
    use tessera_core::task::{TaskId, TaskState};
    use tessera_store::{GrantStore, KeyWithdrawal};

    use crate::broker::testing::{AGENT, AGENT2, Fixture, OPERATOR, ORCHESTRATOR, VERIFIER, id, scope};

    /// A follower synchronised one second before now, so tokens issued
    /// from here on are after its sync floor.
    async fn synced() -> (Fixture, Option<tessera_store::FeedPosition>) {
        let f = Fixture::with_follower().await;
        f.task("t1").await;
        let mut position = None;
        f.follow(&mut position).await;
        f.clock.advance(chrono::Duration::seconds(1));
        (f, position)
    }

    async fn active(f: &Fixture, token: &str) -> bool {
        f.broker.introspect(&f.who(VERIFIER), token).await.unwrap().is_some()
    }

    #[tokio::test]
    async fn a_fresh_follower_answers_from_memory_and_a_revocation_here_counts_at_once() {
        for how in ["revoke", "release", "complete"] {
            let (f, mut position) = synced().await;
            let issued = f.issue("t1", &["contacts.read"]).await;
            f.follow(&mut position).await;
            assert!(active(&f, &issued.token).await);
            assert!(active(&f, &issued.token).await, "again, from the verified-token cache");
            assert_eq!(f.broker.answered_from_memory(), 2, "{how}: both from memory");
            match how {
                "revoke" => {
                    f.broker
                        .revoke_grant(&f.who(OPERATOR), &issued.grant.id, "x")
                        .await
                        .unwrap();
                }
                "release" => {
                    f.broker.release(&f.who(AGENT), &issued.grant.id).await.unwrap();
                }
                _ => {
                    f.broker
                        .end_task(
                            &f.who(ORCHESTRATOR),
                            &TaskId::parse("t1").unwrap(),
                            TaskState::Completed,
                            "done",
                        )
                        .await
                        .unwrap();
                }
            }
            // Not read back from the feed yet: the store answers.
            assert!(!active(&f, &issued.token).await, "{how}: inactive at once");
            assert_eq!(f.broker.answered_from_memory(), 2);
            f.follow(&mut position).await;
            assert!(!active(&f, &issued.token).await, "{how}: inactive from memory");
            assert_eq!(f.broker.answered_from_memory(), 3);
        }
    }

    #[tokio::test]
    async fn a_revocation_elsewhere_counts_within_the_bound_and_a_lagging_follower_reads_the_store() {
        let (f, mut position) = synced().await;
        let issued = f.issue("t1", &["contacts.read"]).await;
        let other = f.issue("t1", &["notes.read"]).await;
        f.follow(&mut position).await;
        assert!(active(&f, &issued.token).await);
        // Another replica revokes (straight in the store, not through this broker).
        f.store
            .revoke_grant(&issued.grant.id, "elsewhere", f.broker.now())
            .await
            .unwrap();
        // Past the bound without a feed read: the store answers, for both.
        f.clock.advance(chrono::Duration::milliseconds(1001));
        let before = f.broker.answered_from_memory();
        assert!(!active(&f, &issued.token).await, "never a stale active past the bound");
        assert!(active(&f, &other.token).await);
        assert_eq!(f.broker.answered_from_memory(), before, "both read the store");
        // Read again: memory answers, and knows the revocation.
        f.follow(&mut position).await;
        assert!(!active(&f, &issued.token).await);
        assert!(active(&f, &other.token).await);
        assert_eq!(f.broker.answered_from_memory(), before + 2);
    }

    #[tokio::test]
    async fn without_a_feed_read_every_answer_reads_the_store() {
        let f = Fixture::with_follower().await;
        f.task("t1").await;
        let issued = f.issue("t1", &["contacts.read"]).await;
        assert!(active(&f, &issued.token).await);
        f.store
            .revoke_grant(&issued.grant.id, "x", f.broker.now())
            .await
            .unwrap();
        assert!(!active(&f, &issued.token).await);
        assert_eq!(f.broker.answered_from_memory(), 0);
    }

    #[tokio::test]
    async fn a_token_issued_before_the_sync_floor_is_read_from_the_store_once() {
        let f = Fixture::with_follower().await;
        f.task("t1").await;
        let issued = f.issue("t1", &["contacts.read"]).await;
        let kept = f.issue("t1", &["contacts.read"]).await;
        let revoked = f.issue("t1", &["contacts.read"]).await;
        // Revoked before the follower starts: only the store knows.
        f.store
            .revoke_grant(&revoked.grant.id, "x", f.broker.now())
            .await
            .unwrap();
        let mut position = None;
        f.follow(&mut position).await;
        f.clock.advance(chrono::Duration::seconds(1));
        f.follow(&mut position).await;
        assert!(active(&f, &issued.token).await);
        assert!(active(&f, &kept.token).await);
        assert!(!active(&f, &revoked.token).await);
        assert_eq!(f.broker.answered_from_memory(), 0, "all from the store");
        // The store found them live after the sync: from memory from now
        // on, and a later revocation reaches them through the feed.
        assert!(active(&f, &issued.token).await);
        assert!(!active(&f, &revoked.token).await, "never certified: the store again");
        assert_eq!(f.broker.answered_from_memory(), 1);
        f.store
            .revoke_grant(&issued.grant.id, "x", f.broker.now())
            .await
            .unwrap();
        f.follow(&mut position).await;
        assert!(!active(&f, &issued.token).await);
        assert_eq!(f.broker.answered_from_memory(), 2);
        // A resubscription voids the certification: the store again, once.
        let mut lost = Some(tessera_store::FeedPosition::new("0:999999"));
        f.follow(&mut lost).await;
        assert!(lost.is_none(), "a position from no life of the store is lost");
        f.follow(&mut lost).await;
        assert!(active(&f, &kept.token).await);
        assert_eq!(
            f.broker.answered_from_memory(),
            2,
            "read from the store after the resubscription"
        );
        assert!(active(&f, &kept.token).await);
        assert_eq!(f.broker.answered_from_memory(), 3);
    }

    #[tokio::test]
    async fn a_child_dies_with_its_parent_in_memory_too() {
        let (f, mut position) = synced().await;
        let parent = f.issue("t1", &["contacts.read"]).await;
        let request = DelegationRequest {
            tools: None,
            delegate: id(AGENT2),
            scopes: BTreeSet::from([scope("contacts.read")]),
            ttl: None,
            audience: None,
            task_id: None,
        };
        let child = f
            .broker
            .delegate_token(&f.who(AGENT), &parent.token, &request)
            .await
            .unwrap();
        f.follow(&mut position).await;
        assert!(active(&f, &child.token).await);
        // Revoked elsewhere: only the feed tells this replica.
        f.store
            .revoke_grant(&parent.grant.id, "x", f.broker.now())
            .await
            .unwrap();
        f.follow(&mut position).await;
        let before = f.broker.answered_from_memory();
        assert!(!active(&f, &child.token).await);
        assert_eq!(f.broker.answered_from_memory(), before + 1, "from memory");
    }

    #[tokio::test]
    async fn a_withdrawn_key_is_refused_at_once_and_leaves_the_cache() {
        let (f, mut position) = synced().await;
        let issued = f.issue("t1", &["contacts.read"]).await;
        f.follow(&mut position).await;
        assert!(active(&f, &issued.token).await, "verified and cached");
        // Withdrawn elsewhere (the other replica's break-glass): the feed says so.
        let now = f.broker.now();
        let withdrawal = KeyWithdrawal {
            reason: "break-glass",
            now,
            not_after: now + chrono::Duration::hours(2),
        };
        f.store.withdraw_keys_except("another", &withdrawal).await.unwrap();
        f.follow(&mut position).await;
        assert!(!active(&f, &issued.token).await);

        // Break-glass on this replica: inactive at once.
        let (f, mut position) = synced().await;
        let issued = f.issue("t1", &["contacts.read"]).await;
        f.follow(&mut position).await;
        assert!(active(&f, &issued.token).await);
        f.broker.revoke_all(&f.who(OPERATOR), Ok("test".into())).await.unwrap();
        assert!(!active(&f, &issued.token).await, "at once");
        f.follow(&mut position).await;
        assert!(!active(&f, &issued.token).await);
    }

    #[tokio::test]
    async fn expiry_is_judged_with_no_leeway_on_a_cached_token() {
        let (f, mut position) = synced().await;
        let issued = f.issue("t1", &["contacts.read"]).await;
        f.follow(&mut position).await;
        assert!(active(&f, &issued.token).await);
        f.clock.set(issued.grant.expires_at);
        f.follow(&mut position).await;
        assert!(!active(&f, &issued.token).await);
    }

    #[tokio::test]
    async fn the_follower_answers_only_for_audiences_a_verifier_serves() {
        let (f, mut position) = synced().await;
        let issued = f.issue("t1", &["contacts.read"]).await;
        f.follow(&mut position).await;
        let stranger = f.who(crate::broker::testing::VERIFIER2);
        assert!(f.broker.introspect(&stranger, &issued.token).await.unwrap().is_none());
        assert!(active(&f, &issued.token).await);
        assert_eq!(f.broker.answered_from_memory(), 2);
    }
}

//! The operator console's sign-in and sessions (OpenConsole, and what the
//! console's HTTPS pages call before every use case).
//!
//! An operator attested as usual (its SVID over gRPC) asks for a one-time
//! code; the console's sign-in page exchanges it, once and before it
//! expires, for a session cookie bound to that identity. Only identities
//! policy lets list approvals (approvers and operators) get a code or a
//! session; every page then calls the same use case as the gRPC API, as the
//! session's identity, so Cedar decides what it shows and allows.
//!
//! Codes, session cookies and CSRF tokens are 256-bit values from ring's
//! `SystemRandom`; the broker keeps only their SHA-256 (a code or cookie is
//! never logged, audited or shown back). Sessions live in this replica's
//! memory: a cookie from another broker or replica is unknown here, and a
//! restart signs everyone out. A session ends at sign-out, at its expiry
//! (never later than the operator certificate it was opened with), and at
//! once when its identity is disabled, quarantined, removed from the
//! registry or given other roles ([`Broker::prune_console_sessions`], called
//! by each of those): a later re-enable does not bring it back. Every
//! request also re-attests the session's identity, as the gRPC port does.

use std::collections::HashMap;
use std::sync::Mutex;

use base64::Engine as _;
use chrono::{DateTime, Utc};
use ring::rand::SecureRandom as _;
use tessera_core::ErrorKind;
use tessera_core::audit::{AuditKind, Outcome};
use tessera_core::identity::{AttestationMethod, SpiffeId, VerifiedIdentity};
use tessera_core::policy::Operation;

use super::{Broker, BrokerError};

/// Most sign-in codes outstanding at once (expired ones are dropped first).
const MAX_CODES: usize = 1024;
/// Most sign-in codes one identity may have outstanding: one operator
/// (or a stolen operator certificate) cannot use up the global cap.
pub const MAX_CODES_PER_IDENTITY: usize = 8;
/// Most sessions at once (expired ones are dropped first).
const MAX_SESSIONS: usize = 4096;

/// How the console signs people in (`[console]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsoleSettings {
    /// The console's base URL as browsers reach it (no trailing `/`), e.g.
    /// `https://tessera.example.org`; sign-in URLs and the `Origin` every
    /// POST must carry derive from it.
    pub public_url: String,
    /// How long a sign-in code may wait to be used.
    pub code_ttl: chrono::Duration,
    /// How long a session lasts from sign-in.
    pub session_ttl: chrono::Duration,
}

/// Why a console sign-in or session was refused. Messages never carry a
/// code or cookie.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConsoleError {
    /// `[console] enabled = false`.
    #[error("the operator console is switched off on this broker")]
    Off,
    /// The code is unknown, already used or expired.
    #[error("sign-in code unknown, already used or expired: run `tessera console` again")]
    CodeRefused,
    /// The cookie names no live session of this broker.
    #[error("no console session: it ended, expired, or was opened on another broker; sign in again")]
    NoSession,
    /// Too many codes or sessions outstanding.
    #[error("too many console sign-ins outstanding; try again later")]
    Full,
    /// Too many codes outstanding for this one identity.
    #[error("too many console sign-in codes outstanding for this identity; use one or wait until they expire")]
    FullForIdentity,
}

impl ConsoleError {
    /// Transport-free classification.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::Off => ErrorKind::FailedPrecondition,
            Self::CodeRefused | Self::NoSession => ErrorKind::Unauthenticated,
            Self::Full | Self::FullForIdentity => ErrorKind::ResourceExhausted,
        }
    }
}

/// A one-time sign-in code. Its `Debug` leaves the URL (which holds the code) out.
pub struct ConsoleCode {
    /// The sign-in URL, the code in its fragment (`#code=`), which browsers
    /// never send to a server, so no proxy's access log holds it. A secret
    /// until used.
    pub url: String,
    /// When the code stops working.
    pub expires_at: DateTime<Utc>,
}

impl std::fmt::Debug for ConsoleCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsoleCode")
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

/// A new session: the cookie to set. Its `Debug` leaves the cookie out.
pub struct ConsoleSignIn {
    /// The cookie's value. A secret: never logged or rendered.
    pub cookie: String,
    /// When the session ends.
    pub expires_at: DateTime<Utc>,
}

impl std::fmt::Debug for ConsoleSignIn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsoleSignIn")
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

/// The identity behind a live session, re-attested for this request.
pub struct ConsoleCaller {
    /// The operator, as if it had called over gRPC.
    pub who: VerifiedIdentity,
    /// The session's public name (`cs_<hex>`), as audit records give it.
    pub session: String,
    /// The session's CSRF token, for the forms of the page being rendered.
    pub csrf: String,
    /// When the session ends.
    pub expires_at: DateTime<Utc>,
}

impl std::fmt::Debug for ConsoleCaller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsoleCaller")
            .field("who", &self.who.id())
            .field("session", &self.session)
            .finish_non_exhaustive()
    }
}

/// Who a code or session stands for.
#[derive(Clone)]
struct Bound {
    id: SpiffeId,
    method: AttestationMethod,
    evidence: String,
    /// The registry entry at OpenConsole: a session ends when the entry is
    /// removed or changes (other roles), whatever it changes back to.
    entry: tessera_core::identity::Identity,
    expires_at: DateTime<Utc>,
    /// The end of the credential OpenConsole was called with (an X.509
    /// SVID's notAfter): no session outlives it.
    not_after: Option<DateTime<Utc>>,
}

#[derive(Clone)]
struct Session {
    bound: Bound,
    csrf: String,
    public: String,
}

#[derive(Default)]
struct State {
    /// SHA-256 of a code → who it signs in.
    codes: HashMap<[u8; 32], Bound>,
    /// SHA-256 of a cookie → its session.
    sessions: HashMap<[u8; 32], Session>,
}

/// Codes and sessions of this replica.
pub(crate) struct Console {
    settings: ConsoleSettings,
    state: Mutex<State>,
}

tokio::task_local! {
    /// The console session a request came through, stamped on every audit
    /// record the use cases write while serving it (see `Broker::event`).
    static SESSION: String;
}

/// The console session of the request being served, if any.
pub fn current_session() -> Option<String> {
    SESSION.try_with(Clone::clone).ok()
}

/// Runs `f` (one console request) as coming through `session`.
pub async fn in_session<F: std::future::Future>(session: String, f: F) -> F::Output {
    SESSION.scope(session, f).await
}

/// 256 random bits, base64url.
fn secret() -> Result<String, BrokerError> {
    let mut bytes = [0u8; 32];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| BrokerError::Random(tessera_core::grant::RandomError))?;
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
}

/// `at`, or `limit` if that comes first.
fn capped(at: DateTime<Utc>, limit: Option<DateTime<Utc>>) -> DateTime<Utc> {
    limit.map_or(at, |limit| at.min(limit))
}

fn digest(secret: &str) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, secret.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// Whether two secrets are equal, in time independent of where they
/// differ: their SHA-256 digests (fixed length, so lengths leak nothing
/// either) are compared byte by byte without an early exit.
pub fn same_secret(a: &str, b: &str) -> bool {
    let (a, b) = (digest(a), digest(b));
    a.iter().zip(b.iter()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Console {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Broker {
    /// Serves the operator console with `settings` (`None`: switched off,
    /// and OpenConsole answers FAILED_PRECONDITION).
    #[must_use]
    pub fn with_console(mut self, settings: Option<ConsoleSettings>) -> Self {
        self.console = settings.map(|settings| Console {
            settings,
            state: Mutex::new(State::default()),
        });
        self
    }

    /// The console's settings, when it is on.
    pub fn console_settings(&self) -> Option<&ConsoleSettings> {
        self.console.as_ref().map(|c| &c.settings)
    }

    fn console(&self) -> Result<&Console, BrokerError> {
        self.console.as_ref().ok_or(BrokerError::Console(ConsoleError::Off))
    }

    /// OpenConsole: a one-time sign-in code for `who`, if policy lets it
    /// list approvals (the console's first page). `not_after` is when the
    /// credential `who` attested with expires (an X.509 SVID's notAfter):
    /// neither the code nor the session outlives it.
    pub async fn open_console(
        &self,
        who: &VerifiedIdentity,
        not_after: Option<DateTime<Utc>>,
    ) -> Result<ConsoleCode, BrokerError> {
        self.authorize(who, Operation::ListApprovals).await?;
        let console = self.console()?;
        let code = secret()?;
        let now = self.clock.now();
        let expires_at = capped(now + console.settings.code_ttl, not_after);
        {
            let mut state = console.state();
            state.codes.retain(|_, b| b.expires_at > now);
            if state.codes.len() >= MAX_CODES {
                return Err(ConsoleError::Full.into());
            }
            if state.codes.values().filter(|b| b.id == *who.id()).count() >= MAX_CODES_PER_IDENTITY {
                return Err(ConsoleError::FullForIdentity.into());
            }
            state.codes.insert(
                digest(&code),
                Bound {
                    id: who.id().clone(),
                    method: who.method(),
                    evidence: who.evidence().to_owned(),
                    entry: who.identity().clone(),
                    expires_at,
                    not_after,
                },
            );
        }
        tracing::info!(event = "console_code", identity = %who.id(), %expires_at, "console sign-in code issued");
        Ok(ConsoleCode {
            url: format!("{}/console/signin#code={code}", console.settings.public_url),
            expires_at,
        })
    }

    /// Whom a sign-in code would sign in, without spending it: the sign-in
    /// page names the identity before the person confirms, so that a link
    /// someone else sent cannot sign them in as the sender unnoticed.
    pub fn console_code_identity(&self, code: &str) -> Result<SpiffeId, BrokerError> {
        let console = self.console()?;
        let now = self.clock.now();
        console
            .state()
            .codes
            .get(&digest(code))
            .filter(|b| b.expires_at > now)
            .map(|b| b.id.clone())
            .ok_or_else(|| ConsoleError::CodeRefused.into())
    }

    /// Spends a sign-in code without signing anyone in: one that travelled
    /// where it may have been logged (a URL's query string). Returns whether
    /// there was such a code.
    pub fn console_discard_code(&self, code: &str) -> bool {
        self.console
            .as_ref()
            .is_some_and(|c| c.state().codes.remove(&digest(code)).is_some())
    }

    /// Ends at once every console session (and drops every sign-in code)
    /// whose identity is now disabled, quarantined, removed from the
    /// registry, or registered differently (other roles) than when it
    /// signed in. Called by every change of those (disable, quarantine, a
    /// registry reload, the shared refresh from other replicas), so that a
    /// re-enable afterwards does not revive anything. Returns how many
    /// sessions ended.
    pub fn prune_console_sessions(&self) -> usize {
        let Some(console) = &self.console else {
            return 0;
        };
        let ids: std::collections::BTreeSet<SpiffeId> = {
            let state = console.state();
            state
                .sessions
                .values()
                .map(|s| &s.bound)
                .chain(state.codes.values())
                .map(|b| b.id.clone())
                .collect()
        };
        // Decided outside the console's lock: the registry and the
        // quarantine list have locks of their own.
        let gone: std::collections::BTreeMap<SpiffeId, Option<tessera_core::identity::Identity>> = ids
            .into_iter()
            .map(|id| {
                let entry = self
                    .registry
                    .lookup(&id)
                    .ok()
                    .filter(|_| self.refuse_if_quarantined(&id).is_ok());
                (id, entry)
            })
            .collect();
        let keep = |b: &Bound| gone.get(&b.id).is_some_and(|e| e.as_ref() == Some(&b.entry));
        let mut state = console.state();
        state.codes.retain(|_, b| keep(b));
        let before = state.sessions.len();
        state.sessions.retain(|_, s| {
            let kept = keep(&s.bound);
            if !kept {
                tracing::info!(event = "console_session_ended", session = %s.public, identity = %s.bound.id, "console session ended: its identity was disabled, quarantined, removed or changed");
            }
            kept
        });
        before - state.sessions.len()
    }

    /// Exchanges a sign-in code (once: it is spent whatever happens next)
    /// for a session of its identity, if that identity is still enabled,
    /// not quarantined, and allowed by policy. Audited as `console_sign_in`.
    pub async fn console_sign_in(&self, code: &str) -> Result<ConsoleSignIn, BrokerError> {
        let console = self.console()?;
        let now = self.clock.now();
        let bound = console
            .state()
            .codes
            .remove(&digest(code))
            .filter(|b| b.expires_at > now)
            .ok_or(ConsoleError::CodeRefused)?;
        let who = self.attest_by(&bound.id, bound.method, bound.evidence.clone())?;
        if *who.identity() != bound.entry {
            // Registered differently since OpenConsole (a reload): ask again.
            return Err(ConsoleError::CodeRefused.into());
        }
        self.admit(&who).await?;
        let allowed = self.authorize(&who, Operation::ListApprovals).await?;
        let cookie = secret()?;
        let key = digest(&cookie);
        let public = format!("cs_{}", tessera_core::hex::lower(key.get(..6).unwrap_or_default()));
        let expires_at = capped(now + console.settings.session_ttl, bound.not_after);
        let session = Session {
            bound: Bound { expires_at, ..bound },
            csrf: secret()?,
            public: public.clone(),
        };
        {
            let mut state = console.state();
            state.sessions.retain(|_, s| s.bound.expires_at > now);
            if state.sessions.len() >= MAX_SESSIONS {
                return Err(ConsoleError::Full.into());
            }
            state.sessions.insert(key, session);
        }
        let mut event = self.event(AuditKind::ConsoleSignIn, Outcome::Allow, Some(&who));
        event.console_session = Some(public.clone());
        event.reason = Some(format!("operator console session until {expires_at}"));
        allowed.stamp(&mut event);
        if let Err(e) = self.audit(event).await {
            // INVARIANT: no session without its audit record.
            console.state().sessions.remove(&key);
            return Err(e);
        }
        tracing::info!(event = "console_sign_in", identity = %who.id(), session = %public, "console session opened");
        Ok(ConsoleSignIn { cookie, expires_at })
    }

    /// The caller behind a session cookie, re-attested now: a session of
    /// an identity disabled (or removed) or quarantined since is ended.
    pub async fn console_caller(&self, cookie: &str) -> Result<ConsoleCaller, BrokerError> {
        let console = self.console()?;
        let now = self.clock.now();
        let key = digest(cookie);
        let session = {
            let mut state = console.state();
            match state.sessions.get(&key) {
                Some(s) if s.bound.expires_at > now => s.clone(),
                Some(_) => {
                    state.sessions.remove(&key);
                    return Err(ConsoleError::NoSession.into());
                }
                None => return Err(ConsoleError::NoSession.into()),
            }
        };
        let b = &session.bound;
        let end = |e: BrokerError| {
            console.state().sessions.remove(&key);
            tracing::info!(event = "console_session_ended", session = %session.public, reason = %e, "console session ended");
            e
        };
        let who = self.attest_by(&b.id, b.method, b.evidence.clone()).map_err(end)?;
        if *who.identity() != b.entry {
            return Err(end(ConsoleError::NoSession.into()));
        }
        self.admit(&who).await.map_err(end)?;
        Ok(ConsoleCaller {
            who,
            session: session.public.clone(),
            csrf: session.csrf.clone(),
            expires_at: b.expires_at,
        })
    }

    /// Ends the session of `cookie`; audited as `console_sign_out`.
    pub async fn console_sign_out(&self, caller: &ConsoleCaller, cookie: &str) -> Result<(), BrokerError> {
        let console = self.console()?;
        console.state().sessions.remove(&digest(cookie));
        let mut event = self.event(AuditKind::ConsoleSignOut, Outcome::Allow, Some(&caller.who));
        event.console_session = Some(caller.session.clone());
        event.reason = Some("signed out".to_owned());
        self.audit(event).await
    }
}

/// The audit trail as the console shows it.
#[derive(Debug, Clone)]
pub struct AuditView {
    /// The latest records matching the filter, newest first.
    pub records: Vec<tessera_core::audit::AuditRecord>,
    /// Whether the whole file's chain verifies: its record count, or why not.
    pub verified: Result<u64, String>,
}

/// Most records the audit page shows.
const AUDIT_PAGE: usize = 100;
/// Largest audit file the console verifies whole (the CLI has no bound).
const MAX_AUDIT_VERIFY: u64 = 64 * 1024 * 1024;

impl Broker {
    /// The console's audit page (operators: policy's ListGrants, as audit
    /// records name every grant): the latest records of the broker's audit
    /// file whose line contains `filter` (case-insensitive), and whether the
    /// file's chain verifies (core's one chain check, as `tessera audit
    /// verify`). Records hold no secret by construction.
    pub async fn console_audit(
        &self,
        who: &VerifiedIdentity,
        file: &std::path::Path,
        filter: &str,
    ) -> Result<AuditView, BrokerError> {
        self.authorize(who, Operation::ListGrants).await?;
        let file = file.to_owned();
        let filter = filter.to_lowercase();
        let read = tokio::task::spawn_blocking(move || {
            let size = std::fs::metadata(&file).map(|m| m.len()).unwrap_or(0);
            if size > MAX_AUDIT_VERIFY {
                return AuditView {
                    records: Vec::new(),
                    verified: Err(format!(
                        "the file is larger than {} MiB: verify it with `tessera audit verify`",
                        MAX_AUDIT_VERIFY / 1024 / 1024
                    )),
                };
            }
            let text = match std::fs::read_to_string(&file) {
                Ok(text) => text,
                Err(e) => {
                    return AuditView {
                        records: Vec::new(),
                        verified: Err(format!("cannot read the audit file: {}", e.kind())),
                    };
                }
            };
            let verified = tessera_core::audit::verify(text.lines())
                .map(|report| report.records)
                .map_err(|e| e.to_string());
            let records = text
                .lines()
                .rev()
                .filter(|line| filter.is_empty() || line.to_lowercase().contains(&filter))
                .filter_map(|line| tessera_core::audit::AuditRecord::from_line(line).ok())
                .take(AUDIT_PAGE)
                .collect();
            AuditView { records, verified }
        });
        read.await.map_err(|e| {
            tracing::error!(error = %e, "console: reading the audit file failed");
            BrokerError::Audit(crate::audit::AuditError::Stopped {
                sink: crate::audit::Sink::File(std::path::PathBuf::new()),
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::testing::{AGENT, Fixture, OPERATOR};
    use tessera_core::clock::Clock as _;
    use tessera_store::GrantStore as _;

    fn settings() -> ConsoleSettings {
        ConsoleSettings {
            public_url: "https://console.test".into(),
            code_ttl: chrono::Duration::seconds(60),
            session_ttl: chrono::Duration::minutes(30),
        }
    }

    fn code_of(url: &str) -> &str {
        url.split("code=").nth(1).unwrap()
    }

    #[tokio::test]
    async fn a_code_signs_an_operator_in_once() {
        let f = Fixture::with_console(settings()).await;
        let code = f.broker.open_console(&f.who(OPERATOR), None).await.unwrap();
        assert!(code.url.starts_with("https://console.test/console/signin#code="));
        assert!(
            !format!("{code:?}").contains(code_of(&code.url)),
            "Debug hides the code"
        );
        let signed = f.broker.console_sign_in(code_of(&code.url)).await.unwrap();
        assert_eq!(f.audit.last().event, AuditKind::ConsoleSignIn);
        let caller = f.broker.console_caller(&signed.cookie).await.unwrap();
        assert_eq!(caller.who.id(), f.who(OPERATOR).id());
        assert_eq!(f.audit.last().console_session.as_deref(), Some(caller.session.as_str()));
        let again = f.broker.console_sign_in(code_of(&code.url)).await;
        assert_eq!(
            again.err().map(|e| e.kind()),
            Some(ErrorKind::Unauthenticated),
            "single use"
        );
        f.broker.console_sign_out(&caller, &signed.cookie).await.unwrap();
        let gone = f.broker.console_caller(&signed.cookie).await;
        assert_eq!(gone.err().map(|e| e.kind()), Some(ErrorKind::Unauthenticated));
    }

    #[tokio::test]
    async fn an_expired_code_or_session_is_refused() {
        let f = Fixture::with_console(settings()).await;
        let code = f.broker.open_console(&f.who(OPERATOR), None).await.unwrap();
        f.clock.advance(chrono::Duration::seconds(61));
        let late = f.broker.console_sign_in(code_of(&code.url)).await;
        assert_eq!(late.err().map(|e| e.kind()), Some(ErrorKind::Unauthenticated));
        let code = f.broker.open_console(&f.who(OPERATOR), None).await.unwrap();
        let signed = f.broker.console_sign_in(code_of(&code.url)).await.unwrap();
        f.clock.advance(chrono::Duration::minutes(31));
        let gone = f.broker.console_caller(&signed.cookie).await;
        assert_eq!(gone.err().map(|e| e.kind()), Some(ErrorKind::Unauthenticated));
    }

    #[tokio::test]
    async fn a_non_operator_gets_no_code_and_a_switched_off_console_none() {
        let f = Fixture::with_console(settings()).await;
        let refused = f.broker.open_console(&f.who(AGENT), None).await;
        assert_eq!(refused.err().map(|e| e.kind()), Some(ErrorKind::PermissionDenied));
        assert_eq!(f.audit.last().event, AuditKind::AdminDenied);
        let off = Fixture::new().await;
        let refused = off.broker.open_console(&off.who(OPERATOR), None).await;
        assert_eq!(refused.err().map(|e| e.kind()), Some(ErrorKind::FailedPrecondition));
    }

    #[tokio::test]
    async fn a_session_ends_when_its_identity_is_disabled() {
        let f = Fixture::with_console(settings()).await;
        let code = f.broker.open_console(&f.who(OPERATOR), None).await.unwrap();
        let signed = f.broker.console_sign_in(code_of(&code.url)).await.unwrap();
        assert!(f.broker.console_caller(&signed.cookie).await.is_ok());
        let operator = f.who(OPERATOR).id().clone();
        f.broker.registry().disable_at_runtime(&operator);
        let refused = f.broker.console_caller(&signed.cookie).await;
        assert!(refused.err().is_some_and(|e| e.to_string().contains("disabled")));
        f.broker.registry().enable_at_runtime(&operator);
        let ended = f.broker.console_caller(&signed.cookie).await;
        assert_eq!(
            ended.err().map(|e| e.kind()),
            Some(ErrorKind::Unauthenticated),
            "ended for good, not suspended"
        );
    }

    async fn signed_in(f: &Fixture) -> ConsoleSignIn {
        let code = f.broker.open_console(&f.who(OPERATOR), None).await.unwrap();
        let signed = f.broker.console_sign_in(code_of(&code.url)).await.unwrap();
        assert!(f.broker.console_caller(&signed.cookie).await.is_ok());
        signed
    }

    fn ended(result: Result<ConsoleCaller, BrokerError>) -> bool {
        result.err().map(|e| e.kind()) == Some(ErrorKind::Unauthenticated)
    }

    #[tokio::test]
    async fn a_disable_ends_the_session_at_once_and_a_re_enable_does_not_revive_it() {
        let f = Fixture::with_console(settings()).await;
        let signed = signed_in(&f).await;
        let other = signed_in(&f).await;
        let me = f.who(OPERATOR);
        let operator = me.id().clone();
        // Disabled and enabled again through the use cases, with no console
        // request in between.
        f.broker
            .revoke_identity(&me, Ok((operator.clone(), "offboarding".into())), true)
            .await
            .unwrap();
        f.broker.registry().enable_at_runtime(&operator);
        f.store.enable_subject(&operator).await.unwrap();
        assert!(
            ended(f.broker.console_caller(&signed.cookie).await),
            "ended at the disable"
        );
        assert!(
            ended(f.broker.console_caller(&other.cookie).await),
            "every session of it"
        );
        // Signing in again works: the identity is enabled.
        signed_in(&f).await;
    }

    #[tokio::test]
    async fn a_quarantine_ends_the_session_at_once_and_its_end_does_not_revive_it() {
        let mut s = crate::broker::testing::settings();
        s.anomaly = Some(tessera_core::anomaly::AnomalyRule {
            denials: 2,
            within: chrono::Duration::seconds(60),
            quarantine: chrono::Duration::minutes(5),
        });
        let mut f = Fixture::with(s).await;
        f.broker = f.broker.with_console(Some(settings()));
        let signed = signed_in(&f).await;
        let me = f.who(OPERATOR);
        f.broker.count_denial(&me).await;
        f.broker.count_denial(&me).await;
        assert!(f.broker.admit(&me).await.is_err(), "quarantined");
        f.clock.advance(chrono::Duration::minutes(6));
        assert!(f.broker.admit(&me).await.is_ok(), "the quarantine is over");
        assert!(
            ended(f.broker.console_caller(&signed.cookie).await),
            "ended at the quarantine"
        );
    }

    #[tokio::test]
    async fn a_registry_change_ends_the_session_even_when_changed_back() {
        let f = Fixture::with_console(settings()).await;
        let signed = signed_in(&f).await;
        let before = tessera_core::identity::IdentityRegistry::new(f.broker.registry().identities());
        let changed =
            tessera_core::identity::IdentityRegistry::new(f.broker.registry().identities().into_iter().map(|mut i| {
                if i.id == *f.who(OPERATOR).id() {
                    i.roles.insert(tessera_core::identity::Role::Agent);
                }
                i
            }));
        // What the reloader does on each reload: replace, then prune.
        f.broker.registry().replace(&changed);
        assert_eq!(f.broker.prune_console_sessions(), 1);
        f.broker.registry().replace(&before);
        assert_eq!(f.broker.prune_console_sessions(), 0);
        assert!(ended(f.broker.console_caller(&signed.cookie).await));
        // And without the prune, the request itself sees the change.
        let second = signed_in(&f).await;
        f.broker.registry().replace(&changed);
        assert!(ended(f.broker.console_caller(&second.cookie).await));
    }

    #[tokio::test]
    async fn no_session_outlives_the_operator_certificate() {
        let f = Fixture::with_console(settings()).await;
        let not_after = f.clock.now() + chrono::Duration::minutes(10);
        let code = f.broker.open_console(&f.who(OPERATOR), Some(not_after)).await.unwrap();
        let signed = f.broker.console_sign_in(code_of(&code.url)).await.unwrap();
        assert_eq!(signed.expires_at, not_after);
        f.clock.advance(chrono::Duration::minutes(9));
        assert!(f.broker.console_caller(&signed.cookie).await.is_ok());
        f.clock.advance(chrono::Duration::minutes(2));
        assert!(ended(f.broker.console_caller(&signed.cookie).await));
        // A code never outlives it either.
        let soon = f.clock.now() + chrono::Duration::seconds(5);
        let code = f.broker.open_console(&f.who(OPERATOR), Some(soon)).await.unwrap();
        assert_eq!(code.expires_at, soon);
    }

    #[tokio::test]
    async fn codes_are_capped_per_identity_and_named_before_they_are_spent() {
        let f = Fixture::with_console(settings()).await;
        let mut codes = Vec::new();
        for _ in 0..MAX_CODES_PER_IDENTITY {
            codes.push(f.broker.open_console(&f.who(OPERATOR), None).await.unwrap());
        }
        let full = f.broker.open_console(&f.who(OPERATOR), None).await;
        assert_eq!(full.err().map(|e| e.kind()), Some(ErrorKind::ResourceExhausted));
        let first = code_of(&codes[0].url);
        assert_eq!(&f.broker.console_code_identity(first).unwrap(), f.who(OPERATOR).id());
        assert_eq!(
            &f.broker.console_code_identity(first).unwrap(),
            f.who(OPERATOR).id(),
            "naming spends nothing"
        );
        f.broker.console_sign_in(first).await.unwrap();
        assert!(
            f.broker.open_console(&f.who(OPERATOR), None).await.is_ok(),
            "a spent code frees its place"
        );
        assert!(f.broker.console_discard_code(code_of(&codes[1].url)));
        assert!(
            f.broker.console_sign_in(code_of(&codes[1].url)).await.is_err(),
            "discarded"
        );
        assert!(f.broker.console_code_identity("unknown").is_err());
    }

    #[test]
    fn secrets_compare_in_constant_time_and_exactly() {
        assert!(same_secret("abc", "abc"));
        assert!(!same_secret("abc", "abd"));
        assert!(!same_secret("abc", "ab"));
    }
}

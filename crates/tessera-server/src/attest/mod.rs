//! Workload attestation at the gRPC edge: which evidence a call carries,
//! verifying it, and binding the result to a registered identity.
//!
//! How a caller authenticates:
//! - **x509**: mTLS with an X.509-SVID (the client certificate of the TLS
//!   connection), verified against the bundle of its trust domain
//!   ([`trust`]).
//! - **jwt**: TLS with server authentication only (no client certificate)
//!   and the attestation JWT in the `authorization: Bearer <jwt>` metadata
//!   of every call ([`jwt`]), when `[[attestation.jwt.issuers]]` are
//!   configured. A connection presenting a client certificate is attested
//!   by it (or refused for it), whatever metadata it sends.
//! - **unix**: plaintext gRPC over the Unix socket `[attestation.unix]`,
//!   attested from the kernel's peer credentials at accept ([`unix`]).
//!
//! A call with none of these is UNAUTHENTICATED. Every refusal is audited
//! (sampled per caller and capped per source address, see
//! `Broker::attestation_refused_by`) and counted in
//! `tessera_attestation_rejected_total{method,reason}`.

pub mod config;
pub mod fetch;
pub mod jwt;
pub mod reload;
pub mod trust;
pub mod unix;

use std::sync::Arc;

use tessera_core::attestation::sha256_hex;
use tessera_core::identity::{AttestationMethod, SpiffeId, VerifiedIdentity};
use tessera_store::ReplayCache;
use tonic::{Request, Status};

use crate::broker::{Broker, BrokerError};
use crate::config::Config;
use crate::status;
use crate::tls;

/// Why attestation could not be set up at start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AttestSetupError {
    /// A trust bundle is unreadable or invalid.
    #[error("config key `tls.trust_domains`: {0}")]
    Bundle(#[from] trust::BundleError),
    /// The `[tls] trust_bundle` is unreadable, invalid or empty.
    #[error("config key `tls.trust_bundle`: {0}")]
    PrimaryBundle(String),
    /// A JWT issuer's keys or roots are unusable.
    #[error(transparent)]
    Issuer(#[from] jwt::IssuerError),
    /// The Unix socket could not be bound.
    #[error("config key `attestation.unix.socket`: `{path}`: {message}")]
    Unix {
        /// The socket path.
        path: std::path::PathBuf,
        /// Why.
        message: String,
    },
}

/// Everything attestation loads before a port is bound.
#[derive(Debug)]
pub struct Prepared {
    /// The trust bundles (shared with the TLS verifier).
    pub trust: Arc<trust::TrustStore>,
}

/// Loads the trust bundles of `config` (the `[tls]` domain first, then
/// `[[tls.trust_domains]]`) and checks every JWT issuer's keys or roots.
pub fn prepare(config: &Config) -> Result<Prepared, AttestSetupError> {
    let primary = config::TrustDomainConfig {
        name: config.tls.trust_domain.clone(),
        bundle: config::BundleFile::Pem(config.tls.trust_bundle.clone()),
    };
    // The [tls] bundle must hold a CA at start (an emptied one at runtime
    // refuses its domain, like any other).
    match trust::load_bundle(&primary.bundle) {
        Ok(cas) if cas.is_empty() => {
            return Err(AttestSetupError::PrimaryBundle(format!(
                "`{}`: no CA certificate found",
                config.tls.trust_bundle.display()
            )));
        }
        Ok(_) => {}
        Err(e) => return Err(AttestSetupError::PrimaryBundle(e.to_string())),
    }
    let mut domains = vec![primary];
    domains.extend(config.tls.trust_domains.iter().cloned());
    let trust = Arc::new(trust::TrustStore::load(domains)?);
    jwt::check(&config.attestation.jwt)?;
    Ok(Prepared { trust })
}

/// The attestors the gRPC edge uses.
#[derive(Debug)]
pub struct Attestors {
    /// X.509 trust bundles.
    pub trust: Arc<trust::TrustStore>,
    /// JWT issuers, if configured.
    pub jwt: Option<jwt::JwtAttestor>,
}

impl Attestors {
    /// The attestors for `config`, recording single-use `jti`s in `replay`.
    pub fn new(prepared: &Prepared, config: &Config, replay: Arc<dyn ReplayCache>) -> Result<Self, AttestSetupError> {
        let jwt = if config.attestation.jwt.is_empty() {
            None
        } else {
            Some(jwt::JwtAttestor::new(config.attestation.jwt.clone(), replay)?)
        };
        Ok(Self {
            trust: prepared.trust.clone(),
            jwt,
        })
    }
}

/// The bound Unix socket `[attestation.unix]`, each peer attested at
/// accept. `serve` runs the gRPC service set on it, as on the TCP
/// listener, and removes the socket when it stops.
#[derive(Debug)]
pub struct UnixIncoming {
    /// Accepted connections with their peer's attestation, at most
    /// `server.max_connections` open at once.
    pub connections: tokio::sync::mpsc::Receiver<Result<unix::UnixConn, std::io::Error>>,
    /// The socket's path.
    pub path: std::path::PathBuf,
}

/// Starts what attestation runs beside the TLS listener: the reloader
/// (identities and trust bundles) and, if configured, binds the Unix
/// socket whose connections the caller serves.
pub(crate) fn start(
    config: &Config,
    broker: &Arc<Broker>,
    attestors: &Arc<Attestors>,
) -> Result<(tokio::task::JoinHandle<()>, Option<UnixIncoming>), AttestSetupError> {
    let reloader = reload::Reloader {
        config_file: config.source.clone().filter(|p| p.exists()),
        registry: broker.registry().clone(),
        console: Some(broker.clone()),
        trust: attestors.trust.clone(),
        every: config.attestation.reload_interval,
    };
    let reloader = tokio::spawn(reloader.run());
    if attestors.jwt.is_some() {
        let attestors = attestors.clone();
        tokio::spawn(async move {
            if let Some(jwt) = &attestors.jwt {
                jwt.prefetch().await;
            }
        });
    }
    let Some(unix_config) = &config.attestation.unix else {
        return Ok((reloader, None));
    };
    let listener = unix::bind(unix_config).map_err(|e| AttestSetupError::Unix {
        path: unix_config.socket.clone(),
        message: e.to_string(),
    })?;
    let connections = unix::accept_loop(listener, config.server.max_connections);
    Ok((
        reloader,
        Some(UnixIncoming {
            connections,
            path: unix_config.socket.clone(),
        }),
    ))
}

fn rejected(method: AttestationMethod, reason: &'static str) {
    metrics::counter!("tessera_attestation_rejected_total", "method" => method.as_str(), "reason" => reason)
        .increment(1);
}

/// Who is being refused, and where the call came from.
struct Refusal<'a> {
    broker: &'a Broker,
    /// The caller's address (TCP); `None` on the Unix socket.
    source: Option<std::net::IpAddr>,
}

impl Refusal<'_> {
    /// Refuses a caller: counts, logs, audits; returns the status to answer.
    async fn refuse(
        &self,
        method: AttestationMethod,
        label: &'static str,
        claimed: Option<&SpiffeId>,
        evidence: Option<&str>,
        reason: &str,
    ) -> Status {
        rejected(method, label);
        tracing::info!(event = "attestation_refused", method = %method, identity = ?claimed.map(ToString::to_string), reason = %reason, "caller refused");
        status::from_broker(
            self.broker
                .attestation_refused_by(method, claimed, evidence, reason, self.source)
                .await,
        )
    }
}

/// The bearer token of `authorization: Bearer <token>`, if the call has one.
/// `Err` for an `authorization` value that is present but not a bearer token.
fn bearer<T>(req: &Request<T>) -> Result<Option<String>, &'static str> {
    let Some(value) = req.metadata().get("authorization") else {
        return Ok(None);
    };
    let value = value.to_str().map_err(|_| "authorization metadata is not ASCII")?;
    let (scheme, token) = value
        .split_once(' ')
        .ok_or("authorization metadata is not `Bearer <token>`")?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err("authorization metadata is not `Bearer <token>`");
    }
    let token = token.trim();
    if token.is_empty() {
        return Err("authorization metadata has an empty bearer token");
    }
    Ok(Some(token.to_owned()))
}

/// Attests the caller of `req` by whichever evidence its connection
/// carries (see the module docs), then admits it.
pub(crate) async fn caller<T>(
    broker: &Broker,
    attestors: &Attestors,
    req: &Request<T>,
) -> Result<VerifiedIdentity, Status> {
    let who = attest(broker, attestors, req).await?;
    broker.admit(&who).await.map_err(status::from_broker)?;
    // The connection has been used by someone we know: it keeps its slot
    // past `server.unattested_timeout`.
    if let Some(peer) = req.extensions().get::<tls::PeerInfo>() {
        peer.activity.attested();
    }
    Ok(who)
}

async fn attest<T>(broker: &Broker, attestors: &Attestors, req: &Request<T>) -> Result<VerifiedIdentity, Status> {
    let peer = req.extensions().get::<tls::PeerInfo>();
    let refusal = Refusal {
        broker,
        source: peer.and_then(|p| p.remote).map(|a| a.ip()),
    };
    // Unix listener: attested at accept.
    if let Some(info) = req.extensions().get::<unix::UnixPeerInfo>() {
        let method = AttestationMethod::Unix;
        let peer = match info.0.as_ref() {
            Ok(peer) => peer,
            Err(reason) => return Err(refusal.refuse(method, "peer", None, None, reason).await),
        };
        let evidence = peer.evidence();
        let id = match broker.registry().match_unix(peer) {
            Ok(id) => id,
            Err(e) => {
                return Err(refusal
                    .refuse(method, "selector", None, Some(&evidence), &e.to_string())
                    .await);
            }
        };
        return bind(&refusal, &id, method, evidence).await;
    }

    // mTLS: the client certificate, trusted only through the trust store.
    if let Some(cert) = peer.and_then(|info| info.client_cert.as_ref()) {
        let method = AttestationMethod::X509;
        let leaf = match attestors.trust.trusted_leaf(cert) {
            Ok(leaf) => leaf,
            Err(reason) => {
                return Err(refusal
                    .refuse(method, "chain", None, Some(&cert.evidence()), &reason)
                    .await);
            }
        };
        let svid = match tls::peer_svid_in(leaf, |domain| attestors.trust.check_domain(domain)) {
            Ok(svid) => svid,
            Err(e) => {
                return Err(refusal
                    .refuse(method, "svid", None, Some(&cert.evidence()), &e.to_string())
                    .await);
            }
        };
        return bind(&refusal, &svid.id, method, svid.evidence).await;
    }

    // TLS without a client certificate: an attestation JWT.
    let method = AttestationMethod::Jwt;
    let token = match bearer(req) {
        Ok(Some(token)) => token,
        Ok(None) => {
            let reason = if attestors.jwt.is_some() {
                "no client certificate and no attestation token (authorization: Bearer)"
            } else {
                "no client certificate"
            };
            return Err(refusal
                .refuse(AttestationMethod::X509, "none", None, None, reason)
                .await);
        }
        Err(reason) => return Err(refusal.refuse(method, "malformed", None, None, reason).await),
    };
    let evidence = sha256_hex(token.as_bytes());
    let Some(attestor) = &attestors.jwt else {
        return Err(refusal
            .refuse(
                method,
                "disabled",
                None,
                Some(&evidence),
                "attestation by jwt is not configured",
            )
            .await);
    };
    let now = broker.now();
    // This connection was attested by this very token: its session stands
    // (the identity is still bound afresh, so a disable applies at once).
    if let Some(id) = peer.and_then(|p| p.jwt_session.current(&evidence, now)) {
        return bind(&refusal, &id, method, evidence).await;
    }
    match attestor.attest(&token, now).await {
        Ok(attested) => {
            if let Some(p) = peer {
                p.jwt_session.start(&evidence, &attested, now);
            }
            bind(&refusal, &attested.id, method, evidence).await
        }
        Err(jwt::JwtRefusal::Store(e)) => {
            // Never accept unchecked: the caller is told to retry.
            rejected(method, "store");
            tracing::warn!(error = %e, "replay cache unavailable; attestation JWT refused");
            let _ = broker
                .attestation_refused_by(
                    method,
                    None,
                    Some(&evidence),
                    "replay cache unavailable",
                    refusal.source,
                )
                .await;
            Err(status::from_broker(BrokerError::Store(e)))
        }
        Err(e) => Err(refusal
            .refuse(method, e.reason(), None, Some(&evidence), &e.to_string())
            .await),
    }
}

/// Binds verified evidence to its registry entry (registered, enabled,
/// allowed this method), or refuses.
async fn bind(
    refusal: &Refusal<'_>,
    id: &SpiffeId,
    method: AttestationMethod,
    evidence: String,
) -> Result<VerifiedIdentity, Status> {
    match refusal.broker.attest_by(id, method, evidence.clone()) {
        Ok(who) => Ok(who),
        Err(e) => Err(refusal
            .refuse(method, "identity", Some(id), Some(&evidence), &e.to_string())
            .await),
    }
}

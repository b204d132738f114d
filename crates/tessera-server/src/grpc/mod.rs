//! The gRPC edge: one file per service. Each handler attests the caller,
//! converts the request, calls the broker, converts the answer.

pub mod admin;
pub mod agent;
mod approvals;
pub mod limits;
pub mod orchestrator;
pub mod verifier;

use std::sync::Arc;

use tessera_core::identity::VerifiedIdentity;
use tonic::{Request, Status};

use crate::broker::Broker;
use crate::status;
use crate::tls;

/// Attests the caller of `req` from its verified client certificate. A
/// refusal is audited (and answers UNAVAILABLE if it cannot be).
pub(crate) async fn caller<T>(broker: &Broker, req: &Request<T>) -> Result<VerifiedIdentity, Status> {
    let leaf = req.peer_certs().and_then(|certs| certs.first().cloned());
    let Some(leaf) = leaf else {
        return Err(status::from_broker(
            broker.attestation_refused(None, None, "no client certificate").await,
        ));
    };
    let svid = match tls::peer_svid(&leaf, broker.trust_domain()) {
        Ok(svid) => svid,
        Err(e) => {
            tracing::info!(event = "attestation_refused", reason = %e, "caller refused");
            return Err(status::from_broker(
                broker.attestation_refused(None, None, &e.to_string()).await,
            ));
        }
    };
    match broker.attest(&svid.id, svid.evidence.clone()) {
        Ok(who) => {
            broker.admit(&who).await.map_err(status::from_broker)?;
            Ok(who)
        }
        Err(e) => {
            tracing::info!(event = "attestation_refused", identity = %svid.id, reason = %e, "caller refused");
            Err(status::from_broker(
                broker
                    .attestation_refused(Some(&svid.id), Some(&svid.evidence), &e.to_string())
                    .await,
            ))
        }
    }
}

/// State shared by the service handlers.
#[derive(Debug, Clone)]
pub struct Shared {
    pub(crate) broker: Arc<Broker>,
    pub(crate) heartbeat: std::time::Duration,
    pub(crate) limiter: Arc<limits::IdentityLimiter>,
}

impl Shared {
    /// Attests the caller, then applies its rate limit.
    pub(crate) async fn caller<T>(&self, req: &Request<T>) -> Result<VerifiedIdentity, Status> {
        let who = caller(&self.broker, req).await?;
        self.limiter.check(who.id())?;
        Ok(who)
    }
}

/// UNIMPLEMENTED for an RPC whose behaviour arrives with a later issue.
pub(crate) fn not_yet(rpc: &str, what: &str) -> Status {
    Status::unimplemented(format!("{rpc} is not implemented yet ({what})"))
}

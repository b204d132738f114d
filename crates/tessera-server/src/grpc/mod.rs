//! The gRPC edge: one file per service. Each handler attests the caller,
//! converts the request, calls the broker, converts the answer.

pub mod admin;
pub mod agent;
pub mod orchestrator;
pub mod verifier;

use std::sync::Arc;

use tessera_core::identity::VerifiedIdentity;
use tonic::{Request, Status};

use crate::broker::Broker;
use crate::status;
use crate::tls;

/// Attests the caller of `req` from its verified client certificate.
pub(crate) fn caller<T>(broker: &Broker, req: &Request<T>) -> Result<VerifiedIdentity, Status> {
    let certs = req
        .peer_certs()
        .ok_or_else(|| Status::unauthenticated("no client certificate"))?;
    let leaf = certs
        .first()
        .ok_or_else(|| Status::unauthenticated("no client certificate"))?;
    let svid = tls::peer_svid(leaf, broker.trust_domain()).map_err(|e| {
        tracing::info!(event = "attestation_refused", reason = %e, "caller refused");
        Status::unauthenticated(e.to_string())
    })?;
    broker.attest(&svid.id, svid.evidence).map_err(|e| {
        tracing::info!(event = "attestation_refused", identity = %svid.id, reason = %e, "caller refused");
        status::from_broker(e)
    })
}

/// State shared by the service handlers.
#[derive(Debug, Clone)]
pub struct Shared {
    pub(crate) broker: Arc<Broker>,
    pub(crate) heartbeat: std::time::Duration,
}

/// UNIMPLEMENTED for an RPC whose behaviour arrives with a later issue.
pub(crate) fn not_yet(rpc: &str, what: &str) -> Status {
    Status::unimplemented(format!("{rpc} is not implemented yet ({what})"))
}

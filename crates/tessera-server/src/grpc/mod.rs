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

/// State shared by the service handlers.
#[derive(Debug, Clone)]
pub struct Shared {
    pub(crate) broker: Arc<Broker>,
    pub(crate) heartbeat: std::time::Duration,
    pub(crate) limiter: Arc<limits::IdentityLimiter>,
    pub(crate) attestors: Arc<crate::attest::Attestors>,
}

impl Shared {
    /// Attests the caller (see `crate::attest`), then applies its rate limit.
    pub(crate) async fn caller<T>(&self, req: &Request<T>) -> Result<VerifiedIdentity, Status> {
        let who = crate::attest::caller(&self.broker, &self.attestors, req).await?;
        self.limiter.check(who.id())?;
        Ok(who)
    }
}

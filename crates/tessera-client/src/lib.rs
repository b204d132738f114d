//! Rust SDK for Tessera, the just-in-time credential broker.
//!
//! It loads a client identity (an X.509-SVID, its key and the trust bundle),
//! opens one mutually authenticated gRPC [`Channel`] to `tesserad` with
//! [`connect`], and re-exports the generated clients of the `tessera.v1`
//! contract over that channel ([`AgentClient`], [`OrchestratorClient`],
//! [`AdminClient`], [`VerifierClient`]) and the messages as [`pb`].
//!
//! It never logs, prints or stores a token or a private key, and never talks to
//! the broker without mTLS.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use tessera_client::{pb, Identity, VerifierClient};
//!
//! let identity = Identity::from_files(
//!     ".tessera-dev/ca.pem",
//!     ".tessera-dev/identities/api-gateway.pem",
//!     ".tessera-dev/identities/api-gateway.key.pem",
//! )?;
//! let channel = tessera_client::connect("https://127.0.0.1:7443", &identity).await?;
//! let jwks = VerifierClient::new(channel).get_jwks(pb::GetJwksRequest {}).await?;
//! println!("{}", jwks.into_inner().jwks_json);
//! # Ok(())
//! # }
//! ```

pub mod agent;
mod channel;
mod connect;
mod error;
mod identity;
#[cfg(feature = "tower")]
pub mod layer;
pub mod orchestrator;
mod pin;
mod pop;
pub mod retry;
mod unix;
pub mod verifier;

pub use channel::{Channel, connect_with_token};
pub use connect::{CONNECT_TIMEOUT, REQUEST_TIMEOUT, connect, connect_lazy};
pub use error::ClientError;
pub use identity::Identity;
pub use pin::{DEFAULT_BROKER_PATH, certificate_spiffe_id, expected_broker_id};
pub use pop::{PopKey, REDEEM_DELEGATION_HTU, REQUEST_TOKEN_HTU};
pub use unix::connect_unix;
pub use verifier::{Presented, Verified, Verifier, VerifierConfig, VerifyError};

/// Generated messages and service stubs of `tessera.v1`.
pub use tessera_proto::v1 as pb;

/// The raw generated `AgentService` client: request, delegate and release
/// task-scoped tokens. The typed one is [`agent::AgentClient`].
pub type AgentClient = pb::agent_service_client::AgentServiceClient<Channel>;
/// The raw generated `OrchestratorService` client: start, complete and read
/// tasks. The typed one is [`orchestrator::OrchestratorClient`].
pub type OrchestratorClient = pb::orchestrator_service_client::OrchestratorServiceClient<Channel>;
/// `AdminService` client: revoke, approve, rotate keys, reload policy.
pub type AdminClient = pb::admin_service_client::AdminServiceClient<Channel>;
/// `VerifierService` client: JWKS, introspection and the revocation feed.
pub type VerifierClient = pb::verifier_service_client::VerifierServiceClient<Channel>;

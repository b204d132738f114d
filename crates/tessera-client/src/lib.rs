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

mod channel;
mod connect;
mod error;
mod identity;
mod unix;

pub use channel::{Channel, connect_with_token};
pub use connect::{CONNECT_TIMEOUT, REQUEST_TIMEOUT, connect, connect_lazy};
pub use error::ClientError;
pub use identity::Identity;
pub use unix::connect_unix;

/// Generated messages and service stubs of `tessera.v1`.
pub use tessera_proto::v1 as pb;
/// `AgentService` client: request, delegate and release task-scoped tokens.
pub type AgentClient = pb::agent_service_client::AgentServiceClient<Channel>;
/// `OrchestratorService` client: start, complete and read tasks.
pub type OrchestratorClient = pb::orchestrator_service_client::OrchestratorServiceClient<Channel>;
/// `AdminService` client: revoke, approve, rotate keys, reload policy.
pub type AdminClient = pb::admin_service_client::AdminServiceClient<Channel>;
/// `VerifierService` client: JWKS, introspection and the revocation feed.
pub type VerifierClient = pb::verifier_service_client::VerifierServiceClient<Channel>;

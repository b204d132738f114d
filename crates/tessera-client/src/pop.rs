//! Proof-of-possession keys: core's [`tessera_core::pop::ProofKey`], the one
//! proof key type and signer, under the SDK's name [`PopKey`]. The broker
//! binds a token to the key's thumbprint (`cnf.jkt`); a resource server then
//! accepts the token only with a fresh proof from the same key.

/// An ES256 (or EdDSA) proof-of-possession key; see
/// [`tessera_core::pop::ProofKey`].
pub use tessera_core::pop::ProofKey as PopKey;

/// `htu` of a proof for RequestToken.
pub const REQUEST_TOKEN_HTU: &str = "/tessera.v1.AgentService/RequestToken";
/// `htu` of a proof for RedeemDelegation (made by the delegate's key, in
/// the delegate's own call).
pub const REDEEM_DELEGATION_HTU: &str = "/tessera.v1.AgentService/RedeemDelegation";

//! Proof-of-possession at the broker: which key or certificate a new token
//! is bound to (`cnf`). A DPoP-style proof is checked by
//! [`tessera_core::pop::verify_proof`] for `POST` and the gRPC method path,
//! and its `jti` is burnt in the shared replay cache (so a proof is good
//! once across every replica; a cache outage is UNAVAILABLE, never a skipped
//! check). A caller attested by mTLS may instead bind the token to its
//! client certificate (`x5t#S256`).

use base64::Engine as _;
use tessera_core::audit::AuditKind;
use tessera_core::identity::{AttestationMethod, VerifiedIdentity};
use tessera_core::pop::{self, PROOF_MAX_AGE, ProofCheck, ProofError};
use tessera_core::token::Confirmation;

use super::record::DenialLog;
use super::{Broker, BrokerError};

/// `htu` of proofs sent with RequestToken.
pub const REQUEST_TOKEN_HTU: &str = "/tessera.v1.AgentService/RequestToken";
/// `htu` of proofs sent with RedeemDelegation (made by the delegate's key,
/// in the delegate's own call).
pub const REDEEM_DELEGATION_HTU: &str = "/tessera.v1.AgentService/RedeemDelegation";
/// `htm` of every proof sent to the broker (gRPC calls are HTTP/2 POSTs).
const PROOF_HTM: &str = "POST";
/// Replay-cache namespace of proof `jti`s.
const PROOF_REPLAY_NAMESPACE: &str = "dpop";

/// The binding a RequestToken asks for, as the request says it; the use
/// case resolves it ([`Broker::request_token`]): verifies the proof and
/// burns its `jti`, or reads the caller's certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BindingAsk {
    /// Neither `pop_proof` nor `mtls_binding`: a bearer token, if its class allows.
    Bearer,
    /// `pop_proof`, a proof for RequestToken: bound to its key (`cnf.jkt`).
    Proof(String),
    /// `mtls_binding`: bound to the caller's client certificate (`cnf.x5t#S256`).
    ClientCertificate,
    /// Both: refused (and audited), a token has one binding.
    ProofAndCertificate,
    /// A `DPoP` header at the HTTPS token endpoint (RFC 9449): a proof for
    /// `POST` `htu` (the endpoint's URL), bound to its key (`cnf.jkt`).
    Dpop {
        /// The proof.
        proof: String,
        /// The token endpoint's URL.
        htu: String,
    },
}

impl BindingAsk {
    /// What the request fields `pop_proof` and `mtls_binding` ask for.
    pub fn of_fields(pop_proof: &str, mtls_binding: bool) -> Self {
        match (pop_proof.is_empty(), mtls_binding) {
            (true, false) => Self::Bearer,
            (false, false) => Self::Proof(pop_proof.to_owned()),
            (true, true) => Self::ClientCertificate,
            (false, true) => Self::ProofAndCertificate,
        }
    }
}

impl Broker {
    /// Resolves the binding a RequestToken asks for. Refusals are audited
    /// and counted.
    pub(super) async fn request_binding(
        &self,
        who: &VerifiedIdentity,
        ask: &BindingAsk,
    ) -> Result<Option<Confirmation>, BrokerError> {
        let binding = match ask {
            BindingAsk::Bearer => return Ok(None),
            BindingAsk::ProofAndCertificate => Err(BrokerError::Binding(
                "mtls_binding: ask for one binding, pop_proof or mtls_binding, not both",
            )),
            BindingAsk::ClientCertificate => certificate_binding(who),
            BindingAsk::Proof(proof) => self.proof_binding("pop_proof", proof, REQUEST_TOKEN_HTU).await,
            BindingAsk::Dpop { proof, htu } => self.proof_binding("DPoP", proof, htu).await,
        };
        match binding {
            Ok(b) => Ok(Some(b)),
            Err(e) => self.binding_refused(who, "request_token", e).await,
        }
    }

    /// The binding of a redeemed child: the caller's (the delegate's) proof
    /// for RedeemDelegation (`cnf.jkt`), or none. Refusals are audited and
    /// counted.
    pub(super) async fn redeem_binding(
        &self,
        who: &VerifiedIdentity,
        pop_proof: Option<&str>,
    ) -> Result<Option<Confirmation>, BrokerError> {
        let Some(pop_proof) = pop_proof else {
            return Ok(None);
        };
        match self.proof_binding("pop_proof", pop_proof, REDEEM_DELEGATION_HTU).await {
            Ok(b) => Ok(Some(b)),
            Err(e) => self.binding_refused(who, "redeem_delegation", e).await,
        }
    }

    /// Verifies `proof` for `htu` and burns its `jti`.
    async fn proof_binding(&self, field: &'static str, proof: &str, htu: &str) -> Result<Confirmation, BrokerError> {
        let now = self.clock.now();
        let leeway = chrono::Duration::seconds(self.settings.leeway_secs.max(0));
        let check = ProofCheck {
            htm: PROOF_HTM,
            htu,
            now,
            max_age: PROOF_MAX_AGE,
            leeway,
            access_token: None,
        };
        let verified = pop::verify_proof(proof, &check).map_err(|source| BrokerError::Proof { field, source })?;
        // Remembered until the proof is too old anyway (plus the future leeway it may have used).
        let until = verified.replay_until(PROOF_MAX_AGE) + leeway;
        if !self
            .replay
            .first_use(PROOF_REPLAY_NAMESPACE, &verified.replay_id(), until)
            .await?
        {
            return Err(BrokerError::Proof {
                field,
                source: ProofError::Replayed,
            });
        }
        Ok(Confirmation::Jkt(verified.jkt))
    }

    async fn binding_refused<T>(
        &self,
        who: &VerifiedIdentity,
        operation: &'static str,
        e: BrokerError,
    ) -> Result<T, BrokerError> {
        if matches!(
            e.kind(),
            tessera_core::ErrorKind::Unavailable | tessera_core::ErrorKind::Internal
        ) {
            return Err(e);
        }
        let denial = self
            .denial(AuditKind::TokenDenied, Some(who))
            .logged(DenialLog::Binding)
            .metric(operation)
            .counted();
        self.deny(denial, e).await
    }
}

/// `cnf.x5t#S256` of a caller attested by its X.509-SVID: the evidence is
/// `sha256:<hex>` of the leaf certificate's DER (`tls::peer_svid`).
fn certificate_binding(who: &VerifiedIdentity) -> Result<Confirmation, BrokerError> {
    const NOT_MTLS: &str = "mtls_binding: the caller was not attested by an mTLS client certificate";
    if who.method() != AttestationMethod::X509 {
        return Err(BrokerError::Binding(NOT_MTLS));
    }
    let hex = who
        .evidence()
        .strip_prefix("sha256:")
        .filter(|h| h.len() == 64)
        .ok_or(BrokerError::Binding(NOT_MTLS))?;
    let digest: Vec<u8> = (0..32)
        .map(|i| hex.get(2 * i..2 * i + 2).and_then(|b| u8::from_str_radix(b, 16).ok()))
        .collect::<Option<_>>()
        .ok_or(BrokerError::Binding(NOT_MTLS))?;
    Ok(Confirmation::X5tS256(
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(digest),
    ))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "test")]

    use tessera_core::identity::{Identity, IdentityKind, IdentityRegistry, Role, SpiffeId};
    use tessera_core::ttl::Ttl;

    use super::*;

    #[test]
    fn the_certificate_binding_is_the_rfc_8705_thumbprint_of_the_leaf() {
        let id = SpiffeId::parse("spiffe://td/agent").unwrap();
        let registry = IdentityRegistry::new([Identity {
            id: id.clone(),
            kind: IdentityKind::Agent,
            owner: "t".into(),
            max_ttl: Ttl::from_secs(60).unwrap(),
            roles: [Role::Agent].into_iter().collect(),
            disabled: false,
        }]);
        let der = b"not really a certificate";
        let who = VerifiedIdentity::attested(&registry, &id, AttestationMethod::X509, tessera_core::hex::sha256(der))
            .unwrap();
        assert_eq!(
            certificate_binding(&who).unwrap(),
            Confirmation::X5tS256(pop::certificate_thumbprint(der))
        );
        let odd = VerifiedIdentity::attested(&registry, &id, AttestationMethod::X509, "sha256:zz".into()).unwrap();
        assert!(certificate_binding(&odd).is_err());
    }

    use crate::broker::testing::{AGENT, Fixture};

    #[tokio::test]
    async fn an_mtls_caller_binds_to_its_certificate_and_one_binding_only() {
        let f = Fixture::new().await;
        let who = f.who(AGENT);
        let bound = f
            .broker
            .request_binding(&who, &BindingAsk::of_fields("", true))
            .await
            .unwrap();
        assert!(matches!(bound, Some(Confirmation::X5tS256(_))));
        assert_eq!(
            f.broker
                .request_binding(&who, &BindingAsk::of_fields("", false))
                .await
                .unwrap(),
            None
        );
        let both = f
            .broker
            .request_binding(&who, &BindingAsk::of_fields("a.b.c", true))
            .await;
        assert!(matches!(both, Err(BrokerError::Binding(_))));
        assert_eq!(f.audit.last().event, AuditKind::TokenDenied);
    }

    #[tokio::test]
    async fn a_malformed_proof_is_refused_naming_its_field() {
        let f = Fixture::new().await;
        let refused = f
            .broker
            .request_binding(&f.who(AGENT), &BindingAsk::of_fields("not-a-proof", false))
            .await;
        let err = refused.err().unwrap();
        assert_eq!(err.kind(), tessera_core::ErrorKind::InvalidArgument);
        assert!(err.to_string().starts_with("pop_proof: "), "{err}");
        let refused = f.broker.redeem_binding(&f.who(AGENT), Some("not-a-proof")).await;
        assert!(refused.err().unwrap().to_string().starts_with("pop_proof: "));
    }
}

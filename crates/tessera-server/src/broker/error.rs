//! Why a broker operation failed, and the transport-free kind that
//! `status.rs` maps to a gRPC or HTTP code.

use tessera_core::ErrorKind;
use tessera_core::grant::{GrantId, RandomError};
use tessera_core::identity::{IdentityError, SpiffeId};
use tessera_core::issuance::IssuanceError;
use tessera_core::orchestration::OrchestrationError;
use tessera_core::task::TaskError;
use tessera_core::token::KeyError;
use tessera_store::StoreError;

use super::policy;
use crate::audit::AuditError;

/// Why a broker operation failed. [`BrokerError::kind`] decides the status code.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BrokerError {
    /// The caller is not a registered, enabled identity.
    #[error(transparent)]
    Identity(#[from] IdentityError),
    /// A token request was refused.
    #[error(transparent)]
    Issuance(#[from] IssuanceError),
    /// A task operation was refused.
    #[error(transparent)]
    Orchestration(#[from] OrchestrationError),
    /// The task cannot be acted on.
    #[error(transparent)]
    Task(#[from] TaskError),
    /// The store failed or refused.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// No such grant.
    #[error("grant `{0}` not found")]
    GrantNotFound(GrantId),
    /// The caller may not touch this grant.
    #[error("identity `{0}` is not the holder of this grant")]
    NotHolder(String),
    /// Signing failed.
    #[error("signing failed")]
    Signing(#[source] KeyError),
    /// The random source failed.
    #[error(transparent)]
    Random(#[from] RandomError),
    /// The identity named by an operator is not registered.
    #[error("identity `{0}` is not registered")]
    UnknownIdentity(SpiffeId),
    /// A request field is malformed (see [`super::Asked`]).
    #[error(transparent)]
    Field(#[from] crate::status::FieldError),
    /// No audit record could be written, so the operation does not happen.
    #[error("audit trail unavailable: {0}")]
    Audit(#[source] AuditError),
    /// Policy refused, or could not be asked.
    #[error(transparent)]
    Policy(#[from] policy::PolicyRefusal),
    /// A delegation was refused.
    #[error(transparent)]
    Delegation(#[from] tessera_core::delegation::DelegationError),
    /// A proof-of-possession was refused; `field` is the request field.
    #[error("{field}: {source}")]
    Proof {
        /// The request field holding the proof.
        field: &'static str,
        /// Why.
        #[source]
        source: tessera_core::pop::ProofError,
    },
    /// A token of a class that must be bound was asked for without a binding.
    #[error(
        "{field}: {class} tokens are never issued as bearer tokens; send a proof of possession (pop_proof) or, over mTLS, set mtls_binding"
    )]
    Unbound {
        /// The request field that would bind it.
        field: &'static str,
        /// The token's class.
        class: tessera_core::task::ScopeClass,
    },
    /// The binding asked for cannot be made; the message names the field.
    #[error("{0}")]
    Binding(&'static str),
    /// A token in a request field is not a live token of this broker.
    #[error("{0}: not a live token issued by this broker")]
    NotLiveToken(&'static str),
    /// An approval operation was refused (self-approval, not pending,
    /// denied, expired, already redeemed, not the requester's).
    #[error(transparent)]
    Approval(tessera_core::approval::ApprovalError),
    /// The grant's risk is above a cap (`blast_radius_exceeded`).
    #[error(transparent)]
    Risk(tessera_core::risk::RiskError),
    /// An operator-console sign-in or session was refused.
    #[error(transparent)]
    Console(#[from] super::console::ConsoleError),
    /// A verifier sent more misuse reports than one window allows.
    #[error("too many misuse reports from `{0}`; try again in a minute")]
    TooManyReports(SpiffeId),
    /// The identity tripped an anomaly rule and is refused until `until`.
    #[error("identity `{identity}` is quarantined until {until} (anomaly: {why})")]
    Quarantined {
        /// The identity.
        identity: SpiffeId,
        /// When the quarantine ends.
        until: chrono::DateTime<chrono::Utc>,
        /// The rule that fired, for people.
        why: String,
    },
}

impl BrokerError {
    /// Transport-free classification.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::Identity(e) => e.kind(),
            Self::Issuance(e) => e.kind(),
            Self::Orchestration(e) => e.kind(),
            Self::Task(e) => e.kind(),
            Self::Approval(e) => e.kind(),
            Self::Risk(e) => e.kind(),
            Self::Store(e) => e.kind(),
            Self::Policy(e) => e.kind(),
            Self::GrantNotFound(_) | Self::UnknownIdentity(_) => ErrorKind::NotFound,
            Self::NotHolder(_) | Self::Quarantined { .. } => ErrorKind::PermissionDenied,
            Self::Signing(_) | Self::Random(_) => ErrorKind::Internal,
            Self::TooManyReports(_) => ErrorKind::ResourceExhausted,
            Self::Audit(_) => ErrorKind::Unavailable,
            Self::Delegation(e) => e.kind(),
            Self::Console(e) => e.kind(),
            Self::Proof { source, .. } => source.kind(),
            Self::Unbound { .. } | Self::Binding(_) | Self::NotLiveToken(_) | Self::Field(_) => {
                ErrorKind::InvalidArgument
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use tessera_core::ErrorKind;

    use super::*;
    use crate::audit::{AuditError, Sink};

    #[test]
    fn each_error_has_the_kind_its_status_code_is_made_of() {
        let cases = [
            (
                BrokerError::Audit(AuditError::Stopped {
                    sink: Sink::Stream("test".into()),
                }),
                ErrorKind::Unavailable,
            ),
            (
                BrokerError::GrantNotFound(GrantId::parse("g1").unwrap()),
                ErrorKind::NotFound,
            ),
            (
                BrokerError::NotHolder("spiffe://td/a".into()),
                ErrorKind::PermissionDenied,
            ),
            (BrokerError::NotLiveToken("token"), ErrorKind::InvalidArgument),
            (BrokerError::Binding("mtls_binding: no"), ErrorKind::InvalidArgument),
        ];
        for (err, kind) in cases {
            assert_eq!(err.kind(), kind, "{err}");
        }
    }

    #[test]
    fn an_audit_failure_keeps_its_cause_and_its_message() {
        let err = BrokerError::Audit(AuditError::Stopped {
            sink: Sink::Stream("test".into()),
        });
        assert!(err.to_string().starts_with("audit trail unavailable: "), "{err}");
        let source = std::error::Error::source(&err).expect("the sink's error is the source");
        assert!(source.downcast_ref::<AuditError>().is_some());
    }
}

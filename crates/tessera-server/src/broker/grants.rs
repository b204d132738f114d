//! Operator views over many grants: ListGrants and BlastRadius.

use std::collections::{BTreeSet, HashSet};

use tessera_core::grant::{Grant, GrantId};
use tessera_core::identity::{SpiffeId, VerifiedIdentity};
use tessera_core::policy::Operation;
use tessera_core::token::MAX_CHAIN_LEN;
use tessera_store::{GrantFilter, GrantPage, StoreError};

use super::{Asked, Broker, BrokerError};

/// A ListGrants query, parsed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GrantQuery {
    /// Filters the store applies.
    pub filter: GrantFilter,
    /// Only grants of identities whose registry owner is this.
    pub owner: Option<String>,
    /// Continue after this cursor (a `next_page_token`).
    pub page_token: Option<String>,
    /// Most grants to return (1..=1000).
    pub page_size: usize,
}

impl Broker {
    /// ListGrants (operator): live grants matching `query`, one page.
    pub async fn list_grants(
        &self,
        who: &VerifiedIdentity,
        query: Asked<GrantQuery>,
    ) -> Result<GrantPage, BrokerError> {
        self.authorize(who, Operation::ListGrants).await?;
        let query = query?;
        let mut filter = query.filter;
        if let Some(owner) = &query.owner {
            let owned = self.registry.owned_by(owner);
            filter.subjects = Some(match filter.subjects.take() {
                Some(subjects) => subjects.intersection(&owned).cloned().collect(),
                None => owned,
            });
        }
        let page = self
            .store
            .list_grants(&filter, query.page_token.as_deref(), query.page_size, self.clock.now())
            .await?;
        tracing::debug!(
            event = "grants_listed",
            by = %who.id(),
            grants = page.grants.len(),
            more = page.next.is_some(),
            "grants listed"
        );
        Ok(page)
    }

    /// BlastRadius (operator): what the live grants of an identity, an
    /// owner's identities or a task reach now. Read-only, so not audited
    /// (a refused caller is, by [`Broker::authorize`]). An identity
    /// must be registered and a task must exist; a target with more than
    /// [`tessera_core::blast::MAX_BLAST_GRANTS`] live grants is refused
    /// (RESOURCE_EXHAUSTED) rather than summarised from a partial view.
    pub async fn blast_radius(
        &self,
        who: &VerifiedIdentity,
        target: Asked<tessera_core::blast::BlastTarget>,
    ) -> Result<tessera_core::blast::BlastRadius, BrokerError> {
        use tessera_core::blast::{self, BlastTarget, MAX_BLAST_GRANTS};
        use tessera_store::MAX_GRANT_PAGE;

        self.authorize(who, Operation::BlastRadius).await?;
        let target = &target?;
        let mut filter = GrantFilter::default();
        match target {
            BlastTarget::Identity(id) => {
                if !self.registry.contains(id) {
                    return Err(BrokerError::UnknownIdentity(id.clone()));
                }
                filter.subjects = Some(std::collections::BTreeSet::from([id.clone()]));
            }
            BlastTarget::Owner(owner) => filter.subjects = Some(self.registry.owned_by(owner)),
            BlastTarget::Task(id) => {
                if self.store.task(id).await?.is_none() {
                    return Err(StoreError::TaskNotFound(id.clone()).into());
                }
                filter.task_id = Some(id.clone());
            }
        }
        let now = self.clock.now();
        let mut grants = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let page = self
                .store
                .list_grants(&filter, after.as_deref(), MAX_GRANT_PAGE, now)
                .await?;
            grants.extend(page.grants);
            if grants.len() > MAX_BLAST_GRANTS {
                return Err(
                    StoreError::Full("blast radius: the target has more than 100000 live grants; narrow it").into(),
                );
            }
            match page.next {
                Some(next) => after = Some(next),
                None => break,
            }
        }
        let ancestors = self.ancestors(&grants).await?;
        let owner_of = |id: &SpiffeId| self.registry.lookup(id).ok().map(|i| i.owner.clone());
        let radius = blast::blast_radius(&grants, &ancestors, owner_of, now);
        tracing::debug!(
            event = "blast_radius",
            by = %who.id(),
            target = ?target,
            live_grants = radius.live_grants,
            "blast radius computed"
        );
        Ok(radius)
    }

    /// The parents of `grants` held outside them (a delegate's parent is its
    /// delegator's grant), and theirs, up to the longest chain a token may
    /// carry: each distinct grant is read once. A parent the store no longer
    /// holds (expired) ends its chain; the depth still counts its hop.
    async fn ancestors(&self, grants: &[Grant]) -> Result<tessera_core::blast::Ancestors, BrokerError> {
        let known: HashSet<&GrantId> = grants.iter().map(|g| &g.id).collect();
        let mut ancestors = tessera_core::blast::Ancestors::new();
        let mut frontier: BTreeSet<GrantId> = grants
            .iter()
            .filter_map(|g| g.parent.clone())
            .filter(|p| !known.contains(p))
            .collect();
        for _ in 0..MAX_CHAIN_LEN {
            let mut next = BTreeSet::new();
            for id in frontier {
                if let Some(grant) = self.store.grant(&id).await? {
                    if let Some(parent) = &grant.parent
                        && !known.contains(parent)
                        && !ancestors.contains_key(parent)
                    {
                        next.insert(parent.clone());
                    }
                    ancestors.insert(id, grant.parent);
                }
            }
            if next.is_empty() {
                break;
            }
            frontier = next;
        }
        Ok(ancestors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tessera_core::ErrorKind;
    use tessera_core::blast::BlastTarget;

    use crate::broker::testing::{AGENT, AGENT2, Fixture, OPERATOR, id};

    fn everything() -> GrantQuery {
        GrantQuery {
            page_size: 100,
            ..GrantQuery::default()
        }
    }

    #[tokio::test]
    async fn an_operator_lists_live_grants_and_an_agent_may_not() {
        let f = Fixture::new().await;
        f.task("t1").await;
        let issued = f.issue("t1", &["contacts.read"]).await;
        let page = f.broker.list_grants(&f.who(OPERATOR), Ok(everything())).await.unwrap();
        assert_eq!(
            page.grants.iter().map(|g| g.id.clone()).collect::<Vec<_>>(),
            vec![issued.grant.id]
        );
        let refused = f.broker.list_grants(&f.who(AGENT), Ok(everything())).await;
        assert_eq!(refused.err().map(|e| e.kind()), Some(ErrorKind::PermissionDenied));
        let mut query = everything();
        query.owner = Some("someone else".into());
        assert!(
            f.broker
                .list_grants(&f.who(OPERATOR), Ok(query))
                .await
                .unwrap()
                .grants
                .is_empty()
        );
    }

    #[tokio::test]
    async fn blast_radius_counts_live_grants_of_a_registered_identity() {
        let f = Fixture::new().await;
        f.task("t1").await;
        f.issue("t1", &["contacts.read"]).await;
        let radius = f
            .broker
            .blast_radius(&f.who(OPERATOR), Ok(BlastTarget::Identity(id(AGENT))))
            .await
            .unwrap();
        assert_eq!(radius.live_grants, 1);
        let unknown = BlastTarget::Identity(id("spiffe://td/nobody"));
        let refused = f.broker.blast_radius(&f.who(OPERATOR), Ok(unknown)).await;
        assert_eq!(refused.err().map(|e| e.kind()), Some(ErrorKind::NotFound));
    }

    #[tokio::test]
    async fn blast_radius_counts_delegation_depth_through_grants_held_by_others() {
        let f = Fixture::new().await;
        f.task("t1").await;
        let root = f.issue("t1", &["contacts.read"]).await;
        let delegate = |to: &str| tessera_core::delegation::DelegationRequest {
            tools: None,
            delegate: id(to),
            scopes: BTreeSet::from([crate::broker::testing::scope("contacts.read")]),
            ttl: None,
            audience: None,
            task_id: None,
        };
        let child = f
            .broker
            .delegate_token(&f.who(AGENT), &root.token, &delegate(AGENT2))
            .await
            .unwrap();
        f.broker
            .delegate_token(&f.who(AGENT2), &child.token, &delegate(AGENT))
            .await
            .unwrap();
        let depth = |who: &str| {
            let target = Ok(BlastTarget::Identity(id(who)));
            let f = &f;
            async move {
                f.broker
                    .blast_radius(&f.who(OPERATOR), target)
                    .await
                    .unwrap()
                    .max_delegation_depth
            }
        };
        // AGENT2 holds only the child; its parent is AGENT's grant.
        assert_eq!(depth(AGENT2).await, 1);
        // AGENT's grandchild reaches its root through AGENT2's child.
        assert_eq!(depth(AGENT).await, 2);
    }

    #[tokio::test]
    async fn policy_is_asked_once_and_a_refusal_recorded_once() {
        let f = Fixture::new().await;
        let before = f.audit.records().len();
        let refused = f.broker.list_grants(&f.who(AGENT), Ok(everything())).await;
        assert_eq!(refused.err().map(|e| e.kind()), Some(ErrorKind::PermissionDenied));
        let records = f.audit.records();
        assert_eq!(records.len(), before + 1);
        let record = records.last().unwrap();
        assert_eq!(record.event, tessera_core::audit::AuditKind::AdminDenied);
        assert!(record.reason.as_deref().unwrap().starts_with("ListGrants: "));
    }

    #[tokio::test]
    async fn a_malformed_field_is_answered_only_to_an_authorized_caller() {
        let f = Fixture::new().await;
        let malformed = || Err(crate::status::FieldError::new("page_token", "is not a cursor"));
        let refused = f.broker.list_grants(&f.who(AGENT), malformed()).await;
        assert_eq!(refused.err().map(|e| e.kind()), Some(ErrorKind::PermissionDenied));
        let invalid = f.broker.list_grants(&f.who(OPERATOR), malformed()).await;
        let err = invalid.expect_err("malformed");
        assert_eq!(err.kind(), ErrorKind::InvalidArgument);
        assert_eq!(err.to_string(), "page_token: is not a cursor");
    }
}

//! `tessera.v1.AdminService`. Each handler converts the request, calls one
//! use case (which asks policy, by operation, and records a refusal),
//! and converts the answer. Fields are handed over parsed or with the
//! parse error ([`crate::broker::Asked`]): the use case answers a malformed
//! field only to a caller it has authorized.

use tessera_core::task::TaskState;
use tessera_proto::v1 as pb;
use tessera_proto::v1::admin_service_server::AdminService;
use tonic::{Request, Response, Status};

use super::Shared;
use crate::{convert, status};

#[tonic::async_trait]
impl AdminService for Shared {
    async fn list_grants(
        &self,
        req: Request<pb::ListGrantsRequest>,
    ) -> Result<Response<pb::ListGrantsResponse>, Status> {
        let who = self.caller(&req).await?;
        let query = convert::grant_query(req.get_ref());
        let page = self
            .broker
            .list_grants(&who, query)
            .await
            .map_err(status::from_broker)?;
        let now = self.broker.now();
        Ok(Response::new(pb::ListGrantsResponse {
            grants: page.grants.iter().map(|g| convert::grant(g, now)).collect(),
            next_page_token: page.next.unwrap_or_default(),
        }))
    }

    async fn revoke_grant(
        &self,
        req: Request<pb::RevokeGrantRequest>,
    ) -> Result<Response<pb::RevokeGrantResponse>, Status> {
        let who = self.caller(&req).await?;
        let id = convert::grant_id("grant_id", &req.get_ref().grant_id)?;
        let reason = convert::reason("reason", &req.get_ref().reason, "revoked by operator")?;
        let outcome = self
            .broker
            .revoke_grant(&who, &id, &reason)
            .await
            .map_err(status::from_broker)?;
        Ok(Response::new(pb::RevokeGrantResponse {
            grant_id: id.to_string(),
            revoked: outcome.revoked,
        }))
    }

    async fn revoke_task(
        &self,
        req: Request<pb::RevokeTaskRequest>,
    ) -> Result<Response<pb::RevokeTaskResponse>, Status> {
        let who = self.caller(&req).await?;
        let id = convert::task_id("task_id", &req.get_ref().task_id)?;
        let reason = convert::reason("reason", &req.get_ref().reason, "revoked by operator")?;
        let ended = self
            .broker
            .end_task(&who, &id, TaskState::Revoked, &reason)
            .await
            .map_err(status::from_broker)?;
        Ok(Response::new(pb::RevokeTaskResponse {
            task: Some(convert::task(&ended.task, self.broker.now(), 0)),
            grants_revoked: ended.grants_revoked,
            child_tasks_ended: ended.children_ended.iter().map(ToString::to_string).collect(),
        }))
    }

    async fn revoke_identity(
        &self,
        req: Request<pb::RevokeIdentityRequest>,
    ) -> Result<Response<pb::RevokeIdentityResponse>, Status> {
        let who = self.caller(&req).await?;
        let r = req.get_ref();
        let asked = convert::identity("identity", &r.identity).and_then(|id| {
            Ok((
                id,
                convert::reason("reason", &r.reason, "identity revoked by operator")?,
            ))
        });
        let done = self
            .broker
            .revoke_identity(&who, asked, r.disable)
            .await
            .map_err(status::from_broker)?;
        Ok(Response::new(pb::RevokeIdentityResponse {
            grants_revoked: done.grants_revoked,
            disabled: done.disabled,
        }))
    }

    async fn enable_identity(
        &self,
        req: Request<pb::EnableIdentityRequest>,
    ) -> Result<Response<pb::EnableIdentityResponse>, Status> {
        let who = self.caller(&req).await?;
        let r = req.get_ref();
        let asked = convert::identity("identity", &r.identity).and_then(|id| {
            Ok((
                id,
                convert::reason("reason", &r.reason, "identity enabled by operator")?,
            ))
        });
        let enabled = self
            .broker
            .enable_identity(&who, asked)
            .await
            .map_err(status::from_broker)?;
        Ok(Response::new(pb::EnableIdentityResponse { enabled }))
    }

    async fn revoke_all(&self, req: Request<pb::RevokeAllRequest>) -> Result<Response<pb::RevokeAllResponse>, Status> {
        let who = self.caller(&req).await?;
        let r = req.get_ref();
        let reason = if r.confirm == "revoke-all" {
            convert::reason("reason", &r.reason, "break-glass")
        } else {
            Err(status::FieldError::new(
                "confirm",
                "must be \"revoke-all\": this revokes every live grant and withdraws every signing key",
            ))
        };
        let (grants_revoked, new_key_id) = self
            .broker
            .revoke_all(&who, reason)
            .await
            .map_err(status::from_broker)?;
        Ok(Response::new(pb::RevokeAllResponse {
            grants_revoked,
            new_key_id,
        }))
    }

    async fn list_approvals(
        &self,
        req: Request<pb::ListApprovalsRequest>,
    ) -> Result<Response<pb::ListApprovalsResponse>, Status> {
        let who = self.caller(&req).await?;
        super::approvals::list(&self.broker, &who, req.get_ref()).await
    }

    async fn decide_approval(
        &self,
        req: Request<pb::DecideApprovalRequest>,
    ) -> Result<Response<pb::DecideApprovalResponse>, Status> {
        let who = self.caller(&req).await?;
        super::approvals::decide(&self.broker, &who, req.get_ref()).await
    }

    async fn blast_radius(
        &self,
        req: Request<pb::BlastRadiusRequest>,
    ) -> Result<Response<pb::BlastRadiusResponse>, Status> {
        let who = self.caller(&req).await?;
        let target = convert::blast_target(req.get_ref());
        let radius = self
            .broker
            .blast_radius(&who, target)
            .await
            .map_err(status::from_broker)?;
        Ok(Response::new(convert::blast_radius(&radius)))
    }

    async fn rotate_signing_key(
        &self,
        req: Request<pb::RotateSigningKeyRequest>,
    ) -> Result<Response<pb::RotateSigningKeyResponse>, Status> {
        let who = self.caller(&req).await?;
        let why = convert::reason("reason", &req.get_ref().reason, "rotated by operator");
        let (new_key_id, retired_key_id) = self.broker.rotate_key(&who, why).await.map_err(status::from_broker)?;
        Ok(Response::new(pb::RotateSigningKeyResponse {
            new_key_id,
            retired_key_id,
        }))
    }

    async fn open_console(
        &self,
        req: Request<pb::OpenConsoleRequest>,
    ) -> Result<Response<pb::OpenConsoleResponse>, Status> {
        let who = self.caller(&req).await?;
        // The session must not outlive the operator's certificate.
        let not_after = req
            .extensions()
            .get::<crate::tls::PeerInfo>()
            .and_then(|p| p.client_cert.as_ref())
            .and_then(crate::attest::trust::ClientCert::not_after);
        let code = self
            .broker
            .open_console(&who, not_after)
            .await
            .map_err(status::from_broker)?;
        Ok(Response::new(pb::OpenConsoleResponse {
            url: code.url,
            expires_at: Some(convert::timestamp(code.expires_at)),
        }))
    }

    async fn reload_policy(
        &self,
        req: Request<pb::ReloadPolicyRequest>,
    ) -> Result<Response<pb::ReloadPolicyResponse>, Status> {
        let who = self.caller(&req).await?;
        let (hash, policies) = self
            .broker
            .reload_policy(Some(&who))
            .await
            .map_err(status::from_broker)?;
        Ok(Response::new(pb::ReloadPolicyResponse {
            policy_set_hash: hash.to_string(),
            policies: u32::try_from(policies).unwrap_or(u32::MAX),
        }))
    }
}

//! `tessera.v1.AgentService`.

use std::pin::Pin;

use tessera_proto::v1 as pb;
use tessera_proto::v1::agent_service_server::AgentService;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use super::{Shared, not_yet};
use crate::{convert, status};

#[tonic::async_trait]
impl AgentService for Shared {
    async fn request_token(
        &self,
        req: Request<pb::RequestTokenRequest>,
    ) -> Result<Response<pb::RequestTokenResponse>, Status> {
        let who = self.caller(&req).await?;
        let mut request = convert::token_request(req.get_ref())?;
        request.binding = self
            .broker
            .request_binding(&who, &req.get_ref().pop_proof, req.get_ref().mtls_binding)
            .await
            .map_err(status::from_broker)?;
        let token_type = request.binding.as_ref().map(|b| b.token_type());
        let issued = self
            .broker
            .request_token(&who, &request)
            .await
            .map_err(status::from_broker)?;
        let mut token = convert::issued(issued);
        if let Some(token_type) = token_type {
            token.token_type = token_type.into();
        }
        Ok(Response::new(pb::RequestTokenResponse {
            outcome: Some(pb::request_token_response::Outcome::Token(token)),
        }))
    }

    type AwaitApprovalStream = Pin<Box<dyn Stream<Item = Result<pb::AwaitApprovalResponse, Status>> + Send>>;

    async fn await_approval(
        &self,
        req: Request<pb::AwaitApprovalRequest>,
    ) -> Result<Response<Self::AwaitApprovalStream>, Status> {
        self.caller(&req).await?;
        Err(not_yet("AwaitApproval", "approvals arrive with policy-as-code"))
    }

    async fn delegate_token(
        &self,
        req: Request<pb::DelegateTokenRequest>,
    ) -> Result<Response<pb::IssuedToken>, Status> {
        let who = self.caller(&req).await?;
        let request = convert::delegation_request(req.get_ref())?;
        let binding = self
            .broker
            .delegate_binding(&who, &req.get_ref().delegate_pop_proof)
            .await
            .map_err(status::from_broker)?;
        let token_type = binding.as_ref().map(|b| b.token_type());
        let issued = self
            .broker
            .delegate_token(&who, &req.get_ref().parent_token, &request, binding)
            .await
            .map_err(status::from_broker)?;
        let mut token = convert::issued(issued);
        if let Some(token_type) = token_type {
            token.token_type = token_type.into();
        }
        Ok(Response::new(token))
    }

    async fn release_token(
        &self,
        req: Request<pb::ReleaseTokenRequest>,
    ) -> Result<Response<pb::ReleaseTokenResponse>, Status> {
        let who = self.caller(&req).await?;
        let id = match &req.get_ref().target {
            Some(pb::release_token_request::Target::GrantId(id)) => convert::grant_id("grant_id", id)?,
            Some(pb::release_token_request::Target::Token(_)) => {
                return Err(Status::invalid_argument(
                    "token: release by grant_id; release by token is not supported yet",
                ));
            }
            None => return Err(Status::invalid_argument("target: set grant_id")),
        };
        let outcome = self.broker.release(&who, &id).await.map_err(status::from_broker)?;
        Ok(Response::new(pb::ReleaseTokenResponse {
            grant_id: id.to_string(),
            revoked: outcome.revoked,
        }))
    }
}

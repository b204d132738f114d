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
        let request = convert::token_request(req.get_ref())?;
        let issued = self
            .broker
            .request_token(&who, &request)
            .await
            .map_err(status::from_broker)?;
        Ok(Response::new(pb::RequestTokenResponse {
            outcome: Some(pb::request_token_response::Outcome::Token(convert::issued(issued))),
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
        self.caller(&req).await?;
        Err(not_yet("DelegateToken", "delegation arrives with proof-of-possession"))
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

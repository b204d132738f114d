//! `tessera.v1.AgentService`.

use std::pin::Pin;

use tessera_proto::v1 as pb;
use tessera_proto::v1::agent_service_server::AgentService;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use super::Shared;
use crate::broker::TokenOutcome;
use crate::{convert, status};

#[tonic::async_trait]
impl AgentService for Shared {
    async fn request_token(
        &self,
        req: Request<pb::RequestTokenRequest>,
    ) -> Result<Response<pb::RequestTokenResponse>, Status> {
        let who = self.caller(&req).await?;
        let ask = convert::token_ask(req.get_ref())?;
        let outcome = match self
            .broker
            .request_token(&who, ask)
            .await
            .map_err(status::from_broker)?
        {
            TokenOutcome::Issued(issued) => pb::request_token_response::Outcome::Token(convert::issued(issued)),
            TokenOutcome::Pending(approval) => {
                pb::request_token_response::Outcome::Pending(convert::pending(&approval))
            }
        };
        Ok(Response::new(pb::RequestTokenResponse { outcome: Some(outcome) }))
    }

    type AwaitApprovalStream = Pin<Box<dyn Stream<Item = Result<pb::AwaitApprovalResponse, Status>> + Send>>;

    async fn await_approval(
        &self,
        req: Request<pb::AwaitApprovalRequest>,
    ) -> Result<Response<Self::AwaitApprovalStream>, Status> {
        let who = self.caller(&req).await?;
        let id = convert::approval_id("approval_id", &req.get_ref().approval_id)?;
        // The first look fails the call itself: unknown, not the caller's,
        // denied, expired or already redeemed.
        let first = self.broker.await_step(&who, &id).await.map_err(status::from_broker)?;
        Ok(Response::new(self.drain.wrap(super::approvals::await_stream(
            self.broker.clone(),
            who,
            id,
            first,
            self.heartbeat,
        ))))
    }

    async fn delegate_token(
        &self,
        req: Request<pb::DelegateTokenRequest>,
    ) -> Result<Response<pb::IssuedToken>, Status> {
        let who = self.caller(&req).await?;
        let r = req.get_ref();
        let request = convert::delegation_request(r)?;
        let issued = self
            .broker
            .delegate_token(&who, &r.parent_token, &request)
            .await
            .map_err(status::from_broker)?;
        Ok(Response::new(convert::issued(issued)))
    }

    async fn offer_delegation(
        &self,
        req: Request<pb::DelegateTokenRequest>,
    ) -> Result<Response<pb::DelegationOffer>, Status> {
        let who = self.caller(&req).await?;
        let r = req.get_ref();
        let request = convert::delegation_request(r)?;
        let offer = self
            .broker
            .offer_delegation(&who, &r.parent_token, &request)
            .await
            .map_err(status::from_broker)?;
        Ok(Response::new(convert::offer(offer)))
    }

    async fn redeem_delegation(
        &self,
        req: Request<pb::RedeemDelegationRequest>,
    ) -> Result<Response<pb::IssuedToken>, Status> {
        let who = self.caller(&req).await?;
        let r = req.get_ref();
        let proof = convert::redeem_request(r)?;
        let issued = self
            .broker
            .redeem_delegation(&who, &r.offer, proof)
            .await
            .map_err(status::from_broker)?;
        Ok(Response::new(convert::issued(issued)))
    }

    async fn release_token(
        &self,
        req: Request<pb::ReleaseTokenRequest>,
    ) -> Result<Response<pb::ReleaseTokenResponse>, Status> {
        let who = self.caller(&req).await?;
        let (id, outcome) = match &req.get_ref().target {
            Some(pb::release_token_request::Target::GrantId(id)) => {
                let id = convert::grant_id("grant_id", id)?;
                let outcome = self.broker.release(&who, &id).await.map_err(status::from_broker)?;
                (id, outcome)
            }
            Some(pb::release_token_request::Target::Token(token)) => {
                convert::token("token", token)?;
                self.broker
                    .release_token(&who, token)
                    .await
                    .map_err(status::from_broker)?
            }
            None => return Err(Status::invalid_argument("target: set grant_id or token")),
        };
        Ok(Response::new(pb::ReleaseTokenResponse {
            grant_id: id.to_string(),
            revoked: outcome.revoked,
        }))
    }
}

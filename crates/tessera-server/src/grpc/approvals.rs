//! The approval RPCs' edges: AwaitApproval's stream (AgentService) and
//! ListApprovals / DecideApproval (AdminService).

use std::sync::Arc;
use std::time::Duration;

use tessera_core::approval::ApprovalId;
use tessera_core::identity::VerifiedIdentity;
use tessera_proto::v1 as pb;
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Response, Status};

use crate::broker::{AwaitStep, Broker};
use crate::{convert, status};

/// The AwaitApproval stream: `still_pending` at once and every `heartbeat`
/// while nobody decided; then the token on approval (minted then), or the
/// refusal (PERMISSION_DENIED with the approver's reason, DEADLINE_EXCEEDED
/// on expiry), and the stream ends. Bounded: it ends at the approval's
/// expiry at the latest, or when the caller goes away.
pub(super) fn await_stream(
    broker: Arc<Broker>,
    who: VerifiedIdentity,
    id: ApprovalId,
    first: AwaitStep,
    heartbeat: Duration,
) -> impl Stream<Item = Result<pb::AwaitApprovalResponse, Status>> + Send {
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tokio::spawn(async move {
        let mut step = Ok(first);
        let mut last_sent: Option<tokio::time::Instant> = None;
        loop {
            let item = match step {
                Ok(AwaitStep::Pending(approval)) => {
                    if last_sent.is_some_and(|at| at.elapsed() < heartbeat) {
                        None
                    } else {
                        last_sent = Some(tokio::time::Instant::now());
                        Some(Ok(pb::AwaitApprovalResponse {
                            event: Some(pb::await_approval_response::Event::StillPending(convert::pending(
                                &approval,
                            ))),
                        }))
                    }
                }
                Ok(AwaitStep::Issued(issued)) => {
                    let token = pb::AwaitApprovalResponse {
                        event: Some(pb::await_approval_response::Event::Token(convert::issued(issued))),
                    };
                    let _ = tx.send(Ok(token)).await;
                    return;
                }
                Err(e) => {
                    let _ = tx.send(Err(status::from_broker(e))).await;
                    return;
                }
            };
            if let Some(item) = item
                && tx.send(item).await.is_err()
            {
                return; // the requester went away
            }
            tokio::select! {
                () = tx.closed() => return,
                () = broker.approval_changed() => {}
            }
            step = broker.await_step(&who, &id).await;
        }
    });
    ReceiverStream::new(rx)
}

/// Default and largest ListApprovals page.
const DEFAULT_PAGE: usize = 50;

/// ListApprovals.
pub(super) async fn list(
    broker: &Broker,
    who: &VerifiedIdentity,
    req: &pb::ListApprovalsRequest,
) -> Result<Response<pb::ListApprovalsResponse>, Status> {
    let after = (!req.page_token.is_empty())
        .then(|| convert::approval_id("page_token", &req.page_token).map(|id| id.to_string()))
        .transpose();
    let limit = match usize::try_from(req.page_size).unwrap_or(usize::MAX) {
        0 => DEFAULT_PAGE,
        n => n.min(tessera_store::MAX_APPROVAL_PAGE),
    };
    let page = broker
        .list_approvals(who, after.map(|after| (after, limit)))
        .await
        .map_err(status::from_broker)?;
    let now = broker.now();
    Ok(Response::new(pb::ListApprovalsResponse {
        approvals: page.approvals.iter().map(|a| convert::approval(a, now)).collect(),
        next_page_token: page.next.unwrap_or_default(),
    }))
}

/// DecideApproval.
pub(super) async fn decide(
    broker: &Broker,
    who: &VerifiedIdentity,
    req: &pb::DecideApprovalRequest,
) -> Result<Response<pb::DecideApprovalResponse>, Status> {
    let default = if req.approve { "approved" } else { "denied" };
    let asked = convert::approval_id("approval_id", &req.approval_id)
        .and_then(|id| Ok((id, convert::reason("reason", &req.reason, default)?)));
    let approval = broker
        .decide_approval(who, asked, req.approve)
        .await
        .map_err(status::from_broker)?;
    Ok(Response::new(pb::DecideApprovalResponse {
        approval: Some(convert::approval(&approval, broker.now())),
        approved: req.approve,
    }))
}

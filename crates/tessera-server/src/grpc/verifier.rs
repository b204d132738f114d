//! `tessera.v1.VerifierService`.

use std::pin::Pin;

use tessera_proto::v1 as pb;
use tessera_proto::v1::verifier_service_server::VerifierService;
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::Shared;
use crate::{convert, status};

/// Most events sent per feed read.
const FEED_BATCH: usize = 256;

#[tonic::async_trait]
impl VerifierService for Shared {
    async fn get_jwks(&self, req: Request<pb::GetJwksRequest>) -> Result<Response<pb::GetJwksResponse>, Status> {
        // Public keys: any caller may read them (they are on the HTTP port too).
        let published = self.broker.published_keys().await.map_err(status::from_broker)?;
        drop(req);
        Ok(Response::new(convert::published_keys(&published)))
    }

    async fn introspect(
        &self,
        req: Request<pb::IntrospectRequest>,
    ) -> Result<Response<pb::IntrospectResponse>, Status> {
        let who = self.caller(&req).await?;
        convert::token("token", &req.get_ref().token)?;
        let claims = self
            .broker
            .introspect(&who, &req.get_ref().token)
            .await
            .map_err(status::from_broker)?;
        Ok(Response::new(convert::introspection(claims)))
    }

    async fn report_misuse(
        &self,
        req: Request<pb::ReportMisuseRequest>,
    ) -> Result<Response<pb::ReportMisuseResponse>, Status> {
        let who = self.caller(&req).await?;
        convert::token("token", &req.get_ref().token)?;
        let presenter = convert::optional_spiffe_id("presented_by", &req.get_ref().presented_by)?
            .ok_or_else(|| status::FieldError::new("presented_by", "is empty"))?;
        let revoked = self
            .broker
            .report_misuse(&who, &req.get_ref().token, &presenter)
            .await
            .map_err(status::from_broker)?;
        Ok(Response::new(pb::ReportMisuseResponse {
            misuse: revoked.is_some(),
            grants_revoked: revoked.unwrap_or(0),
        }))
    }

    type WatchRevocationsStream = Pin<Box<dyn Stream<Item = Result<pb::WatchRevocationsResponse, Status>> + Send>>;

    async fn watch_revocations(
        &self,
        req: Request<pb::WatchRevocationsRequest>,
    ) -> Result<Response<Self::WatchRevocationsStream>, Status> {
        let who = self.caller(&req).await?;
        let after = convert::position("after", &req.get_ref().after)?;
        // Resolve the starting point now so a bad or lost position fails the call itself.
        let first = self
            .broker
            .read_revocations(&who, after.as_ref(), FEED_BATCH, std::time::Duration::ZERO)
            .await
            .map_err(status::from_broker)?;
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        let broker = self.broker.clone();
        let heartbeat = self.heartbeat;
        tokio::spawn(async move {
            let mut batch = first;
            loop {
                let items = if batch.events.is_empty() {
                    vec![pb::WatchRevocationsResponse {
                        item: Some(pb::watch_revocations_response::Item::Heartbeat(pb::Heartbeat {
                            position: batch.head.to_string(),
                            sent_at: Some(convert::timestamp(broker.now())),
                        })),
                    }]
                } else {
                    batch
                        .events
                        .iter()
                        .map(|e| pb::WatchRevocationsResponse {
                            item: Some(pb::watch_revocations_response::Item::Event(convert::revocation_event(
                                e,
                            ))),
                        })
                        .collect()
                };
                for item in items {
                    if tx.send(Ok(item)).await.is_err() {
                        return; // subscriber gone
                    }
                }
                let head = batch.head.clone();
                let next = tokio::select! {
                    () = tx.closed() => return,
                    next = broker.read_revocations(&who, Some(&head), FEED_BATCH, heartbeat) => next,
                };
                batch = match next {
                    Ok(b) => b,
                    Err(e) => {
                        let _ = tx.send(Err(status::from_broker(e))).await;
                        return;
                    }
                };
            }
        });
        Ok(Response::new(self.drain.wrap(ReceiverStream::new(rx))))
    }
}

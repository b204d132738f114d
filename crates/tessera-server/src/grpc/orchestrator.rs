//! `tessera.v1.OrchestratorService`.

use tessera_core::grant::random_id;
use tessera_core::task::TaskState;
use tessera_proto::v1 as pb;
use tessera_proto::v1::orchestrator_service_server::OrchestratorService;
use tonic::{Request, Response, Status};

use super::Shared;
use crate::{convert, status};

#[tonic::async_trait]
impl OrchestratorService for Shared {
    async fn start_task(&self, req: Request<pb::StartTaskRequest>) -> Result<Response<pb::Task>, Status> {
        let who = self.caller(&req).await?;
        let mut generated = None;
        let start = convert::start_task(req.into_inner(), || {
            let id = random_id().map(|r| format!("task-{r}"));
            let name = id.clone().unwrap_or_default();
            generated = Some(id);
            name
        })?;
        if let Some(Err(e)) = generated {
            return Err(status::from_broker(e.into()));
        }
        let task = self.broker.start_task(&who, start).await.map_err(status::from_broker)?;
        Ok(Response::new(convert::task(&task, self.broker.now(), 0)))
    }

    async fn complete_task(
        &self,
        req: Request<pb::CompleteTaskRequest>,
    ) -> Result<Response<pb::CompleteTaskResponse>, Status> {
        let who = self.caller(&req).await?;
        let id = convert::task_id("task_id", &req.get_ref().task_id)?;
        let reason = convert::reason("reason", &req.get_ref().reason, "task completed")?;
        let ended = self
            .broker
            .end_task(&who, &id, TaskState::Completed, &reason)
            .await
            .map_err(status::from_broker)?;
        Ok(Response::new(pb::CompleteTaskResponse {
            task: Some(convert::task(&ended.task, self.broker.now(), 0)),
            grants_revoked: ended.grants_revoked,
            child_tasks_ended: ended.children_ended.iter().map(ToString::to_string).collect(),
        }))
    }

    async fn get_task(&self, req: Request<pb::GetTaskRequest>) -> Result<Response<pb::Task>, Status> {
        let who = self.caller(&req).await?;
        let id = convert::task_id("task_id", &req.get_ref().task_id)?;
        let (task, live) = self.broker.get_task(&who, &id).await.map_err(status::from_broker)?;
        Ok(Response::new(convert::task(&task, self.broker.now(), live)))
    }
}

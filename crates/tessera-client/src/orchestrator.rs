//! The orchestrator's side of the SDK: start, complete and read tasks.

use crate::Channel;

use crate::error::ClientError;
use crate::pb;
use crate::retry::{RetryPolicy, retry_unavailable};

/// `OrchestratorService` for an orchestrator: typed calls over one mTLS
/// channel. The raw generated client is [`crate::OrchestratorClient`].
#[derive(Debug, Clone)]
pub struct OrchestratorClient {
    inner: crate::OrchestratorClient,
}

impl OrchestratorClient {
    /// A client over `channel` (see [`crate::connect`]).
    pub fn new(channel: Channel) -> Self {
        Self {
            inner: crate::OrchestratorClient::new(channel),
        }
    }

    /// StartTask: opens a task. Build the request with
    /// [`pb::StartTaskRequest`]; an empty `task_id` lets the broker choose.
    pub async fn start(&mut self, req: pb::StartTaskRequest) -> Result<pb::Task, ClientError> {
        Ok(self.inner.start_task(req).await?.into_inner())
    }

    /// CompleteTask: every grant of the task (every delegation hop, and
    /// those of its child tasks) is revoked at once. Returns the task and
    /// how many grants were revoked. A refusal with `UNAVAILABLE` (the
    /// broker's store away) is retried with [`RetryPolicy::default`]'s
    /// bounded backoff, as completion is idempotent; see
    /// [`OrchestratorClient::complete_with`].
    pub async fn complete(&mut self, task_id: &str, reason: &str) -> Result<(pb::Task, u64), ClientError> {
        self.complete_with(task_id, reason, RetryPolicy::default()).await
    }

    /// [`OrchestratorClient::complete`] with its own retry budget
    /// ([`RetryPolicy::ONCE`]: no retry).
    pub async fn complete_with(
        &mut self,
        task_id: &str,
        reason: &str,
        policy: RetryPolicy,
    ) -> Result<(pb::Task, u64), ClientError> {
        let request = pb::CompleteTaskRequest {
            task_id: task_id.to_owned(),
            reason: reason.to_owned(),
        };
        let response = retry_unavailable(
            policy,
            |attempt, status, wait| {
                tracing::warn!(attempt, code = ?status.code(), ?wait, "CompleteTask refused as unavailable; retrying");
            },
            || {
                let mut inner = self.inner.clone();
                let request = request.clone();
                async move { inner.complete_task(request).await }
            },
        )
        .await?
        .into_inner();
        let task = response
            .task
            .ok_or(ClientError::Unexpected("CompleteTask answered without the task"))?;
        Ok((task, response.grants_revoked))
    }

    /// GetTask: the task and its number of live grants.
    pub async fn get(&mut self, task_id: &str) -> Result<pb::Task, ClientError> {
        Ok(self
            .inner
            .get_task(pb::GetTaskRequest {
                task_id: task_id.to_owned(),
            })
            .await?
            .into_inner())
    }
}

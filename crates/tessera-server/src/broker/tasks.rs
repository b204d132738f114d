//! Tasks: StartTask, GetTask, CompleteTask and RevokeTask.

use tessera_core::ErrorKind;
use tessera_core::audit::{AuditKind, Outcome};
use tessera_core::identity::VerifiedIdentity;
use tessera_core::orchestration::{self, StartTask};
use tessera_core::policy::{PolicyQuery, TaskAction};
use tessera_core::task::{Task, TaskError, TaskId, TaskState};
use tessera_store::TaskEnded;

use super::record::{Metric, Success, Told};
use super::{Broker, BrokerError};

/// How long a task read for RequestToken serves the next ones without
/// another read of the store.
const REMEMBER_TASK: chrono::Duration = chrono::Duration::seconds(1);
/// Most tasks remembered; the memory is emptied when full.
const REMEMBERED_TASKS: usize = 4096;

/// Active tasks RequestToken read lately, so that a burst of mints in one
/// task reads it once. What policy and the plan read of a task (agents,
/// ceiling, deadline, labels) never changes once it is created; only its
/// state does, and the grant script checks that atomically with the
/// record: a task ended meanwhile (here or on another replica) refuses the
/// grant, and the request is decided again on the task read afresh.
#[derive(Debug, Default)]
pub(super) struct RecentTasks {
    /// Each task and when it was read.
    tasks: std::sync::Mutex<std::collections::HashMap<TaskId, ReadTask>>,
}

/// A task and when it was read.
type ReadTask = (std::sync::Arc<Task>, chrono::DateTime<chrono::Utc>);

impl RecentTasks {
    /// `id`, if read less than [`REMEMBER_TASK`] ago and not past its deadline.
    fn get(&self, id: &TaskId, now: chrono::DateTime<chrono::Utc>) -> Option<std::sync::Arc<Task>> {
        let tasks = self.tasks.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        tasks
            .get(id)
            .filter(|(task, read_at)| now - *read_at < REMEMBER_TASK && now >= *read_at && task.is_active_at(now))
            .map(|(task, _)| task.clone())
    }

    fn remember(&self, task: std::sync::Arc<Task>, now: chrono::DateTime<chrono::Utc>) {
        let mut tasks = self.tasks.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if tasks.len() >= REMEMBERED_TASKS {
            tasks.clear();
        }
        tasks.insert(task.id.clone(), (task, now));
    }

    pub(super) fn forget(&self, id: &TaskId) {
        self.tasks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(id);
    }
}

impl Broker {
    /// StartTask.
    pub async fn start_task(&self, who: &VerifiedIdentity, req: StartTask) -> Result<Task, BrokerError> {
        let now = self.clock.now();
        let parent = match &req.parent {
            Some(id) => self.store.task(id).await?,
            None => None,
        };
        let requested = req.task_id.to_string();
        // Validated first, so that policy judges a well-formed task.
        let decided = orchestration::start_task(
            who,
            req,
            &self.registry,
            &self.catalog,
            parent.as_ref(),
            &self.settings.tasks,
            now,
        )
        .map_err(BrokerError::from)
        .and_then(|task| {
            let query = PolicyQuery::Task {
                action: TaskAction::Start,
                id: &task.id,
                task: Some(&task),
            };
            let allowed = self.ask_policy(who, &query)?;
            Ok((task, allowed))
        });
        let (task, allowed) = match decided {
            Ok(decided) => decided,
            Err(e) if e.kind() == ErrorKind::PermissionDenied => {
                let mut denial = self
                    .denial(AuditKind::TaskDenied, Some(who))
                    .metric("start_task")
                    .counted();
                denial.event.task_id = Some(requested);
                return self.deny(denial, e).await;
            }
            Err(e) => return Err(e),
        };
        self.store.create_task(&task).await?;
        let mut event = self.event(AuditKind::TaskStarted, Outcome::Allow, Some(who));
        event.task_id = Some(task.id.to_string());
        event.scopes = task
            .ceiling
            .0
            .iter()
            .flat_map(|(aud, s)| s.iter().map(move |s| format!("{aud} {s}")))
            .collect();
        event.count = Some(task.agents.len() as u64);
        allowed.stamp(&mut event);
        let told = Told::TaskStarted {
            task: &task,
            by: who.id(),
        };
        if let Err(e) = self
            .succeed(Success::new(event, told).metric(Metric::Allowed("start_task")))
            .await
        {
            // Unaudited, so it must not stand.
            let _ = self
                .store
                .end_task(&task.id, TaskState::Revoked, "audit trail unavailable", now)
                .await;
            return Err(e);
        }
        Ok(task)
    }

    /// The task a RequestToken names: as read lately (see [`RecentTasks`]),
    /// or read now (then `fresh`).
    pub(super) async fn task_for_token(&self, id: &TaskId) -> Result<(std::sync::Arc<Task>, bool), BrokerError> {
        let now = self.clock.now();
        if let Some(task) = self.recent_tasks.get(id, now) {
            return Ok((task, false));
        }
        let task = std::sync::Arc::new(self.load_task(id).await?);
        if task.is_active_at(now) {
            self.recent_tasks.remember(task.clone(), now);
        }
        Ok((task, true))
    }

    pub(super) async fn load_task(&self, id: &TaskId) -> Result<Task, BrokerError> {
        self.store
            .task(id)
            .await?
            .ok_or_else(|| TaskError::NotFound(id.clone()).into())
    }

    /// GetTask: the task and its number of live grants.
    pub async fn get_task(&self, who: &VerifiedIdentity, id: &TaskId) -> Result<(Task, u64), BrokerError> {
        let task = self.load_task(id).await?;
        self.ask_policy(
            who,
            &PolicyQuery::Task {
                action: TaskAction::Get,
                id,
                task: Some(&task),
            },
        )?;
        let live = self.store.live_grants(id, self.clock.now()).await?;
        Ok((task, live))
    }

    /// CompleteTask (orchestrator) or RevokeTask (operator).
    pub async fn end_task(
        &self,
        who: &VerifiedIdentity,
        id: &TaskId,
        state: TaskState,
        reason: &str,
    ) -> Result<TaskEnded, BrokerError> {
        // RevokeTask is an admin call: asked before the task is looked up, so
        // a refused caller learns nothing of it. CompleteTask of an unknown
        // task is NOT_FOUND.
        let revoking = state == TaskState::Revoked;
        let task = if revoking {
            self.store.task(id).await?
        } else {
            Some(self.load_task(id).await?)
        };
        let action = if revoking {
            TaskAction::Revoke
        } else {
            TaskAction::Complete
        };
        let query = PolicyQuery::Task {
            action,
            id,
            task: task.as_ref(),
        };
        let allowed = match self.ask_policy(who, &query) {
            Ok(allowed) => allowed,
            Err(e) => {
                let (kind, reason) = if revoking {
                    (AuditKind::AdminDenied, format!("RevokeTask: {e}"))
                } else {
                    (AuditKind::TaskDenied, e.to_string())
                };
                let mut denial = self
                    .denial(kind, Some(who))
                    .metric(crate::telemetry::end_task_operation(state))
                    .counted()
                    .reason(reason);
                denial.event.task_id = Some(id.to_string());
                return self.deny(denial, e).await;
            }
        };
        if task.is_none() {
            return Err(TaskError::NotFound(id.clone()).into());
        }
        self.recent_tasks.forget(id);
        let ended = self.store.end_task(id, state, reason, self.clock.now()).await?;
        let kind = if state == TaskState::Revoked {
            AuditKind::TaskRevoked
        } else {
            AuditKind::TaskCompleted
        };
        let mut event = self.event(kind, Outcome::Allow, Some(who));
        event.task_id = Some(id.to_string());
        event.reason = Some(reason.to_owned());
        event.count = Some(ended.grants_revoked);
        allowed.stamp(&mut event);
        let told = Told::TaskEnded {
            id,
            state,
            by: who.id(),
            grants_revoked: ended.grants_revoked,
            children_ended: ended.children_ended.len(),
            reason,
        };
        let metric = Metric::TaskEnded(state, ended.grants_revoked);
        self.succeed(Success::new(event, told).metric(metric)).await?;
        Ok(ended)
    }
}

#[cfg(test)]
mod tests {
    use tessera_core::ErrorKind;
    use tessera_core::audit::{AuditKind, Outcome};
    use tessera_core::task::{TaskId, TaskState};
    use tessera_store::GrantStore as _;

    use crate::broker::testing::{AGENT, Fixture, OPERATOR, ORCHESTRATOR};

    fn t1() -> TaskId {
        TaskId::parse("t1").unwrap()
    }

    #[tokio::test]
    async fn an_orchestrator_starts_a_task_and_it_is_audited() {
        let f = Fixture::new().await;
        let task = f.task("t1").await;
        assert_eq!(task.state, TaskState::Active);
        let record = f.audit.last();
        assert_eq!(record.event, AuditKind::TaskStarted);
        assert_eq!(record.count, Some(2), "two agents");
        let (got, live) = f.broker.get_task(&f.who(ORCHESTRATOR), &t1()).await.unwrap();
        assert_eq!((got.id, live), (t1(), 0));
    }

    #[tokio::test]
    async fn an_agent_cannot_start_a_task() {
        let f = Fixture::new().await;
        let mut start = f.start("t1");
        start.agents.clear();
        start.agents.insert(crate::broker::testing::id(AGENT));
        let refused = f.broker.start_task(&f.who(AGENT), start).await;
        assert_eq!(refused.err().map(|e| e.kind()), Some(ErrorKind::PermissionDenied));
        let record = f.audit.last();
        assert_eq!((record.event, record.decision), (AuditKind::TaskDenied, Outcome::Deny));
        assert!(f.store.task(&t1()).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn an_unaudited_task_does_not_stand() {
        let f = Fixture::new().await;
        f.audit.fail(true);
        let refused = f.broker.start_task(&f.who(ORCHESTRATOR), f.start("t1")).await;
        assert_eq!(refused.err().map(|e| e.kind()), Some(ErrorKind::Unavailable));
        let stored = f.store.task(&t1()).await.unwrap().unwrap();
        assert_eq!(stored.state, TaskState::Revoked);
    }

    #[tokio::test]
    async fn completing_a_task_revokes_its_grants() {
        let f = Fixture::new().await;
        f.task("t1").await;
        f.issue("t1", &["contacts.read"]).await;
        let ended = f
            .broker
            .end_task(&f.who(ORCHESTRATOR), &t1(), TaskState::Completed, "done")
            .await
            .unwrap();
        assert_eq!(ended.grants_revoked, 1);
        assert_eq!(f.live("t1").await, 0);
        let record = f.audit.last();
        assert_eq!((record.event, record.count), (AuditKind::TaskCompleted, Some(1)));
    }

    #[tokio::test]
    async fn revoke_task_refuses_a_non_operator_before_it_looks_the_task_up() {
        let f = Fixture::new().await;
        let unknown = TaskId::parse("nope").unwrap();
        let refused = f
            .broker
            .end_task(&f.who(AGENT), &unknown, TaskState::Revoked, "x")
            .await;
        assert_eq!(refused.err().map(|e| e.kind()), Some(ErrorKind::PermissionDenied));
        let record = f.audit.last();
        assert_eq!(record.event, AuditKind::AdminDenied);
        assert!(record.reason.unwrap().starts_with("RevokeTask: "));
        let missing = f
            .broker
            .end_task(&f.who(OPERATOR), &unknown, TaskState::Revoked, "x")
            .await;
        assert_eq!(missing.err().map(|e| e.kind()), Some(ErrorKind::NotFound));
    }
}

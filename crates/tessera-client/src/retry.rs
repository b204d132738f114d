//! Retrying a revocation the broker refused with `UNAVAILABLE`.
//!
//! The broker acknowledges a revocation only once its store has it; while
//! the store is away it answers `UNAVAILABLE` and the revocation may or may
//! not have been applied. Revocations are idempotent (revoking a revoked
//! grant, completing a completed task answers OK), so the caller's part is
//! to ask again, with bounded backoff, until the broker acknowledges or the
//! budget is spent. Only `UNAVAILABLE` is retried: every other refusal
//! (denied, not found, invalid) would be refused again.

use std::future::Future;
use std::time::Duration;

/// How often and how patiently a refused revocation is asked again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Calls in all, the first included (at least 1).
    pub attempts: u32,
    /// The wait after the first refusal; doubles after each later one.
    pub first_backoff: Duration,
    /// The longest wait between two calls.
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    /// 6 calls, waiting 200 ms, 400 ms, 800 ms, 1.6 s and 2 s (plus up to
    /// 25 % jitter) between them: a Redis restart or a Sentinel failover
    /// fits in the ~6 s budget.
    fn default() -> Self {
        Self {
            attempts: 6,
            first_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(2),
        }
    }
}

impl RetryPolicy {
    /// No retry: one call.
    pub const ONCE: Self = Self {
        attempts: 1,
        first_backoff: Duration::ZERO,
        max_backoff: Duration::ZERO,
    };
}

/// Runs `call` until it succeeds, fails with anything but `UNAVAILABLE`, or
/// `policy.attempts` calls were made; returns the last outcome. `refused`
/// is told of each `UNAVAILABLE` that will be retried (attempt number from
/// 1, the status, the wait), e.g. to log it.
pub async fn retry_unavailable<T, F, Fut>(
    policy: RetryPolicy,
    mut refused: impl FnMut(u32, &tonic::Status, Duration),
    mut call: F,
) -> Result<T, tonic::Status>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, tonic::Status>>,
{
    let mut backoff = policy.first_backoff;
    let mut attempt = 1;
    loop {
        match call().await {
            Err(status) if status.code() == tonic::Code::Unavailable && attempt < policy.attempts => {
                let wait = jittered(backoff);
                refused(attempt, &status, wait);
                tokio::time::sleep(wait).await;
                backoff = (backoff * 2).min(policy.max_backoff);
                attempt += 1;
            }
            outcome => return outcome,
        }
    }
}

/// RevokeGrant over the raw [`crate::AdminClient`], retried per `policy`
/// while the broker answers `UNAVAILABLE`.
pub async fn revoke_grant(
    admin: &crate::AdminClient,
    grant_id: &str,
    reason: &str,
    policy: RetryPolicy,
) -> Result<crate::pb::RevokeGrantResponse, tonic::Status> {
    let request = crate::pb::RevokeGrantRequest {
        grant_id: grant_id.to_owned(),
        reason: reason.to_owned(),
    };
    retry_unavailable(
        policy,
        |attempt, status, wait| {
            tracing::warn!(attempt, code = ?status.code(), ?wait, "RevokeGrant refused as unavailable; retrying");
        },
        || {
            let mut admin = admin.clone();
            let request = request.clone();
            async move { admin.revoke_grant(request).await.map(tonic::Response::into_inner) }
        },
    )
    .await
}

/// `base` plus up to 25 % random jitter, so callers refused together do not
/// come back in lockstep.
fn jittered(base: Duration) -> Duration {
    let mut byte = [0u8; 1];
    match ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut byte) {
        Ok(()) => base + base / 4 * u32::from(byte[0]) / 255,
        Err(_) => base,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    const FAST: RetryPolicy = RetryPolicy {
        attempts: 4,
        first_backoff: Duration::from_millis(1),
        max_backoff: Duration::from_millis(2),
    };

    /// A call refused `fails` times with `code`, then OK; counts its calls.
    async fn run(policy: RetryPolicy, fails: u32, code: tonic::Code) -> (Result<u32, tonic::Status>, u32, u32) {
        let calls = AtomicU32::new(0);
        let mut told = 0;
        let outcome = retry_unavailable(
            policy,
            |_, _, _| told += 1,
            || async {
                let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
                if n <= fails {
                    Err(tonic::Status::new(code, "store away"))
                } else {
                    Ok(n)
                }
            },
        )
        .await;
        (outcome, calls.load(Ordering::SeqCst), told)
    }

    #[tokio::test]
    async fn unavailable_is_retried_until_acknowledged() {
        let (outcome, calls, told) = run(FAST, 3, tonic::Code::Unavailable).await;
        assert_eq!(outcome.unwrap(), 4);
        assert_eq!((calls, told), (4, 3));
    }

    #[tokio::test]
    async fn the_budget_is_bounded_and_the_last_refusal_returned() {
        let (outcome, calls, told) = run(FAST, 10, tonic::Code::Unavailable).await;
        assert_eq!(outcome.unwrap_err().code(), tonic::Code::Unavailable);
        assert_eq!((calls, told), (4, 3));
        let (outcome, calls, _) = run(RetryPolicy::ONCE, 10, tonic::Code::Unavailable).await;
        assert_eq!(outcome.unwrap_err().code(), tonic::Code::Unavailable);
        assert_eq!(calls, 1);
    }

    #[tokio::test]
    async fn other_refusals_are_not_retried() {
        for code in [
            tonic::Code::PermissionDenied,
            tonic::Code::NotFound,
            tonic::Code::InvalidArgument,
            tonic::Code::DeadlineExceeded,
        ] {
            let (outcome, calls, told) = run(FAST, 1, code).await;
            assert_eq!(outcome.unwrap_err().code(), code);
            assert_eq!((calls, told), (1, 0));
        }
    }

    #[test]
    fn the_default_budget_is_bounded() {
        let p = RetryPolicy::default();
        let mut total = Duration::ZERO;
        let mut b = p.first_backoff;
        for _ in 1..p.attempts {
            total += b + b / 4;
            b = (b * 2).min(p.max_backoff);
        }
        assert!(total <= Duration::from_secs(10), "{total:?}");
    }
}

//! Per-identity rate limits: a token bucket per attested SPIFFE ID (not per
//! address), so one agent bursting at machine speed is slowed down without
//! touching anyone else. `governor` does the bucket arithmetic.

use std::num::NonZeroU32;

use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use tessera_core::identity::SpiffeId;
use tonic::Status;

/// The limiter shared by every RPC.
pub struct IdentityLimiter {
    limiter: Option<DefaultKeyedRateLimiter<String>>,
    per_second: u32,
    burst: u32,
}

impl std::fmt::Debug for IdentityLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdentityLimiter")
            .field("per_second", &self.per_second)
            .field("burst", &self.burst)
            .finish()
    }
}

impl IdentityLimiter {
    /// `per_second` sustained calls with bursts of `burst`; 0 disables limiting.
    pub fn new(per_second: u32, burst: u32) -> Self {
        let limiter = NonZeroU32::new(per_second).map(|rate| {
            let burst = NonZeroU32::new(burst.max(per_second)).unwrap_or(rate);
            RateLimiter::dashmap(Quota::per_second(rate).allow_burst(burst))
        });
        Self {
            limiter,
            per_second,
            burst,
        }
    }

    /// RESOURCE_EXHAUSTED once `id` has used its burst.
    pub fn check(&self, id: &SpiffeId) -> Result<(), Status> {
        let Some(limiter) = &self.limiter else { return Ok(()) };
        // The key set is bounded: only registered, attested identities reach here.
        limiter.check_key(&id.to_string()).map_err(|_| {
            tracing::info!(event = "rate_limited", identity = %id, "rate limit exceeded");
            Status::resource_exhausted(format!(
                "rate limit for `{id}` exceeded ({} calls/s, bursts of {}); retry later",
                self.per_second, self.burst
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_identity_is_limited_and_others_are_not() {
        let limiter = IdentityLimiter::new(1, 3);
        let a = SpiffeId::parse("spiffe://td/a").unwrap();
        let b = SpiffeId::parse("spiffe://td/b").unwrap();
        for _ in 0..3 {
            limiter.check(&a).unwrap();
        }
        let refused = limiter.check(&a).unwrap_err();
        assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
        assert!(refused.message().contains("spiffe://td/a"));
        limiter.check(&b).unwrap();
        let off = IdentityLimiter::new(0, 0);
        for _ in 0..1000 {
            off.check(&a).unwrap();
        }
    }
}

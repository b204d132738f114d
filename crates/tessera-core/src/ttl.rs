//! Token lifetimes and the arithmetic that bounds them.
//!
//! TTL = min(requested, identity max, broker max, task remaining). A request of
//! zero or above the broker's maximum is malformed, not clamped.

use std::fmt;

use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};

use crate::error::ErrorKind;

/// A token lifetime: a whole, positive number of seconds (JWT times are seconds).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "u64", into = "u64")]
pub struct Ttl(u32);

impl Ttl {
    /// A lifetime of `secs` seconds; zero is refused.
    pub fn from_secs(secs: u64) -> Result<Self, TtlError> {
        match u32::try_from(secs) {
            Ok(0) => Err(TtlError::Zero),
            Ok(s) => Ok(Self(s)),
            Err(_) => Err(TtlError::TooLong),
        }
    }

    /// Seconds.
    pub fn as_secs(self) -> u32 {
        self.0
    }

    /// As a chrono duration.
    pub fn as_duration(self) -> Duration {
        Duration::seconds(i64::from(self.0))
    }
}

impl TryFrom<u64> for Ttl {
    type Error = TtlError;
    fn try_from(secs: u64) -> Result<Self, Self::Error> {
        Self::from_secs(secs)
    }
}

impl From<Ttl> for u64 {
    fn from(ttl: Ttl) -> Self {
        u64::from(ttl.0)
    }
}

impl fmt::Display for Ttl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}s", self.0)
    }
}

/// Why a lifetime cannot be granted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TtlError {
    /// A lifetime of zero was asked for.
    #[error("ttl must be at least 1 second")]
    Zero,
    /// More seconds than fit in the lifetime type.
    #[error("ttl is too long")]
    TooLong,
    /// The request asked for more than the broker ever grants.
    #[error("ttl of {requested} is above the maximum of {max}")]
    AboveMax {
        /// What was asked for.
        requested: Ttl,
        /// The broker's maximum.
        max: Ttl,
    },
    /// Less than one second is left before the bounding deadline.
    #[error("no time is left before the task's deadline")]
    NoTimeLeft,
}

impl TtlError {
    /// Transport-free classification.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::Zero | Self::TooLong | Self::AboveMax { .. } => ErrorKind::InvalidArgument,
            Self::NoTimeLeft => ErrorKind::FailedPrecondition,
        }
    }
}

/// The broker-wide lifetime bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TtlLimits {
    /// Used when a request names no lifetime.
    pub default: Ttl,
    /// Nothing is ever issued for longer; asking for more is malformed.
    pub max: Ttl,
}

/// The lifetime actually granted, and the instants it spans.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lifetime {
    /// Granted lifetime.
    pub ttl: Ttl,
    /// Issued-at, truncated to whole seconds (JWT `iat`/`nbf`).
    pub issued_at: DateTime<Utc>,
    /// `issued_at + ttl`; never after `deadline`.
    pub expires_at: DateTime<Utc>,
}

/// Computes the lifetime of a token issued at `now`: the requested lifetime
/// (or the default), bounded by the identity's maximum, the broker's maximum
/// and whatever remains before `deadline`.
///
/// Fails if the request is zero-free but above `limits.max`, or if less than
/// one whole second remains before `deadline`.
pub fn lifetime(
    requested: Option<Ttl>,
    identity_max: Ttl,
    limits: TtlLimits,
    deadline: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Result<Lifetime, TtlError> {
    if let Some(requested) = requested
        && requested > limits.max
    {
        return Err(TtlError::AboveMax {
            requested,
            max: limits.max,
        });
    }
    let issued_at = truncate_to_secs(now);
    let remaining = (deadline - issued_at).num_seconds();
    let remaining = u32::try_from(remaining.max(0)).unwrap_or(u32::MAX);
    let secs = requested
        .unwrap_or(limits.default)
        .as_secs()
        .min(identity_max.as_secs())
        .min(limits.max.as_secs())
        .min(remaining);
    let ttl = Ttl::from_secs(u64::from(secs)).map_err(|_| TtlError::NoTimeLeft)?;
    Ok(Lifetime {
        ttl,
        issued_at,
        expires_at: issued_at + ttl.as_duration(),
    })
}

/// `t` with its sub-second part dropped.
pub fn truncate_to_secs(t: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp(t.timestamp(), 0).unwrap_or(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t0() -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000, 0).unwrap()
    }

    fn ttl(s: u64) -> Ttl {
        Ttl::from_secs(s).unwrap()
    }

    const LIMITS: TtlLimits = TtlLimits {
        default: Ttl(300),
        max: Ttl(3600),
    };

    #[track_caller]
    fn check(requested: Option<u64>, identity_max: u64, deadline_in: i64, expected: Result<u32, TtlError>) {
        let got = lifetime(
            requested.map(ttl),
            ttl(identity_max),
            LIMITS,
            t0() + Duration::seconds(deadline_in),
            t0(),
        );
        match (got, expected) {
            (Ok(l), Ok(secs)) => {
                assert_eq!(l.ttl.as_secs(), secs);
                assert_eq!(l.issued_at, t0());
                assert_eq!(l.expires_at, t0() + Duration::seconds(i64::from(secs)));
                assert!(l.expires_at <= t0() + Duration::seconds(deadline_in));
            }
            (Err(e), Err(want)) => assert_eq!(e, want),
            (got, want) => panic!("got {got:?}, want {want:?}"),
        }
    }

    #[test]
    fn zero_is_refused() {
        assert_eq!(Ttl::from_secs(0), Err(TtlError::Zero));
        assert_eq!(Ttl::from_secs(u64::from(u32::MAX) + 1), Err(TtlError::TooLong));
        assert_eq!(Ttl::from_secs(1).unwrap().as_secs(), 1);
    }

    #[test]
    fn the_smallest_bound_wins() {
        check(Some(60), 600, 1000, Ok(60)); // requested
        check(Some(900), 600, 1000, Ok(600)); // identity max
        check(Some(900), 6000, 1000, Ok(900)); // requested below task remaining
        check(Some(900), 6000, 500, Ok(500)); // task remaining
        check(None, 6000, 10_000, Ok(300)); // default
        check(None, 100, 10_000, Ok(100)); // identity max below default
        check(Some(3600), 7200, 10_000, Ok(3600)); // exactly the broker max
    }

    #[test]
    fn edges() {
        check(
            Some(3601),
            7200,
            10_000,
            Err(TtlError::AboveMax {
                requested: ttl(3601),
                max: ttl(3600),
            }),
        );
        check(Some(60), 600, 1, Ok(1)); // one second left
        check(Some(60), 600, 0, Err(TtlError::NoTimeLeft)); // deadline now
        check(Some(60), 600, -5, Err(TtlError::NoTimeLeft)); // deadline past
        check(Some(1), 600, 1000, Ok(1));
    }

    #[test]
    fn sub_second_now_never_overshoots_the_deadline() {
        let now = t0() + Duration::milliseconds(999);
        let deadline = t0() + Duration::milliseconds(10_500);
        let l = lifetime(Some(ttl(60)), ttl(600), LIMITS, deadline, now).unwrap();
        assert_eq!(l.issued_at, t0());
        assert_eq!(l.ttl.as_secs(), 10);
        assert!(l.expires_at <= deadline);
        // 0.4 s left: no whole second.
        let l = lifetime(
            Some(ttl(60)),
            ttl(600),
            LIMITS,
            t0() + Duration::milliseconds(1_400),
            now,
        );
        assert_eq!(l.unwrap().ttl.as_secs(), 1);
        let l = lifetime(Some(ttl(60)), ttl(600), LIMITS, t0() + Duration::milliseconds(900), now);
        assert_eq!(l, Err(TtlError::NoTimeLeft));
    }
}

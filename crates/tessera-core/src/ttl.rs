//! Token lifetimes and the arithmetic that bounds them.
//!
//! TTL = min(requested, identity max, policy max, class max, kind max, broker
//! max, task remaining) — see [`lifetime_within`]. A request of zero or above
//! the broker's maximum is malformed, not clamped; every other bound clamps.

use std::fmt;

use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};

use crate::error::ErrorKind;

/// A token lifetime: a whole, positive number of seconds (JWT times are seconds).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "u64", into = "u64")]
pub struct Ttl(u32);

impl Ttl {
    /// One second, the shortest lifetime.
    pub const ONE_SECOND: Self = Self(1);

    /// A lifetime of `secs` seconds, usable in constants; `None` for zero.
    pub const fn new(secs: u32) -> Option<Self> {
        if secs == 0 { None } else { Some(Self(secs)) }
    }

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

/// The caps on one token's lifetime besides the broker's limits and the
/// task's deadline. `None` caps nothing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TtlCaps {
    /// The identity's registered maximum.
    pub identity: Option<Ttl>,
    /// What policy allows for this request.
    pub policy: Option<Ttl>,
    /// The maximum for the scope class (`[tokens.class_max_ttl]`).
    pub class: Option<Ttl>,
    /// The maximum for the identity's kind (`[tokens.kind_max_ttl]`).
    pub kind: Option<Ttl>,
}

impl TtlCaps {
    /// The smallest cap, if any.
    pub fn smallest(&self) -> Option<Ttl> {
        [self.identity, self.policy, self.class, self.kind]
            .into_iter()
            .flatten()
            .min()
    }
}

/// The whole formula: the lifetime of a token issued at `now` is
/// min(requested or default, identity max, policy max, class max, kind max,
/// broker max, whole seconds left before `deadline`).
///
/// Fails if the request is above `limits.max` (malformed, never clamped) or
/// if less than one whole second remains before `deadline`.
pub fn lifetime_within(
    requested: Option<Ttl>,
    caps: &TtlCaps,
    limits: TtlLimits,
    deadline: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Result<Lifetime, TtlError> {
    let identity_max = caps.smallest().unwrap_or(limits.max);
    lifetime(requested, identity_max, limits, deadline, now)
}

impl Lifetime {
    /// This lifetime shortened to at most `cap` (same issue time); never longer.
    pub fn capped(self, cap: Option<Ttl>) -> Self {
        match cap {
            Some(cap) if cap < self.ttl => Self {
                ttl: cap,
                issued_at: self.issued_at,
                expires_at: self.issued_at + cap.as_duration(),
            },
            _ => self,
        }
    }
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

    #[track_caller]
    fn within(requested: Option<u64>, caps: TtlCaps, deadline_in: i64) -> Result<u32, TtlError> {
        lifetime_within(
            requested.map(ttl),
            &caps,
            LIMITS,
            t0() + Duration::seconds(deadline_in),
            t0(),
        )
        .map(|l| {
            assert_eq!(l.issued_at, t0());
            assert_eq!(l.expires_at, t0() + l.ttl.as_duration());
            l.ttl.as_secs()
        })
    }

    #[test]
    fn every_cap_bounds_the_lifetime() {
        let all = TtlCaps {
            identity: Some(ttl(900)),
            policy: Some(ttl(800)),
            class: Some(ttl(700)),
            kind: Some(ttl(600)),
        };
        // Each cap wins when it is the smallest.
        assert_eq!(within(Some(3000), all, 10_000), Ok(600)); // kind
        assert_eq!(within(Some(3000), TtlCaps { kind: None, ..all }, 10_000), Ok(700)); // class
        assert_eq!(
            within(
                Some(3000),
                TtlCaps {
                    kind: None,
                    class: None,
                    ..all
                },
                10_000
            ),
            Ok(800)
        ); // policy
        assert_eq!(
            within(
                Some(3000),
                TtlCaps {
                    identity: Some(ttl(900)),
                    ..TtlCaps::default()
                },
                10_000
            ),
            Ok(900)
        ); // identity
        assert_eq!(within(Some(3000), TtlCaps::default(), 10_000), Ok(3000)); // requested
        assert_eq!(within(None, TtlCaps::default(), 10_000), Ok(300)); // default
        assert_eq!(within(Some(60), all, 10_000), Ok(60)); // requested below every cap
        assert_eq!(within(Some(3000), all, 30), Ok(30)); // task remaining below every cap
        assert_eq!(within(Some(3000), all, 0), Err(TtlError::NoTimeLeft));
        // Above the broker's maximum is malformed, whatever the caps.
        assert_eq!(
            within(Some(3601), all, 10_000),
            Err(TtlError::AboveMax {
                requested: ttl(3601),
                max: ttl(3600)
            })
        );
        // A cap above the broker's maximum does not lift it.
        let loose = TtlCaps {
            class: Some(ttl(7200)),
            ..TtlCaps::default()
        };
        assert_eq!(within(Some(3600), loose, 10_000), Ok(3600));
    }

    #[test]
    fn capping_only_shortens() {
        let l = lifetime(Some(ttl(600)), ttl(900), LIMITS, t0() + Duration::hours(1), t0()).unwrap();
        assert_eq!(l.capped(None), l);
        assert_eq!(l.capped(Some(ttl(900))), l);
        let c = l.capped(Some(ttl(120)));
        assert_eq!(c.ttl.as_secs(), 120);
        assert_eq!(c.issued_at, l.issued_at);
        assert_eq!(c.expires_at, t0() + Duration::seconds(120));
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

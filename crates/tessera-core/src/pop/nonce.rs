//! Server-provided DPoP nonces (RFC 9449 section 8 at an authorization
//! server, section 9 at a resource server), without shared state.
//!
//! A nonce is `base64url(window || tag)`: `window` is the 8-byte big-endian
//! number of the time window it was issued in (`unix seconds / window`),
//! `tag` the HMAC-SHA256 under the source's key of a domain label and
//! `window`. [`NonceSource::check`] accepts a nonce of the
//! current window or the one before, so a nonce lives between one and two
//! windows, and every replica holding the same key accepts every other's
//! nonces (a per-replica random key, [`NonceSource::random`], makes a
//! client that moves to another replica fetch a new nonce: one more
//! `use_dpop_nonce` round trip, never a wrong acceptance).
//!
//! The nonce limits how long a proof made in advance stays usable (its
//! `iat` is the client's word; the nonce is the server's). Single use of a
//! proof is still its `jti`'s, in the replay cache.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Duration, Utc};
use ring::hmac;
use ring::rand::{SecureRandom as _, SystemRandom};

/// Domain separation: a tag made for anything else never checks as a nonce.
const LABEL: &[u8] = b"tessera dpop-nonce v1\0";
/// Bytes of the HMAC.
const TAG_LEN: usize = 32;
/// Length of an encoded nonce: base64url of 8 + 32 bytes.
pub const NONCE_LEN: usize = 54;
/// Shortest window accepted.
pub const MIN_WINDOW: Duration = Duration::seconds(10);
/// Longest window accepted.
pub const MAX_WINDOW: Duration = Duration::hours(1);
/// Shortest key accepted, in bytes.
pub const MIN_KEY_LEN: usize = 32;

/// Why a nonce source could not be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NonceError {
    /// The key is shorter than [`MIN_KEY_LEN`] bytes.
    #[error("dpop nonce key must be at least {MIN_KEY_LEN} bytes")]
    ShortKey,
    /// The window is outside [`MIN_WINDOW`]..=[`MAX_WINDOW`].
    #[error("dpop nonce window must be between 10s and 1h")]
    Window,
    /// The system random source failed.
    #[error("system random source failed")]
    Random,
}

/// Issues and checks DPoP nonces. The key never leaves it (`Debug` shows
/// the window only).
pub struct NonceSource {
    key: hmac::Key,
    window_secs: i64,
}

impl std::fmt::Debug for NonceSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NonceSource")
            .field("window_secs", &self.window_secs)
            .finish_non_exhaustive()
    }
}

impl NonceSource {
    /// A source keyed with `secret` (shared by every replica that must
    /// accept each other's nonces), with windows of `window`.
    pub fn new(secret: &[u8], window: Duration) -> Result<Self, NonceError> {
        if secret.len() < MIN_KEY_LEN {
            return Err(NonceError::ShortKey);
        }
        if window < MIN_WINDOW || window > MAX_WINDOW {
            return Err(NonceError::Window);
        }
        Ok(Self {
            key: hmac::Key::new(hmac::HMAC_SHA256, secret),
            window_secs: window.num_seconds(),
        })
    }

    /// A source with a fresh random key: its nonces are good on this
    /// process only.
    pub fn random(window: Duration) -> Result<Self, NonceError> {
        let mut secret = zeroize::Zeroizing::new([0u8; 32]);
        SystemRandom::new()
            .fill(secret.as_mut())
            .map_err(|_| NonceError::Random)?;
        Self::new(secret.as_ref(), window)
    }

    fn window_of(&self, now: DateTime<Utc>) -> i64 {
        now.timestamp().div_euclid(self.window_secs)
    }

    fn message(window: i64) -> Vec<u8> {
        let mut message = LABEL.to_vec();
        message.extend_from_slice(&window.to_be_bytes());
        message
    }

    /// The nonce to hand out at `now` (the same for every request of one
    /// window: it names the window, not the client).
    pub fn issue(&self, now: DateTime<Utc>) -> String {
        let window = self.window_of(now);
        let mut bytes = Vec::with_capacity(8 + TAG_LEN);
        bytes.extend_from_slice(&window.to_be_bytes());
        bytes.extend_from_slice(hmac::sign(&self.key, &Self::message(window)).as_ref());
        URL_SAFE_NO_PAD.encode(bytes)
    }

    /// Whether `nonce` was issued by a source with this key in the window
    /// of `now` or the one before.
    pub fn check(&self, nonce: &str, now: DateTime<Utc>) -> bool {
        if nonce.len() != NONCE_LEN {
            return false;
        }
        let Ok(bytes) = URL_SAFE_NO_PAD.decode(nonce) else {
            return false;
        };
        let (Some(window), Some(tag)) = (bytes.get(..8), bytes.get(8..)) else {
            return false;
        };
        let Ok(window) = <[u8; 8]>::try_from(window).map(i64::from_be_bytes) else {
            return false;
        };
        let current = self.window_of(now);
        if window != current && window != current - 1 {
            return false;
        }
        // ring's verify compares in constant time.
        tag.len() == TAG_LEN && hmac::verify(&self.key, &Self::message(window), tag).is_ok()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "test")]

    use super::*;

    fn at(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(secs, 0).unwrap()
    }

    #[test]
    fn a_nonce_lives_one_to_two_windows_and_only_under_its_key() {
        let window = Duration::seconds(60);
        let source = NonceSource::new(&[7u8; 32], window).unwrap();
        let replica = NonceSource::new(&[7u8; 32], window).unwrap();
        let other = NonceSource::new(&[8u8; 32], window).unwrap();
        let nonce = source.issue(at(1_800_000_010));
        assert_eq!(nonce.len(), NONCE_LEN);
        assert_eq!(nonce, source.issue(at(1_800_000_019)), "one nonce per window");
        assert!(source.check(&nonce, at(1_800_000_010)));
        assert!(
            replica.check(&nonce, at(1_800_000_070)),
            "another replica with the key, next window"
        );
        assert!(!source.check(&nonce, at(1_800_000_140)), "two windows later");
        assert!(!source.check(&nonce, at(1_799_999_990)), "from the future");
        assert!(!other.check(&nonce, at(1_800_000_010)), "another key");
        // Any change to the window or the tag refuses it.
        let mut bytes = URL_SAFE_NO_PAD.decode(&nonce).unwrap();
        for i in [0, 7, 8, 39] {
            bytes[i] ^= 1;
            assert!(
                !source.check(&URL_SAFE_NO_PAD.encode(&bytes), at(1_800_000_010)),
                "byte {i}"
            );
            bytes[i] ^= 1;
        }
        for junk in ["", "x", &"!".repeat(NONCE_LEN), &format!("{nonce}A")] {
            assert!(!source.check(junk, at(1_800_000_010)));
        }
    }

    #[test]
    fn keys_and_windows_are_bounded() {
        assert_eq!(
            NonceSource::new(&[1u8; 16], Duration::seconds(60)).unwrap_err(),
            NonceError::ShortKey
        );
        assert_eq!(
            NonceSource::new(&[1u8; 32], Duration::seconds(1)).unwrap_err(),
            NonceError::Window
        );
        let a = NonceSource::random(Duration::seconds(60)).unwrap();
        let b = NonceSource::random(Duration::seconds(60)).unwrap();
        assert!(!b.check(&a.issue(at(1_800_000_000)), at(1_800_000_000)));
    }
}

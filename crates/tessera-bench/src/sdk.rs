//! The SDK's offline verification rate: how many tokens per second one core
//! verifies with `tessera-client`'s own verifier, against `ring`'s bare
//! verify rate for the same algorithm.
//!
//! The SDK verifier (`tessera_client::Verifier`, `crates/tessera-client/src/verifier`)
//! is not in this build, so this reports "not available" instead of
//! measuring something else under its name. When it lands, this function
//! mints a token on `t`, builds the verifier from the broker's JWKS with no
//! network on the hot path, and times `verify` on one thread.

use std::time::Duration;

use crate::limits::PerCore;
use crate::tessera::{Outcome, Target};

/// The SDK's offline verifications per second on one core.
pub async fn offline_verify_rate(_t: &Target, _each: Duration) -> Outcome<PerCore> {
    Outcome::NotAvailable {
        reason: "tessera-client has no offline token verifier in this build".into(),
    }
}

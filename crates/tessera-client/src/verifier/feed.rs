//! Following the broker: the revocation feed and the JWKS.
//!
//! `follow` subscribes to `WatchRevocations` and resumes after the last
//! position it saw whenever the stream ends or fails, with exponential
//! backoff (100 ms doubling to 5 s, with jitter). A stream silent for
//! longer than `max_staleness` is dropped and re-made (a dead TCP peer
//! sends no error). OUT_OF_RANGE (the broker no longer holds our
//! position) marks the verifier unsynchronised (everything refused) and
//! starts a fresh subscription, whose first answer sets a new sync floor.

use std::sync::Arc;
use std::time::Duration;

use tonic::Code;

use super::Shared;
use crate::pb;

/// Largest message accepted from the broker (a JWKS or a feed item).
pub(crate) const MAX_MESSAGE_BYTES: usize = 256 * 1024;
/// Bound on one unary call (`GetJwks`).
pub(crate) const CALL_TIMEOUT: Duration = Duration::from_secs(5);
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Runs until the verifier is dropped (the task is aborted then).
pub(crate) async fn follow(shared: Arc<Shared>, mut client: crate::VerifierClient) {
    let mut position: Option<String> = None;
    let mut backoff = FIRST_BACKOFF;
    loop {
        if !shared.fetch_keys().await {
            tracing::debug!("jwks not loaded yet; will retry");
        }
        let fresh = position.is_none();
        let request = pb::WatchRevocationsRequest {
            after: position.clone().unwrap_or_default(),
        };
        match tokio::time::timeout(CALL_TIMEOUT, client.watch_revocations(request)).await {
            Ok(Ok(response)) => {
                let mut stream = response.into_inner();
                loop {
                    let next = tokio::time::timeout(shared.config.max_staleness, stream.message()).await;
                    match next {
                        Ok(Ok(Some(message))) => {
                            backoff = FIRST_BACKOFF;
                            shared.ingest(&message, fresh);
                            if let Some(p) = message_position(&message) {
                                position = Some(p.to_owned());
                            }
                        }
                        Ok(Ok(None)) => {
                            tracing::info!("revocation feed ended; resuming");
                            break;
                        }
                        Ok(Err(status)) => {
                            if status.code() == Code::OutOfRange {
                                lost(&shared, &mut position);
                            } else if status.code() == Code::Unavailable {
                                // A broker draining (`broker shutting down`): another
                                // replica, or this one restarted, takes the feed over.
                                tracing::info!(
                                    reason = status.message(),
                                    "revocation feed ended by the broker; resuming"
                                );
                            } else {
                                tracing::warn!(code = ?status.code(), "revocation feed failed; resuming");
                            }
                            break;
                        }
                        Err(_) => {
                            tracing::warn!("revocation feed silent past max_staleness; reconnecting");
                            break;
                        }
                    }
                }
            }
            Ok(Err(status)) if status.code() == Code::OutOfRange => lost(&shared, &mut position),
            Ok(Err(status)) => {
                tracing::warn!(code = ?status.code(), "cannot subscribe to the revocation feed; retrying");
            }
            Err(_) => tracing::warn!("subscribing to the revocation feed timed out; retrying"),
        }
        tokio::time::sleep(jittered(backoff)).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

fn lost(shared: &Shared, position: &mut Option<String>) {
    tracing::error!("revocation feed position lost (OUT_OF_RANGE): refusing every token until resynchronised");
    shared.lost();
    *position = None;
}

fn message_position(message: &pb::WatchRevocationsResponse) -> Option<&str> {
    use pb::watch_revocations_response::Item;
    let position = match message.item.as_ref()? {
        Item::Event(event) => &event.position,
        Item::Heartbeat(heartbeat) => &heartbeat.position,
    };
    (!position.is_empty() && position.len() <= 256).then_some(position.as_str())
}

/// `base` plus up to 25 % random jitter, so many verifiers do not reconnect
/// in lockstep.
fn jittered(base: Duration) -> Duration {
    let mut byte = [0u8; 1];
    let jitter = match ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut byte) {
        Ok(()) => base / 4 * u32::from(byte[0]) / 255,
        Err(_) => Duration::ZERO,
    };
    base + jitter
}

/// Refreshes the JWKS every `jwks_refresh`, so keys withdrawn by the broker
/// (rotation, break-glass) stop verifying here too.
pub(crate) async fn refresh_keys_periodically(shared: Arc<Shared>) {
    let every = shared.config.jwks_refresh;
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let mut last = shared.refresh.lock().await;
        shared.fetch_keys().await;
        *last = Some(tokio::time::Instant::now());
    }
}

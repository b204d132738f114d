//! The SDK `Verifier` against the real `tesserad`: tokens verify offline,
//! CompleteTask reaches every subscribed verifier (the delay is measured
//! and printed, never asserted), and a cut feed fails closed once
//! `max_staleness` has passed, then recovers when the feed returns.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "test")]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tessera_client::Verifier;
use tessera_client::verifier::{Presented, VerifierConfig, VerifyError};
use tessera_e2e::{Broker, CRM, issue, pb, start_request, token_request};
use tokio::net::{TcpListener, TcpStream};

const ISSUER: &str = "https://tessera.local";

fn config() -> VerifierConfig {
    let mut config = VerifierConfig::new(ISSUER, CRM);
    config.max_staleness = Duration::from_secs(2);
    config
}

/// A verifier (identity `api-gateway`, role verifier) following `endpoint`.
async fn verifier(broker: &Broker, endpoint: &str, config: VerifierConfig) -> Verifier {
    let channel = tessera_client::connect_lazy(endpoint, &broker.identity("api-gateway")).unwrap();
    let verifier = Verifier::connect(channel, config).unwrap();
    assert!(
        verifier.ready(Duration::from_secs(20)).await,
        "verifier not ready: {:?}",
        verifier.status()
    );
    // Tokens must be issued strictly after the sync floor (whole seconds).
    let floor = verifier.status().sync_floor.unwrap();
    wait_until(Duration::from_secs(5), || now_secs() > floor).await;
    verifier
}

fn now_secs() -> i64 {
    use tessera_core::clock::Clock as _;
    tessera_core::clock::SystemClock.now().timestamp()
}

async fn wait_until(limit: Duration, mut done: impl FnMut() -> bool) -> Duration {
    let started = Instant::now();
    while !done() {
        assert!(started.elapsed() < limit, "condition not reached within {limit:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    started.elapsed()
}

fn check(v: &Verifier, token: &str) -> Result<(), VerifyError> {
    v.verify_cached(&Presented::bearer(token)).map(drop)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_complete_task_every_subscribed_verifier_refuses_every_token() {
    let broker = Broker::start_with(&[("TESSERA_SERVER__HEARTBEAT_INTERVAL", "500ms")]);
    let endpoint = broker.endpoint();
    let verifiers = [
        verifier(&broker, &endpoint, config()).await,
        verifier(&broker, &endpoint, config()).await,
    ];
    broker
        .start_task(start_request(
            "verify-1",
            &["researcher", "writer"],
            &["crm.contacts.read", "crm.notes.read"],
            600,
        ))
        .await;
    broker
        .start_task(start_request(
            "verify-other",
            &["researcher"],
            &["crm.contacts.read"],
            600,
        ))
        .await;
    let mut researcher = broker.agent("researcher").await;
    let mut writer = broker.agent("writer").await;
    let tokens = [
        issue(&mut researcher, token_request("verify-1", &["crm.contacts.read"], None)).await,
        issue(&mut researcher, token_request("verify-1", &["crm.notes.read"], None)).await,
        issue(
            &mut writer,
            token_request("verify-1", &["crm.contacts.read", "crm.notes.read"], None),
        )
        .await,
    ];
    let bystander = issue(
        &mut researcher,
        token_request("verify-other", &["crm.contacts.read"], None),
    )
    .await;
    for v in &verifiers {
        for t in tokens.iter().chain([&bystander]) {
            let verified = v.verify(&Presented::bearer(&t.access_token)).await.unwrap();
            assert_eq!(verified.grant_id(), t.grant_id);
        }
    }

    let sent = Instant::now();
    broker
        .orchestrator()
        .await
        .complete_task(pb::CompleteTaskRequest {
            task_id: "verify-1".into(),
            reason: "done".into(),
        })
        .await
        .unwrap();
    let acknowledged = sent.elapsed();
    let delay = wait_until(Duration::from_secs(10), || {
        verifiers.iter().all(|v| {
            tokens
                .iter()
                .all(|t| check(v, &t.access_token) == Err(VerifyError::Revoked))
        })
    })
    .await;
    println!(
        "CompleteTask acknowledged in {acknowledged:?}; every verifier refused every token of the task {delay:?} after the acknowledgement"
    );
    for v in &verifiers {
        check(v, &bystander.access_token).unwrap();
        assert_eq!(v.status().revocations, 1, "one event for the whole task");
    }
}

/// A TCP proxy the test can cut and re-point: while cut, open connections
/// are dropped and new ones closed at once.
struct Proxy {
    addr: String,
    cut: Arc<AtomicBool>,
    target: Arc<std::sync::Mutex<String>>,
    generation: Arc<tokio::sync::watch::Sender<u64>>,
    /// Connections dropped while cut: each is one reconnect attempt.
    refused: Arc<std::sync::atomic::AtomicU64>,
}

impl Proxy {
    async fn start(target: String) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let cut = Arc::new(AtomicBool::new(false));
        let target = Arc::new(std::sync::Mutex::new(target));
        let (generation, _) = tokio::sync::watch::channel(0u64);
        let generation = Arc::new(generation);
        let refused = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let (flag, gen_tx, to, dropped) = (cut.clone(), generation.clone(), target.clone(), refused.clone());
        tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    continue;
                };
                if flag.load(Ordering::SeqCst) {
                    drop(client);
                    dropped.fetch_add(1, Ordering::SeqCst);
                    continue;
                }
                let mut cutting = gen_tx.subscribe();
                let target = to.lock().unwrap().clone();
                tokio::spawn(async move {
                    let Ok(upstream) = TcpStream::connect(&target).await else {
                        return;
                    };
                    let (mut client, mut upstream) = (client, upstream);
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut upstream) => {}
                        _ = cutting.changed() => {}
                    }
                });
            }
        });
        Self {
            addr,
            cut,
            target,
            generation,
            refused,
        }
    }

    /// How many connections were dropped while cut so far.
    fn refused(&self) -> u64 {
        self.refused.load(Ordering::SeqCst)
    }

    fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        self.generation.send_modify(|g| *g += 1);
    }

    fn restore(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }

    fn point_to(&self, target: &str) {
        *self.target.lock().unwrap() = target.to_owned();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_feed_fails_closed_after_max_staleness_and_recovers() {
    let broker = Broker::start_with(&[("TESSERA_SERVER__HEARTBEAT_INTERVAL", "500ms")]);
    let proxy = Proxy::start(broker.addr.clone()).await;
    let v = verifier(&broker, &format!("https://{}", proxy.addr), config()).await;
    broker
        .start_task(start_request("cut-1", &["researcher"], &["crm.contacts.read"], 600))
        .await;
    let token = broker
        .issue_as("researcher", token_request("cut-1", &["crm.contacts.read"], None))
        .await;
    check(&v, &token.access_token).unwrap();

    let cut_at = Instant::now();
    proxy.cut();
    let refused_after = wait_until(Duration::from_secs(15), || {
        check(&v, &token.access_token) == Err(VerifyError::FeedStale)
    })
    .await;
    // Fail closed only once max_staleness (2 s) has passed since the last message.
    assert!(
        refused_after >= Duration::from_millis(1000),
        "refused too early: {refused_after:?}"
    );
    println!("feed cut: every token refused {refused_after:?} after the cut (max_staleness 2 s)");
    assert_eq!(VerifyError::FeedStale.kind().http_status(), 503);
    // Every token, even one the verifier never saw.
    let another = broker
        .issue_as("researcher", token_request("cut-1", &["crm.contacts.read"], None))
        .await;
    assert_eq!(check(&v, &another.access_token), Err(VerifyError::FeedStale));
    // Still refused after the verifier tried the feed again and failed.
    let attempts = proxy.refused();
    wait_until(Duration::from_secs(30), || proxy.refused() > attempts).await;
    assert_eq!(check(&v, &token.access_token), Err(VerifyError::FeedStale));

    proxy.restore();
    let recovered = wait_until(Duration::from_secs(30), || check(&v, &token.access_token).is_ok()).await;
    println!(
        "feed restored: tokens accepted again {recovered:?} later ({:?} after the cut)",
        cut_at.elapsed()
    );
    // Resumed from its position: no gap, so the sync floor did not move.
    check(&v, &another.access_token).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_feed_position_resynchronises_and_refuses_older_tokens() {
    if tessera_e2e::test_store() == "redis" {
        // Replicas share Redis and its feed: switching loses no position.
        return;
    }
    let first = Broker::start_with(&[("TESSERA_SERVER__HEARTBEAT_INTERVAL", "500ms")]);
    let proxy = Proxy::start(first.addr.clone()).await;
    let v = verifier(&first, &format!("https://{}", proxy.addr), config()).await;
    let floor = v.status().sync_floor.unwrap();

    // Another broker life with its own in-memory feed, where our position
    // means nothing (OUT_OF_RANGE). A token it issued before we switch may
    // have been revoked before we could have heard of it.
    let second = first.replica();
    second
        .start_task(start_request("lost-1", &["researcher"], &["crm.contacts.read"], 600))
        .await;
    let older = second
        .issue_as("researcher", token_request("lost-1", &["crm.contacts.read"], None))
        .await;
    proxy.cut();
    proxy.point_to(&second.addr);
    proxy.restore();
    wait_until(Duration::from_secs(30), || {
        v.status().sync_floor.is_some_and(|f| f > floor) && v.status().fresh
    })
    .await;
    assert_eq!(check(&v, &older.access_token), Err(VerifyError::IssuedBeforeSync));
    let new_floor = v.status().sync_floor.unwrap();
    wait_until(Duration::from_secs(5), || now_secs() > new_floor).await;
    let newer = second
        .issue_as("researcher", token_request("lost-1", &["crm.contacts.read"], None))
        .await;
    v.verify(&Presented::bearer(&newer.access_token)).await.unwrap();
}

/// A key withdrawn by break-glass stops verifying on a connected verifier as
/// soon as the revocation feed announces it, not at the verifier's next JWKS
/// refresh (here 10 minutes away). The token checked is one an attacker
/// holding the withdrawn key would forge: for a task that never existed, so
/// no task or grant revocation covers it; only the key's withdrawal does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_withdrawn_by_break_glass_is_dropped_by_a_connected_verifier_at_once() {
    use base64::Engine as _;
    use tessera_core::token::{Algorithm, SigningKey};
    let dir = tessera_e2e::dev_init("withdrawn");
    let pem = tessera_core::token::generate_pkcs8_pem(Algorithm::Es256).unwrap();
    let path = dir.path().join("withdrawn-signing.key.pem");
    std::fs::write(&path, pem.as_bytes()).unwrap();
    let key = SigningKey::from_pkcs8_pem(Algorithm::Es256, &pem).unwrap();
    let broker = Broker::start_in(
        dir,
        &[
            ("TESSERA_TOKENS__SIGNING_KEY", path.to_str().unwrap()),
            ("TESSERA_TOKENS__ALGORITHM", "ES256"),
            ("TESSERA_SERVER__HEARTBEAT_INTERVAL", "500ms"),
        ],
    );
    let endpoint = broker.endpoint();
    let mut slow_refresh = config();
    slow_refresh.jwks_refresh = Duration::from_secs(600);
    let v = verifier(&broker, &endpoint, slow_refresh).await;
    broker
        .start_task(start_request("withdrawn", &["researcher"], &["crm.contacts.read"], 600))
        .await;
    let mut researcher = broker.agent("researcher").await;
    let real = issue(
        &mut researcher,
        token_request("withdrawn", &["crm.contacts.read"], None),
    )
    .await;

    // The forgery: the real token's claims for a task that never existed,
    // signed with the broker's key.
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let mut parts = real.access_token.split('.');
    let header: serde_json::Value = serde_json::from_slice(&b64.decode(parts.next().unwrap()).unwrap()).unwrap();
    let mut claims: serde_json::Value = serde_json::from_slice(&b64.decode(parts.next().unwrap()).unwrap()).unwrap();
    claims["task_id"] = "never-started".into();
    claims["jti"] = "forged-grant".into();
    let forged = key.sign_jws(header["typ"].as_str().unwrap(), &claims).unwrap();
    check(&v, &forged).expect("the forgery verifies while the key is in force");

    let done = broker
        .admin("alice")
        .await
        .revoke_all(pb::RevokeAllRequest {
            confirm: "revoke-all".into(),
            reason: "key compromise".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_ne!(done.new_key_id, key.kid());
    let delay = wait_until(Duration::from_secs(10), || check(&v, &forged).is_err()).await;
    println!("the withdrawn key's forgery was refused {delay:?} after break-glass was acknowledged");
    let refused = check(&v, &forged).unwrap_err();
    assert!(
        matches!(refused, VerifyError::Revoked | VerifyError::Token(_)),
        "{refused:?}"
    );
    assert!(v.status().revocations >= 1);
}

const DPOP_URL: &str = "https://api.example.com/crm/contacts";

/// A DPoP presentation of `token` with `proof` for `GET DPOP_URL`.
fn dpop<'a>(token: &'a str, proof: &'a str) -> Presented<'a> {
    Presented {
        token,
        scheme: tessera_client::verifier::Scheme::Dpop,
        dpop_proof: Some(proof),
        method: "GET",
        url: DPOP_URL,
        client_cert_der: None,
    }
}

/// Starts task `task` for `writer` and mints it a token bound to a new key.
async fn bound_token(broker: &Broker, task: &str) -> (tessera_client::PopKey, String) {
    broker
        .start_task(start_request(task, &["writer"], &["crm.contacts.write"], 600))
        .await;
    let key = tessera_client::PopKey::generate().unwrap();
    let token = broker
        .issue_as(
            "writer",
            pb::RequestTokenRequest {
                pop_proof: key.proof("POST", tessera_client::REQUEST_TOKEN_HTU, None).unwrap(),
                ..token_request(task, &["crm.contacts.write"], None)
            },
        )
        .await;
    (key, token.access_token)
}

/// Two replicas of one resource server share a Redis replay store: a DPoP
/// proof one accepted is refused by the other (an attacker who saw it on
/// the wire cannot spend it at the next replica), one key cannot fill the
/// store beyond its share, and a store that does not answer refuses (503),
/// never accepts. Runs on a redis-server of its own whatever the broker's
/// store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_sharing_a_redis_replay_store_accept_a_proof_once() {
    use tessera_client::verifier::{RedisReplayStore, RefusalKind};
    const URL: &str = DPOP_URL;

    let mut redis = tessera_e2e::redis::RedisServer::builder().appendonly(false).start();
    let broker = Broker::start_with(&[("TESSERA_SERVER__HEARTBEAT_INTERVAL", "500ms")]);
    let shared = RedisReplayStore::connect(&redis.url(), "crm-replay:", 3).await.unwrap();
    let endpoint = broker.endpoint();
    let replica = |store: RedisReplayStore| {
        let mut config = config();
        config.replay_store = Some(Arc::new(store));
        verifier(&broker, &endpoint, config)
    };
    let (a, b) = (replica(shared.clone()).await, replica(shared).await);
    let (key, token) = bound_token(&broker, "shared-replay").await;
    let t = token.as_str();

    let proof = key.proof("GET", URL, Some(t)).unwrap();
    a.verify(&dpop(t, &proof)).await.unwrap();
    assert!(matches!(
        b.verify(&dpop(t, &proof)).await,
        Err(VerifyError::ProofReplayed)
    ));
    assert!(matches!(
        a.verify(&dpop(t, &proof)).await,
        Err(VerifyError::ProofReplayed)
    ));
    // The sync path never waits on the store: it refuses instead.
    let fresh = key.proof("GET", URL, Some(t)).unwrap();
    assert_eq!(
        a.verify_cached(&dpop(t, &fresh)).unwrap_err().kind(),
        RefusalKind::Unavailable
    );
    // This key's share (3) fills: its next proof is refused, fail closed.
    b.verify(&dpop(t, &fresh)).await.unwrap();
    let third = key.proof("GET", URL, Some(t)).unwrap();
    a.verify(&dpop(t, &third)).await.unwrap();
    let fourth = key.proof("GET", URL, Some(t)).unwrap();
    let over = a.verify(&dpop(t, &fourth)).await;
    assert!(matches!(over, Err(VerifyError::Capacity(_))), "{over:?}");
    // No store, no acceptance.
    redis.kill();
    let fifth = key.proof("GET", URL, Some(t)).unwrap();
    let gone = b.verify(&dpop(t, &fifth)).await;
    assert!(matches!(gone, Err(VerifyError::ReplayStoreUnavailable(_))), "{gone:?}");
    assert_eq!(gone.unwrap_err().kind(), RefusalKind::Unavailable);
}

/// A resource server that asks for DPoP nonces (RFC 9449 section 9): a
/// proof without one, or with a nonce of another server's key, is refused
/// with `use_dpop_nonce`, and the verifier hands out the nonce to send in
/// `DPoP-Nonce`; a proof carrying it is accepted, once. Replicas sharing
/// the nonce key accept each other's nonces.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_verifier_asking_for_dpop_nonces_refuses_proofs_without_its_nonce() {
    use tessera_client::verifier::RefusalKind;
    use tessera_core::pop::NonceSource;
    const URL: &str = DPOP_URL;

    let broker = Broker::start_with(&[("TESSERA_SERVER__HEARTBEAT_INTERVAL", "500ms")]);
    let endpoint = broker.endpoint();
    let shared_key = [7u8; 32];
    let window = chrono::Duration::seconds(60);
    let replica = |secret: [u8; 32]| {
        let mut config = config();
        config.dpop_nonce = Some(Arc::new(NonceSource::new(&secret, window).unwrap()));
        verifier(&broker, &endpoint, config)
    };
    let (a, b, stranger) = (
        replica(shared_key).await,
        replica(shared_key).await,
        replica([9u8; 32]).await,
    );
    let (key, token) = bound_token(&broker, "nonce").await;
    let t = token.as_str();

    let without = key.proof("GET", URL, Some(t)).unwrap();
    let refused = a.verify(&dpop(t, &without)).await.unwrap_err();
    assert_eq!(refused, VerifyError::UseDpopNonce);
    assert_eq!(refused.kind(), RefusalKind::UseDpopNonce);
    assert_eq!(refused.kind().http_status(), 401);
    let challenge = refused.www_authenticate("crm").unwrap();
    assert!(
        challenge.starts_with("DPoP ") && challenge.contains(r#"error="use_dpop_nonce""#),
        "{challenge}"
    );

    let nonce = a.dpop_nonce().unwrap();
    let foreign = stranger.dpop_nonce().unwrap();
    assert_ne!(nonce, foreign);
    let with_foreign = key.proof_with_nonce("GET", URL, &foreign, Some(t)).unwrap();
    assert_eq!(
        a.verify(&dpop(t, &with_foreign)).await.unwrap_err(),
        VerifyError::UseDpopNonce
    );
    let with_nonce = key.proof_with_nonce("GET", URL, &nonce, Some(t)).unwrap();
    a.verify(&dpop(t, &with_nonce)).await.unwrap();
    assert_eq!(
        a.verify(&dpop(t, &with_nonce)).await.unwrap_err(),
        VerifyError::ProofReplayed
    );
    // Another replica with the same key takes the first one's nonce.
    let again = key.proof_with_nonce("GET", URL, &nonce, Some(t)).unwrap();
    b.verify(&dpop(t, &again)).await.unwrap();
}

/// The same DPoP nonce from tessera-core and the Python SDK
/// (`sdk/python/tests/test_verifier.py` holds the same vector): Rust and
/// Python replicas sharing a secret accept each other's nonces.
#[test]
fn dpop_nonces_are_the_python_sdks() {
    use tessera_core::pop::NonceSource;
    let secret: Vec<u8> = (0u8..32).collect();
    let source = NonceSource::new(&secret, chrono::Duration::seconds(60)).unwrap();
    let at = chrono::DateTime::from_timestamp(1_796_640_000, 0).unwrap();
    assert_eq!(
        source.issue(at),
        "AAAAAAHI6MBCD42XlhZKIFPev4AC5LrtlhSs4hr4BpkMD61w_soO1Q"
    );
}

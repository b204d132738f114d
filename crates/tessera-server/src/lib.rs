//! `tesserad`, the Tessera broker: the gRPC edge (mTLS, attestation,
//! conversion, status codes) around `tessera-core`'s decisions and a
//! `tessera-store` backend.
//!
//! [`prepare`] reads everything that can fail before a port is bound (TLS
//! material, the signing key); [`serve`] runs on listeners the caller bound,
//! so tests run the real server on `127.0.0.1:0`. Nothing here logs a token
//! or a private key.

pub mod attest;
pub mod audit;
pub mod broker;
pub mod config;
pub mod convert;
pub mod grpc;
pub mod http;
pub mod status;
pub mod telemetry;
pub mod tls;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tessera_core::clock::Clock;
use tessera_core::orchestration::TaskLimits;
use tessera_core::token::{KeyError, SigningKey};
use tessera_proto::v1 as pb;
use tessera_store::{GrantStore, MemoryStore, RedisStore, ReplayCache, StoreError};
use tokio::net::TcpListener;
use tokio_stream::wrappers::ReceiverStream;

use crate::broker::{Broker, BrokerSettings};
use crate::config::{Config, StoreConfig};
use crate::grpc::Shared;

/// How long in-flight requests may take to drain after a shutdown signal.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the broker could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    /// TLS material is missing or invalid.
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    /// The signing key file cannot be read.
    #[error("config key `tokens.signing_key`: `{}`: {source}", path.display())]
    SigningKeyFile {
        /// The file.
        path: std::path::PathBuf,
        /// Why it cannot be read.
        #[source]
        source: std::io::Error,
    },
    /// Generating or loading the signing key failed.
    #[error("config key `tokens.signing_key`: {0}")]
    SigningKey(#[source] KeyError),
    /// The store could not be reached at start.
    #[error("store unavailable at start: {0}")]
    Store(#[from] StoreError),
    /// The policy set does not load (the message names file and line).
    #[error("policy: {0}")]
    Policy(#[from] tessera_core::policy::PolicyLoadError),
    /// The audit trail could not be opened.
    #[error("config key `audit.file`: `{}`: {source}", path.display())]
    Audit {
        /// The audit file.
        path: std::path::PathBuf,
        /// Why it could not be opened.
        #[source]
        source: audit::AuditError,
    },
    /// Redis could not be reached for the audit stream.
    #[error("config key `audit.redis_stream`: {0}")]
    AuditStreamConnect(#[source] StoreError),
    /// The Redis audit stream could not be opened.
    #[error("config key `audit.redis_stream`: {0}")]
    AuditStream(#[source] audit::AuditError),
    /// The DPoP nonce key cannot be read or used.
    #[error("config key `oauth.dpop_nonce_key_file`: {0}")]
    DpopNonce(String),
    /// The approvals webhook is misconfigured.
    #[error("broker could not start: {0}")]
    Webhook(#[source] http::webhook::WebhookError),
    /// The broker could not start (its key could not be published or audited).
    #[error("broker could not start: {0}")]
    Start(#[source] broker::BrokerError),
    /// The identities disabled and quarantined by other replicas could not
    /// be read before serving.
    #[error("broker could not start: cannot read the disabled and quarantined identities from the store: {0}")]
    SharedState(#[source] broker::BrokerError),
    /// A path the broker writes cannot be written.
    #[error("config key `{key}`: `{}`: cannot write there: {source}", path.display())]
    Unwritable {
        /// The configuration key naming it.
        key: &'static str,
        /// The path.
        path: std::path::PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The gRPC server failed.
    #[error("grpc server failed: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// Attestation (trust bundles, JWT issuers, the Unix socket) could not be set up.
    #[error(transparent)]
    Attestation(#[from] attest::AttestSetupError),
    /// The gRPC service set could not be built.
    #[error(transparent)]
    Services(#[from] grpc::ServiceSetError),
    /// The gRPC server's task panicked or was cancelled.
    #[error("grpc server task failed: {0}")]
    ServerTask(#[source] tokio::task::JoinError),
}

impl ServeError {
    /// Whether this is the operator's to fix (a path the broker cannot use,
    /// an audit file another broker holds or whose chain is broken), so a
    /// restart cannot help: `tesserad` exits 64 on it, which the systemd
    /// unit does not restart on.
    pub fn is_configuration(&self) -> bool {
        matches!(
            self,
            Self::Tls(_)
                | Self::SigningKeyFile { .. }
                | Self::SigningKey(_)
                | Self::Policy(_)
                | Self::Audit { .. }
                | Self::Webhook(_)
                | Self::Attestation(_)
                | Self::Unwritable { .. }
        )
    }
}

/// Everything loaded from disk before binding a port.
pub struct Prepared {
    config: Config,
    tls: rustls::ServerConfig,
    /// The HTTPS OAuth facade's TLS (`None` with `oauth.listen = "off"`).
    oauth_tls: Option<Arc<rustls::ServerConfig>>,
    signer: SigningKey,
    policy: broker::policy::PolicySetup,
    attest: attest::Prepared,
}

impl std::fmt::Debug for Prepared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prepared")
            .field("signer", &self.signer)
            .finish_non_exhaustive()
    }
}

impl Prepared {
    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }
}

/// Loads TLS material and the signing key named by `config`.
pub fn prepare(config: Config) -> Result<Prepared, ServeError> {
    // INVARIANT: only the ring provider is compiled in (CI checks that
    // aws-lc-rs is absent); installing it makes rustls' choice explicit.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let attest = attest::prepare(&config)?;
    // Without a JWT issuer, a client certificate is the only way to attest
    // on this port: one without is refused in the handshake, holding no slot.
    let certificate_required = config.attestation.jwt.is_empty();
    let tls = tls::server_config_with(
        &config.tls.cert,
        &config.tls.key,
        attest.trust.verifier(certificate_required),
    )?;
    let oauth_tls = match config.oauth.listen {
        Some(_) => Some(Arc::new(tls::facade_server_config(
            &config.tls.cert,
            &config.tls.key,
            attest.trust.verifier(false),
        )?)),
        None => None,
    };
    let alg = config.tokens.algorithm;
    let signer = match &config.tokens.signing_key {
        Some(path) => {
            let pem = zeroize::Zeroizing::new(std::fs::read_to_string(path).map_err(|source| {
                ServeError::SigningKeyFile {
                    path: path.clone(),
                    source,
                }
            })?);
            SigningKey::from_pkcs8_pem(alg, &pem).map_err(ServeError::SigningKey)?
        }
        None => SigningKey::generate(alg).map_err(ServeError::SigningKey)?,
    };
    let policy = broker::policy::PolicySetup {
        engine: config.policy.load()?,
        source: config.policy.dir.clone(),
    };
    Ok(Prepared {
        config,
        tls,
        oauth_tls,
        signer,
        policy,
        attest,
    })
}

/// Opens everything the broker will write, as it will, without serving:
/// the audit file (created if missing, its chain's tail checked) and the
/// Unix attestation socket's directory (created if missing, a probe file
/// written and removed). For `tesserad --check`, so a sandbox that leaves
/// a path read-only (systemd's `ProtectSystem=strict`) fails the check
/// instead of the start.
pub fn check_writable(config: &Config) -> Result<(), ServeError> {
    audit::check_file(&config.audit.file).map_err(|source| ServeError::Audit {
        path: config.audit.file.clone(),
        source,
    })?;
    if let Some(unix) = &config.attestation.unix {
        let dir = unix
            .socket
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(std::path::Path::new("."));
        let unwritable = |source| ServeError::Unwritable {
            key: "attestation.unix.socket",
            path: dir.to_owned(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(unwritable)?;
        let probe = dir.join(format!(".tesserad-check-{}", std::process::id()));
        std::fs::File::create(&probe).map_err(unwritable)?;
        std::fs::remove_file(&probe).map_err(unwritable)?;
    }
    Ok(())
}

/// The listeners `serve` runs on; bound by the caller.
#[derive(Debug)]
pub struct Listeners {
    /// The gRPC (mTLS) listener.
    pub grpc: TcpListener,
    /// The plain-HTTP operations listener (`/metrics`, `/healthz`,
    /// `/readyz`, JWKS and metadata); `None` serves none.
    pub http: Option<TcpListener>,
    /// The HTTPS OAuth facade listener (`oauth.listen`); `None` serves none.
    pub oauth: Option<TcpListener>,
}

/// Runs the broker until `shutdown` resolves, then stops accepting, reports
/// NOT_SERVING, ends open streams with `UNAVAILABLE: broker shutting down`
/// and drains in-flight calls for up to [`DRAIN_TIMEOUT`].
pub async fn serve(
    prepared: Prepared,
    listeners: Listeners,
    clock: Arc<dyn Clock>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let Prepared {
        config,
        tls,
        oauth_tls,
        signer,
        policy,
        attest: prepared_attest,
    } = prepared;
    let issuers: Vec<&str> = config.attestation.jwt.iter().map(|i| i.policy.name.as_str()).collect();
    telemetry::register(&issuers);
    // Proof and attestation `jti`s are single-use across replicas: with
    // Redis, in Redis; with the embedded store, in this process.
    type Stores = (
        Arc<dyn GrantStore>,
        Arc<dyn ReplayCache>,
        Arc<dyn tessera_store::ApprovalStore>,
    );
    let (store, replay, approvals): Stores = match &config.store {
        StoreConfig::Memory(limits) => {
            let store = Arc::new(MemoryStore::new(*limits));
            (
                store.clone(),
                store,
                Arc::new(tessera_store::MemoryApprovalStore::default()),
            )
        }
        StoreConfig::Redis(redis) => {
            let min_replicas = redis.min_replicas;
            let redis = Arc::new(RedisStore::connect(redis.clone()).await?);
            telemetry::redis_durability(redis.durability(), min_replicas);
            (redis.clone(), redis.clone(), redis)
        }
    };
    // Sampled once serving (below), so a failed start leaves no task behind.
    let sampled = (store.clone(), clock.clone());
    prepared_attest.trust.set_clock(clock.clone());
    let attestors = Arc::new(attest::Attestors::new(&prepared_attest, &config, replay.clone())?);
    let settings = BrokerSettings {
        issuer: config.tokens.issuer.clone(),
        instance_id: config.server.instance_id.clone(),
        trust_domain: config.tls.trust_domain.clone(),
        ttl: config.tokens.ttl,
        tasks: TaskLimits {
            max_duration: config.tasks.max_duration,
            ..TaskLimits::default()
        },
        leeway_secs: config.tokens.leeway_secs,
        anomaly: config.anomaly.rule(),
        policy,
        binding: config.binding.clone(),
        risk: config.tokens.risk.clone(),
        approvals: broker::ApprovalSettings {
            ttl: chrono::Duration::from_std(config.approvals.ttl).unwrap_or(chrono::Duration::minutes(15)),
            poll_interval: config.approvals.poll_interval,
        },
        // Every replica has read a disable after one reload interval, and a
        // request attested before it has ended after the longest request
        // bound (gRPC or the OAuth facade).
        disable_settle: config.attestation.reload_interval
            + config.server.request_timeout.max(config.oauth.request_timeout)
            + Duration::from_secs(1),
    };
    let audit = open_audit(&config).await?;
    let notifier = match &config.approvals.webhook {
        None => None,
        Some(url) => {
            let webhook = http::webhook::Webhook::new(
                url,
                config.approvals.webhook_ca.as_deref(),
                config.approvals.webhook_secret_file.as_deref(),
                config.approvals.webhook_timeout,
                config.server.instance_id.clone(),
            )
            .map_err(ServeError::Webhook)?;
            tracing::info!(webhook = %url, "approvals: new pending approvals are notified by webhook");
            Some(Arc::new(webhook) as Arc<dyn broker::ApprovalNotifier>)
        }
    };
    // The console's public origin: as configured, else the facade's.
    let console_url = {
        let oauth_addr = listeners.oauth.as_ref().and_then(|l| l.local_addr().ok());
        config
            .console
            .public_url
            .clone()
            .or_else(|| config.oauth.public_url.clone())
            .or_else(|| oauth_addr.map(|a| format!("https://{a}")))
    };
    let console_settings = match (&console_url, config.console.enabled) {
        (Some(url), true) => Some(broker::console::ConsoleSettings {
            public_url: url.clone(),
            code_ttl: chrono::Duration::from_std(config.console.code_ttl).unwrap_or(chrono::Duration::minutes(2)),
            session_ttl: chrono::Duration::from_std(config.console.session_ttl)
                .unwrap_or(chrono::Duration::minutes(30)),
        }),
        _ => None,
    };
    let broker = Arc::new(
        Broker::start(
            store,
            config.identities.clone(),
            config.catalog.clone(),
            signer,
            clock,
            settings,
            Arc::new(audit),
        )
        .await
        .map(|broker| broker.with_replay_cache(replay))
        .map_err(ServeError::Start)?
        .with_approval_store(approvals)
        .with_approval_notifier(notifier)
        .with_console(console_settings.clone())
        .with_introspection_follower(config.introspection.max_feed_lag),
    );
    // Stopped with the other background tasks below; answers read the
    // store from then on (the follower stops being fresh).
    let follower = broker.follow_revocations().map(tokio::spawn);
    let _sighup = broker::policy::reload_on_sighup(broker.clone());
    let _policy_watch = config
        .policy
        .watch
        .then(|| broker::policy::reload_on_change(broker.clone(), config.attestation.reload_interval));
    // Identities operators disabled and anomaly quarantines of other
    // replicas: read before serving, then followed.
    broker.refresh_shared().await.map_err(ServeError::SharedState)?;
    let disabled_refresh = {
        let broker = broker.clone();
        let every = config.attestation.reload_interval;
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                if let Err(e) = broker.refresh_shared().await {
                    tracing::warn!(error = %e, "could not read the disabled and quarantined identities; keeping the last ones read");
                }
            }
        })
    };
    let shared = Shared {
        broker: broker.clone(),
        heartbeat: config.server.heartbeat_interval,
        limiter: Arc::new(grpc::limits::IdentityLimiter::new(
            config.server.per_identity_rps,
            config.server.per_identity_burst,
        )),
        attestors: attestors.clone(),
        drain: grpc::StreamDrain::default(),
    };
    let facade = {
        let oauth_addr = listeners.oauth.as_ref().and_then(|l| l.local_addr().ok());
        let public_url = config
            .oauth
            .public_url
            .clone()
            .or_else(|| oauth_addr.map(|a| format!("https://{a}")))
            .unwrap_or_else(|| "https://localhost".to_owned());
        let nonces = if config.oauth.dpop_nonce {
            let window = chrono::Duration::from_std(config.oauth.dpop_nonce_window).unwrap_or(chrono::Duration::MAX);
            let source = match &config.oauth.dpop_nonce_key_file {
                Some(path) => std::fs::read(path)
                    .map_err(|e| e.to_string())
                    .and_then(|key| tessera_core::pop::NonceSource::new(&key, window).map_err(|e| e.to_string())),
                None => tessera_core::pop::NonceSource::random(window).map_err(|e| e.to_string()),
            };
            Some(source.map_err(ServeError::DpopNonce)?)
        } else {
            None
        };
        Arc::new(http::oauth::Facade::new(
            broker.clone(),
            attestors.clone(),
            shared.limiter.clone(),
            config.tokens.issuer.clone(),
            config.tokens.leeway_secs,
            &public_url,
            config.oauth.max_body_bytes,
            nonces,
        ))
    };
    let (reloader, unix) = attest::start(&config, &broker, &attestors)?;

    // One service set for every gRPC listener; its health reporter is
    // theirs too, so both report the same status.
    let (health, health_service) = tonic_health::server::health_reporter();
    let services = grpc::ServiceSet::new(&shared, health_service, &config.server)?;
    for name in grpc::SERVICE_NAMES {
        health
            .set_service_status(name, tonic_health::ServingStatus::Serving)
            .await;
    }
    let readiness = http::Readiness::default();
    readiness.set(true);
    // Health: NOT_SERVING while the store does not answer, this replica's
    // key is not published, or the audit trail refuses records.
    let watch = {
        let broker = broker.clone();
        let health = health.clone();
        let readiness = readiness.clone();
        tokio::spawn(async move {
            let mut serving = true;
            loop {
                tokio::time::sleep(Duration::from_secs(2)).await;
                let store = tokio::time::timeout(Duration::from_secs(2), broker.ping())
                    .await
                    .is_ok_and(|r| r.is_ok());
                // The signing key must be in the JWKS, or verifiers refuse what we mint.
                let key = store
                    && match tokio::time::timeout(Duration::from_secs(2), broker.ensure_own_key()).await {
                        Ok(Ok(())) => true,
                        Ok(Err(e)) => {
                            tracing::warn!(error = %e, "this replica's signing key is not published");
                            false
                        }
                        Err(_) => false,
                    };
                let audit = broker.audit_healthy().await;
                let ok = store && key && audit;
                if ok != serving {
                    serving = ok;
                    let status = if ok {
                        tonic_health::ServingStatus::Serving
                    } else {
                        tonic_health::ServingStatus::NotServing
                    };
                    tracing::warn!(serving = ok, store, key, audit, "health changed");
                    readiness.set(ok);
                    for name in grpc::SERVICE_NAMES {
                        health.set_service_status(name, status).await;
                    }
                }
            }
        })
    };

    let live_grants = tokio::spawn(telemetry::sample_live_grants(sampled.0, sampled.1));

    // Scheduled key rotation; a failed rotation is logged and retried next time.
    let rotation = {
        let broker = broker.clone();
        let every = config.tokens.rotate_every;
        let lead = config.tokens.rotate_prepublish;
        tokio::spawn(async move {
            // Each rotation publishes its key `lead` before it signs: the key
            // is published on the tick and signs `lead` later.
            let first = tokio::time::Instant::now() + every.saturating_sub(lead);
            let mut tick = tokio::time::interval_at(first, every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                if let Err(e) = broker.rotate_key_staged(lead).await {
                    tracing::error!(error = %e, "scheduled key rotation failed");
                }
            }
        })
    };

    let addr = listeners.grpc.local_addr().map(|a| a.to_string()).unwrap_or_default();
    let incoming = tls::accept_loop(
        listeners.grpc,
        tls,
        attestors.trust.clone(),
        tls::ConnLimits {
            max_connections: config.server.max_connections,
            per_address: config
                .server
                .max_connections_per_address
                .min(config.server.max_connections),
            handshake: config.server.handshake_timeout,
            unattested: config.server.unattested_timeout,
            idle: config.server.idle_timeout,
        },
    );
    // Stops both gRPC listeners: they stop accepting and drain together.
    let (grpc_stop, _) = tokio::sync::watch::channel(false);
    let (http_stop_tx, http_stop_rx) = tokio::sync::oneshot::channel::<()>();
    let (http_stop, _) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };
    let request_timeout = config.oauth.request_timeout;
    let ops = listeners.http.map(|listener| {
        let router = http::ops_router(readiness.clone(), Some(facade.clone()));
        tokio::spawn(http::serve(
            listener,
            router,
            None,
            request_timeout,
            stopped(http_stop.subscribe()),
        ))
    });
    let oauth = match (listeners.oauth, oauth_tls) {
        (Some(listener), Some(tls)) => {
            let console = console_settings.as_ref().map(|settings| {
                tracing::info!(console = %format!("{}/console/", settings.public_url), "operator console on");
                Arc::new(http::console::Console::new(
                    broker.clone(),
                    shared.limiter.clone(),
                    &settings.public_url,
                    config.audit.file.clone(),
                ))
            });
            let router = http::oauth_router(readiness.clone(), facade, console);
            Some(tokio::spawn(http::serve(
                listener,
                router,
                Some((tls, attestors.trust.clone())),
                request_timeout,
                stopped(http_stop.subscribe()),
            )))
        }
        _ => None,
    };
    tokio::spawn(async move {
        let _ = http_stop_rx.await;
        let _ = http_stop.send(true);
    });
    let server = services
        .router()
        .serve_with_incoming_shutdown(ReceiverStream::new(incoming), stopped(grpc_stop.subscribe()));
    let mut unix = unix.map(|unix| {
        let serving = services
            .router()
            .serve_with_incoming_shutdown(ReceiverStream::new(unix.connections), stopped(grpc_stop.subscribe()));
        tracing::info!(socket = %unix.path.display(), "unix attestation listener serving");
        let task = tokio::spawn(async move {
            if let Err(e) = serving.await {
                tracing::error!(error = %e, "unix listener failed");
            }
        });
        (task, unix.path)
    });
    tracing::info!(grpc = %addr, instance = %config.server.instance_id, "tesserad serving");
    let mut server = tokio::spawn(server);

    tokio::select! {
        () = shutdown => {}
        result = &mut server => {
            watch.abort();
            live_grants.abort();
            disabled_refresh.abort();
            if let Some(follower) = &follower {
                follower.abort();
            }
            rotation.abort();
            reloader.abort();
            if let Some((task, path)) = &unix {
                task.abort();
                attest::unix::cleanup(path);
            }
            for task in ops.iter().chain(oauth.iter()) {
                task.abort();
            }
            return flatten(result);
        }
    }
    tracing::info!("shutting down: reporting NOT_SERVING and draining");
    watch.abort();
    live_grants.abort();
    disabled_refresh.abort();
    if let Some(follower) = &follower {
        follower.abort();
    }
    rotation.abort();
    reloader.abort();
    readiness.set(false);
    for name in grpc::SERVICE_NAMES {
        health
            .set_service_status(name, tonic_health::ServingStatus::NotServing)
            .await;
    }
    if let Err(e) = broker.retire_key().await {
        tracing::warn!(error = %e, "could not mark the signing key as retiring");
    }
    let _ = grpc_stop.send(true);
    // Streams never end by themselves: end them now, so the drain waits
    // only for unary calls and watchers get a status they can act on.
    let streams = shared.drain.start();
    tracing::info!(streams, "ending open streams: UNAVAILABLE {}", grpc::SHUTTING_DOWN);
    // Health Watch streams too: dropping a service's status ends its
    // watchers once they have read NOT_SERVING, so a probe that keeps a
    // Watch open does not hold the drain to its timeout. A Check during the
    // drain answers NOT_FOUND from here on.
    let mut closing = health.clone();
    for name in grpc::SERVICE_NAMES {
        closing.clear_service_status(name).await;
    }
    // /readyz answers 503 while gRPC drains (TCP and Unix alike); the
    // operations listener stops after.
    let both = async {
        let tcp = (&mut server).await;
        if let Some((task, _)) = unix.as_mut() {
            let _ = task.await;
        }
        tcp
    };
    let drained = match tokio::time::timeout(DRAIN_TIMEOUT, both).await {
        Ok(result) => {
            tracing::info!(streams_left = shared.drain.open(), "drain finished");
            flatten(result)
        }
        Err(_) => {
            tracing::warn!(
                streams_left = shared.drain.open(),
                "drain timed out; closing remaining connections"
            );
            server.abort();
            if let Some((task, _)) = &unix {
                task.abort();
            }
            Ok(())
        }
    };
    if let Some((_, path)) = &unix {
        attest::unix::cleanup(path);
    }
    let _ = http_stop_tx.send(());
    for task in ops.into_iter().chain(oauth) {
        let _ = task.await;
    }
    drained
}

fn flatten(result: Result<Result<(), tonic::transport::Error>, tokio::task::JoinError>) -> Result<(), ServeError> {
    match result {
        Ok(r) => Ok(r?),
        Err(e) => Err(ServeError::ServerTask(e)),
    }
}

/// The audit trail: the file, and the Redis Stream when configured.
async fn open_audit(config: &Config) -> Result<crate::audit::AuditTrail, ServeError> {
    let file = crate::audit::AuditLog::open(config.audit.clone())
        .await
        .map_err(|source| ServeError::Audit {
            path: config.audit.file.clone(),
            source,
        })?;
    let redis = match (&config.store, config.audit.redis_stream) {
        (StoreConfig::Redis(redis), true) => redis,
        _ => return Ok(crate::audit::AuditTrail::file(file)),
    };
    let stream = tessera_store::AuditStream::connect(redis, &config.server.instance_id)
        .await
        .map_err(ServeError::AuditStreamConnect)?;
    let stream = crate::audit::AuditLog::open_stream(stream, config.audit.timeout)
        .await
        .map_err(ServeError::AuditStream)?;
    Ok(crate::audit::AuditTrail::with_stream(
        file,
        stream,
        config.audit.require,
    ))
}

#[cfg(test)]
mod tests {
    use std::error::Error as _;

    use super::{ServeError, flatten};

    #[tokio::test]
    async fn a_failed_server_task_keeps_its_join_error() {
        let task = tokio::spawn(std::future::pending::<Result<(), tonic::transport::Error>>());
        task.abort();
        let error = flatten(task.await).unwrap_err();
        assert!(
            matches!(&error, ServeError::ServerTask(e) if e.is_cancelled()),
            "{error:?}"
        );
        assert!(
            error.source().is_some_and(|s| s.is::<tokio::task::JoinError>()),
            "{error:?}"
        );
        assert!(error.to_string().starts_with("grpc server task failed: "), "{error}");
    }
}

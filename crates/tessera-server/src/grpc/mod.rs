//! The gRPC edge: one file per service. Each handler attests the caller,
//! converts the request, calls the broker, converts the answer.
//! [`ServiceSet`] puts the four services, health and reflection with their
//! caps behind one set of server settings, for every listener.

mod activity;
pub mod admin;
pub mod agent;
mod approvals;
pub mod limits;
pub mod orchestrator;
pub mod verifier;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tessera_core::identity::VerifiedIdentity;
use tessera_proto::v1 as pb;
use tokio_stream::Stream;
use tonic::service::Routes;
use tonic::transport::Server;
use tonic::transport::server::Router;
use tonic::{Request, Status};

use crate::broker::Broker;
use crate::config::ServerConfig;
use crate::telemetry::MetricsLayer;

/// The services every listener serves, by the name health reports them
/// under (`""` is the whole server).
pub const SERVICE_NAMES: [&str; 5] = [
    "tessera.v1.AgentService",
    "tessera.v1.OrchestratorService",
    "tessera.v1.AdminService",
    "tessera.v1.VerifierService",
    "",
];

/// Headers of one request, at most (names and values together).
const MAX_HEADER_LIST_BYTES: u32 = 16 * 1024;
/// How often an idle connection is pinged, and how long the answer may take.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// The gRPC service set with its caps, and the server settings it runs
/// under: built once, served on every listener (TCP with mTLS, the Unix
/// socket), so no listener can miss a service, a cap or a limit.
#[derive(Debug, Clone)]
pub struct ServiceSet {
    routes: Routes,
    max_concurrent_streams: u32,
    request_timeout: Duration,
}

/// Why the service set could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServiceSetError {
    /// Reflection could not be built from the descriptor sets.
    #[error("reflection service: {0}")]
    Reflection(#[source] tonic_reflection::server::Error),
}

impl ServiceSet {
    /// The four services on `shared`, health (`health`, whose reporter the
    /// caller keeps) and reflection, each refusing requests over
    /// `server.max_message_bytes`.
    pub fn new(
        shared: &Shared,
        health: tonic_health::pb::health_server::HealthServer<impl tonic_health::pb::health_server::Health>,
        server: &ServerConfig,
    ) -> Result<Self, ServiceSetError> {
        let max = server.max_message_bytes;
        // Health and reflection get the same request cap as our services, not
        // tonic's 4 MB default. Their replies stay uncapped: a reflection reply
        // carries whole descriptor files.
        let health = health.max_decoding_message_size(max);
        let reflection = || {
            tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        };
        let reflection_v1 = reflection()
            .build_v1()
            .map_err(ServiceSetError::Reflection)?
            .max_decoding_message_size(max);
        // v1alpha too: Python's grpcio-reflection client and grpcurl before
        // 1.9 speak only it.
        let reflection_v1alpha = reflection()
            .build_v1alpha()
            .map_err(ServiceSetError::Reflection)?
            .max_decoding_message_size(max);
        let agent = pb::agent_service_server::AgentServiceServer::new(shared.clone())
            .max_decoding_message_size(max)
            .max_encoding_message_size(max);
        let orchestrator = pb::orchestrator_service_server::OrchestratorServiceServer::new(shared.clone())
            .max_decoding_message_size(max)
            .max_encoding_message_size(max);
        let admin = pb::admin_service_server::AdminServiceServer::new(shared.clone())
            .max_decoding_message_size(max)
            .max_encoding_message_size(max);
        let verifier = pb::verifier_service_server::VerifierServiceServer::new(shared.clone())
            .max_decoding_message_size(max)
            .max_encoding_message_size(max);
        let routes = Routes::new(health)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .add_service(agent)
            .add_service(orchestrator)
            .add_service(admin)
            .add_service(verifier);
        Ok(Self {
            routes,
            max_concurrent_streams: server.max_concurrent_streams,
            request_timeout: server.request_timeout,
        })
    }

    /// A server for one listener: every service, behind the same limits.
    /// The caller serves it on its incoming connections.
    pub fn router(
        &self,
    ) -> Router<tower_layer::Stack<activity::ActivityLayer, tower_layer::Stack<MetricsLayer, tower_layer::Identity>>>
    {
        Server::builder()
            .max_concurrent_streams(Some(self.max_concurrent_streams))
            // In-flight unary calls per connection; beyond it load_shed answers
            // RESOURCE_EXHAUSTED at once instead of queueing.
            .concurrency_limit_per_connection(self.max_concurrent_streams as usize)
            .timeout(self.request_timeout)
            .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
            .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
            .http2_max_header_list_size(MAX_HEADER_LIST_BYTES)
            .load_shed(true)
            .layer(MetricsLayer)
            .layer(activity::ActivityLayer)
            .add_routes(self.routes.clone())
    }
}

/// State shared by the service handlers.
#[derive(Debug, Clone)]
pub struct Shared {
    pub(crate) broker: Arc<Broker>,
    pub(crate) heartbeat: std::time::Duration,
    pub(crate) limiter: Arc<limits::IdentityLimiter>,
    pub(crate) attestors: Arc<crate::attest::Attestors>,
    pub(crate) drain: StreamDrain,
}

impl Shared {
    /// Attests the caller (see `crate::attest`), then applies its rate limit.
    pub(crate) async fn caller<T>(&self, req: &Request<T>) -> Result<VerifiedIdentity, Status> {
        let who = crate::attest::caller(&self.broker, &self.attestors, req).await?;
        self.limiter.check(who.id())?;
        Ok(who)
    }
}

/// The message every open stream ends with when the broker starts draining.
pub const SHUTTING_DOWN: &str = "broker shutting down";

/// Ends the server's long-lived response streams (WatchRevocations,
/// AwaitApproval) when the broker starts draining. A stream never ends by
/// itself, so without this the drain waits its whole bound and the client
/// then sees the connection cut (`h2 protocol error`) instead of a status
/// it can act on: with it, each stream ends with `UNAVAILABLE: broker
/// shutting down` and the drain finishes as soon as unary calls do.
#[derive(Debug, Clone)]
pub struct StreamDrain {
    stop: Arc<tokio::sync::watch::Sender<bool>>,
    open: Arc<AtomicUsize>,
}

impl Default for StreamDrain {
    fn default() -> Self {
        Self {
            stop: Arc::new(tokio::sync::watch::Sender::new(false)),
            open: Arc::new(AtomicUsize::new(0)),
        }
    }
}

impl StreamDrain {
    /// Ends every open stream and every stream opened from now on; returns
    /// how many were open.
    pub fn start(&self) -> usize {
        // Counted before the stop is sent: once it is, the streams end (and
        // uncount themselves) on other threads, racing a count taken after.
        let open = self.open();
        self.stop.send_replace(true);
        open
    }

    /// Streams open now (each counted until the server drops it).
    pub fn open(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }

    /// `stream`, ended by [`StreamDrain::start`] with UNAVAILABLE.
    pub(crate) fn wrap<S, T>(&self, stream: S) -> Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>
    where
        S: Stream<Item = Result<T, Status>> + Send + 'static,
        T: Send + 'static,
    {
        let mut stop = self.stop.subscribe();
        self.open.fetch_add(1, Ordering::SeqCst);
        Box::pin(Drained {
            inner: Box::pin(stream),
            // `wait_for` looks at the current value first: a stream opened
            // after the drain started ends at once.
            stop: Box::pin(async move {
                let _ = stop.wait_for(|stop| *stop).await;
            }),
            ended: false,
            _open: OpenStream(self.open.clone()),
        })
    }
}

/// Counts one open stream until dropped.
struct OpenStream(Arc<AtomicUsize>);

impl Drop for OpenStream {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

type Inner<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

struct Drained<T> {
    inner: Inner<T>,
    stop: Pin<Box<dyn Future<Output = ()> + Send>>,
    ended: bool,
    /// Held for its `Drop`, which counts the stream closed.
    _open: OpenStream,
}

impl<T> Stream for Drained<T> {
    type Item = Result<T, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.ended {
            return Poll::Ready(None);
        }
        if self.stop.as_mut().poll(cx).is_ready() {
            self.ended = true;
            return Poll::Ready(Some(Err(Status::unavailable(SHUTTING_DOWN))));
        }
        match self.inner.as_mut().poll_next(cx) {
            Poll::Ready(None) => {
                self.ended = true;
                Poll::Ready(None)
            }
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio_stream::StreamExt as _;

    use super::StreamDrain;

    #[tokio::test]
    async fn a_drain_ends_open_and_later_streams_with_unavailable() {
        let drain = StreamDrain::default();
        let mut open = drain.wrap(tokio_stream::pending::<Result<u8, tonic::Status>>());
        assert_eq!(drain.open(), 1);
        assert_eq!(drain.start(), 1);
        let status = open.next().await.unwrap().unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unavailable);
        assert_eq!(status.message(), "broker shutting down");
        assert!(open.next().await.is_none());
        drop(open);
        assert_eq!(drain.open(), 0);

        let mut late = drain.wrap(tokio_stream::iter([Ok(1_u8)]));
        assert_eq!(late.next().await.unwrap().unwrap_err().code(), tonic::Code::Unavailable);
    }

    #[tokio::test]
    async fn a_stream_runs_unchanged_until_the_drain() {
        let drain = StreamDrain::default();
        let items: Vec<_> = drain.wrap(tokio_stream::iter([Ok(1_u8), Ok(2)])).collect().await;
        assert_eq!(items.into_iter().map(Result::unwrap).collect::<Vec<_>>(), [1, 2]);
        assert_eq!(drain.open(), 0);
    }
}

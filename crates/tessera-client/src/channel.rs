//! [`Channel`]: the gRPC channel every client of this SDK uses — tonic's
//! channel, plus, for a workload attested by an OIDC/JWT token, the
//! `authorization: Bearer <jwt>` metadata on every call (the broker's JWT
//! attestation; see `tesserad`'s `attest` module). Without a bearer token it
//! is exactly tonic's channel.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tonic::body::Body;
use tonic::codegen::http;

/// A gRPC channel to the broker, optionally attesting with a bearer JWT.
#[derive(Clone)]
pub struct Channel {
    inner: tonic::transport::Channel,
    /// `Bearer <jwt>`: a secret, never shown by `Debug`.
    bearer: Option<http::HeaderValue>,
}

impl std::fmt::Debug for Channel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Channel")
            .field("bearer", &self.bearer.as_ref().map(|_| "<redacted>"))
            .finish_non_exhaustive()
    }
}

impl From<tonic::transport::Channel> for Channel {
    fn from(inner: tonic::transport::Channel) -> Self {
        Self { inner, bearer: None }
    }
}

impl Channel {
    /// Sends `authorization: Bearer <jwt>` on every call. `None` when `jwt`
    /// is not a valid header value (e.g. has a newline or non-ASCII).
    pub fn with_bearer(self, jwt: &str) -> Option<Self> {
        let mut value = http::HeaderValue::from_str(&format!("Bearer {}", jwt.trim())).ok()?;
        value.set_sensitive(true);
        Some(Self {
            inner: self.inner,
            bearer: Some(value),
        })
    }

    /// The tonic channel underneath.
    pub fn into_inner(self) -> tonic::transport::Channel {
        self.inner
    }
}

impl tower_service::Service<http::Request<Body>> for Channel {
    type Response = http::Response<Body>;
    type Error = tonic::transport::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        tower_service::Service::poll_ready(&mut self.inner, cx)
    }

    fn call(&mut self, mut req: http::Request<Body>) -> Self::Future {
        if let Some(bearer) = &self.bearer {
            req.headers_mut().insert(http::header::AUTHORIZATION, bearer.clone());
        }
        Box::pin(tower_service::Service::call(&mut self.inner, req))
    }
}

/// Opens a channel to the broker at `endpoint` over TLS **without** a client
/// certificate, attesting every call with the OIDC/JWT `jwt` (the broker
/// must have `[[attestation.jwt.issuers]]` configured). `ca_pem` is the
/// trust bundle that signs the broker's certificate, and `broker_id` the
/// broker's SPIFFE ID, which its certificate must carry as its only URI SAN
/// (a client without an SVID has no trust domain to derive it from).
pub async fn connect_with_token(
    endpoint: &str,
    ca_pem: &[u8],
    broker_id: &str,
    jwt: &str,
) -> Result<Channel, crate::ClientError> {
    let invalid = |reason: String| crate::ClientError::Endpoint {
        endpoint: endpoint.to_owned(),
        reason,
    };
    crate::connect::connect_pinned(endpoint, || crate::pin::anonymous_config(ca_pem, broker_id))
        .await?
        .with_bearer(jwt)
        .ok_or_else(|| invalid("the attestation token is not a valid header value".to_owned()))
}

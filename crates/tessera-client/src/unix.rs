//! Connecting to `tesserad`'s Unix-socket attestation listener: plaintext
//! gRPC over a local socket, where the broker attests the caller from the
//! kernel's peer credentials (uid, gid, pid, executable) instead of a
//! certificate or a token.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{Context, Poll};

use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;
use tonic::transport::{Endpoint, Uri};

use crate::channel::Channel;

use crate::connect::{CONNECT_TIMEOUT, REQUEST_TIMEOUT};
use crate::error::ClientError;

/// Connects every channel connection to one socket path.
#[derive(Debug, Clone)]
struct UnixConnector(PathBuf);

impl tower_service::Service<Uri> for UnixConnector {
    type Response = TokioIo<UnixStream>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _uri: Uri) -> Self::Future {
        let path = self.0.clone();
        Box::pin(async move { UnixStream::connect(path).await.map(TokioIo::new) })
    }
}

/// Opens a channel to the broker's Unix socket at `socket`. Connects
/// eagerly, so a missing socket fails here within [`CONNECT_TIMEOUT`].
pub async fn connect_unix(socket: impl AsRef<Path>) -> Result<Channel, ClientError> {
    let socket = socket.as_ref().to_owned();
    let shown = format!("unix:{}", socket.display());
    // The URI is required by the API and never resolved: the connector ignores it.
    let endpoint = Endpoint::from_static("http://tesserad.local")
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(REQUEST_TIMEOUT);
    endpoint
        .connect_with_connector(UnixConnector(socket))
        .await
        .map(Channel::from)
        .map_err(|source| ClientError::Connect {
            endpoint: shown,
            source,
        })
}

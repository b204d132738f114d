//! Counts each gRPC call as open on its connection's [`Activity`] until its
//! response body ends, so an idle connection (closed after
//! `server.idle_timeout`) is told from one serving a long stream such as
//! WatchRevocations.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use hyper::body::{Body, Frame, SizeHint};

use crate::tls::{Activity, CallGuard, PeerInfo};

/// The tower layer that marks calls on their connection's [`Activity`].
#[derive(Debug, Clone, Copy, Default)]
pub struct ActivityLayer;

impl<S> tower_layer::Layer<S> for ActivityLayer {
    type Service = ActivityService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ActivityService { inner }
    }
}

/// See [`ActivityLayer`].
#[derive(Debug, Clone)]
pub struct ActivityService<S> {
    inner: S,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B, R> tower_service::Service<hyper::Request<B>> for ActivityService<S>
where
    S: tower_service::Service<hyper::Request<B>, Response = hyper::Response<R>>,
    S::Future: Send + 'static,
    S::Error: 'static,
    R: 'static,
{
    type Response = hyper::Response<CallBody<R>>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: hyper::Request<B>) -> Self::Future {
        // Requests on the Unix listener carry no `PeerInfo`: nothing to mark.
        let guard = req.extensions().get::<PeerInfo>().map(|p| Activity::call(&p.activity));
        let fut = self.inner.call(req);
        Box::pin(async move {
            let response = fut.await?;
            Ok(response.map(|inner| CallBody { inner, _guard: guard }))
        })
    }
}

/// A response body that keeps its call open until it is dropped.
#[derive(Debug)]
pub struct CallBody<R> {
    inner: R,
    _guard: Option<CallGuard>,
}

impl<R: Body + Unpin> Body for CallBody<R> {
    type Data = R::Data;
    type Error = R::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

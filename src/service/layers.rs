//! The gRPC transport stack, built in one place, outermost first, and the call tracker that
//! shutdown uses to know when every call has been answered.

use std::{
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    task::{Context, Poll},
};

use http_body::{Body, Frame};
use tokio::sync::Notify;
use tonic::transport::Server;
use tower::{
    Layer, Service,
    layer::util::{Identity, Stack},
};

use crate::config::Config;

/// Most calls handled at once on one connection; more wait in HTTP/2 instead of piling up.
const CALLS_PER_CONNECTION: usize = 1024;

/// HTTP/2 flow-control window per stream, in bytes.
const STREAM_WINDOW: u32 = 1 << 20;

/// A server builder with modeld's transport settings and the call tracker.
pub fn grpc_server(config: &Config, tracker: &CallTracker) -> Server<Stack<TrackLayer, Identity>> {
    Server::builder()
        // Trace: one span per call, at debug so the hot path pays nothing at the default level.
        .trace_fn(|req| tracing::debug_span!("grpc", path = %req.uri().path()))
        // Timeout: a call may not outlive this; a client's shorter grpc-timeout wins.
        .timeout(config.request_timeout)
        // Concurrency: bound per connection; model runs are bounded again by the runner.
        .concurrency_limit_per_connection(CALLS_PER_CONNECTION)
        // Liveness of idle connections through load balancers.
        .http2_keepalive_interval(Some(std::time::Duration::from_secs(30)))
        // Flow control: static windows large enough for bulk streams, without the BDP pings
        // that adaptive windows send on busy connections.
        .initial_stream_window_size(Some(STREAM_WINDOW))
        .initial_connection_window_size(Some(2 * STREAM_WINDOW))
        // Tracking: counts each call until its response body is fully handed to the connection.
        .layer(TrackLayer(tracker.clone()))
}

/// Counts calls from arrival until the last byte of their response is handed to the connection.
///
/// Shutdown waits on this rather than on connections closing: a client may keep an idle
/// connection open after GOAWAY, and the drain must not wait for that.
#[derive(Clone, Default)]
pub struct CallTracker {
    inner: Arc<TrackerInner>,
}

#[derive(Default)]
struct TrackerInner {
    open: AtomicUsize,
    idle: Notify,
}

impl CallTracker {
    /// Calls not yet fully answered.
    pub fn open(&self) -> usize {
        self.inner.open.load(Ordering::Acquire)
    }

    /// Resolves once no call is open.
    pub async fn idle(&self) {
        loop {
            let notified = self.inner.idle.notified();
            if self.open() == 0 {
                return;
            }
            notified.await;
        }
    }

    fn enter(&self) -> CallGuard {
        self.inner.open.fetch_add(1, Ordering::AcqRel);
        CallGuard(self.clone())
    }
}

struct CallGuard(CallTracker);

impl Drop for CallGuard {
    fn drop(&mut self) {
        if self.0.inner.open.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.inner.idle.notify_waiters();
        }
    }
}

/// Tower layer of [`CallTracker`].
#[derive(Clone)]
pub struct TrackLayer(CallTracker);

impl<S> Layer<S> for TrackLayer {
    type Service = Track<S>;
    fn layer(&self, inner: S) -> Track<S> {
        Track { inner, tracker: self.0.clone() }
    }
}

#[derive(Clone)]
pub struct Track<S> {
    inner: S,
    tracker: CallTracker,
}

/// grpc.health.v1 Watch streams last as long as their client wants: they have said all they
/// will say once shutdown reports NOT_SERVING, so the drain does not wait for them.
const UNTRACKED: &str = "/grpc.health.v1.Health/Watch";

impl<S, ReqBody, B> Service<http::Request<ReqBody>> for Track<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<B>>,
    S::Future: Send + 'static,
    B: Body<Data = bytes::Bytes> + Send + Unpin + 'static,
{
    type Response = http::Response<TrackedBody<B>>;
    type Error = S::Error;
    type Future = Pin<Box<dyn std::future::Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<ReqBody>) -> Self::Future {
        let guard = (req.uri().path() != UNTRACKED).then(|| self.tracker.enter());
        let fut = self.inner.call(req);
        Box::pin(async move {
            let resp = fut.await?;
            Ok(resp.map(|body| TrackedBody { body, _guard: guard }))
        })
    }
}

/// A response body that keeps its call counted until it is dropped.
pub struct TrackedBody<B> {
    body: B,
    _guard: Option<CallGuard>,
}

impl<B: Body + Unpin> Body for TrackedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

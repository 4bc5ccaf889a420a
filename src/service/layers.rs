//! The gRPC transport stack, built in one place, outermost first: the call tracker that
//! shutdown uses to know when every call has been answered and that admits at most
//! `max_inflight_calls` at once, and the call deadline.

use std::{
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    task::{Context, Poll},
    time::{Duration, Instant},
};

use http_body::{Body, Frame};
use tokio::sync::Notify;
use tonic::transport::Server;
use tower::{
    Layer, Service,
    layer::util::{Identity, Stack},
};

use super::status;
use crate::{config::Config, telemetry::Metrics};

/// HTTP/2 flow-control window per stream, in bytes.
const STREAM_WINDOW: u32 = 1 << 20;

/// A server builder with modeld's transport settings, the call tracker and the deadline.
pub fn grpc_server(
    config: &Config,
    tracker: &CallTracker,
    metrics: &Metrics,
) -> Server<Stack<DeadlineLayer, Stack<TrackLayer, Identity>>> {
    let server = Server::builder();
    // Connection age: after it, GOAWAY, and calls in flight finish. tonic's own grace setting
    // replaces the GOAWAY with a hard close at age + grace, so the grace is enforced by the
    // listener instead (`conn::Incoming`).
    let server = match config.max_connection_age {
        Some(age) => server.max_connection_age(age),
        None => server,
    };
    server
        // Trace: one span per call, at debug so the hot path pays nothing at the default level.
        .trace_fn(|req| tracing::debug_span!("grpc", path = %req.uri().path()))
        // Concurrency: streams per connection are bounded by HTTP/2 itself (the client is told
        // the limit and queues); calls across connections by the tracker below; model runs
        // again by the runner.
        .max_concurrent_streams(config.max_streams_per_connection)
        .http2_max_header_list_size(config.max_header_bytes)
        // Liveness of idle connections through load balancers.
        .http2_keepalive_interval(Some(std::time::Duration::from_secs(30)))
        // Flow control: static windows large enough for bulk streams, without the BDP pings
        // that adaptive windows send on busy connections.
        .initial_stream_window_size(Some(STREAM_WINDOW))
        .initial_connection_window_size(Some(2 * STREAM_WINDOW))
        // Tracking: counts each call until its response body is fully handed to the connection.
        .layer(TrackLayer {
            tracker: tracker.clone(),
            limit: config.max_inflight_calls,
            rejected: metrics.rejected.with_label_values(&["calls_in_flight"]),
        })
        // Deadline: a call may not outlive `request_timeout_ms`; a caller's shorter grpc-timeout
        // wins. Past it the answer is DEADLINE_EXCEEDED (tonic's own timeout says CANCELLED).
        .layer(DeadlineLayer(config.request_timeout))
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

    /// Counts a call in; also returns how many were open before it.
    fn enter(&self) -> (CallGuard, usize) {
        let before = self.inner.open.fetch_add(1, Ordering::AcqRel);
        (CallGuard(self.clone()), before)
    }

    /// Counts a call in if fewer than `limit` are open: the admission of every face. The call
    /// stays counted (and the drain waits for it) until the guard is dropped.
    pub fn admit(&self, limit: usize) -> Option<CallGuard> {
        let (guard, before) = self.enter();
        (before < limit).then_some(guard)
    }
}

/// One counted call; dropping it counts the call out.
pub struct CallGuard(CallTracker);

impl Drop for CallGuard {
    fn drop(&mut self) {
        if self.0.inner.open.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.inner.idle.notify_waiters();
        }
    }
}

/// Tower layer of [`CallTracker`] with the admission limit.
#[derive(Clone)]
pub struct TrackLayer {
    tracker: CallTracker,
    limit: usize,
    rejected: prometheus::IntCounter,
}

impl<S> Layer<S> for TrackLayer {
    type Service = Track<S>;
    fn layer(&self, inner: S) -> Track<S> {
        Track { inner, layer: self.clone() }
    }
}

#[derive(Clone)]
pub struct Track<S> {
    inner: S,
    layer: TrackLayer,
}

/// grpc.health.v1 Watch streams last as long as their client wants: they have said all they
/// will say once shutdown reports NOT_SERVING, so the drain does not wait for them.
const UNTRACKED: &str = "/grpc.health.v1.Health/Watch";

/// Health checks are never refused for load: an overloaded server is alive, and its probes
/// must say so rather than have it restarted.
const HEALTH: &str = "/grpc.health.v1.Health/";

impl<S, ReqBody, B> Service<http::Request<ReqBody>> for Track<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<B>>,
    S::Future: Send + 'static,
    B: Body<Data = bytes::Bytes> + Default + Send + Unpin + 'static,
{
    type Response = http::Response<TrackedBody<B>>;
    type Error = S::Error;
    type Future = Pin<Box<dyn std::future::Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<ReqBody>) -> Self::Future {
        let path = req.uri().path();
        let guard = if path == UNTRACKED {
            None
        } else {
            let (guard, before) = self.layer.tracker.enter();
            if before >= self.layer.limit && !path.starts_with(HEALTH) {
                drop(guard);
                self.layer.rejected.inc();
                let status = tonic::Status::resource_exhausted(format!(
                    "the server is at its limit of {} calls in flight (max_inflight_calls); retry with backoff",
                    self.layer.limit
                ));
                let response = status.into_http().map(|body| TrackedBody { body, _guard: None });
                return Box::pin(async move { Ok(response) });
            }
            Some(guard)
        };
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

/// When a call must be answered by, put in the request's extensions for the faces.
#[derive(Debug, Clone, Copy)]
pub struct CallDeadline {
    /// The sooner of the caller's `grpc-timeout` and the server's `request_timeout_ms`: the
    /// answer to a unary call is due then.
    pub answer_by: Instant,
    /// The caller's own deadline, if it sent one: a stream's whole life is bound by it.
    pub caller: Option<Instant>,
}

/// Tower layer of [`Deadline`].
#[derive(Clone)]
pub struct DeadlineLayer(pub Duration);

impl<S> Layer<S> for DeadlineLayer {
    type Service = Deadline<S>;
    fn layer(&self, inner: S) -> Deadline<S> {
        Deadline { inner, server: self.0 }
    }
}

/// Puts each call's [`CallDeadline`] in its extensions, and answers DEADLINE_EXCEEDED when the
/// call's response has not started by then (for a stream: its response headers).
#[derive(Clone)]
pub struct Deadline<S> {
    inner: S,
    server: Duration,
}

impl<S, ReqBody, B> Service<http::Request<ReqBody>> for Deadline<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<B>>,
    S::Future: Send + 'static,
    B: Default + Send + 'static,
{
    type Response = http::Response<B>;
    type Error = S::Error;
    type Future = Pin<Box<dyn std::future::Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<ReqBody>) -> Self::Future {
        let arrived = Instant::now();
        let caller = grpc_timeout(req.headers()).map(|t| arrived + t);
        let answer_by = caller.map_or(arrived + self.server, |c| c.min(arrived + self.server));
        req.extensions_mut().insert(CallDeadline { answer_by, caller });
        let fut = self.inner.call(req);
        Box::pin(async move {
            match tokio::time::timeout_at(answer_by.into(), fut).await {
                // A unary request over max_message_bytes or cut short is refused by tonic before
                // our code sees it: its answer is rewritten here (a stream's, where the stream
                // reads it).
                Ok(Ok(response)) => {
                    match tonic::Status::from_header_map(response.headers()).as_ref().and_then(status::transport) {
                        Some(status) => Ok(status.into_http()),
                        None => Ok(response),
                    }
                }
                Ok(Err(e)) => Err(e),
                Err(_) => {
                    Ok(tonic::Status::deadline_exceeded("deadline exceeded before the call was answered").into_http())
                }
            }
        })
    }
}

/// The caller's `grpc-timeout` header: up to 8 digits and a unit (H, M, S, m, u, n), as the
/// gRPC over HTTP/2 specification defines it. A malformed header is ignored, as tonic does.
fn grpc_timeout(headers: &http::HeaderMap) -> Option<Duration> {
    let text = headers.get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = text.split_at(text.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeout_follows_the_spec() {
        let parse = |v: &str| {
            let mut headers = http::HeaderMap::new();
            headers.insert("grpc-timeout", v.parse().unwrap());
            grpc_timeout(&headers)
        };
        assert_eq!(parse("250m"), Some(Duration::from_millis(250)));
        assert_eq!(parse("2S"), Some(Duration::from_secs(2)));
        assert_eq!(parse("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse("99999999n"), Some(Duration::from_nanos(99_999_999)));
        assert_eq!(parse("123456789m"), None, "more than 8 digits");
        assert_eq!(parse("10x"), None);
        assert_eq!(parse("m"), None);
        assert_eq!(grpc_timeout(&http::HeaderMap::new()), None);
    }
}

//! Admission of gRPC connections: at most `max_connections` open at once, each given
//! `handshake_timeout` to send its HTTP/2 preface, and an accept loop that survives running out
//! of file descriptors.
//!
//! tonic's own listener ends the server on an accept error such as EMFILE, and hyper waits for
//! a preface forever: a flood of silent connections would take the daemon down or hold every
//! slot. This listener closes connections over the limit at once, times out silent ones, and
//! backs off briefly when accepting fails.

use std::{
    io,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, ready},
    time::Duration,
};

use prometheus::IntCounter;
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpListener,
    sync::{OwnedSemaphorePermit, Semaphore},
    time::Sleep,
};
use tokio_stream::Stream;
use tonic::transport::server::Connected;

use super::tls::{ConnInfo, TlsIo, TlsSource};
use crate::telemetry::{GaugeGuard, Metrics};

/// Bytes of the HTTP/2 client preface ("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").
const PREFACE_LEN: usize = 24;

/// Pause after an accept error that is not the client's doing (out of file descriptors or
/// memory), so the loop does not spin while the condition lasts.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// The accepted connections of a gRPC listener, within the connection limit.
pub struct Incoming {
    listener: TcpListener,
    slots: Arc<Semaphore>,
    handshake: Duration,
    metrics: Metrics,
    over_limit: IntCounter,
    handshake_timeouts: IntCounter,
    backoff: Option<Pin<Box<Sleep>>>,
    tls: Option<Arc<TlsSource>>,
    /// Connection age plus its grace: past it a connection is cut, whatever it is doing.
    lifetime: Option<Duration>,
}

impl Incoming {
    /// Connections of `listener`, with TLS when `tls` is given (the handshake counts against
    /// `handshake`, with the HTTP/2 preface). With `lifetime`, a connection is cut that long
    /// after its accept (the server sends GOAWAY at its age; this ends what outlives the grace).
    pub fn new(
        listener: TcpListener,
        max_connections: usize,
        handshake: Duration,
        metrics: &Metrics,
        tls: Option<Arc<TlsSource>>,
        lifetime: Option<Duration>,
    ) -> Incoming {
        Incoming {
            listener,
            slots: Arc::new(Semaphore::new(max_connections)),
            handshake,
            over_limit: metrics.rejected.with_label_values(&["connections"]),
            handshake_timeouts: metrics.rejected.with_label_values(&["handshake_timeout"]),
            metrics: metrics.clone(),
            backoff: None,
            tls,
            lifetime,
        }
    }
}

impl Stream for Incoming {
    type Item = io::Result<Conn>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<io::Result<Conn>>> {
        loop {
            if let Some(backoff) = self.backoff.as_mut() {
                ready!(backoff.as_mut().poll(cx));
                self.backoff = None;
            }
            match ready!(self.listener.poll_accept(cx)) {
                Ok((stream, _)) => {
                    let Ok(slot) = self.slots.clone().try_acquire_owned() else {
                        // Dropping the stream closes it: the client sees the connection end
                        // rather than waiting in the backlog for a slot that may not come.
                        self.over_limit.inc();
                        continue;
                    };
                    // Latency of small unary calls: never wait to coalesce writes.
                    let _ = stream.set_nodelay(true);
                    let handshake = Box::pin(tokio::time::sleep(self.handshake));
                    return Poll::Ready(Some(Ok(Conn {
                        io: TlsIo::new(stream, self.tls.as_deref()),
                        _slot: slot,
                        _open: GaugeGuard::enter(&self.metrics.connections_open),
                        preface: Some(Preface { deadline: handshake, read: 0 }),
                        timeouts: self.handshake_timeouts.clone(),
                        cut_at: self.lifetime.map(|l| Box::pin(tokio::time::sleep(l))),
                    })));
                }
                // The peer gave up before it was accepted: nothing to do.
                Err(e) if is_peer_error(&e) => continue,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot accept gRPC connections; retrying shortly");
                    self.backoff = Some(Box::pin(tokio::time::sleep(ACCEPT_BACKOFF)));
                }
            }
        }
    }
}

fn is_peer_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
            | io::ErrorKind::WouldBlock
            | io::ErrorKind::TimedOut
    )
}

/// A connection holding one of the listener's slots until it closes.
pub struct Conn {
    io: TlsIo,
    _slot: OwnedSemaphorePermit,
    _open: GaugeGuard,
    /// Until the preface has arrived: its deadline and the bytes read so far.
    preface: Option<Preface>,
    timeouts: IntCounter,
    cut_at: Option<Pin<Box<Sleep>>>,
}

struct Preface {
    deadline: Pin<Box<Sleep>>,
    read: usize,
}

impl Connected for Conn {
    type ConnectInfo = ConnInfo;

    fn connect_info(&self) -> ConnInfo {
        self.io.info().clone()
    }
}

impl AsyncRead for Conn {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if let Some(cut) = this.cut_at.as_mut() {
            // Polled on every read so that its timer wakes an idle connection too.
            if cut.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "connection past max_connection_age plus its grace",
                )));
            }
        }
        if let Some(preface) = this.preface.as_mut() {
            // Polled before reading so that its timer wakes the connection when it fires.
            if preface.deadline.as_mut().poll(cx).is_ready() {
                this.preface = None;
                this.timeouts.inc();
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "no HTTP/2 preface within handshake_timeout_ms",
                )));
            }
        }
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.io).poll_read(cx, buf))?;
        if let Some(preface) = this.preface.as_mut() {
            preface.read += buf.filled().len() - before;
            if preface.read >= PREFACE_LEN {
                this.preface = None;
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Conn {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

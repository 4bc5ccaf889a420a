//! TLS for the listeners (rustls with the ring provider; no OpenSSL).
//!
//! [`TlsSource`] builds a server configuration from PEM files and rebuilds it when their
//! content changes: each new connection takes the configuration current at its accept, so a
//! renewed certificate (cert-manager rewriting a Secret mount) serves new connections while open
//! ones carry on. A file that does not load is logged and counted once, and the last good
//! configuration keeps serving.
//!
//! [`TlsIo`] is a connection as the servers see it: plain TCP, or TLS with the handshake done
//! lazily on the connection's own task (a slow client never holds up the accept loop). Its
//! [`ConnInfo`] carries the peer address and, once the handshake is done, the identities of a
//! verified client certificate, for every call on the connection.

use std::{
    future::Future,
    io,
    net::SocketAddr,
    path::Path,
    pin::Pin,
    sync::{Arc, Mutex, OnceLock},
    task::{Context, Poll, ready},
    time::{Duration, Instant},
};

use arc_swap::ArcSwap;
use prometheus::{Gauge, IntCounter};
use rustls::{
    RootCertStore, ServerConfig,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
    server::WebPkiClientVerifier,
};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
};
use tokio_rustls::{Accept, TlsAcceptor, server::TlsStream};

use crate::{access::certificate_identities, config::TlsFiles, telemetry::Metrics};

/// ALPN for gRPC: HTTP/2 only.
pub const ALPN_GRPC: &[&[u8]] = &[b"h2"];
/// ALPN for the HTTP faces: HTTP/2 or HTTP/1.1.
pub const ALPN_HTTP: &[&[u8]] = &[b"h2", b"http/1.1"];

/// Why certificate files cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct TlsError(String);

/// A listener's TLS configuration, rebuilt when its files change.
pub struct TlsSource {
    listener: &'static str,
    files: TlsFiles,
    alpn: Vec<Vec<u8>>,
    current: ArcSwap<ServerConfig>,
    /// Content of the files last tried, so a bad file is reported once, not at every poll.
    last_seen: Mutex<Vec<u8>>,
    loaded: IntCounter,
    failed: IntCounter,
    expiry: Gauge,
}

impl TlsSource {
    /// Loads `files` for `listener` (a metric label: `grpc`, `http`, `admin`); fails at
    /// start-up when they cannot be used.
    pub fn load(
        listener: &'static str,
        files: &TlsFiles,
        alpn: &[&[u8]],
        metrics: &Metrics,
    ) -> Result<Arc<TlsSource>, TlsError> {
        let alpn: Vec<Vec<u8>> = alpn.iter().map(|p| p.to_vec()).collect();
        let content = read_all(files).map_err(TlsError)?;
        let (config, expiry) = build(files, &alpn)?;
        let source = TlsSource {
            listener,
            files: files.clone(),
            alpn,
            current: ArcSwap::from_pointee(config),
            last_seen: Mutex::new(content),
            loaded: metrics.tls_reloads.with_label_values(&[listener, "success"]),
            failed: metrics.tls_reloads.with_label_values(&[listener, "failure"]),
            expiry: metrics.tls_expiry.with_label_values(&[listener]),
        };
        source.loaded.inc();
        source.expiry.set(expiry);
        Ok(Arc::new(source))
    }

    /// Rebuilds the configuration if the files changed. A half-written or bad set is logged and
    /// counted once; the previous configuration stays.
    pub fn reload(&self) {
        let Ok(content) = read_all(&self.files) else {
            // A Secret mount being swapped can be briefly absent; the next poll sees it.
            return;
        };
        let mut last = self.last_seen.lock().expect("the TLS lock is never poisoned");
        if *last == content {
            return;
        }
        *last = content;
        match build(&self.files, &self.alpn) {
            Ok((config, expiry)) => {
                self.current.store(Arc::new(config));
                self.loaded.inc();
                self.expiry.set(expiry);
                tracing::info!(listener = self.listener, cert = %self.files.cert.display(), "TLS certificate reloaded");
            }
            Err(e) => {
                self.failed.inc();
                tracing::error!(listener = self.listener, error = %e, "TLS files rejected; the previous certificate keeps serving");
            }
        }
    }

    fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.current.load_full())
    }
}

fn read_all(files: &TlsFiles) -> Result<Vec<u8>, String> {
    let mut content = Vec::new();
    for path in [Some(&files.cert), Some(&files.key), files.client_ca.as_ref()].into_iter().flatten() {
        content.extend(std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?);
        content.push(0);
    }
    Ok(content)
}

/// The server configuration for `files`, and when its leaf certificate expires (Unix seconds).
fn build(files: &TlsFiles, alpn: &[Vec<u8>]) -> Result<(ServerConfig, f64), TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certs = read_certs(&files.cert)?;
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .map_err(|e| TlsError(format!("{}: no usable private key ({e})", files.key.display())))?;
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError(e.to_string()))?;
    let builder = match &files.client_ca {
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for cert in read_certs(ca)? {
                roots.add(cert).map_err(|e| TlsError(format!("{}: {e}", ca.display())))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| TlsError(format!("{}: {e}", ca.display())))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let expiry = not_after(&certs[0]);
    let mut config = builder
        .with_single_cert(certs, key)
        .map_err(|e| TlsError(format!("{} and {}: {e}", files.cert.display(), files.key.display())))?;
    config.alpn_protocols = alpn.to_vec();
    Ok((config, expiry))
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
        .map_err(|e| TlsError(format!("{}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(TlsError(format!("{}: no PEM certificate in it", path.display())));
    }
    Ok(certs)
}

fn not_after(cert: &CertificateDer<'_>) -> f64 {
    use x509_parser::prelude::{FromDer, X509Certificate};
    X509Certificate::from_der(cert).map_or(0.0, |(_, c)| c.validity().not_after.timestamp() as f64)
}

/// What every call on a connection knows of it.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    pub remote_addr: Option<SocketAddr>,
    /// When the connection was accepted: its age decides when it is closed.
    pub accepted: Instant,
    identities: Arc<OnceLock<Vec<String>>>,
}

impl ConnInfo {
    /// The identities of the verified client certificate; empty without one.
    pub fn identities(&self) -> &[String] {
        self.identities.get().map_or(&[], Vec::as_slice)
    }
}

/// A connection: plain, or TLS once its handshake is done.
pub struct TlsIo {
    state: State,
    info: ConnInfo,
}

enum State {
    Plain(TcpStream),
    Handshake(Box<Accept<TcpStream>>),
    Tls(Box<TlsStream<TcpStream>>),
    Failed,
}

impl TlsIo {
    /// Wraps an accepted connection; with `tls`, its handshake runs on first use.
    pub fn new(tcp: TcpStream, tls: Option<&TlsSource>) -> TlsIo {
        let remote_addr = tcp.peer_addr().ok();
        let info = ConnInfo { remote_addr, accepted: Instant::now(), identities: Arc::new(OnceLock::new()) };
        let state = match tls {
            Some(tls) => State::Handshake(Box::new(tls.acceptor().accept(tcp))),
            None => State::Plain(tcp),
        };
        TlsIo { state, info }
    }

    pub fn info(&self) -> &ConnInfo {
        &self.info
    }

    fn poll_handshake(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if let State::Handshake(accept) = &mut self.state {
            match ready!(Pin::new(accept.as_mut()).poll(cx)) {
                Ok(stream) => {
                    let identities = stream
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|chain| chain.first())
                        .map(|leaf| certificate_identities(leaf))
                        .unwrap_or_default();
                    let _ = self.info.identities.set(identities);
                    self.state = State::Tls(Box::new(stream));
                }
                Err(e) => {
                    self.state = State::Failed;
                    tracing::debug!(peer = ?self.info.remote_addr, error = %e, "TLS handshake failed");
                    return Poll::Ready(Err(e));
                }
            }
        }
        Poll::Ready(Ok(()))
    }
}

fn failed() -> io::Error {
    io::Error::new(io::ErrorKind::NotConnected, "the TLS handshake failed")
}

impl AsyncRead for TlsIo {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_handshake(cx))?;
        match &mut self.state {
            State::Plain(s) => Pin::new(s).poll_read(cx, buf),
            State::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            State::Handshake(_) | State::Failed => Poll::Ready(Err(failed())),
        }
    }
}

impl AsyncWrite for TlsIo {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        ready!(self.poll_handshake(cx))?;
        match &mut self.state {
            State::Plain(s) => Pin::new(s).poll_write(cx, buf),
            State::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            State::Handshake(_) | State::Failed => Poll::Ready(Err(failed())),
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        ready!(self.poll_handshake(cx))?;
        match &mut self.state {
            State::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            State::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
            State::Handshake(_) | State::Failed => Poll::Ready(Err(failed())),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match &self.state {
            State::Plain(s) => s.is_write_vectored(),
            State::Tls(s) => s.is_write_vectored(),
            State::Handshake(_) | State::Failed => false,
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_handshake(cx))?;
        match &mut self.state {
            State::Plain(s) => Pin::new(s).poll_flush(cx),
            State::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            State::Handshake(_) | State::Failed => Poll::Ready(Ok(())),
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.state {
            State::Plain(s) => Pin::new(s).poll_shutdown(cx),
            State::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            State::Handshake(_) | State::Failed => Poll::Ready(Ok(())),
        }
    }
}

/// An HTTP listener (the HTTP/JSON face, the admin port) for axum: plain or TLS, with each
/// connection's [`ConnInfo`] as its address.
pub struct HttpListener {
    listener: TcpListener,
    tls: Option<Arc<TlsSource>>,
}

impl HttpListener {
    pub fn new(listener: TcpListener, tls: Option<Arc<TlsSource>>) -> HttpListener {
        HttpListener { listener, tls }
    }
}

impl axum::serve::Listener for HttpListener {
    type Io = TlsIo;
    type Addr = ConnInfo;

    async fn accept(&mut self) -> (TlsIo, ConnInfo) {
        loop {
            match self.listener.accept().await {
                Ok((tcp, _)) => {
                    let _ = tcp.set_nodelay(true);
                    let io = TlsIo::new(tcp, self.tls.as_deref());
                    let info = io.info().clone();
                    return (io, info);
                }
                Err(e) => {
                    if !matches!(
                        e.kind(),
                        io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset | io::ErrorKind::Interrupted
                    ) {
                        tracing::warn!(error = %e, "cannot accept HTTP connections; retrying shortly");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<ConnInfo> {
        Ok(ConnInfo {
            remote_addr: Some(self.listener.local_addr()?),
            accepted: Instant::now(),
            identities: Arc::new(OnceLock::new()),
        })
    }
}

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, HttpListener>> for ConnInfo {
    fn connect_info(stream: axum::serve::IncomingStream<'_, HttpListener>) -> ConnInfo {
        stream.remote_addr().clone()
    }
}

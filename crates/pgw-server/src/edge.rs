//! The HTTP edge: the accept loop and per-connection serving, with TLS from the web config
//! file, the connection bound and the timeouts that axum's `serve` does not offer.
//!
//! - Accepting: [`TcpAcceptor`] retries failed accepts (`EMFILE`, `ENFILE`, `ENOBUFS`, …) with
//!   an exponential backoff from 5 ms to 1 s, counts them
//!   (`pgw_http_accept_errors_total`) and never stops the server. Any
//!   [`axum::serve::Listener`] works (the simulation's too).
//! - Bound: at most `--web.max-connections` connections are served; one more is closed at
//!   once and counted (`pgw_http_connections_rejected_total`).
//! - Timeouts: the TLS handshake and the first request head must complete within
//!   `--web.read-header-timeout` of the connection's start; later heads within that time of
//!   the previous response (hyper's HTTP/1 header timer); a connection without a request in
//!   flight and without I/O for `--web.idle-timeout` is closed. The body deadline
//!   (`--web.read-body-timeout`) is enforced where bodies are read (`http::body`), with 408.
//! - Shutdown: when the server stops, accepting stops, idle connections close, and requests
//!   in flight finish (each bounded by the timeouts above and the write timeout).

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::State;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::time::Instant;

use crate::config::EdgeSettings;
use crate::http::App;
use crate::web::WebConfigHandle;

/// Node-local counters of the HTTP edge (self-metrics `pgw_http_*`).
#[derive(Debug, Default)]
pub struct EdgeStats {
    /// Connections being served.
    pub open: AtomicI64,
    /// Connections closed at once because `--web.max-connections` were open.
    pub rejected: AtomicU64,
    /// Failed `accept` calls.
    pub accept_errors: AtomicU64,
    /// Connections closed by the header or idle timeout.
    pub timed_out: AtomicU64,
    /// Failed TLS handshakes.
    pub tls_failures: AtomicU64,
    /// Requests answered 401.
    pub unauthorized: AtomicU64,
    /// Requests answered 403 by a `pgw_authorization` scope.
    pub forbidden: AtomicU64,
    /// Writes answered 429 (`--push.max-pending-writes`).
    pub throttled: AtomicU64,
    /// Request bodies answered 408 (`--web.read-body-timeout`).
    pub body_timeouts: AtomicU64,
    rate: RateLimit,
}

/// At most one warning a kind per 10 s, so a flood does not flood the log.
#[derive(Debug, Default)]
struct RateLimit {
    last: [AtomicU64; 4],
}

impl RateLimit {
    fn allow(&self, kind: usize) -> bool {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let Some(slot) = self.last.get(kind) else {
            return false;
        };
        let prev = slot.load(Ordering::Relaxed);
        now >= prev + 10
            && slot
                .compare_exchange(prev, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }
}

const LOG_ACCEPT: usize = 0;
const LOG_FULL: usize = 1;
const LOG_TLS: usize = 2;

impl EdgeStats {
    fn inc(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }
}

/// A TCP listener whose accept errors are retried with backoff and counted, never fatal.
pub struct TcpAcceptor {
    inner: TcpListener,
    stats: Arc<EdgeStats>,
}

impl TcpAcceptor {
    /// Wraps `inner`; errors are counted in `stats`.
    pub fn new(inner: TcpListener, stats: Arc<EdgeStats>) -> Self {
        TcpAcceptor { inner, stats }
    }
}

impl axum::serve::Listener for TcpAcceptor {
    type Io = TcpStream;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        let mut backoff = Duration::from_millis(5);
        loop {
            match self.inner.accept().await {
                Ok((s, a)) => {
                    let _ = s.set_nodelay(true);
                    return (s, a);
                }
                // The peer gave up before we took the connection: nothing to back off from.
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset
                    ) => {}
                Err(e) => {
                    EdgeStats::inc(&self.stats.accept_errors);
                    if self.stats.rate.allow(LOG_ACCEPT) {
                        tracing::warn!(err = %e, retry_in = ?backoff,
                            "accepting an HTTP connection failed (out of file descriptors? raise the \
                             hard RLIMIT_NOFILE or lower --web.max-connections); retrying, \
                             counted in pgw_http_accept_errors_total");
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

/// Serves `app` on `listener` until `shutdown` completes, then lets the connections finish.
pub(crate) async fn serve<L>(
    mut listener: L,
    app: Arc<App>,
    web: WebConfigHandle,
    limits: EdgeSettings,
    stats: Arc<EdgeStats>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) where
    L: axum::serve::Listener,
{
    let (close_tx, close_rx) = watch::channel(false);
    // Every connection task holds a sender; all are gone when `done_rx` yields `None`.
    let (done_tx, mut done_rx) = mpsc::channel::<()>(1);
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    tokio::pin!(shutdown);
    loop {
        let (io, _addr) = tokio::select! {
            biased;
            () = &mut shutdown => break,
            c = listener.accept() => c,
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            EdgeStats::inc(&stats.rejected);
            if stats.rate.allow(LOG_FULL) {
                tracing::warn!(
                    max = limits.max_connections,
                    "HTTP connection closed at once: --web.max-connections are open \
                     (counted in pgw_http_connections_rejected_total)"
                );
            }
            drop(io);
            continue;
        };
        let conn = Conn {
            app: app.clone(),
            cfg: web.current(),
            limits,
            stats: stats.clone(),
            close: close_rx.clone(),
        };
        let done = done_tx.clone();
        tokio::spawn(async move {
            conn.run(io).await;
            drop(permit);
            drop(done);
        });
    }
    drop(listener);
    let _ = close_tx.send(true);
    drop(done_tx);
    let _ = done_rx.recv().await;
}

struct Conn {
    app: Arc<App>,
    cfg: Arc<crate::web::WebConfig>,
    limits: EdgeSettings,
    stats: Arc<EdgeStats>,
    close: watch::Receiver<bool>,
}

struct OpenGuard(Arc<EdgeStats>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Conn {
    async fn run<IO>(self, io: IO)
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        self.stats.open.fetch_add(1, Ordering::Relaxed);
        let _open = OpenGuard(self.stats.clone());
        let Some(tls) = self.cfg.tls.clone() else {
            return self.serve(io, false).await;
        };
        let acceptor = tokio_rustls::TlsAcceptor::from(tls);
        let handshake = async move {
            let io = match plaintext_check(io).await {
                Ok(io) => io,
                Err(e) => return Err(e),
            };
            acceptor.accept(io).await
        };
        let mut close = self.close.clone();
        let handshake = async move {
            tokio::select! {
                r = handshake => Some(r),
                _ = close.wait_for(|c| *c) => None,
            }
        };
        let outcome = match tokio::time::timeout(self.limits.read_header_timeout, handshake).await {
            // The server is shutting down: drop a connection still in its handshake.
            Ok(None) => return,
            Ok(Some(r)) => Ok(r),
            Err(e) => Err(e),
        };
        match outcome {
            Ok(Ok(stream)) => {
                let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
                self.serve(stream, h2).await;
            }
            Ok(Err(e)) => {
                EdgeStats::inc(&self.stats.tls_failures);
                if self.stats.rate.allow(LOG_TLS) {
                    tracing::info!(err = %e, "TLS handshake failed (counted in pgw_http_tls_handshake_failures_total)");
                }
            }
            Err(_) => {
                EdgeStats::inc(&self.stats.tls_failures);
                EdgeStats::inc(&self.stats.timed_out);
            }
        }
    }

    async fn serve<IO>(mut self, io: IO, alpn_h2: bool)
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let activity = Arc::new(Activity::new());
        let io = TokioIo::new(Tracked {
            inner: io,
            act: activity.clone(),
        });
        let app = self.app.clone();
        let act = activity.clone();
        let svc = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
            let guard = InFlight::new(act.clone());
            let app = app.clone();
            async move {
                let resp = crate::http::dispatch(State(app), req.map(axum::body::Body::new)).await;
                drop(guard);
                Ok::<_, Infallible>(resp)
            }
        });
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(self.limits.read_header_timeout);
        builder.http2().timer(TokioTimer::new());
        let tls = self.cfg.tls.is_some();
        if tls && !alpn_h2 {
            // Over TLS the protocol was negotiated by ALPN (h2 only with `http2: true`).
            builder = builder.http1_only();
        } else if tls {
            builder = builder.http2_only();
        }
        let conn = builder.serve_connection_with_upgrades(io, svc);
        tokio::pin!(conn);
        let tick = (self
            .limits
            .read_header_timeout
            .min(self.limits.idle_timeout)
            / 4)
        .clamp(Duration::from_millis(10), Duration::from_secs(1));
        let mut ticker = tokio::time::interval(tick);
        let mut closing = false;
        loop {
            tokio::select! {
                r = conn.as_mut() => {
                    if let Err(e) = r {
                        tracing::debug!(err = %e, "HTTP connection ended with an error");
                    }
                    return;
                }
                _ = self.close.changed(), if !closing => {
                    closing = true;
                    conn.as_mut().graceful_shutdown();
                }
                _ = ticker.tick() => {
                    if let Some(why) = activity.expired(&self.limits) {
                        EdgeStats::inc(&self.stats.timed_out);
                        tracing::debug!(why, "closing an HTTP connection");
                        return;
                    }
                }
            }
        }
    }
}

/// Go's answer to plain HTTP on a TLS port.
const HTTP_ON_TLS: &[u8] =
    b"HTTP/1.0 400 Bad Request\r\n\r\nClient sent an HTTP request to an HTTPS server.\n";

/// Reads the first 5 bytes of a connection on the TLS port. A plain HTTP request gets Go's
/// 400 and an error (as Go's `net/http` does); anything else is handed on with the bytes put
/// back in front.
async fn plaintext_check<IO>(mut io: IO) -> io::Result<Prefixed<IO>>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut head = Vec::with_capacity(5);
    while head.len() < 5 {
        let mut b = [0u8; 5];
        let n = io.read(&mut b[..5 - head.len()]).await?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&b[..n]);
    }
    // Go's `looksLikeHTTP` (a TLS record starts with its content type, 0x16 for a handshake).
    if matches!(
        &head[..],
        b"GET /" | b"HEAD " | b"POST " | b"PUT /" | b"OPTIO"
    ) {
        let _ = io.write_all(HTTP_ON_TLS).await;
        let _ = io.shutdown().await;
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "client sent an HTTP request to an HTTPS server",
        ));
    }
    Ok(Prefixed {
        prefix: head,
        pos: 0,
        inner: io,
    })
}

/// A stream with some bytes already read from it put back in front.
struct Prefixed<IO> {
    prefix: Vec<u8>,
    pos: usize,
    inner: IO,
}

impl<IO: AsyncRead + Unpin> AsyncRead for Prefixed<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.pos < self.prefix.len() {
            let n = (self.prefix.len() - self.pos).min(buf.remaining());
            let start = self.pos;
            buf.put_slice(&self.prefix[start..start + n]);
            self.pos += n;
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Prefixed<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// What the idle watchdog of a connection knows.
struct Activity {
    start: Instant,
    /// Requests whose handler has started.
    started: AtomicUsize,
    /// Requests whose handler has not returned yet.
    in_flight: AtomicUsize,
    /// Milliseconds since `start` of the last read or write, or request start or end.
    last_ms: AtomicU64,
}

impl Activity {
    fn new() -> Self {
        Activity {
            start: Instant::now(),
            started: AtomicUsize::new(0),
            in_flight: AtomicUsize::new(0),
            last_ms: AtomicU64::new(0),
        }
    }

    fn touch(&self) {
        let ms = self.start.elapsed().as_millis() as u64;
        self.last_ms.fetch_max(ms, Ordering::Relaxed);
    }

    /// Why the connection should be closed now, if it should.
    fn expired(&self, limits: &EdgeSettings) -> Option<&'static str> {
        if self.in_flight.load(Ordering::Relaxed) > 0 {
            return None;
        }
        let age = self.start.elapsed();
        if self.started.load(Ordering::Relaxed) == 0 {
            return (age > limits.read_header_timeout)
                .then_some("no complete request head within --web.read-header-timeout");
        }
        let idle = age.saturating_sub(Duration::from_millis(self.last_ms.load(Ordering::Relaxed)));
        (idle > limits.idle_timeout).then_some("idle for --web.idle-timeout")
    }
}

struct InFlight(Arc<Activity>);

impl InFlight {
    fn new(a: Arc<Activity>) -> Self {
        a.started.fetch_add(1, Ordering::Relaxed);
        a.in_flight.fetch_add(1, Ordering::Relaxed);
        a.touch();
        InFlight(a)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.touch();
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// An I/O stream that records when bytes last moved.
struct Tracked<IO> {
    inner: IO,
    act: Arc<Activity>,
}

impl<IO: AsyncRead + Unpin> AsyncRead for Tracked<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.act.touch();
        }
        r
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Tracked<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.act.touch();
        }
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.act.touch();
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit, as Go programs do at start, so that a
/// node started under a supervisor's soft limit of 1024 can hold its connections. Logs the
/// outcome; a failure is a warning, not fatal.
pub fn raise_fd_limit() {
    #[cfg(unix)]
    {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes into the struct we own.
        if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
            tracing::warn!(err = %io::Error::last_os_error(), "cannot read RLIMIT_NOFILE");
            return;
        }
        if lim.rlim_cur >= lim.rlim_max {
            tracing::info!(
                soft = lim.rlim_cur,
                hard = lim.rlim_max,
                "open file limit already at its hard limit"
            );
            return;
        }
        let old = lim.rlim_cur;
        lim.rlim_cur = lim.rlim_max;
        // SAFETY: setrlimit reads the struct we own.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
            tracing::warn!(err = %io::Error::last_os_error(), soft = old, hard = lim.rlim_max,
                "cannot raise the open file limit to its hard limit; HTTP connections are bounded by the soft limit");
            return;
        }
        tracing::info!(
            from = old,
            to = lim.rlim_max,
            "raised the soft open file limit (RLIMIT_NOFILE) to the hard limit"
        );
    }
}

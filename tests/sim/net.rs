//! turmoil adapters for the production seams: the gRPC server's incoming connections, the
//! gRPC client connector, the HTTP listener axum serves on, and a small HTTP/1 client.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures::Stream;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use pgw_raft::ChannelFactory;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tonic::transport::server::{Connected, TcpConnectInfo};
use turmoil::net::{TcpListener, TcpStream};

/// The public HTTP port of every simulated node.
pub const HTTP_PORT: u16 = 9091;
/// The internal gRPC port of every simulated node.
pub const GRPC_PORT: u16 = 9095;

/// A connection the gRPC server accepted.
pub struct Accepted(TcpStream);

impl Connected for Accepted {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        TcpConnectInfo {
            local_addr: self.0.local_addr().ok(),
            remote_addr: self.0.peer_addr().ok(),
        }
    }
}

impl AsyncRead for Accepted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for Accepted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// The connections `listener` accepts, for `Node::start_with`.
pub fn incoming(listener: TcpListener) -> impl Stream<Item = io::Result<Accepted>> + Send {
    futures::stream::unfold(listener, |l| async move {
        let next = l.accept().await.map(|(s, _)| Accepted(s));
        Some((next, l))
    })
}

/// Peer channels over the simulated network, with the production endpoint settings.
pub fn channel_factory() -> ChannelFactory {
    ChannelFactory::new(|endpoint| endpoint.connect_with_connector_lazy(connector()))
}

type ConnectFuture =
    Pin<Box<dyn std::future::Future<Output = io::Result<TokioIo<TcpStream>>> + Send>>;

/// A tonic connector dialling `host:port` on the simulated network.
pub fn connector() -> impl tower::Service<
    http::Uri,
    Response = TokioIo<TcpStream>,
    Error = io::Error,
    Future = ConnectFuture,
> + Clone
+ Send
+ 'static {
    tower::service_fn(|uri: http::Uri| {
        Box::pin(async move {
            let authority = uri
                .authority()
                .map(|a| a.as_str().to_string())
                .ok_or_else(|| io::Error::other(format!("no authority in {uri}")))?;
            let stream = TcpStream::connect(authority).await?;
            Ok(TokioIo::new(stream))
        }) as ConnectFuture
    })
}

/// The HTTP API's listener: axum serves on it like on a `tokio::net::TcpListener`.
pub struct HttpListener(pub TcpListener);

impl axum::serve::Listener for HttpListener {
    type Io = TcpStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.0.accept().await {
                Ok(conn) => return conn,
                // As axum does for TCP: back off and keep accepting.
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.0.local_addr()
    }
}

/// What an HTTP exchange produced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    /// A complete response.
    Status(u16, Vec<u8>),
    /// The request never left: the connection was refused or did not open in time.
    NotSent(String),
    /// The request may have reached the server, but no complete answer came.
    Lost(String),
}

/// How long a client waits for a TCP connection to open.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// One HTTP/1.1 request on a new connection to `host`'s HTTP port, bounded by `timeout`.
pub async fn request(
    host: &str,
    method: http::Method,
    path: &str,
    body: Vec<u8>,
    timeout: Duration,
) -> Reply {
    let connect = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect((host, HTTP_PORT)));
    let stream = match connect.await {
        Err(_) => return Reply::NotSent("connect timed out".into()),
        Ok(Err(e)) => return Reply::NotSent(format!("connect: {e}")),
        Ok(Ok(s)) => s,
    };
    let exchange = async {
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| format!("handshake: {e}"))?;
        let _driver = AbortOnDrop(tokio::spawn(conn));
        let req = http::Request::builder()
            .method(method)
            .uri(path)
            .header(http::header::HOST, host)
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| format!("request: {e}"))?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| format!("send: {e}"))?;
        let status = resp.status().as_u16();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("body: {e}"))?
            .to_bytes();
        Ok::<_, String>((status, bytes.to_vec()))
    };
    match tokio::time::timeout(timeout, exchange).await {
        Err(_) => Reply::Lost("timed out".into()),
        Ok(Err(e)) => Reply::Lost(e),
        Ok(Ok((status, body))) => Reply::Status(status, body),
    }
}

/// Aborts a task when dropped (a request that timed out must not leave its connection task
/// behind).
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

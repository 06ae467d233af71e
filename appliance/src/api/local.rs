//! Calls made inside the process: the web console reaches the gRPC services over in-memory
//! connections, so what it does passes the same guard (authentication, ACLs, quotas, audit)
//! as a remote client's call. A second server, without TLS, serves the same routes on these
//! connections; nothing outside the process can open one.
//!
//! ```text
//! console --Channel--> LocalConnector --duplex--> LocalIncoming --> gRPC routes (guarded)
//! ```
//!
//! A local connection says which browser a call is for (`CONSOLE_PEER_HEADER`), so the audit
//! record names it; the header is trusted only on these connections.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_util::Stream;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, DuplexStream, ReadBuf};
use tokio::sync::mpsc;
use tonic::transport::server::Connected;
use tonic::transport::{Channel, Endpoint, Uri};

/// The metadata key a local call names its browser's address with.
pub const CONSOLE_PEER_HEADER: &str = "x-appliance-console-peer";
/// Buffered bytes each way of one in-memory connection.
const DUPLEX_BYTES: usize = 256 * 1024;
/// Connections handed to the server and not yet taken.
const PENDING_CONNECTIONS: usize = 16;

/// Opens in-memory connections to the gRPC API; cheap to clone.
#[derive(Debug, Clone)]
pub struct LocalConnector {
    connections: mpsc::Sender<DuplexStream>,
}

/// The server's side of the connections a [`LocalConnector`] opens.
#[derive(Debug)]
pub struct LocalIncoming {
    connections: mpsc::Receiver<DuplexStream>,
}

/// The pair: give the connector to the console, the incoming side to `api::serve`.
pub fn local_api() -> (LocalConnector, LocalIncoming) {
    let (sender, receiver) = mpsc::channel(PENDING_CONNECTIONS);
    (
        LocalConnector {
            connections: sender,
        },
        LocalIncoming {
            connections: receiver,
        },
    )
}

impl LocalConnector {
    /// A gRPC channel over in-memory connections, made when its first call is sent.
    pub fn channel(&self) -> Channel {
        let connections = self.connections.clone();
        Endpoint::from_static("http://appliance.local").connect_with_connector_lazy(
            tower::service_fn(move |_: Uri| {
                let connections = connections.clone();
                async move {
                    let (client, server) = tokio::io::duplex(DUPLEX_BYTES);
                    connections
                        .send(server)
                        .await
                        .map_err(|_| io::Error::other("the gRPC API has stopped"))?;
                    Ok::<_, io::Error>(TokioIo::new(client))
                }
            }),
        )
    }
}

impl LocalIncoming {
    /// The connections, as `serve_with_incoming` takes them.
    pub fn into_stream(self) -> impl Stream<Item = io::Result<LocalConnection>> + Send + 'static {
        futures_util::stream::unfold(self.connections, |mut connections| async move {
            let stream = connections.recv().await?;
            Some((Ok(LocalConnection(stream)), connections))
        })
    }
}

/// One in-memory connection, as the server sees it.
#[derive(Debug)]
pub struct LocalConnection(DuplexStream);

/// What a request over a local connection carries instead of a TCP peer.
#[derive(Debug, Clone, Copy)]
pub struct LocalConnectInfo;

impl Connected for LocalConnection {
    type ConnectInfo = LocalConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        LocalConnectInfo
    }
}

impl AsyncRead for LocalConnection {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for LocalConnection {
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

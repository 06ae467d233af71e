//! Accepting TCP connections for the gRPC API, the metrics endpoint and the Kafka listener
//! within bounds: at most
//! `max` open at once (one more is accepted and closed at once, with a warning, so clients
//! fail fast instead of hanging in the backlog), each closed once its peer has sent nothing
//! for `idle_timeout`, and an accept that fails for want of resources (EMFILE at the file
//! limit) logged and retried after a growing pause instead of spinning.
//!
//! Live HTTP/2 clients are never idle: the server's keepalive pings (sent more often than the
//! idle timeout) make them answer. A peer that opened a socket and went silent, or vanished
//! without a FIN, is.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::Stream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};
use tonic::transport::server::{Connected, TcpConnectInfo};

/// The first pause after a failed accept; it doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(10);
const MAX_BACKOFF: Duration = Duration::from_secs(1);
/// Refused connections are reported at most this often.
const REFUSAL_REPORT_INTERVAL: Duration = Duration::from_secs(10);

/// Bounds of one listener's connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Connections open at once.
    pub max: usize,
    /// How long a peer may send nothing before its connection is closed.
    pub idle_timeout: Duration,
}

/// The accepted connections of `listener` (named `what` in logs), within `limits`.
pub fn incoming(
    listener: TcpListener,
    limits: ConnectionLimits,
    what: &'static str,
) -> impl Stream<Item = io::Result<Connection>> + Send + 'static {
    let acceptor = Acceptor {
        listener,
        slots: Arc::new(Semaphore::new(limits.max)),
        limits,
        what,
        refused: 0,
        last_report: None,
    };
    futures_util::stream::unfold(acceptor, |mut acceptor| async move {
        let connection = acceptor.accept().await;
        Some((Ok(connection), acceptor))
    })
}

struct Acceptor {
    listener: TcpListener,
    slots: Arc<Semaphore>,
    limits: ConnectionLimits,
    what: &'static str,
    /// Connections refused since the last report.
    refused: u64,
    last_report: Option<Instant>,
}

impl Acceptor {
    async fn accept(&mut self) -> Connection {
        let mut backoff = FIRST_BACKOFF;
        loop {
            match self.listener.accept().await {
                Ok((stream, peer)) => match Arc::clone(&self.slots).try_acquire_owned() {
                    Ok(slot) => return Connection::new(stream, slot, self.limits.idle_timeout),
                    Err(_) => {
                        drop(stream);
                        self.report_refusal(peer);
                    }
                },
                Err(error) if is_about_one_connection(&error) => {
                    tracing::debug!(what = self.what, %error, "a connection failed while accepted");
                }
                Err(error) => {
                    tracing::warn!(
                        what = self.what,
                        %error,
                        retry_in_ms = backoff.as_millis() as u64,
                        "cannot accept connections (at the open-file limit? see ulimit -n)"
                    );
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }

    fn report_refusal(&mut self, peer: std::net::SocketAddr) {
        self.refused += 1;
        let now = Instant::now();
        if self
            .last_report
            .is_some_and(|last| now.duration_since(last) < REFUSAL_REPORT_INTERVAL)
        {
            return;
        }
        tracing::warn!(
            what = self.what,
            %peer,
            refused = self.refused,
            max = self.limits.max,
            "connection limit reached: refusing new connections"
        );
        self.refused = 0;
        self.last_report = Some(now);
    }
}

/// Errors that concern the connection being accepted, not the listener.
fn is_about_one_connection(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionRefused
            | io::ErrorKind::Interrupted
            | io::ErrorKind::WouldBlock
    )
}

/// An accepted connection: holds its slot until closed, and fails its next read once the
/// peer has been silent for the idle timeout.
#[derive(Debug)]
pub struct Connection {
    stream: TcpStream,
    idle_timeout: Duration,
    silence: Pin<Box<Sleep>>,
    _slot: OwnedSemaphorePermit,
}

impl Connection {
    fn new(stream: TcpStream, slot: OwnedSemaphorePermit, idle_timeout: Duration) -> Self {
        Self {
            stream,
            idle_timeout,
            silence: Box::pin(tokio::time::sleep(idle_timeout)),
            _slot: slot,
        }
    }
}

impl Connection {
    /// Sends small writes at once (Kafka answers are one write each).
    pub fn set_nodelay(&self) -> io::Result<()> {
        self.stream.set_nodelay(true)
    }
}

impl Connected for Connection {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.stream.connect_info()
    }
}

impl AsyncRead for Connection {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.stream).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    let next = Instant::now() + this.idle_timeout;
                    this.silence.as_mut().reset(next);
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(error)) => Poll::Ready(Err(error)),
            Poll::Pending => match this.silence.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the peer sent nothing for the listener's idle timeout",
                ))),
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

impl AsyncWrite for Connection {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use futures_util::StreamExt;
    use tokio::io::AsyncReadExt;

    use super::*;

    #[tokio::test]
    async fn connections_beyond_the_limit_are_closed_and_silent_ones_time_out() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let limits = ConnectionLimits {
            max: 1,
            idle_timeout: Duration::from_millis(300),
        };
        let mut connections = Box::pin(incoming(listener, limits, "test listener"));

        let mut first_client = TcpStream::connect(addr).await.unwrap();
        let mut first = connections.next().await.unwrap().unwrap();
        let mut second_client = TcpStream::connect(addr).await.unwrap();
        let accepting = tokio::spawn(async move {
            let third = connections.next().await.unwrap().unwrap();
            (connections, third)
        });
        let mut byte = [0u8; 1];
        assert_eq!(
            second_client.read(&mut byte).await.unwrap(),
            0,
            "a connection over the limit is closed at once"
        );

        let silent = first.read(&mut byte).await.unwrap_err();
        assert_eq!(silent.kind(), io::ErrorKind::TimedOut);
        drop(first);
        assert_eq!(first_client.read(&mut byte).await.unwrap(), 0);

        let _third_client = TcpStream::connect(addr).await.unwrap();
        let (_connections, _third) = accepting.await.unwrap();
    }
}

//! The web console: pages an operator opens in a browser, served by the daemon itself on
//! `api.console-addr` (loopback by default; TLS with the API's certificate, and required off
//! loopback, as for the other endpoints). Its assets are compiled into the binary, so it
//! works on a gateway without internet (docs/console.md).
//!
//! It owns no state of the appliance: every page's data and every action is a gRPC call
//! over an in-process connection (`api::LocalConnector`) with the signed-in session's token,
//! so what the console may see and do is exactly what that principal may through the API,
//! checked by the same guard and written to the same audit topic. It owns only sessions
//! (`session.rs`: sign-in, cookie, CSRF) and the counters its charts show over time
//! (`history.rs`).
//!
//! ```text
//! browser --HTTPS--> routes.rs --(session's token)--> gRPC services (in process)
//!         <--SSE---- overview every 2 s, a followed query's answers
//! history.rs <-- hub edges, pipelines, connectors (counters, every 5 s)
//! ```
//!
//! Every response carries a strict Content-Security-Policy (no inline script or style, no
//! other origin), `X-Frame-Options: DENY`, `nosniff` and `no-referrer`; every change is a
//! POST with a JSON body and the session's CSRF token in `x-csrf-token`.

mod assets;
mod history;
mod routes;
mod session;

use std::net::SocketAddr;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

use crate::api::{Audit, ConnectionLimits, LocalConnector, handshake, incoming};
use crate::connect::Connectors;
use crate::link::hub::Hub;
use crate::pipeline::Pipelines;
use crate::security::Security;

pub use history::History;
use session::Sessions;

/// What the console serves from.
#[derive(Debug, Clone)]
pub struct Console {
    sessions: Sessions,
    history: History,
    /// The gRPC API, in process; one connection that every session's calls share.
    api: Channel,
    audit: Audit,
    /// Whether this appliance is a hub (it has edges to show).
    hub: bool,
    /// Whether the console is served over TLS (its cookie is then `Secure`).
    tls: bool,
    shutdown: CancellationToken,
}

/// What the console needs of the appliance: the API to call and the security to sign in
/// with, the audit topic for sign-ins, and the parts its charts sample.
#[derive(Debug, Clone)]
pub struct Parts {
    pub api: LocalConnector,
    pub security: Security,
    pub audit: Audit,
    pub hub: Option<Hub>,
    pub pipelines: Pipelines,
    pub connectors: Connectors,
}

/// Serves the console on `listener` until `shutdown`; connections in progress (a page's
/// event stream among them) are closed then.
pub async fn serve(
    listener: TcpListener,
    parts: Parts,
    tls: Option<tokio_rustls::TlsAcceptor>,
    limits: ConnectionLimits,
    shutdown: CancellationToken,
) {
    let history = History::default();
    let hub = parts.hub.is_some();
    tokio::spawn(history.clone().sample(
        parts.hub,
        parts.pipelines,
        parts.connectors,
        shutdown.clone(),
    ));
    let console = Console {
        sessions: Sessions::new(parts.security),
        history,
        api: parts.api.channel(),
        audit: parts.audit,
        hub,
        tls: tls.is_some(),
        shutdown: shutdown.clone(),
    };
    let mut connections = std::pin::pin!(incoming(listener, limits, "console"));
    loop {
        let connection = tokio::select! {
            () = shutdown.cancelled() => break,
            next = futures_util::StreamExt::next(&mut connections) => match next {
                Some(Ok(connection)) => connection,
                _ => break,
            },
        };
        let peer = tonic::transport::server::Connected::connect_info(&connection).remote_addr();
        let (console, tls, shutdown) = (console.clone(), tls.clone(), shutdown.clone());
        tokio::spawn(async move {
            match tls {
                None => serve_connection(connection, peer, console, shutdown).await,
                Some(tls) => {
                    if let Some(stream) = handshake(&tls, connection, "console").await {
                        serve_connection(stream, peer, console, shutdown).await;
                    }
                }
            }
        });
    }
}

/// How long a connection's requests may take to finish once the console stops.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

async fn serve_connection<S>(
    stream: S,
    peer: Option<SocketAddr>,
    console: Console,
    shutdown: CancellationToken,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = TowerToHyperService::new(routes::router(console, peer));
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(Duration::from_secs(10))
        .serve_connection(TokioIo::new(stream), service);
    let mut connection = std::pin::pin!(connection);
    let served = tokio::select! {
        served = connection.as_mut() => served,
        () = shutdown.cancelled() => {
            connection.as_mut().graceful_shutdown();
            tokio::time::timeout(SHUTDOWN_GRACE, connection).await.unwrap_or(Ok(()))
        }
    };
    if let Err(error) = served {
        tracing::debug!(%error, "console connection ended with an error");
    }
}

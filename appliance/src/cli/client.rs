//! Client commands' connection: `--server` (`https://` with `--server-ca`), the credentials
//! (a client certificate with `--client-cert` and `--client-key`, or a bearer token: `--token`,
//! `APPLIANCE_TOKEN`, else the admin token of the local data directory), the gRPC channel, one
//! small runtime per command, and a gRPC status as the CLI's failure. The commands live beside it by group (topics,
//! records, groups, plugins and pipelines, connectors, links, query); output.rs prints.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Args;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

use crate::app::Running;
use crate::security::ADMIN_TOKEN_FILE;

use super::Failure;

#[derive(Debug, Args)]
pub struct ServerArgs {
    /// The appliance's gRPC address.
    #[arg(
        long,
        env = "APPLIANCE_SERVER",
        default_value = "http://127.0.0.1:7070",
        global = true
    )]
    server: String,
    /// The bearer token [default: the admin token in <data-dir>/admin.token].
    #[arg(long, env = "APPLIANCE_TOKEN", hide_env_values = true, global = true)]
    token: Option<String>,
    /// The local data directory whose admin token is used when no token is given.
    #[arg(
        long,
        env = "APPLIANCE_DATA_DIR",
        default_value = "appliance-data",
        global = true
    )]
    data_dir: PathBuf,
    /// The CA an `https://` server's certificate must chain to.
    #[arg(long, env = "APPLIANCE_SERVER_CA", global = true)]
    server_ca: Option<PathBuf>,
    /// A client certificate to authenticate with over TLS instead of a token.
    #[arg(
        long,
        env = "APPLIANCE_CLIENT_CERT",
        global = true,
        requires = "client_key"
    )]
    client_cert: Option<PathBuf>,
    /// The client certificate's key.
    #[arg(
        long,
        env = "APPLIANCE_CLIENT_KEY",
        global = true,
        requires = "client_cert"
    )]
    client_key: Option<PathBuf>,
}

impl ServerArgs {
    async fn channel(&self) -> anyhow::Result<ApiChannel> {
        let token = match (&self.token, &self.client_cert) {
            (Some(token), _) => Some(token.clone()),
            (None, Some(_)) => None,
            (None, None) => Some(read_token(&self.data_dir.join(ADMIN_TOKEN_FILE)).context(
                "no token: pass --token or set APPLIANCE_TOKEN (`appliance token create` makes \
                 one), or run as the appliance's user where --data-dir holds admin.token",
            )?),
        };
        let tls = match (&self.server_ca, &self.client_cert, &self.client_key) {
            (None, None, _) => None,
            (None, Some(_), _) => {
                anyhow::bail!("--client-cert needs --server-ca and an https:// --server")
            }
            (Some(ca), cert, key) => {
                let read = |path: &PathBuf| {
                    std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))
                };
                let mut tls =
                    ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read(ca)?));
                if let (Some(cert), Some(key)) = (cert, key) {
                    tls = tls.identity(Identity::from_pem(read(cert)?, read(key)?));
                }
                Some(tls)
            }
        };
        connect(&self.server, token.as_deref(), tls).await
    }
}

/// A gRPC channel that sends a bearer token (when it has one) with every request.
pub type ApiChannel = InterceptedService<Channel, BearerToken>;

/// Adds `authorization: Bearer TOKEN` to each request; never printed.
#[derive(Clone)]
pub struct BearerToken(Option<MetadataValue<Ascii>>);

impl std::fmt::Debug for BearerToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BearerToken(..)")
    }
}

impl Interceptor for BearerToken {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(header) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", header.clone());
        }
        Ok(request)
    }
}

/// The token in `path` (an admin.token file).
fn read_token(path: &Path) -> anyhow::Result<String> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    Ok(text.trim().to_owned())
}

/// An appliance of this process and its admin token (for the demo and the benches).
#[derive(Debug, Clone)]
pub(super) struct Local {
    url: String,
    token: String,
    tls: Option<ClientTlsConfig>,
}

impl Local {
    pub(super) fn of(running: &Running) -> anyhow::Result<Self> {
        let file = running
            .admin_token_file
            .as_deref()
            .context("the appliance has no admin.token file")?;
        Self::at(running.grpc_addr, file)
    }

    /// The appliance serving gRPC on `grpc_addr` (plaintext, loopback), with the token in
    /// `token_file`.
    pub(super) fn at(grpc_addr: SocketAddr, token_file: &Path) -> anyhow::Result<Self> {
        Ok(Self {
            url: format!("http://{grpc_addr}"),
            token: read_token(token_file)?,
            tls: None,
        })
    }

    /// The same appliance over TLS, its certificate chaining to the CA `ca_pem`.
    pub(super) fn over_tls(self, ca_pem: &[u8]) -> Self {
        Self {
            url: self.url.replacen("http://", "https://", 1),
            tls: Some(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca_pem))),
            ..self
        }
    }

    /// The same appliance, called by the holder of `token`.
    pub(super) fn as_holder_of(&self, token: String) -> Self {
        Self {
            token,
            ..self.clone()
        }
    }

    pub(super) async fn connect(&self) -> anyhow::Result<ApiChannel> {
        connect(&self.url, Some(&self.token), self.tls.clone()).await
    }
}

/// A channel to the appliance at `url` (over `tls` for `https://`) that sends `token`, with
/// the server's large HTTP/2 windows so that big requests and responses are not held back by
/// flow control.
async fn connect(
    url: &str,
    token: Option<&str>,
    tls: Option<ClientTlsConfig>,
) -> anyhow::Result<ApiChannel> {
    let header = token
        .map(|token| {
            let mut header: MetadataValue<Ascii> = format!("Bearer {token}")
                .parse()
                .context("the token has characters a header cannot carry")?;
            header.set_sensitive(true);
            anyhow::Ok(header)
        })
        .transpose()?;
    if url.starts_with("https://") != tls.is_some() {
        anyhow::bail!(
            "an https:// --server needs --server-ca (the CA its certificate chains to), and \
             --server-ca an https:// --server"
        );
    }
    let endpoint = Channel::from_shared(url.to_owned())
        .with_context(|| format!("--server {url:?} is not a valid URL"))?
        .initial_stream_window_size(crate::api::STREAM_WINDOW_BYTES)
        .initial_connection_window_size(crate::api::CONNECTION_WINDOW_BYTES);
    let endpoint = match tls {
        Some(tls) => endpoint
            .tls_config(tls)
            .context("the TLS settings cannot be used")?,
        None => endpoint,
    };
    let channel = endpoint
        .connect()
        .await
        .with_context(|| format!("cannot reach the appliance at {url}"))?;
    Ok(InterceptedService::new(channel, BearerToken(header)))
}

/// Runs a client command on a small runtime of its own.
pub fn run<F>(server: &ServerArgs, command: impl FnOnce(ApiChannel) -> F) -> Result<(), Failure>
where
    F: std::future::Future<Output = Result<(), Failure>>,
{
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::Runtime(e.into()))?;
    runtime.block_on(async {
        let channel = server.channel().await.map_err(Failure::Runtime)?;
        command(channel).await
    })
}

/// A gRPC status as a failure: the server's message and the code's name.
pub(super) fn status(status: tonic::Status) -> Failure {
    Failure::Runtime(anyhow::anyhow!(
        "{} ({:?})",
        status.message(),
        status.code()
    ))
}

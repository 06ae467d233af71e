//! The command line: `appliance run` (the daemon) and `appliance bench` (measurements an
//! operator runs on the gateway itself). Exit codes: 0 success, 1 failure, 2 usage or
//! configuration error, each with one clear line on stderr.

mod bench;
mod certs;
mod client;
mod connectors;
#[cfg(feature = "hub")]
mod demo;
mod exports;
mod groups;
mod links;
mod manage;
mod output;
#[cfg(feature = "hub")]
mod query;
mod records;
mod scaffold;
mod security;
mod service;
mod status;
mod topics;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::log::Durability;
use crate::security::secrets::Redacting;

#[derive(Debug, Parser)]
#[command(name = "appliance", version, about = "Edge-to-core pipeline appliance")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the appliance daemon until SIGINT or SIGTERM.
    Run(RunArgs),
    /// Manage topics of a running appliance.
    Topic {
        #[command(subcommand)]
        command: topics::TopicCommand,
        #[command(flatten)]
        server: client::ServerArgs,
    },
    /// Produce one record per line of standard input; prints how many were acknowledged.
    Produce {
        #[command(flatten)]
        args: records::ProduceArgs,
        #[command(flatten)]
        server: client::ServerArgs,
    },
    /// Print records of a topic, one value (or JSON object) per line.
    Consume {
        #[command(flatten)]
        args: records::ConsumeArgs,
        #[command(flatten)]
        server: client::ServerArgs,
    },
    /// Print the newest value of a key of a compacted topic (the topic read as a table).
    Lookup {
        #[command(flatten)]
        args: records::LookupArgs,
        #[command(flatten)]
        server: client::ServerArgs,
    },
    /// Inspect consumer groups and move their offsets.
    Group {
        #[command(subcommand)]
        command: groups::GroupCommand,
        #[command(flatten)]
        server: client::ServerArgs,
    },
    /// Add, list and delete WebAssembly plugins.
    Plugin {
        #[command(subcommand)]
        command: manage::PluginCommand,
        #[command(flatten)]
        server: client::ServerArgs,
    },
    /// Create, inspect, pause, resume and delete pipelines (topic -> transforms -> topic).
    Pipeline {
        #[command(subcommand)]
        command: manage::PipelineCommand,
        #[command(flatten)]
        server: client::ServerArgs,
    },
    /// Delta Lake tables written continuously from a table's topics (on a hub, every edge's).
    Export {
        #[command(subcommand)]
        command: exports::ExportCommand,
        #[command(flatten)]
        server: client::ServerArgs,
    },
    /// Create, inspect, pause, resume, restart and delete connectors (source and sink plugins).
    Connector {
        #[command(subcommand)]
        command: connectors::ConnectorCommand,
        #[command(flatten)]
        server: client::ServerArgs,
    },
    /// Link this edge to hubs (`create`, `status`, ...); on a hub, its edges and promotion.
    Link {
        #[command(subcommand)]
        command: links::LinkCommand,
        #[command(flatten)]
        server: client::ServerArgs,
    },
    /// A hub and three edges in this process: generators, a transform, links, and a live
    /// per-edge table from SQL on the hub. Nothing to install; Ctrl-C stops it.
    #[cfg(feature = "hub")]
    Demo(demo::DemoArgs),
    /// One screen of what matters: version, role, uptime, disk use against the budget,
    /// topics, links or edges with their lag, and every failed component with why.
    Status {
        #[command(flatten)]
        args: status::StatusArgs,
        #[command(flatten)]
        server: client::ServerArgs,
    },
    /// Run SQL over the topics (on a hub, table T unites every edge's <edge>.T).
    #[cfg(feature = "hub")]
    Query {
        #[command(flatten)]
        args: query::QueryArgs,
        #[command(flatten)]
        server: client::ServerArgs,
    },
    /// Make, list and revoke bearer tokens (for User:NAME).
    Token {
        #[command(subcommand)]
        command: security::TokenCommand,
        #[command(flatten)]
        server: client::ServerArgs,
    },
    /// Add, list and remove ACLs: who may do what (default: nothing, unless a super-user).
    Acl {
        #[command(subcommand)]
        command: security::AclCommand,
        #[command(flatten)]
        server: client::ServerArgs,
    },
    /// Make, list and delete users with passwords (for SASL/SCRAM clients and sign-in).
    User {
        #[command(subcommand)]
        command: security::UserCommand,
        #[command(flatten)]
        server: client::ServerArgs,
    },
    /// Set, list and remove quotas: how many bytes and requests a second a principal may use.
    Quota {
        #[command(subcommand)]
        command: security::QuotaCommand,
        #[command(flatten)]
        server: client::ServerArgs,
    },
    /// Make the certificates of cluster links: a CA with a hub certificate, edge certificates.
    #[command(subcommand)]
    Certs(certs::CertsCommand),
    /// Measure this machine: the log against the disk it writes to.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
}

#[derive(Debug, Args)]
struct RunArgs {
    /// TOML configuration file; without it every setting has its default.
    #[arg(long, env = "APPLIANCE_CONFIG")]
    config: Option<PathBuf>,
    /// Directory for topics and metadata (overrides `data-dir` of the file).
    #[arg(long, env = "APPLIANCE_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// When appends are acknowledged: after fsync (default) or once written to the OS.
    #[arg(long, env = "APPLIANCE_DURABILITY", value_enum)]
    durability: Option<DurabilityArg>,
    /// Address of the gRPC API [default: 127.0.0.1:7070].
    #[arg(long, env = "APPLIANCE_GRPC_ADDR")]
    grpc_addr: Option<SocketAddr>,
    /// Address of the Prometheus endpoint [default: 127.0.0.1:9464].
    #[arg(long, env = "APPLIANCE_METRICS_ADDR")]
    metrics_addr: Option<SocketAddr>,
    /// Address of the web console [default: 127.0.0.1:7080].
    #[arg(long, env = "APPLIANCE_CONSOLE_ADDR")]
    console_addr: Option<SocketAddr>,
    /// Address of the Kafka listener [default: 127.0.0.1:9092].
    #[arg(long, env = "APPLIANCE_KAFKA_ADDR")]
    kafka_addr: Option<SocketAddr>,
    /// `hub` accepts links from edges on --link-addr [default: edge].
    #[arg(long, env = "APPLIANCE_ROLE", value_enum)]
    role: Option<RoleArg>,
    /// A hub's UDP endpoint for edges [default: 0.0.0.0:7443].
    #[arg(long, env = "APPLIANCE_LINK_ADDR")]
    link_addr: Option<SocketAddr>,
    /// A hub's certificate (`appliance certs init` writes hub.pem).
    #[arg(long, env = "APPLIANCE_LINK_CERT")]
    link_cert: Option<PathBuf>,
    /// A hub's key (hub.key).
    #[arg(long, env = "APPLIANCE_LINK_KEY")]
    link_key: Option<PathBuf>,
    /// The CA edges' certificates must chain to (ca.pem).
    #[arg(long, env = "APPLIANCE_LINK_CA")]
    link_ca: Option<PathBuf>,
    /// The CA's key (ca.key), on a hub that enrolls edges by join token.
    #[arg(long, env = "APPLIANCE_LINK_CA_KEY")]
    link_ca_key: Option<PathBuf>,
    /// TLS on the gRPC API and metrics: the certificate (`appliance certs server`).
    #[arg(long, env = "APPLIANCE_API_CERT")]
    api_cert: Option<PathBuf>,
    /// Its key.
    #[arg(long, env = "APPLIANCE_API_KEY")]
    api_key: Option<PathBuf>,
    /// Client certificates chaining to this CA authenticate on the gRPC API.
    #[arg(long, env = "APPLIANCE_API_CLIENT_CA")]
    api_client_ca: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum RoleArg {
    Edge,
    Hub,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum DurabilityArg {
    Fsync,
    Os,
}

impl From<DurabilityArg> for Durability {
    fn from(value: DurabilityArg) -> Self {
        match value {
            DurabilityArg::Fsync => Self::Fsync,
            DurabilityArg::Os => Self::Os,
        }
    }
}

/// A failure of a command, with the exit code it maps to.
#[derive(Debug)]
enum Failure {
    Usage(anyhow::Error),
    Runtime(anyhow::Error),
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    // rustls picks its provider by itself only when one crypto backend is built in; delta-rs's
    // HTTP client brings aws-lc-rs beside the ring every TLS endpoint here is built on.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    // The bench prints a table; only warnings may interrupt it.
    init_tracing(match cli.command {
        Command::Run(_) => "info",
        _ => "warn",
    });
    let result = match cli.command {
        Command::Run(args) => run(args),
        Command::Topic { command, server } => {
            client::run(&server, |channel| topics::topic(channel, command))
        }
        Command::Produce { args, server } => {
            client::run(&server, |channel| records::produce(channel, args))
        }
        Command::Consume { args, server } => {
            client::run(&server, |channel| records::consume(channel, args))
        }
        Command::Lookup { args, server } => {
            client::run(&server, |channel| records::lookup(channel, args))
        }
        Command::Group { command, server } => {
            client::run(&server, |channel| groups::group(channel, command))
        }
        Command::Plugin {
            command: manage::PluginCommand::New(args),
            ..
        } => scaffold::run(args),
        Command::Plugin { command, server } => {
            client::run(&server, |channel| manage::plugin(channel, command))
        }
        Command::Pipeline { command, server } => {
            client::run(&server, |channel| manage::pipeline(channel, command))
        }
        Command::Export { command, server } => {
            client::run(&server, |channel| exports::export(channel, command))
        }
        Command::Connector { command, server } => {
            client::run(&server, |channel| connectors::connector(channel, command))
        }
        Command::Link {
            command: links::LinkCommand::Enroll(args),
            ..
        } => links::enroll(args),
        Command::Link { command, server } => {
            client::run(&server, |channel| links::link(channel, command))
        }
        #[cfg(feature = "hub")]
        Command::Demo(args) => demo::run(args).map_err(Failure::Runtime),
        #[cfg(feature = "hub")]
        Command::Query { args, server } => {
            client::run(&server, |channel| query::query(channel, args))
        }
        Command::Status { args, server } => {
            client::run(&server, |channel| status::status_screen(channel, args))
        }
        Command::Token { command, server } => {
            client::run(&server, |channel| security::token(channel, command))
        }
        Command::Acl { command, server } => {
            client::run(&server, |channel| security::acl(channel, command))
        }
        Command::User { command, server } => {
            client::run(&server, |channel| security::user(channel, command))
        }
        Command::Quota { command, server } => {
            client::run(&server, |channel| security::quota(channel, command))
        }
        Command::Certs(command) => certs::run(command),
        Command::Bench(command) => bench::run(command).map_err(Failure::Runtime),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Usage(error)) => {
            eprintln!("error: {}", describe(&error));
            ExitCode::from(2)
        }
        Err(Failure::Runtime(error)) => {
            eprintln!("error: {}", describe(&error));
            ExitCode::from(1)
        }
    }
}

/// The error and its causes on one line, skipping a cause its parent's message already quotes.
fn describe(error: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in error.chain() {
        let message = cause.to_string();
        if !text.contains(&message) {
            if !text.is_empty() {
                text.push_str(": ");
            }
            text.push_str(&message);
        }
    }
    text
}

/// Logs go to stderr, filtered by `APPLIANCE_LOG` (e.g. `debug`, `appliance::log=trace`).
fn init_tracing(default_level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("APPLIANCE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(|| Redacting(std::io::stderr()))
        .init();
}

fn load_config(args: &RunArgs) -> anyhow::Result<Config> {
    let mut config = match &args.config {
        Some(path) => Config::load(path)?,
        None => Config::default(),
    };
    if let Some(dir) = &args.data_dir {
        config.data_dir = dir.clone();
    }
    if let Some(durability) = args.durability {
        config.log.durability = durability.into();
    }
    if let Some(addr) = args.grpc_addr {
        config.api.grpc_addr = addr;
    }
    if let Some(addr) = args.metrics_addr {
        config.api.metrics_addr = addr;
    }
    if let Some(addr) = args.console_addr {
        config.api.console_addr = addr;
    }
    if let Some(addr) = args.kafka_addr {
        config.kafka.addr = addr;
    }
    if let Some(role) = args.role {
        config.link.role = match role {
            RoleArg::Edge => crate::link::Role::Edge,
            RoleArg::Hub => crate::link::Role::Hub,
        };
    }
    if let Some(addr) = args.link_addr {
        config.link.addr = addr;
    }
    for (flag, field) in [
        (&args.link_cert, &mut config.link.cert),
        (&args.link_key, &mut config.link.key),
        (&args.link_ca, &mut config.link.ca),
        (&args.link_ca_key, &mut config.link.ca_key),
        (&args.api_cert, &mut config.api.tls_cert),
        (&args.api_key, &mut config.api.tls_key),
        (&args.api_client_ca, &mut config.api.tls_client_ca),
    ] {
        if let Some(path) = flag {
            *field = Some(path.clone());
        }
    }
    config.validate()?;
    Ok(config)
}

fn run(args: RunArgs) -> Result<(), Failure> {
    let config = load_config(&args).map_err(Failure::Usage)?;
    let runtime = tokio::runtime::Runtime::new()
        .map_err(|e| Failure::Runtime(anyhow::Error::new(e).context("starting the runtime")))?;
    runtime.block_on(async {
        let shutdown = CancellationToken::new();
        let signals = shutdown_on_signal(shutdown.clone()).map_err(Failure::Runtime)?;
        let running = crate::app::start(config, shutdown.clone())
            .await
            .map_err(|e| Failure::Runtime(e.into()))?;
        let service = service::ready(&running, shutdown);
        let result = running.stopped().await;
        signals.abort();
        let _ = service.await;
        result.map_err(|e| Failure::Runtime(e.into()))
    })
}

/// Cancels `shutdown` on the first SIGINT or SIGTERM.
fn shutdown_on_signal(shutdown: CancellationToken) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    Ok(tokio::spawn(async move {
        tokio::select! {
            _ = interrupt.recv() => tracing::info!("SIGINT received"),
            _ = terminate.recv() => tracing::info!("SIGTERM received"),
        }
        shutdown.cancel();
    }))
}

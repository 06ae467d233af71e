//! `appliance certs ...`: certificates made locally (no server): the CA, the hub's link
//! certificate, edges' certificates, and the API's server and client certificates.

use std::path::PathBuf;

use clap::Subcommand;

use super::Failure;
use crate::link::EdgeId;
use crate::security::{Principal, certs};

#[derive(Debug, Subcommand)]
pub enum CertsCommand {
    /// Make a CA and a hub certificate signed by it: DIR/ca.pem, ca.key, hub.pem, hub.key.
    Init {
        #[arg(long)]
        dir: PathBuf,
        /// A DNS name or IP address edges dial the hub at (localhost and 127.0.0.1 always).
        #[arg(long = "san", value_name = "NAME")]
        sans: Vec<String>,
    },
    /// Make an edge's client certificate, signed by the CA in DIR: DIR/EDGE_ID.pem, .key.
    Issue {
        edge_id: String,
        #[arg(long)]
        dir: PathBuf,
    },
    /// Make a server certificate for the gRPC API and the metrics endpoint, signed by the CA
    /// in DIR: DIR/NAME.pem, .key (run the appliance with --api-cert and --api-key).
    Server {
        name: String,
        #[arg(long)]
        dir: PathBuf,
        /// A DNS name or IP address clients reach the API at (localhost and 127.0.0.1 always).
        #[arg(long = "san", value_name = "NAME")]
        sans: Vec<String>,
    },
    /// Make a client certificate for User:NAME (its common name), signed by the CA in DIR:
    /// DIR/NAME.pem, .key.
    Client {
        name: String,
        #[arg(long)]
        dir: PathBuf,
    },
}

pub fn run(command: CertsCommand) -> Result<(), Failure> {
    let runtime = |e: certs::CertError| Failure::Runtime(e.into());
    let written = match command {
        CertsCommand::Init { dir, sans } => {
            let (ca, hub) = certs::init(&dir, &sans).map_err(runtime)?;
            println!(
                "wrote {} and {} (keep the CA key offline once the edges are issued), {} and {}",
                ca.cert.display(),
                ca.key.display(),
                hub.cert.display(),
                hub.key.display()
            );
            return Ok(());
        }
        CertsCommand::Issue { edge_id, dir } => {
            let edge = EdgeId::new(&edge_id).map_err(|e| Failure::Usage(e.into()))?;
            (
                certs::issue_client(&dir, edge.as_str()).map_err(runtime)?,
                format!("edge {edge}"),
            )
        }
        CertsCommand::Server { name, dir, sans } => {
            Principal::user(&name).map_err(|e| Failure::Usage(e.into()))?;
            let written = certs::issue_server(&dir, &name, &sans).map_err(runtime)?;
            (written, "the API server".to_owned())
        }
        CertsCommand::Client { name, dir } => {
            let user = Principal::user(&name).map_err(|e| Failure::Usage(e.into()))?;
            (
                certs::issue_client(&dir, &name).map_err(runtime)?,
                user.to_string(),
            )
        }
    };
    let (files, whom) = written;
    println!(
        "wrote {} and {} for {whom}",
        files.cert.display(),
        files.key.display()
    );
    Ok(())
}

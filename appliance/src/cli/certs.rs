//! `appliance certs ...`: the certificates of cluster links, made locally (no server).

use std::path::PathBuf;

use clap::Subcommand;

use super::Failure;
use crate::link::{EdgeId, certs};

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
}

pub fn run(command: CertsCommand) -> Result<(), Failure> {
    match command {
        CertsCommand::Init { dir, sans } => {
            let (ca, hub) = certs::init(&dir, &sans).map_err(|e| Failure::Runtime(e.into()))?;
            println!(
                "wrote {} and {} (keep the CA key offline once the edges are issued), {} and {}",
                ca.cert.display(),
                ca.key.display(),
                hub.cert.display(),
                hub.key.display()
            );
        }
        CertsCommand::Issue { edge_id, dir } => {
            let edge = EdgeId::new(&edge_id).map_err(|e| Failure::Usage(e.into()))?;
            let written = certs::issue(&dir, &edge).map_err(|e| Failure::Runtime(e.into()))?;
            println!(
                "wrote {} and {} for edge {edge}",
                written.cert.display(),
                written.key.display()
            );
        }
    }
    Ok(())
}

//! The link's certificates: one CA per deployment, a server certificate for the hub, a client
//! certificate per edge, all made with rcgen (ECDSA P-256) so that setting up mutual TLS is two
//! commands and no openssl:
//!
//! ```text
//! appliance certs init --dir D [--san NAME]...   -> D/ca.pem D/ca.key D/hub.pem D/hub.key
//! appliance certs issue EDGE_ID --dir D          -> D/EDGE_ID.pem D/EDGE_ID.key
//! ```
//!
//! The hub certificate names `localhost`, `127.0.0.1` and each `--san` (a DNS name or an IP
//! address) and is for server authentication only; an edge certificate names the edge id as
//! its common name and its only DNS name, and is for client authentication only. Keys are
//! written readable by the owner alone, and nothing is ever overwritten.

use std::io::Write;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};

use super::{EdgeId, LinkError};

pub const CA_CERT: &str = "ca.pem";
pub const CA_KEY: &str = "ca.key";
pub const HUB_CERT: &str = "hub.pem";
pub const HUB_KEY: &str = "hub.key";
/// Certificates are valid this long from the day they are made.
const VALID_DAYS: i64 = 3650;

/// The files `init` or `issue` wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Makes a CA and a hub certificate signed by it in `dir`. Returns the hub's files.
pub fn init(dir: &Path, sans: &[String]) -> Result<(Written, Written), LinkError> {
    let ca = Written {
        cert: dir.join(CA_CERT),
        key: dir.join(CA_KEY),
    };
    let hub = Written {
        cert: dir.join(HUB_CERT),
        key: dir.join(HUB_KEY),
    };
    for path in [&ca.cert, &ca.key, &hub.cert, &hub.key] {
        refuse_existing(path)?;
    }
    std::fs::create_dir_all(dir).map_err(|source| io(dir, source))?;
    let ca_key = generate_key("the CA")?;
    let mut ca_params = params("the CA", Vec::new())?;
    ca_params.distinguished_name = name("appliance link CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca_params
        .self_signed(&ca_key)
        .map_err(|e| failure("the CA", e))?;
    let issuer = Issuer::new(ca_params, ca_key);

    let mut names = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
    for san in sans {
        if !names.contains(san) {
            names.push(san.clone());
        }
    }
    let hub_key = generate_key("the hub")?;
    let mut hub_params = params("the hub", names)?;
    hub_params.distinguished_name = name("appliance hub");
    hub_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let hub_cert = hub_params
        .signed_by(&hub_key, &issuer)
        .map_err(|e| failure("the hub", e))?;

    write_file(&ca.cert, ca_cert.pem().as_bytes(), false)?;
    write_file(&ca.key, issuer.key().serialize_pem().as_bytes(), true)?;
    write_file(&hub.cert, hub_cert.pem().as_bytes(), false)?;
    write_file(&hub.key, hub_key.serialize_pem().as_bytes(), true)?;
    Ok((ca, hub))
}

/// Makes a client certificate for `edge`, signed by the CA in `dir`.
pub fn issue(dir: &Path, edge: &EdgeId) -> Result<Written, LinkError> {
    let written = Written {
        cert: dir.join(format!("{edge}.pem")),
        key: dir.join(format!("{edge}.key")),
    };
    refuse_existing(&written.cert)?;
    refuse_existing(&written.key)?;
    let ca_cert_path = dir.join(CA_CERT);
    let ca_key_path = dir.join(CA_KEY);
    let ca_cert = read_text(&ca_cert_path)?;
    let ca_key = KeyPair::from_pem(&read_text(&ca_key_path)?)
        .map_err(|e| failure(&ca_key_path.display().to_string(), e))?;
    let issuer = Issuer::from_ca_cert_pem(&ca_cert, ca_key)
        .map_err(|e| failure(&ca_cert_path.display().to_string(), e))?;
    let what = format!("edge {edge}");
    let key = generate_key(&what)?;
    let mut params = params(&what, vec![edge.to_string()])?;
    params.distinguished_name = name(edge.as_str());
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let cert = params
        .signed_by(&key, &issuer)
        .map_err(|e| failure(&what, e))?;
    write_file(&written.cert, cert.pem().as_bytes(), false)?;
    write_file(&written.key, key.serialize_pem().as_bytes(), true)?;
    Ok(written)
}

fn params(what: &str, names: Vec<String>) -> Result<CertificateParams, LinkError> {
    let mut params = CertificateParams::new(names).map_err(|e| failure(what, e))?;
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::days(1);
    params.not_after = now + time::Duration::days(VALID_DAYS);
    Ok(params)
}

fn name(common_name: &str) -> DistinguishedName {
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, common_name);
    name
}

fn generate_key(what: &str) -> Result<KeyPair, LinkError> {
    KeyPair::generate().map_err(|e| failure(&format!("a key for {what}"), e))
}

fn failure(what: &str, error: rcgen::Error) -> LinkError {
    LinkError::Certificate {
        what: what.to_owned(),
        reason: error.to_string(),
    }
}

fn io(path: &Path, source: std::io::Error) -> LinkError {
    LinkError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn refuse_existing(path: &Path) -> Result<(), LinkError> {
    if path.exists() {
        return Err(LinkError::Exists {
            path: path.to_path_buf(),
        });
    }
    Ok(())
}

fn read_text(path: &Path) -> Result<String, LinkError> {
    std::fs::read_to_string(path).map_err(|source| io(path, source))
}

/// Writes a new file (never replacing one), readable by the owner alone when it is `secret`.
fn write_file(path: &Path, bytes: &[u8], secret: bool) -> Result<(), LinkError> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(if secret { 0o600 } else { 0o644 })
        .open(path)
        .map_err(|source| io(path, source))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(|source| io(path, source))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use x509_parser::prelude::*;

    use super::*;

    /// Subject common name, subject alternative names, issuer and whether it is a CA.
    fn describe(path: &Path) -> (String, Vec<String>, String, bool) {
        let pem = read_text(path).unwrap();
        let (_, pem) = parse_x509_pem(pem.as_bytes()).unwrap();
        let cert = pem.parse_x509().unwrap();
        let common_name = cert
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .unwrap_or_default()
            .to_owned();
        let names = cert
            .subject_alternative_name()
            .unwrap()
            .map(|ext| {
                ext.value
                    .general_names
                    .iter()
                    .map(|name| match name {
                        GeneralName::DNSName(dns) => dns.to_string(),
                        GeneralName::IPAddress(ip) => format!("{ip:?}"),
                        other => format!("{other:?}"),
                    })
                    .collect()
            })
            .unwrap_or_default();
        (common_name, names, cert.issuer().to_string(), cert.is_ca())
    }

    #[test]
    fn init_makes_a_ca_and_a_hub_certificate_and_issue_signs_edges_with_it() {
        let dir = tempfile::tempdir().unwrap();
        let sans = ["hub.example.net".to_owned(), "10.0.0.5".to_owned()];
        let (ca, hub) = init(dir.path(), &sans).unwrap();
        let (ca_name, _, ca_issuer, ca_is_ca) = describe(&ca.cert);
        assert!(ca_is_ca);
        assert_eq!(ca_issuer, format!("CN={ca_name}"), "self-signed");
        let (_, hub_names, hub_issuer, hub_is_ca) = describe(&hub.cert);
        assert!(!hub_is_ca);
        assert_eq!(hub_issuer, ca_issuer);
        assert_eq!(
            hub_names[..3],
            ["localhost", "[127, 0, 0, 1]", "hub.example.net"]
        );
        assert_eq!(hub_names[3], "[10, 0, 0, 5]");
        let edge = issue(dir.path(), &EdgeId::new("edge-7").unwrap()).unwrap();
        let (edge_name, edge_names, edge_issuer, _) = describe(&edge.cert);
        assert_eq!(edge_name, "edge-7");
        assert_eq!(edge_names, ["edge-7"]);
        assert_eq!(edge_issuer, ca_issuer);
        for key in [&ca.key, &hub.key, &edge.key] {
            let mode = std::fs::metadata(key).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{}", key.display());
        }
    }

    #[test]
    fn nothing_is_overwritten_and_issuing_needs_the_ca() {
        let dir = tempfile::tempdir().unwrap();
        let edge = EdgeId::new("edge-1").unwrap();
        let missing = issue(dir.path(), &edge).unwrap_err().to_string();
        assert!(missing.contains("ca.pem"), "{missing}");
        init(dir.path(), &[]).unwrap();
        let again = init(dir.path(), &[]).unwrap_err().to_string();
        assert!(again.contains("exists already"), "{again}");
        issue(dir.path(), &edge).unwrap();
        let twice = issue(dir.path(), &edge).unwrap_err().to_string();
        assert!(twice.contains("edge-1.pem exists already"), "{twice}");
    }
}

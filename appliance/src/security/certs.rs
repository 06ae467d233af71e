//! Certificates: one CA per deployment, a server certificate for the hub's link endpoint and
//! for each API endpoint, a client certificate per edge and per user, all made with rcgen
//! (ECDSA P-256) so that setting up mutual TLS takes a few commands and no openssl:
//!
//! ```text
//! appliance certs init --dir D [--san NAME]...          -> D/ca.pem D/ca.key D/hub.pem D/hub.key
//! appliance certs issue EDGE_ID --dir D                 -> D/EDGE_ID.pem D/EDGE_ID.key
//! appliance certs server NAME --dir D [--san NAME]...   -> D/NAME.pem D/NAME.key (an API's)
//! appliance certs client NAME --dir D                   -> D/NAME.pem D/NAME.key (User:NAME)
//! ```
//!
//! A server certificate names `localhost`, `127.0.0.1` and each `--san` (a DNS name or an IP
//! address) and is for server authentication only; a client certificate names its edge id or
//! user name as its common name and its only DNS name, and is for client authentication only.
//! Keys are written readable by the owner alone, and nothing is ever overwritten.

use std::io::Write;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};
use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// Why certificates could not be made.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} exists already; certificates and keys are never overwritten (move it away first)", path.display())]
    Exists { path: PathBuf },
    #[error("{what}: {reason}")]
    Certificate { what: String, reason: String },
}

pub const CA_CERT: &str = "ca.pem";
pub const CA_KEY: &str = "ca.key";
pub const HUB_CERT: &str = "hub.pem";
pub const HUB_KEY: &str = "hub.key";
/// Certificates are valid this long from the day they are made.
const VALID_DAYS: i64 = 3650;
/// Certificates are valid from this long before they are made, for peers whose clocks lag.
const BACKDATED_SECONDS: i64 = 86_400;

/// The files `init` or `issue` wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Makes a CA and a hub certificate signed by it in `dir`. Returns the hub's files.
pub fn init(dir: &Path, sans: &[String]) -> Result<(Written, Written), CertError> {
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

    write_file(&ca.cert, ca_cert.pem().as_bytes(), false)?;
    write_file(&ca.key, issuer.key().serialize_pem().as_bytes(), true)?;
    issue(dir, "hub", &issuer, Usage::Server { sans })?;
    Ok((ca, hub))
}

/// What a certificate is for.
enum Usage<'a> {
    /// A server's: it names localhost, 127.0.0.1 and these names.
    Server { sans: &'a [String] },
    /// A client's: its one name is the common name.
    Client,
}

/// Makes a server certificate `NAME.pem` for an API endpoint, signed by the CA in `dir`.
pub fn issue_server(dir: &Path, name: &str, sans: &[String]) -> Result<Written, CertError> {
    issue(dir, name, &ca_issuer(dir)?, Usage::Server { sans })
}

/// Makes a client certificate `NAME.pem` whose common name is `name` (an edge id or a user
/// name), signed by the CA in `dir`.
pub fn issue_client(dir: &Path, name: &str) -> Result<Written, CertError> {
    issue(dir, name, &ca_issuer(dir)?, Usage::Client)
}

fn ca_issuer(dir: &Path) -> Result<Issuer<'static, KeyPair>, CertError> {
    CaFiles {
        cert: dir.join(CA_CERT),
        key: dir.join(CA_KEY),
    }
    .issuer()
}

/// A CA's certificate and key, which sign what a hub enrolls.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl CaFiles {
    fn issuer(&self) -> Result<Issuer<'static, KeyPair>, CertError> {
        let ca_cert = self.cert_pem()?;
        let ca_key = KeyPair::from_pem(&read_text(&self.key)?)
            .map_err(|e| failure(&self.key.display().to_string(), e))?;
        Issuer::from_ca_cert_pem(&ca_cert, ca_key)
            .map_err(|e| failure(&self.cert.display().to_string(), e))
    }

    pub fn cert_pem(&self) -> Result<String, CertError> {
        read_text(&self.cert)
    }
}

/// A key made here and a certificate request for it (DER): what an enrolling edge sends.
/// Returns the key as PEM.
pub fn edge_request() -> Result<(String, Vec<u8>), CertError> {
    let key = generate_key("the edge")?;
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    let request = params
        .serialize_request(&key)
        .map_err(|e| failure("the certificate request", e))?;
    Ok((key.serialize_pem(), request.der().to_vec()))
}

/// Signs an edge certificate for `edge` with the public key of `request` (whose signature
/// must hold); nothing else of the request is taken. Returns the certificate as PEM.
pub fn sign_edge_request(ca: &CaFiles, edge: &str, request: &[u8]) -> Result<String, CertError> {
    let what = format!("the certificate of {edge}");
    let request = CertificateSigningRequestParams::from_der(&request.to_vec().into())
        .map_err(|e| failure("the certificate request", e))?;
    let cert = client_params(&what, edge)?
        .signed_by(&request.public_key, &ca.issuer()?)
        .map_err(|e| failure(&what, e))?;
    Ok(cert.pem())
}

/// The files an enrollment wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Enrolled {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Writes an enrolled edge's files into `dir`: `EDGE.pem`, `EDGE.key` (0600) and `ca.pem`,
/// refusing to replace any.
pub fn write_enrolled(
    dir: &Path,
    edge: &str,
    cert_pem: &str,
    key_pem: &str,
    ca_pem: &str,
) -> Result<Enrolled, CertError> {
    let written = Enrolled {
        ca: dir.join(CA_CERT),
        cert: dir.join(format!("{edge}.pem")),
        key: dir.join(format!("{edge}.key")),
    };
    for path in [&written.ca, &written.cert, &written.key] {
        refuse_existing(path)?;
    }
    std::fs::create_dir_all(dir).map_err(|source| io(dir, source))?;
    write_file(&written.ca, ca_pem.as_bytes(), false)?;
    write_file(&written.cert, cert_pem.as_bytes(), false)?;
    write_file(&written.key, key_pem.as_bytes(), true)?;
    Ok(written)
}

fn issue(
    dir: &Path,
    file_name: &str,
    issuer: &Issuer<'_, KeyPair>,
    usage: Usage<'_>,
) -> Result<Written, CertError> {
    let written = Written {
        cert: dir.join(format!("{file_name}.pem")),
        key: dir.join(format!("{file_name}.key")),
    };
    refuse_existing(&written.cert)?;
    refuse_existing(&written.key)?;
    let what = format!("the certificate {file_name}");
    let key = generate_key(&what)?;
    let params = match usage {
        Usage::Server { sans } => {
            let mut names = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
            for san in sans {
                if !names.contains(san) {
                    names.push(san.clone());
                }
            }
            let mut params = params(&what, names)?;
            params.distinguished_name = name(&format!("appliance {file_name}"));
            params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
            params
        }
        Usage::Client => client_params(&what, file_name)?,
    };
    let cert = params
        .signed_by(&key, issuer)
        .map_err(|e| failure(&what, e))?;
    write_file(&written.cert, cert.pem().as_bytes(), false)?;
    write_file(&written.key, key.serialize_pem().as_bytes(), true)?;
    Ok(written)
}

/// The certificates of a PEM file, leaf first.
pub fn read_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, CertError> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| unusable(path, e))?;
    if certs.is_empty() {
        return Err(unusable(path, "no certificate in the file"));
    }
    Ok(certs)
}

/// When a certificate of this CA was made (Unix seconds), from its `notBefore`.
pub fn issued_unix_s(cert: &CertificateDer<'_>) -> Option<i64> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert).ok()?;
    Some(cert.validity().not_before.timestamp() + BACKDATED_SECONDS)
}

/// The private key of a PEM file.
pub fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, CertError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| unusable(path, e))
}

/// The certificates of a PEM file as trust anchors.
pub fn read_roots(path: &Path) -> Result<RootCertStore, CertError> {
    let mut roots = RootCertStore::empty();
    for cert in read_chain(path)? {
        roots.add(cert).map_err(|e| unusable(path, e))?;
    }
    Ok(roots)
}

/// A file that cannot serve as what it was given for.
pub fn unusable(path: &Path, error: impl std::fmt::Display) -> CertError {
    CertError::Certificate {
        what: path.display().to_string(),
        reason: error.to_string(),
    }
}

/// A client certificate's: its one name, `name`, is also its common name.
fn client_params(what: &str, common_name: &str) -> Result<CertificateParams, CertError> {
    let mut params = params(what, vec![common_name.to_owned()])?;
    params.distinguished_name = name(common_name);
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    Ok(params)
}

fn params(what: &str, names: Vec<String>) -> Result<CertificateParams, CertError> {
    let mut params = CertificateParams::new(names).map_err(|e| failure(what, e))?;
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::seconds(BACKDATED_SECONDS);
    params.not_after = now + time::Duration::days(VALID_DAYS);
    Ok(params)
}

fn name(common_name: &str) -> DistinguishedName {
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, common_name);
    name
}

fn generate_key(what: &str) -> Result<KeyPair, CertError> {
    KeyPair::generate().map_err(|e| failure(&format!("a key for {what}"), e))
}

fn failure(what: &str, error: rcgen::Error) -> CertError {
    CertError::Certificate {
        what: what.to_owned(),
        reason: error.to_string(),
    }
}

fn io(path: &Path, source: std::io::Error) -> CertError {
    CertError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn refuse_existing(path: &Path) -> Result<(), CertError> {
    if path.exists() {
        return Err(CertError::Exists {
            path: path.to_path_buf(),
        });
    }
    Ok(())
}

fn read_text(path: &Path) -> Result<String, CertError> {
    std::fs::read_to_string(path).map_err(|source| io(path, source))
}

/// Writes a new file (never replacing one), readable by the owner alone when it is `secret`.
fn write_file(path: &Path, bytes: &[u8], secret: bool) -> Result<(), CertError> {
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
        let edge = issue_client(dir.path(), "edge-7").unwrap();
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
    fn an_enrolling_edge_gets_the_name_its_token_gives_and_a_tampered_request_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let (ca, _) = init(dir.path(), &[]).unwrap();
        let ca = CaFiles {
            cert: ca.cert,
            key: ca.key,
        };
        let (key, request) = edge_request().unwrap();
        let signed = sign_edge_request(&ca, "plant-9", &request).unwrap();
        let written = write_enrolled(
            &dir.path().join("edge"),
            "plant-9",
            &signed,
            &key,
            &ca.cert_pem().unwrap(),
        )
        .unwrap();
        let (common_name, names, issuer, is_ca) = describe(&written.cert);
        assert_eq!(
            (common_name.as_str(), names.as_slice()),
            ("plant-9", &["plant-9".to_owned()][..])
        );
        assert_eq!(issuer, describe(&ca.cert).2);
        assert!(!is_ca);
        let again = write_enrolled(&dir.path().join("edge"), "plant-9", &signed, &key, "");
        assert!(again.unwrap_err().to_string().contains("exists already"));

        let mut tampered = request.clone();
        let last = tampered.len() - 1;
        tampered[last] ^= 1;
        assert!(sign_edge_request(&ca, "plant-9", &tampered).is_err());
        assert!(sign_edge_request(&ca, "plant-9", b"not a request").is_err());
    }

    #[test]
    fn nothing_is_overwritten_and_issuing_needs_the_ca() {
        let dir = tempfile::tempdir().unwrap();
        let edge = "edge-1";
        let missing = issue_client(dir.path(), edge).unwrap_err().to_string();
        assert!(missing.contains("ca.pem"), "{missing}");
        init(dir.path(), &[]).unwrap();
        let again = init(dir.path(), &[]).unwrap_err().to_string();
        assert!(again.contains("exists already"), "{again}");
        issue_client(dir.path(), edge).unwrap();
        let twice = issue_client(dir.path(), edge).unwrap_err().to_string();
        assert!(twice.contains("edge-1.pem exists already"), "{twice}");
    }
}

//! The cluster's PKI: one CA signs every node's certificate, and every link between nodes
//! is mutual TLS against that CA only. A node's id is written into its certificate (a URI
//! SAN `tern://node/<id>`, and the CN `tern-node-<id>` as a fallback) so that a peer can
//! read it back after the handshake and compare it with what the peer claims in its
//! `Hello`: a stolen or misconfigured certificate cannot speak for another node.
//!
//! Every node certificate also carries the DNS name [`CLUSTER_SERVER_NAME`]: the dialler
//! always asks for that name, because the node id, not the host name, is what identifies
//! a peer (pods move, addresses change). The id is checked by the transport itself.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Once};
use std::time::{SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;

use crate::types::NodeId;

/// ALPN of the node-to-node protocol; a QUIC client that does not offer it is refused.
pub const ALPN: &[u8] = b"tern-cluster/1";
/// The server name every dialler asks for; present in every node certificate.
pub const CLUSTER_SERVER_NAME: &str = "cluster.tern.internal";
const NODE_URI_PREFIX: &str = "tern://node/";
const NODE_CN_PREFIX: &str = "tern-node-";
const CA_COMMON_NAME: &str = "Tern cluster CA";
const CA_VALID_YEARS: i32 = 10;
const NODE_VALID_YEARS: i32 = 5;

/// What can go wrong building or loading the cluster's certificates.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("certificate generation: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} already exists; refusing to overwrite it (force to replace)")]
    Exists { path: PathBuf },
    #[error("{what}: {reason}")]
    Pem { what: String, reason: String },
    #[error("certificate carries no tern node id (URI SAN {NODE_URI_PREFIX}<id> or CN {NODE_CN_PREFIX}<id>)")]
    NoNodeId,
    #[error("certificate: {0}")]
    Certificate(String),
    #[error("TLS configuration: {0}")]
    Config(String),
}

/// The cluster CA, PEM encoded. The key signs node certificates; keep it out of the
/// nodes in production (only `tern cert` needs it).
#[derive(Clone, Debug)]
pub struct CaBundle {
    pub cert_pem: String,
    pub key_pem: String,
}

/// One node's certificate and private key, PEM encoded.
#[derive(Clone, Debug)]
pub struct NodeCert {
    pub cert_pem: String,
    pub key_pem: String,
}

/// Installs ring as rustls's process-wide crypto provider, once. Harmless if something
/// else installed ring already; the configs below name their provider explicitly anyway,
/// so a second provider in the process cannot make them panic.
pub fn install_crypto_provider() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // Err means a provider is already installed: that is fine.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The current calendar year, roughly; certificate validity only needs the year.
fn this_year() -> i32 {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    1970 + i32::try_from(secs / 31_556_952).unwrap_or(0)
}

/// Generates a fresh self-signed cluster CA (ECDSA P-256), valid for ten years.
pub fn generate_ca() -> Result<CaBundle, TlsError> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    params
        .distinguished_name
        .push(DnType::CommonName, CA_COMMON_NAME);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let year = this_year();
    params.not_before = rcgen::date_time_ymd(year - 1, 1, 1);
    params.not_after = rcgen::date_time_ymd(year + CA_VALID_YEARS, 1, 1);
    let cert = params.self_signed(&key)?;
    Ok(CaBundle {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// Issues a certificate for `node_id`, signed by `ca`. `sans` are extra DNS names or IP
/// addresses (e.g. the pod's stable name); they are informational, since peers identify
/// each other by node id.
pub fn issue_node_cert(
    ca: &CaBundle,
    node_id: NodeId,
    sans: &[String],
) -> Result<NodeCert, TlsError> {
    let ca_key = KeyPair::from_pem(&ca.key_pem)?;
    let issuer = Issuer::from_ca_cert_pem(&ca.cert_pem, ca_key)?;

    let mut names = vec![CLUSTER_SERVER_NAME.to_string()];
    names.extend(sans.iter().filter(|s| *s != CLUSTER_SERVER_NAME).cloned());
    let mut params = CertificateParams::new(names)?;
    let uri = format!("{NODE_URI_PREFIX}{node_id}");
    params
        .subject_alt_names
        .push(SanType::URI(uri.as_str().try_into()?));
    params
        .distinguished_name
        .push(DnType::CommonName, format!("{NODE_CN_PREFIX}{node_id}"));
    params.is_ca = IsCa::NoCa;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    // Every node is both a server and a client of its peers.
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    let year = this_year();
    params.not_before = rcgen::date_time_ymd(year - 1, 1, 1);
    params.not_after = rcgen::date_time_ymd(year + NODE_VALID_YEARS, 1, 1);

    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &issuer)?;
    Ok(NodeCert {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// Reads the node id a certificate (DER) was issued for.
pub fn node_id_from_cert(der: &[u8]) -> Result<NodeId, TlsError> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| TlsError::Certificate(e.to_string()))?;
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            if let x509_parser::extensions::GeneralName::URI(uri) = name {
                if let Some(id) = uri.strip_prefix(NODE_URI_PREFIX) {
                    return id.parse().map_err(|_| TlsError::NoNodeId);
                }
            }
        }
    }
    for cn in cert.subject().iter_common_name() {
        if let Some(id) = cn
            .as_str()
            .ok()
            .and_then(|s| s.strip_prefix(NODE_CN_PREFIX))
        {
            return id.parse().map_err(|_| TlsError::NoNodeId);
        }
    }
    Err(TlsError::NoNodeId)
}

/// The node id in the certificate a QUIC peer presented during the handshake.
pub fn peer_node_id(conn: &quinn::Connection) -> Result<NodeId, TlsError> {
    let identity = conn
        .peer_identity()
        .ok_or_else(|| TlsError::Certificate("peer presented no certificate".into()))?;
    let chain = identity
        .downcast::<Vec<CertificateDer<'static>>>()
        .map_err(|_| TlsError::Certificate("unexpected peer identity type".into()))?;
    let leaf = chain
        .first()
        .ok_or_else(|| TlsError::Certificate("empty peer certificate chain".into()))?;
    node_id_from_cert(leaf)
}

/// Writes a CA and one certificate per node into `dir` for a local or test cluster
/// (`tern cert`): `ca.pem`, `ca.key`, `node-<id>.pem`, `node-<id>.key`. Keys are written
/// with mode 0600. Without `force`, nothing is written if any of the files exists.
/// Returns the paths written.
pub fn write_local_cluster_certs(
    dir: &Path,
    node_ids: &[NodeId],
    force: bool,
) -> Result<Vec<PathBuf>, TlsError> {
    let mut files: Vec<(PathBuf, String, bool)> = Vec::new();
    let ca = generate_ca()?;
    let sans = vec!["localhost".to_string(), "127.0.0.1".to_string()];
    files.push((dir.join("ca.pem"), ca.cert_pem.clone(), false));
    files.push((dir.join("ca.key"), ca.key_pem.clone(), true));
    for &id in node_ids {
        let node = issue_node_cert(&ca, id, &sans)?;
        files.push((dir.join(format!("node-{id}.pem")), node.cert_pem, false));
        files.push((dir.join(format!("node-{id}.key")), node.key_pem, true));
    }
    if !force {
        if let Some((path, _, _)) = files.iter().find(|(p, _, _)| p.exists()) {
            return Err(TlsError::Exists { path: path.clone() });
        }
    }
    fs::create_dir_all(dir).map_err(|source| TlsError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    for (path, contents, secret) in &files {
        write_file(path, contents, *secret, force).map_err(|source| TlsError::Io {
            path: path.clone(),
            source,
        })?;
    }
    Ok(files.into_iter().map(|(p, _, _)| p).collect())
}

fn write_file(path: &Path, contents: &str, secret: bool, force: bool) -> std::io::Result<()> {
    let mut options = OpenOptions::new();
    options.write(true);
    if force {
        options.create(true).truncate(true);
    } else {
        options.create_new(true);
    }
    #[cfg(unix)]
    if secret {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    #[cfg(unix)]
    if secret {
        // An existing file keeps its old mode when overwritten: tighten it explicitly.
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(fs::Permissions::from_mode(0o600))?;
    }
    #[cfg(not(unix))]
    let _ = secret;
    file.write_all(contents.as_bytes())?;
    file.sync_all()
}

/// A node's TLS material: the cluster CA to trust, and the node's own chain and key.
/// Builds the rustls configs of both directions of a link.
#[derive(Debug)]
pub struct TlsIdentity {
    ca_certs: Vec<CertificateDer<'static>>,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    node_id: NodeId,
}

impl Clone for TlsIdentity {
    fn clone(&self) -> Self {
        Self {
            ca_certs: self.ca_certs.clone(),
            chain: self.chain.clone(),
            key: self.key.clone_key(),
            node_id: self.node_id,
        }
    }
}

impl TlsIdentity {
    /// From PEM text: the CA certificate(s), the node's certificate (chain) and its key.
    pub fn from_pem(ca_pem: &str, cert_pem: &str, key_pem: &str) -> Result<Self, TlsError> {
        let pem_err = |what: &str| {
            let what = what.to_string();
            move |e: rustls::pki_types::pem::Error| TlsError::Pem {
                what: what.clone(),
                reason: e.to_string(),
            }
        };
        let ca_certs = CertificateDer::pem_slice_iter(ca_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(pem_err("CA certificate"))?;
        let chain = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(pem_err("node certificate"))?;
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(pem_err("node key"))?;
        let missing = |what: &str| TlsError::Pem {
            what: what.into(),
            reason: "no certificate found".into(),
        };
        if ca_certs.is_empty() {
            return Err(missing("CA certificate"));
        }
        let leaf = chain.first().ok_or_else(|| missing("node certificate"))?;
        let node_id = node_id_from_cert(leaf)?;
        Ok(Self {
            ca_certs,
            chain,
            key,
            node_id,
        })
    }

    /// From PEM files (in production: a mounted Kubernetes secret).
    pub fn from_files(ca: &Path, cert: &Path, key: &Path) -> Result<Self, TlsError> {
        let read = |path: &Path| {
            fs::read_to_string(path).map_err(|source| TlsError::Io {
                path: path.to_path_buf(),
                source,
            })
        };
        Self::from_pem(&read(ca)?, &read(cert)?, &read(key)?)
    }

    /// From freshly generated material (tests, `tern cert`).
    pub fn from_bundle(ca: &CaBundle, node: &NodeCert) -> Result<Self, TlsError> {
        Self::from_pem(&ca.cert_pem, &node.cert_pem, &node.key_pem)
    }

    /// The node id written in this node's own certificate.
    pub fn node_id(&self) -> NodeId {
        self.node_id
    }

    fn roots(&self) -> Result<Arc<RootCertStore>, TlsError> {
        let mut roots = RootCertStore::empty();
        for ca in &self.ca_certs {
            roots
                .add(ca.clone())
                .map_err(|e| TlsError::Config(format!("CA certificate: {e}")))?;
        }
        Ok(Arc::new(roots))
    }

    /// The accepting side: TLS 1.3 only (QUIC), client certificates required and checked
    /// against the cluster CA.
    pub fn server_config(&self) -> Result<rustls::ServerConfig, TlsError> {
        let verifier = WebPkiClientVerifier::builder_with_provider(self.roots()?, provider())
            .build()
            .map_err(|e| TlsError::Config(e.to_string()))?;
        let mut config = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| TlsError::Config(e.to_string()))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(self.chain.clone(), self.key.clone_key())
            .map_err(|e| TlsError::Config(e.to_string()))?;
        config.alpn_protocols = vec![ALPN.to_vec()];
        Ok(config)
    }

    /// The dialling side: trusts only the cluster CA and presents this node's certificate.
    pub fn client_config(&self) -> Result<rustls::ClientConfig, TlsError> {
        let roots = Arc::unwrap_or_clone(self.roots()?);
        let mut config = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| TlsError::Config(e.to_string()))?
            .with_root_certificates(roots)
            .with_client_auth_cert(self.chain.clone(), self.key.clone_key())
            .map_err(|e| TlsError::Config(e.to_string()))?;
        config.alpn_protocols = vec![ALPN.to_vec()];
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_id_round_trips_through_the_certificate() {
        let ca = generate_ca().expect("ca");
        let node = issue_node_cert(&ca, 42, &["tern-2.tern-headless".into()]).expect("node");
        let id = TlsIdentity::from_bundle(&ca, &node).expect("identity");
        assert_eq!(id.node_id(), 42);
        install_crypto_provider();
        id.server_config().expect("server config");
        id.client_config().expect("client config");
    }

    #[test]
    fn garbage_pem_is_an_error() {
        let ca = generate_ca().expect("ca");
        assert!(TlsIdentity::from_pem(&ca.cert_pem, "nothing", "nothing").is_err());
        assert!(TlsIdentity::from_pem("", &ca.cert_pem, &ca.key_pem).is_err());
        // The CA itself carries no node id.
        assert!(matches!(
            TlsIdentity::from_pem(&ca.cert_pem, &ca.cert_pem, &ca.key_pem),
            Err(TlsError::NoNodeId)
        ));
    }

    #[test]
    fn local_certs_are_written_once_and_keys_are_private() {
        let dir = std::env::temp_dir().join(format!(
            "tern-certs-{}-{}",
            std::process::id(),
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos())
        ));
        let written = write_local_cluster_certs(&dir, &[0, 1], false).expect("write");
        assert_eq!(written.len(), 6);
        let again = write_local_cluster_certs(&dir, &[0, 1], false);
        assert!(matches!(again, Err(TlsError::Exists { .. })), "{again:?}");
        write_local_cluster_certs(&dir, &[0, 1], true).expect("forced");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(dir.join("node-1.key"))
                .expect("key")
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let id = TlsIdentity::from_files(
            &dir.join("ca.pem"),
            &dir.join("node-1.pem"),
            &dir.join("node-1.key"),
        )
        .expect("load");
        assert_eq!(id.node_id(), 1);
        let _ = fs::remove_dir_all(&dir);
    }
}

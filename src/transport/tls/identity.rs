//! The server's persistent TLS identity (also a client's, when it presents
//! one): a self-signed certificate and its key under `STATE_DIR/tls/`,
//! created on first use, and the acceptor that presents it.

use super::fingerprint::fingerprint_of;
use super::verify::AnyClientCert;
use super::{provider, TlsError, CERT_NAME};
use fs4::fs_std::FileExt;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use tokio_rustls::TlsAcceptor;

/// Directory of the identity inside the state directory.
const IDENTITY_DIR: &str = "tls";
const CERT_FILE: &str = "server.crt.der";
const KEY_FILE: &str = "server.key.der";

/// A certificate (DER), its private key (PKCS#8 DER) and the certificate's
/// fingerprint ([`fingerprint_of`]).
#[derive(Clone)]
pub struct ServerIdentity {
    pub cert_der: Vec<u8>,
    pub key_der: Vec<u8>,
    pub fingerprint: String,
}

impl std::fmt::Debug for ServerIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the key.
        f.debug_struct("ServerIdentity")
            .field("fingerprint", &self.fingerprint)
            .finish_non_exhaustive()
    }
}

fn read_optional(path: &Path) -> Result<Option<Vec<u8>>, String> {
    match std::fs::read(path) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("cannot read {}: {e}", path.display())),
    }
}

/// Writes `data` to `path` through a temporary file and a rename, so `path`
/// is either absent or complete. `private` files get mode 0600 on unix.
fn write_atomically(path: &Path, data: &[u8], private: bool) -> Result<(), String> {
    let tmp = path.with_extension("tmp");
    let err = |e: std::io::Error| format!("cannot write {}: {e}", path.display());
    // A leftover temporary file would keep its old mode: start afresh.
    let _ = std::fs::remove_file(&tmp);
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    if private {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    #[cfg(not(unix))]
    let _ = private;
    let mut f = opts.open(&tmp).map_err(err)?;
    f.write_all(data).map_err(err)?;
    f.sync_all().map_err(err)?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(err)?;
    if let Some(dir) = path.parent() {
        // Make the rename durable where directories can be synced.
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}

fn generate_identity() -> Result<ServerIdentity, String> {
    let err = |e: rcgen::Error| format!("cannot generate a TLS certificate: {e}");
    let key = rcgen::KeyPair::generate().map_err(err)?;
    let mut params = rcgen::CertificateParams::new(vec![CERT_NAME.to_string()]).map_err(err)?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, CERT_NAME);
    // Validity: rcgen's defaults (1975 to 4096); clients pin the
    // fingerprint and do not look at dates.
    let cert = params.self_signed(&key).map_err(err)?;
    let cert_der = cert.der().to_vec();
    Ok(ServerIdentity {
        fingerprint: fingerprint_of(&cert_der),
        cert_der,
        key_der: key.serialize_der(),
    })
}

/// Checks that the key loads and belongs to the certificate.
fn check_identity(id: &ServerIdentity, cert_path: &Path, key_path: &Path) -> Result<(), String> {
    rustls::sign::CertifiedKey::from_der(
        vec![CertificateDer::from(id.cert_der.clone())],
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(id.key_der.clone())),
        &provider(),
    )
    .map(|_| ())
    .map_err(|e| {
        format!(
            "the TLS identity in {} and {} is unusable ({e}); delete both files to create a new one \
             (clients that trusted the old certificate will then refuse the server until told the new fingerprint)",
            cert_path.display(),
            key_path.display()
        )
    })
}

/// Loads the server's TLS identity from `state_dir/tls/`, creating it on
/// first use (self-signed certificate for "replica", ECDSA P-256 key; the
/// key file is private to the owner on unix).
pub fn load_or_create_identity(state_dir: &Path) -> Result<ServerIdentity, TlsError> {
    load_or_create(state_dir).map_err(TlsError::Identity)
}

fn load_or_create(state_dir: &Path) -> Result<ServerIdentity, String> {
    let dir = state_dir.join(IDENTITY_DIR);
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder
        .create(&dir)
        .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;

    // Two servers starting at once must not each write half an identity.
    let lock_path = dir.join(".lock");
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| format!("cannot open {}: {e}", lock_path.display()))?;
    lock.lock_exclusive()
        .map_err(|e| format!("cannot lock {}: {e}", lock_path.display()))?;

    let cert_path = dir.join(CERT_FILE);
    let key_path = dir.join(KEY_FILE);
    let id = match (read_optional(&cert_path)?, read_optional(&key_path)?) {
        (Some(cert_der), Some(key_der)) => ServerIdentity { fingerprint: fingerprint_of(&cert_der), cert_der, key_der },
        (Some(_), None) => {
            return Err(format!(
                "{} exists but its private key {} is missing; restore the key, or delete {} to create a new identity \
                 (clients that trusted the old certificate will then refuse the server until told the new fingerprint)",
                cert_path.display(),
                key_path.display(),
                cert_path.display()
            ))
        }
        // No certificate (a key alone is a creation that did not finish):
        // nobody can have trusted it yet, so start over.
        (None, _) => {
            let id = generate_identity()?;
            // Key first: a certificate on disk always has its key.
            write_atomically(&key_path, &id.key_der, true)?;
            write_atomically(&cert_path, &id.cert_der, false)?;
            id
        }
    };
    check_identity(&id, &cert_path, &key_path)?;
    Ok(id)
}

/// A TLS 1.3 acceptor presenting `id`. Build it once per server.
pub fn acceptor(id: &ServerIdentity) -> Result<TlsAcceptor, TlsError> {
    let provider = provider();
    let algs = provider.signature_verification_algorithms;
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError::Identity(format!("TLS setup failed: {e}")))?
        .with_client_cert_verifier(Arc::new(AnyClientCert { algs }))
        .with_single_cert(
            vec![CertificateDer::from(id.cert_der.clone())],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(id.key_der.clone())),
        )
        .map_err(|e| TlsError::Identity(format!("the server's TLS identity is unusable: {e}")))?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

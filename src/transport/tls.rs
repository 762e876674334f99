//! TLS for connections.
//!
//! The server has one persistent self-signed identity (certificate and key
//! under `STATE_DIR/tls/`). Clients do not use CA chains or host names:
//! they trust a server by the BLAKE3 fingerprint of its certificate, either
//! given explicitly ([`Pin::Exact`]) or trusted on first use and remembered
//! in a known-hosts file ([`Pin::TrustOnFirstUse`]). The handshake
//! signatures are verified for real, so a peer must hold the private key of
//! the certificate it presents. TLS 1.3 only.
//!
//! TLS goes on top of the byte-counted stream, so the counters see the bytes
//! that really cross the wire.
//!
//! The server asks for, but does not require, a client certificate; when a
//! client presents one, [`accept_tls`] returns its fingerprint.

use super::connection::BoxStream;
use fs4::fs_std::FileExt;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{
    verify_tls12_signature, verify_tls13_signature, CryptoProvider, WebPkiSupportedAlgorithms,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, SignatureScheme};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio_rustls::{TlsAcceptor, TlsConnector};

/// Time a peer has to complete the TLS handshake.
pub const TLS_HANDSHAKE_LIMIT: Duration = Duration::from_secs(20);

/// Directory of the identity inside the state directory.
const IDENTITY_DIR: &str = "tls";
const CERT_FILE: &str = "server.crt.der";
const KEY_FILE: &str = "server.key.der";
/// Subject alternative name (and common name) of generated certificates.
const CERT_NAME: &str = "replica";
const FINGERPRINT_PREFIX: &str = "blake3:";

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

/// Errors of a TLS handshake; each renders as one line a user can act on.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error(
        "the server at {host} presented certificate {presented} but {known} was trusted before; \
         if the server's key was legitimately replaced, remove the line for {host} from {path} \
         or pass --fingerprint {presented}",
        path = .known_hosts.display()
    )]
    FingerprintChanged {
        host: String,
        known: String,
        presented: String,
        known_hosts: PathBuf,
    },
    #[error(
        "the server presented certificate {presented}, not {expected} as given by --fingerprint; \
         check that this is the right server and compare with the fingerprint it reports"
    )]
    FingerprintMismatch { expected: String, presented: String },
    #[error("--fingerprint {given:?}: {reason} (expected blake3: followed by 64 hex digits)")]
    InvalidFingerprint { given: String, reason: String },
    #[error("known-hosts file {path}: {reason}", path = .path.display())]
    KnownHosts { path: PathBuf, reason: String },
    #[error("{0}")]
    Handshake(String),
}

/// Fingerprint of a DER certificate: `blake3:` and 64 lowercase hex digits.
pub fn fingerprint_of(cert_der: &[u8]) -> String {
    format!("{FINGERPRINT_PREFIX}{}", blake3::hash(cert_der).to_hex())
}

/// Parses a fingerprint as a user may write it (any case, optional
/// `blake3:` prefix, `:` and white space between digits ignored) into the
/// form [`fingerprint_of`] prints. The error says what is wrong.
pub fn normalize_fingerprint(s: &str) -> Result<String, String> {
    let s = s.trim();
    let body = match s.split_once(':') {
        // A label is a leading segment that is not hex (hex pairs may also be
        // separated by ':').
        Some((label, rest))
            if !label.is_empty() && !label.chars().all(|c| c.is_ascii_hexdigit()) =>
        {
            if !label.eq_ignore_ascii_case("blake3") {
                return Err(format!(
                    "{label} fingerprints are not supported, only blake3"
                ));
            }
            rest
        }
        _ => s,
    };
    let hex: String = body
        .chars()
        .filter(|c| *c != ':' && !c.is_whitespace())
        .map(|c| c.to_ascii_lowercase())
        .collect();
    if let Some(bad) = hex.chars().find(|c| !c.is_ascii_hexdigit()) {
        return Err(format!("{bad:?} is not a hex digit"));
    }
    if hex.len() != 64 {
        return Err(format!("{} hex digits instead of 64", hex.len()));
    }
    Ok(format!("{FINGERPRINT_PREFIX}{hex}"))
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

// ---------------------------------------------------------------------------
// Server identity

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
pub fn load_or_create_identity(state_dir: &Path) -> Result<ServerIdentity, String> {
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

// ---------------------------------------------------------------------------
// Server side

/// Asks for a client certificate without requiring one or judging it:
/// whoever presents one must prove they hold its key, and the server gets
/// its fingerprint.
#[derive(Debug)]
struct AnyClientCert {
    algs: WebPkiSupportedAlgorithms,
}

impl ClientCertVerifier for AnyClientCert {
    fn offer_client_auth(&self) -> bool {
        true
    }
    fn client_auth_mandatory(&self) -> bool {
        false
    }
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }
    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.algs)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.algs)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}

/// A TLS 1.3 acceptor presenting `id`. Build it once per server.
pub fn acceptor(id: &ServerIdentity) -> Result<TlsAcceptor, String> {
    let provider = provider();
    let algs = provider.signature_verification_algorithms;
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| format!("TLS setup failed: {e}"))?
        .with_client_cert_verifier(Arc::new(AnyClientCert { algs }))
        .with_single_cert(
            vec![CertificateDer::from(id.cert_der.clone())],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(id.key_der.clone())),
        )
        .map_err(|e| format!("the server's TLS identity is unusable: {e}"))?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Runs the server's half of the handshake (bounded by
/// [`TLS_HANDSHAKE_LIMIT`]). Returns the encrypted stream and the
/// fingerprint of the client's certificate, if it presented one.
pub async fn accept_tls(
    acceptor: &TlsAcceptor,
    stream: BoxStream,
) -> Result<(BoxStream, Option<String>), TlsError> {
    let tls = match tokio::time::timeout(TLS_HANDSHAKE_LIMIT, acceptor.accept(stream)).await {
        Err(_) => {
            return Err(TlsError::Handshake(format!(
                "the client did not complete the TLS handshake within {}s",
                TLS_HANDSHAKE_LIMIT.as_secs()
            )))
        }
        Ok(Err(e)) => return Err(TlsError::Handshake(describe(&e, Side::Client))),
        Ok(Ok(tls)) => tls,
    };
    let client = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| fingerprint_of(c));
    Ok((Box::new(tls), client))
}

// ---------------------------------------------------------------------------
// Client side

/// How a client decides to trust a server's certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pin {
    /// Exactly this fingerprint (as given by `--fingerprint`; any case,
    /// `:` and white space ignored, `blake3:` prefix optional).
    Exact(String),
    /// Whatever `host` presented the first time, remembered in
    /// `known_hosts` (text, one `HOST FINGERPRINT` per line). `host` should
    /// be the address as the user wrote it, e.g. `example.org:7420`.
    TrustOnFirstUse { known_hosts: PathBuf, host: String },
}

/// What the client learned about the server in a successful handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerTrust {
    /// Fingerprint of the certificate the server presented.
    pub fingerprint: String,
    /// True when trust on first use just added the server to known_hosts
    /// (worth telling the user, with the fingerprint).
    pub newly_trusted: bool,
}

/// What the verifier expects, resolved before the handshake.
#[derive(Debug)]
enum Expect {
    Exact(String),
    Known {
        host: String,
        known_hosts: PathBuf,
        known: Vec<String>,
    },
    New,
}

/// Trusts a server certificate by fingerprint only (no CA chain, no name,
/// no dates); the handshake signature is still verified.
#[derive(Debug)]
struct PinVerifier {
    expect: Expect,
    algs: WebPkiSupportedAlgorithms,
    /// Why the certificate was refused, for a better error than rustls'.
    refusal: Mutex<Option<TlsError>>,
}

impl PinVerifier {
    fn check(&self, presented: String) -> Result<(), TlsError> {
        match &self.expect {
            Expect::Exact(expected) if *expected == presented => Ok(()),
            Expect::Exact(expected) => Err(TlsError::FingerprintMismatch {
                expected: expected.clone(),
                presented,
            }),
            Expect::Known { known, .. } if known.contains(&presented) => Ok(()),
            Expect::Known {
                host,
                known_hosts,
                known,
            } => Err(TlsError::FingerprintChanged {
                host: host.clone(),
                known: known[0].clone(),
                presented,
                known_hosts: known_hosts.clone(),
            }),
            Expect::New => Ok(()),
        }
    }

    fn take_refusal(&self) -> Option<TlsError> {
        self.refusal
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
    }
}

impl ServerCertVerifier for PinVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self.check(fingerprint_of(end_entity)) {
            Ok(()) => Ok(ServerCertVerified::assertion()),
            Err(e) => {
                *self.refusal.lock().unwrap_or_else(|e| e.into_inner()) = Some(e);
                Err(rustls::Error::InvalidCertificate(
                    CertificateError::ApplicationVerificationFailure,
                ))
            }
        }
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.algs)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.algs)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}

fn check_host(host: &str) -> Result<(), String> {
    if host.is_empty() || host.chars().any(|c| c.is_whitespace() || c == '#') {
        return Err(format!("{host:?} cannot be recorded as a host name"));
    }
    Ok(())
}

/// The fingerprints recorded for `host` in a known-hosts text.
fn lookup(text: &str, host: &str) -> Result<Vec<String>, String> {
    let mut found = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut words = line.split_whitespace();
        if !words.next().is_some_and(|h| h.eq_ignore_ascii_case(host)) {
            continue;
        }
        let fp = match (words.next(), words.next()) {
            (Some(fp), None) => normalize_fingerprint(fp),
            _ => Err("expected HOST FINGERPRINT".into()),
        }
        .map_err(|e| format!("line {} is malformed ({e}); fix or delete it", n + 1))?;
        found.push(fp);
    }
    Ok(found)
}

async fn read_known_hosts(path: &Path) -> Result<String, TlsError> {
    match tokio::fs::read_to_string(path).await {
        Ok(t) => Ok(t),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
        Err(e) => Err(TlsError::KnownHosts {
            path: path.to_path_buf(),
            reason: format!("cannot read it: {e}"),
        }),
    }
}

/// Appends `host fingerprint` unless another client recorded `host` meanwhile.
async fn remember(path: &Path, host: &str, fingerprint: &str) -> Result<(), TlsError> {
    let err = |e: std::io::Error| TlsError::KnownHosts {
        path: path.to_path_buf(),
        reason: format!("cannot record the server: {e}"),
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        tokio::fs::create_dir_all(dir).await.map_err(err)?;
    }
    let text = read_known_hosts(path).await?;
    if lookup(&text, host).is_ok_and(|k| !k.is_empty()) {
        return Ok(());
    }
    let mut line = String::new();
    if !text.is_empty() && !text.ends_with('\n') {
        line.push('\n');
    }
    line.push_str(&format!("{host} {fingerprint}\n"));
    let mut f = tokio::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .await
        .map_err(err)?;
    f.write_all(line.as_bytes()).await.map_err(err)?;
    f.sync_all().await.map_err(err)?;
    Ok(())
}

/// Runs the client's half of the TLS handshake over `stream` (bounded by
/// [`TLS_HANDSHAKE_LIMIT`]), trusting the server as `pin` says.
pub async fn connect_tls(stream: BoxStream, pin: &Pin) -> Result<BoxStream, TlsError> {
    connect_tls_with(stream, pin, None).await.map(|(s, _)| s)
}

/// [`connect_tls`], optionally presenting a client certificate, and telling
/// what was learned about the server (e.g. that it was trusted just now).
pub async fn connect_tls_with(
    stream: BoxStream,
    pin: &Pin,
    client_identity: Option<&ServerIdentity>,
) -> Result<(BoxStream, ServerTrust), TlsError> {
    let expect = match pin {
        Pin::Exact(given) => Expect::Exact(normalize_fingerprint(given).map_err(|reason| {
            TlsError::InvalidFingerprint {
                given: given.clone(),
                reason,
            }
        })?),
        Pin::TrustOnFirstUse { known_hosts, host } => {
            let kh_err = |reason: String| TlsError::KnownHosts {
                path: known_hosts.clone(),
                reason,
            };
            check_host(host).map_err(kh_err)?;
            let known = lookup(&read_known_hosts(known_hosts).await?, host).map_err(kh_err)?;
            if known.is_empty() {
                Expect::New
            } else {
                Expect::Known {
                    host: host.clone(),
                    known_hosts: known_hosts.clone(),
                    known,
                }
            }
        }
    };
    let newly_trusted = matches!(expect, Expect::New);
    let provider = provider();
    let verifier = Arc::new(PinVerifier {
        expect,
        algs: provider.signature_verification_algorithms,
        refusal: Mutex::new(None),
    });
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError::Handshake(format!("TLS setup failed: {e}")))?
        .dangerous()
        .with_custom_certificate_verifier(verifier.clone());
    let mut config = match client_identity {
        None => builder.with_no_client_auth(),
        Some(id) => builder
            .with_client_auth_cert(
                vec![CertificateDer::from(id.cert_der.clone())],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(id.key_der.clone())),
            )
            .map_err(|e| {
                TlsError::Handshake(format!("the client's TLS identity is unusable: {e}"))
            })?,
    };
    // The name is not checked by anyone; do not send it either.
    config.enable_sni = false;
    let name = ServerName::try_from(CERT_NAME).expect("a valid DNS name");

    let outcome = tokio::time::timeout(
        TLS_HANDSHAKE_LIMIT,
        TlsConnector::from(Arc::new(config)).connect(name, stream),
    )
    .await;
    let tls = match outcome {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            return Err(verifier
                .take_refusal()
                .unwrap_or_else(|| TlsError::Handshake(describe(&e, Side::Server))))
        }
        Err(_) => {
            return Err(verifier.take_refusal().unwrap_or_else(|| {
                TlsError::Handshake(format!(
                    "the server did not complete the TLS handshake within {}s",
                    TLS_HANDSHAKE_LIMIT.as_secs()
                ))
            }))
        }
    };
    let fingerprint = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| fingerprint_of(c))
        .ok_or_else(|| TlsError::Handshake("the server presented no certificate".into()))?;
    if newly_trusted {
        if let Pin::TrustOnFirstUse { known_hosts, host } = pin {
            remember(known_hosts, host, &fingerprint).await?;
        }
    }
    Ok((
        Box::new(tls),
        ServerTrust {
            fingerprint,
            newly_trusted,
        },
    ))
}

// ---------------------------------------------------------------------------
// Handshake failures

#[derive(Clone, Copy)]
enum Side {
    Client,
    Server,
}

impl Side {
    fn name(self) -> &'static str {
        match self {
            Side::Client => "client",
            Side::Server => "server",
        }
    }
}

/// One line about a failed handshake with the `peer`.
fn describe(e: &std::io::Error, peer: Side) -> String {
    use std::io::ErrorKind;
    let who = peer.name();
    let Some(re) = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) else {
        return match e.kind() {
            ErrorKind::UnexpectedEof | ErrorKind::ConnectionReset | ErrorKind::BrokenPipe => format!(
                "the {who} closed the connection during the TLS handshake; TLS must be enabled on both sides or on neither"
            ),
            _ => format!("TLS handshake with the {who} failed: {e}"),
        };
    };
    match re {
        rustls::Error::InvalidMessage(_)
        | rustls::Error::InappropriateMessage { .. }
        | rustls::Error::InappropriateHandshakeMessage { .. } => {
            format!("the {who} does not speak TLS ({re}); TLS must be enabled on both sides or on neither")
        }
        rustls::Error::AlertReceived(alert) => match peer {
            Side::Client => format!(
                "the client refused the TLS handshake (alert {alert:?}); a client that trusts a different fingerprint for this server does this"
            ),
            Side::Server => format!("the server refused the TLS handshake (alert {alert:?})"),
        },
        rustls::Error::PeerIncompatible(_) => {
            format!("the {who}'s TLS is incompatible ({re}); use the same replica version on both sides")
        }
        _ => format!("TLS handshake with the {who} failed: {re}"),
    }
}

#[cfg(test)]
mod tests {
    use super::super::connection::{Counted, Counters};
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn identity() -> ServerIdentity {
        let dir = tempfile::tempdir().unwrap();
        load_or_create_identity(dir.path()).unwrap()
    }

    /// Runs both halves of a handshake over a pipe.
    async fn handshake(
        server: &ServerIdentity,
        pin: &Pin,
        client_id: Option<&ServerIdentity>,
    ) -> (
        Result<(BoxStream, ServerTrust), TlsError>,
        Result<(BoxStream, Option<String>), TlsError>,
    ) {
        let (a, b) = tokio::io::duplex(1 << 16);
        let acc = acceptor(server).unwrap();
        let srv = tokio::spawn(async move { accept_tls(&acc, Box::new(b)).await });
        let cli = connect_tls_with(Box::new(a), pin, client_id).await;
        (cli, srv.await.unwrap())
    }

    #[test]
    fn identity_persists() {
        let dir = tempfile::tempdir().unwrap();
        let a = load_or_create_identity(dir.path()).unwrap();
        let b = load_or_create_identity(dir.path()).unwrap();
        assert_eq!(a.fingerprint, b.fingerprint);
        assert_eq!(a.cert_der, b.cert_der);
        assert_eq!(a.key_der, b.key_der);
        assert_eq!(a.fingerprint, fingerprint_of(&a.cert_der));
        assert!(a.fingerprint.starts_with("blake3:") && a.fingerprint.len() == 7 + 64);
        assert!(!format!("{a:?}").contains("key_der"));
        let key = dir.path().join("tls").join("server.key.der");
        assert!(dir.path().join("tls").join("server.crt.der").is_file());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(
                std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
                0o600
            );
        }
        // Another state directory, another identity.
        assert_ne!(identity().fingerprint, a.fingerprint);
        // A certificate without its key is an error, not a silent new identity.
        std::fs::remove_file(&key).unwrap();
        let e = load_or_create_identity(dir.path()).unwrap_err();
        assert!(e.contains("private key") && e.contains("missing"), "{e}");
    }

    #[test]
    fn fingerprints_normalize() {
        let hex = "1a2b3c4d".repeat(8);
        let want = format!("blake3:{hex}");
        assert_eq!(normalize_fingerprint(&want), Ok(want.clone()));
        assert_eq!(normalize_fingerprint(&hex.to_uppercase()), Ok(want.clone()));
        assert_eq!(
            normalize_fingerprint(&format!(" BLAKE3:{} ", hex.to_uppercase())),
            Ok(want.clone())
        );
        let grouped: Vec<String> = hex
            .as_bytes()
            .chunks(2)
            .map(|c| String::from_utf8(c.to_vec()).unwrap())
            .collect();
        assert_eq!(normalize_fingerprint(&grouped.join(":")), Ok(want.clone()));
        assert_eq!(
            normalize_fingerprint(&format!("blake3:{}", grouped.join(" "))),
            Ok(want.clone())
        );
        assert!(normalize_fingerprint(&format!("sha256:{hex}"))
            .unwrap_err()
            .contains("sha256"));
        assert!(normalize_fingerprint(&hex[..60])
            .unwrap_err()
            .contains("60 hex digits"));
        assert!(normalize_fingerprint(&format!("{}zz", &hex[..62]))
            .unwrap_err()
            .contains("'z'"));
    }

    #[test]
    fn known_hosts_lookup() {
        let fp = format!("blake3:{}", "ab".repeat(32));
        let text = format!("# comment\n\nother:1 junk junk\nHost:7420 {fp}\n");
        assert_eq!(lookup(&text, "host:7420"), Ok(vec![fp.clone()]));
        assert_eq!(lookup(&text, "nobody:1"), Ok(vec![]));
        assert!(lookup(&text, "other:1").unwrap_err().contains("line 3"));
    }

    #[tokio::test]
    async fn trust_on_first_use() {
        let dir = tempfile::tempdir().unwrap();
        let known_hosts = dir.path().join("sub").join("known_hosts");
        let server = identity();
        let pin = Pin::TrustOnFirstUse {
            known_hosts: known_hosts.clone(),
            host: "example.org:7420".into(),
        };

        let (c, s) = handshake(&server, &pin, None).await;
        let (_, trust) = c.unwrap();
        assert_eq!(
            trust,
            ServerTrust {
                fingerprint: server.fingerprint.clone(),
                newly_trusted: true
            }
        );
        assert_eq!(s.unwrap().1, None);
        let text = std::fs::read_to_string(&known_hosts).unwrap();
        assert_eq!(text, format!("example.org:7420 {}\n", server.fingerprint));

        let (c, s) = handshake(&server, &pin, None).await;
        assert!(!c.unwrap().1.newly_trusted);
        assert!(s.is_ok());
        assert_eq!(std::fs::read_to_string(&known_hosts).unwrap(), text);

        // Another key at the same address is refused, and nothing is recorded.
        let imposter = identity();
        let (c, s) = handshake(&imposter, &pin, None).await;
        match c.err().unwrap() {
            e @ TlsError::FingerprintChanged { .. } => {
                let TlsError::FingerprintChanged {
                    host,
                    known,
                    presented,
                    known_hosts: path,
                } = &e
                else {
                    unreachable!()
                };
                assert_eq!(host, "example.org:7420");
                assert_eq!(known, &server.fingerprint);
                assert_eq!(presented, &imposter.fingerprint);
                assert_eq!(path, &known_hosts);
                let msg = e.to_string();
                assert!(!msg.contains('\n'));
                assert!(
                    msg.contains(&format!(
                        "remove the line for example.org:7420 from {}",
                        known_hosts.display()
                    )),
                    "{msg}"
                );
                assert!(
                    msg.contains(&format!("--fingerprint {}", imposter.fingerprint)),
                    "{msg}"
                );
            }
            e => panic!("unexpected error: {e}"),
        }
        assert!(s.err().unwrap().to_string().contains("client refused"));
        assert_eq!(std::fs::read_to_string(&known_hosts).unwrap(), text);

        // The same key under another name is a new host.
        let other = Pin::TrustOnFirstUse {
            known_hosts: known_hosts.clone(),
            host: "[::1]:7420".into(),
        };
        assert!(
            handshake(&imposter, &other, None)
                .await
                .0
                .unwrap()
                .1
                .newly_trusted
        );
        assert_eq!(
            std::fs::read_to_string(&known_hosts)
                .unwrap()
                .lines()
                .count(),
            2
        );
    }

    #[tokio::test]
    async fn exact_pin() {
        let server = identity();
        let upper = server.fingerprint.to_uppercase();
        for given in [server.fingerprint.clone(), upper] {
            let (c, s) = handshake(&server, &Pin::Exact(given), None).await;
            assert_eq!(c.unwrap().1.fingerprint, server.fingerprint);
            assert!(s.is_ok());
        }

        let wrong = identity().fingerprint;
        let (c, _) = handshake(&server, &Pin::Exact(wrong.clone()), None).await;
        match c.err().unwrap() {
            TlsError::FingerprintMismatch {
                expected,
                presented,
            } => {
                assert_eq!(expected, wrong);
                assert_eq!(presented, server.fingerprint);
            }
            e => panic!("unexpected error: {e}"),
        }

        let (a, _b) = tokio::io::duplex(64);
        let e = connect_tls(Box::new(a), &Pin::Exact("blake3:1234".into()))
            .await
            .err()
            .unwrap();
        assert!(matches!(e, TlsError::InvalidFingerprint { .. }), "{e}");
    }

    #[tokio::test]
    async fn data_round_trips_and_is_counted() {
        let server = identity();
        let (a, b) = tokio::io::duplex(1 << 16);
        let counters = Arc::new(Counters::default());
        let a: BoxStream = Box::new(Counted::new(a, counters.clone()));
        let acc = acceptor(&server).unwrap();
        let srv = tokio::spawn(async move {
            let (mut s, _) = accept_tls(&acc, Box::new(b)).await.unwrap();
            let mut buf = vec![0u8; 100_000];
            s.read_exact(&mut buf).await.unwrap();
            buf.reverse();
            s.write_all(&buf).await.unwrap();
            s.flush().await.unwrap();
            s.shutdown().await.unwrap();
        });
        let mut c = connect_tls(a, &Pin::Exact(server.fingerprint.clone()))
            .await
            .unwrap();
        let data: Vec<u8> = (0..100_000u32).map(|i| (i * 7 % 251) as u8).collect();
        c.write_all(&data).await.unwrap();
        c.flush().await.unwrap();
        let mut back = Vec::new();
        c.read_to_end(&mut back).await.unwrap();
        srv.await.unwrap();
        let mut want = data.clone();
        want.reverse();
        assert_eq!(back, want);
        // The counters sit below TLS: they see the payload plus TLS overhead.
        let (sent, received) = counters.total();
        assert!(sent > 100_000 && received > 100_000, "{sent} {received}");
    }

    /// Presents a fixed certificate with a key that may not match it.
    #[derive(Debug)]
    struct Replay(Arc<rustls::sign::CertifiedKey>);

    impl rustls::server::ResolvesServerCert for Replay {
        fn resolve(
            &self,
            _: rustls::server::ClientHello<'_>,
        ) -> Option<Arc<rustls::sign::CertifiedKey>> {
            Some(self.0.clone())
        }
    }

    #[tokio::test]
    async fn a_copied_certificate_without_its_key_is_refused() {
        let victim = identity();
        let thief = identity();
        let provider = provider();
        let key = provider
            .key_provider
            .load_private_key(PrivateKeyDer::Pkcs8(thief.key_der.clone().into()))
            .unwrap();
        let ck = rustls::sign::CertifiedKey::new(vec![victim.cert_der.clone().into()], key);
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(Replay(Arc::new(ck))));
        let acc = TlsAcceptor::from(Arc::new(config));
        let (a, b) = tokio::io::duplex(1 << 16);
        let srv = tokio::spawn(async move { accept_tls(&acc, Box::new(b)).await });
        let e = connect_tls(Box::new(a), &Pin::Exact(victim.fingerprint.clone()))
            .await
            .err()
            .expect("the signature check must fail");
        assert!(matches!(e, TlsError::Handshake(_)), "{e}");
        assert!(srv.await.unwrap().is_err());
    }

    #[tokio::test]
    async fn client_certificates_are_reported() {
        let server = identity();
        let client = identity();
        let pin = Pin::Exact(server.fingerprint.clone());
        let (c, s) = handshake(&server, &pin, Some(&client)).await;
        assert!(c.is_ok());
        assert_eq!(s.unwrap().1, Some(client.fingerprint.clone()));
    }

    #[tokio::test]
    async fn plain_peers_are_named() {
        // A server that is not speaking TLS answers with something else.
        let (a, mut b) = tokio::io::duplex(1 << 16);
        let plain = tokio::spawn(async move {
            let mut buf = [0u8; 5];
            b.read_exact(&mut buf).await.unwrap();
            b.write_all(b"\0\0\0\x05hello").await.unwrap();
            b.shutdown().await.unwrap();
            let mut rest = Vec::new();
            let _ = b.read_to_end(&mut rest).await;
        });
        let e = connect_tls(Box::new(a), &Pin::Exact(identity().fingerprint))
            .await
            .err()
            .unwrap();
        let msg = e.to_string();
        assert!(
            msg.contains("server") && msg.contains("TLS must be enabled on both sides"),
            "{msg}"
        );
        plain.await.unwrap();

        // A client that is not speaking TLS sends something else.
        let (mut a, b) = tokio::io::duplex(1 << 16);
        let acc = acceptor(&identity()).unwrap();
        let srv = tokio::spawn(async move { accept_tls(&acc, Box::new(b)).await });
        a.write_all(b"\0\0\0\x05hello").await.unwrap();
        let msg = srv.await.unwrap().err().unwrap().to_string();
        assert!(
            msg.contains("client") && msg.contains("TLS must be enabled on both sides"),
            "{msg}"
        );
    }
}

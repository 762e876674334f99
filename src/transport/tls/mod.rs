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

//!
//! - `fingerprint.rs`: fingerprints, printed and parsed.
//! - `identity.rs`: the persistent self-signed identity and the acceptor.
//! - `verify.rs`: the certificate verifiers of both sides.
//! - `known_hosts.rs`: servers trusted on first use.

mod fingerprint;
mod identity;
mod known_hosts;
#[cfg(test)]
mod tests;
mod verify;

pub use fingerprint::{fingerprint_of, normalize_fingerprint, BadFingerprint};
pub use identity::{acceptor, load_or_create_identity, ServerIdentity};
pub use verify::{Pin, ServerTrust};

use super::connection::BoxStream;
use known_hosts::{check_host, lookup, read_known_hosts, remember};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_rustls::{TlsAcceptor, TlsConnector};
use verify::{Expect, PinVerifier};

/// Time a peer has to complete the TLS handshake.
pub const TLS_HANDSHAKE_LIMIT: Duration = Duration::from_secs(20);

/// Subject alternative name (and common name) of generated certificates.
const CERT_NAME: &str = "replica";

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
    /// The TLS identity cannot be loaded, created or used.
    #[error("{0}")]
    Identity(String),
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
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

/// What the client expects of the server's certificate, as `pin` says
/// (for trust on first use, from the known-hosts file).
async fn expectation(pin: &Pin) -> Result<Expect, TlsError> {
    Ok(match pin {
        Pin::Exact(given) => Expect::Exact(normalize_fingerprint(given).map_err(|reason| {
            TlsError::InvalidFingerprint {
                given: given.clone(),
                reason: reason.to_string(),
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
    })
}

/// A TLS 1.3 client configuration trusting the server through `verifier`,
/// presenting `identity` if given, sending no server name.
fn client_config(
    provider: Arc<CryptoProvider>,
    verifier: Arc<PinVerifier>,
    identity: Option<&ServerIdentity>,
) -> Result<rustls::ClientConfig, TlsError> {
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError::Handshake(format!("TLS setup failed: {e}")))?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut config = match identity {
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
    Ok(config)
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
    let expect = expectation(pin).await?;
    let newly_trusted = matches!(expect, Expect::New);
    let provider = provider();
    let verifier = Arc::new(PinVerifier {
        expect,
        algs: provider.signature_verification_algorithms,
        refusal: Mutex::new(None),
    });
    let config = client_config(provider, verifier.clone(), client_identity)?;
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

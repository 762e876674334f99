//! Certificate verifiers: the server takes any client certificate whose
//! key the client proves it holds (and reports its fingerprint); the client
//! trusts a server by fingerprint only ([`Pin`]). Handshake signatures are
//! verified for real.

use super::fingerprint::fingerprint_of;
use super::TlsError;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, SignatureScheme};
use std::path::PathBuf;
use std::sync::Mutex;

/// Asks for a client certificate without requiring one or judging it:
/// whoever presents one must prove they hold its key, and the server gets
/// its fingerprint.
#[derive(Debug)]
pub(super) struct AnyClientCert {
    pub algs: WebPkiSupportedAlgorithms,
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
pub(super) enum Expect {
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
pub(super) struct PinVerifier {
    pub expect: Expect,
    pub algs: WebPkiSupportedAlgorithms,
    /// Why the certificate was refused, for a better error than rustls'.
    pub refusal: Mutex<Option<TlsError>>,
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

    pub fn take_refusal(&self) -> Option<TlsError> {
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

//! The TLS layer end to end over in-memory pipes, and its parsers.

use super::super::connection::{Counted, Counters};
use super::known_hosts::lookup;
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
    let e = load_or_create_identity(dir.path()).unwrap_err().to_string();
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
        .to_string()
        .contains("sha256"));
    assert!(normalize_fingerprint(&hex[..60])
        .unwrap_err()
        .to_string()
        .contains("60 hex digits"));
    assert!(normalize_fingerprint(&format!("{}zz", &hex[..62]))
        .unwrap_err()
        .to_string()
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

//! Dialing a server (or starting an in-process one) and the client's half
//! of the handshake.

use super::connection::{
    link_pair, recv_plain, send_plain, spawn_link, BoxStream, Counted, Counters, LinkCaps,
};
use super::server::{claim, run_session, ServerShared};
use super::throttle::Throttled;
use crate::chunk::CHUNKER_VERSION;
use crate::error::{Error, Result};
use crate::protocol::{Compress, Hello, HelloReply, Purpose, MAGIC, PROTOCOL_VERSION};
use crate::session::client::ClientLink;
use std::sync::Arc;
use std::time::Duration;

/// Where a client sends its tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// `replica://HOST:PORT`: `host:port` as given (IPv6 in brackets).
    Remote(String),
    /// A local directory.
    Local(std::path::PathBuf),
    /// `s3://BUCKET/PREFIX`: an object store, written by an in-process server.
    S3(crate::store::S3Location),
}

impl Target {
    /// Parses `replica://HOST:PORT` or a local path. Something that looks
    /// like an address but is not a `replica://` one (`http://h:7420`,
    /// `h:7420`, `replica:/h:7420`) is refused with the likely fix rather
    /// than taken for a directory name; `./NAME` still names a local one.
    pub fn parse(s: &str) -> std::result::Result<Target, String> {
        if let Some(loc) = crate::store::S3Location::parse(s) {
            return loc.map(Target::S3);
        }
        let Some(rest) = s.strip_prefix("replica://") else {
            return match looks_remote(s) {
                Some(addr) => Err(format!(
                    "{s}: not a replica target; did you mean replica://{addr}? (a local directory: ./{s})"
                )),
                None => Ok(Target::Local(s.into())),
            };
        };
        let rest = rest.trim_end_matches('/');
        let (host, port) = rest.rsplit_once(':').ok_or_else(|| {
            format!("{s}: no port; expected replica://HOST:PORT, e.g. replica://{rest}:7420")
        })?;
        if host.is_empty()
            || (host.contains(':') && !(host.starts_with('[') && host.ends_with(']')))
        {
            return Err(format!(
                "{s}: bad host (write IPv6 addresses in brackets, e.g. replica://[::1]:7420)"
            ));
        }
        port.parse::<u16>()
            .map_err(|_| format!("{s}: bad port {port:?} (expected a number up to 65535)"))?;
        Ok(Target::Remote(rest.to_string()))
    }

    pub fn describe(&self) -> String {
        match self {
            Target::Remote(a) => format!("replica://{a}"),
            Target::Local(p) => p.display().to_string(),
            Target::S3(l) => l.describe(),
        }
    }
}

/// The `HOST:PORT` a string seems meant to reach, when it looks like an
/// address rather than a path: another scheme (`http://h:7420/`), a
/// misspelt `replica:/h:7420` or `replica:h:7420`, or a bare `h:7420`
/// (no path separator, a numeric port).
fn looks_remote(s: &str) -> Option<String> {
    if let Some((scheme, rest)) = s.split_once("://") {
        let plain_scheme = !scheme.is_empty()
            && scheme
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c));
        if plain_scheme {
            let addr = rest.split('/').next().unwrap_or("");
            return Some(if addr.is_empty() {
                "HOST:PORT".into()
            } else {
                addr.into()
            });
        }
    }
    if let Some(rest) = s.strip_prefix("replica:") {
        return Some(rest.trim_start_matches('/').trim_end_matches('/').into());
    }
    if s.contains(['/', '\\']) {
        return None;
    }
    let (host, port) = s.rsplit_once(':')?;
    let numeric = !port.is_empty() && port.len() <= 5 && port.chars().all(|c| c.is_ascii_digit());
    let hostish = !host.is_empty()
        && (host.starts_with('[') && host.ends_with(']')
            || host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || ".-_".contains(c)));
    (numeric && hostish).then(|| s.to_string())
}

/// Client-side connection settings.
#[derive(Debug, Clone, Default)]
pub struct ConnectOptions {
    pub token: Option<String>,
    /// How to trust the server's certificate; `None` speaks plaintext
    /// (`--insecure-plaintext`, loopback testing only).
    pub pin: Option<super::tls::Pin>,
    /// The client's own certificate, presented to servers with an allow-list.
    pub identity: Option<super::tls::ServerIdentity>,
    /// The command connecting (`sync`, `watch`), told to the server so that
    /// another client it turns away can be told who holds the destination.
    pub command: &'static str,
    /// `--bwlimit`: paces what this client writes to the socket.
    pub bwlimit: Option<Arc<super::throttle::Bandwidth>>,
    /// `--compress`: how the session's stream is compressed.
    pub compress: Compress,
}

fn hello(opts: &ConnectOptions, compress: Compress) -> Hello {
    let token = &opts.token;
    let client = match opts.command {
        "" => format!("replica {}", env!("CARGO_PKG_VERSION")),
        c => format!("replica {} {c}", env!("CARGO_PKG_VERSION")),
    };
    Hello {
        magic: MAGIC,
        version: PROTOCOL_VERSION,
        chunker: CHUNKER_VERSION,
        token: token.clone().unwrap_or_default(),
        compress,
        client,
        purpose: Purpose::Sync,
    }
}

/// Queue depths in batches (of up to 64 messages; a batch of chunks is
/// about 1 MiB).
const CLIENT_CAPS: LinkCaps = LinkCaps {
    outgoing: 4,
    incoming: 1 << 20,
    // Content goes this way: the whole window.
    send_window_log: crate::transport::compress::segments::WINDOW_LOG,
};

async fn handshake(
    mut s: BoxStream,
    peer: &str,
    h: Hello,
    counters: Arc<Counters>,
) -> Result<ClientLink> {
    let net = |e: std::io::Error| Error::Net {
        peer: peer.to_string(),
        source: e,
    };
    send_plain(&mut s, &h).await.map_err(net)?;
    match recv_plain::<HelloReply>(&mut s, Duration::from_secs(30)).await {
        Ok(HelloReply::Welcome { .. }) => Ok(spawn_link(
            s,
            h.compress,
            CLIENT_CAPS,
            counters,
            peer.to_string(),
        )),
        Ok(HelloReply::Refused { reason }) => Err(refusal(peer, reason)),
        Ok(HelloReply::Status { .. }) => Err(Error::protocol(peer, "status reply to a sync hello")),
        Err(e) => Err(Error::protocol(peer, e.to_string())),
    }
}

/// A server's refusal, for good or for now (see [`super::server::refusal_is_permanent`]).
fn refusal(peer: &str, reason: String) -> Error {
    let peer = peer.to_string();
    if super::server::refusal_is_permanent(&reason) {
        Error::Denied { peer, reason }
    } else {
        Error::Refused { peer, reason }
    }
}

/// A failed TLS handshake: a certificate that is not the one trusted is
/// final; anything else (a reset mid-handshake) may pass on a retry.
fn tls_refusal(peer: &str, e: super::tls::TlsError) -> Error {
    use super::tls::TlsError::*;
    let (peer, reason) = (peer.to_string(), e.to_string());
    match e {
        FingerprintChanged { .. } | FingerprintMismatch { .. } | InvalidFingerprint { .. } => {
            Error::Denied { peer, reason }
        }
        KnownHosts { .. } | Handshake(_) | Identity(_) => Error::Refused { peer, reason },
    }
}

/// Opens a TCP connection, wrapped in TLS unless plaintext was asked for.
/// Returns the stream, its byte counters and, with TLS, what was learned
/// about the server's certificate.
async fn dial(
    addr: &str,
    opts: &ConnectOptions,
) -> Result<(BoxStream, Arc<Counters>, Option<super::tls::ServerTrust>)> {
    let peer = format!("replica://{addr}");
    let tcp = tokio::time::timeout(
        Duration::from_secs(20),
        tokio::net::TcpStream::connect(addr),
    )
    .await
    .map_err(|_| Error::Net {
        peer: peer.clone(),
        source: std::io::Error::new(std::io::ErrorKind::TimedOut, "connection timed out"),
    })?
    .map_err(|e| Error::Net {
        peer: peer.clone(),
        source: e,
    })?;
    let _ = tcp.set_nodelay(true);
    let counters = Arc::new(Counters::default());
    let s: BoxStream = match &opts.bwlimit {
        Some(b) => Box::new(Counted::new(
            Throttled::new(tcp, b.clone()),
            counters.clone(),
        )),
        None => Box::new(Counted::new(tcp, counters.clone())),
    };
    match &opts.pin {
        None => Ok((s, counters, None)),
        Some(pin) => {
            let (s, trust) = super::tls::connect_tls_with(s, pin, opts.identity.as_ref())
                .await
                .map_err(|e| tls_refusal(&peer, e))?;
            Ok((s, counters, Some(trust)))
        }
    }
}

/// Connects to a server and completes the handshake.
pub async fn connect(
    addr: &str,
    opts: &ConnectOptions,
) -> Result<(ClientLink, Option<super::tls::ServerTrust>)> {
    let peer = format!("replica://{addr}");
    let (s, counters, trust) = dial(addr, opts).await?;
    let link = handshake(s, &peer, hello(opts, opts.compress), counters).await?;
    Ok((link, trust))
}

/// Starts an in-process server session on `shared` and connects to it
/// through a pipe: a local sync runs the same code as a remote one.
///
/// The two ends exchange messages as values over in-process queues: no
/// encoding, no socket, nothing counted as wire bytes.
pub async fn connect_local(shared: Arc<ServerShared>) -> Result<ClientLink> {
    let peer = "local".to_string();
    claim(&shared).map_err(|reason| Error::Refused {
        peer: peer.clone(),
        reason,
    })?;
    // The server's queue to the client is effectively unbounded so that the
    // server never blocks on a client that is itself blocked sending.
    let (client, server) = link_pair(LOCAL_CLIENT_QUEUE, 1 << 20, &peer);
    tokio::spawn(run_session(server, peer, shared));
    Ok(client)
}

/// Batches (of up to 64 messages) the client may have queued towards an
/// in-process server.
const LOCAL_CLIENT_QUEUE: usize = 4;

/// Asks a server for its status (JSON) without starting a session.
pub async fn query_status(addr: &str, opts: &ConnectOptions) -> Result<String> {
    let peer = format!("replica://{addr}");
    let (mut s, _, _) = dial(addr, opts).await?;
    let mut h = hello(opts, Compress::Off);
    h.purpose = Purpose::Status;
    send_plain(&mut s, &h).await.map_err(|e| Error::Net {
        peer: peer.clone(),
        source: e,
    })?;
    match recv_plain::<HelloReply>(&mut s, Duration::from_secs(30)).await {
        Ok(HelloReply::Status { json }) => Ok(json),
        Ok(HelloReply::Refused { reason }) => Err(refusal(&peer, reason)),
        Ok(HelloReply::Welcome { .. }) => Err(Error::protocol(&peer, "unexpected welcome")),
        Err(e) => Err(Error::protocol(&peer, e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse() {
        assert_eq!(
            Target::parse("replica://127.0.0.1:7420"),
            Ok(Target::Remote("127.0.0.1:7420".into()))
        );
        assert_eq!(
            Target::parse("replica://[::1]:7420/"),
            Ok(Target::Remote("[::1]:7420".into()))
        );
        assert_eq!(
            Target::parse("replica://example.org:1"),
            Ok(Target::Remote("example.org:1".into()))
        );
        assert!(Target::parse("replica://::1:7420").is_err());
        assert!(Target::parse("replica://host").is_err());
        assert!(Target::parse("replica://host:99999").is_err());
        assert_eq!(
            Target::parse("some/dir"),
            Ok(Target::Local("some/dir".into()))
        );
    }

    #[test]
    fn addresses_are_not_taken_for_directories() {
        for (typed, meant) in [
            ("http://127.0.0.1:7420", "replica://127.0.0.1:7420?"),
            ("https://nas.local:7420/", "replica://nas.local:7420?"),
            ("127.0.0.1:7420", "replica://127.0.0.1:7420?"),
            ("host:7420", "replica://host:7420?"),
            ("[::1]:7420", "replica://[::1]:7420?"),
            ("replica:/host:7420", "replica://host:7420?"),
            ("replica:host:7420", "replica://host:7420?"),
        ] {
            let e = Target::parse(typed).unwrap_err();
            assert!(e.contains(&format!("did you mean {meant}")), "{typed}: {e}");
            assert!(e.contains(&format!("./{typed}")), "{typed}: {e}");
        }
        for local in [
            "./host:7420",
            "dir/host:7420",
            "host",
            "notes:v2",
            "C:\\data",
            "a:b:c",
        ] {
            assert_eq!(
                Target::parse(local),
                Ok(Target::Local(local.into())),
                "{local}"
            );
        }
    }
}

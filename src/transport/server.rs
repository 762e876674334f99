//! The server: accept loop, the server's half of the handshake, and one
//! session at a time per destination (a second client is refused with a
//! reason). Shutdown is an input: when it fires, no new connection is
//! accepted and the running session stops after the file in flight.

use super::connection::{
    recv_plain, send_plain, spawn_link, BoxStream, Counted, Counters, LinkCaps,
};
use crate::chunk::CHUNKER_VERSION;
use crate::error::{Error, Result};
use crate::index::ReplicaIndex;
use crate::protocol::{Hello, HelloReply, Purpose, ServerMsg, MAGIC, PROTOCOL_VERSION};
use crate::report::Reporter;
use crate::session::server::{serve_session, ServerLink, ServerState};
use crate::status::ServerStats;
use crate::store::{LocalStore, S3Store, Store};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;

/// Most connections open at once (handshaking or refused included).
pub const MAX_CONNECTIONS: usize = 64;
/// Time a peer has to send its hello.
pub const HANDSHAKE_LIMIT: Duration = Duration::from_secs(10);

const SERVER_CAPS: LinkCaps = LinkCaps {
    outgoing: 1 << 20,
    // Messages decoded ahead of the session: up to 32 chunks or manifest
    // pages (a few MiB), not hundreds.
    incoming: 32,
    // Requests and reports only: 1 MiB of history (the compressor 18 -> 3 MB).
    send_window_log: 20,
};

/// What every connection of one server shares.
pub struct ServerShared {
    pub state: Mutex<ServerState>,
    pub busy: AtomicBool,
    /// Who holds the destination while `busy` (told to clients turned away).
    pub holder: Mutex<Option<Holder>>,
    pub token: Option<String>,
    pub reporter: Arc<Reporter>,
    pub stats: Arc<ServerStats>,
    pub shutdown: Arc<AtomicBool>,
    pub conns: AtomicUsize,
    pub dest: PathBuf,
    /// Set while a pass runs (an idle session does not delay shutdown).
    pub in_pass: Arc<AtomicBool>,
    /// TLS acceptor (None with --insecure-plaintext).
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    /// The server certificate's fingerprint, for the user to pin.
    pub fingerprint: Option<String>,
    /// Client certificate fingerprints accepted without a token.
    pub allowed_clients: Vec<String>,
    /// `--bwlimit`: paces what the server writes to its clients.
    pub bwlimit: Option<Arc<super::throttle::Bandwidth>>,
}

/// Settings of a server (or of the server half of a local sync).
#[derive(Debug, Clone)]
pub struct ServerOptions {
    pub dest: PathBuf,
    pub state_dir: PathBuf,
    pub token: Option<String>,
    pub fsync: bool,
    pub min_free: MinFree,
    /// Speak TLS (the default); false only for loopback testing.
    pub tls: bool,
    /// Client certificate fingerprints accepted in place of the token.
    pub allowed_clients: Vec<String>,
    /// Which names the replica can hold (per-file errors for the others).
    pub names: crate::tree::NameRules,
    /// `--bwlimit`: paces what the server writes to its clients (all of
    /// them together).
    pub bwlimit: Option<Arc<super::throttle::Bandwidth>>,
    /// `--versions DIR` and `--keep-versions`: removed and replaced files
    /// are moved there (DIR as given; checked against DEST at open).
    pub versions: Option<crate::versions::VersionsOptions>,
    /// The replica is in an object store, not at `dest` (which then only
    /// names it, as `s3://BUCKET/PREFIX`).
    pub s3: Option<crate::store::S3Location>,
}

pub use crate::store::MinFree;

/// Where the index of a destination lives inside the state directory.
pub fn index_path(state_dir: &Path, dest: &Path) -> PathBuf {
    let id = blake3::hash(dest.to_string_lossy().as_bytes()).to_hex();
    state_dir
        .join("replicas")
        .join(&id[..16])
        .join("index.redb")
}

impl ServerShared {
    pub fn open(opts: &ServerOptions, reporter: Arc<Reporter>) -> Result<Arc<Self>> {
        let (store, dest) = open_store(opts)?;
        let index = ReplicaIndex::open(&index_path(&opts.state_dir, &dest))?;
        if let Some(why) = &index.rebuilt {
            reporter.warn(&format!("replica index {why}; it is being rebuilt"));
        }
        let (tls, fingerprint) = if opts.tls {
            let id = super::tls::load_or_create_identity(&opts.state_dir)
                .map_err(|e| Error::Usage(e.to_string()))?;
            (
                Some(super::tls::acceptor(&id).map_err(|e| Error::Usage(e.to_string()))?),
                Some(id.fingerprint),
            )
        } else {
            (None, None)
        };
        let mut allowed_clients = Vec::new();
        for fp in &opts.allowed_clients {
            allowed_clients.push(
                super::tls::normalize_fingerprint(fp)
                    .map_err(|e| Error::Usage(format!("--allow-client {fp}: {e}")))?,
            );
        }
        let in_pass = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(ServerStats::default());
        *stats.dest.lock().unwrap_or_else(|e| e.into_inner()) = dest.display().to_string();
        let shutdown = Arc::new(AtomicBool::new(false));
        let state = ServerState {
            store,
            index,
            reporter: reporter.clone(),
            min_free: opts.min_free,
            shutdown: shutdown.clone(),
            in_pass: in_pass.clone(),
            stats: stats.clone(),
            partials: Default::default(),
            pass_seq: Default::default(),
            names: opts.names,
        };
        Ok(Arc::new(ServerShared {
            state: Mutex::new(state),
            busy: AtomicBool::new(false),
            holder: Mutex::new(None),
            token: opts.token.clone().filter(|t| !t.is_empty()),
            reporter,
            stats,
            shutdown,
            conns: AtomicUsize::new(0),
            dest,
            in_pass,
            tls,
            fingerprint,
            allowed_clients,
            bwlimit: opts.bwlimit.clone(),
        }))
    }
}

/// The replica's store and the name of its destination (canonical for a
/// directory).
fn open_store(opts: &ServerOptions) -> Result<(Box<dyn Store>, PathBuf)> {
    if let Some(loc) = &opts.s3 {
        if opts.versions.is_some() {
            return Err(Error::Usage(format!(
                "--versions keeps versions in a directory; {} is an object store (use the bucket's own versioning)",
                loc.describe()
            )));
        }
        let dest = PathBuf::from(loc.describe());
        let state = index_path(&opts.state_dir, &dest)
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| opts.state_dir.clone());
        let store = S3Store::open(loc, &state).map_err(|e| Error::io(&dest, e))?;
        return Ok((Box::new(store), dest));
    }
    let mut store =
        LocalStore::open(&opts.dest, opts.fsync).map_err(|e| Error::io(&opts.dest, e))?;
    let dest = std::fs::canonicalize(&opts.dest).map_err(|e| Error::io(&opts.dest, e))?;
    if let Some(v) = &opts.versions {
        let dir =
            crate::versions::check_dir(&v.dir, &dest).map_err(|e| Error::Usage(e.to_string()))?;
        let v = crate::versions::VersionsOptions { dir, keep: v.keep };
        store = store.with_versions(&v).map_err(|e| Error::io(&v.dir, e))?;
    }
    Ok((Box::new(store), dest))
}

/// Reasons a client is refused for good (retrying unchanged cannot help);
/// clients tell them from "busy" or "shutting down" by these texts, which
/// only this module writes.
const PERMANENT_REFUSALS: [&str; 7] = [
    "not a replica client",
    "protocol version",
    "chunker version",
    "wrong token",
    "this server requires a token",
    "--allow-client list",
    "this server requires TLS",
];

/// Whether a refusal's reason is one retrying cannot change.
pub fn refusal_is_permanent(reason: &str) -> bool {
    PERMANENT_REFUSALS.iter().any(|p| reason.contains(p))
}

/// Checks a hello; the error is the reason sent back. With a token set, a
/// client must present it or a certificate on the allow-list; with only an
/// allow-list, the certificate is required.
fn check_hello(
    h: &Hello,
    token: &Option<String>,
    allowed: &[String],
    client_fp: Option<&str>,
) -> std::result::Result<(), String> {
    if h.magic != MAGIC {
        return Err("not a replica client (bad magic bytes)".into());
    }
    if h.version != PROTOCOL_VERSION {
        return Err(format!(
            "protocol version {} is not supported (this server speaks {PROTOCOL_VERSION}); use the same replica version on both sides",
            h.version
        ));
    }
    if !h.compress.is_valid() {
        return Err(format!(
            "not a replica client (compression {:?} is not auto, off or a level 1..19)",
            h.compress
        ));
    }
    if h.chunker != CHUNKER_VERSION {
        return Err(format!(
            "chunker version {} differs from the server's {CHUNKER_VERSION}",
            h.chunker
        ));
    }
    let cert_ok = client_fp.is_some_and(|fp| allowed.iter().any(|a| a == fp));
    if let Some(t) = token {
        // blake3::Hash compares in constant time.
        if h.token.is_empty() && !cert_ok {
            let or_cert = if allowed.is_empty() {
                ""
            } else {
                " (or connect from a client whose `replica identity` is on its --allow-client list)"
            };
            return Err(format!("this server requires a token: pass --token TOKEN or set REPLICA_TOKEN (the secret the server was started with){or_cert}"));
        }
        if blake3::hash(t.as_bytes()) != blake3::hash(h.token.as_bytes()) && !cert_ok {
            return Err("wrong token".into());
        }
    } else if !allowed.is_empty() && !cert_ok {
        return Err("this client's certificate is not on the server's --allow-client list".into());
    }
    Ok(())
}

/// Runs one connection: handshake, then a session if the destination is free.
pub async fn accept_session(
    mut s: BoxStream,
    peer: String,
    shared: Arc<ServerShared>,
    client_fp: Option<String>,
) {
    let hello = match recv_plain::<Hello>(&mut s, HANDSHAKE_LIMIT).await {
        Ok(h) => h,
        Err(e) => {
            shared
                .reporter
                .warn(&format!("{peer}: connection dropped: {e}"));
            let reason = e.to_string();
            let _ = send_plain(&mut s, &HelloReply::Refused { reason }).await;
            return;
        }
    };
    if let Err(reason) = check_hello(
        &hello,
        &shared.token,
        &shared.allowed_clients,
        client_fp.as_deref(),
    ) {
        shared.reporter.warn(&format!("{peer}: refused: {reason}"));
        let _ = send_plain(&mut s, &HelloReply::Refused { reason }).await;
        return;
    }
    if hello.purpose == Purpose::Status {
        // Only sessions count as clients; this status request is not one.
        let json = shared.stats.snapshot().to_json();
        let _ = send_plain(&mut s, &HelloReply::Status { json }).await;
        return;
    }
    if shared.shutdown.load(Ordering::Relaxed) {
        let _ = send_plain(
            &mut s,
            &HelloReply::Refused {
                reason: "server is shutting down".into(),
            },
        )
        .await;
        return;
    }
    if let Err(reason) = claim_waiting(&shared, &peer, &hello.client).await {
        shared.reporter.warn(&format!("{peer}: refused: {reason}"));
        let _ = send_plain(&mut s, &HelloReply::Refused { reason }).await;
        return;
    }
    let welcome = HelloReply::Welcome {
        version: PROTOCOL_VERSION,
        server: format!("replica {}", env!("CARGO_PKG_VERSION")),
    };
    if send_plain(&mut s, &welcome).await.is_err() {
        release(&shared);
        return;
    }
    shared
        .reporter
        .info(&format!("session from {peer} ({})", hello.client));
    let counters = Arc::new(Counters::default());
    let link = spawn_link(s, hello.compress, SERVER_CAPS, counters, peer.clone());
    run_session(link, peer, shared).await
}

/// Who holds a destination: the peer, its client text and since when.
#[derive(Debug, Clone)]
pub struct Holder {
    pub peer: String,
    pub client: String,
    pub since: std::time::SystemTime,
}

impl Holder {
    /// `` `replica watch` from 127.0.0.1:50312, since 2026-12-02 10:31:02 UTC, 12m 04s ago ``.
    fn describe(&self) -> String {
        let what = match self.client.rsplit(' ').next() {
            Some(c @ ("watch" | "sync")) => format!("`replica {c}`"),
            _ if self.client.is_empty() => "a local sync".into(),
            _ => self.client.clone(),
        };
        let since = time::OffsetDateTime::from(self.since)
            .format(time::macros::format_description!(
                "[year]-[month]-[day] [hour]:[minute]:[second] UTC"
            ))
            .unwrap_or_default();
        let ago = self.since.elapsed().unwrap_or_default();
        format!(
            "{what} from {}, since {since}, {} ago",
            self.peer,
            crate::report::human_duration(Duration::from_secs(ago.as_secs()))
        )
    }
}

/// Takes the destination for one session (one at a time per DEST).
pub(crate) fn claim(shared: &ServerShared) -> std::result::Result<(), String> {
    claim_for(shared, "local", "")
}

/// Takes the destination for `peer`'s session, or says who holds it.
fn claim_for(shared: &ServerShared, peer: &str, client: &str) -> std::result::Result<(), String> {
    let mut holder = shared.holder.lock().unwrap_or_else(|e| e.into_inner());
    if shared
        .busy
        .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
        .is_err()
    {
        let who = holder
            .as_ref()
            .map(|h| format!(" ({})", h.describe()))
            .unwrap_or_default();
        let hint = if who.contains("`replica watch`") {
            "a watch keeps it until it is stopped: stop that watch, or add this target to it"
        } else {
            "try again when it is done"
        };
        return Err(format!(
            "{} is already in use by another client{who}; {hint}",
            shared.dest.display()
        ));
    }
    *holder = Some(Holder {
        peer: peer.to_string(),
        client: client.to_string(),
        since: std::time::SystemTime::now(),
    });
    Ok(())
}

/// How long a new session waits for one that is finishing (a script's
/// second `sync` right after its first, a client reconnecting after an
/// error) before it is told the destination is in use.
const CLAIM_GRACE: Duration = Duration::from_secs(3);

/// [`claim_for`], waiting up to [`CLAIM_GRACE`] for a finishing session to
/// let go; a `watch` holds its destination until stopped, so it is
/// reported at once.
async fn claim_waiting(
    shared: &ServerShared,
    peer: &str,
    client: &str,
) -> std::result::Result<(), String> {
    let end = tokio::time::Instant::now() + CLAIM_GRACE;
    loop {
        match claim_for(shared, peer, client) {
            Ok(()) => return Ok(()),
            Err(reason) if held_by_watch(shared) || tokio::time::Instant::now() >= end => {
                return Err(reason)
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

/// Whether a `watch` holds the destination (it keeps it until stopped).
fn held_by_watch(shared: &ServerShared) -> bool {
    let holder = shared.holder.lock().unwrap_or_else(|e| e.into_inner());
    holder
        .as_ref()
        .is_some_and(|h| h.client.ends_with(" watch"))
}

/// Empties the holder and frees the destination.
fn release(shared: &ServerShared) {
    let mut holder = shared.holder.lock().unwrap_or_else(|e| e.into_inner());
    *holder = None;
    shared.busy.store(false, Ordering::Release);
}

/// Removes the temporary files of large files kept for resuming: called
/// when nothing will resume them (the process is stopping). Waits up to
/// `limit` for a running session to let go of the replica; false if it
/// did not.
pub fn discard_partials(shared: &ServerShared, limit: Duration) -> bool {
    let end = std::time::Instant::now() + limit;
    loop {
        if let Ok(st) = shared.state.try_lock() {
            st.partials.forget_older_than(u64::MAX);
            return true;
        }
        if std::time::Instant::now() >= end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Runs a claimed session to its end on a blocking thread, then frees the
/// destination and logs how it ended.
pub(crate) async fn run_session(link: ServerLink, peer: String, shared: Arc<ServerShared>) {
    shared.stats.sessions.fetch_add(1, Ordering::Relaxed);
    shared.stats.clients.fetch_add(1, Ordering::Relaxed);
    let sh = shared.clone();
    let result = tokio::task::spawn_blocking(move || {
        let mut state = sh.state.lock().unwrap_or_else(|e| e.into_inner());
        // An earlier session's I/O error (a full disk) leaves the index
        // refusing every transaction until it is opened again.
        match state.index.reopen_if_failed() {
            Ok(true) => sh
                .reporter
                .warn("replica index opened again after an earlier I/O error"),
            Ok(false) => {}
            Err(e) => {
                let _ = link.send(ServerMsg::Fatal {
                    reason: e.to_string(),
                });
                return Err(e);
            }
        }
        serve_session(&link, &state)
    })
    .await;
    shared.stats.clients.fetch_sub(1, Ordering::Relaxed);
    release(&shared);
    release_free_memory();
    match result {
        Ok(Ok(())) => shared.reporter.info(&format!("session from {peer} ended")),
        Ok(Err(Error::Interrupted)) => shared
            .reporter
            .info(&format!("session from {peer} stopped for shutdown")),
        Ok(Err(e)) => shared
            .reporter
            .error(&format!("session from {peer} failed: {e}")),
        Err(e) => shared
            .reporter
            .error(&format!("session from {peer} crashed: {e}")),
    }
}

/// Hands memory freed by a finished session back to the system, so a
/// server that just synced a million files does not stay at its high-water
/// mark (glibc keeps freed small blocks otherwise).
fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks glibc's own free lists and returns
    // unused pages to the kernel; it takes no pointers and is thread-safe.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Accepts connections until `shutdown` resolves, then waits for the running
/// session to stop (it finishes or discards the file in flight).
pub async fn serve_listener(
    listener: TcpListener,
    shared: Arc<ServerShared>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => {
                let (tcp, addr) = match accepted {
                    Ok(x) => x,
                    Err(e) => {
                        shared.reporter.warn(&format!("accept failed: {e}"));
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                if shared.conns.load(Ordering::Relaxed) >= MAX_CONNECTIONS {
                    shared.reporter.warn(&format!("{addr}: refused: too many connections"));
                    continue;
                }
                let _ = tcp.set_nodelay(true);
                shared.conns.fetch_add(1, Ordering::Relaxed);
                let sh = shared.clone();
                tokio::spawn(async move {
                    if let Some((s, fp)) = secure(tcp, addr, &sh).await {
                        accept_session(s, addr.to_string(), sh.clone(), fp).await;
                    }
                    sh.conns.fetch_sub(1, Ordering::Relaxed);
                });
            }
        }
    }
    shared.shutdown.store(true, Ordering::Relaxed);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while shared.busy.load(Ordering::Acquire)
        && shared.in_pass.load(Ordering::Acquire)
        && tokio::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Wraps a fresh connection in TLS (or refuses a plaintext client with a
/// readable reason); returns the stream and the client certificate's fingerprint.
async fn secure(
    tcp: tokio::net::TcpStream,
    addr: std::net::SocketAddr,
    sh: &ServerShared,
) -> Option<(BoxStream, Option<String>)> {
    let mut first = [0u8; 1];
    let looks_tls = match tokio::time::timeout(HANDSHAKE_LIMIT, tcp.peek(&mut first)).await {
        Ok(Ok(1)) => first[0] == 0x16,
        _ => {
            sh.reporter.warn(&format!(
                "{addr}: connection dropped: nothing received within {} s",
                HANDSHAKE_LIMIT.as_secs()
            ));
            return None;
        }
    };
    let counters = Arc::new(Counters::default());
    let mut s: BoxStream = match &sh.bwlimit {
        Some(b) => Box::new(Counted::new(
            super::throttle::Throttled::new(tcp, b.clone()),
            counters,
        )),
        None => Box::new(Counted::new(tcp, counters)),
    };
    match (&sh.tls, looks_tls) {
        (Some(acc), true) => match super::tls::accept_tls(acc, s).await {
            Ok((s, fp)) => Some((s, fp)),
            Err(e) => {
                sh.reporter
                    .warn(&format!("{addr}: connection dropped: {e}"));
                None
            }
        },
        (Some(_), false) => {
            let reason =
                "this server requires TLS; connect without --insecure-plaintext".to_string();
            sh.reporter.warn(&format!(
                "{addr}: refused: plaintext connection to a TLS server"
            ));
            // Read the client's hello first, so closing does not reset the
            // connection before the client reads the reason.
            let _ = recv_plain::<Hello>(&mut s, HANDSHAKE_LIMIT).await;
            let _ = send_plain(&mut s, &HelloReply::Refused { reason }).await;
            let _ = tokio::io::AsyncWriteExt::shutdown(&mut s).await;
            None
        }
        (None, true) => {
            sh.reporter.warn(&format!("{addr}: refused: TLS connection to a plaintext server (started with --insecure-plaintext)"));
            None
        }
        (None, false) => Some((s, None)),
    }
}

/// The port `--listen HOST` gets when none is given.
pub const DEFAULT_PORT: u16 = 7420;

/// Resolves a listen address as typed: `HOST:PORT`, `[IPv6]:PORT`, or a
/// host (name or address) alone for the default port. The error names the
/// address and the cause.
pub fn resolve_listen(flag: &str, s: &str) -> std::result::Result<std::net::SocketAddr, String> {
    use std::net::ToSocketAddrs;
    let t = s.trim();
    let with_port = match t.parse::<std::net::IpAddr>() {
        Ok(ip) => std::net::SocketAddr::new(ip, DEFAULT_PORT).to_string(),
        Err(_) if !t.contains(':') || (t.starts_with('[') && t.ends_with(']')) => {
            format!("{t}:{DEFAULT_PORT}")
        }
        Err(_) => t.to_string(),
    };
    if let Some((_, port)) = with_port.rsplit_once(':') {
        if port.parse::<u16>().is_err() {
            return Err(format!(
                "{flag} {s}: bad port {port:?} (expected HOST:PORT, e.g. 127.0.0.1:{DEFAULT_PORT})"
            ));
        }
    }
    let mut addrs = with_port.to_socket_addrs().map_err(|e| {
        format!(
            "{flag} {s}: cannot resolve the host name: {}",
            crate::error::describe_io(&e)
        )
    })?;
    addrs
        .next()
        .ok_or_else(|| format!("{flag} {s}: the host name has no address"))
}

/// Whether an address is loopback-only (a token is then optional).
pub fn is_loopback(addr: &std::net::SocketAddr) -> bool {
    addr.ip().is_loopback()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn good() -> Hello {
        Hello {
            magic: MAGIC,
            version: PROTOCOL_VERSION,
            chunker: CHUNKER_VERSION,
            token: "s3cret".into(),
            compress: crate::protocol::Compress::Auto,
            client: "t".into(),
            purpose: Purpose::Sync,
        }
    }

    #[test]
    fn listen_addresses_resolve() {
        let a = |s| resolve_listen("--listen", s);
        assert_eq!(a("127.0.0.1:1").unwrap().to_string(), "127.0.0.1:1");
        assert_eq!(a("127.0.0.1").unwrap().port(), DEFAULT_PORT);
        assert_eq!(a("[::1]").unwrap().port(), DEFAULT_PORT);
        assert_eq!(a("::1").unwrap().port(), DEFAULT_PORT);
        assert!(a("localhost").unwrap().ip().is_loopback());
        assert!(a("localhost:0").unwrap().ip().is_loopback());
        assert!(a("127.0.0.1:http").unwrap_err().contains("bad port"));
        assert!(a("no-such-host.invalid")
            .unwrap_err()
            .contains("no-such-host.invalid"));
    }

    #[test]
    fn hello_checks() {
        let tok = Some("s3cret".to_string());
        assert!(check_hello(&good(), &tok, &[], None).is_ok());
        assert!(check_hello(&good(), &None, &[], None).is_ok());
        let mut h = good();
        h.token = "nope".into();
        assert_eq!(check_hello(&h, &tok, &[], None).unwrap_err(), "wrong token");
        h.token.clear();
        let missing = check_hello(&h, &tok, &[], None).unwrap_err();
        assert!(missing.contains("requires a token") && missing.contains("--token"));
        assert!(refusal_is_permanent(&missing) && refusal_is_permanent("wrong token"));
        h.token = "nope".into();
        let allowed = vec!["blake3:aa".to_string()];
        assert!(check_hello(&h, &tok, &allowed, Some("blake3:aa")).is_ok());
        assert!(check_hello(&h, &tok, &allowed, Some("blake3:bb")).is_err());
        assert!(check_hello(&h, &None, &allowed, None).is_err());
        let mut h = good();
        h.version = 99;
        assert!(check_hello(&h, &tok, &[], None)
            .unwrap_err()
            .contains("version 99"));
        let mut h = good();
        h.magic = *b"GET / HT";
        assert!(check_hello(&h, &tok, &[], None)
            .unwrap_err()
            .contains("magic"));
        use crate::protocol::Compress;
        for (c, ok) in [
            (Compress::Off, true),
            (Compress::Level(1), true),
            (Compress::Level(19), true),
            (Compress::Level(0), false),
            (Compress::Level(22), false),
            (Compress::Level(-5), false),
        ] {
            let mut h = good();
            h.compress = c;
            let r = check_hello(&h, &tok, &[], None);
            assert_eq!(r.is_ok(), ok, "{c:?}: {r:?}");
            assert!(r.is_ok() || refusal_is_permanent(&r.unwrap_err()));
        }
    }
}

//! Hostile input: a peer speaking the wire protocol directly with path
//! tricks, malformed manifests and lying digests; symlinks planted in the
//! replica (before and during a pass); awkward but legal names. Nothing may
//! ever be created, changed or removed outside DEST, and a refused manifest
//! changes nothing inside it either.

mod common;

use common::*;
use replica::chunk::{file_id, ChunkRef, GroupRef, Hash, CHUNKER_VERSION};
use replica::protocol::{
    decode, encode, ClientMsg, Hello, HelloReply, Op, OpReport, PassOptions, PassStats, Purpose,
    ServerMsg, MAGIC, PROTOCOL_VERSION,
};
use replica::tree::{Entry, Kind, Timestamp};
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------
// A raw protocol peer
// ---------------------------------------------------------------------------

struct Peer {
    s: TcpStream,
    /// `until_end` returns when the server asks for content.
    stop_on_ask: bool,
}

/// What a session ended with.
#[derive(Debug)]
enum End {
    Fatal(String),
    Closed,
    PassDone(PassStats),
    /// The server asked for content: it accepted the manifest.
    Asked(ServerMsg),
}

impl Peer {
    /// Connects and completes an uncompressed handshake, retrying while the
    /// server still holds the previous session.
    fn connect(addr: &std::net::SocketAddr) -> Peer {
        let end = Instant::now() + DEADLINE;
        loop {
            let s = TcpStream::connect(addr).unwrap();
            s.set_read_timeout(Some(DEADLINE)).unwrap();
            let mut p = Peer {
                s,
                stop_on_ask: false,
            };
            p.send_raw(&encode(&Hello {
                magic: MAGIC,
                version: PROTOCOL_VERSION,
                chunker: CHUNKER_VERSION,
                token: String::new(),
                compress: replica::protocol::Compress::Off,
                client: "hostile test".into(),
                purpose: Purpose::Sync,
            }));
            let frame = p.read_frame().expect("no hello reply");
            match decode::<HelloReply>(&frame).expect("undecodable hello reply") {
                HelloReply::Welcome { .. } => return p,
                HelloReply::Refused { reason }
                    if reason.contains("already") && Instant::now() < end =>
                {
                    std::thread::sleep(Duration::from_millis(20));
                }
                other => panic!("handshake failed: {other:?}"),
            }
        }
    }

    fn send_raw(&mut self, payload: &[u8]) {
        let mut v = (payload.len() as u32).to_le_bytes().to_vec();
        v.extend_from_slice(payload);
        // The server may already have closed: that is an outcome, not a test failure.
        let _ = self.s.write_all(&v);
    }

    fn send(&mut self, m: &ClientMsg) {
        self.send_raw(&encode(m));
    }

    /// One non-empty frame, or `None` when the connection ends.
    fn read_frame(&mut self) -> Option<Vec<u8>> {
        loop {
            let mut len = [0u8; 4];
            match self.s.read_exact(&mut len) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    panic!("the server said nothing for {DEADLINE:?}")
                }
                Err(_) => return None,
            }
            let n = u32::from_le_bytes(len) as usize;
            if n == 0 {
                continue; // keep-alive
            }
            let mut buf = vec![0u8; n];
            self.s.read_exact(&mut buf).ok()?;
            return Some(buf);
        }
    }

    fn recv(&mut self) -> Option<ServerMsg> {
        let f = self.read_frame()?;
        Some(decode::<ServerMsg>(&f).expect("undecodable server message"))
    }

    fn send_manifest(&mut self, entries: Vec<Entry>, opaque: Vec<u32>, partial: Vec<u32>) {
        self.send(&ClientMsg::BeginPass(PassOptions::default()));
        self.send(&ClientMsg::Entries(entries));
        self.send(&ClientMsg::EndManifest { opaque, partial });
    }

    /// Reads until the session ends; every other message is collected.
    fn until_end(&mut self) -> (End, Vec<ServerMsg>) {
        let mut seen = Vec::new();
        loop {
            match self.recv() {
                None => return (End::Closed, seen),
                Some(ServerMsg::Fatal { reason }) => return (End::Fatal(reason), seen),
                Some(ServerMsg::PassDone(st)) => return (End::PassDone(st), seen),
                Some(
                    m @ (ServerMsg::NeedFiles { .. }
                    | ServerMsg::NeedChunks { .. }
                    | ServerMsg::NeedGroups { .. }
                    | ServerMsg::NeedGroupHashes { .. }),
                ) if self.stop_on_ask => return (End::Asked(m), seen),
                Some(m) => seen.push(m),
            }
        }
    }

    /// Plays an honest client for one pass: `files` maps manifest ids to
    /// their content (each at most one chunk long).
    fn honest_pass(&mut self, entries: Vec<Entry>, files: &HashMap<u32, Vec<u8>>) -> PassOutcome {
        self.send_manifest(entries, vec![], vec![]);
        let mut reports = Vec::new();
        loop {
            match self.recv() {
                None => panic!("connection closed during an honest pass"),
                Some(ServerMsg::NeedFiles { ids }) => {
                    for id in ids {
                        let data = &files[&id];
                        self.send(&summary(id, data));
                    }
                }
                Some(ServerMsg::NeedChunks { id, ranges }) => {
                    assert_eq!(ranges, vec![(0, 1)], "single-chunk files only");
                    self.send(&ClientMsg::Chunk {
                        id,
                        index: 0,
                        data: files[&id].clone(),
                    });
                }
                Some(ServerMsg::Report(r)) => reports.push(r),
                Some(ServerMsg::Done { .. }) | Some(ServerMsg::Plan { .. }) => {}
                Some(ServerMsg::PassDone(stats)) => return PassOutcome { reports, stats },
                Some(ServerMsg::Fatal { reason }) => panic!("fatal in an honest pass: {reason}"),
                Some(other) => panic!("unexpected {other:?}"),
            }
        }
    }

    fn bye(mut self) {
        self.send(&ClientMsg::Bye);
    }
}

struct PassOutcome {
    reports: Vec<OpReport>,
    stats: PassStats,
}

/// A summary with an inline one-chunk list (files of at most 64 KiB).
fn summary(id: u32, data: &[u8]) -> ClientMsg {
    ClientMsg::Summary {
        id,
        size: data.len() as u64,
        hash: Hash::of(data),
        chunks: Some(if data.is_empty() {
            vec![]
        } else {
            vec![ChunkRef {
                hash: Hash::of(data),
                len: data.len() as u32,
            }]
        }),
    }
}

const MTIME: Timestamp = Timestamp {
    secs: 1_600_000_000,
    nanos: 0,
};

fn root() -> Entry {
    Entry {
        parent: 0,
        name: String::new(),
        kind: Kind::Dir,
        mode: Some(0o755),
        mtime: MTIME,
    }
}

fn dir(parent: u32, name: &str) -> Entry {
    Entry {
        parent,
        name: name.into(),
        kind: Kind::Dir,
        mode: Some(0o755),
        mtime: MTIME,
    }
}

fn file(parent: u32, name: &str, size: u64) -> Entry {
    Entry {
        parent,
        name: name.into(),
        kind: Kind::File { size },
        mode: Some(0o644),
        mtime: MTIME,
    }
}

fn link(parent: u32, name: &str, target: &str) -> Entry {
    Entry {
        parent,
        name: name.into(),
        kind: Kind::Symlink {
            target: target.into(),
        },
        mode: None,
        mtime: MTIME,
    }
}

/// A server whose DEST sits in `parent/` next to an `outside/` directory
/// holding one file; `parent/` is what must never change unexpectedly.
struct Arena {
    _scratch: Scratch,
    parent: PathBuf,
    dest: PathBuf,
    outside: PathBuf,
    server: Server,
}

impl Arena {
    fn new() -> Arena {
        let scratch = Scratch::new();
        let parent = scratch.path("parent");
        let dest = parent.join("dest");
        let outside = parent.join("outside");
        write_file(&outside, "secret.txt", b"do not touch");
        let server = Server::builder(&dest)
            .state_at(&scratch.state)
            .plaintext()
            .start();
        Arena {
            _scratch: scratch,
            parent,
            dest,
            outside,
            server,
        }
    }

    fn snapshot(&self) -> Snapshot {
        snapshot(&self.parent)
    }

    fn assert_no_panic(&self) {
        let out = self.server.output();
        assert!(
            !out.contains("panicked") && !out.contains("crashed"),
            "the server session panicked:\n{out}"
        );
    }
}

/// Sends a manifest that must be refused: a Fatal (or a close), nothing
/// planned, and no change anywhere under DEST's parent.
fn expect_refused(a: &Arena, what: &str, entries: Vec<Entry>, opaque: Vec<u32>, partial: Vec<u32>) {
    let before = a.snapshot();
    let mut p = Peer::connect(&a.server.addr);
    p.stop_on_ask = true;
    p.send_manifest(entries, opaque, partial);
    let (end, seen) = p.until_end();
    match &end {
        End::Fatal(reason) => assert!(!reason.is_empty(), "{what}: empty reason"),
        End::Closed => {}
        End::PassDone(_) | End::Asked(_) => {
            panic!("{what}: the manifest was accepted ({end:?}); server said {seen:?}")
        }
    }
    assert!(
        seen.is_empty(),
        "{what}: the server acted on a refused manifest: {seen:?}"
    );
    assert_eq!(
        a.snapshot(),
        before,
        "{what}: something changed under DEST's parent"
    );
    assert!(
        file_names(&a.dest).is_empty() && snapshot(&a.dest).keys().all(|k| k == "."),
        "{what}: DEST is not empty: {:?}",
        snapshot(&a.dest).keys().collect::<Vec<_>>()
    );
    drop(p);
}

// ---------------------------------------------------------------------------
// Malformed manifests
// ---------------------------------------------------------------------------

const HOSTILE_NAMES: &[&str] = &["..", ".", "", "a/b", "/etc", "x\0y", "../outside", "/"];

/// Names that escape on Windows but are ordinary names on Unix: a Unix
/// replica holds each as one entry inside DEST, nothing else.
const WINDOWS_ESCAPES: &[&str] = &[
    "a\\b",
    "C:",
    "C:\\x",
    "c:evil",
    "\\\\server\\share",
    "..\\outside",
];

#[test]
fn hostile_names_are_refused_and_nothing_is_created() {
    let a = Arena::new();
    let long = "n".repeat(300);
    let mut names: Vec<&str> = HOSTILE_NAMES.to_vec();
    names.push(&long);
    for name in names {
        for (kind, entry) in [
            ("dir", dir(0, name)),
            ("file", file(0, name, 3)),
            ("symlink", link(0, name, "target")),
        ] {
            let what = format!("{kind} named {name:?}");
            expect_refused(&a, &what, vec![root(), entry], vec![], vec![]);
        }
        // The same name one level down.
        let what = format!("nested entry named {name:?}");
        expect_refused(
            &a,
            &what,
            vec![root(), dir(0, "ok"), file(1, name, 3)],
            vec![],
            vec![],
        );
    }
    a.assert_no_panic();
}

#[cfg(unix)]
#[test]
fn windows_escapes_are_single_entries_inside_dest_on_unix() {
    let a = Arena::new();
    for name in WINDOWS_ESCAPES {
        let outside = snapshot(&a.outside);
        let mut p = Peer::connect(&a.server.addr);
        let files: HashMap<u32, Vec<u8>> = [(2, b"abc".to_vec())].into();
        let out = p.honest_pass(vec![root(), dir(0, name), file(1, name, 3)], &files);
        p.bye();
        assert_eq!(out.stats.errors, 0, "{name:?}: {:?}", out.reports);
        assert_eq!(
            snapshot(&a.outside),
            outside,
            "{name:?}: something changed outside DEST"
        );
        assert_eq!(
            file_names(&a.dest),
            vec![format!("{name}/{name}")],
            "{name:?}"
        );
        let inner = a.dest.join(name).join(name);
        assert_eq!(std::fs::read(&inner).unwrap(), b"abc", "{name:?}");
        let siblings: Vec<_> = std::fs::read_dir(&a.parent)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        let mut siblings = siblings;
        siblings.sort();
        assert_eq!(
            siblings,
            vec!["dest".to_string(), "outside".into()],
            "{name:?}"
        );
    }
    a.assert_no_panic();
}

#[test]
fn invalid_parent_indexes_are_refused() {
    let a = Arena::new();
    let cases: Vec<(&str, Vec<Entry>)> = vec![
        (
            "forward parent",
            vec![root(), file(2, "f", 1), dir(0, "later")],
        ),
        ("self parent", vec![root(), dir(1, "self")]),
        ("parent out of range", vec![root(), file(99, "f", 1)]),
        ("parent u32::MAX", vec![root(), file(u32::MAX, "f", 1)]),
        (
            "parent is a file",
            vec![root(), file(0, "f", 1), file(1, "g", 1)],
        ),
        (
            "parent is a symlink",
            vec![root(), link(0, "l", "/tmp"), file(1, "g", 1)],
        ),
    ];
    for (what, entries) in cases {
        expect_refused(&a, what, entries, vec![], vec![]);
    }
    a.assert_no_panic();
}

#[test]
fn malformed_roots_and_opaque_lists_are_refused() {
    let a = Arena::new();
    let mut named_root = root();
    named_root.name = "dest".into();
    let mut file_root = file(0, "", 1);
    file_root.name = String::new();
    expect_refused(&a, "empty manifest", vec![], vec![], vec![]);
    expect_refused(
        &a,
        "named root",
        vec![named_root, file(0, "f", 1)],
        vec![],
        vec![],
    );
    expect_refused(&a, "file as root", vec![file_root], vec![], vec![]);
    expect_refused(
        &a,
        "opaque out of range",
        vec![root(), dir(0, "d")],
        vec![7],
        vec![],
    );
    expect_refused(
        &a,
        "opaque names a file",
        vec![root(), file(0, "f", 1)],
        vec![1],
        vec![],
    );
    expect_refused(
        &a,
        "partial out of range",
        vec![root(), dir(0, "d")],
        vec![],
        vec![u32::MAX],
    );
    a.assert_no_panic();
}

#[test]
fn duplicate_names_are_refused() {
    let a = Arena::new();
    expect_refused(
        &a,
        "two files",
        vec![root(), file(0, "x", 1), file(0, "x", 2)],
        vec![],
        vec![],
    );
    expect_refused(
        &a,
        "file and directory",
        vec![root(), dir(0, "x"), file(0, "x", 2)],
        vec![],
        vec![],
    );
    expect_refused(
        &a,
        "nested duplicates",
        vec![root(), dir(0, "d"), link(1, "x", "t"), dir(1, "x")],
        vec![],
        vec![],
    );
    a.assert_no_panic();
}

#[test]
fn messages_out_of_place_are_fatal() {
    let a = Arena::new();
    let before = a.snapshot();
    // A chunk before any pass.
    let mut p = Peer::connect(&a.server.addr);
    p.send(&ClientMsg::Chunk {
        id: 0,
        index: 0,
        data: b"x".to_vec(),
    });
    assert!(matches!(p.until_end().0, End::Fatal(_) | End::Closed));
    // A summary inside the manifest.
    let mut p = Peer::connect(&a.server.addr);
    p.send(&ClientMsg::BeginPass(PassOptions::default()));
    p.send(&ClientMsg::Entries(vec![root(), file(0, "f", 1)]));
    p.send(&summary(1, b"x"));
    assert!(matches!(p.until_end().0, End::Fatal(_) | End::Closed));
    // Undecodable payload after the handshake.
    let mut p = Peer::connect(&a.server.addr);
    p.send_raw(&[0xee; 40]);
    assert!(matches!(p.until_end().0, End::Fatal(_) | End::Closed));
    // A frame length over the limit: refused before allocation, link dropped.
    let mut p = Peer::connect(&a.server.addr);
    let _ = p.s.write_all(&u32::MAX.to_le_bytes());
    assert!(matches!(p.until_end().0, End::Fatal(_) | End::Closed));
    assert_eq!(a.snapshot(), before);
    a.assert_no_panic();

    // And the server still serves an honest pass.
    let mut p = Peer::connect(&a.server.addr);
    let files = HashMap::from([(1u32, b"fine".to_vec())]);
    let out = p.honest_pass(vec![root(), file(0, "f", 4)], &files);
    assert_eq!(out.stats.errors, 0, "{:?}", out.reports);
    p.bye();
    assert_eq!(std::fs::read(a.dest.join("f")).unwrap(), b"fine");
}

// ---------------------------------------------------------------------------
// Lying digests and chunks
// ---------------------------------------------------------------------------

/// Starts a pass with one file `f` of `size` bytes and waits for the
/// server to ask for its summary.
fn start_one_file(a: &Arena, size: u64) -> Peer {
    let mut p = Peer::connect(&a.server.addr);
    p.send_manifest(vec![root(), file(0, "f", size)], vec![], vec![]);
    loop {
        match p.recv().expect("closed before NeedFiles") {
            ServerMsg::NeedFiles { ids } => {
                assert_eq!(ids, vec![1]);
                return p;
            }
            ServerMsg::Report(_) | ServerMsg::Done { .. } | ServerMsg::Plan { .. } => {}
            other => panic!("expected NeedFiles, got {other:?}"),
        }
    }
}

fn assert_no_file_and_no_temp(a: &Arena) {
    assert!(
        !a.dest.join("f").exists(),
        "a file was published from bad content"
    );
    assert!(
        poll_until(Duration::from_secs(5), || temp_files(&a.dest).is_empty()),
        "temporary files left: {:?}",
        temp_files(&a.dest)
    );
}

#[test]
fn chunk_list_not_adding_up_to_the_size_is_fatal() {
    let a = Arena::new();
    let before = a.snapshot();
    let data = random_bytes(1, 10_000);
    for (what, size, chunks) in [
        (
            "short list",
            10_000u64,
            vec![ChunkRef {
                hash: Hash::of(&data[..5000]),
                len: 5000,
            }],
        ),
        (
            "long list",
            5_000,
            vec![ChunkRef {
                hash: Hash::of(&data),
                len: 10_000,
            }],
        ),
        (
            "zero-length chunk",
            10_000,
            vec![
                ChunkRef {
                    hash: Hash::of(b""),
                    len: 0,
                },
                ChunkRef {
                    hash: Hash::of(&data),
                    len: 10_000,
                },
            ],
        ),
        (
            "chunk over the maximum",
            200_000,
            vec![ChunkRef {
                hash: Hash::of(&data),
                len: 200_000,
            }],
        ),
        (
            "chunks of u32::MAX bytes",
            u32::MAX as u64 * 2,
            vec![
                ChunkRef {
                    hash: Hash::of(&data),
                    len: u32::MAX,
                },
                ChunkRef {
                    hash: Hash::of(&data),
                    len: u32::MAX,
                },
            ],
        ),
    ] {
        let mut p = start_one_file(&a, size);
        p.send(&ClientMsg::Summary {
            id: 1,
            size,
            hash: Hash::of(&data),
            chunks: Some(chunks),
        });
        let (end, seen) = p.until_end();
        assert!(
            matches!(end, End::Fatal(_) | End::Closed),
            "{what}: accepted ({end:?}, {seen:?})"
        );
        assert_no_file_and_no_temp(&a);
    }
    assert_eq!(a.snapshot(), before);
    a.assert_no_panic();
}

/// Wrong content for a chunk is never published: a wrong length ends the
/// session; wrong bytes of the right length (a source file rewritten during
/// the pass looks the same) fail that file with an error and the pass goes
/// on.
#[test]
fn chunk_not_matching_its_hash_is_refused_and_leaves_nothing() {
    let a = Arena::new();
    let data = random_bytes(2, 20_000);
    for (what, bad) in [
        ("flipped byte", {
            let mut b = data.clone();
            b[777] ^= 1;
            b
        }),
        ("short data", data[..19_999].to_vec()),
        ("long data", {
            let mut b = data.clone();
            b.push(0);
            b
        }),
        ("empty data", vec![]),
    ] {
        let mut p = start_one_file(&a, data.len() as u64);
        p.send(&summary(1, &data));
        loop {
            match p.recv().expect("closed before NeedChunks") {
                ServerMsg::NeedChunks { id, ranges } => {
                    assert_eq!((id, ranges), (1, vec![(0, 1)]));
                    break;
                }
                ServerMsg::Report(_) => {}
                other => panic!("{what}: expected NeedChunks, got {other:?}"),
            }
        }
        p.send(&ClientMsg::Chunk {
            id: 1,
            index: 0,
            data: bad,
        });
        let (end, seen) = p.until_end();
        if what == "flipped byte" {
            let reported = seen.iter().any(|m| {
                matches!(m, ServerMsg::Report(r) if r.op == Op::Error
                    && r.detail.as_deref().is_some_and(|d| d.contains("does not match its hash")))
            });
            assert!(
                matches!(&end, End::PassDone(s) if s.errors == 1) && reported,
                "{what}: not refused as a file error ({end:?}, {seen:?})"
            );
        } else {
            assert!(
                matches!(end, End::Fatal(_) | End::Closed),
                "{what}: accepted ({end:?}, {seen:?})"
            );
        }
        assert_no_file_and_no_temp(&a);
    }
    a.assert_no_panic();
}

#[test]
fn content_not_matching_the_whole_file_hash_is_not_published() {
    let a = Arena::new();
    let data = random_bytes(3, 9_000);
    let mut p = start_one_file(&a, data.len() as u64);
    // The chunk list is self-consistent, but the whole-file hash lies.
    p.send(&ClientMsg::Summary {
        id: 1,
        size: data.len() as u64,
        hash: Hash::of(b"something else"),
        chunks: Some(vec![ChunkRef {
            hash: Hash::of(&data),
            len: data.len() as u32,
        }]),
    });
    loop {
        match p.recv().expect("closed") {
            ServerMsg::NeedChunks { .. } => break,
            ServerMsg::Report(_) => {}
            other => panic!("expected NeedChunks, got {other:?}"),
        }
    }
    p.send(&ClientMsg::Chunk {
        id: 1,
        index: 0,
        data: data.clone(),
    });
    let (end, seen) = p.until_end();
    match end {
        End::PassDone(st) => {
            assert!(st.errors >= 1, "no error reported: {seen:?}");
        }
        End::Fatal(_) | End::Closed => {}
        End::Asked(m) => panic!("unexpected request {m:?}"),
    }
    assert_no_file_and_no_temp(&a);
    a.assert_no_panic();
}

/// A file of several chunks is named by its chunk list (chunking scheme
/// 2), not by the hash of its content: a summary naming it the old way is
/// not published, though every chunk checks out.
#[test]
fn a_content_hash_does_not_name_a_file_of_several_chunks() {
    let a = Arena::new();
    let data = random_bytes(7, 12_000);
    let (one, two) = data.split_at(5_000);
    let chunks = vec![
        ChunkRef {
            hash: Hash::of(one),
            len: one.len() as u32,
        },
        ChunkRef {
            hash: Hash::of(two),
            len: two.len() as u32,
        },
    ];
    assert_ne!(file_id(&chunks), Hash::of(&data));
    let mut p = start_one_file(&a, data.len() as u64);
    p.send(&ClientMsg::Summary {
        id: 1,
        size: data.len() as u64,
        hash: Hash::of(&data),
        chunks: Some(chunks),
    });
    loop {
        match p.recv().expect("closed") {
            ServerMsg::NeedChunks { .. } => break,
            ServerMsg::Report(_) => {}
            other => panic!("expected NeedChunks, got {other:?}"),
        }
    }
    p.send(&ClientMsg::Chunks {
        id: 1,
        first: 0,
        data: data.clone(),
    });
    let (end, seen) = p.until_end();
    match end {
        End::PassDone(st) => assert!(st.errors >= 1, "no error reported: {seen:?}"),
        End::Fatal(_) | End::Closed => {}
        End::Asked(m) => panic!("unexpected request {m:?}"),
    }
    assert_no_file_and_no_temp(&a);
    a.assert_no_panic();
}

/// A run of chunks (`Chunks`) must cut exactly at the chunk list's
/// boundaries and hold only chunks that were asked for; a good run is
/// accepted.
#[test]
fn runs_of_chunks_are_cut_at_the_chunk_list_and_checked() {
    let a = Arena::new();
    let data = random_bytes(6, 12_000);
    let (one, two) = data.split_at(5_000);
    let chunks = vec![
        ChunkRef {
            hash: Hash::of(one),
            len: one.len() as u32,
        },
        ChunkRef {
            hash: Hash::of(two),
            len: two.len() as u32,
        },
    ];
    let digest = ClientMsg::Summary {
        id: 1,
        size: data.len() as u64,
        hash: file_id(&chunks),
        chunks: Some(chunks),
    };
    for (what, first, bytes) in [
        ("ends inside a chunk", 0u32, data[..7_000].to_vec()),
        ("runs past the file", 0, [&data[..], b"extra"].concat()),
        ("starts past the file", 2, data.clone()),
        ("empty run", 0, Vec::new()),
        ("good run", 0, data.clone()),
    ] {
        let mut p = start_one_file(&a, data.len() as u64);
        p.send(&digest);
        loop {
            match p.recv().expect("closed before NeedChunks") {
                ServerMsg::NeedChunks { id, ranges } => {
                    assert_eq!((id, ranges), (1, vec![(0, 2)]), "{what}");
                    break;
                }
                ServerMsg::Report(_) => {}
                other => panic!("{what}: expected NeedChunks, got {other:?}"),
            }
        }
        p.send(&ClientMsg::Chunks {
            id: 1,
            first,
            data: bytes,
        });
        let (end, seen) = p.until_end();
        if what == "good run" {
            assert!(
                matches!(end, End::PassDone(ref s) if s.errors == 0),
                "{what}: {end:?} {seen:?}"
            );
            assert_eq!(std::fs::read(a.dest.join("f")).unwrap(), data);
            std::fs::remove_file(a.dest.join("f")).unwrap();
        } else {
            assert!(
                matches!(end, End::Fatal(_) | End::Closed),
                "{what}: accepted ({end:?}, {seen:?})"
            );
            assert_no_file_and_no_temp(&a);
        }
    }
    a.assert_no_panic();
}

#[test]
fn unasked_chunks_and_unknown_files_are_fatal() {
    let a = Arena::new();
    let data = random_bytes(4, 5_000);
    for what in ["chunk index not asked", "unknown file id", "summary twice"] {
        let mut p = start_one_file(&a, data.len() as u64);
        match what {
            "chunk index not asked" => {
                p.send(&summary(1, &data));
                p.send(&ClientMsg::Chunk {
                    id: 1,
                    index: 5,
                    data: data.clone(),
                });
            }
            "unknown file id" => p.send(&ClientMsg::Chunk {
                id: 4242,
                index: 0,
                data: data.clone(),
            }),
            _ => {
                p.send(&summary(1, &data));
                p.send(&summary(1, &data));
            }
        }
        let (end, seen) = p.until_end();
        assert!(
            matches!(end, End::Fatal(_) | End::Closed),
            "{what}: accepted ({end:?}, {seen:?})"
        );
        assert_no_file_and_no_temp(&a);
    }
    a.assert_no_panic();
}

/// A file large enough that its chunk list goes by groups.
fn start_grouped_file(a: &Arena) -> (Peer, Vec<ChunkRef>) {
    let size = 80 * 4096u64;
    let chunks: Vec<ChunkRef> = (0..80u32)
        .map(|i| ChunkRef {
            hash: Hash::of(&i.to_le_bytes()),
            len: 4096,
        })
        .collect();
    let mut p = start_one_file(a, size);
    p.send(&ClientMsg::Summary {
        id: 1,
        size,
        hash: Hash::of(b"whole"),
        chunks: None,
    });
    loop {
        match p.recv().expect("closed") {
            ServerMsg::NeedGroupHashes { id: 1 } => return (p, chunks),
            ServerMsg::Report(_) => {}
            other => panic!("expected NeedGroupHashes, got {other:?}"),
        }
    }
}

#[test]
fn group_chunks_out_of_order_is_a_protocol_error_not_a_panic() {
    let a = Arena::new();
    // Before the group list is complete.
    let (mut p, chunks) = start_grouped_file(&a);
    let g = |c: &[ChunkRef]| GroupRef {
        hash: replica::chunk::group_hash(c),
        count: c.len() as u32,
    };
    p.send(&ClientMsg::GroupHashes {
        id: 1,
        start: 0,
        total: 2,
        groups: vec![g(&chunks[..40])],
    });
    p.send(&ClientMsg::GroupChunks {
        id: 1,
        group: 0,
        chunks: chunks[..40].to_vec(),
    });
    let (end, seen) = p.until_end();
    assert!(
        matches!(end, End::Fatal(_)),
        "expected a protocol error, got {end:?} after {seen:?}; server:\n{}",
        a.server.output()
    );
    assert_no_file_and_no_temp(&a);
    a.assert_no_panic();

    // After the groups were all resolved (a repeated GroupChunks).
    let (mut p, chunks) = start_grouped_file(&a);
    p.send(&ClientMsg::GroupHashes {
        id: 1,
        start: 0,
        total: 1,
        groups: vec![g(&chunks)],
    });
    loop {
        match p.recv().expect("closed") {
            ServerMsg::NeedGroups { id: 1, groups } => {
                assert_eq!(groups, vec![0]);
                break;
            }
            ServerMsg::Report(_) => {}
            other => panic!("expected NeedGroups, got {other:?}"),
        }
    }
    for _ in 0..2 {
        p.send(&ClientMsg::GroupChunks {
            id: 1,
            group: 0,
            chunks: chunks.clone(),
        });
    }
    let (end, seen) = p.until_end();
    assert!(
        matches!(end, End::Fatal(_)),
        "expected a protocol error, got {end:?} after {seen:?}; server:\n{}",
        a.server.output()
    );
    assert_no_file_and_no_temp(&a);
    a.assert_no_panic();
}

#[test]
fn summary_with_size_u64_max_is_handled_without_panic() {
    let a = Arena::new();
    let mut p = start_one_file(&a, 1);
    p.send(&ClientMsg::Summary {
        id: 1,
        size: u64::MAX,
        hash: Hash::of(b"x"),
        chunks: None,
    });
    p.send(&ClientMsg::FileFailed {
        id: 1,
        reason: "gone".into(),
    });
    let (end, seen) = p.until_end();
    assert!(
        matches!(end, End::Fatal(_) | End::PassDone(_)),
        "the session ended without an answer: {end:?} after {seen:?}; server:\n{}",
        a.server.output()
    );
    assert_no_file_and_no_temp(&a);
    a.assert_no_panic();
}

// ---------------------------------------------------------------------------
// Symlinks in the replica
// ---------------------------------------------------------------------------

#[cfg(unix)]
#[test]
fn protocol_symlinks_then_real_entries_never_write_through_them() {
    let a = Arena::new();
    let outside = a.outside.to_str().unwrap().to_string();
    let secret = a.outside.join("secret.txt");
    let before_outside = snapshot(&a.outside);

    // Pass 1: relative links pointing out of DEST, sent by the peer; the
    // absolute ones are planted directly (see absolute_symlinks_are_replicated).
    let mut p = Peer::connect(&a.server.addr);
    let out = p.honest_pass(
        vec![root(), link(0, "rel", "../outside"), link(0, "up", "..")],
        &HashMap::new(),
    );
    assert_eq!(out.stats.errors, 0, "{:?}", out.reports);
    assert_eq!(
        std::fs::read_link(a.dest.join("rel")).unwrap(),
        Path::new("../outside")
    );
    std::os::unix::fs::symlink(&outside, a.dest.join("abs")).unwrap();
    std::os::unix::fs::symlink(&secret, a.dest.join("file")).unwrap();

    // Pass 2 (same session): real directories and files at those names.
    let files = HashMap::from([
        (2u32, b"through abs".to_vec()),
        (3u32, b"through file".to_vec()),
        (5u32, b"through rel".to_vec()),
        (7u32, b"through up".to_vec()),
    ]);
    let out = p.honest_pass(
        vec![
            root(),
            dir(0, "abs"),
            file(1, "secret.txt", 11),
            file(0, "file", 12),
            dir(0, "rel"),
            file(4, "secret.txt", 11),
            dir(0, "up"),
            file(6, "x", 10),
        ],
        &files,
    );
    assert_eq!(out.stats.errors, 0, "{:?}", out.reports);
    p.bye();

    assert_eq!(snapshot(&a.outside), before_outside, "outside DEST changed");
    assert_eq!(std::fs::read(&secret).unwrap(), b"do not touch");
    assert!(
        !a.parent.join("x").exists(),
        "a file was written above DEST"
    );
    let got = snapshot(&a.dest);
    assert_eq!(got["abs"].kind, common::Kind::Dir);
    assert_eq!(
        got["abs/secret.txt"].kind,
        common::Kind::File(b"through abs".to_vec())
    );
    assert_eq!(
        got["file"].kind,
        common::Kind::File(b"through file".to_vec())
    );
    assert_eq!(
        got["rel/secret.txt"].kind,
        common::Kind::File(b"through rel".to_vec())
    );
    assert_eq!(got["up/x"].kind, common::Kind::File(b"through up".to_vec()));
    a.assert_no_panic();
}

/// DEST, a source and an `outside` directory with a file, for CLI tests.
struct Planted {
    s: Scratch,
    outside: PathBuf,
}

impl Planted {
    fn new() -> Planted {
        let s = Scratch::new();
        let outside = s.path("outside");
        write_file(&outside, "keep.txt", b"outside content");
        write_file(&outside, "sub-file.txt", b"outside content 2");
        std::fs::create_dir_all(&s.dest).unwrap();
        Planted { s, outside }
    }
}

#[cfg(unix)]
#[test]
fn planted_directory_symlink_is_replaced_by_a_real_directory() {
    let t = Planted::new();
    let s = &t.s;
    write_file(&s.src, "sub/keep.txt", b"replica content");
    write_file(&s.src, "sub/new.txt", b"new file");
    write_file(&s.src, "sub/deep/x.txt", b"deep");
    std::os::unix::fs::symlink(&t.outside, s.dest.join("sub")).unwrap();
    let before = snapshot(&t.outside);

    // Both a local and a remote pass.
    let run = sync(&s.src, &s.dest_str(), &s.state);
    assert_eq!(run.code, Some(0), "{}", run.describe());
    assert_eq!(snapshot(&t.outside), before, "outside DEST changed");
    assert!(std::fs::symlink_metadata(s.dest.join("sub"))
        .unwrap()
        .file_type()
        .is_dir());
    assert_trees_equal(&s.src, &s.dest);

    std::fs::remove_dir_all(s.dest.join("sub")).unwrap();
    std::os::unix::fs::symlink(&t.outside, s.dest.join("sub")).unwrap();
    let server = Server::builder(&s.dest)
        .state_at(&s.path("server-state"))
        .start();
    let run = sync_to(&s.src, &server, &s.path("client-state"));
    assert_eq!(run.code, Some(0), "{}", run.describe());
    assert_eq!(snapshot(&t.outside), before, "outside DEST changed");
    assert_trees_equal(&s.src, &s.dest);
}

#[cfg(unix)]
#[test]
fn planted_file_symlink_is_replaced_by_a_regular_file() {
    let t = Planted::new();
    let s = &t.s;
    write_file(&s.src, "f", b"the source's f");
    write_file(&s.src, "same-size", b"outside content");
    let target = t.outside.join("keep.txt");
    std::os::unix::fs::symlink(&target, s.dest.join("f")).unwrap();
    // Same size and mtime as the source file: only the type differs.
    std::os::unix::fs::symlink(&target, s.dest.join("same-size")).unwrap();
    let before = snapshot(&t.outside);

    let run = sync(&s.src, &s.dest_str(), &s.state);
    assert_eq!(run.code, Some(0), "{}", run.describe());
    assert_eq!(snapshot(&t.outside), before, "outside DEST changed");
    for name in ["f", "same-size"] {
        assert!(std::fs::symlink_metadata(s.dest.join(name))
            .unwrap()
            .file_type()
            .is_file());
    }
    assert_trees_equal(&s.src, &s.dest);
}

#[cfg(unix)]
#[test]
fn extra_symlink_to_outside_is_removed_and_its_target_survives() {
    let t = Planted::new();
    let s = &t.s;
    write_file(&s.src, "a.txt", b"a");
    std::os::unix::fs::symlink(&t.outside, s.dest.join("x")).unwrap();
    std::os::unix::fs::symlink(t.outside.join("keep.txt"), s.dest.join("y")).unwrap();
    std::fs::create_dir_all(s.dest.join("d")).unwrap();
    std::os::unix::fs::symlink(&t.outside, s.dest.join("d/inner")).unwrap();
    let before = snapshot(&t.outside);

    let run = sync(&s.src, &s.dest_str(), &s.state);
    assert_eq!(run.code, Some(0), "{}", run.describe());
    assert_eq!(snapshot(&t.outside), before, "outside DEST changed");
    assert!(std::fs::symlink_metadata(s.dest.join("x")).is_err());
    assert!(std::fs::symlink_metadata(s.dest.join("y")).is_err());
    assert!(std::fs::symlink_metadata(s.dest.join("d")).is_err());
    assert_trees_equal(&s.src, &s.dest);
}

#[cfg(unix)]
#[test]
fn hard_link_planted_in_dest_does_not_carry_metadata_outside() {
    use std::os::unix::fs::PermissionsExt;
    let t = Planted::new();
    let s = &t.s;
    let victim = t.outside.join("keep.txt");
    std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o600)).unwrap();
    let old = std::time::UNIX_EPOCH + Duration::from_secs(1_000_000_000);
    std::fs::File::options()
        .write(true)
        .open(&victim)
        .unwrap()
        .set_times(std::fs::FileTimes::new().set_modified(old))
        .unwrap();
    std::fs::hard_link(&victim, s.dest.join("f")).unwrap();
    // Same content as the outside file: only the metadata differs.
    write_file(&s.src, "f", b"outside content");
    std::fs::set_permissions(s.src.join("f"), std::fs::Permissions::from_mode(0o644)).unwrap();
    let meta_of = |p: &Path| {
        let m = std::fs::metadata(p).unwrap();
        (m.permissions().mode() & 0o7777, m.modified().unwrap())
    };
    let before = meta_of(&victim);

    let run = sync(&s.src, &s.dest_str(), &s.state);
    assert_eq!(run.code, Some(0), "{}", run.describe());
    assert_trees_equal(&s.src, &s.dest);
    assert_eq!(meta_of(&s.dest.join("f")).0, 0o644);
    assert_eq!(
        meta_of(&victim),
        before,
        "the mode or mtime of a file outside DEST changed through a hard link"
    );
}

#[cfg(unix)]
#[test]
fn directory_swapped_for_a_symlink_during_passes_never_leaks_writes() {
    let t = Planted::new();
    let s = &t.s;
    for i in 0..40 {
        write_file(&s.src, &format!("sub/f{i:02}.txt"), &random_bytes(i, 3000));
    }
    let before = snapshot(&t.outside);
    let run = sync(&s.src, &s.dest_str(), &s.state);
    assert_eq!(run.code, Some(0), "{}", run.describe());

    let stop = Arc::new(AtomicBool::new(false));
    let swapper = {
        let (stop, dest, outside) = (stop.clone(), s.dest.clone(), t.outside.clone());
        std::thread::spawn(move || {
            let (sub, hold) = (dest.join("sub"), dest.join("held-aside"));
            let mut swaps = 0u64;
            while !stop.load(Ordering::SeqCst) {
                if std::fs::rename(&sub, &hold).is_ok() {
                    let _ = std::os::unix::fs::symlink(&outside, &sub);
                    std::thread::yield_now();
                    let _ = std::fs::remove_file(&sub);
                    let _ = std::fs::rename(&hold, &sub);
                    swaps += 1;
                } else {
                    std::thread::yield_now();
                }
            }
            swaps
        })
    };
    for round in 0..6u64 {
        // Change every file so each pass writes inside sub/.
        for i in 0..40 {
            write_file(
                &s.src,
                &format!("sub/f{i:02}.txt"),
                &random_bytes(1000 * (round + 1) + i, 3000),
            );
        }
        let run = sync(&s.src, &s.dest_str(), &s.state);
        assert!(matches!(run.code, Some(0) | Some(1)), "{}", run.describe());
        assert!(!run.stderr.contains("panicked"), "{}", run.describe());
        assert_eq!(snapshot(&t.outside), before, "outside DEST changed");
    }
    stop.store(true, Ordering::SeqCst);
    let swaps = swapper.join().unwrap();
    eprintln!("{swaps} swaps during the passes");
    assert_eq!(snapshot(&t.outside), before, "outside DEST changed");

    let run = sync(&s.src, &s.dest_str(), &s.state);
    assert_eq!(run.code, Some(0), "{}", run.describe());
    assert_trees_equal(&s.src, &s.dest);
    assert_eq!(snapshot(&t.outside), before);
}

// ---------------------------------------------------------------------------
// Awkward but legal names
// ---------------------------------------------------------------------------

#[cfg(target_os = "linux")]
#[test]
fn names_differing_only_in_case_both_sync() {
    let s = Scratch::new();
    write_file(&s.src, "A", b"upper");
    write_file(&s.src, "a", b"lower");
    write_file(&s.src, "Dir/x", b"upper dir");
    write_file(&s.src, "dir/x", b"lower dir");
    write_file(&s.src, "dir/X", b"lower dir, upper file");
    let run = sync(&s.src, &s.dest_str(), &s.state);
    assert_eq!(run.code, Some(0), "{}", run.describe());
    assert_trees_equal(&s.src, &s.dest);
    let run = sync(&s.src, &s.dest_str(), &s.state);
    assert_eq!(run.code, Some(0), "{}", run.describe());
    assert_eq!(operations(&run.stdout), Some(0), "{}", run.describe());
    assert_eq!(run.content_sent(), 0);
    assert_trees_equal(&s.src, &s.dest);
}

#[cfg(unix)]
#[test]
fn absolute_symlinks_are_replicated_verbatim() {
    let s = Scratch::new();
    write_file(&s.src, "a.txt", b"a");
    std::os::unix::fs::symlink("/etc/hostname", s.src.join("abs")).unwrap();
    std::os::unix::fs::symlink("/nonexistent/dangling", s.src.join("dangling")).unwrap();
    std::os::unix::fs::symlink("a.txt", s.src.join("rel")).unwrap();
    let run = sync(&s.src, &s.dest_str(), &s.state);
    assert_eq!(run.code, Some(0), "{}", run.describe());
    assert_trees_equal(&s.src, &s.dest);
    // Replicated as links, never followed: /etc/hostname was not copied.
    assert_eq!(
        std::fs::read_link(s.dest.join("abs")).unwrap(),
        Path::new("/etc/hostname")
    );
}

#[cfg(target_os = "linux")]
#[test]
fn longest_legal_multibyte_names_sync() {
    let s = Scratch::new();
    let cjk = "日".repeat(85); // 255 bytes
    let accents = "é".repeat(127); // 254 bytes
    write_file(&s.src, &cjk, b"cjk");
    write_file(&s.src, &format!("{accents}/{cjk}"), b"nested");
    let link_name = format!("{}.l", "日".repeat(84)); // 254 bytes
    std::os::unix::fs::symlink("target", s.src.join(link_name)).unwrap();
    let run = sync(&s.src, &s.dest_str(), &s.state);
    assert_eq!(run.code, Some(0), "{}", run.describe());
    assert_trees_equal(&s.src, &s.dest);
}

#[test]
fn source_names_with_the_temp_prefix_settle() {
    let s = Scratch::new();
    write_file(&s.src, ".replica-tmp-notes.txt", b"a user file");
    write_file(&s.src, ".replica-tmp-dir/inner.txt", b"inside");
    write_file(&s.src, "plain.txt", b"plain");
    let run = sync(&s.src, &s.dest_str(), &s.state);
    assert_eq!(run.code, Some(0), "{}", run.describe());
    assert_trees_equal(&s.src, &s.dest);
    let run = sync(&s.src, &s.dest_str(), &s.state);
    assert_eq!(run.code, Some(0), "{}", run.describe());
    assert_trees_equal(&s.src, &s.dest);
    assert_eq!(
        run.content_sent(),
        0,
        "an unchanged tree was sent again:\n{}",
        run.describe()
    );
    assert!(
        !run.stdout.contains("created"),
        "an unchanged tree was re-created:\n{}",
        run.describe()
    );
}

//! The `session` fuzz target's harness: a real server session driven by
//! structured client message sequences.
//!
//! Once per process: a temp parent dir holding DEST, a state dir and a
//! `trap` dir, and a `ServerShared` on DEST. Per input: a
//! `tokio::io::duplex` pipe, the server's `accept_session` spawned on one
//! end, a valid uncompressed Hello (expecting Welcome), then the input's
//! steps: scripted `ClientMsg`s, well-behaved answers to the server's
//! requests (with optional faults), and changes made to DEST behind the
//! server's back between passes. File contents come from a small table of
//! deterministic blobs, so chunk hashes, group hashes and whole-file hashes
//! can be made consistent (and then selectively corrupted), which lets the
//! fuzzer get deep into the transfer engine instead of bouncing off hash
//! checks. Then the client half-closes and the session must end in time.
//!
//! Asserted: no panic anywhere (under libFuzzer, libfuzzer-sys aborts on a
//! panic in any thread, the server's blocking session thread included);
//! every frame the server sends decodes as a `ServerMsg`; the session ends
//! in time; afterwards the temp parent holds only `dest`, `state` and `trap`
//! (nothing was created outside DEST), and nothing moved out of DEST into
//! `trap` was changed by the server.
//!
//! DEST is *not* reset between inputs: like successive real sessions, each
//! input starts from whatever the previous one left (the first completed
//! pass of an input makes DEST match its manifest anyway). A reproducer may
//! therefore need the inputs run before it; run the crash input alone first.

use arbitrary::Arbitrary;
use replica::chunk::{group_hash, ChunkRef, GroupRef, Hash, CHUNKER_VERSION};
use replica::delta::fine::{gaps, refine, Gap};
use replica::delta::{make_delta, BasisMap, DeltaOp};
use replica::protocol::frame::parse_frame;
use replica::protocol::GROUPS_PER_MSG;
use replica::protocol::{
    decode, encode, ClientMsg, Hello, HelloReply, PassOptions, Purpose, ServerMsg, MAGIC,
    MAX_FRAME, PROTOCOL_VERSION,
};
use replica::report::Reporter;
use replica::transport::server::{accept_session, MinFree, ServerOptions, ServerShared};
use replica::tree::validate_name;
use replica::tree::{Entry, Kind, Timestamp};
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

// ---------------------------------------------------------------- setup --

struct World {
    rt: tokio::runtime::Runtime,
    parent: PathBuf,
    dest: PathBuf,
    /// Where `External` steps move DEST's entries to: outside DEST, so the
    /// server must never touch it again.
    trap: PathBuf,
    shared: Arc<ServerShared>,
    timeout: Duration,
    /// Keep manifest file sizes below 2^48 (`REPLICA_FUZZ_SMALL_SIZES=1`),
    /// for fuzzing a build that still has finding 1 without it masking
    /// everything else.
    small_sizes: bool,
}

static PARENT: OnceLock<PathBuf> = OnceLock::new();

extern "C" fn remove_parent() {
    if let Some(p) = PARENT.get() {
        let _ = std::fs::remove_dir_all(p);
    }
}

/// Op lines and errors of a `Reporter` go to its progress target when one
/// is set and not hidden: a terminal that swallows everything keeps the
/// fuzzer's output readable (`Reporter::silent()` still prints errors).
#[derive(Debug)]
struct NullTerm;

impl indicatif::TermLike for NullTerm {
    fn width(&self) -> u16 {
        80
    }
    fn move_cursor_up(&self, _: usize) -> std::io::Result<()> {
        Ok(())
    }
    fn move_cursor_down(&self, _: usize) -> std::io::Result<()> {
        Ok(())
    }
    fn move_cursor_right(&self, _: usize) -> std::io::Result<()> {
        Ok(())
    }
    fn move_cursor_left(&self, _: usize) -> std::io::Result<()> {
        Ok(())
    }
    fn write_line(&self, _: &str) -> std::io::Result<()> {
        Ok(())
    }
    fn write_str(&self, _: &str) -> std::io::Result<()> {
        Ok(())
    }
    fn clear_line(&self) -> std::io::Result<()> {
        Ok(())
    }
    fn flush(&self) -> std::io::Result<()> {
        Ok(())
    }
}

fn world() -> &'static World {
    static W: OnceLock<World> = OnceLock::new();
    W.get_or_init(|| {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let parent = std::env::temp_dir().join(format!(
            "replica-fuzz-session-{}-{nanos:x}",
            std::process::id()
        ));
        std::fs::create_dir_all(&parent).expect("create fuzz temp dir");
        let parent = std::fs::canonicalize(&parent).expect("canonicalize fuzz temp dir");
        let dest = parent.join("dest");
        let state = parent.join("state");
        std::fs::create_dir(&dest).expect("create DEST");
        std::fs::create_dir(&state).expect("create state dir");
        let trap = parent.join("trap");
        std::fs::create_dir(&trap).expect("create trap dir");
        let _ = PARENT.set(parent.clone());
        // With REPLICA_FUZZ_PANIC_LOG=FILE, panics (any thread) are appended
        // to FILE before libFuzzer aborts: in -fork mode the job logs that
        // hold them are deleted.
        if let Some(log) = std::env::var_os("REPLICA_FUZZ_PANIC_LOG") {
            let next = std::panic::take_hook();
            std::panic::set_hook(Box::new(move |info| {
                use std::io::Write;
                if let Ok(mut f) = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&log)
                {
                    let bt = std::backtrace::Backtrace::force_capture();
                    let _ = writeln!(f, "=== pid {}: {info}\n{bt}", std::process::id());
                }
                next(info)
            }));
        }
        // Remove the temp dir when libFuzzer exits normally (not on a crash,
        // so a crashing state can be inspected).
        unsafe {
            libc::atexit(remove_parent);
        }
        let quiet = std::env::var_os("REPLICA_FUZZ_VERBOSE").is_none();
        let reporter = if quiet {
            let mp = indicatif::MultiProgress::with_draw_target(
                indicatif::ProgressDrawTarget::term_like(Box::new(NullTerm)),
            );
            Reporter::silent().with_progress(mp)
        } else {
            Reporter::silent()
        };
        let opts = ServerOptions {
            dest: dest.clone(),
            state_dir: state.clone(),
            token: None,
            fsync: false,
            // Never refuse a file for space: the fuzzer's files are tiny and
            // the refusal path is reached anyway through sizes in manifests.
            min_free: MinFree::Bytes(0),
            tls: false,
            allowed_clients: Vec::new(),
            names: replica::tree::NameRules::native(),
            bwlimit: None,
            versions: None,
            s3: None,
        };
        let shared = ServerShared::open(&opts, Arc::new(reporter)).expect("ServerShared::open");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime");
        let ms = std::env::var("REPLICA_FUZZ_SESSION_TIMEOUT_MS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(2000);
        World {
            rt,
            parent,
            dest,
            trap,
            shared,
            timeout: Duration::from_millis(ms),
            small_sizes: std::env::var_os("REPLICA_FUZZ_SMALL_SIZES").is_some(),
        }
    })
}

// ------------------------------------------------------------- contents --

/// Lengths of the blob table: short last chunks, and lengths at and around
/// the chunker's MIN_CHUNK (4 KiB) and MAX_CHUNK (64 KiB).
const BLOB_LENS: [usize; 8] = [1, 7, 100, 4096, 4097, 5000, 16384, 65536];

/// Blobs 0..8 are pseudo-random bytes of `BLOB_LENS`; blobs 8..16 are the
/// same with a few bytes changed in the middle: a file moving from blob k to
/// blob k+8 is what the server's small-file deltas (Basis / ChunkDelta) are
/// for, since most of their fine pieces are shared.
fn blobs() -> &'static [Vec<u8>] {
    static B: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
    B.get_or_init(|| {
        let base: Vec<Vec<u8>> = BLOB_LENS
            .iter()
            .enumerate()
            .map(|(i, &len)| {
                let mut out = vec![0u8; len];
                blake3::Hasher::new()
                    .update(&[i as u8])
                    .finalize_xof()
                    .fill(&mut out);
                out
            })
            .collect();
        let edited = base.iter().map(|b| {
            let mut b = b.clone();
            let mid = b.len() / 2;
            let end = (mid + 13).min(b.len());
            for x in &mut b[mid..end] {
                *x ^= 0x5a;
            }
            b
        });
        base.iter().cloned().chain(edited).collect()
    })
}

fn blob(k: u8) -> &'static [u8] {
    &blobs()[k as usize % (2 * BLOB_LENS.len())]
}

/// Spoils the old ranges of a second-round request.
fn tweak_ranges(mut ranges: Vec<(u32, u32)>, t: Option<&Tweak>) -> Vec<(u32, u32)> {
    match t {
        Some(Tweak::Count(n)) => ranges.push((*n, 1)),
        Some(Tweak::ChunkLen { index, len }) if !ranges.is_empty() => {
            let i = *index as usize % ranges.len();
            ranges[i] = (u32::from(*index), *len);
        }
        Some(Tweak::Duplicate(n)) => ranges.extend((0..*n).map(|i| (u32::from(i), 64))),
        _ => {}
    }
    ranges
}

fn tweak_ops(mut ops: Vec<DeltaOp>, t: Option<&Tweak>) -> Vec<DeltaOp> {
    match t {
        Some(Tweak::Count(n)) => ops.push(DeltaOp::Copy {
            first: *n,
            count: 1,
        }),
        Some(Tweak::ChunkLen { index, len }) if !ops.is_empty() => {
            let i = *index as usize % ops.len();
            ops[i] = DeltaOp::Copy {
                first: u32::from(*index),
                count: *len,
            };
        }
        Some(Tweak::Hash(j)) => {
            for op in &mut ops {
                if let DeltaOp::Literal(b) = op {
                    if !b.is_empty() {
                        let n = b.len();
                        b[*j as usize % n] ^= 1;
                        break;
                    }
                }
            }
        }
        Some(Tweak::DropLast) => {
            ops.pop();
        }
        Some(Tweak::Duplicate(i)) if !ops.is_empty() => {
            let x = ops[*i as usize % ops.len()].clone();
            ops.push(x);
        }
        Some(Tweak::Size(n)) => ops.push(DeltaOp::Literal(vec![0xa5; (*n % 70_000) as usize])),
        _ => {}
    }
    ops
}

/// A file content: a list of blobs (its chunks), cut into groups.
#[derive(Arbitrary, Debug, Clone)]
pub struct FContent {
    pub chunks: Vec<u8>,
    pub group_cuts: Vec<u8>,
}

/// A content with every hash the protocol can mention.
struct Content {
    blobs: Vec<u8>,
    chunks: Vec<ChunkRef>,
    size: u64,
    hash: Hash,
    groups: Vec<(GroupRef, Vec<ChunkRef>)>,
}

impl Content {
    fn build(f: &FContent) -> Content {
        let blobs: Vec<u8> = f.chunks.iter().take(24).copied().collect();
        let chunks: Vec<ChunkRef> = blobs
            .iter()
            .map(|&k| ChunkRef {
                hash: Hash::of(blob(k)),
                len: blob(k).len() as u32,
            })
            .collect();
        let mut h = blake3::Hasher::new();
        for &k in &blobs {
            h.update(blob(k));
        }
        let size = chunks.iter().map(|c| c.len as u64).sum();
        let mut groups = Vec::new();
        let mut rest: &[ChunkRef] = &chunks;
        let mut cuts = f.group_cuts.iter();
        while !rest.is_empty() {
            let n = (1 + *cuts.next().unwrap_or(&255) as usize % 8).min(rest.len());
            let (g, r) = rest.split_at(n);
            groups.push((
                GroupRef {
                    hash: group_hash(g),
                    count: g.len() as u32,
                },
                g.to_vec(),
            ));
            rest = r;
        }
        Content {
            blobs,
            chunks,
            size,
            hash: Hash(*h.finalize().as_bytes()),
            groups,
        }
    }
}

// ------------------------------------------------------------- messages --

/// A file id.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum FId {
    /// The k-th file of the last manifest sent (what the server asks about).
    File(u8),
    /// A small manifest index of any kind.
    Small(u8),
    Any(u32),
}

/// How to spoil an otherwise consistent message.
#[derive(Arbitrary, Debug, Clone)]
pub enum Tweak {
    Size(u64),
    SizeDelta(i8),
    Hash(u8),
    ChunkLen { index: u8, len: u32 },
    DropLast,
    Duplicate(u8),
    Count(u32),
}

#[derive(Arbitrary, Debug, Clone)]
pub enum FName {
    Dict(u8),
    Raw(String),
}

fn name_dict(i: u8) -> String {
    const NAMES: &[&str] = &[
        "a",
        "b",
        "c",
        "sub",
        "x.txt",
        "y.bin",
        ".hidden",
        "...",
        "a b",
        "naïve.txt",
        "CON",
        "nul.txt",
        "trail.",
        "1:2",
        ".replica-tmp-1-0.a",
        ".replica-tmp-",
        "dest",
        "state",
        "",
        ".",
        "..",
        "a/b",
        "a\\b",
        "C:",
        "c:x",
        "a\0b",
    ];
    let n = NAMES.len() as u8;
    match i % (n + 4) {
        i if i < n => NAMES[i as usize].to_string(),
        i if i == n => "x".repeat(255),
        i if i == n + 1 => "x".repeat(256),
        // Valid names (<= 255 bytes) of multi-byte characters.
        i if i == n + 2 => "€".repeat(85),
        _ => "😀".repeat(63),
    }
}

impl FName {
    fn get(&self) -> String {
        match self {
            FName::Dict(i) => name_dict(*i),
            FName::Raw(s) => s.clone(),
        }
    }
}

#[derive(Arbitrary, Debug, Clone)]
pub enum FTarget {
    Dict(u8),
    Raw(String),
}

impl FTarget {
    fn get(&self, w: &World) -> String {
        match self {
            FTarget::Raw(s) => s.clone(),
            FTarget::Dict(i) => {
                let p = w.parent.display().to_string();
                let d = w.dest.display().to_string();
                let t: [String; 16] = [
                    "..".into(),
                    "../..".into(),
                    "../../..".into(),
                    "../escape".into(),
                    "../../escape".into(),
                    "/".into(),
                    p.clone(),
                    format!("{p}/escape"),
                    d,
                    "a".into(),
                    "sub".into(),
                    "sub/..".into(),
                    ".".into(),
                    String::new(),
                    "../state".into(),
                    "x.txt".into(),
                ];
                t[*i as usize % t.len()].clone()
            }
        }
    }
}

#[derive(Arbitrary, Debug, Clone)]
pub enum FSize {
    /// The size of content k (the file "has" that content).
    Content(u8),
    Raw(u64),
}

#[derive(Arbitrary, Debug, Clone)]
pub enum FKind {
    Dir,
    File(FSize),
    Symlink(FTarget),
}

#[derive(Arbitrary, Debug, Clone)]
pub enum FMode {
    None,
    Perm(u16),
    Raw(u32),
}

#[derive(Arbitrary, Debug, Clone)]
pub enum FTime {
    Zero,
    Small(u8),
    Raw(i64, u32),
}

#[derive(Arbitrary, Debug, Clone)]
pub struct FEntry {
    pub parent: u8,
    pub name: FName,
    pub kind: FKind,
    pub mode: FMode,
    pub mtime: FTime,
}

#[derive(Arbitrary, Debug, Clone)]
pub enum FExclude {
    Dict(u8),
    Raw(String),
}

#[derive(Arbitrary, Debug, Clone)]
pub struct FPass {
    pub checksum: bool,
    pub dry_run: bool,
    pub delete_excluded: bool,
    pub max_delete: Option<u8>,
    pub excludes: Vec<FExclude>,
}

/// One scripted client message (or a short run of them).
#[derive(Arbitrary, Debug, Clone)]
pub enum FMsg {
    /// BeginPass + Entries + EndManifest in one go. `strict` repairs the
    /// manifest so it validates (root first, parents are earlier
    /// directories, valid and unique names, opaque/partial are directories).
    Pass {
        opts: FPass,
        strict: bool,
        entries: Vec<FEntry>,
        opaque: Vec<u8>,
        partial: Vec<u8>,
        /// Hard links sent between the entries and the end (entry, leader).
        links: Vec<(FId, FId)>,
    },
    BeginPass(FPass),
    /// Hard links (entry, leader).
    Links(Vec<(FId, FId)>),
    /// Hard links to earlier pages (entry, leader path as names; an empty
    /// path marks a group's first name).
    FarLinks(Vec<(FId, Vec<FName>)>),
    /// Extended attributes: per entry, (name from a dictionary, value).
    Xattrs(Vec<(FId, Vec<(u8, Vec<u8>)>)>),
    Entries {
        /// Prepend a valid root entry.
        root: bool,
        entries: Vec<FEntry>,
    },
    EndManifest {
        opaque: Vec<u8>,
        partial: Vec<u8>,
    },
    /// Ends a page of a paged pass (protocol 6).
    EndPage {
        opaque: Vec<u8>,
        partial: Vec<u8>,
    },
    /// `content: None` is the content the manifest gave that file.
    Summary {
        id: FId,
        content: Option<u8>,
        inline: bool,
        tweak: Option<Tweak>,
    },
    GroupHashes {
        id: FId,
        content: Option<u8>,
        start: u8,
        count: u8,
        tweak: Option<Tweak>,
    },
    GroupChunks {
        id: FId,
        content: Option<u8>,
        group: u8,
        tweak: Option<Tweak>,
    },
    Chunk {
        id: FId,
        content: Option<u8>,
        index: u8,
        tweak: Option<Tweak>,
    },
    /// The chunks of a content from `from` on, in order.
    AllChunks {
        id: FId,
        content: Option<u8>,
        from: u8,
    },
    FileFailed {
        id: FId,
        reason: String,
    },
    Skip {
        id: FId,
    },
    Bye,
    /// An arbitrary frame payload.
    Raw(Vec<u8>),
}

/// A deviation from the well-behaved answer to one server request.
#[derive(Arbitrary, Debug, Clone)]
pub enum Fault {
    Tweak(Tweak),
    /// Answer with the summary of another content.
    OtherContent(u8),
    /// No answer at all.
    Omit,
    FileFailed,
    Skip,
    /// Answer twice.
    Twice,
    /// Send this first.
    Before(FMsg),
}

#[derive(Arbitrary, Debug, Clone)]
pub enum Step {
    Send(FMsg),
    /// Read what the server says and answer its requests like a real client
    /// would, until `requests` (1..=32) are answered, a pass ends, or the
    /// server goes quiet. The fault, if any, hits the `at`-th request.
    Answer {
        requests: u8,
        inline: bool,
        fault: Option<(u8, Fault)>,
    },
    /// Someone else changes DEST while the server is between passes.
    External(Ext),
}

/// A change to DEST made behind the server's back (only between passes,
/// when the server is waiting for the next BeginPass, so runs stay
/// deterministic). `path` is one or two names from the name dictionary.
#[derive(Arbitrary, Debug, Clone)]
pub enum Ext {
    /// `mv DEST/path TRAP/n`: the server must not write there afterwards.
    MoveOut { path: (u8, Option<u8>) },
    /// `rm -rf DEST/path`.
    Remove { path: (u8, Option<u8>) },
    /// Replace DEST/path with a symlink to TRAP.
    SymlinkOut { path: (u8, Option<u8>) },
    /// Replace DEST/path with a plain file.
    FileOver { path: (u8, Option<u8>) },
}

#[derive(Arbitrary, Debug)]
pub struct Input {
    pub contents: Vec<FContent>,
    pub steps: Vec<Step>,
}

fn mtime(t: &FTime) -> Timestamp {
    match *t {
        FTime::Zero => Timestamp::default(),
        FTime::Small(n) => Timestamp {
            secs: 1_600_000_000 + (n % 4) as i64,
            nanos: (n / 4) as u32 * 1000,
        },
        FTime::Raw(secs, nanos) => Timestamp { secs, nanos },
    }
}

fn exclude(e: &FExclude) -> String {
    const PATS: &[&str] = &[
        "*.txt", "a", "/b", "**/c", "!x.txt", "[", "\\", "sub/", "*", "**", "",
    ];
    match e {
        FExclude::Dict(i) => PATS[*i as usize % PATS.len()].to_string(),
        FExclude::Raw(s) => s.clone(),
    }
}

fn pass_options(p: &FPass) -> PassOptions {
    PassOptions {
        checksum: p.checksum,
        dry_run: p.dry_run,
        delete_excluded: p.delete_excluded,
        max_delete: p.max_delete.map(u64::from),
        excludes: p.excludes.iter().take(4).map(exclude).collect(),
        allow_empty_source: p.delete_excluded && p.checksum,
        xattrs: p.checksum,
    }
}

fn tweak_chunks(mut c: Vec<ChunkRef>, t: Option<&Tweak>) -> Vec<ChunkRef> {
    match t {
        Some(Tweak::ChunkLen { index, len }) if !c.is_empty() => {
            let i = *index as usize % c.len();
            c[i].len = *len;
        }
        Some(Tweak::Hash(i)) if !c.is_empty() => {
            let n = c.len();
            c[*i as usize % n].hash.0[0] ^= 1;
        }
        Some(Tweak::DropLast) => {
            c.pop();
        }
        Some(Tweak::Duplicate(i)) if !c.is_empty() => {
            let x = c[*i as usize % c.len()];
            c.push(x);
        }
        _ => {}
    }
    c
}

fn root_entry() -> Entry {
    Entry {
        parent: 0,
        name: String::new(),
        kind: Kind::Dir,
        mode: None,
        mtime: Timestamp::default(),
    }
}

/// Turns structured messages into wire messages, remembering the last
/// manifest (which ids are files, and which content each file declared).
struct Conv<'a> {
    w: &'static World,
    contents: &'a [Content],
    files: Vec<u32>,
    declared: HashMap<u32, usize>,
    /// Entries sent so far in the current manifest.
    count: usize,
    /// The server's basis per file id (piece hash -> piece index).
    basis: HashMap<u32, BasisMap>,
    /// Chunk deltas waiting for the server's fine pieces (second round).
    pending: HashMap<(u32, u32), (Vec<DeltaOp>, Vec<Gap>)>,
    /// A BeginPass was sent and no entries since: the next entries start a
    /// new manifest.
    fresh: bool,
}

impl<'a> Conv<'a> {
    fn id(&self, f: FId) -> u32 {
        match f {
            FId::File(k) if !self.files.is_empty() => self.files[k as usize % self.files.len()],
            FId::File(k) | FId::Small(k) => (k % 16) as u32,
            FId::Any(n) => n,
        }
    }

    fn content(&self, id: u32, over: Option<u8>) -> &'a Content {
        let k = match over {
            Some(k) => k as usize % self.contents.len(),
            None => self.declared.get(&id).copied().unwrap_or(0),
        };
        &self.contents[k]
    }

    fn begin(&mut self) {
        self.fresh = true;
        self.basis.clear();
        self.pending.clear();
    }

    /// Remembers (or, when empty, withdraws) the basis offered for a file.
    fn note_basis(&mut self, id: u32, avg: u32, hashes: &[u8]) {
        match BasisMap::parse(avg, hashes) {
            Ok(map) if !hashes.is_empty() => {
                self.basis.insert(id, map);
            }
            _ => {
                self.basis.remove(&id);
            }
        }
    }

    /// Chunk `index` of a content as a real client sends it: a delta
    /// against the server's basis when there is one and it pays off; for
    /// even chunks with literal gaps, first a second-round request for the
    /// old ranges around them (tweaks spoil the ranges or the final delta).
    fn chunk_or_delta(&mut self, id: u32, c: &Content, index: u32, tweak: Option<&Tweak>) -> ClientMsg {
        let data = c.blobs.get(index as usize).map(|&b| blob(b));
        if let (Some(data), Some(basis)) = (data, self.basis.get(&id)) {
            if let Some(ops) = make_delta(data, basis) {
                stats::delta();
                let asked = gaps(&ops, basis, |_, _| true);
                if index % 2 == 0 && !asked.is_empty() {
                    let ranges = tweak_ranges(asked.iter().map(|g| (g.first, g.count)).collect(), tweak);
                    self.pending.insert((id, index), (tweak_ops(ops, tweak), asked));
                    return ClientMsg::NeedFine { id, index, ranges };
                }
                return ClientMsg::ChunkDelta {
                    id,
                    index,
                    ops: tweak_ops(ops, tweak),
                };
            }
        }
        self.chunk(id, c, index, tweak)
    }

    /// The delta waiting for the server's fine pieces, refined with them
    /// (or as it was, when the answer is empty or does not fit).
    fn on_fine(&mut self, id: u32, index: u32, counts: &[u32], hashes: &[u8]) -> Option<ClientMsg> {
        let (ops, asked) = self.pending.remove(&(id, index))?;
        let ops = refine(ops.clone(), &asked, counts, hashes).unwrap_or(ops);
        Some(ClientMsg::ChunkDelta { id, index, ops })
    }

    /// Converts manifest entries (after `lead`, already converted);
    /// `strict` repairs them.
    fn entries(&mut self, lead: Vec<Entry>, entries: &[FEntry], strict: bool) -> Vec<Entry> {
        if self.fresh {
            self.files.clear();
            self.declared.clear();
            self.count = 0;
            self.fresh = false;
        }
        let base = self.count;
        let mut out: Vec<Entry> = lead;
        let mut dirs: Vec<u32> = vec![0];
        let mut seen: HashSet<(u32, String)> = HashSet::new();
        for e in entries {
            let id = (base + out.len()) as u32;
            if out.len() >= 64 {
                break;
            }
            let mut parent = e.parent as u32;
            let name = e.name.get();
            if strict {
                parent = dirs[e.parent as usize % dirs.len()];
                if validate_name(&name).is_err() || !seen.insert((parent, name.clone())) {
                    continue;
                }
            }
            let kind = match &e.kind {
                FKind::Dir => {
                    dirs.push(id);
                    Kind::Dir
                }
                FKind::File(FSize::Content(k)) => {
                    let k = *k as usize % self.contents.len();
                    self.files.push(id);
                    self.declared.insert(id, k);
                    Kind::File {
                        size: self.contents[k].size,
                    }
                }
                FKind::File(FSize::Raw(size)) => {
                    self.files.push(id);
                    Kind::File {
                        size: if self.w.small_sizes {
                            // Below 2^48: no sum of a manifest's sizes
                            // overflows (finding 1 in README.md, fixed).
                            *size >> 16
                        } else {
                            *size
                        },
                    }
                }
                FKind::Symlink(t) => Kind::Symlink {
                    target: t.get(self.w),
                },
            };
            out.push(Entry {
                parent,
                name,
                kind,
                mode: match e.mode {
                    FMode::None => None,
                    FMode::Perm(p) => Some(p as u32 & 0o7777),
                    FMode::Raw(r) => Some(r),
                },
                mtime: mtime(&e.mtime),
            });
        }
        self.count += out.len();
        out
    }

    fn ids(&self, raw: &[u8], dirs_only: Option<&[Entry]>) -> Vec<u32> {
        let raw = raw.iter().take(8);
        match dirs_only {
            None => raw.map(|&b| (b % 16) as u32).collect(),
            Some(entries) => {
                let dirs: Vec<u32> = (0..entries.len() as u32)
                    .filter(|&i| entries[i as usize].kind.is_dir())
                    .collect();
                raw.map(|&b| dirs[b as usize % dirs.len()]).collect()
            }
        }
    }

    fn summary(&self, id: u32, c: &Content, inline: bool, tweak: Option<&Tweak>) -> ClientMsg {
        let mut size = c.size;
        let mut hash = c.hash;
        match tweak {
            Some(Tweak::Size(s)) => size = *s,
            Some(Tweak::SizeDelta(d)) => size = size.wrapping_add(*d as i64 as u64),
            Some(Tweak::Hash(_)) if c.chunks.is_empty() || !inline => hash.0[0] ^= 1,
            _ => {}
        }
        ClientMsg::Summary {
            id,
            size,
            hash,
            chunks: inline.then(|| tweak_chunks(c.chunks.clone(), tweak)),
        }
    }

    fn group_hashes(
        &self,
        id: u32,
        c: &Content,
        start: usize,
        count: usize,
        tweak: Option<&Tweak>,
    ) -> ClientMsg {
        let start = start % (c.groups.len() + 1);
        let end = (start + count).min(c.groups.len());
        let mut groups: Vec<GroupRef> = c.groups[start..end].iter().map(|g| g.0).collect();
        let mut total = c.groups.len() as u32;
        match tweak {
            Some(Tweak::Count(n)) => total = *n,
            Some(Tweak::SizeDelta(d)) => total = total.wrapping_add(*d as i32 as u32),
            Some(Tweak::Size(s)) => total = *s as u32,
            Some(Tweak::Hash(i)) if !groups.is_empty() => {
                let n = groups.len();
                groups[*i as usize % n].hash.0[0] ^= 1;
            }
            Some(Tweak::ChunkLen { index, len }) if !groups.is_empty() => {
                let n = groups.len();
                groups[*index as usize % n].count = *len;
            }
            Some(Tweak::Duplicate(i)) if !groups.is_empty() => {
                let x = groups[*i as usize % groups.len()];
                groups.push(x);
            }
            Some(Tweak::DropLast) => {
                groups.pop();
            }
            _ => {}
        }
        ClientMsg::GroupHashes {
            id,
            start: start as u32,
            total,
            groups,
        }
    }

    fn group_chunks(&self, id: u32, c: &Content, group: u32, tweak: Option<&Tweak>) -> ClientMsg {
        let chunks = c
            .groups
            .get(group as usize)
            .map(|g| g.1.clone())
            .unwrap_or_default();
        ClientMsg::GroupChunks {
            id,
            group,
            chunks: tweak_chunks(chunks, tweak),
        }
    }

    fn chunk(&self, id: u32, c: &Content, index: u32, tweak: Option<&Tweak>) -> ClientMsg {
        let mut data = c
            .blobs
            .get(index as usize)
            .map(|&b| blob(b).to_vec())
            .unwrap_or_default();
        match tweak {
            Some(Tweak::Hash(j)) if !data.is_empty() => {
                let n = data.len();
                data[*j as usize % n] ^= 1;
            }
            Some(Tweak::DropLast) => {
                data.pop();
            }
            Some(Tweak::Duplicate(j)) => data.push(*j),
            Some(Tweak::Size(n)) => data = vec![0x5a; (*n % 70_000) as usize],
            _ => {}
        }
        ClientMsg::Chunk { id, index, data }
    }

    fn links(&self, links: &[(FId, FId)]) -> ClientMsg {
        ClientMsg::Links(
            links
                .iter()
                .take(64)
                .map(|(e, l)| replica::protocol::HardLink {
                    entry: self.id(*e),
                    leader: self.id(*l),
                })
                .collect(),
        )
    }

    fn xattrs(&self, list: &[(FId, Vec<(u8, Vec<u8>)>)]) -> ClientMsg {
        const NAMES: &[&str] = &[
            "user.a",
            "user.b",
            "user.",
            "security.selinux",
            "system.posix_acl_access",
            "trusted.x",
            "user.a\0b",
            "",
        ];
        ClientMsg::Xattrs(
            list.iter()
                .take(16)
                .map(|(e, attrs)| replica::protocol::EntryXattrs {
                    entry: self.id(*e),
                    attrs: attrs
                        .iter()
                        .take(8)
                        .map(|(n, v)| replica::tree::xattr::Xattr {
                            name: NAMES[*n as usize % NAMES.len()].to_string(),
                            value: v.clone(),
                        })
                        .collect(),
                })
                .collect(),
        )
    }

    /// Wire payloads for one scripted message.
    fn script(&mut self, m: &FMsg, out: &mut Vec<Vec<u8>>) {
        let msg = match m {
            FMsg::Pass {
                opts,
                strict,
                entries,
                opaque,
                partial,
                links,
            } => {
                self.begin();
                out.push(encode(&ClientMsg::BeginPass(pass_options(opts))));
                let all = self.entries(vec![root_entry()], entries, *strict);
                let dirs = strict.then_some(&all[..]);
                let opaque = self.ids(opaque, dirs);
                let partial = self.ids(partial, dirs);
                // Two batches, as a real client may split them.
                let cut = all.len() / 2;
                out.push(encode(&ClientMsg::Entries(all[..cut].to_vec())));
                out.push(encode(&ClientMsg::Entries(all[cut..].to_vec())));
                if !links.is_empty() {
                    out.push(encode(&self.links(links)));
                }
                ClientMsg::EndManifest { opaque, partial }
            }
            FMsg::BeginPass(p) => {
                self.begin();
                ClientMsg::BeginPass(pass_options(p))
            }
            FMsg::Entries { root, entries } => {
                let lead = if *root {
                    vec![root_entry()]
                } else {
                    Vec::new()
                };
                ClientMsg::Entries(self.entries(lead, entries, false))
            }
            FMsg::EndManifest { opaque, partial } => ClientMsg::EndManifest {
                opaque: self.ids(opaque, None),
                partial: self.ids(partial, None),
            },
            FMsg::EndPage { opaque, partial } => ClientMsg::EndPage {
                opaque: self.ids(opaque, None),
                partial: self.ids(partial, None),
            },
            FMsg::Summary {
                id,
                content,
                inline,
                tweak,
            } => {
                let id = self.id(*id);
                self.summary(id, self.content(id, *content), *inline, tweak.as_ref())
            }
            FMsg::GroupHashes {
                id,
                content,
                start,
                count,
                tweak,
            } => {
                let id = self.id(*id);
                let c = self.content(id, *content);
                self.group_hashes(id, c, *start as usize, *count as usize, tweak.as_ref())
            }
            FMsg::GroupChunks {
                id,
                content,
                group,
                tweak,
            } => {
                let id = self.id(*id);
                let c = self.content(id, *content);
                let g = *group as u32 % (c.groups.len() as u32 + 1);
                self.group_chunks(id, c, g, tweak.as_ref())
            }
            FMsg::Chunk {
                id,
                content,
                index,
                tweak,
            } => {
                let id = self.id(*id);
                let c = self.content(id, *content);
                let i = *index as u32 % (c.blobs.len() as u32 + 1);
                self.chunk(id, c, i, tweak.as_ref())
            }
            FMsg::AllChunks { id, content, from } => {
                let id = self.id(*id);
                let c = self.content(id, *content);
                for i in *from as usize % (c.blobs.len() + 1)..c.blobs.len() {
                    out.push(encode(&self.chunk(id, c, i as u32, None)));
                }
                return;
            }
            FMsg::FileFailed { id, reason } => ClientMsg::FileFailed {
                id: self.id(*id),
                reason: reason.clone(),
            },
            FMsg::Skip { id } => ClientMsg::Skip { id: self.id(*id) },
            FMsg::Bye => ClientMsg::Bye,
            FMsg::Links(links) => self.links(links),
            FMsg::FarLinks(links) => ClientMsg::FarLinks(
                links
                    .iter()
                    .take(64)
                    .map(|(e, path)| replica::tree::FarLink {
                        entry: self.id(*e),
                        leader: path.iter().take(8).map(FName::get).collect(),
                    })
                    .collect(),
            ),
            FMsg::Xattrs(list) => self.xattrs(list),
            FMsg::Raw(bytes) => {
                out.push(bytes.clone());
                return;
            }
        };
        out.push(encode(&msg));
    }

    /// A well-behaved client's answer to one server request, with `fault`
    /// applied. Non-requests get no answer.
    fn answer(
        &mut self,
        req: &ServerMsg,
        inline: bool,
        fault: Option<&Fault>,
        out: &mut Vec<Vec<u8>>,
    ) {
        let tweak = match fault {
            Some(Fault::Tweak(t)) => Some(t),
            _ => None,
        };
        let mut msgs: Vec<ClientMsg> = Vec::new();
        let first_id = match req {
            ServerMsg::NeedFiles { ids } => {
                for &id in ids {
                    let c = match fault {
                        Some(Fault::OtherContent(k)) => self.content(id, Some(*k)),
                        _ => self.content(id, None),
                    };
                    msgs.push(self.summary(id, c, inline, tweak));
                }
                ids.first().copied()
            }
            ServerMsg::NeedGroupHashes { id } => {
                let c = self.content(*id, None);
                for (n, _) in c.groups.chunks(GROUPS_PER_MSG).enumerate() {
                    let start = n * GROUPS_PER_MSG;
                    msgs.push(self.group_hashes(*id, c, start, GROUPS_PER_MSG, tweak));
                }
                if c.groups.is_empty() {
                    msgs.push(self.group_hashes(*id, c, 0, 0, tweak));
                }
                Some(*id)
            }
            ServerMsg::NeedGroups { id, groups } => {
                let c = self.content(*id, None);
                for &g in groups.iter().take(4096) {
                    msgs.push(self.group_chunks(*id, c, g, tweak));
                }
                Some(*id)
            }
            ServerMsg::NeedChunks { id, ranges } => {
                let c = self.content(*id, None);
                'outer: for &(first, count) in ranges {
                    for i in first..first.saturating_add(count) {
                        if msgs.len() >= 4096 {
                            break 'outer;
                        }
                        msgs.push(self.chunk_or_delta(*id, c, i, tweak));
                    }
                }
                Some(*id)
            }
            _ => return,
        };
        let id = first_id.unwrap_or(0);
        match fault {
            Some(Fault::Omit) => return,
            Some(Fault::FileFailed) => {
                msgs = vec![ClientMsg::FileFailed {
                    id,
                    reason: "fuzz".into(),
                }]
            }
            Some(Fault::Skip) => msgs = vec![ClientMsg::Skip { id }],
            Some(Fault::Twice) => {
                let again = msgs.clone();
                msgs.extend(again);
            }
            Some(Fault::Before(m)) => self.script(m, out),
            _ => {}
        }
        out.extend(msgs.iter().map(encode));
    }
}

// -------------------------------------------------------------- session --

/// With `REPLICA_FUZZ_STATS` set, counts what the server answered over the
/// whole run and prints it at exit: a check that inputs get deep (files
/// published, moves, metadata) rather than bouncing off the first message.
mod stats {
    use replica::protocol::{Op, ServerMsg};
    use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

    const NAMES: [&str; 19] = [
        "NeedFiles",
        "NeedGroupHashes",
        "NeedGroups",
        "NeedChunks",
        "Done",
        "PassDone",
        "Fatal",
        "Report:created",
        "Report:updated",
        "Report:copied",
        "Report:moved",
        "Report:removed",
        "Report:metadata",
        "Report:error",
        "sessions",
        "other",
        "Basis",
        "sent:ChunkDelta",
        "Fine",
    ];
    static COUNTS: [AtomicU64; 19] = [const { AtomicU64::new(0) }; 19];
    static REASONS: std::sync::Mutex<std::collections::BTreeMap<String, u64>> =
        std::sync::Mutex::new(std::collections::BTreeMap::new());

    pub fn enabled() -> bool {
        static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *ON.get_or_init(|| {
            let on = std::env::var_os("REPLICA_FUZZ_STATS").is_some();
            if on {
                unsafe { libc::atexit(print) };
            }
            on
        })
    }

    pub fn delta() {
        if enabled() {
            COUNTS[17].fetch_add(1, Relaxed);
        }
    }

    pub fn session() {
        if enabled() {
            COUNTS[14].fetch_add(1, Relaxed);
        }
    }

    pub fn note(m: &ServerMsg) {
        if !enabled() {
            return;
        }
        let i = match m {
            ServerMsg::NeedFiles { .. } => 0,
            ServerMsg::NeedGroupHashes { .. } => 1,
            ServerMsg::NeedGroups { .. } => 2,
            ServerMsg::NeedChunks { .. } => 3,
            ServerMsg::Done { .. } => 4,
            ServerMsg::PassDone(_) => 5,
            ServerMsg::Basis { .. } => 16,
            ServerMsg::Fine { .. } => 18,
            ServerMsg::Fatal { reason } => {
                let short: String = reason.chars().take(40).collect();
                *REASONS
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .entry(short)
                    .or_default() += 1;
                6
            }
            ServerMsg::Report(r) => match r.op {
                Op::Created => 7,
                Op::Updated => 8,
                Op::Copied => 9,
                Op::Moved => 10,
                Op::Removed => 11,
                Op::Metadata => 12,
                Op::Error => 13,
                #[allow(unreachable_patterns)]
                _ => 15,
            },
            // Informational messages added later (Plan, ...).
            #[allow(unreachable_patterns)]
            _ => 15,
        };
        COUNTS[i].fetch_add(1, Relaxed);
    }

    extern "C" fn print() {
        let line: Vec<String> = NAMES
            .iter()
            .zip(&COUNTS)
            .map(|(n, c)| format!("{n}={}", c.load(Relaxed)))
            .collect();
        eprintln!("session stats: {}", line.join(" "));
        let reasons = REASONS.lock().unwrap_or_else(|e| e.into_inner());
        let mut top: Vec<_> = reasons.iter().collect();
        top.sort_by(|a, b| b.1.cmp(a.1));
        for (r, n) in top.into_iter().take(12) {
            eprintln!("  fatal x{n}: {r}");
        }
    }
}

fn frame(payload: &[u8]) -> Vec<u8> {
    assert!(payload.len() <= MAX_FRAME);
    let mut v = Vec::with_capacity(4 + payload.len());
    v.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    v.extend_from_slice(payload);
    v
}

/// The client's reading side. Cancel-safe: bytes read before a timeout
/// stay in `buf`, so a frame cut by a timeout is completed by the next call.
struct Frames<R> {
    r: R,
    buf: Vec<u8>,
}

impl<R: tokio::io::AsyncRead + Unpin> Frames<R> {
    /// The next frame; None at the end of the stream.
    async fn next(&mut self) -> Option<Vec<u8>> {
        loop {
            match parse_frame(&self.buf) {
                Ok(Some((payload, used))) => {
                    let f = payload.to_vec();
                    self.buf.drain(..used);
                    return Some(f);
                }
                Ok(None) => {}
                Err(e) => panic!("server sent a bad frame: {e}"),
            }
            self.buf.reserve(64 * 1024);
            match self.r.read_buf(&mut self.buf).await {
                Ok(0) | Err(_) => {
                    assert!(
                        self.buf.is_empty(),
                        "server's stream ended inside a frame ({} bytes left)",
                        self.buf.len()
                    );
                    return None;
                }
                Ok(_) => {}
            }
        }
    }
}

/// Every frame the server sends must be a keep-alive or a `ServerMsg`.
fn server_msg(f: &[u8]) -> Option<ServerMsg> {
    if f.is_empty() {
        return None;
    }
    match decode::<ServerMsg>(f) {
        Ok(m) => {
            stats::note(&m);
            Some(m)
        }
        Err(e) => panic!("server sent an undecodable frame ({e}): {f:?}"),
    }
}

/// How long an `Answer` step waits for the server's next message before it
/// concludes the server is waiting for the client.
const QUIET: Duration = Duration::from_millis(50);

async fn run_session(w: &'static World, contents: &[Content], steps: &[Step]) {
    stats::session();
    let (client, server) = tokio::io::duplex(1 << 20);
    let session = tokio::spawn(accept_session(
        Box::new(server),
        "fuzz".into(),
        w.shared.clone(),
        None,
    ));
    let (rd, mut wr) = tokio::io::split(client);
    let mut rd = Frames {
        r: rd,
        buf: Vec::new(),
    };
    let hello = Hello {
        magic: MAGIC,
        version: PROTOCOL_VERSION,
        chunker: CHUNKER_VERSION,
        token: String::new(),
        compress: replica::protocol::Compress::Off,
        client: "fuzz".into(),
        purpose: Purpose::Sync,
    };
    wr.write_all(&frame(&encode(&hello)))
        .await
        .expect("send hello");
    wr.flush().await.expect("flush hello");
    let reply = tokio::time::timeout(w.timeout, rd.next())
        .await
        .expect("no handshake reply in time")
        .expect("connection closed instead of a handshake reply");
    match decode::<HelloReply>(&reply) {
        Ok(HelloReply::Welcome { .. }) => {}
        other => panic!("handshake not welcomed: {other:?} (previous session still busy?)"),
    }

    let mut conv = Conv {
        w,
        contents,
        files: Vec::new(),
        declared: HashMap::new(),
        count: 0,
        basis: HashMap::new(),
        pending: HashMap::new(),
        fresh: true,
    };
    // Nothing to wait for: the server is between passes (or gone).
    let mut idle = true;
    let mut gone = false;
    let mut moved = 0usize;
    // What TRAP held after the last external change: the server must not
    // change it (everything in it used to be in DEST).
    let mut trap: Option<Vec<(String, String)>> = None;
    'steps: for step in steps.iter().take(64) {
        let mut out = Vec::new();
        match step {
            Step::Send(m) => {
                conv.script(m, &mut out);
                idle = false;
            }
            Step::External(e) => {
                // Only while the server waits for the next pass: it has
                // answered PassDone and nothing was sent since.
                if idle && !gone && external(w, e, moved) {
                    moved += 1;
                    trap = Some(snapshot(&w.trap));
                }
            }
            Step::Answer {
                requests,
                inline,
                fault,
            } => {
                let want = 1 + *requests as usize % 32;
                let mut answered = 0;
                while !idle && !gone && answered < want {
                    let f = match tokio::time::timeout(QUIET, rd.next()).await {
                        Err(_) => break,
                        Ok(None) => {
                            gone = true;
                            break;
                        }
                        Ok(Some(f)) => f,
                    };
                    let Some(m) = server_msg(&f) else { continue };
                    match m {
                        ServerMsg::PassDone(_) => idle = true,
                        ServerMsg::Basis {
                            id,
                            avg,
                            ref hashes,
                        } => conv.note_basis(id, avg, hashes),
                        ServerMsg::Fatal { .. } => gone = true,
                        ServerMsg::Fine {
                            id,
                            index,
                            ref counts,
                            ref hashes,
                        } => {
                            if let Some(d) = conv.on_fine(id, index, counts, hashes) {
                                if wr.write_all(&frame(&encode(&d))).await.is_err() {
                                    break 'steps;
                                }
                            }
                        }
                        ServerMsg::NeedFiles { .. }
                        | ServerMsg::NeedGroupHashes { .. }
                        | ServerMsg::NeedGroups { .. }
                        | ServerMsg::NeedChunks { .. } => {
                            let hit = fault
                                .as_ref()
                                .filter(|(at, _)| *at as usize % want == answered)
                                .map(|(_, f)| f);
                            let mut answer = Vec::new();
                            conv.answer(&m, *inline, hit, &mut answer);
                            answered += 1;
                            for p in &answer {
                                if wr.write_all(&frame(p)).await.is_err() {
                                    break 'steps;
                                }
                            }
                            if wr.flush().await.is_err() {
                                break 'steps;
                            }
                        }
                        _ => {}
                    }
                }
            }
        }
        for p in &out {
            // The server may have hung up already; that is fine.
            if wr.write_all(&frame(p)).await.is_err() {
                break 'steps;
            }
        }
        if wr.flush().await.is_err() {
            break;
        }
    }
    let _ = wr.shutdown().await;

    let done = tokio::time::timeout(w.timeout, async {
        while let Some(f) = rd.next().await {
            server_msg(&f);
        }
        session.await.expect("session task panicked");
    })
    .await;
    if done.is_err() {
        panic!(
            "session did not end within {:?} after the client closed its side",
            w.timeout
        );
    }
    if let Some(before) = trap {
        let after = snapshot(&w.trap);
        if before != after {
            panic!(
                "the server changed {} (moved out of DEST before a later pass) -- it wrote outside DEST.\nbefore: {before:?}\nafter:  {after:?}",
                w.trap.display()
            );
        }
    }
    // Let the runtime drop the finished connection tasks (and the pipe)
    // before libFuzzer's per-input leak check.
    for _ in 0..4 {
        tokio::task::yield_now().await;
    }
    // Empty TRAP for the next input.
    if let Ok(rd) = std::fs::read_dir(&w.trap) {
        for e in rd.flatten() {
            remove_any(&e.path());
        }
    }
}

/// DEST/path, if every component but the last is a real directory: the
/// harness must not follow a symlink the server legitimately created (say
/// `DEST/... -> ..`) and then blame the server for what it wrote.
fn ext_path(w: &World, p: &(u8, Option<u8>)) -> Option<PathBuf> {
    let mut path = w.dest.clone();
    let names: Vec<u8> = std::iter::once(p.0).chain(p.1).collect();
    for (i, n) in names.iter().enumerate() {
        path.push(name_dict(n % 8)); // a, b, c, sub, x.txt, ...: valid names
        let last = i + 1 == names.len();
        if !last && !std::fs::symlink_metadata(&path).is_ok_and(|m| m.is_dir()) {
            return None;
        }
    }
    Some(path)
}

fn remove_any(p: &std::path::Path) {
    match std::fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => {
            let _ = std::fs::remove_dir_all(p);
        }
        Ok(_) => {
            let _ = std::fs::remove_file(p);
        }
        Err(_) => {}
    }
}

/// Carries out an external change; true if something changed.
fn external(w: &World, e: &Ext, n: usize) -> bool {
    let (Ext::MoveOut { path }
    | Ext::Remove { path }
    | Ext::SymlinkOut { path }
    | Ext::FileOver { path }) = e;
    let Some(p) = ext_path(w, path) else {
        return false;
    };
    let exists = std::fs::symlink_metadata(&p).is_ok();
    match e {
        Ext::MoveOut { .. } => exists && std::fs::rename(&p, w.trap.join(n.to_string())).is_ok(),
        Ext::Remove { .. } => {
            remove_any(&p);
            exists
        }
        Ext::SymlinkOut { .. } => {
            remove_any(&p);
            std::os::unix::fs::symlink(&w.trap, &p).is_ok()
        }
        Ext::FileOver { .. } => {
            remove_any(&p);
            std::fs::write(&p, b"external").is_ok()
        }
    }
}

/// Everything below TRAP: path, kind, size and content hash (no links followed).
fn snapshot(dir: &std::path::Path) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            let rel = p
                .strip_prefix(dir)
                .unwrap_or(&p)
                .to_string_lossy()
                .into_owned();
            let what = match std::fs::symlink_metadata(&p) {
                Ok(m) if m.is_dir() => {
                    stack.push(p.clone());
                    "dir".to_string()
                }
                Ok(m) if m.is_file() => format!(
                    "file {} {}",
                    m.len(),
                    std::fs::read(&p)
                        .map(|b| blake3::hash(&b).to_hex().to_string())
                        .unwrap_or_default()
                ),
                Ok(_) => format!("link {:?}", std::fs::read_link(&p).ok()),
                Err(e) => format!("error {e}"),
            };
            out.push((rel, what));
        }
    }
    out.sort();
    out
}

fn check_nothing_outside(w: &World) {
    let mut names: Vec<String> = std::fs::read_dir(&w.parent)
        .expect("read fuzz temp dir")
        .map(|e| {
            e.expect("dir entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    names.sort();
    assert_eq!(
        names,
        ["dest", "state", "trap"],
        "something was created outside DEST in {}",
        w.parent.display()
    );
    let meta = std::fs::symlink_metadata(&w.dest).expect("DEST still exists");
    assert!(meta.is_dir(), "DEST is no longer a directory");
}

/// Runs one input (see the module docs for what is asserted).
pub fn run(input: Input) {
    let w = world();
    let mut contents: Vec<Content> = input.contents.iter().take(4).map(Content::build).collect();
    if contents.is_empty() {
        contents.push(Content::build(&FContent {
            chunks: vec![3, 1],
            group_cuts: vec![],
        }));
    }
    w.rt.block_on(run_session(w, &contents, &input.steps));
    check_nothing_outside(w);
}

//! Helpers shared by the black-box tests: building trees from a compact
//! spec, exact tree comparison, running `replica sync`, a `replica serve`
//! child process, parsing the operation log and the pass summary, speaking
//! the wire protocol over a raw TCP stream, and polling with a deadline.

#![allow(dead_code)]

pub mod scenarios;

use std::collections::BTreeMap;
use std::fmt;
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How long anything asynchronous may take before a test gives up.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// The binary under test.
pub fn bin() -> PathBuf {
    assert_cmd::cargo::cargo_bin("replica")
}

// ---------------------------------------------------------------------------
// Polling
// ---------------------------------------------------------------------------

/// Calls `cond` every few milliseconds until it holds or `deadline` has
/// passed; returns whether it held. Never a fixed sleep.
pub fn poll_until(deadline: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + deadline;
    let mut pause = Duration::from_millis(5);
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(100));
    }
}

// ---------------------------------------------------------------------------
// Deterministic data
// ---------------------------------------------------------------------------

/// `len` pseudo-random bytes from `seed` (splitmix64; incompressible enough
/// for zstd and for content-defined chunking).
pub fn random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        out.extend_from_slice(&z.to_le_bytes());
    }
    out.truncate(len);
    out
}

// ---------------------------------------------------------------------------
// Building trees
// ---------------------------------------------------------------------------

/// What one spec entry creates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SpecKind {
    Dir,
    File(Vec<u8>),
    Symlink(String),
}

/// One entry of a tree spec: a `/`-separated path relative to the root
/// (`""` is the root itself, which may only carry a mode and an mtime).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spec {
    pub path: String,
    pub kind: SpecKind,
    pub mode: Option<u32>,
    /// `None`: a deterministic mtime with non-zero nanoseconds is chosen.
    pub mtime: Option<(i64, u32)>,
}

impl Spec {
    pub fn mode(mut self, mode: u32) -> Self {
        self.mode = Some(mode);
        self
    }
    pub fn mtime(mut self, secs: i64, nanos: u32) -> Self {
        self.mtime = Some((secs, nanos));
        self
    }
}

/// A regular file with these bytes.
pub fn f(path: &str, data: impl AsRef<[u8]>) -> Spec {
    Spec {
        path: path.into(),
        kind: SpecKind::File(data.as_ref().to_vec()),
        mode: None,
        mtime: None,
    }
}

/// A directory (parents are created as needed; they get default metadata
/// unless listed themselves).
pub fn d(path: &str) -> Spec {
    Spec {
        path: path.into(),
        kind: SpecKind::Dir,
        mode: None,
        mtime: None,
    }
}

/// A symbolic link with this exact target text (never followed).
pub fn l(path: &str, target: &str) -> Spec {
    Spec {
        path: path.into(),
        kind: SpecKind::Symlink(target.into()),
        mode: None,
        mtime: None,
    }
}

/// The root directory's own metadata.
pub fn root() -> Spec {
    d("")
}

fn depth(p: &str) -> usize {
    if p.is_empty() {
        0
    } else {
        p.split('/').count()
    }
}

fn default_mtime(i: usize) -> (i64, u32) {
    // Deliberately odd nanoseconds so that any truncation shows.
    (
        1_500_000_000 + 86_400 * i as i64,
        (123_456_789u64 + 7_919 * i as u64) as u32 % 1_000_000_000,
    )
}

/// Creates the entries of `spec` under `root` (created if missing), then
/// gives every listed entry and the root their mode and mtime (directories
/// deepest first, after everything inside them exists).
pub fn build_tree(root: &Path, spec: &[Spec]) {
    fs::create_dir_all(root).unwrap();
    for s in spec {
        let p = root.join(&s.path);
        match &s.kind {
            SpecKind::Dir => {
                fs::create_dir_all(&p).unwrap_or_else(|e| panic!("mkdir {}: {e}", p.display()))
            }
            SpecKind::File(data) => {
                if let Some(parent) = p.parent() {
                    fs::create_dir_all(parent).unwrap();
                }
                fs::write(&p, data).unwrap_or_else(|e| panic!("write {}: {e}", p.display()));
            }
            SpecKind::Symlink(target) => {
                if let Some(parent) = p.parent() {
                    fs::create_dir_all(parent).unwrap();
                }
                make_symlink(target, &p);
            }
        }
    }
    // Files and symlinks first, then directories deepest first; the root
    // last of all unless it is listed (it is always given an mtime).
    let mut order: Vec<(usize, &Spec)> = spec.iter().enumerate().collect();
    order.sort_by_key(|(_, s)| match s.kind {
        SpecKind::Dir => (1, usize::MAX - depth(&s.path)),
        _ => (0, 0),
    });
    let root_listed = spec.iter().any(|s| s.path.is_empty());
    for (i, s) in order {
        let p = root.join(&s.path);
        let (secs, nanos) = s.mtime.unwrap_or_else(|| default_mtime(i + 1));
        match s.kind {
            SpecKind::Symlink(_) => set_symlink_mtime(&p, secs, nanos),
            _ => {
                if let Some(m) = s.mode {
                    set_mode(&p, m);
                }
                set_mtime(&p, secs, nanos);
            }
        }
    }
    if !root_listed {
        let (secs, nanos) = default_mtime(0);
        set_mtime(root, secs, nanos);
    }
}

pub fn system_time(secs: i64, nanos: u32) -> SystemTime {
    if secs >= 0 {
        UNIX_EPOCH + Duration::new(secs as u64, nanos)
    } else {
        UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs()) + Duration::from_nanos(nanos as u64)
    }
}

/// Sets the mtime of a file or directory (following nothing: never call it
/// on a symlink) with std's `File::set_times`.
pub fn set_mtime(p: &Path, secs: i64, nanos: u32) {
    let md = fs::symlink_metadata(p).unwrap();
    assert!(
        !md.file_type().is_symlink(),
        "set_mtime on a symlink: {}",
        p.display()
    );
    let file = if md.is_dir() {
        fs::File::open(p)
    } else {
        fs::OpenOptions::new()
            .write(true)
            .open(p)
            .or_else(|_| fs::File::open(p))
    }
    .unwrap_or_else(|e| panic!("open {}: {e}", p.display()));
    file.set_times(fs::FileTimes::new().set_modified(system_time(secs, nanos)))
        .unwrap_or_else(|e| panic!("set_times {}: {e}", p.display()));
}

#[cfg(unix)]
pub fn set_mode(p: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(p, fs::Permissions::from_mode(mode)).unwrap();
}

#[cfg(not(unix))]
pub fn set_mode(_p: &Path, _mode: u32) {}

#[cfg(unix)]
pub fn make_symlink(target: &str, link: &Path) {
    std::os::unix::fs::symlink(target, link)
        .unwrap_or_else(|e| panic!("symlink {}: {e}", link.display()));
}

#[cfg(windows)]
pub fn make_symlink(target: &str, link: &Path) {
    std::os::windows::fs::symlink_file(target, link)
        .unwrap_or_else(|e| panic!("symlink {}: {e}", link.display()));
}

/// Sets a symlink's own mtime (std cannot: `utimensat` with
/// `AT_SYMLINK_NOFOLLOW`).
#[cfg(unix)]
pub fn set_symlink_mtime(p: &Path, secs: i64, nanos: u32) {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(p.as_os_str().as_bytes()).unwrap();
    let times = [
        libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_OMIT,
        },
        libc::timespec {
            tv_sec: secs as libc::time_t,
            tv_nsec: nanos as _,
        },
    ];
    // SAFETY: `c` is a valid NUL-terminated path and `times` has two entries.
    let rc = unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            c.as_ptr(),
            times.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    assert_eq!(
        rc,
        0,
        "utimensat {}: {}",
        p.display(),
        std::io::Error::last_os_error()
    );
}

#[cfg(not(unix))]
pub fn set_symlink_mtime(_p: &Path, _secs: i64, _nanos: u32) {}

// ---------------------------------------------------------------------------
// Snapshots and exact comparison
// ---------------------------------------------------------------------------

/// What a snapshot saw at one path.
#[derive(Clone, PartialEq, Eq)]
pub enum Kind {
    Dir,
    File(Vec<u8>),
    Symlink(String),
    /// FIFO, socket, device.
    Special,
}

impl fmt::Debug for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Kind::Dir => write!(f, "dir"),
            Kind::File(b) if b.len() <= 32 => write!(f, "file {:?}", String::from_utf8_lossy(b)),
            Kind::File(b) => write!(
                f,
                "file of {} bytes (blake3 {})",
                b.len(),
                &blake3::hash(b).to_hex()[..12]
            ),
            Kind::Symlink(t) => write!(f, "symlink -> {t:?}"),
            Kind::Special => write!(f, "special file"),
        }
    }
}

/// One entry of a snapshot (`lstat`, never following a link).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    pub kind: Kind,
    /// `mode & 0o7777` (0 where the platform has none).
    pub mode: u32,
    /// Seconds and nanoseconds since the epoch.
    pub mtime: (i64, u32),
    /// Inode number (not compared by [`assert_trees_equal`]).
    pub ino: u64,
}

/// Everything below `root`, keyed by `/`-joined relative path; the root
/// itself is `"."`.
pub type Snapshot = BTreeMap<String, Node>;

pub fn node_of(p: &Path) -> Node {
    let md = fs::symlink_metadata(p).unwrap_or_else(|e| panic!("lstat {}: {e}", p.display()));
    let ft = md.file_type();
    let kind = if ft.is_symlink() {
        Kind::Symlink(fs::read_link(p).unwrap().to_string_lossy().into_owned())
    } else if ft.is_dir() {
        Kind::Dir
    } else if ft.is_file() {
        Kind::File(fs::read(p).unwrap())
    } else {
        Kind::Special
    };
    #[cfg(unix)]
    let (mode, mtime, ino) = {
        use std::os::unix::fs::MetadataExt;
        (
            md.mode() & 0o7777,
            (md.mtime(), md.mtime_nsec() as u32),
            md.ino(),
        )
    };
    #[cfg(not(unix))]
    let (mode, mtime, ino) = {
        let t = md.modified().unwrap();
        let (secs, nanos) = match t.duration_since(UNIX_EPOCH) {
            Ok(d) => (d.as_secs() as i64, d.subsec_nanos()),
            Err(_) => (0, 0),
        };
        (0u32, (secs, nanos), 0u64)
    };
    Node {
        kind,
        mode,
        mtime,
        ino,
    }
}

/// Snapshots a whole tree, root included.
pub fn snapshot(root: &Path) -> Snapshot {
    let mut out = Snapshot::new();
    out.insert(".".into(), node_of(root));
    walk(root, "", &mut out);
    out
}

fn walk(dir: &Path, rel: &str, out: &mut Snapshot) {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read_dir {}: {e}", dir.display()))
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    for name in names {
        let p = dir.join(&name);
        let key = if rel.is_empty() {
            name.clone()
        } else {
            format!("{rel}/{name}")
        };
        let n = node_of(&p);
        let is_dir = n.kind == Kind::Dir;
        out.insert(key.clone(), n);
        if is_dir {
            walk(&p, &key, out);
        }
    }
}

/// The differences between two snapshots (inodes ignored), one line each.
pub fn diff_snapshots(a: &Snapshot, b: &Snapshot) -> Vec<String> {
    let mut diffs = Vec::new();
    let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    for k in keys {
        match (a.get(k), b.get(k)) {
            (Some(x), None) => diffs.push(format!("{k}: only in the first tree ({:?})", x.kind)),
            (None, Some(y)) => diffs.push(format!("{k}: only in the second tree ({:?})", y.kind)),
            (Some(x), Some(y)) => {
                if x.kind != y.kind {
                    diffs.push(format!("{k}: {:?} != {:?}", x.kind, y.kind));
                    continue;
                }
                if x.mode != y.mode {
                    diffs.push(format!("{k}: mode {:o} != {:o}", x.mode, y.mode));
                }
                if x.mtime != y.mtime {
                    diffs.push(format!(
                        "{k}: mtime {}.{:09} != {}.{:09}",
                        x.mtime.0, x.mtime.1, y.mtime.0, y.mtime.1
                    ));
                }
            }
            (None, None) => unreachable!(),
        }
    }
    diffs
}

#[track_caller]
pub fn assert_snapshots_equal(a: &Snapshot, b: &Snapshot) {
    let diffs = diff_snapshots(a, b);
    assert!(diffs.is_empty(), "trees differ:\n  {}", diffs.join("\n  "));
}

/// Asserts two trees are exactly equal: the same paths, entry types, file
/// bytes, symlink target texts, permission bits and mtimes to the
/// nanosecond (root directory included; empty directories count).
#[track_caller]
pub fn assert_trees_equal(a: &Path, b: &Path) {
    assert_snapshots_equal(&snapshot(a), &snapshot(b));
}

/// Asserts nothing in the tree changed: also inode numbers (no file was
/// rewritten or replaced).
#[track_caller]
pub fn assert_untouched(before: &Snapshot, after: &Snapshot) {
    assert_snapshots_equal(before, after);
    for (k, n) in before {
        let m = &after[k];
        assert_eq!(
            n.ino, m.ino,
            "{k} was replaced (inode {} -> {})",
            n.ino, m.ino
        );
    }
}

// ---------------------------------------------------------------------------
// Running `replica sync` and reading what it printed
// ---------------------------------------------------------------------------

/// The figures of a `summary:` line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Summary {
    pub files: u64,
    pub file_bytes: u64,
    pub dirs: u64,
    pub ops: u64,
    pub dry_run: bool,
    pub wire_sent: u64,
    pub wire_received: u64,
    pub content_sent: u64,
    pub rebuilt: u64,
    pub errors: u64,
}

/// The exact byte counts of a text: every integer written as `N B`
/// (the human-readable figures in parentheses are ignored).
pub fn byte_counts(text: &str) -> Vec<u64> {
    let toks: Vec<&str> = text.split_whitespace().collect();
    toks.windows(2)
        .filter(|w| w[1].trim_end_matches([',', ';']) == "B")
        .filter_map(|w| w[0].parse().ok())
        .collect()
}

/// The plain integers of a text (`3 files`, `6 dirs`, ...).
fn integers(text: &str) -> Vec<u64> {
    text.split_whitespace()
        .filter_map(|t| t.trim_end_matches([',', ';']).parse().ok())
        .collect()
}

/// Parses the exact figures of a pass, its `totals:` line: `... totals:
/// files=F file_bytes=N dirs=D ops=O content_sent=C reused=U moved_bytes=M
/// errors=E [wire_sent=S wire_received=R] [dry_run]` (no wire figures for a
/// local target: they are zero).
pub fn parse_summary(line: &str) -> Summary {
    let at = line
        .find("totals: ")
        .unwrap_or_else(|| panic!("not a totals line: {line}"));
    let words: Vec<&str> = line[at + "totals: ".len()..].split(' ').collect();
    let num = |key: &str| -> u64 {
        words
            .iter()
            .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
            .map(|v| v.parse().unwrap_or_else(|_| panic!("bad {key}: {line}")))
            .unwrap_or(0)
    };
    Summary {
        files: num("files"),
        file_bytes: num("file_bytes"),
        dirs: num("dirs"),
        ops: num("ops"),
        dry_run: words.contains(&"dry_run"),
        wire_sent: num("wire_sent"),
        wire_received: num("wire_received"),
        content_sent: num("content_sent"),
        rebuilt: num("reused"),
        errors: num("errors"),
    }
}

pub const OPS: [&str; 7] = [
    "created", "updated", "copied", "moved", "removed", "metadata", "error",
];

/// One operation line: `<RFC 3339 time> <op> <path>[ (from X)][: detail][ [reason...]]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpLine {
    pub op: String,
    pub path: String,
    /// The whole text after the op word.
    pub rest: String,
}

fn looks_like_timestamp(t: &str) -> bool {
    t.len() >= 20
        && t.as_bytes()[4] == b'-'
        && t.contains('T')
        && (t.ends_with('Z') || t.contains('+'))
}

/// The operation lines of a log text, in order.
pub fn op_lines(text: &str) -> Vec<OpLine> {
    let mut out = Vec::new();
    for line in text.lines() {
        let mut it = line.splitn(3, ' ');
        let (Some(ts), Some(op), Some(rest)) = (it.next(), it.next(), it.next()) else {
            continue;
        };
        if !looks_like_timestamp(ts) || !OPS.contains(&op) {
            continue;
        }
        let mut path = rest;
        for cut in [" [", " (from ", ": "] {
            if let Some(i) = path.find(cut) {
                path = &path[..i];
            }
        }
        out.push(OpLine {
            op: op.into(),
            path: path.into(),
            rest: rest.into(),
        });
    }
    out
}

/// What one `replica sync` run did.
pub struct Run {
    pub output: Output,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn code(&self) -> Option<i32> {
        self.output.status.code()
    }

    pub fn summary(&self) -> Summary {
        let line = self
            .stdout
            .lines()
            .rev()
            .find(|l| l.contains(" totals: "))
            .unwrap_or_else(|| panic!("no totals line\n{}", self.describe()));
        parse_summary(line)
    }

    /// Operation lines from stdout and stderr (errors go to stderr).
    pub fn ops(&self) -> Vec<OpLine> {
        let mut v = op_lines(&self.stdout);
        v.extend(op_lines(&self.stderr));
        v
    }

    /// Paths reported with this op.
    pub fn paths(&self, op: &str) -> Vec<String> {
        let mut v: Vec<String> = self
            .ops()
            .into_iter()
            .filter(|o| o.op == op)
            .map(|o| o.path)
            .collect();
        v.sort();
        v
    }

    pub fn describe(&self) -> String {
        format!(
            "status: {:?}\n--- stdout\n{}--- stderr\n{}",
            self.output.status, self.stdout, self.stderr
        )
    }

    #[track_caller]
    pub fn assert_code(&self, code: i32) -> &Self {
        assert_eq!(
            self.code(),
            Some(code),
            "unexpected exit code\n{}",
            self.describe()
        );
        self
    }

    /// Exit 0 and no error lines.
    #[track_caller]
    pub fn assert_ok(&self) -> &Self {
        self.assert_code(0);
        let errs: Vec<_> = self.ops().into_iter().filter(|o| o.op == "error").collect();
        assert!(
            errs.is_empty(),
            "error lines: {errs:?}\n{}",
            self.describe()
        );
        assert_eq!(self.summary().errors, 0, "{}", self.describe());
        self
    }
}

impl From<Output> for Run {
    fn from(output: Output) -> Self {
        Run {
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
            output,
        }
    }
}

/// Runs `replica sync SRC TARGET --state-dir STATE EXTRA...` and waits.
/// The environment never points at a real state directory or token.
pub fn run_sync(src: &Path, target: &str, state: &Path, extra_args: &[&str]) -> Output {
    let mut cmd = Command::new(bin());
    cmd.arg("sync")
        .arg(src)
        .arg(target)
        .arg("--state-dir")
        .arg(state)
        .args(extra_args);
    cmd.env_remove("REPLICA_TOKEN")
        .env_remove("REPLICA_STATE_DIR")
        .env("NO_COLOR", "1");
    cmd.stdin(Stdio::null());
    cmd.output().expect("run replica sync")
}

/// Runs `replica ARGS...` (anything, e.g. a usage error case).
pub fn run_replica(args: &[&std::ffi::OsStr]) -> Run {
    let out = Command::new(bin())
        .args(args)
        .env_remove("REPLICA_TOKEN")
        .env_remove("REPLICA_STATE_DIR")
        .stdin(Stdio::null())
        .output()
        .expect("run replica");
    out.into()
}

// ---------------------------------------------------------------------------
// Long-running child processes (`replica serve`, `replica sync --every`)
// ---------------------------------------------------------------------------

/// A child process whose stdout and stderr are drained continuously (so it
/// never blocks on a full pipe) into buffers; killed on drop.
pub struct Proc {
    child: Child,
    stdout: Arc<Mutex<String>>,
    stderr: Arc<Mutex<String>>,
    lines: std::sync::mpsc::Receiver<String>,
}

fn drain(
    r: impl Read + Send + 'static,
    buf: Arc<Mutex<String>>,
    lines: Option<std::sync::mpsc::Sender<String>>,
) {
    std::thread::spawn(move || {
        let mut r = BufReader::new(r);
        let mut line = String::new();
        loop {
            line.clear();
            match r.read_line(&mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) => {
                    buf.lock().unwrap().push_str(&line);
                    if let Some(tx) = &lines {
                        let _ = tx.send(line.clone());
                    }
                }
            }
        }
    });
}

impl Proc {
    /// Spawns `replica ARGS...` without any ambient token or state dir.
    pub fn spawn(args: &[&std::ffi::OsStr]) -> Proc {
        let mut child = Command::new(bin())
            .args(args)
            .env_remove("REPLICA_TOKEN")
            .env_remove("REPLICA_STATE_DIR")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn replica");
        let stdout = Arc::new(Mutex::new(String::new()));
        let stderr = Arc::new(Mutex::new(String::new()));
        let (tx, lines) = std::sync::mpsc::channel();
        drain(child.stdout.take().unwrap(), stdout.clone(), Some(tx));
        drain(child.stderr.take().unwrap(), stderr.clone(), None);
        Proc {
            child,
            stdout,
            stderr,
            lines,
        }
    }

    /// Waits for a stdout line starting with `prefix`; returns the rest.
    pub fn wait_line(&mut self, prefix: &str) -> Option<String> {
        let end = Instant::now() + DEADLINE;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    if let Some(rest) = line.trim_end().strip_prefix(prefix) {
                        return Some(rest.to_string());
                    }
                }
                Err(_) => return None,
            }
        }
    }

    pub fn stdout(&self) -> String {
        self.stdout.lock().unwrap().clone()
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    pub fn describe(&self) -> String {
        format!("--- stdout\n{}--- stderr\n{}", self.stdout(), self.stderr())
    }

    /// Whether the process is still running.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM (graceful shutdown).
    #[cfg(unix)]
    pub fn terminate(&self) {
        // SAFETY: plain kill(2) on our own child's pid.
        let rc = unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        assert_eq!(rc, 0, "kill: {}", std::io::Error::last_os_error());
    }

    /// Polls for the exit status until the deadline.
    pub fn wait_exit(&mut self, deadline: Duration) -> Option<std::process::ExitStatus> {
        let mut status = None;
        poll_until(deadline, || {
            status = self.child.try_wait().ok().flatten();
            status.is_some()
        });
        status
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `replica serve DEST --listen 127.0.0.1:0 --state-dir <temp>`; killed on
/// drop. TLS (the default) unless the extra arguments hold
/// `--insecure-plaintext`.
pub struct Server {
    pub proc: Proc,
    pub addr: std::net::SocketAddr,
    pub dest: PathBuf,
    pub state: tempfile::TempDir,
    /// The certificate fingerprint the server printed (None: plaintext).
    pub fingerprint: Option<String>,
}

impl Server {
    pub fn start(dest: &Path) -> Server {
        Server::start_with(dest, &[])
    }

    /// Starts a server with extra arguments (e.g. `--token`), waiting for
    /// its `listening on ADDR` line.
    pub fn start_with(dest: &Path, extra_args: &[&str]) -> Server {
        Server::start_on(
            dest,
            "127.0.0.1:0",
            tempfile::tempdir().unwrap(),
            extra_args,
        )
    }

    /// Starts a server on a given address with a given state directory.
    pub fn start_on(
        dest: &Path,
        listen: &str,
        state: tempfile::TempDir,
        extra_args: &[&str],
    ) -> Server {
        let mut args: Vec<&std::ffi::OsStr> = vec!["serve".as_ref(), dest.as_os_str()];
        args.extend(["--listen", listen, "--state-dir"].map(std::ffi::OsStr::new));
        args.push(state.path().as_os_str());
        args.extend(extra_args.iter().map(std::ffi::OsStr::new));
        let mut proc = Proc::spawn(&args);
        let Some(addr) = proc.wait_line("listening on ") else {
            panic!("replica serve did not start\n{}", proc.describe());
        };
        let addr = addr.trim().parse().expect("address in the listening line");
        // Earlier lines are already in the buffer.
        let fingerprint = proc.stdout().lines().find_map(|l| {
            l.trim()
                .strip_prefix("certificate fingerprint ")
                .map(str::to_string)
        });
        let plaintext = extra_args.contains(&"--insecure-plaintext");
        assert_eq!(
            fingerprint.is_none(),
            plaintext,
            "unexpected server banner\n{}",
            proc.describe()
        );
        Server {
            proc,
            addr,
            dest: dest.to_path_buf(),
            state,
            fingerprint,
        }
    }

    /// What a client needs to reach this server: `--fingerprint FP` for
    /// TLS, `--insecure-plaintext` otherwise.
    pub fn client_args(&self) -> Vec<String> {
        match &self.fingerprint {
            Some(fp) => vec!["--fingerprint".into(), fp.clone()],
            None => vec!["--insecure-plaintext".into()],
        }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// `replica://127.0.0.1:PORT`.
    pub fn target(&self) -> String {
        format!("replica://{}", self.addr)
    }

    pub fn stdout(&self) -> String {
        self.proc.stdout()
    }

    pub fn stderr(&self) -> String {
        self.proc.stderr()
    }

    /// Whether the server process is still running.
    pub fn alive(&mut self) -> bool {
        self.proc.alive()
    }

    pub fn connect(&self) -> TcpStream {
        let s = TcpStream::connect(self.addr).expect("connect to the server");
        s.set_read_timeout(Some(DEADLINE)).unwrap();
        s.set_write_timeout(Some(DEADLINE)).unwrap();
        s
    }
}

// ---------------------------------------------------------------------------
// Speaking the protocol by hand
// ---------------------------------------------------------------------------

/// Writes one frame: little-endian u32 length, then the payload.
pub fn write_frame(s: &mut TcpStream, payload: &[u8]) -> std::io::Result<()> {
    let mut buf = (payload.len() as u32).to_le_bytes().to_vec();
    buf.extend_from_slice(payload);
    s.write_all(&buf)?;
    s.flush()
}

/// Reads one frame; `Ok(None)` on a clean end of stream.
pub fn read_frame(s: &mut TcpStream) -> std::io::Result<Option<Vec<u8>>> {
    let mut len = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        let n = s.read(&mut len[got..])?;
        if n == 0 {
            return if got == 0 {
                Ok(None)
            } else {
                Err(std::io::ErrorKind::UnexpectedEof.into())
            };
        }
        got += n;
    }
    let n = u32::from_le_bytes(len) as usize;
    assert!(n <= 64 << 20, "absurd frame length {n} from the server");
    let mut buf = vec![0u8; n];
    s.read_exact(&mut buf)?;
    Ok(Some(buf))
}

/// Reads the next non-empty frame (zero-length frames are keep-alives).
pub fn read_message(s: &mut TcpStream) -> std::io::Result<Option<Vec<u8>>> {
    loop {
        match read_frame(s)? {
            Some(b) if b.is_empty() => continue,
            other => return Ok(other),
        }
    }
}

/// A well-formed, uncompressed client hello.
pub fn hello(token: &str) -> replica::protocol::Hello {
    replica::protocol::Hello {
        magic: replica::protocol::MAGIC,
        version: replica::protocol::PROTOCOL_VERSION,
        chunker: replica::chunk::CHUNKER_VERSION,
        token: token.into(),
        compress: false,
        client: "black-box test".into(),
        purpose: replica::protocol::Purpose::Sync,
    }
}

/// Sends a typed message as one frame.
pub fn send_msg<T: serde::Serialize>(s: &mut TcpStream, msg: &T) -> std::io::Result<()> {
    write_frame(s, &replica::protocol::encode(msg))
}

/// Connects, says hello and returns the stream with the server's answer.
pub fn raw_session(server: &Server, token: &str) -> (TcpStream, replica::protocol::HelloReply) {
    let mut s = server.connect();
    send_msg(&mut s, &hello(token)).unwrap();
    let reply = read_message(&mut s).unwrap().expect("a hello reply");
    let reply = replica::protocol::decode(&reply).expect("a decodable hello reply");
    (s, reply)
}

/// Reads until the peer closes the connection (or resets it); false if it
/// is still open when the deadline passes.
pub fn closed_by_peer(s: &mut TcpStream) -> bool {
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut sink = Vec::new();
    match s.read_to_end(&mut sink) {
        Ok(_) => true,
        Err(e) => !matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
    }
}

//! Helpers for the continuous-mode tests (`tests/watch.rs`) and the
//! operator-feature tests (`tests/features.rs`): a `replica serve` child
//! with `--min-free 0`, a `replica watch` child whose log is parsed, a
//! snapshot that tolerates a tree changing under it, and convergence
//! polling with a deadline.

#![allow(dead_code)]

use crate::common::{diff_snapshots, parse_summary, Kind, Node, Proc, Server, Snapshot, Summary};
use std::ffi::OsStr;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How long a change may take to reach the replica.
pub const CONVERGE: Duration = Duration::from_secs(15);

/// `replica serve DEST --listen LISTEN --state-dir STATE --min-free 0 EXTRA...`
/// (TLS unless EXTRA says otherwise), waiting for its `listening on` line.
pub fn start_server(dest: &Path, listen: &str, state: tempfile::TempDir, extra: &[&str]) -> Server {
    let mut args = vec!["--min-free", "0"];
    args.extend_from_slice(extra);
    Server::start_on(dest, listen, state, &args)
}

/// Sends SIGKILL to a process and waits for it to be gone.
#[cfg(unix)]
pub fn sigkill(p: &mut Proc) {
    // SAFETY: plain kill(2) on our own child's pid.
    let rc = unsafe { libc::kill(p.pid() as libc::pid_t, libc::SIGKILL) };
    assert_eq!(rc, 0, "kill: {}", std::io::Error::last_os_error());
    assert!(
        p.wait_exit(Duration::from_secs(10)).is_some(),
        "the process survived SIGKILL"
    );
}

/// Kills a server with SIGKILL and hands back its state directory, so that
/// it can be restarted on the same destination, state and port.
#[cfg(unix)]
pub fn kill_server(server: Server) -> (tempfile::TempDir, std::net::SocketAddr) {
    let Server {
        mut proc,
        state,
        addr,
        ..
    } = server;
    sigkill(&mut proc);
    (state, addr)
}

/// A `replica watch` child.
pub struct Watch {
    pub proc: Proc,
}

impl Watch {
    /// `replica watch SRC TARGETS... --state-dir STATE --rescan-every 1h EXTRA...`
    /// (the long rescan period makes sure the tests see event-driven passes,
    /// never a periodic safety rescan).
    pub fn spawn(src: &Path, targets: &[String], state: &Path, extra: &[String]) -> Watch {
        let mut args: Vec<&OsStr> = vec!["watch".as_ref(), src.as_os_str()];
        args.extend(targets.iter().map(OsStr::new));
        args.push("--state-dir".as_ref());
        args.push(state.as_os_str());
        args.extend(["--rescan-every", "1h"].map(OsStr::new));
        args.extend(extra.iter().map(OsStr::new));
        Watch {
            proc: Proc::spawn(&args),
        }
    }

    pub fn stdout(&self) -> String {
        self.proc.stdout()
    }

    pub fn stderr(&self) -> String {
        self.proc.stderr()
    }

    pub fn describe(&self) -> String {
        format!("--- watch\n{}", self.proc.describe())
    }

    /// The pass summaries printed so far (all targets), in order.
    pub fn summaries(&self) -> Vec<Summary> {
        summaries(&self.stdout())
    }

    /// Waits until at least `n` summary lines were printed.
    #[track_caller]
    pub fn wait_summaries(&self, n: usize) {
        let ok = crate::common::poll_until(CONVERGE, || self.summaries().len() >= n);
        assert!(ok, "fewer than {n} pass summaries\n{}", self.describe());
    }

    /// The count of the latest `watching N directories` line.
    pub fn watched_dirs(&self) -> Option<u64> {
        self.stdout().lines().rev().find_map(|l| {
            let i = l.find("watching ")?;
            let rest = l[i + "watching ".len()..].strip_suffix(" directories")?;
            rest.trim().parse().ok()
        })
    }

    /// SIGTERM, then asserts a clean exit (status 0).
    #[cfg(unix)]
    #[track_caller]
    pub fn stop(mut self) {
        self.proc.terminate();
        let status = self.proc.wait_exit(Duration::from_secs(15));
        let Some(status) = status else {
            panic!("replica watch did not stop on SIGTERM\n{}", self.describe());
        };
        assert_eq!(
            status.code(),
            Some(0),
            "replica watch did not exit cleanly on SIGTERM ({status:?})\n{}",
            self.describe()
        );
    }
}

/// The exact figures of each pass of a log text (its `totals:` lines).
pub fn summaries(text: &str) -> Vec<Summary> {
    text.lines()
        .filter(|l| l.contains(" totals: "))
        .map(parse_summary)
        .collect()
}

/// The raw summary lines of a log text.
pub fn summary_lines(text: &str) -> Vec<String> {
    text.lines()
        .filter(|l| l.contains(" summary: "))
        .map(str::to_string)
        .collect()
}

// ---------------------------------------------------------------------------
// Snapshots of trees that may change while they are read
// ---------------------------------------------------------------------------

fn try_node(p: &Path) -> std::io::Result<Node> {
    let md = fs::symlink_metadata(p)?;
    let ft = md.file_type();
    let kind = if ft.is_symlink() {
        Kind::Symlink(fs::read_link(p)?.to_string_lossy().into_owned())
    } else if ft.is_dir() {
        Kind::Dir
    } else if ft.is_file() {
        Kind::File(fs::read(p)?)
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
    let (mode, mtime, ino) = (0u32, (0i64, 0u32), 0u64);
    Ok(Node {
        kind,
        mode,
        mtime,
        ino,
    })
}

fn try_walk(dir: &Path, rel: &str, out: &mut Snapshot) -> std::io::Result<()> {
    let mut names = Vec::new();
    for e in fs::read_dir(dir)? {
        names.push(e?.file_name().to_string_lossy().into_owned());
    }
    names.sort();
    for name in names {
        let p = dir.join(&name);
        let key = if rel.is_empty() {
            name.clone()
        } else {
            format!("{rel}/{name}")
        };
        let n = try_node(&p)?;
        let is_dir = n.kind == Kind::Dir;
        out.insert(key.clone(), n);
        if is_dir {
            try_walk(&p, &key, out)?;
        }
    }
    Ok(())
}

/// A snapshot like `common::snapshot`, but an error (an entry vanishing
/// while it is read) is returned instead of panicking.
pub fn try_snapshot(root: &Path) -> std::io::Result<Snapshot> {
    let mut out = Snapshot::new();
    out.insert(".".into(), try_node(root)?);
    try_walk(root, "", &mut out)?;
    Ok(out)
}

/// The differences between the trees, or a description of why one could
/// not be read.
pub fn tree_diffs(src: &Path, dst: &Path, ignore_in_src: &[&str]) -> Vec<String> {
    let a = match try_snapshot(src) {
        Ok(mut s) => {
            s.retain(|k, _| !ignore_in_src.contains(&k.as_str()));
            s
        }
        Err(e) => return vec![format!("cannot read the source: {e}")],
    };
    match try_snapshot(dst) {
        Ok(b) => diff_snapshots(&a, &b),
        Err(e) => vec![format!("cannot read the replica: {e}")],
    }
}

/// Polls until `dst` is exactly `src` (minus `ignore_in_src`); on timeout
/// panics with the remaining differences and `context()`.
#[track_caller]
pub fn wait_equal_except(
    src: &Path,
    dst: &Path,
    ignore_in_src: &[&str],
    deadline: Duration,
    context: impl Fn() -> String,
) {
    let end = Instant::now() + deadline;
    let mut pause = Duration::from_millis(5);
    loop {
        let diffs = tree_diffs(src, dst, ignore_in_src);
        if diffs.is_empty() {
            return;
        }
        if Instant::now() >= end {
            panic!(
                "the replica did not converge within {deadline:?}:\n  {}\n{}",
                diffs.join("\n  "),
                context()
            );
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}

/// Polls until `dst` is exactly `src`.
#[track_caller]
pub fn wait_equal(src: &Path, dst: &Path, deadline: Duration, context: impl Fn() -> String) {
    wait_equal_except(src, dst, &[], deadline, context)
}

/// Writes `data` to `root/rel`, creating parents.
pub fn put(root: &Path, rel: &str, data: &[u8]) {
    let p = root.join(rel);
    if let Some(parent) = p.parent() {
        fs::create_dir_all(parent).unwrap();
    }
    fs::write(&p, data).unwrap_or_else(|e| panic!("write {}: {e}", p.display()));
}

/// A temporary source and replica directory side by side.
pub struct Dirs {
    pub tmp: tempfile::TempDir,
    pub src: PathBuf,
    pub dst: PathBuf,
}

impl Dirs {
    pub fn new() -> Dirs {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("src");
        let dst = tmp.path().join("dst");
        fs::create_dir_all(&src).unwrap();
        fs::create_dir_all(&dst).unwrap();
        Dirs { tmp, src, dst }
    }
}

impl Default for Dirs {
    fn default() -> Self {
        Self::new()
    }
}

/// `rchar` of `/proc/PID/io`: bytes the process has read through read(2)
/// and friends (files and sockets alike).
#[cfg(target_os = "linux")]
pub fn rchar(pid: u32) -> Option<u64> {
    let text = fs::read_to_string(format!("/proc/{pid}/io")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("rchar:"))
        .and_then(|v| v.trim().parse().ok())
}

/// The `status on http://ADDR/status` address a server printed.
pub fn status_addr(server_stdout: &str) -> Option<std::net::SocketAddr> {
    server_stdout.lines().find_map(|l| {
        l.trim()
            .strip_prefix("status on http://")?
            .strip_suffix("/status")?
            .parse()
            .ok()
    })
}

/// A raw HTTP/1.1 GET, the request sent in one write (as curl does);
/// returns (status line, body).
pub fn http_get(addr: std::net::SocketAddr, path: &str) -> (String, String) {
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    http_request(addr, &[req.as_bytes()])
}

/// Sends a request in the given pieces (a short pause between them, so
/// they reach the server as separate segments) and reads the response;
/// returns (status line, body).
pub fn http_request(addr: std::net::SocketAddr, pieces: &[&[u8]]) -> (String, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).expect("connect to the status endpoint");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.set_nodelay(true).unwrap();
    for (i, piece) in pieces.iter().enumerate() {
        if i > 0 {
            std::thread::sleep(Duration::from_millis(100));
        }
        s.write_all(piece)
            .unwrap_or_else(|e| panic!("sending request piece {i}: {e}"));
        s.flush().unwrap();
    }
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).expect("read the HTTP response");
    let text = String::from_utf8(buf).expect("a UTF-8 HTTP response");
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no header/body separator in {text:?}"));
    let status = head.lines().next().unwrap_or("").to_string();
    if let Some(len) = head.lines().find_map(|l| {
        l.to_ascii_lowercase()
            .strip_prefix("content-length:")
            .map(|v| v.trim().parse::<usize>().unwrap())
    }) {
        assert_eq!(len, body.len(), "Content-Length does not match the body");
    }
    (status, body.to_string())
}

//! Small helpers for the fault-injection and hostile-input tests
//! (`tests/faults.rs`, `tests/hostile.rs`): running the binary with a
//! deadline, a `replica serve` child, exact tree snapshots, polling.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long anything asynchronous may take before a test gives up.
pub const DEADLINE: Duration = Duration::from_secs(20);

pub fn bin() -> PathBuf {
    assert_cmd::cargo::cargo_bin("replica")
}

/// Calls `cond` until it holds or `deadline` passes (short backoffs only).
pub fn poll_until(deadline: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + deadline;
    let mut pause = Duration::from_millis(1);
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}

/// `len` deterministic pseudo-random (incompressible) bytes.
pub fn random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0x5DEE_CE66_D1CE_4E5B;
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

/// Writes `data` to `root/rel`, creating parents.
pub fn write_file(root: &Path, rel: &str, data: &[u8]) {
    let p = root.join(rel);
    if let Some(parent) = p.parent() {
        std::fs::create_dir_all(parent).unwrap();
    }
    std::fs::write(&p, data).unwrap_or_else(|e| panic!("write {}: {e}", p.display()));
}

// ---------------------------------------------------------------------------
// Running the binary
// ---------------------------------------------------------------------------

/// The outcome of one `replica` run.
#[derive(Debug)]
pub struct Run {
    /// Exit code; `None` if killed by a signal.
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// `content_sent=N` from the pass's totals line.
    pub fn content_sent(&self) -> u64 {
        summary_number(&self.stdout, "content_sent")
            .unwrap_or_else(|| panic!("no summary line in stdout:\n{}", self.stdout))
    }

    pub fn describe(&self) -> String {
        format!(
            "exit {:?}\n--- stdout\n{}\n--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// The number `key=N` on the last `totals:` line.
pub fn summary_number(stdout: &str, key: &str) -> Option<u64> {
    let line = stdout.lines().rev().find(|l| l.contains(" totals: "))?;
    line.split(' ')
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))?
        .parse()
        .ok()
}

/// Starts `replica sync SRC TARGET --state-dir STATE [extra...]` in the background.
pub fn spawn_sync(src: &Path, target: &str, state: &Path, extra: &[&str]) -> Child {
    Command::new(bin())
        .arg("sync")
        .arg(src)
        .arg(target)
        .arg("--state-dir")
        .arg(state)
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn replica sync")
}

/// Waits for a child with a deadline (killing it and panicking past it)
/// and collects its output.
pub fn finish(mut child: Child, deadline: Duration) -> Run {
    let out = child.stdout.take().unwrap();
    let err = child.stderr.take().unwrap();
    let t_out = std::thread::spawn(move || read_all(out));
    let t_err = std::thread::spawn(move || read_all(err));
    let mut status = None;
    let done = poll_until(deadline, || {
        status = child.try_wait().unwrap();
        status.is_some()
    });
    if !done {
        let _ = child.kill();
        let _ = child.wait();
        let (o, e) = (t_out.join().unwrap(), t_err.join().unwrap());
        panic!("replica did not finish within {deadline:?}\n--- stdout\n{o}\n--- stderr\n{e}");
    }
    Run {
        code: status.unwrap().code(),
        stdout: t_out.join().unwrap(),
        stderr: t_err.join().unwrap(),
    }
}

fn read_all(mut r: impl std::io::Read) -> String {
    let mut v = Vec::new();
    let _ = r.read_to_end(&mut v);
    String::from_utf8_lossy(&v).into_owned()
}

/// One `replica sync` pass, run to completion.
pub fn sync(src: &Path, target: &str, state: &Path) -> Run {
    finish(spawn_sync(src, target, state, &[]), DEADLINE)
}

/// One `replica sync` pass against `server` (plaintext if the server is).
pub fn sync_to(src: &Path, server: &Server, state: &Path) -> Run {
    finish(
        spawn_sync(src, &server.url(), state, server.client_args()),
        DEADLINE,
    )
}

/// A `replica serve` child process; killed when dropped.
pub struct Server {
    pub child: Child,
    pub addr: String,
    pub plaintext: bool,
    output: Arc<Mutex<String>>,
}

impl Server {
    /// A server with the default transport (TLS).
    pub fn start(dest: &Path, state: &Path) -> Server {
        Server::start_with(dest, state, false)
    }

    /// A server started with `--insecure-plaintext` (raw protocol tests).
    pub fn start_plaintext(dest: &Path, state: &Path) -> Server {
        Server::start_with(dest, state, true)
    }

    /// The arguments a `replica sync` to this server needs.
    pub fn client_args(&self) -> &'static [&'static str] {
        if self.plaintext {
            &["--insecure-plaintext"]
        } else {
            &[]
        }
    }

    fn start_with(dest: &Path, state: &Path, plaintext: bool) -> Server {
        let mut cmd = Command::new(bin());
        cmd.arg("serve").arg(dest);
        if plaintext {
            cmd.arg("--insecure-plaintext");
        }
        let mut child = cmd
            // No free-space floor: tests must not depend on the machine's disk.
            .args(["--listen", "127.0.0.1:0", "--min-free", "0", "--state-dir"])
            .arg(state)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn replica serve");
        let output = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel::<String>();
        let stdout = child.stdout.take().unwrap();
        let stderr = child.stderr.take().unwrap();
        {
            let output = output.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    if let Some(a) = line.strip_prefix("listening on ") {
                        let _ = tx.send(a.trim().to_string());
                    }
                    let mut o = output.lock().unwrap();
                    o.push_str(&line);
                    o.push('\n');
                }
            });
        }
        {
            let output = output.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    let mut o = output.lock().unwrap();
                    o.push_str(&line);
                    o.push('\n');
                }
            });
        }
        let addr = match rx.recv_timeout(DEADLINE) {
            Ok(a) => a,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "server did not say `listening on`; output:\n{}",
                    output.lock().unwrap()
                );
            }
        };
        Server {
            child,
            addr,
            plaintext,
            output,
        }
    }

    pub fn url(&self) -> String {
        format!("replica://{}", self.addr)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything the server printed so far (stdout and stderr interleaved).
    pub fn output(&self) -> String {
        self.output.lock().unwrap().clone()
    }

    /// Number of sessions the server has finished (ended, failed or crashed).
    pub fn sessions_over(&self) -> usize {
        self.output()
            .lines()
            .filter(|l| {
                l.contains("session from")
                    && (l.ends_with(" ended")
                        || l.contains(" failed: ")
                        || l.contains(" crashed: ")
                        || l.contains("stopped for shutdown"))
            })
            .count()
    }

    /// SIGKILL, then reap.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Whether the process is still running.
    pub fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

// ---------------------------------------------------------------------------
// Trees
// ---------------------------------------------------------------------------

/// One entry of a snapshot (symlinks are never followed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    Dir,
    File(Vec<u8>),
    Symlink(PathBuf),
    Other,
}

/// Every entry below `root`, by `/`-joined relative path, with full contents.
pub fn snapshot(root: &Path) -> BTreeMap<String, Node> {
    let mut out = BTreeMap::new();
    walk(root, "", &mut out);
    out
}

fn walk(dir: &Path, rel: &str, out: &mut BTreeMap<String, Node>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for item in rd.flatten() {
        let name = item.file_name().to_string_lossy().into_owned();
        let key = if rel.is_empty() {
            name.clone()
        } else {
            format!("{rel}/{name}")
        };
        let path = item.path();
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        let ft = meta.file_type();
        if ft.is_symlink() {
            out.insert(key, Node::Symlink(std::fs::read_link(&path).unwrap()));
        } else if ft.is_dir() {
            out.insert(key.clone(), Node::Dir);
            walk(&path, &key, out);
        } else if ft.is_file() {
            // A file may vanish or be replaced between listing and reading.
            if let Ok(data) = std::fs::read(&path) {
                out.insert(key, Node::File(data));
            }
        } else {
            out.insert(key, Node::Other);
        }
    }
}

/// Panics with the first difference between two snapshots.
pub fn assert_same_tree(want: &Path, got: &Path) {
    let a = snapshot(want);
    let b = snapshot(got);
    for (k, v) in &a {
        match b.get(k) {
            None => panic!("{k} is missing from {}", got.display()),
            Some(w) if w != v => panic!(
                "{k} differs between {} and {} ({} vs {})",
                want.display(),
                got.display(),
                short(v),
                short(w)
            ),
            _ => {}
        }
    }
    for k in b.keys() {
        if !a.contains_key(k) {
            panic!("{k} is extra in {}", got.display());
        }
    }
}

pub fn short(n: &Node) -> String {
    match n {
        Node::Dir => "dir".into(),
        Node::File(d) => format!("file of {} bytes", d.len()),
        Node::Symlink(t) => format!("symlink to {}", t.display()),
        Node::Other => "special file".into(),
    }
}

/// Relative paths of every `.replica-tmp-*` entry below `root`.
pub fn temp_files(root: &Path) -> Vec<String> {
    snapshot(root)
        .into_keys()
        .filter(|k| {
            k.rsplit('/')
                .next()
                .is_some_and(|n| n.starts_with(".replica-tmp-"))
        })
        .collect()
}

/// A scratch area: `src/`, `dest/` and `state/` under one temp dir.
pub struct Scratch {
    pub dir: tempfile::TempDir,
    pub src: PathBuf,
    pub dest: PathBuf,
    pub state: PathBuf,
}

impl Scratch {
    pub fn new() -> Scratch {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        let dest = dir.path().join("dest");
        let state = dir.path().join("state");
        std::fs::create_dir_all(&src).unwrap();
        std::fs::create_dir_all(&state).unwrap();
        Scratch {
            dir,
            src,
            dest,
            state,
        }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn dest_str(&self) -> String {
        self.dest.to_str().unwrap().to_string()
    }
}

/// Relative paths of the regular files below `root` (names only, cheap).
pub fn file_names(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![(root.to_path_buf(), String::new())];
    while let Some((dir, rel)) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&dir) else {
            continue;
        };
        for item in rd.flatten() {
            let name = item.file_name().to_string_lossy().into_owned();
            let key = if rel.is_empty() {
                name
            } else {
                format!("{rel}/{name}")
            };
            match item.file_type() {
                Ok(t) if t.is_dir() => stack.push((item.path(), key)),
                Ok(t) if t.is_file() => out.push(key),
                _ => {}
            }
        }
    }
    out
}

/// Whether a relative path names a `.replica-tmp-*` entry.
pub fn is_temp(key: &str) -> bool {
    key.rsplit('/')
        .next()
        .is_some_and(|n| n.starts_with(".replica-tmp-"))
}

/// Checks that every regular file under its final name in `dest` is
/// byte-identical to the file of the same name in `src`; returns how many
/// bytes those files hold.
pub fn assert_published_files_whole(src: &Path, dest: &Path) -> u64 {
    let mut bytes = 0;
    for key in file_names(dest) {
        if is_temp(&key) {
            continue;
        }
        let Ok(got) = std::fs::read(dest.join(&key)) else {
            continue;
        };
        let want = std::fs::read(src.join(&key))
            .unwrap_or_else(|e| panic!("{key} is in the replica but not in the source: {e}"));
        assert!(
            got == want,
            "{key} is under its final name but is not the source's content ({} of {} bytes)",
            got.len(),
            want.len()
        );
        bytes += got.len() as u64;
    }
    bytes
}

/// `ops=N` from the totals line.
pub fn operations(stdout: &str) -> Option<u64> {
    summary_number(stdout, "ops")
}

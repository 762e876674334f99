//! Scenarios run against both a local destination and a real server on
//! loopback: `tests/sync_local.rs` and `tests/sync_remote.rs` each call
//! every one of them with their [`Where`].

use super::*;
use std::fs;
use std::path::{Path, PathBuf};

/// Which kind of target a scenario syncs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Where {
    /// A local directory (in-process server).
    Local,
    /// `replica://127.0.0.1:PORT` of a `replica serve` child process, over
    /// TLS (the default), the client pinning the printed fingerprint.
    Remote,
    /// The same with `--insecure-plaintext` on both sides (what the raw
    /// protocol tests speak).
    RemotePlain,
}

/// A sandbox: `src/`, `area/dst` (the replica), `area/sibling` (must never
/// be touched), the client's state directory, and a server for remote runs.
pub struct Env {
    pub tmp: tempfile::TempDir,
    pub src: PathBuf,
    pub area: PathBuf,
    pub dst: PathBuf,
    pub sibling: PathBuf,
    pub state: PathBuf,
    pub server: Option<Server>,
}

impl Env {
    pub fn new(w: Where) -> Env {
        Env::with_server_args(w, &[])
    }

    pub fn with_server_args(w: Where, server_args: &[&str]) -> Env {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().canonicalize().unwrap();
        let src = root.join("src");
        let area = root.join("area");
        let dst = area.join("dst");
        let sibling = area.join("sibling");
        let state = root.join("state");
        fs::create_dir_all(&src).unwrap();
        fs::create_dir_all(&area).unwrap();
        fs::create_dir_all(&state).unwrap();
        build_tree(
            &sibling,
            &[f("keep.txt", "sibling data"), d("inner"), f("inner/x", "x")],
        );
        let server = match w {
            Where::Local => None,
            Where::Remote => Some(Server::start_with(&dst, server_args)),
            Where::RemotePlain => {
                let mut args = server_args.to_vec();
                args.push("--insecure-plaintext");
                Some(Server::start_with(&dst, &args))
            }
        };
        Env {
            tmp,
            src,
            area,
            dst,
            sibling,
            state,
            server,
        }
    }

    pub fn target(&self) -> String {
        match &self.server {
            Some(s) => s.target(),
            None => self.dst.to_string_lossy().into_owned(),
        }
    }

    /// `replica sync SRC TARGET --state-dir STATE EXTRA...` (plus what the
    /// server needs: `--fingerprint FP` or `--insecure-plaintext`).
    pub fn sync(&self, extra: &[&str]) -> Run {
        let mut args: Vec<String> = self
            .server
            .as_ref()
            .map(Server::client_args)
            .unwrap_or_default();
        args.extend(extra.iter().map(|s| s.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.sync_raw(&args)
    }

    /// `replica sync SRC TARGET --state-dir STATE EXTRA...`, nothing added.
    pub fn sync_raw(&self, extra: &[&str]) -> Run {
        run_sync(&self.src, &self.target(), &self.state, extra).into()
    }

    /// A sync that must succeed without errors.
    #[track_caller]
    pub fn sync_ok(&self, extra: &[&str]) -> Run {
        let r = self.sync(extra);
        r.assert_ok();
        r
    }

    /// Asserts the replica equals the source exactly.
    #[track_caller]
    pub fn assert_replica_exact(&self) {
        assert_trees_equal(&self.src, &self.dst);
    }
}

/// A source tree exercising every kind of entry and metadata.
pub fn rich_source() -> Vec<Spec> {
    vec![
        root().mode(0o755).mtime(1_600_000_000, 999_999_999),
        f("top.txt", "hello\n"),
        f("empty-file", ""),
        d("empty-dir").mtime(1_234_567_890, 1),
        d("nested/deeper/deepest"),
        f("nested/deeper/deepest/leaf.bin", random_bytes(1, 3000)),
        f("nested/a.txt", "a").mtime(1_000_000_000, 500),
        f("bin/run.sh", "#!/bin/sh\necho hi\n")
            .mode(0o755)
            .mtime(1_700_000_000, 123_456_789),
        f("bin/readonly.txt", "can't touch this").mode(0o444),
        f("bin/private", "secret").mode(0o600),
        f("bin/odd-mode", "x").mode(0o751),
        d("locked").mode(0o555),
        f("locked/inside.txt", "inside a read-only dir"),
        d("private-dir").mode(0o700),
        d("sticky").mode(0o1777),
        d("setgid").mode(0o2775),
        f("setgid/suid", "setuid file").mode(0o4755),
        f("old.txt", "from the past").mtime(86_400, 42),
        f("name with spaces.txt", "spaces"),
        f("naïve-ünïcode.txt", "utf-8 name"),
        f(".hidden", "dotfile"),
        f("dup1", "duplicate content"),
        f("dup2", "duplicate content"),
        l("rel-link", "top.txt").mtime(1_650_000_000, 111_111_111),
        l("nested/up-link", "../top.txt"),
        l("dir-link", "nested/deeper"),
        l("dangling", "does/not/exist"),
        l("abs-root", "/").mtime(1_650_000_001, 7),
        l("nested/abs-dangling", "/nonexistent/replica/test/path"),
        l("nested/dangling-rel", "../../nowhere"),
    ]
}

// ---------------------------------------------------------------------------
// Scenarios
// ---------------------------------------------------------------------------

/// Initial sync into an empty (local: missing) destination: exact copy,
/// sibling untouched.
pub fn initial_sync_into_empty(w: Where) {
    let env = Env::new(w);
    let sib = snapshot(&env.sibling);
    build_tree(&env.src, &rich_source());
    let r = env.sync_ok(&[]);
    env.assert_replica_exact();
    assert_snapshots_equal(&sib, &snapshot(&env.sibling));
    let s = r.summary();
    // Every entry but the root is created (or copied, for the duplicate).
    let entries = snapshot(&env.src).len() as u64 - 1;
    assert!(
        s.ops >= entries,
        "expected at least {entries} operations: {}",
        r.describe()
    );
    let files = snapshot(&env.src)
        .values()
        .filter(|n| matches!(n.kind, Kind::File(_)))
        .count() as u64;
    assert_eq!(s.files, files, "{}", r.describe());
    assert_eq!(s.errors, 0);
    assert!(r.paths("removed").is_empty(), "{}", r.describe());
    let made: Vec<String> = r
        .ops()
        .into_iter()
        .filter(|o| o.op != "metadata")
        .map(|o| o.path)
        .collect();
    for key in snapshot(&env.src).keys().filter(|k| *k != ".") {
        assert!(
            made.contains(key),
            "{key} not reported as made: {}",
            r.describe()
        );
    }
}

/// Symlinks with absolute targets (existing, pointing next to DEST, and
/// dangling) are replicated as they are: the target text is data, never
/// followed.
pub fn absolute_symlinks(w: Where) {
    let env = Env::new(w);
    let sib = snapshot(&env.sibling);
    let into_sibling = env.sibling.join("keep.txt");
    build_tree(
        &env.src,
        &[
            f("plain", "p"),
            l("abs-existing", "/"),
            l("abs-sibling", into_sibling.to_str().unwrap()).mtime(1_650_000_001, 7),
            l("nested/abs-dangling", "/nonexistent/replica/test/path"),
        ],
    );
    let r = env.sync(&[]);
    r.assert_ok();
    env.assert_replica_exact();
    assert_snapshots_equal(&sib, &snapshot(&env.sibling));
}

/// Names at the 255-byte limit, also in multi-byte UTF-8, are replicated.
pub fn long_names(w: Where) {
    let env = Env::new(w);
    let ascii = "a".repeat(255);
    let cjk = "漢".repeat(85); // 255 bytes
    let emoji = "😀".repeat(63); // 252 bytes
    let umlaut = "ü".repeat(127); // 254 bytes
    build_tree(
        &env.src,
        &[
            f(&ascii, "ascii"),
            f(&format!("sub/{cjk}"), "cjk"),
            f(&emoji, "emoji"),
            f(&umlaut, "umlaut"),
            d(&cjk),
            f(&format!("{cjk}/inner"), "inner"),
            l(&format!("l{}", "漢".repeat(84)), "target"),
        ],
    );
    let r = env.sync(&[]);
    r.assert_ok();
    env.assert_replica_exact();
    let again = env.sync_ok(&[]);
    assert_eq!(again.summary().ops, 0, "{}", again.describe());
}

/// Sync into a destination full of junk of every kind.
pub fn sync_over_junk(w: Where) {
    let env = Env::new(w);
    let sibling_abs = env.sibling.to_str().unwrap().to_string();
    build_tree(
        &env.dst,
        &[
            f("extra.txt", "not in the source"),
            d("extra-dir/deep/deeper"),
            f("extra-dir/deep/q", "q"),
            d("extra-empty"),
            f("was-dir", "a file where the source has a directory"),
            d("was-file/sub"),
            f("was-file/sub/inner", "a dir where the source has a file"),
            l("was-link-dir", "../sibling"),
            l("was-link-abs", &sibling_abs),
            f("same/x.txt", "stale content, same name"),
            f("same/junk", "junk"),
            l("file-was-link", "whatever"),
            f("link-was-file", "I will become a symlink"),
            l("link-target-differs", "old-target"),
            f("mode-only", "same bytes").mode(0o600),
        ],
    );
    let sib = snapshot(&env.sibling);
    build_tree(
        &env.src,
        &[
            d("was-dir"),
            f("was-dir/child", "child of the dir that replaced a file"),
            f("was-file", "file that replaced a dir"),
            d("was-link-dir"),
            f("was-link-dir/z", "must land in dst, not in sibling"),
            d("was-link-abs/sub"),
            f(
                "was-link-abs/sub/keep.txt",
                "must not overwrite the sibling",
            ),
            f("same/x.txt", "fresh content, same name"),
            f("file-was-link", "now a file"),
            l("link-was-file", "target"),
            l("link-target-differs", "new-target"),
            f("mode-only", "same bytes").mode(0o644),
            d("new-empty"),
        ],
    );
    let r = env.sync_ok(&[]);
    env.assert_replica_exact();
    assert_snapshots_equal(&sib, &snapshot(&env.sibling));
    let removed = r.paths("removed");
    for gone in ["extra.txt", "extra-dir", "extra-empty", "same/junk"] {
        assert!(
            removed.contains(&gone.to_string()),
            "{gone} not reported removed: {}",
            r.describe()
        );
    }
    // A second pass has nothing left to do.
    let again = env.sync_ok(&[]);
    assert_eq!(again.summary().ops, 0, "{}", again.describe());
    env.assert_replica_exact();
    assert_snapshots_equal(&sib, &snapshot(&env.sibling));
}

/// Exact equality of everything `rich_source` holds, then an unchanged
/// second pass does nothing and rewrites nothing.
pub fn second_sync_is_a_no_op(w: Where) {
    let env = Env::new(w);
    build_tree(&env.src, &rich_source());
    env.sync_ok(&[]);
    env.assert_replica_exact();
    let before = snapshot(&env.dst);
    let r = env.sync_ok(&[]);
    let s = r.summary();
    assert_eq!(s.ops, 0, "{}", r.describe());
    assert_eq!(s.content_sent, 0, "{}", r.describe());
    assert_eq!(s.rebuilt, 0, "{}", r.describe());
    assert!(r.ops().is_empty(), "{}", r.describe());
    assert_untouched(&before, &snapshot(&env.dst));
    // And --checksum on an unchanged tree also does nothing.
    let r = env.sync_ok(&["--checksum"]);
    assert_eq!(r.summary().ops, 0, "{}", r.describe());
    assert_untouched(&before, &snapshot(&env.dst));
}

/// One changed byte updates that file (and only that file).
pub fn one_byte_change_updates(w: Where) {
    let env = Env::new(w);
    let mut data = random_bytes(7, 200_000);
    build_tree(
        &env.src,
        &[
            f("big.bin", &data),
            f("other.txt", "other"),
            d("sub"),
            f("sub/s.txt", "s"),
        ],
    );
    env.sync_ok(&[]);
    let before = snapshot(&env.dst);
    data[123_456] ^= 0x01;
    fs::write(env.src.join("big.bin"), &data).unwrap();
    set_mtime(&env.src.join("big.bin"), 1_800_000_000, 5);
    let r = env.sync_ok(&[]);
    env.assert_replica_exact();
    assert_eq!(
        r.paths("updated"),
        vec!["big.bin".to_string()],
        "{}",
        r.describe()
    );
    assert_eq!(r.summary().ops, 1, "{}", r.describe());
    let s = r.summary();
    assert!(
        s.content_sent > 0 && s.content_sent <= 128 * 1024,
        "a chunk or two at most: {}",
        r.describe()
    );
    let after = snapshot(&env.dst);
    for k in ["other.txt", "sub/s.txt"] {
        assert_eq!(before[k].ino, after[k].ino, "{k} rewritten");
    }
    // A same-size, same-mtime change is found by --checksum.
    data[10] ^= 0xFF;
    fs::write(env.src.join("big.bin"), &data).unwrap();
    set_mtime(&env.src.join("big.bin"), 1_800_000_000, 5);
    let r = env.sync_ok(&["--checksum"]);
    assert_eq!(
        r.paths("updated"),
        vec!["big.bin".to_string()],
        "{}",
        r.describe()
    );
    env.assert_replica_exact();
}

/// Source-like text: numbered lines of words.
fn source_text(lines: usize, seed: u64) -> String {
    let words = [
        "fn", "let", "match", "self", "impl", "pub", "struct", "return", "Ok", "Some",
    ];
    let mut x = seed | 1;
    let mut out = String::new();
    for i in 0..lines {
        out.push_str(&format!("    // line {i}:"));
        for _ in 0..6 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            out.push(' ');
            out.push_str(words[(x % words.len() as u64) as usize]);
        }
        out.push('\n');
    }
    out
}

/// A line edited in a small text file and in a larger one costs about the
/// line each over a connection, not the files: the first round of the delta
/// (pieces of ~256 B) leaves a few hundred bytes of literal around each
/// edit, the second round (fine pieces of just those old ranges) the edited
/// lines (171 B in all when written; 1,332 B with one round). Locally,
/// where no bytes travel and no delta is worth its time, only the changed
/// chunks are passed. The replica is exact.
pub fn small_text_edits_send_little(w: Where) {
    let env = Env::new(w);
    let small = source_text(120, 1); // ~6 KB: one chunk
    let large = source_text(2_000, 2); // ~100 KB: several chunks
    build_tree(&env.src, &[f("small.rs", &small), f("large.rs", &large)]);
    env.sync_ok(&[]);
    let edit = |text: &str, line: usize| {
        text.replacen(
            &format!("// line {line}:"),
            &format!("// line {line} (edited):"),
            1,
        )
    };
    fs::write(env.src.join("small.rs"), edit(&small, 60)).unwrap();
    fs::write(env.src.join("large.rs"), edit(&large, 1_000)).unwrap();
    set_mtime(&env.src.join("small.rs"), 1_800_000_000, 0);
    set_mtime(&env.src.join("large.rs"), 1_800_000_000, 0);
    let r = env.sync_ok(&[]);
    env.assert_replica_exact();
    let mut updated = r.paths("updated");
    updated.sort();
    assert_eq!(updated, vec!["large.rs", "small.rs"], "{}", r.describe());
    let s = r.summary();
    let most = match w {
        Where::Local => (small.len() + large.len() / 2) as u64,
        _ => 512,
    };
    assert!(
        s.content_sent > 0 && s.content_sent <= most,
        "two one-line edits: {}",
        r.describe()
    );
}

/// Lines of `FINE_MIN + 1` bytes that are each one fine piece of the second round
/// wherever a piece starts, and two different such lines whose 2-byte fine
/// hashes are equal (found by search: about 300 lines are enough).
fn lines_with_a_fine_collision() -> (Vec<Vec<u8>>, Vec<u8>, Vec<u8>) {
    use replica::delta::fine::{fine_cuts, fine_hash, FINE_MIN};
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut line = || {
        let mut l: Vec<u8> = (0..FINE_MIN)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789(){};"
                    [(x % 67) as usize]
            })
            .collect();
        l.push(b'\n');
        l
    };
    let mut lines = Vec::new();
    let mut by_hash = std::collections::HashMap::new();
    loop {
        let l = line();
        if fine_cuts(&l) != [FINE_MIN + 1] {
            continue;
        }
        if let Some(other) = by_hash.insert(fine_hash(&l), l.clone()) {
            if other != l {
                return (lines, other, l);
            }
        }
        lines.push(l);
    }
}

/// A 2-byte fine hash that names a wrong old line (a collision, made on
/// purpose) costs one more round, never a wrong replica: the server's
/// check of the rebuilt chunk refuses it and asks for the chunk again
/// without a second round. Over a connection only (a local sync sends no
/// deltas).
pub fn fine_hash_collision_costs_a_round_not_the_file(w: Where) {
    let env = Env::new(w);
    let (mut lines, a, b) = lines_with_a_fine_collision();
    lines.truncate(200);
    while lines.len() < 200 {
        let l = lines[lines.len() % 7].clone();
        lines.push(l);
    }
    let text = |middle: &[u8]| {
        let mut t = Vec::new();
        for (i, l) in lines.iter().enumerate() {
            t.extend_from_slice(if i == 100 { middle } else { l });
        }
        t
    };
    let (old, new) = (text(&a), text(&b));
    fs::write(env.src.join("f.rs"), &old).unwrap();
    env.sync_ok(&[]);
    fs::write(env.src.join("f.rs"), &new).unwrap();
    set_mtime(&env.src.join("f.rs"), 1_800_000_000, 0);
    let r = env.sync_ok(&[]);
    env.assert_replica_exact();
    assert_eq!(r.paths("updated"), vec!["f.rs"], "{}", r.describe());
    assert_eq!(fs::read(env.dst.join("f.rs")).unwrap(), new);
    // The chunk came again as a first-round delta, not whole (written:
    // 584 B of the 6.6 KB file).
    let sent = r.summary().content_sent;
    assert!(sent > 0 && sent < new.len() as u64 / 2, "{}", r.describe());
}

/// A replica emptied behind replica's back (its state kept: every index
/// hint now names a missing file) is rebuilt exactly: small files, a file
/// of several chunks, two small files of the same content.
pub fn replica_emptied_behind_its_back_is_rebuilt(w: Where) {
    let env = Env::new(w);
    let big = random_bytes(41, 300_000);
    build_tree(
        &env.src,
        &[
            f("a.txt", "alpha"),
            f("d/b.txt", "bravo"),
            f("d/same.txt", "alpha"),
            f("d/big.bin", &big),
        ],
    );
    env.sync_ok(&[]);
    env.assert_replica_exact();
    for e in fs::read_dir(&env.dst).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            fs::remove_dir_all(&p).unwrap();
        } else {
            fs::remove_file(&p).unwrap();
        }
    }
    let r = env.sync_ok(&[]);
    env.assert_replica_exact();
    assert!(
        r.summary().content_sent >= big.len() as u64,
        "{}",
        r.describe()
    );
    let again = env.sync_ok(&[]);
    assert_eq!(again.summary().content_sent, 0, "{}", again.describe());
}

/// Deleting files and directories in the source removes them in the replica.
pub fn deletions_propagate(w: Where) {
    let env = Env::new(w);
    build_tree(
        &env.src,
        &[
            f("a.txt", "a"),
            f("b.txt", "b"),
            d("gone-dir/sub"),
            f("gone-dir/sub/f", "f"),
            f("gone-dir/g", "g"),
            d("kept/empty-soon"),
            f("kept/k", "k"),
            l("link", "a.txt"),
        ],
    );
    env.sync_ok(&[]);
    env.assert_replica_exact();
    fs::remove_file(env.src.join("b.txt")).unwrap();
    fs::remove_dir_all(env.src.join("gone-dir")).unwrap();
    fs::remove_dir(env.src.join("kept/empty-soon")).unwrap();
    fs::remove_file(env.src.join("link")).unwrap();
    let r = env.sync_ok(&[]);
    env.assert_replica_exact();
    assert_eq!(
        r.paths("removed"),
        vec![
            "b.txt".to_string(),
            "gone-dir".into(),
            "kept/empty-soon".into(),
            "link".into()
        ],
        "{}",
        r.describe()
    );
    // Emptying the source empties the replica, but only on purpose: an
    // empty source looks like an unmounted disk.
    for e in fs::read_dir(&env.src).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() && !p.is_symlink() {
            fs::remove_dir_all(&p).unwrap();
        } else {
            fs::remove_file(&p).unwrap();
        }
    }
    let before = snapshot(&env.dst);
    env.sync(&[]).assert_code(1);
    assert_untouched(&before, &snapshot(&env.dst));
    env.sync_ok(&["--allow-empty-source"]);
    env.assert_replica_exact();
    assert_eq!(snapshot(&env.dst).len(), 1);
}

const MIB: u64 = 1024 * 1024;

/// The same 1 MiB three times in the source: its content is sent once.
pub fn dedup_within_one_pass(w: Where) {
    let env = Env::new(w);
    let big = random_bytes(11, MIB as usize);
    build_tree(
        &env.src,
        &[
            f("a.bin", &big),
            f("b.bin", &big),
            f("deep/er/c.bin", &big),
            f("tiny", "t"),
        ],
    );
    let r = env.sync_ok(&[]);
    env.assert_replica_exact();
    let s = r.summary();
    assert_eq!(s.file_bytes, 3 * MIB + 1);
    assert!(
        s.content_sent >= MIB && s.content_sent <= MIB + 1,
        "content sent once: {}",
        r.describe()
    );
    assert_eq!(s.rebuilt, 2 * MIB, "{}", r.describe());
    assert!(s.wire_sent < MIB + 64 * 1024, "wire: {}", r.describe());
    if w == Where::Local {
        // Local sync passes messages in process: nothing crosses a wire.
        assert_eq!(s.wire_sent + s.wire_received, 0, "{}", r.describe());
    } else {
        assert!(
            s.wire_sent >= MIB - 64 * 1024,
            "random data cannot shrink much: {}",
            r.describe()
        );
    }
}

/// Into a fresh replica (empty index), a file whose content an earlier
/// file of the same pass brought is still built from it when that file's
/// index entries are only in the database by then (thousands of files,
/// past the index's checkpoints, lie between the two).
pub fn dedup_across_checkpoints_into_a_fresh_replica(w: Where) {
    let env = Env::new(w);
    let big = random_bytes(13, MIB as usize);
    let mut spec = vec![f("a.bin", &big)];
    let n = 4_500;
    for i in 0..n {
        spec.push(f(&format!("m/{:02}/{i}", i % 50), format!("{i}")));
    }
    spec.push(f("z/dup.bin", &big));
    build_tree(&env.src, &spec);
    let r = env.sync_ok(&[]);
    env.assert_replica_exact();
    let s = r.summary();
    assert!(
        s.content_sent <= MIB + 64 * 1024,
        "content sent once: {}",
        r.describe()
    );
    assert_eq!(s.rebuilt, MIB, "{}", r.describe());
}

/// A copy or a rename of a file the replica already holds sends no content.
pub fn dedup_copy_and_rename(w: Where) {
    let env = Env::new(w);
    let big = random_bytes(12, 4 * MIB as usize);
    build_tree(&env.src, &[f("big.bin", &big), d("elsewhere")]);
    let r = env.sync_ok(&[]);
    assert!(r.summary().content_sent >= 4 * MIB);
    // Copy under another name (a fresh file with a new mtime and inode).
    fs::copy(env.src.join("big.bin"), env.src.join("copy.bin")).unwrap();
    let r = env.sync_ok(&[]);
    env.assert_replica_exact();
    let s = r.summary();
    assert_eq!(
        s.content_sent,
        0,
        "a copy sends no content: {}",
        r.describe()
    );
    assert_eq!(s.rebuilt, 4 * MIB, "{}", r.describe());
    assert_eq!(
        r.paths("copied"),
        vec!["copy.bin".to_string()],
        "{}",
        r.describe()
    );
    assert!(s.wire_sent <= 64 * 1024, "copy: {}", r.describe());
    // Rename in the source: moved in the replica, nothing sent.
    fs::rename(
        env.src.join("copy.bin"),
        env.src.join("elsewhere/renamed.bin"),
    )
    .unwrap();
    let r = env.sync_ok(&[]);
    env.assert_replica_exact();
    let s = r.summary();
    assert_eq!(
        s.content_sent,
        0,
        "a rename sends no content: {}",
        r.describe()
    );
    assert!(
        s.wire_sent <= 64 * 1024,
        "a rename sends at most 64 KiB: {}",
        r.describe()
    );
    let ops = r.ops();
    assert!(
        ops.iter()
            .any(|o| o.path == "elsewhere/renamed.bin" && (o.op == "moved" || o.op == "copied")),
        "{}",
        r.describe()
    );
}

/// A file sharing most of its content with one in the replica sends only
/// the difference.
pub fn dedup_shared_content(w: Where) {
    let env = Env::new(w);
    let base = random_bytes(13, 2 * MIB as usize);
    build_tree(&env.src, &[f("data.bin", &base)]);
    env.sync_ok(&[]);
    // 16 bytes inserted at the front, in place.
    let mut front = b"0123456789abcdef".to_vec();
    front.extend_from_slice(&base);
    fs::write(env.src.join("data.bin"), &front).unwrap();
    // And another new file with 16 bytes inserted in the middle.
    let mut mid = base[..MIB as usize].to_vec();
    mid.extend_from_slice(b"fedcba9876543210");
    mid.extend_from_slice(&base[MIB as usize..]);
    fs::write(env.src.join("mid.bin"), &mid).unwrap();
    let r = env.sync_ok(&[]);
    env.assert_replica_exact();
    let s = r.summary();
    assert_eq!(
        r.paths("updated"),
        vec!["data.bin".to_string()],
        "{}",
        r.describe()
    );
    assert!(
        s.content_sent <= 256 * 1024,
        "only a small fraction of 4 MiB: {}",
        r.describe()
    );
    assert!(s.rebuilt >= 4 * MIB - 256 * 1024, "{}", r.describe());
    assert!(s.wire_sent <= 320 * 1024, "{}", r.describe());
}

/// Changes of metadata only (file mode, file mtime with the same bytes,
/// directory mtime and mode, symlink mtime) are applied in place: reported
/// as `metadata`, no content sent, no file rewritten.
pub fn metadata_only_changes(w: Where) {
    let env = Env::new(w);
    build_tree(
        &env.src,
        &[
            f("mode.txt", "mode").mode(0o644),
            f("mtime.txt", "mtime"),
            f("both.txt", "both").mode(0o600),
            d("dir"),
            f("dir/inner", "inner"),
            l("link", "mode.txt"),
        ],
    );
    env.sync_ok(&[]);
    let before = snapshot(&env.dst);
    set_mode(&env.src.join("mode.txt"), 0o755);
    set_mtime(&env.src.join("mtime.txt"), 1_900_000_000, 1);
    set_mode(&env.src.join("both.txt"), 0o640);
    set_mtime(&env.src.join("both.txt"), 1_900_000_001, 2);
    set_mode(&env.src.join("dir"), 0o750);
    set_mtime(&env.src.join("dir"), 1_900_000_002, 3);
    set_symlink_mtime(&env.src.join("link"), 1_900_000_003, 4);
    set_mtime(&env.src, 1_900_000_004, 5);
    let r = env.sync_ok(&[]);
    env.assert_replica_exact();
    let s = r.summary();
    assert_eq!(s.content_sent, 0, "{}", r.describe());
    assert_eq!(
        r.paths("metadata"),
        vec![".", "both.txt", "dir", "link", "mode.txt", "mtime.txt"],
        "{}",
        r.describe()
    );
    assert_eq!(s.ops, 6, "{}", r.describe());
    let after = snapshot(&env.dst);
    for (k, n) in &before {
        assert_eq!(
            n.ino, after[k].ino,
            "{k} was replaced for a metadata change"
        );
    }
}

/// A file made of one repeated block sends that block once.
pub fn dedup_repeated_chunks_within_a_file(w: Where) {
    let env = Env::new(w);
    let block = random_bytes(14, 256 * 1024);
    build_tree(
        &env.src,
        &[
            f("zeros", vec![0u8; 2 * MIB as usize]),
            f("repeated", block.repeat(4)),
        ],
    );
    let r = env.sync_ok(&[]);
    env.assert_replica_exact();
    let s = r.summary();
    // zeros: one maximal chunk; repeated: about one block plus boundaries.
    assert!(
        s.content_sent <= 64 * 1024 + 256 * 1024 + 128 * 1024,
        "{}",
        r.describe()
    );
    assert_eq!(s.content_sent + s.rebuilt, 3 * MIB, "{}", r.describe());
}

/// Content at a path this pass removes (inside a removed directory) is
/// moved, then copied, never sent again.
pub fn dedup_from_a_removed_directory(w: Where) {
    let env = Env::new(w);
    let big = random_bytes(15, 300_000);
    build_tree(&env.src, &[f("old/deep/a.bin", &big), f("other", "o")]);
    env.sync_ok(&[]);
    fs::remove_dir_all(env.src.join("old")).unwrap();
    build_tree(&env.src, &[f("new/e.bin", &big), f("f.bin", &big)]);
    let r = env.sync_ok(&[]);
    env.assert_replica_exact();
    let s = r.summary();
    assert_eq!(s.content_sent, 0, "{}", r.describe());
    assert_eq!(
        r.paths("removed"),
        vec!["old".to_string()],
        "{}",
        r.describe()
    );
    assert!(s.wire_sent <= 64 * 1024, "{}", r.describe());
}

/// Swapping the names of two files the replica holds sends no content.
pub fn dedup_name_swap(w: Where) {
    let env = Env::new(w);
    let (x, y) = (random_bytes(16, 300_000), random_bytes(17, 300_000));
    build_tree(&env.src, &[f("a.bin", &x), f("b.bin", &y)]);
    env.sync_ok(&[]);
    // Renames: each content keeps its own mtime.
    fs::rename(env.src.join("a.bin"), env.src.join("tmp")).unwrap();
    fs::rename(env.src.join("b.bin"), env.src.join("a.bin")).unwrap();
    fs::rename(env.src.join("tmp"), env.src.join("b.bin")).unwrap();
    set_mtime(&env.src, 1_700_000_000, 0);
    let r = env.sync_ok(&[]);
    env.assert_replica_exact();
    assert_eq!(
        r.summary().content_sent,
        0,
        "a swap re-sent content: {}",
        r.describe()
    );
}

/// A file whose mtime lies before 1970 is replicated to the nanosecond.
pub fn pre_epoch_file_mtime(w: Where) {
    let env = Env::new(w);
    build_tree(
        &env.src,
        &[
            f("old.txt", "old").mtime(-2, 500_000_000),
            f("older.txt", "older").mtime(-315_619_200, 250_000_000),
        ],
    );
    env.sync_ok(&[]);
    env.assert_replica_exact();
    let r = env.sync_ok(&[]);
    assert_eq!(r.summary().ops, 0, "{}", r.describe());
}

/// Directories and symlinks with mtimes before 1970, and a file whose mtime
/// moves before 1970 without a content change, are replicated.
pub fn pre_epoch_dir_and_symlink_mtimes(w: Where) {
    let env = Env::new(w);
    build_tree(&env.src, &[f("f.txt", "f"), f("g.txt", "g")]);
    env.sync_ok(&[]);
    build_tree(
        &env.src,
        &[
            d("old-dir").mtime(-315_619_200, 250_000_000),
            l("old-link", "f.txt").mtime(-31_536_000, 500_000_000),
            f("g.txt", "g").mtime(-1, 1),
        ],
    );
    let r = env.sync(&[]);
    r.assert_ok();
    env.assert_replica_exact();
    let r = env.sync_ok(&[]);
    assert_eq!(r.summary().ops, 0, "{}", r.describe());
}

//! `replica sync SRC DEST` with a local destination directory.

mod common;

use common::scenarios::{self, Env, Where};
use common::*;
use std::fs;

// --- the shared scenarios, against a local directory ------------------------

#[cfg(unix)]
#[test]
fn initial_sync_into_empty() {
    scenarios::initial_sync_into_empty(Where::Local);
}

#[cfg(unix)]
#[test]
fn sync_over_junk() {
    scenarios::sync_over_junk(Where::Local);
}

#[cfg(unix)]
#[test]
fn second_sync_is_a_no_op() {
    scenarios::second_sync_is_a_no_op(Where::Local);
}

#[test]
fn one_byte_change_updates() {
    scenarios::one_byte_change_updates(Where::Local);
}

#[test]
fn replica_emptied_behind_its_back_is_rebuilt() {
    scenarios::replica_emptied_behind_its_back_is_rebuilt(Where::Local);
}

#[test]
fn small_text_edits_send_little() {
    scenarios::small_text_edits_send_little(Where::Local);
}

#[cfg(unix)]
#[test]
fn deletions_propagate() {
    scenarios::deletions_propagate(Where::Local);
}

#[cfg(unix)]
#[test]
fn absolute_symlinks() {
    scenarios::absolute_symlinks(Where::Local);
}

#[test]
fn long_names() {
    scenarios::long_names(Where::Local);
}

#[cfg(unix)]
#[test]
fn metadata_only_changes() {
    scenarios::metadata_only_changes(Where::Local);
}

#[test]
fn pre_epoch_file_mtime() {
    scenarios::pre_epoch_file_mtime(Where::Local);
}

#[cfg(unix)]
#[test]
fn pre_epoch_dir_and_symlink_mtimes() {
    scenarios::pre_epoch_dir_and_symlink_mtimes(Where::Local);
}

#[test]
fn dedup_repeated_chunks_within_a_file() {
    scenarios::dedup_repeated_chunks_within_a_file(Where::Local);
}

#[test]
fn dedup_from_a_removed_directory() {
    scenarios::dedup_from_a_removed_directory(Where::Local);
}

#[test]
fn dedup_name_swap() {
    scenarios::dedup_name_swap(Where::Local);
}

#[test]
fn dedup_within_one_pass() {
    scenarios::dedup_within_one_pass(Where::Local);
}

#[test]
fn dedup_across_checkpoints_into_a_fresh_replica() {
    scenarios::dedup_across_checkpoints_into_a_fresh_replica(Where::Local);
}

#[test]
fn dedup_copy_and_rename() {
    scenarios::dedup_copy_and_rename(Where::Local);
}

#[test]
fn dedup_shared_content() {
    scenarios::dedup_shared_content(Where::Local);
}

// --- local-mode specifics ----------------------------------------------------

#[test]
fn source_equal_to_destination_is_refused() {
    let env = Env::new(Where::Local);
    build_tree(&env.src, &[f("a", "a"), d("dir")]);
    let before = snapshot(&env.src);
    let r: Run = run_sync(&env.src, env.src.to_str().unwrap(), &env.state, &[]).into();
    r.assert_code(2);
    assert!(r.stderr.contains("source"), "{}", r.describe());
    // The same directory spelled differently.
    let other = env.src.join("dir").join("..");
    let r: Run = run_sync(&env.src, other.to_str().unwrap(), &env.state, &["--force"]).into();
    r.assert_code(2);
    assert_untouched(&before, &snapshot(&env.src));
}

#[test]
fn destination_inside_source_needs_force() {
    let env = Env::new(Where::Local);
    build_tree(&env.src, &[f("a", "a"), d("dir"), f("dir/b", "b")]);
    let before = snapshot(&env.src);
    let inner = env.src.join("replica");
    let r: Run = run_sync(&env.src, inner.to_str().unwrap(), &env.state, &[]).into();
    r.assert_code(2);
    assert!(r.stderr.contains("--force"), "{}", r.describe());
    assert!(!inner.exists(), "refused sync created the destination");
    assert_untouched(&before, &snapshot(&env.src));

    // With --force the destination is skipped when scanning the source.
    let r: Run = run_sync(&env.src, inner.to_str().unwrap(), &env.state, &["--force"]).into();
    r.assert_ok();
    let mut expected = snapshot(&env.src);
    expected.retain(|k, _| k != "replica" && !k.starts_with("replica/"));
    assert_snapshots_equal(&expected, &snapshot(&inner));
    let r: Run = run_sync(&env.src, inner.to_str().unwrap(), &env.state, &["--force"]).into();
    r.assert_ok();
    assert_eq!(r.summary().ops, 0, "{}", r.describe());
}

#[cfg(unix)]
#[test]
fn fifo_is_skipped_with_a_warning() {
    let env = Env::new(Where::Local);
    build_tree(&env.src, &[f("a", "a"), d("sub"), f("sub/b", "b")]);
    let st = std::process::Command::new("mkfifo")
        .arg(env.src.join("sub/pipe"))
        .status()
        .expect("mkfifo");
    assert!(st.success());
    set_mtime(&env.src.join("sub"), 1_555_555_555, 555);
    let r = env.sync_ok(&[]);
    assert!(
        r.stderr
            .lines()
            .any(|l| l.contains("warning") && l.contains("sub/pipe")),
        "no warning naming the FIFO: {}",
        r.describe()
    );
    let mut expected = snapshot(&env.src);
    assert_eq!(
        expected.remove("sub/pipe").map(|n| n.kind),
        Some(Kind::Special)
    );
    assert_snapshots_equal(&expected, &snapshot(&env.dst));
}

#[cfg(unix)]
#[test]
fn dry_run_changes_nothing() {
    let env = Env::new(Where::Local);
    build_tree(
        &env.src,
        &[
            f("keep", "keep"),
            f("change", "new content"),
            d("newdir"),
            f("newdir/n", "n"),
            l("ln", "keep"),
        ],
    );
    env.sync_ok(&[]);
    fs::write(env.src.join("change"), "changed content!").unwrap();
    fs::write(env.src.join("added"), "added").unwrap();
    fs::remove_file(env.src.join("ln")).unwrap();
    fs::write(env.dst.join("junk"), "junk").unwrap();
    let before = snapshot(&env.dst);
    let dry = env.sync(&["--dry-run"]);
    dry.assert_ok();
    assert_untouched(&before, &snapshot(&env.dst));
    let s = dry.summary();
    assert!(
        s.dry_run,
        "summary should say 'would be done': {}",
        dry.describe()
    );
    assert!(s.ops >= 4, "{}", dry.describe());
    // A second dry run still plans the same and still changes nothing.
    let dry2 = env.sync(&["--dry-run"]);
    dry2.assert_ok();
    assert_untouched(&before, &snapshot(&env.dst));
    // The real pass does what the dry run announced.
    let real = env.sync_ok(&[]);
    env.assert_replica_exact();
    let mut a: Vec<(String, String)> = dry.ops().into_iter().map(|o| (o.op, o.path)).collect();
    let mut b: Vec<(String, String)> = real.ops().into_iter().map(|o| (o.op, o.path)).collect();
    a.sort();
    b.sort();
    assert_eq!(
        a,
        b,
        "dry run and real run disagree\n{}\n{}",
        dry.describe(),
        real.describe()
    );
    assert_eq!(dry.summary().ops, real.summary().ops);
}

#[test]
fn max_delete_stops_before_removing() {
    let env = Env::new(Where::Local);
    build_tree(
        &env.src,
        &[f("a", "a"), f("b", "b"), f("c", "c"), f("d", "d")],
    );
    env.sync_ok(&[]);
    for n in ["b", "c", "d"] {
        fs::remove_file(env.src.join(n)).unwrap();
    }
    fs::write(env.src.join("new"), "new").unwrap();
    let before = snapshot(&env.dst);
    let r = env.sync(&["--max-delete", "1"]);
    r.assert_code(1);
    assert!(r.stderr.contains("max-delete"), "{}", r.describe());
    assert_untouched(&before, &snapshot(&env.dst));
    assert!(r.paths("removed").is_empty(), "{}", r.describe());
    // Within the limit the pass goes through.
    let r = env.sync_ok(&["--max-delete", "3"]);
    assert_eq!(
        r.paths("removed"),
        vec!["b".to_string(), "c".into(), "d".into()]
    );
    env.assert_replica_exact();
}

#[test]
fn max_delete_counts_a_whole_directory() {
    let env = Env::new(Where::Local);
    build_tree(
        &env.src,
        &[f("a", "a"), d("dir"), f("dir/1", "1"), f("dir/2", "2")],
    );
    env.sync_ok(&[]);
    fs::remove_dir_all(env.src.join("dir")).unwrap();
    let before = snapshot(&env.dst);
    let r = env.sync(&["--max-delete", "2"]);
    r.assert_code(1);
    assert_untouched(&before, &snapshot(&env.dst));
    env.sync_ok(&["--max-delete", "3"]);
    env.assert_replica_exact();
}

#[test]
fn exclude_keeps_files_out_and_leaves_replica_copies_alone() {
    let env = Env::new(Where::Local);
    build_tree(
        &env.dst,
        &[
            f("keep.log", "already in the replica"),
            f("stale.txt", "stale"),
        ],
    );
    let keep_before = node_of(&env.dst.join("keep.log"));
    build_tree(
        &env.src,
        &[
            f("a.log", "log"),
            d("sub"),
            f("sub/b.log", "log"),
            f("sub/c.txt", "c"),
            f("keep.txt", "k"),
        ],
    );
    let r = env.sync_ok(&["--exclude", "*.log"]);
    assert!(!env.dst.join("a.log").exists());
    assert!(!env.dst.join("sub/b.log").exists());
    assert!(env.dst.join("sub/c.txt").exists());
    assert!(!env.dst.join("stale.txt").exists());
    let keep_after = node_of(&env.dst.join("keep.log"));
    assert_eq!(
        keep_before, keep_after,
        "an excluded replica file was touched"
    );
    assert!(
        r.ops().iter().all(|o| !o.path.ends_with(".log")),
        "{}",
        r.describe()
    );
    // Apart from the excluded paths the trees are equal.
    let mut src = snapshot(&env.src);
    src.retain(|k, _| !k.ends_with(".log"));
    let mut dst = snapshot(&env.dst);
    dst.retain(|k, _| !k.ends_with(".log"));
    assert_snapshots_equal(&src, &dst);
    // Again: nothing to do, keep.log still there.
    let r = env.sync_ok(&["--exclude", "*.log"]);
    assert_eq!(r.summary().ops, 0, "{}", r.describe());
    assert_eq!(keep_before, node_of(&env.dst.join("keep.log")));
    // --delete-excluded removes it.
    let r = env.sync_ok(&["--exclude", "*.log", "--delete-excluded"]);
    assert_eq!(
        r.paths("removed"),
        vec!["keep.log".to_string()],
        "{}",
        r.describe()
    );
    assert!(!env.dst.join("keep.log").exists());
}

#[test]
fn replicaignore_file_is_honoured() {
    let env = Env::new(Where::Local);
    build_tree(
        &env.src,
        &[
            f(".replicaignore", "# comment\nbuild/\n*.tmp\n"),
            d("build"),
            f("build/out", "o"),
            f("x.tmp", "t"),
            f("x", "x"),
        ],
    );
    env.sync_ok(&[]);
    assert!(env.dst.join("x").exists());
    assert!(env.dst.join(".replicaignore").exists());
    assert!(!env.dst.join("build").exists());
    assert!(!env.dst.join("x.tmp").exists());
}

#[test]
fn log_file_gets_one_line_per_operation() {
    let env = Env::new(Where::Local);
    build_tree(
        &env.src,
        &[
            f("a", "a"),
            f("b", "b"),
            d("dir"),
            f("dir/c", "c"),
            d("empty"),
        ],
    );
    build_tree(&env.dst, &[f("junk", "junk")]);
    let log = env.tmp.path().join("ops.log");
    let r = env.sync_ok(&["--log-file", log.to_str().unwrap()]);
    let text = fs::read_to_string(&log).unwrap();
    let logged = op_lines(&text);
    let s = r.summary();
    assert_eq!(logged.len() as u64, s.ops, "log:\n{text}\n{}", r.describe());
    let mut a: Vec<(String, String)> = logged
        .iter()
        .map(|o| (o.op.clone(), o.path.clone()))
        .collect();
    let mut b: Vec<(String, String)> = r.ops().into_iter().map(|o| (o.op, o.path)).collect();
    a.sort();
    b.sort();
    assert_eq!(a, b, "log:\n{text}");
    for p in ["a", "b", "dir", "dir/c", "empty", "junk"] {
        assert!(
            logged.iter().any(|o| o.path == p),
            "{p} missing from the log:\n{text}"
        );
    }
    // Every line of the file starts with an RFC 3339 timestamp.
    for line in text.lines() {
        let ts = line.split(' ').next().unwrap();
        assert!(ts.len() >= 20 && ts.contains('T'), "bad log line {line:?}");
    }
    // A second run appends (nothing to do: no more op lines).
    env.sync_ok(&["--log-file", log.to_str().unwrap()]);
    let text2 = fs::read_to_string(&log).unwrap();
    assert!(text2.starts_with(&text));
    assert_eq!(op_lines(&text2).len(), logged.len());
}

#[test]
fn usage_errors_exit_2() {
    let env = Env::new(Where::Local);
    let bad_target: Run = run_sync(&env.src, "replica://no-port", &env.state, &[]).into();
    bad_target.assert_code(2);
    let bad_flag: Run = run_sync(
        &env.src,
        env.dst.to_str().unwrap(),
        &env.state,
        &["--no-such-flag"],
    )
    .into();
    bad_flag.assert_code(2);
    fs::write(env.tmp.path().join("file"), "x").unwrap();
    let not_dir: Run = run_sync(
        &env.tmp.path().join("file"),
        env.dst.to_str().unwrap(),
        &env.state,
        &[],
    )
    .into();
    // A source that is not a directory is what an unmounted disk or a
    // wrong path looks like: a failure (exit 1) that touches nothing.
    not_dir.assert_code(1);
    assert!(!env.dst.exists());
}

/// Makes a file immutable (`chattr +i`) until dropped; `None` where the
/// platform or the container does not allow it.
#[cfg(target_os = "linux")]
struct Immutable(std::path::PathBuf);

#[cfg(target_os = "linux")]
impl Immutable {
    fn set(p: &std::path::Path) -> Option<Immutable> {
        let ok = std::process::Command::new("chattr")
            .arg("+i")
            .arg(p)
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        // Even root cannot remove it now, or the test cannot rely on it.
        (ok && fs::remove_file(p).is_err()).then(|| Immutable(p.to_path_buf()))
    }
}

#[cfg(target_os = "linux")]
impl Drop for Immutable {
    fn drop(&mut self) {
        let _ = std::process::Command::new("chattr")
            .arg("-i")
            .arg(&self.0)
            .status();
    }
}

/// A replica entry that cannot be removed is one error: the rest of the
/// pass goes on, the error is printed once, the exit code is 1.
#[cfg(target_os = "linux")]
#[test]
fn an_entry_that_cannot_be_removed_is_one_error_printed_once() {
    let env = Env::new(Where::Local);
    build_tree(&env.dst, &[f("stuck", "immutable"), f("a", "old")]);
    let Some(_guard) = Immutable::set(&env.dst.join("stuck")) else {
        eprintln!("chattr +i is not available here; skipping");
        return;
    };
    build_tree(&env.src, &[f("a", "new"), f("b", "b"), d("dir")]);
    let r = env.sync(&[]);
    r.assert_code(1);
    let errors: Vec<OpLine> = r.ops().into_iter().filter(|o| o.op == "error").collect();
    assert_eq!(errors.len(), 1, "one error line expected: {}", r.describe());
    assert_eq!(errors[0].path, "stuck");
    assert_eq!(r.summary().errors, 1, "{}", r.describe());
    // Everything else was done.
    let mut expected = snapshot(&env.src);
    expected.insert("stuck".into(), node_of(&env.dst.join("stuck")));
    assert_snapshots_equal(&expected, &snapshot(&env.dst));
}

#[test]
fn excluded_files_inside_a_removed_directory_are_kept() {
    let env = Env::new(Where::Local);
    build_tree(&env.src, &[f("a", "a"), f("olddir/x", "x")]);
    env.sync_ok(&["--exclude", "*.log"]);
    fs::write(env.dst.join("olddir/keep.log"), "keep").unwrap();
    fs::remove_dir_all(env.src.join("olddir")).unwrap();
    let r = env.sync_ok(&["--exclude", "*.log"]);
    assert_eq!(
        fs::read_to_string(env.dst.join("olddir/keep.log"))
            .ok()
            .as_deref(),
        Some("keep"),
        "an excluded replica file was deleted: {}",
        r.describe()
    );
    assert!(!env.dst.join("olddir/x").exists(), "{}", r.describe());
}

#[cfg(unix)]
#[test]
fn every_repeats_passes_until_sigterm() {
    let env = Env::new(Where::Local);
    build_tree(&env.src, &[f("a", "1")]);
    let mut p = Proc::spawn(&[
        "sync".as_ref(),
        env.src.as_os_str(),
        env.dst.as_os_str(),
        "--state-dir".as_ref(),
        env.state.as_os_str(),
        "--every".as_ref(),
        "1s".as_ref(),
    ]);
    assert!(
        poll_until(DEADLINE, || fs::read(env.dst.join("a")).ok().as_deref()
            == Some(b"1")),
        "{}",
        p.describe()
    );
    fs::write(env.src.join("b"), "2").unwrap();
    assert!(
        poll_until(DEADLINE, || fs::read(env.dst.join("b")).ok().as_deref()
            == Some(b"2")),
        "{}",
        p.describe()
    );
    assert!(p.alive(), "{}", p.describe());
    // Between passes (a signal during one cuts it off: exit 143).
    assert!(
        poll_until(DEADLINE, || p.stdout().matches(" summary: ").count() >= 2),
        "{}",
        p.describe()
    );
    p.terminate();
    let status = p.wait_exit(DEADLINE).expect("still running after SIGTERM");
    assert_eq!(status.code(), Some(0), "{}", p.describe());
    env.assert_replica_exact();
    assert!(
        p.stdout().matches(" summary: ").count() >= 2,
        "{}",
        p.describe()
    );
}

#[test]
fn source_names_that_look_like_temp_files_are_replicated() {
    let env = Env::new(Where::Local);
    build_tree(
        &env.src,
        &[
            f(".replica-tmp-notes", "mine"),
            d("sub"),
            f("sub/.replica-tmp-1-2.x", "also mine"),
        ],
    );
    env.sync_ok(&[]);
    env.assert_replica_exact();
    let before = snapshot(&env.dst);
    let r = env.sync_ok(&[]);
    assert_eq!(r.summary().ops, 0, "{}", r.describe());
    assert_untouched(&before, &snapshot(&env.dst));
}

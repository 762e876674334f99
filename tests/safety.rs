//! Never lose or miss a file: odd names replicate (and a replica that
//! cannot hold a name fails that entry alone), an empty or missing source
//! never wipes a replica, and what `watch` once missed.

mod common;

use common::*;
use common::{run_replica, run_sync, snapshot, Run, Server};
use std::ffi::OsStr;
use std::fs;
use std::path::Path;
use std::time::Duration;

/// Names that are ordinary on Linux and macOS but odd elsewhere.
const ODD: &[&str] = &[
    "C:",
    "colon:name",
    "star*",
    "question?",
    "pipe|",
    "angle<>",
    "back\\slash",
    "trailing.dot.",
    "CON",
    "nul",
    "new\nline",
];

fn odd_tree(root: &Path) {
    for (i, n) in ODD.iter().enumerate() {
        write_file(root, n, format!("file {i}\n").as_bytes());
    }
    write_file(&root.join("C:dir"), "inside", b"inside a drive-like dir\n");
    write_file(&root.join("dir.").join("CON"), "x", b"deep\n");
}

fn sync(src: &Path, target: &str, state: &Path, extra: &[&str]) -> Run {
    run_sync(src, target, state, extra).into()
}

#[test]
fn odd_names_replicate_exactly_locally() {
    let d = Dirs::new();
    odd_tree(&d.src);
    let st = tempfile::tempdir().unwrap();
    sync(&d.src, &d.dst.display().to_string(), st.path(), &[]).assert_ok();
    common::assert_trees_equal(&d.src, &d.dst);
    // And a second pass has nothing to do.
    let again = sync(&d.src, &d.dst.display().to_string(), st.path(), &[]);
    again.assert_ok();
    assert_eq!(again.summary().ops, 0, "{}", again.describe());
}

#[test]
fn odd_names_replicate_exactly_over_tls() {
    let d = Dirs::new();
    odd_tree(&d.src);
    let server = Server::start_with(&d.dst, &["--min-free", "0"]);
    let st = tempfile::tempdir().unwrap();
    let args = server.client_args();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    sync(&d.src, &server.target(), st.path(), &args).assert_ok();
    common::assert_trees_equal(&d.src, &d.dst);
}

/// A replica that cannot hold a name (a Windows server, or one started
/// with --portable-names) fails those entries alone; the rest lands.
#[test]
fn names_the_replica_cannot_hold_fail_alone() {
    let d = Dirs::new();
    odd_tree(&d.src);
    write_file(&d.src, "plain.txt", b"plain\n");
    write_file(&d.src.join("ok dir"), "inner", b"inner\n");
    let server = Server::start_with(&d.dst, &["--min-free", "0", "--portable-names"]);
    let st = tempfile::tempdir().unwrap();
    let args = server.client_args();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let run = sync(&d.src, &server.target(), st.path(), &args);
    run.assert_code(1);
    let errors = run.paths("error");
    for n in [
        "C:",
        "colon:name",
        "star*",
        "question?",
        "pipe|",
        "angle<>",
        "back\\slash",
        "trailing.dot.",
        "CON",
        "nul",
        "C:dir",
        "dir.",
    ] {
        assert!(
            errors.iter().any(|e| e == n),
            "no error line for {n:?}: {errors:?}\n{}",
            run.describe()
        );
        assert!(
            fs::symlink_metadata(d.dst.join(n)).is_err(),
            "{n:?} was created"
        );
    }
    assert_eq!(fs::read(d.dst.join("plain.txt")).unwrap(), b"plain\n");
    assert_eq!(
        fs::read(d.dst.join("ok dir").join("inner")).unwrap(),
        b"inner\n"
    );
}

/// The wire still refuses every escape, before anything touches the disk.
#[test]
fn escapes_are_still_refused_before_anything_is_touched() {
    use replica::tree::{Entry, Kind, Timestamp};
    let d = Dirs::new();
    write_file(&d.dst, "keep", b"keep");
    let before = snapshot(&d.dst);
    let server = Server::start_with(&d.dst, &["--min-free", "0", "--insecure-plaintext"]);
    for bad in ["..", ".", "", "a/b", "a\0b", "/etc"] {
        let (mut s, reply) = common::raw_session(&server, "");
        assert!(matches!(
            reply,
            replica::protocol::HelloReply::Welcome { .. }
        ));
        let entry = |parent: u32, name: &str, kind: Kind| Entry {
            parent,
            name: name.into(),
            kind,
            mode: None,
            mtime: Timestamp::default(),
        };
        use replica::protocol::ClientMsg;
        common::send_msg(&mut s, &ClientMsg::BeginPass(Default::default())).unwrap();
        common::send_msg(
            &mut s,
            &ClientMsg::Entries(vec![
                entry(0, "", Kind::Dir),
                entry(0, bad, Kind::File { size: 1 }),
            ]),
        )
        .unwrap();
        common::send_msg(
            &mut s,
            &ClientMsg::EndManifest {
                opaque: vec![],
                partial: vec![],
            },
        )
        .unwrap();
        // A Fatal naming the manifest, or the connection closed: never a plan.
        if let Ok(Some(reply)) = common::read_message(&mut s) {
            let msg: replica::protocol::ServerMsg = replica::protocol::decode(&reply).unwrap();
            assert!(
                matches!(&msg, replica::protocol::ServerMsg::Fatal { reason } if reason.contains("invalid manifest")),
                "{bad:?}: {msg:?}"
            );
        }
    }
    common::assert_untouched(&before, &snapshot(&d.dst));
}

#[test]
fn an_empty_source_does_not_wipe_the_replica() {
    let d = Dirs::new();
    write_file(&d.src, "a/b.txt", b"precious");
    write_file(&d.src, "c.txt", b"also precious");
    let st = tempfile::tempdir().unwrap();
    let target = d.dst.display().to_string();
    sync(&d.src, &target, st.path(), &[]).assert_ok();
    fs::remove_dir_all(d.src.join("a")).unwrap();
    fs::remove_file(d.src.join("c.txt")).unwrap();
    let before = snapshot(&d.dst);
    let run = sync(&d.src, &target, st.path(), &[]);
    run.assert_code(1);
    assert!(
        run.stderr.contains(&d.src.display().to_string())
            && run.stderr.contains("--allow-empty-source")
            && run.stderr.contains("nothing was changed"),
        "{}",
        run.describe()
    );
    assert_eq!(
        run.stderr.lines().filter(|l| l.contains("empty")).count(),
        1,
        "one line: {}",
        run.describe()
    );
    assert!(
        !run.stderr.contains("no errors") && !run.stderr.contains("up to date"),
        "a refused pass never reads as fine: {}",
        run.describe()
    );
    common::assert_untouched(&before, &snapshot(&d.dst));
    // Over TLS too.
    let server = Server::start_with(&d.dst, &["--min-free", "0"]);
    let args = server.client_args();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let run = sync(&d.src, &server.target(), st.path(), &args);
    run.assert_code(1);
    common::assert_untouched(&before, &snapshot(&d.dst));
    // On purpose, it empties the replica.
    let mut with = args.clone();
    with.push("--allow-empty-source");
    sync(&d.src, &server.target(), st.path(), &with).assert_ok();
    common::assert_trees_equal(&d.src, &d.dst);
}

#[test]
fn a_missing_or_wrong_source_changes_nothing_and_fails() {
    let d = Dirs::new();
    write_file(&d.dst, "keep.txt", b"keep");
    let before = snapshot(&d.dst);
    let st = tempfile::tempdir().unwrap();
    let missing = d.tmp.path().join("not-mounted");
    let file = d.tmp.path().join("a-file");
    fs::write(&file, b"x").unwrap();
    for src in [&missing, &file] {
        let run = run_replica(&[
            OsStr::new("sync"),
            src.as_os_str(),
            d.dst.as_os_str(),
            OsStr::new("--state-dir"),
            st.path().as_os_str(),
        ]);
        run.assert_code(1);
        let line = run.stderr.trim();
        assert!(
            line.lines().count() == 1
                && line.contains(&src.display().to_string())
                && line.contains("nothing was changed"),
            "{}",
            run.describe()
        );
        common::assert_untouched(&before, &snapshot(&d.dst));
    }
}

#[test]
fn ordinary_deletions_still_propagate() {
    let d = Dirs::new();
    write_file(&d.src, "keep.txt", b"k");
    write_file(&d.src, "dir/a", b"a");
    write_file(&d.src, "dir/b", b"b");
    for i in 0..50 {
        write_file(&d.src, &format!("many/{i}"), b"m");
    }
    let st = tempfile::tempdir().unwrap();
    let target = d.dst.display().to_string();
    sync(&d.src, &target, st.path(), &[]).assert_ok();
    fs::remove_dir_all(d.src.join("dir")).unwrap();
    fs::remove_dir_all(d.src.join("many")).unwrap();
    sync(&d.src, &target, st.path(), &[]).assert_ok();
    common::assert_trees_equal(&d.src, &d.dst);
}

/// `watch` with a local target, waiting for its first pass.
fn start_watch(src: &Path, dst: &Path, state: &Path) -> Watch {
    let w = Watch::spawn(src, &[dst.display().to_string()], state, &[]);
    w.wait_summaries(1);
    w
}

#[test]
fn watch_pauses_when_the_source_empties_at_once_and_resumes() {
    let d = Dirs::new();
    write_file(&d.src, "all/b.txt", b"precious");
    write_file(&d.src, "all/c.txt", b"also precious");
    let st = tempfile::tempdir().unwrap();
    let w = start_watch(&d.src, &d.dst, st.path());
    wait_equal(&d.src, &d.dst, CONVERGE, || w.describe());
    let before = snapshot(&d.dst);
    // Everything goes at once (one rename), as when a disk is unmounted.
    fs::rename(d.src.join("all"), d.tmp.path().join("elsewhere")).unwrap();
    assert!(
        common::poll_until(CONVERGE, || w.stderr().contains("paused")),
        "no pause line\n{}",
        w.describe()
    );
    assert!(
        w.stderr().contains("--allow-empty-source"),
        "{}",
        w.describe()
    );
    common::assert_untouched(&before, &snapshot(&d.dst));
    // Content comes back: replication resumes and converges.
    write_file(&d.src, "new.txt", b"back");
    wait_equal(&d.src, &d.dst, CONVERGE, || w.describe());
    assert!(
        common::poll_until(CONVERGE, || w.stdout().contains("resumed")),
        "{}",
        w.describe()
    );
    w.stop();
}

#[test]
fn watch_survives_its_source_root_vanishing_and_coming_back() {
    let d = Dirs::new();
    write_file(&d.src, "a/b.txt", b"precious");
    let st = tempfile::tempdir().unwrap();
    let w = start_watch(&d.src, &d.dst, st.path());
    wait_equal(&d.src, &d.dst, CONVERGE, || w.describe());
    let before = snapshot(&d.dst);
    let aside = d.tmp.path().join("aside");
    fs::rename(&d.src, &aside).unwrap();
    assert!(
        common::poll_until(CONVERGE, || w.stderr().contains("paused")),
        "no pause line\n{}",
        w.describe()
    );
    common::assert_untouched(&before, &snapshot(&d.dst));
    // The root comes back (a remount): new changes are watched again.
    fs::rename(&aside, &d.src).unwrap();
    write_file(&d.src, "a/after.txt", b"after");
    wait_equal(&d.src, &d.dst, CONVERGE, || w.describe());
    write_file(&d.src, "a/later.txt", b"later, watched again");
    wait_equal(&d.src, &d.dst, CONVERGE, || w.describe());
    assert!(
        common::poll_until(CONVERGE, || w.stdout().contains("is back")),
        "{}",
        w.describe()
    );
    w.stop();
}

#[test]
fn watch_still_propagates_ordinary_deletions() {
    let d = Dirs::new();
    write_file(&d.src, "keep.txt", b"k");
    write_file(&d.src, "one.txt", b"1");
    write_file(&d.src, "dir/a", b"a");
    for i in 0..30 {
        write_file(&d.src, &format!("many/{i}"), b"m");
    }
    let st = tempfile::tempdir().unwrap();
    let w = start_watch(&d.src, &d.dst, st.path());
    wait_equal(&d.src, &d.dst, CONVERGE, || w.describe());
    fs::remove_file(d.src.join("one.txt")).unwrap();
    wait_equal(&d.src, &d.dst, CONVERGE, || w.describe());
    fs::remove_dir_all(d.src.join("dir")).unwrap();
    fs::remove_dir_all(d.src.join("many")).unwrap();
    wait_equal(&d.src, &d.dst, CONVERGE, || w.describe());
    assert!(!w.stderr().contains("paused"), "{}", w.describe());
    w.stop();
}

/// Regression (found by the convergence harness, seed 7): a chmod or a
/// write through one name of a hard-linked file left its other names stale,
/// because the kernel reports the change for the name used only.
#[cfg(unix)]
#[test]
fn watch_change_through_one_hard_link_reaches_every_name() {
    use std::os::unix::fs::PermissionsExt;
    let d = Dirs::new();
    write_file(&d.src, "a/img.png", b"original picture");
    let st = tempfile::tempdir().unwrap();
    let w = start_watch(&d.src, &d.dst, st.path());
    wait_equal(&d.src, &d.dst, CONVERGE, || w.describe());
    // A new link to a file the watcher saw with one name.
    fs::hard_link(d.src.join("a/img.png"), d.src.join("question?")).unwrap();
    wait_equal(&d.src, &d.dst, CONVERGE, || w.describe());
    fs::set_permissions(d.src.join("question?"), fs::Permissions::from_mode(0o640)).unwrap();
    wait_equal(&d.src, &d.dst, CONVERGE, || w.describe());
    fs::write(d.src.join("a/img.png"), b"edited through the other name").unwrap();
    wait_equal(&d.src, &d.dst, CONVERGE, || w.describe());
    w.stop();
}

/// The replica never sees a file disappear for good just because a pass was
/// cut: a restart converges (kept short; the harness does the long version).
#[test]
fn a_watch_restarted_mid_burst_converges() {
    let d = Dirs::new();
    for i in 0..20 {
        write_file(&d.src, &format!("d{}/f{i}", i % 4), &vec![b'x'; 1000 + i]);
    }
    let st = tempfile::tempdir().unwrap();
    let w = start_watch(&d.src, &d.dst, st.path());
    for i in 0..20 {
        write_file(&d.src, &format!("d{}/g{i}", i % 3), &vec![b'y'; 2000 + i]);
    }
    w.stop();
    let w = start_watch(&d.src, &d.dst, st.path());
    wait_equal(&d.src, &d.dst, Duration::from_secs(30), || w.describe());
    w.stop();
}

/// Regression (the file `watch` missed): a folder renamed or deleted and
/// made again at once under the same name lost its watch. The watcher
/// drops a folder's watch (and those below it) when the folder moves away
/// or is deleted, but the set of watched folders still listed the name, so
/// the new folder was never watched and a file created in it later never
/// reached the replica.
#[test]
fn watch_sees_files_in_a_folder_made_again_under_the_same_name() {
    for remake in ["rename", "delete"] {
        let d = Dirs::new();
        write_file(&d.src, "keep", b"k");
        write_file(&d.src, "d1/sub/old.txt", b"old");
        let st = tempfile::tempdir().unwrap();
        let w = start_watch(&d.src, &d.dst, st.path());
        wait_equal(&d.src, &d.dst, CONVERGE, || w.describe());
        match remake {
            "rename" => fs::rename(d.src.join("d1"), d.src.join("d2")).unwrap(),
            _ => fs::remove_dir_all(d.src.join("d1")).unwrap(),
        }
        fs::create_dir_all(d.src.join("d1").join("sub")).unwrap();
        wait_equal(&d.src, &d.dst, CONVERGE, || w.describe());
        // Later, a new file in the folder made again.
        write_file(&d.src, "d1/new.txt", &vec![b'n'; 1500]);
        write_file(&d.src, "d1/sub/new.txt", &vec![b's'; 1500]);
        wait_equal(&d.src, &d.dst, CONVERGE, || {
            format!("{remake}\n{}", w.describe())
        });
        w.stop();
    }
}

/// Regression (found by the convergence harness, seed 4): a full rescan
/// forgot the changes it was holding back. A file found in a brand-new
/// folder is held briefly (it may still be written); a rescan starting
/// meanwhile skipped it as held and dropped it from the changes to send,
/// so when the hold ended nothing sent it.
#[cfg(unix)]
#[test]
fn watch_rescan_keeps_files_it_holds_back() {
    let d = Dirs::new();
    write_file(&d.src, "a", b"one name so far");
    let st = tempfile::tempdir().unwrap();
    let w = start_watch(&d.src, &d.dst, st.path());
    wait_equal(&d.src, &d.dst, CONVERGE, || w.describe());
    // A new folder with a file in it (held briefly), and a hard link whose
    // other name the watcher does not know yet (a full rescan), at once.
    write_file(&d.src, "new/f.txt", b"");
    fs::hard_link(d.src.join("a"), d.src.join("a2")).unwrap();
    wait_equal(&d.src, &d.dst, CONVERGE, || w.describe());
    w.stop();
}

//! Hard links (issue 17): files sharing an inode in the source share one in
//! the replica, their content is sent once, and links added or broken later
//! are followed — over the network and locally.

#![cfg(unix)]

mod common;

use common::{assert_trees_equal, build_tree, f, random_bytes, run_sync, Run, Server};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

fn ino(p: &Path) -> u64 {
    std::fs::symlink_metadata(p).unwrap().ino()
}

fn nlink(p: &Path) -> u64 {
    std::fs::symlink_metadata(p).unwrap().nlink()
}

/// Asserts the replica's names `same` share one inode with exactly that
/// many links, and `apart` each have an inode of their own.
#[track_caller]
fn assert_groups(dst: &Path, same: &[&str], apart: &[&str]) {
    let first = ino(&dst.join(same[0]));
    for n in same {
        assert_eq!(ino(&dst.join(n)), first, "{n} is not linked to {}", same[0]);
        assert_eq!(nlink(&dst.join(n)) as usize, same.len(), "links of {n}");
    }
    for n in apart {
        assert_eq!(nlink(&dst.join(n)), 1, "{n} should stand alone");
    }
}

fn link(src: &Path, from: &str, to: &str) {
    std::fs::hard_link(src.join(from), src.join(to)).unwrap();
}

fn sync(src: &Path, target: &str, state: &Path, args: &[String]) -> Run {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let r: Run = run_sync(src, target, state, &args).into();
    r.assert_ok();
    r
}

#[test]
fn groups_are_kept_sent_once_and_followed_when_they_change() {
    let src = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    let (src_p, dst_p) = (src.path(), dst.path());
    build_tree(
        src_p,
        &[
            f("a.bin", random_bytes(1, 300_000)),
            f("d.bin", random_bytes(2, 1000)),
            f("sub/keep.txt", "x"),
        ],
    );
    link(src_p, "a.bin", "b.bin");
    link(src_p, "a.bin", "c.bin");
    link(src_p, "a.bin", "sub/e.bin");
    let server = Server::start_with(dst_p, &["--min-free", "0"]);
    let args = server.client_args();
    let r = sync(src_p, &server.target(), state.path(), &args);
    assert_trees_equal(src_p, dst_p);
    assert_groups(dst_p, &["a.bin", "b.bin", "c.bin", "sub/e.bin"], &["d.bin"]);
    let s = r.summary();
    assert!(
        s.content_sent < 300_000 + 1000 + 1000,
        "the group's content went more than once: {s:?}"
    );

    // A link added, one broken (same content and mtime: only the inode
    // tells), one name removed, and the group's content changed.
    link(src_p, "a.bin", "f.bin");
    std::fs::remove_file(src_p.join("c.bin")).unwrap();
    std::fs::copy(src_p.join("a.bin"), src_p.join("c.bin")).unwrap();
    let t = std::fs::metadata(src_p.join("a.bin"))
        .unwrap()
        .modified()
        .unwrap();
    std::fs::File::options()
        .write(true)
        .open(src_p.join("c.bin"))
        .unwrap()
        .set_modified(t)
        .unwrap();
    std::fs::remove_file(src_p.join("b.bin")).unwrap();
    let r = sync(src_p, &server.target(), state.path(), &args);
    assert_trees_equal(src_p, dst_p);
    assert_groups(dst_p, &["a.bin", "f.bin", "sub/e.bin"], &["c.bin", "d.bin"]);
    assert!(r.summary().content_sent < 1000, "{:?}", r.summary());

    std::fs::write(src_p.join("a.bin"), random_bytes(3, 200_000)).unwrap();
    sync(src_p, &server.target(), state.path(), &args);
    assert_trees_equal(src_p, dst_p);
    assert_groups(dst_p, &["a.bin", "f.bin", "sub/e.bin"], &["c.bin", "d.bin"]);
}

#[test]
fn a_local_sync_keeps_groups_too() {
    let src = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    build_tree(src.path(), &[f("x/one", random_bytes(5, 5000))]);
    link(src.path(), "x/one", "two");
    let target = dst.path().join("replica");
    sync(src.path(), target.to_str().unwrap(), state.path(), &[]);
    assert_trees_equal(src.path(), &target);
    assert_groups(&target, &["x/one", "two"], &[]);
}

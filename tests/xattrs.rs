//! `--xattrs` (issue 17): `user.*` extended attributes of files and
//! directories round-trip, follow changes, and are left out without the
//! option.

#![cfg(target_os = "linux")]

mod common;

use common::{assert_trees_equal, build_tree, d, f, run_sync, Run, Server};
use rustix::fs::{lgetxattr, llistxattr, lremovexattr, lsetxattr, XattrFlags};
use std::path::Path;

fn set(p: &Path, name: &str, value: &[u8]) {
    lsetxattr(p, name, value, XattrFlags::empty()).unwrap();
}

/// `user.*` attributes of `p`, sorted.
fn attrs(p: &Path) -> Vec<(String, Vec<u8>)> {
    let mut list = vec![0u8; 4096];
    let n = llistxattr(p, &mut list[..]).unwrap();
    let mut out: Vec<(String, Vec<u8>)> = list[..n]
        .split(|&b| b == 0)
        .filter_map(|n| std::str::from_utf8(n).ok())
        .filter(|n| n.starts_with("user."))
        .map(|n| {
            let mut v = vec![0u8; 4096];
            let len = lgetxattr(p, n, &mut v[..]).unwrap();
            v.truncate(len);
            (n.to_string(), v)
        })
        .collect();
    out.sort();
    out
}

fn supported(dir: &Path) -> bool {
    let p = dir.join(".probe");
    std::fs::write(&p, "").unwrap();
    let ok = lsetxattr(&p, "user.probe", b"1", XattrFlags::empty()).is_ok();
    std::fs::remove_file(&p).unwrap();
    ok
}

fn sync(src: &Path, target: &str, state: &Path, args: &[String]) -> Run {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let r: Run = run_sync(src, target, state, &args).into();
    r.assert_ok();
    r
}

#[test]
fn user_attributes_round_trip_and_follow_changes() {
    let src = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    let plain = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    if !supported(src.path()) {
        eprintln!("skipped: no user extended attributes on this filesystem");
        return;
    }
    let (s, t) = (src.path(), dst.path());
    build_tree(
        s,
        &[f("doc.txt", "hello"), d("photos"), f("photos/p.jpg", "jpg")],
    );
    set(&s.join("doc.txt"), "user.a", b"1");
    set(&s.join("doc.txt"), "user.b", b"xyz");
    set(&s.join("photos"), "user.tag", b"holiday");
    let server = Server::start_with(t, &["--min-free", "0"]);
    let mut args = server.client_args();
    args.push("--xattrs".into());
    sync(s, &server.target(), state.path(), &args);
    assert_trees_equal(s, t);
    for p in ["doc.txt", "photos", "photos/p.jpg"] {
        assert_eq!(attrs(&t.join(p)), attrs(&s.join(p)), "{p}");
    }
    assert_eq!(attrs(&t.join("doc.txt")).len(), 2);

    // Removed, changed and added attributes; the file's content and mtime
    // stay as they are.
    lremovexattr(s.join("doc.txt"), "user.a").unwrap();
    set(&s.join("doc.txt"), "user.b", b"changed");
    set(&s.join("photos/p.jpg"), "user.new", b"");
    let r = sync(s, &server.target(), state.path(), &args);
    for p in ["doc.txt", "photos", "photos/p.jpg"] {
        assert_eq!(attrs(&t.join(p)), attrs(&s.join(p)), "{p}");
    }
    assert_eq!(r.summary().content_sent, 0);
    let again = sync(s, &server.target(), state.path(), &args);
    assert_eq!(
        again.summary().ops,
        0,
        "a pass with nothing to do did something"
    );

    // Without --xattrs, none are replicated.
    let local = plain.path().join("replica");
    sync(s, local.to_str().unwrap(), state.path(), &[]);
    assert_trees_equal(s, &local);
    assert!(attrs(&local.join("doc.txt")).is_empty());
}

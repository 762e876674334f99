//! Paged full passes outside a plain `sync` (issue 18): `replica watch`'s
//! full passes (the first one, rescans) go as pages and learn the source's
//! hard links page by page; `--max-delete` in a paged pass carries out
//! additions and updates and refuses every removal when there are more
//! than N. With tiny pages (`--page-entries`, hidden), locally and over TLS.

#![cfg(unix)]

mod common;

use common::scenarios::{Env, Where};
use common::*;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

const SMALL: &[&str] = &["--page-entries", "40"];

fn with_small(extra: &[&'static str]) -> Vec<&'static str> {
    let mut v = SMALL.to_vec();
    v.extend_from_slice(extra);
    v
}

/// About 300 files in folders `a/`, `m/`, `z/`: many pages of 40 entries.
fn tree(src: &Path) {
    for i in 0..180u64 {
        write_file(
            src,
            &format!("m/d{}/f{i:03}", i % 6),
            &random_bytes(i, 100 + i as usize),
        );
    }
    for i in 0..60u64 {
        write_file(
            src,
            &format!("a/x{}/g{i}", i % 3),
            &random_bytes(1000 + i, 90),
        );
        write_file(
            src,
            &format!("z/y{}/h{i}", i % 3),
            &random_bytes(2000 + i, 90),
        );
    }
}

fn ino(root: &Path, rel: &str) -> u64 {
    fs::symlink_metadata(root.join(rel)).unwrap().ino()
}

const NAMES: [&str; 3] = ["a/x0/linked", "m/d3/l1", "z/y2/l2"];

fn watch_over_pages(w: Where) {
    let env = Env::new(w);
    tree(&env.src);
    write_file(&env.src, NAMES[0], b"one inode, three names");
    for name in &NAMES[1..] {
        fs::hard_link(env.src.join(NAMES[0]), env.src.join(name)).unwrap();
    }
    let mut args: Vec<String> = env
        .server
        .as_ref()
        .map(Server::client_args)
        .unwrap_or_default();
    args.extend(SMALL.iter().map(|s| s.to_string()));
    let watch = Watch::spawn(&env.src, &[env.target()], &env.state, &args);
    let context = || watch.describe();
    watch.wait_summaries(1);
    wait_equal(&env.src, &env.dst, CONVERGE, context);
    let lead = ino(&env.dst, NAMES[0]);
    for name in &NAMES[1..] {
        assert_eq!(ino(&env.dst, name), lead, "{name}\n{}", context());
    }

    // A write through the last page's name: the kernel reports that name
    // only; the groups learned from the first pass's pages widen it to
    // every name, without a rescan.
    let mut f = fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(env.src.join(NAMES[2]))
        .unwrap();
    std::io::Write::write_all(&mut f, b"written through the third name").unwrap();
    drop(f);
    // And ordinary changes in several pages.
    fs::remove_dir_all(env.src.join("m/d1")).unwrap();
    write_file(&env.src, "z/y0/new", b"new");
    wait_equal(&env.src, &env.dst, CONVERGE, context);
    let ok = poll_until(CONVERGE, || {
        fs::read(env.dst.join(NAMES[0])).unwrap() == b"written through the third name"
    });
    assert!(ok, "the other names were not updated\n{}", context());
    let lead = ino(&env.dst, NAMES[0]);
    for name in &NAMES[1..] {
        assert_eq!(ino(&env.dst, name), lead, "{name}\n{}", context());
    }
    let out = format!("{}{}", watch.stdout(), watch.stderr());
    assert!(
        !out.contains("other names are not known yet"),
        "a rescan was needed: the pages' hard links were not learned\n{}",
        context()
    );
    watch.stop();
}

#[test]
fn watch_pages_its_first_pass_and_learns_hard_links_from_the_pages_locally() {
    watch_over_pages(Where::Local);
}

#[test]
fn watch_pages_its_first_pass_and_learns_hard_links_from_the_pages_over_tls() {
    watch_over_pages(Where::Remote);
}

/// Over the limit, a paged pass still adds and updates, and removes
/// nothing but the entries a type change replaced (counted, within the
/// limit); it fails with one line naming `--max-delete`.
fn max_delete_paged(w: Where) {
    let env = Env::new(w);
    tree(&env.src);
    env.sync_ok(SMALL);
    for i in [0, 3, 6] {
        fs::remove_file(env.src.join(format!("a/x0/g{i}"))).unwrap();
    }
    // A type change in a later page: a file becomes a folder.
    fs::remove_file(env.src.join("z/y1/h1")).unwrap();
    write_file(&env.src, "z/y1/h1/inside", b"inside");
    write_file(&env.src, "m/d2/f002", b"updated");
    write_file(&env.src, "z/y2/added", b"added");

    let r = env.sync(&with_small(&["--max-delete", "1"]));
    r.assert_code(1);
    let said: Vec<&str> = r
        .stderr
        .lines()
        .filter(|l| l.contains("--max-delete"))
        .collect();
    assert_eq!(said.len(), 1, "one line: {}", r.describe());
    assert!(said[0].contains("nothing was removed"), "{}", r.describe());
    assert!(r.paths("removed").is_empty(), "{}", r.describe());
    for i in [0, 3, 6] {
        assert!(
            env.dst.join(format!("a/x0/g{i}")).is_file(),
            "{}",
            r.describe()
        );
    }
    assert_eq!(fs::read(env.dst.join("m/d2/f002")).unwrap(), b"updated");
    assert_eq!(fs::read(env.dst.join("z/y2/added")).unwrap(), b"added");
    assert_eq!(fs::read(env.dst.join("z/y1/h1/inside")).unwrap(), b"inside");

    // Within the limit every removal happens.
    let r = env.sync_ok(&with_small(&["--max-delete", "3"]));
    assert_eq!(r.paths("removed").len(), 3, "{}", r.describe());
    env.assert_replica_exact();

    // A type change counts: over the limit, its page stops the pass
    // (earlier pages may have set their folders' new mtimes).
    fs::remove_dir_all(env.src.join("z/y1/h1")).unwrap();
    write_file(&env.src, "z/y1/h1", b"a file again");
    let r = env.sync(&with_small(&["--max-delete", "0"]));
    r.assert_code(1);
    assert!(r.stderr.contains("--max-delete 0"), "{}", r.describe());
    assert!(r.paths("removed").is_empty(), "{}", r.describe());
    assert_eq!(fs::read(env.dst.join("z/y1/h1/inside")).unwrap(), b"inside");
    env.sync_ok(&with_small(&["--max-delete", "2"]));
    env.assert_replica_exact();
}

#[test]
fn max_delete_in_a_paged_pass_refuses_every_removal_locally() {
    max_delete_paged(Where::Local);
}

#[test]
fn max_delete_in_a_paged_pass_refuses_every_removal_over_tls() {
    max_delete_paged(Where::Remote);
}

/// A moved folder under `--max-delete`: its old names are removals (they
/// count), so over the limit the replica keeps both, and nothing is lost.
#[test]
fn max_delete_keeps_a_moved_folder_in_both_places_when_over() {
    let env = Env::new(Where::Local);
    tree(&env.src);
    env.sync_ok(SMALL);
    fs::rename(env.src.join("m/d4"), env.src.join("z/moved")).unwrap();
    let r = env.sync(&with_small(&["--max-delete", "5"]));
    r.assert_code(1);
    assert!(env.dst.join("m/d4/f004").is_file(), "{}", r.describe());
    assert_trees_equal(&env.src.join("z"), &env.dst.join("z"));
    let r = env.sync_ok(SMALL);
    env.assert_replica_exact();
    assert_eq!(r.paths("removed"), vec!["m/d4".to_string()]);
}

/// The empty-source rail holds in a paged pass under `--max-delete` too.
#[test]
fn an_empty_source_still_refuses_under_max_delete() {
    let env = Env::new(Where::Local);
    tree(&env.src);
    env.sync_ok(SMALL);
    for e in fs::read_dir(&env.src).unwrap() {
        fs::remove_dir_all(e.unwrap().path()).unwrap();
    }
    let before = snapshot(&env.dst);
    let r = env.sync(&with_small(&["--max-delete", "100000"]));
    r.assert_code(1);
    assert!(
        r.stderr.contains("--allow-empty-source"),
        "{}",
        r.describe()
    );
    assert_untouched(&before, &snapshot(&env.dst));
}

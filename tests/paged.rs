//! Paged passes through the real binary (issue 18): with tiny pages
//! (`--page-entries`, hidden), a folder moved across pages costs no
//! content, removals wait for the end of the pass, hard links whose names
//! fall in different pages survive, an empty source still refuses to wipe
//! the replica; locally and over TLS. (Dry runs are paged too: their
//! exactness is tested in `tests/dry_run.rs`.)

#![cfg(unix)]

mod common;

use common::scenarios::{Env, Where};
use common::*;
use std::fs;
use std::os::unix::fs::MetadataExt;

const SMALL: &[&str] = &["--page-entries", "40"];

fn with_small(extra: &[&'static str]) -> Vec<&'static str> {
    let mut v = SMALL.to_vec();
    v.extend_from_slice(extra);
    v
}

/// 1,000 files in 10 folders below `old/`, plus a few other folders so the
/// pass spans many pages.
fn big_folder(env: &Env) -> u64 {
    let mut bytes = 0;
    for i in 0..1000u64 {
        let data = random_bytes(i, 200 + (i as usize % 7) * 300);
        bytes += data.len() as u64;
        write_file(&env.src, &format!("m/old/d{}/f{i:04}", i % 10), &data);
    }
    for i in 0..60u64 {
        write_file(
            &env.src,
            &format!("a/x{}/g{i}", i % 3),
            &random_bytes(5000 + i, 100),
        );
        write_file(
            &env.src,
            &format!("z/y{}/h{i}", i % 3),
            &random_bytes(6000 + i, 100),
        );
    }
    bytes
}

fn moved_folder_costs_no_content(w: Where, to: &str) {
    let env = Env::new(w);
    let bytes = big_folder(&env);
    let first = env.sync_ok(SMALL);
    assert!(
        first.summary().content_sent >= bytes,
        "{}",
        first.describe()
    );
    env.assert_replica_exact();
    fs::rename(env.src.join("m/old"), env.src.join(to)).unwrap();
    let r = env.sync_ok(SMALL);
    env.assert_replica_exact();
    assert_eq!(r.summary().content_sent, 0, "{}", r.describe());
    let removed: Vec<_> = r.ops().into_iter().filter(|o| o.op == "removed").collect();
    assert_eq!(removed.len(), 1, "the old folder, once: {}", r.describe());
    assert_eq!(env.sync_ok(SMALL).summary().ops, 0);
}

#[test]
fn a_folder_moved_to_a_later_page_costs_no_content_locally() {
    moved_folder_costs_no_content(Where::Local, "z/new");
}

#[test]
fn a_folder_moved_to_an_earlier_page_is_copied_locally_over_tls() {
    moved_folder_costs_no_content(Where::Remote, "a/new");
}

/// A folder larger than a page, moved to a later page: each of its
/// folders that fits in a page is renamed whole (here its ten folders of
/// 100 files, with pages of 40 entries: each is a page of its own).
#[test]
fn a_moved_folder_keeps_its_content_in_a_later_page() {
    let env = Env::new(Where::Local);
    big_folder(&env);
    env.sync_ok(SMALL);
    fs::rename(env.src.join("m/old"), env.src.join("z/new")).unwrap();
    let r = env.sync_ok(SMALL);
    env.assert_replica_exact();
    let moved: Vec<String> = r
        .ops()
        .into_iter()
        .filter(|o| o.op == "moved")
        .map(|o| o.path)
        .collect();
    let want: Vec<String> = (0..10).map(|i| format!("z/new/d{i}")).collect();
    assert_eq!(moved, want, "renamed whole: {}", r.describe());
    assert!(r.summary().wire_sent < 20_000, "{}", r.describe());
}

#[test]
fn an_empty_source_still_refuses_to_wipe_the_replica() {
    for w in [Where::Local, Where::Remote] {
        let env = Env::new(w);
        big_folder(&env);
        env.sync_ok(SMALL);
        for e in fs::read_dir(&env.src).unwrap() {
            fs::remove_dir_all(e.unwrap().path()).unwrap();
        }
        let before = snapshot(&env.dst);
        let r = env.sync(SMALL);
        r.assert_code(1);
        assert!(
            r.stderr.contains("--allow-empty-source"),
            "{}",
            r.describe()
        );
        assert_untouched(&before, &snapshot(&env.dst));
        env.sync_ok(&with_small(&["--allow-empty-source"]));
        env.assert_replica_exact();
    }
}

#[test]
fn a_dry_run_with_small_pages_changes_nothing() {
    let env = Env::new(Where::Local);
    big_folder(&env);
    env.sync_ok(SMALL);
    fs::rename(env.src.join("m/old"), env.src.join("z/new")).unwrap();
    fs::remove_dir_all(env.src.join("a/x1")).unwrap();
    let before = snapshot(&env.dst);
    let r = env.sync_ok(&with_small(&["--dry-run"]));
    assert_untouched(&before, &snapshot(&env.dst));
    let removed: Vec<_> = r.ops().into_iter().filter(|o| o.op == "removed").collect();
    assert_eq!(removed.len(), 2, "m/old and a/x1: {}", r.describe());
    env.sync_ok(SMALL);
    env.assert_replica_exact();
}

#[test]
fn hard_links_across_pages_stay_links() {
    for w in [Where::Local, Where::Remote] {
        let env = Env::new(w);
        big_folder(&env);
        write_file(&env.src, "a/x0/linked", b"one inode, four names");
        for name in ["m/old/d3/l1", "z/y2/l2", "z/y2/l3"] {
            fs::hard_link(env.src.join("a/x0/linked"), env.src.join(name)).unwrap();
        }
        let r = env.sync_ok(SMALL);
        env.assert_replica_exact();
        let ino = |rel: &str| fs::metadata(env.dst.join(rel)).unwrap().ino();
        let lead = ino("a/x0/linked");
        for name in ["m/old/d3/l1", "z/y2/l2", "z/y2/l3"] {
            assert_eq!(ino(name), lead, "{name}: {}", r.describe());
        }
        let again = env.sync_ok(SMALL);
        assert_eq!(again.summary().ops, 0, "{}", again.describe());
        // The source breaks one link, keeping size and mtime: the replica
        // name (in another page than the group's first) gets its own copy.
        let broken = env.src.join("m/old/d3/l1");
        let meta = fs::metadata(&broken).unwrap();
        fs::remove_file(&broken).unwrap();
        fs::write(&broken, b"one inode, four names").unwrap();
        set_mtime(&broken, meta.mtime(), meta.mtime_nsec() as u32);
        let r = env.sync_ok(SMALL);
        env.assert_replica_exact();
        assert!(
            r.stdout.contains("no longer a hard link"),
            "{}",
            r.describe()
        );
        let lead = ino("a/x0/linked");
        assert_ne!(ino("m/old/d3/l1"), lead, "{}", r.describe());
        assert_eq!(ino("z/y2/l2"), lead, "{}", r.describe());
        assert_eq!(ino("z/y2/l3"), lead, "{}", r.describe());
        let again = env.sync_ok(SMALL);
        assert_eq!(again.summary().ops, 0, "{}", again.describe());
    }
}

/// Whatever the page size, a pass gives the same replica and the same
/// summary counts (files, directories, bytes, operations) as an unpaged one.
#[test]
fn page_size_changes_nothing_but_memory() {
    let env = Env::new(Where::Local);
    big_folder(&env);
    let mut seen = Vec::new();
    for page in ["1", "7", "40", "100000"] {
        let dst = env.area.join(format!("page-{page}"));
        let state = env.tmp.path().join(format!("state-{page}"));
        let args = ["--page-entries", page];
        let r: Run = run_sync(&env.src, dst.to_str().unwrap(), &state, &args).into();
        r.assert_ok();
        assert_trees_equal(&env.src, &dst);
        let s = r.summary();
        seen.push((page, (s.files, s.dirs, s.file_bytes, s.ops, s.content_sent)));
    }
    assert!(seen.windows(2).all(|w| w[0].1 == w[1].1), "{seen:?}");
}

/// A folder that fits in a page, moved to a later page, is renamed whole:
/// one operation, no digest asked.
#[test]
fn a_small_folder_moved_to_a_later_page_is_one_rename() {
    let env = Env::new(Where::Local);
    big_folder(&env);
    env.sync_ok(SMALL);
    fs::rename(env.src.join("a/x1"), env.src.join("z/new")).unwrap();
    let r = env.sync_ok(SMALL);
    env.assert_replica_exact();
    let moved: Vec<_> = r.ops().into_iter().filter(|o| o.op == "moved").collect();
    assert_eq!(moved.len(), 1, "{}", r.describe());
    assert_eq!(moved[0].path, "z/new", "{}", r.describe());
    assert_eq!(r.summary().content_sent, 0);
    assert_eq!(env.sync_ok(SMALL).summary().ops, 0);
}

//! A dry run tells exactly what the real pass then does (issue 18): with
//! tiny pages (`--page-entries`, hidden), over random changes to a source
//! already replicated (new files, the same new content in distant
//! folders, files and folders moved across pages, removals, edits,
//! metadata, type changes, hard links), the dry run's operations by kind
//! and its content figures equal the real pass's; and the dry run changes
//! nothing: not the replica, not the state directories (hashed before and
//! after), and it leaves no scratch file behind. Locally and over TLS.

#![cfg(unix)]

mod common;

use common::scenarios::{Env, Where};
use common::*;
use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

/// A small deterministic generator (xorshift64*).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Every regular file below `root`, by relative path.
fn files(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let t = e.file_type().unwrap();
            if t.is_dir() {
                stack.push(e.path());
            } else if t.is_file() {
                let rel = e.path().strip_prefix(root).unwrap().to_owned();
                out.push(rel.to_string_lossy().into_owned());
            }
        }
    }
    out.sort();
    out
}

fn dirs(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                let rel = e.path().strip_prefix(root).unwrap().to_owned();
                out.push(rel.to_string_lossy().into_owned());
                stack.push(e.path());
            }
        }
    }
    out.sort();
    out
}

/// The first tree: 6 folders of 3 subfolders of a few files (some
/// sharing content), and a hard-link group spread over the folders.
fn first_tree(src: &Path, rng: &mut Rng) {
    for f in 0..6 {
        for s in 0..3 {
            for i in 0..4 {
                let seed = rng.next() % 40;
                let len = 300 + (seed as usize * 977) % 9000;
                write_file(src, &format!("f{f}/s{s}/file{i}"), &random_bytes(seed, len));
            }
        }
    }
    write_file(src, "f0/s0/linked", &random_bytes(900, 2000));
    fs::hard_link(src.join("f0/s0/linked"), src.join("f3/s1/linked-too")).unwrap();
}

/// One random change to the source.
fn change(src: &Path, rng: &mut Rng, n: u64) {
    let fs_ = files(src);
    let ds = dirs(src);
    let pick = |rng: &mut Rng, v: &[String]| v[rng.below(v.len())].clone();
    let deep: Vec<String> = ds.iter().filter(|d| d.contains('/')).cloned().collect();
    match rng.below(12) {
        // New content, once.
        0 => write_file(
            src,
            &format!("{}/new{n}", pick(rng, &ds)),
            &random_bytes(10_000 + n, 500 + rng.below(20_000)),
        ),
        // The same new content in two distant folders.
        1 => {
            let data = random_bytes(20_000 + n, 1000 + rng.below(30_000));
            write_file(src, &format!("f0/twin{n}"), &data);
            write_file(src, &format!("f5/s2/twin{n}"), &data);
        }
        // A copy of content the replica has.
        2 => {
            let from = pick(rng, &fs_);
            let data = fs::read(src.join(&from)).unwrap();
            write_file(src, &format!("{}/copy{n}", pick(rng, &ds)), &data);
        }
        // A folder moved elsewhere (often to another page).
        3 if !deep.is_empty() => {
            let from = pick(rng, &deep);
            let to = format!("f{}/moved{n}", rng.below(6));
            if !to.starts_with(&format!("{from}/")) && src.join(&to).parent().unwrap().is_dir() {
                let _ = fs::rename(src.join(&from), src.join(&to));
            }
        }
        // A file moved to another folder.
        4 => {
            let from = pick(rng, &fs_);
            let to = format!("{}/mv{n}", pick(rng, &ds));
            fs::rename(src.join(&from), src.join(to)).unwrap();
        }
        // A file or a folder removed.
        5 => {
            let f = pick(rng, &fs_);
            fs::remove_file(src.join(f)).unwrap();
        }
        6 if !deep.is_empty() => {
            let d = pick(rng, &deep);
            fs::remove_dir_all(src.join(d)).unwrap();
        }
        // An edit (appended bytes).
        7 => {
            let f = pick(rng, &fs_);
            let mut data = fs::read(src.join(&f)).unwrap();
            data.extend(random_bytes(30_000 + n, 700));
            fs::write(src.join(&f), data).unwrap();
        }
        // Metadata only.
        8 => {
            let f = pick(rng, &fs_);
            set_mtime(&src.join(f), 1_600_000_000 + n as i64, 0);
        }
        // A file becomes a folder.
        9 => {
            let f = pick(rng, &fs_);
            fs::remove_file(src.join(&f)).unwrap();
            write_file(src, &format!("{f}/inside"), &random_bytes(40_000 + n, 800));
        }
        // Another name for a file, in another folder.
        10 => {
            let f = pick(rng, &fs_);
            let to = format!("{}/link{n}", pick(rng, &ds));
            fs::hard_link(src.join(f), src.join(to)).unwrap();
        }
        // Two names swapped.
        _ => {
            let (a, b) = (pick(rng, &fs_), pick(rng, &fs_));
            if a != b {
                let tmp = src.join("swap.tmp");
                fs::rename(src.join(&a), &tmp).unwrap();
                fs::rename(src.join(&b), src.join(&a)).unwrap();
                fs::rename(&tmp, src.join(&b)).unwrap();
            }
        }
    }
}

/// A directory's every file, hashed with its relative path.
fn hash_dir(root: &Path) -> BTreeMap<String, String> {
    files(root)
        .into_iter()
        .map(|f| {
            let data = fs::read(root.join(&f)).unwrap();
            (f, format!("{}", blake3::hash(&data)))
        })
        .collect()
}

/// What a pass did, as a dry run and a real pass can both say it: the
/// operations by kind and in all, the content it sends and the content it
/// rebuilds from the replica. Over a link the real pass may send a small
/// file's changed chunks as a delta against an old version or a sibling,
/// known only as they are sent: a dry run counts those chunks as sent
/// whole, so there only their sum with what is rebuilt is exact (and the
/// dry run's content an upper bound).
fn what(r: &Run, w: Where) -> (BTreeMap<String, usize>, u64, u64, u64) {
    let mut by_op = BTreeMap::new();
    for o in r.ops() {
        *by_op.entry(o.op).or_insert(0) += 1;
    }
    let s = r.summary();
    match w {
        Where::Local => (by_op, s.ops, s.content_sent, s.rebuilt),
        _ => (by_op, s.ops, s.content_sent + s.rebuilt, 0),
    }
}

fn dry_run_is_exact(w: Where, seed: u64, page: &'static str) {
    let env = Env::new(w);
    let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    first_tree(&env.src, &mut rng);
    let args = ["--page-entries", page, "-v"];
    env.sync_ok(&args);
    env.assert_replica_exact();
    for round in 0..3u64 {
        for k in 0..6 {
            change(&env.src, &mut rng, round * 100 + k);
        }
        let server_state = env.server.as_ref().map(|s| s.state.path().to_path_buf());
        let states: Vec<&Path> = [Some(env.state.as_path()), server_state.as_deref()]
            .into_iter()
            .flatten()
            .collect();
        let before = snapshot(&env.dst);
        let hashed: Vec<_> = states.iter().map(|s| hash_dir(s)).collect();
        let dry = env.sync_ok(&[&args[..], &["--dry-run"]].concat());
        assert_untouched(&before, &snapshot(&env.dst));
        let after: Vec<_> = states.iter().map(|s| hash_dir(s)).collect();
        assert_eq!(hashed, after, "a dry run changed a state directory");
        let real = env.sync_ok(&args);
        env.assert_replica_exact();
        assert!(dry.summary().content_sent >= real.summary().content_sent);
        assert_eq!(
            what(&dry, w),
            what(&real, w),
            "seed {seed}, round {round}, pages of {page}:\ndry run: {}\nreal pass: {}",
            dry.describe(),
            real.describe()
        );
    }
}

#[test]
fn a_dry_run_tells_what_the_pass_does_locally() {
    for seed in 1..=6 {
        dry_run_is_exact(Where::Local, seed, "7");
    }
    dry_run_is_exact(Where::Local, 7, "100000");
}

#[test]
fn a_dry_run_tells_what_the_pass_does_over_tls() {
    for seed in 11..=13 {
        dry_run_is_exact(Where::Remote, seed, "7");
    }
}

/// A dry run into a destination that does not exist creates nothing,
/// and says what a first copy would send.
#[test]
fn a_dry_run_into_nothing_tells_the_first_copy() {
    let env = Env::new(Where::Local);
    let mut rng = Rng(77);
    first_tree(&env.src, &mut rng);
    let args = ["--page-entries", "5", "-v"];
    let dry = env.sync_ok(&[&args[..], &["--dry-run"]].concat());
    assert!(!env.dst.exists());
    let real = env.sync_ok(&args);
    env.assert_replica_exact();
    assert_eq!(
        what(&dry, Where::Local),
        what(&real, Where::Local),
        "{}\n{}",
        dry.describe(),
        real.describe()
    );
}

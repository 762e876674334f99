//! Held writes (`pending.rs`) change when the index is written, never what
//! it answers; a transaction dropped without its commit (a killed server)
//! leaves the index as of its last checkpoint, every table alike.

use super::*;
use crate::chunk::digest_bytes;
use crate::tree::Timestamp;
use proptest::prelude::*;
use std::sync::OnceLock;

const PATHS: [&str; 6] = ["a/x", "a/y", "a/z/w", "b/x", "b/y", "c"];

/// Contents: small (one chunk), a few chunks, with groups (more than
/// `INLINE_CHUNKS` chunks), and two that share their first chunks.
fn contents() -> &'static [FileRecord] {
    static C: OnceLock<Vec<FileRecord>> = OnceLock::new();
    C.get_or_init(|| {
        let noise = |seed: u32, n: usize| -> Vec<u8> {
            (0..n as u32)
                .map(|i| (i.wrapping_add(seed).wrapping_mul(2654435761) >> 13) as u8)
                .collect()
        };
        let mut shared = noise(5, 200_000);
        let mut shared2 = shared.clone();
        shared.extend(noise(6, 50_000));
        shared2.extend(noise(7, 60_000));
        [
            b"tiny".to_vec(),
            b"other tiny".to_vec(),
            noise(1, 300_000),
            noise(2, 2_500_000),
            shared,
            shared2,
        ]
        .iter()
        .map(|d| FileRecord {
            size: d.len() as u64,
            mtime: Timestamp::default(),
            version: Version(1),
            digest: digest_bytes(d),
        })
        .collect()
    })
}

#[derive(Debug, Clone)]
enum Op {
    Put(usize, usize),
    Remove(usize),
    Rename(usize, usize),
    RemoveTree(&'static str),
    RenameTree(&'static str, &'static str),
    Flush,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..PATHS.len(), 0..6usize).prop_map(|(p, c)| Op::Put(p, c)),
        2 => (0..PATHS.len()).prop_map(Op::Remove),
        1 => (0..PATHS.len(), 0..PATHS.len()).prop_map(|(a, b)| Op::Rename(a, b)),
        1 => prop_oneof![Just("a"), Just("b"), Just("a/z")].prop_map(Op::RemoveTree),
        1 => prop_oneof![Just(("a", "d")), Just(("b", "e"))].prop_map(|(f, t)| Op::RenameTree(f, t)),
        1 => Just(Op::Flush),
    ]
}

fn apply(t: &mut IndexTxn, op: &Op) {
    match *op {
        Op::Put(p, c) => t.put_file(PATHS[p], &contents()[c]).unwrap(),
        Op::Remove(p) => t.remove_file(PATHS[p]).unwrap(),
        Op::Rename(a, b) => {
            if let Some(rec) = t.file(PATHS[a]).unwrap() {
                t.rename_file(PATHS[a], PATHS[b], rec, Version(9)).unwrap();
            }
        }
        Op::RemoveTree(p) => t.remove_tree(p).unwrap(),
        Op::RenameTree(f, to) => t.rename_tree(f, to).unwrap(),
        Op::Flush => flush(t),
    }
}

/// Hands the held writes over and waits until they are in the database.
fn flush(t: &mut IndexTxn) {
    t.hand_over(false).unwrap();
    if let Some(w) = &mut t.db {
        w.wait_all().unwrap();
    }
}

/// Every answer the index gives about the test's paths and contents.
fn answers(t: &IndexTxn) -> Vec<String> {
    let mut out = Vec::new();
    let renamed = PATHS.iter().flat_map(|p| {
        [
            p.to_string(),
            p.replacen('a', "d", 1),
            p.replacen('b', "e", 1),
        ]
    });
    for p in renamed {
        out.push(format!("file {p}: {:?}", t.file(&p).unwrap()));
    }
    for rec in contents() {
        let d = &rec.digest;
        out.push(format!("whole: {:?}", t.find_whole(&d.hash).unwrap()));
        for c in &d.chunks {
            out.push(format!("chunk: {:?}", t.find_chunk(&c.hash).unwrap()));
        }
        for g in crate::chunk::groups(&d.chunks) {
            out.push(format!("group: {:?}", t.find_group(&g.hash).unwrap()));
        }
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Writes held until the commit, and the same writes flushed into
    /// redb one by one, answer alike: before the commit and after it.
    #[test]
    fn held_writes_answer_as_written_ones(ops in proptest::collection::vec(op(), 1..24)) {
        let dir = tempfile::tempdir().unwrap();
        let held = ReplicaIndex::open(&dir.path().join("held.redb")).unwrap();
        let each = ReplicaIndex::open(&dir.path().join("each.redb")).unwrap();
        // `held` skips the database for keys it never wrote; `each` reads it.
        prop_assert!(held.tracks_writes());
        each.forget_writes();
        let (mut h, mut e) = (held.begin().unwrap(), each.begin().unwrap());
        for op in &ops {
            apply(&mut h, op);
            apply(&mut e, op);
            flush(&mut e);
            prop_assert_eq!(answers(&h), answers(&e), "after {:?}", op);
        }
        h.commit().unwrap();
        e.commit().unwrap();
        let (h, e) = (held.begin().unwrap(), each.begin().unwrap());
        prop_assert_eq!(answers(&h), answers(&e));
    }

    /// A dry run's overlay over an index answers as the index itself
    /// would after the same writes (held, flushed, and in a later
    /// transaction over the same overlay, as a later page sees them), and
    /// leaves the index as it was.
    #[test]
    fn an_overlay_answers_as_the_written_index(
        first in proptest::collection::vec(op(), 0..12),
        dry in proptest::collection::vec(op(), 1..16),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let base = ReplicaIndex::open(&dir.path().join("base.redb")).unwrap();
        let real = ReplicaIndex::open(&dir.path().join("real.redb")).unwrap();
        for idx in [&base, &real] {
            let mut t = idx.begin().unwrap();
            for op in &first {
                apply(&mut t, op);
            }
            t.commit().unwrap();
        }
        let before = answers(&base.begin().unwrap());
        let overlay = base.dry_overlay().unwrap();
        let (half, rest) = dry.split_at(dry.len() / 2);
        for part in [half, rest] {
            let (mut o, mut r) = (base.begin_overlay(&overlay).unwrap(), real.begin().unwrap());
            prop_assert_eq!(answers(&o), answers(&r));
            for op in part {
                apply(&mut o, op);
                apply(&mut r, op);
                prop_assert_eq!(answers(&o), answers(&r), "after {:?}", op);
            }
            o.commit().unwrap();
            r.commit().unwrap();
        }
        let path = dir.path().join("base.redb.dry-run");
        prop_assert!(path.exists());
        drop(overlay);
        prop_assert!(!path.exists());
        prop_assert_eq!(answers(&base.begin().unwrap()), before);
    }
}

/// A pass killed after a checkpoint: its held writes up to the checkpoint
/// are in the index, consistently in every table; nothing after it is.
#[test]
fn a_dropped_transaction_leaves_its_last_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let idx = ReplicaIndex::open(&dir.path().join("i.redb")).unwrap();
    let big = &contents()[3];
    let tiny = &contents()[0];
    let mut t = idx.begin().unwrap();
    t.put_file("big", big).unwrap();
    for i in 0..CHECKPOINT_WRITES {
        let rec = FileRecord {
            digest: digest_bytes(format!("file {i}").as_bytes()),
            ..tiny.clone()
        };
        t.put_file(&format!("f/{i}"), &rec).unwrap();
    }
    t.checkpoint().unwrap();
    assert!(t.pending.is_empty(), "a checkpoint commits what was held");
    t.remove_file("big").unwrap();
    t.put_file("late", tiny).unwrap();
    drop(t); // killed: no commit
    let t = idx.begin().unwrap();
    assert_eq!(t.file("big").unwrap().as_ref(), Some(big));
    assert_eq!(
        t.find_whole(&big.digest.hash).unwrap().as_deref(),
        Some("big")
    );
    let last = big.digest.chunks.last().unwrap();
    assert_eq!(t.find_chunk(&last.hash).unwrap().unwrap().path, "big");
    let g = crate::chunk::groups(&big.digest.chunks)[0];
    assert!(t.find_group(&g.hash).unwrap().is_some());
    assert!(t.file("f/0").unwrap().is_some());
    assert_eq!(t.file("late").unwrap(), None);
    assert_eq!(t.find_whole(&tiny.digest.hash).unwrap(), None);
}

/// A large file's chunk locations are flushed as they pile up, so the
/// memory a transaction holds stays bounded.
#[test]
fn held_writes_are_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let idx = ReplicaIndex::open(&dir.path().join("i.redb")).unwrap();
    let big = &contents()[3];
    let mut t = idx.begin().unwrap();
    for i in 0..MAX_HELD {
        t.put_file(&format!("copy{i}"), big).unwrap();
        assert!(t.pending.len() < MAX_HELD);
        if i > MAX_HELD / big.digest.chunks.len() + 2 {
            break;
        }
    }
    t.commit().unwrap();
}

/// An index opened empty skips the database only for keys never written:
/// a chunk written earlier in the session is found once it is only in the
/// database (committed, nothing held), and an index opened with entries
/// reads the database for every lookup.
#[test]
fn an_index_opened_empty_still_finds_what_it_wrote() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("i.redb");
    let idx = ReplicaIndex::open(&path).unwrap();
    assert!(idx.tracks_writes());
    let (big, tiny) = (&contents()[3], &contents()[0]);
    let mut t = idx.begin().unwrap();
    t.put_file("big", big).unwrap();
    flush(&mut t);
    assert!(t.pending.is_empty());
    let c = big.digest.chunks[7];
    assert_eq!(t.find_chunk(&c.hash).unwrap().unwrap().path, "big");
    assert_eq!(t.find_whole(&tiny.digest.hash).unwrap(), None);
    t.commit().unwrap();
    // A later pass of the same session, and one after a restart.
    let t = idx.begin().unwrap();
    assert_eq!(t.find_chunk(&c.hash).unwrap().unwrap().path, "big");
    assert_eq!(t.file("big").unwrap().as_ref(), Some(big));
    drop(t);
    drop(idx);
    let idx = ReplicaIndex::open(&path).unwrap();
    assert!(!idx.tracks_writes(), "opened with entries");
    let t = idx.begin().unwrap();
    assert_eq!(t.find_chunk(&c.hash).unwrap().unwrap().path, "big");
    assert_eq!(
        t.find_whole(&big.digest.hash).unwrap().as_deref(),
        Some("big")
    );
}

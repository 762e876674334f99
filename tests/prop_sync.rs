//! Property: whatever the source tree and whatever the replica held before,
//! one local `replica sync` makes them exactly equal, and a second sync
//! does nothing; also when the pass goes as tiny pages (one or a few
//! directories each), where renames, type changes and removals cross pages.

#![cfg(unix)]

mod common;

use common::*;
use proptest::prelude::*;
use std::collections::BTreeMap;

/// File contents, shown by size and hash.
#[derive(Clone)]
struct Data(Vec<u8>);

impl std::fmt::Debug for Data {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} bytes, blake3 {}",
            self.0.len(),
            &blake3::hash(&self.0).to_hex()[..12]
        )
    }
}

/// A random tree node.
#[derive(Debug, Clone)]
enum T {
    File {
        data: Data,
        mode: u32,
        mtime: (i64, u32),
    },
    Link {
        target: String,
        mtime: (i64, u32),
    },
    Dir {
        children: BTreeMap<String, T>,
        mode: u32,
        mtime: (i64, u32),
    },
}

const NAMES: [&str; 6] = ["a", "b", "c", "d e", "ü", ".h"];

fn mtime() -> impl Strategy<Value = (i64, u32)> {
    (-1_000_000_000i64..3_000_000_000, 0u32..1_000_000_000)
}

/// Small contents, often shared (duplicates across the tree and between
/// source and replica), sometimes a few chunks long.
fn content() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        3 => (0u64..4).prop_map(|i| random_bytes(100 + i, (i as usize) * 700)),
        3 => proptest::collection::vec(any::<u8>(), 0..300),
        1 => (0u64..2).prop_map(|i| random_bytes(200 + i, 70_000)),
    ]
}

fn leaf() -> impl Strategy<Value = T> {
    prop_oneof![
        3 => (content(), prop_oneof![Just(0o644u32), Just(0o755), Just(0o600), Just(0o444)], mtime())
            .prop_map(|(data, mode, mtime)| T::File { data: Data(data), mode, mtime }),
        1 => (prop_oneof![Just("a"), Just("../b"), Just("/abs/x"), Just("dangling/c"), Just("a/b"), Just("..")], mtime())
            .prop_map(|(t, mtime)| T::Link { target: t.to_string(), mtime }),
        1 => (prop_oneof![Just(0o755u32), Just(0o700), Just(0o555)], mtime())
            .prop_map(|(mode, mtime)| T::Dir { children: BTreeMap::new(), mode, mtime }),
    ]
}

fn tree() -> impl Strategy<Value = BTreeMap<String, T>> {
    let node = leaf().prop_recursive(3, 24, 4, |inner| {
        (
            proptest::collection::btree_map(
                proptest::sample::select(NAMES.to_vec()).prop_map(String::from),
                inner,
                0..4,
            ),
            prop_oneof![Just(0o755u32), Just(0o750)],
            mtime(),
        )
            .prop_map(|(children, mode, mtime)| T::Dir {
                children,
                mode,
                mtime,
            })
    });
    proptest::collection::btree_map(
        proptest::sample::select(NAMES.to_vec()).prop_map(String::from),
        node,
        0..5,
    )
}

fn specs(prefix: &str, children: &BTreeMap<String, T>, out: &mut Vec<Spec>) {
    for (name, t) in children {
        let path = if prefix.is_empty() {
            name.clone()
        } else {
            format!("{prefix}/{name}")
        };
        match t {
            T::File { data, mode, mtime } => {
                out.push(f(&path, &data.0).mode(*mode).mtime(mtime.0, mtime.1))
            }
            T::Link { target, mtime } => out.push(l(&path, target).mtime(mtime.0, mtime.1)),
            T::Dir {
                children,
                mode,
                mtime,
            } => {
                out.push(d(&path).mode(*mode).mtime(mtime.0, mtime.1));
                specs(&path, children, out);
            }
        }
    }
}

fn to_specs(t: &BTreeMap<String, T>, root_mtime: (i64, u32)) -> Vec<Spec> {
    let mut out = vec![root().mode(0o755).mtime(root_mtime.0, root_mtime.1)];
    specs("", t, &mut out);
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, max_shrink_iters: 64, ..ProptestConfig::default() })]

    #[test]
    fn one_sync_makes_any_replica_equal(
        source in tree(),
        replica in tree(),
        src_root in mtime(),
        dst_root in mtime(),
        replica_exists in any::<bool>(),
    ) {
        let tmp = tempfile::tempdir().unwrap();
        let base = tmp.path().canonicalize().unwrap();
        let (src, dst, state) = (base.join("src"), base.join("dst"), base.join("state"));
        build_tree(&src, &to_specs(&source, src_root));
        if replica_exists {
            build_tree(&dst, &to_specs(&replica, dst_root));
        }
        let src_before = snapshot(&src);
        // An empty source empties the replica only on purpose.
        let r: Run = run_sync(&src, dst.to_str().unwrap(), &state, &["--allow-empty-source"]).into();
        r.assert_ok();
        assert_trees_equal(&src, &dst);
        assert_untouched(&src_before, &snapshot(&src));
        let again: Run = run_sync(&src, dst.to_str().unwrap(), &state, &["--allow-empty-source"]).into();
        again.assert_ok();
        prop_assert_eq!(again.summary().ops, 0, "{}", again.describe());
        assert_trees_equal(&src, &dst);
    }

    #[test]
    fn paged_sync_makes_any_replica_equal(
        source in tree(),
        replica in tree(),
        src_root in mtime(),
        dst_root in mtime(),
        page in prop_oneof![Just(1u32), Just(2), Just(6)],
        moved in any::<bool>(),
    ) {
        let tmp = tempfile::tempdir().unwrap();
        let base = tmp.path().canonicalize().unwrap();
        let (src, dst, state) = (base.join("src"), base.join("dst"), base.join("state"));
        build_tree(&src, &to_specs(&source, src_root));
        // The replica may hold one of the source's subtrees under another
        // name (a folder the source moved), in its own page.
        let mut replica = replica;
        if let (true, Some((name, t))) = (moved, source.iter().next()) {
            replica.insert(format!("old {name}"), t.clone());
        }
        build_tree(&dst, &to_specs(&replica, dst_root));
        let src_before = snapshot(&src);
        let page = page.to_string();
        let args = ["--allow-empty-source", "--page-entries", &page];
        let r: Run = run_sync(&src, dst.to_str().unwrap(), &state, &args).into();
        r.assert_ok();
        assert_trees_equal(&src, &dst);
        assert_untouched(&src_before, &snapshot(&src));
        let again: Run = run_sync(&src, dst.to_str().unwrap(), &state, &args).into();
        again.assert_ok();
        prop_assert_eq!(again.summary().ops, 0, "{}", again.describe());
        assert_trees_equal(&src, &dst);
    }
}

//! The merge of a page of the listing with a run of the metadata cache,
//! both in key order (pure): one pass over each instead of a lookup per
//! listed key. S3 lists keys in UTF-8 byte order, the order of `str` and
//! of redb's `&str` keys.
//!
//! Nothing here trusts the order: with keys out of order a key can only
//! come out unmatched (an entry dropped from the cache, an object asked
//! for again), never matched to another key's entry.

/// What a merge made of one key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pair {
    /// `listed[i]` and `cached[j]` are the same key.
    Both(usize, usize),
    /// `listed[i]` has no cache entry in the run.
    Listed(usize),
    /// `cached[j]` is not listed: its object is gone.
    Cached(usize),
}

/// Merge-joins two runs sorted by key; every index of each run appears in
/// exactly one pair, in key order.
pub fn merge(listed: &[&str], cached: &[&str]) -> Vec<Pair> {
    let mut out = Vec::with_capacity(listed.len().max(cached.len()));
    let (mut i, mut j) = (0, 0);
    while i < listed.len() && j < cached.len() {
        match listed[i].cmp(cached[j]) {
            std::cmp::Ordering::Less => {
                out.push(Pair::Listed(i));
                i += 1;
            }
            std::cmp::Ordering::Greater => {
                out.push(Pair::Cached(j));
                j += 1;
            }
            std::cmp::Ordering::Equal => {
                out.push(Pair::Both(i, j));
                i += 1;
                j += 1;
            }
        }
    }
    out.extend((i..listed.len()).map(Pair::Listed));
    out.extend((j..cached.len()).map(Pair::Cached));
    out
}

/// How many of `listed` (sorted) come at or before `last`: the part of a
/// page that a run of cache entries ending at `last` settles (a key after
/// it may still have an entry in the next run).
pub fn settled_by(listed: &[&str], last: &str) -> usize {
    listed.partition_point(|k| *k <= last)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    #[test]
    fn pairs_equal_keys_and_keeps_the_rest_apart() {
        let p = merge(&["a", "c", "d"], &["b", "c", "e"]);
        assert_eq!(
            p,
            vec![
                Pair::Listed(0),
                Pair::Cached(0),
                Pair::Both(1, 1),
                Pair::Listed(2),
                Pair::Cached(2)
            ]
        );
        assert_eq!(merge(&[], &["x"]), vec![Pair::Cached(0)]);
        assert_eq!(merge(&["x"], &[]), vec![Pair::Listed(0)]);
        assert_eq!(settled_by(&["a", "b", "c"], "b"), 2);
        assert_eq!(settled_by(&["a", "b", "c"], "0"), 0);
        // Byte order: "a/b" < "a0" < "a\u{2053}" (as S3 and redb sort).
        assert_eq!(settled_by(&["a/b", "a0", "a\u{2053}"], "a0"), 2);
    }

    /// Merges `listed` with `cached` in runs of `run` cache entries, as
    /// the listing reads the cache: (matched, unmatched listed, stale).
    fn by_runs(
        listed: &[&str],
        cached: &[&str],
        run: usize,
    ) -> (BTreeSet<String>, BTreeSet<String>, BTreeSet<String>) {
        let (mut both, mut only_l, mut stale) = Default::default();
        let (mut i, mut j) = (0, 0);
        loop {
            let chunk = &cached[j..(j + run).min(cached.len())];
            let end = j + chunk.len() == cached.len();
            let n = if end {
                listed.len()
            } else {
                i + settled_by(&listed[i..], chunk[chunk.len() - 1])
            };
            for p in merge(&listed[i..n], chunk) {
                let (set, k): (&mut BTreeSet<String>, &str) = match p {
                    Pair::Both(a, b) => {
                        assert_eq!(listed[i + a], chunk[b]);
                        (&mut both, chunk[b])
                    }
                    Pair::Listed(a) => (&mut only_l, listed[i + a]),
                    Pair::Cached(b) => (&mut stale, chunk[b]),
                };
                assert!(set.insert(k.to_string()), "{k} twice");
            }
            i = n;
            j += chunk.len();
            if end {
                return (both, only_l, stale);
            }
        }
    }

    proptest! {
        /// Sorted runs merged a run at a time give what sets give: the
        /// common keys, the listed ones without an entry, the stale ones.
        #[test]
        fn runs_merge_like_sets(
            l in proptest::collection::btree_set("[a-c/\u{2053}]{0,4}", 0..40),
            c in proptest::collection::btree_set("[a-c/\u{2053}]{0,4}", 0..40),
            run in 1usize..8,
        ) {
            let listed: Vec<&str> = l.iter().map(String::as_str).collect();
            let cached: Vec<&str> = c.iter().map(String::as_str).collect();
            let (both, only_l, stale) = by_runs(&listed, &cached, run);
            prop_assert_eq!(both, l.intersection(&c).cloned().collect::<BTreeSet<_>>());
            prop_assert_eq!(only_l, l.difference(&c).cloned().collect::<BTreeSet<_>>());
            prop_assert_eq!(stale, c.difference(&l).cloned().collect::<BTreeSet<_>>());
        }

        /// Out of order, a key is only ever matched to itself and each
        /// index still appears once.
        #[test]
        fn unsorted_input_never_mismatches(
            l in proptest::collection::vec("[a-c]{0,3}", 0..20),
            c in proptest::collection::vec("[a-c]{0,3}", 0..20),
        ) {
            let listed: Vec<&str> = l.iter().map(String::as_str).collect();
            let cached: Vec<&str> = c.iter().map(String::as_str).collect();
            let p = merge(&listed, &cached);
            let (mut li, mut ci) = (vec![0; l.len()], vec![0; c.len()]);
            for x in p {
                match x {
                    Pair::Both(a, b) => {
                        prop_assert_eq!(listed[a], cached[b]);
                        li[a] += 1;
                        ci[b] += 1;
                    }
                    Pair::Listed(a) => li[a] += 1,
                    Pair::Cached(b) => ci[b] += 1,
                }
            }
            prop_assert!(li.iter().chain(&ci).all(|&n| n == 1));
        }
    }
}

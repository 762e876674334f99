use super::*;
use proptest::prelude::*;

fn text(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            b"abcdefghij <>/\n"[(x % 15) as usize]
        })
        .collect()
}

fn map_of(old: &[u8]) -> (Vec<(u64, u32)>, BasisMap) {
    let avg = piece_avg(old.len() as u64);
    let (places, hashes) = basis_of(old, avg);
    (places, BasisMap::parse(avg, &hashes).unwrap())
}

/// Whether two different pieces of `old` and `new` share a truncated hash.
fn truncated_hashes_collide(old: &[u8], new: &[u8], avg: u32) -> bool {
    let mut seen: std::collections::HashMap<u32, &[u8]> = std::collections::HashMap::new();
    for data in [old, new] {
        for (o, l) in pieces(data, avg) {
            let piece = &data[o..o + l];
            if *seen.entry(piece_hash(piece)).or_insert(piece) != piece {
                return true;
            }
        }
    }
    false
}

fn rebuild(ops: &[DeltaOp], max: usize, old: &[u8], places: &[(u64, u32)]) -> Vec<u8> {
    apply_delta(ops, max, places, |o, l| {
        old.get(o as usize..o as usize + l).map(<[u8]>::to_vec)
    })
    .unwrap()
}

#[test]
fn piece_size_follows_the_old_version() {
    assert_eq!(piece_avg(0), AVG_MIN);
    assert_eq!(piece_avg(4_000), AVG_MIN);
    assert_eq!(piece_avg(128 << 10), AVG_MIN);
    assert_eq!(piece_avg(256 << 10), 512);
    assert_eq!(piece_avg(BASIS_MAX_FILE), AVG_MAX);
    assert!(valid_avg(256) && valid_avg(2048));
    assert!(!valid_avg(128) && !valid_avg(4096) && !valid_avg(300) && !valid_avg(0));
    // The most pieces the smallest allowed pieces can cut from the largest basis.
    let most = pieces(&vec![7u8; BASIS_MAX_FILE as usize], AVG_MIN).len();
    assert!(most <= MAX_PIECES);
}

#[test]
fn small_edit_sends_little_and_rebuilds_exactly() {
    let old = text(40_000, 1);
    let mut new = old.clone();
    new.splice(100..110, b"VERSION 1.2.3".iter().copied());
    let (places, map) = map_of(&old);
    let ops = make_delta(&new, &map).expect("worth a delta");
    let literal = literal_bytes(&ops);
    assert!(literal < 2_000, "{literal} literal bytes");
    // Unchanged pieces travel as a few runs, not one op each.
    assert!(ops.len() <= 5, "{} ops", ops.len());
    assert_eq!(rebuild(&ops, new.len(), &old, &places), new);
}

#[test]
fn unrelated_data_is_not_worth_a_delta() {
    let (_, map) = map_of(&text(20_000, 1));
    assert!(make_delta(&text(20_000, 2), &map).is_none());
}

#[test]
fn lying_deltas_are_bounded() {
    let places = vec![(0u64, 4u32), (4, 4)];
    let read = |_: u64, l: usize| Some(vec![1u8; l]);
    let copy = |first, count| DeltaOp::Copy { first, count };
    // Too long, before reading.
    let ops = vec![DeltaOp::Literal(vec![0; 10])];
    assert_eq!(apply_delta(&ops, 5, &places, read), Err(BadDelta::TooLong));
    assert_eq!(
        apply_delta(&[copy(0, 2)], 7, &places, |_, _| panic!(
            "read before the check"
        )),
        Err(BadDelta::TooLong)
    );
    // Pieces that do not exist, empty or overflowing runs.
    for op in [copy(2, 1), copy(1, 2), copy(0, 0), copy(u32::MAX, 2)] {
        assert!(matches!(
            apply_delta(&[op], 100, &places, read),
            Err(BadDelta::NoPiece(..))
        ));
    }
    // A basis that reads short.
    assert_eq!(
        apply_delta(&[copy(0, 1)], 100, &places, |_, _| Some(vec![1])),
        Err(BadDelta::Unreadable)
    );
    assert_eq!(
        apply_delta(&[copy(0, 2)], 8, &places, read).unwrap().len(),
        8
    );
}

#[test]
fn bad_bases_are_refused_before_allocation() {
    assert_eq!(BasisMap::parse(300, &[]), Err(BadBasis::Avg(300)));
    assert_eq!(
        BasisMap::parse(256, &[1; HASH_BYTES + 1]),
        Err(BadBasis::Hashes(HASH_BYTES + 1))
    );
    let too_many = vec![0u8; (MAX_PIECES + 1) * HASH_BYTES];
    assert!(BasisMap::parse(256, &too_many).is_err());
    let mut hashes = Vec::new();
    for h in [1u32, 2, 1] {
        hashes.extend_from_slice(&h.to_le_bytes()[..HASH_BYTES]);
    }
    let m = BasisMap::parse(512, &hashes).unwrap();
    assert_eq!(m.index.get(&1), Some(&0)); // the first piece of a repeated hash
    assert_eq!(m.index.get(&2), Some(&1));
}

/// An edit: replace `len` bytes at `at` (fractions of the file) by `with`.
fn edits() -> impl Strategy<Value = Vec<(f64, u16, Vec<u8>)>> {
    prop::collection::vec(
        (
            0.0..1.0f64,
            0u16..600,
            prop::collection::vec(any::<u8>(), 0..300),
        ),
        0..12,
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Any edited version rebuilds exactly from its delta and the old version.
    #[test]
    fn random_edits_round_trip(seed in 1u64..1000, len in 1024usize..200_000, edits in edits()) {
        let old = text(len, seed);
        let mut new = old.clone();
        for (at, cut, with) in edits {
            let a = ((new.len() as f64) * at) as usize;
            let b = (a + cut as usize).min(new.len());
            new.splice(a..b, with);
        }
        let (places, map) = map_of(&old);
        if let Some(ops) = make_delta(&new, &map) {
            prop_assert!(literal_bytes(&ops) < new.len() as u64);
            let rebuilt = apply_delta(&ops, new.len(), &places, |o, l| {
                old.get(o as usize..o as usize + l).map(<[u8]>::to_vec)
            });
            if rebuilt.as_ref() != Ok(&new) {
                // Only a collision of the truncated piece hashes may make a
                // wrong rebuild (the server's chunk hash catches it and asks
                // for the chunk whole).
                prop_assert!(
                    truncated_hashes_collide(&old, &new, map.avg),
                    "wrong rebuild without a hash collision"
                );
                return Ok(());
            }
            // A chunk is never rebuilt longer than it is.
            if !new.is_empty() {
                let short = apply_delta(&ops, new.len() - 1, &places, |o, l| {
                    old.get(o as usize..o as usize + l).map(<[u8]>::to_vec)
                });
                prop_assert_eq!(short, Err(BadDelta::TooLong));
            }
        }
    }

    /// Few edits in a text file always make a delta.
    #[test]
    fn few_edits_are_worth_a_delta(seed in 1u64..1000, len in 8_000usize..100_000, at in 0.0..1.0f64) {
        let old = text(len, seed);
        let mut new = old.clone();
        let a = (len as f64 * at) as usize;
        new.splice(a..a, b"fn inserted() {}\n".iter().copied());
        let (places, map) = map_of(&old);
        let ops = make_delta(&new, &map).expect("worth a delta");
        prop_assert!(literal_bytes(&ops) < 4 * 1024 + 17);
        let rebuilt = apply_delta(&ops, new.len(), &places, |o, l| {
            old.get(o as usize..o as usize + l).map(<[u8]>::to_vec)
        });
        if rebuilt.as_ref() != Ok(&new) {
            prop_assert!(truncated_hashes_collide(&old, &new, map.avg));
        }
    }

    /// Any bytes as a basis are either refused or read without panicking.
    #[test]
    fn any_basis_parses_or_is_refused(avg in any::<u32>(), hashes in prop::collection::vec(any::<u8>(), 0..400)) {
        let _ = BasisMap::parse(avg, &hashes);
    }
}

/// A case proptest found (seed 894): an unchanged file whose pieces include
/// two with the same truncated hash. The rebuild is wrong, and the
/// collision that explains it is there.
#[test]
fn a_truncated_hash_collision_is_the_only_excuse_for_a_wrong_rebuild() {
    let old = text(87_385, 894);
    let (places, map) = map_of(&old);
    let ops = make_delta(&old, &map).expect("an unchanged file is worth a delta");
    let rebuilt = apply_delta(&ops, old.len(), &places, |o, l| {
        old.get(o as usize..o as usize + l).map(<[u8]>::to_vec)
    });
    assert_ne!(rebuilt.as_ref(), Ok(&old));
    assert!(truncated_hashes_collide(&old, &old, map.avg));
    // Without the collision (another file), the rebuild is exact.
    let other = text(87_385, 895);
    let (places, map) = map_of(&other);
    if !truncated_hashes_collide(&other, &other, map.avg) {
        let ops = make_delta(&other, &map).expect("worth a delta");
        assert_eq!(rebuild(&ops, other.len(), &other, &places), other);
    }
}

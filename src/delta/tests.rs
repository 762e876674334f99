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

/// Whether `ops` names, somewhere, an old piece whose bytes differ from the
/// new piece it stands for although their truncated hashes are equal: a
/// collision, which the server's check of the rebuilt chunk catches.
fn has_collision(ops: &[DeltaOp], new: &[u8], old: &[u8], places: &[(u64, u32)], avg: u32) -> bool {
    let mut at = 0usize;
    let mut new_pieces = pieces(new, avg).into_iter();
    for op in ops {
        match op {
            DeltaOp::Literal(b) => {
                let end = at + b.len();
                while at < end {
                    at += new_pieces.next().expect("a piece").1;
                }
            }
            DeltaOp::Copy { first, count } => {
                for &(o, l) in &places[*first as usize..(*first + *count) as usize] {
                    let (no, nl) = new_pieces.next().expect("a piece");
                    let (a, b) = (&old[o as usize..(o + l as u64) as usize], &new[no..no + nl]);
                    if a != b && piece_hash(a) == piece_hash(b) {
                        return true;
                    }
                    at += nl;
                }
            }
            DeltaOp::Fine { .. } => unreachable!("one round makes no fine copies"),
        }
    }
    false
}

/// The delta rebuilds `new` exactly, unless a truncated-hash collision made
/// it name a wrong piece (then the server asks for the chunk whole).
fn assert_rebuilds(ops: &[DeltaOp], new: &[u8], old: &[u8], places: &[(u64, u32)], avg: u32) {
    // A collision may name a longer piece: the rebuild is then refused
    // as too long rather than wrong.
    let got = apply_delta(ops, new.len(), (places, &[]), |o, l| {
        old.get(o as usize..o as usize + l).map(<[u8]>::to_vec)
    });
    assert!(
        got.as_deref() == Ok(new) || has_collision(ops, new, old, places, avg),
        "a delta without a hash collision rebuilt other bytes"
    );
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
    assert_rebuilds(&ops, &new, &old, &places, map.avg);
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
    assert_eq!(
        apply_delta(&ops, 5, (&places, &[]), read),
        Err(BadDelta::TooLong)
    );
    assert_eq!(
        apply_delta(&[copy(0, 2)], 7, (&places, &[]), |_, _| panic!(
            "read before the check"
        )),
        Err(BadDelta::TooLong)
    );
    // Pieces that do not exist, empty or overflowing runs.
    for op in [copy(2, 1), copy(1, 2), copy(0, 0), copy(u32::MAX, 2)] {
        assert!(matches!(
            apply_delta(&[op], 100, (&places, &[]), read),
            Err(BadDelta::NoPiece(..))
        ));
    }
    // A basis that reads short.
    assert_eq!(
        apply_delta(&[copy(0, 1)], 100, (&places, &[]), |_, _| Some(vec![1])),
        Err(BadDelta::Unreadable)
    );
    assert_eq!(
        apply_delta(&[copy(0, 2)], 8, (&places, &[]), read)
            .unwrap()
            .len(),
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
            assert_rebuilds(&ops, &new, &old, &places, map.avg);
            // A chunk is never rebuilt longer than it is (a collision may
            // name a piece of another length: the server's checks catch it).
            if !new.is_empty() && !has_collision(&ops, &new, &old, &places, map.avg) {
                let short = apply_delta(&ops, new.len() - 1, (&places, &[]), |o, l| {
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
        assert_rebuilds(&ops, &new, &old, &places, map.avg);
    }

    /// Any bytes as a basis are either refused or read without panicking.
    #[test]
    fn any_basis_parses_or_is_refused(avg in any::<u32>(), hashes in prop::collection::vec(any::<u8>(), 0..400)) {
        let _ = BasisMap::parse(avg, &hashes);
    }
}

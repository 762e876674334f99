use super::*;
use crate::delta::literal_bytes;
use crate::delta::{apply_delta, basis_of, make_delta, piece_avg, piece_hash, pieces, BasisMap};
use proptest::prelude::*;

/// Source-like text: lines of a few words.
fn text(lines: usize, seed: u64) -> Vec<u8> {
    let words = [
        "fn", "let", "match", "self", "impl", "pub", "x", "return", "Ok(())", "{", "}",
    ];
    let mut x = seed | 1;
    let mut out = Vec::new();
    for i in 0..lines {
        out.extend_from_slice(format!("    // {i}:").as_bytes());
        for _ in 0..(x % 9) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            out.push(b' ');
            out.extend_from_slice(words[(x % words.len() as u64) as usize].as_bytes());
        }
        x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
        out.push(b'\n');
    }
    out
}

/// Both rounds as the client and server run them (every gap asked): the
/// final ops, the basis and fine places, and each named piece's old and
/// new bytes (for telling a collision from a bug).
struct Rounds {
    ops: Vec<DeltaOp>,
    places: Vec<(u64, u32)>,
    fine: Vec<(u64, u32)>,
    /// (old bytes, new bytes, equal truncated hashes) of every piece named.
    named: Vec<(Vec<u8>, Vec<u8>, bool)>,
}

fn rounds(old: &[u8], new: &[u8]) -> Option<Rounds> {
    let avg = piece_avg(old.len() as u64);
    let (places, hashes) = basis_of(old, avg);
    let map = BasisMap::parse(avg, &hashes).unwrap();
    let first = make_delta(new, &map)?;
    let asked = gaps(&first, &map, |_, _| true);
    let spans: Vec<(u64, &[u8])> = asked
        .iter()
        .map(|g| {
            let (o, l) = crate::delta::run_span(&places, g.first, g.count).unwrap();
            (o, &old[o as usize..o as usize + l])
        })
        .collect();
    let (fine, counts, fh) = answer(&spans);
    let mut named = Vec::new();
    // Coarse copies stand for the new chunk's pieces in order; each asked
    // gap's fine copies for the gap's fine pieces.
    let mut new_pieces = pieces(new, avg).into_iter();
    let mut at = 0usize;
    let mut base = 0u32;
    let mut next_gap = asked.iter().zip(&counts).peekable();
    for (i, op) in first.iter().enumerate() {
        match op {
            DeltaOp::Copy { first, count } => {
                for &(o, l) in &places[*first as usize..(*first + *count) as usize] {
                    let (no, nl) = new_pieces.next().unwrap();
                    let (a, b) = (&old[o as usize..o as usize + l as usize], &new[no..no + nl]);
                    named.push((a.to_vec(), b.to_vec(), piece_hash(a) == piece_hash(b)));
                    at = no + nl;
                }
            }
            DeltaOp::Literal(g) => {
                let end = at + g.len();
                while new_pieces.len() > 0 && at < end {
                    at += new_pieces.next().unwrap().1;
                }
                if let Some((gap, &c)) = next_gap.next_if(|(gap, _)| gap.op == i) {
                    let lo = base as usize * FINE_HASH_BYTES;
                    let m = fine_map(&fh[lo..lo + c as usize * FINE_HASH_BYTES]);
                    let cuts = fine_cuts(g);
                    let mut k = 0usize;
                    let mut p = 0usize;
                    for st in match_gap(g, &m, c) {
                        match st {
                            FineStep::Literal { end, .. } => {
                                while p < end {
                                    p += cuts[k];
                                    k += 1;
                                }
                            }
                            FineStep::Copy { first, count } => {
                                for j in 0..count {
                                    let (o, l) = fine[(base + first + j) as usize];
                                    let a = &old[o as usize..o as usize + l as usize];
                                    let b = &g[p..p + cuts[k]];
                                    named.push((
                                        a.to_vec(),
                                        b.to_vec(),
                                        fine_hash(a) == fine_hash(b),
                                    ));
                                    p += cuts[k];
                                    k += 1;
                                }
                            }
                        }
                    }
                    let _ = gap;
                    base += c;
                }
            }
            DeltaOp::Fine { .. } => unreachable!("a first round has no fine copies"),
        }
    }
    let ops = refine(first, &asked, &counts, &fh).unwrap();
    Some(Rounds {
        ops,
        places,
        fine,
        named,
    })
}

fn rebuild(r: &Rounds, old: &[u8], max: usize) -> Result<Vec<u8>, crate::delta::BadDelta> {
    apply_delta(&r.ops, max, (&r.places, &r.fine), |o, l| {
        old.get(o as usize..o as usize + l).map(<[u8]>::to_vec)
    })
}

#[test]
fn cuts_cover_the_data_within_bounds_and_resync_after_a_line() {
    let data = text(400, 3);
    let cuts = fine_cuts(&data);
    assert_eq!(cuts.iter().sum::<usize>(), data.len());
    assert!(cuts.iter().all(|&l| l <= FINE_MAX));
    assert!(cuts[..cuts.len() - 1].iter().all(|&l| l >= FINE_MIN));
    // An edit on one line leaves the pieces of the lines after it alone.
    let mut edited = data.clone();
    edited.splice(10..10, b"inserted words".iter().copied());
    let tail = |c: &[usize], d: &[u8]| {
        let mut at = 0;
        let mut out = Vec::new();
        for &l in c {
            out.push(d[at..at + l].to_vec());
            at += l;
        }
        out.split_off(out.len() - 100)
    };
    assert_eq!(tail(&cuts, &data), tail(&fine_cuts(&edited), &edited));
    // Long lines without newlines are cut by content too.
    let long: Vec<u8> = (0..10_000u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 24) as u8 | 1)
        .filter(|&b| b != b'\n')
        .collect();
    assert!(fine_cuts(&long).len() > 10_000 / FINE_MAX);
}

#[test]
fn a_one_line_edit_costs_about_the_line() {
    let old = text(3_000, 5);
    let mut new = old.clone();
    let at = old.len() / 2;
    new.splice(at..at, b" edited".iter().copied());
    let avg = piece_avg(old.len() as u64);
    let (_, hashes) = basis_of(&old, avg);
    let first = make_delta(&new, &BasisMap::parse(avg, &hashes).unwrap()).unwrap();
    let r = rounds(&old, &new).unwrap();
    assert_eq!(rebuild(&r, &old, new.len()).unwrap(), new);
    let (one, two) = (literal_bytes(&first), literal_bytes(&r.ops));
    assert!(
        two * 3 <= one && two <= 3 * FINE_MAX as u64,
        "first round {one} B, second {two} B"
    );
}

#[test]
fn gaps_stay_within_the_range_budget() {
    let old = text(30_000, 7);
    let avg = piece_avg(old.len() as u64);
    let (_, hashes) = basis_of(&old, avg);
    let map = BasisMap::parse(avg, &hashes).unwrap();
    // Every other piece replaced: many gaps, each wanting old pieces.
    let ops: Vec<DeltaOp> = (0..2_000)
        .map(|i| {
            if i % 2 == 0 {
                DeltaOp::Copy { first: i, count: 1 }
            } else {
                DeltaOp::Literal(vec![b'x'; 300])
            }
        })
        .collect();
    let asked = gaps(&ops, &map, |_, _| true);
    assert!(asked.len() <= MAX_RANGES);
    let most = asked
        .iter()
        .map(|g| g.count as u64 * 4 * avg as u64)
        .sum::<u64>();
    assert!(most <= MAX_RANGE_BYTES, "{most}");
}

#[test]
fn bad_answers_are_refused_before_allocation() {
    let ops = vec![DeltaOp::Literal(b"some new text here\n".to_vec())];
    let gap = [Gap {
        op: 0,
        first: 0,
        count: 1,
    }];
    assert!(matches!(
        refine(ops.clone(), &gap, &[], &[]),
        Err(BadFine::Ranges { .. })
    ));
    assert!(matches!(
        refine(ops.clone(), &gap, &[2], &[0; 3]),
        Err(BadFine::Hashes(3))
    ));
    assert!(matches!(
        refine(ops.clone(), &gap, &[u32::MAX], &[]),
        Err(BadFine::Hashes(0))
    ));
    let big = MAX_FINE_PIECES as u32 + 1;
    assert!(refine(ops.clone(), &gap, &[big], &vec![0; big as usize * 2]).is_err());
    assert_eq!(refine(ops.clone(), &gap, &[1], &[0, 0]).unwrap().len(), 1);
}

#[test]
fn fine_runs_must_exist_and_follow_each_other() {
    let fine = vec![(0u64, 4u32), (4, 4), (20, 4)];
    let read = |_: u64, l: usize| Some(vec![1u8; l]);
    let run = |first, count| [DeltaOp::Fine { first, count }];
    assert_eq!(
        apply_delta(&run(0, 2), 100, (&[], &fine), read)
            .unwrap()
            .len(),
        8
    );
    for (first, count) in [(1, 2), (3, 1), (0, 0), (u32::MAX, 2)] {
        assert!(matches!(
            apply_delta(&run(first, count), 100, (&[], &fine), read),
            Err(crate::delta::BadDelta::NoPiece(..))
        ));
    }
    assert_eq!(
        apply_delta(&run(0, 2), 7, (&[], &fine), |_, _| panic!(
            "read before the check"
        )),
        Err(crate::delta::BadDelta::TooLong)
    );
}

/// An edit: replace `len` bytes at `at` (fractions of the file) by `with`.
fn edits() -> impl Strategy<Value = Vec<(f64, u16, Vec<u8>)>> {
    prop::collection::vec(
        (
            0.0..1.0f64,
            0u16..300,
            prop::collection::vec(prop::sample::select(b"abc xyz\n{}();".to_vec()), 0..200),
        ),
        0..10,
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    /// Any edited text rebuilds exactly from both rounds, unless a
    /// truncated hash named a wrong piece; then the rebuilt bytes differ
    /// (the server's chunk check refuses them and asks again without a
    /// second round): a collision costs a refetch, never a wrong file.
    #[test]
    fn random_edits_round_trip_through_both_rounds(seed in 1u64..1000, lines in 30usize..4_000, edits in edits()) {
        let old = text(lines, seed);
        let mut new = old.clone();
        for (at, cut, with) in edits {
            let a = ((new.len() as f64) * at) as usize;
            let b = (a + cut as usize).min(new.len());
            new.splice(a..b, with);
        }
        if let Some(r) = rounds(&old, &new) {
            let collided = r.named.iter().any(|(a, b, same)| a != b && *same);
            prop_assert!(r.named.iter().all(|(a, b, same)| a == b || *same), "a piece named without a hash match");
            match rebuild(&r, &old, new.len()) {
                Ok(got) if got == new => {}
                Ok(got) => {
                    prop_assert!(collided, "rebuilt other bytes without a collision");
                    prop_assert_ne!(blake3::hash(&got), blake3::hash(&new));
                }
                Err(_) => prop_assert!(collided, "refused without a collision"),
            }
            prop_assert!(literal_bytes(&r.ops) <= new.len() as u64);
        }
    }

    /// Any bytes as an answer are refused or used without panicking.
    #[test]
    fn any_answer_is_refused_or_used(counts in prop::collection::vec(any::<u32>(), 0..4), hashes in prop::collection::vec(any::<u8>(), 0..64)) {
        let ops = vec![DeltaOp::Copy { first: 0, count: 1 }, DeltaOp::Literal(text(20, 1)), DeltaOp::Literal(text(5, 2))];
        let gaps = [Gap { op: 1, first: 1, count: 3 }, Gap { op: 2, first: 4, count: 1 }];
        let _ = refine(ops, &gaps, &counts, &hashes);
    }
}

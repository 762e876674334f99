//! Large bases: streamed, 4-byte hashes, bounded.
use super::*;
use proptest::prelude::*;

/// Pseudo-random bytes (a binary: no lines, nothing repeats).
fn noise(n: usize, seed: u64) -> Vec<u8> {
    let mut out = vec![0u8; n];
    blake3::Hasher::new()
        .update(&seed.to_le_bytes())
        .finalize_xof()
        .fill(&mut out);
    out
}

/// The new version's chunks, each as a delta against the large basis of
/// `old` (or whole), rebuilt as the server does; returns the literal bytes.
fn round_trip(old: &[u8], new: &[u8], avg: u32) -> u64 {
    let (places, hashes) = basis_stream(old, avg, LARGE_MAX_PIECES).unwrap();
    assert_eq!(hashes.len(), places.len() * LARGE_HASH_BYTES);
    let map = BasisMap::parse(avg, &hashes).unwrap();
    let digest = crate::chunk::digest_bytes(new);
    let offs = digest.offsets();
    let mut literal = 0;
    for (i, c) in digest.chunks.iter().enumerate() {
        let chunk = &new[offs[i] as usize..offs[i + 1] as usize];
        match make_delta(chunk, &map) {
            Some(ops) => {
                let got = apply_delta(&ops, c.len as usize, (&places, &[]), |o, l| {
                    old.get(o as usize..o as usize + l).map(<[u8]>::to_vec)
                });
                // 4-byte hashes among a few hundred pieces: a collision
                // is about 1 in 10^7 per new piece; the server's check
                // would catch it.
                assert_eq!(got.as_deref(), Ok(chunk), "chunk {i} rebuilt other bytes");
                literal += literal_bytes(&ops);
            }
            None => literal += chunk.len() as u64,
        }
    }
    literal
}

#[test]
fn large_pieces_follow_the_old_size() {
    assert_eq!(large_avg(0), LARGE_AVG_MIN);
    assert_eq!(large_avg(BASIS_MAX_FILE + 1), LARGE_AVG_MIN);
    assert_eq!(large_avg(256 << 20), LARGE_AVG_MIN);
    assert_eq!(large_avg(512 << 20), 8192);
    assert_eq!(large_avg(8 << 30), LARGE_AVG_MAX);
    assert!(valid_avg(LARGE_AVG_MIN) && valid_avg(LARGE_AVG_MAX));
    assert!(is_large(LARGE_AVG_MIN) && !is_large(AVG_MAX));
    assert!(!valid_avg(2 * LARGE_AVG_MAX));
    assert_eq!(hash_bytes(AVG_MAX), HASH_BYTES);
    assert_eq!(hash_bytes(LARGE_AVG_MIN), LARGE_HASH_BYTES);
}

#[test]
fn a_streamed_basis_cuts_as_the_whole_file_does() {
    let old = noise(3 << 20, 1);
    let (places, hashes) = basis_stream(&old[..], LARGE_AVG_MIN, LARGE_MAX_PIECES).unwrap();
    let whole: Vec<Place> = pieces(&old, LARGE_AVG_MIN)
        .into_iter()
        .map(|(o, l)| (o as u64, l as u32))
        .collect();
    assert_eq!(places, whole);
    let (o, l) = places[7];
    let h = piece_hash_of(&old[o as usize..(o + l as u64) as usize], LARGE_HASH_BYTES);
    assert_eq!(hashes[7 * 4..8 * 4], h.to_le_bytes());
    // Bounded: only the first pieces are described.
    let (few, fh) = basis_stream(&old[..], LARGE_AVG_MIN, 10).unwrap();
    assert_eq!((few.len(), fh.len()), (10, 40));
    assert_eq!(few[..], places[..10]);
}

#[test]
fn large_bases_are_checked_before_allocation() {
    let too_many = vec![0u8; (LARGE_MAX_PIECES + 1) * LARGE_HASH_BYTES];
    assert_eq!(
        BasisMap::parse(LARGE_AVG_MIN, &too_many),
        Err(BadBasis::Hashes(too_many.len()))
    );
    // 3-byte hashes are not a large basis's.
    assert!(BasisMap::parse(LARGE_AVG_MIN, &[1; 9]).is_err());
    assert_eq!(
        BasisMap::parse(LARGE_AVG_MAX * 2, &[]),
        Err(BadBasis::Avg(LARGE_AVG_MAX * 2))
    );
    let m = BasisMap::parse(LARGE_AVG_MIN, &[1, 2, 3, 4, 5, 6, 7, 8]).unwrap();
    assert_eq!(m.pieces, 2);
    assert_eq!(m.index.get(&0x0403_0201), Some(&0));
}

/// A file over 4 MiB with a few scattered edits comes back as deltas
/// carrying a small part of it.
#[test]
fn few_edits_of_a_large_file_send_little() {
    let old = noise((BASIS_MAX_FILE + (1 << 20)) as usize, 2);
    let mut new = old.clone();
    for at in (1000..new.len()).step_by(512 << 10) {
        new[at] ^= 0x55;
    }
    new.splice(3 << 20..3 << 20, noise(100, 3));
    let literal = round_trip(&old, &new, large_avg(old.len() as u64));
    // 11 edits, each costing a piece or two of about 4 KiB.
    assert!(literal < 160 << 10, "{literal} literal bytes");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// Random edits (bytes changed, inserted, removed) of a binary rebuild
    /// exactly, chunk by chunk, through a streamed large basis.
    #[test]
    fn random_edits_of_large_files_round_trip(
        seed in any::<u64>(),
        len in (256usize << 10)..(1 << 20),
        shift in 0u32..3,
        edits in prop::collection::vec((0.0..1.0f64, 0usize..5000, 0usize..3000), 0..10),
    ) {
        let old = noise(len, seed);
        let mut new = old.clone();
        for (i, (at, cut, add)) in edits.into_iter().enumerate() {
            let a = ((new.len() as f64) * at) as usize;
            let b = (a + cut).min(new.len());
            new.splice(a..b, noise(add, seed ^ (i as u64 + 1)));
        }
        let literal = round_trip(&old, &new, LARGE_AVG_MIN << shift);
        prop_assert!(literal <= new.len() as u64);
    }
}

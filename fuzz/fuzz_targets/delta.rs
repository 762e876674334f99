//! Deltas against small and large bases: any `Basis` a peer sends through
//! `BasisMap::parse`; a large basis streamed from an old version, the
//! new version's chunks made into deltas against it and rebuilt; and any
//! delta steps applied to that basis.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use replica::delta::{
    apply_delta, basis_stream, make_delta, BasisMap, DeltaOp, LARGE_AVG_MIN, LARGE_HASH_BYTES,
    LARGE_MAX_PIECES,
};

#[derive(Arbitrary, Debug)]
enum FOp {
    Copy { first: u32, count: u32 },
    Literal(Vec<u8>),
    Fine { first: u32, count: u32 },
}

#[derive(Arbitrary, Debug)]
struct Input {
    /// A peer's basis, as sent.
    avg: u32,
    hashes: Vec<u8>,
    /// The old version: this many KiB of pseudo-random bytes (at most 1 MiB).
    old_kib: u16,
    shift: u8,
    /// Edits of the new version: (at, replace this many bytes, insert these).
    edits: Vec<(u32, u16, Vec<u8>)>,
    /// Arbitrary steps applied to the large basis, rebuilding at most `max_len`.
    ops: Vec<FOp>,
    max_len: u16,
}

fn noise(n: usize) -> Vec<u8> {
    let mut out = vec![0u8; n];
    blake3::Hasher::new().update(b"old").finalize_xof().fill(&mut out);
    out
}

fuzz_target!(|input: Input| {
    if let Ok(m) = BasisMap::parse(input.avg, &input.hashes) {
        assert!(m.pieces as usize <= LARGE_MAX_PIECES.max(replica::delta::MAX_PIECES));
        assert!(m.index.len() <= m.pieces as usize);
    }
    let old = noise((input.old_kib as usize % 1025) << 10);
    let avg = LARGE_AVG_MIN << (input.shift % 3);
    let (places, hashes) = basis_stream(&old[..], avg, LARGE_MAX_PIECES).expect("reads a slice");
    assert_eq!(hashes.len(), places.len() * LARGE_HASH_BYTES);
    let map = BasisMap::parse(avg, &hashes).expect("a basis this side cut");
    let mut new = old.clone();
    for (at, cut, with) in input.edits.iter().take(16) {
        let a = (*at as usize).min(new.len());
        let b = (a + *cut as usize).min(new.len());
        new.splice(a..b, with.iter().copied());
    }
    let read = |o: u64, l: usize| old.get(o as usize..o as usize + l).map(<[u8]>::to_vec);
    for chunk in new.chunks(64 << 10) {
        if let Some(ops) = make_delta(chunk, &map) {
            // 4-byte hashes over at most a few hundred pieces: a collision
            // here would be a finding worth a look (the server would catch
            // it by the chunk's hash).
            let got = apply_delta(&ops, chunk.len(), (&places, &[]), read);
            assert_eq!(got.as_deref(), Ok(chunk));
        }
    }
    let ops: Vec<DeltaOp> = input
        .ops
        .into_iter()
        .map(|o| match o {
            FOp::Copy { first, count } => DeltaOp::Copy { first, count },
            FOp::Literal(b) => DeltaOp::Literal(b),
            FOp::Fine { first, count } => DeltaOp::Fine { first, count },
        })
        .collect();
    if let Ok(out) = apply_delta(&ops, input.max_len as usize, (&places, &[]), read) {
        assert!(out.len() <= input.max_len as usize);
    }
});

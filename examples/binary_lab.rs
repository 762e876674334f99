//! Lab: how much of a new large binary a fine-piece basis of its old
//! version would match, beside chunk-level dedup.
//! `cargo run --release --example binary_lab -- OLD NEW`
use replica::chunk::digest_bytes;
use replica::delta::pieces;

fn piece_hash(d: &[u8]) -> u64 {
    u64::from_le_bytes(blake3::hash(d).as_bytes()[..8].try_into().unwrap())
}
use std::collections::HashSet;

fn main() {
    let a: Vec<String> = std::env::args().collect();
    let old = std::fs::read(&a[1]).unwrap();
    let new = std::fs::read(&a[2]).unwrap();
    let od = digest_bytes(&old);
    let nd = digest_bytes(&new);
    let have: HashSet<_> = od.chunks.iter().map(|c| c.hash).collect();
    let offs = nd.offsets();
    let mut missing = Vec::new();
    let mut dedup = 0u64;
    for (i, c) in nd.chunks.iter().enumerate() {
        if have.contains(&c.hash) {
            dedup += c.len as u64;
        } else {
            missing.push((offs[i] as usize, c.len as usize));
        }
    }
    println!(
        "old {} new {} chunk-dedup {} ({:.1}%)",
        old.len(),
        new.len(),
        dedup,
        100.0 * dedup as f64 / new.len() as f64
    );
    for avg in [512u32, 1024, 2048, 4096, 8192] {
        let set: HashSet<u64> = pieces(&old, avg)
            .iter()
            .map(|&(o, l)| piece_hash(&old[o..o + l]))
            .collect();
        let mut matched = 0u64;
        let mut lit = Vec::new();
        for &(o, l) in &missing {
            let d = &new[o..o + l];
            for (po, pl) in pieces(d, avg) {
                if set.contains(&piece_hash(&d[po..po + pl])) {
                    matched += pl as u64;
                } else {
                    lit.extend_from_slice(&d[po..po + pl]);
                }
            }
        }
        let z = zstd::bulk::compress(&lit, 3).unwrap().len();
        println!(
            "avg {avg}: pieces {} basis {} B, matched {} ({:.1}% of new), literals {} zstd3 {}",
            set.len(),
            set.len() * 4,
            matched,
            100.0 * matched as f64 / new.len() as f64,
            lit.len(),
            z
        );
    }
    // Pieces cut over the whole new file (aligned with the old file's
    // cuts, as no per-chunk cutting can be): the upper bound of matching.
    for avg in [512u32, 2048, 4096] {
        let set: HashSet<u64> = pieces(&old, avg)
            .iter()
            .map(|&(o, l)| piece_hash(&old[o..o + l]))
            .collect();
        let mut in_missing = vec![false; new.len()];
        for &(o, l) in &missing {
            in_missing[o..o + l].iter_mut().for_each(|x| *x = true);
        }
        let mut matched = 0u64;
        for (o, l) in pieces(&new, avg) {
            if in_missing[o] && set.contains(&piece_hash(&new[o..o + l])) {
                matched += l as u64;
            }
        }
        println!(
            "aligned avg {avg}: matched {} ({:.1}% of new)",
            matched,
            100.0 * matched as f64 / new.len() as f64
        );
    }
    let mut all = Vec::new();
    for &(o, l) in &missing {
        all.extend_from_slice(&new[o..o + l]);
    }
    println!(
        "no basis: missing {} zstd3 {}",
        all.len(),
        zstd::bulk::compress(&all, 3).unwrap().len()
    );
}

//! Measures how many bytes changed files would cost under several literal
//! encodings (a lab for choosing one; see bench/RESULTS.md).
//!
//! `cargo run --release --example delta_lab -- OLD NEW [SKIP] [LIMIT]`

use std::collections::HashMap;

#[path = "common/lab.rs"]
mod lab;

fn pieces(d: &[u8], avg: u32) -> Vec<(usize, usize)> {
    fastcdc::v2020::FastCDC::new(d, avg / 4, avg, avg * 4)
        .map(|c| (c.offset, c.length))
        .collect()
}

fn h(d: &[u8]) -> u32 {
    u32::from_le_bytes(blake3::hash(d).as_bytes()[..4].try_into().unwrap())
}

fn zp(level: i32, data: &[u8], prefix: &[u8]) -> usize {
    let mut c = zstd::zstd_safe::CCtx::create();
    c.set_parameter(zstd::zstd_safe::CParameter::CompressionLevel(level))
        .unwrap();
    c.ref_prefix(prefix).unwrap();
    let mut out = Vec::with_capacity(zstd::zstd_safe::compress_bound(data.len()));
    c.compress2(&mut out, data).unwrap();
    out.len()
}

fn main() {
    let args = lab::Args::parse();
    let changed = args.changed();
    let total: usize = changed.iter().map(|(_, n)| n.len()).sum();
    println!("{} changed files, {} bytes new", changed.len(), total);
    let mut all_new = Vec::new();
    let mut oracle = 0;
    for (o, n) in &changed {
        all_new.extend_from_slice(n);
        oracle += zp(3, n, o);
    }
    println!(
        "whole files through one stream (wlog 24): {}",
        lab::stream(3, &all_new)
    );
    println!("oracle, each file against its old version: {oracle}");
    // Piece size: fixed, or the old file's size / n (a power of two, 256..=2048).
    let policies: Vec<u32> = std::env::var("POLICIES")
        .map(|v| v.split(',').map(|x| x.parse().unwrap()).collect())
        .unwrap_or(vec![2048, 1024, 512, 256, 16, 32, 64]);
    for policy in policies {
        let avg_of = |len: usize| -> u32 {
            if policy >= 256 {
                policy
            } else {
                ((len / policy as usize).next_power_of_two() as u32).clamp(256, 2048)
            }
        };
        let (mut lits, mut basis, mut ops) = (Vec::new(), 0usize, 0usize);
        let mut hashes = Vec::new();
        let mut per_copied = 0usize;
        let (mut hist3, mut hist19) = (0usize, 0usize);
        for (o, n) in &changed {
            let avg = avg_of(o.len());
            let mut map = HashMap::new();
            for (i, &(off, len)) in pieces(o, avg).iter().enumerate() {
                map.entry(h(&o[off..off + len])).or_insert(i);
                hashes.extend_from_slice(&h(&o[off..off + len]).to_le_bytes());
            }
            basis += 4 * pieces(o, avg).len();
            let (mut copied, mut lit) = (Vec::new(), Vec::new());
            for (off, len) in pieces(n, avg) {
                let p = &n[off..off + len];
                if map.contains_key(&h(p)) {
                    copied.extend_from_slice(p);
                } else {
                    lit.extend_from_slice(p);
                }
                ops += 1;
            }
            let mut dict = lits[lits.len().saturating_sub(1 << 20)..].to_vec();
            dict.extend_from_slice(&copied);
            if !lit.is_empty() {
                hist3 += zp(3, &lit, &dict);
                hist19 += zp(19, &lit, &dict);
            }
            lits.extend_from_slice(&lit);
            per_copied += zp(3, &lit, &copied);
        }
        let st = lab::stream(3, &lits);
        if let Ok(dump) = std::env::var("DUMP") {
            std::fs::write(format!("{dump}.{policy}"), &lits).unwrap();
        }
        let basis = lab::stream(3, &hashes).min(basis);
        println!(
            "pieces {}: basis {basis} B, ~{ops} ops; literal {} B; stream(literals) {st} (level 19: {}); basis+stream {}; per file literals|copied {per_copied}; literals|1M history+copied: level 3 {hist3}, level 19 {hist19}",
            if policy >= 256 { format!("avg {policy}") } else { format!("size/{policy}") },
            lits.len(),
            lab::stream(19, &lits),
            basis + st,
        );
    }
}

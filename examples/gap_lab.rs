//! Prices the second, scoped round of a delta (fine pieces of the old range
//! each literal gap replaced) on the changed files of two trees.
//!
//! `cargo run --release --example gap_lab -- OLD NEW [SKIP] [LIMIT]`
//! (env COARSE=k multiplies the first round's piece size by k)

use replica::delta::fine::{fine_cuts, fine_hash, fine_hashes, fine_map, match_gap, FineStep};
use replica::delta::{piece_avg, piece_hash, pieces};
use std::collections::HashMap;

#[path = "common/lab.rs"]
mod lab;

#[derive(Default)]
struct Tally {
    coarse_hashes: usize,
    lit1: Vec<u8>,
    lit2: Vec<u8>,
    gaps: usize,
    asked: usize,
    fine_hashes: usize,
    fine_ops: usize,
    false_hits: usize,
    files_with_false: usize,
    seen: std::collections::HashSet<u64>,
    novel_pct: usize,
    est: Option<zstd::zstd_safe::CCtx<'static>>,
    est_factor: usize,
}

/// Compressed size of `g` after everything fed before (level 1, flushed).
fn estimate(c: &mut zstd::zstd_safe::CCtx<'static>, g: &[u8]) -> usize {
    let mut out = vec![0u8; zstd::zstd_safe::compress_bound(g.len()) + 64];
    let mut ob = zstd::zstd_safe::OutBuffer::around(&mut out[..]);
    let mut ib = zstd::zstd_safe::InBuffer::around(g);
    loop {
        let r = c
            .compress_stream2(
                &mut ob,
                &mut ib,
                zstd::zstd_safe::zstd_sys::ZSTD_EndDirective::ZSTD_e_flush,
            )
            .unwrap();
        if r == 0 {
            break;
        }
    }
    ob.pos()
}

fn h64(d: &[u8]) -> u64 {
    u64::from_le_bytes(blake3::hash(d).as_bytes()[..8].try_into().unwrap())
}

fn file(o: &[u8], n: &[u8], coarse: u32, t: &mut Tally) {
    let avg = (piece_avg(o.len() as u64) * coarse).min(1 << 14);
    let op = pieces(o, avg);
    let mut map = HashMap::new();
    for (i, &(off, len)) in op.iter().enumerate() {
        map.entry(piece_hash(&o[off..off + len])).or_insert(i);
    }
    t.coarse_hashes += 3 * op.len();
    // First round: runs of matched old pieces and gaps between them.
    let mut prev_end = 0usize; // old piece index after the last copied one
    let mut gap: Option<(usize, usize)> = None; // new byte range
    let mut gaps = Vec::new(); // (new start, new end, old piece a, old piece b)
    for (off, len) in pieces(n, avg) {
        match map.get(&piece_hash(&n[off..off + len])) {
            Some(&i) => {
                if let Some((s, e)) = gap.take() {
                    gaps.push((s, e, prev_end, i));
                }
                prev_end = i + 1;
            }
            None => {
                gap = Some(gap.map_or((off, off + len), |(s, _)| (s, off + len)));
            }
        }
    }
    if let Some((s, e)) = gap.take() {
        gaps.push((s, e, prev_end, op.len()));
    }
    let mut false_here = false;
    for (s, e, a, b) in gaps {
        let g = &n[s..e];
        t.lit1.extend_from_slice(g);
        t.gaps += 1;
        let mut novel = 0;
        let mut at = 0;
        for l in fine_cuts(g) {
            if !t.seen.contains(&h64(&g[at..at + l])) {
                novel += l;
            }
            at += l;
        }
        let mut ask = novel >= 64 && novel * 100 >= t.novel_pct * g.len();
        if let Some(c) = t.est.as_mut() {
            let est = estimate(c, g);
            let range = if b > a {
                op[b - 1].0 + op[b - 1].1 - op[a].0
            } else {
                0
            };
            ask = est * t.est_factor > range * 2 / 32 * 100 + 400;
        }
        if b <= a || !ask {
            let mut at = 0;
            for l in fine_cuts(g) {
                t.seen.insert(h64(&g[at..at + l]));
                at += l;
            }
            t.lit2.extend_from_slice(g);
            continue;
        }
        t.asked += 1;
        let (ro, rl) = (op[a].0, op[b - 1].0 + op[b - 1].1 - op[a].0);
        let range = &o[ro..ro + rl];
        let hs = fine_hashes(range);
        t.fine_hashes += hs.len();
        let fm = fine_map(&hs);
        // old fine pieces, for counting false hits
        let mut old_pieces = Vec::new();
        let mut at = 0;
        for l in fine_cuts(range) {
            old_pieces.push(&range[at..at + l]);
            at += l;
        }
        let steps = match_gap(g, &fm, (hs.len() / 2) as u32);
        t.fine_ops += steps.len();
        let mut at = 0usize;
        let cuts = fine_cuts(g);
        let mut ci = 0;
        for st in steps {
            match st {
                FineStep::Literal { start, end } => {
                    t.lit2.extend_from_slice(&g[start..end]);
                    let mut a2 = start;
                    for l in fine_cuts(&g[start..end]) {
                        t.seen.insert(h64(&g[a2..a2 + l]));
                        a2 += l;
                    }
                    while at < end {
                        at += cuts[ci];
                        ci += 1;
                    }
                }
                FineStep::Copy { first, count } => {
                    for k in 0..count as usize {
                        let l = cuts[ci];
                        let np = &g[at..at + l];
                        let old = old_pieces[first as usize + k];
                        if old != np {
                            assert_eq!(fine_hash(old), fine_hash(np));
                            t.false_hits += 1;
                            false_here = true;
                        }
                        at += l;
                        ci += 1;
                    }
                }
            }
        }
    }
    t.files_with_false += false_here as usize;
}

fn main() {
    let args = lab::Args::parse();
    let changed = args.changed();
    let total: usize = changed.iter().map(|(_, n)| n.len()).sum();
    println!("{} changed files, {} bytes new", changed.len(), total);
    let coarse: Vec<u32> = std::env::var("COARSE")
        .map(|v| v.split(',').map(|x| x.parse().unwrap()).collect())
        .unwrap_or(vec![1, 2, 4]);
    for k in coarse {
        let mut t = Tally {
            novel_pct: std::env::var("NOVEL").map_or(0, |v| v.parse().unwrap()),
            est: std::env::var("EST").ok().map(|_| {
                let mut c = zstd::zstd_safe::CCtx::create();
                c.set_parameter(zstd::zstd_safe::CParameter::CompressionLevel(1))
                    .unwrap();
                c.set_parameter(zstd::zstd_safe::CParameter::WindowLog(20))
                    .unwrap();
                c
            }),
            est_factor: std::env::var("EST").map_or(50, |v| v.parse().unwrap()),
            ..Tally::default()
        };
        for (o, n) in &changed {
            file(o, n, k, &mut t);
        }
        let (s1, s2) = (lab::stream(3, &t.lit1), lab::stream(3, &t.lit2));
        let req = t.asked * 4;
        println!(
            "coarse x{k}: hashes {} | one round: literal {} -> {s1}, total {} | two rounds: gaps {} asked {} (~{req} B requests), fine hashes {} B, fine ops {} (~{} B), literal {} -> {s2}, total {} | false fine hits {} in {} files",
            t.coarse_hashes,
            t.lit1.len(),
            t.coarse_hashes + s1,
            t.gaps,
            t.asked,
            t.fine_hashes,
            t.fine_ops,
            t.fine_ops * 3,
            t.lit2.len(),
            t.coarse_hashes + req + t.fine_hashes + t.fine_ops * 3 + s2,
            t.false_hits,
            t.files_with_false,
        );
    }
}

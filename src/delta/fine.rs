//! Fine pieces: the second, scoped round of a delta.
//!
//! After the first round (coarse pieces, [`super::make_delta`]) each
//! literal gap of a chunk lies between two runs of old pieces, so the old
//! range it most likely replaced is known by piece indexes. The server
//! cuts just that old range into fine pieces (a line of at least 32 B, or
//! about 32 + 64 B of a long line) and names each by a [`FINE_HASH_BYTES`]-byte hash; the
//! client cuts the gap the same way and copies the fine pieces it finds.
//! A gap's pieces are only looked up among its own range's few dozen
//! pieces, so a 2-byte hash rarely names a wrong one (and a lone match
//! must be confirmed by its place, see [`match_gap`]); when it does, the
//! server's check of the rebuilt chunk catches it and the chunk comes
//! again without a second round.
//!
//! Flow: [`gaps`] (client: which gaps, which old ranges; [`Estimator`]
//! decides which are worth it) -> [`answer`] (server: fine pieces of the
//! ranges) -> [`refine`] (client: gaps rewritten as fine copies and
//! literals) -> [`super::apply_delta`] (server).
//!
//! The cutter is pinned (it is part of the protocol): a piece ends after a
//! `\n` once it holds [`FINE_MIN`] bytes, or where a gear hash over the
//! last bytes has its top [`FINE_MASK_BITS`] bits clear once it holds
//! [`FINE_MIN`] bytes, or at [`FINE_MAX`] bytes. The gear table is
//! splitmix64 from seed 0 (see [`GEAR`]); the hash restarts at each cut.

use super::{BasisMap, DeltaOp};
use std::collections::HashMap;

/// A fine piece ends after a newline or a gear boundary only once it holds
/// this many bytes.
pub const FINE_MIN: usize = 32;
/// Fine pieces are at most this long.
pub const FINE_MAX: usize = 256;
/// Gear boundaries: top bits of the rolling hash that must be zero (6: about
/// one in 64 positions). Minimum 32 (not 16) measured better on tokio and
/// libc (fewer hashes for a few more literal bytes).
pub const FINE_MASK_BITS: u32 = 6;
/// Bytes of each fine piece's hash.
pub const FINE_HASH_BYTES: usize = 2;

/// splitmix64, for the gear table.
const fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// The gear table: entry `i` is splitmix64 of `i`.
pub const GEAR: [u64; 256] = {
    let mut t = [0u64; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = splitmix(i as u64);
        i += 1;
    }
    t
};

/// Fine pieces of `data` as lengths, in order (they cover all of it).
pub fn fine_cuts(data: &[u8]) -> Vec<usize> {
    let mut out = Vec::with_capacity(data.len() / 32 + 1);
    let (mut start, mut h) = (0usize, 0u64);
    for (i, &b) in data.iter().enumerate() {
        h = (h << 1).wrapping_add(GEAR[b as usize]);
        let len = i + 1 - start;
        let boundary = len >= FINE_MIN && (b == b'\n' || h >> (64 - FINE_MASK_BITS) == 0);
        if boundary || len >= FINE_MAX {
            out.push(len);
            start = i + 1;
            h = 0;
        }
    }
    if start < data.len() {
        out.push(data.len() - start);
    }
    out
}

/// The truncated hash naming a fine piece.
pub fn fine_hash(data: &[u8]) -> u16 {
    let h = blake3::hash(data);
    u16::from_le_bytes([h.as_bytes()[0], h.as_bytes()[1]])
}

/// Hashes of the fine pieces of `data`, packed little-endian.
pub fn fine_hashes(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut at = 0;
    for l in fine_cuts(data) {
        out.extend_from_slice(&fine_hash(&data[at..at + l]).to_le_bytes());
        at += l;
    }
    out
}

/// One old range's fine pieces as the client holds them: hash -> first
/// fine piece index within the range.
pub fn fine_map(hashes: &[u8]) -> HashMap<u16, u32> {
    let mut m = HashMap::with_capacity(hashes.len() / FINE_HASH_BYTES);
    for (i, h) in hashes.chunks_exact(FINE_HASH_BYTES).enumerate() {
        m.entry(u16::from_le_bytes([h[0], h[1]]))
            .or_insert(i as u32);
    }
    m
}

/// A step of a gap rebuilt from its old range's fine pieces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FineStep {
    /// `count` consecutive fine pieces of the range from `first`.
    Copy { first: u32, count: u32 },
    /// Bytes `start..end` of the gap, sent as they are.
    Literal { start: usize, end: usize },
}

/// Expresses `gap` as runs of its old range's fine pieces (`map` from
/// [`fine_map`], of `old_count` pieces) and literal spans. A 2-byte hash
/// alone would name a wrong piece now and then (about one gap in a hundred
/// on tokio, each costing the chunk another round), so a single matching
/// piece counts only where its place confirms it: at the start of the gap
/// as the range's first piece, or at its end as the range's last; runs of
/// two or more consecutive pieces are taken anywhere.
pub fn match_gap(gap: &[u8], map: &HashMap<u16, u32>, old_count: u32) -> Vec<FineStep> {
    // (old run (first, count) or none, new start, new end)
    type Run = (Option<(u32, u32)>, usize, usize);
    let mut runs: Vec<Run> = Vec::new();
    let mut at = 0usize;
    for l in fine_cuts(gap) {
        let hit = map.get(&fine_hash(&gap[at..at + l])).copied();
        match (hit, runs.last_mut()) {
            (Some(i), Some((Some((first, count)), _, end))) if *first + *count == i => {
                *count += 1;
                *end = at + l;
            }
            (Some(i), _) => runs.push((Some((i, 1)), at, at + l)),
            (None, _) => runs.push((None, at, at + l)),
        }
        at += l;
    }
    let mut steps: Vec<FineStep> = Vec::new();
    for (run, start, end) in runs {
        let confirmed = |&(first, count): &(u32, u32)| {
            count >= 2 || (start == 0 && first == 0) || (end == gap.len() && first + 1 == old_count)
        };
        match (run.filter(confirmed), steps.last_mut()) {
            (Some((first, count)), _) => steps.push(FineStep::Copy { first, count }),
            (None, Some(FineStep::Literal { end: e, .. })) => *e = end,
            (None, _) => steps.push(FineStep::Literal { start, end }),
        }
    }
    steps
}

/// Most old ranges one chunk may ask about.
pub const MAX_RANGES: usize = 256;
/// Most old bytes the ranges of one chunk may span (the server checks the
/// sum; the client stays under it by assuming every piece is as long as a
/// piece may be, `4 * avg`).
pub const MAX_RANGE_BYTES: u64 = 256 << 10;
/// Most fine pieces in one answer: every piece but the last of a range
/// holds at least [`FINE_MIN`] bytes.
pub const MAX_FINE_PIECES: usize = MAX_RANGE_BYTES as usize / FINE_MIN + MAX_RANGES;

/// A literal gap of a first-round delta worth a second round: the op that
/// holds it and the run of old pieces (first, count) it most likely
/// replaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gap {
    pub op: usize,
    pub first: u32,
    pub count: u32,
}

/// The old range each literal of `ops` most likely replaced: the pieces
/// between the copy runs around it (a gap at either end of the chunk takes
/// as many pieces as its length needs, plus one), within a budget of
/// [`MAX_RANGE_BYTES`] for pieces of up to `4 * avg` bytes. `keep(gap
/// bytes, old pieces)` says whether a gap is worth asking about.
pub fn gaps(
    ops: &[DeltaOp],
    basis: &BasisMap,
    mut keep: impl FnMut(&[u8], u32) -> bool,
) -> Vec<Gap> {
    let mut budget = MAX_RANGE_BYTES / (4 * basis.avg as u64);
    let mut out = Vec::new();
    let mut prev_end: Option<u32> = None;
    for (i, op) in ops.iter().enumerate() {
        match op {
            DeltaOp::Copy { first, count } => prev_end = Some(first.saturating_add(*count)),
            DeltaOp::Literal(g) => {
                let need = (g.len() as u64 / basis.avg as u64 + 1).min(u32::MAX as u64) as u32;
                let next = ops[i + 1..].iter().find_map(|o| match o {
                    DeltaOp::Copy { first, .. } => Some(*first),
                    _ => None,
                });
                let (a, b) = match (prev_end, next) {
                    (Some(a), Some(b)) => (a, b),
                    (Some(a), None) => (a, a.saturating_add(need).min(basis.pieces)),
                    (None, Some(b)) => (b.saturating_sub(need), b),
                    (None, None) => (0, need.min(basis.pieces)),
                };
                let count = b.saturating_sub(a);
                if count == 0 || count as u64 > budget || out.len() == MAX_RANGES {
                    continue;
                }
                if keep(g, count) {
                    budget -= count as u64;
                    out.push(Gap {
                        op: i,
                        first: a,
                        count,
                    });
                }
            }
            DeltaOp::Fine { .. } => {}
        }
    }
    out
}

/// Why a second-round answer is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadFine {
    #[error("fine hashes for {got} ranges, {asked} asked")]
    Ranges { got: usize, asked: usize },
    #[error(
        "fine hashes of {0} bytes do not match the counts (or exceed {MAX_FINE_PIECES} pieces)"
    )]
    Hashes(usize),
}

/// Rewrites the literals of `gaps` in `ops` as runs of fine pieces where
/// the server's answer (`counts` pieces per range, their hashes packed in
/// `hashes`) names them. Checked before anything is allocated.
pub fn refine(
    ops: Vec<DeltaOp>,
    gaps: &[Gap],
    counts: &[u32],
    hashes: &[u8],
) -> Result<Vec<DeltaOp>, BadFine> {
    if counts.len() != gaps.len() {
        return Err(BadFine::Ranges {
            got: counts.len(),
            asked: gaps.len(),
        });
    }
    let total = counts.iter().map(|&c| c as u64).sum::<u64>();
    if total > MAX_FINE_PIECES as u64 || total * FINE_HASH_BYTES as u64 != hashes.len() as u64 {
        return Err(BadFine::Hashes(hashes.len()));
    }
    let mut steps: HashMap<usize, (u32, &[u8])> = HashMap::new();
    let (mut base, mut at) = (0u32, 0usize);
    for (g, &c) in gaps.iter().zip(counts) {
        let len = c as usize * FINE_HASH_BYTES;
        steps.insert(g.op, (base, &hashes[at..at + len]));
        base += c;
        at += len;
    }
    let mut out = Vec::with_capacity(ops.len());
    for (i, op) in ops.into_iter().enumerate() {
        match (op, steps.get(&i)) {
            (DeltaOp::Literal(g), Some(&(base, hs))) => {
                let old_count = (hs.len() / FINE_HASH_BYTES) as u32;
                for st in match_gap(&g, &fine_map(hs), old_count) {
                    out.push(match st {
                        FineStep::Copy { first, count } => DeltaOp::Fine {
                            first: base + first,
                            count,
                        },
                        FineStep::Literal { start, end } => {
                            DeltaOp::Literal(g[start..end].to_vec())
                        }
                    });
                }
            }
            (op, _) => out.push(op),
        }
    }
    Ok(out)
}

/// Fine pieces of the old `ranges` (each a (offset, bytes) pair), as the
/// server answers: places (offset, len) numbered in order across ranges,
/// pieces per range, and their hashes packed.
pub fn answer(ranges: &[(u64, &[u8])]) -> (Vec<(u64, u32)>, Vec<u32>, Vec<u8>) {
    let (mut places, mut counts, mut hashes) = (Vec::new(), Vec::new(), Vec::new());
    for &(off, data) in ranges {
        let cuts = fine_cuts(data);
        counts.push(cuts.len() as u32);
        let mut at = 0usize;
        for l in cuts {
            places.push((off + at as u64, l as u32));
            hashes.extend_from_slice(&fine_hash(&data[at..at + l]).to_le_bytes());
            at += l;
        }
    }
    (places, counts, hashes)
}

/// Decides which gaps are worth a second round. Literals travel in the
/// connection's zstd stream, where a gap that repeats earlier literals (a
/// markup change made on every page) costs almost nothing; fine hashes are
/// random and cost [`FINE_HASH_BYTES`] per old line. So the client runs
/// its gaps through a zstd stream of its own (level 1, 1 MiB window) and
/// asks when the gap compresses less than 5 times and half its compressed
/// size exceeds the hashes of its old range (counted as one piece per 32
/// old bytes) plus 4 bytes of request (chosen with `examples/round_lab.rs`
/// on tokio, libc and the Rust docs, and checked with `bench/run`: see
/// bench/RESULTS.md).
pub struct Estimator {
    cctx: zstd::zstd_safe::CCtx<'static>,
    /// Percent of a gap's compressed size counted as saved.
    pct: u64,
    /// Gaps that compress more than this many times are not asked about.
    max_ratio: u64,
}

impl Default for Estimator {
    fn default() -> Self {
        Estimator::new(1, 20, 50, 5)
    }
}

impl Estimator {
    /// An estimator compressing at `level` with a window of 2^`wlog`,
    /// counting `pct` % of a gap's compressed size as saved, and never
    /// asking about gaps that compress more than `max_ratio` times (the
    /// client uses 1, 20, 50, 5; `examples/round_lab.rs` tries others).
    pub fn new(level: i32, wlog: u32, pct: u64, max_ratio: u64) -> Self {
        use zstd::zstd_safe::CParameter;
        let mut cctx = zstd::zstd_safe::CCtx::create();
        let _ = cctx.set_parameter(CParameter::CompressionLevel(level));
        let _ = cctx.set_parameter(CParameter::WindowLog(wlog));
        Estimator {
            cctx,
            pct,
            max_ratio,
        }
    }

    /// Whether `gap`, against an old range of `pieces` pieces of average
    /// `avg`, is worth asking about; the gap joins the estimator's history.
    pub fn worth_asking(&mut self, gap: &[u8], pieces: u32, avg: u32) -> bool {
        let est = self.compressed(gap) as u64;
        let range = pieces as u64 * avg as u64;
        est * self.max_ratio >= gap.len() as u64
            && est * self.pct > range * FINE_HASH_BYTES as u64 / 32 * 100 + 400
    }

    /// The compressed size of `data` after everything before it.
    fn compressed(&mut self, data: &[u8]) -> usize {
        use zstd::zstd_safe::{zstd_sys::ZSTD_EndDirective, InBuffer, OutBuffer};
        let mut out = vec![0u8; zstd::zstd_safe::compress_bound(data.len()) + 64];
        let mut ob = OutBuffer::around(&mut out[..]);
        let mut ib = InBuffer::around(data);
        loop {
            match self
                .cctx
                .compress_stream2(&mut ob, &mut ib, ZSTD_EndDirective::ZSTD_e_flush)
            {
                Ok(0) => return ob.pos(),
                Ok(_) if ob.pos() < ob.capacity() => {}
                // Out of room or failed: count the gap as incompressible.
                _ => return data.len(),
            }
        }
    }
}

#[cfg(test)]
mod tests;

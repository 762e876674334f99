//! Small-file deltas against the replica's old version.
//!
//! A small file that changed a little is usually one chunk, so chunk-level
//! dedup resends all of it. Instead, the server describes its old version
//! as a list of fine content-defined pieces, named by 24-bit truncated
//! BLAKE3 hashes ([`ServerMsg::Basis`]); the client sends each asked chunk
//! as runs of those pieces plus literal bytes ([`ClientMsg::ChunkDelta`]).
//! The server rebuilds the chunk from its old file and checks the chunk's
//! full BLAKE3 hash, so a truncated-hash collision can never corrupt a
//! file: the chunk is then asked again whole.
//!
//! Piece size follows the old version's size ([`piece_avg`]): about 256 B
//! pieces for files up to 128 KiB, up to 2 KiB for larger ones, so a
//! source file with a few edited lines costs a few hundred literal bytes
//! per edit while the basis stays near 1 % of the old file (measured on two
//! crate upgrades and the Rust docs, see bench/RESULTS.md). Literals travel
//! in the connection's zstd stream, whose context spans files (the lab in
//! `examples/delta_lab.rs` found that per-file zstd dictionaries of the
//! copied text lose that context and send more).
//!
//! A second, scoped round ([`fine`]) shrinks the literals to the changed
//! lines: the client names the old pieces each literal gap replaced, the
//! server answers with 2-byte hashes of just those pieces' lines, and the
//! final delta copies the lines it finds ([`DeltaOp::Fine`]).
//!
//! [`ServerMsg::Basis`]: crate::protocol::ServerMsg::Basis
//! [`ClientMsg::ChunkDelta`]: crate::protocol::ClientMsg::ChunkDelta

use serde::{Deserialize, Serialize};
use std::collections::HashMap;

pub mod fine;

/// Smallest and largest average piece size a basis may use.
pub const AVG_MIN: u32 = 256;
pub const AVG_MAX: u32 = 2048;
/// Old versions in this size range get a basis.
pub const BASIS_MIN_FILE: u64 = 1024;
pub const BASIS_MAX_FILE: u64 = 4 << 20;
/// Most pieces in one basis (the smallest pieces are a quarter of the
/// smallest average).
pub const MAX_PIECES: usize = (BASIS_MAX_FILE / (AVG_MIN / 4) as u64) as usize + 1;
/// Bytes of each piece's hash in a basis. Each new piece not in the old
/// version matches a wrong one with odds of pieces / 2^24 (1 in 170,000 for
/// a 25 KB basis of 100 pieces); the server's check of the rebuilt chunk
/// catches it and asks for the chunk whole, so a collision costs bytes,
/// never content (the property tests meet some on random text).
pub const HASH_BYTES: usize = 3;

/// The average piece size for an old version of `size` bytes: a power of
/// two near `size / 512`, within [`AVG_MIN`]..=[`AVG_MAX`].
pub fn piece_avg(size: u64) -> u32 {
    let want = (size / 512).max(1).next_power_of_two();
    want.clamp(AVG_MIN as u64, AVG_MAX as u64) as u32
}

/// Whether a peer's piece size is one this side cuts with.
pub fn valid_avg(avg: u32) -> bool {
    avg.is_power_of_two() && (AVG_MIN..=AVG_MAX).contains(&avg)
}

/// One step of rebuilding a chunk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum DeltaOp {
    /// `count` consecutive basis pieces from piece `first`.
    Copy { first: u32, count: u32 },
    /// These bytes.
    Literal(#[serde(with = "serde_bytes")] Vec<u8>),
    /// `count` consecutive fine pieces from piece `first` of the chunk's
    /// second round ([`fine`]: the old ranges the client asked about, their
    /// fine pieces numbered in order across ranges).
    Fine { first: u32, count: u32 },
}

/// The truncated hash naming a piece ([`HASH_BYTES`] bytes of its BLAKE3).
pub fn piece_hash(data: &[u8]) -> u32 {
    let h = blake3::hash(data);
    let mut b = [0u8; 4];
    b[..HASH_BYTES].copy_from_slice(&h.as_bytes()[..HASH_BYTES]);
    u32::from_le_bytes(b)
}

/// Fine pieces of `data` as (offset, len), cut with average `avg`.
pub fn pieces(data: &[u8], avg: u32) -> Vec<(usize, usize)> {
    fastcdc::v2020::FastCDC::new(data, avg / 4, avg, avg * 4)
        .map(|c| (c.offset, c.length))
        .collect()
}

/// Describes `data` (the replica's old version) as pieces of average
/// `avg`: offsets and lengths to keep, and the hashes to send, packed
/// ([`HASH_BYTES`] little-endian bytes each).
pub fn basis_of(data: &[u8], avg: u32) -> (Vec<(u64, u32)>, Vec<u8>) {
    let ps = pieces(data, avg);
    let places = ps.iter().map(|&(o, l)| (o as u64, l as u32)).collect();
    let mut hashes = Vec::with_capacity(ps.len() * HASH_BYTES);
    for &(o, l) in &ps {
        hashes.extend_from_slice(&piece_hash(&data[o..o + l]).to_le_bytes()[..HASH_BYTES]);
    }
    (places, hashes)
}

/// A basis as the client holds it: piece hash -> first piece index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BasisMap {
    pub avg: u32,
    /// How many pieces the old version has.
    pub pieces: u32,
    pub index: HashMap<u32, u32>,
}

/// Why a peer's basis is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadBasis {
    #[error("basis piece size {0} is not a power of two in 256..=2048")]
    Avg(u32),
    #[error("basis hashes of {0} bytes (not a whole number of hashes, or more than {MAX_PIECES})")]
    Hashes(usize),
}

impl BasisMap {
    /// Reads a peer's basis, checked before anything is allocated.
    pub fn parse(avg: u32, hashes: &[u8]) -> Result<Self, BadBasis> {
        if !valid_avg(avg) {
            return Err(BadBasis::Avg(avg));
        }
        let n = hashes.len() / HASH_BYTES;
        if hashes.len() % HASH_BYTES != 0 || n > MAX_PIECES {
            return Err(BadBasis::Hashes(hashes.len()));
        }
        let mut index = HashMap::with_capacity(n);
        for (i, h) in hashes.chunks_exact(HASH_BYTES).enumerate() {
            let mut b = [0u8; 4];
            b[..HASH_BYTES].copy_from_slice(h);
            index.entry(u32::from_le_bytes(b)).or_insert(i as u32);
        }
        Ok(BasisMap {
            avg,
            pieces: n as u32,
            index,
        })
    }
}

/// Expresses `data` against a basis; `None` when that saves too little.
/// Consecutive basis pieces become one [`DeltaOp::Copy`].
pub fn make_delta(data: &[u8], basis: &BasisMap) -> Option<Vec<DeltaOp>> {
    let mut ops: Vec<DeltaOp> = Vec::new();
    let mut literal = 0usize;
    for (o, l) in pieces(data, basis.avg) {
        let piece = &data[o..o + l];
        match (basis.index.get(&piece_hash(piece)), ops.last_mut()) {
            (Some(&i), Some(DeltaOp::Copy { first, count })) if *first + *count == i => {
                *count += 1;
            }
            (Some(&i), _) => ops.push(DeltaOp::Copy { first: i, count: 1 }),
            (None, Some(DeltaOp::Literal(v))) => {
                literal += l;
                v.extend_from_slice(piece);
            }
            (None, _) => {
                literal += l;
                ops.push(DeltaOp::Literal(piece.to_vec()));
            }
        }
    }
    let copies = ops.len()
        - ops
            .iter()
            .filter(|o| matches!(o, DeltaOp::Literal(_)))
            .count();
    (copies > 0 && literal + ops.len() * 8 < data.len() * 9 / 10).then_some(ops)
}

/// Bytes a delta carries literally (what it costs on the wire, roughly).
pub fn literal_bytes(ops: &[DeltaOp]) -> u64 {
    ops.iter()
        .map(|o| match o {
            DeltaOp::Literal(b) => b.len() as u64,
            DeltaOp::Copy { .. } | DeltaOp::Fine { .. } => 0,
        })
        .sum()
}

/// Why a delta cannot be applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadDelta {
    #[error("basis pieces {0}+{1} do not exist")]
    NoPiece(u32, u32),
    #[error("delta rebuilds more bytes than the chunk holds")]
    TooLong,
    #[error("the basis could not be read")]
    Unreadable,
}

/// Where an old piece lies: (offset, len).
pub type Place = (u64, u32);

/// Rebuilds a chunk of at most `max_len` bytes from a basis whose pieces
/// sit at `places` (contiguous, as [`basis_of`] cuts them) and, for
/// [`DeltaOp::Fine`], the second round's fine pieces at `fine`; `read(offset,
/// len)` reads the old version. Every length is checked before anything
/// is read or allocated.
pub fn apply_delta(
    ops: &[DeltaOp],
    max_len: usize,
    (places, fine): (&[Place], &[Place]),
    mut read: impl FnMut(u64, usize) -> Option<Vec<u8>>,
) -> Result<Vec<u8>, BadDelta> {
    let mut out = Vec::new();
    for op in ops {
        let (table, first, count) = match op {
            DeltaOp::Literal(b) => {
                if out.len() + b.len() > max_len {
                    return Err(BadDelta::TooLong);
                }
                out.extend_from_slice(b);
                continue;
            }
            DeltaOp::Copy { first, count } => (places, *first, *count),
            DeltaOp::Fine { first, count } => (fine, *first, *count),
        };
        let (off, len) = run_span(table, first, count).ok_or(BadDelta::NoPiece(first, count))?;
        if out.len() + len > max_len {
            return Err(BadDelta::TooLong);
        }
        let data = read(off, len).ok_or(BadDelta::Unreadable)?;
        if data.len() != len {
            return Err(BadDelta::Unreadable);
        }
        out.extend_from_slice(&data);
    }
    Ok(out)
}

/// Where a run of `count` pieces from `first` lies in the old version:
/// `None` unless the run exists, is not empty and its pieces follow each
/// other without a hole.
pub fn run_span(table: &[(u64, u32)], first: u32, count: u32) -> Option<(u64, usize)> {
    let end = first.checked_add(count).filter(|_| count > 0)?;
    let run = table.get(first as usize..end as usize)?;
    let off = run[0].0;
    let mut at = off;
    for &(o, l) in run {
        if o != at {
            return None;
        }
        at = o.checked_add(l as u64)?;
    }
    Some((off, usize::try_from(at - off).ok()?))
}

#[cfg(test)]
mod tests;

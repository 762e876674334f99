//! Small-file deltas against the replica's old version.
//!
//! A small file that changed a little is usually one chunk, so chunk-level
//! dedup resends all of it. Instead, the server describes its old version
//! as a list of fine content-defined pieces (about 2 KiB each), named by
//! 32-bit truncated BLAKE3 hashes ([`ServerMsg::Basis`]); the client sends
//! each asked chunk as copies of those pieces plus literal bytes
//! ([`ClientMsg::ChunkDelta`]). The server rebuilds the chunk from its old
//! file and checks the chunk's full BLAKE3 hash, so a truncated-hash
//! collision can never corrupt a file: the chunk is then asked again whole.
//!
//! [`ServerMsg::Basis`]: crate::protocol::ServerMsg::Basis
//! [`ClientMsg::ChunkDelta`]: crate::protocol::ClientMsg::ChunkDelta

use serde::{Deserialize, Serialize};

pub const FINE_MIN: u32 = 512;
pub const FINE_AVG: u32 = 2048;
pub const FINE_MAX: u32 = 8192;
/// Old versions in this size range get a basis.
pub const BASIS_MIN_FILE: u64 = 1024;
pub const BASIS_MAX_FILE: u64 = 4 << 20;
/// Most pieces in one basis.
pub const MAX_PIECES: usize = (BASIS_MAX_FILE / FINE_MIN as u64) as usize + 1;

/// One step of rebuilding a chunk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum DeltaOp {
    /// The basis piece with this index.
    Copy(u32),
    /// These bytes.
    Literal(#[serde(with = "serde_bytes")] Vec<u8>),
}

/// The truncated hash naming a piece.
pub fn piece_hash(data: &[u8]) -> u32 {
    let h = blake3::hash(data);
    u32::from_le_bytes(h.as_bytes()[..4].try_into().unwrap())
}

/// Fine pieces of `data` as (offset, len).
pub fn pieces(data: &[u8]) -> Vec<(usize, usize)> {
    fastcdc::v2020::FastCDC::new(data, FINE_MIN, FINE_AVG, FINE_MAX)
        .map(|c| (c.offset, c.length))
        .collect()
}

/// Describes `data` (the replica's old version) as pieces: offsets and
/// lengths to keep, hashes to send.
pub fn basis_of(data: &[u8]) -> (Vec<(u64, u32)>, Vec<u32>) {
    let ps = pieces(data);
    let places = ps.iter().map(|&(o, l)| (o as u64, l as u32)).collect();
    let hashes = ps
        .iter()
        .map(|&(o, l)| piece_hash(&data[o..o + l]))
        .collect();
    (places, hashes)
}

/// Expresses `data` against a basis; `None` when that saves too little.
pub fn make_delta(
    data: &[u8],
    basis: &std::collections::HashMap<u32, u32>,
) -> Option<Vec<DeltaOp>> {
    let mut ops: Vec<DeltaOp> = Vec::new();
    let mut literal = 0usize;
    let mut copies = 0usize;
    for (o, l) in pieces(data) {
        let piece = &data[o..o + l];
        match basis.get(&piece_hash(piece)) {
            Some(&i) => {
                ops.push(DeltaOp::Copy(i));
                copies += 1;
            }
            None => {
                literal += l;
                if let Some(DeltaOp::Literal(v)) = ops.last_mut() {
                    v.extend_from_slice(piece);
                } else {
                    ops.push(DeltaOp::Literal(piece.to_vec()));
                }
            }
        }
    }
    (copies > 0 && literal + copies * 4 < data.len() * 9 / 10).then_some(ops)
}

/// Bytes a delta carries literally (what it costs on the wire, roughly).
pub fn literal_bytes(ops: &[DeltaOp]) -> u64 {
    ops.iter()
        .map(|o| match o {
            DeltaOp::Literal(b) => b.len() as u64,
            DeltaOp::Copy(_) => 0,
        })
        .sum()
}

/// Why a delta cannot be applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadDelta {
    #[error("basis piece {0} does not exist")]
    NoPiece(u32),
    #[error("delta rebuilds more bytes than the chunk holds")]
    TooLong,
}

/// Rebuilds a chunk of at most `max_len` bytes; `read` fetches basis piece `i`.
pub fn apply_delta(
    ops: &[DeltaOp],
    max_len: usize,
    mut read: impl FnMut(u32) -> Option<Vec<u8>>,
) -> Result<Vec<u8>, BadDelta> {
    let mut out = Vec::new();
    for op in ops {
        match op {
            DeltaOp::Copy(i) => out.extend(read(*i).ok_or(BadDelta::NoPiece(*i))?),
            DeltaOp::Literal(b) => out.extend_from_slice(b),
        }
        if out.len() > max_len {
            return Err(BadDelta::TooLong);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn small_edit_sends_little_and_rebuilds_exactly() {
        let old = text(40_000, 1);
        let mut new = old.clone();
        new.splice(100..110, b"VERSION 1.2.3".iter().copied());
        let (places, hashes) = basis_of(&old);
        let map = hashes
            .iter()
            .enumerate()
            .map(|(i, h)| (*h, i as u32))
            .collect();
        let ops = make_delta(&new, &map).expect("worth a delta");
        let literal = literal_bytes(&ops);
        assert!(literal < 10_000, "{literal} literal bytes");
        let rebuilt = apply_delta(&ops, new.len(), |i| {
            places
                .get(i as usize)
                .map(|&(o, l)| old[o as usize..o as usize + l as usize].to_vec())
        })
        .unwrap();
        assert_eq!(rebuilt, new);
    }

    #[test]
    fn unrelated_data_is_not_worth_a_delta() {
        let (_, hashes) = basis_of(&text(20_000, 1));
        let map = hashes
            .iter()
            .enumerate()
            .map(|(i, h)| (*h, i as u32))
            .collect();
        assert!(make_delta(&text(20_000, 2), &map).is_none());
    }

    #[test]
    fn lying_deltas_are_bounded() {
        let ops = vec![DeltaOp::Literal(vec![0; 10]), DeltaOp::Copy(7)];
        assert!(apply_delta(&ops, 5, |_| Some(vec![1])).is_err());
        assert!(apply_delta(&ops, 100, |_| None).is_err());
    }
}

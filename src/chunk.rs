//! Content-defined chunking and content ids.
//!
//! A file is a list of chunks cut by FastCDC (v2020, normalisation level 1)
//! and named by their BLAKE3 hash; the file itself is named by its chunk
//! list ([`file_id`]: a one-chunk file by its chunk's hash, which is the
//! BLAKE3 hash of its content; a longer list by a keyed BLAKE3 hash of the
//! chunks' hashes and lengths), so each byte is hashed once on each side:
//! checking every chunk checks the file. Chunk lists of large files are further cut into
//! content-defined *groups* (a boundary after each chunk whose hash, read as
//! a little-endian u32, is divisible by [`GROUP_AVG`]), so a peer can compare
//! a few group hashes instead of every chunk hash.
//!
//! The parameters below are part of the on-disk and on-wire format: changing
//! them means bumping [`CHUNKER_VERSION`] (the handshake refuses a mismatch and
//! the replica index is rebuilt).

use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::io::{self, Read};

mod ahead;
pub use ahead::digest_ahead;

/// Version of the chunking scheme (parameters, normalisation, grouping,
/// what names a file). 2: a file is named by its chunk list ([`file_id`]),
/// not by the hash of its content.
pub const CHUNKER_VERSION: u16 = 2;
pub const MIN_CHUNK: u32 = 4 * 1024;
pub const AVG_CHUNK: u32 = 16 * 1024;
pub const MAX_CHUNK: u32 = 64 * 1024;
/// Expected chunks per group.
pub const GROUP_AVG: u32 = 64;
/// Hard cap on chunks per group.
pub const GROUP_MAX: usize = 256;
/// Files with at most this many chunks send their chunk list inline.
pub const INLINE_CHUNKS: usize = 64;

/// How much is read and chunked at a time.
const READ_BLOCK: usize = 8 * 1024 * 1024;

/// A BLAKE3 content hash.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Hash(pub [u8; 32]);

impl Hash {
    pub fn of(data: &[u8]) -> Self {
        Hash(*blake3::hash(data).as_bytes())
    }

    pub fn short(&self) -> String {
        self.0[..6].iter().map(|b| format!("{b:02x}")).collect()
    }
}

impl std::fmt::Debug for Hash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Hash({})", self.short())
    }
}

/// One chunk of a file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkRef {
    pub hash: Hash,
    pub len: u32,
}

/// A run of consecutive chunks named by one hash.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupRef {
    pub hash: Hash,
    /// Number of chunks in the group.
    pub count: u32,
}

/// A file's content: its size, whole hash and chunk list.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Digest {
    pub size: u64,
    pub hash: Hash,
    pub chunks: Vec<ChunkRef>,
}

impl Digest {
    /// Byte offset of each chunk, plus the total at the end.
    pub fn offsets(&self) -> Vec<u64> {
        offsets(&self.chunks)
    }
}

/// Byte offset of each chunk, plus the total at the end.
pub fn offsets(chunks: &[ChunkRef]) -> Vec<u64> {
    let mut out = Vec::with_capacity(chunks.len() + 1);
    let mut at = 0u64;
    for c in chunks {
        out.push(at);
        at += c.len as u64;
    }
    out.push(at);
    out
}

/// Reads `r` to the end and returns its digest. Never holds more than a
/// few megabytes; chunk hashes are computed on all cores.
pub fn digest_reader<R: Read>(r: R) -> io::Result<Digest> {
    digest_reader_sized(r, READ_BLOCK as u64)
}

/// [`digest_reader`] for input of about `size_hint` bytes (a smaller
/// buffer for small files; the result does not depend on the hint).
pub fn digest_reader_sized<R: Read>(r: R, size_hint: u64) -> io::Result<Digest> {
    match digest_partly(r, size_hint, DigestState::default(), &|| false)? {
        Ok(d) => Ok(d),
        Err(_) => unreachable!("never asked to stop"),
    }
}

/// How far a digest got: the bytes consumed (always at a chunk boundary)
/// and the chunks so far. Reading resumes at `offset`.
#[derive(Clone, Default)]
pub struct DigestState {
    pub offset: u64,
    chunks: Vec<ChunkRef>,
}

/// A digest that can stop between blocks when `stop` says so, returning
/// its state, and resume from such a state: `r` must be positioned at
/// `state.offset`. The result equals [`digest_reader`]'s.
pub fn digest_partly<R: Read>(
    mut r: R,
    size_hint: u64,
    state: DigestState,
    stop: &dyn Fn() -> bool,
) -> io::Result<Result<Digest, DigestState>> {
    let cap = (size_hint.saturating_add(1)).clamp(MAX_CHUNK as u64 * 2, READ_BLOCK as u64) as usize;
    let mut buf = vec![0u8; cap];
    let mut filled = 0usize;
    let mut state = state;
    loop {
        let mut eof = false;
        while filled < buf.len() {
            let n = r.read(&mut buf[filled..])?;
            if n == 0 {
                eof = true;
                break;
            }
            filled += n;
        }
        if filled == 0 {
            break;
        }
        let consumed = state.take_block(&buf[..filled], eof);
        buf.copy_within(consumed..filled, 0);
        filled -= consumed;
        if eof && filled == 0 {
            break;
        }
        if stop() {
            // The unconsumed tail is read again on resume.
            return Ok(Err(state));
        }
    }
    Ok(Ok(state.finish()))
}

impl DigestState {
    /// Cuts `data` (what follows the bytes consumed so far) and hashes its
    /// chunks; returns how many bytes it consumed: whole chunks, the last
    /// (maybe truncated) one left for the next block unless `eof`.
    fn take_block(&mut self, data: &[u8], eof: bool) -> usize {
        let cuts = cut_points(data, eof);
        let consumed = cuts.last().map(|&(o, l)| o + l).unwrap_or(0);
        let data = &data[..consumed];
        let chunk = |&(o, l): &(usize, usize)| ChunkRef {
            hash: Hash::of(&data[o..o + l]),
            len: l as u32,
        };
        if consumed < PARALLEL_MIN {
            self.chunks.extend(cuts.iter().map(chunk));
        } else {
            self.chunks
                .extend(cuts.par_iter().map(chunk).collect::<Vec<_>>());
        }
        self.offset += consumed as u64;
        consumed
    }

    /// The digest of everything consumed.
    fn finish(self) -> Digest {
        Digest {
            size: self.offset,
            hash: file_id(&self.chunks),
            chunks: self.chunks,
        }
    }
}

/// Whether what `r` yields is exactly the content `chunks` describe: read
/// chunk by chunk and each chunk's hash checked (the file's id follows
/// from its chunk list, see [`file_id`]).
pub fn check_chunks<R: Read>(mut r: R, chunks: &[ChunkRef]) -> io::Result<bool> {
    let mut buf = vec![0u8; READ_BLOCK];
    let mut i = 0;
    while i < chunks.len() {
        // As many whole chunks as fit in the buffer, read and checked at once.
        let (mut end, mut len) = (i, 0usize);
        while end < chunks.len() && len + chunks[end].len as usize <= buf.len() {
            len += chunks[end].len as usize;
            end += 1;
        }
        r.read_exact(&mut buf[..len])?;
        let offs = offsets(&chunks[i..end]);
        let good = |k: usize| {
            let (a, b) = (offs[k] as usize, offs[k + 1] as usize);
            Hash::of(&buf[a..b]) == chunks[i + k].hash
        };
        let all = if len >= PARALLEL_MIN {
            (0..end - i).into_par_iter().all(good)
        } else {
            (0..end - i).all(good)
        };
        if !all {
            return Ok(false);
        }
        i = end;
    }
    // Nothing beyond the last chunk.
    Ok(r.read(&mut [0u8; 1])? == 0)
}

/// The id naming a file's content, from its chunk list: the empty file's
/// is the BLAKE3 hash of nothing, a one-chunk file's is its chunk's hash
/// (the BLAKE3 hash of its content), a longer list's is BLAKE3 in key
/// derivation mode (so it never equals a plain content hash) over each
/// chunk's hash and length (u32 little-endian).
pub fn file_id(chunks: &[ChunkRef]) -> Hash {
    match chunks {
        [] => Hash::of(&[]),
        [only] => only.hash,
        _ => {
            let mut h = blake3::Hasher::new_derive_key(FILE_ID_CONTEXT);
            for c in chunks {
                h.update(&c.hash.0);
                h.update(&c.len.to_le_bytes());
            }
            Hash(*h.finalize().as_bytes())
        }
    }
}

/// The key-derivation context of [`file_id`] (part of chunking scheme 2).
const FILE_ID_CONTEXT: &str = "replica 2026-12-02 file id from its chunk list";

/// Below this many bytes, hashing on one thread beats handing work to
/// the pool (waking a worker costs more than hashing a few pages).
const PARALLEL_MIN: usize = 256 * 1024;

/// Digest of an in-memory buffer (same result as [`digest_reader`]).
pub fn digest_bytes(data: &[u8]) -> Digest {
    let cuts = cut_points(data, true);
    let chunk = |&(o, l): &(usize, usize)| ChunkRef {
        hash: Hash::of(&data[o..o + l]),
        len: l as u32,
    };
    let chunks: Vec<ChunkRef> = if data.len() < PARALLEL_MIN {
        cuts.iter().map(chunk).collect()
    } else {
        cuts.par_iter().map(chunk).collect()
    };
    Digest {
        size: data.len() as u64,
        hash: file_id(&chunks),
        chunks,
    }
}

/// Chunk boundaries in `data` as (offset, len). Unless `eof`, the last
/// (possibly truncated) chunk is left out, to be cut again with more data.
/// Large buffers are cut on all cores ([`cut_parallel`]); the result is
/// the same.
fn cut_points(data: &[u8], eof: bool) -> Vec<(usize, usize)> {
    let segments = (data.len() / CUT_SEGMENT_MIN).min(rayon::current_num_threads());
    let mut cuts = if segments >= 2 {
        cut_parallel(data, segments)
    } else {
        cut_sequential(data)
    };
    if !eof {
        cuts.pop();
    }
    cuts
}

/// Smallest segment worth cutting on a thread of its own.
const CUT_SEGMENT_MIN: usize = 1 << 20;

/// One FastCDC pass over `data`, chunk after chunk.
fn cut_sequential(data: &[u8]) -> Vec<(usize, usize)> {
    fastcdc::v2020::FastCDC::new(data, MIN_CHUNK, AVG_CHUNK, MAX_CHUNK)
        .map(|c| (c.offset, c.length))
        .collect()
}

/// The same cuts as [`cut_sequential`], computed in `n` segments at once.
/// Where a chunk ends depends only on the bytes from its start (at most
/// [`MAX_CHUNK`] of them), so each segment but the first is cut from its
/// own start, speculatively, over its bytes plus [`MAX_CHUNK`] more (every
/// cut starting inside the segment is then exact for that start). Then,
/// in order, the true sequence is carried from the previous segment: cut
/// chunk by chunk until it reaches a start the segment found too, from
/// where the segment's cuts are the true ones (content-defined cuts fall
/// in step within a few chunks); a segment that never falls in step (a
/// run of zeros cut at [`MAX_CHUNK`] from another origin) is cut through.
fn cut_parallel(data: &[u8], n: usize) -> Vec<(usize, usize)> {
    let bounds: Vec<usize> = (0..=n).map(|k| data.len() * k / n).collect();
    let spec: Vec<Vec<(usize, usize)>> = (0..n)
        .into_par_iter()
        .map(|k| {
            let (start, next) = (bounds[k], bounds[k + 1]);
            let end = (next + MAX_CHUNK as usize).min(data.len());
            cut_sequential(&data[start..end])
                .into_iter()
                .map(|(o, l)| (start + o, l))
                .take_while(|&(o, _)| o < next)
                .collect()
        })
        .collect();
    let mut spec = spec.into_iter();
    let mut out = spec.next().unwrap_or_default();
    for (k, cuts) in spec.enumerate() {
        let seg_end = bounds[k + 2];
        let mut pos = out.last().map_or(0, |&(o, l)| o + l);
        while pos < seg_end {
            if let Ok(i) = cuts.binary_search_by_key(&pos, |&(o, _)| o) {
                out.extend_from_slice(&cuts[i..]);
                break;
            }
            let end = (pos + MAX_CHUNK as usize).min(data.len());
            let len = cut_sequential(&data[pos..end])
                .first()
                .map_or(end - pos, |&(_, l)| l);
            out.push((pos, len));
            pos += len;
        }
    }
    out
}

/// Cuts a chunk list into groups.
pub fn groups(chunks: &[ChunkRef]) -> Vec<GroupRef> {
    let mut out = Vec::new();
    let mut start = 0;
    for (i, c) in chunks.iter().enumerate() {
        let n = i + 1 - start;
        let boundary = u32::from_le_bytes(c.hash.0[..4].try_into().unwrap()) % GROUP_AVG == 0;
        if boundary || n >= GROUP_MAX || i + 1 == chunks.len() {
            out.push(GroupRef {
                hash: group_hash(&chunks[start..=i]),
                count: n as u32,
            });
            start = i + 1;
        }
    }
    out
}

/// The hash naming a run of chunks.
pub fn group_hash(chunks: &[ChunkRef]) -> Hash {
    let mut h = blake3::Hasher::new();
    for c in chunks {
        h.update(&c.hash.0);
        h.update(&c.len.to_le_bytes());
    }
    Hash(*h.finalize().as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic pseudo-random bytes (xorshift), so tests need no files.
    pub fn noise(len: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect()
    }

    #[test]
    fn chunks_cover_the_file_and_hash_matches() {
        let data = noise(3 * READ_BLOCK + 12345, 7);
        let d = digest_bytes(&data);
        assert_eq!(d.size, data.len() as u64);
        assert_eq!(d.hash, file_id(&d.chunks));
        let offs = d.offsets();
        assert_eq!(*offs.last().unwrap(), data.len() as u64);
        for (i, c) in d.chunks.iter().enumerate() {
            let (o, l) = (offs[i] as usize, c.len as usize);
            assert_eq!(c.hash, Hash::of(&data[o..o + l]));
            assert!(l <= MAX_CHUNK as usize);
        }
    }

    #[test]
    fn streaming_cut_equals_one_shot_cut() {
        let data = noise(READ_BLOCK * 2 + 999, 3);
        let streamed = digest_bytes(&data)
            .chunks
            .iter()
            .map(|c| c.len as usize)
            .collect::<Vec<_>>();
        let one_shot = cut_points(&data, true)
            .iter()
            .map(|c| c.1)
            .collect::<Vec<_>>();
        assert_eq!(streamed, one_shot);
    }

    #[test]
    fn insertion_changes_only_nearby_chunks() {
        let data = noise(2_000_000, 11);
        let mut edited = b"sixteen bytes!!!".to_vec();
        edited.extend_from_slice(&data);
        let a = digest_bytes(&data).chunks;
        let b = digest_bytes(&edited).chunks;
        let known: std::collections::HashSet<_> = a.iter().map(|c| c.hash).collect();
        let new = b.iter().filter(|c| !known.contains(&c.hash)).count();
        assert!(new <= 2, "{new} new chunks after a 16-byte insert");
        let ga = groups(&a);
        let gb = groups(&b);
        let kg: std::collections::HashSet<_> = ga.iter().map(|g| g.hash).collect();
        assert!(gb.iter().filter(|g| !kg.contains(&g.hash)).count() <= 2);
    }

    #[test]
    fn groups_cover_all_chunks() {
        let d = digest_bytes(&noise(5_000_000, 5));
        let g = groups(&d.chunks);
        assert_eq!(
            g.iter().map(|g| g.count as usize).sum::<usize>(),
            d.chunks.len()
        );
        assert!(g.iter().all(|g| g.count as usize <= GROUP_MAX));
    }

    /// Cutting in parallel segments gives exactly the sequential cuts: on
    /// noise (segments fall in step), on zeros and on a repeated pattern
    /// (they may never), with segments of every size.
    #[test]
    fn parallel_cuts_equal_sequential_cuts() {
        let mut inputs = vec![noise(9_000_000, 21), vec![0u8; 5_000_000]];
        let mut mixed = noise(3_000_000, 22);
        mixed.extend(vec![0u8; 700_000]);
        mixed.extend(b"abcdefgh".repeat(200_000));
        mixed.extend(noise(1_500_000, 23));
        inputs.push(mixed);
        for data in &inputs {
            let want = cut_sequential(data);
            for n in [2, 3, 4, 7, 16] {
                assert_eq!(cut_parallel(data, n), want, "len {} n {n}", data.len());
            }
            for eof in [true, false] {
                let mut w = want.clone();
                if !eof {
                    w.pop();
                }
                assert_eq!(cut_points(data, eof), w);
            }
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(24))]
        /// Any input, any number of segments (noise with a run of zeros
        /// somewhere): the parallel cuts are the sequential ones.
        #[test]
        fn parallel_cuts_match_on_any_input(
            len in 0usize..3_000_000,
            seed in 1u64..u64::MAX,
            n in 2usize..9,
            zeros_at in 0usize..3_000_000,
            zeros in 0usize..400_000,
        ) {
            let mut data = noise(len, seed);
            let a = zeros_at.min(data.len());
            let b = (a + zeros).min(data.len());
            data[a..b].fill(0);
            proptest::prop_assert_eq!(cut_parallel(&data, n), cut_sequential(&data));
        }
    }

    /// Pins the chunking format: if this changes, CHUNKER_VERSION must too.
    #[test]
    fn chunk_boundaries_are_pinned() {
        let d = digest_bytes(&noise(200_000, 42));
        let lens: Vec<u32> = d.chunks.iter().map(|c| c.len).collect();
        assert_eq!(
            lens, PINNED_LENS,
            "chunker output changed: bump CHUNKER_VERSION"
        );
    }

    const PINNED_LENS: &[u32] = &[
        12941, 10627, 9460, 19780, 17283, 18842, 35064, 16949, 14127, 13692, 31235,
    ];

    /// The in-memory path and the streaming path agree, on both sides of
    /// the one-thread/parallel threshold and of the streaming block.
    #[test]
    fn bytes_and_reader_agree() {
        for (len, seed) in [
            (0, 1),
            (1, 2),
            (4095, 3),
            (70_000, 4),
            (300_000, 5),
            (9_000_000, 6),
        ] {
            let data = noise(len, seed);
            let a = digest_bytes(&data);
            let b = digest_reader(&data[..]).unwrap();
            assert_eq!(a, b, "len {len}");
            assert_eq!(a.hash, file_id(&a.chunks), "len {len}");
        }
    }

    /// Stopping after every block and resuming from the state gives the
    /// same digest as one go.
    #[test]
    fn digest_resumes_where_it_stopped() {
        let data = noise(3 * READ_BLOCK + 12_345, 9);
        let whole = digest_bytes(&data);
        let mut state = DigestState::default();
        let mut stops = 0;
        let d = loop {
            let at = state.offset as usize;
            match digest_partly(&data[at..], data.len() as u64, state, &|| true).unwrap() {
                Ok(d) => break d,
                Err(s) => {
                    assert!(s.offset as usize > at, "progress every time");
                    stops += 1;
                    state = s;
                }
            }
        };
        assert!(stops >= 3, "{stops}");
        assert_eq!(d, whole);
    }

    /// A one-chunk file is named by its content's hash (as a chunk of any
    /// other file holding the same bytes is); a longer list by a hash no
    /// content hash can equal: not the plain hash of the list's bytes, not
    /// its group hash.
    #[test]
    fn file_ids_follow_the_chunk_list() {
        let small = noise(3_000, 1);
        let d = digest_bytes(&small);
        assert_eq!(d.chunks.len(), 1);
        assert_eq!(d.hash, Hash::of(&small));
        let big = digest_bytes(&noise(500_000, 2));
        assert!(big.chunks.len() > 1);
        let mut list = Vec::new();
        for c in &big.chunks {
            list.extend_from_slice(&c.hash.0);
            list.extend_from_slice(&c.len.to_le_bytes());
        }
        assert_ne!(big.hash, Hash::of(&list));
        assert_ne!(big.hash, group_hash(&big.chunks));
        let mut other = big.chunks.clone();
        other.swap(0, 1);
        assert_ne!(file_id(&other), big.hash);
    }

    #[test]
    fn checking_chunks_finds_any_difference() {
        let data = noise(READ_BLOCK + 300_000, 8);
        let d = digest_bytes(&data);
        assert!(check_chunks(&data[..], &d.chunks).unwrap());
        let mut flipped = data.clone();
        flipped[READ_BLOCK + 7] ^= 1;
        assert!(!check_chunks(&flipped[..], &d.chunks).unwrap());
        let mut longer = data.clone();
        longer.push(0);
        assert!(!check_chunks(&longer[..], &d.chunks).unwrap());
        assert!(check_chunks(&data[..data.len() - 1], &d.chunks).is_err());
        assert!(check_chunks(&b""[..], &[]).unwrap());
    }

    #[test]
    fn empty_file() {
        let d = digest_bytes(&[]);
        assert_eq!(d.size, 0);
        assert!(d.chunks.is_empty());
        assert_eq!(d.hash, Hash::of(&[]));
    }
}

//! What an index that was empty when it was opened can hold: every key
//! written since, in a Bloom filter. A lookup whose key the filter has
//! never seen cannot be in the database, so it skips the B-tree read (a
//! first copy looks up every chunk and whole-file hash of every file, and
//! nearly all of them are new). The filter answers "maybe" for every key
//! inserted (no false negatives), and for a few others, which then read
//! the database as before: lookups stay exact.
//!
//! It grows in layers (each twice the last), so it needs no size up front:
//! about 10 bits per key, ~1.2 MB per million keys, up to [`MAX_BYTES`]
//! (about 6.7M keys, a first copy of ~2M files); past that it is dropped
//! and every lookup reads the database again, so memory stays flat with
//! the tree (issue 18).

use crate::chunk::Hash;
use std::hash::{Hash as _, Hasher};

/// Bits per key a layer is sized for.
const BITS_PER_KEY: usize = 10;
/// Probes per key (near the best for 10 bits per key: ~1 % false hits).
const PROBES: u64 = 7;
/// Keys the first layer holds (16 KiB of bits).
const FIRST_KEYS: usize = 1 << 14;
/// The most filter held; a layer that would pass it ends the filter.
pub(super) const MAX_BYTES: usize = 8 << 20;

/// Which table a key belongs to (the same hash in two tables is two keys).
#[derive(Clone, Copy)]
pub(super) enum Table {
    Files,
    Chunks,
    Whole,
    Groups,
}

/// A key's two base hashes; the probes are `a + i * b`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Probe {
    a: u64,
    b: u64,
}

impl Probe {
    /// A content hash's key in `table` (BLAKE3 output: its bytes are the
    /// hash; a peer that picks hashes only makes lookups read the database).
    pub fn of_hash(table: Table, h: &Hash) -> Probe {
        let word = |i: usize| u64::from_le_bytes(h.0[i..i + 8].try_into().expect("8 bytes"));
        let salt = (table as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        Probe {
            a: word(0) ^ salt,
            b: word(8) | 1,
        }
    }

    /// A file path's key.
    pub fn of_path(path: &str) -> Probe {
        let mut h1 = std::collections::hash_map::DefaultHasher::new();
        path.hash(&mut h1);
        let mut h2 = std::collections::hash_map::DefaultHasher::new();
        (0x5eed_u16, path).hash(&mut h2);
        let salt = (Table::Files as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        Probe {
            a: h1.finish() ^ salt,
            b: h2.finish() | 1,
        }
    }
}

struct Layer {
    bits: Vec<u64>,
    keys: usize,
    cap: usize,
}

impl Layer {
    fn new(cap: usize) -> Layer {
        let words = (cap * BITS_PER_KEY).div_ceil(64);
        Layer {
            bits: vec![0; words],
            keys: 0,
            cap,
        }
    }

    /// Probe `i` of `p`: a word and a bit in it.
    fn probe(&self, p: Probe, i: u64) -> (usize, u64) {
        let bit = p.a.wrapping_add(i.wrapping_mul(p.b)) % (self.bits.len() as u64 * 64);
        ((bit / 64) as usize, 1u64 << (bit % 64))
    }

    fn insert(&mut self, p: Probe) {
        for i in 0..PROBES {
            let (w, m) = self.probe(p, i);
            self.bits[w] |= m;
        }
        self.keys += 1;
    }

    fn may_hold(&self, p: Probe) -> bool {
        (0..PROBES).all(|i| {
            let (w, m) = self.probe(p, i);
            self.bits[w] & m != 0
        })
    }
}

/// The keys written to an index since it was opened empty.
pub(super) struct Written {
    /// Empty once the filter passed [`MAX_BYTES`]: every key may be held.
    layers: Vec<Layer>,
}

impl Default for Written {
    fn default() -> Self {
        Written {
            layers: vec![Layer::new(FIRST_KEYS)],
        }
    }
}

impl Written {
    pub fn insert(&mut self, p: Probe) {
        let Some(last) = self.layers.last() else {
            return;
        };
        if last.keys >= last.cap {
            let cap = last.cap * 2;
            let held: usize = self.layers.iter().map(|l| l.bits.len() * 8).sum();
            if held + (cap * BITS_PER_KEY).div_ceil(8) > MAX_BYTES {
                self.layers = Vec::new();
                return;
            }
            self.layers.push(Layer::new(cap));
        }
        self.layers.last_mut().expect("pushed").insert(p);
    }

    /// False: `p` was never inserted. True: it may have been.
    pub fn may_hold(&self, p: Probe) -> bool {
        self.layers.is_empty() || self.layers.iter().any(|l| l.may_hold(p))
    }

    /// Bytes of filter held.
    #[cfg(test)]
    pub fn bytes(&self) -> usize {
        self.layers.iter().map(|l| l.bits.len() * 8).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn h(i: u64) -> Hash {
        Hash::of(&i.to_le_bytes())
    }

    #[test]
    fn every_inserted_key_is_held_and_few_others() {
        let mut w = Written::default();
        let n = 100_000u64; // several layers
        for i in 0..n {
            w.insert(Probe::of_hash(Table::Chunks, &h(i)));
            w.insert(Probe::of_path(&format!("dir/file-{i}.html")));
        }
        for i in 0..n {
            assert!(w.may_hold(Probe::of_hash(Table::Chunks, &h(i))));
            assert!(w.may_hold(Probe::of_path(&format!("dir/file-{i}.html"))));
        }
        let false_hits = (n..2 * n)
            .filter(|&i| w.may_hold(Probe::of_hash(Table::Chunks, &h(i))))
            .count()
            + (0..n)
                .filter(|&i| w.may_hold(Probe::of_hash(Table::Whole, &h(i))))
                .count();
        assert!(
            false_hits < (2 * n / 20) as usize,
            "{false_hits} false hits"
        );
        // 200,000 keys in ~10 bits each, layers doubling.
        assert!(w.bytes() < 600_000, "{} bytes", w.bytes());
    }

    #[test]
    fn a_filter_past_its_budget_is_dropped_and_holds_everything() {
        let mut w = Written::default();
        // Keys made cheaply (the filter reads the first 16 bytes).
        let key = |i: u64| {
            let mut k = [0u8; 32];
            k[..8].copy_from_slice(&i.wrapping_mul(0x9E37_79B9_7F4A_7C15).to_le_bytes());
            k[8..16].copy_from_slice(&(i ^ 0xA5A5_5A5A).rotate_left(17).to_le_bytes());
            Hash(k)
        };
        let mut i = 0u64;
        while !w.layers.is_empty() {
            w.insert(Probe::of_hash(Table::Chunks, &key(i)));
            assert!(w.bytes() <= MAX_BYTES, "{} bytes", w.bytes());
            i += 1;
        }
        // Several million keys went in before it was dropped.
        assert!(i > 4_000_000, "{i} keys");
        assert_eq!(w.bytes(), 0);
        // No false negatives after the drop: every key may be held.
        assert!(w.may_hold(Probe::of_hash(Table::Chunks, &key(0))));
        assert!(w.may_hold(Probe::of_hash(Table::Whole, &key(i + 1))));
        w.insert(Probe::of_path("later"));
        assert_eq!(w.bytes(), 0);
    }

    proptest! {
        #[test]
        fn no_false_negatives(keys in proptest::collection::vec(any::<[u8; 32]>(), 0..2000),
                              paths in proptest::collection::vec("[a-z/]{0,12}", 0..200)) {
            let mut w = Written::default();
            for k in &keys {
                w.insert(Probe::of_hash(Table::Groups, &Hash(*k)));
            }
            for p in &paths {
                w.insert(Probe::of_path(p));
            }
            for k in &keys {
                prop_assert!(w.may_hold(Probe::of_hash(Table::Groups, &Hash(*k))));
            }
            for p in &paths {
                prop_assert!(w.may_hold(Probe::of_path(p)));
            }
        }
    }
}

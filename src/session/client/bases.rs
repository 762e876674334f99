//! The bases the server offered for files in flight, held within a budget.
//!
//! A basis is a hint: without it the client sends a chunk whole, which the
//! server always accepts. So an offer for a file that is not open (it
//! changed, failed or finished meanwhile) or one past the budget is
//! dropped, not refused, and the budget is checked before the offer's map
//! is allocated: the server, a remote peer, cannot make the client hold
//! more than [`MAX_HELD_PIECES`] basis pieces whatever it sends.

use crate::delta::{BadBasis, BasisMap, HASH_BYTES};
use std::collections::HashMap;

/// Basis pieces held at once, over all files in flight (about 4 MiB of
/// maps). An honest server offers a few hundred pieces a file.
pub const MAX_HELD_PIECES: usize = 262_144;

/// Bases by file id, with the number of pieces they hold.
#[derive(Default)]
pub struct Bases {
    by_file: HashMap<u32, BasisMap>,
    pieces: usize,
}

impl Bases {
    /// Takes the server's offer for file `id` (replacing an earlier one),
    /// unless it would pass the budget. Returns whether it is held; an
    /// offer that is not a valid basis is an error.
    pub fn offer(&mut self, id: u32, avg: u32, hashes: &[u8]) -> Result<bool, BadBasis> {
        self.remove(id);
        let n = hashes.len() / HASH_BYTES;
        if self.pieces + n > MAX_HELD_PIECES {
            // Still refuse what is malformed, before dropping it.
            BasisMap::check(avg, hashes)?;
            return Ok(false);
        }
        let basis = BasisMap::parse(avg, hashes)?;
        self.pieces += basis.pieces as usize;
        self.by_file.insert(id, basis);
        Ok(true)
    }

    pub fn get(&self, id: u32) -> Option<&BasisMap> {
        self.by_file.get(&id)
    }

    pub fn remove(&mut self, id: u32) {
        if let Some(b) = self.by_file.remove(&id) {
            self.pieces -= b.pieces as usize;
        }
    }

    pub fn clear(&mut self) {
        self.by_file.clear();
        self.pieces = 0;
    }

    /// Pieces held now.
    #[cfg(test)]
    fn held(&self) -> usize {
        self.pieces
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hashes(n: usize) -> Vec<u8> {
        (0..n as u32)
            .flat_map(|i| i.to_le_bytes()[..HASH_BYTES].to_vec())
            .collect()
    }

    #[test]
    fn offers_past_the_budget_are_dropped_and_withdrawals_free_it() {
        let mut b = Bases::default();
        let per = crate::delta::MAX_PIECES;
        let mut held = 0;
        for id in 0..10 {
            if b.offer(id, 256, &hashes(per)).unwrap() {
                held += 1;
            }
        }
        assert_eq!(held, MAX_HELD_PIECES / per);
        assert!(b.held() <= MAX_HELD_PIECES);
        assert!(b.get(9).is_none());
        b.remove(0);
        assert!(b.offer(9, 256, &hashes(per)).unwrap());
        assert!(b.get(9).is_some());
        // Replacing an offer does not count it twice.
        let before = b.held();
        assert!(b.offer(9, 256, &hashes(10)).unwrap());
        assert_eq!(b.held(), before - per + 10);
        b.clear();
        assert_eq!(b.held(), 0);
    }

    #[test]
    fn a_malformed_offer_is_refused_even_past_the_budget() {
        let mut b = Bases::default();
        assert!(b.offer(1, 300, &hashes(4)).is_err());
        for id in 0..10 {
            let _ = b.offer(id, 256, &hashes(crate::delta::MAX_PIECES));
        }
        assert!(b.offer(99, 256, &[0u8; 4]).is_err());
        assert!(b.offer(99, 100, &hashes(3)).is_err());
    }
}

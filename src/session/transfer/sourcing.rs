//! Chunks asked of the client once per pass: the first place (file,
//! chunk index) that needs a chunk owns the request; later places wait for
//! it. When it arrives it is written everywhere; when its owner is given
//! up, the first waiter still alive takes the request over. Pure
//! bookkeeping, no I/O.

use crate::chunk::Hash;
use std::collections::hash_map::Entry;
use std::collections::HashMap;

/// A place in a file: (manifest id, chunk index).
pub(super) type Place = (u32, u32);

#[derive(Default)]
pub(super) struct Sourcing {
    /// Chunks asked of the client: hash -> the place that asked.
    owner: HashMap<Hash, Place>,
    /// Other places waiting for a chunk asked by its owner.
    waiters: HashMap<Hash, Vec<Place>>,
}

impl Sourcing {
    /// Whether chunk `h` is already asked of the client.
    pub fn is_asked(&self, h: &Hash) -> bool {
        self.owner.contains_key(h)
    }

    /// `place` needs chunk `h`. True: it owns the request now (ask the
    /// client); false: it waits for the owner's copy.
    pub fn need(&mut self, h: Hash, place: Place) -> bool {
        match self.owner.entry(h) {
            Entry::Occupied(_) => {
                self.waiters.entry(h).or_default().push(place);
                false
            }
            Entry::Vacant(v) => {
                v.insert(place);
                true
            }
        }
    }

    /// Whether another place waits for chunk `h` (besides its owner).
    pub fn is_awaited(&self, h: &Hash) -> bool {
        self.waiters.contains_key(h)
    }

    /// Chunk `h` arrived: the request is over; returns the places that
    /// waited for it.
    pub fn arrived(&mut self, h: &Hash) -> Vec<Place> {
        self.owner.remove(h);
        self.waiters.remove(h).unwrap_or_default()
    }

    /// Chunk `h` will not be asked after all.
    pub fn cancel(&mut self, h: &Hash) {
        self.owner.remove(h);
    }

    /// File `id` is given up: each request it owned passes to its first
    /// waiter for which `alive` holds; returns those new owners (to ask).
    pub fn release(&mut self, id: u32, alive: impl Fn(u32) -> bool) -> Vec<Place> {
        let owned: Vec<Hash> = self
            .owner
            .iter()
            .filter(|(_, (o, _))| *o == id)
            .map(|(h, _)| *h)
            .collect();
        let mut heirs = Vec::new();
        for h in owned {
            self.owner.remove(&h);
            let mut ws = self.waiters.remove(&h).unwrap_or_default();
            ws.retain(|(w, _)| *w != id && alive(*w));
            if let Some(&heir) = ws.first() {
                self.owner.insert(h, heir);
                self.waiters.insert(h, ws[1..].to_vec());
                heirs.push(heir);
            }
        }
        for ws in self.waiters.values_mut() {
            ws.retain(|(w, _)| *w != id);
        }
        heirs
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(n: u8) -> Hash {
        Hash([n; 32])
    }

    #[test]
    fn the_first_place_asks_and_the_others_wait() {
        let mut s = Sourcing::default();
        assert!(s.need(h(1), (1, 0)));
        assert!(!s.need(h(1), (2, 3)));
        assert!(!s.need(h(1), (3, 1)));
        assert!(s.is_asked(&h(1)));
        assert_eq!(s.arrived(&h(1)), vec![(2, 3), (3, 1)]);
        assert!(!s.is_asked(&h(1)));
        assert!(s.arrived(&h(1)).is_empty());
    }

    #[test]
    fn a_dropped_owner_hands_over_to_the_first_live_waiter() {
        let mut s = Sourcing::default();
        assert!(s.need(h(1), (1, 0)));
        assert!(!s.need(h(1), (2, 0)));
        assert!(!s.need(h(1), (3, 0)));
        assert!(s.need(h(2), (1, 1)));
        // File 2 is gone too: file 3 inherits chunk 1; chunk 2 had no waiter.
        assert_eq!(s.release(1, |id| id != 2), vec![(3, 0)]);
        assert!(s.is_asked(&h(1)));
        assert!(!s.is_asked(&h(2)));
        assert!(s.arrived(&h(1)).is_empty());
    }

    #[test]
    fn a_dropped_waiter_is_forgotten() {
        let mut s = Sourcing::default();
        assert!(s.need(h(1), (1, 0)));
        assert!(!s.need(h(1), (2, 0)));
        assert!(s.release(2, |_| true).is_empty());
        assert!(s.arrived(&h(1)).is_empty());
        s.need(h(3), (4, 0));
        s.cancel(&h(3));
        assert!(!s.is_asked(&h(3)));
    }
}

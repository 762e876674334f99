//! The free-space policy: how much room `--min-free` keeps on the replica's
//! store, and a cheap answer to "does this file fit?" asked once per file.

use super::Store;
use crate::report::human_bytes;
use std::cell::Cell;
use std::time::{Duration, Instant};

/// How long a free-space answer is trusted.
const RECHECK: Duration = Duration::from_secs(1);

/// Free space the server keeps on DEST's filesystem.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum MinFree {
    Bytes(u64),
    Percent(f64),
}

impl Default for MinFree {
    fn default() -> Self {
        MinFree::Bytes(1 << 30)
    }
}

/// A `--min-free` value that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadMinFree {
    #[error("bad --min-free {0:?}")]
    Number(String),
    #[error("--min-free {0:?} is not a percentage")]
    Percent(String),
    #[error("bad --min-free {0:?}: unknown unit {1}")]
    Unit(String, char),
}

impl MinFree {
    /// Parses `512M`, `1G`, `1073741824` or `5%`.
    pub fn parse(s: &str) -> Result<MinFree, BadMinFree> {
        let t = s.trim();
        let number = |n: &str| {
            n.trim()
                .parse::<f64>()
                .map_err(|_| BadMinFree::Number(s.to_string()))
        };
        if let Some(p) = t.strip_suffix('%') {
            let v = number(p)?;
            if !(0.0..=100.0).contains(&v) {
                return Err(BadMinFree::Percent(s.to_string()));
            }
            return Ok(MinFree::Percent(v));
        }
        let (num, mult) = match t.char_indices().last() {
            Some((i, c)) if c.is_ascii_alphabetic() => {
                let m = match c.to_ascii_uppercase() {
                    'K' => 1u64 << 10,
                    'M' => 1 << 20,
                    'G' => 1 << 30,
                    'T' => 1 << 40,
                    'B' => 1,
                    _ => return Err(BadMinFree::Unit(s.to_string(), c)),
                };
                (&t[..i], m)
            }
            _ => (t, 1),
        };
        Ok(MinFree::Bytes((number(num)? * mult as f64) as u64))
    }

    /// The number of bytes to keep free on a filesystem of `total` bytes.
    pub fn bytes(&self, total: u64) -> u64 {
        match *self {
            MinFree::Bytes(b) => b,
            MinFree::Percent(p) => (total as f64 * p / 100.0) as u64,
        }
    }

    /// A warning when the store already has less free space than kept.
    pub fn warning(&self, store: &dyn Store) -> Option<String> {
        let space = store.space()?;
        let keep = self.bytes(space.total);
        (space.free < keep).then(|| {
            format!(
                "free space on the destination is low: {} free, --min-free is {}",
                human_bytes(space.free),
                human_bytes(keep)
            )
        })
    }
}

/// A file refused for lack of space.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not enough space on the destination: the file needs {}, {} is free and --min-free keeps {}", human_bytes(*.need), human_bytes(*.free), human_bytes(*.keep))]
pub struct NoRoom {
    pub need: u64,
    pub free: u64,
    pub keep: u64,
}

/// Room left for the files of one pass. The store is asked at most once a
/// second while files keep fitting (the answer is reduced by what was
/// allotted since), and again whenever the cached answer says no.
pub struct Room {
    min_free: MinFree,
    /// Last answer: when, free bytes, reserve kept.
    last: Cell<(Option<Instant>, u64, u64)>,
    /// Bytes allotted to files since that answer.
    allotted: Cell<u64>,
}

impl Room {
    pub fn new(min_free: MinFree) -> Self {
        Room {
            min_free,
            last: Cell::new((None, 0, 0)),
            allotted: Cell::new(0),
        }
    }

    /// Allots `size` bytes, or says why they do not fit.
    pub fn allot(&self, store: &dyn Store, size: u64) -> Result<(), NoRoom> {
        let Some((free, keep)) = self.space_for(store, size) else {
            return Ok(());
        };
        if size.saturating_add(keep) > free {
            return Err(NoRoom {
                need: size,
                free,
                keep,
            });
        }
        Ok(())
    }

    fn space_for(&self, store: &dyn Store, size: u64) -> Option<(u64, u64)> {
        let (at, free, keep) = self.last.get();
        let free_now = free.saturating_sub(self.allotted.get());
        if at.is_some_and(|t| t.elapsed() < RECHECK) && size.saturating_add(keep) <= free_now {
            self.allotted.set(self.allotted.get().saturating_add(size));
            return Some((free_now, keep));
        }
        let space = store.space()?;
        let keep = self.min_free.bytes(space.total);
        self.last.set((Some(Instant::now()), space.free, keep));
        self.allotted.set(size);
        Some((space.free, keep))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn min_free_parses() {
        assert_eq!(MinFree::parse("1G"), Ok(MinFree::Bytes(1 << 30)));
        assert_eq!(MinFree::parse("512m"), Ok(MinFree::Bytes(512 << 20)));
        assert_eq!(MinFree::parse("1000"), Ok(MinFree::Bytes(1000)));
        assert_eq!(MinFree::parse("5%"), Ok(MinFree::Percent(5.0)));
        assert!(MinFree::parse("5x").is_err());
        assert!(MinFree::parse("200%").is_err());
        assert_eq!(MinFree::Percent(5.0).bytes(1000), 50);
    }
}

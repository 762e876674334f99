//! What the live page shows beyond the counters: throughput second by
//! second over the last minutes, and the most recent operations. Both are
//! rings of fixed size, filled by the server as it works and copied out
//! whole for `/status`.

use crate::protocol::OpReport;
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;

/// Seconds of throughput kept (10 minutes).
pub const HISTORY_SECONDS: usize = 600;
/// Operations kept for the page.
pub const RECENT_OPS: usize = 20;
/// Longest path shown for an operation (longer ones are cut in the
/// middle), so `/status` stays small whatever the tree holds.
pub const MAX_SHOWN_PATH: usize = 240;

/// One second of traffic.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Second {
    /// Content bytes received from clients.
    pub received: u64,
    /// Content bytes rebuilt from what the replica held.
    pub reused: u64,
}

/// One operation as the page lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecentOp {
    /// RFC 3339, to the second.
    pub at: String,
    pub op: String,
    pub path: String,
    pub received: u64,
    pub reused: u64,
}

impl RecentOp {
    pub fn of(r: &OpReport, at: String) -> RecentOp {
        RecentOp {
            at,
            op: r.op.as_str().to_string(),
            path: shorten(&r.path, MAX_SHOWN_PATH),
            received: r.received,
            reused: r.reused,
        }
    }
}

/// `text` cut to at most `max` bytes, the middle replaced by `…`.
pub fn shorten(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let keep = max.saturating_sub(3) / 2;
    let mut head = keep;
    while !text.is_char_boundary(head) {
        head -= 1;
    }
    let mut tail = text.len() - keep;
    while !text.is_char_boundary(tail) {
        tail += 1;
    }
    format!("{}…{}", &text[..head], &text[tail..])
}

/// A ring of at most `cap` items, oldest first.
#[derive(Debug, Clone)]
pub struct Ring<T> {
    items: VecDeque<T>,
    cap: usize,
}

impl<T: Clone> Ring<T> {
    pub fn new(cap: usize) -> Self {
        Ring {
            items: VecDeque::with_capacity(cap),
            cap,
        }
    }

    pub fn push(&mut self, item: T) {
        if self.items.len() == self.cap {
            self.items.pop_front();
        }
        self.items.push_back(item);
    }

    pub fn to_vec(&self) -> Vec<T> {
        self.items.iter().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ring_keeps_the_newest() {
        let mut r = Ring::new(3);
        for i in 0..5 {
            r.push(i);
        }
        assert_eq!(r.to_vec(), vec![2, 3, 4]);
    }

    #[test]
    fn long_paths_are_cut_in_the_middle_on_char_boundaries() {
        assert_eq!(shorten("abc", 10), "abc");
        let long = "é".repeat(200);
        let s = shorten(&long, 41);
        assert!(s.len() <= 41 + "…".len(), "{}", s.len());
        assert!(s.contains('…'));
        let ascii = format!("{}{}", "a".repeat(100), "z".repeat(100));
        let s = shorten(&ascii, 23);
        assert!(
            s.starts_with("aaaaaaaaaa…") && s.ends_with("zzzzzzzzzz"),
            "{s}"
        );
    }
}

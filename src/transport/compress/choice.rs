//! Which way the next segment goes under `--compress auto`: zstd or raw,
//! whichever has moved input faster lately. Pure bookkeeping over
//! measurements the writer takes (input bytes of a segment, and the time
//! the writer spent on it: compressing, writing, flushing, which includes
//! any time the socket, a `--bwlimit` or the peer held it back).
//!
//! The writer starts compressed (a short session on a slow link keeps its
//! bytes), measures the way it is using, and now and then tries the other
//! way on a few MiB (a *probe*). Raw is chosen only when it moves input at
//! least [`MARGIN`] times faster than zstd: on a tie (the peer, not the
//! link, is what limits: the docs tree to a busy server over loopback)
//! compression stays, since sending raw would then cost bytes and gain no
//! time (measured: 10 × the bytes, same wall). A probe that loses stops as
//! soon as it is clearly losing (segments are cut small while probing),
//! and each lost probe makes the distance to the next one four times
//! longer, so on a slow link probing costs a small, shrinking share of the
//! bytes. Raw is not even tried while the writer mostly waits to write
//! (the link is the limit; see `Window::raw_may_win`).

use std::time::Duration;

/// How a segment is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Way {
    Raw,
    Zstd,
}

impl Way {
    fn other(self) -> Way {
        match self {
            Way::Raw => Way::Zstd,
            Way::Zstd => Way::Raw,
        }
    }
}

/// Raw must move input this many times faster than zstd to be chosen.
pub const MARGIN: f64 = 1.25;
/// Input bytes sent the chosen way before the first probe.
const FIRST_PROBE_AFTER: u64 = 8 << 20;
/// Longest distance between probes.
const MAX_PROBE_AFTER: u64 = 1 << 30;
/// Input bytes of a probe that runs to its end.
const PROBE_BYTES: u64 = 4 << 20;
/// A probe is judged early (when clearly losing) only after this much; it
/// is also the size of a segment sent while probing, so that a losing raw
/// probe on a slow link costs little.
pub const PROBE_MIN: u64 = 256 << 10;
/// How much farther the next probe is after a lost one.
const BACKOFF: u64 = 4;

/// Input bytes and the writer's time spent on them (of which compressing),
/// and the bytes that went out.
#[derive(Debug, Clone, Copy, Default)]
struct Window {
    bytes: u64,
    busy: Duration,
    out: u64,
    compressing: Duration,
}

impl Window {
    fn add(&mut self, s: Sample) {
        self.bytes += s.input;
        self.busy += s.busy;
        self.out += s.output;
        self.compressing += s.compressing;
    }

    /// Whether sending raw could beat this zstd window: if the link is
    /// what held the writer back, raw would take the write time divided by
    /// the ratio; it is tried only when that could be near the time spent
    /// compressing and writing (else a raw probe on a slow link would only
    /// cost bytes).
    fn raw_may_win(&self) -> bool {
        let writing = self.busy.saturating_sub(self.compressing).as_secs_f64();
        let ratio = self.out.max(1) as f64 / self.bytes.max(1) as f64;
        writing / ratio < 2.0 * self.busy.as_secs_f64()
    }

    /// Input bytes per second (a window that took no measurable time is
    /// as fast as can be).
    fn rate(&self) -> f64 {
        self.bytes as f64 / self.busy.as_secs_f64().max(1e-9)
    }
}

/// What the writer measured for one segment.
#[derive(Debug, Clone, Copy, Default)]
pub struct Sample {
    /// Frame bytes in the segment.
    pub input: u64,
    /// Bytes that went out for them.
    pub output: u64,
    /// Time spent compressing them (zero for a raw segment).
    pub compressing: Duration,
    /// All the writer's time on them: compressing, writing, flushing.
    pub busy: Duration,
}

/// The state of `--compress auto` for one direction of one link.
#[derive(Debug, Clone)]
pub struct Chooser {
    chosen: Way,
    /// The chosen way, measured since the last probe ended.
    recent: Window,
    /// The other way, while a probe runs.
    probe: Option<Window>,
    /// Input bytes of the chosen way before the next probe.
    probe_after: u64,
}

impl Default for Chooser {
    fn default() -> Self {
        Chooser {
            chosen: Way::Zstd,
            recent: Window::default(),
            probe: None,
            probe_after: FIRST_PROBE_AFTER,
        }
    }
}

impl Chooser {
    /// The way the next segment should go.
    pub fn next(&self) -> Way {
        match self.probe {
            Some(_) => self.chosen.other(),
            None => self.chosen,
        }
    }

    /// The way chosen outside probes.
    pub fn chosen(&self) -> Way {
        self.chosen
    }

    /// Whether a probe is running.
    pub fn probing(&self) -> bool {
        self.probe.is_some()
    }

    /// Records a segment sent `way`.
    pub fn record(&mut self, way: Way, s: Sample) {
        match &mut self.probe {
            Some(p) if way != self.chosen => {
                p.add(s);
                let p = *p;
                let losing = p.bytes >= PROBE_MIN && p.rate() * 2.0 < self.recent.rate();
                if losing || p.bytes >= PROBE_BYTES {
                    self.judge(p);
                }
            }
            _ => {
                self.recent.add(s);
                if self.probe.is_none() && self.recent.bytes >= self.probe_after {
                    if self.chosen == Way::Zstd && !self.recent.raw_may_win() {
                        // The link is the limit: measure afresh later.
                        self.recent = Window::default();
                    } else {
                        self.probe = Some(Window::default());
                    }
                }
            }
        }
    }

    /// Ends a probe: switch if the other way won, else probe later.
    fn judge(&mut self, probe: Window) {
        let (zstd, raw) = match self.chosen {
            Way::Zstd => (self.recent.rate(), probe.rate()),
            Way::Raw => (probe.rate(), self.recent.rate()),
        };
        let want = if raw > zstd * MARGIN {
            Way::Raw
        } else {
            Way::Zstd
        };
        self.probe = None;
        if want != self.chosen {
            self.chosen = want;
            self.recent = probe;
            self.probe_after = FIRST_PROBE_AFTER;
        } else {
            self.recent = Window::default();
            self.probe_after = (self.probe_after * BACKOFF).min(MAX_PROBE_AFTER);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A segment of `n` bytes compressing to a third at 150 MB/s, sent in
    /// `busy` (which includes the compression for zstd).
    fn sample(way: Way, n: u64, busy: Duration) -> Sample {
        let (output, compressing) = match way {
            Way::Raw => (n, Duration::ZERO),
            Way::Zstd => (n / 3, secs(n, 150e6).min(busy)),
        };
        Sample {
            input: n,
            output,
            compressing,
            busy,
        }
    }

    /// Feeds 256 KiB segments, each taking the time `cost` says for its way,
    /// until `total` input bytes went; returns the bytes sent each way.
    fn run(total: u64, cost: impl Fn(Way, u64) -> Duration) -> (Chooser, u64, u64) {
        let mut c = Chooser::default();
        let (mut raw, mut zstd, mut sent) = (0, 0, 0);
        while sent < total {
            let way = c.next();
            let n = 256 << 10;
            c.record(way, sample(way, n, cost(way, n)));
            sent += n;
            match way {
                Way::Raw => raw += n,
                Way::Zstd => zstd += n,
            }
        }
        (c, raw, zstd)
    }

    fn secs(bytes: u64, per_sec: f64) -> Duration {
        Duration::from_secs_f64(bytes as f64 / per_sec)
    }

    #[test]
    fn starts_compressed() {
        assert_eq!(Chooser::default().next(), Way::Zstd);
        // A short session never probes: all of it is compressed.
        let (c, raw, _) = run(4 << 20, |_, n| secs(n, 1e6));
        assert_eq!((c.chosen(), raw), (Way::Zstd, 0));
    }

    #[test]
    fn a_fast_link_goes_raw() {
        // Loopback: zstd at 150 MB/s, the socket takes 2 GB/s.
        let (c, raw, zstd) = run(512 << 20, |w, n| match w {
            Way::Zstd => secs(n, 150e6) + secs(n / 3, 2e9),
            Way::Raw => secs(n, 2e9),
        });
        assert_eq!(c.chosen(), Way::Raw);
        assert!(zstd < 16 << 20, "{zstd} bytes compressed, {raw} raw");
    }

    #[test]
    fn a_slow_link_stays_compressed_and_probes_cost_little() {
        // 2 MB/s link, zstd at 150 MB/s to a third of the size.
        let (c, raw, zstd) = run(1 << 30, |w, n| match w {
            Way::Zstd => secs(n, 150e6) + secs(n / 3, 2e6),
            Way::Raw => secs(n, 2e6),
        });
        assert_eq!(c.chosen(), Way::Zstd);
        // The writes take far longer than compressing: raw is never tried.
        assert_eq!(raw, 0, "{raw} raw against {zstd} compressed");
    }

    #[test]
    fn a_slow_peer_keeps_compression() {
        // The peer takes 80 MB of input a second however it comes: raw and
        // zstd tie, and zstd keeps the tie (fewer bytes, same time).
        let (c, ..) = run(512 << 20, |w, n| match w {
            Way::Zstd => secs(n, 80e6).max(secs(n, 150e6)),
            Way::Raw => secs(n, 80e6),
        });
        assert_eq!(c.chosen(), Way::Zstd);
    }

    #[test]
    fn a_link_that_slows_down_brings_compression_back() {
        let mut c = Chooser::default();
        let fast = |w: Way, n: u64| match w {
            Way::Zstd => secs(n, 150e6),
            Way::Raw => secs(n, 2e9),
        };
        let slow = |w: Way, n: u64| match w {
            Way::Zstd => secs(n, 150e6) + secs(n / 3, 1e6),
            Way::Raw => secs(n, 1e6),
        };
        for _ in 0..2048 {
            let w = c.next();
            c.record(w, sample(w, 256 << 10, fast(w, 256 << 10)));
        }
        assert_eq!(c.chosen(), Way::Raw);
        for _ in 0..8192 {
            let w = c.next();
            c.record(w, sample(w, 256 << 10, slow(w, 256 << 10)));
        }
        assert_eq!(c.chosen(), Way::Zstd);
    }
}

//! Which way the next segment goes under `--compress auto`: zstd or raw,
//! whichever moves input through to the peer faster. Pure bookkeeping over
//! what the writer reports (each segment's input, output, time spent
//! compressing, when it started and ended) and over the peer's
//! acknowledgements (how much of this side's frame stream the peer has
//! read, and when each acknowledgement arrived).
//!
//! A way's speed is judged **end to end**: input bytes between two
//! acknowledgements that fall inside a stretch of segments sent that way,
//! divided by the time between those acknowledgements. Socket buffers, a
//! relay's buffers or a slow peer cannot hide anything from that measure:
//! the peer acknowledges what its reader has taken, not what a socket
//! accepted. (Measured by how fast `write` returned, a few MiB sent raw
//! vanish into the kernel's buffers at once and raw looked fast on a
//! 4 MB/s link.)
//!
//! The writer starts compressed (short sessions and slow links keep their
//! bytes). Raw is *tried* (a probe of [`PROBE_BYTES`]) only when it could
//! win: when compressing takes at least a quarter of the writer's wall time
//! and the data does not pile up in flight (less than [`BACKED`] of input
//! unacknowledged before most writes). When data piles up, the link or the
//! peer is the limit, and raw cannot be faster: over a link raw moves fewer
//! input bytes per wire byte, and a busy peer takes input at its own pace
//! either way. A probe is judged once the peer has acknowledged it: raw is
//! chosen only if it moved input at least [`MARGIN`] times faster than the
//! zstd stretch just before it (ties keep compression: same time, fewer
//! bytes). Once raw, zstd is probed now and then the same way, so a link
//! that slows down brings compression back. Each probe that changes nothing
//! makes the distance to the next one four times longer.

use std::time::{Duration, Instant};

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
/// Input bytes of a probe.
pub const PROBE_BYTES: u64 = 4 << 20;
/// The chosen way is measured over this much input before a probe.
const REFERENCE_BYTES: u64 = 8 << 20;
/// Acknowledged input a stretch needs before its speed counts.
const MIN_MEASURED: u64 = 1 << 20;
/// Input sent and not yet acknowledged at which data is piling up in
/// flight (the link or the peer is slower than the writer). A segment is
/// 1 MiB of input; a writer the link keeps up with has about one in flight.
pub const BACKED: u64 = 3 << 20;
/// Input of the chosen way after a probe within which its acknowledgements
/// must come (else it is dropped, changing nothing).
const PROBE_PATIENCE: u64 = 64 << 20;
/// How much farther the next probe is after one that changed nothing.
const BACKOFF: u64 = 4;

/// What the writer measured for one segment.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    /// Frame bytes in the segment.
    pub input: u64,
    /// Time spent compressing them (zero for a raw segment).
    pub compressing: Duration,
    /// When the writer started on the segment.
    pub started: Instant,
    /// When the segment was written and flushed.
    pub ended: Instant,
}

/// Acknowledged progress through a range of the input: the first and last
/// acknowledgements that fall inside it.
#[derive(Debug, Clone, Copy)]
struct Span {
    from: u64,
    to: u64,
    first: Option<(u64, Instant)>,
    last: Option<(u64, Instant)>,
}

impl Span {
    fn starting(from: u64) -> Span {
        Span {
            from,
            to: u64::MAX,
            first: None,
            last: None,
        }
    }

    fn ack(&mut self, at: u64, when: Instant) {
        if at > self.from && at <= self.to {
            self.first.get_or_insert((at, when));
            self.last = Some((at, when));
        }
    }

    /// Input bytes per second between the first and last acknowledgement,
    /// once enough was acknowledged.
    fn rate(&self) -> Option<f64> {
        let ((a, ta), (b, tb)) = (self.first?, self.last?);
        let secs = tb.saturating_duration_since(ta).as_secs_f64();
        (b - a >= MIN_MEASURED).then(|| (b - a) as f64 / secs.max(1e-6))
    }
}

/// Segments sent one way over a stretch of the input.
#[derive(Debug, Clone, Copy)]
struct Stretch {
    span: Span,
    input: u64,
    compressing: Duration,
    segments: u32,
    /// Segments written while at least [`BACKED`] input was unacknowledged.
    backed: u32,
    started: Option<Instant>,
    ended: Option<Instant>,
}

impl Stretch {
    fn starting(from: u64) -> Stretch {
        Stretch {
            span: Span::starting(from),
            input: 0,
            compressing: Duration::ZERO,
            segments: 0,
            backed: 0,
            started: None,
            ended: None,
        }
    }

    fn add(&mut self, s: &Sample, in_flight: u64) {
        self.input += s.input;
        self.compressing += s.compressing;
        self.segments += 1;
        self.backed += u32::from(in_flight >= BACKED);
        self.started.get_or_insert(s.started);
        self.ended = Some(s.ended);
    }

    /// Whether raw could beat this zstd stretch: compressing took a quarter
    /// of the writer's wall time or more, and data did not pile up in
    /// flight before most writes.
    fn raw_may_win(&self) -> bool {
        let wall = match (self.started, self.ended) {
            (Some(a), Some(b)) => b.saturating_duration_since(a),
            _ => return false,
        };
        self.compressing * 4 >= wall && self.backed * 2 < self.segments
    }
}

/// A probe of the other way, and the chosen way's stretch just before it.
#[derive(Debug, Clone, Copy)]
struct Probe {
    reference: Stretch,
    trial: Stretch,
    /// Where the probe's input ended, once it has.
    end: Option<u64>,
}

/// The state of `--compress auto` for one direction of one link.
#[derive(Debug, Clone)]
pub struct Chooser {
    chosen: Way,
    /// Input bytes sent so far.
    sent: u64,
    /// Input bytes the peer has acknowledged.
    acked: u64,
    /// Input sent the chosen way since the last probe was judged.
    since_probe: u64,
    /// The chosen way's last [`REFERENCE_BYTES`] before the probe point.
    reference: Option<Stretch>,
    probe: Option<Probe>,
    /// Input of the chosen way before the next probe.
    probe_after: u64,
}

impl Default for Chooser {
    fn default() -> Self {
        Chooser {
            chosen: Way::Zstd,
            sent: 0,
            acked: 0,
            since_probe: 0,
            reference: None,
            probe: None,
            probe_after: FIRST_PROBE_AFTER,
        }
    }
}

impl Chooser {
    /// The way the next segment should go.
    pub fn next(&self) -> Way {
        match self.probe {
            Some(Probe { end: None, .. }) => self.chosen.other(),
            _ => self.chosen,
        }
    }

    /// The way chosen outside probes.
    pub fn chosen(&self) -> Way {
        self.chosen
    }

    /// Input bytes sent and not yet acknowledged.
    pub fn in_flight(&self) -> u64 {
        self.sent - self.acked
    }

    /// Records a segment sent `way` (the way [`Chooser::next`] said).
    pub fn record(&mut self, way: Way, s: Sample) {
        let in_flight = self.in_flight();
        let from = self.sent;
        self.sent += s.input;
        if let Some(p) = self.probe.as_mut().filter(|p| p.end.is_none()) {
            if way != self.chosen {
                p.trial.add(&s, in_flight);
                if p.trial.input >= PROBE_BYTES {
                    p.trial.span.to = self.sent;
                    p.end = Some(self.sent);
                }
                return;
            }
        }
        self.since_probe += s.input;
        if self.probe.is_some() {
            // Waiting for the probe's acknowledgements; if they never come
            // (a peer that stopped reading), give up on it in time.
            if self.since_probe >= self.probe_after.max(PROBE_PATIENCE) {
                self.judged(None);
            }
            return;
        }
        if self.reference.is_none() && self.since_probe + REFERENCE_BYTES > self.probe_after {
            self.reference = Some(Stretch::starting(from));
        }
        if let Some(r) = self.reference.as_mut() {
            r.add(&s, in_flight);
        }
        if self.since_probe >= self.probe_after {
            self.probe_point();
        }
    }

    /// The peer has read `at` bytes of the input; the acknowledgement
    /// arrived at `when`. Acknowledgements that go back or beyond what was
    /// sent are ignored.
    pub fn ack(&mut self, at: u64, when: Instant) {
        if at <= self.acked || at > self.sent {
            return;
        }
        self.acked = at;
        if let Some(r) = self.reference.as_mut() {
            r.span.ack(at, when);
        }
        if let Some(p) = self.probe.as_mut() {
            p.reference.span.ack(at, when);
            p.trial.span.ack(at, when);
            if p.end.is_some_and(|end| at >= end) {
                let p = *p;
                self.judged(Some(p));
            }
        }
    }

    /// The chosen way has run its distance: probe the other way if it
    /// could win, else measure afresh.
    fn probe_point(&mut self) {
        let Some(mut reference) = self.reference.take() else {
            self.since_probe = 0;
            return;
        };
        if self.chosen == Way::Zstd && !reference.raw_may_win() {
            self.since_probe = 0;
            return;
        }
        reference.span.to = self.sent;
        self.probe = Some(Probe {
            reference,
            trial: Stretch::starting(self.sent),
            end: None,
        });
    }

    /// Ends a probe: switch if the other way won (a probe that could not be
    /// measured changes nothing), and set the distance to the next one.
    fn judged(&mut self, probe: Option<Probe>) {
        self.probe = None;
        self.reference = None;
        self.since_probe = 0;
        let rates = probe.and_then(|p| Some((p.reference.span.rate()?, p.trial.span.rate()?)));
        let want = match rates {
            Some((chosen, other)) => {
                let (zstd, raw) = match self.chosen {
                    Way::Zstd => (chosen, other),
                    Way::Raw => (other, chosen),
                };
                if raw > zstd * MARGIN {
                    Way::Raw
                } else {
                    Way::Zstd
                }
            }
            None => self.chosen,
        };
        if want != self.chosen {
            self.chosen = want;
            self.probe_after = FIRST_PROBE_AFTER;
        } else {
            self.probe_after = (self.probe_after * BACKOFF).min(MAX_PROBE_AFTER);
        }
    }
}

#[cfg(test)]
mod tests;

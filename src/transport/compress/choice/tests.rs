//! The chooser against a simulated link: a writer that compresses (or not)
//! 1 MiB segments, a buffer of `buffer` wire bytes between it and the
//! bottleneck (socket buffers, a relay), a bottleneck that takes wire bytes
//! at `link` and input at `peer` per second, and a peer that acknowledges
//! every 128 KiB it has read. No clock is read: times are synthetic.

use super::*;
use std::collections::VecDeque;

const SEGMENT: u64 = 1 << 20;
const ACK_STEP: u64 = 128 << 10;

#[derive(Clone, Copy)]
struct Sim {
    /// Input bytes zstd compresses per second of the writer's time.
    compress: f64,
    /// Wire bytes per input byte under zstd.
    ratio: f64,
    /// Wire bytes per second the link carries.
    link: f64,
    /// Input bytes per second the peer takes.
    peer: f64,
    /// Wire bytes written but not yet through the bottleneck that the
    /// writer's side can hold before a write waits.
    buffer: u64,
    /// Input bytes per second the writer is given (the session's pace).
    supply: f64,
    /// Whether the peer acknowledges at all.
    acks: bool,
}

const LOOPBACK: Sim = Sim {
    compress: 150e6,
    ratio: 1.0 / 3.0,
    link: 2e9,
    peer: 1e9,
    buffer: 4 << 20,
    supply: f64::INFINITY,
    acks: true,
};

/// What a run sent each way, and the chooser at its end.
struct Run {
    chooser: Chooser,
    raw: u64,
    zstd: u64,
    /// Bytes that went on the wire.
    wire: f64,
    /// When the peer had read everything.
    secs: f64,
}

struct Pipe {
    base: Instant,
    chooser: Chooser,
    /// Writer's clock (seconds).
    now: f64,
    sent: u64,
    /// (wire bytes, when it left the bottleneck) of every segment.
    segments: Vec<(u64, f64)>,
    last_out: f64,
    acks: VecDeque<(u64, f64)>,
    raw: u64,
    zstd: u64,
    wire: f64,
}

impl Pipe {
    fn new(chooser: Chooser) -> Pipe {
        Pipe {
            base: Instant::now(),
            chooser,
            now: 0.0,
            sent: 0,
            segments: Vec::new(),
            last_out: 0.0,
            acks: VecDeque::new(),
            raw: 0,
            zstd: 0,
            wire: 0.0,
        }
    }

    fn at(&self, secs: f64) -> Instant {
        self.base + Duration::from_secs_f64(secs)
    }

    fn deliver_acks(&mut self, until: f64) {
        while self.acks.front().is_some_and(|&(_, t)| t <= until) {
            let (at, t) = self.acks.pop_front().unwrap();
            let when = self.at(t);
            self.chooser.ack(at, when);
        }
    }

    /// When `wire` more bytes fit in the buffer.
    fn room_at(&self, buffer: u64, wire: u64) -> f64 {
        let mut queued = wire;
        for &(w, out) in self.segments.iter().rev() {
            queued += w;
            if queued > buffer {
                return out;
            }
        }
        0.0
    }

    fn segment(&mut self, sim: &Sim) {
        let ready = self.now.max(self.sent as f64 / sim.supply);
        self.deliver_acks(ready);
        let way = self.chooser.next();
        let input = SEGMENT;
        let (wire, compressing) = match way {
            Way::Raw => (input, 0.0),
            Way::Zstd => ((input as f64 * sim.ratio) as u64, input as f64 / sim.compress),
        };
        let written = (ready + compressing).max(self.room_at(sim.buffer, wire));
        let service = (wire as f64 / sim.link).max(input as f64 / sim.peer);
        let out = written.max(self.last_out) + service;
        self.last_out = out;
        self.segments.push((wire, out));
        if sim.acks {
            let mut b = (self.sent / ACK_STEP + 1) * ACK_STEP;
            while b <= self.sent + input {
                let t = out - service + service * (b - self.sent) as f64 / input as f64;
                self.acks.push_back((b, t + 200e-6));
                b += ACK_STEP;
            }
        }
        self.deliver_acks(written);
        let s = Sample {
            input,
            compressing: Duration::from_secs_f64(compressing),
            started: self.at(ready),
            ended: self.at(written),
        };
        self.chooser.record(way, s);
        self.sent += input;
        self.now = written;
        self.wire += wire as f64;
        match way {
            Way::Raw => self.raw += input,
            Way::Zstd => self.zstd += input,
        }
    }

    fn run(&mut self, sim: &Sim, total: u64) {
        let end = self.sent + total;
        while self.sent < end {
            self.segment(sim);
        }
    }

    fn finish(self) -> Run {
        Run {
            chooser: self.chooser,
            raw: self.raw,
            zstd: self.zstd,
            wire: self.wire,
            secs: self.last_out,
        }
    }
}

fn run(sim: Sim, total: u64) -> Run {
    let mut p = Pipe::new(Chooser::default());
    p.run(&sim, total);
    p.finish()
}

/// The same transfer sent all one way.
fn fixed(sim: Sim, total: u64, way: Way) -> Run {
    let mut p = Pipe::new(Chooser::default());
    p.chooser.chosen = way;
    p.chooser.probe_after = u64::MAX;
    p.run(&sim, total);
    p.finish()
}

#[test]
fn starts_compressed_and_a_short_session_never_probes() {
    assert_eq!(Chooser::default().next(), Way::Zstd);
    let r = run(LOOPBACK, 6 << 20);
    assert_eq!((r.chooser.chosen(), r.raw), (Way::Zstd, 0));
}

#[test]
fn loopback_goes_raw_when_compressing_is_the_limit() {
    let r = run(LOOPBACK, 512 << 20);
    assert_eq!(r.chooser.chosen(), Way::Raw);
    assert!(r.zstd < 32 << 20, "{} compressed, {} raw", r.zstd, r.raw);
    // And it is faster than compressing everything.
    let z = fixed(LOOPBACK, 512 << 20, Way::Zstd);
    assert!(r.secs < z.secs * 0.5, "{} s against {} s", r.secs, z.secs);
}

#[test]
fn a_slow_link_with_big_buffers_never_sends_raw() {
    // 4 MB/s behind 8 MiB of buffers: a raw probe would vanish into them at
    // once. Data piles up in flight, so raw is not even tried.
    let sim = Sim {
        link: 4e6,
        buffer: 8 << 20,
        ..LOOPBACK
    };
    let r = run(sim, 1 << 30);
    assert_eq!((r.chooser.chosen(), r.raw), (Way::Zstd, 0));
}

#[test]
fn a_slow_link_under_cpu_load_is_judged_end_to_end() {
    // Compressing is slow (a loaded machine) and the link keeps up with it,
    // so raw is tried; the buffers take each probe at once, but the
    // acknowledgements show raw at the link's 4 MB/s against zstd's
    // 15 MB/s of input: compression stays, and probes back off (four in
    // 1 GiB, about 6 % more bytes: the price of not knowing the link).
    let sim = Sim {
        compress: 15e6,
        ratio: 0.2,
        link: 4e6,
        buffer: 8 << 20,
        ..LOOPBACK
    };
    let r = run(sim, 1 << 30);
    assert_eq!(r.chooser.chosen(), Way::Zstd);
    assert!(r.raw <= 4 * PROBE_BYTES, "{} raw", r.raw);
    let z = fixed(sim, 1 << 30, Way::Zstd);
    assert!(r.wire < z.wire * 1.08, "{} against {}", r.wire, z.wire);
}

#[test]
fn a_slow_peer_keeps_compression() {
    // The peer takes 80 MB of input a second however it comes: data piles
    // up and raw could not be faster.
    let sim = Sim {
        peer: 80e6,
        ..LOOPBACK
    };
    let r = run(sim, 512 << 20);
    assert_eq!((r.chooser.chosen(), r.raw), (Way::Zstd, 0));
}

#[test]
fn a_slow_peer_with_small_buffers_ties_and_keeps_compression() {
    // With little buffering nothing piles up, so raw is tried; it ties
    // with zstd (the peer's pace), and ties keep compression.
    let sim = Sim {
        peer: 100e6,
        compress: 120e6,
        buffer: 256 << 10,
        ..LOOPBACK
    };
    let r = run(sim, 512 << 20);
    assert_eq!(r.chooser.chosen(), Way::Zstd);
}

#[test]
fn an_idle_writer_keeps_compression() {
    // The session hands over 5 MB/s: compressing is a small share of the
    // writer's time and raw could not make anything faster.
    let sim = Sim {
        supply: 5e6,
        ..LOOPBACK
    };
    let r = run(sim, 256 << 20);
    assert_eq!((r.chooser.chosen(), r.raw), (Way::Zstd, 0));
}

#[test]
fn a_link_that_slows_down_brings_compression_back() {
    let mut p = Pipe::new(Chooser::default());
    p.run(&LOOPBACK, 512 << 20);
    assert_eq!(p.chooser.chosen(), Way::Raw);
    let slow = Sim {
        link: 2e6,
        ..LOOPBACK
    };
    p.run(&slow, 256 << 20);
    assert_eq!(p.chooser.chosen(), Way::Zstd);
}

#[test]
fn without_acknowledgements_it_stays_compressed() {
    let sim = Sim {
        acks: false,
        ..LOOPBACK
    };
    let r = run(sim, 256 << 20);
    assert_eq!((r.chooser.chosen(), r.raw), (Way::Zstd, 0));
}

#[test]
fn acknowledgements_beyond_what_was_sent_or_going_back_are_ignored() {
    let mut c = Chooser::default();
    let t = Instant::now();
    c.record(
        Way::Zstd,
        Sample {
            input: 100,
            compressing: Duration::ZERO,
            started: t,
            ended: t,
        },
    );
    c.ack(1000, t);
    assert_eq!(c.in_flight(), 100);
    c.ack(60, t);
    c.ack(50, t);
    assert_eq!(c.in_flight(), 40);
}

#[test]
fn a_span_measures_between_acknowledgements_inside_it() {
    let t = Instant::now();
    let s = |x: f64| t + Duration::from_secs_f64(x);
    let mut span = Span::starting(10 << 20);
    span.to = 20 << 20;
    span.ack(9 << 20, s(0.0)); // before it
    span.ack(11 << 20, s(1.0));
    assert_eq!(span.rate(), None); // one acknowledgement: no interval yet
    span.ack(13 << 20, s(2.0));
    span.ack(21 << 20, s(9.0)); // after it
    assert_eq!(span.rate(), Some((2 << 20) as f64));
}

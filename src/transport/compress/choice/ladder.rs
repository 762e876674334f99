//! The zstd level of `--compress auto`'s compressed segments.
//!
//! The writer's busy time on a compressed segment is compressing plus
//! waiting for the socket to take the output. When compressing is a small
//! share of it, the link (or the peer) is the limit and CPU is cheap beside
//! the wire: the level steps up a rung of [`LADDER`] if the share predicted
//! for the next rung (the share now times that rung's [`COST`]) stays
//! under [`UP_SHARE`]. When compressing takes more than [`DOWN_SHARE`], it
//! is what holds the link back, and the level steps down.
//!
//! Hysteresis: a step up is on trial for one judging window; if the
//! output's rate fell (the link no longer kept full: compressing became the
//! limit, or it took CPU from a peer on the same machine), it steps back.
//! A rung stepped down from is not tried again for [`RETRY_AFTER`] input
//! bytes, twice as long after each further step down, so the level does
//! not flap.
//!
//! A level change ends the zstd frame (single-threaded zstd applies new
//! parameters only at a frame's start), and the new frame starts with no
//! history: measured with zstd 1.5 on 32 MiB at level 3, a frame cut in
//! the middle cost 7 KB on toolchain binaries (0.04 %) and 30 KB on
//! concatenated HTML docs (2 %); the hysteresis keeps such cuts to a few a
//! session.

use super::{Sample, Window};

/// The levels `auto` climbs (level 3 is where it starts). Above 9 the
/// match-finder tables must be capped to keep memory bounded (issue 18),
/// and capped level 12 compressed toolchain binaries no smaller than
/// level 9 at 2.5 × its CPU (bench/RESULTS.md).
pub const LADDER: [i32; 4] = [3, 5, 7, 9];
/// Compressing time of each rung against the rung below (measured with
/// the zstd CLI on 32 MiB of librustc_driver, window 16 MiB: 1.9, 2.0,
/// 1.3 ×; rounded up).
const COST: [f64; 4] = [1.0, 2.0, 2.0, 1.5];
/// Input bytes judged at once.
pub const JUDGE_BYTES: u64 = 4 << 20;
/// Step up when the share predicted for the next rung is under this.
const UP_SHARE: f64 = 0.6;
/// Step down when compressing takes over this share of the busy time.
const DOWN_SHARE: f64 = 0.9;
/// A step up is kept if the output still leaves at this share of its rate
/// before the step (on a slow link it is the link's rate, whatever the
/// level).
const KEEP_RATE: f64 = 0.85;
/// Input bytes before a rung stepped down from is tried again.
pub const RETRY_AFTER: u64 = 64 << 20;
const MAX_RETRY_AFTER: u64 = 4 << 30;

/// The match-finder tables (hash log, chain log) for `level` with a window
/// of `window_log`: zstd's defaults for the [`LADDER`]'s levels on large
/// inputs, capped at the window (a side sending with a 1 MiB window gets
/// 4 + 2 MiB at level 9, not 8 + 4). Zero means zstd's default.
pub fn tables(level: i32, window_log: u32) -> (u32, u32) {
    let (hash, chain) = match level {
        5 => (19, 18),
        7 => (20, 19),
        9 => (21, 20),
        _ => return (0, 0),
    };
    (
        hash.min(window_log),
        chain.min(window_log.saturating_sub(1)),
    )
}

/// Where `auto`'s level is and how it got there.
#[derive(Debug, Clone)]
pub struct Ladder {
    rung: usize,
    /// The compressed segments since the last judgement.
    now: Window,
    /// The output rate before the last step up, while it is on trial.
    trial: Option<f64>,
    /// The highest rung allowed now; the one above may be tried again
    /// after `top_for` more input bytes.
    top: usize,
    top_for: u64,
    retry_after: u64,
}

impl Default for Ladder {
    fn default() -> Self {
        Ladder {
            rung: 0,
            now: Window::default(),
            trial: None,
            top: LADDER.len() - 1,
            top_for: 0,
            retry_after: RETRY_AFTER,
        }
    }
}

impl Ladder {
    /// The level of the next compressed segment.
    pub fn level(&self) -> i32 {
        LADDER[self.rung]
    }

    /// Records a compressed segment.
    pub fn record(&mut self, s: Sample) {
        self.now.add(s);
        if self.top < LADDER.len() - 1 {
            self.top_for = self.top_for.saturating_sub(s.input);
            if self.top_for == 0 {
                self.top += 1;
                self.top_for = self.retry_after;
            }
        }
        if self.now.bytes >= JUDGE_BYTES {
            let w = std::mem::take(&mut self.now);
            self.judge(&w);
        }
    }

    fn judge(&mut self, w: &Window) {
        let busy = w.busy.as_secs_f64();
        // A window that took no measurable time did not wait at all.
        let share = if busy > 0.0 {
            (w.compressing.as_secs_f64() / busy).min(1.0)
        } else {
            1.0
        };
        let out_rate = w.out as f64 / busy.max(1e-9);
        if let Some(before) = self.trial.take() {
            if out_rate < before * KEEP_RATE {
                self.step_down();
                return;
            }
        }
        if share > DOWN_SHARE && self.rung > 0 {
            self.step_down();
        } else if self.rung < self.top && share * COST[self.rung + 1] < UP_SHARE {
            self.trial = Some(out_rate);
            self.rung += 1;
        }
    }

    /// One rung down; the rung left is out of reach for a while.
    fn step_down(&mut self) {
        self.rung -= 1;
        self.top = self.rung;
        self.top_for = self.retry_after;
        self.retry_after = (self.retry_after * 2).min(MAX_RETRY_AFTER);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// Compressing speed (input bytes per second) and ratio at each rung:
    /// each rung half the speed of the one below and 5 % smaller output.
    fn speed(level: i32) -> f64 {
        let rung = LADDER.iter().position(|&l| l == level).unwrap();
        200e6 / 2f64.powi(rung as i32)
    }

    fn ratio(level: i32) -> f64 {
        let rung = LADDER.iter().position(|&l| l == level).unwrap();
        0.3 * 0.95f64.powi(rung as i32)
    }

    /// A 1 MiB segment at `level` through a link of `link` bytes a second
    /// (the writer waits for the link while it does not compress).
    fn segment(level: i32, link: f64) -> Sample {
        let n = 1u64 << 20;
        let output = (n as f64 * ratio(level)) as u64;
        let compressing = n as f64 / speed(level);
        let busy = compressing.max(output as f64 / link);
        Sample {
            input: n,
            output,
            compressing: Duration::from_secs_f64(compressing),
            busy: Duration::from_secs_f64(busy),
        }
    }

    /// Feeds `mib` segments through a link; returns the levels used.
    fn run(l: &mut Ladder, mib: usize, link: f64) -> Vec<i32> {
        (0..mib)
            .map(|_| {
                let level = l.level();
                l.record(segment(level, link));
                level
            })
            .collect()
    }

    fn switches(levels: &[i32]) -> usize {
        levels.windows(2).filter(|w| w[0] != w[1]).count()
    }

    #[test]
    fn tables_are_zstds_defaults_capped_at_the_window() {
        assert_eq!(tables(3, 24), (0, 0));
        assert_eq!(tables(9, 24), (21, 20));
        assert_eq!(tables(9, 20), (20, 19));
        assert_eq!(tables(5, 20), (19, 18));
    }

    #[test]
    fn a_slow_link_climbs_to_the_top_and_stays() {
        // 2 MB/s: even the top rung (25 MB/s) compresses far faster than
        // the link drains its output.
        let mut l = Ladder::default();
        let levels = run(&mut l, 1024, 2e6);
        assert_eq!(l.level(), 9);
        assert_eq!(switches(&levels), LADDER.len() - 1, "{levels:?}");
        // It got there within a few judging windows.
        let first_top = levels.iter().position(|&x| x == 9).unwrap();
        assert!(first_top <= 4 * (JUDGE_BYTES >> 20) as usize, "{first_top}");
    }

    #[test]
    fn a_fast_link_stays_at_the_bottom() {
        // 1 GB/s: compressing is all of the busy time.
        let mut l = Ladder::default();
        let levels = run(&mut l, 512, 1e9);
        assert!(levels.iter().all(|&x| x == 3), "{levels:?}");
    }

    #[test]
    fn a_middling_link_settles_without_flapping() {
        // 15 MB/s: rung 5 and 7 keep up (their share predicted under the
        // threshold), 9 would not; whatever it settles on, it switches
        // rarely and ends below the top.
        let mut l = Ladder::default();
        let levels = run(&mut l, 8192, 15e6);
        assert!(switches(&levels) <= 12, "{} switches", switches(&levels));
        let tail = &levels[levels.len() - 1024..];
        assert!(tail.iter().all(|&x| x < 9 && x > 3), "{tail:?}");
    }

    #[test]
    fn compressing_as_the_limit_steps_down() {
        let mut l = Ladder::default();
        run(&mut l, 256, 2e6);
        assert_eq!(l.level(), 9);
        // The link turns fast: compressing is the limit at every rung.
        run(&mut l, 64, 1e9);
        assert_eq!(l.level(), 3);
    }

    #[test]
    fn a_step_that_slows_the_output_is_taken_back() {
        // A peer that takes input at 40 MB/s whatever its size, and slows
        // down when the writer compresses harder (sharing its CPU): every
        // step up lowers the output rate, so it is undone and retried
        // ever more rarely.
        let mut l = Ladder::default();
        let mut levels = Vec::new();
        for _ in 0..16384 {
            let level = l.level();
            let n = 1u64 << 20;
            let rung = LADDER.iter().position(|&x| x == level).unwrap();
            let peer = 40e6 * 0.8f64.powi(rung as i32);
            let compressing = n as f64 / speed(level);
            l.record(Sample {
                input: n,
                output: (n as f64 * ratio(level)) as u64,
                compressing: Duration::from_secs_f64(compressing),
                busy: Duration::from_secs_f64(compressing.max(n as f64 / peer)),
            });
            levels.push(level);
        }
        let ups = levels.windows(2).filter(|w| w[1] > w[0]).count();
        // Retried after 64, 128, 256... MiB (at most 4 GiB apart): about
        // ten trials in 16 GiB.
        assert!(ups <= 12, "{ups} steps up");
        let at3 = levels.iter().filter(|&&x| x == 3).count();
        assert!(at3 * 10 >= levels.len() * 9, "{at3} of {}", levels.len());
    }
}

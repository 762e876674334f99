//! Progress on a terminal (indicatif): a spinner while scanning (files and
//! bytes found), then a bar while transferring (bytes of the files done of
//! all the pass checks or sends, files done, speed, and an ETA once there is
//! enough behind it to estimate what is ahead), with a short live window of
//! the most recent operations above it ([`OpWindow`]). Hidden when stderr is
//! not a terminal or with `--quiet`; log lines are printed through the same
//! [`MultiProgress`] so they never tear the bars.

use crate::report::{human_bytes, human_duration, plural, thousands, OpCounts};
use crate::session::client::PassObserver;
use crate::tree::ScanCounter;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressState, ProgressStyle};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;
use std::time::Instant;

/// The progress display of one client.
pub struct Progress {
    pub multi: MultiProgress,
    _echo: Option<QuietControlEcho>,
}

/// While bars are drawn, the terminal does not echo control keys: the `^C`
/// it would print when Ctrl-C is pressed shifts the cursor under the bars,
/// and clearing them would then leave a stale line. Restored when dropped,
/// and by [`restore_terminal`] before the process exits without unwinding.
struct QuietControlEcho;

/// The terminal settings to put back (saved once).
#[cfg(unix)]
static SAVED_TERMIOS: Mutex<Option<rustix::termios::Termios>> = Mutex::new(None);

impl QuietControlEcho {
    #[cfg(unix)]
    fn start() -> Option<Self> {
        use rustix::termios::{tcgetattr, tcsetattr, LocalModes, OptionalActions};
        let tty = std::io::stderr();
        let saved = tcgetattr(&tty).ok()?;
        if !saved.local_modes.contains(LocalModes::ECHOCTL) {
            return None;
        }
        let mut quiet = saved.clone();
        quiet.local_modes.remove(LocalModes::ECHOCTL);
        tcsetattr(&tty, OptionalActions::Now, &quiet).ok()?;
        *SAVED_TERMIOS.lock().unwrap_or_else(|e| e.into_inner()) = Some(saved);
        Some(QuietControlEcho)
    }

    #[cfg(not(unix))]
    fn start() -> Option<Self> {
        None
    }
}

impl Drop for QuietControlEcho {
    fn drop(&mut self) {
        restore_terminal();
    }
}

/// Puts back the terminal settings a progress display changed (call
/// before `std::process::exit`).
pub fn restore_terminal() {
    #[cfg(unix)]
    if let Some(saved) = SAVED_TERMIOS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take()
    {
        let _ = rustix::termios::tcsetattr(
            std::io::stderr(),
            rustix::termios::OptionalActions::Now,
            &saved,
        );
    }
}

impl Progress {
    /// A display drawn on stderr when it is a terminal and `enabled`.
    pub fn new(enabled: bool) -> Self {
        use std::io::IsTerminal;
        let shown = enabled && std::io::stderr().is_terminal();
        let target = if shown {
            ProgressDrawTarget::stderr_with_hz(8)
        } else {
            ProgressDrawTarget::hidden()
        };
        Progress {
            multi: MultiProgress::with_draw_target(target),
            _echo: shown.then(QuietControlEcho::start).flatten(),
        }
    }

    pub fn is_hidden(&self) -> bool {
        self.multi.is_hidden()
    }

    /// Shows a spinner fed by `counter` until the returned guard is dropped.
    pub fn scanning(&self, counter: Arc<ScanCounter>) -> ScanSpinner {
        let pb = self.multi.add(ProgressBar::new_spinner());
        pb.set_style(ProgressStyle::with_template("{spinner} scanning: {msg}").unwrap());
        pb.enable_steady_tick(Duration::from_millis(120));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (pb2, stop2) = (pb.clone(), stop.clone());
        let t = std::thread::spawn(move || {
            while !stop2.load(Ordering::Relaxed) {
                let f = counter.files.load(Ordering::Relaxed);
                let b = counter.bytes.load(Ordering::Relaxed);
                pb2.set_message(format!(
                    "{}, {}",
                    plural(f, "file", "files"),
                    human_bytes(b)
                ));
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        ScanSpinner {
            pb,
            stop,
            thread: Some(t),
        }
    }

    /// The server's one-line status (sessions, operations, bytes, speed),
    /// refreshed until the returned guard is dropped.
    pub fn server_status(&self, stats: Arc<crate::status::ServerStats>) -> ScanSpinner {
        let pb = self.multi.add(ProgressBar::new_spinner());
        pb.set_style(ProgressStyle::with_template("{spinner} {msg}").unwrap());
        pb.enable_steady_tick(Duration::from_millis(250));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (pb2, stop2) = (pb.clone(), stop.clone());
        let t = std::thread::spawn(move || {
            while !stop2.load(Ordering::Relaxed) {
                let s = stats.snapshot();
                let state = if s.connected_clients > 0 {
                    "serving"
                } else {
                    "waiting for clients"
                };
                pb2.set_message(format!(
                    "{state}: {} sessions, {} operations, {} received, {} saved by dedup, {}/s",
                    s.sessions,
                    s.operations,
                    human_bytes(s.bytes_received),
                    human_bytes(s.bytes_saved_by_dedup),
                    human_bytes(s.transfer_bytes_per_second)
                ));
                std::thread::sleep(Duration::from_millis(250));
            }
        });
        ScanSpinner {
            pb,
            stop,
            thread: Some(t),
        }
    }

    /// A transfer bar for one pass.
    pub fn transfer(&self) -> TransferBar {
        let pb = self.multi.add(ProgressBar::new(0));
        pb.set_style(
            ProgressStyle::with_template("{spinner} comparing with the replica…").unwrap(),
        );
        pb.set_prefix("0/0");
        pb.enable_steady_tick(Duration::from_millis(120));
        TransferBar {
            pb,
            files_done: AtomicU64::new(0),
            files_total: AtomicU64::new(0),
            styled: std::sync::Once::new(),
        }
    }

    /// Scans (with a spinner) and runs one pass (with a transfer bar). A
    /// `stop` set by the time the scan ends skips the pass
    /// ([`crate::Error::Interrupted`]); `elapsed` covers scan and pass.
    pub fn pass(
        &self,
        syncer: &mut crate::Syncer,
        stop: &crate::shutdown::Stop,
    ) -> crate::Result<crate::report::PassReport> {
        let started = Instant::now();
        let counter = Arc::new(ScanCounter::default());
        let result = if syncer.paged() {
            // The tree is scanned page by page as the pass goes.
            let bar = self.transfer();
            let result = syncer.pass_paged(Some(&bar), Some(counter));
            bar.finish();
            result
        } else {
            let scan = {
                let _spinner = self.scanning(counter.clone());
                syncer.scan_counting(Some(counter))?
            };
            if stop.is_set() {
                return Err(crate::Error::Interrupted);
            }
            let bar = self.transfer();
            let result = syncer.pass_with(&scan, Some(&bar));
            bar.finish();
            result
        };
        let mut report = result?;
        report.elapsed = started.elapsed();
        Ok(report)
    }

    /// A live window of the most recent operation lines, drawn above the
    /// bars while a pass runs; `None` when nothing is drawn.
    pub fn op_window(&self) -> Option<Arc<OpWindow>> {
        (!self.is_hidden()).then(|| {
            Arc::new(OpWindow {
                multi: self.multi.clone(),
                state: Mutex::default(),
            })
        })
    }
}

/// The transfer bar's look once the pass has a plan: bytes done of the
/// total, files done of the total, then speed and ETA when meaningful.
fn bar_style() -> ProgressStyle {
    ProgressStyle::with_template("{bar:30} {done}  files {prefix}{rate}")
        .unwrap()
        .with_key("done", |s: &ProgressState, w: &mut dyn std::fmt::Write| {
            let _ = write!(
                w,
                "{} of {}",
                human_bytes(s.pos()),
                human_bytes(s.len().unwrap_or(0))
            );
        })
        .with_key("rate", |s: &ProgressState, w: &mut dyn std::fmt::Write| {
            let _ = w.write_str(&rate_and_eta(s.pos(), s.len().unwrap_or(0), s.elapsed()));
        })
}

/// Before this much of a pass has passed, or of its bytes are done, a
/// speed or an ETA would be a guess: none is shown.
const ESTIMATE_AFTER: Duration = Duration::from_secs(3);
const ESTIMATE_FRACTION: f64 = 0.02;

/// `  14.5 MiB/s  ETA 31 s`, or less (nothing early on; no ETA until
/// enough is done to estimate it from the average so far).
fn rate_and_eta(pos: u64, len: u64, elapsed: Duration) -> String {
    let secs = elapsed.as_secs_f64();
    if secs < 1.0 || pos == 0 {
        return String::new();
    }
    let rate = pos as f64 / secs;
    let mut out = format!("  {}/s", human_bytes(rate as u64));
    let fraction = pos as f64 / len.max(1) as f64;
    if elapsed >= ESTIMATE_AFTER && fraction >= ESTIMATE_FRACTION && pos < len {
        let left = Duration::from_secs_f64((len - pos) as f64 / rate);
        out.push_str(&format!("  ETA {}", human_duration(left)));
    }
    out
}

/// Lines of the live window of recent operations.
const WINDOW_LINES: usize = 5;

/// The most recent operations of a pass, and the count of each kind so
/// far, drawn above the bars (each line cut to the terminal's width).
pub struct OpWindow {
    multi: MultiProgress,
    state: Mutex<WindowState>,
}

#[derive(Default)]
struct WindowState {
    /// The counts line, then one per recent operation.
    bars: Vec<ProgressBar>,
    recent: VecDeque<String>,
    drawn: Option<Instant>,
}

impl OpWindow {
    /// Adds an operation line (already escaped) and the counts so far.
    pub fn push(&self, line: &str, counts: OpCounts) {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if st.recent.len() == WINDOW_LINES {
            st.recent.pop_front();
        }
        st.recent.push_back(line.to_string());
        // Drawing is rate-limited anyway; setting messages for each of
        // 50,000 operations would only cost time.
        if st
            .drawn
            .is_some_and(|t| t.elapsed() < Duration::from_millis(100))
        {
            return;
        }
        st.drawn = Some(Instant::now());
        if st.bars.is_empty() {
            for i in 0..=WINDOW_LINES {
                let pb = self.multi.insert(i, ProgressBar::new_spinner());
                pb.set_style(ProgressStyle::with_template("{wide_msg}").unwrap());
                st.bars.push(pb);
            }
        }
        st.bars[0].set_message(format!("so far: {}", counts.describe()));
        for i in 0..WINDOW_LINES {
            let text = st
                .recent
                .get(i)
                .map(|l| format!("  {l}"))
                .unwrap_or_default();
            st.bars[i + 1].set_message(text);
        }
    }

    /// Removes the window (at the end of a pass).
    pub fn clear(&self) {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        // Cleared, not removed: a removed bar's lines could stay drawn.
        for pb in st.bars.drain(..) {
            pb.finish_and_clear();
        }
        st.recent.clear();
        st.drawn = None;
    }
}

/// Stops a spinner (scanning, server status) when dropped.
pub struct ScanSpinner {
    pb: ProgressBar,
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for ScanSpinner {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.pb.finish_and_clear();
    }
}

/// The transfer bar; observes a pass.
pub struct TransferBar {
    pb: ProgressBar,
    files_done: AtomicU64,
    files_total: AtomicU64,
    /// The bar replaces the "comparing" spinner once, at the plan.
    styled: std::sync::Once,
}

impl TransferBar {
    fn refresh_prefix(&self) {
        let d = self.files_done.load(Ordering::Relaxed);
        let t = self.files_total.load(Ordering::Relaxed);
        self.pb
            .set_prefix(format!("{}/{}", thousands(d), thousands(t)));
    }

    pub fn finish(&self) {
        self.pb.finish_and_clear();
    }
}

impl PassObserver for TransferBar {
    fn planned(&self, files: u64, bytes: u64) {
        self.styled.call_once(|| {
            self.pb.set_style(bar_style());
            self.pb.reset_elapsed();
        });
        self.files_total.fetch_add(files, Ordering::Relaxed);
        self.pb.inc_length(bytes);
        self.refresh_prefix();
    }
    fn content_sent(&self, _bytes: u64) {}
    fn file_done(&self, bytes: u64) {
        self.files_done.fetch_add(1, Ordering::Relaxed);
        self.pb.inc(bytes);
        self.refresh_prefix();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_estimate_before_there_is_something_to_go_on() {
        let s = Duration::from_secs;
        assert_eq!(rate_and_eta(0, 100, s(5)), "");
        assert_eq!(rate_and_eta(50, 100, Duration::from_millis(500)), "");
        // A second in: a speed, no ETA yet.
        assert_eq!(rate_and_eta(1024, 100 << 20, s(1)), "  1.0 KiB/s");
        // Enough time, too little done: still no ETA.
        assert_eq!(rate_and_eta(1024, 100 << 20, s(10)), "  102 B/s");
        assert_eq!(
            rate_and_eta(10 << 20, 100 << 20, s(5)),
            "  2.0 MiB/s  ETA 45 s"
        );
        assert_eq!(rate_and_eta(100, 100, s(5)), "  20 B/s");
    }
}

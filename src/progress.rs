//! Progress on a terminal (indicatif): a spinner while scanning (files and
//! bytes found), then a bar while transferring (bytes of the files being
//! checked or sent, speed, ETA, files done). Hidden when stderr is not a
//! terminal or with `--quiet`; log lines are printed through the same
//! [`MultiProgress`] so they never tear the bars.

use crate::report::human_bytes;
use crate::session::client::PassObserver;
use crate::tree::ScanCounter;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// The progress display of one client.
pub struct Progress {
    pub multi: MultiProgress,
}

impl Progress {
    /// A display drawn on stderr when it is a terminal and `enabled`.
    pub fn new(enabled: bool) -> Self {
        use std::io::IsTerminal;
        let target = if enabled && std::io::stderr().is_terminal() {
            ProgressDrawTarget::stderr_with_hz(8)
        } else {
            ProgressDrawTarget::hidden()
        };
        Progress {
            multi: MultiProgress::with_draw_target(target),
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
                pb2.set_message(format!("{f} files, {}", human_bytes(b)));
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
            ProgressStyle::with_template(
                "{bar:30} {bytes}/{total_bytes} done, {msg} sent  {binary_bytes_per_sec}  ETA {eta}  files {prefix}",
            )
            .unwrap(),
        );
        TransferBar {
            pb,
            sent: AtomicU64::new(0),
            files_done: AtomicU64::new(0),
            files_total: AtomicU64::new(0),
        }
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
    sent: AtomicU64,
    files_done: AtomicU64,
    files_total: AtomicU64,
}

impl TransferBar {
    fn refresh_prefix(&self) {
        let d = self.files_done.load(Ordering::Relaxed);
        let t = self.files_total.load(Ordering::Relaxed);
        self.pb.set_prefix(format!("{d}/{t}"));
    }

    pub fn finish(&self) {
        self.pb.finish_and_clear();
    }
}

impl PassObserver for TransferBar {
    fn planned(&self, files: u64, bytes: u64) {
        self.files_total.fetch_add(files, Ordering::Relaxed);
        self.pb.inc_length(bytes);
        self.refresh_prefix();
    }
    fn content_sent(&self, bytes: u64) {
        let s = self.sent.fetch_add(bytes, Ordering::Relaxed) + bytes;
        self.pb.set_message(human_bytes(s));
    }
    fn file_done(&self, bytes: u64) {
        self.files_done.fetch_add(1, Ordering::Relaxed);
        self.pb.inc(bytes);
        self.refresh_prefix();
    }
}

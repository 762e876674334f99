//! Stopping on a signal. The first SIGINT (Ctrl-C) or SIGTERM asks the
//! work in progress to stop: a pass to a local target finishes or discards
//! the file in flight and removes the temporary files nothing will resume;
//! `watch` and `sync --every` stop between passes. A second signal ends the
//! process at once. A command cut off by a signal in the middle of a pass
//! says `interrupted` and what was done, and exits with
//! [`Signal::exit_code`] (128 + the signal's number, as shells do).

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;

/// The signals that stop replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    Interrupt,
    Terminate,
}

impl Signal {
    /// 130 for SIGINT, 143 for SIGTERM.
    pub fn exit_code(self) -> u8 {
        match self {
            Signal::Interrupt => 130,
            Signal::Terminate => 143,
        }
    }

    fn number(self) -> u8 {
        self.exit_code() - 128
    }
}

/// The signal streams, registered once (before any work starts, so that
/// no signal takes the default action of killing the process).
struct Signals {
    #[cfg(unix)]
    int: tokio::signal::unix::Signal,
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
}

impl Signals {
    /// Registers the handlers; needs a runtime context.
    fn register() -> std::io::Result<Self> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            Ok(Signals {
                int: signal(SignalKind::interrupt())?,
                term: signal(SignalKind::terminate())?,
            })
        }
        #[cfg(not(unix))]
        Ok(Signals {})
    }

    /// The next signal.
    async fn next(&mut self) -> Signal {
        #[cfg(unix)]
        {
            tokio::select! {
                _ = self.int.recv() => Signal::Interrupt,
                _ = self.term.recv() => Signal::Terminate,
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
            Signal::Interrupt
        }
    }
}

/// Resolves on the first SIGINT or SIGTERM, saying which (servers take it
/// as their shutdown input).
pub async fn signal() -> Signal {
    match Signals::register() {
        Ok(mut s) => s.next().await,
        Err(_) => std::future::pending().await,
    }
}

/// The first signal received, shared between the task that waits for
/// signals and the code that must stop.
#[derive(Debug, Clone, Default)]
pub struct Stop(Arc<AtomicU8>);

impl Stop {
    /// The signal received, if any.
    pub fn signal(&self) -> Option<Signal> {
        match self.0.load(Ordering::Relaxed) {
            0 => None,
            n if n == Signal::Interrupt.number() => Some(Signal::Interrupt),
            _ => Some(Signal::Terminate),
        }
    }

    pub fn is_set(&self) -> bool {
        self.signal().is_some()
    }

    /// Records `sig`; false if a signal had already been received.
    fn record(&self, sig: Signal) -> bool {
        self.0
            .compare_exchange(0, sig.number(), Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    }
}

/// Spawns the task that waits for signals: on the first it records it and
/// calls `on_first` (which asks the work to stop); on a second it ends the
/// process at once with the signal's exit code.
pub fn watch_signals(
    rt: &tokio::runtime::Handle,
    on_first: impl Fn(Signal) + Send + 'static,
) -> Stop {
    let stop = Stop::default();
    let s = stop.clone();
    let registered = {
        let _guard = rt.enter();
        Signals::register()
    };
    let Ok(mut signals) = registered else {
        return stop;
    };
    rt.spawn(async move {
        loop {
            let sig = signals.next().await;
            if s.record(sig) {
                on_first(sig);
            } else {
                crate::progress::restore_terminal();
                std::process::exit(i32::from(sig.exit_code()));
            }
        }
    });
    stop
}

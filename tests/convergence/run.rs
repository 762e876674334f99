//! Running one operation sequence against the real binary in one mode,
//! waiting for the replica to equal the source, and shrinking a failing
//! sequence to a short one.

use super::ops::{apply, generate, GenOptions, Op};
use crate::common::{sigkill, tree_diffs, Proc, Server, ServerBuilder};
use std::ffi::OsStr;
use std::time::{Duration, Instant};

/// How replica runs during a case.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `replica watch SRC DEST`.
    WatchLocal,
    /// `replica serve` + `replica watch SRC replica://…` over TLS.
    WatchRemote,
    /// `replica sync SRC DEST --every 1s`.
    EveryLocal,
    /// `replica serve` + `replica sync SRC replica://… --every 1s` over TLS.
    EveryRemote,
}

impl Mode {
    pub const ALL: [Mode; 4] = [
        Mode::WatchLocal,
        Mode::WatchRemote,
        Mode::EveryLocal,
        Mode::EveryRemote,
    ];

    fn remote(self) -> bool {
        matches!(self, Mode::WatchRemote | Mode::EveryRemote)
    }

    pub fn parse(s: &str) -> Option<Mode> {
        Some(match s {
            "watch-local" => Mode::WatchLocal,
            "watch-remote" => Mode::WatchRemote,
            "every-local" => Mode::EveryLocal,
            "every-remote" => Mode::EveryRemote,
            _ => return None,
        })
    }
}

/// How long a quiet tool may take to make the replica equal the source.
const SETTLE: Duration = Duration::from_secs(60);

/// One running case: the source, the replica, and the processes.
struct Rig {
    mode: Mode,
    src: tempfile::TempDir,
    dst: tempfile::TempDir,
    state: tempfile::TempDir,
    server: Option<Server>,
    client: Option<Proc>,
    /// Output of processes killed along the way.
    log: String,
}

impl Rig {
    fn new(mode: Mode) -> Rig {
        Rig {
            mode,
            src: tempfile::tempdir().unwrap(),
            dst: tempfile::tempdir().unwrap(),
            state: tempfile::tempdir().unwrap(),
            server: None,
            client: None,
            log: String::new(),
        }
    }

    fn start_server(&mut self, how: ServerBuilder) {
        self.server = Some(how.start());
    }

    fn start_client(&mut self) {
        let src = self.src.path().as_os_str().to_owned();
        let target = match &self.server {
            Some(s) => s.target(),
            None => self.dst.path().display().to_string(),
        };
        let mut args: Vec<String> = match self.mode {
            Mode::WatchLocal | Mode::WatchRemote => {
                vec!["watch".into(), "--rescan-every".into(), "1h".into()]
            }
            Mode::EveryLocal | Mode::EveryRemote => {
                vec!["sync".into(), "--every".into(), "1s".into()]
            }
        };
        args.extend([
            "--state-dir".into(),
            self.state.path().display().to_string(),
        ]);
        if let Some(s) = &self.server {
            args.extend(s.client_args());
        }
        // `REPLICA_CONVERGE_PAGE=N`: full passes go as pages of N entries
        // (`bench/converge --page-entries N`).
        if let Ok(n) = std::env::var("REPLICA_CONVERGE_PAGE") {
            args.extend(["--page-entries".into(), n]);
        }
        let mut all: Vec<&OsStr> = args.iter().map(OsStr::new).collect();
        all.insert(1, &src);
        all.insert(2, OsStr::new(&target));
        self.client = Some(Proc::spawn(&all));
    }

    fn start(&mut self) {
        if self.mode.remote() {
            self.start_server(Server::builder(self.dst.path()));
        }
        self.start_client();
    }

    fn kill_client(&mut self) {
        if let Some(mut c) = self.client.take() {
            sigkill(&mut c);
            self.log
                .push_str(&format!("=== client killed\n{}", c.describe()));
        }
        self.start_client();
    }

    fn kill_server(&mut self) {
        let Some(s) = self.server.take() else { return };
        let out = format!("=== server killed\n{}", s.proc.describe());
        let again = s.kill_for_restart();
        self.log.push_str(&out);
        self.start_server(again);
    }

    fn describe(&self) -> String {
        let mut s = self.log.clone();
        if let Some(c) = &self.client {
            s.push_str(&format!("=== client\n{}", c.describe()));
        }
        if let Some(sv) = &self.server {
            s.push_str(&format!("=== server\n{}", sv.proc.describe()));
        }
        s
    }
}

/// Runs `ops` in `mode`; `Err` holds the differences left once the tool had
/// `SETTLE` to converge, and the processes' output.
pub fn run_case(mode: Mode, ops: &[Op]) -> Result<(), String> {
    let mut rig = Rig::new(mode);
    let mut started = false;
    for op in ops {
        match op {
            Op::Start => {
                rig.start();
                started = true;
            }
            Op::Pause { ms } => std::thread::sleep(Duration::from_millis(*ms)),
            Op::KillClient if started => rig.kill_client(),
            Op::KillServer if started => rig.kill_server(),
            op => apply(rig.src.path(), op),
        }
    }
    if !started {
        rig.start();
    }
    let end = Instant::now() + SETTLE;
    let mut pause = Duration::from_millis(10);
    loop {
        let diffs = tree_diffs(rig.src.path(), rig.dst.path(), &[]);
        if diffs.is_empty() {
            return Ok(());
        }
        if Instant::now() >= end {
            let mut shown: Vec<String> = diffs.into_iter().take(20).collect();
            shown.push(String::new());
            return Err(format!(
                "{mode:?}: the replica still differs {SETTLE:?} after the last operation:\n  {}{}",
                shown.join("\n  "),
                tail(&rig.describe(), 6000)
            ));
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(200));
    }
}

fn tail(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut at = s.len() - max;
    while !s.is_char_boundary(at) {
        at += 1;
    }
    format!("[… {} bytes of output cut …]\n{}", at, &s[at..])
}

/// The operations of a generated case in `mode`.
/// `REPLICA_CONVERGE_KILLS=0` leaves the processes alone (a killed watch
/// restarts with a full pass, which repairs what events missed).
pub fn case(seed: u64, ops: usize, mode: Mode) -> Vec<Op> {
    let kills = std::env::var("REPLICA_CONVERGE_KILLS").map_or(true, |v| v != "0");
    generate(
        seed,
        GenOptions {
            ops,
            kill_client: kills,
            kill_server: kills && mode.remote(),
        },
    )
}

/// Shrinks a failing sequence: drops chunks of operations, halving the
/// chunk size, as long as the case still fails, within `budget`.
pub fn shrink(mode: Mode, ops: Vec<Op>, budget: Duration) -> (Vec<Op>, String) {
    let end = Instant::now() + budget;
    let mut best = ops;
    let mut why = String::new();
    let mut chunk = best.len() / 2;
    while chunk >= 1 && Instant::now() < end {
        let mut i = 0;
        let mut progressed = false;
        while i < best.len() && Instant::now() < end {
            let cut: Vec<Op> = best
                .iter()
                .enumerate()
                .filter(|(j, op)| !(*j >= i && *j < i + chunk && op.removable()))
                .map(|(_, op)| op.clone())
                .collect();
            if cut.len() < best.len() {
                if let Err(e) = run_case(mode, &cut) {
                    best = cut;
                    why = e;
                    progressed = true;
                    continue;
                }
            }
            i += chunk;
        }
        if !progressed {
            chunk /= 2;
        }
    }
    (best, why)
}

/// Runs seeds `seeds` with `ops` operations each in `mode`; on the first
/// failure shrinks it (within `shrink_budget`) and panics with the seed,
/// the shortest failing sequence found and the differences.
pub fn check_seeds(
    mode: Mode,
    seeds: impl IntoIterator<Item = u64>,
    ops: usize,
    shrink_budget: Duration,
) {
    for seed in seeds {
        let case_ops = case(seed, ops, mode);
        if let Err(first) = run_case(mode, &case_ops) {
            let (short, why) = shrink(mode, case_ops.clone(), shrink_budget);
            let why = if why.is_empty() { first.clone() } else { why };
            panic!(
                "divergence: seed {seed}, mode {mode:?}, {ops} operations \
                 (rerun: REPLICA_CONVERGE_SEEDS={seed} REPLICA_CONVERGE_OPS={ops} \
                 REPLICA_CONVERGE_MODES={} cargo test --test convergence -- --ignored --nocapture long_run)\n\
                 shortest failing sequence found ({} of {} operations):\n{}\n\
                 first failure:\n{first}\n\nshortest failure:\n{why}",
                mode_name(mode),
                short.len(),
                case_ops.len(),
                short
                    .iter()
                    .map(|o| format!("    {o:?},"))
                    .collect::<Vec<_>>()
                    .join("\n")
            );
        }
        eprintln!("seed {seed} ({mode:?}, {ops} operations): converged");
    }
}

pub fn mode_name(m: Mode) -> &'static str {
    match m {
        Mode::WatchLocal => "watch-local",
        Mode::WatchRemote => "watch-remote",
        Mode::EveryLocal => "every-local",
        Mode::EveryRemote => "every-remote",
    }
}

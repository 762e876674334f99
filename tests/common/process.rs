//! Running the binary: one-shot runs (`replica sync`, anything) collected
//! into a [`Run`], and long-running children ([`Proc`]) whose output is
//! drained continuously.

use super::output::{op_lines, parse_summary, summary_number, OpLine, Summary};
use super::{bin, poll_until, DEADLINE};
use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What one `replica sync` run did.
pub struct Run {
    pub output: Output,
    /// Exit code; `None` if killed by a signal.
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn code(&self) -> Option<i32> {
        self.output.status.code()
    }

    /// `content_sent=N` from the pass's totals line.
    pub fn content_sent(&self) -> u64 {
        summary_number(&self.stdout, "content_sent")
            .unwrap_or_else(|| panic!("no summary line in stdout:\n{}", self.stdout))
    }

    pub fn summary(&self) -> Summary {
        let line = self
            .stdout
            .lines()
            .rev()
            .find(|l| l.contains(" totals: "))
            .unwrap_or_else(|| panic!("no totals line\n{}", self.describe()));
        parse_summary(line)
    }

    /// Operation lines from stdout and stderr (errors go to stderr).
    pub fn ops(&self) -> Vec<OpLine> {
        let mut v = op_lines(&self.stdout);
        v.extend(op_lines(&self.stderr));
        v
    }

    /// Paths reported with this op.
    pub fn paths(&self, op: &str) -> Vec<String> {
        let mut v: Vec<String> = self
            .ops()
            .into_iter()
            .filter(|o| o.op == op)
            .map(|o| o.path)
            .collect();
        v.sort();
        v
    }

    pub fn describe(&self) -> String {
        format!(
            "status: {:?}\n--- stdout\n{}--- stderr\n{}",
            self.output.status, self.stdout, self.stderr
        )
    }

    #[track_caller]
    pub fn assert_code(&self, code: i32) -> &Self {
        assert_eq!(
            self.code(),
            Some(code),
            "unexpected exit code\n{}",
            self.describe()
        );
        self
    }

    /// Exit 0 and no error lines.
    #[track_caller]
    pub fn assert_ok(&self) -> &Self {
        self.assert_code(0);
        let errs: Vec<_> = self.ops().into_iter().filter(|o| o.op == "error").collect();
        assert!(
            errs.is_empty(),
            "error lines: {errs:?}\n{}",
            self.describe()
        );
        assert_eq!(self.summary().errors, 0, "{}", self.describe());
        self
    }
}

impl From<Output> for Run {
    fn from(output: Output) -> Self {
        Run {
            code: output.status.code(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
            output,
        }
    }
}

/// Runs `replica sync SRC TARGET --state-dir STATE EXTRA...` and waits.
/// The environment never points at a real state directory or token.
pub fn run_sync(src: &Path, target: &str, state: &Path, extra_args: &[&str]) -> Output {
    let mut cmd = Command::new(bin());
    cmd.arg("sync")
        .arg(src)
        .arg(target)
        .arg("--state-dir")
        .arg(state)
        .args(extra_args);
    cmd.env_remove("REPLICA_TOKEN")
        .env_remove("REPLICA_STATE_DIR")
        .env("NO_COLOR", "1");
    cmd.stdin(Stdio::null());
    cmd.output().expect("run replica sync")
}

/// Runs `replica ARGS...` (anything, e.g. a usage error case).
pub fn run_replica(args: &[&std::ffi::OsStr]) -> Run {
    let out = Command::new(bin())
        .args(args)
        .env_remove("REPLICA_TOKEN")
        .env_remove("REPLICA_STATE_DIR")
        .stdin(Stdio::null())
        .output()
        .expect("run replica");
    out.into()
}

/// A child process whose stdout and stderr are drained continuously (so it
/// never blocks on a full pipe) into buffers; killed on drop.
pub struct Proc {
    child: Child,
    stdout: Arc<Mutex<String>>,
    stderr: Arc<Mutex<String>>,
    lines: std::sync::mpsc::Receiver<String>,
    drains: Vec<std::thread::JoinHandle<()>>,
}

fn drain(
    r: impl Read + Send + 'static,
    buf: Arc<Mutex<String>>,
    lines: Option<std::sync::mpsc::Sender<String>>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut r = BufReader::new(r);
        let mut line = String::new();
        loop {
            line.clear();
            match r.read_line(&mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) => {
                    buf.lock().unwrap().push_str(&line);
                    if let Some(tx) = &lines {
                        let _ = tx.send(line.clone());
                    }
                }
            }
        }
    })
}

impl Proc {
    /// Spawns `replica ARGS...` without any ambient token or state dir.
    pub fn spawn(args: &[&std::ffi::OsStr]) -> Proc {
        let mut cmd = Command::new(bin());
        cmd.args(args)
            .env_remove("REPLICA_TOKEN")
            .env_remove("REPLICA_STATE_DIR");
        Proc::spawn_cmd(cmd)
    }

    /// Spawns a prepared command (its environment as set).
    pub fn spawn_cmd(mut cmd: Command) -> Proc {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn replica");
        let stdout = Arc::new(Mutex::new(String::new()));
        let stderr = Arc::new(Mutex::new(String::new()));
        let (tx, lines) = std::sync::mpsc::channel();
        let drains = vec![
            drain(child.stdout.take().unwrap(), stdout.clone(), Some(tx)),
            drain(child.stderr.take().unwrap(), stderr.clone(), None),
        ];
        Proc {
            child,
            stdout,
            stderr,
            lines,
            drains,
        }
    }

    /// Waits for a stdout line starting with `prefix`; returns the rest.
    pub fn wait_line(&mut self, prefix: &str) -> Option<String> {
        let end = Instant::now() + DEADLINE;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    if let Some(rest) = line.trim_end().strip_prefix(prefix) {
                        return Some(rest.to_string());
                    }
                }
                Err(_) => return None,
            }
        }
    }

    pub fn stdout(&self) -> String {
        self.stdout.lock().unwrap().clone()
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    pub fn describe(&self) -> String {
        format!("--- stdout\n{}--- stderr\n{}", self.stdout(), self.stderr())
    }

    /// Whether the process is still running.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL, then reap.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends SIGTERM (graceful shutdown).
    #[cfg(unix)]
    pub fn terminate(&self) {
        // SAFETY: plain kill(2) on our own child's pid.
        let rc = unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        assert_eq!(rc, 0, "kill: {}", std::io::Error::last_os_error());
    }

    /// Polls for the exit status until the deadline; once the process has
    /// exited, waits for the rest of its output to be read.
    pub fn wait_exit(&mut self, deadline: Duration) -> Option<std::process::ExitStatus> {
        let mut status = None;
        poll_until(deadline, || {
            status = self.child.try_wait().ok().flatten();
            status.is_some()
        });
        if status.is_some() {
            for d in self.drains.drain(..) {
                let _ = d.join();
            }
        }
        status
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `replica sync SRC TARGET --state-dir STATE [extra...]` in the
/// background (no ambient token or state directory).
pub fn spawn_sync(src: &Path, target: &str, state: &Path, extra: &[&str]) -> Child {
    Command::new(bin())
        .arg("sync")
        .arg(src)
        .arg(target)
        .arg("--state-dir")
        .arg(state)
        .args(extra)
        .env_remove("REPLICA_TOKEN")
        .env_remove("REPLICA_STATE_DIR")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn replica sync")
}

/// Waits for a child with a deadline (killing it and panicking past it)
/// and collects its output.
pub fn finish(mut child: Child, deadline: Duration) -> Run {
    let out = child.stdout.take().unwrap();
    let err = child.stderr.take().unwrap();
    let t_out = std::thread::spawn(move || read_all(out));
    let t_err = std::thread::spawn(move || read_all(err));
    let mut status = None;
    let done = poll_until(deadline, || {
        status = child.try_wait().unwrap();
        status.is_some()
    });
    if !done {
        let _ = child.kill();
        let _ = child.wait();
        let (o, e) = (t_out.join().unwrap(), t_err.join().unwrap());
        panic!(
            "replica did not finish within {deadline:?}\n--- stdout\n{}\n--- stderr\n{}",
            String::from_utf8_lossy(&o),
            String::from_utf8_lossy(&e)
        );
    }
    Run::from(Output {
        status: status.unwrap(),
        stdout: t_out.join().unwrap(),
        stderr: t_err.join().unwrap(),
    })
}

fn read_all(mut r: impl Read) -> Vec<u8> {
    let mut v = Vec::new();
    let _ = r.read_to_end(&mut v);
    v
}

/// One `replica sync` pass, run to completion.
pub fn sync(src: &Path, target: &str, state: &Path) -> Run {
    finish(spawn_sync(src, target, state, &[]), DEADLINE)
}

/// One `replica sync` pass against `server`.
pub fn sync_to(src: &Path, server: &super::Server, state: &Path) -> Run {
    let args = server.client_args();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    finish(spawn_sync(src, &server.target(), state, &args), DEADLINE)
}

/// Sends SIGKILL to a process and waits for it to be gone.
#[cfg(unix)]
pub fn sigkill(p: &mut Proc) {
    // SAFETY: plain kill(2) on our own child's pid.
    let rc = unsafe { libc::kill(p.pid() as libc::pid_t, libc::SIGKILL) };
    assert_eq!(rc, 0, "kill: {}", std::io::Error::last_os_error());
    assert!(
        p.wait_exit(Duration::from_secs(10)).is_some(),
        "the process survived SIGKILL"
    );
}

//! The one way to run `replica serve` in a test: [`Server::builder`]
//! (listen address, state directory, extra arguments), waiting for its
//! `listening on` line; killed on drop. TLS (the default) unless the
//! arguments hold `--insecure-plaintext`; `--min-free 0` unless they set
//! it (tests must not depend on the machine's disk).

use super::{Proc, DEADLINE};
use std::ffi::OsStr;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};

/// Where a server keeps its state.
pub enum StateDir {
    /// A temporary directory owned by the server (the default).
    Temp(tempfile::TempDir),
    /// A directory owned by the test.
    At(PathBuf),
}

impl StateDir {
    pub fn path(&self) -> &Path {
        match self {
            StateDir::Temp(t) => t.path(),
            StateDir::At(p) => p,
        }
    }
}

/// How to start a server.
pub struct ServerBuilder {
    dest: PathBuf,
    listen: String,
    state: Option<StateDir>,
    args: Vec<String>,
}

impl ServerBuilder {
    /// Listens on `addr` (default `127.0.0.1:0`).
    pub fn listen(mut self, addr: impl ToString) -> Self {
        self.listen = addr.to_string();
        self
    }

    pub fn state(mut self, state: StateDir) -> Self {
        self.state = Some(state);
        self
    }

    /// Keeps the state in `dir`, which the test owns.
    pub fn state_at(self, dir: &Path) -> Self {
        self.state(StateDir::At(dir.to_path_buf()))
    }

    pub fn args(mut self, extra: &[&str]) -> Self {
        self.args.extend(extra.iter().map(|a| a.to_string()));
        self
    }

    /// `--insecure-plaintext` (raw protocol tests).
    pub fn plaintext(self) -> Self {
        self.args(&["--insecure-plaintext"])
    }

    pub fn start(self) -> Server {
        let state = self
            .state
            .unwrap_or_else(|| StateDir::Temp(tempfile::tempdir().unwrap()));
        let mut args: Vec<&OsStr> = vec!["serve".as_ref(), self.dest.as_os_str()];
        args.extend(["--listen", &self.listen, "--state-dir"].map(OsStr::new));
        args.push(state.path().as_os_str());
        if !self.args.iter().any(|a| a == "--min-free") {
            args.extend(["--min-free", "0"].map(OsStr::new));
        }
        args.extend(self.args.iter().map(OsStr::new));
        let mut proc = Proc::spawn(&args);
        let Some(addr) = proc.wait_line("listening on ") else {
            panic!("replica serve did not start\n{}", proc.describe());
        };
        let addr = addr.trim().parse().expect("address in the listening line");
        // Earlier lines are already in the buffer.
        let fingerprint = proc.stdout().lines().find_map(|l| {
            l.trim()
                .strip_prefix("certificate fingerprint ")
                .map(str::to_string)
        });
        let plaintext = self.args.iter().any(|a| a == "--insecure-plaintext");
        assert_eq!(
            fingerprint.is_none(),
            plaintext,
            "unexpected server banner\n{}",
            proc.describe()
        );
        Server {
            proc,
            addr,
            dest: self.dest,
            state,
            args: self.args,
            fingerprint,
        }
    }
}

/// A running `replica serve`.
pub struct Server {
    pub proc: Proc,
    pub addr: SocketAddr,
    pub dest: PathBuf,
    pub state: StateDir,
    /// The extra arguments it was started with.
    pub args: Vec<String>,
    /// The certificate fingerprint the server printed (None: plaintext).
    pub fingerprint: Option<String>,
}

impl Server {
    pub fn builder(dest: &Path) -> ServerBuilder {
        ServerBuilder {
            dest: dest.to_path_buf(),
            listen: "127.0.0.1:0".into(),
            state: None,
            args: Vec::new(),
        }
    }

    /// A TLS server on a free port with a fresh state directory.
    pub fn start(dest: &Path) -> Server {
        Server::builder(dest).start()
    }

    /// [`Server::start`] with extra arguments (e.g. `--token`).
    pub fn start_with(dest: &Path, extra_args: &[&str]) -> Server {
        Server::builder(dest).args(extra_args).start()
    }

    /// Kills the server with SIGKILL; returns how to start it again on the
    /// same destination, state, address and arguments.
    #[cfg(unix)]
    pub fn kill_for_restart(self) -> ServerBuilder {
        let Server {
            mut proc,
            state,
            addr,
            dest,
            args,
            ..
        } = self;
        super::sigkill(&mut proc);
        ServerBuilder {
            dest,
            listen: addr.to_string(),
            state: Some(state),
            args,
        }
    }

    /// What a client needs to reach this server: `--fingerprint FP` for
    /// TLS, `--insecure-plaintext` otherwise.
    pub fn client_args(&self) -> Vec<String> {
        match &self.fingerprint {
            Some(fp) => vec!["--fingerprint".into(), fp.clone()],
            None => vec!["--insecure-plaintext".into()],
        }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// `replica://127.0.0.1:PORT`.
    pub fn target(&self) -> String {
        format!("replica://{}", self.addr)
    }

    /// Same as [`Server::target`].
    pub fn url(&self) -> String {
        self.target()
    }

    pub fn stdout(&self) -> String {
        self.proc.stdout()
    }

    pub fn stderr(&self) -> String {
        self.proc.stderr()
    }

    /// Everything the server printed so far (stdout, then stderr).
    pub fn output(&self) -> String {
        format!("{}{}", self.proc.stdout(), self.proc.stderr())
    }

    /// Number of sessions the server has finished (ended, failed or crashed).
    pub fn sessions_over(&self) -> usize {
        self.output()
            .lines()
            .filter(|l| {
                l.contains("session from")
                    && (l.ends_with(" ended")
                        || l.contains(" failed: ")
                        || l.contains(" crashed: ")
                        || l.contains("stopped for shutdown"))
            })
            .count()
    }

    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    /// SIGKILL, then reap.
    pub fn kill(&mut self) {
        self.proc.kill();
    }

    /// Whether the server process is still running.
    pub fn alive(&mut self) -> bool {
        self.proc.alive()
    }

    pub fn connect(&self) -> TcpStream {
        let s = TcpStream::connect(self.addr).expect("connect to the server");
        s.set_read_timeout(Some(DEADLINE)).unwrap();
        s.set_write_timeout(Some(DEADLINE)).unwrap();
        s
    }
}

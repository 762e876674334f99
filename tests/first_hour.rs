//! Issue 16, "a newcomer's first hour": one black-box test per rough edge,
//! driving the built binary on temporary directories and loopback sockets.
//! Terminal behaviour runs under a pseudo-terminal (`script` from
//! util-linux/bsdutils). Grouped as the issue is: the screen, mistakes
//! caught before they cost anything, stopping and failing.

mod common;

use common::{
    bin, build_tree, d, f, op_lines, parse_summary, poll_until, random_bytes, Proc, Server,
    DEADLINE,
};
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

// ---------------------------------------------------------------------------
// Helpers of this file
// ---------------------------------------------------------------------------

/// Runs `replica ARGS` with `dir` as working directory, no ambient token or
/// state, stdout and stderr piped (not a terminal).
fn replica_in(dir: &Path, args: &[&OsStr]) -> Output {
    Command::new(bin())
        .args(args)
        .current_dir(dir)
        .env_remove("REPLICA_TOKEN")
        .env_remove("REPLICA_STATE_DIR")
        .stdin(Stdio::null())
        .output()
        .expect("run replica")
}

fn os<S: AsRef<OsStr> + ?Sized>(s: &S) -> &OsStr {
    s.as_ref()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn describe(o: &Output) -> String {
    format!(
        "status {:?}\n--- stdout\n{}--- stderr\n{}",
        o.status,
        text(&o.stdout),
        text(&o.stderr)
    )
}

/// Runs `replica ARGS` on a pseudo-terminal (stdout and stderr both a
/// terminal of 120 columns) and returns everything it drew.
fn on_terminal(args: &[&str]) -> (Option<i32>, String) {
    let quoted: Vec<String> = std::iter::once(bin().display().to_string())
        .chain(args.iter().map(|a| a.to_string()))
        .map(|a| format!("'{}'", a.replace('\'', "'\\''")))
        .collect();
    let cmd = format!("stty cols 120 rows 40 2>/dev/null; {}", quoted.join(" "));
    let out = Command::new("script")
        .args(["-qfec", &cmd, "/dev/null"])
        .env_remove("REPLICA_TOKEN")
        .env_remove("REPLICA_STATE_DIR")
        .env("TERM", "xterm")
        .stdin(Stdio::null())
        .output()
        .expect("run script (bsdutils/util-linux)");
    (out.status.code(), text(&out.stdout))
}

/// The lines printed for good on a terminal (not drawn in the progress
/// area): what is left of the screen once cursor movements and the lines
/// the bars clear are dropped, keeping lines that start with a word the
/// console prints (an operation, `summary:`, `… and`, `error`), after a
/// timestamp or not.
fn printed_lines(screen: &str) -> Vec<String> {
    screen
        .split(['\n', '\r'])
        .map(|l| {
            let mut out = String::new();
            let mut chars = l.chars().peekable();
            while let Some(c) = chars.next() {
                if c == '\u{1b}' {
                    if chars.peek() == Some(&'[') {
                        chars.next();
                        for c in chars.by_ref() {
                            if c.is_ascii_alphabetic() {
                                break;
                            }
                        }
                    }
                    continue;
                }
                out.push(c);
            }
            out.trim_end().to_string()
        })
        .filter(|l| {
            let mut words = l.split(' ');
            let mut word = words.next().unwrap_or("");
            if word.len() > 20 && word.as_bytes()[4] == b'-' {
                // A timestamp first (-v): judge by the next word.
                word = words.next().unwrap_or("");
            }
            common::OPS.contains(&word)
                || ["summary:", "totals:", "…", "error", "interrupted"].contains(&word)
        })
        .collect()
}

/// A source of `n` small files in a few directories.
fn many_files(root: &Path, n: usize) {
    let spec: Vec<_> = (0..n)
        .map(|i| {
            f(
                &format!("d{}/file-{i:05}.txt", i % 7),
                format!("content {i}\n"),
            )
        })
        .collect();
    build_tree(root, &spec);
}

/// Every `.replica-tmp-*` file below `root`.
fn temp_files(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            if e.file_name().to_string_lossy().starts_with(".replica-tmp-") {
                out.push(p.clone());
            }
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(p);
            }
        }
    }
    out
}

#[cfg(unix)]
fn send_signal(pid: u32, sig: libc::c_int) {
    // SAFETY: plain kill(2) on our own child's pid.
    let rc = unsafe { libc::kill(pid as libc::pid_t, sig) };
    assert_eq!(rc, 0, "kill: {}", std::io::Error::last_os_error());
}

/// The `summary:` line of a text (without its timestamp).
fn summary_of(out: &str) -> String {
    let line = out
        .lines()
        .rev()
        .find(|l| l.contains(" summary: "))
        .unwrap_or_else(|| panic!("no summary line in\n{out}"));
    line[line.find("summary: ").unwrap()..].to_string()
}

// ---------------------------------------------------------------------------
// The screen
// ---------------------------------------------------------------------------

/// On a terminal, a sync of many files prints no `created` line above the
/// bar (a live window shows the recent ones), then the summary; the log
/// file, a console that is not a terminal, and `-v` still get every line.
#[test]
fn terminal_shows_a_window_of_operations_not_every_line() {
    let t = tempfile::tempdir().unwrap();
    let (src, state) = (t.path().join("src"), t.path().join("state"));
    many_files(&src, 400);
    let log = t.path().join("ops.log");
    let dst = t.path().join("dst");
    let (code, screen) = on_terminal(&[
        "sync",
        src.to_str().unwrap(),
        dst.to_str().unwrap(),
        "--state-dir",
        state.to_str().unwrap(),
        "--log-file",
        log.to_str().unwrap(),
    ]);
    assert_eq!(code, Some(0), "{screen}");
    let printed = printed_lines(&screen);
    let ops: Vec<_> = printed.iter().filter(|l| l.contains(" created ")).collect();
    assert!(
        ops.is_empty(),
        "operation lines printed on the terminal: {ops:?}"
    );
    assert!(
        printed
            .iter()
            .any(|l| l.starts_with("summary: 407 created")),
        "no summary: {printed:?}"
    );
    let logged = std::fs::read_to_string(&log).unwrap();
    assert_eq!(
        op_lines(&logged)
            .iter()
            .filter(|o| o.op == "created")
            .count(),
        407,
        "{logged}"
    );

    // Not a terminal: every line, as before.
    let dst2 = t.path().join("dst2");
    let piped = replica_in(
        t.path(),
        &[
            os("sync"),
            src.as_os_str(),
            dst2.as_os_str(),
            os("--state-dir"),
            state.as_os_str(),
        ],
    );
    let out = text(&piped.stdout);
    assert_eq!(op_lines(&out).len(), 408, "{}", describe(&piped));

    // -v on a terminal: every line too.
    let dst3 = t.path().join("dst3");
    let (code, screen) = on_terminal(&[
        "sync",
        src.to_str().unwrap(),
        dst3.to_str().unwrap(),
        "--state-dir",
        state.to_str().unwrap(),
        "-v",
    ]);
    assert_eq!(code, Some(0), "{screen}");
    let created = printed_lines(&screen)
        .iter()
        .filter(|l| l.contains(" created "))
        .count();
    // -v: every line, with its timestamp.
    assert_eq!(created, 407, "{screen}");
}

/// The bar's fields stay consistent: never more done than in total, never
/// more files done than planned, no speed or ETA with nothing done, and no
/// `sent` figure that could outrun `done`.
#[test]
fn progress_fields_are_consistent() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    many_files(&src, 300);
    build_tree(&src, &[f("big.bin", random_bytes(1, 3 << 20))]);
    let (code, screen) = on_terminal(&[
        "sync",
        src.to_str().unwrap(),
        t.path().join("dst").to_str().unwrap(),
        "--state-dir",
        t.path().join("state").to_str().unwrap(),
    ]);
    assert_eq!(code, Some(0), "{screen}");
    let frames: Vec<&str> = screen
        .split(['\r', '\n', '\u{1b}'])
        .filter(|s| s.contains(" of ") && s.contains("files "))
        .collect();
    assert!(!frames.is_empty(), "no bar drawn: {screen}");
    for frame in frames {
        assert!(!frame.contains(" sent"), "{frame}");
        let files = frame.split("files ").nth(1).unwrap();
        let files: Vec<u64> = files
            .split_whitespace()
            .next()
            .unwrap()
            .split('/')
            .map(|n| n.replace(',', "").parse().unwrap())
            .collect();
        assert!(files[0] <= files[1], "{frame}");
        if frame.contains(" 0 B of ") {
            assert!(!frame.contains("ETA") && !frame.contains("/s"), "{frame}");
        }
    }
}

/// The summary is short, grammatical and true to the mode: `1 file`,
/// nothing about a wire for a local sync, the wire for a remote one.
#[test]
fn summary_is_short_and_true_to_the_mode() {
    let t = tempfile::tempdir().unwrap();
    let (src, dst, state) = (
        t.path().join("src"),
        t.path().join("dst"),
        t.path().join("state"),
    );
    build_tree(&src, &[f("only.txt", "one file\n")]);
    let args = |target: &Path| {
        vec![
            os("sync").to_owned(),
            src.as_os_str().to_owned(),
            target.as_os_str().to_owned(),
            os("--state-dir").to_owned(),
            state.as_os_str().to_owned(),
        ]
    };
    let run = |a: Vec<std::ffi::OsString>| {
        let a: Vec<&OsStr> = a.iter().map(|s| s.as_os_str()).collect();
        replica_in(t.path(), &a)
    };
    let first = run(args(&dst));
    assert!(first.status.success(), "{}", describe(&first));
    let s = summary_of(&text(&first.stdout));
    assert!(s.starts_with("summary: 1 created"), "{s}");
    assert!(
        !s.contains("wire") && !s.contains("files") && s.contains("copied"),
        "{s}"
    );
    assert!(s.len() <= 100, "{} characters: {s}", s.len());
    let again = run(args(&dst));
    let s = summary_of(&text(&again.stdout));
    assert!(s.contains("up to date (1 file, "), "{s}");

    let server = Server::start_with(&t.path().join("remote"), &["--insecure-plaintext"]);
    let mut a = args(Path::new(&server.target()));
    a.push("--insecure-plaintext".into());
    let remote = run(a);
    assert!(remote.status.success(), "{}", describe(&remote));
    let out = text(&remote.stdout);
    let s = summary_of(&out);
    assert!(s.contains(" sent (") && s.contains("on the wire"), "{s}");
    let totals = out.lines().find(|l| l.contains(" totals: ")).unwrap();
    assert!(parse_summary(totals).wire_sent > 0, "{totals}");
}

/// A file renamed under `watch` is reported as moved, with no content
/// counted as sent or as rebuilt from the replica.
#[test]
fn a_watched_rename_is_a_rename() {
    let t = tempfile::tempdir().unwrap();
    let (src, dst) = (t.path().join("src"), t.path().join("dst"));
    build_tree(&src, &[f("big.bin", random_bytes(7, 2 << 20))]);
    let mut w = Proc::spawn(&[
        os("watch"),
        src.as_os_str(),
        dst.as_os_str(),
        os("--state-dir"),
        t.path().join("state").as_os_str(),
    ]);
    assert!(
        poll_until(DEADLINE, || w.stdout().contains(" summary: ")),
        "{}",
        w.describe()
    );
    std::fs::rename(src.join("big.bin"), src.join("renamed.bin")).unwrap();
    assert!(
        poll_until(DEADLINE, || dst.join("renamed.bin").exists()
            && w.stdout().matches(" summary: ").count() >= 2),
        "{}",
        w.describe()
    );
    let s = summary_of(&w.stdout());
    assert!(s.contains("1 moved"), "{s}\n{}", w.describe());
    assert!(
        !s.contains("deduplicated") && !s.contains("sent") && !s.contains("copied"),
        "{s}"
    );
    assert!(w.alive());
}

/// Names holding a newline, a tab or an escape never split or colour a
/// line: on the console and in the log file, each operation is one line.
#[test]
fn control_characters_are_escaped_in_every_line() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    build_tree(
        &src,
        &[
            f("two\nlines.txt", "a"),
            f("tab\there", "b"),
            f("esc\u{1b}[31mred", "c"),
        ],
    );
    let log = t.path().join("ops.log");
    let out = replica_in(
        t.path(),
        &[
            os("sync"),
            src.as_os_str(),
            t.path().join("dst").as_os_str(),
            os("--state-dir"),
            t.path().join("state").as_os_str(),
            os("--log-file"),
            log.as_os_str(),
        ],
    );
    assert!(out.status.success(), "{}", describe(&out));
    for (what, body) in [
        ("console", text(&out.stdout)),
        ("log file", std::fs::read_to_string(&log).unwrap()),
    ] {
        assert!(
            !body.contains('\u{1b}') && !body.contains('\t'),
            "{what}: {body}"
        );
        for line in body.lines() {
            assert!(
                line.len() > 20 && line.as_bytes()[4] == b'-',
                "{what}: a line without its timestamp (a name split it): {line:?}\n{body}"
            );
        }
        let paths: Vec<String> = op_lines(&body).into_iter().map(|o| o.path).collect();
        for p in ["two\\nlines.txt", "tab\\there", "esc\\u{1b}[31mred"] {
            assert!(paths.iter().any(|x| x == p), "{what}: {p} not in {paths:?}");
        }
    }
}

/// `replica status` does not count its own connection as a client.
#[test]
fn status_does_not_count_itself() {
    let t = tempfile::tempdir().unwrap();
    let server = Server::start_with(&t.path().join("dest"), &["--insecure-plaintext"]);
    let out = replica_in(
        t.path(),
        &[
            os("status"),
            os(&server.target()),
            os("--insecure-plaintext"),
            os("--json"),
        ],
    );
    assert!(out.status.success(), "{}", describe(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["connected_clients"], 0, "{v}");
}

// ---------------------------------------------------------------------------
// Mistakes caught before they cost anything
// ---------------------------------------------------------------------------

/// Asserts a usage error: exit 2, one line on stderr holding `needle`.
#[track_caller]
fn assert_usage(o: &Output, needle: &str) {
    assert_eq!(o.status.code(), Some(2), "{}", describe(o));
    let err = text(&o.stderr);
    assert_eq!(err.lines().count(), 1, "not one line: {}", describe(o));
    assert!(err.contains(needle), "{needle:?} missing: {}", describe(o));
}

/// Entries of a directory (to see that nothing was created).
fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn targets_that_look_remote_are_refused_with_the_fix() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    build_tree(&src, &[f("a", "a")]);
    let state = tempfile::tempdir().unwrap();
    for (typed, fix) in [
        (
            "http://127.0.0.1:7420",
            "did you mean replica://127.0.0.1:7420?",
        ),
        ("127.0.0.1:7420", "did you mean replica://127.0.0.1:7420?"),
        ("host:7420", "did you mean replica://host:7420?"),
        ("replica:/host:7420", "did you mean replica://host:7420?"),
    ] {
        for cmd in ["sync", "watch"] {
            let o = replica_in(
                t.path(),
                &[
                    os(cmd),
                    src.as_os_str(),
                    os(typed),
                    os("--state-dir"),
                    state.path().as_os_str(),
                ],
            );
            assert_usage(&o, fix);
            assert!(
                text(&o.stderr).contains(&format!("./{typed}")),
                "{}",
                describe(&o)
            );
        }
    }
    assert_eq!(entries(t.path()), ["src"]);
    assert!(entries(state.path()).is_empty());
    // ./NAME is a local directory of that name.
    let o = replica_in(
        t.path(),
        &[
            os("sync"),
            src.as_os_str(),
            os("./host:7420"),
            os("--state-dir"),
            state.path().as_os_str(),
        ],
    );
    assert!(o.status.success(), "{}", describe(&o));
    assert!(t.path().join("host:7420/a").is_file());
}

#[test]
fn a_malformed_fingerprint_is_refused_before_connecting() {
    let t = tempfile::tempdir().unwrap();
    build_tree(&t.path().join("src"), &[f("a", "a")]);
    // A listener that never answers: a client that connected would hang.
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let target = format!("replica://{}", l.local_addr().unwrap());
    for cmd in ["sync", "watch"] {
        let o = replica_in(
            t.path(),
            &[
                os(cmd),
                os("src"),
                os(&target),
                os("--fingerprint"),
                os("abc"),
                os("--state-dir"),
                os("state"),
            ],
        );
        assert_usage(&o, "--fingerprint abc");
    }
    let o = replica_in(
        t.path(),
        &[os("status"), os(&target), os("--fingerprint"), os("abc")],
    );
    assert_usage(&o, "--fingerprint abc");
    l.set_nonblocking(true).unwrap();
    assert!(l.accept().is_err(), "a client connected");
}

#[test]
fn a_missing_token_says_one_is_required_and_how_to_give_it() {
    let t = tempfile::tempdir().unwrap();
    build_tree(&t.path().join("src"), &[f("a", "a")]);
    let server = Server::start_with(
        &t.path().join("dest"),
        &["--insecure-plaintext", "--token", "s3cret"],
    );
    let o = replica_in(
        t.path(),
        &[
            os("sync"),
            os("src"),
            os(&server.target()),
            os("--insecure-plaintext"),
            os("--state-dir"),
            os("state"),
        ],
    );
    assert_eq!(o.status.code(), Some(1), "{}", describe(&o));
    let err = text(&o.stderr);
    assert!(
        err.contains("requires a token")
            && err.contains("--token")
            && err.contains("REPLICA_TOKEN"),
        "{}",
        describe(&o)
    );
    assert!(!err.contains("wrong token"), "{err}");
}

#[test]
fn zero_and_tiny_periods_are_refused() {
    let t = tempfile::tempdir().unwrap();
    build_tree(&t.path().join("src"), &[f("a", "a")]);
    for args in [
        ["sync", "src", "dst", "--every", "0s"],
        ["sync", "src", "dst", "--every", "10ms"],
        ["watch", "src", "dst", "--rescan-every", "0s"],
        ["watch", "src", "dst", "--rescan-every", "20ms"],
    ] {
        let mut a: Vec<&OsStr> = args.iter().map(os).collect();
        a.extend([os("--state-dir"), os("state")]);
        let o = replica_in(t.path(), &a);
        assert_usage(&o, &format!("{} ", args[3]));
        assert!(text(&o.stderr).contains("at least 1s"), "{}", describe(&o));
    }
    assert_eq!(entries(t.path()), ["src"]);
}

#[test]
fn a_dry_run_to_a_missing_destination_creates_nothing() {
    let t = tempfile::tempdir().unwrap();
    build_tree(
        &t.path().join("src"),
        &[f("a", "a"), d("sub"), f("sub/b", "b")],
    );
    let o = replica_in(
        t.path(),
        &[
            os("sync"),
            os("src"),
            os("new/dst"),
            os("--dry-run"),
            os("--state-dir"),
            os("state"),
        ],
    );
    assert!(o.status.success(), "{}", describe(&o));
    let out = text(&o.stdout);
    let created: Vec<_> = op_lines(&out)
        .into_iter()
        .filter(|o| o.op == "created")
        .map(|o| o.path)
        .collect();
    assert_eq!(created.len(), 3, "{out}");
    assert!(summary_of(&out).contains("dry run"), "{out}");
    assert!(
        !t.path().join("new").exists(),
        "the dry run created the destination"
    );
}

#[test]
fn serve_mistakes_name_the_thing_and_the_cause() {
    let t = tempfile::tempdir().unwrap();
    std::fs::write(t.path().join("afile"), "x").unwrap();
    let o = replica_in(t.path(), &[os("serve"), os("afile")]);
    assert_usage(&o, "afile: not a directory");

    let o = replica_in(
        t.path(),
        &[
            os("serve"),
            os("dest"),
            os("--listen"),
            os("no-such-host.invalid"),
        ],
    );
    assert_usage(&o, "--listen no-such-host.invalid: cannot resolve");
    let o = replica_in(
        t.path(),
        &[
            os("serve"),
            os("dest"),
            os("--log-file"),
            os("missing/dir/ops.log"),
        ],
    );
    assert_usage(
        &o,
        "--log-file missing/dir/ops.log: directory missing/dir does not exist",
    );
    assert_eq!(entries(t.path()), ["afile"]);

    // A host name is resolved.
    let server = Server::builder(&t.path().join("dest"))
        .listen("localhost:0")
        .plaintext()
        .start();
    assert!(server.addr.ip().is_loopback());

    // The same log-file check on the client side.
    build_tree(&t.path().join("src"), &[f("a", "a")]);
    let o = replica_in(
        t.path(),
        &[
            os("sync"),
            os("src"),
            os("dst"),
            os("--log-file"),
            os("nope/ops.log"),
        ],
    );
    assert_usage(&o, "--log-file nope/ops.log");
    assert!(!t.path().join("dst").exists());
}

#[test]
fn a_client_pointed_at_the_http_status_port_is_told_so() {
    let t = tempfile::tempdir().unwrap();
    build_tree(&t.path().join("src"), &[f("a", "a")]);
    let server = Server::start_with(
        &t.path().join("dest"),
        &["--insecure-plaintext", "--status-addr", "127.0.0.1:0"],
    );
    let status = server
        .stdout()
        .lines()
        .find_map(|l| l.strip_prefix("status on http://"))
        .map(|a| a.trim_end_matches("/status").to_string())
        .expect("status address");
    let o = replica_in(
        t.path(),
        &[
            os("sync"),
            os("src"),
            os(&format!("replica://{status}")),
            os("--insecure-plaintext"),
            os("--state-dir"),
            os("state"),
        ],
    );
    assert_eq!(o.status.code(), Some(1), "{}", describe(&o));
    let err = text(&o.stderr);
    assert!(err.contains("HTTP") && err.contains(&status), "{err}");
    assert!(!err.contains("frame"), "{err}");
}

// ---------------------------------------------------------------------------
// Stopping and failing
// ---------------------------------------------------------------------------

/// SIGINT or SIGTERM in the middle of a local sync: the pass stops, says
/// `interrupted` and what was done, leaves no temporary file (not even the
/// part of a large file, which nothing could resume), and exits 130 / 143.
#[cfg(unix)]
#[test]
fn a_signal_stops_a_sync_and_leaves_no_temporary_file() {
    for (sig, code) in [(libc::SIGINT, 130), (libc::SIGTERM, 143)] {
        let t = tempfile::tempdir().unwrap();
        let (src, dst) = (t.path().join("src"), t.path().join("dst"));
        many_files(&src, 3000);
        build_tree(&src, &[f("zz/big.bin", random_bytes(3, 48 << 20))]);
        let mut p = Proc::spawn(&[
            os("sync"),
            src.as_os_str(),
            dst.as_os_str(),
            os("--state-dir"),
            t.path().join("state").as_os_str(),
        ]);
        assert!(
            poll_until(DEADLINE, || p.stdout().contains(" created ")),
            "{}",
            p.describe()
        );
        send_signal(p.pid(), sig);
        let status = p.wait_exit(DEADLINE).expect("exits after the signal");
        assert_eq!(status.code(), Some(code), "{}", p.describe());
        let out = p.stdout();
        let line = out
            .lines()
            .find(|l| l.contains(" interrupted "))
            .unwrap_or_else(|| panic!("no interrupted line\n{}", p.describe()));
        assert!(line.contains("created"), "{line}");
        assert_eq!(temp_files(&dst), Vec::<PathBuf>::new(), "{}", p.describe());
        // The next pass completes the replica.
        let again = replica_in(
            t.path(),
            &[
                os("sync"),
                src.as_os_str(),
                dst.as_os_str(),
                os("--state-dir"),
                t.path().join("state").as_os_str(),
            ],
        );
        assert!(again.status.success(), "{}", describe(&again));
        common::assert_trees_equal(&src, &dst);
    }
}

/// A fake server on loopback answering every hello with `Refused { reason }`;
/// counts the connections it refused.
struct Refuser {
    addr: std::net::SocketAddr,
    seen: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl Refuser {
    fn start(reason: &'static str) -> Refuser {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let seen = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let n = seen.clone();
        std::thread::spawn(move || {
            for s in l.incoming() {
                let Ok(mut s) = s else { return };
                let _ = common::read_message(&mut s);
                let reply = replica::protocol::HelloReply::Refused {
                    reason: reason.into(),
                };
                let _ = common::send_msg(&mut s, &reply);
                n.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
        });
        Refuser { addr, seen }
    }

    fn seen(&self) -> usize {
        self.seen.load(std::sync::atomic::Ordering::SeqCst)
    }
}

fn spawn_watch(dir: &Path, target: &str, extra: &[&str]) -> Proc {
    build_tree(&dir.join("src"), &[f("a", "a")]);
    let (src, state) = (dir.join("src"), dir.join("state"));
    let mut args: Vec<&OsStr> = vec![
        os("watch"),
        src.as_os_str(),
        os(target),
        os("--state-dir"),
        state.as_os_str(),
    ];
    args.extend(extra.iter().map(os));
    Proc::spawn(&args)
}

/// Wrong token, a refused certificate, another protocol version: `watch`
/// says so and ends non-zero instead of retrying forever.
#[test]
fn watch_ends_on_permanent_errors() {
    let t = tempfile::tempdir().unwrap();
    let server = Server::start_with(&t.path().join("dest"), &["--token", "right"]);
    let wrong_fp = format!("blake3:{}", "ab".repeat(32));
    let version = Refuser::start(
        "protocol version 2 is not supported (this server speaks 3); use the same replica version on both sides",
    );
    let version_target = format!("replica://{}", version.addr);
    let cases: [(&str, Vec<&str>, &str); 3] = [
        (
            server.target().leak(),
            vec![
                "--token",
                "wrong",
                "--fingerprint",
                server.fingerprint.as_deref().unwrap(),
            ],
            "wrong token",
        ),
        (
            server.target().leak(),
            vec!["--token", "right", "--fingerprint", &wrong_fp],
            "presented certificate",
        ),
        (
            &version_target,
            vec!["--insecure-plaintext"],
            "protocol version",
        ),
    ];
    for (i, (target, extra, why)) in cases.into_iter().enumerate() {
        let dir = t.path().join(format!("case{i}"));
        let mut w = spawn_watch(&dir, target, &extra);
        let status = w
            .wait_exit(DEADLINE)
            .unwrap_or_else(|| panic!("watch still retrying ({why})\n{}", w.describe()));
        assert_eq!(status.code(), Some(1), "{}", w.describe());
        let err = w.stderr();
        assert!(
            err.contains(why) && err.contains("watch stopped"),
            "{why}: {}",
            w.describe()
        );
    }
    assert_eq!(version.seen(), 1, "retried a permanent refusal");
}

/// A busy server is a transient refusal: `watch` keeps retrying, and a
/// signal then ends it with exit 1 (its target was failing), not 0.
#[cfg(unix)]
#[test]
fn watch_retries_transient_refusals() {
    let t = tempfile::tempdir().unwrap();
    let busy = Refuser::start("/dest is in use by another client; try again when it is done");
    let mut w = spawn_watch(
        t.path(),
        &format!("replica://{}", busy.addr),
        &["--insecure-plaintext"],
    );
    assert!(
        poll_until(DEADLINE, || busy.seen() >= 2),
        "no retry\n{}",
        w.describe()
    );
    assert!(w.alive(), "{}", w.describe());
    send_signal(w.pid(), libc::SIGTERM);
    let status = w.wait_exit(DEADLINE).expect("watch stops on SIGTERM");
    assert_eq!(status.code(), Some(1), "{}", w.describe());
}

/// `sync` while a `watch` holds the server is told who holds it and since
/// when, and that a watch does not finish by itself.
#[test]
fn a_busy_server_says_who_holds_it_and_since_when() {
    let t = tempfile::tempdir().unwrap();
    let server = Server::start_with(&t.path().join("dest"), &["--insecure-plaintext"]);
    let w = spawn_watch(
        &t.path().join("w"),
        &server.target(),
        &["--insecure-plaintext"],
    );
    assert!(
        poll_until(DEADLINE, || w.stdout().contains(" summary: ")),
        "{}",
        w.describe()
    );
    build_tree(&t.path().join("src"), &[f("b", "b")]);
    let o = replica_in(
        t.path(),
        &[
            os("sync"),
            os("src"),
            os(&server.target()),
            os("--insecure-plaintext"),
            os("--state-dir"),
            os("state"),
        ],
    );
    assert_eq!(o.status.code(), Some(1), "{}", describe(&o));
    let err = text(&o.stderr);
    assert!(
        err.contains("already in use by another client (`replica watch` from 127.0.0.1:")
            && err.contains(", since ")
            && err.contains(" ago)")
            && err.contains("stop that watch"),
        "{}",
        describe(&o)
    );
}

/// SIGINT during a sync to a server: the client says `interrupted` and
/// exits 130 at once; the server discards the files that were in flight
/// (small files are simply sent again), leaving no temporary file.
#[cfg(unix)]
#[test]
fn a_signal_stops_a_remote_sync_and_the_server_cleans_up() {
    let t = tempfile::tempdir().unwrap();
    let (src, dest) = (t.path().join("src"), t.path().join("dest"));
    many_files(&src, 3000);
    let mut server = Server::start_with(&dest, &["--insecure-plaintext"]);
    let mut p = Proc::spawn(&[
        os("sync"),
        src.as_os_str(),
        os(&server.target()),
        os("--insecure-plaintext"),
        os("--state-dir"),
        t.path().join("state").as_os_str(),
    ]);
    assert!(
        poll_until(DEADLINE, || p.stdout().contains(" created ")),
        "{}",
        p.describe()
    );
    send_signal(p.pid(), libc::SIGINT);
    let status = p.wait_exit(DEADLINE).expect("exits after the signal");
    if status.code() == Some(0) {
        // The pass won the race; nothing to check but a clean replica.
        assert!(temp_files(&dest).is_empty());
        return;
    }
    assert_eq!(status.code(), Some(130), "{}", p.describe());
    assert!(
        p.stdout().contains(" interrupted (SIGINT): "),
        "{}",
        p.describe()
    );
    assert!(
        poll_until(DEADLINE, || {
            let log = server.stdout() + &server.stderr();
            log.contains(" failed: ") || log.contains(" ended")
        }),
        "{}",
        server.proc.describe()
    );
    assert!(
        poll_until(DEADLINE, || temp_files(&dest).is_empty()),
        "{:?}",
        temp_files(&dest)
    );
    // The server stopped by SIGTERM removes what it kept for resuming too.
    send_signal(server.proc.pid(), libc::SIGTERM);
    assert_eq!(
        server.proc.wait_exit(DEADLINE).and_then(|s| s.code()),
        Some(0)
    );
    assert!(!server.alive());
    assert!(temp_files(&dest).is_empty(), "{:?}", temp_files(&dest));
}

/// `watch` on a terminal (no progress bar) shows the first few operations
/// of a pass and how many more there were, not every line.
#[cfg(target_os = "linux")]
#[test]
fn watch_on_a_terminal_shows_the_first_operations_and_a_count() {
    use std::io::Read;
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    many_files(&src, 40);
    let cmd = format!(
        "stty cols 120 rows 40 2>/dev/null; exec '{}' watch '{}' '{}' --state-dir '{}'",
        bin().display(),
        src.display(),
        t.path().join("dst").display(),
        t.path().join("state").display()
    );
    let mut script = Command::new("script")
        .args(["-qfec", &cmd, "/dev/null"])
        .env_remove("REPLICA_TOKEN")
        .env_remove("REPLICA_STATE_DIR")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("run script");
    let screen = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    {
        let (mut out, screen) = (script.stdout.take().unwrap(), screen.clone());
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = out.read(&mut buf) {
                if n == 0 {
                    return;
                }
                screen
                    .lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
    }
    let shown = || screen.lock().unwrap().clone();
    // Ends the run whatever happens: SIGKILL to the watch (script's child,
    // thanks to exec), then to script itself.
    struct Stop(std::process::Child);
    impl Stop {
        fn watch_pid(&self) -> Option<u32> {
            let children = format!("/proc/{0}/task/{0}/children", self.0.id());
            std::fs::read_to_string(children)
                .ok()?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        }
    }
    impl Drop for Stop {
        fn drop(&mut self) {
            // Only while script runs (its pid cannot have been reused).
            let running = matches!(self.0.try_wait(), Ok(None));
            if let Some(pid) = self.watch_pid().filter(|_| running) {
                send_signal(pid, libc::SIGKILL);
            }
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut script = Stop(script);
    let summary = || shown().contains("summary: ");
    assert!(poll_until(DEADLINE, summary), "{}", shown());
    let pid = script.watch_pid().expect("replica under script");
    send_signal(pid, libc::SIGTERM);
    assert!(poll_until(DEADLINE, || matches!(
        script.0.try_wait(),
        Ok(Some(_))
    )));
    let printed = printed_lines(&shown());
    // 7 directories and 40 files created, the root's metadata: 48.
    let ops = printed
        .iter()
        .filter(|l| l.starts_with("created ") || l.starts_with("metadata "))
        .count();
    assert_eq!(ops, 10, "{printed:#?}");
    assert!(
        printed
            .iter()
            .any(|l| l.starts_with("… and 38 more operations (-v shows every one")),
        "{printed:#?}"
    );
}

//! Operator features: the status endpoint (`/status`, `/metrics`) and
//! `replica status`, console output without a terminal, `-q` and `-v`,
//! completions, help examples, `replica identity`, the listening safety
//! rails and `--allow-client`.

#![cfg(unix)]

mod common;

use common::*;
use common::{build_tree, f, random_bytes, run_replica, run_sync, Proc, Run};
use std::ffi::OsStr;
use std::path::Path;
use std::time::Duration;

fn sync_run(src: &Path, target: &str, state: &Path, extra: &[&str]) -> Run {
    run_sync(src, target, state, extra).into()
}

/// `replica identity --state-dir DIR`, checked.
fn identity(state: &Path) -> String {
    let r = run_replica(&[
        "identity".as_ref(),
        "--state-dir".as_ref(),
        state.as_os_str(),
    ]);
    r.assert_code(0);
    let fp = r.stdout.trim().to_string();
    assert!(
        fp.starts_with("blake3:") && fp.len() > "blake3:".len() + 32 && !fp.contains('\n'),
        "not a fingerprint: {fp:?}"
    );
    fp
}

#[test]
fn status_endpoint_metrics_and_status_command() {
    let dirs = Dirs::new();
    build_tree(
        &dirs.src,
        &[
            f("a.bin", random_bytes(1, 100)),
            f("d/b.bin", random_bytes(2, 100)),
            f("d/c.bin", random_bytes(3, 100)),
        ],
    );
    let server = Server::start_with(&dirs.dst, &["--status-addr", "127.0.0.1:0"]);
    let http = status_addr(&server.stdout())
        .unwrap_or_else(|| panic!("no `status on` line\n{}", server.proc.describe()));
    let fp = server.fingerprint.clone().unwrap();
    let cstate = tempfile::tempdir().unwrap();
    sync_run(
        &dirs.src,
        &server.target(),
        cstate.path(),
        &["--fingerprint", &fp],
    )
    .assert_ok();
    common::assert_trees_equal(&dirs.src, &dirs.dst);

    let (code, body) = http_get(http, "/status");
    assert!(code.contains(" 200"), "{code}\n{body}");
    let json: serde_json::Value =
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("bad JSON ({e}): {body}"));
    assert_eq!(json["replica_files"], 3, "{body}");
    assert_eq!(json["replica_bytes"], 300, "{body}");
    assert_eq!(json["bytes_received"], 300, "{body}");
    assert!(json["passes"].as_u64().unwrap() >= 1, "{body}");

    let (code, metrics) = http_get(http, "/metrics");
    assert!(code.contains(" 200"), "{code}\n{metrics}");
    for line in [
        "replica_replica_files 3",
        "replica_replica_bytes 300",
        "replica_received_bytes_total 300",
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "no `{line}` in /metrics:\n{metrics}"
        );
    }
    let (code, _) = http_get(http, "/nowhere");
    assert!(code.contains(" 404"), "{code}");

    // The same counts over the replica protocol (trust on first use here).
    let sstate = tempfile::tempdir().unwrap();
    let target = server.target();
    let status_args = |json: bool| {
        let mut a: Vec<&OsStr> = vec![
            "status".as_ref(),
            target.as_ref(),
            "--state-dir".as_ref(),
            sstate.path().as_os_str(),
        ];
        if json {
            a.push("--json".as_ref());
        }
        a
    };
    let r = run_replica(&status_args(true));
    r.assert_code(0);
    let j: serde_json::Value = serde_json::from_str(r.stdout.trim()).unwrap_or_else(|e| {
        panic!(
            "bad JSON from `replica status --json` ({e})\n{}",
            r.describe()
        )
    });
    for key in ["replica_files", "replica_bytes", "bytes_received"] {
        assert_eq!(j[key], json[key], "{key}\n{}", r.describe());
    }
    assert!(j["passes"].as_u64().unwrap() >= 1, "{}", r.describe());

    let r = run_replica(&status_args(false));
    r.assert_code(0);
    assert!(r.stdout.contains("3 files"), "{}", r.describe());
    assert!(
        serde_json::from_str::<serde_json::Value>(&r.stdout).is_err(),
        "without --json the output should be for people\n{}",
        r.describe()
    );
}

#[test]
fn no_progress_bars_without_a_terminal() {
    let dirs = Dirs::new();
    let spec: Vec<_> = (0..300u64)
        .map(|i| {
            f(
                &format!("d{}/file{i:03}.bin", i % 10),
                random_bytes(i, 200 + i as usize),
            )
        })
        .collect();
    build_tree(&dirs.src, &spec);
    let state = tempfile::tempdir().unwrap();
    let dst = dirs.dst.to_str().unwrap().to_string();
    for (i, extra) in [&[][..], &["-v"][..]].into_iter().enumerate() {
        let r = sync_run(&dirs.src, &dst, state.path(), extra);
        r.assert_ok();
        for (name, text) in [("stdout", &r.stdout), ("stderr", &r.stderr)] {
            assert!(
                !text.contains('\r'),
                "carriage return in {name}\n{}",
                r.describe()
            );
            assert!(
                !text.contains("\x1b["),
                "ANSI escape in {name}\n{}",
                r.describe()
            );
            assert!(
                !text.contains("scanning:"),
                "spinner text in {name}\n{}",
                r.describe()
            );
        }
        if i == 0 {
            // A change, so that the second run has work to show.
            std::fs::write(dirs.src.join("d0/file000.bin"), b"changed").unwrap();
        }
    }
    common::assert_trees_equal(&dirs.src, &dirs.dst);
}

#[test]
fn quiet_prints_only_the_summary_and_verbose_says_why() {
    let dirs = Dirs::new();
    build_tree(
        &dirs.src,
        &[
            f("a.txt", "a"),
            f("sub/b.txt", "bb"),
            f("sub/c.bin", random_bytes(5, 3000)),
        ],
    );
    let state = tempfile::tempdir().unwrap();
    let dst = dirs.dst.to_str().unwrap().to_string();

    let r = sync_run(&dirs.src, &dst, state.path(), &["-q"]);
    r.assert_ok();
    let lines: Vec<&str> = r.stdout.lines().collect();
    assert_eq!(
        lines.len(),
        2,
        "-q printed more than the summary (totals, then the short line)\n{}",
        r.describe()
    );
    assert!(lines[0].contains(" totals: "), "{}", r.describe());
    assert!(lines[1].contains(" summary: "), "{}", r.describe());
    assert_eq!(r.summary().ops, 5, "{}", r.describe());
    assert!(r.stderr.is_empty(), "{}", r.describe());
    common::assert_trees_equal(&dirs.src, &dirs.dst);

    // -v: every operation line says why, in brackets.
    let dirs = Dirs::new();
    build_tree(&dirs.src, &[f("a.txt", "a"), f("sub/b.txt", "bb")]);
    let dst = dirs.dst.to_str().unwrap().to_string();
    let r = sync_run(&dirs.src, &dst, state.path(), &["-v"]);
    r.assert_ok();
    let ops = r.ops();
    assert!(!ops.is_empty(), "{}", r.describe());
    for o in &ops {
        assert!(
            o.rest.contains(" [") && o.rest.ends_with(']'),
            "no reason on {o:?}\n{}",
            r.describe()
        );
    }
    for p in ["a.txt", "sub/b.txt"] {
        assert!(
            ops.iter()
                .any(|o| o.op == "created" && o.path == p && o.rest.contains("[new;")),
            "`created {p} [new; ...]` missing\n{}",
            r.describe()
        );
    }
    // Without -v the same kind of line carries no bracket.
    std::fs::write(dirs.src.join("c.txt"), "c").unwrap();
    let r = sync_run(&dirs.src, &dst, state.path(), &[]);
    r.assert_ok();
    let ops = r.ops();
    assert!(ops.iter().any(|o| o.path == "c.txt"), "{}", r.describe());
    assert!(
        ops.iter().all(|o| !o.rest.contains(" [")),
        "{}",
        r.describe()
    );
}

#[test]
fn completions_help_and_identity() {
    let r = run_replica(&["completions".as_ref(), "bash".as_ref()]);
    r.assert_code(0);
    assert!(r.stdout.contains("replica"), "{}", r.describe());
    assert!(r.stdout.contains("complete"), "{}", r.describe());

    for cmd in ["sync", "watch", "serve", "status"] {
        let r = run_replica(&[cmd.as_ref(), "--help".as_ref()]);
        r.assert_code(0);
        assert!(
            r.stdout.contains("Example"),
            "`{cmd} --help`\n{}",
            r.describe()
        );
    }

    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    let fp = identity(a.path());
    assert_eq!(identity(a.path()), fp, "the identity changed between runs");
    assert_ne!(identity(b.path()), fp, "two state dirs, one identity");
}

/// Spawns `replica serve DEST ARGS...` and returns its exit status and output.
fn serve_outcome(args: &[&str]) -> (Option<i32>, String) {
    let dest = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    let mut a: Vec<&OsStr> = vec!["serve".as_ref(), dest.path().as_os_str()];
    a.extend(["--state-dir".as_ref(), state.path().as_os_str()]);
    a.extend(["--min-free", "0"].map(OsStr::new));
    a.extend(args.iter().map(OsStr::new));
    let mut p = Proc::spawn(&a);
    let status = p.wait_exit(Duration::from_secs(15));
    let Some(status) = status else {
        panic!("serve {args:?} did not exit\n{}", p.describe());
    };
    // Let the drain threads catch up with the last output.
    common::poll_until(Duration::from_secs(2), || !p.stderr().is_empty());
    (status.code(), p.describe())
}

#[test]
fn serve_refuses_unsafe_listening() {
    let (code, out) = serve_outcome(&["--insecure-plaintext", "--listen", "0.0.0.0:0"]);
    assert_eq!(code, Some(2), "{out}");
    let (code, out) = serve_outcome(&[
        "--insecure-plaintext",
        "--listen",
        "0.0.0.0:0",
        "--token",
        "secret",
    ]);
    assert_eq!(code, Some(2), "plaintext on a public address\n{out}");
    assert!(out.contains("plaintext"), "{out}");
    assert!(!out.contains("listening on"), "{out}");

    let (code, out) = serve_outcome(&["--listen", "0.0.0.0:0"]);
    assert_eq!(code, Some(2), "no token on a public address\n{out}");
    assert!(out.contains("token"), "{out}");
    assert!(!out.contains("listening on"), "{out}");
}

#[test]
fn allow_client_admits_a_known_identity_without_the_token() {
    let dirs = Dirs::new();
    build_tree(
        &dirs.src,
        &[f("a.txt", "a"), f("sub/b.bin", random_bytes(9, 5000))],
    );
    let known = tempfile::tempdir().unwrap();
    let fp_known = identity(known.path());
    let server = Server::start_with(
        &dirs.dst,
        &["--token", "T0ken", "--allow-client", &fp_known],
    );
    let sfp = server.fingerprint.clone().unwrap();

    let r = sync_run(
        &dirs.src,
        &server.target(),
        known.path(),
        &["--fingerprint", &sfp],
    );
    r.assert_ok();
    common::assert_trees_equal(&dirs.src, &dirs.dst);

    std::fs::write(dirs.src.join("a.txt"), "changed by a stranger").unwrap();
    let stranger = tempfile::tempdir().unwrap();
    let r = sync_run(
        &dirs.src,
        &server.target(),
        stranger.path(),
        &["--fingerprint", &sfp],
    );
    r.assert_code(1);
    assert!(
        format!("{}{}", r.stdout, r.stderr).contains("requires a token"),
        "{}",
        r.describe()
    );
    assert_eq!(std::fs::read(dirs.dst.join("a.txt")).unwrap(), b"a");

    // The token still works for anyone.
    let r = sync_run(
        &dirs.src,
        &server.target(),
        stranger.path(),
        &["--fingerprint", &sfp, "--token", "T0ken"],
    );
    r.assert_ok();
    common::assert_trees_equal(&dirs.src, &dirs.dst);
}

#[test]
fn status_endpoint_reads_a_request_split_across_segments() {
    let dirs = Dirs::new();
    let server = Server::start_with(&dirs.dst, &["--status-addr", "127.0.0.1:0"]);
    let http = status_addr(&server.stdout()).expect("a `status on` line");
    let (code, body) = http_request(
        http,
        &[
            b"GET /sta",
            b"tus HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        ],
    );
    assert!(code.contains(" 200"), "{code}\n{body}");
    let json: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(json["replica_files"], 0);
}

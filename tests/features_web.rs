//! The live page on `--status-addr` (issue 17): `GET /` and its assets,
//! `/status` with throughput and recent operations after a known pass,
//! the bounds on requests (head size, head time, methods), and — where
//! Debian's `chromium` is installed — the page rendered by a real
//! headless browser with the pass's figures in it.

mod common;

use common::{assert_trees_equal, build_tree, f, random_bytes, run_sync, Run, Server, DEADLINE};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::Instant;

/// The `status on http://ADDR/status` address a server printed.
fn http_addr(server: &Server) -> SocketAddr {
    common::status_addr(&server.stdout())
        .unwrap_or_else(|| panic!("no `status on` line\n{}", server.stdout()))
}

/// Sends `request` as is; returns (head, body) of the answer ("" when the
/// server closed without one).
fn exchange(addr: SocketAddr, request: &[u8]) -> (String, String) {
    let mut s = TcpStream::connect(addr).expect("connect to the status address");
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    // The server may close while the request is still being written.
    let _ = s.write_all(request);
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf).into_owned();
    match text.split_once("\r\n\r\n") {
        Some((h, b)) => (h.to_string(), b.to_string()),
        None => (text, String::new()),
    }
}

fn get(addr: SocketAddr, path: &str) -> (String, String) {
    exchange(
        addr,
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// A server with a status address and a known pass behind it: 3 files,
/// 3,000 bytes, one of them a copy of another (dedup).
fn served_pass() -> (Server, SocketAddr, tempfile::TempDir, tempfile::TempDir) {
    let src = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    let same = random_bytes(7, 1000);
    build_tree(
        src.path(),
        &[
            f("photos/a.jpg", &same),
            f("photos/copy-of-a.jpg", &same),
            f("notes.txt", random_bytes(8, 1000)),
        ],
    );
    let server = Server::start_with(
        dst.path(),
        &["--min-free", "0", "--status-addr", "127.0.0.1:0"],
    );
    let addr = http_addr(&server);
    let args = server.client_args();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let run: Run = run_sync(src.path(), &server.target(), state.path(), &args).into();
    run.assert_ok();
    assert_trees_equal(src.path(), dst.path());
    (server, addr, src, dst)
}

#[test]
fn the_page_and_its_data_after_a_known_pass() {
    let (server, addr, _src, _dst) = served_pass();

    let (head, page) = get(addr, "/");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(header(&head, "content-type")
        .unwrap()
        .starts_with("text/html"));
    let csp = header(&head, "content-security-policy").expect("a content security policy");
    assert!(csp.contains("default-src 'none'"), "{csp}");
    assert!(page.contains("<script src=\"/app.js\">"), "{page}");
    for asset in ["/app.js", "/app.css"] {
        let (head, body) = get(addr, asset);
        assert!(head.starts_with("HTTP/1.1 200"), "{asset}: {head}");
        assert!(!body.is_empty() && !body.contains("https://"), "{asset}");
    }
    let (head, _) = get(addr, "/nowhere");
    assert!(head.starts_with("HTTP/1.1 404"), "{head}");

    // `/status` carries the pass, the throughput seconds and the operations.
    let (head, body) = get(addr, "/status");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let json: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(json["replica_files"], 3, "{body}");
    assert_eq!(json["replica_bytes"], 3000, "{body}");
    assert!(json["free_bytes"].as_u64().is_some(), "{body}");
    let recent: Vec<(String, String)> = json["recent"]
        .as_array()
        .expect("recent operations")
        .iter()
        .map(|o| {
            (
                o["op"].as_str().unwrap().to_string(),
                o["path"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    for path in ["notes.txt", "photos/a.jpg", "photos/copy-of-a.jpg"] {
        assert!(
            recent.iter().any(|(_, p)| p == path),
            "{path} not among {recent:?}"
        );
    }
    // The seconds add up to what was received, once the last one is taken.
    let received = json["bytes_received"].as_u64().unwrap();
    assert!(received >= 2000, "{body}");
    let mut summed = 0;
    let ok = common::poll_until(DEADLINE, || {
        let (_, body) = get(addr, "/status");
        let json: serde_json::Value = serde_json::from_str(&body).unwrap();
        summed = json["throughput"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["received"].as_u64().unwrap())
            .sum::<u64>();
        summed == received
    });
    assert!(
        ok,
        "throughput seconds sum to {summed}, received {received}"
    );
    drop(server);
}

#[test]
fn requests_are_bounded_in_size_time_and_method() {
    let dst = tempfile::tempdir().unwrap();
    let server = Server::start_with(
        dst.path(),
        &["--min-free", "0", "--status-addr", "127.0.0.1:0"],
    );
    let addr = http_addr(&server);

    // A head over 8 KiB gets no page.
    let big = format!(
        "GET /status HTTP/1.1\r\nHost: x\r\nX-Filler: {}\r\n\r\n",
        "a".repeat(16 * 1024)
    );
    let (head, _) = exchange(addr, big.as_bytes());
    assert!(!head.starts_with("HTTP/1.1 200"), "{head}");

    // Only GET and HEAD.
    let (head, _) = exchange(
        addr,
        b"POST /status HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}",
    );
    assert!(head.starts_with("HTTP/1.1 405"), "{head}");
    let (head, body) = exchange(
        addr,
        b"HEAD /status HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert!(
        head.starts_with("HTTP/1.1 200") && body.is_empty(),
        "{head}"
    );

    // A client that never finishes its head is dropped (5 s limit).
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    s.write_all(b"GET /status HTTP/1.1\r\n").unwrap();
    let started = Instant::now();
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    assert!(
        started.elapsed() < DEADLINE,
        "a stalled request was kept open"
    );
    assert!(
        !String::from_utf8_lossy(&buf).starts_with("HTTP/1.1 200"),
        "a stalled request was answered"
    );

    // And the endpoint still answers afterwards.
    let (head, _) = get(addr, "/status");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
}

/// Debian's chromium, if installed.
fn chromium() -> Option<&'static str> {
    ["chromium", "chromium-browser"].into_iter().find(|b| {
        std::process::Command::new(b)
            .arg("--version")
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    })
}

/// The page as a headless browser leaves it after its scripts ran.
fn rendered_dom(browser: &str, url: &str, profile: &Path) -> String {
    let out = std::process::Command::new(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--virtual-time-budget=5000",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg("--dump-dom")
        .arg(url)
        .output()
        .expect("run chromium");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn a_real_browser_renders_the_page_with_the_pass_in_it() {
    let Some(browser) = chromium() else {
        eprintln!(
            "skipped: no chromium on this machine (apt-get install chromium); \
             scripts/page-check.sh runs the same check and takes the screenshot"
        );
        return;
    };
    let (server, addr, _src, _dst) = served_pass();
    let profile = tempfile::tempdir().unwrap();
    let url = format!("http://{addr}/");
    let mut dom = String::new();
    let ok = common::poll_until(DEADLINE, || {
        dom = rendered_dom(browser, &url, profile.path());
        dom.contains("data-loaded=\"yes\"")
    });
    assert!(ok, "the page never loaded its data:\n{dom}");
    for text in [
        "3 files",
        "notes.txt",
        "photos/copy-of-a.jpg",
        "<svg",
        "waiting for clients",
    ] {
        assert!(
            dom.contains(text),
            "no {text:?} in the rendered page:\n{dom}"
        );
    }
    drop(server);
}

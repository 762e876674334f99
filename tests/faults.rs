//! Fault injection: processes killed mid-pass, a network cut, a source file
//! growing while it is sent, a full disk, and idle or garbage connections.
//! After every fault the replica must hold only whole files under their final
//! names, and the next pass must converge and leave no temporary files.

mod common;

use common::*;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// 300 files of 64 KiB in a few directories plus one large file.
fn big_source(src: &Path, small: usize, large: usize) -> u64 {
    let mut total = 0;
    for i in 0..small {
        let data = random_bytes(i as u64 + 1, 64 * 1024);
        write_file(src, &format!("d{}/f{i:03}.bin", i % 4), &data);
        total += data.len() as u64;
    }
    if large > 0 {
        let data = random_bytes(7777, large);
        write_file(src, "big.bin", &data);
        total += data.len() as u64;
    }
    total
}

/// Waits until at least one file sits under its final name in `dest`.
fn wait_for_published(dest: &Path) {
    assert!(
        poll_until(DEADLINE, || file_names(dest).iter().any(|k| !is_temp(k))),
        "no file was published in {}",
        dest.display()
    );
}

fn assert_converged(src: &Path, dest: &Path, run: &Run) {
    assert_eq!(
        run.code,
        Some(0),
        "the pass did not succeed:\n{}",
        run.describe()
    );
    assert_trees_equal(src, dest);
    let temps = temp_files(dest);
    assert!(
        temps.is_empty(),
        "temporary files left after a completed pass: {temps:?}"
    );
}

// ---------------------------------------------------------------------------
// 1. Server killed mid-pass
// ---------------------------------------------------------------------------

#[cfg(unix)]
#[test]
fn server_killed_mid_pass_leaves_whole_files_and_the_next_pass_converges() {
    let s = Scratch::new();
    big_source(&s.src, 300, 64 << 20);
    let client_state = s.path("client-state");
    let mut server = Server::builder(&s.dest).state_at(&s.state).start();
    let child = spawn_sync(&s.src, &server.url(), &client_state, &[]);

    wait_for_published(&s.dest);
    // SIGKILL: no destructor, no cleanup, no index commit.
    let rc = unsafe { libc::kill(server.pid() as libc::pid_t, libc::SIGKILL) };
    assert_eq!(rc, 0, "kill failed");
    server.kill(); // reap
    let temps_after_kill = temp_files(&s.dest);

    let run = finish(child, DEADLINE);
    assert_ne!(
        run.code,
        Some(0),
        "the pass finished before the server was killed; the test needs a bigger source"
    );
    assert_eq!(run.code, Some(1), "{}", run.describe());
    assert!(
        run.stderr.contains(&server.addr.to_string()),
        "the error does not name the server:\n{}",
        run.describe()
    );
    assert_published_files_whole(&s.src, &s.dest);
    eprintln!("temporary files after the kill: {}", temps_after_kill.len());

    let server = Server::builder(&s.dest).state_at(&s.state).start();
    let run = sync_to(&s.src, &server, &client_state);
    assert_converged(&s.src, &s.dest, &run);
}

// ---------------------------------------------------------------------------
// 2. Client killed mid-pass
// ---------------------------------------------------------------------------

#[test]
fn client_killed_mid_local_pass_then_rerun_converges() {
    let s = Scratch::new();
    big_source(&s.src, 200, 32 << 20);
    let mut child = spawn_sync(&s.src, &s.dest_str(), &s.state, &[]);
    wait_for_published(&s.dest);
    child.kill().unwrap(); // SIGKILL: the in-process server dies with it
    let status = child.wait().unwrap();
    assert!(!status.success(), "the pass finished before the kill");
    assert_published_files_whole(&s.src, &s.dest);
    eprintln!(
        "temporary files left by the killed local pass: {}",
        temp_files(&s.dest).len()
    );

    let run = sync(&s.src, &s.dest_str(), &s.state);
    assert_converged(&s.src, &s.dest, &run);
}

#[test]
fn client_killed_mid_remote_pass_server_recovers_and_rerun_converges() {
    let s = Scratch::new();
    big_source(&s.src, 200, 32 << 20);
    let client_state = s.path("client-state");
    let mut server = Server::builder(&s.dest).state_at(&s.state).start();
    let mut child = spawn_sync(&s.src, &server.url(), &client_state, &[]);
    wait_for_published(&s.dest);
    child.kill().unwrap();
    let status = child.wait().unwrap();
    assert!(!status.success(), "the pass finished before the kill");

    // The server notices the vanished client, ends the session and cleans up.
    assert!(
        poll_until(DEADLINE, || server.sessions_over() >= 1),
        "the server did not end the session of the killed client:\n{}",
        server.output()
    );
    assert!(server.alive(), "the server died with the client");
    // Only the large file may stay in part, kept to be resumed.
    let only_partials = || temp_files(&s.dest).iter().all(|t| t.ends_with(".big.bin"));
    assert!(
        poll_until(Duration::from_secs(5), only_partials),
        "the server left temporary files after the client vanished: {:?}",
        temp_files(&s.dest)
    );
    assert_published_files_whole(&s.src, &s.dest);

    let run = sync_to(&s.src, &server, &client_state);
    assert_converged(&s.src, &s.dest, &run);
}

/// A large file cut off halfway is resumed by the next pass: the part the
/// server already holds is not sent again, and the result is whole.
#[test]
fn large_file_cut_midway_resumes_where_it_stopped() {
    const SIZE: usize = 48 << 20;
    let s = Scratch::new();
    big_source(&s.src, 0, SIZE);
    let client_state = s.path("client-state");
    let server = Server::builder(&s.dest).state_at(&s.state).start();
    let mut child = spawn_sync(&s.src, &server.url(), &client_state, &[]);
    // Wait until the server holds a good part of it in its temporary file.
    let partial_len = || {
        temp_files(&s.dest)
            .iter()
            .filter_map(|t| std::fs::metadata(s.dest.join(t)).ok())
            .map(|m| m.len())
            .max()
            .unwrap_or(0)
    };
    assert!(
        poll_until(DEADLINE, || partial_len() >= 8 << 20),
        "the large file never reached 8 MiB on the server"
    );
    child.kill().unwrap();
    let status = child.wait().unwrap();
    assert!(!status.success(), "the pass finished before the kill");
    assert!(
        poll_until(DEADLINE, || server.sessions_over() >= 1),
        "the server did not end the session of the killed client:\n{}",
        server.output()
    );
    let kept = partial_len();
    assert!(kept >= 8 << 20, "the partial file was not kept ({kept} B)");
    assert!(
        !s.dest.join("big.bin").exists(),
        "published while incomplete"
    );

    let run = sync_to(&s.src, &server, &client_state);
    assert_converged(&s.src, &s.dest, &run);
    let sent = summary_number(&run.stdout, "content_sent").expect("summary");
    assert!(
        sent + (6 << 20) <= SIZE as u64,
        "the resumed pass sent {sent} B of {SIZE} (the server held at least 8 MiB):\n{}",
        run.describe()
    );
}

// ---------------------------------------------------------------------------
// 3. Network cut mid-transfer
// ---------------------------------------------------------------------------

/// A one-connection TCP relay that can cut the connection after a number of
/// client-to-server bytes.
struct Relay {
    addr: String,
    cut: Arc<AtomicBool>,
    up_bytes: Arc<AtomicU64>,
}

impl Relay {
    fn start(upstream: &str, cut_after: Option<u64>) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let cut = Arc::new(AtomicBool::new(false));
        let up_bytes = Arc::new(AtomicU64::new(0));
        let upstream = upstream.to_string();
        let (cut2, up2) = (cut.clone(), up_bytes.clone());
        std::thread::spawn(move || {
            let Ok((client, _)) = listener.accept() else {
                return;
            };
            let server = TcpStream::connect(&upstream).unwrap();
            let both = Arc::new((client.try_clone().unwrap(), server.try_clone().unwrap()));
            let cut_both = {
                let both = both.clone();
                let cut = cut2.clone();
                move || {
                    cut.store(true, Ordering::SeqCst);
                    let _ = both.0.shutdown(Shutdown::Both);
                    let _ = both.1.shutdown(Shutdown::Both);
                }
            };
            let up = {
                let (from, to) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                let cut_both = cut_both.clone();
                std::thread::spawn(move || pump(from, to, cut_after, &up2, cut_both))
            };
            let down_count = AtomicU64::new(0);
            pump(server, client, None, &down_count, cut_both);
            let _ = up.join();
        });
        Relay {
            addr,
            cut,
            up_bytes,
        }
    }

    fn url(&self) -> String {
        format!("replica://{}", self.addr)
    }
}

fn pump(
    mut from: TcpStream,
    mut to: TcpStream,
    cut_after: Option<u64>,
    count: &AtomicU64,
    cut_both: impl Fn(),
) {
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => {
                let _ = to.shutdown(Shutdown::Write);
                return;
            }
            Ok(n) => n,
        };
        let before = count.fetch_add(n as u64, Ordering::SeqCst);
        if let Some(limit) = cut_after {
            if before + n as u64 >= limit {
                let pass = (limit.saturating_sub(before)) as usize;
                let _ = to.write_all(&buf[..pass]);
                cut_both();
                return;
            }
        }
        if to.write_all(&buf[..n]).is_err() {
            let _ = from.shutdown(Shutdown::Read);
            return;
        }
    }
}

#[test]
fn network_cut_mid_transfer_fails_cleanly_and_rerun_sends_only_the_rest() {
    let s = Scratch::new();
    let total = big_source(&s.src, 160, 4 << 20);
    let client_state = s.path("client-state");
    let server = Server::builder(&s.dest).state_at(&s.state).start();

    let relay = Relay::start(&server.addr.to_string(), Some(total / 2));
    let run = finish(
        spawn_sync(&s.src, &relay.url(), &client_state, &[]),
        DEADLINE,
    );
    assert!(relay.cut.load(Ordering::SeqCst), "the relay never cut");
    assert_eq!(run.code, Some(1), "{}", run.describe());
    let errors: Vec<&str> = run
        .stderr
        .lines()
        .filter(|l| l.starts_with("replica: "))
        .collect();
    assert_eq!(
        errors.len(),
        1,
        "expected exactly one `replica: ...` error line:\n{}",
        run.describe()
    );
    assert!(
        errors[0].contains(&relay.addr),
        "the error does not name the peer {}: {}",
        relay.addr,
        errors[0]
    );
    assert!(!run.stderr.contains("panicked"), "{}", run.describe());
    let published = assert_published_files_whole(&s.src, &s.dest);
    assert!(published > 0, "nothing was published before the cut");

    // Let the server notice the cut before reconnecting.
    assert!(
        poll_until(DEADLINE, || server.sessions_over() >= 1),
        "the server did not end the cut session:\n{}",
        server.output()
    );
    let relay2 = Relay::start(&server.addr.to_string(), None);
    let run = finish(
        spawn_sync(&s.src, &relay2.url(), &client_state, &[]),
        DEADLINE,
    );
    assert_converged(&s.src, &s.dest, &run);
    let sent = run.content_sent();
    eprintln!(
        "total {total} B, published before the cut {published} B, resent {sent} B, relayed {} B",
        relay2.up_bytes.load(Ordering::SeqCst)
    );
    assert!(
        sent < total,
        "the rerun sent everything again ({sent} of {total} B)"
    );
    assert!(
        sent <= total - published,
        "the rerun resent content already published ({sent} B sent, {} B were missing)",
        total - published
    );
}

// ---------------------------------------------------------------------------
// 4. A source file growing during the sync
// ---------------------------------------------------------------------------

#[test]
fn file_appended_during_sync_only_ever_shows_prefixes_and_converges() {
    const TOTAL: usize = 12 << 20;
    const STEP: usize = 8 * 1024;
    let s = Scratch::new();
    write_file(&s.src, "static.txt", b"unchanging");
    let pattern = Arc::new(random_bytes(42, TOTAL));
    let grow = s.src.join("grow.bin");
    std::fs::write(&grow, &pattern[..STEP]).unwrap();

    let writing = Arc::new(AtomicBool::new(true));
    let writer = {
        let (pattern, writing, grow) = (pattern.clone(), writing.clone(), grow.clone());
        std::thread::spawn(move || {
            let mut f = std::fs::OpenOptions::new()
                .append(true)
                .open(&grow)
                .unwrap();
            let mut at = STEP;
            while at < TOTAL {
                f.write_all(&pattern[at..at + STEP]).unwrap();
                at += STEP;
                // Pacing of the writer, not a wait for a result.
                std::thread::sleep(Duration::from_millis(1));
            }
            writing.store(false, Ordering::SeqCst);
        })
    };

    let checking = Arc::new(AtomicBool::new(true));
    let violations = Arc::new(Mutex::new(Vec::<String>::new()));
    let checks = Arc::new(AtomicU64::new(0));
    let checker = {
        let (pattern, checking, violations, checks) = (
            pattern.clone(),
            checking.clone(),
            violations.clone(),
            checks.clone(),
        );
        let target = s.dest.join("grow.bin");
        std::thread::spawn(move || {
            while checking.load(Ordering::SeqCst) {
                if let Ok(data) = std::fs::read(&target) {
                    checks.fetch_add(1, Ordering::Relaxed);
                    if data.len() > TOTAL || data[..] != pattern[..data.len()] {
                        violations.lock().unwrap().push(format!(
                            "replica grow.bin of {} bytes is not a prefix of the source",
                            data.len()
                        ));
                    }
                }
                std::thread::sleep(Duration::from_millis(2));
            }
        })
    };

    let mut passes = 0;
    while writing.load(Ordering::SeqCst) || passes < 2 {
        let run = sync(&s.src, &s.dest_str(), &s.state);
        assert!(
            matches!(run.code, Some(0) | Some(1)),
            "a pass during the writes ended badly:\n{}",
            run.describe()
        );
        assert!(!run.stderr.contains("panicked"), "{}", run.describe());
        passes += 1;
    }
    writer.join().unwrap();
    let run = sync(&s.src, &s.dest_str(), &s.state);
    checking.store(false, Ordering::SeqCst);
    checker.join().unwrap();
    assert_converged(&s.src, &s.dest, &run);
    assert_eq!(std::fs::read(s.dest.join("grow.bin")).unwrap(), *pattern);
    let v = violations.lock().unwrap();
    assert!(v.is_empty(), "{v:?}");
    eprintln!(
        "{passes} passes during the writes, {} replica reads checked",
        checks.load(Ordering::Relaxed)
    );
}

// ---------------------------------------------------------------------------
// 5. Disk full
// ---------------------------------------------------------------------------

/// Unmounts a tmpfs when dropped.
struct Mount(std::path::PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let ok = std::process::Command::new("umount")
            .arg(&self.0)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(&self.0)
                .status();
        }
    }
}

fn mount_tmpfs(at: &Path, size: &str) -> Result<Mount, String> {
    std::fs::create_dir_all(at).unwrap();
    let out = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
        .arg(at)
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(Mount(at.to_path_buf()))
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
    }
}

/// A pass that cannot fit: exit 1, an error about space, the files and
/// symlinks of `before` untouched (content, mode, mtime, inode), only whole files published, no temporary file left.
fn expect_space_failure(src: &Path, dest: &Path, state: &Path, before: &Snapshot) {
    let run = sync(src, dest.to_str().unwrap(), state);
    assert_eq!(run.code, Some(1), "{}", run.describe());
    let all = format!("{}{}", run.stdout, run.stderr).to_lowercase();
    assert!(
        all.contains("no space left") || all.contains("not enough space"),
        "the error does not mention the space problem:\n{}",
        run.describe()
    );
    assert!(!all.contains("panicked"), "{}", run.describe());
    let after = snapshot(dest);
    for (k, v) in before {
        if v.kind == Kind::Dir {
            // A directory's mtime follows the source's (which changed).
            assert_eq!(
                after.get(k).map(|n| &n.kind),
                Some(&Kind::Dir),
                "{k} is gone"
            );
            continue;
        }
        assert_eq!(after.get(k), Some(v), "{k} changed during the failed pass");
    }
    assert_published_files_whole(src, dest);
    let temps = temp_files(dest);
    assert!(
        temps.is_empty(),
        "the failed pass left temporary files filling the disk: {temps:?}"
    );
}

#[cfg(target_os = "linux")]
#[test]
fn disk_full_fails_the_pass_keeps_the_replica_and_recovers() {
    let s = Scratch::new();
    let mnt = s.path("mnt");
    let guard = match mount_tmpfs(&mnt, "8m") {
        Ok(g) => g,
        Err(e) => {
            eprintln!("skipped: cannot mount tmpfs ({e})");
            return;
        }
    };
    let dest = mnt.join("dest");
    let dest_s = dest.to_str().unwrap().to_string();
    write_file(&s.src, "keep/a.bin", &random_bytes(1, 200 * 1024));
    write_file(&s.src, "keep/b.bin", &random_bytes(2, 300 * 1024));
    let run = sync(&s.src, &dest_s, &s.state);
    assert_converged(&s.src, &dest, &run);
    let before = snapshot(&dest);

    // One file larger than the whole disk, then many files that each fit
    // but together do not (these run into ENOSPC while being written).
    write_file(&s.src, "big.bin", &random_bytes(3, 20 << 20));
    expect_space_failure(&s.src, &dest, &s.state, &before);
    std::fs::remove_file(s.src.join("big.bin")).unwrap();
    for i in 0..24 {
        write_file(
            &s.src,
            &format!("many/m{i:02}.bin"),
            &random_bytes(100 + i, 1 << 20),
        );
    }
    expect_space_failure(&s.src, &dest, &s.state, &before);
    write_file(&s.src, "big.bin", &random_bytes(3, 20 << 20));

    let grown = std::process::Command::new("mount")
        .args(["-o", "remount,size=64m"])
        .arg(&mnt)
        .status()
        .is_ok_and(|s| s.success());
    if !grown {
        std::fs::remove_file(s.src.join("big.bin")).unwrap();
    }
    let run = sync(&s.src, &dest_s, &s.state);
    assert_converged(&s.src, &dest, &run);
    drop(guard);
}

/// Syncs 24 files of 1 MiB into an 8 MiB tmpfs (through `replica serve`
/// when `remote`): a write error on one file must be that file's error, the
/// pass going on to its summary (exit 1), the session not torn down.
fn write_error_on_one_file(remote: bool) {
    let s = Scratch::new();
    let mnt = s.path("mnt");
    let _guard = match mount_tmpfs(&mnt, "8m") {
        Ok(g) => g,
        Err(e) => {
            eprintln!("skipped: cannot mount tmpfs ({e})");
            return;
        }
    };
    let dest = mnt.join("dest");
    for i in 0..24 {
        write_file(
            &s.src,
            &format!("many/m{i:02}.bin"),
            &random_bytes(200 + i, 1 << 20),
        );
    }
    let server = remote.then(|| {
        Server::builder(&dest)
            .state_at(&s.path("server-state"))
            .start()
    });
    let target = match &server {
        Some(srv) => srv.url(),
        None => dest.to_str().unwrap().to_string(),
    };
    let run = sync(&s.src, &target, &s.state);
    let server_out = server.as_ref().map(|s| s.output()).unwrap_or_default();
    let why = format!("{}\n--- server\n{server_out}", run.describe());
    assert_eq!(run.code, Some(1), "{why}");
    assert!(
        run.stderr.contains("no space left"),
        "the client shows no per-file space error:\n{why}"
    );
    assert!(
        !run.stderr.contains("not asked for")
            && !run.stderr.contains("connection lost")
            && !server_out.contains("not asked for"),
        "the session was aborted instead of the file failing alone:\n{why}"
    );
    assert!(
        run.stdout.contains("summary: "),
        "the pass did not run to its summary:\n{why}"
    );
    assert_published_files_whole(&s.src, &dest);
    assert!(temp_files(&dest).is_empty(), "{:?}", temp_files(&dest));
}

#[cfg(target_os = "linux")]
#[test]
fn write_error_on_one_file_does_not_abort_a_local_session() {
    write_error_on_one_file(false);
}

#[cfg(target_os = "linux")]
#[test]
fn write_error_on_one_file_does_not_abort_a_remote_session() {
    write_error_on_one_file(true);
}

// ---------------------------------------------------------------------------
// 6. Idle, garbage and wrong-version connections
// ---------------------------------------------------------------------------

/// Reads until the server closes the connection (or `limit` passes);
/// returns what was read and when the close came.
fn read_until_closed(mut s: TcpStream, limit: Duration) -> (Vec<u8>, Option<Instant>) {
    let end = Instant::now() + limit;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return (got, None);
        }
        s.set_read_timeout(Some(left)).unwrap();
        match s.read(&mut buf) {
            Ok(0) => return (got, Some(Instant::now())),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                continue
            }
            Err(_) => return (got, Some(Instant::now())),
        }
    }
}

fn frame(payload: &[u8]) -> Vec<u8> {
    let mut v = (payload.len() as u32).to_le_bytes().to_vec();
    v.extend_from_slice(payload);
    v
}

/// The first frame of `bytes`, decoded as a hello reply.
fn hello_reply(bytes: &[u8]) -> Option<replica::protocol::HelloReply> {
    let (payload, _) = replica::protocol::frame::parse_frame(bytes).ok()??;
    replica::protocol::decode(payload).ok()
}

fn hello(version: u32, magic: [u8; 8]) -> Vec<u8> {
    frame(&replica::protocol::encode(&replica::protocol::Hello {
        magic,
        version,
        chunker: replica::chunk::CHUNKER_VERSION,
        token: String::new(),
        compress: replica::protocol::Compress::Off,
        client: "faults test".into(),
        purpose: replica::protocol::Purpose::Sync,
    }))
}

#[test]
fn idle_garbage_and_wrong_version_peers_are_dropped_while_others_are_served() {
    use replica::protocol::{HelloReply, MAGIC, PROTOCOL_VERSION};
    let s = Scratch::new();
    write_file(&s.src, "a.txt", b"served while others idle");
    let server = Server::builder(&s.dest)
        .state_at(&s.state)
        .plaintext()
        .start();
    let tls_dest = s.path("dest-tls");
    let tls_server = Server::builder(&tls_dest)
        .state_at(&s.path("state-tls"))
        .start();
    let started = Instant::now();

    // Slow-loris peers: silent ones (both transports), one stuck inside the
    // length prefix of its hello.
    let idle: Vec<(&str, TcpStream)> = vec![
        ("silent", TcpStream::connect(server.addr).unwrap()),
        (
            "silent (TLS server)",
            TcpStream::connect(tls_server.addr).unwrap(),
        ),
        ("half-frame", {
            let mut t = TcpStream::connect(server.addr).unwrap();
            t.write_all(&[200, 0]).unwrap();
            t
        }),
    ];
    let idle: Vec<_> = idle
        .into_iter()
        .map(|(what, t)| {
            (
                what,
                std::thread::spawn(move || read_until_closed(t, Duration::from_secs(20))),
            )
        })
        .collect();

    // Wrong protocol version: refused with a reason naming the version.
    let mut wrong = TcpStream::connect(server.addr).unwrap();
    wrong
        .write_all(&hello(PROTOCOL_VERSION + 41, MAGIC))
        .unwrap();
    let (bytes, closed) = read_until_closed(wrong, Duration::from_secs(5));
    assert!(
        closed.is_some(),
        "a wrong-version peer was not disconnected"
    );
    match hello_reply(&bytes) {
        Some(HelloReply::Refused { reason }) => assert!(
            reason.contains(&(PROTOCOL_VERSION + 41).to_string()),
            "refusal does not name the version: {reason}"
        ),
        other => panic!("expected a refusal, got {other:?}"),
    }

    // Wrong magic bytes.
    let mut magic = TcpStream::connect(server.addr).unwrap();
    magic
        .write_all(&hello(PROTOCOL_VERSION, *b"NOTREPLI"))
        .unwrap();
    let (bytes, closed) = read_until_closed(magic, Duration::from_secs(5));
    assert!(closed.is_some(), "a wrong-magic peer was not disconnected");
    assert!(
        matches!(hello_reply(&bytes), Some(HelloReply::Refused { .. })),
        "expected a refusal"
    );

    // A plaintext hello to the TLS server: refused with a readable reason.
    let mut plain = TcpStream::connect(tls_server.addr).unwrap();
    plain.write_all(&hello(PROTOCOL_VERSION, MAGIC)).unwrap();
    let (bytes, closed) = read_until_closed(plain, Duration::from_secs(5));
    assert!(
        closed.is_some(),
        "a plaintext peer of the TLS server was not disconnected"
    );
    match hello_reply(&bytes) {
        Some(HelloReply::Refused { reason }) => {
            assert!(reason.contains("TLS"), "unclear refusal: {reason}")
        }
        other => panic!("expected a refusal, got {other:?}"),
    }

    // Garbage: an HTTP request (its first bytes read as a huge frame length),
    // to both servers.
    for addr in [&server.addr, &tls_server.addr] {
        let mut http = TcpStream::connect(addr).unwrap();
        http.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let (_, closed) = read_until_closed(http, Duration::from_secs(5));
        assert!(
            closed.is_some(),
            "an HTTP peer of {addr} was not disconnected promptly"
        );
    }

    // Garbage inside a well-sized frame.
    let mut junk = TcpStream::connect(server.addr).unwrap();
    junk.write_all(&frame(&[0xff; 64])).unwrap();
    let (_, closed) = read_until_closed(junk, Duration::from_secs(5));
    assert!(
        closed.is_some(),
        "a garbage hello was not disconnected promptly"
    );

    // Meanwhile real clients are served, on both transports.
    let run = sync_to(&s.src, &server, &s.path("client-state"));
    assert_converged(&s.src, &s.dest, &run);
    let run = sync_to(&s.src, &tls_server, &s.path("client-state-tls"));
    assert_converged(&s.src, &tls_dest, &run);

    for (what, t) in idle {
        let (_, closed) = t.join().unwrap();
        let at = closed.unwrap_or_else(|| panic!("the {what} peer was never dropped"));
        let after = at.duration_since(started);
        assert!(
            after <= Duration::from_secs(16),
            "the {what} peer was dropped only after {after:?}"
        );
    }
    assert!(server.output().contains("connection dropped"));
}

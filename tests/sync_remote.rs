//! `replica sync SRC replica://127.0.0.1:PORT` against a real `replica serve`
//! on loopback, and hostile clients speaking to that server.

mod common;

use common::scenarios::{self, Env, Where};
use common::*;
use replica::protocol::{decode, ClientMsg, HelloReply, ServerMsg};
use replica::tree::{Entry, Kind as EntryKind, Timestamp};
use std::fs;
use std::io::Write;
use std::net::TcpStream;

// --- the shared scenarios, against a server ---------------------------------

#[cfg(unix)]
#[test]
fn initial_sync_into_empty() {
    scenarios::initial_sync_into_empty(Where::Remote);
}

#[cfg(unix)]
#[test]
fn sync_over_junk() {
    scenarios::sync_over_junk(Where::Remote);
}

#[cfg(unix)]
#[test]
fn second_sync_is_a_no_op() {
    scenarios::second_sync_is_a_no_op(Where::Remote);
}

#[test]
fn one_byte_change_updates() {
    scenarios::one_byte_change_updates(Where::Remote);
}

#[test]
fn replica_emptied_behind_its_back_is_rebuilt() {
    scenarios::replica_emptied_behind_its_back_is_rebuilt(Where::Remote);
}

#[test]
fn small_text_edits_send_little() {
    scenarios::small_text_edits_send_little(Where::Remote);
}

#[test]
fn fine_hash_collision_costs_a_round_not_the_file() {
    scenarios::fine_hash_collision_costs_a_round_not_the_file(Where::Remote);
}

#[cfg(unix)]
#[test]
fn deletions_propagate() {
    scenarios::deletions_propagate(Where::Remote);
}

#[cfg(unix)]
#[test]
fn absolute_symlinks() {
    scenarios::absolute_symlinks(Where::Remote);
}

#[test]
fn long_names() {
    scenarios::long_names(Where::Remote);
}

#[cfg(unix)]
#[test]
fn metadata_only_changes() {
    scenarios::metadata_only_changes(Where::Remote);
}

#[test]
fn pre_epoch_file_mtime() {
    scenarios::pre_epoch_file_mtime(Where::Remote);
}

#[cfg(unix)]
#[test]
fn pre_epoch_dir_and_symlink_mtimes() {
    scenarios::pre_epoch_dir_and_symlink_mtimes(Where::Remote);
}

#[test]
fn dedup_repeated_chunks_within_a_file() {
    scenarios::dedup_repeated_chunks_within_a_file(Where::Remote);
}

#[test]
fn dedup_from_a_removed_directory() {
    scenarios::dedup_from_a_removed_directory(Where::Remote);
}

#[test]
fn dedup_name_swap() {
    scenarios::dedup_name_swap(Where::Remote);
}

#[test]
fn dedup_within_one_pass() {
    scenarios::dedup_within_one_pass(Where::Remote);
}

#[test]
fn dedup_across_checkpoints_into_a_fresh_replica() {
    scenarios::dedup_across_checkpoints_into_a_fresh_replica(Where::Remote);
}

#[test]
fn dedup_copy_and_rename() {
    scenarios::dedup_copy_and_rename(Where::Remote);
}

#[test]
fn dedup_shared_content() {
    scenarios::dedup_shared_content(Where::Remote);
}

// --- some of them over plaintext (zstd-compressed, no TLS) -------------------------

#[cfg(unix)]
#[test]
fn plaintext_initial_sync_into_empty() {
    scenarios::initial_sync_into_empty(Where::RemotePlain);
}

#[cfg(unix)]
#[test]
fn plaintext_sync_over_junk() {
    scenarios::sync_over_junk(Where::RemotePlain);
}

#[test]
fn plaintext_dedup_copy_and_rename() {
    scenarios::dedup_copy_and_rename(Where::RemotePlain);
}

#[test]
fn plaintext_dedup_shared_content() {
    scenarios::dedup_shared_content(Where::RemotePlain);
}

// --- helpers -------------------------------------------------------------------

fn server(env: &Env) -> &Server {
    env.server.as_ref().expect("a remote env has a server")
}

/// A raw session the server welcomed (retrying while a previous session is
/// still being torn down).
fn welcomed(server: &Server) -> TcpStream {
    let mut got = None;
    let ok = poll_until(DEADLINE, || {
        let (s, reply) = raw_session(server, "");
        match reply {
            HelloReply::Welcome { .. } => {
                got = Some(s);
                true
            }
            _ => false,
        }
    });
    assert!(
        ok,
        "the server never welcomed a raw session\n{}",
        server.stderr()
    );
    got.unwrap()
}

/// The server, after whatever a hostile client did, still serves a normal sync.
#[track_caller]
fn still_serves(env: &Env) {
    let mut last = None;
    let ok = poll_until(DEADLINE, || {
        let r = env.sync(&[]);
        let good = r.code() == Some(0);
        last = Some(r);
        good
    });
    assert!(
        ok,
        "no successful sync after the bad client\n{}\n--- server stderr\n{}",
        last.unwrap().describe(),
        server(env).stderr()
    );
    env.assert_replica_exact();
}

fn entry(parent: u32, name: &str, kind: EntryKind) -> Entry {
    Entry {
        parent,
        name: name.into(),
        kind,
        mode: Some(0o755),
        mtime: Timestamp {
            secs: 1_000_000,
            nanos: 5,
        },
    }
}

// --- authentication ------------------------------------------------------------

#[test]
fn wrong_token_is_refused_and_nothing_is_written() {
    let env = Env::with_server_args(Where::Remote, &["--token", "s3cret"]);
    build_tree(&env.src, &[f("a", "a"), d("dir"), f("dir/b", "b")]);
    let area = snapshot(&env.area);
    let r = env.sync(&["--token", "wrong"]);
    r.assert_code(1);
    assert!(r.stderr.contains("wrong token"), "{}", r.describe());
    assert_untouched(&area, &snapshot(&env.area));
    let r = env.sync(&[]);
    r.assert_code(1);
    assert!(
        r.stderr.contains("requires a token") && r.stderr.contains("--token"),
        "no token at all: {}",
        r.describe()
    );
    assert_untouched(&area, &snapshot(&env.area));
    env.sync_ok(&["--token", "s3cret"]);
    env.assert_replica_exact();
}

#[test]
fn token_from_the_environment() {
    let env = Env::with_server_args(Where::Remote, &["--token", "s3cret"]);
    build_tree(&env.src, &[f("a", "a")]);
    let out = std::process::Command::new(bin())
        .arg("sync")
        .arg(&env.src)
        .arg(env.target())
        .arg("--state-dir")
        .arg(&env.state)
        .args(server(&env).client_args())
        .env("REPLICA_TOKEN", "s3cret")
        .output()
        .unwrap();
    Run::from(out).assert_ok();
    env.assert_replica_exact();
}

#[test]
fn bad_magic_and_version_are_refused() {
    let env = Env::new(Where::RemotePlain);
    let mut s = server(&env).connect();
    let mut h = hello("");
    h.magic = *b"NOTREPLI";
    send_msg(&mut s, &h).unwrap();
    let reply: HelloReply = decode(&read_message(&mut s).unwrap().unwrap()).unwrap();
    assert!(
        matches!(&reply, HelloReply::Refused { reason } if reason.contains("magic")),
        "{reply:?}"
    );
    assert!(closed_by_peer(&mut s));
    let mut s = server(&env).connect();
    let mut h = hello("");
    h.version = 999;
    send_msg(&mut s, &h).unwrap();
    let reply: HelloReply = decode(&read_message(&mut s).unwrap().unwrap()).unwrap();
    assert!(
        matches!(&reply, HelloReply::Refused { reason } if reason.contains("999")),
        "{reply:?}"
    );
    assert!(closed_by_peer(&mut s));
    build_tree(&env.src, &[f("a", "a")]);
    still_serves(&env);
}

// --- garbage on the wire ---------------------------------------------------------

#[test]
fn garbage_bytes_close_the_connection_and_the_server_goes_on() {
    let env = Env::new(Where::RemotePlain);
    build_tree(&env.src, &[f("a", "a"), d("dir"), f("dir/b", "b")]);
    let area = snapshot(&env.area);
    // An HTTP request: its first four bytes read as a huge length.
    let mut s = server(&env).connect();
    s.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .unwrap();
    assert!(closed_by_peer(&mut s), "connection left open after garbage");
    // A well-framed payload that is not a hello.
    let mut s = server(&env).connect();
    write_frame(&mut s, &random_bytes(3, 200)).unwrap();
    assert!(
        closed_by_peer(&mut s),
        "connection left open after an undecodable hello"
    );
    // Garbage right after a successful handshake.
    let mut s = welcomed(server(&env));
    write_frame(&mut s, &[0xFF; 64]).unwrap();
    assert!(
        closed_by_peer(&mut s),
        "session left open after an undecodable message"
    );
    assert_untouched(&area, &snapshot(&env.area));
    still_serves(&env);
}

#[test]
fn oversized_frame_length_closes_the_connection() {
    let env = Env::new(Where::RemotePlain);
    build_tree(&env.src, &[f("a", "a")]);
    // Before the handshake.
    let mut s = server(&env).connect();
    s.write_all(&[0xFF, 0xFF, 0xFF, 0xFF, 1, 2, 3, 4]).unwrap();
    assert!(
        closed_by_peer(&mut s),
        "connection left open after a 4 GiB length"
    );
    // Inside a session.
    let mut s = welcomed(server(&env));
    s.write_all(&[0xFF, 0xFF, 0xFF, 0xFF]).unwrap();
    assert!(
        closed_by_peer(&mut s),
        "session left open after a 4 GiB length"
    );
    still_serves(&env);
}

// --- hostile manifests -------------------------------------------------------------

/// Sends a manifest with one bad name (a directory holding a file); the
/// server must answer Fatal or close, and create nothing anywhere.
fn escape_attempt(server: &Server, bad: &str) {
    let mut s = welcomed(server);
    let manifest = vec![
        entry(0, "", EntryKind::Dir),
        entry(0, bad, EntryKind::Dir),
        entry(1, "escaped", EntryKind::File { size: 0 }),
        entry(1, "escaped-link", EntryKind::Symlink { target: "/".into() }),
    ];
    send_msg(&mut s, &ClientMsg::BeginPass(Default::default())).unwrap();
    send_msg(&mut s, &ClientMsg::Entries(manifest)).unwrap();
    send_msg(
        &mut s,
        &ClientMsg::EndManifest {
            opaque: vec![],
            partial: vec![],
        },
    )
    .unwrap();
    match read_message(&mut s) {
        Ok(None) | Err(_) => {} // closed
        Ok(Some(bytes)) => match decode::<ServerMsg>(&bytes) {
            Ok(ServerMsg::Fatal { reason }) => {
                assert!(!reason.is_empty());
                assert!(
                    closed_by_peer(&mut s),
                    "session left open after Fatal for {bad:?}"
                );
            }
            other => panic!("server accepted a manifest naming {bad:?}: {other:?}"),
        },
    }
}

#[test]
fn path_escapes_in_the_manifest_are_refused() {
    let env = Env::new(Where::RemotePlain);
    build_tree(&env.dst, &[f("existing", "already here"), d("a")]);
    let area = snapshot(&env.area);
    let parent_of_tmp = snapshot(env.tmp.path());
    for bad in ["..", ".", "a/b", "../x", "x\0y", "", "/etc"] {
        escape_attempt(server(&env), bad);
        let diffs = diff_snapshots(&area, &snapshot(&env.area));
        assert!(diffs.is_empty(), "after {bad:?}: {diffs:?}");
    }
    // A parent index pointing forward (or at a file) is refused as well.
    let mut s = welcomed(server(&env));
    send_msg(&mut s, &ClientMsg::BeginPass(Default::default())).unwrap();
    send_msg(
        &mut s,
        &ClientMsg::Entries(vec![
            entry(0, "", EntryKind::Dir),
            entry(2, "x", EntryKind::Dir),
            entry(0, "f", EntryKind::File { size: 0 }),
        ]),
    )
    .unwrap();
    send_msg(
        &mut s,
        &ClientMsg::EndManifest {
            opaque: vec![],
            partial: vec![],
        },
    )
    .unwrap();
    if let Ok(Some(bytes)) = read_message(&mut s) {
        assert!(
            matches!(decode::<ServerMsg>(&bytes), Ok(ServerMsg::Fatal { .. })),
            "forward parent accepted"
        );
    }
    assert!(diff_snapshots(&area, &snapshot(&env.area)).is_empty());
    assert!(diff_snapshots(&parent_of_tmp, &snapshot(env.tmp.path())).is_empty());
    build_tree(&env.src, &[f("a", "a")]);
    still_serves(&env);
}

#[test]
fn messages_out_of_order_end_the_session() {
    let env = Env::new(Where::RemotePlain);
    let area = snapshot(&env.area);
    let mut s = welcomed(server(&env));
    // A chunk nobody asked for, between passes.
    send_msg(
        &mut s,
        &ClientMsg::Chunk {
            id: 0,
            index: 0,
            data: vec![1, 2, 3],
        },
    )
    .unwrap();
    // Fatal, or the connection simply closed.
    if let Ok(Some(bytes)) = read_message(&mut s) {
        let msg = decode::<ServerMsg>(&bytes);
        assert!(matches!(msg, Ok(ServerMsg::Fatal { .. })), "{msg:?}");
    }
    assert!(closed_by_peer(&mut s));
    assert!(diff_snapshots(&area, &snapshot(&env.area)).is_empty());
    build_tree(&env.src, &[f("a", "a")]);
    still_serves(&env);
}

// --- one client at a time ------------------------------------------------------------

#[test]
fn a_second_client_is_refused_while_a_session_is_open() {
    let env = Env::new(Where::RemotePlain);
    build_tree(&env.src, &[f("a", "a"), d("dir"), f("dir/b", "b")]);
    let holder = welcomed(server(&env));
    let area = snapshot(&env.area);
    let r = env.sync(&[]);
    r.assert_code(1);
    assert!(r.stderr.contains("another client"), "{}", r.describe());
    assert_untouched(&area, &snapshot(&env.area));
    drop(holder);
    still_serves(&env);
}

#[test]
fn server_keeps_serving_many_passes() {
    let env = Env::new(Where::Remote);
    for round in 0..3u64 {
        build_tree(
            &env.src,
            &[f(&format!("round-{round}"), random_bytes(round, 5000))],
        );
        env.sync_ok(&[]);
        env.assert_replica_exact();
    }
    let mut srv = env.server;
    assert!(srv.as_mut().unwrap().alive());
}

// --- interrupted sessions and shutdown -------------------------------------------------

/// Every `.replica-tmp-*` entry below `dir`.
fn temp_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in rd.flatten() {
        let p = e.path();
        if e.file_name().to_string_lossy().starts_with(".replica-tmp-") {
            out.push(p.clone());
        }
        if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            out.extend(temp_files(&p));
        }
    }
    out
}

/// The next request (or end of pass) from the server, skipping operation
/// reports and any other informational message.
fn next_request(s: &mut TcpStream) -> ServerMsg {
    loop {
        let bytes = read_message(s)
            .expect("read from the server")
            .expect("server closed the session");
        let msg = decode::<ServerMsg>(&bytes).expect("a decodable server message");
        if matches!(
            msg,
            ServerMsg::NeedFiles { .. }
                | ServerMsg::NeedGroupHashes { .. }
                | ServerMsg::NeedGroups { .. }
                | ServerMsg::NeedChunks { .. }
                | ServerMsg::Done { .. }
                | ServerMsg::PassDone(_)
                | ServerMsg::Fatal { .. }
        ) {
            return msg;
        }
    }
}

#[test]
fn a_client_vanishing_mid_file_leaves_no_temp_file_and_no_lock() {
    let env = Env::new(Where::RemotePlain);
    let data = random_bytes(21, 200_000);
    let digest = replica::chunk::digest_bytes(&data);
    assert!(digest.chunks.len() >= 3 && digest.chunks.len() <= replica::chunk::INLINE_CHUNKS);
    // An update is staged on disk as it arrives (a small new file would
    // be gathered in memory and written whole by the publishing pool).
    std::fs::create_dir_all(&env.dst).unwrap();
    std::fs::write(env.dst.join("big.bin"), b"old version").unwrap();
    let mut s = welcomed(server(&env));
    let manifest = vec![
        entry(0, "", EntryKind::Dir),
        entry(
            0,
            "big.bin",
            EntryKind::File {
                size: data.len() as u64,
            },
        ),
    ];
    send_msg(&mut s, &ClientMsg::BeginPass(Default::default())).unwrap();
    send_msg(&mut s, &ClientMsg::Entries(manifest)).unwrap();
    send_msg(
        &mut s,
        &ClientMsg::EndManifest {
            opaque: vec![],
            partial: vec![],
        },
    )
    .unwrap();
    let id = match next_request(&mut s) {
        ServerMsg::NeedFiles { ids } => ids[0],
        other => panic!("expected NeedFiles, got {other:?}"),
    };
    send_msg(
        &mut s,
        &ClientMsg::Summary {
            id,
            size: data.len() as u64,
            hash: digest.hash,
            chunks: Some(digest.chunks.clone()),
        },
    )
    .unwrap();
    let (first, _) = match next_request(&mut s) {
        ServerMsg::NeedChunks { ranges, .. } => ranges[0],
        other => panic!("expected NeedChunks, got {other:?}"),
    };
    assert!(
        poll_until(DEADLINE, || !temp_files(&env.dst).is_empty()),
        "no temporary file while a file is in flight"
    );
    let offs = digest.offsets();
    let (a, b) = (
        offs[first as usize] as usize,
        offs[first as usize + 1] as usize,
    );
    send_msg(
        &mut s,
        &ClientMsg::Chunk {
            id,
            index: first,
            data: data[a..b].to_vec(),
        },
    )
    .unwrap();
    drop(s);
    assert!(
        poll_until(DEADLINE, || temp_files(&env.dst).is_empty()),
        "temporary files left behind: {:?}\n{}",
        temp_files(&env.dst),
        server(&env).stderr()
    );
    assert_eq!(
        std::fs::read(env.dst.join("big.bin")).unwrap(),
        b"old version",
        "a half-received file was published"
    );
    build_tree(&env.src, &[f("big.bin", &data)]);
    still_serves(&env);
    assert!(temp_files(&env.dst).is_empty());
}

#[cfg(unix)]
#[test]
fn sigterm_stops_the_server_cleanly() {
    let mut env = Env::new(Where::Remote);
    build_tree(&env.src, &[f("a", "a")]);
    env.sync_ok(&[]);
    let srv = env.server.as_mut().unwrap();
    srv.proc.terminate();
    let status = srv
        .proc
        .wait_exit(DEADLINE)
        .expect("server still running after SIGTERM");
    assert_eq!(status.code(), Some(0), "{}", srv.proc.describe());
}

#[test]
fn non_loopback_listener_without_token_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("dst");
    let state = tmp.path().join("state");
    let mut p = Proc::spawn(&[
        "serve".as_ref(),
        dest.as_os_str(),
        "--listen".as_ref(),
        "0.0.0.0:0".as_ref(),
        "--state-dir".as_ref(),
        state.as_os_str(),
    ]);
    let status = p
        .wait_exit(DEADLINE)
        .expect("server ran without a token on 0.0.0.0");
    assert_eq!(status.code(), Some(2), "{}", p.describe());
    assert!(p.stderr().contains("token"), "{}", p.describe());
    assert!(!p.stdout().contains("listening on"), "{}", p.describe());
}

// --- TLS trust ---------------------------------------------------------------------------

#[test]
fn wrong_fingerprint_is_refused_and_nothing_is_written() {
    let env = Env::new(Where::Remote);
    build_tree(&env.src, &[f("a", "a"), d("dir")]);
    let area = snapshot(&env.area);
    let wrong = format!("blake3:{}", "0".repeat(64));
    let r = env.sync_raw(&["--fingerprint", &wrong]);
    r.assert_code(1);
    assert!(r.stderr.contains("fingerprint"), "{}", r.describe());
    assert_untouched(&area, &snapshot(&env.area));
    env.sync_ok(&[]);
    env.assert_replica_exact();
}

#[test]
fn first_use_trusts_and_remembers_the_server() {
    let env = Env::new(Where::Remote);
    build_tree(&env.src, &[f("a", "a")]);
    let fp = server(&env).fingerprint.clone().unwrap();
    let r = env.sync_raw(&[]);
    r.assert_ok();
    let said = format!("{}{}", r.stdout, r.stderr);
    assert!(
        said.contains("trusting new server") && said.contains(&fp),
        "{}",
        r.describe()
    );
    env.assert_replica_exact();
    fs::write(env.src.join("b"), "b").unwrap();
    let r = env.sync_raw(&[]);
    r.assert_ok();
    assert!(
        !r.describe().contains("trusting new server"),
        "{}",
        r.describe()
    );
    env.assert_replica_exact();
}

#[test]
fn a_changed_server_certificate_is_refused() {
    let mut env = Env::new(Where::Remote);
    build_tree(&env.src, &[f("a", "a")]);
    env.sync_raw(&[]).assert_ok(); // trusted on first use
    let addr = server(&env).addr;
    env.server = None; // killed
                       // The same address, a new identity (fresh server state directory).
    env.server = Some(Server::builder(&env.dst).listen(addr).start());
    fs::write(env.src.join("b"), "b").unwrap();
    let area = snapshot(&env.area);
    let r = env.sync_raw(&[]);
    r.assert_code(1);
    assert!(r.stderr.contains("trusted before"), "{}", r.describe());
    assert_untouched(&area, &snapshot(&env.area));
    // Pinning the new fingerprint explicitly works.
    env.sync_ok(&[]);
    env.assert_replica_exact();
}

#[test]
fn plaintext_client_to_a_tls_server_is_refused() {
    let env = Env::new(Where::Remote);
    build_tree(&env.src, &[f("a", "a")]);
    let area = snapshot(&env.area);
    let r = env.sync_raw(&["--insecure-plaintext"]);
    r.assert_code(1);
    assert_untouched(&area, &snapshot(&env.area));
    still_serves(&env);
}

#[test]
fn garbage_to_the_tls_port_closes_the_connection() {
    let env = Env::new(Where::Remote);
    build_tree(&env.src, &[f("a", "a")]);
    let mut s = server(&env).connect();
    s.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .unwrap();
    assert!(closed_by_peer(&mut s), "connection left open after garbage");
    let mut s = server(&env).connect();
    s.write_all(&[0x16, 0x03, 0x01, 0xFF, 0xFF]).unwrap(); // a TLS record header claiming 64 KiB
    s.write_all(&random_bytes(5, 300)).unwrap();
    drop(s);
    let mut s = server(&env).connect();
    s.write_all(&[0xFF; 4]).unwrap();
    assert!(
        closed_by_peer(&mut s),
        "connection left open after an oversized length"
    );
    still_serves(&env);
}

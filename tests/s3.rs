//! Replicas in an object store, against a real three-node Garage cluster
//! started by each test (`tests/garage/cluster`). Exactness is checked
//! independently of replica's code: the object listing against what the
//! source tree demands (keys, bodies, rclone metadata), and the replica
//! read back by rclone (`--links --metadata`).

mod common;
use common::s3::*;
use common::*;

/// A rich tree (nesting, empty dirs, modes, ns mtimes, relative, absolute
/// and dangling symlinks, duplicates, names that collide with the layout).
fn rich(src: &std::path::Path) {
    let mut spec = common::scenarios::rich_source();
    spec.push(f("x.rclonelink", "a file named like a symlink object"));
    spec.push(l("x", "x-target"));
    spec.push(f("quote\u{2053}", "ends in the escape character"));
    spec.push(d("dir.rclonelink/inner"));
    build_tree(src, &spec);
}

/// Files, modes and mtimes as rclone restores them (rclone 1.60 sets
/// neither directory nor symlink mtimes, nor setuid, setgid and sticky
/// bits: those are checked in the listing).
fn rclone_diffs(src: &std::path::Path, back: &std::path::Path) -> Vec<String> {
    let a = snapshot(src);
    let b = snapshot(back);
    diff_snapshots(&a, &b)
        .into_iter()
        .filter(|d| {
            let key = d.split(':').next().unwrap_or("");
            let kind = a.get(key).map(|n| &n.kind);
            let relaxed = matches!(
                kind,
                Some(snapshot::Kind::Dir) | Some(snapshot::Kind::Symlink(_))
            );
            let same_perms = match (a.get(key), b.get(key)) {
                (Some(x), Some(y)) => x.mode & 0o777 == y.mode & 0o777,
                _ => false,
            };
            !(relaxed && (d.contains(": mtime ") || d.contains(": mode ")))
                && !(d.contains(": mode ") && same_perms)
        })
        .collect()
}

#[test]
fn a_rich_tree_is_exact_in_the_bucket_and_rclone_reads_it_back() {
    let g = Garage::start();
    let t = tempfile::tempdir().unwrap();
    let (src, state, back) = (
        t.path().join("src"),
        t.path().join("state"),
        t.path().join("back"),
    );
    rich(&src);
    let r = g.sync(&src, "rich", &state, &[]);
    r.assert_ok();
    let s3 = g.client();
    assert_layout(&s3, &g.bucket, "rich", &src);
    g.rclone_copy_back("rich", &back);
    let d = rclone_diffs(&src, &back);
    assert!(d.is_empty(), "rclone's copy differs:\n  {}", d.join("\n  "));

    // No change: nothing to do.
    let r = g.sync(&src, "rich", &state, &[]);
    r.assert_ok();
    assert_eq!(r.content_sent(), 0, "{}", r.describe());
    assert!(
        r.ops().is_empty(),
        "a pass with no change did something: {}",
        r.describe()
    );

    // Extras go; changes arrive; an emptied directory keeps its marker.
    std::fs::remove_file(src.join("top.txt")).unwrap();
    std::fs::remove_dir_all(src.join("nested/deeper")).unwrap();
    std::fs::remove_file(src.join("locked/inside.txt")).ok();
    write_file(&src, "new/file.txt", b"new content");
    set_mode(&src.join("bin/private"), 0o640);
    set_mtime(&src.join("dup1"), 1_111_111_111, 222_222_222);
    let r = g.sync(&src, "rich", &state, &[]);
    r.assert_ok();
    assert_layout(&s3, &g.bucket, "rich", &src);
}

#[test]
fn bad_settings_fail_in_one_line_naming_bucket_endpoint_and_cause() {
    let g = Garage::start();
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    build_tree(&src, &[f("a", "a")]);
    let state = t.path().join("state");
    let run = |cmd: &mut std::process::Command, url: &str| -> Run {
        cmd.arg("sync")
            .arg(&src)
            .arg(url)
            .arg("--state-dir")
            .arg(&state);
        cmd.output().unwrap().into()
    };
    // No such bucket.
    let r = run(&mut g.replica(&g.endpoint), "s3://no-such-bucket/p");
    r.assert_code(1);
    assert_eq!(r.stderr.trim().lines().count(), 1, "{}", r.describe());
    assert!(
        r.stderr.contains("no such bucket")
            && r.stderr.contains("no-such-bucket")
            && r.stderr.contains(&g.endpoint),
        "{}",
        r.describe()
    );
    // Wrong secret: access denied.
    let mut c = g.replica(&g.endpoint);
    c.env("AWS_SECRET_ACCESS_KEY", "0".repeat(64));
    let r = run(&mut c, &g.url("p"));
    r.assert_code(1);
    assert_eq!(r.stderr.trim().lines().count(), 1, "{}", r.describe());
    assert!(
        r.stderr.contains("access denied") && r.stderr.contains("replica"),
        "{}",
        r.describe()
    );
    // No credentials at all (and no profile).
    let mut c = g.replica(&g.endpoint);
    c.env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .env("HOME", t.path());
    let r = run(&mut c, &g.url("p"));
    r.assert_code(1);
    assert_eq!(r.stderr.trim().lines().count(), 1, "{}", r.describe());
    assert!(r.stderr.contains("no credentials"), "{}", r.describe());
    // Nothing listening.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let ep = format!("http://{closed}");
    let r = run(&mut g.replica(&ep), &g.url("p"));
    r.assert_code(1);
    assert_eq!(r.stderr.trim().lines().count(), 1, "{}", r.describe());
    assert!(
        r.stderr.contains("endpoint unreachable") && r.stderr.contains(&ep),
        "{}",
        r.describe()
    );
    // A bad URL is a usage mistake.
    let r = run(&mut g.replica(&g.endpoint), "s3://B/p");
    r.assert_code(2);
    assert_eq!(r.stderr.trim().lines().count(), 1, "{}", r.describe());
}

#[test]
fn renamed_folders_and_duplicated_large_files_send_no_content_to_the_store() {
    let g = Garage::start();
    let relay = Relay::start(&g.endpoint);
    let t = tempfile::tempdir().unwrap();
    let (src, state) = (t.path().join("src"), t.path().join("state"));
    let mut spec = vec![f("large.bin", random_bytes(7, 40 << 20))];
    for i in 0..6 {
        spec.push(f(&format!("folder/f{i}"), random_bytes(100 + i, 1 << 20)));
    }
    build_tree(&src, &spec);
    let r = g.sync_via(&relay.endpoint(), &src, "dedup", &state, &[]);
    r.assert_ok();
    let initial = relay.sent();
    assert!(initial >= 46 << 20, "the first pass sent only {initial} B");
    let s3 = g.client();
    assert_eq!(
        s3.uploads(&g.bucket, "dedup"),
        0,
        "an unfinished multipart upload was left"
    );
    assert_layout(&s3, &g.bucket, "dedup", &src);

    // A folder renamed, the large file duplicated: copies inside the store.
    std::fs::rename(src.join("folder"), src.join("renamed")).unwrap();
    std::fs::copy(src.join("large.bin"), src.join("large-copy.bin")).unwrap();
    let before = relay.sent();
    let r = g.sync_via(&relay.endpoint(), &src, "dedup", &state, &[]);
    r.assert_ok();
    let sent = relay.sent() - before;
    let moved_and_copied = (46u64 << 20) as f64;
    assert!(
        (sent as f64) < 0.01 * moved_and_copied,
        "{sent} B went to the store for a rename and a duplicate: {}",
        r.describe()
    );
    assert!(
        !r.paths("copied").is_empty() || !r.paths("moved").is_empty(),
        "{}",
        r.describe()
    );
    assert_layout(&s3, &g.bucket, "dedup", &src);
    assert_eq!(s3.uploads(&g.bucket, "dedup"), 0);
}

#[test]
fn an_object_changed_behind_the_servers_back_is_never_used_as_a_copy_source() {
    let g = Garage::start();
    let t = tempfile::tempdir().unwrap();
    let (src, state) = (t.path().join("src"), t.path().join("state"));
    let original = random_bytes(3, 300_000);
    build_tree(&src, &[f("a.bin", &original)]);
    g.sync(&src, "behind", &state, &[]).assert_ok();
    // Someone rewrites the object: same size, same metadata, other bytes.
    let s3 = g.client();
    let obj = s3
        .objects(&g.bucket, "behind")
        .into_iter()
        .find(|o| o.key == "a.bin")
        .expect("a.bin in the bucket");
    let meta: Vec<(&str, &str)> = obj
        .meta
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    s3.put(&g.bucket, "behind/a.bin", &random_bytes(4, 300_000), &meta);
    // A new file with the original content must not be copied from it.
    write_file(&src, "b.bin", &original);
    let r = g.sync(&src, "behind", &state, &[]);
    r.assert_ok();
    assert_eq!(
        s3.get(&g.bucket, "behind/b.bin"),
        original,
        "{}",
        r.describe()
    );
}

/// Waits until the bucket under `prefix` is exactly what `src` demands.
#[track_caller]
fn wait_layout(g: &Garage, prefix: &str, src: &std::path::Path, what: impl Fn() -> String) {
    let s3 = g.client();
    let mut last = Vec::new();
    let ok = poll_until(std::time::Duration::from_secs(60), || {
        last = layout_diffs(&s3, &g.bucket, prefix, src);
        last.is_empty()
    });
    assert!(
        ok,
        "the bucket never matched the source:\n  {}\n{}",
        last.join("\n  "),
        what()
    );
}

#[test]
fn serve_s3_takes_a_remote_client_and_watch_keeps_a_bucket_in_step() {
    let g = Garage::start();
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    build_tree(&src, &common::scenarios::rich_source());
    let mut serve = g.replica(&g.endpoint);
    serve
        .arg("serve")
        .arg(g.url("served"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--insecure-plaintext",
            "--state-dir",
        ])
        .arg(t.path().join("server-state"));
    let mut server = Proc::spawn_cmd(serve);
    let addr = server
        .wait_line("listening on ")
        .unwrap_or_else(|| panic!("no address: {}", server.describe()));
    let r = run_replica(&[
        "sync".as_ref(),
        src.as_os_str(),
        format!("replica://{}", addr.trim()).as_ref(),
        "--insecure-plaintext".as_ref(),
        "--state-dir".as_ref(),
        t.path().join("client-state").as_os_str(),
    ]);
    r.assert_ok();
    assert_layout(&g.client(), &g.bucket, "served", &src);
    server.terminate();

    // watch: changes reach the bucket without another command.
    let mut watch = g.replica(&g.endpoint);
    watch
        .arg("watch")
        .arg(&src)
        .arg(g.url("watched"))
        .arg("--state-dir")
        .arg(t.path().join("watch-state"));
    let w = Proc::spawn_cmd(watch);
    wait_layout(&g, "watched", &src, || w.describe());
    write_file(&src, "later/new.txt", b"arrived while watching");
    std::fs::remove_file(src.join("top.txt")).unwrap();
    wait_layout(&g, "watched", &src, || w.describe());
    w.terminate();
}

#[test]
fn a_pass_completes_with_one_node_of_three_killed_midway() {
    let g = Garage::start();
    let relay = Relay::start(&g.endpoint);
    let t = tempfile::tempdir().unwrap();
    let (src, state) = (t.path().join("src"), t.path().join("state"));
    let spec: Vec<Spec> = (0..300)
        .map(|i| f(&format!("d{}/f{i}", i % 10), random_bytes(i, 30_000)))
        .collect();
    build_tree(&src, &spec);
    let mut cmd = g.replica(&relay.endpoint());
    cmd.arg("sync")
        .arg(&src)
        .arg(g.url("faults"))
        .arg("--state-dir")
        .arg(&state);
    let mut pass = Proc::spawn_cmd(cmd);
    // Once a third of the content went out, node 3 dies.
    assert!(poll_until(DEADLINE, || relay.sent() > 3_000_000 || !pass.alive()));
    assert!(
        pass.alive(),
        "the pass ended before node 3 was killed: {}",
        pass.describe()
    );
    g.kill(3);
    let status = pass
        .wait_exit(std::time::Duration::from_secs(120))
        .expect("the pass ends");
    assert!(status.success(), "{}", pass.describe());
    assert_layout(&g.client(), &g.bucket, "faults", &src);
}

#[test]
fn with_two_nodes_of_three_down_a_pass_fails_cleanly_and_the_next_converges() {
    let g = Garage::start();
    let t = tempfile::tempdir().unwrap();
    let (src, state) = (t.path().join("src"), t.path().join("state"));
    build_tree(&src, &[f("a", "a"), f("d/b", random_bytes(1, 100_000))]);
    g.sync(&src, "quorum", &state, &[]).assert_ok();
    write_file(&src, "d/c", b"written while the store is down");
    g.kill(2);
    g.kill(3);
    let r = g.sync(&src, "quorum", &state, &[]);
    r.assert_code(1);
    assert!(r.stderr.contains("bucket replica at"), "{}", r.describe());
    g.revive(2);
    g.revive(3);
    // The cluster takes a moment to see its nodes again.
    let mut last = String::new();
    let ok = poll_until(std::time::Duration::from_secs(60), || {
        let r = g.sync(&src, "quorum", &state, &[]);
        last = r.describe();
        r.code() == Some(0)
    });
    assert!(ok, "no pass converged after recovery: {last}");
    assert_layout(&g.client(), &g.bucket, "quorum", &src);
}

/// The largest spool file under a server's state directory.
fn spool_len(state: &std::path::Path) -> u64 {
    let mut max = 0;
    let mut dirs = vec![state.to_path_buf()];
    while let Some(d) = dirs.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                dirs.push(p);
            } else if p.parent().is_some_and(|p| p.ends_with("spool")) {
                max = max.max(e.metadata().map(|m| m.len()).unwrap_or(0));
            }
        }
    }
    max
}

#[test]
fn serve_s3_resumes_a_large_file_cut_midway() {
    const SIZE: usize = 48 << 20;
    let g = Garage::start();
    let t = tempfile::tempdir().unwrap();
    let (src, sstate) = (t.path().join("src"), t.path().join("server-state"));
    build_tree(&src, &[f("big.bin", random_bytes(9, SIZE))]);
    let mut serve = g.replica(&g.endpoint);
    serve
        .arg("serve")
        .arg(g.url("resume"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--insecure-plaintext",
            "--state-dir",
        ])
        .arg(&sstate);
    let mut server = Proc::spawn_cmd(serve);
    let addr = server.wait_line("listening on ").expect("address");
    let url = format!("replica://{}", addr.trim());
    let cstate = t.path().join("client-state");
    let sync = |extra: &[&str]| {
        let mut c = std::process::Command::new(bin());
        c.arg("sync")
            .arg(&src)
            .arg(&url)
            .args(["--insecure-plaintext", "--state-dir"])
            .arg(&cstate)
            .args(extra);
        c
    };
    let mut child = Proc::spawn_cmd(sync(&["--bwlimit", "8M"]));
    assert!(
        poll_until(DEADLINE, || spool_len(&sstate) >= 8 << 20),
        "the large file never reached 8 MiB on the server: {}",
        server.describe()
    );
    child.kill();
    let s3 = g.client();
    assert!(
        s3.objects(&g.bucket, "resume")
            .iter()
            .all(|o| o.key != "big.bin"),
        "published while incomplete"
    );
    // The server keeps what it holds; the next pass sends the rest only.
    let mut run: Option<Run> = None;
    poll_until(DEADLINE, || {
        let r: Run = sync(&[]).output().unwrap().into();
        let busy = r.code() != Some(0) && r.stderr.contains("in use");
        run = Some(r);
        !busy
    });
    let run = run.expect("a pass ran");
    run.assert_ok();
    let sent = run.content_sent();
    assert!(
        sent + (6 << 20) <= SIZE as u64,
        "the resumed pass sent {sent} B of {SIZE}: {}",
        run.describe()
    );
    assert_layout(&s3, &g.bucket, "resume", &src);
    assert_eq!(s3.uploads(&g.bucket, "resume"), 0);
    server.terminate();
}

/// A paged pass into the bucket (pages of 40 entries, so the tree spans
/// many) converges, and keeps converging through a folder moved across
/// pages, type changes and removals; what the server knows of the bucket
/// lives in its state directory, not in memory (issue 18).
#[test]
fn a_paged_pass_converges_through_moves_across_pages_and_type_changes() {
    const PAGES: &[&str] = &["--page-entries", "40"];
    let g = Garage::start();
    let t = tempfile::tempdir().unwrap();
    let (src, state) = (t.path().join("src"), t.path().join("state"));
    let mut spec = Vec::new();
    for i in 0..300u64 {
        spec.push(f(
            &format!("m/old/d{}/f{i:03}", i % 6),
            random_bytes(i, 100 + i as usize),
        ));
    }
    for i in 0..60u64 {
        spec.push(f(&format!("a/x{}/g{i}", i % 3), random_bytes(1000 + i, 50)));
        spec.push(f(&format!("z/y{}/h{i}", i % 3), random_bytes(2000 + i, 50)));
    }
    spec.push(f("z/becomes-dir", "a file"));
    spec.push(d("a/becomes-file/inner"));
    spec.push(f("a/becomes-link", "a file"));
    build_tree(&src, &spec);
    let s3 = g.client();
    g.sync(&src, "paged", &state, PAGES).assert_ok();
    assert_layout(&s3, &g.bucket, "paged", &src);

    // A folder moved to a later page; kinds swapped; a folder removed.
    std::fs::rename(src.join("m/old"), src.join("z/new")).unwrap();
    std::fs::remove_file(src.join("z/becomes-dir")).unwrap();
    write_file(&src, "z/becomes-dir/now", b"inside");
    std::fs::remove_dir_all(src.join("a/becomes-file")).unwrap();
    write_file(&src, "a/becomes-file", b"was a folder");
    std::fs::remove_file(src.join("a/becomes-link")).unwrap();
    std::os::unix::fs::symlink("../z", src.join("a/becomes-link")).unwrap();
    std::fs::remove_dir_all(src.join("a/x1")).unwrap();
    let r = g.sync(&src, "paged", &state, PAGES);
    r.assert_ok();
    assert_layout(&s3, &g.bucket, "paged", &src);
    // Only the two new files' 18 bytes are content.
    assert!(
        r.content_sent() < 100,
        "a folder moved across pages sent content: {}",
        r.describe()
    );
    let r = g.sync(&src, "paged", &state, PAGES);
    r.assert_ok();
    assert!(r.ops().is_empty(), "{}", r.describe());
}

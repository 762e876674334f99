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

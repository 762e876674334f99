//! `--versions DIR` (issue 17): files a pass removes or replaces are moved
//! into DIR under their relative path with `~YYYYMMDD-HHMMSS` before the
//! extension; `--keep-versions` prunes old ones at the end of a pass; DIR
//! inside DEST is refused; versions are a source for dedup.

mod common;

use common::{assert_trees_equal, build_tree, f, random_bytes, run_replica, run_sync, Run, Server};
use std::path::{Path, PathBuf};

/// Every file below `root`, as (relative path, content), sorted.
fn files(root: &Path) -> Vec<(String, Vec<u8>)> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<(String, Vec<u8>)>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(root, &p, out);
            } else {
                let rel = p
                    .strip_prefix(root)
                    .unwrap()
                    .to_string_lossy()
                    .replace('\\', "/");
                out.push((rel, std::fs::read(&p).unwrap()));
            }
        }
    }
    let mut out = Vec::new();
    if root.exists() {
        walk(root, root, &mut out);
    }
    out.sort();
    out
}

/// `name` with its stamp taken out (`a~20240102-030405.txt` -> `a.txt`),
/// checking the stamp's shape.
fn unstamped(name: &str) -> String {
    let at = name
        .rfind('~')
        .unwrap_or_else(|| panic!("no stamp in {name}"));
    let stamp = &name[at + 1..at + 16];
    assert!(
        stamp.len() == 15
            && stamp.as_bytes()[8] == b'-'
            && stamp
                .chars()
                .enumerate()
                .all(|(i, c)| i == 8 || c.is_ascii_digit()),
        "bad stamp in {name}"
    );
    format!("{}{}", &name[..at], &name[at + 16..])
}

fn sync(src: &Path, target: &str, state: &Path, args: &[&str]) -> Run {
    let r: Run = run_sync(src, target, state, args).into();
    r.assert_ok();
    r
}

struct Dirs {
    _tmp: tempfile::TempDir,
    src: PathBuf,
    dst: PathBuf,
    versions: PathBuf,
    state: PathBuf,
}

fn dirs() -> Dirs {
    let tmp = tempfile::tempdir().unwrap();
    let p = |n: &str| tmp.path().join(n);
    let d = Dirs {
        src: p("src"),
        dst: p("dst"),
        versions: p("versions"),
        state: p("state"),
        _tmp: tmp,
    };
    std::fs::create_dir_all(&d.src).unwrap();
    d
}

/// Replaces a.txt, removes d/b.txt and photo.jpg; returns the old contents.
fn change(src: &Path) -> Vec<(String, Vec<u8>)> {
    let old = vec![
        (
            "a.txt".to_string(),
            std::fs::read(src.join("a.txt")).unwrap(),
        ),
        (
            "d/b.txt".to_string(),
            std::fs::read(src.join("d/b.txt")).unwrap(),
        ),
        (
            "photo.jpg".to_string(),
            std::fs::read(src.join("photo.jpg")).unwrap(),
        ),
    ];
    std::fs::write(src.join("a.txt"), "new content of a").unwrap();
    std::fs::remove_file(src.join("d/b.txt")).unwrap();
    std::fs::remove_file(src.join("photo.jpg")).unwrap();
    old
}

fn initial(src: &Path) {
    build_tree(
        src,
        &[
            f("a.txt", "old content of a"),
            f("d/b.txt", "b"),
            f("photo.jpg", random_bytes(1, 50_000)),
            f("keep.txt", "kept"),
        ],
    );
}

#[track_caller]
fn assert_versions(versions: &Path, old: &[(String, Vec<u8>)]) {
    let got: Vec<(String, Vec<u8>)> = files(versions)
        .into_iter()
        .map(|(p, c)| (unstamped(&p), c))
        .collect();
    assert_eq!(
        got,
        old.to_vec(),
        "versions: {:?}",
        files(versions).iter().map(|f| &f.0).collect::<Vec<_>>()
    );
}

#[test]
fn a_local_sync_moves_removed_and_replaced_files_into_versions() {
    let d = dirs();
    initial(&d.src);
    let args = ["--versions", d.versions.to_str().unwrap()];
    sync(&d.src, d.dst.to_str().unwrap(), &d.state, &args);
    assert!(
        files(&d.versions).is_empty(),
        "a first pass replaces nothing"
    );
    let old = change(&d.src);
    sync(&d.src, d.dst.to_str().unwrap(), &d.state, &args);
    assert_trees_equal(&d.src, &d.dst);
    assert_versions(&d.versions, &old);
    let names: Vec<String> = files(&d.versions).into_iter().map(|f| f.0).collect();
    assert!(
        names
            .iter()
            .any(|n| n.starts_with("a~") && n.ends_with(".txt")),
        "{names:?}"
    );
    assert!(names.iter().any(|n| n.starts_with("d/b~")), "{names:?}");
}

#[test]
fn a_server_keeps_versions_prunes_old_ones_and_restores_from_them_for_free() {
    let d = dirs();
    initial(&d.src);
    std::fs::create_dir_all(d.versions.join("d")).unwrap();
    std::fs::write(d.versions.join("d/old~20200101-000000.txt"), "ancient").unwrap();
    std::fs::write(d.versions.join("mine.txt"), "not a version").unwrap();
    let server = Server::start_with(
        &d.dst,
        &[
            "--min-free",
            "0",
            "--versions",
            d.versions.to_str().unwrap(),
            "--keep-versions",
            "7d",
        ],
    );
    let args = server.client_args();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    sync(&d.src, &server.target(), &d.state, &args);
    assert!(
        !d.versions.join("d/old~20200101-000000.txt").exists(),
        "pruned"
    );
    assert!(
        d.versions.join("mine.txt").exists(),
        "a name without a stamp is left"
    );
    std::fs::remove_file(d.versions.join("mine.txt")).unwrap();

    let old = change(&d.src);
    sync(&d.src, &server.target(), &d.state, &args);
    assert_trees_equal(&d.src, &d.dst);
    assert_versions(&d.versions, &old);

    // Restoring the deleted photo into the source sends no content: its
    // version is a source for dedup.
    std::fs::write(d.src.join("photo.jpg"), &old[2].1).unwrap();
    let r = sync(&d.src, &server.target(), &d.state, &args);
    assert_trees_equal(&d.src, &d.dst);
    assert_eq!(r.summary().content_sent, 0, "{}", r.describe());
    assert_eq!(r.summary().rebuilt, 50_000, "{}", r.describe());

    // So is going back to a replaced file's old content.
    std::fs::write(d.src.join("a.txt"), &old[0].1).unwrap();
    let r = sync(&d.src, &server.target(), &d.state, &args);
    assert_trees_equal(&d.src, &d.dst);
    assert_eq!(r.summary().content_sent, 0, "{}", r.describe());
}

#[test]
fn versions_inside_the_destination_are_refused() {
    let d = dirs();
    initial(&d.src);
    let inside = d.dst.join(".versions");
    std::fs::create_dir_all(&d.dst).unwrap();
    let r = run_replica(&[
        "serve".as_ref(),
        d.dst.as_os_str(),
        "--listen".as_ref(),
        "127.0.0.1:0".as_ref(),
        "--state-dir".as_ref(),
        d.state.as_os_str(),
        "--versions".as_ref(),
        inside.as_os_str(),
    ]);
    r.assert_code(2);
    assert!(
        r.stderr.contains("--versions") && r.stderr.contains("inside the destination"),
        "{}",
        r.describe()
    );
    let r: Run = run_sync(
        &d.src,
        d.dst.to_str().unwrap(),
        &d.state,
        &["--versions", inside.to_str().unwrap()],
    )
    .into();
    r.assert_code(2);
    assert!(
        r.stderr.contains("inside the destination"),
        "{}",
        r.describe()
    );
    // For a remote target the server keeps versions: a usage error.
    let r: Run = run_sync(
        &d.src,
        "replica://127.0.0.1:9",
        &d.state,
        &["--versions", d.versions.to_str().unwrap()],
    )
    .into();
    r.assert_code(2);
    assert!(r.stderr.contains("replica serve"), "{}", r.describe());
}

#[test]
fn watch_keeps_versions_of_what_it_removes() {
    let d = dirs();
    initial(&d.src);
    let w = common::Watch::spawn(
        &d.src,
        &[d.dst.to_str().unwrap().to_string()],
        &d.state,
        &["--versions".into(), d.versions.to_str().unwrap().into()],
    );
    w.wait_summaries(1);
    std::fs::remove_file(d.src.join("keep.txt")).unwrap();
    let kept = common::poll_until(common::DEADLINE, || {
        files(&d.versions)
            .iter()
            .any(|(p, c)| unstamped(p) == "keep.txt" && c == b"kept")
    });
    assert!(kept, "no version of keep.txt\n{}", w.describe());
    assert!(!d.dst.join("keep.txt").exists());
}

//! `--compress auto|off|LEVEL` (issue 13): every setting gives an exact
//! replica; `off` sends the content as it is, a level and `auto` (which
//! starts compressed, and measures before it ever sends raw) shrink
//! compressible content; bad values, and a setting with no network target,
//! are usage errors that touch nothing.

mod common;

use common::{assert_trees_equal, build_tree, f, random_bytes, run_sync, Run, Server};

/// About 2 MiB of text that compresses well, and a little that does not.
fn compressible_tree(root: &std::path::Path) {
    let text = |seed: usize| -> Vec<u8> {
        (0..12_000)
            .flat_map(|i| format!("line {i} of file {seed}: the quick brown fox\n").into_bytes())
            .collect()
    };
    let mut spec: Vec<_> = (0..4).map(|i| f(&format!("d{i}/t.txt"), text(i))).collect();
    spec.push(f("noise.bin", random_bytes(5, 64 * 1024)));
    build_tree(root, &spec);
}

fn sync_with(compress: Option<&str>) -> common::Summary {
    let src = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    compressible_tree(src.path());
    let server = Server::start(dst.path());
    let mut args = server.client_args();
    if let Some(c) = compress {
        args.extend(["--compress".into(), c.into()]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let run: Run = run_sync(src.path(), &server.target(), state.path(), &args).into();
    run.assert_ok();
    assert_trees_equal(src.path(), dst.path());
    let s = run.summary();
    eprintln!("--compress {compress:?}: {s:?}");
    assert_eq!(s.content_sent, s.file_bytes, "{s:?}");
    s
}

#[test]
fn off_sends_content_as_it_is() {
    let s = sync_with(Some("off"));
    assert!(s.wire_sent >= s.file_bytes, "{s:?}");
}

#[test]
fn a_level_compresses_every_segment() {
    let s = sync_with(Some("19"));
    assert!(s.wire_sent < s.file_bytes / 4, "{s:?}");
}

#[test]
fn auto_is_the_default_and_starts_compressed() {
    // Under 8 MiB of input, auto has not measured raw yet: all compressed.
    for c in [None, Some("auto")] {
        let s = sync_with(c);
        assert!(s.wire_sent < s.file_bytes / 4, "{c:?}: {s:?}");
    }
}

#[test]
fn bad_or_useless_settings_are_usage_errors() {
    let src = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    build_tree(src.path(), &[f("a", "x")]);
    let target = "replica://127.0.0.1:9";
    for bad in ["fast", "0", "20", "-1", ""] {
        let arg = format!("--compress={bad}");
        let r: Run = run_sync(src.path(), target, state.path(), &[&arg]).into();
        r.assert_code(2);
        assert!(r.stderr.contains("--compress"), "{}", r.describe());
    }
    // A local target has no link to compress.
    let r: Run = run_sync(
        src.path(),
        dst.path().to_str().unwrap(),
        state.path(),
        &["--compress", "off"],
    )
    .into();
    r.assert_code(2);
    assert!(r.stderr.contains("network"), "{}", r.describe());
    assert!(
        std::fs::read_dir(dst.path()).unwrap().next().is_none(),
        "nothing written after a usage error"
    );
}

/// `status` shares the network options of `sync` and `watch`; the ones that
/// shape a transfer mean nothing for its one small request: refused, not
/// silently ignored.
#[test]
fn status_refuses_transfer_settings() {
    for extra in [["--compress", "off"], ["--bwlimit", "1M"]] {
        let mut args: Vec<&std::ffi::OsStr> =
            vec!["status".as_ref(), "replica://127.0.0.1:9".as_ref()];
        args.extend(extra.iter().map(std::ffi::OsStr::new));
        let r = common::run_replica(&args);
        r.assert_code(2);
        assert!(
            r.stderr.contains(extra[0]) && r.stderr.contains("sync and watch"),
            "{}",
            r.describe()
        );
    }
}

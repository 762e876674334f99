//! The server publishes new files from a pool of workers (issue 13): many
//! small files, more than the workers' batches, land exactly; each is
//! indexed once it is in place, so the next pass finds nothing to do, and
//! copies of them made later are rebuilt from the replica, not sent.

mod common;

use common::scenarios::{Env, Where};
use common::{build_tree, f, random_bytes};

fn many_files(w: Where) {
    let env = Env::new(w);
    let spec: Vec<_> = (0..400u64)
        .map(|i| {
            let len = 100 + (i as usize * 37) % 5000;
            f(&format!("d{}/f{i:03}.bin", i % 9), random_bytes(i, len))
        })
        .collect();
    build_tree(&env.src, &spec);
    let first = env.sync_ok(&[]);
    env.assert_replica_exact();
    assert_eq!(first.paths("created").len(), 409, "{}", first.describe());
    let again = env.sync_ok(&[]);
    assert_eq!(again.content_sent(), 0, "{}", again.describe());
    assert!(again.ops().is_empty(), "{}", again.describe());
    // Copies under new names: every one was indexed when published.
    let copies: Vec<_> = (0..400u64)
        .step_by(10)
        .map(|i| {
            let len = 100 + (i as usize * 37) % 5000;
            f(&format!("copies/c{i:03}.bin"), random_bytes(i, len))
        })
        .collect();
    build_tree(&env.src, &copies);
    let third = env.sync_ok(&[]);
    env.assert_replica_exact();
    assert_eq!(third.content_sent(), 0, "{}", third.describe());
    assert_eq!(third.paths("copied").len(), 40, "{}", third.describe());
}

#[test]
fn many_small_files_local() {
    many_files(Where::Local);
}

#[test]
fn many_small_files_remote() {
    many_files(Where::Remote);
}

/// Text pages alike but for a line of their own, as a site's pages are.
fn page(class: u64, i: u64, edit: &str) -> Vec<u8> {
    let common = random_bytes(1000 + class, 24_000);
    let hex: String = common.iter().map(|b| format!("{b:02x}")).collect();
    let (a, b) = hex.split_at(20_000);
    format!("{a}\n<p>page {i} of class {class}{edit}</p>\n{b}").into_bytes()
}

/// Over a socket, the bases of new files (replica files of the same
/// directory and extension) and of changed files (their old versions) are
/// read and cut off the session thread; each `Basis` must still reach the
/// client before its file's chunk requests, or the client would send the
/// chunks whole. More files than one request batch, in three classes.
#[test]
fn bases_prepared_ahead_still_precede_their_requests() {
    let env = Env::new(Where::Remote);
    let pages = |n: u64, edit: &str| -> Vec<_> {
        (0..n)
            .map(|i| f(&format!("c{}/p{i:03}.html", i % 3), page(i % 3, i, edit)))
            .collect()
    };
    let size = |i: u64, edit: &str| page(i % 3, i, edit).len() as u64;
    // One page of each class first: the bases of the next pass's pages.
    build_tree(&env.src, &pages(3, ""));
    env.sync_ok(&["--compress", "off"]);
    build_tree(&env.src, &pages(300, ""));
    let new = env.sync_ok(&["--compress", "off"]);
    env.assert_replica_exact();
    let total: u64 = (3..300u64).map(|i| size(i, "")).sum();
    let sent = new.content_sent();
    assert!(
        sent * 10 < total,
        "sent {sent} of {total}: {}",
        new.describe()
    );
    build_tree(&env.src, &pages(300, ", edited"));
    let edited = env.sync_ok(&["--compress", "off"]);
    env.assert_replica_exact();
    let total: u64 = (0..300u64).map(|i| size(i, ", edited")).sum();
    let sent = edited.content_sent();
    assert!(
        sent * 10 < total,
        "sent {sent} of {total}: {}",
        edited.describe()
    );
}

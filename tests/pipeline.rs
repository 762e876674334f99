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

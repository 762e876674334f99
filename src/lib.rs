//! replica: one-way directory replication, client to server over TCP or
//! locally, sending only content the replica does not already hold.
//!
//! # Map of the crate
//!
//! Data flows top to bottom. Dependencies run one way: protocol <- session
//! <- transport <- syncer <- main; stores know nothing of sessions.
//!
//! - [`tree`]: what a tree is ([`tree::Manifest`] of [`tree::Entry`]) and
//!   scanning a source directory into one (parallel walk, no symlink
//!   following, excludes from [`filter`]), or into pages of whole
//!   directories for a paged pass ([`tree::Pages`], `tree/pages.rs`; hard
//!   links across pages in `tree/hardlinks.rs`).
//! - [`chunk`]: content-defined chunking (FastCDC) and BLAKE3 content ids;
//!   [`chunk::Digest`] is a file's id plus its chunk list (the id is
//!   derived from the list, so each byte is hashed once per side); a large
//!   file's digest reads its next block on a thread of its own while the
//!   current one is cut and hashed (`chunk/ahead.rs`).
//! - [`delta`]: small changed files sent as copies of the replica's old
//!   version's fine pieces (their size follows the file's) plus literal
//!   bytes, and a second, scoped round for the literal gaps
//!   ([`delta::fine`]: line-sized pieces of just the old ranges they
//!   replaced); `examples/delta_lab.rs`, `gap_lab.rs` and `round_lab.rs`
//!   measure encodings on real trees.
//! - [`index`]: persistent redb indexes: the replica's (chunk, group and
//!   file id -> where in the replica) and the source's (stat ->
//!   digest, so unchanged files are never re-read). The replica's writes
//!   are held in memory (`index/pending.rs`) and written and committed in
//!   sorted batches by a thread of their own (`index/writer.rs`); an index
//!   opened empty keeps a Bloom filter (at most 8 MiB) of the keys written since
//!   (`index/fresh.rs`), so a first copy's lookups of new content skip redb.
//!   A dry run writes an overlay instead ([`index::DryIndex`]: a scratch
//!   database with tombstones, read before the index).
//! - [`plan`]: pure planning, source manifest x replica view -> operations.
//! - [`sparse`]: zeros over a hole are not written (replica files keep
//!   their holes).
//! - [`store`]: the replica's storage behind one trait ([`store::Store`]):
//!   what a store must guarantee (keys never escape, atomic publication,
//!   versions), the local directory ([`store::LocalStore`]: every operation
//!   resolved below DEST one component at a time without following
//!   symlinks), an S3 bucket ([`store::S3Store`], `store/s3/`: rclone's
//!   layout, a listing per pass kept on disk with the metadata cache,
//!   listed in stretches asked for at once (`lister.rs`) and merged with
//!   the cache by one cursor a page (`merge.rs`),
//!   background PUTs flushed at the end of a
//!   pass, server-side copies), the dry run as a wrapper
//!   ([`store::DryRun`], `store/dry_run/`: what the pass would change is
//!   noted in a scratch database, `shadow.rs`, which its later reads see),
//!   the redb databases both keep on disk in bounded unsynced transactions
//!   (`store/db.rs`), and the free-space policy ([`store::MinFree`]).
//! - [`protocol`]: frames (length-prefixed, bounded) and typed messages.
//! - [`session`]: the two halves of a pass as blocking code over a
//!   [`session::link::Link`] (typed messages, typed link errors):
//!   - the server ([`session::server`]) scans the replica through its store
//!     ([`session::scan`]), plans, carries out the steps that need no
//!     content (`session/steps.rs`) and pulls the content it lacks
//!     (`session/transfer/`: job, requests, sourcing, assemble, basis,
//!     moves, publish, and a pool of workers publishing new files and
//!     creating small ones; a worker preparing bases ahead, a writer
//!     thread for files over 1 MiB);
//!     directory renames in `session/renames.rs`; a paged pass (the tree
//!     as pages, issue 18) in `session/paged.rs`, its removals deferred on
//!     disk to the end of the pass in `session/deferred.rs` (and counted
//!     there for `--max-delete`), and a dry run's scratch state (the
//!     replica's shadow and the index's overlay, `paged::DryState`); large
//!     files kept in part for the next pass in [`session::partial`]; what
//!     every step shares, and per-file failures, in [`session::pass`];
//!     hard links and extended attributes after the content, in
//!     `session/extras.rs`;
//!   - the client ([`session::client`]) sends the manifest (or its pages)
//!     and answers (digests, groups, chunks; the bases the server offers
//!     held within a budget in `session/client/bases.rs`); large files may step aside
//!     for newer changes in watch mode.
//! - [`transport`]: carrying a link: connections (framing, byte counters,
//!   messages handed over in batches), `--compress` (`transport/compress/`:
//!   segments sent raw or as one zstd stream, chosen by measured throughput),
//!   content messages packed by runs in a level-19 zstd stream of their
//!   own (`transport/packed.rs`), TLS (`transport/tls/`:
//!   fingerprints, identity, verifiers, known hosts), the handshake, the
//!   server's accept loop, the client's dialer, the in-process link of a
//!   local sync, and the `--bwlimit` token bucket (`transport/throttle.rs`).
//!   It wires a [`store::LocalStore`] or an [`store::S3Store`] (for an
//!   `s3://` destination) to each server session.
//! - [`syncer`]: the client driver (safety rails, reconnects, repeated passes).
//! - [`watch`]: file-system events -> batches of changed paths -> scoped
//!   passes, one worker per target (`watch/worker.rs`; full passes and
//!   rescans go as pages, like `sync`'s). The watched set
//!   (`watch/watches.rs`) drops a folder's watches as soon as it moves
//!   away or is deleted (so a folder made again is watched); events
//!   (`watch/events.rs`) mark files open for writing, held back until
//!   closed; the batcher (`watch/batcher.rs`) waits for quiet and decides
//!   scoped or full; a change through one name of a hard-linked file is
//!   widened to all its names (`watch/links.rs`, groups learned from each
//!   page of a full pass; only multi-link files kept); the source root vanishing
//!   or being replaced pauses replication (`watch/root.rs`).
//! - [`report`]: the operation log and pass summaries; [`progress`]: spinners
//!   and bars on a terminal; [`status`]: server counters, throughput
//!   history and recent operations; the live page, `/status` and
//!   `/metrics` over HTTP (hyper).
//! - [`versions`]: `--versions DIR`: version names, where DIR may be,
//!   pruning by age.
//! - [`shutdown`]: SIGINT/SIGTERM: stop the pass in progress, leave no
//!   temporary file behind, exit with a documented code.
//! - [`error`]: error types and the rules for them.
//!
//! The binary (`src/main.rs`) only parses arguments and prints.

pub mod chunk;
pub mod delta;
pub mod error;
pub mod filter;
pub mod index;
pub mod plan;
pub mod progress;
pub mod protocol;
pub mod report;
pub mod session;
pub mod shutdown;
pub mod sparse;
pub mod status;
pub mod store;
pub mod syncer;
pub mod transport;
pub mod tree;
pub mod versions;
pub mod watch;

pub use error::{Error, FileError, Result};
pub use syncer::{SyncOptions, Syncer};

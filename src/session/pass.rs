//! What every step of a server pass shares, and how it reports: the pass
//! context, per-file failures as a type, and the report helpers. Imports
//! neither the pass (`server.rs`) nor the transfer that runs inside it.

use super::link::Link;
use super::partial::Partials;
use crate::error::describe_io;
use crate::filter::Filter;
use crate::plan::Keys;
use crate::protocol::{ClientMsg, Op, OpReport, PassStats, Reason, ServerMsg};
use crate::report::Reporter;
use crate::status::ServerStats;
use crate::store::space::NoRoom;
use crate::store::{MinFree, Store};
use crate::tree::{Entry, Manifest, Unholdable};
use std::sync::atomic::{AtomicBool, Ordering};

/// The server's end of a session's link.
pub type ServerLink = Link<ServerMsg, ClientMsg>;

/// Why one entry failed; the pass goes on.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    /// A store operation failed.
    #[error("cannot {what}: {}", describe_io(source))]
    Store {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// The replica could not be examined there.
    #[error("{0}")]
    Scan(String),
    /// The replica's platform cannot hold the entry's name.
    #[error("this replica cannot hold that name: {0}")]
    Unholdable(&'static str),
    /// The client could not provide the file.
    #[error("{0}")]
    Client(String),
    /// A chunk sent again did not match its hash: the source file changed.
    #[error(
        "content changed while being sent (chunk {index} does not match its hash); left unchanged"
    )]
    ChangedInFlight { index: u32 },
    /// The assembled file's hash is not the source's.
    #[error("assembled content does not match the source hash; left unchanged")]
    Mismatch,
    #[error(transparent)]
    NoRoom(#[from] NoRoom),
}

impl Failure {
    pub fn store(what: &'static str, source: std::io::Error) -> Self {
        Failure::Store { what, source }
    }
}

/// A report of `op` on `path` with nothing more to say.
pub fn simple(op: Op, path: &str, reason: Reason) -> OpReport {
    OpReport {
        op,
        path: path.to_string(),
        from: None,
        reason,
        received: 0,
        reused: 0,
        detail: None,
    }
}

/// What every step of a pass needs.
pub(crate) struct PassCtx<'a> {
    pub link: &'a ServerLink,
    /// The replica (a dry-run wrapper in a dry run).
    pub store: &'a dyn Store,
    pub reporter: &'a Reporter,
    pub stats: &'a ServerStats,
    pub shutdown: &'a AtomicBool,
    pub manifest: &'a Manifest,
    pub keys: &'a Keys,
    /// Large files kept in part between passes (none in a dry run).
    pub partials: Option<&'a Partials>,
    /// This pass's number (partials remember which pass set them aside).
    pub pass_no: u64,
    pub min_free: MinFree,
    /// Excluded paths inside removed directories are kept (unless --delete-excluded).
    pub keep_excluded: Option<&'a Filter>,
    /// Entries whose names the replica cannot hold (left alone).
    pub unholdable: &'a Unholdable,
    /// `--max-delete` in a paged pass: nothing the pass removes is moved
    /// away by a later page, and the removals wait for the count at the end
    /// (see `paged.rs`).
    pub hold_removals: bool,
}

impl<'a> PassCtx<'a> {
    /// Sends a report to the client and logs it on the server.
    pub fn report(&self, stats: &mut PassStats, r: OpReport) {
        if r.op == Op::Error {
            stats.errors += 1;
        } else {
            stats.ops += 1;
        }
        self.reporter.op(&r);
        self.stats.note_report(&r);
        self.link.send(ServerMsg::Report(r));
    }

    /// Reports that `path` failed.
    pub fn fail(&self, stats: &mut PassStats, path: &str, why: Failure) {
        let r = OpReport {
            detail: Some(why.to_string()),
            ..simple(Op::Error, path, Reason::Failed)
        };
        self.report(stats, r)
    }

    pub fn interrupted(&self) -> bool {
        self.shutdown.load(Ordering::Relaxed)
    }

    pub fn key(&self, id: u32) -> &'a str {
        &self.keys[id as usize]
    }

    pub fn entry(&self, id: u32) -> &'a Entry {
        &self.manifest.entries[id as usize]
    }
}

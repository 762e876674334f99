//! The server's half of a delta's second round: the fine pieces of the old
//! ranges a client names for one asked chunk ([`ClientMsg::NeedFine`]),
//! kept until that chunk's [`ClientMsg::ChunkDelta`] arrives
//! ([`crate::delta::fine`]).
//!
//! [`ClientMsg::NeedFine`]: crate::protocol::ClientMsg::NeedFine
//! [`ClientMsg::ChunkDelta`]: crate::protocol::ClientMsg::ChunkDelta

use super::{proto, Transfer};
use crate::delta::fine::{answer, MAX_RANGES, MAX_RANGE_BYTES};
use crate::delta::run_span;
use crate::error::Result;
use crate::protocol::ServerMsg;

/// Most fine pieces (12 bytes each) held for second rounds awaiting their
/// deltas, across all files in flight; past it, requests get no pieces.
const MAX_HELD: usize = 1 << 20;

impl Transfer<'_, '_> {
    /// Answers a client's request for the fine pieces of `ranges` (runs of
    /// basis pieces) for chunk `index` of file `id`. Every range is checked
    /// against the basis, and their sum against [`MAX_RANGE_BYTES`], before
    /// anything is read.
    pub(super) fn on_need_fine(
        &mut self,
        id: u32,
        index: u32,
        ranges: &[(u32, u32)],
    ) -> Result<()> {
        let ctx = self.ctx;
        let job = self.job_asking(id, index, "fine pieces")?;
        if ranges.is_empty() || ranges.len() > MAX_RANGES {
            return Err(proto(
                ctx,
                format!(
                    "{} fine ranges for chunk {index} of file {id} (1..={MAX_RANGES})",
                    ranges.len()
                ),
            ));
        }
        let refuse = || {
            ctx.link.send(ServerMsg::Fine {
                id,
                index,
                counts: Vec::new(),
                hashes: Vec::new(),
            });
            Ok(())
        };
        // A basis withdrawn, or a second round that named a wrong piece once.
        let Some((key, places)) = job.basis.as_ref().filter(|_| !job.no_fine.contains(&index))
        else {
            return refuse();
        };
        let mut spans = Vec::with_capacity(ranges.len());
        let mut total = 0u64;
        for &(first, count) in ranges {
            let span = run_span(places, first, count).ok_or_else(|| {
                proto(
                    ctx,
                    format!("fine range {first}+{count} of file {id} is not in its basis"),
                )
            })?;
            total += span.1 as u64;
            if total > MAX_RANGE_BYTES {
                return Err(proto(ctx, format!("fine ranges of chunk {index} of file {id} span over {MAX_RANGE_BYTES} bytes")));
            }
            spans.push(span);
        }
        let key = key.clone();
        let mut old = Vec::with_capacity(spans.len());
        for (off, len) in spans {
            let mut buf = vec![0u8; len];
            if !self.read_replica(&key, &mut buf, off) {
                return refuse();
            }
            old.push((off, buf));
        }
        let views: Vec<(u64, &[u8])> = old.iter().map(|(o, b)| (*o, &b[..])).collect();
        let (fine, counts, hashes) = answer(&views);
        if !self.may_hold(fine.len()) {
            return refuse();
        }
        if let Some(j) = self.jobs.get_mut(&id) {
            j.fine.insert(index, fine);
        }
        ctx.link.send(ServerMsg::Fine {
            id,
            index,
            counts,
            hashes,
        });
        Ok(())
    }

    /// Whether `n` more fine pieces may be held ([`MAX_HELD`]); counts them
    /// again from the jobs in flight when the running count says no.
    fn may_hold(&mut self, n: usize) -> bool {
        if self.fine_held + n > MAX_HELD {
            self.fine_held = self
                .jobs
                .values()
                .flat_map(|j| j.fine.values())
                .map(Vec::len)
                .sum();
        }
        let ok = self.fine_held + n <= MAX_HELD;
        if ok {
            self.fine_held += n;
        }
        ok
    }
}

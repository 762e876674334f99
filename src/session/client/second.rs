//! The client's half of a delta's second round: which literal gaps to ask
//! about ([`ClientMsg::NeedFine`]), the first-round deltas waiting for the
//! server's fine pieces, and the final [`ClientMsg::ChunkDelta`] once they
//! arrive ([`crate::delta::fine`]).

use super::ClientPass;
use crate::delta::fine::{gaps, refine, Estimator, Gap};
use crate::delta::{literal_bytes, BasisMap, DeltaOp};
use crate::error::{Error, Result};
use crate::protocol::ClientMsg;
use std::collections::HashMap;

/// First-round deltas waiting for their fine pieces, by (file, chunk).
#[derive(Default)]
pub(super) struct SecondRound {
    estimator: Option<Estimator>,
    pending: HashMap<(u32, u32), (Vec<DeltaOp>, Vec<Gap>)>,
}

impl SecondRound {
    /// Forgets what waits for file `id`.
    pub fn forget(&mut self, id: u32) {
        self.pending.retain(|&(f, _), _| f != id);
    }
}

impl ClientPass<'_> {
    /// Sends chunk `index` of file `id` as the delta `ops`, or first asks
    /// for the fine pieces of the old ranges its gaps replaced.
    pub(super) fn send_delta(
        &self,
        (id, index): (u32, u32),
        ops: Vec<DeltaOp>,
        basis: &BasisMap,
        second: &mut SecondRound,
    ) -> Result<()> {
        let est = second.estimator.get_or_insert_with(Estimator::default);
        let asked = gaps(&ops, basis, |g, pieces| {
            est.worth_asking(g, pieces, basis.avg)
        });
        if asked.is_empty() {
            return self.send_final(id, index, ops);
        }
        let ranges = asked.iter().map(|g| (g.first, g.count)).collect();
        second.pending.insert((id, index), (ops, asked));
        self.send(ClientMsg::NeedFine { id, index, ranges })
    }

    /// The server's fine pieces for chunk `index` of file `id` (none: send
    /// the first-round delta as it is).
    pub(super) fn on_fine(
        &self,
        (id, index): (u32, u32),
        counts: &[u32],
        hashes: &[u8],
        second: &mut SecondRound,
    ) -> Result<()> {
        // A file given up meanwhile has nothing waiting.
        let Some((ops, asked)) = second.pending.remove(&(id, index)) else {
            return Ok(());
        };
        if counts.is_empty() {
            return self.send_final(id, index, ops);
        }
        let ops = refine(ops, &asked, counts, hashes).map_err(|e| {
            Error::protocol(
                &self.link.peer,
                format!("fine pieces of chunk {index} of file {id}: {e}"),
            )
        })?;
        self.send_final(id, index, ops)
    }

    fn send_final(&self, id: u32, index: u32, ops: Vec<DeltaOp>) -> Result<()> {
        self.observer().content_sent(literal_bytes(&ops));
        self.send(ClientMsg::ChunkDelta { id, index, ops })
    }
}

//! Prices both rounds of a delta as the client and server run them, on the
//! changed files of two trees: each changed file's chunks (the real
//! chunker) as first-round deltas against its old version, the client's
//! choice of gaps (`delta::fine::Estimator`), the server's fine pieces,
//! and the final deltas; the real messages (postcard) of each direction
//! through one zstd stream at level 3 (16 MiB window), as `--compress 3`
//! sends them.
//!
//! `cargo run --release --example round_lab -- OLD NEW [SKIP] [LIMIT]`
//! Env: EST=level,wlog,pct,max_ratio (several separated by `;`; `off` = one round).

use replica::chunk::digest_bytes;
use replica::delta::fine::{answer, gaps, refine, Estimator};
use replica::delta::{apply_delta, basis_of, make_delta, piece_avg, run_span, BasisMap};
use replica::protocol::{encode, ClientMsg, ServerMsg};

/// A zstd stream at level 3, 16 MiB window, flushed per message batch.
#[path = "common/lab.rs"]
mod lab;

struct Stream {
    cctx: zstd::zstd_safe::CCtx<'static>,
    out: usize,
    raw: usize,
}

impl Stream {
    fn new() -> Self {
        use zstd::zstd_safe::CParameter;
        let mut cctx = zstd::zstd_safe::CCtx::create();
        cctx.set_parameter(CParameter::CompressionLevel(3)).unwrap();
        cctx.set_parameter(CParameter::WindowLog(24)).unwrap();
        Stream {
            cctx,
            out: 0,
            raw: 0,
        }
    }

    fn push(&mut self, data: &[u8]) {
        use zstd::zstd_safe::{zstd_sys::ZSTD_EndDirective, InBuffer, OutBuffer};
        self.raw += data.len() + 4;
        let mut buf = vec![0u8; zstd::zstd_safe::compress_bound(data.len() + 4) + 1024];
        let mut framed = (data.len() as u32).to_le_bytes().to_vec();
        framed.extend_from_slice(data);
        let mut ib = InBuffer::around(&framed);
        loop {
            let mut ob = OutBuffer::around(&mut buf[..]);
            self.cctx
                .compress_stream2(&mut ob, &mut ib, ZSTD_EndDirective::ZSTD_e_continue)
                .unwrap();
            self.out += ob.pos();
            if ib.pos() == framed.len() {
                break;
            }
        }
    }

    fn finish(mut self) -> (usize, usize) {
        use zstd::zstd_safe::{zstd_sys::ZSTD_EndDirective, InBuffer, OutBuffer};
        let mut buf = vec![0u8; 1 << 20];
        let mut ib = InBuffer::around(&[]);
        loop {
            let mut ob = OutBuffer::around(&mut buf[..]);
            let r = self
                .cctx
                .compress_stream2(&mut ob, &mut ib, ZSTD_EndDirective::ZSTD_e_flush)
                .unwrap();
            self.out += ob.pos();
            if r == 0 {
                return (self.raw, self.out);
            }
        }
    }
}

fn main() {
    let args = lab::Args::parse();
    let (old, new) = (args.old.as_path(), args.new.as_path());
    let changed = args.pairs(false);
    let settings = std::env::var("EST").unwrap_or("off;1,20,50,8".into());
    for setting in settings.split(';') {
        let mut est = (setting != "off").then(|| {
            let v: Vec<i64> = setting.split(',').map(|x| x.parse().unwrap()).collect();
            Estimator::new(v[0] as i32, v[1] as u32, v[2] as u64, v[3] as u64)
        });
        let (mut up, mut down) = (Stream::new(), Stream::new());
        let (mut asked, mut gaps_n, mut lit, mut files_n, mut failed) =
            (0usize, 0usize, 0u64, 0usize, 0usize);
        let t = std::time::Instant::now();
        for (id, p) in changed.iter().enumerate() {
            let id = id as u32;
            let o = std::fs::read(old.join(p)).unwrap();
            let n = std::fs::read(new.join(p)).unwrap();
            if o == n {
                continue;
            }
            files_n += 1;
            let avg = piece_avg(o.len() as u64);
            let (places, hashes) = basis_of(&o, avg);
            let map = BasisMap::parse(avg, &hashes).unwrap();
            down.push(&encode(&ServerMsg::Basis { id, avg, hashes }));
            let d = digest_bytes(&n);
            let mut at = 0usize;
            for (index, c) in d.chunks.iter().enumerate() {
                let index = index as u32;
                let data = &n[at..at + c.len as usize];
                at += c.len as usize;
                let Some(ops) = make_delta(data, &map) else {
                    up.push(&encode(&ClientMsg::Chunk {
                        id,
                        index,
                        data: data.to_vec(),
                    }));
                    lit += data.len() as u64;
                    continue;
                };
                gaps_n += ops
                    .iter()
                    .filter(|o| matches!(o, replica::delta::DeltaOp::Literal(_)))
                    .count();
                let g = match est.as_mut() {
                    Some(e) => gaps(&ops, &map, |g, pieces| e.worth_asking(g, pieces, avg)),
                    None => Vec::new(),
                };
                let ops = if g.is_empty() {
                    ops
                } else {
                    asked += g.len();
                    let ranges: Vec<(u32, u32)> = g.iter().map(|g| (g.first, g.count)).collect();
                    up.push(&encode(&ClientMsg::NeedFine {
                        id,
                        index,
                        ranges: ranges.clone(),
                    }));
                    let spans: Vec<(u64, &[u8])> = ranges
                        .iter()
                        .map(|&(f, c)| {
                            let (off, len) = run_span(&places, f, c).unwrap();
                            (off, &o[off as usize..off as usize + len])
                        })
                        .collect();
                    let (fine, counts, hashes) = answer(&spans);
                    down.push(&encode(&ServerMsg::Fine {
                        id,
                        index,
                        counts: counts.clone(),
                        hashes: hashes.clone(),
                    }));
                    let first = ops.clone();
                    let ops = refine(ops, &g, &counts, &hashes).unwrap();
                    let rebuilt = apply_delta(&ops, data.len(), (&places, &fine), |off, len| {
                        o.get(off as usize..off as usize + len).map(<[u8]>::to_vec)
                    });
                    if rebuilt.as_deref() == Ok(data) {
                        ops
                    } else {
                        // A short hash named a wrong piece: the server asks
                        // again, refuses the second round, and the client
                        // sends the first-round delta.
                        failed += 1;
                        up.push(&encode(&ClientMsg::ChunkDelta { id, index, ops }));
                        down.push(&encode(&ServerMsg::NeedChunks {
                            id,
                            ranges: vec![(index, 1)],
                        }));
                        up.push(&encode(&ClientMsg::NeedFine { id, index, ranges }));
                        down.push(&encode(&ServerMsg::Fine {
                            id,
                            index,
                            counts: vec![],
                            hashes: vec![],
                        }));
                        first
                    }
                };
                lit += replica::delta::literal_bytes(&ops);
                up.push(&encode(&ClientMsg::ChunkDelta { id, index, ops }));
            }
        }
        let ((ur, uc), (dr, dc)) = (up.finish(), down.finish());
        println!(
            "{setting}: {files_n} files, gaps {gaps_n} asked {asked} (failed {failed}), literal {lit} B; up {ur} -> {uc} B, down {dr} -> {dc} B, total {} B ({:.1} s)",
            uc + dc,
            t.elapsed().as_secs_f64()
        );
    }
}

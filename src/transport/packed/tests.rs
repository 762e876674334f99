use super::*;
use crate::delta::DeltaOp;
use crate::protocol::PassOptions;
use proptest::prelude::*;

fn delta(id: u32, text: &[u8]) -> ClientMsg {
    ClientMsg::ChunkDelta {
        id,
        index: 0,
        ops: vec![
            DeltaOp::Copy { first: 1, count: 2 },
            DeltaOp::Literal(text.to_vec()),
        ],
    }
}

/// Packs `msgs` in batches of `batch`, then unpacks what went on the wire
/// in order.
fn batched(msgs: &[ClientMsg], batch: usize) -> (Vec<ClientMsg>, Vec<ClientMsg>) {
    let (mut p, mut u) = (Packer::default(), Unpacker::default());
    let wire: Vec<ClientMsg> = msgs
        .chunks(batch)
        .flat_map(|b| p.pack(b.to_vec()))
        .collect();
    let back = wire
        .iter()
        .cloned()
        .flat_map(|m| u.unpack(m).unwrap())
        .collect();
    (wire, back)
}

/// Each message a batch of its own.
fn through(msgs: &[ClientMsg]) -> (Vec<ClientMsg>, Vec<ClientMsg>) {
    batched(msgs, 1)
}

fn begin() -> ClientMsg {
    ClientMsg::BeginPass(PassOptions::default())
}

#[test]
fn content_is_packed_and_comes_back() {
    let line =
        b"pub fn spawn<F>(future: F) -> JoinHandle<F::Output> where F: Future + Send + 'static,\n";
    let msgs = vec![
        begin(),
        delta(1, line),
        ClientMsg::Summary {
            id: 2,
            size: 3,
            hash: crate::chunk::Hash([7; 32]),
            chunks: None,
        },
        delta(2, line),
        ClientMsg::Chunk {
            id: 3,
            index: 0,
            data: line.repeat(3),
        },
    ];
    let (wire, back) = through(&msgs);
    assert_eq!(back, msgs);
    assert!(matches!(wire[1], ClientMsg::Packed { .. }));
    assert!(matches!(wire[2], ClientMsg::Summary { .. }));
    // The second copy of the line compresses against the first.
    let size = |m: &ClientMsg| encode(m).len();
    assert!(size(&wire[3]) < size(&msgs[3]) / 2, "{}", size(&wire[3]));
}

#[test]
fn a_batch_packs_each_run_of_content_in_place() {
    let skip = ClientMsg::Skip { id: 5 };
    let msgs = vec![
        begin(),
        delta(1, b"one"),
        delta(2, b"two"),
        skip.clone(),
        delta(3, b"three"),
    ];
    let (wire, back) = batched(&msgs, 64);
    assert_eq!(back, msgs);
    assert_eq!(wire.len(), 4);
    assert!(matches!(wire[1], ClientMsg::Packed { .. }));
    assert_eq!(wire[2], skip);
    assert!(matches!(wire[3], ClientMsg::Packed { .. }));
}

#[test]
fn incompressible_chunks_are_left_to_the_link() {
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let random: Vec<u8> = (0..4096)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    let msgs = vec![
        begin(),
        ClientMsg::Chunk {
            id: 1,
            index: 0,
            data: random,
        },
    ];
    let (wire, back) = through(&msgs);
    assert_eq!(back, msgs);
    assert_eq!(wire, msgs);
}

#[test]
fn nothing_is_packed_outside_a_pass_or_over_the_budget() {
    let big = b"0123456789abcdef".repeat(PACK_MAX / 16);
    let mut msgs = vec![delta(0, b"before any pass"), begin()];
    let n = (BUDGET / PACK_MAX as u64) as u32 + 2;
    msgs.extend((0..n).map(|i| ClientMsg::Chunk {
        id: i,
        index: 0,
        data: big.clone(),
    }));
    msgs.push(ClientMsg::Chunk {
        id: 0,
        index: 0,
        data: vec![0; PACK_MAX + 1],
    });
    msgs.push(begin());
    msgs.push(delta(9, b"a new pass, a new budget"));
    let (wire, back) = through(&msgs);
    assert_eq!(back, msgs);
    let packed: Vec<bool> = wire
        .iter()
        .map(|m| matches!(m, ClientMsg::Packed { .. }))
        .collect();
    assert!(!packed[0]);
    let in_pass = &packed[2..2 + n as usize];
    assert!(in_pass[0] && !in_pass[n as usize - 1]);
    assert!(!packed[packed.len() - 3], "over PACK_MAX stays plain");
    assert!(packed[packed.len() - 1]);
}

#[test]
fn a_spent_budget_frees_the_compressor_and_the_next_pass_starts_a_new_frame() {
    let text = b"fn main() { println!(\"hello\"); }\n".repeat(4096);
    let (mut p, mut u) = (Packer::default(), Unpacker::default());
    let mut back = Vec::new();
    let mut sent = Vec::new();
    for pass in 0..3u32 {
        let mut msgs = vec![begin()];
        msgs.extend((0..12).map(|i| ClientMsg::Chunk {
            id: pass * 100 + i,
            index: 0,
            data: text[..PACK_MAX - 64].to_vec(),
        }));
        for m in &msgs {
            for w in p.pack(vec![m.clone()]) {
                back.extend(u.unpack(w).unwrap());
            }
        }
        assert!(p.cctx.is_none(), "pass {pass}: the compressor is freed");
        sent.extend(msgs);
    }
    assert_eq!(back, sent);
}

#[test]
fn bad_packed_messages_are_refused() {
    let mut u = Unpacker::default();
    assert!(u
        .unpack(ClientMsg::Packed {
            data: vec![1, 2, 3]
        })
        .is_err());
    // A packed message must hold content, not another message.
    let mut p = Packer::default();
    let skip = encode(&ClientMsg::Skip { id: 4 });
    let mut frames = (skip.len() as u32).to_le_bytes().to_vec();
    frames.extend_from_slice(&skip);
    let data = p.squeeze(&frames, ZSTD_EndDirective::ZSTD_e_flush).unwrap();
    let mut u = Unpacker::default();
    let e = u.unpack(ClientMsg::Packed { data }).unwrap_err();
    assert!(e.to_string().contains("Skip"), "{e}");
}

#[test]
fn a_bomb_is_refused_at_the_frame_limit() {
    let mut p = Packer::default();
    let zeros = vec![0u8; MAX_FRAME + 4096];
    let data = p.squeeze(&zeros, ZSTD_EndDirective::ZSTD_e_flush).unwrap();
    assert!(data.len() < 4096);
    let e = Unpacker::default()
        .unpack(ClientMsg::Packed { data })
        .unwrap_err();
    assert!(e.to_string().contains("over"), "{e}");
}

proptest! {
    /// Random edits of a text, sent as deltas and chunks, come back exactly.
    #[test]
    fn packed_streams_round_trip(
        base in proptest::collection::vec(any::<u8>(), 0..2000),
        edits in proptest::collection::vec((any::<u16>(), proptest::collection::vec(any::<u8>(), 0..40)), 1..12),
    ) {
        let mut text = base;
        let mut msgs = vec![begin()];
        for (i, (at, ins)) in edits.into_iter().enumerate() {
            let at = at as usize % (text.len() + 1);
            text.splice(at..at, ins);
            msgs.push(if i % 2 == 0 { delta(i as u32, &text) } else {
                ClientMsg::Chunks { id: i as u32, first: 1, data: text.clone() }
            });
        }
        let (_, back) = through(&msgs);
        prop_assert_eq!(back, msgs.clone());
        let (_, back) = batched(&msgs, 5);
        prop_assert_eq!(back, msgs);
    }

    #[test]
    fn garbage_never_panics(data in proptest::collection::vec(any::<u8>(), 0..300)) {
        let _ = Unpacker::default().unpack(ClientMsg::Packed { data });
    }
}

//! Typed messages. The handshake ([`Hello`], [`HelloReply`]) is sent
//! uncompressed; after it, the client sends [`ClientMsg`] and the server
//! [`ServerMsg`], each serialised with postcard into one frame.

use crate::chunk::{ChunkRef, GroupRef, Hash};
pub use crate::tree::xattr::EntryXattrs;
use crate::tree::Entry;
pub use crate::tree::HardLink;
use serde::{de::DeserializeOwned, Deserialize, Serialize};

/// First bytes of every session.
pub const MAGIC: [u8; 8] = *b"REPLICA\x01";
/// Bumped whenever a message changes shape or meaning.
pub const PROTOCOL_VERSION: u32 = 7;
/// Most manifest entries the server accepts in one pass.
pub const MAX_ENTRIES: usize = 20_000_000;
/// Most group hashes sent in one message.
pub const GROUPS_PER_MSG: usize = 16_384;
/// Most hard links, or entries with extended attributes, in one message.
pub const EXTRAS_PER_MSG: usize = 2048;

/// Client → server, first frame.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    pub magic: [u8; 8],
    pub version: u32,
    pub chunker: u16,
    pub token: String,
    /// How the rest of the session is compressed (both directions).
    pub compress: Compress,
    /// Free text naming the client, for the server's log.
    pub client: String,
    /// What the connection is for.
    pub purpose: Purpose,
}

/// How a session's byte stream is compressed after the handshake
/// (`--compress`). With `Level` and `Auto` each direction is a sequence of
/// segments, each either zstd (one continuous stream) or raw; `Off` sends
/// plain frames.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Compress {
    /// Plain frames, no segments.
    Off,
    /// Every segment compressed at this zstd level (1..=19).
    Level(i8),
    /// Each sender compresses at level 3 unless sending raw moves data
    /// clearly faster, measured as it goes (see `transport::compress`).
    #[default]
    Auto,
}

impl Compress {
    /// The level `Auto` compresses at.
    pub const AUTO_LEVEL: i8 = 3;

    /// Whether the stream is cut into segments.
    pub fn segmented(self) -> bool {
        self != Compress::Off
    }

    /// Whether a peer's setting is one this side can use (levels 1..=19).
    pub fn is_valid(self) -> bool {
        match self {
            Compress::Level(n) => (1..=19).contains(&n),
            Compress::Off | Compress::Auto => true,
        }
    }
}

impl std::str::FromStr for Compress {
    type Err = String;

    /// `auto`, `off` or a zstd level 1..=19.
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Compress::Auto),
            "off" => Ok(Compress::Off),
            _ => match s.parse::<i8>() {
                Ok(n) if (1..=19).contains(&n) => Ok(Compress::Level(n)),
                _ => Err(format!(
                    "`{s}` is not a compression setting: use auto, off or a zstd level 1..19"
                )),
            },
        }
    }
}

/// What a connection is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Purpose {
    /// Passes follow the handshake.
    Sync,
    /// Only the server's status is wanted (answered in the handshake).
    Status,
}

/// Server → client, answer to [`Hello`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum HelloReply {
    Welcome {
        version: u32,
        server: String,
    },
    Refused {
        reason: String,
    },
    /// Answer to a [`Purpose::Status`] hello: the status as JSON.
    Status {
        json: String,
    },
}

/// What a pass should do besides making the replica equal the source.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PassOptions {
    /// Compare content hashes even when size and mtime match.
    pub checksum: bool,
    /// Plan and report, change nothing.
    pub dry_run: bool,
    /// Also remove replica entries matched by the exclude patterns.
    pub delete_excluded: bool,
    /// Stop the pass before removing more than this many entries.
    pub max_delete: Option<u64>,
    /// Exclude patterns (gitignore syntax) the client applied.
    pub excludes: Vec<String>,
    /// Let an empty source root empty a replica that holds entries
    /// (otherwise such a pass is stopped before it changes anything).
    pub allow_empty_source: bool,
    /// `--xattrs`: the client sends `user.*` extended attributes
    /// ([`ClientMsg::Xattrs`]) and the replica's are made equal to them.
    pub xattrs: bool,
}

/// Client → server after the handshake.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClientMsg {
    /// Starts a pass; a manifest follows.
    BeginPass(PassOptions),
    /// A batch of manifest entries, in pre-order.
    Entries(Vec<Entry>),
    /// Ends the manifest. `opaque` directories are left alone inside;
    /// `partial` directories list only some of their children (the others
    /// are left alone).
    EndManifest { opaque: Vec<u32>, partial: Vec<u32> },
    /// Ends one page of a paged pass (the fields as in
    /// [`ClientMsg::EndManifest`]): more pages follow, each a small
    /// manifest of whole directories, ids counted from 0 again. The server
    /// carries the page out (removals wait for the end of the pass) and
    /// answers [`ServerMsg::PageDone`]; the last page ends with
    /// `EndManifest`.
    EndPage { opaque: Vec<u32>, partial: Vec<u32> },
    /// A file's digest; `chunks` inline for small files, else requested by group.
    Summary {
        id: u32,
        size: u64,
        hash: Hash,
        chunks: Option<Vec<ChunkRef>>,
    },
    /// A page of a large file's group list, starting at group `start`.
    GroupHashes {
        id: u32,
        start: u32,
        /// Number of groups in the whole list.
        total: u32,
        groups: Vec<GroupRef>,
    },
    /// The chunk list of one group.
    GroupChunks {
        id: u32,
        group: u32,
        chunks: Vec<ChunkRef>,
    },
    /// One chunk, as runs of the file's basis pieces plus literal bytes.
    ChunkDelta {
        id: u32,
        index: u32,
        ops: Vec<crate::delta::DeltaOp>,
    },
    /// The bytes of one chunk.
    Chunk {
        id: u32,
        index: u32,
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
    },
    /// The client could not provide file `id` (unreadable, vanished).
    FileFailed { id: u32, reason: String },
    /// File `id` is still being written: leave the replica's version alone
    /// for now (a later pass sends it).
    Skip { id: u32 },
    /// End of session.
    Bye,
    /// Consecutive chunks of file `id`, from chunk `first`, concatenated
    /// (as many as `data` holds; each must have been asked for).
    Chunks {
        id: u32,
        first: u32,
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
    },
    /// Hard links among the manifest's files (after the entries, before
    /// [`ClientMsg::EndManifest`]; ≤ [`EXTRAS_PER_MSG`] per message).
    Links(Vec<HardLink>),
    /// Extended attributes of entries (with `xattrs` in the pass options;
    /// after the entries, before [`ClientMsg::EndManifest`]; ≤
    /// [`EXTRAS_PER_MSG`] entries per message). Entries not listed have none.
    Xattrs(Vec<EntryXattrs>),
    /// Hard links from files of this page to files of earlier pages of a
    /// paged pass (after the entries, before the page's end; ≤
    /// [`EXTRAS_PER_MSG`] per message).
    FarLinks(Vec<crate::tree::FarLink>),
    /// Before the [`ClientMsg::ChunkDelta`] of chunk `index` of file `id`:
    /// the runs of basis pieces (first, count) its literal gaps most likely
    /// replaced, for a second round ([`crate::delta::fine`]).
    NeedFine {
        id: u32,
        index: u32,
        ranges: Vec<(u32, u32)>,
    },
    /// A content message ([`ClientMsg::ChunkDelta`], [`ClientMsg::Chunk`],
    /// [`ClientMsg::Chunks`]) as the next flushed piece of the connection's
    /// packed zstd stream (`transport::packed`); only over a compressed
    /// connection, unpacked by its reader before the session sees it.
    Packed {
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
    },
}

impl ClientMsg {
    /// The message's name, for errors about where it came.
    pub fn name(&self) -> &'static str {
        match self {
            ClientMsg::BeginPass(_) => "BeginPass",
            ClientMsg::Entries(_) => "Entries",
            ClientMsg::EndManifest { .. } => "EndManifest",
            ClientMsg::EndPage { .. } => "EndPage",
            ClientMsg::Summary { .. } => "Summary",
            ClientMsg::GroupHashes { .. } => "GroupHashes",
            ClientMsg::GroupChunks { .. } => "GroupChunks",
            ClientMsg::Chunk { .. } => "Chunk",
            ClientMsg::Chunks { .. } => "Chunks",
            ClientMsg::ChunkDelta { .. } => "ChunkDelta",
            ClientMsg::FileFailed { .. } => "FileFailed",
            ClientMsg::Skip { .. } => "Skip",
            ClientMsg::Bye => "Bye",
            ClientMsg::Links(_) => "Links",
            ClientMsg::Xattrs(_) => "Xattrs",
            ClientMsg::FarLinks(_) => "FarLinks",
            ClientMsg::NeedFine { .. } => "NeedFine",
            ClientMsg::Packed { .. } => "Packed",
        }
    }

    /// The manifest id of the file a transfer message is about.
    pub fn file_id(&self) -> Option<u32> {
        match self {
            ClientMsg::Summary { id, .. }
            | ClientMsg::GroupHashes { id, .. }
            | ClientMsg::GroupChunks { id, .. }
            | ClientMsg::Chunk { id, .. }
            | ClientMsg::Chunks { id, .. }
            | ClientMsg::ChunkDelta { id, .. }
            | ClientMsg::NeedFine { id, .. }
            | ClientMsg::FileFailed { id, .. }
            | ClientMsg::Skip { id } => Some(*id),
            ClientMsg::BeginPass(_)
            | ClientMsg::Entries(_)
            | ClientMsg::EndManifest { .. }
            | ClientMsg::EndPage { .. }
            | ClientMsg::Links(_)
            | ClientMsg::Xattrs(_)
            | ClientMsg::FarLinks(_)
            | ClientMsg::Packed { .. }
            | ClientMsg::Bye => None,
        }
    }
}

/// Server → client after the handshake.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ServerMsg {
    /// What the pass will fetch: files whose content must be checked or sent.
    Plan { files: u64, bytes: u64 },
    /// The replica's old version of file `id`, as truncated hashes of its
    /// fine pieces (cut with average size `avg`; [`crate::delta::HASH_BYTES`]
    /// little-endian bytes each): chunks of `id` may be sent as
    /// [`ClientMsg::ChunkDelta`]. An empty list withdraws the basis.
    Basis {
        id: u32,
        avg: u32,
        #[serde(with = "serde_bytes")]
        hashes: Vec<u8>,
    },
    /// Send a [`ClientMsg::Summary`] for each of these manifest ids.
    NeedFiles { ids: Vec<u32> },
    /// Send the group list of file `id`.
    NeedGroupHashes { id: u32 },
    /// Send the chunk lists of these groups of file `id`.
    NeedGroups { id: u32, groups: Vec<u32> },
    /// Send these chunks of file `id`, as (first index, count) runs.
    NeedChunks { id: u32, ranges: Vec<(u32, u32)> },
    /// Nothing more is needed for file `id`.
    Done { id: u32 },
    /// One operation carried out (or planned, in a dry run).
    Report(OpReport),
    /// The page the client ended with [`ClientMsg::EndPage`] is carried
    /// out: the client may forget it and send the next one.
    PageDone,
    /// The pass is over.
    PassDone(PassStats),
    /// The session failed; the reason is for the user.
    Fatal { reason: String },
    /// The answer to [`ClientMsg::NeedFine`]: the fine pieces of each asked
    /// range (`counts` per range), named by
    /// [`crate::delta::fine::FINE_HASH_BYTES`]-byte hashes packed in
    /// `hashes`, numbered in order across ranges for [`crate::delta::DeltaOp::Fine`].
    /// No counts: send the chunk without a second round.
    Fine {
        id: u32,
        index: u32,
        counts: Vec<u32>,
        #[serde(with = "serde_bytes")]
        hashes: Vec<u8>,
    },
}

/// The kind of an operation on the replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    Created,
    Updated,
    /// Built entirely from content the replica already had.
    Copied,
    Moved,
    Removed,
    Metadata,
    /// Failed for this entry; `detail` says why.
    Error,
}

impl Op {
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Created => "created",
            Op::Updated => "updated",
            Op::Copied => "copied",
            Op::Moved => "moved",
            Op::Removed => "removed",
            Op::Metadata => "metadata",
            Op::Error => "error",
        }
    }
}

/// Why an operation was needed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reason {
    New,
    ContentChanged,
    MetadataChanged,
    TypeChanged,
    Extra,
    Failed,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::New => "new",
            Reason::ContentChanged => "content changed",
            Reason::MetadataChanged => "metadata changed",
            Reason::TypeChanged => "type changed",
            Reason::Extra => "extra in replica",
            Reason::Failed => "failed",
        }
    }
}

/// One line of the operation log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpReport {
    pub op: Op,
    pub path: String,
    /// For `moved` and `copied`: where the content came from.
    pub from: Option<String>,
    pub reason: Reason,
    /// Content bytes received from the client for this entry.
    pub received: u64,
    /// Content bytes rebuilt from what the replica already had.
    pub reused: u64,
    /// Error text for [`Op::Error`].
    pub detail: Option<String>,
}

/// Counts for one pass, as the server saw it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PassStats {
    pub ops: u64,
    pub errors: u64,
    /// Content bytes received in chunk messages.
    pub received: u64,
    /// Content bytes rebuilt from the replica instead of being sent.
    pub reused: u64,
    /// Set when the pass was stopped before removing (max-delete).
    pub stopped: Option<String>,
}

/// Serialises a message into a frame payload.
pub fn encode<T: Serialize>(msg: &T) -> Vec<u8> {
    postcard::to_stdvec(msg).expect("messages always serialise")
}

/// A frame payload that is not one message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("undecodable message: {0}")]
    Undecodable(String),
    #[error("{0} trailing bytes after message")]
    Trailing(usize),
}

/// Parses a frame payload; trailing bytes are an error.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, DecodeError> {
    let (msg, rest) =
        postcard::take_from_bytes(bytes).map_err(|e| DecodeError::Undecodable(e.to_string()))?;
    if !rest.is_empty() {
        return Err(DecodeError::Trailing(rest.len()));
    }
    Ok(msg)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tree::{Kind, Timestamp};
    use proptest::prelude::*;

    fn hash() -> impl Strategy<Value = Hash> {
        any::<[u8; 32]>().prop_map(Hash)
    }

    fn chunk_ref() -> impl Strategy<Value = ChunkRef> {
        (hash(), any::<u32>()).prop_map(|(hash, len)| ChunkRef { hash, len })
    }

    fn entry() -> impl Strategy<Value = Entry> {
        let kind = prop_oneof![
            Just(Kind::Dir),
            any::<u64>().prop_map(|size| Kind::File { size }),
            ".{0,20}".prop_map(|target| Kind::Symlink { target }),
        ];
        (
            any::<u32>(),
            ".{0,20}",
            kind,
            any::<Option<u32>>(),
            any::<i64>(),
            any::<u32>(),
        )
            .prop_map(|(parent, name, kind, mode, secs, nanos)| Entry {
                parent,
                name,
                kind,
                mode,
                mtime: Timestamp { secs, nanos },
            })
    }

    fn client_msg() -> impl Strategy<Value = ClientMsg> {
        prop_oneof![
            (
                any::<bool>(),
                any::<bool>(),
                any::<Option<u64>>(),
                proptest::collection::vec(".{0,8}", 0..3)
            )
                .prop_map(|(checksum, dry_run, max_delete, excludes)| {
                    ClientMsg::BeginPass(PassOptions {
                        checksum,
                        dry_run,
                        delete_excluded: false,
                        max_delete,
                        excludes,
                        allow_empty_source: checksum && dry_run,
                        xattrs: checksum || dry_run,
                    })
                }),
            proptest::collection::vec(entry(), 0..5).prop_map(ClientMsg::Entries),
            (
                proptest::collection::vec(any::<u32>(), 0..4),
                proptest::collection::vec(any::<u32>(), 0..4)
            )
                .prop_map(|(opaque, partial)| ClientMsg::EndManifest { opaque, partial }),
            (
                proptest::collection::vec(any::<u32>(), 0..4),
                proptest::collection::vec(any::<u32>(), 0..4)
            )
                .prop_map(|(opaque, partial)| ClientMsg::EndPage { opaque, partial }),
            proptest::collection::vec(
                (any::<u32>(), proptest::collection::vec("[a-z]{1,5}", 1..3)),
                0..3
            )
            .prop_map(|v| ClientMsg::FarLinks(
                v.into_iter()
                    .map(|(entry, leader)| crate::tree::FarLink { entry, leader })
                    .collect()
            )),
            (
                any::<u32>(),
                any::<u64>(),
                hash(),
                proptest::option::of(proptest::collection::vec(chunk_ref(), 0..4))
            )
                .prop_map(|(id, size, hash, chunks)| ClientMsg::Summary {
                    id,
                    size,
                    hash,
                    chunks
                }),
            (
                any::<u32>(),
                any::<u32>(),
                proptest::collection::vec(
                    (hash(), any::<u32>()).prop_map(|(hash, count)| GroupRef { hash, count }),
                    0..4
                )
            )
                .prop_map(|(id, start, groups)| ClientMsg::GroupHashes {
                    id,
                    start,
                    total: start,
                    groups
                }),
            (
                any::<u32>(),
                any::<u32>(),
                proptest::collection::vec(chunk_ref(), 0..4)
            )
                .prop_map(|(id, group, chunks)| ClientMsg::GroupChunks {
                    id,
                    group,
                    chunks
                }),
            (
                any::<u32>(),
                any::<u32>(),
                proptest::collection::vec(any::<u8>(), 0..64)
            )
                .prop_map(|(id, index, data)| ClientMsg::Chunk { id, index, data }),
            (
                any::<u32>(),
                any::<u32>(),
                proptest::collection::vec(any::<u8>(), 0..64)
            )
                .prop_map(|(id, first, data)| ClientMsg::Chunks { id, first, data }),
            (any::<u32>(), ".{0,20}").prop_map(|(id, reason)| ClientMsg::FileFailed { id, reason }),
            any::<u32>().prop_map(|id| ClientMsg::Skip { id }),
            (
                any::<u32>(),
                any::<u32>(),
                proptest::collection::vec((any::<u32>(), any::<u32>()), 0..3)
            )
                .prop_map(|(id, index, c)| ClientMsg::ChunkDelta {
                    id,
                    index,
                    ops: c
                        .into_iter()
                        .map(|(first, count)| crate::delta::DeltaOp::Copy { first, count })
                        .chain([
                            crate::delta::DeltaOp::Literal(vec![1, 2]),
                            crate::delta::DeltaOp::Fine {
                                first: id,
                                count: 3
                            }
                        ])
                        .collect()
                }),
            (
                any::<u32>(),
                any::<u32>(),
                proptest::collection::vec((any::<u32>(), any::<u32>()), 0..3)
            )
                .prop_map(|(id, index, ranges)| ClientMsg::NeedFine {
                    id,
                    index,
                    ranges
                }),
            Just(ClientMsg::Bye),
            proptest::collection::vec(any::<u8>(), 0..64)
                .prop_map(|data| ClientMsg::Packed { data }),
            proptest::collection::vec(
                (any::<u32>(), any::<u32>()).prop_map(|(entry, leader)| HardLink { entry, leader }),
                0..5
            )
            .prop_map(ClientMsg::Links),
            proptest::collection::vec(
                (
                    any::<u32>(),
                    proptest::collection::vec(
                        (
                            "user\\.[a-z.]{1,12}",
                            proptest::collection::vec(any::<u8>(), 0..16)
                        )
                            .prop_map(|(name, value)| crate::tree::xattr::Xattr { name, value }),
                        0..4
                    )
                )
                    .prop_map(|(entry, attrs)| EntryXattrs { entry, attrs }),
                0..4
            )
            .prop_map(ClientMsg::Xattrs),
        ]
    }

    fn server_msg() -> impl Strategy<Value = ServerMsg> {
        prop_oneof![
            proptest::collection::vec(any::<u32>(), 0..5)
                .prop_map(|ids| ServerMsg::NeedFiles { ids }),
            any::<u32>().prop_map(|id| ServerMsg::NeedGroupHashes { id }),
            (any::<u32>(), proptest::collection::vec(any::<u32>(), 0..5))
                .prop_map(|(id, groups)| ServerMsg::NeedGroups { id, groups }),
            (
                any::<u32>(),
                proptest::collection::vec((any::<u32>(), any::<u32>()), 0..5)
            )
                .prop_map(|(id, ranges)| ServerMsg::NeedChunks { id, ranges }),
            any::<u32>().prop_map(|id| ServerMsg::Done { id }),
            (
                any::<u32>(),
                any::<u32>(),
                proptest::collection::vec(any::<u8>(), 0..20)
            )
                .prop_map(|(id, avg, hashes)| ServerMsg::Basis { id, avg, hashes }),
            (any::<u64>(), any::<u64>())
                .prop_map(|(files, bytes)| ServerMsg::Plan { files, bytes }),
            (".{0,20}", any::<u64>(), any::<u64>()).prop_map(|(path, received, reused)| {
                ServerMsg::Report(OpReport {
                    op: Op::Created,
                    path,
                    from: None,
                    reason: Reason::New,
                    received,
                    reused,
                    detail: None,
                })
            }),
            (any::<u64>(), any::<u64>(), proptest::option::of(".{0,10}")).prop_map(
                |(ops, received, stopped)| ServerMsg::PassDone(PassStats {
                    ops,
                    errors: 0,
                    received,
                    reused: 0,
                    stopped
                })
            ),
            ".{0,20}".prop_map(|reason| ServerMsg::Fatal { reason }),
            Just(ServerMsg::PageDone),
            (
                any::<u32>(),
                any::<u32>(),
                proptest::collection::vec(any::<u32>(), 0..3),
                proptest::collection::vec(any::<u8>(), 0..20)
            )
                .prop_map(|(id, index, counts, hashes)| ServerMsg::Fine {
                    id,
                    index,
                    counts,
                    hashes
                }),
        ]
    }

    proptest! {
        #[test]
        fn client_messages_round_trip(m in client_msg()) {
            prop_assert_eq!(decode::<ClientMsg>(&encode(&m)).unwrap(), m);
        }

        #[test]
        fn server_messages_round_trip(m in server_msg()) {
            prop_assert_eq!(decode::<ServerMsg>(&encode(&m)).unwrap(), m);
        }

        #[test]
        fn decoding_garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode::<ClientMsg>(&bytes);
            let _ = decode::<ServerMsg>(&bytes);
            let _ = decode::<Hello>(&bytes);
        }
    }

    #[test]
    fn hello_round_trips() {
        let h = Hello {
            magic: MAGIC,
            version: PROTOCOL_VERSION,
            chunker: 1,
            token: "t".into(),
            compress: Compress::Auto,
            client: "c".into(),
            purpose: Purpose::Sync,
        };
        assert_eq!(decode::<Hello>(&encode(&h)).unwrap(), h);
        assert!(decode::<Hello>(&[1, 2, 3]).is_err());
    }
}

//! Error types.
//!
//! Rules:
//! - Every error names what it concerns: a relative path, a peer address or the
//!   file on disk, plus the cause, so it prints as one readable line.
//! - [`FileError`] is "this entry failed, the pass goes on"; [`Error`] is "this
//!   session failed, stop". The difference is a type, never a string.
//! - The library never panics on input from a peer or from disk.

use std::io;
use std::path::PathBuf;

/// A session-level failure: the pass (or connection) stops.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{}: {}", path.display(), describe_io(source))]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("connection to {peer}: {}", describe_io(source))]
    Net {
        peer: String,
        #[source]
        source: io::Error,
    },
    /// The link to the peer ended (closed, idle, unreadable).
    #[error("connection to {peer}: {source}")]
    Link {
        peer: String,
        #[source]
        source: LinkError,
    },
    #[error("protocol error from {peer}: {reason}")]
    Protocol { peer: String, reason: String },
    /// Refused for now (the destination is busy, the server is stopping):
    /// trying again later may succeed.
    #[error("refused by {peer}: {reason}")]
    Refused { peer: String, reason: String },
    /// Refused for good as things are configured (wrong or missing token,
    /// a certificate that does not match, another protocol version):
    /// retrying cannot help, the user must change something.
    #[error("refused by {peer}: {reason}")]
    Denied { peer: String, reason: String },
    #[error("index {path}: {reason}")]
    Index { path: PathBuf, reason: String },
    /// The source root is missing, not a directory, or unreadable: the
    /// pass changes nothing.
    #[error("source {}: {reason}; nothing was changed", path.display())]
    Source { path: PathBuf, reason: String },
    #[error("{0}")]
    Usage(String),
    #[error("interrupted")]
    Interrupted,
}

impl Error {
    pub fn io(path: impl Into<PathBuf>, source: io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    /// Whether trying again (later, unchanged) cannot succeed: a usage
    /// mistake or a refusal for good. Network failures, a busy or stopping
    /// server and protocol hiccups are transient.
    pub fn is_permanent(&self) -> bool {
        matches!(self, Error::Denied { .. } | Error::Usage(_))
    }

    pub fn link(peer: impl Into<String>, source: LinkError) -> Self {
        Error::Link {
            peer: peer.into(),
            source,
        }
    }

    /// The source root `path` cannot be scanned.
    pub fn source(path: impl Into<PathBuf>, e: &io::Error) -> Self {
        Error::Source {
            path: path.into(),
            reason: describe_io(e),
        }
    }

    pub fn protocol(peer: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::Protocol {
            peer: peer.into(),
            reason: reason.into(),
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why a link stopped delivering messages.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LinkError {
    /// The peer closed the connection between frames: a normal end.
    #[error("connection closed")]
    Closed,
    /// Nothing at all (not even a keep-alive) arrived in time.
    #[error("no data for {secs} s")]
    Idle { secs: u64 },
    /// A frame could not be read (reset, EOF inside a frame, oversize).
    #[error("{0}")]
    Frame(String),
    /// The peer said nothing within the handshake's time limit.
    #[error("no handshake within the time limit")]
    HandshakeTimeout,
    /// The peer answered in HTTP: an HTTP port (a status port?), not a
    /// replica one.
    #[error("the peer speaks HTTP, not the replica protocol (an HTTP port, such as a server's --status-addr, rather than its replica port?)")]
    Http,
    /// The peer closed the connection before its handshake message.
    #[error("connection closed during the handshake")]
    ClosedInHandshake,
    /// A frame arrived but did not decode into a message.
    #[error(transparent)]
    Decode(#[from] crate::protocol::DecodeError),
}

/// A failure confined to one entry of the tree: reported, and the pass goes on.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{path}: {reason}")]
pub struct FileError {
    /// The path relative to the tree root, `/`-separated for display.
    pub path: String,
    pub reason: String,
}

impl FileError {
    pub fn new(path: impl Into<String>, reason: impl ToString) -> Self {
        FileError {
            path: path.into(),
            reason: reason.to_string(),
        }
    }
}

/// Short, lower-case description of an I/O error, without the "(os error N)" noise.
pub fn describe_io(e: &io::Error) -> String {
    use io::ErrorKind::*;
    if e.raw_os_error().is_none() && e.get_ref().is_some() && e.kind() != Other {
        // A message of our own (an object store's cause, say) says more
        // than the kind.
        let s = e.to_string();
        if s.contains(" (bucket ") {
            return s;
        }
    }
    match e.kind() {
        NotFound => "not found".into(),
        PermissionDenied => "permission denied".into(),
        AlreadyExists => "already exists".into(),
        StorageFull => "no space left on device".into(),
        _ => {
            let s = e.to_string();
            match s.find(" (os error") {
                Some(i) => s[..i].to_lowercase(),
                None => s,
            }
        }
    }
}

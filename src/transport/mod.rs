//! Connections: framing over any byte stream ([`connection`]), compressed
//! by segments as `--compress` says ([`compress`]), with content messages
//! packed harder in a stream of their own ([`packed`]), the handshake, the server's accept loop ([`server`]),
//! the client's dialer ([`client`]) and the in-process pipe used by local
//! syncs, which runs the very same client and server code; `--bwlimit`
//! paces what a process writes to its sockets ([`throttle`]).

pub mod client;
pub mod compress;
pub mod connection;
pub mod packed;
pub mod server;
pub mod throttle;
pub mod tls;

pub use connection::{BoxStream, Counters, Link};

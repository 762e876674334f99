//! Connections: framing and compression over any byte stream
//! ([`connection`]), the handshake, the server's accept loop ([`server`]),
//! the client's dialer ([`client`]) and the in-process pipe used by local
//! syncs, which runs the very same client and server code.

pub mod client;
pub mod connection;
pub mod server;
pub mod tls;

pub use connection::{BoxStream, Counters, Link};

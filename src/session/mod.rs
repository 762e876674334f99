//! The two halves of a pass, as plain blocking code over a [`Link`]:
//! [`server`] receives the manifest, plans against the replica and pulls
//! what it lacks; [`client`] scans, answers the server's requests and logs
//! what the server reports.
//!
//! [`Link`]: link::Link

pub mod client;
mod deferred;
mod extras;
pub mod link;
mod paged;
pub mod partial;
pub mod pass;
mod renames;
pub mod scan;
pub mod server;
mod steps;
mod transfer;

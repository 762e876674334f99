//! A dry run as a store: reads go through to the real replica, changes are
//! accepted and dropped (the rustic_core `DryRunBackend` shape). The
//! session runs exactly as for a real pass and reports what it would do;
//! nothing below it knows it is a dry run.

use super::{Capabilities, ReadAt, Space, Staged, Store, Version};
use crate::plan::ReplicaEntry;
use crate::tree::{Kind, Timestamp};
use std::io;

/// Wraps a store; changes nothing.
pub struct DryRun<'a> {
    inner: &'a dyn Store,
}

impl<'a> DryRun<'a> {
    pub fn new(inner: &'a dyn Store) -> Self {
        DryRun { inner }
    }
}

/// A staged file that keeps nothing.
struct Discarded {
    key: String,
}

impl ReadAt for Discarded {
    fn read_at(&self, _: &mut [u8], _: u64) -> io::Result<usize> {
        Ok(0)
    }
}

impl Staged for Discarded {
    fn write_at(&mut self, _: &[u8], _: u64) -> io::Result<()> {
        Ok(())
    }

    fn key(&self) -> &str {
        &self.key
    }

    fn into_any(self: Box<Self>) -> Box<dyn std::any::Any + Send> {
        self
    }
}

fn unsupported(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::Unsupported, format!("dry run: no {what}"))
}

impl Store for DryRun<'_> {
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            // A rename that does not happen would not show in a rescan.
            cheap_rename: false,
            records: false,
            server_copy: false,
            ..self.inner.capabilities()
        }
    }

    fn refresh(&self) -> io::Result<()> {
        // Reading the replica afresh changes nothing.
        self.inner.refresh()
    }

    fn stat(&self, key: &str) -> io::Result<Option<ReplicaEntry>> {
        self.inner.stat(key)
    }

    fn list(&self, key: &str) -> io::Result<Vec<String>> {
        self.inner.list(key)
    }

    fn open(&self, key: &str) -> io::Result<Box<dyn ReadAt>> {
        self.inner.open(key)
    }

    fn mkdir(&self, _: &str) -> io::Result<()> {
        Ok(())
    }

    fn symlink(&self, _: &str, _: &str) -> io::Result<()> {
        Ok(())
    }

    fn set_meta(&self, _: &str, _: &Kind, _: Option<u32>, _: Timestamp) -> io::Result<()> {
        Ok(())
    }

    fn rename(&self, _: &str, _: &str) -> io::Result<()> {
        Ok(())
    }

    /// Says what a removal would remove (1 for anything there).
    fn remove(&self, key: &str) -> io::Result<u64> {
        Ok(u64::from(self.inner.stat(key)?.is_some()))
    }

    fn keep_aside(&self, _: &str) -> io::Result<String> {
        Err(unsupported("versions kept aside"))
    }

    fn stage(&self, key: &str) -> io::Result<Box<dyn Staged>> {
        Ok(Box::new(Discarded {
            key: key.to_string(),
        }))
    }

    fn resume(&self, _: &str, _: Box<dyn Staged>) -> io::Result<Box<dyn Staged>> {
        Err(unsupported("partial files"))
    }

    fn publish(
        &self,
        _: Box<dyn Staged>,
        _: &str,
        _: Option<u32>,
        _: Timestamp,
    ) -> io::Result<Version> {
        Ok(Version::UNKNOWN)
    }

    fn is_staging(&self, name: &str) -> bool {
        self.inner.is_staging(name)
    }

    fn space(&self) -> Option<Space> {
        self.inner.space()
    }

    fn count(&self, key: &str) -> io::Result<u64> {
        self.inner.count(key)
    }
}

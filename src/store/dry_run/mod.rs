//! A dry run as a store: reads go through to the real replica, changes
//! are never made there but noted in a [`Shadow`] (on disk), which later
//! reads see first: the session runs exactly as for a real pass, page
//! after page, sees what earlier pages would have done (files published,
//! folders moved, entries removed, hard links made) and reports what it
//! would do; nothing below it knows it is a dry run. Content is never
//! written: a file the pass would have written is noted with its size,
//! mode, mtime and a version of its own ([`Store::publish_unwritten`]).

mod shadow;

pub use shadow::{Shade, Shadow};

use super::{beside, child_key, Capabilities, ReadAt, Space, Staged, Store, Version};
use crate::plan::ReplicaEntry;
use crate::tree::{Kind, Timestamp};
use std::io;

/// Wraps a store; changes nothing in it.
pub struct DryRun<'a> {
    inner: &'a dyn Store,
    shadow: &'a Shadow,
}

impl<'a> DryRun<'a> {
    pub fn new(inner: &'a dyn Store, shadow: &'a Shadow) -> Self {
        DryRun { inner, shadow }
    }

    /// What the pass would have at `key`, and where its content is.
    fn shade(&self, key: &str) -> io::Result<Option<Shade>> {
        match self.shadow.get(key)? {
            Some(s) => Ok(s),
            None => Ok(self.inner.stat(key)?.map(|e| Shade {
                kind: e.kind,
                mode: e.mode,
                mtime: e.mtime,
                version: e.version,
                origin: Some(key.to_string()),
            })),
        }
    }

    fn now() -> Timestamp {
        Timestamp::from_system(std::time::SystemTime::now())
    }

    /// A store whose directories are real ones (renames are cheap) changes
    /// a directory's mtime with its entries: so does the shadow, as a
    /// re-plan after a directory rename sees it.
    fn touch_parent(&self, key: &str) -> io::Result<()> {
        if key.is_empty() || !self.inner.capabilities().cheap_rename {
            return Ok(());
        }
        let parent = super::split_key(key).0;
        match self.shade(parent)? {
            Some(mut s) if s.kind.is_dir() => {
                s.mtime = Self::now();
                self.shadow.put(parent, Some(&s))
            }
            _ => Ok(()),
        }
    }

    /// The entry at `key` is about to be replaced or removed: a hard-linked
    /// file loses a name.
    fn replaced(&self, key: &str) -> io::Result<()> {
        // (nothing there, or no way to tell: no name lost)
        if let Ok(Some((id, _))) = self.file_links(key) {
            self.shadow.add_links(id, -1);
        }
        Ok(())
    }

    /// Notes `from`'s subtree under `to`, and `from`'s as gone.
    fn move_tree(&self, from: &str, to: &str, top: Shade) -> io::Result<()> {
        let is_dir = top.kind.is_dir();
        self.shadow.put(to, Some(&top))?;
        if is_dir {
            for name in self.list(from)? {
                let (f, t) = (child_key(from, &name), child_key(to, &name));
                if let Some(s) = self.shade(&f)? {
                    self.move_tree(&f, &t, s)?;
                }
            }
        }
        self.shadow.put(from, None)
    }

    /// Notes `key`'s subtree as gone; returns how many entries.
    fn remove_tree(&self, key: &str, is_dir: bool) -> io::Result<u64> {
        let mut n = 1;
        if is_dir {
            for name in self.list(key)? {
                let k = child_key(key, &name);
                if let Some(s) = self.shade(&k)? {
                    n += self.remove_tree(&k, s.kind.is_dir())?;
                }
            }
        } else {
            self.replaced(key)?;
        }
        self.shadow.put(key, None)?;
        Ok(n)
    }

    fn links(&self) -> bool {
        self.inner.capabilities().hard_links
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

fn not_found() -> io::Error {
    io::ErrorKind::NotFound.into()
}

impl Store for DryRun<'_> {
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            records: false,
            ..self.inner.capabilities()
        }
    }

    fn refresh(&self) -> io::Result<()> {
        // Reading the replica afresh changes nothing.
        self.inner.refresh()
    }

    fn stat(&self, key: &str) -> io::Result<Option<ReplicaEntry>> {
        Ok(self.shade(key)?.map(|s| ReplicaEntry {
            kind: s.kind,
            mode: s.mode,
            mtime: s.mtime,
            version: s.version,
        }))
    }

    fn list(&self, key: &str) -> io::Result<Vec<String>> {
        let mut names: std::collections::BTreeSet<String> = match self.shadow.get(key)? {
            Some(None) => return Err(not_found()),
            Some(Some(s)) if !s.kind.is_dir() => {
                return Err(io::Error::other(format!("{key}: not a directory")))
            }
            // Made, or moved here, by the pass: what the replica has there
            // (if anything) is below, and what the pass put there.
            Some(Some(_)) => self.inner.list(key).unwrap_or_default(),
            None => self.inner.list(key)?,
        }
        .into_iter()
        .collect();
        for (name, s) in self.shadow.children(key)? {
            match s {
                Some(_) => names.insert(name),
                None => names.remove(&name),
            };
        }
        Ok(names.into_iter().collect())
    }

    fn open(&self, key: &str) -> io::Result<Box<dyn ReadAt>> {
        match self.shadow.get(key)? {
            None => self.inner.open(key),
            Some(None) => Err(not_found()),
            Some(Some(s)) => match s.origin {
                Some(o) => self.inner.open(&o),
                None => Err(unsupported("content (not written)")),
            },
        }
    }

    fn mkdir(&self, key: &str) -> io::Result<()> {
        match self.shade(key)? {
            Some(s) if s.kind.is_dir() => Ok(()),
            Some(_) => Err(io::ErrorKind::AlreadyExists.into()),
            None => {
                self.shadow.put(
                    key,
                    Some(&Shade {
                        kind: Kind::Dir,
                        mode: None,
                        mtime: Self::now(),
                        version: Version::UNKNOWN,
                        origin: None,
                    }),
                )?;
                self.touch_parent(key)
            }
        }
    }

    fn symlink(&self, key: &str, target: &str) -> io::Result<()> {
        self.replaced(key)?;
        self.touch_parent(key)?;
        self.shadow.put(
            key,
            Some(&Shade {
                kind: Kind::Symlink {
                    target: target.to_string(),
                },
                mode: None,
                mtime: Self::now(),
                version: Version::UNKNOWN,
                origin: None,
            }),
        )
    }

    fn set_meta(&self, key: &str, _: &Kind, mode: Option<u32>, mtime: Timestamp) -> io::Result<()> {
        let mut s = self.shade(key)?.ok_or_else(not_found)?;
        if self.inner.capabilities().modes && mode.is_some() {
            s.mode = mode;
        }
        s.mtime = mtime;
        self.shadow.put(key, Some(&s))
    }

    fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        let top = self.shade(from)?.ok_or_else(not_found)?;
        if from == to {
            return Ok(());
        }
        self.replaced(to)?;
        self.move_tree(from, to, top)?;
        self.touch_parent(from)?;
        self.touch_parent(to)
    }

    /// Notes the removal; says what it would remove.
    fn remove(&self, key: &str) -> io::Result<u64> {
        match self.shade(key)? {
            None => Ok(0),
            Some(s) => {
                let n = self.remove_tree(key, s.kind.is_dir())?;
                self.touch_parent(key)?;
                Ok(n)
            }
        }
    }

    fn keep_aside(&self, key: &str) -> io::Result<String> {
        let s = self.shade(key)?.ok_or_else(not_found)?;
        let v = self.shadow.new_version().0;
        let (_, name) = super::split_key(key);
        let aside = beside(key, &format!(".replica-dry-run-{v:x}-{name}"));
        if let Some((id, _)) = self.file_links(key)? {
            self.shadow.add_links(id, 1);
        }
        self.shadow.put(&aside, Some(&s))?;
        self.touch_parent(key)?;
        Ok(aside)
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

    fn publish_unwritten(
        &self,
        key: &str,
        size: u64,
        mode: Option<u32>,
        mtime: Timestamp,
    ) -> io::Result<Version> {
        let version = self.shadow.new_version();
        let modes = self.inner.capabilities().modes;
        let s = Shade {
            kind: Kind::File { size },
            mode: mode.filter(|_| modes),
            mtime,
            version,
            origin: None,
        };
        self.replaced(key)?;
        self.shadow.put(key, Some(&s))?;
        self.touch_parent(key)?;
        Ok(version)
    }

    fn copy_file(
        &self,
        from: &str,
        to: &str,
        mode: Option<u32>,
        mtime: Timestamp,
    ) -> io::Result<Option<Version>> {
        if !self.inner.capabilities().server_copy {
            return Ok(None);
        }
        let Some(s) = self
            .shade(from)?
            .filter(|s| matches!(s.kind, Kind::File { .. }))
        else {
            return Ok(None);
        };
        let version = self.shadow.new_version();
        let copy = Shade {
            mode,
            mtime,
            version,
            ..s
        };
        self.replaced(to)?;
        self.shadow.put(to, Some(&copy))?;
        self.touch_parent(to)?;
        Ok(Some(version))
    }

    fn is_staging(&self, name: &str) -> bool {
        self.inner.is_staging(name)
    }

    fn space(&self) -> Option<Space> {
        self.inner.space()
    }

    /// The real replica's answer, or the shadow's: a file the pass would
    /// have moved keeps its identity; a file it would have written has
    /// its own. Either way with the names the pass would have added or
    /// taken away.
    fn file_links(&self, key: &str) -> io::Result<Option<(u64, u64)>> {
        if !self.links() {
            return Ok(None);
        }
        let real = |k: &str| match self.inner.file_links(k) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            r => r,
        };
        let found = match self.shadow.get(key)? {
            None => real(key)?,
            Some(Some(s)) if matches!(s.kind, Kind::File { .. }) => {
                let real = match &s.origin {
                    Some(o) => real(o)?,
                    None => None,
                };
                match real {
                    Some((id, n)) if id == s.version.0 => Some((id, n)),
                    _ => Some((s.version.0, 1)),
                }
            }
            Some(_) => None,
        };
        Ok(found.map(|(id, n)| {
            let n = (n as i64 + self.shadow.links_changed(id)).max(1);
            (id, n as u64)
        }))
    }

    fn take_linked(&self) -> Vec<(String, u64)> {
        self.inner.take_linked()
    }

    fn hard_link(&self, from: &str, to: &str) -> io::Result<()> {
        if !self.links() {
            return Err(unsupported("hard links"));
        }
        let s = self.shade(from)?.ok_or_else(not_found)?;
        self.replaced(to)?;
        if let Some((id, _)) = self.file_links(from)? {
            self.shadow.add_links(id, 1);
        }
        self.shadow.put(to, Some(&s))?;
        self.touch_parent(to)
    }

    fn own_copy(&self, key: &str, mode: Option<u32>, mtime: Timestamp) -> io::Result<()> {
        let s = self.shade(key)?.ok_or_else(not_found)?;
        self.replaced(key)?;
        let copy = Shade {
            mode,
            mtime,
            version: self.shadow.new_version(),
            ..s
        };
        self.shadow.put(key, Some(&copy))?;
        self.touch_parent(key)
    }
}

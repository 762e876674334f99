//! The source root itself: gone (an unmount, a deleted or moved folder)
//! pauses replication; back, or replaced by another directory (a remount),
//! re-watches the tree and rescans it.

use std::path::Path;
use std::time::{Duration, Instant};

/// The source root's identity: device and inode where the platform has
/// them; `None` when it is missing or not a directory.
fn root_id(root: &Path) -> Option<(u64, u64)> {
    let m = std::fs::metadata(root).ok().filter(|m| m.is_dir())?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        Some((m.dev(), m.ino()))
    }
    #[cfg(not(unix))]
    {
        let _ = m;
        Some((0, 0))
    }
}

/// Watches the source root itself: gone (an unmount, a deleted or moved
/// folder) pauses replication; back, or replaced by another directory (a
/// remount), re-watches the tree and rescans it.
pub(super) struct RootState {
    id: Option<(u64, u64)>,
    pub gone: bool,
    last_check: Instant,
}

pub(super) enum RootChange {
    Same,
    Gone,
    Back(&'static str),
}

impl RootState {
    /// How often the root is looked at (one stat).
    const EVERY: Duration = Duration::from_millis(250);

    pub fn new(root: &Path) -> Self {
        RootState {
            id: root_id(root),
            gone: false,
            last_check: Instant::now(),
        }
    }

    /// `watched`: whether the root still has its watch (it loses it when
    /// it is moved away, even if it comes back before it is looked at).
    pub fn check(&mut self, root: &Path, watched: bool) -> RootChange {
        if self.last_check.elapsed() < Self::EVERY {
            return RootChange::Same;
        }
        self.last_check = Instant::now();
        match root_id(root) {
            None if !self.gone => {
                self.gone = true;
                RootChange::Gone
            }
            None => RootChange::Same,
            Some(id) if self.gone => {
                self.gone = false;
                self.id = Some(id);
                RootChange::Back("it is back")
            }
            Some(id) if Some(id) != self.id => {
                self.id = Some(id);
                RootChange::Back("it was replaced by another directory (remounted?)")
            }
            Some(_) if !watched => RootChange::Back("it is back"),
            Some(_) => RootChange::Same,
        }
    }
}

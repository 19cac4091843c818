//! The inode table: nodeid -> [`Inode`], with the kernel's lookup counts.
//!
//! A nodeid is the inode number the mount reports for the object (see
//! `Layers::st_ino`): stable across remounts, shared by hard links, and what
//! fuser sends as both the FUSE nodeid and `st_ino`. The root is nodeid 1.
//!
//! Lock order: a table shard lock may be held while taking nothing else; an
//! inode's `layers` lock is never taken under a table shard lock.

use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use dashmap::DashMap;
use dashmap::mapref::entry::Entry;
use parking_lot::{Mutex, RwLock};

use crate::error::{Error, Result};
use crate::handle::DirSnapshot;
use crate::layer::LayerIdx;

/// The FUSE root nodeid.
pub const ROOT: u64 = 1;

/// One layer object backing an inode: an `O_PATH`, no-follow descriptor.
#[derive(Debug)]
pub struct Backing {
    pub layer: LayerIdx,
    pub fd: OwnedFd,
}

/// One object of the merged tree.
#[derive(Debug)]
pub struct Inode {
    /// FUSE nodeid (equal to `st_ino` except for the root).
    pub nodeid: u64,
    /// The inode number reported by stat and readdir.
    pub st_ino: u64,
    /// `st_mode & S_IFMT` of the object; fixed for the inode's life.
    pub kind: u32,
    lookups: AtomicU64,
    /// `st_ino` of the directory holding this one, for a listing's `..`.
    pub parent_ino: AtomicU64,
    /// For a directory, every layer directory merged into it, top-most first
    /// (stopping at an opaque one); otherwise the single winning object.
    pub layers: RwLock<Vec<Backing>>,
    /// Merged listing of a directory spanning several layers, kept because
    /// both `st_nlink` and readdir need it and the lowers never change.
    pub dir_cache: Mutex<Option<Arc<DirSnapshot>>>,
}

impl Inode {
    pub fn new(
        nodeid: u64,
        st_ino: u64,
        parent_ino: u64,
        kind: u32,
        layers: Vec<Backing>,
    ) -> Inode {
        Inode {
            nodeid,
            st_ino,
            kind,
            lookups: AtomicU64::new(0),
            parent_ino: AtomicU64::new(parent_ino),
            layers: RwLock::new(layers),
            dir_cache: Mutex::new(None),
        }
    }

    pub fn is_dir(&self) -> bool {
        self.kind == libc::S_IFDIR
    }
}

/// nodeid -> inode, sharded so that requests on different inodes do not
/// contend.
#[derive(Debug, Default)]
pub struct InodeTable {
    map: DashMap<u64, Arc<Inode>>,
}

impl InodeTable {
    pub fn new(root: Inode) -> InodeTable {
        let t = InodeTable {
            map: DashMap::new(),
        };
        // The kernel never forgets the root; one count keeps it forever.
        root.lookups.store(1, Ordering::Relaxed);
        t.map.insert(ROOT, Arc::new(root));
        t
    }

    /// The inode for a nodeid the kernel holds.
    pub fn get(&self, nodeid: u64) -> Result<Arc<Inode>> {
        // Clone the Arc and let the shard guard go before anything else runs.
        self.map
            .get(&nodeid)
            .map(|r| Arc::clone(r.value()))
            .ok_or(Error::STALE)
    }

    /// Records one kernel lookup of `nodeid`, creating the inode with `make`
    /// when the table does not hold it. The count changes under the shard
    /// lock, which is what makes [`InodeTable::forget`] race-free.
    pub fn lookup(&self, nodeid: u64, make: impl FnOnce() -> Inode) -> Arc<Inode> {
        match self.map.entry(nodeid) {
            Entry::Occupied(e) => {
                e.get().lookups.fetch_add(1, Ordering::Relaxed);
                Arc::clone(e.get())
            }
            Entry::Vacant(v) => {
                let inode = make();
                inode.lookups.store(1, Ordering::Relaxed);
                Arc::clone(v.insert(Arc::new(inode)).value())
            }
        }
    }

    /// Drops `n` kernel lookups; the inode leaves the table (and its
    /// descriptors close once the last request using it ends) at zero.
    pub fn forget(&self, nodeid: u64, n: u64) {
        if nodeid == ROOT {
            return;
        }
        if let Entry::Occupied(e) = self.map.entry(nodeid) {
            let prev = e.get().lookups.load(Ordering::Relaxed);
            let left = prev.saturating_sub(n);
            e.get().lookups.store(left, Ordering::Relaxed);
            if left == 0 {
                e.remove();
            }
        }
    }

    /// Number of inodes held (for logs and tests of FORGET handling).
    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

//! The inode table: nodeid -> [`Inode`], with the kernel's lookup counts, and
//! the bounded cache of directory descriptors.
//!
//! A nodeid is the inode number the mount reports for the object (see
//! `Layers::st_ino`): stable across remounts, shared by hard links, and what
//! fuser sends as both the FUSE nodeid and `st_ino`. The root is nodeid 1.
//!
//! An inode holds no descriptor of its own. It knows where it lives (parent
//! inode and name) and which layers hold it; a directory's per-layer `O_PATH`
//! descriptors are opened on demand relative to its parent's and kept in a
//! cache bounded by the open-file limit. A non-directory is always reached as
//! `(parent directory descriptor, name)`. So a walk over millions of files
//! never runs out of descriptors, whatever the kernel keeps cached.
//!
//! Lock order: table shard lock, then nothing; an inode's `fds` lock, then the
//! cache's queue lock; never an inode lock under a table shard lock.

use std::collections::VecDeque;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};

use dashmap::DashMap;
use dashmap::mapref::entry::Entry;
use parking_lot::{Mutex, RwLock};

use crate::error::{Error, Result};
use crate::layer::LayerIdx;
use crate::name::Name;
use crate::resolve::Found;
use crate::snapshot::DirSnapshot;

/// The FUSE root nodeid.
pub const ROOT: u64 = 1;

/// Where an inode lives in the merged tree.
#[derive(Debug, Clone)]
pub struct Location {
    pub parent: Arc<Inode>,
    pub name: Name,
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
    /// Parent and name; `None` for the root, and for an object whose last
    /// name is gone (then `dead` is set).
    pub loc: RwLock<Option<Location>>,
    /// Further names of a hard-linked object that the kernel has looked up
    /// or created, so that it stays reachable when `loc` is unlinked.
    aliases: Mutex<Vec<Location>>,
    /// Every name is gone; only open handles still reach the object.
    pub dead: AtomicBool,
    /// Serialises copy-up of this object: concurrent writers copy once.
    pub copy_lock: Mutex<()>,
    /// For a directory, every layer whose directory is merged into it,
    /// top-most first (stopping at an opaque one); otherwise the single layer
    /// of the winning object.
    pub layers: RwLock<Vec<LayerIdx>>,
    /// Cached `O_PATH` descriptors of a directory, per layer.
    fds: Mutex<Vec<Slot>>,
    /// The descriptors are never evicted: the directory was found through
    /// a redirect, so its lower parts cannot be reopened from the parent by
    /// name. Such directories are rare (renamed by kernel overlayfs).
    pinned: AtomicBool,
    /// Merged listing of a directory spanning several layers, kept because
    /// both `st_nlink` and readdir need it and the lowers never change.
    pub dir_cache: Mutex<Option<Arc<DirSnapshot>>>,
    /// Layers whose directory here holds `.wh.` files, as the last listing
    /// saw them (all, until one is taken or after any change).
    oci_layers: AtomicU64,
    /// Changes made through the mount in this directory, so that a listing
    /// taken across one does not pass for current; updated with
    /// `oci_layers` under `oci_lock`.
    changes: AtomicU64,
    oci_lock: Mutex<()>,
    /// Subdirectories of a merged directory, for `st_nlink`: kept apart
    /// from the listing, which every file created in the directory
    /// invalidates.
    subdirs: AtomicU32,
}

/// `Inode::subdirs` not computed yet.
const UNKNOWN: u32 = u32::MAX;

impl Inode {
    pub fn new(
        nodeid: u64,
        st_ino: u64,
        kind: u32,
        loc: Option<Location>,
        layers: Vec<LayerIdx>,
    ) -> Inode {
        Inode {
            nodeid,
            st_ino,
            kind,
            lookups: AtomicU64::new(0),
            loc: RwLock::new(loc),
            aliases: Mutex::new(Vec::new()),
            dead: AtomicBool::new(false),
            copy_lock: Mutex::new(()),
            layers: RwLock::new(layers),
            fds: Mutex::new(Vec::new()),
            pinned: AtomicBool::new(false),
            dir_cache: Mutex::new(None),
            subdirs: AtomicU32::new(UNKNOWN),
            oci_layers: AtomicU64::new(u64::MAX),
            changes: AtomicU64::new(0),
            oci_lock: Mutex::new(()),
        }
    }

    pub fn is_dir(&self) -> bool {
        self.kind == libc::S_IFDIR
    }

    /// The top-most layer holding the object.
    pub fn top_layer(&self) -> Result<LayerIdx> {
        self.layers.read().first().copied().ok_or(Error::STALE)
    }

    /// `st_ino` of the parent directory (the inode's own for the root).
    pub fn parent_ino(&self) -> u64 {
        self.loc
            .read()
            .as_ref()
            .map(|l| l.parent.st_ino)
            .unwrap_or(self.st_ino)
    }

    /// The current location; `ESTALE` once every name is gone. The root
    /// has none.
    pub fn location(&self) -> Result<Option<Location>> {
        if self.dead.load(Ordering::Acquire) {
            return Err(Error::STALE);
        }
        Ok(self.loc.read().clone())
    }

    /// Records that the object is (also) reachable as `name` in `parent`,
    /// bringing a dead inode back (its number was reused for a new object).
    pub fn note_location(&self, parent: &Arc<Inode>, name: &Name) {
        let same =
            |l: &Location| Arc::ptr_eq(&l.parent, parent) && l.name.as_bytes() == name.as_bytes();
        if self.loc.read().as_ref().is_some_and(same) {
            return;
        }
        let mut loc = self.loc.write();
        let new = Location {
            parent: Arc::clone(parent),
            name: name.clone(),
        };
        if self.dead.load(Ordering::Acquire) || loc.is_none() {
            *loc = Some(new);
            self.dead.store(false, Ordering::Release);
            return;
        }
        if loc.as_ref().is_some_and(same) {
            return;
        }
        let mut aliases = self.aliases.lock();
        if !aliases.iter().any(same) {
            aliases.push(new);
        }
    }

    /// Makes `name` in `parent` the location used to reach the object,
    /// keeping the previous one as an alias.
    pub fn move_location_front(&self, parent: &Arc<Inode>, name: &Name) {
        let new = Location {
            parent: Arc::clone(parent),
            name: name.clone(),
        };
        let mut loc = self.loc.write();
        let mut aliases = self.aliases.lock();
        aliases
            .retain(|l| !(Arc::ptr_eq(&l.parent, parent) && l.name.as_bytes() == name.as_bytes()));
        if let Some(old) = loc.replace(new) {
            aliases.push(old);
        }
        self.dead.store(false, Ordering::Release);
    }

    /// Forgets the name `name` in `parent` (unlinked or replaced). When it
    /// was the last known one, the inode is dead.
    pub fn remove_location(&self, parent: &Inode, name: &[u8]) {
        let same = |l: &Location| {
            std::ptr::eq(Arc::as_ptr(&l.parent), parent) && l.name.as_bytes() == name
        };
        let mut loc = self.loc.write();
        let mut aliases = self.aliases.lock();
        if loc.as_ref().is_some_and(same) {
            *loc = aliases.pop();
            if loc.is_none() {
                self.dead.store(true, Ordering::Release);
            }
        } else {
            aliases.retain(|l| !same(l));
        }
    }

    /// Moves the name `name` in `parent` to `new` (a rename).
    pub fn move_location(&self, parent: &Inode, name: &[u8], new: Location) {
        let same = |l: &Location| {
            std::ptr::eq(Arc::as_ptr(&l.parent), parent) && l.name.as_bytes() == name
        };
        let mut loc = self.loc.write();
        if loc.as_ref().is_none_or(same) {
            *loc = Some(new);
            self.dead.store(false, Ordering::Release);
            return;
        }
        let mut aliases = self.aliases.lock();
        aliases.retain(|l| !same(l));
        aliases.push(new);
    }

    /// Drops the cached merged listing after a change in the directory;
    /// `subdirs` when the change may add or remove a subdirectory.
    pub fn changed(&self, subdirs: bool) {
        *self.dir_cache.lock() = None;
        {
            let _g = self.oci_lock.lock();
            self.changes.fetch_add(1, Ordering::Relaxed);
            self.oci_layers.store(u64::MAX, Ordering::Relaxed);
        }
        if subdirs {
            self.subdirs.store(UNKNOWN, Ordering::Relaxed);
        }
    }

    /// See the field; `u64::MAX` when unknown.
    pub fn oci_layers(&self) -> u64 {
        self.oci_layers.load(Ordering::Relaxed)
    }

    /// The count of changes, to pass to [`Inode::set_oci_layers`].
    pub fn changes(&self) -> u64 {
        self.changes.load(Ordering::Relaxed)
    }

    /// Records what a listing started at change count `seen` found, unless
    /// the directory changed since.
    pub fn set_oci_layers(&self, seen: u64, mask: u64) {
        let _g = self.oci_lock.lock();
        if self.changes.load(Ordering::Relaxed) == seen {
            self.oci_layers.store(mask, Ordering::Relaxed);
        }
    }

    /// The number of subdirectories of a merged directory, when known.
    pub fn subdirs(&self) -> Option<u32> {
        let n = self.subdirs.load(Ordering::Relaxed);
        (n != UNKNOWN).then_some(n)
    }

    pub fn set_subdirs(&self, n: u32) {
        self.subdirs.store(n, Ordering::Relaxed);
    }

    /// A cached descriptor of this directory in `layer`.
    pub fn cached_fd(&self, layer: LayerIdx) -> Option<Arc<OwnedFd>> {
        self.fds
            .lock()
            .iter()
            .find(|s| s.layer == layer)
            .map(|s| Arc::clone(&s.fd))
    }
}

/// One cached descriptor. It counts against the cache's budget for as long
/// as it lives, however it goes (evicted, released, or dropped with an inode
/// that never entered the table).
#[derive(Debug)]
struct Slot {
    layer: LayerIdx,
    fd: Arc<OwnedFd>,
    _counted: Option<Counted>,
}

#[derive(Debug)]
struct Counted(Arc<AtomicUsize>);

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Queue entries tolerated beyond twice the cached descriptors before the
/// queue is swept of inodes that are gone.
const QUEUE_SLACK: usize = 4096;

/// The bound on cached directory descriptors, shared by all inodes. Eviction
/// is first-in first-out: cheap, and a re-open costs one `openat2`.
#[derive(Debug)]
pub struct FdCache {
    budget: usize,
    count: Arc<AtomicUsize>,
    queue: Mutex<VecDeque<Weak<Inode>>>,
}

impl FdCache {
    pub fn new(budget: usize) -> FdCache {
        FdCache {
            budget: budget.max(64),
            count: Arc::new(AtomicUsize::new(0)),
            queue: Mutex::new(VecDeque::new()),
        }
    }

    /// Caches `fd` as `inode`'s descriptor in `layer` (unless a racing
    /// request already did) and returns the one to use.
    pub fn insert(&self, inode: &Arc<Inode>, layer: LayerIdx, fd: OwnedFd) -> Arc<OwnedFd> {
        let fd = {
            let mut fds = inode.fds.lock();
            if let Some(existing) = fds.iter().find(|s| s.layer == layer) {
                return Arc::clone(&existing.fd);
            }
            let fd = Arc::new(fd);
            let pinned = inode.pinned.load(Ordering::Relaxed);
            let counted = (!pinned).then(|| {
                self.count.fetch_add(1, Ordering::Relaxed);
                Counted(Arc::clone(&self.count))
            });
            fds.push(Slot {
                layer,
                fd: Arc::clone(&fd),
                _counted: counted,
            });
            if pinned {
                return fd;
            }
            if fds.len() == 1 {
                let mut q = self.queue.lock();
                q.push_back(Arc::downgrade(inode));
                // Entries of inodes that are gone stay until an eviction
                // reaches them, and each keeps its inode's memory; with the
                // budget never reached none would come. Dropping them here
                // keeps the queue in proportion to what is cached. Only weak
                // counts are read: no inode lock is taken under this one.
                if q.len() > QUEUE_SLACK.max(2 * self.count.load(Ordering::Relaxed)) {
                    q.retain(|w| w.strong_count() > 0);
                }
            }
            fd
        };
        if self.count.load(Ordering::Relaxed) > self.budget {
            self.evict();
        }
        fd
    }

    /// Closes the cached descriptors of the oldest inodes until the count is
    /// back under the budget. A request still using one keeps its `Arc`.
    fn evict(&self) {
        while self.count.load(Ordering::Relaxed) > self.budget * 7 / 8 {
            let Some(victim) = self.queue.lock().pop_front() else {
                return;
            };
            if let Some(inode) = victim.upgrade() {
                drop(std::mem::take(&mut *inode.fds.lock()));
            }
        }
    }

    /// Drops an inode's cached descriptors (it left the table, or what it
    /// refers to changed).
    pub fn release(&self, inode: &Inode) {
        drop(std::mem::take(&mut *inode.fds.lock()));
        inode.pinned.store(false, Ordering::Relaxed);
    }

    /// Caches the descriptors a lookup opened for an inode.
    pub fn insert_found(&self, inode: &Arc<Inode>, found: Found) {
        if found.redirected {
            inode.pinned.store(true, Ordering::Relaxed);
        }
        for (layer, fd) in found.layers.iter().zip(found.dir_fds) {
            self.insert(inode, *layer, fd);
        }
    }
}

/// nodeid -> inode, sharded so that requests on different inodes do not
/// contend.
#[derive(Debug, Default)]
pub struct InodeTable {
    map: DashMap<u64, Arc<Inode>>,
    /// Inodes entered since the table last gave memory back, and the most
    /// there were: after a walk the kernel forgets nearly all of them, and
    /// the table's capacity (and the allocator's free lists) would
    /// otherwise stay at the walk's size for the daemon's life.
    live: AtomicUsize,
    peak: AtomicUsize,
}

/// Below this many inodes at its peak, a table never bothers to shrink.
const SHRINK_FLOOR: usize = 16 * 1024;

impl InodeTable {
    pub fn new(root: Inode) -> InodeTable {
        let t = InodeTable {
            map: DashMap::new(),
            live: AtomicUsize::new(1),
            peak: AtomicUsize::new(1),
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
    pub fn lookup(&self, nodeid: u64, kind: u32, make: impl FnOnce() -> Inode) -> Arc<Inode> {
        match self.map.entry(nodeid) {
            Entry::Occupied(mut e) => {
                let cur = e.get();
                if cur.dead.load(Ordering::Acquire) && cur.kind != kind {
                    // The number of an unlinked object was reused by one of
                    // another type: the kernel gets a fresh inode anyway.
                    let count = cur.lookups.load(Ordering::Relaxed) + 1;
                    let inode = make();
                    inode.lookups.store(count, Ordering::Relaxed);
                    e.insert(Arc::new(inode));
                    return Arc::clone(e.get());
                }
                cur.lookups.fetch_add(1, Ordering::Relaxed);
                Arc::clone(cur)
            }
            Entry::Vacant(v) => {
                let inode = make();
                inode.lookups.store(1, Ordering::Relaxed);
                let live = self.live.fetch_add(1, Ordering::Relaxed) + 1;
                self.peak.fetch_max(live, Ordering::Relaxed);
                Arc::clone(v.insert(Arc::new(inode)).value())
            }
        }
    }

    /// Every inode in the table (for the rare fix-ups that touch a subtree).
    pub fn all(&self) -> Vec<Arc<Inode>> {
        self.map.iter().map(|r| Arc::clone(r.value())).collect()
    }

    /// Drops `n` kernel lookups; at zero the inode leaves the table and is
    /// returned so the caller can release what it caches.
    pub fn forget(&self, nodeid: u64, n: u64) -> Option<Arc<Inode>> {
        if nodeid == ROOT {
            return None;
        }
        let removed = match self.map.entry(nodeid) {
            Entry::Occupied(e) => {
                let prev = e.get().lookups.load(Ordering::Relaxed);
                let left = prev.saturating_sub(n);
                e.get().lookups.store(left, Ordering::Relaxed);
                (left == 0).then(|| e.remove())
            }
            Entry::Vacant(_) => None,
        };
        if removed.is_some() {
            let live = self.live.fetch_sub(1, Ordering::Relaxed).saturating_sub(1);
            let peak = self.peak.load(Ordering::Relaxed);
            // Shrunk to an eighth of its peak: give the memory back, once
            // (the shard guard above is gone by now).
            if peak >= SHRINK_FLOOR
                && live < peak / 8
                && self
                    .peak
                    .compare_exchange(peak, live.max(1), Ordering::Relaxed, Ordering::Relaxed)
                    .is_ok()
            {
                self.map.shrink_to_fit();
                crate::sys::trim_heap();
            }
        }
        removed
    }
}

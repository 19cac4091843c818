//! The inode table: nodeid -> [`Inode`], with the kernel's lookup counts, and
//! the bounded cache of directory descriptors.
//!
//! A nodeid is the inode number the mount reports for the object (see
//! `Layers::st_ino`): stable across remounts, shared by hard links, and what
//! fuser sends as both the FUSE nodeid and `st_ino`. The root is nodeid 1.
//!
//! An inode holds no descriptor of its own. It knows where it lives (parent
//! inode and name, and a [`Place`] in the layers); a directory's per-layer
//! `O_PATH` descriptors are opened on demand relative to its parent's and
//! kept in a cache bounded by the open-file limit. A non-directory is always
//! reached as `(parent directory descriptor, name)`. So a walk over millions
//! of files never runs out of descriptors, whatever the kernel keeps cached.

use std::collections::VecDeque;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};

use dashmap::DashMap;
use dashmap::mapref::entry::{Entry, OccupiedEntry, VacantEntry};
use parking_lot::{Mutex, MutexGuard, RwLock};

use crate::error::{Error, Result};
use crate::layer::{LayerIdx, Place, Winner};
use crate::listing::DirSnapshot;
use crate::name::Name;
use crate::resolve::Found;

/// The FUSE root nodeid.
pub const ROOT: u64 = 1;

/// Where an inode lives in the merged tree.
#[derive(Debug, Clone)]
pub struct Location {
    pub parent: Arc<Inode>,
    pub name: Name,
}

/// One object of the merged tree.
///
/// Lock order, outermost first: `copy`, `dir`, `names`, `state`, then the
/// descriptor cache's queue. No inode lock is taken under an inode table
/// shard lock. Of two inodes' locks of one kind, only `copy` is ever held
/// together, parent before child; `names` and `state` of ancestors are
/// taken one at a time while walking up.
#[derive(Debug)]
pub struct Inode {
    /// FUSE nodeid (equal to `st_ino` except for the root).
    pub nodeid: u64,
    /// The inode number reported by stat and readdir.
    pub st_ino: u64,
    /// `st_mode & S_IFMT` of the object; fixed for the inode's life.
    pub kind: u32,
    /// Added to the mount's FUSE generation: an object that takes over the
    /// number of one the kernel may still hold gets the next, so that the
    /// kernel never mistakes one for the other.
    pub generation: u64,
    lookups: AtomicU64,
    /// Serialises copy-up of this object, held across the copy: concurrent
    /// writers copy once.
    copy: Mutex<()>,
    /// The listing of a directory's readdir pass, held while a listing is
    /// taken so that no change in the directory comes between listing and
    /// keeping it.
    dir: Mutex<DirState>,
    /// Layers whose directory here holds `.wh.` files, as the last listing
    /// saw them (all, until one is taken or after any change); written under
    /// `dir`, read without it on every lookup in the directory.
    oci_layers: AtomicU64,
    /// Parent and names.
    names: RwLock<Names>,
    /// Every name is gone; only open handles still reach the object.
    /// Written under `names`, read without it.
    dead: AtomicBool,
    /// The object was copied up and the directory entry of its copy was
    /// not synced yet: the copy's data is durable, its name may not be.
    name_unsynced: AtomicBool,
    /// Where the object lives, and the directory descriptors that reach it
    /// there: one lock, so that a copy-up changes both at once.
    state: RwLock<State>,
    /// A second nodeid the kernel reaches the object by (0: none), see
    /// [`InodeTable::alias`].
    alias: AtomicU64,
}

#[derive(Debug)]
struct Names {
    /// `None` for the root, and for an object whose last name is gone.
    loc: Option<Location>,
    /// Further names of a hard-linked object that the kernel has looked up
    /// or created, so that it stays reachable when `loc` is unlinked.
    aliases: Vec<Location>,
}

#[derive(Debug)]
struct State {
    place: Place,
    /// Cached `O_PATH` descriptors of a directory, per layer.
    fds: Vec<Slot>,
    /// The descriptors are never evicted: the directory was found through
    /// a redirect, so its lower parts cannot be reopened from the parent by
    /// name. Such directories are rare (renamed by kernel overlayfs).
    pinned: bool,
}

#[derive(Debug, Default)]
struct DirState {
    /// The listing of a readdir pass in progress.
    listing: Option<Arc<DirSnapshot>>,
}

/// The directory lock of an inode, held while its listing is taken.
#[derive(Debug)]
pub struct DirGuard<'a> {
    inode: &'a Inode,
    state: MutexGuard<'a, DirState>,
}

impl DirGuard<'_> {
    pub fn listing(&self) -> Option<Arc<DirSnapshot>> {
        self.state.listing.clone()
    }

    /// A readdir pass over `snap` reached its end: the kernel keeps the
    /// listing now, and the directory need not.
    pub fn pass_ended(&mut self, snap: &Arc<DirSnapshot>) {
        if self
            .state
            .listing
            .as_ref()
            .is_some_and(|s| Arc::ptr_eq(s, snap))
        {
            self.state.listing = None;
        }
    }

    /// Keeps a listing taken under this guard.
    pub fn keep(&mut self, snap: &Arc<DirSnapshot>) {
        self.state.listing = Some(Arc::clone(snap));
        self.inode
            .oci_layers
            .store(snap.oci_layers(), Ordering::Relaxed);
    }
}

impl Inode {
    pub fn new(nodeid: u64, st_ino: u64, kind: u32, loc: Option<Location>, place: Place) -> Inode {
        Inode {
            nodeid,
            st_ino,
            kind,
            generation: 0,
            lookups: AtomicU64::new(0),
            alias: AtomicU64::new(0),
            copy: Mutex::new(()),
            dir: Mutex::new(DirState::default()),
            oci_layers: AtomicU64::new(u64::MAX),
            names: RwLock::new(Names {
                loc,
                aliases: Vec::new(),
            }),
            dead: AtomicBool::new(false),
            name_unsynced: AtomicBool::new(false),
            state: RwLock::new(State {
                place,
                fds: Vec::new(),
                pinned: false,
            }),
        }
    }

    pub fn is_dir(&self) -> bool {
        self.kind == libc::S_IFDIR
    }

    /// Held while the object is copied up.
    pub fn copy_lock(&self) -> MutexGuard<'_, ()> {
        self.copy.lock()
    }

    /// A copy of where the object lives.
    pub fn place(&self) -> Place {
        self.state.read().place.clone()
    }

    /// See [`Place::in_upper`].
    pub fn in_upper(&self) -> bool {
        self.state.read().place.in_upper()
    }

    /// See [`Place::upper_only`].
    pub fn upper_only(&self) -> bool {
        self.state.read().place.upper_only()
    }

    /// See [`Place::is_merged`].
    pub fn is_merged(&self) -> bool {
        self.state.read().place.is_merged()
    }

    /// See [`Place::winner`].
    pub fn winner(&self) -> Winner {
        self.state.read().place.winner()
    }

    /// The nodeid the kernel is to reach the object by from now on: its
    /// alias once it has one (see [`InodeTable::alias`]).
    pub fn entry_nodeid(&self) -> u64 {
        match self.alias.load(Ordering::Acquire) {
            0 => self.nodeid,
            a => a,
        }
    }

    /// Whether `nodeid` is one the kernel reaches this object by.
    pub fn answers_to(&self, nodeid: u64) -> bool {
        self.nodeid == nodeid || self.alias.load(Ordering::Acquire) == nodeid
    }

    /// A metadata-only copy (see [`Place::MetaCopy`]).
    pub fn is_metacopy(&self) -> bool {
        matches!(self.state.read().place, Place::MetaCopy { .. })
    }

    /// Every layer directory of a directory, when all are cached: one lock
    /// and no extra allocation on the path every lookup takes.
    pub fn cached_dir_fds(&self) -> Option<Vec<(LayerIdx, Arc<OwnedFd>)>> {
        let st = self.state.read();
        st.place
            .dir_layers()
            .iter()
            .map(|&l| {
                st.fds
                    .iter()
                    .find(|s| s.layer == l)
                    .map(|s| (l, Arc::clone(&s.fd)))
            })
            .collect()
    }

    /// The layers of a directory, top-most first.
    pub fn dir_layers(&self) -> Vec<LayerIdx> {
        self.state.read().place.dir_layers().to_vec()
    }

    /// The object now lives at `place`; cached descriptors, which reached
    /// it where it was, are dropped.
    pub fn relocate(&self, place: Place) {
        let old = {
            let mut st = self.state.write();
            st.place = place;
            st.pinned = false;
            std::mem::take(&mut st.fds)
        };
        drop(old);
    }

    /// The object was copied up as a non-directory (into the index when
    /// `indexed`). A directory's copy-up goes through
    /// [`FdCache::copied_up`], which records its new descriptor with it.
    pub fn copied_up(&self, indexed: bool) {
        let mut st = self.state.write();
        st.place = st.place.copied_up(indexed);
    }

    /// `st_ino` of the parent directory (the inode's own for the root).
    pub fn parent_ino(&self) -> u64 {
        self.names
            .read()
            .loc
            .as_ref()
            .map(|l| l.parent.st_ino)
            .unwrap_or(self.st_ino)
    }

    /// The parent, if the object has a name.
    pub fn parent(&self) -> Option<Arc<Inode>> {
        self.names
            .read()
            .loc
            .as_ref()
            .map(|l| Arc::clone(&l.parent))
    }

    /// The copy just made is durable, its entry in the parent not yet.
    pub fn name_unsynced(&self) {
        self.name_unsynced.store(true, Ordering::Release);
    }

    /// Whether the entry of the copy still has to be synced. Cleared only
    /// once it is ([`Inode::name_synced`]), so that an fsync that finds it
    /// clear never returns while another one is still syncing it.
    pub fn is_name_unsynced(&self) -> bool {
        self.name_unsynced.load(Ordering::Acquire)
    }

    pub fn name_synced(&self) {
        self.name_unsynced.store(false, Ordering::Release);
    }

    /// Every name of the object is gone.
    pub fn is_dead(&self) -> bool {
        self.dead.load(Ordering::Acquire)
    }

    /// The current location; `ESTALE` once every name is gone. The root
    /// has none.
    pub fn location(&self) -> Result<Option<Location>> {
        if self.is_dead() {
            return Err(Error::STALE);
        }
        Ok(self.names.read().loc.clone())
    }

    /// Records that the object is (also) reachable as `name` in `parent`,
    /// bringing a dead inode back (its number was reused for a new object).
    pub fn note_location(&self, parent: &Arc<Inode>, name: &Name) {
        let same =
            |l: &Location| Arc::ptr_eq(&l.parent, parent) && l.name.as_bytes() == name.as_bytes();
        if self.names.read().loc.as_ref().is_some_and(same) {
            return;
        }
        let mut names = self.names.write();
        let new = Location {
            parent: Arc::clone(parent),
            name: name.clone(),
        };
        if self.is_dead() || names.loc.is_none() {
            names.loc = Some(new);
            self.dead.store(false, Ordering::Release);
            return;
        }
        if names.loc.as_ref().is_some_and(same) {
            return;
        }
        if !names.aliases.iter().any(same) {
            names.aliases.push(new);
        }
    }

    /// Makes `name` in `parent` the location used to reach the object,
    /// keeping the previous one as an alias.
    pub fn move_location_front(&self, parent: &Arc<Inode>, name: &Name) {
        let new = Location {
            parent: Arc::clone(parent),
            name: name.clone(),
        };
        let mut names = self.names.write();
        names
            .aliases
            .retain(|l| !(Arc::ptr_eq(&l.parent, parent) && l.name.as_bytes() == name.as_bytes()));
        if let Some(old) = names.loc.replace(new) {
            names.aliases.push(old);
        }
        self.dead.store(false, Ordering::Release);
    }

    /// Forgets the name `name` in `parent` (unlinked or replaced). When it
    /// was the last known one, the inode is dead.
    pub fn remove_location(&self, parent: &Inode, name: &[u8]) {
        let same = |l: &Location| {
            std::ptr::eq(Arc::as_ptr(&l.parent), parent) && l.name.as_bytes() == name
        };
        let mut names = self.names.write();
        if names.loc.as_ref().is_some_and(same) {
            names.loc = names.aliases.pop();
            if names.loc.is_none() {
                self.dead.store(true, Ordering::Release);
            }
        } else {
            names.aliases.retain(|l| !same(l));
        }
    }

    /// Moves the name `name` in `parent` to `new` (a rename).
    pub fn move_location(&self, parent: &Inode, name: &[u8], new: Location) {
        let same = |l: &Location| {
            std::ptr::eq(Arc::as_ptr(&l.parent), parent) && l.name.as_bytes() == name
        };
        let mut names = self.names.write();
        if names.loc.as_ref().is_none_or(same) {
            names.loc = Some(new);
            self.dead.store(false, Ordering::Release);
            return;
        }
        names.aliases.retain(|l| !same(l));
        names.aliases.push(new);
    }

    /// Drops the kept listing after a change in the directory.
    pub fn changed(&self) {
        let mut d = self.dir.lock();
        d.listing = None;
        self.oci_layers.store(u64::MAX, Ordering::Relaxed);
    }

    /// Locks the directory's listing state (see [`DirGuard`]).
    pub fn lock_dir(&self) -> DirGuard<'_> {
        DirGuard {
            inode: self,
            state: self.dir.lock(),
        }
    }

    /// See the field; `u64::MAX` when unknown.
    pub fn oci_layers(&self) -> u64 {
        self.oci_layers.load(Ordering::Relaxed)
    }

    /// A cached descriptor of this directory in `layer`.
    pub fn cached_fd(&self, layer: LayerIdx) -> Option<Arc<OwnedFd>> {
        self.state
            .read()
            .fds
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
    /// The budget was passed while an inode's state lock was held.
    evict_later: AtomicBool,
}

impl FdCache {
    pub fn new(budget: usize) -> FdCache {
        FdCache {
            budget: budget.max(64),
            count: Arc::new(AtomicUsize::new(0)),
            queue: Mutex::new(VecDeque::new()),
            evict_later: AtomicBool::new(false),
        }
    }

    /// Caches `fd` as `inode`'s descriptor in `layer` (unless a racing
    /// request already did) and returns the one to use.
    pub fn insert(&self, inode: &Arc<Inode>, layer: LayerIdx, fd: OwnedFd) -> Arc<OwnedFd> {
        let fd = {
            let mut st = inode.state.write();
            self.insert_locked(inode, &mut st, layer, fd)
        };
        self.evict_if_due();
        fd
    }

    fn insert_locked(
        &self,
        inode: &Arc<Inode>,
        st: &mut State,
        layer: LayerIdx,
        fd: OwnedFd,
    ) -> Arc<OwnedFd> {
        if let Some(existing) = st.fds.iter().find(|s| s.layer == layer) {
            return Arc::clone(&existing.fd);
        }
        let fd = Arc::new(fd);
        let counted = (!st.pinned).then(|| {
            self.count.fetch_add(1, Ordering::Relaxed);
            Counted(Arc::clone(&self.count))
        });
        st.fds.push(Slot {
            layer,
            fd: Arc::clone(&fd),
            _counted: counted,
        });
        if st.pinned {
            return fd;
        }
        if st.fds.len() == 1 {
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
        if self.count.load(Ordering::Relaxed) > self.budget {
            // Evicting takes other inodes' state locks: not under this one.
            self.evict_later.store(true, Ordering::Relaxed);
        }
        fd
    }

    /// Records that directory `inode` was copied up: the upper layer's
    /// directory, `fd`, now heads its layers. One lock covers both, so no
    /// request sees the new place without its descriptor.
    pub fn copied_up(&self, inode: &Arc<Inode>, fd: OwnedFd) -> Arc<OwnedFd> {
        let fd = {
            let mut st = inode.state.write();
            st.place = st.place.copied_up(false);
            self.insert_locked(inode, &mut st, 0, fd)
        };
        self.evict_if_due();
        fd
    }

    /// Evicts once the budget was passed (see `insert_locked`).
    fn evict_if_due(&self) {
        if self.evict_later.swap(false, Ordering::Relaxed) {
            self.evict();
        }
    }

    /// Closes the cached descriptors of the oldest inodes until the count is
    /// back under the budget. A request still using one keeps its `Arc`.
    fn evict(&self) {
        while self.count.load(Ordering::Relaxed) > self.budget * 7 / 8 {
            let Some(victim) = self.queue.lock().pop_front() else {
                return;
            };
            if let Some(inode) = victim.upgrade() {
                let gone = std::mem::take(&mut inode.state.write().fds);
                drop(gone);
            }
        }
    }

    /// Drops an inode's cached descriptors (it left the table, or what it
    /// refers to changed).
    pub fn release(&self, inode: &Inode) {
        let gone = {
            let mut st = inode.state.write();
            st.pinned = false;
            std::mem::take(&mut st.fds)
        };
        drop(gone);
    }

    /// Caches the descriptors a lookup opened for an inode.
    pub fn insert_found(&self, inode: &Arc<Inode>, found: Found) {
        {
            let mut st = inode.state.write();
            if found.redirected {
                st.pinned = true;
            }
            for (layer, fd) in found.layers.iter().zip(found.dir_fds) {
                self.insert_locked(inode, &mut st, *layer, fd);
            }
        }
        self.evict_if_due();
    }
}

/// nodeid -> inode, sharded so that requests on different inodes do not
/// contend.
#[derive(Debug, Default)]
pub struct InodeTable {
    map: DashMap<u64, Arc<Inode>>,
    /// Aliases handed out so far.
    aliases: AtomicU64,
    /// Aliases replaced by newer ones, still in `map` while the kernel may
    /// hold them (see [`InodeTable::alias`]).
    retired: parking_lot::Mutex<Vec<u64>>,
    /// Inodes entered since the table last gave memory back, and the most
    /// there were: after a walk the kernel forgets nearly all of them, and
    /// the table's capacity (and the allocator's free lists) would
    /// otherwise stay at the walk's size for the daemon's life.
    live: AtomicUsize,
    peak: AtomicUsize,
}

/// Aliases are nodeids whose top byte is all ones, which no reported inode
/// number has: that would take 255 layer devices (the top byte numbers the
/// device, see `Layers::st_ino`), or a single filesystem handing out inode
/// numbers from `0xFF << 56` on.
const ALIAS_BASE: u64 = 0xFF << 56;

/// Whether `nodeid` is an alias (see [`InodeTable::alias`]).
pub fn is_alias(nodeid: u64) -> bool {
    nodeid & ALIAS_BASE == ALIAS_BASE
}

/// Below this many inodes at its peak, a table never bothers to shrink.
const SHRINK_FLOOR: usize = 16 * 1024;

impl InodeTable {
    pub fn new(root: Inode) -> InodeTable {
        let t = InodeTable {
            map: DashMap::new(),
            aliases: AtomicU64::new(0),
            retired: parking_lot::Mutex::new(Vec::new()),
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
                if cur.kind != kind {
                    // The number of a removed object was reused by one of
                    // another type (an object never changes type). The old
                    // one may not be marked dead yet: its remover frees the
                    // number on disk before it updates the table.
                    return Self::take_over(&mut e, make);
                }
                cur.lookups.fetch_add(1, Ordering::Relaxed);
                Arc::clone(cur)
            }
            Entry::Vacant(v) => self.insert_new(v, make),
        }
    }

    /// Records one kernel lookup of an object just made in the upper
    /// layer. Its number was free on disk a moment before, so whatever the
    /// table holds under it is a removed object, dead or about to be
    /// marked so, and never the new one: reviving it would hand the new
    /// object the old one's generation, and the kernel, which may still
    /// hold the old inode, would take one for the other.
    pub fn insert_created(&self, nodeid: u64, make: impl FnOnce() -> Inode) -> Arc<Inode> {
        match self.map.entry(nodeid) {
            Entry::Occupied(mut e) => Self::take_over(&mut e, make),
            Entry::Vacant(v) => self.insert_new(v, make),
        }
    }

    /// Puts a new object in place of the one `e` holds under its reused
    /// number: the next generation, so that the kernel tells them apart,
    /// and the old one's lookups kept, which the kernel will forget under
    /// the same nodeid.
    fn take_over(
        e: &mut OccupiedEntry<'_, u64, Arc<Inode>>,
        make: impl FnOnce() -> Inode,
    ) -> Arc<Inode> {
        let cur = e.get();
        let count = cur.lookups.load(Ordering::Relaxed) + 1;
        let mut inode = make();
        inode.generation = cur.generation + 1;
        inode.lookups.store(count, Ordering::Relaxed);
        e.insert(Arc::new(inode));
        Arc::clone(e.get())
    }

    fn insert_new(
        &self,
        v: VacantEntry<'_, u64, Arc<Inode>>,
        make: impl FnOnce() -> Inode,
    ) -> Arc<Inode> {
        let inode = make();
        inode.lookups.store(1, Ordering::Relaxed);
        let live = self.live.fetch_add(1, Ordering::Relaxed) + 1;
        self.peak.fetch_max(live, Ordering::Relaxed);
        Arc::clone(v.insert(Arc::new(inode)).value())
    }

    /// Gives `inode` a second nodeid, under which the kernel makes a new
    /// inode of its own for the object at its next lookup, while the one it
    /// has stays valid for the files open on it. That is how the copy of a
    /// file gets a kernel inode whose I/O may go to the copy, while files
    /// opened earlier keep the lower file the kernel bound to the first
    /// one (see the FUSE adapter's `io_mode`). Lookups under either nodeid
    /// count on the object's one counter, under its own nodeid's lock.
    ///
    /// `from` is the nodeid the kernel used: when that is the alias itself
    /// (the object went back to a lower file, by a reset, and was copied up
    /// again), a new alias replaces it; the old one stays reachable until
    /// the kernel has forgotten the object.
    pub fn alias(&self, inode: &Arc<Inode>, from: u64) -> u64 {
        let cur = inode.alias.load(Ordering::Acquire);
        if cur != 0 && cur != from {
            return cur;
        }
        self.sweep_retired();
        let a = ALIAS_BASE | (self.aliases.fetch_add(1, Ordering::Relaxed) + 1);
        // In the table before any lookup can hand it out.
        self.map.insert(a, Arc::clone(inode));
        match inode
            .alias
            .compare_exchange(cur, a, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) => {
                if cur != 0 {
                    self.retired.lock().push(cur);
                }
                a
            }
            Err(other) => {
                self.map.remove(&a);
                other
            }
        }
    }

    /// Drops the retired aliases of objects the kernel has forgotten.
    fn sweep_retired(&self) {
        self.retired.lock().retain(|a| {
            let held = self
                .map
                .get(a)
                .is_some_and(|r| r.value().lookups.load(Ordering::Relaxed) > 0);
            if !held {
                self.map.remove(a);
            }
            held
        });
    }

    /// Every inode in the table (for the rare fix-ups that touch a subtree).
    pub fn all(&self) -> Vec<Arc<Inode>> {
        // Each once: an alias names an inode already listed.
        self.map
            .iter()
            .filter(|r| !is_alias(*r.key()))
            .map(|r| Arc::clone(r.value()))
            .collect()
    }

    /// Drops `n` kernel lookups; at zero the inode leaves the table and is
    /// returned so the caller can release what it caches.
    pub fn forget(&self, nodeid: u64, n: u64) -> Option<Arc<Inode>> {
        if nodeid == ROOT {
            return None;
        }
        let (own, aliased) = if is_alias(nodeid) {
            let inode = self.map.get(&nodeid).map(|r| Arc::clone(r.value()))?;
            (inode.nodeid, Some(inode))
        } else {
            (nodeid, None)
        };
        let mut orphan_gone = false;
        let removed = match self.map.entry(own) {
            Entry::Occupied(e)
                if aliased
                    .as_ref()
                    .is_none_or(|inode| Arc::ptr_eq(inode, e.get())) =>
            {
                let prev = e.get().lookups.load(Ordering::Relaxed);
                let left = prev.saturating_sub(n);
                e.get().lookups.store(left, Ordering::Relaxed);
                (left == 0).then(|| e.remove())
            }
            Entry::Occupied(_) | Entry::Vacant(_) => {
                // An alias of an object whose number went to a new one
                // (see `take_over`): nothing counts on it but the kernel.
                if let Some(inode) = &aliased {
                    let left = inode.lookups.load(Ordering::Relaxed).saturating_sub(n);
                    inode.lookups.store(left, Ordering::Relaxed);
                    orphan_gone = left == 0;
                }
                None
            }
        };
        // The shard guard of `own` is gone: the alias may share its shard.
        if orphan_gone && let Some(inode) = &aliased {
            self.map.remove_if(&nodeid, |_, v| Arc::ptr_eq(v, inode));
        }
        if let Some(inode) = &removed {
            let a = inode.alias.load(Ordering::Acquire);
            if a != 0 {
                self.map.remove_if(&a, |_, v| Arc::ptr_eq(v, inode));
            }
        }
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

//! The filesystem operations as plain Rust: `Result<T, Error>` in, no fuser.

use std::ffi::{CStr, OsStr};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::sync::{Arc, OnceLock};

use crate::error::{Error, Result};
use crate::handle::{Handle, Handles};
use crate::idmap::IdMap;
use crate::inode::{FdCache, Inode, InodeTable, Location, ROOT};
use crate::layer::upper::Upper;
use crate::layer::whiteout::is_private_xattr;
use crate::layer::{INDEX, LayerIdx, Layers};
use crate::name::Name;
use crate::override_stat::Override;
use crate::resolve::{self, DirFds};
use crate::snapshot::DirSnapshot;
use crate::sys::{self, XTarget};

/// Receives directory entries; returns `true` once its buffer is full (the
/// entry was then not taken). Lets the merge be written once for readdir.
pub trait DirReplier {
    fn add(&mut self, ino: u64, offset: u64, d_type: u8, name: &[u8]) -> bool;
}

/// Receives directory entries with their attributes (readdirplus); returns
/// `true` once its buffer is full and the entry was not taken.
pub trait DirPlusReplier {
    fn add(&mut self, offset: u64, name: &[u8], st: &libc::stat) -> bool;
}

/// The merged filesystem.
#[derive(Debug)]
pub struct Union {
    pub(crate) layers: Layers,
    /// The writable layer's conventions; `None` on a read-only mount.
    pub(crate) upper: Option<Upper>,
    pub(crate) inodes: InodeTable,
    pub(crate) handles: Handles,
    pub(crate) fds: FdCache,
    /// Mounted read-only although there is an upper.
    read_only: bool,
    /// Owners as shown (container ids) and as stored (host ids).
    pub(crate) ids: IdMap,
    /// The xattr holding ownership and mode overrides, when enabled.
    pub(crate) override_xattr: Option<&'static CStr>,
    /// fsync does not reach the disk.
    pub(crate) volatile: bool,
    /// New objects get their mode by chmod, not through a zero umask (an
    /// in-process mount leaves its host's umask alone).
    pub(crate) exact_modes: bool,
    /// Held for reading by every change to the upper, for writing by a
    /// reset or checkpoint, which must see the upper still.
    pub(crate) barrier: parking_lot::RwLock<()>,
    /// Resets so far: the FUSE generation of every inode.
    pub(crate) epoch: std::sync::atomic::AtomicU64,
}

/// A layer object as the syscalls want it: a name in a parent directory, or
/// (no name) the root directory of a layer itself.
pub(crate) struct Object {
    pub(crate) dir: Arc<OwnedFd>,
    pub(crate) name: Option<Name>,
}

impl Object {
    pub(crate) fn xattr_target(&self) -> XTarget<'_> {
        match &self.name {
            None => XTarget::Fd(self.dir.as_fd()),
            Some(name) => XTarget::At(self.dir.as_fd(), name.as_cstr()),
        }
    }

    pub(crate) fn stat(&self) -> Result<libc::stat> {
        Ok(match &self.name {
            None => sys::fstat(self.dir.as_fd())?,
            Some(name) => sys::fstatat(self.dir.as_fd(), name.as_cstr())?,
        })
    }

    pub(crate) fn dir_and_name(&self) -> (BorrowedFd<'_>, &CStr) {
        match &self.name {
            None => (self.dir.as_fd(), c"."),
            Some(name) => (self.dir.as_fd(), name.as_cstr()),
        }
    }
}

impl Union {
    /// Builds the union over opened layers. `fd_budget` bounds the directory
    /// descriptors kept open (see [`crate::inode`]).
    pub fn new(layers: Layers, upper: Option<Upper>, fd_budget: usize) -> std::io::Result<Union> {
        if layers.is_empty() {
            return Err(std::io::Error::from_raw_os_error(libc::EINVAL));
        }
        let top = layers.get(0);
        let st = sys::fstat(top.root.as_fd())?;
        let st_ino = layers.st_ino(st.st_dev, st.st_ino);
        // Like overlayfs, the root merges every layer: opaque markers on the
        // layer roots themselves are ignored.
        let all: Vec<LayerIdx> = layers.iter().map(|(i, _)| i).collect();
        let root = Inode::new(ROOT, st_ino, libc::S_IFDIR, None, all);
        Ok(Union {
            layers,
            upper,
            inodes: InodeTable::new(root),
            handles: Handles::default(),
            fds: FdCache::new(fd_budget),
            read_only: false,
            volatile: false,
            ids: IdMap::default(),
            override_xattr: None,
            exact_modes: false,
            barrier: parking_lot::RwLock::new(()),
            epoch: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// Takes back what opening the upper changed on disk, when the mount
    /// itself failed.
    pub fn abandon(&self) {
        if let Some(u) = &self.upper {
            u.undo(self.layers.get(0).root.as_fd());
        }
    }

    /// Makes the upper final once no request can arrive any more: nothing
    /// left in staging, and everything written back unless the mount is
    /// volatile or read-only (kernel overlayfs syncs its upper filesystem
    /// at unmount too).
    pub fn finish(&self) {
        if let Some(u) = &self.upper {
            u.finish(
                self.layers.get(0).root.as_fd(),
                !self.volatile && !self.read_only,
            );
        }
    }

    /// `--read-only` (refuse changes despite an upper) and `--volatile`.
    pub fn set_options(&mut self, read_only: bool, volatile: bool) {
        self.read_only = read_only;
        self.volatile = volatile;
    }

    /// Shows owners through `ids` (user-namespace id mapping or squashing).
    pub fn set_ids(&mut self, ids: IdMap) {
        self.ids = ids;
    }

    /// The FUSE generation of inodes, bumped by every reset.
    pub fn generation(&self) -> u64 {
        self.epoch.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Whether new objects need a chmod to get their exact mode.
    pub fn set_exact_modes(&mut self, on: bool) {
        self.exact_modes = on;
    }

    /// Reads and writes ownership overrides in `attr` (see
    /// [`crate::override_stat`]).
    pub fn set_override_xattr(&mut self, attr: Option<&'static CStr>) {
        self.override_xattr = attr;
    }

    /// The override recorded on an object, if overrides are enabled.
    pub(crate) fn override_of(&self, t: XTarget<'_>) -> Option<Override> {
        let attr = self.override_xattr?;
        let mut buf = [0u8; 64];
        let n = sys::getxattr(t, attr, &mut buf).ok()?;
        Override::parse(&buf[..n])
    }

    /// A stat result as the mount shows it: overrides, then id mapping.
    pub(crate) fn present(&self, inode: &Arc<Inode>, st: &mut libc::stat) {
        if self.override_xattr.is_some()
            && let Ok(obj) = self.object(inode)
            && let Some(o) = self.override_of(obj.xattr_target())
        {
            o.apply(st);
        }
        self.ids.show(st);
    }

    /// Whether the mount refuses every change.
    pub fn read_only(&self) -> bool {
        self.read_only || !self.layers.has_upper()
    }

    /// The descriptor of directory `inode` in `layer`, from the cache or
    /// opened relative to the nearest ancestor's that is cached. A loop, not
    /// recursion: images nest directories thousands deep, and a request
    /// thread's stack is small.
    pub(crate) fn dir_fd(&self, inode: &Arc<Inode>, layer: LayerIdx) -> Result<Arc<OwnedFd>> {
        let mut below = Vec::new();
        let mut cur = Arc::clone(inode);
        let mut fd = loop {
            let Some(loc) = cur.location()? else {
                break Arc::clone(&self.layers.get(layer).root);
            };
            if let Some(fd) = cur.cached_fd(layer) {
                break fd;
            }
            below.push((cur, loc.name));
            cur = loc.parent;
        };
        while let Some((dir, name)) = below.pop() {
            let child = sys::open_child_dir(fd.as_fd(), name.as_cstr())?;
            fd = self.fds.insert(&dir, layer, child);
        }
        Ok(fd)
    }

    /// Every layer directory of a merged directory, top-most first.
    pub(crate) fn dir_fds(&self, inode: &Arc<Inode>) -> Result<DirFds> {
        // Only this inode's `loc` and `fds` locks are taken under the read
        // guard, never its `layers` lock.
        let layers = inode.layers.read();
        layers
            .iter()
            .map(|&l| Ok((l, self.dir_fd(inode, l)?)))
            .collect()
    }

    /// The winning layer object of `inode`.
    pub(crate) fn object(&self, inode: &Arc<Inode>) -> Result<Object> {
        let layer = inode.top_layer()?;
        if layer == INDEX {
            let upper = self.upper.as_ref().ok_or(Error::STALE)?;
            return Ok(Object {
                dir: Arc::clone(&upper.index),
                name: Some(Upper::index_name(inode.st_ino)),
            });
        }
        let loc = inode.location()?;
        match loc {
            None => Ok(Object {
                dir: Arc::clone(&self.layers.get(layer).root),
                name: None,
            }),
            Some(loc) => Ok(Object {
                dir: self.dir_fd(&loc.parent, layer)?,
                name: Some(loc.name),
            }),
        }
    }

    /// Resolves `name` in `parent`; `Ok(None)` when nothing is visible there,
    /// which the adapter may cache as a negative entry.
    pub fn lookup(&self, parent: u64, name: &OsStr) -> Result<Option<libc::stat>> {
        let name = Name::new(name)?;
        let p = self.inodes.get(parent)?;
        if !p.is_dir() {
            return Err(Error::NOTDIR);
        }
        if name.is_reserved() {
            return Ok(None);
        }
        let dirs = self.dir_fds(&p)?;
        let Some(mut found) = resolve::lookup_with(&self.layers, &dirs, &name, p.oci_layers())?
        else {
            return Ok(None);
        };
        let st_ino = self.reported_ino(&dirs, &found, &name);
        if found.stat.st_nlink > 1
            && found.stat.st_mode & libc::S_IFMT != libc::S_IFDIR
            && let Some(upper) = &self.upper
            && let Some(ist) = upper.indexed(st_ino)
            && (found.layers[0] != 0
                || (ist.st_dev == found.stat.st_dev && ist.st_ino == found.stat.st_ino))
        {
            // A copied-up lower hard link: whichever name is used, the
            // index entry is the object.
            found.layers = vec![INDEX];
            found.stat = ist;
        }
        let mut st = found.stat;
        self.fix_nlink(&mut st, st_ino, found.layers[0]);
        let kind = st.st_mode & libc::S_IFMT;
        let (inode, known) = self.enter(&p, &name, st_ino, kind, &found.layers);
        if !known {
            // Directory descriptors opened by the lookup are worth keeping,
            // but only for a new inode: a known one has its own.
            self.fds.insert_found(&inode, found);
        } else if !inode.is_dir()
            && found.layers[0] == INDEX
            && inode.top_layer().is_ok_and(|l| l != 0 && l != INDEX)
        {
            // Another name of a file hard-linked in a lower layer was
            // copied up (in an earlier mount): that copy holds the data
            // now, for every name of the inode.
            *inode.layers.write() = vec![INDEX];
            inode.move_location_front(&p, &name);
        } else {
            inode.note_location(&p, &name);
        }
        st.st_ino = inode.st_ino;
        if inode.is_dir() {
            st.st_nlink = self.dir_nlink(&inode, &st)?;
        }
        self.present(&inode, &mut st);
        Ok(Some(st))
    }

    /// Records one kernel lookup of `name` in `parent` as inode `st_ino` of
    /// type `kind` in `layers`. `true` when the table already knew the
    /// inode alive (the caller then notes the name); a new inode, or a dead
    /// one whose number now names this object, takes `name` and `layers`.
    pub(crate) fn enter(
        &self,
        parent: &Arc<Inode>,
        name: &Name,
        st_ino: u64,
        kind: u32,
        layers: &[LayerIdx],
    ) -> (Arc<Inode>, bool) {
        let mut fresh = false;
        let inode = self.inodes.lookup(st_ino, kind, || {
            fresh = true;
            let loc = Location {
                parent: Arc::clone(parent),
                name: name.clone(),
            };
            Inode::new(st_ino, st_ino, kind, Some(loc), layers.to_vec())
        });
        if fresh {
            return (inode, false);
        }
        if inode.dead.load(std::sync::atomic::Ordering::Acquire) {
            *inode.layers.write() = layers.to_vec();
            self.fds.release(&inode);
            inode.note_location(parent, name);
            return (inode, false);
        }
        (inode, true)
    }

    /// The inode number the mount reports for a found object: the one
    /// recorded at copy-up for an upper object that has one, else the
    /// layer object's own (mapped by [`Layers::st_ino`]).
    pub(crate) fn reported_ino(&self, dirs: &DirFds, found: &resolve::Found, name: &Name) -> u64 {
        let top = found.layers[0];
        if top == 0
            && let Some(upper) = &self.upper
            && let Some((_, dir)) = dirs.first()
            && let Some(ino) = upper.recorded_ino(dir.as_fd(), name.as_cstr())
        {
            return ino;
        }
        self.layers.st_ino(found.stat.st_dev, found.stat.st_ino)
    }

    /// Leaves the index's own link out of an indexed copy's `st_nlink`.
    fn fix_nlink(&self, st: &mut libc::stat, st_ino: u64, layer: LayerIdx) {
        if st.st_nlink <= 1
            || (layer != 0 && layer != INDEX)
            || st.st_mode & libc::S_IFMT == libc::S_IFDIR
        {
            return;
        }
        if let Some(upper) = &self.upper
            && let Some(ist) = upper.indexed(st_ino)
            && ist.st_dev == st.st_dev
            && ist.st_ino == st.st_ino
        {
            st.st_nlink = upper.indexed_nlink(st_ino, st);
        }
    }

    pub fn forget(&self, nodeid: u64, n: u64) {
        if let Some(gone) = self.inodes.forget(nodeid, n) {
            self.fds.release(&gone);
        }
    }

    /// `stat` of an object; `fh` serves an open file whose every name is
    /// gone.
    pub fn getattr(&self, nodeid: u64, fh: Option<u64>) -> Result<libc::stat> {
        let inode = self.inodes.get(nodeid)?;
        let mut st = match (self.object(&inode), fh) {
            (Ok(obj), _) => obj.stat()?,
            (Err(e), fh) if e == Error::STALE => {
                let h = match fh {
                    Some(fh) => self.handles.get(fh)?,
                    None => self.handles.any_file_of(nodeid).ok_or(e)?,
                };
                match &*h {
                    Handle::File { fd, .. } => sys::fstat(fd.as_fd())?,
                    Handle::Dir { .. } => return Err(e),
                }
            }
            (Err(e), _) => return Err(e),
        };
        if inode.is_dir() {
            st.st_nlink = self.dir_nlink(&inode, &st)?;
        } else {
            self.fix_nlink(&mut st, inode.st_ino, inode.top_layer()?);
        }
        st.st_ino = inode.st_ino;
        self.present(&inode, &mut st);
        Ok(st)
    }

    /// `st_nlink` of a directory: exact, 2 + its subdirectories in the merged
    /// view. A directory from one layer already has it on disk; a merged one
    /// needs the merged listing (overlayfs answers 1 there; tools such as
    /// `find` use the count to skip work, so it is worth getting right).
    fn dir_nlink(&self, inode: &Arc<Inode>, st: &libc::stat) -> Result<libc::nlink_t> {
        if inode.layers.read().len() <= 1 {
            return Ok(st.st_nlink);
        }
        if let Some(n) = inode.subdirs() {
            return Ok(2 + n as libc::nlink_t);
        }
        let n = self.merged_listing(inode)?.subdirs() as u32;
        inode.set_subdirs(n);
        Ok(2 + n as libc::nlink_t)
    }

    /// The cached listing of a directory that spans several layers.
    fn merged_listing(&self, inode: &Arc<Inode>) -> Result<Arc<DirSnapshot>> {
        let mut cache = inode.dir_cache.lock();
        if let Some(s) = &*cache {
            return Ok(Arc::clone(s));
        }
        let snap = Arc::new(self.list(inode)?);
        *cache = Some(Arc::clone(&snap));
        Ok(snap)
    }

    fn list(&self, inode: &Arc<Inode>) -> Result<DirSnapshot> {
        let seen = inode.changes();
        let dirs = self.dir_fds(inode)?;
        let snap = resolve::list(
            &self.layers,
            &dirs,
            inode.st_ino,
            inode.parent_ino(),
            self.upper.as_ref(),
        )?;
        // Lookups that follow a listing (readdirplus, ls -l, tree walks)
        // skip the `.wh.NAME` check where no layer directory has any.
        inode.set_oci_layers(seen, snap.oci_layers());
        Ok(snap)
    }

    pub fn readlink(&self, nodeid: u64) -> Result<Vec<u8>> {
        let inode = self.inodes.get(nodeid)?;
        if inode.kind != libc::S_IFLNK {
            return Err(Error::INVAL);
        }
        let obj = self.object(&inode)?;
        let (dir, name) = obj.dir_and_name();
        Ok(sys::readlinkat(dir, name)?)
    }

    /// Opens a regular file. Returns the file handle.
    pub fn open(&self, nodeid: u64, flags: i32) -> Result<u64> {
        let inode = self.inodes.get(nodeid)?;
        if inode.kind != libc::S_IFREG {
            // The kernel opens devices and FIFOs itself; anything else
            // reaching here is not a file we may open.
            return Err(Error::INVAL);
        }
        let acc = flags & libc::O_ACCMODE;
        if acc != libc::O_RDONLY || flags & libc::O_TRUNC != 0 {
            return self.open_for_write(inode, flags);
        }
        let obj = self.object(&inode)?;
        let (dir, name) = obj.dir_and_name();
        // O_NOATIME: reading through the mount must not change the image
        // layers, not even their access times.
        let fd = match sys::open_child_flags(dir, name, libc::O_RDONLY | libc::O_NOATIME) {
            Err(e) if e.raw_os_error() == Some(libc::EPERM) => {
                sys::open_child_flags(dir, name, libc::O_RDONLY)?
            }
            other => other?,
        };
        let copied = (inode.top_layer()? != 0 && !self.read_only()).then(OnceLock::new);
        Ok(self.handles.insert(Handle::File { fd, inode, copied }))
    }

    /// The handle behind `fh`, for the adapter's passthrough setup.
    pub fn handle(&self, fh: u64) -> Result<Arc<Handle>> {
        self.handles.get(fh)
    }

    /// Reads into `buf`; returns the bytes read.
    pub fn read(&self, fh: u64, offset: u64, buf: &mut [u8]) -> Result<usize> {
        let h = self.handles.get(fh)?;
        match &*h {
            Handle::File { fd, inode, copied } => {
                let fd = match copied {
                    Some(c) => self.current_fd(fd, inode, c),
                    None => fd.as_fd(),
                };
                Ok(sys::pread(fd, buf, offset)?)
            }
            Handle::Dir { .. } => Err(Error::new(libc::EISDIR)),
        }
    }

    /// The descriptor reads of a handle opened on a lower file use: the
    /// upper copy's once there is one, so that reads see writes made
    /// through other handles, as in overlayfs.
    fn current_fd<'a>(
        &self,
        fd: &'a OwnedFd,
        inode: &Arc<Inode>,
        copied: &'a OnceLock<OwnedFd>,
    ) -> BorrowedFd<'a> {
        if let Some(c) = copied.get() {
            return c.as_fd();
        }
        if !inode.top_layer().is_ok_and(|l| l == 0 || l == INDEX) {
            return fd.as_fd();
        }
        let reopened = self.object(inode).and_then(|obj| {
            let (dir, name) = obj.dir_and_name();
            Ok(sys::open_child_flags(dir, name, libc::O_RDONLY)?)
        });
        match reopened {
            Ok(c) => copied.get_or_init(|| c).as_fd(),
            Err(_) => fd.as_fd(),
        }
    }

    pub fn lseek(&self, fh: u64, offset: i64, whence: i32) -> Result<i64> {
        let h = self.handles.get(fh)?;
        match &*h {
            Handle::File { fd, .. } => Ok(sys::lseek(fd.as_fd(), offset, whence)?),
            Handle::Dir { .. } => Err(Error::new(libc::EISDIR)),
        }
    }

    pub fn release(&self, fh: u64) {
        self.handles.remove(fh);
    }

    pub fn opendir(&self, nodeid: u64) -> Result<u64> {
        let inode = self.inodes.get(nodeid)?;
        if !inode.is_dir() {
            return Err(Error::NOTDIR);
        }
        Ok(self.handles.insert(Handle::Dir {
            inode,
            snapshot: parking_lot::Mutex::new(None),
        }))
    }

    /// The listing of an open directory, taken at offset 0 and kept for the
    /// handle's life, so that offsets stay meaningful for seekdir.
    fn snapshot(&self, fh: u64, offset: u64) -> Result<(Arc<Inode>, Arc<DirSnapshot>)> {
        let h = self.handles.get(fh)?;
        let Handle::Dir { inode, snapshot } = &*h else {
            return Err(Error::NOTDIR);
        };
        let mut s = snapshot.lock();
        let snap = match &*s {
            Some(snap) if offset != 0 => Arc::clone(snap),
            _ => {
                let fresh = if inode.layers.read().len() > 1 {
                    self.merged_listing(inode)?
                } else {
                    Arc::new(self.list(inode)?)
                };
                *s = Some(Arc::clone(&fresh));
                fresh
            }
        };
        Ok((Arc::clone(inode), snap))
    }

    /// Sends entries from `offset` (0, or an offset handed out earlier) until
    /// the replier is full.
    pub fn readdir(&self, fh: u64, offset: u64, out: &mut dyn DirReplier) -> Result<()> {
        let (_, snap) = self.snapshot(fh, offset)?;
        let start = usize::try_from(offset).unwrap_or(usize::MAX);
        for (i, e) in snap.entries().iter().enumerate().skip(start) {
            if out.add(e.ino, i as u64 + 1, e.d_type, snap.name(e)) {
                break;
            }
        }
        Ok(())
    }

    /// readdir with each entry looked up, saving the kernel one LOOKUP round
    /// trip per entry on `ls -l` and tree walks. Every entry sent counts as a
    /// kernel lookup, so one that does not fit is forgotten again.
    pub fn readdirplus(&self, fh: u64, offset: u64, out: &mut dyn DirPlusReplier) -> Result<()> {
        let (dir, snap) = self.snapshot(fh, offset)?;
        let start = usize::try_from(offset).unwrap_or(usize::MAX);
        for (i, e) in snap.entries().iter().enumerate().skip(start) {
            let name = snap.name(e);
            let off = i as u64 + 1;
            if name == b"." || name == b".." {
                // The kernel links no inode for these; only the dirent counts.
                let mut st = sys::zeroed_stat();
                st.st_ino = e.ino;
                st.st_mode = libc::S_IFDIR;
                if out.add(off, name, &st) {
                    break;
                }
                continue;
            }
            // An entry gone since the listing was taken, or unreadable, is
            // left out rather than failing the whole listing.
            if let Ok(Some(st)) = self.lookup(dir.nodeid, OsStr::from_bytes(name))
                && out.add(off, name, &st)
            {
                self.forget(st.st_ino, 1);
                break;
            }
        }
        Ok(())
    }

    pub fn releasedir(&self, fh: u64) {
        self.handles.remove(fh);
    }

    pub fn statfs(&self) -> Result<libc::statfs> {
        Ok(sys::fstatfs(self.layers.statfs_root())?)
    }

    /// Reads xattr `name` into `buf`, or its size when `buf` is empty.
    /// Overlay-private names do not exist as far as the mount is concerned.
    pub fn getxattr(&self, nodeid: u64, name: &OsStr, buf: &mut [u8]) -> Result<usize> {
        if is_private_xattr(name.as_bytes()) {
            return Err(Error::NODATA);
        }
        let cname = std::ffi::CString::new(name.as_bytes()).map_err(|_| Error::INVAL)?;
        let inode = self.inodes.get(nodeid)?;
        let obj = self.object(&inode)?;
        Ok(sys::getxattr(obj.xattr_target(), &cname, buf)?)
    }

    /// The xattr names of an object, private ones removed, NUL-separated.
    pub fn listxattr(&self, nodeid: u64) -> Result<Vec<u8>> {
        let inode = self.inodes.get(nodeid)?;
        let obj = self.object(&inode)?;
        let raw = sys::listxattr_vec(obj.xattr_target())?;
        let mut out = Vec::with_capacity(raw.len());
        for n in raw.split(|c| *c == 0).filter(|n| !n.is_empty()) {
            if !is_private_xattr(n) {
                out.extend_from_slice(n);
                out.push(0);
            }
        }
        Ok(out)
    }

    /// `access(2)`: permissions are the kernel's (default_permissions); only
    /// the read-only mount's refusal of writes is ours to state.
    pub fn access(&self, nodeid: u64, mask: i32) -> Result<()> {
        self.inodes.get(nodeid)?;
        if mask & libc::W_OK != 0 && self.read_only() {
            return Err(Error::ROFS);
        }
        Ok(())
    }
}

//! The filesystem as plain Rust (`Result<T, Error>`, no fuser): [`Union`],
//! which adds open handles and the change/reset barrier to the shared
//! [`Tree`], and the operations that only read. Changes are in
//! `crate::write`, resets in `crate::reset`, copy-up in `crate::copyup`.

use std::ffi::{CStr, OsStr};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::sync::{Arc, OnceLock};

use crate::error::{Error, Result};
use crate::handle::{Handle, Handles};
use crate::idmap::IdMap;
use crate::inode::Inode;
use crate::layer::upper::Upper;
use crate::layer::whiteout::is_private_xattr;
use crate::layer::{Layers, Place};
use crate::listing::DirSnapshot;
use crate::name::Name;
use crate::resolve;
use crate::sys::{self, Writable};
use crate::tree::Tree;

/// Receives directory entries; returns `true` once its buffer is full (the
/// entry was then not taken). Lets the merge be written once for readdir.
pub trait DirReplier {
    fn add(&mut self, ino: u64, offset: u64, d_type: u8, name: &[u8]) -> bool;
}

/// Receives directory entries with their attributes (readdirplus); returns
/// `true` once its buffer is full and the entry was not taken.
pub trait DirPlusReplier {
    fn add(&mut self, offset: u64, name: &[u8], st: &libc::stat, generation: u64) -> bool;
}

/// The merged filesystem: the shared tree, plus open handles and what
/// keeps changes and resets apart.
#[derive(Debug)]
pub struct Union {
    pub(crate) tree: Tree,
    pub(crate) handles: Handles,
    /// Held for reading by every change to the upper, for writing by a
    /// reset or checkpoint, which must see the upper still.
    pub(crate) barrier: parking_lot::RwLock<()>,
    /// Resets so far: the FUSE generation of every inode.
    pub(crate) epoch: std::sync::atomic::AtomicU64,
}

/// The operations reach the shared tree's state and its helpers directly.
impl std::ops::Deref for Union {
    type Target = Tree;
    fn deref(&self) -> &Tree {
        &self.tree
    }
}

impl Union {
    /// Builds the union over opened layers. `fd_budget` bounds the directory
    /// descriptors kept open (see [`crate::inode`]).
    pub fn new(layers: Layers, upper: Option<Upper>, fd_budget: usize) -> std::io::Result<Union> {
        Ok(Union {
            tree: Tree::new(layers, upper, fd_budget)?,
            handles: Handles::default(),
            barrier: parking_lot::RwLock::new(()),
            epoch: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// Takes back what opening the upper changed on disk, when the mount
    /// itself failed.
    pub fn abandon(&self) {
        if let Some(u) = &self.upper {
            u.undo(Writable::new(self.layers.get(0).root.as_fd()));
        }
    }

    /// Makes the upper final once no request can arrive any more: nothing
    /// left in staging, and everything written back unless the mount is
    /// volatile or read-only (kernel overlayfs syncs its upper filesystem
    /// at unmount too).
    pub fn finish(&self) {
        if let Some(u) = &self.upper {
            u.finish(
                Writable::new(self.layers.get(0).root.as_fd()),
                !self.volatile && !self.read_only,
            );
        }
    }

    /// `--read-only` (refuse changes despite an upper) and `--volatile`.
    pub fn set_options(&mut self, read_only: bool, volatile: bool) {
        self.tree.read_only = read_only;
        self.tree.volatile = volatile;
    }

    /// Attribute changes of lower files copy metadata only (see
    /// [`crate::config::MountConfigBuilder::metacopy`]).
    pub fn set_metacopy(&mut self, on: bool) {
        self.tree.metacopy = on;
    }

    /// The kernel enforces POSIX ACLs (`FUSE_POSIX_ACL`).
    pub fn set_acl(&mut self, on: bool) {
        self.tree.acl = on;
    }

    /// Whether the kernel is to enforce POSIX ACLs.
    pub fn acl(&self) -> bool {
        self.tree.acl
    }

    /// Shows owners through `ids` (user-namespace id mapping or squashing).
    pub fn set_ids(&mut self, ids: IdMap) {
        self.tree.ids = ids;
    }

    /// The FUSE generation of inodes, bumped by every reset.
    pub fn generation(&self) -> u64 {
        self.epoch.load(std::sync::atomic::Ordering::Acquire)
    }

    /// The FUSE generation of inode `nodeid`: the mount's, plus the inode's
    /// own (see [`Inode::generation`]).
    pub fn generation_of(&self, nodeid: u64) -> u64 {
        let own = self.inodes.get(nodeid).map_or(0, |i| i.generation);
        self.generation().wrapping_add(own)
    }

    /// Whether new objects need a chmod to get their exact mode.
    pub fn set_exact_modes(&mut self, on: bool) {
        self.tree.exact_modes = on;
    }

    /// Reads and writes ownership overrides in `attr` (see
    /// [`crate::override_stat`]).
    pub fn set_override_xattr(&mut self, attr: Option<&'static CStr>) {
        self.tree.override_xattr = attr;
    }

    /// Resolves `name` in `parent`: its attributes and FUSE generation (see
    /// [`Union::generation_of`]; known here without another table lookup).
    /// `Ok(None)` when nothing is visible there, which the adapter may cache
    /// as a negative entry.
    pub fn lookup(&self, parent: u64, name: &OsStr) -> Result<Option<(libc::stat, u64)>> {
        self.lookup_as(parent, name, true)
    }

    /// A lookup whose entry names the object's own nodeid, or its alias
    /// when it has one and `alias` is set.
    fn lookup_as(
        &self,
        parent: u64,
        name: &OsStr,
        alias: bool,
    ) -> Result<Option<(libc::stat, u64)>> {
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
        let mut place = self.place_of(&found);
        if found.stat.st_nlink > 1
            && found.stat.st_mode & libc::S_IFMT != libc::S_IFDIR
            && let Some(upper) = &self.upper
            && let Some(ist) = upper.indexed(st_ino)
            && (place != Place::Upper
                || (ist.st_dev == found.stat.st_dev && ist.st_ino == found.stat.st_ino))
        {
            // A copied-up lower hard link: whichever name is used, the
            // index entry is the object.
            place = Place::Index;
            found.stat = ist;
        }
        let mut st = found.stat;
        self.fix_nlink(&mut st, st_ino, &place);
        let kind = st.st_mode & libc::S_IFMT;
        let indexed = place == Place::Index;
        let (inode, known) = self.enter(&p, &name, st_ino, kind, place);
        if !known {
            // Directory descriptors opened by the lookup are worth keeping,
            // but only for a new inode: a known one has its own.
            self.fds.insert_found(&inode, found);
        } else if !inode.is_dir() && indexed && !inode.in_upper() {
            // Another name of a file hard-linked in a lower layer was
            // copied up (in an earlier mount): that copy holds the data
            // now, for every name of the inode.
            inode.relocate(Place::Index);
            inode.move_location_front(&p, &name);
        } else {
            inode.note_location(&p, &name);
        }
        self.show_data_blocks(&inode, &mut st);
        if inode.is_dir() {
            st.st_nlink = self.dir_nlink(&inode, &st);
        }
        self.present(&inode, &mut st);
        // The entry names the nodeid as its inode number; stat shows the
        // real one once the kernel asks for the attributes (see
        // `crate::inode::is_alias`).
        st.st_ino = if alias {
            inode.entry_nodeid()
        } else {
            inode.st_ino
        };
        Ok(Some((st, self.generation().wrapping_add(inode.generation))))
    }

    /// Leaves the index's own link out of an indexed copy's `st_nlink`.
    fn fix_nlink(&self, st: &mut libc::stat, st_ino: u64, place: &Place) {
        if st.st_nlink <= 1 || !place.in_upper() || st.st_mode & libc::S_IFMT == libc::S_IFDIR {
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

    /// Gives the object behind `nodeid` another nodeid, which its lookups
    /// return from now on (see [`crate::inode::InodeTable::alias`]).
    pub fn alias(&self, nodeid: u64) -> Result<u64> {
        let inode = self.inodes.get(nodeid)?;
        Ok(self.inodes.alias(&inode, nodeid))
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
                }
            }
            (Err(e), _) => return Err(e),
        };
        if inode.is_dir() {
            st.st_nlink = self.dir_nlink(&inode, &st);
        } else {
            self.fix_nlink(&mut st, inode.st_ino, &inode.place());
        }
        st.st_ino = inode.st_ino;
        self.show_data_blocks(&inode, &mut st);
        self.present(&inode, &mut st);
        Ok(st)
    }

    /// A metadata-only copy shows the blocks its data occupies, as kernel
    /// overlayfs shows them.
    fn show_data_blocks(&self, inode: &Arc<Inode>, st: &mut libc::stat) {
        if inode.is_metacopy()
            && let Ok(d) = self.data_object(inode).and_then(|o| o.stat())
        {
            st.st_blocks = d.st_blocks;
        }
    }

    /// `st_nlink` of a directory: its real count when one layer holds it;
    /// 1 when it is merged from several, as kernel overlayfs reports (tools
    /// such as `find` read 1 as "count unknown"). An exact count would cost
    /// a full merged listing at the directory's first stat.
    fn dir_nlink(&self, inode: &Arc<Inode>, st: &libc::stat) -> libc::nlink_t {
        if inode.is_merged() { 1 } else { st.st_nlink }
    }

    /// The listing a readdir pass reads from: taken at the pass's first
    /// request and kept on the directory until a pass reaches its end or
    /// the directory changes. Offsets stay right across a change anyway
    /// (see [`crate::listing`]); keeping it only spares a 50k-entry
    /// directory a new listing per request.
    fn pass_listing(&self, inode: &Arc<Inode>) -> Result<Arc<DirSnapshot>> {
        // No change in the directory can come between the listing and
        // keeping it: changes take this lock too.
        let mut dir = inode.lock_dir();
        if let Some(s) = dir.listing() {
            return Ok(s);
        }
        let dirs = self.dir_fds(inode)?;
        let mut snap = resolve::list(
            &self.layers,
            &dirs,
            inode.st_ino,
            inode.parent_ino(),
            self.upper.as_ref(),
        )?;
        snap.order(&self.dir_hash);
        let snap = Arc::new(snap);
        // Lookups that follow a listing (readdirplus, ls -l, tree walks)
        // skip the `.wh.NAME` check where no layer directory has any.
        dir.keep(&snap);
        Ok(snap)
    }

    /// A directory being read.
    fn dir_inode_for_read(&self, nodeid: u64) -> Result<Arc<Inode>> {
        let inode = self.inodes.get(nodeid)?;
        if !inode.is_dir() {
            return Err(Error::NOTDIR);
        }
        Ok(inode)
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
        let obj = self.data_object(&inode)?;
        let (dir, name) = obj.dir_and_name();
        // O_NOATIME: reading through the mount must not change the image
        // layers, not even their access times.
        let fd = match sys::open_child_flags(dir, name, libc::O_RDONLY | libc::O_NOATIME) {
            Err(e) if e.raw_os_error() == Some(libc::EPERM) => {
                sys::open_child_flags(dir, name, libc::O_RDONLY)?
            }
            other => other?,
        };
        let copied = (!inode.in_upper() && !self.read_only()).then(OnceLock::new);
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
        if !inode.in_upper() {
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
        }
    }

    pub fn release(&self, fh: u64) {
        self.handles.remove(fh);
    }

    /// Checks that a directory may be opened. Directories have no handles:
    /// reading one needs no state between requests (see
    /// [`crate::listing`]).
    pub fn opendir(&self, nodeid: u64) -> Result<()> {
        self.dir_inode_for_read(nodeid).map(drop)
    }

    /// Sends entries after `offset` (0, or an offset handed out earlier)
    /// until the replier is full.
    pub fn readdir(&self, nodeid: u64, offset: u64, out: &mut dyn DirReplier) -> Result<()> {
        let dir = self.dir_inode_for_read(nodeid)?;
        let snap = self.pass_listing(&dir)?;
        for e in snap.after(offset) {
            if out.add(e.ino, e.off, e.d_type, snap.name(e)) {
                return Ok(());
            }
        }
        dir.lock_dir().pass_ended(&snap);
        Ok(())
    }

    /// readdir with each entry looked up, saving the kernel one LOOKUP round
    /// trip per entry on `ls -l` and tree walks. Every entry sent counts as a
    /// kernel lookup, so one that does not fit is forgotten again.
    pub fn readdirplus(
        &self,
        nodeid: u64,
        offset: u64,
        out: &mut dyn DirPlusReplier,
    ) -> Result<()> {
        let dir = self.dir_inode_for_read(nodeid)?;
        let snap = self.pass_listing(&dir)?;
        for e in snap.after(offset) {
            let name = snap.name(e);
            if name == b"." || name == b".." {
                // The kernel links no inode for these; only the dirent counts.
                let mut st = sys::zeroed_stat();
                st.st_ino = e.ino;
                st.st_mode = libc::S_IFDIR;
                if out.add(e.off, name, &st, 0) {
                    return Ok(());
                }
                continue;
            }
            // An entry gone since the listing was taken, or unreadable, is
            // left out rather than failing the whole listing. Its inode
            // number is the real one even for an object with an alias, as
            // every listing shows it (the kernel then links the name to the
            // object's first kernel inode, and an open there that needs
            // the copy is sent on to the alias: see the FUSE adapter's
            // `IoMode::Stale`).
            if let Ok(Some((st, generation))) =
                self.lookup_as(dir.nodeid, OsStr::from_bytes(name), false)
                && out.add(e.off, name, &st, generation)
            {
                self.forget(st.st_ino, 1);
                return Ok(());
            }
        }
        dir.lock_dir().pass_ended(&snap);
        Ok(())
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

//! The state every operation shares: the layers, the upper's conventions,
//! the inode table with its descriptor cache, and the mount's options; and
//! how an inode is reached in the layers. Reads, changes, resets and
//! copy-up all work over it.

use std::ffi::CStr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::idmap::IdMap;
use crate::inode::{FdCache, Inode, InodeTable, Location, ROOT};
use crate::layer::upper::Upper;
use crate::layer::{LayerIdx, Layers, Place, Winner};
use crate::name::Name;
use crate::override_stat::Override;
use crate::resolve::{self, DirFds, Found};
use crate::sys::{self, WTarget, Writable, XTarget};

/// A directory of the upper layer, open: what copy-up hands the operations
/// that change it.
#[derive(Debug, Clone)]
pub(crate) struct UpperDir(pub(crate) Arc<OwnedFd>);

impl UpperDir {
    /// The directory as the target of changes.
    pub(crate) fn w(&self) -> Writable<'_> {
        Writable::new(self.0.as_fd())
    }
}

impl AsFd for UpperDir {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}

/// The shared state of a mount.
#[derive(Debug)]
pub struct Tree {
    pub(crate) layers: Layers,
    /// The writable layer's conventions; `None` on a read-only mount.
    pub(crate) upper: Option<Upper>,
    pub(crate) inodes: InodeTable,
    pub(crate) fds: FdCache,
    /// Mounted read-only although there is an upper.
    pub(crate) read_only: bool,
    /// Owners as shown (container ids) and as stored (host ids).
    pub(crate) ids: IdMap,
    /// The xattr holding ownership and mode overrides, when enabled.
    pub(crate) override_xattr: Option<&'static CStr>,
    /// fsync does not reach the disk.
    pub(crate) volatile: bool,
    /// Attribute changes of lower files copy metadata only.
    pub(crate) metacopy: bool,
    /// The kernel enforces POSIX ACLs.
    pub(crate) acl: bool,
    /// New objects get their mode by chmod, not through a zero umask (an
    /// in-process mount leaves its host's umask alone).
    pub(crate) exact_modes: bool,
    /// The key of readdir offsets (see [`crate::listing`]), random so that
    /// names in an image cannot be chosen to collide.
    pub(crate) dir_hash: std::collections::hash_map::RandomState,
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

    /// The object as the target of a change. Only for an object of the
    /// upper layer (the caller copied it up first): the one place an
    /// operation declares a layer object writable.
    pub(crate) fn upper_target(&self) -> WTarget<'_> {
        let (dir, name) = self.upper_dir_and_name();
        WTarget::At(dir, name)
    }

    /// [`Object::dir_and_name`] of an object of the upper layer, its
    /// directory writable (see [`Object::upper_target`]).
    pub(crate) fn upper_dir_and_name(&self) -> (Writable<'_>, &CStr) {
        let (dir, name) = self.dir_and_name();
        (Writable::new(dir), name)
    }

    pub(crate) fn dir_and_name(&self) -> (BorrowedFd<'_>, &CStr) {
        match &self.name {
            None => (self.dir.as_fd(), c"."),
            Some(name) => (self.dir.as_fd(), name.as_cstr()),
        }
    }
}

impl Tree {
    pub(crate) fn new(
        layers: Layers,
        upper: Option<Upper>,
        fd_budget: usize,
    ) -> std::io::Result<Tree> {
        if layers.is_empty() {
            return Err(std::io::Error::from_raw_os_error(libc::EINVAL));
        }
        let top = layers.get(0);
        let st = sys::fstat(top.root.as_fd())?;
        let st_ino = layers.st_ino(st.st_dev, st.st_ino);
        // Like overlayfs, the root merges every layer: opaque markers on the
        // layer roots themselves are ignored.
        let all: Vec<LayerIdx> = layers.iter().map(|(i, _)| i).collect();
        let place = Place::found(&all, true, layers.has_upper());
        let root = Inode::new(ROOT, st_ino, libc::S_IFDIR, None, place);
        Ok(Tree {
            layers,
            upper,
            inodes: InodeTable::new(root),
            fds: FdCache::new(fd_budget),
            read_only: false,
            volatile: false,
            metacopy: false,
            acl: false,
            ids: IdMap::default(),
            override_xattr: None,
            exact_modes: false,
            dir_hash: Default::default(),
        })
    }

    pub(crate) fn upper(&self) -> Result<&Upper> {
        self.upper.as_ref().ok_or(Error::ROFS)
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
        if let Some(fds) = inode.cached_dir_fds() {
            return Ok(fds);
        }
        inode
            .dir_layers()
            .into_iter()
            .map(|l| Ok((l, self.dir_fd(inode, l)?)))
            .collect()
    }

    /// The winning layer object of `inode`.
    pub(crate) fn object(&self, inode: &Arc<Inode>) -> Result<Object> {
        let layer = match inode.winner() {
            Winner::Layer(l) => l,
            Winner::Index => {
                let upper = self.upper.as_ref().ok_or(Error::STALE)?;
                return Ok(Object {
                    dir: Arc::clone(&upper.index),
                    name: Some(Upper::index_name(inode.st_ino)),
                });
            }
        };
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

    /// The object holding `inode`'s data: its winning object, except for a
    /// metadata-only copy, whose data is in a layer below.
    pub(crate) fn data_object(&self, inode: &Arc<Inode>) -> Result<Object> {
        let Place::MetaCopy { data, redirect, .. } = inode.place() else {
            return self.object(inode);
        };
        let loc = inode.location()?.ok_or(Error::STALE)?;
        let Some(raw) = redirect else {
            return Ok(Object {
                dir: self.dir_fd(&loc.parent, data)?,
                name: Some(loc.name),
            });
        };
        let Some(path) = raw.strip_prefix(b"/") else {
            return Ok(Object {
                dir: self.dir_fd(&loc.parent, data)?,
                name: Some(Name::from_bytes(&raw)?),
            });
        };
        // A path from the layer root, walked one component at a time
        // without following symlinks.
        let comps: Vec<&[u8]> = path
            .split(|b| *b == b'/')
            .filter(|c| !c.is_empty())
            .collect();
        let Some((last, parents)) = comps.split_last() else {
            return Err(Error::new(libc::EIO));
        };
        let mut dir = Arc::clone(&self.layers.get(data).root);
        for c in parents {
            let n = Name::from_bytes(c)?;
            dir = Arc::new(sys::open_child_dir(dir.as_fd(), n.as_cstr())?);
        }
        Ok(Object {
            dir,
            name: Some(Name::from_bytes(last)?),
        })
    }

    /// Where a found object lives.
    pub(crate) fn place_of(&self, found: &resolve::Found) -> Place {
        if let Some((data, redirect)) = &found.data {
            return Place::MetaCopy {
                meta: found.layers.first().copied().unwrap_or(0),
                data: *data,
                redirect: redirect.clone(),
            };
        }
        Place::found(
            &found.layers,
            found.stat.st_mode & libc::S_IFMT == libc::S_IFDIR,
            self.layers.has_upper(),
        )
    }

    /// Records one kernel lookup of `name` in `parent` as inode `st_ino` of
    /// type `kind` at `place`. `true` when the table already knew the
    /// inode alive (the caller then notes the name); a new inode, or a dead
    /// one whose number now names this object, takes `name` and `place`.
    pub(crate) fn enter(
        &self,
        parent: &Arc<Inode>,
        name: &Name,
        st_ino: u64,
        kind: u32,
        place: Place,
    ) -> (Arc<Inode>, bool) {
        // Taken by a new inode; otherwise left for a dead one to take.
        let mut place = Some(place);
        let inode = self.inodes.lookup(st_ino, kind, || {
            let loc = Location {
                parent: Arc::clone(parent),
                name: name.clone(),
            };
            let place = place.take().unwrap_or(Place::Upper);
            Inode::new(st_ino, st_ino, kind, Some(loc), place)
        });
        let Some(place) = place else {
            return (inode, false);
        };
        if inode.is_dead() {
            // A dead inode of the same type: another name of the same
            // object (a hard link the table never saw), or a new object
            // with a reused number; either way it is found here now.
            inode.relocate(place);
            inode.note_location(parent, name);
            return (inode, false);
        }
        (inode, true)
    }

    /// The inode number the mount reports for a found object: the one
    /// recorded at copy-up for an upper object that has one, else the
    /// layer object's own (mapped by [`Layers::st_ino`]).
    pub(crate) fn reported_ino(&self, dirs: &DirFds, found: &resolve::Found, name: &Name) -> u64 {
        if self.layers.has_upper()
            && found.layers.first() == Some(&0)
            && let Some(upper) = &self.upper
            && let Some((_, dir)) = dirs.first()
            && let Some(ino) = upper.recorded_ino(dir.as_fd(), name.as_cstr())
        {
            return ino;
        }
        self.layers.st_ino(found.stat.st_dev, found.stat.st_ino)
    }

    /// The inode of a found object: the table's when the kernel holds it,
    /// else a transient one for the duration of the operation.
    pub(crate) fn inode_of(
        &self,
        parent: &Arc<Inode>,
        name: &Name,
        dirs: &DirFds,
        found: Found,
    ) -> Arc<Inode> {
        let st_ino = self.reported_ino(dirs, &found, name);
        let kind = found.stat.st_mode & libc::S_IFMT;
        if let Ok(i) = self.inodes.get(st_ino)
            && i.kind == kind
            && !i.is_dead()
        {
            return i;
        }
        let loc = Location {
            parent: Arc::clone(parent),
            name: name.clone(),
        };
        let inode = Arc::new(Inode::new(
            st_ino,
            st_ino,
            kind,
            Some(loc),
            self.place_of(&found),
        ));
        self.fds.insert_found(&inode, found);
        inode
    }

    /// Makes the name of a copy made by `copy_up` durable, if it is not
    /// yet: before an fsync of the object, or a write that is to be
    /// durable once it returns, can promise anything.
    pub(crate) fn sync_name(&self, inode: &Arc<Inode>) -> Result<()> {
        if !inode.is_name_unsynced() {
            return Ok(());
        }
        // Concurrent fsyncs of the object wait for the one that syncs.
        let _g = inode.copy_lock();
        if !inode.is_name_unsynced() {
            return Ok(());
        }
        // Its current parent: after a rename the old parent's entry is
        // gone, and a journal commits the rename after the link.
        if let Some(parent) = inode.parent() {
            let fd = self.dir_fd(&parent, 0)?;
            self.sync_dir(fd.as_fd())?;
        }
        // Without a parent no name is left to keep.
        inode.name_synced();
        Ok(())
    }

    /// Makes the entries of upper directory `dir` (an `O_PATH` descriptor)
    /// durable, unless the mount is volatile.
    pub(crate) fn sync_dir(&self, dir: BorrowedFd<'_>) -> Result<()> {
        if self.volatile {
            return Ok(());
        }
        let fd = sys::open_child_flags(dir, c".", libc::O_RDONLY | libc::O_DIRECTORY)?;
        sys::fsync(fd.as_fd(), false)?;
        Ok(())
    }
}

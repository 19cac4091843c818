//! New names: files, directories, nodes, symlinks and hard links, made in
//! place, unnamed then linked, or staged and renamed over a whiteout, each
//! with the owner the kernel would give it.

use std::ffi::{CStr, OsStr};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;

use super::{Caller, new_name};
use crate::copyup::Staged;
use crate::error::{Error, Result};
use crate::handle::Handle;
use crate::inode::{Inode, Location};
use crate::layer::Place;
use crate::layer::whiteout::{self, StagingSlot};
use crate::name::Name;
use crate::override_stat::Override;
use crate::sys::{self, WTarget, Writable};
use crate::union::Union;

/// What a new object is.
enum NewKind<'a> {
    File { flags: i32 },
    Dir,
    Node { rdev: u64 },
    Symlink { target: &'a CStr },
    Link { dir: BorrowedFd<'a>, name: &'a CStr },
}

/// The flags a new file is opened with on the daemon's side.
fn open_flags(flags: i32) -> i32 {
    (flags & libc::O_ACCMODE) | (flags & (libc::O_SYNC | libc::O_DSYNC))
}

/// Makes a new object of `kind` as `name` in `dir`; a file comes back open.
fn make(kind: &NewKind<'_>, dir: Writable<'_>, name: &CStr, mode: u32) -> Result<Option<OwnedFd>> {
    let perm = mode & 0o7777;
    Ok(match kind {
        NewKind::File { flags } => Some(sys::create_file(dir, name, open_flags(*flags), perm)?),
        NewKind::Dir => {
            sys::mkdirat(dir, name, perm)?;
            None
        }
        NewKind::Node { rdev } => {
            sys::mknodat(dir, name, mode, *rdev)?;
            None
        }
        NewKind::Symlink { target } => {
            sys::symlinkat(target, dir, name)?;
            None
        }
        NewKind::Link {
            dir: odir,
            name: oname,
        } => {
            sys::linkat(*odir, oname, dir, name)?;
            None
        }
    })
}

/// Who a new object belongs to, as the kernel would decide in the parent:
/// the caller, with the group (and, for a directory, the bit) of a
/// set-group-ID parent.
struct Ownership {
    uid: u32,
    gid: u32,
    perm: u32,
    is_dir: bool,
    setgid_parent: bool,
    daemon: (u32, u32),
}

impl Ownership {
    fn new(caller: Caller, parent: &libc::stat, perm: u32, is_dir: bool) -> Ownership {
        let setgid_parent = parent.st_mode & libc::S_ISGID != 0;
        Ownership {
            uid: caller.uid,
            gid: if setgid_parent {
                parent.st_gid
            } else {
                caller.gid
            },
            perm,
            is_dir,
            setgid_parent,
            daemon: sys::ids(),
        }
    }

    /// Whether an object the daemon makes in the real parent gets this
    /// owner by itself (the kernel applies set-group-ID inheritance there).
    fn in_place(&self) -> bool {
        self.uid == self.daemon.0 && (self.setgid_parent || self.gid == self.daemon.1)
    }

    /// Gives an object made elsewhere (or unnamed) its owner.
    fn apply(&self, t: WTarget<'_>) -> Result<()> {
        if (self.uid, self.gid) != self.daemon {
            sys::chown(t, self.uid, self.gid)?;
            if self.perm & (libc::S_ISUID | libc::S_ISGID) != 0 && !self.is_dir {
                // chown dropped the set-id bits the caller asked for.
                sys::chmod(t, self.perm)?;
            }
        }
        if self.is_dir && self.setgid_parent {
            sys::chmod(t, self.perm | libc::S_ISGID)?;
        }
        Ok(())
    }
}

impl Union {
    /// Creates `name` in `parent`, owned by the caller. Where the daemon's
    /// own ids give the right owner, the object is made in place (complete
    /// the moment it exists); a file for another owner is made unnamed
    /// (O_TMPFILE), given its owner, then linked; anything else, and
    /// anything replacing a whiteout, is built in the staging directory and
    /// renamed into place (a new directory over a whiteout becomes opaque).
    fn create_object(
        &self,
        caller: Caller,
        parent: &Arc<Inode>,
        name: &Name,
        mode: u32,
        kind: NewKind<'_>,
    ) -> Result<(libc::stat, Option<OwnedFd>)> {
        let upper = self.upper()?;
        if self.find(parent, name)?.1.is_some() {
            return Err(Error::new(libc::EEXIST));
        }
        // The caller's ids are the mount's (container) ids; the disk holds
        // host ids.
        let caller = if matches!(kind, NewKind::Link { .. }) {
            caller
        } else {
            Caller {
                uid: self.ids.uid.store(caller.uid).ok_or(Error::INVAL)?,
                gid: self.ids.gid.store(caller.gid).ok_or(Error::INVAL)?,
            }
        };
        let pfd_dir = self.upper_dir(parent)?;
        let pfd = pfd_dir.w();
        let pst = sys::fstat(pfd.fd())?;
        let over_whiteout = whiteout::has_whiteout(pfd.fd(), name);
        let is_dir = matches!(kind, NewKind::Dir);
        let owned = !matches!(kind, NewKind::Link { .. });
        let own = Ownership::new(caller, &pst, mode & 0o7777, is_dir);
        let fd = if !over_whiteout && (!owned || own.in_place()) {
            make(&kind, pfd, name.as_cstr(), mode)?
        } else if let (false, NewKind::File { flags }) = (over_whiteout, &kind)
            && let Ok(tmp) = sys::open_tmpfile(pfd, open_flags(*flags), mode & 0o7777)
        {
            self.own(&own, WTarget::Fd(Writable::new(tmp.as_fd())), None)?;
            sys::link_tmpfile(tmp.as_fd(), pfd, name.as_cstr())?;
            Some(tmp)
        } else {
            let staged = Staged::new(upper);
            let (sdir, sname) = (upper.staging(), staged.cstr());
            let fd = make(&kind, sdir, sname, mode)?;
            if owned {
                self.own(&own, WTarget::At(sdir, sname), None)?;
            }
            if over_whiteout {
                let from = StagingSlot {
                    dir: sdir,
                    name: sname,
                };
                upper.format.place_over_whiteout(from, pfd, name, is_dir)?;
            } else {
                sys::renameat2(sdir, sname, pfd, name.as_cstr(), libc::RENAME_NOREPLACE)?;
            }
            staged.keep();
            fd
        };
        if self.exact_modes && owned && !matches!(kind, NewKind::Symlink { .. }) {
            // The host process's umask took bits the caller asked for.
            let setgid = if is_dir && own.setgid_parent {
                libc::S_ISGID
            } else {
                0
            };
            sys::fchmodat(pfd, name.as_cstr(), (mode & 0o7777) | setgid)?;
        }
        let st = sys::fstatat(pfd.fd(), name.as_cstr())?;
        if !owned {
            // A new name of an existing inode: the caller registers it.
            parent.changed();
            return Ok((st, fd));
        }
        Ok((self.register(parent, name, st), fd))
    }

    /// Enters a new upper object into the inode table (one kernel lookup)
    /// and returns its stat as the mount reports it.
    fn register(&self, parent: &Arc<Inode>, name: &Name, mut st: libc::stat) -> libc::stat {
        let st_ino = self.layers.st_ino(st.st_dev, st.st_ino);
        let kind = st.st_mode & libc::S_IFMT;
        let place = Place::found(&[0], kind == libc::S_IFDIR, true);
        let inode = self.inodes.insert_created(st_ino, || {
            let loc = Location {
                parent: Arc::clone(parent),
                name: name.clone(),
            };
            Inode::new(st_ino, st_ino, kind, Some(loc), place)
        });
        parent.changed();
        st.st_ino = inode.st_ino;
        self.present(&inode, &mut st);
        st
    }

    pub fn create(
        &self,
        caller: Caller,
        parent: u64,
        name: &OsStr,
        mode: u32,
        flags: i32,
    ) -> Result<(libc::stat, u64)> {
        let _changing = self.barrier.read();
        let p = self.dir_inode(parent)?;
        let name = new_name(name)?;
        let (st, fd) = self.create_object(caller, &p, &name, mode, NewKind::File { flags })?;
        let inode = self.inodes.get(st.st_ino)?;
        let fd = fd.ok_or(Error::INVAL)?;
        let fh = self.handles.insert(Handle::File {
            fd,
            inode,
            copied: None,
        });
        Ok((st, fh))
    }

    pub fn mkdir(
        &self,
        caller: Caller,
        parent: u64,
        name: &OsStr,
        mode: u32,
    ) -> Result<libc::stat> {
        let _changing = self.barrier.read();
        let p = self.dir_inode(parent)?;
        let name = new_name(name)?;
        let (mut st, _) = self.create_object(caller, &p, &name, mode, NewKind::Dir)?;
        st.st_nlink = 2;
        Ok(st)
    }

    pub fn mknod(
        &self,
        caller: Caller,
        parent: u64,
        name: &OsStr,
        mode: u32,
        rdev: u64,
    ) -> Result<libc::stat> {
        let _changing = self.barrier.read();
        if mode & libc::S_IFMT == libc::S_IFCHR && rdev == 0 {
            // A 0:0 device is a whiteout on disk; overlayfs refuses it too.
            return Err(Error::new(libc::EPERM));
        }
        let p = self.dir_inode(parent)?;
        let name = new_name(name)?;
        let kind = mode & libc::S_IFMT;
        if self.override_xattr.is_some()
            && matches!(kind, libc::S_IFCHR | libc::S_IFBLK)
            && !self.upper()?.privileged
        {
            // A user cannot make a device: an empty file stands in, and the
            // override says what it is.
            let perm = mode & 0o7777;
            let (st, _) = self.create_object(
                caller,
                &p,
                &name,
                libc::S_IFREG | 0o600,
                NewKind::File { flags: 0 },
            )?;
            let inode = self.inodes.get(st.st_ino)?;
            let obj = self.object(&inode)?;
            let pst = sys::fstat(obj.dir.as_fd())?;
            let own = Ownership::new(
                Caller {
                    uid: self.ids.uid.store(caller.uid).ok_or(Error::INVAL)?,
                    gid: self.ids.gid.store(caller.gid).ok_or(Error::INVAL)?,
                },
                &pst,
                perm,
                false,
            );
            self.own(&own, obj.upper_target(), Some((kind, rdev)))?;
            return self.getattr(st.st_ino, None);
        }
        Ok(self
            .create_object(caller, &p, &name, mode, NewKind::Node { rdev })?
            .0)
    }

    pub fn symlink(
        &self,
        caller: Caller,
        parent: u64,
        name: &OsStr,
        target: &OsStr,
    ) -> Result<libc::stat> {
        let _changing = self.barrier.read();
        let p = self.dir_inode(parent)?;
        let name = new_name(name)?;
        let target = std::ffi::CString::new(target.as_bytes()).map_err(|_| Error::INVAL)?;
        Ok(self
            .create_object(
                caller,
                &p,
                &name,
                0o777,
                NewKind::Symlink { target: &target },
            )?
            .0)
    }

    /// A hard link: the object is copied up first, then linked in the upper,
    /// so every name shares one inode, its data and its number.
    pub fn link(&self, nodeid: u64, newparent: u64, newname: &OsStr) -> Result<libc::stat> {
        let _changing = self.barrier.read();
        let inode = self.inodes.get(nodeid)?;
        if inode.is_dir() {
            return Err(Error::new(libc::EPERM));
        }
        let np = self.dir_inode(newparent)?;
        let name = new_name(newname)?;
        self.copy_up(&inode, true)?;
        let src = self.object(&inode)?;
        let (sdir, sname) = src.dir_and_name();
        let (uid, gid) = sys::ids();
        let caller = Caller { uid, gid };
        let (mut st, _) = self.create_object(
            caller,
            &np,
            &name,
            0,
            NewKind::Link {
                dir: sdir,
                name: sname,
            },
        )?;
        // The link shares the copied-up object's number, not the one its
        // upper inode would get.
        st.st_ino = inode.st_ino;
        self.present(&inode, &mut st);
        let i = self.inodes.lookup(inode.nodeid, inode.kind, || {
            Inode::new(inode.nodeid, inode.st_ino, inode.kind, None, Place::Upper)
        });
        i.note_location(&np, &name);
        let upper = self.upper()?;
        if upper.indexed(inode.st_ino).is_some() {
            upper.adjust_nlink(inode.st_ino, 1);
            st.st_nlink = upper.indexed_nlink(inode.st_ino, &st);
        }
        // The new name leads to the kernel inode that lookups hand out.
        st.st_ino = i.entry_nodeid();
        Ok(st)
    }

    /// Gives a new object its owner: recorded in the override xattr where
    /// overrides are on and the daemon cannot chown, else by chown. `kind`
    /// records a type the disk cannot hold (a device made by a user).
    fn own(&self, own: &Ownership, t: WTarget<'_>, kind: Option<(u32, u64)>) -> Result<()> {
        if let Some(attr) = self.override_xattr
            && (kind.is_some() || (!self.upper()?.privileged && (own.uid, own.gid) != own.daemon))
        {
            let o = Override {
                uid: own.uid,
                gid: own.gid,
                perm: own.perm
                    | if own.is_dir && own.setgid_parent {
                        libc::S_ISGID
                    } else {
                        0
                    },
                kind,
            };
            sys::setxattr(t, attr, o.format().as_bytes(), 0)?;
            return Ok(());
        }
        own.apply(t)
    }
}

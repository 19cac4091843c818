//! The operations that change the merged tree. Changes land in the upper
//! layer only: lower objects are copied up first, deletions of lower names
//! leave whiteouts, and new objects are built in the staging directory and
//! renamed into place, so no crash exposes a half-made object. Whiteouts
//! and opaque markers are written by the upper's
//! [`UpperFormat`](crate::layer::whiteout::UpperFormat).

use std::ffi::{CStr, OsStr};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;

use crate::copyup::Staged;
use crate::error::{Error, Result};
use crate::handle::Handle;
use crate::inode::{Inode, Location};
use crate::layer::INDEX;
use crate::layer::whiteout::{self, Scratch, is_private_xattr};
use crate::name::Name;
use crate::override_stat::Override;
use crate::resolve::{self, DirFds, Found};
use crate::sys::{self, XTarget};
use crate::union::Union;

/// Who asks for a new object: its owner.
#[derive(Debug, Clone, Copy)]
pub struct Caller {
    pub uid: u32,
    pub gid: u32,
}

/// A time in a setattr request.
#[derive(Debug, Clone, Copy)]
pub enum SetTime {
    Now,
    At(i64, i64),
}

/// The attributes a setattr request changes.
#[derive(Debug, Default, Clone, Copy)]
pub struct SetAttr {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: Option<SetTime>,
    pub mtime: Option<SetTime>,
}

/// What a new object is.
enum NewKind<'a> {
    File { flags: i32 },
    Dir,
    Node { rdev: u64 },
    Symlink { target: &'a CStr },
    Link { dir: BorrowedFd<'a>, name: &'a CStr },
}

impl SetTime {
    fn timespec(t: Option<SetTime>) -> libc::timespec {
        match t {
            None => libc::timespec {
                tv_sec: 0,
                tv_nsec: libc::UTIME_OMIT,
            },
            Some(SetTime::Now) => libc::timespec {
                tv_sec: 0,
                tv_nsec: libc::UTIME_NOW,
            },
            Some(SetTime::At(s, ns)) => libc::timespec {
                tv_sec: s,
                tv_nsec: ns,
            },
        }
    }
}

/// The flags a new file is opened with on the daemon's side.
fn open_flags(flags: i32) -> i32 {
    (flags & libc::O_ACCMODE) | (flags & (libc::O_SYNC | libc::O_DSYNC))
}

/// Makes a new object of `kind` as `name` in `dir`; a file comes back open.
fn make(
    kind: &NewKind<'_>,
    dir: BorrowedFd<'_>,
    name: &CStr,
    mode: u32,
) -> Result<Option<OwnedFd>> {
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
    fn apply(&self, t: XTarget<'_>) -> Result<()> {
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

/// A name the kernel sent for a new entry. `.wh.*` names are the whiteout
/// format's: creating one would forge a deletion, so it is refused.
fn new_name(name: &OsStr) -> Result<Name> {
    let n = Name::new(name)?;
    if n.is_reserved() {
        return Err(Error::INVAL);
    }
    Ok(n)
}

impl Union {
    fn dir_inode(&self, nodeid: u64) -> Result<Arc<Inode>> {
        let p = self.inodes.get(nodeid)?;
        if !p.is_dir() {
            return Err(Error::NOTDIR);
        }
        Ok(p)
    }

    /// What `name` in `parent` is, with the parent's layer directories.
    fn find(&self, parent: &Arc<Inode>, name: &Name) -> Result<(DirFds, Option<Found>)> {
        let dirs = self.dir_fds(parent)?;
        if name.is_reserved() {
            return Ok((dirs, None));
        }
        let found = resolve::lookup(&self.layers, &dirs, name)?;
        Ok((dirs, found))
    }

    /// Whether a lower layer shows something at `name` under `parent` that
    /// the upper would have to hide.
    fn lower_has(&self, parent: &Arc<Inode>, name: &Name) -> Result<bool> {
        let dirs = self.dir_fds(parent)?;
        let lowers: DirFds = dirs.into_iter().filter(|(l, _)| *l != 0).collect();
        Ok(!lowers.is_empty() && resolve::lookup(&self.layers, &lowers, name)?.is_some())
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
            && !i.dead.load(std::sync::atomic::Ordering::Acquire)
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
            found.layers.clone(),
        ));
        self.fds.insert_found(&inode, found);
        inode
    }

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
        let pfd_arc = self.upper_dir(parent)?;
        let pfd = pfd_arc.as_fd();
        let pst = sys::fstat(pfd)?;
        let over_whiteout = whiteout::has_whiteout(pfd, name);
        let is_dir = matches!(kind, NewKind::Dir);
        let owned = !matches!(kind, NewKind::Link { .. });
        let own = Ownership::new(caller, &pst, mode & 0o7777, is_dir);
        let fd = if !over_whiteout && (!owned || own.in_place()) {
            make(&kind, pfd, name.as_cstr(), mode)?
        } else if let (false, NewKind::File { flags }) = (over_whiteout, &kind)
            && let Ok(tmp) = sys::open_tmpfile(pfd, open_flags(*flags), mode & 0o7777)
        {
            self.own(&own, XTarget::Fd(tmp.as_fd()), None)?;
            sys::link_tmpfile(tmp.as_fd(), pfd, name.as_cstr())?;
            Some(tmp)
        } else {
            let staged = Staged::new(upper);
            let (sdir, sname) = (upper.staging(), staged.cstr());
            let fd = make(&kind, sdir, sname, mode)?;
            if owned {
                self.own(&own, XTarget::At(sdir, sname), None)?;
            }
            if over_whiteout {
                let from = Scratch {
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
        let st = sys::fstatat(pfd, name.as_cstr())?;
        if !owned {
            // A new name of an existing inode: the caller registers it.
            parent.changed(false);
            return Ok((st, fd));
        }
        Ok((self.register(parent, name, st), fd))
    }

    /// Enters a new upper object into the inode table (one kernel lookup)
    /// and returns its stat as the mount reports it.
    fn register(&self, parent: &Arc<Inode>, name: &Name, mut st: libc::stat) -> libc::stat {
        let st_ino = self.layers.st_ino(st.st_dev, st.st_ino);
        let kind = st.st_mode & libc::S_IFMT;
        let (inode, known) = self.enter(parent, name, st_ino, kind, &[0]);
        if known {
            inode.note_location(parent, name);
        }
        parent.changed(kind == libc::S_IFDIR);
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
            self.own(&own, obj.xattr_target(), Some((kind, rdev)))?;
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
            Inode::new(inode.nodeid, inode.st_ino, inode.kind, None, vec![0])
        });
        i.note_location(&np, &name);
        let upper = self.upper()?;
        if upper.indexed(inode.st_ino).is_some() {
            upper.adjust_nlink(inode.st_ino, 1);
            st.st_nlink = upper.indexed_nlink(inode.st_ino, &st);
        }
        Ok(st)
    }

    pub fn unlink(&self, parent: u64, name: &OsStr) -> Result<()> {
        let _changing = self.barrier.read();
        let p = self.dir_inode(parent)?;
        let name = Name::new(name)?;
        let (dirs, found) = self.find(&p, &name)?;
        let found = found.ok_or(Error::NOENT)?;
        if found.stat.st_mode & libc::S_IFMT == libc::S_IFDIR {
            return Err(Error::new(libc::EISDIR));
        }
        let st_ino = self.reported_ino(&dirs, &found, &name);
        let mut in_upper = found.layers[0] == 0;
        let linked = found.stat.st_nlink > 1;
        if linked && !in_upper {
            // One name of a lower hard link: its copy goes to the index
            // first, where the other names find the data and the count.
            let inode = self.inode_of(&p, &name, &dirs, found);
            self.copy_up_at(&inode, &p, &name, true)?;
            in_upper = sys::fstatat(self.upper_dir(&p)?.as_fd(), name.as_cstr()).is_ok();
        }
        self.remove_entry(&p, &name, in_upper, false)?;
        if linked {
            self.upper()?.adjust_nlink(st_ino, -1);
        }
        if let Ok(i) = self.inodes.get(st_ino) {
            i.remove_location(&p, name.as_bytes());
        }
        p.changed(false);
        Ok(())
    }

    pub fn rmdir(&self, parent: u64, name: &OsStr) -> Result<()> {
        let _changing = self.barrier.read();
        let p = self.dir_inode(parent)?;
        let name = Name::new(name)?;
        let (dirs, found) = self.find(&p, &name)?;
        let found = found.ok_or(Error::NOENT)?;
        if found.stat.st_mode & libc::S_IFMT != libc::S_IFDIR {
            return Err(Error::NOTDIR);
        }
        let in_upper = found.layers[0] == 0;
        let dir = self.inode_of(&p, &name, &dirs, found);
        if !self.is_empty_dir(&dir)? {
            return Err(Error::new(libc::ENOTEMPTY));
        }
        self.remove_entry(&p, &name, in_upper, true)?;
        dir.remove_location(&p, name.as_bytes());
        p.changed(true);
        Ok(())
    }

    /// Whether a merged directory shows no entry besides `.` and `..`.
    fn is_empty_dir(&self, dir: &Arc<Inode>) -> Result<bool> {
        let dirs = self.dir_fds(dir)?;
        let snap = resolve::list(&self.layers, &dirs, 0, 0, None)?;
        Ok(snap.entries().len() <= 2)
    }

    /// Runs a change that may park an object in a fresh staging name,
    /// removing it afterwards when `change` says something is left there.
    fn with_scratch(&self, change: impl FnOnce(Scratch<'_>) -> Result<bool>) -> Result<()> {
        let upper = self.upper()?;
        let staged = Staged::new(upper);
        let scratch = Scratch {
            dir: upper.staging(),
            name: staged.cstr(),
        };
        if !change(scratch)? {
            staged.keep();
        }
        Ok(())
    }

    /// Removes the visible `name` from `parent`: the upper object if there
    /// is one, and a whiteout where a lower layer holds the name.
    fn remove_entry(
        &self,
        parent: &Arc<Inode>,
        name: &Name,
        in_upper: bool,
        is_dir: bool,
    ) -> Result<()> {
        let upper = self.upper()?;
        let pfd = self.upper_dir(parent)?;
        let pfd = pfd.as_fd();
        let hide = self.lower_has(parent, name)?;
        if !in_upper {
            return upper.format.write_whiteout(pfd, name);
        }
        self.with_scratch(|s| upper.format.remove(pfd, name, is_dir, hide, s))
    }

    /// rename(2) with `RENAME_NOREPLACE` and `RENAME_EXCHANGE`. A directory
    /// that lower layers hold is first copied up whole (see
    /// `copy_up_tree`), so directory renames never fail with EXDEV.
    pub fn rename(
        &self,
        parent: u64,
        name: &OsStr,
        newparent: u64,
        newname: &OsStr,
        flags: u32,
    ) -> Result<()> {
        let _changing = self.barrier.read();
        if flags & !(libc::RENAME_NOREPLACE | libc::RENAME_EXCHANGE) != 0 {
            return Err(Error::INVAL);
        }
        let exchange = flags & libc::RENAME_EXCHANGE != 0;
        let p = self.dir_inode(parent)?;
        let np = self.dir_inode(newparent)?;
        let name = Name::new(name)?;
        let newname = if exchange {
            Name::new(newname)?
        } else {
            new_name(newname)?
        };
        let (sdirs, src) = self.find(&p, &name)?;
        let src = src.ok_or(Error::NOENT)?;
        let (ddirs, dst) = self.find(&np, &newname)?;
        let src_dir = src.stat.st_mode & libc::S_IFMT == libc::S_IFDIR;
        let dst_dir = dst
            .as_ref()
            .map(|d| d.stat.st_mode & libc::S_IFMT == libc::S_IFDIR);
        if exchange && dst.is_none() {
            return Err(Error::NOENT);
        }
        if flags & libc::RENAME_NOREPLACE != 0 && dst.is_some() {
            return Err(Error::new(libc::EEXIST));
        }
        let dst_linked = dst
            .as_ref()
            .is_some_and(|d| d.stat.st_nlink > 1 && dst_dir != Some(true));
        let src_inode = self.inode_of(&p, &name, &sdirs, src);
        let dst_inode = dst.map(|d| self.inode_of(&np, &newname, &ddirs, d));
        if let Some(d) = &dst_inode
            && Arc::ptr_eq(d, &src_inode)
        {
            return Ok(());
        }
        if !exchange && let Some(d) = &dst_inode {
            match (src_dir, dst_dir == Some(true)) {
                (true, false) => return Err(Error::NOTDIR),
                (false, true) => return Err(Error::new(libc::EISDIR)),
                (true, true) if !self.is_empty_dir(d)? => return Err(Error::new(libc::ENOTEMPTY)),
                _ => {}
            }
        }
        let upper = self.upper()?;
        // Bring both ends wholly into the upper.
        let bring_up = |i: &Arc<Inode>, parent: &Arc<Inode>, name: &Name| -> Result<()> {
            if i.is_dir() {
                self.copy_up_tree(i)
            } else {
                self.copy_up_at(i, parent, name, true)
            }
        };
        bring_up(&src_inode, &p, &name)?;
        if let Some(d) = &dst_inode
            && (exchange || dst_linked)
        {
            // A replaced hard link is copied (indexed) first, as on unlink.
            bring_up(d, &np, &newname)?;
        }
        let pfd = self.upper_dir(&p)?;
        let npfd = self.upper_dir(&np)?;
        let (pfd, npfd) = (pfd.as_fd(), npfd.as_fd());
        // A directory arriving where a lower layer holds the name must not
        // merge with it.
        if src_dir && self.lower_has(&np, &newname)? {
            let fd = self.dir_fd(&src_inode, 0)?;
            let t = XTarget::At(pfd, name.as_cstr());
            upper.format.mark_opaque(t, fd.as_fd())?;
        }
        if exchange {
            let d = dst_inode.as_ref().ok_or(Error::NOENT)?;
            if d.is_dir() && self.lower_has(&p, &name)? {
                let fd = self.dir_fd(d, 0)?;
                let t = XTarget::At(npfd, newname.as_cstr());
                upper.format.mark_opaque(t, fd.as_fd())?;
            }
            sys::renameat2(
                pfd,
                name.as_cstr(),
                npfd,
                newname.as_cstr(),
                libc::RENAME_EXCHANGE,
            )?;
            src_inode.move_location(
                &p,
                name.as_bytes(),
                Location {
                    parent: Arc::clone(&np),
                    name: newname.clone(),
                },
            );
            d.move_location(
                &np,
                newname.as_bytes(),
                Location {
                    parent: Arc::clone(&p),
                    name: name.clone(),
                },
            );
        } else {
            let hide = self.lower_has(&p, &name)?;
            self.with_scratch(|s| {
                upper
                    .format
                    .rename(pfd, &name, npfd, &newname, src_dir, hide, s)
            })?;
            if let Some(d) = &dst_inode {
                d.remove_location(&np, newname.as_bytes());
                if dst_linked {
                    upper.adjust_nlink(d.st_ino, -1);
                }
            }
            src_inode.move_location(
                &p,
                name.as_bytes(),
                Location {
                    parent: Arc::clone(&np),
                    name: newname.clone(),
                },
            );
        }
        // A directory moving out of one parent into another changes both
        // parents' link counts.
        let dirs_moved = src_dir || dst_dir == Some(true);
        p.changed(dirs_moved);
        np.changed(dirs_moved);
        Ok(())
    }

    /// Opens a file for writing, copying it up first; O_TRUNC skips the
    /// copy of its data.
    pub(crate) fn open_for_write(&self, inode: Arc<Inode>, flags: i32) -> Result<u64> {
        let _changing = self.barrier.read();
        if self.read_only() {
            return Err(Error::ROFS);
        }
        self.copy_up(&inode, flags & libc::O_TRUNC == 0)?;
        let obj = self.object(&inode)?;
        let (dir, name) = obj.dir_and_name();
        // The kernel hands every write its offset (appends included), and
        // reads and writes go through the page cache or passthrough.
        let keep = libc::O_ACCMODE | libc::O_TRUNC | libc::O_SYNC | libc::O_DSYNC;
        let fd = sys::open_child_flags(dir, name, flags & keep)?;
        Ok(self.handles.insert(Handle::File {
            fd,
            inode,
            copied: None,
        }))
    }

    pub fn write(&self, fh: u64, offset: u64, data: &[u8]) -> Result<usize> {
        match &*self.handles.get(fh)? {
            Handle::File { fd, .. } => Ok(sys::pwrite(fd.as_fd(), data, offset)?),
            Handle::Dir { .. } => Err(Error::new(libc::EISDIR)),
        }
    }

    pub fn fsync(&self, fh: u64, datasync: bool) -> Result<()> {
        if self.volatile {
            return Ok(());
        }
        match &*self.handles.get(fh)? {
            Handle::File { fd, .. } => Ok(sys::fsync(fd.as_fd(), datasync)?),
            Handle::Dir { inode, .. } => self.fsync_dir(inode, datasync),
        }
    }

    fn fsync_dir(&self, inode: &Arc<Inode>, datasync: bool) -> Result<()> {
        if inode.top_layer()? != 0 {
            // Nothing of it is in the upper; there is nothing to flush.
            return Ok(());
        }
        let fd = self.dir_fd(inode, 0)?;
        let d = sys::open_child_flags(fd.as_fd(), c".", libc::O_RDONLY | libc::O_DIRECTORY)?;
        Ok(sys::fsync(d.as_fd(), datasync)?)
    }

    pub fn fallocate(&self, fh: u64, offset: u64, len: u64, mode: i32) -> Result<()> {
        match &*self.handles.get(fh)? {
            Handle::File { fd, .. } => Ok(sys::fallocate(fd.as_fd(), mode, offset, len)?),
            Handle::Dir { .. } => Err(Error::new(libc::EISDIR)),
        }
    }

    /// chmod, chown, truncate, utimes: on the upper copy.
    pub fn setattr(&self, nodeid: u64, fh: Option<u64>, a: SetAttr) -> Result<libc::stat> {
        let _changing = self.barrier.read();
        let inode = self.inodes.get(nodeid)?;
        if self.read_only() {
            return Err(Error::ROFS);
        }
        if inode.is_dir() {
            self.upper_dir(&inode)?;
        } else if inode.location().is_ok() {
            self.copy_up(&inode, a.size != Some(0))?;
        }
        let handle_fd = fh
            .and_then(|fh| self.handles.get(fh).ok())
            .or_else(|| self.handles.any_file_of(nodeid));
        let obj = self.object(&inode);
        if let Err(e) = &obj
            && *e == Error::STALE
        {
            // Every name is gone: only an open handle reaches the file.
            let Some(h) = handle_fd else { return Err(*e) };
            let Handle::File { fd, .. } = &*h else {
                return Err(*e);
            };
            let t = XTarget::Fd(fd.as_fd());
            if a.uid.is_some() || a.gid.is_some() {
                let uid = self.store_id(a.uid, &self.ids.uid)?;
                let gid = self.store_id(a.gid, &self.ids.gid)?;
                sys::chown(t, uid, gid)?;
            }
            if let Some(mode) = a.mode {
                sys::chmod(t, mode & 0o7777)?;
            }
            if let Some(size) = a.size {
                sys::ftruncate(fd.as_fd(), size)?;
            }
            if a.atime.is_some() || a.mtime.is_some() {
                let times = [SetTime::timespec(a.atime), SetTime::timespec(a.mtime)];
                sys::set_times(t, &times)?;
            }
            return self.getattr(nodeid, fh);
        }
        let obj = obj?;
        let (dir, name) = obj.dir_and_name();
        let mut a = a;
        if let Some(attr) = self.override_xattr
            && (a.uid.is_some() || a.gid.is_some() || a.mode.is_some())
        {
            // Ownership and mode live in the override; the disk keeps the
            // daemon's own access to the object.
            let st = obj.stat()?;
            let mut o = self.override_of(obj.xattr_target()).unwrap_or(Override {
                uid: st.st_uid,
                gid: st.st_gid,
                perm: st.st_mode & 0o7777,
                kind: None,
            });
            if a.uid.is_some() {
                o.uid = self.store_id(a.uid, &self.ids.uid)?;
            }
            if a.gid.is_some() {
                o.gid = self.store_id(a.gid, &self.ids.gid)?;
            }
            if let Some(mode) = a.mode {
                o.perm = mode & 0o7777;
                let own = if inode.is_dir() { 0o700 } else { 0o600 };
                a.mode = Some((st.st_mode & 0o7777 & !0o7000) | own | (mode & 0o777 & !own));
            }
            sys::setxattr(obj.xattr_target(), attr, o.format().as_bytes(), 0)?;
            a.uid = None;
            a.gid = None;
        }
        if a.uid.is_some() || a.gid.is_some() {
            let uid = self.store_id(a.uid, &self.ids.uid)?;
            let gid = self.store_id(a.gid, &self.ids.gid)?;
            sys::fchownat(dir, name, uid, gid)?;
        }
        if let Some(mode) = a.mode {
            if inode.kind == libc::S_IFLNK {
                return Err(Error::new(libc::EOPNOTSUPP));
            }
            sys::fchmodat(dir, name, mode & 0o7777)?;
        }
        if let Some(size) = a.size {
            match handle_fd.as_deref() {
                // Any open handle may be a reader whose release is still
                // on its way: only a writable one can be truncated through.
                Some(Handle::File { fd, .. })
                    if inode.top_layer()? == 0
                        && sys::is_open_for_write(fd.as_fd())
                        && self.handle_in_upper(fd.as_fd(), &obj) =>
                {
                    sys::ftruncate(fd.as_fd(), size)?
                }
                _ => {
                    let f = sys::open_child_flags(dir, name, libc::O_WRONLY)?;
                    sys::ftruncate(f.as_fd(), size)?;
                }
            }
        }
        if a.atime.is_some() || a.mtime.is_some() {
            let times = [SetTime::timespec(a.atime), SetTime::timespec(a.mtime)];
            sys::utimensat(dir, name, &times)?;
        }
        self.getattr(nodeid, fh)
    }

    /// Gives a new object its owner: recorded in the override xattr where
    /// overrides are on and the daemon cannot chown, else by chown. `kind`
    /// records a type the disk cannot hold (a device made by a user).
    fn own(&self, own: &Ownership, t: XTarget<'_>, kind: Option<(u32, u64)>) -> Result<()> {
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

    /// The host id to store for a container id from chown; `u32::MAX`
    /// (leave unchanged) for none.
    fn store_id(&self, id: Option<u32>, map: &crate::idmap::Map) -> Result<u32> {
        match id {
            None => Ok(u32::MAX),
            Some(id) => map.store(id).ok_or(Error::INVAL),
        }
    }

    /// Whether a handle's descriptor is the object `obj` (and not the lower
    /// file it was opened on before a copy-up).
    fn handle_in_upper(&self, fd: BorrowedFd<'_>, obj: &crate::union::Object) -> bool {
        match (sys::fstat(fd), obj.stat()) {
            (Ok(a), Ok(b)) => a.st_dev == b.st_dev && a.st_ino == b.st_ino,
            _ => false,
        }
    }

    pub fn setxattr(&self, nodeid: u64, name: &OsStr, value: &[u8], flags: i32) -> Result<()> {
        let _changing = self.barrier.read();
        if is_private_xattr(name.as_bytes()) {
            return Err(Error::new(libc::EOPNOTSUPP));
        }
        let cname = std::ffi::CString::new(name.as_bytes()).map_err(|_| Error::INVAL)?;
        let inode = self.inodes.get(nodeid)?;
        self.copy_up_for_meta(&inode)?;
        let obj = self.object(&inode)?;
        Ok(sys::setxattr(obj.xattr_target(), &cname, value, flags)?)
    }

    pub fn removexattr(&self, nodeid: u64, name: &OsStr) -> Result<()> {
        let _changing = self.barrier.read();
        if is_private_xattr(name.as_bytes()) {
            return Err(Error::NODATA);
        }
        let cname = std::ffi::CString::new(name.as_bytes()).map_err(|_| Error::INVAL)?;
        let inode = self.inodes.get(nodeid)?;
        // As overlayfs: removing an attribute the object does not have
        // fails without copying anything up.
        let obj = self.object(&inode)?;
        sys::getxattr(obj.xattr_target(), &cname, &mut [])?;
        self.copy_up_for_meta(&inode)?;
        let obj = self.object(&inode)?;
        Ok(sys::removexattr(obj.xattr_target(), &cname)?)
    }

    fn copy_up_for_meta(&self, inode: &Arc<Inode>) -> Result<()> {
        if self.read_only() {
            return Err(Error::ROFS);
        }
        if inode.is_dir() {
            self.upper_dir(inode).map(|_| ())
        } else {
            self.copy_up(inode, true)
        }
    }

    /// Whether an open file's data lives in the upper layer (or the mount
    /// is read-only), so the kernel may read and write its backing file
    /// directly for the handle's whole life.
    pub fn stable_backing(&self, fh: u64) -> bool {
        if self.read_only() {
            return true;
        }
        match self.handles.get(fh).as_deref() {
            Ok(Handle::File { inode, .. }) => inode.top_layer().is_ok_and(|l| l == 0 || l == INDEX),
            _ => false,
        }
    }
}

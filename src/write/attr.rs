//! Metadata changes: setattr (mode, owner, size, times) and xattrs, on the
//! upper copy.

use std::ffi::OsStr;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;

use super::{SetAttr, SetTime};
use crate::error::{Error, Result};
use crate::handle::Handle;
use crate::inode::Inode;
use crate::layer::Place;
use crate::layer::whiteout::is_private_xattr;
use crate::override_stat::Override;
use crate::sys::{self, WTarget, Writable};
use crate::union::Union;

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

impl Union {
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
            match a.size {
                None => self.copy_up_attrs(&inode)?,
                Some(size) => self.copy_up(&inode, size != 0)?,
            }
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
            let Handle::File { fd, .. } = &*h;
            if !inode.in_upper() {
                // A lower file whose every name is gone: there is no
                // upper copy to change, and the lower layer is never
                // changed.
                return Err(Error::ROFS);
            }
            let t = WTarget::Fd(Writable::new(fd.as_fd()));
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
        // Copied up above: the object is the upper's.
        let t = obj.upper_target();
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
            sys::setxattr(t, attr, o.format().as_bytes(), 0)?;
            a.uid = None;
            a.gid = None;
        }
        if a.uid.is_some() || a.gid.is_some() {
            let uid = self.store_id(a.uid, &self.ids.uid)?;
            let gid = self.store_id(a.gid, &self.ids.gid)?;
            sys::chown(t, uid, gid)?;
        }
        if let Some(mode) = a.mode {
            if inode.kind == libc::S_IFLNK {
                return Err(Error::new(libc::EOPNOTSUPP));
            }
            sys::chmod(t, mode & 0o7777)?;
        }
        if let Some(size) = a.size {
            match handle_fd.as_deref() {
                // Any open handle may be a reader whose release is still
                // on its way: only a writable one can be truncated through.
                Some(Handle::File { fd, .. })
                    if inode.place() == Place::Upper
                        && sys::is_open_for_write(fd.as_fd())
                        && self.handle_in_upper(fd.as_fd(), &obj) =>
                {
                    sys::ftruncate(fd.as_fd(), size)?
                }
                _ => {
                    let (dir, name) = obj.upper_dir_and_name();
                    let f = sys::open_child_write(dir, name, libc::O_WRONLY)?;
                    sys::ftruncate(f.as_fd(), size)?;
                }
            }
        }
        if a.atime.is_some() || a.mtime.is_some() {
            let times = [SetTime::timespec(a.atime), SetTime::timespec(a.mtime)];
            sys::set_times(t, &times)?;
        }
        self.getattr(nodeid, fh)
    }

    /// Clears set-user-ID, and set-group-ID where group execution makes it
    /// one (without it the bit marks mandatory locking and stays), as the
    /// kernel does when a caller without CAP_FSETID writes or truncates a
    /// file and when anyone changes its owner. With
    /// FUSE_HANDLE_KILLPRIV_V2 the kernel leaves this to the daemon, which
    /// is what spares every write a GETXATTR of `security.capability`.
    pub fn kill_suidgid(&self, nodeid: u64, fh: Option<u64>) -> Result<()> {
        let st = self.getattr(nodeid, fh)?;
        if st.st_mode & libc::S_IFMT == libc::S_IFDIR {
            return Ok(());
        }
        let mut mode = st.st_mode & 0o7777;
        mode &= !libc::S_ISUID;
        if mode & (libc::S_ISGID | libc::S_IXGRP) == libc::S_ISGID | libc::S_IXGRP {
            mode &= !libc::S_ISGID;
        }
        if mode == st.st_mode & 0o7777 {
            return Ok(());
        }
        let a = SetAttr {
            mode: Some(mode),
            ..SetAttr::default()
        };
        self.setattr(nodeid, fh, a).map(drop)
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
    fn handle_in_upper(&self, fd: BorrowedFd<'_>, obj: &crate::tree::Object) -> bool {
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
        Ok(sys::setxattr(obj.upper_target(), &cname, value, flags)?)
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
        Ok(sys::removexattr(obj.upper_target(), &cname)?)
    }

    fn copy_up_for_meta(&self, inode: &Arc<Inode>) -> Result<()> {
        if self.read_only() {
            return Err(Error::ROFS);
        }
        if inode.is_dir() {
            self.upper_dir(inode).map(|_| ())
        } else {
            self.copy_up_attrs(inode)
        }
    }
}

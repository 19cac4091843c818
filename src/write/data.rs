//! Writes through open files: opening for write (with its copy-up),
//! write, fsync, fallocate, and whether a handle may bypass the daemon.

use std::os::fd::AsFd;
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::handle::Handle;
use crate::inode::Inode;
use crate::sys;
use crate::union::Union;

impl Union {
    /// Opens a file for writing, copying it up first; O_TRUNC skips the
    /// copy of its data.
    pub(crate) fn open_for_write(&self, inode: Arc<Inode>, flags: i32) -> Result<u64> {
        let _changing = self.barrier.read();
        if self.read_only() {
            return Err(Error::ROFS);
        }
        self.copy_up(&inode, flags & libc::O_TRUNC == 0)?;
        if flags & (libc::O_SYNC | libc::O_DSYNC) != 0 {
            // Each write through this handle is durable when it returns,
            // which means nothing unless the copy's name is.
            self.sync_name(&inode)?;
        }
        let obj = self.object(&inode)?;
        // Copied up above: the object is the upper's.
        let (dir, name) = obj.upper_dir_and_name();
        // The kernel hands every write its offset (appends included), and
        // reads and writes go through the page cache or passthrough.
        let keep = libc::O_ACCMODE | libc::O_TRUNC | libc::O_SYNC | libc::O_DSYNC;
        let fd = sys::open_child_write(dir, name, flags & keep)?;
        Ok(self.handles.insert(Handle::File {
            fd,
            inode,
            copied: None,
        }))
    }

    pub fn write(&self, fh: u64, offset: u64, data: &[u8]) -> Result<usize> {
        match &*self.handles.get(fh)? {
            Handle::File { fd, .. } => Ok(sys::pwrite(fd.as_fd(), data, offset)?),
        }
    }

    pub fn fsync(&self, fh: u64, datasync: bool) -> Result<()> {
        if self.volatile {
            return Ok(());
        }
        match &*self.handles.get(fh)? {
            Handle::File { fd, inode, .. } => {
                // fdatasync too: a copy-up is the file's name, which its
                // data is useless without.
                self.sync_name(inode)?;
                Ok(sys::fsync(fd.as_fd(), datasync)?)
            }
        }
    }

    /// fsync of a directory: directories have no handles (see
    /// [`crate::listing`]).
    pub fn fsyncdir(&self, nodeid: u64, datasync: bool) -> Result<()> {
        let inode = self.inodes.get(nodeid)?;
        if self.volatile || !inode.in_upper() {
            // Nothing of it is in the upper; there is nothing to flush.
            return Ok(());
        }
        let fd = self.dir_fd(&inode, 0)?;
        let d = sys::open_child_flags(fd.as_fd(), c".", libc::O_RDONLY | libc::O_DIRECTORY)?;
        Ok(sys::fsync(d.as_fd(), datasync)?)
    }

    pub fn fallocate(&self, fh: u64, offset: u64, len: u64, mode: i32) -> Result<()> {
        match &*self.handles.get(fh)? {
            Handle::File { fd, .. } => Ok(sys::fallocate(fd.as_fd(), mode, offset, len)?),
        }
    }

    /// How long the descriptor of `h` (the handle `fh`) keeps holding the
    /// file's data, which decides whether the kernel may read it directly
    /// (passthrough).
    pub fn data_life(&self, fh: u64, h: &Handle) -> DataLife {
        if self.read_only() {
            return DataLife::Whole;
        }
        match h {
            // Opened read-only on a lower file (see `Union::open`).
            Handle::File {
                copied: Some(_), ..
            } => DataLife::UntilCopyUp,
            // The kernel clears set-id bits on passthrough writes only
            // through the daemon (FUSE_HANDLE_KILLPRIV_V2), which never
            // sees those writes: such files are served here.
            Handle::File { inode, .. }
                if inode.in_upper()
                    && self
                        .getattr(inode.nodeid, Some(fh))
                        .is_ok_and(|st| st.st_mode & (libc::S_ISUID | libc::S_ISGID) == 0) =>
            {
                DataLife::Whole
            }
            Handle::File { .. } => DataLife::Served,
        }
    }
}

/// See [`Union::data_life`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataLife {
    /// For the handle's whole life: an upper file, or any file of a
    /// read-only mount.
    Whole,
    /// Until the file is copied up: a lower file's data, opened read-only.
    UntilCopyUp,
    /// Not to be read or written behind the daemon's back.
    Served,
}

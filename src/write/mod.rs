//! The operations that change the merged tree. Changes land in the upper
//! layer only: lower objects are copied up first, deletions of lower names
//! leave whiteouts, and new objects are built in the staging directory and
//! renamed into place, so no crash exposes a half-made object. Whiteouts
//! and opaque markers are written by the upper's
//! [`UpperFormat`](crate::layer::whiteout::UpperFormat).
//!
//! This module holds the request types and the lookups every change
//! starts with; the changes themselves are grouped below it.

mod attr;
mod create;
mod data;
mod remove;
mod rename;

pub use data::DataLife;

use std::ffi::OsStr;
use std::sync::Arc;

use crate::copyup::Staged;
use crate::error::{Error, Result};
use crate::inode::Inode;
use crate::layer::whiteout::StagingSlot;
use crate::name::Name;
use crate::resolve::{self, DirFds, Found};
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

    /// Whether a merged directory shows no entry besides `.` and `..`.
    fn is_empty_dir(&self, dir: &Arc<Inode>) -> Result<bool> {
        let dirs = self.dir_fds(dir)?;
        let snap = resolve::list(&self.layers, &dirs, 0, 0, None)?;
        Ok(snap.entries().len() <= 2)
    }

    /// Runs a change that may park an object in a fresh staging name,
    /// removing it afterwards when `change` says something is left there.
    fn with_slot(&self, change: impl FnOnce(StagingSlot<'_>) -> Result<bool>) -> Result<()> {
        let upper = self.upper()?;
        let staged = Staged::new(upper);
        let slot = StagingSlot {
            dir: upper.staging(),
            name: staged.cstr(),
        };
        if !change(slot)? {
            staged.keep();
        }
        Ok(())
    }
}

//! rename(2), with `RENAME_NOREPLACE` and `RENAME_EXCHANGE`: both ends
//! brought into the upper, then moved there in one step.

use std::ffi::OsStr;
use std::os::fd::AsFd;
use std::sync::Arc;

use super::new_name;
use crate::error::{Error, Result};
use crate::inode::{Inode, Location};
use crate::name::Name;
use crate::sys::{self, WTarget, Writable};
use crate::union::Union;

impl Union {
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
        let (pfd, npfd) = (pfd.w(), npfd.w());
        // A directory arriving where a lower layer holds the name must not
        // merge with it.
        if src_dir && self.lower_has(&np, &newname)? {
            // Brought up above: the directory is the upper's.
            let fd = self.dir_fd(&src_inode, 0)?;
            let t = WTarget::At(pfd, name.as_cstr());
            upper.format.mark_opaque(t, Writable::new(fd.as_fd()))?;
        }
        if exchange {
            let d = dst_inode.as_ref().ok_or(Error::NOENT)?;
            if d.is_dir() && self.lower_has(&p, &name)? {
                let fd = self.dir_fd(d, 0)?;
                let t = WTarget::At(npfd, newname.as_cstr());
                upper.format.mark_opaque(t, Writable::new(fd.as_fd()))?;
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
            self.with_slot(|s| {
                let (from, to) = ((pfd, &name), (npfd, &newname));
                upper.format.rename(from, to, src_dir, hide, s)
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
        p.changed();
        np.changed();
        Ok(())
    }
}

//! Removing names: unlink and rmdir, leaving a whiteout where a lower
//! layer still holds the name.

use std::ffi::OsStr;
use std::os::fd::AsFd;
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::inode::Inode;
use crate::name::Name;
use crate::sys;
use crate::union::Union;

impl Union {
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
        // Taken before the name goes: from then on the number is free on
        // disk, and a concurrent create may enter a new object under it.
        let inode = self.inodes.get(st_ino);
        self.remove_entry(&p, &name, in_upper, false)?;
        if linked {
            self.upper()?.adjust_nlink(st_ino, -1);
        }
        if let Ok(i) = inode {
            i.remove_location(&p, name.as_bytes());
        }
        p.changed();
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
        p.changed();
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
        let pfd = pfd.w();
        let hide = self.lower_has(parent, name)?;
        if !in_upper {
            return upper.format.write_whiteout(pfd, name);
        }
        self.with_slot(|s| upper.format.remove(pfd, name, is_dir, hide, s))
    }
}

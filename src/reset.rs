//! Resetting a live mount to the pristine image, and checkpoints of its
//! writable layer, for test harnesses that reuse one mount many times.
//!
//! Changes stop while the upper is emptied (every changing operation holds
//! the union's barrier for reading; a reset takes it for writing). Then
//! every inode the kernel knows is looked up again, and the kernel is told
//! to forget the names and attributes it cached. Inodes get a new FUSE
//! generation, so the kernel makes new inodes for whatever is looked up
//! next: a file or directory open during the reset fails cleanly with EIO
//! from then on instead of mixing old and new data.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;

use crate::copyup::Staged;
use crate::error::{Error, Result};
use crate::inode::{Inode, ROOT};
use crate::layer::upper::clear_dir;
use crate::name::Name;
use crate::progress::{NoProgress, Progress};
use crate::resolve::{self};
use crate::sys::{self, Writable};
use crate::union::Union;
use crate::walk::Step;

/// What the kernel must forget after a reset.
#[derive(Debug)]
pub enum Inval {
    /// A cached name (positive or negative) in a directory.
    Entry(u64, Box<Name>),
    /// Cached attributes and data of an inode.
    Inode(u64),
}

/// `inodes` ordered by their depth in the tree, parents first. Each depth
/// is counted once, from the nearest ancestor already counted: walking to
/// the root for every inode (let alone for every comparison of a sort) is
/// quadratic in the depth of the tree, and trees nest thousands of levels.
fn by_depth(inodes: Vec<Arc<Inode>>) -> Vec<Arc<Inode>> {
    let mut depth: std::collections::HashMap<u64, usize> =
        std::collections::HashMap::with_capacity(inodes.len());
    let mut keyed: Vec<(usize, Arc<Inode>)> = Vec::with_capacity(inodes.len());
    for inode in inodes {
        let mut chain = vec![inode.nodeid];
        let mut cur = inode.parent();
        let base = loop {
            match cur {
                None => break 0,
                Some(p) => {
                    if let Some(d) = depth.get(&p.nodeid) {
                        break *d + 1;
                    }
                    chain.push(p.nodeid);
                    cur = p.parent();
                }
            }
        };
        for (i, id) in chain.iter().rev().enumerate() {
            depth.insert(*id, base + i);
        }
        keyed.push((depth[&inode.nodeid], inode));
    }
    keyed.sort_by_key(|(d, _)| *d);
    keyed.into_iter().map(|(_, i)| i).collect()
}

impl Union {
    /// Empties the upper and brings every inode back to what the lowers
    /// hold. Returns what the kernel must forget; the caller tells it after
    /// this returns (never while changes are held up: the kernel may be
    /// waiting on one of them for the very directory it must invalidate).
    pub fn reset(&self) -> Result<Vec<Inval>> {
        self.replace_upper(None, &NoProgress)
    }

    /// Saves a copy of the upper as checkpoint `name` in the work directory
    /// (reflinked where the filesystem can), counting each entry copied
    /// into `progress`. Fails with a message naming the object that could
    /// not be copied.
    pub fn checkpoint(
        &self,
        name: &Name,
        progress: &dyn Progress,
    ) -> std::result::Result<(), String> {
        let staging = |e: Error| format!("the work directory: {e}");
        let upper = self.upper().map_err(|e| e.to_string())?;
        let _w = self.barrier.write();
        let dir = upper.checkpoints().map_err(|e| staging(e.into()))?;
        let staged = Staged::new(upper);
        sys::mkdirat(upper.staging(), staged.cstr(), 0o700).map_err(|e| staging(e.into()))?;
        let dst = sys::open_child_dir(upper.staging().fd(), staged.cstr())
            .map_err(|e| staging(e.into()))?;
        copy_tree(
            self.layers.get(0).root.as_fd(),
            Writable::new(dst.as_fd()),
            None,
            progress,
        )
        .map_err(|(path, e)| format!("{}: {e}", String::from_utf8_lossy(&path)))?;
        // Replacing an older checkpoint of that name in one step.
        match sys::fstatat(dir.as_fd(), name.as_cstr()) {
            Ok(_) => {
                sys::renameat2(
                    upper.staging(),
                    staged.cstr(),
                    Writable::new(dir.as_fd()),
                    name.as_cstr(),
                    libc::RENAME_EXCHANGE,
                )
                .map_err(|e| staging(e.into()))?;
                drop(staged);
            }
            Err(_) => {
                sys::renameat2(
                    upper.staging(),
                    staged.cstr(),
                    Writable::new(dir.as_fd()),
                    name.as_cstr(),
                    libc::RENAME_NOREPLACE,
                )
                .map_err(|e| staging(e.into()))?;
                staged.keep();
            }
        }
        Ok(())
    }

    /// Brings back checkpoint `name` as the upper, as [`Union::reset`] does
    /// with an empty one, counting each entry copied into `progress`.
    pub fn restore(&self, name: &Name, progress: &dyn Progress) -> Result<Vec<Inval>> {
        self.replace_upper(Some(name), progress)
    }

    fn replace_upper(&self, from: Option<&Name>, progress: &dyn Progress) -> Result<Vec<Inval>> {
        let upper = self.upper()?;
        let mut inval = Vec::new();
        let trash = Staged::new(upper);
        {
            let _w = self.barrier.write();
            let upper_root = Arc::clone(&self.layers.get(0).root);
            let upper_w = Writable::new(upper_root.as_fd());
            let root = self.inodes.get(ROOT)?;
            self.names_in_upper(&root, upper_root.as_fd(), &mut inval)?;
            // Out of the tree in one rename per top-level entry; removed
            // once changes may run again.
            sys::mkdirat(upper.staging(), trash.cstr(), 0o700)?;
            let trash_fd = sys::open_child_dir(upper.staging().fd(), trash.cstr())?;
            let entries = sys::read_dir(upper_root.as_fd())?;
            for e in entries.iter() {
                if e.name == b"." || e.name == b".." {
                    continue;
                }
                let n = Name::from_bytes(e.name)?;
                sys::renameat2(
                    upper_w,
                    n.as_cstr(),
                    Writable::new(trash_fd.as_fd()),
                    n.as_cstr(),
                    0,
                )?;
            }
            clear_dir(Writable::new(
                sys::open_child_flags(
                    upper.index.as_fd(),
                    c".",
                    libc::O_RDONLY | libc::O_DIRECTORY,
                )?
                .as_fd(),
            ))?;
            if let Some(name) = from {
                let dir = upper.checkpoints()?;
                let src =
                    sys::open_child_dir(dir.as_fd(), name.as_cstr()).map_err(|_| Error::NOENT)?;
                copy_tree(src.as_fd(), upper_w, Some(upper), progress).map_err(|(_, e)| e)?;
                self.names_in_upper(&root, upper_root.as_fd(), &mut inval)?;
            }
            upper.forget_unrecorded();
            self.reresolve(&mut inval);
            self.epoch.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        }
        drop(trash);
        Ok(inval)
    }

    /// Every name the upper holds, as kernel entries to forget: what the
    /// upper added, changed or whited out is exactly what the kernel may
    /// have cached differently from the lowers.
    fn names_in_upper(
        &self,
        dir: &Arc<Inode>,
        fd: BorrowedFd<'_>,
        out: &mut Vec<Inval>,
    ) -> Result<()> {
        let root = Arc::new(sys::open_child_dir(fd, c".")?);
        let ctx = (Arc::clone(dir), self.dir_fds(dir)?);
        crate::walk::walk(
            root,
            ctx,
            false,
            |e| {
                let (dir, dirs) = e.ctx;
                let shown = match crate::layer::whiteout::oci_whiteout_target(e.name.as_bytes()) {
                    Some(Some(t)) => t,
                    Some(None) => return Ok(Step::Next),
                    None => e.name.as_bytes(),
                };
                let Ok(name) = Name::from_bytes(shown) else {
                    return Ok(Step::Next);
                };
                out.push(Inval::Entry(dir.nodeid, Box::new(name.clone())));
                if e.d_type != libc::DT_DIR {
                    return Ok(Step::Next);
                }
                // Descend where the kernel may know the directory.
                if let Ok(Some(found)) = resolve::lookup(&self.layers, dirs, &name) {
                    let ino = self.reported_ino(dirs, &found, &name);
                    if let Ok(child) = self.inodes.get(ino)
                        && child.is_dir()
                        && let Ok(sub_dirs) = self.dir_fds(&child)
                    {
                        return Ok(Step::Descend((child, sub_dirs)));
                    }
                }
                Ok(Step::Next)
            },
            |_, _| Ok(()),
        )
    }

    /// Looks every known inode up again, parents first, after the upper
    /// changed under them.
    fn reresolve(&self, out: &mut Vec<Inval>) {
        for inode in by_depth(self.inodes.all()) {
            self.fds.release(&inode);
            inode.changed();
            out.push(Inval::Inode(inode.nodeid));
            if inode.entry_nodeid() != inode.nodeid {
                out.push(Inval::Inode(inode.entry_nodeid()));
            }
            let Ok(Some(loc)) = inode.location() else {
                continue;
            };
            let found = self.dir_fds(&loc.parent).ok().and_then(|dirs| {
                resolve::lookup(&self.layers, &dirs, &loc.name)
                    .ok()
                    .flatten()
                    .map(|f| (dirs, f))
            });
            match found {
                Some((dirs, f))
                    if f.stat.st_mode & libc::S_IFMT == inode.kind
                        && self.reported_ino(&dirs, &f, &loc.name) == inode.st_ino =>
                {
                    inode.relocate(self.place_of(&f));
                    self.fds.insert_found(&inode, f);
                }
                // The object was the upper's own: it is gone.
                _ => inode.remove_location(&loc.parent, loc.name.as_bytes()),
            }
        }
    }
}

/// Copies the tree in `src` into the empty directory `dst`: everything the
/// upper may hold, whiteouts and private xattrs included, hard links kept,
/// data reflinked where possible, each entry counted into `progress`.
/// Fails with the path, from `src`, of the object that could not be copied.
///
/// With `index` (a checkpoint restored as the upper), copies of lower hard
/// links get their index entry back: the index lives in the work directory,
/// outside what a checkpoint holds, and without it the other names of the
/// copy would show the lower object again.
fn copy_tree(
    src: BorrowedFd<'_>,
    dst: Writable<'_>,
    index: Option<&crate::layer::upper::Upper>,
    progress: &dyn Progress,
) -> std::result::Result<(), (Vec<u8>, Error)> {
    let mut links: std::collections::HashMap<(u64, u64), (Arc<OwnedFd>, Name)> =
        std::collections::HashMap::new();
    let top = |e: std::io::Error| (b".".to_vec(), Error::from(e));
    let src = Arc::new(sys::open_child_dir(src, c".").map_err(top)?);
    let dst = Arc::new(sys::open_child_dir(dst.fd(), c".").map_err(top)?);
    // The path of the entry being copied, for the message if it fails.
    let at = std::cell::RefCell::new(Vec::new());
    // A directory's context: where its copy is, and, for its attributes
    // once everything inside is copied, its copy's parent and its stat.
    type Ctx = (Arc<OwnedFd>, Option<(Arc<OwnedFd>, libc::stat)>);
    crate::walk::walk(
        src,
        (dst, None) as Ctx,
        false,
        |e| {
            *at.borrow_mut() = e.path.to_vec();
            let dst = &e.ctx.0;
            // Everything the copy makes is below `dst`: writable.
            let w = Writable::new(dst.as_fd());
            let c = e.name.as_cstr();
            let st = sys::fstatat(e.dir, c)?;
            let kind = st.st_mode & libc::S_IFMT;
            progress.item(if kind == libc::S_IFREG {
                st.st_size as u64
            } else {
                0
            });
            if kind != libc::S_IFDIR && st.st_nlink > 1 {
                if let Some((d, n)) = links.get(&(st.st_dev, st.st_ino)) {
                    sys::linkat(d.as_fd(), n.as_cstr(), w, c)?;
                    return Ok(Step::Next);
                }
                links.insert((st.st_dev, st.st_ino), (Arc::clone(dst), e.name.clone()));
            }
            match kind {
                libc::S_IFDIR => {
                    sys::mkdirat(w, c, 0o700)?;
                    let d = Arc::new(sys::open_child_dir(dst.as_fd(), c)?);
                    // Attributes when leaving it: mode and times would
                    // change as its entries are made.
                    return Ok(Step::Descend((d, Some((Arc::clone(dst), st)))));
                }
                libc::S_IFREG => {
                    let input = crate::copyup::open_for_copy(e.dir, c)?;
                    let out = sys::create_file(w, c, libc::O_WRONLY, 0o600)?;
                    crate::copyup::copy_file_data(
                        input.as_fd(),
                        out.as_fd(),
                        st.st_size as u64,
                        false,
                    )?;
                }
                libc::S_IFLNK => {
                    let t = sys::readlinkat(e.dir, c)?;
                    let t = std::ffi::CString::new(t).map_err(|_| Error::INVAL)?;
                    sys::symlinkat(&t, w, c)?;
                }
                _ => sys::mknodat(w, c, st.st_mode, st.st_rdev)?,
            }
            crate::copyup::copy_attributes(e.dir, c, &st, w)?;
            if let Some(upper) = index
                && kind == libc::S_IFREG
                && let Some(ino) = upper.index_ino_of(e.dir, c)
            {
                let name = crate::layer::upper::Upper::index_name(ino);
                match sys::linkat(dst.as_fd(), c, upper.index_dir(), name.as_cstr()) {
                    // Another name of the same copy put it back already.
                    Err(err) if err.raw_os_error() == Some(libc::EEXIST) => {}
                    r => r?,
                }
            }
            Ok(Step::Next)
        },
        |done, (_, attrs)| {
            if let (Some((src_parent, name)), Some((dst_parent, st))) = (done.parent, attrs) {
                // The walk keeps no path for a directory it leaves; its
                // name is what there is.
                *at.borrow_mut() = name.as_bytes().to_vec();
                crate::copyup::copy_attributes(
                    src_parent,
                    name.as_cstr(),
                    &st,
                    Writable::new(dst_parent.as_fd()),
                )?;
            }
            Ok(())
        },
    )
    .map_err(|e| (at.into_inner(), e))
}

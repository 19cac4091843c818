//! Copy-up: bringing a lower object into the upper layer before its first
//! change. Every copy is built in the staging directory and renamed into
//! place, so the merged view shows the old object or the complete new one,
//! never a partial copy.

use std::ffi::CStr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;

use log::{debug, info};

use crate::error::{Error, Result};
use crate::inode::Inode;
use crate::layer::Place;
use crate::layer::upper::{Upper, remove_tree};
use crate::layer::whiteout::{METACOPY_XATTRS, REDIRECT_XATTRS, is_private_xattr};
use crate::name::Name;
use crate::resolve;
use crate::sys::{self, WTarget, Writable, XTarget};
use crate::tree::{Object, Tree, UpperDir};

/// What a copy is made from: the object whose attributes it takes, and the
/// one whose data it takes (the same, but for a metadata-only copy).
#[derive(Clone, Copy)]
struct Source<'a> {
    meta: &'a Object,
    data: &'a Object,
}

/// Largest chunk handed to one `copy_file_range` call.
const COPY_CHUNK: usize = 1 << 30;

/// How much of a copy that is to be synced is copied before its
/// writeback starts; see [`Flusher`].
const FLUSH_CHUNK: u64 = 8 << 20;

/// How many chunks of a copy may be under writeback before the copy waits
/// for the oldest: the dirty pages one copy-up holds stay under
/// `(FLUSH_LAG + 1) * FLUSH_CHUNK`.
const FLUSH_LAG: usize = 2;

/// A staged object: removed again unless [`Staged::keep`] is called, so an
/// error half-way leaves nothing behind.
pub(crate) struct Staged<'a> {
    upper: &'a Upper,
    pub(crate) name: Name,
    kept: bool,
}

impl<'a> Staged<'a> {
    pub(crate) fn new(upper: &'a Upper) -> Staged<'a> {
        Staged {
            upper,
            name: upper.temp_name(),
            kept: false,
        }
    }

    pub(crate) fn cstr(&self) -> &CStr {
        self.name.as_cstr()
    }

    /// The object was renamed into place (or is to stay where it is).
    pub(crate) fn keep(mut self) {
        self.kept = true;
    }
}

impl Drop for Staged<'_> {
    fn drop(&mut self) {
        if !self.kept {
            let _ = remove_tree(self.upper.staging(), self.name.as_cstr());
        }
    }
}

impl Tree {
    /// The upper descriptor of directory `inode`, copying it (and its
    /// ancestors) up first when only lower layers hold it.
    pub(crate) fn upper_dir(&self, inode: &Arc<Inode>) -> Result<UpperDir> {
        if inode.in_upper() {
            return Ok(UpperDir(self.dir_fd(inode, 0)?));
        }
        // The ancestors that only lower layers hold are copied first, from
        // the top down, in a loop: recursion would overflow a request
        // thread's stack on trees thousands of levels deep.
        let mut above = Vec::new();
        let mut cur = Arc::clone(inode);
        while let Some(loc) = cur.location()? {
            if loc.parent.in_upper() {
                break;
            }
            above.push(Arc::clone(&loc.parent));
            cur = loc.parent;
        }
        while let Some(dir) = above.pop() {
            self.copy_up_dir(&dir)?;
        }
        self.copy_up_dir(inode)
    }

    /// Copies directory `inode` up, its parent being in the upper already
    /// (or copied up first).
    fn copy_up_dir(&self, inode: &Arc<Inode>) -> Result<UpperDir> {
        if inode.in_upper() {
            return Ok(UpperDir(self.dir_fd(inode, 0)?));
        }
        let upper = self.upper()?;
        let Some(loc) = inode.location()? else {
            // The root always merges the upper layer.
            return Err(Error::ROFS);
        };
        let pfd = self.upper_dir(&loc.parent)?;
        let _g = inode.copy_lock();
        if inode.in_upper() {
            return Ok(UpperDir(self.dir_fd(inode, 0)?));
        }
        let src = self.object(inode)?;
        let st = src.stat()?;
        let staged = Staged::new(upper);
        sys::mkdirat(upper.staging(), staged.cstr(), st.st_mode & 0o7777)?;
        self.copy_meta(
            &src,
            &st,
            WTarget::At(upper.staging(), staged.cstr()),
            inode.st_ino,
        )?;
        let pst = sys::fstat(pfd.as_fd())?;
        sys::renameat2(
            upper.staging(),
            staged.cstr(),
            pfd.w(),
            loc.name.as_cstr(),
            libc::RENAME_NOREPLACE,
        )?;
        staged.keep();
        keep_times(pfd.w(), &pst);
        let fd = sys::open_child_dir(pfd.as_fd(), loc.name.as_cstr())?;
        Ok(UpperDir(self.fds.copied_up(inode, fd)))
    }

    /// Copies a non-directory up at its current name; without `data` the
    /// copy is empty (an open with O_TRUNC, a truncate to 0).
    pub(crate) fn copy_up(&self, inode: &Arc<Inode>, data: bool) -> Result<()> {
        if inode.place() == Place::Upper {
            return Ok(());
        }
        let Some(loc) = inode.location()? else {
            return Err(Error::ROFS);
        };
        self.copy_up_at(inode, &loc.parent, &loc.name, data)
    }

    /// Copies a non-directory up as `name` in `parent`, one of its names.
    /// A lower object with several names is copied once, into the index;
    /// each name is then a link to that copy, made as it is changed.
    pub(crate) fn copy_up_at(
        &self,
        inode: &Arc<Inode>,
        parent: &Arc<Inode>,
        name: &Name,
        data: bool,
    ) -> Result<()> {
        if inode.place() == Place::Upper {
            return Ok(());
        }
        let pfd = self.upper_dir(parent)?;
        let _g = inode.copy_lock();
        match inode.place() {
            Place::Upper => return Ok(()),
            Place::Index if sys::fstatat(pfd.as_fd(), name.as_cstr()).is_ok() => return Ok(()),
            Place::MetaCopy { meta: 0, .. } if self.layers.has_upper() => {
                return self.complete_metacopy(inode, pfd.w(), name, data);
            }
            _ => {}
        }
        let pst = sys::fstat(pfd.as_fd())?;
        let indexed = self.copy_up_locked(inode, pfd.w(), name, data)?;
        // The copy itself was synced before it got its name, so a crash
        // shows the lower file or the whole copy. The name is made durable
        // by the first fsync of the file (see `Tree::sync_name`), not
        // here: a second journal commit per copy-up would nearly double
        // its cost, and until that fsync nothing written to the copy is
        // durable either. The names of an indexed copy, spread over
        // several directories, are synced at once.
        if indexed {
            self.sync_dir(pfd.as_fd())?;
        } else if !self.volatile {
            inode.name_unsynced();
        }
        // An indexed object is reached through its index entry from now
        // on, whichever of its names is used.
        inode.copied_up(indexed);
        keep_times(pfd.w(), &pst);
        Ok(())
    }

    /// Puts the copy of `inode` at `name` in upper directory `pfd`; `true`
    /// when the copy is indexed.
    fn copy_up_locked(
        &self,
        inode: &Arc<Inode>,
        pfd: Writable<'_>,
        name: &Name,
        data: bool,
    ) -> Result<bool> {
        let upper = self.upper()?;
        let index = Upper::index_name(inode.st_ino);
        let link_up = || -> Result<bool> {
            // Another name of this lower hard link was copied up: this name
            // becomes a link to that copy, once the index entry that other
            // names find it by is durable.
            self.sync_dir(upper.index.as_fd())?;
            sys::linkat(upper.index.as_fd(), index.as_cstr(), pfd, name.as_cstr())?;
            Ok(true)
        };
        if inode.place() == Place::Index {
            return link_up();
        }
        let src = self.object(inode)?;
        let data_src = self.data_object(inode)?;
        let st = src.stat()?;
        let linked = st.st_nlink > 1;
        if st.st_mode & libc::S_IFMT == libc::S_IFREG {
            // Born unnamed in its final directory: near its neighbours on
            // disk, and gone without a trace if the daemon dies mid-copy.
            match sys::open_tmpfile(pfd, libc::O_WRONLY, st.st_mode & 0o7777) {
                Ok(out) => {
                    self.fill_copy(&src, &data_src, &st, out.as_fd(), data, inode.st_ino)?;
                    if linked {
                        upper.record_nlink(WTarget::Fd(Writable::new(out.as_fd())), st.st_nlink);
                        match sys::link_tmpfile(out.as_fd(), upper.index_dir(), index.as_cstr()) {
                            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
                            r => r?,
                        }
                        return link_up();
                    }
                    sys::link_tmpfile(out.as_fd(), pfd, name.as_cstr())?;
                    return Ok(false);
                }
                Err(e)
                    if !matches!(
                        e.raw_os_error(),
                        Some(libc::EOPNOTSUPP | libc::EISDIR | libc::EINVAL)
                    ) =>
                {
                    return Err(e.into());
                }
                // No O_TMPFILE here: stage it under a name instead.
                Err(_) => {}
            }
        }
        let staged = Staged::new(upper);
        self.copy_object(
            Source {
                meta: &src,
                data: &data_src,
            },
            &st,
            upper.staging(),
            staged.cstr(),
            data,
            inode.st_ino,
        )?;
        if linked {
            // The lower object has other names: index the copy so that they
            // find it, now and after a remount.
            upper.record_nlink(WTarget::At(upper.staging(), staged.cstr()), st.st_nlink);
            match sys::linkat(
                upper.staging().fd(),
                staged.cstr(),
                upper.index_dir(),
                index.as_cstr(),
            ) {
                Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
                r => r?,
            }
            drop(staged);
            return link_up();
        }
        sys::renameat2(
            upper.staging(),
            staged.cstr(),
            pfd,
            name.as_cstr(),
            libc::RENAME_NOREPLACE,
        )?;
        staged.keep();
        Ok(false)
    }

    /// Builds a copy of non-directory `src` as `name` in `dir`.
    fn copy_object(
        &self,
        from: Source<'_>,
        st: &libc::stat,
        dir: Writable<'_>,
        name: &CStr,
        data: bool,
        ino: u64,
    ) -> Result<()> {
        let (sdir, sname) = from.meta.dir_and_name();
        match st.st_mode & libc::S_IFMT {
            libc::S_IFREG => {
                let out = sys::create_file(dir, name, libc::O_WRONLY, st.st_mode & 0o7777)?;
                self.fill_copy(from.meta, from.data, st, out.as_fd(), data, ino)?;
                return Ok(());
            }
            libc::S_IFLNK => {
                let target = sys::readlinkat(sdir, sname)?;
                let target = std::ffi::CString::new(target).map_err(|_| Error::INVAL)?;
                sys::symlinkat(&target, dir, name)?;
            }
            _ => sys::mknodat(dir, name, st.st_mode, st.st_rdev)?,
        }
        self.copy_meta(from.meta, st, WTarget::At(dir, name), ino)
    }

    /// Data (unless `data` is false) and metadata of regular file `src`
    /// into the new file `out`.
    fn fill_copy(
        &self,
        src: &Object,
        data_src: &Object,
        st: &libc::stat,
        out: BorrowedFd<'_>,
        data: bool,
        ino: u64,
    ) -> Result<()> {
        if data && st.st_size > 0 {
            let (sdir, sname) = data_src.dir_and_name();
            let input = open_for_copy(sdir, sname)?;
            copy_file_data(input.as_fd(), out, st.st_size as u64, !self.volatile)?;
        }
        self.copy_meta(src, st, WTarget::Fd(Writable::new(out)), ino)?;
        // Before the copy gets a name: a crash must never leave a name
        // whose data was not written yet (kernel overlayfs syncs here too).
        if !self.volatile {
            sys::fsync(out, false)?;
        }
        Ok(())
    }

    /// Brings `inode` into the upper before a change of its attributes
    /// (mode, owner, times, xattrs): a lower regular file with a single name
    /// on a `--metacopy` mount gets a metadata-only copy, its data left
    /// below until the first write, as kernel overlayfs's `metacopy=on`
    /// does; anything else a full copy.
    pub(crate) fn copy_up_attrs(&self, inode: &Arc<Inode>) -> Result<()> {
        let data = match inode.place() {
            Place::Lower(data) => data,
            // The attributes are in the upper already.
            Place::MetaCopy { meta: 0, .. } if self.layers.has_upper() => return Ok(()),
            _ => return self.copy_up(inode, true),
        };
        if !self.metacopy || inode.kind != libc::S_IFREG {
            return self.copy_up(inode, true);
        }
        let Some(loc) = inode.location()? else {
            return Err(Error::ROFS);
        };
        let upper = self.upper()?;
        let pfd = self.upper_dir(&loc.parent)?;
        let _g = inode.copy_lock();
        if inode.place() != Place::Lower(data) {
            // Copied while this request waited for the lock.
            return Ok(());
        }
        let src = self.object(inode)?;
        let st = src.stat()?;
        if st.st_nlink > 1 {
            // Hard links go through the index, data and all.
            drop(_g);
            return self.copy_up(inode, true);
        }
        let out = match sys::open_tmpfile(pfd.w(), libc::O_WRONLY, st.st_mode & 0o7777) {
            Ok(out) => out,
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EOPNOTSUPP | libc::EISDIR | libc::EINVAL)
                ) =>
            {
                drop(_g);
                return self.copy_up(inode, true);
            }
            Err(e) => return Err(e.into()),
        };
        // The size without the blocks: reads go below until the data comes.
        sys::ftruncate(out.as_fd(), st.st_size as u64)?;
        let marker = METACOPY_XATTRS[if upper.format.trusted() { 0 } else { 1 }];
        sys::setxattr(WTarget::Fd(Writable::new(out.as_fd())), marker, b"", 0)?;
        self.copy_meta(
            &src,
            &st,
            WTarget::Fd(Writable::new(out.as_fd())),
            inode.st_ino,
        )?;
        if !self.volatile {
            sys::fsync(out.as_fd(), false)?;
        }
        let pst = sys::fstat(pfd.as_fd())?;
        sys::link_tmpfile(out.as_fd(), pfd.w(), loc.name.as_cstr())?;
        // As for a full copy: the name is synced by the file's first fsync.
        if !self.volatile {
            inode.name_unsynced();
        }
        keep_times(pfd.w(), &pst);
        inode.relocate(Place::MetaCopy {
            meta: 0,
            data,
            redirect: None,
        });
        Ok(())
    }

    /// Gives a metadata-only copy in the upper (kernel overlayfs's
    /// metacopy) its data, in place: the data is written and synced before
    /// the metacopy marker goes, so a crash leaves either the marked copy
    /// (its data still read from below) or the complete file. Without
    /// `data` (O_TRUNC) the file is emptied instead.
    fn complete_metacopy(
        &self,
        inode: &Arc<Inode>,
        pfd: Writable<'_>,
        name: &Name,
        data: bool,
    ) -> Result<()> {
        let st = sys::fstatat(pfd.fd(), name.as_cstr())?;
        let out = sys::open_child_write(pfd, name.as_cstr(), libc::O_WRONLY)?;
        if data {
            let src = self.data_object(inode)?;
            let (sdir, sname) = src.dir_and_name();
            let input = open_for_copy(sdir, sname)?;
            copy_file_data(
                input.as_fd(),
                out.as_fd(),
                st.st_size as u64,
                !self.volatile,
            )?;
        } else {
            sys::ftruncate(out.as_fd(), 0)?;
        }
        // Writing the data is no change the merged view may show.
        sys::set_times(
            WTarget::Fd(Writable::new(out.as_fd())),
            &sys::stat_times(&st),
        )?;
        if !self.volatile {
            sys::fsync(out.as_fd(), false)?;
        }
        for x in METACOPY_XATTRS.iter().chain(REDIRECT_XATTRS.iter()) {
            match sys::removexattr(WTarget::Fd(Writable::new(out.as_fd())), x) {
                Err(e) if e.raw_os_error() != Some(libc::ENODATA) => return Err(e.into()),
                _ => {}
            }
        }
        inode.copied_up(false);
        Ok(())
    }

    /// Owner, mode, xattrs, the inode number, then times: chown clears
    /// set-id bits and security.capability, and every later change would
    /// move the times.
    fn copy_meta(&self, src: &Object, st: &libc::stat, dst: WTarget<'_>, ino: u64) -> Result<()> {
        let upper = self.upper()?;
        // overlayfs's own markers describe the lower's position, not the
        // copy's; unionfuse's are rewritten below. An ownership override
        // belongs to the object and comes along.
        let keep = |attr: &[u8]| {
            let is_override = self.override_xattr.is_some_and(|o| o.to_bytes() == attr);
            (!is_private_xattr(attr) || is_override) && !upper.is_own_xattr(attr)
        };
        // Without full privilege (an ordinary user, or root of a user
        // namespace) the copy keeps the daemon as owner where the lower's
        // owner cannot be set, as kernel overlayfs in a user namespace.
        copy_owner_mode_xattrs(src.xattr_target(), dst, st, upper.privileged, keep)?;
        upper.record_ino(dst, ino);
        sys::set_times(dst, &sys::stat_times(st))?;
        Ok(())
    }

    /// Copies the whole merged directory `inode` into the upper and marks
    /// every directory in it opaque, so that it no longer depends on where
    /// its lower parts live: the first step of renaming a directory that
    /// lower layers hold. Each step leaves the merged view unchanged (an
    /// opaque marker comes only once everything below it is copied), so a
    /// crash half-way shows the same tree; upper objects stay where they
    /// are, keeping their identity.
    pub(crate) fn copy_up_tree(&self, dir: &Arc<Inode>) -> Result<()> {
        if dir.upper_only() {
            return Ok(());
        }
        // A rename of a big lower tree can take minutes, in which the
        // renaming process just waits: the log says what it waits for.
        let mut log = TreeLog::new(dir);
        // Depth first over an explicit stack (trees in images nest
        // thousands of levels deep): a directory is sealed once every
        // directory below it is.
        let mut stack = vec![self.copy_up_entries(dir, &mut log)?];
        while let Some((top, subdirs)) = stack.last_mut() {
            match subdirs.pop() {
                Some(child) if child.upper_only() => {}
                Some(child) => {
                    let next = self.copy_up_entries(&child, &mut log)?;
                    stack.push(next);
                }
                None => {
                    let done = Arc::clone(top);
                    stack.pop();
                    self.seal_copied_dir(&done)?;
                }
            }
        }
        log.done();
        Ok(())
    }

    /// Copies up every non-directory of merged directory `dir` (and `dir`
    /// itself); returns its subdirectories, still to be copied.
    fn copy_up_entries(
        &self,
        dir: &Arc<Inode>,
        log: &mut TreeLog,
    ) -> Result<(Arc<Inode>, Vec<Arc<Inode>>)> {
        self.upper_dir(dir)?;
        let dirs = self.dir_fds(dir)?;
        let snap = resolve::list(&self.layers, &dirs, 0, 0, None)?;
        let mut subdirs = Vec::new();
        for e in snap.entries() {
            let raw = snap.name(e);
            if raw == b"." || raw == b".." {
                continue;
            }
            let name = Name::from_bytes(raw)?;
            let Some(found) = resolve::lookup(&self.layers, &dirs, &name)? else {
                continue;
            };
            let size = match found.stat.st_mode & libc::S_IFMT {
                libc::S_IFREG => found.stat.st_size as u64,
                _ => 0,
            };
            let child = self.inode_of(dir, &name, &dirs, found);
            if child.is_dir() {
                subdirs.push(child);
            } else {
                self.copy_up(&child, true)?;
            }
            log.entry(size);
        }
        Ok((Arc::clone(dir), subdirs))
    }

    /// Marks a directory whose whole tree is in the upper opaque: from now
    /// on it no longer depends on where its lower parts live.
    fn seal_copied_dir(&self, dir: &Arc<Inode>) -> Result<()> {
        let Some(loc) = dir.location()? else {
            // The root: its lower parts cannot move.
            return Ok(());
        };
        let upper = self.upper()?;
        let fd = self.upper_dir(dir)?;
        let pfd = self.upper_dir(&loc.parent)?;
        let st = sys::fstat(fd.as_fd())?;
        let t = WTarget::At(pfd.w(), loc.name.as_cstr());
        upper.format.mark_opaque(t, fd.w())?;
        keep_times(fd.w(), &st);
        dir.relocate(Place::Dir {
            upper: true,
            layers: vec![0],
        });
        dir.changed();
        Ok(())
    }
}

/// Entries after which a tree copy-up logs how far it got, even within
/// [`TREE_LOG_EVERY`].
const TREE_LOG_ENTRIES: u64 = 10_000;

/// How often a tree copy-up logs how far it got.
const TREE_LOG_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// Entries from which a tree copy-up ends with a line of totals, however
/// fast it went.
const TREE_SUMMARY_ENTRIES: u64 = 1000;

/// The info lines of one tree copy-up: none for a small tree, a line
/// every [`TREE_LOG_ENTRIES`] entries or [`TREE_LOG_EVERY`] for a slow
/// one, and a last line with the totals after any of those or for a tree
/// of [`TREE_SUMMARY_ENTRIES`] or more.
struct TreeLog {
    dir: String,
    started: std::time::Instant,
    last: std::time::Instant,
    entries: u64,
    since_last: u64,
    bytes: u64,
    logged: bool,
}

impl TreeLog {
    fn new(dir: &Arc<Inode>) -> TreeLog {
        let now = std::time::Instant::now();
        TreeLog {
            dir: merged_path(dir),
            started: now,
            last: now,
            entries: 0,
            since_last: 0,
            bytes: 0,
            logged: false,
        }
    }

    fn entry(&mut self, bytes: u64) {
        self.entries += 1;
        self.since_last += 1;
        self.bytes += bytes;
        if self.since_last >= TREE_LOG_ENTRIES || self.last.elapsed() >= TREE_LOG_EVERY {
            info!(
                "copying up {}: {} entries, {}",
                self.dir,
                self.entries,
                crate::progress::human_bytes(self.bytes)
            );
            self.last = std::time::Instant::now();
            self.since_last = 0;
            self.logged = true;
        }
    }

    fn done(&self) {
        if self.logged || self.entries >= TREE_SUMMARY_ENTRIES {
            info!(
                "copied up {}: {} entries, {} in {:.1} s",
                self.dir,
                self.entries,
                crate::progress::human_bytes(self.bytes),
                self.started.elapsed().as_secs_f64()
            );
        }
    }
}

/// Where `inode` is in the merged tree (its first name), for a log line.
fn merged_path(inode: &Arc<Inode>) -> String {
    let mut names = Vec::new();
    let mut cur = Arc::clone(inode);
    while let Ok(Some(loc)) = cur.location() {
        names.push(String::from_utf8_lossy(loc.name.as_bytes()).into_owned());
        cur = loc.parent;
    }
    names.reverse();
    format!("/{}", names.join("/"))
}

/// Puts a parent directory's times back after a copy-up renamed a child
/// into it: a copy-up is no change the merged view may show, as in
/// overlayfs.
fn keep_times(dir: Writable<'_>, before: &libc::stat) {
    if let Err(e) = sys::futimens_path(dir, &sys::stat_times(before)) {
        debug!("copy-up: restoring parent times: {e}");
    }
}

/// Opens a lower file for reading without touching its atime.
pub(crate) fn open_for_copy(dir: BorrowedFd<'_>, name: &CStr) -> Result<OwnedFd> {
    Ok(
        match sys::open_child_flags(dir, name, libc::O_RDONLY | libc::O_NOATIME) {
            Err(e) if e.raw_os_error() == Some(libc::EPERM) => {
                sys::open_child_flags(dir, name, libc::O_RDONLY)?
            }
            other => other?,
        },
    )
}

fn read_xattr(t: XTarget<'_>, attr: &CStr, buf: &mut Vec<u8>) -> Result<()> {
    loop {
        let n = sys::getxattr(t, attr, &mut [])?;
        buf.resize(n, 0);
        match sys::getxattr(t, attr, buf) {
            Ok(n) => {
                buf.truncate(n);
                return Ok(());
            }
            Err(e) if e.raw_os_error() == Some(libc::ERANGE) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Copies `size` bytes of file data in the kernel: a reflink where the
/// filesystem shares blocks, else `copy_file_range` over the data segments
/// only, so holes stay holes. With `flush` (a copy that is to be synced)
/// the copy is written back while it is made, see [`Flusher`].
pub(crate) fn copy_file_data(
    src: BorrowedFd<'_>,
    dst: BorrowedFd<'_>,
    size: u64,
    flush: bool,
) -> Result<()> {
    if sys::ficlone(dst, src).is_ok() {
        return Ok(());
    }
    // A file of one chunk gains nothing: its fsync writes it just as soon.
    let mut flusher = Flusher::new(dst, flush && size > FLUSH_CHUNK);
    let mut off = 0;
    while off < size {
        let Some(data) = sys::seek_data(src, off, libc::SEEK_DATA)? else {
            break;
        };
        let hole = sys::seek_data(src, data, libc::SEEK_HOLE)?
            .unwrap_or(size)
            .min(size);
        copy_range(src, dst, data, hole - data, &mut flusher)?;
        off = hole;
    }
    // Sets the size past a trailing hole.
    sys::ftruncate(dst, size)?;
    Ok(())
}

/// Writes a copy back as it is made, so that its fsync finds little left
/// to do: each [`FLUSH_CHUNK`] copied is handed to writeback at once, and
/// the copy waits for the writeback of the chunk [`FLUSH_LAG`] chunks
/// back. The disk then writes while the kernel copies instead of after
/// it, and the dirty pages a big copy-up leaves stay bounded rather than
/// filling the dirty limit and being written back all at once by the fsync.
struct Flusher<'a> {
    fd: BorrowedFd<'a>,
    on: bool,
    started: std::collections::VecDeque<(u64, u64)>,
}

impl<'a> Flusher<'a> {
    fn new(fd: BorrowedFd<'a>, on: bool) -> Flusher<'a> {
        Flusher {
            fd,
            on,
            started: std::collections::VecDeque::new(),
        }
    }

    /// The largest piece to copy in one call.
    fn chunk(&self) -> u64 {
        if self.on {
            FLUSH_CHUNK
        } else {
            COPY_CHUNK as u64
        }
    }

    /// `len` bytes at `off` were just copied.
    fn copied(&mut self, off: u64, len: u64) {
        if !self.on || len == 0 {
            return;
        }
        let mut r = sys::sync_file_range(self.fd, off, len, false);
        self.started.push_back((off, len));
        if self.started.len() > FLUSH_LAG
            && let Some((o, l)) = self.started.pop_front()
        {
            r = r.and_then(|()| sys::sync_file_range(self.fd, o, l, true));
        }
        if let Err(e) = r {
            // Only a head start: the fsync that follows the copy writes
            // whatever is left and reports what failed.
            debug!("copy-up: early writeback: {e}");
            self.on = false;
        }
    }
}

fn copy_range(
    src: BorrowedFd<'_>,
    dst: BorrowedFd<'_>,
    mut off: u64,
    mut len: u64,
    flusher: &mut Flusher<'_>,
) -> Result<()> {
    while len > 0 {
        let chunk = len.min(flusher.chunk()) as usize;
        match sys::copy_file_range(src, dst, off, chunk) {
            Ok(0) => return Ok(()),
            Ok(n) => {
                flusher.copied(off, n as u64);
                off += n as u64;
                len -= n as u64;
            }
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EXDEV | libc::EINVAL | libc::ENOSYS | libc::EOPNOTSUPP)
                ) =>
            {
                return copy_range_rw(src, dst, off, len, flusher);
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// The fallback where the kernel cannot copy between the two filesystems.
fn copy_range_rw(
    src: BorrowedFd<'_>,
    dst: BorrowedFd<'_>,
    mut off: u64,
    mut len: u64,
    flusher: &mut Flusher<'_>,
) -> Result<()> {
    let mut buf = vec![0u8; 1 << 20];
    while len > 0 {
        let want = (len as usize).min(buf.len());
        let n = sys::pread(src, &mut buf[..want], off)?;
        if n == 0 {
            return Ok(());
        }
        let mut done = 0;
        while done < n {
            done += sys::pwrite(dst, &buf[done..n], off + done as u64)?;
        }
        flusher.copied(off, n as u64);
        off += n as u64;
        len -= n as u64;
    }
    Ok(())
}

/// Owner, mode, every xattr (the union's own included) and times of
/// `name` in `src` onto the same name in `dst`: an exact copy of an upper
/// object, for checkpoints.
pub(crate) fn copy_attributes(
    src: BorrowedFd<'_>,
    name: &CStr,
    st: &libc::stat,
    dst: Writable<'_>,
) -> Result<()> {
    let to = WTarget::At(dst, name);
    copy_owner_mode_xattrs(XTarget::At(src, name), to, st, false, |_| true)?;
    sys::set_times(to, &sys::stat_times(st))?;
    Ok(())
}

/// Owner (an error only when `strict`), mode (not on a symlink), then the
/// xattrs `keep` accepts: chown clears set-id bits and security.capability,
/// so they come after it. An xattr the target cannot hold (another LSM's
/// label, trusted.* without privilege) is left behind, as kernel overlayfs
/// does, rather than failing the copy.
fn copy_owner_mode_xattrs(
    from: XTarget<'_>,
    to: WTarget<'_>,
    st: &libc::stat,
    strict: bool,
    keep: impl Fn(&[u8]) -> bool,
) -> Result<()> {
    if let Err(e) = sys::chown(to, st.st_uid, st.st_gid)
        && strict
    {
        return Err(e.into());
    }
    if st.st_mode & libc::S_IFMT != libc::S_IFLNK {
        sys::chmod(to, st.st_mode & 0o7777)?;
    }
    let list = sys::listxattr_vec(from).unwrap_or_default();
    let mut value = Vec::new();
    for attr in list.split(|b| *b == 0).filter(|n| !n.is_empty() && keep(n)) {
        let Ok(cattr) = std::ffi::CString::new(attr) else {
            continue;
        };
        if let Err(e) = read_xattr(from, &cattr, &mut value) {
            debug!("copying xattr {cattr:?}: {e}");
            continue;
        }
        if let Err(e) = sys::setxattr(to, &cattr, &value, 0) {
            debug!("copying xattr {cattr:?}: {e}");
        }
    }
    Ok(())
}

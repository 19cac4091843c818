//! The writable layer's on-disk conventions: the staging directory where
//! new objects are built out of sight, whiteouts and opaque markers in the
//! format the upper uses, and unionfuse's private per-object xattrs.

use std::collections::HashMap;
use std::ffi::CStr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use log::{info, warn};

pub use super::whiteout::WhiteoutFormat;
use super::whiteout::{UpperFormat, may_write_trusted};
use crate::name::Name;
use crate::sys::{self, WTarget, Writable, XTarget};
use crate::walk::Step;

/// Saved copies of the upper (`unionfuse checkpoint`), in the work
/// directory.
const CHECKPOINTS: &CStr = c"unionfuse-checkpoints";

/// What [`Upper::open`] created or recorded.
#[derive(Debug, Default)]
struct Made {
    staging: bool,
    index: bool,
    format: bool,
}

/// The staging directory inside the work directory. Kernel overlayfs keeps
/// its own `work` and `index` there, so one work directory may serve both.
const STAGING: &CStr = c"unionfuse-staging";

/// The index of copied-up lower hard links, inside the work directory: one
/// extra link per copied-up file whose lower object had several names, named
/// by its inode number, so that the other names find the copy.
const INDEX: &CStr = c"unionfuse-index";

/// The writable layer's conventions, fixed at mount time.
#[derive(Debug)]
pub struct Upper {
    /// Where objects are built before being renamed into place; on the same
    /// filesystem as the upper, emptied at every mount.
    staging: Arc<OwnedFd>,
    pub index: Arc<OwnedFd>,
    work: OwnedFd,
    /// The daemon may write trusted.* xattrs (CAP_SYS_ADMIN in the
    /// filesystem's user namespace): real root, not root of a user
    /// namespace. Only then must owners be kept exactly on copy-up.
    pub privileged: bool,
    /// What opening changed on disk, for [`Upper::undo`].
    made: Made,
    /// How whiteouts and opaque markers are written.
    pub format: UpperFormat,
    /// The xattr keeping an object's inode number across copy-up.
    ino_xattr: &'static CStr,
    /// The xattr recording the upper's whiteout format, on its root.
    format_xattr: &'static CStr,
    /// The lower link count, on an index entry.
    nlink_xattr: &'static CStr,
    nlink_lock: parking_lot::Mutex<()>,
    next: AtomicU64,
    /// Inode numbers of copies that cannot carry [`Upper::ino_xattr`]
    /// (fifos, sockets and device nodes take no `user.*` xattrs), by the
    /// copy's identity: numbers stay stable for the life of the mount, and
    /// after a remount the copy shows its own, as kernel overlayfs without
    /// `xino` does.
    unrecorded: parking_lot::Mutex<HashMap<CopyId, u64>>,
}

/// What tells an upper object from one that later reuses its inode number:
/// the device and number, the type and the device it stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct CopyId {
    dev: u64,
    ino: u64,
    kind: u32,
    rdev: u64,
}

impl CopyId {
    fn of(st: &libc::stat) -> CopyId {
        CopyId {
            dev: st.st_dev,
            ino: st.st_ino,
            kind: st.st_mode & libc::S_IFMT,
            rdev: st.st_rdev,
        }
    }
}

impl Upper {
    /// Opens (creating, or emptying leftovers of a crash) the staging
    /// directory in `work` and settles the whiteout format: `wanted`, else
    /// the one the upper already uses, else what its filesystem accepts.
    pub fn open(
        upper: Writable<'_>,
        work: Writable<'_>,
        wanted: Option<WhiteoutFormat>,
    ) -> std::io::Result<Upper> {
        let mut made = Made::default();
        match sys::mkdirat(work, STAGING, 0o700) {
            Ok(()) => made.staging = true,
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
                // A crash mid-copy-up leaves half-built objects here; they
                // were never visible, so they go.
                let dir = sys::open_child_dir(work.fd(), STAGING)?;
                clear_dir(Writable::new(dir.as_fd()))?;
            }
            Err(e) => return Err(e),
        }
        let staging = Arc::new(sys::open_child_dir(work.fd(), STAGING)?);
        match sys::mkdirat(work, INDEX, 0o700) {
            Ok(()) => made.index = true,
            Err(e) if e.raw_os_error() != Some(libc::EEXIST) => return Err(e),
            Err(_) => {}
        }
        let index = Arc::new(sys::open_child_dir(work.fd(), INDEX)?);
        let trusted = may_write_trusted(Writable::new(staging.as_fd()));
        let (ino_xattr, format_xattr, nlink_xattr) = if trusted {
            (
                c"trusted.unionfuse.ino",
                c"trusted.unionfuse.whiteout",
                c"trusted.unionfuse.nlink",
            )
        } else {
            (
                c"user.unionfuse.ino",
                c"user.unionfuse.whiteout",
                c"user.unionfuse.nlink",
            )
        };
        let recorded = read_format(upper.fd(), format_xattr);
        let format = UpperFormat::settle(
            wanted.or(recorded),
            upper.fd(),
            Writable::new(staging.as_fd()),
            trusted,
        );
        if recorded != Some(format.kind()) {
            match sys::setxattr(
                WTarget::Fd(upper),
                format_xattr,
                format.kind().as_str().as_bytes(),
                0,
            ) {
                Ok(()) => made.format = true,
                Err(e) => warn!("cannot record the whiteout format on the upper: {e}"),
            }
        }
        info!("whiteout format {}", format.kind().as_str());
        Ok(Upper {
            privileged: trusted,
            work: sys::open_child_dir(work.fd(), c".")?,
            made,
            staging,
            index,
            format,
            ino_xattr,
            format_xattr,
            nlink_xattr,
            nlink_lock: parking_lot::Mutex::new(()),
            next: AtomicU64::new(0),
            unrecorded: parking_lot::Mutex::new(HashMap::new()),
        })
    }

    /// Takes back what [`Upper::open`] changed on disk, for a mount that
    /// failed: a refused mount leaves the directories as they were.
    pub fn undo(&self, upper: Writable<'_>) {
        if self.made.format {
            let _ = sys::removexattr(WTarget::Fd(upper), self.format_xattr);
        }
        if self.made.staging {
            let _ = remove_tree(self.work(), STAGING);
        }
        if self.made.index {
            let _ = sys::unlinkat(self.work(), INDEX, true);
        }
    }

    /// Leaves the upper final at the end of a mount: staging emptied (a
    /// request cut short by the unmount may have left a half-built object)
    /// and, with `sync`, the upper's filesystem written back.
    pub fn finish(&self, upper: Writable<'_>, sync: bool) {
        if let Err(e) = clear_dir(self.staging()) {
            warn!("cannot empty the staging directory: {e}");
        }
        if !sync {
            return;
        }
        let res = sys::open_child_flags(upper.fd(), c".", libc::O_RDONLY | libc::O_DIRECTORY)
            .and_then(|fd| sys::syncfs(fd.as_fd()));
        if let Err(e) = res {
            warn!("cannot write back the upper layer: {e}");
        }
    }

    /// The directory of checkpoints, made on first use.
    pub fn checkpoints(&self) -> std::io::Result<OwnedFd> {
        match sys::mkdirat(self.work(), CHECKPOINTS, 0o700) {
            Err(e) if e.raw_os_error() != Some(libc::EEXIST) => return Err(e),
            _ => {}
        }
        sys::open_child_dir(self.work.as_fd(), CHECKPOINTS)
    }

    /// The work directory.
    fn work(&self) -> Writable<'_> {
        Writable::new(self.work.as_fd())
    }

    /// The staging directory, where copies and new objects are built.
    pub fn staging(&self) -> Writable<'_> {
        Writable::new(self.staging.as_fd())
    }

    /// The index of copied-up hard links.
    pub fn index_dir(&self) -> Writable<'_> {
        Writable::new(self.index.as_fd())
    }

    /// A fresh name in the staging directory.
    pub fn temp_name(&self) -> Name {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let s = format!("{}.{n}", std::process::id());
        Name::from_bytes(s.as_bytes()).unwrap_or_else(|_| unreachable!("short name"))
    }

    /// The inode number recorded on an upper object at copy-up.
    pub fn recorded_ino(&self, dir: BorrowedFd<'_>, name: &CStr) -> Option<u64> {
        let mut buf = [0u8; 24];
        match sys::getxattr(XTarget::At(dir, name), self.ino_xattr, &mut buf) {
            Ok(n) => std::str::from_utf8(&buf[..n]).ok()?.parse().ok(),
            Err(_) => {
                let unrecorded = self.unrecorded.lock();
                if unrecorded.is_empty() {
                    return None;
                }
                let st = sys::fstatat(dir, name).ok()?;
                unrecorded.get(&CopyId::of(&st)).copied()
            }
        }
    }

    /// Records `ino` on a staged object; where the xattr cannot be set
    /// (`user.*` xattrs on a symlink or a special file), in memory only.
    pub fn record_ino(&self, t: WTarget<'_>, ino: u64) {
        let v = ino.to_string();
        if sys::setxattr(t, self.ino_xattr, v.as_bytes(), 0).is_ok() {
            return;
        }
        let st = match t {
            WTarget::Fd(w) => sys::fstat(w.fd()),
            WTarget::At(w, name) => sys::fstatat(w.fd(), name),
        };
        if let Ok(st) = st {
            self.unrecorded.lock().insert(CopyId::of(&st), ino);
        }
    }

    /// Forgets the numbers kept in memory, once the upper was replaced: its
    /// new objects may reuse the inode numbers of the old.
    pub fn forget_unrecorded(&self) {
        self.unrecorded.lock().clear();
    }

    /// The index entry's name for inode number `ino`.
    pub fn index_name(ino: u64) -> Name {
        Name::from_bytes(format!("{ino:x}").as_bytes())
            .unwrap_or_else(|_| unreachable!("short name"))
    }

    /// `stat` of the index entry for `ino`, if a copy was indexed.
    pub fn indexed(&self, ino: u64) -> Option<libc::stat> {
        sys::fstatat(self.index.as_fd(), Self::index_name(ino).as_cstr()).ok()
    }

    /// Records the lower object's link count on a staged copy about to be
    /// indexed.
    pub fn record_nlink(&self, t: WTarget<'_>, nlink: u64) {
        let v = nlink.to_string();
        let _ = sys::setxattr(t, self.nlink_xattr, v.as_bytes(), 0);
    }

    fn recorded_nlink(&self, name: &Name) -> Option<libc::nlink_t> {
        let mut buf = [0u8; 24];
        let t = XTarget::At(self.index.as_fd(), name.as_cstr());
        let n = sys::getxattr(t, self.nlink_xattr, &mut buf).ok()?;
        std::str::from_utf8(&buf[..n]).ok()?.parse().ok()
    }

    /// The inode number under which the upper object `name` in `dir` was
    /// indexed: a copy of a lower hard link carries both its number and
    /// the link count record.
    pub fn index_ino_of(&self, dir: BorrowedFd<'_>, name: &CStr) -> Option<u64> {
        let mut buf = [0u8; 24];
        sys::getxattr(XTarget::At(dir, name), self.nlink_xattr, &mut buf).ok()?;
        self.recorded_ino(dir, name)
    }

    /// `st_nlink` as the mount reports it for an indexed copy: the names
    /// the merged view has, counted since the copy (the lower's count,
    /// plus links made, minus names removed). Without a record: the upper
    /// names, the index's own link left out.
    pub fn indexed_nlink(&self, ino: u64, st: &libc::stat) -> libc::nlink_t {
        self.recorded_nlink(&Self::index_name(ino))
            .unwrap_or(st.st_nlink.saturating_sub(1))
            .max(1)
    }

    /// Counts a name of an indexed copy made (`+1`) or removed (`-1`).
    pub fn adjust_nlink(&self, ino: u64, delta: i64) {
        // Names of one inode may change in parallel from different
        // directories; hard-link changes are rare enough for one lock.
        let _g = self.nlink_lock.lock();
        let name = Self::index_name(ino);
        let Some(n) = self.recorded_nlink(&name) else {
            return;
        };
        let v = (n as i64 + delta).max(0).to_string();
        let t = WTarget::At(self.index_dir(), name.as_cstr());
        let _ = sys::setxattr(t, self.nlink_xattr, v.as_bytes(), 0);
    }

    /// Whether an xattr is one this module writes and so must never be
    /// copied from a lower object.
    pub fn is_own_xattr(&self, name: &[u8]) -> bool {
        name == self.ino_xattr.to_bytes()
            || name == self.format_xattr.to_bytes()
            || name == self.nlink_xattr.to_bytes()
    }
}

fn read_format(upper: BorrowedFd<'_>, attr: &CStr) -> Option<WhiteoutFormat> {
    let mut buf = [0u8; 16];
    let n = sys::getxattr(XTarget::Fd(upper), attr, &mut buf).ok()?;
    WhiteoutFormat::parse(&buf[..n])
}

/// Removes everything inside `dir`, never following a symlink.
pub fn clear_dir(dir: Writable<'_>) -> std::io::Result<()> {
    let root = Arc::new(sys::open_child_dir(dir.fd(), c".")?);
    let res = crate::walk::walk(
        root,
        (),
        false,
        // Everything below a writable directory is writable.
        |e| match sys::unlinkat(Writable::new(e.dir), e.name.as_cstr(), false) {
            Ok(()) => Ok(Step::Next),
            Err(err) if matches!(err.raw_os_error(), Some(libc::EISDIR | libc::EPERM)) => {
                Ok(Step::Descend(()))
            }
            Err(err) if err.raw_os_error() == Some(libc::ENOENT) => Ok(Step::Next),
            Err(err) => Err(err.into()),
        },
        |d, ()| {
            if let Some((parent, name)) = d.parent {
                sys::unlinkat(Writable::new(parent), name.as_cstr(), true)?;
            }
            Ok(())
        },
    );
    res.map_err(|e| std::io::Error::from_raw_os_error(e.errno))
}

/// Removes `name` in `dir`, with everything below it for a directory.
pub fn remove_tree(dir: Writable<'_>, name: &CStr) -> std::io::Result<()> {
    match sys::unlinkat(dir, name, false) {
        Ok(()) => return Ok(()),
        Err(e) if matches!(e.raw_os_error(), Some(libc::EISDIR) | Some(libc::EPERM)) => {}
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(()),
        Err(e) => return Err(e),
    }
    let sub = sys::open_child_dir(dir.fd(), name)?;
    clear_dir(Writable::new(sub.as_fd()))?;
    sys::unlinkat(dir, name, true)
}

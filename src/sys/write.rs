//! The syscalls that change layer objects, all relative to directory
//! descriptors. Only the upper layer and the work directory ever reach them.

use std::ffi::CStr;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};

use rustix::fs::{AtFlags, FileType, Mode, Timestamps};
use rustix::io::Errno;
use rustix::process::{Gid, Uid};

use super::{SysResult, fd_path, oflags, xattr};

/// A `mode_t` as rustix's permission bits; type bits, if any, pass through
/// unchanged to the kernel, as they would with libc.
fn mode(mode: u32) -> Mode {
    Mode::from_bits_retain(mode)
}

/// A descriptor of an object in a writable tree: the upper layer, its work
/// directory, or a tree the tooling writes (unpacked layers, commits,
/// checkpoints). Every call that changes an object or a directory takes
/// this, never a plain descriptor, so that a change aimed at a lower layer
/// does not compile: [`Writable::new`] is the one door, and its callers are
/// the places that know what they hold.
#[derive(Debug, Clone, Copy)]
pub struct Writable<'a>(BorrowedFd<'a>);

impl<'a> Writable<'a> {
    /// `fd`, known to refer to an object of a writable tree.
    pub fn new(fd: BorrowedFd<'a>) -> Writable<'a> {
        Writable(fd)
    }

    /// The descriptor, for the calls that only read.
    pub fn fd(self) -> BorrowedFd<'a> {
        self.0
    }
}

/// What a changing xattr, owner, mode or times call acts on: an object of a
/// writable tree, by descriptor or as a name in one of its directories.
#[derive(Debug, Clone, Copy)]
pub enum WTarget<'a> {
    Fd(Writable<'a>),
    At(Writable<'a>, &'a CStr),
}

impl<'a> WTarget<'a> {
    /// The same object, for the calls that only read.
    pub fn read(self) -> xattr::XTarget<'a> {
        match self {
            WTarget::Fd(w) => xattr::XTarget::Fd(w.0),
            WTarget::At(w, n) => xattr::XTarget::At(w.0, n),
        }
    }
}

/// `openat(dir, name, flags | O_CREAT | O_EXCL | O_NOFOLLOW, mode)`: a new
/// regular file, never an existing one.
pub fn create_file(dir: Writable<'_>, name: &CStr, flags: i32, mode: u32) -> SysResult<OwnedFd> {
    let dir = dir.0;
    use rustix::fs::OFlags;
    let flags = oflags(flags) | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    Ok(rustix::fs::openat(dir, name, flags, self::mode(mode))?)
}

pub fn mkdirat(dir: Writable<'_>, name: &CStr, mode: u32) -> SysResult<()> {
    let dir = dir.0;
    Ok(rustix::fs::mkdirat(dir, name, self::mode(mode))?)
}

/// `mknodat`; `mode` carries the file type (none means a regular file).
pub fn mknodat(dir: Writable<'_>, name: &CStr, mode: u32, rdev: u64) -> SysResult<()> {
    let dir = dir.0;
    // rustix ORs the type's bits with the mode; `Unknown` would be S_IFMT.
    let kind = match mode & libc::S_IFMT {
        0 => FileType::RegularFile,
        t => FileType::from_raw_mode(t),
    };
    let perm = self::mode(mode & !libc::S_IFMT);
    Ok(rustix::fs::mknodat(dir, name, kind, perm, rdev)?)
}

pub fn symlinkat(target: &CStr, dir: Writable<'_>, name: &CStr) -> SysResult<()> {
    let dir = dir.0;
    Ok(rustix::fs::symlinkat(target, dir, name)?)
}

/// A hard link; a symlink is linked itself, never followed.
pub fn linkat(
    odir: BorrowedFd<'_>,
    oname: &CStr,
    ndir: Writable<'_>,
    nname: &CStr,
) -> SysResult<()> {
    let ndir = ndir.0;
    Ok(rustix::fs::linkat(
        odir,
        oname,
        ndir,
        nname,
        AtFlags::empty(),
    )?)
}

/// `unlinkat`; `dir_flag` removes an empty directory.
pub fn unlinkat(dir: Writable<'_>, name: &CStr, is_dir: bool) -> SysResult<()> {
    let dir = dir.0;
    let flags = if is_dir {
        AtFlags::REMOVEDIR
    } else {
        AtFlags::empty()
    };
    Ok(rustix::fs::unlinkat(dir, name, flags)?)
}

/// `renameat2` with `RENAME_*` flags.
pub fn renameat2(
    odir: Writable<'_>,
    oname: &CStr,
    ndir: Writable<'_>,
    nname: &CStr,
    flags: u32,
) -> SysResult<()> {
    let (odir, ndir) = (odir.0, ndir.0);
    let flags = rustix::fs::RenameFlags::from_bits_retain(flags);
    Ok(rustix::fs::renameat_with(odir, oname, ndir, nname, flags)?)
}

/// `u32::MAX` (-1) as "leave unchanged", as chown(2) reads it.
fn ids_arg(uid: u32, gid: u32) -> (Option<Uid>, Option<Gid>) {
    (
        (uid != u32::MAX).then(|| Uid::from_raw(uid)),
        (gid != u32::MAX).then(|| Gid::from_raw(gid)),
    )
}

/// Changes the owner of `name` in `dir` (the link itself for a symlink).
/// `u32::MAX` leaves an id unchanged.
pub fn fchownat(dir: Writable<'_>, name: &CStr, uid: u32, gid: u32) -> SysResult<()> {
    let dir = dir.0;
    let (uid, gid) = ids_arg(uid, gid);
    Ok(rustix::fs::chownat(
        dir,
        name,
        uid,
        gid,
        AtFlags::SYMLINK_NOFOLLOW,
    )?)
}

/// Changes the mode of `name` in `dir`, which must not be a symlink (the
/// caller checks: `fchmodat` follows one).
pub fn fchmodat(dir: Writable<'_>, name: &CStr, mode: u32) -> SysResult<()> {
    let dir = dir.0;
    Ok(rustix::fs::chmodat(
        dir,
        name,
        self::mode(mode),
        AtFlags::empty(),
    )?)
}

/// libc's `[atime, mtime]` as rustix's; `UTIME_NOW` and `UTIME_OMIT` are
/// `tv_nsec` values and carry over as they are.
fn timestamps(times: &[libc::timespec; 2]) -> Timestamps {
    let ts = |t: &libc::timespec| rustix::fs::Timespec {
        tv_sec: t.tv_sec as _,
        tv_nsec: t.tv_nsec as _,
    };
    Timestamps {
        last_access: ts(&times[0]),
        last_modification: ts(&times[1]),
    }
}

/// Sets atime and mtime of `name` (not following a symlink); `UTIME_NOW`
/// and `UTIME_OMIT` work as in utimensat(2).
pub fn utimensat(dir: Writable<'_>, name: &CStr, times: &[libc::timespec; 2]) -> SysResult<()> {
    let dir = dir.0;
    Ok(rustix::fs::utimensat(
        dir,
        name,
        &timestamps(times),
        AtFlags::SYMLINK_NOFOLLOW,
    )?)
}

pub fn ftruncate(fd: BorrowedFd<'_>, size: u64) -> SysResult<()> {
    Ok(rustix::fs::ftruncate(fd, size)?)
}

pub fn pwrite(fd: BorrowedFd<'_>, buf: &[u8], offset: u64) -> SysResult<usize> {
    Ok(rustix::io::pwrite(fd, buf, offset)?)
}

pub fn fsync(fd: BorrowedFd<'_>, data_only: bool) -> SysResult<()> {
    if data_only {
        Ok(rustix::fs::fdatasync(fd)?)
    } else {
        Ok(rustix::fs::fsync(fd)?)
    }
}

/// Starts writeback of a byte range (`SYNC_FILE_RANGE_WRITE`), or, with
/// `wait`, also waits for the range's earlier writeback and for this one.
/// Only a hint of what to write early: it makes nothing durable, as it
/// writes neither metadata nor a cache flush.
pub fn sync_file_range(fd: BorrowedFd<'_>, offset: u64, len: u64, wait: bool) -> SysResult<()> {
    let flags = if wait {
        libc::SYNC_FILE_RANGE_WAIT_BEFORE
            | libc::SYNC_FILE_RANGE_WRITE
            | libc::SYNC_FILE_RANGE_WAIT_AFTER
    } else {
        libc::SYNC_FILE_RANGE_WRITE
    };
    // SAFETY: plain integers; the descriptor is borrowed for the call.
    let rc = unsafe { libc::sync_file_range(fd.as_raw_fd(), offset as i64, len as i64, flags) };
    super::cvt(rc)?;
    Ok(())
}

pub fn fallocate(fd: BorrowedFd<'_>, mode: i32, offset: u64, len: u64) -> SysResult<()> {
    let mode = rustix::fs::FallocateFlags::from_bits_retain(mode as u32);
    Ok(rustix::fs::fallocate(fd, mode, offset, len)?)
}

/// Shares all of `src`'s blocks with `dst` (a reflink); fails where the
/// filesystem cannot.
pub fn ficlone(dst: BorrowedFd<'_>, src: BorrowedFd<'_>) -> SysResult<()> {
    Ok(rustix::fs::ioctl_ficlone(dst, src)?)
}

/// In-kernel copy of up to `len` bytes at the same offset in both files.
pub fn copy_file_range(
    src: BorrowedFd<'_>,
    dst: BorrowedFd<'_>,
    off: u64,
    len: usize,
) -> SysResult<usize> {
    let (mut i, mut o) = (off, off);
    Ok(rustix::fs::copy_file_range(
        src,
        Some(&mut i),
        dst,
        Some(&mut o),
        len,
    )?)
}

/// `lseek` returning `None` for ENXIO (no data or hole past the offset).
pub fn seek_data(fd: BorrowedFd<'_>, offset: u64, whence: i32) -> SysResult<Option<u64>> {
    use rustix::fs::SeekFrom;
    let pos = match whence {
        libc::SEEK_DATA => SeekFrom::Data(offset),
        libc::SEEK_HOLE => SeekFrom::Hole(offset),
        libc::SEEK_SET => SeekFrom::Start(offset),
        _ => return Err(Errno::INVAL.into()),
    };
    match rustix::fs::seek(fd, pos) {
        Ok(pos) => Ok(Some(pos)),
        Err(Errno::NXIO) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Sets the process umask; the daemon wants 0 so that modes it passes are
/// the modes created.
pub fn set_umask(mask: u32) {
    rustix::process::umask(self::mode(mask));
}

pub fn setxattr(t: WTarget<'_>, attr: &CStr, value: &[u8], flags: i32) -> SysResult<()> {
    let t = t.read();
    xattr::setxattr(t, attr, value, flags)
}

pub fn removexattr(t: WTarget<'_>, attr: &CStr) -> SysResult<()> {
    let t = t.read();
    xattr::removexattr(t, attr)
}

/// `(euid, egid)` of the daemon.
pub fn ids() -> (u32, u32) {
    (super::euid(), super::egid())
}

/// Sets atime and mtime of the object `fd` refers to (an `O_PATH`
/// descriptor included).
pub fn futimens_path(fd: Writable<'_>, times: &[libc::timespec; 2]) -> SysResult<()> {
    let fd = fd.0;
    let ts = timestamps(times);
    if rustix::fs::utimensat(fd, c"", &ts, AtFlags::EMPTY_PATH).is_ok() {
        return Ok(());
    }
    let mut buf = [0u8; 32];
    let path = fd_path(&mut buf, fd.as_raw_fd());
    // Following the magic link lands on the object the descriptor holds.
    Ok(rustix::fs::utimensat(
        rustix::fs::CWD,
        path,
        &ts,
        AtFlags::empty(),
    )?)
}

/// atime and mtime of a `struct stat`, as utimensat wants them.
pub fn stat_times(st: &libc::stat) -> [libc::timespec; 2] {
    [
        libc::timespec {
            tv_sec: st.st_atime,
            tv_nsec: st.st_atime_nsec,
        },
        libc::timespec {
            tv_sec: st.st_mtime,
            tv_nsec: st.st_mtime_nsec,
        },
    ]
}

/// An unnamed regular file in directory `dir` (`O_TMPFILE`): it is born
/// next to where it will be linked, and vanishes if the process dies first.
pub fn open_tmpfile(dir: Writable<'_>, flags: i32, mode: u32) -> SysResult<OwnedFd> {
    let dir = dir.0;
    use rustix::fs::OFlags;
    let flags = oflags(flags) | OFlags::TMPFILE | OFlags::CLOEXEC;
    Ok(rustix::fs::openat(dir, c".", flags, self::mode(mode))?)
}

/// Gives the unnamed file `fd` the name `name` in `dir`; fails with EEXIST
/// when the name is taken.
pub fn link_tmpfile(fd: BorrowedFd<'_>, dir: Writable<'_>, name: &CStr) -> SysResult<()> {
    let dir = dir.0;
    match rustix::fs::linkat(fd, c"", dir, name, AtFlags::EMPTY_PATH) {
        Ok(()) => return Ok(()),
        Err(Errno::NOENT | Errno::PERM) => {}
        Err(e) => return Err(e.into()),
    }
    // Without CAP_DAC_READ_SEARCH, AT_EMPTY_PATH is refused; the
    // /proc/self/fd link of an O_TMPFILE file may be linked instead.
    let mut buf = [0u8; 32];
    let path = fd_path(&mut buf, fd.as_raw_fd());
    Ok(rustix::fs::linkat(
        rustix::fs::CWD,
        path,
        dir,
        name,
        AtFlags::SYMLINK_FOLLOW,
    )?)
}

/// Changes the owner of a target (the link itself for a symlink).
pub fn chown(t: WTarget<'_>, uid: u32, gid: u32) -> SysResult<()> {
    match t {
        WTarget::At(dir, name) => fchownat(dir, name, uid, gid),
        WTarget::Fd(fd) => {
            let (uid, gid) = ids_arg(uid, gid);
            Ok(rustix::fs::fchown(fd.0, uid, gid)?)
        }
    }
}

/// Changes the mode of a target that is not a symlink.
pub fn chmod(t: WTarget<'_>, mode: u32) -> SysResult<()> {
    match t {
        WTarget::At(dir, name) => fchmodat(dir, name, mode),
        WTarget::Fd(fd) => Ok(rustix::fs::fchmod(fd.0, self::mode(mode))?),
    }
}

/// Sets atime and mtime of a target, not following a symlink.
pub fn set_times(t: WTarget<'_>, times: &[libc::timespec; 2]) -> SysResult<()> {
    match t {
        WTarget::At(dir, name) => utimensat(dir, name, times),
        WTarget::Fd(fd) => Ok(rustix::fs::futimens(fd.0, &timestamps(times))?),
    }
}

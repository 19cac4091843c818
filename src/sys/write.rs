//! The syscalls that change layer objects, all relative to directory
//! descriptors. Only the upper layer and the work directory ever reach them.

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use super::{SysResult, cvt, cvt_long, cvt_size, xattr};

/// `openat(dir, name, flags | O_CREAT | O_EXCL | O_NOFOLLOW, mode)`: a new
/// regular file, never an existing one.
pub fn create_file(dir: BorrowedFd<'_>, name: &CStr, flags: i32, mode: u32) -> SysResult<OwnedFd> {
    let flags = flags | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_CLOEXEC;
    // SAFETY: name is NUL-terminated; the returned fd is owned.
    let fd = cvt(unsafe { libc::openat(dir.as_raw_fd(), name.as_ptr(), flags, mode) })?;
    // SAFETY: fd was just returned by the kernel.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

pub fn mkdirat(dir: BorrowedFd<'_>, name: &CStr, mode: u32) -> SysResult<()> {
    // SAFETY: name is NUL-terminated.
    cvt(unsafe { libc::mkdirat(dir.as_raw_fd(), name.as_ptr(), mode) })?;
    Ok(())
}

pub fn mknodat(dir: BorrowedFd<'_>, name: &CStr, mode: u32, rdev: u64) -> SysResult<()> {
    // SAFETY: name is NUL-terminated.
    cvt(unsafe { libc::mknodat(dir.as_raw_fd(), name.as_ptr(), mode, rdev) })?;
    Ok(())
}

pub fn symlinkat(target: &CStr, dir: BorrowedFd<'_>, name: &CStr) -> SysResult<()> {
    // SAFETY: both strings are NUL-terminated.
    cvt(unsafe { libc::symlinkat(target.as_ptr(), dir.as_raw_fd(), name.as_ptr()) })?;
    Ok(())
}

/// A hard link; a symlink is linked itself, never followed.
pub fn linkat(
    odir: BorrowedFd<'_>,
    oname: &CStr,
    ndir: BorrowedFd<'_>,
    nname: &CStr,
) -> SysResult<()> {
    // SAFETY: both names are NUL-terminated.
    cvt(unsafe {
        libc::linkat(
            odir.as_raw_fd(),
            oname.as_ptr(),
            ndir.as_raw_fd(),
            nname.as_ptr(),
            0,
        )
    })?;
    Ok(())
}

/// `unlinkat`; `dir_flag` removes an empty directory.
pub fn unlinkat(dir: BorrowedFd<'_>, name: &CStr, is_dir: bool) -> SysResult<()> {
    let flags = if is_dir { libc::AT_REMOVEDIR } else { 0 };
    // SAFETY: name is NUL-terminated.
    cvt(unsafe { libc::unlinkat(dir.as_raw_fd(), name.as_ptr(), flags) })?;
    Ok(())
}

/// `renameat2` with `RENAME_*` flags.
pub fn renameat2(
    odir: BorrowedFd<'_>,
    oname: &CStr,
    ndir: BorrowedFd<'_>,
    nname: &CStr,
    flags: u32,
) -> SysResult<()> {
    // SAFETY: both names are NUL-terminated.
    cvt(unsafe {
        libc::renameat2(
            odir.as_raw_fd(),
            oname.as_ptr(),
            ndir.as_raw_fd(),
            nname.as_ptr(),
            flags,
        )
    })?;
    Ok(())
}

/// Changes the owner of `name` in `dir` (the link itself for a symlink).
/// `u32::MAX` leaves an id unchanged.
pub fn fchownat(dir: BorrowedFd<'_>, name: &CStr, uid: u32, gid: u32) -> SysResult<()> {
    // SAFETY: name is NUL-terminated.
    cvt(unsafe {
        libc::fchownat(
            dir.as_raw_fd(),
            name.as_ptr(),
            uid,
            gid,
            libc::AT_SYMLINK_NOFOLLOW,
        )
    })?;
    Ok(())
}

/// Changes the mode of `name` in `dir`, which must not be a symlink (the
/// caller checks: `fchmodat` follows one).
pub fn fchmodat(dir: BorrowedFd<'_>, name: &CStr, mode: u32) -> SysResult<()> {
    // SAFETY: name is NUL-terminated.
    cvt(unsafe { libc::fchmodat(dir.as_raw_fd(), name.as_ptr(), mode, 0) })?;
    Ok(())
}

/// Sets atime and mtime of `name` (not following a symlink); `UTIME_NOW`
/// and `UTIME_OMIT` work as in utimensat(2).
pub fn utimensat(dir: BorrowedFd<'_>, name: &CStr, times: &[libc::timespec; 2]) -> SysResult<()> {
    // SAFETY: name is NUL-terminated; times points to two timespecs.
    cvt(unsafe {
        libc::utimensat(
            dir.as_raw_fd(),
            name.as_ptr(),
            times.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    })?;
    Ok(())
}

pub fn ftruncate(fd: BorrowedFd<'_>, size: u64) -> SysResult<()> {
    // SAFETY: no pointers.
    cvt(unsafe { libc::ftruncate(fd.as_raw_fd(), size as libc::off_t) })?;
    Ok(())
}

pub fn pwrite(fd: BorrowedFd<'_>, buf: &[u8], offset: u64) -> SysResult<usize> {
    // SAFETY: buf is readable for its length.
    cvt_size(unsafe {
        libc::pwrite(
            fd.as_raw_fd(),
            buf.as_ptr().cast(),
            buf.len(),
            offset as libc::off_t,
        )
    })
}

pub fn fsync(fd: BorrowedFd<'_>, data_only: bool) -> SysResult<()> {
    // SAFETY: no pointers.
    cvt(unsafe {
        if data_only {
            libc::fdatasync(fd.as_raw_fd())
        } else {
            libc::fsync(fd.as_raw_fd())
        }
    })?;
    Ok(())
}

pub fn fallocate(fd: BorrowedFd<'_>, mode: i32, offset: u64, len: u64) -> SysResult<()> {
    // SAFETY: no pointers.
    cvt(unsafe {
        libc::fallocate(
            fd.as_raw_fd(),
            mode,
            offset as libc::off_t,
            len as libc::off_t,
        )
    })?;
    Ok(())
}

/// Shares all of `src`'s blocks with `dst` (a reflink); fails where the
/// filesystem cannot.
pub fn ficlone(dst: BorrowedFd<'_>, src: BorrowedFd<'_>) -> SysResult<()> {
    // SAFETY: FICLONE takes the source descriptor as its argument.
    cvt(unsafe { libc::ioctl(dst.as_raw_fd(), libc::FICLONE, src.as_raw_fd()) })?;
    Ok(())
}

/// In-kernel copy of up to `len` bytes at the same offset in both files.
pub fn copy_file_range(
    src: BorrowedFd<'_>,
    dst: BorrowedFd<'_>,
    off: u64,
    len: usize,
) -> SysResult<usize> {
    let mut i = off as libc::loff_t;
    let mut o = off as libc::loff_t;
    // SAFETY: the offsets point to valid loff_t values.
    cvt_long(unsafe {
        libc::syscall(
            libc::SYS_copy_file_range,
            src.as_raw_fd(),
            &mut i as *mut libc::loff_t,
            dst.as_raw_fd(),
            &mut o as *mut libc::loff_t,
            len,
            0u32,
        )
    })
    .map(|n| n as usize)
}

/// `lseek` returning `None` for ENXIO (no data or hole past the offset).
pub fn seek_data(fd: BorrowedFd<'_>, offset: u64, whence: i32) -> SysResult<Option<u64>> {
    // SAFETY: no pointers.
    let rc = unsafe { libc::lseek(fd.as_raw_fd(), offset as libc::off_t, whence) };
    if rc < 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::ENXIO) {
            return Ok(None);
        }
        return Err(e);
    }
    Ok(Some(rc as u64))
}

/// Sets the process umask; the daemon wants 0 so that modes it passes are
/// the modes created.
pub fn set_umask(mask: u32) {
    // SAFETY: no pointers.
    unsafe { libc::umask(mask) };
}

pub fn setxattr(t: xattr::XTarget<'_>, attr: &CStr, value: &[u8], flags: i32) -> SysResult<()> {
    xattr::setxattr(t, attr, value, flags)
}

pub fn removexattr(t: xattr::XTarget<'_>, attr: &CStr) -> SysResult<()> {
    xattr::removexattr(t, attr)
}

/// `(euid, egid)` of the daemon.
pub fn ids() -> (u32, u32) {
    // SAFETY: no preconditions.
    unsafe { (libc::geteuid(), libc::getegid()) }
}

/// Sets atime and mtime of the object `fd` refers to (an `O_PATH`
/// descriptor included).
pub fn futimens_path(fd: BorrowedFd<'_>, times: &[libc::timespec; 2]) -> SysResult<()> {
    // SAFETY: the empty path is NUL-terminated; times points to two timespecs.
    let rc = unsafe {
        libc::utimensat(
            fd.as_raw_fd(),
            c"".as_ptr(),
            times.as_ptr(),
            libc::AT_EMPTY_PATH,
        )
    };
    if rc == 0 {
        return Ok(());
    }
    let path = std::ffi::CString::new(format!("/proc/self/fd/{}", fd.as_raw_fd()))
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: path is NUL-terminated; following the magic link lands on the
    // object the descriptor holds.
    cvt(unsafe { libc::utimensat(libc::AT_FDCWD, path.as_ptr(), times.as_ptr(), 0) })?;
    Ok(())
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
pub fn open_tmpfile(dir: BorrowedFd<'_>, flags: i32, mode: u32) -> SysResult<OwnedFd> {
    let flags = flags | libc::O_TMPFILE | libc::O_CLOEXEC;
    // SAFETY: the path is NUL-terminated; the returned fd is owned.
    let fd = cvt(unsafe { libc::openat(dir.as_raw_fd(), c".".as_ptr(), flags, mode) })?;
    // SAFETY: fd was just returned by the kernel.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Gives the unnamed file `fd` the name `name` in `dir`; fails with EEXIST
/// when the name is taken.
pub fn link_tmpfile(fd: BorrowedFd<'_>, dir: BorrowedFd<'_>, name: &CStr) -> SysResult<()> {
    // SAFETY: the empty path and name are NUL-terminated.
    let rc = unsafe {
        libc::linkat(
            fd.as_raw_fd(),
            c"".as_ptr(),
            dir.as_raw_fd(),
            name.as_ptr(),
            libc::AT_EMPTY_PATH,
        )
    };
    if rc == 0 {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    if !matches!(e.raw_os_error(), Some(libc::ENOENT | libc::EPERM)) {
        return Err(e);
    }
    // Without CAP_DAC_READ_SEARCH, AT_EMPTY_PATH is refused; the
    // /proc/self/fd link of an O_TMPFILE file may be linked instead.
    let path = std::ffi::CString::new(format!("/proc/self/fd/{}", fd.as_raw_fd()))
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: both paths are NUL-terminated.
    cvt(unsafe {
        libc::linkat(
            libc::AT_FDCWD,
            path.as_ptr(),
            dir.as_raw_fd(),
            name.as_ptr(),
            libc::AT_SYMLINK_FOLLOW,
        )
    })?;
    Ok(())
}

/// Changes the owner of a target (the link itself for a symlink).
pub fn chown(t: xattr::XTarget<'_>, uid: u32, gid: u32) -> SysResult<()> {
    match t {
        xattr::XTarget::At(dir, name) => fchownat(dir, name, uid, gid),
        xattr::XTarget::Fd(fd) => {
            // SAFETY: no pointers.
            cvt(unsafe { libc::fchown(fd.as_raw_fd(), uid, gid) })?;
            Ok(())
        }
    }
}

/// Changes the mode of a target that is not a symlink.
pub fn chmod(t: xattr::XTarget<'_>, mode: u32) -> SysResult<()> {
    match t {
        xattr::XTarget::At(dir, name) => fchmodat(dir, name, mode),
        xattr::XTarget::Fd(fd) => {
            // SAFETY: no pointers.
            cvt(unsafe { libc::fchmod(fd.as_raw_fd(), mode) })?;
            Ok(())
        }
    }
}

/// Sets atime and mtime of a target, not following a symlink.
pub fn set_times(t: xattr::XTarget<'_>, times: &[libc::timespec; 2]) -> SysResult<()> {
    match t {
        xattr::XTarget::At(dir, name) => utimensat(dir, name, times),
        xattr::XTarget::Fd(fd) => {
            // SAFETY: times points to two timespecs.
            cvt(unsafe { libc::futimens(fd.as_raw_fd(), times.as_ptr()) })?;
            Ok(())
        }
    }
}

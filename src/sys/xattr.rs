//! Extended attributes of layer objects reached through descriptors.
//!
//! `fgetxattr` refuses `O_PATH` descriptors. A target is either a descriptor
//! itself or a name relative to a directory descriptor. Both try
//! `getxattrat(2)`/`listxattrat(2)` (Linux 6.13) and fall back to a
//! `/proc/self/fd/N[/NAME]` path: following the `N` magic link lands on the
//! very object the descriptor holds, and the `l*` calls never follow `NAME`.
//!
//! rustix has no *xattrat wrappers yet, so those four stay raw syscalls; the
//! fallbacks go through rustix.

use std::ffi::CStr;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::sync::atomic::{AtomicBool, Ordering};

use rustix::fs::XattrFlags;
use rustix::io::Errno;

use super::{SysResult, cvt_long};

// Numbers shared by every architecture's syscall table (added together in 6.13).
const SYS_GETXATTRAT: libc::c_long = 464;
const SYS_LISTXATTRAT: libc::c_long = 465;

/// Set once the kernel lacks the *xattrat calls.
static NO_XATTRAT: AtomicBool = AtomicBool::new(false);
/// Set once the kernel refuses `AT_EMPTY_PATH` on an `O_PATH` descriptor.
static NO_EMPTY_PATH: AtomicBool = AtomicBool::new(false);

/// What an xattr call acts on.
#[derive(Debug, Clone, Copy)]
pub enum XTarget<'a> {
    /// The object a descriptor refers to.
    Fd(BorrowedFd<'a>),
    /// `name` inside the directory descriptor, not following a symlink.
    At(BorrowedFd<'a>, &'a CStr),
}

#[repr(C)]
struct XattrArgs {
    value: u64,
    size: u32,
    flags: u32,
}

/// Longest fallback path: "/proc/self/fd/" + 10 digits + "/" + NAME_MAX + NUL.
const PROC_PATH_MAX: usize = 14 + 10 + 1 + 255 + 1;

/// The fallback path of a target, NUL-terminated (the buffer's last byte is
/// never written), in `out`.
fn proc_path<'b>(t: XTarget<'_>, out: &'b mut [u8; PROC_PATH_MAX]) -> SysResult<&'b CStr> {
    let mut pos = 0;
    let mut put = |b: &[u8]| {
        let n = b.len().min(PROC_PATH_MAX - 1 - pos);
        out[pos..pos + n].copy_from_slice(&b[..n]);
        pos += n;
    };
    let (fd, name) = match t {
        XTarget::Fd(fd) => (fd, None),
        XTarget::At(fd, n) => (fd, Some(n)),
    };
    put(b"/proc/self/fd/");
    let mut digits = [0u8; 10];
    let mut v = fd.as_raw_fd().max(0) as u32;
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    put(&digits[i..]);
    if let Some(n) = name {
        put(b"/");
        put(n.to_bytes());
    }
    CStr::from_bytes_until_nul(&out[..]).map_err(|_| Errno::NAMETOOLONG.into())
}

/// The (dirfd, path, flags) for an *xattrat call, or `None` when the kernel
/// is known not to serve this target that way.
fn at_args(t: XTarget<'_>) -> Option<(i32, *const libc::c_char, i32)> {
    if NO_XATTRAT.load(Ordering::Relaxed) {
        return None;
    }
    match t {
        XTarget::Fd(fd) if !NO_EMPTY_PATH.load(Ordering::Relaxed) => {
            Some((fd.as_raw_fd(), c"".as_ptr(), libc::AT_EMPTY_PATH))
        }
        XTarget::Fd(_) => None,
        XTarget::At(fd, name) => Some((fd.as_raw_fd(), name.as_ptr(), libc::AT_SYMLINK_NOFOLLOW)),
    }
}

/// Records why an *xattrat call failed; `true` when the fallback should run.
fn at_failed(t: XTarget<'_>, e: &std::io::Error) -> bool {
    match e.raw_os_error() {
        Some(libc::ENOSYS) => {
            NO_XATTRAT.store(true, Ordering::Relaxed);
            true
        }
        Some(libc::EBADF) if matches!(t, XTarget::Fd(_)) => {
            NO_EMPTY_PATH.store(true, Ordering::Relaxed);
            true
        }
        _ => false,
    }
}

/// Reads xattr `attr` into `buf`; with an empty `buf`, returns its size.
pub fn getxattr(t: XTarget<'_>, attr: &CStr, buf: &mut [u8]) -> SysResult<usize> {
    if let Some((dirfd, path, flags)) = at_args(t) {
        let mut args = XattrArgs {
            value: buf.as_mut_ptr() as u64,
            size: buf.len() as u32,
            flags: 0,
        };
        // SAFETY: path and attr are NUL-terminated; args is a valid struct
        // whose value buffer is writable for `size` bytes.
        let rc = unsafe {
            libc::syscall(
                SYS_GETXATTRAT,
                dirfd,
                path,
                flags,
                attr.as_ptr(),
                &mut args as *mut XattrArgs,
                std::mem::size_of::<XattrArgs>(),
            )
        };
        match cvt_long(rc) {
            Ok(n) => return Ok(n as usize),
            Err(e) if at_failed(t, &e) => {}
            Err(e) => return Err(e),
        }
    }
    let mut path = [0u8; PROC_PATH_MAX];
    let p = proc_path(t, &mut path)?;
    // rustix answers 0 for an empty buffer; the size query is its own call.
    Ok(match (t, buf.is_empty()) {
        (XTarget::Fd(_), true) => rustix::fs::getxattr_query(p, attr)?,
        (XTarget::Fd(_), false) => rustix::fs::getxattr(p, attr, buf)?,
        (XTarget::At(..), true) => rustix::fs::lgetxattr_query(p, attr)?,
        (XTarget::At(..), false) => rustix::fs::lgetxattr(p, attr, buf)?,
    })
}

/// Lists xattr names (NUL-separated) into `buf`; with an empty `buf`,
/// returns the list's size.
pub fn listxattr(t: XTarget<'_>, buf: &mut [u8]) -> SysResult<usize> {
    if let Some((dirfd, path, flags)) = at_args(t) {
        // SAFETY: path is NUL-terminated; buf is writable for its length.
        let rc = unsafe {
            libc::syscall(
                SYS_LISTXATTRAT,
                dirfd,
                path,
                flags,
                buf.as_mut_ptr(),
                buf.len(),
            )
        };
        match cvt_long(rc) {
            Ok(n) => return Ok(n as usize),
            Err(e) if at_failed(t, &e) => {}
            Err(e) => return Err(e),
        }
    }
    let mut path = [0u8; PROC_PATH_MAX];
    let p = proc_path(t, &mut path)?;
    // As in getxattr: the size query is its own call.
    Ok(match (t, buf.is_empty()) {
        (XTarget::Fd(_), true) => rustix::fs::listxattr_query(p)?,
        (XTarget::Fd(_), false) => rustix::fs::listxattr(p, buf)?,
        (XTarget::At(..), true) => rustix::fs::llistxattr_query(p)?,
        (XTarget::At(..), false) => rustix::fs::llistxattr(p, buf)?,
    })
}

/// Lists all xattr names, growing the buffer as needed.
pub fn listxattr_vec(t: XTarget<'_>) -> SysResult<Vec<u8>> {
    let mut buf = vec![0u8; 1024];
    loop {
        match listxattr(t, &mut buf) {
            Ok(n) => {
                buf.truncate(n);
                return Ok(buf);
            }
            Err(e) if e.raw_os_error() == Some(libc::ERANGE) => {
                let n = listxattr(t, &mut [])?;
                buf.resize(n.max(buf.len() * 2), 0);
            }
            Err(e) => return Err(e),
        }
    }
}

// Numbers shared by every architecture's syscall table (added in 6.13).
const SYS_SETXATTRAT: libc::c_long = 463;
const SYS_REMOVEXATTRAT: libc::c_long = 466;

/// Sets xattr `attr`; `flags` are `XATTR_CREATE`/`XATTR_REPLACE`.
pub fn setxattr(t: XTarget<'_>, attr: &CStr, value: &[u8], flags: i32) -> SysResult<()> {
    if let Some((dirfd, path, at_flags)) = at_args(t) {
        let mut args = XattrArgs {
            value: value.as_ptr() as u64,
            size: value.len() as u32,
            flags: flags as u32,
        };
        // SAFETY: path and attr are NUL-terminated; args describes a
        // readable value buffer.
        let rc = unsafe {
            libc::syscall(
                SYS_SETXATTRAT,
                dirfd,
                path,
                at_flags,
                attr.as_ptr(),
                &mut args as *mut XattrArgs,
                std::mem::size_of::<XattrArgs>(),
            )
        };
        match cvt_long(rc) {
            Ok(_) => return Ok(()),
            Err(e) if at_failed(t, &e) => {}
            Err(e) => return Err(e),
        }
    }
    let mut path = [0u8; PROC_PATH_MAX];
    let p = proc_path(t, &mut path)?;
    let flags = XattrFlags::from_bits_retain(flags as u32);
    let res = match t {
        XTarget::Fd(_) => rustix::fs::setxattr(p, attr, value, flags),
        XTarget::At(..) => rustix::fs::lsetxattr(p, attr, value, flags),
    };
    Ok(res?)
}

/// Removes xattr `attr`.
pub fn removexattr(t: XTarget<'_>, attr: &CStr) -> SysResult<()> {
    if let Some((dirfd, path, at_flags)) = at_args(t) {
        // SAFETY: path and attr are NUL-terminated.
        let rc = unsafe { libc::syscall(SYS_REMOVEXATTRAT, dirfd, path, at_flags, attr.as_ptr()) };
        match cvt_long(rc) {
            Ok(_) => return Ok(()),
            Err(e) if at_failed(t, &e) => {}
            Err(e) => return Err(e),
        }
    }
    let mut path = [0u8; PROC_PATH_MAX];
    let p = proc_path(t, &mut path)?;
    let res = match t {
        XTarget::Fd(_) => rustix::fs::removexattr(p, attr),
        XTarget::At(..) => rustix::fs::lremovexattr(p, attr),
    };
    Ok(res?)
}

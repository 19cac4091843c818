//! Extended attributes of an `O_PATH` descriptor.
//!
//! `fgetxattr` refuses `O_PATH` descriptors. These try `getxattrat(2)`
//! (Linux 6.13) with `AT_EMPTY_PATH`, and fall back for good to the
//! descriptor's `/proc/self/fd/N` magic link when the kernel lacks it or
//! refuses `O_PATH` there too (EBADF). Following that link lands on
//! the very object the descriptor holds, symlinks included, never on a target.

use std::ffi::CStr;

use std::os::fd::{AsRawFd, BorrowedFd};
use std::sync::atomic::{AtomicBool, Ordering};

use super::{SysResult, cvt_long, cvt_size};

// Numbers shared by every architecture's syscall table (added together in 6.13).
const SYS_GETXATTRAT: libc::c_long = 464;
const SYS_LISTXATTRAT: libc::c_long = 465;

/// Set once a kernel answered ENOSYS, so later calls skip straight to /proc.
static NO_XATTRAT: AtomicBool = AtomicBool::new(false);

#[repr(C)]
struct XattrArgs {
    value: u64,
    size: u32,
    flags: u32,
}

fn proc_path(fd: BorrowedFd<'_>) -> [u8; 32] {
    let mut out = [0u8; 32];
    let prefix = b"/proc/self/fd/";
    out[..prefix.len()].copy_from_slice(prefix);
    let digits = fd.as_raw_fd().max(0).to_string();
    out[prefix.len()..prefix.len() + digits.len()].copy_from_slice(digits.as_bytes());
    out
}

/// Reads xattr `name` of the object `fd` refers to into `buf`; with an empty
/// `buf`, returns the value's size.
pub fn fgetxattr(fd: BorrowedFd<'_>, name: &CStr, buf: &mut [u8]) -> SysResult<usize> {
    if !NO_XATTRAT.load(Ordering::Relaxed) {
        let mut args = XattrArgs {
            value: buf.as_mut_ptr() as u64,
            size: buf.len() as u32,
            flags: 0,
        };
        // SAFETY: "" and name are NUL-terminated; args points to a valid
        // struct whose value buffer is writable for `size` bytes.
        let rc = unsafe {
            libc::syscall(
                SYS_GETXATTRAT,
                fd.as_raw_fd(),
                c"".as_ptr(),
                libc::AT_EMPTY_PATH,
                name.as_ptr(),
                &mut args as *mut XattrArgs,
                std::mem::size_of::<XattrArgs>(),
            )
        };
        match cvt_long(rc) {
            Ok(n) => return Ok(n as usize),
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOSYS | libc::EBADF)) => {
                NO_XATTRAT.store(true, Ordering::Relaxed);
            }
            Err(e) => return Err(e),
        }
    }
    let path = proc_path(fd);
    // SAFETY: path is NUL-terminated (zero-filled tail); buf is writable.
    cvt_size(unsafe {
        libc::getxattr(
            path.as_ptr().cast(),
            name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    })
}

/// Lists the xattr names of the object `fd` refers to into `buf` (NUL
/// separated); with an empty `buf`, returns the list's size.
pub fn flistxattr(fd: BorrowedFd<'_>, buf: &mut [u8]) -> SysResult<usize> {
    if !NO_XATTRAT.load(Ordering::Relaxed) {
        // SAFETY: "" is NUL-terminated; buf is writable for its length.
        let rc = unsafe {
            libc::syscall(
                SYS_LISTXATTRAT,
                fd.as_raw_fd(),
                c"".as_ptr(),
                libc::AT_EMPTY_PATH,
                buf.as_mut_ptr(),
                buf.len(),
            )
        };
        match cvt_long(rc) {
            Ok(n) => return Ok(n as usize),
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOSYS | libc::EBADF)) => {
                NO_XATTRAT.store(true, Ordering::Relaxed);
            }
            Err(e) => return Err(e),
        }
    }
    let path = proc_path(fd);
    // SAFETY: path is NUL-terminated; buf is writable.
    cvt_size(unsafe { libc::listxattr(path.as_ptr().cast(), buf.as_mut_ptr().cast(), buf.len()) })
}

/// Reads a whole xattr value, growing the buffer as needed.
pub fn fgetxattr_vec(fd: BorrowedFd<'_>, name: &CStr) -> SysResult<Vec<u8>> {
    let mut buf = vec![0u8; 256];
    loop {
        match fgetxattr(fd, name, &mut buf) {
            Ok(n) => {
                buf.truncate(n);
                return Ok(buf);
            }
            Err(e) if e.raw_os_error() == Some(libc::ERANGE) => {
                let n = fgetxattr(fd, name, &mut [])?;
                buf.resize(n.max(buf.len() * 2), 0);
            }
            Err(e) => return Err(e),
        }
    }
}

/// Lists all xattr names, growing the buffer as needed.
pub fn flistxattr_vec(fd: BorrowedFd<'_>) -> SysResult<Vec<u8>> {
    let mut buf = vec![0u8; 1024];
    loop {
        match flistxattr(fd, &mut buf) {
            Ok(n) => {
                buf.truncate(n);
                return Ok(buf);
            }
            Err(e) if e.raw_os_error() == Some(libc::ERANGE) => {
                let n = flistxattr(fd, &mut [])?;
                buf.resize(n.max(buf.len() * 2), 0);
            }
            Err(e) => return Err(e),
        }
    }
}

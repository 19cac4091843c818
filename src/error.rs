//! The error every union operation returns: an errno, and the one place where
//! failures become errnos.

use std::io;

/// A failed operation, as the errno the kernel will hand to the caller.
/// `Copy` and allocation-free so that the request path can pass it around.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Error {
    pub errno: i32,
}

impl Error {
    pub const fn new(errno: i32) -> Self {
        Error { errno }
    }
    pub const NOENT: Error = Error::new(libc::ENOENT);
    pub const NOTDIR: Error = Error::new(libc::ENOTDIR);
    pub const INVAL: Error = Error::new(libc::EINVAL);
    pub const NAMETOOLONG: Error = Error::new(libc::ENAMETOOLONG);
    pub const ROFS: Error = Error::new(libc::EROFS);
    pub const BADF: Error = Error::new(libc::EBADF);
    pub const NODATA: Error = Error::new(libc::ENODATA);
    pub const RANGE: Error = Error::new(libc::ERANGE);
    /// A nodeid the kernel sent that the table no longer holds. The kernel only
    /// sends nodeids it holds a lookup on, so this means a bookkeeping bug;
    /// ESTALE makes the kernel drop the dentry and look it up again.
    pub const STALE: Error = Error::new(libc::ESTALE);
}

impl From<io::Error> for Error {
    fn from(e: io::Error) -> Self {
        // An io::Error without an OS code comes from our own code, never from
        // the kernel; EIO is the honest answer for it.
        Error::new(e.raw_os_error().unwrap_or(libc::EIO))
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", io::Error::from_raw_os_error(self.errno))
    }
}

impl std::error::Error for Error {}

/// Result of a union operation.
pub type Result<T> = std::result::Result<T, Error>;

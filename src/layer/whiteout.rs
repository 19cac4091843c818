//! Whiteout and opaque markers, read in every format at once.
//!
//! - kernel overlayfs: a character device 0:0 named NAME; a directory with
//!   xattr `trusted.overlay.opaque=y` (or `user.overlay.opaque=y` under
//!   `userxattr`).
//! - OCI / AUFS layers: an empty file `.wh.NAME`; a file `.wh..wh..opq` in an
//!   opaque directory. Every `.wh..wh.*` name is AUFS metadata.
//! - fuse-overlayfs: also `user.fuseoverlayfs.opaque=y`.

use std::ffi::CStr;
use std::os::fd::BorrowedFd;

use crate::name::{Name, WH_PREFIX};
use crate::sys::{self, XTarget};

/// The OCI opaque marker file.
pub const OCI_OPAQUE: &CStr = c".wh..wh..opq";

/// xattrs that mark a directory opaque when set to `y`. (`x` on
/// `trusted.overlay.opaque` means "may hold xwhiteouts", not opaque.)
pub const OPAQUE_XATTRS: [&CStr; 3] = [
    c"trusted.overlay.opaque",
    c"user.overlay.opaque",
    c"user.fuseoverlayfs.opaque",
];

/// xattr prefixes that belong to the union's bookkeeping and are never shown.
const PRIVATE_XATTR_PREFIXES: [&[u8]; 7] = [
    b"trusted.overlay.",
    b"user.overlay.",
    b"user.fuseoverlayfs.",
    b"trusted.unionfuse.",
    b"user.unionfuse.",
    // Ownership overrides of rootless images (see `override_stat`).
    b"user.containers.",
    b"security.fuseoverlayfs.",
];

/// Whether an xattr name is overlay-private and hidden from the mount.
pub fn is_private_xattr(name: &[u8]) -> bool {
    PRIVATE_XATTR_PREFIXES.iter().any(|p| name.starts_with(p))
}

/// Whether a stat result is a kernel overlayfs whiteout.
pub fn is_whiteout(st: &libc::stat) -> bool {
    sys::is_whiteout_stat(st)
}

/// For a name read from a layer directory: `Some(hidden)` when it is an OCI
/// whiteout of `hidden` (`None` inside for AUFS metadata such as the opaque
/// marker, which hides no single name); `None` for an ordinary name.
pub fn oci_whiteout_target(name: &[u8]) -> Option<Option<&[u8]>> {
    let rest = name.strip_prefix(WH_PREFIX)?;
    if rest.starts_with(WH_PREFIX) || rest.is_empty() {
        Some(None)
    } else {
        Some(Some(rest))
    }
}

/// Whether `dir` (a layer directory) holds an OCI whiteout for `name`.
pub fn has_oci_whiteout(dir: BorrowedFd<'_>, name: &Name) -> bool {
    match name.oci_whiteout() {
        Some(wh) => sys::fstatat(dir, wh.as_cstr()).is_ok(),
        None => false,
    }
}

/// xattrs holding a kernel overlayfs redirect: where a renamed directory's
/// lower parts live.
const REDIRECT_XATTRS: [&CStr; 2] = [c"trusted.overlay.redirect", c"user.overlay.redirect"];

/// What a layer directory says about the layers below it.
#[derive(Debug, Default)]
pub struct DirMarks {
    /// Nothing below shows through.
    pub opaque: bool,
    /// The raw redirect: a name in the same parent, or a path from the
    /// layer roots when it starts with `/`.
    pub redirect: Option<Vec<u8>>,
}

/// The markers on directory `name` in `parent`, open as `fd`, in any format.
/// Errors count as no marker: a marker that cannot be read cannot be
/// honoured either, and the requests that follow report real failures.
pub fn dir_marks(parent: BorrowedFd<'_>, name: &Name, fd: BorrowedFd<'_>) -> DirMarks {
    let mut marks = DirMarks {
        opaque: sys::fstatat(fd, OCI_OPAQUE).is_ok(),
        redirect: None,
    };
    let target = XTarget::At(parent, name.as_cstr());
    // One listxattr first: most directories carry no xattr at all, and this
    // saves a getxattr per marker on each of them.
    let Ok(list) = sys::listxattr_vec(target) else {
        return marks;
    };
    let has = |want: &CStr| list.split(|b| *b == 0).any(|n| n == want.to_bytes());
    for want in OPAQUE_XATTRS {
        if !marks.opaque && has(want) {
            let mut v = [0u8; 2];
            if let Ok(1) = sys::getxattr(target, want, &mut v)
                && v[0] == b'y'
            {
                marks.opaque = true;
            }
        }
    }
    for want in REDIRECT_XATTRS {
        if marks.redirect.is_none() && has(want) {
            let mut v = vec![0u8; libc::PATH_MAX as usize];
            if let Ok(n) = sys::getxattr(target, want, &mut v) {
                v.truncate(n);
                marks.redirect = Some(v);
            }
        }
    }
    marks
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_oci_names() {
        assert_eq!(oci_whiteout_target(b".wh.foo"), Some(Some(&b"foo"[..])));
        assert_eq!(oci_whiteout_target(b".wh..wh..opq"), Some(None));
        assert_eq!(oci_whiteout_target(b"foo"), None);
        assert!(is_private_xattr(b"trusted.overlay.opaque"));
        assert!(!is_private_xattr(b"user.mime"));
    }
}

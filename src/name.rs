//! `Name`: one validated path component, NUL-terminated on the stack.

use std::ffi::{CStr, OsStr};
use std::os::unix::ffi::OsStrExt;

use crate::error::{Error, Result};

/// The longest name any Linux filesystem stores (`NAME_MAX`). The FUSE module
/// forwards names up to 1024 bytes, so the check has to be ours.
pub const NAME_MAX: usize = 255;

/// Prefix of OCI/AUFS whiteout files.
pub const WH_PREFIX: &[u8] = b".wh.";

/// One path component: not empty, no `/` or NUL, not `.` or `..`, at most
/// [`NAME_MAX`] bytes. Built without allocating.
#[derive(Clone)]
pub struct Name {
    buf: [u8; NAME_MAX + 1],
    len: u8,
}

impl std::fmt::Debug for Name {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", OsStr::from_bytes(self.as_bytes()))
    }
}

impl Name {
    /// Validates a name the kernel sent.
    pub fn new(name: &OsStr) -> Result<Name> {
        Self::from_bytes(name.as_bytes())
    }

    pub fn from_bytes(b: &[u8]) -> Result<Name> {
        if b.len() > NAME_MAX {
            return Err(Error::NAMETOOLONG);
        }
        if b.is_empty() {
            return Err(Error::NOENT);
        }
        if b == b"." || b == b".." || b.iter().any(|c| *c == b'/' || *c == 0) {
            return Err(Error::INVAL);
        }
        let mut buf = [0u8; NAME_MAX + 1];
        buf[..b.len()].copy_from_slice(b);
        Ok(Name {
            buf,
            len: b.len() as u8,
        })
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len as usize]
    }

    pub fn as_cstr(&self) -> &CStr {
        // buf holds no NUL before len (checked in from_bytes) and one at len.
        CStr::from_bytes_with_nul(&self.buf[..self.len as usize + 1]).unwrap_or(c"")
    }

    /// Whether the name is reserved for whiteout markers and so can never
    /// name a visible entry.
    pub fn is_reserved(&self) -> bool {
        self.as_bytes().starts_with(WH_PREFIX)
    }

    /// `.wh.NAME`, or `None` when that would exceed [`NAME_MAX`] (such a
    /// whiteout cannot exist on disk).
    pub fn oci_whiteout(&self) -> Option<Name> {
        let n = self.as_bytes();
        if n.len() + WH_PREFIX.len() > NAME_MAX {
            return None;
        }
        let mut buf = [0u8; NAME_MAX + 1];
        buf[..WH_PREFIX.len()].copy_from_slice(WH_PREFIX);
        buf[WH_PREFIX.len()..WH_PREFIX.len() + n.len()].copy_from_slice(n);
        Some(Name {
            buf,
            len: (n.len() + WH_PREFIX.len()) as u8,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validates_components() {
        assert_eq!(
            Name::from_bytes(&[b'a'; 256]).unwrap_err(),
            Error::NAMETOOLONG
        );
        assert!(Name::from_bytes(&[b'a'; 255]).is_ok());
        assert_eq!(Name::from_bytes(b"a/b").unwrap_err(), Error::INVAL);
        assert_eq!(Name::from_bytes(b"..").unwrap_err(), Error::INVAL);
        assert_eq!(Name::from_bytes(b"x").unwrap().as_cstr(), c"x");
    }

    #[test]
    fn builds_whiteout_names() {
        let n = Name::from_bytes(b"foo").unwrap();
        assert_eq!(n.oci_whiteout().unwrap().as_bytes(), b".wh.foo");
        assert!(n.oci_whiteout().unwrap().is_reserved());
        assert!(
            Name::from_bytes(&[b'a'; 252])
                .unwrap()
                .oci_whiteout()
                .is_none()
        );
    }
}

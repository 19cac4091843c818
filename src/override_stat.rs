//! Ownership and mode kept in an xattr, for rootless images: a user who
//! cannot chown, or create device nodes, records what the object should be
//! in `user.containers.override_stat` (containers/storage) or
//! `security.fuseoverlayfs.override_stat` (fuse-overlayfs `xattr_permissions=1`),
//! and the mount shows that instead of what the disk says.
//!
//! The value is `UID:GID:MODE[:TYPE]`, MODE in octal; TYPE is one of `file`,
//! `dir`, `symlink`, `pipe`, `socket`, `block-MAJOR-MINOR`,
//! `char-MAJOR-MINOR`.

use std::ffi::CStr;

/// `xattr_permissions=1`.
pub const SECURITY: &CStr = c"security.fuseoverlayfs.override_stat";
/// `xattr_permissions=2`.
pub const CONTAINERS: &CStr = c"user.containers.override_stat";

/// What an override says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Override {
    pub uid: u32,
    pub gid: u32,
    /// Permission bits (`0o7777`).
    pub perm: u32,
    /// `S_IFMT` type and device number, when the value names a type.
    pub kind: Option<(u32, u64)>,
}

impl Override {
    pub fn parse(v: &[u8]) -> Option<Override> {
        let s = std::str::from_utf8(v).ok()?.trim_end_matches('\0');
        let mut parts = s.split(':');
        let uid = parts.next()?.parse().ok()?;
        let gid = parts.next()?.parse().ok()?;
        let perm = u32::from_str_radix(parts.next()?, 8).ok()? & 0o7777;
        let kind = match parts.next() {
            None => None,
            Some(t) => Some(parse_kind(t)?),
        };
        Some(Override {
            uid,
            gid,
            perm,
            kind,
        })
    }

    pub fn format(&self) -> String {
        let mut s = format!("{}:{}:0{:o}", self.uid, self.gid, self.perm);
        if let Some((kind, rdev)) = self.kind {
            s.push(':');
            s.push_str(&format_kind(kind, rdev));
        }
        s
    }

    /// Shows the override in a stat result.
    pub fn apply(&self, st: &mut libc::stat) {
        st.st_uid = self.uid;
        st.st_gid = self.gid;
        let kind = match self.kind {
            Some((kind, rdev)) => {
                st.st_rdev = rdev;
                kind
            }
            None => st.st_mode & libc::S_IFMT,
        };
        st.st_mode = kind | self.perm;
    }
}

fn parse_kind(t: &str) -> Option<(u32, u64)> {
    let simple = match t {
        "file" => Some(libc::S_IFREG),
        "dir" => Some(libc::S_IFDIR),
        "symlink" => Some(libc::S_IFLNK),
        "pipe" => Some(libc::S_IFIFO),
        "socket" => Some(libc::S_IFSOCK),
        _ => None,
    };
    if let Some(k) = simple {
        return Some((k, 0));
    }
    let (kind, rest) = if let Some(r) = t.strip_prefix("char-") {
        (libc::S_IFCHR, r)
    } else {
        (libc::S_IFBLK, t.strip_prefix("block-")?)
    };
    let (ma, mi) = rest.split_once('-')?;
    Some((kind, libc::makedev(ma.parse().ok()?, mi.parse().ok()?)))
}

fn format_kind(kind: u32, rdev: u64) -> String {
    match kind {
        libc::S_IFDIR => "dir".into(),
        libc::S_IFLNK => "symlink".into(),
        libc::S_IFIFO => "pipe".into(),
        libc::S_IFSOCK => "socket".into(),
        libc::S_IFCHR => format!("char-{}-{}", libc::major(rdev), libc::minor(rdev)),
        libc::S_IFBLK => format!("block-{}-{}", libc::major(rdev), libc::minor(rdev)),
        _ => "file".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_formats() {
        let o = Override::parse(b"0:5:0644").unwrap();
        assert_eq!((o.uid, o.gid, o.perm, o.kind), (0, 5, 0o644, None));
        let d = Override::parse(b"0:0:0620:char-4-1").unwrap();
        assert_eq!(d.kind, Some((libc::S_IFCHR, libc::makedev(4, 1))));
        assert_eq!(d.format(), "0:0:0620:char-4-1");
        assert_eq!(
            Override::parse(b"0:0:0755:dir").unwrap().kind,
            Some((libc::S_IFDIR, 0))
        );
        assert!(Override::parse(b"x:0:0644").is_none());
        assert!(Override::parse(b"0:0:0644:bogus").is_none());
    }
}

//! Reading `/proc/self/mountinfo`: which mount sits on top of a path, and
//! which FUSE connection (device number) serves it.
//!
//! The device number is what ties a mountpoint to the daemon serving it: a
//! FUSE connection keeps its anonymous device for as long as it lives, and a
//! new mount at the same path gets another one. Nothing here stats the
//! mountpoint itself, so a dead mount (ENOTCONN) is still found.

use std::ffi::OsString;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

use crate::failure::Failure;

/// A device number as mountinfo prints it (`major:minor`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Dev {
    pub major: u32,
    pub minor: u32,
}

impl Dev {
    fn parse(s: &[u8]) -> Option<Dev> {
        let s = std::str::from_utf8(s).ok()?;
        let (a, b) = s.split_once(':')?;
        Some(Dev {
            major: a.parse().ok()?,
            minor: b.parse().ok()?,
        })
    }
}

impl std::fmt::Display for Dev {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.major, self.minor)
    }
}

/// One line of mountinfo, the fields unionfuse uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub dev: Dev,
    pub mountpoint: PathBuf,
    pub fstype: String,
    pub source: String,
    /// The filesystem's own options (`user_id=...` for FUSE).
    pub super_options: String,
}

impl Entry {
    /// Mounted by unionfuse: `fuse.unionfuse` through fusermount3 or our
    /// own mount(2); plain `fuse` named `unionfuse` by older builds.
    pub fn is_unionfuse(&self) -> bool {
        self.fstype == "fuse.unionfuse"
            || (self.fstype.starts_with("fuse") && self.source == "unionfuse")
    }

    /// The uid that owns a FUSE mount (`user_id=` of its options).
    pub fn owner(&self) -> Option<u32> {
        self.super_options
            .split(',')
            .find_map(|o| o.strip_prefix("user_id="))
            .and_then(|v| v.parse().ok())
    }
}

/// Every mount of this process's namespace, in mount order.
pub fn read() -> std::io::Result<Vec<Entry>> {
    Ok(parse(&std::fs::read("/proc/self/mountinfo")?))
}

fn parse(text: &[u8]) -> Vec<Entry> {
    text.split(|b| *b == b'\n').filter_map(parse_line).collect()
}

fn parse_line(line: &[u8]) -> Option<Entry> {
    let fields: Vec<&[u8]> = line.split(|b| *b == b' ').collect();
    // Optional fields end at "-"; the three after it are the fstype, the
    // source and the super options.
    let sep = fields.iter().position(|f| *f == b"-")?;
    if sep < 6 || fields.len() < sep + 4 {
        return None;
    }
    let text = |f: &[u8]| String::from_utf8_lossy(&unescape(f)).into_owned();
    Some(Entry {
        dev: Dev::parse(fields[2])?,
        mountpoint: PathBuf::from(OsString::from_vec(unescape(fields[4]))),
        fstype: text(fields[sep + 1]),
        source: text(fields[sep + 2]),
        super_options: text(fields[sep + 3]),
    })
}

/// The mount on top at `path` (absolute, canonical): the last one mounted
/// there.
pub fn top_at(path: &Path) -> std::io::Result<Option<Entry>> {
    Ok(read()?
        .into_iter()
        .rfind(|e| e.mountpoint.as_os_str().as_bytes() == path.as_os_str().as_bytes()))
}

/// The unionfuse mount on top at `path`, or a one-line reason why there
/// is none.
pub fn unionfuse_at(path: &Path) -> Result<Entry, Failure> {
    let entry = top_at(path)
        .map_err(|e| Failure::Mount(format!("cannot read the mount table: {e}")))?
        .ok_or_else(|| Failure::Invalid(format!("{} is not a mount point", path.display())))?;
    if !entry.is_unionfuse() {
        return Err(Failure::Invalid(format!(
            "{} is not a unionfuse mount (it is {})",
            path.display(),
            entry.fstype
        )));
    }
    Ok(entry)
}

/// Whether the connection `dev` is still mounted at `path` (on top).
pub fn is_mounted_at(path: &Path, dev: Dev) -> bool {
    matches!(top_at(path), Ok(Some(e)) if e.dev == dev)
}

/// Undoes mountinfo's octal escapes (`\040` for a space, and so on).
fn unescape(f: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(f.len());
    let mut i = 0;
    while i < f.len() {
        if f[i] == b'\\' && i + 3 < f.len() && f[i + 1..i + 4].iter().all(u8::is_ascii_digit) {
            let v = (f[i + 1] - b'0') * 64 + (f[i + 2] - b'0') * 8 + (f[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(f[i]);
            i += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unescapes_mountinfo() {
        assert_eq!(unescape(b"/a\\040b"), b"/a b".to_vec());
        assert_eq!(unescape(b"/a\\134"), b"/a\\".to_vec());
    }

    #[test]
    fn parses_a_fuse_line() {
        let text = b"36 35 98:0 / /mnt rw,noatime master:1 - ext3 /dev/root rw,errors=continue\n\
700 29 0:61 / /tmp/m\\040x rw,nosuid,nodev,relatime shared:400 - fuse.unionfuse unionfuse rw,user_id=1000,group_id=1000,default_permissions\n";
        let e = parse(text);
        assert_eq!(e.len(), 2);
        assert_eq!(
            e[0].dev,
            Dev {
                major: 98,
                minor: 0
            }
        );
        assert!(!e[0].is_unionfuse());
        assert_eq!(e[1].mountpoint, PathBuf::from("/tmp/m x"));
        assert_eq!(e[1].dev.to_string(), "0:61");
        assert!(e[1].is_unionfuse());
        assert_eq!(e[1].owner(), Some(1000));
    }
}

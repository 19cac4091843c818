//! Whiteouts and opaque markers: read in every format at once, written in
//! the upper's one format by [`UpperFormat`].
//!
//! - kernel overlayfs: a character device 0:0 named NAME; a directory with
//!   xattr `trusted.overlay.opaque=y` (or `user.overlay.opaque=y` under
//!   `userxattr`).
//! - OCI / AUFS layers: an empty file `.wh.NAME`; a file `.wh..wh..opq` in an
//!   opaque directory. Every `.wh..wh.*` name is AUFS metadata.
//! - fuse-overlayfs: also `user.fuseoverlayfs.opaque=y`.
//!
//! Reading needs no format: both are always honoured, so the readers are
//! plain functions. Every marker written goes through an [`UpperFormat`],
//! whose xattr namespace comes from the one privilege probe,
//! [`may_write_trusted`].

use std::ffi::{CStr, CString};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use super::upper::remove_tree;
use crate::error::Result;
use crate::name::{Name, WH_PREFIX};
use crate::sys::{self, WTarget, Writable, XTarget};

/// The OCI opaque marker file.
pub const OCI_OPAQUE: &CStr = c".wh..wh..opq";

/// How many entries of an existing upper are looked at to learn its format.
const FORMAT_SCAN_LIMIT: usize = 4096;

/// How deletions and opaque directories are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WhiteoutFormat {
    /// Kernel overlayfs: char device 0:0, `*.overlay.opaque=y`.
    Overlay,
    /// OCI image layers: `.wh.NAME`, `.wh..wh..opq`.
    Oci,
}

impl WhiteoutFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            WhiteoutFormat::Overlay => "overlay",
            WhiteoutFormat::Oci => "oci",
        }
    }

    /// The format a record written by [`WhiteoutFormat::as_str`] names.
    pub fn parse(v: &[u8]) -> Option<WhiteoutFormat> {
        match v {
            b"overlay" => Some(WhiteoutFormat::Overlay),
            b"oci" => Some(WhiteoutFormat::Oci),
            _ => None,
        }
    }
}

/// Whether trusted.* xattrs can be written in `dir`: the one privilege
/// probe deciding which namespace markers (and unionfuse's own xattrs) are
/// written in. A probe rather than a look at the euid, since euid 0 in a
/// user namespace cannot.
pub fn may_write_trusted(dir: Writable<'_>) -> bool {
    let probe = c"trusted.unionfuse.probe";
    match sys::setxattr(WTarget::Fd(dir), probe, b"1", 0) {
        Ok(()) => {
            let _ = sys::removexattr(WTarget::Fd(dir), probe);
            true
        }
        Err(_) => false,
    }
}

/// A name in the staging directory (outside the tree, on the upper's
/// filesystem): where an object is built before it enters the tree, or
/// parked on its way out. The caller owns the name and removes what is left
/// there (the methods below say when something is).
#[derive(Debug, Clone, Copy)]
pub struct StagingSlot<'a> {
    pub dir: Writable<'a>,
    pub name: &'a CStr,
}

/// The upper's on-disk convention: every whiteout and opaque marker a
/// mount, a repair or an unpack writes is written here, in one format, with
/// the opaque xattr in the namespace the privilege probe allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UpperFormat {
    kind: WhiteoutFormat,
    /// trusted.* xattrs may be written ([`may_write_trusted`]).
    trusted: bool,
}

impl UpperFormat {
    /// The convention writing `kind`, with `trusted.*` xattrs when `trusted`
    /// (else `user.*`, what overlayfs reads with `userxattr`).
    pub fn new(kind: WhiteoutFormat, trusted: bool) -> UpperFormat {
        UpperFormat { kind, trusted }
    }

    /// Settles an upper's format: `chosen` (asked for, or recorded), else
    /// the one the upper's markers already use, else what its filesystem
    /// accepts (probed in `staging`, a directory on the same filesystem).
    pub fn settle(
        chosen: Option<WhiteoutFormat>,
        upper: BorrowedFd<'_>,
        staging: Writable<'_>,
        trusted: bool,
    ) -> UpperFormat {
        let kind = match chosen {
            Some(f) => f,
            None => match scan_format(upper) {
                Some(f) => f,
                None => probe_format(staging),
            },
        };
        UpperFormat::new(kind, trusted)
    }

    /// The format written.
    pub fn kind(self) -> WhiteoutFormat {
        self.kind
    }

    /// Whether trusted.* xattrs may be written (the probe's answer).
    pub fn trusted(self) -> bool {
        self.trusted
    }

    fn overlay(self) -> bool {
        self.kind == WhiteoutFormat::Overlay
    }

    /// Whether the whiteout of `name` is a 0:0 character device: always in
    /// the overlay format, and in the OCI format for a name too long for
    /// `.wh.NAME` (more than 251 bytes), the one way to hide it there.
    fn device_whiteout(self, name: &Name) -> bool {
        self.overlay() || name.oci_whiteout().is_none()
    }

    /// The opaque xattr this convention writes.
    fn opaque_xattr(self) -> &'static CStr {
        if self.trusted {
            OPAQUE_XATTRS[0]
        } else {
            OPAQUE_XATTRS[1]
        }
    }

    /// Hides the lower `name` in upper directory `dir`, where nothing of that
    /// name exists yet.
    pub fn write_whiteout(self, dir: Writable<'_>, name: &Name) -> Result<()> {
        match name.oci_whiteout() {
            Some(wh) if !self.overlay() => create_marker(dir, wh.as_cstr())?,
            _ => sys::mknodat(dir, name.as_cstr(), libc::S_IFCHR, 0)?,
        }
        Ok(())
    }

    /// Removes the upper object `name` in `dir`, leaving a whiteout in its
    /// place when `hide`, in one atomic step where the format allows. A
    /// directory (`is_dir`; only whiteouts can be left inside it, the
    /// merged view of it being empty) leaves through `slot`. Returns
    /// whether something is left at `slot`.
    pub fn remove(
        self,
        dir: Writable<'_>,
        name: &Name,
        is_dir: bool,
        hide: bool,
        slot: StagingSlot<'_>,
    ) -> Result<bool> {
        if hide && self.device_whiteout(name) {
            sys::mknodat(slot.dir, slot.name, libc::S_IFCHR, 0)?;
            // rename(2) will not put a device node over a directory: swap
            // them, and the directory leaves with the slot's name.
            let flags = if is_dir { libc::RENAME_EXCHANGE } else { 0 };
            sys::renameat2(slot.dir, slot.name, dir, name.as_cstr(), flags)?;
            return Ok(is_dir);
        }
        if hide {
            // `.wh.NAME` first: the upper object still wins over it until
            // it is gone.
            self.write_whiteout(dir, name)?;
        }
        if is_dir {
            // The directory leaves the tree in one rename, then is emptied.
            sys::renameat2(dir, name.as_cstr(), slot.dir, slot.name, 0)?;
            return Ok(true);
        }
        sys::unlinkat(dir, name.as_cstr(), false)?;
        Ok(false)
    }

    /// Moves upper object `from` (`name` in directory `dir`) to `to`
    /// (`newname` in `newdir`), replacing whatever the upper holds there (an
    /// object the merged view allows to be replaced, or a whiteout), and
    /// leaving a whiteout at the old name when `hide` (a lower layer holds
    /// it). `src_dir`: the object moved is a directory. What the move pushes
    /// out may leave through `slot`; returns whether something is left
    /// there.
    pub fn rename(
        self,
        from: (Writable<'_>, &Name),
        to: (Writable<'_>, &Name),
        src_dir: bool,
        hide: bool,
        slot: StagingSlot<'_>,
    ) -> Result<bool> {
        let ((dir, name), (newdir, newname)) = (from, to);
        // How the old name is hidden.
        let overlay = self.device_whiteout(name);
        let target = sys::fstatat(newdir.fd(), newname.as_cstr()).ok();
        let target_dir = target.is_some_and(|st| st.st_mode & libc::S_IFMT == libc::S_IFDIR);
        let target_wh = target.is_some_and(|st| is_whiteout(&st));
        let mut parked = false;
        if target_dir || (src_dir && target_wh) {
            // rename(2) will neither put a directory over a device node nor
            // replace a directory still holding whiteouts (the merged view
            // of it is empty): swap the two, then drop what lands at the
            // old name.
            if hide && !overlay {
                self.write_whiteout(dir, name)?;
            }
            sys::renameat2(
                dir,
                name.as_cstr(),
                newdir,
                newname.as_cstr(),
                libc::RENAME_EXCHANGE,
            )?;
            if !(target_wh && hide && overlay) {
                parked = self.remove(dir, name, target_dir, hide && overlay, slot)?;
            }
        } else if hide && overlay {
            // The whiteout appears at the old name in the same step.
            match sys::renameat2(
                dir,
                name.as_cstr(),
                newdir,
                newname.as_cstr(),
                libc::RENAME_WHITEOUT,
            ) {
                Err(e) if matches!(e.raw_os_error(), Some(libc::EINVAL | libc::EPERM)) => {
                    sys::renameat2(dir, name.as_cstr(), newdir, newname.as_cstr(), 0)?;
                    self.write_whiteout(dir, name)?;
                }
                r => r?,
            }
        } else {
            if hide {
                self.write_whiteout(dir, name)?;
            }
            sys::renameat2(dir, name.as_cstr(), newdir, newname.as_cstr(), 0)?;
        }
        remove_oci_whiteout(newdir, newname)?;
        Ok(parked)
    }

    /// Puts a staged object (`from`) at `name` in upper directory `dir`,
    /// where a whiteout holds the name. A directory is marked opaque first:
    /// nothing below may show through the new one.
    pub fn place_over_whiteout(
        self,
        from: StagingSlot<'_>,
        dir: Writable<'_>,
        name: &Name,
        is_dir: bool,
    ) -> Result<()> {
        if is_dir {
            let d = sys::open_child_dir(from.dir.fd(), from.name)?;
            self.mark_opaque(WTarget::At(from.dir, from.name), Writable::new(d.as_fd()))?;
        }
        let kind = if self.device_whiteout(name) {
            WhiteoutFormat::Overlay
        } else {
            WhiteoutFormat::Oci
        };
        match kind {
            WhiteoutFormat::Overlay if is_dir => {
                // rename(2) will not put a directory over a device node:
                // swap them, then drop the whiteout.
                sys::renameat2(
                    from.dir,
                    from.name,
                    dir,
                    name.as_cstr(),
                    libc::RENAME_EXCHANGE,
                )?;
                sys::unlinkat(from.dir, from.name, false)?;
            }
            WhiteoutFormat::Overlay => sys::renameat2(from.dir, from.name, dir, name.as_cstr(), 0)?,
            WhiteoutFormat::Oci => {
                // The new object wins over `.wh.NAME` in its own layer, so
                // the order cannot expose the lower object.
                sys::renameat2(
                    from.dir,
                    from.name,
                    dir,
                    name.as_cstr(),
                    libc::RENAME_NOREPLACE,
                )?;
                remove_oci_whiteout(dir, name)?;
            }
        }
        Ok(())
    }

    /// Marks a directory opaque with the format's one marker: the xattr on
    /// `t`, or `.wh..wh..opq` in `dir` (the same directory, open).
    pub fn mark_opaque(self, t: WTarget<'_>, dir: Writable<'_>) -> Result<()> {
        match self.kind {
            WhiteoutFormat::Overlay => sys::setxattr(t, self.opaque_xattr(), b"y", 0)?,
            WhiteoutFormat::Oci => create_marker(dir, OCI_OPAQUE)?,
        }
        Ok(())
    }

    /// For a directory marked opaque both ways (`t`, open as `dir`, holding
    /// `.wh..wh..opq` and the opaque `xattrs`): drops the marker of the
    /// other format. Whether that worked.
    pub fn drop_foreign_opaque(self, t: WTarget<'_>, dir: Writable<'_>, xattrs: &[&CStr]) -> bool {
        match self.kind {
            WhiteoutFormat::Oci => xattrs.iter().all(|x| sys::removexattr(t, x).is_ok()),
            WhiteoutFormat::Overlay => sys::unlinkat(dir, OCI_OPAQUE, false).is_ok(),
        }
    }

    /// For an unpacked layer: turns its `.wh..wh..opq` in `dir` into this
    /// format's marker. `false` when the OCI file is the marker, to be
    /// written as the layer holds it.
    pub fn import_oci_opaque(self, dir: Writable<'_>) -> Result<bool> {
        if !self.overlay() {
            return Ok(false);
        }
        self.mark_opaque(WTarget::Fd(dir), dir)?;
        Ok(true)
    }

    /// For an unpacked layer: turns its `.wh.HIDDEN` in `dir` into this
    /// format's whiteout, replacing what an earlier entry put at `hidden`.
    /// `false` when the OCI file is the whiteout, to be written as the
    /// layer holds it.
    pub fn import_oci_whiteout(self, dir: Writable<'_>, hidden: &[u8]) -> Result<bool> {
        if !self.overlay() {
            return Ok(false);
        }
        let hidden = Name::from_bytes(hidden)?;
        remove_tree(dir, hidden.as_cstr())?;
        self.write_whiteout(dir, &hidden)?;
        Ok(true)
    }
}

/// Creates an empty OCI marker file; one already there is as good.
fn create_marker(dir: Writable<'_>, name: &CStr) -> Result<()> {
    match sys::create_file(dir, name, libc::O_WRONLY, 0o644) {
        Ok(_) => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Removes an OCI whiteout of `name` in `dir`, if any: what a new object at
/// `name` must not leave beside it, in either format.
fn remove_oci_whiteout(dir: Writable<'_>, name: &Name) -> Result<()> {
    if let Some(wh) = name.oci_whiteout() {
        match sys::unlinkat(dir, wh.as_cstr(), false) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// The format of the first whiteout or opaque marker found in a bounded
/// breadth-first walk of an existing upper.
fn scan_format(upper: BorrowedFd<'_>) -> Option<WhiteoutFormat> {
    let mut queue: std::collections::VecDeque<OwnedFd> = std::collections::VecDeque::new();
    let mut seen = 0;
    let first = sys::open_child_dir(upper, c".").ok()?;
    queue.push_back(first);
    while let Some(dir) = queue.pop_front() {
        let Ok(entries) = sys::read_dir(dir.as_fd()) else {
            continue;
        };
        for e in entries.iter() {
            if e.name == b"." || e.name == b".." {
                continue;
            }
            seen += 1;
            if seen > FORMAT_SCAN_LIMIT {
                return None;
            }
            if oci_whiteout_target(e.name).is_some() {
                return Some(WhiteoutFormat::Oci);
            }
            let Ok(n) = Name::from_bytes(e.name) else {
                continue;
            };
            if (e.d_type == libc::DT_CHR || e.d_type == libc::DT_UNKNOWN)
                && let Ok(st) = sys::fstatat(dir.as_fd(), n.as_cstr())
                && is_whiteout(&st)
            {
                return Some(WhiteoutFormat::Overlay);
            }
            if (e.d_type == libc::DT_DIR || e.d_type == libc::DT_UNKNOWN)
                && let Ok(fd) = sys::open_child_dir(dir.as_fd(), n.as_cstr())
            {
                queue.push_back(fd);
            }
        }
    }
    None
}

/// `overlay` where the filesystem lets this process create a 0:0 char device.
fn probe_format(dir: Writable<'_>) -> WhiteoutFormat {
    let probe = CString::new(format!("probe.{}", std::process::id())).unwrap_or_default();
    match sys::mknodat(dir, &probe, libc::S_IFCHR, 0) {
        Ok(()) => {
            let _ = sys::unlinkat(dir, &probe, false);
            WhiteoutFormat::Overlay
        }
        Err(_) => WhiteoutFormat::Oci,
    }
}

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

/// Whether `name` in layer directory `dir` is a whiteout (either format).
pub fn has_whiteout(dir: BorrowedFd<'_>, name: &Name) -> bool {
    match sys::fstatat(dir, name.as_cstr()) {
        Ok(st) => is_whiteout(&st),
        Err(_) => has_oci_whiteout(dir, name),
    }
}

/// Whether `name` is the OCI opaque marker, which belongs to its directory
/// rather than standing for an entry.
pub fn is_oci_opaque(name: &[u8]) -> bool {
    name == OCI_OPAQUE.to_bytes()
}

/// Whether opaque xattr `x` on `t` says `y`.
fn opaque_set(t: XTarget<'_>, x: &CStr) -> bool {
    let mut v = [0u8; 2];
    matches!(sys::getxattr(t, x, &mut v), Ok(1) if v[0] == b'y')
}

/// The opaque xattrs set (to `y`) on `t`.
pub fn opaque_xattrs(t: XTarget<'_>) -> Vec<&'static CStr> {
    OPAQUE_XATTRS
        .iter()
        .copied()
        .filter(|x| opaque_set(t, x))
        .collect()
}

/// Whether layer directory `dir` is opaque, in either format.
pub fn is_opaque_dir(dir: BorrowedFd<'_>) -> bool {
    sys::fstatat(dir, OCI_OPAQUE).is_ok()
        || OPAQUE_XATTRS
            .iter()
            .any(|x| opaque_set(XTarget::Fd(dir), x))
}

/// xattrs holding a kernel overlayfs redirect: where a renamed directory's
/// lower parts live.
pub const REDIRECT_XATTRS: [&CStr; 2] = [c"trusted.overlay.redirect", c"user.overlay.redirect"];

/// xattrs marking a metadata-only copy (kernel overlayfs's `metacopy=on`):
/// the file's attributes are here, its data in a layer below.
pub const METACOPY_XATTRS: [&CStr; 2] = [c"trusted.overlay.metacopy", c"user.overlay.metacopy"];

/// Whether regular file `st` could be a metadata-only copy. In the upper
/// layer every non-empty one could (a small copy's xattrs may fill a block
/// of their own, so its block count says nothing); in a lower layer (an
/// old upper stacked as a lower) only one whose blocks do not hold its
/// size, so that lookups in image layers cost no extra syscall.
pub fn may_be_metacopy(st: &libc::stat, in_upper: bool) -> bool {
    st.st_mode & libc::S_IFMT == libc::S_IFREG
        && st.st_size > 0
        && (in_upper || st.st_blocks.saturating_mul(512) < st.st_size)
}

/// `None` unless regular file `name` in `parent` is a metadata-only copy;
/// then its redirect, if it has one (it was renamed: the data is at that
/// path from the layer roots instead of at its own name).
pub fn metacopy_marks(parent: BorrowedFd<'_>, name: &Name) -> Option<Option<Vec<u8>>> {
    let target = XTarget::At(parent, name.as_cstr());
    let list = sys::listxattr_vec(target).ok()?;
    let has = |want: &CStr| list.split(|b| *b == 0).any(|n| n == want.to_bytes());
    if !METACOPY_XATTRS.iter().any(|x| has(x)) {
        return None;
    }
    let mut redirect = None;
    for want in REDIRECT_XATTRS {
        if redirect.is_none() && has(want) {
            let mut v = vec![0u8; libc::PATH_MAX as usize];
            if let Ok(n) = sys::getxattr(target, want, &mut v) {
                v.truncate(n);
                redirect = Some(v);
            }
        }
    }
    Some(redirect)
}

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
        if !marks.opaque && has(want) && opaque_set(target, want) {
            marks.opaque = true;
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

    #[test]
    fn format_records_round_trip() {
        for f in [WhiteoutFormat::Overlay, WhiteoutFormat::Oci] {
            assert_eq!(WhiteoutFormat::parse(f.as_str().as_bytes()), Some(f));
        }
        assert_eq!(WhiteoutFormat::parse(b"aufs"), None);
        assert_eq!(
            UpperFormat::new(WhiteoutFormat::Overlay, false).opaque_xattr(),
            c"user.overlay.opaque"
        );
        assert_eq!(
            UpperFormat::new(WhiteoutFormat::Overlay, true).opaque_xattr(),
            c"trusted.overlay.opaque"
        );
    }
}

//! The mount configuration: [`MountConfig`], the builder every front end
//! (the command line, the fuse-overlayfs option parser, the Rust API) fills
//! in, and the one `validate()` that checks it before anything touches the
//! disk. After this module, paths are absolute, canonical and checked.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::failure::Failure;
use crate::idmap::{IdMap, Map};
use crate::layer::upper::WhiteoutFormat;
use crate::override_stat;
use crate::sys;

/// Default kernel cache timeout (see `unionfuse mount --cache-timeout`).
pub const DEFAULT_CACHE_TIMEOUT: Duration = Duration::from_secs(86_400);

/// Everything a mount needs, with every path absolute and checked. Made by
/// [`MountConfigBuilder::validate`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct MountConfig {
    /// Read-only layers, top-most first.
    pub lowers: Vec<PathBuf>,
    /// The writable layer; `None` makes the mount read-only.
    pub upper: Option<PathBuf>,
    /// Staging directory on the same mount as the upper (created when
    /// mounting if it is the default one and missing).
    pub work: Option<PathBuf>,
    /// Where the merged tree is mounted.
    pub mountpoint: PathBuf,
    /// FUSE worker threads.
    pub threads: usize,
    /// How long the kernel may cache entries and attributes.
    pub cache_timeout: Duration,
    /// Per-request trace on stderr.
    pub debug: bool,
    /// Owners as shown and as stored.
    pub(crate) ids: IdMap,
    /// The xattr with ownership overrides, when enabled.
    pub(crate) override_xattr: Option<&'static std::ffi::CStr>,
    /// fsync does not reach the disk.
    pub volatile: bool,
    /// Attribute changes of a lower file copy its metadata only (kernel
    /// overlayfs's `metacopy=on`).
    pub metacopy: bool,
    /// The kernel enforces POSIX ACLs (see [`MountConfigBuilder::acl`]).
    pub acl: bool,
    /// Requests travel over io_uring where the kernel allows it (see
    /// [`MountConfigBuilder::io_uring`]).
    pub io_uring: bool,
    /// Lower files opened read-only are passed through (see
    /// [`MountConfigBuilder::lower_passthrough`]).
    pub lower_passthrough: bool,
    /// Refuse every change, upper or not.
    pub read_only: bool,
    /// Device nodes in the mount do not work as devices.
    pub nodev: bool,
    /// Set-user-ID and set-group-ID bits are ignored.
    pub nosuid: bool,
    /// Let other users in on an unprivileged mount.
    pub allow_other: bool,
    /// The whiteout format to write; `None` picks one (the format an
    /// existing upper uses, else overlay where possible, else OCI).
    pub whiteout: Option<WhiteoutFormat>,
}

impl MountConfig {
    /// An empty description to fill in; [`MountConfigBuilder::validate`]
    /// checks it and gives the config.
    pub fn builder() -> MountConfigBuilder {
        MountConfigBuilder::default()
    }
}

/// A mount as asked for, unchecked. Every front end fills one in; nothing
/// is looked at until [`MountConfigBuilder::validate`]. (The fields are
/// readable inside the crate so that front ends' tests can see what they
/// asked for.)
#[derive(Debug, Clone)]
pub struct MountConfigBuilder {
    pub(crate) lowers: Vec<PathBuf>,
    pub(crate) upper: Option<PathBuf>,
    pub(crate) work: Option<PathBuf>,
    pub(crate) mountpoint: Option<PathBuf>,
    pub(crate) whiteout: Option<WhiteoutFormat>,
    pub(crate) threads: Option<usize>,
    pub(crate) cache_timeout: Duration,
    pub(crate) debug: bool,
    pub(crate) volatile: bool,
    pub(crate) metacopy: bool,
    pub(crate) acl: bool,
    pub(crate) io_uring: bool,
    pub(crate) lower_passthrough: bool,
    pub(crate) read_only: bool,
    pub(crate) nodev: bool,
    pub(crate) nosuid: bool,
    pub(crate) allow_other: bool,
    pub(crate) uidmap: Option<String>,
    pub(crate) gidmap: Option<String>,
    pub(crate) squash_uid: Option<u32>,
    pub(crate) squash_gid: Option<u32>,
    pub(crate) xattr_permissions: Option<u8>,
}

impl Default for MountConfigBuilder {
    fn default() -> Self {
        MountConfigBuilder {
            lowers: Vec::new(),
            upper: None,
            work: None,
            mountpoint: None,
            whiteout: None,
            threads: None,
            cache_timeout: DEFAULT_CACHE_TIMEOUT,
            debug: false,
            volatile: false,
            metacopy: false,
            acl: false,
            io_uring: false,
            lower_passthrough: true,
            read_only: false,
            nodev: false,
            nosuid: false,
            allow_other: false,
            uidmap: None,
            gidmap: None,
            squash_uid: None,
            squash_gid: None,
            xattr_permissions: None,
        }
    }
}

impl MountConfigBuilder {
    /// Adds a read-only layer below those added before (one directory; no
    /// colon list).
    pub fn lower(mut self, dir: impl Into<PathBuf>) -> Self {
        self.lowers.push(dir.into());
        self
    }

    /// The writable layer; without one the mount is read-only.
    pub fn upper(mut self, dir: impl Into<PathBuf>) -> Self {
        self.upper = Some(dir.into());
        self
    }

    /// The work directory (default: `.NAME.unionfuse-work` beside the
    /// upper directory NAME, created when missing).
    pub fn work(mut self, dir: impl Into<PathBuf>) -> Self {
        self.work = Some(dir.into());
        self
    }

    /// Where to mount: an existing directory that is not a mount point and
    /// is neither inside nor above any layer.
    pub fn mountpoint(mut self, dir: impl Into<PathBuf>) -> Self {
        self.mountpoint = Some(dir.into());
        self
    }

    /// How deletions are written; `None` (the default) picks one.
    pub fn whiteout(mut self, format: Option<WhiteoutFormat>) -> Self {
        self.whiteout = format;
        self
    }

    /// Threads serving requests (default: the number of CPUs).
    pub fn threads(mut self, n: usize) -> Self {
        self.threads = Some(n);
        self
    }

    /// How long the kernel may cache names and attributes.
    pub fn cache_timeout(mut self, t: Duration) -> Self {
        self.cache_timeout = t;
        self
    }

    /// Log every request.
    pub fn debug(mut self, on: bool) -> Self {
        self.debug = on;
        self
    }

    /// fsync does not reach the disk (throwaway containers).
    pub fn volatile(mut self, on: bool) -> Self {
        self.volatile = on;
        self
    }

    /// The kernel enforces POSIX ACLs in its permission checks, as kernel
    /// overlayfs does; without it they are stored, copied and shown, and
    /// only the mode bits decide. Off by default: the kernel then drops an
    /// inode's cached ACLs at every attribute refresh, which costs a
    /// request per entry on tree walks.
    pub fn acl(mut self, on: bool) -> Self {
        self.acl = on;
        self
    }

    /// Requests travel over FUSE's io_uring transport, each answered on
    /// the CPU that issued it, where the kernel offers it (root, kernel
    /// 6.14 or later, `/sys/module/fuse/parameters/enable_uring` on);
    /// otherwise over `/dev/fuse`, with a warning.
    pub fn io_uring(mut self, on: bool) -> Self {
        self.io_uring = on;
        self
    }

    /// A lower file of 256 KiB or more opened read-only on a writable mount
    /// is read by the kernel straight from the layer (FUSE passthrough,
    /// root only), as upper files and files of read-only mounts always
    /// are. On by default. The price: a descriptor opened that way before
    /// the file is copied up keeps reading the lower file's data, where
    /// kernel overlayfs switches it to the copy (later opens reach the
    /// copy either way). Off restores kernel overlayfs's behaviour, and
    /// reads of lower files go through the daemon and the page cache.
    pub fn lower_passthrough(mut self, on: bool) -> Self {
        self.lower_passthrough = on;
        self
    }

    /// chmod, chown, utimes and xattr changes of a lower file copy its
    /// attributes only, leaving the data below until the first write
    /// (kernel overlayfs's `metacopy=on`; kernel overlayfs then reads the
    /// upper only when mounted with `metacopy=on` too).
    pub fn metacopy(mut self, on: bool) -> Self {
        self.metacopy = on;
        self
    }

    /// Refuse every change even with an upper.
    pub fn read_only(mut self, on: bool) -> Self {
        self.read_only = on;
        self
    }

    /// Device nodes do not work as devices.
    pub fn nodev(mut self, on: bool) -> Self {
        self.nodev = on;
        self
    }

    /// Set-user-ID and set-group-ID bits are ignored.
    pub fn nosuid(mut self, on: bool) -> Self {
        self.nosuid = on;
        self
    }

    /// Let other users into an unprivileged mount.
    pub fn allow_other(mut self, on: bool) -> Self {
        self.allow_other = on;
        self
    }

    /// Uids through a user namespace's mapping,
    /// `CONTAINER:HOST:LENGTH[:...]` (parsed by `validate`).
    pub fn uidmap(mut self, map: impl Into<String>) -> Self {
        self.uidmap = Some(map.into());
        self
    }

    /// As [`MountConfigBuilder::uidmap`], for gids.
    pub fn gidmap(mut self, map: impl Into<String>) -> Self {
        self.gidmap = Some(map.into());
        self
    }

    /// Show every object as owned by this uid (wins over a uid map).
    pub fn squash_uid(mut self, id: u32) -> Self {
        self.squash_uid = Some(id);
        self
    }

    /// Show every object as owned by this gid (wins over a gid map).
    pub fn squash_gid(mut self, id: u32) -> Self {
        self.squash_gid = Some(id);
        self
    }

    /// Keep owners and modes a user cannot set in an xattr: 0 off, 1
    /// `security.fuseoverlayfs.override_stat`, 2
    /// `user.containers.override_stat`.
    pub fn xattr_permissions(mut self, n: u8) -> Self {
        self.xattr_permissions = (n != 0).then_some(n);
        self
    }

    /// Whether any lower layer was given.
    pub(crate) fn has_lowers(&self) -> bool {
        !self.lowers.is_empty()
    }

    /// Checks the request and turns it into a [`MountConfig`]: layers and
    /// mountpoint exist and are directories, none lies inside another, the
    /// work directory shares the upper's mount and lies outside it, the
    /// mountpoint is not a mount point yet, FUSE is usable. Touches nothing
    /// on disk; the first problem found is the error.
    pub fn validate(self) -> Result<MountConfig, Failure> {
        self.check().map_err(Failure::Invalid)
    }

    fn check(self) -> Result<MountConfig, String> {
        let mut lowers = Vec::new();
        for l in &self.lowers {
            lowers.push(existing_dir("lower layer", l)?);
        }
        if lowers.is_empty() {
            return Err("no --lower given: at least one lower layer is needed".into());
        }
        let threads = match self.threads {
            Some(0) => return Err("--threads must be at least 1".into()),
            Some(n) => n,
            None => std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2),
        };
        let upper = match &self.upper {
            Some(u) => Some(existing_dir("upper layer", u)?),
            None => None,
        };
        let mnt = match &self.mountpoint {
            Some(m) => existing_dir("mountpoint", m)?,
            None => return Err("no mountpoint given".into()),
        };

        for (i, l) in lowers.iter().enumerate() {
            for l2 in &lowers[..i] {
                if l == l2 {
                    return Err(format!("lower layer {} is given twice", l.display()));
                }
            }
            check_apart("mountpoint", &mnt, "lower layer", l)?;
        }
        if let Some(u) = &upper {
            for l in &lowers {
                check_apart("upper layer", u, "lower layer", l)?;
            }
            check_apart("upper layer", u, "mountpoint", &mnt)?;
        }
        let facts =
            sys::mount_facts(&mnt).map_err(|e| format!("mountpoint {}: {e}", mnt.display()))?;
        if facts.is_mount_root {
            // The kernel may answer a stat of a dead mount from its cache; the
            // mount table and the records of live daemons tell.
            let dead = crate::mountinfo::top_at(&mnt)
                .ok()
                .flatten()
                .filter(crate::mountinfo::Entry::is_unionfuse)
                .is_some_and(|e| crate::runtime::Watch::find(&e).is_none());
            if dead {
                return Err(format!(
                    "mountpoint {} is a dead FUSE mount (its unionfuse daemon is gone): clear it with `unionfuse umount {}`",
                    mnt.display(),
                    mnt.display()
                ));
            }
            return Err(format!(
                "mountpoint {} is already a mount point",
                mnt.display()
            ));
        }

        let work = match (&upper, &self.work) {
            (None, Some(_)) => {
                return Err("--work needs --upper: a read-only mount stages nothing".into());
            }
            (None, None) => None,
            (Some(u), w) => Some(check_work(u, w.as_deref(), &lowers, &mnt)?),
        };

        if sys::stat_path(Path::new("/dev/fuse")).is_err() {
            return Err("/dev/fuse does not exist: load the fuse module (modprobe fuse)".into());
        }
        if !sys::is_root() && find_in_path("fusermount3").is_none() {
            return Err(
                "fusermount3 not found: install fuse3 (unprivileged mounts need it)".into(),
            );
        }
        let ids = IdMap {
            uid: id_map(self.uidmap.as_deref(), self.squash_uid)?,
            gid: id_map(self.gidmap.as_deref(), self.squash_gid)?,
        };
        let override_xattr = match self.xattr_permissions {
            None => None,
            Some(1) => Some(override_stat::SECURITY),
            Some(2) => Some(override_stat::CONTAINERS),
            Some(_) => return Err("xattr_permissions must be 0, 1 or 2".into()),
        };
        Ok(MountConfig {
            read_only: self.read_only || upper.is_none(),
            lowers,
            upper,
            work,
            mountpoint: mnt,
            threads,
            cache_timeout: self.cache_timeout,
            debug: self.debug,
            ids,
            override_xattr,
            volatile: self.volatile,
            metacopy: self.metacopy,
            acl: self.acl,
            io_uring: self.io_uring,
            lower_passthrough: self.lower_passthrough,
            nodev: self.nodev,
            nosuid: self.nosuid,
            allow_other: self.allow_other,
            whiteout: self.whiteout,
        })
    }
}

/// One id map: a squash wins over a mapping.
fn id_map(map: Option<&str>, squash: Option<u32>) -> Result<Map, String> {
    match (map, squash) {
        (_, Some(id)) => Ok(Map::squash(id)),
        (Some(v), None) => Map::parse(v),
        (None, None) => Ok(Map::default()),
    }
}

/// Splits one lower list (`--lower` value, `lowerdir=`) on unescaped
/// colons; a backslash escapes the next byte (`\:` is a colon, `\\` a
/// backslash).
pub(crate) fn split_lowers(v: &OsStr) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut cur = Vec::new();
    let mut bytes = v.as_bytes().iter();
    while let Some(&b) = bytes.next() {
        match b {
            b'\\' => {
                if let Some(&n) = bytes.next() {
                    cur.push(n);
                }
            }
            b':' => out.push(PathBuf::from(OsString::from_vec(std::mem::take(&mut cur)))),
            _ => cur.push(b),
        }
    }
    out.push(PathBuf::from(OsString::from_vec(cur)));
    out
}

/// Escapes `:` and `\` so that [`split_lowers`] gives the path back.
pub(crate) fn escape_lower(p: &OsStr) -> OsString {
    let mut out = Vec::with_capacity(p.len());
    for b in p.as_bytes() {
        if matches!(b, b':' | b'\\') {
            out.push(b'\\');
        }
        out.push(*b);
    }
    OsString::from_vec(out)
}

/// What is wrong with a path, as the end of a sentence naming it.
pub(crate) fn describe(e: &std::io::Error) -> String {
    match e.raw_os_error() {
        Some(libc::ENOENT) => "does not exist".into(),
        Some(libc::ENOTDIR) => "is not a directory".into(),
        Some(libc::EACCES) => "is not accessible (permission denied)".into(),
        Some(libc::ENOTCONN) => {
            "is a dead FUSE mount (its daemon is gone): clear it with `unionfuse umount` or `fusermount3 -u`".into()
        }
        _ => e.to_string(),
    }
}

/// An existing directory, made absolute and free of symlinks and `..`.
pub(crate) fn existing_dir(what: &str, p: &Path) -> Result<PathBuf, String> {
    if p.as_os_str().is_empty() {
        return Err(format!("{what} is an empty path"));
    }
    let st = sys::stat_path(p).map_err(|e| format!("{what} {} {}", p.display(), describe(&e)))?;
    if st.st_mode & libc::S_IFMT != libc::S_IFDIR {
        return Err(format!("{what} {} is not a directory", p.display()));
    }
    p.canonicalize()
        .map_err(|e| format!("{what} {}: {e}", p.display()))
}

/// How two canonical paths relate.
fn nested(a: &Path, b: &Path) -> Option<&'static str> {
    if a == b {
        Some("is the same directory as")
    } else if a.starts_with(b) {
        Some("is inside")
    } else if b.starts_with(a) {
        Some("contains")
    } else {
        None
    }
}

fn check_apart(what_a: &str, a: &Path, what_b: &str, b: &Path) -> Result<(), String> {
    match nested(a, b) {
        Some(rel) => Err(format!(
            "{what_a} {} {rel} {what_b} {}",
            a.display(),
            b.display()
        )),
        None => Ok(()),
    }
}

/// `prog` in a directory of `PATH`.
pub(crate) fn find_in_path(prog: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(prog))
        .find(|p| sys::stat_path(p).is_ok())
}

/// Where the daemon stages files when no work directory is given: a hidden
/// sibling of the upper, `<parent>/.<name>.unionfuse-work`, which is on the
/// upper's mount unless the upper is itself a mount root.
pub(crate) fn default_work_dir(upper: &Path) -> Option<PathBuf> {
    let parent = upper.parent()?;
    let name = upper.file_name()?;
    let mut n = std::ffi::OsString::from(".");
    n.push(name);
    n.push(".unionfuse-work");
    Some(parent.join(n))
}

/// Picks and checks the work directory; a missing default one is fine (it is
/// created when mounting), a missing given one is not.
fn check_work(
    upper: &Path,
    given: Option<&Path>,
    lowers: &[PathBuf],
    mnt: &Path,
) -> Result<PathBuf, String> {
    let work = match given {
        Some(w) => existing_dir("work directory", w)?,
        None => default_work_dir(upper)
            .ok_or_else(|| format!("upper layer {} has no parent directory", upper.display()))?,
    };
    check_apart("work directory", &work, "upper layer", upper)?;
    check_apart("work directory", &work, "mountpoint", mnt)?;
    for l in lowers {
        check_apart("work directory", &work, "lower layer", l)?;
    }
    // The mount that matters is the one the work directory is (or will be)
    // on: its own if it exists, else its parent's.
    let probe = if sys::stat_path(&work).is_ok() {
        work.clone()
    } else {
        work.parent().map(Path::to_path_buf).unwrap_or_default()
    };
    let wm =
        sys::mount_facts(&probe).map_err(|e| format!("work directory {}: {e}", work.display()))?;
    let um =
        sys::mount_facts(upper).map_err(|e| format!("upper layer {}: {e}", upper.display()))?;
    if wm.mnt_id != um.mnt_id || (probe != work && um.is_mount_root) {
        return Err(match given {
            Some(_) => format!(
                "work directory {} is not on the same mount as upper layer {}",
                work.display(),
                upper.display()
            ),
            None => format!(
                "upper layer {} is the root of a mount, so no work directory beside it shares its mount: pass --work DIR on that mount",
                upper.display()
            ),
        });
    }
    Ok(work)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_lower_lists() {
        assert_eq!(
            split_lowers(OsStr::new("a:b\\:c:d\\\\")),
            vec![
                PathBuf::from("a"),
                PathBuf::from("b:c"),
                PathBuf::from("d\\")
            ]
        );
        assert_eq!(split_lowers(OsStr::new("/x")), vec![PathBuf::from("/x")]);
        let odd = OsStr::new("/a:b\\c");
        assert_eq!(split_lowers(&escape_lower(odd)), vec![PathBuf::from(odd)]);
    }

    #[test]
    fn relates_paths() {
        let a = Path::new("/a/b");
        assert!(nested(a, Path::new("/a/b")).is_some());
        assert_eq!(nested(a, Path::new("/a")), Some("is inside"));
        assert_eq!(nested(Path::new("/a"), a), Some("contains"));
        assert_eq!(nested(Path::new("/a/bc"), a), None);
    }

    #[test]
    fn refuses_without_touching_anything() {
        let e = MountConfig::builder().mountpoint("/").validate();
        assert!(matches!(e, Err(Failure::Invalid(m)) if m.starts_with("no --lower")));
        let e = MountConfig::builder().lower("/").validate();
        assert!(matches!(e, Err(Failure::Invalid(m)) if m == "no mountpoint given"));
    }
}

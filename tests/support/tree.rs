//! Manifests of directory trees: every object under a root with the
//! attributes that matter, so that two trees (a layer before and after a
//! test, or unionfuse's view and kernel overlayfs's view of the same layers)
//! can be compared field by field, with every difference reported.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::ffi::CString;
use std::fs;
use std::hash::DefaultHasher;
use std::hash::Hasher;
use std::io::Read;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

/// Which xattrs a manifest records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Xattrs {
    /// Every xattr, overlay-private ones included: a layer as it is on disk.
    All,
    /// What a merged view may legitimately show: no `trusted.*` (where
    /// unionfuse keeps private state and the kernel keeps origin/redirect
    /// markers) and no overlay-private `user.*` namespaces.
    Visible,
}

#[derive(Debug, Clone, Copy)]
pub struct Opts {
    pub mtime: bool,
    pub ctime: bool,
    pub nlink: bool,
    pub xattrs: Xattrs,
    /// Hash regular files by their data extents (SEEK_DATA/SEEK_HOLE), so
    /// that a sparse file costs what it holds and a change of layout counts
    /// as a change. Only for real filesystems, where holes are reported.
    pub extents: bool,
    /// Skip entries that readdir lists as character devices and lstat
    /// cannot find: kernel overlayfs lists the whiteouts of a directory that
    /// comes from a single layer but cannot look them up.
    pub skip_phantom_whiteouts: bool,
}

impl Opts {
    /// A layer on disk, for "unchanged" checks: everything, times included.
    pub fn layer() -> Opts {
        Opts {
            mtime: true,
            ctime: true,
            nlink: true,
            xattrs: Xattrs::All,
            extents: true,
            skip_phantom_whiteouts: false,
        }
    }

    /// A merged view to compare with another merged view of the same
    /// layers: times left out, since the two were changed at different
    /// moments.
    pub fn view() -> Opts {
        Opts {
            mtime: false,
            ctime: false,
            nlink: true,
            xattrs: Xattrs::Visible,
            extents: false,
            skip_phantom_whiteouts: true,
        }
    }
}

/// One object of a tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// d, f, l, c, b, p or s.
    pub kind: char,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// For non-directories only: a directory's size is the filesystem's
    /// business.
    pub size: Option<u64>,
    pub nlink: Option<u64>,
    pub rdev: Option<u64>,
    pub mtime: Option<(i64, i64)>,
    pub ctime: Option<(i64, i64)>,
    pub target: Option<String>,
    pub xattrs: BTreeMap<String, Vec<u8>>,
    pub hash: Option<u64>,
}

pub type Manifest = BTreeMap<String, Entry>;

fn cpath(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).expect("nul in path")
}

fn xattr_names(p: &Path) -> Vec<String> {
    let c = cpath(p);
    let mut buf = vec![0u8; 65536];
    // SAFETY: valid C string and a buffer of the given length.
    let rc = unsafe { libc::llistxattr(c.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    assert!(
        rc >= 0,
        "listxattr {}: {}",
        p.display(),
        std::io::Error::last_os_error()
    );
    buf.truncate(rc as usize);
    buf.split(|b| *b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect()
}

fn xattr_value(p: &Path, name: &str) -> Vec<u8> {
    let c = cpath(p);
    let n = CString::new(name).expect("name");
    let mut buf = vec![0u8; 65536];
    // SAFETY: valid C strings and a buffer of the given length.
    let rc = unsafe { libc::lgetxattr(c.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    assert!(
        rc >= 0,
        "getxattr {name} {}: {}",
        p.display(),
        std::io::Error::last_os_error()
    );
    buf.truncate(rc as usize);
    buf
}

/// Whether a merged view may show xattr `name`.
pub fn visible_xattr(name: &str) -> bool {
    !name.starts_with("trusted.")
        && !name.starts_with("user.overlay.")
        && !name.starts_with("user.fuseoverlayfs.")
        && !name.contains(".unionfuse.")
}

fn xattrs(p: &Path, which: Xattrs) -> BTreeMap<String, Vec<u8>> {
    xattr_names(p)
        .into_iter()
        .filter(|n| which == Xattrs::All || visible_xattr(n))
        .map(|n| {
            let v = xattr_value(p, &n);
            (n, v)
        })
        .collect()
}

fn lseek(fd: i32, off: i64, whence: i32) -> Option<i64> {
    // SAFETY: fd is an open descriptor owned by the caller.
    let r = unsafe { libc::lseek(fd, off, whence) };
    (r >= 0).then_some(r)
}

/// Hash of a regular file's contents; with `extents`, of its data extents
/// and where they are.
pub fn hash_file(p: &Path, extents: bool) -> u64 {
    let mut f = fs::File::open(p).unwrap_or_else(|e| panic!("open {}: {e}", p.display()));
    let mut h = DefaultHasher::new();
    let mut buf = vec![0u8; 1 << 20];
    if extents {
        let fd = f.as_raw_fd();
        let mut off = 0i64;
        while let Some(start) = lseek(fd, off, libc::SEEK_DATA) {
            let end = lseek(fd, start, libc::SEEK_HOLE).expect("SEEK_HOLE after SEEK_DATA");
            h.write_i64(start);
            h.write_i64(end);
            let mut pos = start;
            while pos < end {
                let want = ((end - pos) as usize).min(buf.len());
                let n = std::os::unix::fs::FileExt::read_at(&f, &mut buf[..want], pos as u64)
                    .unwrap_or_else(|e| panic!("read {}: {e}", p.display()));
                assert!(n > 0, "short read in {}", p.display());
                h.write(&buf[..n]);
                pos += n as i64;
            }
            off = end;
        }
        return h.finish();
    }
    loop {
        let n = f
            .read(&mut buf)
            .unwrap_or_else(|e| panic!("read {}: {e}", p.display()));
        if n == 0 {
            break;
        }
        h.write(&buf[..n]);
    }
    h.finish()
}

fn entry(p: &Path, md: &fs::Metadata, opts: &Opts) -> Entry {
    let ft = md.file_type();
    let kind = if ft.is_dir() {
        'd'
    } else if ft.is_file() {
        'f'
    } else if ft.is_symlink() {
        'l'
    } else if ft.is_char_device() {
        'c'
    } else if ft.is_block_device() {
        'b'
    } else if ft.is_fifo() {
        'p'
    } else {
        's'
    };
    let is_dir = kind == 'd';
    Entry {
        kind,
        mode: md.mode(),
        uid: md.uid(),
        gid: md.gid(),
        size: (!is_dir).then_some(md.len()),
        nlink: (!is_dir && opts.nlink).then_some(md.nlink()),
        rdev: matches!(kind, 'c' | 'b').then_some(md.rdev()),
        mtime: opts.mtime.then_some((md.mtime(), md.mtime_nsec())),
        ctime: opts.ctime.then_some((md.ctime(), md.ctime_nsec())),
        target: (kind == 'l').then(|| {
            fs::read_link(p)
                .unwrap_or_else(|e| panic!("readlink {}: {e}", p.display()))
                .to_string_lossy()
                .into_owned()
        }),
        xattrs: xattrs(p, opts.xattrs),
        hash: (kind == 'f').then(|| hash_file(p, opts.extents)),
    }
}

/// Every object under `root` (the root itself as ""), by relative path.
pub fn manifest(root: &Path, opts: &Opts) -> Manifest {
    let mut out = Manifest::new();
    let md = fs::symlink_metadata(root).unwrap_or_else(|e| panic!("lstat {}: {e}", root.display()));
    out.insert(String::new(), entry(root, &md, opts));
    // Relative paths as they are: names need not be UTF-8 (the keys show
    // them lossily).
    let mut stack = vec![std::path::PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let dir = root.join(&rel);
        let rd = fs::read_dir(&dir).unwrap_or_else(|e| panic!("read_dir {}: {e}", dir.display()));
        for de in rd {
            let de = de.unwrap_or_else(|e| panic!("readdir {}: {e}", dir.display()));
            let r = rel.join(de.file_name());
            let p = root.join(&r);
            let md = match fs::symlink_metadata(&p) {
                Ok(md) => md,
                Err(e)
                    if opts.skip_phantom_whiteouts
                        && e.raw_os_error() == Some(libc::ENOENT)
                        && de.file_type().map(|t| t.is_char_device()).unwrap_or(false) =>
                {
                    continue;
                }
                Err(e) => panic!("lstat {} (listed by readdir): {e}", p.display()),
            };
            if md.is_dir() {
                stack.push(r.clone());
            }
            out.insert(r.to_string_lossy().into_owned(), entry(&p, &md, opts));
        }
    }
    out
}

/// Every difference between two manifests, one line each.
pub fn diff(a_name: &str, a: &Manifest, b_name: &str, b: &Manifest) -> Vec<String> {
    let mut out = Vec::new();
    for (k, va) in a {
        match b.get(k) {
            None => out.push(format!("{k:?}: only in {a_name}: {va:?}")),
            Some(vb) if vb != va => out.push(format!(
                "{k:?}:\n      {a_name:<10} {va:?}\n      {b_name:<10} {vb:?}"
            )),
            Some(_) => {}
        }
    }
    for (k, vb) in b {
        if !a.contains_key(k) {
            out.push(format!("{k:?}: only in {b_name}: {vb:?}"));
        }
    }
    out
}

/// Panics with every difference when the two manifests differ.
pub fn assert_same(what: &str, a_name: &str, a: &Manifest, b_name: &str, b: &Manifest) {
    let d = diff(a_name, a, b_name, b);
    assert!(
        d.is_empty(),
        "{what}: {} difference(s) between {a_name} and {b_name}:\n  {}",
        d.len(),
        d.join("\n  ")
    );
}

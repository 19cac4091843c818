//! The writable upper layer, with kernel overlayfs as the reference.
//!
//! Three kinds of test:
//! - operation transcripts: one body of syscalls runs on a kernel overlayfs
//!   mount and on a unionfuse mount of identical layers; every step's result
//!   (value or errno) and the final merged tree must agree;
//! - properties of the upper layer on disk (copy-up, whiteouts, opaque
//!   markers, inode numbers), each run on kernel overlayfs too where the
//!   kernel writes the same format, so the expectation itself is checked;
//! - interchange: an upper written by one implementation, read by the other.
//!
//! Every test also checks that no lower layer changed by a single bit.
//! Needs root and kernel overlayfs for the comparisons; as another user the
//! unionfuse side runs alone and what needs root says it was skipped.
#![allow(unsafe_code)]

mod common;
#[path = "support/tree.rs"]
mod tree;

use std::ffi::CString;
use std::fmt;
use std::fs::{self, File};
use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Barrier;
use std::time::{SystemTime, UNIX_EPOCH};

use common::*;
use tree::{Manifest, Opts};

// ---------------------------------------------------------------------------
// Mounts
// ---------------------------------------------------------------------------

/// Whiteout format requested from unionfuse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wh {
    /// No `--whiteout` flag: whatever unionfuse picks.
    Auto,
    Overlay,
    Oci,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Backend {
    Kernel,
    Fuse(Wh),
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Backend::Kernel => write!(f, "kernel overlayfs"),
            Backend::Fuse(Wh::Auto) => write!(f, "unionfuse"),
            Backend::Fuse(Wh::Overlay) => write!(f, "unionfuse --whiteout overlay"),
            Backend::Fuse(Wh::Oci) => write!(f, "unionfuse --whiteout oci"),
        }
    }
}

/// Kernel overlayfs refuses to rename a lower directory (EXDEV) unless
/// redirect_dir is on; unionfuse always renames, so the oracle must too.
const KERNEL_OPTS: &str = "redirect_dir=on";

#[derive(Debug)]
enum Live {
    Fuse(#[allow(dead_code)] Mounted),
    Kernel(#[allow(dead_code)] KernelOverlay),
}

/// Layers, an upper and a mount of them. Field order matters: the mount
/// goes first, then any tmpfs under the upper, then the scratch directory.
#[derive(Debug)]
struct Env {
    live: Option<Live>,
    _tmpfs: Option<Tmpfs>,
    backend: Backend,
    lowers: Vec<PathBuf>,
    upper: PathBuf,
    kwork: PathBuf,
    fwork: PathBuf,
    mnt: PathBuf,
    before: Vec<Manifest>,
    _s: Scratch,
}

impl Env {
    fn new(backend: Backend, nlowers: usize, build: impl FnOnce(&[PathBuf])) -> Env {
        Env::with_upper_fs(backend, nlowers, None, build)
    }

    /// With `upper_tmpfs`, the upper and work directories live on a tmpfs
    /// of that size.
    fn with_upper_fs(
        backend: Backend,
        nlowers: usize,
        upper_tmpfs: Option<&str>,
        build: impl FnOnce(&[PathBuf]),
    ) -> Env {
        let s = Scratch::new();
        let lowers: Vec<PathBuf> = (0..nlowers).map(|i| s.mkdir(&format!("l{i}"))).collect();
        build(&lowers);
        let before = lowers
            .iter()
            .map(|l| tree::manifest(l, &Opts::layer()))
            .collect();
        let tmpfs = upper_tmpfs.map(|size| Tmpfs::new(&s.path("t"), size));
        let base = match &tmpfs {
            Some(t) => t.path.clone(),
            None => s.dir.path().to_path_buf(),
        };
        let upper = base.join("upper");
        let kwork = base.join("kwork");
        let fwork = base.join("fwork");
        for d in [&upper, &kwork, &fwork] {
            fs::create_dir_all(d).expect("mkdir");
        }
        let mut env = Env {
            live: None,
            _tmpfs: tmpfs,
            backend,
            lowers,
            upper,
            kwork,
            fwork,
            mnt: s.mkdir("mnt"),
            before,
            _s: s,
        };
        env.mount();
        env
    }

    fn mount(&mut self) {
        assert!(self.live.is_none());
        let lowers: Vec<&Path> = self.lowers.iter().map(|p| p.as_path()).collect();
        self.live = Some(match self.backend {
            Backend::Kernel => Live::Kernel(
                KernelOverlay::new(
                    &lowers,
                    Some((&self.upper, &self.kwork)),
                    &self.mnt,
                    KERNEL_OPTS,
                )
                .unwrap_or_else(|e| panic!("kernel overlayfs is the oracle here: {e}")),
            ),
            Backend::Fuse(wh) => {
                let work = self.fwork.to_str().expect("utf8").to_string();
                let mut extra = vec!["--work", work.as_str()];
                match wh {
                    Wh::Auto => {}
                    Wh::Overlay => extra.extend(["--whiteout", "overlay"]),
                    Wh::Oci => extra.extend(["--whiteout", "oci"]),
                }
                Live::Fuse(Mounted::new(&lowers, Some(&self.upper), &self.mnt, &extra))
            }
        });
    }

    fn unmount(&mut self) {
        self.live = None;
        assert!(
            !is_mountpoint(&self.mnt),
            "{} still mounted at {}",
            self.backend,
            self.mnt.display()
        );
    }

    fn remount(&mut self) {
        self.unmount();
        self.mount();
    }

    /// Unmounts and mounts the same layers and upper with another
    /// implementation.
    fn remount_as(&mut self, backend: Backend) {
        self.unmount();
        self.backend = backend;
        self.mount();
    }

    fn p(&self, rel: &str) -> PathBuf {
        if rel.is_empty() {
            self.mnt.clone()
        } else {
            self.mnt.join(rel)
        }
    }

    fn up(&self, rel: &str) -> PathBuf {
        if rel.is_empty() {
            self.upper.clone()
        } else {
            self.upper.join(rel)
        }
    }

    fn view(&self) -> Manifest {
        tree::manifest(&self.mnt, &Opts::view())
    }

    /// Unmounts, then checks that every lower layer is exactly as built.
    fn finish(mut self) {
        self.unmount();
        for (i, (l, before)) in self.lowers.iter().zip(&self.before).enumerate() {
            let after = tree::manifest(l, &Opts::layer());
            tree::assert_same(
                &format!("lower layer {i} after a test on {}", self.backend),
                "before",
                before,
                "after",
                &after,
            );
        }
    }
}

// ---------------------------------------------------------------------------
// Syscalls, each answering io::Result so that errnos can be compared
// ---------------------------------------------------------------------------

fn cpath(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).expect("nul in path")
}

fn cvt(rc: libc::c_int) -> io::Result<()> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn open(p: &Path, flags: libc::c_int, mode: u32) -> io::Result<File> {
    let c = cpath(p);
    // SAFETY: c is a valid NUL-terminated path.
    let fd = unsafe { libc::open(c.as_ptr(), flags | libc::O_CLOEXEC, mode as libc::c_uint) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd was just opened and is owned by nobody else.
    Ok(unsafe { File::from_raw_fd(fd) })
}

fn pwrite(f: &File, data: &[u8], off: u64) -> io::Result<()> {
    f.write_all_at(data, off)
}

fn pread(f: &File, len: usize, off: u64) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; len];
    let n = f.read_at(&mut buf, off)?;
    buf.truncate(n);
    Ok(buf)
}

fn fallocate(f: &File, mode: libc::c_int, off: i64, len: i64) -> io::Result<()> {
    // SAFETY: f is an open descriptor.
    cvt(unsafe { libc::fallocate(f.as_raw_fd(), mode, off, len) })
}

fn truncate(p: &Path, len: i64) -> io::Result<()> {
    let c = cpath(p);
    // SAFETY: c is a valid NUL-terminated path.
    cvt(unsafe { libc::truncate(c.as_ptr(), len) })
}

fn fsync(f: &File) -> io::Result<()> {
    // SAFETY: f is an open descriptor.
    cvt(unsafe { libc::fsync(f.as_raw_fd()) })
}

fn fdatasync(f: &File) -> io::Result<()> {
    // SAFETY: f is an open descriptor.
    cvt(unsafe { libc::fdatasync(f.as_raw_fd()) })
}

fn chmod(p: &Path, mode: u32) -> io::Result<()> {
    let c = cpath(p);
    // SAFETY: c is a valid NUL-terminated path.
    cvt(unsafe { libc::chmod(c.as_ptr(), mode) })
}

/// `lchown`; u32::MAX leaves the id unchanged.
fn lchown_(p: &Path, uid: u32, gid: u32) -> io::Result<()> {
    let c = cpath(p);
    // SAFETY: c is a valid NUL-terminated path.
    cvt(unsafe { libc::lchown(c.as_ptr(), uid, gid) })
}

fn chown(p: &Path, uid: u32, gid: u32) -> io::Result<()> {
    let c = cpath(p);
    // SAFETY: c is a valid NUL-terminated path.
    cvt(unsafe { libc::chown(c.as_ptr(), uid, gid) })
}

fn ts(sec: i64, nsec: i64) -> libc::timespec {
    libc::timespec {
        tv_sec: sec,
        tv_nsec: nsec,
    }
}

const NOW: libc::timespec = libc::timespec {
    tv_sec: 0,
    tv_nsec: libc::UTIME_NOW,
};
const OMIT: libc::timespec = libc::timespec {
    tv_sec: 0,
    tv_nsec: libc::UTIME_OMIT,
};

/// `utimensat(AT_FDCWD, p, [atime, mtime], flags)`; `None` passes NULL.
fn utimens(p: &Path, times: Option<[libc::timespec; 2]>, flags: libc::c_int) -> io::Result<()> {
    let c = cpath(p);
    let ptr = times
        .as_ref()
        .map(|t| t.as_ptr())
        .unwrap_or(std::ptr::null());
    // SAFETY: c is a valid path; ptr is NULL or points at two timespecs.
    cvt(unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr(), ptr, flags) })
}

fn mknod_(p: &Path, mode: u32, major: u32, minor: u32) -> io::Result<()> {
    let c = cpath(p);
    // SAFETY: c is a valid NUL-terminated path.
    cvt(unsafe { libc::mknod(c.as_ptr(), mode, libc::makedev(major, minor)) })
}

fn mkdir_(p: &Path, mode: u32) -> io::Result<()> {
    let c = cpath(p);
    // SAFETY: c is a valid NUL-terminated path.
    cvt(unsafe { libc::mkdir(c.as_ptr(), mode) })
}

fn renameat2(a: &Path, b: &Path, flags: u32) -> io::Result<()> {
    let (ca, cb) = (cpath(a), cpath(b));
    // SAFETY: both are valid NUL-terminated paths.
    cvt(unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            ca.as_ptr(),
            libc::AT_FDCWD,
            cb.as_ptr(),
            flags,
        )
    })
}

fn set_xattr(p: &Path, name: &str, value: &[u8], flags: libc::c_int) -> io::Result<()> {
    let c = cpath(p);
    let n = CString::new(name).expect("name");
    // SAFETY: valid C strings and a buffer of the given length.
    cvt(unsafe {
        libc::lsetxattr(
            c.as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            flags,
        )
    })
}

fn remove_xattr(p: &Path, name: &str) -> io::Result<()> {
    let c = cpath(p);
    let n = CString::new(name).expect("name");
    // SAFETY: valid C strings.
    cvt(unsafe { libc::lremovexattr(c.as_ptr(), n.as_ptr()) })
}

/// Visible xattr names (sorted), as a merged view may show them.
fn user_xattrs(p: &Path) -> io::Result<Vec<String>> {
    fs::symlink_metadata(p)?;
    Ok(listxattr(p)
        .into_iter()
        .filter(|n| tree::visible_xattr(n))
        .collect())
}

/// What a step observes of an object: enough to compare, nothing that
/// legitimately differs between two mounts (inode numbers, times).
#[derive(Debug, Clone, PartialEq, Eq)]
struct St {
    kind: char,
    perm: u32,
    uid: u32,
    gid: u32,
    size: Option<u64>,
    nlink: Option<u64>,
    rdev: u64,
}

fn kind_of(md: &fs::Metadata) -> char {
    let ft = md.file_type();
    if ft.is_dir() {
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
    }
}

fn st(p: &Path) -> io::Result<St> {
    let md = fs::symlink_metadata(p)?;
    let dir = md.is_dir();
    Ok(St {
        kind: kind_of(&md),
        perm: md.mode() & 0o7777,
        uid: md.uid(),
        gid: md.gid(),
        size: (!dir).then_some(md.len()),
        nlink: (!dir).then_some(md.nlink()),
        rdev: md.rdev(),
    })
}

fn ino(p: &Path) -> io::Result<u64> {
    Ok(fs::symlink_metadata(p)?.ino())
}

fn mtime(p: &Path) -> io::Result<(i64, i64)> {
    let md = fs::symlink_metadata(p)?;
    Ok((md.mtime(), md.mtime_nsec()))
}

fn atime(p: &Path) -> io::Result<(i64, i64)> {
    let md = fs::symlink_metadata(p)?;
    Ok((md.atime(), md.atime_nsec()))
}

fn content(p: &Path) -> io::Result<String> {
    let mut s = Vec::new();
    File::open(p)?.read_to_end(&mut s)?;
    Ok(String::from_utf8_lossy(&s).into_owned())
}

fn names(dir: &Path) -> io::Result<Vec<String>> {
    let mut v = Vec::new();
    for e in fs::read_dir(dir)? {
        v.push(e?.file_name().to_string_lossy().into_owned());
    }
    v.sort();
    Ok(v)
}

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64
}

fn ename(e: i32) -> String {
    let n = match e {
        libc::EPERM => "EPERM",
        libc::ENOENT => "ENOENT",
        libc::EIO => "EIO",
        libc::EBADF => "EBADF",
        libc::EACCES => "EACCES",
        libc::EEXIST => "EEXIST",
        libc::EXDEV => "EXDEV",
        libc::ENOTDIR => "ENOTDIR",
        libc::EISDIR => "EISDIR",
        libc::EINVAL => "EINVAL",
        libc::ENOSPC => "ENOSPC",
        libc::EROFS => "EROFS",
        libc::EMLINK => "EMLINK",
        libc::ENAMETOOLONG => "ENAMETOOLONG",
        libc::ENOSYS => "ENOSYS",
        libc::ENOTEMPTY => "ENOTEMPTY",
        libc::ENODATA => "ENODATA",
        libc::EOPNOTSUPP => "EOPNOTSUPP",
        libc::EBUSY => "EBUSY",
        libc::ETXTBSY => "ETXTBSY",
        libc::EFBIG => "EFBIG",
        libc::ERANGE => "ERANGE",
        libc::E2BIG => "E2BIG",
        libc::ENXIO => "ENXIO",
        _ => return format!("errno {e}"),
    };
    n.to_string()
}

// ---------------------------------------------------------------------------
// Transcripts
// ---------------------------------------------------------------------------

/// What a body observed, step by step, and which explicit expectations
/// failed.
#[derive(Debug, Default)]
struct Log {
    lines: Vec<String>,
    failures: Vec<String>,
}

impl Log {
    /// Records the outcome of one step and hands back its value.
    fn rec<T: fmt::Debug>(&mut self, what: &str, r: io::Result<T>) -> Option<T> {
        match r {
            Ok(v) => {
                self.lines.push(format!("{what} -> {v:?}"));
                Some(v)
            }
            Err(e) => {
                let s = match e.raw_os_error() {
                    Some(n) => ename(n),
                    None => format!("{e}"),
                };
                self.lines.push(format!("{what} -> {s}"));
                None
            }
        }
    }

    /// Records a step that must succeed; any value is discarded.
    fn ok<T>(&mut self, what: &str, r: io::Result<T>) -> Option<T> {
        match r {
            Ok(v) => {
                self.lines.push(format!("{what} -> ok"));
                Some(v)
            }
            Err(e) => {
                self.rec::<()>(what, Err(e));
                self.failures.push(format!(
                    "{what}: expected success, got {}",
                    self.lines.last().expect("line")
                ));
                None
            }
        }
    }

    /// Records a step that must fail with `want`.
    fn err<T: fmt::Debug>(&mut self, what: &str, r: io::Result<T>, want: i32) {
        let got = r.as_ref().err().and_then(|e| e.raw_os_error());
        self.rec(what, r);
        if got != Some(want) {
            self.failures.push(format!(
                "{what}: expected {}, got {}",
                ename(want),
                self.lines.last().expect("line")
            ));
        }
    }

    /// Checks a value against what kernel overlayfs does. Only the verdict
    /// goes into the transcript: the value itself may be an inode number or
    /// a time, which legitimately differs between two mounts.
    fn expect<T: fmt::Debug + PartialEq>(&mut self, what: &str, got: T, want: T) {
        if got == want {
            self.lines.push(format!("{what}: as expected"));
        } else {
            let msg = format!("{what}: got {got:?}, expected {want:?}");
            self.lines.push(msg.clone());
            self.failures.push(msg);
        }
    }
}

/// Runs `body` on kernel overlayfs and on unionfuse over identical layers.
/// The kernel run must meet the body's explicit expectations (else the test
/// itself is wrong); unionfuse must meet them too, produce the same
/// transcript and end with the same merged tree.
fn same_as_kernel(what: &str, build: fn(&[PathBuf]), body: impl Fn(&Env, &mut Log)) {
    let run = |backend: Backend| {
        let env = Env::new(backend, 2, build);
        let mut log = Log::default();
        body(&env, &mut log);
        let view = env.view();
        env.finish();
        (log, view)
    };
    if !is_root() {
        let (flog, _) = run(Backend::Fuse(Wh::Auto));
        assert!(
            flog.failures.is_empty(),
            "{what}: unionfuse does not meet the test's expectations:\n  {}",
            flog.failures.join("\n  ")
        );
        skip_as_non_root(&format!(
            "{what}: transcript not compared with kernel overlayfs (needs root); \
             only the explicit expectations were checked"
        ));
        return;
    }
    let (klog, kview) = run(Backend::Kernel);
    assert!(
        klog.failures.is_empty(),
        "{what}: kernel overlayfs does not meet the test's expectations (fix the test):\n  {}",
        klog.failures.join("\n  ")
    );
    let (flog, fview) = run(Backend::Fuse(Wh::Auto));
    let mut problems: Vec<String> = flog
        .failures
        .iter()
        .map(|f| format!("expectation: {f}"))
        .collect();
    for i in 0..klog.lines.len().max(flog.lines.len()) {
        let k = klog.lines.get(i).map(String::as_str).unwrap_or("<none>");
        let f = flog.lines.get(i).map(String::as_str).unwrap_or("<none>");
        if k != f {
            problems.push(format!(
                "step {i}:\n      kernel    {k}\n      unionfuse {f}"
            ));
        }
    }
    for d in tree::diff("kernel", &kview, "unionfuse", &fview) {
        problems.push(format!("final tree: {d}"));
    }
    assert!(
        problems.is_empty(),
        "{what}: unionfuse differs from kernel overlayfs ({} problem(s)):\n  {}",
        problems.len(),
        problems.join("\n  ")
    );
}

// ---------------------------------------------------------------------------
// Layers
// ---------------------------------------------------------------------------

fn set_times(p: &Path, atime: (i64, i64), mtime: (i64, i64)) {
    utimens(
        p,
        Some([ts(atime.0, atime.1), ts(mtime.0, mtime.1)]),
        libc::AT_SYMLINK_NOFOLLOW,
    )
    .unwrap_or_else(|e| panic!("utimensat {}: {e}", p.display()));
}

/// Fixed, distinct times on every object of a layer (children before their
/// directory, whose mtime their creation changed).
fn fix_tree_times(root: &Path) {
    fn go(p: &Path, seq: &mut i64) {
        let md = fs::symlink_metadata(p).expect("lstat");
        if md.is_dir() {
            let mut kids: Vec<PathBuf> = fs::read_dir(p)
                .expect("read_dir")
                .map(|e| e.expect("entry").path())
                .collect();
            kids.sort();
            for k in kids {
                go(&k, seq);
            }
        }
        *seq += 1;
        set_times(
            p,
            (1_400_000_000 + *seq, 111_000_000),
            (1_500_000_000 + *seq, 222_000_000),
        );
    }
    let mut seq = 0;
    go(root, &mut seq);
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

/// A valid VFS_CAP_REVISION_2 security.capability value (effective,
/// CAP_NET_BIND_SERVICE permitted).
fn cap_blob() -> Vec<u8> {
    let mut v = Vec::new();
    for w in [0x0200_0001u32, 1 << 10, 0, 0, 0] {
        v.extend_from_slice(&w.to_le_bytes());
    }
    v
}

/// Two lowers (index 0 on top) with a bit of everything.
fn base(l: &[PathBuf]) {
    let (top, bot) = (&l[0], &l[1]);
    write(bot, "f", "bottom f, shadowed\n");
    write(bot, "merged/m_low", "m low\n");
    write(bot, "merged/sub/deep", "deep\n");
    write(bot, "gone/child", "hidden by a whiteout above\n");
    write(bot, "opq/old", "hidden by an opaque dir above\n");
    write(bot, "d2/c1", "c1\n");

    write(top, "f", "hello lower\n");
    setxattr(top, "f", "user.a", b"1");
    write(top, "g", "second file\n");
    common::chmod(top, "g", 0o600);
    fs::write(top.join("big"), pattern(65536)).expect("write big");
    write(top, "exe", "#!/bin/sh\n");
    common::chmod(top, "exe", 0o755);
    if is_root() {
        lchown(top, "exe", 1000, 1000);
    }
    link(top, "sym", "f");
    write(top, "dir/a", "a\n");
    write(top, "dir/sub/b", "b\n");
    write(top, "lonly/x", "x\n");
    write(top, "lonly/y", "y\n");
    mkdir(top, "emptydir");
    write(top, "merged/m_top", "m top\n");
    whiteout_chr(top, "gone");
    write(top, "opq/new", "new\n");
    setxattr(top, "opq", opaque_xattr(), b"y");
    write(top, "d2/c2", "c2\n");
    mkfifo(top, "p", 0o644);
    mkdir(top, "xdir");
    setxattr(top, "xdir", "user.d", b"dir");
    fix_tree_times(top);
    fix_tree_times(bot);
}

// ---------------------------------------------------------------------------
// 1. Operations, step by step against kernel overlayfs
// ---------------------------------------------------------------------------

#[test]
fn ops_create_and_open_flags() {
    same_as_kernel("create/open", base, |e, log| {
        let o = libc::O_CREAT | libc::O_WRONLY | libc::O_EXCL;
        if let Some(f) = log.ok("creat new 0640", open(&e.p("new"), o, 0o640)) {
            log.ok("write new", pwrite(&f, b"data", 0));
        }
        log.rec("stat new", st(&e.p("new")));
        log.rec("content new", content(&e.p("new")));
        log.err("O_EXCL on lower f", open(&e.p("f"), o, 0o644), libc::EEXIST);
        log.err(
            "O_EXCL on symlink",
            open(&e.p("sym"), o, 0o644),
            libc::EEXIST,
        );
        log.err(
            "O_EXCL on lower dir",
            open(&e.p("dir"), o, 0o644),
            libc::EEXIST,
        );
        log.ok(
            "O_CREAT over a lower whiteout",
            open(&e.p("gone"), libc::O_CREAT | libc::O_WRONLY, 0o600),
        );
        log.rec("stat gone", st(&e.p("gone")));

        // A descriptor opened read-only before the copy-up must see the
        // data written afterwards through another descriptor.
        let early = log.ok("O_RDONLY f before any write", File::open(e.p("f")));
        if let Some(f) = log.ok("O_WRONLY f", open(&e.p("f"), libc::O_WRONLY, 0)) {
            log.ok("pwrite HE at 0", pwrite(&f, b"HE", 0));
        }
        log.expect(
            "content f",
            content(&e.p("f")).ok(),
            Some("HEllo lower\n".into()),
        );
        if let Some(r) = early {
            log.rec("pread via the early read-only fd", pread(&r, 64, 0));
        }

        if let Some(f) = log.ok("O_RDWR g", open(&e.p("g"), libc::O_RDWR, 0)) {
            log.rec("read g", pread(&f, 64, 0));
            log.ok("pwrite past EOF", pwrite(&f, b"XYZ", 20));
            log.rec("fstat size", f.metadata().map(|m| m.len()));
        }
        log.rec("content g", fs::read(e.p("g")));

        if let Some(f) = log.ok(
            "O_TRUNC big",
            open(&e.p("big"), libc::O_WRONLY | libc::O_TRUNC, 0),
        ) {
            log.rec("fstat after O_TRUNC", f.metadata().map(|m| m.len()));
        }
        log.rec("stat big", st(&e.p("big")));

        if let Some(f) = log.ok(
            "O_APPEND exe",
            open(&e.p("exe"), libc::O_WRONLY | libc::O_APPEND, 0),
        ) {
            log.ok("append 1", (&f).write_all_ref(b"echo hi\n"));
            log.ok("append 2", (&f).write_all_ref(b"exit 0\n"));
        }
        log.rec("content exe", content(&e.p("exe")));
        log.rec("stat exe", st(&e.p("exe")));

        if let Some(f) = log.ok(
            "O_CREAT|O_RDWR existing lower dir/a",
            open(&e.p("dir/a"), libc::O_CREAT | libc::O_RDWR, 0o600),
        ) {
            log.rec("read dir/a", pread(&f, 16, 0));
        }
        log.rec("stat dir/a", st(&e.p("dir/a")));
        log.err(
            "O_WRONLY on a dir",
            open(&e.p("dir"), libc::O_WRONLY, 0),
            libc::EISDIR,
        );
        if let Some(f) = log.ok(
            "O_WRONLY|O_APPEND via symlink",
            open(&e.p("sym"), libc::O_WRONLY | libc::O_APPEND, 0),
        ) {
            log.ok("append via symlink", (&f).write_all_ref(b"!"));
        }
        log.rec("content f after symlink write", content(&e.p("f")));
        log.rec("lstat sym", st(&e.p("sym")));

        if let Some(f) = log.ok(
            "creat sparse",
            open(&e.p("dir/new2"), libc::O_CREAT | libc::O_RDWR, 0o644),
        ) {
            for off in [0u64, 4096, 10000] {
                log.ok(&format!("pwrite at {off}"), pwrite(&f, b"a", off));
            }
            log.rec("fstat size", f.metadata().map(|m| m.len()));
            log.rec("pread 4095..4098", pread(&f, 3, 4095));
        }
        log.rec("ls dir", names(&e.p("dir")));
        log.rec("ls /", names(&e.p("")));
    });
}

/// A step that needs privilege: it must succeed as root and fail with EPERM
/// as anyone else.
fn privileged<T: fmt::Debug>(log: &mut Log, what: &str, r: io::Result<T>) -> Option<T> {
    if is_root() {
        log.ok(what, r)
    } else {
        log.err(what, r, libc::EPERM);
        None
    }
}

/// `write_all` through a shared reference, so that a File kept in an
/// Option can be written without a `mut` binding.
trait WriteRef {
    fn write_all_ref(self, data: &[u8]) -> io::Result<()>;
}

impl WriteRef for &File {
    fn write_all_ref(mut self, data: &[u8]) -> io::Result<()> {
        io::Write::write_all(&mut self, data)
    }
}

#[test]
fn ops_truncate_and_fallocate() {
    same_as_kernel("truncate/fallocate", base, |e, log| {
        log.ok("truncate f to 5", truncate(&e.p("f"), 5));
        log.expect("content f", content(&e.p("f")).ok(), Some("hello".into()));
        log.ok("truncate g to 100", truncate(&e.p("g"), 100));
        log.rec("stat g", st(&e.p("g")));
        log.rec("content g", fs::read(e.p("g")));
        log.err("truncate a dir", truncate(&e.p("dir"), 0), libc::EISDIR);
        log.err("truncate to -1", truncate(&e.p("exe"), -1), libc::EINVAL);
        log.err("truncate missing", truncate(&e.p("nope"), 0), libc::ENOENT);
        // A reader holds the file open (in the upper after the truncates
        // above): a truncate by path must not go through its handle.
        if let Some(r) = log.ok("open g O_RDONLY", File::open(e.p("g"))) {
            log.ok(
                "truncate g to 7 while a reader has it",
                truncate(&e.p("g"), 7),
            );
            log.rec("size through the reader", r.metadata().map(|m| m.len()));
        }

        if let Some(f) = log.ok("open dir/a O_RDWR", open(&e.p("dir/a"), libc::O_RDWR, 0)) {
            log.ok("ftruncate 3", f.set_len(3));
            log.rec("fstat", f.metadata().map(|m| m.len()));
        }
        log.rec("content dir/a", fs::read(e.p("dir/a")));

        if let Some(f) = log.ok("open big O_RDWR", open(&e.p("big"), libc::O_RDWR, 0)) {
            log.ok(
                "punch hole 4096+8192 keep size",
                fallocate(
                    &f,
                    libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                    4096,
                    8192,
                ),
            );
            log.rec("size after punch", f.metadata().map(|m| m.len()));
            let mut want = pattern(65536);
            want[4096..12288].fill(0);
            log.expect(
                "content after punch",
                fs::read(e.p("big")).ok() == Some(want),
                true,
            );
            log.err(
                "punch hole without KEEP_SIZE",
                fallocate(&f, libc::FALLOC_FL_PUNCH_HOLE, 0, 10),
                libc::EOPNOTSUPP,
            );
            log.ok("fallocate grow to 128 KiB", fallocate(&f, 0, 0, 131072));
            log.rec("size after grow", f.metadata().map(|m| m.len()));
            log.ok(
                "fallocate KEEP_SIZE past EOF",
                fallocate(&f, libc::FALLOC_FL_KEEP_SIZE, 131072, 65536),
            );
            log.rec("size after KEEP_SIZE", f.metadata().map(|m| m.len()));
        }
        log.rec("stat big", st(&e.p("big")));
        if let Some(f) = log.ok("open exe O_RDONLY", File::open(e.p("exe"))) {
            log.err(
                "fallocate on a read-only fd",
                fallocate(&f, 0, 0, 4096),
                libc::EBADF,
            );
        }
        log.rec("stat exe", st(&e.p("exe")));
    });
}

#[test]
fn ops_fsync_and_fdatasync() {
    same_as_kernel("fsync", base, |e, log| {
        if let Some(f) = log.ok("open f O_WRONLY", open(&e.p("f"), libc::O_WRONLY, 0)) {
            log.ok("pwrite", pwrite(&f, b"synced", 0));
            log.ok("fsync", fsync(&f));
            log.ok("fdatasync", fdatasync(&f));
        }
        if let Some(f) = log.ok("open g O_RDONLY", File::open(e.p("g"))) {
            log.ok("fsync a read-only lower file", fsync(&f));
            log.ok("fdatasync a read-only lower file", fdatasync(&f));
        }
        if let Some(d) = log.ok("open dir", File::open(e.p("dir"))) {
            log.ok("fsync a lower dir", fsync(&d));
        }
        if let Some(f) = log.ok(
            "creat n",
            open(&e.p("dir/n"), libc::O_CREAT | libc::O_WRONLY, 0o644),
        ) {
            log.ok("write n", pwrite(&f, b"n", 0));
            log.ok("fsync n", fsync(&f));
        }
        if let Some(d) = log.ok("open dir again", File::open(e.p("dir"))) {
            log.ok("fsync the dir", fsync(&d));
        }
        log.rec("content f", content(&e.p("f")));
        log.rec("content g", content(&e.p("g")));
    });
}

#[test]
fn ops_chmod_chown_utimensat() {
    same_as_kernel("chmod/chown/utimensat", base, |e, log| {
        log.ok("chmod f 0600", chmod(&e.p("f"), 0o600));
        log.expect("perm f", st(&e.p("f")).ok().map(|s| s.perm), Some(0o600));
        log.ok("chmod lower dir 0700", chmod(&e.p("dir"), 0o700));
        log.rec("stat dir", st(&e.p("dir")));
        log.rec("stat dir/a", st(&e.p("dir/a")));
        log.rec("ls dir", names(&e.p("dir")));
        privileged(log, "chown g 1234:5678", chown(&e.p("g"), 1234, 5678));
        log.rec("stat g", st(&e.p("g")));
        privileged(log, "lchown sym 42:43", lchown_(&e.p("sym"), 42, 43));
        log.rec("lstat sym", st(&e.p("sym")));
        log.rec("stat f (the target)", st(&e.p("f")));
        privileged(log, "chown exe gid only", chown(&e.p("exe"), u32::MAX, 99));
        log.rec("stat exe", st(&e.p("exe")));
        log.ok("chmod via symlink 0640", chmod(&e.p("sym"), 0o640));
        log.rec("stat f", st(&e.p("f")));
        log.rec("lstat sym", st(&e.p("sym")));
        log.ok("chmod fifo 0600", chmod(&e.p("p"), 0o600));
        log.rec("stat p", st(&e.p("p")));
        log.ok("chmod exe 04755", chmod(&e.p("exe"), 0o4755));
        log.rec("stat exe", st(&e.p("exe")));
        // chown of an executable drops set-id bits, even for root.
        privileged(log, "chown exe 7:8", chown(&e.p("exe"), 7, 8));
        log.rec("stat exe", st(&e.p("exe")));
        log.err("chmod missing", chmod(&e.p("nope"), 0o644), libc::ENOENT);

        log.ok(
            "utimensat g explicit",
            utimens(&e.p("g"), Some([ts(1000, 5), ts(2000, 6)]), 0),
        );
        log.expect("atime g", atime(&e.p("g")).ok(), Some((1000, 5)));
        log.expect("mtime g", mtime(&e.p("g")).ok(), Some((2000, 6)));

        let m0 = mtime(&e.p("dir/sub/b")).ok();
        log.ok(
            "utimensat NOW/OMIT",
            utimens(&e.p("dir/sub/b"), Some([NOW, OMIT]), 0),
        );
        log.expect("mtime kept by OMIT", mtime(&e.p("dir/sub/b")).ok(), m0);
        let a = atime(&e.p("dir/sub/b")).map(|a| a.0).unwrap_or(0);
        log.expect("atime set to now", (now_secs() - a).abs() < 60, true);
        let a0 = atime(&e.p("dir/sub/b")).ok();
        log.ok(
            "utimensat OMIT/NOW",
            utimens(&e.p("dir/sub/b"), Some([OMIT, NOW]), 0),
        );
        log.expect("atime kept by OMIT", atime(&e.p("dir/sub/b")).ok(), a0);
        let m = mtime(&e.p("dir/sub/b")).map(|m| m.0).unwrap_or(0);
        log.expect("mtime set to now", (now_secs() - m).abs() < 60, true);

        log.ok(
            "utimensat symlink NOFOLLOW",
            utimens(
                &e.p("sym"),
                Some([ts(5, 0), ts(6, 0)]),
                libc::AT_SYMLINK_NOFOLLOW,
            ),
        );
        log.expect("mtime sym", mtime(&e.p("sym")).ok(), Some((6, 0)));
        log.ok(
            "utimensat lower dir",
            utimens(&e.p("xdir"), Some([ts(7, 0), ts(8, 9)]), 0),
        );
        log.expect("mtime xdir", mtime(&e.p("xdir")).ok(), Some((8, 9)));
        log.ok("utimensat NULL", utimens(&e.p("merged/m_low"), None, 0));
        let m = mtime(&e.p("merged/m_low")).map(|m| m.0).unwrap_or(0);
        log.expect("mtime now after NULL", (now_secs() - m).abs() < 60, true);
        log.rec("content merged/m_low", content(&e.p("merged/m_low")));
    });
}

#[test]
fn ops_mkdir_mknod_symlink() {
    same_as_kernel("mkdir/mknod/symlink", base, |e, log| {
        log.ok("mkdir newd", mkdir_(&e.p("newd"), 0o751));
        log.rec("stat newd", st(&e.p("newd")));
        log.ok("mkdir newd/inner", mkdir_(&e.p("newd/inner"), 0o700));
        log.rec("ls newd", names(&e.p("newd")));
        log.err("mkdir lower dir", mkdir_(&e.p("dir"), 0o755), libc::EEXIST);
        log.err(
            "mkdir over lower file",
            mkdir_(&e.p("f"), 0o755),
            libc::EEXIST,
        );
        log.err("mkdir over fifo", mkdir_(&e.p("p"), 0o755), libc::EEXIST);
        log.ok("mkdir over a lower whiteout", mkdir_(&e.p("gone"), 0o755));
        log.expect("ls gone", names(&e.p("gone")).ok(), Some(vec![]));
        log.err(
            "stat gone/child",
            fs::symlink_metadata(e.p("gone/child")),
            libc::ENOENT,
        );
        log.ok("mkdir in a lower dir", mkdir_(&e.p("dir/sub2"), 0o755));
        log.rec("ls dir", names(&e.p("dir")));
        log.ok("mkdir in a merged dir", mkdir_(&e.p("merged/sub/x"), 0o755));
        log.rec("ls merged/sub", names(&e.p("merged/sub")));
        log.err(
            "mkdir with missing parent",
            mkdir_(&e.p("nope/x"), 0o755),
            libc::ENOENT,
        );

        log.ok(
            "mknod fifo",
            mknod_(&e.p("nf"), libc::S_IFIFO | 0o644, 0, 0),
        );
        log.rec("stat nf", st(&e.p("nf")));
        log.ok(
            "mknod socket",
            mknod_(&e.p("dir/ns"), libc::S_IFSOCK | 0o644, 0, 0),
        );
        log.rec("stat ns", st(&e.p("dir/ns")));
        privileged(
            log,
            "mknod char 1:3",
            mknod_(&e.p("nc"), libc::S_IFCHR | 0o644, 1, 3),
        );
        log.rec("stat nc", st(&e.p("nc")));
        privileged(
            log,
            "mknod block 7:0",
            mknod_(&e.p("nb"), libc::S_IFBLK | 0o600, 7, 0),
        );
        log.rec("stat nb", st(&e.p("nb")));
        log.err(
            "mknod over lower file",
            mknod_(&e.p("f"), libc::S_IFIFO | 0o644, 0, 0),
            libc::EEXIST,
        );
        // A 0:0 character device is a whiteout on disk: overlayfs refuses
        // to create one through the mount.
        log.rec(
            "mknod char 0:0",
            mknod_(&e.p("wh0"), libc::S_IFCHR | 0o644, 0, 0),
        );
        log.rec("stat wh0", st(&e.p("wh0")));

        log.ok(
            "symlink nl",
            std::os::unix::fs::symlink("target/x", e.p("nl")),
        );
        log.rec("lstat nl", st(&e.p("nl")));
        log.rec("readlink nl", fs::read_link(e.p("nl")));
        log.err(
            "symlink over lower file",
            std::os::unix::fs::symlink("x", e.p("f")),
            libc::EEXIST,
        );
        log.ok(
            "symlink in lower dir",
            std::os::unix::fs::symlink("../f", e.p("dir/sl")),
        );
        log.rec("read through dir/sl", content(&e.p("dir/sl")));
        log.ok(
            "symlink over lower whiteout",
            std::os::unix::fs::symlink("f", e.p("merged/sub/deep2")),
        );
        log.rec("ls /", names(&e.p("")));
    });
}

#[test]
fn ops_hard_links() {
    same_as_kernel("link", base, |e, log| {
        let before = ino(&e.p("f")).ok();
        log.ok("link f f2", fs::hard_link(e.p("f"), e.p("f2")));
        log.rec("stat f", st(&e.p("f")));
        log.rec("stat f2", st(&e.p("f2")));
        log.expect(
            "nlink f, f2",
            (
                st(&e.p("f")).ok().and_then(|s| s.nlink),
                st(&e.p("f2")).ok().and_then(|s| s.nlink),
            ),
            (Some(2), Some(2)),
        );
        log.expect("same st_ino", ino(&e.p("f")).ok(), ino(&e.p("f2")).ok());
        log.expect("st_ino kept", ino(&e.p("f")).ok(), before);
        log.expect(
            "data through f2",
            content(&e.p("f2")).ok(),
            Some("hello lower\n".into()),
        );
        if let Some(f) = log.ok(
            "open f2 O_APPEND",
            open(&e.p("f2"), libc::O_WRONLY | libc::O_APPEND, 0),
        ) {
            log.ok("append via f2", (&f).write_all_ref(b"more\n"));
        }
        log.expect(
            "f sees it",
            content(&e.p("f")).ok(),
            Some("hello lower\nmore\n".into()),
        );
        log.err(
            "link onto existing",
            fs::hard_link(e.p("f"), e.p("g")),
            libc::EEXIST,
        );
        log.err(
            "link a dir",
            fs::hard_link(e.p("dir"), e.p("dl")),
            libc::EPERM,
        );
        log.err(
            "link missing",
            fs::hard_link(e.p("nope"), e.p("n2")),
            libc::ENOENT,
        );
        log.ok("mkdir newdir", mkdir_(&e.p("newdir"), 0o755));
        log.ok("link f newdir/x", fs::hard_link(e.p("f"), e.p("newdir/x")));
        log.ok("link f dir/f3", fs::hard_link(e.p("f"), e.p("dir/f3")));
        log.rec("stat f", st(&e.p("f")));
        log.expect(
            "one st_ino for all",
            [e.p("f2"), e.p("newdir/x"), e.p("dir/f3")]
                .iter()
                .all(|p| ino(p).ok() == ino(&e.p("f")).ok()),
            true,
        );
        log.ok("unlink f", fs::remove_file(e.p("f")));
        log.rec("stat f2", st(&e.p("f2")));
        log.rec("content dir/f3", content(&e.p("dir/f3")));

        log.ok("link symlink", fs::hard_link(e.p("sym"), e.p("sym2")));
        log.rec("lstat sym2", st(&e.p("sym2")));
        log.rec("readlink sym2", fs::read_link(e.p("sym2")));

        let a = ino(&e.p("dir/a")).ok();
        log.ok(
            "link dir/a a_link",
            fs::hard_link(e.p("dir/a"), e.p("a_link")),
        );
        log.rec("stat a_link", st(&e.p("a_link")));
        log.expect("a_link st_ino", ino(&e.p("a_link")).ok(), a);
        log.ok("link over whiteout", fs::hard_link(e.p("g"), e.p("gone")));
        log.rec("stat gone", st(&e.p("gone")));
        log.rec("ls /", names(&e.p("")));
    });
}

#[test]
fn ops_unlink_and_rmdir() {
    same_as_kernel("unlink/rmdir", base, |e, log| {
        log.ok("unlink f", fs::remove_file(e.p("f")));
        log.err("stat f", fs::symlink_metadata(e.p("f")), libc::ENOENT);
        log.err("unlink f again", fs::remove_file(e.p("f")), libc::ENOENT);
        log.expect(
            "f listed",
            names(&e.p("")).ok().map(|n| n.contains(&"f".to_string())),
            Some(false),
        );
        log.ok("re-create f", fs::write(e.p("f"), "new f"));
        log.expect("content f", content(&e.p("f")).ok(), Some("new f".into()));
        log.err("unlink a dir", fs::remove_file(e.p("dir")), libc::EISDIR);
        log.err("rmdir a file", fs::remove_dir(e.p("f")), libc::ENOTDIR);
        log.err(
            "rmdir lower dir",
            fs::remove_dir(e.p("dir")),
            libc::ENOTEMPTY,
        );
        log.err(
            "rmdir merged dir",
            fs::remove_dir(e.p("merged")),
            libc::ENOTEMPTY,
        );
        log.err(
            "rmdir dir with lower children only",
            fs::remove_dir(e.p("lonly")),
            libc::ENOTEMPTY,
        );
        log.ok("copy it up (chmod)", chmod(&e.p("lonly"), 0o700));
        log.err(
            "rmdir copied-up dir with lower children only",
            fs::remove_dir(e.p("lonly")),
            libc::ENOTEMPTY,
        );
        log.ok("unlink lonly/x", fs::remove_file(e.p("lonly/x")));
        log.err(
            "rmdir with one lower child left",
            fs::remove_dir(e.p("lonly")),
            libc::ENOTEMPTY,
        );
        log.ok("unlink lonly/y", fs::remove_file(e.p("lonly/y")));
        log.expect("ls lonly", names(&e.p("lonly")).ok(), Some(vec![]));
        log.ok("rmdir emptied lonly", fs::remove_dir(e.p("lonly")));
        log.err(
            "stat lonly",
            fs::symlink_metadata(e.p("lonly")),
            libc::ENOENT,
        );

        log.ok("unlink d2/c1 (bottom)", fs::remove_file(e.p("d2/c1")));
        log.ok("unlink d2/c2 (top)", fs::remove_file(e.p("d2/c2")));
        log.ok(
            "rmdir d2, emptied across two lowers",
            fs::remove_dir(e.p("d2")),
        );
        log.ok("rmdir empty lower dir", fs::remove_dir(e.p("emptydir")));
        log.err(
            "rmdir opaque dir",
            fs::remove_dir(e.p("opq")),
            libc::ENOTEMPTY,
        );
        log.ok("unlink opq/new", fs::remove_file(e.p("opq/new")));
        log.ok(
            "rmdir opaque dir (hidden child below)",
            fs::remove_dir(e.p("opq")),
        );
        log.ok("unlink symlink", fs::remove_file(e.p("sym")));
        log.rec("stat f", st(&e.p("f")));
        log.ok("unlink fifo", fs::remove_file(e.p("p")));
        log.err(
            "rmdir whited-out name",
            fs::remove_dir(e.p("gone")),
            libc::ENOENT,
        );
        log.ok("mkdir lonly again", mkdir_(&e.p("lonly"), 0o755));
        log.expect("ls lonly", names(&e.p("lonly")).ok(), Some(vec![]));
        log.ok("mkdir d2 again", mkdir_(&e.p("d2"), 0o755));
        log.expect("ls d2", names(&e.p("d2")).ok(), Some(vec![]));
        log.err(
            "stat d2/c1",
            fs::symlink_metadata(e.p("d2/c1")),
            libc::ENOENT,
        );
        log.ok("rm -rf merged", fs::remove_dir_all(e.p("merged")));
        log.err(
            "stat merged",
            fs::symlink_metadata(e.p("merged")),
            libc::ENOENT,
        );
        log.rec("ls /", names(&e.p("")));
    });
}

#[test]
fn ops_xattrs() {
    same_as_kernel("xattrs", base, |e, log| {
        let cap = cap_blob();
        log.ok(
            "set user.new on f",
            set_xattr(&e.p("f"), "user.new", b"v", 0),
        );
        log.expect(
            "get user.new",
            getxattr(&e.p("f"), "user.new").ok(),
            Some(b"v".to_vec()),
        );
        log.expect(
            "lower's user.a kept",
            getxattr(&e.p("f"), "user.a").ok(),
            Some(b"1".to_vec()),
        );
        log.rec("list f", user_xattrs(&e.p("f")));
        log.err(
            "XATTR_CREATE existing",
            set_xattr(&e.p("f"), "user.a", b"2", libc::XATTR_CREATE),
            libc::EEXIST,
        );
        log.err(
            "XATTR_REPLACE missing",
            set_xattr(&e.p("f"), "user.zz", b"2", libc::XATTR_REPLACE),
            libc::ENODATA,
        );
        log.ok(
            "XATTR_REPLACE existing",
            set_xattr(&e.p("f"), "user.new", b"w", libc::XATTR_REPLACE),
        );
        log.ok("remove lower's user.a", remove_xattr(&e.p("f"), "user.a"));
        log.err("get user.a", getxattr(&e.p("f"), "user.a"), libc::ENODATA);
        log.err(
            "remove user.a again",
            remove_xattr(&e.p("f"), "user.a"),
            libc::ENODATA,
        );
        log.rec("list f", user_xattrs(&e.p("f")));
        log.ok(
            "remove from an uncopied file",
            remove_xattr(&e.p("g"), "user.none").or_else(|e| {
                if e.raw_os_error() == Some(libc::ENODATA) {
                    Ok(())
                } else {
                    Err(e)
                }
            }),
        );
        log.ok(
            "set user.x on a lower dir",
            set_xattr(&e.p("xdir"), "user.x", b"1", 0),
        );
        log.rec("list xdir", user_xattrs(&e.p("xdir")));
        log.rec("get xdir user.d", getxattr(&e.p("xdir"), "user.d"));
        log.err(
            "user.* on a symlink",
            set_xattr(&e.p("sym"), "user.x", b"1", 0),
            libc::EPERM,
        );
        let big = vec![b'z'; 4000];
        log.ok(
            "4000-byte value",
            set_xattr(&e.p("exe"), "user.big", &big, 0),
        );
        log.expect(
            "read it back",
            getxattr(&e.p("exe"), "user.big").ok(),
            Some(big),
        );

        // Setting file capabilities needs CAP_SETFCAP.
        privileged(
            log,
            "set security.capability on g",
            set_xattr(&e.p("g"), "security.capability", &cap, 0),
        );
        log.expect(
            "get security.capability",
            getxattr(&e.p("g"), "security.capability").ok(),
            is_root().then(|| cap.clone()),
        );
        log.ok("chmod g keeps caps", chmod(&e.p("g"), 0o700));
        log.expect(
            "security.capability after chmod",
            getxattr(&e.p("g"), "security.capability").ok(),
            is_root().then(|| cap.clone()),
        );
        // A write drops file capabilities (killpriv), even for root.
        if let Some(f) = log.ok(
            "open g O_APPEND",
            open(&e.p("g"), libc::O_WRONLY | libc::O_APPEND, 0),
        ) {
            log.ok("write g", (&f).write_all_ref(b"x"));
        }
        log.rec(
            "security.capability after a write",
            getxattr(&e.p("g"), "security.capability"),
        );
        log.rec("ls /", names(&e.p("")));
    });
}

#[test]
fn ops_rename_files_and_errors() {
    same_as_kernel("rename", base, |e, log| {
        log.ok("rename f over g", fs::rename(e.p("f"), e.p("g")));
        log.err("stat f", fs::symlink_metadata(e.p("f")), libc::ENOENT);
        log.expect(
            "content g",
            content(&e.p("g")).ok(),
            Some("hello lower\n".into()),
        );
        log.rec("get user.a on g", getxattr(&e.p("g"), "user.a"));
        log.ok("rename across dirs", fs::rename(e.p("dir/a"), e.p("top_a")));
        log.rec("ls dir", names(&e.p("dir")));
        log.rec("content top_a", content(&e.p("top_a")));
        log.ok("mkdir newdir", mkdir_(&e.p("newdir"), 0o755));
        log.ok(
            "rename into new dir",
            fs::rename(e.p("exe"), e.p("newdir/exe")),
        );
        log.rec("stat newdir/exe", st(&e.p("newdir/exe")));
        log.ok(
            "rename into merged dir",
            fs::rename(e.p("top_a"), e.p("merged/a2")),
        );
        log.err(
            "RENAME_NOREPLACE onto existing",
            renameat2(
                &e.p("merged/a2"),
                &e.p("merged/m_top"),
                libc::RENAME_NOREPLACE,
            ),
            libc::EEXIST,
        );
        log.rec("content m_top", content(&e.p("merged/m_top")));
        log.ok(
            "RENAME_NOREPLACE to a new name",
            renameat2(&e.p("merged/a2"), &e.p("merged/a3"), libc::RENAME_NOREPLACE),
        );
        log.ok(
            "RENAME_NOREPLACE onto a whited-out name",
            renameat2(&e.p("merged/a3"), &e.p("gone"), libc::RENAME_NOREPLACE),
        );
        log.ok(
            "RENAME_EXCHANGE two lower files",
            renameat2(
                &e.p("merged/m_top"),
                &e.p("merged/m_low"),
                libc::RENAME_EXCHANGE,
            ),
        );
        log.expect(
            "swapped",
            (
                content(&e.p("merged/m_top")).ok(),
                content(&e.p("merged/m_low")).ok(),
            ),
            (Some("m low\n".into()), Some("m top\n".into())),
        );
        log.ok(
            "RENAME_EXCHANGE file and empty lower dir",
            renameat2(&e.p("big"), &e.p("emptydir"), libc::RENAME_EXCHANGE),
        );
        log.rec("stat big", st(&e.p("big")));
        log.rec("stat emptydir", st(&e.p("emptydir")));
        log.err(
            "RENAME_EXCHANGE with a missing name",
            renameat2(&e.p("g"), &e.p("nope"), libc::RENAME_EXCHANGE),
            libc::ENOENT,
        );
        log.err(
            "RENAME_NOREPLACE|RENAME_EXCHANGE",
            renameat2(
                &e.p("g"),
                &e.p("p"),
                libc::RENAME_NOREPLACE | libc::RENAME_EXCHANGE,
            ),
            libc::EINVAL,
        );
        log.err(
            "file over dir",
            fs::rename(e.p("g"), e.p("dir/sub")),
            libc::EISDIR,
        );
        log.err(
            "dir over file",
            fs::rename(e.p("lonly"), e.p("g")),
            libc::ENOTDIR,
        );
        log.err(
            "dir into itself",
            fs::rename(e.p("dir"), e.p("dir/sub/x")),
            libc::EINVAL,
        );
        log.ok("mkdir e1", mkdir_(&e.p("e1"), 0o755));
        log.err(
            "dir over non-empty merged dir",
            fs::rename(e.p("e1"), e.p("merged")),
            libc::ENOTEMPTY,
        );
        log.err(
            "dir over lower dir whose children are only in the lower",
            fs::rename(e.p("e1"), e.p("lonly")),
            libc::ENOTEMPTY,
        );
        log.ok("mkdir e2", mkdir_(&e.p("e2"), 0o700));
        log.ok("dir over empty dir", fs::rename(e.p("e1"), e.p("e2")));
        log.rec("stat e2", st(&e.p("e2")));
        log.ok("mkdir e3", mkdir_(&e.p("e3"), 0o711));
        log.ok(
            "new dir over empty lower dir",
            fs::rename(e.p("e3"), e.p("xdir")),
        );
        log.rec("stat xdir", st(&e.p("xdir")));
        log.rec("xattrs xdir", user_xattrs(&e.p("xdir")));
        log.ok("rename onto itself", fs::rename(e.p("g"), e.p("g")));
        log.ok("rename a symlink", fs::rename(e.p("sym"), e.p("sym2")));
        log.rec("readlink sym2", fs::read_link(e.p("sym2")));
        log.ok("rename a fifo", fs::rename(e.p("p"), e.p("dir/p2")));
        log.rec("stat dir/p2", st(&e.p("dir/p2")));
        log.err(
            "rename missing",
            fs::rename(e.p("nope"), e.p("x")),
            libc::ENOENT,
        );
        log.rec("ls /", names(&e.p("")));
        log.rec("ls merged", names(&e.p("merged")));
    });
}

#[test]
fn ops_rename_directories() {
    same_as_kernel("rename dirs", base, |e, log| {
        log.ok("rename lower dir", fs::rename(e.p("dir"), e.p("dir_moved")));
        log.err("stat dir", fs::symlink_metadata(e.p("dir")), libc::ENOENT);
        log.rec("ls dir_moved", names(&e.p("dir_moved")));
        log.rec("ls dir_moved/sub", names(&e.p("dir_moved/sub")));
        log.rec("content dir_moved/sub/b", content(&e.p("dir_moved/sub/b")));
        log.ok("write in moved dir", fs::write(e.p("dir_moved/new"), "n"));
        log.ok("mkdir nd", mkdir_(&e.p("nd"), 0o755));
        log.ok(
            "rename merged dir into nd",
            fs::rename(e.p("merged"), e.p("nd/merged")),
        );
        log.rec("ls nd/merged", names(&e.p("nd/merged")));
        log.rec("content deep", content(&e.p("nd/merged/sub/deep")));
        log.ok("rename it back", fs::rename(e.p("dir_moved"), e.p("dir")));
        log.rec("ls dir", names(&e.p("dir")));
        log.ok(
            "lower dir over empty lower dir",
            fs::rename(e.p("lonly"), e.p("emptydir")),
        );
        log.rec("ls emptydir", names(&e.p("emptydir")));
        log.err(
            "stat lonly",
            fs::symlink_metadata(e.p("lonly")),
            libc::ENOENT,
        );
        log.ok("rename opaque dir", fs::rename(e.p("opq"), e.p("opq2")));
        log.expect(
            "ls opq2",
            names(&e.p("opq2")).ok(),
            Some(vec!["new".into()]),
        );
        log.ok(
            "rename dir with xattr",
            fs::rename(e.p("xdir"), e.p("xdir2")),
        );
        log.rec("get user.d", getxattr(&e.p("xdir2"), "user.d"));
        log.ok("rename d2 d3", fs::rename(e.p("d2"), e.p("d3")));
        log.rec("ls d3", names(&e.p("d3")));
        log.ok("mkdir d2 again", mkdir_(&e.p("d2"), 0o755));
        log.expect("ls d2", names(&e.p("d2")).ok(), Some(vec![]));
        log.ok(
            "RENAME_EXCHANGE two lower dirs",
            renameat2(&e.p("d3"), &e.p("nd/merged"), libc::RENAME_EXCHANGE),
        );
        log.rec("ls d3", names(&e.p("d3")));
        log.rec("ls nd/merged", names(&e.p("nd/merged")));
        log.rec("ls /", names(&e.p("")));
    });
}

// ---------------------------------------------------------------------------
// 2-3. Properties of the upper layer, checked on kernel overlayfs as well
// ---------------------------------------------------------------------------

/// One test per backend: `kernel` proves the expectation, the others hold
/// unionfuse to it.
macro_rules! backends {
    ($name:ident, $body:path, [$($b:ident = $backend:expr),+ $(,)?]) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;
            $(
                #[test]
                fn $b() {
                    let backend: Backend = $backend;
                    if backend == Backend::Kernel
                        && skip_as_non_root("kernel overlayfs needs root")
                    {
                        return;
                    }
                    $body(backend)
                }
            )+
        }
    };
}

fn upper_names(env: &Env) -> Vec<String> {
    tree::manifest(&env.upper, &Opts::view())
        .into_keys()
        .filter(|k| !k.is_empty())
        .collect()
}

fn read_only_access_creates_nothing(b: Backend) {
    let env = Env::new(b, 2, base);
    let view = env.view();
    assert!(view.len() > 20, "{b}: tree too small: {view:?}");
    for p in ["f", "big", "g", "dir/a", "merged/m_low", "exe", "sym"] {
        let f = File::open(env.p(p)).expect("open read-only");
        f.metadata().expect("fstat");
        let mut buf = Vec::new();
        (&f).read_to_end(&mut buf).expect("read");
        let _ = listxattr(&env.p(p));
        let _ = getxattr(&env.p(p), "user.a");
        let c = cpath(&env.p(p));
        // SAFETY: c is a valid path.
        unsafe { libc::access(c.as_ptr(), libc::W_OK) };
    }
    let f = open(&env.p("f"), libc::O_RDONLY | libc::O_NOATIME, 0).expect("O_NOATIME");
    drop(f);
    for d in ["", "dir", "merged", "opq", "lonly"] {
        names(&env.p(d)).expect("readdir");
    }
    let up = upper_names(&env);
    assert!(up.is_empty(), "{b}: reading created {up:?} in the upper");
    env.finish();
}

backends!(
    copyup_reading_never_writes_the_upper,
    read_only_access_creates_nothing,
    [
        kernel = Backend::Kernel,
        unionfuse = Backend::Fuse(Wh::Auto),
    ]
);

/// Lower file with odd mode, owner, times, user xattrs and file
/// capabilities set last (a write or chown after them would drop them).
/// Without root the owner stays the caller and there are no capabilities.
fn cap_file(root: &Path, rel: &str) {
    write(root, rel, "capable\n");
    if is_root() {
        lchown(root, rel, 1234, 2345);
    }
    common::chmod(root, rel, 0o751);
    setxattr(root, rel, "user.one", b"1");
    setxattr(root, rel, "user.two", b"2");
    if is_root() {
        setxattr(root, rel, "security.capability", &cap_blob());
    }
    set_times(
        &root.join(rel),
        (1_400_000_000, 111_111_111),
        (1_500_000_000, 222_222_222),
    );
}

fn copy_up_preserves_metadata(b: Backend) {
    let env = Env::new(b, 1, |l| {
        cap_file(&l[0], "c1");
        cap_file(&l[0], "c2");
        cap_file(&l[0], "c3");
    });
    let caps = !skip_as_non_root(
        "copy-up of another owner and of security.capability (setting them needs root)",
    );
    let low = |rel: &str| fs::symlink_metadata(env.lowers[0].join(rel)).expect("lstat lower");
    let mut problems = Vec::new();
    let mut same = |what: String, got: String, want: String| {
        if got != want {
            problems.push(format!("{what}: got {got}, expected {want}"));
        }
    };
    // c1: copied up by a metadata change that keeps times and caps.
    set_xattr(&env.p("c1"), "user.three", b"3", 0).expect("setxattr c1");
    // c2: opened for writing, nothing written.
    drop(open(&env.p("c2"), libc::O_WRONLY, 0).expect("open c2"));
    // c3: its first write.
    {
        let f = open(&env.p("c3"), libc::O_WRONLY | libc::O_APPEND, 0).expect("open c3");
        (&f).write_all_ref(b"more\n").expect("write c3");
    }
    for rel in ["c1", "c2", "c3"] {
        let l = low(rel);
        let u = match fs::symlink_metadata(env.up(rel)) {
            Ok(u) => u,
            Err(err) => {
                same(format!("{rel} in upper"), err.to_string(), "present".into());
                continue;
            }
        };
        same(
            format!("{rel} mode"),
            format!("{:o}", u.mode()),
            format!("{:o}", l.mode()),
        );
        same(
            format!("{rel} owner"),
            format!("{}:{}", u.uid(), u.gid()),
            format!("{}:{}", l.uid(), l.gid()),
        );
        same(
            format!("{rel} atime"),
            format!("{:?}", (u.atime(), u.atime_nsec())),
            format!("{:?}", (l.atime(), l.atime_nsec())),
        );
        if rel != "c3" {
            same(
                format!("{rel} mtime"),
                format!("{:?}", (u.mtime(), u.mtime_nsec())),
                format!("{:?}", (l.mtime(), l.mtime_nsec())),
            );
        }
        if rel != "c3" && caps {
            same(
                format!("{rel} security.capability in upper"),
                format!("{:?}", getxattr(&env.up(rel), "security.capability").ok()),
                format!("{:?}", Some(cap_blob())),
            );
            same(
                format!("{rel} security.capability via mount"),
                format!("{:?}", getxattr(&env.p(rel), "security.capability").ok()),
                format!("{:?}", Some(cap_blob())),
            );
        }
        if rel != "c3" {
            same(
                format!("{rel} data"),
                format!("{:?}", fs::read_to_string(env.up(rel)).ok()),
                "Some(\"capable\\n\")".into(),
            );
        } else {
            same(
                format!("{rel} mtime is the write's"),
                format!("{}", (now_secs() - u.mtime()).abs() < 60),
                "true".into(),
            );
            same(
                format!("{rel} data"),
                format!("{:?}", fs::read_to_string(env.up(rel)).ok()),
                "Some(\"capable\\nmore\\n\")".into(),
            );
        }
        for x in ["user.one", "user.two"] {
            same(
                format!("{rel} {x}"),
                format!("{:?}", getxattr(&env.up(rel), x).ok()),
                format!("{:?}", getxattr(&env.lowers[0].join(rel), x).ok()),
            );
        }
    }
    same(
        "c1 user.three".into(),
        format!("{:?}", getxattr(&env.up("c1"), "user.three").ok()),
        format!("{:?}", Some(b"3".to_vec())),
    );
    assert!(
        problems.is_empty(),
        "{b}: copy-up lost metadata:\n  {}",
        problems.join("\n  ")
    );
    env.finish();
}

backends!(
    copyup_preserves_mode_owner_times_xattrs_caps,
    copy_up_preserves_metadata,
    [
        kernel = Backend::Kernel,
        unionfuse = Backend::Fuse(Wh::Auto),
    ]
);

fn copy_up_parents(b: Backend) {
    let env = Env::new(b, 1, |l| {
        let r = &l[0];
        write(r, "a/b/c/file", "deep\n");
        write(r, "a/b/sibling", "s\n");
        if !skip_as_non_root("parents owned by other users (chown needs root)") {
            lchown(r, "a", 11, 22);
            lchown(r, "a/b", 33, 44);
            lchown(r, "a/b/c", 55, 66);
        }
        common::chmod(r, "a", 0o701);
        common::chmod(r, "a/b", 0o750);
        common::chmod(r, "a/b/c", 0o711);
        setxattr(r, "a", "user.p", b"a");
        setxattr(r, "a/b/c", "user.p", b"c");
        fix_tree_times(r);
    });
    {
        let f = open(&env.p("a/b/c/file"), libc::O_WRONLY | libc::O_APPEND, 0).expect("open");
        (&f).write_all_ref(b"x").expect("write");
    }
    let mut problems = Vec::new();
    for rel in ["a", "a/b", "a/b/c"] {
        let l = fs::symlink_metadata(env.lowers[0].join(rel)).expect("lower");
        let Ok(u) = fs::symlink_metadata(env.up(rel)) else {
            problems.push(format!("{rel}: not in the upper"));
            continue;
        };
        let pairs = [
            (
                "type+mode",
                format!("{:o}", u.mode()),
                format!("{:o}", l.mode()),
            ),
            (
                "owner",
                format!("{}:{}", u.uid(), u.gid()),
                format!("{}:{}", l.uid(), l.gid()),
            ),
            (
                "mtime",
                format!("{:?}", (u.mtime(), u.mtime_nsec())),
                format!("{:?}", (l.mtime(), l.mtime_nsec())),
            ),
            (
                "user.p",
                format!("{:?}", getxattr(&env.up(rel), "user.p").ok()),
                format!("{:?}", getxattr(&env.lowers[0].join(rel), "user.p").ok()),
            ),
        ];
        for (what, got, want) in pairs {
            if got != want {
                problems.push(format!("{rel} {what}: got {got}, expected {want}"));
            }
        }
        let m = fs::symlink_metadata(env.p(rel)).expect("via mount");
        if (m.mtime(), m.mtime_nsec()) != (l.mtime(), l.mtime_nsec()) {
            problems.push(format!(
                "{rel} mtime via the mount: got {:?}, expected {:?}",
                (m.mtime(), m.mtime_nsec()),
                (l.mtime(), l.mtime_nsec())
            ));
        }
    }
    if env.up("a/b/sibling").exists() {
        problems.push("a/b/sibling was copied up with its parent".into());
    }
    assert!(
        problems.is_empty(),
        "{b}: parent copy-up:\n  {}",
        problems.join("\n  ")
    );
    env.finish();
}

backends!(
    copyup_parents_keep_mode_owner_times,
    copy_up_parents,
    [
        kernel = Backend::Kernel,
        unionfuse = Backend::Fuse(Wh::Auto),
    ]
);

const GIB: u64 = 1 << 30;

fn sparse_copy_up(b: Backend) {
    let env = Env::new(b, 1, |l| {
        let f = File::create(l[0].join("sparse")).expect("create");
        f.set_len(GIB).expect("set_len");
        for off in [0, GIB / 2, GIB - 4096] {
            f.write_all_at(&[0xab; 4096], off).expect("write");
        }
    });
    {
        let f = open(&env.p("sparse"), libc::O_WRONLY, 0).expect("open");
        pwrite(&f, b"Z", 100 << 20).expect("write");
    }
    let u = fs::symlink_metadata(env.up("sparse")).expect("upper copy");
    assert_eq!(u.len(), GIB, "{b}: size of the copy");
    // Kernel overlayfs copies in 1 MiB chunks and skips the holes between
    // them: a few MiB at most, where a dense copy would be 1 GiB.
    assert!(
        u.blocks() <= 16 << 11,
        "{b}: the sparse file became dense on copy-up: {} blocks of 512 bytes",
        u.blocks()
    );
    let f = File::open(env.p("sparse")).expect("open");
    for (off, want) in [
        (0, 0xab),
        (GIB / 2, 0xab),
        (GIB - 1, 0xab),
        (100 << 20, b'Z'),
        (4096, 0),
        (GIB / 4, 0),
    ] {
        assert_eq!(
            pread(&f, 1, off).expect("pread"),
            vec![want],
            "{b}: byte at {off}"
        );
    }
    drop(f);
    env.finish();
}

backends!(
    copyup_keeps_sparse_files_sparse,
    sparse_copy_up,
    [
        kernel = Backend::Kernel,
        unionfuse = Backend::Fuse(Wh::Auto),
    ]
);

/// The upper sits on a 16 MiB tmpfs and the lower file holds 64 MiB, so
/// any copy of the data fails with ENOSPC: an O_TRUNC open must not copy.
fn otrunc_does_not_copy_data(b: Backend) {
    if skip_as_non_root("the upper on a small tmpfs (mounting one needs root)") {
        return;
    }
    let env = Env::with_upper_fs(b, 1, Some("16m"), |l| {
        let data = pattern(64 << 20);
        fs::write(l[0].join("huge"), &data).expect("write");
        fs::write(l[0].join("huge2"), &data).expect("write");
    });
    let t0 = std::time::Instant::now();
    let f = open(&env.p("huge"), libc::O_WRONLY | libc::O_TRUNC, 0)
        .unwrap_or_else(|e| panic!("{b}: O_TRUNC open of a 64 MiB lower file, upper 16 MiB: {e}"));
    let took = t0.elapsed();
    assert_eq!(f.metadata().expect("fstat").len(), 0, "{b}: fstat size");
    let u = fs::symlink_metadata(env.up("huge")).expect("upper file");
    assert_eq!((u.len(), u.blocks()), (0, 0), "{b}: upper size and blocks");
    pwrite(&f, b"x", 0).expect("write");
    drop(f);
    assert_eq!(fs::read(env.p("huge")).expect("read"), b"x", "{b}");
    // The control: copying huge2 does need the data, which cannot fit.
    let r = open(&env.p("huge2"), libc::O_RDWR, 0).and_then(|f| pwrite(&f, b"y", 0));
    assert_eq!(
        errno_of(r, "copy-up of 64 MiB into 16 MiB"),
        libc::ENOSPC,
        "{b}: control copy-up"
    );
    assert_eq!(
        fs::metadata(env.p("huge2")).expect("stat").len(),
        64 << 20,
        "{b}: a failed copy-up leaves the lower file in view"
    );
    eprintln!("{b}: O_TRUNC open took {took:?}");
    env.finish();
}

backends!(
    copyup_o_trunc_copies_no_data,
    otrunc_does_not_copy_data,
    [
        kernel = Backend::Kernel,
        unionfuse = Backend::Fuse(Wh::Auto),
    ]
);

fn inode_numbers_stable(b: Backend) {
    let mut env = Env::new(b, 2, base);
    let objs = [
        "f",
        "dir",
        "dir/a",
        "merged",
        "merged/m_low",
        "sym",
        "big",
        "p",
        "xdir",
    ];
    let before: Vec<u64> = objs.iter().map(|o| ino(&env.p(o)).expect("ino")).collect();
    fs::write(env.p("f"), "changed").expect("write f");
    chmod(&env.p("dir"), 0o700).expect("chmod dir");
    fs::write(env.p("dir/a"), "changed").expect("write dir/a");
    chmod(&env.p("merged"), 0o700).expect("chmod merged");
    truncate(&env.p("merged/m_low"), 1).expect("truncate");
    let (uid, gid) = if is_root() { (5, 5) } else { my_ids() };
    lchown_(&env.p("sym"), uid, gid).expect("lchown sym");
    truncate(&env.p("big"), 10).expect("truncate big");
    chmod(&env.p("p"), 0o600).expect("chmod fifo");
    set_xattr(&env.p("xdir"), "user.n", b"1", 0).expect("setxattr");
    fs::write(env.p("newfile"), "n").expect("create");
    let new_ino = ino(&env.p("newfile")).expect("ino");
    let after: Vec<u64> = objs.iter().map(|o| ino(&env.p(o)).expect("ino")).collect();
    assert_eq!(after, before, "{b}: st_ino after copy-up, for {objs:?}");
    for o in objs {
        assert!(
            env.up(o).symlink_metadata().is_ok(),
            "{b}: {o} was not copied up"
        );
    }
    env.remount();
    // Without root the origin's number goes in `user.unionfuse.ino`, and the
    // kernel allows `user.*` xattrs only on regular files and directories.
    let kept: Vec<&str> = if skip_as_non_root(
        "st_ino of a copied-up symlink and fifo across a remount \
         (user.* xattrs cannot be set on them)",
    ) {
        objs.iter()
            .copied()
            .filter(|o| !["sym", "p"].contains(o))
            .collect()
    } else {
        objs.to_vec()
    };
    let again: Vec<u64> = kept.iter().map(|o| ino(&env.p(o)).expect("ino")).collect();
    let want: Vec<u64> = objs
        .iter()
        .zip(&before)
        .filter(|(o, _)| kept.contains(o))
        .map(|(_, i)| *i)
        .collect();
    assert_eq!(again, want, "{b}: st_ino after a remount, for {kept:?}");
    assert_eq!(
        ino(&env.p("newfile")).expect("ino"),
        new_ino,
        "{b}: new file after remount"
    );
    env.finish();
}

backends!(
    copyup_keeps_inode_numbers_across_remount,
    inode_numbers_stable,
    [
        kernel = Backend::Kernel,
        unionfuse = Backend::Fuse(Wh::Auto),
    ]
);

/// Two threads open the same lower file for writing at once; whichever
/// triggers the copy-up, both descriptors must end up on the same file.
fn concurrent_open_for_write(b: Backend) {
    const N: usize = 24;
    let env = Env::new(b, 1, |l| {
        for i in 0..N {
            write(&l[0], &format!("c{i}"), "................");
        }
    });
    let mut bad = Vec::new();
    for i in 0..N {
        let p = env.p(&format!("c{i}"));
        let barrier = Barrier::new(2);
        let seen: Vec<Vec<u8>> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..2u64)
                .map(|t| {
                    let (p, barrier) = (&p, &barrier);
                    s.spawn(move || {
                        barrier.wait();
                        let f = open(p, libc::O_RDWR, 0).expect("open");
                        barrier.wait();
                        let mine = if t == 0 { b"AAAA" } else { b"BBBB" };
                        pwrite(&f, mine, t * 4).expect("write");
                        barrier.wait();
                        pread(&f, 16, 0).expect("read")
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().expect("thread")).collect()
        });
        let want = b"AAAABBBB........".to_vec();
        let after = fs::read(&p).expect("read");
        if seen.iter().any(|s| *s != want) || after != want {
            bad.push(format!(
                "c{i}: thread views {:?}, then {:?}",
                seen.iter()
                    .map(|s| String::from_utf8_lossy(s).into_owned())
                    .collect::<Vec<_>>(),
                String::from_utf8_lossy(&after)
            ));
        }
    }
    assert!(
        bad.is_empty(),
        "{b}: concurrent opens saw different files:\n  {}",
        bad.join("\n  ")
    );
    env.finish();
}

backends!(
    copyup_concurrent_writers_share_one_copy,
    concurrent_open_for_write,
    [
        kernel = Backend::Kernel,
        unionfuse = Backend::Fuse(Wh::Auto),
    ]
);

/// Whether the upper holds a whiteout for `rel` in the format of `b`, and
/// nothing of the other format.
fn whiteout_problems(env: &Env, rel: &str) -> Vec<String> {
    let p = env.up(rel);
    let name = p.file_name().expect("name").to_string_lossy().into_owned();
    let oci = p.with_file_name(format!(".wh.{name}"));
    let mut out = Vec::new();
    let md = fs::symlink_metadata(&p);
    let omd = fs::symlink_metadata(&oci);
    match env.backend {
        Backend::Fuse(Wh::Oci) => {
            match omd {
                Ok(m) if m.is_file() && m.len() == 0 => {}
                other => out.push(format!(
                    "{rel}: expected an empty file {}, got {other:?}",
                    oci.display()
                )),
            }
            if md.is_ok() {
                out.push(format!(
                    "{rel}: present in the upper beside its .wh. file: {md:?}"
                ));
            }
        }
        _ => {
            match md {
                Ok(m) if m.file_type().is_char_device() && m.rdev() == 0 => {}
                other => out.push(format!(
                    "{rel}: expected a 0:0 character device, got {other:?}"
                )),
            }
            if omd.is_ok() {
                out.push(format!("{rel}: unexpected {}", oci.display()));
            }
        }
    }
    out
}

fn unlink_writes_whiteouts(b: Backend) {
    let env = Env::new(b, 2, base);
    fs::remove_file(env.p("f")).expect("unlink f");
    fs::remove_file(env.p("sym")).expect("unlink sym");
    fs::remove_file(env.p("p")).expect("unlink fifo");
    fs::remove_dir(env.p("emptydir")).expect("rmdir");
    fs::remove_file(env.p("dir/a")).expect("unlink dir/a");
    fs::remove_file(env.p("merged/m_low")).expect("unlink a bottom-layer file");
    let mut problems = Vec::new();
    for rel in ["f", "sym", "p", "emptydir", "dir/a", "merged/m_low"] {
        problems.extend(whiteout_problems(&env, rel));
        if fs::symlink_metadata(env.p(rel)).is_ok() {
            problems.push(format!("{rel}: still visible"));
        }
    }
    let root = names(&env.p("")).expect("ls");
    for gone in ["f", "sym", "p", "emptydir"] {
        if root.iter().any(|n| n == gone) {
            problems.push(format!("{gone}: still listed"));
        }
    }
    if root.iter().any(|n| n.starts_with(".wh.")) {
        problems.push(format!("a marker is listed: {root:?}"));
    }
    assert!(
        problems.is_empty(),
        "{b}: whiteouts:\n  {}",
        problems.join("\n  ")
    );
    env.finish();
}

backends!(
    whiteout_written_on_unlink_of_a_lower_name,
    unlink_writes_whiteouts,
    [
        kernel = Backend::Kernel,
        overlay = Backend::Fuse(Wh::Overlay),
        oci = Backend::Fuse(Wh::Oci),
    ]
);

fn no_whiteout_without_lower(b: Backend) {
    let env = Env::new(b, 2, base);
    fs::write(env.p("n"), "n").expect("create");
    fs::remove_file(env.p("n")).expect("unlink");
    fs::create_dir(env.p("nd")).expect("mkdir");
    fs::write(env.p("nd/x"), "x").expect("create");
    fs::remove_file(env.p("nd/x")).expect("unlink");
    fs::remove_dir(env.p("nd")).expect("rmdir");
    fs::write(env.p("dir/new"), "n").expect("create in lower dir");
    fs::remove_file(env.p("dir/new")).expect("unlink");
    fs::write(env.p("n1"), "n").expect("create");
    fs::rename(env.p("n1"), env.p("n2")).expect("rename");
    fs::remove_file(env.p("n2")).expect("unlink");
    // A lower layer whites `gone` out: no lower holds the name.
    fs::write(env.p("gone"), "g").expect("create over whiteout");
    fs::remove_file(env.p("gone")).expect("unlink");
    let up = upper_names(&env);
    let bad: Vec<&String> = up
        .iter()
        .filter(|n| {
            let last = n.rsplit('/').next().expect("name");
            let last = last.strip_prefix(".wh.").unwrap_or(last);
            ["n", "nd", "x", "new", "n1", "n2", "gone"].contains(&last)
        })
        .collect();
    assert!(
        bad.is_empty(),
        "{b}: markers without a lower name: {bad:?} (upper: {up:?})"
    );
    assert!(
        up.iter().all(|n| n == "dir"),
        "{b}: upper holds more than the copied-up parent: {up:?}"
    );
    env.finish();
}

backends!(
    whiteout_only_where_a_lower_has_the_name,
    no_whiteout_without_lower,
    [
        kernel = Backend::Kernel,
        overlay = Backend::Fuse(Wh::Overlay),
        oci = Backend::Fuse(Wh::Oci),
    ]
);

fn opaque_after_rm_rf_mkdir(b: Backend) {
    let mut env = Env::new(b, 2, base);
    for d in ["dir", "merged"] {
        let st = Command::new("rm")
            .arg("-rf")
            .arg(env.p(d))
            .status()
            .expect("rm");
        assert!(st.success(), "{b}: rm -rf {d}");
        mkdir_(&env.p(d), 0o755).expect("mkdir");
        fs::write(env.p(&format!("{d}/fresh")), "fresh").expect("write");
    }
    let check = |env: &Env, when: &str| {
        let mut problems = Vec::new();
        for d in ["dir", "merged"] {
            let ls = names(&env.p(d)).expect("ls");
            if ls != ["fresh"] {
                problems.push(format!("{d}: lists {ls:?}"));
            }
            for hidden in ["a", "sub", "sub/b", "m_low", "m_top"] {
                if fs::symlink_metadata(env.p(&format!("{d}/{hidden}"))).is_ok() {
                    problems.push(format!("{d}/{hidden}: reachable by name"));
                }
            }
            let up = names(&env.up(d)).unwrap_or_default();
            let xattr = getxattr(&env.up(d), "trusted.overlay.opaque").ok();
            let uxattr = getxattr(&env.up(d), "user.overlay.opaque").ok();
            // The one unionfuse may write (the `trusted.` one needs root),
            // and the one it must not.
            let (mine, other) = if is_root() {
                (&xattr, &uxattr)
            } else {
                (&uxattr, &xattr)
            };
            match env.backend {
                Backend::Fuse(Wh::Oci) => {
                    if up != [".wh..wh..opq", "fresh"] {
                        problems.push(format!("{d}: upper holds {up:?}"));
                    }
                    if xattr.is_some() || uxattr.is_some() {
                        problems.push(format!("{d}: opaque xattr as well as .wh..wh..opq"));
                    }
                }
                _ => {
                    if up != ["fresh"] {
                        problems.push(format!("{d}: upper holds {up:?}"));
                    }
                    if mine.as_deref() != Some(b"y") {
                        problems.push(format!("{d}: {} = {mine:?}", opaque_xattr()));
                    }
                    if other.is_some() {
                        problems.push(format!("{d}: both opaque xattrs: {xattr:?} {uxattr:?}"));
                    }
                }
            }
        }
        assert!(
            problems.is_empty(),
            "{b} ({when}): opaque dirs:\n  {}",
            problems.join("\n  ")
        );
    };
    check(&env, "mounted");
    env.remount();
    check(&env, "after remount");
    env.finish();
}

backends!(
    opaque_dir_after_rm_rf_and_mkdir,
    opaque_after_rm_rf_mkdir,
    [
        kernel = Backend::Kernel,
        overlay = Backend::Fuse(Wh::Overlay),
        oci = Backend::Fuse(Wh::Oci),
    ]
);

/// `.wh.` names are markers on disk: creating one through the mount would
/// hide or corrupt lower entries, so every way of making one is refused.
/// Kernel overlayfs has no such rule (its markers are not names).
fn wh_names_refused(b: Backend) {
    let env = Env::new(b, 2, base);
    let o = libc::O_CREAT | libc::O_WRONLY;
    let attempts: Vec<(&str, io::Result<()>)> = vec![
        ("create .wh.x", open(&env.p(".wh.x"), o, 0o644).map(drop)),
        ("create .wh.f", open(&env.p(".wh.f"), o, 0o644).map(drop)),
        (
            "create dir/.wh.a",
            open(&env.p("dir/.wh.a"), o, 0o644).map(drop),
        ),
        (
            "create .wh..wh..opq",
            open(&env.p("dir/.wh..wh..opq"), o, 0o644).map(drop),
        ),
        ("mkdir .wh.d", mkdir_(&env.p(".wh.d"), 0o755)),
        (
            "symlink .wh.s",
            std::os::unix::fs::symlink("f", env.p(".wh.s")),
        ),
        (
            "mknod .wh.p",
            mknod_(&env.p(".wh.p"), libc::S_IFIFO | 0o644, 0, 0),
        ),
        ("link .wh.l", fs::hard_link(env.p("f"), env.p(".wh.l"))),
        ("rename to .wh.g", fs::rename(env.p("g"), env.p(".wh.g"))),
    ];
    let accepted: Vec<&str> = attempts
        .iter()
        .filter(|(_, r)| r.is_ok())
        .map(|(w, _)| *w)
        .collect();
    assert!(accepted.is_empty(), "{b}: accepted {accepted:?}");
    let up: Vec<String> = upper_names(&env)
        .into_iter()
        .filter(|n| n.rsplit('/').next().expect("name").starts_with(".wh."))
        .collect();
    assert!(up.is_empty(), "{b}: created in the upper: {up:?}");
    for d in ["", "dir"] {
        let ls = names(&env.p(d)).expect("ls");
        assert!(
            !ls.iter().any(|n| n.starts_with(".wh.")),
            "{b}: listed: {ls:?}"
        );
    }
    assert_eq!(
        content(&env.p("g")).expect("g"),
        "second file\n",
        "{b}: g after a refused rename"
    );
    assert_eq!(content(&env.p("f")).expect("f"), "hello lower\n", "{b}: f");
    assert_eq!(
        content(&env.p("dir/a")).expect("dir/a"),
        "a\n",
        "{b}: dir/a"
    );
    env.finish();
}

backends!(
    wh_prefixed_names_cannot_be_created,
    wh_names_refused,
    [
        unionfuse = Backend::Fuse(Wh::Auto),
        overlay = Backend::Fuse(Wh::Overlay),
        oci = Backend::Fuse(Wh::Oci),
    ]
);

fn lower_dir_rename(b: Backend) {
    let mut env = Env::new(b, 2, base);
    let mut opts = Opts::view();
    opts.mtime = true;
    let snap = |env: &Env, rel: &str| {
        let mut m = tree::manifest(&env.p(rel), &opts);
        // The moved directory's own entry changes (ctime, maybe mtime with
        // its `..`); its contents must not.
        m.remove("");
        m
    };
    let merged = snap(&env, "merged");
    let dir = snap(&env, "dir");
    assert!(merged.len() >= 4 && dir.len() >= 3, "{b}: trees too small");
    fs::create_dir(env.p("nd")).expect("mkdir");
    fs::rename(env.p("merged"), env.p("nd/moved"))
        .unwrap_or_else(|e| panic!("{b}: rename of a merged lower dir: {e}"));
    fs::rename(env.p("dir"), env.p("dir2"))
        .unwrap_or_else(|e| panic!("{b}: rename of a lower dir: {e}"));
    let check = |env: &Env, when: &str| {
        for old in ["merged", "dir"] {
            assert_eq!(
                errno_of(fs::symlink_metadata(env.p(old)), old),
                libc::ENOENT,
                "{b} ({when}): old name {old}"
            );
        }
        let ls = names(&env.p("")).expect("ls");
        assert!(
            !ls.contains(&"merged".to_string()) && !ls.contains(&"dir".to_string()),
            "{b} ({when}): old names listed: {ls:?}"
        );
        tree::assert_same(
            &format!("{b} ({when}): nd/moved"),
            "before",
            &merged,
            "after",
            &snap(env, "nd/moved"),
        );
        tree::assert_same(
            &format!("{b} ({when}): dir2"),
            "before",
            &dir,
            "after",
            &snap(env, "dir2"),
        );
    };
    check(&env, "mounted");
    env.remount();
    check(&env, "after remount");
    // The old name is free for a new, empty directory.
    fs::create_dir(env.p("dir")).expect("mkdir dir");
    assert_eq!(
        names(&env.p("dir")).expect("ls"),
        Vec::<String>::new(),
        "{b}: new dir"
    );
    env.finish();
}

backends!(
    rename_of_a_lower_directory_moves_the_whole_tree,
    lower_dir_rename,
    [
        kernel = Backend::Kernel,
        overlay = Backend::Fuse(Wh::Overlay),
        oci = Backend::Fuse(Wh::Oci),
    ]
);

// ---------------------------------------------------------------------------
// 4. Interchange of upper layers
// ---------------------------------------------------------------------------

/// A fixed mix of changes, applied through a mount at `root`.
fn mutate(root: &Path, dir_renames: bool) {
    let p = |r: &str| root.join(r);
    let ok = |what: &str, r: io::Result<()>| r.unwrap_or_else(|e| panic!("{what}: {e}"));
    ok("write f", fs::write(p("f"), "changed f\n"));
    {
        let f = open(&p("g"), libc::O_WRONLY | libc::O_APPEND, 0).expect("open g");
        ok("append g", (&f).write_all_ref(b"appended\n"));
    }
    ok("mkdir -p", fs::create_dir_all(p("new/deep")));
    ok("create", fs::write(p("new/deep/file"), "n\n"));
    ok("chmod new", chmod(&p("new/deep/file"), 0o600));
    ok("unlink big", fs::remove_file(p("big")));
    ok("rm -rf dir", fs::remove_dir_all(p("dir")));
    ok("mkdir dir", fs::create_dir(p("dir")));
    ok("write dir/fresh", fs::write(p("dir/fresh"), "fresh\n"));
    ok("chmod exe", chmod(&p("exe"), 0o700));
    // Without root a chown can only keep the caller's ids, which still
    // copies up.
    let (uid, gid) = if is_root() { (5, 6) } else { my_ids() };
    ok("chown exe", chown(&p("exe"), uid, gid));
    ok("symlink", std::os::unix::fs::symlink("f", p("newlink")));
    ok("setxattr g", set_xattr(&p("g"), "user.k", b"v", 0));
    ok("removexattr f", remove_xattr(&p("f"), "user.a"));
    ok("rename sym", fs::rename(p("sym"), p("sym2")));
    ok("rename c2", fs::rename(p("d2/c2"), p("d2/c2moved")));
    ok("link", fs::hard_link(p("g"), p("g_link")));
    ok("mkfifo", mknod_(&p("nfifo"), libc::S_IFIFO | 0o640, 0, 0));
    ok("mkdir inner", fs::create_dir(p("emptydir/inner")));
    ok("rm lonly/x", fs::remove_file(p("lonly/x")));
    ok("truncate", truncate(&p("merged/m_low"), 2));
    ok("mkdir gone", fs::create_dir(p("gone")));
    ok("write gone/in", fs::write(p("gone/in"), "in\n"));
    ok("rm opq/new", fs::remove_file(p("opq/new")));
    ok("write opq/new2", fs::write(p("opq/new2"), "new2\n"));
    ok("chmod xdir", chmod(&p("xdir"), 0o710));
    ok(
        "upper-only dir rename",
        fs::rename(p("new"), p("new_renamed")),
    );
    if dir_renames {
        ok("rename merged", fs::rename(p("merged"), p("merged_moved")));
        ok("mkdir merged", fs::create_dir(p("merged")));
        ok(
            "rename lonly",
            fs::rename(p("lonly"), p("new_renamed/lonly")),
        );
    }
}

fn assert_upper_format(env: &Env, fmt: Wh) {
    let up = tree::manifest(&env.upper, &Opts::layer());
    let mut bad = Vec::new();
    for (k, e) in &up {
        let last = k.rsplit('/').next().expect("name");
        match fmt {
            Wh::Overlay if last.starts_with(".wh.") => bad.push(format!("{k}: OCI marker")),
            Wh::Oci if e.kind == 'c' && e.rdev == Some(0) => bad.push(format!("{k}: 0:0 whiteout")),
            Wh::Oci if e.xattrs.keys().any(|x| x.ends_with("overlay.opaque")) => {
                bad.push(format!("{k}: opaque xattr"))
            }
            _ => {}
        }
    }
    assert!(
        bad.is_empty(),
        "upper not purely {fmt:?} format:\n  {}",
        bad.join("\n  ")
    );
}

#[test]
fn interop_unionfuse_overlay_upper_read_by_kernel() {
    if skip_as_non_root("kernel overlayfs needs root") {
        return;
    }
    let mut env = Env::new(Backend::Fuse(Wh::Overlay), 2, base);
    mutate(&env.mnt, true);
    let fview = env.view();
    assert_upper_format(&env, Wh::Overlay);
    env.remount_as(Backend::Kernel);
    let kview = env.view();
    tree::assert_same(
        "upper written by unionfuse --whiteout overlay",
        "unionfuse",
        &fview,
        "kernel",
        &kview,
    );
    env.finish();
}

#[test]
fn interop_kernel_upper_read_by_unionfuse() {
    if skip_as_non_root("kernel overlayfs needs root") {
        return;
    }
    let mut env = Env::new(Backend::Kernel, 2, base);
    mutate(&env.mnt, false);
    let kview = env.view();
    env.remount_as(Backend::Fuse(Wh::Auto));
    let fview = env.view();
    tree::assert_same(
        "upper written by kernel overlayfs",
        "kernel",
        &kview,
        "unionfuse",
        &fview,
    );
    env.finish();
}

/// Kernel overlayfs with redirect_dir=on records a renamed lower directory
/// as `trusted.overlay.redirect` on its upper copy.
#[test]
fn interop_kernel_redirected_dirs_read_by_unionfuse() {
    if skip_as_non_root("kernel overlayfs needs root") {
        return;
    }
    let mut env = Env::new(Backend::Kernel, 2, base);
    mutate(&env.mnt, true);
    let kview = env.view();
    env.remount_as(Backend::Fuse(Wh::Auto));
    let fview = env.view();
    tree::assert_same(
        "upper with redirects written by kernel overlayfs",
        "kernel",
        &kview,
        "unionfuse",
        &fview,
    );
    env.finish();
}

#[test]
fn interop_oci_upper_remounted_by_unionfuse() {
    let kview = if skip_as_non_root("oci upper compared with kernel overlayfs (needs root)") {
        None
    } else {
        let kenv = Env::new(Backend::Kernel, 2, base);
        mutate(&kenv.mnt, true);
        let kview = kenv.view();
        kenv.finish();
        Some(kview)
    };

    let mut env = Env::new(Backend::Fuse(Wh::Oci), 2, base);
    mutate(&env.mnt, true);
    let first = env.view();
    assert_upper_format(&env, Wh::Oci);
    env.remount();
    let again = env.view();
    tree::assert_same(
        "oci upper, same mount vs remount",
        "mounted",
        &first,
        "remounted",
        &again,
    );
    if let Some(kview) = kview {
        tree::assert_same("same changes", "kernel", &kview, "unionfuse oci", &first);
    }
    env.finish();
}

#[test]
fn interop_overlay_upper_remounted_by_unionfuse() {
    let mut env = Env::new(Backend::Fuse(Wh::Overlay), 2, base);
    mutate(&env.mnt, true);
    let first = env.view();
    env.remount();
    let again = env.view();
    tree::assert_same(
        "overlay upper, same mount vs remount",
        "mounted",
        &first,
        "remounted",
        &again,
    );
    env.finish();
}

#[test]
fn unlinked_open_file_keeps_working() {
    let s = Scratch::new();
    let l = s.mkdir("l");
    write(&l, "lower", "from the lower\n");
    let up = s.mkdir("u");
    let mnt = s.mkdir("m");
    let m = Mounted::new(&[&l], Some(&up), &mnt, &[]);
    use std::io::{Read, Seek, Write};
    use std::os::unix::fs::PermissionsExt;
    for name in ["new", "lower"] {
        let p = m.path(name);
        let mut f = fs::OpenOptions::new()
            .create(true)
            .read(true)
            .write(true)
            .truncate(false)
            .open(&p)
            .expect("open");
        fs::remove_file(&p).expect("unlink");
        // fchmod, ftruncate, write, read, fstat on the nameless file.
        f.set_permissions(fs::Permissions::from_mode(0o600))
            .expect("fchmod");
        f.set_len(4).expect("ftruncate");
        f.rewind().expect("seek");
        f.write_all(b"ab").expect("write");
        f.rewind().expect("seek");
        let mut back = Vec::new();
        f.read_to_end(&mut back).expect("read");
        let meta = f.metadata().expect("fstat");
        assert_eq!(meta.permissions().mode() & 0o7777, 0o600, "{name}");
        assert_eq!(meta.len(), 4, "{name}");
        assert_eq!(meta.nlink(), 0, "{name}");
        assert_eq!(&back[..2], b"ab", "{name}");
        assert!(!p.exists(), "{name} is still visible");
    }
    drop(m);
    assert_eq!(
        fs::read_to_string(l.join("lower")).expect("lower"),
        "from the lower\n"
    );
}

/// Set-user-ID and set-group-ID bits after writes, truncations and owner
/// changes, by an ordinary user and by root, of files in a lower and in the
/// upper: as on kernel overlayfs. The daemon clears them itself (the kernel
/// leaves it to it), so this is where a missed case would show.
#[test]
fn set_id_bits_are_cleared_as_on_kernel_overlayfs() {
    use std::os::unix::fs::PermissionsExt;
    if skip_as_non_root("acting as another user (setuid needs root)") {
        return;
    }
    let s = Scratch::new();
    fs::set_permissions(s.dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let modes = [0o4777, 0o2777, 0o2767, 0o6777, 0o777, 0o4755];
    let actions = ["write", "otrunc", "truncate", "rootwrite", "chown"];
    let mut names = Vec::new();
    let build = |lower: &Path, upper: &Path, names: &mut Vec<String>| {
        for (layer, root) in [("lo", lower), ("up", upper)] {
            for a in actions {
                for m in modes {
                    let n = format!("{layer}_{a}_{m:o}");
                    fs::write(root.join(&n), b"data").unwrap();
                    lchown_(&root.join(&n), 1000, 1000).unwrap();
                    chmod(&root.join(&n), m).unwrap();
                    names.push(n);
                }
            }
        }
    };
    let (fl, fu, fw, fm) = (s.mkdir("fl"), s.mkdir("fu"), s.mkdir("fw"), s.mkdir("fm"));
    let (kl, ku, kw, km) = (s.mkdir("kl"), s.mkdir("ku"), s.mkdir("kw"), s.mkdir("km"));
    build(&fl, &fu, &mut names);
    build(&kl, &ku, &mut Vec::new());
    let k = match KernelOverlay::new(&[&kl], Some((&ku, &kw)), &km, "") {
        Ok(k) => k,
        Err(e) => panic!("kernel overlayfs oracle unavailable: {e}"),
    };
    let f = mount_with_work(&[&fl], Some((&fu, &fw)), &fm);
    let act = |root: &Path, name: &str| {
        use std::os::unix::process::CommandExt;
        let p = root.join(name);
        let action = name.split('_').nth(1).unwrap();
        let (cmd, user) = match action {
            "write" => (format!("printf x >> '{}'", p.display()), true),
            "otrunc" => (format!(": > '{}'", p.display()), true),
            "truncate" => (format!("truncate -s 1 '{}'", p.display()), true),
            "rootwrite" => (format!("printf x >> '{}'", p.display()), false),
            "chown" => (format!("chown 1000:1000 '{}'", p.display()), false),
            other => panic!("{other}"),
        };
        let mut c = Command::new("/bin/sh");
        c.arg("-c").arg(&cmd);
        if user {
            c.uid(1000).gid(1000);
        }
        let out = c.output().expect("run sh");
        assert!(
            out.status.success(),
            "{cmd}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let mut diffs = Vec::new();
    for n in &names {
        act(&f.mnt, n);
        act(&k.mnt, n);
        let fuse = fs::symlink_metadata(f.path(n)).unwrap().mode() & 0o7777;
        let kern = fs::symlink_metadata(k.mnt.join(n)).unwrap().mode() & 0o7777;
        if fuse != kern {
            diffs.push(format!(
                "{n}: unionfuse {fuse:o}, kernel overlayfs {kern:o}"
            ));
        }
    }
    // And what reached the disk, once the daemon is gone.
    drop(f);
    for n in &names {
        let fuse = fs::symlink_metadata(fu.join(n)).unwrap().mode() & 0o7777;
        let kern = fs::symlink_metadata(ku.join(n)).unwrap().mode() & 0o7777;
        if fuse != kern {
            diffs.push(format!(
                "upper {n}: unionfuse {fuse:o}, kernel overlayfs {kern:o}"
            ));
        }
    }
    assert!(
        diffs.is_empty(),
        "set-id bits differ:\n{}",
        diffs.join("\n")
    );
}

//! Fixtures shared by the integration tests: layer trees in temporary
//! directories, a real unionfuse mount that always unmounts, and a kernel
//! overlayfs mount of the same layers to compare against.
#![allow(dead_code)]

use std::ffi::{CString, OsStr};
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// Path of the binary under test: cargo's build, or `UNIONFUSE_BIN` when the
/// test executables run from a copy that another user can reach (scripts/test
/// does that for its unprivileged run, as `target/` may sit in a private home).
pub fn bin() -> &'static str {
    static BIN: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    BIN.get_or_init(|| match std::env::var("UNIONFUSE_BIN") {
        Ok(p) if !p.is_empty() => p,
        _ => env!("CARGO_BIN_EXE_unionfuse").to_string(),
    })
}

/// Runs `unionfuse ARGS...` to completion, with a deadline so that a hang
/// fails the test instead of stalling the suite.
pub fn run(args: &[&OsStr]) -> Output {
    let mut child = Command::new(bin())
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn unionfuse");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if child.try_wait().expect("wait").is_some() {
            return child.wait_with_output().expect("output");
        }
        if Instant::now() > deadline {
            child.kill().ok();
            let out = child.wait_with_output().expect("output");
            panic!(
                "unionfuse {:?} did not finish in 30 s; stderr: {}",
                args,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A scratch directory for one test: layers, upper, mountpoint.
#[derive(Debug)]
pub struct Scratch {
    pub dir: TempDir,
}

impl Default for Scratch {
    fn default() -> Self {
        Self::new()
    }
}

impl Scratch {
    pub fn new() -> Self {
        Scratch {
            dir: tempfile::Builder::new()
                .prefix("unionfuse-test-")
                .tempdir()
                .expect("tempdir"),
        }
    }

    /// `self/rel`, created as an empty directory.
    pub fn mkdir(&self, rel: &str) -> PathBuf {
        let p = self.dir.path().join(rel);
        fs::create_dir_all(&p).expect("mkdir");
        p
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }
}

/// Writes `data` at `root/rel`, creating parent directories.
pub fn write(root: &Path, rel: &str, data: &str) {
    let p = root.join(rel);
    if let Some(parent) = p.parent() {
        fs::create_dir_all(parent).expect("mkdir parents");
    }
    fs::write(&p, data).expect("write");
}

pub fn mkdir(root: &Path, rel: &str) {
    fs::create_dir_all(root.join(rel)).expect("mkdir");
}

pub fn link(root: &Path, rel: &str, target: &str) {
    let p = root.join(rel);
    if let Some(parent) = p.parent() {
        fs::create_dir_all(parent).expect("mkdir parents");
    }
    symlink(target, &p).expect("symlink");
}

pub fn chmod(root: &Path, rel: &str, mode: u32) {
    fs::set_permissions(root.join(rel), fs::Permissions::from_mode(mode)).expect("chmod");
}

fn cpath(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).expect("nul in path")
}

/// A kernel overlayfs whiteout (character device 0:0) at `root/rel`.
pub fn whiteout_chr(root: &Path, rel: &str) {
    let p = cpath(&root.join(rel));
    // SAFETY: p is a valid NUL-terminated path.
    let rc = unsafe { libc::mknod(p.as_ptr(), libc::S_IFCHR | 0o600, libc::makedev(0, 0)) };
    assert_eq!(rc, 0, "mknod whiteout: {}", std::io::Error::last_os_error());
}

/// An OCI whiteout: an empty `.wh.NAME` beside where NAME would be.
pub fn whiteout_oci(root: &Path, rel: &str) {
    let p = root.join(rel);
    let name = p.file_name().expect("name").to_owned();
    let mut wh = std::ffi::OsString::from(".wh.");
    wh.push(name);
    fs::write(p.with_file_name(wh), b"").expect("write .wh.");
}

pub fn setxattr(root: &Path, rel: &str, name: &str, value: &[u8]) {
    let p = cpath(&root.join(rel));
    let n = CString::new(name).expect("name");
    // SAFETY: valid C strings and a buffer of the given length.
    let rc = unsafe {
        libc::lsetxattr(
            p.as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    assert_eq!(
        rc,
        0,
        "setxattr {name}: {}",
        std::io::Error::last_os_error()
    );
}

/// Returns the value of xattr `name` on `path` (not following symlinks).
pub fn getxattr(path: &Path, name: &str) -> std::io::Result<Vec<u8>> {
    let p = cpath(path);
    let n = CString::new(name).expect("name");
    let mut buf = vec![0u8; 65536];
    // SAFETY: valid C strings and a buffer of the given length.
    let rc = unsafe { libc::lgetxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    buf.truncate(rc as usize);
    Ok(buf)
}

/// Names of the xattrs on `path` (not following symlinks), sorted.
pub fn listxattr(path: &Path) -> Vec<String> {
    let p = cpath(path);
    let mut buf = vec![0u8; 65536];
    // SAFETY: valid C string and a buffer of the given length.
    let rc = unsafe { libc::llistxattr(p.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    assert!(rc >= 0, "listxattr: {}", std::io::Error::last_os_error());
    buf.truncate(rc as usize);
    let mut names: Vec<String> = buf
        .split(|b| *b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect();
    names.sort();
    names
}

/// Sorted names in a directory, as `readdir` shows them (without . and ..).
pub fn ls(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read_dir {}: {e}", dir.display()))
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// Whether `path` is the root of a mount, by /proc/self/mountinfo. Only the
/// parent is canonicalized: a dead FUSE mount answers ENOTCONN to a stat of
/// the mountpoint itself and must still count as mounted.
pub fn is_mountpoint(path: &Path) -> bool {
    let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
        return false;
    };
    let Ok(parent) = parent.canonicalize() else {
        return false;
    };
    let canon = parent.join(name);
    let info = fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    info.lines().any(|l| {
        l.split(' ')
            .nth(4)
            .map(|m| Path::new(&unescape_mount(m)) == canon)
            .unwrap_or(false)
    })
}

fn unescape_mount(s: &str) -> String {
    s.replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}

/// A live unionfuse mount. Dropping it unmounts, even when the test panicked.
#[derive(Debug)]
pub struct Mounted {
    pub mnt: PathBuf,
}

impl Mounted {
    /// Mounts `lowers` (top-most first) and an optional upper at `mnt`,
    /// with any extra CLI arguments. Panics with unionfuse's stderr on failure.
    pub fn new(lowers: &[&Path], upper: Option<&Path>, mnt: &Path, extra: &[&str]) -> Mounted {
        let out = run(&mount_args(lowers, upper, mnt, extra));
        assert!(
            out.status.success(),
            "unionfuse mount failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            is_mountpoint(mnt),
            "mount returned 0 but nothing is mounted"
        );
        Mounted {
            mnt: mnt.to_path_buf(),
        }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        if rel.is_empty() {
            self.mnt.clone()
        } else {
            self.mnt.join(rel)
        }
    }
}

/// The argv for `unionfuse mount`, so that refusal tests can build the same.
pub fn mount_args<'a>(
    lowers: &[&'a Path],
    upper: Option<&'a Path>,
    mnt: &'a Path,
    extra: &[&'a str],
) -> Vec<&'a OsStr> {
    let mut args: Vec<&OsStr> = vec![OsStr::new("mount")];
    for l in lowers {
        args.push(OsStr::new("--lower"));
        args.push(l.as_os_str());
    }
    if let Some(u) = upper {
        args.push(OsStr::new("--upper"));
        args.push(u.as_os_str());
    }
    for e in extra {
        args.push(OsStr::new(*e));
    }
    for e in env_mount_args() {
        args.push(OsStr::new(e.as_str()));
    }
    args.push(mnt.as_os_str());
    args
}

/// The smallest lower file the daemon passes through (its
/// `LOWER_PASSTHROUGH_MIN`).
#[allow(dead_code)]
pub const LOWER_PASSTHROUGH_MIN: usize = 256 * 1024;

/// Whether a lower file (of [`LOWER_PASSTHROUGH_MIN`] bytes or more)
/// opened read-only through a writable mount made by [`mount_args`] is
/// passed through to the lower file (root, unless the mount arguments turn
/// it off), and so keeps its lower data after the file's copy-up (see
/// `--no-lower-passthrough` in the README).
#[allow(dead_code)]
pub fn lower_passthrough(extra: &[&str]) -> bool {
    let off = "--no-lower-passthrough";
    is_root() && !extra.contains(&off) && !env_mount_args().iter().any(|a| a == off)
}

/// Extra `unionfuse mount` arguments for every mount made through
/// [`mount_args`], from UNIONFUSE_TEST_MOUNT_ARGS (split at whitespace):
/// scripts/test runs the differential suites again over `--io-uring`.
fn env_mount_args() -> &'static [String] {
    static ARGS: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    ARGS.get_or_init(|| {
        std::env::var("UNIONFUSE_TEST_MOUNT_ARGS")
            .map(|v| v.split_whitespace().map(String::from).collect())
            .unwrap_or_default()
    })
}

impl Drop for Mounted {
    fn drop(&mut self) {
        unmount(&self.mnt);
    }
}

/// Unmounts whatever is at `mnt`: `unionfuse umount`, then a lazy unmount as
/// the last resort so a failing test never leaves a mount behind.
pub fn unmount(mnt: &Path) {
    if !is_mountpoint(mnt) {
        return;
    }
    let out = run(&[OsStr::new("umount"), mnt.as_os_str()]);
    if out.status.success() && !is_mountpoint(mnt) {
        return;
    }
    eprintln!(
        "unionfuse umount {} failed: {}",
        mnt.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = Command::new("umount").arg("-l").arg(mnt).status();
}

/// A kernel overlayfs mount of the same layers, as the oracle. `None` when
/// the kernel refuses (not root, or overlayfs missing), so that callers can
/// say so instead of passing silently.
#[derive(Debug)]
pub struct KernelOverlay {
    pub mnt: PathBuf,
}

impl KernelOverlay {
    pub fn new(
        lowers: &[&Path],
        upper: Option<(&Path, &Path)>,
        mnt: &Path,
        extra_opts: &str,
    ) -> Result<KernelOverlay, String> {
        let lowerdir: Vec<String> = lowers
            .iter()
            .map(|l| l.display().to_string().replace(':', "\\:"))
            .collect();
        let mut opts = format!("lowerdir={}", lowerdir.join(":"));
        if let Some((upper, work)) = upper {
            opts.push_str(&format!(
                ",upperdir={},workdir={}",
                upper.display(),
                work.display()
            ));
        }
        if !extra_opts.is_empty() {
            opts.push(',');
            opts.push_str(extra_opts);
        }
        let out = Command::new("mount")
            .args(["-t", "overlay", "overlay", "-o", &opts])
            .arg(mnt)
            .output()
            .map_err(|e| format!("run mount: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "mount -t overlay -o {opts}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(KernelOverlay {
            mnt: mnt.to_path_buf(),
        })
    }
}

impl Drop for KernelOverlay {
    fn drop(&mut self) {
        let ok = Command::new("umount")
            .arg(&self.mnt)
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if !ok {
            let _ = Command::new("umount").arg("-l").arg(&self.mnt).status();
        }
    }
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// True, after saying so on stderr, when not running as root: for a test,
/// or the part of one, that needs privileges (another owner, device nodes,
/// `trusted.*` xattrs, kernel overlayfs, tmpfs mounts). scripts/test runs
/// the suite a second time as an unprivileged user, where these skip
/// visibly instead of passing in silence.
pub fn skip_as_non_root(reason: &str) -> bool {
    if is_root() {
        return false;
    }
    eprintln!("skipped as non-root: {reason}");
    true
}

/// The caller's uid and gid.
pub fn my_ids() -> (u32, u32) {
    // SAFETY: geteuid and getegid have no preconditions.
    unsafe { (libc::geteuid(), libc::getegid()) }
}

/// The xattr that marks a directory opaque in an overlay-format upper: the
/// `trusted.` one needs CAP_SYS_ADMIN, so an unprivileged unionfuse (like
/// overlayfs with `userxattr`) writes the `user.` one.
pub fn opaque_xattr() -> &'static str {
    if is_root() {
        "trusted.overlay.opaque"
    } else {
        "user.overlay.opaque"
    }
}

// ---------------------------------------------------------------------------
// Helpers added for tests/view.rs and tests/oracle.rs.
// ---------------------------------------------------------------------------

/// The errno of a failed call; panics (with `what`) when the call succeeded.
pub fn errno_of<T: std::fmt::Debug>(r: std::io::Result<T>, what: &str) -> i32 {
    match r {
        Ok(v) => panic!("{what}: expected an error, got Ok({v:?})"),
        Err(e) => e
            .raw_os_error()
            .unwrap_or_else(|| panic!("{what}: not an OS error: {e}")),
    }
}

/// `mknod(root/rel, mode, makedev(major, minor))`; `mode` includes the type.
pub fn mknod(root: &Path, rel: &str, mode: u32, major: u32, minor: u32) {
    let p = cpath(&root.join(rel));
    // SAFETY: p is a valid NUL-terminated path.
    let rc = unsafe { libc::mknod(p.as_ptr(), mode, libc::makedev(major, minor)) };
    assert_eq!(rc, 0, "mknod {rel}: {}", std::io::Error::last_os_error());
    // mknod obeys the umask; force the exact permission bits.
    chmod_nofollow(&root.join(rel), mode & 0o7777);
}

/// A fifo at `root/rel` with exactly `perm` permission bits.
pub fn mkfifo(root: &Path, rel: &str, perm: u32) {
    let p = cpath(&root.join(rel));
    // SAFETY: p is a valid NUL-terminated path.
    let rc = unsafe { libc::mkfifo(p.as_ptr(), perm) };
    assert_eq!(rc, 0, "mkfifo {rel}: {}", std::io::Error::last_os_error());
    chmod_nofollow(&root.join(rel), perm);
}

fn chmod_nofollow(p: &Path, perm: u32) {
    let c = cpath(p);
    // SAFETY: c is a valid NUL-terminated path.
    let rc = unsafe { libc::chmod(c.as_ptr(), perm) };
    assert_eq!(rc, 0, "chmod: {}", std::io::Error::last_os_error());
}

/// `lchown(root/rel, uid, gid)`.
pub fn lchown(root: &Path, rel: &str, uid: u32, gid: u32) {
    let p = cpath(&root.join(rel));
    // SAFETY: p is a valid NUL-terminated path.
    let rc = unsafe { libc::lchown(p.as_ptr(), uid, gid) };
    assert_eq!(rc, 0, "lchown {rel}: {}", std::io::Error::last_os_error());
}

/// One entry as libc `readdir` returns it (including `.` and `..`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawEntry {
    pub name: String,
    pub d_type: u8,
    pub d_ino: u64,
}

/// Every entry of `dir` via libc opendir/readdir, in readdir order, with
/// `.` and `..`.
pub fn readdir_raw(dir: &Path) -> Vec<RawEntry> {
    let c = cpath(dir);
    // SAFETY: c is a valid NUL-terminated path.
    let d = unsafe { libc::opendir(c.as_ptr()) };
    assert!(
        !d.is_null(),
        "opendir {}: {}",
        dir.display(),
        std::io::Error::last_os_error()
    );
    let mut out = Vec::new();
    loop {
        // SAFETY: d is a valid DIR* until closedir below.
        let e = unsafe { libc::readdir(d) };
        if e.is_null() {
            break;
        }
        // SAFETY: readdir returned a valid dirent whose d_name is NUL-terminated.
        let (name, d_type, d_ino) = unsafe {
            (
                std::ffi::CStr::from_ptr((*e).d_name.as_ptr())
                    .to_string_lossy()
                    .into_owned(),
                (*e).d_type,
                (*e).d_ino,
            )
        };
        out.push(RawEntry {
            name,
            d_type,
            d_ino,
        });
    }
    // SAFETY: d came from opendir and is closed exactly once.
    unsafe { libc::closedir(d) };
    out
}

/// A tmpfs mounted on `path` for the life of the value, so that a test can
/// put layers on distinct filesystems (colliding inode numbers, distinct
/// statfs figures). Unmounted on drop, lazily if need be.
#[derive(Debug)]
pub struct Tmpfs {
    pub path: PathBuf,
}

impl Tmpfs {
    pub fn new(path: &Path, size: &str) -> Tmpfs {
        fs::create_dir_all(path).expect("mkdir tmpfs mountpoint");
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(path)
            .status()
            .expect("run mount");
        assert!(st.success(), "mount tmpfs on {}", path.display());
        Tmpfs {
            path: path.to_path_buf(),
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let ok = Command::new("umount")
            .arg(&self.path)
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if !ok {
            let _ = Command::new("umount").arg("-l").arg(&self.path).status();
        }
    }
}

/// Mounts unionfuse, with the layers given as `--lower` each, plus `--work`
/// beside the upper when there is one.
pub fn mount_with_work(lowers: &[&Path], upper: Option<(&Path, &Path)>, mnt: &Path) -> Mounted {
    match upper {
        None => Mounted::new(lowers, None, mnt, &[]),
        Some((u, w)) => {
            let w = w.to_str().expect("utf8 work path");
            Mounted::new(lowers, Some(u), mnt, &["--work", w])
        }
    }
}

/// A minimal root filesystem: static busybox with a few applets, and
/// `etc/motd` and `etc/config` holding "image". `None` without busybox.
#[allow(dead_code)]
pub fn busybox_rootfs(s: &Scratch) -> Option<PathBuf> {
    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .map(Path::new)
        .find(|p| p.exists())?;
    let root = s.mkdir("rootfs");
    for d in ["bin", "etc", "tmp", "var"] {
        fs::create_dir_all(root.join(d)).expect("mkdir");
    }
    fs::copy(busybox, root.join("bin/busybox")).expect("copy busybox");
    for c in ["sh", "ls", "cat", "echo", "rm", "mkdir", "test", "id"] {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(c)).expect("symlink");
    }
    fs::write(root.join("etc/motd"), "image\n").expect("motd");
    fs::write(root.join("etc/config"), "image\n").expect("config");
    Some(root)
}

/// The pids of unionfuse processes whose command line names `mnt`.
pub fn daemon_pids(mnt: &Path) -> Vec<libc::pid_t> {
    let out = Command::new("pgrep")
        .arg("-f")
        .arg(mnt.as_os_str())
        .output()
        .expect("run pgrep");
    let me = fs::canonicalize(bin()).expect("bin path");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|p| p.parse::<libc::pid_t>().ok())
        .filter(|p| {
            fs::read_link(format!("/proc/{p}/exe"))
                .map(|e| e == me)
                .unwrap_or(false)
        })
        .collect()
}

/// Whether process `pid` is gone (or a zombie nobody reaped yet).
pub fn process_gone(pid: libc::pid_t) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(s) => s
            .rsplit_once(") ")
            .map(|(_, rest)| rest.starts_with('Z') || rest.starts_with('X'))
            .unwrap_or(false),
    }
}

/// `fusermount3 -u`, retried briefly while busy: tests run in parallel
/// threads, and a child another thread forks holds copies of this thread's
/// files until it execs, pinning the mount for a moment.
pub fn fusermount_u(mnt: &Path) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let out = Command::new("fusermount3")
            .arg("-u")
            .arg(mnt)
            .output()
            .expect("run fusermount3");
        let err = String::from_utf8_lossy(&out.stderr);
        if out.status.success() {
            return;
        }
        assert!(
            err.contains("busy") && Instant::now() < deadline,
            "fusermount3 -u: {err}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A journaled ext4 filesystem on a loop image, mounted at `dir` until
/// dropped: an upper that reuses inode numbers at once, and whose power can
/// be cut (`xfs_io -x -c shutdown`).
pub struct Ext4 {
    img: PathBuf,
    pub dir: PathBuf,
}

fn sh(cmd: &str, args: &[&std::ffi::OsStr]) {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{cmd}: {e} (scripts/test installs e2fsprogs and xfsprogs)"));
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Ext4 {
    /// An upper and a work directory on the image.
    pub fn upper_and_work(&self) -> (PathBuf, PathBuf) {
        let (upper, work) = (self.dir.join("upper"), self.dir.join("work"));
        fs::create_dir(&upper).expect("upper");
        fs::create_dir(&work).expect("work");
        (upper, work)
    }

    /// A 256 MiB image `NAME.img` in the scratch directory, mounted at
    /// `NAME`.
    pub fn new(s: &Scratch, name: &str) -> Ext4 {
        let img = s.path(&format!("{name}.img"));
        let f = fs::File::create(&img).expect("image");
        f.set_len(256 << 20).expect("size image");
        drop(f);
        sh(
            "mkfs.ext4",
            &["-q".as_ref(), "-F".as_ref(), img.as_os_str()],
        );
        let e = Ext4 {
            img,
            dir: s.mkdir(name),
        };
        e.mount();
        e
    }

    fn mount(&self) {
        sh(
            "mount",
            &[
                "-o".as_ref(),
                "loop".as_ref(),
                self.img.as_os_str(),
                self.dir.as_os_str(),
            ],
        );
    }

    /// What a power cut leaves: the journal is flushed, unsynced data is
    /// lost, and every later write fails.
    pub fn power_cut(&self) {
        sh(
            "xfs_io",
            &[
                "-x".as_ref(),
                "-c".as_ref(),
                "shutdown -f".as_ref(),
                self.dir.as_os_str(),
            ],
        );
    }

    /// A power cut that also loses what the journal had not committed:
    /// only what an fsync made durable survives.
    pub fn power_cut_unflushed(&self) {
        sh(
            "xfs_io",
            &[
                "-x".as_ref(),
                "-c".as_ref(),
                "shutdown".as_ref(),
                self.dir.as_os_str(),
            ],
        );
    }

    /// Unmounts and mounts again: the journal is replayed.
    pub fn reboot(&self) {
        sh("umount", &[self.dir.as_os_str()]);
        self.mount();
    }
}

impl Drop for Ext4 {
    fn drop(&mut self) {
        let ok = Command::new("umount")
            .arg(&self.dir)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
        }
    }
}

/// The first `len` bytes of `f` through a private read-only mapping.
#[allow(dead_code)]
pub fn mapped(f: &std::fs::File, len: usize) -> Vec<u8> {
    use std::os::fd::AsRawFd;
    // SAFETY: a fresh read-only private mapping of an open descriptor; it
    // is read within `len` bytes and unmapped before returning.
    unsafe {
        let p = libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ,
            libc::MAP_PRIVATE,
            f.as_raw_fd(),
            0,
        );
        assert_ne!(
            p,
            libc::MAP_FAILED,
            "mmap: {}",
            std::io::Error::last_os_error()
        );
        let v = std::slice::from_raw_parts(p.cast::<u8>(), len).to_vec();
        libc::munmap(p, len);
        v
    }
}

/// How many requests of `op` `stats --json` counts in `json`.
#[allow(dead_code)]
pub fn stats_count(json: &str, op: &str) -> u64 {
    let key = format!("{{\"op\":\"{op}\",\"count\":");
    json.split(&key)
        .nth(1)
        .and_then(|r| r.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

//! Every raw syscall unionfuse makes, behind safe wrappers over file descriptors.
//!
//! Nothing above this module writes `unsafe`. Paths never appear here except as
//! a single validated component (`&CStr`) relative to a directory descriptor,
//! or in the few CLI-side helpers that open layer roots and mountpoints.
//!
//! The calls go through rustix, whose `Errno` becomes an `io::Error` with
//! the same `raw_os_error()`. Raw libc remains only where rustix has no safe
//! wrapper for a program on glibc: fork and `_exit`, signal masks and
//! `sigwait`, `malloc_trim`, and the `*xattrat` syscalls (Linux 6.13).
#![allow(unsafe_code)]

mod dirent;
pub mod uring;
mod write;
mod xattr;

pub use dirent::DirEntries;
pub use write::*;
pub use xattr::{XTarget, getxattr, listxattr_vec};

use std::ffi::CStr;
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;

use rustix::fs::{AtFlags, Mode, OFlags, ResolveFlags};
use rustix::io::Errno;

/// `Result` of a syscall: the errno on failure.
pub type SysResult<T> = Result<T, io::Error>;

fn cvt(rc: libc::c_int) -> SysResult<libc::c_int> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

fn cvt_long(rc: libc::c_long) -> SysResult<libc::c_long> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// Raw `open(2)`-style flags as rustix's type; every bit is passed on
/// unchanged, known to rustix or not.
fn oflags(flags: i32) -> OFlags {
    OFlags::from_bits_retain(flags as u32)
}

/// Opens a directory given by an absolute path as an `O_PATH` descriptor.
/// Only the CLI uses this, for layer roots; everything later is fd-relative.
pub fn open_dir_path(path: &Path) -> SysResult<OwnedFd> {
    Ok(rustix::fs::open(
        path,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?)
}

const RESOLVE_FLAGS: ResolveFlags = ResolveFlags::BENEATH
    .union(ResolveFlags::NO_SYMLINKS)
    .union(ResolveFlags::NO_MAGICLINKS)
    .union(ResolveFlags::NO_XDEV);

/// Opens directory `name` in `dir` as an `O_PATH` descriptor without
/// following a symlink or crossing into another mount: fails with ENOTDIR
/// on anything else.
pub fn open_child_dir(dir: BorrowedFd<'_>, name: &CStr) -> SysResult<OwnedFd> {
    open_child_flags(dir, name, libc::O_PATH | libc::O_DIRECTORY)
}

/// Opens a child for reading with `flags`, never following a symlink
/// (ELOOP) or leaving `dir`. The caller guarantees the child is a regular
/// file or a directory: opening a device or FIFO could block or have side
/// effects. Flags that would change the child are refused (EINVAL): that
/// is [`open_child_write`], on a [`Writable`] directory.
pub fn open_child_flags(dir: BorrowedFd<'_>, name: &CStr, flags: i32) -> SysResult<OwnedFd> {
    if flags & libc::O_ACCMODE != libc::O_RDONLY || flags & (libc::O_TRUNC | libc::O_CREAT) != 0 {
        return Err(std::io::Error::from_raw_os_error(libc::EINVAL));
    }
    open_child(dir, name, flags)
}

/// [`open_child_flags`] for writing, in a directory of a writable tree.
pub fn open_child_write(dir: Writable<'_>, name: &CStr, flags: i32) -> SysResult<OwnedFd> {
    open_child(dir.fd(), name, flags)
}

fn open_child(dir: BorrowedFd<'_>, name: &CStr, flags: i32) -> SysResult<OwnedFd> {
    let flags = oflags(flags) | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    match rustix::fs::openat2(dir, name, flags, Mode::empty(), RESOLVE_FLAGS) {
        Ok(fd) => Ok(fd),
        // Kernels before 5.6: a single validated component with O_NOFOLLOW
        // cannot escape `dir` either.
        Err(Errno::NOSYS) => Ok(rustix::fs::openat(dir, name, flags, Mode::empty())?),
        Err(e) => Err(e.into()),
    }
}

/// Opens `rel` (a relative path) inside the tree rooted at `root`, as
/// if `root` were `/`: symlinks are followed, but absolute ones and `..`
/// never leave `root` (`RESOLVE_IN_ROOT`), and `/proc` magic links are
/// refused.
pub fn open_in_root(root: BorrowedFd<'_>, rel: &CStr, flags: i32) -> SysResult<OwnedFd> {
    let mut tries = 0;
    loop {
        match rustix::fs::openat2(
            root,
            rel,
            oflags(flags) | OFlags::CLOEXEC,
            Mode::empty(),
            ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS,
        ) {
            // The kernel cannot prove a walk through `..` stayed inside the
            // root when any rename or mount happened meanwhile, anywhere on
            // the machine, and asks to retry; a busy machine needs a few.
            Err(Errno::AGAIN) if tries < OPEN_IN_ROOT_TRIES => tries += 1,
            res => return Ok(res?),
        }
    }
}

/// How often [`open_in_root`] retries a walk the kernel could not verify.
const OPEN_IN_ROOT_TRIES: u32 = 100;

/// rustix's `struct stat` as libc's, the type the rest of the crate uses.
/// Field types differ by architecture, hence the `as _` casts; on 64-bit
/// targets every one is lossless.
fn libc_stat(s: &rustix::fs::Stat) -> libc::stat {
    let mut st = zeroed_stat();
    st.st_dev = s.st_dev as _;
    st.st_ino = s.st_ino as _;
    st.st_nlink = s.st_nlink as _;
    st.st_mode = s.st_mode as _;
    st.st_uid = s.st_uid as _;
    st.st_gid = s.st_gid as _;
    st.st_rdev = s.st_rdev as _;
    st.st_size = s.st_size as _;
    st.st_blksize = s.st_blksize as _;
    st.st_blocks = s.st_blocks as _;
    st.st_atime = s.st_atime as _;
    st.st_atime_nsec = s.st_atime_nsec as _;
    st.st_mtime = s.st_mtime as _;
    st.st_mtime_nsec = s.st_mtime_nsec as _;
    st.st_ctime = s.st_ctime as _;
    st.st_ctime_nsec = s.st_ctime_nsec as _;
    st
}

/// `fstat` on any descriptor, `O_PATH` ones included.
pub fn fstat(fd: BorrowedFd<'_>) -> SysResult<libc::stat> {
    Ok(libc_stat(&rustix::fs::fstat(fd)?))
}

/// `fstatat(dir, name, AT_SYMLINK_NOFOLLOW)`.
pub fn fstatat(dir: BorrowedFd<'_>, name: &CStr) -> SysResult<libc::stat> {
    Ok(libc_stat(&rustix::fs::statat(
        dir,
        name,
        AtFlags::SYMLINK_NOFOLLOW,
    )?))
}

/// `stat` of a path, following symlinks (CLI only).
pub fn stat_path(path: &Path) -> SysResult<libc::stat> {
    Ok(libc_stat(&rustix::fs::stat(path)?))
}

/// Mount facts of a path (CLI only): its mount id and whether it is the root
/// of a mount.
#[derive(Debug, Clone, Copy)]
pub struct MountFacts {
    pub mnt_id: u64,
    pub is_mount_root: bool,
}

/// `statx` for the mount id and `STATX_ATTR_MOUNT_ROOT` of `path`, not
/// following a final symlink.
pub fn mount_facts(path: &Path) -> SysResult<MountFacts> {
    use rustix::fs::{StatxAttributes, StatxFlags};
    let stx = rustix::fs::statx(
        rustix::fs::CWD,
        path,
        AtFlags::SYMLINK_NOFOLLOW | AtFlags::NO_AUTOMOUNT,
        StatxFlags::MNT_ID | StatxFlags::BASIC_STATS,
    )?;
    Ok(MountFacts {
        mnt_id: stx.stx_mnt_id,
        is_mount_root: stx
            .stx_attributes_mask
            .contains(StatxAttributes::MOUNT_ROOT)
            && stx.stx_attributes.contains(StatxAttributes::MOUNT_ROOT),
    })
}

/// `readlinkat(dir, name)`: the target of a symlink, never followed.
pub fn readlinkat(dir: BorrowedFd<'_>, name: &CStr) -> SysResult<Vec<u8>> {
    let mut buf = vec![0u8; libc::PATH_MAX as usize + 1];
    let n = rustix::fs::readlinkat_raw(dir, name, &mut buf[..])?;
    buf.truncate(n);
    Ok(buf)
}

/// `pread` into `buf`, returning the bytes read.
pub fn pread(fd: BorrowedFd<'_>, buf: &mut [u8], offset: u64) -> SysResult<usize> {
    Ok(rustix::io::pread(fd, buf, offset)?)
}

/// `lseek(fd, offset, whence)`, for SEEK_DATA / SEEK_HOLE as well as the
/// usual three. The offset reaches the kernel as given (rustix casts the
/// absolute ones back to `off_t`), so a negative one gets the kernel's
/// answer; an unknown `whence` is EINVAL, as the kernel would say.
pub fn lseek(fd: BorrowedFd<'_>, offset: i64, whence: i32) -> SysResult<i64> {
    use rustix::fs::SeekFrom;
    let pos = match whence {
        libc::SEEK_SET => SeekFrom::Start(offset as u64),
        libc::SEEK_CUR => SeekFrom::Current(offset),
        libc::SEEK_END => SeekFrom::End(offset),
        libc::SEEK_DATA => SeekFrom::Data(offset as u64),
        libc::SEEK_HOLE => SeekFrom::Hole(offset as u64),
        _ => return Err(Errno::INVAL.into()),
    };
    Ok(rustix::fs::seek(fd, pos)? as i64)
}

/// `fstatfs` of the filesystem holding `fd`. `f_fsid` stays zero: libc's
/// `fsid_t` has private fields, and nothing reads it (FUSE's statfs reply
/// has no such field).
pub fn fstatfs(fd: BorrowedFd<'_>) -> SysResult<libc::statfs> {
    let s = rustix::fs::fstatfs(fd)?;
    // SAFETY: struct statfs is plain old data; all-zero is a valid value.
    let mut st = unsafe { MaybeUninit::<libc::statfs>::zeroed().assume_init() };
    st.f_type = s.f_type as _;
    st.f_bsize = s.f_bsize as _;
    st.f_blocks = s.f_blocks as _;
    st.f_bfree = s.f_bfree as _;
    st.f_bavail = s.f_bavail as _;
    st.f_files = s.f_files as _;
    st.f_ffree = s.f_ffree as _;
    st.f_namelen = s.f_namelen as _;
    st.f_frsize = s.f_frsize as _;
    Ok(st)
}

/// Raises the open-file limit as far as allowed: more descriptors mean more
/// cached directories and open files.
pub fn raise_nofile_limit() -> u64 {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    // rustix says `None` for RLIM_INFINITY.
    let raw = |v: Option<u64>| v.unwrap_or(libc::RLIM_INFINITY);
    let lim = getrlimit(Resource::Nofile);
    let (cur, max) = (raw(lim.current), raw(lim.maximum));
    let nr_open = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or(max);
    let limit = |v: u64| (v != libc::RLIM_INFINITY).then_some(v);
    // Root may raise the hard limit too; try that first, then the soft one.
    let want = nr_open.max(max);
    let both = |v| Rlimit {
        current: limit(v),
        maximum: limit(v),
    };
    if setrlimit(Resource::Nofile, both(want)).is_ok() {
        return want;
    }
    if setrlimit(Resource::Nofile, both(max)).is_ok() {
        return max;
    }
    cur
}

/// Whether the process runs with euid 0.
pub fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// The effective uid.
pub fn euid() -> u32 {
    rustix::process::geteuid().as_raw()
}

/// The effective gid.
pub fn egid() -> u32 {
    rustix::process::getegid().as_raw()
}

/// `umount2(path, flags)` (CLI only).
pub fn umount(path: &Path, flags: i32) -> SysResult<()> {
    let flags = rustix::mount::UnmountFlags::from_bits_retain(flags as u32);
    Ok(rustix::mount::unmount(path, flags)?)
}

/// `mount(2)` of a FUSE connection (the daemon as root): `data` carries
/// the `/dev/fuse` descriptor and the kernel options.
pub fn mount_fuse(
    source: &CStr,
    target: &Path,
    fstype: &CStr,
    flags: libc::c_ulong,
    data: &CStr,
) -> SysResult<()> {
    // MS_* flags all fit in the low 32 bits (the kernel takes an unsigned
    // long only for the legacy MS_MGC_VAL magic in the high half).
    let flags = rustix::mount::MountFlags::from_bits_retain(flags as u32);
    Ok(rustix::mount::mount(source, target, fstype, flags, data)?)
}

/// `syncfs(2)`: writes back the whole filesystem `fd` is on.
pub fn syncfs(fd: BorrowedFd<'_>) -> SysResult<()> {
    Ok(rustix::fs::syncfs(fd)?)
}

/// A pipe whose read end is close-on-exec and whose write end is inherited by
/// a child, for the readiness handshake with a daemonized mount.
pub fn ready_pipe() -> SysResult<(OwnedFd, OwnedFd)> {
    let (r, w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?;
    set_cloexec(w.as_fd(), false)?;
    Ok((r, w))
}

/// Sets or clears `FD_CLOEXEC`.
pub fn set_cloexec(fd: BorrowedFd<'_>, on: bool) -> SysResult<()> {
    use rustix::io::FdFlags;
    let mut flags = rustix::io::fcntl_getfd(fd)?;
    flags.set(FdFlags::CLOEXEC, on);
    Ok(rustix::io::fcntl_setfd(fd, flags)?)
}

/// Takes ownership of an inherited descriptor number, checking it is open.
pub fn adopt_fd(fd: RawFd) -> SysResult<OwnedFd> {
    // F_GETFD only checks the number is open; EBADF otherwise.
    // SAFETY: fcntl accepts any number: the borrow is used for that one call,
    // which fails cleanly if nothing is open there.
    rustix::io::fcntl_getfd(unsafe { BorrowedFd::borrow_raw(fd) })?;
    // SAFETY: the caller was handed this fd number to own (e.g. --ready-fd),
    // and it is open.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    set_cloexec(owned.as_fd(), true)?;
    Ok(owned)
}

/// Writes all of `data` to `fd`.
pub fn write_all(fd: BorrowedFd<'_>, mut data: &[u8]) -> SysResult<()> {
    while !data.is_empty() {
        match rustix::io::write(fd, data) {
            Ok(n) => data = &data[n..],
            Err(Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Whether `fd` was opened for writing (`O_WRONLY` or `O_RDWR`).
pub fn is_open_for_write(fd: BorrowedFd<'_>) -> bool {
    rustix::fs::fcntl_getfl(fd).is_ok_and(|fl| fl.intersects(OFlags::WRONLY | OFlags::RDWR))
}

/// Returns the allocator's free memory to the system (glibc keeps what
/// was freed for reuse, so a daemon that once held a million inodes would
/// keep their memory forever).
pub fn trim_heap() {
    // SAFETY: malloc_trim only walks the allocator's own free lists.
    unsafe { libc::malloc_trim(0) };
}

/// `pidfd_open(2)`: a descriptor that becomes readable when `pid` exits.
pub fn pidfd_open(pid: u32) -> SysResult<OwnedFd> {
    let pid = i32::try_from(pid).map_err(|_| Errno::SRCH)?;
    // The kernel refuses pid 0 with EINVAL; rustix has no Pid for it.
    let pid = rustix::process::Pid::from_raw(pid).ok_or(Errno::INVAL)?;
    Ok(rustix::process::pidfd_open(
        pid,
        rustix::process::PidfdFlags::empty(),
    )?)
}

/// Waits up to `timeout_ms` for `fd` to become readable (forever when
/// negative); false on timeout.
pub fn poll_readable(fd: BorrowedFd<'_>, timeout_ms: i32) -> SysResult<bool> {
    use rustix::event::{PollFd, PollFlags, Timespec};
    let timeout = (timeout_ms >= 0).then(|| Timespec {
        tv_sec: i64::from(timeout_ms / 1000),
        tv_nsec: i64::from(timeout_ms % 1000) * 1_000_000,
    });
    let mut fds = [PollFd::from_borrowed_fd(fd, PollFlags::IN)];
    loop {
        match rustix::event::poll(&mut fds, timeout.as_ref()) {
            Ok(n) => return Ok(n > 0),
            Err(Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Reads up to `buf.len()` bytes, retrying on EINTR.
pub fn read(fd: BorrowedFd<'_>, buf: &mut [u8]) -> SysResult<usize> {
    Ok(rustix::io::retry_on_intr(|| {
        rustix::io::read(fd, &mut *buf)
    })?)
}

/// Points stderr at `/dev/null`, for a daemon whose terminal went away.
pub fn detach_stderr() -> SysResult<()> {
    let null = std::fs::OpenOptions::new().write(true).open("/dev/null")?;
    Ok(rustix::stdio::dup2_stderr(&null)?)
}

/// Which side of [`fork_daemon`] this is.
#[derive(Debug)]
pub enum Forked {
    /// The new process, in a process group of its own (the terminal's ^C
    /// must not reach a daemon), stdin and stdout on /dev/null.
    Child,
    Parent(libc::pid_t),
}

/// Forks a daemon that goes on with this process's state (its validated
/// configuration) instead of re-parsing a command line. Refused unless
/// the process has a single thread: the child of a threaded process may
/// only call async-signal-safe functions.
pub fn fork_daemon() -> SysResult<Forked> {
    let threads = std::fs::read_dir("/proc/self/task").map(|d| d.count())?;
    if threads != 1 {
        return Err(io::Error::other(format!(
            "cannot fork a daemon from a process with {threads} threads"
        )));
    }
    let null = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")?;
    // rustix has no fork outside its `runtime` API (meant for libc
    // implementations, not programs linking glibc), so this one stays raw.
    // SAFETY: the process has one thread, so the child is a full copy that
    // may run any code.
    let pid = cvt(unsafe { libc::fork() })?;
    if pid > 0 {
        return Ok(Forked::Parent(pid));
    }
    // Failures here leave the daemon attached to the terminal's group or
    // descriptors, which is harmless; the mount itself goes on.
    let detached = rustix::process::setpgid(None, None)
        .and_then(|()| rustix::stdio::dup2_stdin(&null))
        .and_then(|()| rustix::stdio::dup2_stdout(&null));
    if let Err(e) = detached {
        log::debug!("detaching the daemon: {e}");
    }
    Ok(Forked::Child)
}

/// The exit code a shell would report for a wait status: the code, or
/// 128 + the signal that killed the process.
fn exit_code(status: rustix::process::WaitStatus) -> i32 {
    match status.exit_status() {
        Some(code) => code,
        None => 128 + status.terminating_signal().unwrap_or(0),
    }
}

/// Waits for child `pid` and returns its exit code (128 + signal when
/// killed).
pub fn wait_child(pid: libc::pid_t) -> SysResult<i32> {
    let pid = rustix::process::Pid::from_raw(pid).ok_or(Errno::CHILD)?;
    loop {
        match rustix::process::waitpid(Some(pid), rustix::process::WaitOptions::empty()) {
            Ok(Some((_, status))) => return Ok(exit_code(status)),
            // Without WNOHANG the kernel only returns for a state change.
            Ok(None) => continue,
            Err(Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

// Signal masks and sigwait stay on libc: rustix offers them only in its
// `runtime` API, which bypasses glibc's reserved signals and is unsafe.

/// The signals [`wait_signal`] takes.
const TERM_SIGNALS: [libc::c_int; 2] = [libc::SIGTERM, libc::SIGINT];

/// Blocks SIGTERM, SIGINT and SIGHUP in the calling thread (and every thread
/// it spawns later), so that one thread can take the first two with
/// [`wait_signal`]. SIGHUP stays blocked for good: a daemon outlives the
/// terminal that started it, and a hangup must not kill the mount.
pub fn block_term_signals() -> SysResult<()> {
    let set = sigset(&[TERM_SIGNALS[0], TERM_SIGNALS[1], libc::SIGHUP]);
    // SAFETY: set is an initialised sigset; the old set is not wanted.
    let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    Ok(())
}

fn sigset(signals: &[libc::c_int]) -> libc::sigset_t {
    let mut set = MaybeUninit::<libc::sigset_t>::uninit();
    // SAFETY: sigemptyset initialises the set; sigaddset adds valid signals.
    unsafe {
        libc::sigemptyset(set.as_mut_ptr());
        for &sig in signals {
            libc::sigaddset(set.as_mut_ptr(), sig);
        }
        set.assume_init()
    }
}

/// Waits for one of the signals blocked by [`block_term_signals`].
pub fn wait_signal() -> i32 {
    let set = sigset(&TERM_SIGNALS);
    let mut sig: libc::c_int = 0;
    // SAFETY: set is initialised and sig is writable.
    let rc = unsafe { libc::sigwait(&set, &mut sig) };
    if rc != 0 { libc::SIGTERM } else { sig }
}

/// Reads the whole directory `dir` (an `O_PATH` descriptor) with
/// `getdents64`, without touching its atime where permitted.
pub fn read_dir(dir: BorrowedFd<'_>) -> SysResult<DirEntries> {
    let flags = libc::O_RDONLY | libc::O_DIRECTORY;
    let fd = match open_child_flags(dir, c".", flags | libc::O_NOATIME) {
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => open_child_flags(dir, c".", flags)?,
        other => other?,
    };
    DirEntries::read_all(fd.as_fd())
}

/// An all-zero `struct stat`, for replies that carry no real object.
pub fn zeroed_stat() -> libc::stat {
    // SAFETY: struct stat is plain old data; all-zero is a valid value.
    unsafe { MaybeUninit::<libc::stat>::zeroed().assume_init() }
}

/// Checks whether a `struct stat` describes an overlayfs whiteout: a
/// character device with device number 0:0.
pub fn is_whiteout_stat(st: &libc::stat) -> bool {
    st.st_mode & libc::S_IFMT == libc::S_IFCHR && st.st_rdev == 0
}

/// A connected pair of unix stream sockets, both close-on-exec.
pub fn socketpair() -> SysResult<(OwnedFd, OwnedFd)> {
    use rustix::net::{AddressFamily, SocketFlags, SocketType};
    Ok(rustix::net::socketpair(
        AddressFamily::UNIX,
        SocketType::STREAM,
        SocketFlags::CLOEXEC,
        None,
    )?)
}

/// Receives one descriptor sent with `SCM_RIGHTS` (how fusermount3 hands
/// over the `/dev/fuse` descriptor it opened). EPROTO when the message
/// carries none.
pub fn recv_fd(sock: BorrowedFd<'_>) -> SysResult<OwnedFd> {
    use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags};
    let mut byte = [0u8; 1];
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut cmsg = RecvAncillaryBuffer::new(&mut space);
    loop {
        let mut iov = [io::IoSliceMut::new(&mut byte)];
        match rustix::net::recvmsg(sock, &mut iov, &mut cmsg, RecvFlags::CMSG_CLOEXEC) {
            Ok(_) => break,
            Err(Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    // Any further descriptors (none are expected) are closed with the drain.
    for msg in cmsg.drain() {
        if let RecvAncillaryMessage::ScmRights(mut fds) = msg
            && let Some(fd) = fds.next()
        {
            return Ok(fd);
        }
    }
    Err(Errno::PROTO.into())
}

/// What a child needs to enter a container root, prepared before fork:
/// pre_exec code must not allocate.
#[derive(Debug)]
pub struct RootSetup {
    pub root: std::ffi::CString,
    /// `(source, target)`: `target` a path relative to `root`, resolved
    /// inside it (see [`open_in_root`]) and bind-mounted recursively from
    /// `source` (host /proc, /dev, /sys and volumes).
    pub binds: Vec<(std::ffi::CString, std::ffi::CString)>,
    /// For an unprivileged caller: `uid_map`/`gid_map` lines mapping root
    /// in a new user namespace to the caller.
    pub userns: Option<(std::ffi::CString, std::ffi::CString)>,
}

fn write_proc(path: &CStr, data: &[u8]) -> SysResult<()> {
    let fd = rustix::fs::open(path, OFlags::WRONLY | OFlags::CLOEXEC, Mode::empty())?;
    rustix::io::write(&fd, data)?;
    Ok(())
}

/// In a freshly forked child: private mount and PID namespaces (and a user
/// namespace without privilege), the binds, chroot into the root, then a
/// fork: the first process of the new PID namespace goes on to exec with a
/// /proc of its own, while this one waits for it and exits with its status.
/// Allocates nothing: it runs between fork and exec (rustix takes the
/// `&CStr`s as they are, and its errors convert without allocating).
pub fn enter_root(s: &RootSetup) -> SysResult<()> {
    use rustix::mount::{MountFlags, MountPropagationFlags};
    use rustix::thread::UnshareFlags;
    let mut flags = UnshareFlags::NEWNS | UnshareFlags::NEWPID;
    if s.userns.is_some() {
        flags |= UnshareFlags::NEWUSER;
    }
    // SAFETY: no CLONE_FILES: the descriptor table stays shared as it was
    // (and this process has a single thread anyway).
    unsafe { rustix::thread::unshare_unsafe(flags) }?;
    if let Some((uid_map, gid_map)) = &s.userns {
        write_proc(c"/proc/self/setgroups", b"deny")?;
        write_proc(c"/proc/self/uid_map", uid_map.as_bytes())?;
        write_proc(c"/proc/self/gid_map", gid_map.as_bytes())?;
    }
    // Nothing done here may reach the host's mount table.
    rustix::mount::mount_change(
        c"/",
        MountPropagationFlags::REC | MountPropagationFlags::PRIVATE,
    )?;
    // Targets are opened in this namespace (a mount made onto a descriptor
    // of another namespace's mount is refused) and mounted onto through
    // their descriptor, never through a path a symlink in the image could
    // redirect to the host.
    let root = rustix::fs::open(
        s.root.as_c_str(),
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    for (src, rel) in &s.binds {
        let target = open_in_root(root.as_fd(), rel, libc::O_PATH)?;
        let mut path = [0u8; 32];
        let via = fd_path(&mut path, target.as_raw_fd());
        rustix::mount::mount_bind_recursive(src.as_c_str(), via)?;
    }
    drop(root);
    rustix::process::chroot(s.root.as_c_str())?;
    rustix::process::chdir(c"/")?;
    // rustix has no fork for programs on glibc (see `fork_daemon`).
    // SAFETY: fork in a single-threaded child; both sides only make
    // syscalls until exec or _exit.
    let pid = cvt(unsafe { libc::fork() })?;
    if pid > 0 {
        // A failed wait (it cannot fail for our own child) reports 0.
        let code = wait_child(pid).unwrap_or(0);
        // SAFETY: ends this intermediate process without running anything
        // of the parent's (no atexit handlers, no buffers).
        unsafe { libc::_exit(code) };
    }
    // PID 1 of the new namespace: its own /proc over the host's, where the
    // kernel allows (a user namespace may not, if the host's /proc has
    // parts covered); the host's bind stays otherwise.
    let _ = rustix::mount::mount(
        c"proc",
        c"/proc",
        c"proc",
        MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC,
        None,
    );
    Ok(())
}

/// `/proc/self/fd/N` in `buf`, without allocating (this runs between fork
/// and exec).
fn fd_path(buf: &mut [u8; 32], fd: RawFd) -> &CStr {
    const PREFIX: &[u8] = b"/proc/self/fd/";
    buf[..PREFIX.len()].copy_from_slice(PREFIX);
    let mut digits = [0u8; 12];
    let mut n = fd.unsigned_abs();
    let mut len = 0;
    loop {
        digits[len] = b'0' + (n % 10) as u8;
        len += 1;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    for i in 0..len {
        buf[PREFIX.len() + i] = digits[len - 1 - i];
    }
    buf[PREFIX.len() + len] = 0;
    CStr::from_bytes_until_nul(&buf[..]).unwrap_or(c"/proc/self/fd")
}

/// Starts `cmd` inside the root `setup` describes (see [`enter_root`]).
pub fn spawn_in_root(
    cmd: &mut std::process::Command,
    setup: RootSetup,
) -> SysResult<std::process::Child> {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure runs in the forked child before exec; enter_root
    // only makes syscalls on data prepared before the fork.
    unsafe { cmd.pre_exec(move || enter_root(&setup)) };
    cmd.spawn()
}

//! Every raw syscall unionfuse makes, behind safe wrappers over file descriptors.
//!
//! Nothing above this module writes `unsafe`. Paths never appear here except as
//! a single validated component (`&CStr`) relative to a directory descriptor,
//! or in the few CLI-side helpers that open layer roots and mountpoints.
#![allow(unsafe_code)]

mod dirent;
mod write;
mod xattr;

pub use dirent::{DirEntries, RawDirent};
pub use write::*;
pub use xattr::{XTarget, getxattr, listxattr, listxattr_vec};

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;

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

fn cvt_size(rc: libc::ssize_t) -> SysResult<usize> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc as usize)
    }
}

fn path_cstring(path: &Path) -> SysResult<std::ffi::CString> {
    use std::os::unix::ffi::OsStrExt;
    std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

/// Opens a directory given by an absolute path as an `O_PATH` descriptor.
/// Only the CLI uses this, for layer roots; everything later is fd-relative.
pub fn open_dir_path(path: &Path) -> SysResult<OwnedFd> {
    let c = path_cstring(path)?;
    // SAFETY: c is a valid NUL-terminated string; the returned fd is owned.
    let fd = cvt(unsafe {
        libc::open(
            c.as_ptr(),
            libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    })?;
    // SAFETY: fd was just returned by open and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `struct open_how` of openat2(2); libc's is non-exhaustive.
#[repr(C)]
struct OpenHow {
    flags: u64,
    mode: u64,
    resolve: u64,
}

const RESOLVE_FLAGS: u64 = libc::RESOLVE_BENEATH
    | libc::RESOLVE_NO_SYMLINKS
    | libc::RESOLVE_NO_MAGICLINKS
    | libc::RESOLVE_NO_XDEV;

/// Opens one child of `dir` as an `O_PATH` descriptor without following a
/// symlink or crossing into another mount. A symlink yields a descriptor to
/// the link itself.
pub fn open_child(dir: BorrowedFd<'_>, name: &CStr) -> SysResult<OwnedFd> {
    open_child_flags(dir, name, libc::O_PATH)
}

/// Like [`open_child`] for a directory: fails with ENOTDIR on anything else.
pub fn open_child_dir(dir: BorrowedFd<'_>, name: &CStr) -> SysResult<OwnedFd> {
    open_child_flags(dir, name, libc::O_PATH | libc::O_DIRECTORY)
}

/// Opens a child for I/O with `flags`, never following a symlink (ELOOP) or
/// leaving `dir`. The caller guarantees the child is a regular file or a
/// directory: opening a device or FIFO could block or have side effects.
pub fn open_child_flags(dir: BorrowedFd<'_>, name: &CStr, flags: i32) -> SysResult<OwnedFd> {
    let flags = flags | libc::O_NOFOLLOW | libc::O_CLOEXEC;
    let how = OpenHow {
        flags: flags as u64,
        mode: 0,
        resolve: RESOLVE_FLAGS,
    };
    // SAFETY: name is NUL-terminated, how is a valid open_how of the size passed.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            dir.as_raw_fd(),
            name.as_ptr(),
            &how as *const OpenHow,
            std::mem::size_of::<OpenHow>(),
        )
    };
    let fd = match cvt_long(rc) {
        Ok(fd) => fd as RawFd,
        Err(e) if e.raw_os_error() == Some(libc::ENOSYS) => {
            // Kernels before 5.6: a single validated component with O_NOFOLLOW
            // cannot escape `dir` either.
            // SAFETY: as above.
            cvt(unsafe { libc::openat(dir.as_raw_fd(), name.as_ptr(), flags) })?
        }
        Err(e) => return Err(e),
    };
    // SAFETY: fd was just returned by the kernel and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Opens `rel` (a relative path) inside the tree rooted at `root`, as
/// if `root` were `/`: symlinks are followed, but absolute ones and `..`
/// never leave `root` (`RESOLVE_IN_ROOT`), and `/proc` magic links are
/// refused.
pub fn open_in_root(root: BorrowedFd<'_>, rel: &CStr, flags: i32) -> SysResult<OwnedFd> {
    let how = OpenHow {
        flags: (flags | libc::O_CLOEXEC) as u64,
        mode: 0,
        resolve: libc::RESOLVE_IN_ROOT | libc::RESOLVE_NO_MAGICLINKS,
    };
    // SAFETY: rel is NUL-terminated, how is a valid open_how of the size passed.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            root.as_raw_fd(),
            rel.as_ptr(),
            &how as *const OpenHow,
            std::mem::size_of::<OpenHow>(),
        )
    };
    let fd = cvt_long(rc)? as RawFd;
    // SAFETY: fd was just returned by the kernel and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `fstat` on any descriptor, `O_PATH` ones included.
pub fn fstat(fd: BorrowedFd<'_>) -> SysResult<libc::stat> {
    let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: st points to writable memory of the right size.
    cvt(unsafe { libc::fstat(fd.as_raw_fd(), st.as_mut_ptr()) })?;
    // SAFETY: fstat succeeded, so st is initialised.
    Ok(unsafe { st.assume_init() })
}

/// `fstatat(dir, name, AT_SYMLINK_NOFOLLOW)`.
pub fn fstatat(dir: BorrowedFd<'_>, name: &CStr) -> SysResult<libc::stat> {
    let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: name is NUL-terminated; st points to writable memory.
    cvt(unsafe {
        libc::fstatat(
            dir.as_raw_fd(),
            name.as_ptr(),
            st.as_mut_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    })?;
    // SAFETY: fstatat succeeded, so st is initialised.
    Ok(unsafe { st.assume_init() })
}

/// `stat` of a path, following symlinks (CLI only).
pub fn stat_path(path: &Path) -> SysResult<libc::stat> {
    let c = path_cstring(path)?;
    let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: c is NUL-terminated; st points to writable memory.
    cvt(unsafe { libc::stat(c.as_ptr(), st.as_mut_ptr()) })?;
    // SAFETY: stat succeeded, so st is initialised.
    Ok(unsafe { st.assume_init() })
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
    let c = path_cstring(path)?;
    let mut stx = std::mem::MaybeUninit::<libc::statx>::zeroed();
    // SAFETY: c is NUL-terminated; stx points to writable memory of the right size.
    cvt(unsafe {
        libc::statx(
            libc::AT_FDCWD,
            c.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW | libc::AT_NO_AUTOMOUNT,
            libc::STATX_MNT_ID | libc::STATX_BASIC_STATS,
            stx.as_mut_ptr(),
        )
    })?;
    // SAFETY: statx succeeded and the buffer was zeroed before.
    let stx = unsafe { stx.assume_init() };
    Ok(MountFacts {
        mnt_id: stx.stx_mnt_id,
        is_mount_root: stx.stx_attributes_mask & (libc::STATX_ATTR_MOUNT_ROOT as u64) != 0
            && stx.stx_attributes & (libc::STATX_ATTR_MOUNT_ROOT as u64) != 0,
    })
}

/// `readlinkat(dir, name)`: the target of a symlink, never followed.
pub fn readlinkat(dir: BorrowedFd<'_>, name: &CStr) -> SysResult<Vec<u8>> {
    let mut buf = vec![0u8; libc::PATH_MAX as usize + 1];
    // SAFETY: name is NUL-terminated; buf is writable for its length.
    let n = cvt_size(unsafe {
        libc::readlinkat(
            dir.as_raw_fd(),
            name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    })?;
    buf.truncate(n);
    Ok(buf)
}

/// `pread` into `buf`, returning the bytes read.
pub fn pread(fd: BorrowedFd<'_>, buf: &mut [u8], offset: u64) -> SysResult<usize> {
    // SAFETY: buf is writable for its length.
    cvt_size(unsafe {
        libc::pread(
            fd.as_raw_fd(),
            buf.as_mut_ptr().cast(),
            buf.len(),
            offset as libc::off_t,
        )
    })
}

/// `lseek`, for SEEK_DATA / SEEK_HOLE.
pub fn lseek(fd: BorrowedFd<'_>, offset: i64, whence: i32) -> SysResult<i64> {
    // SAFETY: lseek has no memory-safety preconditions.
    let rc = unsafe { libc::lseek(fd.as_raw_fd(), offset, whence) };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// `fstatfs` of the filesystem holding `fd`.
pub fn fstatfs(fd: BorrowedFd<'_>) -> SysResult<libc::statfs> {
    let mut st = std::mem::MaybeUninit::<libc::statfs>::uninit();
    // SAFETY: st points to writable memory of the right size.
    cvt(unsafe { libc::fstatfs(fd.as_raw_fd(), st.as_mut_ptr()) })?;
    // SAFETY: fstatfs succeeded.
    Ok(unsafe { st.assume_init() })
}

/// Raises the open-file limit as far as allowed: more descriptors mean more
/// cached directories and open files.
pub fn raise_nofile_limit() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: lim is a valid rlimit to fill.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return 0;
    }
    let nr_open = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or(lim.rlim_max);
    // Root may raise the hard limit too; try that first, then the soft one.
    let want = libc::rlimit {
        rlim_cur: nr_open.max(lim.rlim_max),
        rlim_max: nr_open.max(lim.rlim_max),
    };
    // SAFETY: want is a valid rlimit.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &want) } == 0 {
        return want.rlim_cur;
    }
    let soft = libc::rlimit {
        rlim_cur: lim.rlim_max,
        rlim_max: lim.rlim_max,
    };
    // SAFETY: soft is a valid rlimit.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &soft) } == 0 {
        return soft.rlim_cur;
    }
    lim.rlim_cur
}

/// Whether the process runs with euid 0.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// The effective uid.
pub fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() }
}

/// The effective gid.
pub fn egid() -> u32 {
    // SAFETY: getegid has no preconditions.
    unsafe { libc::getegid() }
}

/// `umount2(path, flags)` (CLI only).
pub fn umount(path: &Path, flags: i32) -> SysResult<()> {
    let c = path_cstring(path)?;
    // SAFETY: c is NUL-terminated.
    cvt(unsafe { libc::umount2(c.as_ptr(), flags) })?;
    Ok(())
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
    let t = path_cstring(target)?;
    // SAFETY: every string is NUL-terminated and outlives the call.
    cvt(unsafe {
        libc::mount(
            source.as_ptr(),
            t.as_ptr(),
            fstype.as_ptr(),
            flags,
            data.as_ptr().cast(),
        )
    })?;
    Ok(())
}

/// `syncfs(2)`: writes back the whole filesystem `fd` is on.
pub fn syncfs(fd: BorrowedFd<'_>) -> SysResult<()> {
    // SAFETY: fd is a valid descriptor for the duration of the call.
    cvt(unsafe { libc::syncfs(fd.as_raw_fd()) })?;
    Ok(())
}

/// A pipe whose read end is close-on-exec and whose write end is inherited by
/// a child, for the readiness handshake with a daemonized mount.
pub fn ready_pipe() -> SysResult<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: fds is a writable array of two ints.
    cvt(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) })?;
    // SAFETY: both fds were just created and are owned by nobody else.
    let (r, w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    set_cloexec(w.as_fd(), false)?;
    Ok((r, w))
}

/// Sets or clears `FD_CLOEXEC`.
pub fn set_cloexec(fd: BorrowedFd<'_>, on: bool) -> SysResult<()> {
    // SAFETY: F_GETFD/F_SETFD take no pointers.
    let flags = cvt(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFD) })?;
    let new = if on {
        flags | libc::FD_CLOEXEC
    } else {
        flags & !libc::FD_CLOEXEC
    };
    // SAFETY: as above.
    cvt(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFD, new) })?;
    Ok(())
}

/// Takes ownership of an inherited descriptor number, checking it is open.
pub fn adopt_fd(fd: RawFd) -> SysResult<OwnedFd> {
    // SAFETY: F_GETFD takes no pointers; it only checks the fd is open.
    cvt(unsafe { libc::fcntl(fd, libc::F_GETFD) })?;
    // SAFETY: the caller was handed this fd number to own (e.g. --ready-fd).
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    set_cloexec(owned.as_fd(), true)?;
    Ok(owned)
}

/// Writes all of `data` to `fd`.
pub fn write_all(fd: BorrowedFd<'_>, mut data: &[u8]) -> SysResult<()> {
    while !data.is_empty() {
        // SAFETY: data is readable for its length.
        let n = cvt_size(unsafe { libc::write(fd.as_raw_fd(), data.as_ptr().cast(), data.len()) });
        match n {
            Ok(n) => data = &data[n..],
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Whether `fd` was opened for writing (`O_WRONLY` or `O_RDWR`).
pub fn is_open_for_write(fd: BorrowedFd<'_>) -> bool {
    // SAFETY: F_GETFL takes no argument and only reads the descriptor's flags.
    let fl = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) };
    fl >= 0 && fl & libc::O_ACCMODE != libc::O_RDONLY
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
    let pid = libc::pid_t::try_from(pid).map_err(|_| io::Error::from_raw_os_error(libc::ESRCH))?;
    // SAFETY: pidfd_open takes plain integers; the fd it returns is owned.
    let fd = cvt_long(unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) })?;
    // SAFETY: fd was just returned by the kernel and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// Waits up to `timeout_ms` for `fd` to become readable; false on timeout.
pub fn poll_readable(fd: BorrowedFd<'_>, timeout_ms: i32) -> SysResult<bool> {
    let mut p = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    loop {
        // SAFETY: p is one valid pollfd for the duration of the call.
        match cvt(unsafe { libc::poll(&mut p, 1, timeout_ms) }) {
            Ok(n) => return Ok(n > 0),
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Reads up to `buf.len()` bytes, retrying on EINTR.
pub fn read(fd: BorrowedFd<'_>, buf: &mut [u8]) -> SysResult<usize> {
    loop {
        // SAFETY: buf is writable for its length.
        let n = cvt_size(unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) });
        match n {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}

/// Points stderr at `/dev/null`, for a daemon whose terminal went away.
pub fn detach_stderr() -> SysResult<()> {
    let null = std::fs::OpenOptions::new().write(true).open("/dev/null")?;
    // SAFETY: dup2 onto fd 2 with a valid open fd.
    cvt(unsafe { libc::dup2(null.as_raw_fd(), 2) })?;
    Ok(())
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
    // SAFETY: the process has one thread, so the child is a full copy that
    // may run any code.
    let pid = cvt(unsafe { libc::fork() })?;
    if pid > 0 {
        return Ok(Forked::Parent(pid));
    }
    // SAFETY: plain syscalls on descriptors this process owns.
    unsafe {
        libc::setpgid(0, 0);
        libc::dup2(null.as_raw_fd(), 0);
        libc::dup2(null.as_raw_fd(), 1);
    }
    Ok(Forked::Child)
}

/// Waits for child `pid` and returns its exit code (128 + signal when
/// killed).
pub fn wait_child(pid: libc::pid_t) -> SysResult<i32> {
    let mut status = 0;
    loop {
        // SAFETY: status is writable.
        let r = unsafe { libc::waitpid(pid, &mut status, 0) };
        if r == pid {
            break;
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
    Ok(if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        128 + libc::WTERMSIG(status)
    })
}

/// Blocks SIGTERM, SIGINT and SIGHUP in the calling thread (and every thread
/// it spawns later), so that one thread can take the first two with
/// [`wait_signal`]. SIGHUP stays blocked for good: a daemon outlives the
/// terminal that started it, and a hangup must not kill the mount.
pub fn block_term_signals() -> SysResult<()> {
    let mut set = term_sigset();
    // SAFETY: set is initialised; SIGHUP is a valid signal.
    unsafe { libc::sigaddset(&mut set, libc::SIGHUP) };
    // SAFETY: set is an initialised sigset; the old set is not wanted.
    let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    Ok(())
}

fn term_sigset() -> libc::sigset_t {
    let mut set = std::mem::MaybeUninit::<libc::sigset_t>::uninit();
    // SAFETY: sigemptyset initialises the set; sigaddset adds valid signals.
    unsafe {
        libc::sigemptyset(set.as_mut_ptr());
        libc::sigaddset(set.as_mut_ptr(), libc::SIGTERM);
        libc::sigaddset(set.as_mut_ptr(), libc::SIGINT);
        set.assume_init()
    }
}

/// Waits for one of the signals blocked by [`block_term_signals`].
pub fn wait_signal() -> i32 {
    let set = term_sigset();
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
    unsafe { std::mem::MaybeUninit::<libc::stat>::zeroed().assume_init() }
}

/// Checks whether a `struct stat` describes an overlayfs whiteout: a
/// character device with device number 0:0.
pub fn is_whiteout_stat(st: &libc::stat) -> bool {
    st.st_mode & libc::S_IFMT == libc::S_IFCHR && st.st_rdev == 0
}

/// A connected pair of unix stream sockets, both close-on-exec.
pub fn socketpair() -> SysResult<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: fds is a writable array of two ints.
    cvt(unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    })?;
    // SAFETY: both fds were just created and are owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Receives one descriptor sent with `SCM_RIGHTS` (how fusermount3 hands
/// over the `/dev/fuse` descriptor it opened).
pub fn recv_fd(sock: BorrowedFd<'_>) -> SysResult<OwnedFd> {
    let mut byte = [0u8; 1];
    let mut iov = libc::iovec {
        iov_base: byte.as_mut_ptr().cast(),
        iov_len: 1,
    };
    // Room for one cmsghdr carrying one int, aligned as the kernel wants.
    let mut cbuf = [0u64; 8];
    // SAFETY: msghdr is plain data; zero is a valid empty value.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&cbuf);
    let n = loop {
        // SAFETY: msg points to valid iov and control buffers for its lengths.
        let n = unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
        if n < 0 && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
            continue;
        }
        break n;
    };
    cvt_size(n as libc::ssize_t)?;
    // SAFETY: msg was filled by recvmsg; CMSG_FIRSTHDR reads within it.
    let cmsg = unsafe { libc::CMSG_FIRSTHDR(&msg) };
    if cmsg.is_null() {
        return Err(io::Error::from_raw_os_error(libc::EPROTO));
    }
    // SAFETY: cmsg is not null, so it points at a header inside cbuf.
    let (level, kind) = unsafe { ((*cmsg).cmsg_level, (*cmsg).cmsg_type) };
    if level != libc::SOL_SOCKET || kind != libc::SCM_RIGHTS {
        return Err(io::Error::from_raw_os_error(libc::EPROTO));
    }
    // SAFETY: an SCM_RIGHTS message carries at least one int after the header.
    let fd = unsafe { std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast::<RawFd>()) };
    // SAFETY: the kernel installed fd in this process for us to own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
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
    // SAFETY: path is NUL-terminated; the fd is closed below.
    let fd = cvt(unsafe { libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC) })?;
    // SAFETY: data is readable for its length.
    let n = unsafe { libc::write(fd, data.as_ptr().cast(), data.len()) };
    let res = cvt_size(n as libc::ssize_t).map(|_| ());
    // SAFETY: fd was opened above.
    unsafe { libc::close(fd) };
    res
}

/// In a freshly forked child: private mount and PID namespaces (and a user
/// namespace without privilege), the binds, chroot into the root, then a
/// fork: the first process of the new PID namespace goes on to exec with a
/// /proc of its own, while this one waits for it and exits with its status.
/// Allocates nothing: it runs between fork and exec.
pub fn enter_root(s: &RootSetup) -> SysResult<()> {
    let mut flags = libc::CLONE_NEWNS | libc::CLONE_NEWPID;
    if s.userns.is_some() {
        flags |= libc::CLONE_NEWUSER;
    }
    // SAFETY: unshare takes flags only.
    cvt(unsafe { libc::unshare(flags) })?;
    if let Some((uid_map, gid_map)) = &s.userns {
        write_proc(c"/proc/self/setgroups", b"deny")?;
        write_proc(c"/proc/self/uid_map", uid_map.as_bytes())?;
        write_proc(c"/proc/self/gid_map", gid_map.as_bytes())?;
    }
    // Nothing done here may reach the host's mount table.
    // SAFETY: all strings are NUL-terminated; null data is allowed.
    cvt(unsafe {
        libc::mount(
            c"none".as_ptr(),
            c"/".as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null(),
        )
    })?;
    // Targets are opened in this namespace (a mount made onto a descriptor
    // of another namespace's mount is refused) and mounted onto through
    // their descriptor, never through a path a symlink in the image could
    // redirect to the host.
    // SAFETY: root is NUL-terminated; the fd is owned below.
    let root = cvt(unsafe {
        libc::open(
            s.root.as_ptr(),
            libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    })?;
    // SAFETY: root was just opened and is owned by nobody else.
    let root = unsafe { OwnedFd::from_raw_fd(root) };
    for (src, rel) in &s.binds {
        let target = open_in_root(root.as_fd(), rel, libc::O_PATH)?;
        let mut path = [0u8; 32];
        let via = fd_path(&mut path, target.as_raw_fd());
        // SAFETY: as above; `via` is NUL-terminated.
        cvt(unsafe {
            libc::mount(
                src.as_ptr(),
                via.as_ptr(),
                std::ptr::null(),
                libc::MS_BIND | libc::MS_REC,
                std::ptr::null(),
            )
        })?;
    }
    drop(root);
    // SAFETY: root is NUL-terminated.
    cvt(unsafe { libc::chroot(s.root.as_ptr()) })?;
    // SAFETY: "/" is NUL-terminated.
    cvt(unsafe { libc::chdir(c"/".as_ptr()) })?;
    // SAFETY: fork in a single-threaded child; both sides only make
    // syscalls until exec or _exit.
    let pid = cvt(unsafe { libc::fork() })?;
    if pid > 0 {
        let mut status = 0;
        loop {
            // SAFETY: status is writable.
            let r = unsafe { libc::waitpid(pid, &mut status, 0) };
            if r == pid
                || (r < 0 && io::Error::last_os_error().kind() != io::ErrorKind::Interrupted)
            {
                break;
            }
        }
        let code = if libc::WIFEXITED(status) {
            libc::WEXITSTATUS(status)
        } else {
            128 + libc::WTERMSIG(status)
        };
        // SAFETY: ends this intermediate process without running anything
        // of the parent's (no atexit handlers, no buffers).
        unsafe { libc::_exit(code) };
    }
    // PID 1 of the new namespace: its own /proc over the host's, where the
    // kernel allows (a user namespace may not, if the host's /proc has
    // parts covered); the host's bind stays otherwise.
    // SAFETY: all strings are NUL-terminated; null data is allowed.
    let _ = unsafe {
        libc::mount(
            c"proc".as_ptr(),
            c"/proc".as_ptr(),
            c"proc".as_ptr(),
            libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
            std::ptr::null(),
        )
    };
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

//! The daemon's life: open the layers, mount, tell the caller when requests
//! are answered, serve until unmounted, unmount on SIGTERM/SIGINT.

use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use fuser::{Config, Session, SessionACL};
use log::{debug, info, warn};

use crate::config::MountConfig;
use crate::failure::Failure;
use crate::fuse::UnionFs;
use crate::fuse::ring::{self, Ring};
use crate::layer::Layers;
use crate::layer::upper::Upper;
use crate::mountinfo::{self, Dev};
use crate::runtime::{self, Published, Record, WorkLock};
use crate::stats::Stats;
use crate::sys;
use crate::union::Union;

/// The byte written to a ready descriptor once the mount answers requests.
pub const READY_BYTE: u8 = b'R';

/// How long an ended mount waits for its io_uring threads to finish the
/// request they may still be answering.
pub const RING_JOIN_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Why [`start`] did not give a mount to serve.
#[derive(Debug)]
pub enum StartError {
    /// What went wrong, in one line.
    Failed(Failure),
    /// The mount was made, then unmounted from outside before it was
    /// served: nothing is left to do, and nothing went wrong.
    Unmounted,
}

impl From<String> for StartError {
    fn from(s: String) -> Self {
        StartError::Failed(Failure::Mount(s))
    }
}

impl From<Failure> for StartError {
    fn from(f: Failure) -> Self {
        StartError::Failed(f)
    }
}

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StartError::Failed(e) => e.fmt(f),
            StartError::Unmounted => f.write_str("unmounted before it was served"),
        }
    }
}

/// A mount made and handshaken with the kernel, not yet served.
pub struct Started {
    pub session: Session<UnionFs>,
    pub union: Arc<Union>,
    pub mounted: Mounted,
    /// Exclusive use of the work directory; released only once the upper
    /// is final (see [`finish`]).
    pub work_lock: Option<WorkLock>,
    /// Requests answered, by kind.
    pub stats: Arc<Stats>,
    /// The io_uring transport's threads, when it carries the requests.
    pub ring: Option<Ring>,
}

impl std::fmt::Debug for Started {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Started")
            .field("mounted", &self.mounted)
            .finish()
    }
}

/// Where one FUSE connection is mounted, and how to take it off again.
///
/// fuser's own unmount-on-drop unmounts by path even after the kernel has
/// ended the connection, which removes whatever was mounted there next; so
/// unionfuse mounts itself (mount(2) as root, fusermount3 otherwise), hands
/// fuser only the descriptor, and unmounts only while the mount on top of
/// the path is still its own connection.
#[derive(Debug, Clone)]
pub struct Mounted {
    pub path: PathBuf,
    /// The connection's device number, as mountinfo shows it.
    pub dev: Dev,
    /// Mounted with mount(2) rather than through fusermount3.
    pub direct: bool,
}

impl Mounted {
    /// Whether the mount on top of the path is still this connection.
    pub fn is_live(&self) -> bool {
        mountinfo::is_mounted_at(&self.path, self.dev)
    }

    /// Unmounts (EBUSY while files are open); nothing once this connection
    /// is no longer mounted there.
    pub fn unmount(&self) -> std::io::Result<()> {
        if !self.is_live() {
            return Ok(());
        }
        if self.direct {
            sys::umount(&self.path, 0)
        } else {
            fusermount_unmount(&self.path, false)
        }
    }

    /// The outcome of serving, once the session is over. A worker reading
    /// a request at the instant an unmount ends the connection gets
    /// ECONNABORTED rather than ENODEV; with the mount gone, any such
    /// failure is the ordinary end of the session.
    pub fn ended(&self, res: std::io::Result<()>) -> std::io::Result<()> {
        match res {
            Err(e) if !self.is_live() => {
                // Also a worker that was still being set up (its own
                // /dev/fuse descriptor cloned) when the mount went.
                debug!("session of {} ended: {e}", self.path.display());
                Ok(())
            }
            r => r,
        }
    }

    /// Detaches a busy mount: no new process enters, and the session ends
    /// once the last user lets go, as `umount -l` would.
    pub fn detach(&self) -> std::io::Result<()> {
        if !self.is_live() {
            return Ok(());
        }
        if self.direct {
            sys::umount(&self.path, libc::MNT_DETACH)
        } else {
            fusermount_unmount(&self.path, true)
        }
    }
}

/// Opens the layers and mounts `cfg`. `in_process`: the mount lives inside
/// a host program (the library), whose umask it must not change; a daemon
/// sets its umask to 0 instead, saving a chmod per new object.
///
/// Errors are one-line messages for the user.
pub fn start(cfg: &MountConfig, in_process: bool) -> Result<Started, StartError> {
    let nofile = sys::raise_nofile_limit();
    info!("open file limit {nofile}");
    // Before anything in the work directory is touched: an exiting daemon
    // may still be cleaning its staging area.
    let work_lock = match (&cfg.upper, &cfg.work) {
        (Some(_), Some(work)) => Some(runtime::lock_work(work, runtime::WORK_WAIT)?),
        _ => None,
    };
    let layers = Layers::open(cfg.upper.as_deref(), &cfg.lowers)
        .map_err(|e| format!("cannot open layers: {e}"))?;
    // Half the descriptors for cached directories, the rest for open files
    // and the layers themselves.
    // UNIONFUSE_FD_BUDGET overrides it (tests use a tiny one to exercise
    // eviction).
    let budget = std::env::var("UNIONFUSE_FD_BUDGET")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or((nofile / 2) as usize);
    if !in_process {
        // Modes passed to the upper are then the modes created: the kernel
        // already applied the caller's umask.
        sys::set_umask(0);
    }
    let upper =
        match (&cfg.upper, &cfg.work) {
            (Some(_), Some(work)) => {
                let wfd = sys::open_dir_path(work)
                    .map_err(|e| format!("cannot open work directory {}: {e}", work.display()))?;
                let top = layers.get(0);
                // The upper layer and its work directory: the mount's writable
                // tree.
                let (upper_w, work_w) = (
                    sys::Writable::new(top.root.as_fd()),
                    sys::Writable::new(wfd.as_fd()),
                );
                Some(Upper::open(upper_w, work_w, cfg.whiteout).map_err(|e| {
                    format!("cannot prepare work directory {}: {e}", work.display())
                })?)
            }
            _ => None,
        };
    let mut union =
        Union::new(layers, upper, budget).map_err(|e| format!("cannot open layers: {e}"))?;
    union.set_options(cfg.read_only, cfg.volatile);
    union.set_metacopy(cfg.metacopy);
    union.set_acl(cfg.acl);
    union.set_ids(cfg.ids.clone());
    union.set_override_xattr(cfg.override_xattr);
    union.set_exact_modes(in_process);
    let union = Arc::new(union);
    let root = sys::is_root();
    let stats = Arc::new(Stats::default());
    let fs = UnionFs::new(
        Arc::clone(&union),
        cfg.cache_timeout,
        root,
        cfg.lower_passthrough,
        cfg.io_uring && root,
        Arc::clone(&stats),
    );
    let core = fs.core();

    let mut config = Config::default();
    config.n_threads = Some(cfg.threads);
    // Root opens /dev/fuse itself, so every thread can have its own
    // descriptor; a user has only the one fusermount3 passed over.
    config.clone_fd = root;
    // A container root is used by every uid inside it.
    let acl = if root {
        SessionACL::All
    } else {
        SessionACL::Owner
    };
    let (fd, direct) = if root {
        (mount_direct(cfg), true)
    } else {
        (fusermount(&cfg.mountpoint, &fusermount_options(cfg)), false)
    };
    let fd = fd.inspect_err(|_| union.abandon())?;
    // The ring's commands go to the same open /dev/fuse as fuser's reads;
    // without a descriptor for them INIT must not ask for the ring.
    let ring_dev = if cfg.io_uring && root {
        fd.try_clone().map(Arc::new).map_err(|e| e.to_string())
    } else {
        Err("it needs root".to_string())
    };
    if ring_dev.is_err() {
        core.decline_uring();
    }
    let dev = match mountinfo::top_at(&cfg.mountpoint) {
        Ok(Some(e)) => e.dev,
        other => {
            let why = match other {
                Err(e) => format!("cannot read the mount table: {e}"),
                _ => "the new mount is not in the mount table".to_string(),
            };
            // Not knowing our mount, only a path remains to take it off by;
            // it was made an instant ago by this very call.
            let _ = if direct {
                sys::umount(&cfg.mountpoint, libc::MNT_DETACH)
            } else {
                fusermount_unmount(&cfg.mountpoint, true)
            };
            union.abandon();
            return Err(format!("cannot mount at {}: {why}", cfg.mountpoint.display()).into());
        }
    };
    let mounted = Mounted {
        path: cfg.mountpoint.clone(),
        dev,
        direct,
    };
    let session = match Session::from_fd(fs, fd, acl, config) {
        Ok(s) => s,
        // Unmounted before the kernel's first message was answered.
        Err(_) if !mounted.is_live() => {
            union.abandon();
            return Err(StartError::Unmounted);
        }
        Err(e) => {
            if let Err(e) = mounted.detach() {
                warn!("cannot unmount {}: {e}", mounted.path.display());
            }
            union.abandon();
            return Err(format!("cannot start serving {}: {e}", cfg.mountpoint.display()).into());
        }
    };
    let ring = start_ring(cfg, core, ring_dev);
    info!(
        "mounted {} (connection {dev}, lowers {:?}, upper {:?})",
        cfg.mountpoint.display(),
        cfg.lowers,
        cfg.upper
    );
    Ok(Started {
        session,
        union,
        mounted,
        work_lock,
        stats,
        ring,
    })
}

/// Starts the io_uring transport when `--io-uring` asked for it and INIT
/// (answered by now) agreed; says why not otherwise.
fn start_ring(
    cfg: &MountConfig,
    core: Arc<crate::fuse::Core>,
    dev: Result<Arc<OwnedFd>, String>,
) -> Option<Ring> {
    if !cfg.io_uring {
        return None;
    }
    let why = if let Err(e) = &dev {
        e.clone()
    } else if !core.uring_agreed() {
        match std::fs::read_to_string("/sys/module/fuse/parameters/enable_uring") {
            Ok(v) if v.trim() == "N" => {
                "/sys/module/fuse/parameters/enable_uring is N; root may set it to Y".to_string()
            }
            Ok(_) => "the kernel did not offer it".to_string(),
            Err(_) => "this kernel has no FUSE over io_uring".to_string(),
        }
    } else {
        let stats = core.stats();
        match dev.and_then(|d| Ring::start(core, d)) {
            Ok(r) => {
                stats.ring_started();
                ring::announce(true, None);
                return Some(r);
            }
            Err(e) => e,
        }
    };
    ring::announce(false, Some(&why));
    None
}

/// Mounts a new FUSE connection at `cfg.mountpoint` with mount(2) (root),
/// returning its `/dev/fuse` descriptor.
fn mount_direct(cfg: &MountConfig) -> Result<OwnedFd, String> {
    use std::os::fd::AsRawFd;
    let fail = |e: std::io::Error| format!("cannot mount at {}: {e}", cfg.mountpoint.display());
    let dev = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse")
        .map_err(|e| format!("cannot open /dev/fuse: {e}"))?;
    let st = sys::stat_path(&cfg.mountpoint).map_err(fail)?;
    // Permission checks are the kernel's, against the modes and owners the
    // union reports, exactly as on a local filesystem; and a container root
    // is used by every uid inside it.
    let data = format!(
        "fd={},rootmode={:o},user_id={},group_id={},default_permissions,allow_other",
        dev.as_raw_fd(),
        st.st_mode & libc::S_IFMT,
        sys::euid(),
        sys::egid(),
    );
    // A container root holds device nodes and setuid binaries that must
    // work unless asked otherwise.
    let mut flags: libc::c_ulong = 0;
    for (on, flag) in [
        (cfg.nodev, libc::MS_NODEV),
        (cfg.nosuid, libc::MS_NOSUID),
        (cfg.read_only, libc::MS_RDONLY),
    ] {
        if on {
            flags |= flag;
        }
    }
    let data =
        std::ffi::CString::new(data).map_err(|_| fail(std::io::ErrorKind::InvalidInput.into()))?;
    sys::mount_fuse(
        c"unionfuse",
        &cfg.mountpoint,
        c"fuse.unionfuse",
        flags,
        &data,
    )
    .map_err(fail)?;
    Ok(OwnedFd::from(dev))
}

/// Publishes the runtime record of a mount (see [`crate::runtime`]); a
/// mount without one still works, but `umount` cannot wait for it.
pub fn publish(cfg: &MountConfig, mounted: &Mounted) -> Option<Published> {
    let rec = Record {
        pid: std::process::id(),
        dev: mounted.dev,
        mountpoint: mounted.path.clone(),
        lowers: cfg.lowers.clone(),
        upper: cfg.upper.clone(),
        work: cfg.work.clone(),
        read_only: cfg.read_only,
        started: runtime::now_secs(),
        pid_ns: runtime::own_pid_ns(),
    };
    match Published::publish(&rec) {
        Ok(p) => Some(p),
        Err(e) => {
            warn!(
                "no runtime record for {} in {}: {e}",
                mounted.path.display(),
                runtime::own_dir().display()
            );
            None
        }
    }
}

/// Ends a mount's life once no request can arrive any more: the upper is
/// made final (staging emptied, written back unless volatile), then the
/// work directory is let go, then the record, whose release is what
/// `unionfuse umount` waits for.
pub fn finish(union: &Union, work_lock: Option<WorkLock>, record: Option<Published>) {
    union.finish();
    drop(work_lock);
    drop(record);
}

/// Mounts `cfg` and serves it until unmounted. `ready` receives one byte
/// once the mountpoint has answered a request; `detach` points stderr at
/// /dev/null at that moment (a daemon outliving its terminal).
///
/// Errors are one-line messages for the user.
pub fn serve(
    cfg: &MountConfig,
    ready: Option<OwnedFd>,
    detach_stderr: bool,
) -> Result<(), Failure> {
    serve_inner(cfg, ready, detach_stderr).map_err(|e| match e {
        StartError::Failed(f) => f,
        StartError::Unmounted => Failure::Unmounted(cfg.mountpoint.clone()),
    })
}

fn serve_inner(
    cfg: &MountConfig,
    ready: Option<OwnedFd>,
    detach_stderr: bool,
) -> Result<(), StartError> {
    // Block the termination signals before any thread exists so that every
    // thread inherits the mask and only the signal thread takes them.
    sys::block_term_signals().map_err(|e| format!("cannot block signals: {e}"))?;
    let Started {
        session,
        union,
        mounted,
        work_lock,
        stats,
        ring,
    } = match start(cfg, false) {
        Ok(s) => s,
        Err(StartError::Unmounted) => {
            info!(
                "{} was unmounted before it was served",
                cfg.mountpoint.display()
            );
            return Ok(());
        }
        Err(e) => return Err(e),
    };
    let record = publish(cfg, &mounted);
    // Beside the record, so that any mount, read-only ones included, can
    // be asked (stats), and found the way the record is.
    let control = record.as_ref().map(|r| {
        let path = crate::control::socket_path(r.dir(), mounted.dev, std::process::id());
        if let Err(e) =
            crate::control::listen(path.clone(), Arc::clone(&union), session.notifier(), stats)
        {
            warn!("no control socket (stats, reset, checkpoint, restore): {e}");
        }
        path
    });
    let on_signal = mounted.clone();
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let sig = sys::wait_signal();
            let mnt = on_signal.path.display();
            info!("signal {sig}: unmounting {mnt}");
            if let Err(e) = on_signal.unmount() {
                // Busy: files are still open in the mount; the daemon exits
                // once they are closed.
                warn!("unmount {mnt}: {e}; detaching lazily");
                if let Err(e) = on_signal.detach() {
                    warn!("lazy unmount {mnt}: {e}");
                }
            }
        })
        .map_err(|e| format!("cannot start signal thread: {e}"))?;

    let mnt = cfg.mountpoint.clone();
    let ready = Arc::new(parking_lot::Mutex::new(ready));
    let announce = Arc::clone(&ready);
    std::thread::Builder::new()
        .name("ready".into())
        .spawn(move || announce_ready(&mnt, &announce, detach_stderr))
        .map_err(|e| format!("cannot start ready thread: {e}"))?;

    let served = mounted
        .ended(session.run())
        .map_err(|e| format!("serving {}: {e}", cfg.mountpoint.display()));
    if let Some(r) = ring {
        r.join(RING_JOIN_WAIT);
    }
    // A harness may see the mount and unmount it before the ready thread's
    // stat is answered: the mount did work, and whoever waits must hear so
    // rather than a failure when this process ends.
    if served.is_ok()
        && let Some(fd) = ready.lock().take()
    {
        let _ = sys::write_all(fd.as_fd(), &[READY_BYTE]);
    }
    if let Some(p) = control
        && let Err(e) = std::fs::remove_file(&p)
    {
        debug!("cannot remove {}: {e}", p.display());
    }
    finish(&union, work_lock, record);
    served?;
    info!("unmounted {}", cfg.mountpoint.display());
    Ok(())
}

/// Waits until the mount answers a request (a stat of its root), then tells
/// whoever waits on `ready`.
fn announce_ready(mnt: &Path, ready: &parking_lot::Mutex<Option<OwnedFd>>, detach: bool) {
    if let Err(e) = sys::stat_path(mnt) {
        warn!("mount at {} does not answer: {e}", mnt.display());
        return;
    }
    if detach && let Err(e) = sys::detach_stderr() {
        warn!("cannot detach stderr: {e}");
    }
    if let Some(fd) = ready.lock().take()
        && let Err(e) = sys::write_all(fd.as_fd(), &[READY_BYTE])
    {
        warn!("cannot signal readiness: {e}");
    }
    if let Some(sock) = std::env::var_os("NOTIFY_SOCKET")
        && let Err(e) = notify_systemd(&sock)
    {
        warn!("cannot notify {sock:?}: {e}");
    }
}

/// Sends systemd's `READY=1` to `NOTIFY_SOCKET` (a path, or `@name` in
/// the abstract namespace).
fn notify_systemd(sock: &std::ffi::OsStr) -> std::io::Result<()> {
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::net::{SocketAddr, UnixDatagram};
    let b = sock.as_bytes();
    let addr = match b.strip_prefix(b"@") {
        Some(name) => SocketAddr::from_abstract_name(name)?,
        None => SocketAddr::from_pathname(Path::new(sock))?,
    };
    UnixDatagram::unbound()?.send_to_addr(b"READY=1", &addr)?;
    Ok(())
}

/// The program that mounts and unmounts FUSE filesystems for ordinary
/// users: `FUSERMOUNT_PATH` (fuser's convention), else `fusermount3` on PATH.
pub fn fusermount_program() -> std::ffi::OsString {
    std::env::var_os("FUSERMOUNT_PATH").unwrap_or_else(|| "fusermount3".into())
}

/// The `-o` options fusermount3 mounts with.
fn fusermount_options(cfg: &MountConfig) -> String {
    let mut o = String::from("fsname=unionfuse,subtype=unionfuse,default_permissions");
    o.push_str(if cfg.read_only { ",ro" } else { ",rw" });
    for (on, opt) in [
        (cfg.nodev, ",nodev"),
        (cfg.nosuid, ",nosuid"),
        (cfg.allow_other, ",allow_other"),
    ] {
        if on {
            o.push_str(opt);
        }
    }
    o
}

/// Mounts `mnt` through fusermount3 and receives the `/dev/fuse`
/// descriptor it opened (its `_FUSE_COMMFD` protocol).
fn fusermount(mnt: &Path, opts: &str) -> Result<OwnedFd, String> {
    use std::os::fd::AsRawFd;
    let fail = |e: std::io::Error| format!("cannot mount at {}: {e}", mnt.display());
    let (ours, theirs) = sys::socketpair().map_err(fail)?;
    sys::set_cloexec(theirs.as_fd(), false).map_err(fail)?;
    let out = std::process::Command::new(fusermount_program())
        .arg("-o")
        .arg(opts)
        .arg("--")
        .arg(mnt)
        .env("_FUSE_COMMFD", theirs.as_raw_fd().to_string())
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| format!("cannot run fusermount3 (install fuse3): {e}"))?;
    drop(theirs);
    if !out.status.success() {
        let msg = String::from_utf8_lossy(&out.stderr);
        let msg = msg.trim().lines().last().unwrap_or("failed").to_string();
        if msg.contains("/dev/fuse") && msg.contains("Permission denied") {
            // fusermount3 opens the device with the user's own rights.
            return Err(format!(
                "cannot mount at {}: /dev/fuse is not open to this user (fusermount3 opens it with the user's rights); make it mode 0666 as distributions ship it, or mount as root",
                mnt.display()
            ));
        }
        return Err(format!("cannot mount at {}: {msg}", mnt.display()));
    }
    sys::recv_fd(ours.as_fd()).map_err(fail)
}

/// `fusermount3 -u [-z] MNT`.
pub fn fusermount_unmount(mnt: &Path, lazy: bool) -> std::io::Result<()> {
    let mut cmd = std::process::Command::new(fusermount_program());
    cmd.arg("-u");
    if lazy {
        cmd.arg("-z");
    }
    let out = cmd
        .arg("--")
        .arg(mnt)
        .stdin(std::process::Stdio::null())
        .output()?;
    if out.status.success() {
        return Ok(());
    }
    let msg = String::from_utf8_lossy(&out.stderr);
    // fusermount3 says "Device or resource busy" for a mount in use.
    let errno = if msg.contains("busy") {
        libc::EBUSY
    } else {
        libc::EIO
    };
    Err(std::io::Error::from_raw_os_error(errno))
}

/// Creates the default work directory when it is missing; returns it when
/// this call created it, so a failed mount can remove it again.
pub fn prepare_work(cfg: &MountConfig) -> Result<Option<PathBuf>, Failure> {
    let Some(w) = &cfg.work else {
        return Ok(None);
    };
    if sys::stat_path(w).is_ok() {
        return Ok(None);
    }
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(w)
        .map_err(|e| {
            Failure::Mount(format!("cannot create work directory {}: {e}", w.display()))
        })?;
    Ok(Some(w.clone()))
}

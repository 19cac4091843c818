//! The daemon's life: open the layers, mount, tell the caller when requests
//! are answered, serve until unmounted, unmount on SIGTERM/SIGINT.

use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use fuser::{Config, MountOption, Session, SessionACL};
use log::{info, warn};

use crate::config::MountConfig;
use crate::fuse::UnionFs;
use crate::layer::Layers;
use crate::layer::upper::Upper;
use crate::sys;
use crate::union::Union;

/// The byte written to a ready descriptor once the mount answers requests.
pub const READY_BYTE: u8 = b'R';

/// A mount made and handshaken with the kernel, not yet served.
pub struct Started {
    pub session: Session<UnionFs>,
    /// Unmounts (fails with EBUSY while files are open).
    pub unmount: Box<dyn FnMut() -> std::io::Result<()> + Send>,
    pub union: Arc<Union>,
    /// Mounted with mount(2) rather than through fusermount3.
    pub direct: bool,
}

impl std::fmt::Debug for Started {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Started")
            .field("direct", &self.direct)
            .finish()
    }
}

/// Opens the layers and mounts `cfg`. `in_process`: the mount lives inside
/// a host program (the library), whose umask it must not change; a daemon
/// sets its umask to 0 instead, saving a chmod per new object.
///
/// Errors are one-line messages for the user.
pub fn start(cfg: &MountConfig, in_process: bool) -> Result<Started, String> {
    let nofile = sys::raise_nofile_limit();
    info!("open file limit {nofile}");
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
    let upper = match (&cfg.upper, &cfg.work) {
        (Some(_), Some(work)) => {
            let wfd = sys::open_dir_path(work)
                .map_err(|e| format!("cannot open work directory {}: {e}", work.display()))?;
            let top = layers.get(0);
            Some(
                Upper::open(top.root.as_fd(), wfd.as_fd(), cfg.whiteout).map_err(|e| {
                    format!("cannot prepare work directory {}: {e}", work.display())
                })?,
            )
        }
        _ => None,
    };
    let mut union =
        Union::new(layers, upper, budget).map_err(|e| format!("cannot open layers: {e}"))?;
    union.set_options(cfg.read_only, cfg.volatile);
    union.set_ids(cfg.ids.clone());
    union.set_override_xattr(cfg.override_xattr);
    union.set_exact_modes(in_process);
    let union = Arc::new(union);
    let root = sys::is_root();
    let fs = UnionFs::new(Arc::clone(&union), cfg.cache_timeout, root);

    let mut options = vec![
        MountOption::FSName("unionfuse".into()),
        MountOption::Subtype("unionfuse".into()),
        // Permission checks are the kernel's, against the modes and owners
        // the union reports, exactly as on a local filesystem.
        MountOption::DefaultPermissions,
    ];
    if cfg.read_only {
        options.push(MountOption::RO);
    }
    if root {
        // A container root holds device nodes and setuid binaries that must
        // work (unless asked otherwise); an unprivileged mount gets the
        // kernel's nodev,nosuid anyway.
        options.push(if cfg.nodev {
            MountOption::NoDev
        } else {
            MountOption::Dev
        });
        options.push(if cfg.nosuid {
            MountOption::NoSuid
        } else {
            MountOption::Suid
        });
    }
    let mut config = Config::default();
    config.mount_options = options;
    // A container root is used by every uid inside it.
    config.acl = if root {
        SessionACL::All
    } else {
        SessionACL::Owner
    };
    config.n_threads = Some(cfg.threads);
    config.clone_fd = root;

    let mnt = cfg.mountpoint.clone();
    let started = if root {
        let mut session = Session::new(fs, &cfg.mountpoint, &config).map_err(|e| {
            union.abandon();
            format!("cannot mount at {}: {e}", cfg.mountpoint.display())
        })?;
        let mut unmounter = session.unmount_callable();
        Started {
            session,
            unmount: Box::new(move || unmounter.unmount()),
            union,
            direct: true,
        }
    } else {
        // An ordinary user may not mount: the setuid fusermount3 opens
        // /dev/fuse, mounts, and hands the descriptor over. One descriptor
        // then serves every thread.
        let fd = fusermount(&cfg.mountpoint, &fusermount_options(cfg))
            .inspect_err(|_| union.abandon())?;
        config.clone_fd = false;
        let session = Session::from_fd(fs, fd, SessionACL::Owner, config).map_err(|e| {
            let _ = fusermount_unmount(&cfg.mountpoint, true);
            union.abandon();
            format!("cannot start serving {}: {e}", cfg.mountpoint.display())
        })?;
        Started {
            session,
            unmount: Box::new(move || fusermount_unmount(&mnt, false)),
            union,
            direct: false,
        }
    };
    info!(
        "mounted {} (lowers {:?}, upper {:?})",
        cfg.mountpoint.display(),
        cfg.lowers,
        cfg.upper
    );
    Ok(started)
}

/// Detaches a busy mount: no new process enters, and the session ends once
/// the last user lets go, as `umount -l` would.
pub fn detach(mnt: &Path, direct: bool) -> std::io::Result<()> {
    if direct {
        sys::umount(mnt, libc::MNT_DETACH)
    } else {
        fusermount_unmount(mnt, true)
    }
}

/// Mounts `cfg` and serves it until unmounted. `ready` receives one byte
/// once the mountpoint has answered a request; `detach` points stderr at
/// /dev/null at that moment (a daemon outliving its terminal).
///
/// Errors are one-line messages for the user.
pub fn serve(cfg: &MountConfig, ready: Option<OwnedFd>, detach_stderr: bool) -> Result<(), String> {
    // Block the termination signals before any thread exists so that every
    // thread inherits the mask and only the signal thread takes them.
    sys::block_term_signals().map_err(|e| format!("cannot block signals: {e}"))?;
    let Started {
        session,
        mut unmount,
        direct,
        union,
    } = start(cfg, false)?;
    let mnt = cfg.mountpoint.clone();
    let control = match (&cfg.upper, &cfg.work) {
        (Some(_), Some(work)) => {
            let path = crate::control::socket_path(work);
            if let Err(e) = crate::control::listen(path.clone(), union, session.notifier()) {
                warn!("no control socket (reset, checkpoint, restore): {e}");
            }
            Some(path)
        }
        _ => None,
    };
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let sig = sys::wait_signal();
            info!("signal {sig}: unmounting {}", mnt.display());
            if let Err(e) = unmount() {
                // Busy: files are still open in the mount; the daemon exits
                // once they are closed.
                warn!("unmount {}: {e}; detaching lazily", mnt.display());
                if let Err(e) = detach(&mnt, direct) {
                    warn!("lazy unmount {}: {e}", mnt.display());
                }
            }
        })
        .map_err(|e| format!("cannot start signal thread: {e}"))?;

    let mnt = cfg.mountpoint.clone();
    std::thread::Builder::new()
        .name("ready".into())
        .spawn(move || announce_ready(&mnt, ready, detach_stderr))
        .map_err(|e| format!("cannot start ready thread: {e}"))?;

    let served = session
        .run()
        .map_err(|e| format!("serving {}: {e}", cfg.mountpoint.display()));
    if let Some(p) = control {
        let _ = std::fs::remove_file(p);
    }
    served?;
    info!("unmounted {}", cfg.mountpoint.display());
    Ok(())
}

/// Waits until the mount answers a request (a stat of its root), then tells
/// whoever waits on `ready`.
fn announce_ready(mnt: &Path, ready: Option<OwnedFd>, detach: bool) {
    if let Err(e) = sys::stat_path(mnt) {
        warn!("mount at {} does not answer: {e}", mnt.display());
        return;
    }
    if detach && let Err(e) = sys::detach_stderr() {
        warn!("cannot detach stderr: {e}");
    }
    if let Some(fd) = ready
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

/// Where the daemon stages files when `--work` is not given: a hidden
/// sibling of the upper, `<parent>/.<name>.unionfuse-work`, which is on the
/// upper's mount unless the upper is itself a mount root.
pub fn default_work_dir(upper: &Path) -> Option<PathBuf> {
    let parent = upper.parent()?;
    let name = upper.file_name()?;
    let mut n = std::ffi::OsString::from(".");
    n.push(name);
    n.push(".unionfuse-work");
    Some(parent.join(n))
}

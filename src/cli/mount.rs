//! `unionfuse mount` (and its fuse-overlayfs form) and `unionfuse umount`:
//! arguments to a [`MountConfig`], then serve in the foreground or fork
//! the daemon with that config; unmount and wait for the daemon to exit.

use std::ffi::OsString;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use clap::{Args, ValueEnum};

use crate::config::{
    DEFAULT_CACHE_TIMEOUT, MountConfig, MountConfigBuilder, describe, find_in_path,
};
use crate::failure::Failure;
use crate::layer::upper::WhiteoutFormat;
use crate::mount::{self, READY_BYTE};
use crate::sys;

#[derive(Debug, Args)]
pub struct MountArgs {
    /// A read-only layer directory. Repeat for more layers, top-most first;
    /// one value may also hold a colon-separated list (top-most first, as
    /// overlayfs's lowerdir), where `\:` stands for a colon in a name.
    /// At least one is required.
    #[arg(long = "lower", value_name = "DIR")]
    pub lower: Vec<OsString>,

    /// The writable layer directory. Default: none, and the mount is
    /// read-only.
    #[arg(long, value_name = "DIR")]
    pub upper: Option<PathBuf>,

    /// Staging directory for atomic changes; must be on the same mount as
    /// the upper (a rename across mounts fails, even on one filesystem).
    /// Default: `.NAME.unionfuse-work` beside the upper directory NAME,
    /// created when missing.
    #[arg(long, value_name = "DIR")]
    pub work: Option<PathBuf>,

    /// How deletions and opaque directories are written in the upper:
    /// `overlay` (character device 0:0 and the `overlay.opaque` xattr, as
    /// kernel overlayfs), `oci` (`.wh.NAME` files and `.wh..wh..opq`, as
    /// image layers), or `auto`: the format an existing upper already
    /// uses, else `overlay` where the filesystem lets this user create a
    /// 0:0 device, else `oci`. Both formats are always read.
    #[arg(long, value_enum, value_name = "FORMAT", default_value_t = WhiteoutArg::Auto)]
    pub whiteout: WhiteoutArg,

    /// Stay in the foreground until unmounted instead of returning once the
    /// mount is live. SIGTERM or SIGINT then unmounts and exits 0.
    #[arg(short = 'f', long)]
    pub foreground: bool,

    /// Number of threads serving requests. Default: the number of CPUs.
    #[arg(long, value_name = "N")]
    pub threads: Option<usize>,

    /// Seconds the kernel may cache names and attributes. Layers must not
    /// be changed behind a mount's back (as with overlayfs), so the default
    /// is long.
    #[arg(long, value_name = "SECS", default_value_t = DEFAULT_CACHE_TIMEOUT.as_secs())]
    pub cache_timeout: u64,

    /// Log every request to stderr (same as RUST_LOG=unionfuse=trace). A
    /// daemonized mount then keeps writing to the terminal it started from.
    #[arg(long)]
    pub debug: bool,

    /// Write one byte to this inherited file descriptor once the mount
    /// answers requests, then close it.
    #[arg(long, value_name = "FD")]
    pub ready_fd: Option<i32>,

    /// Do not sync the upper to disk on fsync: faster, but a host crash may
    /// lose recent writes (for throwaway containers, as overlayfs's
    /// `volatile`).
    #[arg(long)]
    pub volatile: bool,

    /// chmod, chown, touch and xattr changes of a lower file copy its
    /// metadata only; the data stays below until the first write (as
    /// overlayfs's `metacopy=on`; kernel overlayfs must then be mounted with
    /// `metacopy=on` to read the upper).
    #[arg(long)]
    pub metacopy: bool,

    /// The kernel enforces POSIX ACLs, as kernel overlayfs does (by default
    /// only the mode bits decide: enforcing costs a request per entry on
    /// tree walks).
    #[arg(long)]
    pub acl: bool,

    /// Carry requests over FUSE's io_uring transport, answering each on the
    /// CPU that issued it (root; kernel 6.14+ with
    /// /sys/module/fuse/parameters/enable_uring set to Y). Falls back to
    /// /dev/fuse with a warning where unavailable.
    #[arg(long)]
    pub io_uring: bool,

    /// Lower files opened read-only are read through the daemon instead of
    /// straight from the layer (FUSE passthrough, for files of 256 KiB or
    /// more as root), so that a descriptor opened before the file's copy-up
    /// sees the copy, as in kernel overlayfs.
    #[arg(long)]
    pub no_lower_passthrough: bool,

    /// Mount read-only even with an upper layer.
    #[arg(long)]
    pub read_only: bool,

    /// Device nodes in the mount do not work as devices.
    #[arg(long)]
    pub nodev: bool,

    /// Set-user-ID and set-group-ID bits in the mount are ignored.
    #[arg(long)]
    pub nosuid: bool,

    /// As an ordinary user, let other users into the mount too (needs
    /// `user_allow_other` in /etc/fuse.conf). Root mounts always allow them.
    #[arg(long)]
    pub allow_other: bool,

    /// Show owners through a user namespace's uid mapping:
    /// `CONTAINER:HOST:LENGTH[:CONTAINER:HOST:LENGTH...]`. Host uids outside
    /// it show as 65534; chown and new files store the host uid.
    #[arg(long, value_name = "MAP")]
    pub uidmap: Option<String>,

    /// As --uidmap, for gids.
    #[arg(long, value_name = "MAP")]
    pub gidmap: Option<String>,

    /// Show every object as owned by this uid (0 for `squash_to_root`).
    #[arg(long, value_name = "UID", conflicts_with = "uidmap")]
    pub squash_uid: Option<u32>,

    /// Show every object as owned by this gid.
    #[arg(long, value_name = "GID", conflicts_with = "gidmap")]
    pub squash_gid: Option<u32>,

    /// Keep owners, modes and device types a user cannot set in an xattr:
    /// 1 for `security.fuseoverlayfs.override_stat`, 2 for
    /// `user.containers.override_stat` (rootless containers/storage).
    #[arg(long, value_name = "1|2", value_parser = clap::value_parser!(u8).range(1..=2))]
    pub xattr_permissions: Option<u8>,

    /// Where to mount: an existing directory that is not already a mount
    /// point and is neither inside nor above any layer.
    #[arg(value_name = "MOUNTPOINT")]
    pub mountpoint: PathBuf,
}

/// `--whiteout` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum WhiteoutArg {
    Auto,
    Overlay,
    Oci,
}

#[derive(Debug, Args)]
pub struct UmountArgs {
    /// How long to wait for the daemon to exit after the unmount, in seconds.
    #[arg(long, value_name = "SECS", default_value_t = 30)]
    pub timeout: u64,
    /// Unmount every unionfuse mount (see --under).
    #[arg(long, conflicts_with = "mountpoint")]
    pub all: bool,
    /// With --all: only the mounts at or below DIR.
    #[arg(long, value_name = "DIR", requires = "all")]
    pub under: Option<PathBuf>,
    /// The mount point of a unionfuse mount.
    #[arg(value_name = "MOUNTPOINT", required_unless_present = "all")]
    pub mountpoint: Option<PathBuf>,
}

impl MountArgs {
    /// The mount asked for, unchecked.
    fn config(&self) -> MountConfigBuilder {
        let mut c = MountConfig::builder()
            .mountpoint(&self.mountpoint)
            .whiteout(match self.whiteout {
                WhiteoutArg::Auto => None,
                WhiteoutArg::Overlay => Some(WhiteoutFormat::Overlay),
                WhiteoutArg::Oci => Some(WhiteoutFormat::Oci),
            })
            .cache_timeout(Duration::from_secs(self.cache_timeout))
            .debug(self.debug)
            .volatile(self.volatile)
            .metacopy(self.metacopy)
            .acl(self.acl)
            .io_uring(self.io_uring)
            .lower_passthrough(!self.no_lower_passthrough)
            .read_only(self.read_only)
            .nodev(self.nodev)
            .nosuid(self.nosuid)
            .allow_other(self.allow_other)
            .xattr_permissions(self.xattr_permissions.unwrap_or(0));
        for v in &self.lower {
            for l in crate::config::split_lowers(v) {
                c = c.lower(l);
            }
        }
        if let Some(u) = &self.upper {
            c = c.upper(u);
        }
        if let Some(w) = &self.work {
            c = c.work(w);
        }
        if let Some(n) = self.threads {
            c = c.threads(n);
        }
        if let Some(m) = &self.uidmap {
            c = c.uidmap(m);
        }
        if let Some(m) = &self.gidmap {
            c = c.gidmap(m);
        }
        if let Some(id) = self.squash_uid {
            c = c.squash_uid(id);
        }
        if let Some(id) = self.squash_gid {
            c = c.squash_gid(id);
        }
        c
    }
}

pub(super) fn mount_cmd(args: MountArgs) -> Result<i32, Failure> {
    let cfg = args.config().validate()?;
    start(&cfg, args.foreground, args.ready_fd)
}

/// The fuse-overlayfs form: the same mount, asked for differently.
pub(super) fn compat_cmd(argv: &[OsString]) -> Result<i32, Failure> {
    let m = crate::compat::parse(argv)?;
    let cfg = m.config.validate()?;
    start(&cfg, m.foreground, None)
}

/// Serves a validated mount in this process, or forks the daemon that
/// serves it; `Ok` is the exit status.
fn start(cfg: &MountConfig, foreground: bool, ready_fd: Option<i32>) -> Result<i32, Failure> {
    if foreground {
        let ready = match ready_fd {
            Some(fd) => Some(
                sys::adopt_fd(fd).map_err(|e| Failure::Invalid(format!("--ready-fd {fd}: {e}")))?,
            ),
            None => None,
        };
        serve_foreground(cfg, ready, false)?;
        return Ok(0);
    }
    daemonize(cfg)
}

/// Serves `cfg` in this process; `detach` points stderr at /dev/null once
/// the mount answers (a daemon outliving its terminal).
fn serve_foreground(
    cfg: &MountConfig,
    ready: Option<OwnedFd>,
    detach: bool,
) -> Result<(), Failure> {
    let created = mount::prepare_work(cfg)?;
    let res = mount::serve(cfg, ready, detach);
    if res.is_err()
        && let Some(w) = created
    {
        // Nothing may be left behind by a mount that failed.
        let _ = std::fs::remove_dir(w);
    }
    res
}

/// Forks the daemon, which serves `cfg` as validated here, and waits until
/// it reports the mount live (status 0) or dies (its exit status; the child
/// has already printed why on the shared stderr). In the daemon, returns
/// once the mount is over, with its outcome.
fn daemonize(cfg: &MountConfig) -> Result<i32, Failure> {
    let pipe_failed = |e: std::io::Error| Failure::Mount(format!("cannot create pipe: {e}"));
    let (r, w) = sys::ready_pipe().map_err(pipe_failed)?;
    // Nothing the daemon starts (fusermount3) may hold the pipe open.
    sys::set_cloexec(w.as_fd(), true).map_err(pipe_failed)?;
    match sys::fork_daemon().map_err(|e| Failure::Mount(format!("cannot start daemon: {e}")))? {
        sys::Forked::Child => {
            drop(r);
            let detach = !cfg.debug && std::env::var_os("RUST_LOG").is_none();
            serve_foreground(cfg, Some(w), detach).map(|()| 0)
        }
        sys::Forked::Parent(pid) => {
            drop(w);
            let mut b = [0u8; 1];
            let got = sys::read(r.as_fd(), &mut b).unwrap_or(0);
            if got == 1 && b[0] == READY_BYTE {
                return Ok(0);
            }
            let code = sys::wait_child(pid)
                .map_err(|e| Failure::Mount(format!("waiting for daemon: {e}")))?;
            Ok(code.max(1))
        }
    }
}

/// Retries of a busy unmount, 50 ms apart.
const UMOUNT_BUSY_RETRIES: u32 = 20;

/// The absolute form of a mountpoint without stat-ing it: a dead FUSE mount
/// answers ENOTCONN to that, and must still be unmountable.
pub(super) fn mountpoint_path(p: &Path) -> Result<PathBuf, Failure> {
    let abs = if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir()
            .map_err(|e| Failure::Invalid(format!("current directory: {e}")))?
            .join(p)
    };
    let name = abs.file_name();
    let parent = abs.parent();
    match (parent, name) {
        (Some(parent), Some(name)) => Ok(parent
            .canonicalize()
            .map_err(|e| Failure::Invalid(format!("{} {}", parent.display(), describe(&e))))?
            .join(name)),
        _ => Ok(abs),
    }
}

pub(super) fn umount_cmd(args: &UmountArgs) -> Result<(), Failure> {
    let timeout = Duration::from_secs(args.timeout);
    match &args.mountpoint {
        Some(p) => umount_one(p, timeout),
        None => umount_all(args.under.as_deref(), timeout),
    }
}

/// `umount --all [--under DIR]`: deepest first, so that a mount below
/// another goes before it; every failure is reported, the last returned.
fn umount_all(under: Option<&Path>, timeout: Duration) -> Result<(), Failure> {
    let under = under.map(mountpoint_path).transpose()?;
    let table = crate::mountinfo::read()
        .map_err(|e| Failure::Mount(format!("cannot read the mount table: {e}")))?;
    let mut mounts: Vec<PathBuf> = table
        .into_iter()
        .filter(|e| e.is_unionfuse())
        .map(|e| e.mountpoint)
        .filter(|m| under.as_ref().is_none_or(|u| m.starts_with(u)))
        .collect();
    // Mounts stacked at one path stay one entry each: every unmount takes
    // the one on top.
    mounts.sort_by(|a, b| {
        (std::cmp::Reverse(a.components().count()), a)
            .cmp(&(std::cmp::Reverse(b.components().count()), b))
    });
    let mut last = Ok(());
    for m in mounts {
        if let Err(e) = umount_one(&m, timeout) {
            eprintln!("unionfuse: {e}");
            last = Err(Failure::Mount(format!(
                "{}: not every mount was unmounted",
                m.display()
            )));
        }
    }
    last
}

fn umount_one(p: &Path, timeout: Duration) -> Result<(), Failure> {
    let mnt = mountpoint_path(p)?;
    let entry = crate::mountinfo::unionfuse_at(&mnt)?;
    // Found before the unmount: afterwards the device number may already
    // belong to another mount.
    let watch = crate::runtime::Watch::find(&entry);
    unmount_path(p, &mnt)?;
    if let Some(w) = watch
        && !w.wait_exit(timeout)
    {
        return Err(Failure::Mount(format!(
            "{} is unmounted, but its daemon (PID {}) is still running after {} s",
            p.display(),
            w.record.pid,
            timeout.as_secs()
        )));
    }
    Ok(())
}

fn unmount_path(p: &Path, mnt: &Path) -> Result<(), Failure> {
    let prog = if sys::is_root() {
        None
    } else {
        Some(
            find_in_path("fusermount3")
                .ok_or_else(|| Failure::Mount("fusermount3 not found: install fuse3".into()))?,
        )
    };
    // A file closed just now can still be held for a moment by a process
    // that forked while it was open and has not exec'd yet: retry a busy
    // mount briefly before calling it busy.
    let mut tries = 0;
    loop {
        let res = match &prog {
            None => sys::umount(mnt, 0).map_err(|e| {
                let busy = e.raw_os_error() == Some(libc::EBUSY);
                (busy, e.to_string())
            }),
            Some(prog) => fusermount_u(prog, mnt),
        };
        match res {
            Ok(()) => return Ok(()),
            Err((true, _)) if tries < UMOUNT_BUSY_RETRIES => {
                tries += 1;
                std::thread::sleep(Duration::from_millis(50));
            }
            Err((true, _)) => {
                return Err(Failure::Mount(format!(
                    "{} is busy: files are open in it",
                    p.display()
                )));
            }
            Err((false, msg)) => {
                return Err(Failure::Mount(format!(
                    "cannot unmount {}: {msg}",
                    p.display()
                )));
            }
        }
    }
}

/// `fusermount3 -u MNT`; on failure whether the mount was busy, and the
/// first line it printed.
fn fusermount_u(prog: &Path, mnt: &Path) -> Result<(), (bool, String)> {
    let out = Command::new(prog)
        .arg("-u")
        .arg(mnt)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| (false, format!("cannot run fusermount3: {e}")))?;
    if out.status.success() {
        return Ok(());
    }
    let msg = String::from_utf8_lossy(&out.stderr);
    let line = msg.lines().next().unwrap_or("fusermount3 failed").trim();
    Err((msg.contains("busy"), line.to_string()))
}

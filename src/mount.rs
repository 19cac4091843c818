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

/// Mounts `cfg` and serves it until unmounted. `ready` receives one byte
/// once the mountpoint has answered a request; `detach` points stderr at
/// /dev/null at that moment (a daemon outliving its terminal).
///
/// Errors are one-line messages for the user.
pub fn serve(cfg: &MountConfig, ready: Option<OwnedFd>, detach: bool) -> Result<(), String> {
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
    // Modes passed to the upper are the modes created: the kernel already
    // applied the caller's umask.
    sys::set_umask(0);
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
    let union = Arc::new(
        Union::new(layers, upper, budget).map_err(|e| format!("cannot open layers: {e}"))?,
    );
    let root = sys::is_root();
    let fs = UnionFs::new(Arc::clone(&union), cfg.cache_timeout, root);

    let mut options = vec![
        MountOption::FSName("unionfuse".into()),
        MountOption::Subtype("unionfuse".into()),
        // Permission checks are the kernel's, against the modes and owners
        // the union reports, exactly as on a local filesystem.
        MountOption::DefaultPermissions,
    ];
    if cfg.upper.is_none() {
        options.push(MountOption::RO);
    }
    if root {
        // A container root holds device nodes and setuid binaries that must
        // work; an unprivileged mount gets the kernel's nodev,nosuid anyway.
        options.push(MountOption::Dev);
        options.push(MountOption::Suid);
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

    // Block the termination signals before any thread exists so that every
    // thread inherits the mask and only the signal thread takes them.
    sys::block_term_signals().map_err(|e| format!("cannot block signals: {e}"))?;
    let mut session = Session::new(fs, &cfg.mountpoint, &config)
        .map_err(|e| format!("cannot mount at {}: {e}", cfg.mountpoint.display()))?;
    info!(
        "mounted {} (lowers {:?}, upper {:?})",
        cfg.mountpoint.display(),
        cfg.lowers,
        cfg.upper
    );

    let mut unmounter = session.unmount_callable();
    let mnt = cfg.mountpoint.clone();
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let sig = sys::wait_signal();
            info!("signal {sig}: unmounting {}", mnt.display());
            if let Err(e) = unmounter.unmount() {
                // Busy: files are still open in the mount. Detach it so that
                // no new process enters; the daemon exits once the last
                // user lets go, as `umount -l` would.
                warn!("unmount {}: {e}; detaching lazily", mnt.display());
                if let Err(e) = sys::umount(&mnt, libc::MNT_DETACH) {
                    warn!("lazy unmount {}: {e}", mnt.display());
                }
            }
        })
        .map_err(|e| format!("cannot start signal thread: {e}"))?;

    let mnt = cfg.mountpoint.clone();
    std::thread::Builder::new()
        .name("ready".into())
        .spawn(move || announce_ready(&mnt, ready, detach))
        .map_err(|e| format!("cannot start ready thread: {e}"))?;

    session
        .run()
        .map_err(|e| format!("serving {}: {e}", cfg.mountpoint.display()))?;
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

//! The verbs for Rust programs: mount a container root in-process and get a
//! guard that unmounts it on drop, list what its writable layer changed,
//! write that out as an OCI layer.
//!
//! ```no_run
//! # fn main() -> Result<(), String> {
//! let root = unionfuse::Mount::builder()
//!     .lower("/images/debian/layer1")
//!     .lower("/images/debian/layer0")
//!     .upper("/containers/c1/upper")
//!     .mount("/containers/c1/root")?;
//! std::fs::write(root.path().join("tmp/new-file.txt"), "hello")
//!     .map_err(|e| e.to_string())?;
//! for change in root.diff()? {
//!     println!("{} {}", change.kind.letter(), String::from_utf8_lossy(&change.path));
//! }
//! drop(root); // unmounted
//! # Ok(())
//! # }
//! ```

use std::ffi::OsString;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::cli::{MountArgs, WhiteoutArg};
use crate::diff::Change;
use crate::layer::upper::WhiteoutFormat;
use crate::layerfile::Compression;
use crate::mount::{self, Started};

/// Entry point of the library API; see [`Mount::builder`].
#[derive(Debug)]
pub struct Mount;

impl Mount {
    /// A mount to describe: lowers (top-most first), an optional upper.
    pub fn builder() -> MountBuilder {
        MountBuilder::default()
    }
}

/// Describes a mount; [`MountBuilder::mount`] makes it.
#[derive(Debug, Default, Clone)]
pub struct MountBuilder {
    lowers: Vec<PathBuf>,
    upper: Option<PathBuf>,
    work: Option<PathBuf>,
    whiteout: Option<WhiteoutFormat>,
    read_only: bool,
}

impl MountBuilder {
    /// Adds a read-only layer below those added before.
    pub fn lower(mut self, dir: impl Into<PathBuf>) -> Self {
        self.lowers.push(dir.into());
        self
    }

    /// The writable layer; without one the mount is read-only.
    pub fn upper(mut self, dir: impl Into<PathBuf>) -> Self {
        self.upper = Some(dir.into());
        self
    }

    /// The work directory (default: beside the upper, as `unionfuse mount`).
    pub fn work(mut self, dir: impl Into<PathBuf>) -> Self {
        self.work = Some(dir.into());
        self
    }

    /// How deletions are written (default: as `--whiteout=auto`).
    pub fn whiteout(mut self, format: WhiteoutFormat) -> Self {
        self.whiteout = Some(format);
        self
    }

    /// Refuse every change even with an upper.
    pub fn read_only(mut self, on: bool) -> Self {
        self.read_only = on;
        self
    }

    fn args(&self, mountpoint: &Path) -> MountArgs {
        MountArgs {
            lower: self
                .lowers
                .iter()
                .map(|l| escape_lower(l.as_os_str()))
                .collect(),
            upper: self.upper.clone(),
            work: self.work.clone(),
            whiteout: match self.whiteout {
                None => WhiteoutArg::Auto,
                Some(WhiteoutFormat::Overlay) => WhiteoutArg::Overlay,
                Some(WhiteoutFormat::Oci) => WhiteoutArg::Oci,
            },
            foreground: true,
            threads: None,
            cache_timeout: crate::cli::DEFAULT_CACHE_TIMEOUT,
            debug: false,
            ready_fd: None,
            volatile: false,
            read_only: self.read_only,
            nodev: false,
            nosuid: false,
            allow_other: false,
            uidmap: None,
            gidmap: None,
            squash_uid: None,
            squash_gid: None,
            xattr_permissions: None,
            mountpoint: mountpoint.to_path_buf(),
        }
    }

    /// Mounts at `mountpoint` (an existing empty directory), served by
    /// threads of this process, with every check `unionfuse mount` makes.
    /// The mount answers requests when this returns.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let dir = tempfile::tempdir()?;
    /// let (image, upper, root) = (dir.path().join("image"), dir.path().join("upper"), dir.path().join("root"));
    /// for d in [&image, &upper, &root] {
    ///     std::fs::create_dir(d)?;
    /// }
    /// std::fs::write(image.join("motd"), "from the image\n")?;
    ///
    /// let mnt = unionfuse::Mount::builder().lower(&image).upper(&upper).mount(&root)?;
    /// assert_eq!(std::fs::read_to_string(root.join("motd"))?, "from the image\n");
    /// std::fs::write(root.join("motd"), "changed\n")?;
    /// let changes = mnt.diff()?;
    /// assert_eq!(changes[0].path, b"/motd");
    /// assert_eq!(changes[0].kind.letter(), 'C');
    /// drop(mnt);
    ///
    /// // The image is untouched; the change is in the upper.
    /// assert_eq!(std::fs::read_to_string(image.join("motd"))?, "from the image\n");
    /// assert_eq!(std::fs::read_to_string(upper.join("motd"))?, "changed\n");
    /// # Ok(())
    /// # }
    /// ```
    pub fn mount(self, mountpoint: impl AsRef<Path>) -> Result<MountGuard, String> {
        let args = self.args(mountpoint.as_ref());
        let cfg = crate::cli::validate(&args)?;
        let created = crate::cli::prepare_work(&cfg)?;
        let Started {
            session,
            union,
            mounted,
            work_lock,
            stats,
        } = match mount::start(&cfg, true) {
            Ok(s) => s,
            Err(e) => {
                if let Some(w) = created {
                    let _ = std::fs::remove_dir(w);
                }
                return Err(e.to_string());
            }
        };
        let record = mount::publish(&cfg, &mounted);
        let notifier = session.notifier();
        let bg = match session.spawn() {
            Ok(bg) => bg,
            Err(e) => {
                if let Err(e) = mounted.detach() {
                    log::warn!("cannot unmount {}: {e}", mounted.path.display());
                }
                return Err(format!("cannot start serving: {e}"));
            }
        };
        Ok(MountGuard {
            mountpoint: cfg.mountpoint,
            upper: cfg.upper,
            lowers: cfg.lowers,
            notifier,
            mounted,
            stats,
            serving: Some(Serving {
                bg,
                union,
                work_lock,
                record,
            }),
        })
    }
}

/// `\:` and `\\` for a lower path, as `--lower` lists read them.
fn escape_lower(p: &std::ffi::OsStr) -> OsString {
    use std::os::unix::ffi::{OsStrExt, OsStringExt};
    let mut out = Vec::with_capacity(p.len());
    for b in p.as_bytes() {
        if matches!(b, b':' | b'\\') {
            out.push(b'\\');
        }
        out.push(*b);
    }
    OsString::from_vec(out)
}

/// A live mount; dropping it unmounts (lazily, when files are still open).
pub struct MountGuard {
    mountpoint: PathBuf,
    upper: Option<PathBuf>,
    lowers: Vec<PathBuf>,
    notifier: fuser::Notifier,
    mounted: mount::Mounted,
    stats: std::sync::Arc<crate::stats::Stats>,
    /// `None` once unmounted.
    serving: Option<Serving>,
}

/// What lives exactly as long as the serving threads.
struct Serving {
    bg: fuser::BackgroundSession,
    union: std::sync::Arc<crate::union::Union>,
    work_lock: Option<crate::runtime::WorkLock>,
    record: Option<crate::runtime::Published>,
}

impl Serving {
    /// Waits for the serving threads (they end with the kernel connection),
    /// then makes the upper final and lets go of the work directory.
    fn end(self, mounted: &mount::Mounted) -> std::io::Result<()> {
        let joined = mounted.ended(self.bg.join());
        mount::finish(&self.union, self.work_lock, self.record);
        joined
    }
}

/// How long dropping a guard of a busy mount waits for the last file in it
/// to be closed before leaving the rest to a background thread.
const DETACH_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

impl std::fmt::Debug for MountGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MountGuard")
            .field("mountpoint", &self.mountpoint)
            .field("upper", &self.upper)
            .field("lowers", &self.lowers)
            .finish()
    }
}

impl MountGuard {
    /// Where the merged tree is.
    pub fn path(&self) -> &Path {
        &self.mountpoint
    }

    /// What the writable layer changes so far (`docker diff`); empty for a
    /// read-only mount.
    pub fn diff(&self) -> Result<Vec<Change>, String> {
        match &self.upper {
            Some(u) => diff(u, &self.lowers),
            None => Ok(Vec::new()),
        }
    }

    /// Writes the writable layer as an OCI layer tar.
    pub fn export(&self, out: impl Write, compression: Compression) -> Result<(), String> {
        let upper = self
            .upper
            .as_ref()
            .ok_or("a read-only mount has no layer to export")?;
        crate::layerfile::export(upper, out, compression)
    }

    /// Empties the writable layer: every process sees the pristine image
    /// at once (see `unionfuse reset`).
    pub fn reset(&self) -> Result<(), String> {
        let inval = self.union()?.reset().map_err(|e| format!("reset: {e}"))?;
        self.forget(&inval);
        Ok(())
    }

    /// Saves the writable layer as checkpoint `name`.
    pub fn checkpoint(&self, name: &str) -> Result<(), String> {
        let n = crate::name::Name::from_bytes(name.as_bytes())
            .map_err(|e| format!("checkpoint name {name:?}: {e}"))?;
        self.union()?
            .checkpoint(&n)
            .map_err(|e| format!("checkpoint: {e}"))
    }

    /// Brings checkpoint `name` back as the writable layer.
    pub fn restore(&self, name: &str) -> Result<(), String> {
        let n = crate::name::Name::from_bytes(name.as_bytes())
            .map_err(|e| format!("checkpoint name {name:?}: {e}"))?;
        let inval = self
            .union()?
            .restore(&n)
            .map_err(|e| format!("restore {name}: {e}"))?;
        self.forget(&inval);
        Ok(())
    }

    /// Requests the mount answered so far, by kind (what `unionfuse stats`
    /// prints for a daemon).
    pub fn stats(&self) -> Vec<crate::stats::Row> {
        self.stats.rows()
    }

    fn forget(&self, inval: &[crate::reset::Inval]) {
        crate::control::apply(&self.notifier, inval);
    }

    fn union(&self) -> Result<&crate::union::Union, String> {
        self.serving
            .as_ref()
            .map(|s| &*s.union)
            .ok_or_else(|| format!("{} is unmounted", self.mountpoint.display()))
    }

    /// Unmounts now, reporting failure (EBUSY while files are open) instead
    /// of detaching; the mount then stays, to be unmounted again later (or
    /// detached by dropping the guard).
    pub fn unmount(&mut self) -> Result<(), String> {
        self.try_unmount()
            .map_err(|e| format!("cannot unmount {}: {e}", self.mountpoint.display()))
    }

    /// Unmounts and waits for the serving threads, which end with the
    /// kernel connection.
    fn try_unmount(&mut self) -> std::io::Result<()> {
        if self.serving.is_none() {
            return Ok(());
        }
        self.mounted.unmount()?;
        match self.serving.take() {
            Some(s) => s.end(&self.mounted),
            None => Ok(()),
        }
    }
}

impl Drop for MountGuard {
    fn drop(&mut self) {
        if self.try_unmount().is_ok() {
            return;
        }
        // Files are still open: detach, so that the serving threads end
        // when the last one is closed, and wait a while for that.
        if let Err(e) = self.mounted.detach() {
            log::warn!("cannot detach {}: {e}", self.mountpoint.display());
        }
        let Some(serving) = self.serving.take() else {
            return;
        };
        let deadline = std::time::Instant::now() + DETACH_WAIT;
        while !serving.bg.guard.is_finished() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        if serving.bg.guard.is_finished() {
            if let Err(e) = serving.end(&self.mounted) {
                log::warn!("serving {}: {e}", self.mountpoint.display());
            }
            return;
        }
        log::warn!(
            "{} is still in use after {} s: it is detached and ends when the last file in it is closed",
            self.mountpoint.display(),
            DETACH_WAIT.as_secs()
        );
        let mounted = self.mounted.clone();
        let ended = std::thread::Builder::new()
            .name("unionfuse-end".into())
            .spawn(move || {
                if let Err(e) = serving.end(&mounted) {
                    log::warn!("serving {}: {e}", mounted.path.display());
                }
            });
        if let Err(e) = ended {
            log::warn!("cannot wait for the detached mount: {e}");
        }
    }
}

/// What the upper `upper` changes over `lowers` (top-most first).
pub fn diff(upper: &Path, lowers: &[PathBuf]) -> Result<Vec<Change>, String> {
    let layers =
        crate::diff::open_layers(upper, lowers).map_err(|e| format!("cannot open layers: {e}"))?;
    crate::diff::diff(&layers).map_err(|e| format!("cannot walk the upper: {e}"))
}

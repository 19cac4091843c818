//! The verbs for Rust programs: mount a container root in-process and get a
//! guard that unmounts it on drop, list what its writable layer changed,
//! write that out as an OCI layer, unpack layers. Every verb fails with a
//! [`Failure`].
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let root = unionfuse::Mount::builder()
//!     .lower("/images/debian/layer1")
//!     .lower("/images/debian/layer0")
//!     .upper("/containers/c1/upper")
//!     .mount("/containers/c1/root")?;
//! std::fs::write(root.path().join("tmp/new-file.txt"), "hello")?;
//! for change in root.diff()? {
//!     println!("{} {}", change.kind.letter(), String::from_utf8_lossy(&change.path));
//! }
//! drop(root); // unmounted
//! # Ok(())
//! # }
//! ```

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use crate::config::{MountConfig, MountConfigBuilder};
use crate::diff::Change;
use crate::failure::Failure;
use crate::layer::upper::WhiteoutFormat;
use crate::layerfile::Compression;
use crate::mount::{self, Started};
use crate::progress::{NoProgress, Progress};

/// Entry point of the library API; see [`Mount::builder`].
#[derive(Debug)]
pub struct Mount;

impl Mount {
    /// A mount to describe: lowers (top-most first), an optional upper.
    pub fn builder() -> MountBuilder {
        MountBuilder::default()
    }
}

/// Describes a mount; [`MountBuilder::mount`] makes it. For every option
/// of `unionfuse mount`, fill in a [`MountConfig`] and use [`Mount::start`].
#[derive(Debug, Default, Clone)]
pub struct MountBuilder {
    config: MountConfigBuilder,
}

impl MountBuilder {
    /// Adds a read-only layer below those added before.
    pub fn lower(mut self, dir: impl Into<PathBuf>) -> Self {
        self.config = self.config.lower(dir);
        self
    }

    /// The writable layer; without one the mount is read-only.
    pub fn upper(mut self, dir: impl Into<PathBuf>) -> Self {
        self.config = self.config.upper(dir);
        self
    }

    /// The work directory (default: beside the upper, as `unionfuse mount`).
    pub fn work(mut self, dir: impl Into<PathBuf>) -> Self {
        self.config = self.config.work(dir);
        self
    }

    /// How deletions are written (default: as `--whiteout=auto`).
    pub fn whiteout(mut self, format: WhiteoutFormat) -> Self {
        self.config = self.config.whiteout(Some(format));
        self
    }

    /// Refuse every change even with an upper.
    pub fn read_only(mut self, on: bool) -> Self {
        self.config = self.config.read_only(on);
        self
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
    pub fn mount(self, mountpoint: impl AsRef<Path>) -> Result<MountGuard, Failure> {
        let cfg = self.config.mountpoint(mountpoint.as_ref()).validate()?;
        Mount::start(cfg)
    }
}

impl Mount {
    /// Mounts a validated configuration, served by threads of this process
    /// (its `threads`, `debug` and the like apply as to a daemon). The
    /// mount answers requests when this returns.
    pub fn start(cfg: MountConfig) -> Result<MountGuard, Failure> {
        let created = mount::prepare_work(&cfg)?;
        let Started {
            session,
            union,
            mounted,
            work_lock,
            stats,
            ring,
        } = match mount::start(&cfg, true) {
            Ok(s) => s,
            Err(e) => {
                if let Some(w) = created {
                    let _ = std::fs::remove_dir(w);
                }
                return Err(Failure::Mount(e.to_string()));
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
                return Err(Failure::Mount(format!("cannot start serving: {e}")));
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
                ring,
                union,
                work_lock,
                record,
            }),
        })
    }
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
    ring: Option<crate::fuse::ring::Ring>,
    union: std::sync::Arc<crate::union::Union>,
    work_lock: Option<crate::runtime::WorkLock>,
    record: Option<crate::runtime::Published>,
}

impl Serving {
    /// Waits for the serving threads (they end with the kernel connection),
    /// then makes the upper final and lets go of the work directory.
    fn end(self, mounted: &mount::Mounted) -> std::io::Result<()> {
        let joined = mounted.ended(self.bg.join());
        if let Some(r) = self.ring {
            r.join(mount::RING_JOIN_WAIT);
        }
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
    pub fn diff(&self) -> Result<Vec<Change>, Failure> {
        self.diff_with_progress(&NoProgress)
    }

    /// [`MountGuard::diff`], counting each entry of the upper visited into
    /// `progress`.
    pub fn diff_with_progress(&self, progress: &dyn Progress) -> Result<Vec<Change>, Failure> {
        match &self.upper {
            Some(u) => diff_with_progress(u, &self.lowers, progress),
            None => Ok(Vec::new()),
        }
    }

    /// Writes the writable layer as an OCI layer tar.
    pub fn export(&self, out: impl Write, compression: Compression) -> Result<(), Failure> {
        let upper = self
            .upper
            .as_ref()
            .ok_or_else(|| Failure::Invalid("a read-only mount has no layer to export".into()))?;
        export(upper, out, compression)
    }

    /// Empties the writable layer: every process sees the pristine image
    /// at once (see `unionfuse reset`).
    pub fn reset(&self) -> Result<(), Failure> {
        let inval = self
            .union()?
            .reset()
            .map_err(|e| Failure::Layer(format!("reset: {e}")))?;
        self.forget(&inval);
        Ok(())
    }

    /// Saves the writable layer as checkpoint `name`.
    pub fn checkpoint(&self, name: &str) -> Result<(), Failure> {
        self.checkpoint_with_progress(name, &NoProgress)
    }

    /// [`MountGuard::checkpoint`], counting each entry copied into
    /// `progress`.
    pub fn checkpoint_with_progress(
        &self,
        name: &str,
        progress: &dyn Progress,
    ) -> Result<(), Failure> {
        let n = checkpoint_name(name)?;
        self.union()?
            .checkpoint(&n, progress)
            .map_err(|e| Failure::Layer(format!("checkpoint: {e}")))
    }

    /// Brings checkpoint `name` back as the writable layer.
    pub fn restore(&self, name: &str) -> Result<(), Failure> {
        self.restore_with_progress(name, &NoProgress)
    }

    /// [`MountGuard::restore`], counting each entry copied into `progress`.
    pub fn restore_with_progress(
        &self,
        name: &str,
        progress: &dyn Progress,
    ) -> Result<(), Failure> {
        let n = checkpoint_name(name)?;
        let inval = self
            .union()?
            .restore(&n, progress)
            .map_err(|e| Failure::Layer(format!("restore {name}: {e}")))?;
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

    fn union(&self) -> Result<&crate::union::Union, Failure> {
        self.serving
            .as_ref()
            .map(|s| &*s.union)
            .ok_or_else(|| Failure::Unmounted(self.mountpoint.clone()))
    }

    /// Unmounts now, reporting failure (EBUSY while files are open) instead
    /// of detaching; the mount then stays, to be unmounted again later (or
    /// detached by dropping the guard).
    pub fn unmount(&mut self) -> Result<(), Failure> {
        self.try_unmount().map_err(|e| {
            Failure::Mount(format!("cannot unmount {}: {e}", self.mountpoint.display()))
        })
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

/// A checkpoint name: one plain path component.
fn checkpoint_name(name: &str) -> Result<crate::name::Name, Failure> {
    crate::name::Name::from_bytes(name.as_bytes())
        .map_err(|e| Failure::Invalid(format!("checkpoint name {name:?}: {e}")))
}

/// What the upper `upper` changes over `lowers` (top-most first), as
/// `unionfuse diff` prints it; the layers need not be mounted.
pub fn diff(upper: &Path, lowers: &[PathBuf]) -> Result<Vec<Change>, Failure> {
    diff_with_progress(upper, lowers, &NoProgress)
}

/// [`diff()`], counting each entry of the upper visited into `progress`.
pub fn diff_with_progress(
    upper: &Path,
    lowers: &[PathBuf],
    progress: &dyn Progress,
) -> Result<Vec<Change>, Failure> {
    let layers = crate::diff::open_layers(upper, lowers)
        .map_err(|e| Failure::Layer(format!("cannot open layers: {e}")))?;
    crate::diff::diff(&layers, progress)
        .map_err(|e| Failure::Layer(format!("cannot walk the upper: {e}")))
}

/// Writes the upper directory `upper` as an OCI image layer tar to `out`
/// (reproducible: the same upper gives the same bytes).
pub fn export(upper: &Path, out: impl Write, compression: Compression) -> Result<(), Failure> {
    export_with(upper, out, compression, false)
}

/// [`export`]; with `mtime_seconds`, times in whole seconds only (docker's
/// layers), else sub-second times kept in PAX records.
pub fn export_with(
    upper: &Path,
    out: impl Write,
    compression: Compression,
    mtime_seconds: bool,
) -> Result<(), Failure> {
    export_with_progress(upper, out, compression, mtime_seconds, &NoProgress)
}

/// [`export_with`], counting each entry written into `progress`.
pub fn export_with_progress(
    upper: &Path,
    out: impl Write,
    compression: Compression,
    mtime_seconds: bool,
    progress: &dyn Progress,
) -> Result<(), Failure> {
    crate::layerfile::export(upper, out, compression, mtime_seconds, progress)
        .map_err(Failure::Layer)
}

/// Unpacks an OCI image layer tar (plain, gzip or zstd) into the existing
/// directory `dir`, writing deletions in `format`. An entry that would land
/// outside `dir` is refused.
pub fn unpack(input: impl Read, dir: &Path, format: WhiteoutFormat) -> Result<(), Failure> {
    unpack_with_progress(input, dir, format, &NoProgress)
}

/// [`unpack`], counting each entry of the layer into `progress`.
pub fn unpack_with_progress(
    input: impl Read,
    dir: &Path,
    format: WhiteoutFormat,
    progress: &dyn Progress,
) -> Result<(), Failure> {
    crate::layerfile::unpack(input, dir, format, progress).map_err(Failure::Layer)
}

/// Writes the changes of the upper `upper` as a new layer directory `dest`
/// (an existing empty directory), to stack as a lower.
pub fn commit(upper: &Path, dest: &Path, format: WhiteoutFormat) -> Result<(), Failure> {
    commit_with_progress(upper, dest, format, &NoProgress)
}

/// [`commit`], counting each entry written to `dest` into `progress`.
pub fn commit_with_progress(
    upper: &Path,
    dest: &Path,
    format: WhiteoutFormat,
    progress: &dyn Progress,
) -> Result<(), Failure> {
    crate::layerfile::commit(upper, dest, format, progress).map_err(Failure::Layer)
}

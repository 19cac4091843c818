//! A validated mount configuration: the only place paths live after the CLI.

use std::path::PathBuf;
use std::time::Duration;

use crate::idmap::IdMap;
use crate::layer::upper::WhiteoutFormat;

/// Everything a mount needs, with every path absolute and checked.
#[derive(Debug, Clone)]
pub struct MountConfig {
    /// Read-only layers, top-most first.
    pub lowers: Vec<PathBuf>,
    /// The writable layer; `None` makes the mount read-only.
    pub upper: Option<PathBuf>,
    /// Staging directory on the same mount as the upper.
    pub work: Option<PathBuf>,
    pub mountpoint: PathBuf,
    /// FUSE worker threads.
    pub threads: usize,
    /// How long the kernel may cache entries and attributes.
    pub cache_timeout: Duration,
    /// Per-request trace on stderr.
    pub debug: bool,
    /// Owners as shown and as stored.
    pub ids: IdMap,
    /// The xattr with ownership overrides, when enabled.
    pub override_xattr: Option<&'static std::ffi::CStr>,
    /// fsync does not reach the disk.
    pub volatile: bool,
    /// Refuse every change, upper or not.
    pub read_only: bool,
    pub nodev: bool,
    pub nosuid: bool,
    /// Let other users in on an unprivileged mount.
    pub allow_other: bool,
    /// The whiteout format to write; `None` picks one (see
    /// [`crate::layer::upper::Upper::open`]).
    pub whiteout: Option<WhiteoutFormat>,
}

//! unionfuse: a FUSE union filesystem with kernel overlayfs semantics.
//!
//! Layers are stacked top-most first: an optional writable upper directory,
//! then read-only lowers. Lookups fall through the stack; whiteouts and opaque
//! directories written by kernel overlayfs (char 0:0, `trusted.overlay.opaque`)
//! or found in OCI layers (`.wh.NAME`, `.wh..wh..opq`) hide what lies below.
//!
//! Writes go to the upper only: lower objects are copied up first,
//! deletions of lower names leave whiteouts, and the upper stays a valid
//! kernel overlayfs upper.
//!
//! # The library
//!
//! What a Rust program or a test harness uses:
//!
//! - [`Mount::builder`] describes a mount and mounts it in-process; the
//!   [`MountGuard`] it returns unmounts on drop, and lists ([`MountGuard::diff`]),
//!   exports, resets and checkpoints the writable layer. [`MountConfig`]
//!   (made by [`MountConfig::builder`] and checked by
//!   [`MountConfigBuilder::validate`]) carries every option of `unionfuse
//!   mount`, for [`Mount::start`].
//! - [`diff()`] lists what an upper changes ([`Change`]); [`export`],
//!   [`unpack`] and [`commit`] write and read OCI image layers.
//! - Long verbs have a `_with_progress` twin that counts entries and bytes
//!   into a [`Progress`] as it goes; the plain ones pass [`NoProgress`].
//! - Every verb fails with a [`Failure`]: a kind to match and a one-line
//!   message.
//!
//! # Layering
//!
//! Dependencies point one way, from the system calls up to the command
//! lines:
//!
//! ```text
//! sys                       every unsafe block and raw syscall
//!  -> name, layer, progress one path component; layer roots, whiteouts;
//!                           the counts long work reports
//!  -> snapshot              merged directory listings frozen at one moment
//!  -> resolve, inode,       which layer wins, merged listings; the inode
//!     handle                table; open files and directories
//!  -> copyup, reset         entries made to exist in the upper; emptying it
//!  -> union, write          the filesystem operations as plain Rust
//!  -> fuse, mount, control  the fuser adapter, the daemon's life, its
//!                           control socket
//!     diff, check, walk,    tooling beside it: read-only walks, layer tars,
//!     layerfile, runtime,   the records of live daemons, the mount table,
//!     mountinfo, stats,     request counters, JSON output, the checked
//!     json, config          mount configuration
//!  -> api, run              the verbs for Rust programs (this page)
//!  -> compat, cli           the command lines (the binary's only entry)
//! ```
//!
//! Only `sys` contains `unsafe`; only `fuse`, `mount`, `control` and `api`
//! know fuser; only `cli` knows clap and indicatif. Internal modules are
//! private; this page shows the whole public API.

mod api;
mod check;
#[doc(hidden)]
pub mod cli;
mod compat;
mod config;
mod control;
mod copyup;
mod diff;
mod error;
mod failure;
mod fuse;
mod handle;
mod idmap;
mod inode;
mod json;
mod layer;
mod layerfile;
mod listing;
mod mount;
mod mountinfo;
mod name;
mod override_stat;
mod progress;
mod reset;
mod resolve;
mod run;
mod runtime;
mod stats;
mod sys;
mod tree;
mod union;
mod walk;
mod write;

pub use api::{
    Mount, MountBuilder, MountGuard, commit, commit_with_progress, diff, diff_with_progress,
    export, export_with, export_with_progress, unpack, unpack_with_progress,
};
pub use config::{DEFAULT_CACHE_TIMEOUT, MountConfig, MountConfigBuilder};
pub use diff::{Change, ChangeKind};
pub use failure::Failure;
pub use layer::upper::WhiteoutFormat;
pub use layerfile::Compression;
pub use progress::{NoProgress, Progress};
pub use stats::Row as StatsRow;

/// Parsers of untrusted input, reachable for the randomized tests
/// (`tests/fuzz.rs`) only; not part of the API.
#[doc(hidden)]
pub mod fuzzing {
    pub use crate::cli::is_compat;
    pub use crate::compat::parse as parse_compat;
    pub use crate::idmap::Map;
    pub use crate::override_stat::Override;
}

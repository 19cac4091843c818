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
//! The crate is layered so that dependencies point down:
//! `{cli, compat, api, run} -> mount -> fuse -> union (+ write, copyup,
//! reset) -> {resolve, inode, handle, layer} -> sys`, with the tooling
//! (`diff`, `layerfile`, `control`) beside it. Only [`sys`] contains
//! `unsafe`; only [`fuse`], [`mount`], [`api`] and [`control`] know about
//! fuser. [`Mount`] is where Rust programs start.

pub mod api;
pub mod check;
pub mod cli;
pub mod compat;
pub mod config;
pub mod control;
mod copyup;
pub mod diff;
pub mod error;
pub mod fuse;
pub mod handle;
pub mod idmap;
pub mod inode;
pub mod layer;
pub mod layerfile;
pub mod listing;
pub mod mount;
pub mod mountinfo;
pub mod name;
pub mod override_stat;
pub mod reset;
pub mod resolve;
pub mod run;
pub mod runtime;
pub mod stats;
pub mod sys;
mod tree;
pub mod union;
mod walk;
pub mod write;

pub use api::{Mount, MountBuilder, MountGuard};
pub use config::MountConfig;
pub use error::{Error, Result};
pub use union::Union;

//! What a writable layer changes, in `docker diff`'s terms: `A` added, `C`
//! changed (content or metadata, and every directory holding a change), `D`
//! deleted (whiteouts, and lower entries an opaque directory hides).
//!
//! The walk visits the upper only, looking each name up in the lowers: its
//! cost follows the size of the upper, not of the image.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::sync::Arc;

use crate::error::Result;
use crate::handle::DirSnapshot;
use crate::layer::whiteout::{self, dir_marks, oci_whiteout_target};
use crate::layer::{LayerIdx, Layers};
use crate::name::Name;
use crate::resolve::{self, DirFds};
use crate::sys;

/// One line of a diff.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Change {
    /// Absolute path in the merged tree, as bytes (`/etc/hostname`).
    pub path: Vec<u8>,
    pub kind: ChangeKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ChangeKind {
    Added,
    Changed,
    Deleted,
}

impl ChangeKind {
    pub fn letter(self) -> char {
        match self {
            ChangeKind::Added => 'A',
            ChangeKind::Changed => 'C',
            ChangeKind::Deleted => 'D',
        }
    }
}

/// The changes the upper of `layers` (layer 0) makes to its lowers, sorted
/// by path.
pub fn diff(layers: &Layers) -> Result<Vec<Change>> {
    let mut out = Vec::new();
    let upper = Arc::clone(&layers.get(0).root);
    let lowers: DirFds = layers
        .iter()
        .filter(|(i, _)| *i != 0)
        .map(|(i, l)| (i, Arc::clone(&l.root)))
        .collect();
    walk(layers, upper.as_fd(), &lowers, &mut Vec::new(), &mut out)?;
    out.sort();
    Ok(out)
}

/// Opens the layers of an upper and its lowers for [`diff`].
pub fn open_layers(upper: &Path, lowers: &[std::path::PathBuf]) -> std::io::Result<Layers> {
    Layers::open(Some(upper), lowers)
}

fn push(out: &mut Vec<Change>, dir: &[u8], name: &[u8], kind: ChangeKind) {
    let mut path = Vec::with_capacity(dir.len() + name.len() + 1);
    path.extend_from_slice(dir);
    path.push(b'/');
    path.extend_from_slice(name);
    out.push(Change { path, kind });
}

/// Walks upper directory `dir` at merged path `path`; `lowers` are the lower
/// layers' directories merged at the same place (empty under an added or
/// opaque directory).
fn walk(
    layers: &Layers,
    dir: BorrowedFd<'_>,
    lowers: &[(LayerIdx, Arc<OwnedFd>)],
    path: &mut Vec<u8>,
    out: &mut Vec<Change>,
) -> Result<()> {
    let entries = sys::read_dir(dir)?;
    let mut present: Vec<Vec<u8>> = Vec::new();
    for e in entries.iter() {
        if e.name == b"." || e.name == b".." {
            continue;
        }
        if let Some(target) = oci_whiteout_target(e.name) {
            if let Some(t) = target
                && let Ok(n) = Name::from_bytes(t)
                && resolve::lookup(layers, lowers, &n)?.is_some()
            {
                push(out, path, t, ChangeKind::Deleted);
            }
            continue;
        }
        let name = Name::from_bytes(e.name)?;
        let st = sys::fstatat(dir, name.as_cstr())?;
        let lower = resolve::lookup(layers, lowers, &name)?;
        if whiteout::is_whiteout(&st) {
            if lower.is_some() {
                push(out, path, e.name, ChangeKind::Deleted);
            }
            continue;
        }
        present.push(e.name.to_vec());
        let is_dir = st.st_mode & libc::S_IFMT == libc::S_IFDIR;
        let lower_dir = lower
            .as_ref()
            .is_some_and(|f| f.stat.st_mode & libc::S_IFMT == libc::S_IFDIR);
        let kind = if lower.is_some() {
            ChangeKind::Changed
        } else {
            ChangeKind::Added
        };
        push(out, path, e.name, kind);
        if !is_dir {
            continue;
        }
        let sub = sys::open_child_dir(dir, name.as_cstr())?;
        let opaque = dir_marks(dir, &name, sub.as_fd()).opaque;
        let sub_lowers: DirFds = match lower {
            Some(f) if lower_dir && !opaque => f
                .layers
                .iter()
                .copied()
                .zip(f.dir_fds.into_iter().map(Arc::new))
                .collect(),
            Some(f) if lower_dir => {
                // Everything the lowers hold here is hidden.
                let hidden: DirFds = f
                    .layers
                    .iter()
                    .copied()
                    .zip(f.dir_fds.into_iter().map(Arc::new))
                    .collect();
                let len = path.len();
                path.push(b'/');
                path.extend_from_slice(e.name);
                deleted_below(layers, sub.as_fd(), &hidden, path, out)?;
                path.truncate(len);
                Vec::new()
            }
            _ => Vec::new(),
        };
        let len = path.len();
        path.push(b'/');
        path.extend_from_slice(e.name);
        walk(layers, sub.as_fd(), &sub_lowers, path, out)?;
        path.truncate(len);
    }
    Ok(())
}

/// `D` for each entry of the merged lower directory `hidden` that opaque
/// upper directory `dir` does not hold itself.
fn deleted_below(
    layers: &Layers,
    dir: BorrowedFd<'_>,
    hidden: &[(LayerIdx, Arc<OwnedFd>)],
    path: &[u8],
    out: &mut Vec<Change>,
) -> Result<()> {
    let listing: DirSnapshot = resolve::list(layers, hidden, 0, 0, None)?;
    for e in listing.entries() {
        let n = listing.name(e);
        if n == b"." || n == b".." {
            continue;
        }
        let name = Name::from_bytes(n)?;
        match sys::fstatat(dir, name.as_cstr()) {
            Ok(st) if !whiteout::is_whiteout(&st) => {}
            _ => push(out, path, n, ChangeKind::Deleted),
        }
    }
    Ok(())
}

/// The diff as `docker diff` prints it: one `K /path` line each.
pub fn format_text(changes: &[Change]) -> Vec<u8> {
    let mut s = Vec::new();
    for c in changes {
        s.push(c.kind.letter() as u8);
        s.push(b' ');
        s.extend_from_slice(&c.path);
        s.push(b'\n');
    }
    s
}

/// The diff as JSON: `[{"kind":"A","path":"/x"},...]`, paths that are not
/// UTF-8 escaped byte by byte as `\u00XX`.
pub fn format_json(changes: &[Change]) -> String {
    let mut s = String::from("[");
    for (i, c) in changes.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        s.push_str("{\"kind\":\"");
        s.push(c.kind.letter());
        s.push_str("\",\"path\":\"");
        match std::str::from_utf8(&c.path) {
            Ok(p) => escape_json(p, &mut s),
            Err(_) => {
                for b in &c.path {
                    if b.is_ascii_graphic() && *b != b'"' && *b != b'\\' || *b == b' ' {
                        s.push(*b as char);
                    } else {
                        s.push_str(&format!("\\u{:04x}", b));
                    }
                }
            }
        }
        s.push_str("\"}");
    }
    s.push_str("]\n");
    s
}

fn escape_json(v: &str, out: &mut String) {
    for ch in v.chars() {
        match ch {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
}

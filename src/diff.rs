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
use crate::json::{JsonPath, array_line};
use crate::layer::whiteout::{self, dir_marks, oci_whiteout_target};
use crate::layer::{LayerIdx, Layers};
use crate::listing::DirSnapshot;
use crate::name::Name;
use crate::resolve::{self, DirFds};
use crate::sys;
use crate::walk::{Entry, Step, walk};

/// One line of a diff.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Change {
    /// Absolute path in the merged tree, as bytes (`/etc/hostname`).
    pub path: Vec<u8>,
    /// What happened to it.
    pub kind: ChangeKind,
}

/// What a change did to a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ChangeKind {
    /// The path is new: no lower holds it.
    Added,
    /// Content or metadata changed, or (a directory) something below it.
    Changed,
    /// A lower's path is gone: a whiteout, or hidden by an opaque directory.
    Deleted,
}

impl ChangeKind {
    /// `A`, `C` or `D`, as `docker diff` prints it.
    pub fn letter(self) -> char {
        match self {
            ChangeKind::Added => 'A',
            ChangeKind::Changed => 'C',
            ChangeKind::Deleted => 'D',
        }
    }
}

/// The changes the upper of `layers` (layer 0) makes to its lowers, sorted
/// by path. Each entry of the upper visited is counted into `progress`.
pub fn diff(layers: &Layers, progress: &dyn crate::progress::Progress) -> Result<Vec<Change>> {
    let mut out = Vec::new();
    let upper = Arc::clone(&layers.get(0).root);
    let lowers: DirFds = layers
        .iter()
        .filter(|(i, _)| *i != 0)
        .map(|(i, l)| (i, Arc::clone(&l.root)))
        .collect();
    walk(
        upper,
        lowers,
        false,
        |e| {
            progress.item(0);
            visit(layers, e, &mut out)
        },
        |_, _| Ok(()),
    )?;
    out.sort();
    Ok(out)
}

/// Opens the layers of an upper and its lowers for [`diff`].
pub fn open_layers(upper: &Path, lowers: &[std::path::PathBuf]) -> std::io::Result<Layers> {
    Layers::open(Some(upper), lowers)
}

/// Records `/PARENT NAME`; `parent` is a relative path ending in `/`, or
/// empty at the root.
fn push(out: &mut Vec<Change>, parent: &[u8], name: &[u8], kind: ChangeKind) {
    let mut path = Vec::with_capacity(parent.len() + name.len() + 1);
    path.push(b'/');
    path.extend_from_slice(parent);
    path.extend_from_slice(name);
    out.push(Change { path, kind });
}

/// One upper entry; the context of a directory is the lower layers'
/// directories merged at the same place (empty under an added or opaque
/// directory).
fn visit(layers: &Layers, e: &Entry<'_, DirFds>, out: &mut Vec<Change>) -> Result<Step<DirFds>> {
    let raw = e.name.as_bytes();
    let parent = &e.path[..e.path.len() - raw.len()];
    let lowers = e.ctx;
    if let Some(target) = oci_whiteout_target(raw) {
        if let Some(t) = target
            && let Ok(n) = Name::from_bytes(t)
            && resolve::lookup(layers, lowers, &n)?.is_some()
        {
            push(out, parent, t, ChangeKind::Deleted);
        }
        return Ok(Step::Next);
    }
    let st = sys::fstatat(e.dir, e.name.as_cstr())?;
    let lower = resolve::lookup(layers, lowers, e.name)?;
    if whiteout::is_whiteout(&st) {
        if lower.is_some() {
            push(out, parent, raw, ChangeKind::Deleted);
        }
        return Ok(Step::Next);
    }
    let is_dir = st.st_mode & libc::S_IFMT == libc::S_IFDIR;
    let lower_dir = lower
        .as_ref()
        .is_some_and(|f| f.stat.st_mode & libc::S_IFMT == libc::S_IFDIR);
    let kind = if lower.is_some() {
        ChangeKind::Changed
    } else {
        ChangeKind::Added
    };
    push(out, parent, raw, kind);
    if !is_dir {
        return Ok(Step::Next);
    }
    let sub = sys::open_child_dir(e.dir, e.name.as_cstr())?;
    let opaque = dir_marks(e.dir, e.name, sub.as_fd()).opaque;
    let below = |f: resolve::Found| -> DirFds {
        f.layers
            .iter()
            .copied()
            .zip(f.dir_fds.into_iter().map(Arc::new))
            .collect()
    };
    let sub_lowers = match lower {
        Some(f) if lower_dir && !opaque => below(f),
        Some(f) if lower_dir => {
            // Everything the lowers hold here is hidden.
            let mut dir_path = e.path.to_vec();
            dir_path.push(b'/');
            deleted_below(layers, sub.as_fd(), &below(f), &dir_path, out)?;
            Vec::new()
        }
        _ => Vec::new(),
    };
    Ok(Step::DescendOpened(sub_lowers, Arc::new(sub)))
}

/// `D` for each entry of the merged lower directory `hidden` that opaque
/// upper directory `dir` (at `parent`, ending in `/`) does not hold itself.
fn deleted_below(
    layers: &Layers,
    dir: BorrowedFd<'_>,
    hidden: &[(LayerIdx, Arc<OwnedFd>)],
    parent: &[u8],
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
            _ => push(out, parent, n, ChangeKind::Deleted),
        }
    }
    Ok(())
}

/// The diff as `docker diff` prints it: one `K /path` line each. A name
/// may hold a newline, which would make two changes of one: control
/// characters are written C-style (`\n`, `\t`, `\x1b`) and a backslash as
/// `\\`, so that every line is one change and reads back unambiguously.
pub fn format_text(changes: &[Change]) -> Vec<u8> {
    let mut s = Vec::new();
    for c in changes {
        s.push(c.kind.letter() as u8);
        s.push(b' ');
        for &b in &c.path {
            match b {
                b'\n' => s.extend_from_slice(b"\\n"),
                b'\t' => s.extend_from_slice(b"\\t"),
                b'\r' => s.extend_from_slice(b"\\r"),
                b'\\' => s.extend_from_slice(b"\\\\"),
                0..0x20 | 0x7f => s.extend_from_slice(format!("\\x{b:02x}").as_bytes()),
                _ => s.push(b),
            }
        }
        s.push(b'\n');
    }
    s
}

/// The diff as JSON: `[{"kind":"A","path":"/x"},...]`, a path that is
/// not UTF-8 written as `crate::json` says.
pub fn format_json(changes: &[Change]) -> serde_json::Result<String> {
    #[derive(serde::Serialize)]
    struct Item<'a> {
        kind: String,
        #[serde(flatten)]
        path: JsonPath<'a>,
    }
    let items: Vec<Item<'_>> = changes
        .iter()
        .map(|c| Item {
            kind: c.kind.letter().to_string(),
            path: JsonPath::new(&c.path),
        })
        .collect();
    array_line(&items)
}

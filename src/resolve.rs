//! Which layer wins for `(parent, name)`, and the merged listing of a
//! directory: overlayfs's rules, in one place.

use std::collections::HashSet;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::handle::DirSnapshot;
use crate::layer::upper::Upper;
use crate::layer::whiteout::{self, is_opaque_dir, oci_whiteout_target};
use crate::layer::{LayerIdx, Layers};
use crate::name::Name;
use crate::sys;

/// The layer directories of one merged directory, top-most first.
pub type DirFds = Vec<(LayerIdx, Arc<OwnedFd>)>;

/// The outcome of a lookup that found something.
#[derive(Debug)]
pub struct Found {
    /// `stat` of the winning (top-most) object.
    pub stat: libc::stat,
    /// Layers holding the object: the winner's, and for a directory every
    /// lower one merged under it, top-most first.
    pub layers: Vec<LayerIdx>,
    /// For a directory, its descriptor in each of `layers` (opened anyway
    /// to check opacity, so worth caching).
    pub dir_fds: Vec<OwnedFd>,
}

/// Looks `name` up in the layer directories `dirs` of a merged directory.
///
/// Walks top-down: a whiteout (char 0:0 or `.wh.NAME`) ends the walk; a
/// non-directory wins alone and hides everything below; directories merge
/// until an opaque one or a non-directory below them. Returns `None` when
/// nothing is visible.
pub fn lookup(dirs: &[(LayerIdx, Arc<OwnedFd>)], name: &Name) -> Result<Option<Found>> {
    let mut found: Option<Found> = None;
    for (i, (layer, dirfd)) in dirs.iter().enumerate() {
        let more_below = i + 1 < dirs.len();
        let dirfd = dirfd.as_fd();
        let st = match sys::fstatat(dirfd, name.as_cstr()) {
            Ok(st) => st,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                if more_below && whiteout::has_oci_whiteout(dirfd, name) {
                    break;
                }
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        if whiteout::is_whiteout(&st) {
            break;
        }
        if st.st_mode & libc::S_IFMT != libc::S_IFDIR {
            // A non-directory wins alone; below a directory it ends the
            // merge and stays hidden, as in overlayfs.
            if found.is_none() {
                found = Some(Found {
                    stat: st,
                    layers: vec![*layer],
                    dir_fds: Vec::new(),
                });
            }
            break;
        }
        let fd = sys::open_child_dir(dirfd, name.as_cstr())?;
        let opaque = more_below && is_opaque_dir(dirfd, name, fd.as_fd());
        let f = found.get_or_insert_with(|| Found {
            stat: st,
            layers: Vec::with_capacity(dirs.len() - i),
            dir_fds: Vec::with_capacity(dirs.len() - i),
        });
        f.layers.push(*layer);
        f.dir_fds.push(fd);
        if opaque || (more_below && whiteout::has_oci_whiteout(dirfd, name)) {
            break;
        }
    }
    Ok(found)
}

/// Maps a `d_type` that the filesystem did not fill in, or a char device that
/// may be a whiteout, to the real type by `fstatat`. Returns `None` for a
/// whiteout or a vanished entry.
fn real_type(dir: BorrowedFd<'_>, name: &[u8], d_type: u8) -> Option<u8> {
    if d_type != libc::DT_UNKNOWN && d_type != libc::DT_CHR {
        return Some(d_type);
    }
    let n = Name::from_bytes(name).ok()?;
    let st = sys::fstatat(dir, n.as_cstr()).ok()?;
    if whiteout::is_whiteout(&st) {
        return None;
    }
    Some(((st.st_mode & libc::S_IFMT) >> 12) as u8)
}

/// The merged listing of a directory whose layer directories are `dirs`,
/// with `.` and `..` first. `self_ino`/`parent_ino` are their inode numbers.
pub fn list(
    layers: &Layers,
    dirs: &[(LayerIdx, Arc<OwnedFd>)],
    self_ino: u64,
    parent_ino: u64,
    upper: Option<&Upper>,
) -> Result<DirSnapshot> {
    if dirs.is_empty() {
        return Err(Error::NOENT);
    }
    let single = dirs.len() == 1;
    let mut snap = DirSnapshot::with_capacity(64);
    snap.push(b".", libc::DT_DIR, self_ino);
    snap.push(b"..", libc::DT_DIR, parent_ino);
    // Names already shown or hidden by a layer above. Not needed when one
    // layer directory is all there is: it cannot repeat a name.
    let mut seen: HashSet<Vec<u8>> = HashSet::new();
    let mut hidden_here: Vec<Vec<u8>> = Vec::new();
    for (i, (layer, dirfd)) in dirs.iter().enumerate() {
        let more_below = i + 1 < dirs.len();
        let dirfd = dirfd.as_fd();
        // Every directory reached in a layer is on the layer root's device:
        // lookups never cross into another mount (RESOLVE_NO_XDEV).
        let dev = layers.get(*layer).dev;
        let entries = sys::read_dir(dirfd)?;
        for e in entries.iter() {
            if e.name == b"." || e.name == b".." {
                continue;
            }
            if let Some(target) = oci_whiteout_target(e.name) {
                if let Some(t) = target
                    && more_below
                {
                    hidden_here.push(t.to_vec());
                }
                continue;
            }
            if !single && seen.contains(e.name) {
                continue;
            }
            let Some(d_type) = real_type(dirfd, e.name, e.d_type) else {
                // A char-device whiteout: hides the name below.
                if more_below {
                    hidden_here.push(e.name.to_vec());
                }
                continue;
            };
            if !single {
                seen.insert(e.name.to_vec());
            }
            // A copied-up object keeps the number of its origin; d_ino must
            // agree with st_ino.
            let recorded = match (upper, *layer) {
                (Some(u), 0) => Name::from_bytes(e.name)
                    .ok()
                    .and_then(|n| u.recorded_ino(dirfd, n.as_cstr())),
                _ => None,
            };
            snap.push(
                e.name,
                d_type,
                recorded.unwrap_or_else(|| layers.st_ino(dev, e.ino)),
            );
        }
        // A layer's whiteouts hide names in the layers below it only.
        seen.extend(hidden_here.drain(..));
    }
    Ok(snap)
}

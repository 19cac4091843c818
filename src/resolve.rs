//! Which layer wins for `(parent, name)`, and the merged listing of a
//! directory: overlayfs's rules, in one place.

use std::collections::HashSet;
use std::os::fd::{AsFd, BorrowedFd};

use crate::error::{Error, Result};
use crate::handle::DirSnapshot;
use crate::inode::Backing;
use crate::layer::Layers;
use crate::layer::whiteout::{self, is_opaque_dir, oci_whiteout_target};
use crate::name::Name;
use crate::sys;

/// The outcome of a lookup that found something.
#[derive(Debug)]
pub struct Found {
    /// `stat` of the winning (top-most) object.
    pub stat: libc::stat,
    /// The winning object, and for a directory every lower directory merged
    /// under it, top-most first.
    pub layers: Vec<Backing>,
}

/// Looks `name` up in the layer directories `dirs` of a merged directory.
///
/// Walks top-down: a whiteout (char 0:0 or `.wh.NAME`) ends the walk; a
/// non-directory wins alone and hides everything below; directories merge
/// until an opaque one or a non-directory below them. Returns `None` when
/// nothing is visible.
pub fn lookup(dirs: &[Backing], name: &Name) -> Result<Option<Found>> {
    let mut found: Option<Found> = None;
    for (i, dir) in dirs.iter().enumerate() {
        let more_below = i + 1 < dirs.len();
        let dirfd = dir.fd.as_fd();
        match sys::open_child(dirfd, name.as_cstr()) {
            Ok(fd) => {
                let st = sys::fstat(fd.as_fd())?;
                if whiteout::is_whiteout(&st) {
                    break;
                }
                let is_dir = st.st_mode & libc::S_IFMT == libc::S_IFDIR;
                match &mut found {
                    None => {
                        found = Some(Found {
                            stat: st,
                            layers: vec![Backing {
                                layer: dir.layer,
                                fd,
                            }],
                        });
                        if !is_dir {
                            break;
                        }
                    }
                    Some(f) => {
                        // Below a directory only directories merge; anything
                        // else ends the merge, as in overlayfs.
                        if !is_dir {
                            break;
                        }
                        f.layers.push(Backing {
                            layer: dir.layer,
                            fd,
                        });
                    }
                }
                if !more_below {
                    break;
                }
                if let Some(f) = &found
                    && let Some(last) = f.layers.last()
                    && is_opaque_dir(last.fd.as_fd())
                {
                    break;
                }
                if whiteout::has_oci_whiteout(dirfd, name) {
                    break;
                }
            }
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                if more_below && whiteout::has_oci_whiteout(dirfd, name) {
                    break;
                }
            }
            Err(e) if e.raw_os_error() == Some(libc::ENOTDIR) => {
                // A layer "directory" that is not one cannot hold the name.
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(found)
}

/// The layer directories merged at the root: every layer, top-most first.
/// Like overlayfs, opaque markers on the layer roots themselves are ignored.
pub fn root_dirs(layers: &Layers) -> Result<Vec<Backing>> {
    layers
        .iter()
        .map(|(idx, l)| {
            let fd = l.root.try_clone()?;
            Ok(Backing { layer: idx, fd })
        })
        .collect()
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
    proc_self_fd: BorrowedFd<'_>,
    dirs: &[Backing],
    self_ino: u64,
    parent_ino: u64,
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
    for (i, dir) in dirs.iter().enumerate() {
        let more_below = i + 1 < dirs.len();
        let dirfd = dir.fd.as_fd();
        let dev = sys::fstat(dirfd)?.st_dev;
        let entries = sys::read_dir(proc_self_fd, dirfd)?;
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
            snap.push(e.name, d_type, layers.st_ino(dev, e.ino));
        }
        // A layer's whiteouts hide names in the layers below it only.
        seen.extend(hidden_here.drain(..));
    }
    Ok(snap)
}

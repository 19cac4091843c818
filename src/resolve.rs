//! Which layer wins for `(parent, name)`, and the merged listing of a
//! directory: overlayfs's rules, in one place.

use std::collections::HashSet;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::layer::upper::Upper;
use crate::layer::whiteout::{self, DirMarks, dir_marks, oci_whiteout_target};
use crate::layer::{LayerIdx, Layers};
use crate::listing::DirSnapshot;
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
    /// A directory whose lower parts were found through a redirect (a
    /// directory renamed by kernel overlayfs with `redirect_dir=on`): they
    /// cannot be found again from the parent by name.
    pub redirected: bool,
    /// For a metadata-only copy (kernel overlayfs's metacopy): the layer
    /// holding its data, and the path there when the copy was renamed.
    pub data: Option<(LayerIdx, Option<Arc<[u8]>>)>,
    /// A metadata-only copy was found; its data is still to be found below.
    meta_pending: Option<Option<Arc<[u8]>>>,
}

impl Found {
    fn new(stat: libc::stat) -> Found {
        Found {
            stat,
            layers: Vec::new(),
            dir_fds: Vec::new(),
            redirected: false,
            data: None,
            meta_pending: None,
        }
    }
}

/// Where a redirect points, for the layers below the one that holds it.
enum Target {
    /// Another name in the same parent directory.
    Sibling(Box<Name>),
    /// A path from the layer roots.
    Path(Vec<Name>),
}

impl Target {
    fn parse(raw: &[u8]) -> Option<Target> {
        match raw.strip_prefix(b"/") {
            Some(rest) => {
                let comps = rest
                    .split(|b| *b == b'/')
                    .filter(|c| !c.is_empty())
                    .map(|c| Name::from_bytes(c).ok())
                    .collect::<Option<Vec<Name>>>()?;
                (!comps.is_empty()).then_some(Target::Path(comps))
            }
            None => Name::from_bytes(raw)
                .ok()
                .map(|n| Target::Sibling(Box::new(n))),
        }
    }
}

/// What one layer said during a lookup.
enum Step {
    /// Nothing here; look further down.
    Continue,
    /// Nothing below shows through.
    Stop,
    /// Look further down elsewhere.
    Redirect(Target),
}

/// Looks `name` up in the layer directories `dirs` of a merged directory.
///
/// Walks top-down: a whiteout (char 0:0 or `.wh.NAME`) ends the walk; a
/// non-directory wins alone and hides everything below; directories merge
/// until an opaque one or a non-directory below them; a directory's
/// redirect moves the walk to another name or path. Returns `None` when
/// nothing is visible.
pub fn lookup(
    layers: &Layers,
    dirs: &[(LayerIdx, Arc<OwnedFd>)],
    name: &Name,
) -> Result<Option<Found>> {
    lookup_with(layers, dirs, name, ALL_LAYERS)
}

/// Every layer may hold `.wh.` files: the mask when nothing is known.
pub const ALL_LAYERS: u64 = u64::MAX;

/// Whether `mask` says layer `layer` may hold OCI whiteouts here.
fn may_have_oci(mask: u64, layer: LayerIdx) -> bool {
    layer >= 64 || mask >> layer & 1 == 1
}

/// [`lookup`], told by `oci` (a bit per layer, from the directory's last
/// listing) which layer directories hold `.wh.` files at all, so that a
/// name missing from a layer costs one stat, not two.
pub fn lookup_with(
    layers: &Layers,
    dirs: &[(LayerIdx, Arc<OwnedFd>)],
    name: &Name,
    oci: u64,
) -> Result<Option<Found>> {
    let mut found: Option<Found> = None;
    let mut sibling: Option<Name> = None;
    for (i, (layer, dirfd)) in dirs.iter().enumerate() {
        let more_below = i + 1 < dirs.len();
        let look = sibling.as_ref().unwrap_or(name);
        // An absolute redirect reaches layers the parent does not merge.
        let deeper = more_below || usize::from(*layer) + 1 < layers.len();
        let check = may_have_oci(oci, *layer);
        let upper = *layer == 0 && layers.has_upper();
        match step(
            dirfd.as_fd(),
            look,
            (*layer, upper),
            more_below,
            deeper,
            check,
            &mut found,
        )? {
            Step::Continue => {}
            Step::Stop => break,
            Step::Redirect(Target::Sibling(n)) => sibling = Some(*n),
            Step::Redirect(Target::Path(p)) => {
                lookup_path(layers, *layer, p, &mut found)?;
                break;
            }
        }
    }
    Ok(found)
}

/// `name` in one layer directory `dir`, adding what it finds to `found`.
/// `deeper`: whether any layer lies below this one at all (a redirect may
/// lead there even when the parent merges no further).
fn step(
    dir: BorrowedFd<'_>,
    name: &Name,
    (layer, upper): (LayerIdx, bool),
    more_below: bool,
    deeper: bool,
    check_oci: bool,
    found: &mut Option<Found>,
) -> Result<Step> {
    let st = match sys::fstatat(dir, name.as_cstr()) {
        Ok(st) => st,
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
            if more_below && check_oci && whiteout::has_oci_whiteout(dir, name) {
                return Ok(Step::Stop);
            }
            return Ok(Step::Continue);
        }
        Err(e) => return Err(e.into()),
    };
    if whiteout::is_whiteout(&st) {
        return Ok(Step::Stop);
    }
    if let Some(f) = found.as_mut()
        && let Some(redirect) = f.meta_pending.take()
    {
        // Below a metadata-only copy: the first object is its data, if it
        // is a regular file (anything else leaves the copy without data).
        if st.st_mode & libc::S_IFMT == libc::S_IFREG {
            f.data = Some((layer, redirect));
        }
        return Ok(Step::Stop);
    }
    if st.st_mode & libc::S_IFMT != libc::S_IFDIR {
        // A non-directory wins alone; below a directory it ends the merge
        // and stays hidden, as in overlayfs.
        if found.is_none() {
            let meta = if deeper && whiteout::may_be_metacopy(&st, upper) {
                whiteout::metacopy_marks(dir, name)
            } else {
                None
            };
            let mut f = Found::new(st);
            f.layers.push(layer);
            let step = match meta {
                None => Step::Stop,
                // Renamed: the data is at another name in the same parent,
                // or at a path from the layer roots.
                Some(Some(raw)) => match Target::parse(&raw) {
                    Some(t @ Target::Path(_)) => {
                        f.meta_pending = Some(Some(raw.into()));
                        Step::Redirect(t)
                    }
                    Some(t @ Target::Sibling(_)) if more_below => {
                        f.meta_pending = Some(Some(raw.into()));
                        Step::Redirect(t)
                    }
                    _ => Step::Stop,
                },
                Some(None) if more_below => {
                    f.meta_pending = Some(None);
                    Step::Continue
                }
                Some(None) => Step::Stop,
            };
            *found = Some(f);
            return Ok(step);
        }
        return Ok(Step::Stop);
    }
    let fd = sys::open_child_dir(dir, name.as_cstr())?;
    let mut marks = if deeper {
        dir_marks(dir, name, fd.as_fd())
    } else {
        DirMarks::default()
    };
    if !more_below {
        // Nothing below in this parent to hide, nor a sibling to go to.
        marks.opaque = false;
        if marks
            .redirect
            .as_deref()
            .is_some_and(|r| !r.starts_with(b"/"))
        {
            marks.redirect = None;
        }
    }
    let f = found.get_or_insert_with(|| Found::new(st));
    f.layers.push(layer);
    f.dir_fds.push(fd);
    if marks.opaque || (more_below && check_oci && whiteout::has_oci_whiteout(dir, name)) {
        return Ok(Step::Stop);
    }
    if let Some(t) = marks.redirect.as_deref().and_then(Target::parse) {
        f.redirected = true;
        return Ok(Step::Redirect(t));
    }
    Ok(Step::Continue)
}

/// Continues a lookup below layer `above` at `path` from each layer's root,
/// as overlayfs follows an absolute redirect.
fn lookup_path(
    layers: &Layers,
    above: LayerIdx,
    mut path: Vec<Name>,
    found: &mut Option<Found>,
) -> Result<()> {
    let below: Vec<(LayerIdx, BorrowedFd<'_>)> = layers
        .iter()
        .filter(|(l, _)| *l > above)
        .map(|(l, layer)| (l, layer.root.as_fd()))
        .collect();
    'layers: for (k, (layer, root)) in below.iter().enumerate() {
        let more_below = k + 1 < below.len();
        let Some((last, parents)) = path.split_last() else {
            return Ok(());
        };
        // An opaque directory on the way hides the layers below this one.
        let mut stop_after = false;
        let mut cur: Option<OwnedFd> = None;
        for c in parents {
            let base = cur.as_ref().map_or(*root, |f| f.as_fd());
            match sys::fstatat(base, c.as_cstr()) {
                Ok(st) if st.st_mode & libc::S_IFMT == libc::S_IFDIR => {}
                // A whiteout or a non-directory on the way hides the path
                // here and below.
                Ok(_) => return Ok(()),
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                    if whiteout::has_oci_whiteout(base, c) {
                        return Ok(());
                    }
                    continue 'layers;
                }
                Err(e) => return Err(e.into()),
            }
            let fd = sys::open_child_dir(base, c.as_cstr())?;
            if more_below && dir_marks(base, c, fd.as_fd()).opaque {
                stop_after = true;
            }
            cur = Some(fd);
        }
        let base = cur.as_ref().map_or(*root, |f| f.as_fd());
        let more = more_below && !stop_after;
        match step(base, last, (*layer, false), more, more, true, found)? {
            Step::Continue => {}
            Step::Stop => return Ok(()),
            Step::Redirect(Target::Sibling(n)) => {
                if let Some(l) = path.last_mut() {
                    *l = *n;
                }
            }
            Step::Redirect(Target::Path(p)) => path = p,
        }
        if stop_after {
            return Ok(());
        }
    }
    Ok(())
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
    let mut oci = 0u64;
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
                if *layer < 64 {
                    oci |= 1 << *layer;
                }
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
    snap.set_oci_layers(oci);
    Ok(snap)
}

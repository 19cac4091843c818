//! The layer stack: root descriptors in lookup order, and the mapping from a
//! layer object's `(st_dev, st_ino)` to the inode number the mount reports.

pub mod upper;
pub mod whiteout;

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::sys;

/// One layer directory, opened once at mount time.
#[derive(Debug)]
pub struct Layer {
    pub root: Arc<OwnedFd>,
    pub dev: u64,
}

/// Index of a layer in [`Layers`]: 0 is the top-most (the upper, when there
/// is one).
pub type LayerIdx = u16;

/// Where an object of the merged tree lives. Metadata-only copy-up adds one
/// variant here (metadata in the upper, data in a lower layer); every
/// question below then answers for it in one place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Place {
    /// A non-directory in the upper layer, at its name.
    Upper,
    /// A non-directory that only lower layers hold: the winning layer.
    Lower(LayerIdx),
    /// A copied-up lower hard link: the upper's index entry named by the
    /// object's inode number, whichever of its names is used.
    Index,
    /// A directory: every layer whose directory is merged into it,
    /// top-most first, stopping at an opaque one. `upper` when the first
    /// is the upper layer.
    Dir { upper: bool, layers: Vec<LayerIdx> },
    /// A metadata-only copy (kernel overlayfs's metacopy): attributes and
    /// xattrs from the file in layer `meta`, data from the regular file in
    /// layer `data`, at the same name, or where `redirect` (the copy's
    /// redirect xattr: a name in the same parent, or a path from the layer
    /// roots) says when the copy was renamed.
    MetaCopy {
        meta: LayerIdx,
        data: LayerIdx,
        redirect: Option<Arc<[u8]>>,
    },
}

/// What [`Place::winner`] names: the object whose attributes the mount shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Winner {
    /// The object at the inode's name in this layer.
    Layer(LayerIdx),
    /// The upper's index entry of the inode.
    Index,
}

impl Place {
    /// The place of an object found in `layers` (top-most first, never
    /// empty) of a mount that `has_upper`.
    pub fn found(layers: &[LayerIdx], is_dir: bool, has_upper: bool) -> Place {
        let upper = has_upper && layers.first() == Some(&0);
        if is_dir {
            Place::Dir {
                upper,
                layers: layers.to_vec(),
            }
        } else if upper {
            Place::Upper
        } else {
            Place::Lower(layers.first().copied().unwrap_or(0))
        }
    }

    /// The upper layer holds the object (and its data): changes need no
    /// copy-up.
    pub fn in_upper(&self) -> bool {
        match self {
            Place::Upper | Place::Index => true,
            Place::Lower(_) | Place::MetaCopy { .. } => false,
            Place::Dir { upper, .. } => *upper,
        }
    }

    /// Only the upper layer holds the object: nothing below shows through.
    pub fn upper_only(&self) -> bool {
        match self {
            Place::Upper | Place::Index => true,
            Place::Lower(_) | Place::MetaCopy { .. } => false,
            Place::Dir { upper, layers } => *upper && layers.len() == 1,
        }
    }

    /// A directory merged from more than one layer.
    pub fn is_merged(&self) -> bool {
        matches!(self, Place::Dir { layers, .. } if layers.len() > 1)
    }

    /// The layers whose directories make up a directory (empty for
    /// anything else).
    pub fn dir_layers(&self) -> &[LayerIdx] {
        match self {
            Place::Dir { layers, .. } => layers,
            _ => &[],
        }
    }

    /// The object that stands for the whole.
    pub fn winner(&self) -> Winner {
        match self {
            Place::Upper => Winner::Layer(0),
            Place::Lower(l) | Place::MetaCopy { meta: l, .. } => Winner::Layer(*l),
            Place::Index => Winner::Index,
            Place::Dir { layers, .. } => Winner::Layer(layers.first().copied().unwrap_or(0)),
        }
    }

    /// The place once the upper holds a copy of the object: a directory
    /// keeps its lower parts merged below the new upper one.
    pub fn copied_up(&self, indexed: bool) -> Place {
        match self {
            Place::Dir {
                upper: false,
                layers,
            } => {
                let mut all = Vec::with_capacity(layers.len() + 1);
                all.push(0);
                all.extend_from_slice(layers);
                Place::Dir {
                    upper: true,
                    layers: all,
                }
            }
            Place::Dir { .. } => self.clone(),
            _ if indexed => Place::Index,
            _ => Place::Upper,
        }
    }
}

/// All layers of a mount, top-most first.
#[derive(Debug)]
pub struct Layers {
    layers: Vec<Layer>,
    has_upper: bool,
    /// Distinct devices in layer order, for [`Layers::st_ino`].
    devs: Vec<u64>,
}

/// Bits left for the real inode number when layers span several devices:
/// the top bits then name the device, as overlayfs's `xino` does.
const XINO_SHIFT: u32 = 56;

impl Layers {
    /// Opens the layer roots. `lowers` are top-most first.
    pub fn open(upper: Option<&Path>, lowers: &[PathBuf]) -> std::io::Result<Layers> {
        let mut layers = Vec::with_capacity(lowers.len() + 1);
        let mut open = |path: &Path| -> std::io::Result<()> {
            let root = Arc::new(sys::open_dir_path(path)?);
            let st = sys::fstat(root.as_fd())?;
            layers.push(Layer {
                root,
                dev: st.st_dev,
            });
            Ok(())
        };
        if let Some(u) = upper {
            open(u)?;
        }
        for l in lowers {
            open(l)?;
        }
        let mut devs = Vec::new();
        for l in &layers {
            if !devs.contains(&l.dev) {
                devs.push(l.dev);
            }
        }
        Ok(Layers {
            layers,
            has_upper: upper.is_some(),
            devs,
        })
    }

    pub fn len(&self) -> usize {
        self.layers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.layers.is_empty()
    }

    pub fn has_upper(&self) -> bool {
        self.has_upper
    }

    pub fn get(&self, idx: LayerIdx) -> &Layer {
        &self.layers[idx as usize]
    }

    pub fn iter(&self) -> impl Iterator<Item = (LayerIdx, &Layer)> {
        self.layers
            .iter()
            .enumerate()
            .map(|(i, l)| (i as LayerIdx, l))
    }

    /// The filesystem that `statfs` reports: the upper's, else the top lower's.
    pub fn statfs_root(&self) -> BorrowedFd<'_> {
        self.layers[0].root.as_fd()
    }

    /// The inode number the mount reports for a layer object.
    ///
    /// Stable for given layers (it depends only on the object and the order of
    /// the layers' devices), unique in the mount (objects on one device have
    /// distinct numbers, and devices get distinct top bits), and never 0 or 1,
    /// which FUSE reserves. With all layers on one filesystem the real number
    /// is shown unchanged, as overlayfs does.
    pub fn st_ino(&self, dev: u64, ino: u64) -> u64 {
        let v = if self.devs.len() <= 1 {
            ino
        } else {
            let idx = self
                .devs
                .iter()
                .position(|d| *d == dev)
                // An object on a device below no layer root: a mount inside a
                // layer. Give it a slot past the known ones.
                .unwrap_or(self.devs.len()) as u64;
            if ino >> XINO_SHIFT != 0 {
                // Too large to prefix: fold the high bits in. Collisions are
                // possible only on filesystems with 2^56+ inode numbers.
                (ino ^ (ino >> XINO_SHIFT)) & ((1 << XINO_SHIFT) - 1) | (idx << XINO_SHIFT)
            } else {
                ino | (idx << XINO_SHIFT)
            }
        };
        if v <= 1 { v | (1 << 63) } else { v }
    }
}

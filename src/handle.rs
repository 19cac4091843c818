//! Open files and directory snapshots, by FUSE file handle.

use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use dashmap::DashMap;
use parking_lot::Mutex;

use crate::error::{Error, Result};
use crate::inode::Inode;

/// One entry of a merged directory listing.
#[derive(Debug, Clone, Copy)]
pub struct SnapEntry {
    name_off: usize,
    name_len: u16,
    /// `DT_*` type.
    pub d_type: u8,
    /// The inode number stat reports for the entry.
    pub ino: u64,
}

/// A merged, de-duplicated directory listing frozen at one moment, so that
/// offsets stay valid across getdents calls, telldir and seekdir. Names live
/// in one buffer: a 100k-entry directory costs two allocations, not 100k.
#[derive(Debug, Default)]
pub struct DirSnapshot {
    names: Vec<u8>,
    entries: Vec<SnapEntry>,
    /// A bit per layer (index < 64) whose directory holds `.wh.` files.
    oci_layers: u64,
}

impl DirSnapshot {
    pub fn with_capacity(n: usize) -> Self {
        DirSnapshot {
            names: Vec::with_capacity(n * 16),
            entries: Vec::with_capacity(n),
            oci_layers: 0,
        }
    }

    pub fn push(&mut self, name: &[u8], d_type: u8, ino: u64) {
        let name_off = self.names.len();
        self.names.extend_from_slice(name);
        self.entries.push(SnapEntry {
            name_off,
            name_len: name.len() as u16,
            d_type,
            ino,
        });
    }

    pub fn set_oci_layers(&mut self, mask: u64) {
        self.oci_layers = mask;
    }

    /// Layers whose directory held `.wh.` files when the listing was taken.
    pub fn oci_layers(&self) -> u64 {
        self.oci_layers
    }

    pub fn name(&self, e: &SnapEntry) -> &[u8] {
        &self.names[e.name_off..e.name_off + e.name_len as usize]
    }

    pub fn entries(&self) -> &[SnapEntry] {
        &self.entries
    }

    /// Number of subdirectories, `.` and `..` excluded.
    pub fn subdirs(&self) -> usize {
        self.entries
            .iter()
            .filter(|e| e.d_type == libc::DT_DIR && !matches!(self.name(e), b"." | b".."))
            .count()
    }
}

/// What a file handle refers to.
#[derive(Debug)]
pub enum Handle {
    /// An open regular file: a real descriptor of the backing object.
    File {
        fd: OwnedFd,
        inode: Arc<Inode>,
        /// Opened read-only on a lower file: once the file is copied up,
        /// reads switch to this descriptor of the copy.
        copied: Option<OnceLock<OwnedFd>>,
    },
    /// An open directory; the listing is taken at the first readdir.
    Dir {
        inode: Arc<Inode>,
        snapshot: Mutex<Option<Arc<DirSnapshot>>>,
    },
}

/// fh -> open handle.
#[derive(Debug, Default)]
pub struct Handles {
    map: DashMap<u64, Arc<Handle>>,
    next: AtomicU64,
}

impl Handles {
    pub fn insert(&self, h: Handle) -> u64 {
        // Start at 1: some tools treat fh 0 as "no handle".
        let fh = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        self.map.insert(fh, Arc::new(h));
        fh
    }

    pub fn get(&self, fh: u64) -> Result<Arc<Handle>> {
        self.map
            .get(&fh)
            .map(|r| Arc::clone(r.value()))
            .ok_or(Error::BADF)
    }

    /// Some open file of inode `nodeid`: how an object whose every name is
    /// gone is still reached (fchmod comes without a handle).
    pub fn any_file_of(&self, nodeid: u64) -> Option<Arc<Handle>> {
        self.map
            .iter()
            .find(|h| matches!(&**h.value(), Handle::File { inode, .. } if inode.nodeid == nodeid))
            .map(|h| Arc::clone(h.value()))
    }

    pub fn remove(&self, fh: u64) -> Option<Arc<Handle>> {
        self.map.remove(&fh).map(|(_, h)| h)
    }
}

//! Merged directory listings frozen at one moment ([`DirSnapshot`]): what
//! readdir pages through, what an inode caches, what the tooling walks.
//! Below the inode table and the handles, which both hold them.

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

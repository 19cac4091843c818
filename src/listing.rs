//! Merged directory listings: names and types of a directory frozen at one
//! moment, in one buffer, and the offsets readdir hands out for them.
//!
//! An entry's offset is a keyed hash of its name, and a listing is sent in
//! offset order, as ext4 does for hashed directories: reading on from an
//! offset needs no state kept per open directory, and stays right when
//! the directory changed in between (a listing taken afresh puts every
//! entry that is still there at the same offset). So the kernel need not
//! send OPENDIR and RELEASEDIR at all.

use std::hash::BuildHasher;

/// One entry of a merged directory listing.
#[derive(Debug, Clone, Copy)]
pub struct SnapEntry {
    name_off: usize,
    name_len: u16,
    /// `DT_*` type.
    pub d_type: u8,
    /// The inode number stat reports for the entry.
    pub ino: u64,
    /// Where reading goes on after this entry (see the module docs); 0
    /// until [`DirSnapshot::order`].
    pub off: u64,
}

/// Offsets of `.` and `..`; names hash above them.
const FIRST_NAME_OFF: u64 = 3;

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
            off: 0,
        });
    }

    /// Gives every entry its offset and puts the entries in offset order:
    /// `.` and `..` (pushed first) at 1 and 2, every other name at its
    /// hash under `key`, which the mount keeps for its life. Names whose
    /// hashes collide take the next free offsets.
    pub fn order(&mut self, key: &impl BuildHasher) {
        let dots = self
            .entries
            .iter()
            .take(2)
            .take_while(|e| matches!(self.name(e), b"." | b".."))
            .count();
        for (i, e) in self.entries.iter_mut().take(dots).enumerate() {
            e.off = i as u64 + 1;
        }
        let names = &self.names;
        for e in &mut self.entries[dots..] {
            let name = &names[e.name_off..e.name_off + e.name_len as usize];
            // Offsets are signed in the kernel: 63 bits.
            e.off = (key.hash_one(name) >> 1).max(FIRST_NAME_OFF);
        }
        self.entries[dots..].sort_unstable_by_key(|e| e.off);
        let mut last = 0;
        for e in &mut self.entries[dots..] {
            if e.off <= last {
                e.off = last + 1;
            }
            last = e.off;
        }
    }

    /// The entries after `offset` (0: all of them), of a listing in
    /// offset order.
    pub fn after(&self, offset: u64) -> &[SnapEntry] {
        let start = self.entries.partition_point(|e| e.off <= offset);
        &self.entries[start..]
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
}

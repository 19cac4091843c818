//! Open files and directories, by FUSE file handle.

use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use dashmap::DashMap;

use crate::error::{Error, Result};
use crate::inode::Inode;

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
            .find(
                |h| matches!(&**h.value(), Handle::File { inode, .. } if inode.answers_to(nodeid)),
            )
            .map(|h| Arc::clone(h.value()))
    }

    pub fn remove(&self, fh: u64) -> Option<Arc<Handle>> {
        self.map.remove(&fh).map(|(_, h)| h)
    }
}

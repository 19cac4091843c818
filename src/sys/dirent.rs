//! `getdents64` and the records it returns.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

use super::SysResult;

/// Bytes asked of each `getdents64` call: large enough that a 100k-entry
/// directory takes a few dozen calls, small enough to live on the heap once.
const GETDENTS_BUF: usize = 64 * 1024;

/// Every entry of one directory, as raw `linux_dirent64` records.
#[derive(Debug, Default)]
pub struct DirEntries {
    buf: Vec<u8>,
}

/// One directory entry, borrowed from [`DirEntries`].
#[derive(Debug, Clone, Copy)]
pub struct RawDirent<'a> {
    pub ino: u64,
    pub d_type: u8,
    pub name: &'a [u8],
}

impl DirEntries {
    /// Reads the directory to its end.
    pub fn read_all(fd: BorrowedFd<'_>) -> SysResult<Self> {
        let mut buf: Vec<u8> = Vec::with_capacity(GETDENTS_BUF);
        loop {
            if buf.capacity() - buf.len() < GETDENTS_BUF {
                buf.reserve(GETDENTS_BUF);
            }
            let spare = buf.capacity() - buf.len();
            // SAFETY: the pointer is to `spare` writable bytes at the end of buf.
            let rc = unsafe {
                libc::syscall(
                    libc::SYS_getdents64,
                    fd.as_raw_fd(),
                    buf.as_mut_ptr().add(buf.len()),
                    spare,
                )
            };
            if rc < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            if rc == 0 {
                return Ok(DirEntries { buf });
            }
            // SAFETY: the kernel initialised rc more bytes.
            unsafe { buf.set_len(buf.len() + rc as usize) };
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = RawDirent<'_>> {
        let buf = &self.buf;
        let mut pos = 0usize;
        std::iter::from_fn(move || {
            // linux_dirent64: u64 ino, i64 off, u16 reclen, u8 type, name...
            const HDR: usize = 19;
            if pos + HDR > buf.len() {
                return None;
            }
            let rec = &buf[pos..];
            let ino = u64::from_ne_bytes(rec[0..8].try_into().ok()?);
            let reclen = u16::from_ne_bytes(rec[16..18].try_into().ok()?) as usize;
            let d_type = rec[18];
            if reclen < HDR || pos + reclen > buf.len() {
                return None;
            }
            let name_area = &rec[HDR..reclen];
            let len = name_area.iter().position(|b| *b == 0)?;
            pos += reclen;
            Some(RawDirent {
                ino,
                d_type,
                name: &name_area[..len],
            })
        })
    }
}

//! `getdents64` (through rustix's [`RawDir`]) and the entries it returns.

use std::cell::RefCell;
use std::mem::MaybeUninit;
use std::os::fd::BorrowedFd;

use rustix::fs::{FileType, RawDir};
use rustix::io::Errno;

use super::SysResult;

/// Bytes asked of each `getdents64` call: large enough that a 100k-entry
/// directory takes a few dozen calls, small enough to live on the heap once.
const GETDENTS_BUF: usize = 64 * 1024;

thread_local! {
    /// The buffer `getdents64` fills, one per thread and kept: reading a
    /// directory allocates only the entries it keeps.
    static SCRATCH: RefCell<Vec<MaybeUninit<u8>>> = const { RefCell::new(Vec::new()) };
}

/// Every entry of one directory, packed one after another as
/// `ino: u64 | d_type: u8 | name_len: u16 | name` (native endian, no
/// padding): the `linux_dirent64` records less their offsets and padding.
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

/// Bytes before the name in a packed entry.
const HDR: usize = 8 + 1 + 2;

/// The `DT_*` value of a file type, as `linux_dirent64` carries it.
fn d_type(t: FileType) -> u8 {
    match t {
        FileType::RegularFile => libc::DT_REG,
        FileType::Directory => libc::DT_DIR,
        FileType::Symlink => libc::DT_LNK,
        FileType::Fifo => libc::DT_FIFO,
        FileType::Socket => libc::DT_SOCK,
        FileType::CharacterDevice => libc::DT_CHR,
        FileType::BlockDevice => libc::DT_BLK,
        FileType::Unknown => libc::DT_UNKNOWN,
    }
}

impl DirEntries {
    /// Reads the directory to its end.
    pub fn read_all(fd: BorrowedFd<'_>) -> SysResult<Self> {
        SCRATCH.with(|scratch| match scratch.try_borrow_mut() {
            Ok(mut buf) => {
                if buf.len() < GETDENTS_BUF {
                    buf.resize(GETDENTS_BUF, MaybeUninit::uninit());
                }
                Self::read_with(fd, &mut buf)
            }
            // Not reached (nothing here calls back into it); a buffer of
            // its own keeps it correct if that ever changes.
            Err(_) => Self::read_with(fd, &mut vec![MaybeUninit::uninit(); GETDENTS_BUF]),
        })
    }

    fn read_with(fd: BorrowedFd<'_>, scratch: &mut [MaybeUninit<u8>]) -> SysResult<Self> {
        // Sized by what the directory holds: most hold a few entries, and a
        // buffer of GETDENTS_BUF for each would grow and shrink the heap
        // (mprotect and page faults) on every listing of a walk.
        let mut buf: Vec<u8> = Vec::new();
        let mut dir = RawDir::new(fd, scratch);
        loop {
            let e = match dir.next() {
                None => return Ok(DirEntries { buf }),
                Some(Ok(e)) => e,
                Some(Err(Errno::INTR)) => continue,
                Some(Err(e)) => return Err(e.into()),
            };
            let name = e.file_name().to_bytes();
            // NAME_MAX is 255; a longer name would be a kernel bug.
            let len = u16::try_from(name.len()).map_err(|_| Errno::NAMETOOLONG)?;
            buf.extend_from_slice(&e.ino().to_ne_bytes());
            buf.push(d_type(e.file_type()));
            buf.extend_from_slice(&len.to_ne_bytes());
            buf.extend_from_slice(name);
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = RawDirent<'_>> {
        let mut rest = &self.buf[..];
        std::iter::from_fn(move || {
            let (hdr, tail) = rest.split_at_checked(HDR)?;
            let ino = u64::from_ne_bytes(hdr[0..8].try_into().ok()?);
            let d_type = hdr[8];
            let len = u16::from_ne_bytes(hdr[9..11].try_into().ok()?) as usize;
            let (name, tail) = tail.split_at_checked(len)?;
            rest = tail;
            Some(RawDirent { ino, d_type, name })
        })
    }
}

//! The FUSE wire format (`include/uapi/linux/fuse.h`) as far as the
//! io_uring transport needs it: fuser encodes and decodes everything that
//! travels over `/dev/fuse`, but keeps its request and reply types to
//! itself, so the ring speaks the protocol here. Little-endian fields at
//! fixed offsets; every read is bounds-checked, because the buffers are
//! filled by the kernel and a short one must fail a request, not the daemon.

use std::time::Duration;

pub const IN_HEADER_LEN: usize = 40;
pub const OUT_HEADER_LEN: usize = 16;
pub const ATTR_LEN: usize = 88;
pub const ENTRY_OUT_LEN: usize = 40 + ATTR_LEN;
pub const ATTR_OUT_LEN: usize = 16 + ATTR_LEN;
pub const OPEN_OUT_LEN: usize = 16;
const DIRENT_HDR: usize = 24;

pub mod op {
    pub const LOOKUP: u32 = 1;
    pub const GETATTR: u32 = 3;
    pub const SETATTR: u32 = 4;
    pub const READLINK: u32 = 5;
    pub const SYMLINK: u32 = 6;
    pub const MKNOD: u32 = 8;
    pub const MKDIR: u32 = 9;
    pub const UNLINK: u32 = 10;
    pub const RMDIR: u32 = 11;
    pub const RENAME: u32 = 12;
    pub const LINK: u32 = 13;
    pub const OPEN: u32 = 14;
    pub const READ: u32 = 15;
    pub const WRITE: u32 = 16;
    pub const STATFS: u32 = 17;
    pub const RELEASE: u32 = 18;
    pub const FSYNC: u32 = 20;
    pub const SETXATTR: u32 = 21;
    pub const GETXATTR: u32 = 22;
    pub const LISTXATTR: u32 = 23;
    pub const REMOVEXATTR: u32 = 24;
    pub const FLUSH: u32 = 25;
    pub const OPENDIR: u32 = 27;
    pub const READDIR: u32 = 28;
    pub const RELEASEDIR: u32 = 29;
    pub const FSYNCDIR: u32 = 30;
    pub const ACCESS: u32 = 34;
    pub const CREATE: u32 = 35;
    pub const FALLOCATE: u32 = 43;
    pub const READDIRPLUS: u32 = 44;
    pub const RENAME2: u32 = 45;
    pub const LSEEK: u32 = 46;
}

pub const FUSE_GETATTR_FH: u32 = 1;
pub const FUSE_OPEN_KILL_SUIDGID: u32 = 1;
pub const FUSE_WRITE_KILL_SUIDGID: u32 = 1 << 2;
pub const FUSE_FSYNC_FDATASYNC: u32 = 1;
pub const FOPEN_PASSTHROUGH: u32 = 1 << 7;

pub const FATTR_MODE: u32 = 1;
pub const FATTR_UID: u32 = 1 << 1;
pub const FATTR_GID: u32 = 1 << 2;
pub const FATTR_SIZE: u32 = 1 << 3;
pub const FATTR_ATIME: u32 = 1 << 4;
pub const FATTR_MTIME: u32 = 1 << 5;
pub const FATTR_FH: u32 = 1 << 6;
pub const FATTR_ATIME_NOW: u32 = 1 << 7;
pub const FATTR_MTIME_NOW: u32 = 1 << 8;
pub const FATTR_KILL_SUIDGID: u32 = 1 << 11;

pub fn u32_at(b: &[u8], off: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(off..off + 4)?.try_into().ok()?))
}

pub fn u64_at(b: &[u8], off: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(off..off + 8)?.try_into().ok()?))
}

fn put_u32(b: &mut [u8], off: usize, v: u32) {
    b[off..off + 4].copy_from_slice(&v.to_le_bytes());
}

fn put_u64(b: &mut [u8], off: usize, v: u64) {
    b[off..off + 8].copy_from_slice(&v.to_le_bytes());
}

/// `struct fuse_in_header`, less its length and extension size.
#[derive(Debug, Clone, Copy)]
pub struct InHeader {
    pub opcode: u32,
    pub unique: u64,
    pub nodeid: u64,
    pub uid: u32,
    pub gid: u32,
}

impl InHeader {
    pub fn parse(b: &[u8]) -> Option<InHeader> {
        if b.len() < IN_HEADER_LEN {
            return None;
        }
        Some(InHeader {
            opcode: u32_at(b, 4)?,
            unique: u64_at(b, 8)?,
            nodeid: u64_at(b, 16)?,
            uid: u32_at(b, 24)?,
            gid: u32_at(b, 28)?,
        })
    }
}

/// `struct fuse_out_header`.
pub fn out_header(b: &mut [u8], len: usize, error: i32, unique: u64) {
    put_u32(b, 0, len as u32);
    put_u32(b, 4, error as u32);
    put_u64(b, 8, unique);
}

/// The first NUL-terminated string of `b` and what follows it.
pub fn cstr(b: &[u8]) -> Option<(&[u8], &[u8])> {
    let end = b.iter().position(|&c| c == 0)?;
    Some((&b[..end], &b[end + 1..]))
}

/// `struct fuse_attr` from a stat whose `st_ino` is already the mount's.
fn attr(b: &mut [u8], st: &libc::stat) {
    put_u64(b, 0, st.st_ino);
    put_u64(b, 8, st.st_size as u64);
    put_u64(b, 16, st.st_blocks as u64);
    put_u64(b, 24, st.st_atime as u64);
    put_u64(b, 32, st.st_mtime as u64);
    put_u64(b, 40, st.st_ctime as u64);
    put_u32(b, 48, st.st_atime_nsec as u32);
    put_u32(b, 52, st.st_mtime_nsec as u32);
    put_u32(b, 56, st.st_ctime_nsec as u32);
    put_u32(b, 60, st.st_mode);
    put_u32(b, 64, st.st_nlink as u32);
    put_u32(b, 68, st.st_uid);
    put_u32(b, 72, st.st_gid);
    put_u32(b, 76, st.st_rdev as u32);
    put_u32(b, 80, st.st_blksize as u32);
    put_u32(b, 84, 0);
}

/// `struct fuse_entry_out`: nodeid is the attributes' inode number, as
/// fuser sends it, so both transports name an object the same way.
pub fn entry_out(b: &mut [u8], st: &libc::stat, generation: u64, ttl: Duration) {
    // An alias's attributes carry it as the inode number: the kernel is to
    // ask for the real one at once.
    let attr_ttl = if crate::inode::is_alias(st.st_ino) {
        Duration::ZERO
    } else {
        ttl
    };
    put_u64(b, 0, st.st_ino);
    put_u64(b, 8, generation);
    put_u64(b, 16, ttl.as_secs());
    put_u64(b, 24, attr_ttl.as_secs());
    put_u32(b, 32, ttl.subsec_nanos());
    put_u32(b, 36, attr_ttl.subsec_nanos());
    attr(&mut b[40..ENTRY_OUT_LEN], st);
}

/// `struct fuse_attr_out`.
pub fn attr_out(b: &mut [u8], st: &libc::stat, ttl: Duration) {
    put_u64(b, 0, ttl.as_secs());
    put_u32(b, 8, ttl.subsec_nanos());
    put_u32(b, 12, 0);
    attr(&mut b[16..ATTR_OUT_LEN], st);
}

/// `struct fuse_open_out`.
pub fn open_out(b: &mut [u8], fh: u64, flags: u32, backing_id: u32) {
    put_u64(b, 0, fh);
    put_u32(b, 8, flags);
    put_u32(b, 12, backing_id);
}

/// `struct fuse_write_out`, `struct fuse_getxattr_out`: one u32 and padding.
pub fn u32_out(b: &mut [u8], v: u32) -> usize {
    put_u32(b, 0, v);
    put_u32(b, 4, 0);
    8
}

/// `struct fuse_lseek_out`.
pub fn u64_out(b: &mut [u8], v: u64) -> usize {
    put_u64(b, 0, v);
    8
}

/// `struct fuse_statfs_out`.
pub fn statfs_out(b: &mut [u8], s: &libc::statfs) -> usize {
    b[..80].fill(0);
    put_u64(b, 0, s.f_blocks);
    put_u64(b, 8, s.f_bfree);
    put_u64(b, 16, s.f_bavail);
    put_u64(b, 24, s.f_files);
    put_u64(b, 32, s.f_ffree);
    put_u32(b, 40, s.f_bsize as u32);
    put_u32(b, 44, s.f_namelen as u32);
    put_u32(b, 48, s.f_frsize as u32);
    80
}

/// A READDIR or READDIRPLUS reply under construction, never longer than
/// the size the kernel asked for.
pub struct DirBuf<'a> {
    pub buf: &'a mut [u8],
    pub len: usize,
}

impl DirBuf<'_> {
    /// Appends `struct fuse_dirent`, after `prefix` bytes left for the
    /// caller (a `fuse_entry_out` in READDIRPLUS). False when it does not
    /// fit.
    fn push(&mut self, prefix: usize, ino: u64, off: u64, d_type: u8, name: &[u8]) -> bool {
        let rec = (prefix + DIRENT_HDR + name.len()).next_multiple_of(8);
        if self.len + rec > self.buf.len() {
            return false;
        }
        let b = &mut self.buf[self.len..self.len + rec];
        let d = &mut b[prefix..];
        put_u64(d, 0, ino);
        put_u64(d, 8, off);
        put_u32(d, 16, name.len() as u32);
        put_u32(d, 20, d_type as u32);
        d[DIRENT_HDR..DIRENT_HDR + name.len()].copy_from_slice(name);
        d[DIRENT_HDR + name.len()..].fill(0);
        true
    }

    pub fn dirent(&mut self, ino: u64, off: u64, d_type: u8, name: &[u8]) -> bool {
        let ok = self.push(0, ino, off, d_type, name);
        if ok {
            self.len += (DIRENT_HDR + name.len()).next_multiple_of(8);
        }
        ok
    }

    pub fn direntplus(
        &mut self,
        off: u64,
        name: &[u8],
        st: &libc::stat,
        generation: u64,
        ttl: Duration,
    ) -> bool {
        let d_type = ((st.st_mode & libc::S_IFMT) >> 12) as u8;
        if !self.push(ENTRY_OUT_LEN, st.st_ino, off, d_type, name) {
            return false;
        }
        entry_out(&mut self.buf[self.len..], st, generation, ttl);
        self.len += (ENTRY_OUT_LEN + DIRENT_HDR + name.len()).next_multiple_of(8);
        true
    }
}

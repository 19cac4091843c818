//! Conversions between fuser's types and the union's: errnos, attributes,
//! times, directory repliers, and the one log line of a failed request.

use std::ffi::OsStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    Errno, FileAttr, FileType, Generation, INodeNo, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty,
    Request, TimeOrNow,
};
use log::{debug, warn};

use crate::error::Error;
use crate::union::{DirPlusReplier, DirReplier};
use crate::write::{Caller, SetTime};

pub(super) fn errno(e: Error) -> Errno {
    Errno::from_i32(e.errno)
}

/// One line per failed request: expected misses at debug, the rest at warn.
pub(super) fn log_failure(op: &str, ino: INodeNo, name: Option<&OsStr>, e: Error) {
    match e.errno {
        libc::ENOENT
        | libc::EEXIST
        | libc::ENOTEMPTY
        | libc::ENODATA
        | libc::EROFS
        | libc::ENAMETOOLONG
        | libc::ERANGE
        | libc::ENOTDIR
        | libc::EISDIR => {
            debug!("{op} ino={} name={name:?}: {e}", ino.0)
        }
        _ => warn!("{op} ino={} name={name:?}: {e}", ino.0),
    }
}

pub(super) fn system_time(sec: i64, nsec: i64) -> SystemTime {
    if sec >= 0 {
        UNIX_EPOCH + Duration::new(sec as u64, nsec as u32)
    } else {
        UNIX_EPOCH - Duration::new(sec.unsigned_abs(), 0) + Duration::new(0, nsec as u32)
    }
}

pub(super) fn file_type(mode: u32) -> FileType {
    match mode & libc::S_IFMT {
        libc::S_IFDIR => FileType::Directory,
        libc::S_IFLNK => FileType::Symlink,
        libc::S_IFCHR => FileType::CharDevice,
        libc::S_IFBLK => FileType::BlockDevice,
        libc::S_IFIFO => FileType::NamedPipe,
        libc::S_IFSOCK => FileType::Socket,
        _ => FileType::RegularFile,
    }
}

pub(super) fn dtype_file_type(d_type: u8) -> FileType {
    file_type((d_type as u32) << 12)
}

/// `struct stat` to fuser's attributes; `st_ino` is already the mount's.
pub(crate) fn file_attr(st: &libc::stat) -> FileAttr {
    FileAttr {
        ino: INodeNo(st.st_ino),
        size: st.st_size as u64,
        blocks: st.st_blocks as u64,
        atime: system_time(st.st_atime, st.st_atime_nsec),
        mtime: system_time(st.st_mtime, st.st_mtime_nsec),
        ctime: system_time(st.st_ctime, st.st_ctime_nsec),
        crtime: UNIX_EPOCH,
        kind: file_type(st.st_mode),
        perm: (st.st_mode & 0o7777) as u16,
        nlink: st.st_nlink as u32,
        uid: st.st_uid,
        gid: st.st_gid,
        rdev: st.st_rdev as u32,
        blksize: st.st_blksize as u32,
        flags: 0,
    }
}

pub(super) struct DirOut<'a> {
    pub(super) reply: &'a mut ReplyDirectory,
}

impl DirReplier for DirOut<'_> {
    fn add(&mut self, ino: u64, offset: u64, d_type: u8, name: &[u8]) -> bool {
        use std::os::unix::ffi::OsStrExt;
        self.reply.add(
            INodeNo(ino),
            offset,
            dtype_file_type(d_type),
            OsStr::from_bytes(name),
        )
    }
}

pub(super) struct DirPlusOut<'a> {
    pub(super) reply: &'a mut ReplyDirectoryPlus,
    pub(super) ttl: Duration,
}

impl DirPlusReplier for DirPlusOut<'_> {
    fn add(&mut self, offset: u64, name: &[u8], st: &libc::stat, generation: u64) -> bool {
        use std::os::unix::ffi::OsStrExt;
        let attr = file_attr(st);
        self.reply.add(
            attr.ino,
            offset,
            OsStr::from_bytes(name),
            &self.ttl,
            &attr,
            Generation(generation),
        )
    }
}

pub(super) fn caller(req: &Request) -> Caller {
    Caller {
        uid: req.uid(),
        gid: req.gid(),
    }
}

pub(super) fn set_time(t: TimeOrNow) -> SetTime {
    match t {
        TimeOrNow::Now => SetTime::Now,
        TimeOrNow::SpecificTime(t) => match t.duration_since(UNIX_EPOCH) {
            Ok(d) => SetTime::At(d.as_secs() as i64, d.subsec_nanos() as i64),
            Err(e) => {
                let d = e.duration();
                let (mut s, mut ns) = (-(d.as_secs() as i64), -(d.subsec_nanos() as i64));
                if ns < 0 {
                    s -= 1;
                    ns += 1_000_000_000;
                }
                SetTime::At(s, ns)
            }
        },
    }
}

pub(super) fn reply_empty(
    op: &str,
    ino: INodeNo,
    name: Option<&OsStr>,
    r: crate::error::Result<()>,
    reply: ReplyEmpty,
) {
    match r {
        Ok(()) => reply.ok(),
        Err(e) => {
            log_failure(op, ino, name, e);
            reply.error(errno(e));
        }
    }
}

/// The attributes sent with a negative entry; only the timeout matters.
pub(super) fn zero_stat() -> libc::stat {
    let mut st = crate::sys::zeroed_stat();
    st.st_mode = libc::S_IFREG;
    st
}

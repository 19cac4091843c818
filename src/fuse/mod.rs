//! Links fuser's calls to [`crate::union::Union`]: convert arguments, reply,
//! log failures. No union logic lives here; the conversions themselves are
//! in `convert`.

use std::cell::RefCell;
use std::ffi::OsStr;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime};

use dashmap::DashMap;
use fuser::{
    AccessFlags, BackingId, BsdFileFlags, Errno, FileHandle, Filesystem, FopenFlags, Generation,
    INodeNo, InitFlags, KernelConfig, LockOwner, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate,
    ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyLseek, ReplyOpen,
    ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};
use log::{debug, info, trace};

mod convert;
pub mod ring;
mod wire;

use convert::{
    DirOut, DirPlusOut, caller, errno, file_attr, log_failure, reply_empty, set_time, zero_stat,
};

use crate::error::Error;
use crate::handle::Handle;
use crate::stats::{Op, Stats};
use crate::union::Union;
use crate::write::{DataLife, SetAttr};

/// Largest read the kernel asks for with FUSE_MAX_PAGES (256 pages).
const MAX_READ: usize = 1 << 20;

thread_local! {
    /// Per-worker read buffer: reads allocate nothing on the request path.
    static READ_BUF: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// The fuser filesystem: a handle on the [`Core`] it shares with the
/// io_uring transport.
#[derive(Debug)]
pub struct UnionFs(Arc<Core>);

impl std::ops::Deref for UnionFs {
    type Target = Core;
    fn deref(&self) -> &Core {
        &self.0
    }
}

/// A [`Union`] plus the kernel-facing caches, whichever transport carries
/// the requests.
#[derive(Debug)]
pub struct Core {
    union: Arc<Union>,
    /// How long the kernel may cache entries and attributes. The layers do
    /// not change under a mount (as with overlayfs, changing them is
    /// unsupported), so this can be long.
    ttl: Duration,
    passthrough: AtomicBool,
    /// A lower file opened read-only is passed through too (see
    /// [`Core::io_mode`]).
    lower_passthrough: bool,
    /// The kernel opens directories without asking (FUSE_NO_OPENDIR_SUPPORT
    /// was agreed): the first OPENDIR is answered ENOSYS, and no OPENDIR or
    /// RELEASEDIR comes after it.
    no_opendir: AtomicBool,
    /// `--io-uring` was asked for; after INIT, whether the kernel agreed.
    uring: AtomicBool,
    /// Per inode with open files: the kernel wants every open of an inode
    /// in one I/O mode (all through one backing file, or all cached).
    /// Keyed by nodeid and generation: after a reset the kernel makes a new
    /// inode for the same nodeid, with none of the old one's backing file.
    io: DashMap<(u64, u64), IoState>,
    /// fh -> its inode and I/O mode.
    open_files: DashMap<u64, OpenFile>,
    stats: Arc<Stats>,
}

/// A passthrough backing file, registered by the transport that answered
/// the open: both never serve the same connection's opens.
#[derive(Debug)]
pub enum Backing {
    Fuser(BackingId),
    Ring(ring::RawBacking),
}

/// An open file: its inode (nodeid and generation) and I/O mode.
type OpenFile = ((u64, u64), Opened);

#[derive(Debug)]
enum Opened {
    /// The backing file stays registered while a handle holds it.
    Passthrough {
        _held: Arc<Backing>,
    },
    Cached,
}

/// The I/O mode of an inode's open files.
#[derive(Debug, Default)]
struct IoState {
    cached: u32,
    backing: Weak<Backing>,
    /// Device and inode number of the backing file's layer file: a handle
    /// on any other file (the copy made since) must not use it.
    backing_file: (u64, u64),
}

/// The smallest lower file passed through. Binding a backing file costs
/// the daemon and the kernel about 20 µs per open (`tar cf` of 5500 small
/// files warm: 0.37 s against 0.25 s through the page cache), which a small
/// file never earns back; from a few hundred KiB on, reading the page cache
/// of the layer itself beats FUSE's (a cached 512 MiB file: 22 ms against
/// 67 ms), cold reads need no requests, and the data is cached once.
const LOWER_PASSTHROUGH_MIN: libc::off_t = 256 * 1024;

/// How an open is answered.
enum IoMode {
    Passthrough(Arc<Backing>),
    Cached(FopenFlags),
    /// The kernel inode is bound to a lower file that has been copied up
    /// since: the open fails with ESTALE, which makes the kernel look the
    /// name up again and retry, and the lookup now hands out an alias,
    /// a kernel inode of the copy's own.
    Stale,
}

impl UnionFs {
    pub fn new(
        union: Arc<Union>,
        ttl: Duration,
        passthrough: bool,
        lower_passthrough: bool,
        uring: bool,
        stats: Arc<Stats>,
    ) -> UnionFs {
        UnionFs(Arc::new(Core {
            union,
            ttl,
            passthrough: AtomicBool::new(passthrough),
            lower_passthrough,
            no_opendir: AtomicBool::new(false),
            uring: AtomicBool::new(uring),
            io: DashMap::new(),
            open_files: DashMap::new(),
            stats,
        }))
    }

    /// The state the io_uring transport shares.
    pub fn core(&self) -> Arc<Core> {
        Arc::clone(&self.0)
    }
}

impl Core {
    pub fn stats(&self) -> Arc<Stats> {
        Arc::clone(&self.stats)
    }

    /// INIT is not to ask for FUSE over io_uring after all.
    pub fn decline_uring(&self) {
        self.uring.store(false, Ordering::Relaxed);
    }

    /// Whether INIT agreed to FUSE over io_uring.
    pub fn uring_agreed(&self) -> bool {
        self.uring.load(Ordering::Relaxed)
    }
}

impl Filesystem for UnionFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let caps = config.capabilities();
        let wanted = InitFlags::FUSE_CACHE_SYMLINKS
            | InitFlags::FUSE_PARALLEL_DIROPS
            | InitFlags::FUSE_ASYNC_READ
            | InitFlags::FUSE_MAX_PAGES
            // O_TRUNC arrives with the open, so a copy-up skips the data
            // that is about to be thrown away.
            | InitFlags::FUSE_ATOMIC_O_TRUNC
            // readdirplus when the kernel sees lookups follow a listing
            // (ls -l, find, tree walks), plain readdir otherwise.
            | InitFlags::FUSE_DO_READDIRPLUS
            | InitFlags::FUSE_READDIRPLUS_AUTO
            // Reading a directory needs no handle (offsets are name
            // hashes), so every opendir and closedir of a walk would be two
            // round trips for nothing.
            | InitFlags::FUSE_NO_OPENDIR_SUPPORT
            // The daemon clears set-id bits itself (`Union::kill_suidgid`),
            // and in return the kernel marks inodes S_NOSEC once it has
            // seen no `security.capability` on them, instead of asking for
            // it before every write.
            | InitFlags::FUSE_HANDLE_KILLPRIV_V2;
        // `--acl`: the kernel enforces ACLs, as kernel overlayfs does through
        // the real inodes. Not by default: it forgets an inode's cached ACLs
        // whenever it refreshes its attributes, and a tree walk then sends
        // a GETXATTR per entry.
        let wanted = if self.union.acl() {
            wanted | InitFlags::FUSE_POSIX_ACL
        } else {
            wanted
        };
        if let Err(missing) = config.add_capabilities(wanted & caps) {
            debug!("kernel lacks {missing:?}");
        }
        if self.uring.load(Ordering::Relaxed) {
            let ok = config
                .add_capabilities(InitFlags::FUSE_OVER_IO_URING)
                .is_ok();
            self.uring.store(ok, Ordering::Relaxed);
        }
        self.no_opendir.store(
            caps.contains(InitFlags::FUSE_NO_OPENDIR_SUPPORT),
            Ordering::Relaxed,
        );
        let _ = config.set_max_readahead(MAX_READ as u32);
        let _ = config.set_max_write(MAX_READ as u32);
        if self.passthrough.load(Ordering::Relaxed) {
            // Depth 1: backing files on ordinary filesystems, and the mount
            // itself may still serve as a layer of a kernel overlayfs.
            let ok = caps.contains(InitFlags::FUSE_PASSTHROUGH)
                && config.add_capabilities(InitFlags::FUSE_PASSTHROUGH).is_ok()
                && config.set_max_stack_depth(1).is_ok();
            self.passthrough.store(ok, Ordering::Relaxed);
        }
        info!(
            "ready: passthrough {}",
            if self.passthrough.load(Ordering::Relaxed) {
                "on"
            } else {
                "off"
            }
        );
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let _t = self.stats.time(const { Op::named("lookup") });
        match self.union.lookup(parent.0, name) {
            Ok(Some((st, generation))) => {
                trace!("lookup {} {name:?} -> {}", parent.0, st.st_ino);
                self.entry(reply, &st, Generation(generation));
            }
            Ok(None) => {
                // A negative entry: nodeid 0 with a timeout lets the kernel
                // cache the miss (PATH searches, build tools probing files).
                let mut attr = file_attr(&zero_stat());
                attr.ino = INodeNo(0);
                reply.entry(&self.ttl, &attr, Generation(self.union.generation()));
            }
            Err(e) => {
                log_failure("lookup", parent, Some(name), e);
                reply.error(errno(e));
            }
        }
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        let _t = self.stats.time(const { Op::named("forget") });
        self.union.forget(ino.0, nlookup);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        let _t = self.stats.time(const { Op::named("getattr") });
        match self.union.getattr(ino.0, fh.map(|f| f.0)) {
            Ok(st) => reply.attr(&self.ttl, &file_attr(&st)),
            Err(e) => {
                log_failure("getattr", ino, None, e);
                reply.error(errno(e));
            }
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        let _t = self.stats.time(const { Op::named("readlink") });
        match self.union.readlink(ino.0) {
            Ok(t) => reply.data(&t),
            Err(e) => {
                log_failure("readlink", ino, None, e);
                reply.error(errno(e));
            }
        }
    }

    fn open(&self, req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let _t = self.stats.time(const { Op::named("open") });
        let fh = match self.union.open(ino.0, flags.0) {
            Ok(fh) => fh,
            Err(e) => {
                log_failure("open", ino, None, e);
                return reply.error(errno(e));
            }
        };
        // FUSE_OPEN_KILL_SUIDGID, which fuser does not pass on: the
        // truncation of an open by a caller without CAP_FSETID.
        if flags.0 & libc::O_TRUNC != 0
            && req.uid() != 0
            && let Err(e) = self.union.kill_suidgid(ino.0, Some(fh))
        {
            log_failure("open", ino, None, e);
            self.union.release(fh);
            return reply.error(errno(e));
        }
        let register = |fd: BorrowedFd<'_>| reply.open_backing(fd).map(Backing::Fuser);
        match self.io_mode(ino.0, fh, &register) {
            IoMode::Passthrough(b) => match &*b {
                Backing::Fuser(id) => {
                    reply.opened_passthrough(FileHandle(fh), FopenFlags::empty(), id)
                }
                Backing::Ring(_) => {
                    self.close_io(fh);
                    self.union.release(fh);
                    reply.error(Errno::EIO)
                }
            },
            IoMode::Cached(f) => reply.opened(FileHandle(fh), f),
            IoMode::Stale => reply.error(self.stale(ino.0, fh)),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let _t = self.stats.time(const { Op::named("read") });
        READ_BUF.with(|b| {
            let mut buf = b.borrow_mut();
            let size = (size as usize).min(MAX_READ);
            if buf.len() < size {
                buf.resize(size, 0);
            }
            match self.union.read(fh.0, offset, &mut buf[..size]) {
                Ok(n) => reply.data(&buf[..n]),
                Err(e) => {
                    log_failure("read", ino, None, e);
                    reply.error(errno(e));
                }
            }
        });
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let _t = self.stats.time(const { Op::named("release") });
        self.close_io(fh.0);
        self.union.release(fh.0);
        reply.ok();
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let _t = self.stats.time(const { Op::named("opendir") });
        match self.union.opendir(ino.0) {
            // From now on the kernel opens directories itself, keeping their
            // listings across opens (FOPEN_CACHE_DIR | FOPEN_KEEP_CACHE,
            // its default then, as below).
            Ok(()) if self.no_opendir.load(Ordering::Relaxed) => reply.error(Errno::ENOSYS),
            // The kernel may keep this directory's listing across opens: it
            // only changes through this mount, which invalidates it.
            Ok(()) => reply.opened(
                FileHandle(0),
                FopenFlags::FOPEN_CACHE_DIR | FopenFlags::FOPEN_KEEP_CACHE,
            ),
            Err(e) => {
                log_failure("opendir", ino, None, e);
                reply.error(errno(e));
            }
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let _t = self.stats.time(const { Op::named("readdir") });
        let res = self
            .union
            .readdir(ino.0, offset, &mut DirOut { reply: &mut reply });
        match res {
            Ok(()) => reply.ok(),
            Err(e) => {
                log_failure("readdir", ino, None, e);
                reply.error(errno(e));
            }
        }
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let _t = self.stats.time(const { Op::named("readdirplus") });
        let res = self.union.readdirplus(
            ino.0,
            offset,
            &mut DirPlusOut {
                reply: &mut reply,
                ttl: self.ttl,
            },
        );
        match res {
            Ok(()) => reply.ok(),
            Err(e) => {
                log_failure("readdirplus", ino, None, e);
                reply.error(errno(e));
            }
        }
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        let _t = self.stats.time(const { Op::named("releasedir") });
        reply.ok();
    }

    fn statfs(&self, _req: &Request, ino: INodeNo, reply: ReplyStatfs) {
        let _t = self.stats.time(const { Op::named("statfs") });
        match self.union.statfs() {
            Ok(s) => reply.statfs(
                s.f_blocks,
                s.f_bfree,
                s.f_bavail,
                s.f_files,
                s.f_ffree,
                s.f_bsize as u32,
                s.f_namelen as u32,
                s.f_frsize as u32,
            ),
            Err(e) => {
                log_failure("statfs", ino, None, e);
                reply.error(errno(e));
            }
        }
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        let _t = self.stats.time(const { Op::named("getxattr") });
        if size == 0 {
            match self.union.getxattr(ino.0, name, &mut []) {
                Ok(n) => reply.size(n as u32),
                Err(e) => {
                    log_failure("getxattr", ino, Some(name), e);
                    reply.error(errno(e));
                }
            }
            return;
        }
        READ_BUF.with(|b| {
            let mut buf = b.borrow_mut();
            if buf.len() < size as usize {
                buf.resize(size as usize, 0);
            }
            match self.union.getxattr(ino.0, name, &mut buf[..size as usize]) {
                Ok(n) => reply.data(&buf[..n]),
                Err(e) => {
                    log_failure("getxattr", ino, Some(name), e);
                    reply.error(errno(e));
                }
            }
        });
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        let _t = self.stats.time(const { Op::named("listxattr") });
        match self.union.listxattr(ino.0) {
            Ok(list) if size == 0 => reply.size(list.len() as u32),
            Ok(list) if list.len() > size as usize => reply.error(errno(Error::RANGE)),
            Ok(list) => reply.data(&list),
            Err(e) => {
                log_failure("listxattr", ino, None, e);
                reply.error(errno(e));
            }
        }
    }

    fn access(&self, _req: &Request, ino: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        let _t = self.stats.time(const { Op::named("access") });
        match self.union.access(ino.0, mask.bits()) {
            Ok(()) => reply.ok(),
            Err(e) => {
                log_failure("access", ino, None, e);
                reply.error(errno(e));
            }
        }
    }

    fn setattr(
        &self,
        req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let _t = self.stats.time(const { Op::named("setattr") });
        // What the kernel marks FATTR_KILL_SUIDGID, which fuser does not
        // pass on: a change of owner, or a truncation by a caller without
        // CAP_FSETID (taken to be any but root).
        let kill = uid.is_some() || gid.is_some() || (size.is_some() && req.uid() != 0);
        if kill && let Err(e) = self.union.kill_suidgid(ino.0, fh.map(|f| f.0)) {
            log_failure("setattr", ino, None, e);
            return reply.error(errno(e));
        }
        let a = SetAttr {
            mode,
            uid,
            gid,
            size,
            atime: atime.map(set_time),
            mtime: mtime.map(set_time),
        };
        match self.union.setattr(ino.0, fh.map(|f| f.0), a) {
            Ok(st) => reply.attr(&self.ttl, &file_attr(&st)),
            Err(e) => {
                log_failure("setattr", ino, None, e);
                reply.error(errno(e));
            }
        }
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        let _t = self.stats.time(const { Op::named("mknod") });
        let r = self
            .union
            .mknod(caller(req), parent.0, name, mode, rdev as u64);
        self.reply_entry("mknod", parent, name, r, reply);
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        let _t = self.stats.time(const { Op::named("mkdir") });
        let r = self.union.mkdir(caller(req), parent.0, name, mode);
        self.reply_entry("mkdir", parent, name, r, reply);
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let _t = self.stats.time(const { Op::named("symlink") });
        let r = self
            .union
            .symlink(caller(req), parent.0, link_name, target.as_os_str());
        self.reply_entry("symlink", parent, link_name, r, reply);
    }

    fn link(
        &self,
        _req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        let _t = self.stats.time(const { Op::named("link") });
        let r = self.union.link(ino.0, newparent.0, newname);
        self.reply_entry("link", ino, newname, r, reply);
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let _t = self.stats.time(const { Op::named("unlink") });
        let r = self.union.unlink(parent.0, name);
        reply_empty("unlink", parent, Some(name), r, reply);
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let _t = self.stats.time(const { Op::named("rmdir") });
        let r = self.union.rmdir(parent.0, name);
        reply_empty("rmdir", parent, Some(name), r, reply);
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let _t = self.stats.time(const { Op::named("rename") });
        let r = self
            .union
            .rename(parent.0, name, newparent.0, newname, flags.bits());
        reply_empty("rename", parent, Some(name), r, reply);
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let _t = self.stats.time(const { Op::named("create") });
        let (st, fh) = match self.union.create(caller(req), parent.0, name, mode, flags) {
            Ok(v) => v,
            Err(e) => {
                log_failure("create", parent, Some(name), e);
                return reply.error(errno(e));
            }
        };
        let attr = file_attr(&st);
        let register = |fd: BorrowedFd<'_>| reply.open_backing(fd).map(Backing::Fuser);
        match self.io_mode(st.st_ino, fh, &register) {
            IoMode::Passthrough(b) => match &*b {
                Backing::Fuser(id) => reply.created_passthrough(
                    &self.ttl,
                    &attr,
                    self.generation(st.st_ino),
                    FileHandle(fh),
                    FopenFlags::empty(),
                    id,
                ),
                Backing::Ring(_) => {
                    self.close_io(fh);
                    self.union.release(fh);
                    reply.error(Errno::EIO)
                }
            },
            IoMode::Stale => reply.error(self.stale(st.st_ino, fh)),
            IoMode::Cached(f) => reply.created(
                &self.ttl,
                &attr,
                self.generation(st.st_ino),
                FileHandle(fh),
                f,
            ),
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let _t = self.stats.time(const { Op::named("write") });
        if write_flags.contains(WriteFlags::FUSE_WRITE_KILL_SUIDGID)
            && let Err(e) = self.union.kill_suidgid(ino.0, Some(fh.0))
        {
            log_failure("write", ino, None, e);
            return reply.error(errno(e));
        }
        match self.union.write(fh.0, offset, data) {
            Ok(n) => reply.written(n as u32),
            Err(e) => {
                log_failure("write", ino, None, e);
                reply.error(errno(e));
            }
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        let _t = self.stats.time(const { Op::named("flush") });
        // Writes reach the upper file as they come; close has nothing left
        // to hand over. ENOSYS tells the kernel to stop sending FLUSH on
        // every close.
        reply.error(Errno::ENOSYS);
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        let _t = self.stats.time(const { Op::named("fsync") });
        let r = self.union.fsync(fh.0, datasync);
        reply_empty("fsync", ino, None, r, reply);
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        let _t = self.stats.time(const { Op::named("fsyncdir") });
        let r = self.union.fsyncdir(ino.0, datasync);
        reply_empty("fsyncdir", ino, None, r, reply);
    }

    fn fallocate(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        let _t = self.stats.time(const { Op::named("fallocate") });
        let r = self.union.fallocate(fh.0, offset, length, mode);
        reply_empty("fallocate", ino, None, r, reply);
    }

    fn setxattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        let _t = self.stats.time(const { Op::named("setxattr") });
        let r = self.union.setxattr(ino.0, name, value, flags);
        reply_empty("setxattr", ino, Some(name), r, reply);
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let _t = self.stats.time(const { Op::named("removexattr") });
        let r = self.union.removexattr(ino.0, name);
        reply_empty("removexattr", ino, Some(name), r, reply);
    }

    fn lseek(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: i64,
        whence: i32,
        reply: ReplyLseek,
    ) {
        let _t = self.stats.time(const { Op::named("lseek") });
        match self.union.lseek(fh.0, offset, whence) {
            Ok(off) => reply.offset(off),
            Err(e) => {
                log_failure("lseek", ino, None, e);
                reply.error(errno(e));
            }
        }
    }
}

impl UnionFs {
    /// Inode generation: bumped by a reset, so that the kernel treats every
    /// object looked up afterwards as new and fails I/O on files opened
    /// before it with EIO instead of mixing old and new.
    fn generation(&self, nodeid: u64) -> Generation {
        Generation(self.union.generation_of(nodeid))
    }

    fn entry(&self, reply: ReplyEntry, st: &libc::stat, generation: Generation) {
        if crate::inode::is_alias(st.st_ino) {
            // An alias's attributes carry it as the inode number: the
            // kernel is to ask for the real one at once.
            reply.entry_with_ttls(&Duration::ZERO, &self.ttl, &file_attr(st), generation);
        } else {
            reply.entry(&self.ttl, &file_attr(st), generation);
        }
    }

    fn reply_entry(
        &self,
        op: &str,
        parent: INodeNo,
        name: &OsStr,
        r: crate::error::Result<libc::stat>,
        reply: ReplyEntry,
    ) {
        match r {
            Ok(st) => self.entry(reply, &st, self.generation(st.st_ino)),
            Err(e) => {
                log_failure(op, parent, Some(name), e);
                reply.error(errno(e));
            }
        }
    }
}

impl Core {
    /// Chooses how the kernel does I/O on a new handle. Passthrough (the
    /// kernel reads and writes the backing file itself) for data that stays
    /// where it is while open: files of a read-only mount, upper files and,
    /// read-only, lower files. The kernel wants every open of an inode in
    /// one mode, passthrough ones on one backing file, and fails any other
    /// open with EIO; so once a lower file bound as backing is copied up,
    /// new opens of the copy are sent to a kernel inode of its own (see
    /// [`IoMode::Stale`]), and the handles opened earlier keep reading the
    /// lower file.
    fn io_mode(
        &self,
        ino: u64,
        fh: u64,
        register: &dyn Fn(BorrowedFd<'_>) -> std::io::Result<Backing>,
    ) -> IoMode {
        let ino = (ino, self.union.generation_of(ino));
        // One lookup of the handle serves every question below.
        let handle = self.union.handle(fh);
        let (life, fd) = match handle.as_deref() {
            Ok(h @ Handle::File { fd, .. }) => (self.union.data_life(fh, h), Some(fd.as_fd())),
            Err(_) => (DataLife::Served, None),
        };
        let stat = || fd.and_then(|fd| crate::sys::fstat(fd).ok());
        let file = || stat().map(|st| (st.st_dev, st.st_ino));
        let passed = |id: Arc<Backing>| {
            let held = Opened::Passthrough {
                _held: Arc::clone(&id),
            };
            self.open_files.insert(fh, (ino, held));
            IoMode::Passthrough(id)
        };
        let mut st = self.io.entry(ino).or_default();
        if let Some(id) = st.backing.upgrade() {
            // The kernel wants every open of an inode on the backing file
            // it already has (a file made set-id since then included).
            if file() == Some(st.backing_file) {
                return passed(id);
            }
            return IoMode::Stale;
        }
        let wanted = match life {
            DataLife::Whole => true,
            DataLife::UntilCopyUp => self.lower_passthrough,
            DataLife::Served => false,
        };
        if wanted
            && st.cached == 0
            && self.passthrough.load(Ordering::Relaxed)
            && let Some(fd) = fd
            && let Some(fst) = stat()
            && (life != DataLife::UntilCopyUp || fst.st_size >= LOWER_PASSTHROUGH_MIN)
        {
            let ident = (fst.st_dev, fst.st_ino);
            match register(fd) {
                Ok(id) => {
                    let id = Arc::new(id);
                    st.backing = Arc::downgrade(&id);
                    st.backing_file = ident;
                    return passed(id);
                }
                Err(e) if e.raw_os_error() == Some(libc::EPERM) => {
                    info!("passthrough refused by the kernel; serving I/O in userspace");
                    self.passthrough.store(false, Ordering::Relaxed);
                }
                Err(e) => debug!("passthrough for ino {}: {e}", ino.0),
            }
        }
        st.cached += 1;
        self.open_files.insert(fh, (ino, Opened::Cached));
        // Keeping the page cache across opens is right wherever every write
        // goes through it: lower files (immutable until copied up, and the
        // copy-up happens through this inode), and any file when passthrough
        // is off. An upper file may have been written by passthrough or
        // direct I/O since.
        let keep = life == DataLife::UntilCopyUp
            || !self.passthrough.load(Ordering::Relaxed)
            || self.union.read_only();
        IoMode::Cached(if keep {
            FopenFlags::FOPEN_KEEP_CACHE
        } else {
            FopenFlags::empty()
        })
    }

    /// Answers an open that [`IoMode::Stale`] turned down: the handle goes,
    /// and the object gets the alias the kernel's retry will find.
    fn stale(&self, ino: u64, fh: u64) -> Errno {
        self.union.release(fh);
        match self.union.alias(ino) {
            Ok(_) => Errno::ESTALE,
            Err(e) => errno(e),
        }
    }

    fn close_io(&self, fh: u64) {
        let Some((_, (ino, opened))) = self.open_files.remove(&fh) else {
            return;
        };
        if let Opened::Cached = opened
            && let Some(mut st) = self.io.get_mut(&ino)
        {
            st.cached = st.cached.saturating_sub(1);
        }
        drop(opened);
        self.io.remove_if(&ino, |_, st| {
            st.cached == 0 && st.backing.strong_count() == 0
        });
    }
}

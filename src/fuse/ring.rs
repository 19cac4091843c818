//! FUSE over io_uring (`--io-uring`; kernel 6.14 and later, with
//! `/sys/module/fuse/parameters/enable_uring` on).
//!
//! Why: on `/dev/fuse` any blocked reader may take a request, and on an idle
//! machine the scheduler wakes it on another CPU, so one round trip is two
//! cross-CPU wakeups (27–31 µs in a 2-vCPU VM, against 7–8 µs on one CPU;
//! bench/uring.md). The kernel files a ring request on the queue of the CPU
//! its caller runs on, and each queue here is served by a thread pinned to
//! that CPU: the request is answered where it was issued.
//!
//! INIT stays with fuser on `/dev/fuse`, and so do FORGET and INTERRUPT,
//! which never travel on the ring; every other request comes here. After
//! INIT agreed to `FUSE_OVER_IO_URING`, the kernel holds requests back until
//! every queue has an entry; a registration it refuses turns the ring off
//! for the connection and requests flow over `/dev/fuse` to fuser again.
//!
//! Each queue has a few threads, each with a ring of its own holding one
//! entry, so that a request that waits (a large copy-up, an fsync) holds
//! back no other request unless all of its CPU's threads are busy.

use std::ffi::OsStr;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use log::{debug, info, warn};

use super::wire::{self, InHeader, op};
use super::{Backing, Core, IoMode, MAX_READ};
use crate::error::Error;
use crate::stats::Op;
use crate::sys::{self, uring::FuseQueue};
use crate::union::{DirPlusReplier, DirReplier};
use crate::write::{Caller, SetAttr, SetTime};

/// Where `struct fuse_uring_req_header` keeps the in/out header, the
/// opcode's argument struct, and in `fuse_uring_ent_in_out` the commit id
/// and the payload size.
const IN_OUT_OFF: usize = 0;
const OP_IN_OFF: usize = 128;
const ENT_IN_OUT_OFF: usize = 256;
const COMMIT_ID_OFF: usize = ENT_IN_OUT_OFF + 8;
const PAYLOAD_SZ_OFF: usize = ENT_IN_OUT_OFF + 16;

/// Threads (each with its own ring holding one entry) per queue. The kernel
/// hands a request to any parked entry of its CPU's queue, so while one
/// thread answers a slow request (a large copy-up, an fsync) the others
/// take the rest. One entry per ring: a ring whose thread is busy has no
/// entry parked, and none of its CPU's requests wait behind it.
const THREADS_PER_QUEUE: usize = 3;

/// A passthrough backing file registered for a ring reply; closed with the
/// last handle that uses it, as fuser's `BackingId` is.
#[derive(Debug)]
pub struct RawBacking {
    id: u32,
    dev: Arc<OwnedFd>,
}

impl Drop for RawBacking {
    fn drop(&mut self) {
        if let Err(e) = sys::uring::close_backing(&self.dev, self.id) {
            debug!("closing backing file {}: {e}", self.id);
        }
    }
}

/// The ring's threads, THREADS_PER_QUEUE per possible CPU.
#[derive(Debug)]
pub struct Ring {
    threads: Vec<JoinHandle<()>>,
    /// Disconnected once every thread has ended: each holds a sender.
    ended: mpsc::Receiver<()>,
}

impl Ring {
    /// Registers a queue per possible CPU on `dev`, whose INIT has been
    /// answered with `FUSE_OVER_IO_URING`. Returns once every queue is
    /// registered, or with why not (the kernel then serves over
    /// `/dev/fuse`).
    pub fn start(core: Arc<Core>, dev: Arc<OwnedFd>) -> Result<Ring, String> {
        Self::register_all(core, Arc::clone(&dev)).inspect_err(|_| sys::uring::refuse(dev))
    }

    fn register_all(core: Arc<Core>, dev: Arc<OwnedFd>) -> Result<Ring, String> {
        let queues = possible_cpus()?;
        // A CPU that is possible but offline (hotplug slots of a cloud VM)
        // issues no requests until it comes online; one thread keeps its
        // queue registered.
        let online = cpu_list("/sys/devices/system/cpu/online").ok();
        let per_queue = |q: usize| match &online {
            Some(on) if !on.contains(&q) => 1,
            _ => THREADS_PER_QUEUE,
        };
        let mut expected = 0;
        let payload = payload_len();
        let (tx, rx) = mpsc::channel();
        let (alive, ended) = mpsc::channel::<()>();
        let mut threads = Vec::new();
        for qid in 0..queues {
            for _ in 0..per_queue(qid) {
                expected += 1;
                let (core, dev, tx) = (Arc::clone(&core), Arc::clone(&dev), tx.clone());
                let alive = alive.clone();
                let t = std::thread::Builder::new()
                    .name(format!("uring-{qid}"))
                    .spawn(move || {
                        serve_queue(&core, dev, qid as u16, payload, tx);
                        drop(alive);
                    })
                    .map_err(|e| format!("cannot start ring thread: {e}"))?;
                threads.push(t);
            }
        }
        drop(tx);
        drop(alive);
        let mut failure = None;
        for r in rx.iter().take(expected) {
            if let Err(e) = r {
                failure.get_or_insert(e);
            }
        }
        match failure {
            None => Ok(Ring { threads, ended }),
            // Threads whose queues did register stay parked until the
            // connection ends; nothing will come to them.
            Some(e) => Err(e),
        }
    }

    /// Waits for the queue threads after the connection ended: the kernel
    /// completes their parked entries with an error, and a request being
    /// answered is finished first. Gives up after `limit`.
    pub fn join(self, limit: Duration) {
        match self.ended.recv_timeout(limit) {
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                for t in self.threads {
                    let _ = t.join();
                }
            }
            _ => warn!("an io_uring queue thread did not end with the connection"),
        }
    }
}

/// Queues the kernel keeps: one per possible CPU (`num_possible_cpus()`),
/// numbered 0..N.
fn possible_cpus() -> Result<usize, String> {
    let cpus = cpu_list("/sys/devices/system/cpu/possible")?;
    Ok(cpus.iter().max().map_or(1, |m| m + 1))
}

/// The CPUs of the sysfs list at `path`.
fn cpu_list(path: &str) -> Result<Vec<usize>, String> {
    let s = std::fs::read_to_string(path).map_err(|e| format!("cannot read {path}: {e}"))?;
    parse_cpu_list(&s).ok_or_else(|| format!("cannot parse the CPU list {:?} of {path}", s.trim()))
}

/// The CPUs of a list such as `0-3,5,7-8`.
fn parse_cpu_list(s: &str) -> Option<Vec<usize>> {
    let mut out = Vec::new();
    for part in s.trim().split(',').filter(|p| !p.is_empty()) {
        let (a, b) = part.split_once('-').unwrap_or((part, part));
        let (a, b): (usize, usize) = (a.parse().ok()?, b.parse().ok()?);
        if b < a || b > 1 << 16 {
            return None;
        }
        out.extend(a..=b);
    }
    Some(out)
}

/// The payload buffer the kernel demands at registration: at least
/// max(8 KiB, max_write, max_pages × page size). A read of MAX_READ is the
/// largest request or reply.
fn payload_len() -> usize {
    MAX_READ + 4096
}

fn serve_queue(
    core: &Core,
    dev: Arc<OwnedFd>,
    qid: u16,
    plen: usize,
    ready: mpsc::Sender<Result<(), String>>,
) {
    if let Err(e) = sys::uring::pin_to_cpu(qid as usize) {
        // An offline CPU issues no requests, but its queue must exist for
        // the ring to start.
        debug!("io_uring queue {qid} not pinned: {e}");
    }
    let mut q = match FuseQueue::register(Arc::clone(&dev), qid, 1, plen) {
        Ok(q) => q,
        Err(e) => {
            let _ = ready.send(Err(format!("registering queue {qid}: {e}")));
            return;
        }
    };
    let _ = ready.send(Ok(()));
    drop(ready);

    let mut scratch: Vec<u8> = Vec::new();
    let mut done = Vec::with_capacity(1);
    loop {
        if let Err(e) = q.wait(&mut done) {
            warn!("io_uring queue {qid}: {e}");
            return;
        }
        for &(idx, res) in &done {
            if res < 0 {
                // ENOTCONN, ECANCELED: the connection is going away.
                if res != -libc::ENOTCONN && res != -libc::ECANCELED {
                    warn!(
                        "io_uring queue {qid}: {}",
                        std::io::Error::from_raw_os_error(-res)
                    );
                }
                return;
            }
            let Some((header, payload)) = q.entry(idx) else {
                return;
            };
            core.stats.ring_request();
            let commit_id = wire::u64_at(&header[..], COMMIT_ID_OFF).unwrap_or(0);
            let (body, error, unique) = match InHeader::parse(&header[IN_OUT_OFF..OP_IN_OFF]) {
                Some(h) => {
                    let in_len = wire::u32_at(&header[..], PAYLOAD_SZ_OFF).unwrap_or(0) as usize;
                    let op_in = &header[OP_IN_OFF..ENT_IN_OUT_OFF];
                    let in_len = in_len.min(payload.len());
                    match dispatch(core, &dev, &h, op_in, payload, in_len, &mut scratch) {
                        Ok(n) => (n, 0, h.unique),
                        Err(errno) => (0, -errno, h.unique),
                    }
                }
                None => (0, -libc::EIO, 0),
            };
            wire::out_header(
                &mut header[IN_OUT_OFF..],
                wire::OUT_HEADER_LEN + body,
                error,
                unique,
            );
            header[PAYLOAD_SZ_OFF..PAYLOAD_SZ_OFF + 4]
                .copy_from_slice(&(body as u32).to_le_bytes());
            if let Err(e) = q.commit(idx, commit_id) {
                warn!("io_uring queue {qid}: {e}");
                return;
            }
        }
    }
}

/// The request's payload, copied aside when the reply may overwrite it
/// before the arguments are used up.
fn aside<'a>(payload: &[u8], in_len: usize, scratch: &'a mut Vec<u8>) -> &'a [u8] {
    scratch.clear();
    scratch.extend_from_slice(&payload[..in_len]);
    &scratch[..]
}

fn name_of(b: &[u8]) -> Result<(&OsStr, &[u8]), i32> {
    let (n, rest) = wire::cstr(b).ok_or(libc::EINVAL)?;
    Ok((OsStr::from_bytes(n), rest))
}

fn arg32(b: &[u8], off: usize) -> Result<u32, i32> {
    wire::u32_at(b, off).ok_or(libc::EINVAL)
}

fn arg64(b: &[u8], off: usize) -> Result<u64, i32> {
    wire::u64_at(b, off).ok_or(libc::EINVAL)
}

/// Logs a failed request as the fuser side does, and gives its errno.
fn fail(name: &str, ino: u64, n: Option<&OsStr>, e: Error) -> i32 {
    super::convert::log_failure(name, fuser::INodeNo(ino), n, e);
    e.errno
}

/// Answers one request: the reply body goes to the start of `payload`, and
/// its length is returned; or a positive errno.
fn dispatch(
    core: &Core,
    dev: &Arc<OwnedFd>,
    h: &InHeader,
    op_in: &[u8],
    payload: &mut [u8],
    in_len: usize,
    scratch: &mut Vec<u8>,
) -> Result<usize, i32> {
    let ino = h.nodeid;
    let caller = Caller {
        uid: h.uid,
        gid: h.gid,
    };
    let ttl = core.ttl;
    let union = &*core.union;
    match h.opcode {
        op::LOOKUP => {
            let _t = core.stats.time(const { Op::named("lookup") });
            let (name, _) = name_of(aside(payload, in_len, scratch))?;
            match union.lookup(ino, name) {
                Ok(Some((st, generation))) => {
                    wire::entry_out(payload, &st, generation, ttl);
                }
                Ok(None) => {
                    // A negative entry the kernel may keep for ttl.
                    let mut st = super::convert::zero_stat();
                    st.st_ino = 0;
                    wire::entry_out(payload, &st, union.generation(), ttl);
                }
                Err(e) => return Err(fail("lookup", ino, Some(name), e)),
            }
            Ok(wire::ENTRY_OUT_LEN)
        }
        op::GETATTR => {
            let _t = core.stats.time(const { Op::named("getattr") });
            let fh = (arg32(op_in, 0)? & wire::FUSE_GETATTR_FH != 0)
                .then(|| arg64(op_in, 8))
                .transpose()?;
            let st = union
                .getattr(ino, fh)
                .map_err(|e| fail("getattr", ino, None, e))?;
            wire::attr_out(payload, &st, ttl);
            Ok(wire::ATTR_OUT_LEN)
        }
        op::SETATTR => {
            let _t = core.stats.time(const { Op::named("setattr") });
            let valid = arg32(op_in, 0)?;
            let has = |f: u32| valid & f != 0;
            let fh = has(wire::FATTR_FH).then(|| arg64(op_in, 8)).transpose()?;
            let time = |now: u32, set: u32, sec_off: usize, nsec_off: usize| {
                if has(now) {
                    Ok(Some(SetTime::Now))
                } else if has(set) {
                    Ok(Some(SetTime::At(
                        arg64(op_in, sec_off)? as i64,
                        arg32(op_in, nsec_off)? as i64,
                    )))
                } else {
                    Ok::<_, i32>(None)
                }
            };
            let a = SetAttr {
                mode: has(wire::FATTR_MODE)
                    .then(|| arg32(op_in, 68))
                    .transpose()?,
                uid: has(wire::FATTR_UID).then(|| arg32(op_in, 76)).transpose()?,
                gid: has(wire::FATTR_GID).then(|| arg32(op_in, 80)).transpose()?,
                size: has(wire::FATTR_SIZE)
                    .then(|| arg64(op_in, 16))
                    .transpose()?,
                atime: time(wire::FATTR_ATIME_NOW, wire::FATTR_ATIME, 32, 56)?,
                mtime: time(wire::FATTR_MTIME_NOW, wire::FATTR_MTIME, 40, 60)?,
            };
            // The kernel marks a change of owner, and a truncation by a
            // caller without CAP_FSETID.
            let kill = a.uid.is_some() || a.gid.is_some() || has(wire::FATTR_KILL_SUIDGID);
            if kill {
                union
                    .kill_suidgid(ino, fh)
                    .map_err(|e| fail("setattr", ino, None, e))?;
            }
            let st = union
                .setattr(ino, fh, a)
                .map_err(|e| fail("setattr", ino, None, e))?;
            wire::attr_out(payload, &st, ttl);
            Ok(wire::ATTR_OUT_LEN)
        }
        op::READLINK => {
            let _t = core.stats.time(const { Op::named("readlink") });
            let t = union
                .readlink(ino)
                .map_err(|e| fail("readlink", ino, None, e))?;
            let n = t.len().min(payload.len());
            payload[..n].copy_from_slice(&t[..n]);
            Ok(n)
        }
        op::SYMLINK => {
            let _t = core.stats.time(const { Op::named("symlink") });
            let (name, rest) = name_of(aside(payload, in_len, scratch))?;
            let (target, _) = wire::cstr(rest).ok_or(libc::EINVAL)?;
            let r = union.symlink(caller, ino, name, OsStr::from_bytes(target));
            entry(core, payload, "symlink", ino, name, r)
        }
        op::MKNOD => {
            let _t = core.stats.time(const { Op::named("mknod") });
            let (mode, rdev) = (arg32(op_in, 0)?, arg32(op_in, 4)?);
            let (name, _) = name_of(aside(payload, in_len, scratch))?;
            let r = union.mknod(caller, ino, name, mode, rdev as u64);
            entry(core, payload, "mknod", ino, name, r)
        }
        op::MKDIR => {
            let _t = core.stats.time(const { Op::named("mkdir") });
            let mode = arg32(op_in, 0)?;
            let (name, _) = name_of(aside(payload, in_len, scratch))?;
            let r = union.mkdir(caller, ino, name, mode);
            entry(core, payload, "mkdir", ino, name, r)
        }
        op::UNLINK | op::RMDIR => {
            let dir = h.opcode == op::RMDIR;
            let _t = core.stats.time(if dir {
                const { Op::named("rmdir") }
            } else {
                const { Op::named("unlink") }
            });
            let (name, _) = name_of(aside(payload, in_len, scratch))?;
            let r = if dir {
                union.rmdir(ino, name)
            } else {
                union.unlink(ino, name)
            };
            let what = if dir { "rmdir" } else { "unlink" };
            r.map_err(|e| fail(what, ino, Some(name), e))?;
            Ok(0)
        }
        op::RENAME | op::RENAME2 => {
            let _t = core.stats.time(const { Op::named("rename") });
            let newdir = arg64(op_in, 0)?;
            let flags = if h.opcode == op::RENAME2 {
                arg32(op_in, 8)?
            } else {
                0
            };
            let (name, rest) = name_of(aside(payload, in_len, scratch))?;
            let (newname, _) = name_of(rest)?;
            union
                .rename(ino, name, newdir, newname, flags)
                .map_err(|e| fail("rename", ino, Some(name), e))?;
            Ok(0)
        }
        op::LINK => {
            let _t = core.stats.time(const { Op::named("link") });
            let old = arg64(op_in, 0)?;
            let (name, _) = name_of(aside(payload, in_len, scratch))?;
            let r = union.link(old, ino, name);
            entry(core, payload, "link", old, name, r)
        }
        op::OPEN => {
            let _t = core.stats.time(const { Op::named("open") });
            let (flags, open_flags) = (arg32(op_in, 0)? as i32, arg32(op_in, 4)?);
            let fh = union
                .open(ino, flags)
                .map_err(|e| fail("open", ino, None, e))?;
            if open_flags & wire::FUSE_OPEN_KILL_SUIDGID != 0
                && let Err(e) = union.kill_suidgid(ino, Some(fh))
            {
                union.release(fh);
                return Err(fail("open", ino, None, e));
            }
            opened(core, dev, payload, ino, fh, 0)
        }
        op::READ => {
            let _t = core.stats.time(const { Op::named("read") });
            let (fh, offset, size) = (arg64(op_in, 0)?, arg64(op_in, 8)?, arg32(op_in, 16)?);
            let size = (size as usize).min(payload.len());
            union
                .read(fh, offset, &mut payload[..size])
                .map_err(|e| fail("read", ino, None, e))
        }
        op::WRITE => {
            let _t = core.stats.time(const { Op::named("write") });
            let (fh, offset) = (arg64(op_in, 0)?, arg64(op_in, 8)?);
            let (size, write_flags) = (arg32(op_in, 16)? as usize, arg32(op_in, 20)?);
            if write_flags & wire::FUSE_WRITE_KILL_SUIDGID != 0 {
                union
                    .kill_suidgid(ino, Some(fh))
                    .map_err(|e| fail("write", ino, None, e))?;
            }
            let data = payload.get(..size.min(in_len)).ok_or(libc::EINVAL)?;
            let n = union
                .write(fh, offset, data)
                .map_err(|e| fail("write", ino, None, e))?;
            Ok(wire::u32_out(payload, n as u32))
        }
        op::STATFS => {
            let _t = core.stats.time(const { Op::named("statfs") });
            let s = union.statfs().map_err(|e| fail("statfs", ino, None, e))?;
            Ok(wire::statfs_out(payload, &s))
        }
        op::RELEASE => {
            let _t = core.stats.time(const { Op::named("release") });
            let fh = arg64(op_in, 0)?;
            core.close_io(fh);
            union.release(fh);
            Ok(0)
        }
        op::RELEASEDIR => {
            let _t = core.stats.time(const { Op::named("releasedir") });
            Ok(0)
        }
        op::FSYNC | op::FSYNCDIR => {
            let dir = h.opcode == op::FSYNCDIR;
            let _t = core.stats.time(if dir {
                const { Op::named("fsyncdir") }
            } else {
                const { Op::named("fsync") }
            });
            let (fh, flags) = (arg64(op_in, 0)?, arg32(op_in, 8)?);
            let data_only = flags & wire::FUSE_FSYNC_FDATASYNC != 0;
            let r = if dir {
                union.fsyncdir(ino, data_only)
            } else {
                union.fsync(fh, data_only)
            };
            r.map_err(|e| fail(if dir { "fsyncdir" } else { "fsync" }, ino, None, e))?;
            Ok(0)
        }
        op::SETXATTR => {
            let _t = core.stats.time(const { Op::named("setxattr") });
            let (size, flags) = (arg32(op_in, 0)? as usize, arg32(op_in, 4)? as i32);
            let (name, rest) = name_of(aside(payload, in_len, scratch))?;
            let value = rest.get(..size).ok_or(libc::EINVAL)?;
            union
                .setxattr(ino, name, value, flags)
                .map_err(|e| fail("setxattr", ino, Some(name), e))?;
            Ok(0)
        }
        op::GETXATTR => {
            let _t = core.stats.time(const { Op::named("getxattr") });
            let size = arg32(op_in, 0)? as usize;
            let (name, _) = name_of(aside(payload, in_len, scratch))?;
            if size == 0 {
                let n = union
                    .getxattr(ino, name, &mut [])
                    .map_err(|e| fail("getxattr", ino, Some(name), e))?;
                return Ok(wire::u32_out(payload, n as u32));
            }
            let size = size.min(payload.len());
            union
                .getxattr(ino, name, &mut payload[..size])
                .map_err(|e| fail("getxattr", ino, Some(name), e))
        }
        op::LISTXATTR => {
            let _t = core.stats.time(const { Op::named("listxattr") });
            let size = arg32(op_in, 0)? as usize;
            let list = union
                .listxattr(ino)
                .map_err(|e| fail("listxattr", ino, None, e))?;
            if size == 0 {
                return Ok(wire::u32_out(payload, list.len() as u32));
            }
            if list.len() > size.min(payload.len()) {
                return Err(libc::ERANGE);
            }
            payload[..list.len()].copy_from_slice(&list);
            Ok(list.len())
        }
        op::REMOVEXATTR => {
            let _t = core.stats.time(const { Op::named("removexattr") });
            let (name, _) = name_of(aside(payload, in_len, scratch))?;
            union
                .removexattr(ino, name)
                .map_err(|e| fail("removexattr", ino, Some(name), e))?;
            Ok(0)
        }
        op::FLUSH => {
            let _t = core.stats.time(const { Op::named("flush") });
            // As on /dev/fuse: nothing to hand over at close, and ENOSYS
            // stops the kernel sending FLUSH.
            Err(libc::ENOSYS)
        }
        op::OPENDIR => {
            let _t = core.stats.time(const { Op::named("opendir") });
            union
                .opendir(ino)
                .map_err(|e| fail("opendir", ino, None, e))?;
            if core.no_opendir.load(Ordering::Relaxed) {
                return Err(libc::ENOSYS);
            }
            let flags = fuser::FopenFlags::FOPEN_CACHE_DIR | fuser::FopenFlags::FOPEN_KEEP_CACHE;
            wire::open_out(payload, 0, flags.bits(), 0);
            Ok(wire::OPEN_OUT_LEN)
        }
        op::READDIR | op::READDIRPLUS => {
            let plus = h.opcode == op::READDIRPLUS;
            let _t = core.stats.time(if plus {
                const { Op::named("readdirplus") }
            } else {
                const { Op::named("readdir") }
            });
            let (offset, size) = (arg64(op_in, 8)?, arg32(op_in, 16)? as usize);
            let size = size.min(payload.len());
            let mut out = wire::DirBuf {
                buf: &mut payload[..size],
                len: 0,
            };
            let r = if plus {
                union.readdirplus(ino, offset, &mut PlusOut { out: &mut out, ttl })
            } else {
                union.readdir(ino, offset, &mut PlainOut(&mut out))
            };
            r.map_err(|e| fail(if plus { "readdirplus" } else { "readdir" }, ino, None, e))?;
            Ok(out.len)
        }
        op::ACCESS => {
            let _t = core.stats.time(const { Op::named("access") });
            let mask = arg32(op_in, 0)? as i32;
            union
                .access(ino, mask)
                .map_err(|e| fail("access", ino, None, e))?;
            Ok(0)
        }
        op::CREATE => {
            let _t = core.stats.time(const { Op::named("create") });
            let (flags, mode) = (arg32(op_in, 0)? as i32, arg32(op_in, 4)?);
            let (name, _) = name_of(aside(payload, in_len, scratch))?;
            let (st, fh) = union
                .create(caller, ino, name, mode, flags)
                .map_err(|e| fail("create", ino, Some(name), e))?;
            let generation = union.generation_of(st.st_ino);
            wire::entry_out(payload, &st, generation, ttl);
            opened(core, dev, payload, st.st_ino, fh, wire::ENTRY_OUT_LEN)
        }
        op::FALLOCATE => {
            let _t = core.stats.time(const { Op::named("fallocate") });
            let (fh, offset, length) = (arg64(op_in, 0)?, arg64(op_in, 8)?, arg64(op_in, 16)?);
            let mode = arg32(op_in, 24)? as i32;
            union
                .fallocate(fh, offset, length, mode)
                .map_err(|e| fail("fallocate", ino, None, e))?;
            Ok(0)
        }
        op::LSEEK => {
            let _t = core.stats.time(const { Op::named("lseek") });
            let (fh, offset, whence) = (arg64(op_in, 0)?, arg64(op_in, 8)?, arg32(op_in, 16)?);
            let off = union
                .lseek(fh, offset as i64, whence as i32)
                .map_err(|e| fail("lseek", ino, None, e))?;
            Ok(wire::u64_out(payload, off as u64))
        }
        // What fuser answers for the requests unionfuse does not implement
        // (locks, ioctl, poll, bmap, copy_file_range, tmpfile, statx...):
        // the kernel then stops asking or does the work itself.
        _ => Err(libc::ENOSYS),
    }
}

/// An entry reply for a new name.
fn entry(
    core: &Core,
    payload: &mut [u8],
    name_op: &str,
    ino: u64,
    name: &OsStr,
    r: crate::error::Result<libc::stat>,
) -> Result<usize, i32> {
    let st = r.map_err(|e| fail(name_op, ino, Some(name), e))?;
    let generation = core.union.generation_of(st.st_ino);
    wire::entry_out(payload, &st, generation, core.ttl);
    Ok(wire::ENTRY_OUT_LEN)
}

/// Appends `fuse_open_out` for handle `fh` of inode `ino` at `at`, choosing
/// passthrough or cached I/O as the /dev/fuse side does.
fn opened(
    core: &Core,
    dev: &Arc<OwnedFd>,
    payload: &mut [u8],
    ino: u64,
    fh: u64,
    at: usize,
) -> Result<usize, i32> {
    let register = |fd: std::os::fd::BorrowedFd<'_>| -> std::io::Result<Backing> {
        let id = fuser::BackingId::create_raw(dev.as_fd(), fd)?;
        Ok(Backing::Ring(RawBacking {
            id,
            dev: Arc::clone(dev),
        }))
    };
    let out = &mut payload[at..at + wire::OPEN_OUT_LEN];
    match core.io_mode(ino, fh, &register) {
        IoMode::Passthrough(b) => match &*b {
            Backing::Ring(r) => wire::open_out(out, fh, wire::FOPEN_PASSTHROUGH, r.id),
            Backing::Fuser(_) => {
                // Both transports never serve one connection's opens.
                core.close_io(fh);
                core.union.release(fh);
                return Err(libc::EIO);
            }
        },
        IoMode::Cached(f) => wire::open_out(out, fh, f.bits(), 0),
        IoMode::Stale => return Err(i32::from(core.stale(ino, fh))),
    }
    Ok(at + wire::OPEN_OUT_LEN)
}

struct PlainOut<'a, 'b>(&'a mut wire::DirBuf<'b>);

impl DirReplier for PlainOut<'_, '_> {
    fn add(&mut self, ino: u64, offset: u64, d_type: u8, name: &[u8]) -> bool {
        // True means full, as fuser's replies say it.
        !self.0.dirent(ino, offset, d_type, name)
    }
}

struct PlusOut<'a, 'b> {
    out: &'a mut wire::DirBuf<'b>,
    ttl: Duration,
}

impl DirPlusReplier for PlusOut<'_, '_> {
    fn add(&mut self, offset: u64, name: &[u8], st: &libc::stat, generation: u64) -> bool {
        !self.out.direntplus(offset, name, st, generation, self.ttl)
    }
}

/// Logs which transport a mount uses.
pub fn announce(on: bool, why: Option<&str>) {
    match (on, why) {
        (true, _) => info!("transport: io_uring"),
        (false, Some(w)) => warn!("io_uring transport unavailable ({w}); serving over /dev/fuse"),
        (false, None) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::parse_cpu_list;

    #[test]
    fn cpu_lists_as_sysfs_writes_them() {
        assert_eq!(parse_cpu_list("0-1\n"), Some(vec![0, 1]));
        assert_eq!(parse_cpu_list("0,2-4,7"), Some(vec![0, 2, 3, 4, 7]));
        assert_eq!(parse_cpu_list("3"), Some(vec![3]));
        assert_eq!(parse_cpu_list("\n"), Some(vec![]));
        assert_eq!(parse_cpu_list("4-2"), None);
        assert_eq!(parse_cpu_list("0-x"), None);
        assert_eq!(parse_cpu_list("0-99999999"), None);
    }
}

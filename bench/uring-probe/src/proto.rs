//! The FUSE wire format this probe needs, and the tiny filesystem it serves:
//! a root directory holding one read-only file.
//!
//! Requests are decoded from three separate regions (the in-header, the
//! fixed per-opcode struct, the variable payload) because that is how the
//! io_uring transport delivers them; a classic `/dev/fuse` frame is the same
//! three regions laid end to end, so one handler serves both transports.
//! Replies are likewise a body written into a caller-provided buffer: the
//! classic transport puts a `fuse_out_header` in front of it, the ring
//! transport puts the header in the entry's header area instead.

use std::sync::atomic::{AtomicU64, Ordering};

pub const IN_HEADER_LEN: usize = 40;
pub const OUT_HEADER_LEN: usize = 16;

pub const FUSE_KERNEL_VERSION: u32 = 7;
/// `FUSE_INIT_EXT`: the kernel reads `flags2` of the INIT reply only with it.
pub const FUSE_INIT_EXT: u32 = 1 << 30;
/// `FUSE_OVER_IO_URING` is bit 41 of the 64-bit init flags, so bit 9 of `flags2`.
pub const FUSE_OVER_IO_URING_FLAGS2: u32 = 1 << (41 - 32);
const FOPEN_DIRECT_IO: u32 = 1 << 0;

/// Largest WRITE the kernel may send; with the default 32 pages per request
/// this is also the ring payload size the kernel demands at registration.
pub const MAX_WRITE: u32 = 128 * 1024;

pub mod op {
    pub const LOOKUP: u32 = 1;
    pub const FORGET: u32 = 2;
    pub const GETATTR: u32 = 3;
    pub const OPEN: u32 = 14;
    pub const READ: u32 = 15;
    pub const STATFS: u32 = 17;
    pub const RELEASE: u32 = 18;
    pub const FLUSH: u32 = 25;
    pub const INIT: u32 = 26;
    pub const OPENDIR: u32 = 27;
    pub const READDIR: u32 = 28;
    pub const RELEASEDIR: u32 = 29;
    pub const INTERRUPT: u32 = 36;
    pub const DESTROY: u32 = 38;
    pub const BATCH_FORGET: u32 = 42;
}

pub const ROOT_INO: u64 = 1;
pub const FILE_INO: u64 = 2;
pub const FILE_NAME: &[u8] = b"file";
pub const FILE_SIZE: u64 = 1 << 20;

/// Requests served, by opcode: the bench checks that each timed operation
/// cost exactly one round trip.
pub static COUNTS: [AtomicU64; 64] = [const { AtomicU64::new(0) }; 64];

pub fn count(opcode: u32) -> u64 {
    COUNTS
        .get(opcode as usize)
        .map_or(0, |c| c.load(Ordering::Relaxed))
}

pub fn get_u32(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(b[off..off + 4].try_into().unwrap())
}

pub fn get_u64(b: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(b[off..off + 8].try_into().unwrap())
}

pub fn put_u16(b: &mut [u8], off: usize, v: u16) {
    b[off..off + 2].copy_from_slice(&v.to_le_bytes());
}

pub fn put_u32(b: &mut [u8], off: usize, v: u32) {
    b[off..off + 4].copy_from_slice(&v.to_le_bytes());
}

pub fn put_u64(b: &mut [u8], off: usize, v: u64) {
    b[off..off + 8].copy_from_slice(&v.to_le_bytes());
}

#[derive(Debug, Clone, Copy)]
pub struct InHeader {
    pub len: u32,
    pub opcode: u32,
    pub unique: u64,
    pub nodeid: u64,
    /// Thread id of the caller.
    pub pid: u32,
}

impl InHeader {
    pub fn parse(b: &[u8]) -> Option<InHeader> {
        if b.len() < IN_HEADER_LEN {
            return None;
        }
        Some(InHeader {
            len: get_u32(b, 0),
            opcode: get_u32(b, 4),
            unique: get_u64(b, 8),
            nodeid: get_u64(b, 16),
            pid: get_u32(b, 32),
        })
    }
}

/// Size of the fixed struct that leads an opcode's arguments. The ring
/// transport hands exactly this part over in `op_in` and the rest in the
/// payload buffer; a classic frame is split at the same place.
pub fn op_struct_len(opcode: u32) -> usize {
    match opcode {
        op::GETATTR => 16,
        op::OPEN | op::OPENDIR => 8,
        op::READ | op::READDIR => 40,
        op::RELEASE | op::RELEASEDIR | op::FLUSH => 24,
        op::FORGET | op::INTERRUPT => 8,
        op::BATCH_FORGET => 8,
        op::INIT => 64,
        _ => 0,
    }
}

pub fn out_header(b: &mut [u8], len: usize, error: i32, unique: u64) {
    put_u32(b, 0, len as u32);
    put_u32(b, 4, error as u32);
    put_u64(b, 8, unique);
}

pub enum Outcome {
    /// Success with this many body bytes.
    Body(usize),
    /// A negative errno.
    Error(i32),
    /// FORGET and friends take no reply.
    NoReply,
}

fn attr(b: &mut [u8], ino: u64) {
    b[..88].fill(0);
    let (mode, nlink, size) = if ino == ROOT_INO {
        (libc::S_IFDIR | 0o755, 2, 0)
    } else {
        (libc::S_IFREG | 0o644, 1, FILE_SIZE)
    };
    put_u64(b, 0, ino);
    put_u64(b, 8, size);
    put_u64(b, 16, size.div_ceil(512));
    put_u32(b, 60, mode);
    put_u32(b, 64, nlink);
    put_u32(b, 80, 4096);
}

/// Byte `i` of the file: readers check it, so a transport that mixes up
/// buffers shows.
pub fn file_byte(i: u64) -> u8 {
    (i % 251) as u8
}

static FILE_DATA: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();

fn file_data() -> &'static [u8] {
    FILE_DATA.get_or_init(|| (0..FILE_SIZE).map(file_byte).collect())
}

/// Whether to sample where requests are served (`--placement`).
pub static PLACEMENT: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
/// Sampled requests answered on the CPU their caller sleeps on, and on another.
pub static SAME_CPU: AtomicU64 = AtomicU64::new(0);
pub static OTHER_CPU: AtomicU64 = AtomicU64::new(0);

/// Every 16th request, compares the CPU answering it with the CPU its
/// caller is blocked on (field 39 of /proc/self/task/TID/stat, which names
/// the CPU a sleeping task last ran on). Only callers in this process
/// (the bench's own clients) can be looked up.
fn sample_placement(pid: u32) {
    static N: AtomicU64 = AtomicU64::new(0);
    if !N.fetch_add(1, Ordering::Relaxed).is_multiple_of(16) {
        return;
    }
    // SAFETY: sched_getcpu has no preconditions.
    let here = unsafe { libc::sched_getcpu() };
    let Ok(stat) = std::fs::read_to_string(format!("/proc/self/task/{pid}/stat")) else {
        return;
    };
    // Fields after the command name, which may itself hold spaces.
    let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
        return;
    };
    // rest starts at field 3 (state); field 39 is its 37th.
    let Some(cpu) = rest
        .split_whitespace()
        .nth(36)
        .and_then(|c| c.parse::<i32>().ok())
    else {
        return;
    };
    if cpu == here {
        SAME_CPU.fetch_add(1, Ordering::Relaxed);
    } else {
        OTHER_CPU.fetch_add(1, Ordering::Relaxed);
    }
}

/// Answers one request. `op_in` is the fixed struct, `payload` what
/// follows it; the reply body goes to `body`.
pub fn handle(h: &InHeader, op_in: &[u8], payload: &[u8], body: &mut [u8]) -> Outcome {
    if let Some(c) = COUNTS.get(h.opcode as usize) {
        c.fetch_add(1, Ordering::Relaxed);
    }
    if PLACEMENT.load(Ordering::Relaxed) {
        sample_placement(h.pid);
    }
    let known = |ino| ino == ROOT_INO || ino == FILE_INO;
    match h.opcode {
        op::FORGET | op::BATCH_FORGET | op::INTERRUPT => Outcome::NoReply,
        op::LOOKUP => {
            let name = payload.split(|&c| c == 0).next().unwrap_or(&[]);
            if h.nodeid != ROOT_INO || name != FILE_NAME {
                return Outcome::Error(-libc::ENOENT);
            }
            body[..40].fill(0);
            put_u64(body, 0, FILE_INO);
            // Names stay cached, attributes never do: every stat after the
            // first lookup is exactly one GETATTR.
            put_u64(body, 16, 3600);
            attr(&mut body[40..], FILE_INO);
            Outcome::Body(128)
        }
        op::GETATTR => {
            if !known(h.nodeid) {
                return Outcome::Error(-libc::ENOENT);
            }
            body[..16].fill(0);
            attr(&mut body[16..], h.nodeid);
            Outcome::Body(104)
        }
        op::OPEN | op::OPENDIR => {
            if !known(h.nodeid) {
                return Outcome::Error(-libc::ENOENT);
            }
            if h.opcode == op::OPEN && h.nodeid != FILE_INO {
                return Outcome::Error(-libc::EISDIR);
            }
            let accmode = get_u32(op_in, 0) as i32 & libc::O_ACCMODE;
            if h.opcode == op::OPEN && accmode != libc::O_RDONLY {
                return Outcome::Error(-libc::EROFS);
            }
            body[..16].fill(0);
            if h.opcode == op::OPEN {
                // Every read reaches the daemon: one read, one round trip.
                put_u32(body, 8, FOPEN_DIRECT_IO);
            }
            Outcome::Body(16)
        }
        op::READ => {
            if h.nodeid != FILE_INO {
                return Outcome::Error(-libc::EISDIR);
            }
            let offset = get_u64(op_in, 8);
            let size = get_u32(op_in, 16) as u64;
            let start = offset.min(FILE_SIZE);
            let end = start.saturating_add(size).min(FILE_SIZE);
            let n = (end - start) as usize;
            if n > body.len() {
                return Outcome::Error(-libc::EINVAL);
            }
            body[..n].copy_from_slice(&file_data()[start as usize..end as usize]);
            Outcome::Body(n)
        }
        op::READDIR => {
            if h.nodeid != ROOT_INO {
                return Outcome::Error(-libc::ENOTDIR);
            }
            let offset = get_u64(op_in, 8) as usize;
            let size = (get_u32(op_in, 16) as usize).min(body.len());
            let entries: [(u64, &[u8], u32); 3] = [
                (ROOT_INO, b".", libc::DT_DIR as u32),
                (ROOT_INO, b"..", libc::DT_DIR as u32),
                (FILE_INO, FILE_NAME, libc::DT_REG as u32),
            ];
            let mut at = 0;
            for (i, (ino, name, kind)) in entries.iter().enumerate().skip(offset) {
                let rec = (24 + name.len()).next_multiple_of(8);
                if at + rec > size {
                    break;
                }
                body[at..at + rec].fill(0);
                put_u64(body, at, *ino);
                put_u64(body, at + 8, i as u64 + 1);
                put_u32(body, at + 16, name.len() as u32);
                put_u32(body, at + 20, *kind);
                body[at + 24..at + 24 + name.len()].copy_from_slice(name);
                at += rec;
            }
            Outcome::Body(at)
        }
        op::STATFS => {
            body[..80].fill(0);
            put_u64(body, 0, FILE_SIZE / 4096);
            put_u64(body, 24, 2);
            put_u32(body, 40, 4096);
            put_u32(body, 44, 255);
            put_u32(body, 48, 4096);
            Outcome::Body(80)
        }
        op::RELEASE | op::RELEASEDIR | op::FLUSH | op::DESTROY => Outcome::Body(0),
        _ => Outcome::Error(-libc::ENOSYS),
    }
}

/// The INIT reply body for the kernel's INIT request `init_in`, or why the
/// kernel cannot be served.
pub fn init_reply(init_in: &[u8], body: &mut [u8], uring: bool) -> Result<usize, String> {
    if init_in.len() < 20 {
        return Err(format!("INIT request too short ({} bytes)", init_in.len()));
    }
    let major = get_u32(init_in, 0);
    let minor = get_u32(init_in, 4);
    let flags = get_u32(init_in, 12);
    let flags2 = get_u32(init_in, 16);
    if major != FUSE_KERNEL_VERSION || minor < 36 || flags & FUSE_INIT_EXT == 0 {
        return Err(format!(
            "kernel speaks FUSE {major}.{minor} without extended init flags; 7.36 or later needed"
        ));
    }
    if uring && flags2 & FUSE_OVER_IO_URING_FLAGS2 == 0 {
        return Err("kernel does not offer FUSE_OVER_IO_URING: is \
                    /sys/module/fuse/parameters/enable_uring Y?"
            .into());
    }
    body[..64].fill(0);
    put_u32(body, 0, FUSE_KERNEL_VERSION);
    put_u32(body, 4, minor);
    put_u32(body, 8, get_u32(init_in, 8));
    put_u32(body, 12, FUSE_INIT_EXT);
    put_u16(body, 16, 16);
    put_u16(body, 18, 12);
    put_u32(body, 20, MAX_WRITE);
    put_u32(body, 24, 1);
    put_u32(body, 32, if uring { FUSE_OVER_IO_URING_FLAGS2 } else { 0 });
    Ok(64)
}

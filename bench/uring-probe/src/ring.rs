//! The io_uring transport (`CONFIG_FUSE_IO_URING`, kernel 6.14 and later).
//!
//! After INIT has been answered on `/dev/fuse` with `FUSE_OVER_IO_URING`,
//! the server registers ring entries with `IORING_OP_URING_CMD` on the
//! `/dev/fuse` descriptor. Each entry is a pair of buffers (a 288-byte
//! header area and a payload buffer); a registered entry parks in the
//! kernel until a request arrives, whose completion means "the request is
//! in your buffers". The reply goes back with COMMIT_AND_FETCH, which also
//! parks the entry for the next request, so one submission per request does
//! both the write and the read of the classic protocol.
//!
//! The kernel keeps one queue per possible CPU and files a request on the
//! queue of the CPU its caller runs on; it switches the connection over
//! only once every queue has an entry. Each queue here gets its own ring
//! and a thread pinned to that CPU, so the request is answered on the CPU
//! that issued it.

use crate::proto::{self, InHeader, Outcome};
use io_uring::{IoUring, cqueue, opcode, squeue, types};
use std::os::fd::RawFd;
use std::sync::mpsc;

/// `fuse_uring_cmd` values (`cmd_op` of the SQE).
const FUSE_IO_URING_CMD_REGISTER: u32 = 1;
const FUSE_IO_URING_CMD_COMMIT_AND_FETCH: u32 = 2;

/// `struct fuse_uring_req_header`: the in/out header area, the per-opcode
/// struct, then `struct fuse_uring_ent_in_out`.
const IN_OUT_OFF: usize = 0;
const OP_IN_OFF: usize = 128;
const ENT_IN_OUT_OFF: usize = 256;
const HEADER_LEN: usize = 256 + 32;
/// Within `fuse_uring_ent_in_out`: flags u64, commit_id u64, payload_sz u32.
const COMMIT_ID_OFF: usize = ENT_IN_OUT_OFF + 8;
const PAYLOAD_SZ_OFF: usize = ENT_IN_OUT_OFF + 16;

/// Entries per queue: one per request a CPU can have in flight at once is
/// enough for synchronous callers; a spare covers background requests.
pub const DEPTH: usize = 2;

/// The payload buffer size the kernel demands: max(8 KiB, max_write,
/// max_pages * page size), with the default max_pages of 32.
fn payload_len() -> usize {
    // SAFETY: sysconf has no memory-safety preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as usize;
    (proto::MAX_WRITE as usize).max(32 * page).max(8192)
}

struct Entry {
    header: Box<[u8; HEADER_LEN]>,
    payload: Vec<u8>,
    iov: Box<[libc::iovec; 2]>,
}

/// A URING_CMD SQE carrying `struct fuse_uring_cmd_req` in its 80-byte
/// command area.
fn cmd_sqe(
    fd: RawFd,
    cmd_op: u32,
    qid: u16,
    commit_id: u64,
    iov: Option<*const libc::iovec>,
    user_data: u64,
) -> squeue::Entry128 {
    let mut cmd = [0u8; 80];
    cmd[8..16].copy_from_slice(&commit_id.to_le_bytes());
    cmd[16..18].copy_from_slice(&qid.to_le_bytes());
    let mut b = opcode::UringCmd80::new(types::Fd(fd), cmd_op).cmd(cmd);
    if let Some(iov) = iov {
        b = b.addr(Some(iov as u64));
    }
    let sqe = b.build().user_data(user_data);
    if iov.is_none() {
        return sqe;
    }
    // The kernel takes the iovec count from sqe->len, which the io-uring
    // crate does not expose for URING_CMD; set it in the raw SQE.
    const _: () = assert!(size_of::<squeue::Entry128>() == 128);
    // SAFETY: Entry128 is repr(C) and exactly the 128 bytes of a SQE128,
    // and every bit pattern is a valid [u8; 128] and vice versa.
    let mut raw: [u8; 128] = unsafe { std::mem::transmute(sqe) };
    raw[24..28].copy_from_slice(&2u32.to_le_bytes());
    // SAFETY: as above; only the len field changed.
    unsafe { std::mem::transmute::<[u8; 128], squeue::Entry128>(raw) }
}

pub fn pin_to_cpu(cpu: usize) -> std::io::Result<()> {
    // SAFETY: cpu_set_t is plain data; zeroed is its empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: CPU_SET writes inside set; cpu is below CPU_SETSIZE (checked).
    if cpu >= libc::CPU_SETSIZE as usize {
        return Err(std::io::Error::from_raw_os_error(libc::EINVAL));
    }
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: set is a valid cpu_set_t of the size passed.
    let r = unsafe { libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set) };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Serves queue `qid` on the calling thread until unmount. Sends one
/// message on `ready` once its entries are registered (Ok) or failed.
pub fn serve_queue(fd: RawFd, qid: u16, ready: mpsc::Sender<Result<(), String>>) {
    if let Err(e) = pin_to_cpu(qid as usize) {
        // An offline CPU still needs its queue for the ring to start.
        eprintln!("uring-probe: queue {qid} not pinned: {e}");
    }
    // Declared before the ring so that it is dropped after it: the kernel
    // holds pointers into these buffers while the ring lives.
    let plen = payload_len();
    let mut ents: Vec<Entry> = (0..DEPTH)
        .map(|_| {
            let mut header = Box::new([0u8; HEADER_LEN]);
            let mut payload = vec![0u8; plen];
            let iov = Box::new([
                libc::iovec {
                    iov_base: header.as_mut_ptr().cast(),
                    iov_len: HEADER_LEN,
                },
                libc::iovec {
                    iov_base: payload.as_mut_ptr().cast(),
                    iov_len: plen,
                },
            ]);
            Entry {
                header,
                payload,
                iov,
            }
        })
        .collect();
    // Single issuer with deferred task work: the kernel's completion work
    // runs when this thread asks for completions, not by interrupting it.
    let ring = IoUring::<squeue::Entry128, cqueue::Entry>::builder()
        .setup_single_issuer()
        .setup_defer_taskrun()
        .build((DEPTH * 2) as u32);
    let mut ring = match ring {
        Ok(r) => r,
        Err(e) => {
            let _ = ready.send(Err(format!("io_uring_setup for queue {qid}: {e}")));
            return;
        }
    };
    for (i, e) in ents.iter().enumerate() {
        let sqe = cmd_sqe(
            fd,
            FUSE_IO_URING_CMD_REGISTER,
            qid,
            0,
            Some(e.iov.as_ptr()),
            i as u64,
        );
        // SAFETY: the iovecs and the buffers they point at live in `ents`,
        // which is dropped after the ring.
        if unsafe { ring.submission().push(&sqe) }.is_err() {
            let _ = ready.send(Err("submission queue full".into()));
            return;
        }
    }
    if let Err(e) = ring.submit() {
        let _ = ready.send(Err(format!("registering queue {qid}: {e}")));
        return;
    }
    // A registration the kernel refused completes at once.
    if let Some(cqe) = ring.completion().next() {
        let _ = ready.send(Err(format!(
            "registering queue {qid}: {}",
            std::io::Error::from_raw_os_error(-cqe.result())
        )));
        return;
    }
    let _ = ready.send(Ok(()));
    drop(ready);

    let mut scratch = vec![0u8; 4096];
    loop {
        if let Err(e) = ring.submit_and_wait(1) {
            if e.raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            eprintln!("uring-probe: queue {qid}: io_uring_enter: {e}");
            return;
        }
        let done: Vec<(u64, i32)> = ring
            .completion()
            .map(|c| (c.user_data(), c.result()))
            .collect();
        for (idx, res) in done {
            if res < 0 {
                // ENOTCONN / ECANCELED: the connection is being torn down.
                if res != -libc::ENOTCONN && res != -libc::ECANCELED {
                    eprintln!(
                        "uring-probe: queue {qid}: {}",
                        std::io::Error::from_raw_os_error(-res)
                    );
                }
                return;
            }
            let e = &mut ents[idx as usize];
            let Some(h) = InHeader::parse(&e.header[IN_OUT_OFF..]) else {
                return;
            };
            let commit_id = proto::get_u64(&e.header[..], COMMIT_ID_OFF);
            let in_len = (proto::get_u32(&e.header[..], PAYLOAD_SZ_OFF) as usize).min(plen);
            let op_len = proto::op_struct_len(h.opcode).min(OP_IN_OFF);
            // The reply body overwrites the payload buffer, so the request's
            // own payload (a name, at most a page here) moves aside first.
            if in_len > scratch.len() {
                scratch.resize(in_len, 0);
            }
            scratch[..in_len].copy_from_slice(&e.payload[..in_len]);
            let op_in = &e.header[OP_IN_OFF..OP_IN_OFF + op_len];
            let (body, error) = match proto::handle(&h, op_in, &scratch[..in_len], &mut e.payload) {
                Outcome::Body(b) => (b, 0),
                Outcome::Error(err) => (0, err),
                // Requests without reply never come through the ring, but
                // the entry must still go back to the kernel.
                Outcome::NoReply => (0, -libc::ENOSYS),
            };
            proto::out_header(
                &mut e.header[IN_OUT_OFF..],
                proto::OUT_HEADER_LEN + body,
                error,
                h.unique,
            );
            proto::put_u32(&mut e.header[..], PAYLOAD_SZ_OFF, body as u32);
            let sqe = cmd_sqe(
                fd,
                FUSE_IO_URING_CMD_COMMIT_AND_FETCH,
                qid,
                commit_id,
                None,
                idx,
            );
            // SAFETY: the entry's buffers, registered earlier, still live.
            if unsafe { ring.submission().push(&sqe) }.is_err() {
                eprintln!("uring-probe: queue {qid}: submission queue full");
                return;
            }
        }
    }
}

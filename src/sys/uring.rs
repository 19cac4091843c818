//! One queue of FUSE over io_uring: a ring whose entries are registered
//! with `IORING_OP_URING_CMD` on a `/dev/fuse` descriptor. The kernel keeps
//! pointers into each entry's buffers while it is registered, so the queue
//! owns the buffers and the ring together and lets go of the ring first.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;

use io_uring::{IoUring, cqueue, opcode, squeue, types};

const FUSE_IO_URING_CMD_REGISTER: u32 = 1;
const FUSE_IO_URING_CMD_COMMIT_AND_FETCH: u32 = 2;

/// `struct fuse_uring_req_header`: `in_out` (128), `op_in` (128),
/// `fuse_uring_ent_in_out` (32).
pub const URING_HEADER_LEN: usize = 256 + 32;

/// `FUSE_DEV_IOC_BACKING_CLOSE`: `_IOW(229, 2, uint32_t)`.
const FUSE_DEV_IOC_BACKING_CLOSE: libc::c_ulong = 0x4004_e502;

struct Entry {
    header: Box<[u8; URING_HEADER_LEN]>,
    payload: Box<[u8]>,
    iov: Box<[libc::iovec; 2]>,
}

/// A registered queue. Field order matters: the ring is dropped (and with
/// it every registration) before the buffers it points into.
pub struct FuseQueue {
    ring: IoUring<squeue::Entry128, cqueue::Entry>,
    entries: Vec<Entry>,
    dev: Arc<OwnedFd>,
    qid: u16,
}

/// A URING_CMD SQE carrying `struct fuse_uring_cmd_req` (commit_id at 8,
/// qid at 16) in its 80-byte command area.
fn cmd_sqe(
    dev: &OwnedFd,
    cmd_op: u32,
    qid: u16,
    commit_id: u64,
    iov: Option<*const libc::iovec>,
    user_data: u64,
) -> squeue::Entry128 {
    let mut cmd = [0u8; 80];
    cmd[8..16].copy_from_slice(&commit_id.to_le_bytes());
    cmd[16..18].copy_from_slice(&qid.to_le_bytes());
    let mut b = opcode::UringCmd80::new(types::Fd(dev.as_raw_fd()), cmd_op).cmd(cmd);
    if let Some(iov) = iov {
        b = b.addr(Some(iov as u64));
    }
    let sqe = b.build().user_data(user_data);
    if iov.is_none() {
        return sqe;
    }
    // The kernel takes the iovec count from sqe->len, which the io-uring
    // crate does not expose for URING_CMD.
    const _: () = assert!(size_of::<squeue::Entry128>() == 128);
    // SAFETY: Entry128 is repr(C), exactly the 128 bytes of an SQE128, and
    // any bit pattern is valid for both types.
    let mut raw: [u8; 128] = unsafe { std::mem::transmute(sqe) };
    raw[24..28].copy_from_slice(&2u32.to_le_bytes());
    // SAFETY: as above; only the len field changed.
    unsafe { std::mem::transmute::<[u8; 128], squeue::Entry128>(raw) }
}

impl FuseQueue {
    /// Sets up a ring and registers `depth` entries with payload buffers of
    /// `payload_len` bytes for queue `qid`. Fails when the kernel refuses
    /// a registration (which also turns the ring off for the connection).
    pub fn register(
        dev: Arc<OwnedFd>,
        qid: u16,
        depth: usize,
        payload_len: usize,
    ) -> io::Result<FuseQueue> {
        let entries: Vec<Entry> = (0..depth)
            .map(|_| {
                let mut header = Box::new([0u8; URING_HEADER_LEN]);
                let mut payload = vec![0u8; payload_len].into_boxed_slice();
                let iov = Box::new([
                    libc::iovec {
                        iov_base: header.as_mut_ptr().cast(),
                        iov_len: URING_HEADER_LEN,
                    },
                    libc::iovec {
                        iov_base: payload.as_mut_ptr().cast(),
                        iov_len: payload_len,
                    },
                ]);
                Entry {
                    header,
                    payload,
                    iov,
                }
            })
            .collect();
        // One issuer, task work deferred until it asks for completions: the
        // kernel's completion work never interrupts a request being answered.
        let ring = IoUring::<squeue::Entry128, cqueue::Entry>::builder()
            .setup_single_issuer()
            .setup_defer_taskrun()
            .build((depth * 2) as u32)?;
        let mut q = FuseQueue {
            ring,
            entries,
            dev,
            qid,
        };
        for i in 0..q.entries.len() {
            let sqe = cmd_sqe(
                &q.dev,
                FUSE_IO_URING_CMD_REGISTER,
                qid,
                0,
                Some(q.entries[i].iov.as_ptr()),
                i as u64,
            );
            // SAFETY: the iovecs and the buffers they point at are boxed in
            // `q.entries`, which is dropped after `q.ring`.
            unsafe { q.ring.submission().push(&sqe) }
                .map_err(|_| io::Error::other("io_uring submission queue full"))?;
        }
        q.ring.submit()?;
        // A refused registration completes at once; an accepted one parks
        // until a request comes.
        if let Some(cqe) = q.ring.completion().next() {
            return Err(io::Error::from_raw_os_error(-cqe.result()));
        }
        Ok(q)
    }

    /// Waits for requests: fills `done` with (entry, result) pairs; a
    /// negative result is an errno (the connection ending, mostly).
    pub fn wait(&mut self, done: &mut Vec<(usize, i32)>) -> io::Result<()> {
        done.clear();
        loop {
            match self.ring.submit_and_wait(1) {
                Ok(_) => break,
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                Err(e) => return Err(e),
            }
        }
        done.extend(
            self.ring
                .completion()
                .map(|c| (c.user_data() as usize, c.result())),
        );
        Ok(())
    }

    /// Entry `i`'s header area and payload buffer.
    pub fn entry(&mut self, i: usize) -> Option<(&mut [u8; URING_HEADER_LEN], &mut [u8])> {
        let e = self.entries.get_mut(i)?;
        Some((&mut e.header, &mut e.payload))
    }

    /// Sends entry `i`'s reply (already in its buffers) and parks it for
    /// the next request; submitted with the next [`FuseQueue::wait`].
    pub fn commit(&mut self, i: usize, commit_id: u64) -> io::Result<()> {
        let sqe = cmd_sqe(
            &self.dev,
            FUSE_IO_URING_CMD_COMMIT_AND_FETCH,
            self.qid,
            commit_id,
            None,
            i as u64,
        );
        // SAFETY: the entry's buffers were registered and are still owned
        // by `self.entries`.
        unsafe { self.ring.submission().push(&sqe) }
            .map_err(|_| io::Error::other("io_uring submission queue full"))
    }
}

/// Turns the ring off for `dev`'s connection after INIT agreed to it but
/// its queues cannot all be registered: until every queue has an entry the
/// kernel holds every request back, and only a refused registration (here
/// of a queue that cannot exist) makes it serve over `/dev/fuse` instead.
pub fn refuse(dev: Arc<OwnedFd>) {
    let _ = FuseQueue::register(dev, u16::MAX, 1, 8192);
}

/// Closes a passthrough backing file registered on `dev`.
pub fn close_backing(dev: &OwnedFd, id: u32) -> io::Result<()> {
    // SAFETY: the ioctl reads one u32 through a pointer that is valid for
    // the call.
    let r = unsafe {
        libc::ioctl(
            dev.as_raw_fd(),
            FUSE_DEV_IOC_BACKING_CLOSE as _,
            &id as *const u32,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Keeps the calling thread on `cpu`.
pub fn pin_to_cpu(cpu: usize) -> io::Result<()> {
    let mut set = rustix::thread::CpuSet::new();
    if cpu >= rustix::thread::CpuSet::MAX_CPU {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    set.set(cpu);
    Ok(rustix::thread::sched_setaffinity(None, &set)?)
}

//! The load: client threads issuing one kind of system call in a loop, each
//! of which costs one FUSE round trip on a mount with attribute timeout 0
//! (stat) or direct I/O (read).

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Op {
    /// fstat of an O_PATH descriptor: no lookup, no permission walk, just
    /// the attribute refresh.
    Stat,
    /// 4 KiB pread at successive offsets.
    Read,
}

impl Op {
    pub fn parse(s: &str) -> Option<Op> {
        match s {
            "stat" => Some(Op::Stat),
            "read" => Some(Op::Read),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Op::Stat => "stat",
            Op::Read => "read",
        }
    }
}

#[derive(Debug)]
pub struct LoadResult {
    /// Mean over clients of each client's time per operation.
    pub us_per_op: f64,
    /// Operations per second, all clients together.
    pub ops_per_sec: f64,
    /// Every operation issued, warm-up included (to compare with the
    /// requests the daemon saw).
    pub ops_total: u64,
}

struct ClientResult {
    ops: u64,
    ops_total: u64,
    elapsed: Duration,
}

const WARMUP: Duration = Duration::from_millis(200);
const READ_LEN: usize = 4096;

fn open(path: &Path, op: Op) -> Result<i32, String> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| format!("{}: path holds a NUL byte", path.display()))?;
    let flags = match op {
        Op::Stat => libc::O_PATH,
        Op::Read => libc::O_RDONLY,
    } | libc::O_NOFOLLOW
        | libc::O_CLOEXEC;
    // SAFETY: c is a valid NUL-terminated string.
    let fd = unsafe { libc::open(c.as_ptr(), flags) };
    if fd < 0 {
        return Err(format!(
            "{}: {}",
            path.display(),
            std::io::Error::last_os_error()
        ));
    }
    Ok(fd)
}

/// One operation; `i` picks the read offset. Returns an error message when
/// the call fails or returns something other than the file.
fn one(fd: i32, op: Op, i: u64, buf: &mut [u8], size: u64) -> Result<(), String> {
    match op {
        Op::Stat => {
            // SAFETY: st is plain data that fstat fills.
            let mut st: libc::stat = unsafe { std::mem::zeroed() };
            // SAFETY: fd is open; st is a valid out pointer.
            if unsafe { libc::fstat(fd, &mut st) } != 0 {
                return Err(format!("fstat: {}", std::io::Error::last_os_error()));
            }
            if st.st_size as u64 != size {
                return Err(format!("fstat: size {} instead of {size}", st.st_size));
            }
        }
        Op::Read => {
            let blocks = (size / READ_LEN as u64).max(1);
            let off = (i % blocks) * READ_LEN as u64;
            // SAFETY: buf is a live writable slice of at least READ_LEN bytes.
            let n = unsafe { libc::pread(fd, buf.as_mut_ptr().cast(), READ_LEN, off as i64) };
            if n != READ_LEN as isize {
                return Err(format!(
                    "pread at {off}: {}",
                    if n < 0 {
                        std::io::Error::last_os_error().to_string()
                    } else {
                        format!("{n} bytes")
                    }
                ));
            }
        }
    }
    Ok(())
}

fn file_size(fd: i32) -> Result<u64, String> {
    // SAFETY: as in `one`.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: as in `one`.
    if unsafe { libc::fstat(fd, &mut st) } != 0 {
        return Err(format!("fstat: {}", std::io::Error::last_os_error()));
    }
    if st.st_mode & libc::S_IFMT != libc::S_IFREG {
        return Err("not a regular file".into());
    }
    if (st.st_size as u64) < READ_LEN as u64 {
        return Err(format!("file of {} bytes, {READ_LEN} needed", st.st_size));
    }
    Ok(st.st_size as u64)
}

/// Runs `clients` threads doing `op` on `path` for `secs` after a short
/// warm-up. `check` verifies read data when the file's content is known.
pub fn run(
    path: &Path,
    op: Op,
    clients: usize,
    secs: f64,
    pin: bool,
    check: Option<fn(u64) -> u8>,
) -> Result<LoadResult, String> {
    let barrier = Arc::new(Barrier::new(clients));
    let run_for = Duration::from_secs_f64(secs);
    let threads: Vec<_> = (0..clients)
        .map(|c| {
            let path = path.to_path_buf();
            let barrier = barrier.clone();
            std::thread::spawn(move || -> Result<ClientResult, String> {
                let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
                let pinned = if pin {
                    crate::ring::pin_to_cpu(c % cpus)
                        .map_err(|e| format!("pinning client {c}: {e}"))
                } else {
                    Ok(())
                };
                let fd = pinned.and_then(|()| open(&path, op));
                // Everyone reaches the barrier, even after a failed open.
                barrier.wait();
                let fd = fd?;
                let res = (|| {
                    let size = file_size(fd)?;
                    let mut buf = vec![0u8; READ_LEN];
                    // Clients start at different offsets so they do not
                    // read the same block in lockstep.
                    let mut i = c as u64 * 61;
                    let warm_end = Instant::now() + WARMUP;
                    while Instant::now() < warm_end {
                        for _ in 0..64 {
                            one(fd, op, i, &mut buf, size)?;
                            i += 1;
                        }
                    }
                    if let (Op::Read, Some(f)) = (op, check) {
                        let blocks = (size / READ_LEN as u64).max(1);
                        let off = ((i - 1) % blocks) * READ_LEN as u64;
                        if let Some(at) = (0..READ_LEN).find(|&k| buf[k] != f(off + k as u64)) {
                            return Err(format!("read at {off}: wrong byte at +{at}"));
                        }
                    }
                    let warm_ops = i - c as u64 * 61;
                    let start = Instant::now();
                    let end = start + run_for;
                    let mut ops = 0u64;
                    loop {
                        for _ in 0..64 {
                            one(fd, op, i, &mut buf, size)?;
                            i += 1;
                        }
                        ops += 64;
                        if Instant::now() >= end {
                            break;
                        }
                    }
                    Ok(ClientResult {
                        ops,
                        ops_total: ops + warm_ops,
                        elapsed: start.elapsed(),
                    })
                })();
                // SAFETY: fd was opened above and is closed once.
                unsafe { libc::close(fd) };
                res
            })
        })
        .collect();
    let mut results = Vec::new();
    for t in threads {
        results.push(
            t.join()
                .map_err(|_| "client thread panicked".to_string())??,
        );
    }
    let us_per_op = results
        .iter()
        .map(|r| r.elapsed.as_secs_f64() * 1e6 / r.ops as f64)
        .sum::<f64>()
        / results.len() as f64;
    let ops_per_sec = results
        .iter()
        .map(|r| r.ops as f64 / r.elapsed.as_secs_f64())
        .sum();
    Ok(LoadResult {
        us_per_op,
        ops_per_sec,
        ops_total: results.iter().map(|r| r.ops_total).sum(),
    })
}

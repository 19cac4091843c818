//! uring-probe: measures what a FUSE request round trip costs over classic
//! `/dev/fuse` read/write and over FUSE-over-io_uring, on one tiny
//! filesystem served both ways. See bench/uring.md.
//!
//!   uring-probe bench --mode classic|uring --mnt DIR [--secs S] [--work LIST]
//!                     [--threads N] [--pin-clients] [--placement]
//!   uring-probe load --path FILE --op stat|read [--clients N] [--secs S]
//!                    [--pin-clients]
//!
//! `bench` mounts the filesystem on DIR (root only), runs the workloads of
//! LIST (default `stat:1,stat:2,read:1`: operation and number of parallel
//! clients) and unmounts; --threads sets the classic readers (default: one
//! per CPU). --pin-clients pins client i to CPU i. --placement samples
//! whether requests are answered on the CPU their caller sleeps on, and
//! prints a PLACEMENT line with `samecpu=FRACTION` after each result (the sampling itself costs time:
//! keep it out of the timed figures). `load` runs one workload on any file, for
//! comparing with other filesystems. Both print one line per workload:
//!
//!   RESULT mode=M op=O clients=N us=MICROSECONDS_PER_OP kops=THOUSANDS_PER_SEC
//!          reqs=REQUESTS_PER_OP ops=OPERATIONS_ISSUED
//!
//! (`reqs` is `-` for `load`, which cannot see the daemon's requests.)

mod classic;
mod load;
mod proto;
mod ring;

use load::Op;
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::mpsc;

#[derive(Debug, Clone, Copy, PartialEq)]
enum Mode {
    Classic,
    Uring,
}

#[derive(Debug)]
struct Args {
    verb: String,
    mode: Option<Mode>,
    mnt: Option<PathBuf>,
    path: Option<PathBuf>,
    op: Op,
    clients: usize,
    secs: f64,
    work: Vec<(Op, usize)>,
    threads: Option<usize>,
    pin_clients: bool,
    placement: bool,
}

fn parse_work(s: &str) -> Result<Vec<(Op, usize)>, String> {
    s.split(',')
        .map(|w| {
            let (op, n) = w
                .split_once(':')
                .ok_or_else(|| format!("--work: `{w}` is not OP:CLIENTS"))?;
            let op = Op::parse(op).ok_or_else(|| format!("--work: unknown operation `{op}`"))?;
            let n = parse_clients(n)?;
            Ok((op, n))
        })
        .collect()
}

fn parse_clients(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if (1..=64).contains(&n) => Ok(n),
        _ => Err(format!("clients: `{s}` is not a number from 1 to 64")),
    }
}

fn parse_args() -> Result<Args, String> {
    let mut it = std::env::args_os().skip(1);
    let verb = it
        .next()
        .and_then(|v| v.into_string().ok())
        .ok_or("usage: uring-probe bench|load ... (see the source header)")?;
    if verb != "bench" && verb != "load" {
        return Err(format!("unknown verb `{verb}`: bench or load"));
    }
    let mut a = Args {
        verb,
        mode: None,
        mnt: None,
        path: None,
        op: Op::Stat,
        clients: 1,
        secs: 2.0,
        work: parse_work("stat:1,stat:2,read:1")?,
        threads: None,
        pin_clients: false,
        placement: false,
    };
    while let Some(flag) = it.next() {
        let flag = flag
            .into_string()
            .map_err(|f| format!("unknown argument {f:?}"))?;
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--mode" => {
                let v = value()?;
                a.mode = Some(match v.to_str() {
                    Some("classic") => Mode::Classic,
                    Some("uring") => Mode::Uring,
                    _ => return Err(format!("--mode: {v:?} is not classic or uring")),
                })
            }
            "--mnt" => a.mnt = Some(PathBuf::from(value()?)),
            "--path" => a.path = Some(PathBuf::from(value()?)),
            "--op" => {
                let v = value()?;
                a.op = v
                    .to_str()
                    .and_then(Op::parse)
                    .ok_or_else(|| format!("--op: {v:?} is not stat or read"))?
            }
            "--clients" => a.clients = parse_clients(&value()?.to_string_lossy())?,
            "--secs" => {
                let v = value()?;
                a.secs = match v.to_str().and_then(|s| s.parse::<f64>().ok()) {
                    Some(s) if (0.05..=3600.0).contains(&s) => s,
                    _ => return Err(format!("--secs: {v:?} is not seconds from 0.05 to 3600")),
                }
            }
            "--work" => a.work = parse_work(&value()?.to_string_lossy())?,
            "--threads" => a.threads = Some(parse_clients(&value()?.to_string_lossy())?),
            "--pin-clients" => a.pin_clients = true,
            "--placement" => a.placement = true,
            _ => return Err(format!("unknown argument `{flag}`")),
        }
    }
    Ok(a)
}

fn cstr(p: &Path) -> Result<CString, String> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| format!("{}: holds a NUL byte", p.display()))
}

fn possible_cpus() -> Result<usize, String> {
    let s = std::fs::read_to_string("/sys/devices/system/cpu/possible")
        .map_err(|e| format!("/sys/devices/system/cpu/possible: {e}"))?;
    // "0-N" or "0"; the kernel sizes its queue array by the count of
    // possible CPUs, which on every configuration seen is the last id + 1.
    let last = s.trim().rsplit(['-', ',']).next().unwrap_or("0");
    last.parse::<usize>()
        .map(|n| n + 1)
        .map_err(|_| format!("/sys/devices/system/cpu/possible: cannot parse {s:?}"))
}

struct Mount {
    mnt: PathBuf,
    fd: i32,
}

impl Mount {
    fn new(mnt: &Path) -> Result<Mount, String> {
        let md = std::fs::symlink_metadata(mnt).map_err(|e| format!("{}: {e}", mnt.display()))?;
        if !md.is_dir() {
            return Err(format!("{}: not a directory", mnt.display()));
        }
        let dev = c"/dev/fuse";
        // SAFETY: dev is a valid C string.
        let fd = unsafe { libc::open(dev.as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
        if fd < 0 {
            return Err(format!("/dev/fuse: {}", std::io::Error::last_os_error()));
        }
        let opts = CString::new(format!(
            "fd={fd},rootmode=40000,user_id=0,group_id=0,allow_other"
        ))
        .unwrap();
        let target = cstr(mnt)?;
        // SAFETY: all pointers are valid C strings for the call's duration.
        let r = unsafe {
            libc::mount(
                c"uring-probe".as_ptr(),
                target.as_ptr(),
                c"fuse.uring-probe".as_ptr(),
                libc::MS_NOSUID | libc::MS_NODEV,
                opts.as_ptr().cast(),
            )
        };
        if r != 0 {
            let e = std::io::Error::last_os_error();
            // SAFETY: fd is ours and closed once.
            unsafe { libc::close(fd) };
            return Err(format!("mounting on {}: {e}", mnt.display()));
        }
        Ok(Mount {
            mnt: mnt.to_path_buf(),
            fd,
        })
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let Ok(t) = cstr(&self.mnt) else { return };
        // SAFETY: t is a valid C string.
        if unsafe { libc::umount2(t.as_ptr(), 0) } != 0 {
            // SAFETY: as above.
            unsafe { libc::umount2(t.as_ptr(), libc::MNT_DETACH) };
        }
    }
}

/// Answers the kernel's INIT on `/dev/fuse`.
fn init(fd: i32, mode: Mode) -> Result<(), String> {
    let mut buf = vec![0u8; classic::BUF_LEN];
    let n = classic::read_frame(fd, &mut buf).map_err(|e| format!("reading INIT: {e}"))?;
    let h = proto::InHeader::parse(&buf[..n]).ok_or("short INIT request")?;
    if h.opcode != proto::op::INIT {
        return Err(format!("first request is opcode {}, not INIT", h.opcode));
    }
    let mut out = vec![0u8; 16 + 64];
    let len = proto::OUT_HEADER_LEN
        + proto::init_reply(
            &buf[proto::IN_HEADER_LEN..n],
            &mut out[proto::OUT_HEADER_LEN..],
            mode == Mode::Uring,
        )?;
    proto::out_header(&mut out, len, 0, h.unique);
    classic::write_frame(fd, &out[..len]).map_err(|e| format!("replying to INIT: {e}"))
}

fn report(
    mode: &str,
    op: Op,
    clients: usize,
    r: &load::LoadResult,
    reqs: Option<u64>,
    placement: Option<f64>,
) {
    let reqs = reqs.map_or("-".to_string(), |q| {
        format!("{:.3}", q as f64 / r.ops_total as f64)
    });
    println!(
        "RESULT mode={mode} op={} clients={clients} us={:.3} kops={:.1} reqs={reqs} ops={}",
        op.name(),
        r.us_per_op,
        r.ops_per_sec / 1000.0,
        r.ops_total
    );
    if let Some(p) = placement {
        println!(
            "PLACEMENT mode={mode} op={} clients={clients} samecpu={p:.3}",
            op.name()
        );
    }
}

fn bench(a: &Args) -> Result<(), String> {
    let mode = a.mode.ok_or("bench needs --mode classic|uring")?;
    let mnt = a.mnt.as_deref().ok_or("bench needs --mnt DIR")?;
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err("bench mounts with mount(2) and needs root".into());
    }
    let cpus = possible_cpus()?;
    proto::PLACEMENT.store(a.placement, Relaxed);
    let m = Mount::new(mnt)?;
    init(m.fd, mode)?;
    let fd = m.fd;
    match mode {
        Mode::Classic => {
            // As many readers as CPUs, as fuser runs unionfuse by default.
            for _ in 0..a.threads.unwrap_or(cpus) {
                std::thread::spawn(move || classic::serve(fd));
            }
        }
        Mode::Uring => {
            // FORGET and INTERRUPT still come through /dev/fuse.
            std::thread::spawn(move || classic::serve(fd));
            let (tx, rx) = mpsc::channel();
            for q in 0..cpus {
                let tx = tx.clone();
                std::thread::spawn(move || ring::serve_queue(fd, q as u16, tx));
            }
            drop(tx);
            for _ in 0..cpus {
                rx.recv().map_err(|_| "a ring thread died")??;
            }
        }
    }
    let file = mnt.join(std::str::from_utf8(proto::FILE_NAME).unwrap());
    let mname = match mode {
        Mode::Classic => "classic",
        Mode::Uring => "uring",
    };
    for &(op, clients) in &a.work {
        let counted = match op {
            Op::Stat => proto::op::GETATTR,
            Op::Read => proto::op::READ,
        };
        let before = proto::count(counted);
        let (same0, other0) = (
            proto::SAME_CPU.load(Relaxed),
            proto::OTHER_CPU.load(Relaxed),
        );
        let r = load::run(
            &file,
            op,
            clients,
            a.secs,
            a.pin_clients,
            Some(proto::file_byte),
        )?;
        let placement = a.placement.then(|| {
            let same = proto::SAME_CPU.load(Relaxed) - same0;
            let other = proto::OTHER_CPU.load(Relaxed) - other0;
            same as f64 / (same + other).max(1) as f64
        });
        report(
            mname,
            op,
            clients,
            &r,
            Some(proto::count(counted) - before),
            placement,
        );
    }
    drop(m);
    Ok(())
}

fn run() -> Result<(), String> {
    let a = parse_args()?;
    match a.verb.as_str() {
        "bench" => bench(&a),
        _ => {
            let path = a.path.as_deref().ok_or("load needs --path FILE")?;
            let r = load::run(path, a.op, a.clients, a.secs, a.pin_clients, None)?;
            report("external", a.op, a.clients, &r, None, None);
            Ok(())
        }
    }
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("uring-probe: {e}");
            ExitCode::FAILURE
        }
    }
}

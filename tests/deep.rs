//! Trees far deeper than PATH_MAX allows to name at once, as images may
//! hold: the daemon and the tooling walk them without recursion on a
//! small stack, reaching every level through descriptors.
// The fixtures in common/ and the *at calls below need libc; every unsafe
// block says why it is sound.
#![allow(unsafe_code)]

mod common;

use std::ffi::{CStr, CString, OsStr};
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd};
use std::path::Path;
use std::time::Duration;

use common::{Mounted, Scratch, daemon_pids};

/// Levels of the deep chain; its full path is about twice as many bytes.
const DEPTH: usize = 4000;

fn openat_dir(dir: &File, name: &CStr) -> std::io::Result<File> {
    // SAFETY: name is NUL-terminated; the fd returned is owned by the File.
    let fd = unsafe {
        libc::openat(
            dir.as_raw_fd(),
            name.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd was just returned by openat and is owned by nobody else.
    Ok(unsafe { File::from_raw_fd(fd) })
}

fn mkdirat(dir: &File, name: &CStr) -> std::io::Result<()> {
    // SAFETY: name is NUL-terminated.
    if unsafe { libc::mkdirat(dir.as_raw_fd(), name.as_ptr(), 0o755) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// A descriptor cache far smaller than the depth, for every daemon the
/// tests start: every level is re-opened from its parent's descriptor
/// again and again.
fn small_fd_budget() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    // SAFETY: every test of this binary calls this before it starts a
    // thread or a process, and the others wait on the Once meanwhile, so
    // nothing reads the environment while it changes.
    ONCE.call_once(|| unsafe { std::env::set_var("UNIONFUSE_FD_BUDGET", "64") });
}

/// `root/top/d/d/.../d` (DEPTH levels below `top`); returns the bottom.
fn make_chain(root: &Path) -> File {
    let mut dir = File::open(root).expect("open root");
    mkdirat(&dir, c"top").expect("mkdir top");
    dir = openat_dir(&dir, c"top").expect("open top");
    for _ in 0..DEPTH {
        mkdirat(&dir, c"d").expect("mkdir");
        dir = openat_dir(&dir, c"d").expect("open");
    }
    dir
}

/// The bottom of the chain under `root/top_name`.
fn walk_chain(root: &Path, top_name: &CStr) -> std::io::Result<File> {
    let mut dir = openat_dir(&File::open(root)?, top_name)?;
    for _ in 0..DEPTH {
        dir = openat_dir(&dir, c"d")?;
    }
    Ok(dir)
}

fn create_at(dir: &File, name: &CStr, data: &[u8]) {
    // SAFETY: name is NUL-terminated; the fd returned is owned by the File.
    let fd = unsafe {
        libc::openat(
            dir.as_raw_fd(),
            name.as_ptr(),
            libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_CLOEXEC,
            0o644,
        )
    };
    assert!(fd >= 0, "create: {}", std::io::Error::last_os_error());
    // SAFETY: as above.
    let mut f = unsafe { File::from_raw_fd(fd) };
    std::io::Write::write_all(&mut f, data).expect("write");
}

fn read_at(dir: &File, name: &CStr) -> Vec<u8> {
    // SAFETY: name is NUL-terminated; the fd returned is owned by the File.
    let fd = unsafe {
        libc::openat(
            dir.as_raw_fd(),
            name.as_ptr(),
            libc::O_RDONLY | libc::O_CLOEXEC,
        )
    };
    assert!(fd >= 0, "open: {}", std::io::Error::last_os_error());
    // SAFETY: as above.
    let mut f = unsafe { File::from_raw_fd(fd) };
    let mut v = Vec::new();
    std::io::Read::read_to_end(&mut f, &mut v).expect("read");
    v
}

/// A file created at the bottom of a lower chain 4,000 levels deep (every
/// ancestor copied up), then the chain's top directory renamed (the whole
/// lower tree copied up), with the descriptor cache so small that every
/// level is re-opened from its parent: the daemon survives, the tree is
/// right after a remount, and `diff` walks it.
#[test]
fn a_tree_thousands_of_levels_deep_is_written_renamed_and_diffed() {
    small_fd_budget();
    let s = Scratch::new();
    let lower = s.mkdir("lower");
    let bottom = make_chain(&lower);
    create_at(&bottom, c"leaf", b"lower leaf\n");
    drop(bottom);
    let upper = s.mkdir("upper");
    let mnt = s.mkdir("mnt");
    let work = s.mkdir("work");
    let work = work.to_str().expect("utf-8");
    let m = Mounted::new(&[&lower], Some(&upper), &mnt, &["--work", work]);
    {
        let bottom = walk_chain(&m.mnt, c"top").expect("walk down the mount");
        create_at(&bottom, c"new", b"made at the bottom\n");
        assert_eq!(read_at(&bottom, c"leaf"), b"lower leaf\n");
    }
    std::fs::rename(m.path("top"), m.path("moved")).expect("rename the deep lower tree");
    {
        let bottom = walk_chain(&m.mnt, c"moved").expect("walk the renamed tree");
        assert_eq!(read_at(&bottom, c"new"), b"made at the bottom\n");
        assert_eq!(read_at(&bottom, c"leaf"), b"lower leaf\n");
    }
    assert!(
        walk_chain(&m.mnt, c"top").is_err(),
        "the old name still resolves"
    );
    drop(m);

    let m = Mounted::new(&[&lower], Some(&upper), &mnt, &["--work", work]);
    let bottom = walk_chain(&m.mnt, c"moved").expect("walk after a remount");
    assert_eq!(read_at(&bottom, c"new"), b"made at the bottom\n");
    drop(bottom);
    drop(m);

    // Megabytes of paths: to a file, not a pipe nobody reads until exit.
    let listing = s.path("diff.txt");
    let out = std::process::Command::new(common::bin())
        .arg("diff")
        .arg("--upper")
        .arg(&upper)
        .arg("--lower")
        .arg(&lower)
        .stdout(File::create(&listing).expect("diff output"))
        .output()
        .expect("run unionfuse diff");
    assert!(
        out.status.success(),
        "diff of a deep upper: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read(&listing).expect("read diff");
    let text = String::from_utf8_lossy(&text);
    assert!(
        text.contains("D /top\n"),
        "{}",
        &text[..text.len().min(300)]
    );
    assert!(
        text.lines().any(|l| l.starts_with("A /moved/d/d/")),
        "no added deep path"
    );
    // The lower is untouched.
    let bottom = walk_chain(&lower, c"top").expect("lower chain");
    assert_eq!(read_at(&bottom, c"leaf"), b"lower leaf\n");
}

/// Levels of the chain of long names, and their length: a path of more
/// than PATH_MAX (4096) bytes in few levels.
const LONG_LEVELS: usize = 24;
const LONG_NAME: usize = 250;

fn long_name(i: usize) -> CString {
    CString::new(format!("{i:03}{}", "n".repeat(LONG_NAME - 3))).expect("name")
}

/// `root/long/NNN.../NNN...` (LONG_LEVELS levels); returns the bottom.
fn make_long_chain(root: &Path) -> File {
    let mut dir = File::open(root).expect("open root");
    mkdirat(&dir, c"long").expect("mkdir long");
    dir = openat_dir(&dir, c"long").expect("open long");
    for i in 0..LONG_LEVELS {
        let n = long_name(i);
        mkdirat(&dir, &n).expect("mkdir");
        dir = openat_dir(&dir, &n).expect("open");
    }
    dir
}

fn walk_long_chain(root: &Path, top: &CStr) -> std::io::Result<File> {
    let mut dir = openat_dir(&File::open(root)?, top)?;
    for i in 0..LONG_LEVELS {
        dir = openat_dir(&dir, &long_name(i))?;
    }
    Ok(dir)
}

/// CPU time of process `pid` so far, user and system.
fn cpu_of(pid: libc::pid_t) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat of the daemon");
    let rest = stat.rsplit_once(") ").expect("stat format").1;
    let f: Vec<u64> = rest
        .split(' ')
        .skip(11)
        .take(2)
        .map(|v| v.parse().expect("ticks"))
        .collect();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
    Duration::from_millis((f[0] + f[1]) * 1000 / hz)
}

/// `unionfuse ARGS`, which must succeed, in its own process (a normal
/// stack, a fresh one); stdout goes to `out` when given. Returns the CPU
/// time it used, which, unlike the time it took, does not depend on what
/// else the machine runs.
fn verb(args: &[&OsStr], out: Option<&Path>) -> Duration {
    let t0 = std::time::Instant::now();
    let mut cmd = std::process::Command::new(common::bin());
    // SAFETY: the closure only calls setrlimit, which is async-signal-safe.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
            // The soft limit most shells start with, below the depth: the
            // verb must raise it (or never hold a descriptor per level).
            let mut lim: libc::rlimit = std::mem::zeroed();
            libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
            lim.rlim_cur = lim.rlim_cur.min(1024);
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
            Ok(())
        })
    };
    // Reaped by wait4 below, which also tells the CPU time it used.
    #[allow(clippy::zombie_processes)]
    let mut child = cmd
        .args(args)
        .stdin(std::process::Stdio::null())
        // Megabytes of paths: to a file, not a pipe nobody reads until exit.
        .stdout(match out {
            Some(out) => std::process::Stdio::from(File::create(out).expect("output file")),
            None => std::process::Stdio::null(),
        })
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run unionfuse");
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().expect("stderr"), &mut stderr)
        .expect("read stderr");
    let (mut status, mut usage) = (0, unsafe_zeroed_rusage());
    // SAFETY: the child is ours and not waited for elsewhere; status and
    // usage are valid for writes.
    let pid = unsafe { libc::wait4(child.id() as libc::pid_t, &mut status, 0, &mut usage) };
    assert!(pid > 0, "wait4: {}", std::io::Error::last_os_error());
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "unionfuse {args:?}: {stderr}"
    );
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    let cpu = tv(usage.ru_utime) + tv(usage.ru_stime);
    eprintln!(
        "unionfuse {:?}: {:.2} s, {:.2} s of CPU",
        args[0],
        t0.elapsed().as_secs_f64(),
        cpu.as_secs_f64()
    );
    cpu
}

fn unsafe_zeroed_rusage() -> libc::rusage {
    // SAFETY: rusage is plain data, valid all zeroes.
    unsafe { std::mem::zeroed() }
}

/// Runs a live verb, which the daemon carries out: the daemon's CPU time.
fn live_verb(daemon: libc::pid_t, args: &[&OsStr]) -> Duration {
    let before = cpu_of(daemon);
    verb(args, None);
    cpu_of(daemon) - before
}

/// A lower 4,000 directories deep and one whose full path is longer than
/// PATH_MAX go through the mount and every verb: `find` walks them, the
/// tops are renamed (the whole trees copied up), and diff, check, export,
/// unpack and a live reset handle the result quickly and without a crash
/// (each verb in its own process, on a normal stack).
#[test]
fn deep_and_overlong_trees_go_through_find_and_every_verb() {
    small_fd_budget();
    let start = std::time::Instant::now();
    let s = Scratch::new();
    let lower = s.mkdir("lower");
    create_at(&make_chain(&lower), c"leaf", b"deep leaf\n");
    create_at(&make_long_chain(&lower), c"leaf", b"long leaf\n");
    let (upper, work, mnt) = (s.mkdir("upper"), s.mkdir("work"), s.mkdir("mnt"));
    let m = Mounted::new(
        &[&lower],
        Some(&upper),
        &mnt,
        &["--work", work.to_str().expect("utf-8")],
    );
    eprintln!("setup: {:.2} s", start.elapsed().as_secs_f64());
    let daemon = *daemon_pids(&m.mnt).first().expect("the daemon's pid");
    // CPU time of each step, in the process doing the work.
    let mut took = Vec::new();

    let (t0, cpu0) = (std::time::Instant::now(), cpu_of(daemon));
    let found = s.path("find.txt");
    let o = std::process::Command::new("find")
        .arg(&m.mnt)
        .stdout(File::create(&found).expect("find output"))
        .output()
        .expect("run find");
    assert!(
        o.status.success(),
        "find: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let listing = std::fs::read(&found).expect("find output");
    let lines = listing.split(|b| *b == b'\n').filter(|l| !l.is_empty());
    // The root, top, DEPTH levels and the leaf; long, its levels and leaf.
    assert_eq!(lines.count(), 1 + 1 + DEPTH + 1 + 1 + LONG_LEVELS + 1);
    eprintln!("find: {:.2} s", t0.elapsed().as_secs_f64());
    took.push(("lookups for find", cpu_of(daemon) - cpu0));

    let (t0, cpu0) = (std::time::Instant::now(), cpu_of(daemon));
    std::fs::rename(m.path("top"), m.path("moved")).expect("rename the deep tree");
    std::fs::rename(m.path("long"), m.path("long-moved")).expect("rename the long tree");
    eprintln!("rename: {:.2} s", t0.elapsed().as_secs_f64());
    took.push(("rename", cpu_of(daemon) - cpu0));
    assert_eq!(
        read_at(&walk_chain(&m.mnt, c"moved").expect("walk"), c"leaf"),
        b"deep leaf\n"
    );
    assert_eq!(
        read_at(
            &walk_long_chain(&m.mnt, c"long-moved").expect("walk"),
            c"leaf"
        ),
        b"long leaf\n"
    );

    took.push((
        "diff (live)",
        verb(
            &[OsStr::new("diff"), m.mnt.as_os_str()],
            Some(&s.path("diff.txt")),
        ),
    ));
    let layer = s.path("layer.tar");
    took.push((
        "export",
        verb(
            &[
                OsStr::new("export"),
                OsStr::new("--upper"),
                upper.as_os_str(),
                OsStr::new("-o"),
                layer.as_os_str(),
            ],
            None,
        ),
    ));
    let unpacked = s.mkdir("unpacked");
    took.push((
        "unpack",
        verb(
            &[
                OsStr::new("unpack"),
                layer.as_os_str(),
                unpacked.as_os_str(),
            ],
            None,
        ),
    ));
    assert_eq!(
        read_at(&walk_chain(&unpacked, c"moved").expect("walk"), c"leaf"),
        b"deep leaf\n"
    );
    assert_eq!(
        read_at(
            &walk_long_chain(&unpacked, c"long-moved").expect("walk"),
            c"leaf"
        ),
        b"long leaf\n"
    );
    took.push((
        "checkpoint",
        live_verb(
            daemon,
            &[OsStr::new("checkpoint"), m.mnt.as_os_str(), OsStr::new("c")],
        ),
    ));
    took.push((
        "reset",
        live_verb(daemon, &[OsStr::new("reset"), m.mnt.as_os_str()]),
    ));
    assert_eq!(
        read_at(
            &walk_chain(&m.mnt, c"top").expect("walk after reset"),
            c"leaf"
        ),
        b"deep leaf\n"
    );
    assert!(
        walk_chain(&m.mnt, c"moved").is_err(),
        "reset kept the rename"
    );
    took.push((
        "restore",
        live_verb(
            daemon,
            &[OsStr::new("restore"), m.mnt.as_os_str(), OsStr::new("c")],
        ),
    ));
    assert_eq!(
        read_at(
            &walk_long_chain(&m.mnt, c"long-moved").expect("walk"),
            c"leaf"
        ),
        b"long leaf\n"
    );
    let t0 = std::time::Instant::now();
    drop(m);
    eprintln!("unmount: {:.2} s", t0.elapsed().as_secs_f64());
    took.push((
        "check",
        verb(
            &[
                OsStr::new("check"),
                OsStr::new("--upper"),
                upper.as_os_str(),
                OsStr::new("--lower"),
                lower.as_os_str(),
                OsStr::new("--work"),
                work.as_os_str(),
            ],
            None,
        ),
    ));
    for (what, t) in &took {
        eprintln!("{what}: {:.2} s of CPU", t.as_secs_f64());
    }
    eprintln!(
        "all but the clean-up: {:.2} s",
        start.elapsed().as_secs_f64()
    );
    // Walks that rebuild paths, or descend from the root, for every entry
    // are quadratic in the depth: tens of seconds of CPU here, where a
    // linear one takes a few (debug build).
    for (what, t) in &took {
        assert!(
            t.as_secs() < 10,
            "{what} took {:.1} s of CPU for {DEPTH} levels",
            t.as_secs_f64()
        );
    }
}

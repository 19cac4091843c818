//! Mount lifecycles as test harnesses drive them: mount, use, unmount and
//! mount again at the same path, hundreds of times, with every way of
//! mounting (daemonized, `--foreground`, started in the background and
//! polled) and of unmounting (`unionfuse umount`, `fusermount3 -u`).
//!
//! Each cycle checks that the mount is live, shows what the previous cycle
//! wrote, and that what it writes reaches the upper: a mount lost to an old
//! daemon would send the write into the bare mountpoint directory instead.
//! `UNIONFUSE_REMOUNT_CYCLES` sets the number of cycles (default 500).
// The fixtures in common/ need libc; every unsafe block there says why it
// is sound.
#![allow(unsafe_code)]

mod common;

use std::ffi::OsStr;
use std::fs;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Scratch, bin, daemon_pids, fusermount_u, is_mountpoint, process_gone, run, write};

/// How long a mount may take to appear, or a daemon to exit.
const SETTLE: Duration = Duration::from_secs(20);

fn cycles() -> usize {
    std::env::var("UNIONFUSE_REMOUNT_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(500)
}

/// Layers and a mountpoint for one loop.
struct Setup {
    _s: Scratch,
    lower: PathBuf,
    upper: PathBuf,
    work: PathBuf,
    mnt: PathBuf,
}

impl Setup {
    fn new() -> Setup {
        let s = Scratch::new();
        let lower = s.mkdir("lower");
        write(&lower, "etc/motd", "image\n");
        let upper = s.mkdir("upper");
        let work = s.mkdir("work");
        let mnt = s.mkdir("mnt");
        Setup {
            lower,
            upper,
            work,
            mnt: mnt.canonicalize().expect("canonical mountpoint"),
            _s: s,
        }
    }

    fn mount_argv<'a>(&'a self, extra: &[&'a str]) -> Vec<&'a OsStr> {
        let mut a: Vec<&OsStr> = vec![
            OsStr::new("mount"),
            OsStr::new("--lower"),
            self.lower.as_os_str(),
            OsStr::new("--upper"),
            self.upper.as_os_str(),
            OsStr::new("--work"),
            self.work.as_os_str(),
        ];
        a.extend(extra.iter().map(|e| OsStr::new(*e)));
        a.push(self.mnt.as_os_str());
        a
    }

    /// One cycle's checks on a live mount, then its write.
    fn use_mount(&self, i: usize) {
        assert!(is_mountpoint(&self.mnt), "cycle {i}: nothing is mounted");
        assert_eq!(
            fs::read_to_string(self.mnt.join("etc/motd")).expect("read motd"),
            "image\n",
            "cycle {i}"
        );
        if i > 0 {
            let prev = format!("c{}", i - 1);
            assert!(
                self.mnt.join(&prev).exists(),
                "cycle {i}: {prev}, written by the previous mount, is not shown"
            );
        }
        let name = format!("c{i}");
        fs::write(self.mnt.join(&name), i.to_string()).expect("write through the mount");
        assert!(
            self.upper.join(&name).exists(),
            "cycle {i}: a write through the mount did not reach the upper"
        );
    }

    /// After the loop: nothing mounted, nothing ever written into the bare
    /// mountpoint, every cycle's file in the upper.
    fn check_end(&self, n: usize) {
        let deadline = Instant::now() + SETTLE;
        while is_mountpoint(&self.mnt) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(!is_mountpoint(&self.mnt), "still mounted after the loop");
        let bare: Vec<_> = fs::read_dir(&self.mnt)
            .expect("read mountpoint")
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert!(
            bare.is_empty(),
            "writes went into the bare mountpoint: {bare:?}"
        );
        for i in 0..n {
            assert!(self.upper.join(format!("c{i}")).exists(), "c{i} lost");
        }
    }

    /// What `unionfuse umount` promises when it returns: the daemon has let
    /// go of the work directory, and its staging area is empty.
    fn check_released(&self, i: usize) {
        let dir = fs::File::open(&self.work).expect("open work dir");
        assert!(
            dir.try_lock().is_ok(),
            "cycle {i}: umount returned while the daemon still holds the work directory"
        );
        let staging = self.work.join("unionfuse-staging");
        let left: Vec<_> = fs::read_dir(&staging)
            .map(|d| d.flatten().map(|e| e.file_name()).collect())
            .unwrap_or_default();
        assert!(left.is_empty(), "cycle {i}: staging not empty: {left:?}");
    }
}

fn unionfuse_umount(mnt: &Path) {
    let out = run(&[OsStr::new("umount"), mnt.as_os_str()]);
    assert!(
        out.status.success(),
        "unionfuse umount: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!is_mountpoint(mnt), "unionfuse umount left the mount");
}

fn mount_daemon(s: &Setup) {
    let out = run(&s.mount_argv(&[]));
    assert!(
        out.status.success(),
        "unionfuse mount: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Polls the mount table every 2 ms, as harness scripts poll `mountpoint`.
fn wait_mounted(mnt: &Path, child: &mut Child, log: Option<&Path>) {
    let deadline = Instant::now() + SETTLE;
    while !is_mountpoint(mnt) {
        if let Some(st) = child.try_wait().expect("wait") {
            // A daemonizing `mount` exits 0 once mounted; only a failure
            // before the mount appeared is one.
            if !st.success() {
                panic!(
                    "unionfuse mount exited ({st}) before mounting: {}",
                    log.map(|l| fs::read_to_string(l).unwrap_or_default())
                        .unwrap_or_default()
                );
            }
        }
        assert!(Instant::now() < deadline, "no mount within {SETTLE:?}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn wait_exit(child: &mut Child) -> std::process::ExitStatus {
    let deadline = Instant::now() + SETTLE;
    loop {
        if let Some(st) = child.try_wait().expect("wait") {
            return st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the daemon did not exit within {SETTLE:?} of its unmount");
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Kills what a failed loop left running and takes its mount off.
struct Cleanup<'a> {
    mnt: &'a Path,
    children: Vec<Child>,
}

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        if is_mountpoint(self.mnt) {
            let _ = Command::new("fusermount3")
                .args(["-u", "-z"])
                .arg(self.mnt)
                .status();
        }
    }
}

fn daemonized(unmount: fn(&Path), strict: bool) {
    let s = Setup::new();
    let _c = Cleanup {
        mnt: &s.mnt,
        children: Vec::new(),
    };
    let n = cycles();
    for i in 0..n {
        mount_daemon(&s);
        s.use_mount(i);
        let pids = daemon_pids(&s.mnt);
        assert!(!pids.is_empty(), "cycle {i}: no daemon found");
        unmount(&s.mnt);
        if strict {
            s.check_released(i);
            for p in pids {
                assert!(
                    process_gone(p),
                    "cycle {i}: umount returned while daemon {p} still runs"
                );
            }
        }
    }
    s.check_end(n);
}

#[test]
fn remount_loop_daemonized_unionfuse_umount() {
    daemonized(unionfuse_umount, true);
}

#[test]
fn remount_loop_daemonized_fusermount_u() {
    daemonized(fusermount_u, false);
}

/// `--foreground` daemons: each must exit 0 after its unmount, and log
/// nothing at the default level (an unmount of a path no longer its own
/// used to log "Failed to umount").
fn foreground(unmount: fn(&Path), strict: bool) {
    let s = Setup::new();
    let mut c = Cleanup {
        mnt: &s.mnt,
        children: Vec::new(),
    };
    let log = s.work.parent().expect("scratch").join("daemon.log");
    let n = cycles();
    for i in 0..n {
        let child = Command::new(bin())
            .args(s.mount_argv(&["--foreground"]))
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log).expect("log"))
            .spawn()
            .expect("spawn unionfuse mount -f");
        c.children.push(child);
        let child = c.children.last_mut().expect("child");
        wait_mounted(&s.mnt, child, Some(&log));
        s.use_mount(i);
        unmount(&s.mnt);
        if strict {
            s.check_released(i);
            assert!(
                child.try_wait().expect("wait").is_some(),
                "cycle {i}: umount returned while the daemon still runs"
            );
        }
        let st = wait_exit(child);
        c.children.pop();
        let text = fs::read_to_string(&log).unwrap_or_default();
        assert!(st.success(), "cycle {i}: daemon exited {st}: {text}");
        assert!(
            text.is_empty(),
            "cycle {i}: the daemon logged on a normal mount and unmount: {text}"
        );
    }
    s.check_end(n);
}

#[test]
fn remount_loop_foreground_unionfuse_umount() {
    foreground(unionfuse_umount, true);
}

#[test]
fn remount_loop_foreground_fusermount_u() {
    foreground(fusermount_u, false);
}

/// The harness pattern: `unionfuse mount` started in the background (not
/// waited for), the mountpoint polled until it is mounted, used, then
/// unmounted with `fusermount3 -u` and mounted again at once.
#[test]
fn remount_loop_started_in_background_and_polled() {
    let s = Setup::new();
    let mut c = Cleanup {
        mnt: &s.mnt,
        children: Vec::new(),
    };
    let n = cycles();
    for i in 0..n {
        let child = Command::new(bin())
            .args(s.mount_argv(&[]))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("spawn unionfuse mount");
        c.children.push(child);
        let child = c.children.last_mut().expect("child");
        wait_mounted(&s.mnt, child, None);
        s.use_mount(i);
        if i % 2 == 0 {
            fusermount_u(&s.mnt);
        } else {
            unionfuse_umount(&s.mnt);
        }
        // The mount command itself has long exited 0; reap it.
        let st = wait_exit(child);
        assert!(st.success(), "cycle {i}: unionfuse mount exited {st}");
        c.children.pop();
    }
    s.check_end(n);
}

/// Two mounts may not share a work directory (the staging area of one
/// would be emptied under the other): the second is refused at once with a
/// line naming the first.
#[test]
fn a_work_directory_in_use_by_a_live_mount_is_refused() {
    let s = Setup::new();
    let _c = Cleanup {
        mnt: &s.mnt,
        children: Vec::new(),
    };
    mount_daemon(&s);
    let other = s.mnt.parent().expect("scratch").join("mnt2");
    fs::create_dir(&other).expect("mkdir");
    let _c2 = Cleanup {
        mnt: &other,
        children: Vec::new(),
    };
    let mut argv = s.mount_argv(&[]);
    argv.pop();
    argv.push(other.as_os_str());
    let t0 = Instant::now();
    let out = run(&argv);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "a second mount on one work dir was accepted"
    );
    assert!(
        t0.elapsed() < Duration::from_secs(10),
        "the refusal waited {:?}",
        t0.elapsed()
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        err.contains("in use") && err.contains(s.mnt.to_str().expect("utf-8")),
        "{err}"
    );
    assert!(!is_mountpoint(&other));
    unionfuse_umount(&s.mnt);
}

/// `diff MOUNTPOINT` finds a mount's layers from the record its daemon
/// published, whichever binary made the mount: here a copy at another path.
#[test]
fn diff_finds_a_mount_made_by_another_copy_of_the_binary() {
    let s = Setup::new();
    let copy = s.mnt.parent().expect("scratch").join("other-unionfuse");
    fs::copy(bin(), &copy).expect("copy the binary");
    // A child that another test thread forks while the copy is still open
    // for writing keeps it busy for a moment (ETXTBSY).
    let deadline = Instant::now() + SETTLE;
    let out = loop {
        match Command::new(&copy).args(s.mount_argv(&[])).output() {
            Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            r => break r.expect("run the copy"),
        }
    };
    assert!(
        out.status.success(),
        "mount with a copy: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let _c = Cleanup {
        mnt: &s.mnt,
        children: Vec::new(),
    };
    fs::write(s.mnt.join("added"), "x").expect("write");
    fs::remove_file(s.mnt.join("etc/motd")).expect("rm");
    let out = run(&[OsStr::new("diff"), s.mnt.as_os_str()]);
    assert!(
        out.status.success(),
        "diff MOUNTPOINT: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "A /added\nC /etc\nD /etc/motd\n"
    );
    unionfuse_umount(&s.mnt);
}

/// `unionfuse stats MOUNTPOINT` counts what a workload asked of any live
/// mount, read-only ones included.
#[test]
fn stats_counts_the_requests_of_a_workload() {
    let s = Setup::new();
    for i in 0..20 {
        write(&s.lower, &format!("dir/f{i}"), "x\n");
    }
    let mut argv = vec![
        OsStr::new("mount"),
        OsStr::new("--lower"),
        s.lower.as_os_str(),
    ];
    argv.push(s.mnt.as_os_str());
    let out = run(&argv);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let _c = Cleanup {
        mnt: &s.mnt,
        children: Vec::new(),
    };
    let listed = fs::read_dir(s.mnt.join("dir")).expect("readdir").count();
    assert_eq!(listed, 20);
    for i in 0..20 {
        fs::metadata(s.mnt.join(format!("dir/f{i}"))).expect("stat");
    }
    assert_eq!(
        fs::read_to_string(s.mnt.join("dir/f3")).expect("read"),
        "x\n"
    );
    let out = run(&[OsStr::new("stats"), OsStr::new("--json"), s.mnt.as_os_str()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json = String::from_utf8_lossy(&out.stdout).into_owned();
    let count = |op: &str| common::stats_count(&json, op);
    assert!(count("lookup") >= 1, "{json}");
    assert!(count("readdir") + count("readdirplus") >= 1, "{json}");
    // Reads of a read-only mount go straight to the layer file where
    // passthrough is allowed (root), so only the open is certain.
    assert!(count("open") >= 1, "{json}");
    let out = run(&[OsStr::new("stats"), s.mnt.as_os_str()]);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.starts_with("request") && table.contains("\ntotal "),
        "{table}"
    );
    unionfuse_umount(&s.mnt);
}

/// `umount --timeout`: a daemon that does not exit in time (here: stopped)
/// gets one line naming it and a non-zero exit, the mount itself is gone,
/// and the daemon finishes once it runs again.
#[test]
fn umount_timeout_names_a_daemon_that_does_not_exit() {
    let s = Setup::new();
    mount_daemon(&s);
    let pids = daemon_pids(&s.mnt);
    assert_eq!(pids.len(), 1, "one daemon for the mount: {pids:?}");
    let pid = pids[0];
    fs::write(s.mnt.join("before-stop"), "x").expect("write through the mount");
    // SAFETY: pid is the daemon started above.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGSTOP) }, 0);
    let out = run(&[
        OsStr::new("umount"),
        OsStr::new("--timeout"),
        OsStr::new("1"),
        s.mnt.as_os_str(),
    ]);
    // SAFETY: as above.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGCONT) }, 0);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "umount succeeded with its daemon stopped"
    );
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    assert!(
        err.contains(&format!("daemon (PID {pid}) is still running after 1 s")),
        "names the daemon: {err}"
    );
    assert!(!is_mountpoint(&s.mnt), "the mount itself is gone");
    let deadline = Instant::now() + SETTLE;
    while !process_gone(pid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(process_gone(pid), "the daemon exits once it runs again");
    assert!(s.upper.join("before-stop").exists());
}

/// `list --json` shows each mount with what its record says, a dead one as
/// dead; `umount --all --under DIR` clears every mount below DIR (the dead
/// one included) and nothing else.
#[test]
fn list_shows_live_and_dead_mounts_and_umount_all_under_clears_them() {
    let (a, b, other) = (Setup::new(), Setup::new(), Setup::new());
    // Two mounts below one directory: b's mountpoint moves under a's scratch.
    let under = a.mnt.parent().expect("scratch").join("nested");
    fs::create_dir(&under).expect("nested dir");
    let b_mnt = under.join("mnt");
    fs::create_dir(&b_mnt).expect("nested mountpoint");
    mount_daemon(&a);
    let mut argv = b.mount_argv(&[]);
    argv.pop();
    argv.push(b_mnt.as_os_str());
    let out = run(&argv);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    mount_daemon(&other);
    let b_pid = daemon_pids(&b_mnt);
    assert_eq!(b_pid.len(), 1, "{b_pid:?}");
    // SAFETY: the daemon of b, started above.
    assert_eq!(unsafe { libc::kill(b_pid[0], libc::SIGKILL) }, 0);
    let deadline = Instant::now() + SETTLE;
    while !process_gone(b_pid[0]) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }

    let out = run(&[OsStr::new("list"), OsStr::new("--json")]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let all: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let find = |p: &Path| {
        all.as_array()
            .expect("array")
            .iter()
            .find(|m| m["path"] == p.to_str().expect("utf-8"))
            .cloned()
            .unwrap_or_else(|| panic!("{} not listed: {all}", p.display()))
    };
    let la = find(&a.mnt);
    assert_eq!(la["state"], "live");
    assert_eq!(la["pid"], daemon_pids(&a.mnt)[0]);
    assert_eq!(la["read_only"], false);
    assert_eq!(la["upper"]["path"], a.upper.to_str().unwrap());
    assert_eq!(la["work"]["path"], a.work.to_str().unwrap());
    assert_eq!(la["lowers"][0]["path"], a.lower.to_str().unwrap());
    assert!(la["uptime_secs"].as_u64().is_some());
    let lb = find(&b_mnt);
    assert_eq!(lb["state"], "dead");
    // What the killed daemon's record said, without a pid that is gone.
    assert_eq!(lb["upper"]["path"], b.upper.to_str().unwrap());
    assert!(lb.get("pid").is_none(), "{lb}");
    let table = run(&[OsStr::new("list")]);
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(
        text.lines()
            .any(|l| l.starts_with(a.mnt.to_str().unwrap()) && l.contains("\tlive\t")),
        "table: {text}"
    );

    let scratch = a.mnt.parent().expect("scratch");
    let out = run(&[
        OsStr::new("umount"),
        OsStr::new("--all"),
        OsStr::new("--under"),
        scratch.as_os_str(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!is_mountpoint(&a.mnt) && !is_mountpoint(&b_mnt));
    assert!(is_mountpoint(&other.mnt), "a mount elsewhere stays");
    unionfuse_umount(&other.mnt);
}

/// A daemon killed with SIGKILL leaves its control socket behind, named by
/// the device number its mount had. The next mount to get that number
/// removes it (and only it), so a long-lived runtime directory does not
/// fill up with the sockets of killed daemons.
#[test]
fn a_mount_removes_the_sockets_killed_daemons_left_under_its_device_number() {
    use std::os::unix::fs::MetadataExt;
    let s = Setup::new();
    let rt = s._s.mkdir("runtime");
    // The sockets of killed daemons (pid 1 never is one) for every device
    // number a FUSE mount is likely to get here.
    const PLANTED: u32 = 4096;
    for minor in 0..PLANTED {
        let p = rt.join(format!("0:{minor}.1.sock"));
        drop(std::os::unix::net::UnixListener::bind(&p).expect("plant a socket"));
    }
    let with_rt = |args: &[&OsStr]| {
        Command::new(bin())
            .args(args)
            .env("UNIONFUSE_RUNTIME_DIR", &rt)
            .stdin(Stdio::null())
            .output()
            .expect("run unionfuse")
    };
    let out = with_rt(&s.mount_argv(&[]));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dev = fs::metadata(&s.mnt).expect("stat the mount").dev();
    let (major, minor) = (libc::major(dev), libc::minor(dev));
    assert!(
        major == 0 && minor < PLANTED,
        "the mount got device {major}:{minor}, outside the planted range"
    );
    let stale = rt.join(format!("0:{minor}.1.sock"));
    let deadline = Instant::now() + SETTLE;
    while stale.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    let pid = daemon_pids(&s.mnt)[0];
    let own = rt.join(format!("0:{minor}.{pid}.sock"));
    let other = rt.join(format!("0:{}.1.sock", (minor + 1) % PLANTED));
    let (stale_left, own_there, other_there) = (stale.exists(), own.exists(), other.exists());
    let out = with_rt(&[OsStr::new("umount"), s.mnt.as_os_str()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!stale_left, "{} is still there", stale.display());
    assert!(
        own_there,
        "the mount's own socket {} is missing",
        own.display()
    );
    assert!(
        other_there,
        "{} of another device was removed",
        other.display()
    );
}

//! The systemd unit in examples/systemd: `systemd-analyze verify` finds
//! nothing to say about it; its commands, run as systemd runs them, clear
//! a dead mount (and leave a live one alone), tell `READY=1` from the main
//! process once the mount answers, and unmount on SIGTERM; and where
//! systemd manages the machine, a transient notify service is active only
//! with the mount ready, and stopping it ends the mount.
#![allow(unsafe_code)]

mod common;

use std::fs;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

const UNIT: &str = "unionfuse-root.service";
/// The paths the unit names, replaced in the tests by a scratch directory
/// and the binary under test.
const UNIT_BASE: &str = "/var/lib/unionfuse";
const UNIT_BIN: &str = "/usr/bin/unionfuse";

/// Built in: the unprivileged run of the suite may not reach the checkout.
const UNIT_TEXT: &str = include_str!("../examples/systemd/unionfuse-root.service");

/// The unit with its paths moved into `base` and its binary replaced.
fn unit_at(base: &Path) -> String {
    let bin = fs::canonicalize(bin()).expect("binary path");
    UNIT_TEXT
        .replace(UNIT_BIN, bin.to_str().expect("utf-8"))
        .replace(UNIT_BASE, base.to_str().expect("utf-8"))
}

fn in_path(cmd: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(cmd).is_file()))
}

#[test]
fn systemd_analyze_verify_finds_nothing_to_say_about_the_unit() {
    if !in_path("systemd-analyze") {
        eprintln!("skipped: systemd-analyze is not installed (package systemd)");
        return;
    }
    let s = Scratch::new();
    // verify checks that every command exists, so the copy runs the binary
    // under test; it must keep the unit's name.
    let dir = s.mkdir("units");
    fs::write(dir.join(UNIT), unit_at(Path::new(UNIT_BASE))).expect("unit copy");
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(dir.join(UNIT))
        .output()
        .expect("run systemd-analyze");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // Lines about other units on this machine are not the unit's business.
    let about: Vec<&str> = text.lines().filter(|l| l.contains(UNIT)).collect();
    assert!(
        out.status.success() && about.is_empty(),
        "systemd-analyze verify ({}):\n{text}",
        out.status
    );
}

/// One command line of the unit: its words, and whether a failure is
/// ignored (the `-` prefix).
#[derive(Debug)]
struct ExecLine {
    argv: Vec<String>,
    ignore_failure: bool,
}

/// The unit's `KEY=` command lines in the [Service] section, split into
/// words as systemd splits them for the quoting the unit uses.
fn exec_lines(unit: &str, key: &str) -> Vec<ExecLine> {
    let mut section = "";
    let mut lines = Vec::new();
    for l in unit.lines() {
        let l = l.trim();
        if l.starts_with('[') {
            section = l;
            continue;
        }
        if section != "[Service]" {
            continue;
        }
        let Some(cmd) = l.strip_prefix(key).and_then(|r| r.strip_prefix('=')) else {
            continue;
        };
        // systemd would expand these; the words below would not match.
        assert!(
            !cmd.contains('$') && !cmd.contains('%') && !cmd.contains('\\'),
            "{key}: expansions and escapes are not emulated here: {cmd}"
        );
        let (ignore_failure, cmd) = match cmd.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, cmd),
        };
        assert!(
            !cmd.starts_with(['@', ':', '+', '!']),
            "{key}: prefix not emulated here: {cmd}"
        );
        lines.push(ExecLine {
            argv: split_words(cmd),
            ignore_failure,
        });
    }
    lines
}

fn split_words(cmd: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut quote = None;
    for c in cmd.chars() {
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => cur.push(c),
            None if c == '\'' || c == '"' => {
                quote = Some(c);
                in_word = true;
            }
            None if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            None => {
                cur.push(c);
                in_word = true;
            }
        }
    }
    assert!(quote.is_none(), "unbalanced quotes: {cmd}");
    if in_word {
        words.push(cur);
    }
    words
}

fn run_pre(unit: &str) {
    for line in exec_lines(unit, "ExecStartPre") {
        let out = Command::new(&line.argv[0])
            .args(&line.argv[1..])
            .stdin(Stdio::null())
            .output()
            .expect("run ExecStartPre");
        assert!(
            line.ignore_failure || out.status.success(),
            "ExecStartPre {:?} failed ({}): {}",
            line.argv,
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// A notification socket as systemd's: datagrams with the sender's
/// credentials attached.
struct NotifySocket {
    sock: UnixDatagram,
    path: PathBuf,
}

impl NotifySocket {
    fn new(path: PathBuf) -> Self {
        let sock = UnixDatagram::bind(&path).expect("bind notify socket");
        let on: libc::c_int = 1;
        // SAFETY: a valid socket, and an int option of the right size.
        let rc = unsafe {
            libc::setsockopt(
                sock.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_PASSCRED,
                (&on as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        assert_eq!(rc, 0, "SO_PASSCRED: {}", std::io::Error::last_os_error());
        sock.set_read_timeout(Some(Duration::from_secs(30)))
            .expect("timeout");
        NotifySocket { sock, path }
    }

    /// The next message and the pid that sent it.
    fn recv(&self) -> (String, libc::pid_t) {
        let mut buf = [0u8; 4096];
        let mut cmsg = [0u64; 16];
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        // SAFETY: msghdr is plain data; the pointers set below outlive the
        // call.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = cmsg.as_mut_ptr().cast();
        msg.msg_controllen = std::mem::size_of_val(&cmsg);
        // SAFETY: msg points at live buffers of the sizes it states.
        let n = unsafe { libc::recvmsg(self.sock.as_raw_fd(), &mut msg, 0) };
        assert!(
            n >= 0,
            "no notification: {}",
            std::io::Error::last_os_error()
        );
        let mut pid = 0;
        // SAFETY: the CMSG macros walk the control buffer recvmsg filled.
        unsafe {
            let mut c = libc::CMSG_FIRSTHDR(&msg);
            while !c.is_null() {
                if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_CREDENTIALS {
                    let cred: libc::ucred = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast());
                    pid = cred.pid;
                }
                c = libc::CMSG_NXTHDR(&msg, c);
            }
        }
        (
            String::from_utf8_lossy(&buf[..n as usize]).into_owned(),
            pid,
        )
    }
}

/// The unit's main process, killed if a test fails while it runs.
struct Daemon {
    child: Option<Child>,
    mnt: PathBuf,
}

impl Daemon {
    fn start(unit: &str, notify: &NotifySocket, log: &Path, mnt: &Path) -> Daemon {
        let lines = exec_lines(unit, "ExecStart");
        assert_eq!(lines.len(), 1, "one ExecStart");
        let argv = &lines[0].argv;
        let child = Command::new(&argv[0])
            .args(&argv[1..])
            .env("NOTIFY_SOCKET", &notify.path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(log).expect("log"))
            .spawn()
            .expect("run ExecStart");
        Daemon {
            child: Some(child),
            mnt: mnt.to_path_buf(),
        }
    }

    fn pid(&self) -> libc::pid_t {
        self.child.as_ref().expect("running").id() as libc::pid_t
    }

    fn signal(&mut self, sig: libc::c_int) -> std::process::ExitStatus {
        // SAFETY: our own child, not yet reaped.
        assert_eq!(unsafe { libc::kill(self.pid(), sig) }, 0);
        self.wait()
    }

    /// Its exit status, within 30 s.
    fn wait(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("running");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(st) = child.try_wait().expect("wait") {
                return st;
            }
            assert!(Instant::now() < deadline, "daemon still running after 30 s");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        unmount(&self.mnt);
    }
}

/// The mount's state without its cached attributes: a dead FUSE mount
/// still looks fine to a plain stat.
fn fresh_stat_errno(p: &Path) -> i32 {
    let c = std::ffi::CString::new(p.as_os_str().as_bytes()).expect("path");
    // SAFETY: statx is plain data, c a valid C string.
    let mut st: libc::statx = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointers for the call's duration.
    let rc = unsafe {
        libc::statx(
            libc::AT_FDCWD,
            c.as_ptr(),
            libc::AT_STATX_FORCE_SYNC,
            libc::STATX_BASIC_STATS,
            &mut st,
        )
    };
    if rc == 0 {
        0
    } else {
        std::io::Error::last_os_error().raw_os_error().unwrap_or(-1)
    }
}

fn ready_and_serving(notify: &NotifySocket, d: &Daemon, mnt: &Path, log: &Path) {
    let (msg, pid) = notify.recv();
    // One datagram may carry other assignments beside READY=1.
    assert!(
        msg.lines().any(|l| l == "READY=1"),
        "notification {msg:?}; log: {}",
        fs::read_to_string(log).unwrap_or_default()
    );
    // NotifyAccess=main, the default, takes messages of the main process only.
    assert_eq!(pid, d.pid(), "READY=1 came from another process");
    assert!(is_mountpoint(mnt), "READY=1 before the mount exists");
    assert_eq!(
        fs::read_to_string(mnt.join("etc/motd")).expect("read through the mount"),
        "image\n"
    );
}

#[test]
fn unit_commands_clear_a_dead_mount_notify_and_stop_on_sigterm() {
    let s = Scratch::new();
    let base = s.mkdir("var-lib-unionfuse");
    let mnt = base.join("root");
    let upper = base.join("upper");
    let unit = unit_at(&base);
    let notify = NotifySocket::new(s.path("notify"));
    let log = s.path("daemon.log");

    // First boot: nothing there yet, not even the image, which fails the
    // start with one line and no READY=1.
    run_pre(&unit);
    assert!(mnt.is_dir() && upper.is_dir(), "ExecStartPre made no dirs");
    let mut no_image = Daemon::start(&unit, &notify, &log, &mnt);
    let st = no_image.wait();
    let err = fs::read_to_string(&log).expect("log");
    assert!(!st.success() && err.lines().count() == 1, "{st}: {err}");
    assert!(!is_mountpoint(&mnt));
    drop(no_image);

    write(&base.join("image"), "etc/motd", "image\n");
    let mut first = Daemon::start(&unit, &notify, &log, &mnt);
    ready_and_serving(&notify, &first, &mnt, &log);

    // A live mount at the path is not touched.
    run_pre(&unit);
    assert!(is_mountpoint(&mnt), "ExecStartPre unmounted a live mount");
    assert_eq!(fresh_stat_errno(&mnt), 0);

    // A crash leaves a dead mount, which the next start clears.
    let st = first.signal(libc::SIGKILL);
    assert!(!st.success());
    assert!(is_mountpoint(&mnt), "no dead mount to clear");
    assert_eq!(fresh_stat_errno(&mnt), libc::ENOTCONN);
    run_pre(&unit);
    assert!(!is_mountpoint(&mnt), "ExecStartPre left the dead mount");
    drop(first);

    let mut second = Daemon::start(&unit, &notify, &log, &mnt);
    ready_and_serving(&notify, &second, &mnt, &log);
    write(&mnt, "etc/written", "kept\n");

    // systemctl stop: SIGTERM to the main process (KillMode=mixed).
    let st = second.signal(libc::SIGTERM);
    assert!(
        st.success(),
        "daemon exited with {st} on SIGTERM; log: {}",
        fs::read_to_string(&log).unwrap_or_default()
    );
    assert!(!is_mountpoint(&mnt), "the mount outlived its daemon");
    assert_eq!(
        fs::read_to_string(upper.join("etc/written")).expect("upper"),
        "kept\n"
    );
}

/// A transient unit, stopped and forgotten when the test ends.
struct Transient(String);

impl Drop for Transient {
    fn drop(&mut self) {
        let _ = Command::new("systemctl")
            .args(["stop", &self.0])
            .stderr(Stdio::null())
            .status();
        let _ = Command::new("systemctl")
            .args(["reset-failed", &self.0])
            .stderr(Stdio::null())
            .status();
    }
}

fn systemctl_show(unit: &str, prop: &str) -> String {
    let out = Command::new("systemctl")
        .args(["show", "--value", "-p", prop, unit])
        .output()
        .expect("run systemctl");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn a_transient_notify_service_is_active_only_once_mounted() {
    if !Path::new("/run/systemd/system").exists() {
        eprintln!("skipped: systemd is not the service manager here (no /run/systemd/system)");
        return;
    }
    if skip_as_non_root("a system service needs root (and would mount in the host's namespace)") {
        return;
    }
    if !in_path("systemd-run") || !in_path("systemctl") {
        eprintln!("skipped: systemd-run or systemctl is not installed");
        return;
    }
    let s = Scratch::new();
    let lower = s.mkdir("image");
    write(&lower, "etc/motd", "image\n");
    let upper = s.mkdir("upper");
    let mnt = s.mkdir("root");
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let name = format!("unionfuse-test-{}-{nanos}.service", std::process::id());
    let unit = Transient(name.clone());
    let _cleanup = Mounted { mnt: mnt.clone() };
    let bin = fs::canonicalize(bin()).expect("binary path");
    let out = Command::new("systemd-run")
        .arg(format!("--unit={name}"))
        .args([
            "--quiet",
            "--service-type=notify",
            "--property=KillMode=mixed",
        ])
        .arg("--")
        .arg(&bin)
        .args(["mount", "-f", "--lower"])
        .arg(&lower)
        .arg("--upper")
        .arg(&upper)
        .arg(&mnt)
        .output()
        .expect("run systemd-run");
    let err = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() && err.contains("to bus") {
        eprintln!("skipped: systemd-run cannot reach systemd: {}", err.trim());
        return;
    }
    assert!(out.status.success(), "systemd-run: {err}");
    // systemd-run returns once the start job is done: for Type=notify, at
    // READY=1.
    assert_eq!(systemctl_show(&unit.0, "ActiveState"), "active");
    assert!(is_mountpoint(&mnt), "active before the mount exists");
    assert_eq!(
        fs::read_to_string(mnt.join("etc/motd")).expect("read through the mount"),
        "image\n"
    );
    let pid: libc::pid_t = systemctl_show(&unit.0, "MainPID").parse().expect("MainPID");
    assert!(pid > 0 && !process_gone(pid));

    let st = Command::new("systemctl")
        .args(["stop", &unit.0])
        .status()
        .expect("run systemctl stop");
    assert!(st.success(), "systemctl stop: {st}");
    assert!(!is_mountpoint(&mnt), "the mount outlived its service");
    assert!(process_gone(pid), "the daemon outlived its service");
    // A daemon that exited non-zero on SIGTERM would leave the unit failed.
    let failed = Command::new("systemctl")
        .args(["is-failed", "--quiet", &unit.0])
        .status()
        .expect("run systemctl is-failed");
    assert!(!failed.success(), "the unit failed on stop");
}

//! Progress of the long verbs: a spinner with counts on stderr when it is
//! a terminal, nothing when it is a pipe or with `--quiet`. Each verb runs
//! with stderr on a real pseudo-terminal, read from its master side.
#![allow(unsafe_code)]

mod common;

use std::ffi::{CStr, OsStr};
use std::fs;
use std::io::Read;
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// A pseudo-terminal: the master to read, the terminal to hand out.
struct Pty {
    master: fs::File,
    terminal: fs::File,
}

fn open_pty() -> Pty {
    // SAFETY: posix_openpt has no preconditions; the result is checked.
    let m = unsafe { libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC) };
    assert!(m >= 0, "posix_openpt: {}", std::io::Error::last_os_error());
    // SAFETY: `m` is a descriptor just opened and owned by nothing else.
    let master = unsafe { OwnedFd::from_raw_fd(m) };
    // SAFETY: `m` is an open pty master.
    assert_eq!(unsafe { libc::grantpt(m) }, 0, "grantpt");
    // SAFETY: as above.
    assert_eq!(unsafe { libc::unlockpt(m) }, 0, "unlockpt");
    let mut name = [0 as libc::c_char; 128];
    // SAFETY: the buffer is writable for its whole length, given as such.
    let r = unsafe { libc::ptsname_r(m, name.as_mut_ptr(), name.len()) };
    assert_eq!(r, 0, "ptsname_r");
    // SAFETY: ptsname_r wrote a NUL-terminated string into the buffer.
    let path = unsafe { CStr::from_ptr(name.as_ptr()) };
    // SAFETY: `path` is a valid C string; the result is checked.
    let t = unsafe {
        libc::open(
            path.as_ptr(),
            libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
        )
    };
    assert!(t >= 0, "open {path:?}: {}", std::io::Error::last_os_error());
    // SAFETY: `t` is a descriptor just opened and owned by nothing else.
    let terminal = unsafe { fs::File::from_raw_fd(t) };
    let size = libc::winsize {
        ws_row: 30,
        ws_col: 120,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one winsize from the pointer, valid here.
    let r = unsafe { libc::ioctl(t, libc::TIOCSWINSZ, &size) };
    assert_eq!(r, 0, "TIOCSWINSZ");
    Pty {
        master: fs::File::from(master),
        terminal,
    }
}

/// Runs `unionfuse ARGS` with stderr on a terminal (stdout to /dev/null);
/// returns its status and everything it wrote to the terminal.
fn on_terminal(args: &[&OsStr]) -> (ExitStatus, String) {
    on_terminal_as(args, "xterm")
}

/// [`on_terminal`] with `TERM` set to `term`.
fn on_terminal_as(args: &[&OsStr], term: &str) -> (ExitStatus, String) {
    let Pty {
        mut master,
        terminal,
    } = open_pty();
    let mut cmd = Command::new(bin());
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(terminal))
        .env("TERM", term);
    let mut child = cmd.spawn().expect("spawn unionfuse");
    // The reader sees the end (EIO) once the child is the only holder of
    // the terminal and exits.
    drop(cmd);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match master.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
        let _ = tx.send(got);
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(st) = child.try_wait().expect("wait") {
            break st;
        }
        if Instant::now() > deadline {
            child.kill().ok();
            panic!("unionfuse {args:?} did not finish in 60 s");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let got = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("the terminal was never closed");
    (status, String::from_utf8_lossy(&got).into_owned())
}

/// Entries under `dir`, at any depth.
fn count_entries(dir: &Path) -> u64 {
    let mut n = 0;
    for e in fs::read_dir(dir).expect("read_dir") {
        let e = e.expect("entry");
        n += 1;
        if e.file_type().expect("type").is_dir() {
            n += count_entries(&e.path());
        }
    }
    n
}

/// Bytes of the regular files under `dir`.
fn count_bytes(dir: &Path) -> u64 {
    let mut n = 0;
    for e in fs::read_dir(dir).expect("read_dir") {
        let e = e.expect("entry");
        let t = e.file_type().expect("type");
        if t.is_dir() {
            n += count_bytes(&e.path());
        } else if t.is_file() {
            n += e.metadata().expect("stat").len();
        }
    }
    n
}

/// A tree with files of several sizes, nested directories and a symlink.
fn fill(root: &Path) {
    for d in 0..3 {
        for f in 0..7 {
            write(root, &format!("d{d}/sub/f{f}"), &"x".repeat(1000 * (f + 1)));
        }
    }
    link(root, "d0/link", "sub/f0");
}

/// Asserts that the terminal got the spinner's final line: `what`, the
/// number of entries and, where data is counted, its size.
fn assert_progress(tty: &str, what: &str, entries: u64, bytes: Option<u64>) {
    assert!(
        tty.contains(what),
        "no {what:?} progress on the terminal: {tty:?}"
    );
    let counted = format!("{what}: {entries} entries");
    assert!(
        tty.contains(&counted),
        "the terminal never showed {counted:?}: {tty:?}"
    );
    if let Some(b) = bytes {
        // indicatif's binary units, two decimals (`123.05 KiB`).
        let kib = format!("{:.2} KiB", b as f64 / 1024.0);
        assert!(
            tty.contains(&kib),
            "the terminal never showed {kib:?}: {tty:?}"
        );
    }
}

fn assert_quiet_terminal(tty: &str, args: &[&OsStr]) {
    assert!(
        tty.is_empty(),
        "unionfuse {args:?} wrote to the terminal with --quiet: {tty:?}"
    );
}

fn assert_ok(status: ExitStatus, args: &[&OsStr], tty: &str) {
    assert!(status.success(), "unionfuse {args:?} failed: {tty}");
}

/// With stderr a pipe: success, and not a byte on stderr.
fn assert_silent_on_pipe(args: &[&OsStr]) {
    let out = run(args);
    assert!(
        out.status.success(),
        "unionfuse {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.stderr.is_empty(),
        "unionfuse {args:?} wrote to a non-terminal stderr: {:?}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn os<'a>(v: &[&'a OsStr]) -> Vec<&'a OsStr> {
    v.to_vec()
}

#[test]
fn export_shows_entries_and_bytes_on_a_terminal_only() {
    let s = Scratch::new();
    let up = s.mkdir("u");
    fill(&up);
    let (entries, bytes) = (count_entries(&up), count_bytes(&up));
    let tar = s.path("layer.tar");
    let args = os(&[
        OsStr::new("export"),
        "--upper".as_ref(),
        up.as_os_str(),
        "-o".as_ref(),
        tar.as_os_str(),
    ]);
    let (st, tty) = on_terminal(&args);
    assert_ok(st, &args, &tty);
    assert_progress(&tty, "exporting", entries, Some(bytes));
    assert!(tar.exists(), "no layer written");
    let layer = fs::read(&tar).expect("layer");

    assert_silent_on_pipe(&args);
    assert_eq!(fs::read(&tar).expect("layer"), layer, "another layer");
    for quiet in [&["-q"][..], &["--quiet"], &[]] {
        // The global flag before the verb, and the verb's own after it.
        let mut a: Vec<&OsStr> = quiet.iter().map(OsStr::new).collect();
        a.extend(&args);
        if quiet.is_empty() {
            a.push("-q".as_ref());
        }
        let (st, tty) = on_terminal(&a);
        assert_ok(st, &a, &tty);
        assert_quiet_terminal(&tty, &a);
    }
    // A terminal that cannot redraw a line gets nothing either.
    let (st, tty) = on_terminal_as(&args, "dumb");
    assert_ok(st, &args, &tty);
    assert_quiet_terminal(&tty, &args);
    // To stdout, the tar is untouched by the spinner on stderr.
    let out = Command::new(bin())
        .args(["export", "--upper"])
        .arg(&up)
        .output()
        .expect("export");
    assert!(out.status.success());
    assert_eq!(out.stdout, layer);
}

#[test]
fn unpack_and_commit_show_progress_on_a_terminal_only() {
    let s = Scratch::new();
    let up = s.mkdir("u");
    fill(&up);
    let (entries, bytes) = (count_entries(&up), count_bytes(&up));
    let tar = s.path("layer.tar");
    let out = run(&os(&[
        OsStr::new("export"),
        "--upper".as_ref(),
        up.as_os_str(),
        "-o".as_ref(),
        tar.as_os_str(),
    ]));
    assert!(out.status.success(), "export failed");

    for (i, how) in ["terminal", "pipe", "quiet"].iter().enumerate() {
        let dest = s.mkdir(&format!("unpacked{i}"));
        let mut args = os(&[OsStr::new("unpack"), tar.as_os_str(), dest.as_os_str()]);
        match *how {
            "terminal" => {
                let (st, tty) = on_terminal(&args);
                assert_ok(st, &args, &tty);
                assert_progress(&tty, "unpacking", entries, Some(bytes));
            }
            "pipe" => assert_silent_on_pipe(&args),
            _ => {
                args.push("--quiet".as_ref());
                let (st, tty) = on_terminal(&args);
                assert_ok(st, &args, &tty);
                assert_quiet_terminal(&tty, &args);
            }
        }
        assert_eq!(count_entries(&dest), entries, "unpacked {how}");

        let newdir = s.path(&format!("committed{i}"));
        let mut args = os(&[
            OsStr::new("commit"),
            "--upper".as_ref(),
            up.as_os_str(),
            newdir.as_os_str(),
        ]);
        match *how {
            "terminal" => {
                let (st, tty) = on_terminal(&args);
                assert_ok(st, &args, &tty);
                assert_progress(&tty, "committing", entries, Some(bytes));
            }
            "pipe" => assert_silent_on_pipe(&args),
            _ => {
                args.insert(0, "-q".as_ref());
                let (st, tty) = on_terminal(&args);
                assert_ok(st, &args, &tty);
                assert_quiet_terminal(&tty, &args);
            }
        }
        assert_eq!(count_entries(&newdir), entries, "committed {how}");
    }
}

#[test]
fn checkpoint_and_restore_stream_the_daemons_progress() {
    let s = Scratch::new();
    let l = s.mkdir("l");
    write(&l, "etc/motd", "image\n");
    let up = s.mkdir("u");
    let mnt = s.mkdir("m");
    let m = Mounted::new(&[&l], Some(&up), &mnt, &[]);
    fill(&m.path(""));
    fs::remove_file(m.path("etc/motd")).expect("rm");
    // What the daemon copies: the upper as it is now.
    let (entries, bytes) = (count_entries(&up), count_bytes(&up));

    for (i, how) in ["terminal", "pipe", "quiet"].iter().enumerate() {
        let name = format!("c{i}");
        for verb in ["checkpoint", "restore"] {
            let mut args = os(&[OsStr::new(verb), mnt.as_os_str(), name.as_ref()]);
            match *how {
                "terminal" => {
                    let (st, tty) = on_terminal(&args);
                    assert_ok(st, &args, &tty);
                    let what = if verb == "restore" {
                        "restoring"
                    } else {
                        "checkpointing"
                    };
                    assert_progress(&tty, what, entries, Some(bytes));
                }
                "pipe" => assert_silent_on_pipe(&args),
                _ => {
                    args.push("-q".as_ref());
                    let (st, tty) = on_terminal(&args);
                    assert_ok(st, &args, &tty);
                    assert_quiet_terminal(&tty, &args);
                }
            }
        }
        assert_eq!(count_entries(&up), entries, "restored upper ({how})");
        assert!(!m.path("etc/motd").exists(), "the deletion was lost");
    }

    // A name the one-line protocol cannot carry is refused before anything
    // happens, in one line.
    let work = s.path(".u.unionfuse-work");
    let before = count_entries(&work);
    for bad in ["two words", "tab\there", "new\nline", "bell\x07", ""] {
        let out = run(&[OsStr::new("checkpoint"), mnt.as_os_str(), bad.as_ref()]);
        assert!(!out.status.success(), "checkpoint {bad:?} succeeded");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        assert!(err.contains("checkpoint name"), "{err}");
    }
    assert_eq!(
        count_entries(&work),
        before,
        "a refused name changed the work dir"
    );
    drop(m);
}

#[test]
fn run_diff_shows_the_walk_on_a_terminal_only() {
    let s = Scratch::new();
    let Some(root) = busybox_rootfs(&s) else {
        panic!("busybox is missing (package busybox-static)");
    };
    for (i, how) in ["terminal", "pipe", "quiet"].iter().enumerate() {
        let up = s.mkdir(&format!("up{i}"));
        let mut args = os(&[
            OsStr::new("run"),
            "--lower".as_ref(),
            root.as_os_str(),
            "--upper".as_ref(),
            up.as_os_str(),
            "--diff".as_ref(),
            "--".as_ref(),
            "/bin/sh".as_ref(),
            "-c".as_ref(),
            "mkdir -p /new/a /new/b && echo x > /new/a/f && rm /etc/motd".as_ref(),
        ]);
        match *how {
            "terminal" => {
                let (st, tty) = on_terminal(&args);
                assert_ok(st, &args, &tty);
                assert_progress(&tty, "comparing", count_entries(&up), None);
            }
            "pipe" => assert_silent_on_pipe(&args),
            _ => {
                args.insert(0, "--quiet".as_ref());
                let (st, tty) = on_terminal(&args);
                assert_ok(st, &args, &tty);
                assert_quiet_terminal(&tty, &args);
            }
        }
    }
}

#[test]
fn a_refusal_on_a_terminal_is_one_line_without_progress() {
    let s = Scratch::new();
    let missing = s.path("missing");
    let dest = s.mkdir("dest");
    let args = os(&[OsStr::new("unpack"), missing.as_os_str(), dest.as_os_str()]);
    let (st, tty) = on_terminal(&args);
    assert!(!st.success(), "unpack of a missing layer succeeded");
    assert_eq!(tty.trim().lines().count(), 1, "{tty:?}");
    assert!(!tty.contains("entries"), "{tty:?}");
    assert_eq!(count_entries(&dest), 0);
}

#[test]
fn renaming_a_big_lower_tree_logs_the_copy_up() {
    let s = Scratch::new();
    let l = s.mkdir("l");
    // Enough entries for the daemon to sum the copy up at the end (a copy
    // that takes over a second also says how far it got every second).
    let files = 1000;
    fs::create_dir(l.join("big")).expect("mkdir");
    for i in 0..files {
        fs::File::create(l.join(format!("big/f{i}"))).expect("create");
    }
    fs::write(l.join("big/data"), vec![7u8; 3 << 20]).expect("data");
    let up = s.mkdir("u");
    let mnt = s.mkdir("m");
    let log = s.path("daemon.log");
    let mut daemon = Command::new(bin())
        .args(mount_args(&[&l], Some(&up), &mnt, &["-f"]))
        .env("RUST_LOG", "unionfuse=info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(fs::File::create(&log).expect("log"))
        .spawn()
        .expect("spawn the daemon");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !is_mountpoint(&mnt) {
        assert!(Instant::now() < deadline, "the daemon never mounted");
        std::thread::sleep(Duration::from_millis(20));
    }
    let m = Mounted { mnt: mnt.clone() };
    let started = Instant::now();
    fs::rename(m.path("big"), m.path("moved")).expect("rename");
    let took = started.elapsed();
    assert_eq!(count_entries(&m.path("moved")), files + 1);
    drop(m);
    let deadline = Instant::now() + Duration::from_secs(30);
    while daemon.try_wait().expect("wait").is_none() {
        if Instant::now() > deadline {
            daemon.kill().ok();
            panic!("the daemon outlived its mount");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let text = fs::read_to_string(&log).expect("log");
    let total = format!("copied up /big: {} entries, 3.0 MiB in ", files + 1);
    assert!(
        text.contains(&total),
        "no {total:?} in the daemon's log: {text}"
    );
    if took > Duration::from_millis(1500) {
        assert!(
            text.contains("copying up /big: "),
            "a copy up of {took:?} said nothing on the way: {text}"
        );
    }
}

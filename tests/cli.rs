//! Runs the `unionfuse` binary as a user would: refused configurations,
//! daemon and foreground lifecycles, signals, `umount` of live and dead
//! mounts, colon-separated `--lower` lists and `--help`.
// The fixtures in common/ and the signal calls below need libc; every
// unsafe block says why it is sound.
#![allow(unsafe_code)]

mod common;

use std::collections::BTreeSet;
use std::ffi::{OsStr, OsString};
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use common::{Scratch, bin, daemon_pids, is_mountpoint, ls, mount_args, process_gone, run, write};

/// How long a refusal may take. The `run` fixture's deadline is 30 s; a
/// refusal that only validates arguments should be far quicker than that.
const REFUSE_WITHIN: Duration = Duration::from_secs(10);

/// How long a foreground mount may take to appear, and a signalled daemon to
/// exit.
const SETTLE: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// One line per entry under `root` (relative path, type, mode, size),
/// without crossing into other filesystems, so that a refused mount can be
/// shown to have created, removed or changed nothing.
fn tree(root: &Path) -> BTreeSet<String> {
    fn walk(root: &Path, dir: &Path, dev: u64, out: &mut BTreeSet<String>) {
        let Ok(rd) = fs::read_dir(dir) else {
            out.insert(format!("{} <unreadable>", dir.display()));
            return;
        };
        for e in rd {
            let e = e.expect("dir entry");
            let p = e.path();
            let rel = p
                .strip_prefix(root)
                .expect("under root")
                .display()
                .to_string();
            match fs::symlink_metadata(&p) {
                Err(err) => {
                    out.insert(format!("{rel} <stat failed: {err}>"));
                }
                Ok(md) => {
                    let kind = if md.is_dir() {
                        "d"
                    } else if md.is_symlink() {
                        "l"
                    } else if md.is_file() {
                        "f"
                    } else {
                        "o"
                    };
                    let size = if md.is_dir() { 0 } else { md.len() };
                    out.insert(format!(
                        "{rel} {kind} {:o} {size}",
                        md.permissions().mode() & 0o7777
                    ));
                    // A mountpoint (other device) is listed but not entered.
                    if md.is_dir() && md.dev() == dev {
                        walk(root, &p, dev, out);
                    }
                }
            }
        }
    }
    let dev = fs::symlink_metadata(root).expect("stat scratch").dev();
    let mut out = BTreeSet::new();
    walk(root, root, dev, &mut out);
    out
}

/// Mount points (as /proc/self/mountinfo spells them) under `root`.
fn mounts_under(root: &Path) -> Vec<String> {
    let root = root.canonicalize().expect("canonicalize scratch");
    let root = root.to_string_lossy().into_owned();
    let info = fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    info.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|m| m.replace("\\040", " ").replace("\\134", "\\"))
        .filter(|m| m == &root || m.starts_with(&format!("{root}/")))
        .collect()
}

/// Whether `path` is a mount point, also when the mount is dead (its root
/// answers ENOTCONN, so `canonicalize` of the path itself fails and the
/// fixture's `is_mountpoint` says false).
fn is_mount_even_dead(path: &Path) -> bool {
    let parent = path
        .parent()
        .expect("parent")
        .canonicalize()
        .expect("parent");
    let full = parent.join(path.file_name().expect("name"));
    let full = full.to_string_lossy().into_owned();
    let info = fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    info.lines().any(|l| {
        l.split(' ')
            .nth(4)
            .map(|m| m.replace("\\040", " ").replace("\\134", "\\") == full)
            .unwrap_or(false)
    })
}

/// Lazily unmounts `path` if it is still a mount, dead or alive.
fn force_unmount(path: &Path) {
    if is_mount_even_dead(path) {
        let _ = Command::new("umount").arg("-l").arg(path).status();
    }
}

/// Stderr as text, and its lines.
fn stderr_lines(out: &Output) -> (String, usize) {
    let s = String::from_utf8_lossy(&out.stderr).into_owned();
    let n = s.lines().count();
    (s, n)
}

/// Asserts that one line of stderr was printed and that it mentions at least
/// one of `needles` (case-insensitive).
fn assert_one_line_naming(out: &Output, needles: &[&str], what: &str) {
    let (err, n) = stderr_lines(out);
    assert_eq!(
        n, 1,
        "{what}: expected exactly one line on stderr, got {n}: {err:?}"
    );
    let low = err.to_lowercase();
    assert!(
        needles.iter().any(|w| low.contains(&w.to_lowercase())),
        "{what}: stderr {err:?} names none of {needles:?}"
    );
}

/// Runs `args`, which must be refused: non-zero exit within REFUSE_WITHIN,
/// exactly one stderr line naming the problem, no new mount under the
/// scratch dir and no change to anything in it.
fn assert_refused(s: &Scratch, args: &[&OsStr], needles: &[&str], what: &str) {
    let root = s.dir.path();
    let before = tree(root);
    let mounts_before = mounts_under(root);
    let t0 = Instant::now();
    let out = run(args);
    let took = t0.elapsed();
    let mounts_after = mounts_under(root);
    // Clean up whatever a wrongly accepted mount left before asserting, so
    // a failure here never leaves a mount behind.
    for m in &mounts_after {
        if !mounts_before.contains(m) {
            force_unmount(Path::new(m));
        }
    }
    assert!(
        !out.status.success(),
        "{what}: expected a refusal, but `unionfuse {args:?}` exited 0; stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        took < REFUSE_WITHIN,
        "{what}: refusal took {took:?} (should be quick)"
    );
    assert_one_line_naming(&out, needles, what);
    assert_eq!(
        mounts_before, mounts_after,
        "{what}: the refused mount changed the mount table"
    );
    let after = tree(root);
    let added: Vec<_> = after.difference(&before).collect();
    let removed: Vec<_> = before.difference(&after).collect();
    assert!(
        added.is_empty() && removed.is_empty(),
        "{what}: the refused mount changed the disk: added {added:?}, removed {removed:?}"
    );
}

fn os(p: &Path) -> &OsStr {
    p.as_os_str()
}

/// `unionfuse umount MNT`, retried for a few seconds while it reports the
/// mount busy. Tests run in parallel threads, and a child forked by another
/// thread holds copies of this thread's open files until it execs, so a
/// file this test closed a moment ago can still pin the mount briefly. A
/// daemon that really keeps the mount busy still fails here.
fn umount_cmd(mnt: &Path) -> Output {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let out = run(&[OsStr::new("umount"), os(mnt)]);
        let busy = String::from_utf8_lossy(&out.stderr)
            .to_lowercase()
            .contains("busy");
        if out.status.success() || !busy || Instant::now() > deadline {
            return out;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A child unionfuse process that is SIGKILLed (and its mount lazily
/// removed) if the test ends before it exits on its own.
struct Daemon {
    child: Option<Child>,
    mnt: PathBuf,
}

impl Daemon {
    /// Starts `unionfuse mount ... -f EXTRA... MNT` with stderr going to
    /// `log`.
    fn foreground(lowers: &[&Path], mnt: &Path, log: &Path, extra: &[&str]) -> Daemon {
        let mut args: Vec<OsString> = vec!["mount".into()];
        for l in lowers {
            args.push("--lower".into());
            args.push(l.as_os_str().to_owned());
        }
        args.push("-f".into());
        args.extend(extra.iter().map(OsString::from));
        args.push(mnt.as_os_str().to_owned());
        let child = Command::new(bin())
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(log).expect("log file"))
            .spawn()
            .expect("spawn unionfuse -f");
        Daemon {
            child: Some(child),
            mnt: mnt.to_path_buf(),
        }
    }

    fn pid(&self) -> libc::pid_t {
        libc::pid_t::try_from(self.child.as_ref().expect("child").id()).expect("pid fits")
    }

    /// Polls until the mount is live; panics if the process exits first or
    /// SETTLE passes.
    fn wait_mounted(&mut self, log: &Path) {
        let deadline = Instant::now() + SETTLE;
        loop {
            if is_mountpoint(&self.mnt) {
                return;
            }
            if let Some(st) = self
                .child
                .as_mut()
                .expect("child")
                .try_wait()
                .expect("wait")
            {
                panic!(
                    "unionfuse -f exited ({st}) before mounting: {}",
                    fs::read_to_string(log).unwrap_or_default()
                );
            }
            assert!(
                Instant::now() < deadline,
                "unionfuse -f did not mount within {SETTLE:?}: {}",
                fs::read_to_string(log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Polls until the process exits; None when SETTLE passes first.
    fn wait_exit(&mut self) -> Option<ExitStatus> {
        let deadline = Instant::now() + SETTLE;
        loop {
            if let Some(st) = self
                .child
                .as_mut()
                .expect("child")
                .try_wait()
                .expect("wait")
            {
                self.child = None;
                return Some(st);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        force_unmount(&self.mnt);
    }
}

/// Sends `sig` to `pid`.
fn send_signal(pid: libc::pid_t, sig: libc::c_int) {
    // SAFETY: kill(2) takes plain integers and has no memory effects; the
    // pid is a process this test started or found by its unique mountpoint.
    let rc = unsafe { libc::kill(pid, sig) };
    assert_eq!(
        rc,
        0,
        "kill({pid}, {sig}): {}",
        std::io::Error::last_os_error()
    );
}

/// A small two-file lower for lifecycle tests.
fn simple_lower(s: &Scratch) -> PathBuf {
    let lower = s.mkdir("lower");
    write(&lower, "a.txt", "alpha\n");
    write(&lower, "d/b.txt", "bravo\n");
    lower
}

// ---------------------------------------------------------------------------
// Refused configurations
// ---------------------------------------------------------------------------

#[test]
fn refuses_missing_lower() {
    let s = Scratch::new();
    let lower = s.path("nolowerhere");
    let upper = s.mkdir("upper");
    let mnt = s.mkdir("mnt");
    let args = mount_args(&[&lower], Some(&upper), &mnt, &[]);
    assert_refused(
        &s,
        &args,
        &["nolowerhere", "no such", "not exist", "not found"],
        "missing lower",
    );
}

#[test]
fn refuses_missing_lower_among_several() {
    let s = Scratch::new();
    let good = simple_lower(&s);
    let lower = s.path("nolowerhere");
    let mnt = s.mkdir("mnt");
    let args = mount_args(&[&good, &lower], None, &mnt, &[]);
    assert_refused(
        &s,
        &args,
        &["nolowerhere", "no such", "not exist", "not found"],
        "missing second lower",
    );
}

#[test]
fn refuses_lower_that_is_a_file() {
    let s = Scratch::new();
    let lower = s.path("lowerfile");
    fs::write(&lower, "not a dir\n").expect("write");
    let mnt = s.mkdir("mnt");
    let args = mount_args(&[&lower], None, &mnt, &[]);
    assert_refused(&s, &args, &["lowerfile", "directory"], "lower is a file");
}

#[test]
fn refuses_missing_upper() {
    let s = Scratch::new();
    let lower = simple_lower(&s);
    let upper = s.path("noupperhere");
    let mnt = s.mkdir("mnt");
    let args = mount_args(&[&lower], Some(&upper), &mnt, &[]);
    assert_refused(
        &s,
        &args,
        &["noupperhere", "no such", "not exist", "not found"],
        "missing upper",
    );
}

/// Words a message about overlapping layer/mountpoint paths would use.
const OVERLAP: &[&str] = &[
    "same",
    "equal",
    "overlap",
    "inside",
    "within",
    "contain",
    "nested",
    "beneath",
    "below",
    "under",
    "above",
    "parent",
    "ancestor",
    "descendant",
];

fn with(extra: &[&'static str], base: &[&'static str]) -> Vec<&'static str> {
    extra.iter().chain(base).copied().collect()
}

#[test]
fn refuses_upper_equal_to_lower() {
    let s = Scratch::new();
    let lower = simple_lower(&s);
    let mnt = s.mkdir("mnt");
    let args = mount_args(&[&lower], Some(&lower), &mnt, &[]);
    assert_refused(&s, &args, &with(&["lower"], OVERLAP), "upper == lower");
}

#[test]
fn refuses_upper_inside_lower() {
    let s = Scratch::new();
    let lower = simple_lower(&s);
    let upper = s.mkdir("lower/upperin");
    let mnt = s.mkdir("mnt");
    let args = mount_args(&[&lower], Some(&upper), &mnt, &[]);
    assert_refused(
        &s,
        &args,
        &with(&["upperin"], OVERLAP),
        "upper inside lower",
    );
}

#[test]
fn refuses_upper_containing_lower() {
    let s = Scratch::new();
    let upper = s.mkdir("upperout");
    let lower = s.mkdir("upperout/lowerin");
    write(&lower, "a.txt", "alpha\n");
    let mnt = s.mkdir("mnt");
    let args = mount_args(&[&lower], Some(&upper), &mnt, &[]);
    assert_refused(
        &s,
        &args,
        &with(&["upperout", "lowerin"], OVERLAP),
        "upper contains lower",
    );
}

#[test]
fn refuses_upper_equal_to_mountpoint() {
    let s = Scratch::new();
    let lower = simple_lower(&s);
    let mnt = s.mkdir("mntupper");
    let args = mount_args(&[&lower], Some(&mnt), &mnt, &[]);
    assert_refused(
        &s,
        &args,
        &with(&["mntupper", "mountpoint", "mount point"], OVERLAP),
        "upper == mountpoint",
    );
}

#[test]
fn refuses_upper_inside_mountpoint() {
    let s = Scratch::new();
    let lower = simple_lower(&s);
    let mnt = s.mkdir("mntout");
    let upper = s.mkdir("mntout/upperin");
    let args = mount_args(&[&lower], Some(&upper), &mnt, &[]);
    assert_refused(
        &s,
        &args,
        &with(&["mntout", "upperin", "mountpoint", "mount point"], OVERLAP),
        "upper inside mountpoint",
    );
}

#[test]
fn refuses_upper_containing_mountpoint() {
    let s = Scratch::new();
    let lower = simple_lower(&s);
    let upper = s.mkdir("upperout");
    let mnt = s.mkdir("upperout/mntin");
    let args = mount_args(&[&lower], Some(&upper), &mnt, &[]);
    assert_refused(
        &s,
        &args,
        &with(&["upperout", "mntin", "mountpoint", "mount point"], OVERLAP),
        "upper contains mountpoint",
    );
}

#[test]
fn refuses_mountpoint_inside_lower() {
    let s = Scratch::new();
    let lower = simple_lower(&s);
    let mnt = s.mkdir("lower/mntin");
    let args = mount_args(&[&lower], None, &mnt, &[]);
    assert_refused(
        &s,
        &args,
        &with(&["mntin", "mountpoint", "mount point"], OVERLAP),
        "mountpoint inside lower",
    );
}

#[test]
fn refuses_mountpoint_inside_lower_with_upper() {
    let s = Scratch::new();
    let lower = simple_lower(&s);
    let upper = s.mkdir("upper");
    let mnt = s.mkdir("lower/d/mntin");
    let args = mount_args(&[&lower], Some(&upper), &mnt, &[]);
    assert_refused(
        &s,
        &args,
        &with(&["mntin", "mountpoint", "mount point"], OVERLAP),
        "mountpoint deep inside lower, with upper",
    );
}

#[test]
fn refuses_mountpoint_above_lower() {
    let s = Scratch::new();
    let mnt = s.mkdir("mntout");
    let lower = s.mkdir("mntout/lowerin");
    write(&lower, "a.txt", "alpha\n");
    let args = mount_args(&[&lower], None, &mnt, &[]);
    assert_refused(
        &s,
        &args,
        &with(&["mntout", "lowerin", "mountpoint", "mount point"], OVERLAP),
        "lower inside mountpoint",
    );
}

#[test]
fn refuses_mountpoint_already_mounted() {
    let s = Scratch::new();
    let lower = simple_lower(&s);
    let other = s.mkdir("other");
    write(&other, "o.txt", "other\n");
    let mnt = s.mkdir("mnt");
    let first = common::Mounted::new(&[&lower], None, &mnt, &[]);
    let count = |m: &Path| mounts_under(m).len();
    assert_eq!(count(&mnt), 1);
    let args = mount_args(&[&other], None, &mnt, &[]);
    assert_refused(
        &s,
        &args,
        &["mounted", "mountpoint", "mount point", "busy", "already"],
        "mountpoint already a mount",
    );
    // The first mount is untouched and still serves.
    assert_eq!(count(&mnt), 1, "a second mount was stacked");
    assert_eq!(ls(&first.path("")), ["a.txt", "d"]);
}

#[test]
fn refuses_missing_mountpoint() {
    let s = Scratch::new();
    let lower = simple_lower(&s);
    let upper = s.mkdir("upper");
    let mnt = s.path("nomnthere");
    let args = mount_args(&[&lower], Some(&upper), &mnt, &[]);
    assert_refused(
        &s,
        &args,
        &["nomnthere", "no such", "not exist", "not found"],
        "missing mountpoint",
    );
}

#[test]
fn refuses_mountpoint_that_is_a_file() {
    let s = Scratch::new();
    let lower = simple_lower(&s);
    let mnt = s.path("mntfile");
    fs::write(&mnt, "x").expect("write");
    let args = mount_args(&[&lower], None, &mnt, &[]);
    assert_refused(&s, &args, &["mntfile", "directory"], "mountpoint is a file");
}

#[test]
fn refuses_zero_threads() {
    let s = Scratch::new();
    let lower = simple_lower(&s);
    let upper = s.mkdir("upper");
    let mnt = s.mkdir("mnt");
    let args = mount_args(&[&lower], Some(&upper), &mnt, &["--threads", "0"]);
    assert_refused(&s, &args, &["thread"], "--threads 0");
}

#[test]
fn refuses_no_lowers() {
    let s = Scratch::new();
    let upper = s.mkdir("upper");
    let mnt = s.mkdir("mnt");
    let args = mount_args(&[], Some(&upper), &mnt, &[]);
    assert_refused(&s, &args, &["lower"], "no --lower");
}

#[test]
fn refuses_empty_lower_list_entry() {
    // `--lower ''` names no directory at all.
    let s = Scratch::new();
    let mnt = s.mkdir("mnt");
    let args = mount_args(&[Path::new("")], None, &mnt, &[]);
    assert_refused(
        &s,
        &args,
        &["lower", "empty", "no such", "not exist"],
        "--lower ''",
    );
}

// ---------------------------------------------------------------------------
// Lifecycle
// ---------------------------------------------------------------------------

#[test]
fn daemon_mount_serves_at_once_and_umount_removes_it() {
    let s = Scratch::new();
    let lower = simple_lower(&s);
    let upper = s.mkdir("upper");
    let mnt = s.mkdir("mnt");
    let m = common::Mounted::new(&[&lower], Some(&upper), &mnt, &[]);
    // No sleep: exit 0 must mean the mount answers now.
    let md = fs::metadata(m.path("a.txt")).expect("stat a.txt right after mount");
    assert_eq!(md.len(), 6);
    assert!(fs::metadata(m.path("d")).expect("stat d").is_dir());
    assert_eq!(ls(&m.path("")), ["a.txt", "d"]);
    assert_eq!(ls(&m.path("d")), ["b.txt"]);
    assert_eq!(
        fs::read_to_string(m.path("d/b.txt")).expect("read"),
        "bravo\n"
    );

    let out = umount_cmd(&mnt);
    assert!(
        out.status.success(),
        "unionfuse umount failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!is_mountpoint(&mnt), "still mounted after unionfuse umount");
    assert!(ls(&mnt).is_empty(), "mountpoint dir not empty after umount");
    // The daemon is gone too.
    let deadline = Instant::now() + SETTLE;
    while !daemon_pids(&mnt).is_empty() {
        assert!(
            Instant::now() < deadline,
            "daemon still running after umount"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn mount_with_all_options_accepted() {
    let s = Scratch::new();
    let lower = simple_lower(&s);
    let upper = s.mkdir("upper");
    let work = s.mkdir("work");
    let mnt = s.mkdir("mnt");
    let m = common::Mounted::new(
        &[&lower],
        Some(&upper),
        &mnt,
        &["--work", work.to_str().expect("utf8"), "--threads", "3"],
    );
    assert_eq!(ls(&m.path("")), ["a.txt", "d"]);
    assert_eq!(
        fs::read_to_string(m.path("a.txt")).expect("read"),
        "alpha\n"
    );
}

#[test]
fn without_upper_the_mount_is_read_only() {
    let s = Scratch::new();
    let lower = simple_lower(&s);
    let mnt = s.mkdir("mnt");
    let before = tree(&lower);
    let m = common::Mounted::new(&[&lower], None, &mnt, &[]);
    let err = fs::write(m.path("new.txt"), "x").expect_err("create on a read-only mount");
    assert_eq!(err.raw_os_error(), Some(libc::EROFS), "create: {err}");
    let err = fs::OpenOptions::new()
        .write(true)
        .open(m.path("a.txt"))
        .expect_err("open for write on a read-only mount");
    assert_eq!(
        err.raw_os_error(),
        Some(libc::EROFS),
        "open O_WRONLY: {err}"
    );
    let err = fs::remove_file(m.path("a.txt")).expect_err("unlink on a read-only mount");
    assert_eq!(err.raw_os_error(), Some(libc::EROFS), "unlink: {err}");
    drop(m);
    assert_eq!(tree(&lower), before, "the lower changed");
}

#[test]
fn umount_of_a_plain_directory_fails_with_one_line() {
    let s = Scratch::new();
    let dir = s.mkdir("plaindir");
    let before = tree(s.dir.path());
    let out = run(&[OsStr::new("umount"), os(&dir)]);
    assert!(!out.status.success(), "umount of a non-mount exited 0");
    assert_one_line_naming(
        &out,
        &["plaindir", "not mounted", "not a mount", "mount"],
        "umount non-mount",
    );
    assert_eq!(tree(s.dir.path()), before);
}

#[test]
fn umount_of_a_missing_path_fails_with_one_line() {
    let s = Scratch::new();
    let dir = s.path("nosuchdir");
    let out = run(&[OsStr::new("umount"), os(&dir)]);
    assert!(!out.status.success(), "umount of a missing path exited 0");
    assert_one_line_naming(
        &out,
        &["nosuchdir", "no such", "not exist", "not mounted", "mount"],
        "umount missing path",
    );
}

fn foreground_signal_unmounts(sig: libc::c_int) {
    let s = Scratch::new();
    let lower = simple_lower(&s);
    let mnt = s.mkdir("mnt");
    let log = s.path("fg.log");
    let mut d = Daemon::foreground(&[&lower], &mnt, &log, &[]);
    d.wait_mounted(&log);
    assert_eq!(ls(&mnt), ["a.txt", "d"]);
    assert_eq!(
        fs::read_to_string(mnt.join("a.txt")).expect("read"),
        "alpha\n"
    );
    send_signal(d.pid(), sig);
    let st = d.wait_exit();
    let log_text = fs::read_to_string(&log).unwrap_or_default();
    let st = st.unwrap_or_else(|| {
        panic!("unionfuse -f still running {SETTLE:?} after signal {sig}; log: {log_text}")
    });
    assert!(
        st.success(),
        "unionfuse -f exited with {st} after signal {sig}; log: {log_text}"
    );
    assert!(
        !is_mount_even_dead(&mnt),
        "still mounted after signal {sig} to the foreground process"
    );
}

#[test]
fn foreground_sigterm_unmounts_and_exits_zero() {
    foreground_signal_unmounts(libc::SIGTERM);
}

#[test]
fn foreground_sigint_unmounts_and_exits_zero() {
    foreground_signal_unmounts(libc::SIGINT);
}

#[test]
fn foreground_umount_makes_process_exit_zero() {
    let s = Scratch::new();
    let lower = simple_lower(&s);
    let mnt = s.mkdir("mnt");
    let log = s.path("fg.log");
    let mut d = Daemon::foreground(&[&lower], &mnt, &log, &[]);
    d.wait_mounted(&log);
    let out = umount_cmd(&mnt);
    assert!(
        out.status.success(),
        "unionfuse umount of a foreground mount failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let st = d.wait_exit().unwrap_or_else(|| {
        panic!(
            "unionfuse -f still running after umount; log: {}",
            fs::read_to_string(&log).unwrap_or_default()
        )
    });
    assert!(
        st.success(),
        "unionfuse -f exited with {st} after umount; log: {}",
        fs::read_to_string(&log).unwrap_or_default()
    );
    assert!(!is_mount_even_dead(&mnt));
}

#[test]
fn foreground_debug_logs_requests() {
    let s = Scratch::new();
    let lower = simple_lower(&s);
    let mnt = s.mkdir("mnt");
    let log = s.path("fg.log");
    let mut d = Daemon::foreground(&[&lower], &mnt, &log, &["--debug"]);
    d.wait_mounted(&log);
    assert_eq!(
        fs::read_to_string(mnt.join("a.txt")).expect("read"),
        "alpha\n"
    );
    send_signal(d.pid(), libc::SIGTERM);
    let st = d
        .wait_exit()
        .expect("unionfuse -f --debug exits after SIGTERM");
    assert!(st.success(), "unionfuse -f --debug exited with {st}");
    let text = fs::read_to_string(&log).expect("log").to_lowercase();
    assert!(
        text.contains("lookup"),
        "--debug logged no lookup request; log:\n{text}"
    );
}

#[test]
fn killed_daemon_leaves_dead_mount_that_umount_cleans() {
    let s = Scratch::new();
    let lower = simple_lower(&s);
    let mnt = s.mkdir("mnt");
    let m = common::Mounted::new(&[&lower], None, &mnt, &[]);
    assert_eq!(ls(&m.path("")), ["a.txt", "d"]);
    let pids = daemon_pids(&mnt);
    assert!(!pids.is_empty(), "no unionfuse process mentions {mnt:?}");
    for p in &pids {
        send_signal(*p, libc::SIGKILL);
    }
    let deadline = Instant::now() + SETTLE;
    while !pids.iter().all(|p| process_gone(*p)) {
        assert!(Instant::now() < deadline, "SIGKILLed daemon did not die");
        std::thread::sleep(Duration::from_millis(20));
    }
    if !is_mount_even_dead(&mnt) {
        // An auto-unmount helper already removed it: nothing is left, which
        // is what the cleanup below would achieve.
        eprintln!("note: the mount disappeared with its daemon (auto-unmount)");
        return;
    }
    let err = fs::metadata(&mnt).expect_err("stat of a dead mount");
    let dead = err.raw_os_error();
    // Mounting over it says what it is and how to clear it.
    let again = run(&mount_args(&[&lower], None, &mnt, &[]));
    // Clean up first if `unionfuse umount` turns out not to.
    let out = umount_cmd(&mnt);
    let still = is_mount_even_dead(&mnt);
    force_unmount(&mnt);
    drop(m);
    // ENOTCONN once the connection is gone; ECONNABORTED when the stat was
    // already queued as the daemon died and the kernel aborted it.
    assert!(
        matches!(dead, Some(libc::ENOTCONN | libc::ECONNABORTED)),
        "stat of the dead mount: {err}"
    );
    assert!(
        out.status.success(),
        "unionfuse umount of a dead mount failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!still, "unionfuse umount left the dead mount in place");
    assert!(
        !again.status.success(),
        "a mount over a dead mount succeeded"
    );
    if dead == Some(libc::ENOTCONN) {
        assert_one_line_naming(
            &again,
            &["dead FUSE mount", "unionfuse umount"],
            "a mount over a dead mount",
        );
    }
}

// ---------------------------------------------------------------------------
// --lower lists
// ---------------------------------------------------------------------------

/// Two lowers where the order shows: `x` in both, `y` only in the bottom.
fn ordered_lowers(s: &Scratch) -> (PathBuf, PathBuf) {
    let a = s.mkdir("la");
    let b = s.mkdir("lb");
    write(&a, "x", "from a\n");
    write(&b, "x", "from b\n");
    write(&b, "y", "only b\n");
    (a, b)
}

#[test]
fn repeated_lower_is_top_most_first() {
    let s = Scratch::new();
    let (a, b) = ordered_lowers(&s);
    let mnt = s.mkdir("mnt");
    let m = common::Mounted::new(&[&a, &b], None, &mnt, &[]);
    assert_eq!(ls(&m.path("")), ["x", "y"]);
    assert_eq!(fs::read_to_string(m.path("x")).expect("read"), "from a\n");
}

#[test]
fn colon_separated_lower_list() {
    let s = Scratch::new();
    let (a, b) = ordered_lowers(&s);
    let mnt = s.mkdir("mnt");
    let list = format!("{}:{}", a.display(), b.display());
    let m = common::Mounted::new(&[Path::new(&list)], None, &mnt, &[]);
    assert_eq!(ls(&m.path("")), ["x", "y"]);
    assert_eq!(fs::read_to_string(m.path("x")).expect("read"), "from a\n");
    assert_eq!(fs::read_to_string(m.path("y")).expect("read"), "only b\n");
}

#[test]
fn colon_list_mixed_with_repeated_lower() {
    let s = Scratch::new();
    let (a, b) = ordered_lowers(&s);
    let c = s.mkdir("lc");
    write(&c, "x", "from c\n");
    write(&c, "z", "only c\n");
    let mnt = s.mkdir("mnt");
    let list = format!("{}:{}", a.display(), b.display());
    let m = common::Mounted::new(&[Path::new(&list), &c], None, &mnt, &[]);
    assert_eq!(ls(&m.path("")), ["x", "y", "z"]);
    assert_eq!(fs::read_to_string(m.path("x")).expect("read"), "from a\n");
}

#[test]
fn escaped_colon_in_lower_name() {
    let s = Scratch::new();
    let (a, _b) = ordered_lowers(&s);
    let xy = s.mkdir("x:y");
    write(&xy, "c", "colon dir\n");
    write(&xy, "x", "from x:y\n");
    let mnt = s.mkdir("mnt");
    let esc = |p: &Path| p.display().to_string().replace(':', "\\:");

    // Alone.
    let alone = esc(&xy);
    {
        let m = common::Mounted::new(&[Path::new(&alone)], None, &mnt, &[]);
        assert_eq!(ls(&m.path("")), ["c", "x"]);
        assert_eq!(
            fs::read_to_string(m.path("c")).expect("read"),
            "colon dir\n"
        );
    }
    assert!(!is_mountpoint(&mnt));

    // In a list, below another lower.
    let list = format!("{}:{}", esc(&a), esc(&xy));
    let m = common::Mounted::new(&[Path::new(&list)], None, &mnt, &[]);
    assert_eq!(ls(&m.path("")), ["c", "x"]);
    assert_eq!(fs::read_to_string(m.path("x")).expect("read"), "from a\n");
    assert_eq!(
        fs::read_to_string(m.path("c")).expect("read"),
        "colon dir\n"
    );
}

#[test]
fn unescaped_colon_splits_and_the_halves_are_missing() {
    // `x:y` unescaped means lowers `.../x` and `y`, which do not exist.
    let s = Scratch::new();
    let xy = s.mkdir("x:y");
    write(&xy, "c", "colon dir\n");
    let mnt = s.mkdir("mnt");
    let args = mount_args(&[&xy], None, &mnt, &[]);
    assert_refused(
        &s,
        &args,
        &["no such", "not exist", "not found", "x", "y"],
        "unescaped colon",
    );
}

// ---------------------------------------------------------------------------
// --help
// ---------------------------------------------------------------------------

#[test]
fn mount_help_lists_every_option() {
    let out = run(&[OsStr::new("mount"), OsStr::new("--help")]);
    assert!(out.status.success(), "mount --help exited {}", out.status);
    let text = String::from_utf8_lossy(&out.stdout);
    for opt in [
        "--lower",
        "--upper",
        "--work",
        "--foreground",
        "-f",
        "--threads",
        "--debug",
    ] {
        assert!(
            text.contains(opt),
            "mount --help does not mention {opt}:\n{text}"
        );
    }
    assert!(
        text.to_lowercase().contains("default"),
        "mount --help states no defaults:\n{text}"
    );
}

#[test]
fn umount_and_top_level_help_exit_zero() {
    let out = run(&[OsStr::new("umount"), OsStr::new("--help")]);
    assert!(out.status.success(), "umount --help exited {}", out.status);
    let out = run(&[OsStr::new("--help")]);
    assert!(out.status.success(), "--help exited {}", out.status);
    let text = String::from_utf8_lossy(&out.stdout);
    for sub in ["mount", "umount"] {
        assert!(text.contains(sub), "--help does not mention {sub}:\n{text}");
    }
}

#[test]
fn notify_socket_gets_ready_once_the_mount_answers() {
    let s = Scratch::new();
    let lower = simple_lower(&s);
    let mnt = s.mkdir("mnt");
    let sock_path = s.path("notify");
    let sock = std::os::unix::net::UnixDatagram::bind(&sock_path).expect("bind");
    sock.set_read_timeout(Some(SETTLE)).expect("timeout");
    let out = Command::new(bin())
        .args(["mount", "--lower"])
        .arg(&lower)
        .arg(&mnt)
        .env("NOTIFY_SOCKET", &sock_path)
        .output()
        .expect("run unionfuse");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut buf = [0u8; 64];
    let n = sock.recv(&mut buf).expect("READY=1 within the timeout");
    assert_eq!(&buf[..n], b"READY=1");
    common::unmount(&mnt);
}

#[test]
fn a_mount_failing_after_the_upper_is_opened_leaves_nothing() {
    if common::is_root() {
        // As root the kernel mounts directly; fusermount3 only serves users.
        skip_as_non_root_inverse();
        return;
    }
    let s = Scratch::new();
    let lower = simple_lower(&s);
    let upper = s.mkdir("upper");
    let mnt = s.mkdir("mnt");
    // A fusermount3 that refuses: the upper was opened (format recorded,
    // staging and index made in the work dir) before the mount failed.
    let out = Command::new(bin())
        .args(["mount", "--lower"])
        .arg(&lower)
        .arg("--upper")
        .arg(&upper)
        .arg(&mnt)
        .env("FUSERMOUNT_PATH", "/bin/false")
        .output()
        .expect("run unionfuse");
    assert!(!out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim().lines().count(),
        1
    );
    assert!(
        common::listxattr(&upper).is_empty(),
        "xattrs left on the upper: {:?}",
        common::listxattr(&upper)
    );
    assert!(
        ls(&s.path(""))
            .iter()
            .all(|n| !n.contains("unionfuse-work")),
        "work dir left: {:?}",
        ls(&s.path(""))
    );
    assert!(!is_mountpoint(&mnt));
}

/// The inverse of the non-root skip: a check only an ordinary user makes.
fn skip_as_non_root_inverse() {
    eprintln!("skipped as root: fusermount3 is used by ordinary users only");
}

//! Copy-up is atomic: a daemon killed at any moment of a copy-up leaves the
//! merged view with the old file or the complete copy, never a partial one,
//! and the next mount removes what the interrupted copy left behind.
#![allow(unsafe_code)]

mod common;

use std::fs;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

const MIB: usize = 1 << 20;
/// Large enough that copying it takes a while on a disk without reflinks.
const BIG_MIB: usize = 384;
const TAIL: &[u8] = b"tail";

/// The byte at `off` of the lower file: varied, so a copy made of zeros or
/// of the wrong region shows.
fn pattern(off: usize) -> u8 {
    (off / 4096 % 251) as u8 ^ (off % 7) as u8
}

fn write_big(path: &Path) {
    let mut f = fs::File::create(path).expect("create big");
    let mut buf = vec![0u8; MIB];
    for chunk in 0..BIG_MIB {
        for (i, b) in buf.iter_mut().enumerate() {
            *b = pattern(chunk * MIB + i);
        }
        f.write_all(&buf).expect("write big");
    }
    f.sync_all().expect("sync big");
}

/// Checks that `path` holds the lower data (sampled at every MiB boundary
/// and at the end) followed by nothing or by TAIL.
fn check_whole(path: &Path, what: &str) {
    let data_len = BIG_MIB * MIB;
    let meta = fs::metadata(path).unwrap_or_else(|e| panic!("{what}: stat: {e}"));
    let size = meta.len() as usize;
    assert!(
        size == data_len || size == data_len + TAIL.len(),
        "{what}: size {size}, expected {data_len} or {}",
        data_len + TAIL.len()
    );
    let f = fs::File::open(path).expect("open");
    let mut buf = vec![0u8; 4096];
    for chunk in 0..BIG_MIB {
        for off in [chunk * MIB, chunk * MIB + MIB - 4096] {
            read_exact_at(&f, &mut buf, off as u64, what);
            for (i, b) in buf.iter().enumerate() {
                assert_eq!(*b, pattern(off + i), "{what}: byte {} differs", off + i);
            }
        }
    }
    if size > data_len {
        let mut t = [0u8; 4];
        read_exact_at(&f, &mut t, data_len as u64, what);
        assert_eq!(&t, TAIL, "{what}: appended bytes");
    }
}

fn read_exact_at(f: &fs::File, buf: &mut [u8], off: u64, what: &str) {
    use std::os::unix::fs::FileExt;
    f.read_exact_at(buf, off)
        .unwrap_or_else(|e| panic!("{what}: read at {off}: {e}"));
}

fn daemon_pids(mnt: &Path) -> Vec<libc::pid_t> {
    let out = Command::new("pgrep")
        .arg("-f")
        .arg(mnt.as_os_str())
        .output()
        .expect("pgrep");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

fn kill(pid: libc::pid_t) {
    // SAFETY: kill(2) takes plain integers; the pid is the daemon this test
    // started, found by its unique mountpoint.
    unsafe { libc::kill(pid, libc::SIGKILL) };
}

#[test]
fn killed_copy_up_leaves_old_file_or_whole_copy() {
    let s = Scratch::new();
    let lower = s.mkdir("lower");
    write_big(&lower.join("big"));
    let before = fs::metadata(lower.join("big")).expect("lower stat");
    let mnt = s.mkdir("mnt");
    let mut outcomes = Vec::new();
    // From "killed before the copy starts" to "killed after it is done".
    for (round, delay_ms) in [0u64, 20, 80, 200, 600, 3000].into_iter().enumerate() {
        let upper = s.mkdir(&format!("upper{round}"));
        let work = s.mkdir(&format!("work{round}"));
        let work_arg = work.to_str().expect("utf-8 path");
        let m = Mounted::new(&[&lower], Some(&upper), &mnt, &["--work", work_arg]);
        let target = m.path("big");
        let writer = std::thread::spawn(move || {
            let f = fs::OpenOptions::new()
                .append(true)
                .custom_flags(libc::O_CLOEXEC)
                .open(&target);
            f.and_then(|mut f| f.write_all(TAIL)).is_ok()
        });
        std::thread::sleep(Duration::from_millis(delay_ms));
        let pids = daemon_pids(&mnt);
        assert!(!pids.is_empty(), "no daemon for {mnt:?}");
        pids.iter().for_each(|p| kill(*p));
        let deadline = Instant::now() + Duration::from_secs(20);
        while !daemon_pids(&mnt).is_empty() {
            assert!(Instant::now() < deadline, "killed daemon lives on");
            std::thread::sleep(Duration::from_millis(10));
        }
        let appended = writer.join().expect("writer thread");
        let _ = Command::new("umount").arg("-l").arg(&mnt).status();
        drop(m);

        // On disk: no copy at the final name, or a whole one.
        let copy = upper.join("big");
        let copied = copy.exists();
        if copied {
            check_whole(&copy, &format!("round {round}: upper copy"));
        }
        // The next mount shows the old file or the whole copy, and clears
        // the staging directory.
        let m = Mounted::new(&[&lower], Some(&upper), &mnt, &["--work", work_arg]);
        check_whole(&m.path("big"), &format!("round {round}: merged view"));
        let staging: Vec<_> = fs::read_dir(work.join("unionfuse-staging"))
            .expect("staging dir")
            .collect();
        assert!(
            staging.is_empty(),
            "round {round}: staging not emptied: {staging:?}"
        );
        let names = ls(&m.path(""));
        assert_eq!(names, ["big"], "round {round}: merged listing");
        drop(m);
        outcomes.push((delay_ms, copied, appended));
    }
    eprintln!("(kill delay ms, copy present, append finished): {outcomes:?}");
    // The lower file was never touched.
    let after = fs::metadata(lower.join("big")).expect("lower stat");
    assert_eq!(
        (
            after.len(),
            after.mtime(),
            after.mtime_nsec(),
            after.ctime(),
            after.ctime_nsec(),
            after.ino()
        ),
        (
            before.len(),
            before.mtime(),
            before.mtime_nsec(),
            before.ctime(),
            before.ctime_nsec(),
            before.ino()
        ),
        "the lower file changed"
    );
    check_whole(&lower.join("big"), "lower");
    // A kill after the copy finished must have left it in place, so the
    // test did cover both outcomes.
    assert!(
        outcomes.last().is_some_and(|(_, copied, _)| *copied),
        "no round completed the copy-up: {outcomes:?}"
    );
}

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

// ---------------------------------------------------------------------------
// A mixed workload killed at random moments
// ---------------------------------------------------------------------------

/// What a path may hold after a crash: each of these contents, or absence.
type Outcomes = std::collections::BTreeMap<String, Vec<Option<Vec<u8>>>>;

fn small(seed: usize, len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 + seed * 7) as u8 | 1).collect()
}

fn read_opt(p: &Path) -> Option<Vec<u8>> {
    match fs::read(p) {
        Ok(v) => Some(v),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => panic!("read {}: {e}", p.display()),
    }
}

/// One cycle's workload through `mnt`, recording in `may` what each path
/// may hold from the moment a change starts, narrowed to the new content
/// once an fsync made it durable. Stops at the first failure (the daemon
/// was killed).
fn workload(
    mnt: &Path,
    cycle: usize,
    may: &std::sync::Mutex<Outcomes>,
    steps: &std::sync::atomic::AtomicUsize,
) -> std::io::Result<()> {
    // Each change recorded is a step; the count tells how far a cycle got.
    let set = |p: &str, v: Vec<Option<Vec<u8>>>| {
        may.lock().expect("model").insert(p.to_string(), v);
        steps.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    };
    let now = |p: &str| may.lock().expect("model")[p][0].clone();
    let sync = |p: &Path| fs::File::open(p).and_then(|f| f.sync_all());
    // Appends to lower files: a copy-up each, then fsync.
    for i in 0..6 {
        let p = format!("f{i}");
        let old = now(&p).expect("lower file present");
        let mut new = old.clone();
        new.extend_from_slice(format!("+{cycle}").as_bytes());
        set(&p, vec![Some(old), Some(new.clone())]);
        let mut f = fs::OpenOptions::new().append(true).open(mnt.join(&p))?;
        f.write_all(format!("+{cycle}").as_bytes())?;
        f.sync_all()?;
        set(&p, vec![Some(new)]);
    }
    // A new file, synced.
    let n = format!("n{cycle}");
    let data = small(cycle, 100_000);
    // Killed between the create and the write, a new file that nobody
    // synced is there empty, as on any filesystem.
    set(&n, vec![None, Some(Vec::new()), Some(data.clone())]);
    {
        let mut f = fs::File::create(mnt.join(&n))?;
        f.write_all(&data)?;
        f.sync_all()?;
    }
    set(&n, vec![Some(data)]);
    // A lower directory renamed (its tree copied up), then the parent synced.
    let d = format!("d{cycle}/x");
    let r = format!("r{cycle}/x");
    let x = now(&d).expect("lower dir child");
    set(&d, vec![Some(x.clone()), None]);
    set(&r, vec![None, Some(x.clone())]);
    fs::rename(mnt.join(format!("d{cycle}")), mnt.join(format!("r{cycle}")))?;
    sync(mnt)?;
    set(&d, vec![None]);
    set(&r, vec![Some(x)]);
    // A lower directory removed and made again: empty, then synced.
    let e = format!("e{cycle}/c");
    let c = now(&e).expect("lower dir child");
    set(&e, vec![Some(c), None]);
    fs::remove_dir_all(mnt.join(format!("e{cycle}")))?;
    fs::create_dir(mnt.join(format!("e{cycle}")))?;
    sync(&mnt.join(format!("e{cycle}")))?;
    sync(mnt)?;
    set(&e, vec![None]);
    // A lower file deleted (a whiteout), its parent synced.
    let g = format!("g{cycle}");
    let gv = now(&g).expect("lower file");
    set(&g, vec![Some(gv), None]);
    fs::remove_file(mnt.join(&g))?;
    sync(mnt)?;
    set(&g, vec![None]);
    // A link to one name of a lower hard link (copied into the index).
    let hl = format!("hl{cycle}");
    let h = now("h1").expect("lower hard link");
    set(&hl, vec![None, Some(h.clone())]);
    fs::hard_link(mnt.join("h1"), mnt.join(&hl))?;
    sync(&mnt.join(&hl))?;
    sync(mnt)?;
    set(&hl, vec![Some(h)]);
    // The big file: a long copy-up that a kill is likely to interrupt, so
    // only in some cycles (the others let the kill land elsewhere).
    if cycle % 3 == 2 {
        let mut f = fs::OpenOptions::new().append(true).open(mnt.join("big"))?;
        f.write_all(TAIL)?;
    }
    Ok(())
}

/// `UNIONFUSE_CRASH_CYCLES` (default 10) cycles: mount, run the workload,
/// SIGKILL the daemon at a random moment, clear the dead mount, remount and
/// check that every outcome is one the model allows (what was synced is
/// there, nothing is partial), the lowers never changed, nothing of the
/// work directory shows, and the upper passes `unionfuse check`.
#[test]
fn a_daemon_killed_during_a_mixed_workload_keeps_what_was_synced() {
    let cycles: usize = std::env::var("UNIONFUSE_CRASH_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    let s = Scratch::new();
    let lower = s.mkdir("lower");
    let mut may = Outcomes::new();
    for i in 0..6 {
        let v = small(i, 64 * 1024);
        fs::write(lower.join(format!("f{i}")), &v).expect("lower");
        may.insert(format!("f{i}"), vec![Some(v)]);
    }
    for c in 0..cycles {
        write(&lower, &format!("d{c}/x"), &format!("d{c}\n"));
        write(&lower, &format!("d{c}/sub/y"), "y\n");
        write(&lower, &format!("e{c}/c"), &format!("e{c}\n"));
        write(&lower, &format!("g{c}"), &format!("g{c}\n"));
        may.insert(
            format!("d{c}/x"),
            vec![Some(format!("d{c}\n").into_bytes())],
        );
        may.insert(
            format!("e{c}/c"),
            vec![Some(format!("e{c}\n").into_bytes())],
        );
        may.insert(format!("g{c}"), vec![Some(format!("g{c}\n").into_bytes())]);
    }
    write(&lower, "h1", "hard link\n");
    fs::hard_link(lower.join("h1"), lower.join("h2")).expect("lower link");
    may.insert("h1".into(), vec![Some(b"hard link\n".to_vec())]);
    write_big(&lower.join("big"));
    let before = tree_of(&lower);
    let upper = s.mkdir("upper");
    let work = s.mkdir("work");
    let work_arg = work.to_str().expect("utf-8");
    let mnt = s.mkdir("mnt");
    let may = std::sync::Arc::new(std::sync::Mutex::new(may));
    let mut rng: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut stopped_at = Vec::new();
    for cycle in 0..cycles {
        let m = Mounted::new(&[&lower], Some(&upper), &mnt, &["--work", work_arg]);
        let (mnt2, may2) = (m.mnt.clone(), std::sync::Arc::clone(&may));
        let steps = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let steps2 = std::sync::Arc::clone(&steps);
        // Found first: looking it up takes longer than some workloads.
        let pids = daemon_pids(&mnt);
        assert!(!pids.is_empty(), "no daemon for {mnt:?}");
        let worker = std::thread::spawn(move || workload(&mnt2, cycle, &may2, &steps2));
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        std::thread::sleep(Duration::from_micros(rng % 40_000));
        pids.iter().for_each(|p| kill(*p));
        let deadline = Instant::now() + Duration::from_secs(20);
        while !daemon_pids(&mnt).is_empty() {
            assert!(Instant::now() < deadline, "killed daemon lives on");
            std::thread::sleep(Duration::from_millis(5));
        }
        let res = worker.join().expect("worker");
        stopped_at.push((
            steps.load(std::sync::atomic::Ordering::Relaxed),
            res.is_ok(),
        ));
        // The dead mount is cleared as a user would.
        let out = run(&[std::ffi::OsStr::new("umount"), mnt.as_os_str()]);
        assert!(
            out.status.success(),
            "cycle {cycle}: umount of the dead mount: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        drop(m);

        let m = Mounted::new(&[&lower], Some(&upper), &mnt, &["--work", work_arg]);
        let mut model = may.lock().expect("model");
        for (p, allowed) in model.iter_mut() {
            let got = read_opt(&m.path(p));
            assert!(
                allowed.contains(&got),
                "cycle {cycle}: {p} holds {:?}, allowed {:?}",
                got.as_ref()
                    .map(|v| String::from_utf8_lossy(&v[..v.len().min(40)]).into_owned()),
                allowed
                    .iter()
                    .map(|a| a.as_ref().map(|v| v.len()))
                    .collect::<Vec<_>>()
            );
            *allowed = vec![got];
        }
        let (d, r) = (
            m.path(&format!("d{cycle}")).exists(),
            m.path(&format!("r{cycle}")).exists(),
        );
        assert!(d != r, "cycle {cycle}: after the rename d {d}, r {r}");
        check_whole(&m.path("big"), &format!("cycle {cycle}: big"));
        assert_eq!(
            read_opt(&m.path("h1")),
            read_opt(&m.path("h2")),
            "cycle {cycle}: the names of a hard link differ"
        );
        drop(model);
        let names = ls(&m.path(""));
        assert!(
            !names
                .iter()
                .any(|n| n.starts_with(".wh.") || n.starts_with("unionfuse-")),
            "cycle {cycle}: {names:?}"
        );
        drop(m);
        let out = run(&[
            std::ffi::OsStr::new("check"),
            std::ffi::OsStr::new("--upper"),
            upper.as_os_str(),
            std::ffi::OsStr::new("--lower"),
            lower.as_os_str(),
            std::ffi::OsStr::new("--work"),
            work.as_os_str(),
        ]);
        assert!(
            out.status.success(),
            "cycle {cycle}: unionfuse check: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(tree_of(&lower) == before, "cycle {cycle}: a lower changed");
    }
    eprintln!("(changes recorded, workload finished) per cycle: {stopped_at:?}");
}

/// Every path under `root` with its size and mtime: enough to see a change.
fn tree_of(root: &Path) -> Vec<(String, u64, i64, i64)> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).expect("readdir") {
            let p = e.expect("entry").path();
            let md = fs::symlink_metadata(&p).expect("lstat");
            if md.is_dir() {
                stack.push(p.clone());
            }
            out.push((
                p.display().to_string(),
                md.len(),
                md.mtime(),
                md.mtime_nsec(),
            ));
        }
    }
    out.sort();
    out
}

//! A hostile host process races the daemon: it swaps a directory of the
//! upper for a symlink pointing outside, again and again, while files are
//! created, written, copied up, renamed and removed through the mount.
//! Operations may fail (layers changing behind a mount's back is not
//! supported, as with overlayfs), but nothing may ever be written outside
//! the upper: every path the daemon touches is resolved relative to
//! descriptors without following symlinks.
// The fixtures in common/ need libc; every unsafe block there says why it
// is sound.
#![allow(unsafe_code)]

mod common;

use std::fs;
use std::os::unix::fs::symlink;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::*;

/// How long the race runs.
const RACE: Duration = Duration::from_secs(3);

#[test]
fn swapping_upper_directories_for_symlinks_never_leads_writes_outside() {
    let s = Scratch::new();
    let lower = s.mkdir("lower");
    write(&lower, "d/f", "lower file\n");
    write(&lower, "d/sub/g", "lower g\n");
    let upper = s.mkdir("upper");
    write(&upper, "d/u", "upper file\n");
    let canary = s.mkdir("canary");
    let work = s.mkdir("work");
    let mnt = s.mkdir("mnt");
    let m = Mounted::new(
        &[&lower],
        Some(&upper),
        &mnt,
        &["--work", work.to_str().expect("utf-8")],
    );
    let stop = Arc::new(AtomicBool::new(false));
    let racer = {
        let (upper, canary, stop) = (upper.clone(), canary.clone(), Arc::clone(&stop));
        std::thread::spawn(move || {
            let (d, real) = (upper.join("d"), upper.join("d.real"));
            let mut swaps = 0u64;
            while !stop.load(Ordering::Relaxed) {
                if fs::rename(&d, &real).is_ok() {
                    if symlink(&canary, &d).is_ok() {
                        swaps += 1;
                        std::thread::yield_now();
                        let _ = fs::remove_file(&d);
                    }
                    let _ = fs::rename(&real, &d);
                }
            }
            swaps
        })
    };
    let workers: Vec<_> = (0..3)
        .map(|w| {
            let (mnt, stop) = (m.mnt.clone(), Arc::clone(&stop));
            std::thread::spawn(move || {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let d = mnt.join("d");
                    let name = format!("w{w}-{n}");
                    let _ = fs::write(d.join(&name), "through the mount\n");
                    let _ = fs::OpenOptions::new()
                        .append(true)
                        .open(d.join("f"))
                        .and_then(|mut f| std::io::Write::write_all(&mut f, b"+"));
                    let _ = fs::create_dir(d.join(format!("{name}.dir")));
                    let _ = fs::write(d.join("sub").join(&name), "deeper\n");
                    let _ = fs::rename(d.join(&name), d.join(format!("{name}.moved")));
                    let _ = fs::remove_file(d.join(format!("{name}.moved")));
                    let _ = fs::remove_dir(d.join(format!("{name}.dir")));
                    let _ = fs::read_dir(&d).map(|r| r.count());
                }
                n
            })
        })
        .collect();
    let t0 = Instant::now();
    while t0.elapsed() < RACE {
        std::thread::sleep(Duration::from_millis(50));
    }
    stop.store(true, Ordering::Relaxed);
    let swaps = racer.join().expect("racer");
    let ops: u64 = workers.into_iter().map(|w| w.join().expect("worker")).sum();
    // The daemon lived through it.
    assert!(
        fs::read_dir(m.path("")).map(|r| r.count()).unwrap_or(0) > 0,
        "the mount died during the race"
    );
    drop(m);
    eprintln!("{swaps} swaps against {ops} rounds of operations");
    assert!(swaps > 0 && ops > 0, "the race did not run");
    let inside: Vec<_> = fs::read_dir(&canary)
        .expect("canary")
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(inside.is_empty(), "written outside the upper: {inside:?}");
    assert_eq!(
        fs::read_to_string(lower.join("d/f")).expect("lower"),
        "lower file\n"
    );
    assert_eq!(
        fs::read_to_string(lower.join("d/sub/g")).expect("lower"),
        "lower g\n"
    );
}

//! Inode numbers that the upper filesystem hands out again at once, as ext4
//! does: an object made through the mount while another request is still
//! removing the one that had its number must be a new object, never the
//! removed one come back. Several clients each remove and re-create their
//! own directories, so that a directory often gets the number of a file
//! another client just unlinked; every create inside it must still see a
//! directory. The same churn runs on kernel overlayfs first, so the
//! expectation itself is checked. The upper is a small ext4 image of the
//! test's own, whatever filesystem holds the temporary directory (tmpfs,
//! for one, never reuses a number).
// The fixtures in common/ need libc; every unsafe block there says why it
// is sound.
#![allow(unsafe_code)]

mod common;

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use common::{Ext4, KernelOverlay, Mounted, Scratch, skip_as_non_root};

const CLIENTS: usize = 8;
/// Directories per client, all in the upper only: the fastest rounds give
/// the most chances for a number to change hands mid-request.
const DIRS: usize = 6;

/// Each client removes and re-makes its directories, with one new file in
/// each, until `dur` is over. Returns what went wrong and how many rounds
/// ran.
fn churn(mnt: &Path, dur: Duration) -> (Vec<String>, usize) {
    let end = Instant::now() + dur;
    let results: Vec<(Vec<String>, usize)> = std::thread::scope(|s| {
        let clients: Vec<_> = (0..CLIENTS)
            .map(|c| {
                s.spawn(move || {
                    let mut errors = Vec::new();
                    let mut rounds = 0;
                    while Instant::now() < end && errors.len() < 5 {
                        let d = mnt.join(format!("c{c}d{}", rounds % DIRS));
                        if let Err(e) = round(&d) {
                            errors.push(format!("{}: {e}", d.display()));
                        }
                        rounds += 1;
                    }
                    (errors, rounds)
                })
            })
            .collect();
        clients
            .into_iter()
            .map(|h| h.join().expect("client"))
            .collect()
    });
    results
        .into_iter()
        .fold((Vec::new(), 0), |(mut errs, n), (e, r)| {
            errs.extend(e);
            (errs, n + r)
        })
}

/// `rm -rf d && mkdir d && echo new >d/n && [ "$(ls d)" = n ]`.
fn round(d: &Path) -> Result<(), String> {
    match fs::remove_dir_all(d) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(format!("remove: {e}")),
    }
    fs::create_dir(d).map_err(|e| format!("mkdir: {e}"))?;
    fs::write(d.join("n"), "new\n").map_err(|e| format!("create n: {e}"))?;
    let names: Vec<_> = fs::read_dir(d)
        .map_err(|e| format!("list: {e}"))?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<Result<_, _>>()
        .map_err(|e| format!("list: {e}"))?;
    if names != ["n"] {
        return Err(format!("lists {names:?}"));
    }
    Ok(())
}

#[test]
fn a_new_directory_never_takes_over_a_file_removed_under_its_number() {
    if skip_as_non_root("a loop-mounted ext4 upper needs root") {
        return;
    }
    let s = Scratch::new();
    let lower = s.mkdir("lower");

    {
        let ext4 = Ext4::new(&s, "ovl");
        let (upper, work) = ext4.upper_and_work();
        let mnt = s.mkdir("ovl-mnt");
        match KernelOverlay::new(&[&lower], Some((&upper, &work)), &mnt, "") {
            Ok(_ovl) => {
                let (errors, rounds) = churn(&mnt, Duration::from_secs(1));
                assert!(errors.is_empty(), "kernel overlayfs: {errors:#?}");
                assert!(rounds > 0);
            }
            Err(e) => eprintln!("kernel overlayfs not compared: {e}"),
        }
    }

    let ext4 = Ext4::new(&s, "uf");
    let upper = ext4.dir.join("upper");
    fs::create_dir(&upper).expect("upper");
    let mnt = s.mkdir("mnt");
    let m = Mounted::new(&[&lower], Some(&upper), &mnt, &[]);
    let (errors, rounds) = churn(&m.mnt, Duration::from_secs(5));
    assert!(errors.is_empty(), "after {rounds} rounds: {errors:#?}");
    drop(m);
}

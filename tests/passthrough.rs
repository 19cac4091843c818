//! Lower files of a writable mount and FUSE passthrough.
//!
//! As root, a lower file (of 256 KiB or more) opened read-only is read by
//! the kernel straight from the layer, as upper files are. The kernel binds
//! one backing file to an inode while any file is open on it, so the copy
//! of a file made while such a descriptor is open gets a kernel inode of
//! its own: every later open reaches the copy (and may be passed through to
//! it), with the same inode number, while the descriptors opened earlier
//! keep reading the lower file. Smaller files are read through the page
//! cache, and there an early descriptor follows the copy, as it does with
//! `--no-lower-passthrough` for every file and in kernel overlayfs, which
//! is the oracle for it here.
// The fixtures in common/ and mmap need libc; every unsafe block says why
// it is sound.
#![allow(unsafe_code)]

mod common;

use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::{DirEntryExt, FileExt, MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;

use common::{
    KernelOverlay, LOWER_PASSTHROUGH_MIN, Mounted, Scratch, is_root, lower_passthrough, mapped, run,
};

/// The lower file `f`: a recognisable head, and large enough to be passed
/// through.
fn lower_f() -> Vec<u8> {
    let mut v = b"lower data\n".to_vec();
    v.resize(LOWER_PASSTHROUGH_MIN + 4096, b'.');
    v
}

fn read_all(f: &File) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read_at(&mut buf, out.len() as u64).expect("pread");
        if n == 0 {
            return out;
        }
        out.extend_from_slice(&buf[..n]);
    }
}

fn read_at(f: &File, len: usize) -> Vec<u8> {
    let mut buf = vec![0u8; len];
    let n = f.read_at(&mut buf, 0).expect("pread");
    buf.truncate(n);
    buf
}

fn d_ino(dir: &Path, name: &str) -> u64 {
    fs::read_dir(dir)
        .expect("readdir")
        .flatten()
        .find(|e| e.file_name() == name)
        .map(|e| e.ino())
        .unwrap_or_else(|| panic!("{name} not listed"))
}

/// Requests of `op` the daemon of `mnt` has served.
fn count(mnt: &Path, op: &str) -> u64 {
    let out = run(&[OsStr::new("stats"), OsStr::new("--json"), mnt.as_os_str()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    common::stats_count(&String::from_utf8_lossy(&out.stdout), op)
}

/// A shell script that prints `word`, large enough to be passed through.
fn script(word: &str) -> Vec<u8> {
    let mut v = format!("#!/bin/sh\necho {word}\nexit 0\n#").into_bytes();
    v.resize(LOWER_PASSTHROUGH_MIN + 4096, b'#');
    v.push(b'\n');
    v
}

/// The layers: `f` and `tool` (a script), both large, `small`, and `big`
/// (1 MiB).
fn layers(s: &Scratch) -> (std::path::PathBuf, std::path::PathBuf) {
    let lower = s.mkdir("lower");
    fs::write(lower.join("f"), lower_f()).expect("f");
    fs::write(lower.join("small"), b"small lower\n").expect("small");
    fs::write(lower.join("big"), vec![7u8; 1 << 20]).expect("big");
    fs::write(lower.join("tool"), script("one")).expect("tool");
    fs::set_permissions(lower.join("tool"), fs::Permissions::from_mode(0o755)).expect("chmod");
    (lower, s.mkdir("upper"))
}

#[test]
fn an_early_reader_keeps_the_lower_data_and_later_opens_reach_the_copy() {
    let s = Scratch::new();
    let (lower, upper) = layers(&s);
    let mnt = s.mkdir("mnt");
    let m = Mounted::new(&[&lower], Some(&upper), &mnt, &[]);
    let pinned = lower_passthrough(&[]);
    let f = m.path("f");
    let ino = fs::metadata(&f).expect("stat").ino();
    let old = lower_f();

    let early = File::open(&f).expect("open early");
    let small_early = File::open(m.path("small")).expect("open small early");
    assert!(
        read_all(&early) == old,
        "read through the early fd, before the write"
    );
    let w = OpenOptions::new()
        .write(true)
        .open(&f)
        .expect("open for writing");
    w.write_all_at(b"UPPER", 0).expect("write");
    w.write_all_at(b"and more\n", old.len() as u64)
        .expect("append");
    let mut now = old.clone();
    now[..5].copy_from_slice(b"UPPER");
    now.extend_from_slice(b"and more\n");

    // What the early descriptor reads, by read and by mapping.
    let want_early = if pinned { old.clone() } else { now.clone() };
    assert!(read_all(&early) == want_early, "read through the early fd");
    assert!(
        mapped(&early, old.len()) == want_early[..old.len()],
        "mapping of the early fd"
    );
    // Its attributes are the object's, as every descriptor's.
    assert_eq!(early.metadata().expect("fstat").len(), now.len() as u64);

    // Every later open reaches the copy, under the same inode number.
    let later = File::open(&f).expect("open later");
    assert!(read_all(&later) == now, "read through a later fd");
    assert!(mapped(&later, now.len()) == now, "mapping of a later fd");
    assert_eq!(later.metadata().expect("fstat").ino(), ino);
    assert_eq!(fs::metadata(&f).expect("stat").ino(), ino);
    assert_eq!(d_ino(&m.mnt, "f"), ino);
    // After a listing, which names the object's first kernel inode again.
    let relisted = File::open(&f).expect("open after the listing");
    // That open went to the object's second kernel inode through a fresh
    // lookup: its attributes still carry the real inode number (checked
    // before a read, which would make the kernel ask for them again).
    assert_eq!(relisted.metadata().expect("fstat").ino(), ino);
    assert_eq!(fs::metadata(&f).expect("stat").ino(), ino);
    assert!(read_all(&relisted) == now, "read after a listing");
    // A new name made now leads to the copy as well.
    let linked = m.path("f-link");
    fs::hard_link(&f, &linked).expect("link");
    assert_eq!(fs::metadata(&linked).expect("stat link").ino(), ino);
    assert!(
        fs::read(&linked).expect("read link") == now,
        "read the link"
    );
    fs::remove_file(&linked).expect("unlink the link");
    let rw = OpenOptions::new()
        .read(true)
        .append(true)
        .open(&f)
        .expect("open for appending");
    rw.write_all_at(b"!", now.len() as u64).expect("append");
    let mut last = now.clone();
    last.push(b'!');
    assert!(fs::read(&f).expect("read") == last, "read after the append");
    let want_early = if pinned { old.clone() } else { last.clone() };
    assert!(read_all(&early) == want_early, "the early fd, at the end");

    // A small file is read through the page cache: its early reader
    // follows the copy as in kernel overlayfs.
    fs::write(m.path("small"), b"small upper\n").expect("rewrite small");
    assert_eq!(read_at(&small_early, 64), b"small upper\n");

    // A program changed in place while an earlier descriptor holds its
    // lower version runs as changed (execve retries the open as any open
    // does).
    let tool = m.path("tool");
    let held = File::open(&tool).expect("open tool");
    fs::write(&tool, script("two")).expect("rewrite tool");
    // A listing names the first kernel inode again, so that the execve
    // below meets it.
    assert_eq!(
        d_ino(&m.mnt, "tool"),
        fs::metadata(&tool).expect("stat").ino()
    );
    let out = Command::new(&tool).output().expect("run tool");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "two\n");
    drop(held);

    drop((early, later, relisted, rw, w, small_early));
    let again = File::open(&f).expect("open after closing all");
    assert!(read_all(&again) == last, "read after closing all");
    assert!(
        mapped(&again, last.len()) == last,
        "mapping after closing all"
    );
    drop(again);
    drop(m);
    assert!(
        fs::read(lower.join("f")).expect("lower f") == old,
        "lower changed"
    );
    assert!(fs::read(upper.join("f")).expect("upper f") == last, "upper");
}

/// As root, reading a lower file of a writable mount sends no READ to the
/// daemon: the kernel reads the layer file itself.
#[test]
fn reads_of_a_lower_file_go_straight_to_the_layer() {
    let s = Scratch::new();
    let (lower, upper) = layers(&s);
    let mnt = s.mkdir("mnt");
    let m = Mounted::new(&[&lower], Some(&upper), &mnt, &[]);
    assert_eq!(fs::read(m.path("big")).expect("read big").len(), 1 << 20);
    let reads = count(&m.mnt, "read");
    if lower_passthrough(&[]) {
        assert_eq!(reads, 0, "reads reached the daemon");
    } else {
        assert!(reads > 0, "no reads counted: passthrough without root?");
    }
    drop(m);
    let m = Mounted::new(&[&lower], Some(&upper), &mnt, &["--no-lower-passthrough"]);
    assert_eq!(fs::read(m.path("big")).expect("read big").len(), 1 << 20);
    assert!(
        count(&m.mnt, "read") > 0,
        "--no-lower-passthrough still passed through"
    );
}

/// With `--no-lower-passthrough`, a descriptor opened before the copy-up
/// reads what kernel overlayfs's reads: the copy.
#[test]
fn without_lower_passthrough_an_early_reader_follows_the_copy_as_in_kernel_overlayfs() {
    if !is_root() {
        eprintln!("skipped: kernel overlayfs, the oracle, needs root");
        return;
    }
    let early_read = |mnt: &Path| {
        let f = mnt.join("f");
        let early = File::open(&f).expect("open early");
        let w = OpenOptions::new()
            .write(true)
            .open(&f)
            .expect("open for writing");
        w.write_all_at(b"UPPER", 0).expect("write");
        (read_at(&early, 16), early.metadata().expect("fstat").len())
    };
    let s = Scratch::new();
    let (lower, upper) = layers(&s);
    let work = s.mkdir("work");
    let mnt = s.mkdir("mnt");
    let w = work.to_str().expect("utf-8");
    let m = Mounted::new(
        &[&lower],
        Some(&upper),
        &mnt,
        &["--work", w, "--no-lower-passthrough"],
    );
    let ours = early_read(&m.mnt);
    let s = Scratch::new();
    let (lower, upper) = layers(&s);
    let (work, mnt) = (s.mkdir("work"), s.mkdir("mnt"));
    let k = KernelOverlay::new(&[&lower], Some((&upper, &work)), &mnt, "")
        .unwrap_or_else(|e| panic!("kernel overlayfs is the oracle here: {e}"));
    let theirs = early_read(&k.mnt);
    assert_eq!(ours.0, b"UPPER data\n.....");
    assert_eq!(ours, theirs, "unionfuse, then kernel overlayfs");
}

/// A reset takes a copy back to the lower file. Copied up again while an
/// early reader holds the lower file once more, the file gets yet another
/// kernel inode, and every round reaches its own copy. A descriptor kept
/// open across each reset keeps the object known to the daemon.
#[test]
fn a_file_copied_up_again_after_a_reset_reaches_the_new_copy() {
    let s = Scratch::new();
    let (lower, upper) = layers(&s);
    let mnt = s.mkdir("mnt");
    let m = Mounted::new(&[&lower], Some(&upper), &mnt, &[]);
    let f = m.path("f");
    let ino = fs::metadata(&f).expect("stat").ino();
    let mut kept = Vec::new();
    for round in 0..3u8 {
        let early = File::open(&f).expect("open early");
        let w = OpenOptions::new()
            .write(true)
            .open(&f)
            .unwrap_or_else(|e| panic!("round {round}: open for writing: {e}"));
        w.write_all_at(&[b'0' + round], 0).expect("write");
        drop(w);
        let copy = File::open(&f).expect("open the copy");
        assert_eq!(read_at(&copy, 1), [b'0' + round]);
        kept.push(copy);
        assert_eq!(fs::metadata(&f).expect("stat").ino(), ino);
        drop(early);
        let out = run(&[OsStr::new("reset"), m.mnt.as_os_str()]);
        assert!(
            out.status.success(),
            "reset: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            fs::read(&f).expect("read") == lower_f(),
            "round {round}: after the reset"
        );
    }
}

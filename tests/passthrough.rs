//! Lower files of a writable mount and FUSE passthrough.
//!
//! As root, a lower file opened read-only is read by the kernel straight
//! from the layer, as upper files are. The kernel binds one backing file to
//! an inode while any file is open on it, so the copy of a file made while
//! such a descriptor is open gets a kernel inode of its own: every later
//! open reaches the copy (and may be passed through to it), with the same
//! inode number, while the descriptors opened earlier keep reading the
//! lower file. `--no-lower-passthrough` keeps kernel overlayfs's behaviour,
//! where an early descriptor follows the copy; it is checked against kernel
//! overlayfs itself.
// The fixtures in common/ and mmap need libc; every unsafe block says why
// it is sound.
#![allow(unsafe_code)]

mod common;

use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirEntryExt, FileExt, MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;

use common::{KernelOverlay, Mounted, Scratch, is_root, lower_passthrough, run};

const LOWER: &[u8] = b"lower data\n";

/// `len` bytes of `f` from 0 through a private read-only mapping.
fn mapped(f: &File, len: usize) -> Vec<u8> {
    // SAFETY: a fresh read-only private mapping of an open descriptor; it
    // is read within `len` bytes and unmapped before returning.
    unsafe {
        let p = libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ,
            libc::MAP_PRIVATE,
            f.as_raw_fd(),
            0,
        );
        assert_ne!(
            p,
            libc::MAP_FAILED,
            "mmap: {}",
            std::io::Error::last_os_error()
        );
        let v = std::slice::from_raw_parts(p as *const u8, len).to_vec();
        libc::munmap(p, len);
        v
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
    let json = String::from_utf8_lossy(&out.stdout).into_owned();
    let key = format!("{{\"op\":\"{op}\",\"count\":");
    json.split(&key)
        .nth(1)
        .and_then(|r| r.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// The layers: `f` (text), `big` (1 MiB) and `tool` (a script).
fn layers(s: &Scratch) -> (std::path::PathBuf, std::path::PathBuf) {
    let lower = s.mkdir("lower");
    fs::write(lower.join("f"), LOWER).expect("f");
    fs::write(lower.join("big"), vec![7u8; 1 << 20]).expect("big");
    fs::write(lower.join("tool"), "#!/bin/sh\necho one\n").expect("tool");
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

    let early = File::open(&f).expect("open early");
    assert_eq!(read_at(&early, 64), LOWER);
    let w = OpenOptions::new()
        .write(true)
        .open(&f)
        .expect("open for writing");
    w.write_all_at(b"UPPER", 0).expect("write");
    w.write_all_at(b"and more\n", LOWER.len() as u64)
        .expect("append");
    let now = b"UPPER data\nand more\n".to_vec();

    // What the early descriptor reads, by read and by mapping.
    let want_early = if pinned { LOWER.to_vec() } else { now.clone() };
    assert_eq!(read_at(&early, 64), want_early, "read through the early fd");
    assert_eq!(mapped(&early, LOWER.len()), want_early[..LOWER.len()]);
    // Its attributes are the object's, as every descriptor's.
    assert_eq!(early.metadata().expect("fstat").len(), now.len() as u64);

    // Every later open reaches the copy, under the same inode number.
    let later = File::open(&f).expect("open later");
    assert_eq!(read_at(&later, 64), now);
    assert_eq!(mapped(&later, now.len()), now);
    assert_eq!(later.metadata().expect("fstat").ino(), ino);
    assert_eq!(fs::metadata(&f).expect("stat").ino(), ino);
    assert_eq!(d_ino(&m.mnt, "f"), ino);
    // After a listing, which names the object's first kernel inode again.
    let relisted = File::open(&f).expect("open after the listing");
    assert_eq!(read_at(&relisted, 64), now);
    let rw = OpenOptions::new()
        .read(true)
        .append(true)
        .open(&f)
        .expect("open for appending");
    rw.write_all_at(b"!", now.len() as u64).expect("append");
    let mut last = now.clone();
    last.push(b'!');
    assert_eq!(fs::read(&f).expect("read"), last);
    assert_eq!(
        read_at(&early, 64),
        if pinned { LOWER.to_vec() } else { last.clone() }
    );

    // A program changed in place while an earlier descriptor holds its
    // lower version runs as changed (execve retries the open as any open
    // does).
    let tool = m.path("tool");
    let held = File::open(&tool).expect("open tool");
    fs::write(&tool, "#!/bin/sh\necho two\n").expect("rewrite tool");
    let out = Command::new(&tool).output().expect("run tool");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "two\n");
    drop(held);

    drop((early, later, relisted, rw, w));
    let again = File::open(&f).expect("open after closing all");
    assert_eq!(read_at(&again, 64), last);
    assert_eq!(mapped(&again, last.len()), last);
    drop(again);
    drop(m);
    assert_eq!(
        fs::read(lower.join("f")).expect("lower f"),
        LOWER,
        "lower changed"
    );
    assert_eq!(fs::read(upper.join("f")).expect("upper f"), last);
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
        (read_at(&early, 64), early.metadata().expect("fstat").len())
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
    assert_eq!(ours.0, b"UPPER data\n");
    assert_eq!(ours, theirs, "unionfuse, then kernel overlayfs");
}

//! `--io-uring`: requests carried over FUSE's io_uring transport where the
//! kernel offers it, and over `/dev/fuse` with a warning where it does not.
//! The differential suites run again with every mount over io_uring (see
//! scripts/test); these tests check that the ring really carries the
//! requests, that data crossing it in large pieces arrives intact, and the
//! fallback.
// The fixtures in common/ need libc; every unsafe block there says why it
// is sound.
#![allow(unsafe_code)]

mod common;

use std::ffi::OsStr;
use std::fs;
use std::io::{Seek, SeekFrom, Write};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;
use std::sync::Mutex;

use common::{Mounted, Scratch, is_mountpoint, is_root, run, write};

const PARAM: &str = "/sys/module/fuse/parameters/enable_uring";

/// The kernel switch is global: one test at a time may set it.
static SWITCH: Mutex<()> = Mutex::new(());

/// Sets the kernel switch and puts the old value back when dropped.
struct Switch {
    was: String,
}

impl Switch {
    fn set(on: bool) -> Option<Switch> {
        let was = fs::read_to_string(PARAM).ok()?;
        fs::write(PARAM, if on { "Y" } else { "N" }).ok()?;
        Some(Switch {
            was: was.trim().to_string(),
        })
    }
}

impl Drop for Switch {
    fn drop(&mut self) {
        let _ = fs::write(PARAM, &self.was);
    }
}

/// Mounts with `--io-uring` and returns the mount command's stderr. Not
/// through `Mounted::new`, which would add UNIONFUSE_TEST_MOUNT_ARGS (a
/// second `--io-uring` in the io_uring run); the caller wraps the mount in
/// a `Mounted` so that it is unmounted whatever happens.
fn mount_uring(lower: &Path, upper: &Path, mnt: &Path) -> String {
    let out = run(&[
        OsStr::new("mount"),
        OsStr::new("--io-uring"),
        OsStr::new("--lower"),
        lower.as_os_str(),
        OsStr::new("--upper"),
        upper.as_os_str(),
        mnt.as_os_str(),
    ]);
    assert!(
        out.status.success(),
        "mount --io-uring: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(is_mountpoint(mnt));
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn transport(mnt: &Path) -> String {
    let out = run(&[OsStr::new("stats"), mnt.as_os_str()]);
    assert!(
        out.status.success(),
        "stats: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.lines()
        .find_map(|l| l.strip_prefix("transport: "))
        .unwrap_or_else(|| panic!("no transport line in stats:\n{text}"))
        .to_string()
}

/// Bytes that differ at every offset, so a misplaced or stale buffer shows.
fn pattern(len: usize, salt: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[1] ^ salt)
        .collect()
}

#[test]
fn io_uring_carries_every_request_and_large_data_intact() {
    if !is_root() || !Path::new(PARAM).exists() {
        eprintln!("skipped as non-root: needs root and a kernel with FUSE over io_uring");
        return;
    }
    let _one = SWITCH.lock().unwrap_or_else(|e| e.into_inner());
    let _on = Switch::set(true).expect("cannot set enable_uring");
    let s = Scratch::new();
    let (lower, upper, mnt) = (s.mkdir("lower"), s.mkdir("upper"), s.mkdir("mnt"));
    let big = pattern(3 << 20, 7);
    fs::write(lower.join("big"), &big).expect("write lower");
    write(&lower, "dir/a", "lower a\n");
    write(&lower, "dir/b", "lower b\n");
    let stderr = mount_uring(&lower, &upper, &mnt);
    let m = Mounted { mnt: mnt.clone() };
    assert!(
        !stderr.contains("unavailable"),
        "fell back to /dev/fuse: {stderr}"
    );

    // Reads of a lower file in the largest pieces the kernel sends.
    assert_eq!(fs::read(m.path("big")).expect("read big"), big);
    let f = fs::File::open(m.path("big")).expect("open big");
    let mut chunk = vec![0u8; 1 << 20];
    f.read_exact_at(&mut chunk, 12_345).expect("pread");
    assert_eq!(chunk, big[12_345..12_345 + (1 << 20)]);
    drop(f);

    // A copy-up by a large write, then the file read back and its size.
    let new = pattern(2 << 20, 99);
    let mut f = fs::OpenOptions::new()
        .write(true)
        .open(m.path("big"))
        .expect("open big for writing");
    f.seek(SeekFrom::Start(1 << 20)).expect("seek");
    f.write_all(&new).expect("write");
    f.sync_all().expect("fsync");
    drop(f);
    let mut want = big[..1 << 20].to_vec();
    want.extend_from_slice(&new);
    assert_eq!(fs::read(m.path("big")).expect("read back"), want);
    assert_eq!(
        fs::read(upper.join("big")).expect("upper copy"),
        want,
        "the upper holds the copy"
    );
    assert_eq!(fs::read(lower.join("big")).expect("lower"), big);

    // Names, attributes, xattrs, links and removal over the ring.
    fs::create_dir(m.path("made")).expect("mkdir");
    fs::write(m.path("made/f"), "new\n").expect("create");
    std::os::unix::fs::symlink("f", m.path("made/l")).expect("symlink");
    fs::hard_link(m.path("made/f"), m.path("made/h")).expect("link");
    assert_eq!(fs::metadata(m.path("made/f")).expect("stat").nlink(), 2);
    assert_eq!(
        fs::read_link(m.path("made/l")).expect("readlink"),
        Path::new("f")
    );
    fs::rename(m.path("dir/a"), m.path("made/a")).expect("rename");
    fs::remove_file(m.path("dir/b")).expect("unlink");
    let mut names: Vec<String> = fs::read_dir(m.path("made"))
        .expect("readdir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["a", "f", "h", "l"]);
    assert_eq!(fs::read_dir(m.path("dir")).expect("readdir").count(), 0);
    let xattr = |op: &str, args: &[&str]| {
        std::process::Command::new(op)
            .args(args)
            .output()
            .expect("xattr tool")
    };
    let f = m.path("made/f");
    let fp = f.to_str().expect("utf8");
    if xattr("setfattr", &["-n", "user.k", "-v", "v1", fp])
        .status
        .success()
    {
        let got = xattr("getfattr", &["--only-values", "-n", "user.k", fp]);
        assert_eq!(String::from_utf8_lossy(&got.stdout), "v1");
    }
    fs::set_permissions(&f, std::os::unix::fs::PermissionsExt::from_mode(0o600)).expect("chmod");
    assert_eq!(fs::metadata(&f).expect("stat").mode() & 0o7777, 0o600);
    fs::OpenOptions::new()
        .write(true)
        .open(&f)
        .expect("open")
        .set_len(1)
        .expect("truncate");
    assert_eq!(fs::read(&f).expect("read"), b"n");
    fs::remove_dir_all(m.path("made")).expect("rm -rf");
    assert!(!m.path("made").exists());

    let t = transport(&mnt);
    let carried: u64 = t
        .strip_prefix("io_uring (")
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("not served over io_uring: {t}"));
    assert!(carried > 20, "only {carried} requests on the ring: {t}");
}

#[test]
fn io_uring_unavailable_falls_back_to_dev_fuse_with_a_warning() {
    let _one = SWITCH.lock().unwrap_or_else(|e| e.into_inner());
    // As root the kernel switch is turned off for the mount; as a user
    // the ring is out of reach anyway.
    let _off = if is_root() && Path::new(PARAM).exists() {
        Some(Switch::set(false).expect("cannot clear enable_uring"))
    } else {
        None
    };
    let s = Scratch::new();
    let (lower, upper, mnt) = (s.mkdir("lower"), s.mkdir("upper"), s.mkdir("mnt"));
    write(&lower, "f", "image\n");
    let stderr = mount_uring(&lower, &upper, &mnt);
    let m = Mounted { mnt: mnt.clone() };
    assert!(
        stderr.contains("io_uring transport unavailable") && stderr.contains("/dev/fuse"),
        "no warning about the fallback: {stderr:?}"
    );
    assert_eq!(
        stderr.lines().filter(|l| l.contains("io_uring")).count(),
        1,
        "{stderr}"
    );
    assert_eq!(fs::read_to_string(m.path("f")).expect("read"), "image\n");
    fs::write(m.path("f"), "changed\n").expect("write");
    assert_eq!(
        fs::read_to_string(upper.join("f")).expect("upper"),
        "changed\n"
    );
    assert_eq!(transport(&mnt), "/dev/fuse");
}

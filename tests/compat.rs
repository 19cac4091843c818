//! The fuse-overlayfs command line, as container tools run a mount program:
//! `unionfuse [-f] [-d] [-o OPTS]... [SOURCE] MOUNTPOINT`, unmounted with
//! `fusermount3 -u`, and `mount -t fuse.unionfuse` through mount.fuse3.
#![allow(unsafe_code)]

mod common;

use std::ffi::{OsStr, OsString};
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

fn os(parts: &[&str]) -> Vec<OsString> {
    parts.iter().map(OsString::from).collect()
}

fn run_os(args: &[OsString]) -> std::process::Output {
    let refs: Vec<&OsStr> = args.iter().map(|a| a.as_os_str()).collect();
    run(&refs)
}

fn opt(key: &str, p: &Path) -> String {
    format!("{key}={}", p.display())
}

/// Unmounts with fusermount3, as container tools do, and waits for the
/// daemon to let go of the mountpoint.
fn fusermount_u_and_wait(mnt: &Path) {
    common::fusermount_u(mnt);
    let deadline = Instant::now() + Duration::from_secs(10);
    while is_mountpoint(mnt) {
        assert!(Instant::now() < deadline, "{mnt:?} still mounted");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Two lowers with a file each and an OCI whiteout in the top one, as
/// containers/storage extracts layers for a mount program.
fn layers(s: &Scratch) -> (std::path::PathBuf, std::path::PathBuf) {
    let l1 = s.mkdir("l1");
    let l2 = s.mkdir("l2");
    write(&l2, "etc/os-release", "debian\n");
    write(&l2, "etc/gone", "old\n");
    write(&l2, "var/cache/old", "old\n");
    write(&l1, "etc/hostname", "ctr\n");
    whiteout_oci(&l1, "etc/gone");
    write(&l1, "var/cache/.wh..wh..opq", "");
    write(&l1, "var/cache/new", "new\n");
    (l1, l2)
}

#[test]
fn container_storage_invocation_mounts_writes_and_unmounts() {
    let s = Scratch::new();
    let (l1, l2) = layers(&s);
    let up = s.mkdir("diff");
    let work = s.mkdir("work");
    let mnt = s.mkdir("merged");
    let lowerdir = format!("lowerdir={}:{}", l1.display(), l2.display());
    let out = run_os(&os(&[
        "-o",
        &format!(
            "{lowerdir},{},{}",
            opt("upperdir", &up),
            opt("workdir", &work)
        ),
        "-o",
        "nodev,volatile,private,xino=auto",
        mnt.to_str().expect("utf-8"),
    ]));
    assert!(
        out.status.success(),
        "mount failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Exit 0 means "mounted": the caller uses the mountpoint at once.
    assert_eq!(ls(&mnt.join("etc")), ["hostname", "os-release"]);
    assert_eq!(ls(&mnt.join("var/cache")), ["new"]);
    fs::write(mnt.join("etc/hostname"), "changed\n").expect("write through the mount");
    fs::remove_file(mnt.join("etc/os-release")).expect("rm");
    fusermount_u_and_wait(&mnt);
    assert_eq!(
        fs::read_to_string(up.join("etc/hostname")).expect("copy-up"),
        "changed\n"
    );
    assert!(
        fs::symlink_metadata(up.join("etc/os-release")).is_ok(),
        "no whiteout in the upper"
    );
    assert_eq!(
        fs::read_to_string(l1.join("etc/hostname")).expect("lower"),
        "ctr\n"
    );
}

#[test]
fn quoted_commas_source_argument_and_unknown_options() {
    let s = Scratch::new();
    let (l1, _) = layers(&s);
    let mnt = s.mkdir("m");
    // A SOURCE first (mount.fuse3 style), an SELinux context holding a
    // comma, `-oOPTS` glued, and options unionfuse does not know.
    let out = run_os(&os(&[
        "overlay",
        mnt.to_str().expect("utf-8"),
        &format!("-o{}", opt("lowerdir", &l1)),
        "-o",
        "context=\"system_u:object_r:container_file_t:s0:c1,c2\",no_such_option,frobnicate=3",
    ]));
    assert!(
        out.status.success(),
        "mount failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no_such_option") && err.contains("frobnicate"),
        "unknown options were not warned about: {err}"
    );
    assert!(
        !err.contains("c2"),
        "the quoted context was split at its comma: {err}"
    );
    // No upperdir: read-only.
    let e = fs::write(mnt.join("x"), "x").expect_err("write to a read-only mount");
    assert_eq!(e.raw_os_error(), Some(libc::EROFS));
    fusermount_u_and_wait(&mnt);
}

#[test]
fn escaped_colon_in_lowerdir() {
    let s = Scratch::new();
    let odd = s.mkdir("odd:name");
    write(&odd, "f", "colon\n");
    let mnt = s.mkdir("m");
    let lower = odd.as_os_str().as_bytes().to_vec();
    let mut escaped = b"lowerdir=".to_vec();
    for b in lower {
        if b == b':' {
            escaped.push(b'\\');
        }
        escaped.push(b);
    }
    let args = vec![
        OsString::from("-o"),
        <OsString as std::os::unix::ffi::OsStringExt>::from_vec(escaped),
        mnt.clone().into_os_string(),
    ];
    let out = run_os(&args);
    assert!(
        out.status.success(),
        "mount failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(fs::read_to_string(mnt.join("f")).expect("read"), "colon\n");
    fusermount_u_and_wait(&mnt);
}

#[test]
fn refusals_are_one_line_and_mount_nothing() {
    let s = Scratch::new();
    let (l1, _) = layers(&s);
    let mnt = s.mkdir("m");
    let m = mnt.to_str().expect("utf-8");
    let cases: Vec<Vec<OsString>> = vec![
        os(&["-o", "upperdir=/nonexistent", m]),
        os(&["-o", &opt("lowerdir", &s.path("missing")), m]),
        os(&["-o", &opt("lowerdir", &l1)]),
        os(&["-o", &opt("lowerdir", &l1), "-o", "timeout=soon", m]),
    ];
    for args in cases {
        let out = run_os(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert_eq!(err.trim().lines().count(), 1, "{args:?}: {err}");
        assert!(err.starts_with("unionfuse: "), "{args:?}: {err}");
        assert!(!is_mountpoint(&mnt), "{args:?} left a mount");
    }
}

#[test]
fn mount_t_fuse_through_mount_fuse3() {
    if !is_root() {
        eprintln!("skipped as non-root: mount(8) with a fuse type needs root");
        return;
    }
    if Command::new("mount.fuse3").arg("-h").output().is_err() {
        panic!("mount.fuse3 is missing (package fuse3)");
    }
    let s = Scratch::new();
    let (l1, l2) = layers(&s);
    let up = s.mkdir("u");
    let work = s.mkdir("w");
    let mnt = s.mkdir("m");
    // mount.fuse3 runs PROGRAM from `PROGRAM#SOURCE` (what the type names
    // with `-t fuse.unionfuse`, found on the root PATH, once installed).
    let source = format!("{}#unionfuse", bin());
    let opts = format!(
        "lowerdir={}:{},{},{}",
        l1.display(),
        l2.display(),
        opt("upperdir", &up),
        opt("workdir", &work)
    );
    let out = Command::new("mount")
        .args(["-t", "fuse", &source])
        .arg(&mnt)
        .args(["-o", &opts])
        .output()
        .expect("run mount");
    assert!(
        out.status.success(),
        "mount -t fuse {source} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(ls(&mnt.join("etc")), ["hostname", "os-release"]);
    fs::write(mnt.join("new"), "n\n").expect("write");
    let st = Command::new("umount").arg(&mnt).status().expect("umount");
    assert!(st.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    while is_mountpoint(&mnt) {
        assert!(Instant::now() < deadline, "still mounted");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(fs::read_to_string(up.join("new")).expect("upper"), "n\n");
}

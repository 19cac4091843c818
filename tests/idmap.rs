//! Owners through a user namespace's eyes (fuse-overlayfs's `uidmapping=`,
//! `gidmapping=`, `squash_to_*`) and ownership overrides kept in xattrs
//! (`xattr_permissions=`), as rootless containers use them.
#![allow(unsafe_code)]

mod common;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use common::*;

fn owner(p: &Path) -> (u32, u32) {
    let m = fs::symlink_metadata(p).unwrap_or_else(|e| panic!("stat {p:?}: {e}"));
    (m.uid(), m.gid())
}

fn chown(p: &Path, uid: u32, gid: u32) -> std::io::Result<()> {
    std::os::unix::fs::lchown(p, Some(uid), Some(gid))
}

/// Files owned by a mapped host id, another mapped one, and an unmapped one.
fn owned_lower(s: &Scratch) -> std::path::PathBuf {
    let l = s.mkdir("l");
    for (name, id) in [("a", 1000), ("b", 100_005), ("c", 5)] {
        write(&l, name, name);
        lchown(&l, name, id, id);
    }
    l
}

const MAP: &str = "0:1000:1:1:100000:65536";

#[test]
fn uid_and_gid_mapping_show_container_ids_and_store_host_ids() {
    if !is_root() {
        eprintln!("skipped as non-root: the layers need files owned by other uids");
        return;
    }
    let s = Scratch::new();
    let l = owned_lower(&s);
    let up = s.mkdir("u");
    let mnt = s.mkdir("m");
    let m = Mounted::new(&[&l], Some(&up), &mnt, &["--uidmap", MAP, "--gidmap", MAP]);
    assert_eq!(owner(&m.path("a")), (0, 0));
    assert_eq!(owner(&m.path("b")), (6, 6));
    // Unmapped host ids show as the overflow id, as the kernel shows them.
    assert_eq!(owner(&m.path("c")), (65534, 65534));
    // chown takes container ids and stores host ids.
    chown(&m.path("a"), 10, 11).expect("chown");
    assert_eq!(owner(&m.path("a")), (10, 11));
    assert_eq!(owner(&up.join("a")), (100_009, 100_010));
    let e = chown(&m.path("b"), 70_000, 70_000).expect_err("chown to an unmapped id");
    assert_eq!(e.raw_os_error(), Some(libc::EINVAL));
    // A new file belongs to the caller (root = container 0 = host 1000).
    fs::write(m.path("new"), "n").expect("create");
    assert_eq!(owner(&m.path("new")), (0, 0));
    assert_eq!(owner(&up.join("new")), (1000, 1000));
    drop(m);
    assert_eq!(owner(&l.join("a")), (1000, 1000), "the lower changed");
}

#[test]
fn squash_to_root_and_compat_options() {
    if !is_root() {
        eprintln!("skipped as non-root: the layers need files owned by other uids");
        return;
    }
    let s = Scratch::new();
    let l = owned_lower(&s);
    let mnt = s.mkdir("m");
    let out = run(&[
        "-o".as_ref(),
        format!("lowerdir={},squash_to_root", l.display()).as_ref(),
        mnt.as_os_str(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for n in ["a", "b", "c"] {
        assert_eq!(owner(&mnt.join(n)), (0, 0), "{n}");
    }
    unmount(&mnt);
    let out = run(&[
        "-o".as_ref(),
        format!("lowerdir={},squash_to_uid=7,squash_to_gid=8", l.display()).as_ref(),
        mnt.as_os_str(),
    ]);
    assert!(out.status.success());
    assert_eq!(owner(&mnt.join("c")), (7, 8));
    unmount(&mnt);
    // A malformed mapping is refused before anything is mounted.
    let out = run(&[
        "-o".as_ref(),
        format!("lowerdir={},uidmapping=0:1000", l.display()).as_ref(),
        mnt.as_os_str(),
    ]);
    assert!(!out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim().lines().count(),
        1
    );
    assert!(!is_mountpoint(&mnt));
}

fn override_xattr(p: &Path, name: &str) -> Option<String> {
    getxattr(p, name)
        .ok()
        .map(|v| String::from_utf8_lossy(&v).into_owned())
}

fn check_overrides(level: &str, attr: &str) {
    let s = Scratch::new();
    let l = s.mkdir("l");
    write(&l, "f", "f");
    write(&l, "dev", "");
    chmod(&l, "f", 0o600);
    setxattr(&l, "f", attr, b"0:0:0755");
    setxattr(&l, "dev", attr, b"0:0:0620:char-4-1");
    let up = s.mkdir("u");
    let mnt = s.mkdir("m");
    let m = Mounted::new(&[&l], Some(&up), &mnt, &["--xattr-permissions", level]);
    let f = fs::symlink_metadata(m.path("f")).expect("stat f");
    assert_eq!((f.uid(), f.gid(), f.mode() & 0o7777), (0, 0, 0o755));
    // A device stored as a plain file by a user who could not mknod.
    let d = fs::symlink_metadata(m.path("dev")).expect("stat dev");
    assert_eq!(d.mode() & libc::S_IFMT, libc::S_IFCHR);
    assert_eq!(d.rdev(), libc::makedev(4, 1));
    assert_eq!(d.mode() & 0o7777, 0o620);
    // The override is bookkeeping, never visible as an xattr.
    assert!(
        !listxattr(&m.path("f")).iter().any(|n| n == attr),
        "{attr} visible in the mount"
    );
    if !is_root() {
        // The kernel refuses a chown to another uid before the mount sees
        // it; root of a user namespace (rootless podman) may.
        eprintln!("skipped as non-root: chown and chmod into the override");
        return;
    }
    // chown and chmod land in the override of the copy; the disk keeps the
    // daemon's access.
    chown(&m.path("f"), 33, 44).expect("chown");
    fs::set_permissions(m.path("f"), fs::Permissions::from_mode(0o4750)).expect("chmod");
    let f = fs::symlink_metadata(m.path("f")).expect("stat f");
    assert_eq!((f.uid(), f.gid(), f.mode() & 0o7777), (33, 44, 0o4750));
    assert_eq!(
        override_xattr(&up.join("f"), attr).as_deref(),
        Some("33:44:04750")
    );
    let raw = fs::symlink_metadata(up.join("f")).expect("upper f");
    assert_eq!(
        raw.mode() & 0o600,
        0o600,
        "the daemon lost access to its copy"
    );
    // Copy-up keeps the override; a chmod changes only its mode. (Opening
    // the node would open the device itself.)
    fs::set_permissions(m.path("dev"), fs::Permissions::from_mode(0o640)).expect("chmod dev");
    assert_eq!(
        override_xattr(&up.join("dev"), attr).as_deref(),
        Some("0:0:0640:char-4-1")
    );
    let d = fs::symlink_metadata(m.path("dev")).expect("stat dev");
    assert_eq!(d.mode() & libc::S_IFMT, libc::S_IFCHR);
    drop(m);
    assert_eq!(
        override_xattr(&l.join("f"), attr).as_deref(),
        Some("0:0:0755"),
        "the lower changed"
    );
}

#[test]
fn containers_override_stat() {
    check_overrides("2", "user.containers.override_stat");
}

#[test]
fn fuseoverlayfs_override_stat() {
    if !is_root() {
        eprintln!("skipped as non-root: security.* xattrs need privilege");
        return;
    }
    check_overrides("1", "security.fuseoverlayfs.override_stat");
}

//! Metadata-only copies (kernel overlayfs's `metacopy=on`): an upper that
//! kernel overlayfs wrote with metadata-only copy-ups, renamed ones among
//! them, reads through unionfuse with the lower data, and the first write
//! through unionfuse completes the copy so that kernel overlayfs reads it
//! again. Needs root and kernel overlayfs (the upper is written by it).
#![allow(unsafe_code)]

mod common;

use std::fs;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};

use common::*;

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + i / 4096) as u8).collect()
}

#[test]
fn kernel_metacopy_uppers_read_through_and_complete_on_write() {
    if skip_as_non_root("kernel overlayfs writes the upper (needs root)") {
        return;
    }
    let s = Scratch::new();
    let (l, u, w) = (s.mkdir("lower"), s.mkdir("upper"), s.mkdir("work"));
    let mnt = s.mkdir("mnt");
    let big = pattern(3 << 20);
    fs::write(l.join("big"), &big).unwrap();
    write(&l, "moved", "moved data");
    write(&l, "dir/deep", "deep data");
    write(&l, "emptied", "to be truncated");
    {
        let k = KernelOverlay::new(&[&l], Some((&u, &w)), &mnt, "metacopy=on,redirect_dir=on")
            .unwrap_or_else(|e| {
                panic!("kernel overlayfs with metacopy=on is the writer here: {e}")
            });
        fs::set_permissions(k.mnt.join("big"), fs::Permissions::from_mode(0o600)).unwrap();
        fs::set_permissions(k.mnt.join("emptied"), fs::Permissions::from_mode(0o640)).unwrap();
        // Same directory: a relative redirect; across: an absolute one.
        fs::rename(k.mnt.join("moved"), k.mnt.join("renamed")).unwrap();
        fs::rename(k.mnt.join("dir/deep"), k.mnt.join("deep2")).unwrap();
    }
    for f in ["big", "renamed", "deep2", "emptied"] {
        assert!(
            getxattr(&u.join(f), "trusted.overlay.metacopy").is_ok(),
            "kernel overlayfs left {f} as a metadata-only copy"
        );
    }
    assert!(
        fs::metadata(u.join("big")).unwrap().blocks() < 64,
        "big holds no data in the upper"
    );

    let m = mount_with_work(&[&l], Some((&u, &w)), &mnt);
    assert!(fs::read(m.path("big")).unwrap() == big, "big: lower data");
    let md = fs::metadata(m.path("big")).unwrap();
    assert_eq!(md.mode() & 0o7777, 0o600, "big: the copy's mode");
    assert!(md.blocks() >= (3 << 20) / 512, "big: the data's blocks");
    assert_eq!(fs::read_to_string(m.path("renamed")).unwrap(), "moved data");
    assert_eq!(fs::read_to_string(m.path("deep2")).unwrap(), "deep data");
    assert_eq!(
        fs::read_to_string(m.path("emptied")).unwrap(),
        "to be truncated"
    );

    // A reader opened before the data is copied sees the writes after it.
    let mut reader = fs::File::open(m.path("big")).unwrap();
    let mut f = fs::OpenOptions::new()
        .append(true)
        .open(m.path("big"))
        .unwrap();
    f.write_all(b"tail").unwrap();
    drop(f);
    let mut want = big.clone();
    want.extend_from_slice(b"tail");
    let mut seen = Vec::new();
    std::io::Read::read_to_end(&mut reader, &mut seen).unwrap();
    assert!(seen == want, "the earlier reader sees the completed copy");
    assert!(fs::read(m.path("big")).unwrap() == want, "big after append");
    assert_eq!(fs::metadata(m.path("big")).unwrap().mode() & 0o7777, 0o600);
    fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_TRUNC)
        .open(m.path("emptied"))
        .unwrap()
        .write_all(b"new")
        .unwrap();
    assert_eq!(fs::read_to_string(m.path("emptied")).unwrap(), "new");
    drop(m);

    for f in ["big", "emptied"] {
        assert!(
            getxattr(&u.join(f), "trusted.overlay.metacopy").is_err(),
            "{f}: complete copies carry no metacopy marker"
        );
    }
    assert!(
        fs::read(l.join("big")).unwrap() == big,
        "the lower is untouched"
    );
    assert_eq!(
        fs::read_to_string(l.join("emptied")).unwrap(),
        "to be truncated"
    );

    let k = KernelOverlay::new(&[&l], Some((&u, &w)), &mnt, "metacopy=on,redirect_dir=on")
        .unwrap_or_else(|e| panic!("kernel overlayfs mounts the upper again: {e}"));
    assert!(fs::read(k.mnt.join("big")).unwrap() == want);
    assert_eq!(fs::read_to_string(k.mnt.join("emptied")).unwrap(), "new");
    assert_eq!(
        fs::read_to_string(k.mnt.join("renamed")).unwrap(),
        "moved data"
    );
    assert_eq!(
        fs::read_to_string(k.mnt.join("deep2")).unwrap(),
        "deep data"
    );
}

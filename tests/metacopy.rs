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

    // A reader opened before the data is copied sees the writes after it,
    // unless it reads the lower data directly (passthrough): then it keeps
    // reading what it opened.
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
    if common::lower_passthrough(&[]) {
        assert!(seen == big, "the earlier reader keeps the lower data");
    } else {
        assert!(seen == want, "the earlier reader sees the completed copy");
    }
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

/// `--metacopy`: attribute changes of a lower file copy its metadata only;
/// the data is read from below until the first write, and the upper reads
/// the same under kernel overlayfs with `metacopy=on`. Without the option,
/// the same changes copy the data too (and the upper needs no option).
#[test]
fn metacopy_mounts_copy_attributes_only_until_the_first_write() {
    if skip_as_non_root("kernel overlayfs is the reader here (needs root)") {
        return;
    }
    let s = Scratch::new();
    let (l, u, w) = (s.mkdir("lower"), s.mkdir("upper"), s.mkdir("work"));
    let mnt = s.mkdir("mnt");
    let big = pattern(8 << 20);
    fs::write(l.join("big"), &big).unwrap();
    write(&l, "small", "small data");
    write(&l, "tagged", "tagged data");
    write(&l, "full", "full data");
    write(&l, "linked", "linked data");
    fs::hard_link(l.join("linked"), l.join("linked2")).unwrap();
    let w_s = w.to_str().unwrap();
    {
        let m = Mounted::new(&[&l], Some(&u), &mnt, &["--work", w_s, "--metacopy"]);
        fs::set_permissions(m.path("big"), fs::Permissions::from_mode(0o600)).unwrap();
        std::os::unix::fs::lchown(m.path("small"), Some(1234), Some(4321)).unwrap();
        let p = std::ffi::CString::new(m.path("tagged").to_str().unwrap()).unwrap();
        let times = [libc::timespec {
            tv_sec: 1_000_000,
            tv_nsec: 5,
        }; 2];
        // SAFETY: p is a valid path and times holds two timespecs.
        let rc = unsafe { libc::utimensat(libc::AT_FDCWD, p.as_ptr(), times.as_ptr(), 0) };
        assert_eq!(rc, 0, "utimensat: {}", std::io::Error::last_os_error());
        setxattr(&m.mnt, "tagged", "user.note", b"kept");
        for f in ["big", "small", "tagged"] {
            assert!(
                getxattr(&u.join(f), "trusted.overlay.metacopy").is_ok(),
                "{f}: a metadata-only copy"
            );
        }
        assert!(
            fs::metadata(u.join("big")).unwrap().blocks() < 64,
            "big: no data copied"
        );
        // A hard-linked lower file goes through the index, data and all.
        fs::set_permissions(m.path("linked"), fs::Permissions::from_mode(0o600)).unwrap();
        assert!(getxattr(&u.join("linked"), "trusted.overlay.metacopy").is_err());
        assert_eq!(fs::read_to_string(u.join("linked")).unwrap(), "linked data");
        assert_eq!(
            fs::metadata(m.path("linked2")).unwrap().mode() & 0o7777,
            0o600
        );
        assert!(
            fs::read(m.path("big")).unwrap() == big,
            "big: data from below"
        );
        let md = fs::metadata(m.path("big")).unwrap();
        assert_eq!(md.mode() & 0o7777, 0o600);
        assert!(md.blocks() >= (8 << 20) / 512, "big: the data's blocks");
        // A second change of attributes stays metadata-only.
        fs::set_permissions(m.path("big"), fs::Permissions::from_mode(0o640)).unwrap();
        assert!(getxattr(&u.join("big"), "trusted.overlay.metacopy").is_ok());
        let md = fs::metadata(m.path("small")).unwrap();
        assert_eq!((md.uid(), md.gid()), (1234, 4321));
        assert_eq!(fs::read_to_string(m.path("small")).unwrap(), "small data");
        let md = fs::metadata(m.path("tagged")).unwrap();
        assert_eq!((md.mtime(), md.mtime_nsec()), (1_000_000, 5));
        assert_eq!(getxattr(&m.path("tagged"), "user.note").unwrap(), b"kept");
        // The first write brings the data.
        let mut f = fs::OpenOptions::new()
            .append(true)
            .open(m.path("tagged"))
            .unwrap();
        f.write_all(b"+").unwrap();
        drop(f);
        assert_eq!(
            fs::read_to_string(m.path("tagged")).unwrap(),
            "tagged data+"
        );
        assert!(getxattr(&u.join("tagged"), "trusted.overlay.metacopy").is_err());
        assert_eq!(getxattr(&m.path("tagged"), "user.note").unwrap(), b"kept");
    }
    assert!(
        fs::read(l.join("big")).unwrap() == big,
        "the lower is untouched"
    );
    {
        let k = KernelOverlay::new(&[&l], Some((&u, &w)), &mnt, "metacopy=on,redirect_dir=on")
            .unwrap_or_else(|e| panic!("kernel overlayfs reads the upper: {e}"));
        assert!(fs::read(k.mnt.join("big")).unwrap() == big);
        assert_eq!(
            fs::metadata(k.mnt.join("big")).unwrap().mode() & 0o7777,
            0o640
        );
        assert_eq!(
            fs::read_to_string(k.mnt.join("small")).unwrap(),
            "small data"
        );
        let md = fs::metadata(k.mnt.join("small")).unwrap();
        assert_eq!((md.uid(), md.gid()), (1234, 4321));
        assert_eq!(
            fs::read_to_string(k.mnt.join("tagged")).unwrap(),
            "tagged data+"
        );
    }
    // A layer file cannot point below: export refuses rather than writing
    // the sparse copy as if it were the data.
    let out = run(&[
        "export".as_ref(),
        "--upper".as_ref(),
        u.as_os_str(),
        "-o".as_ref(),
        s.dir.path().join("layer.tar").as_os_str(),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("metadata-only copy"),
        "export of a metacopy upper: {err}"
    );
    // Without --metacopy an attribute change copies the data as well.
    let m = mount_with_work(&[&l], Some((&u, &w)), &mnt);
    fs::set_permissions(m.path("full"), fs::Permissions::from_mode(0o600)).unwrap();
    assert!(getxattr(&u.join("full"), "trusted.overlay.metacopy").is_err());
    assert_eq!(fs::read_to_string(u.join("full")).unwrap(), "full data");
}

//! The Rust API: `Mount::builder()...mount(path)` gives a guard that
//! unmounts on drop, and the guard's diff and export see its upper.
#![allow(unsafe_code)]

mod common;

use std::fs;

use common::*;
use unionfuse::Compression;
use unionfuse::{Failure, Mount};

#[test]
fn builder_mounts_and_the_guard_unmounts() {
    let s = Scratch::new();
    let l1 = s.mkdir("l1");
    let l2 = s.mkdir("l2");
    write(&l2, "etc/motd", "image\n");
    write(&l2, "etc/issue", "issue\n");
    write(&l1, "etc/hostname", "top\n");
    let up = s.mkdir("u");
    let mnt = s.mkdir("m");
    let m = Mount::builder()
        .lower(&l1)
        .lower(&l2)
        .upper(&up)
        .mount(&mnt)
        .expect("mount");
    assert!(is_mountpoint(&mnt));
    assert_eq!(ls(&mnt.join("etc")), ["hostname", "issue", "motd"]);
    fs::write(m.path().join("tmp-new"), "x").expect("write");
    fs::remove_file(m.path().join("etc/motd")).expect("rm");
    // Modes are exact although this process has a umask.
    fs::create_dir(m.path().join("open")).expect("mkdir");
    std::fs::set_permissions(
        m.path().join("open"),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .expect("chmod");
    let lines: Vec<String> = m
        .diff()
        .expect("diff")
        .iter()
        .map(|c| format!("{} {}", c.kind.letter(), String::from_utf8_lossy(&c.path)))
        .collect();
    assert_eq!(lines, ["C /etc", "D /etc/motd", "A /open", "A /tmp-new"]);
    let mut layer = Vec::new();
    m.export(&mut layer, Compression::None).expect("export");
    assert!(layer.len() > 512);
    // Checkpoint, reset, restore, through the guard.
    m.checkpoint("before-reset").expect("checkpoint");
    m.reset().expect("reset");
    assert_eq!(ls(&mnt.join("etc")), ["hostname", "issue", "motd"]);
    assert!(m.diff().expect("diff").is_empty());
    m.restore("before-reset").expect("restore");
    assert_eq!(ls(&mnt.join("etc")), ["hostname", "issue"]);
    assert!(mnt.join("tmp-new").exists());
    // A busy mount is reported and kept.
    let mut m = m;
    let f = fs::File::open(m.path().join("etc/issue")).expect("open");
    let e = m.unmount().expect_err("unmounted with a file open");
    assert!(matches!(e, Failure::Mount(_)), "{e:?}");
    assert!(e.to_string().contains("busy"), "{e}");
    assert!(is_mountpoint(&mnt), "a busy mount went away");
    drop(f);
    m.unmount().expect("unmount once the file is closed");
    assert!(!is_mountpoint(&mnt));
    drop(m);
    // Dropping a guard unmounts too.
    let m = Mount::builder()
        .lower(&l1)
        .mount(&mnt)
        .expect("mount again");
    assert!(is_mountpoint(m.path()));
    drop(m);
    assert!(!is_mountpoint(&mnt));
    assert_eq!(
        fs::read_to_string(l2.join("etc/motd")).expect("lower"),
        "image\n"
    );
    assert!(
        fs::symlink_metadata(up.join("etc/motd")).is_ok(),
        "no whiteout"
    );
}

#[test]
fn bad_input_is_refused_before_mounting() {
    let s = Scratch::new();
    let mnt = s.mkdir("m");
    let e = Mount::builder()
        .lower(s.path("missing"))
        .mount(&mnt)
        .expect_err("a missing lower");
    assert!(matches!(e, Failure::Invalid(_)), "{e:?}");
    assert!(e.to_string().contains("does not exist"), "{e}");
    let e = Mount::builder().mount(&mnt).expect_err("no lower");
    assert!(!e.to_string().is_empty());
    assert!(!is_mountpoint(&mnt));
}

/// Dropping a guard returns once the serving threads have stopped and the
/// upper is final, so the same layers mount again at once, hundreds of
/// times, and `diff MOUNTPOINT` finds an in-process mount by its record.
#[test]
fn guard_drop_releases_everything_before_it_returns() {
    let s = Scratch::new();
    let lower = s.mkdir("l");
    write(&lower, "etc/motd", "image\n");
    let up = s.mkdir("u");
    let work = s.mkdir("w");
    let mnt = s.mkdir("m");
    let n: usize = std::env::var("UNIONFUSE_REMOUNT_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(500)
        / 5;
    for i in 0..n {
        let m = Mount::builder()
            .lower(&lower)
            .upper(&up)
            .work(&work)
            .mount(&mnt)
            .expect("mount");
        if i > 0 {
            assert!(m.path().join(format!("c{}", i - 1)).exists(), "cycle {i}");
        }
        fs::write(m.path().join(format!("c{i}")), "x").expect("write");
        if i == 0 {
            let out = run(&[std::ffi::OsStr::new("diff"), mnt.as_os_str()]);
            assert!(
                out.status.success(),
                "diff of an in-process mount: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            assert_eq!(String::from_utf8_lossy(&out.stdout), "A /c0\n");
        }
        drop(m);
        assert!(!is_mountpoint(&mnt), "cycle {i}");
        let dir = fs::File::open(&work).expect("open work dir");
        assert!(
            dir.try_lock().is_ok(),
            "cycle {i}: the guard returned while the work directory was held"
        );
    }
    let bare = fs::read_dir(&mnt).expect("read").count();
    assert_eq!(bare, 0, "writes went into the bare mountpoint");
}

/// Every option of `unionfuse mount` through `MountConfig`: validated once,
/// mounted in-process with `Mount::start`.
#[test]
fn a_full_config_mounts_in_process() {
    use std::os::unix::fs::MetadataExt;
    let s = Scratch::new();
    let l1 = s.mkdir("l1");
    write(&l1, "etc/motd", "image\n");
    let up = s.mkdir("u");
    let work = s.mkdir("w");
    let mnt = s.mkdir("m");
    let cfg = unionfuse::MountConfig::builder()
        .lower(&l1)
        .upper(&up)
        .work(&work)
        .mountpoint(&mnt)
        .threads(2)
        .squash_uid(4321)
        .squash_gid(4321)
        .read_only(true)
        .validate()
        .expect("a valid config");
    assert_eq!(cfg.lowers, [l1.canonicalize().expect("canonical")]);
    assert!(cfg.read_only && cfg.threads == 2);
    let m = Mount::start(cfg).expect("mount");
    let st = fs::metadata(m.path().join("etc/motd")).expect("stat");
    assert_eq!((st.uid(), st.gid()), (4321, 4321));
    let e = fs::write(m.path().join("new"), "x").expect_err("a read-only mount");
    assert_eq!(e.raw_os_error(), Some(libc::EROFS));
    drop(m);
    assert!(!is_mountpoint(&mnt));
    assert!(ls(&up).is_empty(), "a read-only mount wrote its upper");
}

/// The command line and the library share one validation: the same bad
/// request gets the same one-line refusal from both, and nothing on disk
/// changes.
#[test]
fn the_library_refuses_as_the_command_line_does() {
    let s = Scratch::new();
    let l1 = s.mkdir("l1");
    let up = s.mkdir("u");
    let inside = s.mkdir("u/w");
    let mnt = s.mkdir("m");
    let before = ls(s.dir.path());
    let lib = Mount::builder()
        .lower(&l1)
        .upper(&up)
        .work(&inside)
        .mount(&mnt)
        .expect_err("a work directory inside the upper");
    assert!(matches!(lib, Failure::Invalid(_)), "{lib:?}");
    let out = run(&[
        "mount".as_ref(),
        "--lower".as_ref(),
        l1.as_os_str(),
        "--upper".as_ref(),
        up.as_os_str(),
        "--work".as_ref(),
        inside.as_os_str(),
        mnt.as_os_str(),
    ]);
    assert!(!out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim_end(),
        format!("unionfuse: {lib}")
    );
    assert!(lib.to_string().contains("is inside"), "{lib}");
    assert!(!is_mountpoint(&mnt));
    assert_eq!(ls(s.dir.path()), before);
    assert_eq!(ls(&up), ["w"]);
}

//! `reset`, `checkpoint` and `restore` on a live mount: the merged view
//! changes at once for every process, without unmounting.
#![allow(unsafe_code)]

mod common;

use std::fs;
use std::io::{Read, Seek};

use common::*;

fn uf_ok(args: &[&std::ffi::OsStr]) {
    let out = run(args);
    assert!(
        out.status.success(),
        "unionfuse {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn image(s: &Scratch) -> std::path::PathBuf {
    let l = s.mkdir("l");
    write(&l, "etc/motd", "image\n");
    write(&l, "etc/config", "image\n");
    write(&l, "var/lib/state", "image\n");
    l
}

#[test]
fn reset_shows_the_pristine_image_at_once() {
    let s = Scratch::new();
    let l = image(&s);
    let up = s.mkdir("u");
    let mnt = s.mkdir("m");
    let m = Mounted::new(&[&l], Some(&up), &mnt, &[]);
    // Fill the kernel's caches with changed names, negative entries included.
    fs::write(m.path("etc/config"), "changed\n").expect("write");
    fs::remove_file(m.path("etc/motd")).expect("rm");
    assert!(!m.path("etc/motd").exists());
    fs::create_dir_all(m.path("new/deeper")).expect("mkdir");
    fs::write(m.path("new/deeper/f"), "new\n").expect("write");
    fs::remove_dir_all(m.path("var/lib")).expect("rm -rf");
    fs::create_dir(m.path("var/lib")).expect("mkdir over deleted");
    // A file kept open across the reset, and a process's cwd.
    let mut open = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(m.path("etc/config"))
        .expect("open");
    let cwd_holder = std::process::Command::new("sleep")
        .arg("30")
        .current_dir(m.path("new"))
        .spawn()
        .expect("sleep");

    uf_ok(&["reset".as_ref(), mnt.as_os_str()]);

    assert_eq!(
        fs::read_to_string(m.path("etc/motd")).expect("motd back"),
        "image\n"
    );
    assert_eq!(
        fs::read_to_string(m.path("etc/config")).expect("config"),
        "image\n"
    );
    assert_eq!(
        fs::read_to_string(m.path("var/lib/state")).expect("state"),
        "image\n"
    );
    assert!(
        !m.path("new").exists(),
        "an added directory survived the reset"
    );
    assert_eq!(ls(&m.path("")), ["etc", "var"]);
    assert!(ls(&up).is_empty(), "the upper is not empty: {:?}", ls(&up));
    // A file open across the reset fails cleanly rather than mixing the
    // old copy and the image.
    let mut buf = String::new();
    open.rewind().expect("seek");
    let e = open
        .read_to_string(&mut buf)
        .expect_err("read from a file opened before the reset");
    assert_eq!(e.raw_os_error(), Some(libc::EIO), "{e}");
    drop(open);
    assert_eq!(
        fs::read_to_string(m.path("etc/config")).expect("config"),
        "image\n"
    );
    // The mount goes on working as before.
    fs::write(m.path("etc/config"), "after\n").expect("write after reset");
    assert_eq!(
        fs::read_to_string(up.join("etc/config")).expect("upper"),
        "after\n"
    );
    let mut cwd_holder = cwd_holder;
    let _ = cwd_holder.kill();
    let _ = cwd_holder.wait();
    drop(m);
    assert_eq!(
        fs::read_to_string(l.join("etc/config")).expect("lower"),
        "image\n"
    );
}

#[test]
fn checkpoint_and_restore_on_a_live_mount() {
    let s = Scratch::new();
    let l = image(&s);
    let up = s.mkdir("u");
    let mnt = s.mkdir("m");
    let m = Mounted::new(&[&l], Some(&up), &mnt, &[]);
    fs::write(m.path("etc/config"), "one\n").expect("write");
    fs::remove_file(m.path("etc/motd")).expect("rm");
    fs::write(m.path("added"), "a\n").expect("write");
    fs::hard_link(m.path("added"), m.path("added-link")).expect("link");
    uf_ok(&["checkpoint".as_ref(), mnt.as_os_str(), "one".as_ref()]);
    fs::write(m.path("etc/config"), "two\n").expect("write");
    fs::write(m.path("later"), "l\n").expect("write");
    uf_ok(&["restore".as_ref(), mnt.as_os_str(), "one".as_ref()]);
    assert_eq!(
        fs::read_to_string(m.path("etc/config")).expect("config"),
        "one\n"
    );
    assert!(
        !m.path("etc/motd").exists(),
        "the checkpoint's deletion was lost"
    );
    assert!(!m.path("later").exists());
    let a = fs::metadata(m.path("added")).expect("added");
    let b = fs::metadata(m.path("added-link")).expect("link");
    use std::os::unix::fs::MetadataExt;
    assert_eq!(
        (a.ino(), a.nlink()),
        (b.ino(), 2),
        "hard link lost in the checkpoint"
    );
    // Restoring twice gives the same; a reset forgets it all.
    uf_ok(&["restore".as_ref(), mnt.as_os_str(), "one".as_ref()]);
    assert_eq!(
        fs::read_to_string(m.path("etc/config")).expect("config"),
        "one\n"
    );
    uf_ok(&["reset".as_ref(), mnt.as_os_str()]);
    assert_eq!(
        fs::read_to_string(m.path("etc/motd")).expect("motd"),
        "image\n"
    );
    // Unknown checkpoints and bad names: one line, non-zero.
    for name in ["missing", "../etc"] {
        let out = run(&["restore".as_ref(), mnt.as_os_str(), name.as_ref()]);
        assert!(!out.status.success(), "restore {name} succeeded");
        assert_eq!(
            String::from_utf8_lossy(&out.stderr).trim().lines().count(),
            1
        );
    }
    drop(m);
}

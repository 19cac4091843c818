//! `unionfuse run`: a throwaway container root for one command.
#![allow(unsafe_code)]

mod common;

use std::fs;
use std::process::Command;

use common::*;

fn unionfuse_run(args: &[&str], tmp: &std::path::Path) -> std::process::Output {
    Command::new(bin())
        .arg("run")
        .args(args)
        .env("TMPDIR", tmp)
        .output()
        .expect("run unionfuse")
}

#[test]
fn run_gives_a_fresh_root_volumes_and_the_exit_status() {
    let s = Scratch::new();
    let root = busybox_rootfs(&s).expect("busybox is missing (package busybox-static)");
    let tmp = s.mkdir("tmp");
    let vol = s.mkdir("vol");
    let r = root.to_str().expect("utf-8");
    let v = format!("{}:/data", vol.display());
    let out = unionfuse_run(
        &[
            "--lower",
            r,
            "--diff",
            "--volume",
            &v,
            "--",
            "sh",
            "-c",
            "echo new > /tmp/new-file.txt; rm /etc/motd; echo kept > /data/f; cat /etc/config; test -d /proc/self && exit 3",
        ],
        &tmp,
    );
    assert_eq!(
        out.status.code(),
        Some(3),
        "exit status; stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "image\nC /etc\nD /etc/motd\nC /tmp\nA /tmp/new-file.txt\n"
    );
    // The volume outlives the container; the image and the host do not
    // change; the temporary layer is gone.
    assert_eq!(fs::read_to_string(vol.join("f")).expect("volume"), "kept\n");
    assert_eq!(
        fs::read_to_string(root.join("etc/motd")).expect("image"),
        "image\n"
    );
    assert!(!root.join("tmp/new-file.txt").exists());
    assert!(
        fs::read_dir(&tmp).expect("tmp").next().is_none(),
        "temporary layers left behind"
    );
    // Each run starts from the image, as the first process of its own PID
    // namespace.
    let out = unionfuse_run(
        &["--lower", r, "--", "sh", "-c", "cat /etc/motd; echo $$"],
        &tmp,
    );
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout), "image\n1\n");
}

#[test]
fn run_with_an_upper_keeps_the_changes() {
    let s = Scratch::new();
    let root = busybox_rootfs(&s).expect("busybox is missing (package busybox-static)");
    let up = s.mkdir("upper");
    let tmp = s.mkdir("tmp");
    let r = root.to_str().expect("utf-8");
    let u = up.to_str().expect("utf-8");
    let out = unionfuse_run(
        &[
            "--lower",
            r,
            "--upper",
            u,
            "--",
            "sh",
            "-c",
            "echo 1 > /etc/config",
        ],
        &tmp,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        fs::read_to_string(up.join("etc/config")).expect("upper"),
        "1\n"
    );
    let out = unionfuse_run(
        &["--lower", r, "--upper", u, "--", "cat", "/etc/config"],
        &tmp,
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "1\n");
    // A command that cannot start: a one-line error, non-zero.
    let out = unionfuse_run(&["--lower", r, "--", "/no/such/program"], &tmp);
    assert!(!out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim().lines().count(),
        1
    );
}

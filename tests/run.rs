//! `unionfuse run`: a throwaway container root for one command.
#![allow(unsafe_code)]

mod common;
#[path = "support/tree.rs"]
mod tree;

use std::fs;
use std::process::Command;
use std::time::{Duration, Instant};

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
    let started = Instant::now();
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
    // Nothing of run's own holds the root at the unmount: it ends at once,
    // rather than being detached after a wait with a warning.
    assert_eq!(String::from_utf8_lossy(&out.stderr), "", "stderr");
    let took = started.elapsed();
    assert!(took < Duration::from_secs(4), "run took {took:?}");
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
    // Nor does it leave the mountpoints made for /proc, /dev, /sys and its
    // volumes in a kept upper.
    let vol = s.mkdir("vol");
    let v = format!("{}:/data/x", vol.display());
    let opts = tree::Opts {
        mtime: false,
        ctime: false,
        ..tree::Opts::layer()
    };
    let before = tree::manifest(&up, &opts);
    let out = unionfuse_run(
        &[
            "--lower",
            r,
            "--upper",
            u,
            "--volume",
            &v,
            "--",
            "/no/such/program",
        ],
        &tmp,
    );
    assert!(!out.status.success());
    assert_eq!(tree::manifest(&up, &opts), before, "the upper changed");
}

/// An image whose /proc, /dev and volume parents are symlinks pointing out
/// of the root (absolute, and relative with `..`): `run` resolves every
/// target inside the root as the container would, so nothing is created,
/// changed or mounted on the host; a target that leads nowhere inside the
/// root is refused with one line, and one that leads somewhere inside it
/// is used.
#[test]
fn symlinks_in_the_image_never_lead_run_out_of_the_root() {
    let s = Scratch::new();
    let Some(root) = busybox_rootfs(&s) else {
        panic!("busybox is missing (package busybox-static)");
    };
    let tmp = s.mkdir("tmp");
    let vol = s.mkdir("vol");
    write(&vol, "file", "volume\n");
    let canary = s.mkdir("canary");
    write(&canary, "keep", "canary\n");
    let before = tree::manifest(&canary, &tree::Opts::layer());
    let mounts_before = fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    let r = root.to_str().expect("utf-8");
    let v = |inside: &str| format!("{}:{inside}", vol.display());
    let depth_up = "../".repeat(40);
    let rel_canary = format!("{depth_up}{}", canary.display());

    let cases: [(&str, &str, &str); 4] = [
        ("abs", canary.to_str().expect("utf-8"), "/abs/x"),
        ("rel", &rel_canary, "/rel/x"),
        ("proc", canary.to_str().expect("utf-8"), "/unused"),
        ("dev", &rel_canary, "/unused"),
    ];
    for (link, target, inside) in cases {
        let image = s.mkdir(&format!("image-{link}"));
        common::link(&image, link, target);
        if link == "proc" || link == "dev" {
            // The image's /proc or /dev itself points out.
            let out = unionfuse_run(
                &[
                    "--lower",
                    image.to_str().expect("utf-8"),
                    "--lower",
                    r,
                    "--",
                    "true",
                ],
                &tmp,
            );
            assert!(!out.status.success(), "{link}: run went on");
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(err.trim().lines().count(), 1, "{link}: {err}");
            assert!(err.contains("dangling symlink"), "{link}: {err}");
        } else {
            let out = unionfuse_run(
                &[
                    "--lower",
                    image.to_str().expect("utf-8"),
                    "--lower",
                    r,
                    "--volume",
                    &v(inside),
                    "--",
                    "true",
                ],
                &tmp,
            );
            assert!(!out.status.success(), "{link}: run went on");
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(err.contains("dangling symlink"), "{link}: {err}");
        }
        assert_eq!(
            tree::manifest(&canary, &tree::Opts::layer()),
            before,
            "{link}: the canary changed"
        );
    }

    // A symlink that stays inside the root is followed, as in the container.
    let image = s.mkdir("image-inside");
    common::mkdir(&image, "real");
    common::link(&image, "vol", "/real");
    let out = unionfuse_run(
        &[
            "--lower",
            image.to_str().expect("utf-8"),
            "--lower",
            r,
            "--volume",
            &v("/vol/x"),
            "--",
            "cat",
            "/real/x/file",
        ],
        &tmp,
    );
    assert!(
        out.status.success(),
        "run with a volume under an inside symlink: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "volume\n");
    assert_eq!(
        tree::manifest(&canary, &tree::Opts::layer()),
        before,
        "the canary changed"
    );
    let mounts_after = fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    let count = |t: &str| t.lines().filter(|l| !l.contains("unionfuse-test-")).count();
    assert_eq!(
        count(&mounts_before),
        count(&mounts_after),
        "a mount appeared outside the root"
    );
}

/// A bind target reached through `..` in a symlink of the image, while
/// renames happen elsewhere on the machine: the kernel then cannot vouch
/// for a `RESOLVE_IN_ROOT` walk and answers EAGAIN, which `run` retries
/// instead of failing. Without the retry, about one run in four fails here.
#[test]
fn bind_targets_resolve_while_renames_race() {
    let s = Scratch::new();
    let root = busybox_rootfs(&s).expect("busybox is missing (package busybox-static)");
    let tmp = s.mkdir("tmp");
    let vol = s.mkdir("vol");
    write(&vol, "file", "volume\n");
    let image = s.mkdir("image");
    common::mkdir(&image, "real");
    common::link(&image, "vol", "../real");
    let churn = s.mkdir("churn");
    write(&churn, "a", "");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let renamer = {
        let stop = stop.clone();
        let (a, b) = (churn.join("a"), churn.join("b"));
        std::thread::spawn(move || {
            let mut n = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                fs::rename(&a, &b).expect("rename");
                fs::rename(&b, &a).expect("rename");
                n += 2;
            }
            n
        })
    };
    let v = format!("{}:/vol/x", vol.display());
    let mut failures = Vec::new();
    for _ in 0..20 {
        let out = unionfuse_run(
            &[
                "--lower",
                image.to_str().expect("utf-8"),
                "--lower",
                root.to_str().expect("utf-8"),
                "--volume",
                &v,
                "--",
                "cat",
                "/real/x/file",
            ],
            &tmp,
        );
        if !out.status.success() || out.stdout != b"volume\n" {
            failures.push(String::from_utf8_lossy(&out.stderr).into_owned());
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let renames = renamer.join().expect("renamer");
    assert!(renames > 0, "no rename raced the runs");
    assert!(failures.is_empty(), "runs failed: {failures:?}");
}

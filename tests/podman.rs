//! podman drives unionfuse as its overlay `mount_program`: containers from
//! one image each get their own writable layer, `podman diff` lists what a
//! container changed, and a second container never sees the first one's
//! changes. Where podman is not installed, the same checks run through the
//! exact invocation containers/storage makes.
#![allow(unsafe_code)]

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::*;

/// What the container does: add, change and delete, as `docker diff`'s
/// example does.
const CHANGES: &str = "echo new > /tmp/new-file.txt && echo changed > /etc/config \
    && rm /etc/motd && mkdir /var/data && echo d > /var/data/f";

fn tar(root: &Path, out: &Path) {
    let st = Command::new("tar")
        .arg("-C")
        .arg(root)
        .arg("-cf")
        .arg(out)
        .arg(".")
        .status()
        .expect("tar");
    assert!(st.success());
}

struct Podman {
    base: Vec<String>,
    scratch: PathBuf,
    /// podman refuses a runroot over 50 bytes: this one is short, in /tmp.
    runroot: tempfile::TempDir,
}

impl Podman {
    fn new(s: &Scratch) -> Podman {
        let dir = |n: &str| s.mkdir(n).display().to_string();
        let runroot = tempfile::Builder::new()
            .prefix("ufpod")
            .tempdir_in("/tmp")
            .expect("runroot");
        let base = vec![
            format!("--root={}", dir("root")),
            format!("--runroot={}", runroot.path().display()),
            format!("--tmpdir={}", dir("tmp")),
            "--storage-driver=overlay".into(),
            format!("--storage-opt=overlay.mount_program={}", bin()),
            "--cgroup-manager=cgroupfs".into(),
            "--events-backend=file".into(),
            "--runtime=runc".into(),
        ];
        Podman {
            base,
            scratch: s.path(""),
            runroot,
        }
    }

    fn run(&self, args: &[&str]) -> Output {
        let out = Command::new("podman")
            .args(&self.base)
            .args(args)
            .output()
            .expect("run podman");
        assert!(
            out.status.success(),
            "podman {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    fn container(&self, name: &str, script: &str) -> String {
        let mut args = vec!["run", "--network=none"];
        args.extend([
            "--ulimit",
            "nofile=20000:20000",
            "--ulimit",
            "nproc=4096:4096",
        ]);
        if name.is_empty() {
            args.push("--rm");
        } else {
            args.extend(["--name", name]);
        }
        args.extend(["localhost/unionfuse-test", "sh", "-c", script]);
        String::from_utf8_lossy(&self.run(&args).stdout).into_owned()
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        let _ = Command::new("podman")
            .args(&self.base)
            .args(["rm", "-af"])
            .output();
        let _ = Command::new("podman")
            .args(&self.base)
            .args(["rmi", "-af"])
            .output();
        // Whatever podman left mounted under its directories.
        let mounts = fs::read_to_string("/proc/mounts").unwrap_or_default();
        let prefixes = [
            self.scratch.display().to_string(),
            self.runroot.path().display().to_string(),
        ];
        for line in mounts.lines() {
            if let Some(m) = line.split(' ').nth(1)
                && prefixes.iter().any(|p| m.starts_with(p.as_str()))
            {
                let _ = Command::new("umount").arg("-l").arg(m).status();
            }
        }
    }
}

/// `UNIONFUSE_TEST_NO_PODMAN=1` runs the fallback even where podman is
/// installed, so that it is known to work too.
fn podman_available() -> bool {
    if std::env::var_os("UNIONFUSE_TEST_NO_PODMAN").is_some() {
        return false;
    }
    Command::new("podman")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

#[test]
fn podman_runs_containers_on_unionfuse() {
    if !is_root() {
        eprintln!("skipped as non-root: podman runs here as root");
        return;
    }
    let s = Scratch::new();
    let Some(root) = busybox_rootfs(&s) else {
        panic!("busybox is missing (package busybox-static)");
    };
    if !podman_available() {
        eprintln!(
            "SKIPPED podman itself: podman is not installed; checking the same through containers/storage's mount_program invocation instead"
        );
        same_checks_without_podman(&s, &root);
        return;
    }
    let image = s.path("rootfs.tar");
    tar(&root, &image);
    let p = Podman::new(&s);
    p.run(&[
        "import",
        image.to_str().expect("utf-8"),
        "localhost/unionfuse-test",
    ]);
    let out = p.container(
        "c1",
        &format!("{CHANGES} && cat /etc/config /tmp/new-file.txt"),
    );
    assert_eq!(out, "changed\nnew\n");
    let diff = String::from_utf8_lossy(&p.run(&["diff", "c1"]).stdout).into_owned();
    let mut lines: Vec<&str> = diff.lines().collect();
    lines.sort_unstable();
    assert_eq!(
        lines,
        [
            "A /tmp/new-file.txt",
            "A /var/data",
            "A /var/data/f",
            "C /etc",
            "C /etc/config",
            "C /tmp",
            "C /var",
            "D /etc/motd",
        ],
        "podman diff c1"
    );
    // A second container from the same image starts from the image.
    let fresh = p.container(
        "",
        "cat /etc/motd /etc/config; test -e /tmp/new-file.txt && echo LEAK; test -e /var/data && echo LEAK; true",
    );
    assert_eq!(fresh, "image\nimage\n");
    // The first container's layer still holds its changes.
    let again = String::from_utf8_lossy(&p.run(&["diff", "c1"]).stdout).into_owned();
    let mut again: Vec<&str> = again.lines().collect();
    again.sort_unstable();
    assert_eq!(
        again, lines,
        "c1's layer changed after another container ran"
    );
    // Removing the container removes its layer.
    p.run(&["rm", "c1"]);
    let out = p.container("", "cat /etc/config; ls /tmp");
    assert_eq!(out, "image\n");
}

/// The same story through the argv containers/storage gives a mount
/// program, with the image unpacked as a lower layer.
fn same_checks_without_podman(s: &Scratch, root: &Path) {
    for ctr in ["c1", "c2"] {
        let up = s.mkdir(&format!("{ctr}/diff"));
        let work = s.mkdir(&format!("{ctr}/work"));
        let merged = s.mkdir(&format!("{ctr}/merged"));
        let out = run(&[
            "-o".as_ref(),
            format!(
                "lowerdir={},upperdir={},workdir={}",
                root.display(),
                up.display(),
                work.display()
            )
            .as_ref(),
            merged.as_os_str(),
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        if ctr == "c1" {
            let st = Command::new("chroot")
                .arg(&merged)
                .args(["/bin/sh", "-c", CHANGES])
                .status()
                .expect("chroot");
            assert!(st.success());
            assert!(
                fs::symlink_metadata(up.join("etc/motd")).is_ok(),
                "no whiteout"
            );
            assert_eq!(
                fs::read_to_string(up.join("tmp/new-file.txt")).expect("new"),
                "new\n"
            );
        } else {
            assert_eq!(
                fs::read_to_string(merged.join("etc/motd")).expect("motd"),
                "image\n"
            );
            assert!(
                !merged.join("tmp/new-file.txt").exists(),
                "c1's file leaked into c2"
            );
        }
        fusermount_u(&merged);
    }
}

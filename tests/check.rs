//! `unionfuse check`: an upper planted with every problem it knows is
//! reported line by line without a byte changing on disk; `--repair` fixes
//! each without changing the merged view; an upper written by real mounts
//! is clean.
// The fixtures in common/ need libc; every unsafe block there says why it
// is sound.
#![allow(unsafe_code)]

mod common;
#[path = "support/tree.rs"]
mod tree;

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs;
use std::path::Path;

use common::*;

fn redirect_xattr() -> &'static str {
    if is_root() {
        "trusted.overlay.redirect"
    } else {
        "user.overlay.redirect"
    }
}

/// Every path of a merged tree with its content (or `dir`, or the link).
fn view(root: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).expect("readdir") {
            let p = e.expect("entry").path();
            let rel = p
                .strip_prefix(root)
                .expect("under root")
                .display()
                .to_string();
            let md = fs::symlink_metadata(&p).expect("lstat");
            let what = if md.is_dir() {
                stack.push(p.clone());
                "dir".to_string()
            } else if md.file_type().is_symlink() {
                format!("-> {}", fs::read_link(&p).expect("readlink").display())
            } else {
                fs::read_to_string(&p).unwrap_or_else(|_| "?".into())
            };
            out.insert(rel, what);
        }
    }
    out
}

/// The merged view of `upper` over `lower`, through a read-only mount
/// that takes the upper as its top lower (so nothing is written to it).
fn merged(s: &Scratch, upper: &Path, lower: &Path, name: &str) -> BTreeMap<String, String> {
    let mnt = s.mkdir(name);
    let m = Mounted::new(&[upper, lower], None, &mnt, &[]);
    let v = view(&m.mnt);
    drop(m);
    v
}

fn check(args: &[&OsStr]) -> (Option<i32>, String) {
    let mut a = vec![OsStr::new("check")];
    a.extend_from_slice(args);
    let out = run(&a);
    assert!(
        out.stderr.is_empty(),
        "check wrote to stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn check_reports_without_changing_anything_and_repairs_without_changing_the_view() {
    let s = Scratch::new();
    let lower = s.mkdir("lower");
    write(&lower, "etc/a", "a\n");
    write(&lower, "etc/b", "b\n");
    write(&lower, "opq/hidden", "hidden\n");
    write(&lower, "red/kept", "lower red\n");
    let upper = s.mkdir("upper");
    write(&upper, "etc/c", "c\n");
    whiteout_oci(&upper, "etc/a");
    whiteout_chr(&upper, "etc/nothere");
    whiteout_oci(&upper, "etc/ghost");
    write(&upper, "opq/mine", "mine\n");
    setxattr(&upper, "opq", opaque_xattr(), b"y");
    write(&upper, "opq/.wh..wh..opq", "");
    whiteout_chr(&upper, "opq/z");
    write(&upper, "red/new", "new\n");
    setxattr(&upper, "red", redirect_xattr(), b"/nowhere");
    write(&upper, "f", "f\n");
    setxattr(&upper, "f", "user.unionfuse.nlink", b"2");
    write(&upper, "g", "g\n");
    setxattr(&upper, "g", "user.overlay.opaque", b"y");
    write(&upper, "h", "h\n");
    setxattr(&upper, "h", "user.containers.override_stat", b"garbage");
    let work = s.mkdir("work");
    write(&work, "unionfuse-staging/1234.5", "half\n");
    // An index entry whose only link is its own still holds the data of
    // lower names not copied up yet: never a finding.
    write(&work, "unionfuse-index/99", "lower hard link\n");

    let before = merged(&s, &upper, &lower, "m1");
    let manifest = |p: &Path| tree::manifest(p, &tree::Opts::layer());
    let (mu, mw) = (manifest(&upper), manifest(&work));
    let args = [
        OsStr::new("--upper"),
        upper.as_os_str(),
        OsStr::new("--lower"),
        lower.as_os_str(),
        OsStr::new("--work"),
        work.as_os_str(),
    ];
    let (code, text) = check(&args);
    assert_eq!(code, Some(3), "{text}");
    let mut got: Vec<String> = text
        .lines()
        .map(|l| l.split(':').next().unwrap_or("").to_string())
        .collect();
    got.sort();
    assert_eq!(
        got,
        [
            "double-opaque /opq",
            "override-malformed /h",
            "redirect-dangling /red",
            "staging-leftover work",
            "whiteout-in-opaque /opq/z",
            "whiteout-unneeded /etc/.wh.ghost",
            "whiteout-unneeded /etc/nothere",
            "xattr-stale /f",
            "xattr-stale /g",
        ],
        "{text}"
    );
    assert!(manifest(&upper) == mu, "check changed the upper");
    assert!(manifest(&work) == mw, "check changed the work directory");
    let mut json_args = args.to_vec();
    json_args.push(OsStr::new("--json"));
    let (code, json) = check(&json_args);
    assert_eq!(code, Some(3));
    assert!(
        json.starts_with("[{\"kind\":") && json.matches("\"repaired\":false").count() == 9,
        "{json}"
    );

    let mut repair = args.to_vec();
    repair.push(OsStr::new("--repair"));
    let (code, text) = check(&repair);
    assert_eq!(code, Some(0), "{text}");
    assert_eq!(
        text.lines().filter(|l| l.ends_with("(repaired)")).count(),
        9,
        "{text}"
    );
    let (code, text) = check(&args);
    assert_eq!(
        (code, text.as_str()),
        (Some(0), ""),
        "findings after a repair"
    );
    assert_eq!(
        merged(&s, &upper, &lower, "m2"),
        before,
        "the repair changed the view"
    );
    assert_eq!(
        fs::read_to_string(lower.join("etc/a")).expect("lower"),
        "a\n"
    );
}

#[test]
fn an_upper_written_by_mounts_is_clean() {
    let s = Scratch::new();
    let lower = s.mkdir("lower");
    write(&lower, "etc/a", "a\n");
    write(&lower, "d/x", "x\n");
    write(&lower, "k/y", "y\n");
    let upper = s.mkdir("upper");
    let mnt = s.mkdir("mnt");
    {
        let m = Mounted::new(&[&lower], Some(&upper), &mnt, &[]);
        fs::remove_file(m.path("etc/a")).expect("rm");
        fs::write(m.path("etc/new"), "new\n").expect("write");
        fs::remove_dir_all(m.path("d")).expect("rm -r");
        fs::create_dir(m.path("d")).expect("mkdir");
        fs::rename(m.path("k"), m.path("k2")).expect("mv");
        fs::hard_link(m.path("etc/new"), m.path("etc/new2")).expect("link");
    }
    let (code, text) = check(&[
        OsStr::new("--upper"),
        upper.as_os_str(),
        OsStr::new("--lower"),
        lower.as_os_str(),
    ]);
    assert_eq!((code, text.as_str()), (Some(0), ""));
}

#[test]
fn check_refuses_an_upper_a_live_mount_writes_to() {
    let s = Scratch::new();
    let lower = s.mkdir("lower");
    let upper = s.mkdir("upper");
    let mnt = s.mkdir("mnt");
    let _m = Mounted::new(&[&lower], Some(&upper), &mnt, &[]);
    let out = run(&[
        OsStr::new("check"),
        OsStr::new("--upper"),
        upper.as_os_str(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("in use by the mount"), "{err}");
}

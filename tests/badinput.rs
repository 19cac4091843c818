//! Every verb driven with missing, wrong-type, unreadable and conflicting
//! paths: each is refused with exactly one line on stderr and a non-zero
//! exit, and nothing in the scratch tree changes.
// The fixtures in common/ need libc; every unsafe block there says why it
// is sound.
#![allow(unsafe_code)]

mod common;
#[path = "support/tree.rs"]
mod tree;

use std::ffi::OsString;
use std::fs;

use common::*;

#[test]
fn every_verb_refuses_bad_paths_with_one_line_and_changes_nothing() {
    let s = Scratch::new();
    let lower = s.mkdir("lower");
    write(&lower, "etc/motd", "image\n");
    let upper = s.mkdir("upper");
    write(&upper, "etc/new", "new\n");
    let file = s.path("a-file");
    fs::write(&file, "not a directory\n").expect("file");
    let plain = s.mkdir("plain");
    let exists = s.mkdir("exists");
    let missing = s.path("missing");
    let garbage = s.path("garbage.tar");
    fs::write(&garbage, vec![0x42u8; 3000]).expect("garbage");
    let p = |x: &std::path::Path| x.to_str().expect("utf-8").to_string();
    let (l, u, f, pl, ex, mi, ga) = (
        p(&lower),
        p(&upper),
        p(&file),
        p(&plain),
        p(&exists),
        p(&missing),
        p(&garbage),
    );
    let in_missing = format!("{mi}/out.tar");
    let new_dir = p(&s.path("new"));
    let mut cases: Vec<(Vec<&str>, &[&str])> = vec![
        (
            vec!["diff", "--upper", &mi, "--lower", &l],
            &["does not exist"],
        ),
        (
            vec!["diff", "--upper", &f, "--lower", &l],
            &["not a directory"],
        ),
        (
            vec!["diff", "--upper", &u, "--lower", &mi],
            &["does not exist"],
        ),
        (vec!["diff", &pl], &["not a mount point"]),
        (
            vec!["export", "--upper", &mi],
            &["does not exist", "missing"],
        ),
        (vec!["export", "--upper", &f], &["not a directory"]),
        (
            vec!["export", "--upper", &u, "-o", &in_missing],
            &["missing", "no such"],
        ),
        (
            vec!["unpack", &mi, &ex],
            &["missing", "no such", "does not exist"],
        ),
        (vec!["unpack", &ga, &ex], &["layer", "tar", "entry"]),
        (vec!["unpack", &ga, &f], &["not a directory", "a-file"]),
        (
            vec!["commit", "--upper", &mi, &new_dir],
            &["missing", "does not exist"],
        ),
        (
            vec!["commit", "--upper", &u, "--lower", &l, &ex],
            &["exists"],
        ),
        (vec!["check", "--upper", &mi], &["does not exist"]),
        (vec!["check", "--upper", &f], &["not a directory"]),
        (
            vec!["check", "--upper", &u, "--lower", &mi],
            &["does not exist"],
        ),
        (
            vec!["check", "--upper", &u, "--work", &f],
            &["not a directory"],
        ),
        (vec!["stats", &pl], &["not a mount point"]),
        (vec!["stats", &mi], &["does not exist", "not a mount point"]),
        (vec!["reset", &pl], &["not a mount point"]),
        (vec!["checkpoint", &pl, "c1"], &["not a mount point"]),
        (vec!["restore", &pl, "c1"], &["not a mount point"]),
        (vec!["umount", &pl], &["not a mount point"]),
        (
            vec!["run", "--lower", &mi, "--", "true"],
            &["does not exist"],
        ),
    ];
    // Outside the tree whose manifest is compared: it cannot be read.
    let s2 = Scratch::new();
    let locked = s2.mkdir("locked");
    let lk = p(&locked);
    if !is_root() {
        // Root reads through any mode; an ordinary user does not.
        fs::set_permissions(&locked, std::os::unix::fs::PermissionsExt::from_mode(0o000))
            .expect("chmod");
        cases.push((
            vec!["diff", "--upper", &lk, "--lower", &l],
            &["permission", "accessible"],
        ));
        cases.push((vec!["check", "--upper", &lk], &["permission", "accessible"]));
    }
    let before = tree::manifest(s.dir.path(), &tree::Opts::layer());
    for (args, needles) in &cases {
        let argv: Vec<OsString> = args.iter().map(OsString::from).collect();
        let refs: Vec<&std::ffi::OsStr> = argv.iter().map(|a| a.as_os_str()).collect();
        let out = run(&refs);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert_eq!(err.trim().lines().count(), 1, "{args:?}: {err:?}");
        let low = err.to_lowercase();
        assert!(
            needles.iter().any(|n| low.contains(&n.to_lowercase())),
            "{args:?}: {err:?} names none of {needles:?}"
        );
        assert!(
            tree::manifest(s.dir.path(), &tree::Opts::layer()) == before,
            "{args:?} changed something on disk"
        );
    }
    if !is_root() {
        fs::set_permissions(&locked, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .expect("chmod back");
    }
}

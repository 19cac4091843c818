//! What a unionfuse mount shows: the merged, read-side view of the layers,
//! with kernel overlayfs semantics. Every test builds its own layers in its
//! own scratch directory, mounts them for real and looks through std::fs and
//! libc, asserting values derived from the layers it built.
#![allow(unsafe_code)]

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::ffi::CString;
use std::fs;
use std::io::{Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use common::*;

const ENOENT: i32 = libc::ENOENT;

fn cstr(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).expect("nul in path")
}

fn read(p: &Path) -> String {
    fs::read_to_string(p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()))
}

fn lstat(p: &Path) -> fs::Metadata {
    fs::symlink_metadata(p).unwrap_or_else(|e| panic!("lstat {}: {e}", p.display()))
}

/// Asserts that lstat of `p` fails with `want`.
fn assert_lstat_err(p: &Path, want: i32) {
    let got = errno_of(fs::symlink_metadata(p), &format!("lstat {}", p.display()));
    assert_eq!(
        got,
        want,
        "lstat {}: errno {got}, expected {want}",
        p.display()
    );
}

fn strs(v: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = v.iter().map(|s| s.to_string()).collect();
    v.sort();
    v
}

// ---------------------------------------------------------------------------
// 1. Layering
// ---------------------------------------------------------------------------

#[test]
fn layering_three_lowers_and_upper() {
    let s = Scratch::new();
    let (u, w, l1, l2, l3) = (
        s.mkdir("upper"),
        s.mkdir("work"),
        s.mkdir("l1"),
        s.mkdir("l2"),
        s.mkdir("l3"),
    );
    let mnt = s.mkdir("mnt");
    // a: l3 and l2 -> l2 wins.
    write(&l3, "a", "l3a");
    write(&l2, "a", "l2a");
    // b: l3, l1, upper -> upper wins.
    write(&l3, "b", "l3b");
    write(&l1, "b", "l1b");
    write(&u, "b", "upb-longer");
    // d: merged from all four.
    write(&l3, "d/x", "l3x");
    write(&l3, "d/y", "l3y");
    write(&l2, "d/x", "l2x");
    write(&l2, "d/z", "l2z");
    write(&l1, "d/w", "l1w");
    write(&u, "d/v", "upv");
    // shadow: dir in l3, file in l2 -> the file hides the dir entirely.
    write(&l3, "shadow/child", "hidden");
    write(&l2, "shadow", "l2shadow");
    // dirover: file in l3, dir in l1 -> dir, only l1's children.
    write(&l3, "dirover", "l3file");
    write(&l1, "dirover/k", "l1k");
    // up_hides: dir in l1, file in upper.
    write(&l1, "up_hides/q", "l1q");
    write(&u, "up_hides", "upfile");
    // nested merge two levels deep.
    write(&l3, "n/m/p", "l3p");
    write(&l1, "n/m/r", "l1r");
    write(&l2, "n/only2", "l2o");
    write(&l3, "onlyl3", "3");
    write(&l2, "onlyl2", "2");
    write(&l1, "onlyl1", "1");
    write(&u, "onlyup", "u");

    let m = mount_with_work(&[&l1, &l2, &l3], Some((&u, &w)), &mnt);
    assert_eq!(
        ls(&m.mnt),
        strs(&[
            "a", "b", "d", "dirover", "n", "onlyl1", "onlyl2", "onlyl3", "onlyup", "shadow",
            "up_hides"
        ])
    );
    assert_eq!(read(&m.path("a")), "l2a");
    assert_eq!(read(&m.path("b")), "upb-longer");
    assert_eq!(lstat(&m.path("b")).len(), 10, "size of b comes from upper");
    assert_eq!(ls(&m.path("d")), strs(&["v", "w", "x", "y", "z"]));
    assert_eq!(read(&m.path("d/x")), "l2x");
    assert_eq!(read(&m.path("d/y")), "l3y");
    assert_eq!(read(&m.path("d/z")), "l2z");
    assert_eq!(read(&m.path("d/w")), "l1w");
    assert_eq!(read(&m.path("d/v")), "upv");
    assert!(lstat(&m.path("shadow")).file_type().is_file());
    assert_eq!(read(&m.path("shadow")), "l2shadow");
    assert_lstat_err(&m.path("shadow/child"), libc::ENOTDIR);
    assert!(lstat(&m.path("dirover")).is_dir());
    assert_eq!(ls(&m.path("dirover")), strs(&["k"]));
    assert!(lstat(&m.path("up_hides")).file_type().is_file());
    assert_eq!(read(&m.path("up_hides")), "upfile");
    assert_lstat_err(&m.path("up_hides/q"), libc::ENOTDIR);
    assert_eq!(ls(&m.path("n")), strs(&["m", "only2"]));
    assert_eq!(ls(&m.path("n/m")), strs(&["p", "r"]));
    assert_eq!(read(&m.path("n/m/p")), "l3p");
    assert_eq!(read(&m.path("onlyl3")), "3");
    assert_eq!(read(&m.path("onlyup")), "u");
    // d_type follows the top-most layer too.
    let types: BTreeMap<String, u8> = readdir_raw(&m.mnt)
        .into_iter()
        .map(|e| (e.name, e.d_type))
        .collect();
    assert_eq!(types["shadow"], libc::DT_REG, "shadow d_type");
    assert_eq!(types["dirover"], libc::DT_DIR, "dirover d_type");
    assert_eq!(types["up_hides"], libc::DT_REG, "up_hides d_type");
    assert_eq!(types["d"], libc::DT_DIR);
}

#[test]
fn lower_option_takes_a_colon_list_with_escapes() {
    let s = Scratch::new();
    let la = s.mkdir("la");
    let lb = s.mkdir("l:b");
    let mnt = s.mkdir("mnt");
    write(&la, "f", "from-a");
    write(&lb, "f", "from-b");
    write(&lb, "g", "only-b");
    let list = format!(
        "{}:{}",
        la.display(),
        lb.display().to_string().replace(':', "\\:")
    );
    let m = Mounted::new(&[Path::new(&list)], None, &mnt, &[]);
    assert_eq!(ls(&m.mnt), strs(&["f", "g"]));
    assert_eq!(
        read(&m.path("f")),
        "from-a",
        "first in the list is top-most"
    );
    assert_eq!(read(&m.path("g")), "only-b");
}

// ---------------------------------------------------------------------------
// 2. Whiteouts
// ---------------------------------------------------------------------------

#[test]
fn whiteouts_every_format_in_upper_and_middle_layers() {
    let s = Scratch::new();
    let (u, w, l1, l2, l3) = (
        s.mkdir("upper"),
        s.mkdir("work"),
        s.mkdir("l1"),
        s.mkdir("l2"),
        s.mkdir("l3"),
    );
    let mnt = s.mkdir("mnt");
    for f in ["f1", "f2", "f3", "f4", "keep", "above_wh"] {
        write(&l3, f, &format!("l3{f}"));
    }
    write(&l3, "dw/c1", "x");
    write(&l3, "dw2/c2", "x");
    // Middle layer whiteouts, both formats, for files and directories.
    whiteout_chr(&l2, "f1");
    whiteout_oci(&l2, "f2");
    whiteout_chr(&l2, "dw");
    whiteout_oci(&l2, "dw2");
    whiteout_chr(&l2, "above_wh");
    // Above a whiteout: visible again.
    write(&l1, "f1", "l1f1");
    write(&l1, "above_wh", "l1above");
    write(&l1, "g", "l1g");
    write(&l1, "g2", "l1g2");
    // Upper whiteouts, both formats.
    whiteout_chr(&u, "f3");
    whiteout_oci(&u, "f4");
    whiteout_oci(&u, "g");
    whiteout_chr(&u, "g2");
    // Whiteouts of names that exist nowhere below.
    whiteout_chr(&l3, "ghost");
    whiteout_oci(&u, "ghost2");
    // Inside a merged subdirectory.
    write(&l3, "sub/s1", "1");
    write(&l3, "sub/s2", "2");
    write(&l3, "sub/s4", "4");
    mkdir(&l2, "sub");
    whiteout_oci(&l2, "sub/s1");
    mkdir(&u, "sub");
    whiteout_chr(&u, "sub/s2");
    write(&u, "sub/s3", "3");

    let m = mount_with_work(&[&l1, &l2, &l3], Some((&u, &w)), &mnt);
    assert_eq!(ls(&m.mnt), strs(&["above_wh", "f1", "keep", "sub"]));
    assert_eq!(read(&m.path("f1")), "l1f1");
    assert_eq!(read(&m.path("above_wh")), "l1above");
    assert_eq!(read(&m.path("keep")), "l3keep");
    for gone in ["f2", "f3", "f4", "g", "g2", "dw", "dw2", "ghost", "ghost2"] {
        assert_lstat_err(&m.path(gone), ENOENT);
    }
    assert_lstat_err(&m.path("dw/c1"), ENOENT);
    assert_lstat_err(&m.path("dw2/c2"), ENOENT);
    assert_eq!(ls(&m.path("sub")), strs(&["s3", "s4"]));
    assert_lstat_err(&m.path("sub/s1"), ENOENT);
    assert_lstat_err(&m.path("sub/s2"), ENOENT);
    // The markers themselves can never be looked up.
    for marker in [
        ".wh.f2",
        ".wh.f4",
        ".wh.g",
        ".wh.ghost2",
        ".wh.dw2",
        ".wh.nothing",
        ".wh.",
        ".wh..wh..opq",
        "sub/.wh.s1",
    ] {
        assert_lstat_err(&m.path(marker), ENOENT);
    }
    // And raw readdir (with . and ..) never shows them either.
    for dir in ["", "sub"] {
        let names: Vec<String> = readdir_raw(&m.path(dir))
            .into_iter()
            .map(|e| e.name)
            .collect();
        assert!(
            names.iter().all(|n| !n.starts_with(".wh.")),
            "{dir}: {names:?}"
        );
    }
}

#[test]
fn wh_prefixed_names_answer_enoent_even_if_a_layer_has_them() {
    // In the top-most read-only layer a `.wh.x` file is a whiteout marker,
    // never a file of its own, and `.wh.<anything>` is not a valid name.
    let s = Scratch::new();
    let (l1, l2) = (s.mkdir("l1"), s.mkdir("l2"));
    let mnt = s.mkdir("mnt");
    write(&l1, ".wh.x", "");
    write(&l1, ".wh.notwhiteout", "data");
    write(&l2, "x", "l2x");
    write(&l2, "y", "l2y");
    fs::create_dir(l1.join("d")).unwrap();
    write(&l1, "d/.wh..wh..opq", "");
    write(&l1, "d/a", "a");
    write(&l2, "d/b", "b");
    let m = Mounted::new(&[&l1, &l2], None, &mnt, &[]);
    assert_eq!(ls(&m.mnt), strs(&["d", "y"]));
    assert_lstat_err(&m.path(".wh.x"), ENOENT);
    assert_lstat_err(&m.path(".wh.notwhiteout"), ENOENT);
    assert_lstat_err(&m.path(".wh.y"), ENOENT);
    assert_lstat_err(&m.path("x"), ENOENT);
    assert_eq!(ls(&m.path("d")), strs(&["a"]));
    assert_lstat_err(&m.path("d/.wh..wh..opq"), ENOENT);
    assert_lstat_err(&m.path("d/b"), ENOENT);
}

// ---------------------------------------------------------------------------
// 3. Opaque directories
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, Copy)]
enum Opaque {
    TrustedXattr,
    UserOverlayXattr,
    FuseOverlayfsXattr,
    WhOpqFile,
}

const OPAQUE_XATTRS: [&str; 3] = [
    "trusted.overlay.opaque",
    "user.overlay.opaque",
    "user.fuseoverlayfs.opaque",
];

fn make_opaque(root: &Path, rel: &str, how: Opaque) {
    match how {
        Opaque::TrustedXattr => setxattr(root, rel, "trusted.overlay.opaque", b"y"),
        Opaque::UserOverlayXattr => setxattr(root, rel, "user.overlay.opaque", b"y"),
        Opaque::FuseOverlayfsXattr => setxattr(root, rel, "user.fuseoverlayfs.opaque", b"y"),
        Opaque::WhOpqFile => write(root, &format!("{rel}/.wh..wh..opq"), ""),
    }
}

fn assert_no_opaque_xattr_visible(p: &Path) {
    let names = listxattr(p);
    for n in &names {
        assert!(
            !n.starts_with("trusted.overlay.")
                && !n.starts_with("user.overlay.")
                && !n.starts_with("user.fuseoverlayfs."),
            "{}: private xattr {n} listed ({names:?})",
            p.display()
        );
    }
    for x in OPAQUE_XATTRS {
        let e = errno_of(getxattr(p, x), &format!("getxattr {x} {}", p.display()));
        assert_eq!(e, libc::ENODATA, "getxattr {x} on {}", p.display());
    }
}

#[test]
fn opaque_dirs_every_format_over_four_layers() {
    for how in [
        Opaque::TrustedXattr,
        Opaque::UserOverlayXattr,
        Opaque::FuseOverlayfsXattr,
        Opaque::WhOpqFile,
    ] {
        if matches!(how, Opaque::TrustedXattr)
            && skip_as_non_root("opaque directories marked with trusted.overlay.opaque")
        {
            continue;
        }
        // Read-only: 4 lowers, opaque in the 2nd.
        let s = Scratch::new();
        let (l1, l2, l3, l4) = (s.mkdir("l1"), s.mkdir("l2"), s.mkdir("l3"), s.mkdir("l4"));
        let mnt = s.mkdir("mnt");
        write(&l1, "d/a", "l1a");
        write(&l1, "d/sub/y", "l1y");
        write(&l2, "d/b", "l2b");
        make_opaque(&l2, "d", how);
        write(&l3, "d/b", "l3b");
        write(&l3, "d/c", "l3c");
        write(&l3, "d/sub/x", "l3x");
        write(&l4, "d/e", "l4e");
        write(&l4, "d/sub/z", "l4z");
        write(&l4, "top", "l4top");
        // A non-opaque sibling keeps merging.
        write(&l1, "plain/p1", "1");
        write(&l4, "plain/p4", "4");
        {
            let m = Mounted::new(&[&l1, &l2, &l3, &l4], None, &mnt, &[]);
            let ctx = format!("{how:?}");
            assert_eq!(ls(&m.mnt), strs(&["d", "plain", "top"]), "{ctx}");
            assert_eq!(ls(&m.path("d")), strs(&["a", "b", "sub"]), "{ctx}");
            assert_eq!(read(&m.path("d/b")), "l2b", "{ctx}");
            assert_eq!(read(&m.path("d/a")), "l1a", "{ctx}");
            assert_lstat_err(&m.path("d/c"), ENOENT);
            assert_lstat_err(&m.path("d/e"), ENOENT);
            assert_lstat_err(&m.path("d/.wh..wh..opq"), ENOENT);
            assert_eq!(ls(&m.path("d/sub")), strs(&["y"]), "{ctx}");
            assert_lstat_err(&m.path("d/sub/x"), ENOENT);
            assert_lstat_err(&m.path("d/sub/z"), ENOENT);
            assert_eq!(ls(&m.path("plain")), strs(&["p1", "p4"]), "{ctx}");
            assert_no_opaque_xattr_visible(&m.path("d"));
        }

        // With an upper: opaque in the upper itself, and in the top lower.
        let s = Scratch::new();
        let (u, w, l1, l2, l3) = (
            s.mkdir("upper"),
            s.mkdir("work"),
            s.mkdir("l1"),
            s.mkdir("l2"),
            s.mkdir("l3"),
        );
        let mnt = s.mkdir("mnt");
        write(&u, "o/uo", "uo");
        make_opaque(&u, "o", how);
        write(&l1, "o/l1o", "x");
        write(&l3, "o/l3o", "x");
        write(&u, "q/uq", "uq");
        write(&l1, "q/l1q", "l1q");
        make_opaque(&l1, "q", how);
        write(&l2, "q/l2q", "x");
        write(&l3, "q/l3q", "x");
        {
            let m = mount_with_work(&[&l1, &l2, &l3], Some((&u, &w)), &mnt);
            let ctx = format!("{how:?} with upper");
            assert_eq!(ls(&m.path("o")), strs(&["uo"]), "{ctx}");
            assert_lstat_err(&m.path("o/l1o"), ENOENT);
            assert_lstat_err(&m.path("o/l3o"), ENOENT);
            assert_eq!(ls(&m.path("q")), strs(&["l1q", "uq"]), "{ctx}");
            assert_lstat_err(&m.path("q/l2q"), ENOENT);
            assert_lstat_err(&m.path("q/l3q"), ENOENT);
            assert_no_opaque_xattr_visible(&m.path("o"));
            assert_no_opaque_xattr_visible(&m.path("q"));
        }
    }
}

// ---------------------------------------------------------------------------
// 4. Peer-bug regressions
// ---------------------------------------------------------------------------

#[test]
fn recreated_dir_above_whiteout_never_resurrects_lower_children() {
    for (fmt, upper_recreates) in [("chr", false), ("oci", false), ("chr", true), ("oci", true)] {
        let s = Scratch::new();
        let (u, w, l1, l2, l3) = (
            s.mkdir("upper"),
            s.mkdir("work"),
            s.mkdir("l1"),
            s.mkdir("l2"),
            s.mkdir("l3"),
        );
        let mnt = s.mkdir("mnt");
        write(&l3, "d/old1", "old1");
        write(&l3, "d/old2", "old2");
        write(&l3, "d/olddir/x", "x");
        write(&l3, "sibling", "s");
        write(&l3, "other/f", "f");
        if fmt == "chr" {
            whiteout_chr(&l2, "d");
        } else {
            whiteout_oci(&l2, "d");
        }
        // Re-created as a plain (non-opaque) directory above the whiteout.
        let top = if upper_recreates { &u } else { &l1 };
        write(top, "d/new", "new");
        if upper_recreates {
            write(&l1, "d2", "l1");
        }
        let m = mount_with_work(&[&l1, &l2, &l3], Some((&u, &w)), &mnt);
        let ctx = format!("whiteout {fmt}, recreated in upper: {upper_recreates}");
        // Exact-name lookups first, on a fresh mount (nothing cached yet).
        assert_lstat_err(&m.path("d/old1"), ENOENT);
        assert_lstat_err(&m.path("d/olddir"), ENOENT);
        assert_lstat_err(&m.path("d/olddir/x"), ENOENT);
        assert_eq!(ls(&m.path("d")), strs(&["new"]), "{ctx}");
        for round in 0..5 {
            if round >= 3 {
                // Make the kernel forget d and its parent's children, so the
                // daemon has to resolve d afresh.
                drop_caches();
            }
            // Unrelated lookups and stats in the parent, then re-list.
            lstat(&m.path("sibling"));
            lstat(&m.path("other"));
            lstat(&m.path("other/f"));
            let _ = fs::symlink_metadata(m.path("nonexistent"));
            lstat(&m.mnt);
            lstat(&m.path("d"));
            assert!(ls(&m.mnt).contains(&"d".to_string()), "{ctx}");
            assert_eq!(ls(&m.path("d")), strs(&["new"]), "{ctx} round {round}");
            assert_lstat_err(&m.path("d/old1"), ENOENT);
            assert_lstat_err(&m.path("d/old2"), ENOENT);
            assert_eq!(read(&m.path("d/new")), "new");
        }
    }
}

#[test]
fn hidden_children_are_not_reachable_by_exact_name() {
    let s = Scratch::new();
    let (u, w, l1, l2) = (
        s.mkdir("upper"),
        s.mkdir("work"),
        s.mkdir("l1"),
        s.mkdir("l2"),
    );
    let mnt = s.mkdir("mnt");
    // Whited-out directory.
    write(&l2, "wd/lowerchild", "x");
    whiteout_chr(&l1, "wd");
    // Opaque directory (each format).
    write(&l2, "op1/lowerchild", "x");
    write(&l1, "op1/mine", "m");
    setxattr(&l1, "op1", opaque_xattr(), b"y");
    write(&l2, "op2/lowerchild", "x");
    mkdir(&l1, "op2");
    setxattr(&l1, "op2", "user.overlay.opaque", b"y");
    write(&l2, "op3/lowerchild", "x");
    mkdir(&l1, "op3");
    setxattr(&l1, "op3", "user.fuseoverlayfs.opaque", b"y");
    write(&l2, "op4/lowerchild", "x");
    write(&l1, "op4/.wh..wh..opq", "");
    // Opaque in the upper.
    write(&l2, "op5/lowerchild", "x");
    write(&l1, "op5/l1child", "x");
    mkdir(&u, "op5");
    setxattr(&u, "op5", opaque_xattr(), b"y");
    // Whited-out single child of a merged dir.
    write(&l2, "md/gone", "x");
    write(&l2, "md/stay", "x");
    mkdir(&l1, "md");
    whiteout_oci(&l1, "md/gone");
    // A file over a dir: children below answer ENOTDIR.
    write(&l2, "fd/lowerchild", "x");
    write(&l1, "fd", "file");

    let m = mount_with_work(&[&l1, &l2], Some((&u, &w)), &mnt);
    // Fresh mount, no readdir before: exact names only.
    assert_lstat_err(&m.path("wd/lowerchild"), ENOENT);
    for d in ["op1", "op2", "op3", "op4", "op5"] {
        assert_lstat_err(&m.path(&format!("{d}/lowerchild")), ENOENT);
        assert!(
            fs::File::open(m.path(&format!("{d}/lowerchild"))).is_err(),
            "{d}/lowerchild opened"
        );
    }
    assert_lstat_err(&m.path("op5/l1child"), ENOENT);
    assert_lstat_err(&m.path("md/gone"), ENOENT);
    assert_lstat_err(&m.path("fd/lowerchild"), libc::ENOTDIR);
    assert_eq!(read(&m.path("op1/mine")), "m");
    assert_eq!(ls(&m.path("md")), strs(&["stay"]));
    // And again after listing.
    for d in ["op1", "op2", "op3", "op4", "op5"] {
        ls(&m.path(d));
        assert_lstat_err(&m.path(&format!("{d}/lowerchild")), ENOENT);
    }
}

// ---------------------------------------------------------------------------
// 5. readdir
// ---------------------------------------------------------------------------

#[test]
fn readdir_reports_d_type_for_every_type_and_dots() {
    let s = Scratch::new();
    let (l1, l2) = (s.mkdir("l1"), s.mkdir("l2"));
    let mnt = s.mkdir("mnt");
    let devices = !skip_as_non_root("device nodes in the layers (mknod needs root)");
    for root in [&l1, &l2] {
        let tag = if root == &l1 { "1" } else { "2" };
        let d = "d/";
        write(root, &format!("{d}reg{tag}"), "r");
        mkdir(root, &format!("{d}dir{tag}"));
        link(root, &format!("{d}sym{tag}"), "reg1");
        mkfifo(root, &format!("{d}fifo{tag}"), 0o644);
        let sock = root.join(format!("{d}sock{tag}"));
        drop(std::os::unix::net::UnixListener::bind(&sock).expect("bind"));
        if devices {
            mknod(root, &format!("{d}chr{tag}"), libc::S_IFCHR | 0o644, 1, 3);
            mknod(root, &format!("{d}blk{tag}"), libc::S_IFBLK | 0o644, 7, 0);
        }
    }
    let m = Mounted::new(&[&l1, &l2], None, &mnt, &[]);
    let want: BTreeMap<String, u8> = ["1", "2"]
        .iter()
        .flat_map(|t| {
            [
                (format!("reg{t}"), libc::DT_REG),
                (format!("dir{t}"), libc::DT_DIR),
                (format!("sym{t}"), libc::DT_LNK),
                (format!("fifo{t}"), libc::DT_FIFO),
                (format!("sock{t}"), libc::DT_SOCK),
                (format!("chr{t}"), libc::DT_CHR),
                (format!("blk{t}"), libc::DT_BLK),
            ]
        })
        .filter(|(_, t)| devices || ![libc::DT_CHR, libc::DT_BLK].contains(t))
        .collect();
    let raw = readdir_raw(&m.path("d"));
    let mut seen: BTreeMap<String, u8> = BTreeMap::new();
    for e in &raw {
        assert!(
            seen.insert(e.name.clone(), e.d_type).is_none(),
            "duplicate {}",
            e.name
        );
    }
    assert_eq!(seen.remove("."), Some(libc::DT_DIR), "`.` in {raw:?}");
    assert_eq!(seen.remove(".."), Some(libc::DT_DIR), "`..` in {raw:?}");
    assert_eq!(seen, want);
    // std's read_dir uses d_type too.
    for e in fs::read_dir(m.path("d")).unwrap() {
        let e = e.unwrap();
        let name = e.file_name().to_string_lossy().into_owned();
        let ft = e.file_type().unwrap();
        let dt = want[&name];
        let ok = match dt {
            libc::DT_REG => ft.is_file(),
            libc::DT_DIR => ft.is_dir(),
            libc::DT_LNK => ft.is_symlink(),
            libc::DT_FIFO => ft.is_fifo(),
            libc::DT_SOCK => ft.is_socket(),
            libc::DT_CHR => ft.is_char_device(),
            libc::DT_BLK => ft.is_block_device(),
            _ => false,
        };
        assert!(ok, "{name}: file_type {ft:?}, expected d_type {dt}");
    }
    // The root has . and .. too.
    let root: Vec<String> = readdir_raw(&m.mnt).into_iter().map(|e| e.name).collect();
    let root: BTreeSet<String> = root.into_iter().collect();
    assert_eq!(
        root,
        [".", "..", "d"].iter().map(|s| s.to_string()).collect()
    );
}

/// Two layers of 50k entries each in `big/`, 10k overlapping, and 1k upper
/// whiteouts (half of each format) of lower-only names. Returns the expected
/// merged names. The layers live on a tmpfs of their own: creating and
/// removing 100k files there is several times faster than on disk. Without
/// root (no mount) they live in the scratch directory.
fn build_big(s: &Scratch) -> (Option<Tmpfs>, PathBuf, PathBuf, PathBuf, BTreeSet<String>) {
    let t = is_root().then(|| Tmpfs::new(&s.path("layers"), "256m"));
    let base = t
        .as_ref()
        .map_or_else(|| s.mkdir("layers"), |t| t.path.clone());
    let (u, w, l) = (base.join("upper"), base.join("work"), base.join("lower"));
    for d in [&u, &w, &l] {
        fs::create_dir_all(d).expect("mkdir");
    }
    mkdir(&u, "big");
    mkdir(&l, "big");
    let name = |i: usize| format!("f{i:05}");
    for i in 0..50_000 {
        fs::File::create(l.join("big").join(name(i))).expect("create");
    }
    for i in 40_000..90_000 {
        fs::File::create(u.join("big").join(name(i))).expect("create");
    }
    for i in 0..1000 {
        if i % 2 == 0 {
            whiteout_chr(&u, &format!("big/{}", name(i)));
        } else {
            whiteout_oci(&u, &format!("big/{}", name(i)));
        }
    }
    let expected: BTreeSet<String> = (1000..90_000).map(name).collect();
    (t, u, w, l, expected)
}

#[test]
fn readdir_100k_entries_getdents64_small_buffer() {
    let s = Scratch::new();
    let (_tmpfs, u, w, l, expected) = build_big(&s);
    let mnt = s.mkdir("mnt");
    let m = mount_with_work(&[&l], Some((&u, &w)), &mnt);
    let dir = cstr(&m.path("big"));
    // SAFETY: dir is a valid NUL-terminated path.
    let fd = unsafe { libc::open(dir.as_ptr(), libc::O_RDONLY | libc::O_DIRECTORY) };
    assert!(fd >= 0, "open big: {}", std::io::Error::last_os_error());
    let mut buf = vec![0u8; 512];
    let mut seen: HashSet<String> = HashSet::with_capacity(100_000);
    let mut dups = Vec::new();
    let mut dots = 0;
    loop {
        // SAFETY: fd is an open directory and buf is writable for its length.
        let n = unsafe {
            libc::syscall(
                libc::SYS_getdents64,
                fd,
                buf.as_mut_ptr(),
                buf.len() as libc::c_uint,
            )
        };
        assert!(n >= 0, "getdents64: {}", std::io::Error::last_os_error());
        if n == 0 {
            break;
        }
        let n = n as usize;
        let mut off = 0;
        while off < n {
            let reclen = u16::from_ne_bytes([buf[off + 16], buf[off + 17]]) as usize;
            let name_bytes = &buf[off + 19..off + reclen];
            let end = name_bytes.iter().position(|b| *b == 0).expect("nul");
            let name = String::from_utf8_lossy(&name_bytes[..end]).into_owned();
            off += reclen;
            if name == "." || name == ".." {
                dots += 1;
                continue;
            }
            if !seen.insert(name.clone()) {
                dups.push(name);
            }
        }
    }
    // SAFETY: fd is open and closed once.
    unsafe { libc::close(fd) };
    assert!(
        dups.is_empty(),
        "{} duplicates, e.g. {:?}",
        dups.len(),
        &dups[..dups.len().min(10)]
    );
    assert_eq!(dots, 2, ". and .. once each");
    let seen: BTreeSet<String> = seen.into_iter().collect();
    let missing: Vec<_> = expected.difference(&seen).take(10).collect();
    let extra: Vec<_> = seen.difference(&expected).take(10).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "{} entries, expected {}; missing e.g. {missing:?}; extra e.g. {extra:?}",
        seen.len(),
        expected.len()
    );
}

/// A directory read while it changes: no entry that stays is skipped or
/// returned twice, whatever the changes between getdents calls (each one
/// makes the kernel drop its cached listing and read on from the daemon at
/// the offset it got).
#[test]
fn readdir_while_the_directory_changes_skips_and_repeats_nothing() {
    let s = Scratch::new();
    let (u, w, l1, l2) = (
        s.mkdir("upper"),
        s.mkdir("work"),
        s.mkdir("l1"),
        s.mkdir("l2"),
    );
    let mnt = s.mkdir("mnt");
    let mut all: BTreeSet<String> = BTreeSet::new();
    for i in 0..1500 {
        let (a, b) = (format!("a{i:04}"), format!("b{i:04}"));
        write(&l1, &format!("d/{a}"), "1");
        write(&l2, &format!("d/{b}"), "2");
        all.insert(a);
        all.insert(b);
    }
    write(&u, "d/u0", "u");
    all.insert("u0".into());
    let m = mount_with_work(&[&l1, &l2], Some((&u, &w)), &mnt);
    let dir = m.path("d");
    let c = cstr(&dir);
    // SAFETY: c is a valid NUL-terminated path.
    let d = unsafe { libc::opendir(c.as_ptr()) };
    assert!(!d.is_null(), "opendir: {}", std::io::Error::last_os_error());
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut removed: BTreeSet<String> = BTreeSet::new();
    let mut created = 0;
    loop {
        // SAFETY: d is a valid DIR* until closedir below.
        let e = unsafe { libc::readdir(d) };
        if e.is_null() {
            break;
        }
        // SAFETY: e is a valid dirent with a NUL-terminated name.
        let name = unsafe { std::ffi::CStr::from_ptr((*e).d_name.as_ptr()) }
            .to_string_lossy()
            .into_owned();
        *seen.entry(name.clone()).or_default() += 1;
        if seen.len().is_multiple_of(50) {
            // Remove one entry already read and one not read yet, and add
            // one: lower names leave whiteouts, the new ones go up.
            if name != "." && name != ".." && removed.insert(name.clone()) {
                fs::remove_file(dir.join(&name)).unwrap();
            }
            if let Some(ahead) = all
                .iter()
                .rev()
                .find(|n| !seen.contains_key(*n) && !removed.contains(*n))
                .cloned()
            {
                fs::remove_file(dir.join(&ahead)).unwrap();
                removed.insert(ahead);
            }
            fs::write(dir.join(format!("new{created}")), "n").unwrap();
            created += 1;
        }
    }
    // SAFETY: d came from opendir and is closed once.
    unsafe { libc::closedir(d) };
    let twice: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "returned more than once: {twice:?}");
    let missed: Vec<_> = all
        .iter()
        .filter(|n| !removed.contains(*n) && !seen.contains_key(*n))
        .collect();
    assert!(
        missed.is_empty(),
        "entries that stayed but were skipped: {missed:?}"
    );
    assert!(created > 20, "the directory changed {created} times");
    // A new pass shows exactly what is there now.
    let now: BTreeSet<String> = ls(&dir).into_iter().collect();
    let mut want: BTreeSet<String> = all.clone();
    want.extend((0..created).map(|i| format!("new{i}")));
    // A new file the pass returned may have been removed again.
    want.retain(|n| !removed.contains(n));
    assert_eq!(now, want);
}

#[test]
fn readdir_100k_entries_telldir_seekdir() {
    let s = Scratch::new();
    let (_tmpfs, u, w, l, expected) = build_big(&s);
    let mnt = s.mkdir("mnt");
    let m = mount_with_work(&[&l], Some((&u, &w)), &mnt);
    let dir = cstr(&m.path("big"));
    // SAFETY: dir is a valid NUL-terminated path.
    let d = unsafe { libc::opendir(dir.as_ptr()) };
    assert!(!d.is_null(), "opendir: {}", std::io::Error::last_os_error());
    let next = |d: *mut libc::DIR| -> Option<String> {
        // SAFETY: d is a valid DIR* for the whole test.
        let e = unsafe { libc::readdir(d) };
        if e.is_null() {
            return None;
        }
        // SAFETY: e is a valid dirent with a NUL-terminated name.
        let name = unsafe { std::ffi::CStr::from_ptr((*e).d_name.as_ptr()) };
        Some(name.to_string_lossy().into_owned())
    };
    let marks_at = [0usize, 1, 2, 777, 30_001, 60_000, 89_000];
    let mut marks: Vec<(usize, libc::c_long)> = Vec::new();
    let mut all: Vec<String> = Vec::new();
    loop {
        if marks_at.contains(&all.len()) {
            // SAFETY: d is a valid DIR*.
            marks.push((all.len(), unsafe { libc::telldir(d) }));
        }
        match next(d) {
            Some(n) => all.push(n),
            None => break,
        }
    }
    // Each entry exactly once, and exactly the expected set.
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for n in &all {
        *counts.entry(n.as_str()).or_default() += 1;
    }
    let dups: Vec<_> = counts.iter().filter(|(_, c)| **c > 1).take(10).collect();
    assert!(dups.is_empty(), "duplicates: {dups:?}");
    let got: BTreeSet<String> = all
        .iter()
        .filter(|n| *n != "." && *n != "..")
        .cloned()
        .collect();
    assert_eq!(got.len(), expected.len(), "entry count");
    assert!(got == expected, "entry set differs from the layers");
    assert!(counts.contains_key(".") && counts.contains_key(".."));
    // Seeking back to each mark reproduces the same tail.
    for (idx, pos) in marks.iter().rev() {
        // SAFETY: d is a valid DIR* and pos came from telldir on it.
        unsafe { libc::seekdir(d, *pos) };
        let mut tail = Vec::new();
        while let Some(n) = next(d) {
            tail.push(n);
        }
        assert_eq!(
            tail.len(),
            all.len() - idx,
            "seekdir to mark at entry {idx}: tail length"
        );
        assert!(
            tail[..] == all[*idx..],
            "seekdir to mark at entry {idx}: tail differs (first: {:?} vs {:?})",
            tail.first(),
            all.get(*idx)
        );
    }
    // SAFETY: d came from opendir and is closed once.
    unsafe { libc::closedir(d) };
}

// ---------------------------------------------------------------------------
// 6. getattr: inode numbers, nlink, statfs
// ---------------------------------------------------------------------------

/// lstat of every object under `root` (not the root), by relative path.
fn walk(root: &Path) -> BTreeMap<String, fs::Metadata> {
    fn go(root: &Path, rel: &str, out: &mut BTreeMap<String, fs::Metadata>) {
        let dir = if rel.is_empty() {
            root.to_path_buf()
        } else {
            root.join(rel)
        };
        for name in ls(&dir) {
            let r = if rel.is_empty() {
                name.clone()
            } else {
                format!("{rel}/{name}")
            };
            let md = lstat(&root.join(&r));
            let is_dir = md.is_dir();
            out.insert(r.clone(), md);
            if is_dir {
                go(root, &r, out);
            }
        }
    }
    let mut out = BTreeMap::new();
    go(root, "", &mut out);
    out
}

fn drop_caches() {
    // Evicts dentries and inodes, so the kernel sends FORGETs to the daemon.
    let _ = fs::write("/proc/sys/vm/drop_caches", "2");
}

#[test]
fn inode_numbers_unique_and_stable_across_layers_on_distinct_filesystems() {
    if skip_as_non_root("layers on distinct tmpfs mounts (mounting needs root)") {
        return;
    }
    let s = Scratch::new();
    // Fresh tmpfs instances number their inodes alike: the same st_ino in
    // every layer, which the mount must still keep apart.
    let t1 = Tmpfs::new(&s.path("l1"), "16m");
    let t2 = Tmpfs::new(&s.path("l2"), "16m");
    let tu = Tmpfs::new(&s.path("ufs"), "16m");
    let (l1, l2) = (t1.path.clone(), t2.path.clone());
    let u = tu.path.join("upper");
    let wu = tu.path.join("work");
    fs::create_dir_all(&u).unwrap();
    fs::create_dir_all(&wu).unwrap();
    let mnt = s.mkdir("mnt");
    for (root, tag) in [(&l2, "2"), (&l1, "1"), (&u, "u")] {
        for i in 0..8 {
            write(root, &format!("f{tag}{i}"), tag);
        }
        write(root, &format!("d/x{tag}"), tag);
        write(root, &format!("d{tag}/y"), tag);
        link(root, &format!("s{tag}"), "d");
        mkdir(root, &format!("e{tag}/sub"));
    }
    // Same name in every layer: only the top one is visible.
    write(&l2, "same", "2");
    write(&l1, "same", "1");
    // A hard-link pair in a lower.
    write(&l1, "hl/a", "linked");
    fs::hard_link(l1.join("hl/a"), l1.join("hl_b")).unwrap();
    let snapshot = |m: &Mounted| -> BTreeMap<String, (u64, u64)> {
        walk(&m.mnt)
            .into_iter()
            .map(|(k, v)| (k, (v.ino(), v.nlink())))
            .collect()
    };
    let check_unique = |map: &BTreeMap<String, (u64, u64)>| {
        let mut by_ino: BTreeMap<u64, Vec<&str>> = BTreeMap::new();
        for (p, (ino, _)) in map {
            by_ino.entry(*ino).or_default().push(p);
        }
        for (ino, paths) in &by_ino {
            if paths.len() > 1 {
                let mut p = paths.clone();
                p.sort();
                assert_eq!(p, vec!["hl/a", "hl_b"], "st_ino {ino} shared by {paths:?}");
            }
        }
        assert_eq!(map["hl/a"].0, map["hl_b"].0, "hard links share st_ino");
    };
    let first = {
        let m = mount_with_work(&[&l1, &l2], Some((&u, &wu)), &mnt);
        let a = snapshot(&m);
        assert_eq!(a.len(), 3 * 14 + 5, "{:?}", a.keys());
        check_unique(&a);
        let b = snapshot(&m);
        assert_eq!(a, b, "st_ino stable across stat calls");
        drop_caches();
        let c = snapshot(&m);
        assert_eq!(a, c, "st_ino stable after the kernel forgot the inodes");
        a
    };
    assert!(!is_mountpoint(&mnt));
    let m = mount_with_work(&[&l1, &l2], Some((&u, &wu)), &mnt);
    let again = snapshot(&m);
    assert_eq!(first, again, "st_ino stable across unmount + remount");
    drop(m);
    drop(tu);
    drop(t2);
    drop(t1);
}

#[test]
fn inode_numbers_unique_on_one_filesystem_and_d_ino_matches_st_ino() {
    let s = Scratch::new();
    let (u, w, l1, l2) = (
        s.mkdir("upper"),
        s.mkdir("work"),
        s.mkdir("l1"),
        s.mkdir("l2"),
    );
    let mnt = s.mkdir("mnt");
    for (root, tag) in [(&l2, "2"), (&l1, "1"), (&u, "u")] {
        write(root, &format!("f{tag}"), tag);
        write(root, &format!("d/x{tag}"), tag);
        write(root, &format!("d/sub/y{tag}"), tag);
        write(root, "d/same", tag);
        link(root, &format!("d/s{tag}"), "same");
        mkfifo(root, &format!("d/p{tag}"), 0o600);
    }
    let m = mount_with_work(&[&l1, &l2], Some((&u, &w)), &mnt);
    let all = walk(&m.mnt);
    let mut inos: HashMap<u64, &str> = HashMap::new();
    for (p, md) in &all {
        if let Some(other) = inos.insert(md.ino(), p) {
            panic!("st_ino {} shared by {p} and {other}", md.ino());
        }
    }
    for dir in ["", "d", "d/sub"] {
        for e in readdir_raw(&m.path(dir)) {
            if e.name == "." || e.name == ".." {
                continue;
            }
            let rel = if dir.is_empty() {
                e.name.clone()
            } else {
                format!("{dir}/{}", e.name)
            };
            assert_eq!(
                e.d_ino,
                lstat(&m.path(&rel)).ino(),
                "d_ino of {rel} differs from st_ino"
            );
        }
    }
}

#[test]
fn hard_links_share_ino_and_report_nlink_from_first_stat() {
    for (first, second) in [("h1", "sub/h2"), ("sub/h2", "h1")] {
        let s = Scratch::new();
        let (u, w, l1, l2) = (
            s.mkdir("upper"),
            s.mkdir("work"),
            s.mkdir("l1"),
            s.mkdir("l2"),
        );
        let mnt = s.mkdir("mnt");
        write(&l2, "h1", "shared");
        mkdir(&l2, "sub");
        fs::hard_link(l2.join("h1"), l2.join("sub/h2")).unwrap();
        write(&l2, "single", "x");
        write(&l1, "other", "y");
        let m = mount_with_work(&[&l1, &l2], Some((&u, &w)), &mnt);
        let a = lstat(&m.path(first));
        assert_eq!(a.nlink(), 2, "nlink of {first} at first stat");
        let b = lstat(&m.path(second));
        assert_eq!(b.nlink(), 2, "nlink of {second}");
        assert_eq!(a.ino(), b.ino(), "hard links share st_ino");
        assert_ne!(a.ino(), lstat(&m.path("single")).ino());
        assert_ne!(a.ino(), lstat(&m.path("other")).ino());
        assert_eq!(lstat(&m.path("single")).nlink(), 1);
        assert_eq!(read(&m.path(second)), "shared");
        // readdir agrees.
        let d_ino = readdir_raw(&m.path("sub"))
            .into_iter()
            .find(|e| e.name == "h2")
            .expect("h2 listed")
            .d_ino;
        assert_eq!(d_ino, a.ino());
    }
}

#[test]
fn directory_nlink_is_real_for_one_layer_and_1_when_merged() {
    let s = Scratch::new();
    let (u, w, l1, l2) = (
        s.mkdir("upper"),
        s.mkdir("work"),
        s.mkdir("l1"),
        s.mkdir("l2"),
    );
    let mnt = s.mkdir("mnt");
    mkdir(&l1, "m/s1");
    mkdir(&l1, "m/s2");
    write(&l1, "m/f", "f");
    write(&l1, "m/x", "file over dir");
    mkdir(&l2, "m/s2");
    mkdir(&l2, "m/s3");
    mkdir(&l2, "m/s4");
    mkdir(&l2, "m/x");
    mkdir(&l2, "m/gone_oci");
    mkdir(&u, "m/s5");
    whiteout_chr(&u, "m/s4");
    whiteout_oci(&u, "m/gone_oci");
    mkdir(&l2, "leaf");
    write(&l2, "leaf/file", "x");
    // Opaque in l1: only l1's subdirectories count.
    mkdir(&l1, "op/mine");
    setxattr(&l1, "op", opaque_xattr(), b"y");
    mkdir(&l2, "op/hidden1");
    mkdir(&l2, "op/hidden2");
    mkdir(&l2, "op/mine");
    let m = mount_with_work(&[&l1, &l2], Some((&u, &w)), &mnt);
    assert_eq!(ls(&m.path("op")), strs(&["mine"]));
    // As kernel overlayfs: a directory that one layer holds keeps its real
    // count; a merged one reports 1 ("unknown" to find and friends).
    assert_eq!(
        lstat(&m.path("op")).nlink(),
        2 + 1,
        "opaque op comes from l1 alone, with one subdir"
    );
    assert_eq!(ls(&m.path("m")), strs(&["f", "s1", "s2", "s3", "s5", "x"]));
    assert_eq!(lstat(&m.path("m")).nlink(), 1, "m is merged");
    assert_eq!(lstat(&m.path("leaf")).nlink(), 2);
    assert_eq!(lstat(&m.path("m/s2")).nlink(), 1, "m/s2 is merged");
    assert_eq!(lstat(&m.path("m/s1")).nlink(), 2, "m/s1 is l1's alone");
    assert_eq!(lstat(&m.mnt).nlink(), 1, "the root is merged");
}

fn statvfs(p: &Path) -> libc::statvfs {
    let c = cstr(p);
    // SAFETY: an all-zero statvfs is a valid value to be overwritten.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: c is a valid path and st is a valid out-pointer.
    let rc = unsafe { libc::statvfs(c.as_ptr(), &mut st) };
    assert_eq!(
        rc,
        0,
        "statvfs {}: {}",
        p.display(),
        std::io::Error::last_os_error()
    );
    st
}

#[test]
fn statfs_reports_upper_or_top_lower_filesystem() {
    if skip_as_non_root("layers on tmpfs mounts of distinct sizes (mounting needs root)") {
        return;
    }
    let s = Scratch::new();
    let t1 = Tmpfs::new(&s.path("l1fs"), "24m");
    let t2 = Tmpfs::new(&s.path("l2fs"), "40m");
    let tu = Tmpfs::new(&s.path("ufs"), "8m");
    let l1 = t1.path.join("l");
    let l2 = t2.path.join("l");
    let u = tu.path.join("upper");
    let w = tu.path.join("work");
    for d in [&l1, &l2, &u, &w] {
        fs::create_dir_all(d).unwrap();
    }
    write(&l1, "a", "a");
    write(&l2, "b", "b");
    let mnt = s.mkdir("mnt");
    {
        let m = mount_with_work(&[&l1, &l2], Some((&u, &w)), &mnt);
        let got = statvfs(&m.mnt);
        let want = statvfs(&u);
        assert_eq!(want.f_blocks * want.f_frsize, 8 << 20, "test setup");
        assert_eq!(got.f_bsize, want.f_bsize, "f_bsize");
        assert_eq!(got.f_blocks, want.f_blocks, "f_blocks of the upper");
        assert_eq!(got.f_files, want.f_files, "f_files of the upper");
        assert_eq!(got.f_namemax, want.f_namemax, "f_namemax");
    }
    {
        let m = Mounted::new(&[&l1, &l2], None, &mnt, &[]);
        let got = statvfs(&m.mnt);
        let want = statvfs(&l1);
        assert_eq!(want.f_blocks * want.f_frsize, 24 << 20, "test setup");
        assert_eq!(got.f_bsize, want.f_bsize, "f_bsize");
        assert_eq!(got.f_blocks, want.f_blocks, "f_blocks of the top lower");
        assert_eq!(got.f_files, want.f_files, "f_files of the top lower");
    }
    drop(tu);
    drop(t2);
    drop(t1);
}

// ---------------------------------------------------------------------------
// 7. Symlinks
// ---------------------------------------------------------------------------

#[test]
fn symlinks_are_shown_not_resolved_by_the_daemon() {
    let s = Scratch::new();
    let (l1, l2) = (s.mkdir("l1"), s.mkdir("l2"));
    let mnt = s.mkdir("deeper/mnt");
    link(&l1, "etc", "/etc");
    link(&l1, "x", "../../..");
    link(&l1, "abs", "/nonexistent");
    link(&l2, "link", "dir");
    write(&l2, "dir/file", "in dir");
    link(&l1, "dir/rel", "file");
    link(&l2, "dangling", "no/such/thing");
    link(&l1, "loop", "loop");
    // The longest target a symlink can have (PATH_MAX - 1 bytes).
    let long_target = format!("{}end", "seg/".repeat(1023));
    assert_eq!(long_target.len(), 4095);
    link(&l2, "long", &long_target);
    let m = Mounted::new(&[&l1, &l2], None, &mnt, &[]);
    assert_eq!(
        fs::read_link(m.path("long")).unwrap().as_os_str().len(),
        4095,
        "long symlink target truncated"
    );
    assert_eq!(
        fs::read_link(m.path("long")).unwrap(),
        PathBuf::from(&long_target)
    );
    assert_eq!(lstat(&m.path("long")).len(), 4095);
    for (name, target) in [
        ("etc", "/etc"),
        ("x", "../../.."),
        ("abs", "/nonexistent"),
        ("link", "dir"),
        ("dir/rel", "file"),
        ("dangling", "no/such/thing"),
        ("loop", "loop"),
    ] {
        let md = lstat(&m.path(name));
        assert!(md.file_type().is_symlink(), "{name} is a symlink");
        assert_eq!(md.len(), target.len() as u64, "{name} lstat size");
        assert_eq!(
            fs::read_link(m.path(name)).unwrap(),
            PathBuf::from(target),
            "{name}"
        );
    }
    // The kernel resolves links within and beyond the mount as it would
    // anywhere else.
    assert_eq!(read(&m.path("link/file")), "in dir");
    assert_eq!(read(&m.path("dir/rel")), "in dir");
    assert!(fs::metadata(m.path("etc")).unwrap().is_dir());
    assert_eq!(errno_of(fs::metadata(m.path("abs")), "stat abs"), ENOENT);
    assert_eq!(
        errno_of(fs::metadata(m.path("loop")), "stat loop"),
        libc::ELOOP
    );
    let names = ls(&m.path("link"));
    assert_eq!(names, strs(&["file", "rel"]));
    assert_eq!(
        ls(&m.mnt),
        strs(&["abs", "dangling", "dir", "etc", "link", "long", "loop", "x"])
    );
}

#[test]
fn hostile_symlinks_pointing_out_of_the_layers() {
    let s = Scratch::new();
    let (u, w, l1, l2) = (
        s.mkdir("upper"),
        s.mkdir("work"),
        s.mkdir("l1"),
        s.mkdir("l2"),
    );
    // The mountpoint sits deeper than the layers, so a relative target that
    // leads to the canary from inside a layer leads nowhere from the mount.
    let mnt = s.mkdir("a/b/mnt");
    let canary = s.path("canary");
    fs::write(&canary, "canary-original").unwrap();
    fs::create_dir(s.path("outside")).unwrap();
    fs::write(s.path("outside/secret"), "secret").unwrap();
    let canary_md = lstat(&canary);
    let abs = canary.to_str().unwrap().to_string();
    link(&l1, "abs", &abs);
    link(&l1, "rel", "../canary");
    link(&l1, "deep", "../../../../../../../../../canary");
    // A symlink in a higher layer over a real dir below must not be merged
    // with what it points at.
    link(&l1, "d", "../outside");
    write(&l2, "d/inlower", "x");
    link(&l2, "sub/up", "../../outside");
    for (mounted_upper, label) in [(false, "read-only"), (true, "with upper")] {
        let m = if mounted_upper {
            mount_with_work(&[&l1, &l2], Some((&u, &w)), &mnt)
        } else {
            Mounted::new(&[&l1, &l2], None, &mnt, &[])
        };
        for (name, target) in [
            ("abs", abs.as_str()),
            ("rel", "../canary"),
            ("deep", "../../../../../../../../../canary"),
            ("d", "../outside"),
            ("sub/up", "../../outside"),
        ] {
            let md = lstat(&m.path(name));
            assert!(md.file_type().is_symlink(), "{label}: {name}");
            assert_eq!(
                fs::read_link(m.path(name)).unwrap(),
                PathBuf::from(target),
                "{label}: {name}"
            );
        }
        // Resolved from the mount, relative targets land beside mnt, not on
        // the canary.
        assert_eq!(errno_of(fs::metadata(m.path("rel")), "stat rel"), ENOENT);
        assert_eq!(errno_of(fs::metadata(m.path("d")), "stat d"), ENOENT);
        assert_lstat_err(&m.path("d/inlower"), ENOENT);
        assert_lstat_err(&m.path("d/secret"), ENOENT);
        assert_eq!(read(&m.path("abs")), "canary-original");
        // O_NOFOLLOW open of the link itself fails with ELOOP.
        let e = errno_of(
            fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NOFOLLOW)
                .open(m.path("abs")),
            "open abs O_NOFOLLOW",
        );
        assert_eq!(e, libc::ELOOP, "{label}");
        assert_eq!(ls(&m.mnt), strs(&["abs", "d", "deep", "rel", "sub"]));
    }
    let after = lstat(&canary);
    assert_eq!(fs::read_to_string(&canary).unwrap(), "canary-original");
    assert_eq!(after.mode(), canary_md.mode());
    assert_eq!(after.mtime(), canary_md.mtime());
    assert_eq!(after.mtime_nsec(), canary_md.mtime_nsec());
    assert_eq!(after.uid(), canary_md.uid());
    assert_eq!(ls(&s.path("outside")), strs(&["secret"]));
}

// ---------------------------------------------------------------------------
// 8. Special files
// ---------------------------------------------------------------------------

#[test]
fn special_files_from_a_lower() {
    let s = Scratch::new();
    let (l1, l2) = (s.mkdir("l1"), s.mkdir("l2"));
    let mnt = s.mkdir("mnt");
    mkfifo(&l2, "fifo", 0o640);
    let sock = l2.join("sock");
    drop(std::os::unix::net::UnixListener::bind(&sock).expect("bind"));
    fs::set_permissions(&sock, fs::Permissions::from_mode(0o751)).unwrap();
    let devices = !skip_as_non_root("device nodes in a lower (mknod needs root)");
    if devices {
        mknod(&l2, "null", libc::S_IFCHR | 0o620, 1, 3);
        mknod(&l1, "loop0", libc::S_IFBLK | 0o604, 7, 0);
        mknod(&l1, "big", libc::S_IFCHR | 0o600, 259, 70_000);
    }
    let m = Mounted::new(&[&l1, &l2], None, &mnt, &[]);
    let fifo = lstat(&m.path("fifo"));
    assert!(fifo.file_type().is_fifo());
    assert_eq!(fifo.mode(), libc::S_IFIFO | 0o640);
    let so = lstat(&m.path("sock"));
    assert!(so.file_type().is_socket());
    assert_eq!(so.mode(), libc::S_IFSOCK | 0o751);
    if !devices {
        return;
    }
    let null = lstat(&m.path("null"));
    assert!(null.file_type().is_char_device());
    assert_eq!(null.mode(), libc::S_IFCHR | 0o620);
    assert_eq!(null.rdev(), libc::makedev(1, 3));
    let lp = lstat(&m.path("loop0"));
    assert!(lp.file_type().is_block_device());
    assert_eq!(lp.mode(), libc::S_IFBLK | 0o604);
    assert_eq!(lp.rdev(), libc::makedev(7, 0));
    let big = lstat(&m.path("big"));
    assert_eq!(big.rdev(), libc::makedev(259, 70_000));
    assert_eq!(big.rdev(), lstat(&l1.join("big")).rdev());
}

// ---------------------------------------------------------------------------
// 9. xattrs
// ---------------------------------------------------------------------------

#[test]
fn user_xattrs_visible_overlay_private_ones_hidden() {
    let s = Scratch::new();
    let (u, w, l1, l2) = (
        s.mkdir("upper"),
        s.mkdir("work"),
        s.mkdir("l1"),
        s.mkdir("l2"),
    );
    let mnt = s.mkdir("mnt");
    let trusted = !skip_as_non_root("trusted.* xattrs in the layers (setting them needs root)");
    write(&l2, "f", "data");
    setxattr(&l2, "f", "user.foo", b"bar");
    // Not overlay-private: the kernel shows other trusted.* names to root.
    if trusted {
        setxattr(&l2, "f", "trusted.other", b"t");
    }
    setxattr(&l2, "f", "user.empty", b"");
    setxattr(&l2, "f", "user.bin", &[0, 1, 2, 255]);
    let private: Vec<&str> = [
        "trusted.overlay.origin",
        "trusted.overlay.foo",
        "user.overlay.foo",
        "user.overlay.origin",
        "user.fuseoverlayfs.foo",
    ]
    .into_iter()
    .filter(|x| trusted || !x.starts_with("trusted."))
    .collect();
    for x in &private {
        setxattr(&l2, "f", x, b"secret");
    }
    mkdir(&l1, "d");
    setxattr(&l1, "d", "user.dirattr", b"dv");
    if trusted {
        setxattr(&l1, "d", "trusted.overlay.redirect", b"/x");
    }
    write(&u, "g", "upper");
    setxattr(&u, "g", "user.up", b"1");
    setxattr(&u, "g", "user.overlay.impure", b"y");
    // An attribute on the lower copy of a name the upper shadows is not seen.
    write(&l1, "g", "lower");
    setxattr(&l1, "g", "user.lowonly", b"1");
    let m = mount_with_work(&[&l1, &l2], Some((&u, &w)), &mnt);
    let visible: &[&str] = if trusted {
        &["trusted.other", "user.bin", "user.empty", "user.foo"]
    } else {
        &["user.bin", "user.empty", "user.foo"]
    };
    assert_eq!(listxattr(&m.path("f")), strs(visible));
    if trusted {
        assert_eq!(getxattr(&m.path("f"), "trusted.other").unwrap(), b"t");
    }
    assert_eq!(getxattr(&m.path("f"), "user.foo").unwrap(), b"bar");
    assert_eq!(getxattr(&m.path("f"), "user.empty").unwrap(), b"");
    assert_eq!(
        getxattr(&m.path("f"), "user.bin").unwrap(),
        vec![0, 1, 2, 255]
    );
    assert_eq!(
        errno_of(getxattr(&m.path("f"), "user.missing"), "user.missing"),
        libc::ENODATA
    );
    for x in private {
        assert_eq!(
            errno_of(getxattr(&m.path("f"), x), x),
            libc::ENODATA,
            "getxattr {x}"
        );
    }
    assert_eq!(listxattr(&m.path("d")), strs(&["user.dirattr"]));
    assert_eq!(getxattr(&m.path("d"), "user.dirattr").unwrap(), b"dv");
    assert_eq!(
        errno_of(
            getxattr(&m.path("d"), "trusted.overlay.redirect"),
            "redirect"
        ),
        libc::ENODATA
    );
    assert_eq!(listxattr(&m.path("g")), strs(&["user.up"]));
    assert_eq!(
        errno_of(getxattr(&m.path("g"), "user.lowonly"), "lowonly"),
        libc::ENODATA
    );
    // Size query (zero-length buffer) reports the real length.
    let p = cstr(&m.path("f"));
    let n = CString::new("user.foo").unwrap();
    // SAFETY: valid C strings; a null buffer with size 0 asks for the size.
    let len = unsafe { libc::lgetxattr(p.as_ptr(), n.as_ptr(), std::ptr::null_mut(), 0) };
    assert_eq!(len, 3);
    // SAFETY: valid C string; a null buffer with size 0 asks for the size.
    let llen = unsafe { libc::llistxattr(p.as_ptr(), std::ptr::null_mut(), 0) };
    let want = visible.iter().map(|x| x.len() + 1).sum::<usize>() as isize;
    assert_eq!(llen, want, "listxattr size excludes hidden names");
}

// ---------------------------------------------------------------------------
// 10. Names
// ---------------------------------------------------------------------------

#[test]
fn name_of_256_bytes_is_enametoolong_255_works() {
    let s = Scratch::new();
    let l = s.mkdir("l");
    let mnt = s.mkdir("mnt");
    let n255 = "b".repeat(255);
    write(&l, &n255, "max");
    write(&l, &format!("d/{n255}"), "max2");
    let m = Mounted::new(&[&l], None, &mnt, &[]);
    let e = errno_of(fs::metadata(m.path(&"a".repeat(256))), "stat 256");
    assert_eq!(e, libc::ENAMETOOLONG);
    let e = errno_of(
        fs::metadata(m.path(&format!("d/{}", "c".repeat(300)))),
        "stat 300",
    );
    assert_eq!(e, libc::ENAMETOOLONG);
    assert_eq!(read(&m.path(&n255)), "max");
    assert_eq!(read(&m.path(&format!("d/{n255}"))), "max2");
    assert_eq!(ls(&m.mnt), {
        let mut v = vec![n255.clone(), "d".to_string()];
        v.sort();
        v
    });
}

struct Fd(libc::c_int);

impl Drop for Fd {
    fn drop(&mut self) {
        // SAFETY: self.0 is an fd this value owns.
        unsafe { libc::close(self.0) };
    }
}

fn openat(dir: libc::c_int, name: &str, flags: libc::c_int, mode: libc::c_uint) -> Fd {
    let c = CString::new(name).unwrap();
    // SAFETY: dir is an open fd (or AT_FDCWD) and c a valid C string.
    let fd = unsafe { libc::openat(dir, c.as_ptr(), flags | libc::O_CLOEXEC, mode) };
    assert!(
        fd >= 0,
        "openat {}...: {}",
        &name[..name.len().min(20)],
        std::io::Error::last_os_error()
    );
    Fd(fd)
}

#[test]
fn path_close_to_path_max_works() {
    let s = Scratch::new();
    let l = s.mkdir("l");
    // A mountpoint whose path is at least as long as the layer's, so that a
    // path that fits at the mount also fits in the layer.
    let mnt = s.mkdir("mnt-with-a-longer-name");
    let mnt_len = mnt.as_os_str().len();
    assert!(l.as_os_str().len() <= mnt_len);
    // mnt + n * ("/" + 250) + "/" + file <= 4095 bytes (PATH_MAX with NUL).
    let n = (4095 - mnt_len - 2) / 251;
    let file_len = (4095 - mnt_len - n * 251 - 1).min(255);
    let dirs: Vec<String> = (0..n)
        .map(|i| format!("{i:02}{}", "d".repeat(248)))
        .collect();
    let file = "f".repeat(file_len);
    let content = b"at the bottom of a deep tree";
    {
        let root = openat(
            libc::AT_FDCWD,
            l.to_str().unwrap(),
            libc::O_RDONLY | libc::O_DIRECTORY,
            0,
        );
        let mut cur = root;
        for d in &dirs {
            let c = CString::new(d.as_str()).unwrap();
            // SAFETY: cur.0 is an open directory fd; c is a valid C string.
            let rc = unsafe { libc::mkdirat(cur.0, c.as_ptr(), 0o755) };
            assert_eq!(rc, 0, "mkdirat: {}", std::io::Error::last_os_error());
            cur = openat(cur.0, d, libc::O_RDONLY | libc::O_DIRECTORY, 0);
        }
        let f = openat(cur.0, &file, libc::O_WRONLY | libc::O_CREAT, 0o644);
        // SAFETY: f.0 is open for writing and content is a valid buffer.
        let rc = unsafe { libc::write(f.0, content.as_ptr().cast(), content.len()) };
        assert_eq!(rc, content.len() as isize);
    }
    let m = Mounted::new(&[&l], None, &mnt, &[]);
    // Relative walk through the mount.
    {
        let mut cur = openat(
            libc::AT_FDCWD,
            m.mnt.to_str().unwrap(),
            libc::O_RDONLY | libc::O_DIRECTORY,
            0,
        );
        for d in &dirs {
            cur = openat(cur.0, d, libc::O_RDONLY | libc::O_DIRECTORY, 0);
        }
        let f = openat(cur.0, &file, libc::O_RDONLY, 0);
        let mut buf = vec![0u8; 100];
        // SAFETY: f.0 is open for reading and buf is writable.
        let n = unsafe { libc::read(f.0, buf.as_mut_ptr().cast(), buf.len()) };
        assert_eq!(n, content.len() as isize);
        assert_eq!(&buf[..n as usize], content);
    }
    // One path string, just under PATH_MAX.
    let mut full = m.mnt.clone();
    for d in &dirs {
        full.push(d);
    }
    full.push(&file);
    let len = full.as_os_str().len();
    assert!(len <= 4095 && len > 3900, "path length {len}");
    let md = fs::metadata(&full).unwrap_or_else(|e| panic!("stat {len}-byte path: {e}"));
    assert_eq!(md.len(), content.len() as u64);
    let mut got = Vec::new();
    fs::File::open(&full)
        .unwrap()
        .read_to_end(&mut got)
        .unwrap();
    assert_eq!(got, content);
}

// ---------------------------------------------------------------------------
// 11. Read-only mounts
// ---------------------------------------------------------------------------

fn snapshot_tree(root: &Path) -> BTreeMap<String, (u32, u64, i64, i64, Vec<u8>)> {
    walk(root)
        .into_iter()
        .map(|(p, md)| {
            let data = if md.is_file() {
                fs::read(root.join(&p)).unwrap()
            } else if md.file_type().is_symlink() {
                fs::read_link(root.join(&p))
                    .unwrap()
                    .as_os_str()
                    .as_bytes()
                    .to_vec()
            } else {
                Vec::new()
            };
            (p, (md.mode(), md.len(), md.mtime(), md.mtime_nsec(), data))
        })
        .collect()
}

#[test]
fn read_only_mount_refuses_changes_with_erofs() {
    let s = Scratch::new();
    let (l1, l2) = (s.mkdir("l1"), s.mkdir("l2"));
    let mnt = s.mkdir("mnt");
    write(&l1, "f", "l1f");
    write(&l2, "g", "l2g");
    write(&l2, "d/x", "x");
    link(&l2, "sym", "g");
    let before = (snapshot_tree(&l1), snapshot_tree(&l2));
    {
        let m = Mounted::new(&[&l1, &l2], None, &mnt, &[]);
        let erofs = |r: std::io::Result<()>, what: &str| {
            assert_eq!(errno_of(r, what), libc::EROFS, "{what}");
        };
        erofs(fs::File::create(m.path("new")).map(drop), "create");
        erofs(fs::File::create(m.path("d/new")).map(drop), "create in d");
        erofs(fs::create_dir(m.path("newdir")), "mkdir");
        erofs(fs::remove_file(m.path("f")), "unlink upper-most");
        erofs(fs::remove_file(m.path("g")), "unlink");
        erofs(fs::remove_dir(m.path("d")), "rmdir");
        erofs(
            fs::set_permissions(m.path("f"), fs::Permissions::from_mode(0o600)),
            "chmod",
        );
        erofs(fs::rename(m.path("f"), m.path("f2")), "rename");
        erofs(
            std::os::unix::fs::symlink("f", m.path("newlink")),
            "symlink",
        );
        erofs(fs::hard_link(m.path("f"), m.path("hl")), "link");
        erofs(
            fs::OpenOptions::new()
                .write(true)
                .open(m.path("f"))
                .map(drop),
            "open for write",
        );
        erofs(
            fs::OpenOptions::new()
                .append(true)
                .open(m.path("g"))
                .map(drop),
            "open for append",
        );
        let p = cstr(&m.path("f"));
        let n = CString::new("user.x").unwrap();
        // SAFETY: valid C strings and a 1-byte value.
        let rc = unsafe { libc::lsetxattr(p.as_ptr(), n.as_ptr(), b"1".as_ptr().cast(), 1, 0) };
        assert_eq!(rc, -1);
        assert_eq!(
            std::io::Error::last_os_error().raw_os_error(),
            Some(libc::EROFS),
            "setxattr"
        );
        // Reads still work.
        assert_eq!(read(&m.path("f")), "l1f");
        assert_eq!(read(&m.path("sym")), "l2g");
    }
    let after = (snapshot_tree(&l1), snapshot_tree(&l2));
    assert_eq!(before, after, "lowers unchanged");
}

// ---------------------------------------------------------------------------
// 12. SEEK_DATA / SEEK_HOLE
// ---------------------------------------------------------------------------

fn lseek(f: &fs::File, off: i64, whence: libc::c_int) -> Result<i64, i32> {
    use std::os::fd::AsRawFd;
    // SAFETY: f is an open file.
    let r = unsafe { libc::lseek(f.as_raw_fd(), off, whence) };
    if r < 0 {
        Err(std::io::Error::last_os_error().raw_os_error().unwrap())
    } else {
        Ok(r)
    }
}

#[test]
fn seek_data_and_hole_on_a_sparse_lower_file() {
    const MIB: i64 = 1 << 20;
    let s = Scratch::new();
    let l = s.mkdir("l");
    let mnt = s.mkdir("mnt");
    {
        let mut f = fs::File::create(l.join("sparse")).unwrap();
        f.set_len(10 * MIB as u64).unwrap();
        use std::io::Seek;
        f.seek(std::io::SeekFrom::Start(5 * MIB as u64)).unwrap();
        f.write_all(&[0xabu8; 4096]).unwrap();
        f.sync_all().unwrap();
    }
    let m = Mounted::new(&[&l], None, &mnt, &[]);
    let lower = fs::File::open(l.join("sparse")).unwrap();
    let (lmd, mmd) = (lstat(&l.join("sparse")), lstat(&m.path("sparse")));
    assert_eq!(mmd.len(), 10 * MIB as u64);
    assert_eq!(mmd.blocks(), lmd.blocks(), "st_blocks of a sparse file");
    let through = fs::File::open(m.path("sparse")).unwrap();
    let data = lseek(&through, 0, libc::SEEK_DATA).expect("SEEK_DATA");
    assert!(data <= 5 * MIB, "SEEK_DATA from 0 = {data}");
    let hole = lseek(&through, 5 * MIB, libc::SEEK_HOLE).expect("SEEK_HOLE");
    assert!(hole > 5 * MIB && hole <= 10 * MIB, "SEEK_HOLE = {hole}");
    for (off, whence, label) in [
        (0, libc::SEEK_DATA, "SEEK_DATA 0"),
        (5 * MIB, libc::SEEK_HOLE, "SEEK_HOLE 5M"),
        (0, libc::SEEK_HOLE, "SEEK_HOLE 0"),
        (5 * MIB + 100, libc::SEEK_DATA, "SEEK_DATA 5M+100"),
        (6 * MIB, libc::SEEK_DATA, "SEEK_DATA 6M"),
        (11 * MIB, libc::SEEK_HOLE, "SEEK_HOLE past EOF"),
    ] {
        assert_eq!(
            lseek(&through, off, whence),
            lseek(&lower, off, whence),
            "{label}: mount vs lower file"
        );
    }
    // And the data itself.
    let mut buf = vec![0u8; 8192];
    use std::os::unix::fs::FileExt;
    through
        .read_exact_at(&mut buf, (5 * MIB - 4096) as u64)
        .unwrap();
    assert!(buf[..4096].iter().all(|b| *b == 0));
    assert!(buf[4096..].iter().all(|b| *b == 0xab));
}

// ---------------------------------------------------------------------------
// 13. Upper over lowers
// ---------------------------------------------------------------------------

#[test]
fn upper_contents_win_over_two_lowers() {
    let s = Scratch::new();
    let (u, w, l1, l2) = (
        s.mkdir("upper"),
        s.mkdir("work"),
        s.mkdir("l1"),
        s.mkdir("l2"),
    );
    let mnt = s.mkdir("mnt");
    write(&l2, "f", "lower two, the longest of them all");
    write(&l1, "f", "lower one");
    write(&u, "f", "up");
    chmod(&l1, "f", 0o755);
    chmod(&u, "f", 0o600);
    let m = mount_with_work(&[&l1, &l2], Some((&u, &w)), &mnt);
    assert_eq!(read(&m.path("f")), "up");
    let md = lstat(&m.path("f"));
    assert_eq!(md.len(), 2);
    assert_eq!(md.mode() & 0o7777, 0o600);
}

#[test]
fn upper_dir_replaces_a_lower_file_of_the_same_name() {
    let s = Scratch::new();
    let (u, w, l1, l2) = (
        s.mkdir("upper"),
        s.mkdir("work"),
        s.mkdir("l1"),
        s.mkdir("l2"),
    );
    let mnt = s.mkdir("mnt");
    // OCI: whiteout and the new dir side by side in the upper.
    write(&l1, "x", "lower file");
    whiteout_oci(&u, "x");
    write(&u, "x/child", "c");
    // Kernel: an (opaque) upper dir over a lower file.
    write(&l1, "y", "lower file");
    write(&u, "y/child", "c");
    setxattr(&u, "y", opaque_xattr(), b"y");
    // Plain upper dir over a lower file, no marker at all.
    write(&l2, "z", "lower file");
    write(&u, "z/child", "c");
    // OCI whiteout + dir over a lower dir: the lower children are gone.
    write(&l2, "v/old", "old");
    whiteout_oci(&u, "v");
    write(&u, "v/new", "new");
    let m = mount_with_work(&[&l1, &l2], Some((&u, &w)), &mnt);
    for name in ["x", "y", "z"] {
        let md = lstat(&m.path(name));
        assert!(md.is_dir(), "{name} shows as a dir");
        assert_eq!(ls(&m.path(name)), strs(&["child"]), "{name}");
        assert_eq!(read(&m.path(&format!("{name}/child"))), "c");
    }
    assert!(lstat(&m.path("v")).is_dir());
    assert_eq!(ls(&m.path("v")), strs(&["new"]));
    assert_lstat_err(&m.path("v/old"), ENOENT);
    assert_eq!(ls(&m.mnt), strs(&["v", "x", "y", "z"]));
}

// ---------------------------------------------------------------------------
// More corners
// ---------------------------------------------------------------------------

#[test]
fn odd_names_non_utf8_spaces_newlines_colons() {
    use std::ffi::{OsStr, OsString};
    let s = Scratch::new();
    let (u, w, l1, l2) = (
        s.mkdir("upper"),
        s.mkdir("work"),
        s.mkdir("l1"),
        s.mkdir("l2"),
    );
    let mnt = s.mkdir("mnt");
    let names: Vec<&[u8]> = vec![
        b"bad\xff\xfe-utf8",
        b"with space",
        b"new\nline",
        b"col:on",
        b"back\\slash",
        b"tab\there",
        b"-dash",
        b"\x01ctl",
        b"..dots",
        b"...",
    ];
    for (i, n) in names.iter().enumerate() {
        let root = if i % 2 == 0 { &l1 } else { &l2 };
        fs::write(root.join(OsStr::from_bytes(n)), n).unwrap();
    }
    // The same odd name in both lowers: merged, top one wins.
    fs::write(l2.join(OsStr::from_bytes(b"dup\xff")), b"l2").unwrap();
    fs::write(l1.join(OsStr::from_bytes(b"dup\xff")), b"l1").unwrap();
    // An odd name hidden by an OCI whiteout in the upper.
    fs::write(l2.join(OsStr::from_bytes(b"gone\xff x")), b"x").unwrap();
    fs::write(u.join(OsStr::from_bytes(b".wh.gone\xff x")), b"").unwrap();
    let m = mount_with_work(&[&l1, &l2], Some((&u, &w)), &mnt);
    let mut want: Vec<OsString> = names
        .iter()
        .map(|n| OsStr::from_bytes(n).to_owned())
        .collect();
    want.push(OsStr::from_bytes(b"dup\xff").to_owned());
    want.sort();
    let mut got: Vec<OsString> = fs::read_dir(&m.mnt)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    got.sort();
    assert_eq!(got, want);
    for n in &names {
        assert_eq!(fs::read(m.mnt.join(OsStr::from_bytes(n))).unwrap(), *n);
    }
    assert_eq!(
        fs::read(m.mnt.join(OsStr::from_bytes(b"dup\xff"))).unwrap(),
        b"l1"
    );
    assert_lstat_err(&m.mnt.join(OsStr::from_bytes(b"gone\xff x")), ENOENT);
}

#[test]
fn many_lowers_with_interleaved_whiteouts_and_opaques() {
    const N: usize = 24;
    let s = Scratch::new();
    let layers: Vec<PathBuf> = (0..N).map(|i| s.mkdir(&format!("l{i:02}"))).collect();
    let mnt = s.mkdir("mnt");
    // Layer i (0 = top-most) holds own{i}, w{i} and d/c{i}; layers 3 and
    // below hold `shared`. Every 4th layer whites out the w of the layer
    // right below it (alternating formats); layer 10 makes d opaque (in the
    // .wh..wh..opq format).
    for (i, l) in layers.iter().enumerate() {
        write(l, &format!("own{i:02}"), &format!("{i}"));
        write(l, &format!("d/c{i:02}"), &format!("{i}"));
        if i >= 3 {
            write(l, "shared", &format!("shared from {i}"));
        }
        write(l, &format!("w{i:02}"), "x");
        if i > 0 && i % 4 == 0 {
            // Whiteout of the name the layer below has.
            if i % 8 == 0 {
                whiteout_chr(l, &format!("w{:02}", i + 1));
            } else {
                whiteout_oci(l, &format!("w{:02}", i + 1));
            }
        }
    }
    make_opaque(&layers[10], "d", Opaque::WhOpqFile);
    let lp: Vec<&Path> = layers.iter().map(|p| p.as_path()).collect();
    let m = Mounted::new(&lp, None, &mnt, &[]);
    let mut want: Vec<String> = vec!["d".into(), "shared".into()];
    for i in 0..N {
        want.push(format!("own{i:02}"));
        let hidden = i >= 2 && (i - 1) % 4 == 0 && i - 1 > 0;
        if !hidden {
            want.push(format!("w{i:02}"));
        }
    }
    want.sort();
    assert_eq!(ls(&m.mnt), want);
    assert_eq!(read(&m.path("shared")), "shared from 3");
    let want_d: Vec<String> = (0..=10).map(|i| format!("c{i:02}")).collect();
    assert_eq!(ls(&m.path("d")), want_d);
    assert_eq!(read(&m.path("own23")), "23");
    assert_lstat_err(&m.path("d/c11"), ENOENT);
    assert_lstat_err(&m.path("w05"), ENOENT);
    assert_lstat_err(&m.path("w09"), ENOENT);
}

#[test]
fn concurrent_directory_handles_are_independent_and_rewind_works() {
    let s = Scratch::new();
    let (u, w, l1, l2) = (
        s.mkdir("upper"),
        s.mkdir("work"),
        s.mkdir("l1"),
        s.mkdir("l2"),
    );
    let mnt = s.mkdir("mnt");
    mkdir(&l1, "d");
    mkdir(&l2, "d");
    mkdir(&u, "d");
    for i in 0..3000 {
        let root = [&l1, &l2, &u][i % 3];
        fs::File::create(root.join(format!("d/entry-with-a-longish-name-{i:05}"))).unwrap();
    }
    // Duplicates across layers.
    for i in 0..500 {
        fs::File::create(l2.join(format!("d/entry-with-a-longish-name-{i:05}"))).unwrap();
    }
    let want: BTreeSet<String> = (0..3000)
        .map(|i| format!("entry-with-a-longish-name-{i:05}"))
        .chain([".".to_string(), "..".to_string()])
        .collect();
    let m = mount_with_work(&[&l1, &l2], Some((&u, &w)), &mnt);
    let c = cstr(&m.path("d"));
    // SAFETY: c is a valid path.
    let (a, b) = unsafe { (libc::opendir(c.as_ptr()), libc::opendir(c.as_ptr())) };
    assert!(!a.is_null() && !b.is_null());
    let next = |d: *mut libc::DIR| -> Option<String> {
        // SAFETY: d is a valid DIR* until closedir.
        let e = unsafe { libc::readdir(d) };
        if e.is_null() {
            return None;
        }
        // SAFETY: e is a valid dirent with a NUL-terminated name.
        let n = unsafe { std::ffi::CStr::from_ptr((*e).d_name.as_ptr()) };
        Some(n.to_string_lossy().into_owned())
    };
    let (mut ga, mut gb) = (Vec::new(), Vec::new());
    let (mut done_a, mut done_b) = (false, false);
    while !(done_a && done_b) {
        // Interleave unevenly: three from a, one from b.
        for _ in 0..3 {
            if !done_a {
                match next(a) {
                    Some(n) => ga.push(n),
                    None => done_a = true,
                }
            }
        }
        if !done_b {
            match next(b) {
                Some(n) => gb.push(n),
                None => done_b = true,
            }
        }
    }
    for (label, g) in [("first handle", &ga), ("second handle", &gb)] {
        let set: BTreeSet<String> = g.iter().cloned().collect();
        assert_eq!(set.len(), g.len(), "{label}: duplicates");
        assert!(
            set == want,
            "{label}: {} entries, want {}",
            set.len(),
            want.len()
        );
    }
    // rewinddir starts over and sees everything again.
    // SAFETY: a is a valid DIR*.
    unsafe { libc::rewinddir(a) };
    let mut again = Vec::new();
    while let Some(n) = next(a) {
        again.push(n);
    }
    assert_eq!(again, ga, "rewinddir re-reads the same listing");
    // SAFETY: a and b came from opendir and are closed once each.
    unsafe {
        libc::closedir(a);
        libc::closedir(b);
    }
}

#[test]
fn executables_and_mmap_from_a_lower_work() {
    let s = Scratch::new();
    let (l1, l2) = (s.mkdir("l1"), s.mkdir("l2"));
    let mnt = s.mkdir("mnt");
    let true_bin = ["/bin/true", "/usr/bin/true"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("a `true` binary");
    fs::copy(true_bin, l2.join("mytrue")).unwrap();
    chmod(&l2, "mytrue", 0o755);
    let data: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 256) as u8).collect();
    fs::write(l1.join("blob"), &data).unwrap();
    let m = Mounted::new(&[&l1, &l2], None, &mnt, &[]);
    let st = std::process::Command::new(m.path("mytrue"))
        .status()
        .expect("exec a binary from the mount");
    assert!(st.success());
    let f = fs::File::open(m.path("blob")).unwrap();
    assert!(
        common::mapped(&f, data.len()) == data,
        "mmap contents differ from the layer"
    );
}

#[test]
fn other_users_get_kernel_permission_checks() {
    if skip_as_non_root("acting as another user (setuid needs root)") {
        return;
    }
    let s = Scratch::new();
    // The scratch dir is 0700; let an unprivileged user reach the mount.
    fs::set_permissions(s.dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let (l1, l2) = (s.mkdir("l1"), s.mkdir("l2"));
    let mnt = s.mkdir("mnt");
    write(&l2, "public", "public data");
    chmod(&l2, "public", 0o644);
    write(&l1, "secret", "secret data");
    chmod(&l1, "secret", 0o600);
    write(&l2, "private/inner", "inner");
    chmod(&l2, "private", 0o700);
    let m = Mounted::new(&[&l1, &l2], None, &mnt, &[]);
    let as_nobody = |cmd: &str| {
        use std::os::unix::process::CommandExt;
        std::process::Command::new("/bin/sh")
            .arg("-c")
            .arg(cmd)
            .uid(65534)
            .gid(65534)
            .output()
            .expect("run as nobody")
    };
    let secret = as_nobody(&format!("cat '{}'", m.path("secret").display()));
    assert!(
        !secret.status.success() && secret.stdout.is_empty(),
        "nobody read a 0600 root file through the mount: {:?}",
        String::from_utf8_lossy(&secret.stdout)
    );
    let inner = as_nobody(&format!("cat '{}'", m.path("private/inner").display()));
    assert!(
        !inner.status.success() && inner.stdout.is_empty(),
        "nobody went through a 0700 root directory"
    );
    let public = as_nobody(&format!("cat '{}'", m.path("public").display()));
    assert!(
        public.status.success(),
        "nobody cannot read a 0644 file through the mount (kernel overlayfs allows it): {}",
        String::from_utf8_lossy(&public.stderr)
    );
    assert_eq!(public.stdout, b"public data");
}

/// A POSIX ACL in the `system.posix_acl_access` xattr format: version 2,
/// then (tag, perm, id) entries in tag order.
fn acl_blob(entries: &[(u16, u16, u32)]) -> Vec<u8> {
    let mut v = 2u32.to_le_bytes().to_vec();
    for (tag, perm, id) in entries {
        v.extend_from_slice(&tag.to_le_bytes());
        v.extend_from_slice(&perm.to_le_bytes());
        v.extend_from_slice(&id.to_le_bytes());
    }
    v
}

/// With `--acl`, ACLs grant and refuse access through the mount as on
/// kernel overlayfs: one on a lower file, and one set through the mount
/// (which copies up).
#[test]
fn posix_acls_are_enforced_as_on_kernel_overlayfs() {
    if skip_as_non_root("acting as another user (setuid needs root)") {
        return;
    }
    const USER_OBJ: u16 = 0x01;
    const USER: u16 = 0x02;
    const GROUP_OBJ: u16 = 0x04;
    const MASK: u16 = 0x10;
    const OTHER: u16 = 0x20;
    const UNDEFINED: u32 = u32::MAX;
    let nobody_reads = acl_blob(&[
        (USER_OBJ, 6, UNDEFINED),
        (USER, 4, 65534),
        (GROUP_OBJ, 0, UNDEFINED),
        (MASK, 4, UNDEFINED),
        (OTHER, 0, UNDEFINED),
    ]);
    let run = |label: &str, union: bool| {
        let s = Scratch::new();
        fs::set_permissions(s.dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
        let (u, w, l) = (s.mkdir("upper"), s.mkdir("work"), s.mkdir("l"));
        let mnt = s.mkdir("mnt");
        write(&l, "granted", "granted data");
        chmod(&l, "granted", 0o600);
        setxattr(&l, "granted", "system.posix_acl_access", &nobody_reads);
        write(&l, "later", "later data");
        chmod(&l, "later", 0o600);
        let (_u, _k) = if union {
            let w = w.to_str().unwrap();
            (
                Some(Mounted::new(&[&l], Some(&u), &mnt, &["--work", w, "--acl"])),
                None,
            )
        } else {
            let k = KernelOverlay::new(&[&l], Some((&u, &w)), &mnt, "")
                .unwrap_or_else(|e| panic!("kernel overlayfs is the oracle here: {e}"));
            (None, Some(k))
        };
        let as_nobody = |path: &Path| {
            use std::os::unix::process::CommandExt;
            std::process::Command::new("/bin/cat")
                .arg(path)
                .uid(65534)
                .gid(65534)
                .output()
                .expect("run as nobody")
        };
        let before_set = as_nobody(&mnt.join("later")).status.success();
        setxattr(&mnt, "later", "system.posix_acl_access", &nobody_reads);
        let granted = as_nobody(&mnt.join("granted"));
        let later = as_nobody(&mnt.join("later"));
        let out = (
            granted.status.success(),
            String::from_utf8_lossy(&granted.stdout).into_owned(),
            before_set,
            later.status.success(),
            fs::symlink_metadata(mnt.join("later")).unwrap().mode() & 0o777,
        );
        eprintln!("{label}: {out:?}");
        out
    };
    let kernel = run("kernel overlayfs", false);
    assert_eq!(
        kernel,
        (true, "granted data".into(), false, true, 0o640),
        "kernel overlayfs itself"
    );
    assert_eq!(run("unionfuse", true), kernel);
}

#[test]
fn parallel_walks_agree_with_the_layers() {
    let s = Scratch::new();
    let (u, w, l1, l2) = (
        s.mkdir("upper"),
        s.mkdir("work"),
        s.mkdir("l1"),
        s.mkdir("l2"),
    );
    let mnt = s.mkdir("mnt");
    // 40 dirs x 30 files across two lowers and the upper, with whiteouts of
    // every 7th lower file and an opaque upper copy of every 10th dir.
    let mut want: BTreeSet<String> = BTreeSet::new();
    for d in 0..40 {
        let dir = format!("d{d:02}");
        let opaque = d % 10 == 0;
        want.insert(dir.clone());
        for f in 0..30 {
            let name = format!("{dir}/f{f:02}");
            let root = [&l1, &l2][f % 2];
            write(root, &name, &name);
            let whited = f % 7 == 0;
            if whited {
                mkdir(&u, &dir);
                if f % 14 == 0 {
                    whiteout_chr(&u, &name);
                } else {
                    whiteout_oci(&u, &name);
                }
            } else if !opaque {
                want.insert(name);
            }
        }
        if opaque {
            write(&u, &format!("{dir}/mine"), "mine");
            setxattr(&u, &dir, opaque_xattr(), b"y");
            want.insert(format!("{dir}/mine"));
        }
    }
    let m = Mounted::new(
        &[&l1, &l2],
        Some(&u),
        &mnt,
        &["--work", w.to_str().unwrap(), "--threads", "4"],
    );
    std::thread::scope(|sc| {
        for t in 0..8 {
            let m = &m;
            let want = &want;
            sc.spawn(move || {
                for round in 0..4 {
                    if t == 0 && round == 2 {
                        drop_caches();
                    }
                    let got: BTreeSet<String> = walk(&m.mnt).into_keys().collect();
                    assert!(
                        &got == want,
                        "thread {t} round {round}: missing {:?}, extra {:?}",
                        want.difference(&got).take(5).collect::<Vec<_>>(),
                        got.difference(want).take(5).collect::<Vec<_>>()
                    );
                    for p in want.iter().filter(|p| p.contains("/f")).step_by(t + 3) {
                        assert_eq!(read(&m.path(p)), *p);
                    }
                }
            });
        }
    });
}

#[test]
fn symlink_in_a_middle_layer_is_never_followed_when_merging() {
    let s = Scratch::new();
    let (u, w, l1, l2, l3) = (
        s.mkdir("upper"),
        s.mkdir("work"),
        s.mkdir("l1"),
        s.mkdir("l2"),
        s.mkdir("l3"),
    );
    let mnt = s.mkdir("deep/er/mnt");
    fs::create_dir(s.path("outside")).unwrap();
    fs::write(s.path("outside/secret"), "secret").unwrap();
    fs::write(s.path("outside/f"), "outside f").unwrap();
    // A dir on top, a symlink to a directory in the middle, a dir below:
    // the symlink ends the merge, and is never entered.
    write(&l1, "a/f", "l1 f");
    link(&l2, "a", "../outside");
    write(&l3, "a/below", "l3");
    write(&l1, "b/f", "l1 f");
    link(&l2, "b", "/etc");
    write(&l3, "b/below", "l3");
    // The same with the upper on top.
    write(&u, "c/f", "upper f");
    link(&l1, "c", "../outside");
    write(&l2, "c/below", "l2");
    for with_upper in [false, true] {
        let m = if with_upper {
            mount_with_work(&[&l1, &l2, &l3], Some((&u, &w)), &mnt)
        } else {
            Mounted::new(&[&l1, &l2, &l3], None, &mnt, &[])
        };
        assert_eq!(ls(&m.path("a")), strs(&["f"]), "upper: {with_upper}");
        assert_eq!(read(&m.path("a/f")), "l1 f");
        assert_lstat_err(&m.path("a/secret"), ENOENT);
        assert_lstat_err(&m.path("a/below"), ENOENT);
        assert_eq!(ls(&m.path("b")), strs(&["f"]), "upper: {with_upper}");
        assert_lstat_err(&m.path("b/passwd"), ENOENT);
        assert_lstat_err(&m.path("b/below"), ENOENT);
        if with_upper {
            assert_eq!(ls(&m.path("c")), strs(&["f"]));
            assert_eq!(read(&m.path("c/f")), "upper f");
            assert_lstat_err(&m.path("c/secret"), ENOENT);
            assert_lstat_err(&m.path("c/below"), ENOENT);
        } else {
            assert!(lstat(&m.path("c")).file_type().is_symlink());
        }
    }
}

/// A lower file deleted through the mount while open: changing its
/// attributes through the open descriptor must not reach the lower layer
/// (kernel overlayfs refuses too; the lower is never changed).
#[test]
fn attribute_changes_of_a_deleted_lower_file_never_reach_the_lower() {
    use std::os::fd::AsRawFd;
    let s = Scratch::new();
    let (u, w, l) = (s.mkdir("upper"), s.mkdir("work"), s.mkdir("lower"));
    let mnt = s.mkdir("mnt");
    write(&l, "f", "data");
    chmod(&l, "f", 0o644);
    let before = fs::metadata(l.join("f")).unwrap();
    let m = mount_with_work(&[&l], Some((&u, &w)), &mnt);
    let f = fs::File::open(m.path("f")).unwrap();
    fs::remove_file(m.path("f")).unwrap();
    // SAFETY: f is an open descriptor for the whole block.
    let (chmod_rc, chown_rc) = unsafe {
        (
            libc::fchmod(f.as_raw_fd(), 0o600),
            libc::fchown(f.as_raw_fd(), 1234, 1234),
        )
    };
    drop(f);
    drop(m);
    let after = fs::metadata(l.join("f")).unwrap();
    assert_eq!(
        (after.mode(), after.uid(), after.gid()),
        (before.mode(), before.uid(), before.gid()),
        "the lower changed (fchmod {chmod_rc}, fchown {chown_rc})"
    );
}

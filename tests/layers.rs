//! OCI layers: `export` of an upper, `unpack` of a layer into a lower,
//! `commit`. Round trip: the exported layer, unpacked on top of the same
//! lowers, mounts to the same merged tree. Export is reproducible, and
//! unpack refuses anything that would leave its directory.
#![allow(unsafe_code)]

mod common;

use std::ffi::OsStr;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use common::*;

#[path = "support/tree.rs"]
mod tree;

fn uf(args: &[&OsStr]) -> std::process::Output {
    let out = run(args);
    assert!(
        out.status.success(),
        "unionfuse {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Lowers, and an upper holding every kind of change, made through a
/// mount. Returns (lowers top-most first, upper).
fn changed(s: &Scratch) -> (Vec<PathBuf>, PathBuf) {
    let l1 = s.mkdir("l1");
    let l2 = s.mkdir("l2");
    write(&l2, "etc/motd", "motd\n");
    write(&l2, "etc/os-release", "debian\n");
    write(&l2, "usr/share/doc/a", "a\n");
    write(&l2, "usr/share/doc/b", "b\n");
    write(&l1, "etc/hostname", "image\n");
    write(&l1, "var/cache/old", "old\n");
    let up = s.mkdir("u");
    let mnt = s.mkdir("mnt-changes");
    let m = Mounted::new(&[&l1, &l2], Some(&up), &mnt, &[]);
    let p = |r: &str| m.path(r);
    fs::write(p("etc/hostname"), "container\n").expect("write");
    fs::remove_file(p("etc/motd")).expect("rm");
    fs::remove_dir_all(p("usr/share/doc")).expect("rm -rf");
    fs::create_dir(p("usr/share/doc")).expect("mkdir over deleted");
    fs::write(p("usr/share/doc/new"), "new\n").expect("write");
    fs::create_dir_all(p("opt/app/bin")).expect("mkdir -p");
    fs::write(p("opt/app/bin/run"), "#!/bin/sh\n").expect("write");
    fs::set_permissions(p("opt/app/bin/run"), fs::Permissions::from_mode(0o4755)).expect("chmod");
    std::os::unix::fs::symlink("bin/run", p("opt/app/start")).expect("symlink");
    fs::hard_link(p("opt/app/bin/run"), p("opt/app/run-link")).expect("link");
    setxattr(&m.mnt, "opt/app/bin/run", "user.note", b"kept");
    mkfifo(&m.mnt, "opt/app/fifo", 0o640);
    if is_root() {
        mknod(&m.mnt, "opt/app/null", libc::S_IFCHR | 0o666, 1, 3);
        lchown(&m.mnt, "opt/app/bin", 1234, 5678);
    }
    fs::write(p("etc/os-release"), "changed\n").expect("write");
    drop(m);
    (vec![l1, l2], up)
}

fn view(lowers: &[&Path], upper: Option<&Path>, mnt: &Path) -> tree::Manifest {
    let m = Mounted::new(lowers, upper, mnt, &[]);
    let t = tree::manifest(&m.mnt, &tree::Opts::view());
    drop(m);
    t
}

#[test]
fn exported_layer_unpacked_on_the_lowers_mounts_to_the_same_tree() {
    let s = Scratch::new();
    let (lowers, up) = changed(&s);
    let refs: Vec<&Path> = lowers.iter().map(PathBuf::as_path).collect();
    let want = view(&refs, Some(&up), &s.mkdir("m0"));
    let layer = s.path("layer.tar");
    uf(&[
        "export".as_ref(),
        "--upper".as_ref(),
        up.as_os_str(),
        "-o".as_ref(),
        layer.as_os_str(),
    ]);
    for fmt in ["oci", "overlay"] {
        let dir = s.mkdir(&format!("unpacked-{fmt}"));
        uf(&[
            "unpack".as_ref(),
            layer.as_os_str(),
            dir.as_os_str(),
            "--whiteout".as_ref(),
            fmt.as_ref(),
        ]);
        let mut stack = vec![dir.as_path()];
        stack.extend(refs.iter().copied());
        let got = view(&stack, None, &s.mkdir(&format!("m-{fmt}")));
        tree::assert_same(
            &format!("round trip ({fmt})"),
            "mounted",
            &want,
            "unpacked",
            &got,
        );
    }
    // commit does both at once.
    let newdir = s.path("committed");
    uf(&[
        "commit".as_ref(),
        "--upper".as_ref(),
        up.as_os_str(),
        "--lower".as_ref(),
        lowers[0].as_os_str(),
        newdir.as_os_str(),
    ]);
    let mut stack = vec![newdir.as_path()];
    stack.extend(refs.iter().copied());
    let got = view(&stack, None, &s.mkdir("m-commit"));
    tree::assert_same("commit", "mounted", &want, "committed", &got);
}

#[test]
fn export_is_reproducible_and_compression_is_transparent() {
    let s = Scratch::new();
    let (_, up) = changed(&s);
    let export = |extra: &[&str]| {
        let mut args: Vec<&OsStr> = vec!["export".as_ref(), "--upper".as_ref(), up.as_os_str()];
        args.extend(extra.iter().map(OsStr::new));
        uf(&args).stdout
    };
    let plain = export(&[]);
    assert_eq!(plain, export(&[]), "two exports of one upper differ");
    assert!(plain.len() > 1024, "suspiciously small layer");
    for comp in ["gzip", "zstd"] {
        let packed = export(&["--compress", comp]);
        assert_eq!(
            packed,
            export(&["--compress", comp]),
            "{comp} export not reproducible"
        );
        assert_ne!(packed, plain);
        // Unpacking the compressed layer gives what the plain one gives.
        let a = s.mkdir(&format!("a-{comp}"));
        let b = s.mkdir(&format!("b-{comp}"));
        let pa = s.path(&format!("{comp}.layer"));
        let pb = s.path("plain.layer");
        fs::write(&pa, &packed).expect("write");
        fs::write(&pb, &plain).expect("write");
        uf(&["unpack".as_ref(), pa.as_os_str(), a.as_os_str()]);
        uf(&["unpack".as_ref(), pb.as_os_str(), b.as_os_str()]);
        let opts = tree::Opts {
            ctime: false,
            ..tree::Opts::layer()
        };
        // The target directories' own times are not the layer's.
        let mut ta = tree::manifest(&a, &opts);
        let mut tb = tree::manifest(&b, &opts);
        ta.remove("");
        tb.remove("");
        tree::assert_same(comp, comp, &ta, "plain", &tb);
    }
    // Deletions and opaque markers are there in the OCI form.
    let mut ar = tar::Archive::new(plain.as_slice());
    let names: Vec<String> = ar
        .entries()
        .expect("entries")
        .map(|e| String::from_utf8_lossy(&e.expect("entry").path_bytes()).into_owned())
        .collect();
    assert!(names.contains(&"etc/.wh.motd".to_string()), "{names:?}");
    let dir = names
        .iter()
        .position(|n| n == "usr/share/doc/")
        .expect("doc dir");
    assert_eq!(
        names[dir + 1],
        "usr/share/doc/.wh..wh..opq",
        "opaque marker not first"
    );
}

/// A tar with one crafted entry.
fn crafted(path: &str, kind: tar::EntryType, link: Option<&str>) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(0o644);
    h.set_size(if kind == tar::EntryType::Regular {
        4
    } else {
        0
    });
    // Written raw: the builder itself refuses such paths.
    let name = path.as_bytes();
    h.as_gnu_mut().expect("gnu").name[..name.len()].copy_from_slice(name);
    if let Some(l) = link {
        h.as_gnu_mut().expect("gnu").linkname[..l.len()].copy_from_slice(l.as_bytes());
    }
    h.set_cksum();
    let data: &[u8] = if kind == tar::EntryType::Regular {
        b"evil"
    } else {
        b""
    };
    b.append(&h, data).expect("append");
    b.into_inner().expect("finish")
}

#[test]
fn unpack_refuses_escapes_and_never_follows_symlinks() {
    let s = Scratch::new();
    let outside = s.mkdir("outside");
    write(&outside, "victim", "safe\n");
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "dot-dot",
            crafted("../outside/victim", tar::EntryType::Regular, None),
        ),
        (
            "absolute",
            crafted("/tmp/unionfuse-absolute", tar::EntryType::Regular, None),
        ),
        (
            "hard link out",
            crafted("x", tar::EntryType::Link, Some("../outside/victim")),
        ),
    ];
    for (what, data) in cases {
        let dir = s.mkdir(&format!("t-{}", what.replace(' ', "-")));
        let layer = s.path(&format!("{}.tar", what.replace(' ', "-")));
        fs::write(&layer, data).expect("write");
        let out = run(&["unpack".as_ref(), layer.as_os_str(), dir.as_os_str()]);
        assert!(!out.status.success(), "{what}: unpack succeeded");
        assert_eq!(
            String::from_utf8_lossy(&out.stderr).trim().lines().count(),
            1,
            "{what}"
        );
        assert!(
            fs::read_dir(&dir).expect("dir").next().is_none(),
            "{what}: something was written"
        );
    }
    assert!(!Path::new("/tmp/unionfuse-absolute").exists());
    // A symlink in the layer, then an entry through it: the link is kept as
    // a link, and the entry through it is refused.
    let dir = s.mkdir("t-symlink");
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Symlink);
    h.set_size(0);
    h.set_mode(0o777);
    b.append_link(&mut h, "escape", outside.to_str().expect("utf-8"))
        .expect("link");
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_size(4);
    h.set_mode(0o644);
    b.append_data(&mut h, "escape/victim", &b"evil"[..])
        .expect("file");
    let layer = s.path("symlink.tar");
    fs::write(&layer, b.into_inner().expect("finish")).expect("write");
    let out = run(&["unpack".as_ref(), layer.as_os_str(), dir.as_os_str()]);
    assert!(
        !out.status.success(),
        "an entry through a symlink was unpacked"
    );
    assert_eq!(
        fs::read_to_string(outside.join("victim")).expect("victim"),
        "safe\n"
    );
    assert_eq!(
        fs::read_link(dir.join("escape")).expect("the symlink itself"),
        outside
    );
    let _ = fs::metadata(dir.join("escape")).map(|m| m.mode());
}

/// Sub-second modification times survive export and unpack (PAX `mtime`
/// records), reproducibly; `--mtime-seconds` writes whole seconds only, as
/// docker does.
#[test]
fn export_keeps_sub_second_mtimes_unless_asked_for_seconds() {
    let s = Scratch::new();
    let up = s.mkdir("upper");
    write(&up, "f", "data");
    write(&up, "d/g", "deeper");
    let set = |rel: &str, sec: i64, nsec: i64| {
        let p = std::ffi::CString::new(up.join(rel).to_str().unwrap()).unwrap();
        let t = [libc::timespec {
            tv_sec: sec,
            tv_nsec: nsec,
        }; 2];
        // SAFETY: p is a valid path and t holds two timespecs.
        let rc = unsafe { libc::utimensat(libc::AT_FDCWD, p.as_ptr(), t.as_ptr(), 0) };
        assert_eq!(rc, 0, "utimensat {rel}");
    };
    set("d/g", 1_600_000_000, 5);
    set("f", 1_600_000_001, 123_456_789);
    set("d", 1_600_000_002, 900_000_000);
    let layer = s.dir.path().join("layer.tar");
    let again = s.dir.path().join("again.tar");
    let whole = s.dir.path().join("whole.tar");
    for (out, extra) in [
        (&layer, None),
        (&again, None),
        (&whole, Some("--mtime-seconds")),
    ] {
        let mut args: Vec<&OsStr> = vec![
            "export".as_ref(),
            "--upper".as_ref(),
            up.as_os_str(),
            "-o".as_ref(),
            out.as_os_str(),
        ];
        args.extend(extra.map(OsStr::new));
        let o = uf(&args);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    assert_eq!(
        fs::read(&layer).unwrap(),
        fs::read(&again).unwrap(),
        "reproducible"
    );
    let unpack = |tar: &Path, dir: &str| {
        let d = s.mkdir(dir);
        let o = uf(&["unpack".as_ref(), tar.as_os_str(), d.as_os_str()]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let t = |rel: &str| {
            let m = fs::symlink_metadata(d.join(rel)).unwrap();
            (m.mtime(), m.mtime_nsec())
        };
        (t("f"), t("d"), t("d/g"))
    };
    assert_eq!(
        unpack(&layer, "exact"),
        (
            (1_600_000_001, 123_456_789),
            (1_600_000_002, 900_000_000),
            (1_600_000_000, 5)
        )
    );
    assert_eq!(
        unpack(&whole, "seconds"),
        ((1_600_000_001, 0), (1_600_000_002, 0), (1_600_000_000, 0))
    );
}

//! Kernel overlayfs as the oracle: the same layers mounted by unionfuse and
//! by `mount -t overlay` must look the same, entry by entry.
//!
//! The kernel only understands its own on-disk format (character-device 0:0
//! whiteouts, `trusted.overlay.opaque`), so for OCI-format layers (`.wh.NAME`,
//! `.wh..wh..opq`) the test builds a kernel-format twin of the same layers
//! and compares unionfuse-on-OCI with kernel-on-twin.
//!
//! Without root (or overlayfs) the oracle cannot run; the tests then fail
//! loudly unless `UNIONFUSE_NO_KERNEL_ORACLE=1` is set.
#![allow(unsafe_code)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::CString;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use common::*;

/// On-disk format of the whiteouts and opaque markers of one layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fmt {
    Kernel,
    Oci,
}

#[derive(Debug, Clone)]
enum Op {
    /// path, contents, mode, owner
    File(String, Vec<u8>, u32, Option<(u32, u32)>),
    Dir(String, u32, Option<(u32, u32)>),
    Sym(String, String, Option<(u32, u32)>),
    /// existing, new name
    Hard(String, String),
    Fifo(String, u32),
    Chr(String, u32, u32, u32),
    Whiteout(String),
    Opaque(String),
    Xattr(String, String, Vec<u8>),
}

#[derive(Debug, Default, Clone)]
struct Layer {
    ops: Vec<Op>,
}

impl Layer {
    fn file(&mut self, p: &str, data: &str, mode: u32) -> &mut Self {
        self.ops
            .push(Op::File(p.into(), data.as_bytes().to_vec(), mode, None));
        self
    }
    fn file_bytes(&mut self, p: &str, data: Vec<u8>, mode: u32) -> &mut Self {
        self.ops.push(Op::File(p.into(), data, mode, None));
        self
    }
    fn file_owned(&mut self, p: &str, data: &str, mode: u32, uid: u32, gid: u32) -> &mut Self {
        self.ops.push(Op::File(
            p.into(),
            data.as_bytes().to_vec(),
            mode,
            Some((uid, gid)),
        ));
        self
    }
    fn dir(&mut self, p: &str, mode: u32) -> &mut Self {
        self.ops.push(Op::Dir(p.into(), mode, None));
        self
    }
    fn dir_owned(&mut self, p: &str, mode: u32, uid: u32, gid: u32) -> &mut Self {
        self.ops.push(Op::Dir(p.into(), mode, Some((uid, gid))));
        self
    }
    fn sym(&mut self, p: &str, target: &str) -> &mut Self {
        self.ops.push(Op::Sym(p.into(), target.into(), None));
        self
    }
    fn sym_owned(&mut self, p: &str, target: &str, uid: u32, gid: u32) -> &mut Self {
        self.ops
            .push(Op::Sym(p.into(), target.into(), Some((uid, gid))));
        self
    }
    fn hard(&mut self, existing: &str, new: &str) -> &mut Self {
        self.ops.push(Op::Hard(existing.into(), new.into()));
        self
    }
    fn fifo(&mut self, p: &str, mode: u32) -> &mut Self {
        self.ops.push(Op::Fifo(p.into(), mode));
        self
    }
    fn chr(&mut self, p: &str, mode: u32, major: u32, minor: u32) -> &mut Self {
        self.ops.push(Op::Chr(p.into(), mode, major, minor));
        self
    }
    fn whiteout(&mut self, p: &str) -> &mut Self {
        self.ops.push(Op::Whiteout(p.into()));
        self
    }
    fn opaque(&mut self, p: &str) -> &mut Self {
        self.ops.push(Op::Opaque(p.into()));
        self
    }
    fn xattr(&mut self, p: &str, name: &str, value: &str) -> &mut Self {
        self.ops
            .push(Op::Xattr(p.into(), name.into(), value.as_bytes().to_vec()));
        self
    }
}

fn cpath(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).expect("nul in path")
}

/// Sets a fixed, per-object atime/mtime so that two builds of the same layer
/// agree.
fn fix_times(p: &Path, seq: i64) {
    let c = cpath(p);
    let ts = [
        libc::timespec {
            tv_sec: 1_500_000_000 + seq,
            tv_nsec: 250_000_000,
        },
        libc::timespec {
            tv_sec: 1_600_000_000 + seq,
            tv_nsec: 123_456_789,
        },
    ];
    // SAFETY: c is a valid path and ts points at two timespecs.
    let rc = unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            c.as_ptr(),
            ts.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    assert_eq!(rc, 0, "utimensat: {}", std::io::Error::last_os_error());
}

fn parent_dirs(root: &Path, rel: &str) {
    if let Some(parent) = root.join(rel).parent() {
        fs::create_dir_all(parent).expect("mkdir parents");
    }
}

/// Gives every directory of a layer a fixed mtime derived from its path, so
/// that two builds of the layer (kernel and OCI format) agree; run last,
/// since adding entries changes a directory's mtime.
fn fix_dir_times(root: &Path, rel: &str) {
    let dir = root.join(rel);
    let seq = rel
        .bytes()
        .fold(7i64, |h, b| (h * 31 + b as i64) % 1_000_000);
    fix_times(&dir, 5_000_000 + seq);
    for e in fs::read_dir(&dir).expect("read_dir layer") {
        let e = e.expect("entry");
        if e.file_type().expect("file_type").is_dir() {
            let name = e.file_name().to_string_lossy().into_owned();
            let r = if rel.is_empty() {
                name
            } else {
                format!("{rel}/{name}")
            };
            fix_dir_times(root, &r);
        }
    }
}

fn apply(root: &Path, layer: &Layer, fmt: Fmt) {
    apply_ops(root, layer, fmt);
    fix_dir_times(root, "");
}

fn apply_ops(root: &Path, layer: &Layer, fmt: Fmt) {
    fs::create_dir_all(root).expect("mkdir layer");
    for (seq, op) in layer.ops.iter().enumerate() {
        let seq = seq as i64;
        match op {
            Op::File(p, data, mode, owner) => {
                parent_dirs(root, p);
                fs::write(root.join(p), data).expect("write");
                if let Some((u, g)) = owner {
                    lchown(root, p, *u, *g);
                }
                fs::set_permissions(root.join(p), fs::Permissions::from_mode(*mode))
                    .expect("chmod");
                fix_times(&root.join(p), seq);
            }
            Op::Dir(p, mode, owner) => {
                fs::create_dir_all(root.join(p)).expect("mkdir");
                if let Some((u, g)) = owner {
                    lchown(root, p, *u, *g);
                }
                fs::set_permissions(root.join(p), fs::Permissions::from_mode(*mode))
                    .expect("chmod");
            }
            Op::Sym(p, target, owner) => {
                parent_dirs(root, p);
                link(root, p, target);
                if let Some((u, g)) = owner {
                    lchown(root, p, *u, *g);
                }
                fix_times(&root.join(p), seq);
            }
            Op::Hard(existing, new) => {
                parent_dirs(root, new);
                fs::hard_link(root.join(existing), root.join(new)).expect("link");
            }
            Op::Fifo(p, mode) => {
                parent_dirs(root, p);
                mkfifo(root, p, *mode);
                fix_times(&root.join(p), seq);
            }
            Op::Chr(p, mode, major, minor) => {
                parent_dirs(root, p);
                mknod(root, p, libc::S_IFCHR | *mode, *major, *minor);
                fix_times(&root.join(p), seq);
            }
            Op::Whiteout(p) => {
                parent_dirs(root, p);
                match fmt {
                    Fmt::Kernel => whiteout_chr(root, p),
                    Fmt::Oci => whiteout_oci(root, p),
                }
            }
            Op::Opaque(p) => {
                fs::create_dir_all(root.join(p)).expect("mkdir opaque");
                match fmt {
                    Fmt::Kernel => setxattr(root, p, "trusted.overlay.opaque", b"y"),
                    Fmt::Oci => write(root, &format!("{p}/.wh..wh..opq"), ""),
                }
            }
            Op::Xattr(p, name, value) => setxattr(root, p, name, value),
        }
    }
}

/// Upper, then three lowers top-down: a tree that exercises every rule.
fn layers() -> [Layer; 4] {
    let mut l3 = Layer::default();
    l3.dir("etc", 0o755)
        .file("etc/passwd", "root:x:0:0:root:/root:/bin/sh\n", 0o644)
        .file_owned("etc/shadow", "root:*:19000::::::\n", 0o640, 0, 42)
        .file("etc/conf.d/a.conf", "a=1\n", 0o644)
        .file("etc/conf.d/b.conf", "b=1\n", 0o600)
        .file("usr/bin/tool", &"#!/bin/sh\necho tool\n".repeat(50), 0o755)
        .hard("usr/bin/tool", "usr/bin/tool-alias")
        .file("usr/bin/suid", "suid", 0o4755)
        .file_bytes(
            "usr/lib/libx.so",
            (0..300_000u32).map(|i| (i % 251) as u8).collect(),
            0o644,
        )
        .sym("usr/lib/libx.so.1", "libx.so")
        .sym("bin", "usr/bin")
        .file("usr/share/doc/readme", "old docs\n", 0o444)
        .file("usr/share/doc/license", "MIT\n", 0o444)
        .fifo("run/fifo", 0o640)
        .chr("dev/null", 0o666, 1, 3)
        .file("var/cache/c1", "c1", 0o644)
        .file("var/cache/c2", "c2", 0o644)
        .file("var/cache/c3", "c3", 0o644)
        .file("var/log/old.log", "old", 0o640)
        .file("opt/app/v1/bin", "v1", 0o755)
        .file("opt/app/data", "data", 0o644)
        .dir_owned("home/user", 0o750, 1000, 1000)
        .file_owned("home/user/.profile", "export A=1\n", 0o644, 1000, 1000)
        .xattr("home/user/.profile", "user.mime", "text/plain")
        .file_owned("home/user/notes", "n", 0o600, 1000, 100)
        .dir("tmp", 0o1777)
        .file("empty", "", 0o644)
        .file("srv/www/index.html", "<html>", 0o644)
        .file("notes", "notes as a file", 0o644)
        .sym_owned("home/user/link", "../../etc/passwd", 1000, 1000);

    let mut l2 = Layer::default();
    l2.whiteout("var/cache/c1")
        .whiteout("opt/app")
        .file("opt/app2/x", "x", 0o644)
        .file("etc/conf.d/c.conf", "c=1\n", 0o644)
        .file(
            "etc/passwd",
            "root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000::/home/user:/bin/sh\n",
            0o644,
        )
        .xattr("etc/passwd", "user.layer", "2")
        .opaque("usr/share")
        .file("usr/share/doc2/readme", "new docs\n", 0o444)
        .file("var/log/new.log", "new", 0o640)
        .file("data/h1", "linked in l2", 0o644)
        .hard("data/h1", "data/h2")
        .xattr("data/h1", "user.linked", "yes")
        .whiteout("etc/conf.d/b.conf")
        // A hard-link pair of which the upper whites out one name: the
        // kernel still reports the real link count.
        .file("data/pair1", "pair", 0o644)
        .hard("data/pair1", "data/pair2")
        // Not "y": not opaque.
        .file("notopaque/mid", "m", 0o644)
        .xattr("notopaque", "trusted.overlay.opaque", "n");

    let mut l1 = Layer::default();
    l1.dir_owned("", 0o751, 12, 34)
        .xattr("", "user.root", "l1")
        .whiteout("etc/conf.d/a.conf")
        // Re-created above the whiteout in l2, as a plain directory: l3's
        // opt/app children must stay hidden.
        .file("opt/app/v2/bin", "v2", 0o755)
        .file("var/cache/c2", "c2 from l1", 0o644)
        .sym("etc/localtime", "/usr/share/zoneinfo/UTC")
        .file("srv", "srv is a file now", 0o600)
        .file("notes/n1", "n1", 0o644)
        .dir("etc/conf.d", 0o700)
        .xattr("etc/conf.d", "user.dir", "l1")
        .file("etc/conf.d/b.conf", "b=2\n", 0o644)
        // Shadows one name of l3's hard-link pair.
        .file("usr/bin/tool-alias", "not a link", 0o755)
        .file("notopaque/top", "t", 0o644);

    let mut up = Layer::default();
    up.dir_owned("", 0o715, 56, 78)
        .file_owned("etc/passwd", "upper passwd\n", 0o640, 0, 0)
        .xattr("etc/passwd", "user.layer", "upper")
        .whiteout("home/user/.profile")
        .file("upper_only/f", "f", 0o644)
        .xattr("upper_only/f", "user.up", "1")
        .opaque("var/cache")
        .file("var/cache/c9", "c9", 0o644)
        .whiteout("bin")
        .whiteout("run")
        .file("usr/share/doc2/readme", "upper docs\n", 0o444)
        .dir("tmp", 0o1777)
        .whiteout("data/pair2");
    l3.file("notopaque/bottom", "b", 0o644);
    [up, l1, l2, l3]
}

/// What one object looks like through a mount.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Obj {
    mode: u32,
    uid: u32,
    gid: u32,
    /// size, nlink, rdev: for non-directories only.
    size: Option<u64>,
    nlink: Option<u64>,
    rdev: Option<u64>,
    mtime: Option<(i64, i64)>,
    data: Option<Vec<u8>>,
    target: Option<String>,
    xattrs: BTreeMap<String, Vec<u8>>,
    /// d_type as readdir reported it.
    d_type: u8,
}

/// Every object under `root`, by relative path, plus the hard-link groups
/// (sets of paths sharing an st_ino, for non-directories).
///
/// `kernel`: the kernel lists the whiteouts of a directory that comes from a
/// single lower layer (it iterates the real directory), yet cannot look them
/// up. Such phantom entries (listed as DT_CHR, lstat ENOENT) are skipped on
/// the kernel side; unionfuse must hide whiteouts everywhere, and any entry
/// it lists must be reachable.
fn scan(root: &Path, kernel: bool) -> (BTreeMap<String, Obj>, BTreeSet<BTreeSet<String>>) {
    let mut objs = BTreeMap::new();
    let mut by_ino: BTreeMap<u64, BTreeSet<String>> = BTreeMap::new();
    // The root itself: attributes of the top-most layer.
    let rmd = fs::symlink_metadata(root).expect("lstat root");
    let mut rx = BTreeMap::new();
    for x in listxattr(root) {
        if x.starts_with("user.") && !x.starts_with("user.overlay.") {
            rx.insert(x.clone(), getxattr(root, &x).expect("getxattr root"));
        }
    }
    objs.insert(
        ".".to_string(),
        Obj {
            mode: rmd.mode(),
            uid: rmd.uid(),
            gid: rmd.gid(),
            size: None,
            nlink: None,
            rdev: None,
            mtime: Some((rmd.mtime(), rmd.mtime_nsec())),
            data: None,
            target: None,
            xattrs: rx,
            d_type: libc::DT_DIR,
        },
    );
    let mut stack = vec![String::new()];
    while let Some(rel) = stack.pop() {
        let dir = if rel.is_empty() {
            root.to_path_buf()
        } else {
            root.join(&rel)
        };
        let mut entries: Vec<(String, u8)> = readdir_raw(&dir)
            .into_iter()
            .filter(|e| e.name != "." && e.name != "..")
            .map(|e| (e.name, e.d_type))
            .collect();
        entries.sort();
        for (name, d_type) in entries {
            let r = if rel.is_empty() {
                name.clone()
            } else {
                format!("{rel}/{name}")
            };
            let p = root.join(&r);
            let md = match fs::symlink_metadata(&p) {
                Ok(md) => md,
                Err(e)
                    if kernel
                        && d_type == libc::DT_CHR
                        && e.raw_os_error() == Some(libc::ENOENT) =>
                {
                    continue;
                }
                Err(e) => panic!("lstat {} (listed by readdir): {e}", p.display()),
            };
            let ft = md.file_type();
            let is_dir = ft.is_dir();
            let mut xattrs = BTreeMap::new();
            for x in listxattr(&p) {
                if x.starts_with("user.")
                    && !x.starts_with("user.overlay.")
                    && !x.starts_with("user.fuseoverlayfs.")
                {
                    let v = getxattr(&p, &x)
                        .unwrap_or_else(|e| panic!("getxattr {x} {}: {e}", p.display()));
                    xattrs.insert(x, v);
                }
            }
            let obj = Obj {
                mode: md.mode(),
                uid: md.uid(),
                gid: md.gid(),
                size: (!is_dir).then_some(md.len()),
                nlink: (!is_dir).then_some(md.nlink()),
                rdev: (!is_dir).then_some(md.rdev()),
                mtime: Some((md.mtime(), md.mtime_nsec())),
                data: ft
                    .is_file()
                    .then(|| fs::read(&p).unwrap_or_else(|e| panic!("read {r}: {e}"))),
                target: ft.is_symlink().then(|| {
                    fs::read_link(&p)
                        .expect("readlink")
                        .to_string_lossy()
                        .into_owned()
                }),
                xattrs,
                d_type,
            };
            if is_dir {
                stack.push(r.clone());
            } else {
                by_ino.entry(md.ino()).or_default().insert(r.clone());
            }
            objs.insert(r, obj);
        }
    }
    let groups = by_ino.into_values().filter(|g| g.len() > 1).collect();
    (objs, groups)
}

fn describe(o: &Obj) -> String {
    let mut d = format!("{o:?}");
    if let Some(data) = &o.data {
        d = d.replace(&format!("{data:?}"), &format!("<{} bytes>", data.len()));
    }
    d
}

/// Compares the unionfuse view with the kernel's, reporting every difference.
fn compare(fuse_root: &Path, kernel_root: &Path, label: &str) {
    compare_min(fuse_root, kernel_root, label, 20);
}

fn compare_min(fuse_root: &Path, kernel_root: &Path, label: &str, min_objects: usize) {
    let (f, fg) = scan(fuse_root, false);
    let (k, kg) = scan(kernel_root, true);
    assert!(
        k.len() >= min_objects,
        "{label}: oracle tree suspiciously small: {k:?}"
    );
    let mut diffs = Vec::new();
    let names_f: BTreeSet<&String> = f.keys().collect();
    let names_k: BTreeSet<&String> = k.keys().collect();
    for extra in names_f.difference(&names_k) {
        diffs.push(format!("only in unionfuse: {extra}"));
    }
    for missing in names_k.difference(&names_f) {
        diffs.push(format!("missing from unionfuse: {missing}"));
    }
    for (name, ko) in &k {
        if let Some(fo) = f.get(name)
            && fo != ko
        {
            diffs.push(format!(
                "{name}:\n    unionfuse {}\n    kernel    {}",
                describe(fo),
                describe(ko)
            ));
        }
    }
    if fg != kg {
        diffs.push(format!(
            "hard-link groups differ: unionfuse {fg:?}, kernel {kg:?}"
        ));
    }
    assert!(
        diffs.is_empty(),
        "{label}: unionfuse differs from kernel overlayfs:\n  {}",
        diffs.join("\n  ")
    );
}

/// Whether the oracle must be skipped; panics loudly when it is unavailable
/// and skipping was not asked for.
fn oracle_unavailable(why: &str) -> bool {
    if std::env::var("UNIONFUSE_NO_KERNEL_ORACLE").as_deref() == Ok("1") {
        if !is_root() {
            eprintln!("skipped as non-root: kernel overlayfs oracle ({why})");
        }
        eprintln!(
            "\n!!!!!!!!!! kernel overlayfs oracle SKIPPED ({why}); \
             UNIONFUSE_NO_KERNEL_ORACLE=1 is set !!!!!!!!!!\n"
        );
        return true;
    }
    panic!(
        "\n!!!!!!!!!! KERNEL OVERLAYFS ORACLE UNAVAILABLE: {why} !!!!!!!!!!\n\
         These tests need root and overlayfs. Set UNIONFUSE_NO_KERNEL_ORACLE=1 \
         to skip them knowingly.\n"
    );
}

fn kernel_mount(lowers: &[&Path], mnt: &Path) -> Option<KernelOverlay> {
    match KernelOverlay::new(lowers, None, mnt, "") {
        Ok(k) => Some(k),
        Err(e) => {
            oracle_unavailable(&e);
            None
        }
    }
}

/// Builds `layers` (upper first) twice: in `fuse_fmts` for unionfuse and in
/// kernel format for the oracle, then compares the read-only view of the
/// three lowers and the view with the upper.
fn run_oracle(fuse_fmts: [Fmt; 4], label: &str) {
    if !is_root() && oracle_unavailable("not running as root") {
        return;
    }
    let s = Scratch::new();
    let spec = layers();
    let names = ["upper", "l1", "l2", "l3"];
    for (i, layer) in spec.iter().enumerate() {
        apply(&s.path(&format!("fuse/{}", names[i])), layer, fuse_fmts[i]);
        apply(&s.path(&format!("kern/{}", names[i])), layer, Fmt::Kernel);
    }
    let fp = |n: &str| s.path(&format!("fuse/{n}"));
    let kp = |n: &str| s.path(&format!("kern/{n}"));
    let (fu, f1, f2, f3) = (fp("upper"), fp("l1"), fp("l2"), fp("l3"));
    let (ku, k1, k2, k3) = (kp("upper"), kp("l1"), kp("l2"), kp("l3"));
    let work = s.mkdir("work");
    let fmnt = s.mkdir("fmnt");
    let kmnt = s.mkdir("kmnt");

    // Read-only: the three lowers.
    {
        let Some(_k) = kernel_mount(&[&k1, &k2, &k3], &kmnt) else {
            return;
        };
        let _f = Mounted::new(&[&f1, &f2, &f3], None, &fmnt, &[]);
        compare(&fmnt, &kmnt, &format!("{label}, read-only"));
    }
    // With the upper. The kernel gets the upper as its top-most lowerdir,
    // which shows the same view without writing anything.
    {
        let Some(_k) = kernel_mount(&[&ku, &k1, &k2, &k3], &kmnt) else {
            return;
        };
        let _f = mount_with_work(&[&f1, &f2, &f3], Some((&fu, &work)), &fmnt);
        compare(&fmnt, &kmnt, &format!("{label}, with upper"));
    }
}

#[test]
fn oracle_kernel_format_layers() {
    run_oracle([Fmt::Kernel; 4], "kernel-format layers");
}

#[test]
fn oracle_oci_format_layers() {
    run_oracle([Fmt::Oci; 4], "OCI-format layers");
}

#[test]
fn oracle_mixed_format_layers() {
    run_oracle(
        [Fmt::Oci, Fmt::Kernel, Fmt::Oci, Fmt::Kernel],
        "mixed formats (oci, kernel, oci, kernel)",
    );
    run_oracle(
        [Fmt::Kernel, Fmt::Oci, Fmt::Kernel, Fmt::Oci],
        "mixed formats (kernel, oci, kernel, oci)",
    );
}

/// The oracle itself must see what the layers say, or the comparisons above
/// prove nothing: spot-check the kernel's view against the spec.
#[test]
fn oracle_sanity_kernel_view_matches_the_spec() {
    if !is_root() && oracle_unavailable("not running as root") {
        return;
    }
    let s = Scratch::new();
    let spec = layers();
    let names = ["upper", "l1", "l2", "l3"];
    for (i, layer) in spec.iter().enumerate() {
        apply(&s.path(names[i]), layer, Fmt::Kernel);
    }
    let (u, l1, l2, l3) = (s.path("upper"), s.path("l1"), s.path("l2"), s.path("l3"));
    let kmnt = s.mkdir("kmnt");
    let Some(k) = kernel_mount(&[&u, &l1, &l2, &l3], &kmnt) else {
        return;
    };
    let m = &k.mnt;
    let strs = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert_eq!(ls(&m.join("opt/app")), strs(&["v2"]));
    assert_eq!(ls(&m.join("var/cache")), strs(&["c9"]));
    assert_eq!(ls(&m.join("etc/conf.d")), strs(&["b.conf", "c.conf"]));
    assert_eq!(ls(&m.join("usr/share")), strs(&["doc2"]));
    assert!(!m.join("bin").exists());
    assert!(fs::symlink_metadata(m.join("srv")).unwrap().is_file());
    assert!(fs::symlink_metadata(m.join("notes")).unwrap().is_dir());
    assert_eq!(
        fs::read_to_string(m.join("etc/passwd")).unwrap(),
        "upper passwd\n"
    );
    assert_eq!(fs::symlink_metadata(m.join("data/h2")).unwrap().nlink(), 2);
    assert_eq!(ls(&m.join("notopaque")), strs(&["bottom", "mid", "top"]));
    let root = fs::symlink_metadata(m).unwrap();
    assert_eq!(
        (root.mode() & 0o7777, root.uid(), root.gid()),
        (0o715, 56, 78)
    );
    assert_eq!(
        fs::symlink_metadata(m.join("data/pair1")).unwrap().nlink(),
        2
    );
    assert_eq!(
        fs::symlink_metadata(m.join("usr/bin/tool"))
            .unwrap()
            .nlink(),
        2
    );
    drop(k);
}

/// A small deterministic generator (no external crates).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    File,
    Dir,
    Other,
}

/// Random layers over a small name space, so that names collide across
/// layers in every combination: files over dirs, dirs over files, whiteouts
/// and opaque dirs at every depth, hard links, symlinks, fifos.
fn random_layers(seed: u64, ops_per_layer: usize) -> [Layer; 4] {
    let mut rng = Lcg(seed.wrapping_mul(0x9e3779b97f4a7c15) | 1);
    let names = ["a", "b", "c", "dd", "e"];
    let mut out: [Layer; 4] = Default::default();
    for (li, layer) in out.iter_mut().enumerate() {
        let mut kinds: BTreeMap<String, Kind> = BTreeMap::new();
        let mut files: Vec<String> = Vec::new();
        for n in 0..ops_per_layer {
            let depth = 1 + rng.below(4) as usize;
            let path: Vec<&str> = (0..depth)
                .map(|_| names[rng.below(names.len() as u64) as usize])
                .collect();
            let path = path.join("/");
            // Every ancestor must be absent or a directory in this layer.
            let mut ok = true;
            let parts: Vec<&str> = path.split('/').collect();
            for i in 1..parts.len() {
                let anc = parts[..i].join("/");
                if let Some(k) = kinds.get(&anc)
                    && *k != Kind::Dir
                {
                    ok = false;
                }
            }
            if !ok {
                continue;
            }
            let exists = kinds.get(&path).copied();
            let mark_parents = |kinds: &mut BTreeMap<String, Kind>| {
                for i in 1..parts.len() {
                    kinds.insert(parts[..i].join("/"), Kind::Dir);
                }
            };
            let roll = rng.below(100);
            let tag = format!("L{li} op{n} {path}");
            match (roll, exists) {
                (0..=34, None) => {
                    let mode = [0o644, 0o600, 0o755, 0o444, 0o2755][rng.below(5) as usize];
                    let len = [0usize, 1, 100, 5000, 70_000][rng.below(5) as usize];
                    let data: Vec<u8> = tag.bytes().cycle().take(len).collect();
                    layer.file_bytes(&path, data, mode);
                    mark_parents(&mut kinds);
                    kinds.insert(path.clone(), Kind::File);
                    files.push(path);
                }
                (35..=49, None) | (35..=49, Some(Kind::Dir)) => {
                    let mode = [0o755, 0o700, 0o1777, 0o750][rng.below(4) as usize];
                    let uid = [0, 1000, 4242][rng.below(3) as usize];
                    layer.dir_owned(&path, mode, uid, uid);
                    mark_parents(&mut kinds);
                    kinds.insert(path, Kind::Dir);
                }
                (50..=59, None) => {
                    let target = ["a", "../b", "/etc", "c/dd", "missing"][rng.below(5) as usize];
                    layer.sym(&path, target);
                    mark_parents(&mut kinds);
                    kinds.insert(path, Kind::Other);
                }
                (60..=74, None) => {
                    layer.whiteout(&path);
                    mark_parents(&mut kinds);
                    kinds.insert(path, Kind::Other);
                }
                (75..=84, None) | (75..=84, Some(Kind::Dir)) => {
                    layer.opaque(&path);
                    mark_parents(&mut kinds);
                    kinds.insert(path, Kind::Dir);
                }
                (85..=91, None) if !files.is_empty() => {
                    let src = files[rng.below(files.len() as u64) as usize].clone();
                    layer.hard(&src, &path);
                    mark_parents(&mut kinds);
                    kinds.insert(path, Kind::File);
                }
                (92..=95, None) => {
                    layer.fifo(&path, 0o640);
                    mark_parents(&mut kinds);
                    kinds.insert(path, Kind::Other);
                }
                (96..=99, Some(Kind::File)) | (96..=99, Some(Kind::Dir)) => {
                    layer.xattr(&path, &format!("user.r{}", rng.below(3)), &tag);
                }
                _ => {}
            }
        }
    }
    out
}

/// Random layers, read-only view of all four, unionfuse vs kernel.
#[test]
fn oracle_random_layers_many_seeds() {
    if !is_root() && oracle_unavailable("not running as root") {
        return;
    }
    let formats = [
        [Fmt::Kernel; 4],
        [Fmt::Oci; 4],
        [Fmt::Oci, Fmt::Kernel, Fmt::Oci, Fmt::Kernel],
    ];
    for seed in 1..=24u64 {
        let fmts = formats[(seed % 3) as usize];
        let spec = random_layers(seed, 80);
        let s = Scratch::new();
        let names = ["l0", "l1", "l2", "l3"];
        for (i, layer) in spec.iter().enumerate() {
            apply(&s.path(&format!("fuse/{}", names[i])), layer, fmts[i]);
            apply(&s.path(&format!("kern/{}", names[i])), layer, Fmt::Kernel);
        }
        let f: Vec<_> = names.iter().map(|n| s.path(&format!("fuse/{n}"))).collect();
        let k: Vec<_> = names.iter().map(|n| s.path(&format!("kern/{n}"))).collect();
        let fmnt = s.mkdir("fmnt");
        let kmnt = s.mkdir("kmnt");
        let Some(_k) = kernel_mount(&[&k[0], &k[1], &k[2], &k[3]], &kmnt) else {
            return;
        };
        // Odd seeds: four lowers. Even seeds: the top layer is the upper.
        let with_upper = seed % 2 == 0;
        let work = s.mkdir("work");
        let _f = if with_upper {
            mount_with_work(&[&f[1], &f[2], &f[3]], Some((&f[0], &work)), &fmnt)
        } else {
            Mounted::new(&[&f[0], &f[1], &f[2], &f[3]], None, &fmnt, &[])
        };
        compare_min(
            &fmnt,
            &kmnt,
            &format!("random layers, seed {seed}, formats {fmts:?}, upper: {with_upper}"),
            3,
        );
    }
}

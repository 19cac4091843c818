//! A hostile host process races the daemon: it swaps a directory of the
//! upper for a symlink pointing outside, again and again, while files are
//! created, written, copied up, renamed and removed through the mount.
//! Operations may fail (layers changing behind a mount's back is not
//! supported, as with overlayfs), but nothing may ever be written outside
//! the upper: every path the daemon touches is resolved relative to
//! descriptors without following symlinks.
// The fixtures in common/ need libc; every unsafe block there says why it
// is sound.
#![allow(unsafe_code)]

mod common;
#[path = "support/tree.rs"]
mod tree;

use std::ffi::OsStr;
use std::fs;
use std::os::unix::fs::symlink;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::*;
use tree::Opts;

/// How long the race runs.
const RACE: Duration = Duration::from_secs(3);

#[test]
fn swapping_upper_directories_for_symlinks_never_leads_writes_outside() {
    let s = Scratch::new();
    let lower = s.mkdir("lower");
    write(&lower, "d/f", "lower file\n");
    write(&lower, "d/sub/g", "lower g\n");
    let upper = s.mkdir("upper");
    write(&upper, "d/u", "upper file\n");
    let canary = s.mkdir("canary");
    let work = s.mkdir("work");
    let mnt = s.mkdir("mnt");
    let m = Mounted::new(
        &[&lower],
        Some(&upper),
        &mnt,
        // No kernel caching: every round looks `d` up again, so the daemon
        // resolves it during the racer's windows too.
        &[
            "--work",
            work.to_str().expect("utf-8"),
            "--cache-timeout",
            "0",
        ],
    );
    let stop = Arc::new(AtomicBool::new(false));
    // Counted as they happen, so that a loaded machine gets more time
    // instead of a race that never ran.
    let (swaps, ops) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let racer = {
        let (upper, canary, stop) = (upper.clone(), canary.clone(), Arc::clone(&stop));
        let swaps = Arc::clone(&swaps);
        std::thread::spawn(move || {
            let (d, real) = (upper.join("d"), upper.join("d.real"));
            while !stop.load(Ordering::Relaxed) {
                if fs::rename(&d, &real).is_ok() {
                    if symlink(&canary, &d).is_ok() {
                        swaps.fetch_add(1, Ordering::Relaxed);
                        std::thread::yield_now();
                        let _ = fs::remove_file(&d);
                    }
                    let _ = fs::rename(&real, &d);
                }
            }
        })
    };
    // The workers reach the mount through descriptors opened without
    // following symlinks: the merged view itself shows the racer's symlink
    // now and then (the upper changed behind the mount's back), and a path
    // through it would take a worker, not the daemon, into the canary.
    let workers: Vec<_> = (0..3)
        .map(|w| {
            let (mnt, stop, ops) = (m.mnt.clone(), Arc::clone(&stop), Arc::clone(&ops));
            std::thread::spawn(move || {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    ops.fetch_add(1, Ordering::Relaxed);
                    let Some(d) = open_dir_nofollow(&mnt.join("d")) else {
                        continue;
                    };
                    let name = format!("w{w}-{n}");
                    write_at(
                        &d,
                        &name,
                        libc::O_CREAT | libc::O_TRUNC,
                        b"through the mount\n",
                    );
                    write_at(&d, "f", libc::O_APPEND, b"+");
                    at(&d, &format!("{name}.dir"), |fd, c| {
                        // SAFETY: fd is an open directory descriptor, c a valid C string.
                        unsafe { libc::mkdirat(fd, c, 0o755) }
                    });
                    let sub = std::ffi::CString::new("sub").unwrap();
                    // SAFETY: d is an open descriptor and sub a valid C string.
                    let sfd = unsafe {
                        libc::openat(
                            d.0,
                            sub.as_ptr(),
                            libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
                        )
                    };
                    if sfd >= 0 {
                        let sub = Fd(sfd);
                        write_at(&sub, &name, libc::O_CREAT | libc::O_TRUNC, b"deeper\n");
                    }
                    let (from, to) = (
                        std::ffi::CString::new(name.clone()).unwrap(),
                        std::ffi::CString::new(format!("{name}.moved")).unwrap(),
                    );
                    // SAFETY: d is an open descriptor; both names are valid C strings.
                    unsafe { libc::renameat(d.0, from.as_ptr(), d.0, to.as_ptr()) };
                    at(&d, &format!("{name}.moved"), |fd, c| {
                        // SAFETY: as above.
                        unsafe { libc::unlinkat(fd, c, 0) }
                    });
                    at(&d, &format!("{name}.dir"), |fd, c| {
                        // SAFETY: as above.
                        unsafe { libc::unlinkat(fd, c, libc::AT_REMOVEDIR) }
                    });
                    let _ = fs::read_dir(format!("/proc/self/fd/{}", d.0)).map(|r| r.count());
                }
            })
        })
        .collect();
    let t0 = Instant::now();
    let ran = || swaps.load(Ordering::Relaxed) > 0 && ops.load(Ordering::Relaxed) > 0;
    while t0.elapsed() < RACE || (!ran() && t0.elapsed() < RACE * 10) {
        std::thread::sleep(Duration::from_millis(50));
    }
    stop.store(true, Ordering::Relaxed);
    racer.join().expect("racer");
    for w in workers {
        w.join().expect("worker");
    }
    let (swaps, ops) = (swaps.load(Ordering::Relaxed), ops.load(Ordering::Relaxed));
    // The daemon lived through it.
    assert!(
        fs::read_dir(m.path("")).map(|r| r.count()).unwrap_or(0) > 0,
        "the mount died during the race"
    );
    drop(m);
    eprintln!("{swaps} swaps against {ops} rounds of operations");
    assert!(swaps > 0 && ops > 0, "the race did not run");
    let inside: Vec<_> = fs::read_dir(&canary)
        .expect("canary")
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(inside.is_empty(), "written outside the upper: {inside:?}");
    assert_eq!(
        fs::read_to_string(lower.join("d/f")).expect("lower"),
        "lower file\n"
    );
    assert_eq!(
        fs::read_to_string(lower.join("d/sub/g")).expect("lower"),
        "lower g\n"
    );
}

/// An owned descriptor, closed on drop.
struct Fd(libc::c_int);

impl Drop for Fd {
    fn drop(&mut self) {
        // SAFETY: the descriptor is owned and closed once.
        unsafe { libc::close(self.0) };
    }
}

/// `path` as an `O_PATH` directory descriptor, unless it is a symlink (or
/// anything but a directory) right now.
fn open_dir_nofollow(path: &std::path::Path) -> Option<Fd> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    // SAFETY: c is a valid C string.
    let fd = unsafe {
        libc::open(
            c.as_ptr(),
            libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        )
    };
    (fd >= 0).then_some(Fd(fd))
}

/// Runs `f` on `name` in directory `dir`; failures are part of the race.
fn at(dir: &Fd, name: &str, f: impl FnOnce(libc::c_int, *const libc::c_char) -> libc::c_int) {
    let c = std::ffi::CString::new(name).unwrap();
    f(dir.0, c.as_ptr());
}

/// Opens `name` in `dir` for writing (never through a symlink) and writes
/// `data`; failures are part of the race.
fn write_at(dir: &Fd, name: &str, flags: libc::c_int, data: &[u8]) {
    let c = std::ffi::CString::new(name).unwrap();
    // SAFETY: dir is an open descriptor and c a valid C string.
    let fd = unsafe {
        libc::openat(
            dir.0,
            c.as_ptr(),
            libc::O_WRONLY | libc::O_NOFOLLOW | libc::O_CLOEXEC | flags,
            0o644,
        )
    };
    if fd >= 0 {
        let f = Fd(fd);
        // SAFETY: data is valid for data.len() bytes.
        unsafe { libc::write(f.0, data.as_ptr().cast(), data.len()) };
    }
}

/// An image full of symlinks that lead out (absolute, `..`, to a file and
/// to a directory), in a lower and in the upper, put through every verb and
/// through the changes that make the daemon walk and copy trees: nothing
/// outside the layers ever changes.
#[test]
fn symlinks_in_layers_never_lead_any_verb_outside() {
    let s = Scratch::new();
    let canary = s.mkdir("canary");
    write(&canary, "keep", "orig");
    write(&canary, "sub/deeper", "orig");
    let (l, u, w) = (s.mkdir("lower"), s.mkdir("upper"), s.mkdir("work"));
    let mnt = s.mkdir("mnt");
    let abs = canary.to_str().expect("utf-8");
    write(&l, "a/file", "lower");
    symlink(abs, l.join("a/evil")).unwrap();
    symlink(format!("{abs}/keep"), l.join("a/evil-file")).unwrap();
    symlink("../../../../../../../../..", l.join("a/up")).unwrap();
    fs::create_dir_all(l.join("tree/x/y")).unwrap();
    symlink(abs, l.join("tree/x/y/out")).unwrap();
    fs::create_dir_all(u.join("a")).unwrap();
    symlink(abs, u.join("a/evil2")).unwrap();
    symlink(format!("{abs}/sub"), u.join("updir")).unwrap();
    let before = tree::manifest(&canary, &Opts::layer());
    let lower_before = tree::manifest(&l, &Opts::layer());
    let wstr = w.to_str().unwrap();
    {
        let m = Mounted::new(&[&l], Some(&u), &mnt, &["--work", wstr]);
        // Changes that copy, rename and remove the links themselves.
        let _ = std::os::unix::fs::lchown(m.path("a/evil"), Some(1), Some(1));
        fs::rename(m.path("tree"), m.path("tree-moved")).unwrap();
        fs::rename(m.path("a/evil-file"), m.path("a/renamed")).unwrap();
        fs::remove_file(m.path("a/up")).unwrap();
        fs::remove_file(m.path("a/evil2")).unwrap();
        fs::write(m.path("a/new"), "new").unwrap();
        for verb in [&["checkpoint", "one"][..], &["reset"], &["restore", "one"]] {
            let mut args: Vec<&OsStr> = vec![OsStr::new(verb[0]), m.mnt.as_os_str()];
            args.extend(verb[1..].iter().map(OsStr::new));
            let o = run(&args);
            assert!(
                o.status.success(),
                "{verb:?}: {}",
                String::from_utf8_lossy(&o.stderr)
            );
        }
        let o = run(&[OsStr::new("diff"), m.mnt.as_os_str()]);
        assert!(
            o.status.success(),
            "diff: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    let layer = s.dir.path().join("layer.tar");
    let (new, unpacked) = (s.dir.path().join("committed"), s.mkdir("unpacked"));
    for args in [
        vec![
            "diff",
            "--upper",
            u.to_str().unwrap(),
            "--lower",
            l.to_str().unwrap(),
        ],
        vec![
            "export",
            "--upper",
            u.to_str().unwrap(),
            "-o",
            layer.to_str().unwrap(),
        ],
        vec![
            "unpack",
            layer.to_str().unwrap(),
            unpacked.to_str().unwrap(),
        ],
        vec![
            "commit",
            "--upper",
            u.to_str().unwrap(),
            "--lower",
            l.to_str().unwrap(),
            new.to_str().unwrap(),
        ],
        vec![
            "check",
            "--upper",
            u.to_str().unwrap(),
            "--lower",
            l.to_str().unwrap(),
            "--work",
            wstr,
            "--repair",
        ],
    ] {
        let args: Vec<&OsStr> = args.iter().map(OsStr::new).collect();
        let o = run(&args);
        assert!(
            o.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    assert_eq!(
        tree::manifest(&canary, &Opts::layer()),
        before,
        "something outside the layers changed"
    );
    assert_eq!(
        tree::manifest(&l, &Opts::layer()),
        lower_before,
        "the lower is unchanged"
    );
}

/// Fifos and device nodes copied up keep the inode number they showed
/// before, in `stat` and in `readdir`, also where the number cannot be
/// recorded on the copy (no `user.*` xattrs on special files for an
/// unprivileged daemon).
#[test]
fn special_files_keep_their_inode_numbers_through_copy_up() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let s = Scratch::new();
    let (l, u, w, mnt) = (
        s.mkdir("lower"),
        s.mkdir("upper"),
        s.mkdir("work"),
        s.mkdir("mnt"),
    );
    mkfifo(&l, "fifo", 0o644);
    let mut names = vec!["fifo"];
    if is_root() {
        mknod(&l, "null", libc::S_IFCHR | 0o644, 1, 3);
        mknod(&l, "blk", libc::S_IFBLK | 0o644, 7, 200);
        names.extend(["null", "blk"]);
    } else {
        eprintln!("skipped as non-root: device nodes (only the fifo is copied up)");
    }
    let m = Mounted::new(
        &[&l],
        Some(&u),
        &mnt,
        &["--work", w.to_str().unwrap(), "--cache-timeout", "0"],
    );
    let d_ino = |name: &str| {
        readdir_raw(&m.mnt)
            .into_iter()
            .find(|e| e.name == name)
            .map(|e| e.d_ino)
    };
    for name in names {
        let before = fs::symlink_metadata(m.path(name)).unwrap().ino();
        assert_eq!(d_ino(name), Some(before), "{name}: d_ino before copy-up");
        fs::set_permissions(m.path(name), fs::Permissions::from_mode(0o600)).unwrap();
        assert!(
            fs::symlink_metadata(u.join(name)).is_ok(),
            "{name} was not copied up"
        );
        let after = fs::symlink_metadata(m.path(name)).unwrap();
        assert_eq!(after.mode() & 0o7777, 0o600, "{name}: mode");
        assert_eq!(after.ino(), before, "{name}: st_ino changed at copy-up");
        assert_eq!(d_ino(name), Some(before), "{name}: d_ino after copy-up");
    }
}

/// The layer's entries, path and kind, in order.
fn layer_entries(tar: &std::path::Path) -> Vec<(Vec<u8>, tar::EntryType)> {
    let mut a = tar::Archive::new(fs::File::open(tar).expect("layer"));
    a.entries()
        .expect("entries")
        .map(|e| {
            let e = e.expect("entry");
            (e.path_bytes().into_owned(), e.header().entry_type())
        })
        .collect()
}

fn file_type_and_rdev(p: &std::path::Path) -> (u32, u64) {
    use std::os::unix::fs::MetadataExt;
    let m = fs::symlink_metadata(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    (m.mode() & libc::S_IFMT, m.rdev())
}

/// A whiteout of a 255-byte name cannot be `.wh.NAME` (259 bytes): export
/// writes it as a 0:0 character device, and unpack reads that, and a
/// `.wh.NAME` longer than a name from another tool, back as a whiteout, in
/// either format. Every multi-link non-directory stays one object.
#[test]
fn long_whiteouts_and_hard_links_of_every_kind_survive_export_and_unpack() {
    use std::os::unix::fs::MetadataExt;
    let s = Scratch::new();
    let u = s.mkdir("upper");
    let long = "w".repeat(255);
    whiteout_chr(&u, &long);
    mkdir(&u, "d");
    whiteout_chr(&u, &format!("d/{long}"));
    write(&u, "f", "data");
    fs::hard_link(u.join("f"), u.join("f2")).unwrap();
    symlink("/etc/passwd", u.join("s")).unwrap();
    fs::hard_link(u.join("s"), u.join("s2")).unwrap();
    mkfifo(&u, "p", 0o640);
    fs::hard_link(u.join("p"), u.join("p2")).unwrap();
    let layer = s.path("layer.tar");
    let o = run(&[
        OsStr::new("export"),
        OsStr::new("--upper"),
        u.as_os_str(),
        OsStr::new("-o"),
        layer.as_os_str(),
    ]);
    assert!(
        o.status.success(),
        "export: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let entries = layer_entries(&layer);
    for (name, kind) in [
        (long.clone(), tar::EntryType::Char),
        (format!("d/{long}"), tar::EntryType::Char),
        ("f2".into(), tar::EntryType::Link),
        ("p2".into(), tar::EntryType::Link),
        ("s2".into(), tar::EntryType::Link),
    ] {
        assert!(
            entries.contains(&(name.clone().into_bytes(), kind)),
            "{name} is not a {kind:?} entry: {entries:?}"
        );
    }
    for format in ["overlay", "oci"] {
        let out = unpack_with_long_whiteouts(&s, "unpacked", format, &layer, &long);
        for (a, b) in [("f", "f2"), ("s", "s2"), ("p", "p2")] {
            let (ma, mb) = (
                fs::symlink_metadata(out.join(a)).unwrap(),
                fs::symlink_metadata(out.join(b)).unwrap(),
            );
            assert_eq!(ma.ino(), mb.ino(), "{format}: {a} and {b} are two objects");
            assert_eq!(ma.nlink(), 2, "{format}: {a}");
        }
        assert_eq!(
            fs::read_link(out.join("s2")).unwrap(),
            Path::new("/etc/passwd")
        );
    }

    // Another tool's `.wh.` + 255 bytes, which no directory can hold.
    let foreign = s.path("foreign.tar");
    {
        let mut b = tar::Builder::new(fs::File::create(&foreign).unwrap());
        for (path, kind) in [
            ("d/".to_string(), tar::EntryType::Directory),
            (format!("d/.wh.{long}"), tar::EntryType::Regular),
            (format!(".wh.{long}"), tar::EntryType::Regular),
        ] {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(kind);
            h.set_mode(0o755);
            h.set_size(0);
            b.append_data(&mut h, &path, std::io::empty()).unwrap();
        }
        b.finish().unwrap();
    }
    for format in ["overlay", "oci"] {
        unpack_with_long_whiteouts(&s, "foreign", format, &foreign, &long);
    }
}

/// A name of every awkward kind: 255 bytes, a newline, bytes that are no
/// UTF-8.
fn raw(name: &[u8]) -> std::path::PathBuf {
    use std::os::unix::ffi::OsStrExt;
    std::path::PathBuf::from(OsStr::from_bytes(name))
}

const NEWLINE: &[u8] = b"new\nline";
const BAD_UTF8: &[u8] = b"bad\xff\xfe";

fn long(c: u8) -> Vec<u8> {
    vec![c; 255]
}

/// Plants the hostile image: two lowers and an upper full of links that
/// lead out, symlinks over directories, awkward names, special files and
/// set-id bits.
fn plant_hostile(l1: &Path, l2: &Path, u: &Path, canary: &Path) {
    let abs = canary.to_str().expect("utf-8");
    // The bottom lower.
    write(l2, "dir/f", "l2 file\n");
    write(l2, "dir/sub/g", "l2 g\n");
    write(l2, "ren-dir/x", "x\n");
    write(l2, "ren-dir/deep/y", "y\n");
    mkfifo(l2, "fifo", 0o644);
    write(l2, "suid", "suid\n");
    chmod(l2, "suid", 0o4755);
    write(l2, "sgid", "sgid\n");
    chmod(l2, "sgid", 0o2755);
    write(l2, "sgid-dir/in", "in\n");
    chmod(l2, "sgid-dir", 0o2775);
    write(l2, "sticky/t", "t\n");
    chmod(l2, "sticky", 0o1777);
    fs::write(l2.join(raw(NEWLINE)), "newline\n").unwrap();
    fs::write(l2.join(raw(BAD_UTF8)), "bad\n").unwrap();
    fs::write(l2.join(raw(&long(b'l'))), "long\n").unwrap();
    fs::create_dir(l2.join(raw(&long(b'D')))).unwrap();
    fs::write(l2.join(raw(&long(b'D'))).join("inner"), "inner\n").unwrap();
    link(l2, "out-abs", abs);
    link(l2, "out-rel", "../../../../../../../..");
    link(l2, "out-file", &format!("{abs}/keep"));
    write(l2, "parent/child", "hidden by a symlink above\n");
    write(l2, "ul/inner", "hidden by the upper's symlink\n");
    write(l2, "hl", "linked\n");
    fs::hard_link(l2.join("hl"), l2.join("hl2")).unwrap();
    mkdir(l2, "gone-dir");
    write(l2, "gone-file", "gone\n");
    if is_root() {
        mknod(l2, "chr", libc::S_IFCHR | 0o644, 1, 3);
        mknod(l2, "blk", libc::S_IFBLK | 0o640, 7, 200);
    }
    // The top lower.
    write(l1, "dir/f", "l1 file\n");
    write(l1, "dir/f1", "f1\n");
    write(l1, "ren-dir/z", "z\n");
    link(l1, "parent", abs);
    link(l1, "rootlink", "/");
    link(l1, "etclink", "/etc");
    mkfifo(l1, "fifo1", 0o600);
    write(l1, "tab\tname", "tab\n");
    // The upper.
    link(u, "up-out", abs);
    write(u, "updir/file", "upper\n");
    link(u, "updir/back", "../../..");
    write(u, "dir/uf", "uf\n");
    mkfifo(u, "ufifo", 0o644);
    link(u, "ul", abs);
}

/// One change made through a mount, on both unionfuse and kernel overlayfs.
#[derive(Debug, Clone)]
enum Change {
    Append(Vec<u8>),
    Chmod(Vec<u8>, u32),
    Lchown(Vec<u8>, u32, u32),
    /// utimensat without following a symlink, to a fixed time.
    Utimes(Vec<u8>, i64),
    Setxattr(Vec<u8>),
    Rename(Vec<u8>, Vec<u8>),
    Unlink(Vec<u8>),
    Rmdir(Vec<u8>),
    Link(Vec<u8>, Vec<u8>),
    Mkdir(Vec<u8>),
    Create(Vec<u8>),
}

fn hostile_changes() -> Vec<Change> {
    use Change::*;
    let b = |s: &str| s.as_bytes().to_vec();
    let mut v = vec![
        // Data copy-up of every kind of regular file.
        Append(b("dir/f")),
        Append(NEWLINE.to_vec()),
        Append(BAD_UTF8.to_vec()),
        Append(long(b'l')),
        Append(b("suid")),
        Append(b("sticky/t")),
        Append([long(b'D'), b("/inner")].concat()),
        Append(b("hl")),
        Append(b("tab\tname")),
        // Metadata copy-up.
        Chmod(b("fifo1"), 0o640),
        Chmod(b("sticky"), 0o1755),
        Chmod(b("sgid-dir"), 0o755),
        Chmod(b("sgid"), 0o2711),
        Lchown(b("out-abs"), 1, 1),
        Lchown(b("out-file"), 2, 2),
        Lchown(b("fifo"), 3, 3),
        Utimes(b("out-rel"), 1_000_000),
        Utimes(b("fifo1"), 2_000_000),
        Utimes(b("sgid"), 3_000_000),
        Setxattr(b("dir/f1")),
        Setxattr(b("sgid-dir")),
        Setxattr(b("sticky")),
        // Renames, of directories too.
        Rename(b("ren-dir"), b("ren-moved")),
        Rename(b("updir"), b("updir-moved")),
        Rename(NEWLINE.to_vec(), b("renamed\nagain")),
        Rename(b("out-abs"), b("out-abs-moved")),
        Rename(b("fifo1"), b("fifo-moved")),
        Rename(long(b'l'), long(b'M')),
        Rename(long(b'D'), b("d255-moved")),
        Rename(b("parent"), b("parent-moved")),
        // Whiteouts over every kind.
        Unlink(b("fifo")),
        Unlink(b("out-rel")),
        Unlink(b("etclink")),
        Unlink(b("rootlink")),
        Unlink(BAD_UTF8.to_vec()),
        Unlink(b("hl2")),
        Unlink(b("ufifo")),
        Unlink(b("up-out")),
        Unlink(b("ul")),
        Unlink(b("gone-file")),
        Unlink(long(b'M')),
        Rmdir(b("gone-dir")),
        // Hard links of lower objects.
        Link(b("dir/f1"), b("dir/f1-link")),
        Link(b("out-file"), b("out-file-link")),
        Link(b("sgid"), b("sgid-link")),
        // New objects over deleted names.
        Mkdir(b("gone-dir")),
        Create(b("gone-dir/new")),
        Mkdir(b("fifo")),
        Mkdir(b("ren-dir")),
        Create(b("parent")),
        Mkdir(b("ul")),
        Create(long(b'M')),
        Mkdir(BAD_UTF8.to_vec()),
    ];
    if is_root() {
        v.extend([
            Lchown(b("chr"), 5, 5),
            Chmod(b("blk"), 0o600),
            Rename(b("chr"), b("chr-moved")),
            Unlink(b("blk")),
            Mkdir(b("blk")),
        ]);
    }
    v
}

fn cstr_at(mnt: &Path, rel: &[u8]) -> std::ffi::CString {
    use std::os::unix::ffi::OsStrExt;
    let mut p = mnt.as_os_str().as_bytes().to_vec();
    p.push(b'/');
    p.extend_from_slice(rel);
    std::ffi::CString::new(p).expect("no NUL")
}

/// Applies `c` under `mnt` without ever following a symlink in the last
/// component (every parent is a real directory of the merged view);
/// returns the errno of a failure.
fn apply_change(mnt: &Path, c: &Change) -> Result<(), i32> {
    let p = |r: &[u8]| cstr_at(mnt, r);
    let check = |rc: libc::c_int| {
        if rc < 0 {
            Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(0))
        } else {
            Ok(())
        }
    };
    // SAFETY: every call below gets valid NUL-terminated paths and
    // buffers of the lengths given; descriptors are closed once.
    unsafe {
        match c {
            Change::Append(r) => {
                let fd = libc::open(
                    p(r).as_ptr(),
                    libc::O_WRONLY | libc::O_APPEND | libc::O_NOFOLLOW | libc::O_CLOEXEC,
                );
                check(fd)?;
                let rc = libc::write(fd, b"+appended\n".as_ptr().cast(), 10);
                libc::close(fd);
                check(rc as libc::c_int)
            }
            Change::Chmod(r, mode) => {
                check(libc::fchmodat(libc::AT_FDCWD, p(r).as_ptr(), *mode, 0))
            }
            Change::Lchown(r, uid, gid) => check(libc::lchown(p(r).as_ptr(), *uid, *gid)),
            Change::Utimes(r, t) => {
                let ts = [libc::timespec {
                    tv_sec: *t,
                    tv_nsec: 0,
                }; 2];
                check(libc::utimensat(
                    libc::AT_FDCWD,
                    p(r).as_ptr(),
                    ts.as_ptr(),
                    libc::AT_SYMLINK_NOFOLLOW,
                ))
            }
            Change::Setxattr(r) => check(libc::lsetxattr(
                p(r).as_ptr(),
                c"user.hostile".as_ptr(),
                // Binary, with newlines: PAX records must be read by
                // their length.
                b"value\n\0\n\xff".as_ptr().cast(),
                9,
                0,
            )),
            Change::Rename(a, b) => check(libc::rename(p(a).as_ptr(), p(b).as_ptr())),
            Change::Unlink(r) => check(libc::unlink(p(r).as_ptr())),
            Change::Rmdir(r) => check(libc::rmdir(p(r).as_ptr())),
            Change::Link(a, b) => check(libc::linkat(
                libc::AT_FDCWD,
                p(a).as_ptr(),
                libc::AT_FDCWD,
                p(b).as_ptr(),
                0,
            )),
            Change::Mkdir(r) => check(libc::mkdir(p(r).as_ptr(), 0o750)),
            Change::Create(r) => {
                let fd = libc::open(
                    p(r).as_ptr(),
                    libc::O_WRONLY
                        | libc::O_CREAT
                        | libc::O_EXCL
                        | libc::O_NOFOLLOW
                        | libc::O_CLOEXEC,
                    0o640,
                );
                check(fd)?;
                libc::close(fd);
                Ok(())
            }
        }
    }
}

/// The results of every change, then the merged view, then the fixed
/// times set by the changes (the view leaves times out).
type Outcome = (Vec<Result<(), i32>>, tree::Manifest, Vec<i64>);

fn drive(mnt: &Path, changes: &[Change]) -> Outcome {
    use std::os::unix::fs::MetadataExt;
    let results: Vec<_> = changes.iter().map(|c| apply_change(mnt, c)).collect();
    let view = tree::manifest(mnt, &Opts::view());
    let times = changes
        .iter()
        .filter_map(|c| match c {
            Change::Utimes(r, _) => {
                // Renamed since, or not: wherever it is now.
                let at = match r.as_slice() {
                    b"fifo1" => b"fifo-moved".as_slice(),
                    r => r,
                };
                fs::symlink_metadata(mnt.join(raw(at)))
                    .ok()
                    .map(|m| m.mtime())
            }
            _ => None,
        })
        .collect();
    (results, view, times)
}

fn verb_ok(args: &[&OsStr]) -> std::process::Output {
    let o = run(args);
    assert!(
        o.status.success(),
        "unionfuse {args:?}: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    o
}

/// The hostile image (links leading out of two lowers and the upper,
/// symlinks over directories, at a layer root's children, names with
/// newlines, bytes that are no UTF-8 and 255 bytes, fifos, device nodes,
/// set-id files, sticky directories) put through every kind of operation
/// through the mount, compared with kernel overlayfs doing the same on a
/// copy of the image, then through every verb: nothing outside the layers
/// changes, and the verbs agree with the mount.
#[test]
fn hostile_names_nodes_and_modes_through_every_operation_and_verb() {
    let s = Scratch::new();
    let canary = s.mkdir("canary");
    write(&canary, "keep", "canary\n");
    write(&canary, "sub/deeper", "canary\n");
    mkfifo(&canary, "pipe", 0o644);
    let set = |name: &str| {
        let (l1, l2, u, w) = (
            s.mkdir(&format!("{name}/l1")),
            s.mkdir(&format!("{name}/l2")),
            s.mkdir(&format!("{name}/upper")),
            s.mkdir(&format!("{name}/work")),
        );
        plant_hostile(&l1, &l2, &u, &canary);
        (l1, l2, u, w, s.mkdir(&format!("{name}/mnt")))
    };
    let canary_before = tree::manifest(&canary, &Opts::layer());
    let changes = hostile_changes();

    let (l1, l2, u, w, mnt) = set("unionfuse");
    let lowers_before = (
        tree::manifest(&l1, &Opts::layer()),
        tree::manifest(&l2, &Opts::layer()),
    );
    let m = Mounted::new(
        &[&l1, &l2],
        Some(&u),
        &mnt,
        &["--work", w.to_str().unwrap()],
    );
    let ours = drive(&m.mnt, &changes);
    for (c, r) in changes.iter().zip(&ours.0) {
        if let Err(e) = r {
            eprintln!("{c:?}: errno {e}");
        }
    }

    if skip_as_non_root("kernel overlayfs as the oracle of the hostile image") {
    } else if std::env::var_os("UNIONFUSE_NO_KERNEL_ORACLE").is_some() {
        eprintln!("UNIONFUSE_NO_KERNEL_ORACLE: the hostile image is not compared with overlayfs");
    } else {
        let (kl1, kl2, ku, kw, kmnt) = set("kernel");
        let k = KernelOverlay::new(
            &[&kl1, &kl2],
            Some((&ku, &kw)),
            &kmnt,
            "redirect_dir=on,index=on,metacopy=off",
        )
        .expect("kernel overlayfs");
        let theirs = drive(&k.mnt, &changes);
        drop(k);
        let differ: Vec<String> = changes
            .iter()
            .zip(ours.0.iter().zip(&theirs.0))
            .filter(|(_, (a, b))| a != b)
            .map(|(c, (a, b))| format!("{c:?}: unionfuse {a:?}, overlayfs {b:?}"))
            .collect();
        assert!(differ.is_empty(), "results differ:\n{}", differ.join("\n"));
        tree::assert_same("merged view", "unionfuse", &ours.1, "overlayfs", &theirs.1);
        assert_eq!(ours.2, theirs.2, "times set by utimensat");
    }

    // The live verbs: a checkpoint, a reset to the bare image, the
    // checkpoint back.
    let live = |verb: &[&str]| {
        let mut args: Vec<&OsStr> = vec![OsStr::new(verb[0]), m.mnt.as_os_str()];
        args.extend(verb[1..].iter().map(OsStr::new));
        verb_ok(&args)
    };
    live(&["checkpoint", "c1"]);
    live(&["reset"]);
    assert_eq!(
        fs::read_to_string(m.path("dir/f")).unwrap(),
        "l1 file\n",
        "reset kept a change"
    );
    assert!(
        fs::symlink_metadata(m.path("updir")).is_err(),
        "reset kept the upper"
    );
    live(&["restore", "c1"]);
    tree::assert_same(
        "restored view",
        "before",
        &ours.1,
        "restored",
        &tree::manifest(&m.mnt, &Opts::view()),
    );
    let live_diff = live(&["diff"]).stdout;
    drop(m);

    // The offline verbs on that upper.
    let lower_args = [
        "--lower",
        l1.to_str().unwrap(),
        "--lower",
        l2.to_str().unwrap(),
    ];
    let with = |head: &[&str], tail: &[&str]| -> Vec<String> {
        head.iter().chain(tail).map(|s| s.to_string()).collect()
    };
    let os = |v: &[String]| -> Vec<std::ffi::OsString> { v.iter().map(Into::into).collect() };
    let ustr = u.to_str().unwrap();
    let diff_args = with(&["diff", "--upper", ustr], &lower_args);
    let offline_diff = verb_ok(
        &os(&diff_args)
            .iter()
            .map(|a| a.as_os_str())
            .collect::<Vec<_>>(),
    )
    .stdout;
    assert_eq!(
        String::from_utf8_lossy(&offline_diff),
        String::from_utf8_lossy(&live_diff),
        "diff of the upper and of the live mount disagree"
    );
    assert!(
        !String::from_utf8_lossy(&offline_diff)
            .lines()
            .any(|l| !l.starts_with(['A', 'C', 'D'])),
        "a name broke a line of the diff: {}",
        String::from_utf8_lossy(&offline_diff)
    );
    for line in ["A /renamed\\nagain", "D /new\\nline", "C /tab\\tname"] {
        assert!(
            String::from_utf8_lossy(&offline_diff)
                .lines()
                .any(|l| l == line),
            "no {line:?} in the diff"
        );
    }
    let layer = s.path("layer.tar");
    verb_ok(&[
        OsStr::new("export"),
        OsStr::new("--upper"),
        u.as_os_str(),
        OsStr::new("-o"),
        layer.as_os_str(),
    ]);
    let unpacked = s.mkdir("unpacked");
    verb_ok(&[
        OsStr::new("unpack"),
        layer.as_os_str(),
        unpacked.as_os_str(),
    ]);
    let committed = s.path("committed");
    let commit_args = with(&["commit", "--upper", ustr], &lower_args);
    let mut commit_args = os(&commit_args);
    commit_args.push(committed.clone().into());
    verb_ok(
        &commit_args
            .iter()
            .map(|a| a.as_os_str())
            .collect::<Vec<_>>(),
    );
    let check_args = with(
        &["check", "--upper", ustr, "--work", w.to_str().unwrap()],
        &lower_args,
    );
    verb_ok(
        &os(&check_args)
            .iter()
            .map(|a| a.as_os_str())
            .collect::<Vec<_>>(),
    );
    // The layer, stacked on the image without the upper, shows what the
    // mount showed.
    for (what, top) in [("exported", &unpacked), ("committed", &committed)] {
        let m2 = s.mkdir(&format!("mnt-{what}"));
        let m = Mounted::new(&[top, &l1, &l2], None, &m2, &[]);
        tree::assert_same(
            &format!("the {what} layer on the image"),
            "mount",
            &ours.1,
            what,
            &tree::manifest(&m.mnt, &Opts::view()),
        );
    }

    assert_eq!(
        tree::manifest(&canary, &Opts::layer()),
        canary_before,
        "something outside the layers changed"
    );
    assert_eq!(
        (
            tree::manifest(&l1, &Opts::layer()),
            tree::manifest(&l2, &Opts::layer())
        ),
        lowers_before,
        "a lower changed"
    );
}

/// A lower hard link written through one name is one object under every
/// name, also once a checkpoint of it is restored: the index entry that
/// joins the names lives outside the upper, so restoring puts it back.
#[test]
fn a_restored_checkpoint_keeps_copied_up_hard_links_whole() {
    use std::os::unix::fs::MetadataExt;
    let s = Scratch::new();
    let (l, u, w, mnt) = (
        s.mkdir("lower"),
        s.mkdir("upper"),
        s.mkdir("work"),
        s.mkdir("mnt"),
    );
    write(&l, "a", "lower\n");
    fs::hard_link(l.join("a"), l.join("b")).unwrap();
    let m = Mounted::new(
        &[&l],
        Some(&u),
        &mnt,
        &["--work", w.to_str().unwrap(), "--cache-timeout", "0"],
    );
    fs::write(m.path("a"), "written through a\n").unwrap();
    let before = (
        fs::read_to_string(m.path("b")).unwrap(),
        fs::symlink_metadata(m.path("b")).unwrap().ino(),
    );
    assert_eq!(before.0, "written through a\n");
    let live = |verb: &[&str]| {
        let mut args: Vec<&OsStr> = vec![OsStr::new(verb[0]), m.mnt.as_os_str()];
        args.extend(verb[1..].iter().map(OsStr::new));
        verb_ok(&args);
    };
    live(&["checkpoint", "c"]);
    live(&["reset"]);
    assert_eq!(fs::read_to_string(m.path("b")).unwrap(), "lower\n");
    live(&["restore", "c"]);
    let after = (
        fs::read_to_string(m.path("b")).unwrap(),
        fs::symlink_metadata(m.path("b")).unwrap().ino(),
    );
    assert_eq!(after, before, "the other name of the copy after restore");
    assert_eq!(fs::symlink_metadata(m.path("a")).unwrap().nlink(), 2);
    drop(m);
    let o = verb_ok(&[
        OsStr::new("check"),
        OsStr::new("--upper"),
        u.as_os_str(),
        OsStr::new("--lower"),
        l.as_os_str(),
        OsStr::new("--work"),
        w.as_os_str(),
    ]);
    assert!(o.status.success());
}

/// The one line on stderr of a refused command, which must be exactly one.
fn refused(args: &[&OsStr]) -> String {
    let o = run(args);
    assert!(!o.status.success(), "{args:?} succeeded");
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert_eq!(
        err.trim_end_matches('\n').lines().count(),
        1,
        "{args:?}: not one line: {err:?}"
    );
    err
}

/// Refusals that name something holding a newline or an escape stay one
/// line; id maps whose ranges overlap are refused before anything is
/// mounted; a checkpoint that cannot copy an object names it.
#[test]
fn refusals_stay_one_line_and_name_what_failed() {
    let s = Scratch::new();
    let (l, mnt) = (s.mkdir("lower"), s.mkdir("mnt"));
    write(&l, "f", "x");
    let odd = s.path("missing\nsecond line\x1b[31m");
    let err = refused(&[OsStr::new("export"), OsStr::new("--upper"), odd.as_os_str()]);
    assert!(err.contains("missing\\nsecond line"), "{err:?}");

    // A layer whose entry name holds a newline and leaves the directory.
    let layer = s.path("evil.tar");
    {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_size(0);
        h.set_mode(0o644);
        let name = b"../new\nline";
        h.as_old_mut().name[..name.len()].copy_from_slice(name);
        h.set_cksum();
        let mut b = tar::Builder::new(fs::File::create(&layer).unwrap());
        b.append(&h, std::io::empty()).unwrap();
        b.finish().unwrap();
    }
    let out = s.mkdir("out");
    let err = refused(&[OsStr::new("unpack"), layer.as_os_str(), out.as_os_str()]);
    assert!(err.contains("new\\nline"), "{err:?}");
    assert_eq!(
        fs::read_dir(&out).unwrap().count(),
        0,
        "unpack changed the target"
    );

    for map in ["0:1000:10:5:2000:10", "0:1000:10:100:1005:1", "0:1000:0"] {
        let err = refused(&[
            OsStr::new("-o"),
            OsStr::new(&format!("lowerdir={},uidmapping={map}", l.display())),
            mnt.as_os_str(),
        ]);
        assert!(err.contains(map), "{map}: {err:?}");
        assert!(!is_mountpoint(&mnt), "{map} was mounted");
    }

    // A checkpoint that cannot copy: as root, an upper file larger than the
    // space left for the copy; otherwise a directory the daemon may not
    // read.
    let (u, w) = (s.mkdir("upper"), s.mkdir("work"));
    let _space = if is_root() {
        let t = Tmpfs::new(&s.path("small"), "3m");
        Some(t)
    } else {
        None
    };
    let (u, w) = if is_root() {
        (s.mkdir("small/upper"), s.mkdir("small/work"))
    } else {
        (u, w)
    };
    let culprit = "sub/bad\nname";
    if is_root() {
        mkdir(&u, "sub");
        fs::write(u.join(culprit), vec![7u8; 2 << 20]).unwrap();
    } else {
        mkdir(&u, culprit);
        chmod(&u, culprit, 0o000);
    }
    let m = Mounted::new(&[&l], Some(&u), &mnt, &["--work", w.to_str().unwrap()]);
    let err = refused(&[OsStr::new("checkpoint"), m.mnt.as_os_str(), OsStr::new("c")]);
    eprintln!("checkpoint refused: {err}");
    assert!(err.contains("sub/bad\\nname"), "{err:?}");
    // The mount still works, and a later checkpoint is possible.
    assert_eq!(fs::read_to_string(m.path("f")).unwrap(), "x");
    drop(m);
    if !is_root() {
        chmod(&u, culprit, 0o755);
    }
}

/// An upper in the OCI format hides a lower name of 255 bytes, for which
/// `.wh.NAME` would be too long, with a 0:0 character device: unlink,
/// rmdir and rename of such names work, a new object can take the name
/// back, and the result survives a remount, `diff` and `export`.
#[test]
fn an_oci_upper_hides_names_too_long_for_wh_files() {
    let s = Scratch::new();
    let (l, u, w, mnt) = (
        s.mkdir("lower"),
        s.mkdir("upper"),
        s.mkdir("work"),
        s.mkdir("mnt"),
    );
    let (file, dir, moved, back) = (long(b'f'), long(b'd'), long(b'm'), long(b'b'));
    fs::write(l.join(raw(&file)), "file\n").unwrap();
    fs::create_dir(l.join(raw(&dir))).unwrap();
    fs::write(l.join(raw(&dir)).join("inner"), "inner\n").unwrap();
    fs::write(l.join(raw(&moved)), "moved\n").unwrap();
    fs::write(l.join(raw(&back)), "old\n").unwrap();
    let opts = ["--work", w.to_str().unwrap(), "--whiteout", "oci"];
    let m = Mounted::new(&[&l], Some(&u), &mnt, &opts);
    fs::remove_file(m.mnt.join(raw(&file))).expect("unlink a 255-byte name");
    fs::remove_file(m.mnt.join(raw(&dir)).join("inner")).unwrap();
    fs::remove_dir(m.mnt.join(raw(&dir))).expect("rmdir a 255-byte name");
    fs::rename(m.mnt.join(raw(&moved)), m.path("short")).expect("rename a 255-byte name");
    fs::remove_file(m.mnt.join(raw(&back))).unwrap();
    fs::write(m.mnt.join(raw(&back)), "new\n").expect("a new file over the whiteout");
    let view = tree::manifest(&m.mnt, &Opts::view());
    drop(m);
    let m = Mounted::new(&[&l], Some(&u), &mnt, &opts);
    tree::assert_same(
        "after a remount",
        "before",
        &view,
        "after",
        &tree::manifest(&m.mnt, &Opts::view()),
    );
    let names: Vec<Vec<u8>> = {
        use std::os::unix::ffi::OsStrExt;
        fs::read_dir(&m.mnt)
            .unwrap()
            .map(|e| e.unwrap().file_name().as_bytes().to_vec())
            .collect()
    };
    let mut names = names;
    names.sort();
    assert_eq!(names, vec![back.clone(), b"short".to_vec()]);
    assert_eq!(fs::read_to_string(m.mnt.join(raw(&back))).unwrap(), "new\n");
    drop(m);
    // Nothing named `.wh.` in the upper could have held these names.
    for n in [&file, &dir, &moved] {
        assert_eq!(
            file_type_and_rdev(&u.join(raw(n))),
            (libc::S_IFCHR, 0),
            "no device whiteout for a 255-byte name"
        );
    }
    let o = verb_ok(&[
        OsStr::new("diff"),
        OsStr::new("--upper"),
        u.as_os_str(),
        OsStr::new("--lower"),
        l.as_os_str(),
    ]);
    let text = String::from_utf8_lossy(&o.stdout).into_owned();
    for n in [&file, &dir, &moved] {
        let line = format!("D /{}", String::from_utf8_lossy(n));
        assert!(text.lines().any(|l| l == line), "{line} not in {text}");
    }
    let layer = s.path("layer.tar");
    verb_ok(&[
        OsStr::new("export"),
        OsStr::new("--upper"),
        u.as_os_str(),
        OsStr::new("-o"),
        layer.as_os_str(),
    ]);
    let entries = layer_entries(&layer);
    for n in [&file, &dir, &moved] {
        assert!(
            entries.contains(&(n.clone(), tar::EntryType::Char)),
            "{entries:?}"
        );
    }
}

/// Unpacks `layer` with whiteouts in `format` into a new directory and
/// checks that the whiteouts of the 255-byte name `long` (at the top and in
/// `d`) came out as 0:0 devices, which either format must use for it.
fn unpack_with_long_whiteouts(
    s: &Scratch,
    prefix: &str,
    format: &str,
    layer: &std::path::Path,
    long: &str,
) -> std::path::PathBuf {
    let out = s.mkdir(&format!("{prefix}-{format}"));
    let o = run(&[
        OsStr::new("unpack"),
        OsStr::new("--whiteout"),
        OsStr::new(format),
        layer.as_os_str(),
        out.as_os_str(),
    ]);
    assert!(
        o.status.success(),
        "unpack: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    for w in [long.to_string(), format!("d/{long}")] {
        assert_eq!(
            file_type_and_rdev(&out.join(&w)),
            (libc::S_IFCHR, 0),
            "{format}: {w} is not a whiteout"
        );
    }
    out
}

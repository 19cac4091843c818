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
use std::sync::atomic::{AtomicBool, Ordering};
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
    let racer = {
        let (upper, canary, stop) = (upper.clone(), canary.clone(), Arc::clone(&stop));
        std::thread::spawn(move || {
            let (d, real) = (upper.join("d"), upper.join("d.real"));
            let mut swaps = 0u64;
            while !stop.load(Ordering::Relaxed) {
                if fs::rename(&d, &real).is_ok() {
                    if symlink(&canary, &d).is_ok() {
                        swaps += 1;
                        std::thread::yield_now();
                        let _ = fs::remove_file(&d);
                    }
                    let _ = fs::rename(&real, &d);
                }
            }
            swaps
        })
    };
    // The workers reach the mount through descriptors opened without
    // following symlinks: the merged view itself shows the racer's symlink
    // now and then (the upper changed behind the mount's back), and a path
    // through it would take a worker, not the daemon, into the canary.
    let workers: Vec<_> = (0..3)
        .map(|w| {
            let (mnt, stop) = (m.mnt.clone(), Arc::clone(&stop));
            std::thread::spawn(move || {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
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
                n
            })
        })
        .collect();
    let t0 = Instant::now();
    while t0.elapsed() < RACE {
        std::thread::sleep(Duration::from_millis(50));
    }
    stop.store(true, Ordering::Relaxed);
    let swaps = racer.join().expect("racer");
    let ops: u64 = workers.into_iter().map(|w| w.join().expect("worker")).sum();
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
        let out = s.mkdir(&format!("unpacked-{format}"));
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
        for w in [long.clone(), format!("d/{long}")] {
            assert_eq!(
                file_type_and_rdev(&out.join(&w)),
                (libc::S_IFCHR, 0),
                "{format}: {w} is not a whiteout"
            );
        }
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
        let out = s.mkdir(&format!("foreign-{format}"));
        let o = run(&[
            OsStr::new("unpack"),
            OsStr::new("--whiteout"),
            OsStr::new(format),
            foreign.as_os_str(),
            out.as_os_str(),
        ]);
        assert!(
            o.status.success(),
            "unpack: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        for w in [long.clone(), format!("d/{long}")] {
            assert_eq!(
                file_type_and_rdev(&out.join(&w)),
                (libc::S_IFCHR, 0),
                "{format}: {w} is not a whiteout"
            );
        }
    }
}

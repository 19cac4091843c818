//! `unionfuse diff` against the truth: the merged tree is recorded before
//! and after random changes made through the mount, the changes are worked
//! out from the two records, and the diff must say exactly that, for every
//! whiteout format (and for an upper written by kernel overlayfs).
#![allow(unsafe_code)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use common::*;

/// What matters of one merged-tree entry for a diff.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    kind: u32,
    mode: u32,
    owner: (u32, u32),
    mtime: (i64, i64),
    data: Vec<u8>,
}

fn record(root: &Path) -> BTreeMap<String, Entry> {
    let mut out = BTreeMap::new();
    let mut stack = vec![String::new()];
    while let Some(rel) = stack.pop() {
        let dir = if rel.is_empty() {
            root.to_path_buf()
        } else {
            root.join(&rel[1..])
        };
        for e in fs::read_dir(&dir).expect("read_dir") {
            let e = e.expect("entry");
            let name = e.file_name().to_string_lossy().into_owned();
            let path = format!("{rel}/{name}");
            let m = fs::symlink_metadata(e.path()).expect("lstat");
            let kind = m.mode() & libc::S_IFMT;
            let data = match kind {
                libc::S_IFREG => fs::read(e.path()).expect("read"),
                libc::S_IFLNK => fs::read_link(e.path())
                    .expect("readlink")
                    .into_os_string()
                    .into_encoded_bytes(),
                _ => Vec::new(),
            };
            if kind == libc::S_IFDIR {
                stack.push(path.clone());
            }
            out.insert(
                path,
                Entry {
                    kind,
                    mode: m.mode() & 0o7777,
                    owner: (m.uid(), m.gid()),
                    mtime: (m.mtime(), m.mtime_nsec()),
                    data,
                },
            );
        }
    }
    out
}

fn parent(p: &str) -> Option<&str> {
    p.rfind('/').filter(|i| *i > 0).map(|i| &p[..i])
}

/// The `docker diff` lines two records imply: `D` for a deleted path whose
/// parent survives; `A` for each added path; `C` for a changed entry (or
/// one whose type changed, as a deletion and an addition at one name shows)
/// and for every surviving directory above an `A`, `C` or `D`.
fn expected(before: &BTreeMap<String, Entry>, after: &BTreeMap<String, Entry>) -> Vec<String> {
    let mut lines: BTreeMap<String, char> = BTreeMap::new();
    for (p, b) in before {
        match after.get(p) {
            None => {
                if parent(p).is_none_or(|q| after.contains_key(q)) {
                    lines.insert(p.clone(), 'D');
                }
            }
            Some(a) if a != b => {
                lines.insert(p.clone(), 'C');
            }
            Some(_) => {}
        }
    }
    for p in after.keys() {
        if !before.contains_key(p) {
            lines.insert(p.clone(), 'A');
        }
    }
    let changed: Vec<String> = lines.keys().cloned().collect();
    for p in changed {
        let mut q = parent(&p);
        while let Some(d) = q {
            lines.entry(d.to_string()).or_insert('C');
            q = parent(d);
        }
    }
    lines.into_iter().map(|(p, k)| format!("{k} {p}")).collect()
}

/// A tiny deterministic generator, so a failing seed can be replayed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn pick<'a>(&mut self, v: &'a [String]) -> &'a String {
        &v[(self.next() % v.len() as u64) as usize]
    }
}

fn lowers(s: &Scratch) -> (std::path::PathBuf, std::path::PathBuf) {
    let l1 = s.mkdir("l1");
    let l2 = s.mkdir("l2");
    for (l, tag) in [(&l2, "b"), (&l1, "t")] {
        for d in ["etc", "usr/lib", "usr/share/doc", "var/cache", "opt"] {
            for f in ["x", "y"] {
                write(l, &format!("{d}/{tag}{f}"), &format!("{tag} {d} {f}\n"));
            }
        }
    }
    whiteout_chr(&l1, "opt/bx");
    (l1, l2)
}

/// Random changes through the mount: creates, writes, chmods, deletes of
/// files and whole trees, directory re-creation, renames.
fn mutate(mnt: &Path, seed: u64) {
    let mut rng = Rng(seed * 2 + 1);
    for _ in 0..40 {
        let tree = record(mnt);
        let files: Vec<String> = tree
            .iter()
            .filter(|(_, e)| e.kind == libc::S_IFREG)
            .map(|(p, _)| p.clone())
            .collect();
        let dirs: Vec<String> = tree
            .iter()
            .filter(|(_, e)| e.kind == libc::S_IFDIR)
            .map(|(p, _)| p.clone())
            .collect();
        if files.is_empty() || dirs.is_empty() {
            return;
        }
        let p = |rel: &str| mnt.join(&rel[1..]);
        let n = rng.next();
        match n % 7 {
            0 => {
                let d = rng.pick(&dirs);
                let _ = fs::write(p(d).join(format!("new{}", n % 97)), "new\n");
            }
            1 => {
                let _ = fs::write(p(rng.pick(&files)), format!("changed {n}\n"));
            }
            2 => {
                let _ = fs::set_permissions(p(rng.pick(&files)), fs::Permissions::from_mode(0o600));
            }
            3 => {
                let _ = fs::remove_file(p(rng.pick(&files)));
            }
            4 => {
                let d = rng.pick(&dirs);
                let _ = fs::remove_dir_all(p(d));
                if n & 1 == 0 {
                    let _ = fs::create_dir(p(d));
                    let _ = fs::write(p(d).join("again"), "again\n");
                }
            }
            5 => {
                let d = rng.pick(&dirs);
                let _ = fs::create_dir_all(p(d).join(format!("sub{}/deeper", n % 5)));
            }
            _ => {
                let f = rng.pick(&files);
                let _ = fs::rename(p(f), format!("{}.moved", p(f).display()));
            }
        }
    }
}

fn run_diff(args: &[&std::ffi::OsStr]) -> Vec<String> {
    let out = run(args);
    assert!(
        out.status.success(),
        "unionfuse diff failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .expect("utf-8")
        .lines()
        .map(str::to_string)
        .collect()
}

fn check(format: &str, seed: u64) {
    let s = Scratch::new();
    let (l1, l2) = lowers(&s);
    let up = s.mkdir("u");
    let mnt = s.mkdir("m");
    let before;
    let after;
    if format == "kernel" {
        let work = s.mkdir("w");
        let k = KernelOverlay::new(&[&l1, &l2], Some((&up, &work)), &mnt, "")
            .unwrap_or_else(|e| panic!("kernel overlayfs: {e}"));
        before = record(&mnt);
        mutate(&mnt, seed);
        after = record(&mnt);
        drop(k);
    } else {
        let m = Mounted::new(&[&l1, &l2], Some(&up), &mnt, &["--whiteout", format]);
        before = record(&mnt);
        mutate(&mnt, seed);
        after = record(&mnt);
        let live = run_diff(&["diff".as_ref(), mnt.as_os_str()]);
        assert_eq!(
            live,
            expected(&before, &after),
            "{format} seed {seed}: live mount"
        );
        drop(m);
    }
    let want = expected(&before, &after);
    let args: Vec<&std::ffi::OsStr> = vec![
        "diff".as_ref(),
        "--upper".as_ref(),
        up.as_os_str(),
        "--lower".as_ref(),
        l1.as_os_str(),
        "--lower".as_ref(),
        l2.as_os_str(),
    ];
    let got = run_diff(&args);
    assert_eq!(got, want, "{format} seed {seed}: diff of the layers");
    let set: BTreeSet<&String> = got.iter().collect();
    assert_eq!(set.len(), got.len(), "a path listed twice");
}

#[test]
fn diff_matches_the_truth_overlay_format() {
    for seed in [1, 2, 3, 4] {
        check("overlay", seed);
    }
}

#[test]
fn diff_matches_the_truth_oci_format() {
    for seed in [5, 6, 7, 8] {
        check("oci", seed);
    }
}

#[test]
fn diff_matches_the_truth_kernel_written_upper() {
    if !is_root() {
        eprintln!("skipped as non-root: kernel overlayfs needs root");
        return;
    }
    for seed in [9, 10, 11] {
        check("kernel", seed);
    }
}

#[test]
fn diff_json_and_refusals() {
    let s = Scratch::new();
    let (l1, _) = lowers(&s);
    let up = s.mkdir("u");
    let mnt = s.mkdir("m");
    let m = Mounted::new(&[&l1], Some(&up), &mnt, &[]);
    fs::write(m.path("tmp-new.txt"), "x").expect("write");
    fs::remove_file(m.path("etc/tx")).expect("rm");
    drop(m);
    let out = run(&[
        "diff".as_ref(),
        "--json".as_ref(),
        "--upper".as_ref(),
        up.as_os_str(),
        "--lower".as_ref(),
        l1.as_os_str(),
    ]);
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "[{\"kind\":\"C\",\"path\":\"/etc\"},{\"kind\":\"D\",\"path\":\"/etc/tx\"},{\"kind\":\"A\",\"path\":\"/tmp-new.txt\"}]\n"
    );
    // Not a mount, and a missing upper: one line each, non-zero.
    for args in [
        vec![
            std::ffi::OsString::from("diff"),
            s.path("l1").into_os_string(),
        ],
        vec![
            "diff".into(),
            "--upper".into(),
            s.path("nope").into_os_string(),
            "--lower".into(),
            l1.clone().into_os_string(),
        ],
    ] {
        let refs: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_os_str()).collect();
        let out = run(&refs);
        assert!(!out.status.success());
        assert_eq!(
            String::from_utf8_lossy(&out.stderr).trim().lines().count(),
            1
        );
    }
}

/// A file name is any bytes: `diff --json` writes a path that is not UTF-8
/// as its lossy string plus `path_bytes`, its exact bytes, which decode back
/// to the very name made through the mount.
#[test]
fn diff_json_keeps_names_that_are_not_utf8() {
    use std::ffi::OsStr;
    use std::os::unix::ffi::OsStrExt;

    let s = Scratch::new();
    let l1 = s.mkdir("l1");
    mkdir(&l1, "d");
    fs::write(l1.join("d").join(OsStr::from_bytes(b"old\xff")), "x").expect("lower file");
    let up = s.mkdir("u");
    let mnt = s.mkdir("m");
    let m = Mounted::new(&[&l1], Some(&up), &mnt, &[]);
    let new_name = OsStr::from_bytes(b"caf\xe9 \"q\"\n");
    fs::write(m.path("d").join(new_name), "new").expect("create through the mount");
    fs::remove_file(m.path("d").join(OsStr::from_bytes(b"old\xff"))).expect("rm");
    fs::write(m.path("d/caf\u{e9}"), "utf-8").expect("create");
    assert!(
        fs::read_dir(m.path("d"))
            .expect("readdir")
            .any(|e| e.expect("entry").file_name() == new_name),
        "the name reads back through the mount"
    );
    // Once through the live mount, once from the layers after unmounting.
    let live = run(&["diff".as_ref(), "--json".as_ref(), mnt.as_os_str()]);
    drop(m);
    let offline = run(&[
        "diff".as_ref(),
        "--json".as_ref(),
        "--upper".as_ref(),
        up.as_os_str(),
        "--lower".as_ref(),
        l1.as_os_str(),
    ]);
    for out in [live, offline] {
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("valid JSON");
        let got: Vec<(String, Vec<u8>, bool)> = v
            .as_array()
            .expect("an array")
            .iter()
            .map(|c| {
                let path = c["path"].as_str().expect("path is a string");
                let exact = match c.get("path_bytes") {
                    Some(b) => b
                        .as_array()
                        .expect("path_bytes is an array")
                        .iter()
                        .map(|n| u8::try_from(n.as_u64().expect("a number")).expect("a byte"))
                        .collect(),
                    None => path.as_bytes().to_vec(),
                };
                assert_eq!(
                    path,
                    String::from_utf8_lossy(&exact),
                    "path is the lossy form"
                );
                let kind = c["kind"].as_str().expect("kind").to_string();
                (kind, exact, c.get("path_bytes").is_some())
            })
            .collect();
        assert_eq!(
            got,
            [
                // Sorted by bytes: UTF-8's 0xc3 0xa9 before the raw 0xe9.
                ("C".to_string(), b"/d".to_vec(), false),
                ("A".to_string(), "/d/caf\u{e9}".as_bytes().to_vec(), false),
                ("A".to_string(), b"/d/caf\xe9 \"q\"\n".to_vec(), true),
                ("D".to_string(), b"/d/old\xff".to_vec(), true),
            ]
        );
    }
}

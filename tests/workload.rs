//! A real workload on a writable mount: unpack a tarball of thousands of
//! files, build a C project with make, use git with branches, `sed -i` a
//! lower file, `mv` a lower directory, replace a lower tree. Afterwards
//! kernel overlayfs, mounting the same lowers and upper, must show exactly
//! the tree unionfuse showed, and the lowers must be untouched.
#![allow(unsafe_code)]

mod common;
#[path = "support/tree.rs"]
mod tree;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use common::*;
use tree::Opts;

const TAR_FILES: usize = 3000;

/// The top lower (`l0`) and the bottom one (`l1`).
fn build_lowers(s: &Scratch, l0: &Path, l1: &Path) {
    // The tarball's source tree lives outside the layers.
    let gen_root = s.mkdir("gen");
    for i in 0..TAR_FILES {
        write(
            &gen_root,
            &format!("pkg/d{:02}/f{i:04}.txt", i % 30),
            &format!("file {i}\n{}", "x".repeat(i % 700)),
        );
    }
    link(&gen_root, "pkg/latest", "d00/f0000.txt");
    let st = Command::new("tar")
        .arg("-cf")
        .arg(l1.join("payload.tar"))
        .arg("-C")
        .arg(&gen_root)
        .arg("pkg")
        .status()
        .expect("tar");
    assert!(st.success(), "tar -cf");

    write(
        l1,
        "proj/include/util.h",
        "#ifndef UTIL_H\n#define UTIL_H\nint util0(int);\nint util1(int);\nint util2(int);\nint util3(int);\n#endif\n",
    );
    for i in 0..4 {
        write(
            l1,
            &format!("proj/src/util{i}.c"),
            &format!(
                "#include \"util.h\"\nint util{i}(int x) {{ return x * {} + {i}; }}\n",
                i + 2
            ),
        );
    }
    write(
        l1,
        "proj/src/main.c",
        "#include <stdio.h>\n#include \"util.h\"\nint main(void) {\n    printf(\"%d\\n\", util0(1) + util1(2) + util2(3) + util3(4));\n    return 0;\n}\n",
    );
    write(
        l1,
        "proj/Makefile",
        "CFLAGS = -O0 -Iinclude\nOBJS = src/main.o src/util0.o src/util1.o src/util2.o src/util3.o\n\
app: $(OBJS)\n\t$(CC) -o $@ $(OBJS)\n\
src/%.o: src/%.c include/util.h\n\t$(CC) $(CFLAGS) -c -o $@ $<\n\
clean:\n\trm -f app $(OBJS)\n",
    );
    write(l0, "proj/README", "a small project\n");

    write(l1, "etc/app.conf", "name=app\ndebug=false\nlevel=1\n");
    write(l0, "etc/other.conf", "other=1\n");
    setxattr(l1, "etc/app.conf", "user.origin", b"l1");

    for d in 0..5 {
        for f in 0..10 {
            write(l1, &format!("olddir/s{d}/f{f}"), &format!("old {d} {f}\n"));
        }
    }
    write(l0, "olddir/top_only", "from l0\n");
    link(l1, "olddir/s0/link", "f0");

    for i in 0..100 {
        write(
            l1,
            &format!("data/a/b{}/old{i}", i % 7),
            &format!("old data {i}\n"),
        );
    }
    write(l0, "data/extra", "extra from l0\n");
}

const SCRIPT: &str = r#"
set -eu
mkdir unpacked
tar -xf payload.tar -C unpacked
make -s -C proj -j2
./proj/app > proj/out.txt

git init -q -b main repo
cp -r proj/src proj/include repo/
cd repo
git add -A
git commit -q -m one
git checkout -q -b feature
echo 'int extra_symbol;' >> src/main.c
git commit -q -a -m two
git checkout -q main
git checkout -q -b other
echo other > other.txt
git add other.txt
git commit -q -m three
git checkout -q feature
cd ..

sed -i 's/debug=false/debug=true/' etc/app.conf
mv olddir newdir
rm -rf data
mkdir data
for i in 1 2 3 4 5 6 7 8 9 10; do echo "new $i" > "data/n$i"; done
mkdir data/a
echo fresh > data/a/fresh
"#;

fn sh(dir: &Path, home: &Path, script: &str) -> String {
    let out = Command::new("sh")
        .arg("-c")
        .arg(script)
        .current_dir(dir)
        .env("HOME", home)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_AUTHOR_NAME", "t")
        .env("GIT_AUTHOR_EMAIL", "t@example.com")
        .env("GIT_COMMITTER_NAME", "t")
        .env("GIT_COMMITTER_EMAIL", "t@example.com")
        .env("LC_ALL", "C")
        .output()
        .expect("run sh");
    assert!(
        out.status.success(),
        "script failed in {} ({}):\n{}\n{}",
        dir.display(),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// What the workload must have produced, whatever the filesystem.
fn check_results(root: &Path, home: &Path, label: &str) {
    let r = |rel: &str| {
        fs::read_to_string(root.join(rel)).unwrap_or_else(|e| panic!("{label}: read {rel}: {e}"))
    };
    // util0(1)+util1(2)+util2(3)+util3(4) = 2 + 7 + 14 + 23
    assert_eq!(r("proj/out.txt"), "46\n", "{label}: program output");
    assert_eq!(
        r("etc/app.conf"),
        "name=app\ndebug=true\nlevel=1\n",
        "{label}: sed -i"
    );
    let mut unpacked = 0;
    let mut stack = vec![root.join("unpacked")];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).expect("read_dir") {
            let e = e.expect("entry");
            let ft = e.file_type().expect("type");
            if ft.is_dir() {
                stack.push(e.path());
            } else if ft.is_file() {
                unpacked += 1;
            }
        }
    }
    assert_eq!(unpacked, TAR_FILES, "{label}: files unpacked");
    assert_eq!(
        r("unpacked/pkg/d07/f2917.txt"),
        format!("file 2917\n{}", "x".repeat(2917 % 700)),
        "{label}: an unpacked file"
    );
    assert_eq!(
        fs::read_link(root.join("unpacked/pkg/latest")).expect("readlink"),
        PathBuf::from("d00/f0000.txt"),
        "{label}"
    );
    assert!(
        fs::symlink_metadata(root.join("olddir")).is_err(),
        "{label}: olddir still there"
    );
    assert_eq!(
        ls(&root.join("newdir")),
        ["s0", "s1", "s2", "s3", "s4", "top_only"],
        "{label}: mv"
    );
    assert_eq!(r("newdir/s4/f9"), "old 4 9\n", "{label}: mv");
    assert_eq!(r("newdir/s0/link"), "old 0 0\n", "{label}: mv");
    let mut want: Vec<String> = (1..=10).map(|i| format!("n{i}")).collect();
    want.push("a".into());
    want.sort();
    assert_eq!(ls(&root.join("data")), want, "{label}: re-created data");
    assert_eq!(ls(&root.join("data/a")), ["fresh"], "{label}: data/a");
    let git = sh(
        &root.join("repo"),
        home,
        "git rev-list --count feature; git rev-list --count other; git branch --show-current; git --no-optional-locks status --porcelain | wc -l",
    );
    assert_eq!(git, "2\n2\nfeature\n0\n", "{label}: git state");
}

fn mount_kernel(lowers: &[&Path], upper: &Path, work: &Path, mnt: &Path) -> KernelOverlay {
    KernelOverlay::new(lowers, Some((upper, work)), mnt, "")
        .unwrap_or_else(|e| panic!("kernel overlayfs is the oracle here: {e}"))
}

/// The workload on kernel overlayfs itself, so that the script and its
/// expected results are known good.
#[test]
fn workload_on_kernel_overlayfs() {
    if skip_as_non_root("kernel overlayfs needs root") {
        return;
    }
    let s = Scratch::new();
    let (l0, l1, upper, work, mnt, home) = (
        s.mkdir("l0"),
        s.mkdir("l1"),
        s.mkdir("upper"),
        s.mkdir("work"),
        s.mkdir("mnt"),
        s.mkdir("home"),
    );
    build_lowers(&s, &l0, &l1);
    let before = [&l0, &l1].map(|l| tree::manifest(l, &Opts::layer()));
    let lowers = [l0.as_path(), l1.as_path()];
    let k = mount_kernel(&lowers, &upper, &work, &mnt);
    let t0 = Instant::now();
    sh(&mnt, &home, SCRIPT);
    eprintln!("workload on kernel overlayfs: {:?}", t0.elapsed());
    check_results(&mnt, &home, "kernel overlayfs");
    drop(k);
    for (i, l) in [&l0, &l1].iter().enumerate() {
        tree::assert_same(
            &format!("lower {i}"),
            "before",
            &before[i],
            "after",
            &tree::manifest(l, &Opts::layer()),
        );
    }
}

#[test]
fn workload_on_unionfuse_then_kernel_reads_the_upper() {
    let s = Scratch::new();
    let (l0, l1, upper, fwork, kwork, mnt, home) = (
        s.mkdir("l0"),
        s.mkdir("l1"),
        s.mkdir("upper"),
        s.mkdir("fwork"),
        s.mkdir("kwork"),
        s.mkdir("mnt"),
        s.mkdir("home"),
    );
    build_lowers(&s, &l0, &l1);
    let before = [&l0, &l1].map(|l| tree::manifest(l, &Opts::layer()));
    let lowers = [l0.as_path(), l1.as_path()];
    let args = [
        "--work",
        fwork.to_str().expect("utf8"),
        "--whiteout",
        "overlay",
    ];
    let fuse_view = {
        let m = Mounted::new(&lowers, Some(&upper), &mnt, &args);
        let t0 = Instant::now();
        sh(&m.mnt, &home, SCRIPT);
        eprintln!("workload on unionfuse: {:?}", t0.elapsed());
        let v = tree::manifest(&m.mnt, &Opts::view());
        check_results(&m.mnt, &home, "unionfuse");
        v
    };
    assert!(!is_mountpoint(&mnt), "unionfuse still mounted");
    // Without root the upper can only be read back by unionfuse itself.
    let (reader, kernel_view) = if skip_as_non_root(
        "kernel overlayfs reading unionfuse's upper (needs root); a unionfuse remount reads it",
    ) {
        let m = Mounted::new(&lowers, Some(&upper), &mnt, &args);
        let v = tree::manifest(&m.mnt, &Opts::view());
        check_results(&m.mnt, &home, "unionfuse remounted over its upper");
        ("unionfuse remounted", v)
    } else {
        let _k = mount_kernel(&lowers, &upper, &kwork, &mnt);
        let v = tree::manifest(&mnt, &Opts::view());
        check_results(&mnt, &home, "kernel overlayfs over unionfuse's upper");
        ("kernel", v)
    };
    assert!(
        fuse_view.len() > TAR_FILES,
        "tree too small: {} objects",
        fuse_view.len()
    );
    tree::assert_same(
        "after the workload",
        "unionfuse",
        &fuse_view,
        reader,
        &kernel_view,
    );
    for (i, l) in [&l0, &l1].iter().enumerate() {
        tree::assert_same(
            &format!("lower {i}"),
            "before",
            &before[i],
            "after",
            &tree::manifest(l, &Opts::layer()),
        );
    }
}

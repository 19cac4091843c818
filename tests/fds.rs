//! Descriptor use stays bounded: a walk over more directories than the
//! daemon may keep open still sees every file with the right contents.
#![allow(unsafe_code)]
mod common;

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::process::Command;

use common::{Scratch, bin, is_mountpoint, unmount, write};

fn walk(root: &Path, rel: &str, out: &mut BTreeMap<String, String>) {
    let dir = if rel.is_empty() {
        root.to_path_buf()
    } else {
        root.join(rel)
    };
    for e in fs::read_dir(&dir).expect("read_dir") {
        let e = e.expect("entry");
        let name = e.file_name().to_string_lossy().into_owned();
        let r = if rel.is_empty() {
            name
        } else {
            format!("{rel}/{name}")
        };
        if e.file_type().expect("type").is_dir() {
            walk(root, &r, out);
        } else {
            out.insert(r.clone(), fs::read_to_string(root.join(&r)).expect("read"));
        }
    }
}

#[test]
fn walk_over_more_directories_than_the_descriptor_budget() {
    let s = Scratch::new();
    let (l1, l2, mnt) = (s.mkdir("l1"), s.mkdir("l2"), s.mkdir("mnt"));
    let mut expected = BTreeMap::new();
    // 300 directories in each layer, 200 of them merged from both, three
    // levels deep so that evicted parents must be re-opened on the way down.
    for d in 0..400 {
        let dir = format!("a{}/b{}/c{d}", d % 7, d % 3);
        for (layer, lo, hi) in [(&l1, 0, 300), (&l2, 100, 400)] {
            if (lo..hi).contains(&d) {
                let name = if layer == &l1 { "top" } else { "bottom" };
                write(layer, &format!("{dir}/{name}"), &format!("{name} {d}"));
                expected.insert(format!("{dir}/{name}"), format!("{name} {d}"));
            }
        }
    }
    let out = Command::new(bin())
        .env("UNIONFUSE_FD_BUDGET", "64")
        .args(["mount", "--lower"])
        .arg(&l1)
        .arg("--lower")
        .arg(&l2)
        .arg(&mnt)
        .output()
        .expect("run unionfuse");
    assert!(
        out.status.success(),
        "mount: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(is_mountpoint(&mnt));
    let mut seen = BTreeMap::new();
    walk(&mnt, "", &mut seen);
    // Twice: the second walk runs on the kernel's caches and the daemon's
    // evicted descriptors alike.
    let mut again = BTreeMap::new();
    walk(&mnt, "", &mut again);
    unmount(&mnt);
    assert_eq!(seen.len(), expected.len());
    assert_eq!(seen, expected);
    assert_eq!(again, expected);
}

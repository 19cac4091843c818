//! Power loss, simulated as filesystem test suites do on machines without
//! device-mapper: the upper lives on a journaled ext4 loop image, changes
//! are made through the mount and not synced, then the image's filesystem
//! is shut down with its journal flushed (`xfs_io -x -c "shutdown -f"`):
//! metadata that reached the journal survives, data never written back
//! does not, as after a power cut. After remounting everything, each
//! change must be either whole or absent: never a copied-up file that is
//! empty, zero-filled or partial, never half a rename.
// The fixtures in common/ need libc; every unsafe block there says why it
// is sound.
#![allow(unsafe_code)]

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use common::{Ext4, Mounted, Scratch, skip_as_non_root, write};

/// Deterministic bytes that are never all zeros.
fn data(len: usize, seed: u32) -> Vec<u8> {
    let mut x = seed.wrapping_mul(2_654_435_761) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            (x >> 3) as u8 | 1
        })
        .collect()
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .expect("read dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

const SIZES: [usize; 3] = [1 << 20, 4 << 20, 16 << 20];

#[test]
fn a_power_cut_leaves_each_change_whole_or_absent() {
    if skip_as_non_root("loop devices and the ext4 shutdown ioctl need root") {
        return;
    }
    let s = Scratch::new();
    let lower = s.mkdir("lower");
    for (i, n) in SIZES.iter().enumerate() {
        fs::write(lower.join(format!("f{i}")), data(*n, i as u32)).expect("lower file");
    }
    write(&lower, "gone", "to be deleted\n");
    write(&lower, "opq/a", "a\n");
    write(&lower, "opq/b", "b\n");
    fs::write(lower.join("mv_src"), data(1 << 20, 9)).expect("lower file");
    let ext4 = Ext4::new(&s, "ext4");
    let (upper, work) = ext4.upper_and_work();
    let mnt = s.mkdir("mnt");
    let work_arg = work.to_str().expect("utf-8 path");

    let m = Mounted::new(&[&lower], Some(&upper), &mnt, &["--work", work_arg]);
    for i in 0..SIZES.len() {
        let mut f = fs::OpenOptions::new()
            .append(true)
            .open(m.path(&format!("f{i}")))
            .expect("open for append");
        std::io::Write::write_all(&mut f, b"+").expect("append");
    }
    fs::remove_file(m.path("gone")).expect("rm");
    fs::remove_dir_all(m.path("opq")).expect("rm -r");
    fs::create_dir(m.path("opq")).expect("mkdir");
    fs::write(m.path("opq/new"), "new\n").expect("write");
    fs::rename(m.path("mv_src"), m.path("mv_dst")).expect("rename");
    ext4.power_cut();
    drop(m);
    ext4.reboot();

    let m = Mounted::new(&[&lower], Some(&upper), &mnt, &["--work", work_arg]);
    for (i, n) in SIZES.iter().enumerate() {
        let want = data(*n, i as u32);
        let got = fs::read(m.path(&format!("f{i}"))).expect("read copied-up file");
        let whole = got == want || (got.len() == n + 1 && got[..*n] == want[..] && got[*n] == b'+');
        let zeros = got.iter().filter(|b| **b == 0).count();
        assert!(
            whole,
            "f{i} ({n} bytes) came back as {} bytes, {zeros} of them zero",
            got.len()
        );
    }
    match fs::read_to_string(m.path("gone")) {
        Ok(t) => assert_eq!(t, "to be deleted\n"),
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::NotFound),
    }
    let opq = names(&m.path("opq"));
    assert!(
        opq == ["a", "b"] || opq == ["new"] || opq.is_empty(),
        "opq holds {opq:?}: a mix of the old and the new directory"
    );
    if opq == ["new"] {
        let t = fs::read_to_string(m.path("opq/new")).expect("read");
        // A new file that nobody synced may come back empty, as on any
        // filesystem; never with other bytes.
        assert!(t.is_empty() || t == "new\n", "opq/new holds {t:?}");
    }
    let (src, dst) = (m.path("mv_src").exists(), m.path("mv_dst").exists());
    assert!(src != dst, "after the rename: mv_src {src}, mv_dst {dst}");
    let moved = fs::read(m.path(if src { "mv_src" } else { "mv_dst" })).expect("read");
    assert!(moved == data(1 << 20, 9), "the renamed file lost its data");
    drop(m);
    for (i, n) in SIZES.iter().enumerate() {
        assert_eq!(
            fs::read(lower.join(format!("f{i}"))).expect("lower"),
            data(*n, i as u32),
            "the lower changed"
        );
    }
}

/// A copy-up's name is synced by the first fsync of the file rather than
/// by the copy-up itself: an fsync after a first write must still bring
/// back the whole written file after a power cut that loses everything
/// not synced, whether it was opened plainly (and fsynced or fdatasynced)
/// or with O_SYNC, and whatever size the copy had.
#[test]
fn an_fsync_after_a_copy_up_makes_the_copy_durable() {
    if skip_as_non_root("loop devices and the ext4 shutdown ioctl need root") {
        return;
    }
    let s = Scratch::new();
    let lower = s.mkdir("lower");
    let files = [
        ("fsync", 4096),
        ("fdatasync", 4096),
        ("o_sync", 4096),
        ("big", 24 << 20),
    ];
    fs::create_dir(lower.join("d")).expect("lower dir");
    for (i, (name, n)) in files.iter().enumerate() {
        fs::write(lower.join(format!("d/{name}")), data(*n, i as u32)).expect("lower file");
    }
    let ext4 = Ext4::new(&s, "ext4");
    let (upper, work) = ext4.upper_and_work();
    let mnt = s.mkdir("mnt");
    let work_arg = work.to_str().expect("utf-8 path");

    let m = Mounted::new(&[&lower], Some(&upper), &mnt, &["--work", work_arg]);
    for (name, _) in files {
        let mut o = fs::OpenOptions::new();
        o.append(true);
        if name == "o_sync" {
            std::os::unix::fs::OpenOptionsExt::custom_flags(&mut o, libc::O_SYNC);
        }
        let mut f = o.open(m.path(&format!("d/{name}"))).expect("open");
        std::io::Write::write_all(&mut f, b"+").expect("append");
        match name {
            "fdatasync" => f.sync_data().expect("fdatasync"),
            "o_sync" => {}
            _ => f.sync_all().expect("fsync"),
        }
    }
    ext4.power_cut_unflushed();
    drop(m);
    ext4.reboot();

    let m = Mounted::new(&[&lower], Some(&upper), &mnt, &["--work", work_arg]);
    for (i, (name, n)) in files.iter().enumerate() {
        let mut want = data(*n, i as u32);
        want.push(b'+');
        let got = fs::read(m.path(&format!("d/{name}"))).expect("read");
        assert!(
            got == want,
            "d/{name} came back as {} bytes instead of {}",
            got.len(),
            want.len()
        );
    }
}

/// The same for a metadata-only copy (`--metacopy`): a chmod, then an
/// fsync of the file, survives a power cut, the data still read below.
#[test]
fn an_fsync_after_a_metadata_copy_up_makes_it_durable() {
    if skip_as_non_root("loop devices and the ext4 shutdown ioctl need root") {
        return;
    }
    let s = Scratch::new();
    let lower = s.mkdir("lower");
    fs::write(lower.join("f"), data(1 << 20, 3)).expect("lower file");
    let ext4 = Ext4::new(&s, "ext4");
    let (upper, work) = ext4.upper_and_work();
    let mnt = s.mkdir("mnt");
    let args = ["--work", work.to_str().expect("utf-8 path"), "--metacopy"];

    let m = Mounted::new(&[&lower], Some(&upper), &mnt, &args);
    fs::set_permissions(m.path("f"), fs::Permissions::from_mode(0o600)).expect("chmod");
    fs::File::open(m.path("f"))
        .and_then(|f| f.sync_all())
        .expect("fsync");
    ext4.power_cut_unflushed();
    drop(m);
    ext4.reboot();

    let m = Mounted::new(&[&lower], Some(&upper), &mnt, &args);
    let meta = fs::metadata(m.path("f")).expect("stat");
    assert_eq!(
        meta.permissions().mode() & 0o7777,
        0o600,
        "the chmod was lost"
    );
    assert!(
        fs::read(m.path("f")).expect("read") == data(1 << 20, 3),
        "the data changed"
    );
}

/// An upper filesystem that fills up: a copy-up that does not fit fails
/// with ENOSPC and leaves the file as it was (the lower shows through) and
/// nothing in staging or the upper; once space is freed, the same mount
/// copies up again.
#[test]
fn a_full_upper_fails_with_enospc_and_recovers() {
    if skip_as_non_root("a small tmpfs for the upper needs root") {
        return;
    }
    let s = Scratch::new();
    let lower = s.mkdir("lower");
    fs::write(lower.join("big"), data(4 << 20, 1)).expect("lower file");
    fs::write(lower.join("small"), data(1000, 2)).expect("lower file");
    let t = common::Tmpfs::new(&s.path("tmpfs"), "2m");
    let upper = t.path.join("upper");
    let work = t.path.join("work");
    fs::create_dir(&upper).expect("upper");
    fs::create_dir(&work).expect("work");
    let mnt = s.mkdir("mnt");
    let m = Mounted::new(
        &[&lower],
        Some(&upper),
        &mnt,
        &["--work", work.to_str().expect("utf-8")],
    );
    let append = |name: &str| {
        let mut f = fs::OpenOptions::new().append(true).open(m.path(name))?;
        std::io::Write::write_all(&mut f, b"+")
    };
    let e = append("big").expect_err("a 4 MiB copy-up into 2 MiB");
    assert_eq!(e.raw_os_error(), Some(libc::ENOSPC), "{e}");
    assert_eq!(fs::read(m.path("big")).expect("read"), data(4 << 20, 1));
    assert!(names(&upper).is_empty(), "upper holds {:?}", names(&upper));
    assert!(
        names(&work.join("unionfuse-staging")).is_empty(),
        "staging not emptied"
    );
    // Fill the rest with a new file, then free it.
    let mut filler = fs::File::create(m.path("filler")).expect("create");
    let mut wrote = 0usize;
    let full = loop {
        match std::io::Write::write_all(&mut filler, &[7u8; 65536]) {
            Ok(()) => wrote += 65536,
            Err(e) => break e,
        }
        assert!(wrote < (4 << 20), "a 2 MiB filesystem took {wrote} bytes");
    };
    assert_eq!(full.raw_os_error(), Some(libc::ENOSPC), "{full}");
    drop(filler);
    let e = append("small").expect_err("no room left for a copy-up");
    assert_eq!(e.raw_os_error(), Some(libc::ENOSPC), "{e}");
    assert_eq!(fs::read(m.path("small")).expect("read"), data(1000, 2));
    fs::remove_file(m.path("filler")).expect("free the space");
    append("small").expect("a copy-up once there is room");
    let mut want = data(1000, 2);
    want.push(b'+');
    assert_eq!(fs::read(m.path("small")).expect("read"), want);
    assert_eq!(fs::read(lower.join("small")).expect("lower"), data(1000, 2));
    drop(m);
    assert!(names(&work.join("unionfuse-staging")).is_empty());
}

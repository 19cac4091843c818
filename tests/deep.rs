//! Trees far deeper than PATH_MAX allows to name at once, as images may
//! hold: the daemon and the tooling walk them without recursion on a
//! small stack, reaching every level through descriptors.
// The fixtures in common/ and the *at calls below need libc; every unsafe
// block says why it is sound.
#![allow(unsafe_code)]

mod common;

use std::ffi::CStr;
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd};
use std::path::Path;

use common::{Mounted, Scratch};

/// Levels of the deep chain; its full path is about twice as many bytes.
const DEPTH: usize = 4000;

fn openat_dir(dir: &File, name: &CStr) -> std::io::Result<File> {
    // SAFETY: name is NUL-terminated; the fd returned is owned by the File.
    let fd = unsafe {
        libc::openat(
            dir.as_raw_fd(),
            name.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd was just returned by openat and is owned by nobody else.
    Ok(unsafe { File::from_raw_fd(fd) })
}

fn mkdirat(dir: &File, name: &CStr) -> std::io::Result<()> {
    // SAFETY: name is NUL-terminated.
    if unsafe { libc::mkdirat(dir.as_raw_fd(), name.as_ptr(), 0o755) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// `root/top/d/d/.../d` (DEPTH levels below `top`); returns the bottom.
fn make_chain(root: &Path) -> File {
    let mut dir = File::open(root).expect("open root");
    mkdirat(&dir, c"top").expect("mkdir top");
    dir = openat_dir(&dir, c"top").expect("open top");
    for _ in 0..DEPTH {
        mkdirat(&dir, c"d").expect("mkdir");
        dir = openat_dir(&dir, c"d").expect("open");
    }
    dir
}

/// The bottom of the chain under `root/top_name`.
fn walk_chain(root: &Path, top_name: &CStr) -> std::io::Result<File> {
    let mut dir = openat_dir(&File::open(root)?, top_name)?;
    for _ in 0..DEPTH {
        dir = openat_dir(&dir, c"d")?;
    }
    Ok(dir)
}

fn create_at(dir: &File, name: &CStr, data: &[u8]) {
    // SAFETY: name is NUL-terminated; the fd returned is owned by the File.
    let fd = unsafe {
        libc::openat(
            dir.as_raw_fd(),
            name.as_ptr(),
            libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_CLOEXEC,
            0o644,
        )
    };
    assert!(fd >= 0, "create: {}", std::io::Error::last_os_error());
    // SAFETY: as above.
    let mut f = unsafe { File::from_raw_fd(fd) };
    std::io::Write::write_all(&mut f, data).expect("write");
}

fn read_at(dir: &File, name: &CStr) -> Vec<u8> {
    // SAFETY: name is NUL-terminated; the fd returned is owned by the File.
    let fd = unsafe {
        libc::openat(
            dir.as_raw_fd(),
            name.as_ptr(),
            libc::O_RDONLY | libc::O_CLOEXEC,
        )
    };
    assert!(fd >= 0, "open: {}", std::io::Error::last_os_error());
    // SAFETY: as above.
    let mut f = unsafe { File::from_raw_fd(fd) };
    let mut v = Vec::new();
    std::io::Read::read_to_end(&mut f, &mut v).expect("read");
    v
}

/// A file created at the bottom of a lower chain 4,000 levels deep (every
/// ancestor copied up), then the chain's top directory renamed (the whole
/// lower tree copied up), with the descriptor cache so small that every
/// level is re-opened from its parent: the daemon survives, the tree is
/// right after a remount, and `diff` walks it.
#[test]
fn a_tree_thousands_of_levels_deep_is_written_renamed_and_diffed() {
    // A descriptor cache far smaller than the depth: every level is
    // re-opened from its parent's descriptor again and again.
    // SAFETY: the only test of this binary, so no other thread reads the
    // environment while it changes; the daemons it starts inherit it.
    unsafe { std::env::set_var("UNIONFUSE_FD_BUDGET", "64") };
    let s = Scratch::new();
    let lower = s.mkdir("lower");
    let bottom = make_chain(&lower);
    create_at(&bottom, c"leaf", b"lower leaf\n");
    drop(bottom);
    let upper = s.mkdir("upper");
    let mnt = s.mkdir("mnt");
    let work = s.mkdir("work");
    let work = work.to_str().expect("utf-8");
    let m = Mounted::new(&[&lower], Some(&upper), &mnt, &["--work", work]);
    {
        let bottom = walk_chain(&m.mnt, c"top").expect("walk down the mount");
        create_at(&bottom, c"new", b"made at the bottom\n");
        assert_eq!(read_at(&bottom, c"leaf"), b"lower leaf\n");
    }
    std::fs::rename(m.path("top"), m.path("moved")).expect("rename the deep lower tree");
    {
        let bottom = walk_chain(&m.mnt, c"moved").expect("walk the renamed tree");
        assert_eq!(read_at(&bottom, c"new"), b"made at the bottom\n");
        assert_eq!(read_at(&bottom, c"leaf"), b"lower leaf\n");
    }
    assert!(
        walk_chain(&m.mnt, c"top").is_err(),
        "the old name still resolves"
    );
    drop(m);

    let m = Mounted::new(&[&lower], Some(&upper), &mnt, &["--work", work]);
    let bottom = walk_chain(&m.mnt, c"moved").expect("walk after a remount");
    assert_eq!(read_at(&bottom, c"new"), b"made at the bottom\n");
    drop(bottom);
    drop(m);

    // Megabytes of paths: to a file, not a pipe nobody reads until exit.
    let listing = s.path("diff.txt");
    let out = std::process::Command::new(common::bin())
        .arg("diff")
        .arg("--upper")
        .arg(&upper)
        .arg("--lower")
        .arg(&lower)
        .stdout(File::create(&listing).expect("diff output"))
        .output()
        .expect("run unionfuse diff");
    assert!(
        out.status.success(),
        "diff of a deep upper: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read(&listing).expect("read diff");
    let text = String::from_utf8_lossy(&text);
    assert!(
        text.contains("D /top\n"),
        "{}",
        &text[..text.len().min(300)]
    );
    assert!(
        text.lines().any(|l| l.starts_with("A /moved/d/d/")),
        "no added deep path"
    );
    // The lower is untouched.
    let bottom = walk_chain(&lower, c"top").expect("lower chain");
    assert_eq!(read_at(&bottom, c"leaf"), b"lower leaf\n");
}

//! Data integrity in the style of fsx: random reads, writes, truncates,
//! fallocates, mmap writes and reads on files that start in a lower layer,
//! through handles opened before and after their copy-up (which happens at
//! whatever moment a handle is first opened for writing), each result
//! checked against an in-memory model of the file. After the run the mount
//! is remounted and every file compared once more, and the lower must be
//! unchanged.
//!
//! Seeded and reproducible: `UNIONFUSE_FSX_SEED` (default 1) and
//! `UNIONFUSE_FSX_OPS` (default 100000); the seed and the failing step are
//! printed on failure.
// The *at calls, mmap and the fixtures in common/ need libc; every unsafe
// block says why it is sound.
#![allow(unsafe_code)]

mod common;

use std::fs::{self, File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::Path;

use common::{Mounted, Scratch};

const FILES: usize = 4;
/// Largest size a file grows to, and longest single transfer.
const MAX_SIZE: u64 = 512 * 1024;
const MAX_LEN: u64 = 64 * 1024;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next() % n }
    }
}

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// One file: the model of its bytes and the handles open on it.
struct Subject {
    name: String,
    model: Vec<u8>,
    /// Opened read-only, possibly before the copy-up.
    ro: Option<File>,
    /// What `ro` reads when it was opened before the copy-up on a mount
    /// that passes lower files through: the lower data, for its whole life.
    ro_pinned: Option<Vec<u8>>,
    rw: Option<File>,
    /// The lower file's data.
    lower: Vec<u8>,
    /// Opened for writing or changed at least once: copied up.
    copied: bool,
}

/// Whether a read-only handle opened on `s` before its copy-up keeps the
/// lower data (see `common::lower_passthrough`).
fn pins(s: &Subject) -> bool {
    static PINS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    !s.copied
        && s.lower.len() >= common::LOWER_PASSTHROUGH_MIN
        && *PINS.get_or_init(|| common::lower_passthrough(&[]))
}

fn fill(rng: &mut Rng, len: usize) -> Vec<u8> {
    let tag = (rng.next() as u8) | 1;
    (0..len)
        .map(|i| tag.wrapping_add((i % 251) as u8))
        .collect()
}

fn check_read(what: &str, f: &File, model: &[u8], off: u64, len: u64) -> Result<(), String> {
    let mut buf = vec![0u8; len as usize];
    let mut got = 0usize;
    while got < buf.len() {
        match f.read_at(&mut buf[got..], off + got as u64) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) => return Err(format!("{what}: read at {off}+{len}: {e}")),
        }
    }
    let end = (off as usize).saturating_add(len as usize).min(model.len());
    let want = if (off as usize) < model.len() {
        &model[off as usize..end]
    } else {
        &[][..]
    };
    if &buf[..got] != want {
        let first = buf[..got]
            .iter()
            .zip(want)
            .position(|(a, b)| a != b)
            .unwrap_or(got.min(want.len()));
        return Err(format!(
            "{what}: read at {off}+{len} gave {got} bytes, model has {}; first difference at {}",
            want.len(),
            off as usize + first
        ));
    }
    Ok(())
}

fn errno<T>(r: std::io::Result<T>, what: &str) -> Result<T, String> {
    r.map_err(|e| format!("{what}: {e}"))
}

fn cvt(rc: libc::c_int, what: &str) -> Result<(), String> {
    if rc < 0 {
        return Err(format!("{what}: {}", std::io::Error::last_os_error()));
    }
    Ok(())
}

/// Writes `data` at `off` through a shared mapping of `f` (which must
/// already be at least `off + data.len()` long), then syncs the mapping.
fn mmap_write(f: &File, off: u64, data: &[u8]) -> Result<(), String> {
    let page = 4096u64;
    let start = off / page * page;
    let len = (off + data.len() as u64 - start) as usize;
    // SAFETY: a fresh shared mapping of a file this test owns, within its
    // size; unmapped below before anything else uses the region.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            f.as_raw_fd(),
            start as libc::off_t,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(format!("mmap: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: the mapping is `len` bytes long and writable; the copy stays
    // inside it.
    unsafe {
        std::ptr::copy_nonoverlapping(
            data.as_ptr(),
            (p as *mut u8).add((off - start) as usize),
            data.len(),
        );
    }
    // SAFETY: p and len are the mapping made above.
    let synced = unsafe { libc::msync(p, len, libc::MS_SYNC) };
    // SAFETY: as above; the mapping is not used afterwards.
    unsafe { libc::munmap(p, len) };
    cvt(synced, "msync")
}

/// Reads `len` bytes at `off` through a private mapping and compares.
fn mmap_check(f: &File, model: &[u8], off: u64, len: u64) -> Result<(), String> {
    let page = 4096u64;
    let start = off / page * page;
    let maplen = (off + len - start) as usize;
    // SAFETY: a fresh read-only mapping within the file's size.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            maplen,
            libc::PROT_READ,
            libc::MAP_SHARED,
            f.as_raw_fd(),
            start as libc::off_t,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(format!("mmap: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: the slice lies inside the mapping, which lives until munmap.
    let got = unsafe {
        std::slice::from_raw_parts((p as *const u8).add((off - start) as usize), len as usize)
    }
    .to_vec();
    // SAFETY: p and maplen are the mapping made above.
    unsafe { libc::munmap(p, maplen) };
    if got != model[off as usize..(off + len) as usize] {
        return Err(format!("mmap read at {off}+{len} differs from the model"));
    }
    Ok(())
}

/// One random step on `s`; `Err` describes a mismatch or an unexpected
/// error.
fn step(rng: &mut Rng, s: &mut Subject, dir: &Path) -> Result<String, String> {
    let path = dir.join(&s.name);
    let size = s.model.len() as u64;
    match rng.below(100) {
        // Open a read-only handle (before or after the copy-up).
        0..=4 => {
            s.ro = Some(errno(File::open(&path), "open ro")?);
            s.ro_pinned = pins(s).then(|| s.lower.clone());
            Ok("open O_RDONLY".into())
        }
        // Open for writing: copies the file up if it is still the lower's.
        5..=9 => {
            s.copied = true;
            s.rw = Some(errno(
                OpenOptions::new().read(true).write(true).open(&path),
                "open rw",
            )?);
            Ok("open O_RDWR".into())
        }
        10..=12 => {
            s.ro = None;
            s.ro_pinned = None;
            s.rw = None;
            Ok("close all".into())
        }
        // Reads through whichever handle, or a fresh one.
        13..=44 => {
            let off = rng.below(size + 1024);
            let len = rng.below(MAX_LEN) + 1;
            let which = rng.below(3);
            let fresh;
            let f = match (which, &s.ro, &s.rw) {
                (0, Some(f), _) => f,
                (1, _, Some(f)) => f,
                _ => {
                    fresh = errno(File::open(&path), "open")?;
                    &fresh
                }
            };
            let seen = match (which, &s.ro, &s.ro_pinned) {
                (0, Some(_), Some(pinned)) => pinned,
                _ => &s.model,
            };
            check_read("pread", f, seen, off, len)?;
            Ok(format!("pread {off}+{len} (handle {which})"))
        }
        45..=69 => {
            s.copied = true;
            let off = rng.below(MAX_SIZE - MAX_LEN);
            let len = rng.below(MAX_LEN) + 1;
            let data = fill(rng, len as usize);
            let f = match &s.rw {
                Some(f) => f,
                None => {
                    s.rw = Some(errno(
                        OpenOptions::new().read(true).write(true).open(&path),
                        "open rw",
                    )?);
                    s.rw.as_ref().unwrap_or_else(|| unreachable!())
                }
            };
            errno(f.write_all_at(&data, off), "pwrite")?;
            let end = (off + len) as usize;
            if s.model.len() < end {
                s.model.resize(end, 0);
            }
            s.model[off as usize..end].copy_from_slice(&data);
            Ok(format!("pwrite {off}+{len}"))
        }
        70..=76 => {
            s.copied = true;
            let len = rng.below(MAX_SIZE);
            if rng.below(2) == 0 {
                let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
                    .map_err(|e| e.to_string())?;
                // SAFETY: c is a valid path.
                let rc = unsafe { libc::truncate(c.as_ptr(), len as libc::off_t) };
                cvt(rc, "truncate")?;
            } else {
                let f = errno(OpenOptions::new().write(true).open(&path), "open w")?;
                errno(f.set_len(len), "ftruncate")?;
            }
            s.model.resize(len as usize, 0);
            Ok(format!("truncate {len}"))
        }
        77..=83 => {
            s.copied = true;
            let f = errno(
                OpenOptions::new().read(true).write(true).open(&path),
                "open rw",
            )?;
            let off = rng.below(MAX_SIZE - MAX_LEN);
            let len = rng.below(MAX_LEN) + 1;
            let (mode, what) = match rng.below(3) {
                0 => (0, "fallocate"),
                1 => (libc::FALLOC_FL_KEEP_SIZE, "fallocate keep-size"),
                _ => (
                    libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                    "punch hole",
                ),
            };
            let (o, l) = (off as libc::off_t, len as libc::off_t);
            // SAFETY: plain integers on a descriptor this test owns.
            let rc = unsafe { libc::fallocate(f.as_raw_fd(), mode, o, l) };
            cvt(rc, what)?;
            let end = (off + len) as usize;
            if mode == 0 && s.model.len() < end {
                s.model.resize(end, 0);
            }
            if mode & libc::FALLOC_FL_PUNCH_HOLE != 0 && (off as usize) < s.model.len() {
                let stop = end.min(s.model.len());
                s.model[off as usize..stop].fill(0);
            }
            Ok(format!("{what} {off}+{len}"))
        }
        84..=91 if size > 0 => {
            s.copied = true;
            let off = rng.below(size);
            let len = rng.below((size - off).min(MAX_LEN)) + 1;
            let data = fill(rng, len as usize);
            let f = errno(
                OpenOptions::new().read(true).write(true).open(&path),
                "open rw",
            )?;
            mmap_write(&f, off, &data)?;
            s.model[off as usize..(off + len) as usize].copy_from_slice(&data);
            Ok(format!("mmap write {off}+{len}"))
        }
        92..=95 if size > 0 => {
            let off = rng.below(size);
            let len = rng.below((size - off).min(MAX_LEN)) + 1;
            let f = errno(File::open(&path), "open")?;
            mmap_check(&f, &s.model, off, len)?;
            Ok(format!("mmap read {off}+{len}"))
        }
        _ => {
            let md = errno(fs::metadata(&path), "stat")?;
            if md.len() != size {
                return Err(format!("stat size {} but the model has {size}", md.len()));
            }
            Ok("stat".into())
        }
    }
}

#[test]
fn random_io_across_copy_up_matches_a_model() {
    let seed = env_num("UNIONFUSE_FSX_SEED", 1);
    let ops = env_num("UNIONFUSE_FSX_OPS", 100_000);
    let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let s = Scratch::new();
    let lower = s.mkdir("lower");
    let upper = s.mkdir("upper");
    let work = s.mkdir("work");
    let mnt = s.mkdir("mnt");
    let mut subjects = Vec::new();
    for i in 0..FILES {
        let name = format!("f{i}");
        // The first file large enough to be passed through, whatever the
        // seed.
        let len = match i {
            0 => (MAX_SIZE - rng.below(MAX_SIZE / 4)) as usize,
            _ => rng.below(MAX_SIZE) as usize,
        };
        let data = fill(&mut rng, len);
        fs::write(lower.join(&name), &data).expect("lower file");
        subjects.push(Subject {
            name,
            lower: data.clone(),
            model: data,
            ro: None,
            ro_pinned: None,
            rw: None,
            copied: false,
        });
    }
    let work_arg = work.to_str().expect("utf-8");
    let m = Mounted::new(&[&lower], Some(&upper), &mnt, &["--work", work_arg]);
    // Handles opened before any copy-up, whatever the seed.
    for s in subjects.iter_mut().take(2) {
        s.ro = Some(File::open(m.mnt.join(&s.name)).expect("open ro"));
        s.ro_pinned = pins(s).then(|| s.lower.clone());
    }
    let mut recent: Vec<String> = Vec::new();
    for n in 0..ops {
        let i = rng.below(FILES as u64) as usize;
        match step(&mut rng, &mut subjects[i], &m.mnt) {
            Ok(what) => {
                recent.push(format!("#{n} f{i}: {what}"));
                if recent.len() > 12 {
                    recent.remove(0);
                }
            }
            Err(e) => panic!(
                "fsx seed {seed}, step #{n} on f{i}: {e}\nreproduce: UNIONFUSE_FSX_SEED={seed} UNIONFUSE_FSX_OPS={ops} cargo test --test fsx\nsteps before it:\n  {}",
                recent.join("\n  ")
            ),
        }
    }
    for s in &mut subjects {
        s.ro = None;
        s.rw = None;
    }
    drop(m);
    let m = Mounted::new(&[&lower], Some(&upper), &mnt, &["--work", work_arg]);
    for s in &subjects {
        let got = fs::read(m.path(&s.name)).expect("read after remount");
        assert!(
            got == s.model,
            "fsx seed {seed}: {} after remount: {} bytes, model {}",
            s.name,
            got.len(),
            s.model.len()
        );
    }
    drop(m);
    for s in &subjects {
        assert!(
            fs::read(lower.join(&s.name)).expect("lower") == s.lower,
            "the lower {} changed",
            s.name
        );
    }
}

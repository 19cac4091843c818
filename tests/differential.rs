//! Randomized differential test of the writable layer: the same seeded
//! sequence of changes goes to unionfuse and to kernel overlayfs, each over
//! its own identical build of two random lower layers and an empty upper, and
//! every call's result and errno must agree, as must the merged trees along
//! the way, at the end, and the uppers once both are unmounted.
//!
//! Kernel overlayfs is mounted with `redirect_dir=off,index=on,metacopy=off`.
//! `index=on` because unionfuse keeps hard links whole across copy-up (a
//! lower hard link written through one name shows the data under the
//! others, `link` to a lower file shares one inode and `st_ino`), which is
//! what the kernel does only with an index. `redirect_dir=off` makes the
//! kernel refuse with EXDEV to rename a directory that exists in a lower
//! layer (and to exchange one), which unionfuse deliberately performs.
//! For such a call the expected result is what a plain directory holding a
//! copy of the kernel's merged tree answers, and when that is success the
//! kernel side is brought to the same merged state the way `mv` does it:
//! copy the tree through the mount, then delete the source. A copy is only
//! the same as a rename when no file in the moved trees has another name
//! (it would break the link), so such a call is skipped on both sides; that
//! keeps the kernel an exact oracle for everything that follows.
//!
//! Uppers are compared by what they mean, not byte by byte: the kernel's own
//! upper, unionfuse's upper mounted by kernel overlayfs, and unionfuse's upper
//! mounted again by unionfuse must all show the kernel's final merged tree.
//!
//! What is compared: names, types, permission bits, owners, sizes, contents,
//! symlink targets, `user.*` xattrs, `st_nlink` and hard-link groups of
//! non-directories, and the mtime wherever it is a fixed one (from a layer or
//! from a utimes call; anything touched since shows "recent" on both sides).
//! Not compared: directory sizes and link counts (unionfuse documents a
//! different count for merged directories), atime, ctime, raw inode numbers
//! (the layers are different copies). `st_ino` stability is checked per call:
//! a write, truncate, chmod, rename, ... reports whether the object kept its
//! inode number, and the kernel (all layers on one filesystem) keeps it.
//!
//! On a mismatch the sequence is shrunk (delta debugging on fresh layers,
//! keeping only changes that preserve the same kind of failure) and the test
//! panics with the seed and the shortest failing sequence it found.
//!
//! Environment:
//! - `UNIONFUSE_DIFF_SEED=N`: first seed (default 1); with it alone, one run.
//! - `UNIONFUSE_DIFF_RUNS=N`: number of seeds (default 8).
//! - `UNIONFUSE_DIFF_OPS=N`: operations per run (default 400).
//! - `UNIONFUSE_DIFF_LONG=1`: 200 runs of 3000 operations unless the above
//!   say otherwise.
//! - `UNIONFUSE_DIFF_SHRINK_SECS=N`: time allowed for shrinking (default 180).
//! - `UNIONFUSE_NO_KERNEL_ORACLE=1`: skip, loudly, without root or overlayfs.
#![allow(unsafe_code)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::CString;
use std::fmt;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{KernelOverlay, Mounted, Scratch, is_root, whiteout_chr};

/// Options that make kernel overlayfs behave the same on every machine,
/// whatever its module defaults.
const KERNEL_OPTS: &str = "redirect_dir=off,index=on,metacopy=off";

/// Times below this are fixed ones (layers, utimes); anything the tests
/// touch gets the current time, above it.
const FIXED_TIME_LIMIT: i64 = 1_700_000_000;

/// Ops between two comparisons of the whole merged trees.
const CHECK_EVERY: usize = 25;

/// Scratch names the `mv` emulation uses; outside the generated name pool.
const TMP_A: &str = ".diff-tmp-a";
const TMP_B: &str = ".diff-tmp-b";

// ---------------------------------------------------------------------------
// Deterministic generator.
// ---------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct SplitMix(u64);

impl SplitMix {
    fn new(seed: u64, stream: u64) -> SplitMix {
        SplitMix(seed ^ stream.wrapping_mul(0xd1b5_4a32_d192_ed03))
    }
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn pick<T: Copy>(&mut self, v: &[T]) -> T {
        v[self.below(v.len() as u64) as usize]
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// A small name pool, so that changes keep landing on names the lowers
/// have. Files are mostly called a to d and directories x and y, so that
/// most calls reach something, but any name may be either.
const FILE_NAMES: &[&str] = &["a", "b", "c", "d"];
const DIR_NAMES: &[&str] = &["x", "y"];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Leaf {
    File,
    Dir,
    Any,
}

fn random_path(rng: &mut SplitMix, leaf: Leaf) -> String {
    let depth = match rng.below(100) {
        0..=44 => 1,
        45..=84 => 2,
        _ => 3,
    };
    let mut parts: Vec<&str> = (1..depth)
        .map(|_| {
            if rng.chance(92) {
                rng.pick(DIR_NAMES)
            } else {
                rng.pick(FILE_NAMES)
            }
        })
        .collect();
    let dir_percent = match leaf {
        Leaf::File => 15,
        Leaf::Dir => 75,
        Leaf::Any => 35,
    };
    parts.push(if rng.chance(dir_percent) {
        rng.pick(DIR_NAMES)
    } else {
        rng.pick(FILE_NAMES)
    });
    parts.join("/")
}

// ---------------------------------------------------------------------------
// Lower layers.
// ---------------------------------------------------------------------------

#[derive(Debug, Clone)]
enum Entry {
    File(String, Vec<u8>, u32),
    Dir(String, u32),
    Sym(String, String),
    /// existing, new name (in the same directory)
    Hard(String, String),
    Whiteout(String),
    Opaque(String),
    Xattr(String, String, Vec<u8>),
}

impl fmt::Display for Entry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Entry::File(p, d, m) => write!(f, "file {p} {m:o} ({} bytes)", d.len()),
            Entry::Dir(p, m) => write!(f, "dir {p} {m:o}"),
            Entry::Sym(p, t) => write!(f, "symlink {p} -> {t}"),
            Entry::Hard(a, b) => write!(f, "hard link {b} = {a}"),
            Entry::Whiteout(p) => write!(f, "whiteout {p}"),
            Entry::Opaque(p) => write!(f, "opaque dir {p}"),
            Entry::Xattr(p, n, v) => write!(f, "xattr {p} {n}={}", String::from_utf8_lossy(v)),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    File,
    Dir,
    Other,
}

/// Symlink targets never contain `..` and are relative, so following one
/// through a mount never leaves it.
const TARGETS: &[&str] = &["a", "b", "x/c", "y", "missing", "x/x/d"];

/// Two lower layers, top-most first, in kernel format.
fn random_lowers(seed: u64) -> [Vec<Entry>; 2] {
    let mut rng = SplitMix::new(seed, 1);
    let mut out: [Vec<Entry>; 2] = Default::default();
    for (li, layer) in out.iter_mut().enumerate() {
        let mut kinds: BTreeMap<String, Kind> = BTreeMap::new();
        let count = 10 + rng.below(12);
        for n in 0..count {
            let path = random_path(&mut rng, Leaf::Any);
            let parts: Vec<&str> = path.split('/').collect();
            let blocked = (1..parts.len()).any(|i| {
                kinds
                    .get(&parts[..i].join("/"))
                    .is_some_and(|k| *k != Kind::Dir)
            });
            if blocked {
                continue;
            }
            let exists = kinds.get(&path).copied();
            let mark_parents = |kinds: &mut BTreeMap<String, Kind>| {
                for i in 1..parts.len() {
                    kinds.insert(parts[..i].join("/"), Kind::Dir);
                }
            };
            let tag = format!("L{li}.{n}:{path};");
            match (rng.below(100), exists) {
                (0..=34, None) => {
                    let len = rng.pick(&[0usize, 7, 100, 3000]);
                    let data = tag.bytes().cycle().take(len).collect();
                    layer.push(Entry::File(
                        path.clone(),
                        data,
                        rng.pick(&[0o644, 0o600, 0o755, 0o444]),
                    ));
                    mark_parents(&mut kinds);
                    kinds.insert(path, Kind::File);
                }
                (35..=54, None) | (35..=54, Some(Kind::Dir)) => {
                    layer.push(Entry::Dir(path.clone(), rng.pick(&[0o755, 0o700, 0o775])));
                    mark_parents(&mut kinds);
                    kinds.insert(path, Kind::Dir);
                }
                (55..=62, None) => {
                    layer.push(Entry::Sym(path.clone(), rng.pick(TARGETS).to_string()));
                    mark_parents(&mut kinds);
                    kinds.insert(path, Kind::Other);
                }
                (63..=74, None) if li == 0 => {
                    layer.push(Entry::Whiteout(path.clone()));
                    mark_parents(&mut kinds);
                    kinds.insert(path, Kind::Other);
                }
                (75..=82, None) | (75..=82, Some(Kind::Dir)) if li == 0 => {
                    layer.push(Entry::Opaque(path.clone()));
                    mark_parents(&mut kinds);
                    kinds.insert(path, Kind::Dir);
                }
                (83..=91, None) => {
                    // A second name beside an existing file of this layer.
                    let dir = parts[..parts.len() - 1].join("/");
                    let sibling = kinds.iter().find(|(p, k)| {
                        **k == Kind::File
                            && p.rsplit_once('/').map_or("", |(d, _)| d) == dir
                            && **p != path
                    });
                    if let Some((src, _)) = sibling {
                        layer.push(Entry::Hard(src.clone(), path.clone()));
                        kinds.insert(path, Kind::File);
                    }
                }
                (92..=99, Some(Kind::File)) | (92..=99, Some(Kind::Dir)) => {
                    let name = format!("user.k{}", rng.below(3));
                    layer.push(Entry::Xattr(path, name, tag.into_bytes()));
                }
                _ => {}
            }
        }
    }
    out
}

fn cpath(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).expect("nul in path")
}

fn set_times(p: &Path, sec: i64, nsec: i64) {
    let c = cpath(p);
    let ts = [
        libc::timespec {
            tv_sec: sec,
            tv_nsec: nsec,
        },
        libc::timespec {
            tv_sec: sec,
            tv_nsec: nsec,
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

fn build_layer(root: &Path, entries: &[Entry]) {
    fs::create_dir_all(root).expect("mkdir layer");
    let parents = |p: &str| {
        if let Some(d) = root.join(p).parent() {
            fs::create_dir_all(d).expect("mkdir parents");
        }
    };
    for (seq, e) in entries.iter().enumerate() {
        let when = 1_500_000_000 + 1000 * seq as i64;
        match e {
            Entry::File(p, data, mode) => {
                parents(p);
                fs::write(root.join(p), data).expect("write");
                chmod(&root.join(p), *mode);
                set_times(&root.join(p), when, 111);
            }
            Entry::Dir(p, mode) => {
                fs::create_dir_all(root.join(p)).expect("mkdir");
                chmod(&root.join(p), *mode);
            }
            Entry::Sym(p, t) => {
                parents(p);
                std::os::unix::fs::symlink(t, root.join(p)).expect("symlink");
                set_times(&root.join(p), when, 222);
            }
            Entry::Hard(a, b) => fs::hard_link(root.join(a), root.join(b)).expect("link"),
            Entry::Whiteout(p) => {
                parents(p);
                whiteout_chr(root, p);
            }
            Entry::Opaque(p) => {
                fs::create_dir_all(root.join(p)).expect("mkdir opaque");
                common::setxattr(root, p, "trusted.overlay.opaque", b"y");
            }
            Entry::Xattr(p, n, v) => common::setxattr(root, p, n, v),
        }
    }
    // Last, since every entry added changes its directory's mtime.
    fix_dir_times(root, root);
}

fn fix_dir_times(root: &Path, dir: &Path) {
    for e in fs::read_dir(dir).expect("read_dir layer") {
        let e = e.expect("entry");
        if e.file_type().expect("file_type").is_dir() {
            fix_dir_times(root, &e.path());
        }
    }
    let rel = dir.strip_prefix(root).expect("inside layer");
    let h = rel
        .as_os_str()
        .as_bytes()
        .iter()
        .fold(7i64, |h, b| (h * 31 + *b as i64) % 1_000_000);
    set_times(dir, 1_400_000_000 + h, 333);
}

fn chmod(p: &Path, mode: u32) {
    let c = cpath(p);
    // SAFETY: c is a valid NUL-terminated path.
    let rc = unsafe { libc::chmod(c.as_ptr(), mode) };
    assert_eq!(rc, 0, "chmod: {}", std::io::Error::last_os_error());
}

// ---------------------------------------------------------------------------
// Operations.
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RenameFlag {
    None,
    NoReplace,
    Exchange,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Op {
    /// `open(O_CREAT | O_WRONLY | (O_EXCL or O_TRUNC))`
    Create {
        path: String,
        mode: u32,
        excl: bool,
    },
    /// `pwrite` after `open(O_WRONLY)`, with `O_CREAT` if `create`.
    Write {
        path: String,
        create: bool,
        off: u64,
        len: usize,
        salt: u8,
    },
    Append {
        path: String,
        len: usize,
        salt: u8,
    },
    Truncate {
        path: String,
        len: u64,
    },
    Rename {
        from: String,
        to: String,
        flag: RenameFlag,
    },
    Link {
        from: String,
        to: String,
    },
    Unlink(String),
    Mkdir {
        path: String,
        mode: u32,
    },
    Rmdir(String),
    /// Removes a whole tree, children first, in name order.
    RemoveTree(String),
    Chmod {
        path: String,
        mode: u32,
    },
    Utimes {
        path: String,
        sec: i64,
        nsec: i64,
        nofollow: bool,
    },
    SetXattr {
        path: String,
        name: String,
        value: Vec<u8>,
        flags: i32,
    },
    RemoveXattr {
        path: String,
        name: String,
    },
    Symlink {
        target: String,
        path: String,
    },
    Stat(String),
    List(String),
    Read(String),
}

impl Op {
    /// The variant's name, which identifies a kind of failure when shrinking.
    fn name(&self) -> &'static str {
        match self {
            Op::Create { .. } => "create",
            Op::Write { .. } => "write",
            Op::Append { .. } => "append",
            Op::Truncate { .. } => "truncate",
            Op::Rename { .. } => "rename",
            Op::Link { .. } => "link",
            Op::Unlink(_) => "unlink",
            Op::Mkdir { .. } => "mkdir",
            Op::Rmdir(_) => "rmdir",
            Op::RemoveTree(_) => "remove-tree",
            Op::Chmod { .. } => "chmod",
            Op::Utimes { .. } => "utimes",
            Op::SetXattr { .. } => "setxattr",
            Op::RemoveXattr { .. } => "removexattr",
            Op::Symlink { .. } => "symlink",
            Op::Stat(_) => "stat",
            Op::List(_) => "list",
            Op::Read(_) => "read",
        }
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Op::Create { path, mode, excl } => write!(
                f,
                "open({path}, O_CREAT|O_WRONLY|{}, {mode:o})",
                if *excl { "O_EXCL" } else { "O_TRUNC" }
            ),
            Op::Write {
                path,
                create,
                off,
                len,
                salt,
            } => write!(
                f,
                "pwrite({path}{}, {len} bytes of '{}', at {off})",
                if *create { " opened O_CREAT" } else { "" },
                *salt as char
            ),
            Op::Append { path, len, salt } => {
                write!(f, "append({path}, {len} bytes of '{}')", *salt as char)
            }
            Op::Truncate { path, len } => write!(f, "truncate({path}, {len})"),
            Op::Rename { from, to, flag } => {
                let fl = match flag {
                    RenameFlag::None => "0",
                    RenameFlag::NoReplace => "RENAME_NOREPLACE",
                    RenameFlag::Exchange => "RENAME_EXCHANGE",
                };
                write!(f, "renameat2({from}, {to}, {fl})")
            }
            Op::Link { from, to } => write!(f, "link({from}, {to})"),
            Op::Unlink(p) => write!(f, "unlink({p})"),
            Op::Mkdir { path, mode } => write!(f, "mkdir({path}, {mode:o})"),
            Op::Rmdir(p) => write!(f, "rmdir({p})"),
            Op::RemoveTree(p) => write!(f, "rm -r {p}"),
            Op::Chmod { path, mode } => write!(f, "chmod({path}, {mode:o})"),
            Op::Utimes {
                path,
                sec,
                nsec,
                nofollow,
            } => write!(
                f,
                "utimensat({path}, {sec}.{nsec:09}{})",
                if *nofollow {
                    ", AT_SYMLINK_NOFOLLOW"
                } else {
                    ""
                }
            ),
            Op::SetXattr {
                path,
                name,
                value,
                flags,
            } => {
                let fl = match *flags {
                    libc::XATTR_CREATE => ", XATTR_CREATE",
                    libc::XATTR_REPLACE => ", XATTR_REPLACE",
                    _ => "",
                };
                write!(
                    f,
                    "lsetxattr({path}, {name}, \"{}\"{fl})",
                    String::from_utf8_lossy(value)
                )
            }
            Op::RemoveXattr { path, name } => write!(f, "lremovexattr({path}, {name})"),
            Op::Symlink { target, path } => write!(f, "symlink({target}, {path})"),
            Op::Stat(p) => write!(f, "lstat({p})"),
            Op::List(p) => write!(f, "readdir({p})"),
            Op::Read(p) => write!(f, "read({p})"),
        }
    }
}

/// The path of whatever a generated op creates, for the re-create that
/// follows a removal.
fn recreate_over(rng: &mut SplitMix, path: String) -> Op {
    let leaf = path.rsplit('/').next().unwrap_or("");
    let dir_percent = if DIR_NAMES.contains(&leaf) { 75 } else { 20 };
    if rng.chance(dir_percent) {
        return Op::Mkdir { path, mode: 0o750 };
    }
    match rng.below(3) {
        0 | 1 => Op::Create {
            path,
            mode: 0o640,
            excl: true,
        },
        _ => Op::Symlink {
            target: rng.pick(TARGETS).to_string(),
            path,
        },
    }
}

/// Generates operations. Many paths are names that exist in the kernel's
/// merged tree at that point (so that most calls reach something), the
/// rest come from the name pool. The kernel's tree depends only on the
/// seed and the ops before, so a shorter run of a seed is a prefix of a
/// longer one, and a recorded sequence replays the same way.
#[derive(Debug)]
struct OpGen {
    rng: SplitMix,
    /// A re-create over the name just removed.
    pending: Option<Op>,
}

impl OpGen {
    fn new(seed: u64) -> OpGen {
        OpGen {
            rng: SplitMix::new(seed, 2),
            pending: None,
        }
    }

    fn path(&mut self, leaf: Leaf, existing: &[(String, bool)], percent: u64) -> String {
        let fitting: Vec<&String> = existing
            .iter()
            .filter(|(_, is_dir)| match leaf {
                Leaf::File => !is_dir,
                Leaf::Dir => *is_dir,
                Leaf::Any => true,
            })
            .map(|(p, _)| p)
            .collect();
        if !fitting.is_empty() && self.rng.chance(percent) {
            fitting[self.rng.below(fitting.len() as u64) as usize].clone()
        } else {
            random_path(&mut self.rng, leaf)
        }
    }

    /// The next op, given the paths (and whether each is a directory) in
    /// the kernel's merged tree.
    fn next(&mut self, existing: &[(String, bool)]) -> Op {
        if let Some(op) = self.pending.take() {
            return op;
        }
        let roll = self.rng.below(100);
        let leaf = match roll {
            0..=27 | 94..=99 => Leaf::File,
            50..=61 | 88..=93 => Leaf::Dir,
            _ => Leaf::Any,
        };
        // Creating calls mostly get fresh names, the others existing ones.
        let creates = matches!(roll, 0..=7 | 50..=54 | 60..=61 | 77..=80);
        let path = self.path(leaf, existing, if creates { 15 } else { 60 });
        let other = self.path(leaf, existing, 40);
        let rng = &mut self.rng;
        let pending = &mut self.pending;
        let salt = b'a' + rng.below(26) as u8;
        match roll {
            0..=7 => Op::Create {
                path,
                mode: rng.pick(&[0o644, 0o600, 0o755]),
                excl: rng.chance(50),
            },
            8..=17 => Op::Write {
                path,
                create: rng.chance(30),
                off: if rng.chance(10) {
                    70_000
                } else {
                    rng.below(4000)
                },
                len: 1 + rng.below(2000) as usize,
                salt,
            },
            18..=22 => Op::Append {
                path,
                len: 1 + rng.below(300) as usize,
                salt,
            },
            23..=27 => Op::Truncate {
                path,
                len: rng.pick(&[0, 1, 50, 5000]),
            },
            28..=39 => Op::Rename {
                from: path,
                to: other,
                flag: match rng.below(10) {
                    0..=5 => RenameFlag::None,
                    6..=7 => RenameFlag::NoReplace,
                    _ => RenameFlag::Exchange,
                },
            },
            40..=43 => Op::Link {
                from: path,
                to: other,
            },
            44..=49 => {
                if rng.chance(60) {
                    *pending = Some(recreate_over(rng, path.clone()));
                }
                Op::Unlink(path)
            }
            50..=54 | 60..=61 => Op::Mkdir {
                path,
                mode: rng.pick(&[0o755, 0o700]),
            },
            55..=57 => {
                if rng.chance(60) {
                    *pending = Some(recreate_over(rng, path.clone()));
                }
                Op::Rmdir(path)
            }
            58..=59 => {
                if rng.chance(70) {
                    *pending = Some(recreate_over(rng, path.clone()));
                }
                Op::RemoveTree(path)
            }
            62..=65 => Op::Chmod {
                path,
                mode: rng.pick(&[0o600, 0o644, 0o711, 0o4755, 0o1777]),
            },
            66..=69 => Op::Utimes {
                path,
                sec: 1_000_000_000 + rng.below(600_000_000) as i64,
                nsec: rng.below(1_000_000) as i64 * 1000,
                nofollow: rng.chance(50),
            },
            70..=74 => Op::SetXattr {
                path,
                name: format!("user.k{}", rng.below(3)),
                value: vec![salt; 1 + rng.below(20) as usize],
                flags: rng.pick(&[0, 0, libc::XATTR_CREATE, libc::XATTR_REPLACE]),
            },
            75..=76 => Op::RemoveXattr {
                path,
                name: format!("user.k{}", rng.below(3)),
            },
            77..=80 => Op::Symlink {
                target: rng.pick(TARGETS).to_string(),
                path,
            },
            81..=87 => Op::Stat(path),
            88..=93 => {
                if rng.chance(40) {
                    Op::List(String::new())
                } else {
                    Op::List(path)
                }
            }
            _ => Op::Read(path),
        }
    }
}

/// Every path in a merged tree, with whether it is a directory.
fn paths_in(root: &Path) -> Vec<(String, bool)> {
    let mut out = Vec::new();
    let mut stack = vec![String::new()];
    while let Some(rel) = stack.pop() {
        for (name, d_type) in list_dir(&root.join(&rel)).unwrap_or_default() {
            let r = if rel.is_empty() {
                name
            } else {
                format!("{rel}/{name}")
            };
            let is_dir = d_type == libc::DT_DIR;
            if is_dir {
                stack.push(r.clone());
            }
            out.push((r, is_dir));
        }
    }
    out.sort();
    out
}

// ---------------------------------------------------------------------------
// Running one operation on one tree.
// ---------------------------------------------------------------------------

/// A call's outcome: a description of what it returned (and of what it
/// changed, where the value alone says little), or its errno.
type Res = Result<String, i32>;

fn errno() -> i32 {
    std::io::Error::last_os_error()
        .raw_os_error()
        .expect("an OS error")
}

fn check(rc: libc::c_int) -> Result<(), i32> {
    if rc < 0 { Err(errno()) } else { Ok(()) }
}

fn errno_name(e: i32) -> String {
    let names = [
        (libc::EPERM, "EPERM"),
        (libc::ENOENT, "ENOENT"),
        (libc::EIO, "EIO"),
        (libc::EBADF, "EBADF"),
        (libc::EACCES, "EACCES"),
        (libc::EBUSY, "EBUSY"),
        (libc::EEXIST, "EEXIST"),
        (libc::EXDEV, "EXDEV"),
        (libc::ENOTDIR, "ENOTDIR"),
        (libc::EISDIR, "EISDIR"),
        (libc::EINVAL, "EINVAL"),
        (libc::EFBIG, "EFBIG"),
        (libc::ENOSPC, "ENOSPC"),
        (libc::EROFS, "EROFS"),
        (libc::EMLINK, "EMLINK"),
        (libc::ENAMETOOLONG, "ENAMETOOLONG"),
        (libc::ENOSYS, "ENOSYS"),
        (libc::ENOTEMPTY, "ENOTEMPTY"),
        (libc::ELOOP, "ELOOP"),
        (libc::ENODATA, "ENODATA"),
        (libc::EOPNOTSUPP, "EOPNOTSUPP"),
        (libc::ENOTCONN, "ENOTCONN"),
        (libc::ECONNABORTED, "ECONNABORTED"),
        (libc::ETXTBSY, "ETXTBSY"),
    ];
    names
        .iter()
        .find(|(n, _)| *n == e)
        .map_or_else(|| format!("errno {e}"), |(_, s)| s.to_string())
}

fn show(r: &Res) -> String {
    match r {
        Ok(v) if v.is_empty() => "Ok".to_string(),
        Ok(v) => format!("Ok({v})"),
        Err(e) => format!("Err({})", errno_name(*e)),
    }
}

fn stat_raw(p: &Path, follow: bool) -> Result<libc::stat, i32> {
    let c = cpath(p);
    // SAFETY: an all-zero stat is a valid value to be overwritten.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: c is a valid path, st a valid out-pointer.
    let rc = unsafe {
        if follow {
            libc::stat(c.as_ptr(), &mut st)
        } else {
            libc::lstat(c.as_ptr(), &mut st)
        }
    };
    check(rc).map(|_| st)
}

/// Whether `p` kept the inode number `before` had (when there was one).
fn ino_note(before: &Result<libc::stat, i32>, p: &Path, follow: bool) -> String {
    match (before, stat_raw(p, follow)) {
        (Ok(b), Ok(a)) if b.st_ino == a.st_ino => "ino kept".to_string(),
        (Ok(_), Ok(_)) => "ino CHANGED".to_string(),
        (Ok(_), Err(e)) => format!("gone after: {}", errno_name(e)),
        (Err(_), _) => String::new(),
    }
}

fn payload(len: usize, salt: u8) -> Vec<u8> {
    (0..len).map(|i| salt.wrapping_add((i % 7) as u8)).collect()
}

fn open(p: &Path, flags: i32, mode: u32) -> Result<libc::c_int, i32> {
    let c = cpath(p);
    // SAFETY: c is a valid path.
    let fd = unsafe { libc::open(c.as_ptr(), flags | libc::O_CLOEXEC, mode) };
    if fd < 0 { Err(errno()) } else { Ok(fd) }
}

fn close(fd: libc::c_int) -> Result<(), i32> {
    // SAFETY: fd was opened by this module and is closed once.
    check(unsafe { libc::close(fd) })
}

fn write_all_at(fd: libc::c_int, data: &[u8], off: Option<u64>) -> Result<usize, i32> {
    let mut done = 0;
    while done < data.len() {
        let rest = &data[done..];
        // SAFETY: rest is a valid buffer of the given length.
        let n = unsafe {
            match off {
                Some(o) => libc::pwrite(
                    fd,
                    rest.as_ptr().cast(),
                    rest.len(),
                    (o + done as u64) as libc::off_t,
                ),
                None => libc::write(fd, rest.as_ptr().cast(), rest.len()),
            }
        };
        if n < 0 {
            return Err(errno());
        }
        if n == 0 {
            break;
        }
        done += n as usize;
    }
    Ok(done)
}

fn fstat_size(fd: libc::c_int) -> Result<u64, i32> {
    // SAFETY: an all-zero stat is a valid value to be overwritten.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fd is open, st a valid out-pointer.
    check(unsafe { libc::fstat(fd, &mut st) })?;
    Ok(st.st_size as u64)
}

/// Opens, writes and closes; the close's errno counts as the call's.
fn write_file(p: &Path, flags: i32, data: &[u8], off: Option<u64>) -> Res {
    let before = stat_raw(p, true);
    let fd = open(p, flags, 0o644)?;
    let written = write_all_at(fd, data, off);
    let size = fstat_size(fd);
    let closed = close(fd);
    let written = written?;
    closed?;
    Ok(format!(
        "wrote {written}, size {}, {}",
        size?,
        ino_note(&before, p, true)
    ))
}

fn fnv(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ *b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Names in a directory (sorted, without `.` and `..`), with their d_type.
/// Skips the entries kernel overlayfs lists for the whiteouts of a directory
/// that comes from a single lower layer but cannot look up.
fn list_dir(dir: &Path) -> Result<Vec<(String, u8)>, i32> {
    let c = cpath(dir);
    // SAFETY: c is a valid path.
    let d = unsafe { libc::opendir(c.as_ptr()) };
    if d.is_null() {
        return Err(errno());
    }
    let mut out = Vec::new();
    loop {
        // SAFETY: d is a valid DIR* until closedir below.
        let e = unsafe { libc::readdir(d) };
        if e.is_null() {
            break;
        }
        // SAFETY: readdir returned a valid dirent with a NUL-terminated name.
        let (name, d_type) = unsafe {
            (
                std::ffi::CStr::from_ptr((*e).d_name.as_ptr())
                    .to_string_lossy()
                    .into_owned(),
                (*e).d_type,
            )
        };
        if name != "." && name != ".." {
            out.push((name, d_type));
        }
    }
    // SAFETY: d came from opendir and is closed exactly once.
    unsafe { libc::closedir(d) };
    out.retain(|(name, d_type)| {
        !(*d_type == libc::DT_CHR && stat_raw(&dir.join(name), false) == Err(libc::ENOENT))
    });
    out.sort();
    Ok(out)
}

/// `rm -r`: children first, in name order; stops at the first error.
fn remove_tree(p: &Path) -> Result<(), i32> {
    let st = stat_raw(p, false)?;
    if st.st_mode & libc::S_IFMT == libc::S_IFDIR {
        for (name, _) in list_dir(p)? {
            remove_tree(&p.join(name))?;
        }
        let c = cpath(p);
        // SAFETY: c is a valid path.
        check(unsafe { libc::rmdir(c.as_ptr()) })
    } else {
        let c = cpath(p);
        // SAFETY: c is a valid path.
        check(unsafe { libc::unlink(c.as_ptr()) })
    }
}

fn user_xattrs(p: &Path) -> Result<BTreeMap<String, Vec<u8>>, i32> {
    let c = cpath(p);
    let mut buf = vec![0u8; 65536];
    // SAFETY: valid C string and a buffer of the given length.
    let n = unsafe { libc::llistxattr(c.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        return Err(errno());
    }
    buf.truncate(n as usize);
    let mut out = BTreeMap::new();
    for name in buf.split(|b| *b == 0).filter(|s| !s.is_empty()) {
        let name = String::from_utf8_lossy(name).into_owned();
        if !name.starts_with("user.")
            || name.starts_with("user.overlay.")
            || name.starts_with("user.unionfuse.")
        {
            continue;
        }
        out.insert(
            name.clone(),
            common::getxattr(p, &name).map_err(|e| e.raw_os_error().unwrap_or(0))?,
        );
    }
    Ok(out)
}

fn mtime_view(sec: i64, nsec: i64) -> String {
    if sec < FIXED_TIME_LIMIT || !clock_is_sane() {
        format!("{sec}.{nsec:09}")
    } else {
        "recent".to_string()
    }
}

fn clock_is_sane() -> bool {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64 > FIXED_TIME_LIMIT)
        .unwrap_or(false)
}

fn type_char(mode: u32) -> char {
    match mode & libc::S_IFMT {
        libc::S_IFDIR => 'd',
        libc::S_IFREG => 'f',
        libc::S_IFLNK => 'l',
        libc::S_IFCHR => 'c',
        libc::S_IFIFO => 'p',
        _ => '?',
    }
}

/// What `lstat` and friends say about one object, in comparable form.
fn describe_obj(p: &Path) -> Result<String, i32> {
    let st = stat_raw(p, false)?;
    let t = type_char(st.st_mode);
    let mut s = format!(
        "{t} {:o} uid {} gid {}",
        st.st_mode & 0o7777,
        st.st_uid,
        st.st_gid
    );
    if t != 'd' {
        s.push_str(&format!(" size {} nlink {}", st.st_size, st.st_nlink));
    }
    s.push_str(&format!(
        " mtime {}",
        mtime_view(st.st_mtime, st.st_mtime_nsec)
    ));
    match t {
        'f' => {
            let data = fs::read(p).map_err(|e| e.raw_os_error().unwrap_or(0))?;
            s.push_str(&format!(" data {:016x}", fnv(&data)));
        }
        'l' => {
            let t = fs::read_link(p).map_err(|e| e.raw_os_error().unwrap_or(0))?;
            s.push_str(&format!(" -> {}", t.display()));
        }
        _ => {}
    }
    for (k, v) in user_xattrs(p)? {
        s.push_str(&format!(" {k}={}", String::from_utf8_lossy(&v)));
    }
    Ok(s)
}

fn exec(root: &Path, op: &Op) -> Res {
    let at = |p: &str| {
        if p.is_empty() {
            root.to_path_buf()
        } else {
            root.join(p)
        }
    };
    match op {
        Op::Create { path, mode, excl } => {
            let p = at(path);
            let before = stat_raw(&p, true);
            let flags =
                libc::O_CREAT | libc::O_WRONLY | if *excl { libc::O_EXCL } else { libc::O_TRUNC };
            let fd = open(&p, flags, *mode)?;
            close(fd)?;
            Ok(ino_note(&before, &p, true))
        }
        Op::Write {
            path,
            create,
            off,
            len,
            salt,
        } => write_file(
            &at(path),
            libc::O_WRONLY | if *create { libc::O_CREAT } else { 0 },
            &payload(*len, *salt),
            Some(*off),
        ),
        Op::Append { path, len, salt } => write_file(
            &at(path),
            libc::O_WRONLY | libc::O_APPEND,
            &payload(*len, *salt),
            None,
        ),
        Op::Truncate { path, len } => {
            let p = at(path);
            let before = stat_raw(&p, true);
            let c = cpath(&p);
            // SAFETY: c is a valid path.
            check(unsafe { libc::truncate(c.as_ptr(), *len as libc::off_t) })?;
            Ok(ino_note(&before, &p, true))
        }
        Op::Rename { from, to, flag } => {
            let (a, b) = (at(from), at(to));
            let (ba, bb) = (stat_raw(&a, false), stat_raw(&b, false));
            let fl = match flag {
                RenameFlag::None => 0,
                RenameFlag::NoReplace => libc::RENAME_NOREPLACE,
                RenameFlag::Exchange => libc::RENAME_EXCHANGE,
            };
            let (ca, cb) = (cpath(&a), cpath(&b));
            // SAFETY: valid paths relative to the current directory.
            check(unsafe {
                libc::renameat2(libc::AT_FDCWD, ca.as_ptr(), libc::AT_FDCWD, cb.as_ptr(), fl)
            })?;
            let mut note = ino_note(&ba, &b, false);
            if *flag == RenameFlag::Exchange {
                note = format!("{note}; other {}", ino_note(&bb, &a, false));
            }
            Ok(note)
        }
        Op::Link { from, to } => {
            let (a, b) = (at(from), at(to));
            let (ca, cb) = (cpath(&a), cpath(&b));
            // SAFETY: valid paths.
            check(unsafe { libc::link(ca.as_ptr(), cb.as_ptr()) })?;
            match (stat_raw(&a, false), stat_raw(&b, false)) {
                (Ok(x), Ok(y)) if x.st_ino == y.st_ino => Ok("same ino".to_string()),
                (Ok(_), Ok(_)) => Ok("DIFFERENT ino".to_string()),
                (x, y) => Ok(format!("stat after: {:?} {:?}", x.err(), y.err())),
            }
        }
        Op::Unlink(path) => {
            let c = cpath(&at(path));
            // SAFETY: c is a valid path.
            check(unsafe { libc::unlink(c.as_ptr()) }).map(|_| String::new())
        }
        Op::Mkdir { path, mode } => {
            let c = cpath(&at(path));
            // SAFETY: c is a valid path.
            check(unsafe { libc::mkdir(c.as_ptr(), *mode) }).map(|_| String::new())
        }
        Op::Rmdir(path) => {
            let c = cpath(&at(path));
            // SAFETY: c is a valid path.
            check(unsafe { libc::rmdir(c.as_ptr()) }).map(|_| String::new())
        }
        Op::RemoveTree(path) => remove_tree(&at(path)).map(|_| String::new()),
        Op::Chmod { path, mode } => {
            let p = at(path);
            let before = stat_raw(&p, true);
            let c = cpath(&p);
            // SAFETY: c is a valid path.
            check(unsafe { libc::chmod(c.as_ptr(), *mode) })?;
            Ok(ino_note(&before, &p, true))
        }
        Op::Utimes {
            path,
            sec,
            nsec,
            nofollow,
        } => {
            let p = at(path);
            let before = stat_raw(&p, !nofollow);
            let ts = [
                libc::timespec {
                    tv_sec: 0,
                    tv_nsec: libc::UTIME_OMIT,
                },
                libc::timespec {
                    tv_sec: *sec,
                    tv_nsec: *nsec,
                },
            ];
            let fl = if *nofollow {
                libc::AT_SYMLINK_NOFOLLOW
            } else {
                0
            };
            let c = cpath(&p);
            // SAFETY: c is a valid path and ts points at two timespecs.
            check(unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr(), ts.as_ptr(), fl) })?;
            let after = stat_raw(&p, !nofollow)?;
            Ok(format!(
                "mtime {}.{:09}, {}",
                after.st_mtime,
                after.st_mtime_nsec,
                ino_note(&before, &p, !nofollow)
            ))
        }
        Op::SetXattr {
            path,
            name,
            value,
            flags,
        } => {
            let p = at(path);
            let before = stat_raw(&p, false);
            let (c, n) = (cpath(&p), CString::new(name.as_str()).expect("name"));
            // SAFETY: valid C strings and a buffer of the given length.
            check(unsafe {
                libc::lsetxattr(
                    c.as_ptr(),
                    n.as_ptr(),
                    value.as_ptr().cast(),
                    value.len(),
                    *flags,
                )
            })?;
            Ok(ino_note(&before, &p, false))
        }
        Op::RemoveXattr { path, name } => {
            let (c, n) = (cpath(&at(path)), CString::new(name.as_str()).expect("name"));
            // SAFETY: valid C strings.
            check(unsafe { libc::lremovexattr(c.as_ptr(), n.as_ptr()) }).map(|_| String::new())
        }
        Op::Symlink { target, path } => {
            let (t, c) = (
                CString::new(target.as_str()).expect("target"),
                cpath(&at(path)),
            );
            // SAFETY: valid C strings.
            check(unsafe { libc::symlink(t.as_ptr(), c.as_ptr()) }).map(|_| String::new())
        }
        Op::Stat(path) => describe_obj(&at(path)),
        Op::List(path) => Ok(list_dir(&at(path))?
            .into_iter()
            .map(|(n, t)| format!("{n}:{t}"))
            .collect::<Vec<_>>()
            .join(" ")),
        Op::Read(path) => {
            let data = fs::read(at(path)).map_err(|e| e.raw_os_error().unwrap_or(0))?;
            Ok(format!("{} bytes, {:016x}", data.len(), fnv(&data)))
        }
    }
}

// ---------------------------------------------------------------------------
// The directory-rename emulation for kernel overlayfs.
// ---------------------------------------------------------------------------

/// Copies `src` to the new name `dst` with modes, owners, times and user
/// xattrs, as `cp -a` does, skipping the kernel's unreachable whiteout
/// entries.
fn copy_tree(src: &Path, dst: &Path) {
    let st = stat_raw(src, false).unwrap_or_else(|e| panic!("lstat {}: {e}", src.display()));
    let cd = cpath(dst);
    match st.st_mode & libc::S_IFMT {
        libc::S_IFDIR => {
            // SAFETY: cd is a valid path.
            let rc = unsafe { libc::mkdir(cd.as_ptr(), 0o700) };
            assert_eq!(rc, 0, "mkdir {}: {}", dst.display(), errno());
            for (name, _) in list_dir(src).expect("list source") {
                copy_tree(&src.join(&name), &dst.join(&name));
            }
        }
        libc::S_IFREG => {
            fs::copy(src, dst).unwrap_or_else(|e| panic!("copy {}: {e}", src.display()));
        }
        libc::S_IFLNK => {
            let t = fs::read_link(src).expect("readlink");
            std::os::unix::fs::symlink(t, dst).expect("symlink");
        }
        _ => panic!("unexpected file type at {}", src.display()),
    }
    // SAFETY: cd is a valid path.
    let rc = unsafe { libc::lchown(cd.as_ptr(), st.st_uid, st.st_gid) };
    assert_eq!(rc, 0, "lchown: {}", errno());
    if st.st_mode & libc::S_IFMT != libc::S_IFLNK {
        // SAFETY: cd is a valid path.
        let rc = unsafe { libc::chmod(cd.as_ptr(), st.st_mode & 0o7777) };
        assert_eq!(rc, 0, "chmod: {}", errno());
    }
    for (k, v) in user_xattrs(src).expect("list xattrs") {
        let n = CString::new(k.as_str()).expect("name");
        // SAFETY: valid C strings and a buffer of the given length.
        let rc = unsafe { libc::lsetxattr(cd.as_ptr(), n.as_ptr(), v.as_ptr().cast(), v.len(), 0) };
        assert_eq!(rc, 0, "lsetxattr {k}: {}", errno());
    }
    let ts = [
        libc::timespec {
            tv_sec: st.st_atime,
            tv_nsec: st.st_atime_nsec,
        },
        libc::timespec {
            tv_sec: st.st_mtime,
            tv_nsec: st.st_mtime_nsec,
        },
    ];
    // SAFETY: cd is a valid path and ts points at two timespecs.
    let rc = unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            cd.as_ptr(),
            ts.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    assert_eq!(rc, 0, "utimensat: {}", errno());
}

/// Whether a non-directory under `p` has a name elsewhere, which a copy
/// would not carry along.
fn has_linked_files(p: &Path) -> bool {
    let Ok(st) = stat_raw(p, false) else {
        return false;
    };
    if st.st_mode & libc::S_IFMT != libc::S_IFDIR {
        return st.st_nlink > 1;
    }
    list_dir(p)
        .unwrap_or_default()
        .iter()
        .any(|(n, _)| has_linked_files(&p.join(n)))
}

/// What a plain directory holding a copy of `mnt`'s merged tree answers to
/// `op`.
fn plain_result(mnt: &Path, plain: &Path, op: &Op) -> Res {
    if stat_raw(plain, false).is_ok() {
        remove_tree(plain).expect("clear plain copy");
    }
    copy_tree(mnt, plain);
    exec(plain, op)
}

/// Replays a rename that kernel overlayfs refused with EXDEV as copies and
/// deletions through the mount, the way `mv` falls back.
fn emulate_rename(mnt: &Path, from: &str, to: &str, flag: RenameFlag) {
    let (a, b) = (mnt.join(from), mnt.join(to));
    let must = |r: Result<(), i32>, what: &str| {
        r.unwrap_or_else(|e| panic!("mv emulation: {what}: {}", errno_name(e)))
    };
    match flag {
        RenameFlag::Exchange => {
            let (ta, tb) = (mnt.join(TMP_A), mnt.join(TMP_B));
            copy_tree(&a, &ta);
            copy_tree(&b, &tb);
            must(remove_tree(&a), "remove source");
            must(remove_tree(&b), "remove target");
            must(rename_plain(&ta, &b), "rename copy of source");
            must(rename_plain(&tb, &a), "rename copy of target");
        }
        RenameFlag::None | RenameFlag::NoReplace => {
            if stat_raw(&b, false).is_ok() {
                // The plain directory accepted it, so the target is an empty
                // directory.
                must(remove_tree(&b), "remove target");
            }
            copy_tree(&a, &b);
            must(remove_tree(&a), "remove source");
        }
    }
}

fn rename_plain(a: &Path, b: &Path) -> Result<(), i32> {
    let (ca, cb) = (cpath(a), cpath(b));
    // SAFETY: valid paths.
    check(unsafe { libc::rename(ca.as_ptr(), cb.as_ptr()) })
}

// ---------------------------------------------------------------------------
// Sides.
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Subject {
    Unionfuse,
    /// Kernel against kernel: the harness checking itself.
    Kernel,
}

/// One side's layers, upper and mount.
#[derive(Debug)]
struct Side {
    is_kernel: bool,
    lowers: [PathBuf; 2],
    upper: PathBuf,
    work: PathBuf,
    mnt: PathBuf,
    plain: PathBuf,
    /// Directory renames refused with EXDEV and replayed as copies.
    emulated: std::cell::Cell<u64>,
    /// Unmount on drop, also when the test panics.
    _fuse: Option<Mounted>,
    _kernel: Option<KernelOverlay>,
}

/// What happened to one op on one side.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    Done(Res),
    /// The kernel refused a directory rename that the plain directory
    /// accepted and the emulation cannot reproduce exactly.
    Skip,
}

impl Side {
    fn new(s: &Scratch, name: &str, lowers: &[Vec<Entry>; 2], is_kernel: bool) -> Side {
        let l = [s.path(&format!("{name}/l0")), s.path(&format!("{name}/l1"))];
        for (dir, spec) in l.iter().zip(lowers) {
            build_layer(dir, spec);
        }
        Side {
            is_kernel,
            lowers: l,
            upper: s.mkdir(&format!("{name}/upper")),
            work: s.mkdir(&format!("{name}/work")),
            mnt: s.mkdir(&format!("{name}/mnt")),
            plain: s.path(&format!("{name}/plain")),
            emulated: Default::default(),
            _fuse: None,
            _kernel: None,
        }
    }

    fn mount(&mut self) -> Result<(), String> {
        let lowers: Vec<&Path> = self.lowers.iter().map(PathBuf::as_path).collect();
        if self.is_kernel {
            self._kernel = Some(KernelOverlay::new(
                &lowers,
                Some((&self.upper, &self.work)),
                &self.mnt,
                KERNEL_OPTS,
            )?);
        } else {
            let w = self.work.to_str().expect("utf8 work path");
            self._fuse = Some(Mounted::new(
                &lowers,
                Some(&self.upper),
                &self.mnt,
                &["--work", w],
            ));
        }
        Ok(())
    }

    fn unmount(&mut self) {
        self._fuse = None;
        self._kernel = None;
    }

    fn apply(&self, op: &Op) -> Outcome {
        let r = exec(&self.mnt, op);
        let Op::Rename { from, to, flag } = op else {
            return Outcome::Done(r);
        };
        if !self.is_kernel || r != Err(libc::EXDEV) {
            return Outcome::Done(r);
        }
        // The refusal changed nothing; decide on the untouched state.
        if has_linked_files(&self.mnt.join(from))
            || (*flag == RenameFlag::Exchange && has_linked_files(&self.mnt.join(to)))
        {
            return Outcome::Skip;
        }
        let expected = plain_result(&self.mnt, &self.plain, op);
        if expected.is_ok() {
            emulate_rename(&self.mnt, from, to, *flag);
            self.emulated.set(self.emulated.get() + 1);
        }
        Outcome::Done(expected)
    }
}

// ---------------------------------------------------------------------------
// Trees.
// ---------------------------------------------------------------------------

#[derive(Debug, Default, PartialEq, Eq)]
struct Tree {
    objs: BTreeMap<String, String>,
    links: BTreeSet<BTreeSet<String>>,
}

fn scan(root: &Path) -> Result<Tree, String> {
    let mut t = Tree::default();
    let mut by_ino: BTreeMap<u64, BTreeSet<String>> = BTreeMap::new();
    let mut stack = vec![String::new()];
    t.objs.insert(
        "/".to_string(),
        describe_obj(root).map_err(|e| format!("lstat root: {}", errno_name(e)))?,
    );
    while let Some(rel) = stack.pop() {
        let dir = root.join(&rel);
        let entries = list_dir(&dir).map_err(|e| format!("readdir /{rel}: {}", errno_name(e)))?;
        for (name, d_type) in entries {
            let r = if rel.is_empty() {
                name
            } else {
                format!("{rel}/{name}")
            };
            let p = root.join(&r);
            let st = stat_raw(&p, false)
                .map_err(|e| format!("lstat {r} (listed): {}", errno_name(e)))?;
            let mut d = describe_obj(&p).map_err(|e| format!("{r}: {}", errno_name(e)))?;
            let dt = match st.st_mode & libc::S_IFMT {
                libc::S_IFDIR => libc::DT_DIR,
                libc::S_IFREG => libc::DT_REG,
                libc::S_IFLNK => libc::DT_LNK,
                _ => d_type,
            };
            if dt != d_type && d_type != libc::DT_UNKNOWN {
                d.push_str(&format!(" (readdir d_type {d_type})"));
            }
            if st.st_mode & libc::S_IFMT == libc::S_IFDIR {
                stack.push(r.clone());
            } else {
                by_ino.entry(st.st_ino).or_default().insert(r.clone());
            }
            t.objs.insert(r, d);
        }
    }
    t.links = by_ino.into_values().filter(|g| g.len() > 1).collect();
    Ok(t)
}

fn diff_trees(subject: &Tree, oracle: &Tree, subject_name: &str) -> Vec<String> {
    let mut diffs = Vec::new();
    for (name, o) in &oracle.objs {
        match subject.objs.get(name) {
            None => diffs.push(format!("missing from {subject_name}: {name} ({o})")),
            Some(s) if s != o => diffs.push(format!(
                "{name}:\n      {subject_name:<9} {s}\n      {:<9} {o}",
                "kernel"
            )),
            Some(_) => {}
        }
    }
    for (name, s) in &subject.objs {
        if !oracle.objs.contains_key(name) {
            diffs.push(format!("only in {subject_name}: {name} ({s})"));
        }
    }
    if subject.links != oracle.links {
        diffs.push(format!(
            "hard-link groups: {subject_name} {:?}, kernel {:?}",
            subject.links, oracle.links
        ));
    }
    diffs
}

// ---------------------------------------------------------------------------
// One run.
// ---------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct Failure {
    /// Identifies the kind of failure; shrinking keeps it.
    kind: String,
    /// Index of the op after which it showed.
    at: Option<usize>,
    detail: String,
}

fn subject_name(subject: Subject) -> &'static str {
    match subject {
        Subject::Unionfuse => "unionfuse",
        Subject::Kernel => "kernel#2",
    }
}

/// Runs `ops` on fresh layers from `seed`; `None` when every comparison
/// held.
/// What a run did, to show that it exercised something.
#[derive(Debug, Default)]
struct Stats {
    ok: u64,
    failed: u64,
    skipped: u64,
    emulated: u64,
    objects: usize,
}

/// The ops of a run: a recorded sequence, or `n` new ones from the seed.
#[derive(Debug, Clone, Copy)]
enum Plan<'a> {
    Replay(&'a [Op]),
    Generate(usize),
}

/// Runs a plan on fresh layers from `seed`; returns the ops that ran (up to
/// the first failure) and the failure, if any.
fn run_case(
    seed: u64,
    plan: Plan<'_>,
    subject: Subject,
    check_every: usize,
    stats: &mut Stats,
) -> (Vec<Op>, Option<Failure>) {
    let mut done = Vec::new();
    let f = run_plan(seed, plan, subject, check_every, stats, &mut done);
    (done, f)
}

fn run_plan(
    seed: u64,
    plan: Plan<'_>,
    subject: Subject,
    check_every: usize,
    stats: &mut Stats,
    ops: &mut Vec<Op>,
) -> Option<Failure> {
    let lowers = random_lowers(seed);
    let s = Scratch::new();
    let mut k = Side::new(&s, "kernel", &lowers, true);
    let mut u = Side::new(&s, "subject", &lowers, subject == Subject::Kernel);
    let sname = subject_name(subject);
    if let Err(e) = k.mount() {
        panic!("kernel overlayfs mount failed: {e}");
    }
    if let Err(e) = u.mount() {
        panic!("second kernel overlayfs mount failed: {e}");
    }
    let watchdog = Watchdog::start(&u.mnt, subject);
    let compare_now = |at: Option<usize>, when: &str| -> Option<Failure> {
        let kt = match scan(&k.mnt) {
            Ok(t) => t,
            Err(e) => panic!("scan of the kernel's tree failed: {e}"),
        };
        let diffs = match scan(&u.mnt) {
            Ok(ut) => diff_trees(&ut, &kt, sname),
            Err(e) => vec![format!("scan of {sname}'s tree failed: {e}")],
        };
        (!diffs.is_empty()).then(|| Failure {
            kind: "merged tree".to_string(),
            at,
            detail: format!("merged trees differ {when}:\n    {}", diffs.join("\n    ")),
        })
    };
    if let Some(f) = compare_now(None, "before any operation") {
        return Some(f);
    }
    let mut opgen = OpGen::new(seed);
    let total = match plan {
        Plan::Replay(r) => r.len(),
        Plan::Generate(n) => n,
    };
    for i in 0..total {
        let op = match plan {
            Plan::Replay(r) => r[i].clone(),
            Plan::Generate(_) => opgen.next(&paths_in(&k.mnt)),
        };
        ops.push(op);
        let op = &ops[i];
        watchdog.tick();
        let ko = k.apply(op);
        match &ko {
            Outcome::Skip => {
                stats.skipped += 1;
                continue;
            }
            Outcome::Done(Ok(_)) => stats.ok += 1,
            Outcome::Done(Err(_)) => stats.failed += 1,
        }
        let uo = u.apply(op);
        if uo != ko {
            let show_o = |o: &Outcome| match o {
                Outcome::Done(r) => show(r),
                Outcome::Skip => "skipped".to_string(),
            };
            return Some(Failure {
                kind: format!("result of {}", op.name()),
                at: Some(i),
                detail: format!(
                    "op #{i} {op}:\n    {sname:<9} {}\n    {:<9} {}",
                    show_o(&uo),
                    "kernel",
                    show_o(&ko)
                ),
            });
        }
        if (i + 1) % check_every == 0
            && let Some(f) = compare_now(Some(i), &format!("after op #{i}"))
        {
            return Some(f);
        }
    }
    if let Some(f) = compare_now(ops.len().checked_sub(1), "at the end") {
        return Some(f);
    }
    let kt = scan(&k.mnt).expect("scan kernel");
    stats.emulated = k.emulated.get();
    stats.objects = kt.objs.len();
    watchdog.stop();
    k.unmount();
    u.unmount();
    check_uppers(&s, &mut k, &mut u, subject, &kt, ops.len())
}

/// After unmounting: the kernel's upper mounted again, and the subject's
/// upper mounted by the kernel and by the subject, must all show the
/// kernel's final tree.
fn check_uppers(
    s: &Scratch,
    k: &mut Side,
    u: &mut Side,
    subject: Subject,
    final_tree: &Tree,
    n: usize,
) -> Option<Failure> {
    let at = n.checked_sub(1);
    let remount = |side: &Side, as_kernel: bool, name: &str| -> Result<Tree, String> {
        let mnt = s.mkdir(&format!("remount-{name}"));
        let work = s.mkdir(&format!("remount-{name}-work"));
        let lowers: Vec<&Path> = side.lowers.iter().map(PathBuf::as_path).collect();
        if as_kernel {
            let _m = KernelOverlay::new(&lowers, Some((&side.upper, &work)), &mnt, KERNEL_OPTS)?;
            scan(&mnt)
        } else {
            let w = work.to_str().expect("utf8 work path");
            let _m = Mounted::new(&lowers, Some(&side.upper), &mnt, &["--work", w]);
            scan(&mnt)
        }
    };
    let sname = subject_name(subject);
    let checks = [
        (
            &*k,
            true,
            "kernel-upper-by-kernel",
            "the kernel's upper, remounted",
        ),
        (
            &*u,
            true,
            "subject-upper-by-kernel",
            "the subject's upper, mounted by kernel overlayfs",
        ),
        (
            &*u,
            subject == Subject::Kernel,
            "subject-upper-by-subject",
            "the subject's upper, mounted again by itself",
        ),
    ];
    for (side, as_kernel, name, what) in checks {
        let diffs = match remount(side, as_kernel, name) {
            Ok(t) => diff_trees(&t, final_tree, sname),
            Err(e) => vec![format!("mount/scan failed: {e}")],
        };
        if !diffs.is_empty() {
            return Some(Failure {
                kind: format!("upper: {name}"),
                at,
                detail: format!(
                    "{what} does not show the kernel's final tree:\n    {}",
                    diffs.join("\n    ")
                ),
            });
        }
    }
    None
}

/// Aborts a FUSE connection that stops answering, so that a hung daemon
/// fails the test instead of stalling it.
struct Watchdog {
    progress: Arc<AtomicU64>,
    done: Arc<AtomicBool>,
}

impl Watchdog {
    fn start(mnt: &Path, subject: Subject) -> Watchdog {
        let progress = Arc::new(AtomicU64::new(0));
        let done = Arc::new(AtomicBool::new(false));
        let dev = stat_raw(mnt, false).map(|st| st.st_dev).unwrap_or(0);
        if subject == Subject::Unionfuse && dev != 0 {
            let (p, d) = (progress.clone(), done.clone());
            let abort = format!("/sys/fs/fuse/connections/{}/abort", libc::minor(dev));
            std::thread::spawn(move || {
                let mut last = (u64::MAX, Instant::now());
                while !d.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(200));
                    let now = p.load(Ordering::Relaxed);
                    if now != last.0 {
                        last = (now, Instant::now());
                    } else if last.1.elapsed() > Duration::from_secs(60) {
                        eprintln!(
                            "differential: no progress for 60 s, aborting the FUSE connection"
                        );
                        let _ = fs::write(&abort, "1");
                        return;
                    }
                }
            });
        }
        Watchdog { progress, done }
    }
    fn tick(&self) {
        self.progress.fetch_add(1, Ordering::Relaxed);
    }
    fn stop(&self) {
        self.done.store(true, Ordering::Relaxed);
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.stop();
    }
}

// ---------------------------------------------------------------------------
// Shrinking and reporting.
// ---------------------------------------------------------------------------

/// Delta debugging: drops chunks of ops, then single ops, as long as the
/// same kind of failure remains; bounded by `budget`. Replays compare the
/// trees after every op, so the first replay may find an earlier symptom of
/// the same divergence; that one is then what the shrinking keeps.
fn shrink(
    seed: u64,
    ops: &[Op],
    first: &Failure,
    subject: Subject,
    budget: Duration,
) -> (Vec<Op>, Failure, usize) {
    let start = Instant::now();
    let cut = |ops: &[Op], f: &Failure| -> Vec<Op> {
        match f.at {
            Some(i) if i < ops.len() => ops[..=i].to_vec(),
            _ => ops.to_vec(),
        }
    };
    let replay = |ops: &[Op], every: usize| {
        run_case(
            seed,
            Plan::Replay(ops),
            subject,
            every,
            &mut Stats::default(),
        )
        .1
    };
    // Comparing after every op finds the earliest symptom, but the scans also
    // fill the kernel's caches, which can hide a stale-cache bug; then the
    // checks keep the spacing of the first run.
    let mut runs = 1;
    let mut every = 1;
    let mut fail = replay(&cut(ops, first), every);
    if fail.is_none() {
        runs += 1;
        every = CHECK_EVERY;
        fail = replay(&cut(ops, first), every).filter(|f| f.kind == first.kind);
    }
    let Some(mut fail) = fail else {
        return (cut(ops, first), first.clone(), runs);
    };
    let mut best = cut(&cut(ops, first), &fail);
    let mut chunk = (best.len() / 2).max(1);
    while start.elapsed() < budget {
        let mut removed = false;
        let mut i = 0;
        while i < best.len() && start.elapsed() < budget {
            let end = (i + chunk).min(best.len());
            let cand: Vec<Op> = best[..i].iter().chain(&best[end..]).cloned().collect();
            runs += 1;
            match replay(&cand, every).filter(|f| f.kind == fail.kind) {
                Some(f) => {
                    best = cut(&cand, &f);
                    fail = f;
                    removed = true;
                }
                None => i += chunk,
            }
        }
        if chunk == 1 {
            if !removed {
                break;
            }
        } else {
            chunk = (chunk / 2).max(1);
        }
    }
    (best, fail, runs)
}

fn env_num(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    Some(
        v.trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v}: not a number")),
    )
}

fn oracle_unavailable(why: &str) -> bool {
    if std::env::var("UNIONFUSE_NO_KERNEL_ORACLE").as_deref() == Ok("1") {
        if !is_root() {
            eprintln!("skipped as non-root: differential test against kernel overlayfs ({why})");
        }
        eprintln!(
            "\n!!!!!!!!!! differential test against kernel overlayfs SKIPPED ({why}); \
             UNIONFUSE_NO_KERNEL_ORACLE=1 is set !!!!!!!!!!\n"
        );
        return true;
    }
    panic!(
        "\n!!!!!!!!!! KERNEL OVERLAYFS ORACLE UNAVAILABLE: {why} !!!!!!!!!!\n\
         The differential test needs root and overlayfs. Set \
         UNIONFUSE_NO_KERNEL_ORACLE=1 to skip it knowingly.\n"
    );
}

/// Whether kernel overlayfs with an upper can be mounted here at all.
fn kernel_available() -> bool {
    if !is_root() {
        return !oracle_unavailable("not running as root");
    }
    let s = Scratch::new();
    let (l, u, w, m) = (s.mkdir("l"), s.mkdir("u"), s.mkdir("w"), s.mkdir("m"));
    match KernelOverlay::new(&[&l], Some((&u, &w)), &m, KERNEL_OPTS) {
        Ok(_k) => true,
        Err(e) => !oracle_unavailable(&e),
    }
}

fn run_all(subject: Subject, first: u64, runs: u64, n: usize) {
    let budget = Duration::from_secs(env_num("UNIONFUSE_DIFF_SHRINK_SECS").unwrap_or(180));
    let sname = subject_name(subject);
    let started = Instant::now();
    for seed in first..first + runs {
        let mut st = Stats::default();
        let (ops, fail) = run_case(seed, Plan::Generate(n), subject, CHECK_EVERY, &mut st);
        let Some(fail) = fail else {
            eprintln!(
                "differential: seed {seed}: {} calls succeeded, {} failed alike, \
                 {} directory renames replayed as copies on the kernel, {} skipped, \
                 {} objects at the end",
                st.ok, st.failed, st.emulated, st.skipped, st.objects
            );
            continue;
        };
        eprintln!(
            "differential: seed {seed} failed ({}); shrinking for up to {} s",
            fail.detail.lines().next().unwrap_or(""),
            budget.as_secs()
        );
        let (min, mfail, tries) = shrink(seed, &ops, &fail, subject, budget);
        let lowers = random_lowers(seed);
        let mut layers = String::new();
        for (i, l) in lowers.iter().enumerate() {
            layers.push_str(&format!("  lower {i} ({}):\n", ["top", "bottom"][i]));
            for e in l {
                layers.push_str(&format!("    {e}\n"));
            }
        }
        let seq: Vec<String> = min
            .iter()
            .enumerate()
            .map(|(i, op)| format!("  {i:>3}. {op}"))
            .collect();
        panic!(
            "\n{sname} differs from kernel overlayfs, seed {seed} ({n} ops per run)\n\
             reproduce: UNIONFUSE_DIFF_SEED={seed} UNIONFUSE_DIFF_OPS={n} \
             cargo test --test differential -- --nocapture\n\n\
             first failure:\n  {}\n\n\
             shortest failing sequence found ({} ops, {tries} shrink runs):\n{}\n\n\
             its failure:\n  {}\n\nlayers of seed {seed}:\n{layers}",
            fail.detail,
            min.len(),
            seq.join("\n"),
            mfail.detail
        );
    }
    eprintln!(
        "differential: {sname} agreed with kernel overlayfs on {runs} seeds from {first}, \
         {n} ops each, in {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

#[test]
fn differential_unionfuse_against_kernel_overlayfs() {
    if !kernel_available() {
        return;
    }
    let long = std::env::var("UNIONFUSE_DIFF_LONG").as_deref() == Ok("1");
    let seed = env_num("UNIONFUSE_DIFF_SEED");
    let runs = env_num("UNIONFUSE_DIFF_RUNS").unwrap_or(match (seed, long) {
        (_, true) => 200,
        (Some(_), false) => 1,
        (None, false) => 8,
    });
    let n = env_num("UNIONFUSE_DIFF_OPS").unwrap_or(if long { 3000 } else { 400 });
    run_all(Subject::Unionfuse, seed.unwrap_or(1), runs, n as usize);
}

/// The harness against itself: kernel overlayfs on both sides must agree on
/// every call and tree, or the comparisons above are not to be trusted
/// (layers not built identically, time-dependent values compared, an
/// emulated rename that does not match).
#[test]
fn differential_harness_kernel_against_itself() {
    if !kernel_available() {
        return;
    }
    run_all(Subject::Kernel, 1, 2, 300);
}

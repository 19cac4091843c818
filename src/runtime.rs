//! What a live mount tells the rest of the system about itself.
//!
//! Each daemon (and each in-process mount) publishes a record named after
//! its FUSE connection's device number in a runtime directory, and holds a
//! lock on it for as long as it lives. The lock is released by the kernel
//! when the process exits, so it answers "is that daemon gone?" without
//! guessing from PIDs or command lines: `unionfuse umount` waits on it, and
//! `diff`, `reset`, `checkpoint` and `restore` read a mount's layers from it,
//! whichever build or program made the mount.
//!
//! A second lock, on the work directory, keeps two daemons off one staging
//! area: a new mount waits for an exiting daemon to finish with it, and is
//! refused while a live mount uses it.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use log::{debug, warn};

use crate::failure::Failure;
use crate::mountinfo::{self, Dev, Entry};

/// Overrides where records live (tests, and hosts with unusual layouts).
pub const DIR_ENV: &str = "UNIONFUSE_RUNTIME_DIR";

/// How long a new mount waits for an exiting daemon to let go of its work
/// directory. Exiting includes writing back the upper (syncfs), which can
/// take a while on a loaded disk.
pub const WORK_WAIT: Duration = Duration::from_secs(30);

/// Everything another process needs to know of a live mount.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub pid: u32,
    pub dev: Dev,
    pub mountpoint: PathBuf,
    /// Top-most first.
    pub lowers: Vec<PathBuf>,
    pub upper: Option<PathBuf>,
    pub work: Option<PathBuf>,
    pub read_only: bool,
    /// Seconds since the epoch.
    pub started: u64,
    /// The daemon's pid namespace (inode of /proc/self/ns/pid): `pid` means
    /// the same process only to a reader in that namespace.
    pub pid_ns: Option<u64>,
}

impl Record {
    /// `key=value` fields separated by NUL bytes: paths may hold any other
    /// byte, newlines included.
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        let mut field = |k: &str, v: &[u8]| {
            out.extend_from_slice(k.as_bytes());
            out.push(b'=');
            out.extend_from_slice(v);
            out.push(0);
        };
        field("version", b"1");
        field("pid", self.pid.to_string().as_bytes());
        field("dev", self.dev.to_string().as_bytes());
        field("mountpoint", self.mountpoint.as_os_str().as_bytes());
        for l in &self.lowers {
            field("lower", l.as_os_str().as_bytes());
        }
        if let Some(u) = &self.upper {
            field("upper", u.as_os_str().as_bytes());
        }
        if let Some(w) = &self.work {
            field("work", w.as_os_str().as_bytes());
        }
        field("read_only", if self.read_only { b"1" } else { b"0" });
        field("started", self.started.to_string().as_bytes());
        if let Some(ns) = self.pid_ns {
            field("pid_ns", ns.to_string().as_bytes());
        }
        out
    }

    fn decode(b: &[u8]) -> Option<Record> {
        let mut r = Record {
            pid: 0,
            dev: Dev { major: 0, minor: 0 },
            mountpoint: PathBuf::new(),
            lowers: Vec::new(),
            upper: None,
            work: None,
            read_only: false,
            started: 0,
            pid_ns: None,
        };
        let num = |v: &[u8]| std::str::from_utf8(v).ok()?.parse::<u64>().ok();
        let path = |v: &[u8]| PathBuf::from(std::ffi::OsString::from_vec(v.to_vec()));
        let mut dev = None;
        for f in b.split(|c| *c == 0).filter(|f| !f.is_empty()) {
            let eq = f.iter().position(|c| *c == b'=')?;
            let (k, v) = (&f[..eq], &f[eq + 1..]);
            match k {
                b"version" if v != b"1" => return None,
                b"pid" => r.pid = u32::try_from(num(v)?).ok()?,
                b"dev" => {
                    let (a, m) = std::str::from_utf8(v).ok()?.split_once(':')?;
                    dev = Some(Dev {
                        major: a.parse().ok()?,
                        minor: m.parse().ok()?,
                    });
                }
                b"mountpoint" => r.mountpoint = path(v),
                b"lower" => r.lowers.push(path(v)),
                b"upper" => r.upper = Some(path(v)),
                b"work" => r.work = Some(path(v)),
                b"read_only" => r.read_only = v == b"1",
                b"started" => r.started = num(v)?,
                b"pid_ns" => r.pid_ns = Some(num(v)?),
                // Fields of later versions are ignored.
                _ => {}
            }
        }
        r.dev = dev?;
        (r.pid != 0 && !r.mountpoint.as_os_str().is_empty()).then_some(r)
    }
}

/// This process's runtime directory for records.
pub fn own_dir() -> PathBuf {
    if let Some(d) = std::env::var_os(DIR_ENV).filter(|d| !d.is_empty()) {
        return PathBuf::from(d);
    }
    if crate::sys::is_root() {
        return PathBuf::from("/run/unionfuse");
    }
    if let Some(x) = std::env::var_os("XDG_RUNTIME_DIR").map(PathBuf::from)
        && x.is_absolute()
    {
        return x.join("unionfuse");
    }
    PathBuf::from(format!("/tmp/unionfuse-{}", uid()))
}

fn uid() -> u32 {
    crate::sys::euid()
}

/// Where the records of a mount owned by `owner` may be: ours, and for
/// root also the usual places of that user's.
fn dirs_for(owner: Option<u32>) -> Vec<PathBuf> {
    let mut dirs = vec![own_dir()];
    if let Some(u) = owner
        && crate::sys::is_root()
        && u != 0
    {
        dirs.push(PathBuf::from(format!("/run/user/{u}/unionfuse")));
        dirs.push(PathBuf::from(format!("/tmp/unionfuse-{u}")));
    }
    dirs
}

/// Creates the runtime directory when missing and checks that nobody else
/// can plant records in it (a shared /tmp).
fn ensure_own_dir() -> std::io::Result<PathBuf> {
    let dir = own_dir();
    match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    let m = std::fs::symlink_metadata(&dir)?;
    if !m.is_dir() || m.uid() != uid() || m.mode() & 0o022 != 0 {
        return Err(std::io::Error::other(format!(
            "{} is not a directory of this user's that only it may write",
            dir.display()
        )));
    }
    Ok(dir)
}

fn open_nofollow(path: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
}

/// Serialises publishing and withdrawing in one directory, so that a
/// daemon withdrawing its record never removes a newer one of the same
/// name (a device number the kernel handed out again).
fn dir_lock(dir: &Path) -> std::io::Result<File> {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(dir.join(".lock"))?;
    f.lock()?;
    Ok(f)
}

/// A record this process published; dropping it withdraws the record and
/// then releases the lock, which is what waiters see.
#[derive(Debug)]
pub struct Published {
    file: File,
    path: PathBuf,
}

impl Published {
    /// The runtime directory the record is in.
    pub fn dir(&self) -> &Path {
        self.path.parent().unwrap_or(Path::new("/"))
    }

    /// Writes `rec` under its device number, locked before it becomes
    /// visible so that nobody sees an unlocked live record.
    pub fn publish(rec: &Record) -> std::io::Result<Published> {
        let dir = ensure_own_dir()?;
        let path = dir.join(rec.dev.to_string());
        let tmp = dir.join(format!(".{}.{}", rec.dev, rec.pid));
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&tmp)?;
        file.lock()?;
        file.write_all(&rec.encode())?;
        let _guard = dir_lock(&dir)?;
        if let Err(e) = std::fs::rename(&tmp, &path) {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
        Ok(Published { file, path })
    }
}

impl Drop for Published {
    fn drop(&mut self) {
        let Some(dir) = self.path.parent() else {
            return;
        };
        let guard = dir_lock(dir);
        let ours = std::fs::symlink_metadata(&self.path)
            .ok()
            .zip(self.file.metadata().ok())
            .is_some_and(|(a, b)| a.ino() == b.ino() && a.dev() == b.dev());
        if ours && let Err(e) = std::fs::remove_file(&self.path) {
            debug!("cannot remove {}: {e}", self.path.display());
        }
        drop(guard);
        // The file closes after this, releasing the lock last.
    }
}

/// A live daemon's record, opened to wait for the daemon to exit.
#[derive(Debug)]
pub struct Watch {
    file: File,
    pub record: Record,
    /// The runtime directory the record was found in.
    pub dir: PathBuf,
    /// The process holding the record's lock, when it could be told: the
    /// lock is released as the process exits, a moment before it is gone.
    pidfd: Option<OwnedFd>,
}

impl Watch {
    /// The record of the daemon serving `mount`, if that daemon published
    /// one and is alive.
    pub fn find(mount: &Entry) -> Option<Watch> {
        for dir in dirs_for(mount.owner()) {
            let Ok(mut file) = open_nofollow(&dir.join(mount.dev.to_string())) else {
                continue;
            };
            let mut raw = Vec::new();
            if file.read_to_end(&mut raw).is_err() {
                continue;
            }
            let Some(record) = Record::decode(&raw) else {
                continue;
            };
            if record.dev != mount.dev || record.mountpoint != mount.mountpoint {
                continue;
            }
            match file.try_lock_shared() {
                // Nobody holds it: the daemon is gone (killed); a stale record.
                Ok(()) => continue,
                Err(TryLockError::WouldBlock) => {
                    let pidfd = record_pidfd(&file, &record).or_else(|| holder_pidfd(&file));
                    return Some(Watch {
                        file,
                        record,
                        dir,
                        pidfd,
                    });
                }
                Err(TryLockError::Error(e)) => {
                    debug!("cannot probe {}: {e}", dir.display());
                    continue;
                }
            }
        }
        None
    }

    /// The record of the live mount at `path`, for the verbs that act on a
    /// mount's layers.
    pub fn at(path: &Path) -> Result<Watch, Failure> {
        let entry = mountinfo::unionfuse_at(path)?;
        Watch::find(&entry).ok_or_else(|| {
            Failure::Daemon(format!(
                "no live unionfuse daemon has published the mount at {}",
                path.display()
            ))
        })
    }

    /// Waits until the daemon has exited (its lock is released, and the
    /// process is gone), for at most `timeout`.
    pub fn wait_exit(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut pause = Duration::from_micros(500);
        loop {
            match self.file.try_lock_shared() {
                Ok(()) => {
                    let Some(fd) = &self.pidfd else {
                        return true;
                    };
                    let left = deadline.saturating_duration_since(Instant::now());
                    let ms = i32::try_from(left.as_millis()).unwrap_or(i32::MAX);
                    return crate::sys::poll_readable(fd.as_fd(), ms).unwrap_or(true);
                }
                Err(TryLockError::WouldBlock) => {}
                Err(TryLockError::Error(e)) => {
                    warn!("cannot wait for daemon {}: {e}", self.record.pid);
                    return false;
                }
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(20));
        }
    }
}

/// This process's pid namespace, as records name it.
pub fn own_pid_ns() -> Option<u64> {
    std::fs::metadata("/proc/self/ns/pid").ok().map(|m| m.ino())
}

/// A pidfd of the daemon that wrote `record` and holds `file`'s lock, when
/// it runs in this pid namespace. Cheaper than [`holder_pidfd`]: reading
/// /proc/locks takes the kernel's file-lock semaphore for writing, which
/// waits for an RCU grace period (about 12 ms here) on every verb.
fn record_pidfd(file: &File, record: &Record) -> Option<OwnedFd> {
    if record.pid_ns.is_none() || record.pid_ns != own_pid_ns() {
        return None;
    }
    let fd = crate::sys::pidfd_open(record.pid).ok()?;
    // Still held after the pidfd was taken: the daemon, which holds it, was
    // alive then, so its pid had not been reused.
    matches!(file.try_lock_shared(), Err(TryLockError::WouldBlock)).then_some(fd)
}

/// A pidfd of the process holding `file`'s lock, found in /proc/locks (whose
/// pids are those of this process's namespace, unlike a pid a record may
/// carry from another one).
fn holder_pidfd(file: &File) -> Option<OwnedFd> {
    let m = file.metadata().ok()?;
    let want = format!(
        "{:02x}:{:02x}:{}",
        libc::major(m.dev()),
        libc::minor(m.dev()),
        m.ino()
    );
    let locks = std::fs::read_to_string("/proc/locks").ok()?;
    let pid = locks.lines().find_map(|l| {
        // "1: FLOCK  ADVISORY  WRITE 4242 00:1a:98765 0 EOF"
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.get(1) == Some(&"FLOCK")
            && f.get(3) == Some(&"WRITE")
            && f.get(5) == Some(&want.as_str()))
        .then(|| f.get(4)?.parse::<u32>().ok())
        .flatten()
    })?;
    let fd = crate::sys::pidfd_open(pid).ok()?;
    // Still held after the pidfd was taken: the pid was not reused.
    matches!(file.try_lock_shared(), Err(TryLockError::WouldBlock)).then_some(fd)
}

/// The live records in this process's runtime directory.
pub fn live_records() -> Vec<Record> {
    records()
        .into_iter()
        .filter_map(|(r, live)| live.then_some(r))
        .collect()
}

/// Every record in this process's runtime directory, each with whether
/// its daemon still holds it (a daemon that was killed leaves its record
/// behind, unlocked).
pub fn records() -> Vec<(Record, bool)> {
    let Ok(rd) = std::fs::read_dir(own_dir()) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for ent in rd.flatten() {
        if ent.file_name().as_bytes().starts_with(b".") {
            continue;
        }
        let Ok(mut file) = open_nofollow(&ent.path()) else {
            continue;
        };
        let mut raw = Vec::new();
        if file.read_to_end(&mut raw).is_err() {
            continue;
        }
        if let Some(r) = Record::decode(&raw) {
            let live = matches!(file.try_lock_shared(), Err(TryLockError::WouldBlock));
            out.push((r, live));
        }
    }
    out
}

/// Exclusive use of a work directory for one mount's life.
#[derive(Debug)]
pub struct WorkLock {
    _dir: File,
}

/// Takes the work directory `work`: at once when it is free, after waiting
/// (up to `wait`) for an exiting daemon to let go of it, and never while a
/// live mount uses it.
pub fn lock_work(work: &Path, wait: Duration) -> Result<WorkLock, Failure> {
    lock_work_dir(work, wait).map_err(Failure::Mount)
}

fn lock_work_dir(work: &Path, wait: Duration) -> Result<WorkLock, String> {
    let dir = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW)
        .open(work)
        .map_err(|e| format!("cannot open work directory {}: {e}", work.display()))?;
    let deadline = Instant::now() + wait;
    let mut pause = Duration::from_micros(500);
    loop {
        match dir.try_lock() {
            Ok(()) => return Ok(WorkLock { _dir: dir }),
            Err(TryLockError::WouldBlock) => {}
            Err(TryLockError::Error(e)) => {
                return Err(format!(
                    "cannot lock work directory {}: {e}",
                    work.display()
                ));
            }
        }
        if let Some(r) = live_records().into_iter().find(|r| {
            r.work.as_deref() == Some(work) && mountinfo::is_mounted_at(&r.mountpoint, r.dev)
        }) {
            return Err(format!(
                "work directory {} is in use by the mount at {} (daemon PID {})",
                work.display(),
                r.mountpoint.display(),
                r.pid
            ));
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "work directory {} is still held by another unionfuse daemon after {} s",
                work.display(),
                wait.as_secs()
            ));
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(20));
    }
}

/// Seconds since the epoch, for [`Record::started`].
pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_any_path_bytes() {
        let r = Record {
            pid: 42,
            dev: Dev {
                major: 0,
                minor: 77,
            },
            mountpoint: PathBuf::from("/m\nx"),
            lowers: vec![
                PathBuf::from("/l1"),
                PathBuf::from(std::ffi::OsString::from_vec(b"/l\xff:2".to_vec())),
            ],
            upper: Some(PathBuf::from("/u")),
            work: None,
            read_only: true,
            started: 1_700_000_000,
            pid_ns: Some(4_026_531_836),
        };
        assert_eq!(Record::decode(&r.encode()), Some(r));
        assert_eq!(
            Record::decode(b"version=2\0pid=1\0dev=0:1\0mountpoint=/m\0"),
            None
        );
        assert_eq!(Record::decode(b"pid=1\0mountpoint=/m\0"), None);
    }
}

//! `unionfuse run`: a throwaway container root for one command, as a test
//! harness wants it. Mounts the image (with a temporary upper unless one is
//! given), runs the command chrooted into the merged tree in private mount
//! and PID namespaces (and a user namespace without root) with a /proc of
//! its own, the host's /dev and /sys and any volumes bound in, then
//! unmounts and removes the temporary upper. The command's exit status is
//! returned. (The command line's `unionfuse run` is `crate::cli`.)

use std::ffi::{CString, OsString};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};
use std::process::Command;

use crate::api::Mount;
use crate::failure::Failure;
use crate::name::Name;
use crate::progress::Progress;
use crate::sys::{self, RootSetup};

/// A `run` request: the layers, the volumes and the command.
#[derive(Debug)]
pub struct RunOptions {
    /// Read-only layers, top-most first.
    pub lowers: Vec<PathBuf>,
    /// Keep the changes in this upper; `None`: a temporary one.
    pub upper: Option<PathBuf>,
    /// `HOST:/PATH` binds.
    pub volumes: Vec<String>,
    /// Print what the command changed before cleanup.
    pub diff: bool,
    /// The command and its arguments (at least the command).
    pub command: Vec<OsString>,
}

fn cstr(p: &Path) -> Result<CString, String> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| format!("{} holds a NUL byte", p.display()))
}

/// A fresh private directory for the temporary layers and the root.
fn temp_base() -> Result<PathBuf, String> {
    let tmp = std::env::var_os("TMPDIR").map_or_else(|| PathBuf::from("/tmp"), PathBuf::from);
    for n in 0..100u32 {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let p = tmp.join(format!("unionfuse-run.{}.{nanos}.{n}", std::process::id()));
        match std::fs::create_dir(&p) {
            Ok(()) => return Ok(p),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => {
                return Err(format!(
                    "cannot create a directory in {}: {e}",
                    tmp.display()
                ));
            }
        }
    }
    Err(format!("cannot create a directory in {}", tmp.display()))
}

/// Makes `inside` (an absolute path in the container) exist in the root,
/// as a directory or an empty file, and returns it relative to the root.
/// Every component is resolved inside the root as the container would
/// resolve it (`RESOLVE_IN_ROOT`): a symlink in the image is followed, but
/// never out to the host. What it creates is pushed to `made`, as
/// `(directory, name, is_dir)`, for removal afterwards.
fn make_target(
    root: BorrowedFd<'_>,
    inside: &Path,
    dir: bool,
    made: &mut Vec<(OwnedFd, Name, bool)>,
) -> Result<CString, String> {
    let shown = inside.display();
    let mut names = Vec::new();
    for c in inside.components() {
        match c {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(n) => {
                names.push(Name::from_bytes(n.as_bytes()).map_err(|e| format!("{shown}: {e}"))?)
            }
            _ => return Err(format!("{shown}: '..' is not allowed in a container path")),
        }
    }
    if names.is_empty() {
        return Err(format!("{shown}: cannot bind over the container's root"));
    }
    let mut rel = Vec::new();
    let mut cur = root
        .try_clone_to_owned()
        .map_err(|e| format!("{shown}: {e}"))?;
    for (i, name) in names.iter().enumerate() {
        let last = i + 1 == names.len();
        if !rel.is_empty() {
            rel.push(b'/');
        }
        rel.extend_from_slice(name.as_bytes());
        let crel = CString::new(rel.clone()).map_err(|_| format!("{shown}: NUL byte"))?;
        let flags = if last {
            libc::O_PATH
        } else {
            libc::O_PATH | libc::O_DIRECTORY
        };
        match sys::open_in_root(root, &crel, flags) {
            Ok(fd) => {
                cur = fd;
                continue;
            }
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
            Err(e) => return Err(format!("{shown}: {e}")),
        }
        let is_dir = dir || !last;
        // Inside the container's root, which has a writable layer.
        let at = sys::Writable::new(cur.as_fd());
        let res = if is_dir {
            sys::mkdirat(at, name.as_cstr(), 0o755)
        } else {
            sys::create_file(at, name.as_cstr(), libc::O_WRONLY, 0o644).map(drop)
        };
        match res {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
                return Err(format!(
                    "{shown}: {} exists in the image but leads nowhere inside the root (a dangling symlink)",
                    String::from_utf8_lossy(&rel)
                ));
            }
            Err(e) => return Err(format!("cannot make {shown} in the root: {e}")),
        }
        let parent = cur;
        cur = sys::open_in_root(root, &crel, flags).map_err(|e| format!("{shown}: {e}"))?;
        made.push((parent, name.clone(), is_dir));
    }
    CString::new(rel).map_err(|_| format!("{shown}: NUL byte"))
}

/// Runs the command; returns its exit status (128 + signal when killed).
/// The walk of `--diff` counts its entries into `progress`.
pub fn run(args: &RunOptions, progress: &dyn Progress) -> Result<i32, Failure> {
    run_checked(args, progress).map_err(Failure::Mount)
}

fn run_checked(args: &RunOptions, progress: &dyn Progress) -> Result<i32, String> {
    let mut volumes = Vec::new();
    for v in &args.volumes {
        let (host, path) = v
            .split_once(':')
            .filter(|(h, p)| !h.is_empty() && p.starts_with('/'))
            .ok_or_else(|| format!("volume {v:?}: expected HOST:/PATH"))?;
        let host = std::fs::canonicalize(host).map_err(|e| format!("volume host {host}: {e}"))?;
        volumes.push((host, PathBuf::from(path)));
    }
    let base = temp_base()?;
    let res = run_in(args, &base, &volumes, progress);
    // The base holds the root and, without --upper, the temporary layer.
    if let Err(e) = std::fs::remove_dir_all(&base) {
        log::warn!("cannot remove {}: {e}", base.display());
    }
    res
}

fn run_in(
    args: &RunOptions,
    base: &Path,
    volumes: &[(PathBuf, PathBuf)],
    progress: &dyn Progress,
) -> Result<i32, String> {
    let root = base.join("root");
    let upper = match &args.upper {
        Some(u) => u.clone(),
        None => base.join("upper"),
    };
    for d in [&root, &upper] {
        if !d.exists() {
            std::fs::create_dir(d).map_err(|e| format!("cannot create {}: {e}", d.display()))?;
        }
    }
    let mut builder = Mount::builder().upper(&upper);
    if args.upper.is_none() {
        builder = builder.work(base.join("work"));
        std::fs::create_dir(base.join("work"))
            .map_err(|e| format!("cannot create work dir: {e}"))?;
    }
    for l in &args.lowers {
        builder = builder.lower(l);
    }
    let mut mount = builder.mount(&root).map_err(|e| e.to_string())?;
    let root_fd = sys::open_dir_path(&root).map_err(|e| format!("{}: {e}", root.display()))?;
    let mut made = Vec::new();
    let res = bind_and_run(args, &root, root_fd.as_fd(), volumes, &mut made);
    // Mountpoints made for the binds are not the command's changes, nor
    // are they left in a kept upper when the command could not run.
    for (dir, name, is_dir) in made.iter().rev() {
        if let Err(e) = sys::unlinkat(sys::Writable::new(dir.as_fd()), name.as_cstr(), *is_dir) {
            log::debug!("cannot remove a bind target: {e}");
        }
    }
    // A descriptor into the root keeps the mount busy: the unmount below
    // would then wait for it and detach the mount instead of ending it.
    drop(made);
    drop(root_fd);
    let code = res?;
    if args.diff {
        let changes = mount
            .diff_with_progress(progress)
            .map_err(|e| e.to_string())?;
        use std::io::Write;
        let _ = std::io::stdout().write_all(&crate::diff::format_text(&changes));
    }
    if mount.unmount().is_err() {
        // Something the command left running still uses the root.
        drop(mount);
    }
    Ok(code)
}

/// Makes the bind targets in the root (recording each in `made`), then
/// runs the command there; returns its exit status.
fn bind_and_run(
    args: &RunOptions,
    root: &Path,
    root_fd: BorrowedFd<'_>,
    volumes: &[(PathBuf, PathBuf)],
    made: &mut Vec<(OwnedFd, Name, bool)>,
) -> Result<i32, String> {
    let mut binds = Vec::new();
    for d in ["/proc", "/dev", "/sys"] {
        let rel = make_target(root_fd, Path::new(d), true, made)?;
        binds.push((cstr(Path::new(d))?, rel));
    }
    for (host, path) in volumes {
        let rel = make_target(root_fd, path, host.is_dir(), made)?;
        binds.push((cstr(host)?, rel));
    }
    let (uid, gid) = sys::ids();
    let userns = (uid != 0).then(|| {
        (
            CString::new(format!("0 {uid} 1\n")).unwrap_or_default(),
            CString::new(format!("0 {gid} 1\n")).unwrap_or_default(),
        )
    });
    let setup = RootSetup {
        root: cstr(root)?,
        binds,
        userns,
    };
    let mut cmd = Command::new(&args.command[0]);
    cmd.args(&args.command[1..])
        .env_clear()
        .env(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        )
        .env("HOME", "/root");
    if let Some(term) = std::env::var_os("TERM") {
        cmd.env("TERM", term);
    }
    let status = sys::spawn_in_root(&mut cmd, setup)
        .and_then(|mut c| c.wait())
        .map_err(|e| format!("cannot run {:?}: {e}", args.command[0]))?;
    use std::os::unix::process::ExitStatusExt;
    Ok(status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0)))
}

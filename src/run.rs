//! `unionfuse run`: a throwaway container root for one command, as a test
//! harness wants it. Mounts the image (with a temporary upper unless one is
//! given), runs the command chrooted into the merged tree in private mount
//! and PID namespaces (and a user namespace without root) with a /proc of
//! its own, the host's /dev and /sys and any volumes bound in, then
//! unmounts and removes the temporary upper. The command's exit status is
//! returned.

use std::ffi::{CString, OsString};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use clap::Args;

use crate::api::Mount;
use crate::sys::{self, RootSetup};

#[derive(Debug, Args)]
pub struct RunArgs {
    /// A read-only layer, top-most first (repeatable, or a colon list).
    #[arg(long = "lower", value_name = "DIR", required = true)]
    pub lower: Vec<OsString>,
    /// Keep the changes in this upper; default: a temporary one, removed
    /// afterwards.
    #[arg(long, value_name = "DIR")]
    pub upper: Option<PathBuf>,
    /// Bind HOST (a directory or file) at PATH inside the root: what is
    /// written there outlives the container, as a container's volume.
    #[arg(long = "volume", short = 'v', value_name = "HOST:PATH")]
    pub volume: Vec<String>,
    /// Print what the command changed (as `unionfuse diff`) before cleanup.
    #[arg(long)]
    pub diff: bool,
    /// The command and its arguments.
    #[arg(last = true, required = true, value_name = "COMMAND")]
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

/// Runs the command; returns its exit status (128 + signal when killed).
pub fn run(args: &RunArgs) -> Result<i32, String> {
    let mut volumes = Vec::new();
    for v in &args.volume {
        let (host, path) = v
            .split_once(':')
            .filter(|(h, p)| !h.is_empty() && p.starts_with('/'))
            .ok_or_else(|| format!("volume {v:?}: expected HOST:/PATH"))?;
        let host = std::fs::canonicalize(host).map_err(|e| format!("volume host {host}: {e}"))?;
        volumes.push((host, PathBuf::from(path)));
    }
    let base = temp_base()?;
    let res = run_in(args, &base, &volumes);
    // The base holds the root and, without --upper, the temporary layer.
    if let Err(e) = std::fs::remove_dir_all(&base) {
        log::warn!("cannot remove {}: {e}", base.display());
    }
    res
}

fn run_in(args: &RunArgs, base: &Path, volumes: &[(PathBuf, PathBuf)]) -> Result<i32, String> {
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
    for v in &args.lower {
        for l in crate::cli::split_lowers(v) {
            builder = builder.lower(l);
        }
    }
    let mut mount = builder.mount(&root)?;
    let mut binds = Vec::new();
    let mut made: Vec<PathBuf> = Vec::new();
    let mut bind = |src: &Path, inside: &Path| -> Result<(), String> {
        let target = root.join(inside.strip_prefix("/").unwrap_or(inside));
        if !target.exists() {
            made.push(target.clone());
            // Made through the mount: the container's layer, not the image.
            if src.is_dir() {
                std::fs::create_dir_all(&target)
            } else {
                if let Some(p) = target.parent() {
                    std::fs::create_dir_all(p).map_err(|e| format!("{}: {e}", p.display()))?;
                }
                std::fs::write(&target, b"")
            }
            .map_err(|e| format!("cannot make {} in the root: {e}", inside.display()))?;
        }
        binds.push((cstr(src)?, cstr(&target)?));
        Ok(())
    };
    for d in ["/proc", "/dev", "/sys"] {
        bind(Path::new(d), Path::new(d))?;
    }
    for (host, path) in volumes {
        bind(host, path)?;
    }
    let (uid, gid) = sys::ids();
    let userns = (uid != 0).then(|| {
        (
            CString::new(format!("0 {uid} 1\n")).unwrap_or_default(),
            CString::new(format!("0 {gid} 1\n")).unwrap_or_default(),
        )
    });
    let setup = RootSetup {
        root: cstr(&root)?,
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
    let code = {
        use std::os::unix::process::ExitStatusExt;
        status
            .code()
            .unwrap_or_else(|| 128 + status.signal().unwrap_or(0))
    };
    // Mountpoints made for the binds are not the command's changes.
    for m in made.iter().rev() {
        let _ = std::fs::remove_dir(m).or_else(|_| std::fs::remove_file(m));
    }
    if args.diff {
        let changes = mount.diff()?;
        use std::io::Write;
        let _ = std::io::stdout().write_all(&crate::diff::format_text(&changes));
    }
    if mount.unmount().is_err() {
        // Something the command left running still uses the root.
        drop(mount);
    }
    Ok(code)
}

//! The control channel of a live mount: `unionfuse reset`, `checkpoint`
//! and `restore` talk to the daemon through a unix socket in its work
//! directory (mode 0700, so only the mount's owner reaches it), one line
//! per request and one line of answer.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use fuser::{INodeNo, Notifier};
use log::warn;

use crate::name::Name;
use crate::reset::Inval;
use crate::union::Union;

/// Where a mount's daemon listens.
pub fn socket_path(work: &Path) -> PathBuf {
    work.join(SOCKET)
}

const SOCKET: &str = "unionfuse-control";

/// A path to the socket short enough for `sun_path` (108 bytes) however
/// deep the work directory is: through the `/proc/self/fd` link of an open
/// descriptor of the directory, which must stay open while it is used.
fn short_path(work: &Path) -> std::io::Result<(std::fs::File, PathBuf)> {
    use std::os::fd::AsRawFd;
    let dir = std::fs::File::open(work)?;
    let p = PathBuf::from(format!("/proc/self/fd/{}/{SOCKET}", dir.as_raw_fd()));
    Ok((dir, p))
}

/// Tells the kernel to forget what a reset changed.
pub fn apply(notifier: &Notifier, inval: &[Inval]) {
    for i in inval {
        let _ = match i {
            Inval::Entry(parent, name) => notifier.inval_entry(
                INodeNo(*parent),
                std::ffi::OsStr::new(std::str::from_utf8(name.as_bytes()).unwrap_or("")),
            ),
            Inval::Inode(ino) => notifier.inval_inode(INodeNo(*ino), 0, 0),
        };
    }
}

fn handle(union: &Union, notifier: &Notifier, line: &str) -> Result<(), String> {
    let mut words = line.split_whitespace();
    let verb = words.next().unwrap_or("");
    let name = || -> Result<Name, String> {
        let n = words.clone().next().ok_or("a checkpoint name is missing")?;
        Name::from_bytes(n.as_bytes()).map_err(|e| format!("checkpoint name {n:?}: {e}"))
    };
    match verb {
        "reset" => apply(notifier, &union.reset().map_err(|e| e.to_string())?),
        "checkpoint" => union.checkpoint(&name()?).map_err(|e| e.to_string())?,
        "restore" => {
            let n = name()?;
            let inval = union.restore(&n).map_err(|e| match e.errno {
                libc::ENOENT => format!(
                    "no checkpoint named {:?}",
                    String::from_utf8_lossy(n.as_bytes())
                ),
                _ => e.to_string(),
            })?;
            apply(notifier, &inval);
        }
        _ => return Err(format!("unknown request {verb:?}")),
    }
    Ok(())
}

/// Serves requests on `path` for the life of the process.
pub fn listen(path: PathBuf, union: Arc<Union>, notifier: Notifier) -> std::io::Result<()> {
    let _ = std::fs::remove_file(&path);
    let (_dir, short) = short_path(path.parent().unwrap_or(Path::new("/")))?;
    let listener = UnixListener::bind(&short)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    std::thread::Builder::new()
        .name("control".into())
        .spawn(move || {
            for stream in listener.incoming().flatten() {
                let mut line = String::new();
                let mut r = BufReader::new(&stream);
                if r.read_line(&mut line).is_err() {
                    continue;
                }
                let answer = match handle(&union, &notifier, line.trim()) {
                    Ok(()) => "ok\n".to_string(),
                    Err(e) => {
                        warn!("control request {:?}: {e}", line.trim());
                        format!("error: {e}\n")
                    }
                };
                let _ = (&stream).write_all(answer.as_bytes());
            }
        })?;
    Ok(())
}

/// Sends one request to the daemon whose work directory is `work`.
pub fn request(work: &Path, line: &str) -> Result<(), String> {
    let path = socket_path(work);
    let unreachable =
        |e: std::io::Error| format!("cannot reach the mount's daemon at {}: {e}", path.display());
    let (_dir, short) = short_path(work).map_err(unreachable)?;
    let mut s = UnixStream::connect(&short).map_err(unreachable)?;
    s.write_all(format!("{line}\n").as_bytes())
        .map_err(|e| format!("cannot talk to the daemon: {e}"))?;
    let mut answer = String::new();
    BufReader::new(&s)
        .read_line(&mut answer)
        .map_err(|e| format!("no answer from the daemon: {e}"))?;
    match answer.trim().strip_prefix("error: ") {
        None if answer.trim() == "ok" => Ok(()),
        None => Err(format!("unexpected answer {:?}", answer.trim())),
        Some(e) => Err(e.to_string()),
    }
}

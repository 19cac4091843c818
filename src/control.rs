//! The control channel of a live mount: `unionfuse stats`, `reset`,
//! `checkpoint` and `restore` talk to the daemon through a unix socket
//! beside its runtime record (a directory only the mount's owner may
//! enter), one line per request and one line of answer.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use fuser::{INodeNo, Notifier};
use log::warn;

use crate::failure::Failure;
use crate::name::Name;
use crate::reset::Inval;
use crate::stats::Stats;
use crate::union::Union;

/// Where the daemon `pid` of connection `dev` listens, in the runtime
/// directory `dir`: named by both, so that a daemon still exiting never
/// removes the socket of a newer mount that got the same device number.
pub fn socket_path(dir: &Path, dev: crate::mountinfo::Dev, pid: u32) -> PathBuf {
    dir.join(format!("{dev}.{pid}.sock"))
}

/// A path to the socket short enough for `sun_path` (108 bytes) however
/// deep its directory is: through the `/proc/self/fd` link of an open
/// descriptor of the directory, which must stay open while it is used.
fn short_path(sock: &Path) -> std::io::Result<(std::fs::File, PathBuf)> {
    use std::os::fd::AsRawFd;
    let dir = std::fs::File::open(sock.parent().unwrap_or(Path::new("/")))?;
    let name = sock.file_name().unwrap_or_default();
    let mut p = PathBuf::from(format!("/proc/self/fd/{}", dir.as_raw_fd()));
    p.push(name);
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

/// Answers one request: `Ok(Some(payload))` for a query, `Ok(None)` for
/// an action done.
fn handle(
    union: &Union,
    notifier: &Notifier,
    stats: &Stats,
    line: &str,
) -> Result<Option<String>, String> {
    let mut words = line.split_whitespace();
    let verb = words.next().unwrap_or("");
    let name = || -> Result<Name, String> {
        let n = words.clone().next().ok_or("a checkpoint name is missing")?;
        Name::from_bytes(n.as_bytes()).map_err(|e| format!("checkpoint name {n:?}: {e}"))
    };
    match verb {
        "stats" => return Ok(Some(crate::stats::encode(&stats.rows()))),
        "reset" => apply(notifier, &union.reset().map_err(|e| e.to_string())?),
        "checkpoint" => {
            let n = name()?;
            union
                .checkpoint(&n)
                .map_err(|e| format!("checkpoint {}: {e}", String::from_utf8_lossy(n.as_bytes())))?
        }
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
    Ok(None)
}

/// Serves requests on `path` for the life of the process.
pub fn listen(
    path: PathBuf,
    union: Arc<Union>,
    notifier: Notifier,
    stats: Arc<Stats>,
) -> std::io::Result<()> {
    let (_dir, short) = short_path(&path)?;
    let _ = std::fs::remove_file(&short);
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
                let answer = match handle(&union, &notifier, &stats, line.trim()) {
                    Ok(None) => "ok\n".to_string(),
                    Ok(Some(payload)) => format!("ok {payload}\n"),
                    Err(e) => {
                        warn!("control request {:?}: {e}", line.trim());
                        // The protocol is one line per answer.
                        format!("error: {}\n", crate::failure::one_line(&e))
                    }
                };
                let _ = (&stream).write_all(answer.as_bytes());
            }
        })?;
    Ok(())
}

/// Sends one request to the daemon listening on `sock`; returns what it
/// answered after `ok` (empty for an action).
pub fn request(sock: &Path, line: &str) -> Result<String, Failure> {
    exchange(sock, line).map_err(Failure::Daemon)
}

fn exchange(sock: &Path, line: &str) -> Result<String, String> {
    let unreachable =
        |e: std::io::Error| format!("cannot reach the mount's daemon at {}: {e}", sock.display());
    let (_dir, short) = short_path(sock).map_err(unreachable)?;
    let mut s = UnixStream::connect(&short).map_err(unreachable)?;
    s.write_all(format!("{line}\n").as_bytes())
        .map_err(|e| format!("cannot talk to the daemon: {e}"))?;
    let mut answer = String::new();
    BufReader::new(&s)
        .read_line(&mut answer)
        .map_err(|e| format!("no answer from the daemon: {e}"))?;
    let answer = answer.trim();
    if let Some(e) = answer.strip_prefix("error: ") {
        return Err(e.to_string());
    }
    match answer.strip_prefix("ok") {
        Some(rest) if rest.is_empty() || rest.starts_with(' ') => Ok(rest.trim_start().to_string()),
        _ => Err(format!("unexpected answer {answer:?}")),
    }
}

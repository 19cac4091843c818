//! The control channel of a live mount: `unionfuse stats`, `reset`,
//! `checkpoint` and `restore` talk to the daemon through a unix socket
//! beside its runtime record (a directory only the mount's owner may
//! enter), one line per request and one line of answer.
//!
//! A `checkpoint` or `restore` request ending in the word `progress` gets
//! `progress ENTRIES BYTES` lines (running totals, a few a second) before
//! its answer. Words are separated by spaces, so names holding whitespace
//! or control characters cannot be sent; the command line refuses them.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fuser::{INodeNo, Notifier};
use log::warn;

use crate::failure::Failure;
use crate::name::Name;
use crate::progress::{Counts, NoProgress, Progress};
use crate::reset::Inval;
use crate::stats::Stats;
use crate::union::Union;

/// Where the daemon `pid` of connection `dev` listens, in the runtime
/// directory `dir`: named by both, so that a daemon still exiting never
/// removes the socket of a newer mount that got the same device number.
pub fn socket_path(dir: &Path, dev: crate::mountinfo::Dev, pid: u32) -> PathBuf {
    dir.join(format!("{dev}.{pid}.sock"))
}

/// Removes the sockets that killed daemons left under this mount's device
/// number: the number is this mount's now, so no live daemon listens on
/// any of them (one still exiting has lost its mount already).
fn sweep_stale(own: &Path) {
    use std::os::unix::ffi::OsStrExt;
    let (Some(dir), Some(name)) = (own.parent(), own.file_name()) else {
        return;
    };
    let name = name.as_bytes();
    let Some(dot) = name.iter().position(|&b| b == b'.') else {
        return;
    };
    let prefix = &name[..=dot];
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for ent in rd.flatten() {
        let n = ent.file_name();
        let n = n.as_bytes();
        if n != name
            && n.starts_with(prefix)
            && n.ends_with(b".sock")
            && ent.file_type().is_ok_and(|t| t.is_socket())
        {
            let _ = std::fs::remove_file(ent.path());
        }
    }
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

/// How often a client asking for progress hears of it.
const PROGRESS_EVERY: Duration = Duration::from_millis(100);

/// How long the daemon waits for a client to take a progress line: one
/// that stopped reading must not hold changes up for long.
const PROGRESS_WRITE_TIMEOUT: Duration = Duration::from_secs(2);

/// Progress sent to a client as `progress ENTRIES BYTES` lines.
struct Streamed<'a> {
    stream: &'a UnixStream,
    counts: Counts,
    /// When the last line went out; `None` once the client stopped taking
    /// them (the work goes on regardless).
    last: parking_lot::Mutex<Option<Instant>>,
}

impl<'a> Streamed<'a> {
    fn new(stream: &'a UnixStream) -> Streamed<'a> {
        let _ = stream.set_write_timeout(Some(PROGRESS_WRITE_TIMEOUT));
        Streamed {
            stream,
            counts: Counts::default(),
            last: parking_lot::Mutex::new(Some(Instant::now())),
        }
    }

    fn send(&self, last: &mut Option<Instant>) {
        let (entries, bytes) = self.counts.get();
        let line = format!("progress {entries} {bytes}\n");
        let mut stream = self.stream;
        *last = match stream.write_all(line.as_bytes()) {
            Ok(()) => Some(Instant::now()),
            Err(_) => None,
        };
    }

    /// Sends the final totals, so that the client ends on exact figures.
    fn flush(&self) {
        let mut last = self.last.lock();
        if last.is_some() {
            self.send(&mut last);
        }
    }
}

impl Progress for Streamed<'_> {
    fn advance(&self, entries: u64, bytes: u64) {
        self.counts.add(entries, bytes);
        let mut last = self.last.lock();
        if last.is_some_and(|t| t.elapsed() >= PROGRESS_EVERY) {
            self.send(&mut last);
        }
    }
}

/// Answers one request: `Ok(Some(payload))` for a query, `Ok(None)` for
/// an action done. Progress lines, when asked for, go to `stream` first.
fn handle(
    union: &Union,
    notifier: &Notifier,
    stats: &Stats,
    line: &str,
    stream: &UnixStream,
) -> Result<Option<String>, String> {
    let mut words = line.split_whitespace();
    let verb = words.next().unwrap_or("");
    let named = matches!(verb, "checkpoint" | "restore");
    let name = if named {
        let n = words.next().ok_or("a checkpoint name is missing")?;
        Some(Name::from_bytes(n.as_bytes()).map_err(|e| format!("checkpoint name {n:?}: {e}"))?)
    } else {
        None
    };
    let streamed = match words.next() {
        None => None,
        Some("progress") if named => Some(Streamed::new(stream)),
        Some(w) => return Err(format!("unexpected {w:?} in a {verb:?} request")),
    };
    if let Some(w) = words.next() {
        return Err(format!("unexpected {w:?} in a {verb:?} request"));
    }
    let progress: &dyn Progress = match &streamed {
        Some(s) => s,
        None => &NoProgress,
    };
    match (verb, name) {
        ("stats", _) => return Ok(Some(crate::stats::encode(&stats.rows()))),
        ("transport", _) => return Ok(Some(stats.transport())),
        ("reset", _) => apply(notifier, &union.reset().map_err(|e| e.to_string())?),
        ("checkpoint", Some(n)) => union
            .checkpoint(&n, progress)
            .map_err(|e| format!("checkpoint {}: {e}", String::from_utf8_lossy(n.as_bytes())))?,
        ("restore", Some(n)) => {
            let inval = union.restore(&n, progress).map_err(|e| match e.errno {
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
    if let Some(s) = &streamed {
        s.flush();
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
            sweep_stale(&path);
            for stream in listener.incoming().flatten() {
                let mut line = String::new();
                let mut r = BufReader::new(&stream);
                if r.read_line(&mut line).is_err() {
                    continue;
                }
                let answer = match handle(&union, &notifier, &stats, line.trim(), &stream) {
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
    exchange(sock, line, None).map_err(Failure::Daemon)
}

/// [`request`] for a `checkpoint` or `restore`, asking the daemon for
/// progress lines and passing what they say on to `progress`.
pub fn request_with_progress(
    sock: &Path,
    line: &str,
    progress: &dyn Progress,
) -> Result<String, Failure> {
    exchange(sock, line, Some(progress)).map_err(Failure::Daemon)
}

fn exchange(sock: &Path, line: &str, progress: Option<&dyn Progress>) -> Result<String, String> {
    let unreachable =
        |e: std::io::Error| format!("cannot reach the mount's daemon at {}: {e}", sock.display());
    let (_dir, short) = short_path(sock).map_err(unreachable)?;
    let mut s = UnixStream::connect(&short).map_err(unreachable)?;
    let sent = match progress {
        Some(_) => format!("{line} progress\n"),
        None => format!("{line}\n"),
    };
    s.write_all(sent.as_bytes())
        .map_err(|e| format!("cannot talk to the daemon: {e}"))?;
    let mut r = BufReader::new(&s);
    let mut answer = String::new();
    // Running totals, turned back into steps for `progress`.
    let mut seen = (0u64, 0u64);
    loop {
        answer.clear();
        r.read_line(&mut answer)
            .map_err(|e| format!("no answer from the daemon: {e}"))?;
        let Some(totals) = answer.trim().strip_prefix("progress ") else {
            break;
        };
        let mut n = totals.split(' ').map(|w| w.parse::<u64>());
        let (Some(Ok(entries)), Some(Ok(bytes)), None) = (n.next(), n.next(), n.next()) else {
            return Err(format!("unexpected answer {:?}", answer.trim()));
        };
        if let Some(p) = progress {
            p.advance(entries.saturating_sub(seen.0), bytes.saturating_sub(seen.1));
        }
        seen = (entries.max(seen.0), bytes.max(seen.1));
    }
    let answer = answer.trim();
    if let Some(e) = answer.strip_prefix("error: ") {
        return Err(e.to_string());
    }
    match answer.strip_prefix("ok") {
        Some(rest) if rest.is_empty() || rest.starts_with(' ') => Ok(rest.trim_start().to_string()),
        _ => Err(format!("unexpected answer {answer:?}")),
    }
}

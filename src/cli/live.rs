//! The verbs that talk to a live mount's daemon over its control socket:
//! `stats`, `reset`, `checkpoint` and `restore`.

use std::io::Write;
use std::path::{Path, PathBuf};

use clap::Args;

use super::progress::{Counting, Spinner};
use crate::failure::Failure;
use crate::json::JsonPath;
use crate::runtime::Watch;

#[derive(Debug, Args)]
pub struct StatsArgs {
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    #[arg(value_name = "MOUNTPOINT")]
    pub mountpoint: PathBuf,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// One row of `list`.
#[derive(Debug, serde::Serialize)]
struct Listed<'a> {
    #[serde(flatten)]
    mountpoint: JsonPath<'a>,
    /// `live`, `dead` (its daemon is gone) or `unknown` (no record this user
    /// can read).
    state: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    uptime_secs: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    read_only: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    upper: Option<Located<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    work: Option<Located<'a>>,
    lowers: Vec<Located<'a>>,
}

/// A path as its own JSON object.
#[derive(Debug, serde::Serialize)]
struct Located<'a> {
    #[serde(flatten)]
    path: JsonPath<'a>,
}

fn located(p: &Path) -> Located<'_> {
    use std::os::unix::ffi::OsStrExt;
    Located {
        path: JsonPath::new(p.as_os_str().as_bytes()),
    }
}

/// `unionfuse list`: the mount table's unionfuse mounts, each with what its
/// record says.
pub(super) fn list_cmd(a: &ListArgs) -> Result<(), Failure> {
    use std::os::unix::ffi::OsStrExt;
    let table = crate::mountinfo::read()
        .map_err(|e| Failure::Mount(format!("cannot read the mount table: {e}")))?;
    let records = crate::runtime::records();
    let now = crate::runtime::now_secs();
    // Each mount with its record, found once: the live one, else the
    // latest one its daemon left behind when it was killed (device numbers
    // of FUSE mounts are reused, so an older record may match too).
    let mounts: Vec<_> = table
        .into_iter()
        .filter(|e| e.is_unionfuse())
        .map(|e| {
            let rec = records
                .iter()
                .filter(|(r, _)| r.dev == e.dev)
                .max_by_key(|(r, live)| (*live, r.started));
            (e, rec.map(|(r, live)| (r, *live)))
        })
        .collect();
    let rows: Vec<Listed<'_>> = mounts
        .iter()
        .map(|(e, found)| {
            let rec = found.map(|(r, _)| r);
            let live = found.is_some_and(|(_, live)| live);
            // The kernel may answer a stat of a dead mount from its cache,
            // so a record left unlocked counts as much as ENOTCONN.
            let dead = !live && rec.is_some()
                || std::fs::symlink_metadata(&e.mountpoint)
                    .is_err_and(|err| err.raw_os_error() == Some(libc::ENOTCONN));
            Listed {
                mountpoint: JsonPath::new(e.mountpoint.as_os_str().as_bytes()),
                state: match (dead, rec) {
                    (true, _) => "dead",
                    (false, Some(_)) => "live",
                    (false, None) => "unknown",
                },
                pid: rec.filter(|_| live).map(|r| r.pid),
                uptime_secs: rec.filter(|_| live).map(|r| now.saturating_sub(r.started)),
                read_only: rec.map(|r| r.read_only || r.upper.is_none()),
                upper: rec.and_then(|r| r.upper.as_deref()).map(located),
                work: rec.and_then(|r| r.work.as_deref()).map(located),
                lowers: rec
                    .map(|r| r.lowers.iter().map(|l| located(l)).collect())
                    .unwrap_or_default(),
            }
        })
        .collect();
    let mut out = std::io::stdout().lock();
    let w = |e: std::io::Error| Failure::Mount(format!("writing the list: {e}"));
    if a.json {
        let line = crate::json::array_line(&rows)
            .map_err(|e| Failure::Mount(format!("writing the list: {e}")))?;
        return out.write_all(line.as_bytes()).map_err(w);
    }
    writeln!(out, "MOUNTPOINT\tSTATE\tPID\tUPTIME\tRO\tUPPER\tLOWERS").map_err(w)?;
    for ((e, found), r) in mounts.iter().zip(&rows) {
        let rec = found.map(|(x, _)| x);
        let dash = || "-".to_string();
        writeln!(
            out,
            "{}\t{}\t{}\t{}\t{}\t{}\t{}",
            e.mountpoint.display(),
            r.state,
            r.pid.map_or_else(dash, |p| p.to_string()),
            r.uptime_secs.map_or_else(dash, |s| format!("{s}s")),
            r.read_only
                .map_or_else(dash, |ro| if ro { "ro" } else { "rw" }.into()),
            rec.and_then(|x| x.upper.as_ref())
                .map_or_else(dash, |u| u.display().to_string()),
            rec.map_or_else(dash, |x| {
                x.lowers
                    .iter()
                    .map(|l| l.display().to_string())
                    .collect::<Vec<_>>()
                    .join(":")
            }),
        )
        .map_err(w)?;
    }
    Ok(())
}

#[derive(Debug, Args)]
pub struct LiveArgs {
    #[arg(value_name = "MOUNTPOINT")]
    pub mountpoint: PathBuf,
}

#[derive(Debug, Args)]
pub struct NamedArgs {
    #[arg(value_name = "MOUNTPOINT")]
    pub mountpoint: PathBuf,
    /// A plain name (no `/`); checkpoints live in the work directory.
    #[arg(value_name = "NAME")]
    pub name: String,
}

/// The live mount at `mnt`: its layers, as the daemon (or program)
/// serving it published them, and where to reach it.
pub(super) fn live(mnt: &Path) -> Result<Watch, Failure> {
    Watch::at(&super::mount::mountpoint_path(mnt)?)
}

/// Sends `verb` (and the checkpoint `name` it takes) to the daemon of the
/// live mount at `mnt`; a checkpoint or restore shows the daemon's progress
/// unless `quiet`.
pub(super) fn control_cmd(
    mnt: &Path,
    verb: &str,
    name: Option<&str>,
    quiet: bool,
) -> Result<(), Failure> {
    if let Some(n) = name {
        if n.contains('/') || n == "." || n == ".." {
            return Err(Failure::Invalid(
                "a checkpoint name is a plain name, without '/'".into(),
            ));
        }
        // The request is one line of words: such a name would be cut.
        if n.is_empty() || n.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(Failure::Invalid(format!(
                "checkpoint name {n:?}: empty, or holds spaces or control characters"
            )));
        }
    }
    let w = live(mnt)?;
    if w.record.upper.is_none() || w.record.read_only {
        return Err(Failure::Invalid(format!(
            "{} is a read-only mount: it has no writable layer",
            mnt.display()
        )));
    }
    let Some(n) = name else {
        return control_request(&w, verb).map(drop);
    };
    let line = format!("{verb} {n}");
    let what = if verb == "restore" {
        "restoring"
    } else {
        "checkpointing"
    };
    let spinner = Spinner::new(what, Counting::Bytes, quiet);
    let sock = crate::control::socket_path(&w.dir, w.record.dev, w.record.pid);
    crate::control::request_with_progress(&sock, &line, &spinner)?;
    spinner.finish();
    Ok(())
}

/// Sends one control request to the daemon behind `w`.
fn control_request(w: &Watch, line: &str) -> Result<String, Failure> {
    let sock = crate::control::socket_path(&w.dir, w.record.dev, w.record.pid);
    crate::control::request(&sock, line)
}

pub(super) fn stats_cmd(args: &StatsArgs) -> Result<(), Failure> {
    let w = live(&args.mountpoint)?;
    let payload = control_request(&w, "stats")?;
    let rows = crate::stats::decode(&payload)
        .ok_or_else(|| Failure::Daemon(format!("the daemon answered {payload:?}")))?;
    let failed =
        |e: &dyn std::fmt::Display| Failure::Daemon(format!("cannot write the figures: {e}"));
    let text = if args.json {
        crate::stats::format_json(&rows).map_err(|e| failed(&e))?
    } else {
        let mut t = crate::stats::format_table(&rows);
        match control_request(&w, "transport")
            .as_deref()
            .map(|a| a.split_once(' '))
        {
            Ok(Some(("io_uring", n))) => {
                t.push_str(&format!("transport: io_uring ({n} requests on the ring)\n"))
            }
            Ok(_) => t.push_str("transport: /dev/fuse\n"),
            Err(_) => {}
        }
        t
    };
    std::io::stdout()
        .write_all(text.as_bytes())
        .map_err(|e| failed(&e))
}

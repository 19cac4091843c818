//! The verbs that talk to a live mount's daemon over its control socket:
//! `stats`, `reset`, `checkpoint` and `restore`.

use std::io::Write;
use std::path::{Path, PathBuf};

use clap::Args;

use crate::failure::Failure;
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

/// Sends a request to the daemon of the live mount at `mnt`.
pub(super) fn control_cmd(mnt: &Path, line: String) -> Result<(), Failure> {
    if line
        .split_whitespace()
        .nth(1)
        .is_some_and(|n| n.contains('/') || n == "." || n == "..")
    {
        return Err(Failure::Invalid(
            "a checkpoint name is a plain name, without '/'".into(),
        ));
    }
    let w = live(mnt)?;
    if w.record.upper.is_none() || w.record.read_only {
        return Err(Failure::Invalid(format!(
            "{} is a read-only mount: it has no writable layer",
            mnt.display()
        )));
    }
    control_request(&w, &line).map(drop)
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
        crate::stats::format_table(&rows)
    };
    std::io::stdout()
        .write_all(text.as_bytes())
        .map_err(|e| failed(&e))
}

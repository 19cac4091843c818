//! `unionfuse run`: the command line of a throwaway container
//! (`crate::run` does the work).

use std::ffi::OsString;
use std::path::PathBuf;

use clap::Args;

use super::progress::{Counting, Spinner};
use crate::failure::Failure;
use crate::run::RunOptions;

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

/// Runs the command; `Ok` is its exit status.
pub(super) fn run_cmd(args: RunArgs, quiet: bool) -> Result<i32, Failure> {
    let lowers = args
        .lower
        .iter()
        .flat_map(|v| crate::config::split_lowers(v))
        .collect();
    // Drawn once the diff starts, after the command is done with the
    // terminal.
    let spinner = Spinner::new("comparing", Counting::Entries, quiet);
    let res = crate::run::run(
        &RunOptions {
            lowers,
            upper: args.upper,
            volumes: args.volume,
            diff: args.diff,
            command: args.command,
        },
        &spinner,
    );
    if res.is_ok() {
        spinner.finish();
    }
    res
}

//! The verbs that describe the command line itself: `completions SHELL` for
//! shells and the hidden `manpages DIR` for packaging. Both are generated
//! from the clap definitions of [`super::Cli`], so they say what `--help`
//! says and cannot drift from it.

use std::io::Write;
use std::os::fd::AsFd;
use std::path::PathBuf;

use clap::{Args, CommandFactory, ValueEnum};
use rustix::fs::{Mode, OFlags};

use super::Cli;
use crate::failure::Failure;

/// The shells whose completion scripts unionfuse ships.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Shell {
    Bash,
    Zsh,
    Fish,
}

#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell to write a completion script for.
    #[arg(value_enum, value_name = "SHELL")]
    pub shell: Shell,
}

#[derive(Debug, Args)]
pub struct ManpagesArgs {
    /// An existing directory to write unionfuse.1 and unionfuse-VERB.1 into.
    #[arg(value_name = "DIR")]
    pub dir: PathBuf,
}

/// Writes the completion script for `args.shell` on standard output.
pub fn completions_cmd(args: &CompletionsArgs) -> Result<(), Failure> {
    let shell = match args.shell {
        Shell::Bash => clap_complete::Shell::Bash,
        Shell::Zsh => clap_complete::Shell::Zsh,
        Shell::Fish => clap_complete::Shell::Fish,
    };
    // clap_complete offers hidden verbs too; `manpages` is for packagers and
    // has no place among what a shell suggests.
    let full = Cli::command();
    let mut shown = clap::Command::new("unionfuse")
        .version(env!("CARGO_PKG_VERSION"))
        .args(full.get_arguments().cloned())
        .subcommands(full.get_subcommands().filter(|c| !c.is_hide_set()).cloned());
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut shown, "unionfuse", &mut script);
    let mut out = std::io::stdout().lock();
    out.write_all(&script)
        .and_then(|()| out.flush())
        .map_err(|e| Failure::Invalid(format!("writing the completion script: {e}")))
}

/// The manual pages, as (file name, roff text): `unionfuse.1`, then one
/// `unionfuse-VERB.1` per verb that `--help` lists.
pub fn manpages() -> Result<Vec<(String, Vec<u8>)>, Failure> {
    // Built once so that every verb gets its display name (unionfuse-mount)
    // and the usage line that `unionfuse mount --help` shows.
    let mut cmd = Cli::command().disable_help_subcommand(true);
    cmd.build();
    let mut pages = Vec::new();
    let mut render = |c: clap::Command| -> Result<(), Failure> {
        let man = clap_mangen::Man::new(c);
        let mut text = Vec::new();
        man.render(&mut text)
            .map_err(|e| Failure::Invalid(format!("rendering a manual page: {e}")))?;
        pages.push((man.get_filename(), text));
        Ok(())
    };
    render(cmd.clone())?;
    for verb in cmd.get_subcommands().filter(|c| !c.is_hide_set()) {
        render(verb.clone())?;
    }
    Ok(pages)
}

/// Writes every page of [`manpages`] into `args.dir`.
pub fn manpages_cmd(args: &ManpagesArgs) -> Result<(), Failure> {
    let dir = super::existing_dir("manual page directory", &args.dir)?;
    // Rendered before anything is written: a failure leaves the directory
    // as it was.
    let pages = manpages()?;
    let dirfd = rustix::fs::open(
        &dir,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| Failure::Invalid(format!("{}: {e}", dir.display())))?;
    for (name, text) in pages {
        let fail = |e: std::io::Error| Failure::Invalid(format!("{}/{name}: {e}", dir.display()));
        // A symlink planted where a page goes is refused, not written through.
        let fd = rustix::fs::openat(
            dirfd.as_fd(),
            name.as_str(),
            OFlags::WRONLY | OFlags::CREATE | OFlags::TRUNC | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o644),
        )
        .map_err(|e| fail(e.into()))?;
        std::fs::File::from(fd).write_all(&text).map_err(fail)?;
    }
    Ok(())
}

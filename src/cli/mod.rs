//! The command lines: clap's `unionfuse VERB ...` and the fuse-overlayfs
//! form (`unionfuse [-o OPTS] [SOURCE] MOUNTPOINT`, parsed by
//! `crate::compat`). The only module that knows clap; each verb turns its
//! arguments into library calls, and errors come back as one line for
//! `main` to print. One file per group of verbs: `mount` (mount, umount),
//! `layers` (diff, export, unpack, commit, check), `live` (stats, reset,
//! checkpoint, restore), `run`, `docs` (completions, manpages);
//! `progress` draws the long ones on a terminal.

use std::ffi::OsString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use clap::{CommandFactory, Parser, Subcommand};

use crate::failure::Failure;

mod docs;
mod layers;
mod live;
mod mount;
mod progress;
mod run;

use layers::{CheckArgs, CommitArgs, DiffArgs, ExportArgs, UnpackArgs};
use live::{LiveArgs, NamedArgs, StatsArgs};
use mount::{MountArgs, UmountArgs};

#[derive(Debug, Parser)]
#[command(
    name = "unionfuse",
    version,
    about = "A union filesystem in userspace with kernel overlayfs semantics",
    long_about = "unionfuse merges read-only lower layers and an optional writable upper \
layer into one tree, as kernel overlayfs does, without kernel overlayfs and without root.\n\n\
Whiteouts and opaque directories are read in both the kernel overlayfs format (character \
device 0:0, trusted.overlay.opaque) and the OCI layer format (.wh.NAME, .wh..wh..opq).",
    after_long_help = "Also runs as a fuse-overlayfs-compatible mount program: \
`unionfuse [-f] [-d] [-o OPTS]... [SOURCE] MOUNTPOINT` with -o lowerdir=L1:L2,upperdir=U,workdir=W. \
So, installed on root's PATH, `mount -t fuse.unionfuse -o lowerdir=...,upperdir=...,workdir=... \
unionfuse MOUNTPOINT` and the same as an /etc/fstab line (type fuse.unionfuse) mount through \
mount.fuse3."
)]
pub struct Cli {
    /// Draw no progress on stderr, even on a terminal (export, unpack,
    /// commit, checkpoint, restore and run --diff draw it there).
    #[arg(short, long, global = true)]
    pub quiet: bool,
    #[command(subcommand)]
    pub command: Cmd,
}

#[derive(Debug, Subcommand)]
pub enum Cmd {
    /// Mount a merged view of layers at MOUNTPOINT.
    #[command(long_about = "Mount a merged view of the layers at MOUNTPOINT.\n\n\
Lookups go to the upper layer first, then to each lower layer from the top-most down. \
Without --upper the mount is read-only and every change fails with EROFS.\n\n\
Without --foreground, the command returns once the mount answers requests (exit status 0), \
leaving a daemon that serves it until `unionfuse umount MOUNTPOINT`; on any failure it exits \
non-zero with a one-line reason and leaves nothing mounted or created.")]
    Mount(MountArgs),
    /// Unmount a unionfuse mount.
    #[command(
        long_about = "Unmount the unionfuse mount at MOUNTPOINT. Root unmounts \
directly; other users go through fusermount3, which allows the user who mounted.\n\n\
Returns once the daemon serving the mount has exited, so the upper layer is final (staging \
emptied, written back unless volatile) and the same layers may be mounted again at once; \
exits non-zero if the daemon is still running after --timeout seconds. A dead mount (its \
daemon killed) is cleared.\n\n\
--all unmounts every unionfuse mount in the mount table (with --under DIR, those at or below \
DIR), deepest first, for harness cleanup; it reports each failure on its own line and exits \
non-zero if any remains."
    )]
    Umount(UmountArgs),
    /// List the live unionfuse mounts.
    #[command(
        long_about = "List every unionfuse mount in the mount table: mountpoint, daemon PID, \
uptime, whether it is read-only, upper, work directory and lowers, as the mount's own record \
gives them (found by the connection's device number, not by guessing from process command \
lines). A mount whose daemon is gone shows as dead (clear it with `unionfuse umount`); one \
whose record this user cannot read (another user's) shows its mountpoint only. --json gives \
one array, paths written as described under JSON output in the README."
    )]
    List(live::ListArgs),
    /// Show what the writable layer changes, as `docker diff` does.
    #[command(
        long_about = "Print what the upper layer changes in the merged tree, one line per path, \
sorted: `A /path` added, `C /path` changed (content or metadata, and each directory holding a \
change), `D /path` deleted. Give the layers (--upper and --lower, as for mount) or the \
mountpoint of a live mount. Only the upper is walked: the cost follows the size of the \
changes, not of the image."
    )]
    Diff(DiffArgs),
    /// Write an upper as an OCI image layer tar.
    #[command(
        long_about = "Write the upper layer as an OCI image layer (a tar): deletions as .wh.NAME, \
opaque directories as .wh..wh..opq before their other entries, hard links as links, xattrs as \
PAX records, numeric owners. The same upper always gives the same bytes."
    )]
    Export(ExportArgs),
    /// Unpack an OCI image layer tar into a directory usable as a lower.
    Unpack(UnpackArgs),
    /// Write an upper's changes as a new lower layer directory.
    #[command(
        long_about = "Write the changes of the upper as a new layer directory NEWDIR, to stack on \
the image as the top-most lower of the next container (what `docker commit` does)."
    )]
    Commit(CommitArgs),
    /// Run a command in a throwaway container root.
    #[command(
        long_about = "Mount the layers (with a temporary upper unless --upper is given), run \
COMMAND chrooted into the merged tree in a private mount namespace (a user namespace too when \
not root) with the host's /proc, /dev and /sys and any --volume bound in, then unmount and \
remove the temporary upper. Exits with COMMAND's status."
    )]
    Run(run::RunArgs),
    /// Empty the writable layer of a live mount: the image, pristine.
    #[command(
        long_about = "Empty the writable layer of the live mount at MOUNTPOINT and make the kernel \
forget what it cached, so that every process sees the pristine image at once, without \
unmounting. Changes wait while it runs. Files open during the reset keep working on their old \
copies, which are gone from the tree."
    )]
    Reset(LiveArgs),
    /// Save the writable layer of a live mount as checkpoint NAME.
    Checkpoint(NamedArgs),
    /// Bring back checkpoint NAME as the writable layer of a live mount.
    Restore(NamedArgs),
    /// Requests a live mount has answered, by kind, and the time spent.
    #[command(
        long_about = "Print the requests the daemon of the live mount at MOUNTPOINT has \
answered since it started, by kind (lookup, getattr, readdirplus, ...), with the time it spent \
on them: what a workload costs the filesystem, before it shows as seconds. --json gives \
[{\"op\":\"lookup\",\"count\":N,\"nanos\":N},...]. Requests the kernel answers from its \
caches never reach the daemon and are not counted."
    )]
    Stats(StatsArgs),
    /// Find, and with --repair fix, what a crash or another tool left in an upper.
    #[command(
        long_about = "Check an upper layer (not mounted, or mounted read-only) and its work \
directory for what a crash or another tool can leave: leftovers in staging, directories marked \
opaque twice, whiteouts inside opaque directories, \
whiteouts for names no lower layer holds (needs --lower), redirects that lead nowhere (needs \
--lower), private xattrs on objects they do not belong to, and ownership overrides that do not \
parse. Prints one line per finding. Without --repair nothing on disk changes; --repair fixes \
each finding without changing the merged view.\n\n\
Exit status: 0 when nothing is wrong (or everything found was repaired), 3 when findings \
remain, 1 when the check itself could not run."
    )]
    Check(CheckArgs),
    /// Print a completion script for bash, zsh or fish.
    #[command(
        long_about = "Print the completion script for SHELL on standard output. Packages \
install it; by hand: `unionfuse completions bash > /etc/bash_completion.d/unionfuse`, \
`unionfuse completions zsh > \"${fpath[1]}/_unionfuse\"`, \
`unionfuse completions fish > ~/.config/fish/completions/unionfuse.fish`."
    )]
    Completions(docs::CompletionsArgs),
    /// Write the manual pages (unionfuse.1, unionfuse-VERB.1) into DIR.
    #[command(hide = true)]
    Manpages(docs::ManpagesArgs),
}

impl Cli {
    /// Whether the command asks for a per-request trace (`mount --debug`).
    pub fn debug(&self) -> bool {
        matches!(&self.command, Cmd::Mount(m) if m.debug)
    }
}

/// Whether `argv` (without the program name) is the fuse-overlayfs form
/// rather than a `unionfuse` subcommand.
pub fn is_compat(argv: &[OsString]) -> bool {
    // The global flag may come before the verb.
    let Some(first) = argv
        .iter()
        .find(|a| !matches!(a.as_bytes(), b"-q" | b"--quiet"))
    else {
        return false;
    };
    if matches!(
        first.as_bytes(),
        b"help" | b"-h" | b"--help" | b"-V" | b"--version"
    ) {
        return false;
    }
    !Cli::command()
        .get_subcommands()
        .any(|c| first.as_bytes() == c.get_name().as_bytes())
}

/// Runs the fuse-overlayfs form of a mount (see [`is_compat`]).
pub fn run_compat(argv: &[OsString]) -> Result<i32, Failure> {
    mount::compat_cmd(argv)
}

/// Runs the parsed command line. `Ok` is the exit status to leave with
/// silently (0, `check`'s 3 for findings, `run`'s command's, a daemon's that
/// died and said why itself); `Err` is a one-line message, exit status 1.
pub fn run(cli: Cli) -> Result<i32, Failure> {
    let done = |r: Result<(), Failure>| r.map(|()| 0);
    let quiet = cli.quiet;
    match cli.command {
        Cmd::Mount(args) => mount::mount_cmd(args),
        Cmd::Umount(args) => done(mount::umount_cmd(&args)),
        Cmd::List(a) => done(live::list_cmd(&a)),
        Cmd::Diff(args) => done(layers::diff_cmd(&args)),
        Cmd::Export(args) => done(layers::export_cmd(&args, quiet)),
        Cmd::Unpack(args) => done(layers::unpack_cmd(&args, quiet)),
        Cmd::Commit(args) => done(layers::commit_cmd(&args, quiet)),
        Cmd::Check(a) => layers::check_cmd(&a),
        Cmd::Stats(a) => done(live::stats_cmd(&a)),
        Cmd::Reset(a) => done(live::control_cmd(&a.mountpoint, "reset", None, quiet)),
        Cmd::Checkpoint(a) => done(live::control_cmd(
            &a.mountpoint,
            "checkpoint",
            Some(&a.name),
            quiet,
        )),
        Cmd::Restore(a) => done(live::control_cmd(
            &a.mountpoint,
            "restore",
            Some(&a.name),
            quiet,
        )),
        Cmd::Run(args) => run::run_cmd(args, quiet),
        Cmd::Completions(a) => done(docs::completions_cmd(&a)),
        Cmd::Manpages(a) => done(docs::manpages_cmd(&a)),
    }
}

/// An existing directory given on the command line, canonical.
fn existing_dir(what: &str, p: &Path) -> Result<PathBuf, Failure> {
    crate::config::existing_dir(what, p).map_err(Failure::Invalid)
}

/// Every directory of some `--lower` values (each may be a colon list).
fn lower_dirs(values: &[OsString]) -> Result<Vec<PathBuf>, Failure> {
    let mut out = Vec::new();
    for v in values {
        for l in crate::config::split_lowers(v) {
            out.push(existing_dir("lower layer", &l)?);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(v: &[&str]) -> Vec<OsString> {
        v.iter().map(OsString::from).collect()
    }

    #[test]
    fn recognises_subcommands() {
        assert!(!is_compat(&os(&["mount", "--lower", "/l", "/m"])));
        assert!(!is_compat(&os(&["--help"])));
        assert!(!is_compat(&os(&["diff", "/m"])));
        assert!(is_compat(&os(&["-o", "lowerdir=/l", "/m"])));
        assert!(is_compat(&os(&["/src", "/m"])));
        assert!(!is_compat(&os(&["-q", "export", "--upper", "/u"])));
        assert!(!is_compat(&os(&["--quiet", "checkpoint", "/m", "c"])));
        assert!(is_compat(&os(&["-q", "-o", "lowerdir=/l", "/m"])));
    }
}

//! The command line: parse, validate before touching the disk, then mount
//! (daemonized or in the foreground) or unmount. Errors are one line.

use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::config::MountConfig;
use crate::idmap::{IdMap, Map};
use crate::layer::upper::WhiteoutFormat;
use crate::mount::{self, READY_BYTE};
use crate::override_stat;
use crate::sys;

/// Default kernel cache timeout in seconds (see `--cache-timeout`).
pub(crate) const DEFAULT_CACHE_TIMEOUT: u64 = 86_400;

#[derive(Debug, Parser)]
#[command(
    name = "unionfuse",
    version,
    about = "A union filesystem in userspace with kernel overlayfs semantics",
    long_about = "unionfuse merges read-only lower layers and an optional writable upper \
layer into one tree, as kernel overlayfs does, without kernel overlayfs and without root.\n\n\
Whiteouts and opaque directories are read in both the kernel overlayfs format (character \
device 0:0, trusted.overlay.opaque) and the OCI layer format (.wh.NAME, .wh..wh..opq)."
)]
pub struct Cli {
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
daemon killed) is cleared."
    )]
    Umount(UmountArgs),
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
    Run(crate::run::RunArgs),
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
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// The upper layer.
    #[arg(long, value_name = "DIR")]
    pub upper: PathBuf,
    /// Lower layers, top-most first, as for mount.
    #[arg(long = "lower", value_name = "DIR")]
    pub lower: Vec<OsString>,
    /// The work directory (default: the one `mount` uses beside the upper).
    #[arg(long, value_name = "DIR")]
    pub work: Option<PathBuf>,
    /// Fix what is found.
    #[arg(long)]
    pub repair: bool,
    /// Print JSON: [{"kind":..,"path":..,"detail":..,"repaired":..},...].
    #[arg(long)]
    pub json: bool,
}

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

/// `--compress` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum CompressArg {
    Gzip,
    Zstd,
}

/// Whiteout formats an unpacked layer may be written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LayerFormatArg {
    Overlay,
    Oci,
}

impl LayerFormatArg {
    fn format(self) -> WhiteoutFormat {
        match self {
            LayerFormatArg::Overlay => WhiteoutFormat::Overlay,
            LayerFormatArg::Oci => WhiteoutFormat::Oci,
        }
    }
}

#[derive(Debug, Args)]
pub struct ExportArgs {
    /// The upper layer to write out.
    #[arg(long, value_name = "DIR")]
    pub upper: PathBuf,
    /// The lowers it sits on (accepted for symmetry; a layer holds only
    /// the upper's changes).
    #[arg(long = "lower", value_name = "DIR")]
    pub lower: Vec<OsString>,
    /// Where to write the tar; `-` (the default) is standard output.
    #[arg(short, long, value_name = "FILE", default_value = "-")]
    pub output: PathBuf,
    #[arg(long, value_enum)]
    pub compress: Option<CompressArg>,
}

#[derive(Debug, Args)]
pub struct UnpackArgs {
    /// The layer: a tar, gzip- or zstd-compressed or not; `-` reads
    /// standard input.
    #[arg(value_name = "LAYER")]
    pub layer: PathBuf,
    /// An existing directory to unpack into.
    #[arg(value_name = "DIR")]
    pub dir: PathBuf,
    /// How deletions are written: `oci` keeps the layer's `.wh.` files,
    /// `overlay` turns them into 0:0 devices and opaque xattrs (what kernel
    /// overlayfs reads).
    #[arg(long, value_enum, default_value_t = LayerFormatArg::Oci)]
    pub whiteout: LayerFormatArg,
}

#[derive(Debug, Args)]
pub struct CommitArgs {
    #[arg(long, value_name = "DIR")]
    pub upper: PathBuf,
    /// The lowers the upper sits on (accepted for symmetry).
    #[arg(long = "lower", value_name = "DIR")]
    pub lower: Vec<OsString>,
    #[arg(long, value_enum, default_value_t = LayerFormatArg::Oci)]
    pub whiteout: LayerFormatArg,
    /// The new layer directory; must not exist yet.
    #[arg(value_name = "NEWDIR")]
    pub newdir: PathBuf,
}

#[derive(Debug, Args)]
pub struct DiffArgs {
    /// A read-only layer, top-most first (repeatable, or a colon list).
    #[arg(long = "lower", value_name = "DIR")]
    pub lower: Vec<OsString>,

    /// The writable layer to describe.
    #[arg(long, value_name = "DIR", requires = "lower")]
    pub upper: Option<PathBuf>,

    /// Print a JSON array of {"kind", "path"} objects instead.
    #[arg(long)]
    pub json: bool,

    /// A live unionfuse mount, instead of --upper and --lower.
    #[arg(value_name = "MOUNTPOINT", conflicts_with_all = ["upper", "lower"])]
    pub mountpoint: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct MountArgs {
    /// A read-only layer directory. Repeat for more layers, top-most first;
    /// one value may also hold a colon-separated list (top-most first, as
    /// overlayfs's lowerdir), where `\:` stands for a colon in a name.
    /// At least one is required.
    #[arg(long = "lower", value_name = "DIR")]
    pub lower: Vec<OsString>,

    /// The writable layer directory. Default: none, and the mount is
    /// read-only.
    #[arg(long, value_name = "DIR")]
    pub upper: Option<PathBuf>,

    /// Staging directory for atomic changes; must be on the same mount as
    /// the upper (a rename across mounts fails, even on one filesystem).
    /// Default: `.NAME.unionfuse-work` beside the upper directory NAME,
    /// created when missing.
    #[arg(long, value_name = "DIR")]
    pub work: Option<PathBuf>,

    /// How deletions and opaque directories are written in the upper:
    /// `overlay` (character device 0:0 and the `overlay.opaque` xattr, as
    /// kernel overlayfs), `oci` (`.wh.NAME` files and `.wh..wh..opq`, as
    /// image layers), or `auto`: the format an existing upper already
    /// uses, else `overlay` where the filesystem lets this user create a
    /// 0:0 device, else `oci`. Both formats are always read.
    #[arg(long, value_enum, value_name = "FORMAT", default_value_t = WhiteoutArg::Auto)]
    pub whiteout: WhiteoutArg,

    /// Stay in the foreground until unmounted instead of returning once the
    /// mount is live. SIGTERM or SIGINT then unmounts and exits 0.
    #[arg(short = 'f', long)]
    pub foreground: bool,

    /// Number of threads serving requests. Default: the number of CPUs.
    #[arg(long, value_name = "N")]
    pub threads: Option<usize>,

    /// Seconds the kernel may cache names and attributes. Layers must not
    /// be changed behind a mount's back (as with overlayfs), so the default
    /// is long.
    #[arg(long, value_name = "SECS", default_value_t = DEFAULT_CACHE_TIMEOUT)]
    pub cache_timeout: u64,

    /// Log every request to stderr (same as RUST_LOG=unionfuse=trace). A
    /// daemonized mount then keeps writing to the terminal it started from.
    #[arg(long)]
    pub debug: bool,

    /// Write one byte to this inherited file descriptor once the mount
    /// answers requests, then close it.
    #[arg(long, value_name = "FD")]
    pub ready_fd: Option<i32>,

    /// Do not sync the upper to disk on fsync: faster, but a host crash may
    /// lose recent writes (for throwaway containers, as overlayfs's
    /// `volatile`).
    #[arg(long)]
    pub volatile: bool,

    /// Mount read-only even with an upper layer.
    #[arg(long)]
    pub read_only: bool,

    /// Device nodes in the mount do not work as devices.
    #[arg(long)]
    pub nodev: bool,

    /// Set-user-ID and set-group-ID bits in the mount are ignored.
    #[arg(long)]
    pub nosuid: bool,

    /// As an ordinary user, let other users into the mount too (needs
    /// `user_allow_other` in /etc/fuse.conf). Root mounts always allow them.
    #[arg(long)]
    pub allow_other: bool,

    /// Show owners through a user namespace's uid mapping:
    /// `CONTAINER:HOST:LENGTH[:CONTAINER:HOST:LENGTH...]`. Host uids outside
    /// it show as 65534; chown and new files store the host uid.
    #[arg(long, value_name = "MAP")]
    pub uidmap: Option<String>,

    /// As --uidmap, for gids.
    #[arg(long, value_name = "MAP")]
    pub gidmap: Option<String>,

    /// Show every object as owned by this uid (0 for `squash_to_root`).
    #[arg(long, value_name = "UID", conflicts_with = "uidmap")]
    pub squash_uid: Option<u32>,

    /// Show every object as owned by this gid.
    #[arg(long, value_name = "GID", conflicts_with = "gidmap")]
    pub squash_gid: Option<u32>,

    /// Keep owners, modes and device types a user cannot set in an xattr:
    /// 1 for `security.fuseoverlayfs.override_stat`, 2 for
    /// `user.containers.override_stat` (rootless containers/storage).
    #[arg(long, value_name = "1|2", value_parser = clap::value_parser!(u8).range(1..=2))]
    pub xattr_permissions: Option<u8>,

    /// Where to mount: an existing directory that is not already a mount
    /// point and is neither inside nor above any layer.
    #[arg(value_name = "MOUNTPOINT")]
    pub mountpoint: PathBuf,
}

/// `--whiteout` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum WhiteoutArg {
    Auto,
    Overlay,
    Oci,
}

#[derive(Debug, Args)]
pub struct UmountArgs {
    /// How long to wait for the daemon to exit after the unmount, in seconds.
    #[arg(long, value_name = "SECS", default_value_t = 30)]
    pub timeout: u64,
    /// The mount point of a unionfuse mount.
    #[arg(value_name = "MOUNTPOINT")]
    pub mountpoint: PathBuf,
}

/// Runs the parsed command line. `Err` is a one-line message.
pub fn run(cli: Cli) -> Result<(), String> {
    match cli.command {
        Cmd::Mount(args) => mount_cmd(args),
        Cmd::Umount(args) => umount_cmd(&args.mountpoint, Duration::from_secs(args.timeout)),
        Cmd::Diff(args) => diff_cmd(&args),
        Cmd::Export(args) => export_cmd(&args),
        Cmd::Unpack(args) => unpack_cmd(&args),
        Cmd::Commit(args) => commit_cmd(&args),
        Cmd::Stats(a) => stats_cmd(&a),
        Cmd::Check(a) => check_cmd(&a),
        Cmd::Reset(a) => control_cmd(&a.mountpoint, "reset".into()),
        Cmd::Checkpoint(a) => control_cmd(&a.mountpoint, format!("checkpoint {}", a.name)),
        Cmd::Restore(a) => control_cmd(&a.mountpoint, format!("restore {}", a.name)),
        Cmd::Run(args) => {
            let code = crate::run::run(&args)?;
            std::process::exit(code);
        }
    }
}

fn export_cmd(args: &ExportArgs) -> Result<(), String> {
    let upper = existing_dir("upper layer", &args.upper)?;
    let comp = match args.compress {
        None => crate::layerfile::Compression::None,
        Some(CompressArg::Gzip) => crate::layerfile::Compression::Gzip,
        Some(CompressArg::Zstd) => crate::layerfile::Compression::Zstd,
    };
    if args.output.as_os_str() == "-" {
        let out = std::io::BufWriter::new(std::io::stdout().lock());
        return crate::layerfile::export(&upper, out, comp);
    }
    // Written beside the target and renamed: a failed export leaves no
    // partial layer under the name.
    let tmp = args.output.with_extension("unionfuse-partial");
    let file =
        std::fs::File::create(&tmp).map_err(|e| format!("cannot create {}: {e}", tmp.display()))?;
    let res = crate::layerfile::export(&upper, std::io::BufWriter::new(&file), comp)
        .and_then(|()| {
            file.sync_all()
                .map_err(|e| format!("{}: {e}", tmp.display()))
        })
        .and_then(|()| {
            std::fs::rename(&tmp, &args.output)
                .map_err(|e| format!("cannot write {}: {e}", args.output.display()))
        });
    if res.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    res
}

fn unpack_cmd(args: &UnpackArgs) -> Result<(), String> {
    let dir = existing_dir("target directory", &args.dir)?;
    let fmt = args.whiteout.format();
    if args.layer.as_os_str() == "-" {
        return crate::layerfile::unpack(std::io::stdin().lock(), &dir, fmt);
    }
    let f = std::fs::File::open(&args.layer)
        .map_err(|e| format!("layer {} {}", args.layer.display(), describe(&e)))?;
    crate::layerfile::unpack(f, &dir, fmt)
}

fn commit_cmd(args: &CommitArgs) -> Result<(), String> {
    let upper = existing_dir("upper layer", &args.upper)?;
    if sys::stat_path(&args.newdir).is_ok() {
        return Err(format!("{} already exists", args.newdir.display()));
    }
    // Built under a temporary name and renamed: nobody stacks half a layer.
    let tmp = args.newdir.with_extension("unionfuse-partial");
    std::fs::create_dir(&tmp).map_err(|e| format!("cannot create {}: {e}", tmp.display()))?;
    let res = crate::layerfile::commit(&upper, &tmp, args.whiteout.format()).and_then(|()| {
        std::fs::rename(&tmp, &args.newdir)
            .map_err(|e| format!("cannot create {}: {e}", args.newdir.display()))
    });
    if res.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    res
}

/// Sends a request to the daemon of the live mount at `mnt`.
fn control_cmd(mnt: &Path, line: String) -> Result<(), String> {
    if line
        .split_whitespace()
        .nth(1)
        .is_some_and(|n| n.contains('/') || n == "." || n == "..")
    {
        return Err("a checkpoint name is a plain name, without '/'".into());
    }
    let w = live(mnt)?;
    if w.record.upper.is_none() || w.record.read_only {
        return Err(format!(
            "{} is a read-only mount: it has no writable layer",
            mnt.display()
        ));
    }
    control_request(&w, &line).map(drop)
}

/// Sends one control request to the daemon behind `w`.
fn control_request(w: &crate::runtime::Watch, line: &str) -> Result<String, String> {
    let sock = crate::control::socket_path(&w.dir, w.record.dev, w.record.pid);
    crate::control::request(&sock, line)
}

/// Exit status of `check` when findings remain.
const CHECK_FINDINGS: i32 = 3;

fn check_cmd(args: &CheckArgs) -> Result<(), String> {
    let upper = existing_dir("upper layer", &args.upper)?;
    let mut lowers = Vec::new();
    for v in &args.lower {
        for l in split_lowers(v) {
            lowers.push(existing_dir("lower layer", &l)?);
        }
    }
    let work = match &args.work {
        Some(w) => Some(existing_dir("work directory", w)?),
        None => mount::default_work_dir(&upper),
    };
    // A live writable mount changes the upper under the check, and a
    // repair under it.
    let busy = crate::runtime::live_records()
        .into_iter()
        .find(|r| r.upper.as_deref() == Some(upper.as_path()) && !r.read_only);
    if let Some(r) = busy {
        return Err(format!(
            "upper layer {} is in use by the mount at {}: unmount it first",
            upper.display(),
            r.mountpoint.display()
        ));
    }
    let found = crate::check::check_paths(&upper, &lowers, work.as_deref(), args.repair)?;
    let text = if args.json {
        crate::check::format_json(&found).into_bytes()
    } else {
        crate::check::format_text(&found)
    };
    use std::io::Write;
    std::io::stdout()
        .write_all(&text)
        .map_err(|e| format!("cannot write the findings: {e}"))?;
    if found.iter().any(|f| !f.repaired) {
        std::process::exit(CHECK_FINDINGS);
    }
    Ok(())
}

fn stats_cmd(args: &StatsArgs) -> Result<(), String> {
    let w = live(&args.mountpoint)?;
    let payload = control_request(&w, "stats")?;
    let rows =
        crate::stats::decode(&payload).ok_or_else(|| format!("the daemon answered {payload:?}"))?;
    let text = if args.json {
        crate::stats::format_json(&rows)
    } else {
        crate::stats::format_table(&rows)
    };
    use std::io::Write;
    std::io::stdout()
        .write_all(text.as_bytes())
        .map_err(|e| format!("cannot write the figures: {e}"))
}

fn diff_cmd(args: &DiffArgs) -> Result<(), String> {
    let (upper, lowers) = match (&args.mountpoint, &args.upper) {
        (Some(mnt), _) => {
            let rec = record_of(mnt)?;
            let upper = rec.upper.ok_or_else(|| {
                format!(
                    "{} is a read-only mount: it has no upper layer",
                    mnt.display()
                )
            })?;
            let lowers = rec
                .lowers
                .iter()
                .map(|l| escape_colons(l.as_os_str()))
                .collect();
            (upper, lowers)
        }
        (None, Some(u)) => (u.clone(), args.lower.clone()),
        (None, None) => return Err("give --upper and --lower, or a mountpoint".into()),
    };
    let upper = existing_dir("upper layer", &upper)?;
    let mut lowers_ok = Vec::new();
    for v in &lowers {
        for l in split_lowers(v) {
            lowers_ok.push(existing_dir("lower layer", &l)?);
        }
    }
    if lowers_ok.is_empty() {
        return Err("at least one --lower is required".into());
    }
    let layers = crate::diff::open_layers(&upper, &lowers_ok)
        .map_err(|e| format!("cannot open layers: {e}"))?;
    let changes = crate::diff::diff(&layers).map_err(|e| format!("cannot walk the upper: {e}"))?;
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    let res = if args.json {
        stdout.write_all(crate::diff::format_json(&changes).as_bytes())
    } else {
        stdout.write_all(&crate::diff::format_text(&changes))
    };
    res.map_err(|e| format!("cannot write the diff: {e}"))
}

/// The live mount at `mnt`: its layers, as the daemon (or program)
/// serving it published them, and where to reach it.
fn live(mnt: &Path) -> Result<crate::runtime::Watch, String> {
    crate::runtime::Watch::at(&mountpoint_path(mnt)?)
}

/// The runtime record of the live mount at `mnt`.
fn record_of(mnt: &Path) -> Result<crate::runtime::Record, String> {
    Ok(live(mnt)?.record)
}

/// Escapes `:` and `\` so that [`split_lowers`] gives the path back.
fn escape_colons(p: &OsStr) -> OsString {
    let mut out = Vec::new();
    for b in p.as_bytes() {
        if matches!(b, b':' | b'\\') {
            out.push(b'\\');
        }
        out.push(*b);
    }
    OsString::from_vec(out)
}

/// Splits one `--lower` value on unescaped colons; a backslash escapes the
/// next byte (`\:` is a colon, `\\` a backslash).
pub fn split_lowers(v: &OsStr) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut cur = Vec::new();
    let mut bytes = v.as_bytes().iter();
    while let Some(&b) = bytes.next() {
        match b {
            b'\\' => {
                if let Some(&n) = bytes.next() {
                    cur.push(n);
                }
            }
            b':' => out.push(PathBuf::from(OsString::from_vec(std::mem::take(&mut cur)))),
            _ => cur.push(b),
        }
    }
    out.push(PathBuf::from(OsString::from_vec(cur)));
    out
}

fn describe(e: &std::io::Error) -> String {
    match e.raw_os_error() {
        Some(libc::ENOENT) => "does not exist".into(),
        Some(libc::ENOTDIR) => "is not a directory".into(),
        Some(libc::EACCES) => "is not accessible (permission denied)".into(),
        Some(libc::ENOTCONN) => {
            "is a dead FUSE mount (its daemon is gone): clear it with `unionfuse umount` or `fusermount3 -u`".into()
        }
        _ => e.to_string(),
    }
}

/// An existing directory, made absolute and free of symlinks and `..`.
fn existing_dir(what: &str, p: &Path) -> Result<PathBuf, String> {
    if p.as_os_str().is_empty() {
        return Err(format!("{what} is an empty path"));
    }
    let st = sys::stat_path(p).map_err(|e| format!("{what} {} {}", p.display(), describe(&e)))?;
    if st.st_mode & libc::S_IFMT != libc::S_IFDIR {
        return Err(format!("{what} {} is not a directory", p.display()));
    }
    p.canonicalize()
        .map_err(|e| format!("{what} {}: {e}", p.display()))
}

/// How two canonical paths relate.
fn nested(a: &Path, b: &Path) -> Option<&'static str> {
    if a == b {
        Some("is the same directory as")
    } else if a.starts_with(b) {
        Some("is inside")
    } else if b.starts_with(a) {
        Some("contains")
    } else {
        None
    }
}

fn check_apart(what_a: &str, a: &Path, what_b: &str, b: &Path) -> Result<(), String> {
    match nested(a, b) {
        Some(rel) => Err(format!(
            "{what_a} {} {rel} {what_b} {}",
            a.display(),
            b.display()
        )),
        None => Ok(()),
    }
}

fn find_in_path(prog: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(prog))
        .find(|p| sys::stat_path(p).is_ok())
}

/// Checks a mount request and turns it into a [`MountConfig`]. Touches
/// nothing on disk.
pub fn validate(args: &MountArgs) -> Result<MountConfig, String> {
    let mut lowers = Vec::new();
    for v in &args.lower {
        for l in split_lowers(v) {
            lowers.push(existing_dir("lower layer", &l)?);
        }
    }
    if lowers.is_empty() {
        return Err("no --lower given: at least one lower layer is needed".into());
    }
    let threads = match args.threads {
        Some(0) => return Err("--threads must be at least 1".into()),
        Some(n) => n,
        None => std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2),
    };
    let upper = match &args.upper {
        Some(u) => Some(existing_dir("upper layer", u)?),
        None => None,
    };
    let mnt = existing_dir("mountpoint", &args.mountpoint)?;

    for (i, l) in lowers.iter().enumerate() {
        for l2 in &lowers[..i] {
            if l == l2 {
                return Err(format!("lower layer {} is given twice", l.display()));
            }
        }
        check_apart("mountpoint", &mnt, "lower layer", l)?;
    }
    if let Some(u) = &upper {
        for l in &lowers {
            check_apart("upper layer", u, "lower layer", l)?;
        }
        check_apart("upper layer", u, "mountpoint", &mnt)?;
    }
    let facts = sys::mount_facts(&mnt).map_err(|e| format!("mountpoint {}: {e}", mnt.display()))?;
    if facts.is_mount_root {
        // The kernel may answer a stat of a dead mount from its cache; the
        // mount table and the records of live daemons tell.
        let dead = crate::mountinfo::top_at(&mnt)
            .ok()
            .flatten()
            .filter(crate::mountinfo::Entry::is_unionfuse)
            .is_some_and(|e| crate::runtime::Watch::find(&e).is_none());
        if dead {
            return Err(format!(
                "mountpoint {} is a dead FUSE mount (its unionfuse daemon is gone): clear it with `unionfuse umount {}`",
                mnt.display(),
                mnt.display()
            ));
        }
        return Err(format!(
            "mountpoint {} is already a mount point",
            mnt.display()
        ));
    }

    let work = match (&upper, &args.work) {
        (None, Some(_)) => {
            return Err("--work needs --upper: a read-only mount stages nothing".into());
        }
        (None, None) => None,
        (Some(u), w) => Some(check_work(u, w.as_deref(), &lowers, &mnt)?),
    };

    if sys::stat_path(Path::new("/dev/fuse")).is_err() {
        return Err("/dev/fuse does not exist: load the fuse module (modprobe fuse)".into());
    }
    if !sys::is_root() && find_in_path("fusermount3").is_none() {
        return Err("fusermount3 not found: install fuse3 (unprivileged mounts need it)".into());
    }
    Ok(MountConfig {
        lowers,
        upper,
        work,
        mountpoint: mnt,
        threads,
        cache_timeout: Duration::from_secs(args.cache_timeout),
        debug: args.debug,
        ids: id_map(args)?,
        override_xattr: match args.xattr_permissions {
            Some(1) => Some(override_stat::SECURITY),
            Some(2) => Some(override_stat::CONTAINERS),
            _ => None,
        },
        volatile: args.volatile,
        read_only: args.read_only || args.upper.is_none(),
        nodev: args.nodev,
        nosuid: args.nosuid,
        allow_other: args.allow_other,
        whiteout: match args.whiteout {
            WhiteoutArg::Auto => None,
            WhiteoutArg::Overlay => Some(WhiteoutFormat::Overlay),
            WhiteoutArg::Oci => Some(WhiteoutFormat::Oci),
        },
    })
}

fn id_map(args: &MountArgs) -> Result<IdMap, String> {
    let map = |m: &Option<String>, squash: Option<u32>| -> Result<Map, String> {
        match (m, squash) {
            (_, Some(id)) => Ok(Map::squash(id)),
            (Some(v), None) => Map::parse(v),
            (None, None) => Ok(Map::default()),
        }
    };
    Ok(IdMap {
        uid: map(&args.uidmap, args.squash_uid)?,
        gid: map(&args.gidmap, args.squash_gid)?,
    })
}

/// Picks and checks the work directory; a missing default one is fine (it is
/// created when mounting), a missing given one is not.
fn check_work(
    upper: &Path,
    given: Option<&Path>,
    lowers: &[PathBuf],
    mnt: &Path,
) -> Result<PathBuf, String> {
    let work = match given {
        Some(w) => existing_dir("work directory", w)?,
        None => mount::default_work_dir(upper)
            .ok_or_else(|| format!("upper layer {} has no parent directory", upper.display()))?,
    };
    check_apart("work directory", &work, "upper layer", upper)?;
    check_apart("work directory", &work, "mountpoint", mnt)?;
    for l in lowers {
        check_apart("work directory", &work, "lower layer", l)?;
    }
    // The mount that matters is the one the work directory is (or will be)
    // on: its own if it exists, else its parent's.
    let probe = if sys::stat_path(&work).is_ok() {
        work.clone()
    } else {
        work.parent().map(Path::to_path_buf).unwrap_or_default()
    };
    let wm =
        sys::mount_facts(&probe).map_err(|e| format!("work directory {}: {e}", work.display()))?;
    let um =
        sys::mount_facts(upper).map_err(|e| format!("upper layer {}: {e}", upper.display()))?;
    if wm.mnt_id != um.mnt_id || (probe != work && um.is_mount_root) {
        return Err(match given {
            Some(_) => format!(
                "work directory {} is not on the same mount as upper layer {}",
                work.display(),
                upper.display()
            ),
            None => format!(
                "upper layer {} is the root of a mount, so no work directory beside it shares its mount: pass --work DIR on that mount",
                upper.display()
            ),
        });
    }
    Ok(work)
}

pub fn mount_cmd(args: MountArgs) -> Result<(), String> {
    let cfg = validate(&args)?;
    if args.foreground {
        let ready = match args.ready_fd {
            Some(fd) => Some(sys::adopt_fd(fd).map_err(|e| format!("--ready-fd {fd}: {e}"))?),
            None => None,
        };
        return serve_foreground(&cfg, ready, false);
    }
    daemonize(&cfg)
}

/// Serves `cfg` in this process; `detach` points stderr at /dev/null once
/// the mount answers (a daemon outliving its terminal).
fn serve_foreground(cfg: &MountConfig, ready: Option<OwnedFd>, detach: bool) -> Result<(), String> {
    let created = prepare_work(cfg)?;
    let res = mount::serve(cfg, ready, detach);
    if res.is_err()
        && let Some(w) = created
    {
        // Nothing may be left behind by a mount that failed.
        let _ = std::fs::remove_dir(w);
    }
    res
}

/// Creates the default work directory when it is missing; returns it when
/// this call created it, so a failed mount can remove it again.
pub(crate) fn prepare_work(cfg: &MountConfig) -> Result<Option<PathBuf>, String> {
    let Some(w) = &cfg.work else {
        return Ok(None);
    };
    if sys::stat_path(w).is_ok() {
        return Ok(None);
    }
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(w)
        .map_err(|e| format!("cannot create work directory {}: {e}", w.display()))?;
    Ok(Some(w.clone()))
}

/// Forks the daemon, which serves `cfg` as validated here, and waits until
/// it reports the mount live (exit 0) or dies (its exit status; the child
/// has already printed why on the shared stderr).
fn daemonize(cfg: &MountConfig) -> Result<(), String> {
    let (r, w) = sys::ready_pipe().map_err(|e| format!("cannot create pipe: {e}"))?;
    // Nothing the daemon starts (fusermount3) may hold the pipe open.
    sys::set_cloexec(w.as_fd(), true).map_err(|e| format!("cannot create pipe: {e}"))?;
    match sys::fork_daemon().map_err(|e| format!("cannot start daemon: {e}"))? {
        sys::Forked::Child => {
            drop(r);
            let detach = !cfg.debug && std::env::var_os("RUST_LOG").is_none();
            let code = match serve_foreground(cfg, Some(w), detach) {
                Ok(()) => 0,
                Err(msg) => {
                    eprintln!("unionfuse: {msg}");
                    1
                }
            };
            std::process::exit(code);
        }
        sys::Forked::Parent(pid) => {
            drop(w);
            let mut b = [0u8; 1];
            let got = sys::read(r.as_fd(), &mut b).unwrap_or(0);
            if got == 1 && b[0] == READY_BYTE {
                return Ok(());
            }
            let code = sys::wait_child(pid).map_err(|e| format!("waiting for daemon: {e}"))?;
            std::process::exit(code.max(1));
        }
    }
}

/// Retries of a busy unmount, 50 ms apart.
const UMOUNT_BUSY_RETRIES: u32 = 20;

/// The absolute form of a mountpoint without stat-ing it: a dead FUSE mount
/// answers ENOTCONN to that, and must still be unmountable.
fn mountpoint_path(p: &Path) -> Result<PathBuf, String> {
    let abs = if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir()
            .map_err(|e| format!("current directory: {e}"))?
            .join(p)
    };
    let name = abs.file_name();
    let parent = abs.parent();
    match (parent, name) {
        (Some(parent), Some(name)) => Ok(parent
            .canonicalize()
            .map_err(|e| format!("{} {}", parent.display(), describe(&e)))?
            .join(name)),
        _ => Ok(abs),
    }
}

fn umount_cmd(p: &Path, timeout: Duration) -> Result<(), String> {
    let mnt = mountpoint_path(p)?;
    let entry = crate::mountinfo::unionfuse_at(&mnt)?;
    // Found before the unmount: afterwards the device number may already
    // belong to another mount.
    let watch = crate::runtime::Watch::find(&entry);
    unmount_path(p, &mnt)?;
    if let Some(w) = watch
        && !w.wait_exit(timeout)
    {
        return Err(format!(
            "{} is unmounted, but its daemon (PID {}) is still running after {} s",
            p.display(),
            w.record.pid,
            timeout.as_secs()
        ));
    }
    Ok(())
}

fn unmount_path(p: &Path, mnt: &Path) -> Result<(), String> {
    let prog = if sys::is_root() {
        None
    } else {
        Some(find_in_path("fusermount3").ok_or("fusermount3 not found: install fuse3")?)
    };
    // A file closed just now can still be held for a moment by a process
    // that forked while it was open and has not exec'd yet: retry a busy
    // mount briefly before calling it busy.
    let mut tries = 0;
    loop {
        let res = match &prog {
            None => sys::umount(mnt, 0).map_err(|e| {
                let busy = e.raw_os_error() == Some(libc::EBUSY);
                (busy, e.to_string())
            }),
            Some(prog) => fusermount_u(prog, mnt),
        };
        match res {
            Ok(()) => return Ok(()),
            Err((true, _)) if tries < UMOUNT_BUSY_RETRIES => {
                tries += 1;
                std::thread::sleep(Duration::from_millis(50));
            }
            Err((true, _)) => return Err(format!("{} is busy: files are open in it", p.display())),
            Err((false, msg)) => return Err(format!("cannot unmount {}: {msg}", p.display())),
        }
    }
}

/// `fusermount3 -u MNT`; on failure whether the mount was busy, and the
/// first line it printed.
fn fusermount_u(prog: &Path, mnt: &Path) -> Result<(), (bool, String)> {
    let out = Command::new(prog)
        .arg("-u")
        .arg(mnt)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| (false, format!("cannot run fusermount3: {e}")))?;
    if out.status.success() {
        return Ok(());
    }
    let msg = String::from_utf8_lossy(&out.stderr);
    let line = msg.lines().next().unwrap_or("fusermount3 failed").trim();
    Err((msg.contains("busy"), line.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_lower_lists() {
        assert_eq!(
            split_lowers(OsStr::new("a:b\\:c:d\\\\")),
            vec![
                PathBuf::from("a"),
                PathBuf::from("b:c"),
                PathBuf::from("d\\")
            ]
        );
        assert_eq!(split_lowers(OsStr::new("/x")), vec![PathBuf::from("/x")]);
    }

    #[test]
    fn relates_paths() {
        let a = Path::new("/a/b");
        assert!(nested(a, Path::new("/a/b")).is_some());
        assert_eq!(nested(a, Path::new("/a")), Some("is inside"));
        assert_eq!(nested(Path::new("/a"), a), Some("contains"));
        assert_eq!(nested(Path::new("/a/bc"), a), None);
    }
}

//! The verbs on layer directories, mounted or not: `diff`, `export`,
//! `unpack`, `commit` and `check`.

use std::ffi::OsString;
use std::io::Write;
use std::path::PathBuf;

use clap::{Args, ValueEnum};

use super::progress::{Counting, Spinner};
use super::{existing_dir, lower_dirs};
use crate::config::describe;
use crate::failure::Failure;
use crate::layer::upper::WhiteoutFormat;
use crate::layerfile::Compression;

/// `--compress` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CompressArg {
    Gzip,
    Zstd,
}

/// Whiteout formats an unpacked layer may be written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
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
    /// Whole-second modification times only, as docker writes layers (for
    /// byte-for-byte comparison with other tools); by default a time with a
    /// fraction is kept in a PAX record too.
    #[arg(long)]
    pub mtime_seconds: bool,
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

/// The walks of these verbs hold a descriptor per level of the path, and
/// trees in images nest thousands of levels, past the usual soft limit of
/// 1024 open files: raised as far as allowed, as the daemon does.
fn allow_deep_walks() {
    crate::sys::raise_nofile_limit();
}

pub(super) fn export_cmd(args: &ExportArgs, quiet: bool) -> Result<(), Failure> {
    allow_deep_walks();
    let spinner = Spinner::new("exporting", Counting::Bytes, quiet);
    let res = export_to(args, &spinner);
    if res.is_ok() {
        spinner.finish();
    }
    res
}

fn export_to(args: &ExportArgs, progress: &Spinner) -> Result<(), Failure> {
    let upper = existing_dir("upper layer", &args.upper)?;
    let comp = match args.compress {
        None => Compression::None,
        Some(CompressArg::Gzip) => Compression::Gzip,
        Some(CompressArg::Zstd) => Compression::Zstd,
    };
    if args.output.as_os_str() == "-" {
        let out = std::io::BufWriter::new(std::io::stdout().lock());
        return crate::api::export_with_progress(&upper, out, comp, args.mtime_seconds, progress);
    }
    // Written beside the target and renamed: a failed export leaves no
    // partial layer under the name.
    let tmp = args.output.with_extension("unionfuse-partial");
    let file = std::fs::File::create(&tmp)
        .map_err(|e| Failure::Layer(format!("cannot create {}: {e}", tmp.display())))?;
    let res = crate::api::export_with_progress(
        &upper,
        std::io::BufWriter::new(&file),
        comp,
        args.mtime_seconds,
        progress,
    )
    .and_then(|()| {
        file.sync_all()
            .map_err(|e| Failure::Layer(format!("{}: {e}", tmp.display())))
    })
    .and_then(|()| {
        std::fs::rename(&tmp, &args.output)
            .map_err(|e| Failure::Layer(format!("cannot write {}: {e}", args.output.display())))
    });
    if res.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    res
}

pub(super) fn unpack_cmd(args: &UnpackArgs, quiet: bool) -> Result<(), Failure> {
    allow_deep_walks();
    let dir = existing_dir("target directory", &args.dir)?;
    let fmt = args.whiteout.format();
    let input: Box<dyn std::io::Read> = if args.layer.as_os_str() == "-" {
        Box::new(std::io::stdin().lock())
    } else {
        Box::new(std::fs::File::open(&args.layer).map_err(|e| {
            Failure::Invalid(format!("layer {} {}", args.layer.display(), describe(&e)))
        })?)
    };
    let spinner = Spinner::new("unpacking", Counting::Bytes, quiet);
    crate::api::unpack_with_progress(input, &dir, fmt, &spinner)?;
    spinner.finish();
    Ok(())
}

pub(super) fn commit_cmd(args: &CommitArgs, quiet: bool) -> Result<(), Failure> {
    allow_deep_walks();
    let upper = existing_dir("upper layer", &args.upper)?;
    if crate::sys::stat_path(&args.newdir).is_ok() {
        return Err(Failure::Invalid(format!(
            "{} already exists",
            args.newdir.display()
        )));
    }
    // Built under a temporary name and renamed: nobody stacks half a layer.
    let tmp = args.newdir.with_extension("unionfuse-partial");
    std::fs::create_dir(&tmp)
        .map_err(|e| Failure::Layer(format!("cannot create {}: {e}", tmp.display())))?;
    let spinner = Spinner::new("committing", Counting::Bytes, quiet);
    let res = crate::api::commit_with_progress(&upper, &tmp, args.whiteout.format(), &spinner)
        .and_then(|()| {
            std::fs::rename(&tmp, &args.newdir).map_err(|e| {
                Failure::Layer(format!("cannot create {}: {e}", args.newdir.display()))
            })
        });
    match &res {
        Ok(()) => spinner.finish(),
        Err(_) => {
            let _ = std::fs::remove_dir_all(&tmp);
        }
    }
    res
}

/// Exit status of `check` when findings remain.
const CHECK_FINDINGS: i32 = 3;

pub(super) fn check_cmd(args: &CheckArgs) -> Result<i32, Failure> {
    allow_deep_walks();
    let upper = existing_dir("upper layer", &args.upper)?;
    let lowers = lower_dirs(&args.lower)?;
    let work = match &args.work {
        Some(w) => Some(existing_dir("work directory", w)?),
        None => crate::config::default_work_dir(&upper),
    };
    // A live writable mount changes the upper under the check, and a
    // repair under it.
    let busy = crate::runtime::live_records()
        .into_iter()
        .find(|r| r.upper.as_deref() == Some(upper.as_path()) && !r.read_only);
    if let Some(r) = busy {
        return Err(Failure::Invalid(format!(
            "upper layer {} is in use by the mount at {}: unmount it first",
            upper.display(),
            r.mountpoint.display()
        )));
    }
    let found = crate::check::check_paths(&upper, &lowers, work.as_deref(), args.repair)?;
    let text = if args.json {
        crate::check::format_json(&found)
            .map_err(|e| Failure::Layer(format!("cannot write the findings: {e}")))?
            .into_bytes()
    } else {
        crate::check::format_text(&found)
    };
    std::io::stdout()
        .write_all(&text)
        .map_err(|e| Failure::Layer(format!("cannot write the findings: {e}")))?;
    if found.iter().any(|f| !f.repaired) {
        return Ok(CHECK_FINDINGS);
    }
    Ok(0)
}

pub(super) fn diff_cmd(args: &DiffArgs) -> Result<(), Failure> {
    allow_deep_walks();
    let (upper, lowers) = match (&args.mountpoint, &args.upper) {
        (Some(mnt), _) => {
            let rec = super::live::live(mnt)?.record;
            let upper = rec.upper.ok_or_else(|| {
                Failure::Invalid(format!(
                    "{} is a read-only mount: it has no upper layer",
                    mnt.display()
                ))
            })?;
            let lowers = rec
                .lowers
                .iter()
                .map(|l| crate::config::escape_lower(l.as_os_str()))
                .collect();
            (upper, lowers)
        }
        (None, Some(u)) => (u.clone(), args.lower.clone()),
        (None, None) => {
            return Err(Failure::Invalid(
                "give --upper and --lower, or a mountpoint".into(),
            ));
        }
    };
    let upper = existing_dir("upper layer", &upper)?;
    let lowers = lower_dirs(&lowers)?;
    if lowers.is_empty() {
        return Err(Failure::Invalid("at least one --lower is required".into()));
    }
    let changes = crate::api::diff(&upper, &lowers)?;
    let failed = |e: &dyn std::fmt::Display| Failure::Layer(format!("cannot write the diff: {e}"));
    let text = if args.json {
        crate::diff::format_json(&changes)
            .map_err(|e| failed(&e))?
            .into_bytes()
    } else {
        crate::diff::format_text(&changes)
    };
    std::io::stdout()
        .lock()
        .write_all(&text)
        .map_err(|e| failed(&e))
}

//! `unionfuse check`: what a crash or another tool can leave in an upper
//! layer and its work directory, reported and, when asked, repaired
//! without changing the merged view. Without `repair` nothing on disk
//! changes.
//!
//! Found: leftovers in staging, directories marked opaque twice (xattr and `.wh..wh..opq`), whiteouts inside opaque
//! directories, whiteouts for names no lower holds, redirects that lead
//! nowhere, private xattrs on objects they do not belong to, and ownership
//! overrides that do not parse.

use std::ffi::CStr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::sync::Arc;

use crate::error::Result;
use crate::failure::Failure;
use crate::json::{JsonPath, array_line};
use crate::layer::upper::{WhiteoutFormat, remove_tree};
use crate::layer::whiteout::{
    self, OCI_OPAQUE, OPAQUE_XATTRS, REDIRECT_XATTRS, UpperFormat, dir_marks, oci_whiteout_target,
};
use crate::layer::{LayerIdx, Layers};
use crate::name::Name;
use crate::override_stat::{self, Override};
use crate::resolve::{self, DirFds};
use crate::sys::{self, WTarget, Writable, XTarget};
use crate::walk::{Entry, Step, walk};

/// One problem found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// A short stable name: `staging-leftover`, `double-opaque`, `whiteout-in-opaque`, `whiteout-unneeded`,
    /// `redirect-dangling`, `xattr-stale`, `override-malformed`.
    pub kind: &'static str,
    /// In the upper (`/etc/x`), or in the work directory (`work:/...`).
    pub path: Vec<u8>,
    pub detail: String,
    pub repaired: bool,
}

// Hard-link index entries are not judged: one whose only link is its own
// still carries the data of lower names not copied up yet (the other
// names of a lower hard link), so "no upper name uses it" does not make
// it unused.
const NLINK_XATTRS: [&CStr; 2] = [c"trusted.unionfuse.nlink", c"user.unionfuse.nlink"];
const FORMAT_XATTRS: [&CStr; 2] = [c"trusted.unionfuse.whiteout", c"user.unionfuse.whiteout"];
const OVERRIDE_XATTRS: [&CStr; 2] = [override_stat::SECURITY, override_stat::CONTAINERS];

/// What a directory of the upper sees below it.
struct Ctx {
    upper: Arc<OwnedFd>,
    /// The lower directories merged here; empty under an opaque or added
    /// directory.
    lowers: DirFds,
    opaque: bool,
}

/// Checks the upper of `layers` (layer 0; its lowers may be none) and the
/// work directory `work`, repairing what it finds when `repair`.
pub fn check(layers: &Layers, work: Option<BorrowedFd<'_>>, repair: bool) -> Result<Vec<Finding>> {
    let upper = Arc::clone(&layers.get(0).root);
    let format = recorded_format(upper.as_fd());
    let mut out = Vec::new();
    if let Some(w) = work {
        check_work(w, repair, &mut out)?;
    }
    let lowers: DirFds = layers
        .iter()
        .filter(|(i, _)| *i != 0)
        .map(|(i, l)| (i, Arc::clone(&l.root)))
        .collect();
    let have_lowers = !lowers.is_empty();
    let ctx = Ctx {
        upper: Arc::clone(&upper),
        lowers,
        opaque: false,
    };
    walk(
        upper,
        ctx,
        true,
        |e| visit(layers, e, format, have_lowers, repair, &mut out),
        |_, _| Ok(()),
    )?;
    Ok(out)
}

/// The upper's whiteout format as unionfuse recorded it, else kernel
/// overlayfs's.
fn recorded_format(upper: BorrowedFd<'_>) -> WhiteoutFormat {
    for x in FORMAT_XATTRS {
        let mut v = [0u8; 16];
        if let Ok(n) = sys::getxattr(XTarget::Fd(upper), x, &mut v)
            && WhiteoutFormat::parse(&v[..n]) == Some(WhiteoutFormat::Oci)
        {
            return WhiteoutFormat::Oci;
        }
    }
    WhiteoutFormat::Overlay
}

fn check_work(work: BorrowedFd<'_>, repair: bool, out: &mut Vec<Finding>) -> Result<()> {
    let in_dir = |dir: &CStr, each: &mut dyn FnMut(BorrowedFd<'_>, &Name) -> Result<()>| {
        let Ok(fd) = sys::open_child_dir(work, dir) else {
            return Ok(());
        };
        for e in sys::read_dir(fd.as_fd())?.iter() {
            if e.name == b"." || e.name == b".." {
                continue;
            }
            each(fd.as_fd(), &Name::from_bytes(e.name)?)?;
        }
        Ok(())
    };
    let at = |dir: &str, name: &Name| {
        let mut p = format!("work:/{dir}/").into_bytes();
        p.extend_from_slice(name.as_bytes());
        p
    };
    in_dir(c"unionfuse-staging", &mut |dir, name| {
        let repaired = repair && remove_tree(Writable::new(dir), name.as_cstr()).is_ok();
        out.push(Finding {
            kind: "staging-leftover",
            path: at("unionfuse-staging", name),
            detail: "half-built by an interrupted change; never visible".into(),
            repaired,
        });
        Ok(())
    })
}

fn has_xattr(list: &[u8], want: &CStr) -> bool {
    list.split(|b| *b == 0).any(|n| n == want.to_bytes())
}

fn visit(
    layers: &Layers,
    e: &Entry<'_, Ctx>,
    format: WhiteoutFormat,
    have_lowers: bool,
    repair: bool,
    out: &mut Vec<Finding>,
) -> Result<Step<Ctx>> {
    let mut path = vec![b'/'];
    path.extend_from_slice(e.path);
    let raw = e.name.as_bytes();
    let mut found = |kind: &'static str, detail: String, repaired: bool| {
        out.push(Finding {
            kind,
            path: path.clone(),
            detail,
            repaired,
        });
    };
    if whiteout::is_oci_opaque(raw) {
        // Judged with its directory.
        return Ok(Step::Next);
    }
    let st = sys::fstatat(e.dir, e.name.as_cstr())?;
    // The name a whiteout hides, in either format.
    let hidden = match oci_whiteout_target(raw) {
        Some(Some(t)) => Some(Name::from_bytes(t)?),
        Some(None) => None,
        None if whiteout::is_whiteout(&st) => Some(e.name.clone()),
        None => None,
    };
    if let Some(h) = hidden {
        let kind = if e.ctx.opaque {
            Some("whiteout-in-opaque")
        } else if have_lowers && resolve::lookup(layers, &e.ctx.lowers, &h)?.is_none() {
            Some("whiteout-unneeded")
        } else {
            None
        };
        if let Some(kind) = kind {
            let repaired =
                repair && sys::unlinkat(Writable::new(e.dir), e.name.as_cstr(), false).is_ok();
            found(
                kind,
                "hides nothing: no lower layer shows this name here".into(),
                repaired,
            );
        }
        return Ok(Step::Next);
    }
    let is_dir = st.st_mode & libc::S_IFMT == libc::S_IFDIR;
    // The upper being checked (not mounted, or read-only) is where
    // repairs write: every directory below it is writable.
    let w = WTarget::At(Writable::new(e.dir), e.name.as_cstr());
    let t = w.read();
    let list = if st.st_mode & libc::S_IFMT == libc::S_IFLNK {
        Vec::new()
    } else {
        sys::listxattr_vec(t).unwrap_or_default()
    };
    for x in OVERRIDE_XATTRS {
        if !has_xattr(&list, x) {
            continue;
        }
        let mut v = vec![0u8; 256];
        let ok = sys::getxattr(t, x, &mut v)
            .ok()
            .and_then(|n| Override::parse(&v[..n]))
            .is_some();
        if !ok {
            let repaired = repair && sys::removexattr(w, x).is_ok();
            found(
                "override-malformed",
                format!("{} is not uid:gid:mode[:type]", x.to_string_lossy()),
                repaired,
            );
        }
    }
    // Names of an indexed hard link are links of the index entry and carry
    // its xattr: only a file linked nowhere else has it wrongly.
    let mut stale: Vec<&CStr> = if st.st_nlink == 1 {
        NLINK_XATTRS
            .iter()
            .copied()
            .filter(|x| has_xattr(&list, x))
            .collect()
    } else {
        Vec::new()
    };
    if !is_dir {
        stale.extend(
            OPAQUE_XATTRS
                .iter()
                .copied()
                .filter(|x| has_xattr(&list, x)),
        );
        stale.extend(
            REDIRECT_XATTRS
                .iter()
                .copied()
                .filter(|x| has_xattr(&list, x)),
        );
    }
    for x in stale {
        let repaired = repair && sys::removexattr(w, x).is_ok();
        found(
            "xattr-stale",
            format!("{} does not belong on this object", x.to_string_lossy()),
            repaired,
        );
    }
    if !is_dir {
        return Ok(Step::Next);
    }
    let sub = Arc::new(sys::open_child_dir(e.dir, e.name.as_cstr())?);
    let marks = dir_marks(e.dir, e.name, sub.as_fd());
    let opaque_file = sys::fstatat(sub.as_fd(), OCI_OPAQUE).is_ok();
    let opaque_xattr = whiteout::opaque_xattrs(t);
    if opaque_file && !opaque_xattr.is_empty() {
        // The namespace only matters for markers written, which this
        // repair does not do.
        let fmt = UpperFormat::new(format, false);
        let repaired =
            repair && fmt.drop_foreign_opaque(w, Writable::new(sub.as_fd()), &opaque_xattr);
        found(
            "double-opaque",
            "marked opaque both by xattr and by .wh..wh..opq".into(),
            repaired,
        );
    }
    let mut dirs: DirFds = vec![(0, Arc::clone(&e.ctx.upper))];
    dirs.extend(e.ctx.lowers.iter().cloned());
    let merged = resolve::lookup(layers, &dirs, e.name)?;
    let lower_parts: Vec<(LayerIdx, OwnedFd)> = match merged {
        Some(f) => f
            .layers
            .into_iter()
            .zip(f.dir_fds)
            .filter(|(l, _)| *l != 0)
            .collect(),
        None => Vec::new(),
    };
    if have_lowers && !marks.opaque && marks.redirect.is_some() && lower_parts.is_empty() {
        // Nothing below shows through either way: opaque says so plainly.
        let repaired = repair && seal(e.dir, e.name, sub.as_fd(), format, &list);
        found(
            "redirect-dangling",
            format!(
                "redirect to {:?} leads to no directory in the lower layers",
                String::from_utf8_lossy(marks.redirect.as_deref().unwrap_or_default())
            ),
            repaired,
        );
    }
    let opaque = marks.opaque;
    let lowers = if opaque {
        Vec::new()
    } else {
        lower_parts
            .into_iter()
            .map(|(l, fd)| (l, Arc::new(fd)))
            .collect()
    };
    let ctx = Ctx {
        upper: Arc::clone(&sub),
        lowers,
        opaque,
    };
    Ok(Step::DescendOpened(ctx, sub))
}

/// Replaces a dangling redirect by an opaque marker in the upper's format,
/// in the namespace the redirect was written in (`list`: the directory's
/// xattr names).
fn seal(
    parent: BorrowedFd<'_>,
    name: &Name,
    dir: BorrowedFd<'_>,
    format: WhiteoutFormat,
    list: &[u8],
) -> bool {
    let t = WTarget::At(Writable::new(parent), name.as_cstr());
    let present: Vec<&CStr> = REDIRECT_XATTRS
        .iter()
        .copied()
        .filter(|x| has_xattr(list, x))
        .collect();
    // The opaque xattr goes in the namespace the redirect was written in.
    let trusted = present.first() == Some(&REDIRECT_XATTRS[0]);
    let marked = UpperFormat::new(format, trusted)
        .mark_opaque(t, Writable::new(dir))
        .is_ok();
    marked && present.iter().all(|x| sys::removexattr(t, x).is_ok())
}

/// Findings as text, one line each.
pub fn format_text(found: &[Finding]) -> Vec<u8> {
    let mut s = Vec::new();
    for f in found {
        s.extend_from_slice(f.kind.as_bytes());
        s.push(b' ');
        s.extend_from_slice(&f.path);
        s.extend_from_slice(b": ");
        s.extend_from_slice(f.detail.as_bytes());
        if f.repaired {
            s.extend_from_slice(b" (repaired)");
        }
        s.push(b'\n');
    }
    s
}

/// Findings as JSON: `[{"kind":..,"path":..,"detail":..,"repaired":..},...]`,
/// a path that is not UTF-8 written as `crate::json` says.
pub fn format_json(found: &[Finding]) -> serde_json::Result<String> {
    #[derive(serde::Serialize)]
    struct Item<'a> {
        kind: &'a str,
        #[serde(flatten)]
        path: JsonPath<'a>,
        detail: &'a str,
        repaired: bool,
    }
    let items: Vec<Item<'_>> = found
        .iter()
        .map(|f| Item {
            kind: f.kind,
            path: JsonPath::new(&f.path),
            detail: &f.detail,
            repaired: f.repaired,
        })
        .collect();
    array_line(&items)
}

/// Opens `upper` and `lowers` and checks them (see [`check`]); `work`, when
/// it exists, is checked too.
pub fn check_paths(
    upper: &Path,
    lowers: &[std::path::PathBuf],
    work: Option<&Path>,
    repair: bool,
) -> std::result::Result<Vec<Finding>, Failure> {
    let layers = Layers::open(Some(upper), lowers)
        .map_err(|e| Failure::Layer(format!("cannot open layers: {e}")))?;
    let work_fd = match work {
        Some(w) => match sys::open_dir_path(w) {
            Ok(fd) => Some(fd),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => None,
            Err(e) => {
                return Err(Failure::Layer(format!(
                    "work directory {}: {e}",
                    w.display()
                )));
            }
        },
        None => None,
    };
    check(&layers, work_fd.as_ref().map(|f| f.as_fd()), repair)
        .map_err(|e| Failure::Layer(format!("cannot check {}: {e}", upper.display())))
}

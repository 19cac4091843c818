//! OCI image layers: an upper written out as a layer tar (`export`), a layer
//! tar unpacked into a directory usable as a lower (`unpack`), and both in
//! one step (`commit`).
//!
//! Export is reproducible: entries in byte order of their paths, a
//! directory before what it holds, an opaque directory's `.wh..wh..opq`
//! right after the directory, numeric owners only, no atime or ctime, hard
//! links as tar links, xattrs as PAX `SCHILY.xattr.` records (overlay and
//! unionfuse bookkeeping left out).
//!
//! Unpack never follows a symlink: every entry is created relative to its
//! parent's descriptor, reached one component at a time without following
//! links, and an entry whose path or hard-link target leaves the directory
//! is refused.

use std::collections::HashMap;
use std::ffi::CString;
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;

use crate::layer::upper::{WhiteoutFormat, remove_tree};
use crate::layer::whiteout::{self, OCI_OPAQUE, UpperFormat, is_private_xattr};
use crate::name::{Name, WH_PREFIX};
use crate::progress::{NoProgress, Progress};
use crate::sys::{self, WTarget, Writable, XTarget};

/// Compression of a layer tar.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

/// xattrs kept in a layer although the merged view hides them: ownership
/// overrides belong to the object.
const KEPT_PRIVATE: [&[u8]; 2] = [
    b"user.containers.override_stat",
    b"security.fuseoverlayfs.override_stat",
];

fn err(what: impl std::fmt::Display, e: impl std::fmt::Display) -> String {
    format!("{what}: {e}")
}

/// Writes the upper directory `upper` as an OCI layer tar to `out`,
/// counting each entry written into `progress`.
pub fn export(
    upper: &Path,
    out: impl Write,
    compression: Compression,
    mtime_seconds: bool,
    progress: &dyn Progress,
) -> Result<(), String> {
    let root = sys::open_dir_path(upper).map_err(|e| err(upper.display(), e))?;
    match compression {
        Compression::None => write_layer(root.as_fd(), out, mtime_seconds, progress),
        Compression::Gzip => {
            let mut gz = flate2::GzBuilder::new()
                .mtime(0)
                .write(out, flate2::Compression::default());
            write_layer(root.as_fd(), &mut gz, mtime_seconds, progress)?;
            gz.try_finish().map_err(|e| err("gzip", e))
        }
        Compression::Zstd => {
            let mut z = zstd::Encoder::new(out, 3).map_err(|e| err("zstd", e))?;
            write_layer(root.as_fd(), &mut z, mtime_seconds, progress)?;
            z.finish().map(|_| ()).map_err(|e| err("zstd", e))
        }
    }
}

/// `mtime_seconds`: whole-second times only, as docker writes them; else
/// a time with a fraction also gets a PAX `mtime` record.
fn write_layer(
    root: BorrowedFd<'_>,
    out: impl Write,
    mtime_seconds: bool,
    progress: &dyn Progress,
) -> Result<(), String> {
    let mut b = tar::Builder::new(out);
    let mut links = HashMap::new();
    let root = std::sync::Arc::new(sys::open_child_dir(root, c".").map_err(|e| err("upper", e))?);
    // The walk stops at the first failure; its message, with the path, is
    // kept here.
    let mut failed = None;
    let walked = crate::walk::walk(
        root,
        (),
        true,
        |e| {
            export_entry(&mut b, e, &mut links, mtime_seconds, progress).map_err(|m| {
                failed = Some(m);
                crate::error::Error::new(libc::ECANCELED)
            })
        },
        |_, _| Ok(()),
    );
    if let Some(m) = failed {
        return Err(m);
    }
    walked.map_err(|e| err("reading the upper", e))?;
    b.finish().map_err(|e| err("writing the layer", e))
}

fn join(dir: &[u8], name: &[u8]) -> Vec<u8> {
    let mut p = dir.to_vec();
    if !p.is_empty() {
        p.push(b'/');
    }
    p.extend_from_slice(name);
    p
}

fn as_path(p: &[u8]) -> &Path {
    use std::os::unix::ffi::OsStrExt;
    Path::new(std::ffi::OsStr::from_bytes(p))
}

fn header(st: &libc::stat, kind: tar::EntryType) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(st.st_mode & 0o7777);
    h.set_uid(st.st_uid.into());
    h.set_gid(st.st_gid.into());
    h.set_mtime(st.st_mtime.max(0) as u64);
    h.set_size(0);
    h
}

/// The xattrs of an object worth keeping in a layer, as PAX records.
fn pax_xattrs(t: XTarget<'_>) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let Ok(list) = sys::listxattr_vec(t) else {
        return out;
    };
    for n in list.split(|b| *b == 0).filter(|n| !n.is_empty()) {
        if is_private_xattr(n) && !KEPT_PRIVATE.contains(&n) {
            continue;
        }
        let (Ok(name), Ok(cname)) = (std::str::from_utf8(n), CString::new(n)) else {
            continue;
        };
        let mut v = vec![0u8; 64 * 1024];
        if let Ok(len) = sys::getxattr(t, &cname, &mut v) {
            v.truncate(len);
            out.push((format!("SCHILY.xattr.{name}"), v));
        }
    }
    out.sort();
    out
}

fn append_pax<W: Write>(b: &mut tar::Builder<W>, recs: &[(String, Vec<u8>)]) -> Result<(), String> {
    if recs.is_empty() {
        return Ok(());
    }
    b.append_pax_extensions(recs.iter().map(|(k, v)| (k.as_str(), v.as_slice())))
        .map_err(|e| err("writing the layer", e))
}

/// Writes one entry of the upper (and, after an opaque directory, its
/// marker) to the layer.
fn export_entry<W: Write>(
    b: &mut tar::Builder<W>,
    e: &crate::walk::Entry<'_, ()>,
    links: &mut HashMap<(u64, u64), Vec<u8>>,
    mtime_seconds: bool,
    progress: &dyn Progress,
) -> Result<crate::walk::Step<()>, String> {
    use crate::walk::Step;
    let (dir, name, path) = (e.dir, e.name, e.path);
    let n = name.as_bytes();
    if whiteout::is_oci_opaque(n) {
        // Written right after its directory.
        return Ok(Step::Next);
    }
    let rel = &path[..path.len() - n.len()];
    let w = |e: std::io::Error| err("writing the layer", e);
    let shown = String::from_utf8_lossy(path).into_owned();
    let st = sys::fstatat(dir, name.as_cstr()).map_err(|e| err(&shown, e))?;
    let kind = st.st_mode & libc::S_IFMT;
    progress.item(if kind == libc::S_IFREG {
        st.st_size as u64
    } else {
        0
    });
    if whiteout::is_whiteout(&st) {
        let mut wh = rel.to_vec();
        wh.extend_from_slice(WH_PREFIX);
        wh.extend_from_slice(n);
        let mut h = header(&st, tar::EntryType::Regular);
        h.set_mode(0o644);
        b.append_data(&mut h, as_path(&wh), std::io::empty())
            .map_err(w)?;
        return Ok(Step::Next);
    }
    let t = XTarget::At(dir, name.as_cstr());
    let mut pax = if kind != libc::S_IFLNK {
        pax_xattrs(t)
    } else {
        Vec::new()
    };
    if !mtime_seconds && st.st_mtime_nsec != 0 && st.st_mtime >= 0 {
        // The ustar header holds whole seconds; what the mount showed goes
        // in a PAX record (derived from the object alone: reproducible).
        let v = format!("{}.{:09}", st.st_mtime, st.st_mtime_nsec);
        pax.push(("mtime".into(), v.into_bytes()));
        pax.sort();
    }
    append_pax(b, &pax)?;
    match kind {
        libc::S_IFDIR => {
            let mut h = header(&st, tar::EntryType::Directory);
            let mut p = path.to_vec();
            p.push(b'/');
            b.append_data(&mut h, as_path(&p), std::io::empty())
                .map_err(w)?;
            let sub = sys::open_child_dir(dir, name.as_cstr()).map_err(|e| err(&shown, e))?;
            if whiteout::is_opaque_dir(sub.as_fd()) {
                // Before any of its entries: it hides the lowers' entries,
                // not this layer's.
                let mut h = tar::Header::new_gnu();
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(0o644);
                h.set_size(0);
                b.append_data(
                    &mut h,
                    as_path(&join(path, OCI_OPAQUE.to_bytes())),
                    std::io::empty(),
                )
                .map_err(w)?;
            }
            return Ok(Step::DescendOpened((), std::sync::Arc::new(sub)));
        }
        libc::S_IFREG => {
            if st.st_nlink > 1 {
                if let Some(first) = links.get(&(st.st_dev, st.st_ino)) {
                    let mut h = header(&st, tar::EntryType::Link);
                    b.append_link(&mut h, as_path(path), as_path(first))
                        .map_err(w)?;
                    return Ok(Step::Next);
                }
                links.insert((st.st_dev, st.st_ino), path.to_vec());
            }
            if whiteout::may_be_metacopy(&st, true) && whiteout::metacopy_marks(dir, name).is_some()
            {
                // Its data is in a lower layer, which a layer file cannot
                // refer to: writing the sparse copy would lose it.
                return Err(format!(
                    "{shown}: a metadata-only copy (metacopy) whose data is in a lower layer; \
                     write to the file through the mount first, which completes the copy"
                ));
            }
            let fd = sys::open_child_flags(dir, name.as_cstr(), libc::O_RDONLY)
                .map_err(|e| err(&shown, e))?;
            let mut h = header(&st, tar::EntryType::Regular);
            h.set_size(st.st_size as u64);
            b.append_data(
                &mut h,
                as_path(path),
                File::from(fd).take(st.st_size as u64),
            )
            .map_err(w)?;
        }
        libc::S_IFLNK => {
            let target = sys::readlinkat(dir, name.as_cstr()).map_err(|e| err(&shown, e))?;
            let mut h = header(&st, tar::EntryType::Symlink);
            b.append_link(&mut h, as_path(path), as_path(&target))
                .map_err(w)?;
        }
        libc::S_IFCHR | libc::S_IFBLK | libc::S_IFIFO => {
            let ty = match kind {
                libc::S_IFCHR => tar::EntryType::Char,
                libc::S_IFBLK => tar::EntryType::Block,
                _ => tar::EntryType::Fifo,
            };
            let mut h = header(&st, ty);
            if kind != libc::S_IFIFO {
                let _ = h.set_device_major(libc::major(st.st_rdev));
                let _ = h.set_device_minor(libc::minor(st.st_rdev));
            }
            b.append_data(&mut h, as_path(path), std::io::empty())
                .map_err(w)?;
        }
        // A socket cannot live in a tar; the layer formats drop them.
        _ => {}
    }
    Ok(Step::Next)
}

/// A PAX time (`SECONDS[.FRACTION]`, non-negative) as seconds and
/// nanoseconds; `None` when it does not parse.
fn parse_pax_time(v: &[u8]) -> Option<(i64, i64)> {
    let s = std::str::from_utf8(v).ok()?;
    let (sec, frac) = s.split_once('.').unwrap_or((s, ""));
    let sec: i64 = sec.parse().ok()?;
    if sec < 0 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let digits = &frac[..frac.len().min(9)];
    let nsec = if digits.is_empty() {
        0
    } else {
        digits.parse::<i64>().ok()? * 10i64.pow(9 - digits.len() as u32)
    };
    Some((sec, nsec))
}

/// The path components of a tar entry, refusing anything that leaves the
/// target directory.
fn components(raw: &[u8]) -> Result<Vec<Name>, String> {
    let shown = String::from_utf8_lossy(raw);
    if raw.starts_with(b"/") {
        return Err(format!("entry {shown}: absolute path refused"));
    }
    let mut out = Vec::new();
    for c in raw.split(|b| *b == b'/') {
        match c {
            b"" | b"." => continue,
            b".." => return Err(format!("entry {shown}: '..' would leave the directory")),
            _ => out.push(Name::from_bytes(c).map_err(|e| err(format!("entry {shown}"), e))?),
        }
    }
    Ok(out)
}

/// The directory holding the last component, reached without following a
/// symlink; missing directories are made when `create`.
fn parent_of(
    root: BorrowedFd<'_>,
    comps: &[Name],
    create: bool,
    shown: &str,
) -> Result<OwnedFd, String> {
    let mut cur = sys::open_child_dir(root, c".").map_err(|e| err(shown, e))?;
    for c in &comps[..comps.len().saturating_sub(1)] {
        match sys::fstatat(cur.as_fd(), c.as_cstr()) {
            Ok(st) if st.st_mode & libc::S_IFMT == libc::S_IFDIR => {}
            Ok(_) => {
                return Err(format!(
                    "entry {shown}: {c:?} is not a directory (symlinks are never followed)"
                ));
            }
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) && create => {
                // Below the unpack target: writable.
                sys::mkdirat(Writable::new(cur.as_fd()), c.as_cstr(), 0o755)
                    .map_err(|e| err(shown, e))?;
            }
            Err(e) => return Err(err(shown, e)),
        }
        cur = sys::open_child_dir(cur.as_fd(), c.as_cstr()).map_err(|e| err(shown, e))?;
    }
    Ok(cur)
}

/// Unpacks a layer tar (plain, gzip or zstd, told apart by their magic)
/// into `dir`, writing whiteouts and opaque markers in `format`, counting
/// each entry into `progress`.
pub fn unpack(
    input: impl Read,
    dir: &Path,
    format: WhiteoutFormat,
    progress: &dyn Progress,
) -> Result<(), String> {
    let mut r = BufReader::new(input);
    let magic = r.fill_buf().map_err(|e| err("reading the layer", e))?;
    let reader: Box<dyn Read> = if magic.starts_with(&[0x1f, 0x8b]) {
        Box::new(flate2::read::GzDecoder::new(r))
    } else if magic.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Box::new(zstd::Decoder::with_buffer(r).map_err(|e| err("zstd", e))?)
    } else {
        Box::new(r)
    };
    let root = sys::open_dir_path(dir).map_err(|e| err(dir.display(), e))?;
    // Markers, and whether owners must be kept exactly, follow the one
    // privilege probe, made when an entry first needs it: a layer refused
    // before then leaves the directory untouched.
    let probed = std::cell::OnceCell::new();
    let fmt = || {
        *probed.get_or_init(|| {
            UpperFormat::new(
                format,
                whiteout::may_write_trusted(Writable::new(root.as_fd())),
            )
        })
    };
    let mut archive = tar::Archive::new(reader);
    // Directory times are set last: creating their entries moves them.
    let mut dir_times: Vec<(Vec<Name>, [libc::timespec; 2])> = Vec::new();
    for entry in archive.entries().map_err(|e| err("reading the layer", e))? {
        let mut entry = entry.map_err(|e| err("reading the layer", e))?;
        let raw = entry.path_bytes().into_owned();
        let shown = String::from_utf8_lossy(&raw).into_owned();
        let comps = components(&raw)?;
        let Some(name) = comps.last().cloned() else {
            continue;
        };
        let parent = parent_of(root.as_fd(), &comps, true, &shown)?;
        // Below the unpack target, which this verb creates or is given
        // empty: writable.
        let p = Writable::new(parent.as_fd());
        let pax_mtime = match entry.pax_extensions() {
            Ok(Some(exts)) => exts
                .flatten()
                .find(|e| e.key_bytes() == b"mtime")
                .and_then(|e| parse_pax_time(e.value_bytes())),
            _ => None,
        };
        let xattrs: Vec<(Vec<u8>, Vec<u8>)> = match entry.pax_extensions() {
            Ok(Some(exts)) => exts
                .flatten()
                .filter_map(|e| {
                    let k = e.key_bytes().strip_prefix(b"SCHILY.xattr.")?.to_vec();
                    Some((k, e.value_bytes().to_vec()))
                })
                .collect(),
            _ => Vec::new(),
        };
        let h = entry.header().clone();
        progress.item(if h.entry_type().is_file() {
            entry.size()
        } else {
            0
        });
        let n = name.as_bytes();
        if whiteout::is_oci_opaque(n) {
            if fmt().import_oci_opaque(p).map_err(|e| err(&shown, e))? {
                continue;
            }
        } else if let Some(hidden) = n.strip_prefix(WH_PREFIX)
            && fmt()
                .import_oci_whiteout(p, hidden)
                .map_err(|e| err(&shown, e))?
        {
            continue;
        }
        let kind = h.entry_type();
        let existing = sys::fstatat(p.fd(), name.as_cstr()).ok();
        let keep_dir =
            kind.is_dir() && existing.is_some_and(|st| st.st_mode & libc::S_IFMT == libc::S_IFDIR);
        if existing.is_some() && !keep_dir {
            remove_tree(p, name.as_cstr()).map_err(|e| err(&shown, e))?;
        }
        let mode = h.mode().unwrap_or(0o644) & 0o7777;
        let c = name.as_cstr();
        let fail = |e: std::io::Error| err(&shown, e);
        match kind {
            k if k.is_dir() => {
                if !keep_dir {
                    sys::mkdirat(p, c, mode).map_err(fail)?;
                }
            }
            k if k.is_file() || k == tar::EntryType::Continuous => {
                let fd = sys::create_file(p, c, libc::O_WRONLY, mode).map_err(fail)?;
                std::io::copy(&mut entry, &mut File::from(fd)).map_err(fail)?;
            }
            k if k.is_symlink() => {
                let target = entry
                    .link_name_bytes()
                    .ok_or(format!("entry {shown}: no target"))?;
                let target = CString::new(target.into_owned())
                    .map_err(|_| format!("entry {shown}: bad target"))?;
                sys::symlinkat(&target, p, c).map_err(fail)?;
            }
            k if k.is_hard_link() => {
                let target = entry
                    .link_name_bytes()
                    .ok_or(format!("entry {shown}: no target"))?;
                let tcomps = components(&target)?;
                let tname = tcomps
                    .last()
                    .ok_or(format!("entry {shown}: empty link target"))?;
                let tparent = parent_of(root.as_fd(), &tcomps, false, &shown)?;
                sys::linkat(tparent.as_fd(), tname.as_cstr(), p, c).map_err(fail)?;
                continue;
            }
            k if k.is_character_special() || k.is_block_special() || k.is_fifo() => {
                let ty = if k.is_character_special() {
                    libc::S_IFCHR
                } else if k.is_block_special() {
                    libc::S_IFBLK
                } else {
                    libc::S_IFIFO
                };
                let dev = libc::makedev(
                    h.device_major().ok().flatten().unwrap_or(0),
                    h.device_minor().ok().flatten().unwrap_or(0),
                );
                sys::mknodat(p, c, ty | mode, dev).map_err(fail)?;
            }
            // PAX and GNU metadata records are consumed by the tar reader.
            _ => continue,
        }
        let uid = h.uid().unwrap_or(0) as u32;
        let gid = h.gid().unwrap_or(0) as u32;
        if let Err(e) = sys::fchownat(p, c, uid, gid)
            && fmt().trusted()
        {
            return Err(err(&shown, e));
        }
        if !kind.is_symlink() {
            // chown dropped set-id bits.
            sys::fchmodat(p, c, mode).map_err(fail)?;
            for (k, v) in &xattrs {
                if let Ok(k) = CString::new(k.clone()) {
                    // Labels of another LSM, or trusted.* without privilege,
                    // cannot be kept; the rest of the entry still is.
                    let _ = sys::setxattr(WTarget::At(p, c), &k, v, 0);
                }
            }
        }
        let (sec, nsec) = pax_mtime.unwrap_or((h.mtime().unwrap_or(0) as i64, 0));
        let time = libc::timespec {
            tv_sec: sec,
            tv_nsec: nsec,
        };
        let times = [time, time];
        if kind.is_dir() {
            dir_times.push((comps, times));
        } else {
            sys::utimensat(p, c, &times).map_err(fail)?;
        }
    }
    for (comps, times) in dir_times.iter().rev() {
        let shown = format!("{comps:?}");
        let parent = parent_of(root.as_fd(), comps, false, &shown)?;
        if let Some(n) = comps.last() {
            sys::utimensat(Writable::new(parent.as_fd()), n.as_cstr(), times)
                .map_err(|e| err(&shown, e))?;
        }
    }
    Ok(())
}

/// Writes the changes of `upper` as a new lower layer directory `dest`
/// (created, empty), whiteouts in `format`: the next container stacks it on
/// the image. Entries are counted into `progress` as they land in `dest`.
pub fn commit(
    upper: &Path,
    dest: &Path,
    format: WhiteoutFormat,
    progress: &dyn Progress,
) -> Result<(), String> {
    let (reader, writer) =
        std::os::unix::net::UnixStream::pair().map_err(|e| err("socket pair", e))?;
    let up = upper.to_path_buf();
    let producer = std::thread::spawn(move || {
        let res = export(&up, &writer, Compression::None, false, &NoProgress);
        // The reader sees the end of the stream.
        let _ = writer.shutdown(std::net::Shutdown::Write);
        res
    });
    let res = unpack(&reader, dest, format, progress);
    let exported = producer
        .join()
        .map_err(|_| "export thread panicked".to_string())?;
    exported.and(res)
}

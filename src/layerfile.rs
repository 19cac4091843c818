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
        if name.oci_whiteout().is_none() {
            // `.wh.NAME` would be longer than any file name: the whiteout
            // goes in as what it is, a 0:0 character device, which unpack
            // and every overlayfs reader take for a whiteout.
            let mut h = header(&st, tar::EntryType::Char);
            h.set_mode(0o600);
            let _ = h.set_device_major(0);
            let _ = h.set_device_minor(0);
            b.append_data(&mut h, as_path(path), std::io::empty())
                .map_err(w)?;
            return Ok(Step::Next);
        }
        let mut wh = rel.to_vec();
        wh.extend_from_slice(WH_PREFIX);
        wh.extend_from_slice(n);
        let mut h = header(&st, tar::EntryType::Regular);
        h.set_mode(0o644);
        b.append_data(&mut h, as_path(&wh), std::io::empty())
            .map_err(w)?;
        return Ok(Step::Next);
    }
    if kind != libc::S_IFDIR && st.st_nlink > 1 {
        // Every kind but a directory may have several names; the layer
        // keeps them one object.
        if let Some(first) = links.get(&(st.st_dev, st.st_ino)) {
            let mut h = header(&st, tar::EntryType::Link);
            b.append_link(&mut h, as_path(path), as_path(first))
                .map_err(w)?;
            return Ok(Step::Next);
        }
        links.insert((st.st_dev, st.st_ino), path.to_vec());
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
/// target directory or is no name. Slices of the entry's path: entries in
/// deep trees have thousands of components, and copying them into
/// [`Name`]s for every entry would be quadratic in the depth.
fn components(raw: &[u8]) -> Result<Vec<&[u8]>, String> {
    let shown = || String::from_utf8_lossy(raw).into_owned();
    if raw.starts_with(b"/") {
        return Err(format!("entry {}: absolute path refused", shown()));
    }
    let mut out = Vec::new();
    for c in raw.split(|b| *b == b'/') {
        match c {
            b"" | b"." => continue,
            b".." => {
                return Err(format!("entry {}: '..' would leave the directory", shown()));
            }
            _ if c.len() > crate::name::NAME_MAX || c.contains(&0) => {
                let e = Name::from_bytes(c)
                    .err()
                    .unwrap_or(crate::error::Error::INVAL);
                return Err(err(format!("entry {}", shown()), e));
            }
            _ => out.push(c),
        }
    }
    Ok(out)
}

fn name_of(c: &[u8], shown: &str) -> Result<Name, String> {
    Name::from_bytes(c).map_err(|e| err(format!("entry {shown}"), e))
}

/// Every how many levels [`Dirs`] keeps a descriptor of the current path.
const DIRS_STRIDE: usize = 16;

/// The directories of the last entry's path, so that the next entry, most
/// often in the same directory or one nearby, is reached in a few steps
/// instead of from the root: walking every path from the root is quadratic
/// in the depth of a tree, and trees in images nest thousands of levels.
/// Descriptors are kept at every [`DIRS_STRIDE`]th level and at the deepest
/// one, which bounds both the descriptors held and the steps per entry.
struct Dirs {
    names: Vec<Vec<u8>>,
    /// `fds[i]`: the directory `names[..=i]`, where kept.
    fds: Vec<Option<OwnedFd>>,
}

impl Dirs {
    fn new() -> Dirs {
        Dirs {
            names: Vec::new(),
            fds: Vec::new(),
        }
    }

    /// Forgets what lies below directory `comps` (removed or emptied by the
    /// entry being unpacked), and `comps` itself unless `keep_it`.
    fn forget(&mut self, comps: &[&[u8]], keep_it: bool) {
        let below =
            self.names.len() >= comps.len() && self.names.iter().zip(comps).all(|(a, b)| a == b);
        if below {
            self.truncate(comps.len() - usize::from(!keep_it && !comps.is_empty()));
        }
    }

    fn truncate(&mut self, len: usize) {
        self.names.truncate(len);
        self.fds.truncate(len);
    }

    /// The directory `comps`, reached without following a symlink from the
    /// deepest kept descriptor on the way; missing directories are made
    /// when `create`.
    fn open(
        &mut self,
        root: BorrowedFd<'_>,
        comps: &[&[u8]],
        create: bool,
        shown: &str,
    ) -> Result<OwnedFd, String> {
        let common = self
            .names
            .iter()
            .zip(comps)
            .take_while(|(a, b)| a == b)
            .count();
        self.truncate(common);
        let from = self.fds.iter().rposition(Option::is_some);
        let mut cur = match from {
            Some(i) => self.fds[i]
                .as_ref()
                .unwrap_or_else(|| unreachable!("a kept descriptor"))
                .try_clone(),
            None => sys::open_child_dir(root, c"."),
        }
        .map_err(|e| err(shown, e))?;
        let start = from.map_or(0, |i| i + 1);
        // Levels reached again below the last kept one were dropped before.
        self.truncate(start);
        for (i, c) in comps.iter().enumerate().skip(start) {
            let c = name_of(c, shown)?;
            // Opened first, looked at only when that fails: one call per
            // level in the common case.
            cur = match sys::open_child_dir(cur.as_fd(), c.as_cstr()) {
                Ok(fd) => fd,
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) && create => {
                    // Below the unpack target: writable.
                    sys::mkdirat(Writable::new(cur.as_fd()), c.as_cstr(), 0o755)
                        .map_err(|e| err(shown, e))?;
                    sys::open_child_dir(cur.as_fd(), c.as_cstr()).map_err(|e| err(shown, e))?
                }
                Err(e) if matches!(e.raw_os_error(), Some(libc::ENOTDIR | libc::ELOOP)) => {
                    return Err(format!(
                        "entry {shown}: {c:?} is not a directory (symlinks are never followed)"
                    ));
                }
                Err(e) => return Err(err(shown, e)),
            };
            self.names.push(c.as_bytes().to_vec());
            let keep = (i + 1) % DIRS_STRIDE == 0 || i + 1 == comps.len();
            self.fds.push(if keep {
                Some(cur.try_clone().map_err(|e| err(shown, e))?)
            } else {
                None
            });
        }
        // Only the deepest level between strides stays open.
        if let Some(i) = from
            && comps.len() > start
            && (i + 1) % DIRS_STRIDE != 0
        {
            self.fds[i] = None;
        }
        Ok(cur)
    }
}

/// The largest extension header read: real ones hold a path or a few
/// xattrs.
const MAX_EXTENSION: u64 = 1 << 20;

/// What the extension headers before an entry say about it: a GNU long
/// name or link target, PAX records.
#[derive(Debug, Default)]
struct Extensions {
    path: Option<Vec<u8>>,
    link: Option<Vec<u8>>,
    pax: Vec<PaxRecord>,
}

/// A PAX record's key and value.
type PaxRecord = (Vec<u8>, Vec<u8>);

impl Extensions {
    /// Takes in `entry` if it is an extension header for the next one.
    fn read<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>) -> Result<bool, String> {
        let ty = entry.header().entry_type();
        if !(ty.is_pax_local_extensions() || ty.is_gnu_longname() || ty.is_gnu_longlink()) {
            return Ok(false);
        }
        let mut data = Vec::new();
        entry
            .take(MAX_EXTENSION + 1)
            .read_to_end(&mut data)
            .map_err(|e| err("reading the layer", e))?;
        if data.len() as u64 > MAX_EXTENSION {
            return Err("reading the layer: an extension header larger than 1 MiB".into());
        }
        if ty.is_pax_local_extensions() {
            self.pax.extend(parse_pax(&data)?);
        } else {
            while data.last() == Some(&0) {
                data.pop();
            }
            if ty.is_gnu_longname() {
                self.path = Some(data);
            } else {
                self.link = Some(data);
            }
        }
        Ok(true)
    }

    /// The last PAX record for `key`.
    fn get(&self, key: &[u8]) -> Option<&[u8]> {
        self.pax
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_slice())
    }
}

/// PAX records, `LENGTH KEY=VALUE\n` each, LENGTH counting the whole
/// record: a value may hold any byte, a newline too.
fn parse_pax(mut data: &[u8]) -> Result<Vec<PaxRecord>, String> {
    let bad = || "reading the layer: a malformed PAX record".to_string();
    let mut out = Vec::new();
    while !data.is_empty() {
        let sp = data.iter().position(|b| *b == b' ').ok_or_else(bad)?;
        let len: usize = std::str::from_utf8(&data[..sp])
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(bad)?;
        if len <= sp + 1 || len > data.len() || data[len - 1] != b'\n' {
            return Err(bad());
        }
        let rec = &data[sp + 1..len - 1];
        let eq = rec.iter().position(|b| *b == b'=').ok_or_else(bad)?;
        out.push((rec[..eq].to_vec(), rec[eq + 1..].to_vec()));
        data = &data[len..];
    }
    Ok(out)
}

/// For an OCI whiteout whose name is too long for a directory entry
/// (`.wh.` and more than 251 bytes): the directory part and the hidden
/// name.
fn long_whiteout(raw: &[u8]) -> Option<(&[u8], &[u8])> {
    let trimmed = raw.strip_suffix(b"/").unwrap_or(raw);
    let (dir, last) = match trimmed.iter().rposition(|b| *b == b'/') {
        Some(i) => (&trimmed[..i], &trimmed[i + 1..]),
        None => (&b""[..], trimmed),
    };
    let hidden = last.strip_prefix(WH_PREFIX)?;
    (last.len() > crate::name::NAME_MAX && !hidden.starts_with(WH_PREFIX)).then_some((dir, hidden))
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
    let mut dir_times: Vec<(Vec<u8>, [libc::timespec; 2])> = Vec::new();
    let mut dirs = Dirs::new();
    // Extension headers are read here, not by the tar crate: its PAX
    // reader splits records at newlines, and drops a record whose value
    // holds one (binary xattrs such as ACLs often do) and every record after
    // it.
    let mut ext = Extensions::default();
    let entries = archive
        .entries()
        .map_err(|e| err("reading the layer", e))?
        .raw(true);
    for entry in entries {
        let mut entry = entry.map_err(|e| err("reading the layer", e))?;
        let ty = entry.header().entry_type();
        if ext.read(&mut entry)? {
            continue;
        }
        if ty.is_pax_global_extensions() {
            continue;
        }
        let ext = std::mem::take(&mut ext);
        let raw = ext
            .get(b"path")
            .map(<[u8]>::to_vec)
            .or(ext.path.clone())
            .unwrap_or_else(|| entry.path_bytes().into_owned());
        let shown = String::from_utf8_lossy(&raw).into_owned();
        if ty.is_gnu_sparse() {
            return Err(format!("entry {shown}: GNU sparse files are not supported"));
        }
        if let Some(size) = ext.get(b"size")
            && std::str::from_utf8(size)
                .ok()
                .and_then(|s| s.parse::<u64>().ok())
                != entry.header().entry_size().ok()
        {
            return Err(format!(
                "entry {shown}: a size beyond what the tar header holds (PAX size) is not supported"
            ));
        }
        let link_name = ext
            .get(b"linkpath")
            .map(<[u8]>::to_vec)
            .or(ext.link.clone())
            .or_else(|| entry.link_name_bytes().map(|l| l.into_owned()));
        let (comps, long_whiteout) = match long_whiteout(&raw) {
            Some((dir, hidden)) => {
                let mut comps = components(dir)?;
                comps.push(hidden);
                (comps, true)
            }
            None => (components(&raw)?, false),
        };
        let Some(name) = comps.last() else {
            continue;
        };
        let name = name_of(name, &shown)?;
        let parent = dirs.open(root.as_fd(), &comps[..comps.len() - 1], true, &shown)?;
        // Below the unpack target, which this verb creates or is given
        // empty: writable.
        let p = Writable::new(parent.as_fd());
        if long_whiteout {
            // `.wh.` and a name of more than 251 bytes fit in no directory
            // entry: the whiteout can only be a 0:0 character device, in
            // either format.
            dirs.forget(&comps, false);
            remove_tree(p, name.as_cstr()).map_err(|e| err(&shown, e))?;
            sys::mknodat(p, name.as_cstr(), libc::S_IFCHR, 0).map_err(|e| {
                err(
                    &shown,
                    format!("a whiteout of a name this long must be a 0:0 character device: {e}"),
                )
            })?;
            continue;
        }
        let pax_mtime = ext.get(b"mtime").and_then(parse_pax_time);
        let xattrs: Vec<(Vec<u8>, Vec<u8>)> = ext
            .pax
            .iter()
            .filter_map(|(k, v)| Some((k.strip_prefix(b"SCHILY.xattr.")?.to_vec(), v.clone())))
            .collect();
        let h = entry.header().clone();
        progress.item(if h.entry_type().is_file() {
            entry.size()
        } else {
            0
        });
        let n = name.as_bytes();
        // What an entry removes or empties is no longer a directory to
        // reach others through.
        let dir_part = &comps[..comps.len() - 1];
        if whiteout::is_oci_opaque(n) {
            dirs.forget(dir_part, true);
            if fmt().import_oci_opaque(p).map_err(|e| err(&shown, e))? {
                continue;
            }
        } else if let Some(hidden) = n.strip_prefix(WH_PREFIX) {
            let mut gone = dir_part.to_vec();
            gone.push(hidden);
            dirs.forget(&gone, false);
            if fmt()
                .import_oci_whiteout(p, hidden)
                .map_err(|e| err(&shown, e))?
            {
                continue;
            }
        }
        let kind = h.entry_type();
        let existing = sys::fstatat(p.fd(), name.as_cstr()).ok();
        let keep_dir =
            kind.is_dir() && existing.is_some_and(|st| st.st_mode & libc::S_IFMT == libc::S_IFDIR);
        if existing.is_some() && !keep_dir {
            dirs.forget(&comps, false);
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
                let target = link_name.ok_or(format!("entry {shown}: no target"))?;
                let target =
                    CString::new(target).map_err(|_| format!("entry {shown}: bad target"))?;
                sys::symlinkat(&target, p, c).map_err(fail)?;
            }
            k if k.is_hard_link() => {
                let target = link_name.ok_or(format!("entry {shown}: no target"))?;
                let tcomps = components(&target)?;
                let tname = tcomps
                    .last()
                    .ok_or(format!("entry {shown}: empty link target"))?;
                let tname = name_of(tname, &shown)?;
                // Apart from `dirs`: the target is anywhere in the tree.
                let tparent =
                    Dirs::new().open(root.as_fd(), &tcomps[..tcomps.len() - 1], false, &shown)?;
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
            dir_times.push((raw.clone(), times));
        } else {
            sys::utimensat(p, c, &times).map_err(fail)?;
        }
    }
    for (raw, times) in dir_times.iter().rev() {
        let shown = String::from_utf8_lossy(raw);
        let comps = components(raw)?;
        let parent = dirs.open(root.as_fd(), &comps[..comps.len() - 1], false, &shown)?;
        if let Some(n) = comps.last() {
            let n = name_of(n, &shown)?;
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

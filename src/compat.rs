//! The fuse-overlayfs command line, so that tools which run a mount program
//! (containers/storage, buildah, containerd's snapshotter, `mount -t
//! fuse.unionfuse` through mount.fuse3) can run unionfuse instead:
//!
//! ```text
//! unionfuse [-f] [-d] [-o OPTS]... [SOURCE] MOUNTPOINT
//! ```
//!
//! It is translated into the same [`MountConfigBuilder`] as `unionfuse
//! mount` and the Rust API fill in; which form a command line is, is the
//! command line's business (`crate::cli`).

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::PathBuf;
use std::time::Duration;

use log::warn;

use crate::config::{MountConfig, MountConfigBuilder, split_lowers};
use crate::failure::Failure;

/// Splits one `-o` value on commas, except inside double quotes or after a
/// backslash (an SELinux `context="...:c1,c2"` holds commas). Quotes are
/// dropped; backslashes stay for the option's own parser (`\:` in
/// `lowerdir`).
pub fn split_options(v: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut cur = Vec::new();
    let mut quoted = false;
    let mut bytes = v.iter();
    while let Some(&b) = bytes.next() {
        match b {
            b'\\' => {
                cur.push(b);
                if let Some(&n) = bytes.next() {
                    cur.push(n);
                }
            }
            b'"' => quoted = !quoted,
            b',' if !quoted => {
                if !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
            }
            _ => cur.push(b),
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// A path value with backslash escapes removed.
fn unescape(v: &[u8]) -> PathBuf {
    let mut out = Vec::with_capacity(v.len());
    let mut bytes = v.iter();
    while let Some(&b) = bytes.next() {
        if b == b'\\' {
            if let Some(&n) = bytes.next() {
                out.push(n);
            }
        } else {
            out.push(b);
        }
    }
    PathBuf::from(OsString::from_vec(out))
}

/// Options container tools pass that change nothing here: accepted
/// silently. (`static_nlink`, `xino`, `ino32_t`: unionfuse's st_nlink and
/// st_ino are exact already; `private`, `context`: labels and propagation
/// belong to the caller's mount namespace.)
const ACCEPTED: &[&[u8]] = &[
    b"rw",
    b"dev",
    b"suid",
    b"exec",
    b"noexec",
    b"atime",
    b"noatime",
    b"relatime",
    b"nodiratime",
    b"strictatime",
    b"lazytime",
    b"sync",
    b"async",
    b"private",
    b"shared",
    b"slave",
    b"rprivate",
    b"noacl",
    b"acl",
    b"static_nlink",
    b"ino32_t",
    b"default_permissions",
    b"userxattr",
    b"auto_unmount",
    b"allow_root",
    b"nonempty",
    b"_netdev",
    b"nofail",
    b"user",
    b"users",
    b"noauto",
    b"auto",
];

/// Options with a value that change nothing here.
const ACCEPTED_KEYS: &[&[u8]] = &[
    b"context",
    b"fscontext",
    b"defcontext",
    b"rootcontext",
    b"xino",
    b"writeback",
    b"fsname",
    b"subtype",
    b"max_idle_threads",
    b"max_threads",
    b"redirect_dir",
    b"index",
    b"x-systemd.requires",
];

/// A fuse-overlayfs command line, parsed: the mount it asks for, and how.
#[derive(Debug)]
pub struct CompatMount {
    /// The mount, to be validated.
    pub config: MountConfigBuilder,
    /// `-f` or `-d`: serve in the foreground.
    pub foreground: bool,
}

/// Parses the fuse-overlayfs form into a mount request. Unknown options are
/// warned about and ignored; only a missing mountpoint or lowerdir, or a
/// malformed value of an option unionfuse uses, is an error.
pub fn parse(argv: &[OsString]) -> Result<CompatMount, Failure> {
    parse_args(argv).map_err(Failure::Invalid)
}

fn parse_args(argv: &[OsString]) -> Result<CompatMount, String> {
    let mut m = CompatMount {
        config: MountConfig::builder(),
        foreground: false,
    };
    let mut positional: Vec<&OsString> = Vec::new();
    let mut opts: Vec<Vec<u8>> = Vec::new();
    let mut it = argv.iter();
    while let Some(a) = it.next() {
        let b = a.as_bytes();
        match b {
            b"-f" => m.foreground = true,
            // libfuse's -d is debug output in the foreground.
            b"-d" | b"--debug" => {
                set(&mut m.config, |c| c.debug(true));
                m.foreground = true;
            }
            // fuse-overlayfs's own single-thread switch.
            b"-s" => set(&mut m.config, |c| c.threads(1)),
            b"-o" => {
                let v = it.next().ok_or("-o needs a value")?;
                opts.extend(split_options(v.as_bytes()));
            }
            _ if b.starts_with(b"-o") => opts.extend(split_options(&b[2..])),
            b"--" => positional.extend(it.by_ref()),
            _ if b.starts_with(b"-") && b.len() > 1 => {
                warn!("ignoring unknown argument {a:?}");
            }
            _ => positional.push(a),
        }
    }
    let mnt = match positional.as_slice() {
        [mnt] => PathBuf::from(mnt),
        // mount.fuse3 passes the fstab source first.
        [_source, mnt] => PathBuf::from(mnt),
        [] => return Err("no mountpoint given".into()),
        _ => return Err("too many arguments: expected [SOURCE] MOUNTPOINT".into()),
    };
    set(&mut m.config, |c| c.mountpoint(mnt));
    for o in &opts {
        apply(&mut m.config, o)?;
    }
    if !m.config.has_lowers() {
        return Err("no lowerdir= option given".into());
    }
    Ok(m)
}

/// Applies one builder step to a builder held in place.
fn set(b: &mut MountConfigBuilder, step: impl FnOnce(MountConfigBuilder) -> MountConfigBuilder) {
    *b = step(std::mem::take(b));
}

fn number<T: std::str::FromStr>(key: &[u8], v: &[u8]) -> Result<T, String> {
    std::str::from_utf8(v)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| {
            format!(
                "invalid value {:?} for option {}",
                OsStr::from_bytes(v),
                String::from_utf8_lossy(key)
            )
        })
}

fn text(key: &[u8], v: &[u8]) -> Result<String, String> {
    String::from_utf8(v.to_vec())
        .map_err(|_| format!("option {} is not UTF-8", String::from_utf8_lossy(key)))
}

fn apply(c: &mut MountConfigBuilder, o: &[u8]) -> Result<(), String> {
    let (key, val) = match o.iter().position(|b| *b == b'=') {
        Some(i) => (&o[..i], Some(&o[i + 1..])),
        None => (o, None),
    };
    match (key, val) {
        // Colons separate layers; `split_lowers` reads the escapes.
        (b"lowerdir", Some(v)) => {
            for l in split_lowers(OsStr::from_bytes(v)) {
                set(c, |c| c.lower(l));
            }
        }
        (b"upperdir", Some(v)) => set(c, |c| c.upper(unescape(v))),
        (b"workdir", Some(v)) => set(c, |c| c.work(unescape(v))),
        (b"timeout", Some(v)) => {
            let secs: f64 = number(key, v)?;
            let t = Duration::from_secs(secs.max(0.0).ceil() as u64);
            set(c, |c| c.cache_timeout(t));
        }
        (b"threaded", Some(v)) => {
            if number::<u32>(key, v)? == 0 {
                set(c, |c| c.threads(1));
            }
        }
        (b"fsync", Some(v)) => {
            if number::<u32>(key, v)? == 0 {
                set(c, |c| c.volatile(true));
            }
        }
        (b"uidmapping", Some(v)) => {
            let map = text(key, v)?;
            set(c, |c| c.uidmap(map));
        }
        (b"gidmapping", Some(v)) => {
            let map = text(key, v)?;
            set(c, |c| c.gidmap(map));
        }
        (b"squash_to_root", None) => set(c, |c| c.squash_uid(0).squash_gid(0)),
        (b"squash_to_uid", Some(v)) => {
            let id = number(key, v)?;
            set(c, |c| c.squash_uid(id));
        }
        (b"squash_to_gid", Some(v)) => {
            let id = number(key, v)?;
            set(c, |c| c.squash_gid(id));
        }
        (b"xattr_permissions", Some(v)) => match number::<u8>(key, v)? {
            n @ (0..=2) => set(c, |c| c.xattr_permissions(n)),
            _ => return Err("xattr_permissions must be 0, 1 or 2".into()),
        },
        (b"volatile", None) => set(c, |c| c.volatile(true)),
        (b"metacopy", Some(b"on")) => set(c, |c| c.metacopy(true)),
        (b"acl", None) => set(c, |c| c.acl(true)),
        (b"io_uring", None) => set(c, |c| c.io_uring(true)),
        (b"no_lower_passthrough", None) => set(c, |c| c.lower_passthrough(false)),
        (b"metacopy", Some(b"off")) => set(c, |c| c.metacopy(false)),
        (b"ro", None) => set(c, |c| c.read_only(true)),
        (b"nodev", None) => set(c, |c| c.nodev(true)),
        (b"nosuid", None) => set(c, |c| c.nosuid(true)),
        (b"allow_other", None) => set(c, |c| c.allow_other(true)),
        (b"debug", None) => set(c, |c| c.debug(true)),
        _ if val.is_none() && ACCEPTED.contains(&key) => {}
        _ if val.is_some() && ACCEPTED_KEYS.contains(&key) => {}
        _ => warn!(
            "ignoring unsupported option {:?}",
            String::from_utf8_lossy(o)
        ),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(v: &[&str]) -> Vec<OsString> {
        v.iter().map(OsString::from).collect()
    }

    #[test]
    fn splits_options_with_quotes_and_escapes() {
        let got = split_options(br#"lowerdir=/a\:b:/c,context="system_u:object_r:c1,c2",nodev"#);
        let got: Vec<String> = got
            .into_iter()
            .map(|v| String::from_utf8(v).unwrap())
            .collect();
        assert_eq!(
            got,
            [
                r"lowerdir=/a\:b:/c",
                "context=system_u:object_r:c1,c2",
                "nodev"
            ]
        );
    }

    #[test]
    fn parses_the_container_storage_form() {
        let a = parse(&os(&[
            "-o",
            "lowerdir=/l1:/l2,upperdir=/u,workdir=/w",
            "-o",
            "nodev,volatile,uidmapping=0:1000:1:1:100000:65536",
            "/merged",
        ]))
        .unwrap();
        let c = &a.config;
        assert_eq!(c.lowers, [PathBuf::from("/l1"), PathBuf::from("/l2")]);
        assert_eq!(c.upper, Some(PathBuf::from("/u")));
        assert_eq!(c.work, Some(PathBuf::from("/w")));
        assert!(c.nodev && c.volatile && !a.foreground);
        assert_eq!(c.uidmap.as_deref(), Some("0:1000:1:1:100000:65536"));
        assert_eq!(c.mountpoint, Some(PathBuf::from("/merged")));
    }

    #[test]
    fn takes_a_source_argument_and_refuses_a_missing_lower() {
        let a = parse(&os(&["overlay", "/m", "-f", "-olowerdir=/l"])).unwrap();
        assert_eq!(a.config.mountpoint, Some(PathBuf::from("/m")));
        assert!(a.foreground);
        assert!(parse(&os(&["-o", "upperdir=/u", "/m"])).is_err());
        assert!(parse(&os(&["-o", "lowerdir=/l"])).is_err());
    }
}

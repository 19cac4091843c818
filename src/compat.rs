//! The fuse-overlayfs command line, so that tools which run a mount program
//! (containers/storage, buildah, containerd's snapshotter, `mount -t
//! fuse.unionfuse` through mount.fuse3) can run unionfuse instead:
//!
//! ```text
//! unionfuse [-f] [-d] [-o OPTS]... [SOURCE] MOUNTPOINT
//! ```
//!
//! It is translated into the same [`MountArgs`] as `unionfuse mount`.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::PathBuf;

use log::warn;

use crate::cli::{MountArgs, WhiteoutArg};

/// Whether `argv` (without the program name) is the fuse-overlayfs form
/// rather than a `unionfuse` subcommand.
pub fn is_compat(argv: &[OsString]) -> bool {
    use clap::CommandFactory;
    let Some(first) = argv.first() else {
        return false;
    };
    if matches!(
        first.as_bytes(),
        b"help" | b"-h" | b"--help" | b"-V" | b"--version"
    ) {
        return false;
    }
    !crate::cli::Cli::command()
        .get_subcommands()
        .any(|c| first.as_bytes() == c.get_name().as_bytes())
}

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
    b"metacopy",
    b"x-systemd.requires",
];

/// Parses the fuse-overlayfs form into mount arguments. Unknown options are
/// warned about and ignored; only a missing mountpoint or lowerdir, or a
/// malformed value of an option unionfuse uses, is an error.
pub fn parse(argv: &[OsString]) -> Result<MountArgs, String> {
    let mut args = MountArgs {
        lower: Vec::new(),
        upper: None,
        work: None,
        whiteout: WhiteoutArg::Auto,
        foreground: false,
        threads: None,
        cache_timeout: crate::cli::DEFAULT_CACHE_TIMEOUT,
        debug: false,
        ready_fd: None,
        volatile: false,
        read_only: false,
        nodev: false,
        nosuid: false,
        allow_other: false,
        uidmap: None,
        gidmap: None,
        squash_uid: None,
        squash_gid: None,
        xattr_permissions: None,
        mountpoint: PathBuf::new(),
    };
    let mut positional: Vec<&OsString> = Vec::new();
    let mut opts: Vec<Vec<u8>> = Vec::new();
    let mut it = argv.iter();
    while let Some(a) = it.next() {
        let b = a.as_bytes();
        match b {
            b"-f" => args.foreground = true,
            // libfuse's -d is debug output in the foreground.
            b"-d" | b"--debug" => {
                args.debug = true;
                args.foreground = true;
            }
            // fuse-overlayfs's own single-thread switch.
            b"-s" => args.threads = Some(1),
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
    match positional.as_slice() {
        [mnt] => args.mountpoint = PathBuf::from(mnt),
        // mount.fuse3 passes the fstab source first.
        [_source, mnt] => args.mountpoint = PathBuf::from(mnt),
        [] => return Err("no mountpoint given".into()),
        _ => return Err("too many arguments: expected [SOURCE] MOUNTPOINT".into()),
    }
    for o in &opts {
        apply(&mut args, o)?;
    }
    if args.lower.is_empty() {
        return Err("no lowerdir= option given".into());
    }
    Ok(args)
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

fn apply(args: &mut MountArgs, o: &[u8]) -> Result<(), String> {
    let (key, val) = match o.iter().position(|b| *b == b'=') {
        Some(i) => (&o[..i], Some(&o[i + 1..])),
        None => (o, None),
    };
    match (key, val) {
        // Colons separate layers; `split_lowers` reads the escapes.
        (b"lowerdir", Some(v)) => args.lower.push(OsString::from_vec(v.to_vec())),
        (b"upperdir", Some(v)) => args.upper = Some(unescape(v)),
        (b"workdir", Some(v)) => args.work = Some(unescape(v)),
        (b"timeout", Some(v)) => {
            let secs: f64 = number(key, v)?;
            args.cache_timeout = secs.max(0.0).ceil() as u64;
        }
        (b"threaded", Some(v)) => {
            if number::<u32>(key, v)? == 0 {
                args.threads = Some(1);
            }
        }
        (b"fsync", Some(v)) => {
            if number::<u32>(key, v)? == 0 {
                args.volatile = true;
            }
        }
        (b"uidmapping", Some(v)) => args.uidmap = Some(text(key, v)?),
        (b"gidmapping", Some(v)) => args.gidmap = Some(text(key, v)?),
        (b"squash_to_root", None) => {
            args.squash_uid = Some(0);
            args.squash_gid = Some(0);
        }
        (b"squash_to_uid", Some(v)) => args.squash_uid = Some(number(key, v)?),
        (b"squash_to_gid", Some(v)) => args.squash_gid = Some(number(key, v)?),
        (b"xattr_permissions", Some(v)) => match number::<u8>(key, v)? {
            0 => args.xattr_permissions = None,
            n @ (1 | 2) => args.xattr_permissions = Some(n),
            _ => return Err("xattr_permissions must be 0, 1 or 2".into()),
        },
        (b"volatile", None) => args.volatile = true,
        (b"ro", None) => args.read_only = true,
        (b"nodev", None) => args.nodev = true,
        (b"nosuid", None) => args.nosuid = true,
        (b"allow_other", None) => args.allow_other = true,
        (b"debug", None) => args.debug = true,
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
        assert_eq!(a.lower, [OsString::from("/l1:/l2")]);
        assert_eq!(a.upper, Some(PathBuf::from("/u")));
        assert_eq!(a.work, Some(PathBuf::from("/w")));
        assert!(a.nodev && a.volatile && !a.foreground);
        assert_eq!(a.uidmap.as_deref(), Some("0:1000:1:1:100000:65536"));
        assert_eq!(a.mountpoint, PathBuf::from("/merged"));
    }

    #[test]
    fn takes_a_source_argument_and_refuses_a_missing_lower() {
        let a = parse(&os(&["overlay", "/m", "-f", "-olowerdir=/l"])).unwrap();
        assert_eq!(a.mountpoint, PathBuf::from("/m"));
        assert!(a.foreground);
        assert!(parse(&os(&["-o", "upperdir=/u", "/m"])).is_err());
        assert!(parse(&os(&["-o", "lowerdir=/l"])).is_err());
    }

    #[test]
    fn recognises_subcommands() {
        assert!(!is_compat(&os(&["mount", "--lower", "/l", "/m"])));
        assert!(!is_compat(&os(&["--help"])));
        assert!(!is_compat(&os(&["diff", "/m"])));
        assert!(is_compat(&os(&["-o", "lowerdir=/l", "/m"])));
        assert!(is_compat(&os(&["/src", "/m"])));
    }
}

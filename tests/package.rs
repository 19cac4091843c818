//! What a distribution ships beside the binary: completion scripts and
//! manual pages generated from the command line's own definitions, and the
//! Debian package of scripts/package, installed with dpkg, mounted through
//! mount(8) and fstab, and removed again.
#![allow(unsafe_code)]

mod common;

use std::ffi::OsStr;
use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::*;

fn uf(args: &[&str]) -> Output {
    let args: Vec<&OsStr> = args.iter().map(OsStr::new).collect();
    run(&args)
}

fn stdout_of(out: &Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).expect("utf-8 output")
}

/// The verbs `unionfuse --help` lists, without clap's `help`.
fn verbs() -> Vec<String> {
    let help = stdout_of(&uf(&["--help"]), "unionfuse --help");
    let verbs: Vec<String> = help
        .lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|v| *v != "help")
        .map(str::to_owned)
        .collect();
    assert!(
        verbs.iter().any(|v| v == "mount") && verbs.iter().any(|v| v == "completions"),
        "no verbs found in --help: {help}"
    );
    verbs
}

/// The long options `unionfuse VERB --help` lists.
fn long_options(verb: &str) -> Vec<String> {
    let help = stdout_of(&uf(&[verb, "--help"]), &format!("{verb} --help"));
    let mut opts: Vec<String> = help
        .lines()
        .filter(|l| l.trim_start().starts_with('-'))
        .flat_map(|l| l.split([' ', ',', '=']))
        .filter(|w| w.starts_with("--") && w.len() > 2)
        .map(str::to_owned)
        .collect();
    opts.dedup();
    opts
}

/// What bash offers after `unionfuse WORDS...` (the last word being the one
/// completed), with `script` loaded as bash-completion would load it.
fn bash_complete(script: &Path, words: &[&str]) -> Vec<String> {
    let out = Command::new("bash")
        .arg("--norc")
        .arg("-c")
        .arg(
            r#"source "$1" || exit 1
            shift
            COMP_WORDS=(unionfuse "$@")
            COMP_CWORD=$#
            COMP_LINE="${COMP_WORDS[*]}"
            COMP_POINT=${#COMP_LINE}
            prev=${COMP_WORDS[COMP_CWORD-1]}
            # Its status is compgen's: 1 when nothing matches.
            _unionfuse unionfuse "${COMP_WORDS[COMP_CWORD]}" "$prev" || true
            printf '%s\n' "${COMPREPLY[@]}""#,
        )
        .arg("bash")
        .arg(script)
        .args(words)
        .output()
        .expect("run bash");
    stdout_of(&out, &format!("bash completion of {words:?}"))
        .lines()
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Checks a bash completion script by running it: every verb completes from
/// its full name, and the options of `mount` complete.
fn check_bash_script(script: &Path) {
    for verb in verbs() {
        let offered = bash_complete(script, &[&verb]);
        assert!(
            offered.contains(&verb),
            "bash completes `unionfuse {verb}` to {offered:?}"
        );
    }
    let offered = bash_complete(script, &["mo"]);
    assert_eq!(offered, ["mount"], "bash completes `unionfuse mo`");
    let offered = bash_complete(script, &["mount", "--up"]);
    assert_eq!(
        offered,
        ["--upper"],
        "bash completes `unionfuse mount --up`"
    );
    let offered = bash_complete(script, &["man"]);
    assert!(
        offered.is_empty(),
        "the hidden manpages verb is offered: {offered:?}"
    );
}

#[test]
fn completion_scripts_offer_every_verb() {
    let s = Scratch::new();
    for shell in ["bash", "zsh", "fish"] {
        let script = stdout_of(
            &uf(&["completions", shell]),
            &format!("completions {shell}"),
        );
        assert!(!script.trim().is_empty(), "empty {shell} script");
        for verb in verbs() {
            assert!(
                script.contains(&verb),
                "the {shell} script does not mention {verb}"
            );
        }
        for opt in long_options("mount") {
            let name = opt.trim_start_matches('-');
            assert!(
                script.contains(name),
                "the {shell} script does not offer mount {opt}"
            );
        }
        if shell == "bash" {
            let path = s.path("unionfuse.bash");
            fs::write(&path, &script).expect("write script");
            check_bash_script(&path);
        }
    }
}

#[test]
fn completions_refuse_an_unknown_shell() {
    for args in [
        &["completions", "tcsh"][..],
        &["completions"],
        &["completions", ""],
    ] {
        let out = uf(args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(out.stdout.is_empty(), "{args:?} printed a script");
        assert_eq!(err.trim().lines().count(), 1, "{args:?}: {err}");
        assert!(err.starts_with("unionfuse: "), "{args:?}: {err}");
    }
    let err = String::from_utf8_lossy(&uf(&["completions", "tcsh"]).stderr).into_owned();
    assert!(
        err.contains("tcsh"),
        "the error does not name the shell: {err}"
    );
}

/// roff text with the escapes of a dash and of font changes undone, to
/// compare with --help.
fn plain_roff(page: &str) -> String {
    page.replace("\\-", "-")
        .replace("\\fB", "")
        .replace("\\fI", "")
        .replace("\\fR", "")
}

#[test]
fn manpages_write_one_page_per_verb() {
    let s = Scratch::new();
    let dir = s.mkdir("man");
    let out = uf(&["manpages", dir.to_str().expect("utf-8")]);
    stdout_of(&out, "manpages");
    let mut want: Vec<String> = verbs().iter().map(|v| format!("unionfuse-{v}.1")).collect();
    want.push("unionfuse.1".into());
    want.sort();
    assert_eq!(ls(&dir), want);

    let main = plain_roff(&fs::read_to_string(dir.join("unionfuse.1")).expect("read"));
    assert!(main.contains("\n.TH unionfuse 1 "), "{main}");
    for verb in verbs() {
        assert!(
            main.contains(&format!("unionfuse-{verb}(1)")),
            "unionfuse.1 does not refer to unionfuse-{verb}(1)"
        );
        let page =
            plain_roff(&fs::read_to_string(dir.join(format!("unionfuse-{verb}.1"))).expect("read"));
        assert!(
            page.contains(&format!("\n.TH unionfuse-{verb} 1 ")),
            "{verb}: {page}"
        );
        assert!(
            page.contains(&format!("unionfuse {verb}")),
            "unionfuse-{verb}.1 has no synopsis of `unionfuse {verb}`"
        );
        for opt in long_options(&verb) {
            assert!(page.contains(&opt), "unionfuse-{verb}.1 lacks {opt}");
        }
    }
}

#[test]
fn manpages_refuse_a_bad_directory() {
    let s = Scratch::new();
    let file = s.path("file");
    fs::write(&file, "keep\n").expect("write");
    let missing = s.path("missing");
    for dir in [&missing, &file] {
        let out = uf(&["manpages", dir.to_str().expect("utf-8")]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success(),
            "manpages {} succeeded",
            dir.display()
        );
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        assert!(err.starts_with("unionfuse: "), "{err}");
    }
    assert!(!missing.exists(), "manpages created the missing directory");
    assert_eq!(fs::read_to_string(&file).expect("read"), "keep\n");

    // A page name planted as a symlink is not written through.
    let dir = s.mkdir("man");
    let target = s.path("target");
    fs::write(&target, "keep\n").expect("write");
    symlink(&target, dir.join("unionfuse.1")).expect("symlink");
    let out = uf(&["manpages", dir.to_str().expect("utf-8")]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "manpages wrote through a symlink");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert_eq!(fs::read_to_string(&target).expect("read"), "keep\n");
}

/// Runs a command to completion within `secs`, returning its output.
fn run_for(cmd: &mut Command, secs: u64) -> Output {
    let what = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    let deadline = Instant::now() + Duration::from_secs(secs);
    // Drained on threads: scripts/package's output could fill a pipe.
    let mut so = child.stdout.take().expect("stdout");
    let mut se = child.stderr.take().expect("stderr");
    let t_out = std::thread::spawn(move || {
        let mut v = Vec::new();
        std::io::Read::read_to_end(&mut so, &mut v).ok();
        v
    });
    let t_err = std::thread::spawn(move || {
        let mut v = Vec::new();
        std::io::Read::read_to_end(&mut se, &mut v).ok();
        v
    });
    let status = loop {
        if let Some(st) = child.try_wait().expect("wait") {
            break st;
        }
        if Instant::now() > deadline {
            child.kill().ok();
            child.wait().ok();
            panic!("{what} did not finish in {secs} s");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    Output {
        status,
        stdout: t_out.join().expect("stdout thread"),
        stderr: t_err.join().expect("stderr thread"),
    }
}

fn ok(cmd: &mut Command, secs: u64) -> String {
    let what = format!("{cmd:?}");
    let out = run_for(cmd, secs);
    assert!(
        out.status.success(),
        "{what} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// dpkg's status of the unionfuse package, `None` when dpkg knows nothing
/// of it.
fn package_status() -> Option<String> {
    let out = Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", "unionfuse"])
        .output()
        .expect("run dpkg-query");
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
        .filter(|s| !s.ends_with(" not-installed"))
}

/// Holds a lock that other runs of this test on the machine also take:
/// /usr/bin/unionfuse is the machine's, not one test run's.
struct MachineLock {
    _file: fs::File,
}

impl MachineLock {
    fn take() -> MachineLock {
        let dir = if Path::new("/run/lock").is_dir() {
            PathBuf::from("/run/lock")
        } else {
            std::env::temp_dir()
        };
        let f = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("unionfuse-package-test.lock"))
            .expect("open lock file");
        rustix::fs::flock(&f, rustix::fs::FlockOperation::LockExclusive).expect("flock");
        MachineLock { _file: f }
    }
}

/// The installed package: removed again when dropped, after whatever the
/// test left mounted, so that a failing test leaves no /usr/bin/unionfuse
/// behind.
struct Installed {
    mounts: Vec<PathBuf>,
    _lock: MachineLock,
}

impl Drop for Installed {
    fn drop(&mut self) {
        for m in &self.mounts {
            if is_mountpoint(m) {
                let _ = Command::new("umount").arg("-l").arg(m).status();
            }
        }
        if package_status().is_some() {
            let _ = Command::new("dpkg")
                .args(["-r", "unionfuse"])
                .stdout(Stdio::null())
                .status();
        }
    }
}

/// The pid of the daemon serving `mnt`, by the mount table's record.
fn daemon_of(mnt: &Path) -> libc::pid_t {
    let out = stdout_of(&uf(&["list", "--json"]), "list --json");
    let list: serde_json::Value = serde_json::from_str(&out).expect("list --json");
    let want = mnt.canonicalize().expect("canonicalize");
    list.as_array()
        .expect("array")
        .iter()
        .find(|e| e["path"].as_str().map(Path::new) == Some(want.as_path()))
        .and_then(|e| e["pid"].as_i64())
        .unwrap_or_else(|| panic!("{} is not in `unionfuse list`: {out}", mnt.display()))
        as libc::pid_t
}

/// Unmounts with umount(8), as a user of mount(8) would, and waits for the
/// daemon to exit.
fn umount_and_wait(mnt: &Path, pid: libc::pid_t) {
    ok(Command::new("umount").arg(mnt), 30);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !process_gone(pid) {
        assert!(
            Instant::now() < deadline,
            "the daemon of {} still runs",
            mnt.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!is_mountpoint(mnt));
}

/// Checks the mount at `mnt` is served by the installed binary, reads
/// `expect` from the lower, and writes `new` to the upper through it.
fn use_mount(mnt: &Path, upper: &Path, expect: &[(&str, &str)], new: &str) -> libc::pid_t {
    let info = fs::read_to_string("/proc/self/mounts").expect("mounts");
    let canon = mnt.canonicalize().expect("canonicalize");
    assert!(
        info.lines().any(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            f.len() > 2 && Path::new(f[1]) == canon && f[2] == "fuse.unionfuse"
        }),
        "{} is not a fuse.unionfuse mount: {info}",
        mnt.display()
    );
    let pid = daemon_of(mnt);
    assert_eq!(
        fs::read_link(format!("/proc/{pid}/exe")).expect("daemon exe"),
        Path::new("/usr/bin/unionfuse"),
        "the mount is not served by the installed binary"
    );
    for (name, data) in expect {
        assert_eq!(
            fs::read_to_string(mnt.join(name)).expect("read through the mount"),
            *data,
            "{name}"
        );
    }
    fs::write(mnt.join(new), "written\n").expect("write through the mount");
    assert_eq!(
        fs::read_to_string(upper.join(new)).expect("read the upper"),
        "written\n"
    );
    pid
}

#[test]
fn debian_package_installs_mounts_and_removes() {
    if skip_as_non_root("installing a Debian package needs root") {
        return;
    }
    let s = Scratch::new();
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    // Built from the binary under test before anything is installed, so
    // that the window in which /usr/bin/unionfuse exists stays short.
    let out_dir = s.path("deb");
    let stdout = ok(
        Command::new(repo.join("scripts/package"))
            .arg("--binary")
            .arg(bin())
            .arg("--fast")
            .arg("--output")
            .arg(&out_dir),
        900,
    );
    let deb = PathBuf::from(
        stdout
            .lines()
            .last()
            .expect("scripts/package printed nothing"),
    );
    assert!(
        deb.starts_with(&out_dir) && deb.extension() == Some(OsStr::new("deb")),
        "{}",
        deb.display()
    );
    let listing = ok(Command::new("dpkg-deb").arg("-c").arg(&deb), 60);
    for want in [
        "./usr/bin/unionfuse",
        "./usr/share/man/man1/unionfuse.1.gz",
        "./usr/share/man/man1/unionfuse-mount.1.gz",
        "./usr/share/doc/unionfuse/copyright",
    ] {
        assert!(
            listing.lines().any(|l| l.ends_with(&format!(" {want}"))),
            "the package lacks {want}: {listing}"
        );
    }
    let depends = ok(
        Command::new("dpkg-deb")
            .args(["-f"])
            .arg(&deb)
            .arg("Depends"),
        60,
    );
    assert!(depends.contains("fuse3"), "Depends: {depends}");

    let lock = MachineLock::take();
    assert!(
        package_status().is_none() && !Path::new("/usr/bin/unionfuse").exists(),
        "unionfuse is installed on this machine already; remove it (dpkg -r unionfuse) \
         so that this test may install and remove its own"
    );
    let mut installed = Installed {
        mounts: Vec::new(),
        _lock: lock,
    };
    ok(
        Command::new("dpkg")
            .arg("-i")
            .arg(&deb)
            .env("DEBIAN_FRONTEND", "noninteractive"),
        300,
    );
    let version = ok(Command::new("/usr/bin/unionfuse").arg("--version"), 30);
    assert!(version.starts_with("unionfuse "), "{version}");

    // The manual, as man(1) finds it.
    let page = ok(
        Command::new("man")
            .args(["-P", "cat", "unionfuse"])
            .env("MANPAGER", "cat")
            .env("MANWIDTH", "200")
            .env("LC_ALL", "C"),
        60,
    );
    assert!(page.contains("unionfuse-mount(1)"), "man unionfuse: {page}");
    assert!(page.contains("fuse.unionfuse"), "man unionfuse: {page}");
    let mount_page = ok(
        Command::new("man")
            .args(["-P", "cat", "unionfuse-mount"])
            .env("MANPAGER", "cat")
            .env("MANWIDTH", "200")
            .env("LC_ALL", "C"),
        60,
    );
    for opt in long_options("mount") {
        assert!(mount_page.contains(&opt), "man unionfuse-mount lacks {opt}");
    }

    let completions = [
        "/usr/share/bash-completion/completions/unionfuse",
        "/usr/share/zsh/vendor-completions/_unionfuse",
        "/usr/share/fish/vendor_completions.d/unionfuse.fish",
    ];
    for c in completions {
        let text = fs::read_to_string(c).unwrap_or_else(|e| panic!("{c}: {e}"));
        assert!(text.contains("checkpoint"), "{c} does not offer the verbs");
    }
    check_bash_script(Path::new(completions[0]));
    for doc in ["README.md", "LICENSE"] {
        let installed_doc = Path::new("/usr/share/doc/unionfuse").join(doc);
        assert_eq!(
            fs::read(&installed_doc).expect("installed doc"),
            fs::read(repo.join(doc)).expect("repository doc"),
            "{}",
            installed_doc.display()
        );
    }

    // mount(8) hands `-t fuse.unionfuse` to mount.fuse3, which runs the
    // installed unionfuse with the fuse-overlayfs command line.
    let lower = s.mkdir("lower");
    write(&lower, "etc/hostname", "image\n");
    let upper = s.mkdir("upper");
    let work = s.mkdir("work");
    let opts = format!(
        "lowerdir={},upperdir={},workdir={}",
        lower.display(),
        upper.display(),
        work.display()
    );
    let mnt = s.mkdir("mnt");
    installed.mounts.push(mnt.clone());
    ok(
        Command::new("mount")
            .args(["-t", "fuse.unionfuse", "-o", &opts, "unionfuse"])
            .arg(&mnt),
        60,
    );
    let pid = use_mount(&mnt, &upper, &[("etc/hostname", "image\n")], "first");
    umount_and_wait(&mnt, pid);

    // The same through an fstab line: what the boot, or `mount MNT`, does.
    let fstab = s.path("fstab");
    fs::write(
        &fstab,
        format!(
            "# layers of the test\nunionfuse {} fuse.unionfuse {opts},noauto 0 0\n",
            mnt.display()
        ),
    )
    .expect("write fstab");
    ok(Command::new("mount").arg("-T").arg(&fstab).arg(&mnt), 60);
    let pid = use_mount(
        &mnt,
        &upper,
        &[("etc/hostname", "image\n"), ("first", "written\n")],
        "second",
    );
    umount_and_wait(&mnt, pid);

    ok(
        Command::new("dpkg")
            .args(["-r", "unionfuse"])
            .env("DEBIAN_FRONTEND", "noninteractive"),
        300,
    );
    assert_eq!(package_status(), None, "dpkg -r left the package installed");
    for line in listing.lines() {
        // dpkg-deb -c: MODE OWNER SIZE DATE TIME ./PATH
        let Some(p) = line.split_whitespace().nth(5) else {
            continue;
        };
        let p = Path::new(p.trim_start_matches('.'));
        if !line.starts_with('d') {
            assert!(
                fs::symlink_metadata(p).is_err(),
                "{} is left after dpkg -r",
                p.display()
            );
        }
    }
    assert!(!Path::new("/usr/bin/unionfuse").exists());
    drop(installed);
}

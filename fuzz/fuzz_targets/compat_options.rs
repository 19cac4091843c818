//! The fuse-overlayfs command line (`-o lowerdir=...,upperdir=...`), as
//! container tools pass it to a mount program: never a panic, every
//! rejection one line.
#![no_main]

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // NUL separates arguments, as in /proc/PID/cmdline.
    let argv: Vec<OsString> = data
        .split(|b| *b == 0)
        .map(|a| OsString::from_vec(a.to_vec()))
        .collect();
    let _ = unionfuse::fuzzing::is_compat(&argv);
    if let Err(e) = unionfuse::fuzzing::parse_compat(&argv) {
        let msg = e.to_string();
        assert!(
            !msg.trim().is_empty() && !msg.contains('\n'),
            "not one line: {msg:?}"
        );
    }
});

//! Layer tars (plain, gzip or zstd) unpacked into an empty directory:
//! never a panic, every rejection one line, nothing written beside the
//! target directory.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use unionfuse::WhiteoutFormat;

/// A private directory per fuzzing process; each input unpacks into
/// `base/out`, which must be all `base` holds afterwards.
fn base() -> &'static PathBuf {
    static BASE: OnceLock<PathBuf> = OnceLock::new();
    BASE.get_or_init(|| {
        let p = std::env::temp_dir().join(format!("unionfuse-fuzz-unpack.{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("fuzz scratch directory");
        p
    })
}

fuzz_target!(|data: &[u8]| {
    let base = base();
    let out = base.join("out");
    std::fs::create_dir(&out).expect("target directory");
    if let Err(e) = unionfuse::unpack(data, &out, WhiteoutFormat::Oci) {
        let msg = e.to_string();
        assert!(
            !msg.trim().is_empty() && !msg.contains('\n'),
            "not one line: {msg:?}"
        );
    }
    let beside: Vec<_> = std::fs::read_dir(base)
        .expect("scratch")
        .flatten()
        .map(|e| e.file_name())
        .filter(|n| n != "out")
        .collect();
    assert!(beside.is_empty(), "written outside the target: {beside:?}");
    std::fs::remove_dir_all(&out).expect("clean up the target");
});

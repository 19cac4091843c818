//! Ownership-override xattr values (`user.containers.override_stat`), read
//! from files anyone may have written: never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = unionfuse::fuzzing::Override::parse(data);
});

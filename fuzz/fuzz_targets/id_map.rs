//! `uidmapping=` / `gidmapping=` values: never a panic, every rejection one
//! line, and an accepted map is a bijection on what it maps.
#![no_main]

use libfuzzer_sys::fuzz_target;
use unionfuse::fuzzing::Map;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    match Map::parse(s) {
        Err(msg) => assert!(
            !msg.trim().is_empty() && !msg.contains('\n'),
            "not one line: {msg:?}"
        ),
        Ok(m) => {
            // Ranges never overlap, so a stored id shows as itself again.
            for id in [0u32, 1, 999, 1000, 65534, 65535, 100_000, u32::MAX] {
                if let Some(host) = m.store(id) {
                    assert_eq!(m.show(host), id, "{s:?}: {id} -> {host}");
                }
            }
        }
    }
});

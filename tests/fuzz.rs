//! Bounded randomized tests of everything that parses untrusted input: the
//! fuse-overlayfs `-o` command line, id maps, ownership-override xattrs and
//! layer tars. No input may panic; every rejection is one line; an
//! unpacked layer never writes outside its directory. Seeded and
//! reproducible: `UNIONFUSE_FUZZ_SEED` (default 1), `UNIONFUSE_FUZZ_ITERS`
//! (default 20000 for the parsers, a fiftieth of that for tars).
// The fixtures in common/ need libc; every unsafe block there says why it
// is sound.
#![allow(unsafe_code)]

mod common;

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::panic::{AssertUnwindSafe, catch_unwind};

use common::Scratch;
use unionfuse::WhiteoutFormat;
use unionfuse::fuzzing::{Map, Override};

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    fn pick<'a>(&mut self, from: &[&'a [u8]]) -> &'a [u8] {
        from[self.below(from.len())]
    }
    /// Pieces of the grammar glued together, with the odd random byte.
    fn text(&mut self, pieces: &[&[u8]], max: usize) -> Vec<u8> {
        let mut v = Vec::new();
        for _ in 0..self.below(max) + 1 {
            if self.below(8) == 0 {
                v.push(self.next() as u8);
            } else {
                v.extend_from_slice(self.pick(pieces));
            }
        }
        v
    }
}

fn setup() -> (Rng, usize) {
    let env = |k: &str, d: u64| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    let seed = env("UNIONFUSE_FUZZ_SEED", 1);
    (
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1),
        env("UNIONFUSE_FUZZ_ITERS", 20_000) as usize,
    )
}

fn one_line(what: &str, input: &dyn std::fmt::Debug, msg: &str) {
    assert!(
        !msg.trim().is_empty() && !msg.trim().contains('\n'),
        "{what}: rejection of {input:?} is not one line: {msg:?}"
    );
}

const OPT_PIECES: [&[u8]; 24] = [
    b"lowerdir=",
    b"upperdir=",
    b"workdir=",
    b"/a",
    b"/b:/c",
    b"\\:",
    b"\\",
    b",",
    b":",
    b"=",
    b"uidmapping=0:1000:1",
    b"gidmapping=",
    b"squash_to_uid=",
    b"squash_to_root",
    b"xattr_permissions=2",
    b"context=\"a,b\"",
    b"\"",
    b"volatile",
    b"ro",
    b"nodev",
    b"-1",
    b"4294967296",
    b"fsync=0",
    b"",
];

#[test]
fn the_fuse_overlayfs_command_line_never_panics() {
    let (mut rng, iters) = setup();
    let (mut ok, mut refused) = (0, 0);
    for _ in 0..iters {
        let mut argv: Vec<OsString> = Vec::new();
        if rng.below(2) == 0 {
            // Mostly well formed, as container tools write it, with the odd
            // piece of noise.
            let mut o = b"lowerdir=/l1:/l2".to_vec();
            for _ in 0..rng.below(4) {
                o.push(b',');
                o.extend_from_slice(rng.pick(&OPT_PIECES[10..]));
            }
            if rng.below(3) == 0 {
                o.extend_from_slice(&rng.text(&OPT_PIECES, 2));
            }
            argv.push("-o".into());
            argv.push(OsString::from_vec(o));
            argv.push("/mnt".into());
        } else {
            for _ in 0..rng.below(5) + 1 {
                match rng.below(4) {
                    0 => argv.push("-o".into()),
                    1 => argv.push(OsString::from_vec(rng.text(&OPT_PIECES, 8))),
                    2 => argv.push(
                        String::from_utf8_lossy(&[
                            b'-',
                            rng.pick(&[b"f", b"d", b"o", b"-", b"x"])[0],
                        ])
                        .into_owned()
                        .into(),
                    ),
                    _ => argv.push(OsString::from_vec(rng.text(&[b"/mnt", b"/x/y", b"src"], 2))),
                }
            }
        }
        let res = catch_unwind(AssertUnwindSafe(|| {
            let _ = unionfuse::fuzzing::is_compat(&argv);
            unionfuse::fuzzing::parse_compat(&argv).map_err(|e| e.to_string())
        }));
        match res {
            Err(_) => panic!("the -o parser panicked on {argv:?}"),
            Ok(Err(msg)) => {
                one_line("-o parser", &argv, &msg);
                refused += 1;
            }
            Ok(Ok(_)) => ok += 1,
        }
    }
    eprintln!("-o command lines: {ok} accepted, {refused} refused");
    assert!(ok > 0 && refused > 0, "the inputs reach only one outcome");
}

#[test]
fn id_maps_and_overrides_never_panic() {
    let (mut rng, iters) = setup();
    let pieces: [&[u8]; 10] = [
        b"0",
        b"1000",
        b":",
        b"65536",
        b"4294967295",
        b"4294967296",
        b"-5",
        b" ",
        b"x",
        b"",
    ];
    let (mut ok, mut refused) = (0, 0);
    for _ in 0..iters {
        let s = if rng.below(2) == 0 {
            // C:H:N triples, sometimes broken.
            let n = |r: &mut Rng| String::from_utf8_lossy(r.pick(&pieces[..6])).into_owned();
            let mut v = Vec::new();
            for _ in 0..rng.below(3) + 1 {
                v.push(format!("{}:{}:{}", n(&mut rng), n(&mut rng), n(&mut rng)));
            }
            let mut s = v.join(":");
            if rng.below(4) == 0 {
                s.push_str(&String::from_utf8_lossy(&rng.text(&pieces, 2)));
            }
            s
        } else {
            String::from_utf8_lossy(&rng.text(&pieces, 12)).into_owned()
        };
        match catch_unwind(|| Map::parse(&s)) {
            Err(_) => panic!("the id map parser panicked on {s:?}"),
            Ok(Err(msg)) => {
                one_line("id map", &s, &msg);
                refused += 1;
            }
            Ok(Ok(_)) => ok += 1,
        }
        let o = rng.text(
            &[
                b"0", b"1000", b":", b"0755", b"file", b"dir", b"chr-1-3", b"x",
            ],
            8,
        );
        if catch_unwind(|| Override::parse(&o)).is_err() {
            panic!("the override parser panicked on {o:?}");
        }
    }
    eprintln!("id maps: {ok} accepted, {refused} refused");
    assert!(ok > 0 && refused > 0, "the inputs reach only one outcome");
}

/// A small valid layer, then bytes flipped, cut or inserted.
fn mutated_layer(rng: &mut Rng) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let names: [&str; 8] = [
        "etc/",
        "etc/hostname",
        "etc/.wh.gone",
        "var/.wh..wh..opq",
        "../escape",
        "/abs",
        "link",
        "a/b/c/d",
    ];
    for _ in 0..rng.below(6) + 1 {
        let name = names[rng.below(names.len())];
        let mut h = tar::Header::new_gnu();
        match rng.below(4) {
            0 => h.set_entry_type(tar::EntryType::Directory),
            1 => h.set_entry_type(tar::EntryType::Symlink),
            2 => h.set_entry_type(tar::EntryType::Link),
            _ => h.set_entry_type(tar::EntryType::Regular),
        }
        h.set_mode(0o644);
        let data = vec![b'x'; rng.below(600)];
        h.set_size(if h.entry_type().is_file() {
            data.len() as u64
        } else {
            0
        });
        let _ = h.set_link_name(names[rng.below(names.len())]);
        // set_path refuses `..`; write the name bytes directly.
        let field = &mut h.as_old_mut().name;
        field.fill(0);
        field[..name.len()].copy_from_slice(name.as_bytes());
        h.set_cksum();
        let body: &[u8] = if h.entry_type().is_file() { &data } else { &[] };
        let _ = b.append(&h, body);
    }
    let mut v = b.into_inner().unwrap_or_default();
    for _ in 0..rng.below(4) {
        if v.is_empty() {
            break;
        }
        let i = rng.below(v.len());
        match rng.below(3) {
            0 => v[i] = rng.next() as u8,
            1 => v.truncate(i),
            _ => v.insert(i, rng.next() as u8),
        }
    }
    v
}

#[test]
fn unpacking_random_layers_never_panics_nor_escapes() {
    let (mut rng, iters) = setup();
    let s = Scratch::new();
    let canary = s.mkdir("canary");
    std::fs::write(canary.join("keep"), "canary\n").expect("canary");
    let (mut ok, mut refused) = (0, 0);
    for i in 0..(iters / 50).max(20) {
        let layer = mutated_layer(&mut rng);
        let dir = s.mkdir(&format!("out{i}"));
        let res = catch_unwind(AssertUnwindSafe(|| {
            unionfuse::unpack(&layer[..], &dir, WhiteoutFormat::Oci).map_err(|e| e.to_string())
        }));
        match res {
            Err(_) => panic!("unpack panicked on layer #{i} ({} bytes)", layer.len()),
            Ok(Err(msg)) => {
                one_line("unpack", &i, &msg);
                refused += 1;
            }
            Ok(Ok(())) => ok += 1,
        }
        let mut outside: Vec<_> = std::fs::read_dir(s.dir.path())
            .expect("scratch")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| !n.starts_with("out") && n != "canary")
            .collect();
        outside.sort();
        assert!(
            outside.is_empty(),
            "layer #{i} wrote outside its directory: {outside:?}"
        );
        assert_eq!(
            std::fs::read_dir(&canary).expect("canary").count(),
            1,
            "layer #{i} changed the canary"
        );
    }
    eprintln!("layers: {ok} unpacked, {refused} refused");
    assert!(ok > 0 && refused > 0, "the inputs reach only one outcome");
}

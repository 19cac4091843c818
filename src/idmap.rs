//! Owners as a user namespace sees them, in fuse-overlayfs's syntax: the
//! files on disk belong to host ids, the mount shows container ids.
//!
//! - `uidmapping=C:H:N[:C:H:N...]` (and `gidmapping=`): container ids
//!   `C..C+N` are host ids `H..H+N`. A host id outside every range shows as
//!   the overflow id (65534), as the kernel shows unmapped ids.
//! - `squash_to_root`, `squash_to_uid=N`, `squash_to_gid=N`: every object
//!   shows that owner, whatever the disk says.

/// The id the kernel shows for an unmapped one (`/proc/sys/fs/overflowuid`).
pub const OVERFLOW_ID: u32 = 65534;

/// One `container:host:length` range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Range {
    container: u32,
    host: u32,
    len: u32,
}

/// The mapping of one kind of id (uids or gids).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Map {
    ranges: Vec<Range>,
    squash: Option<u32>,
}

impl Map {
    /// Parses `C:H:N[:C:H:N...]`.
    pub fn parse(v: &str) -> Result<Map, String> {
        let nums = v
            .split(':')
            .map(|p| p.trim().parse::<u32>())
            .collect::<Result<Vec<u32>, _>>()
            .map_err(|_| {
                format!("invalid id mapping {v:?}: expected container:host:length triples")
            })?;
        if nums.is_empty() || nums.len() % 3 != 0 {
            return Err(format!(
                "invalid id mapping {v:?}: expected container:host:length triples"
            ));
        }
        let ranges: Vec<Range> = nums
            .chunks(3)
            .map(|c| Range {
                container: c[0],
                host: c[1],
                len: c[2],
            })
            .collect();
        // As the kernel refuses such a uid_map: an id mapped twice, either
        // way, would show one owner and store another.
        for (i, r) in ranges.iter().enumerate() {
            let end = |start: u32| u64::from(start) + u64::from(r.len);
            if r.len == 0 || end(r.container) > 1 << 32 || end(r.host) > 1 << 32 {
                return Err(format!(
                    "invalid id mapping {v:?}: range {}:{}:{} is empty or runs past 4294967295",
                    r.container, r.host, r.len
                ));
            }
            for o in &ranges[..i] {
                let overlap = |a: u32, b: u32| {
                    u64::from(a) < u64::from(b) + u64::from(o.len)
                        && u64::from(b) < u64::from(a) + u64::from(r.len)
                };
                if overlap(r.container, o.container) || overlap(r.host, o.host) {
                    return Err(format!(
                        "invalid id mapping {v:?}: ranges {}:{}:{} and {}:{}:{} overlap",
                        o.container, o.host, o.len, r.container, r.host, r.len
                    ));
                }
            }
        }
        Ok(Map {
            ranges,
            squash: None,
        })
    }

    /// Every object shows `id`.
    pub fn squash(id: u32) -> Map {
        Map {
            ranges: Vec::new(),
            squash: Some(id),
        }
    }

    /// The id the mount shows for host id `id`.
    pub fn show(&self, id: u32) -> u32 {
        if let Some(s) = self.squash {
            return s;
        }
        if self.ranges.is_empty() {
            return id;
        }
        self.ranges
            .iter()
            .find(|r| id >= r.host && id - r.host < r.len)
            .map_or(OVERFLOW_ID, |r| r.container + (id - r.host))
    }

    /// The host id to store for container id `id`; `None` when the
    /// mapping has no host id for it (the kernel says EINVAL then).
    pub fn store(&self, id: u32) -> Option<u32> {
        if self.ranges.is_empty() {
            return Some(id);
        }
        self.ranges
            .iter()
            .find(|r| id >= r.container && id - r.container < r.len)
            .map(|r| r.host + (id - r.container))
    }
}

/// The uid and gid mappings of a mount.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IdMap {
    pub uid: Map,
    pub gid: Map,
}

impl IdMap {
    /// Rewrites the owner of a stat result as the mount shows it.
    pub fn show(&self, st: &mut libc::stat) {
        st.st_uid = self.uid.show(st.st_uid);
        st.st_gid = self.gid.show(st.st_gid);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_both_ways_and_overflows() {
        let m = Map::parse("0:1000:1:1:100000:65536").unwrap();
        assert_eq!(m.show(1000), 0);
        assert_eq!(m.show(100_000), 1);
        assert_eq!(m.show(100_009), 10);
        assert_eq!(m.show(5), OVERFLOW_ID);
        assert_eq!(m.store(0), Some(1000));
        assert_eq!(m.store(10), Some(100_009));
        assert_eq!(m.store(70_000), None);
        assert!(Map::parse("0:1000").is_err());
        assert!(Map::parse("a:b:c").is_err());
        // Overlapping on the container side, then on the host side.
        assert!(Map::parse("0:1000:10:5:2000:10").is_err());
        assert!(Map::parse("0:1000:10:100:1005:1").is_err());
        assert!(Map::parse("0:1000:0").is_err());
        assert!(Map::parse("4294967295:0:2").is_err());
        assert!(Map::parse("0:1000:10:10:1010:10").is_ok());
        assert_eq!(Map::squash(0).show(1234), 0);
    }
}

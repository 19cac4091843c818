//! What a mount is asked: requests by kind, and the time the daemon spent
//! on them, counted on the request path with two relaxed atomic additions
//! each. `unionfuse stats MOUNTPOINT` reads them from a live daemon, so a
//! workload's cost shows as requests before it shows as seconds.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// The kinds of request the daemon answers, in the order they are listed.
pub const OPS: [&str; 32] = [
    "lookup",
    "forget",
    "getattr",
    "setattr",
    "readlink",
    "access",
    "opendir",
    "readdir",
    "readdirplus",
    "releasedir",
    "fsyncdir",
    "open",
    "create",
    "read",
    "write",
    "flush",
    "fsync",
    "release",
    "fallocate",
    "lseek",
    "mknod",
    "mkdir",
    "symlink",
    "link",
    "unlink",
    "rmdir",
    "rename",
    "statfs",
    "getxattr",
    "listxattr",
    "setxattr",
    "removexattr",
];

/// The index in [`OPS`] of a request kind.
#[derive(Debug, Clone, Copy)]
pub struct Op(usize);

impl Op {
    /// The kind named `name`; a name missing from [`OPS`] is a bug caught
    /// by the unit test below.
    pub const fn named(name: &str) -> Op {
        let mut i = 0;
        while i < OPS.len() {
            if eq(OPS[i].as_bytes(), name.as_bytes()) {
                return Op(i);
            }
            i += 1;
        }
        Op(usize::MAX)
    }
}

const fn eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let mut i = 0;
    while i < a.len() {
        if a[i] != b[i] {
            return false;
        }
        i += 1;
    }
    true
}

/// Per-kind request counts and time spent, shared by every worker.
#[derive(Debug)]
pub struct Stats {
    count: [AtomicU64; OPS.len()],
    nanos: [AtomicU64; OPS.len()],
    /// Requests that came over io_uring; `u64::MAX` while the mount serves
    /// over `/dev/fuse` only.
    ring: AtomicU64,
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            count: std::array::from_fn(|_| AtomicU64::new(0)),
            nanos: std::array::from_fn(|_| AtomicU64::new(0)),
            ring: AtomicU64::new(u64::MAX),
        }
    }
}

/// Adds one request of its kind, and the time until it is dropped.
#[derive(Debug)]
pub struct Timer<'a> {
    stats: &'a Stats,
    op: Op,
    start: Instant,
}

impl Drop for Timer<'_> {
    fn drop(&mut self) {
        if let (Some(c), Some(n)) = (
            self.stats.count.get(self.op.0),
            self.stats.nanos.get(self.op.0),
        ) {
            c.fetch_add(1, Ordering::Relaxed);
            let ns = u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX);
            n.fetch_add(ns, Ordering::Relaxed);
        }
    }
}

/// One kind's figures.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Row {
    /// The request kind (`lookup`, `getattr`, `readdirplus`, ...).
    pub op: String,
    /// How many were answered.
    pub count: u64,
    /// Time spent answering them, in nanoseconds.
    pub nanos: u64,
}

impl Stats {
    /// Times one request of kind `op` until the guard is dropped.
    pub fn time(&self, op: Op) -> Timer<'_> {
        Timer {
            stats: self,
            op,
            start: Instant::now(),
        }
    }

    /// From now on requests come over io_uring too.
    pub fn ring_started(&self) {
        self.ring.store(0, Ordering::Relaxed);
    }

    /// One more request came over io_uring.
    pub fn ring_request(&self) {
        self.ring.fetch_add(1, Ordering::Relaxed);
    }

    /// The control socket's answer to `transport`: `dev_fuse`, or
    /// `io_uring N` with the requests the ring carried.
    pub fn transport(&self) -> String {
        match self.ring.load(Ordering::Relaxed) {
            u64::MAX => "dev_fuse".to_string(),
            n => format!("io_uring {n}"),
        }
    }

    /// The kinds asked at least once, in [`OPS`] order.
    pub fn rows(&self) -> Vec<Row> {
        OPS.iter()
            .enumerate()
            .map(|(i, op)| Row {
                op: op.to_string(),
                count: self.count[i].load(Ordering::Relaxed),
                nanos: self.nanos[i].load(Ordering::Relaxed),
            })
            .filter(|r| r.count > 0)
            .collect()
    }
}

/// Rows as one line (`op=count:nanos ...`), the control socket's answer.
pub fn encode(rows: &[Row]) -> String {
    rows.iter()
        .map(|r| format!("{}={}:{}", r.op, r.count, r.nanos))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The rows of a line [`encode`] made; `None` if it is malformed.
pub fn decode(line: &str) -> Option<Vec<Row>> {
    line.split_whitespace()
        .map(|f| {
            let (op, v) = f.split_once('=')?;
            let (c, n) = v.split_once(':')?;
            Some(Row {
                op: op.to_string(),
                count: c.parse().ok()?,
                nanos: n.parse().ok()?,
            })
        })
        .collect()
}

/// A table for people: kind, count, total and mean time, and a total line.
pub fn format_table(rows: &[Row]) -> String {
    let mut s = format!(
        "{:<12} {:>12} {:>12} {:>10}\n",
        "request", "count", "total ms", "mean us"
    );
    let (mut count, mut nanos) = (0u64, 0u64);
    for r in rows {
        count += r.count;
        nanos += r.nanos;
        s.push_str(&format!(
            "{:<12} {:>12} {:>12.1} {:>10.1}\n",
            r.op,
            r.count,
            r.nanos as f64 / 1e6,
            r.nanos as f64 / 1e3 / r.count.max(1) as f64
        ));
    }
    s.push_str(&format!(
        "{:<12} {:>12} {:>12.1} {:>10.1}\n",
        "total",
        count,
        nanos as f64 / 1e6,
        nanos as f64 / 1e3 / count.max(1) as f64
    ));
    s
}

/// Rows as JSON: `[{"op":"lookup","count":N,"nanos":N},...]`.
pub fn format_json(rows: &[Row]) -> serde_json::Result<String> {
    crate::json::array_line(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_is_named_and_rows_round_trip() {
        for name in OPS {
            assert_ne!(Op::named(name).0, usize::MAX, "{name}");
        }
        assert_eq!(Op::named("nope").0, usize::MAX);
        let s = Stats::default();
        drop(s.time(Op::named("lookup")));
        drop(s.time(Op::named("lookup")));
        drop(s.time(Op::named("write")));
        let rows = s.rows();
        assert_eq!(rows.len(), 2);
        assert_eq!((rows[0].op.as_str(), rows[0].count), ("lookup", 2));
        assert_eq!(decode(&encode(&rows)), Some(rows));
        assert_eq!(decode("lookup=x:1"), None);
    }
}

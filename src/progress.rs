//! How long work reports how far it got, without knowing who listens: the
//! library counts entries and bytes into a [`Progress`], the command line
//! draws them on a terminal, and the daemon sends them back over its
//! control socket.

/// Receives the counts of a long operation as it goes: entries written,
/// copied or unpacked, and the bytes of data they held. Called from the
/// thread doing the work, once per entry: it must be cheap.
pub trait Progress: Send + Sync {
    /// `entries` more entries done, holding `bytes` bytes of data.
    fn advance(&self, entries: u64, bytes: u64);

    /// One more entry done, holding `bytes` bytes of data.
    fn item(&self, bytes: u64) {
        self.advance(1, bytes);
    }
}

/// Progress nobody watches.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoProgress;

impl Progress for NoProgress {
    fn advance(&self, _entries: u64, _bytes: u64) {}
}

/// Running totals, for a listener that wants them rather than steps.
#[derive(Debug, Default)]
pub struct Counts {
    entries: std::sync::atomic::AtomicU64,
    bytes: std::sync::atomic::AtomicU64,
}

impl Counts {
    /// Adds a step; returns the totals after it.
    pub fn add(&self, entries: u64, bytes: u64) -> (u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        (
            self.entries.fetch_add(entries, Relaxed) + entries,
            self.bytes.fetch_add(bytes, Relaxed) + bytes,
        )
    }

    /// The totals so far.
    pub fn get(&self) -> (u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        (self.entries.load(Relaxed), self.bytes.load(Relaxed))
    }
}

/// A size for a log line: `300 MiB`, `12 KiB`, `17 B`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_as_people_write_them() {
        assert_eq!(human_bytes(17), "17 B");
        assert_eq!(human_bytes(12 * 1024), "12.0 KiB");
        assert_eq!(human_bytes(300 * 1024 * 1024 + 512 * 1024), "300.5 MiB");
    }

    #[test]
    fn counts_add_up() {
        let c = Counts::default();
        assert_eq!(c.add(1, 10), (1, 10));
        assert_eq!(c.add(2, 5), (3, 15));
        assert_eq!(c.get(), (3, 15));
    }
}

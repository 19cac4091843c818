//! Progress of the long verbs on a terminal: a spinner on stderr with the
//! entries and bytes done so far and the time taken. Nothing is drawn when
//! stderr is not a terminal (indicatif also counts a `TERM` unset or
//! `dumb` as none) or with `--quiet`, and nothing before the work
//! reports its first entry (a refusal stays one line).

use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use indicatif::{HumanBytes, ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::progress::Progress;

/// What the spinner counts besides entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Counting {
    /// Entries and the bytes of data they hold.
    Bytes,
    /// Entries only (a walk that reads no data).
    Entries,
}

/// The progress of one verb on stderr.
pub(super) struct Spinner {
    /// `None`: nothing is drawn (quiet, or stderr is no terminal).
    what: Option<(&'static str, Counting)>,
    bar: OnceLock<ProgressBar>,
    bytes: Arc<AtomicU64>,
}

impl std::fmt::Debug for Spinner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Spinner").field("what", &self.what).finish()
    }
}

/// How often the spinner turns while no entry completes (a big file).
const TICK: Duration = Duration::from_millis(120);

impl Spinner {
    /// A spinner labelled `what`, drawn only when `quiet` is off and
    /// stderr is a terminal.
    pub(super) fn new(what: &'static str, counting: Counting, quiet: bool) -> Spinner {
        let shown = !quiet && std::io::stderr().is_terminal();
        Spinner {
            what: shown.then_some((what, counting)),
            bar: OnceLock::new(),
            bytes: Arc::new(AtomicU64::new(0)),
        }
    }

    fn start(&self, what: &'static str, counting: Counting) -> ProgressBar {
        let template = match counting {
            Counting::Bytes => "{spinner} {prefix}: {pos} entries, {data} [{elapsed}]",
            Counting::Entries => "{spinner} {prefix}: {pos} entries [{elapsed}]",
        };
        let bytes = Arc::clone(&self.bytes);
        let style = ProgressStyle::with_template(template)
            .unwrap_or_else(|_| ProgressStyle::default_spinner())
            .with_key(
                "data",
                move |_: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
                    let _ = write!(w, "{}", HumanBytes(bytes.load(Relaxed)));
                },
            );
        let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr())
            .with_style(style)
            .with_prefix(what);
        bar.enable_steady_tick(TICK);
        bar
    }

    /// Leaves the final counts on screen, if anything was drawn.
    pub(super) fn finish(&self) {
        if let Some(bar) = self.bar.get() {
            bar.finish();
        }
    }
}

impl Progress for Spinner {
    fn advance(&self, entries: u64, bytes: u64) {
        let Some((what, counting)) = self.what else {
            return;
        };
        self.bytes.fetch_add(bytes, Relaxed);
        self.bar
            .get_or_init(|| self.start(what, counting))
            .inc(entries);
    }
}

impl Drop for Spinner {
    fn drop(&mut self) {
        // On an error the spinner stops where it was, and the message
        // printed after it starts on a line of its own.
        if let Some(bar) = self.bar.get()
            && !bar.is_finished()
        {
            bar.abandon();
        }
    }
}

//! The error of the library's verbs (configure, mount, diff, layer files,
//! talking to a live mount): what went wrong, as a kind a program can match
//! and a one-line message a person can act on. Filesystem operations keep
//! their errno error, [`crate::error::Error`].

use std::fmt;
use std::path::PathBuf;

/// Why a library call failed. Every variant displays as one line naming the
/// problem (the line `unionfuse` prints after `unionfuse: `).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Failure {
    /// The configuration or an argument is wrong (a missing or misplaced
    /// directory, a malformed option); nothing on disk was changed.
    Invalid(String),
    /// Layers could not be read or written (diff, check, layer files).
    Layer(String),
    /// Mounting, serving or unmounting failed.
    Mount(String),
    /// A live mount's daemon could not be found, reached, or refused the
    /// request.
    Daemon(String),
    /// The mount was unmounted already: nothing serves it any more.
    Unmounted(PathBuf),
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Invalid(m) | Failure::Layer(m) | Failure::Mount(m) | Failure::Daemon(m) => {
                write_one_line(f, m)
            }
            Failure::Unmounted(p) => write_one_line(f, &format!("{} is unmounted", p.display())),
        }
    }
}

/// `m` with control characters escaped, as [`Failure`] displays it.
pub(crate) fn one_line(m: &str) -> String {
    struct Line<'a>(&'a str);
    impl fmt::Display for Line<'_> {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write_one_line(f, self.0)
        }
    }
    Line(m).to_string()
}

/// Writes `m` with control characters escaped: names in layers may hold
/// newlines, and a message must stay one line for whoever reads stderr.
fn write_one_line(f: &mut fmt::Formatter<'_>, m: &str) -> fmt::Result {
    for c in m.chars() {
        if c.is_control() {
            write!(f, "{}", c.escape_debug())?;
        } else {
            fmt::Write::write_char(f, c)?;
        }
    }
    Ok(())
}

impl std::error::Error for Failure {}

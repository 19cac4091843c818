//! The one tree walk the tooling uses (diff, export, checkpoints, resets,
//! clearing staging): depth first over an explicit stack, never recursion,
//! because trees in images nest thousands of levels deep and a thread's
//! stack is small. Every directory is opened relative to its parent's
//! descriptor without following a symlink, so a walk never leaves the tree
//! it was given; one descriptor is open per level of the current path.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;

use crate::error::Result;
use crate::name::Name;
use crate::sys;

/// One entry met by [`walk`].
#[derive(Debug)]
pub struct Entry<'a, C> {
    /// The directory holding the entry.
    pub dir: BorrowedFd<'a>,
    pub name: &'a Name,
    /// `d_type` from the listing (`DT_UNKNOWN` on filesystems without it).
    pub d_type: u8,
    /// Relative path from the walk's root, components joined by `/`.
    pub path: &'a [u8],
    /// What the caller attached to the directory holding the entry.
    pub ctx: &'a C,
}

/// What [`walk`] does after visiting a directory entry.
#[derive(Debug)]
pub enum Step<C> {
    /// Go on with the next sibling.
    Next,
    /// Walk the entry's directory next, its entries seeing `C`.
    Descend(C),
    /// The same, through a descriptor of it the visitor already opened
    /// (to read its markers), so that it is not opened twice.
    DescendOpened(C, Arc<OwnedFd>),
}

/// A directory whose whole subtree [`walk`] has visited.
#[derive(Debug)]
pub struct Done<'a> {
    /// Its parent and its name there; `None` for the walk's root.
    pub parent: Option<(BorrowedFd<'a>, &'a Name)>,
}

/// A directory on the current path, with the entries still to visit.
struct Frame<C> {
    fd: Arc<OwnedFd>,
    /// Its name in its parent; `None` for the root.
    name: Option<Name>,
    names: Vec<(Name, u8)>,
    next: usize,
    ctx: C,
    /// Length of the path before this directory's name was added.
    path_len: usize,
}

fn open_frame<C>(
    fd: Arc<OwnedFd>,
    name: Option<Name>,
    ctx: C,
    sorted: bool,
    path_len: usize,
) -> Result<Frame<C>> {
    let entries = sys::read_dir(fd.as_fd())?;
    let mut names = Vec::with_capacity(entries.iter().count());
    for e in entries.iter() {
        if e.name == b"." || e.name == b".." {
            continue;
        }
        names.push((Name::from_bytes(e.name)?, e.d_type));
    }
    if sorted {
        names.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    }
    Ok(Frame {
        fd,
        name,
        names,
        next: 0,
        ctx,
        path_len,
    })
}

/// Walks the tree under directory `root`: `visit` sees every entry (not
/// `.` and `..`), parents before children, each directory's entries in
/// name order when `sorted`, and decides whether to descend into a
/// directory; `leave` runs once a directory's whole subtree has been
/// visited, with its context (the root's last).
pub fn walk<C>(
    root: Arc<OwnedFd>,
    ctx: C,
    sorted: bool,
    mut visit: impl FnMut(&Entry<'_, C>) -> Result<Step<C>>,
    mut leave: impl FnMut(&Done<'_>, C) -> Result<()>,
) -> Result<()> {
    let mut path: Vec<u8> = Vec::new();
    let mut stack = vec![open_frame(root, None, ctx, sorted, 0)?];
    while let Some(top) = stack.last_mut() {
        let Some((name, d_type)) = top.names.get(top.next) else {
            let done = stack
                .pop()
                .unwrap_or_else(|| unreachable!("non-empty stack"));
            let parent = stack.last().map(|p| p.fd.as_fd()).zip(done.name.as_ref());
            let d = Done { parent };
            leave(&d, done.ctx)?;
            path.truncate(done.path_len);
            continue;
        };
        top.next += 1;
        let len = path.len();
        if len > 0 {
            path.push(b'/');
        }
        path.extend_from_slice(name.as_bytes());
        let step = visit(&Entry {
            dir: top.fd.as_fd(),
            name,
            d_type: *d_type,
            path: &path,
            ctx: &top.ctx,
        })?;
        let (c, sub) = match step {
            Step::Next => {
                path.truncate(len);
                continue;
            }
            Step::DescendOpened(c, fd) => (c, fd),
            Step::Descend(c) => (
                c,
                Arc::new(sys::open_child_dir(top.fd.as_fd(), name.as_cstr())?),
            ),
        };
        let frame = match open_frame(sub, Some(name.clone()), c, sorted, len) {
            Ok(f) => f,
            Err(e) => {
                path.truncate(len);
                return Err(e);
            }
        };
        stack.push(frame);
    }
    Ok(())
}

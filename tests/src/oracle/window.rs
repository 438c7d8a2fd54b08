//! What of a frame the datapath can see: bytes whose read starts within
//! the parse window (`parse_limits::MAX_OFFSET` bytes from the frame's
//! start) and ends within the frame, plus what the skb says of it (a GSO
//! packet or not). Every header read of the oracle goes through [`Window`],
//! so the window and the walk's other bounds are stated once, as the
//! datapath's documented limits ([`Limits::DATAPATH`]).
//!
//! A description of a frame (`super::describe`) walks it the same way
//! with no bounds ([`Limits::NONE`]), and each header read leaves a line
//! ([`Window::note`]).

use std::cell::RefCell;

use envfence_ebpf::parse_limits::{MAX_IPV6_EXT, MAX_MPLS_LABELS, MAX_OFFSET};

use super::Stop;

/// How far the walk goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Limits {
    /// The last offset a read may start at.
    pub window: usize,
    /// VLAN tags walked in the frame data.
    pub vlan_tags: usize,
    pub mpls_labels: usize,
    pub ipv6_ext: usize,
}

impl Limits {
    /// The datapath's (README "How envfence handles ..."): two VLAN tags at
    /// tc, six MPLS labels, `MAX_IPV6_EXT` extension headers, reads
    /// starting within `MAX_OFFSET`.
    pub const DATAPATH: Limits = Limits {
        window: MAX_OFFSET,
        vlan_tags: 2,
        mpls_labels: MAX_MPLS_LABELS,
        ipv6_ext: MAX_IPV6_EXT,
    };
    /// A description's: what the bytes are, however deep.
    pub const NONE: Limits = Limits {
        window: usize::MAX,
        vlan_tags: 8,
        mpls_labels: 16,
        ipv6_ext: 16,
    };
}

/// One line of a description: the header read at `off`, `depth` tunnels
/// in.
#[derive(Clone, Debug)]
pub(crate) struct Note {
    pub depth: usize,
    pub off: usize,
    pub text: String,
}

/// One frame as the datapath sees it.
#[derive(Clone, Copy)]
pub(crate) struct Window<'a> {
    bytes: &'a [u8],
    /// The skb is a GSO packet (`gso_size` ≠ 0): an IP length of 0 means
    /// "to the end of the skb" (BIG TCP).
    pub gso: bool,
    pub limits: Limits,
    /// Tunnels around what is read now.
    pub depth: usize,
    /// A description's lines (None: classifying).
    notes: Option<&'a RefCell<Vec<Note>>>,
}

impl<'a> Window<'a> {
    pub fn new(bytes: &'a [u8], gso: bool) -> Window<'a> {
        Window {
            bytes,
            gso,
            limits: Limits::DATAPATH,
            depth: 0,
            notes: None,
        }
    }

    /// A window without bounds whose reads leave their lines in `notes`.
    pub fn describing(bytes: &'a [u8], gso: bool, notes: &'a RefCell<Vec<Note>>) -> Window<'a> {
        Window {
            limits: Limits::NONE,
            notes: Some(notes),
            ..Window::new(bytes, gso)
        }
    }

    /// The same frame, one tunnel deeper.
    pub fn inner(&self) -> Window<'a> {
        Window {
            depth: self.depth + 1,
            ..*self
        }
    }

    /// Leaves a line for the header at `off` when describing.
    pub fn note(&self, off: usize, text: impl FnOnce() -> String) {
        if let Some(notes) = self.notes {
            notes.borrow_mut().push(Note {
                depth: self.depth,
                off,
                text: text(),
            });
        }
    }

    /// Notes that the `what` at `off` (a header of `need` bytes) is cut
    /// short, and returns `stop`.
    pub fn cut(&self, off: usize, what: &str, need: usize, stop: Stop) -> Stop {
        let left = self.left(off);
        self.note(off, || {
            format!("{what}: TRUNCATED ({left} bytes left, header needs {need})")
        });
        stop
    }

    /// Everything from `off` to the frame's end, when a read may start at
    /// `off` (at most [`Limits::window`]). The packet library's header
    /// slices are cut from this: they check on their own that their header
    /// fits.
    pub fn from(&self, off: usize) -> Option<&'a [u8]> {
        if off > self.limits.window {
            return None;
        }
        self.bytes.get(off..)
    }

    /// Exactly `n` bytes at `off`, when they can be read.
    pub fn take(&self, off: usize, n: usize) -> Option<&'a [u8]> {
        self.from(off)?.get(..n)
    }

    /// One byte at `off`.
    pub fn byte(&self, off: usize) -> Option<u8> {
        self.take(off, 1).map(|b| b[0])
    }

    /// Bytes of the frame (the skb) from `off` to its end; 0 past it.
    pub fn left(&self, off: usize) -> usize {
        self.bytes.len().saturating_sub(off)
    }
}

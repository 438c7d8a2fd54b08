//! What of a frame the datapath can see: bytes whose read starts within
//! the parse window (`parse_limits::MAX_OFFSET` bytes from the frame's
//! start) and ends within the frame, plus what the skb says of it (a GSO
//! packet or not). Every header read of the oracle goes through [`Window`],
//! so the window is stated once, as the datapath's documented limit.

use envfence_ebpf::parse_limits::MAX_OFFSET;

/// One frame as the datapath sees it.
#[derive(Clone, Copy)]
pub(crate) struct Window<'a> {
    bytes: &'a [u8],
    /// The skb is a GSO packet (`gso_size` ≠ 0): an IP length of 0 means
    /// "to the end of the skb" (BIG TCP).
    pub gso: bool,
}

impl<'a> Window<'a> {
    pub fn new(bytes: &'a [u8], gso: bool) -> Window<'a> {
        Window { bytes, gso }
    }

    /// Everything from `off` to the frame's end, when a read may start at
    /// `off` (at most [`MAX_OFFSET`]). The packet library's header slices
    /// are cut from this: they check on their own that their header fits.
    pub fn from(&self, off: usize) -> Option<&'a [u8]> {
        if off > MAX_OFFSET {
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

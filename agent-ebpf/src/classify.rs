//! The environment of an address, written once: the walk of the
//! classifier's tables ([`crate::trie`]), generic over where they live
//! ([`TrieTables`]): the kernel's array maps (`src/programs.rs`), the
//! compiled policy (`agent/src/policy/classifier.rs`) and the maps pinned
//! in bpffs (`agent/src/datapath/inspect.rs`).
//!
//! One read of the root, then at most [`crate::trie::STEPS_V4`] (IPv4) or
//! [`crate::trie::STEPS_V6`] (IPv6) reads of a chunk or a skip, whatever
//! the number of prefixes: each step consumes at least 4 address bits.

use core::borrow::Borrow;

use crate::trie::{self, INDEX_MASK, LEAF_MASK, LEN_SHIFT, TAG_LEAF, TAG_SHIFT, TAG_SKIP};
use crate::Chunk;

/// Where a walk reads the chunks of one family and one slot. Reads may
/// fail (pinned maps are read with syscalls): [`TrieTables::Error`] is
/// `Infallible` where they cannot.
pub trait TrieTables {
    /// Why a read failed.
    type Error;
    /// A chunk as the table gives it: a reference into it (the kernel's
    /// map value, read in place), or a copy.
    type Chunk<'a>: Borrow<Chunk>
    where
        Self: 'a;
    /// Chunk `index` of the slot; None out of range.
    fn chunk(&self, index: u32) -> Result<Option<Self::Chunk<'_>>, Self::Error>;
}

/// An address as a walk reads it: its (high, low) 64-bit words
/// ([`crate::trie::words_v4`], [`crate::trie::words_v6`]), read at every
/// step. The kernel's reads them from a map value each time, which keeps
/// them out of the walk's stack frame.
pub trait Address {
    /// The high word (`low` false) or the low word.
    fn word(&self, low: bool) -> u64;
}

impl Address for [u64; 2] {
    #[inline(always)]
    fn word(&self, low: bool) -> u64 {
        self[usize::from(low)]
    }
}

/// The leaf ([`crate::trie::leaf`]) of address `a`.
/// `STEPS` is the family's bound. A walk that does not reach a leaf within
/// it (no table the compiler writes does that), or reads a chunk out of
/// range, ends in no environment.
#[inline(always)]
pub fn walk<T: TrieTables, A: Address, const STEPS: usize>(t: &T, a: &A) -> Result<u32, T::Error> {
    let mut c = Cursor::start(a);
    for _ in 0..=STEPS {
        if c.done() {
            break;
        }
        c.step(t, a)?;
    }
    Ok(c.leaf())
}

/// The leaves of addresses `a` and `b` (of one family), walked in
/// lockstep: each step reads `a`'s chunk, then `b`'s, so that the CPU has
/// both reads in flight at once (neither depends on the other) where two
/// walks one after the other wait for each cache miss in turn. The same
/// steps as [`walk`]: `walk_pair(t, a, b) == (walk(t, a), walk(t, b))`.
#[inline(always)]
pub fn walk_pair<T: TrieTables, A: Address, B: Address, const STEPS: usize>(
    t: &T,
    a: &A,
    b: &B,
) -> Result<(u32, u32), T::Error> {
    let mut ca = Cursor::start(a);
    let mut cb = Cursor::start(b);
    for _ in 0..=STEPS {
        if ca.done() && cb.done() {
            break;
        }
        ca.step(t, a)?;
        cb.step(t, b)?;
    }
    Ok((ca.leaf(), cb.leaf()))
}

/// Where a walk stands: the entry it reads next (a chunk or skip
/// reference; a leaf when it is done) and the address bits consumed.
#[derive(Clone, Copy, Debug)]
struct Cursor {
    e: u32,
    pos: u32,
}

impl Cursor {
    /// Before the first step. The root is read as a chunk step: its chunk
    /// is the address's first 12 bits, its entry the next 4 (one map read
    /// in the code, one key).
    #[inline(always)]
    fn start<A: Address>(a: &A) -> Cursor {
        Cursor {
            e: trie::chunk((a.word(false) >> (64 - trie::ROOT_BITS + trie::STRIDE)) as u32),
            pos: trie::ROOT_BITS - trie::STRIDE,
        }
    }

    /// Whether the walk holds its leaf.
    #[inline(always)]
    fn done(&self) -> bool {
        self.e >> TAG_SHIFT == TAG_LEAF
    }

    /// The leaf, or no environment for a walk cut short by its bound.
    #[inline(always)]
    fn leaf(&self) -> u32 {
        if self.done() {
            self.e
        } else {
            0
        }
    }

    /// One step: the chunk or skip the entry names, read once; nothing
    /// when the walk is done.
    ///
    /// Written for the verifier: one map read per step whatever the entry
    /// (a chunk's index, or the index of the chunk holding the skip), and
    /// no branch on the position (an address reads its word without one),
    /// so that it need not follow each position apart (a branch on it made
    /// the walk's states grow past the budget).
    #[inline(always)]
    fn step<T: TrieTables, A: Address>(&mut self, t: &T, a: &A) -> Result<(), T::Error> {
        let e = self.e;
        if e >> TAG_SHIFT == TAG_LEAF {
            return Ok(());
        }
        // A skip's reference is (chunk << 2 | quarter).
        let shift = if e >> TAG_SHIFT == TAG_SKIP {
            trie::SKIP_QUARTER_BITS
        } else {
            0
        };
        let Some(c) = t.chunk((e & INDEX_MASK) >> shift)? else {
            // Out of range: no environment (a leaf ends the walk).
            self.e = 0;
            return Ok(());
        };
        let c: &Chunk = c.borrow();
        // Every step is a multiple of 4 bits and a skip never crosses bit
        // 64: the masks only tell the verifier the shifts are in range.
        let pos = self.pos;
        let word = a.word(pos >= 64);
        let at = pos & 60;
        if e >> TAG_SHIFT == TAG_SKIP {
            let q = ((e & 3) * 4) as usize;
            let bits = (u64::from(c.entries[q & 12]) << 32) | u64::from(c.entries[(q + 1) & 15]);
            let next = c.entries[(q + 2) & 15];
            let miss_len = c.entries[(q + 3) & 15];
            let len = (miss_len >> LEN_SHIFT) & 127;
            // The top `len` bits (1..=64).
            let mask = !((u64::MAX >> 1) >> (len.wrapping_sub(1) & 63));
            if ((word << at) ^ bits) & mask != 0 {
                // The miss entry's leaf (its tag bits are clear).
                self.e = miss_len & LEAF_MASK;
                return Ok(());
            }
            self.e = next;
            self.pos = (pos + len) & 127;
        } else {
            let nibble = (word >> (60 - at)) as u32 & 15;
            self.e = c.entries[nibble as usize];
            self.pos = (pos + trie::STRIDE) & 127;
        }
        Ok(())
    }
}

/// The leaf of IPv4 address `a`.
#[inline(always)]
pub fn walk_v4<T: TrieTables>(t: &T, a: [u8; 4]) -> Result<u32, T::Error> {
    let (hi, lo) = trie::words_v4(a);
    walk::<T, _, { trie::STEPS_V4 }>(t, &[hi, lo])
}

/// The leaf of IPv6 address `a`.
#[inline(always)]
pub fn walk_v6<T: TrieTables>(t: &T, a: &[u8; 16]) -> Result<u32, T::Error> {
    let (hi, lo) = trie::words_v6(a);
    walk::<T, _, { trie::STEPS_V6 }>(t, &[hi, lo])
}

//! The kernel's [`Frame`]: the `__sk_buff` of a TC program, read with
//! direct packet access (the linear area the hook pulled), its length and
//! GSO size from the context, and the policy's tunnel ports from
//! `EF_TUNNEL_PORTS`; and the header walk (`envfence_ebpf::walk_for!`,
//! with the ICMP quote reader `envfence_ebpf::quote_for!`) instantiated
//! for it ([`walk`]).

use aya_ebpf::programs::TcContext;
use envfence_ebpf::{tunnel_ports_index, walk::Frame};

use crate::programs::TUNNEL_PORTS;

/// A TC program's packet: the context itself, seen as a [`Frame`] (the
/// walk then reads through the very pointer the program was given).
#[repr(transparent)]
pub struct Skb {
    ctx: TcContext,
}

impl Skb {
    #[inline(always)]
    pub fn new(ctx: &TcContext) -> &Skb {
        // SAFETY: `Skb` is a `repr(transparent)` wrapper of `TcContext`.
        unsafe { &*(ctx as *const TcContext as *const Skb) }
    }
}

impl Frame for Skb {
    #[inline(always)]
    fn packet_len(&self) -> usize {
        self.ctx.len() as usize
    }

    #[inline(always)]
    fn bytes<const N: usize>(&self, off: usize) -> Option<&[u8; N]> {
        let start = self.ctx.data();
        let end = self.ctx.data_end();
        if start + off + N > end {
            return None;
        }
        // SAFETY: bounds checked against data_end just above.
        Some(unsafe { &*((start + off) as *const [u8; N]) })
    }

    #[inline(always)]
    fn byte(&self, off: usize) -> Option<u8> {
        // Within MAX_OFFSET the linear area holds the frame (pulled to
        // PULL_LEN), so the helper sees what a direct read would.
        self.ctx.load::<u8>(off).ok()
    }

    #[inline(always)]
    fn gso(&self) -> bool {
        // SAFETY: reading a field of the context.
        unsafe { (*self.ctx.skb.skb).gso_size != 0 }
    }

    #[inline(always)]
    fn tunnel_kind(&self, slot: u32, port: u16) -> Option<u8> {
        let entry = TUNNEL_PORTS.get(tunnel_ports_index(slot, port))?;
        Some(entry.kind[(port & 0xff) as usize])
    }
}

/// The header walk over the skb ([`envfence_ebpf::walk`]) and the quote
/// reader ([`envfence_ebpf::quote`]).
pub mod walk {
    envfence_ebpf::walk_for!(super::Skb);
}

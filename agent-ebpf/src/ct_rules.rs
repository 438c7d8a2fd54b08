//! The connection tracker's rules of what a verdict and a RST do to a
//! flow, written once for the kernel's tracker (`src/conntrack.rs`, over
//! its hash map and clock) and for userspace (`envfence explain --pcap`
//! tracks the flows a capture opens, `agent/src/cli/explain_pcap/track.rs`):
//! which verdict opens or keeps a flow ([`opens`]) and the RST that ends
//! one ([`is_rst`]), and the TCP flags they read.
//!
//! Not here, though both sides apply it: which packet could open a
//! connection itself and so is never a reply (a SYN without ACK, an echo
//! request), and the order the rules are asked in (`track` in
//! `src/conntrack.rs`). Measured on the kernel's decision stage (138,081
//! instructions verified): that test as a function here costs the verifier
//! 67 to 1,465 more instructions, and the whole transition as one
//! state-machine function both sides call 699 to 2,179 more, however
//! written; the kernel keeps them inline and userspace follows them.

use crate::{ct, proto, verdict};

/// TCP header flags (byte 13).
pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

/// Whether a packet the policy gives verdict `v`, in a pair with [`ct`]
/// `flags`, opens its flow (or, from the opener's side, keeps it): the
/// policy passes it (`allow`, `log`) and the pair `OPENS`. From the
/// opener's side, a packet that does not ends the flow.
#[inline(always)]
pub fn opens(v: u8, flags: u8) -> bool {
    (v == verdict::ALLOW || v == verdict::LOG) && flags & ct::OPENS != 0
}

/// Whether a packet of `p` with TCP flags `tcp_flags` is a TCP RST: it
/// never opens a flow and ends the one it belongs to (a RST reply still
/// passes as a reply).
#[inline(always)]
pub fn is_rst(p: u8, tcp_flags: u8) -> bool {
    p == proto::TCP && tcp_flags & TCP_RST != 0
}

//! Capture files as `envfence explain --pcap` reads them: classic pcap and
//! pcapng ([`reader`], streaming with bounded memory), and the link layers
//! `tcpdump -w` writes on a node ([`link`]: Ethernet, Linux cooked SLL and
//! SLL2 as `-i any` writes them, raw IP), turned into the Ethernet frame
//! the datapath's header walk reads.

pub mod link;
pub mod reader;

pub use link::{
    Direction, Link, LinkError, LINKTYPE_ETHERNET, LINKTYPE_LINUX_SLL, LINKTYPE_LINUX_SLL2,
};
pub use reader::{CaptureError, CaptureReader, Format, Packet};

//! The link layers of captures taken on a node, turned into the Ethernet
//! frame the datapath's header walk reads (the TC programs see Ethernet
//! frames): Ethernet as it is; Linux cooked captures (`tcpdump -i any`:
//! LINKTYPE_LINUX_SLL, and SLL2 with the interface index) get an Ethernet
//! header carrying their protocol field in place of theirs (the stack
//! gives VLAN tags there as an 802.1Q protocol); raw IP gets an Ethernet
//! header whose EtherType is the IP version's.

use std::borrow::Cow;

pub const LINKTYPE_ETHERNET: u32 = 1;
pub const LINKTYPE_RAW: u32 = 101;
pub const LINKTYPE_LINUX_SLL: u32 = 113;
pub const LINKTYPE_IPV4: u32 = 228;
pub const LINKTYPE_IPV6: u32 = 229;
pub const LINKTYPE_LINUX_SLL2: u32 = 276;

const SLL_HLEN: usize = 16;
const SLL2_HLEN: usize = 20;
const ETH_HLEN: usize = 14;
/// `PACKET_OUTGOING` of a cooked header's packet type.
const PACKET_OUTGOING: u8 = 4;

/// Which way a packet went through its interface, when the capture says.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// Received (cooked packet types host, broadcast, multicast, other
    /// host).
    In,
    /// Sent by the node (`PACKET_OUTGOING`).
    Out,
}

/// What the link layer says of a packet, and its frame as the walk reads
/// it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Link<'a> {
    /// An Ethernet frame (the capture's bytes, or a header built for them).
    pub frame: Cow<'a, [u8]>,
    /// The frame's length on the wire, as the walk's packet length (at
    /// least `frame.len()`).
    pub wire_len: usize,
    /// SLL2: the interface index.
    pub ifindex: Option<u32>,
    /// Cooked captures: in or out.
    pub direction: Option<Direction>,
}

/// Why a packet's link layer cannot be read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LinkError {
    #[error(
        "link type {0} is not one explain reads (Ethernet 1, Linux cooked SLL 113 and SLL2 276, raw IP 101, 228, 229)"
    )]
    Unknown(u32),
    #[error("{len} bytes: shorter than the {need}-byte {what} header")]
    Short {
        len: usize,
        need: usize,
        what: &'static str,
    },
}

/// The name of a link type explain reads.
pub fn name(linktype: u32) -> &'static str {
    match linktype {
        LINKTYPE_ETHERNET => "ethernet",
        LINKTYPE_LINUX_SLL => "linux-sll",
        LINKTYPE_LINUX_SLL2 => "linux-sll2",
        LINKTYPE_RAW | LINKTYPE_IPV4 | LINKTYPE_IPV6 => "raw-ip",
        _ => "unknown",
    }
}

/// An Ethernet header (zero addresses) with `ethertype`, then `payload`.
fn ethernet(ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(ETH_HLEN + payload.len());
    f.extend_from_slice(&[0u8; 12]);
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

fn direction(packet_type: u8) -> Direction {
    if packet_type == PACKET_OUTGOING {
        Direction::Out
    } else {
        Direction::In
    }
}

/// The packet `data` of link type `linktype`, `orig_len` bytes on the wire,
/// as the walk reads it.
pub fn decode(linktype: u32, data: &[u8], orig_len: u32) -> Result<Link<'_>, LinkError> {
    let short = |need, what| LinkError::Short {
        len: data.len(),
        need,
        what,
    };
    let wire = |hlen: usize, frame_len: usize| {
        (orig_len as usize)
            .saturating_sub(hlen)
            .saturating_add(frame_len - data.len().saturating_sub(hlen))
            .max(frame_len)
    };
    match linktype {
        LINKTYPE_ETHERNET => Ok(Link {
            frame: Cow::Borrowed(data),
            wire_len: (orig_len as usize).max(data.len()),
            ifindex: None,
            direction: None,
        }),
        LINKTYPE_LINUX_SLL => {
            let h = data
                .get(..SLL_HLEN)
                .ok_or(short(SLL_HLEN, "Linux cooked (SLL)"))?;
            let frame = ethernet(u16::from_be_bytes([h[14], h[15]]), &data[SLL_HLEN..]);
            let wire_len = wire(SLL_HLEN, frame.len());
            Ok(Link {
                frame: Cow::Owned(frame),
                wire_len,
                ifindex: None,
                direction: Some(direction(h[1])),
            })
        }
        LINKTYPE_LINUX_SLL2 => {
            let h = data
                .get(..SLL2_HLEN)
                .ok_or(short(SLL2_HLEN, "Linux cooked (SLL2)"))?;
            let frame = ethernet(u16::from_be_bytes([h[0], h[1]]), &data[SLL2_HLEN..]);
            let wire_len = wire(SLL2_HLEN, frame.len());
            Ok(Link {
                frame: Cow::Owned(frame),
                wire_len,
                ifindex: Some(u32::from_be_bytes([h[4], h[5], h[6], h[7]])),
                direction: Some(direction(h[10])),
            })
        }
        LINKTYPE_RAW | LINKTYPE_IPV4 | LINKTYPE_IPV6 => {
            let v = data.first().ok_or(short(1, "raw IP"))? >> 4;
            let ethertype = match (linktype, v) {
                (LINKTYPE_IPV4, _) | (_, 4) => 0x0800,
                (LINKTYPE_IPV6, _) | (_, 6) => 0x86dd,
                // Neither: the walk says not IP.
                _ => 0,
            };
            let frame = ethernet(ethertype, data);
            let wire_len = wire(0, frame.len());
            Ok(Link {
                frame: Cow::Owned(frame),
                wire_len,
                ifindex: None,
                direction: None,
            })
        }
        other => Err(LinkError::Unknown(other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const IP: [u8; 4] = [0x45, 0, 0, 20];

    #[test]
    fn cooked_headers_become_ethernet() {
        // SLL: outgoing, ARPHRD_ETHER, 6-byte address, IPv4.
        let mut sll = vec![0, 4, 0, 1, 0, 6, 1, 2, 3, 4, 5, 6, 0, 0, 0x08, 0x00];
        sll.extend(IP);
        let l = decode(LINKTYPE_LINUX_SLL, &sll, 20).expect("sll");
        assert_eq!(&l.frame[12..], &[0x08, 0x00, 0x45, 0, 0, 20]);
        assert_eq!(l.frame.len(), 18);
        assert_eq!(l.wire_len, 18);
        assert_eq!(l.direction, Some(Direction::Out));
        assert_eq!(l.ifindex, None);
        // SLL2: IPv6 on ifindex 7, received by the host; cut by the snap
        // length (60 bytes on the wire, 4 captured).
        let mut sll2 = vec![0x86, 0xdd, 0, 0, 0, 0, 0, 7, 0, 1, 0, 6];
        sll2.extend([0; 8]);
        sll2.extend([0x60, 0, 0, 0]);
        let l = decode(LINKTYPE_LINUX_SLL2, &sll2, 60).expect("sll2");
        assert_eq!(&l.frame[12..14], &[0x86, 0xdd]);
        assert_eq!(l.ifindex, Some(7));
        assert_eq!(l.direction, Some(Direction::In));
        assert_eq!(l.wire_len, 60 - 20 + 14);
        // Raw IP.
        let l = decode(LINKTYPE_RAW, &IP, 20).expect("raw");
        assert_eq!(&l.frame[12..16], &[0x08, 0x00, 0x45, 0]);
        assert_eq!(l.wire_len, 34);
        // Ethernet unchanged, borrowed.
        let l = decode(LINKTYPE_ETHERNET, &sll, 100).expect("eth");
        assert!(matches!(l.frame, Cow::Borrowed(_)));
        assert_eq!(l.wire_len, 100);
    }

    #[test]
    fn short_and_unknown_links_are_errors() {
        assert_eq!(
            decode(LINKTYPE_LINUX_SLL2, &[0; 10], 10)
                .expect_err("short")
                .to_string(),
            "10 bytes: shorter than the 20-byte Linux cooked (SLL2) header"
        );
        assert!(decode(LINKTYPE_LINUX_SLL, &[0; 15], 15).is_err());
        assert!(decode(LINKTYPE_RAW, &[], 0).is_err());
        assert_eq!(decode(147, &IP, 4), Err(LinkError::Unknown(147)));
    }
}

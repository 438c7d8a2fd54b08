//! The userspace classifier: what the datapath does with a frame,
//! computed from the frame's bytes, what the skb says of it ([`Skb`]) and
//! a policy's tables ([`PolicyTables`]: the compiled policy, or the maps
//! pinned in bpffs, `datapath::inspect::PinnedTables`). `explain` and the
//! tests use it.
//!
//! It is not a second implementation: the header walk is the kernel's own
//! (`envfence_ebpf::walk_for!`, instantiated here for a byte slice,
//! [`SliceFrame`]) and so is the decision (`envfence_ebpf::decide`, over
//! the policy's tables, [`PolicyTables::decided`]). What this module adds is what the
//! kernel does around them, in plain Rust: the source check of a frame
//! entering an interface (`rpf`), judging the outer packet, a tunnel's
//! inner packet and a routing header's final destination (the strictest
//! verdict wins, the first judged on a tie), and the outcome by kind.
//! Being the kernel's walk, it shares the walk's bugs: only a decoder
//! written independently of it (the differential tests' oracle in
//! `tests/`) can catch those.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use envfence_ebpf::decide::Decided;
use envfence_ebpf::walk::{self, Frame, Reject, ENCAP_MPLS, ENCAP_PPPOE};
pub use envfence_ebpf::walk::{Layer, Packet};
use envfence_ebpf::{family, stat, tunnel, verdict};

use super::{rpf, CompiledPolicy, Mode, NonIp};

/// The kernel's header walk ([`envfence_ebpf::walk_for!`]) over a
/// [`SliceFrame`], with its ICMP quote reader (`quoted`, used by
/// `explain --pcap`'s tracker).
pub(crate) mod walked {
    envfence_ebpf::walk_for!(super::SliceFrame<'_>);
}

/// What is known of the L4 header of a judged packet (the walk's
/// [`envfence_ebpf::L4`]): ports read, a port-bearing protocol (or an IPv6
/// extension-header chain, or a tunnel in a non-first fragment) whose
/// ports could not be read, or a protocol without ports.
pub use envfence_ebpf::L4 as L4Seen;

/// Where the classifier finds the policy it judges by: the tables the
/// datapath reads, from a compiled policy or from the maps pinned in bpffs.
/// Lookups may fail (pinned maps are read with syscalls): `Error` is
/// `Infallible` where they cannot.
pub trait PolicyTables {
    type Error;
    /// The environment id of `ip` (an IPv4-mapped IPv6 address as the IPv4
    /// address it carries).
    fn env_of(&self, ip: IpAddr) -> Result<u32, Self::Error>;
    /// The kernel's decision ([`envfence_ebpf::decide::decide`]) for a
    /// packet between two environments; `proto` and `dport` are read when
    /// `l4` is `Ports`.
    fn decided(
        &self,
        src_env: u32,
        dst_env: u32,
        l4: L4Seen,
        proto: u8,
        dport: u16,
    ) -> Result<Decided, Self::Error>;
    /// The connection-tracking flags ([`envfence_ebpf::ct`]) of the pair.
    fn pair_ct(&self, src_env: u32, dst_env: u32) -> Result<u8, Self::Error>;
    /// The [`envfence_ebpf::tunnel`] kind of UDP destination port `port`.
    fn tunnel_kind(&self, port: u16) -> u8;
}

impl PolicyTables for CompiledPolicy {
    type Error = std::convert::Infallible;

    fn env_of(&self, ip: IpAddr) -> Result<u32, Self::Error> {
        Ok(self.lookup_env(ip).0)
    }

    fn decided(
        &self,
        src_env: u32,
        dst_env: u32,
        l4: L4Seen,
        proto: u8,
        dport: u16,
    ) -> Result<Decided, Self::Error> {
        Ok(CompiledPolicy::decided(
            self, src_env, dst_env, l4, proto, dport,
        ))
    }

    fn pair_ct(&self, src_env: u32, dst_env: u32) -> Result<u8, Self::Error> {
        Ok(self.pair(src_env, dst_env).map_or(0, |p| p.ct))
    }

    fn tunnel_kind(&self, port: u16) -> u8 {
        self.tunnels.kind(port).map_or(tunnel::NONE, |k| k.as_u8())
    }
}

/// What the skb says of a frame beyond its bytes (BPF_PROG_TEST_RUN sets
/// it through the `__sk_buff` context).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Skb {
    /// `skb_shinfo(skb)->gso_size`: non-zero for a GSO / GRO packet, the
    /// only kind the stack gives an IP length of 0 (BIG TCP).
    pub gso_size: u32,
}

/// What a frame that is not IP is, as counted by kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum NonIpKind {
    Arp,
    Lldp,
    /// MPLS whose payload is neither IPv4 nor IPv6.
    Mpls,
    /// PPPoE discovery, or a session carrying neither IPv4 nor IPv6.
    Pppoe,
    Other,
}

impl NonIpKind {
    /// The datapath statistic that counts the kind.
    pub fn stat(self) -> u32 {
        use envfence_ebpf::stat;
        match self {
            NonIpKind::Arp => stat::NON_IP_ARP,
            NonIpKind::Lldp => stat::NON_IP_LLDP,
            NonIpKind::Mpls => stat::NON_IP_MPLS,
            NonIpKind::Pppoe => stat::NON_IP_PPPOE,
            NonIpKind::Other => stat::NON_IP_OTHER,
        }
    }
}

/// How the outer IP packet travelled in its Ethernet frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Encap {
    /// Right after the Ethernet header (and VLAN tags).
    Ethernet,
    /// Under an MPLS label stack.
    Mpls,
    /// In a PPPoE session.
    Pppoe,
}

/// What the datapath does with a frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Not IPv4 or IPv6: counted as non-IP and by kind; passed unless the
    /// policy says `non_ip: drop` (and is in enforce mode).
    NonIp(NonIpKind),
    /// Claims to be IP (or a tunnel) but cannot be read up to its
    /// addresses: dropped in enforce mode, passed in audit mode; counted as
    /// malformed.
    Malformed,
    /// More VLAN tags than the parser walks: handled like malformed.
    VlanTooDeep,
    /// A tunnel inside a tunnel: handled like malformed.
    TunnelTooDeep,
    /// More MPLS labels than the parser walks: handled like malformed.
    MplsTooDeep,
    /// An IP packet, judged by the policy.
    Judged(Judgement),
    /// Its outer source failed the source check of the interface it
    /// entered: counted under `world` and the destination's environment,
    /// dropped in enforce mode, passed in audit mode.
    Spoofed(Spoofed),
}

/// A packet refused by the source check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Spoofed {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub dst_env: u32,
    /// What the check found (`envfence_ebpf::source`).
    pub found: rpf::SourceFound,
}

/// The verdict on one IP packet, from the layer that decided it: the outer
/// packet, or a tunnel's inner packet when its verdict is stricter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Judgement {
    pub family: u8,
    pub proto: u8,
    pub src: IpAddr,
    pub dst: IpAddr,
    /// Ports, or ICMP type and code; 0 when unknown.
    pub sport: u16,
    pub dport: u16,
    pub l4: L4Seen,
    pub src_env: u32,
    pub dst_env: u32,
    pub verdict: u8,
    pub rule: u16,
    /// The packet carried a tunnelled IP packet (judged too).
    pub tunneled: bool,
    /// The inner packet's verdict decided.
    pub by_inner: bool,
    /// The deciding layer is a non-first fragment.
    pub fragment: bool,
    /// The deciding layer's IPv6 extension-header chain was too long.
    pub ext_too_deep: bool,
    /// How the outer packet travelled.
    pub encap: Encap,
    /// Some layer's length field was 0 and its length came from the skb.
    pub len_from_skb: bool,
    /// Some layer was an IPv6 jumbogram.
    pub jumbo: bool,
    /// Some layer had a routing header with a final destination.
    pub routed: bool,
    /// The verdict is that of a routing header's final destination (`dst`
    /// is that destination).
    pub by_final: bool,
}

impl Outcome {
    /// Whether the datapath lets the frame through under `policy`.
    pub fn passes(&self, policy: &CompiledPolicy) -> bool {
        self.passes_under(policy.mode == Mode::Audit, policy.non_ip == NonIp::Drop)
    }

    /// Whether the datapath lets the frame through under a policy in audit
    /// mode or not, whose `non_ip` is `drop` or not.
    pub fn passes_under(&self, audit: bool, non_ip_drop: bool) -> bool {
        match self {
            Outcome::NonIp(_) => !non_ip_drop || audit,
            Outcome::Malformed
            | Outcome::VlanTooDeep
            | Outcome::TunnelTooDeep
            | Outcome::MplsTooDeep => audit,
            Outcome::Judged(j) => j.verdict != verdict::DROP,
            Outcome::Spoofed(_) => audit,
        }
    }
}

impl NonIpKind {
    /// The kind of a non-IP frame whose EtherType (or, for MPLS and PPPoE
    /// not carrying IP, theirs) is `l2_type`: the kernel's statistic.
    fn of(l2_type: u16) -> Self {
        match walk::non_ip_stat(l2_type) {
            stat::NON_IP_ARP => NonIpKind::Arp,
            stat::NON_IP_LLDP => NonIpKind::Lldp,
            stat::NON_IP_MPLS => NonIpKind::Mpls,
            stat::NON_IP_PPPOE => NonIpKind::Pppoe,
            _ => NonIpKind::Other,
        }
    }
}

/// The tunnel ports of a policy, as the walk asks them.
type TunnelKindOf<'a> = &'a dyn Fn(u16) -> u8;

/// A frame as the walk reads it in userspace: its bytes (all of them
/// readable, like a linear skb; a captured frame cut by its snap length is
/// longer than them, like a non-linear skb), whether the skb is GSO, and
/// the policy's tunnel ports.
pub struct SliceFrame<'a> {
    bytes: &'a [u8],
    len: usize,
    gso: bool,
    tunnels: TunnelKindOf<'a>,
}

impl<'a> SliceFrame<'a> {
    /// The frame `bytes` whose skb says `skb`, under the tunnel ports
    /// `tunnels` ([`PolicyTables::tunnel_kind`]).
    pub fn new(bytes: &'a [u8], skb: Skb, tunnels: TunnelKindOf<'a>) -> Self {
        SliceFrame {
            bytes,
            len: bytes.len(),
            gso: skb.gso_size != 0,
            tunnels,
        }
    }

    /// The frame is `len` bytes long of which `bytes` were captured (`len`
    /// below their length is taken as their length).
    pub fn with_len(mut self, len: usize) -> Self {
        self.len = len.max(self.bytes.len());
        self
    }
}

impl Frame for SliceFrame<'_> {
    #[inline(always)]
    fn packet_len(&self) -> usize {
        self.len
    }

    #[inline(always)]
    fn bytes<const N: usize>(&self, off: usize) -> Option<&[u8; N]> {
        self.bytes.get(off..off.checked_add(N)?)?.try_into().ok()
    }

    #[inline(always)]
    fn byte(&self, off: usize) -> Option<u8> {
        self.bytes.get(off).copied()
    }

    #[inline(always)]
    fn gso(&self) -> bool {
        self.gso
    }

    #[inline(always)]
    fn tunnel_kind(&self, _slot: u32, port: u16) -> Option<u8> {
        Some((self.tunnels)(port))
    }
}

/// Walks `frame` (`len` bytes on the wire) as the kernel's hook does.
fn parse<T: PolicyTables>(
    frame: &[u8],
    len: usize,
    skb: Skb,
    tables: &T,
) -> Result<Packet, Outcome> {
    let mut pkt = Packet::default();
    let kind = |port: u16| tables.tunnel_kind(port);
    let f = SliceFrame::new(frame, skb, &kind).with_len(len);
    match walked::parse(&f, &mut pkt, 0) {
        Ok(()) => Ok(pkt),
        Err(Reject::NonIp) => Err(Outcome::NonIp(NonIpKind::of(pkt.l2_type))),
        Err(Reject::Malformed) => Err(Outcome::Malformed),
        Err(Reject::VlanTooDeep) => Err(Outcome::VlanTooDeep),
        Err(Reject::TunnelTooDeep) => Err(Outcome::TunnelTooDeep),
        Err(Reject::MplsTooDeep) => Err(Outcome::MplsTooDeep),
    }
}

/// An address of a layer of `fam` (IPv4 in the first 4 bytes).
fn address(fam: u8, a: &[u8; 16]) -> IpAddr {
    if fam == family::V4 {
        IpAddr::V4(Ipv4Addr::new(a[0], a[1], a[2], a[3]))
    } else {
        IpAddr::V6(Ipv6Addr::from(*a))
    }
}

/// Never fails: the compiled policy's lookups.
fn infallible<T>(r: Result<T, std::convert::Infallible>) -> T {
    match r {
        Ok(t) => t,
        Err(never) => match never {},
    }
}

/// Classifies one Ethernet frame as the kernel program does, for a frame
/// that is not a GSO packet.
pub fn classify(frame: &[u8], policy: &CompiledPolicy) -> Outcome {
    classify_skb(frame, Skb::default(), policy)
}

/// Classifies one Ethernet frame whose skb says `skb`.
pub fn classify_skb(frame: &[u8], skb: Skb, policy: &CompiledPolicy) -> Outcome {
    infallible(classify_with(
        frame,
        frame.len(),
        skb,
        policy,
        &mut |_, _| None,
    ))
}

/// Classifies one Ethernet frame (not a GSO packet) entering interface
/// `ifindex` of `node`: a frame the parser can read up to its addresses
/// has its outer source checked first ([`rpf::Node::check`]); a refused
/// one is [`Outcome::Spoofed`], never judged under the environment it
/// claims.
pub fn classify_on(
    frame: &[u8],
    policy: &CompiledPolicy,
    node: &rpf::Node,
    ifindex: u32,
) -> Outcome {
    infallible(classify_with(
        frame,
        frame.len(),
        Skb::default(),
        policy,
        &mut |src, dst| node.check(ifindex, src, dst),
    ))
}

/// The outer packet's (source, destination), when the frame (not a GSO
/// packet) can be read up to its addresses: what the source check looks at.
pub fn outer_addresses(frame: &[u8], policy: &CompiledPolicy) -> Option<(IpAddr, IpAddr)> {
    let pkt = parse(frame, frame.len(), Skb::default(), policy).ok()?;
    Some(outer_of(&pkt))
}

/// Classifies one Ethernet frame, `len` bytes on the wire of which `frame`
/// was captured, whose skb says `skb`, by the policy's `tables`. `check`
/// is the source check of the outer (source, destination) of a frame the
/// parser can read up to its addresses (None: not checked); a refused one
/// is [`Outcome::Spoofed`].
pub fn classify_with<T: PolicyTables>(
    frame: &[u8],
    len: usize,
    skb: Skb,
    tables: &T,
    check: &mut dyn FnMut(IpAddr, IpAddr) -> Option<rpf::SourceFound>,
) -> Result<Outcome, T::Error> {
    match walk(frame, len, skb, tables) {
        Ok(pkt) => judge_walked(&pkt, tables, check),
        Err(outcome) => Ok(outcome),
    }
}

/// The kernel's header walk of one Ethernet frame (see [`classify_with`]):
/// the parsed packet, or the outcome of a frame that is not judged.
pub fn walk<T: PolicyTables>(
    frame: &[u8],
    len: usize,
    skb: Skb,
    tables: &T,
) -> Result<Packet, Outcome> {
    parse(frame, len, skb, tables)
}

/// The outer (source, destination) of a walked packet.
pub fn outer_of(pkt: &Packet) -> (IpAddr, IpAddr) {
    let o = &pkt.outer;
    (address(o.family, &o.src), address(o.family, &o.dst))
}

/// The outcome of a packet [`walk`] parsed (see [`classify_with`]).
pub fn judge_walked<T: PolicyTables>(
    pkt: &Packet,
    tables: &T,
    check: &mut dyn FnMut(IpAddr, IpAddr) -> Option<rpf::SourceFound>,
) -> Result<Outcome, T::Error> {
    let outer = &pkt.outer;
    let (src, dst) = outer_of(pkt);
    if let Some(found) = check(src, dst) {
        if !envfence_ebpf::source::accepted(found.result) {
            return Ok(Outcome::Spoofed(Spoofed {
                src,
                dst,
                dst_env: tables.env_of(dst)?,
                found,
            }));
        }
    }
    let mut judged = judge_all(outer, tables)?;
    let mut by_inner = false;
    let inner = pkt.has_inner.then_some(&pkt.inner);
    if let Some(inner) = inner {
        let j = judge_all(inner, tables)?;
        if j.verdict > judged.verdict {
            judged = j;
            by_inner = true;
        }
    }
    let (mut len_from_skb, mut jumbo, mut routed) = (false, false, false);
    for l in std::iter::once(outer).chain(inner) {
        len_from_skb |= l.len_from_skb;
        jumbo |= l.jumbo;
        routed |= l.has_final;
    }
    judged.tunneled = pkt.has_inner;
    judged.by_inner = by_inner;
    judged.encap = match pkt.encap {
        ENCAP_MPLS => Encap::Mpls,
        ENCAP_PPPOE => Encap::Pppoe,
        _ => Encap::Ethernet,
    };
    judged.len_from_skb = len_from_skb;
    judged.jumbo = jumbo;
    judged.routed = routed;
    Ok(Outcome::Judged(judged))
}

/// A layer judged for where it is going now and, with a routing header,
/// for where it ends up: the stricter verdict, the current destination's on
/// a tie.
fn judge_all<T: PolicyTables>(layer: &Layer, tables: &T) -> Result<Judgement, T::Error> {
    let now = judge(layer, &layer.dst, tables)?;
    if !layer.has_final {
        return Ok(now);
    }
    let mut last = judge(layer, &layer.final_dst, tables)?;
    Ok(if last.verdict > now.verdict {
        last.by_final = true;
        last
    } else {
        now
    })
}

fn judge<T: PolicyTables>(
    layer: &Layer,
    dst: &[u8; 16],
    tables: &T,
) -> Result<Judgement, T::Error> {
    let src = address(layer.family, &layer.src);
    let dst = address(layer.family, dst);
    let src_env = tables.env_of(src)?;
    let dst_env = tables.env_of(dst)?;
    let d = tables.decided(src_env, dst_env, layer.l4, layer.proto, layer.dport)?;
    Ok(Judgement {
        family: layer.family,
        proto: layer.proto,
        src,
        dst,
        sport: layer.sport,
        dport: layer.dport,
        l4: layer.l4,
        src_env,
        dst_env,
        verdict: d.verdict,
        rule: d.rule,
        tunneled: false,
        by_inner: false,
        fragment: layer.fragment,
        ext_too_deep: layer.ext_too_deep,
        encap: Encap::Ethernet,
        len_from_skb: false,
        jumbo: false,
        routed: false,
        by_final: false,
    })
}

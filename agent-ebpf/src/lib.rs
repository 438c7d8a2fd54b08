//! The kernel-user ABI of envfence: every map name, global, key (the
//! classifier's table layout included: [`trie`]), value and event that crosses between the eBPF
//! programs (`src/main.rs`) and the agent lives here, and only here.
//!
//! Modules beside it hold the logic both sides run: [`walk`], the header
//! walk, [`quote`], the packet an ICMP error quotes, [`classify`], the
//! environment of an address (the walk of the [`trie`] tables), [`decide`], the
//! policy decision, and [`ct_rules`], what a verdict and a RST do to a
//! tracked flow. The crate is `no_std`
//! so the eBPF side can use it; the `user` feature adds the `aya::Pod`
//! impls the agent needs to read and write the maps.
#![cfg_attr(not(test), no_std)]

pub mod classify;
pub mod ct_rules;
pub mod decide;
pub mod quote;
pub mod walk;

pub use walk::L4;

/// Bumped whenever a map layout, key, value or event below changes. Pinned
/// state lives in a directory named after it.
pub const ABI_VERSION: u32 = 9;

/// Environment ids are `0..MAX_ENVS`; id 0 means "in no environment" (the
/// policy calls it `world`).
pub const MAX_ENVS: u32 = 64;
/// Number of verdict values (see [`verdict`]): the four policy verdicts and
/// the datapath's own `spoofed`, `reply` and `related`.
pub const NUM_VERDICTS: u32 = 7;

/// The policy maps hold two policies, slot 0 and slot 1; the datapath reads
/// the slot [`Config::active_slot`] names, once per packet. A reload writes
/// the other slot, then flips `active_slot`: no packet is ever judged by a
/// mix of two policies.
pub const SLOTS: u32 = 2;

/// Verdicts, ordered from the most to the least permissive: the stricter of
/// two verdicts is the larger number.
pub mod verdict {
    /// Pass, no event.
    pub const ALLOW: u8 = 0;
    /// Pass and report the flow.
    pub const LOG: u8 = 1;
    /// Would drop: pass and report the flow (rule verdict `audit`, or any
    /// drop under global mode `audit`).
    pub const AUDIT: u8 = 2;
    /// Drop and report the flow.
    pub const DROP: u8 = 3;
    /// Not a policy verdict: the packet's source address failed the source
    /// check of the interface it entered ([`super::source`]). Dropped in
    /// enforce mode, passed in audit mode; reported either way, and counted
    /// under source environment 0 (`world`), never the one it claims.
    pub const SPOOFED: u8 = 4;
    /// Not a policy verdict: a packet in the reply direction of a tracked
    /// flow the policy let through ([`super::ct`]). Passed; counted under
    /// the reply's environments and the forward flow's rule. Replies of a
    /// `log` flow are carried in that flow's reports; other replies add no
    /// events.
    pub const REPLY: u8 = 5;
    /// Not a policy verdict: an ICMP/ICMPv6 error (destination unreachable,
    /// packet too big, time exceeded, parameter problem) quoting a packet
    /// of a tracked flow, sent back to that packet's source. Passed and
    /// counted like [`REPLY`].
    pub const RELATED: u8 = 6;

    /// The name used in events and metrics (`unknown` for other values).
    pub const fn name(v: u8) -> &'static str {
        match v {
            ALLOW => "allow",
            LOG => "log",
            AUDIT => "audit",
            DROP => "drop",
            SPOOFED => "spoofed",
            REPLY => "reply",
            RELATED => "related",
            _ => "unknown",
        }
    }
}

/// The source check ("reverse-path filter") of an attached interface: at
/// its ingress, the packet's source must be one the node reaches back
/// through that interface.
pub mod source {
    /// Mode: no check.
    pub const OFF: u8 = 0;
    /// Mode: the kernel's FIB must have a unicast route to the source,
    /// through any interface (uplinks with asymmetric routing).
    pub const LOOSE: u8 = 1;
    /// Mode: the FIB's best route to the source must leave through the
    /// interface the packet entered, or (when the interface trusts its
    /// peer's addresses) the source is an address configured on the other
    /// end of the interface ([`super::map_names::PEERS`]).
    pub const STRICT: u8 = 2;

    /// Why a source passed or failed (events, `explain`).
    /// Not checked: egress, or the interface's mode is `off`.
    pub const NOT_CHECKED: u8 = 0;
    /// Accepted: the FIB's route to the source leaves through this
    /// interface (strict) or exists (loose).
    pub const OK_ROUTE: u8 = 1;
    /// Accepted: the source is one of the peer's addresses.
    pub const OK_PEER: u8 = 2;
    /// Accepted: an unspecified source (`0.0.0.0`, `::`) to a multicast or
    /// broadcast destination (DHCP, IPv6 duplicate address detection, MLD),
    /// or an IPv6 link-local source to a link-local or multicast
    /// destination (neighbour discovery): traffic that never leaves the
    /// link and that no route can verify.
    pub const OK_LINK_SCOPE: u8 = 3;
    /// Accepted without a check: loose mode on an interface that does not
    /// forward (the FIB helper cannot answer there); counted.
    pub const OK_UNVERIFIED: u8 = 4;
    /// Refused: the best route to the source leaves through another
    /// interface (its ifindex is in the event).
    pub const OTHER_INTERFACE: u8 = 5;
    /// Refused: the route to the source is unreachable, blackhole or
    /// prohibit.
    pub const NO_ROUTE: u8 = 6;
    /// Refused: no unicast route the node would forward to: none at all,
    /// or the source is one of the node's own addresses (local, broadcast,
    /// link-scope).
    pub const NOT_FORWARDABLE: u8 = 7;
    /// Refused: strict mode on an interface that does not forward (the FIB
    /// helper refuses to answer: fail closed).
    pub const FORWARDING_DISABLED: u8 = 8;
    /// Refused: a source that no honest packet carries (multicast,
    /// broadcast, loopback, or unspecified towards a unicast destination;
    /// a link-local source towards a global destination).
    pub const MARTIAN: u8 = 9;

    /// Whether a result accepts the source.
    pub const fn accepted(result: u8) -> bool {
        result <= OK_UNVERIFIED
    }

    /// The name of a mode in policy files, metrics and `status`.
    pub const fn mode_name(mode: u8) -> &'static str {
        match mode {
            OFF => "off",
            LOOSE => "loose",
            STRICT => "strict",
            _ => "unknown",
        }
    }

    /// The name of a result in events and `explain`.
    pub const fn result_name(result: u8) -> &'static str {
        match result {
            NOT_CHECKED => "not-checked",
            OK_ROUTE => "route",
            OK_PEER => "peer-address",
            OK_LINK_SCOPE => "link-scope",
            OK_UNVERIFIED => "unverified",
            OTHER_INTERFACE => "route-via-other-interface",
            NO_ROUTE => "no-route",
            NOT_FORWARDABLE => "no-unicast-route",
            FORWARDING_DISABLED => "forwarding-disabled",
            MARTIAN => "martian",
            _ => "unknown",
        }
    }
}

/// Connection tracking: flows the policy let through, so that their replies
/// pass even where the reverse direction's rule says otherwise.
///
/// A flow is tracked only where tracking changes a verdict: its packets were
/// judged `allow` or `log` and the reverse environment pair is not allowed
/// for every packet (the compiled pair carries [`OPENS`]). A packet is looked
/// up only when its own pair is not allowed for every packet ([`REPLIES`]).
/// The table ([`super::map_names::CONNTRACK`]) is keyed by the normalized
/// 5-tuple ([`super::CtKey`]); each entry remembers who opened the flow,
/// its protocol state, when it expires, and the policy generation and rule
/// that allowed it. An entry judged under another generation is judged
/// again by the policy in force before it lets anything through.
pub mod ct {
    use super::proto;

    /// [`super::PairVerdict::ct`]: packets of this pair that the policy
    /// passes (`allow`, `log`) open tracked flows (the reverse pair is not
    /// allowed for every packet).
    pub const OPENS: u8 = 1;
    /// [`super::PairVerdict::ct`]: packets of this pair may be replies or
    /// related to a tracked flow (the pair is not allowed for every packet).
    pub const REPLIES: u8 = 2;

    /// [`super::CtEntry::opener`]: endpoint `a` of the key opened the flow.
    pub const SIDE_A: u8 = 0;
    /// Endpoint `b` opened the flow.
    pub const SIDE_B: u8 = 1;

    /// UDP, SCTP, ICMP echo: only the opener has sent.
    pub const NEW: u8 = 1;
    /// UDP, SCTP, ICMP echo: a reply was seen.
    pub const REPLIED: u8 = 2;
    /// TCP: opened by a SYN, no reply yet.
    pub const TCP_SYN_SENT: u8 = 3;
    /// TCP: a reply was seen (or the flow was picked up mid-stream by an
    /// allowed non-SYN packet).
    pub const TCP_ESTABLISHED: u8 = 4;
    /// Flag on a TCP state: the opener sent a FIN.
    pub const FIN_OPENER: u8 = 0x10;
    /// Flag on a TCP state: the responder sent a FIN.
    pub const FIN_RESPONDER: u8 = 0x20;
    /// The state without its FIN flags.
    pub const BASE_MASK: u8 = 0x0f;

    /// Timeouts ([`super::Config::ct_timeout_s`]), by index.
    pub const T_TCP_SYN: usize = 0;
    pub const T_TCP_ESTABLISHED: usize = 1;
    /// One side sent a FIN (half closed).
    pub const T_TCP_FIN_WAIT: usize = 2;
    /// Both sides sent a FIN: the last ACKs and retransmissions.
    pub const T_TCP_CLOSED: usize = 3;
    pub const T_UDP: usize = 4;
    pub const T_SCTP: usize = 5;
    pub const T_ICMP: usize = 6;
    /// Number of timeouts.
    pub const TIMEOUTS: usize = 7;
    /// Policy names of the timeouts (`conntrack.timeouts.<name>`).
    pub const TIMEOUT_NAMES: [&str; TIMEOUTS] = [
        "tcp_syn",
        "tcp_established",
        "tcp_fin_wait",
        "tcp_closed",
        "udp",
        "sctp",
        "icmp",
    ];
    /// Default timeouts in seconds (the policy may override each).
    pub const DEFAULT_TIMEOUT_S: [u32; TIMEOUTS] = [60, 21_600, 120, 10, 60, 300, 30];
    /// Largest timeout a policy may set: 7 days.
    pub const MAX_TIMEOUT_S: u32 = 7 * 24 * 3600;

    /// The timeout that applies to a flow of `proto` in `state`.
    pub const fn timeout_index(p: u8, state: u8) -> usize {
        if p == proto::TCP {
            let fins = state & (FIN_OPENER | FIN_RESPONDER);
            if fins == FIN_OPENER | FIN_RESPONDER {
                T_TCP_CLOSED
            } else if fins != 0 {
                T_TCP_FIN_WAIT
            } else if state & BASE_MASK == TCP_SYN_SENT {
                T_TCP_SYN
            } else {
                T_TCP_ESTABLISHED
            }
        } else if p == proto::UDP {
            T_UDP
        } else if p == proto::SCTP {
            T_SCTP
        } else {
            T_ICMP
        }
    }

    /// The name of a flow's state in `status` and the API.
    pub const fn state_name(p: u8, state: u8) -> &'static str {
        if p == proto::TCP {
            match timeout_index(p, state) {
                T_TCP_CLOSED => "tcp-closed",
                T_TCP_FIN_WAIT => "tcp-fin-wait",
                T_TCP_SYN => "tcp-syn-sent",
                _ => "tcp-established",
            }
        } else if state == REPLIED {
            "replied"
        } else {
            "new"
        }
    }
}

/// Rule id used when no rule decided (the policy's `default`).
pub const RULE_DEFAULT: u16 = 0;
/// Rule id of events whose packet failed the source check (named
/// `source-check`; not a policy rule, no rule counter).
pub const RULE_SOURCE_CHECK: u16 = u16::MAX;

/// Declares the name constants of [`map_names`] and, for the eBPF
/// programs, `abi_map!`, which declares a map under one of those names
/// (`abi_map!(PAIRS, static PAIRS: Array<PairVerdict> = ...;)`): every
/// map name is written here once.
macro_rules! define_map_names {
    ($d:tt $( $(#[$doc:meta])* $name:ident = $lit:tt; )*) => {
        /// Map names, as the eBPF object names them (at most 15 bytes each).
        pub mod map_names {
            $( $(#[$doc])* pub const $name: &str = $lit; )*
        }

        /// Declares an eBPF map (`#[aya_ebpf::macros::map]`) under its
        /// [`map_names`] name. For the eBPF programs only.
        #[macro_export]
        macro_rules! abi_map {
            $( ($name, $d item:item) => {
                #[aya_ebpf::macros::map(name = $lit)]
                $d item
            }; )*
        }
    };
}

define_map_names! { $
    /// Array of [`super::Chunk`]: the IPv4 classifier's chunks (and its
    /// skips, four to a chunk), one pool of [`super::trie::CHUNKS`] for
    /// both slots: slot `s`'s tables start at
    /// [`super::trie::slot_base`] (their first
    /// [`super::trie::ROOT_CHUNKS`] are the root).
    ENV_V4 = "EF_ENV_V4";
    /// Array of [`super::Chunk`]: the IPv6 classifier's chunks, laid out
    /// as [`ENV_V4`]'s.
    ENV_V6 = "EF_ENV_V6";
    /// Array of [`super::TriePrefix`]: the IPv4 prefixes a leaf names
    /// (read by `explain`, never by the datapath), slot `s` from
    /// [`super::trie::prefix_base`].
    PREFIX_V4 = "EF_PFX_V4";
    /// Array of [`super::TriePrefix`]: the IPv6 prefixes a leaf names.
    PREFIX_V6 = "EF_PFX_V6";
    /// Array indexed by [`super::slot_pair_index`]: verdict of an
    /// environment pair.
    PAIRS = "EF_PAIRS";
    /// Hash: [`super::PortKey`] -> [`super::RuleVerdict`], the port rules.
    PORTS = "EF_PORTS";
    /// Per-CPU array indexed by [`super::counter_index`]: [`super::Counter`].
    COUNTERS = "EF_COUNTERS";
    /// Per-CPU array indexed by [`super::rule_counter_index`]:
    /// [`super::Counter`] per deciding rule and verdict.
    RULE_COUNTERS = "EF_RULE_CNT";
    /// Per-CPU array indexed by [`super::stat`]: u64 datapath statistics.
    STATS = "EF_STATS";
    /// Array with one [`super::Config`].
    CONFIG = "EF_CONFIG";
    /// Hash: ifindex -> 1 for every interface envfence is attached to.
    ATTACHED = "EF_ATTACHED";
    /// Hash: ifindex -> [`super::IfConfig`], the source check of every
    /// attached interface per policy slot. Written before the interface's
    /// programs are attached; an interface without an entry is checked
    /// strictly, routes only (fail closed).
    IFCONF = "EF_IFCONF";
    /// Hash: [`super::PeerKey`] -> 1, the addresses configured on the other
    /// end of each attached veth (learned from the peer's namespace).
    PEERS = "EF_PEERS";
    /// LRU hash: [`super::FlowKey`] -> [`super::FlowState`], when a reported
    /// flow was last reported and what it did since.
    FLOWS = "EF_FLOWS";
    /// Ring buffer of [`super::Event`].
    EVENTS = "EF_EVENTS";
    /// Per-CPU scratch space of the parser: the packet the hook parsed, read
    /// by the decision stage (kernel-internal, pinned: see
    /// [`super::STAGE_DECIDE`]).
    SCRATCH = "EF_SCRATCH";
    /// Per-CPU direct-mapped array of [`super::VerdictSlot`]: the verdict
    /// of a recent flow under a policy generation (a CPU-cache-like table:
    /// the slot is a hash of the key; a collision just evicts).
    VERDICTS = "EF_VERDICTS";
    /// Array of [`super::TunnelPorts`] indexed by
    /// [`super::tunnel_ports_index`]: which UDP destination ports are which
    /// tunnel, per policy slot (written whole at every install).
    TUNNEL_PORTS = "EF_TUNNEL_PORTS";
    /// Hash: [`super::CtKey`] -> [`super::CtEntry`], the tracked flows
    /// ([`super::ct`]). Expired entries are reused by their flow or removed
    /// by the agent's sweeper; when the table is full new flows are judged
    /// without state (their replies by the policy), counted under
    /// [`super::stat::CONNTRACK_FULL`].
    CONNTRACK = "EF_CONNTRACK";
    /// Per-CPU scratch space of the connection tracker (kernel-internal).
    CT_SCRATCH = "EF_CT_SCRATCH";
    /// Per-CPU array of one slot of six words: what the classifier's walks
    /// read (kernel-internal: two addresses' (high, low) bits, see
    /// [`super::trie::words_v6`], then the IPv4 and IPv6 tables' bases).
    CLASSIFY_ARG = "EF_CLASSIFY";
    /// Program array: the hooks' second stage ([`super::STAGE_DECIDE`]).
    /// Pinned with the maps, so the pinned hooks keep their second stage
    /// while no agent runs.
    STAGES = "EF_STAGES";
}

/// Declares the name constants of [`globals`] and, for the eBPF programs,
/// `abi_global!`, which declares a global under one of those names
/// (`abi_global!(CONNTRACK, static CONNTRACK: u32 = 1;)`).
macro_rules! define_globals {
    ($d:tt $( $(#[$doc:meta])* $name:ident = $lit:tt; )*) => {
        /// Global variables of the eBPF object, set at load time.
        pub mod globals {
            $( $(#[$doc])* pub const $name: &str = $lit; )*
            /// `u8`; aya-log's level (0 off … 5 trace); off by default
            /// (declared by aya-log-ebpf, not by envfence's programs).
            pub const AYA_LOG_LEVEL: &str = "AYA_LOG_LEVEL";
        }

        /// Declares a global of the eBPF object under its [`globals`]
        /// name. For the eBPF programs only.
        #[macro_export]
        macro_rules! abi_global {
            $( ($name, $d item:item) => {
                #[unsafe(export_name = $lit)]
                $d item
            }; )*
        }
    };
}

define_globals! { $
    /// `u32`; when non-zero, every packet's decision is written into
    /// `skb->mark` (see [`super::tag`]). For tests, benchmarks and debugging
    /// only: it overwrites the whole mark, which other programs may use.
    DEBUG_TAG_DECISION = "DEBUG_TAG_DECISION";
    /// `u32`; when 0 the verdict cache is not used (benchmarks compare).
    VERDICT_CACHE = "VERDICT_CACHE";
    /// `u32`; when 0 no flow is tracked (every packet is judged on its own,
    /// as the stateless reference classifier does; the per-packet
    /// differential tests use it, benchmarks compare).
    CONNTRACK = "CONNTRACK";
}

/// Encoding of the decision written into `skb->mark` under
/// [`globals::DEBUG_TAG_DECISION`].
pub mod tag {
    /// High byte of a judged packet's tag; then verdict, src env, dst env.
    pub const JUDGED: u32 = 0xEF00_0000;
    /// High byte of a frame not judged by policy; the low byte says why.
    pub const UNJUDGED: u32 = 0xEE00_0000;
    pub const REASON_NON_IP: u32 = 1;
    pub const REASON_MALFORMED: u32 = 2;
    pub const REASON_VLAN_TOO_DEEP: u32 = 3;
    pub const REASON_TUNNEL_TOO_DEEP: u32 = 4;
    pub const REASON_MPLS_TOO_DEEP: u32 = 5;
    /// The decision stage was missing (see [`super::stat::STAGE_MISSING`]).
    pub const REASON_STAGE_MISSING: u32 = 6;

    #[inline(always)]
    pub const fn judged(verdict: u8, src_env: u32, dst_env: u32) -> u32 {
        JUDGED | ((verdict as u32) << 16) | ((src_env & 0xff) << 8) | (dst_env & 0xff)
    }
}

/// Program names (the functions in `src/main.rs`).
pub mod program_names {
    pub const INGRESS: &str = "envfence_ingress";
    pub const EGRESS: &str = "envfence_egress";
    /// An empty TC program (returns TCX_NEXT), the benchmarks' baseline.
    pub const EMPTY: &str = "envfence_empty";
    /// The second stage of both hooks: judges the packet the hook parsed
    /// (tail-called through [`super::map_names::STAGES`] at
    /// [`super::STAGE_DECIDE`]).
    pub const DECIDE: &str = "envfence_decide";
}

/// Index of [`program_names::DECIDE`] in [`map_names::STAGES`].
///
/// Why two stages: the verifier walks every path of a program, and every
/// path through the header walk (VLAN tags, MPLS, PPPoE, tunnels, extension
/// headers) times every path through the decision (source check, policy,
/// connection tracking, reports) exceeds its one-million-instruction budget.
/// The hooks parse into the per-CPU scratch packet and tail-call the
/// decision, which the verifier then walks once for any parsed packet. The
/// stage table and the scratch packet ([`map_names::SCRATCH`]) are pinned:
/// a hook of one agent may call the stage of the next (same ABI version:
/// the scratch packet's layout is part of the ABI, see
/// [`SCRATCH_PACKET_BYTES`]).
pub const STAGE_DECIDE: u32 = 0;

/// Size of the parser's scratch packet ([`walk::Packet`], asserted there):
/// changing it (or its layout) changes the ABI version.
pub const SCRATCH_PACKET_BYTES: usize = 192;

/// Capacities: what one policy may hold (the maps hold two slots of it).
pub mod capacity {
    pub const ENV_V4: u32 = 131_072;
    pub const ENV_V6: u32 = 131_072;
    pub const PORTS: u32 = 65_536;
    pub const ATTACHED: u32 = 4_096;
    /// Peer addresses over all attached interfaces.
    pub const PEERS: u32 = 65_536;
    pub const FLOWS: u32 = 65_536;
    /// Tracked flows.
    pub const CONNTRACK: u32 = 131_072;
    /// Slots of the per-CPU verdict cache (a power of two).
    pub const VERDICTS: u32 = 8_192;
    /// Bytes of the event ring buffer (a power of two, multiple of the page).
    pub const EVENTS_BYTES: u32 = 1 << 22;
}

/// Indexes of the per-CPU statistics array.
pub mod stat {
    /// Events written to the ring buffer.
    pub const EVENTS_EMITTED: u32 = 0;
    /// Events that could not be reserved in the ring buffer (lost).
    pub const EVENTS_LOST: u32 = 1;
    /// Frames that are not IPv4 or IPv6 (ARP, LLDP, ...): passed.
    pub const NON_IP: u32 = 2;
    /// IP frames whose headers are inconsistent or truncated before the
    /// addresses: dropped in enforce mode, passed in audit mode.
    pub const MALFORMED: u32 = 3;
    /// Frames with more VLAN tags than the parser walks: treated as
    /// malformed.
    pub const VLAN_TOO_DEEP: u32 = 4;
    /// Packets passed by egress because their ingress interface already
    /// judged them (counted once per node).
    pub const EGRESS_SKIPPED: u32 = 5;
    /// Non-first fragments: judged on addresses with the pair's strictest
    /// verdict.
    pub const FRAGMENTS: u32 = 6;
    /// IPv6 packets whose extension-header chain is longer than the parser
    /// walks: judged on addresses with the pair's strictest verdict.
    pub const IPV6_EXT_TOO_DEEP: u32 = 7;
    /// Tunnels inside tunnels: treated as malformed.
    pub const TUNNEL_TOO_DEEP: u32 = 8;
    /// Tunnelled packets whose inner addresses were judged too.
    pub const TUNNELED: u32 = 9;
    /// Packets refused by a strict source check (dropped in enforce mode).
    pub const SPOOFED_STRICT: u32 = 10;
    /// Packets refused by a loose source check.
    pub const SPOOFED_LOOSE: u32 = 11;
    /// Packets a loose check let through unverified (interface does not
    /// forward: the FIB helper cannot answer).
    pub const SOURCE_UNVERIFIED: u32 = 12;
    /// Packets a strict check accepted through a peer address (not the
    /// routing table).
    pub const SOURCE_BY_PEER: u32 = 13;
    /// Non-IP frames by kind (each also counts in [`NON_IP`]): ARP.
    pub const NON_IP_ARP: u32 = 14;
    /// LLDP.
    pub const NON_IP_LLDP: u32 = 15;
    /// MPLS whose payload (after the bottom of the label stack) is neither
    /// IPv4 nor IPv6 (pseudowires, OAM).
    pub const NON_IP_MPLS: u32 = 16;
    /// PPPoE discovery, and PPPoE sessions carrying something other than
    /// IPv4 / IPv6 (LCP, IPCP ...).
    pub const NON_IP_PPPOE: u32 = 17;
    /// Every other EtherType (and 802.3 length fields).
    pub const NON_IP_OTHER: u32 = 18;
    /// Non-IP frames dropped because the policy says `non_ip: drop`
    /// (enforce mode only).
    pub const NON_IP_DROPPED: u32 = 19;
    /// IP packets judged inside an MPLS label stack.
    pub const MPLS: u32 = 20;
    /// IP packets judged inside a PPPoE session.
    pub const PPPOE: u32 = 21;
    /// IP layers whose length field is 0 in a GSO packet (BIG TCP): judged
    /// with the length taken from the skb.
    pub const LENGTH_FROM_SKB: u32 = 22;
    /// IPv6 jumbograms (RFC 2675) judged with the Jumbo Payload length.
    pub const JUMBOGRAMS: u32 = 23;
    /// IPv6 layers with a routing header (type 0, 2 or 4) whose final
    /// destination was judged too.
    pub const ROUTING_FINAL: u32 = 24;
    /// MPLS label stacks deeper than the parser walks: treated as
    /// malformed.
    pub const MPLS_TOO_DEEP: u32 = 25;
    /// Tracked flows opened.
    pub const CONNTRACK_NEW: u32 = 26;
    /// Flows that could not be tracked because the table was full (judged
    /// without state: their replies are judged by the policy).
    pub const CONNTRACK_FULL: u32 = 27;
    /// Tracked flows ended because the policy in force no longer allows
    /// them (a reload).
    pub const CONNTRACK_POLICY_ENDED: u32 = 28;
    /// Tracked TCP flows ended by a RST.
    pub const CONNTRACK_RESET: u32 = 29;
    /// Packets that found their flow's entry expired.
    pub const CONNTRACK_EXPIRED: u32 = 30;
    /// Parsed packets whose second stage could not be called (an empty
    /// stage table: never in a loaded agent); dropped unless in audit mode.
    pub const STAGE_MISSING: u32 = 31;
    /// Number of statistics.
    pub const COUNT: u32 = 32;

    /// (index, name) of every statistic, named as in the metrics
    /// (`envfence_datapath_total{kind}`) and `status`.
    pub const NAMES: [(u32, &str); COUNT as usize] = [
        (EVENTS_EMITTED, "events_emitted"),
        (EVENTS_LOST, "events_lost"),
        (NON_IP, "non_ip"),
        (MALFORMED, "malformed"),
        (VLAN_TOO_DEEP, "vlan_too_deep"),
        (EGRESS_SKIPPED, "egress_already_judged"),
        (FRAGMENTS, "fragments"),
        (IPV6_EXT_TOO_DEEP, "ipv6_ext_too_deep"),
        (TUNNEL_TOO_DEEP, "tunnel_too_deep"),
        (TUNNELED, "tunneled"),
        (SPOOFED_STRICT, "spoofed_strict"),
        (SPOOFED_LOOSE, "spoofed_loose"),
        (SOURCE_UNVERIFIED, "source_unverified"),
        (SOURCE_BY_PEER, "source_by_peer_address"),
        (NON_IP_ARP, "non_ip_arp"),
        (NON_IP_LLDP, "non_ip_lldp"),
        (NON_IP_MPLS, "non_ip_mpls"),
        (NON_IP_PPPOE, "non_ip_pppoe"),
        (NON_IP_OTHER, "non_ip_other"),
        (NON_IP_DROPPED, "non_ip_dropped"),
        (MPLS, "mpls"),
        (PPPOE, "pppoe"),
        (LENGTH_FROM_SKB, "ip_length_from_skb"),
        (JUMBOGRAMS, "ipv6_jumbograms"),
        (ROUTING_FINAL, "ipv6_routing_final_judged"),
        (MPLS_TOO_DEEP, "mpls_too_deep"),
        (CONNTRACK_NEW, "conntrack_new"),
        (CONNTRACK_FULL, "conntrack_full"),
        (CONNTRACK_POLICY_ENDED, "conntrack_ended_by_policy"),
        (CONNTRACK_RESET, "conntrack_reset"),
        (CONNTRACK_EXPIRED, "conntrack_expired"),
        (STAGE_MISSING, "stage_missing"),
    ];
}

/// IP protocol numbers the datapath knows.
pub mod proto {
    pub const HOPOPTS: u8 = 0;
    pub const ICMP: u8 = 1;
    pub const IPIP: u8 = 4;
    pub const TCP: u8 = 6;
    pub const UDP: u8 = 17;
    pub const DCCP: u8 = 33;
    pub const IPV6: u8 = 41;
    pub const ROUTING: u8 = 43;
    pub const FRAGMENT: u8 = 44;
    pub const GRE: u8 = 47;
    pub const ESP: u8 = 50;
    pub const AH: u8 = 51;
    pub const ICMPV6: u8 = 58;
    pub const DSTOPTS: u8 = 60;
    pub const SCTP: u8 = 132;
    pub const MOBILITY: u8 = 135;
    pub const HIP: u8 = 139;
    pub const SHIM6: u8 = 140;
}

/// Header sizes and ethertypes the header walk ([`walk`]) reads.
pub mod wire {
    pub const ETH_HLEN: usize = 14;
    pub const VLAN_HLEN: usize = 4;
    pub const IPV6_HLEN: usize = 40;
    pub const ETH_P_IP: u16 = 0x0800;
    pub const ETH_P_IPV6: u16 = 0x86dd;
    pub const ETH_P_8021Q: u16 = 0x8100;
    pub const ETH_P_8021AD: u16 = 0x88a8;
    /// Transparent Ethernet bridging (GRE, Geneve carrying Ethernet).
    pub const ETH_P_TEB: u16 = 0x6558;
    pub const ETH_P_ARP: u16 = 0x0806;
    pub const ETH_P_LLDP: u16 = 0x88cc;
    /// MPLS unicast and multicast (RFC 3032): a stack of 4-byte labels.
    pub const ETH_P_MPLS_UC: u16 = 0x8847;
    pub const ETH_P_MPLS_MC: u16 = 0x8848;
    pub const MPLS_HLEN: usize = 4;
    /// PPPoE discovery and session stages (RFC 2516).
    pub const ETH_P_PPP_DISC: u16 = 0x8863;
    pub const ETH_P_PPP_SES: u16 = 0x8864;
    /// The PPPoE header (version/type, code, session id, length).
    pub const PPPOE_HLEN: usize = 6;
    /// PPP protocol numbers of IPv4 and IPv6 (RFC 1332, RFC 5072).
    pub const PPP_IP: u16 = 0x0021;
    pub const PPP_IPV6: u16 = 0x0057;
    /// VXLAN-GPE next-protocol values (IPv4, IPv6, Ethernet).
    pub const GPE_IPV4: u8 = 1;
    pub const GPE_IPV6: u8 = 2;
    pub const GPE_ETHERNET: u8 = 3;
    /// The RFC 2675 Jumbo Payload hop-by-hop option.
    pub const IPV6_OPT_JUMBO: u8 = 0xc2;
}

/// What a UDP destination port is, per policy ([`map_names::TUNNEL_PORTS`]).
pub mod tunnel {
    pub const NONE: u8 = 0;
    /// VXLAN (RFC 7348): 8-byte header, Ethernet inside.
    pub const VXLAN: u8 = 1;
    /// Geneve (RFC 8926): header with options, protocol type inside.
    pub const GENEVE: u8 = 2;
    /// VXLAN-GPE: VXLAN header with a next-protocol field.
    pub const VXLAN_GPE: u8 = 3;

    /// The name of a kind in policy files and `explain`.
    pub const fn name(kind: u8) -> &'static str {
        match kind {
            VXLAN => "vxlan",
            GENEVE => "geneve",
            VXLAN_GPE => "vxlan-gpe",
            _ => "none",
        }
    }
}

/// Ports covered by one entry of [`map_names::TUNNEL_PORTS`].
pub const TUNNEL_PORTS_PER_ENTRY: u32 = 256;
/// Entries of [`map_names::TUNNEL_PORTS`] per policy slot.
pub const TUNNEL_ENTRIES_PER_SLOT: u32 = 65_536 / TUNNEL_PORTS_PER_ENTRY;

/// Index of the entry of (slot, UDP port) in [`map_names::TUNNEL_PORTS`];
/// the port's kind is byte `port % 256` of it.
#[inline(always)]
pub const fn tunnel_ports_index(slot: u32, port: u16) -> u32 {
    (slot & 1) * TUNNEL_ENTRIES_PER_SLOT + (port as u32 >> 8)
}

/// 256 consecutive UDP ports' [`tunnel`] kinds.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TunnelPorts {
    pub kind: [u8; 256],
}

impl Default for TunnelPorts {
    fn default() -> Self {
        TunnelPorts { kind: [0; 256] }
    }
}

/// Bounds of the header walk ([`walk`]).
pub mod parse_limits {
    /// Headers are read only within this many bytes of the frame start;
    /// beyond, they count as truncated.
    pub const MAX_OFFSET: usize = 448;
    /// Bytes pulled into the linear skb area before parsing.
    pub const PULL_LEN: u32 = 512;
    /// IPv6 extension headers walked before the chain counts as too deep.
    pub const MAX_IPV6_EXT: usize = 6;
    /// MPLS labels walked before the stack counts as too deep.
    pub const MAX_MPLS_LABELS: usize = 6;
}

/// The layout of the classifier's tables ([`map_names::ENV_V4`] and the
/// maps beside it), which [`crate::classify`] walks and the agent's
/// compiler (`agent/src/policy/classifier.rs`) writes: a multibit trie
/// with leaf pushing, a stride of 16 bits at the root and 4 below it, whose
/// chains of one-way nodes are compressed into skip records.
///
/// An entry (a `u32`) is one of three things, told by its top two bits:
/// - a leaf ([`TAG_LEAF`]): environment id in the low [`ENV_BITS`] bits,
///   then the prefix's index + 1 in the policy's sorted prefix list
///   ([`crate::TriePrefix`]; 0: no prefix, the address is in `world`);
/// - a chunk ([`TAG_CHUNK`]): the index (within the slot) of the
///   [`crate::Chunk`] whose entry the next 4 address bits select;
/// - a skip ([`TAG_SKIP`]): chunk index << 2 | quarter of the skip record
///   to compare the next bits with. A record is a quarter of a chunk (four
///   entries): the bits to compare (high word, low word), the entry the
///   walk goes on at when they are equal, and the leaf it ends at when
///   not | their length << [`LEN_SHIFT`]. Skips and chunks share one map,
///   so that the kernel's walk reads one map per step.
///
/// Sizes are fixed at load: a compressed trie of `n` prefixes has at most
/// `2n - 1` chunks below the root (each holds a prefix's end or splits
/// paths) and at most two skips above each of them (a chain is cut at bit
/// 64): `n` chunks of skips, so [`SLOT_CHUNKS`] holds every policy
/// [`crate::capacity`] admits, and the pool of [`CHUNKS`] any two that fit
/// side by side.
pub mod trie {
    use crate::capacity;

    /// Address bits the root resolves (its 65,536 entries).
    pub const ROOT_BITS: u32 = 16;
    /// Address bits a chunk resolves.
    pub const STRIDE: u32 = 4;
    /// Entries of a chunk.
    pub const FANOUT: usize = 1 << STRIDE;
    /// Chunks of the root, the first of every slot.
    pub const ROOT_CHUNKS: u32 = 1 << (ROOT_BITS - STRIDE);
    /// Most chunk or skip steps below the root: IPv4.
    pub const STEPS_V4: usize = ((32 - ROOT_BITS) / STRIDE) as usize;
    /// Most chunk or skip steps below the root: IPv6.
    pub const STEPS_V6: usize = ((128 - ROOT_BITS) / STRIDE) as usize;
    /// Where an entry's tag starts.
    pub const TAG_SHIFT: u32 = 30;
    /// Tag of a leaf.
    pub const TAG_LEAF: u32 = 0;
    /// Tag of a chunk reference.
    pub const TAG_CHUNK: u32 = 1;
    /// Tag of a skip reference.
    pub const TAG_SKIP: u32 = 2;
    /// The index bits of a chunk or skip reference.
    pub const INDEX_MASK: u32 = (1 << TAG_SHIFT) - 1;
    /// Bits of a leaf's environment id.
    pub const ENV_BITS: u32 = 6;
    /// The bits of a leaf (a skip's miss entry holds its length above).
    pub const LEAF_MASK: u32 = (1 << LEN_SHIFT) - 1;
    /// Where a skip's length (in bits) starts in its miss entry.
    pub const LEN_SHIFT: u32 = 24;
    /// Bits of a skip reference that name its quarter of the chunk.
    pub const SKIP_QUARTER_BITS: u32 = 2;
    /// Entries of one skip record.
    pub const SKIP_ENTRIES: usize = 4;
    /// Most bits one skip compares: a skip never crosses bit 64.
    pub const MAX_SKIP_BITS: u32 = 64;

    /// Most chunks one policy's tables of one family take: the root, `2n`
    /// chunks, and `4n` skips four to a chunk.
    pub const SLOT_CHUNKS: u32 = ROOT_CHUNKS + 3 * capacity::ENV_V4;

    /// Chunks of one family's pool, shared by both slots: the policy in
    /// force and the one being installed must fit side by side (one that
    /// does not is refused, and the one in force stays). Two policies of
    /// `2n` chunks each fit: the mixed shape takes 1.83 chunks a prefix
    /// (IPv6), so two of them at [`crate::capacity`] do; a worst-case
    /// policy ([`SLOT_CHUNKS`]) fits beside any of a root and `n` chunks. A pool
    /// per slot sized for the worst case would take 49% more memory.
    pub const CHUNKS: u32 = 2 * (ROOT_CHUNKS + 2 * capacity::ENV_V4);

    /// Where the tables of `slot`, `len` chunks, start in the pool: slot 0
    /// at the pool's start, slot 1 ending at its end, so that the tables
    /// of both slots stay whole while they fit together (`len` of both at
    /// most [`CHUNKS`]: what an install checks).
    #[inline(always)]
    pub const fn slot_base(slot: u32, len: u32) -> u32 {
        if slot & 1 == 0 {
            0
        } else {
            CHUNKS.saturating_sub(len)
        }
    }

    const _: () = assert!(capacity::ENV_V4 == capacity::ENV_V6);
    const _: () = assert!((capacity::ENV_V4 as u64 + 1) << ENV_BITS <= LEAF_MASK as u64 + 1);
    const _: () = assert!(CHUNKS << SKIP_QUARTER_BITS <= INDEX_MASK);

    /// A leaf: environment `env`, prefix number `prefix` (index + 1; 0 for
    /// none).
    #[inline(always)]
    pub const fn leaf(env: u32, prefix: u32) -> u32 {
        (env & ((1 << ENV_BITS) - 1)) | (prefix << ENV_BITS)
    }

    /// A reference to chunk `index`.
    #[inline(always)]
    pub const fn chunk(index: u32) -> u32 {
        (TAG_CHUNK << TAG_SHIFT) | (index & INDEX_MASK)
    }

    /// A reference to the skip in quarter `quarter` (0..4) of chunk
    /// `chunk`.
    #[inline(always)]
    pub const fn skip(chunk: u32, quarter: u32) -> u32 {
        (TAG_SKIP << TAG_SHIFT) | (((chunk << SKIP_QUARTER_BITS) | (quarter & 3)) & INDEX_MASK)
    }

    /// The environment id of a leaf.
    #[inline(always)]
    pub const fn leaf_env(leaf: u32) -> u32 {
        leaf & ((1 << ENV_BITS) - 1)
    }

    /// The prefix number (index + 1, 0 for none) of a leaf.
    #[inline(always)]
    pub const fn leaf_prefix(leaf: u32) -> u32 {
        (leaf & LEAF_MASK) >> ENV_BITS
    }

    /// The map index of prefix 0 of `slot`.
    #[inline(always)]
    pub const fn prefix_base(slot: u32) -> u32 {
        (slot & 1) * capacity::ENV_V4
    }

    /// The 128 address bits a walk reads, as (high, low) words: an IPv4
    /// address fills the top 32 bits.
    #[inline(always)]
    pub fn words_v4(a: [u8; 4]) -> (u64, u64) {
        ((u32::from_be_bytes(a) as u64) << 32, 0)
    }

    /// The (high, low) words of an IPv6 address.
    #[inline(always)]
    pub fn words_v6(a: &[u8; 16]) -> (u64, u64) {
        let mut hi = [0u8; 8];
        let mut lo = [0u8; 8];
        hi.copy_from_slice(&a[..8]);
        lo.copy_from_slice(&a[8..]);
        (u64::from_be_bytes(hi), u64::from_be_bytes(lo))
    }
}

pub mod family {
    pub const V4: u8 = 4;
    pub const V6: u8 = 6;
}

/// Event directions.
pub mod direction {
    pub const INGRESS: u8 = 0;
    pub const EGRESS: u8 = 1;
}

/// Index of an environment pair in the [`map_names::PAIRS`] array.
#[inline(always)]
pub const fn pair_index(src_env: u32, dst_env: u32) -> u32 {
    src_env * MAX_ENVS + dst_env
}

/// Index of a (src env, dst env, verdict) cell in [`map_names::COUNTERS`].
#[inline(always)]
pub const fn counter_index(src_env: u32, dst_env: u32, verdict: u32) -> u32 {
    pair_index(src_env, dst_env) * NUM_VERDICTS + verdict
}

/// Index of an environment pair of policy `slot` in [`map_names::PAIRS`].
#[inline(always)]
pub const fn slot_pair_index(slot: u32, src_env: u32, dst_env: u32) -> u32 {
    slot * PAIRS_LEN + pair_index(src_env, dst_env)
}

/// Number of pairs of one policy.
pub const PAIRS_LEN: u32 = MAX_ENVS * MAX_ENVS;
/// Rule ids with a counter of their own in [`map_names::RULE_COUNTERS`];
/// higher ids share the last one.
pub const COUNTED_RULES: u32 = 1024;

/// Index of a (rule, verdict) cell in [`map_names::RULE_COUNTERS`].
#[inline(always)]
pub const fn rule_counter_index(rule: u32, verdict: u32) -> u32 {
    let r = if rule < COUNTED_RULES {
        rule
    } else {
        COUNTED_RULES - 1
    };
    r * NUM_VERDICTS + verdict
}

/// Number of entries of the [`map_names::RULE_COUNTERS`] array.
pub const RULE_COUNTERS_LEN: u32 = COUNTED_RULES * NUM_VERDICTS;

/// Number of entries of the [`map_names::COUNTERS`] array.
pub const COUNTERS_LEN: u32 = PAIRS_LEN * NUM_VERDICTS;

/// The compiled verdict of one (src env, dst env) pair.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PairVerdict {
    /// Verdict when no port rule matches (or the protocol has no ports).
    pub verdict: u8,
    /// Verdict for a port-bearing protocol whose ports cannot be read (a
    /// non-first fragment, a truncated or unwalked L4 header): the strictest
    /// of `verdict` and every port rule of the pair, so that neither a pair
    /// rule nor a port rule can be walked around by hiding the ports.
    pub no_port_verdict: u8,
    /// 1 when [`map_names::PORTS`] holds entries for this pair.
    pub has_port_rules: u8,
    /// Connection-tracking flags of the pair ([`ct::OPENS`],
    /// [`ct::REPLIES`]).
    pub ct: u8,
    /// Rule that decided `verdict` ([`RULE_DEFAULT`] for the default).
    pub rule: u16,
    /// Rule that decided `no_port_verdict`.
    pub no_port_rule: u16,
}

/// Key of a port rule: destination port of TCP, UDP or SCTP.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PortKey {
    pub src_env: u8,
    pub dst_env: u8,
    pub proto: u8,
    /// Policy slot (0 or 1).
    pub slot: u8,
    /// Destination port, host byte order.
    pub port: u16,
    pub _pad2: u16,
}

impl PortKey {
    /// The key of the port rule of (`src_env`, `dst_env`, `proto`,
    /// destination `port`) in policy `slot`. Ids and slot are truncated to
    /// their fields: callers pass ids below [`MAX_ENVS`] and a slot of 0 or
    /// 1.
    #[inline(always)]
    pub fn new(slot: u32, src_env: u32, dst_env: u32, proto: u8, port: u16) -> Self {
        PortKey {
            src_env: src_env as u8,
            dst_env: dst_env as u8,
            proto,
            slot: slot as u8,
            port,
            _pad2: 0,
        }
    }
}

/// 16 classifier entries ([`trie`]): the next 4 address bits pick one.
/// One cache line.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Chunk {
    pub entries: [u32; trie::FANOUT],
}

impl Default for Chunk {
    fn default() -> Self {
        Chunk {
            entries: [0; trie::FANOUT],
        }
    }
}

/// A prefix of the classifier, named by a leaf (for `explain`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TriePrefix {
    /// The network address (IPv4: the first 4 bytes).
    pub addr: [u8; 16],
    pub len: u8,
    pub env: u8,
    pub _pad: [u8; 2],
}

/// Value of a port rule.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RuleVerdict {
    pub verdict: u8,
    pub _pad: u8,
    pub rule: u16,
}

/// Exact packet and byte counts of one counter cell (per CPU).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counter {
    pub packets: u64,
    /// Bytes as the kernel sees them at TC (`skb->len`, L2 header included).
    pub bytes: u64,
}

/// Global datapath configuration (entry 0 of [`map_names::CONFIG`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Config {
    /// A reported flow is reported again at most once per this interval.
    pub report_interval_ns: u64,
    /// The policy slot the datapath judges with (0 or 1).
    pub active_slot: u32,
    /// Number of policies installed so far (grows by one per reload; kept
    /// across agent restarts with the pinned map).
    pub generation: u32,
    /// Generation of the policy in each slot.
    pub slot_generation: [u32; 2],
    /// Per slot: 1 when the policy's mode is `audit` (already folded into
    /// the tables; decides what happens to malformed frames).
    pub slot_audit_mode: [u32; 2],
    /// Per slot: [`config_flags`] of the policy.
    pub slot_flags: [u32; 2],
    /// Per slot, per family (IPv4, IPv6): how many chunks the slot's
    /// classifier tables take; they start at [`trie::slot_base`].
    pub slot_chunks: [[u32; 2]; 2],
    /// Connection-tracking timeouts in seconds, indexed by `ct::T_*`
    /// (written with the flip: the policy in force sets them). A flow's
    /// expiry is computed when one of its packets is seen.
    pub ct_timeout_s: [u32; 8],
}

/// Bits of [`Config::slot_flags`].
pub mod config_flags {
    /// `non_ip: drop`: frames that are not IP are dropped (enforce mode).
    pub const NON_IP_DROP: u32 = 1;
}

/// The source check of one attached interface, per policy slot (the
/// datapath reads the active slot's, so a reload changes it with the rest
/// of the policy).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IfConfig {
    /// [`source`] mode per slot.
    pub mode: [u8; 2],
    /// Per slot: 1 when a strict check accepts the peer's addresses.
    pub trust_peer: [u8; 2],
}

/// Key of [`map_names::PEERS`]: an address configured on the other end of
/// an attached interface.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PeerKey {
    pub ifindex: u32,
    pub family: u8,
    pub _pad: [u8; 3],
    /// IPv4 addresses use the first 4 bytes; the rest are zero.
    pub addr: [u8; 16],
}

/// Identity of a reported flow.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey {
    /// IPv4 addresses use the first 4 bytes; the rest are zero.
    pub src: [u8; 16],
    pub dst: [u8; 16],
    /// Ports (host order); for ICMP the type and code; 0 when unknown.
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    pub family: u8,
    pub verdict: u8,
    pub _pad: u8,
}

/// Key of the verdict cache: what decides a simple packet's verdict (its
/// addresses, protocol and destination port), under one policy generation
/// (so that a reload invalidates every entry at once).
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct VerdictKey {
    pub src: [u8; 16],
    pub dst: [u8; 16],
    /// Destination port of TCP/UDP/SCTP; 0 for protocols without ports.
    pub dport: u16,
    pub proto: u8,
    pub family: u8,
    pub generation: u32,
}

/// A cached decision.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CachedVerdict {
    pub src_env: u8,
    pub dst_env: u8,
    pub verdict: u8,
    /// 1 in a filled entry. A per-CPU entry created on one CPU is zero on
    /// the others: zero means "not cached here".
    pub filled: u8,
    pub rule: u16,
    /// The pair's [`PairVerdict::ct`] flags.
    pub ct: u8,
    pub _pad2: u8,
}

/// One slot of the verdict cache.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VerdictSlot {
    pub key: VerdictKey,
    pub value: CachedVerdict,
}

/// The verdict-cache slot of `key`: a multiply-shift hash of its words.
#[inline(always)]
pub fn verdict_slot(words: &[u64; 5]) -> u32 {
    let mut h = words[0];
    h = (h ^ words[1].rotate_left(23)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    h = (h ^ words[2].rotate_left(41)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    h = (h ^ words[3].rotate_left(7)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    h = (h ^ words[4]).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    ((h >> 32) as u32) & (capacity::VERDICTS - 1)
}

/// What a reported flow did since its last report.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowState {
    pub last_report_ns: u64,
    /// Packets and bytes seen since the last report, not yet reported.
    pub packets: u64,
    pub bytes: u64,
}

/// Key of a tracked flow: its two endpoints in a fixed order, so that both
/// directions find one entry. Endpoint `a` is the one whose (address bytes,
/// port) is the smaller, compared lexicographically (address first, bytes
/// in network order); IPv4-mapped IPv6 addresses are keyed as IPv4. For
/// ICMP echo both ports are the echo identifier.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct CtKey {
    /// IPv4 addresses use the first 4 bytes; the rest are zero.
    pub a: [u8; 16],
    pub b: [u8; 16],
    pub port_a: u16,
    pub port_b: u16,
    pub proto: u8,
    pub family: u8,
    pub _pad: [u8; 2],
}

/// A tracked flow.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CtEntry {
    /// `bpf_ktime_get_ns()` of the flow's last packet that refreshed it
    /// (the opener's allowed packets and the replies).
    pub last_seen_ns: u64,
    /// When the entry stops letting replies through (`last_seen_ns` plus
    /// the timeout of its protocol and state).
    pub expires_ns: u64,
    /// Policy generation the flow was last judged under.
    pub generation: u32,
    /// The rule that allowed the flow.
    pub rule: u16,
    /// The forward packets' verdict: `allow` or `log`.
    pub verdict: u8,
    /// [`ct`] state (and FIN flags for TCP).
    pub state: u8,
    /// [`ct::SIDE_A`] or [`ct::SIDE_B`]: which endpoint of the key opened.
    pub opener: u8,
    /// Environments of the opener and of the responder, under `generation`.
    pub src_env: u8,
    pub dst_env: u8,
    pub _pad: u8,
    pub _pad2: u32,
}

/// One reported flow (log, audit or drop), written to the ring buffer.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Event {
    /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC) of the packet that reported.
    pub ts_ns: u64,
    /// Packets and bytes of the flow since its previous report, this packet
    /// included.
    pub packets: u64,
    pub bytes: u64,
    pub flow: FlowKey,
    pub ifindex: u32,
    pub rule: u16,
    pub src_env: u8,
    pub dst_env: u8,
    pub direction: u8,
    /// Policy slot that judged the packet (names its rule and environments).
    pub slot: u8,
    /// The source check's [`source`] result (`NOT_CHECKED` on egress or
    /// where the mode is `off`).
    pub source_result: u8,
    pub _pad: [u8; 5],
    /// Where the FIB routes the source (ifindex; 0 when it has no route or
    /// was not asked).
    pub route_ifindex: u32,
    pub _pad2: u32,
}

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: all of these are #[repr(C)], made of integers and byte arrays,
    // with explicit padding fields: every bit pattern is valid.
    unsafe impl aya::Pod for PairVerdict {}
    unsafe impl aya::Pod for PortKey {}
    unsafe impl aya::Pod for RuleVerdict {}
    unsafe impl aya::Pod for Counter {}
    unsafe impl aya::Pod for Config {}
    unsafe impl aya::Pod for FlowKey {}
    unsafe impl aya::Pod for FlowState {}
    unsafe impl aya::Pod for Event {}
    unsafe impl aya::Pod for VerdictKey {}
    unsafe impl aya::Pod for CachedVerdict {}
    unsafe impl aya::Pod for VerdictSlot {}
    unsafe impl aya::Pod for IfConfig {}
    unsafe impl aya::Pod for PeerKey {}
    unsafe impl aya::Pod for TunnelPorts {}
    unsafe impl aya::Pod for CtKey {}
    unsafe impl aya::Pod for CtEntry {}
    unsafe impl aya::Pod for Chunk {}
    unsafe impl aya::Pod for TriePrefix {}
}

// Layout checks: the kernel and the agent must agree byte for byte.
const _: () = assert!(core::mem::size_of::<Chunk>() == 64);
const _: () = assert!(core::mem::size_of::<TriePrefix>() == 20);
const _: () = assert!(core::mem::size_of::<PairVerdict>() == 8);
const _: () = assert!(core::mem::size_of::<PortKey>() == 8);
const _: () = assert!(core::mem::size_of::<RuleVerdict>() == 4);
const _: () = assert!(core::mem::size_of::<Counter>() == 16);
const _: () = assert!(core::mem::size_of::<Config>() == 88);
const _: () = assert!(core::mem::size_of::<CtKey>() == 40);
const _: () = assert!(core::mem::size_of::<CtEntry>() == 32);
const _: () = assert!(ct::TIMEOUTS <= 8);
const _: () = assert!(core::mem::size_of::<TunnelPorts>() == 256);
const _: () = assert!(core::mem::size_of::<FlowKey>() == 40);
const _: () = assert!(core::mem::size_of::<FlowState>() == 24);
const _: () = assert!(core::mem::size_of::<VerdictKey>() == 40);
const _: () = assert!(core::mem::size_of::<CachedVerdict>() == 8);
const _: () = assert!(core::mem::size_of::<VerdictSlot>() == 48);
const _: () = assert!(capacity::VERDICTS.is_power_of_two());
const _: () = assert!(core::mem::size_of::<Event>() == 88);
const _: () = assert!(core::mem::size_of::<IfConfig>() == 4);
const _: () = assert!(core::mem::size_of::<PeerKey>() == 24);

//! The conversation differential: generated conversations (TCP handshakes,
//! data, retransmits, reordering, FIN and RST closes, UDP and SCTP
//! request/response, ICMP echo, ICMP errors quoting tracked and untracked
//! packets, replies that try to open, expiry, reloads in the middle of
//! flows, packets on either CPU, IPv4, IPv6 and IPv4-mapped) run through
//! the real programs with connection tracking on (BPF_PROG_TEST_RUN) and
//! through the stateful model (`crate::ctmodel`). Every packet's TC action
//! and decision tag must agree; at the end of every batch the whole
//! tracked-flow table (keys, opener, state, rule, verdict, timeout), the
//! statistics and the reply/related counters must agree too.
//!
//! Used by `tests/tests/conntrack_kernel.rs` and `cargo xtask fuzz`
//! (`envfence-fuzz --conversations N`).

use std::net::IpAddr;

use anyhow::{bail, Context, Result};
use envfence::datapath::{monotonic_ns, Hook};
use envfence::policy::{self, CompiledPolicy};
use envfence_ebpf::{ct, family, proto, stat, tag, verdict, CtEntry, CtKey};

use crate::ctmodel::{flow_id, FlowId, Model, State};
use crate::gen::{mapped, to_hex, v4_pool, v6_pool, Env};
use crate::packet::{ethertype, Ipv4, Ipv6, LenField, Packet};
use crate::rng::{seeded, Draw as _, Rng};
use crate::testrun::{KernelHarness, ACTION_NEXT, ACTION_SHOT};

/// Timeouts of the policies the differential runs with: long (nothing
/// expires by itself during a run: expiry is exercised by ageing) and all
/// different, so that the table comparison sees which one applied.
pub const TIMEOUTS: [u32; 7] = [3601, 86_401, 7201, 3602, 3603, 3604, 3605];

/// The policies a run reloads between: the example policy, without the DNS
/// exception, with production -> test allowed (test -> production flows
/// stop being tracked), with ops -> production dropped, and in audit mode.
pub fn variants() -> Result<Vec<policy::Policy>> {
    let ex = policy::EXAMPLE_POLICY;
    let texts = [
        ex.to_owned(),
        ex.replace("ports: [\"53/udp\", \"53/tcp\"]", "ports: [\"54/udp\"]"),
        ex.replace(
            "    to: [test, dev]\n    verdict: drop",
            "    to: [test, dev]\n    verdict: allow",
        ),
        ex.replace(
            "    to: [production]\n    verdict: log",
            "    to: [production]\n    verdict: drop",
        ),
        ex.replacen("mode: enforce", "mode: audit", 1),
    ];
    let section = format!(
        "conntrack:\n  timeouts:\n{}",
        ct::TIMEOUT_NAMES
            .iter()
            .zip(TIMEOUTS)
            .map(|(n, t)| format!("    {n}: {t}\n"))
            .collect::<String>()
    );
    let mut out = Vec::new();
    for (i, t) in texts.iter().enumerate() {
        if i > 0 && *t == texts[0] {
            bail!("policy variant {i} did not change the example policy");
        }
        let src = format!("{t}\n{section}");
        out.push(
            policy::parse(&src, &format!("variant-{i}"))
                .map_err(|e| anyhow::anyhow!("variant {i}: {e}"))?,
        );
    }
    Ok(out)
}

/// One step of a conversation.
#[derive(Clone, Debug)]
enum Step {
    /// A frame, and whether it goes from the client (false: the server).
    Packet(Vec<u8>),
    /// The flow of the conversation is aged (expired) in kernel and model.
    Age(FlowId),
}

struct Conversation {
    steps: Vec<Step>,
    next: usize,
}

struct Peer {
    addr: IpAddr,
    port: u16,
}

fn pick_env(rng: &mut Rng) -> Env {
    rng.pick(&Env::ALL)
}

fn addr_of(rng: &mut Rng, env: Env, fam: u8) -> IpAddr {
    let i = rng.below(3) as u8;
    match fam {
        0 => IpAddr::from(v4_pool(env, i)),
        1 => IpAddr::from(v6_pool(env, i)),
        _ => IpAddr::from(mapped(v4_pool(env, i))),
    }
}

fn tcp(sport: u16, dport: u16, flags: u8, payload: usize) -> Vec<u8> {
    Packet::data(&vec![0x61; payload])
        .tcp(sport, dport, flags)
        .into_bytes()
}

fn echo(v6: bool, reply: bool, id: u16) -> Vec<u8> {
    let t = match (v6, reply) {
        (false, false) => 8,
        (false, true) => 0,
        (true, false) => 128,
        (true, true) => 129,
    };
    let idb = id.to_be_bytes();
    Packet::icmp(t, 0, [idb[0], idb[1], 0, 1], &[]).into_bytes()
}

fn is_v6(a: IpAddr) -> bool {
    matches!(a, IpAddr::V6(_))
}

/// An IP frame, sometimes with a VLAN tag, IPv4 options or (IPv6) a
/// destination-options extension header before the L4 header.
fn build(rng: &mut Rng, src: IpAddr, dst: IpAddr, p: u8, l4: &[u8]) -> Vec<u8> {
    let vlan = rng.chance(8);
    let vl: &[(u16, u16)] = if vlan { &[(ethertype::VLAN, 7)] } else { &[] };
    let l4 = Packet::data(l4);
    let ip = match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let options = if rng.chance(8) {
                vec![1, 1, 1, 0]
            } else {
                Vec::new()
            };
            l4.ipv4(&Ipv4 {
                src: s.octets(),
                dst: d.octets(),
                proto: p,
                options,
                ..Ipv4::default()
            })
        }
        _ if is_v6(src) && is_v6(dst) && rng.chance(8) => {
            // Destination options, 8 bytes: next header, length 0, PadN.
            l4.push(&[p, 0, 1, 4, 0, 0, 0, 0])
                .ip(src, dst, proto::DSTOPTS)
        }
        _ => l4.ip(src, dst, p),
    };
    ip.ethernet(vl).into_bytes()
}

/// The IP packet (no Ethernet) an ICMP error quotes: the header and the
/// first 8 bytes of `l4`.
pub fn quoted_ip(src: IpAddr, dst: IpAddr, p: u8, l4: &[u8]) -> Vec<u8> {
    let head = Packet::data(&l4[..l4.len().min(8)]);
    match (src, dst) {
        (IpAddr::V4(_), IpAddr::V4(_)) => head.ip(src, dst, p).into_bytes(),
        _ => head
            .ipv6(&Ipv6 {
                src: crate::packet::v6_octets(src),
                dst: crate::packet::v6_octets(dst),
                next: p,
                // The quoted header's payload length is the original's.
                payload_len: LenField::Value(l4.len() as u16),
                ..Ipv6::default()
            })
            .into_bytes(),
    }
}

/// An ICMP (`v6`: ICMPv6) error of `kind` (0: fragmentation needed /
/// packet too big, 1: time exceeded, 2: unreachable) quoting `quoted`.
pub fn icmp_error(v6: bool, kind: usize, quoted: &[u8]) -> Vec<u8> {
    let (t, c) = match (v6, kind % 3) {
        (false, 0) => (3, 4), // fragmentation needed
        (false, 1) => (11, 0),
        (false, _) => (3, 1),
        (true, 0) => (2, 0), // packet too big
        (true, 1) => (3, 0),
        (true, _) => (1, 4),
    };
    let mut h = vec![t, c, 0, 0, 0, 0, 0x05, 0xdc];
    h.extend_from_slice(quoted);
    h
}

fn conversation(rng: &mut Rng) -> Conversation {
    let fam = *[0u8, 0, 0, 1, 1, 2].get(rng.below(6)).unwrap_or(&0);
    // Pairs that matter most, then anything.
    let (ce, se) = match rng.below(8) {
        0 | 1 => (Env::Test, Env::Production),
        2 => (Env::Ops, Env::Production),
        3 => (Env::Production, Env::Test),
        4 => (Env::Production, Env::Ops),
        5 => (Env::Staging, Env::Production),
        _ => (pick_env(rng), pick_env(rng)),
    };
    let c = Peer {
        addr: addr_of(rng, ce, fam),
        port: 40_000 + rng.below(48) as u16,
    };
    let s = Peer {
        addr: addr_of(rng, se, fam),
        port: rng.pick(&[53, 53, 80, 443, 9100, 54]),
    };
    let v6 = is_v6(c.addr);
    let icmp = if v6 { proto::ICMPV6 } else { proto::ICMP };
    let mut pk: Vec<(bool, u8, Vec<u8>)> = Vec::new();
    let kind = rng.below(100);
    let p;
    if kind < 40 {
        p = proto::TCP;
        let (sp, dp) = (c.port, s.port);
        if rng.chance(85) {
            pk.push((true, p, tcp(sp, dp, 0x02, 0)));
        }
        pk.push((false, p, tcp(dp, sp, 0x12, 0)));
        pk.push((true, p, tcp(sp, dp, 0x10, 0)));
        for _ in 0..rng.below(4) {
            pk.push((true, p, tcp(sp, dp, 0x18, rng.below(40))));
            pk.push((false, p, tcp(dp, sp, 0x18, rng.below(40))));
        }
        if rng.chance(10) {
            // The server tries to open a connection back.
            let at = rng.below(pk.len() + 1);
            pk.insert(at, (false, p, tcp(dp, sp, 0x02, 0)));
        }
        match rng.below(4) {
            0 => {
                pk.push((true, p, tcp(sp, dp, 0x11, 0)));
                pk.push((false, p, tcp(dp, sp, 0x11, 0)));
                pk.push((true, p, tcp(sp, dp, 0x10, 0)));
            }
            1 => pk.push((rng.chance(50), p, tcp(sp, dp, 0x04, 0))),
            2 => {
                pk.push((false, p, tcp(dp, sp, 0x04, 0)));
            }
            _ => {}
        }
        if rng.chance(20) {
            // After the close.
            pk.push((false, p, tcp(dp, sp, 0x10, 0)));
        }
        // Fix direction-dependent ports of the RST that may go either way.
        for x in pk.iter_mut() {
            if x.2[13] == 0x04 && !x.0 {
                x.2 = tcp(dp, sp, 0x04, 0);
            }
        }
    } else if kind < 65 || (80..85).contains(&kind) {
        p = if kind < 65 { proto::UDP } else { proto::SCTP };
        let l4 = |a: u16, b: u16| {
            let body = Packet::data(if p == proto::UDP { b"q" } else { b"" });
            if p == proto::UDP {
                body.udp(a, b).into_bytes()
            } else {
                body.sctp(a, b).into_bytes()
            }
        };
        if rng.chance(85) {
            pk.push((true, p, l4(c.port, s.port)));
        }
        for _ in 0..1 + rng.below(3) {
            pk.push((false, p, l4(s.port, c.port)));
            if rng.chance(50) {
                pk.push((true, p, l4(c.port, s.port)));
            }
        }
    } else if kind < 80 {
        p = icmp;
        let id = 7 + rng.below(8) as u16;
        if rng.chance(85) {
            pk.push((true, p, echo(v6, false, id)));
        }
        pk.push((false, p, echo(v6, true, id)));
        if rng.chance(20) {
            pk.push((false, p, echo(v6, false, id)));
            pk.push((true, p, echo(v6, true, id)));
        }
    } else {
        // An ICMP error about a flow (tracked or not).
        p = if rng.chance(50) {
            proto::UDP
        } else {
            proto::TCP
        };
        let fwd = if p == proto::UDP {
            Packet::data(b"big").udp(c.port, s.port).into_bytes()
        } else {
            tcp(c.port, s.port, 0x02, 0)
        };
        if rng.chance(80) {
            pk.push((true, p, fwd.clone()));
        }
        let mut qdport = s.port;
        if rng.chance(15) {
            qdport = qdport.wrapping_add(1);
        }
        let quoted_l4 = if p == proto::UDP {
            Packet::data(b"big").udp(c.port, qdport).into_bytes()
        } else {
            tcp(c.port, qdport, 0x02, 0)
        };
        let q = quoted_ip(c.addr, s.addr, p, &quoted_l4);
        let err = icmp_error(v6, rng.below(3), &q);
        pk.push((false, icmp, err));
    }
    if rng.chance(10) && pk.len() > 2 {
        // Reordering.
        let i = rng.below(pk.len() - 1);
        pk.swap(i, i + 1);
    }
    if rng.chance(10) && !pk.is_empty() {
        // A retransmission.
        let i = rng.below(pk.len());
        let dup = pk[i].clone();
        pk.insert(i + 1, dup);
    }
    let mut steps: Vec<Step> = pk
        .into_iter()
        .map(|(from_client, pr, l4)| {
            let (src, dst) = if from_client {
                (c.addr, s.addr)
            } else {
                (s.addr, c.addr)
            };
            // An error sometimes comes from a router elsewhere, or goes to
            // the wrong host.
            let (src, dst) = if pr == icmp && l4[0] != 0 && l4[0] != 8 && l4[0] < 128 {
                match rng.below(6) {
                    0 => (addr_of(rng, Env::World, fam), dst),
                    1 => {
                        let e = pick_env(rng);
                        (src, addr_of(rng, e, fam))
                    }
                    _ => (src, dst),
                }
            } else {
                (src, dst)
            };
            Step::Packet(build(rng, src, dst, pr, &l4))
        })
        .collect();
    if rng.chance(6) && !steps.is_empty() {
        let (a, b, v4) = endpoints(&c, &s);
        let (cp, sp) = if p == icmp { (0, 0) } else { (c.port, s.port) };
        if p != icmp {
            let (id, _) = flow_id((a, cp), (b, sp), p, v4);
            let at = rng.below(steps.len());
            steps.insert(at, Step::Age(id));
        }
    }
    Conversation { steps, next: 0 }
}

fn endpoints(c: &Peer, s: &Peer) -> ([u8; 16], [u8; 16], bool) {
    let key = |a: IpAddr| -> ([u8; 16], bool) {
        match a {
            IpAddr::V4(v) => {
                let mut x = [0u8; 16];
                x[..4].copy_from_slice(&v.octets());
                (x, true)
            }
            IpAddr::V6(v) => match v.to_ipv4_mapped() {
                Some(m) => {
                    let mut x = [0u8; 16];
                    x[..4].copy_from_slice(&m.octets());
                    (x, true)
                }
                None => (v.octets(), false),
            },
        }
    };
    let (a, v4) = key(c.addr);
    let (b, _) = key(s.addr);
    (a, b, v4)
}

fn kernel_key(id: &FlowId) -> CtKey {
    CtKey {
        a: id.a.0,
        b: id.b.0,
        port_a: id.a.1,
        port_b: id.b.1,
        proto: id.proto,
        family: if id.v4 { family::V4 } else { family::V6 },
        _pad: [0; 2],
    }
}

/// How a run went.
#[derive(Debug, Default)]
pub struct Report {
    pub conversations: u64,
    pub packets: u64,
    pub replies: u64,
    pub related: u64,
    pub reloads: u64,
    pub aged: u64,
    pub mismatches: Vec<String>,
    pub mismatched_packets: u64,
}

/// Runs `conversations` conversations (seeded) through `h` (a stateful
/// harness) and the model.
pub fn run(h: &mut KernelHarness, conversations: u64, seed: u64) -> Result<Report> {
    run_with(
        h,
        conversations,
        seed,
        true,
        envfence_ebpf::capacity::CONNTRACK,
    )
}

/// [`run`]; `mirror_ageing: false` ages flows in the model only (the
/// self-test: the run must then report disagreements).
pub fn run_with(
    h: &mut KernelHarness,
    conversations: u64,
    seed: u64,
    mirror_ageing: bool,
    capacity: u32,
) -> Result<Report> {
    let variants = variants()?;
    h.reload(&variants[0])?;
    h.datapath_mut().clear_conntrack()?;
    let mut model = Model::new(TIMEOUTS, capacity as usize);
    let mut rng = seeded(seed);
    let mut report = Report::default();
    let base_stats = stats(h)?;
    let base_counts = (
        h.verdict_total(verdict::REPLY)?,
        h.verdict_total(verdict::RELATED)?,
    );
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    const ACTIVE: usize = 4;
    const BATCH: u64 = 1000;
    let mut active: Vec<Conversation> = (0..ACTIVE).map(|_| conversation(&mut rng)).collect();
    let mut started = ACTIVE as u64;
    while report.conversations < conversations {
        let i = rng.below(active.len());
        let conv = &mut active[i];
        if conv.next >= conv.steps.len() {
            report.conversations += 1;
            *conv = conversation(&mut rng);
            started += 1;
            if report.conversations.is_multiple_of(BATCH) {
                compare_tables(h, &model, &mut report)?;
                h.datapath_mut().clear_conntrack()?;
                model.flows.clear();
            }
            if started.is_multiple_of(700) {
                let v = rng.below(variants.len());
                h.reload(&variants[v])?;
                model.reloaded();
                report.reloads += 1;
            }
            continue;
        }
        let step = conv.steps[conv.next].clone();
        conv.next += 1;
        match step {
            Step::Age(id) => {
                model.age(&id);
                let key = kernel_key(&id);
                let entry = h
                    .datapath_mut()
                    .conntrack_entries()?
                    .into_iter()
                    .find(|(k, _)| *k == key);
                if let Some((k, mut e)) = entry.filter(|_| mirror_ageing) {
                    e.expires_ns = 1;
                    h.datapath_mut().set_conntrack_entry(k, e)?;
                }
                report.aged += 1;
            }
            Step::Packet(f) => {
                let now = monotonic_ns();
                let said = model.judge(&f, &h.policy, now);
                let egress = rng.chance(20);
                let cpu = rng.below(cpus);
                let got = if egress {
                    h.run_tagged(Hook::Egress, &f, 0)?
                } else {
                    h.run_on_cpu(Hook::Ingress, &f, cpu)?
                };
                let want_action = if said.pass { ACTION_NEXT } else { ACTION_SHOT };
                let want_mark = said.judged.map_or(0, |(v, s, d)| tag::judged(v, s, d));
                report.packets += 1;
                if let Some((v, _, _)) = said.judged {
                    if v == verdict::REPLY {
                        report.replies += 1;
                    } else if v == verdict::RELATED {
                        report.related += 1;
                    }
                }
                if said.judged.is_some() && (got.0, got.1) != (want_action, want_mark) {
                    report.mismatched_packets += 1;
                    if report.mismatches.len() < 20 {
                        report.mismatches.push(format!(
                            "conversation {} step {} ({}): kernel {:#x}/{:#010x}, model {:#x}/{:#010x} {:?}\n  {}",
                            report.conversations,
                            conv.next,
                            if egress { "egress" } else { "ingress" },
                            got.0,
                            got.1,
                            want_action,
                            want_mark,
                            said,
                            to_hex(&f)
                        ));
                    }
                }
            }
        }
    }
    compare_tables(h, &model, &mut report)?;
    let now_stats = stats(h)?;
    let kernel: Vec<u64> = now_stats
        .iter()
        .zip(&base_stats)
        .map(|(a, b)| a - b)
        .collect();
    let m = model.stats;
    let want = [m.new, m.full, m.policy_ended, m.reset, m.expired];
    if kernel != want {
        report.mismatches.push(format!(
            "statistics new/full/policy_ended/reset/expired: kernel {kernel:?}, model {want:?}"
        ));
    }
    let counts = (
        h.verdict_total(verdict::REPLY)? - base_counts.0,
        h.verdict_total(verdict::RELATED)? - base_counts.1,
    );
    if counts != (report.replies, report.related) {
        report.mismatches.push(format!(
            "reply/related counters: kernel {counts:?}, model {:?}",
            (report.replies, report.related)
        ));
    }
    Ok(report)
}

fn stats(h: &KernelHarness) -> Result<Vec<u64>> {
    [
        stat::CONNTRACK_NEW,
        stat::CONNTRACK_FULL,
        stat::CONNTRACK_POLICY_ENDED,
        stat::CONNTRACK_RESET,
        stat::CONNTRACK_EXPIRED,
    ]
    .iter()
    .map(|s| h.stat(*s))
    .collect()
}

/// A table entry as both sides can state it.
type Row = (CtKey, u8, u8, u16, u8, u8, u8, u64);

fn compare_tables(h: &mut KernelHarness, model: &Model, report: &mut Report) -> Result<()> {
    let mut kernel: Vec<Row> = h
        .datapath_mut()
        .conntrack_entries()
        .context("reading the kernel's table")?
        .into_iter()
        .map(|(k, e): (CtKey, CtEntry)| {
            let timeout = if e.expires_ns <= 1 {
                0
            } else {
                (e.expires_ns - e.last_seen_ns) / 1_000_000_000
            };
            (
                k, e.opener, e.state, e.rule, e.verdict, e.src_env, e.dst_env, timeout,
            )
        })
        .collect();
    let mut want: Vec<Row> = model
        .flows
        .iter()
        .map(|(id, f)| {
            let k = kernel_key(id);
            let opener = if f.opener == id.a {
                ct::SIDE_A
            } else {
                ct::SIDE_B
            };
            let mut state = match f.state {
                State::New => ct::NEW,
                State::Replied => ct::REPLIED,
                State::SynSent => ct::TCP_SYN_SENT,
                State::Established => ct::TCP_ESTABLISHED,
            };
            if f.fin_opener {
                state |= ct::FIN_OPENER;
            }
            if f.fin_responder {
                state |= ct::FIN_RESPONDER;
            }
            let timeout = if f.expires <= 1 {
                0
            } else {
                (f.expires - f.last_seen) / 1_000_000_000
            };
            (
                k,
                opener,
                state,
                f.rule,
                f.verdict,
                f.src_env as u8,
                f.dst_env as u8,
                timeout,
            )
        })
        .collect();
    kernel.sort_by_key(|r| (r.0.a, r.0.b, r.0.port_a, r.0.port_b, r.0.proto));
    want.sort_by_key(|r| (r.0.a, r.0.b, r.0.port_a, r.0.port_b, r.0.proto));
    if kernel != want {
        let only_k: Vec<&Row> = kernel
            .iter()
            .filter(|r| !want.contains(r))
            .take(5)
            .collect();
        let only_m: Vec<&Row> = want
            .iter()
            .filter(|r| !kernel.contains(r))
            .take(5)
            .collect();
        report.mismatches.push(format!(
            "tables differ after {} conversations ({} kernel rows, {} model rows)\n  kernel only: {only_k:?}\n  model only: {only_m:?}",
            report.conversations,
            kernel.len(),
            want.len()
        ));
    }
    Ok(())
}

/// The policy of variant 0, compiled (the harness is loaded with it).
pub fn first_policy() -> Result<CompiledPolicy> {
    Ok(policy::compile(&variants()?[0]))
}

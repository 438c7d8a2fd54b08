//! Runs crafted frames through the real eBPF programs with BPF_PROG_TEST_RUN
//! and reports what the kernel did: its TC action and which counter cell
//! moved by how much. Also a small frame builder.

use anyhow::{bail, Context as _};
use aya::{
    maps::{MapData, RingBuf},
    programs::{TestRun as _, TestRunOptions},
};
use envfence::{
    datapath::{CounterReader, Datapath, Hook, LoadOptions},
    events::{drain, EventContext, EventRecord},
    policy::{CompiledPolicy, SourceCheck},
};
use envfence_ebpf::{stat, NUM_VERDICTS};

/// `sizeof(struct __sk_buff)` and the offsets TestRun lets us set or read.
pub const SKB_CTX_LEN: usize = 192;
const SKB_MARK: usize = 8;
const SKB_INGRESS_IFINDEX: usize = 36;
pub const SKB_IFINDEX: usize = 40;
const SKB_GSO_SEGS: usize = 164;
const SKB_GSO_SIZE: usize = 176;

/// The ifindex TestRun frames enter through when the context names none
/// (the namespace's `lo`).
pub const LO_IFINDEX: u32 = 1;

/// `TCX_NEXT` as the kernel returns it through TestRun.
pub const ACTION_NEXT: u32 = u32::MAX;
/// `TC_ACT_SHOT`.
pub const ACTION_SHOT: u32 = 2;

/// The real programs loaded with a policy, ready for TestRun.
pub struct KernelHarness {
    dp: Datapath,
    counters: std::sync::Arc<CounterReader>,
    events: RingBuf<MapData>,
    pub policy: CompiledPolicy,
}

/// A counter cell: (src env, dst env, verdict, packets, bytes).
pub type Cell = (u32, u32, u8, u64, u64);

/// What the kernel did with one frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelResult {
    pub action: u32,
    /// `skb->mark` after the run: the decision tag (`envfence_ebpf::tag`).
    pub mark: u32,
    /// Counter cells that moved: (src env, dst env, verdict, packets, bytes).
    pub moved: Vec<Cell>,
    /// Statistics that moved: (stat index, delta).
    pub stats_moved: Vec<(u32, u64)>,
}

impl KernelHarness {
    /// Loads the programs and writes `policy` into their maps, connection
    /// tracking off: every frame is judged on its own, as the stateless
    /// reference classifier judges it. Needs root.
    pub fn new(policy: CompiledPolicy) -> anyhow::Result<Self> {
        Self::load(policy, true, None)
    }

    /// [`KernelHarness::new`] with connection tracking on, as the agent
    /// runs: the stateful tests compare it with `crate::ctmodel`.
    pub fn stateful(policy: CompiledPolicy) -> anyhow::Result<Self> {
        Self::load(policy, false, None)
    }

    /// [`KernelHarness::stateful`] with a tracked-flow table of `capacity`
    /// entries.
    pub fn stateful_with_capacity(policy: CompiledPolicy, capacity: u32) -> anyhow::Result<Self> {
        Self::load(policy, false, Some(capacity))
    }

    fn load(
        policy: CompiledPolicy,
        no_conntrack: bool,
        conntrack_capacity: Option<u32>,
    ) -> anyhow::Result<Self> {
        let mut dp = Datapath::load_with(LoadOptions {
            debug_tag_decision: true,
            pin_root: None,
            no_verdict_cache: false,
            no_conntrack,
            conntrack_capacity,
            log_level: 0,
        })
        .context("loading the eBPF programs (root needed)")?;
        dp.apply_policy(&policy, None, std::time::Duration::from_secs(3600))?;
        // TestRun frames enter through `lo`: no source check there unless a
        // test asks for one ([`KernelHarness::datapath`]).
        dp.set_source_check(LO_IFINDEX, SourceCheck::OFF)?;
        let counters = dp.counters();
        let events = dp.take_events()?;
        Ok(Self {
            dp,
            counters,
            events,
            policy,
        })
    }

    fn snapshot(&self) -> anyhow::Result<(Vec<Cell>, Vec<u64>)> {
        let n = u32::try_from(self.policy.env_names.len())?;
        let mut cells = Vec::with_capacity((n * n * NUM_VERDICTS) as usize);
        for s in 0..n {
            for d in 0..n {
                for v in 0..NUM_VERDICTS as u8 {
                    let c = self.counters.cell(s, d, v)?;
                    cells.push((s, d, v, c.packets, c.bytes));
                }
            }
        }
        Ok((cells, self.counters.stats()?.to_vec()))
    }

    /// Installs another policy the way a reload does (inactive slot, then
    /// the flip); the harness then compares against it.
    pub fn reload(&mut self, policy: &envfence::policy::Policy) -> anyhow::Result<()> {
        let policy = envfence::policy::compile_with_ids(
            policy,
            &self.policy.env_names,
            &self.policy.rule_names,
        );
        self.dp.apply_policy(
            &policy,
            Some(&self.policy),
            std::time::Duration::from_secs(3600),
        )?;
        self.policy = policy;
        Ok(())
    }

    /// Runs one frame through the program of `hook`; returns the TC action
    /// and the decision tag. `ingress_ifindex` is what the skb says it
    /// entered through (0: locally generated).
    pub fn run_tagged(
        &self,
        hook: Hook,
        frame: &[u8],
        ingress_ifindex: u32,
    ) -> anyhow::Result<(u32, u32)> {
        self.run_on(hook, frame, ingress_ifindex, 0)
    }

    /// [`KernelHarness::run_tagged`] with the frame arriving on the device
    /// `ifindex` of the calling thread's namespace (0: `lo`): the source
    /// check asks that namespace's routes.
    pub fn run_on(
        &self,
        hook: Hook,
        frame: &[u8],
        ingress_ifindex: u32,
        ifindex: u32,
    ) -> anyhow::Result<(u32, u32)> {
        self.run_ctx(hook, frame, ingress_ifindex, ifindex, 0)
    }

    /// [`KernelHarness::run_on`] with the skb's `gso_size` set (and
    /// `gso_segs` 2 when it is not 0): a GSO packet, as BIG TCP makes them.
    pub fn run_ctx(
        &self,
        hook: Hook,
        frame: &[u8],
        ingress_ifindex: u32,
        ifindex: u32,
        gso_size: u32,
    ) -> anyhow::Result<(u32, u32)> {
        let mut ctx_in = [0u8; SKB_CTX_LEN];
        if gso_size != 0 {
            ctx_in[SKB_GSO_SEGS..SKB_GSO_SEGS + 4].copy_from_slice(&2u32.to_ne_bytes());
            ctx_in[SKB_GSO_SIZE..SKB_GSO_SIZE + 4].copy_from_slice(&gso_size.to_ne_bytes());
        }
        ctx_in[SKB_INGRESS_IFINDEX..SKB_INGRESS_IFINDEX + 4]
            .copy_from_slice(&ingress_ifindex.to_ne_bytes());
        ctx_in[SKB_IFINDEX..SKB_IFINDEX + 4].copy_from_slice(&ifindex.to_ne_bytes());
        let mut ctx_out = [0u8; SKB_CTX_LEN];
        let mut opts = TestRunOptions::new();
        opts.data_in = Some(frame);
        opts.ctx_in = Some(&ctx_in);
        opts.ctx_out = Some(&mut ctx_out);
        let out = self
            .dp
            .program(hook)?
            .test_run(opts)
            .with_context(|| format!("BPF_PROG_TEST_RUN of {} failed", hook.as_str()))?;
        let mark = u32::from_ne_bytes(
            ctx_out[SKB_MARK..SKB_MARK + 4]
                .try_into()
                .context("mark bytes")?,
        );
        Ok((out.return_value, mark))
    }

    /// Runs one frame through the program of `hook` and reports which
    /// counters moved.
    pub fn run(&self, hook: Hook, frame: &[u8]) -> anyhow::Result<KernelResult> {
        self.run_gso(hook, frame, 0)
    }

    /// [`KernelHarness::run`] of a GSO packet (`gso_size` != 0).
    pub fn run_gso(&self, hook: Hook, frame: &[u8], gso_size: u32) -> anyhow::Result<KernelResult> {
        let (before, stats_before) = self.snapshot()?;
        let (action, mark) = self.run_ctx(hook, frame, 0, 0, gso_size)?;
        let (after, stats_after) = self.snapshot()?;
        let moved = before
            .iter()
            .zip(&after)
            .filter(|(b, a)| b != a)
            .map(|(b, a)| (a.0, a.1, a.2, a.3 - b.3, a.4 - b.4))
            .collect();
        let stats_moved = stats_before
            .iter()
            .zip(&stats_after)
            .enumerate()
            .filter(|(_, (b, a))| b != a)
            .map(|(i, (b, a))| (i as u32, a - b))
            .collect();
        Ok(KernelResult {
            action,
            mark,
            moved,
            stats_moved,
        })
    }

    /// Per-packet cost of `frame` (kernel-measured, `repeat` runs).
    pub fn time(
        &self,
        hook: Hook,
        frame: &[u8],
        repeat: u32,
    ) -> anyhow::Result<std::time::Duration> {
        let mut opts = TestRunOptions::new();
        opts.data_in = Some(frame);
        opts.repeat = repeat;
        let out = self.dp.program(hook)?.test_run(opts)?;
        Ok(out.duration)
    }

    /// Runs one frame on the CPU `cpu` (the calling thread is moved there
    /// first): the tracked-flow table is shared by all CPUs.
    pub fn run_on_cpu(&self, hook: Hook, frame: &[u8], cpu: usize) -> anyhow::Result<(u32, u32)> {
        // SAFETY: a zeroed cpu_set_t is valid; the calls only read/write it.
        unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(cpu, &mut set);
            if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
                anyhow::bail!(
                    "sched_setaffinity({cpu}): {}",
                    std::io::Error::last_os_error()
                );
            }
        }
        self.run_tagged(hook, frame, 0)
    }

    /// The loaded datapath.
    pub fn datapath(&self) -> &Datapath {
        &self.dp
    }

    /// The loaded datapath (to set source checks and peer addresses).
    pub fn datapath_mut(&mut self) -> &mut Datapath {
        &mut self.dp
    }

    /// Every event the kernel wrote so far, as the agent would print them.
    pub fn events(&mut self) -> anyhow::Result<Vec<EventRecord>> {
        let ctx = EventContext::from_policy("testrun".into(), &self.policy);
        let mut buf = Vec::new();
        drain(&mut self.events, &ctx, &mut buf)?;
        let mut out = Vec::new();
        for line in String::from_utf8(buf)?.lines() {
            out.push(serde_json::from_str(line).with_context(|| format!("bad event {line}"))?);
        }
        Ok(out)
    }

    /// Packets counted with verdict `v` over every environment pair.
    pub fn verdict_total(&self, v: u8) -> anyhow::Result<u64> {
        let n = u32::try_from(self.policy.env_names.len())?;
        let mut total = 0;
        for s in 0..n {
            for d in 0..n {
                total += self.counters.cell(s, d, v)?.packets;
            }
        }
        Ok(total)
    }

    /// The current value of one statistic.
    pub fn stat(&self, index: u32) -> anyhow::Result<u64> {
        let stats = self.counters.stats()?;
        match stats.get(index as usize) {
            Some(v) if index < stat::COUNT => Ok(*v),
            _ => bail!("no statistic {index}"),
        }
    }
}

/// Builds Ethernet frames for tests (checksums are not computed: TC
/// programs do not check them).
pub mod frame {
    use std::net::IpAddr;

    pub const ETH_P_IP: u16 = 0x0800;
    pub const ETH_P_IPV6: u16 = 0x86dd;
    pub const ETH_P_ARP: u16 = 0x0806;
    pub const ETH_P_8021Q: u16 = 0x8100;
    pub const ETH_P_8021AD: u16 = 0x88a8;

    /// An Ethernet header with `vlans` tags (outer first) and `ethertype`.
    pub fn eth(vlans: &[(u16, u16)], ethertype: u16) -> Vec<u8> {
        let mut f = vec![0x02, 0, 0, 0, 0, 0x02, 0x02, 0, 0, 0, 0, 0x01];
        for (tpid, vid) in vlans {
            f.extend_from_slice(&tpid.to_be_bytes());
            f.extend_from_slice(&vid.to_be_bytes());
        }
        f.extend_from_slice(&ethertype.to_be_bytes());
        f
    }

    /// L4 payloads.
    pub fn tcp_syn(sport: u16, dport: u16) -> Vec<u8> {
        let mut h = vec![0u8; 20];
        h[0..2].copy_from_slice(&sport.to_be_bytes());
        h[2..4].copy_from_slice(&dport.to_be_bytes());
        h[12] = 5 << 4;
        h[13] = 0x02;
        h
    }

    pub fn udp(sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
        let mut h = vec![0u8; 8];
        h[0..2].copy_from_slice(&sport.to_be_bytes());
        h[2..4].copy_from_slice(&dport.to_be_bytes());
        let len = u16::try_from(8 + payload.len()).unwrap_or(u16::MAX);
        h[4..6].copy_from_slice(&len.to_be_bytes());
        h.extend_from_slice(payload);
        h
    }

    /// ICMP (v4: type 8) or ICMPv6 (type 128) echo request.
    pub fn echo(v6: bool) -> Vec<u8> {
        vec![if v6 { 128 } else { 8 }, 0, 0, 0, 0, 1, 0, 1]
    }

    /// An IPv4 header (with `options` bytes, a multiple of 4) followed by
    /// `l4`; `frag_off` is the raw flags+offset field.
    pub fn ipv4(
        src: [u8; 4],
        dst: [u8; 4],
        proto: u8,
        options: &[u8],
        frag_off: u16,
        l4: &[u8],
    ) -> Vec<u8> {
        let ihl = 5 + options.len() / 4;
        let tot = u16::try_from(ihl * 4 + l4.len()).unwrap_or(u16::MAX);
        let mut h = vec![0u8; 20];
        h[0] = 0x40 | u8::try_from(ihl).unwrap_or(15);
        h[2..4].copy_from_slice(&tot.to_be_bytes());
        h[6..8].copy_from_slice(&frag_off.to_be_bytes());
        h[8] = 64;
        h[9] = proto;
        h[12..16].copy_from_slice(&src);
        h[16..20].copy_from_slice(&dst);
        h.extend_from_slice(options);
        h.extend_from_slice(l4);
        h
    }

    /// An IPv6 header with next header `next` followed by `rest`.
    pub fn ipv6(src: [u8; 16], dst: [u8; 16], next: u8, rest: &[u8]) -> Vec<u8> {
        let mut h = vec![0u8; 40];
        h[0] = 0x60;
        let plen = u16::try_from(rest.len()).unwrap_or(u16::MAX);
        h[4..6].copy_from_slice(&plen.to_be_bytes());
        h[6] = next;
        h[7] = 64;
        h[8..24].copy_from_slice(&src);
        h[24..40].copy_from_slice(&dst);
        h.extend_from_slice(rest);
        h
    }

    /// A whole frame: Ethernet (no VLAN) + IP of `src`'s family + `l4`.
    /// `src` and `dst` must be of one family (an IPv4-mapped IPv6 address
    /// counts as IPv6).
    pub fn ip_frame(src: IpAddr, dst: IpAddr, proto: u8, l4: &[u8]) -> Vec<u8> {
        match (src, dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                let mut f = eth(&[], ETH_P_IP);
                f.extend(ipv4(s.octets(), d.octets(), proto, &[], 0, l4));
                f
            }
            (s, d) => {
                let mut f = eth(&[], ETH_P_IPV6);
                f.extend(ipv6(v6(s), v6(d), proto, l4));
                f
            }
        }
    }

    fn v6(a: IpAddr) -> [u8; 16] {
        match a {
            IpAddr::V6(a) => a.octets(),
            IpAddr::V4(a) => a.to_ipv6_mapped().octets(),
        }
    }
}

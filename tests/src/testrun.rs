//! Runs crafted frames through the real eBPF programs with BPF_PROG_TEST_RUN
//! and reports what the kernel did: its TC action and which counter cell
//! moved by how much.
//!
//! [`test_run`] is the one BPF_PROG_TEST_RUN caller of the harness (aya's
//! `TestRun` with the `__sk_buff` context of [`SkbCtx`]): the
//! [`KernelHarness`], the differential engines and every benchmark run
//! through it. Frames come from [`crate::packet`].

use anyhow::{bail, Context as _};
use aya::{
    maps::{MapData, RingBuf},
    programs::{ProgramError, SchedClassifier, TestRun as _, TestRunOptions},
};
use envfence::{
    datapath::{CounterReader, Datapath, Hook, LoadOptions},
    events::{drain, EventContext, EventRecord},
    policy::{CompiledPolicy, SourceCheck},
};
use envfence_ebpf::{stat, NUM_VERDICTS};

/// `sizeof(struct __sk_buff)` and the offsets TestRun lets us set or read.
const SKB_CTX_LEN: usize = 192;
const SKB_MARK: usize = 8;
const SKB_INGRESS_IFINDEX: usize = 36;
const SKB_IFINDEX: usize = 40;
const SKB_GSO_SEGS: usize = 164;
const SKB_GSO_SIZE: usize = 176;

/// The `struct __sk_buff` fields a TestRun sets (the kernel refuses the
/// others non-zero) and reads back.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SkbCtx {
    /// `skb->mark` (after the run: the decision tag, `envfence_ebpf::tag`).
    pub mark: u32,
    /// The device the frame is on (0: the namespace's `lo`).
    pub ifindex: u32,
    /// The device it entered through (0: locally generated).
    pub ingress_ifindex: u32,
    /// Non-zero: a GSO packet (BIG TCP).
    pub gso_size: u32,
    pub gso_segs: u32,
}

impl SkbCtx {
    fn to_bytes(self) -> [u8; SKB_CTX_LEN] {
        let mut b = [0u8; SKB_CTX_LEN];
        for (at, v) in [
            (SKB_MARK, self.mark),
            (SKB_INGRESS_IFINDEX, self.ingress_ifindex),
            (SKB_IFINDEX, self.ifindex),
            (SKB_GSO_SEGS, self.gso_segs),
            (SKB_GSO_SIZE, self.gso_size),
        ] {
            b[at..at + 4].copy_from_slice(&v.to_ne_bytes());
        }
        b
    }

    fn from_bytes(b: &[u8; SKB_CTX_LEN]) -> SkbCtx {
        let at = |i: usize| u32::from_ne_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        SkbCtx {
            mark: at(SKB_MARK),
            ifindex: at(SKB_IFINDEX),
            ingress_ifindex: at(SKB_INGRESS_IFINDEX),
            gso_size: at(SKB_GSO_SIZE),
            gso_segs: at(SKB_GSO_SEGS),
        }
    }
}

/// What one TestRun returned.
#[derive(Clone, Copy, Debug)]
pub struct Run {
    /// The TC action ([`ACTION_NEXT`], [`ACTION_SHOT`] ...).
    pub action: u32,
    /// The context after the run (None: the run was given none).
    pub ctx: Option<SkbCtx>,
    /// The kernel-measured time per run.
    pub duration: std::time::Duration,
}

/// Runs `frame` through `prog` `repeat` times (0 counts as 1) with
/// BPF_PROG_TEST_RUN, with the `__sk_buff` context `ctx` (None: none, the
/// kernel's defaults). The error keeps the syscall's `io::Error` (EINVAL:
/// the kernel refused the frame).
pub fn test_run(
    prog: &SchedClassifier,
    frame: &[u8],
    ctx: Option<SkbCtx>,
    repeat: u32,
) -> Result<Run, ProgramError> {
    let ctx_in = ctx.map(SkbCtx::to_bytes);
    let mut ctx_out = [0u8; SKB_CTX_LEN];
    let mut opts = TestRunOptions::new();
    opts.data_in = Some(frame);
    opts.repeat = repeat;
    if let Some(c) = &ctx_in {
        opts.ctx_in = Some(c);
        opts.ctx_out = Some(&mut ctx_out);
    }
    let out = prog.test_run(opts)?;
    Ok(Run {
        action: out.return_value,
        ctx: ctx.map(|_| SkbCtx::from_bytes(&ctx_out)),
        duration: out.duration,
    })
}

/// [`test_run`] for the benchmarks: (TC action, kernel-measured ns per
/// run).
pub fn timed(
    prog: &SchedClassifier,
    frame: &[u8],
    ctx: Option<SkbCtx>,
    repeat: u32,
) -> anyhow::Result<(u32, f64)> {
    let out = test_run(prog, frame, ctx, repeat).context("BPF_PROG_TEST_RUN")?;
    Ok((out.action, out.duration.as_nanos() as f64))
}

/// A handle of its own on the loaded program `prog` (a duplicated file
/// descriptor): for a thread that runs it while the owner of `prog` is
/// borrowed mutably (a reload).
pub fn handle(prog: &SchedClassifier) -> anyhow::Result<SchedClassifier> {
    Ok(SchedClassifier::from_program_info(
        prog.info()?,
        "testrun".into(),
    )?)
}

/// A handle on the loaded TC program of id `id` (one another process
/// loaded, such as a running agent's).
pub fn program_of_id(id: u32) -> anyhow::Result<SchedClassifier> {
    let info = aya::programs::loaded_programs()
        .filter_map(|p| p.ok())
        .find(|p| p.id() == id)
        .with_context(|| format!("no loaded program with id {id}"))?;
    Ok(SchedClassifier::from_program_info(info, "testrun".into())?)
}

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
            object: None,
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
        let ctx = SkbCtx {
            ifindex,
            ingress_ifindex,
            gso_size,
            gso_segs: if gso_size != 0 { 2 } else { 0 },
            mark: 0,
        };
        let out = test_run(self.dp.program(hook)?, frame, Some(ctx), 1)
            .with_context(|| format!("BPF_PROG_TEST_RUN of {} failed", hook.as_str()))?;
        let mark = out.ctx.context("no context after the run")?.mark;
        Ok((out.action, mark))
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
        Ok(test_run(self.dp.program(hook)?, frame, None, repeat)?.duration)
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

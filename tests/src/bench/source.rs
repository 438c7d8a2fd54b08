//! e. What the source check adds per packet (`BPF_PROG_TEST_RUN`), side
//! by side with the check off, in one run: the ingress program of one
//! datapath (example policy) runs the same allowed production → production
//! frames entering the route lab's interfaces (tests/src/gen/routes.rs):
//! `lo` (check off: the baseline), a strict interface whose route to the
//! source leaves through it, the same interface accepting a peer address
//! (the route names another interface), a loose interface, and the refused
//! path (no route: spoofed, dropped). The TestRun context names the device,
//! so the kernel's FIB answers each lookup from the lab node's routes.
//!
//! - hot: one frame repeated `hot_repeat` times, the median of `hot_runs`
//!   runs, variants interleaved in rotating order;
//! - many flows: `flows` distinct sources (and ports) each run
//!   `spread_repeat` times, the mean per run, median of `rounds` rounds.
//!
//! Every run's TC action is checked.

use std::net::IpAddr;

use anyhow::{bail, Context, Result};
use aya::programs::SchedClassifier;
use envfence::datapath::Hook;
use envfence::policy::Mode;

use super::table::{delta, fmt, median, Table};
use super::{Part, Section};
use crate::gen::routes::RouteLab;
use crate::netns;
use crate::packet::{ip_frame, Packet};
use crate::testrun::{timed, SkbCtx, ACTION_NEXT, ACTION_SHOT, LO_IFINDEX};

/// What to measure.
#[derive(Clone, Debug)]
pub struct Params {
    pub hot_repeat: u32,
    pub hot_runs: usize,
    pub flows: usize,
    pub spread_repeat: u32,
    pub rounds: usize,
}

impl Params {
    pub fn full() -> Params {
        Params {
            hot_repeat: 20_000,
            hot_runs: 21,
            flows: 2_000,
            spread_repeat: 20,
            rounds: 7,
        }
    }
    pub fn quick() -> Params {
        Params {
            hot_repeat: 2_000,
            hot_runs: 5,
            flows: 200,
            spread_repeat: 5,
            rounds: 3,
        }
    }
}

/// One way in: a name, the device, the frames' sources, the TC action.
struct Variant {
    name: &'static str,
    ifindex: u32,
    /// `i` → the source of flow `i`.
    source: fn(v6: bool, i: usize) -> IpAddr,
    action: u32,
}

/// Host `i` of the /48 fd00:`a`:`b`::.
fn v6_host(a: u16, b: u16, i: usize) -> IpAddr {
    IpAddr::from([
        0xfd00,
        a,
        b,
        0,
        0,
        0,
        (i >> 8) as u16,
        2 + (i & 0xff) as u16,
    ])
}

fn routed(v6: bool, i: usize) -> IpAddr {
    // 10.10.1.0/24 and fd00:10:1::/48 leave through efr0.
    if v6 {
        v6_host(0x10, 1, i)
    } else {
        IpAddr::from([10, 10, 1, 2 + (i % 250) as u8])
    }
}

fn peer(v6: bool, _i: usize) -> IpAddr {
    // Peer addresses of efr0 whose routes leave through efr1.
    if v6 {
        IpAddr::from([0xfd00, 0x10, 2, 0, 0, 0, 0, 2])
    } else {
        IpAddr::from([10, 10, 2, 2])
    }
}

fn unrouted(v6: bool, i: usize) -> IpAddr {
    // 10.50/16 and fd00:50::/32 are in no route at all.
    if v6 {
        v6_host(0x50, 0, i)
    } else {
        IpAddr::from([10, 50, (i >> 8) as u8, 2 + (i % 250) as u8])
    }
}

fn frame_of(src: IpAddr, v6: bool, i: usize) -> Vec<u8> {
    let dst: IpAddr = if v6 {
        IpAddr::from([0xfd00, 0x10, 3, 0, 0, 0, 0, 9])
    } else {
        IpAddr::from([10, 10, 3, 9])
    };
    ip_frame(
        src,
        dst,
        envfence_ebpf::proto::TCP,
        Packet::syn(10_000 + (i % 50_000) as u16, 8080),
    )
}

/// One TestRun on device `ifindex`: (action, ns per run).
fn run(prog: &SchedClassifier, f: &[u8], ifindex: u32, repeat: u32) -> Result<(u32, f64)> {
    let ctx = SkbCtx {
        ifindex,
        ..SkbCtx::default()
    };
    timed(prog, f, Some(ctx), repeat)
}

/// A row: (variant, family, hot ns, many-flows ns).
type Row = (&'static str, &'static str, f64, f64);

fn measure_in_lab(lab: &RouteLab, p: &Params) -> Result<Vec<Row>> {
    let mut dp = super::load(false, false)?;
    let policy = crate::gen::diff::example_policy(Mode::Enforce)?;
    dp.apply_policy(&policy, None, std::time::Duration::from_secs(3600))?;
    lab.install_into(&mut dp)?;
    let mut events = dp.take_events()?;
    let dev = |n: &str| {
        lab.ifindex(n)
            .with_context(|| format!("no {n} in the route lab"))
    };
    let var = |name, ifindex, source: fn(bool, usize) -> IpAddr, action| Variant {
        name,
        ifindex,
        source,
        action,
    };
    let variants = [
        var(
            "check off (lo): the baseline",
            LO_IFINDEX,
            routed,
            ACTION_NEXT,
        ),
        var(
            "strict, route via this interface",
            dev("efr0")?,
            routed,
            ACTION_NEXT,
        ),
        var(
            "strict, peer address (route elsewhere)",
            dev("efr0")?,
            peer,
            ACTION_NEXT,
        ),
        var("loose", dev("efr2")?, routed, ACTION_NEXT),
        var(
            "refused: no route (spoofed, dropped)",
            dev("efr0")?,
            unrouted,
            ACTION_SHOT,
        ),
    ];
    let prog = dp.program(Hook::Ingress)?;
    let mut rows = Vec::new();
    for v6 in [false, true] {
        let fam = if v6 { "IPv6" } else { "IPv4" };
        let frames: Vec<Vec<Vec<u8>>> = variants
            .iter()
            .map(|v| {
                (0..p.flows)
                    .map(|i| frame_of((v.source)(v6, i), v6, i))
                    .collect()
            })
            .collect();
        let check = |v: &Variant, action: u32| -> Result<()> {
            if action != v.action {
                bail!(
                    "{} ({fam}): TC action {action:#x}, expected {:#x}",
                    v.name,
                    v.action
                );
            }
            Ok(())
        };
        // Warm every flow once (first packets emit the refused flows' events).
        for (v, fs) in variants.iter().zip(&frames) {
            for f in fs {
                check(v, run(prog, f, v.ifindex, 1)?.0)?;
            }
        }
        while events.next().is_some() {}
        // The mean ns per run of `fs` through `v`, each run `repeat` times.
        let mean = |v: &Variant, fs: &[Vec<u8>], repeat| -> Result<f64> {
            let mut total = 0.0;
            for f in fs {
                let (action, ns) = run(prog, f, v.ifindex, repeat)?;
                check(v, action)?;
                total += ns;
            }
            Ok(total / fs.len().max(1) as f64)
        };
        // `n` rounds of every variant in rotating order: one frame of the
        // set (another each round) or all of them.
        let mut rounds = |n: usize, repeat: u32, one: bool| -> Result<Vec<Vec<f64>>> {
            let mut out = vec![Vec::new(); variants.len()];
            for r in 0..n {
                for k in 0..variants.len() {
                    let j = (k + r) % variants.len();
                    let i = r * p.flows / n.max(1);
                    let fs = if one {
                        &frames[j][i..=i]
                    } else {
                        &frames[j][..]
                    };
                    out[j].push(mean(&variants[j], fs, repeat)?);
                }
                while events.next().is_some() {}
            }
            Ok(out)
        };
        let hot = rounds(p.hot_runs, p.hot_repeat, true)?;
        let spread = rounds(p.rounds, p.spread_repeat, false)?;
        for (j, v) in variants.iter().enumerate() {
            rows.push((v.name, fam, median(&hot[j]), median(&spread[j])));
        }
    }
    Ok(rows)
}

/// The section of the report.
pub fn section(p: &Params, log: &mut dyn FnMut(&str)) -> Result<Section> {
    let lab = RouteLab::new().context("building the route lab")?;
    let ns = lab.node_ns.clone();
    let rows = netns::in_netns(&ns, || measure_in_lab(&lab, p))??;
    drop(lab);
    let mut s = Section::new(Part::Source);
    s.intro.push(format!(
        "One datapath (example policy, verdict cache on), the same allowed production → production TCP SYNs entering the route lab's interfaces; the TestRun context names the device, so each packet's bpf_fib_lookup asks the lab node's real routes. hot: one frame × {} runs, median of {}; many flows: {} sources × {} runs each, mean, median of {} rounds. Variants interleaved in rotating order. Δ is over the check-off baseline of the same run.",
        p.hot_repeat, p.hot_runs, p.flows, p.spread_repeat, p.rounds
    ));
    let mut t = Table::new(
        "e1. ns per packet, source check on vs off",
        "path | family | hot | Δ hot | many flows | Δ many flows",
    );
    for fam in ["IPv4", "IPv6"] {
        let base = rows
            .iter()
            .find(|r| r.1 == fam)
            .map(|r| (r.2, r.3))
            .unwrap_or((f64::NAN, f64::NAN));
        for r in rows.iter().filter(|r| r.1 == fam) {
            log(&format!(
                "source: {fam} {:<42} hot {:.0} ns  many flows {:.0} ns",
                r.0, r.2, r.3
            ));
            t.row(vec![
                r.0.to_owned(),
                fam.to_owned(),
                fmt(r.2, 0),
                delta(r.2 - base.0),
                fmt(r.3, 0),
                delta(r.3 - base.1),
            ]);
        }
    }
    t.note("the refused path includes counting, the ring-buffer check of its (already reported) flow and the drop");
    s.tables.push(t);
    Ok(s)
}

//! f. What connection tracking costs per packet (BPF_PROG_TEST_RUN, the
//! example policy, IPv4 TCP): envfence as the agent loads it (tracking on)
//! side by side with the same object loaded with tracking off (today's
//! stateless datapath, the baseline), and the empty TC program.
//!
//! - untracked allowed pair: production -> production (allowed both ways,
//!   never looked up);
//! - first packet: a SYN test -> production tcp/53 of a new flow each run
//!   (the entry is created), mean over `flows` flows, one run each;
//! - forward packet of a tracked flow (refreshes the entry), hot;
//! - reply: production -> test of that flow, hot (baseline: the same
//!   packet, dropped by the stateless policy).

use anyhow::{bail, Result};
use aya::programs::SchedClassifier;
use envfence::datapath::{Datapath, Hook};
use envfence::policy;

use super::table::{fmt, median, ratio, Table};
use super::{load, Part, Section};
use crate::packet::{ip_frame, Packet};
use crate::testrun::{timed, ACTION_NEXT};

/// What to measure.
#[derive(Clone, Debug)]
pub struct Params {
    pub hot_repeat: u32,
    pub hot_runs: usize,
    pub flows: u16,
}

impl Params {
    pub fn full() -> Params {
        Params {
            hot_repeat: 1_000_000,
            hot_runs: 5,
            flows: 20_000,
        }
    }
    pub fn quick() -> Params {
        Params {
            hot_repeat: 100_000,
            hot_runs: 3,
            flows: 2_000,
        }
    }
}

/// A datapath of the example policy, tracking on or off.
fn load_example(no_conntrack: bool) -> Result<Datapath> {
    let mut dp = load(false, no_conntrack)?;
    let p = policy::compile(crate::fixture::example_policy());
    dp.apply_policy(&p, None, std::time::Duration::from_secs(3600))?;
    Ok(dp)
}

fn hot(prog: &SchedClassifier, f: &[u8], p: &Params) -> Result<f64> {
    let mut v = Vec::new();
    for _ in 0..p.hot_runs {
        v.push(timed(prog, f, None, p.hot_repeat)?.1);
    }
    Ok(median(&v))
}

fn tcp(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16, flags: u8) -> Vec<u8> {
    ip_frame(
        src.into(),
        dst.into(),
        6,
        Packet::new().tcp(sport, dport, flags),
    )
}

/// The section.
pub fn section(p: &Params, log: &mut dyn FnMut(&str)) -> Result<Section> {
    let mut on = load_example(false)?;
    let off = load_example(true)?;
    let (t, pr, pr2) = ([10, 30, 0, 5], [10, 10, 0, 53], [10, 10, 0, 54]);
    log("conntrack: hot packets");
    let untracked = tcp(pr, pr2, 40000, 443, 0x10);
    let fwd = tcp(t, pr, 40000, 53, 0x10);
    let reply = tcp(pr, t, 53, 40000, 0x10);
    let ingress_on = on.program(Hook::Ingress)?;
    // The tracked flow exists (its SYN went through).
    if timed(ingress_on, &tcp(t, pr, 40000, 53, 0x02), None, 1)?.0 != ACTION_NEXT {
        bail!("the SYN of the tracked flow was not let through");
    }
    if timed(ingress_on, &reply, None, 1)?.0 != ACTION_NEXT {
        bail!("the reply was not let through with tracking on");
    }
    let rows_hot = [
        (
            "untracked allowed pair (production -> production)",
            &untracked,
        ),
        (
            "forward packet of a tracked flow (test -> production tcp/53)",
            &fwd,
        ),
        ("reply (production -> test; baseline: dropped)", &reply),
    ];
    let mut table = Table::new(
        "Connection tracking: ns per packet (median of runs)",
        "packet | tracking on | tracking off (baseline) | on / off",
    );
    for (name, f) in rows_hot {
        let a = hot(on.program(Hook::Ingress)?, f, p)?;
        let b = hot(off.program(Hook::Ingress)?, f, p)?;
        table.row(vec![name.to_string(), fmt(a, 1), fmt(b, 1), ratio(a / b)]);
    }
    log("conntrack: first packets");
    // The mean ns of the first SYNs of `p.flows` new flows through `prog`
    // (`check`: each must pass).
    let first_syns = |prog: &SchedClassifier, check: bool| -> Result<f64> {
        let mut sum = 0.0;
        for i in 0..p.flows {
            let (action, ns) = timed(prog, &tcp(t, pr, 1000 + i, 53, 0x02), None, 1)?;
            if check && action != ACTION_NEXT {
                bail!("a first SYN was dropped");
            }
            sum += ns;
        }
        Ok(sum / f64::from(p.flows))
    };
    let overhead = first_syns(on.empty_program()?, false)?;
    let mut first = [0.0f64; 2];
    for (k, dp) in [&on, &off].into_iter().enumerate() {
        first[k] = (first_syns(dp.program(Hook::Ingress)?, true)? - overhead).max(0.0);
    }
    table.row(vec![
        format!("first packet of a new tracked flow ({} flows, one run each, TestRun overhead {} ns subtracted)", p.flows, fmt(overhead, 0)),
        fmt(first[0], 1),
        fmt(first[1], 1),
        ratio(first[0] / first[1].max(1.0)),
    ]);
    let mut s = Section::new(Part::Conntrack);
    s.intro.push(
        "The example policy, IPv4 TCP, ingress; the same object loaded with tracking on (as the agent runs) and off (the stateless datapath before issue 12).".into(),
    );
    s.tables.push(table);
    Ok(s)
}

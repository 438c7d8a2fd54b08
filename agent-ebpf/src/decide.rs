//! The policy decision, written once: given an environment pair's entry,
//! the port rule of a packet whose ports were read (when the pair has port
//! rules), else the pair's verdict, or its no-port verdict for a
//! port-bearing packet whose ports cannot be read. Generic over where the
//! port rules live ([`Tables`]): the kernel's maps (`src/programs.rs`),
//! the compiled policy (`agent/src/policy/compile.rs`) and the maps pinned
//! in bpffs (`agent/src/datapath/inspect.rs`). Each caller looks the pair
//! up itself and says what stands for a missing one (the kernel: drop; a
//! compiled policy: its default; the pinned maps: an error): the kernel
//! then keeps a reference into its map, which the verifier walks most
//! cheaply.

use core::borrow::Borrow;

use crate::walk::L4;
use crate::{PairVerdict, RuleVerdict};

/// Where a decision finds port rules. Lookups may fail (pinned maps are
/// read with syscalls): [`Tables::Error`] is `Infallible` where they
/// cannot.
pub trait Tables {
    /// Why a lookup failed.
    type Error;
    /// A port rule as the table gives it: a reference into it (the
    /// kernel's map value: read in place), or a copy.
    type Rule<'a>: Borrow<RuleVerdict>
    where
        Self: 'a;
    /// The port rule of (`src_env`, `dst_env`, `proto`, destination
    /// `port`), if there is one. Each table builds its own key
    /// ([`crate::PortKey::new`], with its slot) right beside its lookup;
    /// the kernel's hands it to the map by value. A key built here and
    /// passed down by reference cost the verifier 8,013 more instructions
    /// in the decision stage (138,081 against 130,068), and 6,227 of them
    /// (136,295) came from the reference alone.
    fn port_rule(
        &self,
        src_env: u32,
        dst_env: u32,
        proto: u8,
        port: u16,
    ) -> Result<Option<Self::Rule<'_>>, Self::Error>;
}

/// What gave a verdict.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum By {
    /// A port rule of the pair.
    PortRule,
    /// The pair's verdict (no port rule matched, or a protocol without
    /// ports).
    Pair,
    /// The pair's no-port verdict (a port-bearing packet whose ports
    /// cannot be read).
    NoPorts,
}

/// A decision.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decided {
    /// The verdict ([`crate::verdict`]), audit mode folded in.
    pub verdict: u8,
    /// The rule that decided ([`crate::RULE_DEFAULT`] for the default).
    pub rule: u16,
    /// What decided.
    pub by: By,
}

/// The verdict of a packet between two environments whose pair entry is
/// `pair`; `proto` and `dport` are read when `l4` is [`L4::Ports`].
#[inline(always)]
pub fn decide<T: Tables>(
    tables: &T,
    pair: &PairVerdict,
    src_env: u32,
    dst_env: u32,
    l4: L4,
    proto: u8,
    dport: u16,
) -> Result<Decided, T::Error> {
    // Each arm returns its own decision, as the kernel's decision always
    // did: the verifier walks this shape in the fewest instructions
    // (130,068 in the decision stage, against 130,276 and 131,286 for a
    // decision built after the match).
    match l4 {
        L4::Ports => {
            if pair.has_port_rules != 0 {
                if let Some(rv) = tables.port_rule(src_env, dst_env, proto, dport)? {
                    let rv = rv.borrow();
                    return Ok(Decided {
                        verdict: rv.verdict,
                        rule: rv.rule,
                        by: By::PortRule,
                    });
                }
            }
            Ok(Decided {
                verdict: pair.verdict,
                rule: pair.rule,
                by: By::Pair,
            })
        }
        L4::NoPorts => Ok(Decided {
            verdict: pair.no_port_verdict,
            rule: pair.no_port_rule,
            by: By::NoPorts,
        }),
        L4::Other => Ok(Decided {
            verdict: pair.verdict,
            rule: pair.rule,
            by: By::Pair,
        }),
    }
}

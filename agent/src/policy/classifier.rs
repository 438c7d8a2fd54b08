//! The classifier compiled from a policy's prefixes: the tables
//! ([`envfence_ebpf::trie`]) that the datapath walks
//! ([`envfence_ebpf::classify`]) to find an address's environment in a
//! bounded number of reads, whatever the number of prefixes.
//!
//! Built in two passes: the prefixes, shortest first, go into a multibit
//! trie with leaf pushing (every entry holds the leaf of the longest prefix
//! covering it, or a child); then the trie is flattened into chunks, with
//! every chain of one-way nodes (one child, all other entries the same
//! leaf) compressed into skips.

use std::convert::Infallible;

use envfence_ebpf::classify::TrieTables;
use envfence_ebpf::trie::{self, FANOUT, MAX_SKIP_BITS, ROOT_BITS, SKIP_ENTRIES, STRIDE};
use envfence_ebpf::{Chunk, TriePrefix};

use super::CompiledPolicy;

/// One family's tables of one slot, as they are written into the maps.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FamilyTables {
    /// The chunks: the root's [`trie::ROOT_CHUNKS`], then the rest (nodes,
    /// and skips four to a chunk).
    pub chunks: Vec<Chunk>,
    /// The prefixes leaves name (leaf prefix number - 1).
    pub prefixes: Vec<TriePrefix>,
}

/// A compiled policy's classifier, both families.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Classifier {
    pub v4: FamilyTables,
    pub v6: FamilyTables,
}

impl Classifier {
    /// Compiles the prefixes of `policy`.
    pub fn build(policy: &CompiledPolicy) -> Classifier {
        let v4: Vec<(u128, u8, u32)> = policy
            .v4
            .iter()
            .map(|(n, id)| {
                (
                    (u128::from(u32::from(n.network()))) << 96,
                    n.prefix_len(),
                    *id,
                )
            })
            .collect();
        let v6: Vec<(u128, u8, u32)> = policy
            .v6
            .iter()
            .map(|(n, id)| (u128::from(n.network()), n.prefix_len(), *id))
            .collect();
        Classifier {
            v4: FamilyTables::build(&v4, true),
            v6: FamilyTables::build(&v6, false),
        }
    }
}

impl TrieTables for FamilyTables {
    type Error = Infallible;
    type Chunk<'a> = &'a Chunk;

    fn chunk(&self, index: u32) -> Result<Option<&Chunk>, Infallible> {
        Ok(usize::try_from(index).ok().and_then(|i| self.chunks.get(i)))
    }
}

/// An entry of the trie under construction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Slot {
    Leaf(u32),
    Node(usize),
}

impl FamilyTables {
    /// The prefix a leaf names.
    pub fn prefix(&self, leaf: u32) -> Option<&TriePrefix> {
        let n = usize::try_from(trie::leaf_prefix(leaf)).ok()?;
        self.prefixes.get(n.checked_sub(1)?)
    }

    /// Compiles (address bits from the top, prefix length, environment id)
    /// prefixes of one family (`v4`: lengths up to 32).
    fn build(prefixes: &[(u128, u8, u32)], v4: bool) -> FamilyTables {
        let mut sorted: Vec<&(u128, u8, u32)> = prefixes.iter().collect();
        sorted.sort_by_key(|(a, len, _)| (*len, *a));
        let mut root = vec![Slot::Leaf(0); 1 << ROOT_BITS];
        let mut nodes: Vec<[Slot; FANOUT]> = Vec::new();
        let mut out = FamilyTables::default();
        for (i, &&(addr, len, env)) in sorted.iter().enumerate() {
            let number = u32::try_from(i + 1).unwrap_or(u32::MAX);
            let leaf = Slot::Leaf(trie::leaf(env, number));
            let mut p = TriePrefix {
                len,
                env: u8::try_from(env).unwrap_or(u8::MAX),
                ..TriePrefix::default()
            };
            let bytes = addr.to_be_bytes();
            if v4 {
                p.addr[..4].copy_from_slice(&bytes[..4]);
            } else {
                p.addr = bytes;
            }
            out.prefixes.push(p);
            insert(&mut root, &mut nodes, addr, u32::from(len), leaf);
        }
        let mut flat = Flatten {
            nodes: &nodes,
            chunks: vec![Chunk::default(); trie::ROOT_CHUNKS as usize],
            skip_chunk: None,
        };
        for (i, slot) in root.iter().enumerate() {
            let e = flat.entry(*slot, ROOT_BITS);
            flat.chunks[i / FANOUT].entries[i % FANOUT] = e;
        }
        out.chunks = flat.chunks;
        out
    }
}

/// Sets every entry the prefix covers (shortest prefixes come first, so
/// those entries are leaves of shorter prefixes, which it overrides).
fn insert(root: &mut [Slot], nodes: &mut Vec<[Slot; FANOUT]>, addr: u128, len: u32, leaf: Slot) {
    if len <= ROOT_BITS {
        let start = (addr >> (128 - ROOT_BITS)) as usize;
        let count = 1usize << (ROOT_BITS - len);
        for s in &mut root[start..start + count] {
            *s = leaf;
        }
        return;
    }
    let mut depth = ROOT_BITS;
    let mut at_root = Some((addr >> (128 - ROOT_BITS)) as usize);
    let mut parent: (usize, usize) = (usize::MAX, 0);
    loop {
        // The slot the walk stands on: a root entry or a node's entry.
        let current = match at_root {
            Some(i) => root[i],
            None => nodes[parent.0][parent.1],
        };
        let node = match current {
            Slot::Node(n) => n,
            Slot::Leaf(l) => {
                nodes.push([Slot::Leaf(l); FANOUT]);
                let n = nodes.len() - 1;
                match at_root {
                    Some(i) => root[i] = Slot::Node(n),
                    None => nodes[parent.0][parent.1] = Slot::Node(n),
                }
                n
            }
        };
        let nibble = ((addr >> (128 - depth - STRIDE)) & 15) as usize;
        let rest = len - depth;
        if rest <= STRIDE {
            let count = 1usize << (STRIDE - rest);
            for s in &mut nodes[node][nibble..nibble + count] {
                *s = leaf;
            }
            return;
        }
        at_root = None;
        parent = (node, nibble);
        depth += STRIDE;
    }
}

/// The second pass: nodes into chunks and skips.
struct Flatten<'a> {
    nodes: &'a [[Slot; FANOUT]],
    chunks: Vec<Chunk>,
    /// The chunk skips are being packed into, and its next free quarter.
    skip_chunk: Option<(usize, usize)>,
}

impl Flatten<'_> {
    /// The entry of `slot`, a node's entry reached after `depth` bits.
    fn entry(&mut self, slot: Slot, depth: u32) -> u32 {
        let node = match slot {
            Slot::Leaf(l) => return l,
            Slot::Node(n) => n,
        };
        if let Some((fallback, _)) = self.chain(node) {
            return self.skip(node, depth, fallback);
        }
        let index = self.chunks.len();
        self.chunks.push(Chunk::default());
        let entries = self.nodes[node];
        for (i, s) in entries.iter().enumerate() {
            let e = self.entry(*s, depth + STRIDE);
            self.chunks[index].entries[i] = e;
        }
        trie::chunk(u32::try_from(index).unwrap_or(u32::MAX))
    }

    /// A node's (fallback leaf, the other entry's nibble) when it is
    /// one-way: every entry the same leaf but one, a child or another leaf
    /// (a host prefix's last node is one-way to its leaf).
    fn chain(&self, node: usize) -> Option<(u32, usize)> {
        let entries = &self.nodes[node];
        // With 16 entries, the fallback is the leaf of the first two that
        // agree among the first three.
        let leaf = |s: &Slot| match s {
            Slot::Leaf(l) => Some(*l),
            Slot::Node(_) => None,
        };
        let (a, b, c) = (leaf(&entries[0]), leaf(&entries[1]), leaf(&entries[2]));
        let fallback = if a.is_some() && (a == b || a == c) {
            a?
        } else {
            b.filter(|_| b == c)?
        };
        let mut other = None;
        for (i, s) in entries.iter().enumerate() {
            if *s != Slot::Leaf(fallback) {
                if other.is_some() {
                    return None;
                }
                other = Some(i);
            }
        }
        Some((fallback, other?))
    }

    /// The skip of the chain starting at `node` (after `depth` bits): the
    /// one-way nodes with the same fallback, up to bit 64 or 64 bits.
    fn skip(&mut self, mut node: usize, depth: u32, fallback: u32) -> u32 {
        let limit = if depth < 64 { 64 } else { 128 };
        let mut bits: u64 = 0;
        let mut len = 0u32;
        let next = loop {
            let Some((f, nibble)) = self.chain(node) else {
                break Slot::Node(node);
            };
            if f != fallback || depth + len >= limit || len >= MAX_SKIP_BITS {
                break Slot::Node(node);
            }
            bits |= (nibble as u64) << (60 - len);
            len += STRIDE;
            node = match self.nodes[node][nibble] {
                Slot::Node(n) => n,
                Slot::Leaf(l) => break Slot::Leaf(l),
            };
        };
        let (chunk, quarter) = match self.skip_chunk {
            Some((c, q)) if q < FANOUT / SKIP_ENTRIES => (c, q),
            _ => {
                self.chunks.push(Chunk::default());
                (self.chunks.len() - 1, 0)
            }
        };
        self.skip_chunk = Some((chunk, quarter + 1));
        let next = self.entry(next, depth + len);
        let record = &mut self.chunks[chunk].entries[quarter * SKIP_ENTRIES..][..SKIP_ENTRIES];
        record.copy_from_slice(&[
            (bits >> 32) as u32,
            bits as u32,
            next,
            fallback | (len << trie::LEN_SHIFT),
        ]);
        trie::skip(
            u32::try_from(chunk).unwrap_or(u32::MAX),
            u32::try_from(quarter).unwrap_or(0),
        )
    }
}

#[cfg(test)]
mod tests {
    //! The walk over compiled tables against a longest-prefix scan written
    //! here (independent of the trie), on policies of every shape.
    use super::*;

    /// xorshift64*: reproducible draws without a dependency.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }

        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    fn mask(width: u32, len: u8) -> u128 {
        if len == 0 {
            0
        } else {
            (u128::MAX << (128 - u32::from(len))) & (u128::MAX << (128 - width))
        }
    }

    /// (address bits from the top, length, env) prefixes of one shape.
    fn prefixes(rng: &mut Rng, width: u32, n: usize, shape: u32) -> Vec<(u128, u8, u32)> {
        let mut out: Vec<(u128, u8, u32)> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        let top = |x: u128| x & mask(width, width as u8);
        while out.len() < n {
            let a = top(u128::from(rng.next()) << 64 | u128::from(rng.next()));
            let lens: Vec<u8> = match shape {
                // Any length, 0 included.
                0 => vec![rng.below(u64::from(width) + 1) as u8],
                // Hosts and one shorter prefix in ten.
                1 if rng.below(10) == 0 => vec![rng.below(u64::from(width)) as u8],
                1 => vec![width as u8],
                // A nested chain of every length.
                _ => (1..=width as u8).collect(),
            };
            for len in lens {
                let net = a & mask(width, len);
                if out.len() < n && seen.insert((net, len)) {
                    out.push((net, len, 1 + rng.below(62) as u32));
                }
            }
        }
        out
    }

    fn scan(prefixes: &[(u128, u8, u32)], width: u32, a: u128) -> (u32, Option<(u128, u8)>) {
        prefixes
            .iter()
            .filter(|(net, len, _)| a & mask(width, *len) == *net)
            .max_by_key(|(_, len, _)| *len)
            .map_or((0, None), |(net, len, env)| (*env, Some((*net, *len))))
    }

    fn check(width: u32, shape: u32, n: usize, seed: u64) {
        let mut rng = Rng(seed);
        let ps = prefixes(&mut rng, width, n, shape);
        let t = FamilyTables::build(&ps, width == 32);
        // The bound the maps are sized by.
        assert!(
            t.chunks.len() <= trie::ROOT_CHUNKS as usize + 3 * n,
            "{} chunks",
            t.chunks.len()
        );
        let mut prev = (0u128, scan(&ps, width, 0));
        for i in 0..20_000 {
            let a = match i % 4 {
                // Inside a prefix, its first and last address.
                0..=2 => {
                    let (net, len, _) = ps[rng.below(ps.len() as u64) as usize];
                    let host = !mask(width, len) & mask(width, width as u8);
                    match i % 4 {
                        0 => net,
                        1 => net | host,
                        _ => net | (host & (u128::from(rng.next()) << 64 | u128::from(rng.next()))),
                    }
                }
                _ => {
                    (u128::from(rng.next()) << 64 | u128::from(rng.next()))
                        & mask(width, width as u8)
                }
            };
            let (want, want_prefix) = scan(&ps, width, a);
            let hi = (a >> 64) as u64;
            let lo = a as u64;
            let Ok(leaf) = envfence_ebpf::classify::walk::<_, _, { trie::STEPS_V6 }>(&t, &[hi, lo]);
            let got = |leaf: u32| {
                let prefix = t.prefix(leaf).map(|p| {
                    let mut bytes = [0u8; 16];
                    let k = if width == 32 { 4 } else { 16 };
                    bytes[..k].copy_from_slice(&p.addr[..k]);
                    (u128::from_be_bytes(bytes), p.len)
                });
                (trie::leaf_env(leaf), prefix)
            };
            assert_eq!(
                got(leaf),
                (want, want_prefix),
                "width {width} shape {shape} n {n} seed {seed:#x}: address {a:#034x}"
            );
            // The lockstep walk of this address beside the previous one
            // (walks of different lengths: either may end first).
            let (p, p_want) = prev;
            let Ok((x, y)) = envfence_ebpf::classify::walk_pair::<_, _, _, { trie::STEPS_V6 }>(
                &t,
                &[(p >> 64) as u64, p as u64],
                &[hi, lo],
            );
            assert_eq!(
                (got(x), got(y)),
                (p_want, (want, want_prefix)),
                "width {width} shape {shape} n {n} seed {seed:#x}: pair {p:#034x}, {a:#034x}"
            );
            prev = (a, (want, want_prefix));
        }
    }

    #[test]
    fn the_walk_finds_the_longest_prefix_of_every_shape() {
        for (i, shape) in [0, 1, 2].into_iter().enumerate() {
            for width in [32, 128] {
                for n in [1, 40, 3_000] {
                    check(
                        width,
                        shape,
                        n,
                        0x9e37_79b9 + i as u64 * 7 + u64::from(width) + n as u64,
                    );
                }
            }
        }
    }

    #[test]
    fn an_empty_policy_is_world_everywhere() {
        let t = FamilyTables::build(&[], false);
        assert_eq!(t.chunks.len(), trie::ROOT_CHUNKS as usize);
        let Ok(leaf) = envfence_ebpf::classify::walk_v6(&t, &[0xfd; 16]);
        assert_eq!(leaf, 0);
    }

    #[test]
    fn chains_are_compressed() {
        // One /128: the root entry, one skip to bit 64, one to bit 128
        // (whose next entry is the leaf), both in one chunk.
        let a = 0xfd00_0000_0000_0000_0000_0000_0000_0001u128;
        let t = FamilyTables::build(&[(a, 128, 5)], false);
        assert_eq!(
            t.chunks.len(),
            trie::ROOT_CHUNKS as usize + 1,
            "two skips share a chunk"
        );
        let Ok(leaf) = envfence_ebpf::classify::walk_v6(&t, &a.to_be_bytes());
        assert_eq!(trie::leaf_env(leaf), 5);
        let Ok(leaf) = envfence_ebpf::classify::walk_v6(&t, &(a ^ 1 << 70).to_be_bytes());
        assert_eq!(leaf, 0);
    }
}

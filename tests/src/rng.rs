//! Random numbers for the generators (packets, conversations, routes,
//! synthetic policies): `rand` with the PCG generator of `rand_pcg`
//! (`Pcg64Mcg`), whose output for a seed is fixed across platforms and
//! versions, so a seed printed by a failing run reproduces it
//! (`ENVFENCE_FUZZ_SEED` in the tests, `--seed` of `cargo xtask fuzz`). [`Draw`] adds the few shorthands the generators use on
//! top of `rand::Rng`.

use rand::distr::{weighted::WeightedIndex, Distribution as _};
use rand::seq::IndexedRandom as _;
use rand::SeedableRng as _;

/// The generator every test draws from.
pub type Rng = rand_pcg::Pcg64Mcg;

/// A generator for `seed`.
pub fn seeded(seed: u64) -> Rng {
    Rng::seed_from_u64(seed)
}

/// Shorthands over [`rand::Rng`].
pub trait Draw: rand::Rng {
    /// Uniform in `0..n` (`n > 0`).
    fn below(&mut self, n: usize) -> usize {
        self.random_range(0..n)
    }

    /// Uniform in `lo..=hi`.
    fn range(&mut self, lo: usize, hi: usize) -> usize {
        self.random_range(lo..=hi)
    }

    /// True with probability `percent`/100.
    fn chance(&mut self, percent: u32) -> bool {
        self.random_ratio(percent.min(100), 100)
    }

    fn u8(&mut self) -> u8 {
        self.random()
    }

    fn u16(&mut self) -> u16 {
        self.random()
    }

    fn u32(&mut self) -> u32 {
        self.random()
    }

    /// One of `items` (not empty).
    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        *items.choose(self).expect("pick from an empty list")
    }

    /// An item with probability proportional to its weight (weights not
    /// all 0).
    fn weighted<T: Copy>(&mut self, items: &[(u32, T)]) -> T {
        let w = WeightedIndex::new(items.iter().map(|(w, _)| *w)).expect("weights");
        items[w.sample(self)].1
    }

    /// `n` random bytes.
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        let mut b = vec![0u8; n];
        self.fill(&mut b[..]);
        b
    }

    /// Fewer than `max` random bytes.
    fn bytes_below(&mut self, max: usize) -> Vec<u8> {
        let n = self.below(max);
        self.bytes(n)
    }
}

impl<R: rand::Rng + ?Sized> Draw for R {}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::RngCore as _;

    #[test]
    fn a_seed_reproduces_its_draws() {
        let mut a = seeded(7);
        let mut b = seeded(7);
        for _ in 0..100 {
            assert_eq!(a.next_u64(), b.next_u64());
        }
        assert_ne!(seeded(7).next_u64(), seeded(8).next_u64());
    }

    #[test]
    fn shorthands_stay_in_range() {
        let mut r = seeded(1);
        for _ in 0..1000 {
            assert!(r.below(3) < 3);
            assert!((5..=9).contains(&r.range(5, 9)));
            assert_eq!(r.weighted(&[(0, 1u8), (5, 2), (0, 3)]), 2);
            assert!(!r.chance(0));
            assert!(r.chance(100));
            assert!(r.bytes_below(4).len() < 4);
        }
    }
}

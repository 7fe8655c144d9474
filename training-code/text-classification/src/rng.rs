//! A small seeded random number generator (SplitMix64), so that splits, shuffles and initial
//! weights depend only on the seed, on every platform and device. The benchmark's PyTorch
//! reference (`scripts/bench/reference.py`) implements the same generator.

/// Independent streams derived from one seed: each use gets its own, so changing how many
/// numbers one consumer draws never changes what another sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// The test/validation/train split.
    Split = 1,
    /// Initial weights.
    Init = 2,
    /// The order of training examples in each epoch.
    Shuffle = 3,
}

/// SplitMix64 (Steele, Lea, Flood 2014): tiny, fast, statistically good enough for shuffles
/// and weight initialization.
#[derive(Debug, Clone)]
pub struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    /// A generator for one [`Stream`] of `seed`.
    pub fn new(seed: u64, stream: Stream) -> Self {
        Self {
            state: seed ^ (stream as u64).wrapping_mul(0xD1B5_4A32_D192_ED03),
        }
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A uniform integer in `0..n` (`n > 0`; the modulo bias is negligible for our sizes).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    /// A uniform `f32` in `[lo, hi)`, computed exactly the same way everywhere.
    pub fn uniform(&mut self, lo: f32, hi: f32) -> f32 {
        let unit = (self.next_u64() >> 40) as f32 * (1.0 / (1u64 << 24) as f32);
        lo + (hi - lo) * unit
    }

    /// Shuffles `items` in place (Fisher–Yates, from the end).
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.below(i + 1);
            items.swap(i, j);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_numbers_and_streams_differ() {
        let mut a = SplitMix64::new(7, Stream::Split);
        let mut b = SplitMix64::new(7, Stream::Split);
        let mut c = SplitMix64::new(7, Stream::Shuffle);
        let xs: Vec<u64> = (0..4).map(|_| a.next_u64()).collect();
        let ys: Vec<u64> = (0..4).map(|_| b.next_u64()).collect();
        let zs: Vec<u64> = (0..4).map(|_| c.next_u64()).collect();
        assert_eq!(xs, ys);
        assert_ne!(xs, zs);
    }

    #[test]
    fn uniform_stays_in_range() {
        let mut rng = SplitMix64::new(1, Stream::Init);
        for _ in 0..10_000 {
            let x = rng.uniform(-0.5, 0.5);
            assert!((-0.5..0.5).contains(&x), "{x}");
        }
    }

    #[test]
    fn shuffle_is_a_permutation() {
        let mut rng = SplitMix64::new(3, Stream::Shuffle);
        let mut items: Vec<u32> = (0..100).collect();
        rng.shuffle(&mut items);
        assert_ne!(items, (0..100).collect::<Vec<_>>());
        items.sort_unstable();
        assert_eq!(items, (0..100).collect::<Vec<_>>());
    }
}

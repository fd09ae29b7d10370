//! Counter-based randomness. Every draw in kadyn is a pure function of a key built from
//! (seed, domain, counters): no sequential RNG state exists anywhere, which is what makes resume,
//! rank sharding and multi-threaded batch building exact.
//!
//! SplitMix64 is used (rather than a `rand` generator) because its output is fixed by its
//! definition: datasets generated today must be byte-identical with any future crate version.

/// What a key is used for; keeps the streams of different purposes independent.
#[derive(Clone, Copy, Debug)]
#[repr(u64)]
pub enum Domain {
    Name = 1,
    Value = 2,
    TemplateSplit = 3,
    Sample = 4,
    EvalSet = 5,
    /// Donors of a control stream's values (`Facts::Shuffled`).
    Shuffle = 6,
}

const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;

/// The SplitMix64 output function: a bijective, well-mixing 64-bit finaliser.
#[inline]
pub fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(GOLDEN);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Hashes a seed, a domain and counters into one 64-bit key.
#[inline]
pub fn key(seed: u64, domain: Domain, counters: &[u64]) -> u64 {
    KeyPrefix::new(seed, domain).key(counters)
}

/// The part of a key fixed by (seed, domain): a stream hashes it once, not once per row (two of
/// the six SplitMix rounds of a row's key). `prefix.key(c) == key(seed, domain, c)` always.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeyPrefix(u64);

impl KeyPrefix {
    pub fn new(seed: u64, domain: Domain) -> Self {
        KeyPrefix(splitmix64(
            splitmix64(seed ^ 0x243F_6A88_85A3_08D3) ^ domain as u64,
        ))
    }

    #[inline]
    pub fn key(self, counters: &[u64]) -> u64 {
        let mut h = self.0;
        for &c in counters {
            h = splitmix64(h ^ splitmix64(c));
        }
        h
    }

    #[inline]
    pub fn rng(self, counters: &[u64]) -> CounterRng {
        CounterRng {
            state: self.key(counters),
        }
    }
}

/// A small generator seeded from one key; lives only for the duration of one sample.
#[derive(Clone, Debug)]
pub struct CounterRng {
    state: u64,
}

impl CounterRng {
    pub fn new(seed: u64, domain: Domain, counters: &[u64]) -> Self {
        CounterRng {
            state: key(seed, domain, counters),
        }
    }

    #[inline]
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(GOLDEN);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform integer in `0..n` without modulo bias (Lemire's multiply-and-reject).
    #[inline]
    pub fn below(&mut self, n: u64) -> u64 {
        debug_assert!(n > 0);
        let mut m = (self.next_u64() as u128) * (n as u128);
        if (m as u64) < n {
            let threshold = n.wrapping_neg() % n;
            while (m as u64) < threshold {
                m = (self.next_u64() as u128) * (n as u128);
            }
        }
        (m >> 64) as u64
    }

    /// Uniform float in `[0, 1)` with 53 bits of precision.
    #[inline]
    pub fn unit_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Fisher–Yates shuffle.
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.below(i as u64 + 1) as usize;
            items.swap(i, j);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_depend_on_every_part() {
        let base = key(1, Domain::Sample, &[5, 6]);
        assert_eq!(base, key(1, Domain::Sample, &[5, 6]));
        assert_ne!(base, key(2, Domain::Sample, &[5, 6]));
        assert_ne!(base, key(1, Domain::Value, &[5, 6]));
        assert_ne!(base, key(1, Domain::Sample, &[6, 5]));
        assert_ne!(base, key(1, Domain::Sample, &[5]));
        assert_eq!(base, KeyPrefix::new(1, Domain::Sample).key(&[5, 6]));
    }

    #[test]
    fn below_is_uniform() {
        let mut rng = CounterRng::new(7, Domain::Sample, &[0]);
        let mut counts = [0u32; 7];
        let n = 70_000;
        for _ in 0..n {
            counts[rng.below(7) as usize] += 1;
        }
        // Chi-square with 6 degrees of freedom; 22.46 is the 0.999 quantile.
        let expected = n as f64 / 7.0;
        let chi2: f64 = counts
            .iter()
            .map(|&c| (c as f64 - expected).powi(2) / expected)
            .sum();
        assert!(chi2 < 22.46, "chi2 = {chi2}, counts = {counts:?}");
    }

    #[test]
    fn shuffle_is_a_permutation() {
        let mut rng = CounterRng::new(3, Domain::TemplateSplit, &[1, 2]);
        let mut v: Vec<u32> = (0..25).collect();
        rng.shuffle(&mut v);
        let mut sorted = v.clone();
        sorted.sort();
        assert_eq!(sorted, (0..25).collect::<Vec<_>>());
        assert_ne!(v, (0..25).collect::<Vec<_>>());
    }
}

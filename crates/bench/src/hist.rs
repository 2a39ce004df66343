//! A log-bucketed latency histogram in the HDR style.
//!
//! Values (nanoseconds) below [`SUB_COUNT`] get a bucket each; above that every power of
//! two is split into [`HALF`] equal sub-buckets, so a recorded value is known to within
//! 1/256 (0.4 %) of itself. The bucket array grows only as far as the largest value seen,
//! so a histogram of sub-millisecond latencies stays around 30 KB.

/// Bits of sub-bucket resolution: 2^9 = 512 sub-buckets in the first, linear range.
const SUB_BITS: u32 = 9;
const SUB_COUNT: u64 = 1 << SUB_BITS;
const HALF: u64 = SUB_COUNT / 2;
/// Values are clamped to this (about 18 minutes in nanoseconds) to bound the array.
pub const MAX_VALUE: u64 = (1 << 40) - 1;

#[derive(Clone, Debug, Default)]
pub struct Histogram {
    counts: Vec<u64>,
    count: u64,
    sum: u128,
    min: u64,
    max: u64,
}

fn index_of(v: u64) -> usize {
    if v < SUB_COUNT {
        return v as usize;
    }
    let msb = 63 - v.leading_zeros();
    let shift = msb - (SUB_BITS - 1);
    let sub = v >> shift; // in [HALF, SUB_COUNT)
    (SUB_COUNT + (shift as u64 - 1) * HALF + (sub - HALF)) as usize
}

/// The lowest and highest value that land in bucket `idx`.
fn bucket_range(idx: usize) -> (u64, u64) {
    let idx = idx as u64;
    if idx < SUB_COUNT {
        return (idx, idx);
    }
    let k = idx - SUB_COUNT;
    let shift = k / HALF + 1;
    let sub = k % HALF + HALF;
    let low = sub << shift;
    (low, low + (1u64 << shift) - 1)
}

impl Histogram {
    pub fn new() -> Self {
        Self::default()
    }

    #[inline]
    pub fn record(&mut self, value: u64) {
        let v = value.min(MAX_VALUE);
        let idx = index_of(v);
        if idx >= self.counts.len() {
            self.counts.resize(idx + 1, 0);
        }
        self.counts[idx] += 1;
        if self.count == 0 || v < self.min {
            self.min = v;
        }
        if v > self.max {
            self.max = v;
        }
        self.count += 1;
        self.sum += v as u128;
    }

    pub fn merge(&mut self, other: &Histogram) {
        if other.count == 0 {
            return;
        }
        if other.counts.len() > self.counts.len() {
            self.counts.resize(other.counts.len(), 0);
        }
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += *b;
        }
        if self.count == 0 || other.min < self.min {
            self.min = other.min;
        }
        self.max = self.max.max(other.max);
        self.count += other.count;
        self.sum += other.sum;
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    pub fn min(&self) -> u64 {
        self.min
    }

    pub fn max(&self) -> u64 {
        self.max
    }

    pub fn mean(&self) -> f64 {
        if self.count == 0 {
            0.0
        } else {
            self.sum as f64 / self.count as f64
        }
    }

    /// The value at quantile `q` (0.0..=1.0): the highest value equivalent to the bucket
    /// holding the ceil(q * count)-th smallest sample, clamped to the exact min and max.
    pub fn quantile(&self, q: f64) -> u64 {
        if self.count == 0 {
            return 0;
        }
        let q = q.clamp(0.0, 1.0);
        let rank = ((q * self.count as f64).ceil() as u64).clamp(1, self.count);
        let mut seen = 0u64;
        for (idx, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                let (_, high) = bucket_range(idx);
                return high.clamp(self.min, self.max);
            }
        }
        self.max
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn within(actual: u64, expected: u64, rel: f64) -> bool {
        let diff = (actual as f64 - expected as f64).abs();
        diff <= expected as f64 * rel + 1.0
    }

    #[test]
    fn buckets_are_contiguous_and_monotonic() {
        let mut prev_high = None;
        for idx in 0..index_of(MAX_VALUE) + 1 {
            let (low, high) = bucket_range(idx);
            assert!(low <= high);
            if let Some(p) = prev_high {
                assert_eq!(low, p + 1, "gap before bucket {idx}");
            }
            assert_eq!(index_of(low), idx);
            assert_eq!(index_of(high), idx);
            prev_high = Some(high);
        }
        assert_eq!(prev_high, Some(MAX_VALUE));
    }

    #[test]
    fn relative_error_is_bounded() {
        let mut v = 1u64;
        while v < MAX_VALUE {
            let (low, high) = bucket_range(index_of(v));
            assert!(low <= v && v <= high);
            assert!(
                (high - low) as f64 <= v as f64 / HALF as f64,
                "v={v} low={low} high={high}"
            );
            v = v * 3 / 2 + 1;
        }
    }

    #[test]
    fn empty_histogram() {
        let h = Histogram::new();
        assert_eq!(h.count(), 0);
        assert_eq!(h.quantile(0.5), 0);
        assert_eq!(h.quantile(1.0), 0);
        assert_eq!(h.mean(), 0.0);
    }

    #[test]
    fn single_value_is_exact_at_every_quantile() {
        let mut h = Histogram::new();
        h.record(123_456_789);
        for q in [0.0, 0.5, 0.9, 0.99, 0.999, 1.0] {
            assert_eq!(h.quantile(q), 123_456_789);
        }
        assert_eq!(h.min(), 123_456_789);
        assert_eq!(h.max(), 123_456_789);
    }

    #[test]
    fn uniform_percentiles() {
        let mut h = Histogram::new();
        for v in 1..=100_000u64 {
            h.record(v * 1000); // 1 µs .. 100 ms
        }
        assert_eq!(h.count(), 100_000);
        assert_eq!(h.min(), 1000);
        assert_eq!(h.max(), 100_000_000);
        for (q, expected) in [
            (0.5, 50_000_000),
            (0.9, 90_000_000),
            (0.99, 99_000_000),
            (0.999, 99_900_000),
            (1.0, 100_000_000),
        ] {
            let got = h.quantile(q);
            assert!(
                within(got, expected, 1.0 / 256.0),
                "q={q} got={got} expected={expected}"
            );
            // Highest-equivalent reporting never under-reports.
            assert!(got >= expected, "q={q} got={got} expected={expected}");
        }
        assert!((h.mean() - 50_000_500.0).abs() < 1.0);
    }

    #[test]
    fn small_values_are_exact() {
        let mut h = Histogram::new();
        for v in 0..SUB_COUNT {
            h.record(v);
        }
        assert_eq!(h.quantile(0.5), SUB_COUNT / 2 - 1);
        assert_eq!(h.quantile(1.0), SUB_COUNT - 1);
        assert_eq!(h.quantile(0.0), 0);
    }

    #[test]
    fn tail_is_found() {
        // 99.8 % fast, 0.2 % slow: p99 fast, p99.9 slow.
        let mut h = Histogram::new();
        for _ in 0..998 {
            h.record(50_000);
        }
        for _ in 0..2 {
            h.record(20_000_000);
        }
        assert!(within(h.quantile(0.5), 50_000, 1.0 / 256.0));
        assert!(within(h.quantile(0.99), 50_000, 1.0 / 256.0));
        assert!(within(h.quantile(0.999), 20_000_000, 1.0 / 256.0));
        assert_eq!(h.max(), 20_000_000);
    }

    #[test]
    fn merge_equals_recording_everything_in_one() {
        let mut a = Histogram::new();
        let mut b = Histogram::new();
        let mut all = Histogram::new();
        for v in 0..10_000u64 {
            let x = v * v % 7_000_003 + 17;
            if v % 3 == 0 {
                a.record(x);
            } else {
                b.record(x);
            }
            all.record(x);
        }
        let mut merged = Histogram::new();
        merged.merge(&a);
        merged.merge(&b);
        merged.merge(&Histogram::new());
        assert_eq!(merged.count(), all.count());
        assert_eq!(merged.min(), all.min());
        assert_eq!(merged.max(), all.max());
        assert_eq!(merged.mean(), all.mean());
        for q in [0.1, 0.5, 0.9, 0.99, 0.999] {
            assert_eq!(merged.quantile(q), all.quantile(q));
        }
    }

    #[test]
    fn huge_values_are_clamped() {
        let mut h = Histogram::new();
        h.record(u64::MAX);
        assert_eq!(h.max(), MAX_VALUE);
        assert_eq!(h.quantile(1.0), MAX_VALUE);
    }
}

//! Per-stream sequence tracking: which sequence numbers of one publisher arrived, which
//! arrived twice, and (at the end) how many never arrived.
//!
//! A sliding bitmap: `base` is the lowest sequence not yet seen, and one bit per sequence
//! from `base` on records arrivals. Whole words of arrivals at the front are dropped as soon
//! as they fill, so an in-order stream needs one word of memory however long it runs; gaps
//! (loss, reordering, or the messages other members of a shared group took) cost one bit
//! per sequence until filled.

use std::collections::VecDeque;

/// The most words kept: a window of 2^26 sequence numbers (8 MiB). A stream whose gap
/// grows past it gives up on the oldest missing sequences (they stay counted as lost).
const MAX_WORDS: u64 = 1 << 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Seen {
    New,
    Duplicate,
}

#[derive(Clone, Debug, Default)]
pub struct SeqTracker {
    base: u64,
    words: VecDeque<u64>,
    received: u64,
    duplicates: u64,
}

/// The outcome of one stream once its publisher's final count is known.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StreamOutcome {
    pub received: u64,
    pub lost: u64,
    pub duplicates: u64,
    /// Sequences at or above what the publisher says it sent (should never happen).
    pub beyond: u64,
}

impl SeqTracker {
    pub fn new() -> Self {
        Self::default()
    }

    /// Records the arrival of `seq`.
    #[inline]
    pub fn record(&mut self, seq: u64) -> Seen {
        if seq < self.base {
            self.duplicates += 1;
            return Seen::Duplicate;
        }
        let off = seq - self.base;
        if off == 0 && self.words.is_empty() {
            // The common in-order case: nothing pending, no bitmap needed.
            self.base += 1;
            self.received += 1;
            return Seen::New;
        }
        let mut word = off / 64;
        if word >= MAX_WORDS {
            self.slide(word - MAX_WORDS + 1);
            word = MAX_WORDS - 1;
        }
        let word = word as usize;
        let bit = 1u64 << ((seq - self.base) % 64);
        while self.words.len() <= word {
            self.words.push_back(0);
        }
        if self.words[word] & bit != 0 {
            self.duplicates += 1;
            return Seen::Duplicate;
        }
        self.words[word] |= bit;
        self.received += 1;
        while self.words.front() == Some(&u64::MAX) {
            self.words.pop_front();
            self.base += 64;
        }
        if self.words.len() == 1 {
            // Gap closed within the last word: back to the bitmap-free fast path.
            let w = self.words[0];
            let k = w.trailing_ones();
            if w == (1u64 << k) - 1 {
                self.base += u64::from(k);
                self.words.clear();
            }
        }
        Seen::New
    }

    /// Drops `n` words from the front of the window, giving up on their missing sequences.
    fn slide(&mut self, n: u64) {
        let keep = (self.words.len() as u64).saturating_sub(n) as usize;
        let drop = self.words.len() - keep;
        self.words.drain(..drop);
        self.base = self.base.saturating_add(n.saturating_mul(64));
    }

    pub fn received(&self) -> u64 {
        self.received
    }

    pub fn duplicates(&self) -> u64 {
        self.duplicates
    }

    /// Whether `seq` has arrived (false for sequences given up on by a slide).
    #[cfg(test)]
    pub fn has(&self, seq: u64) -> bool {
        if seq < self.base {
            return true;
        }
        let off = seq - self.base;
        let word = (off / 64) as usize;
        word < self.words.len() && self.words[word] & (1 << (off % 64)) != 0
    }

    /// Sequences received at or above `sent` (the publisher never sent those).
    fn count_from(&self, sent: u64) -> u64 {
        let mut n = 0u64;
        if sent < self.base {
            n += self.base - sent;
        }
        for (i, w) in self.words.iter().enumerate() {
            let first = self.base + i as u64 * 64;
            if first + 64 <= sent {
                continue;
            }
            let mut w = *w;
            if first < sent {
                w &= !((1u64 << (sent - first)) - 1);
            }
            n += w.count_ones() as u64;
        }
        n
    }

    /// The stream's outcome given that its publisher sent sequences `0..sent`.
    pub fn finish(&self, sent: u64) -> StreamOutcome {
        let beyond = self.count_from(sent);
        let valid = self.received - beyond;
        StreamOutcome {
            received: self.received,
            lost: sent.saturating_sub(valid),
            duplicates: self.duplicates,
            beyond,
        }
    }
}

/// The trackers of the publishers `first..first + len` as one subscriber (or one shared
/// group) sees them.
#[derive(Clone, Debug)]
pub struct StreamSet {
    first: u32,
    trackers: Vec<SeqTracker>,
}

impl StreamSet {
    pub fn new(first: u32, len: u32) -> Self {
        Self {
            first,
            trackers: vec![SeqTracker::new(); len as usize],
        }
    }

    /// The slot of publisher `id`, or `None` if this set does not expect it.
    #[inline]
    pub fn slot(&self, id: u32) -> Option<usize> {
        let i = id.checked_sub(self.first)? as usize;
        (i < self.trackers.len()).then_some(i)
    }

    #[inline]
    pub fn record(&mut self, slot: usize, seq: u64) -> Seen {
        self.trackers[slot].record(seq)
    }

    /// (publisher id, tracker) pairs.
    pub fn iter(&self) -> impl Iterator<Item = (u32, &SeqTracker)> {
        self.trackers
            .iter()
            .enumerate()
            .map(move |(i, t)| (self.first + i as u32, t))
    }
}

/// Whether arrivals on one (publisher, subscriber) stream come in order: counts arrivals
/// of a sequence lower than the highest seen so far.
#[derive(Clone, Copy, Debug, Default)]
pub struct OrderCheck {
    /// Highest sequence seen plus one; 0 before the first arrival.
    next: u64,
}

impl OrderCheck {
    /// True if `seq` arrived after a higher sequence.
    #[inline]
    pub fn observe(&mut self, seq: u64) -> bool {
        let s1 = seq.saturating_add(1);
        if s1 > self.next {
            self.next = s1;
            false
        } else {
            s1 < self.next
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_order_stream_has_no_loss_and_no_memory() {
        let mut t = SeqTracker::new();
        for s in 0..1_000_000 {
            assert_eq!(t.record(s), Seen::New);
        }
        assert!(t.words.is_empty());
        assert_eq!(
            t.finish(1_000_000),
            StreamOutcome {
                received: 1_000_000,
                ..Default::default()
            }
        );
    }

    #[test]
    fn empty_stream_loses_everything_sent() {
        let t = SeqTracker::new();
        assert_eq!(t.finish(0), StreamOutcome::default());
        assert_eq!(t.finish(42).lost, 42);
    }

    #[test]
    fn duplicates_are_counted_once_each() {
        let mut t = SeqTracker::new();
        for s in 0..10 {
            t.record(s);
        }
        assert_eq!(t.record(3), Seen::Duplicate); // below base
        assert_eq!(t.record(20), Seen::New);
        assert_eq!(t.record(20), Seen::Duplicate); // inside the bitmap
        assert_eq!(t.record(9), Seen::Duplicate);
        let o = t.finish(21);
        assert_eq!(o.duplicates, 3);
        assert_eq!(o.received, 11);
        assert_eq!(o.lost, 10); // 10..=19
    }

    #[test]
    fn loss_in_the_middle_and_at_the_end() {
        let mut t = SeqTracker::new();
        for s in (0..1000).filter(|s| s % 100 != 7) {
            t.record(s);
        }
        // 10 holes, and the publisher sent 5 more than arrived at the end.
        let o = t.finish(1005);
        assert_eq!(o.lost, 15);
        assert_eq!(o.duplicates, 0);
        assert!(!t.has(107));
        assert!(t.has(108));
    }

    #[test]
    fn reordering_fills_gaps_and_compacts() {
        let mut t = SeqTracker::new();
        // Deliver in blocks of 200, each block reversed.
        for block in 0..50u64 {
            for s in (block * 200..block * 200 + 200).rev() {
                assert_eq!(t.record(s), Seen::New);
            }
        }
        let o = t.finish(10_000);
        assert_eq!(
            o,
            StreamOutcome {
                received: 10_000,
                ..Default::default()
            }
        );
        assert!(t.words.is_empty(), "a gap-free stream keeps no words");
        assert_eq!(t.base, 10_000);
    }

    #[test]
    fn shared_group_members_record_into_one_tracker() {
        // Three subscribers take turns; together they see everything once.
        let mut group = SeqTracker::new();
        let mut per_member = [SeqTracker::new(), SeqTracker::new(), SeqTracker::new()];
        for s in 0..3000u64 {
            let m = (s * 7 % 3) as usize;
            per_member[m].record(s);
            assert_eq!(group.record(s), Seen::New);
        }
        assert_eq!(
            group.finish(3000),
            StreamOutcome {
                received: 3000,
                ..Default::default()
            }
        );
        // Each member alone sees two thirds as missing.
        assert_eq!(per_member[0].finish(3000).lost, 2000);
        // The same message delivered to two members is a duplicate for the group.
        assert_eq!(group.record(1234), Seen::Duplicate);
        assert_eq!(group.finish(3000).duplicates, 1);
    }

    #[test]
    fn sequences_beyond_what_was_sent_are_not_counted_as_delivered() {
        let mut t = SeqTracker::new();
        for s in 0..10 {
            t.record(s);
        }
        t.record(70);
        t.record(200);
        let o = t.finish(10);
        assert_eq!(o.beyond, 2);
        assert_eq!(o.lost, 0);
        // A publisher that claims fewer than the contiguous prefix.
        let o = t.finish(5);
        assert_eq!(o.beyond, 7);
        assert_eq!(o.lost, 0);
    }

    #[test]
    fn huge_jump_slides_the_window() {
        let mut t = SeqTracker::new();
        t.record(0);
        t.record(2);
        let far = MAX_WORDS * 64 * 3;
        assert_eq!(t.record(far), Seen::New);
        assert!(t.words.len() as u64 <= MAX_WORDS);
        assert_eq!(t.received(), 3);
        assert_eq!(t.record(far), Seen::Duplicate);
        assert_eq!(t.finish(far + 1).lost, far + 1 - 3);
    }

    #[test]
    fn stream_set_slots() {
        let all = StreamSet::new(0, 8);
        assert_eq!(all.slot(0), Some(0));
        assert_eq!(all.slot(7), Some(7));
        assert_eq!(all.slot(8), None);
        let one = StreamSet::new(41, 1);
        assert_eq!(one.slot(41), Some(0));
        assert_eq!(one.slot(40), None);
        assert_eq!(one.slot(42), None);
        assert_eq!(one.iter().map(|(id, _)| id).collect::<Vec<_>>(), vec![41]);
    }

    #[test]
    fn order_check() {
        let mut o = OrderCheck::default();
        assert!(!o.observe(0));
        assert!(!o.observe(1));
        assert!(!o.observe(5)); // a gap is not reordering
        assert!(o.observe(3)); // late
        assert!(!o.observe(5)); // repeat of the highest is a duplicate, not reordering
        assert!(!o.observe(6));
        assert!(o.observe(4));
    }
}

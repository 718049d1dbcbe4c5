//! The deadline scheduler: wakes the engine at the next due time for any of N jobs.
//!
//! A binary min-heap of `(due, sequence, key)` plus a map `key → (due, sequence)`. Arming
//! pushes a new heap entry and records it in the map; re-arming (earlier *or* later:
//! Kubernetes' controllers once ignored raised deadlines because their queue only moved
//! items earlier) and cancelling just replace or drop the map entry, so the old heap entry
//! becomes stale and is skipped when it surfaces. Insert, re-arm and cancel are O(log N)
//! (amortised O(1) pushes), [`Scheduler::pop_due`] removes exactly the due entries, and the
//! heap is rebuilt from the map when stale entries outnumber live ones, so memory stays
//! bounded. Nothing ever scans all jobs on a timer: the daemon sleeps until
//! [`Scheduler::next_due`] or until a new observation arrives.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::hash::Hash;

use crate::model::Timestamp;

fn micros(t: Timestamp) -> i64 {
    t.timestamp_micros()
}

fn from_micros(m: i64) -> Timestamp {
    chrono::DateTime::from_timestamp_micros(m).unwrap_or(chrono::DateTime::<chrono::Utc>::MAX_UTC)
}

/// Due entries popped one by one before [`Scheduler::pop_due`] switches to a bulk pass.
const BULK_AFTER: usize = 1024;

/// Pending wake-ups, one per key.
#[derive(Debug, Clone)]
pub struct Scheduler<K> {
    heap: BinaryHeap<Reverse<(i64, u64, K)>>,
    by_key: HashMap<K, (i64, u64)>,
    seq: u64,
}

impl<K: Ord + Hash + Clone> Default for Scheduler<K> {
    fn default() -> Self {
        Scheduler {
            heap: BinaryHeap::new(),
            by_key: HashMap::new(),
            seq: 0,
        }
    }
}

impl<K: Ord + Hash + Clone> Scheduler<K> {
    /// An empty scheduler.
    pub fn new() -> Self {
        Self::default()
    }

    /// Arms `key` at `at`, replacing any earlier arming (earlier or later).
    pub fn arm(&mut self, key: K, at: Timestamp) {
        let at = micros(at);
        if self.by_key.get(&key).is_some_and(|(t, _)| *t == at) {
            return;
        }
        self.seq += 1;
        self.by_key.insert(key.clone(), (at, self.seq));
        self.heap.push(Reverse((at, self.seq, key)));
        self.maybe_compact();
    }

    /// Arms `key` at `at`, or cancels it when `at` is None.
    pub fn set(&mut self, key: K, at: Option<Timestamp>) {
        match at {
            Some(at) => self.arm(key, at),
            None => {
                self.cancel(&key);
            }
        }
    }

    /// Removes `key`; returns when it was due.
    pub fn cancel(&mut self, key: &K) -> Option<Timestamp> {
        let (at, _) = self.by_key.remove(key)?;
        self.maybe_compact();
        Some(from_micros(at))
    }

    /// When `key` is armed.
    pub fn due_at(&self, key: &K) -> Option<Timestamp> {
        self.by_key.get(key).map(|(t, _)| from_micros(*t))
    }

    /// The earliest armed time.
    pub fn next_due(&mut self) -> Option<Timestamp> {
        self.drop_stale_top();
        self.heap.peek().map(|Reverse((t, _, _))| from_micros(*t))
    }

    /// Removes and returns every key due at or before `now`, earliest first, at most `max`.
    ///
    /// Pops one entry at a time for the usual handful; past `BULK_AFTER` (1,024) due entries (a
    /// restart after downtime, a benchmark) it switches to one linear partition of the heap
    /// plus a sort of the due part, which is several times faster than popping each entry
    /// through a heap far larger than the cache.
    pub fn pop_due(&mut self, now: Timestamp, max: usize) -> Vec<(K, Timestamp)> {
        let now = micros(now);
        let mut out = Vec::new();
        while out.len() < max {
            self.drop_stale_top();
            match self.heap.peek() {
                Some(Reverse((t, _, _))) if *t <= now => {}
                _ => return out,
            }
            if out.len() == BULK_AFTER {
                break;
            }
            if let Some(Reverse((t, _, k))) = self.heap.pop() {
                self.by_key.remove(&k);
                out.push((k, from_micros(t)));
            }
        }
        if out.len() < max {
            self.pop_due_bulk(now, max, &mut out);
        }
        out
    }

    fn pop_due_bulk(&mut self, now: i64, max: usize, out: &mut Vec<(K, Timestamp)>) {
        let entries = std::mem::take(&mut self.heap).into_vec();
        let (mut due, rest): (Vec<_>, Vec<_>) = entries
            .into_iter()
            .partition(|Reverse((t, _, _))| *t <= now);
        due.retain(|Reverse((_, seq, k))| self.is_live(*seq, k));
        due.sort_unstable_by(|a, b| b.cmp(a)); // Reverse: earliest first
        let take = (max - out.len()).min(due.len());
        let keep = due.split_off(take);
        for Reverse((t, _, k)) in due {
            self.by_key.remove(&k);
            out.push((k, from_micros(t)));
        }
        let mut heap = rest;
        heap.extend(keep);
        self.heap = BinaryHeap::from(heap);
    }

    /// Number of armed keys.
    pub fn len(&self) -> usize {
        self.by_key.len()
    }

    /// Whether nothing is armed.
    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }

    fn is_live(&self, seq: u64, key: &K) -> bool {
        self.by_key.get(key).is_some_and(|(_, s)| *s == seq)
    }

    fn drop_stale_top(&mut self) {
        while let Some(Reverse((_, seq, k))) = self.heap.peek() {
            if self.is_live(*seq, k) {
                return;
            }
            self.heap.pop();
        }
    }

    /// Rebuilds the heap from the map when stale entries dominate (amortised O(1)).
    fn maybe_compact(&mut self) {
        if self.heap.len() > 2 * self.by_key.len() + 1024 {
            self.heap = self
                .by_key
                .iter()
                .map(|(k, (t, s))| Reverse((*t, *s, k.clone())))
                .collect();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn t(s: i64) -> Timestamp {
        chrono::DateTime::from_timestamp(1_800_000_000 + s, 0).expect("ts")
    }

    #[test]
    fn pops_in_order_only_when_due() {
        let mut s = Scheduler::new();
        s.arm("b", t(20));
        s.arm("a", t(10));
        s.arm("c", t(30));
        assert_eq!(s.next_due(), Some(t(10)));
        assert!(s.pop_due(t(9), 10).is_empty());
        assert_eq!(s.pop_due(t(20), 10), vec![("a", t(10)), ("b", t(20))]);
        assert_eq!(s.len(), 1);
    }

    #[test]
    fn rearm_earlier_and_later_both_work() {
        let mut s = Scheduler::new();
        s.arm("a", t(100));
        s.arm("a", t(10)); // earlier
        assert_eq!(s.next_due(), Some(t(10)));
        s.arm("a", t(500)); // later: the old time must not fire
        assert!(s.pop_due(t(100), 10).is_empty());
        assert_eq!(s.pop_due(t(500), 10), vec![("a", t(500))]);
        assert!(s.is_empty());
    }

    #[test]
    fn cancel_and_bounded_pop() {
        let mut s = Scheduler::new();
        for i in 0..10 {
            s.arm(i, t(i64::from(i)));
        }
        assert_eq!(s.cancel(&3), Some(t(3)));
        assert_eq!(s.cancel(&3), None);
        let first = s.pop_due(t(100), 4);
        assert_eq!(
            first.iter().map(|(k, _)| *k).collect::<Vec<_>>(),
            vec![0, 1, 2, 4]
        );
        assert_eq!(s.len(), 5);
        s.set(9, None);
        assert_eq!(s.len(), 4);
    }

    #[test]
    fn bulk_pop_matches_one_by_one_order_limits_and_rearms() {
        // 5,000 keys (past the bulk threshold), half re-armed later, some cancelled.
        let mut s = Scheduler::new();
        let mut model = std::collections::BTreeMap::new();
        for k in 0..5000u32 {
            let at = i64::from((k * 7919) % 4000);
            s.arm(k, t(at));
            model.insert(k, at);
        }
        for k in (0..5000u32).step_by(2) {
            let at = i64::from((k * 31) % 6000);
            s.arm(k, t(at));
            model.insert(k, at);
        }
        for k in (0..5000u32).step_by(7) {
            s.cancel(&k);
            model.remove(&k);
        }
        let mut want: Vec<(i64, u32)> = model
            .iter()
            .filter(|(_, a)| **a <= 3000)
            .map(|(k, a)| (*a, *k))
            .collect();
        want.sort_unstable();
        let first = s.pop_due(t(3000), 2000);
        let rest = s.pop_due(t(3000), usize::MAX);
        let got: Vec<i64> = first
            .iter()
            .chain(rest.iter())
            .map(|(_, at)| at.timestamp() - 1_800_000_000)
            .collect();
        assert_eq!(first.len(), 2000);
        assert_eq!(got.len(), want.len());
        assert!(got.windows(2).all(|w| w[0] <= w[1]), "not earliest first");
        let mut keys: Vec<u32> = first.iter().chain(rest.iter()).map(|(k, _)| *k).collect();
        keys.sort_unstable();
        let mut want_keys: Vec<u32> = want.iter().map(|(_, k)| *k).collect();
        want_keys.sort_unstable();
        assert_eq!(keys, want_keys);
        assert_eq!(s.len(), model.len() - want.len());
        assert_eq!(
            s.next_due().map(|d| d.timestamp() - 1_800_000_000 > 3000),
            Some(true)
        );
    }

    #[test]
    fn rearming_many_times_keeps_memory_bounded() {
        let mut s = Scheduler::new();
        for i in 0..100_000 {
            s.arm("a", t(i));
        }
        assert_eq!(s.len(), 1);
        assert!(
            s.heap.len() <= 1024 + 2,
            "heap holds {} stale entries",
            s.heap.len()
        );
        assert_eq!(s.pop_due(t(1_000_000), 10), vec![("a", t(99_999))]);
    }

    proptest! {
        // Against a naive model: whatever sequence of arms/cancels, pop_due returns exactly
        // the keys whose latest arming is due.
        #[test]
        fn matches_a_naive_model(ops in proptest::collection::vec((0u8..20, proptest::option::of(0i64..100)), 0..200), now in 0i64..100) {
            let mut s = Scheduler::new();
            let mut model: std::collections::BTreeMap<u8, i64> = Default::default();
            for (k, at) in ops {
                s.set(k, at.map(t));
                match at { Some(a) => { model.insert(k, a); } None => { model.remove(&k); } }
            }
            let mut got: Vec<u8> = s.pop_due(t(now), usize::MAX).into_iter().map(|(k, _)| k).collect();
            got.sort_unstable();
            let want: Vec<u8> = model.iter().filter(|(_, a)| **a <= now).map(|(k, _)| *k).collect();
            prop_assert_eq!(got, want);
            prop_assert_eq!(s.len(), model.values().filter(|a| **a > now).count());
        }
    }
}

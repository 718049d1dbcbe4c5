//! The deadline scheduler: wakes the engine at the next due time for any of N jobs.
//!
//! An ordered set of `(due, key)` plus a map `key → due`: insert, re-arm (earlier *or*
//! later: Kubernetes' controllers once ignored raised deadlines because their queue only
//! moved items earlier) and cancel are O(log N); [`Scheduler::pop_due`] removes exactly the
//! due entries; nothing ever scans all jobs. The daemon sleeps until [`Scheduler::next_due`]
//! (or until a new observation arrives) — no fixed ticker.

use std::collections::{BTreeSet, HashMap};
use std::hash::Hash;

use crate::model::Timestamp;

/// Pending wake-ups, one per key.
#[derive(Debug, Clone)]
pub struct Scheduler<K> {
    by_time: BTreeSet<(Timestamp, K)>,
    by_key: HashMap<K, Timestamp>,
}

impl<K: Ord + Hash + Clone> Default for Scheduler<K> {
    fn default() -> Self {
        Scheduler {
            by_time: BTreeSet::new(),
            by_key: HashMap::new(),
        }
    }
}

impl<K: Ord + Hash + Clone> Scheduler<K> {
    /// An empty scheduler.
    pub fn new() -> Self {
        Self::default()
    }

    /// Arms `key` at `at`, replacing any earlier arming (earlier or later). O(log N).
    pub fn arm(&mut self, key: K, at: Timestamp) {
        if let Some(old) = self.by_key.insert(key.clone(), at) {
            if old == at {
                return;
            }
            self.by_time.remove(&(old, key.clone()));
        }
        self.by_time.insert((at, key));
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

    /// Removes `key`; returns when it was due. O(log N).
    pub fn cancel(&mut self, key: &K) -> Option<Timestamp> {
        let at = self.by_key.remove(key)?;
        self.by_time.remove(&(at, key.clone()));
        Some(at)
    }

    /// When `key` is armed.
    pub fn due_at(&self, key: &K) -> Option<Timestamp> {
        self.by_key.get(key).copied()
    }

    /// The earliest armed time.
    pub fn next_due(&self) -> Option<Timestamp> {
        self.by_time.first().map(|(t, _)| *t)
    }

    /// Removes and returns every key due at or before `now`, earliest first, at most `max`.
    pub fn pop_due(&mut self, now: Timestamp, max: usize) -> Vec<(K, Timestamp)> {
        let mut out = Vec::new();
        while out.len() < max {
            match self.by_time.first() {
                Some((t, _)) if *t <= now => {}
                _ => break,
            }
            if let Some((t, k)) = self.by_time.pop_first() {
                self.by_key.remove(&k);
                out.push((k, t));
            }
        }
        out
    }

    /// Number of armed keys.
    pub fn len(&self) -> usize {
        self.by_key.len()
    }

    /// Whether nothing is armed.
    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
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
        assert_eq!(first.iter().map(|(k, _)| *k).collect::<Vec<_>>(), vec![0, 1, 2, 4]);
        assert_eq!(s.len(), 5);
        s.set(9, None);
        assert_eq!(s.len(), 4);
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

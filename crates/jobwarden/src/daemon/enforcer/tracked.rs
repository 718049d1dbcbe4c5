//! What the local enforcer holds per tracked job, and its deadline heap: a compact table.
//!
//! A [`JobRecord`] is about 450 bytes on the heap once its strings are counted; at a million
//! jobs that was 475 MB (BENCHMARKS.md). Here each job is one fixed-size slot of a `Vec`:
//! - the id as 16 bytes: jobwarden's own ids (lowercase ULIDs, [`JobId::generate`]) decoded
//!   to their 128 bits; any other id gets a small number of its own (ULIDs never have a zero
//!   time part, so the two never meet) kept with its name in a side table;
//! - the run id likewise (the local runtime's run ids are ULIDs too);
//! - times as `i64` nanoseconds since the epoch, durations as `u32` seconds (the store keeps
//!   whole seconds), pids, exit status and counters as plain integers;
//! - a name of up to 11 bytes inline, a longer one, the organisation and the job type
//!   interned (reference-counted: a string leaves the table with its last job);
//! - the rare or variable parts (reason, spec as JSON text, the steps taken) in one optional
//!   box, absent for a job that has none of them.
//!
//! Every conversion is exact: a record any of whose values the compact form cannot hold (a
//! time outside 1677–2262, a sub-second duration, a run id that is not a ULID, a namespace…)
//! is kept whole instead (`Held::Full`), so `get(insert(r)) == r` always (tested).
//!
//! Ids are found through a hash table of slot numbers hashed by the slot's 16-byte key (no
//! second copy of the key), and the deadline heap holds `(due µs, sequence, slot)` entries
//! of 16 bytes; a slot remembers the sequence of its current arming, so re-arming and
//! cancelling leave stale heap entries that are skipped when they surface, as in
//! [`crate::scheduler::Scheduler`]. Finished jobs handed to cleanup leave the table
//! ([`Tracked::remove`]): nothing of them stays in memory.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;
use std::time::Duration;

use hashbrown::HashTable;

use crate::model::{JobId, JobRecord, Outcome, RuntimeKind, Stage, Step, StepTaken, Timestamp};

/// Crockford base32 as [`JobId::generate`] writes it (lowercase).
const CROCKFORD: &[u8; 32] = b"0123456789abcdefghjkmnpqrstvwxyz";

/// The 128 bits of a lowercase ULID, or None for any other string (or a ULID whose time part
/// is zero: those numbers are kept for other ids).
pub fn ulid_bits(s: &str) -> Option<u128> {
    let b = s.as_bytes();
    if b.len() != 26 || b[0] > b'7' {
        return None;
    }
    let mut v: u128 = 0;
    for &c in b {
        let d = CROCKFORD.iter().position(|&x| x == c)?;
        v = (v << 5) | d as u128;
    }
    (v >> 80 != 0).then_some(v)
}

/// The lowercase ULID text of 128 bits.
pub fn ulid_text(v: u128) -> String {
    let mut out = [0u8; 26];
    for (i, c) in out.iter_mut().enumerate() {
        let shift = 5 * (25 - i);
        *c = CROCKFORD[((v >> shift) & 31) as usize];
    }
    out.iter().map(|&c| c as char).collect()
}

fn split(v: u128) -> [u64; 2] {
    [(v >> 64) as u64, v as u64]
}

fn join(k: [u64; 2]) -> u128 {
    (u128::from(k[0]) << 64) | u128::from(k[1])
}

const NO_TIME: i64 = i64::MIN;
const NO_DUR: u32 = u32::MAX;
const NO_I32: i32 = i32::MIN;
const NO_TICKS: u64 = u64::MAX;
const NO_OUTCOME: u8 = 0x7f;
const DRY_RUN: u8 = 0x80;

fn pack_ts(t: Timestamp) -> Option<i64> {
    t.timestamp_nanos_opt().filter(|n| *n != NO_TIME)
}

fn pack_opt_ts(t: Option<Timestamp>) -> Option<i64> {
    t.map_or(Some(NO_TIME), pack_ts)
}

fn unpack_ts(n: i64) -> Timestamp {
    chrono::DateTime::from_timestamp_nanos(n)
}

fn unpack_opt_ts(n: i64) -> Option<Timestamp> {
    (n != NO_TIME).then(|| unpack_ts(n))
}

fn pack_dur(d: Duration) -> Option<u32> {
    if d.subsec_nanos() != 0 {
        return None;
    }
    u32::try_from(d.as_secs()).ok().filter(|s| *s != NO_DUR)
}

fn pack_opt_dur(d: Option<Duration>) -> Option<u32> {
    d.map_or(Some(NO_DUR), pack_dur)
}

fn unpack_opt_dur(s: u32) -> Option<Duration> {
    (s != NO_DUR).then(|| Duration::from_secs(u64::from(s)))
}

fn pack_i32(v: Option<i32>) -> Option<i32> {
    match v {
        None => Some(NO_I32),
        Some(NO_I32) => None,
        Some(v) => Some(v),
    }
}

fn unpack_i32(v: i32) -> Option<i32> {
    (v != NO_I32).then_some(v)
}

/// Reference-counted strings by number; 0 is "none".
#[derive(Debug)]
struct Interner {
    by_str: HashMap<Arc<str>, u32>,
    entries: Vec<(Option<Arc<str>>, u32)>,
    free: Vec<u32>,
}

impl Default for Interner {
    fn default() -> Self {
        Interner {
            by_str: HashMap::new(),
            entries: vec![(None, 0)],
            free: Vec::new(),
        }
    }
}

impl Interner {
    fn intern(&mut self, s: Option<&str>) -> u32 {
        let Some(s) = s else { return 0 };
        if let Some(&i) = self.by_str.get(s) {
            self.entries[i as usize].1 += 1;
            return i;
        }
        let s: Arc<str> = Arc::from(s);
        let i = match self.free.pop() {
            Some(i) => {
                self.entries[i as usize] = (Some(s.clone()), 1);
                i
            }
            None => {
                self.entries.push((Some(s.clone()), 1));
                (self.entries.len() - 1) as u32
            }
        };
        self.by_str.insert(s, i);
        i
    }

    fn get(&self, i: u32) -> Option<&str> {
        self.entries.get(i as usize).and_then(|(s, _)| s.as_deref())
    }

    fn release(&mut self, i: u32) {
        if i == 0 {
            return;
        }
        let Some(entry) = self.entries.get_mut(i as usize) else {
            return;
        };
        entry.1 = entry.1.saturating_sub(1);
        if entry.1 == 0
            && let Some(s) = entry.0.take()
        {
            self.by_str.remove(&s);
            self.free.push(i);
        }
    }
}

/// A job's name in 12 bytes: up to 11 bytes inline (no allocation), a longer one interned.
#[derive(Debug, Clone, Copy)]
struct Name {
    /// 0–11: that many bytes inline; [`INTERNED`]: an [`Interner`] number in `bytes[..4]`.
    len: u8,
    bytes: [u8; 11],
}

const INTERNED: u8 = u8::MAX;

/// A step taken, in 24 bytes.
#[derive(Debug)]
struct PackedStep {
    due_at: i64,
    at: i64,
    step: Step,
}

/// The rare or variable parts of a job.
#[derive(Debug)]
struct Tail {
    reason: Option<Box<str>>,
    /// The spec's JSON text (None: `null`).
    spec: Option<Box<str>>,
    steps: Box<[PackedStep]>,
}

/// One job in the compact form (see the module docs).
#[derive(Debug)]
struct Packed {
    run_id: [u64; 2],
    tail: Option<Box<Tail>>,
    created_at: i64,
    started_at: i64,
    finished_at: i64,
    deadline: i64,
    last_heartbeat: i64,
    pid_start_ticks: u64,
    timeout: u32,
    grace: u32,
    ttl: u32,
    heartbeat_timeout: u32,
    pid: i32,
    exit_code: i32,
    signal: i32,
    attempt: u8,
    recovery_attempts: u8,
    /// The sequence of the job's current wake-up (0: not armed).
    seq: u32,
    /// Its due time (µs since the epoch) when armed: re-arming at the same time is a no-op.
    due: i64,
    name: Name,
    org: u32,
    job_type: u32,
    stage: Stage,
    /// The outcome's index in [`Outcome::ALL`] ([`NO_OUTCOME`]: none), plus [`DRY_RUN`].
    flags: u8,
}

/// A job as held: compact, or whole when the compact form cannot hold it exactly.
#[derive(Debug)]
enum Held {
    Packed(Packed),
    Full {
        /// As [`Packed::seq`].
        seq: u32,
        /// As [`Packed::due`].
        due: i64,
        job: Box<JobRecord>,
    },
}

impl Held {
    fn seq(&self) -> u32 {
        match self {
            Held::Packed(p) => p.seq,
            Held::Full { seq, .. } => *seq,
        }
    }

    fn set_seq(&mut self, to: u32) {
        match self {
            Held::Packed(p) => p.seq = to,
            Held::Full { seq, .. } => *seq = to,
        }
    }

    fn due(&self) -> i64 {
        match self {
            Held::Packed(p) => p.due,
            Held::Full { due, .. } => *due,
        }
    }

    fn set_due(&mut self, to: i64) {
        match self {
            Held::Packed(p) => p.due = to,
            Held::Full { due, .. } => *due = to,
        }
    }

    fn stage(&self) -> Stage {
        match self {
            Held::Packed(p) => p.stage,
            Held::Full { job, .. } => job.stage,
        }
    }
}

#[derive(Debug)]
struct Slot {
    key: [u64; 2],
    /// None: a free slot.
    held: Option<Held>,
}

impl Slot {
    fn seq(&self) -> u32 {
        self.held.as_ref().map_or(0, Held::seq)
    }
}

/// Job ids that are not ULIDs, by the number that stands for them.
#[derive(Debug, Default)]
struct OtherIds {
    by_id: HashMap<JobId, u128>,
    ids: HashMap<u128, JobId>,
    next: u128,
}

/// The local enforcer's jobs and their wake-ups (see the module docs).
#[derive(Debug, Default)]
pub struct Tracked {
    index: HashTable<u32>,
    hasher: RandomState,
    slots: Vec<Slot>,
    free: Vec<u32>,
    len: usize,
    heap: BinaryHeap<Reverse<(i64, u32, u32)>>,
    seq: u32,
    armed: usize,
    strings: Interner,
    other_ids: OtherIds,
}

fn micros(t: Timestamp) -> i64 {
    t.timestamp_micros()
}

fn from_micros(m: i64) -> Timestamp {
    chrono::DateTime::from_timestamp_micros(m).unwrap_or(chrono::DateTime::<chrono::Utc>::MAX_UTC)
}

impl Tracked {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of jobs held.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no job is held.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Number of armed wake-ups.
    pub fn armed(&self) -> usize {
        self.armed
    }

    /// How many jobs fell back to the whole record (for tests and the benchmark).
    pub fn held_whole(&self) -> usize {
        self.slots
            .iter()
            .filter(|s| matches!(s.held, Some(Held::Full { .. })))
            .count()
    }

    fn key_of(&self, id: &JobId) -> Option<[u64; 2]> {
        match ulid_bits(id.as_str()) {
            Some(v) => Some(split(v)),
            None => self.other_ids.by_id.get(id).map(|v| split(*v)),
        }
    }

    fn id_of(&self, key: [u64; 2]) -> JobId {
        let v = join(key);
        if v >> 80 != 0 {
            // A ULID: always a valid id.
            if let Ok(id) = JobId::parse(&ulid_text(v)) {
                return id;
            }
        }
        self.other_ids
            .ids
            .get(&v)
            .cloned()
            .unwrap_or_else(|| unreachable_id(v))
    }

    fn slot_of(&self, id: &JobId) -> Option<u32> {
        let key = self.key_of(id)?;
        let hash = self.hasher.hash_one(key);
        self.index
            .find(hash, |&i| self.slots[i as usize].key == key)
            .copied()
    }

    /// Whether the job is held.
    pub fn contains(&self, id: &JobId) -> bool {
        self.slot_of(id).is_some()
    }

    /// The job's record, rebuilt from the compact form.
    pub fn get(&self, id: &JobId) -> Option<JobRecord> {
        let i = self.slot_of(id)?;
        let slot = &self.slots[i as usize];
        Some(self.unpack(slot.key, slot.held.as_ref()?))
    }

    /// The job's stage, without rebuilding its record.
    pub fn stage(&self, id: &JobId) -> Option<Stage> {
        let i = self.slot_of(id)?;
        self.slots[i as usize].held.as_ref().map(Held::stage)
    }

    /// Every held job's stage.
    pub fn stages(&self) -> impl Iterator<Item = Stage> + '_ {
        self.slots
            .iter()
            .filter_map(|s| s.held.as_ref().map(Held::stage))
    }

    /// Holds `job` (replacing what was held for its id; its wake-up stays armed).
    pub fn insert(&mut self, job: JobRecord) {
        let mut held = self.pack(job.clone());
        match self.slot_of(&job.id) {
            Some(i) => {
                let slot = &mut self.slots[i as usize];
                held.set_seq(slot.seq());
                held.set_due(slot.held.as_ref().map_or(0, Held::due));
                if let Some(old) = slot.held.replace(held) {
                    self.release(old);
                }
            }
            None => {
                let key = match ulid_bits(job.id.as_str()) {
                    Some(v) => split(v),
                    None => {
                        let o = &mut self.other_ids;
                        o.next += 1;
                        o.by_id.insert(job.id.clone(), o.next);
                        o.ids.insert(o.next, job.id.clone());
                        split(o.next)
                    }
                };
                let slot = Slot {
                    key,
                    held: Some(held),
                };
                let i = match self.free.pop() {
                    Some(i) => {
                        self.slots[i as usize] = slot;
                        i
                    }
                    None => {
                        self.slots.push(slot);
                        (self.slots.len() - 1) as u32
                    }
                };
                let hasher = &self.hasher;
                let slots = &self.slots;
                self.index.insert_unique(hasher.hash_one(key), i, |&j| {
                    hasher.hash_one(slots[j as usize].key)
                });
                self.len += 1;
            }
        }
    }

    /// Drops the job and its wake-up; whether it was held.
    pub fn remove(&mut self, id: &JobId) -> bool {
        let Some(i) = self.slot_of(id) else {
            return false;
        };
        let key = self.slots[i as usize].key;
        let hash = self.hasher.hash_one(key);
        if let Ok(entry) = self.index.find_entry(hash, |&j| j == i) {
            entry.remove();
        }
        let slot = &mut self.slots[i as usize];
        if slot.seq() != 0 {
            self.armed -= 1;
        }
        if let Some(old) = slot.held.take() {
            self.release(old);
        }
        let v = join(key);
        if v >> 80 == 0
            && let Some(id) = self.other_ids.ids.remove(&v)
        {
            self.other_ids.by_id.remove(&id);
        }
        self.free.push(i);
        self.len -= 1;
        self.maybe_compact();
        true
    }

    /// Records a heartbeat at `at` (the later one wins); whether the job is held.
    pub fn set_heartbeat(&mut self, id: &JobId, at: Timestamp) -> bool {
        let Some(i) = self.slot_of(id) else {
            return false;
        };
        match (self.slots[i as usize].held.as_mut(), pack_ts(at)) {
            (Some(Held::Packed(p)), Some(n)) => {
                if p.last_heartbeat == NO_TIME || p.last_heartbeat < n {
                    p.last_heartbeat = n;
                }
                true
            }
            (Some(Held::Full { job, .. }), _) => {
                job.last_heartbeat = Some(job.last_heartbeat.map_or(at, |h| h.max(at)));
                true
            }
            (Some(Held::Packed(_)), None) => {
                // Out of the compact range: the whole record is held instead.
                let Some(mut job) = self.get(id) else {
                    return false;
                };
                job.last_heartbeat = Some(job.last_heartbeat.map_or(at, |h| h.max(at)));
                self.insert(job);
                true
            }
            (None, _) => false,
        }
    }

    // ----- wake-ups -----

    /// Arms the job's wake-up at `at`, replacing any earlier arming (earlier or later). A job
    /// that is not held is not armed (its wake-up would find nothing to do).
    pub fn arm(&mut self, id: &JobId, at: Timestamp) {
        let Some(i) = self.slot_of(id) else {
            return;
        };
        let at = micros(at);
        let Some(held) = self.slots[i as usize].held.as_mut() else {
            return;
        };
        if held.seq() != 0 && held.due() == at {
            return; // armed at that time already
        }
        if held.seq() == 0 {
            self.armed += 1;
        }
        self.seq = self.seq.wrapping_add(1).max(1);
        held.set_seq(self.seq);
        held.set_due(at);
        self.heap.push(Reverse((at, self.seq, i)));
        self.maybe_compact();
    }

    /// Arms the job at `at`, or cancels its wake-up when `at` is None.
    pub fn set(&mut self, id: &JobId, at: Option<Timestamp>) {
        match at {
            Some(at) => self.arm(id, at),
            None => self.cancel(id),
        }
    }

    /// Cancels the job's wake-up.
    pub fn cancel(&mut self, id: &JobId) {
        let Some(i) = self.slot_of(id) else {
            return;
        };
        if let Some(held) = self.slots[i as usize].held.as_mut()
            && held.seq() != 0
        {
            held.set_seq(0);
            self.armed -= 1;
            self.maybe_compact();
        }
    }

    fn is_live(&self, seq: u32, slot: u32) -> bool {
        self.slots
            .get(slot as usize)
            .is_some_and(|s| s.seq() == seq && s.held.is_some())
    }

    fn drop_stale_top(&mut self) {
        while let Some(Reverse((_, seq, slot))) = self.heap.peek() {
            if self.is_live(*seq, *slot) {
                return;
            }
            self.heap.pop();
        }
    }

    /// The earliest armed time.
    pub fn next_due(&mut self) -> Option<Timestamp> {
        self.drop_stale_top();
        self.heap.peek().map(|Reverse((t, _, _))| from_micros(*t))
    }

    /// Removes and returns every wake-up due at or before `now`, earliest first, at most
    /// `max`.
    pub fn pop_due(&mut self, now: Timestamp, max: usize) -> Vec<(JobId, Timestamp)> {
        let now = micros(now);
        let mut out = Vec::new();
        while out.len() < max {
            self.drop_stale_top();
            match self.heap.peek() {
                Some(Reverse((t, _, _))) if *t <= now => {}
                _ => break,
            }
            if let Some(Reverse((t, _, i))) = self.heap.pop() {
                let slot = &mut self.slots[i as usize];
                if let Some(held) = slot.held.as_mut() {
                    held.set_seq(0);
                }
                self.armed -= 1;
                let key = slot.key;
                out.push((self.id_of(key), from_micros(t)));
            }
        }
        out
    }

    /// Rebuilds the heap when stale entries outnumber live ones, so memory stays bounded.
    fn maybe_compact(&mut self) {
        if self.heap.len() > 1024 && self.heap.len() > 2 * self.armed {
            let slots = &self.slots;
            self.heap.retain(|Reverse((_, seq, i))| {
                slots
                    .get(*i as usize)
                    .is_some_and(|s| s.seq() == *seq && s.held.is_some())
            });
        }
    }

    // ----- the compact form -----

    fn release(&mut self, held: Held) {
        if let Held::Packed(p) = held {
            if p.name.len == INTERNED {
                self.strings.release(interned_number(&p.name));
            }
            self.strings.release(p.org);
            self.strings.release(p.job_type);
        }
    }

    fn pack(&mut self, job: JobRecord) -> Held {
        match self.try_pack(&job) {
            Some(p) => Held::Packed(p),
            None => Held::Full {
                seq: 0,
                due: 0,
                job: Box::new(job),
            },
        }
    }

    /// The compact form, or None when it cannot hold `job` exactly.
    fn try_pack(&mut self, job: &JobRecord) -> Option<Packed> {
        if job.namespace.is_some() || job.runtime != RuntimeKind::Local {
            return None;
        }
        let run_id = split(ulid_bits(&job.run_id)?);
        let steps = job
            .steps
            .iter()
            .map(|s| {
                Some(PackedStep {
                    due_at: pack_ts(s.due_at)?,
                    at: pack_ts(s.at)?,
                    step: s.step,
                })
            })
            .collect::<Option<Box<[PackedStep]>>>()?;
        let spec = match &job.spec {
            serde_json::Value::Null => None,
            v => Some(serde_json::to_string(v).ok()?.into_boxed_str()),
        };
        let tail = (job.reason.is_some() || spec.is_some() || !steps.is_empty()).then(|| {
            Box::new(Tail {
                reason: job.reason.as_deref().map(Box::from),
                spec,
                steps,
            })
        });
        let outcome = job.outcome.map_or(NO_OUTCOME, |o| {
            Outcome::ALL.iter().position(|x| *x == o).unwrap_or(0) as u8
        });
        let mut p = Packed {
            run_id,
            tail,
            created_at: pack_ts(job.created_at)?,
            started_at: pack_opt_ts(job.started_at)?,
            finished_at: pack_opt_ts(job.finished_at)?,
            deadline: pack_opt_ts(job.deadline)?,
            last_heartbeat: pack_opt_ts(job.last_heartbeat)?,
            pid_start_ticks: match job.pid_start_ticks {
                None => NO_TICKS,
                Some(NO_TICKS) => return None,
                Some(t) => t,
            },
            timeout: pack_dur(job.timeout)?,
            grace: pack_dur(job.grace)?,
            ttl: pack_opt_dur(job.ttl)?,
            heartbeat_timeout: pack_opt_dur(job.heartbeat_timeout)?,
            pid: pack_i32(job.pid)?,
            exit_code: pack_i32(job.exit_code)?,
            signal: pack_i32(job.signal)?,
            attempt: u8::try_from(job.attempt).ok()?,
            recovery_attempts: u8::try_from(job.recovery_attempts).ok()?,
            seq: 0,
            due: 0,
            name: Name {
                len: 0,
                bytes: [0; 11],
            },
            org: 0,
            job_type: 0,
            stage: job.stage,
            flags: outcome | if job.dry_run { DRY_RUN } else { 0 },
        };
        // Last: nothing below can fail, so nothing interned is left behind.
        p.name = self.name(&job.name);
        p.org = self.strings.intern(job.org.as_deref());
        p.job_type = self.strings.intern(job.job_type.as_deref());
        Some(p)
    }

    fn name(&mut self, s: &str) -> Name {
        let mut bytes = [0u8; 11];
        if s.len() <= bytes.len() {
            bytes[..s.len()].copy_from_slice(s.as_bytes());
            return Name {
                len: s.len() as u8,
                bytes,
            };
        }
        let i = self.strings.intern(Some(s));
        bytes[..4].copy_from_slice(&i.to_le_bytes());
        Name {
            len: INTERNED,
            bytes,
        }
    }

    fn name_text(&self, n: &Name) -> String {
        if n.len == INTERNED {
            return self
                .strings
                .get(interned_number(n))
                .unwrap_or_default()
                .to_owned();
        }
        // Copied from a `&str` whole: always valid UTF-8.
        String::from_utf8_lossy(&n.bytes[..usize::from(n.len)]).into_owned()
    }

    fn unpack(&self, key: [u64; 2], held: &Held) -> JobRecord {
        let p = match held {
            Held::Packed(p) => p,
            Held::Full { job, .. } => return (**job).clone(),
        };
        let tail = p.tail.as_deref();
        let s = |i| self.strings.get(i).map(str::to_owned);
        JobRecord {
            id: self.id_of(key),
            run_id: ulid_text(join(p.run_id)),
            attempt: u32::from(p.attempt),
            runtime: RuntimeKind::Local,
            namespace: None,
            name: self.name_text(&p.name),
            org: s(p.org),
            job_type: s(p.job_type),
            stage: p.stage,
            outcome: Outcome::ALL.get(usize::from(p.flags & NO_OUTCOME)).copied(),
            reason: tail.and_then(|t| t.reason.as_deref().map(str::to_owned)),
            created_at: unpack_ts(p.created_at),
            started_at: unpack_opt_ts(p.started_at),
            finished_at: unpack_opt_ts(p.finished_at),
            timeout: Duration::from_secs(u64::from(p.timeout)),
            grace: Duration::from_secs(u64::from(p.grace)),
            ttl: unpack_opt_dur(p.ttl),
            deadline: unpack_opt_ts(p.deadline),
            steps: tail.map_or_else(Vec::new, |t| {
                t.steps
                    .iter()
                    .map(|s| StepTaken {
                        step: s.step,
                        due_at: unpack_ts(s.due_at),
                        at: unpack_ts(s.at),
                    })
                    .collect()
            }),
            heartbeat_timeout: unpack_opt_dur(p.heartbeat_timeout),
            last_heartbeat: unpack_opt_ts(p.last_heartbeat),
            recovery_attempts: u32::from(p.recovery_attempts),
            pid: unpack_i32(p.pid),
            pid_start_ticks: (p.pid_start_ticks != NO_TICKS).then_some(p.pid_start_ticks),
            exit_code: unpack_i32(p.exit_code),
            signal: unpack_i32(p.signal),
            // Our own serialisation of a JSON value always parses back to it.
            spec: tail
                .and_then(|t| t.spec.as_deref())
                .map_or(serde_json::Value::Null, |s| {
                    serde_json::from_str(s).unwrap_or(serde_json::Value::Null)
                }),
            dry_run: p.flags & DRY_RUN != 0,
        }
    }
}

fn interned_number(n: &Name) -> u32 {
    u32::from_le_bytes([n.bytes[0], n.bytes[1], n.bytes[2], n.bytes[3]])
}

/// A key that stands for no id: never made (every non-ULID key is in the side table while
/// its slot is held). A placeholder id rather than a panic in the daemon's loop.
fn unreachable_id(v: u128) -> JobId {
    tracing::error!(key = v, "tracked job without an id (a bug)");
    JobId::parse("unknown-job").unwrap_or_else(|_| JobId::generate(crate::clock::now()))
}

#[cfg(test)]
#[path = "tracked_tests.rs"]
mod tests;

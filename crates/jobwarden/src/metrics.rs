//! Prometheus metrics, rendered in the text exposition format for `/metrics`.
//!
//! Hand-rolled on atomics: a handful of counters, gauges and one histogram do not justify a
//! metrics dependency. Labels are fixed enums, so cardinality is bounded.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::model::{Stage, Step};

/// Upper bounds (seconds) of the enforcement-delay histogram buckets.
pub const DELAY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// Upper bounds (seconds) of the admission-latency histogram buckets.
pub const ADMISSION_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0,
];

/// The results an admission request is counted under.
pub const ADMISSION_RESULTS: &[&str] = &["allowed", "patched", "warned", "denied", "bad_request"];

/// Which admission webhook answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdmissionWebhook {
    /// `POST /admission/mutate`.
    Mutate,
    /// `POST /admission/validate`.
    Validate,
}

impl AdmissionWebhook {
    const ALL: [AdmissionWebhook; 2] = [AdmissionWebhook::Mutate, AdmissionWebhook::Validate];

    fn as_str(self) -> &'static str {
        match self {
            AdmissionWebhook::Mutate => "mutate",
            AdmissionWebhook::Validate => "validate",
        }
    }

    fn index(self) -> usize {
        match self {
            AdmissionWebhook::Mutate => 0,
            AdmissionWebhook::Validate => 1,
        }
    }
}

/// One webhook's latency histogram.
#[derive(Debug, Default)]
struct Latency {
    buckets: [AtomicU64; 14],
    count: AtomicU64,
    sum_nanos: AtomicU64,
}

/// All metrics of one daemon.
#[derive(Debug, Default)]
pub struct Metrics {
    jobs_by_stage: Mutex<BTreeMap<&'static str, u64>>,
    /// Jobs in `cleanup` and `cleaned`, which the enforcer no longer holds: counted at load,
    /// then moved along as jobs go to cleanup and get cleaned.
    jobs_settled: Mutex<Settled>,
    steps: [AtomicU64; 4],
    delay_buckets: [AtomicU64; 15],
    delay_count: AtomicU64,
    delay_sum_micros: AtomicU64,
    queue_depth: AtomicU64,
    queue_dead: AtomicU64,
    audit_rows: AtomicU64,
    errors: Mutex<BTreeMap<String, u64>>,
    cleanup_tasks: Mutex<BTreeMap<(String, &'static str), u64>>,
    /// Kubernetes runtime only: whether this replica holds the Lease (None: not rendered).
    leader: Mutex<Option<bool>>,
    /// The reclaimed figures' lines, recomputed from the store
    /// ([`crate::reclaimed::refresh_metrics`]); empty until the first computation.
    reclaimed: Mutex<String>,
    /// The admission webhook runs: its metrics are rendered.
    admission_on: std::sync::atomic::AtomicBool,
    /// Admission requests by (webhook, result).
    admission_requests: Mutex<BTreeMap<(&'static str, &'static str), u64>>,
    /// Admission latency per webhook (mutate, validate).
    admission_latency: [Latency; 2],
}

/// Counts of the jobs past their TTL.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Settled {
    cleanup: u64,
    cleaned: u64,
}

fn step_index(s: Step) -> usize {
    match s {
        Step::Warn => 0,
        Step::SoftKill => 1,
        Step::HardKill => 2,
        Step::ForceDelete => 3,
    }
}

impl Metrics {
    /// The stored jobs in `cleanup` and `cleaned` (the enforcer's load): the rest of the
    /// jobs-by-stage gauge, which [`Metrics::set_jobs_by_stage`] does not see.
    pub fn set_settled_jobs(&self, cleanup: u64, cleaned: u64) {
        *self.jobs_settled.lock().unwrap_or_else(|e| e.into_inner()) = Settled { cleanup, cleaned };
    }

    /// A job moved to `cleanup` (its TTL expired).
    pub fn job_to_cleanup(&self) {
        self.jobs_settled
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .cleanup += 1;
    }

    /// A job moved from `cleanup` to `cleaned`.
    pub fn job_cleaned(&self) {
        let mut s = self.jobs_settled.lock().unwrap_or_else(|e| e.into_inner());
        s.cleanup = s.cleanup.saturating_sub(1);
        s.cleaned += 1;
    }

    /// Replaces the jobs-by-stage gauge with the jobs the enforcer holds (every stage before
    /// `cleanup`; the two after it come from [`Metrics::set_settled_jobs`] and its updates).
    pub fn set_jobs_by_stage(&self, counts: impl IntoIterator<Item = (Stage, u64)>) {
        let mut m = self.jobs_by_stage.lock().unwrap_or_else(|e| e.into_inner());
        m.clear();
        for s in Stage::ALL {
            m.insert(s.as_str(), 0);
        }
        for (s, n) in counts {
            *m.entry(s.as_str()).or_default() += n;
        }
    }

    /// An escalation step was carried out `delay_secs` after it was due.
    pub fn step_taken(&self, step: Step, delay_secs: f64) {
        self.steps[step_index(step)].fetch_add(1, Ordering::Relaxed);
        let d = delay_secs.max(0.0);
        for (i, b) in DELAY_BUCKETS.iter().enumerate() {
            if d <= *b {
                self.delay_buckets[i].fetch_add(1, Ordering::Relaxed);
            }
        }
        self.delay_count.fetch_add(1, Ordering::Relaxed);
        self.delay_sum_micros
            .fetch_add((d * 1e6) as u64, Ordering::Relaxed);
    }

    /// Current cleanup-queue depth (pending + running) and dead letters.
    pub fn set_queue(&self, depth: u64, dead: u64) {
        self.queue_depth.store(depth, Ordering::Relaxed);
        self.queue_dead.store(dead, Ordering::Relaxed);
    }

    /// Audit rows written.
    pub fn audit_written(&self, n: u64) {
        self.audit_rows.fetch_add(n, Ordering::Relaxed);
    }

    /// An error of `kind` (store, signal, hook, cleanup, …).
    pub fn error(&self, kind: &str) {
        let mut m = self.errors.lock().unwrap_or_else(|e| e.into_inner());
        *m.entry(kind.to_owned()).or_default() += 1;
    }

    /// A cleanup task finished with `result` (`ok`, `retry`, `dead`).
    pub fn cleanup_task(&self, kind: &str, result: &'static str) {
        let mut m = self.cleanup_tasks.lock().unwrap_or_else(|e| e.into_inner());
        *m.entry((kind.to_owned(), result)).or_default() += 1;
    }

    /// Kubernetes runtime: whether this replica leads (acts) now. The local daemon never
    /// sets it, so its `/metrics` has no `jobwarden_leader`.
    pub fn set_leader(&self, leading: bool) {
        *self.leader.lock().unwrap_or_else(|e| e.into_inner()) = Some(leading);
    }

    /// Replaces the reclaimed figures' lines (`crate::reclaimed::metrics_text`).
    pub fn set_reclaimed(&self, text: String) {
        *self.reclaimed.lock().unwrap_or_else(|e| e.into_inner()) = text;
    }

    /// The admission webhook runs: `/metrics` renders its counters (zero until requests
    /// come) and histogram.
    pub fn admission_enabled(&self) {
        self.admission_on.store(true, Ordering::Relaxed);
    }

    /// An admission request answered by `webhook` with `result` (one of
    /// [`ADMISSION_RESULTS`]) after `seconds` (from the body's arrival to the answer).
    pub fn admission_request(&self, webhook: AdmissionWebhook, result: &'static str, seconds: f64) {
        *self
            .admission_requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry((webhook.as_str(), result))
            .or_default() += 1;
        let h = &self.admission_latency[webhook.index()];
        let d = seconds.max(0.0);
        for (i, b) in ADMISSION_BUCKETS.iter().enumerate() {
            if d <= *b {
                h.buckets[i].fetch_add(1, Ordering::Relaxed);
            }
        }
        h.count.fetch_add(1, Ordering::Relaxed);
        h.sum_nanos.fetch_add((d * 1e9) as u64, Ordering::Relaxed);
    }

    /// Admission requests counted so far under (`webhook`, `result`).
    pub fn admission_requests(&self, webhook: AdmissionWebhook, result: &str) -> u64 {
        self.admission_requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .find(|((w, r), _)| *w == webhook.as_str() && *r == result)
            .map_or(0, |(_, n)| *n)
    }

    fn render_admission(&self, o: &mut String) {
        if !self.admission_on.load(Ordering::Relaxed) {
            return;
        }
        let _ = writeln!(
            o,
            "# HELP jobwarden_admission_requests_total Admission webhook requests by webhook and result."
        );
        let _ = writeln!(o, "# TYPE jobwarden_admission_requests_total counter");
        let counts = self
            .admission_requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        for w in AdmissionWebhook::ALL {
            for r in ADMISSION_RESULTS {
                let n = counts.get(&(w.as_str(), *r)).copied().unwrap_or(0);
                let _ = writeln!(
                    o,
                    "jobwarden_admission_requests_total{{webhook=\"{}\",result=\"{r}\"}} {n}",
                    w.as_str()
                );
            }
        }
        let _ = writeln!(
            o,
            "# HELP jobwarden_admission_duration_seconds Time from an admission request's body to its answer."
        );
        let _ = writeln!(o, "# TYPE jobwarden_admission_duration_seconds histogram");
        for w in AdmissionWebhook::ALL {
            let h = &self.admission_latency[w.index()];
            for (i, b) in ADMISSION_BUCKETS.iter().enumerate() {
                let _ = writeln!(
                    o,
                    "jobwarden_admission_duration_seconds_bucket{{webhook=\"{}\",le=\"{b}\"}} {}",
                    w.as_str(),
                    h.buckets[i].load(Ordering::Relaxed)
                );
            }
            let count = h.count.load(Ordering::Relaxed);
            let _ = writeln!(
                o,
                "jobwarden_admission_duration_seconds_bucket{{webhook=\"{}\",le=\"+Inf\"}} {count}",
                w.as_str()
            );
            let _ = writeln!(
                o,
                "jobwarden_admission_duration_seconds_sum{{webhook=\"{}\"}} {}",
                w.as_str(),
                h.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9
            );
            let _ = writeln!(
                o,
                "jobwarden_admission_duration_seconds_count{{webhook=\"{}\"}} {count}",
                w.as_str()
            );
        }
    }

    /// Steps taken so far, by step.
    pub fn steps_taken(&self, step: Step) -> u64 {
        self.steps[step_index(step)].load(Ordering::Relaxed)
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut o = String::new();
        let _ = writeln!(o, "# HELP jobwarden_jobs Jobs by lifecycle stage.");
        let _ = writeln!(o, "# TYPE jobwarden_jobs gauge");
        let settled = *self.jobs_settled.lock().unwrap_or_else(|e| e.into_inner());
        // Rendered once the enforcer filled the gauge (the Kubernetes runtime does not).
        for (stage, n) in self
            .jobs_by_stage
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            let n = n + match *stage {
                "cleanup" => settled.cleanup,
                "cleaned" => settled.cleaned,
                _ => 0,
            };
            let _ = writeln!(o, "jobwarden_jobs{{stage=\"{stage}\"}} {n}");
        }
        let _ = writeln!(
            o,
            "# HELP jobwarden_escalation_steps_total Escalation steps carried out."
        );
        let _ = writeln!(o, "# TYPE jobwarden_escalation_steps_total counter");
        for s in Step::ALL {
            let _ = writeln!(
                o,
                "jobwarden_escalation_steps_total{{action=\"{}\"}} {}",
                s.as_str(),
                self.steps_taken(*s)
            );
        }
        let _ = writeln!(
            o,
            "# HELP jobwarden_enforcement_delay_seconds Seconds between a step's due time and its execution."
        );
        let _ = writeln!(o, "# TYPE jobwarden_enforcement_delay_seconds histogram");
        for (i, b) in DELAY_BUCKETS.iter().enumerate() {
            let _ = writeln!(
                o,
                "jobwarden_enforcement_delay_seconds_bucket{{le=\"{b}\"}} {}",
                self.delay_buckets[i].load(Ordering::Relaxed)
            );
        }
        let count = self.delay_count.load(Ordering::Relaxed);
        let _ = writeln!(
            o,
            "jobwarden_enforcement_delay_seconds_bucket{{le=\"+Inf\"}} {count}"
        );
        let _ = writeln!(
            o,
            "jobwarden_enforcement_delay_seconds_sum {}",
            self.delay_sum_micros.load(Ordering::Relaxed) as f64 / 1e6
        );
        let _ = writeln!(o, "jobwarden_enforcement_delay_seconds_count {count}");
        let _ = writeln!(
            o,
            "# HELP jobwarden_cleanup_queue_depth Cleanup tasks pending or running."
        );
        let _ = writeln!(o, "# TYPE jobwarden_cleanup_queue_depth gauge");
        let _ = writeln!(
            o,
            "jobwarden_cleanup_queue_depth {}",
            self.queue_depth.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            o,
            "# HELP jobwarden_cleanup_queue_dead Dead-lettered cleanup tasks."
        );
        let _ = writeln!(o, "# TYPE jobwarden_cleanup_queue_dead gauge");
        let _ = writeln!(
            o,
            "jobwarden_cleanup_queue_dead {}",
            self.queue_dead.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            o,
            "# HELP jobwarden_cleanup_tasks_total Cleanup task executions by kind and result."
        );
        let _ = writeln!(o, "# TYPE jobwarden_cleanup_tasks_total counter");
        for ((kind, result), n) in self
            .cleanup_tasks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            let _ = writeln!(
                o,
                "jobwarden_cleanup_tasks_total{{kind=\"{kind}\",result=\"{result}\"}} {n}"
            );
        }
        let _ = writeln!(o, "# HELP jobwarden_audit_rows_total Audit rows written.");
        let _ = writeln!(o, "# TYPE jobwarden_audit_rows_total counter");
        let _ = writeln!(
            o,
            "jobwarden_audit_rows_total {}",
            self.audit_rows.load(Ordering::Relaxed)
        );
        let _ = writeln!(o, "# HELP jobwarden_errors_total Errors by kind.");
        let _ = writeln!(o, "# TYPE jobwarden_errors_total counter");
        for (kind, n) in self.errors.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            let _ = writeln!(o, "jobwarden_errors_total{{kind=\"{kind}\"}} {n}");
        }
        if let Some(leading) = *self.leader.lock().unwrap_or_else(|e| e.into_inner()) {
            let _ = writeln!(
                o,
                "# HELP jobwarden_leader 1 while this replica holds the leader Lease and acts."
            );
            let _ = writeln!(o, "# TYPE jobwarden_leader gauge");
            let _ = writeln!(o, "jobwarden_leader {}", u8::from(leading));
        }
        self.render_admission(&mut o);
        o.push_str(&self.reclaimed.lock().unwrap_or_else(|e| e.into_inner()));
        o
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_histogram_cumulatively() {
        let m = Metrics::default();
        m.step_taken(Step::SoftKill, 0.003);
        m.step_taken(Step::SoftKill, 0.2);
        m.step_taken(Step::Warn, 100.0);
        let text = m.render();
        assert!(
            text.contains("jobwarden_escalation_steps_total{action=\"soft_kill\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("jobwarden_enforcement_delay_seconds_bucket{le=\"0.005\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("jobwarden_enforcement_delay_seconds_bucket{le=\"0.25\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("jobwarden_enforcement_delay_seconds_bucket{le=\"+Inf\"} 3"),
            "{text}"
        );
        assert!(
            text.contains("jobwarden_enforcement_delay_seconds_count 3"),
            "{text}"
        );
        assert!(!text.contains("jobwarden_leader"), "local daemon: {text}");
        m.set_leader(true);
        assert!(m.render().contains("\njobwarden_leader 1\n"));
        m.set_leader(false);
        assert!(m.render().contains("\njobwarden_leader 0\n"));
    }

    #[test]
    fn admission_metrics_appear_once_enabled_with_every_result() {
        let m = Metrics::default();
        assert!(!m.render().contains("admission"), "off: not rendered");
        m.admission_enabled();
        m.admission_request(AdmissionWebhook::Mutate, "patched", 0.0003);
        m.admission_request(AdmissionWebhook::Validate, "denied", 0.02);
        let text = m.render();
        for line in [
            "jobwarden_admission_requests_total{webhook=\"mutate\",result=\"patched\"} 1",
            "jobwarden_admission_requests_total{webhook=\"mutate\",result=\"denied\"} 0",
            "jobwarden_admission_requests_total{webhook=\"validate\",result=\"denied\"} 1",
            "jobwarden_admission_duration_seconds_bucket{webhook=\"mutate\",le=\"0.00025\"} 0",
            "jobwarden_admission_duration_seconds_bucket{webhook=\"mutate\",le=\"0.0005\"} 1",
            "jobwarden_admission_duration_seconds_bucket{webhook=\"validate\",le=\"0.01\"} 0",
            "jobwarden_admission_duration_seconds_bucket{webhook=\"validate\",le=\"0.025\"} 1",
            "jobwarden_admission_duration_seconds_count{webhook=\"validate\"} 1",
        ] {
            assert!(text.contains(line), "{line}: {text}");
        }
        assert_eq!(
            m.admission_requests(AdmissionWebhook::Validate, "denied"),
            1
        );
    }

    #[test]
    fn jobs_by_stage_count_the_jobs_past_their_ttl() {
        let m = Metrics::default();
        m.set_settled_jobs(1, 5);
        m.set_jobs_by_stage([(Stage::Running, 2), (Stage::Completed, 1)]);
        m.job_to_cleanup();
        m.job_cleaned();
        let text = m.render();
        for line in [
            "jobwarden_jobs{stage=\"running\"} 2",
            "jobwarden_jobs{stage=\"completed\"} 1",
            "jobwarden_jobs{stage=\"cleanup\"} 1",
            "jobwarden_jobs{stage=\"cleaned\"} 6",
        ] {
            assert!(text.contains(line), "{line}: {text}");
        }
    }
}

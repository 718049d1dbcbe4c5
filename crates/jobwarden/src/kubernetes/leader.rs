//! Leader election on one coordination.k8s.io/v1 Lease, after client-go's `leaderelection`:
//! only the replica holding the Lease acts; the others keep their watches warm and wait.
//!
//! - [`decide`] is the whole policy, a pure function of the Lease as observed, who we are and
//!   `now`: create the Lease, take it over, renew it, or follow its holder until a time.
//! - [`Elector`] carries one decision out per [`Elector::step`] with `Api<Lease>`: GET, POST
//!   when missing, PUT carrying the object's `resourceVersion`. Of two replicas writing at once
//!   one gets 409 Conflict (KUBERNETES.md §9), reads again and, if the other one now holds a
//!   valid Lease, follows. It never touches anything but the one Lease.
//! - [`run`] drives it: a step every `lease_duration / 3` (the retry period), leadership
//!   published on a `watch` channel, the Lease released on shutdown (best effort).
//!
//! Safety (never two replicas acting). With D = `lease_duration`:
//! - A leader acts until its last successful write *started* + `2D/3` (the renew deadline),
//!   by its own clock; [`run`] publishes `false` at that moment even while a call hangs.
//! - Another replica takes the Lease over only when `renewTime + leaseDurationSeconds` has
//!   passed by its clock *and* it has itself seen the same `resourceVersion` for
//!   `leaseDurationSeconds`. The second condition is client-go's `observedTime`: it makes the
//!   takeover independent of clock skew between nodes (only clock rates matter), since the
//!   replica first saw the object after the leader's write started. So a new leader starts
//!   at least D/3 after the old one stopped. `leaseDurationSeconds` is D rounded up.
//! - A Lease without a holder (released) is taken at once: its holder stopped before
//!   releasing it.
//!
//! Only this module and the controller's gate know about leadership; actions and the
//! reconciler do not.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::Client;
use kube::api::{Api, PostParams};
use tokio::sync::watch;

use crate::model::{Timestamp, add, fmt_ts, since};

use super::config::KubernetesConfig;
use super::{to_chrono, to_jiff};
use crate::runtime::kubernetes::calls::CallResult;

/// Where a pod's service account token mounts its namespace.
pub const SERVICE_ACCOUNT_NAMESPACE_FILE: &str =
    "/var/run/secrets/kubernetes.io/serviceaccount/namespace";

/// Wait before the next step after a failed one (capped by the retry period): a leader whose
/// renewal failed tries again several times before its renew deadline.
pub const ERROR_RETRY: Duration = Duration::from_secs(1);

/// The namespace of the Lease: `[kubernetes] lease_namespace`, else the namespace jobwarden
/// runs in (`POD_NAMESPACE`, else the service account's namespace file), else `default`.
pub fn lease_namespace(
    configured: Option<&str>,
    pod_namespace: Option<&str>,
    service_account_namespace: Option<&str>,
) -> String {
    [configured, pod_namespace, service_account_namespace]
        .into_iter()
        .flatten()
        .map(str::trim)
        .find(|s| !s.is_empty())
        .unwrap_or("default")
        .to_owned()
}

/// Which Lease, who we are, and how long a Lease lasts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseSettings {
    /// Namespace of the Lease.
    pub namespace: String,
    /// Name of the Lease.
    pub name: String,
    /// `holderIdentity` when we hold it (the pod name: unique among live pods).
    pub identity: String,
    /// How long a Lease is valid without renewal (D).
    pub lease_duration: Duration,
}

impl LeaseSettings {
    /// From `[kubernetes]`; the namespace as in [`lease_namespace`].
    pub fn new(
        config: &KubernetesConfig,
        identity: &str,
        pod_namespace: Option<&str>,
        service_account_namespace: Option<&str>,
    ) -> Self {
        LeaseSettings {
            namespace: lease_namespace(
                config.lease_namespace.as_deref(),
                pod_namespace,
                service_account_namespace,
            ),
            name: config.lease_name.clone(),
            identity: identity.to_owned(),
            lease_duration: config.lease_duration.0,
        }
    }

    /// How often a leader renews and a follower looks again: D/3.
    pub fn retry_period(&self) -> Duration {
        self.lease_duration / 3
    }

    /// How long after a successful write a leader may act without another one: 2D/3.
    pub fn renew_deadline(&self) -> Duration {
        self.lease_duration * 2 / 3
    }

    /// `leaseDurationSeconds`: D rounded up to whole seconds (never shorter than D).
    pub fn lease_duration_seconds(&self) -> i32 {
        let d = self.lease_duration;
        let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
        i32::try_from(secs.max(1)).unwrap_or(i32::MAX)
    }

    /// `namespace/name`, for logs and errors.
    pub fn lease(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// The Lease as last read or written, and since when (our clock) it has been unchanged (the
/// same `resourceVersion`).
#[derive(Debug, Clone, PartialEq)]
pub struct Observed {
    /// The object.
    pub lease: Lease,
    /// When we first saw this version of it.
    pub unchanged_since: Timestamp,
}

/// What to do about the Lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// There is none: create it naming us.
    Create,
    /// It is free (released) or expired: take it over (`leaseTransitions` + 1).
    Acquire,
    /// It names us: renew it.
    Renew,
    /// Another replica holds it: do not act; it is valid until `until` unless renewed.
    Follow {
        /// Its holder.
        holder: String,
        /// When it expires unless renewed (our clock).
        until: Timestamp,
    },
}

/// The election policy: `observed` is the Lease as last seen (None: it does not exist), `me`
/// our identity, `default_duration` the duration assumed when the Lease states none.
pub fn decide(
    observed: Option<&Observed>,
    me: &str,
    default_duration: Duration,
    now: Timestamp,
) -> Decision {
    let Some(observed) = observed else {
        return Decision::Create;
    };
    let spec = observed.lease.spec.clone().unwrap_or_default();
    let holder = spec.holder_identity.unwrap_or_default();
    if holder.is_empty() {
        return Decision::Acquire;
    }
    if holder == me {
        return Decision::Renew;
    }
    let duration = spec
        .lease_duration_seconds
        .and_then(|s| u64::try_from(s).ok())
        .filter(|s| *s > 0)
        .map_or(default_duration, Duration::from_secs);
    let seen_expiry = add(observed.unchanged_since, duration);
    let until = match spec.renew_time.or(spec.acquire_time) {
        Some(t) => add(to_chrono(t.0), duration).max(seen_expiry),
        None => seen_expiry,
    };
    if now >= until {
        Decision::Acquire
    } else {
        Decision::Follow { holder, until }
    }
}

fn micro(t: Timestamp) -> MicroTime {
    MicroTime(to_jiff(t))
}

/// A new Lease naming us.
pub fn created_lease(settings: &LeaseSettings, now: Timestamp) -> Lease {
    Lease {
        metadata: ObjectMeta {
            name: Some(settings.name.clone()),
            namespace: Some(settings.namespace.clone()),
            ..ObjectMeta::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: Some(settings.identity.clone()),
            lease_duration_seconds: Some(settings.lease_duration_seconds()),
            acquire_time: Some(micro(now)),
            renew_time: Some(micro(now)),
            lease_transitions: Some(0),
            ..LeaseSpec::default()
        }),
    }
}

/// `current` taken over by us: holder, acquire and renew time, duration, transitions + 1. The
/// object keeps its `resourceVersion`, so the PUT fails if anyone wrote it since.
pub fn acquired_lease(current: &Lease, settings: &LeaseSettings, now: Timestamp) -> Lease {
    let mut lease = current.clone();
    let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
    spec.holder_identity = Some(settings.identity.clone());
    spec.lease_duration_seconds = Some(settings.lease_duration_seconds());
    spec.acquire_time = Some(micro(now));
    spec.renew_time = Some(micro(now));
    spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0).saturating_add(1));
    lease
}

/// `current` (ours) renewed: renew time and duration; the `resourceVersion` is kept.
pub fn renewed_lease(current: &Lease, settings: &LeaseSettings, now: Timestamp) -> Lease {
    let mut lease = current.clone();
    let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
    spec.holder_identity = Some(settings.identity.clone());
    spec.lease_duration_seconds = Some(settings.lease_duration_seconds());
    spec.renew_time = Some(micro(now));
    if spec.acquire_time.is_none() {
        spec.acquire_time = Some(micro(now));
    }
    lease
}

/// `current` (ours) released, as client-go does: no holder, `leaseDurationSeconds: 1`, renewed
/// now, so any replica takes it at once.
pub fn released_lease(current: &Lease, now: Timestamp) -> Lease {
    let mut lease = current.clone();
    let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
    spec.holder_identity = Some(String::new());
    spec.lease_duration_seconds = Some(1);
    spec.renew_time = Some(micro(now));
    lease
}

/// What a step found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// We hold the Lease and may act until `until` (our clock).
    Leader {
        /// The renew deadline.
        until: Timestamp,
    },
    /// Another replica holds it.
    Follower {
        /// Its holder.
        holder: String,
        /// When it expires unless renewed (our clock).
        until: Timestamp,
    },
}

/// A Lease call that failed in a way other than 404/409.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("leader election: {call} of Lease {lease} failed: {error}{hint}")]
pub struct LeaseError {
    /// `get`, `create` or `update`.
    pub call: &'static str,
    /// `namespace/name`.
    pub lease: String,
    /// What the API server (or the transport) said.
    pub error: String,
    hint: String,
}

enum Reply<T> {
    Ok(T),
    /// 404 (get, update) or 409 (create: AlreadyExists; update: Conflict): read again.
    Stale,
    Failed(LeaseError),
}

/// One replica's side of the election.
pub struct Elector {
    api: Api<Lease>,
    settings: LeaseSettings,
    observed: Option<Observed>,
    leading_until: Option<Timestamp>,
}

impl Elector {
    /// An elector for `settings.namespace/settings.name`; it has not read anything yet.
    pub fn new(client: Client, settings: LeaseSettings) -> Self {
        Elector {
            api: Api::namespaced(client, &settings.namespace),
            settings,
            observed: None,
            leading_until: None,
        }
    }

    /// The settings.
    pub fn settings(&self) -> &LeaseSettings {
        &self.settings
    }

    /// The Lease as last read or written.
    pub fn observed(&self) -> Option<&Lease> {
        self.observed.as_ref().map(|o| &o.lease)
    }

    /// Whether we may act at `now`.
    pub fn is_leading(&self, now: Timestamp) -> bool {
        self.leading_until.is_some_and(|until| now < until)
    }

    /// The renew deadline, while we hold the Lease.
    pub fn leading_until(&self) -> Option<Timestamp> {
        self.leading_until
    }

    /// Stop acting now (shutdown, or a renewal that outlived the deadline).
    pub fn stop_leading(&mut self) {
        self.leading_until = None;
    }

    /// One round: a leader renews from the object it last wrote (one PUT); anyone else reads
    /// the Lease and acts on [`decide`]. A 404 or 409 on a write means someone else changed
    /// the Lease: we stop leading, read it again and decide once more.
    pub async fn step(&mut self, now: Timestamp) -> Result<Role, LeaseError> {
        if !self.is_leading(now) || self.observed.is_none() {
            self.read(now).await?;
        }
        let mut reread = false;
        loop {
            let decision = decide(
                self.observed.as_ref(),
                &self.settings.identity,
                self.settings.lease_duration,
                now,
            );
            let call = if decision == Decision::Create {
                "create"
            } else {
                "update"
            };
            let reply = match decision {
                Decision::Follow { holder, until } => {
                    self.leading_until = None;
                    return Ok(Role::Follower { holder, until });
                }
                Decision::Create => {
                    let lease = created_lease(&self.settings, now);
                    self.call(call, self.api.create(&PostParams::default(), &lease))
                        .await
                }
                Decision::Acquire | Decision::Renew => {
                    let current = self
                        .observed
                        .as_ref()
                        .map(|o| o.lease.clone())
                        .unwrap_or_default();
                    let lease = if decision == Decision::Acquire {
                        acquired_lease(&current, &self.settings, now)
                    } else {
                        renewed_lease(&current, &self.settings, now)
                    };
                    self.call(
                        call,
                        self.api
                            .replace(&self.settings.name, &PostParams::default(), &lease),
                    )
                    .await
                }
            };
            match reply {
                Reply::Ok(lease) => {
                    self.observed = Some(Observed {
                        lease,
                        unchanged_since: now,
                    });
                    let until = add(now, self.settings.renew_deadline());
                    self.leading_until = Some(until);
                    return Ok(Role::Leader { until });
                }
                Reply::Stale if !reread => {
                    reread = true;
                    self.leading_until = None;
                    self.read(now).await?;
                }
                Reply::Stale => {
                    self.leading_until = None;
                    return Err(self.error(
                        call,
                        "the Lease changed again while we wrote it; trying again next round"
                            .to_owned(),
                    ));
                }
                Reply::Failed(e) => return Err(e),
            }
        }
    }

    /// Gives the Lease up if it names us: stop acting first, then one PUT (409: someone
    /// else has it already, nothing to give). Returns whether a release was written.
    pub async fn release(&mut self, now: Timestamp) -> Result<bool, LeaseError> {
        self.leading_until = None;
        let Some(current) = self.observed.as_ref().map(|o| o.lease.clone()) else {
            return Ok(false);
        };
        let holder = current
            .spec
            .as_ref()
            .and_then(|s| s.holder_identity.as_deref());
        if holder != Some(self.settings.identity.as_str()) {
            return Ok(false);
        }
        let lease = released_lease(&current, now);
        match self
            .call(
                "update",
                self.api
                    .replace(&self.settings.name, &PostParams::default(), &lease),
            )
            .await
        {
            Reply::Ok(lease) => {
                self.observed = Some(Observed {
                    lease,
                    unchanged_since: now,
                });
                Ok(true)
            }
            Reply::Stale => Ok(false),
            Reply::Failed(e) => Err(e),
        }
    }

    async fn read(&mut self, now: Timestamp) -> Result<(), LeaseError> {
        match self.call("get", self.api.get(&self.settings.name)).await {
            Reply::Ok(lease) => {
                let same = self.observed.as_ref().is_some_and(|o| {
                    o.lease.metadata.resource_version.is_some()
                        && o.lease.metadata.resource_version == lease.metadata.resource_version
                });
                if !same {
                    self.observed = Some(Observed {
                        lease,
                        unchanged_since: now,
                    });
                }
                Ok(())
            }
            Reply::Stale => {
                self.observed = None;
                Ok(())
            }
            Reply::Failed(e) => Err(e),
        }
    }

    /// One API call, bounded by the retry period so a hung call cannot stall the loop.
    async fn call<T>(
        &self,
        call: &'static str,
        request: impl std::future::Future<Output = Result<T, kube::Error>>,
    ) -> Reply<T> {
        let timeout = self.settings.retry_period().max(Duration::from_millis(100));
        match tokio::time::timeout(timeout, request).await {
            Err(_) => Reply::Failed(self.error(call, format!("no answer within {timeout:?}"))),
            Ok(Ok(v)) => Reply::Ok(v),
            Ok(Err(e)) => match CallResult::from_error(&e) {
                CallResult::NotFound | CallResult::Conflict(_) => Reply::Stale,
                CallResult::Retry { error, .. } | CallResult::Failed(error) => {
                    Reply::Failed(self.error(call, error))
                }
                other => Reply::Failed(self.error(call, format!("{other:?}"))),
            },
        }
    }

    fn error(&self, call: &'static str, error: String) -> LeaseError {
        let hint = if error.starts_with("403") {
            format!(
                " (grant get, create and update on coordination.k8s.io leases in namespace {}: the Role in deploy/base/leader-election.yaml)",
                self.settings.namespace
            )
        } else {
            String::new()
        };
        LeaseError {
            call,
            lease: self.settings.lease(),
            error,
            hint,
        }
    }
}

/// Publishes `elector.is_leading(now)` and logs a change.
fn publish(tx: &watch::Sender<bool>, elector: &Elector, now: Timestamp, why_not: &str) {
    let leading = elector.is_leading(now);
    let was = tx.send_replace(leading);
    let s = elector.settings();
    match (was, leading) {
        (false, true) => tracing::info!(
            lease = %s.lease(),
            identity = %s.identity,
            until = %elector.leading_until().map(fmt_ts).unwrap_or_default(),
            "became leader: acting on Jobs"
        ),
        (true, false) => tracing::info!(
            lease = %s.lease(),
            identity = %s.identity,
            reason = why_not,
            "lost leadership: stopped acting"
        ),
        _ => {}
    }
}

async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    // A dropped sender counts as shutdown.
    let _ = shutdown.wait_for(|s| *s).await;
}

/// Runs the election until `shutdown` turns true (or its sender is dropped): one
/// [`Elector::step`] per retry period (sooner after an error, so a leader retries before its
/// renew deadline), `leading` set to whether we may act, and set to false the moment the renew
/// deadline passes, even while a call hangs. On shutdown, `leading` turns false first and the
/// Lease is then released. Stop the users of `leading` before `shutdown`, so nothing acts after
/// the release.
pub async fn run(
    mut elector: Elector,
    leading: watch::Sender<bool>,
    mut shutdown: watch::Receiver<bool>,
    clock: impl Fn() -> Timestamp,
) {
    let retry = elector.settings().retry_period();
    let error_retry = ERROR_RETRY.min(retry);
    let mut following: Option<String> = None;
    loop {
        let now = clock();
        publish(&leading, &elector, now, "the renew deadline passed");
        let deadline = elector.leading_until();
        let stepped = tokio::select! {
            r = elector.step(now) => Some(r),
            () = tokio::time::sleep(deadline.map_or(Duration::ZERO, |d| since(d, now))), if deadline.is_some() => None,
            () = stopped(&mut shutdown) => break,
        };
        let now = clock();
        let (wait, why_not) = match stepped {
            Some(Ok(Role::Leader { .. })) => {
                following = None;
                (retry, "")
            }
            Some(Ok(Role::Follower { holder, until })) => {
                if following.as_ref() != Some(&holder) {
                    tracing::info!(
                        lease = %elector.settings().lease(),
                        holder = %holder,
                        until = %fmt_ts(until),
                        "following: another replica holds the Lease"
                    );
                    following = Some(holder);
                }
                (
                    retry.min(since(until, now)),
                    "another replica holds the Lease",
                )
            }
            Some(Err(e)) => {
                tracing::warn!(error = %e, leading = elector.is_leading(now), "{e}");
                (error_retry, "the Lease could not be renewed in time")
            }
            None => {
                elector.stop_leading();
                (error_retry, "a Lease call outlived the renew deadline")
            }
        };
        publish(&leading, &elector, now, why_not);
        let deadline = elector.leading_until();
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = tokio::time::sleep(deadline.map_or(Duration::ZERO, |d| since(d, now))), if deadline.is_some() => {}
            () = stopped(&mut shutdown) => break,
        }
    }
    let now = clock();
    elector.stop_leading();
    publish(&leading, &elector, now, "shutting down");
    match elector.release(now).await {
        Ok(true) => tracing::info!(lease = %elector.settings().lease(), "released the Lease"),
        Ok(false) => {}
        Err(e) => {
            tracing::warn!(error = %e, "could not release the Lease; another replica takes it over once it expires")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Timestamp {
        s.parse().expect("timestamp")
    }

    fn settings() -> LeaseSettings {
        LeaseSettings {
            namespace: "jobwarden".into(),
            name: "jobwarden-leader".into(),
            identity: "jw-a".into(),
            lease_duration: Duration::from_secs(15),
        }
    }

    fn lease(holder: Option<&str>, renew: Option<&str>, duration: Option<i32>) -> Lease {
        Lease {
            metadata: ObjectMeta {
                name: Some("jobwarden-leader".into()),
                resource_version: Some("7".into()),
                ..ObjectMeta::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: holder.map(str::to_owned),
                renew_time: renew.map(|r| micro(ts(r))),
                lease_duration_seconds: duration,
                lease_transitions: Some(3),
                ..LeaseSpec::default()
            }),
        }
    }

    fn seen(lease: Lease, since: &str) -> Observed {
        Observed {
            lease,
            unchanged_since: ts(since),
        }
    }

    const D: Duration = Duration::from_secs(15);

    #[test]
    fn no_lease_is_created_ours_is_renewed_a_released_one_is_taken_at_once() {
        let now = ts("2026-11-28T10:00:00Z");
        assert_eq!(decide(None, "jw-a", D, now), Decision::Create);
        let mine = seen(
            lease(Some("jw-a"), Some("2026-11-28T09:00:00Z"), Some(15)),
            "2026-11-28T10:00:00Z",
        );
        assert_eq!(decide(Some(&mine), "jw-a", D, now), Decision::Renew);
        for holder in [None, Some("")] {
            let free = seen(
                lease(holder, Some("2026-11-28T10:00:00Z"), Some(1)),
                "2026-11-28T10:00:00Z",
            );
            assert_eq!(decide(Some(&free), "jw-a", D, now), Decision::Acquire);
        }
    }

    #[test]
    fn another_holders_lease_is_followed_for_its_own_duration_from_the_later_of_renewal_and_sighting()
     {
        let follow = |renew: &str, seen_at: &str, now: &str| {
            let other = seen(lease(Some("jw-b"), Some(renew), Some(20)), seen_at);
            decide(Some(&other), "jw-a", D, ts(now))
        };
        let until = |t: &str| Decision::Follow {
            holder: "jw-b".into(),
            until: ts(t),
        };
        // Seen a quarter second after its renewal: 20 s (the Lease's, not our 15 s) from then.
        let (renew, seen_at) = ("2026-11-28T10:00:00.250000Z", "2026-11-28T10:00:00.500000Z");
        assert_eq!(
            follow(renew, seen_at, "2026-11-28T10:00:20.499999Z"),
            until("2026-11-28T10:00:20.500000Z")
        );
        assert_eq!(
            follow(renew, seen_at, "2026-11-28T10:00:20.500000Z"),
            Decision::Acquire
        );
        // Its holder's clock runs ahead of ours: its renewTime counts.
        let (renew, seen_at) = ("2026-11-28T10:00:03Z", "2026-11-28T10:00:01Z");
        assert_eq!(
            follow(renew, seen_at, "2026-11-28T10:00:22Z"),
            until("2026-11-28T10:00:23Z")
        );
        assert_eq!(
            follow(renew, seen_at, "2026-11-28T10:00:23Z"),
            Decision::Acquire
        );
    }

    #[test]
    fn an_old_renew_time_is_not_trusted_until_we_saw_the_lease_unchanged_for_its_duration() {
        // The holder's clock may be behind ours: its renewTime looks an hour old.
        let other = seen(
            lease(Some("jw-b"), Some("2026-11-28T09:00:00Z"), Some(15)),
            "2026-11-28T10:00:00Z",
        );
        assert_eq!(
            decide(Some(&other), "jw-a", D, ts("2026-11-28T10:00:14Z")),
            Decision::Follow {
                holder: "jw-b".into(),
                until: ts("2026-11-28T10:00:15Z")
            }
        );
        assert_eq!(
            decide(Some(&other), "jw-a", D, ts("2026-11-28T10:00:15Z")),
            Decision::Acquire
        );
    }

    #[test]
    fn a_lease_without_times_or_duration_uses_when_we_saw_it_and_our_duration() {
        let other = seen(lease(Some("jw-b"), None, None), "2026-11-28T10:00:00Z");
        assert_eq!(
            decide(Some(&other), "jw-a", D, ts("2026-11-28T10:00:10Z")),
            Decision::Follow {
                holder: "jw-b".into(),
                until: ts("2026-11-28T10:00:15Z")
            }
        );
        let zero = seen(lease(Some("jw-b"), None, Some(0)), "2026-11-28T10:00:00Z");
        assert_eq!(
            decide(Some(&zero), "jw-a", D, ts("2026-11-28T10:00:15Z")),
            Decision::Acquire
        );
    }

    #[test]
    fn the_leader_stops_a_third_of_the_duration_before_anyone_may_take_over() {
        let s = settings();
        assert_eq!(s.retry_period(), Duration::from_secs(5));
        assert_eq!(s.renew_deadline(), Duration::from_secs(10));
        assert_eq!(s.lease_duration_seconds(), 15);
        let odd = LeaseSettings {
            lease_duration: Duration::from_millis(1500),
            ..settings()
        };
        assert_eq!(odd.lease_duration_seconds(), 2, "rounded up, never shorter");
        assert!(odd.renew_deadline() < Duration::from_millis(1500));
    }

    #[test]
    fn writes_set_holder_times_duration_and_transitions() {
        let s = settings();
        let now = ts("2026-11-28T10:00:00.123456Z");
        let old = lease(Some("jw-b"), Some("2026-11-28T09:00:00Z"), Some(20));
        let taken = acquired_lease(&old, &s, now).spec.expect("spec");
        assert_eq!(taken.holder_identity.as_deref(), Some("jw-a"));
        assert_eq!(taken.lease_transitions, Some(4));
        assert_eq!(taken.lease_duration_seconds, Some(15));
        assert_eq!(taken.acquire_time, Some(micro(now)));
        assert_eq!(taken.renew_time, Some(micro(now)));
        let mine = acquired_lease(&old, &s, ts("2026-11-28T09:59:00Z"));
        let renewed = renewed_lease(&mine, &s, now);
        assert_eq!(renewed.metadata.resource_version.as_deref(), Some("7"));
        let spec = renewed.spec.expect("spec");
        assert_eq!(spec.acquire_time, Some(micro(ts("2026-11-28T09:59:00Z"))));
        assert_eq!(spec.renew_time, Some(micro(now)));
        assert_eq!(spec.lease_transitions, Some(4));
        let released = released_lease(&mine, now).spec.expect("spec");
        assert_eq!(released.holder_identity.as_deref(), Some(""));
        assert_eq!(released.lease_duration_seconds, Some(1));
        assert_eq!(released.lease_transitions, Some(4));
    }

    #[test]
    fn the_lease_namespace_is_configured_else_ours_else_default() {
        assert_eq!(lease_namespace(Some("ops"), Some("jw"), Some("sa")), "ops");
        assert_eq!(lease_namespace(None, Some("jw"), Some("sa")), "jw");
        assert_eq!(lease_namespace(None, Some(""), Some("sa\n")), "sa");
        assert_eq!(lease_namespace(None, None, None), "default");
    }
}

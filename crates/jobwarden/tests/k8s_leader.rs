//! Leader election at the HTTP layer (ApiServerVerifier style): the exact Lease requests the
//! elector sends (method, path, body) for create, renew, follow, takeover, conflict, failing
//! renewals and release, with times passed in; and, against the in-process fake API server
//! of tests/k8s_support/fake.rs, that two electors share one Lease there, and that the controller sends no action while it does not lead and
//! stops mid-reconcile when leadership goes. Every request is checked against `API_CALLS`.

mod k8s_support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use jobwarden::config::Config;
use jobwarden::kubernetes::controller;
use jobwarden::kubernetes::leader::{self, Elector, LeaseSettings, Role};
use jobwarden::kubernetes::observe::Scope;
use jobwarden::kubernetes::reconcile::Reconciler;
use jobwarden::model::{Timestamp, add};
use jobwarden::runtime::kubernetes::actions::{API_CALLS, Actions, Grant, classify};
use jobwarden::store::Store;
use k8s_support::fake::Fake;
use k8s_support::*;
use serde_json::{Value, json};

const ME: &str = "jobwarden-7d9f-abcde";
const OTHER: &str = "jobwarden-5c4b-xyz12";
const LEASE_PATH: &str =
    "/apis/coordination.k8s.io/v1/namespaces/jobwarden/leases/jobwarden-leader";
const LEASES_PATH: &str = "/apis/coordination.k8s.io/v1/namespaces/jobwarden/leases";

fn ts(s: &str) -> Timestamp {
    s.parse().expect("timestamp")
}

/// When the first step runs.
fn t0() -> Timestamp {
    ts("2026-11-28T10:00:00.250000Z")
}

fn at(secs: f64) -> Timestamp {
    add(t0(), Duration::from_secs_f64(secs))
}

fn settings(lease_duration: Duration) -> LeaseSettings {
    LeaseSettings {
        namespace: "jobwarden".into(),
        name: "jobwarden-leader".into(),
        identity: ME.into(),
        lease_duration,
    }
}

/// A Lease as the API server serves it.
fn lease_json(holder: &str, acquire: &str, renew: &str, rv: &str, transitions: i32) -> Value {
    json!({
      "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
      "metadata": {"name": "jobwarden-leader", "namespace": "jobwarden",
                   "uid": "0b7e4c1a-2f7d-4a59-8d5e-3c2b1a0f9e8d", "resourceVersion": rv,
                   "creationTimestamp": "2026-11-28T09:00:00Z"},
      "spec": {"holderIdentity": holder, "leaseDurationSeconds": 15, "acquireTime": acquire,
               "renewTime": renew, "leaseTransitions": transitions}
    })
}

fn not_found() -> (u16, Value) {
    (
        404,
        status(
            404,
            "NotFound",
            "leases.coordination.k8s.io \"jobwarden-leader\" not found",
        ),
    )
}

fn conflict() -> (u16, Value) {
    (
        409,
        status(
            409,
            "Conflict",
            "Operation cannot be fulfilled on leases.coordination.k8s.io \"jobwarden-leader\": the object has been modified; please apply your changes to the latest version and try again",
        ),
    )
}

fn check_rbac(seen: &[Seen]) {
    for s in seen {
        let (g, r, v) = classify(&s.method, &s.path).expect("a resource URL");
        assert!(
            API_CALLS.iter().any(|c| c.group == g
                && c.resource == r
                && c.verb == v
                && c.grant == Grant::LeaseNamespace),
            "{} needs ({g:?}, {r}, {v}) in the Lease namespace's Role, which API_CALLS lacks",
            s.line()
        );
    }
}

/// Runs `f` with an elector against a scripted server; returns its result and what the
/// server saw. `f` must not return the elector (the server ends when its client is dropped).
async fn against<F, Fut, T>(responses: Vec<(u16, Value)>, f: F) -> (T, Vec<Seen>)
where
    F: FnOnce(Elector) -> Fut,
    Fut: std::future::Future<Output = T>,
{
    let (client, server) = scripted(responses);
    let out = f(Elector::new(client, settings(Duration::from_secs(15)))).await;
    let seen = tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .expect("server ends when the client is dropped")
        .expect("server task");
    check_rbac(&seen);
    (out, seen)
}

fn lines(seen: &[Seen]) -> Vec<String> {
    seen.iter().map(Seen::line).collect()
}

fn get() -> String {
    format!("GET {LEASE_PATH}")
}

fn put() -> String {
    format!("PUT {LEASE_PATH}")
}

#[tokio::test]
async fn creates_the_lease_when_missing_and_leads_until_the_renew_deadline() {
    let created = lease_json(
        ME,
        "2026-11-28T10:00:00.250000Z",
        "2026-11-28T10:00:00.250000Z",
        "101",
        0,
    );
    let ((role, leading), seen) = against(vec![not_found(), (201, created)], |mut e| async move {
        let role = e.step(t0()).await.expect("step");
        let leading = [e.is_leading(at(9.999)), e.is_leading(at(10.0))];
        (role, leading)
    })
    .await;
    assert_eq!(lines(&seen), [get(), format!("POST {LEASES_PATH}")]);
    assert_eq!(
        seen[1].body,
        json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
               "metadata": {"name": "jobwarden-leader", "namespace": "jobwarden"},
               "spec": {"holderIdentity": ME, "leaseDurationSeconds": 15,
                        "acquireTime": "2026-11-28T10:00:00.250000Z",
                        "renewTime": "2026-11-28T10:00:00.250000Z", "leaseTransitions": 0}}),
        "MicroTime with exactly 6 fraction digits (KUBERNETES.md §9)"
    );
    assert_eq!(role, Role::Leader { until: at(10.0) });
    assert_eq!(
        leading,
        [true, false],
        "2/3 of 15 s after the write started"
    );
}

#[tokio::test]
async fn a_create_answered_409_reads_again_and_follows_whoever_made_it() {
    let theirs = lease_json(
        OTHER,
        "2026-11-28T10:00:00.240000Z",
        "2026-11-28T10:00:00.240000Z",
        "100",
        0,
    );
    let ((role, leading), seen) = against(
        vec![
            not_found(),
            (
                409,
                status(
                    409,
                    "AlreadyExists",
                    "leases.coordination.k8s.io \"jobwarden-leader\" already exists",
                ),
            ),
            (200, theirs),
        ],
        |mut e| async move {
            let role = e.step(t0()).await.expect("step");
            (role, e.is_leading(t0()))
        },
    )
    .await;
    assert_eq!(lines(&seen), [get(), format!("POST {LEASES_PATH}"), get()]);
    assert!(!leading);
    assert_eq!(
        role,
        Role::Follower {
            holder: OTHER.into(),
            until: at(15.0)
        }
    );
}

#[tokio::test]
async fn renews_its_own_lease_with_a_put_carrying_the_resource_version() {
    let created = lease_json(
        ME,
        "2026-11-28T10:00:00.250000Z",
        "2026-11-28T10:00:00.250000Z",
        "101",
        0,
    );
    let renewed = lease_json(
        ME,
        "2026-11-28T10:00:00.250000Z",
        "2026-11-28T10:00:05.250000Z",
        "102",
        0,
    );
    let (role, seen) = against(
        vec![not_found(), (201, created.clone()), (200, renewed)],
        |mut e| async move {
            e.step(t0()).await.expect("create");
            e.step(at(5.0)).await.expect("renew")
        },
    )
    .await;
    assert_eq!(
        lines(&seen),
        [get(), format!("POST {LEASES_PATH}"), put()],
        "a leader renews from what it wrote: no GET first"
    );
    let mut expected = created;
    expected["spec"]["renewTime"] = "2026-11-28T10:00:05.250000Z".into();
    assert_eq!(
        seen[2].body, expected,
        "the object as the server returned it (resourceVersion 101), renewTime moved, acquireTime kept"
    );
    assert_eq!(role, Role::Leader { until: at(15.0) });
}

#[tokio::test]
async fn a_restarted_replica_with_the_same_name_renews_the_lease_naming_it() {
    let mine = lease_json(
        ME,
        "2026-11-28T09:00:00.000000Z",
        "2026-11-28T09:59:58.000000Z",
        "55",
        2,
    );
    let (role, seen) = against(
        vec![(200, mine.clone()), (200, mine.clone())],
        |mut e| async move { e.step(t0()).await.expect("step") },
    )
    .await;
    assert_eq!(lines(&seen), [get(), put()]);
    assert_eq!(seen[1].body["metadata"]["resourceVersion"], "55");
    assert_eq!(
        seen[1].body["spec"]["leaseTransitions"], 2,
        "no transition: same holder"
    );
    assert_eq!(
        seen[1].body["spec"]["renewTime"],
        "2026-11-28T10:00:00.250000Z"
    );
    assert_eq!(role, Role::Leader { until: at(10.0) });
}

#[tokio::test]
async fn does_not_take_over_a_lease_another_holder_keeps_renewing() {
    let v7 = lease_json(
        OTHER,
        "2026-11-28T09:00:00.000000Z",
        "2026-11-28T09:59:55.250000Z",
        "7",
        3,
    );
    let v8 = lease_json(
        OTHER,
        "2026-11-28T09:00:00.000000Z",
        "2026-11-28T10:00:09.250000Z",
        "8",
        3,
    );
    let (roles, seen) = against(
        vec![(200, v7.clone()), (200, v7), (200, v8.clone()), (200, v8)],
        |mut e| async move {
            let mut roles = Vec::new();
            // renewTime + 15 s = t0 + 10 s: still valid at t0 and t0 + 9.9 s.
            roles.push(e.step(t0()).await.expect("step"));
            roles.push(e.step(at(9.9)).await.expect("step"));
            // Renewed meanwhile (resourceVersion 8): valid again from when we saw it.
            roles.push(e.step(at(14.0)).await.expect("step"));
            roles.push(e.step(at(23.9)).await.expect("step"));
            let leading = e.is_leading(at(23.9));
            (roles, leading)
        },
    )
    .await;
    assert_eq!(
        lines(&seen),
        [get(), get(), get(), get()],
        "reads only, never a write"
    );
    let (roles, leading) = roles;
    assert!(!leading);
    let until: Vec<Timestamp> = roles
        .iter()
        .map(|r| match r {
            Role::Follower { holder, until } if holder == OTHER => *until,
            other => panic!("took over a valid Lease: {other:?}"),
        })
        .collect();
    assert_eq!(until, [at(15.0), at(15.0), at(29.0), at(29.0)]);
}

#[tokio::test]
async fn takes_over_an_expired_lease_with_transitions_plus_one() {
    let stale = lease_json(
        OTHER,
        "2026-11-28T09:00:00.000000Z",
        "2026-11-28T09:59:00.250000Z",
        "7",
        3,
    );
    let taken = lease_json(
        ME,
        "2026-11-28T10:00:15.250000Z",
        "2026-11-28T10:00:15.250000Z",
        "8",
        4,
    );
    let (roles, seen) = against(
        vec![(200, stale.clone()), (200, stale.clone()), (200, taken)],
        |mut e| async move {
            // renewTime + 15 s passed a minute ago by our clock, but we have not yet seen the
            // Lease unchanged for 15 s ourselves (its holder's clock may be behind ours).
            let first = e.step(t0()).await.expect("step");
            let second = e.step(at(15.0)).await.expect("step");
            (first, second)
        },
    )
    .await;
    assert_eq!(lines(&seen), [get(), get(), put()]);
    assert_eq!(
        roles.0,
        Role::Follower {
            holder: OTHER.into(),
            until: at(15.0)
        }
    );
    let mut expected = stale;
    expected["spec"] = json!({"holderIdentity": ME, "leaseDurationSeconds": 15,
        "acquireTime": "2026-11-28T10:00:15.250000Z", "renewTime": "2026-11-28T10:00:15.250000Z",
        "leaseTransitions": 4});
    assert_eq!(seen[2].body, expected, "PUT with resourceVersion 7");
    assert_eq!(roles.1, Role::Leader { until: at(25.0) });
}

#[tokio::test]
async fn a_leader_whose_renewal_gets_409_stops_at_once_and_follows_the_new_holder() {
    let created = lease_json(
        ME,
        "2026-11-28T10:00:00.250000Z",
        "2026-11-28T10:00:00.250000Z",
        "101",
        0,
    );
    let theirs = lease_json(
        OTHER,
        "2026-11-28T10:00:04.000000Z",
        "2026-11-28T10:00:04.000000Z",
        "103",
        1,
    );
    let (out, seen) = against(
        vec![
            not_found(),
            (201, created),
            conflict(),
            (200, theirs.clone()),
            (200, theirs),
        ],
        |mut e| async move {
            e.step(t0()).await.expect("create");
            let role = e.step(at(5.0)).await.expect("renew");
            let leading = e.is_leading(at(5.0));
            let next = e.step(at(6.0)).await.expect("follow");
            (role, leading, next)
        },
    )
    .await;
    let (role, leading, next) = out;
    assert!(
        !leading,
        "lost on the 409, before its own renew deadline (t0 + 10 s)"
    );
    assert_eq!(
        role,
        Role::Follower {
            holder: OTHER.into(),
            until: at(20.0)
        }
    );
    assert!(matches!(next, Role::Follower { .. }));
    assert_eq!(
        lines(&seen),
        [get(), format!("POST {LEASES_PATH}"), put(), get(), get()],
        "after losing: reads only"
    );
}

#[tokio::test]
async fn of_two_replicas_taking_a_released_lease_the_one_answered_409_follows() {
    let released = lease_json(
        "",
        "2026-11-28T09:00:00.000000Z",
        "2026-11-28T09:59:59.000000Z",
        "20",
        5,
    );
    let winner = lease_json(
        OTHER,
        "2026-11-28T10:00:00.200000Z",
        "2026-11-28T10:00:00.200000Z",
        "21",
        6,
    );
    let ((role, leading), seen) = against(
        vec![(200, released), conflict(), (200, winner)],
        |mut e| async move {
            let role = e.step(t0()).await.expect("step");
            (role, e.is_leading(t0()))
        },
    )
    .await;
    assert_eq!(lines(&seen), [get(), put(), get()]);
    assert_eq!(
        seen[1].body["spec"]["holderIdentity"], ME,
        "a released Lease is taken at once"
    );
    assert_eq!(seen[1].body["metadata"]["resourceVersion"], "20");
    assert!(!leading);
    assert_eq!(
        role,
        Role::Follower {
            holder: OTHER.into(),
            until: at(15.0)
        }
    );
}

#[tokio::test]
async fn a_leader_whose_renewals_fail_stops_leading_at_the_renew_deadline() {
    let created = lease_json(
        ME,
        "2026-11-28T10:00:00.250000Z",
        "2026-11-28T10:00:00.250000Z",
        "101",
        0,
    );
    let (out, seen) = against(
        vec![
            not_found(),
            (201, created),
            (
                500,
                status(500, "InternalError", "etcdserver: request timed out"),
            ),
            (
                503,
                status(
                    503,
                    "ServiceUnavailable",
                    "the server is currently unable to handle the request",
                ),
            ),
            (
                500,
                status(500, "InternalError", "etcdserver: request timed out"),
            ),
        ],
        |mut e| async move {
            e.step(t0()).await.expect("create");
            let first = e.step(at(5.0)).await;
            let still = e.is_leading(at(9.999));
            let second = e.step(at(9.0)).await;
            let at_deadline = e.is_leading(at(10.0));
            let third = e.step(at(11.0)).await;
            (first, still, second, at_deadline, third)
        },
    )
    .await;
    let (first, still, second, at_deadline, third) = out;
    let e = first.expect_err("a 500 is an error");
    assert!(
        e.to_string().contains("jobwarden/jobwarden-leader") && e.to_string().contains("500"),
        "{e}"
    );
    assert!(second.is_err() && third.is_err());
    assert!(
        still,
        "a failed renewal does not end leadership before the deadline"
    );
    assert!(
        !at_deadline,
        "10 s after the last successful write: not leading"
    );
    assert_eq!(
        lines(&seen),
        [get(), format!("POST {LEASES_PATH}"), put(), put(), get()],
        "past the deadline it reads before it writes"
    );
}

#[tokio::test]
async fn release_gives_the_lease_up_and_a_follower_has_nothing_to_release() {
    let created = lease_json(
        ME,
        "2026-11-28T10:00:00.250000Z",
        "2026-11-28T10:00:00.250000Z",
        "101",
        0,
    );
    let released = lease_json(
        "",
        "2026-11-28T10:00:00.250000Z",
        "2026-11-28T10:00:03.000000Z",
        "102",
        0,
    );
    let (out, seen) = against(
        vec![not_found(), (201, created.clone()), (200, released)],
        |mut e| async move {
            e.step(t0()).await.expect("create");
            let released = e.release(at(2.75)).await.expect("release");
            let leading = e.is_leading(at(2.75));
            let again = e.release(at(3.0)).await.expect("nothing to release");
            (released, leading, again)
        },
    )
    .await;
    assert_eq!(out, (true, false, false));
    assert_eq!(lines(&seen), [get(), format!("POST {LEASES_PATH}"), put()]);
    let mut expected = created;
    expected["spec"]["holderIdentity"] = "".into();
    expected["spec"]["leaseDurationSeconds"] = 1.into();
    expected["spec"]["renewTime"] = "2026-11-28T10:00:03.000000Z".into();
    assert_eq!(seen[2].body, expected);

    let theirs = lease_json(
        OTHER,
        "2026-11-28T10:00:00.000000Z",
        "2026-11-28T10:00:00.000000Z",
        "9",
        0,
    );
    let (released, seen) = against(vec![(200, theirs)], |mut e| async move {
        e.step(t0()).await.expect("follow");
        e.release(t0()).await.expect("release")
    })
    .await;
    assert!(!released);
    assert_eq!(
        lines(&seen),
        [get()],
        "a follower writes nothing on shutdown"
    );
}

/// The loop with the real clock and a 3 s Lease: it leads after creating the Lease, its
/// renewals then fail (the scripted server answers 500), and it reports not-leading at the
/// renew deadline (2 s after the write started), before the Lease could expire (3 s).
#[tokio::test]
async fn the_loop_publishes_leadership_and_drops_it_at_the_renew_deadline() {
    let created = lease_json(
        ME,
        "2026-11-28T10:00:00.250000Z",
        "2026-11-28T10:00:00.250000Z",
        "101",
        0,
    );
    let (client, server) = scripted(vec![not_found(), (201, created)]);
    let elector = Elector::new(client, settings(Duration::from_secs(3)));
    let (leading_tx, mut leading) = tokio::sync::watch::channel(false);
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let started = jobwarden::clock::now();
    let task = tokio::spawn(leader::run(
        elector,
        leading_tx,
        stop_rx,
        jobwarden::clock::now,
    ));
    tokio::time::timeout(Duration::from_secs(5), leading.wait_for(|l| *l))
        .await
        .expect("leads after creating the Lease")
        .expect("sender alive");
    let became = jobwarden::clock::now();
    tokio::time::timeout(Duration::from_secs(5), leading.wait_for(|l| !*l))
        .await
        .expect("stops leading")
        .expect("sender alive");
    let lost = jobwarden::clock::now();
    assert!(
        lost - started >= chrono::TimeDelta::seconds(2),
        "not before the renew deadline: {:?}",
        lost - started
    );
    assert!(
        lost - became < chrono::TimeDelta::seconds(3),
        "before the Lease could expire for anyone else: {:?}",
        lost - became
    );
    stop.send(true).expect("stop");
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("the loop ends on shutdown")
        .expect("task");
    let seen = tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .expect("server ends")
        .expect("server task");
    check_rbac(&seen);
    let l = lines(&seen);
    assert_eq!(l[..2], [get(), format!("POST {LEASES_PATH}")]);
    assert!(l.len() >= 3, "renewals were attempted: {l:?}");
    assert!(
        l[2..].iter().all(|x| *x == put() || *x == get()),
        "only Lease reads and writes: {l:?}"
    );
}

/// Shutdown: leadership is withdrawn, then the Lease is released (PUT without a holder), so
/// a standby takes over at once.
#[tokio::test]
async fn the_loop_releases_the_lease_on_shutdown() {
    let created = lease_json(
        ME,
        "2026-11-28T10:00:00.250000Z",
        "2026-11-28T10:00:00.250000Z",
        "101",
        0,
    );
    let released = lease_json(
        "",
        "2026-11-28T10:00:00.250000Z",
        "2026-11-28T10:00:01.000000Z",
        "102",
        0,
    );
    let (client, server) = scripted(vec![not_found(), (201, created), (200, released)]);
    let elector = Elector::new(client, settings(Duration::from_secs(15)));
    let (leading_tx, mut leading) = tokio::sync::watch::channel(false);
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(leader::run(
        elector,
        leading_tx,
        stop_rx,
        jobwarden::clock::now,
    ));
    tokio::time::timeout(Duration::from_secs(5), leading.wait_for(|l| *l))
        .await
        .expect("leads")
        .expect("sender alive");
    stop.send(true).expect("stop");
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("the loop ends on shutdown")
        .expect("task");
    assert!(!*leading.borrow(), "not leading after shutdown");
    let seen = tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .expect("server ends")
        .expect("server task");
    check_rbac(&seen);
    assert_eq!(lines(&seen), [get(), format!("POST {LEASES_PATH}"), put()]);
    let body = &seen[2].body;
    assert_eq!(body["metadata"]["resourceVersion"], "101");
    assert_eq!(body["spec"]["holderIdentity"], "");
    assert_eq!(body["spec"]["leaseDurationSeconds"], 1);
    let renew = body["spec"]["renewTime"].as_str().expect("renewTime");
    assert_eq!(renew.len(), "2026-11-28T10:00:00.250000Z".len(), "{renew}");
}

// ---- Two electors on one Lease, against the stateful fake API server ----

#[tokio::test]
async fn two_electors_share_one_lease_on_the_stateful_fake() {
    let fake = Fake::new(t0);
    let mut a = Elector::new(fake.client(), settings(Duration::from_secs(15)));
    let mut b = Elector::new(
        fake.client(),
        LeaseSettings {
            identity: OTHER.into(),
            ..settings(Duration::from_secs(15))
        },
    );
    assert_eq!(
        a.step(t0()).await.expect("a"),
        Role::Leader { until: at(10.0) }
    );
    let lease = || {
        fake.get("leases", "jobwarden", "jobwarden-leader")
            .expect("lease")
    };
    assert_eq!(lease()["spec"]["holderIdentity"], ME);
    assert!(matches!(
        b.step(at(1.0)).await.expect("b"),
        Role::Follower { holder, .. } if holder == ME
    ));
    assert!(a.release(at(2.0)).await.expect("release"));
    assert_eq!(lease()["spec"]["holderIdentity"], "");
    assert_eq!(
        b.step(at(3.0)).await.expect("b takes the released Lease"),
        Role::Leader { until: at(13.0) }
    );
    assert_eq!(lease()["spec"]["holderIdentity"], OTHER);
    assert_eq!(lease()["spec"]["leaseTransitions"], 1);
    assert!(matches!(
        a.step(at(4.0)).await.expect("a"),
        Role::Follower { holder, .. } if holder == OTHER
    ));
    // Someone else writes the Lease; b's renewal carries the old resourceVersion: 409.
    fake.modify("leases", "jobwarden", "jobwarden-leader", |l| {
        l["spec"]["holderIdentity"] = "jobwarden-third".into();
        l["spec"]["renewTime"] = "2026-11-28T10:00:04.500000Z".into();
    });
    assert!(matches!(
        b.step(at(5.0)).await.expect("b"),
        Role::Follower { holder, .. } if holder == "jobwarden-third"
    ));
    assert!(!b.is_leading(at(5.0)));
    let seen = fake.requests();
    check_rbac(&seen);
    let puts: Vec<&Seen> = seen.iter().filter(|s| s.method == "PUT").collect();
    assert!(puts.len() >= 3, "{:?}", lines(&seen));
    assert!(
        puts.iter()
            .all(|p| p.body["metadata"]["resourceVersion"].is_string()),
        "every PUT carries the resourceVersion it read or wrote"
    );
}

// ---- The controller's gate, against the stateful fake API server (tests/k8s_support) ----

struct Running {
    fake: Fake,
    ready: Arc<AtomicBool>,
    leading: tokio::sync::watch::Sender<bool>,
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

/// The controller over one Job 30 min past its 60 s timeout (and its running pod), leading
/// or not as `leading` says.
async fn controller_with(leading: bool, hang_events: bool) -> Running {
    let mut overdue = job_json();
    overdue["metadata"]["annotations"] = json!({"flowforge.io/timeout-seconds": "60"});
    let now: Timestamp = "2026-11-28T10:30:00Z".parse().expect("ts");
    let fake = Fake::new(move || now);
    fake.insert(overdue);
    fake.insert(pod_json("build-42-a", "pod-a", "Running"));
    if hang_events {
        // A slow API server: Event POSTs are never answered.
        fake.hang("POST", "/apis/events.k8s.io/v1/namespaces/flowforge/events");
    }
    let client = fake.client();
    let config = Config::default();
    let scope = Scope::new(&config.kubernetes, &config.annotations.prefix);
    let store = Store::open("sqlite::memory:").await.expect("store");
    let reconciler = Reconciler::new(
        config,
        store,
        Actions::new(client.clone(), scope, false, "jw-0"),
    );
    let ready = Arc::new(AtomicBool::new(false));
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let (leading_tx, leading_rx) = tokio::sync::watch::channel(leading);
    let task = tokio::spawn(controller::run(
        client,
        "job-id".into(),
        reconciler,
        ready.clone(),
        leading_rx,
        stop_rx,
        move || now,
    ));
    Running {
        fake,
        ready,
        leading: leading_tx,
        stop,
        task,
    }
}

impl Running {
    /// Every request that is not a read: (method, path without the query, body).
    fn writes(&self) -> Vec<(String, String, Value)> {
        self.fake
            .mutations()
            .into_iter()
            .map(|s| {
                let path = s.path.split('?').next().unwrap_or_default().to_owned();
                (s.method, path, s.body)
            })
            .collect()
    }

    /// Every request's RBAC terms.
    fn calls(&self) -> Vec<(String, String, String)> {
        self.fake
            .requests()
            .iter()
            .filter_map(|s| classify(&s.method, &s.path))
            .collect()
    }

    async fn until_writes(&self, n: usize, what: &str) -> Vec<(String, String, Value)> {
        tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                let w = self.writes();
                if w.len() >= n {
                    return w;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("{what}: {:?}", self.writes()))
    }

    async fn until_ready(&self) {
        tokio::time::timeout(Duration::from_secs(10), async {
            while !self.ready.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .expect("ready once listed, leading or not");
    }

    async fn finish(self) -> Vec<(String, String, String)> {
        let calls = {
            let fake = self.fake.clone();
            move || {
                fake.requests()
                    .iter()
                    .filter_map(|s| classify(&s.method, &s.path))
                    .collect::<Vec<_>>()
            }
        };
        self.stop.send(true).expect("stop");
        tokio::time::timeout(Duration::from_secs(5), self.task)
            .await
            .expect("the loop stops on shutdown")
            .expect("task");
        let calls = calls();
        for (g, r, v) in &calls {
            assert!(
                API_CALLS
                    .iter()
                    .any(|c| c.group == g && c.resource == r && c.verb == v),
                "({g:?}, {r}, {v}) is not in API_CALLS"
            );
        }
        calls
    }
}

fn line(w: &(String, String, Value)) -> String {
    format!("{} {}", w.0, w.1)
}

#[tokio::test]
async fn a_replica_that_does_not_lead_watches_but_sends_nothing_until_it_leads() {
    let c = controller_with(false, false).await;
    c.until_ready().await;
    // The Job is 29 min overdue: a leader would act at once.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(c.writes(), [], "no action request while following");
    let before = c.calls();
    assert!(
        before.iter().all(|(_, _, v)| v == "list" || v == "watch"),
        "only the reflectors' list and watch: {before:?}"
    );

    // Leadership arrives; no watch event follows, so only "reconcile everything in the
    // cache on becoming leader" can act now.
    c.leading.send(true).expect("leading");
    let writes = c
        .until_writes(4, "the new leader soft-kills the overdue Job")
        .await;
    let lines: Vec<String> = writes.iter().map(line).collect();
    assert_eq!(
        lines,
        [
            "POST /apis/events.k8s.io/v1/namespaces/flowforge/events",
            "POST /apis/events.k8s.io/v1/namespaces/flowforge/events",
            "PATCH /apis/batch/v1/namespaces/flowforge/jobs/build-42",
            "POST /apis/events.k8s.io/v1/namespaces/flowforge/events",
        ]
    );
    assert_eq!(writes[2].2["spec"]["activeDeadlineSeconds"], 1);
    c.finish().await;
}

#[tokio::test]
async fn losing_leadership_mid_reconcile_stops_before_the_next_call() {
    let c = controller_with(true, true).await;
    // The first call of the reconcile (the GracePeriodTooShort Event) hangs.
    let w = c.until_writes(1, "the leader starts acting").await;
    assert_eq!(w[0].2["reason"], "GracePeriodTooShort");
    c.leading.send(false).expect("not leading");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        c.writes().iter().map(line).collect::<Vec<_>>(),
        ["POST /apis/events.k8s.io/v1/namespaces/flowforge/events"],
        "the reconcile was abandoned: no soft-kill PATCH after leadership went"
    );

    // Leadership back (the API server answers again): the Job is reconciled from the store.
    c.fake.clear_faults();
    c.leading.send(true).expect("leading");
    let writes = c.until_writes(4, "the leader acts again").await;
    let lines: Vec<String> = writes.iter().map(line).collect();
    assert_eq!(
        lines[1..],
        [
            "POST /apis/events.k8s.io/v1/namespaces/flowforge/events",
            "PATCH /apis/batch/v1/namespaces/flowforge/jobs/build-42",
            "POST /apis/events.k8s.io/v1/namespaces/flowforge/events",
        ]
    );
    assert_eq!(writes[1].2["reason"], "TimeoutWarning");
    assert_eq!(writes[3].2["reason"], "TimeoutSoftKill");
    c.finish().await;
}

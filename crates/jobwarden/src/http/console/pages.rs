//! The console's other pages: Audit (`/audit`), Cleanup queue (`/queue`, with the requeue
//! button), Orphans (`/orphans`, with the clean button), Policy (`/policy`) and Reclaimed
//! (`/reclaimed`).

use std::collections::BTreeSet;
use std::time::Duration;

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use maud::html;
use serde::Deserialize;

use crate::api_types::OrphanReport;
use crate::clock;
use crate::duration::format_duration;
use crate::model::{AuditAction, AuditEntry, JobRecord, RuntimeKind, Timestamp};
use crate::policy::{JobSettings, resolve};
use crate::reclaimed::{METHOD, format_bytes};
use crate::store::{AuditQuery, JobFilter, TaskFilter, TaskState};

use super::super::{Backend, read::parse_since};
use super::jobs::{ParamError, audit_table, bad, name_param, number_param};
use super::{
    Authorized, Live, Nav, PageQuery, error_page, html_response, page, see_other, token_field, when,
};

/// The query of `/audit`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditParams {
    job: Option<String>,
    org: Option<String>,
    action: Option<String>,
    since: Option<String>,
    until: Option<String>,
    limit: Option<String>,
}

/// A time parameter: RFC 3339, a `datetime-local` value (`2026-11-28T10:00`, taken as UTC),
/// or (for `since`) a duration back from now.
fn time_param(name: &'static str, v: Option<&str>) -> Result<Option<Timestamp>, ParamError> {
    let Some(v) = v.map(str::trim).filter(|v| !v.is_empty()) else {
        return Ok(None);
    };
    for format in ["%Y-%m-%dT%H:%M", "%Y-%m-%dT%H:%M:%S"] {
        if let Ok(t) = chrono::NaiveDateTime::parse_from_str(v, format) {
            return Ok(Some(t.and_utc()));
        }
    }
    parse_since(v)
        .map(Some)
        .map_err(|problem| bad(name, problem))
}

/// `GET /audit?job=&org=&action=&since=&until=&limit=`: the audit log, newest first.
pub async fn audit<B: Backend>(
    State(st): State<B>,
    PageQuery(p): PageQuery<AuditParams>,
) -> Response {
    let now = clock::now();
    let rt = st.runtime();
    let parsed = (|| {
        let job = match p.job.as_deref().map(str::trim).filter(|j| !j.is_empty()) {
            None => None,
            Some(j) => Some(
                crate::model::JobId::parse(j)
                    .map_err(|e| bad("job", e))?
                    .to_string(),
            ),
        };
        let action = match p.action.as_deref().map(str::trim).filter(|a| !a.is_empty()) {
            None => None,
            Some(a) => Some(a.parse::<AuditAction>().map_err(|e| bad("action", e))?),
        };
        Ok::<_, ParamError>(AuditQuery {
            job_id: job,
            action,
            since: time_param("since", p.since.as_deref())?,
            until: time_param("until", p.until.as_deref())?,
            limit: Some(number_param("limit", p.limit.as_deref(), 200, 5000)? as u32),
            org: name_param("org", "organisation", p.org.as_deref())?,
            newest_first: true,
        })
    })();
    let query = match parsed {
        Ok(q) => q,
        Err(e) => return error_page(StatusCode::BAD_REQUEST, rt, now, &e.to_string()),
    };
    let rows = match st.store().query_audit(&query).await {
        Ok(r) => r,
        Err(e) => {
            return error_page(
                StatusCode::SERVICE_UNAVAILABLE,
                rt,
                now,
                &format!("store: {e}"),
            );
        }
    };
    let rows: Vec<&AuditEntry> = rows.iter().collect();
    let text = |v: &Option<String>| v.clone().unwrap_or_default();
    let body = html! {
        h1 { "Audit log" }
        form.filters method="get" action="/audit" {
            label { "Job id" input name="job" value=(text(&p.job)) autocomplete="off"; }
            label { "Organisation" input name="org" value=(text(&p.org)) autocomplete="off"; }
            label { "Action"
                select name="action" {
                    option value="" { "any" }
                    @for a in AuditAction::ALL {
                        option value=(a.as_str()) selected[query.action == Some(*a)] { (a.as_str()) }
                    }
                }
            }
            label { "Since (1h, 7d or a time)" input name="since" value=(text(&p.since)) autocomplete="off"; }
            label { "Until (a time)" input name="until" value=(text(&p.until)) autocomplete="off"; }
            label { "At most" input name="limit" value=(query.limit.unwrap_or(200)) size="6"; }
            button type="submit" { "Search" }
        }
        p.note { (rows.len()) " rows, newest first. Times are UTC." }
        (audit_table(&rows, now, true))
    };
    html_response(
        StatusCode::OK,
        page("Audit", Nav::Audit, rt, now, &Live::default(), body),
    )
}

/// The query of `/queue`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueueParams {
    fragment: Option<String>,
    done: Option<String>,
}

/// `GET /queue`: depth by kind, running tasks, dead letters with their last error.
pub async fn queue<B: Backend>(
    State(st): State<B>,
    PageQuery(p): PageQuery<QueueParams>,
) -> Response {
    let now = clock::now();
    let rt = st.runtime();
    if let Some(f) = p
        .fragment
        .as_deref()
        .filter(|f| !f.is_empty() && *f != "main")
    {
        return error_page(
            StatusCode::BAD_REQUEST,
            rt,
            now,
            &format!("parameter `fragment`: {f:?} is not one of: main"),
        );
    }
    let store = st.store();
    let read = async {
        Ok::<_, crate::store::Error>((
            store.queue_stats().await?,
            store.queue_by_kind().await?,
            store
                .list_tasks(&TaskFilter {
                    state: Some(TaskState::Running),
                    limit: Some(200),
                    ..TaskFilter::default()
                })
                .await?,
            store.dead_letters().await?,
        ))
    };
    let (stats, by_kind, running, dead) = match read.await {
        Ok(v) => v,
        Err(e) => {
            return error_page(
                StatusCode::SERVICE_UNAVAILABLE,
                rt,
                now,
                &format!("store: {e}"),
            );
        }
    };
    let kinds: BTreeSet<&str> = by_kind.iter().map(|(k, _, _)| k.as_str()).collect();
    let count = |kind: &str, state: &str| {
        by_kind
            .iter()
            .find(|(k, s, _)| k == kind && s == state)
            .map_or(0, |(_, _, n)| *n)
    };
    let flash = match p.done.as_deref() {
        Some("requeued") => Some("Requeued: the task is pending again, due now."),
        _ => None,
    };
    let main = html! {
        @if let Some(f) = flash { p.flash role="status" { (f) } }
        h1 { "Cleanup queue" }
        p { (stats.pending) " pending, " (stats.running) " running, " (stats.dead) " dead-lettered, "
            (stats.done) " done (kept until pruned)." }
        h2 { "Depth by kind" }
        table {
            thead { tr {
                th scope="col" { "Kind" } th scope="col" class="num" { "Pending" }
                th scope="col" class="num" { "Running" } th scope="col" class="num" { "Dead" }
            } }
            tbody {
                @for k in &kinds { tr {
                    td { (k) }
                    td.num { (count(k, "pending")) }
                    td.num { (count(k, "running")) }
                    td.num { (count(k, "dead")) }
                } }
                @if kinds.is_empty() { tr { td colspan="4" { span.muted { "The queue is empty." } } } }
            }
        }
        h2 { "Running" }
        @if running.is_empty() { p.muted { "No task is running." } } @else {
            table {
                thead { tr {
                    th scope="col" { "Task" } th scope="col" { "Kind" } th scope="col" { "Resource" }
                    th scope="col" { "Worker" } th scope="col" { "Lease until" } th scope="col" { "Attempt" }
                } }
                tbody { @for t in &running { tr {
                    td { (t.id) } td { (t.kind) } td { code { (t.resource_name) } }
                    td { (t.lease_owner.as_deref().unwrap_or("")) }
                    td { @if let Some(l) = t.lease_expires_at { (when(l, now)) } }
                    td { (t.attempts) "/" (t.max_attempts) }
                } } }
            }
        }
        h2 { "Dead letters" }
        @if dead.is_empty() { p.muted { "No dead-lettered task." } } @else {
            table #dead {
                caption { "Tasks that failed " em { "max_attempts" } " times: requeue one once its cause is fixed" }
                thead { tr {
                    th scope="col" { "Task" } th scope="col" { "Kind" } th scope="col" { "Job" }
                    th scope="col" { "Resource" } th scope="col" { "Last error" }
                    th scope="col" { "Dead since" } th scope="col" { "Requeue" }
                } }
                tbody { @for t in &dead { tr {
                    td { (t.id) } td { (t.kind) }
                    td { @if let Some(j) = &t.job_id {
                        @if crate::model::JobId::is_valid(j) { a href=(format!("/jobs/{j}")) { span.id { (j) } } } @else { (j) }
                    } }
                    td { code { (t.resource_name) } }
                    td { (t.last_error.as_deref().unwrap_or("")) }
                    td { (when(t.updated_at, now)) }
                    td {
                        form.action method="post" action=(format!("/queue/{}/requeue", t.id)) {
                            (token_field(&st, &format!("requeue-token-{}", t.id)))
                            button type="submit" aria-label=(format!("Requeue task {}", t.id)) { "Requeue" }
                        }
                    }
                } } }
            }
        }
        p.note { "The same from the command line: " code { "jobwarden dead-letters" } " and " code { "jobwarden dead-letters requeue ID" } "." }
    };
    if p.fragment.as_deref() == Some("main") {
        return html_response(StatusCode::OK, main);
    }
    html_response(
        StatusCode::OK,
        page(
            "Cleanup queue",
            Nav::Queue,
            rt,
            now,
            &Live {
                mode: Some("main"),
                job: None,
                kinds: Some("task"),
            },
            main,
        ),
    )
}

/// `POST /queue/{id}/requeue`: the requeue button.
pub async fn requeue<B: Backend>(
    State(st): State<B>,
    path: Result<Path<String>, PathRejection>,
    _: Authorized,
) -> Response {
    let now = clock::now();
    let rt = st.runtime();
    let id = match super::super::admin::parse_task_id(path) {
        Ok(id) => id,
        Err(_) => {
            return error_page(
                StatusCode::BAD_REQUEST,
                rt,
                now,
                "the task id in the URL is not a task id (a positive number)",
            );
        }
    };
    match super::super::admin::requeue(st.store(), id).await {
        Ok(()) => see_other("/queue?done=requeued"),
        Err(e) => error_page(e.status, rt, now, &e.message),
    }
}

/// The query of `/orphans`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OrphanParams {
    done: Option<String>,
    queued: Option<String>,
    deleted: Option<String>,
    deferred: Option<String>,
}

/// `GET /orphans`: what the orphan scan finds now and why each is an orphan.
pub async fn orphans<B: Backend>(
    State(st): State<B>,
    PageQuery(p): PageQuery<OrphanParams>,
) -> Response {
    let now = clock::now();
    let rt = st.runtime();
    let found = st.orphans().await;
    let count = |v: &Option<String>| v.as_deref().and_then(|q| q.parse::<u64>().ok());
    let cleaned = p.done.as_deref() == Some("clean");
    let flash = match (rt, count(&p.queued), count(&p.deleted), count(&p.deferred)) {
        _ if !cleaned => None,
        (RuntimeKind::Local, Some(n), _, _) => Some(format!(
            "{n} removal tasks queued; each is checked again just before it runs."
        )),
        (RuntimeKind::Kubernetes, _, Some(d), deferred) => Some(format!(
            "{d} deleted, each with its UID as precondition; {} left for a later pass.",
            deferred.unwrap_or(0)
        )),
        _ => None,
    };
    let body = html! {
        h1 { "Orphans" }
        @if let Some(f) = &flash { p.flash role="status" { (f) } }
        @match found.map(serde_json::from_value::<OrphanReport>) {
            Ok(Ok(report)) => {
                @if rt == RuntimeKind::Local {
                    p { "A workspace or log file named by an id jobwarden generates, or an object-storage prefix of such an id, that the store has never heard of and that is older than "
                        code { "[orphans]" } "'s minimum age. Nothing else is ever a candidate." }
                } @else {
                    p { "A pod, PersistentVolumeClaim, Secret or ConfigMap in a policed namespace carrying the job-id label when no Job in its namespace carries that job id, older than "
                        code { "[kubernetes.orphan_min_age]" } " for its kind and not already being deleted: one orphan pass of this replica, the Jobs listed after the other kinds (a failed listing selects nothing)." }
                }
                @for s in &report.skipped { p.error { "Not scanned (nothing is reported for it): " (s) } }
                @for w in &report.warnings { p.error { "Refused: " (w) } }
                table #orphans {
                    thead { tr {
                        th scope="col" { "Kind" } th scope="col" { "Job id" } th scope="col" { "Path or prefix" }
                        th scope="col" class="num" { "Size" } th scope="col" class="num" { "Age" } th scope="col" { "Why" }
                    } }
                    tbody {
                        @for o in &report.orphans { tr {
                            td { (o.kind) } td { span.id { (o.job_id) } } td { code { (o.name) } }
                            td.num { @if rt == RuntimeKind::Local { (format_bytes(o.bytes)) } @else { span.muted { "—" } } }
                            td.num { (format_duration(Duration::from_secs(o.age_seconds))) }
                            td { @if let Some(why) = &o.why { (why) } @else { "no job " span.id { (o.job_id) } " in the store; older than the minimum age" } }
                        } }
                        @if report.orphans.is_empty() { tr { td colspan="6" { span.muted { "No orphans." } } } }
                    }
                }
                @if !report.orphans.is_empty() {
                    form.action method="post" action="/orphans/clean" {
                        (token_field(&st, "clean-token"))
                        button.danger type="submit" { "Remove these orphans" }
                    }
                    @if rt == RuntimeKind::Local {
                        p.note { "Queues at most " code { "[safety] max_batch" } " removals, within the deletion rate limit." }
                    } @else {
                        p.note { "Deletes at most " code { "[safety] max_batch" } " now, each with its UID as precondition, within " code { "[kubernetes] destructive_calls_per_minute" } "." }
                    }
                }
            },
            Ok(Err(e)) => p.error { "The orphan listing could not be read: " (e.to_string()) },
            Err(e) => p.error role="alert" { (e.message) },
        }
    };
    html_response(
        StatusCode::OK,
        page("Orphans", Nav::Orphans, rt, now, &Live::default(), body),
    )
}

/// `POST /orphans/clean`: the clean button.
pub async fn clean_orphans<B: Backend>(State(st): State<B>, _: Authorized) -> Response {
    let now = clock::now();
    let rt = st.runtime();
    match st.clean_orphans().await {
        Ok(v) => {
            let n = |key: &str| v.get(key).and_then(serde_json::Value::as_u64).unwrap_or(0);
            see_other(&format!(
                "/orphans?done=clean&queued={}&deleted={}&deferred={}",
                n("queued"),
                n("deleted"),
                n("deferred")
            ))
        }
        Err(e) => error_page(e.status, rt, now, &e.message),
    }
}

/// `GET /policy`: the effective policy per organisation and job type, as
/// [`crate::policy::resolve`] gives it for a job that asks for nothing itself.
pub async fn policy<B: Backend>(State(st): State<B>) -> Response {
    let now = clock::now();
    let rt = st.runtime();
    let pc = st.policy_config();
    let jobs: Vec<JobRecord> = st
        .store()
        .list_jobs(&JobFilter::default())
        .await
        .unwrap_or_default();
    let mut orgs: BTreeSet<Option<String>> =
        pc.organization_max.keys().cloned().map(Some).collect();
    let mut types: BTreeSet<Option<String>> = pc
        .job_type_overrides
        .keys()
        .chain(pc.job_type_grace.keys())
        .cloned()
        .map(Some)
        .collect();
    for j in &jobs {
        orgs.insert(j.org.clone());
        types.insert(j.job_type.clone());
    }
    orgs.insert(None);
    types.insert(None);
    let r = &st.policy().retention;
    let artifacts_ttl = r
        .artifacts
        .artifacts
        .map_or_else(|| "the job's TTL".to_owned(), |d| format_duration(d.0));
    let warn: Vec<String> = st
        .policy()
        .warn_before
        .iter()
        .map(|d| format_duration(*d))
        .collect();
    let body = html! {
        h1 { "Policy" }
        p { "The effective policy for a job of each organisation and job type that asks for nothing itself, as the engine resolves it: the job's own timeout > its job type's > the global default, then capped by the organisation maximum and the hard maximum; the grace period job > type > global, capped by the grace maximum. A job's own timeout is capped the same way." }
        h2 { "Platform" }
        dl.facts {
            dt { "Global default timeout" } dd { (format_duration(pc.global_default.0)) }
            dt { "Hard maximum" } dd { (format_duration(pc.hard_max.0)) }
            dt { "Grace period" } dd { (format_duration(pc.grace_period.0)) " (at most " (format_duration(pc.grace_max.0)) ")" }
            dt { "Warnings before the deadline" } dd { (warn.join(", ")) }
            dt { "Startup timeout" } dd { (format_duration(pc.startup_timeout.0)) }
            dt { "Retention after finish" } dd {
                "succeeded " (format_duration(r.successful.0)) ", failed " (format_duration(r.failed.0))
                ", terminated " (format_duration(r.terminated.0))
            }
            dt { "Artifacts retention" } dd {
                "logs " (format_duration(r.artifacts.logs.0)) ", partial saves " (format_duration(r.artifacts.partial.0))
                ", artifacts " (artifacts_ttl)
            }
        }
        h2 { "Per organisation and job type" }
        table #policy {
            thead { tr {
                th scope="col" { "Organisation" } th scope="col" { "Job type" }
                th scope="col" { "Timeout" } th scope="col" { "From" }
                th scope="col" { "Organisation maximum" } th scope="col" { "Grace" }
                th scope="col" { "Ladder (after start)" }
            } }
            tbody {
                @for org in &orgs { @for ty in &types {
                    @let resolved = resolve(&JobSettings { org: org.clone(), job_type: ty.clone(), ..JobSettings::default() }, pc);
                    tr {
                        td { (org.as_deref().unwrap_or("(none)")) }
                        td { (ty.as_deref().unwrap_or("(none)")) }
                        td { (format_duration(resolved.timeout)) }
                        td { (crate::policy::Resolution::of(&resolved).words()) }
                        td { @match org.as_ref().and_then(|o| pc.organization_max.get(o)) {
                            Some(max) => (format_duration(max.0)),
                            None => span.muted { "none" },
                        } }
                        td { (format_duration(resolved.grace)) }
                        td {
                            "soft kill at " (format_duration(resolved.timeout))
                            ", hard kill at " (format_duration(resolved.timeout + resolved.grace))
                            ", force delete at " (format_duration(resolved.timeout + resolved.grace * 2))
                        }
                    }
                } }
            }
        }
    };
    html_response(
        StatusCode::OK,
        page("Policy", Nav::Policy, rt, now, &Live::default(), body),
    )
}

/// The query of `/reclaimed`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReclaimedParams {
    since: Option<String>,
    org: Option<String>,
}

/// `GET /reclaimed?since=7d&org=`: what jobwarden's actions reclaimed per organisation and
/// day, as a table and a chart, with the method in one sentence.
pub async fn reclaimed<B: Backend>(
    State(st): State<B>,
    PageQuery(p): PageQuery<ReclaimedParams>,
) -> Response {
    let now = clock::now();
    let rt = st.runtime();
    let since_text = p
        .since
        .clone()
        .filter(|s| !s.trim().is_empty())
        .unwrap_or_else(|| "7d".to_owned());
    let parsed = (|| {
        Ok::<_, ParamError>((
            if since_text == "all" {
                None
            } else {
                time_param("since", Some(&since_text))?
            },
            name_param("org", "organisation", p.org.as_deref())?,
        ))
    })();
    let (since, org) = match parsed {
        Ok(v) => v,
        Err(e) => return error_page(StatusCode::BAD_REQUEST, rt, now, &e.to_string()),
    };
    let report = match super::super::admin::report_for(st.store(), since, org.clone()).await {
        Ok(r) => r,
        Err(e) => {
            return error_page(
                StatusCode::SERVICE_UNAVAILABLE,
                rt,
                now,
                &format!("store: {e}"),
            );
        }
    };
    let org_cell = |o: &Option<String>| o.clone().unwrap_or_else(|| "(none)".into());
    let t = &report.total;
    let body = html! {
        h1 { "Reclaimed" }
        p #method { strong { "Method: " } (METHOD) }
        form.filters method="get" action="/reclaimed" {
            label { "Since (7d, 24h, a time or all)" input name="since" value=(since_text) autocomplete="off"; }
            label { "Organisation" input name="org" value=[org.as_deref()] autocomplete="off"; }
            button type="submit" { "Show" }
        }
        h2 { "Total" }
        dl.facts #totals {
            dt { "Kills counted" } dd { (t.kills) }
            dt { "CPU-seconds saved" } dd #total-cpu { (t.cpu_text()) }
            dt { "Memory GiB-hours saved" } dd #total-memory { (t.memory_text()) }
            dt { "Bytes freed" } dd { (format_bytes(t.bytes.total())) " (workspaces " (format_bytes(t.bytes.workspace))
                ", logs " (format_bytes(t.bytes.log)) ", artifacts " (format_bytes(t.bytes.artifacts))
                ", orphans " (format_bytes(t.bytes.orphans)) ")" }
            @if t.deletions_without_size > 0 {
                dt { "Deletions of unknown size" } dd { (t.deletions_without_size) " (Kubernetes objects: not in the bytes)" }
            }
        }
        h2 { "Per day" }
        (super::chart::reclaimed(&report))
        table #reclaimed {
            caption { "What jobwarden's actions reclaimed per organisation and day (UTC)" }
            thead { tr {
                th scope="col" { "Day" } th scope="col" { "Organisation" } th scope="col" class="num" { "Kills" }
                th scope="col" class="num" { "CPU-seconds" } th scope="col" class="num" { "Memory GiB-hours" }
                th scope="col" class="num" { "Workspaces" } th scope="col" class="num" { "Logs" }
                th scope="col" class="num" { "Artifacts" } th scope="col" class="num" { "Orphans" }
            } }
            tbody {
                @for l in &report.lines { tr {
                    td { (l.day) } td { (org_cell(&l.org)) } td.num { (l.figures.kills) }
                    td.num { (l.figures.cpu_text()) } td.num { (l.figures.memory_text()) }
                    td.num { (format_bytes(l.figures.bytes.workspace)) } td.num { (format_bytes(l.figures.bytes.log)) }
                    td.num { (format_bytes(l.figures.bytes.artifacts)) } td.num { (format_bytes(l.figures.bytes.orphans)) }
                } }
                @if report.lines.is_empty() { tr { td colspan="9" { span.muted { "Nothing reclaimed in this time." } } } }
            }
        }
        h2 { "Per organisation" }
        table #reclaimed-orgs {
            thead { tr {
                th scope="col" { "Organisation" } th scope="col" class="num" { "Kills" }
                th scope="col" class="num" { "CPU-seconds" } th scope="col" class="num" { "Memory GiB-hours" }
                th scope="col" class="num" { "Bytes freed" }
            } }
            tbody { @for l in &report.by_org { tr {
                td { (org_cell(&l.org)) } td.num { (l.figures.kills) }
                td.num { (l.figures.cpu_text()) } td.num { (l.figures.memory_text()) }
                td.num { (format_bytes(l.figures.bytes.total())) }
            } } }
        }
        p.note { "The same numbers: " code { "jobwarden report --since " (since_text) } " and, for the last 7 days, "
            code { "jobwarden_reclaimed_*" } " on " a href="/metrics" { "/metrics" } "." }
    };
    html_response(
        StatusCode::OK,
        page("Reclaimed", Nav::Reclaimed, rt, now, &Live::default(), body),
    )
}
